"""Fault matrix, time (issue 13, item 12): set names and target_time are UTC; a target_time given with another
offset is converted, not misread, also where a tool reads times in its own local zone (mariadb-binlog's
--stop-datetime and its event headers follow TZ: the replay pins TZ=UTC, whatever the container's TZ)."""

from __future__ import annotations

import datetime
import re
import subprocess

import ansible.module_utils.llmops_mariadb as mariadb
import pytest
from ansible.module_utils.llmops_backupset import isoformat, parse_time, set_id_for
from ansible.module_utils.llmops_exec import ExecTarget

CONTAINER = "llmops-appdb-mariadb-1"
SEOUL = datetime.timezone(datetime.timedelta(hours=9))


@pytest.mark.parametrize(("given", "utc"), [
    ("2026-11-22T23:03:00+09:00", "2026-11-22T14:03:00Z"),
    ("2026-11-22T09:03:00-05:00", "2026-11-22T14:03:00Z"),
    ("2026-11-22T14:03:00Z", "2026-11-22T14:03:00Z"),
    ("2026-11-22T14:03:00", "2026-11-22T14:03:00Z"),  # no offset: UTC, as documented
])
def test_a_target_time_with_an_offset_is_converted(given, utc):
    assert isoformat(parse_time(given)) == utc


def test_set_names_are_utc_whatever_the_callers_zone():
    seoul_morning = datetime.datetime(2026, 12, 1, 11, 0, 0, tzinfo=SEOUL)
    assert set_id_for("llmops", seoul_morning) == "llmops_20261201_020000"


class Stop(Exception):
    pass


@pytest.mark.lab
def test_the_replay_runs_mariadb_binlog_in_utc(lab, tmp_path, monkeypatch):
    """The hazard is real (the tool follows TZ), and the replay pins TZ=UTC for it."""
    logs = lab.exec("mariadb", "sh", "-c", "ls /var/lib/mysql/ | grep -E 'bin\\.[0-9]+$' | head -1").stdout
    log = "/var/lib/mysql/" + logs.decode().strip()
    assert log != "/var/lib/mysql/", "the lab's MariaDB has no binary log"

    def first_event(tz):
        out = subprocess.run(["docker", "exec", "-e", f"TZ={tz}", CONTAINER, "mariadb-binlog", "--stop-position=500",
                              log], capture_output=True, text=True, check=True).stdout
        return re.search(r"^#(\d{6} +\d+:\d\d:\d\d) server id", out, re.M).group(1)

    def parsed(text):
        return datetime.datetime.strptime(" ".join(text.split()), "%y%m%d %H:%M:%S")

    assert parsed(first_event("Asia/Seoul")) - parsed(first_event("UTC")) == datetime.timedelta(hours=9)

    seen = {}

    def capture(argv, dest, **kwargs):
        seen.update(argv=argv, env=kwargs.get("env") or {})
        raise Stop

    monkeypatch.setattr(mariadb, "run_pipeline", capture)
    with pytest.raises(Stop):
        mariadb.replay_binlogs(ExecTarget(container=CONTAINER), {}, [], 4, parse_time("2026-11-22T23:03:00+09:00"),
                               str(tmp_path))
    argv = seen["argv"]
    assert argv[argv.index("exec"):argv.index(CONTAINER)].count("TZ") == 1 and seen["env"] == {"TZ": "UTC"}
    assert "--stop-datetime=2026-11-22 14:03:00" in argv
