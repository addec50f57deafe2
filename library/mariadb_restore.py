#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, llmops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# ruff: noqa: E402 - Ansible modules put DOCUMENTATION/EXAMPLES/RETURN before the imports.

from __future__ import annotations

DOCUMENTATION = r"""
---
module: mariadb_restore
short_description: Restore MariaDB from a backup set, step by step, with a safety copy and verification
description:
  - One step of a MariaDB restore per call, so that the playbook stops and starts the service between them
    and can roll back. In order
  - O(step=stage) unpacks the set's artefact and every incremental of its chain (checksums checked while they
    stream) into O(staging) and prepares them with C(mariadb-backup --prepare), in throw-away containers of the
    server's own image. The running server is not touched.
  - O(step=swap) (server stopped) moves the datadir aside to C(<datadir>.<safety_tag>), the safety copy, and
    copies the prepared backup into an empty datadir (C(mariadb-backup --copy-back)), owned by O(owner).
  - O(step=replay) (server running) replays the archived binary logs from the backup's position up to
    O(target_time) and returns the point actually reached. It and O(step=verify) log in as O(login_user), over
    TCP with O(login_host).
  - O(step=verify) compares the live data's fingerprint with the one in the set's manifest (taken from the
    backup itself). The role runs it before any replay, so a point-in-time restore is verified at its base. It
    first waits until the server answers (C(mariadb-admin ping) every 0.2 s, at most O(timeout) or 300 s), so a
    restore starts the container without waiting for its health check, which runs only every 10 s.
  - O(step=rollback) (server stopped) puts the safety copy back; O(step=cleanup) removes the staging folder and,
    unless O(keep_safety_copy), the safety copy.
  - With O(until) (C(restore_plan)'s C(mariadb_chain_partial.restores_to)) the chain stops after that set, the last
    complete point of a chain whose later incremental is missing or damaged; O(step=verify) then compares with that
    set's fingerprint, and O(step=replay) refuses, because the archived binary logs continue from the position of the
    set asked for, not from O(until)'s (applying them would skip what the missing increments held).
extends_documentation_fragment: [llmops, llmops.restore, llmops.connection, llmops.mariadb, llmops.timeout,
                                 llmops.encryption]
attributes:
  check_mode:
    support: full
    description: Says what the step would do and changes nothing.
options:
  step:
    choices: [stage, swap, replay, verify, rollback, cleanup]
  backup_root:
    description: The folder holding the backup sets (for the incremental chain) and the binary log archive.
    type: path
    required: true
  datadir:
    description: The host folder mounted as the server's datadir. Required for O(step=swap) and O(step=rollback).
    type: path
  image:
    description: The image whose tools prepare the backup. Defaults to the image of O(container).
    type: str
  owner:
    description: C(uid:gid) that owns the restored datadir (the images run MariaDB as 999).
    type: str
    default: "999:999"
  target_time:
    description: For O(step=replay), the point in time to stop at (ISO 8601, UTC).
    type: str
  until:
    description:
      - For O(step=stage) and O(step=verify), a set id of the set's chain - restore the full and the incrementals up
        to this set only (a partial chain, C(-e mariadb_chain_partial=true) of restore.yml). O(step=replay) refuses
        it.
    type: str
"""

EXAMPLES = r"""
- name: Unpack and prepare before stopping anything
  mariadb_restore:
    step: stage
    set_path: "{{ plan.plan.set_path }}"
    backup_root: /backup
    staging: /backup/.restore/mariadb

- name: A chain whose last incremental is damaged, restored to the last complete point only
  mariadb_restore:
    step: stage
    set_path: "{{ plan.plan.set_path }}"
    backup_root: /backup
    staging: /backup/.restore/mariadb
    until: "{{ plan.plan.mariadb_chain_partial.restores_to }}"
"""

