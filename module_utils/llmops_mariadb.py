"""MariaDB backups: ``mariadb-backup`` full and incremental streams, binary log archiving, and the
data fingerprint a restore is verified against.

Tools run through ``ExecTarget`` (by default inside the server's own container, where
``mariadb-backup`` always matches the server's version) and their output goes through the shared
``run_pipeline`` (tool | zstd | sha256 | file). A password, when one is needed, travels in the
``MYSQL_PWD`` environment variable (passed to ``docker exec`` by name), never on a command line.

Incremental chains: a full records its ``to_lsn``; an incremental is taken with
``--incremental-lsn=<to_lsn of its parent>`` and records ``parent`` (the set id it builds on),
``from_lsn``/``to_lsn`` and ``chain`` (set ids from the full to itself), so a restore can apply
them in order and retention can keep what a kept incremental depends on.
"""

from __future__ import annotations

import datetime
import os
import re
import secrets
import shutil
import threading
import time

from ansible.module_utils.llmops_backupset import (
    BackupSetError,
    is_no_space,
    list_sets,
    load_manifest,
    parse_time,
    run_times,
    utc,
    write_file_atomic,
)
from ansible.module_utils.llmops_common import LlmopsError
from ansible.module_utils.llmops_exec import ExecError, ImageTarget, ScratchServer
from ansible.module_utils.llmops_pipeline import decompress_to, hash_file, run_pipeline

SYSTEM_SCHEMAS = ("mysql", "information_schema", "performance_schema", "sys")
ARTEFACT = "mariadb.mbstream.zst"
PWD_ENV = "MYSQL_PWD"  # noqa: S105 - the variable's name, not a password


class MariaDBError(LlmopsError):
    """A MariaDB backup step failed; the message says which and why."""


def _env(password):
    return {PWD_ENV: password} if password else {}


def client_argv(conn, *args):
    """``mariadb`` client argv for ``conn`` (dict: user, host, port, socket).

    The session's character set is always utf8mb4, so that names and values travel unmangled.
    """
    return (["mariadb", "--batch", "--skip-column-names", "--default-character-set=utf8mb4"] + _login_args(conn)
            + list(args))


def _login_args(conn):
    argv = ["--user=%s" % conn.get("user", "root")]
    if conn.get("host"):
        argv += ["--host=%s" % conn["host"], "--port=%d" % int(conn.get("port") or 3306), "--protocol=tcp"]
    elif conn.get("socket"):
        argv.append("--socket=%s" % conn["socket"])
    return argv


def wait_until_up(target, conn, password=None, timeout=300):
    """Return as soon as the server answers (``mariadb-admin ping``, every 0.2 s), at most ``timeout`` s.

    A refused login counts as an answer (``ping`` exits 0 then): the next query says what is wrong with it.
    A restore awaits this rather than the container's health check, which runs only every 10 s.
    """
    try:
        target.wait_ready(["mariadb-admin"] + _login_args(conn) + ["ping", "--silent"], timeout=timeout,
                          env=_env(password))
    except ExecError as exc:
        raise MariaDBError("MariaDB did not come up: %s" % exc) from exc


_BATCH_ESCAPES = {"t": "\t", "n": "\n", "r": "\r", "0": "\0", "\\": "\\", "Z": "\x1a", "b": "\b"}


def unescape_batch(field):
    """Undo the escaping of ``mariadb --batch`` output (tab, newline, backslash, NUL...) in one field."""
    if "\\" not in field:
        return field
    out = []
    chars = iter(field)
    for ch in chars:
        if ch != "\\":
            out.append(ch)
            continue
        nxt = next(chars, "")
        out.append(_BATCH_ESCAPES.get(nxt, nxt))
    return "".join(out)


def query(target, conn, sql, password=None, timeout=600):
    """Run ``sql`` (fed on stdin) and return the rows as lists of strings.

    ``--batch`` escapes tab, newline, backslash and NUL inside values, so splitting a line on the
    real tab is exact; each field is unescaped afterwards. Names should still be asked for as
    ``HEX()`` where they are to be used again (``unhex_name``).
    """
    out = target.text(client_argv(conn), env=_env(password), stdin=sql.encode("utf-8"), timeout=timeout)
    return [[unescape_batch(field) for field in line.split("\t")] for line in out.split("\n") if line]


