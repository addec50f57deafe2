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
"""

from __future__ import annotations

import json
import os
import re

from ansible.module_utils.llmops_backupset import diff_fingerprints, write_file_atomic
from ansible.module_utils.llmops_exec import ExecError
from ansible.module_utils.llmops_pipeline import decompress_to
from ansible.module_utils.llmops_postgres import (
    FORMATS,
    GLOBALS_ARTEFACT,
    PostgresError,
    _cleanup,
    _env,
    _scratch,
    client_args,
    conninfo,
    fingerprint,
    query,
)

MAX_IDENTIFIER = 63  # NAMEDATALEN - 1: longer names are silently truncated by the server
STATE_FILE = "state.json"
_CREATE_ROLE_RE = re.compile(r"^CREATE ROLE (.+);$")
_BUSY = "is being accessed by other users"
TERMINATE_SQL = ("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = %s "
                 "AND pid <> pg_backend_pid();")


def sql_literal(value):
    """``value`` as an SQL string literal."""
    return "'%s'" % value.replace("'", "''")


def sql_ident(name):
    """``name`` as a quoted SQL identifier."""
    return '"%s"' % name.replace('"', '""')


def component_artefacts(set_path, entry):
    """``{db: (path, sha256, format)}`` of the database dumps and ``(path, sha256)`` of the globals of a set.

    ``entry`` is the set's postgres manifest entry; file paths are relative to the set.
    """
    fmt = entry.get("format") or "custom"
    suffix = FORMATS.get(fmt, FORMATS["custom"])[1]
    files = {}
    for item in entry.get("files", []):
        path = item["path"] if os.path.isabs(item["path"]) else os.path.join(set_path, item["path"])
        files[os.path.basename(path)] = (path, item["sha256"])
    dumps = {}
    for db in entry.get("databases") or []:
        if db + suffix not in files:
            raise PostgresError("the set has no artefact %s for database %s" % (db + suffix, db))
        dumps[db] = files[db + suffix] + (fmt,)
    return dumps, files.get(GLOBALS_ARTEFACT)


def select_restore(dumps, requested=None):
    """The databases to restore: ``requested`` (each must be in the set) or all of the set's."""
    if not requested:
        return sorted(dumps)
    missing = [db for db in requested if db not in dumps]
    if missing:
        raise PostgresError("database(s) not in the backup set: %s; it holds: %s"
                            % (", ".join(missing), ", ".join(sorted(dumps)) or "none"))
    return list(requested)


def safety_name(db, suffix):
    """The name the database is moved aside to; fails when PostgreSQL would truncate it."""
    name = db + suffix
    if len(name.encode("utf-8")) > MAX_IDENTIFIER:
        raise PostgresError("the safety copy's name %s is longer than %d bytes (PostgreSQL would truncate it): use "
                            "a shorter safety_suffix" % (name, MAX_IDENTIFIER))
    return name


def existing_databases(target, conn=None, password=None):
    """``{name: allows_connections}`` of every database of the server."""
    rows = query(target, "SELECT coalesce(json_object_agg(datname, datallowconn), '{}') FROM pg_database;",
                 conn=conn, password=password)
    return json.loads(rows[0]) if rows else {}


# --------------------------------------------------------------------------------------------
# globals


def tolerant_globals(sql):
    """``pg_dumpall --globals-only`` output in which ``CREATE ROLE x`` tolerates an existing role only.

    Each ``CREATE ROLE`` line becomes a ``DO`` block that turns ``duplicate_object`` into a NOTICE;
    the following ``ALTER ROLE`` then sets the role's attributes (and password) as recorded. Any
    other error still stops the script (``ON_ERROR_STOP``). Returns ``(sql, roles)``.
    """
    lines, roles = [], []
    for line in sql.splitlines():
        match = _CREATE_ROLE_RE.match(line)
        if match:
            role = match.group(1)
            roles.append(role)
            body = "BEGIN CREATE ROLE %s; EXCEPTION WHEN duplicate_object THEN RAISE NOTICE %s; END" % (
                role, sql_literal("role %s already exists" % role.replace("%", "%%")))
            line = "DO $llmops$ %s $llmops$;" % body
        lines.append(line)
    return "\n".join(lines) + "\n", roles


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
        with open(plain, encoding="utf-8") as handle:
            sql, roles = tolerant_globals(handle.read())
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
    try:
        with open(_state_path(staging), encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        return {}


def _write_state(staging, state):
    write_file_atomic(_state_path(staging), json.dumps(state, indent=1, sort_keys=True).encode("utf-8"))


def move_aside(target, db, safety, conn=None, password=None, attempts=5):
    """Refuse new connections to ``db``, end its sessions and rename it to ``safety`` (kept unconnectable)."""
    quoted = sql_ident(db)
    query(target, "ALTER DATABASE %s ALLOW_CONNECTIONS false;" % quoted, conn=conn, password=password)
    try:
        for attempt in range(attempts):
            query(target, TERMINATE_SQL % sql_literal(db), conn=conn, password=password)
            try:
                query(target, "ALTER DATABASE %s RENAME TO %s;" % (quoted, sql_ident(safety)), conn=conn,
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
            raise PostgresError("a safety copy %s already exists: a previous restore was not finished; inspect it "
                                "and drop it or roll back before restoring again" % safety_name(db, suffix))
    done = {}
    env = _env(password)
    for db in databases:
        path, sha256, fmt = dumps[db]
        scratch = "%s/%s" % (scratch_dir.rstrip("/"), _scratch("pgrestore").rsplit("/", 1)[1])
        try:
            _stage_dump(target, path, sha256, fmt, scratch, timeout=timeout)
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
                raise PostgresError("pg_restore of %s failed: %s" % (db, exc)) from exc
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
            raise PostgresError("no safety copy %s of %s: nothing to roll back to" % (safety, db))
        if item.get("created") and db in existing:
            query(target, "DROP DATABASE %s WITH (FORCE);" % sql_ident(db), conn=conn, password=password)
            result[db] = "dropped"
        if safety:
            query(target, "ALTER DATABASE %s RENAME TO %s;" % (sql_ident(safety), sql_ident(db)), conn=conn,
                  password=password)
            query(target, "ALTER DATABASE %s ALLOW_CONNECTIONS true;" % sql_ident(db), conn=conn, password=password)
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
        query(target, "DROP DATABASE IF EXISTS %s WITH (FORCE);" % sql_ident(name), conn=conn, password=password)


# --------------------------------------------------------------------------------------------
# verify


def verify(target, expected, databases, conn=None, password=None, timeout=600):
    """Compare the live fingerprint of ``databases`` with ``expected`` (the manifest's); return the differences."""
    actual = fingerprint(target, databases, conn, password, timeout=timeout)
    return diff_fingerprints({db: expected.get(db) or {} for db in databases}, actual, only_expected=True)


def check_plan(target, databases, suffix, conn=None, password=None):
    """What ``restore_databases`` would do (check mode): ``{db: "move aside to X, restore" | "create"}``."""
    existing = existing_databases(target, conn, password)
    plan = {}
    for db in databases:
        safety = safety_name(db, suffix)
        if safety in existing:
            raise PostgresError("a safety copy %s already exists: a previous restore was not finished" % safety)
        plan[db] = ("move aside to %s, restore with pg_restore" % safety) if db in existing else \
            "create and restore with pg_restore (it does not exist now)"
    return plan
