#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, llmops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# ruff: noqa: E402 - Ansible modules put DOCUMENTATION/EXAMPLES/RETURN before the imports.

from __future__ import annotations

DOCUMENTATION = r"""
---
module: restore_plan
short_description: Verify a backup set and plan its restore before anything is stopped
description:
  - Picks the restore point - by default (O(backup_id=newest)) every component at its newest good state, per
    component the newest complete set whose backup of it succeeded and verifies (a schedule writes MariaDB and the
    other stores into separate sets, so no one set holds everything); a newer set passed over is a warning, and
    C(plan.sources) says per component which set it comes from, the time its data is from and its RPO. One set
    (O(backup_id=latest), a set id or a path; for a point-in-time restore the newest set whose MariaDB backup ended
    before O(target_time)) or a composition by hand (V(mariadb=<set id>,uploads=<set id>)) are restored as named.
  - Re-hashes every set it reads against its C(SHA256SUMS) and manifest, checks every set a MariaDB incremental
    chain needs and the archived binary logs a point-in-time restore replays, and compares the disk the
    restore needs with the free space of the staging area.
  - With O(auth_key) every set the restore reads (the set and each set of its MariaDB chain) must be
    authenticated - its C(SHA256SUMS.hmac) made with this key for this set id and its C(SHA256SUMS) - or the
    plan fails naming why (no HMAC, another key, or an HMAC that does not match - C(SHA256SUMS) and the manifest
    edited, or the set
    renamed). A set made before authentication is accepted only with O(allow_unauthenticated=true), and the
    plan warns about it.
  - The set's verification records (C(verification.json)) are shown, marked as not authenticated; no decision
    rests on them.
  - Returns the plan (artefacts in order, services that stop, bytes needed) and fails, listing every problem,
    when the set cannot be restored as asked. It changes nothing, except the restore record of O(lock=take).
  - Backups and restores exclude each other host-wide (one rule, the owner identity of the backup's C(.partial)
    folders - the outermost C(ansible-playbook), its start time, the boot). With O(lock=take) (a real restore)
    the module records its run in C(<backup_root>/.restore-owner.json) after the plan passed, naming the sets it
    reads; it refuses while a backup run is in progress (an active C(.partial) folder) or another live restore
    holds the record. A record whose run died is replaced. While the record's run lives, a backup does not begin
    and retention keeps those sets. O(lock=release) removes this run's record (the restore role's C(always)).
  - O(lock=check) (the default, a dry run) takes nothing; a backup or restore in progress is reported as a warning
    and in C(plan.active_runs).
extends_documentation_fragment: [llmops]
attributes:
  check_mode:
    support: full
    description: Reads only; the same result in check mode, where O(lock=take) and O(lock=release) only report.
options:
  backup_root:
    description: The folder holding the backup sets.
    type: path
    required: true
  backup_id:
    description:
      - V(newest) - each component from the newest set holding a good backup of it (with O(target_time), ended
        before it; MariaDB replayed to it).
      - V(latest), a set id or a set's path - that one set (with O(target_time), the newest set whose MariaDB backup
        ended before it).
      - V(<component>=<set id>,...) - each component from the set named (what C(plan.backup_id) returns, so that a
        later run restores the same point).
    type: str
    default: newest
  components:
    description: Components to restore; all those in the set when empty.
    type: list
    elements: str
    default: []
  target_time:
    description: Point in time for MariaDB (ISO 8601, UTC, for example V(2026-11-22T14:03:00Z)).
    type: str
  staging_root:
    description: Where the restore unpacks artefacts (checked for free space). Defaults to C(<backup_root>/.restore).
    type: path
  auth_key:
    description:
      - The backup authentication key (C(backup_auth_key), from the vault; at least 16 characters). Never logged.
      - Empty or unset - nothing is authenticated and the plan warns about it.
    type: str
  mariadb_chain_partial:
    description:
      - When a set of the MariaDB incremental chain (before the set itself) is missing or fails verification, plan
        the restore of MariaDB to the last complete point of the chain (the full and the incrementals before the
        break) instead of refusing. The plan says so loudly (a warning, C(plan.mariadb_chain_partial)); what
        MariaDB wrote after that point is not restored. Not with O(target_time). A broken full, or a set that
        itself fails verification, refuses whatever this says.
    type: bool
    default: false
  lock:
    description:
      - V(check) - report a backup or restore in progress (a warning), take nothing.
      - V(take) - a real restore - record this run as the restore in progress after the plan passed, or fail when
        a backup or another restore is in progress (see the description).
      - V(release) - remove this run's record and do nothing else (the other options are ignored, except
        O(audit)).
    type: str
    choices: [check, take, release]
    default: check
  audit:
    description:
      - With O(lock=release), the run's record, appended as one JSON line (with C(time) added when it has none) to
        the audit log (C(<backup_root>/audit.log), mode 0600) before this run's restore record is removed, by the
        same writer as the backups' line (C(backup_report)). A line that cannot be written does not keep the record;
        RV(audit_error) says why, and the caller fails the run.
    type: dict
  run_id:
    description:
      - A token unique to this playbook run (the restore role makes one), kept in the record of O(lock=take).
        O(lock=release) with the same token removes it, also when the module runs on a remote host, where no
        C(ansible-playbook) process of the run can be found. Without it only the run process identifies the run.
    type: str
  purpose:
    description:
      - With O(lock=take), what the record says the run is. V(restore) replaces live stores - no backup may begin
        while it runs, and it refuses while one runs. V(drill) restores into the drill's scratch stack - backups go
        on; retention keeps the sets either reads.
    type: str
    choices: [restore, drill]
    default: restore
  allow_unauthenticated:
    description:
      - Accept a set without C(SHA256SUMS.hmac) (made before authentication, or without a key) when O(auth_key) is
        set. A set whose HMAC is wrong or made with another key is refused whatever this says.
    type: bool
    default: false
"""

