"""PostgreSQL backups against the lab's real server: pg_dump artefacts that restore with the bare tools
(zstd -d | pg_restore, zstd -d | psql) into scratch databases whose fingerprint and rows equal the source's
and the manifest's; globals, checksums, file modes, check mode, failures and secrets."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import stat
import subprocess

import pytest
from ansible.module_utils.llmops_exec import ExecTarget
from ansible.module_utils.llmops_postgres import fingerprint

from tests.conftest import run_module

pytestmark = pytest.mark.lab
PG = "llmops-appdb-postgres-1"
TARGET = ExecTarget(PG, "postgres")

SEED_SQL = r"""
CREATE TABLE docs (id serial PRIMARY KEY, title text NOT NULL, body jsonb, blob bytea, price numeric(10, 2),
                   updated timestamptz);
CREATE TABLE empty_one (id int);
CREATE SEQUENCE ticket_seq START 100;
SELECT nextval('ticket_seq') FROM generate_series(1, 7);
CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN NEW.updated := now(); RETURN NEW; END $$;
CREATE TRIGGER docs_touch BEFORE INSERT OR UPDATE ON docs FOR EACH ROW EXECUTE FUNCTION touch();
CREATE VIEW doc_titles AS SELECT id, title FROM docs;
INSERT INTO docs (title, body, blob, price)
SELECT 'Dokument ' || g || ' – 日本語 ✓ «' || repeat('é', g % 5) || E'»\ttab ''quote''',
       jsonb_build_object('n', g, 'tags', jsonb_build_array('α', g), 'nested', jsonb_build_object('ok', g % 2 = 0)),
       decode(md5(g::text), 'hex') || '\x00ff0a'::bytea, g * 1.25
