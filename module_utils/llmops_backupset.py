"""The backup set format: one folder per run with a manifest and checksummed files.

Layout of a root (``/backup`` for instance)::

    <root>/.lock                              flock held by the run (SetLock, or flock(1) in cron)
    <root>/.<name>_YYYYmmdd_HHMMSS.partial/   a run in progress (or abandoned: cleanup_partials)
        .owner.json                           host, pid, started, heartbeat of the run
        .components/<component>.json          one manifest entry per component, merged at finalize
    <root>/<name>_YYYYmmdd_HHMMSS/            a finalized set (status success or failed)
        backup_manifest.json                  schema_version 1, see write_manifest
        SHA256SUMS                            ``<sha256>  <relative path>`` for every other file
        <artefacts>                           e.g. mariadb/full.mbstream.zst, postgres/app.dump.zst
    <root>/latest -> <name>_YYYYmmdd_HHMMSS   newest successful set (symlink, replaced atomically)

Timestamps are UTC. A set's id is its folder name ``<name>_YYYYmmdd_HHMMSS``. A set whose run
failed is still finalized (its good artefacts may matter) but says ``status: failed``, never
becomes ``latest`` and is not listed by ``list_sets(complete_only=True)``.

Stdlib only; modules import it as ``from ansible.module_utils.llmops_backupset import ...``.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import time

try:
    from ansible.module_utils.llmops_pipeline import fsync_dir, hash_file
except ImportError:  # imported directly (tests) rather than through Ansible
    from module_utils.llmops_pipeline import fsync_dir, hash_file

SCHEMA_VERSION = 1
FORMAT = "llmops-backupset"
MANIFEST = "backup_manifest.json"
SUMS = "SHA256SUMS"
OWNER = ".owner.json"
COMPONENTS_DIR = ".components"
LATEST = "latest"
LOCK = ".lock"
STAMP_FORMAT = "%Y%m%d_%H%M%S"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_SET_RE = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9_.-]*)_(?P<stamp>\d{8}_\d{6})$")
_PARTIAL_RE = re.compile(r"^\.(?P<id>[A-Za-z0-9][A-Za-z0-9_.-]*_\d{8}_\d{6})\.partial$")
_SUMS_LINE_RE = re.compile(r"^([0-9a-f]{64}) [ *](.+)$")


class BackupSetError(Exception):
    """A backup set operation cannot be done; the message tells the operator what to do."""


class SetLockError(BackupSetError):
    """Another process holds the root's lock."""


# --------------------------------------------------------------------------------------------
# time and names


def utc(now=None):
    """Return ``now`` (default: the current time) as an aware UTC datetime; naive means UTC."""
    if now is None:
        return datetime.datetime.now(datetime.timezone.utc)
    if now.tzinfo is None:
        return now.replace(tzinfo=datetime.timezone.utc)
    return now.astimezone(datetime.timezone.utc)


def isoformat(now):
    """``2025-01-31T02:00:00Z`` for an instant."""
    return utc(now).strftime("%Y-%m-%dT%H:%M:%SZ")


def run_times(started, t0):
    """The ``started`` / ``ended`` / ``duration_s`` of a component entry: ``started`` is the wall-clock
    start (datetime), ``t0`` the matching ``time.monotonic()`` (durations immune to clock steps)."""
    return {"started": isoformat(started), "ended": isoformat(utc()), "duration_s": round(time.monotonic() - t0, 3)}


def parse_time(value):
    """Parse an ISO 8601 instant written by this module (``...Z`` or with an offset)."""
    if isinstance(value, datetime.datetime):
        return utc(value)
    text = str(value).strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    return utc(datetime.datetime.fromisoformat(text))


def new_set_id(now=None):
    """The timestamp part of a set id: ``YYYYmmdd_HHMMSS`` in UTC."""
    return utc(now).strftime(STAMP_FORMAT)


def set_id_for(name, now=None):
    """The set id (folder name) ``<name>_YYYYmmdd_HHMMSS``."""
    check_name(name)
    return "%s_%s" % (name, new_set_id(now))


