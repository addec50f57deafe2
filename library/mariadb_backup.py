#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, llmops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# ruff: noqa: E402 - Ansible modules put DOCUMENTATION/EXAMPLES/RETURN before the imports.

from __future__ import annotations

DOCUMENTATION = r"""
---
module: mariadb_backup
short_description: Back up MariaDB with mariadb-backup (full or incremental) and archive its binary logs
description:
  - Streams C(mariadb-backup --backup --stream=mbstream) through zstd into C(<dest>/mariadb.mbstream.zst),
    computing its sha256 in the same pass, and returns the manifest entry of the component for
    C(backup_set) (O(backup_type=full), V(incremental) or V(auto)).
  - An incremental builds on the newest complete set under O(backup_root) whose C(mariadb) component
    succeeded (C(--incremental-lsn) = that backup's C(to_lsn)); the chain (parent set id, from/to LSN) is
    recorded, as are the binary log file, position and GTID of the backup.
  - The entry holds a data fingerprint (row count and C(CHECKSUM TABLE) of every table, counts of views,
    routines and triggers) that a restore is verified against. It is taken from the artefact itself. The
    backup (with its chain, for an incremental) is prepared in C(<backup_root>/.staging/) and read by a throw-away,
    network-less server of the server's own image, so it describes the backup's consistent point however
    busy the live server is. Names are read as C(HEX) in a utf8mb4 session, so any name the server allows works.
  - O(backup_type=binlog) archives closed binary logs instead (C(FLUSH BINARY LOGS), then copies every log
    not yet archived into the archive C(<backup_root>/binlogs/)), so that point-in-time restore is possible
    between backups. It reports whether C(binlog_format) is ROW.
extends_documentation_fragment: [llmops, llmops.connection, llmops.mariadb, llmops.compression, llmops.timeout,
                                 llmops.encryption]
attributes:
  check_mode:
    support: full
    description:
      - Connects, reads the server's version and binary log settings and plans the backup type, but writes
        nothing; C(changed) says that a backup would be made.
options:
  backup_type:
    description:
      - V(full), V(incremental) (fails when there is no base), V(auto) (an incremental when a base exists whose
        full is younger than O(full_interval_hours), otherwise a full), V(binlog) (archive binary logs), or
        V(prune) (delete archived binary logs older than O(binlog_keep_days) that no set in O(backup_root) needs;
        run after the set retention). V(prune) does not connect to the server.
    type: str
    choices: [auto, full, incremental, binlog, prune]
    default: auto
  dest:
    description:
      - Folder of this component inside the set being written (created with mode 0700). Required unless
        O(backup_type) is V(binlog) or V(prune).
    type: path
  backup_root:
    description:
      - The folder holding the backup sets, where the base of an incremental is looked up.
    type: path
    required: true
  archive_binlogs:
    description:
      - With a full or incremental backup, also archive the closed binary logs into C(<backup_root>/binlogs/)
        (what O(backup_type=binlog) does), once the stream has ended, beside the artefact's check rather than after
        it. The backup's own binary log position is then archived, so the set can be rolled forward at once.
      - A failed archive does not fail the backup; it is reported as a warning and in RV(binlog) (C(error)).
    type: bool
    default: false
  binlog_keep_days:
    description:
      - With O(backup_type=prune), archived binary logs younger than this are kept (MISSION.md keeps 14 days).
    type: int
    default: 14
  full_interval_hours:
    description:
      - With O(backup_type=auto), take a new full when the chain's full is this old.
    type: int
    default: 24
  image:
    description:
      - The image of the throw-away server that fingerprints the artefact. Defaults to the image of O(container).
      - Without a container and without an image, the fingerprint is read from the live server after the stream
        (C(fingerprint_source=live-server)), which is exact only when nothing writes meanwhile.
    type: str
  parallel:
    description: Number of threads C(mariadb-backup) copies files with (C(--parallel)).
    type: int
    default: 2
seealso:
  - name: mariadb-backup options
    description: C(--stream), C(--incremental-lsn), C(--extra-lsndir).
    link: https://mariadb.com/kb/en/mariadb-backup-options/
"""

EXAMPLES = r"""
- name: Back up MariaDB (incremental when possible)
  mariadb_backup:
    backup_type: auto
    dest: "{{ bset.path }}/mariadb"
    backup_root: /backup
  register: mariadb_result

- name: Archive the closed binary logs
  mariadb_backup:
    backup_type: binlog
    backup_root: /backup
"""

