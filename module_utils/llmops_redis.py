"""Redis backups: a fresh RDB snapshot (``BGSAVE``) copied out of the server, or streamed over the
replication protocol (``redis-cli --rdb -``), checked with ``redis-check-rdb``, plus the fingerprint
of what the snapshot holds, which a restore is verified against.

Tools run through ``ExecTarget`` (by default inside the server's container, whose ``redis-cli``
and ``redis-check-rdb`` match the server). The password travels only in ``REDISCLI_AUTH``
(passed to ``docker exec`` by name), never on a command line. ``redis-cli`` exits 0 even when
the server answers with an error, so replies are read with ``--json`` and ``error:`` replies are
turned into ``RedisError``.

The artefact goes through the shared ``run_pipeline`` (``cat dump.rdb`` or ``redis-cli --rdb -``
| zstd | sha256 | file) and is verified by streaming it back through ``decompress_to`` (which
checks its sha256) into ``redis-check-rdb``.

The fingerprint describes the artefact, not the live server at another moment: the saved RDB is
unpacked next to the set and loaded by a throw-away ``redis-server`` of the server's own image
(``ScratchServer``: no network, no password), where one Lua script per database (``FINGERPRINT_LUA``)
walks every key with ``SCAN`` and hashes its name, type, absolute expiry and value. Only hex
digests and counts leave the script, so key names and values of any bytes (NUL, newlines, quotes,
invalid UTF-8) never have to be quoted or parsed. A restore runs the same script on the restored
server and compares (``compare_fingerprints``).

Keys with a TTL: a key that expires between the backup and a restore's verification is missing
there, legitimately. So the digests are kept per expiry bucket: keys without expiry in one part,
keys with an expiry in buckets by their absolute expiry time, relative to the save point ``R``
(bucket 0: before ``R + 1 s``; bucket ``i``: ``[R + 2^(i-1) s, R + 2^i s)``). A verification
compares the keys without expiry and every bucket that starts after its own time, i.e. every key
that cannot have expired yet, and reports how many keys it left out (those expiring within about
twice the time since the backup). The summary ``fingerprint`` (keys and digest per database) covers
every key the artefact held when it was fingerprinted.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import secrets
import shutil
import tempfile
import time

from ansible.module_utils.llmops_backupset import diff_fingerprints, isoformat, run_times, utc
from ansible.module_utils.llmops_common import LlmopsError
from ansible.module_utils.llmops_exec import ExecError, ScratchServer
from ansible.module_utils.llmops_pipeline import PipelineError, decompress_to, run_pipeline

AUTH_ENV = "REDISCLI_AUTH"
ARTEFACT = "dump.rdb.zst"
SCAN_COUNT = 1000
READ_CHUNK = 1000
BUCKET_MS = 1000
FINGERPRINT_METHOD = "redis-lua/1"
_AUTH_ERRORS = ("NOAUTH", "WRONGPASS", "invalid password", "invalid username-password")


class RedisError(LlmopsError):
    """A Redis backup step failed; the message says which and why."""


def _env(password):
    return {AUTH_ENV: password} if password else {}


def cli_argv(conn, *args, db=None, fmt="--json"):
    """``redis-cli`` argv for ``conn`` (dict: host, port, socket, user; none = the server's default inside its
    container). ``user`` is an ACL user: with it the password (``REDISCLI_AUTH``) is that user's."""
    conn = conn or {}
    argv = ["redis-cli"]
    if conn.get("host"):
        argv += ["-h", conn["host"], "-p", str(int(conn.get("port") or 6379))]
    elif conn.get("socket"):
        argv += ["-s", conn["socket"]]
    if conn.get("user"):
        argv += ["--user", conn["user"]]
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
            raise RedisError("authentication to Redis failed (wrong or missing password): %s; check that "
                             "redis_password (the vault) is the server's requirepass (its redis.conf), then run "
                             "again" % message)
        raise RedisError("%s failed: %s" % (what, message))
    return text


def command_text(target, conn, *args, password=None, db=None, timeout=120, fmt="--json", stdin=None, what=None):
    """Run one ``redis-cli`` command (or the commands on ``stdin``); return its checked output text.

    ``what`` names the command in errors (default: its first two words)."""
    try:
        out = target.text(cli_argv(conn, *args, db=db, fmt=fmt), env=_env(password), timeout=timeout, stdin=stdin)
    except ExecError as exc:
        raise RedisError(str(exc)) from exc
    return _check(out, what or " ".join(str(a) for a in args[:2]) or "redis-cli")


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


