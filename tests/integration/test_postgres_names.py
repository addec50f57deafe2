"""PostgreSQL names of any script, end to end on the lab's real server.

Databases, schemas, tables, columns and roles called with Korean, emoji, ``/``, ``..``, quotes, a backtick, a
backslash, ``;``, ``$(...)``, a tab, a newline and spaces (and rows holding such text) are backed up by the real
postgres_backup module into files that all lie inside the set, nothing is executed, and playbooks/restore.yml
brings them back (created afresh, then once more moved aside) with the same rows, column names, owners, grants
and roles. A database that fails is named in the module's message with its cause. A backup taken while a writer
commits every 50 ms holds every row committed before its recorded snapshot point, and the fingerprint
verification passes.

Every database and role of these tests carries a random ``hn_<hex>`` token and is dropped at the end; the SQL
here is built with this file's own quoting and names reach psql in PGDATABASE, never through a shell.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from ansible.module_utils.llmops_backupset import encode_name, load_manifest, write_manifest
from ansible.module_utils.llmops_pipeline import hash_file
from ansible.module_utils.llmops_postgres import PostgresError, parse_setval, split_sql
from ansible.module_utils.llmops_postgres_restore import component_artefacts, safety_name, tolerant_globals

from tests.conftest import make_set, reauthenticate, run_module, run_playbook
from tests.writer import Writer

pytestmark = pytest.mark.lab
PG = "llmops-appdb-postgres-1"
HOSTILE = ["한국어 문서", "🚀", "a/b", "../../x", "q\"d'b", "`tick`", "back\\slash", "semi;colon",
           "$(touch /tmp/pwned)", "tab\there", "new\nline", "sp ace"]
ALL_HOSTILE = " | ".join(HOSTILE)
PWNED = "/tmp/pwned"  # noqa: S108 - the path a name tries to create


def qi(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def ql(value: str) -> str:
    # standard_conforming_strings is on (checked by the fixture): only quotes need doubling
    return "'" + value.replace("'", "''") + "'"


def psql(sql: str, db: str = "postgres") -> str:
    """Run ``sql`` in ``db`` (named in PGDATABASE, UTF8 client encoding); return psql's output."""
    proc = subprocess.run(["docker", "exec", "-i", "-u", "postgres", "-e", "PGDATABASE", "-e", "PGCLIENTENCODING", PG,
                           "psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1"], input=sql.encode(), capture_output=True,
                          env={**os.environ, "PGDATABASE": db, "PGCLIENTENCODING": "UTF8"}, timeout=300)
    assert proc.returncode == 0, (db, proc.stderr.decode(errors="replace")[-3000:])
    return proc.stdout.decode()


def pj(sql: str, db: str = "postgres"):
    """``sql`` returns one JSON document: parsed."""
    return json.loads(psql(sql, db))


