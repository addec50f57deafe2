"""Tests of module_utils/llmops_retention.py: worked examples and hypothesis properties."""

from __future__ import annotations

import datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from module_utils.llmops_retention import DEFAULT_POLICY, normalize_policy, plan_retention

UTC = datetime.UTC
NOW = datetime.datetime(2026, 3, 15, 12, 0, tzinfo=UTC)  # a Sunday


def sid(dt, name="llmops"):
    return f"{name}_{dt:%Y%m%d_%H%M%S}"


def full(dt, status="success", **extra):
    return {"id": sid(dt), "end": dt, "status": status,
            "components": {"mariadb": {"backup_type": "full"}, **extra}}


def incr(dt, parent, status="success"):
    return {"id": sid(dt), "end": dt, "status": status,
            "components": {"mariadb": {"backup_type": "incremental", "parent": parent}}}


def daily_history(days):
    return [full(NOW.replace(hour=2) - datetime.timedelta(days=d)) for d in range(days)]


def test_daily_weekly_monthly_example():
    sets = daily_history(400)
    plan = plan_retention(sets, None, NOW)
    keep = plan["keep"]
    assert len([i for i in keep if any(r.startswith("daily") for r in keep[i])]) == 30
    weekly = sorted(i for i in keep if any(r.startswith("weekly") for r in keep[i]))
    assert len(weekly) == 4
    assert all(datetime.datetime.strptime(i[7:15], "%Y%m%d").weekday() == 6 for i in weekly)
    monthly = sorted(i for i in keep if any(r.startswith("monthly") for r in keep[i]))
    assert len(monthly) == 12 and all(i[13:15] == "01" for i in monthly)
    assert sid(NOW.replace(hour=2)) in keep and "newest successful set" in keep[sid(NOW.replace(hour=2))]
    assert len(plan["delete"]) == 400 - len(keep)
    assert sid(NOW.replace(hour=2) - datetime.timedelta(days=45)) in plan["delete"]


def test_incremental_chain_keeps_parents():
    base = NOW - datetime.timedelta(days=40)
    f = full(base)
    i1 = incr(base + datetime.timedelta(hours=6), f["id"])
    i2 = incr(NOW - datetime.timedelta(days=1), i1["id"])
    plan = plan_retention([f, i1, i2], None, NOW)
    assert plan["delete"] == []
    assert plan["keep"][i1["id"]] == [f"parent of {i2['id']}"]
    assert f"parent of {i1['id']}" in plan["keep"][f["id"]]


def test_old_incrementals_and_failed_sets_go():
    f = full(NOW - datetime.timedelta(days=1))
    old_i = incr(NOW - datetime.timedelta(days=8), f["id"])
    young_fail = full(NOW - datetime.timedelta(days=2), status="failed")
    old_fail = full(NOW - datetime.timedelta(days=9), status="failed")
    plan = plan_retention([f, old_i, young_fail, old_fail], None, NOW)
    assert plan["delete"] == sorted([old_i["id"], old_fail["id"]])
    assert plan["keep"][young_fail["id"]] == ["failed, kept for inspection < 7 d"]


def test_binlog_window_and_partials_and_missing_parent():
    old = NOW - datetime.timedelta(days=40)
    binlog_set = incr(NOW - datetime.timedelta(days=10), "llmops_20200101_000000")
    binlog_set["components"]["binlog"] = {"binlog": {"first": "bin.000001", "last": "bin.000009"}}
    partial = {"id": sid(old), "end": old, "status": "running", "complete": False}
    plan = plan_retention([binlog_set, partial], None, NOW)
    assert "binlog < 14 d" in plan["keep"][binlog_set["id"]]
    assert plan["keep"][partial["id"]] == ["incomplete: left to cleanup_partials"]
    assert plan["warnings"] == [f"{binlog_set['id']} depends on llmops_20200101_000000, which is not present"]


def test_newest_kept_even_when_ancient_and_accepts_list_sets_shape():
    ancient = {"id": "llmops_20200101_020000", "ended": "2020-01-01T02:00:00Z", "status": "success",
               "components": {}}
    plan = plan_retention([ancient], {"monthly": 0, "weekly": 0}, NOW)
    assert plan == {"keep": {ancient["id"]: ["newest successful set", "newest successful llmops set"]},
                    "delete": [], "warnings": []}


