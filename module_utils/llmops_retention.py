"""Retention planning for backup sets: a pure function, no file system access.

``plan_retention(sets, policy, now)`` decides which sets to keep (with the reasons) and which to
delete. ``sets`` are dicts as returned by ``llmops_backupset.list_sets`` (or built by hand):

- ``id``: the set id (``<name>_YYYYmmdd_HHMMSS``);
- ``end`` (datetime) or ``ended`` (ISO 8601 string): when the run ended, UTC;
- ``status``: ``success`` or ``failed``; ``complete`` (default True): finalized;
- ``components``: ``{name: {backup_type: full|incremental, parent: set id, binlog: {...}}}``.

Rules, in order (a set may collect several reasons):

1. incomplete sets (``complete: False``, i.e. ``.partial``) are never deleted here: they are
   ``cleanup_partials``' business;
2. the newest complete successful set, and the newest one of each set name, are kept;
3. successful full sets (no incremental component) younger than ``daily_days`` are kept;
4. successful incremental sets younger than ``incremental_days`` are kept;
5. sets holding binary logs younger than ``binlog_days`` are kept;
6. weekly: per ISO week (in ``timezone``) the full set made on ``weekly_day`` (6 = Sunday; else the
   newest of that week) for the newest ``weekly`` weeks;
7. monthly: per month the first full set made on the 1st (else the first of that month) for the
   newest ``monthly`` months;
8. failed sets younger than ``failed_days`` are kept for inspection, older ones deleted;
9. every set that a kept set's incremental chain depends on (``parent``, transitively) is kept.

Everything else is deleted. The result is deterministic: ``{"keep": {id: [reasons]},
"delete": [ids], "warnings": [...]}`` with sorted ids.
"""

from __future__ import annotations

import datetime

try:
    from ansible.module_utils.llmops_backupset import parse_time
except ImportError:  # imported directly (tests) rather than through Ansible
    from module_utils.llmops_backupset import parse_time

try:
    from zoneinfo import ZoneInfo
except ImportError:  # pragma: no cover - Python < 3.9 targets: UTC only
    ZoneInfo = None

DEFAULT_POLICY = {
    "daily_days": 30,
    "weekly": 4,
    "monthly": 12,
    "incremental_days": 7,
    "binlog_days": 14,
    "failed_days": 7,
    "weekly_day": 6,
    "timezone": "UTC",
}


def normalize_policy(policy=None):
    """Merge ``policy`` over ``DEFAULT_POLICY`` and check it; raise ``ValueError`` on bad values."""
    merged = dict(DEFAULT_POLICY)
    for key, value in (policy or {}).items():
        if value is None:
            continue
        if key not in DEFAULT_POLICY:
            raise ValueError("unknown retention policy key %r (known: %s)" % (key, ", ".join(sorted(DEFAULT_POLICY))))
        merged[key] = value
    for key in ("daily_days", "weekly", "monthly", "incremental_days", "binlog_days", "failed_days"):
        if isinstance(merged[key], bool) or not isinstance(merged[key], (int, float)) or merged[key] < 0:
            raise ValueError("retention policy %s must be a number >= 0, got %r" % (key, merged[key]))
    if merged["weekly_day"] not in range(7):
        raise ValueError("retention policy weekly_day must be 0 (Monday) .. 6 (Sunday), got %r" % merged["weekly_day"])
    if merged["timezone"] not in ("UTC", "utc"):
        if ZoneInfo is None:
            raise ValueError("timezone %r needs Python 3.9+ (zoneinfo)" % merged["timezone"])
        try:
            ZoneInfo(merged["timezone"])
        except Exception as exc:
            raise ValueError("unknown timezone %r: %s" % (merged["timezone"], exc)) from exc
    return merged


