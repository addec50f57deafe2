#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, llmops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# ruff: noqa: E402 - Ansible modules put DOCUMENTATION/EXAMPLES/RETURN before the imports.

from __future__ import annotations

DOCUMENTATION = r"""
---
module: backup_report
short_description: Summarise a finalized backup set, write Prometheus metrics and decide the alerts
description:
  - Takes the manifest that C(backup_set) returned at finalize and returns the summary table (component,
    type, logical size, new bytes, duration, verified), the backup storage's total and free space, and the alerts to
    send (failed set, newest successful set older than O(max_age_hours), storage under O(warn_free_pct) or
    O(crit_free_pct) free).
  - Keeps the last success of every component in C(<root>/.backup_state.json), so that a component that
    failed tonight still shows when it last succeeded.
  - Writes the metrics for the node_exporter textfile collector to O(metrics_path) atomically (temporary
    file and rename), so a scrape never reads half a file.
extends_documentation_fragment: [llmops]
attributes:
  check_mode:
    support: full
    description: Computes the summary and the alerts but writes neither the state file nor the metrics.
options:
  root:
    description: The backup root (where the sets and the state file are).
    type: path
    required: true
  manifest:
    description:
      - The set's manifest, as returned by C(backup_set) with C(command=finalize). One of O(manifest) and
        O(verification) is required.
    type: dict
  verification:
    description:
      - A restore test of a set instead of a backup run (written by the drill role). Keys C(set_id), C(set_ended),
        C(result) (V(passed) or V(failed)), C(details), C(duration_s). A failed test raises a critical alert; the
        state keeps the newest set whose test passed, for the C(llmops_backup_restore_tested_set_timestamp_seconds)
        metric.
    type: dict
  metrics_path:
    description: The C(.prom) file to write; no metrics when omitted.
    type: path
  audit:
    description:
      - A record of the run, appended as one JSON line (with C(time) added when it has none) to the audit log
        (C(<root>/audit.log), mode 0600) after the state and the metrics.
      - A line that cannot be written (a full backup volume) does not fail the module, so that the alerts are still
        sent; RV(audit_error) says why.
    type: dict
  max_age_hours:
    description: Alert (warning) when the newest successful set is older than this.
    type: float
    default: 26
  warn_free_pct:
    description: Alert (warning) when the backup storage has less free space than this percentage.
    type: float
    default: 20
  crit_free_pct:
    description: Alert (critical) when the backup storage has less free space than this percentage.
    type: float
    default: 10
"""

EXAMPLES = r"""
- name: Report on the set
  backup_report:
    root: /backup
    manifest: "{{ final.manifest }}"
    metrics_path: /var/lib/node_exporter/textfile_collector/llmops_backup.prom
  register: report
"""

RETURN = r"""
rows:
  description:
    - One row per component.
    - C(bytes) (C(size)) is the logical size, every file the set holds for the component; C(new_bytes) (C(new)) the
      bytes the set added to the backup volume (a file hard-linked to an earlier set's is not counted; null for a set
      finalized by an older version).
  returned: always
  type: list
  elements: dict
  sample: [{component: uploads, type: tree, size: 3.8 GiB, bytes: 4080218931, new: 38.1 MiB, new_bytes: 39950336,
            duration_s: 1.0, verified: true, status: success, error: ""}]
table:
  description: The summary as fixed-width text lines.
  returned: always
  type: list
  elements: str
storage:
  description: Total, used and free bytes of the backup file system, and the free percentage.
  returned: always
  type: dict
  sample: {total: 1000000, used: 100000, free: 900000, free_pct: 90.0}
audit_error:
  description: Why the O(audit) line could not be appended; null when it was (or none was asked for).
  returned: always
  type: str
  sample: "[Errno 28] No space left on device: '/backup/audit.log'"
alerts:
  description: The alerts to send, each with C(severity) (critical or warning) and C(summary).
  returned: always
  type: list
  elements: dict
  sample: [{severity: warning, summary: backup storage has 15.0 % free (under 20 %)}]
"""

import json
import os

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.llmops_backupset import read_json, write_file_atomic
from ansible.module_utils.llmops_layout import layout_path
from ansible.module_utils.llmops_report import (
    alerts,
    append_audit,
    metrics,
    storage,
    summary_rows,
    table,
    update_state,
)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            root=dict(type="path", required=True),
            manifest=dict(type="dict"),
            verification=dict(type="dict"),
            metrics_path=dict(type="path"),
            audit=dict(type="dict"),
            max_age_hours=dict(type="float", default=26),
            warn_free_pct=dict(type="float", default=20),
            crit_free_pct=dict(type="float", default=10),
        ),
        required_one_of=[("manifest", "verification")],
        supports_check_mode=True,
    )
    p = module.params
    manifest = p["manifest"]
    verification = p["verification"]
    try:
        disk = storage(p["root"])
        if module.check_mode:
            try:
                state = read_json(layout_path(p["root"], "state_file"))
            except (OSError, ValueError):
                state = {}
        else:
            state = update_state(p["root"], manifest, verification)
            if state.get("state_not_written"):
                module.warn("the backup state file could not be written (the backup volume is full): %s"
                            % state.pop("state_not_written"))
            if p["metrics_path"]:
                os.makedirs(os.path.dirname(p["metrics_path"]), exist_ok=True)
                write_file_atomic(p["metrics_path"], metrics(state, disk).encode("utf-8"), mode=0o644)
    except OSError as exc:
        module.fail_json(msg="cannot write the backup state or metrics: %s" % exc)
    audit_error = None
    if p["audit"] and not module.check_mode:
        audit_error = append_audit(layout_path(p["root"], "audit_log"), p["audit"])
    rows = summary_rows(manifest) if manifest else []
    module.exit_json(changed=not module.check_mode, rows=rows, table=table(rows) if manifest else [], storage=disk,
                     audit_error=audit_error,
                     alerts=alerts(manifest, state, disk, p["max_age_hours"], p["warn_free_pct"], p["crit_free_pct"],
                                   verification=verification),
                     state=json.loads(json.dumps(state)))


if __name__ == "__main__":
    main()
