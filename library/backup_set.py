#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, llmops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# ruff: noqa: E402 - Ansible modules put DOCUMENTATION/EXAMPLES/RETURN before the imports.

from __future__ import annotations

DOCUMENTATION = r"""
---
module: backup_set
short_description: Open, record, finalize, verify, list and prune llmops backup sets
description:
  - Owns the life cycle of a backup set, one folder per run under O(root) holding a C(backup_manifest.json),
    a C(SHA256SUMS) file that C(sha256sum -c) accepts and one artefact per component.
  - O(command=begin) creates C(<root>/.<name>_YYYYmmdd_HHMMSS.partial/) (mode 0700, UTC time) and returns its
    path; the backup modules write their artefacts into it.
  - O(command=component) records one component's manifest entry (usually the result of a backup module).
  - O(command=finalize) merges the entries into the manifest, hashes every file (a file hard-linked to a file of the
    set a component names in C(linked_from), the unchanged uploads, takes the sha256 that set recorded), writes
    C(SHA256SUMS), renames the folder to C(<root>/<name>_YYYYmmdd_HHMMSS) and, only when every component
    succeeded, points C(<root>/latest) at it. A failed set is still finalized (its good artefacts may matter) with
    C(status=failed) in its manifest, and never becomes C(latest).
  - O(command=finalize) reads C(SHA256SUMS) back before the rename; a set whose C(SHA256SUMS) does not list exactly
    its files with the hashes of the manifest is finalized as failed. C(SHA256SUMS) escapes file names as GNU
    C(sha256sum) does, so names with newlines, backslashes or any other byte are checked too.
  - O(command=verify) re-hashes a set against C(SHA256SUMS) and its manifest and fails on any difference. Every
    path read back from a set must stay inside it (no absolute path, no C(..), no symbolic link leading out).
  - Authenticated sets - with O(auth_key), O(command=finalize) writes C(SHA256SUMS.hmac), an HMAC-SHA256 of the set
    id and the exact bytes of C(SHA256SUMS) (which lists the manifest and every artefact) with the key's id, before
    the rename; O(command=verify) with O(auth_key) fails a set whose HMAC is missing (unless
    O(allow_unauthenticated=true)), made with another key or wrong (C(SHA256SUMS) and the manifest edited, or the
    set renamed). The verification records of O(command=verified) are not authenticated - informational only.
  - O(command=verified) appends a verification record (O(method), O(result), O(components), O(by), O(details)) to
    the set's C(verification.json) and rewrites C(verification.json.sha256); the checksummed manifest is never
    rewritten. O(command=list) shows per set whether its newest restore test passed.
  - O(command=list) lists the finalized sets; O(command=retention) deletes the sets the retention policy does
    not keep; O(command=cleanup) removes abandoned C(.partial) folders - those whose owner is dead, whatever
    their age, and those whose owner cannot be checked and whose last heartbeat is older than O(stale_after).
  - Run exclusion - one backup run per O(root) at a time - belongs to the caller, because a lock cannot
    outlive one module call. The scheduled jobs (role C(backup_schedule)) run the playbook under C(flock) on
    C(llmops-backup.lock) in their lock folder. As a second line of defence O(command=begin) refuses to start
    while another C(.partial) folder of O(root) is active.
  - A C(.partial) folder's C(.owner.json) records the host, the boot and the process that represents the run - the
    C(ansible-playbook) process above the module (pid and start time, field 22 of C(/proc/<pid>/stat)). Its owner
    is dead when that record names this host and its process is gone, or the pid now belongs to another process
    (another start time), or the host restarted since. O(command=begin) removes the partial folders of dead
    owners at once (RV(removed_partials)), unless a process still works in the folder (a component job that
    outlived a killed run); it refuses to start while an owner is alive. When the owner cannot be checked
    (another host, or no C(ansible-playbook) on this host - a run through a remote connection or the ad-hoc
    C(ansible) command), the heartbeat decides - a partial whose last heartbeat (begin or component) is less
    than O(stale_after) seconds old counts as active.
  - Backups and restores exclude each other host-wide. A real restore (module C(restore_plan) with C(lock=take))
    records its run in C(<root>/.restore-owner.json) with the same owner identity. O(command=begin) refuses,
    saying what to do, while that run is alive (unless O(force=true); a drill, which restores into its scratch
    stack, does not stop backups); a record whose owner is dead is removed
    and the backup proceeds (RV(removed_restore_record)). O(command=retention) never deletes a set a live
    restore reads (the set and its MariaDB chain) - it keeps it and warns.
  - A full backup volume - a component that failed with C(No space left on device) on a file under O(root), or a
    finalize that hits it - makes O(command=finalize) remove the partial folder (an artefact cut short by a full
    disk cannot be trusted, and the space is needed by the next run) and return V(failed) with RV(storage_full)
    and a problem saying how much space to free on O(root) (about the size of the previous set). Any other
    error that stops finalize before the rename removes the partial folder as well (what it holds cannot become a
    checked set); a set finalized as failed keeps its good artefacts only when the disk has room for them.
extends_documentation_fragment: [llmops]
attributes:
  check_mode:
    support: full
    description:
      - Nothing is created, renamed or deleted in check mode; the module reports what it would do.
      - O(command=retention) and O(command=cleanup) return the sets or folders they would delete.
      - O(command=component) and O(command=finalize) accept the path of a set that O(command=begin) only pretended
        to create in check mode.
      - O(command=verified) checks its input and the existing records and returns the record it would append.
options:
  command:
    description:
      - What to do, see the description.
    type: str
    required: true
    choices: [begin, component, finalize, verify, verified, list, retention, cleanup]
  root:
    description:
      - The folder that holds the backup sets. O(command=begin) creates it with mode 0700 when missing, and sets an
        existing one back to 0700.
    type: path
    required: true
  name:
    description:
      - Name of the set, the prefix of its folder name. Letters, digits, C(_), C(.) and C(-).
      - Used by O(command=begin).
    type: str
    default: llmops
  path:
    description:
      - For O(command=component) and O(command=finalize), the C(.partial) folder that O(command=begin) returned.
      - For O(command=verify), the set to verify; defaults to C(<root>/latest).
      - For O(command=verified), the set the record is about (a path or a set id); required.
    type: path
  component:
    description:
      - Name of the component for O(command=component), for example V(mariadb) or V(postgres_app).
    type: str
  data:
    description:
      - The manifest entry of the component for O(command=component).
      - V(status) (V(success) or V(failed)) is required. Usual keys are V(type) (V(mariadb), V(postgres),
        V(redis), V(qdrant), V(files)...), V(backup_type) (V(full) or V(incremental)), V(parent) (the id
        of the set an incremental builds on), V(binlog) (the archived binary log range), V(files) (a list of
        dicts with V(path) relative to the set or absolute inside it, V(sha256) and V(size)), V(error).
      - A V(sha256) given for a file is compared with the file at finalize; a difference fails the set.
    type: dict
    default: {}
  status:
    description:
      - For O(command=finalize), V(auto) derives the set's status from its components (success only when every
        component succeeded and every O(expected_components) was recorded); V(failed) forces a failed set,
        for example from a C(rescue) block.
    type: str
    choices: [auto, failed]
    default: auto
  results:
    description:
      - For O(command=finalize), the backup modules' results by component name (C(backup_wait)'s C(components)),
        recorded first as O(command=component) would record them, in the same module call - the entry is a
        result's C(component), or for a result that failed or holds none, V(status=failed) with its C(msg).
      - The result's C(invocation) names the components given here rather than repeating their results.
    type: dict
    default: {}
  brief:
    description:
      - For O(command=finalize), return the manifest without its per-file lists (see RV(manifest)) - an uploads
        tree lists every file, and a playbook that only reports the run need not carry them.
    type: bool
    default: false
  expected_components:
    description:
      - For O(command=finalize), components that must have been recorded for the set to succeed.
    type: list
    elements: str
    default: []
  stale_after:
    description:
      - Seconds after its last heartbeat when a C(.partial) folder whose owner cannot be checked counts as
        abandoned (see the description; a partial whose owner is alive never is, one whose owner is dead always is).
      - O(command=begin) refuses to start while a younger one exists; O(command=cleanup) removes older ones.
    type: int
    default: 7200
  error:
    description:
      - For O(command=finalize) with O(status=failed), why the run stopped (the failed task's message); recorded in
        the set's problems. A message saying that a file under O(root) could not be written for lack of space
        (C(No space left on device)) makes finalize handle a full backup volume (see the description).
    type: str
    default: ''
  force:
    description:
      - For O(command=begin), start even when another run's C(.partial) folder looks alive.
    type: bool
    default: false
  method:
    description:
      - For O(command=verified), how the set was checked; V(checksums) (C(SHA256SUMS) and manifest) or V(restore)
        (restored and its data checked, for example by a DR drill).
    type: str
    choices: [checksums, restore]
  result:
    description:
      - For O(command=verified), the outcome of the check.
    type: str
    choices: [passed, failed]
  components:
    description:
      - For O(command=verified), the outcome per component - component name to V(passed), V(failed) or another
        word such as V(skipped).
    type: dict
    default: {}
  details:
    description:
      - For O(command=verified), free text such as the drill report's path or the first problem found.
    type: str
    default: ''
  by:
    description:
      - For O(command=verified), who or what checked the set; defaults to C(<user>@<host>) of the module's run.
    type: str
  auth_key:
    description:
      - The backup authentication key (C(backup_auth_key), from the vault, kept off the backup volume; at least 16
        characters). Used by O(command=finalize) (writes C(SHA256SUMS.hmac)) and O(command=verify) (checks it).
        Never logged. Empty or unset - sets are neither authenticated nor checked.
    type: str
  allow_unauthenticated:
    description:
      - For O(command=verify) with O(auth_key), accept a set without C(SHA256SUMS.hmac) (made before
        authentication). A wrong HMAC or one made with another key fails whatever this says.
    type: bool
    default: false
  complete_only:
    description:
      - For O(command=list), list only complete sets with C(status=success).
    type: bool
    default: false
  dry_run:
    description:
      - For O(command=retention) and O(command=cleanup), only report what would be deleted (as check mode does).
    type: bool
    default: false
  policy:
    description:
      - Retention policy for O(command=retention). Omitted keys take the defaults shown.
    type: dict
    default: {}
    suboptions:
      daily_days:
        description: Keep every successful full set younger than this many days.
        type: int
        default: 30
      weekly:
        description: Keep one full set (the one made on O(policy.weekly_day) if any) of each of this many newest weeks.
        type: int
        default: 4
      weekly_day:
        description: The weekly day, 0 = Monday .. 6 = Sunday.
        type: int
        default: 6
      monthly:
        description: Keep one full set (made on the 1st, or the month's first) of each of this many newest months.
        type: int
        default: 12
      incremental_days:
        description: Keep successful incremental sets younger than this many days.
        type: int
        default: 7
      binlog_days:
        description: Keep sets holding archived binary logs younger than this many days.
        type: int
        default: 14
      failed_days:
        description: Keep failed sets younger than this many days for inspection.
        type: int
        default: 7
      timezone:
        description: Time zone (IANA name) in which days, weeks and months are counted.
        type: str
        default: UTC
notes:
  - The newest successful set, and every set that a kept incremental set depends on, are never deleted.
  - Set ids and folder names use UTC; two runs of one O(name) must start in different seconds.
seealso:
  - name: sha256sum
    description: C(cd <set> && sha256sum -c SHA256SUMS) checks a set without this module.
    link: https://www.gnu.org/software/coreutils/manual/html_node/sha2-utilities.html
"""

