"""What a backup run reports: the summary table, Prometheus textfile metrics and the alerts.

Pure functions over a finalized set's manifest plus a small state file under the backup root
(``.backup_state.json``: the last success per component, kept across runs so that a component
that fails tonight still shows when it last succeeded).
"""

from __future__ import annotations

import json
import os
import shutil

from ansible.module_utils.llmops_backupset import (
    human_bytes,
    is_no_space,
    isoformat,
    parse_time,
    read_json,
    utc,
    write_file_atomic,
)
from ansible.module_utils.llmops_layout import layout_path


def storage(root):
    """Total, used and free bytes of the file system holding ``root``, and the free percentage."""
    usage = shutil.disk_usage(root)
    return {"total": usage.total, "used": usage.used, "free": usage.free,
            "free_pct": round(100.0 * usage.free / usage.total, 2) if usage.total else 0.0}


def component_bytes(entry):
    """Bytes of a component's files (a brief manifest, ``brief_manifest``, gives the sum as ``files_bytes``)."""
    if "files_bytes" in entry:
        return int(entry["files_bytes"] or 0)
    return sum(int(f.get("size") or 0) for f in entry.get("files") or [])


def summary_rows(manifest):
    """One row per component: component, type, size (logical: every file the set holds for it), new (the bytes
    the set added to the backup volume; None for a set finalized before it was recorded), duration, verified,
    status, error."""
    rows = []
    for name in sorted(manifest.get("components", {})):
        entry = manifest["components"][name]
        size = component_bytes(entry)
        new = entry.get("new_bytes")
        rows.append({
            "component": name,
            "type": entry.get("backup_type") or entry.get("mode") or "full",
            "bytes": size,
            "size": human_bytes(size),
            "new_bytes": new,
            "new": human_bytes(new) if isinstance(new, int) else "-",
            "duration_s": entry.get("duration_s"),
            # finalize re-hashed every file against what the component recorded
            "verified": entry.get("status") == "success",
            "status": entry.get("status"),
            "error": entry.get("error", ""),
        })
    return rows


def table(rows):
    """The summary as fixed-width text lines."""
    header = ("component", "type", "size", "new", "duration", "verified", "status")
    lines = [[r["component"], str(r["type"]), r["size"], r["new"],
              "%.1f s" % r["duration_s"] if isinstance(r["duration_s"], (int, float)) else "-",
              "yes" if r["verified"] else "NO", r["status"]] for r in rows]
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(header)]
    fmt = "  ".join("%%-%ds" % w for w in widths)
    out = [fmt % header, fmt % tuple("-" * w for w in widths)]
    out += [fmt % tuple(line) for line in lines]
    for r in rows:
        if r["error"]:
            out.append("%s: %s" % (r["component"], r["error"]))
    return out


def update_state(root, manifest=None, verification=None, now=None):
    """Record a run in the state file (the one writer of its format); return the merged state.

    ``manifest``: a backup run, its components' last status / success. ``verification``: a restore
    test of a set (``{"set_id", "set_ended", "result": passed|failed, "time", "details"}``), kept as
    ``restore_test.last`` and, when it passed and its set is the newest so tested, ``restore_test.newest_passed``.
    """
    path = layout_path(root, "state_file")
    try:
        state = read_json(path)
    except (OSError, ValueError):
        state = {}
    state.setdefault("components", {})
    if manifest:
        ended = manifest.get("ended") or manifest.get("started")
        for name, entry in manifest.get("components", {}).items():
            item = state["components"].setdefault(name, {})
            item["last_status"] = entry.get("status")
            item["last_run"] = ended
            if entry.get("status") == "success":
                item["last_success"] = ended
                item["duration_s"] = entry.get("duration_s")
                item["bytes"] = component_bytes(entry)
                item["new_bytes"] = entry.get("new_bytes")
        state["last_set"] = {"id": manifest.get("id"), "status": manifest.get("status"), "ended": ended}
        # The backup volume filled during this run (backup_set finalize removed the partial): until a run
        # gets past finalize again, the storage_full metric says so.
        state["storage_full"] = storage_full_state(manifest, ended)
        if manifest.get("status") == "success":
            state["last_successful_set"] = state["last_set"]
    if verification:
        record = {k: verification.get(k) for k in ("set_id", "set_ended", "result", "details", "duration_s")}
        record["time"] = verification.get("time") or isoformat(utc(now))
        tests = state.setdefault("restore_test", {})
        tests["last"] = record
        newest = tests.get("newest_passed") or {}
        if record["result"] == "passed" and (not newest.get("set_ended") or (
                record["set_ended"] and parse_time(record["set_ended"]) >= parse_time(newest["set_ended"]))):
            tests["newest_passed"] = record
    try:
        write_file_atomic(path, json.dumps(state, indent=2, sort_keys=True).encode("utf-8"))
    except OSError as exc:
        if not is_no_space(exc):
            raise
        # the backup volume is too full for the state file too (a run that could not even open its set): the
        # metrics (written elsewhere) and the alerts still come from the merged state
        return dict(state, state_not_written="%s: %s" % (path, exc))
    return state


