"""PostgreSQL backups: ``pg_dump`` per database, ``pg_dumpall --globals-only``, and the data
fingerprint a restore is verified against.

Tools run through ``ExecTarget``: by default inside the server's own container as the OS user
``postgres`` (peer authentication over the local socket, so no password at all, and ``pg_dump``
always matches the server's version), or on this host over TCP. A password, when one is needed,
travels in ``PGPASSWORD`` (passed to ``docker exec`` by name), never on a command line.

Names are data. A database, schema, table, column or role may be called anything PostgreSQL
accepts (Korean, emoji, quotes, backslashes, ``;``, ``$(...)``, tabs, newlines, ``/``, ``..``):

* an artefact's file name is ``encode_name(<database>)`` plus the format's suffix (one safe path
  component), and the manifest entry records the mapping (``database_details[<db>].file``); a
  restore reads it from there and never builds a path from a name;
* a name reaches a tool as one argv element or inside a libpq connection string quoted per
  libpq's rules (``conninfo``), never through a shell; in SQL it is quoted by the server
  (``format('%I')``) or by ``quote_ident`` / ``quote_literal`` here;
* every session sets its client encoding explicitly (``SET client_encoding``, ``--encoding``), and
  values are read as one JSON document per query (``query_json``): no output is split on a
  character that a name may hold.

Consistency: each database is dumped inside one exported snapshot. A ``psql`` session opens a
``REPEATABLE READ`` transaction and exports its snapshot (recording the server time just before it,
``snapshot_at``: every transaction committed before that time is in the dump); the fingerprint is
computed in that transaction and ``pg_dump --snapshot`` reads exactly the same rows. Sequences are
the one thing no snapshot covers (their state is not transactional and ``pg_dump`` reads it when it
gets there), so their values in the fingerprint are the ones the dump itself holds, read back from
its ``SEQUENCE SET`` entries: a restore's fingerprint equals the recorded one even while applications
keep writing.

Every dump goes through the shared ``run_pipeline`` (tool | zstd | sha256 | file) and is then
validated by streaming the artefact back (``decompress_to``, which checks its sha256) into
``pg_restore --list``, whose table of contents must list TABLE DATA entries when the database
has tables.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import subprocess
import tempfile
import threading
import time

from ansible.module_utils.llmops_backupset import BackupSetError, encode_name, run_times, utc
from ansible.module_utils.llmops_common import LlmopsError
from ansible.module_utils.llmops_exec import ExecError
from ansible.module_utils.llmops_pipeline import PipelineError, decompress_to, redact_text, run_pipeline

PWD_ENV = "PGPASSWORD"  # noqa: S105 - the variable's name, not a password
CLIENT_ENCODING = "UTF8"
# Sent first in every psql session: names and JSON travel as UTF-8 whatever the server's or locale's default.
SESSION_SETUP = "SET client_encoding TO '%s';\n" % CLIENT_ENCODING
GLOBALS_ARTEFACT = "globals.sql.zst"
PLAIN_SUFFIX = ".sql.zst"
FORMATS = {"custom": ("c", ".dump.zst"), "directory": ("d", ".dir.tar.zst")}

# How the fingerprint names tables and sequences: "<schema>.<name>", each part quoted like the
# server's quote_ident (so "a.b"."c" and "a"."b.c" stay apart). Recorded in the manifest entry as
# ``fingerprint_keys``; entries without it were written with the legacy, unquoted "%s.%s".
FINGERPRINT_KEYS = "quote_ident"
_KEY_FORMATS = {"quote_ident": "%I.%I", "legacy": "%s.%s"}

# One statement, one JSON document. Per table: its row count and an order-independent hash of its
# rows (the sum of the first 60 bits of md5(row::text) over all rows, itself hashed with md5):
# constant memory on tables of any size. query_to_xml runs the per-table query server-side (in the
# same transaction, so in the same snapshot) with the names quoted by format('%I'), so nothing needs
# to be created in the database. Objects of pg_catalog, information_schema and the toast/temp
# schemas are left out.
_FINGERPRINT_TEMPLATE = """
SELECT json_build_object(
  'tables', (SELECT coalesce(json_object_agg(name, json_build_object(
                 'rows', ((xpath('/row/n/text()', x))[1])::text::bigint,
                 'md5', ((xpath('/row/m/text()', x))[1])::text) ORDER BY name), '{}')
             FROM (SELECT format('@KEY@', n.nspname, c.relname) AS name,
                          query_to_xml(format('SELECT count(*) AS n, md5(coalesce(sum((''x'' || ' ||
                              'left(md5(t::text), 15))::bit(60)::bigint), 0)::text) AS m FROM ONLY %I.%I t',
                              n.nspname, c.relname), false, true, '') AS x
                   FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                   WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema')
                     AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%') q),
  'sequences', (SELECT coalesce(json_object_agg(format('@KEY@', schemaname, sequencename), last_value
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
"""


def fingerprint_sql(keys=FINGERPRINT_KEYS):
    """The fingerprint query, naming tables and sequences as ``keys`` says (see ``FINGERPRINT_KEYS``)."""
    if keys not in _KEY_FORMATS:
        raise PostgresError("unknown fingerprint key style %r (known: %s)" % (keys, ", ".join(sorted(_KEY_FORMATS))))
    return " ".join(_FINGERPRINT_TEMPLATE.replace("@KEY@", _KEY_FORMATS[keys]).split())


FINGERPRINT_SQL = fingerprint_sql()
# The fingerprint's key of each sequence with its schema and name, to match the dump's SEQUENCE SET entries.
SEQUENCE_NAMES_SQL = ("SELECT coalesce(json_agg(json_build_array(format('%I.%I', schemaname, sequencename), "
                      "schemaname, sequencename)), '[]')::text FROM pg_sequences "
                      "WHERE schemaname NOT IN ('pg_catalog', 'information_schema');")
SNAPSHOT_SQL = ("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; "
                "SELECT json_build_object('snapshot', pg_export_snapshot(), 'at', "
                "to_char(statement_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'))::text;")


class PostgresError(LlmopsError):
    """A PostgreSQL backup step failed; the message says which and why."""


def _env(password):
    return {PWD_ENV: password} if password else {}


# --------------------------------------------------------------------------------------------
# quoting, names and SQL text


def quote_ident(name):
    """``name`` as an SQL identifier, always double-quoted (``"`` doubled): right for any name."""
    return '"%s"' % name.replace('"', '""')


def quote_literal(value):
    """``value`` as an SQL string literal, right whatever ``standard_conforming_strings`` says.

    Like the server's ``quote_literal``: quotes are doubled, and a value holding a backslash is
    written ``E'...'`` with the backslashes doubled.
    """
    text = value.replace("'", "''")
    if "\\" in value:
        return "E'%s'" % text.replace("\\", "\\\\")
    return "'%s'" % text


def conninfo(database):
    """A libpq connection string naming ``database``: its value single-quoted, ``\\`` and ``'`` escaped.

    Right for any name, also one holding ``=``, spaces, quotes or newlines (``pg_dump --dbname``
    takes a connection string whenever the value holds ``=``, so a bare name is never passed).
    """
    return "dbname='%s'" % database.replace("\\", "\\\\").replace("'", "\\'")


def check_file_name(name, what="file name"):
    """``name`` when it is one plain path component (not empty, ``.`` or ``..``; no ``/``, no NUL).

    Raises ``PostgresError`` otherwise: a file name from a manifest is never trusted to stay inside its folder.
    """
    if not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\0" in name:
        raise PostgresError("%s %r is not a plain file name (one path component): the manifest is damaged or was "
                            "altered; restore from another set" % (what, name))
    return name


def artefact_path(dest_dir, file_name):
    """``dest_dir/file_name`` after checking that ``file_name`` is one path component (see ``check_file_name``)."""
    path = os.path.join(dest_dir, check_file_name(file_name, "artefact name"))
    if os.path.dirname(os.path.abspath(path)) != os.path.abspath(dest_dir):
        raise PostgresError("artefact %r would not lie directly in %s" % (file_name, dest_dir))
    return path


def artefact_files(databases, fmt="custom", plain_sql=False):
    """``{db: {"dump": file, "plain_sql": file | None}}``: the artefact file names of ``databases``.

    Each is ``encode_name(db)`` plus the suffix of its kind: one safe path component, whatever the
    name holds. The names are unique in the component's folder (the globals' file included): a
    clash (a database called ``globals`` with ``plain_sql``) gets 8 hex digits of the name's sha256.
    """
    if fmt not in FORMATS:
        raise PostgresError("format must be one of %s, got %r" % (", ".join(sorted(FORMATS)), fmt))
    used = {GLOBALS_ARTEFACT}
    result = {}
    for db in sorted(databases):
        try:
            stem = encode_name(db)
        except BackupSetError as exc:
            raise PostgresError(str(exc)) from exc
        names = {"dump": FORMATS[fmt][1], "plain_sql": PLAIN_SUFFIX if plain_sql else None}
        for kind, suffix in sorted(names.items()):
            if suffix is None:
                continue
            name = stem + suffix
            if name in used:
                name = "%s~%s%s" % (stem, hashlib.sha256(db.encode("utf-8", "surrogatepass")).hexdigest()[:8], suffix)
            if name in used:  # pragma: no cover - would need a sha256 prefix collision
                raise PostgresError("two artefacts of database %r would both be called %s" % (db, name))
            used.add(name)
            names[kind] = name
        result[db] = names
    return result


_DOLLAR_TAG_RE = re.compile(r"\$(?:[A-Za-z_\u0080-\U0010ffff][A-Za-z0-9_\u0080-\U0010ffff]*)?\$")
_ALLOWED_META = ("\\restrict", "\\unrestrict")  # pg_dump's own guards (15.14+), harmless to skip


def _ident_char(ch):
    return ch.isalnum() or ch in "_$" or ord(ch) > 127


def split_sql(text):
    """The statements of an SQL script (as written by pg_dump / pg_dumpall), without their ``;``.

    A small lexer that knows quoted identifiers (``"..."``), string literals (``'...'``,
    ``E'...'``), dollar quoting, comments and psql meta-command lines, so that a ``;`` or a newline
    inside a name or a value never splits a statement. Comments and pg_dump's ``\\restrict`` /
    ``\\unrestrict`` lines are dropped; any other psql meta-command raises ``ValueError`` (a
    script we rewrite and feed to psql must not run one). An unterminated quote raises too.
    """
    statements = []
    start = None
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if start is None:
            if ch.isspace() or ch == ";":
                i += 1
                continue
            if text.startswith("--", i):
                end = text.find("\n", i)
                i = n if end < 0 else end + 1
                continue
            if text.startswith("/*", i):
                i = _skip_block_comment(text, i)
                continue
            if ch == "\\":
                end = text.find("\n", i)
                line = text[i:n if end < 0 else end]
                if line.split(" ", 1)[0] not in _ALLOWED_META:
                    raise ValueError("psql meta-command %r in the script" % line[:80])
                i = n if end < 0 else end + 1
                continue
            start = i
        if ch == "'":
            escapes = i > start and text[i - 1] in "eE" and (i - 1 == start or not _ident_char(text[i - 2]))
            i = _skip_string(text, i, escapes)
        elif ch == '"':
            i = _skip_quoted(text, i, '"')
        elif ch == "$" and (i == start or not _ident_char(text[i - 1])) and _DOLLAR_TAG_RE.match(text, i):
            tag = _DOLLAR_TAG_RE.match(text, i).group(0)
            end = text.find(tag, i + len(tag))
            if end < 0:
                raise ValueError("unterminated dollar-quoted string at offset %d" % i)
            i = end + len(tag)
        elif text.startswith("--", i):
            end = text.find("\n", i)
            i = n if end < 0 else end + 1
        elif text.startswith("/*", i):
            i = _skip_block_comment(text, i)
        elif ch == "\\":
            raise ValueError("psql meta-command inside a statement at offset %d" % i)
        elif ch == ";":
            statements.append(text[start:i].rstrip())
            start = None
            i += 1
        else:
            i += 1
    if start is not None and text[start:].strip():
        statements.append(text[start:].rstrip())
    return statements


def _skip_quoted(text, i, quote):
    """The offset after the quoted token starting at ``i`` (a doubled quote stands for itself)."""
    j = i + 1
    while True:
        end = text.find(quote, j)
        if end < 0:
            raise ValueError("unterminated %s at offset %d" % ("identifier" if quote == '"' else "string", i))
        if text.startswith(quote * 2, end):
            j = end + 2
            continue
        return end + 1


def _skip_string(text, i, escapes):
    if not escapes:
        return _skip_quoted(text, i, "'")
    j = i + 1
    while j < len(text):
        if text[j] == "\\":
            j += 2
        elif text[j] == "'":
            if text.startswith("''", j):
                j += 2
            else:
                return j + 1
        else:
            j += 1
    raise ValueError("unterminated string at offset %d" % i)


def _skip_block_comment(text, i):
    depth, j = 0, i
    while j < len(text):
        if text.startswith("/*", j):
            depth += 1
            j += 2
        elif text.startswith("*/", j):
            depth -= 1
            j += 2
            if depth == 0:
                return j
        else:
            j += 1
    raise ValueError("unterminated comment at offset %d" % i)


_NAME_PART_RE = re.compile(r'"((?:[^"]|"")*)"|([^".]+)')


def split_qualified_name(text):
    """``['schema', 'name']`` from ``schema.name`` written as pg_dump writes it (each part bare or ``"quoted"``)."""
    parts, pos = [], 0
    while True:
        match = _NAME_PART_RE.match(text, pos)
        if not match:
            raise ValueError("not a qualified name: %r" % text[:200])
        parts.append(match.group(1).replace('""', '"') if match.group(1) is not None else match.group(2))
        pos = match.end()
        if pos == len(text):
            return parts
        if text[pos] != ".":
            raise ValueError("not a qualified name: %r" % text[:200])
        pos += 1


# --------------------------------------------------------------------------------------------
# sessions and queries


def client_args(conn):
    """Connection options of the client tools for ``conn`` (dict: host, port, user, socket).

    ``host`` connects over TCP; ``socket`` is the folder holding the server's unix socket (libpq takes
    it as the host, and the port names the socket file); neither = the client's default socket.
    """
    conn = conn or {}
    args = []
    if conn.get("host") or conn.get("socket"):
        args += ["--host=%s" % (conn.get("host") or conn["socket"]), "--port=%d" % int(conn.get("port") or 5432)]
    if conn.get("user"):
        args.append("--username=%s" % conn["user"])
    return args + ["--no-password"]


def psql_argv(conn, database="postgres"):
    """``psql`` reading SQL on stdin: unaligned, tuples only, quiet, stop at the first error."""
    return ["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"] + client_args(conn) + [
        "--dbname=%s" % conninfo(database)]


def _psql(target, sql, database, conn, password, timeout):
    stdin = (SESSION_SETUP + sql).encode("utf-8", "surrogateescape")
    try:
        return target.text(psql_argv(conn, database), env=_env(password), stdin=stdin, timeout=timeout)
    except ExecError as exc:
        raise PostgresError("psql on database %r: %s" % (database, exc)) from exc


def query(target, sql, database="postgres", conn=None, password=None, timeout=600):
    """Run ``sql`` (fed on stdin after ``SET client_encoding``) in ``database``; return psql's output lines.

    For statements whose output is not read; values are read with ``query_json``.
    """
    return _psql(target, sql, database, conn, password, timeout).splitlines()


def query_json(target, sql, database="postgres", conn=None, password=None, timeout=600):
    """Run ``sql``, one statement returning one JSON document, in ``database``; return it parsed (None for NULL).

    The whole output is that one document: names inside it are JSON strings, so nothing is
    split on a character that a name may hold.
    """
    text = _psql(target, sql, database, conn, password, timeout).strip()
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise PostgresError("psql on database %r returned no single JSON document: %r" % (database, text[:200])) \
            from exc


def server_version(target, conn=None, password=None):
    """The server's version string, e.g. ``15.20 (Debian 15.20-0+deb12u1)``."""
    return query_json(target, "SELECT to_json(current_setting('server_version'));", conn=conn, password=password)


def tool_version(target, tool="pg_dump"):
    """``pg_dump --version`` at the target, e.g. ``pg_dump (PostgreSQL) 15.20 (Debian 15.20-0+deb12u1)``."""
    try:
        return target.text([tool, "--version"]).strip()
    except ExecError as exc:
        raise PostgresError(str(exc)) from exc


def database_sizes(target, conn=None, password=None, include_postgres=False):
    """``{name: bytes}`` of every connectable, non-template database (``postgres`` only when asked)."""
    sizes = query_json(target, "SELECT coalesce(json_object_agg(datname, pg_database_size(oid) ORDER BY datname), "
                               "'{}') FROM pg_database WHERE NOT datistemplate AND datallowconn;",
                       conn=conn, password=password) or {}
    if not include_postgres:
        sizes.pop("postgres", None)
    return sizes


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
                            % (", ".join(repr(db) for db in missing),
                               ", ".join(repr(db) for db in sorted(sizes)) or "none"))
    return {db: sizes[db] for db in requested}


def _parse_fingerprint(value):
    if not isinstance(value, dict):
        raise PostgresError("the fingerprint query returned %r, not a JSON object" % (value,))
    value["tables"] = dict(sorted((value.get("tables") or {}).items()))
    value["sequences"] = dict(sorted((value.get("sequences") or {}).items()))
    return value


def fingerprint(target, databases, conn=None, password=None, timeout=600, keys=FINGERPRINT_KEYS):
    """The data fingerprint of each of ``databases`` (each read in one statement, so in one snapshot).

    Returns ``{db: {"tables": {"schema.table": {"rows": n, "md5": "..."}}, "sequences": {"schema.seq":
    last_value}, "views": n, "functions": n, "triggers": n}}``, the names quoted as ``keys`` says
    (see ``FINGERPRINT_KEYS``). A restore is correct when its fingerprint equals the one recorded at
    backup time.
    """
    sql = fingerprint_sql(keys)
    return {db: _parse_fingerprint(query_json(target, sql, db, conn=conn, password=password, timeout=timeout))
            for db in databases}


class SnapshotSession:
    """A ``psql`` session holding a read-only REPEATABLE READ transaction whose snapshot is exported.

    ``snapshot`` is the id to give ``pg_dump --snapshot``; ``snapshot_at`` the server's UTC time
    (ISO 8601) when the statement that took the snapshot arrived, so every transaction committed
    before it is in the snapshot. ``fingerprint()`` runs in the very same snapshot. Use as a
    context manager: leaving it ends the transaction (and the snapshot).
    """

    def __init__(self, target, database, conn=None, password=None, timeout=None):
        env = _env(password)
        self.database = database
        self.timeout = timeout
        self.timed_out = False
        self.redact = [password] if password else []
        self._stderr = tempfile.TemporaryFile()
        argv = target.argv(psql_argv(conn, database), env_names=env.keys(), interactive=True)
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
                                     env=target.env(env), start_new_session=True)
        self._timer = None
        if timeout:
            self._timer = threading.Timer(timeout, self._expire)
            self._timer.daemon = True
            self._timer.start()
        info = self.query_json(SESSION_SETUP + SNAPSHOT_SQL)
        self.snapshot = info["snapshot"]
        self.snapshot_at = info["at"]

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def _expire(self):
        self.timed_out = True
        self.proc.kill()

    def query_line(self, sql):
        """Send ``sql`` (statements of which only the last returns a row, one line) and return that line."""
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
            if self.timed_out:
                message = ("no answer within the timeout of %s s (a lock held by another session? see "
                           "pg_stat_activity and pg_locks): %s" % (self.timeout, message))
            raise PostgresError("psql on database %r failed (exit code %s): %s"
                                % (self.database, self.proc.returncode, message))
        return line.decode("utf-8").rstrip("\n")

    def query_json(self, sql):
        """``query_line`` for a statement returning one JSON document (on one line), parsed."""
        line = self.query_line(sql)
        try:
            return json.loads(line)
        except ValueError as exc:
            self.close()
            raise PostgresError("psql on database %r returned %r, not one JSON document"
                                % (self.database, line[:200])) from exc

    def fingerprint(self):
        """The fingerprint (see ``fingerprint``) of this database in the exported snapshot."""
        return _parse_fingerprint(self.query_json(FINGERPRINT_SQL))

    def sequence_keys(self):
        """``{(schema, sequence): fingerprint key}`` of the sequences in the snapshot."""
        return {(schema, name): key for key, schema, name in self.query_json(SEQUENCE_NAMES_SQL)}

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


# A line of `pg_restore --list`: "<dumpId>; <tableoid> <oid> <desc> <schema> <tag> <owner>". pg_restore
# writes a newline of a name as a space, so every entry is one line; the desc follows the two oids, and
# data entries have tableoid 0 (a TABLE has 1259), so a name can never pass for a desc here.
_TABLE_DATA_RE = re.compile(r"^\d+; 0 \d+ TABLE DATA ")
_SEQUENCE_SET_RE = re.compile(r"^\d+; 0 0 SEQUENCE SET ")
_SETVAL_RE = re.compile(r"SELECT pg_catalog\.setval\((?:E'((?:[^'\\]|''|\\.)*)'|'((?:[^']|'')*)'), (-?\d+), "
                        r"(true|false)\)", re.S)


def parse_restore_list(text):
    """Count the entries of a ``pg_restore --list`` table of contents: ``{"total": n, "table_data": n}``."""
    entries = [line for line in text.splitlines() if line.strip() and not line.startswith(";")]
    return {"total": len(entries), "table_data": sum(1 for line in entries if _TABLE_DATA_RE.match(line))}


def sequence_set_entries(text):
    """The ``SEQUENCE SET`` lines of a ``pg_restore --list`` table of contents (a list for ``pg_restore -L``)."""
    return [line for line in text.splitlines() if _SEQUENCE_SET_RE.match(line)]


def parse_setval(sql):
    """``{(schema, sequence): last_value | None}`` from the ``setval`` statements ``pg_restore`` writes.

    ``None`` stands for a sequence whose next ``nextval`` returns its start (``is_called`` false),
    which ``pg_sequences.last_value`` shows as NULL.
    """
    values = {}
    for statement in split_sql(sql):
        if not statement.startswith("SELECT pg_catalog.setval("):
            continue
        match = _SETVAL_RE.fullmatch(statement)
        if not match:
            raise ValueError("cannot read %r" % statement[:200])
        if match.group(1) is not None:  # E'...': backslashes doubled
            literal = re.sub(r"\\(.)", r"\1", match.group(1), flags=re.S).replace("''", "'")
        else:
            literal = match.group(2).replace("''", "'")
        parts = split_qualified_name(literal)
        if len(parts) != 2:
            raise ValueError("setval of %r: not a schema-qualified sequence" % literal[:200])
        values[tuple(parts)] = int(match.group(3)) if match.group(4) == "true" else None
    return values


def inspect_dump(target, artefact, sha256, fmt="custom", timeout=None):
    """Stream ``artefact`` back (checking its sha256) into ``pg_restore`` at ``target``; return what it holds.

    Returns ``{"list": {"total", "table_data"}, "sequences": {(schema, seq): value}}``: the entries
    of its table of contents and the value of each sequence it sets (``parse_setval``). The custom
    format is read from stdin (the rest of the stream is drained, so the whole file is hashed); a
    second pass reads the ``SEQUENCE SET`` entries when there are any. The directory format is
    unpacked into a scratch folder first.
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
        wanted = sequence_set_entries(text)
        sequences = {}
        if wanted:
            target.run(["sh", "-c", 'umask 077 && exec cat > "$0"', scratch + ".seq"],
                       stdin=("\n".join(wanted) + "\n").encode("utf-8"))
            if fmt == "directory":
                target.run(["pg_restore", "-L", scratch + ".seq", "-f", scratch + ".sql", scratch + ".d"],
                           timeout=timeout or 600)
            else:
                decompress_to(artefact, target.argv(["sh", "-c", 'pg_restore -L "$0.seq" -f "$0.sql" && exec cat '
                                                     '>/dev/null', scratch], interactive=True),
                              expected_sha256=sha256, timeout=timeout, consumer_name="pg_restore (sequence values)")
            try:
                sequences = parse_setval(target.text(["cat", scratch + ".sql"]))
            except ValueError as exc:
                raise PostgresError("cannot read the sequence values of %s: %s" % (artefact, exc)) from exc
    except ExecError as exc:
        raise PostgresError(str(exc)) from exc
    finally:
        _cleanup(target, scratch, scratch + ".d", scratch + ".seq", scratch + ".sql")
    return {"list": parse_restore_list(text), "sequences": sequences}


def restore_list(target, artefact, sha256, fmt="custom", timeout=None):
    """The table of contents' counts of ``artefact`` (``inspect_dump``'s ``list``)."""
    return inspect_dump(target, artefact, sha256, fmt=fmt, timeout=timeout)["list"]


def dump_database(target, database, dest_dir, conn=None, password=None, fmt="custom", jobs=1, snapshot=None,
                  zstd_level=3, zstd_threads=0, timeout=None, file_name=None):
    """Dump ``database`` with ``pg_dump`` into ``dest_dir/<file_name>`` and validate it.

    ``file_name`` defaults to ``encode_name(database)`` plus ``.dump.zst`` (or ``.dir.tar.zst``).
    The custom format streams from ``pg_dump -Fc`` straight into the pipeline. The directory
    format (``jobs`` parallel workers) is written into a scratch folder at the target first and
    streamed out as a tar. Returns ``{"path", "file", "sha256", "size", "bytes_raw", "list": {...},
    "sequences": {...}}`` (see ``inspect_dump``).
    """
    letter, suffix = FORMATS[fmt]
    file_name = file_name or artefact_files([database], fmt)[database]["dump"]
    dest = artefact_path(dest_dir, file_name)
    env = _env(password)
    argv = ["pg_dump", "--format=%s" % letter, "--compress=0", "--encoding=%s" % CLIENT_ENCODING] + client_args(conn)
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
    inspected = inspect_dump(target, dest, result.sha256, fmt=fmt, timeout=timeout)
    return {"path": dest, "file": file_name, "sha256": result.sha256, "size": result.bytes_out,
            "bytes_raw": result.bytes_in, "list": inspected["list"], "sequences": inspected["sequences"]}


def dump_plain(target, database, dest_dir, conn=None, password=None, snapshot=None, zstd_level=3, zstd_threads=0,
               timeout=None, file_name=None):
    """A plain SQL copy (``pg_dump -Fp``) of ``database`` into ``dest_dir/<file_name>`` (restores with psql).

    ``file_name`` defaults to ``encode_name(database)`` plus ``.sql.zst``.
    """
    env = _env(password)
    argv = ["pg_dump", "--format=p", "--encoding=%s" % CLIENT_ENCODING] + client_args(conn)
    if snapshot:
        argv.append("--snapshot=%s" % snapshot)
    file_name = file_name or artefact_files([database], plain_sql=True)[database]["plain_sql"]
    dest = artefact_path(dest_dir, file_name)
    result = run_pipeline(target.argv(argv + ["--dbname=%s" % conninfo(database)], env_names=env.keys()), dest,
                          env=env, zstd_level=zstd_level, zstd_threads=zstd_threads, timeout=timeout,
                          source_name="pg_dump -Fp")
    return {"path": dest, "file": file_name, "sha256": result.sha256, "size": result.bytes_out,
            "bytes_raw": result.bytes_in}


def dump_globals(target, dest_dir, conn=None, password=None, zstd_level=3, zstd_threads=0, timeout=None):
    """Roles, their memberships and tablespaces (``pg_dumpall --globals-only``) into ``dest_dir/globals.sql.zst``."""
    env = _env(password)
    dest = artefact_path(dest_dir, GLOBALS_ARTEFACT)
    argv = ["pg_dumpall", "--globals-only", "--encoding=%s" % CLIENT_ENCODING] + client_args(conn) + [
        "--dbname=%s" % conninfo("postgres")]
    result = run_pipeline(target.argv(argv, env_names=env.keys()), dest, env=env, zstd_level=zstd_level,
                          zstd_threads=zstd_threads, timeout=timeout, source_name="pg_dumpall")
    return {"path": dest, "file": GLOBALS_ARTEFACT, "sha256": result.sha256, "size": result.bytes_out,
            "bytes_raw": result.bytes_in}


def _file(item):
    return {"path": item["path"], "sha256": item["sha256"], "size": item["size"]}


def backup_database(target, database, dest_dir, files, conn=None, password=None, fmt="custom", jobs=1,
                    zstd_level=3, zstd_threads=0, timeout=None):
    """Fingerprint and dump one database in one exported snapshot; return what the manifest records of it.

    ``files`` is its entry of ``artefact_files``. The sequences' values in the fingerprint are the
    ones the dump holds (see the module's docstring). Returns ``{"fingerprint", "list", "files",
    "details"}``; raises ``PostgresError`` (or ``PipelineError``) without naming the database: the
    caller does.
    """
    with SnapshotSession(target, database, conn, password, timeout=timeout) as session:
        fp = session.fingerprint()
        keys = session.sequence_keys()
        dump = dump_database(target, database, dest_dir, conn, password, fmt=fmt, jobs=jobs,
                             snapshot=session.snapshot, zstd_level=zstd_level, zstd_threads=zstd_threads,
                             timeout=timeout, file_name=files["dump"])
        plain = None
        if files.get("plain_sql"):
            plain = dump_plain(target, database, dest_dir, conn, password, snapshot=session.snapshot,
                               zstd_level=zstd_level, zstd_threads=zstd_threads, timeout=timeout,
                               file_name=files["plain_sql"])
        snapshot_at = session.snapshot_at
    if fp["tables"] and not dump["list"]["table_data"]:
        raise PostgresError("pg_restore --list of %s shows no TABLE DATA entry although the database has %d "
                            "table(s): the dump is unusable" % (dump["path"], len(fp["tables"])))
    from_dump = 0
    for ident, value in dump["sequences"].items():
        key = keys.get(ident)
        if key in fp["sequences"]:
            fp["sequences"][key] = value
            from_dump += 1
    return {
        "fingerprint": fp,
        "list": dump["list"],
        "files": [_file(dump)] + ([_file(plain)] if plain else []),
        "details": {"file": dump["file"], "plain_sql_file": plain["file"] if plain else None,
                    "bytes_raw": dump["bytes_raw"], "snapshot_at": snapshot_at, "sequences_from_dump": from_dump},
    }


def backup(target, dest_dir, databases=None, conn=None, password=None, include_globals=True, plain_sql=False,
           fmt="custom", jobs=1, zstd_level=3, zstd_threads=0, timeout=None):
    """Dump the selected databases (and the globals) into ``dest_dir``; return the manifest entry.

    Each database is fingerprinted and dumped (custom/directory and, with ``plain_sql``, plain SQL)
    in one exported snapshot, then validated with ``pg_restore --list``; its files are called as
    ``artefact_files`` says and ``database_details[<db>]`` records them. A database that fails does
    not stop the others; at the end ``PostgresError`` names each failed one (``repr``) with its
    cause. A failed pipeline leaves no partial file.
    """
    if fmt not in FORMATS:
        raise PostgresError("format must be one of %s, got %r" % (", ".join(sorted(FORMATS)), fmt))
    started = utc()
    t0 = time.monotonic()
    selected = select_databases(target, databases, conn, password)
    version = server_version(target, conn, password)
    names = artefact_files(selected, fmt, plain_sql)
    files, fps, lists, details, failures = [], {}, {}, {}, []
    for db in sorted(selected):
        try:
            done = backup_database(target, db, dest_dir, names[db], conn, password, fmt=fmt, jobs=jobs,
                                   zstd_level=zstd_level, zstd_threads=zstd_threads, timeout=timeout)
        except (PostgresError, PipelineError, ExecError, OSError, ValueError) as exc:
            failures.append("database %r: %s" % (db, exc))
            continue
        fps[db] = done["fingerprint"]
        lists[db] = done["list"]
        files.extend(done["files"])
        details[db] = dict(done["details"], size_on_server=selected[db])
    if include_globals:
        try:
            files.append(_file(dump_globals(target, dest_dir, conn, password, zstd_level=zstd_level,
                                            zstd_threads=zstd_threads, timeout=timeout)))
        except (PostgresError, PipelineError, ExecError, OSError) as exc:
            failures.append("the globals (pg_dumpall --globals-only): %s" % exc)
    if failures:
        raise PostgresError("%s. Fix the cause and run the backup again (this set is marked failed)"
                            % "; ".join(failures))
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
        "globals_file": GLOBALS_ARTEFACT if include_globals else None,
        "fingerprint": fps,
        "fingerprint_keys": FINGERPRINT_KEYS,
        "pg_restore_list_entries": lists,
    }