EXAMPLES = r"""
- name: Open a backup set
  backup_set:
    command: begin
    root: /backup
    name: llmops
  register: bset

- name: Record the PostgreSQL component (the result of a backup module)
  backup_set:
    command: component
    root: /backup
    path: "{{ bset.path }}"
    component: postgres
    data:
      type: postgres
      status: success
      backup_type: full
      files:
        - path: postgres/app.dump.zst
          sha256: "{{ pg.sha256 }}"
          size: "{{ pg.bytes_out }}"

- name: Finalize the set
  backup_set:
    command: finalize
    root: /backup
    path: "{{ bset.path }}"
    expected_components: [mariadb, postgres, redis, qdrant]
  register: final

- name: Verify the latest set
  backup_set:
    command: verify
    root: /backup

- name: Record that a DR drill restored the set and its data checked out
  backup_set:
    command: verified
    root: /backup
    path: "{{ final.path }}"
    method: restore
    result: passed
    components: {mariadb: passed, postgres: passed}
    by: dr-drill
    details: /backup/drills/20260131/report.json

- name: Show what retention would delete
  backup_set:
    command: retention
    root: /backup
    dry_run: true
    policy:
      daily_days: 30
      weekly: 4
      monthly: 12
      timezone: Asia/Seoul

- name: Finalize as failed from a rescue block, saying why the run stopped
  backup_set:
    command: finalize
    root: /backup
    path: "{{ bset.path }}"
    status: failed
    error: "{{ ansible_failed_result.msg | default('') }}"

- name: Remove abandoned partial sets (owner gone, or older than a day when the owner cannot be checked)
  backup_set:
    command: cleanup
    root: /backup
    stale_after: 86400
"""