def in_container(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", "exec", PG, *argv], capture_output=True, timeout=60)


@dataclass
class Names:
    token: str
    role: str     # owns the databases, gets the grants
    member: str   # a member of it, with column grants
    dbs: dict     # hostile fragment -> database name

    def all_dbs(self) -> list[str]:
        return pj(f"SELECT coalesce(json_agg(datname ORDER BY datname), '[]') FROM pg_database "
                  f"WHERE strpos(datname, {ql(self.token)}) > 0")

    def all_roles(self) -> list[str]:
        return pj(f"SELECT coalesce(json_agg(rolname ORDER BY rolname), '[]') FROM pg_roles "
                  f"WHERE strpos(rolname, {ql(self.token)}) > 0")

    def drop_all(self) -> None:
        # psql sends each statement on its own, so the DROP DATABASEs run outside a transaction block
        psql("".join(f"DROP DATABASE IF EXISTS {qi(db)} WITH (FORCE);\n" for db in self.all_dbs()))
        psql("".join(f"DROP ROLE IF EXISTS {qi(role)};\n" for role in self.all_roles()))


@pytest.fixture()
def names(lab):
    """Hostile names under a random token; every database and role holding the token is dropped at the end."""
    assert psql("SHOW standard_conforming_strings;").strip() == "on"
    token = f"hn_{secrets.token_hex(3)}"
    names = Names(
        token=token,
        role=f"{token} 역할\"'`\\;$(touch {PWNED})\t\n🚀",
        member=f"../../{token}/r;`x`",
        # "../../x" keeps its leading "../" so that it would climb out of the set if a path were built from it;
        # the Korean one is 55 bytes long, so that its safety copy's name must be cut to fit in 63 bytes
        dbs={h: (f"../../{token}" if h == "../../x" else f"{token}{h}" + ("가나다라마바사아자차" if i == 0 else ""))
             for i, h in enumerate(HOSTILE)},
    )
    try:
        yield names
    finally:
        names.drop_all()


def seed_sql(i: int, db: str, names: Names) -> str:
    """A schema, tables (serial and identity sequences, bytea), a view, a comment and grants, all hostile."""
    n = len(HOSTILE)
    schema, table, table2, view = (qi(HOSTILE[i]), qi(HOSTILE[(i + 1) % n]), qi(HOSTILE[(i + 5) % n]),
                                   qi(HOSTILE[(i + 2) % n]))
    cols = ", ".join(qi(c) for c in HOSTILE)
    values = ", ".join(f"{ql(c)} || ' ' || g" for c in HOSTILE)
    role, member = qi(names.role), qi(names.member)
    return f"""
CREATE SCHEMA {schema};
CREATE TABLE {schema}.{table} (id serial PRIMARY KEY, {", ".join(f"{qi(c)} text" for c in HOSTILE)});
INSERT INTO {schema}.{table} ({cols}) SELECT {values} FROM generate_series(1, 25) AS g;
CREATE TABLE {schema}.{table2} (id int GENERATED ALWAYS AS IDENTITY, {qi(HOSTILE[i])} text, blob bytea);
INSERT INTO {schema}.{table2} ({qi(HOSTILE[i])}, blob)
SELECT {ql(ALL_HOSTILE)} || g, convert_to({ql(ALL_HOSTILE)}, 'UTF8') || '\\x00ff'::bytea FROM generate_series(1, 7) g;
CREATE TABLE public.{table2} (x int);
INSERT INTO public.{table2} VALUES (1), (2);
CREATE VIEW {schema}.{view} AS SELECT id, {qi(HOSTILE[3])} FROM {schema}.{table};
COMMENT ON TABLE {schema}.{table} IS {ql(ALL_HOSTILE)};
GRANT USAGE ON SCHEMA {schema} TO {role}, {member};
GRANT SELECT, INSERT ON {schema}.{table} TO {role};
GRANT SELECT ({qi(HOSTILE[3])}, {qi(HOSTILE[10])}) ON {schema}.{table} TO {member};
GRANT USAGE ON ALL SEQUENCES IN SCHEMA {schema} TO {role};
GRANT SELECT ON {schema}.{view} TO {member};
ALTER TABLE {schema}.{table2} OWNER TO {role};
GRANT CONNECT, TEMPORARY ON DATABASE {qi(db)} TO {member};
"""


NOT_SYSTEM = "n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema'"


def acl(expr: str, kind: str, owner: str) -> str:
    """The effective grants (a NULL ACL is the owner's default), sorted: what a restore must give back."""
    return f"ARRAY(SELECT unnest(coalesce({expr}, acldefault({kind}, {owner})))::text ORDER BY 1)"


DATACL = acl("datacl", "'d'", "datdba")
NSPACL = acl("n.nspacl", "'n'", "n.nspowner")
RELACL = acl("c.relacl", "(CASE c.relkind WHEN 'S' THEN 's' ELSE 'r' END)::\"char\"", "c.relowner")
STATE_SQL = f"""
SELECT json_build_object(
 'owner', (SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database()),
 'datacl', (SELECT {DATACL} FROM pg_database WHERE datname = current_database()),
 'schemas', (SELECT json_agg(json_build_array(n.nspname, pg_get_userbyid(n.nspowner), {NSPACL})
                             ORDER BY n.nspname) FROM pg_namespace n WHERE {NOT_SYSTEM}),
 'relations', (SELECT json_agg(json_build_array(n.nspname, c.relname, c.relkind, pg_get_userbyid(c.relowner),
                                                {RELACL}, obj_description(c.oid, 'pg_class'))
                               ORDER BY n.nspname, c.relname)
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE {NOT_SYSTEM} AND c.relkind IN ('r', 'v', 'S')),
 'columns', (SELECT json_agg(json_build_array(n.nspname, c.relname, a.attnum, a.attname,
                                              format_type(a.atttypid, a.atttypmod),
                                              ARRAY(SELECT unnest(a.attacl)::text ORDER BY 1))
                             ORDER BY n.nspname, c.relname, a.attnum)
             FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE a.attnum > 0 AND NOT a.attisdropped AND {NOT_SYSTEM} AND c.relkind IN ('r', 'v')),
 'sequences', (SELECT json_agg(json_build_array(schemaname, sequencename, last_value)
                               ORDER BY schemaname, sequencename) FROM pg_sequences)
)
"""


def db_state(db: str) -> dict:
    """Owner, grants (database, schemas, relations, columns), column names and types, sequences and every row."""
    state = pj(STATE_SQL, db)
    tables = pj(f"SELECT coalesce(json_agg(json_build_array(n.nspname, c.relname) ORDER BY n.nspname, c.relname), "
                f"'[]') FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'r' AND "
                f"{NOT_SYSTEM}", db)
    state["rows"] = {json.dumps(t, ensure_ascii=False): pj(
        f"SELECT coalesce(json_agg(x ORDER BY x::text COLLATE \"C\"), '[]') FROM {qi(t[0])}.{qi(t[1])} x", db)
        for t in tables}
    return state


def differences(a, b, where="") -> list[str]:
    """Where two JSON values differ (readable, for assertion messages)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in differences(a.get(k), b.get(k), f"{where}/{k}")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in differences(x, y, f"{where}[{i}]")]
    return [] if a == b else [f"{where}: {a!r} != {b!r}"]


def roles_state(names: Names) -> dict:
    tok = ql(names.token)
    return pj(f"""SELECT json_build_object(
 'roles', (SELECT json_object_agg(rolname, json_build_array(rolsuper, rolinherit, rolcreaterole, rolcreatedb,
                                  rolcanlogin, rolconnlimit, rolconfig, shobj_description(oid, 'pg_authid')))
           FROM pg_roles WHERE strpos(rolname, {tok}) > 0),
 'members', (SELECT json_agg(json_build_array(r.rolname, m.rolname, a.admin_option) ORDER BY r.rolname, m.rolname)
             FROM pg_auth_members a JOIN pg_roles r ON r.oid = a.roleid JOIN pg_roles m ON m.oid = a.member
             WHERE strpos(r.rolname, {tok}) > 0 OR strpos(m.rolname, {tok}) > 0))""")


def unzstd(path: Path) -> bytes:
    return subprocess.run(["zstd", "-q", "-d", "-c", str(path)], capture_output=True, check=True).stdout


def keep_only_roles(set_path: Path, roles: list[str]) -> str:
    """Cut the set's globals down to the statements about ``roles`` (the lab's server is shared: a test must not
    re-create or alter the roles of others), then re-record its checksum. Returns the original globals."""
    manifest = load_manifest(set_path)
    entry = manifest["components"]["postgres"]
    (item,) = [f for f in entry["files"] if f["path"] == f"postgres/{entry['globals_file']}"]
    path = set_path / item["path"]
    original = unzstd(path).decode()
    quoted = [qi(role) for role in roles]
    kept = [s for s in split_sql(original) if s.startswith("SET ") or any(q in s for q in quoted)]
    path.write_bytes(subprocess.run(["zstd", "-q", "-c"], input="".join(s + ";\n" for s in kept).encode(),
                                    capture_output=True, check=True).stdout)
    item["sha256"], item["size"] = hash_file(str(path))
    write_manifest(str(set_path), manifest)
    reauthenticate(set_path)
    return original


def restore_playbook(root: Path) -> subprocess.CompletedProcess:
    return run_playbook("restore.yml", "-e", f"backup_root={root}", "-e", "components=postgres", "-e", "confirm=yes",
                        check=False)


def nothing_executed(markers: list[str], before: dict) -> None:
    for marker in markers:
        assert not os.path.exists(marker), marker
        assert in_container("test", "-e", marker).returncode == 1, marker
    # /tmp/pwned may be left over by someone else: then it must not have been touched
    assert (os.stat(PWNED).st_mtime_ns if os.path.exists(PWNED) else None) == before["host"]
    assert in_container("stat", "-c", "%Y", PWNED).stdout == before["container"]


def pwned_state() -> dict:
    return {"host": os.stat(PWNED).st_mtime_ns if os.path.exists(PWNED) else None,
            "container": in_container("stat", "-c", "%Y", PWNED).stdout}


@pytest.mark.slow
def test_hostile_names_back_up_into_the_set_and_restore_equal(names, tmp_path):
    pwned_before = pwned_state()
    marker = f"/tmp/{names.token}"  # noqa: S108 - a unique path a name tries to create
    role, member = qi(names.role), qi(names.member)
    psql(f"""CREATE ROLE {role} NOLOGIN CREATEDB CONNECTION LIMIT 3;
