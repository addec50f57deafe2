"""Redis backups against the lab's real server: an RDB snapshot that a bare redis-server (a throw-away
container of the lab's image) loads with the same keys, types, values and TTLs as the source, whose
fingerprint (taken from the artefact, not from the live server) equals the recorded one; the scratch
folder it was taken in is gone; redis-check-rdb, check mode and a wrong password."""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import secrets
import stat
import subprocess
import time

import pytest
from ansible.module_utils.llmops_exec import ExecTarget
from ansible.module_utils.llmops_redis import FINGERPRINT_METHOD, bgsave, fingerprint, fingerprint_parts, summarize

from tests.conftest import run_module

pytestmark = pytest.mark.lab
IMAGE = "llmops-lab/redis:7.0"
REDIS = ExecTarget("llmops-appdb-redis-1")
TTL_TOLERANCE_MS = 60_000

# name suffix -> (command creating it, command reading it back)
KEYS = {
    "str": ('SET {k} "héllo ✓ 日本語"', "GET {k}"),
    "bin": ('SET {k} "\\x00\\xff\\r\\n binary"', "GET {k}"),
    "ttl": ('SET {k} "expires" EX 3600', "GET {k}"),
    "hash": ('HSET {k} field1 "välue" field2 2 "with space" x', "HGETALL {k}"),
    "list": ("RPUSH {k} a b c a", "LRANGE {k} 0 -1"),
    "set": ("SADD {k} x y z", "SMEMBERS {k}"),
    "zset": ("ZADD {k} 1.5 one 2 two -3 minus", "ZRANGE {k} 0 -1 WITHSCORES"),
    "stream": ("XADD {k} 1-1 sensor a temp 20.5", "XRANGE {k} - +"),
}


@pytest.fixture()
def own_keys(lab):
    """Keys of every type (one with a TTL) under this test's prefix in a database 11-15 of its own."""
    db = str(11 + secrets.randbelow(5))
    prefix = f"t_pgr_{secrets.token_hex(4)}:"
    script = "".join(create.format(k=f'"{prefix}{name}"') + "\n" for name, (create, _) in KEYS.items())
    script += f'XADD "{prefix}stream" 1-2 sensor b temp 21\nPEXPIRE "{prefix}hash" 7200000\n'
    cli(lab, db, script)
    yield db, prefix
    cli(lab, db, "".join(f'DEL "{prefix}{name}"\n' for name in KEYS))


def cli(lab, db, script, container=None):
    """Feed a redis-cli script (one command a line) to the lab's server (or a throw-away one, no password)."""
    if container is None:
        auth = {"REDISCLI_AUTH": lab.secret("redis_password")}
        out = lab.exec("redis", "redis-cli", "--quoted-json", "-n", db, env=auth, stdin=script.encode()).stdout
    else:
        out = subprocess.run(["docker", "exec", "-i", container, "redis-cli", "--quoted-json", "-n", db],
                             input=script.encode(), capture_output=True, check=True).stdout
    lines = out.decode().splitlines()
    assert not any(line.startswith("error:") for line in lines), lines
    return [json.loads(line) for line in lines]


def read_keys(lab, db, prefix, container=None):
    """{name: (type, value, pttl)} of the test's keys (sets sorted, as their order is arbitrary)."""
    script = "".join(f'TYPE "{prefix}{n}"\n{read.format(k=chr(34) + prefix + n + chr(34))}\nPTTL "{prefix}{n}"\n'
                     for n, (_, read) in KEYS.items())
    replies = cli(lab, db, script, container)
    result = {}
    for index, name in enumerate(KEYS):
        kind, value, pttl = replies[3 * index:3 * index + 3]
        result[name] = (kind, sorted(value) if kind == "set" else value, pttl)
    return result


def assert_same_keys(source, restored):
    for name, (kind, value, pttl) in source.items():
        r_kind, r_value, r_pttl = restored[name]
        assert (r_kind, r_value) == (kind, value), name
        if pttl < 0:
            assert r_pttl == pttl, name
        else:
            assert 0 < r_pttl <= pttl and pttl - r_pttl < TTL_TOLERANCE_MS, (name, pttl, r_pttl)


@contextlib.contextmanager
def throwaway_server(rdb=None, extra=()):
    """A throw-away redis-server of the lab's image (no AOF, no password, no network), on ``rdb`` if given."""
    name = f"test-pgr-{secrets.token_hex(4)}"
    subprocess.run(["docker", "create", "--name", name, "--network", "none", IMAGE, "redis-server", "--appendonly",
                    "no", "--dir", "/data", "--save", "", *extra], check=True, capture_output=True)
    try:
        if rdb is not None:
            subprocess.run(["docker", "cp", str(rdb), f"{name}:/data/dump.rdb"], check=True, capture_output=True)
        subprocess.run(["docker", "start", name], check=True, capture_output=True)
        for _ in range(100):
            proc = subprocess.run(["docker", "exec", name, "redis-cli", "INFO", "persistence"], capture_output=True,
                                  text=True)
            if proc.returncode == 0 and "loading:0" in proc.stdout:
                break
            time.sleep(0.2)
        else:
            logs = subprocess.run(["docker", "logs", name], capture_output=True, text=True)
            raise AssertionError(f"the throw-away server did not start: {logs.stdout[-2000:]}")
        yield name
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)


@contextlib.contextmanager
def bare_server(artefact, tmp_path):
    """A throw-away redis-server started on the decompressed RDB."""
    rdb = tmp_path / "dump.rdb"
    subprocess.run(["zstd", "-q", "-d", "-f", str(artefact), "-o", str(rdb)], check=True)
    os.chmod(rdb, 0o644)
    with throwaway_server(rdb) as name:
        yield name