def unhex_name(value):
    """A name the server returned as ``HEX(name)`` (utf8mb4 session), decoded."""
    return bytes.fromhex(value).decode("utf-8")


def server_info(target, conn, password=None, timeout=600):
    """Version, binary log settings and the current binlog position of the server."""
    rows = query(target, conn, "SELECT @@version, @@log_bin, @@binlog_format, @@log_bin_basename, @@datadir, "
                               "@@server_id, @@gtid_current_pos;", password, timeout=timeout)
    version, log_bin, binlog_format, basename, datadir, server_id, gtid = (rows[0] + [""] * 7)[:7]
    return {
        "version": version,
        "log_bin": log_bin == "1",
        "binlog_format": binlog_format,
        "log_bin_basename": None if basename in ("", "NULL") else basename,
        "datadir": datadir,
        "server_id": int(server_id or 0),
        "gtid_current_pos": "" if gtid == "NULL" else gtid,
    }


def _quote(name):
    return "`%s`" % name.replace("`", "``")


def fingerprint(target, conn, password=None, databases=None):
    """Row count and ``CHECKSUM TABLE`` of every base table, plus counts of the other objects.

    Returns ``{db: {"tables": {table: {"rows": n, "checksum": "..."}}, "views": n, "routines": n,
    "triggers": n}}`` for every non-system schema (or ``databases``). A restore is correct when
    its fingerprint equals the one recorded at backup time.

    Names are read as ``HEX()`` and every statement's result is read by position (one row per
    statement), so a name may hold any character the server allows (dots, tabs, newlines,
    quotes, Korean...). Taken at the backup from the artefact itself (``fingerprint_artefact``).
    """
    excluded = ",".join("'%s'" % s for s in SYSTEM_SCHEMAS)
    # S608: every name below is quoted by _quote / _sql_string; nothing comes from a user
    rows = query(target, conn, "SELECT HEX(table_schema), HEX(table_name), table_type "  # noqa: S608
                               "FROM information_schema.tables WHERE table_schema NOT IN (%s) "
                               "ORDER BY table_schema, table_name;" % excluded, password)
    result = {}
    tables = []
    for hex_schema, hex_table, kind in rows:
        schema, table = unhex_name(hex_schema), unhex_name(hex_table)
        if databases and schema not in databases:
            continue
        entry = result.setdefault(schema, {"tables": {}, "views": 0, "routines": 0, "triggers": 0})
        if kind == "VIEW":
            entry["views"] += 1
            continue
        entry["tables"][table] = {}
        tables.append((schema, table))
    statements = []
    for schema, table in tables:
        full = "%s.%s" % (_quote(schema), _quote(table))
        statements.append("SELECT COUNT(*) FROM %s;" % full)  # noqa: S608
        statements.append("CHECKSUM TABLE %s EXTENDED;" % full)
    schemas_sql = ",".join(_sql_string(s) for s in result) or "''"
    statements.append("SELECT 'objects', HEX(routine_schema), 'routines', COUNT(*) FROM information_schema.routines "  # noqa: S608
                      "WHERE routine_schema IN (%s) GROUP BY routine_schema;" % schemas_sql)
    statements.append("SELECT 'objects', HEX(trigger_schema), 'triggers', COUNT(*) FROM information_schema.triggers "  # noqa: S608
                      "WHERE trigger_schema IN (%s) GROUP BY trigger_schema;" % schemas_sql)
    out = query(target, conn, "\n".join(statements), password)
    if len(out) < 2 * len(tables):
        raise MariaDBError("the fingerprint query returned %d rows for %d tables" % (len(out), len(tables)))
    for index, (schema, table) in enumerate(tables):
        count, checksum = out[2 * index], out[2 * index + 1]
        # CHECKSUM TABLE: "<schema>.<table>" then the checksum: the last field whatever the name holds
        result[schema]["tables"][table] = {"rows": int(count[0]), "checksum": checksum[-1]}
    for row in out[2 * len(tables):]:
        if len(row) == 4 and row[0] == "objects":
            result[unhex_name(row[1])][row[2]] = int(row[3])
    return result


def _sql_string(value):
    return "'%s'" % value.replace("\\", "\\\\").replace("'", "\\'")


def _key_values(text):
    """Parse ``xtrabackup_checkpoints`` / ``xtrabackup_info`` (``key = value`` lines)."""
    values = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key.strip()] = value.strip()
    return values


