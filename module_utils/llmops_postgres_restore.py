"""PostgreSQL restores from a backup set: roles (globals), databases (pg_restore), verification,
rollback and cleanup. Used by ``library/postgres_restore.py``, one function per step.

The safety copy is the database itself, moved aside inside the server: new connections are
refused (``ALLOW_CONNECTIONS false``), the open ones terminated, and the database renamed to
``<db><suffix>`` (instant, no data copied, PostgreSQL keeps running). The copy stays
unconnectable, so backups (which dump the connectable databases) and applications leave it
alone. A rollback drops the new database and renames the copy back; a cleanup drops it.

Each database is restored with ``pg_restore --create --exit-on-error`` (the database comes back
with the owner, encoding, locale, privileges and settings recorded in the dump). The artefact is
first streamed into a scratch file at the target through ``decompress_to``, which checks its
sha256, so a damaged file is caught before the live database is touched and ``pg_restore --jobs``
can read it (parallel restore needs a file, not a pipe).

What was done is written to ``<staging>/state.json`` as it happens, so that a rollback after a
failure in the middle knows which databases were moved aside and which were created.

Names are data and the manifest is not trusted: each database's artefact is the file the entry
records for it (``database_details[<db>].file``), which must be one plain path component listed
among the entry's files (so its sha256 is known) and a regular file inside the set; no path is
ever built from a database name. Before a live database is moved aside, the staged dump must name
the same database. Names reach SQL quoted (``quote_ident`` / ``quote_literal``) and tools as argv
elements or libpq connection strings, never through a shell.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
import stat

from ansible.module_utils.llmops_backupset import diff_fingerprints, encode_name, write_file_atomic
from ansible.module_utils.llmops_common import load_state
from ansible.module_utils.llmops_exec import ExecError
from ansible.module_utils.llmops_pipeline import decompress_to
from ansible.module_utils.llmops_postgres import (
    FORMATS,
    GLOBALS_ARTEFACT,
    PostgresError,
    _cleanup,
    _env,
    _scratch,
    check_file_name,
    client_args,
    conninfo,
    fingerprint,
    query,
    query_json,
    quote_ident,
    quote_literal,
    split_sql,
)

MAX_IDENTIFIER = 63  # NAMEDATALEN - 1: longer names are silently truncated by the server
STATE_FILE = "state.json"
_CREATE_ROLE_RE = re.compile(r'CREATE ROLE ("(?:[^"]|"")*"|[A-Za-z_][A-Za-z0-9_$]*)', re.S)
_BUSY = "is being accessed by other users"
TERMINATE_SQL = ("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = %s "
                 "AND pid <> pg_backend_pid();")
_DBNAME_HEADER = ";     dbname: "
# Kept for callers of the former names.
sql_literal = quote_literal
sql_ident = quote_ident


def display_names(names):
    """``names`` for a summary line: a plain name as it is, any other as JSON (quoted, escapes visible)."""
    return ", ".join(name if encode_name(name) == name else json.dumps(name, ensure_ascii=False) for name in names)


def _listed_files(set_path, entry):
    """``{file name: (path, sha256)}`` of the entry's files: relative paths of plain components, inside the set."""
    listed, folders = {}, set()
    real_set = os.path.realpath(set_path)
    for item in entry.get("files") or []:
        rel = item.get("path") if isinstance(item, dict) else None
        if not isinstance(rel, str) or not rel or rel.startswith("/"):
            raise PostgresError("the manifest lists a file %r that is not a path relative to the set: the manifest "
                                "is damaged or was altered; restore from another set" % (rel,))
        parts = rel.split("/")
        for part in parts:
            check_file_name(part, "file path component")
        folders.add(posixpath.dirname(rel))
        if parts[-1] in listed:
            raise PostgresError("the manifest lists the file %r twice" % parts[-1])
        path = os.path.join(set_path, *parts)
        if not os.path.realpath(path).startswith(real_set + os.sep):
            raise PostgresError("the manifest's file %r lies outside the set %s (a link?): restore from another set"
                                % (rel, set_path))
        listed[parts[-1]] = (path, item.get("sha256"))
    if len(folders) > 1:
        raise PostgresError("the manifest lists the component's files in several folders (%s): it is damaged"
                            % ", ".join(sorted(repr(f) for f in folders)))
    return listed


