"""The daily health check of seed 000 (section 2.1): system (CPU, memory, disk, GPU, network),
services (containers healthy, API response time) and data (MariaDB status, the search engine's cluster
health, backup freshness, disk space of the backup volume).

Each check returns ``{"check", "status", "value", "detail"}`` with status ``ok``, ``warning``,
``critical`` or ``skipped`` (with the reason in detail). ``grade`` maps a failed check to seed
000's incident grades (Critical: service down or data at risk; Major: a main function failing or
severe degradation; Minor: a small function or mild degradation).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error

from ansible.module_utils.llmops_backupset import parse_time, read_json, utc
from ansible.module_utils.llmops_layout import layout_path
from ansible.module_utils.llmops_report import gauge, storage
from ansible.module_utils.llmops_search import SearchClient, SearchError
from ansible.module_utils.urls import open_url

RANK = {"ok": 0, "skipped": 0, "warning": 1, "critical": 2}

# check kind -> seed 000 grade for (warning, critical)
GRADES = {
    "cpu": ("Minor", "Major"),
    "memory": ("Minor", "Major"),
    "disk": ("Minor", "Major"),
    "gpu": ("Major", "Major"),
    "network": ("Major", "Critical"),
    "container": ("Major", "Major"),
    "http": ("Minor", "Critical"),
    "mariadb": ("Major", "Critical"),
    "search": ("Major", "Critical"),
    "backup": ("Major", "Critical"),
}


def result(check, status, value=None, detail=""):
    return {"check": check, "status": status, "value": value, "detail": detail}


def level(value, warn, crit):
    """``ok`` / ``warning`` / ``critical`` for a value where higher is worse."""
    if crit is not None and value >= crit:
        return "critical"
    if warn is not None and value >= warn:
        return "warning"
    return "ok"


def grade(kind, status):
    """Seed 000's grade of a failed check ('' when it did not fail)."""
    if status not in ("warning", "critical"):
        return ""
    return GRADES[kind][1 if status == "critical" else 0]


def overall(checks):
    """The worst status of all checks."""
    worst = max((RANK[c["status"]] for c in checks), default=0)
    return {0: "ok", 1: "warning", 2: "critical"}[worst]


# --- system ------------------------------------------------------------------------------------

def parse_meminfo(text):
    """{field: kB} from /proc/meminfo."""
    out = {}
    for line in text.splitlines():
        name, sep, rest = line.partition(":")
        parts = rest.split()
        if sep and parts and parts[0].isdigit():
            out[name.strip()] = int(parts[0])
    return out


def check_cpu(loadavg_text, cores, warn_per_core, crit_per_core):
    """15-minute load average per core."""
    load15 = float(loadavg_text.split()[2])
    per_core = round(load15 / max(cores, 1), 2)
    return result("cpu", level(per_core, warn_per_core, crit_per_core), per_core,
                  "load %.2f over 15 min on %d cores (%.2f per core)" % (load15, cores, per_core))