def check_name(name, what="set name"):
    """Raise ``BackupSetError`` unless ``name`` is a safe single path component."""
    if not isinstance(name, str) or not _NAME_RE.match(name) or name in (LATEST,):
        raise BackupSetError("invalid %s %r: use letters, digits, '_', '.', '-' (not starting with '.')"
                             % (what, name))
    return name


_PLAIN_FILE_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_MAX_ENCODED = 160


def encode_name(name):
    """A single, safe path component for a store's object name (database, collection, file name...).

    Names are data, never paths: a name may hold ``/``, ``..``, newlines, quotes, Korean, emoji.
    Plain names (letters, digits, ``_``, ``.``, ``-``, not starting with ``.``) are kept as they are;
    any other is percent-encoded (UTF-8, ``%XX``; ``%`` itself included), and a result longer than
    160 characters is cut and suffixed with ``~`` and 16 hex digits of the name's sha256, so that
    it stays unique and within every file system's limit. The mapping is not meant to be decoded:
    a module records ``{name: encoded}`` in its manifest entry and a restore reads it from there.
    """
    if not isinstance(name, str) or name == "":
        raise BackupSetError("cannot encode the empty or non-text name %r as a file name" % (name,))
    if _PLAIN_FILE_NAME_RE.match(name):
        return name
    encoded = "".join(ch if (ch.isascii() and (ch.isalnum() or ch in "_-")) else
                      "".join("%%%02X" % b for b in ch.encode("utf-8", "surrogatepass")) for ch in name)
    if encoded.startswith(".") or encoded.startswith("-"):
        encoded = "%%%02X" % ord(encoded[0]) + encoded[1:]
    if len(encoded) > _MAX_ENCODED:
        digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:16]
        encoded = encoded[:_MAX_ENCODED - 17] + "~" + digest
    return encoded


def stamp_time(set_id):
    """The UTC datetime encoded in a set id, or None."""
    match = _SET_RE.match(set_id)
    if not match:
        return None
    return datetime.datetime.strptime(match.group("stamp"), STAMP_FORMAT).replace(tzinfo=datetime.timezone.utc)


# --------------------------------------------------------------------------------------------
# durable file helpers


def write_file_atomic(path, data, mode=0o600):
    """Write ``data`` (bytes) to ``path`` via a 0600 temp file, fsync and rename."""
    tmp = "%s.tmp-%s" % (path, secrets.token_hex(6))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    os.rename(tmp, path)


def write_json(path, obj):
    """Write ``obj`` as sorted, indented JSON (0600, atomic)."""
    write_file_atomic(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("utf-8"))


def read_json(path):
    """Load a JSON file."""
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def _ensure_root(root):
    root = os.path.abspath(os.fspath(root))
    if not os.path.isdir(root):
        os.makedirs(root, mode=0o700, exist_ok=True)
        os.chmod(root, 0o700)
    return root


# --------------------------------------------------------------------------------------------
# lock


class SetLock:
    """Exclusive, non-blocking ``fcntl.flock`` on ``<root>/.lock`` for the life of a run.

    ``with SetLock(root):`` raises ``SetLockError("another backup run holds <root>/.lock (pid N)")``
    when another process holds it. The same file can be held by ``flock -n <root>/.lock cmd`` in
    cron, so a cron run and a scripted run exclude each other. The file is never deleted.
    """

    def __init__(self, root):
        self.root = _ensure_root(root)
        self.path = os.path.join(self.root, LOCK)
        self.fd = None

    def acquire(self):
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = "unknown"
            try:
                holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
            except OSError:
                pass
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
                raise SetLockError("another backup run holds %s (pid %s); wait for it to finish or check that "
                                   "process" % (self.path, holder)) from exc
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, ("%d\n" % os.getpid()).encode("ascii"), 0)
        self.fd = fd
        return self

    def release(self):
        if self.fd is not None:
            try:
                os.ftruncate(self.fd, 0)
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            finally:
                os.close(self.fd)
                self.fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc_info):
        self.release()


# --------------------------------------------------------------------------------------------
# set lifecycle


