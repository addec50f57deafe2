"""Redis backups: a fresh RDB snapshot (``BGSAVE``) copied out of the server, or streamed over the
replication protocol (``redis-cli --rdb -``), checked with ``redis-check-rdb``, plus the keyspace
fingerprint a restore is verified against.

Tools run through ``ExecTarget`` (by default inside the server's container, whose ``redis-cli``
and ``redis-check-rdb`` match the server). The password travels only in ``REDISCLI_AUTH``
(passed to ``docker exec`` by name), never on a command line. ``redis-cli`` exits 0 even when
the server answers with an error, so replies are read with ``--json`` and ``error:`` replies are
turned into ``RedisError``.

The artefact goes through the shared ``run_pipeline`` (``cat dump.rdb`` or ``redis-cli --rdb -``
| zstd | sha256 | file) and is verified by streaming it back through ``decompress_to`` (which
checks its sha256) into ``redis-check-rdb``.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import secrets
import shutil
import time

from ansible.module_utils.llmops_backupset import isoformat, run_times, utc
from ansible.module_utils.llmops_exec import ExecError
from ansible.module_utils.llmops_pipeline import PipelineError, decompress_to, run_pipeline

AUTH_ENV = "REDISCLI_AUTH"
ARTEFACT = "dump.rdb.zst"
SCAN_COUNT = 5000
TYPE_BATCH = 20000
_AUTH_ERRORS = ("NOAUTH", "WRONGPASS", "invalid password", "invalid username-password")


class RedisError(Exception):
    """A Redis backup step failed; the message says which and why."""


def _env(password):
    return {AUTH_ENV: password} if password else {}


def cli_argv(conn, *args, db=None, fmt="--json"):
    """``redis-cli`` argv for ``conn`` (dict: host, port; none = the server's default inside its container)."""
    conn = conn or {}
    argv = ["redis-cli"]
    if conn.get("host"):
        argv += ["-h", conn["host"], "-p", str(int(conn.get("port") or 6379))]
    if db is not None:
        argv += ["-n", str(int(db))]
    if fmt:
        argv.append(fmt)
    return argv + [str(a) for a in args]


def _check(text, what):
    """Raise ``RedisError`` for an ``error:`` reply of ``redis-cli --json``; return the text otherwise."""
    stripped = text.strip()
    if stripped.startswith("error:"):
        message = stripped[len("error:"):].strip()
        try:
            message = json.loads(message)
        except ValueError:
            pass
        if any(marker in message for marker in _AUTH_ERRORS):
            raise RedisError("authentication to Redis failed (wrong or missing password): %s" % message)
        raise RedisError("%s failed: %s" % (what, message))
    return text


def command_text(target, conn, *args, password=None, db=None, timeout=120, fmt="--json", stdin=None):
    """Run one ``redis-cli`` command (or the commands on ``stdin``); return its checked output text."""
    try:
        out = target.text(cli_argv(conn, *args, db=db, fmt=fmt), env=_env(password), timeout=timeout, stdin=stdin)
    except ExecError as exc:
        raise RedisError(str(exc)) from exc
    return _check(out, " ".join(str(a) for a in args[:2]) or "redis-cli")


def command(target, conn, *args, password=None, db=None, timeout=120):
    """Run one command and return its reply decoded from ``redis-cli --json``."""
    text = command_text(target, conn, *args, password=password, db=db, timeout=timeout).strip()
    try:
        return json.loads(text)
    except ValueError:
        return text


def info(target, conn, section, password=None):
    """``INFO <section>`` as a dict (values kept as strings)."""
    text = command_text(target, conn, "INFO", section, password=password)
    if text.strip() and not text.lstrip().startswith("#"):
        # redis-cli --json prints an error reply to INFO bare, without its "error:" prefix
        _check("error:" + json.dumps(text.strip()), "INFO %s" % section)
    result = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition(":")
        if sep and not key.startswith("#"):
            result[key] = value
    return result


def keyspace(target, conn, password=None):
    """``{db_number: {"keys": n, "expires": n}}`` from ``INFO keyspace``."""
    result = {}
    for key, value in info(target, conn, "keyspace", password).items():
        if key.startswith("db") and key[2:].isdigit():
            fields = dict(item.split("=", 1) for item in value.split(",") if "=" in item)
            result[int(key[2:])] = {"keys": int(fields.get("keys", 0)), "expires": int(fields.get("expires", 0))}
    return result


def server_info(target, conn, password=None):
    """Version, persistence state and keyspace of the server (also what check mode reports)."""
    server = info(target, conn, "server", password)
    persistence = info(target, conn, "persistence", password)
    return {
        "redis_version": server.get("redis_version"),
        "aof_enabled": persistence.get("aof_enabled") == "1",
        "rdb_bgsave_in_progress": persistence.get("rdb_bgsave_in_progress") == "1",
        "rdb_last_bgsave_status": persistence.get("rdb_last_bgsave_status"),
        "rdb_last_save_time": int(persistence.get("rdb_last_save_time") or 0),
        "keyspace": {str(db): v for db, v in sorted(keyspace(target, conn, password).items())},
    }


def config_get(target, conn, name, password=None):
    """``CONFIG GET name``, or None where CONFIG is not allowed (renamed, ACL) or unknown."""
    try:
        reply = command(target, conn, "CONFIG", "GET", name, password=password)
    except RedisError as exc:
        if "authentication to Redis failed" in str(exc):
            raise
        return None
    if isinstance(reply, dict):
        return reply.get(name)
    if isinstance(reply, list) and len(reply) == 2:
        return reply[1]
    return None


def scan_keys(target, conn, db, password=None):
    """Every key of ``db`` (``SCAN``, never ``KEYS``) in Redis' quoted form, which is binary-safe."""
    keys = set()
    cursor = "0"
    while True:
        reply = json.loads(command_text(target, conn, "SCAN", cursor, "COUNT", SCAN_COUNT, password=password,
                                        db=db, fmt="--quoted-json"))
        cursor, batch = str(reply[0]), reply[1]
        keys.update(batch)
        if cursor == "0":
            return sorted(keys)


def key_types(target, conn, db, keys, password=None):
    """The ``TYPE`` of each of ``keys`` (quoted form), pipelined on one ``redis-cli`` stdin per batch."""
    types = []
    for start in range(0, len(keys), TYPE_BATCH):
        batch = keys[start:start + TYPE_BATCH]
        script = "".join('TYPE "%s"\n' % key for key in batch).encode("utf-8")
        out = command_text(target, conn, password=password, db=db, stdin=script).splitlines()
        if len(out) != len(batch):
            raise RedisError("TYPE of %d keys of db %s returned %d replies" % (len(batch), db, len(out)))
        types += [json.loads(_check(line, "TYPE")) for line in out]
    return types


def fingerprint(target, conn, password=None):
    """``{db: {"keys": n, "sha256": "..."}}`` for every non-empty database.

    ``keys`` comes from ``INFO keyspace``; ``sha256`` is computed over the sorted lines
    ``<quoted key name>\\t<type>`` gathered with ``SCAN`` and ``TYPE``. A restored server holding
    the same keys with the same types gives the same fingerprint.
    """
    result = {}
    for db, counts in sorted(keyspace(target, conn, password).items()):
        keys = scan_keys(target, conn, db, password)
        types = key_types(target, conn, db, keys, password)
        digest = hashlib.sha256()
        for key, kind in zip(keys, types):
            digest.update(("%s\t%s\n" % (key, kind)).encode("utf-8"))
        result[str(db)] = {"keys": counts["keys"], "sha256": digest.hexdigest()}
    return result


def _persistence(target, conn, password):
    values = info(target, conn, "persistence", password)
    return {
        "in_progress": values.get("rdb_bgsave_in_progress") == "1",
        "saves": int(values.get("rdb_saves") or 0),
        "status": values.get("rdb_last_bgsave_status"),
        "lastsave": int(values.get("rdb_last_save_time") or 0),
    }


def _wait_idle(target, conn, password, deadline, poll):
    """Wait until no background save runs; return the persistence state and whether one ran."""
    waited = False
    while True:
        state = _persistence(target, conn, password)
        if not state["in_progress"]:
            return state, waited
        waited = True
        if time.monotonic() > deadline:
            raise RedisError("a background save still runs after the wait timeout; try again later or raise "
                             "wait_timeout")
        time.sleep(poll)


def bgsave(target, conn, password=None, wait_timeout=300, poll=0.2):
    """Start our own ``BGSAVE`` and wait until it has finished successfully; return what happened.

    A save already running (ours cannot start then) is waited for first, then ours is started.
    ``BGSAVE SCHEDULE`` lets the save start after an AOF rewrite. Finished means: no save in
    progress, ``rdb_saves`` grown (or ``LASTSAVE`` changed) since ours was started, and
    ``rdb_last_bgsave_status:ok``.
    """
    deadline = time.monotonic() + wait_timeout
    waited_for_other = False
    while True:
        before, waited = _wait_idle(target, conn, password, deadline, poll)
        waited_for_other = waited_for_other or waited
        lastsave0 = int(command(target, conn, "LASTSAVE", password=password))
        try:
            reply = command(target, conn, "BGSAVE", "SCHEDULE", password=password)
            break
        except RedisError as exc:
            if "already in progress" not in str(exc):
                raise
            waited_for_other = True
    while True:
        state = _persistence(target, conn, password)
        lastsave = int(command(target, conn, "LASTSAVE", password=password))
        if not state["in_progress"] and (state["saves"] > before["saves"] or lastsave > lastsave0):
            if state["status"] != "ok":
                raise RedisError("BGSAVE failed (rdb_last_bgsave_status:%s); see the server's log" % state["status"])
            return {"reply": reply, "lastsave": lastsave, "waited_for_other_save": waited_for_other}
        if time.monotonic() > deadline:
            raise RedisError("BGSAVE did not finish within %s s (wait_timeout)" % wait_timeout)
        time.sleep(poll)


def _iso_epoch(seconds):
    return isoformat(datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc))


