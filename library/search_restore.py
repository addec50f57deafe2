#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, llmops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# ruff: noqa: E402 - Ansible modules put DOCUMENTATION/EXAMPLES/RETURN before the imports.

from __future__ import annotations

DOCUMENTATION = r"""
---
module: search_restore
short_description: Restore Elasticsearch indices from a backup set through the snapshot API, with a safety snapshot
description:
  - One step of a search engine restore per call, so that the playbook can roll back between them. Elasticsearch keeps
    running throughout. In order
  - O(step=stage) checks the sha256 of the set's C(repository.tar.zst) against the manifest (nothing is unpacked when
    it differs), unpacks it into C(<repo_path>/llmops_restore_<safety_tag>), registers that folder as the read-only
    repository C(llmops_restore), verifies it and checks that it holds the set's snapshot with every index to restore.
    Nothing live changes.
  - O(step=swap) takes a safety snapshot C(<safety_tag>-<time>) of the indices to replace that exist now, in the
    server's repository C(llmops_safety) (folder C(llmops_safety) below C(path.repo)), then deletes those indices.
  - O(step=load) restores the indices from the staged repository (C(wait_for_completion)) and waits for green or
    yellow health of those indices.
  - O(step=verify) compares each index's document count, sha256 over its sorted ids and sha256 over its ids and
    C(_source) with the manifest's fingerprint when it describes the snapshot (C(fingerprint_source) V(snapshot) or
    V(server-unchanged)), else with the staged snapshot's files when they can be read, else returns the index in
    RV(unverified) with a warning (only its document count is checked).
  - O(step=rollback) deletes the indices the restore touched and restores those that existed from the safety
    snapshot.
  - O(step=cleanup) unregisters C(llmops_restore), removes the unpacked copy and O(staging), and deletes the safety
    snapshot unless O(keep_safety_copy).
extends_documentation_fragment: [llmops, llmops.restore, llmops.search, llmops.encryption]
attributes:
  check_mode:
    support: full
    description:
      - O(step=verify) runs as usual (it only reads). O(step=stage) checks the repository copy against the manifest;
        the other steps say what they would do. Nothing is changed.
options:
  step:
    choices: [stage, swap, load, verify, rollback, cleanup]
  repo_path:
    description:
      - This host's path of the folder the server knows as C(path.repo) (the host side of its volume); O(step=stage)
        unpacks the set's repository copy below it.
    type: path
    required: true
notes:
  - Indices of the server that are not restored are left alone. O(indices) selects among the set's indices.
"""

EXAMPLES = r"""
- name: Check and stage the set's repository copy
  search_restore:
    step: stage
    set_path: "{{ plan.plan.set_path }}"
    staging: /backup/.restore/search
    repo_path: "{{ stack_root }}/data/appdb/elasticsearch-snapshots"
    url: "http://127.0.0.1:{{ stack_ports.elasticsearch }}"
    login_password: "{{ elastic_password }}"
    safety_tag: "{{ restore_tag }}"

- name: Replace the documents index only
  search_restore:
    step: "{{ item }}"
    set_path: "{{ plan.plan.set_path }}"
    staging: /backup/.restore/search
    repo_path: "{{ stack_root }}/data/appdb/elasticsearch-snapshots"
    login_password: "{{ elastic_password }}"
    indices: [documents]
    safety_tag: "{{ restore_tag }}"
  loop: [swap, load, verify]
"""