def partial_path(root, set_id):
    """``<root>/.<set_id>.partial``."""
    return os.path.join(os.path.abspath(os.fspath(root)), ".%s.partial" % set_id)


def begin_set(root, name, now=None, owner=None):
    """Create ``<root>/.<name>_YYYYmmdd_HHMMSS.partial/`` (0700) and return its path.

    ``root`` is created 0700 if absent. ``owner`` (dict) is stored with host, pid and times in
    ``.owner.json``. Fails if a set or partial with the same id exists.
    """
    root = _ensure_root(root)
    now = utc(now)
    set_id = set_id_for(name, now)
    if os.path.lexists(os.path.join(root, set_id)):
        raise BackupSetError("set %s already exists in %s; runs of one name need distinct seconds" % (set_id, root))
    path = partial_path(root, set_id)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError as exc:
        raise BackupSetError("%s already exists: another run started in the same second" % path) from exc
    os.chmod(path, 0o700)
    os.mkdir(os.path.join(path, COMPONENTS_DIR), 0o700)
    record = {"set_id": set_id, "name": name, "host": socket.gethostname(), "pid": os.getpid(),
              "started": isoformat(now), "heartbeat": isoformat(now)}
    record.update(owner or {})
    write_json(os.path.join(path, OWNER), record)
    fsync_dir(path)
    fsync_dir(root)
    return path


def parse_partial(partial_dir):
    """Return ``(root, set_id)`` of a partial folder path, or raise ``BackupSetError``."""
    partial_dir = os.path.abspath(os.fspath(partial_dir)).rstrip("/")
    match = _PARTIAL_RE.match(os.path.basename(partial_dir))
    if not match or not os.path.isdir(partial_dir):
        raise BackupSetError("%s is not an open backup set (expected <root>/.<name>_YYYYmmdd_HHMMSS.partial "
                             "as returned by begin)" % partial_dir)
    return os.path.dirname(partial_dir), match.group("id")


def heartbeat(partial_dir, now=None):
    """Record that the run owning ``partial_dir`` is alive."""
    path = os.path.join(partial_dir, OWNER)
    record = read_json(path) if os.path.exists(path) else {}
    record["heartbeat"] = isoformat(now)
    write_json(path, record)


def partial_age(partial_dir, now=None):
    """Seconds since the partial's last heartbeat (folder mtime when it has no owner record)."""
    now = utc(now)
    try:
        last = parse_time(read_json(os.path.join(partial_dir, OWNER))["heartbeat"])
    except (OSError, ValueError, KeyError, TypeError):
        last = utc(datetime.datetime.fromtimestamp(os.stat(partial_dir).st_mtime, datetime.timezone.utc))
    return (now - last).total_seconds()


def list_partials(root):
    """Paths of the ``.partial`` folders under ``root`` (sorted)."""
    root = os.path.abspath(os.fspath(root))
    if not os.path.isdir(root):
        return []
    return sorted(os.path.join(root, e) for e in os.listdir(root)
                  if _PARTIAL_RE.match(e) and os.path.isdir(os.path.join(root, e)))


def cleanup_partials(root, older_than, now=None, dry_run=False):
    """Remove ``.partial`` folders whose last heartbeat is older than ``older_than`` seconds.

    Returns the list of removed (or, with ``dry_run``, removable) paths.
    """
    if isinstance(older_than, datetime.timedelta):
        older_than = older_than.total_seconds()
    removed = []
    for path in list_partials(root):
        if partial_age(path, now) > older_than:
            if not dry_run:
                shutil.rmtree(path)
            removed.append(path)
    if removed and not dry_run:
        fsync_dir(os.path.abspath(os.fspath(root)))
    return removed


def _set_files(path, links=False):
    """Relative paths of every file under ``path`` except SHA256SUMS (sorted).

    Symbolic links (an uploads tree may hold some) are left out, or with ``links=True`` are the
    only ones returned: SHA256SUMS cannot check a link, so the manifest records its target instead.
    """
    files = []
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames.sort()
        for filename in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            full = os.path.join(dirpath, filename)
            rel = os.path.relpath(full, path)
            if rel == SUMS or os.path.islink(full) != links:
                continue
            files.append(rel)
    return sorted(files)


