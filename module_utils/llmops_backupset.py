"""The backup set format: one folder per run with a manifest and checksummed files.

Layout of a root (``/backup`` for instance)::

    <root>/.<name>_YYYYmmdd_HHMMSS.partial/   a run in progress (or abandoned: cleanup_partials)
        .owner.json                           host, boot, the run's process (pid + start time), heartbeat
        .components/<component>.json          one manifest entry per component, merged at finalize
    <root>/<name>_YYYYmmdd_HHMMSS/            a finalized set (status success or failed)
        backup_manifest.json                  schema_version 1, see write_manifest
        SHA256SUMS                            ``<sha256>  <relative path>`` for every other file,
                                              escaped as GNU ``sha256sum`` does (see sums_line)
        SHA256SUMS.hmac                       with a key: HMAC-SHA256 of the set id and SHA256SUMS
        <artefacts>                           e.g. mariadb/full.mbstream.zst, postgres/app.dump.zst
        verification.json                     added after finalize: checksum / restore test records
        verification.json.sha256              its checksum (``sha256sum -c`` format)
    <root>/latest -> <name>_YYYYmmdd_HHMMSS   newest successful set (symlink, replaced atomically)

Timestamps are UTC. A set's id is its folder name ``<name>_YYYYmmdd_HHMMSS``. A set whose run
failed is still finalized (its good artefacts may matter, when the disk has room for them) but says
``status: failed``, never becomes ``latest`` and is not listed by ``list_sets(complete_only=True)``.
``finalize_set`` reads SHA256SUMS back before the rename: a set whose SHA256SUMS does not list exactly
its files is finalized as failed.

A run killed with SIGKILL leaves only its ``.partial`` folder (the rename is the commit point; the
bookkeeping that names its owner stays until just before it). ``assess_partial`` tells an abandoned
partial from a live run by its owner record: the run's ``ansible-playbook`` process and its start time
on this host (``run_owner``); a dead owner's partial is removed by the next ``begin`` at once and by
``cleanup_partials`` whatever its age, a live one never; when the owner cannot be checked the heartbeat
age decides. A backup volume that fills during a run (``no_space_on``) makes finalize remove the partial
and say how much to free (``storage_full``).

Everything read back from a set (manifest, SHA256SUMS) is untrusted: ``confined_path`` turns an
entry into a file path only when it stays inside the set. The checksummed manifest is never
rewritten after finalize; what later checks found (``sha256sum``, a restore test) is appended to
``verification.json`` by ``record_verification``.

Authenticated sets: with ``backup_auth_key`` (from the vault, never on the backup volume) finalize writes
``SHA256SUMS.hmac`` (``set_auth_line``: an HMAC-SHA256 over the set id and the exact bytes of SHA256SUMS,
which lists the manifest and every artefact, plus the key's id) before the rename. ``verify_set`` and the
restore planning, given the key, refuse a set whose HMAC is missing (unless ``allow_unauthenticated``: a set
made before authentication), made with another key (named by its id), or wrong (SHA256SUMS and the manifest
edited together, or the set renamed). The verification records are NOT authenticated (they are appended
after finalize, by whoever checked the set): they are informational only - no restore decision rests on
them (the restore plan shows them as unauthenticated; what it restores is decided by the HMAC and the
checksums), and a forged "restore-tested" record can at most make a drill test another set first.

Stdlib only; modules import it as ``from ansible.module_utils.llmops_backupset import ...``.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
import shutil
import socket
import stat
import time

try:
    from ansible.module_utils.llmops_common import InvalidValueError, LlmopsError, write_file_atomic, write_json
    from ansible.module_utils.llmops_layout import LAYOUT
    from ansible.module_utils.llmops_pipeline import fsync_dir, hash_file
except ImportError:  # imported directly (tests) rather than through Ansible
    from module_utils.llmops_common import InvalidValueError, LlmopsError, write_file_atomic, write_json
    from module_utils.llmops_layout import LAYOUT
    from module_utils.llmops_pipeline import fsync_dir, hash_file

SCHEMA_VERSION = 1
FORMAT = "llmops-backupset"
MANIFEST = "backup_manifest.json"
SUMS = "SHA256SUMS"
VERIFICATION = "verification.json"
VERIFICATION_SUMS = VERIFICATION + ".sha256"
VERIFICATION_FORMAT = "llmops-verification"
VERIFICATION_SCHEMA_VERSION = 1
VERIFICATION_METHODS = ("checksums", "restore")
VERIFICATION_RESULTS = ("passed", "failed")
# Files of a finalized set that SHA256SUMS does not list: SHA256SUMS itself, its HMAC (SHA256SUMS.hmac, written
# last before the rename) and the verification records appended after finalize (they carry their own checksum).
UNLISTED = (SUMS, VERIFICATION, VERIFICATION_SUMS, SUMS + ".hmac")
# The set's authentication: an HMAC-SHA256 over the set id and the exact bytes of SHA256SUMS (which lists the
# manifest and every artefact), under a key kept off the backup volume (see set_auth_line).
SUMS_HMAC = SUMS + ".hmac"
AUTH_FORMAT = "llmops-set-hmac"
AUTH_VERSION = 1
AUTH_MIN_KEY = 16
_AUTH_LINE_RE = re.compile(r"^llmops-set-hmac v(?P<version>\d+) set=(?P<set>\S+) key=(?P<key>[0-9a-f]{8}) "
                           r"hmac-sha256=(?P<mac>[0-9a-f]{64})\n?$")
OWNER = ".owner.json"
COMPONENTS_DIR = ".components"
LATEST = LAYOUT["latest"]
STAMP_FORMAT = "%Y%m%d_%H%M%S"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_SET_RE = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9_.-]*)_(?P<stamp>\d{8}_\d{6})$")
_PARTIAL_RE = re.compile(r"^\.(?P<id>[A-Za-z0-9][A-Za-z0-9_.-]*_\d{8}_\d{6})\.partial$")
_SUMS_LINE_RE = re.compile(rb"([0-9a-fA-F]{64}) [ *](.+)", re.S)
_HEX64_RE = re.compile(r"^[0-9a-f]{64}$")


def is_sha256(value):
    """Whether ``value`` is a sha256 as this code writes it (64 lowercase hex digits)."""
    return isinstance(value, str) and bool(_HEX64_RE.match(value))


class BackupSetError(LlmopsError):
    """A backup set operation cannot be done; the message tells the operator what to do."""


class RestoreInProgress(BackupSetError):
    """A live restore holds the backup root (``take_restore_lock``): no backup may begin."""


class SumsFormatError(BackupSetError, ValueError):
    """A SHA256SUMS text has a line that is not ``[\\]<sha256>  <name>`` (also a ``ValueError``)."""


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
    """Parse an ISO 8601 instant (``...Z`` or with an offset; none means UTC).

    Raises ``InvalidValueError`` (a ``ValueError``) naming the value otherwise.
    """
    if isinstance(value, datetime.datetime):
        return utc(value)
    text = str(value).strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    try:
        return utc(datetime.datetime.fromisoformat(text))
    except ValueError as exc:
        raise InvalidValueError("%r is not an ISO 8601 time such as 2026-11-22T14:03:00Z" % (value,)) from exc


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


# --------------------------------------------------------------------------------------------
# durable file helpers


def read_json(path):
    """Load a JSON file."""
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def _ensure_root(root):
    """Create the backup root (mode 0700), or bring an existing one back to 0700; return its absolute path."""
    root = os.path.abspath(os.fspath(root))
    if not os.path.isdir(root):
        os.makedirs(root, mode=0o700, exist_ok=True)
    if stat.S_IMODE(os.stat(root).st_mode) != 0o700:
        os.chmod(root, 0o700)
    return root


# --------------------------------------------------------------------------------------------
# set lifecycle


def partial_path(root, set_id):
    """``<root>/.<set_id>.partial``."""
    return os.path.join(os.path.abspath(os.fspath(root)), ".%s.partial" % set_id)


def begin_set(root, name, now=None, owner=None):
    """Create ``<root>/.<name>_YYYYmmdd_HHMMSS.partial/`` (0700) and return its path.

    ``root`` is created 0700 if absent. ``.owner.json`` records the host, the boot, the process that
    represents the run (``run_owner``: ``pid``, ``pid_start``, ``pid_cmd``; null when it cannot be
    determined), this process (``module_pid``) and the times; ``owner`` (dict) overrides or adds keys.
    Fails if a set or partial with the same id exists. A partial whose owner record cannot be written
    (a full disk) is removed again, so that it never blocks the next run.
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
    try:
        # written first, checked second (see take_restore_lock): a restore holding the root refuses the backup
        restore = assess_restore(root, now)
        if restore is not None and restore["blocks_backups"]:
            raise RestoreInProgress(restore_busy_msg(restore))
        os.chmod(path, 0o700)
        os.mkdir(os.path.join(path, COMPONENTS_DIR), 0o700)
        record = {"set_id": set_id, "name": name, "host": socket.gethostname(), "boot_id": boot_id(),
                  "module_pid": os.getpid(), "started": isoformat(now), "heartbeat": isoformat(now)}
        record.update(run_owner() or {"pid": None, "pid_start": None, "pid_cmd": None})
        record.update(owner or {})
        write_json(os.path.join(path, OWNER), record)
        fsync_dir(path)
        fsync_dir(root)
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        raise
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