def storage_full_state(manifest, ended=None):
    """``{set_id, time, free_bytes, needed_bytes, root, msg}`` when the run of ``manifest`` failed because the
    backup volume was full (its ``storage_full``, set by ``backup_set`` finalize), else None."""
    full = (manifest or {}).get("storage_full")
    if not isinstance(full, dict):
        return None
    return {"set_id": manifest.get("id"), "time": ended or manifest.get("ended"), "root": full.get("root"),
            "free_bytes": full.get("free_bytes"), "needed_bytes": full.get("needed_bytes"),
            "more_than": bool(full.get("more_than")), "msg": full.get("msg")}


def storage_full_alert(full):
    """The critical alert for a run that the full backup volume stopped (``storage_full_state``)."""
    summary = ("backup storage %s is FULL: run %s did not fit and its partial set was removed; the next run needs "
               "%s %s there (free now: %s): delete old sets (playbooks/cleanup.yml) or grow the volume, then run "
               "the backup again" % (full.get("root"), full.get("set_id"),
                                     "more than" if full.get("more_than") else "about",
                                     human_bytes(full.get("needed_bytes")), human_bytes(full.get("free_bytes"))))
    return {"severity": "critical", "summary": summary}


def gauge(lines, name, help_text, samples):
    """Append a Prometheus gauge (HELP, TYPE, one line per ``(labels, value)`` sample) to ``lines``."""
    lines.append("# HELP %s %s" % (name, help_text))
    lines.append("# TYPE %s gauge" % name)
    for labels, value in samples:
        label_text = ",".join('%s="%s"' % (k, v) for k, v in sorted(labels.items()))
        lines.append("%s%s %s" % (name, "{%s}" % label_text if label_text else "", repr(float(value))))


