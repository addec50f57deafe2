"""DR drill reports: measured RTO / RPO against targets, report.json / report.md, a PNG chart of
RTO and RPO over the past drills and Prometheus metrics.

RTO (recovery time) is measured from the drill's start to each component's verified data, and in
total. RPO (recovery point) is the age, at the drill's start, of the newest point the drill could
restore: the set's end, or for MariaDB the newest archived binary log when it is newer.
"""

from __future__ import annotations

import glob
import json
import os

from ansible.module_utils.llmops_backupset import parse_time, read_json, write_file_atomic
from ansible.module_utils.llmops_common import LlmopsError
from ansible.module_utils.llmops_report import gauge

REPORT_JSON = "report.json"
# What the drill role must say about a drill (the rest is optional): a report cannot be made without it.
REQUIRED = ("id", "started", "ended", "set_id", "set_ended", "rto_target_seconds", "rpo_target_seconds")


class DrillError(LlmopsError):
    """The drill's facts cannot be reported; the message names what is missing or wrong."""


def check_drill(drill):
    """A copy of ``drill`` with its targets as numbers, or ``DrillError`` naming every missing or bad fact."""
    drill = dict(drill)
    problems = ["%s is missing" % key for key in REQUIRED if drill.get(key) in (None, "")]
    for key in ("rto_target_seconds", "rpo_target_seconds"):  # -e on the command line gives strings
        if drill.get(key) not in (None, ""):
            try:
                drill[key] = float(drill[key])
            except (TypeError, ValueError):
                problems.append("%s is %r, not a number of seconds" % (key, drill[key]))
    for key in ("started", "ended", "set_ended"):
        if drill.get(key) not in (None, ""):
            try:
                parse_time(drill[key])
            except ValueError:
                problems.append("%s is %r, not an ISO 8601 time" % (key, drill[key]))
    timings = drill.get("timings") or {}
    try:
        if any(float(seconds) < 0 for seconds in timings.values()):
            problems.append("timings holds a negative duration: %r" % (timings,))
    except (AttributeError, TypeError, ValueError):
        problems.append("timings must map each component to the seconds until it was verified, got %r" % (timings,))
    if problems:
        raise DrillError("the drill's facts cannot be reported: %s (the drill role builds them; a playbook calling "
                         "drill_report must give them too)" % "; ".join(problems))
    return drill


def newest_binlog_time(binlog_dir):
    """Modification time of the newest archived binary log (None when there is none)."""
    times = [os.path.getmtime(p) for p in glob.glob(os.path.join(binlog_dir or "", "*.zst"))]
    return max(times) if times else None


def measure(started, ended, timings, set_ended, binlog_time=None, components=(), sources=None):
    """RTO per component and in total, and RPO per component and overall (seconds). ``sources`` (a composed restore
    point: component to ``{set_id, set_ended}``) gives each component the end of its own set."""
    start = parse_time(started)
    set_end = parse_time(set_ended).timestamp()
    rpo = {}
    for name in components:
        own = ((sources or {}).get(name) or {}).get("set_ended")
        point = parse_time(own).timestamp() if own else set_end
        if name == "mariadb" and binlog_time and binlog_time > point:
            point = binlog_time
        rpo[name] = round(max(0.0, start.timestamp() - point), 1)
    return {
        "rto_seconds": round(parse_time(ended).timestamp() - start.timestamp(), 1),
        "rto_by_component": {k: round(float(v), 1) for k, v in (timings or {}).items()},
        "rpo_seconds": max(rpo.values()) if rpo else None,
        "rpo_by_component": rpo,
    }


def build_report(drill):
    """The report dict: the drill's facts, the measures and the verdict against the targets."""
    drill = check_drill(drill)
    measures = measure(drill["started"], drill["ended"], drill.get("timings"), drill["set_ended"],
                       drill.get("binlog_time"), drill.get("components", ()), drill.get("sources"))
    misses = []
    if drill.get("result") != "success":
        misses.append("the restore failed: %s" % (drill.get("failure") or "unknown"))
    if measures["rto_seconds"] > drill["rto_target_seconds"]:
        misses.append("RTO %.0f s exceeds the target %s s" % (measures["rto_seconds"], drill["rto_target_seconds"]))
    if measures["rpo_seconds"] is not None and measures["rpo_seconds"] > drill["rpo_target_seconds"]:
        misses.append("RPO %s s exceeds the target %s s" % (measures["rpo_seconds"], drill["rpo_target_seconds"]))
    report = dict(drill)
    report.update(measures)
    report["passed"] = not misses
    report["findings"] = misses
    return report


