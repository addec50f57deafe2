#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, llmops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# ruff: noqa: E402 - Ansible modules put DOCUMENTATION/EXAMPLES/RETURN before the imports.

from __future__ import annotations

DOCUMENTATION = r"""
---
module: drill_report
short_description: Measure a DR drill's RTO and RPO, write its report and chart, and judge it against the targets
description:
  - RTO is measured from the drill's start to each component's verified data and in total; RPO is the age, at the
    drill's start, of the newest restorable point (the set's end, or the newest archived MariaDB binary log).
  - Writes C(<reports_dir>/<id>/report.json) and C(report.md), a PNG chart of RTO and RPO over every drill in
    O(reports_dir) (when matplotlib is available), and Prometheus metrics to O(metrics_path).
  - Fails when the drill failed or missed a target, after writing the report.
extends_documentation_fragment: [llmops]
attributes:
  check_mode:
    support: full
    description: Measures and judges, writes nothing.
options:
  reports_dir:
    description: Folder of the drill reports (one sub-folder per drill) and of the chart.
    type: path
    required: true
  drill:
    description:
      - The drill's facts, with C(id), C(host), C(started), C(ended) (ISO 8601 UTC), C(set_id), C(set_ended),
        C(components), C(timings) (component to seconds from the start until verified), C(result), C(failure),
        C(rto_target_seconds), C(rpo_target_seconds) and C(project_prefix); for a composed restore point
        C(sources) (component to C(set_id) and C(set_ended) of the set it came from; its RPO counts from there).
      - A host rebuild (playbooks/rebuild.yml) says C(kind=rebuild), with C(phases) (phase to seconds) and C(health)
        (the health check's status); other keys are kept in report.json as given.
    type: dict
    required: true
  backup_root:
    description: The backup root, whose MariaDB binary log archive (C(<backup_root>/binlogs)) can make the RPO shorter.
    type: path
  metrics_path:
    description: The C(.prom) file for the node_exporter textfile collector.
    type: path
"""

EXAMPLES = r"""
- name: Report the drill
  drill_report:
    reports_dir: /backup/drills
    drill: "{{ drill_facts }}"
"""

RETURN = r"""
report:
  description: The report as written to report.json (with C(rto_seconds), C(rpo_seconds), C(passed), C(findings)).
  returned: always
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.llmops_common import LlmopsError
from ansible.module_utils.llmops_drill import build_report, newest_binlog_time, write_report
from ansible.module_utils.llmops_layout import layout_path


def main():
    module = AnsibleModule(
        argument_spec=dict(
            reports_dir=dict(type="path", required=True),
            drill=dict(type="dict", required=True),
            backup_root=dict(type="path"),
            metrics_path=dict(type="path"),
        ),
        supports_check_mode=True,
    )
    p = module.params
    drill = dict(p["drill"])
    drill["binlog_time"] = newest_binlog_time(layout_path(p["backup_root"], "binlogs")) if p["backup_root"] else None
    try:
        if module.check_mode:
            report = build_report(drill)
        else:
            report = write_report(drill, p["reports_dir"], p["metrics_path"])
    except (LlmopsError, OSError) as exc:
        module.fail_json(msg="cannot write the drill report: %s" % exc)
    if not report["passed"]:
        what = "Host rebuild" if report.get("kind") == "rebuild" else "DR drill"
        module.fail_json(msg="%s %s FAILED: %s" % (what, report["id"], "; ".join(report["findings"])), report=report)
    module.exit_json(changed=not module.check_mode, report=report)


if __name__ == "__main__":
    main()
