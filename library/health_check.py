#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, llmops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: health_check
short_description: The daily health check of the LLM host (system, services, data) with a short report
description:
  - Checks the 15-minute load per CPU core, memory in use, free space of each path in O(disks), the GPUs
    (O(gpu_count) against O(gpu_expected)), the default route, each container in O(containers) (running and
    healthy), the response time of each URL in O(http_checks), MariaDB (answers, binary log in ROW format,
    connections in use), the search engine's cluster health (green or yellow ok, red critical) and the age of
    the newest successful backup set under O(backup_root).
  - Each check is V(ok), V(warning), V(critical) or V(skipped) (with the reason); a failed check carries the
    incident grade of the operations manual (Critical, Major or Minor).
  - Writes Prometheus textfile metrics (every check's status, C(llmops_gpu_count), C(llmops_gpu_expected),
    C(llmops_container_healthy), response times) to O(metrics_path) atomically; the alert rules of the
    monitoring role read them.
  - The module never fails because a check failed; the caller decides from RV(status).
extends_documentation_fragment: [llmops]
attributes:
  check_mode:
    support: full
    description: Runs every check (they only read) but does not write the metrics.
options:
  host:
    description: The host's name in the report.
    type: str
    default: localhost
  cpu_warn_per_core:
    description: Warning when the 15-minute load average per core reaches this.
    type: float
    default: 1.0
  cpu_crit_per_core:
    description: Critical when the 15-minute load average per core reaches this.
    type: float
    default: 2.0
  memory_warn_pct:
    description: Warning when this percentage of memory is in use (MemTotal minus MemAvailable).
    type: float
    default: 90
  memory_crit_pct:
    description: Critical when this percentage of memory is in use.
    type: float
    default: 97
  disks:
    description: Paths whose file systems are checked for free space.
    type: list
    elements: path
    default: [/]
  disk_warn_free_pct:
    description: Warning under this percentage of free space.
    type: float
    default: 20
  disk_crit_free_pct:
    description: Critical under this percentage of free space.
    type: float
    default: 10
  gpu_count:
    description: GPUs that answered C(nvidia-smi), for example the length of C(ansible_facts.gpus) from C(gpu_facts).
    type: int
    default: 0
  gpu_expected:
    description: GPUs the host should have; V(0) skips the GPU check.
    type: int
    default: 0
  gpu_reason:
    description: Why no GPU was found (C(gpu_facts)' C(skipped_reason)), shown in the report.
    type: str
    default: ''
  containers:
    description: Containers that must be running and, where their image defines a health check, healthy.
    type: list
    elements: str
    default: []
  http_checks:
    description: HTTP GETs that must answer 2xx, timed.
    type: list
    elements: dict
    default: []
    suboptions:
      name:
        description: The check's name in the report and the metrics.
        type: str
        required: true
      url:
        description: The URL (no credentials in it; use an endpoint that needs none, such as a health endpoint).
        type: str
        required: true
      warn_ms:
        description:
          - Warning at or above this response time, in milliseconds.
        type: float
        default: 500
      crit_ms:
        description:
          - Critical at or above this response time, in milliseconds.
        type: float
        default: 3000
  network:
    description: Check that an IPv4 default route exists and its interface is up.
    type: bool
    default: true
  search_url:
    description:
      - The search engine's (Elasticsearch) REST endpoint; its C(_cluster/health) is checked with HTTP basic
        authentication as O(search_user). Omitted, the search check is left out.
    type: str
  search_user:
    description: The user the search check authenticates as.
    type: str
    default: elastic
  search_password:
    description: Its password, sent only in the C(Authorization) header (never in a URL, the report or the metrics).
    type: str
  mariadb_container:
    description:
      - The MariaDB container; the check runs the C(mariadb) client in it as C(root@localhost), which
        authenticates by unix socket, so no password is needed. Omitted, the MariaDB check is skipped.
    type: str
  mariadb_conn_warn_pct:
    description: Warning when this percentage of C(max_connections) is in use.
    type: float
    default: 80
  mariadb_conn_crit_pct:
    description: Critical when this percentage of C(max_connections) is in use.
    type: float
    default: 95
  backup_root:
    description: The backup root whose state file tells when the newest successful set ended. Omitted, skipped.
    type: path
  backup_max_age_hours:
    description: Critical when the newest successful backup set is older than this.
    type: float
    default: 26
  metrics_path:
    description: The C(.prom) file to write for the node_exporter textfile collector; no metrics when omitted.
    type: path
notes:
  - Seed 000's daily check also lists the error rate and user sessions of the API; those come from the API's
    own metrics and are not checked here.
"""

EXAMPLES = r"""
- name: Daily health check
  health_check:
    host: "{{ inventory_hostname }}"
    disks: [/, /srv/appdb, /srv/ai, /backup]
    gpu_count: "{{ gpus.ansible_facts.gpus | default([]) | length }}"
    gpu_expected: 4
    containers: [llmops-appdb-mariadb-1, llmops-ai-qdrant-1]
    http_checks:
      - {name: api, url: "http://127.0.0.1:8000/health", warn_ms: 300, crit_ms: 2000}
    mariadb_container: llmops-appdb-mariadb-1
    backup_root: /backup
    metrics_path: /var/lib/node_exporter/textfile_collector/llmops_health.prom
  register: health
"""

RETURN = r"""
status:
  description: The worst status of all checks (ok, warning or critical).
  returned: always
  type: str
  sample: warning
checks:
  description: Every check with its status, measured value, detail and, when it failed, its grade.
  returned: always
  type: list
  elements: dict
  sample: [{check: disk /backup, status: warning, value: 17.5, detail: "17.5 % free (350 GiB of 2000 GiB)",
            grade: Minor}]
report:
  description: The short report, one line per check, worst first.
  returned: always
  type: list
  elements: str
metrics_path:
  description: The metrics file written (null in check mode or without O(metrics_path)).
  returned: always
  type: str
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.llmops_backupset import write_file_atomic
from ansible.module_utils.llmops_exec import ExecError, ExecTarget
from ansible.module_utils.llmops_health import (
    check_backup,
    check_container,
    check_cpu,
    check_disk,
    check_gpu,
    check_http,
    check_mariadb,
    check_memory,
    check_network,
    container_states,
    grade,
    metrics,
    overall,
    parse_meminfo,
    report_lines,
    result,
    search_health,
)
from ansible.module_utils.llmops_mariadb import query, server_info


def _read(path):
    with open(path) as handle:
        return handle.read()


def mariadb(p):
    if not p["mariadb_container"]:
        return result("mariadb", "skipped", None, "no mariadb_container given")
    target, conn = ExecTarget(p["mariadb_container"]), {"user": "root"}
    try:
        info = server_info(target, conn, timeout=30)
        rows = query(target, conn, "SHOW GLOBAL STATUS WHERE Variable_name IN ('Uptime', 'Threads_connected');"
                                   "SHOW GLOBAL VARIABLES LIKE 'max_connections';", timeout=30)
    except ExecError as exc:
        return result("mariadb", "critical", None, "MariaDB does not answer: %s" % exc)
    return check_mariadb(rows, info, p["mariadb_conn_warn_pct"], p["mariadb_conn_crit_pct"])


def run_checks(p):
    checks = [
        check_cpu(_read("/proc/loadavg"), os.cpu_count() or 1, p["cpu_warn_per_core"], p["cpu_crit_per_core"]),
        check_memory(parse_meminfo(_read("/proc/meminfo")), p["memory_warn_pct"], p["memory_crit_pct"]),
    ]
    checks += [check_disk(path, p["disk_warn_free_pct"], p["disk_crit_free_pct"]) for path in p["disks"]]
    checks.append(check_gpu(p["gpu_count"], p["gpu_expected"], p["gpu_reason"]))
    if p["network"]:
        checks.append(check_network(_read("/proc/net/route")))
    states = container_states(p["containers"])
    checks += [check_container(name, states[name]) for name in p["containers"]]
    checks += [check_http(h["name"], h["url"], h["warn_ms"], h["crit_ms"]) for h in p["http_checks"]]
    checks.append(mariadb(p))
    if p["search_url"]:
        checks.append(search_health(p["search_url"], p["search_user"], p["search_password"]))
    checks.append(check_backup(p["backup_root"], p["backup_max_age_hours"]) if p["backup_root"]
                  else result("backup", "skipped", None, "no backup_root given"))
    for c in checks:
        kind = c["check"].split(" ", 1)[0]
        c["grade"] = grade(kind, c["status"])
    return checks


def main():
    module = AnsibleModule(
        argument_spec=dict(
            host=dict(type="str", default="localhost"),
            cpu_warn_per_core=dict(type="float", default=1.0),
            cpu_crit_per_core=dict(type="float", default=2.0),
            memory_warn_pct=dict(type="float", default=90),
            memory_crit_pct=dict(type="float", default=97),
            disks=dict(type="list", elements="path", default=["/"]),
            disk_warn_free_pct=dict(type="float", default=20),
            disk_crit_free_pct=dict(type="float", default=10),
            gpu_count=dict(type="int", default=0),
            gpu_expected=dict(type="int", default=0),
            gpu_reason=dict(type="str", default=""),
            containers=dict(type="list", elements="str", default=[]),
            http_checks=dict(type="list", elements="dict", default=[], options=dict(
                name=dict(type="str", required=True),
                url=dict(type="str", required=True),
                warn_ms=dict(type="float", default=500),
                crit_ms=dict(type="float", default=3000),
            )),
            network=dict(type="bool", default=True),
            search_url=dict(type="str"),
            search_user=dict(type="str", default="elastic"),
            search_password=dict(type="str", no_log=True),
            mariadb_container=dict(type="str"),
            mariadb_conn_warn_pct=dict(type="float", default=80),
            mariadb_conn_crit_pct=dict(type="float", default=95),
            backup_root=dict(type="path"),
            backup_max_age_hours=dict(type="float", default=26),
            metrics_path=dict(type="path"),
        ),
        supports_check_mode=True,
    )
    p = module.params
    try:
        checks = run_checks(p)
    except (OSError, ValueError) as exc:
        module.fail_json(msg="the health check could not run: %s" % exc)
    written = None
    if p["metrics_path"] and not module.check_mode:
        try:
            os.makedirs(os.path.dirname(p["metrics_path"]), exist_ok=True)
            write_file_atomic(p["metrics_path"], metrics(checks, p["gpu_count"], p["gpu_expected"]).encode("utf-8"),
                              mode=0o644)
        except OSError as exc:
            module.fail_json(msg="cannot write the health metrics to %s: %s" % (p["metrics_path"], exc))
        written = p["metrics_path"]
    module.exit_json(changed=False, status=overall(checks), checks=checks, report=report_lines(checks, p["host"]),
                     metrics_path=written)


if __name__ == "__main__":
    main()
