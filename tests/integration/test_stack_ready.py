"""stack_ready: containers' own health checks awaited every fraction of a second, not on Docker's schedule.

Real containers of a locally built image, with health checks 60 s apart: the module must report each ready
within seconds of its probe passing (while Docker still says `starting`), and name every container that stops or
never passes, with its log.
"""

from __future__ import annotations

import subprocess
import uuid

import pytest

from tests.conftest import run_module

pytestmark = pytest.mark.lab

IMAGE = "llmops-lab/debian:bookworm"


@pytest.fixture
def containers():
    names = []

    def start(command: str, health: str | None = None) -> str:
        name = f"llmops-test-ready-{uuid.uuid4().hex[:8]}"
        argv = ["docker", "run", "-d", "--network", "none", "--name", name]
        if health:
            argv += ["--health-cmd", health, "--health-interval", "60s", "--health-start-period", "60s"]
        subprocess.run(argv + [IMAGE, "sh", "-c", command], check=True, capture_output=True)
        names.append(name)
        return name

    yield start
    subprocess.run(["docker", "rm", "-f", *names], capture_output=True, check=False)


def docker_health(name: str) -> str:
    return subprocess.run(["docker", "inspect", "-f", "{{.State.Health.Status}}", name], capture_output=True,
                          text=True, check=True).stdout.strip()


def test_each_container_is_ready_when_its_own_probe_passes_not_at_dockers_next_check(containers):
    slow = containers("sleep 4; touch /tmp/ready; exec sleep 300", health="test -f /tmp/ready")
    quick = containers("touch /tmp/ready; exec sleep 300", health="test -f /tmp/ready")
    plain = containers("exec sleep 300")

    result = run_module("stack_ready", {"containers": [slow, quick, plain], "timeout": 60})

    assert not result.get("failed"), result.get("msg")
    seconds = result["seconds"]
    assert set(seconds) == {slow, quick, plain}
    # awaited, all together: the slow one's probe passes after its 4 s sleep (the module starts a second or two
    # after the containers), long before Docker's first check at 60 s; the others at once
    assert 20 > seconds[slow] >= 1.0, seconds
    assert seconds[quick] < 1.0 and seconds[plain] < 1.0, seconds
    # Docker's own status is left alone: its first check is still a minute away
    assert docker_health(slow) == "starting"


def test_a_container_that_stops_or_never_passes_fails_the_wait_naming_each_with_its_log(containers):
    dies = containers("echo 'cannot open the data folder' >&2; sleep 1; exit 3", health="false")
    never = containers("echo 'still loading' >&2; exec sleep 300", health="test -f /tmp/never")
    fine = containers("touch /tmp/ready; exec sleep 300", health="test -f /tmp/ready")

    result = run_module("stack_ready", {"containers": [dies, never, fine], "timeout": 4, "interval": 0.5})

    assert result.get("failed"), result
    msg = result["msg"]
    assert f"container {dies} stopped while starting" in msg and "cannot open the data folder" in msg, msg
    assert f"container {never} was not ready within 4 s" in msg and "still loading" in msg, msg
    assert fine not in msg
    assert "docker logs" in msg