def _binlog_info(text):
    """Parse the ``binlog_pos`` line of ``xtrabackup_info`` ("filename '...', position '...', GTID ...")."""
    match = re.search(r"binlog_pos\s*=\s*filename '([^']*)', position '(\d+)'(?:, GTID of the last change '([^']*)')?",
                      text)
    if not match:
        return None
    return {"file": match.group(1), "position": int(match.group(2)), "gtid": match.group(3) or ""}


def find_base(backup_root, component="mariadb"):
    """The newest complete set whose ``component`` succeeded, as ``(set_id, entry)``, or ``(None, None)``."""
    for item in reversed(list_sets(backup_root)):
        if not item.get("complete"):
            continue
        try:
            manifest = load_manifest(item["path"])
        except BackupSetError:
            continue
        entry = manifest.get("components", {}).get(component)
        if entry and entry.get("status") == "success" and entry.get("to_lsn"):
            return manifest["id"], entry
    return None, None


def plan_backup_type(requested, base_entry, now=None, full_interval_hours=24):
    """``full`` or ``incremental`` for ``requested`` (auto/full/incremental) and the base found.

    ``auto`` takes an incremental when a base exists and its chain's full is younger than
    ``full_interval_hours``; otherwise a full. An ``incremental`` without a base is an error.
    """
    if requested == "full":
        return "full"
    if base_entry is None:
        if requested == "incremental":
            raise MariaDBError("an incremental backup needs a base: no complete MariaDB backup is in the catalogue "
                               "(run a full one first, or use backup_type=auto)")
        return "full"
    if requested == "incremental":
        return "incremental"
    full_time = base_entry.get("chain_full_started") or base_entry.get("started")
    try:
        age_h = (utc(now) - parse_time(full_time)).total_seconds() / 3600.0
    except (TypeError, ValueError):
        return "full"
    return "incremental" if age_h < full_interval_hours else "full"


def backup(target, conn, dest_dir, backup_type="full", base_set=None, base_entry=None, password=None,
           parallel=2, zstd_level=3, zstd_threads=0, timeout=None, progress=None, backup_root=None, image=None,
           staging=None, beside_check=None):
    """Stream ``mariadb-backup --backup`` into ``dest_dir/mariadb.mbstream.zst``; return the manifest entry.

    ``beside_check``, a callable that raises nothing (the binary log archive), runs in a thread once the stream
    has ended - the backup's binary log position is then closed in - beside the artefact's check, and is awaited
    before this returns.

    The fingerprint describes the artefact: with ``image`` (the server's image) the backup (with its
    chain, for an incremental) is prepared in ``staging`` and fingerprinted by a throw-away server
    of that image (``fingerprint_artefact``), so it holds exactly what a restore brings back, however
    busy the live server was. Without an image (tools on the host) it is read from the live server
    after the stream and marked ``fingerprint_source: live-server`` (exact only on an idle server).
    """
    started = utc()
    t0 = time.monotonic()
    info = server_info(target, conn, password)
    lsn_dir = "/tmp/llmops-mariadb-lsn-%s" % secrets.token_hex(6)
    argv = ["mariadb-backup", "--backup", "--stream=mbstream", "--target-dir=%s" % lsn_dir,
            "--extra-lsndir=%s" % lsn_dir, "--parallel=%d" % parallel, "--user=%s" % conn.get("user", "root")]
    if conn.get("host"):
        argv += ["--host=%s" % conn["host"], "--port=%d" % int(conn.get("port") or 3306)]
    elif conn.get("socket"):
        argv.append("--socket=%s" % conn["socket"])
    if backup_type == "incremental":
        argv.append("--incremental-lsn=%s" % base_entry["to_lsn"])
    dest = os.path.join(dest_dir, ARTEFACT)
    env = _env(password)
    try:
        result = run_pipeline(target.argv(argv, env_names=env.keys()), dest, env=env, zstd_level=zstd_level,
                              zstd_threads=zstd_threads, timeout=timeout, progress=progress,
                              source_name="mariadb-backup")
        checkpoints = _key_values(target.text(["cat", "%s/xtrabackup_checkpoints" % lsn_dir]))
        backup_info = target.text(["cat", "%s/xtrabackup_info" % lsn_dir])
    finally:
        try:
            target.run(["rm", "-rf", lsn_dir])
        except ExecError:
            pass
    stream_s = round(time.monotonic() - t0, 3)
    beside = threading.Thread(target=beside_check, name="llmops-beside-check", daemon=True) if beside_check else None
    if beside:
        beside.start()
    try:
        fp, fp_source = _fingerprint_of(target, conn, password, dest, result.sha256, backup_type, backup_root,
                                        base_set, image, staging or os.path.join(dest_dir, ".fingerprint"), timeout)
    finally:
        if beside:
            beside.join()
    entry = {
        "status": "success",
        "type": "mariadb",
        "tool": "mariadb-backup",
        "tool_version": _key_values(backup_info).get("tool_version"),
        "server_version": info["version"],
        "backup_type": backup_type,
        **run_times(started, t0),
        "stream_s": stream_s,
        "bytes": result.bytes_out,
        "bytes_raw": result.bytes_in,
        "files": [{"path": dest, "sha256": result.sha256, "size": result.bytes_out}],
        "from_lsn": checkpoints.get("from_lsn"),
        "to_lsn": checkpoints.get("to_lsn"),
        "binlog_format": info["binlog_format"],
        "binlog": _binlog_info(backup_info),
        "gtid_current_pos": info["gtid_current_pos"],
        "fingerprint": fp,
        "fingerprint_source": fp_source,
    }
    if backup_type == "incremental":
        entry["parent"] = base_set
        entry["chain"] = list(base_entry.get("chain") or []) + [base_set]
        entry["chain_full_started"] = base_entry.get("chain_full_started") or base_entry.get("started")
    else:
        entry["chain"] = []
        entry["chain_full_started"] = entry["started"]
    return entry


