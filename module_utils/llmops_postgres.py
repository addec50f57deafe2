"""PostgreSQL backups: ``pg_dump`` per database, ``pg_dumpall --globals-only``, and the data
fingerprint a restore is verified against.

Tools run through ``ExecTarget``: by default inside the server's own container as the OS user
``postgres`` (peer authentication over the local socket, so no password at all, and ``pg_dump``
always matches the server's version), or on this host over TCP. A password, when one is needed,
travels in ``PGPASSWORD`` (passed to ``docker exec`` by name), never on a command line.

Consistency: each database is dumped inside one exported snapshot. A ``psql`` session opens a
``REPEATABLE READ`` transaction and exports its snapshot; the fingerprint is computed in that
transaction and ``pg_dump --snapshot`` reads exactly the same data, so a restore's fingerprint
equals the recorded one even while applications keep writing.

Every dump goes through the shared ``run_pipeline`` (tool | zstd | sha256 | file) and is then
validated by streaming the artefact back (``decompress_to``, which checks its sha256) into
``pg_restore --list``, whose table of contents must list TABLE DATA entries when the database
has tables.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import tempfile
import threading
import time

from ansible.module_utils.llmops_backupset import run_times, utc
from ansible.module_utils.llmops_exec import ExecError
from ansible.module_utils.llmops_pipeline import decompress_to, redact_text, run_pipeline

PWD_ENV = "PGPASSWORD"  # noqa: S105 - the variable's name, not a password
GLOBALS_ARTEFACT = "globals.sql.zst"
FORMATS = {"custom": ("c", ".dump.zst"), "directory": ("d", ".dir.tar.zst")}

# One statement, one line of JSON. Per table: its row count and an order-independent hash of its
# rows (the sum of the first 60 bits of md5(row::text) over all rows, itself hashed with md5):
# constant memory on tables of any size. query_to_xml runs the per-table query server-side with
# the names quoted by format('%I'), so nothing needs to be created in the database. Objects of
# pg_catalog, information_schema and the toast/temp schemas are left out.
FINGERPRINT_SQL = " ".join("""
SELECT json_build_object(
  'tables', (SELECT coalesce(json_object_agg(name, json_build_object(
                 'rows', ((xpath('/row/n/text()', x))[1])::text::bigint,
                 'md5', ((xpath('/row/m/text()', x))[1])::text) ORDER BY name), '{}')
             FROM (SELECT format('%s.%s', n.nspname, c.relname) AS name,
                          query_to_xml(format('SELECT count(*) AS n, md5(coalesce(sum((''x'' || ' ||
                              'left(md5(t::text), 15))::bit(60)::bigint), 0)::text) AS m FROM ONLY %I.%I t',
                              n.nspname, c.relname), false, true, '') AS x
                   FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                   WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema')
                     AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%') q),
  'sequences', (SELECT coalesce(json_object_agg(format('%s.%s', schemaname, sequencename), last_value
                                                ORDER BY schemaname, sequencename), '{}')
                FROM pg_sequences WHERE schemaname NOT IN ('pg_catalog', 'information_schema')),
  'views', (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE c.relkind IN ('v', 'm') AND n.nspname NOT IN ('pg_catalog', 'information_schema')),
  'functions', (SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')),
  'triggers', (SELECT count(*) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
               JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE NOT t.tgisinternal AND n.nspname NOT IN ('pg_catalog', 'information_schema'))
)::text;
""".split())


class PostgresError(Exception):
    """A PostgreSQL backup step failed; the message says which and why."""


def _env(password):
    return {PWD_ENV: password} if password else {}


def conninfo(database):
    """A libpq connection string naming ``database`` (safe for any name, also one holding ``=``)."""
    return "dbname='%s'" % database.replace("\\", "\\\\").replace("'", "\\'")


def client_args(conn):
    """Connection options of the client tools for ``conn`` (dict: host, port, user); none = local socket."""
    conn = conn or {}
    args = []
    if conn.get("host"):
        args += ["--host=%s" % conn["host"], "--port=%d" % int(conn.get("port") or 5432)]
    if conn.get("user"):
        args.append("--username=%s" % conn["user"])
    return args + ["--no-password"]


def psql_argv(conn, database="postgres"):
    """``psql`` reading SQL on stdin: unaligned, tuples only, stop at the first error."""
    return ["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"] + client_args(conn) + [
        "--dbname=%s" % conninfo(database)]


def query(target, sql, database="postgres", conn=None, password=None, timeout=600):
    """Run ``sql`` (fed on stdin) in ``database``; return its output lines (one per row, fields split by ``|``)."""
    try:
        out = target.text(psql_argv(conn, database), env=_env(password), stdin=sql.encode("utf-8"), timeout=timeout)
    except ExecError as exc:
        raise PostgresError(str(exc)) from exc
    return out.splitlines()


def server_version(target, conn=None, password=None):
    """The server's version string, e.g. ``15.20 (Debian 15.20-0+deb12u1)``."""
    return query(target, "SHOW server_version;", conn=conn, password=password)[0].strip()


def tool_version(target, tool="pg_dump"):
    """``pg_dump --version`` at the target, e.g. ``pg_dump (PostgreSQL) 15.20 (Debian 15.20-0+deb12u1)``."""
    try:
        return target.text([tool, "--version"]).strip()
    except ExecError as exc:
        raise PostgresError(str(exc)) from exc


def database_sizes(target, conn=None, password=None, include_postgres=False):
    """``{name: bytes}`` of every connectable, non-template database (``postgres`` only when asked)."""
    rows = query(target, "SELECT json_object_agg(datname, pg_database_size(datname) ORDER BY datname) FROM "
                         "pg_database WHERE NOT datistemplate AND datallowconn;", conn=conn, password=password)
    sizes = json.loads(rows[0]) if rows and rows[0].strip() else {}
    if not include_postgres:
        sizes.pop("postgres", None)
    return sizes


def list_databases(target, conn=None, password=None, include_postgres=False):
    """Names of the connectable, non-template databases, sorted (``postgres`` only when asked)."""
    return sorted(database_sizes(target, conn, password, include_postgres))


def select_databases(target, requested=None, conn=None, password=None):
    """The databases to dump with their sizes: ``requested`` (all of them must exist) or all but ``postgres``.

    Raises ``PostgresError`` naming the missing ones, before anything is written.
    """
    sizes = database_sizes(target, conn, password, include_postgres=True)
    if not requested:
        return {db: size for db, size in sizes.items() if db != "postgres"}
    missing = [db for db in requested if db not in sizes]
    if missing:
        raise PostgresError("database(s) not found on the server (or not connectable): %s; existing: %s"
                            % (", ".join(missing), ", ".join(sorted(sizes)) or "none"))
    return {db: sizes[db] for db in requested}


def _parse_fingerprint(line):
    value = json.loads(line)
    value["tables"] = dict(sorted((value.get("tables") or {}).items()))
    value["sequences"] = dict(sorted((value.get("sequences") or {}).items()))
    return value


def fingerprint(target, databases, conn=None, password=None, timeout=600):
    """The data fingerprint of each of ``databases``.

    Returns ``{db: {"tables": {"schema.table": {"rows": n, "md5": "..."}}, "sequences": {"schema.seq":
    last_value}, "views": n, "functions": n, "triggers": n}}``. A restore is correct when its
    fingerprint equals the one recorded at backup time.
    """
    result = {}
    for db in databases:
        rows = query(target, FINGERPRINT_SQL, db, conn=conn, password=password, timeout=timeout)
        result[db] = _parse_fingerprint(rows[0])
    return result


class SnapshotSession:
    """A ``psql`` session holding a read-only REPEATABLE READ transaction whose snapshot is exported.

    ``snapshot`` is the id to give ``pg_dump --snapshot``; ``fingerprint()`` runs in the very same
    snapshot. Use as a context manager: leaving it ends the transaction (and the snapshot).
    """

    def __init__(self, target, database, conn=None, password=None, timeout=None):
        env = _env(password)
        self.database = database
        self.redact = [password] if password else []
        self._stderr = tempfile.TemporaryFile()
        argv = target.argv(psql_argv(conn, database), env_names=env.keys(), interactive=True)
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
                                     env=target.env(env), start_new_session=True)
        self._timer = None
        if timeout:
            self._timer = threading.Timer(timeout, self.proc.kill)
            self._timer.daemon = True
            self._timer.start()
        self.snapshot = self.query_line("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; "
                                        "SELECT pg_export_snapshot();")

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def query_line(self, sql):
        """Send ``sql`` (one statement returning one line) and return that line."""
        try:
            self.proc.stdin.write(sql.encode("utf-8") + b"\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        except OSError:
            line = b""
        if not line:
            self._end()
            message = self._stderr_text() or "(no error output)"
            self.close()
            raise PostgresError("psql on database %s failed (exit code %s): %s"
                                % (self.database, self.proc.returncode, message))
        return line.decode("utf-8").rstrip("\n")

    def fingerprint(self):
        """The fingerprint (see ``fingerprint``) of this database in the exported snapshot."""
        return _parse_fingerprint(self.query_line(FINGERPRINT_SQL))

    def _stderr_text(self):
        try:
            self._stderr.seek(0)
            text = self._stderr.read()[-2048:].decode("utf-8", "replace").strip()
        except (OSError, ValueError):
            return ""
        return redact_text(text, self.redact)

    def _end(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(b"COMMIT;\n\\q\n")
                self.proc.stdin.close()
            except OSError:
                pass
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def close(self):
        """End the transaction and the session."""
        self._end()
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass
        if self._timer is not None:
            self._timer.cancel()
        self._stderr.close()


def _scratch(prefix):
    # at the target (mostly the data store's container); random, and removed after use
    return "/tmp/llmops-%s-%s" % (prefix, secrets.token_hex(6))  # noqa: S108


def _cleanup(target, *paths):
    try:
        target.run(["rm", "-rf"] + list(paths))
    except ExecError:
        pass


def parse_restore_list(text):
    """Count the entries of a ``pg_restore --list`` table of contents: ``{"total": n, "table_data": n}``."""
    entries = [line for line in text.splitlines() if line.strip() and not line.startswith(";")]
    return {"total": len(entries), "table_data": sum(1 for line in entries if " TABLE DATA " in line)}


def restore_list(target, artefact, sha256, fmt="custom", timeout=None):
    """Stream ``artefact`` back (checking its sha256) into ``pg_restore --list`` at ``target``; count its entries.

    The custom format is read from stdin (the rest of the stream is drained, so the whole file is
    hashed); the directory format is unpacked into a scratch folder first.
    """
    scratch = _scratch("pglist")
    if fmt == "directory":
        script = 'mkdir -p "$0.d" && tar -C "$0.d" -xf - && exec pg_restore --list -f "$0" "$0.d"'
    else:
        script = 'pg_restore --list -f "$0" && exec cat >/dev/null'
    try:
        decompress_to(artefact, target.argv(["sh", "-c", script, scratch], interactive=True), expected_sha256=sha256,
                      timeout=timeout, consumer_name="pg_restore --list")
        text = target.text(["cat", scratch])
    finally:
        _cleanup(target, scratch, scratch + ".d")
    return parse_restore_list(text)


def dump_database(target, database, dest_dir, conn=None, password=None, fmt="custom", jobs=1, snapshot=None,
                  zstd_level=3, zstd_threads=0, timeout=None):
    """Dump ``database`` with ``pg_dump`` into ``dest_dir/<db>.dump.zst`` (or ``<db>.dir.tar.zst``) and validate it.

    The custom format streams from ``pg_dump -Fc`` straight into the pipeline. The directory
    format (``jobs`` parallel workers) is written into a scratch folder at the target first and
    streamed out as a tar. Returns ``{"path", "sha256", "size", "bytes_raw", "list": {...}}``.
    """
    letter, suffix = FORMATS[fmt]
    dest = os.path.join(dest_dir, database + suffix)
    env = _env(password)
    argv = ["pg_dump", "--format=%s" % letter, "--compress=0"] + client_args(conn)
    if snapshot:
        argv.append("--snapshot=%s" % snapshot)
    argv.append("--dbname=%s" % conninfo(database))
    if fmt == "directory":
        scratch = _scratch("pgdump")
        try:
            target.run(argv + ["--jobs=%d" % max(1, int(jobs)), "--file=%s" % scratch], env=env, timeout=timeout)
            result = run_pipeline(target.argv(["tar", "-C", scratch, "-cf", "-", "."]), dest, zstd_level=zstd_level,
                                  zstd_threads=zstd_threads, timeout=timeout, source_name="tar (pg_dump -Fd)")
        except ExecError as exc:
            raise PostgresError(str(exc)) from exc
        finally:
            _cleanup(target, scratch)
    else:
        result = run_pipeline(target.argv(argv, env_names=env.keys()), dest, env=env, zstd_level=zstd_level,
                              zstd_threads=zstd_threads, timeout=timeout, source_name="pg_dump")
    listing = restore_list(target, dest, result.sha256, fmt=fmt, timeout=timeout)
    return {"path": dest, "sha256": result.sha256, "size": result.bytes_out, "bytes_raw": result.bytes_in,
            "list": listing}


def dump_plain(target, database, dest_dir, conn=None, password=None, snapshot=None, zstd_level=3, zstd_threads=0,
               timeout=None):
    """A plain SQL copy (``pg_dump -Fp``) of ``database`` into ``dest_dir/<db>.sql.zst`` (restores with psql)."""
    env = _env(password)
    argv = ["pg_dump", "--format=p"] + client_args(conn)
    if snapshot:
        argv.append("--snapshot=%s" % snapshot)
    dest = os.path.join(dest_dir, database + ".sql.zst")
    result = run_pipeline(target.argv(argv + ["--dbname=%s" % conninfo(database)], env_names=env.keys()), dest,
                          env=env, zstd_level=zstd_level, zstd_threads=zstd_threads, timeout=timeout,
                          source_name="pg_dump -Fp")
    return {"path": dest, "sha256": result.sha256, "size": result.bytes_out, "bytes_raw": result.bytes_in}


def dump_globals(target, dest_dir, conn=None, password=None, zstd_level=3, zstd_threads=0, timeout=None):
    """Roles, their memberships and tablespaces (``pg_dumpall --globals-only``) into ``dest_dir/globals.sql.zst``."""
    env = _env(password)
    dest = os.path.join(dest_dir, GLOBALS_ARTEFACT)
    argv = ["pg_dumpall", "--globals-only"] + client_args(conn) + ["--dbname=%s" % conninfo("postgres")]
    result = run_pipeline(target.argv(argv, env_names=env.keys()), dest, env=env, zstd_level=zstd_level,
                          zstd_threads=zstd_threads, timeout=timeout, source_name="pg_dumpall")
    return {"path": dest, "sha256": result.sha256, "size": result.bytes_out, "bytes_raw": result.bytes_in}


def _file(item):
    return {"path": item["path"], "sha256": item["sha256"], "size": item["size"]}


def backup(target, dest_dir, databases=None, conn=None, password=None, include_globals=True, plain_sql=False,
           fmt="custom", jobs=1, zstd_level=3, zstd_threads=0, timeout=None):
    """Dump the selected databases (and the globals) into ``dest_dir``; return the manifest entry.

    Each database is fingerprinted and dumped (custom/directory and, with ``plain_sql``, plain SQL)
    in one exported snapshot, then validated with ``pg_restore --list``. Raises ``PostgresError``
    (or ``PipelineError``) on the first failure; a failed pipeline leaves no partial file.
    """
    if fmt not in FORMATS:
        raise PostgresError("format must be one of %s, got %r" % (", ".join(sorted(FORMATS)), fmt))
    started = utc()
    t0 = time.monotonic()
    selected = select_databases(target, databases, conn, password)
    version = server_version(target, conn, password)
    files, fps, lists, details = [], {}, {}, {}
    for db in selected:
        with SnapshotSession(target, db, conn, password, timeout=timeout) as session:
            fps[db] = session.fingerprint()
            dump = dump_database(target, db, dest_dir, conn, password, fmt=fmt, jobs=jobs, snapshot=session.snapshot,
                                 zstd_level=zstd_level, zstd_threads=zstd_threads, timeout=timeout)
            plain = None
            if plain_sql:
                plain = dump_plain(target, db, dest_dir, conn, password, snapshot=session.snapshot,
                                   zstd_level=zstd_level, zstd_threads=zstd_threads, timeout=timeout)
        if fps[db]["tables"] and not dump["list"]["table_data"]:
            raise PostgresError("pg_restore --list of %s shows no TABLE DATA entry although the database has %d "
                                "table(s): the dump is unusable" % (dump["path"], len(fps[db]["tables"])))
        lists[db] = dump["list"]
        files.append(_file(dump))
        details[db] = {"artefact": dump["path"], "size_on_server": selected[db], "bytes_raw": dump["bytes_raw"],
                       "plain_sql": plain["path"] if plain else None}
        if plain:
            files.append(_file(plain))
    if include_globals:
        files.append(_file(dump_globals(target, dest_dir, conn, password, zstd_level=zstd_level,
                                        zstd_threads=zstd_threads, timeout=timeout)))
    return {
        "status": "success",
        "type": "postgres",
        "backup_type": "full",
        "tool": "pg_dump",
        "tool_version": tool_version(target),
        "server_version": version,
        "format": fmt,
        **run_times(started, t0),
        "bytes": sum(f["size"] for f in files),
        "files": files,
        "databases": sorted(selected),
        "database_details": details,
        "globals": bool(include_globals),
        "fingerprint": fps,
        "pg_restore_list_entries": lists,
    }