def wait_until_up(target, conn, password=None, timeout=300):
    """Return as soon as the server answers ``PING`` with ``PONG`` (every 0.2 s; not while it still loads its data
    and answers ``LOADING``), at most ``timeout`` s. A restore awaits this rather than the container's health check,
    which runs only every 10 s."""
    try:
        target.wait_ready(cli_argv(conn, "PING", fmt=None), timeout=timeout, env=_env(password),
                          ready=lambda out: out.strip() == b"PONG")
    except ExecError as exc:
        raise RedisError("Redis did not come up: %s" % exc) from exc


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


# One database's fingerprint, computed inside the server (Redis 7.0+: PEXPIRETIME, script flags).
# ARGV: reference instant R (ms), first bucket width (ms), SCAN COUNT, elements read per call.
# Per key: sha1(<len>:key <len>:type <absolute expiry ms or -1>:<value digest>), summed lane-wise
# (5 x 32 bit, so the order SCAN returns keys in does not matter) into the part the key's expiry
# belongs to. Value digests: strings sha1 of the bytes; lists, sorted sets (member and score, in
# rank order) and streams (ids, fields, values, then last id, entries added, max deleted id and the
# groups' name, last delivered id, entries read, pending count) a chained sha1 over chunks; hashes
# (field and value) and sets a lane-wise sum of the members' sha1 (their order is the encoding's);
# other (module) types the sha1 of DUMP. A key SCAN returns twice (possible while a table shrinks)
# would count twice: when the count differs from DBSIZE (or HLEN / SCARD) the pass is redone with
# a table of the keys seen. Returns {now ms, redone, keys without expiry, digest, then bucket,
# keys, digest for each bucket}: hex digests and counts only, no key name or value.
FINGERPRINT_LUA = r"""#!lua flags=no-writes
local ref, base, count, chunk = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
local M = 4294967296
local function lp(s) return #s .. ':' .. s end
local function zero() return {0, 0, 0, 0, 0} end
local function add(acc, h)
  for i = 1, 5 do acc[i] = (acc[i] + tonumber(string.sub(h, 8 * i - 7, 8 * i), 16)) % M end
end
local function hex(acc) return string.format('%08x%08x%08x%08x%08x', acc[1], acc[2], acc[3], acc[4], acc[5]) end
local function unordered(k, scan, whole, card, paired)
  local step = paired and 2 or 1
  local function sum(items, acc)
    for i = 1, #items, step do
      add(acc, redis.sha1hex(paired and (lp(items[i]) .. items[i + 1]) or items[i]))
    end
    return #items / step
  end
  local n, acc, cursor = 0, zero(), '0'
  repeat
    local r = redis.call(scan, k, cursor, 'COUNT', chunk)
    cursor = r[1]
    n = n + sum(r[2], acc)
  until cursor == '0'
  local size = redis.call(card, k)
  if n ~= size then acc = zero(); sum(redis.call(whole, k), acc) end
  return size .. ':' .. hex(acc)
end
local function chained(read)
  local h, n, from = '', 0, 0
  while true do
    local parts, got
    parts, from, got = read(from)
    if got == 0 then break end
    h = redis.sha1hex(h .. table.concat(parts)); n = n + got
  end
  return n .. ':' .. h
end
local function ranged(k, cmd, extra)
  return chained(function(from)
    local items = redis.call(cmd, k, from, from + chunk - 1, unpack(extra))
    local parts = {}
    for i = 1, #items do parts[i] = lp(items[i]) end
    return parts, from + chunk, #items
  end)
end
local function stream(k)
  local start = '-'
  local parts = {chained(function()
    local items = redis.call('XRANGE', k, start, '+', 'COUNT', chunk)
    local out = {}
    for _, e in ipairs(items) do
      out[#out + 1] = lp(e[1]) .. #e[2] .. ':'
      for _, x in ipairs(e[2]) do out[#out + 1] = lp(x) end
      start = '(' .. e[1]
    end
    return out, 0, #items
  end)}
  local info, meta = redis.call('XINFO', 'STREAM', k), {}
  for i = 1, #info, 2 do meta[info[i]] = info[i + 1] end
  for _, name in ipairs({'last-generated-id', 'entries-added', 'max-deleted-entry-id'}) do
    parts[#parts + 1] = lp(tostring(meta[name]))
  end
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', k)) do
    local f = {}
    for i = 1, #g, 2 do f[g[i]] = g[i + 1] end
    for _, name in ipairs({'name', 'last-delivered-id', 'entries-read', 'pending'}) do
      parts[#parts + 1] = lp(tostring(f[name]))
    end
  end
  return redis.sha1hex(table.concat(parts))
end
local function value(k, t)
  if t == 'string' then return redis.sha1hex(redis.call('GET', k)) end
  if t == 'hash' then return unordered(k, 'HSCAN', 'HGETALL', 'HLEN', true) end
  if t == 'set' then return unordered(k, 'SSCAN', 'SMEMBERS', 'SCARD', false) end
  if t == 'list' then return ranged(k, 'LRANGE', {}) end
  if t == 'zset' then return ranged(k, 'ZRANGE', {'WITHSCORES'}) end
  if t == 'stream' then return stream(k) end
  return redis.sha1hex(redis.call('DUMP', k))
end
local function bucket(exp)
  local d, i, limit = exp - ref, 0, base
  while d >= limit do limit = limit * 2; i = i + 1 end
  return i
end
local persistent, buckets
local function pass(seen)
  persistent, buckets = {n = 0, acc = zero()}, {}
  local cursor, returned = '0', 0
  repeat
    local r = redis.call('SCAN', cursor, 'COUNT', count)
    cursor = r[1]
    for _, k in ipairs(r[2]) do
      if not seen or not seen[k] then
        if seen then seen[k] = true end
        returned = returned + 1
        local exp = redis.call('PEXPIRETIME', k)
        if exp ~= -2 then
          local t = redis.call('TYPE', k)['ok']
          local part = persistent
          if exp ~= -1 then
            local i = bucket(exp)
            part = buckets[i] or {n = 0, acc = zero()}
            buckets[i] = part
          end
          part.n = part.n + 1
          add(part.acc, redis.sha1hex(lp(k) .. lp(t) .. exp .. ':' .. value(k, t)))
        end
      end
    end
  until cursor == '0'
  return returned
end
local redone = 0
if pass(nil) ~= redis.call('DBSIZE') then pass({}); redone = 1 end
local time = redis.call('TIME')
local out = {tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000), redone, persistent.n,
             hex(persistent.acc)}
for i, b in pairs(buckets) do
  out[#out + 1] = i; out[#out + 1] = b.n; out[#out + 1] = hex(b.acc)
end
return out
"""
_LANES = 5
_EMPTY = {"keys": 0, "digest": "0" * 40}