def markdown(report):
    """report.md: a short human-readable account (of a drill, or of a host rebuild: ``kind`` ``rebuild``)."""
    rebuild = report.get("kind") == "rebuild"
    phases = report.get("phases") or {}
    if rebuild:
        into = "- Into: the rebuilt host's own stack, from the off-site copy (%s); health check %s" % (
            ", ".join("%s %s s" % item for item in phases.items()) or "phases not measured",
            report.get("health") or "not run")
    else:
        into = "- Into: an isolated scratch stack (Compose projects %s-*), the live stack kept running" % report.get(
            "project_prefix", "llmops-drill")
    lines = [
        "# %s %s: %s" % ("Host rebuild" if rebuild else "DR drill", report["id"],
                         "PASSED" if report["passed"] else "FAILED"),
        "",
        "- Host: %s" % report.get("host"),
        "- Started: %s, ended: %s" % (report["started"], report["ended"]),
        "- Backup set restored: %s (ended %s)" % (report["set_id"], report["set_ended"]) if not report.get("sources")
        else "- Restore point: each component's newest good set (the oldest ended %s)" % report["set_ended"],
        into,
        "- RTO: %.1f s (target %s s)" % (report["rto_seconds"], report["rto_target_seconds"]),
        "- RPO: %s s (target %s s)" % (report["rpo_seconds"], report["rpo_target_seconds"]),
        "",
        "| component | set | restored and verified after (s) | RPO (s) |",
        "| --- | --- | --- | --- |",
    ]
    for name in report.get("components", []):
        rto, rpo = report["rto_by_component"].get(name, "-"), report["rpo_by_component"].get(name, "-")
        source = ((report.get("sources") or {}).get(name) or {}).get("set_id") or report["set_id"]
        lines.append("| %s | %s | %s | %s |" % (name, source, rto, rpo))
    lines += ["", "## Findings", ""]
    lines += ["- %s" % f for f in report["findings"]] or ["- none: every component verified within the targets"]
    return "\n".join(lines) + "\n"


def history(reports_dir):
    """Every past drill's report, oldest first."""
    reports = []
    for path in sorted(glob.glob(os.path.join(reports_dir, "*", REPORT_JSON))):
        try:
            reports.append(read_json(path))
        except (OSError, ValueError):
            continue
    return sorted(reports, key=lambda r: r.get("started", ""))


def chart(reports, dest):
    """A PNG of RTO and RPO over the drills (matplotlib); returns None or why it was skipped."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed where the drill runs"
    when = [parse_time(r["started"]) for r in reports]
    fig, ax = plt.subplots(figsize=(8, 4), dpi=100)
    ax.plot(when, [r["rto_seconds"] / 60.0 for r in reports], marker="o", label="RTO (min)")
    ax.plot(when, [(r.get("rpo_seconds") or 0) / 60.0 for r in reports], marker="s", label="RPO (min)")
    if reports:
        ax.axhline(reports[-1]["rto_target_seconds"] / 60.0, linestyle="--", color="tab:blue", alpha=0.5,
                   label="RTO target")
        ax.axhline(reports[-1]["rpo_target_seconds"] / 60.0, linestyle=":", color="tab:orange", alpha=0.5,
                   label="RPO target")
    ax.set_title("DR drills: recovery time and recovery point")
    ax.set_ylabel("minutes")
    ax.legend(loc="upper left")
    fig.autofmt_xdate()
    fig.tight_layout()
    tmp = dest + ".tmp.png"
    fig.savefig(tmp, format="png")
    plt.close(fig)
    os.replace(tmp, dest)
    return None


def metrics(report):
    """Prometheus textfile metrics of the drill."""
    stamp = parse_time(report["ended"]).timestamp()
    lines = []
    for name, help_text, value in [
        ("llmops_drill_last_timestamp_seconds", "End of the last DR drill.", stamp),
        ("llmops_drill_last_success", "1 when the last DR drill passed.", 1 if report["passed"] else 0),
        ("llmops_drill_rto_seconds", "Measured RTO of the last DR drill.", report["rto_seconds"]),
        ("llmops_drill_rpo_seconds", "Measured RPO of the last DR drill.", report["rpo_seconds"] or 0),
    ]:
        gauge(lines, name, help_text, [({}, value)])
    return "\n".join(lines) + "\n"


def write_report(drill, reports_dir, metrics_path=None):
    """Write report.json, report.md and the history chart under ``reports_dir/<id>/``; return the report."""
    report = build_report(drill)
    folder = os.path.join(reports_dir, report["id"])
    os.makedirs(folder, mode=0o700, exist_ok=True)
    report["report_json"] = os.path.join(folder, REPORT_JSON)
    report["report_md"] = os.path.join(folder, "report.md")
    write_file_atomic(report["report_json"], json.dumps(report, indent=2, sort_keys=True).encode("utf-8"))
    write_file_atomic(report["report_md"], markdown(report).encode("utf-8"))
    report["chart"] = os.path.join(reports_dir, "rto_rpo.png")
    report["chart_skipped"] = chart(history(reports_dir), report["chart"])
    if report["chart_skipped"]:
        report["chart"] = None
    if metrics_path:
        os.makedirs(os.path.dirname(metrics_path), exist_ok=True)
        write_file_atomic(metrics_path, metrics(report).encode("utf-8"), mode=0o644)
    return report
