"""playbooks/health.yml and the health_check module against the running lab."""

from __future__ import annotations

import datetime

from ansible.module_utils.llmops_report import update_state

from tests.conftest import run_module, run_playbook

# CPU load and disk space depend on the machine running the suite; their decisions are covered
# by tests/unit/test_health.py, so here they are set out of the way.
STEADY = ["-e", "health_cpu_crit_per_core=1000", "-e", "health_cpu_warn_per_core=1000",
          "-e", "health_disk_crit_free_pct=0", "-e", "health_disk_warn_free_pct=0",
          "-e", "health_memory_warn_pct=100", "-e", "health_memory_crit_pct=100"]


def _fresh_state(root, hours_ago):
    """The backup state a successful run ``hours_ago`` leaves (written by the report's own update_state)."""
    ended = (datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=hours_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")
    root.mkdir(parents=True, exist_ok=True)
    update_state(str(root), {"id": "llmops_test", "status": "success", "ended": ended, "components": {}})


def test_healthy_lab_passes_and_writes_metrics(lab, tmp_path):
    _fresh_state(tmp_path / "backups", hours_ago=2)
    metrics_dir = tmp_path / "metrics"
    proc = run_playbook("health.yml", *STEADY, "-e", f"backup_root={tmp_path / 'backups'}",
                        "-e", f"backup_metrics_dir={metrics_dir}")
    assert "health of lab: OK" in proc.stdout
    text = (metrics_dir / "llmops_health.prom").read_text()
    for container in lab.containers.values():
        assert f'llmops_container_healthy{{container="{container}"}} 1.0' in text
    assert "llmops_gpu_count 0.0" in text and "llmops_gpu_expected 0.0" in text
    assert 'llmops_health_check_status{check="mariadb"} 0.0' in text
    assert 'llmops_http_response_seconds{check="qdrant"}' in text


def test_stale_backup_fails_the_run_and_names_it(lab, tmp_path):
    _fresh_state(tmp_path / "backups", hours_ago=30)
    proc = run_playbook("health.yml", *STEADY, "-e", f"backup_root={tmp_path / 'backups'}",
                        "-e", f"backup_metrics_dir={tmp_path / 'metrics'}", check=False)
    assert proc.returncode != 0
    assert "Health check CRITICAL: backup" in proc.stdout
    assert 'llmops_health_check_status{check="backup"} 2.0' in (tmp_path / "metrics" / "llmops_health.prom").read_text()


def test_missing_container_dead_mariadb_and_unanswered_url_are_critical(lab, tmp_path):
    result = run_module("health_check", {
        "containers": [lab.containers["redis"], "llmops-no-such-container-1"],
        "mariadb_container": "llmops-no-such-container-1",
        "http_checks": [{"name": "closed", "url": "http://127.0.0.1:9/"}],
        "gpu_count": 3, "gpu_expected": 4,
        "network": False, "disks": [], "cpu_crit_per_core": 1000, "cpu_warn_per_core": 1000,
        "metrics_path": str(tmp_path / "h.prom"),
    }, check_mode=True)
    checks = {c["check"]: c for c in result["checks"]}
    assert result["status"] == "critical"
    assert checks[f"container {lab.containers['redis']}"]["status"] == "ok"
    assert checks["container llmops-no-such-container-1"]["detail"] == "no such container"
    assert checks["mariadb"]["status"] == "critical" and checks["mariadb"]["grade"] == "Critical"
    assert checks["http closed"]["status"] == "critical"
    assert checks["gpu"]["status"] == "critical" and checks["gpu"]["grade"] == "Major"
    # check mode reads only: no metrics file
    assert result["metrics_path"] is None and not (tmp_path / "h.prom").exists()