def check_rdb(target, artefact, sha256, timeout=None):
    """Stream ``artefact`` (sha256 checked) into a temp file at ``target`` and run ``redis-check-rdb`` on it.

    At a container the temp file lives in its ``/tmp``; on the host next to the artefact. Returns
    ``{"ok": True, "keys_read": n, "where": ...}``; raises ``RedisError`` when the check fails.
    Returns ``{"ok": None, ...}`` (not run) when the host has no ``redis-check-rdb``.
    """
    if not target.container and not shutil.which("redis-check-rdb"):
        return {"ok": None, "where": target.describe(), "reason": "redis-check-rdb is not installed on this host"}
    if target.container:
        scratch = "/tmp/llmops-check-%s.rdb" % secrets.token_hex(6)  # noqa: S108 - in the container, removed after
    else:
        scratch = os.path.join(os.path.dirname(artefact), ".check-%s.rdb" % secrets.token_hex(6))
    script = 'cat > "$0" && redis-check-rdb "$0"; rc=$?; rm -f "$0"; exit $rc'
    try:
        result = decompress_to(artefact, target.argv(["sh", "-c", script, scratch], interactive=True),
                               expected_sha256=sha256, timeout=timeout, consumer_name="redis-check-rdb")
    except PipelineError as exc:
        raise RedisError("redis-check-rdb rejected %s: %s" % (artefact, exc)) from exc
    output = "".join(s.stderr_tail for s in result.stages if s.name == "redis-check-rdb")
    if "RDB looks OK" not in output:
        raise RedisError("redis-check-rdb did not confirm %s: %s" % (artefact, output[-500:]))
    match = re.search(r"(\d+) keys read", output)
    return {"ok": True, "where": target.describe(), "keys_read": int(match.group(1)) if match else None}


