"""Restore tests in the backup state, the metrics and the alerts (llmops_report): the newest set whose restore
test passed is kept whatever fails later, a failed test is a critical alert, and the metric the
LlmopsRestoreTestStale rule reads is always written."""

from __future__ import annotations

import datetime

import pytest
from ansible.module_utils.llmops_report import alerts, metrics, update_state

DISK = {"total": 100, "used": 10, "free": 90, "free_pct": 90.0}
NOW = datetime.datetime(2026, 12, 1, 3, 0, tzinfo=datetime.UTC)


def restore_test(set_id, ended, result):
    return {"set_id": set_id, "set_ended": ended, "result": result, "details": "x", "time": "2026-12-01T02:40:00Z"}


def sample(text, name):
    lines = [line for line in text.splitlines() if line.startswith(name)]
    assert len(lines) == 1, lines
    return float(lines[0].rsplit(" ", 1)[1])


def test_without_any_restore_test_the_tested_set_metric_is_zero(tmp_path):
    state = update_state(str(tmp_path), {"id": "s1", "status": "success", "ended": "2026-12-01T02:05:00Z",
                                         "components": {}}, now=NOW)
    text = metrics(state, DISK)
    assert sample(text, "llmops_backup_restore_tested_set_timestamp_seconds") == 0.0
    assert "llmops_backup_restore_test_last_success" not in text


@pytest.mark.parametrize(("tests", "newest", "last_ok"), [
    ([("a", "2026-11-30T02:05:00Z", "passed")], "2026-11-30T02:05:00Z", 1.0),
    ([("a", "2026-11-30T02:05:00Z", "passed"), ("b", "2026-12-01T02:05:00Z", "failed")],
     "2026-11-30T02:05:00Z", 0.0),
    ([("b", "2026-12-01T02:05:00Z", "passed"), ("a", "2026-11-30T02:05:00Z", "passed")],
     "2026-12-01T02:05:00Z", 1.0),  # an older set tested later does not move the newest back
])
def test_the_state_keeps_the_newest_passed_set_and_the_last_result(tmp_path, tests, newest, last_ok):
    for set_id, ended, result in tests:
        state = update_state(str(tmp_path), verification=restore_test(set_id, ended, result), now=NOW)
    text = metrics(state, DISK)
    expected = datetime.datetime.fromisoformat(newest.replace("Z", "+00:00")).timestamp()
    assert sample(text, "llmops_backup_restore_tested_set_timestamp_seconds") == expected
    assert sample(text, "llmops_backup_restore_test_last_success") == last_ok
    # the backup's own state is untouched by a restore test
    assert "last_set" not in state


def test_a_failed_restore_test_is_a_critical_alert_naming_the_set(tmp_path):
    verification = restore_test("llmops_20261201_020000", "2026-12-01T02:05:00Z", "failed")
    state = update_state(str(tmp_path), verification=verification, now=NOW)
    found = alerts(None, state, DISK, now=NOW, verification=verification)
    failed = [a for a in found if a["summary"].startswith("restore test")]
    assert failed and failed[0]["severity"] == "critical" and "llmops_20261201_020000" in failed[0]["summary"]
    passed = restore_test("llmops_20261201_020000", "2026-12-01T02:05:00Z", "passed")
    assert not [a for a in alerts(None, state, DISK, now=NOW, verification=passed)
                if a["summary"].startswith("restore test")]


def test_the_audit_line_is_appended_as_json_and_a_failure_is_returned_not_raised(tmp_path):
    import json
    import os
    import stat

    from ansible.module_utils.llmops_report import append_audit

    log = tmp_path / "audit.log"
    assert append_audit(str(log), {"action": "backup", "set": "llmops_x", "who": "ré$(id)"}) is None
    assert append_audit(str(log), {"action": "backup", "set": "llmops_y", "time": "2026-01-01T00:00:00Z"}) is None
    first, second = [json.loads(line) for line in log.read_text().splitlines()]
    assert first["set"] == "llmops_x" and first["who"] == "ré$(id)" and first["time"].endswith("Z")
    assert second["time"] == "2026-01-01T00:00:00Z"
    assert stat.S_IMODE(os.stat(log).st_mode) == 0o600
    assert "No such file or directory" in append_audit(str(tmp_path / "missing" / "audit.log"), {"action": "backup"})