RETURN = r"""
indices:
  description: The indices the step worked on.
  returned: always
  type: list
  elements: str
  sample: [documents, faq]
staged:
  description: The staged repository, its folder, the snapshot and the indices (O(step=stage)).
  returned: when O(step=stage)
  type: dict
  sample: {repository: llmops_restore, location: llmops_restore_pre-restore, snapshot: llmops-20260131-020000-1a2b3c4d,
           indices: [documents]}
safety:
  description: The safety snapshot and which indices existed (O(step=swap)).
  returned: when O(step=swap) and not check mode
  type: dict
  sample: {repository: llmops_safety, snapshot: pre-restore-20260131-030000, existed: {documents: true}}
restored:
  description: The indices restored (O(step=load), O(step=rollback)).
  returned: when O(step=load) or O(step=rollback), not check mode
  type: list
  elements: str
health:
  description: The health the restored indices reached (O(step=load)).
  returned: when O(step=load) and not check mode
  type: str
  sample: yellow
differences:
  description: Per index how the live data differs from the snapshot's fingerprint (O(step=verify)).
  returned: when O(step=verify)
  type: dict
  sample: {documents: ["doc_count: expected 120, found 119"]}
against:
  description: Per index what it was verified against (O(step=verify)).
  returned: when O(step=verify)
  type: dict
unverified:
  description: The indices whose content could not be verified (O(step=verify)); never silently passed.
  returned: when O(step=verify)
  type: list
  elements: str
deleted:
  description: The indices the rollback deleted because they did not exist before (O(step=rollback)).
  returned: when O(step=rollback) and not check mode
  type: list
  elements: str
removed:
  description: What O(step=cleanup) removed (the unpacked copy, O(staging)); in check mode what it would.
  returned: when O(step=cleanup)
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.llmops_backupset import load_component
from ansible.module_utils.llmops_common import (
    StepFailed,
    argument_spec,
    run_restore_step,
    safety_tag,
    search_argument_spec,
)
from ansible.module_utils.llmops_search import SearchClient
from ansible.module_utils.llmops_search_restore import (
    check_artefact,
    cleanup,
    load,
    read_safety,
    read_state,
    rollback,
    set_artefact,
    set_indices,
    stage,
    swap,
    verify,
)


def main():
    module = AnsibleModule(
        argument_spec=argument_spec(restore=dict(steps=["stage", "swap", "load", "verify", "rollback", "cleanup"]),
                                    repo_path=dict(type="path", required=True), **search_argument_spec()),
        supports_check_mode=True,
    )
    p = module.params

    def client():
        return SearchClient(p["url"], user=p["login_user"], password=p["login_password"],
                            timeout=p["timeout"] or None, retries=p["retries"])

    def entry(p):
        return load_component(p["set_path"], "search")

    def stage_step(p, check):
        state = stage(client(), p["set_path"], entry(p), p["staging"], p["repo_path"], safety_tag(p), p["indices"],
                      check=check)
        if check:
            return dict(changed=True, indices=state["indices"], staged=state,
                        msg="the repository copy matches the manifest; would unpack it into %s" % state["unpacked"])
        return dict(changed=True, indices=state["indices"], staged=state)

    def swap_step(p, check):
        names = read_state(p["staging"])["indices"]
        if check:
            return dict(changed=True, indices=names, msg="would take a safety snapshot of %s and delete them"
                        % ", ".join(names))
        safety = swap(client(), p["staging"], safety_tag(p))
        return dict(changed=True, indices=names, safety=safety)

    def load_step(p, check):
        names = read_state(p["staging"])["indices"]
        if check:
            path, sha256 = set_artefact(p["set_path"], entry(p))
            check_artefact(path, sha256)
            return dict(changed=True, indices=names, msg="would restore %s" % ", ".join(names))
        return dict(changed=True, indices=names, **load(client(), p["staging"], p["timeout"] or 60))

    def verify_step(p, check):
        chosen = set_indices(entry(p), read_state(p["staging"])["indices"])
        result = verify(client(), p["staging"], chosen)
        if result["differences"]:
            raise StepFailed("the restored indices differ from the snapshot's fingerprint: %s" % "; ".join(
                "%s: %s" % (name, ", ".join(diff)) for name, diff in sorted(result["differences"].items())),
                indices=sorted(chosen), **result)
        return dict(changed=False, indices=sorted(chosen), warnings=[
            "index %s: restored, but its content could not be verified: %s" % (name, result["against"][name])
            for name in result["unverified"]], **result)

    def rollback_step(p, check):
        names = read_safety(p["staging"]).get("touched") or []
        if check:
            return dict(changed=bool(names), indices=names, msg="would put back %s" % (", ".join(names) or "nothing"))
        return dict(changed=bool(names), indices=names, **rollback(client(), p["staging"], p["timeout"] or 60))

    def cleanup_step(p, check):
        result = cleanup(client(), p["staging"], p["repo_path"], safety_tag(p), p["keep_safety_copy"], dry_run=check)
        return dict(changed=bool(result["removed"]), indices=[], **result)

    run_restore_step(module, "search", dict(stage=stage_step, swap=swap_step, load=load_step, verify=verify_step,
                                            rollback=rollback_step, cleanup=cleanup_step))


if __name__ == "__main__":
    main()