RETURN = r"""
prepared:
  description: The prepared datadir in the staging area (O(step=stage)).
  returned: when O(step=stage)
  type: str
chain:
  description: The set ids applied, full first (O(step=stage)).
  returned: when O(step=stage)
  type: list
  elements: str
until:
  description: The set the partial chain stops at (O(step=stage) with O(until)).
  returned: when O(until) is given to O(step=stage)
  type: str
safety_copy:
  description: Where the previous datadir was moved (O(step=swap)).
  returned: when O(step=swap)
  type: str
reached:
  description: Time (UTC) of the last binary log event replayed (O(step=replay)); null when none was needed.
  returned: when O(step=replay)
  type: str
target_time:
  description: The target, in UTC.
  returned: when O(step=replay)
  type: str
start_position:
  description: The binary log position the replay started from (where the backup ends).
  returned: when O(step=replay)
  type: int
archive_end:
  description: Time (UTC) of the newest event in the archived binary logs.
  returned: when O(step=replay)
  type: str
covered:
  description:
    - Whether the archive reaches O(target_time). When false the data stops at RV(archive_end), not at the target
      (archive the binary logs more often, or restore them from the server's own folder first).
  returned: when O(step=replay)
  type: bool
events:
  description: Number of binary log events replayed.
  returned: when O(step=replay)
  type: int
binlogs:
  description: The archived binary logs read.
  returned: when O(step=replay)
  type: list
  elements: str
summary:
  description: What was compared and where the fingerprint came from, for the recovery record (O(step=verify)).
  returned: when O(step=verify)
  type: str
fingerprint_source:
  description: V(artefact) (taken from the backup itself) or V(live-server) (read after the backup).
  returned: when O(step=verify)
  type: str
differences:
  description:
    - How the live data differs from the manifest's fingerprint (O(step=verify)), one line per row count, table
      checksum or object count that differs.
  returned: when O(step=verify)
  type: list
  elements: str
  sample: ["llmops_app.tables.users.rows: 499, expected 500"]
"""

import datetime
import os

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.llmops_backupset import diff_fingerprints, isoformat, load_component, parse_time
from ansible.module_utils.llmops_common import (
    LlmopsError,
    StepFailed,
    argument_spec,
    remove_paths,
    run_restore_step,
    safety_tag,
)
from ansible.module_utils.llmops_exec import connection_of
from ansible.module_utils.llmops_layout import layout_path
from ansible.module_utils.llmops_mariadb import (
    binlogs_to_replay,
    fingerprint,
    replay_binlogs,
    restore_chain,
    rollback_datadir,
    stage_restore,
    swap_datadir,
    wait_until_up,
)