def _fingerprint_of(target, conn, password, dest, sha256, backup_type, backup_root, base_set, image, staging,
                    timeout):
    """``(fingerprint, source)`` of a backup just streamed to ``dest``: its artefact's (with ``image``), else the
    live server's."""
    if not image:
        return fingerprint(target, conn, password), "live-server"
    chain = []
    if backup_type == "incremental":
        chain = restore_chain(backup_root, os.path.join(backup_root, base_set))
    chain.append(("this backup", dest, sha256))
    return fingerprint_artefact(image, chain, staging, timeout=timeout), "artefact"


SCRATCH_SOCKET = "/var/lib/mysql/.llmops-scratch.sock"


def scratch_server(image, datadir):
    """A throw-away ``mariadbd`` of ``image`` on ``datadir`` (no network, no grants, no binary log).

    It reads through the page cache (``--innodb-flush-method=fsync``, not the server's default O_DIRECT): the
    datadir was just written by ``mbstream -x`` and is still cached, so fingerprinting the artefact does not read
    it from the disk a second time."""
    return ScratchServer(
        image,
        ["mariadbd", "--user=root", "--datadir=/var/lib/mysql", "--skip-networking", "--skip-grant-tables",
         "--skip-log-bin", "--innodb-flush-method=fsync", "--socket=%s" % SCRATCH_SOCKET,
         "--pid-file=/var/lib/mysql/.llmops-scratch.pid"],
        mounts={datadir: "/var/lib/mysql"},
        ready_argv=["mariadb-admin", "--socket=%s" % SCRATCH_SOCKET, "ping", "--silent"],
        name_prefix="llmops-mariadb-scratch")


