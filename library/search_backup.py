#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, llmops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# ruff: noqa: E402 - Ansible modules put DOCUMENTATION/EXAMPLES/RETURN before the imports.

from __future__ import annotations

DOCUMENTATION = r"""
---
module: search_backup
short_description: Back up Elasticsearch indices through the snapshot API into a backup set
description:
  - Checks that none of the selected indices (O(indices), else every index not starting with C(.)) is red or closed,
    registers the shared-filesystem snapshot repository O(repository) at O(location) below the server's C(path.repo)
    and verifies it, takes one snapshot of the indices with C(wait_for_completion=true), then streams the repository
    folder, as this host sees it below O(repo_path), into C(<dest>/repository.tar.zst) (tar, zstd, sha256 computed in
    the same pass), and finally deletes the server's snapshot. The delete is safe at that point, the artefact being a
    complete, hashed copy of the repository that a restore registers on its own; a failed delete is a warning.
  - A server without C(path.repo), a red cluster and a repository that fails verification each fail with a message
    that says what to fix.
  - Returns the manifest entry of the component for C(backup_set), with a fingerprint per index (doc count, sha256
    over the sorted document ids, sha256 over ids and C(_source)). It is computed from the snapshot's own files when
    their format can be read (the lab's stand-in; C(fingerprint_source=snapshot)). A real Elasticsearch snapshot
    holds Lucene files that cannot be read here, so its fingerprint is the server's, taken before and after the
    snapshot and kept only when both agree (C(fingerprint_source=server-unchanged)); an index written meanwhile is
    snapshotted again, up to 3 times, else recorded with C(fingerprint_source=unverifiable) and a warning.
extends_documentation_fragment: [llmops, llmops.search, llmops.compression, llmops.encryption]
attributes:
  check_mode:
    support: full
    description: Lists the indices with their document counts and health; registers nothing, takes no snapshot.
options:
  dest:
    description: Folder of this component inside the set being written; created with mode 0700.
    type: path
    required: true
  repo_path:
    description:
      - This host's path of the folder the server knows as C(path.repo) (the host side of its volume); the module
        reads the repository's files there.
    type: path
    required: true
  repository:
    description: The name of the snapshot repository the module registers (type C(fs)).
    type: str
    default: llmops_backup
  location:
    description: The repository's folder, relative to C(path.repo) (and to O(repo_path)); O(repository) by default.
    type: str
notes:
  - The password reaches the server only in the C(Authorization) header of each request.
"""

EXAMPLES = r"""
- name: Back up the search engine's indices
  search_backup:
    dest: "{{ bset.path }}/search"
    url: "http://127.0.0.1:{{ stack_ports.elasticsearch }}"
    login_password: "{{ elastic_password }}"
    repo_path: "{{ stack_root }}/data/appdb/elasticsearch-snapshots"
  register: search_result

- name: Record the component
  backup_set:
    command: component
    root: /backup
    path: "{{ bset.path }}"
    component: search
    data: "{{ search_result.component }}"
"""

RETURN = r"""
component:
  description: The search component's manifest entry, for C(backup_set command=component) (not in check mode).
  returned: success and not check mode
  type: dict
  sample:
    status: success
    type: search
    backup_type: full
    tool: elasticsearch snapshot API (fs repository)
    server_version: 8.15.3
    bytes: 1605
    compressed: true
    files: [{path: /backup/.llmops_20260131_020000.partial/search/repository.tar.zst, sha256: "...", size: 1605}]
    repository: {name: llmops_backup, location: llmops_backup, snapshot: llmops-20260131-020000-1a2b3c4d,
                 snapshot_uuid: "...", file: repository.tar.zst, server_snapshot_deleted: true}
    indices: {documents: {doc_count: 120, ids_sha256: "...", docs_sha256: "...", fingerprint_source: snapshot}}
    fingerprint: {documents: {doc_count: 120, ids_sha256: "...", docs_sha256: "..."}}
    fingerprint_source: snapshot
    fingerprint_stable: true
    warnings: []
server:
  description: In check mode, the server's version, the health of the indices and each index's doc count.
  returned: check mode
  type: dict
  sample: {server_version: 8.15.3, health: yellow, indices: {documents: {doc_count: 120, health: yellow,
                                                                         status: open}}}
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.llmops_common import LlmopsError, argument_spec, search_argument_spec, use_encryption
from ansible.module_utils.llmops_search import DEFAULT_REPOSITORY, SearchClient, backup, inspect


def main():
    module = AnsibleModule(
        argument_spec=argument_spec(
            compression=True,
            dest=dict(type="path", required=True),
            repo_path=dict(type="path", required=True),
            repository=dict(type="str", default=DEFAULT_REPOSITORY),
            location=dict(type="str"),
            **search_argument_spec()),
        supports_check_mode=True,
    )
    p = module.params
    try:
        use_encryption(p)
        client = SearchClient(p["url"], user=p["login_user"], password=p["login_password"],
                              timeout=p["timeout"] or None, retries=p["retries"])
        if module.check_mode:
            server = inspect(client, p["indices"])
            module.exit_json(changed=True, server=server, msg="would snapshot %d index(es) into %s"
                             % (len(server["indices"]), os.path.abspath(p["dest"])))
        entry = backup(client, p["dest"], p["repo_path"], indices=p["indices"], repository=p["repository"],
                       location=p["location"], zstd_level=p["zstd_level"], zstd_threads=p["zstd_threads"],
                       timeout=p["timeout"])
        for warning in entry["warnings"]:
            module.warn(warning)
        module.exit_json(changed=True, component=entry)
    except (LlmopsError, OSError) as exc:
        module.fail_json(msg="search backup failed: %s" % exc)


if __name__ == "__main__":
    main()