RETURN = r"""
set_id:
  description: The set id, C(<name>_YYYYmmdd_HHMMSS).
  returned: when O(command) is begin, component, finalize, verify or verified
  type: str
  sample: llmops_20260131_020000
path:
  description: The C(.partial) folder (begin, component) or the finalized set (finalize, verify, verified).
  returned: when O(command) is begin, component, finalize, verify or verified
  type: str
  sample: /backup/.llmops_20260131_020000.partial
status:
  description: The set's status, V(success) or V(failed).
  returned: when O(command) is finalize or verify
  type: str
  sample: success
problems:
  description:
    - Why a finalized set failed (missing or failed components, files that differ, C(SHA256SUMS) that does not read
      back as the files of the set).
  returned: when O(command=finalize)
  type: list
  elements: str
  sample: ["component redis: failed: redis-cli exited with code 1"]
latest:
  description: Whether C(<root>/latest) now points at this set (finalize), or the id it points at (list).
  returned: when O(command) is finalize or list
  type: raw
  sample: true
manifest:
  description:
    - The manifest written by finalize (C(backup_manifest.json)).
    - Each component's C(new_bytes) counts the bytes of its files that this set added to the backup volume; a file
      hard-linked to an earlier set's (an unchanged upload) shares that set's bytes and is not counted.
    - With O(brief) its file lists are left out - the top-level C(files) (C(totals) counts them) and each
      component's C(files), replaced by C(files_count) and C(files_bytes).
  returned: when O(command=finalize)
  type: dict
  sample: {schema_version: 1, id: llmops_20260131_020000, status: success, components: {}, files: []}
verify:
  description:
    - The verification result, with C(ok), C(checked) (files), C(bytes), C(missing), C(extra), C(mismatched),
      C(errors) and C(auth) (C(state) - V(authenticated), V(unauthenticated_allowed), V(not_checked) or V(failed) -,
      C(key_id), C(problem)).
  returned: when O(command=verify)
  type: dict
  sample: {ok: true, checked: 5, bytes: 123456, missing: [], extra: [], mismatched: [], errors: [],
           auth: {state: authenticated, key_id: 3f2a9c1d, problem: null}}
sets:
  description:
    - The finalized sets, oldest first, with id, path, status, started, ended, bytes, components, complete,
      latest and verification.
    - C(verification) summarizes C(verification.json) - C(restore_tested) (the newest restore record passed),
      C(restore_tested_time), C(last_method), C(last_result), C(last_time), C(last_details) (of the newest record)
      and C(error) (why the records cannot be trusted, for example when they do not match their checksum).
  returned: when O(command=list)
  type: list
  elements: dict
  sample: [{id: llmops_20260131_020000, status: success, complete: true, latest: true,
            verification: {restore_tested: true, restore_tested_time: "2026-02-01T03:00:00Z", last_method: restore,
                           last_result: passed, last_time: "2026-02-01T03:00:00Z", last_details: "", error: null}}]
restore_tested:
  description: The newest complete successful set whose newest restore record passed, and when, or null.
  returned: when O(command=list)
  type: dict
  sample: {id: llmops_20260131_020000, time: "2026-02-01T03:00:00Z"}
record:
  description: The verification record appended (or, in check mode, that would be appended).
  returned: when O(command=verified)
  type: dict
  sample: {time: "2026-02-01T03:00:00Z", method: restore, result: passed, components: {mariadb: passed},
           by: dr-drill, details: ""}
verification:
  description: The set's verification summary after the record (see RV(sets)).
  returned: when O(command=verified)
  type: dict
  sample: {restore_tested: true, restore_tested_time: "2026-02-01T03:00:00Z", last_method: restore,
           last_result: passed, last_time: "2026-02-01T03:00:00Z", last_details: "", error: null}
keep:
  description: Set id to the reasons it is kept.
  returned: when O(command=retention)
  type: dict
  sample: {llmops_20260131_020000: ["newest successful set", "daily < 30 d"]}
delete:
  description: The set ids the policy does not keep.
  returned: when O(command=retention)
  type: list
  elements: str
  sample: [llmops_20251201_020000]
deleted:
  description: What was actually deleted (set ids for retention, folders for cleanup); empty in check mode.
  returned: when O(command) is retention or cleanup
  type: list
  elements: str
  sample: [llmops_20251201_020000]
would_delete:
  description:
    - The abandoned C(.partial) folders - owner dead, or owner unknown and older than O(stale_after) - (deleted
      unless check mode or O(dry_run)).
  returned: when O(command=cleanup)
  type: list
  elements: str
  sample: [/backup/.llmops_20260130_020000.partial]
active_partials:
  description: The other C(.partial) folders that look active, each with why (owner running, heartbeat age).
  returned: when O(command=begin)
  type: list
  elements: str
  sample: ["/backup/.llmops_20260131_020000.partial (its owner ansible-playbook (pid 4242) is running on this host;
            last heartbeat 12 s ago)"]
removed_partials:
  description: The C(.partial) folders of runs whose owner process is gone, removed before the new set was opened.
  returned: when O(command=begin)
  type: list
  elements: str
  sample: [/backup/.llmops_20260130_020000.partial]
removed_restore_record:
  description: The record of a restore whose run died (path and why), removed before the new set was opened.
  returned: when O(command=begin)
  type: str
  sample: "/backup/.restore-owner.json (its owner ansible-playbook (pid 4242) on this host is gone)"
in_use_by_restore:
  description: Sets the policy would delete that were kept because a restore in progress reads them.
  returned: when O(command=retention)
  type: list
  elements: str
  sample: []
would_remove_partials:
  description: In check mode, the C(.partial) folders O(command=begin) would remove.
  returned: when O(command=begin) in check mode
  type: list
  elements: str
  sample: []
removed:
  description:
    - Whether finalize removed the partial folder instead of finalizing it (the backup volume was full, or an error
      stopped finalize before the rename); RV(path) then names the folder that is gone.
  returned: when O(command=finalize)
  type: bool
  sample: false
storage_full:
  description:
    - When the backup volume filled during the run (finalize), or had no room to open a set (begin, which then
      fails), what to free - C(root), C(free_bytes), C(total_bytes), C(needed_bytes) (about the size of the
      previous set, C(needed_from) says which; with C(more_than) true only a lower bound - the data grew beyond the
      free space), C(written_bytes) (what the removed partial held), C(cause) and C(msg); null otherwise. The
      manifest returned carries it too (for the report's metric and alert).
  returned: when O(command=finalize); on failure of O(command=begin) for lack of space
  type: dict
  sample: {root: /backup, set_id: llmops_20260131_020000, free_bytes: 0, total_bytes: 1000000000,
           needed_bytes: 123456789, more_than: false, needed_from: the size of the previous set llmops_20260130_020000,
           written_bytes: 99000000, cause: "writing ... failed: [Errno 28] No space left on device", msg: ...}
warnings_list:
  description: Retention warnings, such as an incremental whose parent set is gone.
  returned: when O(command=retention)
  type: list
  elements: str
  sample: []
"""