def main():
    module = AnsibleModule(
        argument_spec=argument_spec(
            store="mariadb", default_timeout=0,
            restore=dict(steps=["stage", "swap", "replay", "verify", "rollback", "cleanup"]),
            backup_root=dict(type="path", required=True),
            datadir=dict(type="path"),
            image=dict(type="str"),
            owner=dict(type="str", default="999:999"),
            target_time=dict(type="str"),
            until=dict(type="str"),
        ),
        required_if=[("step", "swap", ["datadir"]), ("step", "rollback", ["datadir"]),
                     ("step", "replay", ["target_time"])],
        supports_check_mode=True,
    )
    target, conn, password = connection_of(module.params)

    def timeout(p):
        return p["timeout"] or None

    def safety(p):
        return "%s.%s" % ((p["datadir"] or "").rstrip("/"), safety_tag(p))

    def point(p):
        """The set whose data the restore brings back: the set, or with ``until`` that set of its chain."""
        chain = restore_chain(p["backup_root"], p["set_path"], until=p["until"])
        if not p["until"] or chain[-1][0] == os.path.basename(os.path.abspath(p["set_path"])):
            return chain, p["set_path"]
        return chain, os.path.join(p["backup_root"], chain[-1][0])  # a checked set id of the chain (restore_chain)

    def stage(p, check):
        chain = point(p)[0]
        ids = [c[0] for c in chain]
        partial = dict(until=p["until"]) if p["until"] else {}
        if check:
            return dict(changed=True, chain=ids, msg="would unpack and prepare the chain", **partial)
        image = p["image"] or target.image()
        prepared = stage_restore(image, chain, os.path.join(p["staging"], "prepare"), timeout=timeout(p))
        return dict(changed=True, prepared=prepared, chain=ids, image=image, **partial)

    def swap(p, check):
        prepared = os.path.join(p["staging"], "prepare", "0")
        if not os.path.isdir(prepared):
            raise LlmopsError("nothing prepared in %s: run step=stage first" % prepared)
        if check:
            return dict(changed=True, safety_copy=safety(p), msg="would move %s aside and copy the backup in"
                        % p["datadir"])
        kept = swap_datadir(p["image"] or target.image(), prepared, p["datadir"], "." + safety_tag(p),
                            owner=p["owner"])
        return dict(changed=True, safety_copy=kept)

    def replay(p, check):
        if p["until"]:
            raise LlmopsError("no binary log replay after a partial chain (until=%s): the archived logs continue from "
                              "the position where set %s ends, which the restored data does not reach, and replaying "
                              "them would apply transactions over the gap; restore a point in time from a set whose "
                              "chain is whole" % (p["until"], os.path.basename(os.path.abspath(p["set_path"]))))
        target_time = parse_time(p["target_time"])
        if check:
            return dict(changed=True, msg="would replay binary logs up to %s" % isoformat(target_time))
        binlog = load_component(p["set_path"], "mariadb").get("binlog") or {}
        logs = binlogs_to_replay(layout_path(p["backup_root"], "binlogs"), binlog.get("file", ""))
        os.makedirs(os.path.join(p["staging"], "binlogs"), mode=0o700, exist_ok=True)
        # --stop-datetime stops before the first event at or after the given second
        replayed = replay_binlogs(target, conn, logs, binlog.get("position", 4),
                                  target_time + datetime.timedelta(seconds=1) if target_time.microsecond else
                                  target_time, os.path.join(p["staging"], "binlogs"), password=password,
                                  timeout=timeout(p))
        end = replayed["archive_end"]
        return dict(changed=True, reached=isoformat(replayed["reached"]) if replayed["reached"] else None,
                    target_time=isoformat(target_time), start_position=int(binlog.get("position", 4)),
                    archive_end=isoformat(end) if end else None,
                    covered=bool(end and end >= target_time.replace(microsecond=0)),
                    events=replayed["events"], binlogs=[os.path.basename(x) for x in logs])

    def verify(p, check):
        entry = load_component(point(p)[1] if p["until"] else p["set_path"], "mariadb")
        wait_until_up(target, conn, password, timeout=timeout(p) or 300)
        actual = fingerprint(target, conn, password)
        differences = diff_fingerprints(entry.get("fingerprint") or {}, actual)
        if differences:
            raise StepFailed("the restored MariaDB data differs from the backup's fingerprint: %s"
                             % "; ".join(differences[:20]), differences=differences)
        tables = sum(len(d.get("tables", {})) for d in actual.values())
        source = entry.get("fingerprint_source", "live-server")
        summary = ("%d tables in %d databases matched the set's fingerprint (row counts and CHECKSUM TABLE), "
                   "taken from %s" % (tables, len(actual), "the backup itself" if source == "artefact" else
                                      "the live server after the backup"))
        if p["until"]:
            summary += ("; PARTIAL CHAIN: restored to %s, the last complete point of the chain, and verified against "
                        "that set's fingerprint" % p["until"])
        return dict(changed=False, differences=[], tables=tables, fingerprint_source=source, summary=summary)

    def rollback(p, check):
        if not os.path.exists(safety(p)):
            # swap moves the datadir aside first: without a safety copy it never did, and the datadir is the old one
            return dict(changed=False, msg="no safety copy at %s: the datadir was never moved aside, it holds the data "
                        "from before the restore" % safety(p))
        if check:
            return dict(changed=True, msg="would put %s back" % safety(p))
        rollback_datadir(p["datadir"], safety(p))
        return dict(changed=True, restored_from=safety(p))

    def cleanup(p, check):
        removed = remove_paths([p["staging"]] + ([] if p["keep_safety_copy"] or not p["datadir"] else [safety(p)]),
                               dry_run=check)
        return dict(changed=bool(removed), removed=removed)

    run_restore_step(module, "MariaDB", dict(stage=stage, swap=swap, replay=replay, verify=verify,
                                             rollback=rollback, cleanup=cleanup))


if __name__ == "__main__":
    main()
