"""Backups taken while the application writes, with hostile names and production's encryption at rest:
`backup.yml` (full, then incremental with `-e verify=restore`), `drill.yml` and `restore.yml` (MariaDB to a point
in time, and the newest restore point with MariaDB rolled forward through the archived binary logs) pass with
their verification on, and what they bring back is exactly what the writer had committed.

A writer thread per store keeps writing into MariaDB, PostgreSQL, Redis, Qdrant and uploads/ for the whole
backup run and records each write once the store acknowledged it. After a restore, every store holds a prefix of
the writer's sequence (nothing half-written, no hole) that contains every write acknowledged before that
component's backup started. After a restore with `target_time`, MariaDB holds exactly the rows whose server-side
commit statement time is before the target (the binary log's one-second resolution: the target is a whole second).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import secrets
import shutil
import time
from pathlib import Path

import pytest
from ansible.module_utils.llmops_pipeline import AGE_HEADER
from ansible.module_utils.llmops_qdrant import QdrantClient

from tests.conftest import LAB_STATE, run_playbook
from tests.writer import Writer

pytestmark = [pytest.mark.lab, pytest.mark.slow]
# Every name a store allows holds what breaks naive scripts: Korean, quotes, a backtick, a backslash, `;`,
# `$(...)`; the MariaDB and PostgreSQL ones a newline and a tab too (MariaDB allows no emoji in names).
TAG = secrets.token_hex(3)
MARIADB_DB = f"load {TAG} 한국어 'q\" $(touch /tmp/pwned-{TAG})"
MARIADB_TABLE = "ev `b` \\ ;\tx\ny"
MARIADB_COLUMN = "값 `c` 'q\" $(x)"
PG_DB = f"load {TAG} 🚀 'q\" `b` \\ ; $(touch /tmp/pwned-{TAG})"
PG_TABLE = "ev 한국어\ttab\nnl"
REDIS_DB = 9
REDIS_PREFIX = f"load:{TAG}:키 \"q\" \\ $(touch /tmp/pwned-{TAG})\n:"
QDRANT_COLLECTION = f"load_{TAG}_한국어"
UPLOAD_DIR = f"load {TAG} 📄 $(touch pwned-{TAG}) 'q\" `b`\n"  # a file name holds anything but "/" and NUL
VALUE = "값 😀 'q\" `b` \\ ; $(touch /tmp/pwned-{tag})\t\n"
INTERVAL = 0.15


def md_ident(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def md_string(value: str) -> str:
    """A MariaDB string literal: backslash-escaped, so a newline or tab stays one line of SQL."""
    escaped = value.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n").replace("\t", "\\t")
    return f"'{escaped}'"


def pg_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@pytest.fixture
def stores(lab):
    """The writer's own objects in every store (created empty, dropped afterwards)."""
    db, table, column = md_ident(MARIADB_DB), md_ident(MARIADB_TABLE), md_ident(MARIADB_COLUMN)
    lab.mariadb(f"CREATE DATABASE {db} CHARACTER SET utf8mb4; CREATE TABLE {db}.{table} "
                f"(n INT PRIMARY KEY, ts DATETIME(6) NOT NULL DEFAULT NOW(6), {column} TEXT) ENGINE=InnoDB;")
    lab.psql(f"CREATE DATABASE {pg_ident(PG_DB)} ENCODING 'UTF8' TEMPLATE template0")
    lab.psql(f"CREATE TABLE {pg_ident(PG_TABLE)} (n int PRIMARY KEY, v text)", database=PG_DB)
    client = QdrantClient(f"http://127.0.0.1:{lab.ports['qdrant']}", api_key=lab.secret("qdrant_api_key"), timeout=60)
    client.create_collection(QDRANT_COLLECTION, 4)
    uploads = LAB_STATE / "data" / "appdb" / "uploads" / UPLOAD_DIR
    uploads.mkdir(parents=True)
    yield {"qdrant": client, "uploads": uploads}
    lab.mariadb(f"DROP DATABASE IF EXISTS {db};")
    lab.psql(f"DROP DATABASE IF EXISTS {pg_ident(PG_DB)} WITH (FORCE)")
    if client.collection_exists(QDRANT_COLLECTION):
        client.delete_collection(QDRANT_COLLECTION)
    lab.redis("-n", str(REDIS_DB), "FLUSHDB")
    for path in (LAB_STATE / "data" / "appdb" / "uploads").glob(f"load {TAG}*"):
        shutil.rmtree(path)