EXAMPLES = r"""
- name: Verify and plan
  restore_plan:
    backup_root: /backup
    backup_id: latest
    components: [mariadb, postgres]
  register: plan

- name: Plan a real restore and record it as the restore in progress
  restore_plan:
    backup_root: /backup
    components: [mariadb]
    lock: take
  register: plan

- name: Release the record when the restore has ended (in an always section), appending the audit line
  restore_plan:
    backup_root: /backup
    lock: release
    audit: {who: ops, action: restore, set: llmops_20260131_020000, result: success}
"""

RETURN = r"""
plan:
  description: The plan, with C(ok), C(problems), C(warnings), C(authentication) (set id to V(authenticated),
    V(unauthenticated_allowed), V(not_checked) or V(failed)), C(set_id), C(set_path), C(components),
    C(services_to_stop), C(mariadb_chain_partial) (None, or C(restores_to), C(ended), C(instead_of), C(skipped), C(why)
    when the restore of MariaDB stops at the last complete point of a broken chain),
    C(mariadb_chain), C(binlogs), C(composed) (the restore point is composed per component - O(backup_id=newest)
    or a composition; C(set_id) is then V(composed) unless one set holds them all), C(sources) (per component
    C(set_id), C(set_path), C(set_ended), C(point) - the time its data is from -, C(rpo_s) and C(restore_tested)),
    C(restore_point) (the same, one line per component, for people), C(missing) (components asked for that no
    good set holds),
    C(backup_id) (the plan's sets, for a later run), C(bytes_needed), C(bytes_free), the ordered C(steps) and
    C(active_runs) (what is in progress on the backup root - a backup's C(.partial) folder, a restore - each with why).
  returned: always
  type: dict
  sample: {ok: true, problems: [], set_id: llmops_20260131_020000, set_path: /backup/llmops_20260131_020000,
           components: [mariadb, redis], services_to_stop: [mariadb, redis], mariadb_chain: [llmops_20260131_020000],
           binlogs: [], bytes_needed: 1711798, bytes_free: 912345678901,
           steps: ["mariadb: unpack and prepare llmops_20260131_020000 (full), checksums checked while unpacking"]}
lock:
  description: What O(lock) did - the record taken or released, or why nothing was done.
  returned: always
  type: str
  sample: "took /backup/.restore-owner.json"
audit_error:
  description: Why the O(audit) line could not be appended; null when it was (or none was asked for).
  returned: when O(lock=release)
  type: str
  sample: "[Errno 28] No space left on device: '/backup/audit.log'"
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.llmops_backupset import (
    BackupSetError,
    active_backups,
    assess_restore,
    release_restore_lock,
    take_restore_lock,
)
from ansible.module_utils.llmops_common import LlmopsError
from ansible.module_utils.llmops_layout import layout_path
from ansible.module_utils.llmops_report import append_audit
from ansible.module_utils.llmops_restore import plan_restore


def active_runs(root):
    """What is in progress on ``root`` (``["backup: <partial> (why)", "restore: <msg>"]``)."""
    runs = ["backup: %s (%s)" % (s["path"], s["why"]) for s in active_backups(root)]
    restore = assess_restore(root)
    if restore is not None and restore["active"]:
        runs.append("restore: %s" % restore["msg"])
    return runs


def main():
    module = AnsibleModule(
        argument_spec=dict(
            backup_root=dict(type="path", required=True),
            backup_id=dict(type="str", default="newest"),
            components=dict(type="list", elements="str", default=[]),
            target_time=dict(type="str"),
            staging_root=dict(type="path"),
            auth_key=dict(type="str", no_log=True),
            allow_unauthenticated=dict(type="bool", default=False),
            mariadb_chain_partial=dict(type="bool", default=False),
            lock=dict(type="str", choices=["check", "take", "release"], default="check"),
            purpose=dict(type="str", choices=["restore", "drill"], default="restore"),
            run_id=dict(type="str"),
            audit=dict(type="dict"),
        ),
        supports_check_mode=True,
    )
    p = module.params
    if p["lock"] == "release":
        if module.check_mode:
            module.exit_json(changed=False, lock="check mode: nothing released", audit_error=None)
        audit_error = append_audit(layout_path(p["backup_root"], "audit_log"), p["audit"]) if p["audit"] else None
        try:
            done = release_restore_lock(p["backup_root"], run_id=p["run_id"])
        except OSError as exc:
            module.fail_json(msg="cannot remove the restore record: %s; delete it once no restore runs" % exc,
                             audit_error=audit_error)
        module.exit_json(changed=done.startswith("removed") or p["audit"] is not None and audit_error is None,
                         lock=done, audit_error=audit_error)
    try:
        plan = plan_restore(p["backup_root"], p["backup_id"], p["components"], p["target_time"],
                            p["staging_root"], auth_key=p["auth_key"],
                            allow_unauthenticated=p["allow_unauthenticated"],
                            mariadb_chain_partial=p["mariadb_chain_partial"])
    except (LlmopsError, OSError) as exc:
        module.fail_json(msg="cannot plan the restore: %s" % exc)
    what = plan["set_id"] if not plan["composed"] else "the restore point %s" % (plan["backup_id"] or p["backup_id"])
    if not plan["ok"]:
        module.fail_json(msg="the restore of %s cannot go ahead: %s" % (what, "; ".join(plan["problems"])), plan=plan)
    plan["active_runs"] = active_runs(p["backup_root"])
    lock = "not taken (lock=%s)" % p["lock"]
    if p["lock"] == "take" and module.check_mode:
        lock = "check mode: not taken"
    elif p["lock"] == "take":
        try:
            sets = sorted({s["set_id"] for s in plan["sources"].values()} | set(plan.get("mariadb_chain") or []))
            taken = take_restore_lock(p["backup_root"], sets, plan["components"], kind=p["purpose"],
                                      run_id=p["run_id"])
        except (BackupSetError, OSError) as exc:
            module.fail_json(msg="the restore of %s cannot start: %s" % (what, exc), plan=plan)
        lock = "took %s" % taken["path"]
        if taken["replaced"]:
            lock += " (replaced the record of a restore that died: %s)" % taken["replaced"]
            module.warn(lock)
    elif plan["active_runs"]:
        module.warn("in progress on %s now: %s. A dry run reads only; a real restore refuses to start until these "
                    "have ended" % (p["backup_root"], "; ".join(plan["active_runs"])))
    for warning in plan["warnings"]:
        module.warn(warning)
    module.exit_json(changed=p["lock"] == "take" and not module.check_mode, plan=plan, lock=lock)


if __name__ == "__main__":
    main()
