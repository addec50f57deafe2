#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, llmops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# ruff: noqa: E402 - Ansible modules put DOCUMENTATION/EXAMPLES/RETURN before the imports.

from __future__ import annotations

DOCUMENTATION = r"""
---
module: qdrant_restore
short_description: Restore Qdrant collections from a backup set through the snapshot API, with a safety copy
description:
  - One step of a Qdrant restore per call, so that the playbook can roll back between them. Qdrant keeps running
    throughout; a collection is replaced by uploading its snapshot with C(priority=snapshot). In order
  - O(step=stage) checks the sha256 of every snapshot file of the set against the manifest (nothing is uploaded
    when one differs), then snapshots every collection of the restore that exists now and downloads it into
    C(<staging>/<safety_tag>/) (the safety copy), noting which collections did not exist. Qdrant keeps the
    collection, so the safety copy is a folder of snapshots, not a renamed original.
  - O(step=load) checks the snapshot files again, then uploads each with the manifest's sha256 as C(checksum), so
    that the server checks it again.
  - O(step=verify) compares each collection's live fingerprint (points count, sha256 over the point ids, sha256 over
    the points with their payloads and vectors, vector config) with the fingerprint of the snapshot it was restored
    from, that is the manifest's when it describes the snapshot (C(fingerprint_source) V(snapshot) or
    V(server-unchanged)); otherwise the one computed from the snapshot file when its format can be read;
    otherwise the collection is returned in RV(unverified) with a warning (only its vector config is checked).
  - Collection names are data. Each snapshot file is the one the manifest maps the collection to, and every path read
    from the manifest must be a plain relative path inside the set.
  - O(step=rollback) uploads the safety snapshots back and deletes the collections that did not exist before, for
    the collections that O(step=load) started to upload (none when it stopped at the checksum check).
  - O(step=cleanup) removes the staging folder and, unless O(keep_safety_copy), the safety copies.
extends_documentation_fragment: [llmops, llmops.restore, llmops.qdrant, llmops.encryption]
attributes:
  check_mode:
    support: full
    description:
      - O(step=verify) runs as usual (it only reads). The other steps say what they would do and change nothing;
        O(step=stage) and O(step=load) still check the snapshot files against the manifest.
options:
  step:
    choices: [stage, load, verify, rollback, cleanup]
notes:
  - Collections of the server that are not restored are left alone.
  - The module checks the snapshot files against the manifest again right before uploading them.
"""

EXAMPLES = r"""
- name: Check the snapshots and keep a safety copy of the collections about to be replaced
  qdrant_restore:
    step: stage
    set_path: "{{ plan.plan.set_path }}"
    staging: /backup/.restore/qdrant
    url: "http://127.0.0.1:{{ stack_ports.qdrant }}"
    api_key: "{{ qdrant_api_key }}"

- name: Upload the set's snapshots (checked against the manifest first)
  qdrant_restore:
    step: load
    set_path: "{{ plan.plan.set_path }}"
    staging: /backup/.restore/qdrant
    url: "http://127.0.0.1:{{ stack_ports.qdrant }}"
    api_key: "{{ qdrant_api_key }}"
    collections: [documents]

- name: Verify against the manifest's fingerprint
  qdrant_restore:
    step: verify
    set_path: "{{ plan.plan.set_path }}"
    staging: /backup/.restore/qdrant
    api_key: "{{ qdrant_api_key }}"
"""