import getpass
import os
import shutil
import socket

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.llmops_backupset import (
    COMPONENTS_DIR,
    OWNER,
    BackupSetError,
    RestoreInProgress,
    assess_partial,
    assess_restore,
    auth_key_id,
    begin_set,
    brief_manifest,
    check_name,
    cleanup_partials,
    finalize_set,
    hash_set_files,
    hashes_by_inode,
    heartbeat,
    human_bytes,
    is_no_space,
    isoformat,
    json_safe,
    list_partials,
    list_sets,
    load_manifest,
    no_space_on,
    parse_partial,
    parse_time,
    partial_path,
    read_json,
    record_verification,
    relative_problem,
    release_restore_lock,
    remove_partial,
    resolve_set,
    restore_busy_msg,
    restore_sets_in_use,
    set_id_for,
    storage_full,
    tree_bytes,
    utc,
    verification_record,
    verification_summary,
    verify_set,
    write_json,
    write_manifest,
)
from ansible.module_utils.llmops_retention import normalize_policy, plan_retention

COMPONENT_STATUSES = ('success', 'failed')


def _component_files(partial, data):
    """Return the component's files with paths relative to the set; raise BackupSetError if outside."""
    files = []
    for entry in data.get('files') or []:
        if not isinstance(entry, dict) or not entry.get('path'):
            raise BackupSetError("each item of data.files needs a 'path', got %r" % (entry,))
        entry = dict(entry)
        path = str(entry['path'])
        full = path if os.path.isabs(path) else os.path.join(partial, path)
        full = os.path.normpath(full)
        if not full.startswith(partial.rstrip('/') + os.sep):
            raise BackupSetError('file %s is not inside the set %s' % (path, partial))
        entry['path'] = os.path.relpath(full, partial)
        problem = relative_problem(entry['path'])
        if problem:
            raise BackupSetError('file %r of the set %s %s' % (path, partial, problem))
        if entry.get('size') is not None:
            entry['size'] = int(entry['size'])
        files.append(entry)
    return files


