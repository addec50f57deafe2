#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, llmops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# ruff: noqa: E402 - Ansible modules put DOCUMENTATION/EXAMPLES/RETURN before the imports.

from __future__ import annotations

DOCUMENTATION = r"""
---
module: postgres_backup
short_description: Back up PostgreSQL databases with pg_dump and the roles with pg_dumpall --globals-only
description:
  - Dumps every selected database with C(pg_dump --format=custom) through zstd into C(<dest>/<file>.dump.zst)
    (or, with O(format=directory), C(pg_dump --format=directory --jobs) streamed out as C(<file>.dir.tar.zst)),
    computing the sha256 in the same pass, and returns the manifest entry of the component for C(backup_set).
  - C(<file>) is the database name when it is plain (letters, digits, C(_), C(.), C(-)) and its percent-encoded
    form otherwise, so a name holding C(/), C(..), quotes, newlines, Korean or emoji is always one file inside
    O(dest); the entry records the file of each database (C(database_details.<db>.file)), which a restore reads.
    Names reach the tools as single arguments or quoted libpq connection strings, never through a shell, and
    every session uses the UTF8 client encoding.
  - Each database is fingerprinted (row count and an order-independent hash of the rows of every table, the
    sequences' last values, counts of views, functions and triggers) and dumped in one exported snapshot, so
    the recorded fingerprint is exactly what a restore of the dump must give, also while applications write.
    Sequences are not transactional, so their values are read back from the dump itself; the time just before
    the snapshot is recorded (C(database_details.<db>.snapshot_at)); every transaction committed before it is in
    the dump.
  - A database that fails does not stop the others; the module then fails with a message naming each failed
    database and its cause.
  - Every dump is validated afterwards by streaming it back (its sha256 checked) into C(pg_restore --list),
    which must list TABLE DATA entries when the database has tables.
  - Roles, memberships and tablespaces go to C(<dest>/globals.sql.zst) (C(pg_dumpall --globals-only)), and
    with O(plain_sql=true) a plain SQL copy of each database to C(<dest>/<file>.sql.zst).
extends_documentation_fragment: [llmops, llmops.connection, llmops.postgres, llmops.compression, llmops.timeout,
                                 llmops.encryption]
attributes:
  check_mode:
    support: full
    description:
      - Connects and returns the server version, the databases that would be dumped, their sizes and file names,
        but writes nothing (not even O(dest)); C(changed) says that a backup would be made.
options:
  dest:
    description:
      - Folder of this component inside the set being written; created with mode 0700. The files are 0600.
    type: path
    required: true
  databases:
    description:
      - The databases to dump. Default is every connectable, non-template database except C(postgres).
      - The module fails before writing anything when one of them does not exist.
    type: list
    elements: str
  globals:
    description: Also dump roles and tablespaces (C(pg_dumpall --globals-only)) into C(globals.sql.zst).
    type: bool
    default: true
  plain_sql:
    description: Also write a plain SQL copy of each database (C(pg_dump --format=plain)) into C(<file>.sql.zst).
    type: bool
    default: false
  format:
    description:
      - V(custom) streams C(pg_dump -Fc) directly. V(directory) dumps with O(jobs) parallel workers into a scratch
        folder at the target (it needs the room for the uncompressed dump there) and streams it out as a tar.
    type: str
    choices: [custom, directory]
    default: custom
  jobs:
    description: Parallel C(pg_dump) workers with O(format=directory).
    type: int
    default: 2
seealso:
  - name: pg_dump
    description: C(--format), C(--snapshot), C(--jobs).
    link: https://www.postgresql.org/docs/current/app-pgdump.html
"""

EXAMPLES = r"""
- name: Back up every PostgreSQL database and the roles
  postgres_backup:
    dest: "{{ bset.path }}/postgres"
  register: postgres_result

- name: Record it in the set
  backup_set:
    command: component
    root: /backup
    path: "{{ bset.path }}"
    component: postgres
    data: "{{ postgres_result.component }}"

- name: Back up one database of a server reached over TCP, in parallel, with a plain SQL copy
  postgres_backup:
    dest: "{{ bset.path }}/postgres"
    container: ""
    login_host: db.internal
    login_port: 5432
    login_user: backup
    login_password: "{{ postgres_password }}"
    databases: [rag]
    format: directory
    jobs: 4
    plain_sql: true
"""