def fingerprint_artefact(image, chain, staging, timeout=None):
    """The fingerprint of what ``chain``'s artefacts hold: prepared in ``staging`` and read by a scratch server.

    ``chain`` is ``[(label, artefact path, sha256)]``, full first (``restore_chain``). The staging
    folder is removed afterwards, whatever happened.

    ``mbstream -x`` and ``mariadb-backup --prepare`` run in a container and name what they could not write
    relative to it (``Error writing file './ibdata1' (Errcode: 28 "No space left on device")``): a full disk is
    re-raised naming ``staging`` on this host, so that a staging folder on the backup volume is recognised as
    the backup volume being full (``llmops_backupset.no_space_on``), not as a failure of the database.
    """
    try:
        prepared = stage_restore(image, chain, staging, timeout=timeout)
        with scratch_server(image, prepared) as scratch:
            return fingerprint(scratch, {"user": "root", "socket": SCRATCH_SOCKET})
    except (LlmopsError, OSError) as exc:
        if not is_no_space(exc):
            raise
        cause = next((line.strip().lstrip("\a") for line in str(exc).splitlines() if is_no_space(line)), str(exc))
        raise LlmopsError("the staging folder %s/ (the backup is unpacked and prepared there to check it: its file "
                          "system needs room for the uncompressed database too) ran out of space: %s"
                          % (os.path.abspath(staging).rstrip(os.sep), cause)) from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def archive_binlogs(target, conn, archive_dir, password=None, zstd_level=3, flush=True, timeout=None):
    """Archive every closed binary log not yet in ``archive_dir``; return what was archived.

    ``FLUSH BINARY LOGS`` first closes the current log, so everything written until now becomes
    archivable. Each log is copied from the server's datadir through the pipeline to
    ``<name>.zst`` with a ``<name>.zst.sha256`` file (``sha256sum -c`` format) beside it. Log names
    are sequential, so a point-in-time restore replays the archive from the position a backup
    recorded onwards.
    """
    info = server_info(target, conn, password)
    if not info["log_bin"] or not info["log_bin_basename"]:
        raise MariaDBError("the binary log is off on this server (log_bin=0): point-in-time restore is impossible; "
                           "enable log_bin with binlog_format=ROW (compose/mariadb.cnf.j2)")
    if flush:
        query(target, conn, "FLUSH BINARY LOGS;", password)
    logs = [row[0] for row in query(target, conn, "SHOW BINARY LOGS;", password)]
    closed = logs[:-1]  # the last one is still being written
    os.makedirs(archive_dir, mode=0o700, exist_ok=True)
    log_dir = os.path.dirname(info["log_bin_basename"])
    archived = []
    for name in closed:
        dest = os.path.join(archive_dir, name + ".zst")
        if os.path.exists(dest) and os.path.exists(dest + ".sha256"):
            continue
        result = run_pipeline(target.argv(["cat", os.path.join(log_dir, name)]), dest, zstd_level=zstd_level,
                              timeout=timeout, source_name="cat %s" % name)
        write_file_atomic(dest + ".sha256", ("%s  %s\n" % (result.sha256, os.path.basename(dest))).encode("utf-8"))
        archived.append({"name": name, "path": dest, "sha256": result.sha256, "size": result.bytes_out,
                         "bytes_raw": result.bytes_in})
    return {
        "binlog_format": info["binlog_format"],
        "row_format": info["binlog_format"] == "ROW",
        "server_logs": logs,
        "closed": closed,
        "archived": archived,
        "archive_dir": archive_dir,
        "gtid_current_pos": info["gtid_current_pos"],
    }


def verify_archived_binlog(path):
    """Compare an archived binlog with its ``.sha256`` file; return ``(ok, sha256)``."""
    digest = hash_file(path)[0]
    try:
        with open(path + ".sha256", encoding="utf-8") as handle:
            expected = handle.read().split()[0]
    except (OSError, IndexError):
        return False, digest
    return digest == expected, digest


# --------------------------------------------------------------------------------------------
# restore