def set_links(path):
    """``[{path, target}]`` of every symbolic link in a set (recorded in the manifest)."""
    return [{"path": rel, "target": os.readlink(os.path.join(path, rel))} for rel in _set_files(path, links=True)]


def hash_set_files(path):
    """Hash every regular file of a set except the manifest and SHA256SUMS.

    Returns ``[{path, size, sha256}]`` sorted by path; symbolic links are left out (see
    ``set_links``); a special file (fifo, device) raises.
    """
    entries = []
    for rel in _set_files(path):
        if rel == MANIFEST:
            continue
        full = os.path.join(path, rel)
        if not os.path.isfile(full):
            raise BackupSetError("%s is not a regular file; a set holds regular files only" % full)
        digest, size = hash_file(full)
        entries.append({"path": rel, "size": size, "sha256": digest})
    return entries


def write_manifest(partial_dir, manifest, files=None):
    """Write ``backup_manifest.json`` and ``SHA256SUMS`` into ``partial_dir``; return the manifest.

    Adds ``schema_version`` and ``format``, ``files`` (path, size, sha256 of every file of the set
    except the manifest and SHA256SUMS; ``files`` from ``hash_set_files`` saves hashing twice) and
    ``totals``. SHA256SUMS lists every file except itself, the manifest included, as
    ``<sha256>  <relative path>`` sorted by path, so that ``cd set && sha256sum -c SHA256SUMS``
    accepts it. Files and folders are fsynced.
    """
    manifest = dict(manifest)
    manifest["schema_version"] = SCHEMA_VERSION
    manifest["format"] = FORMAT
    entries = hash_set_files(partial_dir) if files is None else [dict(e) for e in files]
    manifest["files"] = entries
    manifest["totals"] = {"files": len(entries), "bytes": sum(e["size"] for e in entries)}
    manifest["links"] = set_links(partial_dir)
    write_json(os.path.join(partial_dir, MANIFEST), manifest)
    sums = {e["path"]: e["sha256"] for e in entries}
    sums[MANIFEST] = hash_file(os.path.join(partial_dir, MANIFEST))[0]
    text = "".join("%s  %s\n" % (sums[p], p) for p in sorted(sums))
    write_file_atomic(os.path.join(partial_dir, SUMS), text.encode("utf-8"))
    dirs = {os.path.dirname(os.path.join(partial_dir, e["path"])) for e in entries}
    for directory in sorted(dirs | {os.path.abspath(partial_dir)}):
        fsync_dir(directory)
    return manifest


def _update_latest(root, set_id):
    tmp = os.path.join(root, ".latest.tmp-%s" % secrets.token_hex(6))
    os.symlink(set_id, tmp)
    try:
        os.replace(tmp, os.path.join(root, LATEST))
    except BaseException:
        os.unlink(tmp)
        raise
    fsync_dir(root)


def finalize_set(partial_dir, root, status):
    """Rename a partial set to ``<root>/<name>_YYYYmmdd_HHMMSS`` and return the new path.

    The manifest must already be written and say the same ``status``. Only a ``success`` set
    replaces ``<root>/latest`` (atomically: temp symlink + rename).
    """
    if status not in ("success", "failed"):
        raise BackupSetError("status must be 'success' or 'failed', got %r" % (status,))
    root = os.path.abspath(os.fspath(root))
    parent, set_id = parse_partial(partial_dir)
    if parent != root:
        raise BackupSetError("%s is not under root %s" % (partial_dir, root))
    manifest = load_manifest(partial_dir)
    if manifest.get("status") != status:
        raise BackupSetError("manifest of %s says status %r, finalize asked for %r"
                             % (partial_dir, manifest.get("status"), status))
    if not os.path.isfile(os.path.join(partial_dir, SUMS)):
        raise BackupSetError("%s has no %s; call write_manifest first" % (partial_dir, SUMS))
    final = os.path.join(root, set_id)
    if os.path.lexists(final):
        raise BackupSetError("%s already exists" % final)
    os.rename(partial_dir, final)
    fsync_dir(root)
    if status == "success":
        _update_latest(root, set_id)
    return final


