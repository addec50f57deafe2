#!/usr/bin/env python3
"""Draw the RTO / RPO chart of the drill and rebuild reports in a folder (``make dr-rebuild`` runs it on the
rebuild reports that playbooks/rebuild.yml copies to .state/rebuild/): FOLDER/rto_rpo.png, the chart a drill
draws where matplotlib is installed (module_utils/llmops_drill.py), here on the machine that ran the playbook.

    scripts/rto_chart.py .state/rebuild
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import ansible.module_utils  # noqa: E402 - the bundle's module_utils are imported as Ansible's

ansible.module_utils.__path__.append(str(REPO / "module_utils"))
from ansible.module_utils.llmops_drill import chart, history  # noqa: E402


def main(argv):
    if len(argv) != 2:
        sys.exit("usage: scripts/rto_chart.py FOLDER (of <id>/report.json files)")
    folder = argv[1]
    reports = history(folder)
    if not reports:
        sys.exit(f"rto_chart: no <id>/report.json under {folder}: run playbooks/rebuild.yml (or a drill) first")
    dest = os.path.join(folder, "rto_rpo.png")
    skipped = chart(reports, dest)
    if skipped:
        sys.exit(f"rto_chart: {skipped}")
    last = reports[-1]
    verdict = "passed" if last.get("passed") else "FAILED"
    print(f"rto_chart: {dest} ({len(reports)} report(s); the last: {last['id']}, RTO {last['rto_seconds']} s, "
          f"RPO {last['rpo_seconds']} s, {verdict})")


if __name__ == "__main__":
    main(sys.argv)