def metrics(state, disk, now=None):
    """Prometheus text exposition of the state and the backup storage."""
    def ts(value):
        return parse_time(value).timestamp() if value else 0

    lines = []
    comps = sorted(state.get("components", {}).items())
    gauge(lines, "llmops_backup_last_success_timestamp_seconds", "End of the last successful backup of the component.",
          [({"component": n}, ts(c.get("last_success"))) for n, c in comps])
    gauge(lines, "llmops_backup_last_run_success", "1 when the component's last backup succeeded.",
          [({"component": n}, 1 if c.get("last_status") == "success" else 0) for n, c in comps])
    gauge(lines, "llmops_backup_duration_seconds", "Duration of the component's last successful backup.",
          [({"component": n}, c.get("duration_s") or 0) for n, c in comps])
    gauge(lines, "llmops_backup_size_bytes", "Size of the component's last successful backup.",
          [({"component": n}, c.get("bytes") or 0) for n, c in comps])
    gauge(lines, "llmops_backup_new_bytes", "Bytes the component's last successful backup added to the backup volume "
          "(a file hard-linked to an earlier set's is not counted).",
          [({"component": n}, c["new_bytes"]) for n, c in comps if isinstance(c.get("new_bytes"), int)])
    last_ok = state.get("last_successful_set") or {}
    gauge(lines, "llmops_backup_set_last_success_timestamp_seconds", "End of the newest successful backup set.",
          [({}, ts(last_ok.get("ended")))])
    gauge(lines, "llmops_backup_set_last_run_success", "1 when the newest backup set succeeded.",
          [({}, 1 if (state.get("last_set") or {}).get("status") == "success" else 0)])
    gauge(lines, "llmops_backup_storage_total_bytes", "Size of the backup file system.", [({}, disk["total"])])
    gauge(lines, "llmops_backup_storage_free_bytes", "Free bytes on the backup file system.", [({}, disk["free"])])
    gauge(lines, "llmops_backup_storage_used_bytes", "Used bytes on the backup file system.", [({}, disk["used"])])
    full = state.get("storage_full") or {}
    gauge(lines, "llmops_backup_storage_full", "1 when the last backup run failed because the backup file system "
          "was full (its partial set was removed).", [({}, 1 if full else 0)])
    gauge(lines, "llmops_backup_storage_needed_bytes", "About the bytes the next backup run needs on the backup file "
          "system (the previous set's size), when the last run found it full; 0 otherwise.",
          [({}, full.get("needed_bytes") or 0)])
    tests = state.get("restore_test") or {}
    gauge(lines, "llmops_backup_restore_tested_set_timestamp_seconds",
          "End of the newest backup set whose restore test passed (0: none yet).",
          [({}, ts((tests.get("newest_passed") or {}).get("set_ended")))])
    if tests.get("last"):
        gauge(lines, "llmops_backup_restore_test_last_success", "1 when the last restore test of a set passed.",
              [({"set": tests["last"].get("set_id") or ""}, 1 if tests["last"].get("result") == "passed" else 0)])
        gauge(lines, "llmops_backup_restore_test_last_timestamp_seconds", "When the last restore test ran.",
              [({}, ts(tests["last"].get("time")))])
    return "\n".join(lines) + "\n"


def alerts(manifest, state, disk, max_age_hours=26, warn_free_pct=20, crit_free_pct=10, now=None,
           verification=None):
    """The alerts this run raises, each ``{"severity": critical|warning, "summary": ...}``."""
    found = []
    if verification and verification.get("result") != "passed":
        found.append({"severity": "critical", "summary": "restore test of backup set %s FAILED: %s; the set cannot be "
                                                         "trusted: read the drill report, fix the cause and back up "
                                                         "again" % (verification.get("set_id"),
                                                                    verification.get("details") or "no details")})
    full = storage_full_state(manifest) if manifest else None
    if full:
        found.append(storage_full_alert(full))
    if manifest and manifest.get("status") != "success":
        failed = [n for n, e in manifest.get("components", {}).items() if e.get("status") != "success"]
        found.append({"severity": "critical", "summary": "backup set %s FAILED (components: %s): %s" % (
            manifest.get("id"), ", ".join(sorted(failed)) or "none recorded", "; ".join(manifest.get("problems", [])))})
    last_ok = (state.get("last_successful_set") or {}).get("ended")
    if not last_ok:
        found.append({"severity": "critical", "summary": "no successful backup set exists yet"})
    else:
        age_h = (utc(now) - parse_time(last_ok)).total_seconds() / 3600.0
        if age_h > max_age_hours:
            found.append({"severity": "warning", "summary": "the newest successful backup set is %.1f h old "
                                                            "(threshold %s h)" % (age_h, max_age_hours)})
    if disk["free_pct"] < crit_free_pct:
        found.append({"severity": "critical", "summary": "backup storage has %.1f %% free (under %s %%): %s of %s" % (
            disk["free_pct"], crit_free_pct, human_bytes(disk["free"]), human_bytes(disk["total"]))})
    elif disk["free_pct"] < warn_free_pct:
        found.append({"severity": "warning", "summary": "backup storage has %.1f %% free (under %s %%): %s of %s" % (
            disk["free_pct"], warn_free_pct, human_bytes(disk["free"]), human_bytes(disk["total"]))})
    return found


def append_audit(path, record):
    """Append ``record`` as one JSON line to the audit log ``path`` (0600); return None, or why it failed."""
    line = json.dumps(dict({"time": isoformat(utc())}, **record)) + "\n"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line.encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        return str(exc)
    return None