RETURN = r"""
collections:
  description: The collections the step worked on.
  returned: always
  type: list
  elements: str
  sample: [documents, faq]
safety:
  description: Per collection whether it existed, and its safety snapshot's file, sha256 and points count.
  returned: when O(step=stage) and not check mode
  type: dict
  sample:
    documents: {existed: true, file: documents.snapshot, sha256: "...", points_count: 300}
    new: {existed: false}
restored:
  description: The collections uploaded (O(step=load)).
  returned: when O(step=load) and not check mode
  type: list
  elements: str
differences:
  description: Per collection how the live data differs from the snapshot's fingerprint (O(step=verify)).
  returned: when O(step=verify)
  type: dict
  sample: {documents: ["points_count: expected 300, found 299"]}
against:
  description: Per collection what it was verified against (O(step=verify)).
  returned: when O(step=verify)
  type: dict
  sample: {documents: "the manifest's fingerprint of the snapshot (snapshot)"}
unverified:
  description:
    - The collections whose content could not be verified (O(step=verify)) because the backup could not fingerprint
      their snapshot (written during every attempt, in a format that cannot be read here). Never silently passed.
  returned: when O(step=verify)
  type: list
  elements: str
uploaded:
  description: The collections put back from their safety snapshot (O(step=rollback)).
  returned: when O(step=rollback) and not check mode
  type: list
  elements: str
deleted:
  description: The collections deleted by the rollback because they did not exist before (O(step=rollback)).
  returned: when O(step=rollback) and not check mode
  type: list
  elements: str
removed:
  description: What O(step=cleanup) removed of O(staging) (all but a kept safety copy); in check mode what it would.
  returned: when O(step=cleanup)
  type: list
  elements: str
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.llmops_backupset import load_component
from ansible.module_utils.llmops_common import (
    StepFailed,
    argument_spec,
    qdrant_argument_spec,
    run_restore_step,
    safety_tag,
)
from ansible.module_utils.llmops_qdrant import QdrantClient
from ansible.module_utils.llmops_qdrant_restore import (
    check_snapshots,
    cleanup,
    read_safety,
    restore_collections,
    rollback,
    set_collections,
    take_safety,
    verify_collections,
)


def main():
    module = AnsibleModule(
        argument_spec=argument_spec(restore=dict(steps=["stage", "load", "verify", "rollback", "cleanup"]),
                                    **qdrant_argument_spec()),
        supports_check_mode=True,
    )
    p = module.params

    def safety_dir(p):
        return os.path.join(p["staging"], safety_tag(p))

    def client():
        return QdrantClient(p["url"], api_key=p["api_key"], timeout=p["timeout"], retries=p["retries"])

    def collections(p):
        return set_collections(p["set_path"], load_component(p["set_path"], "qdrant"), p["collections"])

    def stage(p, check):
        chosen = collections(p)
        check_snapshots(chosen)
        names = list(chosen)
        if check:
            return dict(changed=True, collections=names, msg="snapshots match the manifest; would snapshot %s into %s"
                        % (", ".join(names), safety_dir(p)))
        index, warnings = take_safety(client(), names, safety_dir(p))
        return dict(changed=True, collections=names, safety=index, safety_dir=safety_dir(p), warnings=warnings)

    def load(p, check):
        chosen = collections(p)
        if check:
            check_snapshots(chosen)
            return dict(changed=True, collections=list(chosen), msg="snapshots match the manifest; would upload %s"
                        % ", ".join(chosen))
        return dict(changed=True, collections=list(chosen), restored=restore_collections(client(), chosen,
                                                                                         safety_dir(p)))

    def verify(p, check):
        chosen = collections(p)
        result = verify_collections(client(), chosen)
        differences = result["differences"]
        if differences:
            raise StepFailed("the restored Qdrant data differs from the snapshot's fingerprint: %s" % "; ".join(
                "%s: %s" % (name, ", ".join(diff)) for name, diff in sorted(differences.items())),
                collections=list(chosen), **result)
        return dict(changed=False, collections=list(chosen), warnings=[
            "collection %s: restored, but its content could not be verified: %s" % (name, result["against"][name])
            for name in result["unverified"]], **result)

    def rollback_step(p, check):
        names = sorted(read_safety(safety_dir(p)))
        if check:
            return dict(changed=bool(names), collections=names, msg="would put back %s from %s"
                        % (", ".join(names) or "nothing", safety_dir(p)))
        return dict(changed=bool(names), collections=names, **rollback(client(), safety_dir(p)))

    def cleanup_step(p, check):
        removed = cleanup(p["staging"], safety_dir(p), p["keep_safety_copy"], dry_run=check)
        return dict(changed=bool(removed), removed=removed, collections=[])

    run_restore_step(module, "Qdrant", dict(stage=stage, load=load, verify=verify, rollback=rollback_step,
                                            cleanup=cleanup_step))


if __name__ == "__main__":
    main()