@pytest.fixture
def live(lab, stores):
    """A writer per store, each on its own connection, as the application's; stopped and closed afterwards."""
    db, table = md_ident(MARIADB_DB), md_ident(MARIADB_TABLE)
    mariadb_conn = lab.mariadb_connection()
    postgres_conn = lab.postgres_connection(PG_DB)
    redis_conn = lab.redis_connection(REDIS_DB)

    def mariadb(n):
        with mariadb_conn.cursor() as cursor:  # the SQL text itself carries the hostile value (no client formatting)
            cursor.execute(f"INSERT INTO {db}.{table} (n, {md_ident(MARIADB_COLUMN)}) "  # noqa: S608
                           f"VALUES ({n}, {md_string(VALUE.format(tag=TAG) + str(n))})")
            cursor.execute(f"SELECT ts FROM {db}.{table} WHERE n = {n}")  # noqa: S608
            return cursor.fetchone()[0].replace(tzinfo=datetime.UTC)

    def postgres(n):
        postgres_conn.run(f"INSERT INTO {pg_ident(PG_TABLE)} (n, v) VALUES (:n, :v)",  # noqa: S608
                          n=n, v=VALUE.format(tag=TAG) + str(n))

    def redis(n):
        assert redis_conn.set(f"{REDIS_PREFIX}{n}", VALUE.format(tag=TAG) + str(n)) is True

    def qdrant(n):
        stores["qdrant"].upsert_points(QDRANT_COLLECTION, [{
            "id": n, "vector": [1.0, n % 7 + 1.0, 0.5, -1.0], "payload": {"n": n, "text": VALUE.format(tag=TAG)}}])

    def uploads(n):
        tmp = stores["uploads"] / f".tmp-{n}"
        tmp.write_text(VALUE.format(tag=TAG) + str(n))
        os.rename(tmp, stores["uploads"] / f"문서 {n} $(x).txt")

    writers = {name: Writer(fn, INTERVAL, name) for name, fn in
               {"mariadb": mariadb, "postgres": postgres, "redis": redis, "qdrant": qdrant, "uploads": uploads}.items()}
    yield writers
    for writer in writers.values():
        writer.stop()
    for conn in (mariadb_conn, postgres_conn, redis_conn):
        with contextlib.suppress(Exception):  # the restores ended some of these sessions
            conn.close()


def restored(lab, stores) -> dict[str, list[int]]:
    """What each store holds now, as the writer's sequence numbers (values checked on the way)."""
    table = f"{md_ident(MARIADB_DB)}.{md_ident(MARIADB_TABLE)}"
    rows = lab.mariadb(f"SELECT n, HEX({md_ident(MARIADB_COLUMN)}) FROM {table} ORDER BY n;")  # noqa: S608
    found = {"mariadb": []}
    for n, value in rows:
        assert bytes.fromhex(value).decode() == VALUE.format(tag=TAG) + n
        found["mariadb"].append(int(n))
    found["postgres"] = []
    # jsonb's text form is one line whatever the values hold
    doc = json.loads(lab.psql(f"SELECT coalesce(jsonb_agg(jsonb_build_array(n, v) ORDER BY n), '[]')::text "  # noqa: S608
                              f"FROM {pg_ident(PG_TABLE)}", database=PG_DB)[0][0])
    for n, value in doc:
        assert value == VALUE.format(tag=TAG) + str(n)
        found["postgres"].append(n)
    keys = lab.redis("-n", str(REDIS_DB), "--json", "KEYS", f"load:{TAG}:*")
    found["redis"] = sorted(int(k.rsplit(":", 1)[1]) for k in json.loads(keys))
    for n in found["redis"][:3] + found["redis"][-3:]:
        value = lab.exec("redis", "redis-cli", "-n", str(REDIS_DB), "--raw", "GET", f"{REDIS_PREFIX}{n}",
                         env={"REDISCLI_AUTH": lab.secret("redis_password")}).stdout.decode()
        assert value == VALUE.format(tag=TAG) + str(n) + "\n"
    points = list(stores["qdrant"].scroll_all(QDRANT_COLLECTION, with_vector=False))
    assert all(p["payload"] == {"n": p["id"], "text": VALUE.format(tag=TAG)} for p in points)
    found["qdrant"] = sorted(p["id"] for p in points)
    files = sorted(stores["uploads"].iterdir()) if stores["uploads"].exists() else []
    assert not [f for f in files if f.name.startswith(".tmp-")]
    found["uploads"] = sorted(int(f.name.split()[1]) for f in files)
    for f in files:
        assert f.read_text() == VALUE.format(tag=TAG) + f.name.split()[1]
    return found


