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
  - O(step=load) first applies the set's C(globals.sql.zst) (roles, memberships, tablespaces; its sha256 checked
    while it is unpacked). A role that already exists is tolerated (its attributes and password are then set as
    recorded); any other error fails the step.
  - Then, for each database of the set (or of O(databases)), it streams its dump (sha256 checked) into a
    scratch file at the target, checks that the dump holds that database, refuses new connections to the live
    database, ends its sessions and renames it to C(<db>__<safety_tag>) (the safety copy, instant, inside the
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
extends_documentation_fragment: [llmops, llmops.restore, llmops.connection, llmops.postgres, llmops.timeout,
                                 llmops.encryption]
attributes:
  check_mode:
    support: full
    description:
      - O(step=load), O(step=rollback) and O(step=cleanup) connect and say what they would do
        (which databases would be moved aside to which name, which copies would be dropped) and change nothing.
        O(step=verify) only reads and runs as usual.
options:
  step:
    choices: [load, verify, rollback, cleanup]
  databases:
    description:
      - The databases to restore; each must be in the set. Default is every database of the set.
    type: list
    elements: str
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
- name: Restore the roles, then move each database aside and restore it (PostgreSQL keeps running)
  postgres_restore:
    step: load
    set_path: "{{ plan.plan.set_path }}"
    staging: /backup/.restore/postgres
    safety_tag: "pre-restore-{{ stamp }}"
    jobs: 4

- name: Check the restored data against the manifest
  postgres_restore:
    step: verify
    set_path: "{{ plan.plan.set_path }}"
    staging: /backup/.restore/postgres
"""

RETURN = r"""
roles:
  description: The roles the globals create (or find existing) (O(step=load)); empty when the set has no globals.
  returned: when O(step=load)
  type: list
  elements: str
  sample: [app_reader, postgres]
databases:
  description:
    - Per database restored, its safety copy (null when it did not exist before) and artefact (O(step=load));
      in check mode what would be done.
  returned: when O(step=load)
  type: dict
  sample: {rag: {safety_copy: rag__pre-restore-20260131_020000, artefact: /backup/llmops_x/postgres/rag.dump.zst}}
summary:
  description:
    - The databases restored (or to restore, in check mode), for a summary line; a name that is not plain is
      shown JSON-quoted (O(step=load)).
  returned: when O(step=load)
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
  sample: {rag: restored from rag__pre-restore-20260131_020000}
removed:
  description: The safety copies dropped and the staging folder removed (O(step=cleanup)).
  returned: when O(step=cleanup)
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.llmops_backupset import load_component
from ansible.module_utils.llmops_common import StepFailed, argument_spec, remove_paths, run_restore_step, safety_tag
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
            store="postgres", default_timeout=0, restore=dict(steps=["load", "verify", "rollback", "cleanup"]),
            databases=dict(type="list", elements="str"),
            jobs=dict(type="int", default=2),
            scratch_dir=dict(type="str", default="/tmp"),  # noqa: S108 - a folder inside the container
        ),
        supports_check_mode=True,
    )
    target, conn, password = connection_of(module.params)

    def timeout(p):
        return p["timeout"] or None

    def suffix(p):
        return "__" + safety_tag(p)

    def selected(p, entry):
        return select_restore(dict.fromkeys(database_names(entry)), p["databases"])

    def load(p, check):
        entry = load_component(p["set_path"], "postgres")
        dumps, globals_file = component_artefacts(p["set_path"], entry)
        chosen = select_restore(dumps, p["databases"])
        if check:
            return dict(changed=True, roles=[], databases=check_plan(target, chosen, suffix(p), conn, password),
                        summary=display_names(chosen),
                        msg="would apply %s" % (globals_file[0] if globals_file else "no globals (the set has none)"))
        roles = restore_globals(target, globals_file[0], globals_file[1], p["staging"], conn, password,
                                timeout(p)) if globals_file else []
        done = restore_databases(target, dumps, chosen, p["staging"], suffix(p), conn, password, jobs=p["jobs"],
                                 scratch_dir=p["scratch_dir"], timeout=timeout(p))
        return dict(changed=True, roles=roles, databases=done, summary=display_names(done))

    def verify_step(p, check):
        entry = load_component(p["set_path"], "postgres")
        chosen = selected(p, entry)
        differences = verify(target, entry.get("fingerprint") or {}, chosen, conn, password,
                             timeout=timeout(p) or 600, keys=entry.get("fingerprint_keys") or "legacy")
        if differences:
            raise StepFailed("the restored PostgreSQL data differs from the backup's fingerprint: %s"
                             % "; ".join(differences[:20]), differences=differences)
        return dict(changed=False, differences=[], databases=chosen)

    def rollback_step(p, check):
        chosen = selected(p, load_component(p["set_path"], "postgres"))
        if check:
            pending = read_state(p["staging"]) or safety_copies(target, chosen, suffix(p), conn, password)
            return dict(changed=bool(pending), rolled_back={}, msg=("would undo: %s" % pending) if pending
                        else "nothing to roll back")
        done = rollback(target, p["staging"], chosen, suffix(p), conn, password)
        return dict(changed=bool(done), rolled_back=done)

    def cleanup(p, check):
        chosen = selected(p, load_component(p["set_path"], "postgres"))
        copies = [] if p["keep_safety_copy"] else safety_copies(target, chosen, suffix(p), conn, password)
        if not check:
            drop_databases(target, copies, conn, password)
        removed = copies + remove_paths([p["staging"]], dry_run=check)
        return dict(changed=bool(removed), removed=removed)

    run_restore_step(module, "PostgreSQL", dict(load=load, verify=verify_step, rollback=rollback_step,
                                                cleanup=cleanup))


if __name__ == "__main__":
    main()