def _artefact(listed, file_name, what):
    """``(path, sha256)`` of ``file_name``: one plain path component, listed with a sha256, a regular file."""
    check_file_name(file_name, "the file of %s" % what)
    if file_name not in listed:
        raise PostgresError("the manifest names %r as the file of %s but does not list it among the component's "
                            "files (no checksum): restore from another set" % (file_name, what))
    path, sha256 = listed[file_name]
    if not isinstance(sha256, str) or len(sha256) != 64:
        raise PostgresError("the manifest records no sha256 for %r (%s)" % (file_name, what))
    try:
        mode = os.lstat(path).st_mode
    except OSError as exc:
        raise PostgresError("the artefact of %s is missing: %s" % (what, exc)) from exc
    if not stat.S_ISREG(mode):
        raise PostgresError("the artefact %s of %s is not a regular file" % (path, what))
    return path, sha256


def database_names(entry):
    """The databases of a postgres manifest entry (untrusted: each must be a distinct, non-empty string)."""
    databases = entry.get("databases") if isinstance(entry, dict) else None
    if not isinstance(databases, list):
        raise PostgresError("the manifest's postgres entry has no list of databases: it is damaged")
    seen = []
    for db in databases:
        if not isinstance(db, str) or not db or db in seen:
            raise PostgresError("the manifest's database list holds %r: it is damaged" % (db,))
        seen.append(db)
    return seen


def component_artefacts(set_path, entry):
    """``{db: (path, sha256, format)}`` of the database dumps and ``(path, sha256)`` of the globals of a set.

    ``entry`` is the set's postgres manifest entry (untrusted): each database's file is the one
    ``database_details[<db>].file`` records (sets written before it existed: the listed file whose
    name equals ``<db><suffix>``), a plain file name listed among the entry's files; the globals'
    file is ``globals_file``. Raises ``PostgresError`` naming what does not fit.
    """
    if not isinstance(entry, dict):
        raise PostgresError("the set has no usable postgres entry in its manifest")
    fmt = entry.get("format") or "custom"
    if fmt not in FORMATS:
        raise PostgresError("the manifest's format %r is none of %s" % (fmt, ", ".join(sorted(FORMATS))))
    suffix = FORMATS[fmt][1]
    listed = _listed_files(set_path, entry)
    details = entry.get("database_details") or {}
    if not isinstance(details, dict):
        raise PostgresError("the manifest's postgres entry is damaged (database_details is no mapping)")
    dumps = {}
    for db in database_names(entry):
        detail = details.get(db) if isinstance(details.get(db), dict) else {}
        file_name = detail.get("file")
        if file_name is None:  # a set written before the file names were recorded
            file_name = next((name for name in listed if name == db + suffix), None)
            if file_name is None:
                raise PostgresError("the set has no artefact for database %r" % db)
        dumps[db] = _artefact(listed, file_name, "database %r" % db) + (fmt,)
    globals_file = entry.get("globals_file", GLOBALS_ARTEFACT if GLOBALS_ARTEFACT in listed else None)
    return dumps, _artefact(listed, globals_file, "the globals") if globals_file else None


def select_restore(dumps, requested=None):
    """The databases to restore: ``requested`` (each must be in the set) or all of the set's."""
    if not requested:
        return sorted(dumps)
    missing = [db for db in requested if db not in dumps]
    if missing:
        raise PostgresError("database(s) not in the backup set: %s; it holds: %s"
                            % (", ".join(repr(db) for db in missing),
                               ", ".join(repr(db) for db in sorted(dumps)) or "none"))
    return list(dict.fromkeys(requested))


