"""The health check's decisions (module_utils/llmops_health.py), on real /proc formats."""

from __future__ import annotations

import datetime
import http.server
import threading

import pytest
from ansible.module_utils.llmops_health import (
    check_backup,
    check_container,
    check_cpu,
    check_gpu,
    check_http,
    check_mariadb,
    check_memory,
    check_network,
    grade,
    metrics,
    overall,
    parse_default_route,
    parse_meminfo,
    report_lines,
)
from ansible.module_utils.llmops_report import update_state

MEMINFO = """MemTotal:       24562428 kB
MemFree:         1523112 kB
MemAvailable:    2456242 kB
Buffers:          102400 kB
HugePages_Total:       0
"""

ROUTE = """Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t00000000\t0100A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0
eth0\t0000A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
"""


@pytest.mark.parametrize(("loadavg", "cores", "status"), [
    ("0.50 0.40 1.90 1/200 1", 2, "ok"),        # 0.95 per core
    ("9.00 9.00 2.00 1/200 1", 2, "warning"),   # 15-min average decides: 1.0 per core
    ("0.10 0.10 16.0 1/200 1", 4, "critical"),  # 4.0 per core
])
def test_cpu_uses_the_15_minute_load_per_core(loadavg, cores, status):
    assert check_cpu(loadavg, cores, 1.0, 2.0)["status"] == status


def test_memory_counts_available_not_free():
    info = parse_meminfo(MEMINFO)
    assert info["MemAvailable"] == 2456242 and info["HugePages_Total"] == 0
    check = check_memory(info, 85, 95)
    assert check["value"] == 90.0 and check["status"] == "warning"
    assert check_memory({}, 85, 95)["status"] == "skipped"


@pytest.mark.parametrize(("count", "expected", "status"), [
    (4, 4, "ok"), (3, 4, "critical"), (0, 4, "critical"), (0, 0, "skipped"), (2, 0, "ok"),
])
def test_gpu_count_against_expected(count, expected, status):
    assert check_gpu(count, expected)["status"] == status


def test_network_default_route(tmp_path):
    assert parse_default_route(ROUTE) == "eth0"
    (tmp_path / "eth0").mkdir()
    (tmp_path / "eth0" / "operstate").write_text("up\n")
    assert check_network(ROUTE, str(tmp_path))["status"] == "ok"
    (tmp_path / "eth0" / "operstate").write_text("down\n")
    assert check_network(ROUTE, str(tmp_path))["status"] == "critical"
    assert check_network(ROUTE.splitlines()[0], str(tmp_path))["detail"] == "no IPv4 default route"


@pytest.mark.parametrize(("state", "status", "value"), [
    ({"Status": "running", "Health": {"Status": "healthy"}}, "ok", 1),
    ({"Status": "running"}, "ok", 1),  # no health check defined
    ({"Status": "running", "Health": {"Status": "unhealthy"}}, "critical", 0),
    ({"Status": "running", "Health": {"Status": "starting"}}, "critical", 0),
    ({"Status": "exited", "ExitCode": 137}, "critical", 0),
    (None, "critical", 0),
])
def test_container_states(state, status, value):
    check = check_container("llmops-appdb-mariadb-1", state)
    assert (check["status"], check["value"]) == (status, value)


INFO = {"version": "10.11.6-MariaDB", "log_bin": True, "binlog_format": "ROW"}


@pytest.mark.parametrize(("rows", "info", "status"), [
    ([["Uptime", "100"], ["Threads_connected", "10"], ["max_connections", "300"]], INFO, "ok"),
    ([["Uptime", "100"], ["Threads_connected", "250"], ["max_connections", "300"]], INFO, "warning"),
    ([["Uptime", "100"], ["Threads_connected", "299"], ["max_connections", "300"]], INFO, "critical"),
    ([["Threads_connected", "1"], ["max_connections", "300"]], {**INFO, "binlog_format": "MIXED"}, "warning"),
    ([["Threads_connected", "1"], ["max_connections", "300"]], {**INFO, "log_bin": False}, "warning"),
])
def test_mariadb_connections_and_binlog(rows, info, status):
    assert check_mariadb(rows, info, 80, 95)["status"] == status


def _state(tmp_path, last_ok_ended, last_status="success"):
    """The backup state as backup runs leave it (written by the report's own update_state)."""
    update_state(str(tmp_path), {"id": "llmops_a", "status": "success", "ended": last_ok_ended, "components": {}})
    if last_status != "success":
        update_state(str(tmp_path), {"id": "llmops_b", "status": last_status, "ended": "2026-11-23T02:00:00Z",
                                     "components": {}})


NOW = datetime.datetime(2026, 11, 23, 7, 0, tzinfo=datetime.UTC)


def test_backup_fresh_stale_failed_missing(tmp_path):
    assert check_backup(str(tmp_path), 26, NOW)["status"] == "critical"  # no state: never backed up
    _state(tmp_path, "2026-11-23T02:10:00Z")
    fresh = check_backup(str(tmp_path), 26, NOW)
    assert (fresh["status"], fresh["value"]) == ("ok", 4.8)
    _state(tmp_path, "2026-11-21T02:10:00Z")
    assert check_backup(str(tmp_path), 26, NOW)["status"] == "critical"
    _state(tmp_path, "2026-11-23T02:10:00Z", last_status="failed")
    assert check_backup(str(tmp_path), 26, NOW)["status"] == "warning"


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's name
        code = 200 if self.path == "/ok" else 503
        self.send_response(code)
        self.end_headers()
        self.wfile.write(b"x")

    def log_message(self, *args):
        pass


@pytest.fixture
def http_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_http_answer_code_and_time(http_server):
    ok = check_http("api", http_server + "/ok", 1000, 5000)
    assert ok["status"] == "ok" and 0 < ok["value"] < 1000
    assert check_http("api", http_server + "/ok", 0, 5000)["status"] == "warning"  # any answer is >= 0 ms
    assert check_http("api", http_server + "/down", 1000, 5000)["status"] == "critical"
    refused = check_http("api", "http://127.0.0.1:1/", 1000, 5000)
    assert refused["status"] == "critical" and refused["value"] is None


def test_grades_follow_the_operations_manual():
    assert grade("mariadb", "critical") == "Critical"
    assert grade("disk", "warning") == "Minor"
    assert grade("container", "critical") == "Major"
    assert grade("cpu", "ok") == "" and grade("gpu", "skipped") == ""


def test_report_and_metrics():
    checks = [check_gpu(3, 4), check_container("c1", {"Status": "running"}), check_container("c2", None),
              {"check": "http api", "status": "ok", "value": 12.5, "detail": ""}]
    assert overall(checks) == "critical" and overall(checks[1:2]) == "ok"
    lines = report_lines(checks, "gpu-host-01")
    assert lines[0] == "health of gpu-host-01: CRITICAL"
    assert lines[-1].startswith("container c1") or lines[-1].startswith("http api")
    text = metrics(checks, 3, 4, NOW)
    assert "llmops_gpu_count 3.0" in text and "llmops_gpu_expected 4.0" in text
    assert 'llmops_container_healthy{container="c1"} 1.0' in text
    assert 'llmops_container_healthy{container="c2"} 0.0' in text
    assert 'llmops_http_response_seconds{check="api"} 0.0125' in text
    assert 'llmops_health_check_status{check="gpu"} 2.0' in text