def backup(target, conn, dest_dir, password=None, method="bgsave", rdb_dir="/data", rdb_filename="dump.rdb",
           wait_timeout=300, zstd_level=3, zstd_threads=0, timeout=None):
    """Take an RDB snapshot into ``dest_dir/dump.rdb.zst``, check it; return the manifest entry.

    ``bgsave``: a fresh ``BGSAVE`` and a copy of the server's RDB file (``dir``/``dbfilename`` from
    ``CONFIG GET`` when allowed, else ``rdb_dir``/``rdb_filename``). ``rdb``: the snapshot streamed
    over the replication protocol (``redis-cli --rdb -``), for servers whose files are out of reach.
    The fingerprint is taken before and after the snapshot; ``fingerprint_stable`` says whether
    the keyspace changed meanwhile (then a restore may differ slightly from it).
    """
    if method not in ("bgsave", "rdb"):
        raise RedisError("method must be bgsave or rdb, got %r" % (method,))
    started = utc()
    t0 = time.monotonic()
    before = server_info(target, conn, password)
    fp_before = fingerprint(target, conn, password)
    dest = os.path.join(dest_dir, ARTEFACT)
    env = _env(password)
    if method == "bgsave":
        saved = bgsave(target, conn, password, wait_timeout=wait_timeout)
        directory = config_get(target, conn, "dir", password) or rdb_dir
        filename = config_get(target, conn, "dbfilename", password) or rdb_filename
        source = "%s/%s" % (directory.rstrip("/"), filename)
        result = run_pipeline(target.argv(["cat", source]), dest, zstd_level=zstd_level, zstd_threads=zstd_threads,
                              timeout=timeout, source_name="cat %s" % source)
    else:
        saved = None
        source = "replication (redis-cli --rdb)"
        result = run_pipeline(target.argv(cli_argv(conn, "--rdb", "-", fmt=None), env_names=env.keys()), dest,
                              env=env, zstd_level=zstd_level, zstd_threads=zstd_threads, timeout=timeout,
                              source_name="redis-cli --rdb")
    fp_after = fingerprint(target, conn, password)
    checked = check_rdb(target, dest, result.sha256, timeout=timeout)
    try:
        tool_version = target.text(["redis-cli", "--version"]).strip()
    except ExecError:
        tool_version = None
    return {
        "status": "success",
        "type": "redis",
        "backup_type": "full",
        "tool": "redis-cli BGSAVE + cat" if method == "bgsave" else "redis-cli --rdb",
        "tool_version": tool_version,
        "server_version": before["redis_version"],
        "redis_version": before["redis_version"],
        "method": method,
        **run_times(started, t0),
        "bytes": result.bytes_out,
        "bytes_raw": result.bytes_in,
        "files": [{"path": dest, "sha256": result.sha256, "size": result.bytes_out}],
        "rdb_source": source,
        "lastsave": _iso_epoch(saved["lastsave"]) if saved else None,
        "bgsave": saved,
        "aof_enabled": before["aof_enabled"],
        "rdb_check": checked,
        "fingerprint": fp_after,
        "fingerprint_stable": fp_before == fp_after,
    }