def safety_name(db, suffix):
    """The name the database is moved aside to: ``<db><suffix>``, always the same for the same two.

    When that is longer than PostgreSQL's 63 bytes (it would be truncated), ``<db>`` is cut (on a
    character boundary) and marked with ``~`` and 8 hex digits of its sha256, so that any name can
    be moved aside. Fails only when ``suffix`` itself leaves no room.
    """
    name = db + suffix
    if len(name.encode("utf-8")) <= MAX_IDENTIFIER:
        return name
    tag = "~%s%s" % (hashlib.sha256(db.encode("utf-8", "surrogatepass")).hexdigest()[:8], suffix)
    room = MAX_IDENTIFIER - len(tag.encode("utf-8"))
    if room < 1:
        raise PostgresError("the safety_tag %r is too long: with it no safety copy's name fits in %d bytes "
                            "(PostgreSQL would truncate it); use a shorter one" % (suffix, MAX_IDENTIFIER))
    return db.encode("utf-8", "surrogatepass")[:room].decode("utf-8", "ignore") + tag


def existing_databases(target, conn=None, password=None):
    """``{name: allows_connections}`` of every database of the server."""
    return query_json(target, "SELECT coalesce(json_object_agg(datname, datallowconn), '{}') FROM pg_database;",
                      conn=conn, password=password) or {}


# --------------------------------------------------------------------------------------------
# globals


def _unquote_ident(token):
    if token.startswith('"'):
        return token[1:-1].replace('""', '"')
    return token.lower()


def _dollar_tag(body):
    tag, n = "$llmops$", 0
    while tag in body:
        n += 1
        tag = "$llmops%d$" % n
    return tag


def tolerant_globals(sql):
    """``pg_dumpall --globals-only`` output in which ``CREATE ROLE x`` tolerates an existing role only.

    The script is split into statements by ``split_sql`` (so a role name holding ``;``, quotes or
    newlines stays inside its statement). Each ``CREATE ROLE`` statement becomes a ``DO`` block (its
    dollar quote a tag the statement does not hold) that turns ``duplicate_object`` into a NOTICE;
    the following ``ALTER ROLE`` then sets the role's attributes (and password) as recorded. Any
    other error still stops the script (``ON_ERROR_STOP``); a psql meta-command in the file raises
    ``ValueError``. Returns ``(sql, roles)``, the roles' names unquoted.
    """
    out, roles = [], []
    for statement in split_sql(sql):
        match = _CREATE_ROLE_RE.fullmatch(statement)
        if match:
            token = match.group(1)
            roles.append(_unquote_ident(token))
            body = "BEGIN CREATE ROLE %s; EXCEPTION WHEN duplicate_object THEN RAISE NOTICE %s; END" % (
                token, quote_literal("role %s already exists" % token.replace("%", "%%")))
            tag = _dollar_tag(body)
            statement = "DO %s %s %s" % (tag, body, tag)
        out.append(statement + ";\n")
    return "".join(out), roles