def load_manifest(path):
    """Load and check ``backup_manifest.json`` of a set (or partial); raise ``BackupSetError``."""
    file_path = os.path.join(os.fspath(path), MANIFEST)
    try:
        manifest = read_json(file_path)
    except FileNotFoundError as exc:
        raise BackupSetError("%s has no %s" % (path, MANIFEST)) from exc
    except (OSError, ValueError) as exc:
        raise BackupSetError("cannot read %s: %s" % (file_path, exc)) from exc
    if not isinstance(manifest, dict) or manifest.get("schema_version") != SCHEMA_VERSION:
        raise BackupSetError("%s: unsupported schema_version %r (expected %d)"
                             % (file_path, manifest.get("schema_version") if isinstance(manifest, dict) else None,
                                SCHEMA_VERSION))
    return manifest


def summarize(path, manifest):
    """The list/retention view of a set: id, times, status and per-component summary."""
    set_id = os.path.basename(os.path.abspath(path))
    components = {}
    for cname, comp in sorted((manifest.get("components") or {}).items()):
        comp = comp or {}
        components[cname] = {
            "type": comp.get("type"),
            "backup_type": comp.get("backup_type", "full"),
            "status": comp.get("status"),
            "parent": comp.get("parent"),
            "binlog": comp.get("binlog"),
            "bytes": sum(int(f.get("size", 0)) for f in comp.get("files") or []),
        }
    return {
        "id": set_id,
        "name": manifest.get("name"),
        "path": os.path.abspath(path),
        "status": manifest.get("status"),
        "host": manifest.get("host"),
        "started": manifest.get("started"),
        "ended": manifest.get("ended"),
        "bytes": (manifest.get("totals") or {}).get("bytes"),
        "components": components,
    }


def list_sets(root, complete_only=False):
    """List the finalized sets under ``root`` (sorted by time, oldest first).

    Each item: ``summarize()`` plus ``complete`` (manifest and SHA256SUMS present) and ``latest``.
    ``.partial`` folders and folders without a valid manifest are ignored. ``complete_only``
    returns only complete sets with ``status: success``.
    """
    root = os.path.abspath(os.fspath(root))
    if not os.path.isdir(root):
        return []
    try:
        latest = os.readlink(os.path.join(root, LATEST))
    except OSError:
        latest = None
    out = []
    for entry in os.listdir(root):
        path = os.path.join(root, entry)
        if not _SET_RE.match(entry) or os.path.islink(path) or not os.path.isdir(path):
            continue
        try:
            manifest = load_manifest(path)
        except BackupSetError:
            continue
        item = summarize(path, manifest)
        item["complete"] = os.path.isfile(os.path.join(path, SUMS))
        item["latest"] = entry == latest
        if complete_only and not (item["complete"] and item["status"] == "success"):
            continue
        out.append(item)
    out.sort(key=lambda s: (s["ended"] or "", s["id"]))
    return out


def resolve_set(root, ref=None):
    """Path of a set given ``None``/``latest``, a set id or a path."""
    root = os.path.abspath(os.fspath(root))
    if ref in (None, "", LATEST):
        path = os.path.join(root, LATEST)
        if not os.path.lexists(path):
            raise BackupSetError("%s has no 'latest' set yet (no successful backup finalized)" % root)
        return os.path.realpath(path)
    ref = os.fspath(ref)
    if os.sep in ref:
        return os.path.abspath(ref)
    check_name(ref, "set id")
    return os.path.join(root, ref)


def parse_sums(text):
    """Parse SHA256SUMS text into ``{path: sha256}``; raise ``ValueError`` on a bad line."""
    sums = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        match = _SUMS_LINE_RE.match(line)
        if not match:
            raise ValueError("line %d is not '<sha256>  <path>': %r" % (number, line[:200]))
        sums[match.group(2)] = match.group(1)
    return sums