def test_timezone_moves_the_weekly_day():
    # A: Sat 2026-03-07 20:00 UTC = Sun 05:00 in Seoul (ISO week 10 either way).
    # B: Sun 2026-03-08 16:00 UTC = Mon 01:00 in Seoul (week 10 in UTC, week 11 in Seoul).
    a = full(datetime.datetime(2026, 3, 7, 20, 0, tzinfo=UTC))
    b = full(datetime.datetime(2026, 3, 8, 16, 0, tzinfo=UTC))
    newest = full(NOW)
    policy = {"daily_days": 0, "monthly": 0, "weekly": 2}
    utc_plan = plan_retention([a, b, newest], policy, NOW)
    seoul = plan_retention([a, b, newest], dict(policy, timezone="Asia/Seoul"), NOW)
    assert utc_plan["keep"][b["id"]] == ["weekly 2026-W10"] and utc_plan["delete"] == [a["id"]]
    assert seoul["keep"][a["id"]] == ["weekly 2026-W10"] and seoul["delete"] == [b["id"]]


def test_policy_validation():
    assert normalize_policy(None) == DEFAULT_POLICY
    for bad in ({"daily": 3}, {"daily_days": -1}, {"weekly_day": 7}, {"timezone": "Mars/Base"}):
        with pytest.raises(ValueError):
            normalize_policy(bad)
    with pytest.raises(ValueError, match="duplicate"):
        plan_retention([full(NOW), full(NOW)], None, NOW)


# ------------------------------------------------------------------ properties


@st.composite
def histories(draw):
    count = draw(st.integers(min_value=0, max_value=40))
    offsets = draw(st.lists(st.integers(min_value=0, max_value=500 * 24), min_size=count, max_size=count,
                            unique=True))
    sets = []
    for hours in sorted(offsets, reverse=True):  # oldest first
        end = NOW - datetime.timedelta(hours=hours)
        kind = draw(st.sampled_from(["full", "full", "incremental", "failed", "partial"]))
        earlier = [s["id"] for s in sets]
        if kind == "incremental" and earlier:
            item = incr(end, draw(st.sampled_from(earlier)))
        elif kind == "failed":
            item = full(end, status="failed")
        elif kind == "partial":
            item = dict(full(end), complete=False, status="running")
        else:
            item = full(end)
        if draw(st.booleans()):
            item["components"]["binlog"] = {"binlog": {"first": 1, "last": 2}}
        sets.append(item)
    return sets


policies = st.fixed_dictionaries({
    "daily_days": st.integers(0, 40), "weekly": st.integers(0, 6), "monthly": st.integers(0, 14),
    "incremental_days": st.integers(0, 10), "binlog_days": st.integers(0, 20), "failed_days": st.integers(0, 10),
})

fast = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@fast
@given(histories(), policies)
def test_property_partition_and_determinism(sets, policy):
    plan = plan_retention(sets, policy, NOW)
    ids = {s["id"] for s in sets}
    assert set(plan["keep"]) | set(plan["delete"]) == ids
    assert not set(plan["keep"]) & set(plan["delete"])
    assert plan == plan_retention(list(reversed(sets)), policy, NOW)
    assert all(plan["keep"][i] for i in plan["keep"])


@fast
@given(histories(), policies)
def test_property_newest_complete_kept(sets, policy):
    plan = plan_retention(sets, policy, NOW)
    good = [s for s in sets if s.get("complete", True) and s["status"] == "success"]
    if good:
        newest = max(good, key=lambda s: (s["end"], s["id"]))
        assert newest["id"] in plan["keep"]
    for s in sets:
        if not s.get("complete", True):
            assert s["id"] in plan["keep"]


@fast
@given(histories(), policies)
def test_property_chains_closed(sets, policy):
    plan = plan_retention(sets, policy, NOW)
    by_id = {s["id"]: s for s in sets}
    for kept in plan["keep"]:
        for comp in by_id[kept]["components"].values():
            parent = comp.get("parent")
            if parent in by_id:
                assert parent in plan["keep"], f"{kept} kept but its parent {parent} deleted"


@fast
@given(histories(), policies)
def test_property_young_successful_sets_survive(sets, policy):
    plan = plan_retention(sets, policy, NOW)
    for s in sets:
        if s["status"] != "success":
            continue
        age_days = (NOW - s["end"]).total_seconds() / 86400
        incremental = any(c.get("backup_type") == "incremental" for c in s["components"].values())
        window = policy["incremental_days"] if incremental else policy["daily_days"]
        if age_days < window or age_days < min(policy["daily_days"], policy["incremental_days"]):
            assert s["id"] not in plan["delete"]