def restore_chain(backup_root, set_path, component="mariadb", until=None, partial=False):
    """The artefacts to apply for the set at ``set_path``, full first: ``[(set_id, path, sha256)]``.

    ``until`` (a set id of the chain) stops the chain after that set: a restore to the last complete point of a
    chain whose later incremental is missing or damaged (``restore_plan``'s ``mariadb_chain_partial``). With
    ``partial`` a set of the chain that is missing or has no usable artefact ends the chain before it instead
    of raising (the caller says so: the result then does not end with the set itself).

    The chain entries come from the manifest (untrusted until the set is authenticated): each must be a set
    id (``<name>_YYYYmmdd_HHMMSS``, no ``/`` nor ``..``), listed once, other than the set itself, whose folder
    resolves to a folder directly under ``backup_root``; each artefact path must stay inside its set
    (``confined_path``). Raises ``MariaDBError`` when an entry is not one, or a set of the chain is missing or
    lacks the component.
    """
    from ansible.module_utils.llmops_backupset import _SET_RE, confined_path  # pylint: disable=import-outside-toplevel

    manifest = load_manifest(set_path)
    set_id = manifest.get("id") or os.path.basename(os.path.abspath(set_path))
    entry = (manifest.get("components") or {}).get(component)
    if not isinstance(entry, dict) or entry.get("status") != "success":
        raise MariaDBError("set %s has no successful %s component" % (set_id, component))
    links = entry.get("chain") or []
    if not isinstance(links, list):
        raise MariaDBError("the %s chain of set %s is not a list (%r): the manifest is damaged or tampered with; "
                           "do not restore from this set" % (component, set_id, links))
    real_root = os.path.realpath(backup_root)
    seen = set()
    for link in links:
        if not isinstance(link, str) or not _SET_RE.match(link) or link == set_id or link in seen:
            raise MariaDBError("the %s chain of set %s lists %r, which is not the id of another set "
                               "(<name>_YYYYmmdd_HHMMSS, once each): the manifest is damaged or tampered with; do not "
                               "restore from this set" % (component, set_id, link))
        seen.add(link)
        where = os.path.realpath(os.path.join(backup_root, link))
        if os.path.dirname(where) != real_root:
            raise MariaDBError("the %s chain of set %s names set %s, whose folder resolves to %s, outside the backup "
                               "root %s (a symbolic link escapes it); do not restore from this set"
                               % (component, set_id, link, where, real_root))
    ids = list(links) + [set_id]
    if until is not None and until not in ids:
        raise MariaDBError("%r is not a set of the %s chain of %s (%s)" % (until, component, set_id, ", ".join(ids)))
    if until is not None:
        ids = ids[:ids.index(until) + 1]
    chain = []
    for link in ids:
        path = set_path if link == set_id else os.path.join(backup_root, link)
        try:
            try:
                item = (load_manifest(path).get("components") or {}).get(component) or {}
            except BackupSetError as exc:
                raise MariaDBError("the incremental chain of %s needs set %s, which is missing or unreadable: %s"
                                   % (set_id, link, exc)) from exc
            files = [f for f in item.get("files") or []
                     if isinstance(f, dict) and str(f.get("path")).endswith(ARTEFACT)]
            if not files or not files[0].get("sha256"):
                raise MariaDBError("set %s of the chain has no %s artefact with a sha256 in its manifest: restore "
                                   "from another set" % (link, ARTEFACT))
        except MariaDBError:
            if partial and chain:
                return chain
            raise
        try:
            artefact = confined_path(path, files[0]["path"])
        except BackupSetError as exc:
            raise MariaDBError("set %s of the chain of %s: %s" % (link, set_id, exc)) from exc
        chain.append((link, artefact, files[0]["sha256"]))
    return chain


def stage_restore(image, chain, staging, timeout=None):
    """Unpack every artefact of ``chain`` into ``staging`` and prepare the full with the incrementals applied.

    Runs ``zstd -d | mbstream -x`` (the sha256 of each artefact is checked while it streams) and
    ``mariadb-backup --prepare [--incremental-dir]`` in throw-away containers of ``image``.
    Returns the folder holding the prepared datadir. Nothing of the live server is touched.
    """
    if os.path.exists(staging):
        shutil.rmtree(staging)
    os.makedirs(staging, mode=0o700)
    tools = ImageTarget(image, {staging: "/restore"})
    for index, (set_id, path, sha256) in enumerate(chain):
        os.makedirs(os.path.join(staging, str(index)), mode=0o700)
        decompress_to(path, tools.argv(["mbstream", "-x", "-C", "/restore/%d" % index], interactive=True),
                      expected_sha256=sha256, timeout=timeout, consumer_name="mbstream -x (%s)" % set_id)
    # through the page cache (not O_DIRECT): what mbstream just wrote is read from memory, and the copy-back or the
    # scratch server that follows reads what the prepare wrote from memory too
    prepare = ["mariadb-backup", "--prepare", "--innodb-flush-method=fsync", "--target-dir=/restore/0"]
    tools.run(prepare, timeout=timeout or 3600)
    for index in range(1, len(chain)):
        tools.run(prepare + ["--incremental-dir=/restore/%d" % index], timeout=timeout or 3600)
    return os.path.join(staging, "0")