# --------------------------------------------------------------------------------------------
# who owns a partial: the run's process, checked through /proc (Linux)
#
# A partial is *active* while the process that represents its run is alive on this host, or while any
# process still has it as working folder or holds a file in it (an ``async`` component job outlives a
# killed ansible-playbook: it was daemonised). Its owner is *dead* when the record names this host and
# this boot and its process is gone or is another process now (pid reused: the start time differs);
# such a partial can be removed at once. When the owner cannot be determined (another host, a record
# without the run's process: a run through a remote connection, or one written by an older version),
# the heartbeat age decides, as before: younger than ``stale_after`` counts as active.

_PLAYBOOK_CMDS = ("ansible-playbook",)


def _proc_stat(pid):
    """The fields of ``/proc/<pid>/stat`` after the command name (field 3, the state, first), or None."""
    try:
        with open("/proc/%d/stat" % int(pid), "rb") as handle:
            data = handle.read()
    except (OSError, ValueError, TypeError):
        return None
    end = data.rfind(b")")
    fields = data[end + 2:].split() if end >= 0 else []
    return fields if len(fields) > 19 else None


def process_start_time(pid):
    """Start time of process ``pid`` (field 22 of ``/proc/<pid>/stat``, clock ticks after boot), or None
    when no such process is running (a zombie counts as gone)."""
    fields = _proc_stat(pid)
    if fields is None or fields[0] in (b"Z", b"X", b"x"):
        return None
    return int(fields[19])


def _parent_pid(pid):
    fields = _proc_stat(pid)
    return int(fields[1]) if fields else 0


def process_argv(pid):
    """The command line of ``pid`` as a list (empty when it cannot be read)."""
    try:
        with open("/proc/%d/cmdline" % int(pid), "rb") as handle:
            return [os.fsdecode(a) for a in handle.read().split(b"\0") if a]
    except (OSError, ValueError, TypeError):
        return []


def _playbook_cmd(argv):
    """``ansible-playbook`` when ``argv`` runs it (directly or through its Python interpreter)."""
    for arg in argv[:2]:
        if os.path.basename(arg) in _PLAYBOOK_CMDS:
            return os.path.basename(arg)
    return None


