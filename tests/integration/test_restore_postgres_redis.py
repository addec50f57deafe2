"""playbooks/restore.yml for PostgreSQL and Redis on the live lab: a damaged server comes back equal to the
backup (fingerprints, rows, privileges, every key's value and TTL), with safety copies; Redis keeps its data
across a restart with AOF on; a damaged RDB is caught before Redis is stopped."""

from __future__ import annotations

import json
import secrets
import subprocess
import time

import pytest
from ansible.module_utils.llmops_backupset import load_manifest, write_manifest
from ansible.module_utils.llmops_exec import ExecTarget
from ansible.module_utils.llmops_postgres import fingerprint as pg_fingerprint
from ansible.module_utils.llmops_redis import fingerprint as redis_fingerprint

from tests.conftest import make_set, reauthenticate, redis_safety_copies, run_playbook

pytestmark = pytest.mark.lab
PG = ExecTarget("llmops-appdb-postgres-1", "postgres")
REDIS = ExecTarget("llmops-appdb-redis-1")
TTL_TOLERANCE_MS = 120_000
# sha1 of a key's value: of its DUMP, or for sets and hashes (whose DUMP order may change when reloaded) of
# their sorted members / field-value pairs; and its PTTL
DUMP_LUA = " ".join("""
local k = KEYS[1]; local t = redis.call('TYPE', k)['ok']; local v
if t == 'set' then v = redis.call('SMEMBERS', k); table.sort(v); v = table.concat(v, '\\0')
elseif t == 'hash' then local h = redis.call('HGETALL', k); v = {}
  for i = 1, #h, 2 do v[#v + 1] = h[i] .. '\\0' .. h[i + 1] end; table.sort(v); v = table.concat(v, '\\1')
else v = redis.call('DUMP', k) end
return {t .. ':' .. redis.sha1hex(v), redis.call('PTTL', k)}
""".split())
SEED_SQL = r"""
CREATE TABLE docs (id serial PRIMARY KEY, title text NOT NULL, body jsonb, blob bytea);
CREATE SEQUENCE ticket_seq START 100;
SELECT nextval('ticket_seq') FROM generate_series(1, 7);
CREATE VIEW doc_titles AS SELECT id, title FROM docs;
INSERT INTO docs (title, body, blob)
SELECT 'Dokument ' || g || ' – 日本語 ✓', jsonb_build_object('n', g), decode(md5(g::text), 'hex') || '\x00ff'::bytea
FROM generate_series(1, 300) AS g;
GRANT SELECT ON docs TO app_reader;
"""
OWN_ROWS = "SELECT id, title, body::text, encode(blob, 'hex') FROM docs ORDER BY id"
RAG_ROWS = "SELECT id, source_id, ord, md5(content), md5(raw), updated_at FROM chunks ORDER BY id"
# name suffix -> command creating it (every type, one with a TTL)
KEYS = {
    "str": 'SET {k} "héllo ✓ 日本語"',
    "bin": 'SET {k} "\\x00\\xff\\r\\n binary"',
    "ttl": 'SET {k} "expires" EX 3600',
    "hash": 'HSET {k} field1 "välue" field2 2',
    "list": "RPUSH {k} a b c a",
    "set": "SADD {k} x y z",
    "zset": "ZADD {k} 1.5 one 2 two -3 minus",
    "stream": "XADD {k} 1-1 sensor a temp 20.5",
}


def started_at(container: str) -> str:
    return subprocess.run(["docker", "inspect", "-f", "{{.State.StartedAt}}", container], capture_output=True,
                          text=True, check=True).stdout.strip()


def cli(lab, db, script):
    """Feed a redis-cli script (one command a line) to the lab's server; return the replies."""
    out = lab.exec("redis", "redis-cli", "--quoted-json", "-n", str(db), stdin=script.encode(),
                   env={"REDISCLI_AUTH": lab.secret("redis_password")}).stdout
    lines = out.decode().splitlines()
    assert not any(line.startswith("error:") for line in lines), lines[:5]
    return [json.loads(line) for line in lines]


