"""Hostile Redis names and values, and writes during the backup, through the real backup and restore on the lab.

Keys, hash fields, set / sorted set members, list elements, stream fields and consumer group names holding
Korean, emoji, spaces, quotes, backticks, backslashes, ``;``, ``$(touch ...)``, tabs, newlines, NUL bytes and
invalid UTF-8, of every type, some with a TTL, in databases 11-15: the backup's fingerprint equals the one of
a fresh load of its own artefact, the fingerprint covers values and expiry times (not only names), and a restore
through ``playbooks/restore.yml`` brings back every key's type, value and expiry exactly. A thread writing
every 20 ms while the backup runs: the artefact holds every write acknowledged before the save point and none
acknowledged after the save finished, and the restore's verification passes.

Data goes in as RESP on ``redis-cli --pipe``'s stdin (the writer uses its own client connection) and is read back by a
Lua script that returns hex only, so no byte is ever quoted, parsed from redis-cli's quoting, or seen by a shell.
The Redis restore replaces the whole lab server with a set taken moments before (as test_restore_postgres_redis
does); this test only touches its own ``hn:<random>:`` keys in databases 11-15 and removes them at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import time

import pytest
from ansible.module_utils.llmops_exec import ExecTarget
from ansible.module_utils.llmops_redis import (
    FINGERPRINT_METHOD,
    RedisError,
    compare_fingerprints,
    fingerprint_parts,
    summarize,
)

from tests.conftest import make_set, redis_safety_copies, run_module, run_playbook
from tests.integration.test_redis_backup import bare_server, throwaway_server
from tests.writer import Writer

pytestmark = pytest.mark.lab
DBS = (11, 12, 13, 14, 15)
TTL_TOLERANCE_MS = 600_000
SOON_MS = 60_000
PWNED = "/tmp/pwned"  # noqa: S108 - what a shell would create if a name were ever run through one
NAMES = [
    "한국어 키", "이모지 🔑🚀", " with  spaces ", 'double"quote"', "single'quote'", "back`tick`", "back\\slash\\\\",
    "semi;colon; FLUSHALL", "$(touch /tmp/pwned)", "`touch /tmp/pwned`", "tab\there", "new\nline\r\n",
    "nul\x00byte\x00", "*3\r\n$3\r\nSET\r\n", "%s %n {} ${HOME}", "-n 0 --rdb -", "\"'\\`;$()\t\n\x00 ✓",
]
RAW_NAMES = [name.encode("utf-8") for name in NAMES] + [b"\xff\xfe\x80 invalid utf-8 \xc3"]
SCORES = ["1.5", "-3", "0", "1e-300", "2.5e300", "inf", "-inf", "0.1", "42"]
# Every key matching ARGV[1]: {hex key, type, PTTL, PEXPIRETIME, value}, the value as hex strings (streams: the
# entries, then each group's name, last delivered id and pending entries with their consumer and delivery count)
READ_LUA = r"""#!lua flags=no-writes
local function hx(s) return (string.gsub(s, '.', function(c) return string.format('%02x', string.byte(c)) end)) end
local function all(t) local o = {} for i, x in ipairs(t) do o[i] = hx(x) end return o end
local out, seen, cursor = {}, {}, '0'
repeat
  local r = redis.call('SCAN', cursor, 'MATCH', ARGV[1], 'COUNT', 1000)
  cursor = r[1]
  for _, k in ipairs(r[2]) do
    if not seen[k] then
      seen[k] = true
      local t, v = redis.call('TYPE', k)['ok'], {}
      if t == 'string' then v = {hx(redis.call('GET', k))}
      elseif t == 'hash' then v = all(redis.call('HGETALL', k))
      elseif t == 'list' then v = all(redis.call('LRANGE', k, 0, -1))
      elseif t == 'set' then v = all(redis.call('SMEMBERS', k))
      elseif t == 'zset' then v = all(redis.call('ZRANGE', k, 0, -1, 'WITHSCORES'))
      elseif t == 'stream' then
        local entries, groups = {}, {}
        for _, e in ipairs(redis.call('XRANGE', k, '-', '+')) do entries[#entries + 1] = {hx(e[1]), all(e[2])} end
        for _, g in ipairs(redis.call('XINFO', 'GROUPS', k)) do
          local f = {}
          for i = 1, #g, 2 do f[g[i]] = g[i + 1] end
          local pending = {}
          for _, p in ipairs(redis.call('XPENDING', k, f['name'], '-', '+', 100)) do
            pending[#pending + 1] = {hx(p[1]), hx(p[2]), p[4]}
          end
          groups[#groups + 1] = {hx(f['name']), hx(f['last-delivered-id']), pending}
        end
        v = {entries, groups}
      end
      out[#out + 1] = {hx(k), t, redis.call('PTTL', k), redis.call('PEXPIRETIME', k), v}
    end
  end
until cursor == '0'
return out
"""
DELETE_LUA = r"""local n, cursor = 0, '0'
repeat
  local r = redis.call('SCAN', cursor, 'MATCH', ARGV[1], 'COUNT', 1000)
  cursor = r[1]
  for _, k in ipairs(r[2]) do n = n + redis.call('DEL', k) end
until cursor == '0'
return n
"""


def resp(*args) -> bytes:
    """One command in RESP: every argument a length-prefixed bulk string, whatever its bytes."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        arg = arg if isinstance(arg, bytes) else str(arg).encode()
        parts += [b"$%d\r\n" % len(arg), arg, b"\r\n"]
    return b"".join(parts)


def auth_env(lab):
    return {"REDISCLI_AUTH": lab.secret("redis_password")}


def pipe(lab, commands, container=None):
    """Send ``commands`` (argument lists) as RESP on ``redis-cli --pipe``'s stdin, to the lab or to a throw-away
    server; fail on any error reply."""
    stdin = b"".join(resp(*command) for command in commands)
    if container is None:
        out = lab.exec("redis", "redis-cli", "--pipe", env=auth_env(lab), stdin=stdin).stdout
    else:
        out = subprocess.run(["docker", "exec", "-i", container, "redis-cli", "--pipe"], input=stdin,
                             capture_output=True, check=True).stdout
    assert f"errors: 0, replies: {len(commands)}" in out.decode(), out


def cli_json(lab, db, *args, container=None):
    """``redis-cli --json -n db args...`` (argv elements, no shell) on the lab or on a throw-away server."""
    argv = ["redis-cli", "--json", "-n", str(db), *args]
    if container is None:
        out = lab.exec("redis", *argv, env=auth_env(lab)).stdout
    else:
        out = subprocess.run(["docker", "exec", container, *argv], capture_output=True, check=True).stdout
    text = out.decode().strip()
    assert not text.startswith("error"), text[:500]
    return json.loads(text)


def pattern(prefix: bytes) -> str:
    return prefix.decode() + "*"  # hn:<hex>: holds no glob character


def normalize(kind, value):
    """A read-back value as comparable Python data (sets and hashes sorted: their order is the encoding's)."""
    unhex = bytes.fromhex
    if kind == "string":
        return unhex(value[0])
    if kind == "hash":
        items = [unhex(x) for x in value]
        return tuple(sorted(zip(items[::2], items[1::2], strict=True)))
    if kind == "list":
        return tuple(unhex(x) for x in value)
    if kind == "set":
        return tuple(sorted(unhex(x) for x in value))
    if kind == "zset":
        items = [unhex(x) for x in value]
        return tuple((member, float(score)) for member, score in zip(items[::2], items[1::2], strict=True))
    entries, groups = value
    return (tuple((unhex(i), tuple(unhex(x) for x in fields)) for i, fields in entries),
            tuple(sorted((unhex(name), unhex(last), tuple((unhex(i), unhex(c), n) for i, c, n in pending))
                         for name, last, pending in groups)))


def read_back(lab, db, prefix, container=None):
    """{key: (type, value, PTTL, PEXPIRETIME)} of this test's keys in ``db``."""
    rows = cli_json(lab, db, "EVAL", READ_LUA, "0", pattern(prefix), container=container)
    return {bytes.fromhex(key): (kind, normalize(kind, value), pttl, expire_at)
            for key, kind, pttl, expire_at, value in rows}


def build(prefix: bytes, db: int):
    """The hostile data of one database: RESP commands creating it, and {key: (type, value, ttl ms or None)}."""
    shift = DBS.index(db) * 3
    names = RAW_NAMES[shift:] + RAW_NAMES[:shift]
    n = len(names)
    commands, expected = [], {}
    for i, name in enumerate(names):
        other = names[(i + 1) % n]
        ttl = {1: 3_600_000 + i * 1000, 2: 7 * 86_400_000}.get(i % 3)
        key = prefix + b"str:" + name
        commands.append([b"SET", key, other + b"|" + name])
        expected[key] = ("string", other + b"|" + name, ttl)
        key = prefix + b"hash:" + name
        fields = {names[j]: names[(i + j) % n] for j in range(n)} | {b"": b""}
        commands.append([b"HSET", key] + [x for pair in fields.items() for x in pair])
        expected[key] = ("hash", tuple(sorted(fields.items())), None)
        key = prefix + b"list:" + name
        elements = [name, b""] + names + [name]
        commands.append([b"RPUSH", key] + elements)
        expected[key] = ("list", tuple(elements), ttl)
        key = prefix + b"set:" + name
        commands.append([b"SADD", key, b""] + names)
        expected[key] = ("set", tuple(sorted(set(names) | {b""})), None)
        key = prefix + b"zset:" + name
        scores = {names[j]: SCORES[(i + j) % len(SCORES)] for j in range(n)}
        commands.append([b"ZADD", key] + [x for member, score in scores.items() for x in (score.encode(), member)])
        expected[key] = ("zset", tuple(sorted(((m, float(s)) for m, s in scores.items()), key=lambda x: (x[1], x[0]))),
                         None)
        key = prefix + b"stream:" + name
        entries = []
        for j in range(3):
            entry_id = b"%d-%d" % (j + 1, i)
            fields = [names[(i + j) % n], names[(i + j + 1) % n], b"", name, name, b""]
            commands.append([b"XADD", key, entry_id] + fields)
            entries.append((entry_id, tuple(fields)))
        group, consumer = names[(i + 2) % n], names[(i + 3) % n]
        commands += [[b"XGROUP", b"CREATE", key, group, b"0"],
                     [b"XREADGROUP", b"GROUP", group, consumer, b"COUNT", b"1", b"STREAMS", key, b">"]]
        expected[key] = ("stream", (tuple(entries), ((group, entries[0][0], ((entries[0][0], consumer, 1),)),)), ttl)
        for key, (_, _, ttl) in list(expected.items())[-6:]:
            if ttl:
                commands.append([b"PEXPIRE", key, ttl])
    if db == DBS[0]:  # one key that expires between the backup and the restore's verification
        key = prefix + b"soon:\x00\n \xe2\x8f\xb3"
        commands.append([b"SET", key, b"gone soon \x00", b"PX", SOON_MS])
        expected[key] = ("string", b"gone soon \x00", SOON_MS)
    return [[b"SELECT", db]] + commands, expected


def delete_own_keys(lab, prefix):
    for db in DBS:
        cli_json(lab, db, "EVAL", DELETE_LUA, "0", pattern(prefix))


@pytest.fixture()
def hostile(lab):
    """Hostile keys of every type in databases 11-15 under ``hn:<random>:``; {db: expected} and the prefix."""
    prefix = f"hn:{secrets.token_hex(6)}:".encode()
    expected = {}
    try:
        for db in DBS:
            commands, expected[db] = build(prefix, db)
            pipe(lab, commands)
        yield prefix, expected
    finally:
        delete_own_keys(lab, prefix)


@pytest.fixture()
def own_prefix(lab):
    """A fresh ``hn:<random>:`` prefix; whatever the test wrote under it in databases 11-15 is removed at the end."""
    prefix = f"hn:{secrets.token_hex(6)}:".encode()
    yield prefix
    delete_own_keys(lab, prefix)


def redis_set(root):
    """A finalized backup set holding Redis, made by the real modules; returns (set path, component entry)."""
    t0 = time.monotonic()
    final = make_set(root, {"redis": ("redis_backup", {"password": "{{ redis_password }}"})}, "hn")
    seconds = time.monotonic() - t0
    comp = final["manifest"]["components"]["redis"]
    print(f"redis_backup: {seconds:.1f} s through ansible (with the set's steps), {comp['duration_s']} s in the "
          f"module, of which the scratch fingerprint {comp['fingerprint_detail']['seconds']} s")
    return root / final["set_id"], comp


def restore(root):
    """``playbooks/restore.yml`` for Redis from the set under ``root``; fails with the failed tasks' messages."""
    t0 = time.monotonic()
    proc = run_playbook("restore.yml", "-e", f"backup_root={root}", "-e", "components=redis", "-e", "confirm=yes",
                        check=False)
    print(f"restore.yml (redis): {time.monotonic() - t0:.1f} s")
    failed = [line[:3000] for line in proc.stdout.splitlines() if "FAILED!" in line or line.startswith("fatal:")]
    assert proc.returncode == 0, "\n".join(failed) or proc.stdout[-5000:]
    return proc


@contextlib.contextmanager
def fresh_load(artefact, comp, tmp_path):
    """A throw-away server that this test starts on the artefact; it must give the fingerprint the backup
    recorded (same reference instant). Yields the container's name."""
    detail = comp["fingerprint_detail"]
    with bare_server(artefact, tmp_path) as name:
        t0 = time.monotonic()
        fresh = fingerprint_parts(ExecTarget(name), {}, reference_ms=detail["reference_ms"])
        print(f"fingerprint of the loaded artefact: {time.monotonic() - t0:.2f} s")
        assert fresh["dbs"] == detail["dbs"]
        assert summarize(fresh) == comp["fingerprint"]
        yield name


def pwned_anywhere(lab):
    """Where ``/tmp/pwned`` exists: here, in the Redis container."""
    here = [PWNED] if os.path.exists(PWNED) else []
    there = lab.exec("redis", "test", "-e", PWNED, check=False).returncode == 0
    return here + (["redis:" + PWNED] if there else [])


def test_hostile_names_survive_backup_and_restore(lab, hostile, redis_copies, tmp_path):
    prefix, expected = hostile
    pwned_before = pwned_anywhere(lab)
    root = tmp_path / "backups"
    original = {db: read_back(lab, db, prefix) for db in DBS}
    for db in DBS:  # the lab holds exactly what was meant, byte for byte (this checks the test's own writing)
        assert {k: v[:2] for k, v in original[db].items()} == {k: v[:2] for k, v in expected[db].items()}
        for key, (_, _, ttl) in expected[db].items():
            pttl = original[db][key][2]
            assert (pttl == -1) if ttl is None else (0 < pttl <= ttl), (key, pttl, ttl)

    set_path, comp = redis_set(root)
    detail = comp["fingerprint_detail"]
    assert {str(db) for db in DBS} <= set(comp["fingerprint"])
    for db in DBS:
        assert comp["fingerprint"][str(db)]["keys"] >= len(expected[db])
    artefact = set_path / "redis" / "dump.rdb.zst"
    # no scratch folder left
    assert sorted(os.listdir(set_path)) == ["SHA256SUMS", "SHA256SUMS.hmac", "backup_manifest.json", "redis"]

    with fresh_load(artefact, comp, tmp_path) as name:
        for db in DBS:  # the artefact holds every key exactly, expiry times included
            loaded = read_back(lab, db, prefix, container=name)
            assert {k: (v[:2], v[3]) for k, v in loaded.items()} == {k: (v[:2], v[3]) for k, v in original[db].items()}
        # the fingerprint covers values and expiry times, not only names and types
        target = ExecTarget(name)
        key = next(k for k, v in expected[13].items() if v[0] == "hash")
        for step in ([b"HSET", key, RAW_NAMES[0], b"changed"], [b"PEXPIRE", key, b"99999999"]):
            before = fingerprint_parts(target, {}, reference_ms=detail["reference_ms"])["dbs"]
            pipe(lab, [[b"SELECT", b"13"], step], container=name)
            after = fingerprint_parts(target, {}, reference_ms=detail["reference_ms"])["dbs"]
            assert after["13"] != before["13"] and {d: after[d] for d in after if d != "13"} == {
                d: before[d] for d in before if d != "13"}, step
    # the same data in other encodings (hash tables instead of listpacks...) gives the same fingerprint
    other_encodings = ("--hash-max-listpack-entries", "0", "--zset-max-listpack-entries", "0",
                       "--set-max-intset-entries", "0", "--list-max-listpack-size", "1")
    with throwaway_server(tmp_path / "dump.rdb", extra=other_encodings) as name:
        assert cli_json(lab, 13, "OBJECT", "ENCODING", next(iter(expected[13])), container=name) in (
            "hashtable", "raw", "embstr")
        other = fingerprint_parts(ExecTarget(name), {}, reference_ms=detail["reference_ms"])
        assert other["dbs"] == detail["dbs"]

    # damage: keys deleted, a value changed, a key added; then wait until the short-lived key has expired
    pipe(lab, [[b"SELECT", b"11"]] + [[b"DEL", k] for k in list(expected[11])[::2]]
         + [[b"SET", prefix + b"str:" + RAW_NAMES[0], b"damaged"], [b"SET", prefix + b"extra \x00", b"1"]])
    soon = next(k for k in expected[11] if k.startswith(prefix + b"soon:"))
    time.sleep(max(0.0, (original[11][soon][3] - time.time() * 1000) / 1000 + 1))

    proc = restore(root)
    assert "Redis | verify every key" in proc.stdout
    (record,) = (root / "recovery-records").glob("*.md")
    assert "- redis: matched the manifest's fingerprint of the artefact: " in record.read_text()
    for db in DBS:
        restored = read_back(lab, db, prefix)
        wanted = {k: v for k, v in original[db].items() if k != soon}
        assert sorted(restored) == sorted(wanted), db
        for key, (kind, value, pttl, expire_at) in wanted.items():
            r_kind, r_value, r_pttl, r_expire_at = restored[key]
            assert (r_kind, r_value, r_expire_at) == (kind, value, expire_at), key
            if pttl < 0:
                assert r_pttl == pttl, key
            else:
                assert 0 < r_pttl <= pttl and pttl - r_pttl < TTL_TOLERANCE_MS, (key, pttl, r_pttl)

    # the module's own verification, again, says what it compared (other testers' databases may move meanwhile)
    result = run_module("redis_restore", {"step": "verify", "set_path": str(set_path), "staging": str(tmp_path / "st"),
                                          "password": "{{ redis_password }}"})
    assert not [d for d in result.get("differences", []) if d.split(".")[0] in {f"db{db}" for db in DBS}], result
    print(f"verify: {result['summary']}")
    assert result["not_compared_keys"] >= 1 and result["compared_keys"] >= sum(len(e) for e in expected.values()) - 1
    assert len(redis_safety_copies(lab)) == len(redis_copies) + 1
    assert pwned_anywhere(lab) == pwned_before


def writer(conn, prefix) -> Writer:
    """Every 20 ms on its own connection: ``SET w:<n> n``, ``INCR n``, ``HSET h f<n> n``. ``done`` keeps, per round,
    the time HSET was acknowledged and ``(time SET was acknowledged, INCR's reply, time INCR was acknowledged)``
    (our clock, as the module's save point)."""

    def write(n):
        conn.set(prefix + b"w:\x00%d" % n, n)
        t_set = time.time()
        counter = conn.incr(prefix + b"n")
        t_incr = time.time()
        conn.hset(prefix + b"h", b"f\n%d" % n, n)
        return t_set, counter, t_incr

    return Writer(write, 0.02)


def assert_holds_writes(keys, prefix, writer, save_point, finished):
    """``keys`` (a read-back) holds every write acknowledged before ``save_point`` and none acknowledged after
    ``finished`` (seconds)."""
    h = dict(keys[prefix + b"h"][1])
    counter = int(keys[prefix + b"n"][1])
    for i, t_hset, (t_set, n, t_incr) in writer.done:
        if t_set < save_point:
            assert keys[prefix + b"w:\x00%d" % i][1] == b"%d" % i, i
        elif t_set > finished:
            assert prefix + b"w:\x00%d" % i not in keys, i
        if t_incr < save_point:
            assert counter >= n, (i, counter, n)
        elif t_incr > finished:
            assert counter < n, (i, counter, n)
        if t_hset < save_point:
            assert h[b"f\n%d" % i] == b"%d" % i, i
        elif t_hset > finished:
            assert b"f\n%d" % i not in h, i


def test_concurrent_writes_the_backup_is_its_artefact(lab, own_prefix, redis_copies, tmp_path):
    prefix, db = own_prefix, 12
    root = tmp_path / "backups"
    conn = lab.redis_connection(db)
    writes = writer(conn, prefix)
    writes.start()
    try:
        time.sleep(1)
        set_path, comp = redis_set(root)
        time.sleep(0.5)
    finally:
        writes.stop()
        conn.close()
    assert not writes.errors, writes.errors[:3]
    save_point = comp["fingerprint_detail"]["reference_ms"] / 1000
    finished = comp["bgsave"]["finished_ms"] / 1000
    assert comp["bgsave"]["requested_ms"] / 1000 == save_point
    before = sum(1 for _, t_hset, _ in writes.done if t_hset < save_point)
    after = sum(1 for _, _, (t_set, _, _) in writes.done if t_set > finished)
    assert before > 10 and after > 10, (before, after)  # the backup did run while writes went on
    print(f"writes: {len(writes.done)} rounds, {before} acknowledged before the save point, {after} after the save")

    with fresh_load(set_path / "redis" / "dump.rdb.zst", comp, tmp_path) as name:
        snapshot = read_back(lab, db, prefix, container=name)
    assert_holds_writes(snapshot, prefix, writes, save_point, finished)

    restore(root)  # its verification passed
    restored = read_back(lab, db, prefix)
    assert {k: v[:2] for k, v in restored.items()} == {k: v[:2] for k, v in snapshot.items()}
    assert_holds_writes(restored, prefix, writes, save_point, finished)
    assert len(redis_safety_copies(lab)) == len(redis_copies) + 1


def test_comparison_leaves_out_only_keys_that_may_have_expired():
    """Keys without expiry and expiry buckets starting after the comparison's time are compared; earlier buckets
    (their keys may have expired since the backup) are counted, not compared."""
    ref = 1_800_000_000_000

    def part(keys, digest):
        return {"keys": keys, "digest": digest * 40}

    def detail(dbs, now=None):
        return {"method": FINGERPRINT_METHOD, "reference_ms": ref, "bucket_ms": 1000, "now_ms": now, "dbs": dbs}

    backup = detail({"11": {"persistent": part(3, "1"), "expiring": {"0": part(1, "2"), "3": part(2, "3"),
                                                                     "5": part(4, "4"), "9": part(1, "5")}}})
    # 10 s later: buckets 0-4 (up to ref + 16 s) may have expired; 5 ([16 s, 32 s)) and 9 are compared
    later = detail({"11": {"persistent": part(3, "1"), "expiring": {"5": part(4, "4"), "9": part(1, "5")}}},
                   now=ref + 10_000)
    result = compare_fingerprints(backup, later)
    assert result["differences"] == [] and (result["compared_keys"], result["not_compared_keys"]) == (8, 3)
    assert result["cutoff"] == "2027-01-15T08:00:16.000Z"
    changed = detail({"11": {"persistent": part(3, "1"), "expiring": {"5": part(4, "6"), "9": part(1, "5")}},
                      "12": {"persistent": part(1, "7"), "expiring": {}}}, now=ref + 10_000)
    problems = compare_fingerprints(backup, changed)["differences"]
    assert [p.split(": ")[0] for p in problems] == ["db11.expiring after 2027-01-15T08:00:16.000Z.digest", "db12"]
    assert "not in the backup" in problems[1]
    expired = detail({"11": {"persistent": part(0, "0"), "expiring": {}}}, now=ref + 10_000)
    expired["dbs"] = {}  # everything of the backup expired: nothing compared is missing
    only_expiring = detail({"11": {"persistent": part(0, "0"), "expiring": {"2": part(2, "3")}}})
    assert compare_fingerprints(only_expiring, expired)["differences"] == []
    assert compare_fingerprints(backup, expired)["differences"][0].startswith("db11: missing")
    with pytest.raises(RedisError, match="reference_ms"):
        compare_fingerprints(backup, dict(later, reference_ms=ref + 1))