def check_memory(meminfo, warn_pct, crit_pct):
    """Memory in use (MemTotal - MemAvailable) as a percentage."""
    total, available = meminfo.get("MemTotal", 0), meminfo.get("MemAvailable", 0)
    if not total:
        return result("memory", "skipped", None, "no MemTotal in /proc/meminfo")
    used_pct = round(100.0 * (total - available) / total, 1)
    return result("memory", level(used_pct, warn_pct, crit_pct), used_pct,
                  "%.1f %% used, %d MiB available of %d MiB" % (used_pct, available // 1024, total // 1024))


def check_disk(path, warn_free_pct, crit_free_pct):
    """Free space of the file system holding ``path``."""
    name = "disk %s" % path
    if not os.path.exists(path):
        return result(name, "critical", None, "%s does not exist" % path)
    disk = storage(path)
    status = "critical" if disk["free_pct"] < crit_free_pct else "warning" if disk["free_pct"] < warn_free_pct else "ok"
    return result(name, status, disk["free_pct"], "%.1f %% free (%d GiB of %d GiB)" % (
        disk["free_pct"], disk["free"] // 2**30, disk["total"] // 2**30))


def check_gpu(count, expected, reason=""):
    """GPUs answering nvidia-smi against the GPUs the host should have."""
    if expected == 0:
        return result("gpu", "skipped" if count == 0 else "ok", count,
                      reason or "no GPU expected on this host (%d found)" % count)
    if count < expected:
        return result("gpu", "critical", count, "%d of %d GPUs answer nvidia-smi%s" % (
            count, expected, (": " + reason) if reason else ""))
    return result("gpu", "ok", count, "%d of %d GPUs answer nvidia-smi" % (count, expected))


def parse_default_route(route_text):
    """The interface of the IPv4 default route in /proc/net/route, or None."""
    for line in route_text.splitlines()[1:]:
        fields = line.split()
        if len(fields) > 2 and fields[1] == "00000000":
            return fields[0]
    return None


def check_network(route_text, sys_class_net="/sys/class/net"):
    """The default route exists and its interface is up."""
    iface = parse_default_route(route_text)
    if not iface:
        return result("network", "critical", None, "no IPv4 default route")
    try:
        with open(os.path.join(sys_class_net, iface, "operstate")) as handle:
            state = handle.read().strip()
    except OSError:
        state = "unknown"
    # virtual interfaces (veth, bridges) report "unknown" while they carry traffic
    status = "ok" if state in ("up", "unknown") else "critical"
    return result("network", status, state, "default route via %s (%s)" % (iface, state))


# --- services ----------------------------------------------------------------------------------

def container_states(names, docker="docker"):
    """{name: docker inspect State or None} for the named containers."""
    states = {name: None for name in names}
    if not names:
        return states
    proc = subprocess.run([docker, "inspect"] + list(names), capture_output=True, timeout=60, check=False)
    # docker inspect prints what it found even when some names are missing (exit 1)
    for info in json.loads(proc.stdout.decode("utf-8", "replace") or "[]"):
        states[info["Name"].lstrip("/")] = info.get("State", {})
    return states


def check_container(name, state):
    """Running, and healthy where the image defines a health check."""
    check = "container %s" % name
    if state is None:
        return result(check, "critical", 0, "no such container")
    if state.get("Status") != "running":
        return result(check, "critical", 0, "%s (exit code %s)" % (state.get("Status"), state.get("ExitCode")))
    health = (state.get("Health") or {}).get("Status")
    if health and health != "healthy":
        return result(check, "critical", 0, "running but %s" % health)
    return result(check, "ok", 1, "running, %s" % (health or "no health check"))


def check_http(name, url, warn_ms, crit_ms, timeout=10.0):
    """An HTTP GET answering 2xx, timed; slow answers warn (``warn_ms``) or fail (``crit_ms``)."""
    check = "http %s" % name
    started = time.monotonic()
    try:
        with open_url(url, timeout=timeout, validate_certs=True) as resp:
            resp.read()
            code = resp.status
    except urllib.error.HTTPError as exc:
        code = exc.code
    except (urllib.error.URLError, OSError) as exc:
        return result(check, "critical", None, "%s did not answer: %s" % (url, getattr(exc, "reason", exc)))
    elapsed_ms = round((time.monotonic() - started) * 1000.0, 1)
    if not 200 <= code < 300:
        return result(check, "critical", elapsed_ms, "%s answered HTTP %d in %.1f ms" % (url, code, elapsed_ms))
    return result(check, level(elapsed_ms, warn_ms, crit_ms), elapsed_ms,
                  "%s answered in %.1f ms (warn %s ms, critical %s ms)" % (url, elapsed_ms, warn_ms, crit_ms))


# --- data --------------------------------------------------------------------------------------

def check_mariadb(status_rows, info, conn_warn_pct, conn_crit_pct):
    """MariaDB answers, binary log on in ROW format, connections below max_connections."""
    status = {row[0]: row[1] for row in status_rows if len(row) > 1}
    used, limit = int(status.get("Threads_connected", 0)), int(status.get("max_connections", 0) or 1)
    pct = round(100.0 * used / limit, 1)
    problems = []
    if not info["log_bin"] or info["binlog_format"] != "ROW":
        problems.append("binary log %s in %s format (backups need it on, ROW)" % (
            "on" if info["log_bin"] else "OFF", info["binlog_format"]))
    state = "warning" if problems else level(pct, conn_warn_pct, conn_crit_pct)
    detail = "%s up %s s, %d of %d connections (%.1f %%)" % (
        info["version"], status.get("Uptime", "?"), used, limit, pct)
    return result("mariadb", state, pct, "; ".join([detail] + problems))


def check_search(health):
    """The search engine's cluster health (``GET _cluster/health``): green or yellow is ok (a single node keeps
    replicas unassigned: yellow), red (a primary shard unassigned: an index cannot be read or snapshotted) is
    critical."""
    status = health.get("status")
    detail = "cluster %s is %s: %s node(s), %s active primary shard(s), %s unassigned shard(s)" % (
        health.get("cluster_name", "?"), status, health.get("number_of_nodes", "?"),
        health.get("active_primary_shards", "?"), health.get("unassigned_shards", "?"))
    if status in ("green", "yellow"):
        return result("search", "ok", status, detail)
    if status == "red":
        return result("search", "critical", status, detail + " (%s primary; GET _cluster/allocation/explain says why)"
                      % health.get("unassigned_primary_shards", "?"))
    return result("search", "critical", status, "unexpected cluster health answer: %s" % detail)


def search_health(url, user, password, timeout=10.0):
    """``check_search`` of the server at ``url``, authenticated (the password only in the Authorization header); a
    server that does not answer or refuses the credentials is critical."""
    try:
        client = SearchClient(url, user=user, password=password, timeout=timeout, retries=1, backoff=0.5)
        return check_search(client.health())
    except SearchError as exc:
        return result("search", "critical", None, "the search engine does not answer: %s" % exc)


def check_backup(backup_root, max_age_hours, now=None):
    """The newest successful backup set is younger than ``max_age_hours`` and the last run succeeded."""
    now = now or utc()
    try:
        state = read_json(layout_path(backup_root, "state_file"))
    except (OSError, ValueError):
        return result("backup", "critical", None, "no backup state in %s: no backup has run there" % backup_root)
    last_ok = (state.get("last_successful_set") or {})
    if not last_ok.get("ended"):
        return result("backup", "critical", None, "no successful backup set yet")
    age_h = round((now - parse_time(last_ok["ended"])).total_seconds() / 3600.0, 1)
    last = state.get("last_set") or {}
    if age_h > max_age_hours:
        return result("backup", "critical", age_h, "newest successful set %s is %.1f h old (limit %s h)" % (
            last_ok.get("id"), age_h, max_age_hours))
    if last.get("status") != "success":
        return result("backup", "warning", age_h, "last set %s %s; newest successful %s is %.1f h old" % (
            last.get("id"), last.get("status"), last_ok.get("id"), age_h))
    return result("backup", "ok", age_h, "newest set %s is %.1f h old (limit %s h)" % (last_ok.get("id"), age_h,
                                                                                       max_age_hours))


# --- report ------------------------------------------------------------------------------------

def report_lines(checks, host):
    """A short fixed-width report: one line per check, worst first."""
    ordered = sorted(checks, key=lambda c: (-RANK[c["status"]], c["check"]))
    width = max([len(c["check"]) for c in checks] + [5])
    lines = ["health of %s: %s" % (host, overall(checks).upper())]
    for c in ordered:
        mark = c["status"].upper() + ((" (%s)" % c["grade"]) if c.get("grade") else "")
        lines.append("%-*s  %-18s %s" % (width, c["check"], mark, c["detail"]))
    return lines


def metrics(checks, gpu_count, gpu_expected, now=None):
    """Prometheus textfile metrics: every check's status, GPUs, containers, HTTP response times."""
    now = now or utc()
    lines = []
    gauge(lines, "llmops_health_check_status", "Health check status: 0 ok or skipped, 1 warning, 2 critical.",
          [({"check": c["check"]}, RANK[c["status"]]) for c in checks])
    gauge(lines, "llmops_gpu_count", "GPUs answering nvidia-smi.", [({}, gpu_count)])
    gauge(lines, "llmops_gpu_expected", "GPUs this host should have.", [({}, gpu_expected)])
    gauge(lines, "llmops_container_healthy", "1 when the container runs and is healthy.",
          [({"container": c["check"].split(" ", 1)[1]}, c["value"]) for c in checks
           if c["check"].startswith("container ")])
    gauge(lines, "llmops_http_response_seconds", "Response time of the HTTP check.",
          [({"check": c["check"].split(" ", 1)[1]}, c["value"] / 1000.0) for c in checks
           if c["check"].startswith("http ") and c["value"] is not None])
    gauge(lines, "llmops_health_last_run_timestamp_seconds", "End of the last health check.", [({}, now.timestamp())])
    return "\n".join(lines) + "\n"