def snapshot(lab, dbs):
    """{(db, key): ("type:sha1 of its value", PTTL)} of every key of ``dbs`` (see DUMP_LUA)."""
    result = {}
    for db in dbs:
        keys = []
        cursor = "0"
        while True:
            cursor, batch = cli(lab, db, f"SCAN {cursor} COUNT 5000\n")[0]
            keys += batch
            if str(cursor) == "0":
                break
        quoted = [json.dumps(key) for key in sorted(set(keys))]
        replies = cli(lab, db, "".join(f"EVAL {json.dumps(DUMP_LUA)} 1 {k}\n" for k in quoted))
        for key, (digest, pttl) in zip(quoted, replies, strict=True):
            result[(db, key)] = (digest, pttl)
    return result


def assert_same_keys(before, after):
    assert sorted(after) == sorted(before)
    for key, (value, pttl) in before.items():
        r_value, r_pttl = after[key]
        assert r_value == value, key
        if pttl < 0:
            assert r_pttl == pttl, key
        else:
            assert 0 < r_pttl <= pttl and pttl - r_pttl < TTL_TOLERANCE_MS, (key, pttl, r_pttl)


REDIS_BACKUP = ("redis_backup", {"password": "{{ redis_password }}"})


def restore(root, components):
    return run_playbook("restore.yml", "-e", f"backup_root={root}", "-e", f"components={components}", "-e",
                        "confirm=yes", check=False)


def pg_databases(lab, pattern):
    return {row[0] for row in lab.psql(f"SELECT datname FROM pg_database WHERE datname LIKE '{pattern}'")}


@pytest.fixture()
def own_db(lab):
    """A database of this test (and the rag safety copies that did not exist before), dropped at the end."""
    db = f"t_rs_{secrets.token_hex(4)}"
    rag_copies = pg_databases(lab, "rag\\_\\_pre-restore-%")
    lab.psql(f'CREATE DATABASE "{db}"')
    try:
        lab.psql(SEED_SQL, db)
        yield db
    finally:
        for name in pg_databases(lab, f"{db}%") | (pg_databases(lab, "rag\\_\\_pre-restore-%") - rag_copies):
            lab.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture()
def own_keys(lab):
    """Keys of every type under this test's prefix in a database 8-15 of its own, deleted at the end."""
    db = 8 + secrets.randbelow(8)
    prefix = f"t_rs_{secrets.token_hex(4)}:"
    script = "".join(create.format(k=json.dumps(prefix + name)) + "\n" for name, create in KEYS.items())
    cli(lab, db, script + f'XADD "{prefix}stream" 1-2 sensor b temp 21\nPEXPIRE "{prefix}hash" 7200000\n')
    yield db, prefix
    cli(lab, db, "".join(f"DEL {json.dumps(prefix + name)}\n" for name in KEYS))


def wait_redis_healthy(lab, timeout=90):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = subprocess.run(["docker", "inspect", "-f", "{{.State.Health.Status}}", lab.containers["redis"]],
                               capture_output=True, text=True).stdout.strip()
        if state == "healthy":
            return
        time.sleep(1)
    raise AssertionError("redis did not become healthy again")


