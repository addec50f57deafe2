#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, llmops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# ruff: noqa: E402 - Ansible modules put DOCUMENTATION/EXAMPLES/RETURN before the imports.

from __future__ import annotations

DOCUMENTATION = r"""
---
module: postgres_restore
short_description: Restore PostgreSQL databases and roles from a backup set, with a safety copy and verification
description:
  - One step of a PostgreSQL restore per call, so that the playbook can verify and roll back. PostgreSQL keeps
    running throughout; only the sessions of the database being restored are ended. In order
  - O(step=globals) applies the set's C(globals.sql.zst) (roles, memberships, tablespaces; its sha256 checked while
    it is unpacked). A role that already exists is tolerated (its attributes and password are then set as
    recorded); any other error fails the step.
  - O(step=restore), for each database of the set (or of O(databases)), streams its dump (sha256 checked) into a
    scratch file at the target, checks that the dump holds that database, refuses new connections to the live
    database, ends its sessions and renames it to C(<db><safety_suffix>) (the safety copy, instant, inside the
    server, kept unconnectable; when that name would be longer than PostgreSQL's 63 bytes, C(<db>) is cut to fit
    and marked with C(~) and 8 hex digits of its sha256), then runs C(pg_restore --create --exit-on-error --jobs)
    from that file. The database comes back with the owner, encoding, locale, privileges and settings of the dump;
    the grants on its objects come with it.
  - The manifest is not trusted. Each database's dump is the file its entry records for it (C(database_details)),
    which must be one plain file name listed with a sha256 among the component's files and a regular file inside
    the set; a path is never built from a database name. Database and role names may hold anything PostgreSQL
    accepts (quotes, backslashes, newlines, C(/), Korean, emoji...); they reach SQL quoted and the tools as
    single arguments, never through a shell.
  - O(step=verify) compares the restored databases' live fingerprint with the one in the set's manifest.
  - O(step=rollback) drops the databases the restore created and renames their safety copies back.
  - O(step=cleanup) removes the staging folder and, unless O(keep_safety_copy), drops the safety copies.
extends_documentation_fragment: [llmops, llmops.restore, llmops.safety_suffix, llmops.connection, llmops.postgres,
                                 llmops.timeout]
attributes:
  check_mode:
    support: full
    description:
      - O(step=globals), O(step=restore), O(step=rollback) and O(step=cleanup) connect and say what they would do
        (which databases would be moved aside to which name, which copies would be dropped) and change nothing.
        O(step=verify) only reads and runs as usual.
options:
  step:
    choices: [globals, restore, verify, rollback, cleanup]
  databases:
    description:
      - The databases to restore; each must be in the set. Default is every database of the set.
    type: list
    elements: str
  safety_suffix:
    default: __pre_restore
  jobs:
    description: Parallel C(pg_restore) workers (C(--jobs)).
    type: int
    default: 2
  scratch_dir:
    description:
      - Folder at the target (inside O(container)) where each dump is staged for C(pg_restore); it needs the room
        for the largest uncompressed dump. The staged file is removed after use.
    type: str
    default: /tmp
seealso:
  - name: pg_restore
    description: C(--create), C(--jobs), C(--exit-on-error).
    link: https://www.postgresql.org/docs/current/app-pgrestore.html
"""

EXAMPLES = r"""
- name: Restore the roles (PostgreSQL keeps running)
  postgres_restore:
    step: globals
    set_path: "{{ plan.plan.set_path }}"
    staging: /backup/.restore/postgres

- name: Move each database aside and restore it
  postgres_restore:
    step: restore
    set_path: "{{ plan.plan.set_path }}"
    staging: /backup/.restore/postgres
    safety_suffix: "__pre_restore_{{ stamp }}"
    jobs: 4

- name: Check the restored data against the manifest
  postgres_restore:
    step: verify
    set_path: "{{ plan.plan.set_path }}"
    staging: /backup/.restore/postgres
"""