def now_ms():
    """The wall clock in milliseconds since the epoch."""
    return int(time.time() * 1000)


def iso_ms(ms):
    """``2026-01-31T02:00:00.123Z`` for an instant in milliseconds since the epoch."""
    moment = datetime.datetime.fromtimestamp(ms / 1000.0, datetime.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + "%03dZ" % (ms % 1000)


def sum_parts(parts):
    """The lane-wise sum (as the Lua script adds) of ``{"keys", "digest"}`` parts: one part."""
    lanes = [0] * _LANES
    keys = 0
    for part in parts:
        keys += int(part["keys"])
        digest = part["digest"]
        for i in range(_LANES):
            lanes[i] = (lanes[i] + int(digest[8 * i:8 * i + 8], 16)) % 2 ** 32
    return {"keys": keys, "digest": "".join("%08x" % lane for lane in lanes)}


def fingerprint_db(target, conn, db, reference_ms, password=None, bucket_ms=BUCKET_MS, timeout=None):
    """One database's fingerprint by ``FINGERPRINT_LUA``: ``{"now_ms", "redone", "persistent",
    "expiring": {bucket: {"keys", "digest"}}}``. One ``EVAL``, which blocks the server while it runs."""
    if int(bucket_ms) < 1:
        raise RedisError("bucket_ms must be at least 1, got %r" % (bucket_ms,))
    what = "the fingerprint script (EVAL, needs Redis 7.0 or later) on db %s" % db
    text = command_text(target, conn, "EVAL", FINGERPRINT_LUA, 0, int(reference_ms), int(bucket_ms), SCAN_COUNT,
                        READ_CHUNK, password=password, db=db, timeout=timeout or 3600, what=what).strip()
    try:
        reply = json.loads(text)  # integers and hex digests only
        now, redone, keys, digest = reply[:4]
        rest = reply[4:]
        expiring = {str(int(rest[i])): {"keys": int(rest[i + 1]), "digest": str(rest[i + 2])}
                    for i in range(0, len(rest), 3)}
    except (ValueError, TypeError, IndexError) as exc:
        raise RedisError("%s returned %r" % (what, text[:300])) from exc
    return {"now_ms": int(now), "redone": bool(redone), "persistent": {"keys": int(keys), "digest": str(digest)},
            "expiring": dict(sorted(expiring.items(), key=lambda item: int(item[0])))}


def fingerprint_parts(target, conn, password=None, reference_ms=None, bucket_ms=BUCKET_MS, timeout=None):
    """The detailed fingerprint of every database of the server at ``target`` (see the module's docstring).

    ``reference_ms`` (default: now) is the instant the expiry buckets count from; a verification
    passes the backup's. Returns ``{"method", "reference_ms", "bucket_ms", "now_ms", "dbs": {db:
    {"persistent": {"keys", "digest"}, "expiring": {bucket: {"keys", "digest"}}}}}``; databases
    without keys are left out. ``now_ms`` is the latest server time a script saw (or ours).
    """
    reference_ms = now_ms() if reference_ms is None else int(reference_ms)
    result = {"method": FINGERPRINT_METHOD, "reference_ms": reference_ms, "bucket_ms": int(bucket_ms),
              "now_ms": 0, "dbs": {}}
    for db in sorted(keyspace(target, conn, password)):
        part = fingerprint_db(target, conn, db, reference_ms, password, bucket_ms, timeout)
        result["now_ms"] = max(result["now_ms"], part.pop("now_ms"))
        part.pop("redone")
        if part["persistent"]["keys"] or part["expiring"]:
            result["dbs"][str(db)] = part
    result["now_ms"] = max(result["now_ms"], now_ms())
    return result


def summarize(detail):
    """``{db: {"keys": n, "digest": "..."}}``: every key of each database in ``detail`` (``fingerprint_parts``)."""
    return {db: sum_parts([part["persistent"]] + list(part["expiring"].values()))
            for db, part in sorted(detail["dbs"].items(), key=lambda item: int(item[0]))}


def fingerprint(target, conn, password=None, timeout=None):
    """``{db: {"keys": n, "digest": "..."}}`` for every non-empty database: keys, types, values and
    absolute expiry times of every key (``FINGERPRINT_LUA``). Two servers holding the same data give
    the same fingerprint; it is the ``fingerprint`` of a backup's manifest entry."""
    return summarize(fingerprint_parts(target, conn, password, timeout=timeout))


def _first_comparable_bucket(reference_ms, bucket_ms, cutoff_ms):
    """The first expiry bucket whose keys all expire after ``cutoff_ms`` (bucket ``i`` >= 1 starts at
    ``reference + bucket_ms * 2^(i-1)``; bucket 0 has no lower bound)."""
    index = 1
    while reference_ms + bucket_ms * 2 ** (index - 1) <= cutoff_ms:
        index += 1
    return index


def compare_fingerprints(expected, actual):
    """How ``actual`` (``fingerprint_parts`` of a restored server, with the same reference) differs from
    ``expected`` (the backup's ``fingerprint_detail``), over the keys that cannot have expired since.

    Compared per database: the keys without expiry, and together every expiry bucket that starts
    after ``actual``'s time (its ``now_ms``). Keys of earlier buckets may have expired meanwhile
    and are counted in ``not_compared``. Returns ``{"differences": [...], "compared_keys": n,
    "not_compared_keys": n, "cutoff": iso}``.
    """
    for name in ("method", "reference_ms", "bucket_ms"):
        if expected.get(name) != actual.get(name):
            raise RedisError("the fingerprints cannot be compared: %s %r, expected %r"
                             % (name, actual.get(name), expected.get(name)))
    first = _first_comparable_bucket(expected["reference_ms"], expected["bucket_ms"], actual["now_ms"])
    since = iso_ms(expected["reference_ms"] + expected["bucket_ms"] * 2 ** (first - 1))
    later = "expiring after %s" % since
    views = ({}, {})
    counts = {"compared_keys": 0, "not_compared_keys": 0}
    for db in sorted(set(expected["dbs"]) | set(actual["dbs"]), key=int):
        for view, side in zip(views, (expected, actual)):
            part = side["dbs"].get(db, {"persistent": _EMPTY, "expiring": {}})
            kept = [p for i, p in part["expiring"].items() if int(i) >= first]
            view[db] = {"no expiry": part["persistent"], later: sum_parts(kept)}
        counts["compared_keys"] += views[0][db]["no expiry"]["keys"] + views[0][db][later]["keys"]
        counts["not_compared_keys"] += sum(p["keys"] for i, p in expected["dbs"].get(db, {}).get("expiring", {}).items()
                                           if int(i) < first)
        for view, side in zip(views, (expected, actual)):
            if db not in side["dbs"] and views[0][db] != views[1][db]:
                del view[db]  # said as "missing" / "not in the backup"
    return dict(counts, differences=diff_fingerprints(views[0], views[1], prefix="db"), cutoff=since)


def unpack_rdb(artefact, sha256, rdb, timeout=None, purpose=""):
    """Unpack the RDB artefact into ``rdb`` (created 0600), its sha256 checked while it streams; ``RedisError``
    (saying what for: ``purpose``) when that fails, ``rdb`` removed."""
    os.close(os.open(rdb, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
    try:
        decompress_to(artefact, ["dd", "of=%s" % rdb, "conv=notrunc", "status=none"], expected_sha256=sha256,
                      timeout=timeout, consumer_name="unpack RDB")
    except PipelineError as exc:
        os.unlink(rdb)  # nothing half-unpacked stays behind
        raise RedisError("cannot unpack %s%s: %s" % (artefact, purpose, exc)) from exc


def scratch_fingerprint(image, artefact, sha256, work_root, reference_ms, timeout=None, docker="docker",
                        databases=None):
    """The ``fingerprint_parts`` of what ``artefact`` (a zstd-compressed RDB, sha256 checked) holds.

    The RDB is unpacked into a private temp folder under ``work_root`` (removed on return), which a
    ``ScratchServer`` of ``image`` (no network, no password, nothing saved, the folder mounted
    read-only, ``databases`` as the server's) loads; the Lua script runs there. Needs memory for
    the dataset, like the server.
    """
    staging = tempfile.mkdtemp(prefix=".redis-fingerprint-", dir=work_root)
    t0 = time.monotonic()
    try:
        unpack_rdb(artefact, sha256, os.path.join(staging, "dump.rdb"), timeout=timeout, purpose=" for its fingerprint")
        server = ScratchServer(image, ["redis-server", "--port", "6379", "--dir", "/data", "--dbfilename", "dump.rdb",
                                       "--appendonly", "no", "--save", "", "--databases", int(databases or 16)],
                               mounts={staging: "/data:ro"}, user="%d:%d" % (os.getuid(), os.getgid()),
                               ready_argv=["sh", "-c", "redis-cli INFO persistence | grep -q '^loading:0'"],
                               ready_timeout=timeout or 3600, docker=docker, name_prefix="llmops-redis-fingerprint")
        try:
            with server:
                detail = fingerprint_parts(server, {}, reference_ms=reference_ms, timeout=timeout)
        except ExecError as exc:
            raise RedisError("the scratch server could not load the snapshot: %s" % exc) from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    detail.pop("now_ms")
    return dict(detail, source="the artefact, loaded by a scratch server of %s" % image,
                seconds=round(time.monotonic() - t0, 3))


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
    ``rdb_last_bgsave_status:ok``. ``requested_ms`` is our clock just before the accepted ``BGSAVE``
    was sent (every write acknowledged before it is in the snapshot), ``finished_ms`` when the end
    was seen (no write acknowledged after it is); ``saves`` is ``rdb_saves`` then.
    """
    deadline = time.monotonic() + wait_timeout
    waited_for_other = False
    while True:
        before, waited = _wait_idle(target, conn, password, deadline, poll)
        waited_for_other = waited_for_other or waited
        lastsave0 = int(command(target, conn, "LASTSAVE", password=password))
        requested = now_ms()
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
            return {"reply": reply, "lastsave": lastsave, "waited_for_other_save": waited_for_other,
                    "requested_ms": requested, "finished_ms": now_ms(), "saves": state["saves"]}
        if time.monotonic() > deadline:
            raise RedisError("BGSAVE did not finish within %s s (wait_timeout)" % wait_timeout)
        time.sleep(poll)


def _save_replaced(target, conn, password, saved):
    """Whether another save may have replaced the RDB file since ours finished (then the copy may be newer)."""
    state = _persistence(target, conn, password)
    lastsave = int(command(target, conn, "LASTSAVE", password=password))
    return state["in_progress"] or state["saves"] != saved["saves"] or lastsave != saved["lastsave"]


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
           wait_timeout=300, zstd_level=3, zstd_threads=0, timeout=None, image=None, copy_attempts=3):
    """Take an RDB snapshot into ``dest_dir/dump.rdb.zst``, check it, fingerprint it; return the manifest entry.

    ``bgsave``: a fresh ``BGSAVE`` and a copy of the server's RDB file (``dir``/``dbfilename`` from
    ``CONFIG GET`` when allowed, else ``rdb_dir``/``rdb_filename``); when another save replaced the
    file before the copy ended, save and copy again (up to ``copy_attempts``). ``rdb``: the snapshot
    streamed over the replication protocol (``redis-cli --rdb -``), for servers whose files are out
    of reach. ``save_point``: every write acknowledged before it is in the snapshot.

    The fingerprint is that of the artefact itself (``scratch_fingerprint``, in a throw-away server of
    ``image``, by default the image of ``target``'s container), with expiry buckets counted from the
    save point; the live server is not scanned.
    """
    if method not in ("bgsave", "rdb"):
        raise RedisError("method must be bgsave or rdb, got %r" % (method,))
    if not image:
        if not target.container:
            raise RedisError("the fingerprint is taken by loading the snapshot in a scratch server: with the tools "
                             "on the host (container=''), set image to the server's Redis image (or a newer one)")
        try:
            image = target.image()
        except ExecError as exc:
            raise RedisError("cannot find the image of %s for the scratch server: %s" % (target.container, exc)) \
                from exc
    started = utc()
    t0 = time.monotonic()
    before = server_info(target, conn, password)
    dest = os.path.join(dest_dir, ARTEFACT)
    env = _env(password)
    if method == "bgsave":
        directory = config_get(target, conn, "dir", password) or rdb_dir
        filename = config_get(target, conn, "dbfilename", password) or rdb_filename
        source = "%s/%s" % (directory.rstrip("/"), filename)
        for attempt in range(1, copy_attempts + 1):
            saved = bgsave(target, conn, password, wait_timeout=wait_timeout)
            result = run_pipeline(target.argv(["cat", source]), dest, zstd_level=zstd_level,
                                  zstd_threads=zstd_threads, timeout=timeout, source_name="cat %s" % source)
            if not _save_replaced(target, conn, password, saved):
                break
            if attempt == copy_attempts:
                raise RedisError("another save replaced %s while it was copied, %d times: the server saves too "
                                 "often (its save rules) to copy a snapshot of ours; retry, or use method=rdb"
                                 % (source, copy_attempts))
        saved["copy_attempts"] = attempt
        save_point = saved["requested_ms"]
    else:
        saved = None
        source = "replication (redis-cli --rdb)"
        save_point = now_ms()
        result = run_pipeline(target.argv(cli_argv(conn, "--rdb", "-", fmt=None), env_names=env.keys()), dest,
                              env=env, zstd_level=zstd_level, zstd_threads=zstd_threads, timeout=timeout,
                              source_name="redis-cli --rdb")
    checked = check_rdb(target, dest, result.sha256, timeout=timeout)
    detail = scratch_fingerprint(image, dest, result.sha256, os.path.dirname(os.path.abspath(dest_dir)), save_point,
                                 timeout=timeout, docker=target.docker,
                                 databases=config_get(target, conn, "databases", password))
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
        "bgsave": dict(saved, requested=iso_ms(saved["requested_ms"]), finished=iso_ms(saved["finished_ms"]))
        if saved else None,
        "save_point": iso_ms(save_point),
        "aof_enabled": before["aof_enabled"],
        "rdb_check": checked,
        "fingerprint": summarize(detail),
        "fingerprint_detail": detail,
    }