def swap_datadir(image, prepared, datadir, safety_suffix, owner="999:999", keep_safety_copy=True):
    """Move the current datadir aside (the safety copy) and copy the prepared backup into an empty one.

    Returns the safety copy's path (or None when there was no datadir, or it was not kept).
    The server must be stopped.
    """
    safety = None
    if os.path.exists(datadir):
        safety = datadir.rstrip("/") + safety_suffix
        if os.path.exists(safety):
            raise MariaDBError("a safety copy %s already exists: a previous restore was not finished; "
                               "inspect it and remove it or roll back before restoring again" % safety)
        os.rename(datadir, safety)
    os.makedirs(datadir, mode=0o750)
    tools = ImageTarget(image, {os.path.dirname(prepared): "/restore", datadir: "/var/lib/mysql"})
    tools.run(["mariadb-backup", "--copy-back", "--target-dir=/restore/%s" % os.path.basename(prepared),
               "--datadir=/var/lib/mysql"], timeout=None)
    tools.run(["chown", "-R", owner, "/var/lib/mysql"])
    if safety and not keep_safety_copy:
        shutil.rmtree(safety)
        safety = None
    return safety


def rollback_datadir(datadir, safety):
    """Put the safety copy back in place of a failed restore's datadir. The server must be stopped."""
    if not safety or not os.path.exists(safety):
        raise MariaDBError("no safety copy at %s: nothing to roll back to" % safety)
    if os.path.exists(datadir):
        shutil.rmtree(datadir)
    os.rename(safety, datadir)


def binlogs_to_replay(archive_dir, start_file):
    """The archived binlogs from ``start_file`` on, in order, each checked against its ``.sha256`` file."""
    if not os.path.isdir(archive_dir):
        raise MariaDBError("no binary log archive at %s: point-in-time restore is impossible" % archive_dir)
    names = sorted(n[:-4] for n in os.listdir(archive_dir) if n.endswith(".zst") and n[:-4] >= start_file)
    if not names or names[0] != start_file:
        raise MariaDBError("the binary log %s, where the backup ends, is not in the archive %s: point-in-time "
                           "restore cannot start there" % (start_file, archive_dir))
    result = []
    for expected_index, name in enumerate(names):
        if expected_index and _log_number(name) != _log_number(names[expected_index - 1]) + 1:
            raise MariaDBError("the binary log archive has a gap before %s: replay would skip transactions" % name)
        path = os.path.join(archive_dir, name + ".zst")
        if not verify_archived_binlog(path)[0]:
            raise MariaDBError("archived binary log %s does not match its checksum: it is corrupted" % path)
        result.append(path)
    return result


def _log_number(name):
    return int(name.rsplit(".", 1)[-1])


BINLOG_TZ = {"TZ": "UTC"}


def replay_binlogs(target, conn, logs, start_position, stop_datetime, staging, password=None, timeout=None):
    """Replay archived binlogs into the running server from ``start_position`` up to ``stop_datetime``.

    The logs are decompressed into ``staging``, copied into the server's container and decoded with
    its own ``mariadb-binlog --start-position --stop-datetime`` (UTC); the SQL is kept in staging and
    applied with the ``mariadb`` client. Returns ``{"reached": time of the last event replayed, "events": n,
    "archive_end": time of the newest event in the archive}`` (times UTC, None when there is none).
    """
    # an unguessable name (128 bits), created 0700 without -p: a folder or symlink planted beforehand by another
    # user of the container makes mkdir fail instead of being used; only the folder made here is removed
    inside = "/tmp/llmops-replay-%s" % secrets.token_hex(16)
    created = False
    local = []
    for path in logs:
        dest = os.path.join(staging, os.path.basename(path)[:-4])
        decompress_to(path, ["dd", "of=%s" % dest, "status=none"], timeout=timeout)
        local.append(dest)
    sql = os.path.join(staging, "replay.sql")
    try:
        target.run(["mkdir", "-m", "0700", "--", inside])
        created = True
        for path in local:
            copy = target.argv(["sh", "-c", 'cat > "$0"', "%s/%s" % (inside, os.path.basename(path))],
                               interactive=True)
            decompress_to(path, copy, compressed=False, timeout=timeout)
        argv = ["mariadb-binlog", "--start-position=%d" % int(start_position),
                "--stop-datetime=%s" % stop_datetime.strftime("%Y-%m-%d %H:%M:%S")]
        argv += ["%s/%s" % (inside, os.path.basename(p)) for p in local]
        # mariadb-binlog reads --stop-datetime and prints event times in its local time zone: TZ=UTC makes both
        # UTC whatever the container's TZ (a target_time given with another offset is converted by parse_time)
        run_pipeline(target.argv(argv, env_names=BINLOG_TZ.keys()), sql, compress=False, env=BINLOG_TZ,
                     timeout=timeout, source_name="mariadb-binlog")
        # where the archive ends: the newest event of its last log (a log closed by FLUSH ends with its Rotate)
        archive_end = None
        if local:
            last_log = target.run(["mariadb-binlog", "%s/%s" % (inside, os.path.basename(local[-1]))],
                                  env=BINLOG_TZ, timeout=timeout or 3600)
            for line in last_log.splitlines():
                archive_end = _event_time(line) or archive_end
    finally:
        if created:
            try:
                target.run(["rm", "-rf", "--", inside])
            except ExecError:
                pass
    reached = None
    events = 0
    safe = sql + ".safe"
    with open(sql, "rb") as handle, open(safe, "wb") as out:
        for line in comment_name_continuations(handle):
            out.write(line)
            stamp = _event_time(line)
            if stamp:
                reached = stamp
                events += 1
    os.replace(safe, sql)
    env = _env(password)
    # --binary-mode: the decoded log holds names and values verbatim; without it the client would read a
    # backslash in them as one of its own commands
    decompress_to(sql, target.argv(client_argv(conn, "--binary-mode"), env_names=env.keys(), interactive=True),
                  compressed=False, env=env, timeout=timeout, consumer_name="mariadb (replay)")
    return {"reached": reached, "events": events, "archive_end": archive_end}