RETURN = r"""
roles:
  description: The roles the globals create (or find existing) (O(step=globals)).
  returned: when O(step=globals)
  type: list
  elements: str
  sample: [app_reader, postgres]
databases:
  description:
    - Per database restored, its safety copy (null when it did not exist before) and artefact (O(step=restore));
      in check mode what would be done.
  returned: when O(step=restore)
  type: dict
  sample: {rag: {safety_copy: rag__pre_restore_20260131_020000, artefact: /backup/llmops_x/postgres/rag.dump.zst}}
summary:
  description:
    - The databases restored (or to restore, in check mode), for a summary line; a name that is not plain is
      shown JSON-quoted (O(step=restore)).
  returned: when O(step=restore)
  type: str
  sample: rag, "a/b"
differences:
  description: How the live data differs from the manifest's fingerprint (O(step=verify)).
  returned: when O(step=verify)
  type: list
  elements: str
  sample: ["rag.sequences.public.chunk_seq: 6998, expected 6999"]
rolled_back:
  description: What the rollback did per database (O(step=rollback)).
  returned: when O(step=rollback)
  type: dict
  sample: {rag: restored from rag__pre_restore_20260131_020000}
removed:
  description: The safety copies dropped and the staging folder removed (O(step=cleanup)).
  returned: when O(step=cleanup)
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.llmops_backupset import load_component
from ansible.module_utils.llmops_common import LlmopsError, argument_spec, remove_paths
from ansible.module_utils.llmops_exec import connection_of
from ansible.module_utils.llmops_postgres_restore import (
    check_plan,
    component_artefacts,
    database_names,
    display_names,
    drop_databases,
    read_state,
    restore_databases,
    restore_globals,
    rollback,
    safety_copies,
    select_restore,
    verify,
)


def main():
    module = AnsibleModule(
        argument_spec=argument_spec(
            store="postgres", default_timeout=0,
            restore=dict(steps=["globals", "restore", "verify", "rollback", "cleanup"], safety_suffix="__pre_restore"),
            databases=dict(type="list", elements="str"),
            jobs=dict(type="int", default=2),
            scratch_dir=dict(type="str", default="/tmp"),  # noqa: S108 - a folder inside the container
        ),
        supports_check_mode=True,
    )
    p = module.params
    step = p["step"]
    target, conn, password = connection_of(p)
    timeout = p["timeout"] or None
    try:
        entry = load_component(p["set_path"], "postgres")
        if step in ("globals", "restore"):
            dumps, globals_file = component_artefacts(p["set_path"], entry)
        else:  # verify, rollback and cleanup need the names only, never the artefacts
            dumps, globals_file = dict.fromkeys(database_names(entry)), None
        selected = select_restore(dumps, p["databases"])
        if step == "globals":
            if not globals_file:
                module.exit_json(changed=False, roles=[], msg="the set has no globals (backed up with globals=false)")
            if module.check_mode:
                module.exit_json(changed=True, roles=[], msg="would apply %s" % globals_file[0])
            roles = restore_globals(target, globals_file[0], globals_file[1], p["staging"], conn, password, timeout)
            module.exit_json(changed=True, roles=roles)
        if step == "restore":
            if module.check_mode:
                module.exit_json(changed=True, databases=check_plan(target, selected, p["safety_suffix"], conn,
                                                                    password), summary=display_names(selected))
            done = restore_databases(target, dumps, selected, p["staging"], p["safety_suffix"], conn, password,
                                     jobs=p["jobs"], scratch_dir=p["scratch_dir"], timeout=timeout)
            module.exit_json(changed=True, databases=done, summary=display_names(done))
        if step == "verify":
            differences = verify(target, entry.get("fingerprint") or {}, selected, conn, password,
                                 timeout=timeout or 600, keys=entry.get("fingerprint_keys") or "legacy")
            if differences:
                module.fail_json(msg="the restored PostgreSQL data differs from the backup's fingerprint: %s"
                                 % "; ".join(differences[:20]), differences=differences)
            module.exit_json(changed=False, differences=[], databases=selected)
        if step == "rollback":
            if module.check_mode:
                pending = read_state(p["staging"]) or safety_copies(target, selected, p["safety_suffix"], conn,
                                                                    password)
                module.exit_json(changed=bool(pending), rolled_back={}, msg=("would undo: %s" % pending) if pending
                                 else "nothing to roll back")
            done = rollback(target, p["staging"], selected, p["safety_suffix"], conn, password)
            module.exit_json(changed=bool(done), rolled_back=done)
        # step == "cleanup"
        copies = [] if p["keep_safety_copy"] else safety_copies(target, selected, p["safety_suffix"], conn, password)
        if not module.check_mode:
            drop_databases(target, copies, conn, password)
        removed = copies + remove_paths([p["staging"]], dry_run=module.check_mode)
        module.exit_json(changed=bool(removed), removed=removed)
    except (LlmopsError, OSError) as exc:
        module.fail_json(msg="PostgreSQL restore step %s failed: %s" % (step, exc))


if __name__ == "__main__":
    main()
