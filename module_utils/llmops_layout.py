"""The backup root's layout: every path under ``<backup_root>`` is named here, and only here.

::

    <backup_root>/
        <name>_YYYYmmdd_HHMMSS/         sets (format: llmops_backupset)
        .<name>_YYYYmmdd_HHMMSS.partial/  runs in progress (llmops_backupset)
        latest -> <set>                 the newest successful set              latest
        binlogs/                        MariaDB binary log archive             binlogs
        models/<model>/<version>-<h12>/ model store, shared by the sets        model_store
        configs.git-worktree/           config history (git)                   config_repo
        .backup_state.json              last success per component             state_file
        audit.log                       one JSON line per backup and restore   audit_log
        recovery-records/               recovery records (seed 004)            recovery_records
        drills/<drill id>/              drill reports, RTO/RPO chart           drill_reports
        .staging/                       scratch of backup runs                 staging
        .restore/                       scratch of restores                    restore_staging
        .restore-journal.json           what the last restore run did, by step restore_journal
        .drill/                         the drill's scratch stack and data     drill
        .offsite_state.json             off-site sync/check: last success, lag offsite_state
        .restore-owner.json             the restore in progress (its run, sets) restore_owner
        .qdrant-snapshots.json          server-side snapshots not yet deleted  qdrant_snapshots

Modules take ``backup_root`` and ask ``backup_layout(backup_root)[key]``; roles read the same dict as
the ``backup_layout`` variable of ``roles/common`` (the ``llmops_layout`` filter of that role calls
``backup_layout``). No other code joins a name to the backup root.

Stdlib only and free of Ansible imports (the controller's filter loads this file by path).
"""

from __future__ import annotations

import os

# key -> path relative to the backup root
LAYOUT = {
    "root": "",
    "latest": "latest",
    "binlogs": "binlogs",
    "model_store": "models",
    "config_repo": "configs.git-worktree",
    "state_file": ".backup_state.json",
    "audit_log": "audit.log",
    "recovery_records": "recovery-records",
    "drill_reports": "drills",
    "staging": ".staging",
    "restore_staging": ".restore",
    # The last restore run's journal (llmops_common.journal_*): per component the step done and whether the live
    # data was replaced, so that the next restore.yml says what a killed restore left and can roll it back.
    "restore_journal": ".restore-journal.json",
    "drill": ".drill",
    "offsite_state": ".offsite_state.json",
    # A real restore's owner record (llmops_backupset.take_restore_lock): while its run lives, no backup
    # begins and retention keeps the sets it reads.
    "restore_owner": ".restore-owner.json",
    # the Qdrant snapshots qdrant_backup created on the server and has not deleted yet (a killed run's are
    # deleted by the next run)
    "qdrant_snapshots": ".qdrant-snapshots.json",
}


def backup_layout(backup_root):
    """Every path of the layout, absolute, for ``backup_root`` (``{key: path}``; ``root`` is the root itself)."""
    if not backup_root:
        raise ValueError("backup_root is empty: set it in the inventory (roles/common's backup_root)")
    root = os.path.abspath(os.fspath(backup_root))
    return {key: os.path.join(root, rel) if rel else root for key, rel in LAYOUT.items()}


def layout_path(backup_root, key):
    """One path of the layout (``KeyError`` on an unknown key: a bug, not an operator error)."""
    return backup_layout(backup_root)[key]