FROM generate_series(1, 500) AS g;
GRANT SELECT ON docs TO app_reader;
"""
ROWS_SQL = "SELECT id, title, body::text, encode(blob, 'hex'), price, updated FROM docs ORDER BY id"


def _name(prefix="t_pg"):
    return f"{prefix}_{secrets.token_hex(4)}"


def _drop(lab, db):
    lab.psql(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


@pytest.fixture()
def own_db(lab):
    """A database of this test with unicode, bytea, jsonb, a sequence, a view, a trigger and a function."""
    db = _name()
    lab.psql(f'CREATE DATABASE "{db}"')
    try:
        lab.psql(SEED_SQL, db)
        yield db
    finally:
        _drop(lab, db)


@pytest.fixture()
def scratch(lab):
    """Factory of empty scratch databases, all dropped at the end."""
    made = []

    def make():
        db = _name("t_pg_scratch")
        lab.psql(f'CREATE DATABASE "{db}"')
        made.append(db)
        return db

    yield make
    for db in made:
        _drop(lab, db)


def _unzstd(path):
    return subprocess.run(["zstd", "-q", "-d", "-c", str(path)], capture_output=True, check=True).stdout


def _restore(argv, data):
    proc = subprocess.run(["docker", "exec", "-i", "-u", "postgres", PG, *argv], input=data, capture_output=True)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-3000:]


def test_dump_restores_with_bare_tools_to_equal_data(lab, own_db, scratch, tmp_path):
    dest = tmp_path / "pg"
    result = run_module("postgres_backup", {"dest": str(dest), "databases": [own_db], "plain_sql": True})
    assert not result.get("failed"), result.get("msg")
    comp = result["component"]
    assert comp["status"] == "success" and comp["type"] == "postgres" and comp["backup_type"] == "full"
    assert comp["databases"] == [own_db] and comp["server_version"].startswith("15.")
    assert comp["pg_restore_list_entries"][own_db]["table_data"] == 2  # docs and empty_one
    # the files of each database are recorded (a restore reads them from here), with the snapshot's time
    detail = comp["database_details"][own_db]
    assert (detail["file"], detail["plain_sql_file"]) == (f"{own_db}.dump.zst", f"{own_db}.sql.zst")
    assert detail["snapshot_at"] <= comp["ended"] and detail["sequences_from_dump"] == 2  # docs_id_seq, ticket_seq
    assert comp["globals_file"] == "globals.sql.zst" and comp["fingerprint_keys"] == "quote_ident"
    assert result["artefacts"] == {own_db: f"{own_db}.dump.zst"}

    # Files: where the set expects them, 0600 in a 0700 folder, sha256/size as sha256sum sees them.
    assert stat.S_IMODE(os.stat(dest).st_mode) == 0o700
    names = sorted(os.path.basename(f["path"]) for f in comp["files"])
    assert names == sorted([f"{own_db}.dump.zst", f"{own_db}.sql.zst", "globals.sql.zst"])
    assert sorted(os.listdir(dest)) == names  # no temp file left behind
    for entry in comp["files"]:
        assert os.path.dirname(entry["path"]) == str(dest)
        assert stat.S_IMODE(os.stat(entry["path"]).st_mode) == 0o600
        out = subprocess.run(["sha256sum", entry["path"]], capture_output=True, text=True, check=True).stdout
        assert out.split()[0] == entry["sha256"] and os.path.getsize(entry["path"]) == entry["size"]
    assert comp["bytes"] == sum(f["size"] for f in comp["files"])

    # The fingerprint covers what the test created and equals the source's.
    source_fp = fingerprint(TARGET, [own_db])
    recorded = comp["fingerprint"][own_db]
    assert recorded == source_fp[own_db]
    assert recorded["tables"]["public.docs"]["rows"] == 500 and recorded["tables"]["public.empty_one"]["rows"] == 0
    assert recorded["sequences"]["public.ticket_seq"] == 106
    assert (recorded["views"], recorded["functions"], recorded["triggers"]) == (1, 1, 1)

    globals_sql = _unzstd(dest / "globals.sql.zst")
    assert b"CREATE ROLE app_reader" in globals_sql and b"SET client_encoding = 'UTF8';" in globals_sql

    # Restore the custom dump with pg_restore and the plain copy with psql, each into a scratch database.
    source_rows = lab.psql(ROWS_SQL, own_db)
    restored_custom = scratch()
    _restore(["pg_restore", "--exit-on-error", "-d", restored_custom], _unzstd(dest / f"{own_db}.dump.zst"))
    restored_plain = scratch()
    _restore(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", restored_plain], _unzstd(dest / f"{own_db}.sql.zst"))
    for db in (restored_custom, restored_plain):
        assert fingerprint(TARGET, [db])[db] == recorded, db
        assert lab.psql(ROWS_SQL, db) == source_rows
        assert lab.psql("SELECT has_table_privilege('app_reader', 'docs', 'SELECT')", db) == [["t"]]
        # the sequence continues where the source's was
        assert lab.psql("SELECT nextval('ticket_seq')", db) == [["107"]]


def test_password_over_tcp_never_in_result_and_directory_format(lab, own_db, tmp_path):
    """Scram over TCP inside the container: the password reaches pg_dump only through PGPASSWORD."""
    password = lab.secret("postgres_password")
    dest = tmp_path / "pg"
    result = run_module("postgres_backup", {
        "dest": str(dest), "databases": [own_db], "globals": False, "format": "directory", "jobs": 2,
        "host": "127.0.0.1", "port": 5432, "login_password": "{{ postgres_password }}"})
    assert not result.get("failed"), result.get("msg")
    assert password not in json.dumps(result)
    comp = result["component"]
    (entry,) = comp["files"]
    assert entry["path"] == str(dest / f"{own_db}.dir.tar.zst")
    assert hashlib.sha256((dest / f"{own_db}.dir.tar.zst").read_bytes()).hexdigest() == entry["sha256"]
    assert comp["pg_restore_list_entries"][own_db]["table_data"] == 2
    assert comp["fingerprint"][own_db] == fingerprint(TARGET, [own_db])[own_db]

    wrong = run_module("postgres_backup", {"dest": str(tmp_path / "wrong"), "databases": [own_db],
                                           "host": "127.0.0.1", "port": 5432,
                                           "login_password": "{{ postgres_password }}x"})
    assert wrong.get("failed") and "password authentication failed" in wrong["msg"]
    assert password not in json.dumps(wrong)
    assert not (tmp_path / "wrong").exists()


def test_check_mode_writes_nothing(own_db, tmp_path):
    dest = tmp_path / "pg"
    result = run_module("postgres_backup", {"dest": str(dest), "databases": [own_db]}, check_mode=True)
    assert not result.get("failed"), result.get("msg")
    assert result["changed"] is True and "would dump" in result["msg"]
    assert list(result["databases"]) == [own_db] and result["databases"][own_db] > 0
    assert result["artefacts"] == {own_db: f"{own_db}.dump.zst"}
    assert result["server_version"].startswith("15.") and "component" not in result
    assert not dest.exists()


def test_unknown_database_fails_clearly_without_partial_file(own_db, tmp_path):
    dest = tmp_path / "pg"
    missing = _name("t_pg_missing")
    result = run_module("postgres_backup", {"dest": str(dest), "databases": [own_db, missing]})
    assert result.get("failed")
    assert repr(missing) in result["msg"] and "not found" in result["msg"]
    assert not dest.exists() or not any(dest.iterdir())
