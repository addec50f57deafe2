"""playbooks/drill.yml: a full set restored into an isolated scratch stack while the live stack keeps
running, every component verified, RTO / RPO measured and reported (json, md, chart, metrics), the
scratch stack torn down; a missed target fails the drill."""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from tests.conftest import run_playbook

pytestmark = pytest.mark.lab
ALL = ["mariadb", "postgres", "redis", "qdrant", "search", "uploads", "models", "configs"]


def started(containers) -> dict:
    return {c: subprocess.run(["docker", "inspect", "-f", "{{.State.StartedAt}}", c], capture_output=True, text=True,
                              check=True).stdout.strip() for c in containers}


def running_drill_containers() -> list[str]:
    out = subprocess.run(["docker", "ps", "-a", "--format", "{{.Names}}"], capture_output=True, text=True).stdout
    return [n for n in out.split() if n.startswith("llmops-drill-")]


def test_a_drill_restores_everything_into_a_scratch_stack_and_measures_rto_rpo(lab, tmp_path):
    """As the schedule writes them: MariaDB in a set of its own, the other stores in the daily set; the drill of the
    newest restore point takes each component from its own set (issue 12)."""
    root = tmp_path / "backups"
    opts = ["-e", f"backup_root={root}", "-e", f"backup_metrics_dir={root}/metrics"]
    run_playbook("backup.yml", *opts, "-e", "components=mariadb", "-e", "backup_type=full")
    run_playbook("backup.yml", *opts, "-e", "components=" + ",".join(ALL[1:]))
    mariadb_set, daily_set = sorted(p.name for p in root.glob("llmops_*"))
    before = started(lab.containers.values())
    proc = run_playbook("drill.yml", *opts)
    assert "passed: true" in proc.stdout
    report_file = next((root / "drills").glob("drill_*/report.json"))
    report = json.loads(report_file.read_text())
    assert report["passed"] is True and report["result"] == "success" and report["components"] == ALL
    assert report["set_id"] == "composed"
    assert {c: s["set_id"] for c, s in report["sources"].items()} == {c: mariadb_set if c == "mariadb" else daily_set
                                                                        for c in ALL}
    # the restore test is recorded in each set drilled, for the components it gave
    for name, components in ((mariadb_set, ["mariadb"]), (daily_set, ALL[1:])):
        [record] = json.loads((root / name / "verification.json").read_text())["records"]
        assert record["method"] == "restore" and record["result"] == "passed", record
        assert record["components"] == {c: "passed" for c in components}, record
    assert 0 < report["rto_seconds"] <= report["rto_target_seconds"]
    assert 0 <= report["rpo_seconds"] <= report["rpo_target_seconds"]
    assert set(report["rto_by_component"]) == set(ALL)
    assert sorted(report["rto_by_component"].values()) == [report["rto_by_component"][c] for c in ALL]
    assert "PASSED" in (report_file.parent / "report.md").read_text()
    assert (root / "drills" / "rto_rpo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = (root / "metrics" / "llmops_drill.prom").read_text()
    assert "llmops_drill_last_success 1.0" in metrics and "llmops_drill_rto_seconds" in metrics
    # isolated: the live stack was not restarted, the scratch stack and its data are gone
    assert started(lab.containers.values()) == before
    assert running_drill_containers() == []
    assert not (root / ".drill").exists()


def test_a_missed_target_fails_the_drill_with_a_finding(lab, tmp_path):
    root = tmp_path / "backups"
    opts = ["-e", f"backup_root={root}", "-e", f"backup_metrics_dir={root}/metrics"]
    run_playbook("backup.yml", *opts, "-e", "components=mariadb")
    # the newest restore point holds MariaDB only: a drill of it does not pass for a drill of everything
    refused = run_playbook("drill.yml", *opts, check=False)
    assert refused.returncode != 0 and "no good set holds postgres" in refused.stdout
    assert "drill_leave_out" in refused.stdout and not (root / "drills").exists()
    proc = run_playbook("drill.yml", *opts, "-e", "drill_backup_id=latest", "-e", "drill_rto_target_seconds=1",
                        check=False)
    assert proc.returncode != 0
    report = json.loads(next((root / "drills").glob("drill_*/report.json")).read_text())
    assert report["passed"] is False and any("RTO" in f and "exceeds" in f for f in report["findings"])
    assert "llmops_drill_last_success 0.0" in (root / "metrics" / "llmops_drill.prom").read_text()
    assert running_drill_containers() == []


def test_a_set_of_files_only_is_drilled_without_scratch_servers(lab, tmp_path):
    """The daily files set (uploads, configs) has no store to start: the drill restores and verifies it alone
    (it once failed with 'services must be a mapping')."""
    root = tmp_path / "backups"
    opts = ["-e", f"backup_root={root}", "-e", f"backup_metrics_dir={root}/metrics"]
    run_playbook("backup.yml", *opts, "-e", "components=uploads,configs")
    leave_out = json.dumps({"drill_leave_out": [c for c in ALL if c not in ("uploads", "configs")]})
    proc = run_playbook("drill.yml", *opts, "-e", leave_out, check=False)
    assert proc.returncode == 0, proc.stdout[-4000:]
    report = json.loads(next((root / "drills").glob("drill_*/report.json")).read_text())
    assert report["passed"] is True and report["components"] == ["uploads", "configs"]
    assert set(report["rto_by_component"]) == {"uploads", "configs"}
    assert re.search(r"Bring up the scratch stack[^\n]*\n+skipping: \[lab\]", proc.stdout), proc.stdout[-4000:]
    assert running_drill_containers() == []
