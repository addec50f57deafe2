"""The probe stack_ready runs: a container's own health check, in the form Docker runs it."""

from __future__ import annotations

import pytest
from ansible.module_utils.llmops_exec import ExecError, health_probe_argv


@pytest.mark.parametrize(("test", "argv"), [
    (["CMD-SHELL", "pg_isready -h 127.0.0.1 -q"], ["/bin/sh", "-c", "pg_isready -h 127.0.0.1 -q"]),
    (["CMD", "bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/6333"], ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/6333"]),
    (["NONE"], None),
    (None, None),
    ([], None),
])
def test_the_probe_is_the_health_check_docker_would_run(test, argv):
    assert health_probe_argv(test) == argv


def test_an_unknown_health_check_form_is_refused():
    with pytest.raises(ExecError, match="unknown health check test"):
        health_probe_argv(["CMD-SHELL", "a", "b"])