def do_begin(module, root):
    name = module.params['name']
    check_name(name)
    now = utc()
    stale_after = module.params['stale_after']
    live, dead = [], []
    for other in list_partials(root):
        state = assess_partial(other, stale_after, now)
        if state['active']:
            live.append('%s (%s; last heartbeat %d s ago)' % (other, state['why'], state['age']))
        elif state['owner'] == 'dead':
            dead.append(dict(path=other, why=state['why']))
    if live and not module.params['force']:
        module.fail_json(msg='another backup run looks active in %s: %s. Wait for it to end; if it hangs, stop the '
                             'process named; if its owner cannot be checked (another host, a remote run), '
                             'command=cleanup removes partials whose last heartbeat is older than stale_after=%d s, '
                             'or use force=true' % (root, '; '.join(live), stale_after),
                         active_partials=live)
    restore = assess_restore(root, now)
    if restore is not None and restore['blocks_backups'] and not module.params['force']:
        module.fail_json(msg=restore_busy_msg(restore), restore=json_safe(restore['record']))
    set_id = set_id_for(name, now)
    removed = [d['path'] for d in dead]
    if module.check_mode:
        module.exit_json(changed=True, set_id=set_id, path=partial_path(root, set_id), started=isoformat(now),
                         active_partials=live, removed_partials=[], would_remove_partials=removed,
                         msg='check mode: nothing created or removed')
    for item in dead:
        remove_partial(item['path'])
    dead_restore = None
    if restore is not None and not restore['active']:
        dead_restore = '%s (%s)' % (restore['path'], restore['why'])
        release_restore_lock(root)
    try:
        path = begin_set(root, name, now)
    except RestoreInProgress as exc:
        module.fail_json(msg=str(exc), removed_partials=removed)
    except OSError as exc:
        if not is_no_space(exc):
            raise
        full = storage_full(root, set_id, exc)
        module.fail_json(msg='cannot open backup set %s: %s' % (set_id, full['msg']), storage_full=full,
                         removed_partials=removed)
    msg = 'opened %s' % path
    if dead_restore:
        msg += '; removed the record of a restore that died: %s' % dead_restore
    if dead:
        msg += '; removed the partial set(s) of runs that died: %s' % '; '.join(
            '%s (%s)' % (d['path'], d['why']) for d in dead)
    module.exit_json(changed=True, set_id=set_id, path=path, started=isoformat(now), active_partials=live,
                     removed_partials=removed, removed_restore_record=dead_restore, msg=msg)


def _require(module, *names):
    missing = [n for n in names if not module.params[n]]
    if missing:
        module.fail_json(msg='command=%s needs %s' % (module.params['command'], ', '.join(missing)))