RETURN = r"""
component:
  description:
    - The postgres component's manifest entry, for C(backup_set command=component) (not in check mode), with a
      fingerprint per database taken in the snapshot its dump was made in.
  returned: success and not check mode
  type: dict
  sample:
    status: success
    type: postgres
    backup_type: full
    tool: pg_dump
    tool_version: pg_dump (PostgreSQL) 15.20 (Debian 15.20-0+deb12u1)
    server_version: 15.20 (Debian 15.20-0+deb12u1)
    format: custom
    started: "2026-01-31T02:00:00Z"
    ended: "2026-01-31T02:00:04Z"
    duration_s: 4.2
    bytes: 234182
    databases: [analytics, rag]
    database_details:
      rag: {file: rag.dump.zst, plain_sql_file: null, size_on_server: 10894695, bytes_raw: 1203322,
            snapshot_at: "2026-01-31T02:00:01.123456Z", sequences_from_dump: 1}
    files: [{path: /backup/.llmops_20260131_020000.partial/postgres/rag.dump.zst, sha256: "...", size: 231491}]
    globals_file: globals.sql.zst
    fingerprint_keys: quote_ident
    fingerprint:
      rag:
        tables: {public.chunks: {rows: 6000, md5: "056ca6ace0fc8173d5a5ad22ee9cbbb8"}}
        sequences: {public.chunk_seq: 6999}
        views: 1
        functions: 1
        triggers: 1
    pg_restore_list_entries: {rag: {total: 16, table_data: 2}}
    globals: true
server_version:
  description: The server's version.
  returned: success
  type: str
  sample: 15.20 (Debian 15.20-0+deb12u1)
databases:
  description: The databases dumped (or that would be dumped in check mode) with their size on the server in bytes.
  returned: success
  type: dict
  sample: {analytics: 7814503, rag: 10894695}
artefacts:
  description: The file name (in O(dest)) of each database's dump, written or, in check mode, that would be written.
  returned: success
  type: dict
  sample: {rag: rag.dump.zst, "a/b": a%2Fb.dump.zst}
estimated_bytes:
  description: In check mode, the total size of those databases on the server (the dumps are much smaller).
  returned: check mode
  type: int
  sample: 18709198
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.llmops_common import LlmopsError, argument_spec, use_encryption
from ansible.module_utils.llmops_exec import connection_of
from ansible.module_utils.llmops_postgres import artefact_files, backup, select_databases, server_version


def main():
    module = AnsibleModule(
        argument_spec=argument_spec(
            store="postgres", compression=True, default_timeout=0,
            dest=dict(type="path", required=True),
            databases=dict(type="list", elements="str"),
            globals=dict(type="bool", default=True),
            plain_sql=dict(type="bool", default=False),
            format=dict(type="str", default="custom", choices=["custom", "directory"]),
            jobs=dict(type="int", default=2),
        ),
        supports_check_mode=True,
    )
    p = module.params
    target, conn, password = connection_of(p)
    try:
        use_encryption(p)
        if module.check_mode:
            selected = select_databases(target, p["databases"], conn, password)
            names = artefact_files(selected, p["format"], p["plain_sql"])
            what = ", ".join(repr(db) for db in sorted(selected)) or "no database"
            if p["globals"]:
                what += " and the globals"
            module.exit_json(changed=True, server_version=server_version(target, conn, password), databases=selected,
                             artefacts={db: n["dump"] for db, n in names.items()},
                             estimated_bytes=sum(selected.values()), msg="would dump %s into %s" % (what, p["dest"]))
        select_databases(target, p["databases"], conn, password)  # fail before creating anything
        os.makedirs(p["dest"], mode=0o700, exist_ok=True)
        entry = backup(target, p["dest"], databases=p["databases"], conn=conn, password=password,
                       include_globals=p["globals"], plain_sql=p["plain_sql"], fmt=p["format"], jobs=p["jobs"],
                       zstd_level=p["zstd_level"], zstd_threads=p["zstd_threads"], timeout=p["timeout"] or None)
        details = entry["database_details"]
        module.exit_json(changed=True, server_version=entry["server_version"], component=entry,
                         databases={db: d["size_on_server"] for db, d in details.items()},
                         artefacts={db: d["file"] for db, d in details.items()})
    except (LlmopsError, OSError) as exc:
        module.fail_json(msg="PostgreSQL backup failed: %s" % exc)


if __name__ == "__main__":
    main()
