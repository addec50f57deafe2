"""The search engine's check of the daily health check (module_utils/llmops_health.py, library/health_check.py)
against the Elasticsearch stand-in run locally: green or yellow is ok, red is critical, a refused password is
critical without the password anywhere in the answer."""

from __future__ import annotations

import json

import pytest
from ansible.module_utils.llmops_health import check_search, grade, search_health

from tests.conftest import run_module
from tests.unit.test_search_standin import PASSWORD, EsStandin, seed


@pytest.fixture
def standin(tmp_path):
    proc = EsStandin(tmp_path / "es")
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


def test_green_yellow_ok_and_red_critical_from_the_answer():
    assert check_search({"status": "green", "cluster_name": "c"})["status"] == "ok"
    yellow = check_search({"status": "yellow", "number_of_nodes": 1, "unassigned_shards": 2})
    assert yellow["status"] == "ok" and yellow["value"] == "yellow" and "2 unassigned" in yellow["detail"]
    red = check_search({"status": "red", "unassigned_primary_shards": 1})
    assert red["status"] == "critical" and "1 primary" in red["detail"] and grade("search", "critical") == "Critical"
    assert check_search({})["status"] == "critical"


def test_live_server_ok_then_red_index_is_critical(standin):
    client = standin.client()
    seed(client, n=4)
    ok = search_health(standin.url, "elastic", PASSWORD)
    assert ok["status"] == "ok" and ok["value"] in ("green", "yellow"), ok
    uuid = client.get_index("faq")["faq"]["settings"]["index"]["uuid"]
    standin.stop()
    (standin.data / "indices" / uuid / "docs.json").write_bytes(b"\x00 not json")  # its shard cannot be read
    standin.start()
    red = search_health(standin.url, "elastic", PASSWORD)
    assert red["status"] == "critical" and red["value"] == "red" and "1 primary" in red["detail"], red


def test_module_reports_a_refused_password_as_critical_without_it(standin):
    wrong = "wrong-" + PASSWORD[::-1]
    result = run_module("health_check", {"network": False, "disks": [], "search_url": standin.url,
                                         "search_password": wrong})
    assert not result.get("failed"), result.get("msg")
    check = next(c for c in result["checks"] if c["check"] == "search")
    assert check["status"] == "critical" and "HTTP 401" in check["detail"] and check["grade"] == "Critical"
    text = json.dumps(result)
    assert wrong not in text and PASSWORD not in text
    good = run_module("health_check", {"network": False, "disks": [], "search_url": standin.url,
                                       "search_password": PASSWORD})
    assert next(c for c in good["checks"] if c["check"] == "search")["status"] == "ok"