def restore_globals(target, artefact, sha256, staging, conn=None, password=None, timeout=None):
    """Apply the set's ``globals.sql.zst`` (roles, memberships, tablespaces) to the server.

    The file (it holds password hashes) is unpacked with mode 0600 into ``staging`` (sha256
    checked), rewritten by ``tolerant_globals`` and removed. Returns the role names it creates.
    """
    os.makedirs(staging, mode=0o700, exist_ok=True)
    plain = os.path.join(staging, "globals.sql")
    os.close(os.open(plain, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
    try:
        decompress_to(artefact, ["dd", "of=%s" % plain, "conv=notrunc", "status=none"], expected_sha256=sha256,
                      timeout=timeout, consumer_name="unpack globals")
        with open(plain, "rb") as handle:
            text = handle.read().decode("utf-8", "surrogateescape")
        try:
            sql, roles = tolerant_globals(text)
        except ValueError as exc:
            raise PostgresError("%s cannot be applied: %s; nothing was changed" % (artefact, exc)) from exc
    finally:
        os.unlink(plain)
    query(target, sql, "postgres", conn=conn, password=password, timeout=timeout or 600)
    return roles


# --------------------------------------------------------------------------------------------
# restore, rollback, cleanup


def _state_path(staging):
    return os.path.join(staging, STATE_FILE)


def read_state(staging):
    """What the restore step did so far: ``{db: {"safety": name|None, "created": bool}}``."""
    return load_state(_state_path(staging), {})


def _write_state(staging, state):
    write_file_atomic(_state_path(staging), json.dumps(state, indent=1, sort_keys=True).encode("utf-8"))


def move_aside(target, db, safety, conn=None, password=None, attempts=5):
    """Refuse new connections to ``db``, end its sessions and rename it to ``safety`` (kept unconnectable)."""
    quoted = quote_ident(db)
    query(target, "ALTER DATABASE %s ALLOW_CONNECTIONS false;" % quoted, conn=conn, password=password)
    try:
        for attempt in range(attempts):
            query(target, TERMINATE_SQL % quote_literal(db), conn=conn, password=password)
            try:
                query(target, "ALTER DATABASE %s RENAME TO %s;" % (quoted, quote_ident(safety)), conn=conn,
                      password=password)
                return
            except PostgresError as exc:
                if _BUSY not in str(exc) or attempt == attempts - 1:
                    raise
    except PostgresError:
        query(target, "ALTER DATABASE %s ALLOW_CONNECTIONS true;" % quoted, conn=conn, password=password)
        raise


def _stage_dump(target, artefact, sha256, fmt, scratch, timeout=None):
    """Stream the dump (sha256 checked) into ``scratch`` at the target: a file, or a folder for -Fd."""
    if fmt == "directory":
        script = 'mkdir -m 700 "$0" && exec tar -C "$0" -xf -'
    else:
        script = 'umask 077 && exec cat > "$0"'
    decompress_to(artefact, target.argv(["sh", "-c", script, scratch], interactive=True), expected_sha256=sha256,
                  timeout=timeout, consumer_name="stage %s" % os.path.basename(artefact))


def sanitize_line(name):
    """``name`` as ``pg_restore --list`` prints it (newlines and carriage returns as spaces)."""
    return name.replace("\r", " ").replace("\n", " ")


def staged_database(target, scratch):
    """The database name the staged dump at ``scratch`` was taken from (as ``pg_restore --list`` prints it)."""
    try:
        text = target.text(["pg_restore", "--list", scratch])
    except ExecError as exc:
        raise PostgresError("pg_restore --list of the staged dump failed: %s" % exc) from exc
    for line in text.splitlines():
        if line.startswith(_DBNAME_HEADER):
            return line[len(_DBNAME_HEADER):]
    raise PostgresError("the staged dump names no database (pg_restore --list shows no dbname line)")


def restore_databases(target, dumps, databases, staging, suffix, conn=None, password=None, jobs=2,
                      scratch_dir="/tmp", timeout=None):  # noqa: S108 - a folder at the target
    """Restore each of ``databases`` from ``dumps`` (see ``component_artefacts``); return what was done.

    Per database: stage the dump (sha256 checked), move the live database aside as the safety
    copy (when it exists), then ``pg_restore --create --exit-on-error --jobs`` from the staged
    file. Raises on the first failure; ``state.json`` in ``staging`` tells ``rollback`` what to undo.
    """
    os.makedirs(staging, mode=0o700, exist_ok=True)
    state = {}
    existing = existing_databases(target, conn, password)
    for db in databases:
        if safety_name(db, suffix) in existing:
            raise PostgresError("a safety copy %r already exists: a previous restore was not finished; inspect it "
                                "and drop it or roll back before restoring again" % safety_name(db, suffix))
    done = {}
    env = _env(password)
    for db in databases:
        path, sha256, fmt = dumps[db]
        scratch = "%s/%s" % (scratch_dir.rstrip("/"), _scratch("pgrestore").rsplit("/", 1)[1])
        try:
            _stage_dump(target, path, sha256, fmt, scratch, timeout=timeout)
            holds = staged_database(target, scratch)
            if holds != sanitize_line(db):
                raise PostgresError("the dump %s of database %r holds database %r: the manifest does not match its "
                                    "artefacts; nothing was changed, restore from another set" % (path, db, holds))
            safety = None
            if db in existing:
                safety = safety_name(db, suffix)
                state[db] = {"safety": safety, "created": False}
                _write_state(staging, state)
                move_aside(target, db, safety, conn, password)
            state[db] = {"safety": safety, "created": True}
            _write_state(staging, state)
            argv = ["pg_restore", "--create", "--exit-on-error", "--jobs=%d" % max(1, int(jobs))]
            argv += client_args(conn) + ["--dbname=%s" % conninfo("postgres"), scratch]
            try:
                target.run(argv, env=env, timeout=timeout)
            except ExecError as exc:
                raise PostgresError("pg_restore of database %r failed: %s" % (db, exc)) from exc
        finally:
            _cleanup(target, scratch)
        done[db] = {"safety_copy": safety, "artefact": path}
    return done


def rollback(target, staging, databases=None, suffix=None, conn=None, password=None):
    """Undo a restore: drop each database the restore created and rename its safety copy back.

    Uses ``state.json`` from the restore step; without it, ``databases`` whose safety copy
    ``<db><suffix>`` exists are rolled back. Returns ``{db: "restored from <copy>" | "dropped"}``.
    """
    state = read_state(staging)
    existing = existing_databases(target, conn, password)
    if not state and databases and suffix:
        state = {db: {"safety": safety_name(db, suffix), "created": True} for db in databases
                 if safety_name(db, suffix) in existing}
    result = {}
    for db, item in sorted(state.items()):
        safety = item.get("safety")
        if safety and safety not in existing:
            if not item.get("created"):
                continue  # never moved aside
            raise PostgresError("no safety copy %r of %r: nothing to roll back to" % (safety, db))
        if item.get("created") and db in existing:
            query(target, "DROP DATABASE %s WITH (FORCE);" % quote_ident(db), conn=conn, password=password)
            result[db] = "dropped"
        if safety:
            query(target, "ALTER DATABASE %s RENAME TO %s;" % (quote_ident(safety), quote_ident(db)), conn=conn,
                  password=password)
            query(target, "ALTER DATABASE %s ALLOW_CONNECTIONS true;" % quote_ident(db), conn=conn, password=password)
            result[db] = "restored from %s" % safety
    _forget_state(staging)
    return result


def _forget_state(staging):
    try:
        os.unlink(_state_path(staging))
    except FileNotFoundError:
        pass


def safety_copies(target, databases, suffix, conn=None, password=None):
    """The safety copies ``<db><suffix>`` of ``databases`` that exist on the server."""
    existing = existing_databases(target, conn, password)
    return [safety_name(db, suffix) for db in databases if safety_name(db, suffix) in existing]


def drop_databases(target, names, conn=None, password=None):
    """Drop ``names`` (the safety copies), ending any session first."""
    for name in names:
        query(target, "DROP DATABASE IF EXISTS %s WITH (FORCE);" % quote_ident(name), conn=conn, password=password)


# --------------------------------------------------------------------------------------------
# verify


def verify(target, expected, databases, conn=None, password=None, timeout=600, keys="legacy"):
    """Compare the live fingerprint of ``databases`` with ``expected`` (the manifest's); return the differences.

    ``keys`` is the entry's ``fingerprint_keys`` (how it names tables and sequences; ``legacy`` for
    sets written before it was recorded).
    """
    actual = fingerprint(target, databases, conn, password, timeout=timeout, keys=keys)
    return diff_fingerprints({db: expected.get(db) or {} for db in databases}, actual, only_expected=True)


def check_plan(target, databases, suffix, conn=None, password=None):
    """What ``restore_databases`` would do (check mode): ``{db: "move aside to X, restore" | "create"}``."""
    existing = existing_databases(target, conn, password)
    plan = {}
    for db in databases:
        safety = safety_name(db, suffix)
        if safety in existing:
            raise PostgresError("a safety copy %r already exists: a previous restore was not finished; inspect it "
                                "and drop it or roll back before restoring again" % safety)
        plan[db] = ("move aside to %s, restore with pg_restore" % safety) if db in existing else \
            "create and restore with pg_restore (it does not exist now)"
    return plan
