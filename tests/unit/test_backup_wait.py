"""backup_wait (roles/backup/action_plugins): the component jobs awaited without taking the host's CPUs.

A real `ansible-playbook` on the local connection starts three async jobs (one slow, one quick, one failing) and
waits for them with the action plugin. Each job's result must come back as async_status reads it, and async_status,
a module run of about 0.3 CPU-seconds, must run once per job, not at every poll: the polls are one shell command.
"""

from __future__ import annotations

import json
import subprocess

from tests.conftest import REPO, VENV_BIN, ansible_env

PLAY = """
- hosts: localhost
  gather_facts: false
  tasks:
    - {name: slow, ansible.builtin.command: sleep 3, async: 60, poll: 0, register: slow}
    - {name: quick, ansible.builtin.command: "true", async: 60, poll: 0, register: quick}
    - name: fails
      ansible.builtin.command: sh -c 'echo broken >&2; exit 3'
      async: 60
      poll: 0
      register: fails
    - name: wait
      backup_wait:
        jobs: {slow: "{{ slow }}", quick: "{{ quick }}", fails: "{{ fails }}"}
        paths: {}
        interval: 15
        timeout: 60
      register: waited
    - {name: keep, ansible.builtin.copy: {content: "{{ waited | to_json }}", dest: "{{ out }}"}}
"""


def test_each_job_is_read_once_when_it_has_ended_and_its_file_removed(tmp_path):
    play = tmp_path / "play.yml"
    play.write_text(PLAY)
    async_dir = tmp_path / "async"
    out = tmp_path / "waited.json"
    env = ansible_env(ANSIBLE_ACTION_PLUGINS=str(REPO / "roles" / "backup" / "action_plugins"),
                      ANSIBLE_ASYNC_DIR=str(async_dir))
    proc = subprocess.run([str(VENV_BIN / "ansible-playbook"), "-i", "localhost,", "-c", "local", "-vvv",
                           "-e", f"ansible_python_interpreter={VENV_BIN / 'python'}", "-e", f"out={out}", str(play)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]

    components = json.loads(out.read_text())["components"]
    assert components["slow"]["rc"] == 0 and not components["slow"].get("failed")
    assert components["quick"]["rc"] == 0 and not components["quick"].get("failed")
    assert components["fails"]["failed"] and components["fails"]["rc"] == 3
    assert "broken" in components["fails"]["stderr"]

    # the slow job was polled several times, by a shell command; async_status ran once per job
    polls = proc.stdout.count("head -c 48")
    status_runs = [line for line in proc.stdout.splitlines() if line.startswith("<localhost> PUT ")
                   and "AnsiballZ_async_status" in line]
    assert polls >= 3, polls
    assert len(status_runs) == 3, status_runs
    # what async_status mode=cleanup would have removed is gone
    assert list(async_dir.iterdir()) == []