RETURN = r"""
component:
  description: The manifest entry for C(backup_set) (O(backup_type) other than V(binlog), not in check mode).
  returned: success
  type: dict
  sample:
    status: success
    type: mariadb
    backup_type: incremental
    parent: llmops_20260131_020000
    chain: [llmops_20260131_020000]
    from_lsn: "48311"
    to_lsn: "52100"
    binlog: {file: mysql-bin.000012, position: 385, gtid: "0-1-17"}
    files: [{path: /backup/.llmops_20260131_080000.partial/mariadb/mariadb.mbstream.zst, sha256: "...", size: 123}]
    fingerprint: {llmops_app: {tables: {users: {rows: 500, checksum: "123"}}, views: 1, routines: 2, triggers: 1}}
    fingerprint_source: artefact
backup_type:
  description: The backup type taken (or that would be taken in check mode).
  returned: success
  type: str
  sample: full
server:
  description: Version and binary log settings of the server.
  returned: success
  type: dict
  sample: {version: 10.11.6-MariaDB, log_bin: true, binlog_format: ROW}
binlog:
  description:
    - For O(backup_type=binlog) and with O(archive_binlogs), the archived logs and whether the format is ROW; with
      O(archive_binlogs), C(error) instead when the archive failed.
    - For O(backup_type=prune), the logs C(deleted) (would be, in check mode) and C(kept), and C(oldest_needed).
  returned: when O(backup_type) is V(binlog) or V(prune), or with O(archive_binlogs)
  type: dict
  sample: {row_format: true, archived: [{name: mysql-bin.000012, sha256: "...", size: 1024}]}
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.llmops_common import LlmopsError, argument_spec, use_encryption
from ansible.module_utils.llmops_exec import connection_of
from ansible.module_utils.llmops_layout import backup_layout
from ansible.module_utils.llmops_mariadb import (
    archive_binlogs,
    backup,
    find_base,
    plan_backup_type,
    prune_binlogs,
    server_info,
)


def archive(module, target, conn, password):
    """Archive the closed binary logs into the layout's archive; warn when the format is not ROW."""
    p = module.params
    result = archive_binlogs(target, conn, backup_layout(p["backup_root"])["binlogs"], password=password,
                             zstd_level=p["zstd_level"], timeout=p["timeout"] or None)
    if not result["row_format"]:
        module.warn("binlog_format is %s, not ROW: point-in-time restores may not replay exactly"
                    % result["binlog_format"])
    return result


def main():
    module = AnsibleModule(
        argument_spec=argument_spec(
            store="mariadb", compression=True, default_timeout=0,
            backup_type=dict(type="str", default="auto", choices=["auto", "full", "incremental", "binlog", "prune"]),
            binlog_keep_days=dict(type="int", default=14),
            dest=dict(type="path"),
            backup_root=dict(type="path", required=True),
            archive_binlogs=dict(type="bool", default=False),
            full_interval_hours=dict(type="int", default=24),
            image=dict(type="str"),
            parallel=dict(type="int", default=2),
        ),
        required_if=[("backup_type", "auto", ["dest"]), ("backup_type", "full", ["dest"]),
                     ("backup_type", "incremental", ["dest"])],
        supports_check_mode=True,
    )
    p = module.params
    target, conn, password = connection_of(p)
    layout = backup_layout(p["backup_root"])
    try:
        use_encryption(p)
        if p["backup_type"] == "prune":
            pruned = prune_binlogs(p["backup_root"], layout["binlogs"],
                                   p["binlog_keep_days"], dry_run=module.check_mode)
            module.exit_json(changed=bool(pruned["deleted"]), backup_type="prune", binlog=pruned)
        info = server_info(target, conn, password)
        if p["backup_type"] == "binlog":
            binlog_dir = layout["binlogs"]
            if module.check_mode:
                module.exit_json(changed=True, backup_type="binlog", server=info,
                                 msg="would flush and archive the closed binary logs into %s" % binlog_dir)
            result = archive(module, target, conn, password)
            module.exit_json(changed=bool(result["archived"]), backup_type="binlog", server=info, binlog=result)

        base_set, base_entry = find_base(p["backup_root"])
        backup_type = plan_backup_type(p["backup_type"], base_entry, full_interval_hours=p["full_interval_hours"])
        if module.check_mode:
            module.exit_json(changed=True, backup_type=backup_type, server=info, base=base_set,
                             msg="would take a %s backup into %s%s" % (
                                 backup_type, p["dest"], " and archive the closed binary logs into %s"
                                 % layout["binlogs"] if p["archive_binlogs"] else ""))
        os.makedirs(p["dest"], mode=0o700, exist_ok=True)
        image = p["image"] or (target.image() if target.container else None)
        if not image:
            module.warn("no image to fingerprint the artefact with: the fingerprint is read from the live server "
                        "and a restore's verification is exact only if nothing wrote during the backup")
        staging = os.path.join(layout["staging"], "mariadb-fingerprint-%d" % os.getpid())
        binlogs = {}

        def archive_beside():
            try:
                binlogs.update(archive(module, target, conn, password))
            except (LlmopsError, OSError) as exc:
                binlogs["error"] = str(exc)
                module.warn("the binary logs were not archived with the backup (%s): the backup itself is complete; "
                            "the next playbooks/binlog_archive.yml run archives them" % exc)

        entry = backup(target, conn, p["dest"], backup_type=backup_type, base_set=base_set, base_entry=base_entry,
                       password=password, parallel=p["parallel"], zstd_level=p["zstd_level"],
                       zstd_threads=p["zstd_threads"], timeout=p["timeout"] or None, backup_root=p["backup_root"],
                       image=image, staging=staging, beside_check=archive_beside if p["archive_binlogs"] else None)
        if info["binlog_format"] != "ROW" or not info["log_bin"]:
            module.warn("binary log off or not in ROW format: point-in-time restore will not be possible")
        module.exit_json(changed=True, backup_type=backup_type, server=info, component=entry,
                         **(dict(binlog=binlogs) if p["archive_binlogs"] else {}))
    except (LlmopsError, OSError) as exc:
        module.fail_json(msg="MariaDB backup failed: %s" % exc)


if __name__ == "__main__":
    main()