def instant(text):
    """Seconds since the epoch of an ISO instant of the manifest (``...Z``, with or without milliseconds)."""
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def check_artefact(comp, dest):
    (entry,) = comp["files"]
    assert entry["path"] == str(dest / "dump.rdb.zst")
    assert stat.S_IMODE(os.stat(entry["path"]).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(dest).st_mode) == 0o700
    out = subprocess.run(["sha256sum", entry["path"]], capture_output=True, text=True, check=True).stdout
    assert out.split()[0] == entry["sha256"] and entry["size"] == os.path.getsize(entry["path"])
    assert os.listdir(dest) == ["dump.rdb.zst"]  # no temp or check file left behind
    assert comp["rdb_check"]["ok"] is True and comp["rdb_check"]["keys_read"] >= len(KEYS)
    return entry


@pytest.mark.parametrize("method", ["bgsave", "rdb"])
def test_snapshot_restores_on_bare_server(lab, own_keys, tmp_path, method):
    db, prefix = own_keys
    work = tmp_path / "set"
    dest = work / "redis"
    result = run_module("redis_backup", {"dest": str(dest), "password": "{{ redis_password }}", "method": method})
    assert not result.get("failed"), result.get("msg")
    comp = result["component"]
    assert (comp["status"], comp["type"], comp["backup_type"], comp["method"]) == ("success", "redis", "full", method)
    assert comp["redis_version"].startswith("7.0") and comp["aof_enabled"] is True
    assert "fingerprint_stable" not in comp
    if method == "bgsave":
        assert comp["rdb_source"] == "/data/dump.rdb" and comp["lastsave"]
        assert comp["bgsave"]["requested_ms"] <= comp["bgsave"]["finished_ms"]
        assert comp["save_point"] == comp["bgsave"]["requested"] and comp["bgsave"]["copy_attempts"] >= 1
    check_artefact(comp, dest)
    assert os.listdir(work) == ["redis"]  # the fingerprint's scratch folder is gone
    detail = comp["fingerprint_detail"]
    assert detail["method"] == FINGERPRINT_METHOD and detail["bucket_ms"] == 1000
    assert instant(comp["started"]) <= instant(comp["save_point"]) < instant(comp["ended"]) + 1
    assert summarize(detail) == comp["fingerprint"] and "llmops-lab/redis:7.0" in detail["source"]
    assert detail["seconds"] < comp["duration_s"]

    source_fp = fingerprint(REDIS, {}, lab.secret("redis_password"))
    assert comp["fingerprint"][db] == source_fp[db]  # this test's database is quiet
    assert comp["fingerprint"][db]["keys"] >= len(KEYS)
    source = read_keys(lab, db, prefix)
    assert source["ttl"][2] > 0 and source["hash"][2] > 0 and source["str"][2] == -1

    with bare_server(dest / "dump.rdb.zst", tmp_path) as name:
        # the same artefact loaded elsewhere gives the recorded fingerprint, whatever the lab did meanwhile
        loaded = fingerprint_parts(ExecTarget(name), {}, reference_ms=detail["reference_ms"])
        assert loaded["dbs"] == detail["dbs"] and summarize(loaded) == comp["fingerprint"]
        assert_same_keys(source, read_keys(lab, db, prefix, container=name))


def test_check_mode_writes_nothing(own_keys, tmp_path):
    dest = tmp_path / "redis"
    result = run_module("redis_backup", {"dest": str(dest), "password": "{{ redis_password }}"}, check_mode=True)
    assert not result.get("failed"), result.get("msg")
    assert result["changed"] is True and "would take" in result["msg"] and "component" not in result
    assert result["server"]["redis_version"].startswith("7.0") and own_keys[0] in result["server"]["keyspace"]
    assert not dest.exists()


def test_wrong_password_fails_clearly_without_file(lab, tmp_path):
    dest = tmp_path / "redis"
    wrong = f"wrong-{secrets.token_hex(8)}"
    result = run_module("redis_backup", {"dest": str(dest), "password": wrong})
    assert result.get("failed")
    assert "authentication" in result["msg"] and "password" in result["msg"]
    text = json.dumps(result)
    assert wrong not in text and lab.secret("redis_password") not in text
    assert not dest.exists()


def test_bgsave_waits_for_a_save_already_running():
    """A save someone else started is waited for, then ours runs and finishes successfully.

    On a throw-away server whose saves are slowed down (rdb-key-save-delay), so the first save
    surely still runs when ours is asked for; the lab's server is not touched.
    """
    with throwaway_server(extra=("--rdb-key-save-delay", "2000")) as name:
        subprocess.run(["docker", "exec", "-i", name, "redis-cli"], check=True, capture_output=True,
                       input="".join(f"SET k{i} {i}\n" for i in range(400)).encode())
        started = subprocess.run(["docker", "exec", name, "redis-cli", "BGSAVE"], capture_output=True, text=True)
        assert "started" in started.stdout
        saved = bgsave(ExecTarget(name), {}, wait_timeout=60)
        assert saved["waited_for_other_save"] is True and saved["reply"] == "Background saving started"
        state = subprocess.run(["docker", "exec", name, "redis-cli", "INFO", "persistence"], capture_output=True,
                               text=True).stdout
        assert "rdb_bgsave_in_progress:0" in state and "rdb_last_bgsave_status:ok" in state
        assert "rdb_saves:2" in state
