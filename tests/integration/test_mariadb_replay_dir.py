"""Issue 13, item c: the binlog replay folder inside the MariaDB container has an unguessable
name, is created 0700 (never reusing a planted one) and is removed afterwards. Needs the lab."""

from __future__ import annotations

import datetime
import re
import subprocess

import pytest
from ansible.module_utils.llmops_common import LlmopsError
from ansible.module_utils.llmops_exec import ExecError, ExecTarget
from ansible.module_utils.llmops_mariadb import replay_binlogs

pytestmark = pytest.mark.lab

CONTAINER = "llmops-appdb-mariadb-1"


class Watching(ExecTarget):
    """The lab's MariaDB container; after the folder is made, records its mode and owner as the container sees it."""

    def __init__(self):
        super().__init__(container=CONTAINER)
        self.made = []

    def run(self, tool_argv, *args, **kwargs):
        out = super().run(tool_argv, *args, **kwargs)
        if tool_argv[:1] == ["mkdir"]:
            path = tool_argv[-1]
            self.made.append((tool_argv, path, super().run(["stat", "-c", "%a %U", path]).decode().strip()))
        return out


def exists(path):
    return subprocess.run(["docker", "exec", CONTAINER, "test", "-e", path]).returncode == 0


@pytest.mark.lab
def test_replay_folder_is_private_unguessable_and_removed(tmp_path):
    target = Watching()
    stop = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    with pytest.raises(LlmopsError, match="provide the log file"):
        replay_binlogs(target, {}, [], 4, stop, str(tmp_path))  # no logs: the decoder fails after the folder is made
    (argv, path, mode_owner), = target.made
    assert argv[:3] == ["mkdir", "-m", "0700"] and "-p" not in argv
    assert re.fullmatch(r"/tmp/llmops-replay-[0-9a-f]{32}", path)  # noqa: S108 - inside the container
    assert mode_owner.split()[0] == "700"
    assert not exists(path)


@pytest.mark.lab
def test_a_planted_folder_is_not_used_nor_removed(tmp_path, monkeypatch):
    import ansible.module_utils.llmops_mariadb as mariadb

    planted = "/tmp/llmops-replay-" + "ab" * 16  # noqa: S108 - planted inside the container
    subprocess.run(["docker", "exec", CONTAINER, "mkdir", "-p", planted], check=True)
    try:
        monkeypatch.setattr(mariadb.secrets, "token_hex", lambda n: "ab" * n)
        stop = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
        with pytest.raises(ExecError, match="mkdir"):
            replay_binlogs(ExecTarget(container=CONTAINER), {}, [], 4, stop, str(tmp_path))
        assert exists(planted)  # not removed: it was not ours
    finally:
        subprocess.run(["docker", "exec", CONTAINER, "rm", "-rf", planted])