def boot_id():
    """This boot's id (``/proc/sys/kernel/random/boot_id``), or None."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as handle:
            return handle.read().strip() or None
    except OSError:
        return None


def run_owner(pid=None):
    """``{pid, pid_start, pid_cmd}`` of the process that represents the run ``pid`` (default: this
    process) belongs to, or None.

    Walks up the parents from ``pid`` to the first ``ansible-playbook`` process, then on while the
    parent is ``ansible-playbook`` too: ansible's workers are forks of the main process with its
    command line, and the main one lives as long as the run. A module run through a remote connection
    (no ansible-playbook on this host) or by the ad-hoc ``ansible`` command has no such process: None
    (its parent, a shell that ends with the module, would say nothing about the run).
    """
    current = int(pid or os.getpid())
    found = None
    for _depth in range(128):
        if current <= 1:
            break
        cmd = _playbook_cmd(process_argv(current))
        if cmd:
            found = (current, cmd)
        elif found:
            break
        current = _parent_pid(current)
    if not found:
        return None
    start = process_start_time(found[0])
    if start is None:
        return None
    return {"pid": found[0], "pid_start": start, "pid_cmd": found[1]}


def partial_owner(partial_dir):
    """``(state, why)`` of the run that owns ``partial_dir``: ``alive``, ``dead`` or ``unknown``.

    ``dead``: the owner record names this host and this boot (or a boot since gone: the host restarted),
    and its run's process is not running or ``pid`` now belongs to a process started at another time.
    ``unknown``: no readable record, another host, or no run process recorded.
    """
    try:
        record = read_json(os.path.join(partial_dir, OWNER))
    except (OSError, ValueError) as exc:
        return "unknown", "its owner record %s cannot be read (%s)" % (OWNER, exc.__class__.__name__)
    return owner_state(record)


def owner_state(record, what=OWNER):
    """``(state, why)`` of the run an owner record names (``partial_owner``; also the restore's record)."""
    if not isinstance(record, dict):
        return "unknown", "its owner record %s is not a mapping" % what
    host = record.get("host")
    if host != socket.gethostname():
        return "unknown", "its owner runs on host %s, not this one (%s)" % (host, socket.gethostname())
    pid, start, cmd = record.get("pid"), record.get("pid_start"), record.get("pid_cmd") or "process"
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0 or not isinstance(start, int):
        return "unknown", "its owner record names no run process (a remote or ad-hoc run, or an older version)"
    recorded_boot, current_boot = record.get("boot_id"), boot_id()
    if recorded_boot and current_boot and recorded_boot != current_boot:
        return "dead", "its owner %s (pid %d) ran before this host restarted" % (cmd, pid)
    now_start = process_start_time(pid)
    if now_start is None:
        return "dead", "its owner %s (pid %d) on this host is gone" % (cmd, pid)
    if now_start != start:
        return "dead", "its owner %s (pid %d) is gone (pid %d is another process now)" % (cmd, pid, pid)
    return "alive", "its owner %s (pid %d) is running on this host" % (cmd, pid)


def partial_users(partial_dir, limit=5):
    """``"<pid> (<name>)"`` of the processes (up to ``limit``) whose working folder is in ``partial_dir``
    or that hold a file in it: a component job still writing after its run was killed. Processes this
    one cannot inspect are not listed."""
    partial_dir = os.path.realpath(os.fspath(partial_dir))
    prefix = partial_dir.rstrip(os.sep) + os.sep
    own = os.getpid()
    users = []
    try:
        pids = [int(e) for e in os.listdir("/proc") if e.isdigit()]
    except OSError:
        return users
    for pid in sorted(pids):
        if pid == own:
            continue
        links = ["/proc/%d/cwd" % pid]
        try:
            links += ["/proc/%d/fd/%s" % (pid, fd) for fd in os.listdir("/proc/%d/fd" % pid)]
        except OSError:
            pass
        for link in links:
            try:
                target = os.readlink(link)
            except OSError:
                continue
            if target == partial_dir or target.startswith(prefix):
                try:
                    with open("/proc/%d/comm" % pid, encoding="utf-8", errors="replace") as handle:
                        name = handle.read().strip()
                except OSError:
                    name = "?"
                users.append("%d (%s)" % (pid, name))
                break
        if len(users) >= limit:
            break
    return users


def assess_partial(partial_dir, stale_after, now=None):
    """What to make of a ``.partial`` folder: ``{path, owner, why, age, users, active, abandoned}``.

    ``owner``/``why``: ``partial_owner``; ``age``: ``partial_age``; ``users``: ``partial_users`` (only
    looked for when the owner is not alive). ``active``: a run may still be writing it (owner alive,
    processes in it, or owner unknown and a heartbeat younger than ``stale_after``). ``abandoned``:
    not active and either its owner is dead (remove it at once) or its heartbeat is older than
    ``stale_after``.
    """
    owner, why = partial_owner(partial_dir)
    age = partial_age(partial_dir, now)
    users = [] if owner == "alive" else partial_users(partial_dir)
    if users:
        why += "; processes %s still use the folder" % ", ".join(users)
    active = owner == "alive" or bool(users) or (owner == "unknown" and age < stale_after)
    return {"path": partial_dir, "owner": owner, "why": why, "age": age, "users": users, "active": active,
            "abandoned": not active and (owner == "dead" or age >= stale_after)}


def remove_partial(partial_dir):
    """Delete a ``.partial`` folder (never a finalized set) and fsync its root."""
    root = parse_partial(partial_dir)[0]
    shutil.rmtree(partial_dir)
    fsync_dir(root)


def cleanup_partials(root, older_than, now=None, dry_run=False):
    """Remove the abandoned ``.partial`` folders (``assess_partial``): those whose owner process is
    provably gone, whatever their age, and those whose last heartbeat is older than ``older_than``
    seconds, unless their owner is still running or a process still uses them.

    Returns the list of removed (or, with ``dry_run``, removable) paths.
    """
    if isinstance(older_than, datetime.timedelta):
        older_than = older_than.total_seconds()
    removed = []
    for path in list_partials(root):
        if assess_partial(path, older_than, now)["abandoned"]:
            if not dry_run:
                shutil.rmtree(path)
            removed.append(path)
    if removed and not dry_run:
        fsync_dir(os.path.abspath(os.fspath(root)))
    return removed


# --------------------------------------------------------------------------------------------
# one host-wide rule between backups, restores and retention
#
# A real restore takes the restore record (LAYOUT ``restore_owner``) with the same owner identity as a
# backup's partial (``run_owner``: the outermost ansible-playbook, its start time, the boot): while that run
# lives, ``begin_set`` refuses, and retention keeps the sets it names; a restore refuses while a backup's
# partial is active. A record whose owner is dead (killed, the host restarted) is removed by whoever finds
# it, and that run proceeds. Both sides write first and check second (a partial, then the restore record; the
# record, then the partials), so that two runs starting at the same instant cannot both miss each other.

RESTORE_STALE_AFTER = 7200  # a record whose owner cannot be checked counts as active this long after it was written


def restore_owner_path(root):
    return os.path.join(os.path.abspath(os.fspath(root)), LAYOUT["restore_owner"])


def read_restore_owner(root):
    """The restore record of ``root`` (a dict), or None when there is none (or it cannot be read)."""
    try:
        record = read_json(restore_owner_path(root))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else {}


def _same_run(record, owner, run_id=None):
    """Whether ``record`` is this run's: the ``run_id`` the playbook run passed (the only sign a run through a
    remote connection has: no ansible-playbook process on this host), or this host's run process."""
    if run_id and record.get("run_id") == run_id:
        return True
    return bool(owner) and record.get("host") == socket.gethostname() and record.get("boot_id") == boot_id() \
        and record.get("pid") == owner.get("pid") and record.get("pid_start") == owner.get("pid_start")


def assess_restore(root, now=None, stale_after=RESTORE_STALE_AFTER, run_id=None):
    """The restore that holds ``root``: None when there is none, else ``{path, record, owner, why, age, active,
    mine, msg}`` (``active``: its run lives, or cannot be checked and the record is younger than
    ``stale_after``; ``mine``: it is this run's own record, by ``run_id`` or by its run process)."""
    path = restore_owner_path(root)
    if not os.path.lexists(path):
        return None
    record = read_restore_owner(root)
    if record is None:
        record = {}
    state, why = owner_state(record, LAYOUT["restore_owner"])
    try:
        age = (utc(now) - parse_time(record["started"])).total_seconds()
    except (KeyError, TypeError, ValueError):
        try:
            age = time.time() - os.lstat(path).st_mtime
        except OSError:
            age = 0.0
    active = state == "alive" or (state == "unknown" and age < stale_after)
    kind = "drill" if record.get("kind") == "drill" else "restore"
    sets = ", ".join(record.get("sets") or []) or "?"
    msg = "a %s of %s (components %s, started %s) holds %s: %s" % (
        kind, sets, ", ".join(record.get("components") or []) or "?", record.get("started") or "?", path, why)
    return {"path": path, "record": record, "kind": kind, "owner": state, "why": why, "age": age, "active": active,
            "blocks_backups": active and kind == "restore", "mine": _same_run(record, run_owner(), run_id),
            "msg": msg}


def restore_sets_in_use(root, now=None):
    """The set ids a live restore of ``root`` reads (none when no restore is active)."""
    state = assess_restore(root, now)
    if not state or not state["active"]:
        return []
    return [s for s in state["record"].get("sets") or [] if isinstance(s, str)]


def active_backups(root, stale_after=7200, now=None):
    """``assess_partial`` of every active ``.partial`` folder of ``root`` (a backup run in progress)."""
    return [state for state in (assess_partial(p, stale_after, now) for p in list_partials(root)) if state["active"]]


def _backup_busy_msg(states):
    return ("a backup run is in progress in %s: %s. A restore now would replace the stores while they are copied: "
            "wait for the backup to end (or, if it hangs, stop the process named), then run the restore again" % (
                os.path.dirname(states[0]["path"]), "; ".join("%s (%s)" % (s["path"], s["why"]) for s in states)))


def restore_busy_msg(state):
    """What a backup that finds the restore ``state`` (``assess_restore``) tells the operator."""
    return ("%s. A backup now would copy the stores while they are replaced: wait for the restore to end, then run "
            "the backup again. If no restore runs (the record names a process on another host, or one that cannot "
            "be checked), delete %s" % (state["msg"], state["path"]))


def take_restore_lock(root, set_ids, components, now=None, stale_after=7200, kind="restore", run_id=None):
    """Record this run as the restore in progress in ``root`` (before anything is stopped or replaced).

    Refuses (``BackupSetError``) while a backup's partial is active or another live restore holds the record;
    a record whose owner is dead is replaced (and said so). Returns ``{path, record, replaced}``; taken twice
    by the same run, the record is rewritten. ``kind`` ``drill``: a restore into the drill's scratch stack,
    which reads the sets (retention keeps them) but replaces no live store: backups go on. ``run_id``: a token
    unique to the playbook run, kept in the record, by which ``release_restore_lock`` knows it as this run's.
    """
    root = _ensure_root(root)
    now = utc(now)
    busy = active_backups(root, stale_after, now) if kind == "restore" else []
    if busy:
        raise BackupSetError(_backup_busy_msg(busy))
    replaced = None
    state = assess_restore(root, now, run_id=run_id)
    if state is not None:
        if state["active"] and not state["mine"]:
            raise BackupSetError("another restore is in progress: %s. Wait for it to end, then run this restore "
                                 "again; if no restore runs, delete %s" % (state["msg"], state["path"]))
        if not state["mine"]:
            replaced = state["why"]
        os.unlink(state["path"])
    record = {"kind": kind, "host": socket.gethostname(), "boot_id": boot_id(), "module_pid": os.getpid(),
              "started": isoformat(now), "sets": [str(s) for s in set_ids if s],
              "components": [str(c) for c in components or []], "run_id": run_id or None}
    record.update(run_owner() or {"pid": None, "pid_start": None, "pid_cmd": None})
    path = restore_owner_path(root)
    tmp = "%s.tmp-%s" % (path, secrets.token_hex(4))
    write_file_atomic(tmp, json.dumps(record, indent=2, sort_keys=True).encode("utf-8"))
    try:
        os.link(tmp, path)  # exclusive: a restore that wrote its record an instant before wins
    except FileExistsError as exc:
        raise BackupSetError("another restore took %s an instant before this one: wait for it to end, then run "
                             "this restore again" % path) from exc
    finally:
        os.unlink(tmp)
    fsync_dir(root)
    busy = active_backups(root, stale_after, now) if kind == "restore" else []  # began while it was written
    if busy:
        release_restore_lock(root)
        raise BackupSetError(_backup_busy_msg(busy))
    return {"path": path, "record": record, "replaced": replaced}


def release_restore_lock(root, run_id=None):
    """Remove the restore record when it is this run's (by ``run_id`` or its run process) or its owner is dead;
    returns what was done."""
    state = assess_restore(root, run_id=run_id)
    if state is None:
        return "no restore record"
    if state["active"] and not state["mine"]:
        return "kept %s: it belongs to another run (%s)" % (state["path"], state["why"])
    os.unlink(state["path"])
    fsync_dir(os.path.dirname(state["path"]))
    return "removed %s" % state["path"]


# --------------------------------------------------------------------------------------------
# a full backup volume

_NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_NO_SPACE_RE = re.compile(r"No space left on device|Disk quota exceeded|\bENOSPC\b|\bEDQUOT\b|\[Errno 28\]")


def is_no_space(error):
    """Whether ``error`` (an exception, or a message such as a component's ``error``) says that a file
    system is full (``ENOSPC``, or a quota: ``EDQUOT``)."""
    if isinstance(error, OSError) and error.errno in _NO_SPACE_ERRNOS:
        return True
    if isinstance(error, BaseException):
        cause = error.__cause__ or error.__context__
        if cause is not None and cause is not error and is_no_space(cause):
            return True
    return bool(_NO_SPACE_RE.search(str(error or "")))


def no_space_on(error, root):
    """Whether ``error`` says that the file system of the backup root ``root`` is full: ``is_no_space``, and
    the error is about a path under ``root`` (an ``OSError``'s file name, or the path named in a message).
    A store whose own disk is full (``could not write to file "base/pgsql_tmp/..."``) is not the backup
    volume."""
    if not is_no_space(error):
        return False
    root = os.path.abspath(os.fspath(root)).rstrip(os.sep)
    if isinstance(error, OSError) and error.filename:
        return os.path.abspath(os.fsdecode(error.filename)).startswith(root + os.sep)
    return (root + os.sep) in str(error) or str(error).rstrip(":. '\"").endswith(root)


def human_bytes(size):
    """1536 -> '1.5 KiB'."""
    size = float(size or 0)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return ("%d %s" % (size, unit)) if unit == "B" else ("%.1f %s" % (size, unit))
        size /= 1024.0
    return "%d B" % size


def tree_bytes(path):
    """Bytes of the regular files under ``path`` (0 when it cannot be read)."""
    total = 0
    for dirpath, _dirs, filenames in os.walk(os.fspath(path)):
        for name in filenames:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            if not os.path.islink(os.path.join(dirpath, name)):
                total += st.st_size
    return total


def storage_full(root, set_id, cause, written=0):
    """What to tell the operator when the backup volume filled during the run of ``set_id`` (whose partial
    set, ``written`` bytes, was removed: the space it held is free again).

    Returns ``{root, set_id, cause, free_bytes, total_bytes, needed_bytes, more_than, needed_from,
    written_bytes, msg}``. ``needed_bytes`` estimates what the next run needs on ``root``: the size of the
    newest successful set (``needed_from`` names it) when that is more than is free now; otherwise the data
    grew beyond what is free (this run did not fit in it) and ``needed_bytes`` is only a lower bound, the
    free space (``more_than`` true). ``cause``: the line of ``cause`` that says the disk is full.
    """
    root = os.path.abspath(os.fspath(root))
    try:
        usage = shutil.disk_usage(root)
        free, total = usage.free, usage.total
    except OSError:
        free = total = None
    try:
        complete = list_sets(root, complete_only=True)
    except OSError:
        complete = []
    previous = complete[-1] if complete else None
    previous_bytes = int((previous or {}).get("bytes") or 0)
    if previous and previous_bytes > (free or 0):
        needed, more_than = previous_bytes, False
        needed_from = "the size of the previous set %s" % previous["id"]
        need = "needs about %s (%s): free at least %s more" % (
            human_bytes(needed), needed_from, human_bytes(needed - (free or 0)))
    else:
        needed, more_than = max(free or 0, int(written or 0)), True
        needed_from = "the space free now, which this run did not fit in" + (
            " (the previous set %s took %s: the data grew)" % (previous["id"], human_bytes(previous_bytes))
            if previous else "")
        need = "needs more than the %s free now, which this run did not fit in%s" % (
            human_bytes(free), " (the previous set %s took %s: the data grew)"
            % (previous["id"], human_bytes(previous_bytes)) if previous else "")
    lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
    text = next((line for line in lines if _NO_SPACE_RE.search(line)), lines[-1] if lines else "no space left")
    msg = ("the backup volume %s ran out of space (%s): the partial set %s was removed (%s written; artefacts cut "
           "short by a full disk cannot be trusted, and they held the space the next run needs). Free space on %s "
           "(%s free of %s): the next run %s; delete old sets (playbooks/cleanup.yml), move them off the volume or "
           "grow it, then run the backup again"
           % (root, text[:400], set_id, human_bytes(written), root, human_bytes(free) if free is not None else "?",
              human_bytes(total) if total is not None else "?", need))
    return {"root": root, "set_id": set_id, "cause": text[:400], "free_bytes": free, "total_bytes": total,
            "needed_bytes": needed, "more_than": more_than, "needed_from": needed_from,
            "written_bytes": int(written or 0), "msg": msg}


# --------------------------------------------------------------------------------------------
# paths read back from a set


def relative_problem(relative):
    """Why ``relative`` is not a canonical path relative to a set (None when it is one).

    Canonical: a non-empty ``str`` (``bytes`` are decoded with ``os.fsdecode``), no NUL, not absolute,
    no empty, ``.`` or ``..`` component (so one file has exactly one spelling).
    """
    if isinstance(relative, bytes):
        relative = os.fsdecode(relative)
    if not isinstance(relative, str) or relative == "":
        return "is not a non-empty path"
    if "\0" in relative:
        return "holds a NUL byte"
    if relative.startswith("/"):
        return "is absolute"
    parts = relative.split("/")
    if ".." in parts:
        return "has a '..' component"
    if "" in parts or "." in parts:
        return "is not canonical (empty or '.' component)"
    return None


def confined_path(set_path, relative, follow=True):
    """The absolute path of the manifest / SHA256SUMS entry ``relative`` of the set ``set_path``.

    Raises ``BackupSetError`` naming the entry unless it is relative, canonical (no ``..``, ``.`` or
    empty component), holds no NUL and resolves (``os.path.realpath``, symbolic links followed) inside
    the set. With ``follow=False`` the entry itself may be a symbolic link (a link recorded in the
    manifest, whose target may point anywhere): only the folder holding it must resolve inside.
    The returned path is ``<set_path>/<relative>`` (not resolved), so that ``lstat`` / ``readlink``
    see the entry itself.
    """
    set_path = os.path.abspath(os.fspath(set_path))
    problem = relative_problem(relative)
    if problem:
        raise BackupSetError("entry %r of set %s %s; the set's manifest or SHA256SUMS was tampered with or "
                             "damaged: do not restore from it" % (relative, set_path, problem))
    if isinstance(relative, bytes):
        relative = os.fsdecode(relative)
    full = os.path.join(set_path, relative)
    real_root = os.path.realpath(set_path)
    if follow:
        resolved = os.path.realpath(full)
    else:
        resolved = os.path.join(os.path.realpath(os.path.dirname(full)), os.path.basename(full))
    if not resolved.startswith(real_root.rstrip(os.sep) + os.sep):
        raise BackupSetError("entry %r of set %s resolves to %s, outside the set (a symbolic link escapes it); "
                             "do not restore from this set" % (relative, set_path, resolved))
    return full


def set_member(set_path, rel, what="file", error=BackupSetError):
    """The absolute path of ``rel``, a path a restore reads from a manifest (untrusted): it must be relative,
    normalised, without ``..`` and, symlinks resolved, inside the set. Raises ``error`` (a ``BackupSetError``
    unless the caller names its own ``LlmopsError`` class) otherwise."""
    root = os.path.realpath(set_path)
    if not isinstance(rel, str) or not rel or "\0" in rel or os.path.isabs(rel) or os.path.normpath(rel) != rel \
            or ".." in rel.split(os.sep):
        raise error("the manifest names %s %r, which is not a plain path inside the set" % (what, rel))
    full = os.path.join(root, rel)
    if not os.path.realpath(full).startswith(root + os.sep):
        raise error("the manifest's %s %r leads outside the set %s" % (what, rel, set_path))
    return full


def json_safe(obj):
    """``obj`` (dicts, lists, strings...) with every string made valid UTF-8 for a module's result.

    File names that are not valid UTF-8 reach Python as ``str`` with surrogate escapes, which
    Ansible refuses in a module's response; such a string is shown with ``\\xNN`` for each byte
    that is not UTF-8 (display only: the set's files keep their names, its manifest the exact ones).
    """
    if isinstance(obj, str):
        try:
            obj.encode("utf-8")
            return obj
        except UnicodeEncodeError:
            try:
                return obj.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
            except UnicodeEncodeError:
                return obj.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(obj, dict):
        return dict((json_safe(k), json_safe(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def _is_bookkeeping(rel):
    """Whether ``rel`` is a partial's bookkeeping (``.owner.json``, ``.components/...`` at its top), which
    finalize removes just before the rename: never part of a set."""
    return rel == OWNER or rel.startswith(COMPONENTS_DIR + os.sep)


def _set_files(path, links=False, bookkeeping=False):
    """Relative paths of every file under ``path`` except SHA256SUMS and the verification records
    (``UNLISTED``, at the top of the set only), sorted. With ``bookkeeping=True`` (a partial) its
    bookkeeping files are left out too (``_is_bookkeeping``).

    Symbolic links (an uploads tree may hold some) are left out, or with ``links=True`` are the
    only ones returned: SHA256SUMS cannot check a link, so the manifest records its target instead.
    A folder that cannot be read raises ``OSError`` (a silently skipped folder would leave files
    unlisted).
    """
    path = os.fspath(path)
    files = []
    folders = [""]
    while folders:  # os.scandir: a folder's entries say whether they are links or folders, with no stat each
        folder = folders.pop()
        with os.scandir(os.path.join(path, folder) if folder else path) as entries:
            for entry in entries:
                rel = os.path.join(folder, entry.name) if folder else entry.name
                if entry.is_dir(follow_symlinks=False):
                    folders.append(rel)
                elif not (rel in UNLISTED or entry.is_symlink() != links or (bookkeeping and _is_bookkeeping(rel))):
                    files.append(rel)
    return sorted(files)


def set_links(path):
    """``[{path, target}]`` of every symbolic link in a set (recorded in the manifest)."""
    return [{"path": rel, "target": os.readlink(os.path.join(path, rel))}
            for rel in _set_files(path, links=True, bookkeeping=True)]


def hash_set_files(path, known=None, shared=None):
    """Hash every regular file of a set except the manifest, SHA256SUMS, the verification records and
    a partial's bookkeeping (``.owner.json``, ``.components/``).

    Returns ``[{path, size, sha256}]`` sorted by path; symbolic links are left out (see
    ``set_links``); a special file (fifo, device) raises. ``known`` (``hashes_by_inode`` of an earlier
    set) gives the sha256 of a file that is a hard link to one of that set's files, which is then not read.
    ``shared`` (a set) receives the path of every file with more than one hard link: its bytes were already
    on the volume (another set's file), not written by this one (``new_bytes``).
    """
    entries = []
    for rel in _set_files(path, bookkeeping=True):
        if rel == MANIFEST:
            continue
        full = os.path.join(path, rel)
        st = os.lstat(full)
        if not stat.S_ISREG(st.st_mode):
            raise BackupSetError("%s is not a regular file; a set holds regular files only" % full)
        linked = (known or {}).get((st.st_dev, st.st_ino)) if st.st_nlink > 1 else None
        if shared is not None and st.st_nlink > 1:
            shared.add(rel)
        if linked and linked[0] == st.st_size:
            digest, size = linked[1], st.st_size
        else:
            digest, size = hash_file(full)
        entries.append({"path": rel, "size": size, "sha256": digest})
    return entries


def brief_manifest(manifest):
    """``manifest`` without its per-file lists: the top-level ``files`` (``totals`` counts them) and each
    component's ``files``, replaced by ``files_count`` and ``files_bytes`` - what a report of the run needs."""
    brief = {k: v for k, v in manifest.items() if k != "files"}
    brief["components"] = {}
    for name, comp in (manifest.get("components") or {}).items():
        comp = dict(comp or {})
        files = comp.pop("files", None) or []
        comp.update(files_count=len(files), files_bytes=sum(int(f.get("size") or 0) for f in files))
        brief["components"][name] = comp
    return brief


def hashes_by_inode(set_path, under=""):
    """``{(st_dev, st_ino): (size, sha256)}`` of the regular files of a finalized set (those below the folder
    ``under`` only, when given), as its manifest records them.

    A file of a new set that is a hard link to one of them (rsync ``--link-dest``) *is* that file: its sha256
    is known without reading it again. A manifest entry that does not fit its file (another size, not a
    regular file, a malformed path or checksum) is left out, so that such a file is read. Content damaged on
    the backup volume since keeps its recorded checksum, and ``verify_set`` finds it in both sets.
    """
    try:
        entries = load_manifest(set_path).get("files") or []
    except BackupSetError:
        return {}
    prefix = under.rstrip(os.sep) + os.sep if under else ""
    out = {}
    for entry in entries:
        rel, digest, size = entry.get("path"), entry.get("sha256"), entry.get("size")
        if not isinstance(rel, str) or not rel.startswith(prefix) or not isinstance(size, int) \
                or not is_sha256(digest) or relative_problem(rel):
            continue
        try:
            st = os.lstat(os.path.join(set_path, rel))
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and st.st_size == size:
            out[(st.st_dev, st.st_ino)] = (size, digest)
    return out


# --------------------------------------------------------------------------------------------
# SHA256SUMS


def _name_bytes(path):
    """The bytes of a file name as the file system has them (``os.fsencode`` of a ``str``)."""
    try:
        name = path if isinstance(path, bytes) else os.fsencode(path)
    except (TypeError, UnicodeError) as exc:
        raise BackupSetError("file name %r cannot be written to %s (not a name the file system gave: %s); "
                             "report this as a bug" % (path, SUMS, exc)) from exc
    if not name or b"\0" in name:
        raise BackupSetError("file name %r cannot be written to %s (empty or holds NUL)" % (path, SUMS))
    return name


def _sort_key(path):
    """A total order on names (byte order for ordinary names), whatever the manifest holds."""
    return str(path).encode("utf-8", "surrogatepass")


def sums_line(path, sha256):
    """One SHA256SUMS line (bytes) exactly as GNU ``sha256sum`` (coreutils 9.1) writes it.

    ``path`` is taken as the file system gives it: a ``str`` is encoded with ``os.fsencode`` (so a
    name that is not valid UTF-8 round-trips through surrogateescape), ``bytes`` are used as they
    are. When the name holds a backslash, a newline or a carriage return, the line starts with a
    backslash and in the name ``\\`` becomes ``\\\\``, newline ``\\n`` and CR ``\\r``; every other
    byte is written raw. Raises ``BackupSetError`` for a name that no file can have (NUL, not
    encodable) or a digest that is not 64 hex digits.
    """
    name = _name_bytes(path)
    digest = str(sha256).lower()
    if not is_sha256(digest):
        raise BackupSetError("%r is not a sha256 (64 hex digits) for %r" % (sha256, path))
    if b"\\" in name or b"\n" in name or b"\r" in name:
        name = name.replace(b"\\", b"\\\\").replace(b"\n", b"\\n").replace(b"\r", b"\\r")
        return b"\\" + digest.encode("ascii") + b"  " + name + b"\n"
    return digest.encode("ascii") + b"  " + name + b"\n"


def format_sums(sums):
    """SHA256SUMS content (bytes) for ``{path: sha256}``, sorted by the names' bytes."""
    items = sorted((_name_bytes(path), path, digest) for path, digest in sums.items())
    return b"".join(sums_line(item[1], item[2]) for item in items)


def _unescape_name(name, number):
    out = bytearray()
    i = 0
    while i < len(name):
        byte = name[i:i + 1]
        if byte != b"\\":
            out += byte
            i += 1
            continue
        escape = name[i + 1:i + 2]
        if escape == b"\\":
            out += b"\\"
        elif escape == b"n":
            out += b"\n"
        elif escape == b"r":
            out += b"\r"
        else:
            raise SumsFormatError("line %d: bad escape %r in an escaped name (only \\\\, \\n and \\r exist): %r"
                                  % (number, (b"\\" + escape).decode("latin-1"), name[:200]))
        i += 2
    return bytes(out)


def parse_sums(data):
    """Parse SHA256SUMS into ``{path: sha256}``; raise ``SumsFormatError`` (a ``ValueError``) on a bad line.

    ``data`` is the file's bytes (a ``str`` is encoded with ``os.fsencode``). Both forms GNU
    ``sha256sum`` writes are read: ``<sha256>  <name>`` (name raw) and ``\\<sha256>  <name>`` (name
    escaped, see ``sums_line``); ``*`` in place of the second space (binary mode) is accepted, as is
    a CR before the newline (GNU ignores it too). Paths are returned as ``str`` through
    ``os.fsdecode``, so any byte name round-trips. Empty lines, bad escapes, NUL bytes and a name
    listed twice are errors. Digests are returned in lower case.
    """
    if isinstance(data, str):
        data = os.fsencode(data)
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    sums = {}
    for number, line in enumerate(lines, 1):
        if line.endswith(b"\r"):
            line = line[:-1]
        escaped = line.startswith(b"\\")
        match = _SUMS_LINE_RE.fullmatch(line[1:] if escaped else line)
        if not match:
            raise SumsFormatError("line %d is not '<sha256>  <path>' (or '\\<sha256>  <escaped path>'): %r"
                                  % (number, line[:200]))
        name = match.group(2)
        if b"\0" in name:
            raise SumsFormatError("line %d: the name holds a NUL byte: %r" % (number, line[:200]))
        if escaped:
            name = _unescape_name(name, number)
        path = os.fsdecode(name)
        if path in sums:
            raise SumsFormatError("line %d lists %r a second time" % (number, path))
        sums[path] = match.group(1).decode("ascii").lower()
    return sums


def read_sums(set_path):
    """``parse_sums`` of ``<set_path>/SHA256SUMS``; raises ``OSError`` or ``SumsFormatError``."""
    with open(os.path.join(os.fspath(set_path), SUMS), "rb") as handle:
        return parse_sums(handle.read())


# --------------------------------------------------------------------------------------------
# manifest and finalize


def write_manifest(partial_dir, manifest, files=None):
    """Write ``backup_manifest.json`` and ``SHA256SUMS`` into ``partial_dir``; return the manifest.

    Adds ``schema_version`` and ``format``, ``files`` (path, size, sha256 of every file of the set
    except the manifest, SHA256SUMS and the verification records; ``files`` from ``hash_set_files``
    saves hashing twice) and ``totals``. SHA256SUMS lists every file except itself, the manifest
    included, one ``sums_line`` each (GNU ``sha256sum`` escaping) sorted by the names' bytes, so that
    ``cd set && sha256sum -c SHA256SUMS`` accepts it, and is written as bytes: names are used as the
    file system gives them. Files and folders are fsynced. A ``files`` path that is not relative and
    canonical raises ``BackupSetError``.
    """
    manifest = dict(manifest)
    manifest["schema_version"] = SCHEMA_VERSION
    manifest["format"] = FORMAT
    entries = hash_set_files(partial_dir) if files is None else [dict(e) for e in files]
    for entry in entries:
        problem = relative_problem(entry.get("path"))
        if problem:
            raise BackupSetError("file entry %r %s; a set lists paths relative to its folder"
                                 % (entry.get("path"), problem))
    manifest["files"] = entries
    manifest["totals"] = {"files": len(entries), "bytes": sum(e["size"] for e in entries)}
    manifest["links"] = set_links(partial_dir)
    write_json(os.path.join(partial_dir, MANIFEST), manifest)
    sums = {e["path"]: e["sha256"] for e in entries}
    sums[MANIFEST] = hash_file(os.path.join(partial_dir, MANIFEST))[0]
    write_file_atomic(os.path.join(partial_dir, SUMS), format_sums(sums))
    dirs = {os.path.dirname(os.path.join(partial_dir, e["path"])) for e in entries}
    for directory in sorted(dirs | {os.path.abspath(partial_dir)}):
        fsync_dir(directory)
    return manifest


def sums_problems(path, manifest):
    """Why the SHA256SUMS of the set (or partial) ``path`` does not match ``manifest`` (``[]`` when it does).

    SHA256SUMS is read back through ``parse_sums`` and must list exactly the regular files present
    (``UNLISTED`` aside) with the sha256 the manifest records (the manifest's own sha256 is
    recomputed, other files are not re-hashed: their hashes come from ``hash_set_files``); sizes on
    disk must match the manifest, every entry must stay inside the set (``confined_path``), the
    manifest's links must be the set's links, and the verification file names must not be taken by
    an artefact. Each problem names the file and says what to do.
    """
    path = os.path.abspath(os.fspath(path))
    redo = "fix the cause and run the backup again"
    try:
        sums = read_sums(path)
    except (OSError, ValueError) as exc:
        return ["%s cannot be read back (%s); %s" % (SUMS, exc, redo)]
    problems = []
    table = {}
    for entry in manifest.get("files") or []:
        table[entry.get("path")] = entry
    expected = {rel: str(entry.get("sha256") or "").lower() for rel, entry in table.items()}
    try:
        expected[MANIFEST] = hash_file(os.path.join(path, MANIFEST))[0]
    except OSError as exc:
        problems.append("file %r: cannot be read (%s); %s" % (MANIFEST, exc, redo))
    present = set(_set_files(path, bookkeeping=True))
    for rel in sorted(set(sums) | set(expected) | present, key=_sort_key):
        if rel in present:
            full = os.path.join(path, rel)  # found by the walk, which follows no link: inside the set
        else:
            try:
                full = confined_path(path, rel)
            except BackupSetError as exc:
                problems.append("file %r: %s" % (rel, exc))
                continue
        if rel == "-":
            problems.append("file '-': sha256sum -c reads standard input for this name; write the artefact under "
                            "a component folder and run the backup again")
        elif rel not in sums and rel in expected:
            problems.append("file %r: not listed in %s as read back (its name does not survive the sha256sum "
                            "escaping); rename it at the source or report a bug, then run the backup again"
                            % (rel, SUMS))
        elif rel not in sums:
            problems.append("file %r: in the set but neither in the manifest nor in %s (written after the manifest, "
                            "or left out of write_manifest's files); %s" % (rel, SUMS, redo))
        elif rel not in expected:
            problems.append("file %r: listed in %s but not in the manifest; %s" % (rel, SUMS, redo))
        elif sums[rel] != expected[rel]:
            problems.append("file %r: %s says sha256 %s, the manifest %s; %s" % (rel, SUMS, sums[rel], expected[rel],
                                                                                 redo))
        if rel not in present:
            problems.append("file %r: listed but not a regular file of the set; %s" % (rel, redo))
        elif rel in table and table[rel].get("size") is not None:
            size = os.lstat(full).st_size
            if str(size) != str(table[rel]["size"]):
                problems.append("file %r: %d bytes on disk, the manifest says %s (changed after it was hashed); %s"
                                % (rel, size, table[rel]["size"], redo))
    recorded = {link.get("path"): link.get("target") for link in manifest.get("links") or []}
    actual = {link["path"]: link["target"] for link in set_links(path)}
    for rel in sorted(set(recorded) | set(actual), key=_sort_key):
        if recorded.get(rel) != actual.get(rel):
            problems.append("symbolic link %r: the manifest records target %r, the set holds %r; %s"
                            % (rel, recorded.get(rel), actual.get(rel), redo))
    for name in (VERIFICATION, VERIFICATION_SUMS, SUMS_HMAC):
        if os.path.lexists(os.path.join(path, name)):
            problems.append("file %r: this name is reserved for the verification records and the set's HMAC "
                            "(added at or after finalize); "
                            "write the artefact under a component folder and run the backup again" % name)
    return problems


# --------------------------------------------------------------------------------------------
# authentication: SHA256SUMS.hmac


def _auth_key_bytes(key):
    """The key's bytes; raises ``BackupSetError`` for a key that is not text or too short to be one."""
    if isinstance(key, bytes):
        data = key
    elif isinstance(key, str):
        data = key.strip().encode("utf-8")
    else:
        raise BackupSetError("the backup authentication key must be text, got %s" % type(key).__name__)
    if re.search(rb"(?i)change[-_/ .]?me", data):
        raise BackupSetError("the backup authentication key (backup_auth_key) still holds the example value of "
                             "vault.yml.example: generate one with 'openssl rand -hex 32' and put it in the vault "
                             "(ansible-vault edit inventories/production/group_vars/all/vault.yml)")
    if len(data) < AUTH_MIN_KEY:
        raise BackupSetError("the backup authentication key (backup_auth_key) has %d characters, fewer than %d: "
                             "generate one with 'openssl rand -hex 32', keep it in the vault (vault_backup_auth_key), "
                             "never on the backup volume" % (len(data), AUTH_MIN_KEY))
    return data


def auth_key_id(key):
    """The key id written next to an HMAC: the first 8 hex digits of sha256(key), so that a set made with
    another key is named as such (the id says nothing usable about the key itself)."""
    return hashlib.sha256(_auth_key_bytes(key)).hexdigest()[:8]


def set_auth_line(set_id, sums_bytes, key):
    """The content of ``SHA256SUMS.hmac`` (bytes, one line)::

        llmops-set-hmac v1 set=<set id> key=<key id> hmac-sha256=<64 hex>

    The HMAC-SHA256 (under ``key``) covers ``llmops-set-hmac v1``, the set id and the exact bytes of
    SHA256SUMS, NUL-separated: SHA256SUMS lists the manifest and every artefact with its sha256, so the HMAC
    authenticates the whole set, and a set renamed (or copied in under another id) fails it. ``set=`` is
    informational (it names the id the set was made under); the HMAC decides.
    """
    check_name(set_id, "set id")
    message = b"\0".join([("%s v%d" % (AUTH_FORMAT, AUTH_VERSION)).encode("ascii"), set_id.encode("ascii"),
                          bytes(sums_bytes)])
    mac = hmac.new(_auth_key_bytes(key), message, hashlib.sha256).hexdigest()
    line = "%s v%d set=%s key=%s hmac-sha256=%s\n" % (AUTH_FORMAT, AUTH_VERSION, set_id, auth_key_id(key), mac)
    return line.encode("ascii")


def write_set_auth(path, set_id, key):
    """Write ``<path>/SHA256SUMS.hmac`` for the SHA256SUMS now in ``path`` (a partial, before its rename)."""
    with open(os.path.join(os.fspath(path), SUMS), "rb") as handle:
        data = handle.read()
    write_file_atomic(os.path.join(os.fspath(path), SUMS_HMAC), set_auth_line(set_id, data, key))


def check_set_auth(path, auth_key=None, allow_unauthenticated=False, set_id=None):
    """Whether the set at ``path`` is authenticated under ``auth_key``: ``{state, key_id, problem}``.

    ``state``: ``authenticated`` (the HMAC matches), ``not_checked`` (no key configured: nothing is checked),
    ``unauthenticated_allowed`` (no ``SHA256SUMS.hmac`` and ``allow_unauthenticated``: a set from before
    authentication, accepted on the operator's word) or ``failed`` (``problem`` says why and what to do:
    HMAC missing, unreadable, made with another key, or wrong - SHA256SUMS or the manifest edited, or the set
    renamed). ``set_id`` defaults to the folder's name (symbolic links resolved). Never raises for a bad set;
    a bad key raises ``BackupSetError``.
    """
    path = os.path.realpath(os.fspath(path))
    set_id = set_id or os.path.basename(path)
    result = {"state": "not_checked", "key_id": None, "problem": None}
    if auth_key in (None, "", b""):
        return result
    key_id = auth_key_id(auth_key)
    result["key_id"] = key_id
    dont = "do not restore from this set"
    mac_path = os.path.join(path, SUMS_HMAC)
    if not os.path.lexists(mac_path):
        if allow_unauthenticated:
            result["state"] = "unauthenticated_allowed"
            return result
        result["state"] = "failed"
        result["problem"] = ("set %s is not authenticated: it has no %s (made before authentication, made without "
                             "backup_auth_key, or the file was removed); %s unless you know where it comes from - "
                             "then allow_unauthenticated=true (restore: -e allow_unauthenticated=true) accepts it"
                             % (set_id, SUMS_HMAC, dont))
        return result
    result["state"] = "failed"
    try:
        with open(mac_path, "rb") as handle:
            line = handle.read(4096).decode("ascii")
        with open(os.path.join(path, SUMS), "rb") as handle:
            sums = handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        result["problem"] = "set %s: cannot read %s or %s (%s); %s" % (set_id, SUMS_HMAC, SUMS, exc, dont)
        return result
    match = _AUTH_LINE_RE.match(line)
    if not match or int(match.group("version")) != AUTH_VERSION or not _SET_RE.match(match.group("set")):
        result["problem"] = ("set %s: %s is not a '%s v%d' line (damaged, tampered with, or written by a newer "
                             "version); %s" % (set_id, SUMS_HMAC, AUTH_FORMAT, AUTH_VERSION, dont))
        return result
    made_for = match.group("set")
    if match.group("key") != key_id:
        result["problem"] = ("set %s was authenticated with another key (key id %s; the configured backup_auth_key "
                             "has id %s): use the key it was made with (an older vault_backup_auth_key), or %s"
                             % (set_id, match.group("key"), key_id, dont))
        return result
    expected = set_auth_line(made_for, sums, auth_key).decode("ascii").split("hmac-sha256=")[1].strip()
    if not hmac.compare_digest(expected, match.group("mac")):
        result["problem"] = ("set %s fails authentication: the HMAC in %s does not match %s (%s or the manifest was "
                             "edited after the backup); %s" % (set_id, SUMS_HMAC, SUMS, SUMS, dont))
        return result
    if made_for != set_id:
        result["problem"] = ("set %s fails authentication: it was made as set %s and renamed (or copied in under "
                             "another id); %s" % (set_id, made_for, dont))
        return result
    result["state"] = "authenticated"
    return result


def update_latest(root, set_id):
    """Point ``<root>/latest`` at ``set_id`` (a relative link, replaced atomically, the folder fsynced)."""
    tmp = os.path.join(root, ".latest.tmp-%s" % secrets.token_hex(6))
    os.symlink(set_id, tmp)
    try:
        os.replace(tmp, os.path.join(root, LATEST))
    except BaseException:
        os.unlink(tmp)
        raise
    fsync_dir(root)


def finalize_set(partial_dir, root, status, auth_key=None):
    """Rename a partial set to ``<root>/<name>_YYYYmmdd_HHMMSS`` and return the new path.

    The manifest must already be written and say the same ``status``. Before the rename SHA256SUMS
    is read back and compared with the manifest and the files present (``sums_problems``); if it
    does not match, the manifest is rewritten with ``status: failed`` and the problems appended to
    its ``problems``, so the set never becomes ``latest`` (read the final status with
    ``load_manifest`` on the returned path). Only a ``success`` set replaces ``<root>/latest``
    (atomically: temp symlink + rename).

    The partial's bookkeeping (``.components/``, then ``.owner.json``) is removed just before the
    rename, so that a run killed at any earlier point of finalize leaves a partial that still names
    its owner (``assess_partial`` sees it dead and the next run removes it). A kill before the rename
    leaves only the ``.partial`` folder; after it, the set is complete and checked (only ``latest``
    may still name the previous set).

    With ``auth_key`` (from the vault, never stored on the backup volume) ``SHA256SUMS.hmac`` is written
    after the final SHA256SUMS and before the rename (``set_auth_line``), so that a finalized set is
    authenticated from the moment it exists; the key is checked first, before anything is changed.
    """
    if status not in ("success", "failed"):
        raise BackupSetError("status must be 'success' or 'failed', got %r" % (status,))
    if auth_key not in (None, "", b""):
        auth_key_id(auth_key)  # a bad key fails here, before the partial is touched
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
    problems = sums_problems(partial_dir, manifest)
    if problems:
        manifest["status"] = status = "failed"
        manifest["problems"] = list(manifest.get("problems") or []) + problems
        write_manifest(partial_dir, manifest, files=manifest.get("files") or [])
    if auth_key not in (None, "", b""):
        write_set_auth(partial_dir, set_id, auth_key)
        fsync_dir(partial_dir)
    elif os.path.lexists(os.path.join(partial_dir, SUMS_HMAC)):
        os.unlink(os.path.join(partial_dir, SUMS_HMAC))  # never finalize a set with an HMAC not made here
    shutil.rmtree(os.path.join(partial_dir, COMPONENTS_DIR), ignore_errors=True)
    if os.path.lexists(os.path.join(partial_dir, OWNER)):
        os.unlink(os.path.join(partial_dir, OWNER))
    os.rename(partial_dir, final)
    fsync_dir(root)
    if status == "success":
        update_latest(root, set_id)
    return final


def _manifest_path_problems(manifest):
    """Entries of a loaded manifest whose ``path`` is not relative and canonical."""
    entries = [("files", e) for e in manifest.get("files") or []]
    entries += [("links", e) for e in manifest.get("links") or []]
    components = manifest.get("components") or {}
    if not isinstance(components, dict):
        return ["components is not a mapping"]
    for cname, comp in sorted(components.items()):
        if not isinstance(comp, dict):
            return ["component %r is not a mapping" % (cname,)]
        files = comp.get("files") or []
        if not isinstance(files, list):
            return ["component %r: files is not a list" % (cname,)]
        entries += [("component %s files" % cname, e) for e in files]
    problems = []
    for where, entry in entries:
        if not isinstance(entry, dict):
            problems.append("%s: entry %r is not a mapping" % (where, entry))
            continue
        problem = relative_problem(entry.get("path"))
        if problem:
            problems.append("%s: path %r %s" % (where, entry.get("path"), problem))
    return problems


def load_manifest(path):
    """Load and check ``backup_manifest.json`` of a set (or partial); raise ``BackupSetError``.

    Every ``path`` it lists (``files``, ``links``, each component's ``files``) must be relative and
    canonical (``confined_path`` checks, once a path is used, that it also resolves inside the set).
    """
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
    for key in ("files", "links"):
        if not isinstance(manifest.get(key) or [], list):
            raise BackupSetError("%s: %s is not a list; the manifest is damaged, do not restore from this set"
                                 % (file_path, key))
    problems = _manifest_path_problems(manifest)
    if problems:
        raise BackupSetError("%s lists paths outside the set (%s); the manifest was tampered with or damaged: do "
                             "not restore from this set" % (file_path, "; ".join(problems[:5])))
    return manifest


def load_component(set_path, component):
    """The manifest entry of ``component`` in the set at ``set_path``, which must have succeeded.

    Raises ``BackupSetError`` naming the set, what it holds and what to do when the set has no such
    component or it failed (the manifest is untrusted: a missing key is a message, never a ``KeyError``).
    """
    manifest = load_manifest(set_path)
    components = manifest.get("components") or {}
    entry = components.get(component)
    where = manifest.get("id") or os.path.basename(os.path.abspath(os.fspath(set_path)))
    if not isinstance(entry, dict):
        held = ", ".join(sorted(components)) or "none"
        raise BackupSetError("the set %s has no %s component (it holds: %s); restore %s from a set that has it "
                             "(restore_plan lists them) or leave it out" % (where, component, held, component))
    if entry.get("status") != "success":
        raise BackupSetError("the %s component of the set %s did not succeed (%s); restore it from another set"
                             % (component, where, entry.get("error") or "status %s" % entry.get("status")))
    return entry


# --------------------------------------------------------------------------------------------
# verification records (appended after finalize, the manifest stays as checksummed)


def _empty_verification(set_id):
    return {"format": VERIFICATION_FORMAT, "schema_version": VERIFICATION_SCHEMA_VERSION, "set_id": set_id,
            "records": []}


def read_verification(set_path):
    """The verification records of a set: ``{format, schema_version, set_id, records}``.

    A set without ``verification.json`` gives the empty document. Raises ``BackupSetError`` when
    ``verification.json.sha256`` is missing or does not match (tampered with, or a writer died
    between the two writes), or when the document is not this format or names another set.
    """
    set_path = os.path.realpath(os.fspath(set_path))
    set_id = os.path.basename(set_path)
    doc_path = os.path.join(set_path, VERIFICATION)
    sum_path = os.path.join(set_path, VERIFICATION_SUMS)
    what = "inspect them; to start a fresh record move both %s and %s out of the set" % (
        VERIFICATION, VERIFICATION_SUMS)
    if not os.path.lexists(doc_path) and not os.path.lexists(sum_path):
        return _empty_verification(set_id)
    try:
        with open(doc_path, "rb") as handle:
            data = handle.read()
        with open(sum_path, "rb") as handle:
            sums = parse_sums(handle.read())
    except (OSError, ValueError) as exc:
        raise BackupSetError("cannot read the verification records of %s (%s); %s" % (set_path, exc, what)) from exc
    if set(sums) != {VERIFICATION}:
        listed = ", ".join(repr(name) for name in sorted(sums))
        raise BackupSetError("%s must list %s only, it lists %s; %s" % (sum_path, VERIFICATION, listed, what))
    if hashlib.sha256(data).hexdigest() != sums[VERIFICATION]:
        raise BackupSetError("%s does not match %s (tampered with, or a writer died between the two writes); %s"
                             % (doc_path, VERIFICATION_SUMS, what))
    try:
        doc = json.loads(data.decode("utf-8"))
    except ValueError as exc:
        raise BackupSetError("%s is not JSON (%s); %s" % (doc_path, exc, what)) from exc
    if not isinstance(doc, dict) or doc.get("format") != VERIFICATION_FORMAT or \
            doc.get("schema_version") != VERIFICATION_SCHEMA_VERSION or not isinstance(doc.get("records"), list):
        raise BackupSetError("%s is not a %s document of schema_version %d; %s"
                             % (doc_path, VERIFICATION_FORMAT, VERIFICATION_SCHEMA_VERSION, what))
    if doc.get("set_id") != set_id:
        raise BackupSetError("%s records set %r, not %s (copied from another set?); %s"
                             % (doc_path, doc.get("set_id"), set_id, what))
    return doc


def _check_record(record):
    """A clean copy of a verification record, or ``BackupSetError``."""
    if not isinstance(record, dict):
        raise BackupSetError("a verification record is a mapping, got %r" % (record,))
    unknown = sorted(set(record) - {"time", "method", "result", "components", "by", "details"})
    if unknown:
        raise BackupSetError("unknown verification record key(s) %s; use time, method, result, components, by, "
                             "details" % ", ".join(unknown))
    method, result = record.get("method"), record.get("result")
    if method not in VERIFICATION_METHODS:
        raise BackupSetError("verification method must be one of %s, got %r"
                             % (", ".join(VERIFICATION_METHODS), method))
    if result not in VERIFICATION_RESULTS:
        raise BackupSetError("verification result must be one of %s, got %r"
                             % (", ".join(VERIFICATION_RESULTS), result))
    components = record.get("components") or {}
    if not isinstance(components, dict) or not all(
            isinstance(k, str) and k and isinstance(v, str) and v for k, v in components.items()):
        raise BackupSetError("verification components must map component names to a result such as 'passed' or "
                             "'failed', got %r" % (components,))
    when = record.get("time")
    try:
        when = isoformat(parse_time(when)) if when else isoformat(utc())
    except (TypeError, ValueError) as exc:
        raise BackupSetError("verification time %r is not an ISO 8601 instant" % (when,)) from exc
    by = record.get("by") or ""
    details = record.get("details") or ""
    if not isinstance(by, str) or not isinstance(details, str):
        raise BackupSetError("verification 'by' and 'details' are text")
    return {"time": when, "method": method, "result": result, "components": dict(sorted(components.items())),
            "by": by, "details": details}


def verification_record(record):
    """The record ``record_verification`` would append (checked, ``time`` defaulting to now)."""
    return _check_record(record)


def record_verification(set_path, record, dry_run=False):
    """Append a verification record to ``<set>/verification.json`` and return the new document.

    ``record``: ``{"method": "checksums"|"restore", "result": "passed"|"failed", "components":
    {name: "passed"|"failed"|...}, "by": str, "details": str}`` and optionally ``time`` (ISO UTC,
    default now). The set must be finalized (manifest and SHA256SUMS present); the manifest is not
    touched. The document is written atomically, then ``verification.json.sha256`` (``sha256sum -c``
    format) atomically after it, under an exclusive ``flock`` on the set folder so that two writers
    do not lose a record. Existing records that fail ``read_verification`` are not appended to.
    With ``dry_run`` every check is made and the document that would be written is returned, but
    nothing is written.
    """
    set_path = os.path.realpath(os.fspath(set_path))
    clean = _check_record(record)
    if not os.path.isdir(set_path) or not _SET_RE.match(os.path.basename(set_path)):
        raise BackupSetError("%s is not a finalized backup set (<root>/<name>_YYYYmmdd_HHMMSS)" % set_path)
    load_manifest(set_path)
    if not os.path.isfile(os.path.join(set_path, SUMS)):
        raise BackupSetError("%s has no %s: it is not a complete set, verify a finalized one" % (set_path, SUMS))
    if dry_run:
        doc = read_verification(set_path)
        doc["records"].append(clean)
        return doc
    fd = os.open(set_path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        doc = read_verification(set_path)
        doc["records"].append(clean)
        data = (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode("utf-8")
        write_file_atomic(os.path.join(set_path, VERIFICATION), data)
        write_file_atomic(os.path.join(set_path, VERIFICATION_SUMS),
                          sums_line(VERIFICATION, hashlib.sha256(data).hexdigest()))
        os.fsync(fd)
    finally:
        os.close(fd)
    return doc


def verification_summary(doc):
    """``{restore_tested, restore_tested_time, last_method, last_result, last_time, last_details}``
    of a verification document.

    ``restore_tested``: the newest ``restore`` record passed (``restore_tested_time`` is its time,
    None otherwise); ``last_*``: the newest record of any method. Newest = latest ``time``, the later
    record on a tie.
    """
    records = []
    for index, rec in enumerate((doc or {}).get("records") or []):
        try:
            records.append((parse_time(rec["time"]), index, rec))
        except (KeyError, TypeError, ValueError):
            continue
    records.sort(key=lambda item: item[:2])
    last = records[-1][2] if records else {}
    restores = [item[2] for item in records if item[2].get("method") == "restore"]
    tested = bool(restores) and restores[-1].get("result") == "passed"
    return {"restore_tested": tested, "last_method": last.get("method"), "last_result": last.get("result"),
            "last_time": last.get("time"), "last_details": last.get("details"),
            "restore_tested_time": restores[-1].get("time") if tested else None}


def verification_state(set_path):
    """``verification_summary`` of a set's records, plus ``error`` (None, or why they cannot be read)."""
    try:
        summary = verification_summary(read_verification(set_path))
        summary["error"] = None
    except BackupSetError as exc:
        summary = verification_summary(None)
        summary["error"] = str(exc)
    return summary


def summarize(path, manifest):
    """The list/retention view of a set: id, times, status, per-component summary and ``verification``
    (``verification_state``)."""
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
        "verification": verification_state(path),
    }


def scan_sets(root):
    """``(sets, unreadable)``: every folder under ``root`` named like a finalized set, read once.

    ``sets``: ``summarize()`` of each set with a valid manifest, plus ``complete`` (SHA256SUMS present) and
    ``latest``, sorted by time, oldest first. ``unreadable``: ``[(set id, why)]``, newest first, for those that cannot
    be used - the manifest missing, unreadable or refused by ``load_manifest``, or no SHA256SUMS. A crash leaves a
    ``.partial`` folder (not listed), never one of these: each is a set damaged or tampered with after it was
    finalized.
    """
    root = os.path.abspath(os.fspath(root))
    if not os.path.isdir(root):
        return [], []
    try:
        latest = os.readlink(os.path.join(root, LATEST))
    except OSError:
        latest = None
    sets, unreadable = [], []
    for entry in os.listdir(root):
        path = os.path.join(root, entry)
        if not _SET_RE.match(entry) or os.path.islink(path) or not os.path.isdir(path):
            continue
        try:
            manifest = load_manifest(path)
        except BackupSetError as exc:
            unreadable.append((entry, str(exc)))
            continue
        item = summarize(path, manifest)
        item["complete"] = os.path.isfile(os.path.join(path, SUMS))
        item["latest"] = entry == latest
        if not item["complete"]:
            unreadable.append((entry, "%s has no %s: it was damaged after it was finalized" % (path, SUMS)))
        sets.append(item)
    sets.sort(key=lambda s: (s["ended"] or "", s["id"]))
    unreadable.sort(reverse=True)
    return sets, unreadable


def list_sets(root, complete_only=False):
    """List the finalized sets under ``root`` (``scan_sets``' sets, sorted by time, oldest first).

    ``.partial`` folders and folders without a valid manifest are ignored. ``complete_only``
    returns only complete sets with ``status: success``.
    """
    sets = scan_sets(root)[0]
    if complete_only:
        return [s for s in sets if s["complete"] and s["status"] == "success"]
    return sets


def newest_restore_tested(root):
    """``(set_id, restore_tested_time)`` of the newest complete, successful set whose newest ``restore``
    verification record passed, or None."""
    for item in reversed(list_sets(root, complete_only=True)):
        if item["verification"]["restore_tested"]:
            return item["id"], item["verification"]["restore_tested_time"]
    return None


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


def verify_set(path, auth_key=None, allow_unauthenticated=False):
    """Re-hash every file of a set against SHA256SUMS and the manifest; never raises for a bad set.

    With ``auth_key`` the set must also be authenticated (``check_set_auth``: ``SHA256SUMS.hmac`` present,
    made with this key, matching SHA256SUMS and the set id; a set without one only with
    ``allow_unauthenticated``); its ``auth`` result says which, a failure is the first of ``errors``.
    Without a key nothing is authenticated (``auth.state`` is ``not_checked``). A key too short to be
    one raises ``BackupSetError``.

    Returns ``{path, ok, status, checked, bytes, missing, extra, mismatched, errors, auth}``:
    ``missing``: listed but absent; ``extra``: present but unlisted; ``mismatched``: content
    differs from SHA256SUMS (or the manifest disagrees with SHA256SUMS, or its size differs);
    ``errors``: anything else, such as an entry that escapes the set (``confined_path``). The
    verification records (``verification.json`` and its ``.sha256``) are not part of the check.
    """
    path = os.path.abspath(os.fspath(path))
    result = {"path": path, "ok": False, "status": None, "checked": 0, "bytes": 0,
              "missing": [], "extra": [], "mismatched": [], "errors": [],
              "auth": {"state": "not_checked", "key_id": None, "problem": None}}
    if not os.path.isdir(path):
        if auth_key not in (None, "", b""):
            auth_key_id(auth_key)
        result["errors"].append("%s is not a folder" % path)
        return result
    result["auth"] = check_set_auth(path, auth_key, allow_unauthenticated)
    if result["auth"]["problem"]:
        result["errors"].append(result["auth"]["problem"])
    try:
        sums = read_sums(path)
    except (OSError, ValueError) as exc:
        result["errors"].append("cannot read %s: %s" % (SUMS, exc))
        sums = None
    manifest = None
    try:
        manifest = load_manifest(path)
        result["status"] = manifest.get("status")
    except BackupSetError as exc:
        result["errors"].append(str(exc))
    try:
        present = set(_set_files(path))
    except OSError as exc:
        result["errors"].append("cannot list the set's files: %s" % exc)
        present = set()
    listed = dict(sums or {})
    sizes = {}
    if manifest is not None:
        for entry in manifest.get("files") or []:
            rel = entry.get("path")
            if sums is not None and rel in sums and sums[rel] != str(entry.get("sha256") or "").lower():
                result["mismatched"].append(rel)
                result["errors"].append("%s: manifest sha256 differs from %s" % (rel, SUMS))
            if sums is not None and rel not in sums:
                result["errors"].append("%s: in the manifest but not in %s" % (rel, SUMS))
            listed.setdefault(rel, entry.get("sha256"))
            if entry.get("size") is not None:
                sizes[rel] = entry["size"]
    for rel in sorted(listed):
        try:
            full = confined_path(path, rel)
        except BackupSetError as exc:
            result["errors"].append(str(exc))
            continue
        if rel not in present:
            result["missing"].append(rel)
            continue
        if not os.path.isfile(full):
            result["errors"].append("%s: not a regular file" % rel)
            continue
        try:
            digest, size = hash_file(full)
        except OSError as exc:
            result["errors"].append("%s: %s" % (rel, exc))
            continue
        result["checked"] += 1
        result["bytes"] += size
        mismatch = digest != str(listed[rel] or "").lower()
        if rel in sizes:
            try:
                mismatch = mismatch or int(sizes[rel]) != size
            except (TypeError, ValueError):
                mismatch = True
        if mismatch and rel not in result["mismatched"]:
            result["mismatched"].append(rel)
    result["extra"] = sorted(present - set(listed))
    if manifest is not None:
        recorded = {link.get("path"): link.get("target") for link in manifest.get("links") or []}
        try:
            actual = {link["path"]: link["target"] for link in set_links(path)}
        except OSError as exc:
            result["errors"].append("cannot read the set's symbolic links: %s" % exc)
            actual = {}
        for rel in sorted(set(recorded) | set(actual)):
            try:
                confined_path(path, rel, follow=False)
            except BackupSetError as exc:
                result["errors"].append(str(exc))
                continue
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
