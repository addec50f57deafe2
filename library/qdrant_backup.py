#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, llmops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# ruff: noqa: E402 - Ansible modules put DOCUMENTATION/EXAMPLES/RETURN before the imports.

from __future__ import annotations

DOCUMENTATION = r"""
---
module: qdrant_backup
short_description: Back up Qdrant collections through the snapshot API, checksum-verified
description:
  - For every collection (or the ones in O(collections)) creates a snapshot on the server, streams it into
    C(<dest>/<file>) computing its sha256 on the way, compares it with the checksum the server reports for the
    snapshot and fails on a mismatch, then deletes the server-side snapshot (also when something failed, best effort;
    a snapshot that could not be deleted is reported as a warning). C(<file>) is C(<name>.snapshot) for a plain name
    (letters, digits, C(_), C(.), C(-)); any other name is percent-encoded (C(llmops_backupset.encode_name)), never
    used as a path as it is. C(component.collections.<name>.file) records the mapping.
  - With O(full_storage=true) also takes a full-storage snapshot into C(<dest>/full-storage.snapshot).
  - Snapshots are tar archives and are stored as they are, not recompressed (C(compressed=false) in RV(component)).
  - Returns the manifest entry of the component for C(backup_set), with a fingerprint per collection of what its
    snapshot holds (points count, vector config, sha256 over the sorted point ids, sha256 over the points with their
    payloads and float32 vectors). It is computed from the downloaded snapshot file when its format can be read
    (the lab's stand-in; C(fingerprint_source=snapshot)). A real Qdrant snapshot (segments and WAL) cannot be read
    here and the API describes no snapshot's content, so its fingerprint is the server's, taken before and after the
    snapshot and kept only when both agree (C(fingerprint_source=server-unchanged)); a collection written meanwhile is
    snapshotted again, up to 3 times, else recorded with C(fingerprint_source=unverifiable) and a warning.
    C(fingerprint_stable) is true when every collection's fingerprint describes its snapshot.
extends_documentation_fragment: [llmops, llmops.qdrant, llmops.encryption]
attributes:
  check_mode:
    support: full
    description: Lists the collections with their point counts and vector configs; takes no snapshot, writes nothing.
options:
  dest:
    description: Folder of this component inside the set being written; created with mode 0700.
    type: path
    required: true
  full_storage:
    description: Also take a full-storage snapshot (all collections and aliases) into C(full-storage.snapshot).
    type: bool
    default: false
  backup_root:
    description:
      - The backup root. Every server-side snapshot the module creates is recorded in its
        C(.qdrant-snapshots.json) (with this module's process) until it is deleted; at start the module deletes
        the snapshots of this server recorded there whose process is gone - those a killed backup left (see
        C(stale_snapshots_deleted) of RV(component)). Snapshots it did not record, such as an operator's, are never
        touched (Qdrant names snapshots itself, so the name cannot tell whose they are).
      - Unset - nothing is recorded or cleaned.
    type: path
notes:
  - The server keeps a snapshot on its own disk until it is deleted, so the module always tries to delete it.
"""

EXAMPLES = r"""
- name: Back up every Qdrant collection
  qdrant_backup:
    dest: "{{ bset.path }}/qdrant"
    url: "http://127.0.0.1:{{ stack_ports.qdrant }}"
    api_key: "{{ qdrant_api_key }}"
  register: qdrant_result

- name: Record the component
  backup_set:
    command: component
    root: /backup
    path: "{{ bset.path }}"
    component: qdrant
    data: "{{ qdrant_result.component }}"

- name: Back up two collections and the full storage
  qdrant_backup:
    dest: "{{ bset.path }}/qdrant"
    api_key: "{{ qdrant_api_key }}"
    collections: [documents, faq]
    full_storage: true
"""

RETURN = r"""
component:
  description:
    - The qdrant component's manifest entry, for C(backup_set command=component) (not in check mode), with a
      fingerprint per collection and what it describes (C(fingerprint_source)).
  returned: success and not check mode
  type: dict
  sample:
    status: success
    type: qdrant
    backup_type: full
    stale_snapshots_deleted: []
    tool: qdrant snapshot API
    server_version: 1.19.0
    started: "2026-01-31T02:00:00Z"
    ended: "2026-01-31T02:00:03Z"
    duration_s: 2.7
    bytes: 412160
    compressed: false
    files: [{path: /backup/.llmops_20260131_020000.partial/qdrant/documents.snapshot, sha256: "...", size: 391680}]
    collections:
      documents: {snapshot: documents-1-2026-01-31-02-00-00.snapshot, file: documents.snapshot, sha256: "...",
                  size: 391680, server_checksum: "...", checksum_verified: true, server_snapshot_deleted: true,
                  compressed: false, fingerprint_source: snapshot, snapshot_attempts: 1, points_count: 300,
                  vectors: {size: 8, distance: Cosine}, ids_sha256: "...", points_sha256: "..."}
      "문서 🚀": {file: "%EB%AC%B8%EC%84%9C%20%F0%9F%9A%80.snapshot", fingerprint_source: snapshot}
    full_storage: null
    fingerprint: {documents: {points_count: 300, vectors: {size: 8, distance: Cosine}, ids_sha256: "...",
                              points_sha256: "..."}}
    fingerprint_stable: true
    warnings: []
server:
  description: In check mode, the server's version and its collections with point counts and vector configs.
  returned: check mode
  type: dict
  sample: {server_version: 1.19.0, collections: {documents: {points_count: 300, vectors: {size: 8, distance: Cosine}}}}
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.llmops_common import LlmopsError, argument_spec, qdrant_argument_spec, use_encryption
from ansible.module_utils.llmops_layout import layout_path
from ansible.module_utils.llmops_qdrant import QdrantClient
from ansible.module_utils.llmops_qdrant_backup import backup, inspect


def main():
    module = AnsibleModule(
        argument_spec=argument_spec(
            encryption=True,
            **qdrant_argument_spec(),
            dest=dict(type="path", required=True),
            full_storage=dict(type="bool", default=False),
            backup_root=dict(type="path"),
        ),
        supports_check_mode=True,
    )
    p = module.params
    try:
        use_encryption(p)
        client = QdrantClient(p["url"], api_key=p["api_key"], timeout=p["timeout"], retries=p["retries"])
        if module.check_mode:
            server = inspect(client, p["collections"])
            module.exit_json(changed=True, server=server,
                             msg="would snapshot %d collection(s)%s into %s"
                             % (len(server["collections"]), " and the full storage" if p["full_storage"] else "",
                                os.path.abspath(p["dest"])))
        ledger = layout_path(p["backup_root"], "qdrant_snapshots") if p["backup_root"] else None
        entry = backup(client, p["dest"], collections=p["collections"], full_storage=p["full_storage"],
                       ledger_path=ledger)
        for warning in entry["warnings"]:
            module.warn(warning)
        module.exit_json(changed=True, component=entry)
    except (LlmopsError, OSError) as exc:
        module.fail_json(msg="Qdrant backup failed: %s" % exc)


if __name__ == "__main__":
    main()