def test_restore_brings_damaged_postgres_and_redis_back(lab, own_db, own_keys, redis_copies, tmp_path):
    root = tmp_path / "backups"
    db, prefix = own_keys
    password = lab.secret("redis_password")
    dbs = sorted(["rag", own_db])
    pg_before = pg_fingerprint(PG, dbs)
    rows_before = {"own": lab.psql(OWN_ROWS, own_db), "rag": lab.psql(RAG_ROWS, "rag")}
    final = make_set(root, {"postgres": ("postgres_backup", {"databases": dbs}), "redis": REDIS_BACKUP})
    comps = final["manifest"]["components"]
    assert comps["postgres"]["fingerprint"] == pg_before
    redis_dbs = sorted(int(d) for d in comps["redis"]["fingerprint"])
    keys_before = snapshot(lab, redis_dbs)

    # damage: a table dropped, rows changed and deleted; keys flushed, changed and deleted
    lab.psql("DROP TABLE docs CASCADE; SELECT setval('ticket_seq', 5000);", own_db)
    lab.psql("UPDATE chunks SET content = 'damaged' WHERE id % 7 = 0; DELETE FROM chunks WHERE id > 6900;", "rag")
    cli(lab, db, "FLUSHDB\n")
    cli(lab, 0, 'SET seed:version "damaged"\nDEL user:1 user:2\nPERSIST cache:short\nSET extra:key 1\n')
    assert pg_fingerprint(PG, dbs) != pg_before
    assert redis_fingerprint(REDIS, {}, password) != comps["redis"]["fingerprint"]

    proc = restore(root, "postgres,redis")
    assert proc.returncode == 0, proc.stdout[-5000:]
    assert "no service stop needed" in proc.stdout
    # PostgreSQL: fingerprint, rows, privileges; the damaged databases are kept aside, unconnectable
    assert pg_fingerprint(PG, dbs) == pg_before
    assert lab.psql(OWN_ROWS, own_db) == rows_before["own"]
    assert lab.psql(RAG_ROWS, "rag") == rows_before["rag"]
    assert lab.psql("SELECT has_table_privilege('app_reader', 'docs', 'SELECT')", own_db) == [["t"]]
    copies = lab.psql(f"SELECT datname, datallowconn FROM pg_database WHERE datname LIKE '{own_db}\\_\\_pre%'")
    assert len(copies) == 1 and copies[0][1] == "f", copies
    assert pg_databases(lab, "rag\\_\\_pre-restore-%")
    # Redis: every key's value and TTL, the fingerprint, the safety copy; AOF on and written
    assert redis_fingerprint(REDIS, {}, password) == comps["redis"]["fingerprint"]
    assert_same_keys(keys_before, snapshot(lab, redis_dbs))
    assert len(redis_safety_copies(lab)) == len(redis_copies) + 1
    assert "aof_enabled:1" in lab.redis("INFO", "persistence")

    # with AOF on, Redis restarts from the AOF: the restored keys must survive a restart
    subprocess.run(["docker", "restart", lab.containers["redis"]], check=True, capture_output=True, timeout=120)
    wait_redis_healthy(lab)
    assert_same_keys(keys_before, snapshot(lab, redis_dbs))


def test_a_damaged_rdb_is_caught_before_redis_stops(lab, own_keys, redis_copies, tmp_path):
    """An RDB damaged before it was checksummed (and authenticated) passes the set's verification;
    redis-check-rdb catches it."""
    root = tmp_path / "backups"
    db, prefix = own_keys
    final = make_set(root, {"redis": REDIS_BACKUP})
    set_path = root / final["set_id"]
    artefact = set_path / "redis" / "dump.rdb.zst"
    rdb = subprocess.run(["zstd", "-q", "-d", "-c", str(artefact)], capture_output=True, check=True).stdout
    damaged = bytearray(rdb)
    damaged[len(damaged) // 2] ^= 0xFF
    artefact.write_bytes(subprocess.run(["zstd", "-q", "-c"], input=bytes(damaged), capture_output=True,
                                        check=True).stdout)
    manifest = load_manifest(set_path)
    (entry,) = manifest["components"]["redis"]["files"]
    entry["sha256"] = subprocess.run(["sha256sum", str(artefact)], capture_output=True, text=True,
                                     check=True).stdout.split()[0]
    entry["size"] = artefact.stat().st_size
    write_manifest(str(set_path), manifest)
    reauthenticate(set_path)  # as if the backup had hashed the damaged RDB

    before = started_at(lab.containers["redis"])
    read = f"TYPE {json.dumps(prefix + 'str')}\nGET {json.dumps(prefix + 'str')}\n"
    value = cli(lab, db, read)
    proc = restore(root, "redis")
    assert proc.returncode != 0 and "redis-check-rdb" in proc.stdout, proc.stdout[-3000:]
    assert started_at(lab.containers["redis"]) == before
    assert redis_safety_copies(lab) == redis_copies
    assert "unpack and check the RDB" in proc.stdout and "stop the service" not in proc.stdout
    assert value[0] == "string" and cli(lab, db, read) == value