def _open_partial(module, root):
    """Return (partial, set_id), or exit in check mode when begin only pretended to create it."""
    _require(module, 'path')
    partial = os.path.abspath(module.params['path'])
    if module.check_mode and not os.path.exists(partial):
        module.exit_json(changed=True, path=partial, set_id=os.path.basename(partial)[1:-len('.partial')],
                         msg='check mode: the set was not created, nothing recorded')
    parent, set_id = parse_partial(partial)
    if parent != root:
        module.fail_json(msg='%s is not under root %s' % (partial, root))
    return partial, set_id


def _record(module, partial, component, data):
    """Check one component's manifest entry and write it into the partial (not in check mode); return it."""
    component = check_name(component, 'component name')
    data = dict(data)
    if data.get('status') not in COMPONENT_STATUSES:
        module.fail_json(msg="data.status of component %s must be 'success' or 'failed', got %r"
                             % (component, data.get('status')))
    backup_type = data.setdefault('backup_type', 'full')
    if backup_type not in ('full', 'incremental'):
        module.fail_json(msg="data.backup_type must be 'full' or 'incremental', got %r" % (backup_type,))
    if backup_type == 'incremental' and not data.get('parent'):
        module.fail_json(msg='an incremental component needs data.parent, the id of the set it builds on')
    data['files'] = _component_files(partial, data)
    data.setdefault('recorded', isoformat(utc()))
    if not module.check_mode:
        write_json(os.path.join(partial, COMPONENTS_DIR, component + '.json'), data)
        heartbeat(partial)
    return data


def _entry_of(name, result):
    """The manifest entry of a backup module's result (``results`` of finalize)."""
    if isinstance(result, dict) and isinstance(result.get('component'), dict) and not result.get('failed'):
        return result['component']
    msg = result.get('msg') if isinstance(result, dict) else None
    return {'status': 'failed', 'type': name, 'error': msg or 'no result'}


def do_component(module, root):
    _require(module, 'component', 'data')
    partial, set_id = _open_partial(module, root)
    component = module.params['component']
    data = _record(module, partial, component, module.params['data'])
    module.exit_json(changed=True, set_id=set_id, path=partial, component=component, entry=data)


def _check_files(partial, name, comp, hashes, problems):
    for entry in comp.get('files') or []:
        rel = entry['path']
        if rel not in hashes:
            problems.append('component %s: file %s is missing' % (name, rel))
        elif entry.get('sha256') and entry['sha256'].lower() != hashes[rel]['sha256']:
            problems.append('component %s: %s on disk has sha256 %s, the backup computed %s'
                            % (name, rel, hashes[rel]['sha256'], entry['sha256']))
        elif entry.get('size') is not None and int(entry['size']) != hashes[rel]['size']:
            problems.append('component %s: %s on disk has %d bytes, the backup wrote %s'
                            % (name, rel, hashes[rel]['size'], entry['size']))
        else:
            entry['sha256'] = hashes[rel]['sha256']
            entry['size'] = hashes[rel]['size']


def _linked_sets_hashes(root, components):
    """The checksums of the earlier sets that components hard-linked files to (C(linked_from), the uploads tree):
    such a file is that set's file, recorded and checked when that set was finalized, and is not read again."""
    known = {}
    for comp in components.values():
        prev = comp.get('linked_from')
        if comp.get('status') != 'success' or not isinstance(prev, str) or not prev or prev.startswith('.') \
                or os.sep in prev:
            continue
        path = os.path.join(root, prev)
        if os.path.isdir(path) and not os.path.islink(path):
            known.update(hashes_by_inode(path))
    return known


def _invocation(module):
    """The module arguments echoed in the result, with C(results) named, not repeated: every component's file list
    (an uploads tree lists each file) would cross back to the controller a second time."""
    args = dict(module.params)
    if args.get('results'):
        args['results'] = sorted(args['results'])
    return {'module_args': args}


def _abandon(module, root, partial, set_id, manifest, problems, cause):
    """Finalize could not make a checked set: remove the partial and report a failed run (never a set)."""
    written = tree_bytes(partial)
    remove_partial(partial)
    if is_no_space(cause):
        full = storage_full(root, set_id, cause, written)
        problems.insert(0, full['msg'])
    else:
        full = None
        problems.insert(0, 'finalize could not complete (%s): the partial set %s was removed, because what it holds '
                           'cannot be made a checked set (%s written); fix the cause and run the backup again'
                        % (str(cause).strip().splitlines()[-1][:400] if str(cause).strip() else 'no reason given',
                           set_id, human_bytes(written)))
    for comp in manifest['components'].values():
        if comp.get('status') == 'success':
            comp['status'] = 'failed'
            comp['error'] = 'removed with the partial set: %s' % ('no space left' if full else 'finalize failed')
    manifest.update(status='failed', problems=problems, removed=True, files=[],
                    totals={'files': 0, 'bytes': 0})
    if full:
        manifest['storage_full'] = full
    module.exit_json(**json_safe(dict(changed=True, set_id=set_id, path=partial, status='failed', problems=problems,
                                      latest=False, removed=True, storage_full=full, manifest=manifest,
                                      invocation=_invocation(module))))