def assert_prefix_covering(found: dict[str, list[int]], live: dict[str, Writer], since: dict[str, float]):
    """Each store holds writes 0..k-1 (a prefix: nothing half-done, no hole) including all acknowledged
    before its component's backup started."""
    for name, numbers in found.items():
        assert numbers == list(range(len(numbers))), f"{name}: not a prefix of the writes: {numbers[:5]}..."
        must = live[name].before(since[name])
        assert must and must <= set(numbers), f"{name}: writes acknowledged before the backup are missing"


def manifest(set_dir: Path) -> dict:
    return json.loads((set_dir / "backup_manifest.json").read_text())


def started_epoch(entry: dict) -> float:
    return datetime.datetime.fromisoformat(entry["started"].replace("Z", "+00:00")).timestamp()


def test_backups_under_live_writes_restore_exactly_with_hostile_names(lab, stores, live, tmp_path):
    root = tmp_path / "backups"
    # production's encryption at rest on: every artefact (streams, incrementals, binary logs, snapshots, uploads) an
    # age file, which the restore tests, the drill and the restores decrypt
    opts = ["-e", f"backup_root={root}", "-e", f"backup_metrics_dir={root}/metrics",
            "-e", f"@{lab.encryption_vars(tmp_path)}"]
    for writer in live.values():
        writer.start()
    try:
        time.sleep(2)
        run_playbook("backup.yml", *opts, "-e", "backup_type=full")
        full = (root / "latest").resolve()
        assert (full / "mariadb" / "mariadb.mbstream.zst").read_bytes()[:len(AGE_HEADER)] == AGE_HEADER
        time.sleep(1)
        proc = run_playbook("backup.yml", *opts, "-e", "backup_type=incremental", "-e", "verify=restore")
        incremental = (root / "latest").resolve()
        assert incremental != full and "passed: true" in proc.stdout
        # the drill of the full set, while the application keeps writing
        run_playbook("drill.yml", *opts, "-e", f"drill_backup_id={full.name}")
        time.sleep(1.5)
        target = datetime.datetime.now(datetime.UTC).replace(microsecond=0) + datetime.timedelta(seconds=2)
        while datetime.datetime.now(datetime.UTC) < target + datetime.timedelta(seconds=3):
            time.sleep(0.2)
    finally:
        for writer in live.values():
            writer.stop()
    assert all(not w.errors for w in live.values()), {n: w.errors[:3] for n, w in live.items()}
    run_playbook("binlog_archive.yml", *opts)

    # both sets were restore-tested (backup -e verify=restore, drill.yml) and say so; the nightly job finds nothing
    for set_dir in (full, incremental):
        doc = json.loads((set_dir / "verification.json").read_text())
        assert doc["records"][-1]["method"] == "restore" and doc["records"][-1]["result"] == "passed"
    nightly = run_playbook("verify.yml", *opts)
    assert "nothing: every recent successful set has a passed restore test already" in nightly.stdout
    metrics = (root / "metrics" / "llmops_backup.prom").read_text()
    assert "llmops_backup_restore_test_last_success" in metrics
    assert "llmops_backup_restore_tested_set_timestamp_seconds 0.0" not in metrics

    # point in time: MariaDB holds exactly the rows whose statement time is before the target
    dry = run_playbook("restore.yml", *opts, "-e", "dry_run=true")
    assert "restore-tested: passed" in dry.stdout
    assert "mariadb: roll forward through" in dry.stdout and "rolled forward through the archived binary logs" \
        in dry.stdout
    # (the archive stays where it is, for the roll forward of the whole restore below)
    run_playbook("restore.yml", *opts, "-e", "components=mariadb", "-e", f"target_time={target.isoformat()}",
                 "-e", "confirm=yes", "-e", "restore_rotate_binlog_archive=false")
    expected = sorted(n for n, _, ts in live["mariadb"].done if ts < target)
    assert restored(lab, stores)["mariadb"] == expected
    assert expected and len(expected) < len(live["mariadb"].done)
    record = sorted((root / "recovery-records").glob("*.md"))[-1].read_text()
    assert "matched the set's fingerprint" in record and "then replayed" in record

    # the newest restore point: every store back at its backup's consistent point, MariaDB rolled forward through
    # the archived binary logs to every write the application made (the archive was taken after the writer stopped)
    run_playbook("restore.yml", *opts, "-e", "confirm=yes")
    doc = manifest(incremental)
    since = {name: started_epoch(doc["components"][name]) for name in live}
    since["mariadb"] = time.time()
    assert_prefix_covering(restored(lab, stores), live, since)
    record = sorted((root / "recovery-records").glob("*.md"))[-1].read_text()
    assert "MariaDB rolled forward through the archived binary logs" in record, record
    for where in (Path("/tmp"), Path.cwd(), LAB_STATE):  # noqa: S108 - where the names would have run `touch`
        assert not list(where.glob(f"pwned-{TAG}*"))
