"""RTO / RPO arithmetic and the verdict of module_utils/llmops_drill.py."""

from __future__ import annotations

import json

from ansible.module_utils.llmops_drill import build_report, markdown, write_report

DRILL = {"id": "drill_20261123_110000", "host": "lab", "started": "2026-11-23T11:00:00Z",
         "ended": "2026-11-23T11:02:00Z", "set_id": "llmops_20261123_100000", "set_ended": "2026-11-23T10:00:00Z",
         "components": ["mariadb", "postgres"], "timings": {"mariadb": "30.5", "postgres": 90},
         "result": "success", "failure": "", "rto_target_seconds": "600", "rpo_target_seconds": 7200,
         "project_prefix": "llmops-drill"}


def test_rto_and_rpo_are_measured_from_the_drill_start():
    report = build_report(DRILL)
    assert report["rto_seconds"] == 120.0
    assert report["rto_by_component"] == {"mariadb": 30.5, "postgres": 90.0}
    assert report["rpo_seconds"] == 3600.0 and report["passed"] is True and report["findings"] == []


def test_a_newer_archived_binlog_shortens_mariadb_rpo():
    binlog_time = 1795431000.0  # 2026-11-23T10:50:00Z
    report = build_report({**DRILL, "binlog_time": binlog_time})
    assert report["rpo_by_component"] == {"mariadb": 600.0, "postgres": 3600.0}


def test_a_composed_restore_point_counts_each_rpo_from_its_own_set():
    sources = {"mariadb": {"set_id": "llmops_20261123_100000", "set_ended": "2026-11-23T10:30:00Z"},
               "postgres": {"set_id": "llmops_20261123_020300", "set_ended": "2026-11-23T02:00:00Z"}}
    report = build_report({**DRILL, "set_id": "composed", "set_ended": "2026-11-23T02:00:00Z", "sources": sources})
    assert report["rpo_by_component"] == {"mariadb": 1800.0, "postgres": 9 * 3600.0}
    assert report["rpo_seconds"] == 9 * 3600.0 and report["findings"] == ["RPO 32400.0 s exceeds the target 7200.0 s"]
    md = markdown(report)
    assert "| postgres | llmops_20261123_020300 | 90.0 | 32400.0 |" in md and "each component's newest good set" in md


def test_missed_targets_and_failures_are_findings():
    report = build_report({**DRILL, "rto_target_seconds": "60", "rpo_target_seconds": "60", "result": "failed",
                           "failure": "MariaDB | verify: differs"})
    assert report["passed"] is False
    assert [f.split()[0] for f in report["findings"]] == ["the", "RTO", "RPO"]


def test_the_report_files_and_chart_are_written(tmp_path):
    write_report({**DRILL, "id": "drill_20261001_050000", "started": "2026-10-01T05:00:00Z",
                  "ended": "2026-10-01T05:03:00Z", "set_ended": "2026-10-01T02:00:00Z"}, str(tmp_path))
    report = write_report(DRILL, str(tmp_path), metrics_path=str(tmp_path / "m" / "drill.prom"))
    saved = json.loads((tmp_path / DRILL["id"] / "report.json").read_text())
    assert saved["rto_seconds"] == report["rto_seconds"] == 120.0
    assert "| mariadb | llmops_20261123_100000 | 30.5 | 3600.0 |" in (tmp_path / DRILL["id"] / "report.md").read_text()
    assert (tmp_path / "rto_rpo.png").read_bytes()[:4] == b"\x89PNG"
    assert "llmops_drill_rto_seconds 120.0" in (tmp_path / "m" / "drill.prom").read_text()


def test_a_host_rebuild_reports_its_phases_and_health_and_fails_on_a_critical_check():
    rebuild = {**DRILL, "id": "rebuild_20261123_110000", "kind": "rebuild", "health": "ok",
               "phases": {"provision": 50.2, "fetch": 10.0, "restore": 55.1, "health": 2.0}}
    md = markdown(build_report(rebuild))
    assert md.startswith("# Host rebuild rebuild_20261123_110000: PASSED")
    assert "the rebuilt host's own stack, from the off-site copy (provision 50.2 s, fetch 10.0 s" in md
    assert "health check ok" in md and "scratch stack" not in md
    failed = build_report({**rebuild, "health": "critical", "result": "failed",
                           "failure": "the health check of the rebuilt host is critical: mariadb"})
    assert not failed["passed"] and "critical: mariadb" in failed["findings"][0]
    assert markdown(build_report(DRILL)).startswith("# DR drill drill_20261123_110000: PASSED")
