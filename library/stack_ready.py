#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, llmops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# ruff: noqa: E402 - Ansible modules put DOCUMENTATION/EXAMPLES/RETURN before the imports.

from __future__ import annotations

DOCUMENTATION = r"""
---
module: stack_ready
short_description: Await containers' own health checks, run every fraction of a second rather than on Docker's schedule
description:
  - Runs each container's own health check (its C(HEALTHCHECK) or Compose C(healthcheck.test), with C(docker exec))
    every O(interval) seconds, all containers at once, until it passes; a container without a health check is
    ready when it runs.
  - Docker runs a health check on its own schedule (every 10 to 30 s in this stack's Compose files), so a server
    that answers 2 s after its start is reported healthy after 10; C(docker compose up --wait) waits for that
    report. This module awaits the answer itself, with the probe Docker would run.
  - Docker's own health status is left as it is (it may still read C(starting)). The stack role uses this module
    for the drill's scratch stack (C(stack_await_probe)); deployments keep Compose's wait, so that C(docker ps) and
    the health check read C(healthy) when the play ends.
extends_documentation_fragment: [llmops]
attributes:
  check_mode:
    support: full
    description: Only reads (the health checks are probes), so it runs the same in check mode.
options:
  containers:
    description: The containers to await (names or ids).
    type: list
    elements: str
    required: true
  timeout:
    description: Fail when a container has not passed its health check within this many seconds.
    type: int
    default: 300
  interval:
    description: Seconds between two runs of a container's health check.
    type: float
    default: 0.25
"""

EXAMPLES = r"""
- name: Start the scratch project without Compose's wait
  community.docker.docker_compose_v2:
    project_src: /backup/.drill/stack/appdb
    state: present
  register: scratch

- name: Await every container's health check
  stack_ready:
    containers: "{{ scratch.containers | map(attribute='Name') | list }}"
    timeout: 300
"""

RETURN = r"""
seconds:
  description: Each container's seconds from the module's start until its health check passed (0 when Docker already
    reported it healthy).
  returned: success
  type: dict
  sample: {"llmops-drill-appdb-postgres-1": 1.9, "llmops-drill-appdb-mariadb-1": 4.2}
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.llmops_exec import ExecError, await_healthy


def main():
    module = AnsibleModule(
        argument_spec=dict(
            containers=dict(type="list", elements="str", required=True),
            timeout=dict(type="int", default=300),
            interval=dict(type="float", default=0.25),
        ),
        supports_check_mode=True,
    )
    p = module.params
    if p["interval"] <= 0 or p["timeout"] <= 0:
        module.fail_json(msg="interval and timeout must be above 0")
    try:
        seconds = await_healthy(p["containers"], timeout=p["timeout"], interval=p["interval"])
    except ExecError as exc:
        module.fail_json(msg="%s. Look at `docker logs <container>` for why, correct it, then run again" % exc)
    module.exit_json(changed=False, seconds=seconds)


if __name__ == "__main__":
    main()