CREATE ROLE {member} NOLOGIN;
GRANT {role} TO {member};
ALTER ROLE {role} SET search_path TO {qi(HOSTILE[0])}, {qi(f"$(touch {marker})")}, public;
COMMENT ON ROLE {role} IS {ql(ALL_HOSTILE)};""")
    dbs = sorted(names.dbs.values())
    for i, fragment in enumerate(HOSTILE):
        db = names.dbs[fragment]
        psql(f"CREATE DATABASE {qi(db)} OWNER {role};")
        psql(seed_sql(i, db, names) + f"CREATE TABLE {qi(f'$(touch {marker})')} ({qi(f'`touch {marker}`')} text);"
             f"INSERT INTO {qi(f'$(touch {marker})')} VALUES ({ql(f'$(touch {marker}); `touch {marker}`')});", db)
    before = {db: db_state(db) for db in dbs}
    roles_before = roles_state(names)
    assert len(roles_before["roles"]) == 2 and roles_before["members"]

    root = tmp_path / "backups"
    t0 = time.monotonic()
    final = make_set(root, {"postgres": ("postgres_backup", {"databases": dbs, "plain_sql": True})})
    backup_s = time.monotonic() - t0
    set_path = Path(final["path"])
    entry = final["manifest"]["components"]["postgres"]
    assert entry["databases"] == dbs and entry["fingerprint_keys"] == "quote_ident"

    # Every artefact is one file inside the set's postgres folder, named as the entry records it.
    folder = (set_path / "postgres").resolve()
    expected = {"globals.sql.zst"}
    for db in dbs:
        detail = entry["database_details"][db]
        assert detail["file"] == encode_name(db) + ".dump.zst"
        assert detail["plain_sql_file"] == encode_name(db) + ".sql.zst"
        assert detail["snapshot_at"].endswith("Z") and detail["sequences_from_dump"] == 2
        expected |= {detail["file"], detail["plain_sql_file"]}
    assert sorted(os.listdir(folder)) == sorted(expected)
    for item in entry["files"]:
        path = (set_path / item["path"]).resolve()
        assert path.parent == folder and path.is_file(), item["path"]
    outside = [str(p) for p in tmp_path.rglob("*") if p.is_file() and not p.resolve().is_relative_to(set_path.resolve())
               and (names.token in str(p) or ".zst" in p.name)]
    assert outside == []
    assert not (root / f"{names.token}.dump.zst").exists()
    nothing_executed([marker], pwned_before)

    # The recorded fingerprint: exact for every table and sequence, names quoted like quote_ident.
    fp = entry["fingerprint"][names.dbs["a/b"]]  # schema "a/b", tables "../../x" and "semi;colon"
    assert fp["tables"]['"a/b"."../../x"']["rows"] == 25 and fp["tables"]['"a/b"."semi;colon"']["rows"] == 7
    assert fp["tables"]['public."semi;colon"']["rows"] == 2
    assert fp["sequences"] == {'"a/b"."../../x_id_seq"': 25, '"a/b"."semi;colon_id_seq"': 7}
    fp = entry["fingerprint"][names.dbs["../../x"]]  # schema "../../x", table q"d'b: the quote doubled
    assert fp["tables"]['"../../x"."q""d\'b"']["rows"] == 25 and fp["sequences"]['"../../x"."q""d\'b_id_seq"'] == 25

    # The plain SQL copy restores with psql into a scratch database, equal but for the database itself.
    scratch = f"{names.token} plain"
    psql(f"CREATE DATABASE {qi(scratch)};")
    source = names.dbs["a/b"]
    plain = unzstd(set_path / "postgres" / entry["database_details"][source]["plain_sql_file"]).decode()
    psql(plain, scratch)
    copy = {k: v for k, v in db_state(scratch).items() if k not in ("owner", "datacl")}
    assert not differences(copy, {k: v for k, v in before[source].items() if k not in ("owner", "datacl")})
    psql(f"DROP DATABASE {qi(scratch)} WITH (FORCE);")

    original_globals = keep_only_roles(set_path, [names.role, names.member])
    assert f"CREATE ROLE {role};" in original_globals and f"CREATE ROLE {member};" in original_globals

    # Gone: every database and both roles; restore.yml creates them again.
    names.drop_all()
    assert names.all_dbs() == [] and names.all_roles() == []
    t0 = time.monotonic()
    proc = restore_playbook(root)
    restore_s = time.monotonic() - t0
    assert proc.returncode == 0, proc.stdout[-6000:]
    assert not differences(roles_state(names), roles_before)
    for db in dbs:
        assert not differences(db_state(db), before[db]), db
    assert sorted(names.all_dbs()) == dbs

    # Again, now that they all exist: each is moved aside (renamed, unconnectable) and restored; the roles exist.
    for i, fragment in enumerate(HOSTILE):
        damaged = qi(HOSTILE[(i + 5) % len(HOSTILE)])
        psql(f"DELETE FROM public.{damaged}; ALTER TABLE public.{damaged} ADD COLUMN damage int;", names.dbs[fragment])
    proc = restore_playbook(root)
    assert proc.returncode == 0, proc.stdout[-6000:]
    assert not differences(roles_state(names), roles_before)
    for db in dbs:
        assert not differences(db_state(db), before[db]), db
    copies = pj(f"SELECT json_object_agg(datname, datallowconn) FROM pg_database WHERE strpos(datname, "
                f"{ql(names.token)}) > 0 AND datname LIKE '%\\_\\_pre-restore-%'")
    suffix = "__pre-restore-" + next(iter(copies)).rsplit("__pre-restore-", 1)[1]
    assert sorted(copies) == sorted(safety_name(db, suffix) for db in dbs) and not any(copies.values())
    long_copy = safety_name(names.dbs["한국어 문서"], suffix)
    assert len(long_copy.encode()) == 63 and "~" in long_copy
    nothing_executed([marker], pwned_before)
    print(f"\n{len(dbs)} databases: backup {backup_s:.1f} s, first restore (create) {restore_s:.1f} s")


def test_a_failing_database_is_named_with_its_cause(names, tmp_path, monkeypatch):
    """A login that may connect to one database but not the other: the good one is dumped, the module fails
    with a message naming the other (repr) and why, and no file of it is left."""
    pwned_before = pwned_state()
    login = f"{names.token}_login"
    password = secrets.token_hex(16)
    good = f"{names.token} good'\n\"x;"
    bad = f"{names.token} bad\t$(touch {PWNED})'"
    psql(f"CREATE ROLE {qi(login)} LOGIN PASSWORD {ql(password)}; GRANT pg_read_all_stats TO {qi(login)};"
         f"CREATE DATABASE {qi(good)}; CREATE DATABASE {qi(bad)}; REVOKE CONNECT ON DATABASE {qi(bad)} FROM PUBLIC;")
    psql("CREATE TABLE \"한국어 문서\" (id serial, v text); INSERT INTO \"한국어 문서\" (v) VALUES ('a'), ('b');"
         f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {qi(login)};"
         f"GRANT SELECT ON ALL SEQUENCES IN SCHEMA public TO {qi(login)};", good)
    monkeypatch.setenv("HN_PG_LOGIN_PASSWORD", password)
    dest = tmp_path / "pg"
    result = run_module("postgres_backup", {
        "dest": str(dest), "databases": [good, bad], "globals": False, "host": "127.0.0.1", "port": 5432,
        "login_user": login, "login_password": "{{ lookup('ansible.builtin.env', 'HN_PG_LOGIN_PASSWORD') }}"})
    assert result.get("failed"), result
    msg = result["msg"]
    assert msg.startswith(f"PostgreSQL backup failed: database {bad!r}: "), msg
    assert "permission denied for database" in msg and "CONNECT privilege" in msg, msg
    assert repr(good) not in msg and password not in json.dumps(result)
    assert "run the backup again" in msg
    assert os.listdir(dest) == [encode_name(good) + ".dump.zst"]
    nothing_executed([], pwned_before)


def writer(conn, table) -> Writer:
    """Inserts a row every 50 ms on its own connection (autocommit: committed when it returned); ``done`` keeps
    each row's id with the server's time after its commit."""

    def write(_n):
        (row_id,), = conn.run(f"INSERT INTO {qi(table)} (payload) VALUES (:payload) RETURNING id", payload=ALL_HOSTILE)
        (at,), = conn.run("SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')")
        return row_id, at

    return Writer(write)


@pytest.mark.slow
def test_concurrent_writer_every_row_committed_before_the_snapshot_is_restored(lab, names, tmp_path):
    pwned_before = pwned_state()
    db = f"{names.token} 동시 \"'\n;$(touch {PWNED})"
    table = "쓰기 로그\n'\""
    psql(f"CREATE DATABASE {qi(db)};")
    psql(f"CREATE TABLE {qi(table)} (id bigserial PRIMARY KEY, payload text, at timestamptz DEFAULT clock_timestamp());"
         f"INSERT INTO {qi(table)} (payload) SELECT 'seed ' || g FROM generate_series(1, 10) g;"
         # big enough for pg_dump to take a while, so the writer commits between the snapshot and its end
         "CREATE TABLE \"큰 표\" (id serial, v text);"
         "INSERT INTO \"큰 표\" (v) SELECT repeat(md5(g::text), 8) FROM generate_series(1, 150000) g;", db)
    conn = lab.postgres_connection(db)
    writes = writer(conn, table)
    writes.start()
    try:
        time.sleep(0.5)
        # the directory format: pg_dump --jobs workers share the exported snapshot
        final = make_set(tmp_path / "backups", {"postgres": ("postgres_backup", {
            "databases": [db], "globals": False, "format": "directory", "jobs": 2})})
        time.sleep(0.5)
    finally:
        writes.stop()
        conn.close()
    assert not writes.errors, writes.errors[:3]
    committed = [extra for _, _, extra in writes.done]
    entry = final["manifest"]["components"]["postgres"]
    snapshot_at = entry["database_details"][db]["snapshot_at"]
    committed_before = [i for i, at in committed if at < snapshot_at]
    committed_after = [i for i, at in committed if at > snapshot_at]
    assert committed_before and committed_after, (snapshot_at, committed[:3], committed[-3:])

    staging = tmp_path / "staging"
    common = {"set_path": final["path"], "staging": str(staging), "databases": [db], "safety_suffix": "__hn_pre"}
    restored = run_module("postgres_restore", {"step": "load", **common})
    assert not restored.get("failed"), restored.get("msg")
    assert restored["databases"][db]["safety_copy"] == db + "__hn_pre"
    verified = run_module("postgres_restore", {"step": "verify", **common})
    assert not verified.get("failed"), verified.get("msg")
    assert verified["differences"] == []

    ids = set(pj(f"SELECT coalesce(json_agg(id), '[]') FROM {qi(table)}", db))
    assert set(committed_before) <= ids
    written = [i for i, _ in committed]
    assert ids - set(range(1, 11)) <= set(written)  # nothing but seeds and the writer's committed rows
    kept = sorted(ids - set(range(1, 11)))
    assert kept == written[:len(kept)]  # one writer: the snapshot holds a prefix of its commits
    # the sequence is the dump's own value (read after the rows), so the restored one equals the manifest's
    (seq_key,) = [k for k in entry["fingerprint"][db]["sequences"] if k.startswith('public."쓰기')]
    assert entry["fingerprint"][db]["sequences"][seq_key] >= max(kept)
    assert entry["database_details"][db]["sequences_from_dump"] == 2
    assert entry["database_details"][db]["file"] == encode_name(db) + ".dir.tar.zst"

    cleaned = run_module("postgres_restore", {"step": "cleanup", **common, "keep_safety_copy": False})
    assert not cleaned.get("failed"), cleaned.get("msg")
    assert db + "__hn_pre" in cleaned["removed"]
    assert names.all_dbs() == [db]
    nothing_executed([], pwned_before)
    print(f"\nwriter: {len(committed_before)} rows before the snapshot, {len(committed_after)} after; "
          f"{len(kept)} restored")


def test_the_manifest_is_not_trusted(tmp_path):
    """A restore uses only plain file names that the entry lists (with a sha256) as regular files in the set."""
    folder = tmp_path / "set" / "postgres"
    folder.mkdir(parents=True)
    (folder / "a%2Fb.dump.zst").write_bytes(b"x")
    (tmp_path / "outside.dump.zst").write_bytes(b"x")
    (folder / "link.dump.zst").symlink_to(tmp_path / "outside.dump.zst")
    sha = "0" * 64

    def entry(file, listed=None):
        return {"format": "custom", "databases": ["a/b"], "database_details": {"a/b": {"file": file}},
                "globals_file": None, "files": [{"path": p, "sha256": sha} for p in (listed or [f"postgres/{file}"])]}

    dumps, globals_file = component_artefacts(str(tmp_path / "set"), entry("a%2Fb.dump.zst"))
    assert dumps == {"a/b": (str(folder / "a%2Fb.dump.zst"), sha, "custom")} and globals_file is None
    for bad, listed, why in [
        ("../outside.dump.zst", ["postgres/../outside.dump.zst"], "not a plain file name"),
        ("a/b.dump.zst", ["postgres/a/b.dump.zst"], "not a plain file name"),
        ("a%2Fb.dump.zst", [str(folder / "a%2Fb.dump.zst")], "not a path relative to the set"),
        ("a%2Fb.dump.zst", ["postgres/other.dump.zst"], "does not list it"),
        ("link.dump.zst", None, "outside the set"),
        ("missing.dump.zst", None, "missing"),
    ]:
        with pytest.raises(PostgresError, match=why):
            component_artefacts(str(tmp_path / "set"), entry(bad, listed))


def test_globals_and_sequence_values_are_read_by_statement(names):
    """A role name holding a newline, ';', a dollar tag or 'CREATE ROLE' stays inside its statement (applied twice:
    the second time the role exists and is tolerated); a psql meta-command in the file is refused."""
    role = f'{names.token}$llmops$;\nCREATE ROLE {names.token}_evil; "q" \\ $(id)'
    assert len(role.encode()) <= 63
    sql = f"\\restrict k\nSET client_encoding = 'UTF8';\nCREATE ROLE {qi(role)};\nALTER ROLE {qi(role)} WITH NOLOGIN;\n"
    rewritten, roles = tolerant_globals(sql)
    assert roles == [role]
    statements = split_sql(rewritten)
    assert [s.split(" ", 2)[:2] for s in statements] == [["SET", "client_encoding"], ["DO", "$llmops1$"],
                                                          ["ALTER", "ROLE"]]
    assert statements[1].startswith(f"DO $llmops1$ BEGIN CREATE ROLE {qi(role)}; EXCEPTION")
    assert statements[1].endswith("END $llmops1$")
    psql(rewritten)
    psql(rewritten)  # the role exists now: a NOTICE, no error
    assert names.all_roles() == [role]
    with pytest.raises(ValueError, match="meta-command"):
        tolerant_globals(sql + "\\! touch /tmp/pwned\n")
    setval = ("SELECT pg_catalog.setval('\"a/b\".\"q\"\"d''b\n;_seq\"', 42, true);\n"
              "SELECT pg_catalog.setval('public.plain_seq', 1, false);\n")
    assert parse_setval(setval) == {("a/b", "q\"d'b\n;_seq"): 42, ("public", "plain_seq"): None}