def verify_set(path):
    """Re-hash every file of a set against SHA256SUMS and the manifest; never raises.

    Returns ``{path, ok, status, checked, bytes, missing, extra, mismatched, errors}``:
    ``missing``: listed but absent; ``extra``: present but unlisted; ``mismatched``: content
    differs from SHA256SUMS (or the manifest disagrees with SHA256SUMS); ``errors``: anything else.
    """
    path = os.path.abspath(os.fspath(path))
    result = {"path": path, "ok": False, "status": None, "checked": 0, "bytes": 0,
              "missing": [], "extra": [], "mismatched": [], "errors": []}
    if not os.path.isdir(path):
        result["errors"].append("%s is not a folder" % path)
        return result
    try:
        with open(os.path.join(path, SUMS), encoding="utf-8") as handle:
            sums = parse_sums(handle.read())
    except (OSError, ValueError) as exc:
        result["errors"].append("cannot read %s: %s" % (SUMS, exc))
        sums = None
    manifest = None
    try:
        manifest = load_manifest(path)
        result["status"] = manifest.get("status")
    except BackupSetError as exc:
        result["errors"].append(str(exc))
    present = set(_set_files(path))
    listed = dict(sums or {})
    if manifest is not None:
        for entry in manifest.get("files") or []:
            rel = entry.get("path")
            if sums is not None and rel in sums and sums[rel] != entry.get("sha256"):
                result["mismatched"].append(rel)
                result["errors"].append("%s: manifest sha256 differs from %s" % (rel, SUMS))
            if sums is not None and rel not in sums:
                result["errors"].append("%s: in the manifest but not in %s" % (rel, SUMS))
            listed.setdefault(rel, entry.get("sha256"))
    for rel in sorted(listed):
        full = os.path.join(path, rel)
        if os.path.isabs(rel) or rel.split("/")[0] == ".." or not os.path.abspath(full).startswith(path + os.sep):
            result["errors"].append("%s: path escapes the set" % rel)
            continue
        if rel not in present:
            result["missing"].append(rel)
            continue
        try:
            digest, size = hash_file(full)
        except OSError as exc:
            result["errors"].append("%s: %s" % (rel, exc))
            continue
        result["checked"] += 1
        result["bytes"] += size
        if digest != listed[rel] and rel not in result["mismatched"]:
            result["mismatched"].append(rel)
    result["extra"] = sorted(present - set(listed))
    if manifest is not None:
        recorded = {link["path"]: link["target"] for link in manifest.get("links") or []}
        actual = {link["path"]: link["target"] for link in set_links(path)}
        for rel in sorted(set(recorded) | set(actual)):
            if rel not in actual:
                result["missing"].append(rel)
            elif rel not in recorded:
                result["extra"].append(rel)
            elif recorded[rel] != actual[rel]:
                result["mismatched"].append(rel)
    result["mismatched"].sort()
    result["ok"] = sums is not None and manifest is not None and not (
        result["missing"] or result["extra"] or result["mismatched"] or result["errors"])
    return result


def diff_fingerprints(expected, actual, prefix="", only_expected=False):
    """How ``actual`` differs from ``expected`` (nested dicts, such as a component's ``fingerprint``
    in the manifest and the same fingerprint taken after a restore), as readable lines.

    Every store's restore verifies with this one comparison. With ``only_expected`` the top level
    compares only the keys of ``expected`` (the databases a selective restore brought back).
    """
    problems = []
    keys = set(expected) if only_expected else set(expected) | set(actual)
    for key in sorted(keys, key=str):
        where = "%s%s" % (prefix, key)
        if key not in actual:
            problems.append("%s: missing, expected %s" % (where, json.dumps(expected[key], sort_keys=True)[:200]))
        elif key not in expected:
            problems.append("%s: not in the backup" % where)
        elif isinstance(expected[key], dict) and isinstance(actual[key], dict):
            problems.extend(diff_fingerprints(expected[key], actual[key], where + "."))
        elif expected[key] != actual[key]:
            problems.append("%s: %s, expected %s" % (where, actual[key], expected[key]))
    return problems