def do_finalize(module, root):
    partial, set_id = _open_partial(module, root)
    if module.params['auth_key']:
        auth_key_id(module.params['auth_key'])  # a bad key fails before the partial is touched (it is kept)
    for name, result in sorted(module.params['results'].items()):
        _record(module, partial, name, _entry_of(name, result))
    owner_path = os.path.join(partial, OWNER)
    owner = read_json(owner_path) if os.path.exists(owner_path) else {}
    comp_dir = os.path.join(partial, COMPONENTS_DIR)
    components = {}
    if os.path.isdir(comp_dir):
        for entry in sorted(os.listdir(comp_dir)):
            if entry.endswith('.json'):
                components[entry[:-5]] = read_json(os.path.join(comp_dir, entry))
    problems = []
    if module.params['status'] == 'failed':
        error = (module.params['error'] or '').strip()
        problems.append('finalize was called with status=failed' + (': %s' % error if error else ''))
    if not components:
        problems.append('no component was recorded')
    for name in module.params['expected_components']:
        if name not in components:
            problems.append('component %s was expected but not recorded' % name)
    for name, comp in sorted(components.items()):
        if comp.get('status') != 'success':
            problems.append('component %s: %s' % (name, comp.get('error') or 'status %s' % comp.get('status')))
    ended = utc()
    started = owner.get('started') or isoformat(ended)
    manifest = {
        'id': set_id,
        'name': owner.get('name') or set_id.rsplit('_', 2)[0],
        'host': owner.get('host') or socket.gethostname(),
        'started': started,
        'ended': isoformat(ended),
        'duration_s': round((ended - parse_time(started)).total_seconds(), 3),
        'components': components,
    }
    full = [p for p in problems if no_space_on(p, root)]
    if module.check_mode:
        module.exit_json(changed=True, set_id=set_id, path=os.path.join(root, set_id),
                         status='failed' if problems else 'success', problems=problems, latest=not problems,
                         removed=False, storage_full=None, manifest=manifest, invocation=_invocation(module))
    if full:
        # The disk filled during the run: what it wrote cannot be trusted and holds the space the next run needs.
        _abandon(module, root, partial, set_id, manifest, problems, full[0])
    try:
        # The bookkeeping (.owner.json, .components/) is not hashed and stays until finalize_set's rename, so
        # that a run killed while its files are hashed still names its owner process (the next begin removes it).
        shared = set()
        files = hash_set_files(partial, known=_linked_sets_hashes(root, components), shared=shared)
        hashes = dict((f['path'], f) for f in files)
        for name, comp in sorted(components.items()):
            _check_files(partial, name, comp, hashes, problems)
            # the bytes this set added to the volume; a hard link (the uploads tree) shares an earlier set's
            comp['new_bytes'] = sum(int(f.get('size') or 0) for f in comp.get('files') or []
                                    if f['path'] not in shared)
        manifest['status'] = 'failed' if problems else 'success'
        manifest['problems'] = problems
        written = write_manifest(partial, manifest, files=files)
        final = finalize_set(partial, root, written['status'], auth_key=module.params['auth_key'])
    except (OSError, BackupSetError) as exc:
        if not os.path.isdir(partial):  # renamed: the set is complete, only what followed the rename failed
            raise
        _abandon(module, root, partial, set_id, manifest, problems, exc)
    # finalize_set reads SHA256SUMS back and fails the set when it does not match: report what it wrote.
    written = load_manifest(final)
    # json_safe: file names that are not UTF-8 (an uploads tree may hold some) are shown escaped.
    module.exit_json(**json_safe(dict(changed=True, set_id=set_id, path=final, status=written['status'],
                                      problems=written['problems'], latest=written['status'] == 'success',
                                      removed=False, storage_full=None,
                                      manifest=brief_manifest(written) if module.params['brief'] else written,
                                      invocation=_invocation(module))))


def do_verify(module, root):
    path = resolve_set(root, module.params['path'])
    result = verify_set(path, module.params['auth_key'], module.params['allow_unauthenticated'])
    set_id = os.path.basename(path)
    if not result['ok']:
        details = []
        for key in ('missing', 'extra', 'mismatched', 'errors'):
            if result[key]:
                details.append('%s: %s' % (key, ', '.join(result[key][:10])))
        module.fail_json(**json_safe(dict(msg='backup set %s failed verification (%s); do not restore from it'
                                              % (path, '; '.join(details)), set_id=set_id, path=path,
                                          status=result['status'], verify=result)))
    module.exit_json(changed=False, set_id=set_id, path=path, status=result['status'], verify=json_safe(result))


def _default_by():
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return '%s@%s' % (user, socket.gethostname())