def _normalize_set(raw):
    if "id" not in raw:
        raise ValueError("every set needs an 'id': %r" % (raw,))
    end = raw.get("end") if raw.get("end") is not None else raw.get("ended")
    if end is None:
        raise ValueError("set %s has no end time ('end' or 'ended')" % raw["id"])
    components = raw.get("components") or {}
    parents = sorted({c.get("parent") for c in components.values() if c and c.get("parent")})
    return {
        "id": raw["id"],
        "name": raw.get("name") or raw["id"].rsplit("_", 2)[0],
        "end": parse_time(end),
        "good": raw.get("status") == "success",
        "complete": raw.get("complete", True),
        "incremental": any((c or {}).get("backup_type") == "incremental" for c in components.values()),
        "binlog": any((c or {}).get("binlog") for c in components.values()),
        "parents": parents,
    }


def plan_retention(sets, policy=None, now=None):
    """Return ``{"keep": {id: [reasons]}, "delete": [ids], "warnings": [...]}`` for ``sets``.

    Pure and deterministic; ``keep`` and ``delete`` are disjoint and cover every id given.
    """
    policy = normalize_policy(policy)
    now = parse_time(now) if now is not None else datetime.datetime.now(datetime.timezone.utc)
    tz = datetime.timezone.utc if policy["timezone"] in ("UTC", "utc") else ZoneInfo(policy["timezone"])
    items = [_normalize_set(s) for s in sets]
    by_id = {}
    for item in items:
        if item["id"] in by_id:
            raise ValueError("duplicate set id %s" % item["id"])
        by_id[item["id"]] = item
    keep = {}
    warnings = []

    def add(set_id, reason):
        reasons = keep.setdefault(set_id, [])
        if reason not in reasons:
            reasons.append(reason)

    def age_days(item):
        return (now - item["end"]).total_seconds() / 86400.0

    order = sorted(items, key=lambda s: (s["end"], s["id"]))
    for item in order:
        if not item["complete"]:
            add(item["id"], "incomplete: left to cleanup_partials")
    good = [s for s in order if s["complete"] and s["good"]]
    if good:
        add(good[-1]["id"], "newest successful set")
        newest_by_name = {}
        for item in good:
            newest_by_name[item["name"]] = item
        for name in sorted(newest_by_name):
            add(newest_by_name[name]["id"], "newest successful %s set" % name)
    for item in good:
        age = age_days(item)
        if item["incremental"]:
            if age < policy["incremental_days"]:
                add(item["id"], "incremental < %s d" % policy["incremental_days"])
        elif age < policy["daily_days"]:
            add(item["id"], "daily < %s d" % policy["daily_days"])
        if item["binlog"] and age < policy["binlog_days"]:
            add(item["id"], "binlog < %s d" % policy["binlog_days"])

    fulls = [s for s in good if not s["incremental"]]
    weeks = {}
    months = {}
    for item in fulls:
        local = item["end"].astimezone(tz)
        iso = local.isocalendar()
        weeks.setdefault((iso[0], iso[1]), []).append((local, item))
        months.setdefault((local.year, local.month), []).append((local, item))
    for key in sorted(weeks, reverse=True)[:int(policy["weekly"])]:
        members = weeks[key]
        on_day = [m for m in members if m[0].weekday() == policy["weekly_day"]]
        chosen = (on_day or members)[-1][1]
        add(chosen["id"], "weekly %04d-W%02d" % key)
    for key in sorted(months, reverse=True)[:int(policy["monthly"])]:
        members = months[key]
        on_first = [m for m in members if m[0].day == 1]
        chosen = (on_first or members)[0][1]
        add(chosen["id"], "monthly %04d-%02d" % key)

    for item in order:
        if item["complete"] and not item["good"] and age_days(item) < policy["failed_days"]:
            add(item["id"], "failed, kept for inspection < %s d" % policy["failed_days"])

    pending = sorted(keep)
    while pending:
        child = pending.pop(0)
        for parent in by_id[child]["parents"]:
            if parent not in by_id:
                warning = "%s depends on %s, which is not present" % (child, parent)
                if warning not in warnings:
                    warnings.append(warning)
                continue
            if parent not in keep:
                pending.append(parent)
            add(parent, "parent of %s" % child)

    delete = sorted(i for i in by_id if i not in keep)
    return {"keep": {k: keep[k] for k in sorted(keep)}, "delete": delete, "warnings": sorted(warnings)}