_TABLE_MAP = b"\tTable_map: "


def comment_name_continuations(lines):
    """Yield ``mariadb-binlog`` output lines with the continuation lines of a comment commented out.

    The decoder writes a row event's table as a comment (``#... Table_map: `db`.`t` mapped to number N``);
    a name holding a newline continues that comment on lines without ``#``, which the client would
    then read as SQL. Inside the comment the backticks of the quoted names are balanced (a backtick
    in a name is doubled), so a comment whose backticks are unbalanced goes on until they are.
    """
    open_quote = False
    for line in lines:
        if open_quote:
            open_quote = line.count(b"`") % 2 == 0
            yield b"#" + line
            continue
        if line.startswith(b"#") and _TABLE_MAP in line:
            open_quote = line.split(_TABLE_MAP, 1)[1].count(b"`") % 2 == 1
        yield line


_EVENT_RE = re.compile(rb"^#(\d{6}) +(\d{1,2}:\d\d:\d\d) ")


def _event_time(line):
    """The UTC time of a ``mariadb-binlog`` event header line (``#260131 14:03:00 server id ...``), or None."""
    match = _EVENT_RE.match(line)
    if not match:
        return None
    return datetime.datetime.strptime("%s %s" % (match.group(1).decode(), match.group(2).decode()),
                                      "%y%m%d %H:%M:%S").replace(tzinfo=datetime.timezone.utc)


def prune_binlogs(backup_root, archive_dir, keep_days, now=None, dry_run=False):
    """Delete archived binlogs older than ``keep_days`` that no remaining set needs.

    A set needs every log from the one its MariaDB backup recorded (``binlog.file``) onwards, for a
    point-in-time restore from it; so nothing at or after the oldest such log of any set still in
    ``backup_root`` is deleted, whatever its age. Returns ``{"deleted", "kept", "oldest_needed"}``.
    """
    needed = []
    for item in list_sets(backup_root):
        binlog = ((item.get("components") or {}).get("mariadb") or {}).get("binlog") or {}
        if binlog.get("file"):
            needed.append(binlog["file"])
    oldest_needed = min(needed) if needed else None
    cutoff = utc(now).timestamp() - keep_days * 86400
    deleted, kept = [], []
    names = sorted(n[:-4] for n in os.listdir(archive_dir) if n.endswith(".zst")) if os.path.isdir(archive_dir) else []
    for name in names:
        path = os.path.join(archive_dir, name + ".zst")
        old = os.path.getmtime(path) < cutoff
        if old and (oldest_needed is None or name < oldest_needed):
            deleted.append(name)
            if not dry_run:
                for victim in (path, path + ".sha256"):
                    if os.path.exists(victim):
                        os.unlink(victim)
        else:
            kept.append(name)
    return {"deleted": deleted, "kept": kept, "oldest_needed": oldest_needed}