def do_verified(module, root):
    _require(module, 'path', 'method', 'result')
    path = resolve_set(root, module.params['path'])
    record = verification_record(dict(
        method=module.params['method'], result=module.params['result'],
        components=module.params['components'] or {}, details=module.params['details'] or '',
        by=module.params['by'] or _default_by()))
    set_id = os.path.basename(os.path.realpath(path))
    doc = record_verification(path, record, dry_run=module.check_mode)
    summary = dict(verification_summary(doc), error=None)
    module.exit_json(changed=True, set_id=set_id, path=path, record=doc['records'][-1], verification=summary,
                     msg='check mode: nothing written' if module.check_mode else 'recorded')


def do_list(module, root):
    sets = list_sets(root, complete_only=module.params['complete_only'])
    everything = list_sets(root)
    latest = next((s['id'] for s in everything if s['latest']), None)
    tested = next((dict(id=s['id'], time=s['verification']['restore_tested_time'])
                   for s in reversed(everything) if s['complete'] and s['status'] == 'success'
                   and s['verification']['restore_tested']), None)
    module.exit_json(**json_safe(dict(changed=False, sets=sets, latest=latest, restore_tested=tested)))


def do_retention(module, root):
    try:
        policy = normalize_policy(module.params['policy'])
    except ValueError as exc:
        module.fail_json(msg='bad retention policy: %s' % exc)
    sets = list_sets(root)
    plan = plan_retention(sets, policy)
    # a live restore reads these sets (and the sets of its MariaDB chain): never deleted under it
    in_use = [set_id for set_id in restore_sets_in_use(root) if set_id in plan['delete']]
    if in_use:
        plan['delete'] = [set_id for set_id in plan['delete'] if set_id not in in_use]
        for set_id in in_use:
            plan['keep'][set_id] = ['a restore in progress reads it']
        warning = ('kept %s, which a restore in progress reads (%s): the next clean-up after it ends deletes it'
                   % (', '.join(in_use), assess_restore(root)['why']))
        plan['warnings'].append(warning)
        module.warn(warning)
    latest = next((s['id'] for s in sets if s['latest']), None)
    if latest in plan['delete']:  # defence in depth: plan_retention keeps the newest successful set
        module.fail_json(msg='retention would delete %s, which latest points at; refusing' % latest, plan=plan)
    deleted = []
    if not (module.check_mode or module.params['dry_run']):
        for set_id in plan['delete']:
            shutil.rmtree(os.path.join(root, set_id))
            deleted.append(set_id)
    module.exit_json(changed=bool(plan['delete']), keep=plan['keep'], delete=plan['delete'], deleted=deleted,
                     warnings_list=plan['warnings'], policy=policy, in_use_by_restore=in_use)


def do_cleanup(module, root):
    dry = module.check_mode or module.params['dry_run']
    would = cleanup_partials(root, module.params['stale_after'], dry_run=True)
    deleted = [] if dry else cleanup_partials(root, module.params['stale_after'])
    module.exit_json(changed=bool(would), would_delete=would, deleted=deleted)


def main():
    policy_options = dict(
        daily_days=dict(type='int', default=30),
        weekly=dict(type='int', default=4),
        weekly_day=dict(type='int', default=6),
        monthly=dict(type='int', default=12),
        incremental_days=dict(type='int', default=7),
        binlog_days=dict(type='int', default=14),
        failed_days=dict(type='int', default=7),
        timezone=dict(type='str', default='UTC'),
    )
    module = AnsibleModule(
        argument_spec=dict(
            command=dict(type='str', required=True,
                         choices=['begin', 'component', 'finalize', 'verify', 'verified', 'list', 'retention',
                                  'cleanup']),
            root=dict(type='path', required=True),
            name=dict(type='str', default='llmops'),
            path=dict(type='path'),
            component=dict(type='str'),
            data=dict(type='dict', default={}),
            status=dict(type='str', choices=['auto', 'failed'], default='auto'),
            expected_components=dict(type='list', elements='str', default=[]),
            results=dict(type='dict', default={}),
            brief=dict(type='bool', default=False),
            stale_after=dict(type='int', default=7200),
            error=dict(type='str', default=''),
            force=dict(type='bool', default=False),
            method=dict(type='str', choices=['checksums', 'restore']),
            result=dict(type='str', choices=['passed', 'failed']),
            components=dict(type='dict', default={}),
            details=dict(type='str', default=''),
            by=dict(type='str'),
            auth_key=dict(type='str', no_log=True),
            allow_unauthenticated=dict(type='bool', default=False),
            complete_only=dict(type='bool', default=False),
            dry_run=dict(type='bool', default=False),
            policy=dict(type='dict', default={}, options=policy_options),
        ),
        supports_check_mode=True,
    )
    root = os.path.abspath(module.params['root'])
    handlers = dict(begin=do_begin, component=do_component, finalize=do_finalize, verify=do_verify,
                    verified=do_verified, list=do_list, retention=do_retention, cleanup=do_cleanup)
    try:
        handlers[module.params['command']](module, root)
    except BackupSetError as exc:
        module.fail_json(msg=str(exc))
    except OSError as exc:
        module.fail_json(msg='%s failed on %s: %s' % (module.params['command'], root, exc))


if __name__ == '__main__':
    main()
