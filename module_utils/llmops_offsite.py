"""Off-site copy of the backup root with restic: sync, prune (from a trusted host) and check.

One ``restic backup`` per COMPLETED set (never a ``.partial``; a failed set only with ``include_failed``),
tagged so that a snapshot names its set without the local disk: ``llmops-set``, ``set=<id>``,
``kind=<name>``, ``status=<status>``, ``ended=<YYYYmmddTHHMMSSZ>``, ``type=full|incremental``,
``parent=<set id>`` (per parent) and ``binlog`` when the set holds binary logs. The prune operation,
run on a trusted host that has only the repository, rebuilds the sets from these tags and asks
``llmops_retention.plan_retention`` which to keep: the snapshots of kept sets stay (a kept incremental's
full is a kept set), the others are forgotten by id. The binary log archive, the config history and the
model store go as ``llmops-extra`` snapshots (``extra=<key>``), every sync (restic de-duplicates), and
are thinned with ``restic forget --keep-within`` per extra.

Secrets: the repository password reaches restic through ``RESTIC_PASSWORD_FILE`` (the operator's file,
or a 0600 file in a 0700 temporary folder removed afterwards); the repository URL (which may hold REST
credentials) through ``RESTIC_REPOSITORY``; S3 credentials through the environment. Nothing secret is on
a command line.

Stdlib only; restic is run as a subprocess (``runner`` can be replaced in tests).
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time

from ansible.module_utils.llmops_backupset import (
    MANIFEST,
    SUMS,
    SUMS_HMAC,
    BackupSetError,
    check_name,
    isoformat,
    list_sets,
    load_manifest,
    parse_time,
    read_json,
    resolve_set,
    update_latest,
    utc,
    verify_set,
    write_file_atomic,
)
from ansible.module_utils.llmops_common import LlmopsError
from ansible.module_utils.llmops_layout import backup_layout, layout_path
from ansible.module_utils.llmops_report import gauge
from ansible.module_utils.llmops_retention import plan_retention

SET_TAG = "llmops-set"
EXTRA_TAG = "llmops-extra"
EXTRAS = ("binlogs", "config_repo", "model_store")
STAMP = "%Y%m%dT%H%M%SZ"
_TRANSIENT_RE = re.compile(r"connection refused|connection reset|timeout|timed out|temporary failure|EOF|"
                           r"\b50[0234]\b|already locked|no route to host|broken pipe|TLS handshake", re.I)
_NO_REPO_RE = re.compile(r"Is there a repository at the following location|does not exist|"
                         r"unable to open config file|config file not found", re.I)
_WRONG_PASSWORD_RE = re.compile(r"wrong password|no key found", re.I)
_TAG_VALUE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class OffsiteError(LlmopsError):
    """The off-site copy failed; the message says what to do."""


# ------------------------------------------------------------------ pure logic

def stamp(value):
    """``ended`` tag value of a time (UTC, ``YYYYmmddTHHMMSSZ``)."""
    return parse_time(value).astimezone(datetime.timezone.utc).strftime(STAMP)


def set_tags(item):
    """The tags of a set's snapshot (``item``: a ``list_sets`` entry)."""
    tags = [SET_TAG, "set=%s" % item["id"], "kind=%s" % (item.get("name") or item["id"].rsplit("_", 2)[0]),
            "status=%s" % item.get("status"), "ended=%s" % stamp(item["ended"])]
    comps = item.get("components") or {}
    tags += ["component=%s" % name for name in sorted(comps) if _TAG_VALUE_RE.match(name)]
    incremental = any((c or {}).get("backup_type") == "incremental" for c in comps.values())
    tags.append("type=%s" % ("incremental" if incremental else "full"))
    for parent in sorted({(c or {}).get("parent") for c in comps.values() if (c or {}).get("parent")}):
        tags.append("parent=%s" % parent)
    if any((c or {}).get("binlog") for c in comps.values()):
        tags.append("binlog")
    return tags


def parse_tags(tags):
    """``{"set": id, "kind": .., "status": .., "ended": iso, "type": .., "parents": [..], "binlog": bool,
    "components": [..] or None}`` from a snapshot's tags, or None when it is not a set snapshot.

    ``components`` is None for a snapshot made before the sync tagged them (``component=<name>``): read its
    manifest then (``fetch``)."""
    tags = tags or []
    if SET_TAG not in tags:
        return None
    out = {"parents": [], "binlog": "binlog" in tags, "components": None}
    for tag in tags:
        key, sep, value = tag.partition("=")
        if not sep:
            continue
        if key == "parent":
            out["parents"].append(value)
        elif key == "component":
            out["components"] = (out["components"] or []) + [value]
        elif key == "ended":
            out["ended"] = isoformat(datetime.datetime.strptime(value, STAMP).replace(tzinfo=datetime.timezone.utc))
        else:
            out[key] = value
    return out if out.get("set") and out.get("ended") else None


def sets_to_send(local_sets, snapshots, include_failed=False):
    """The local sets (``list_sets`` entries) that have no snapshot yet, oldest first.

    Only complete sets; a failed set only with ``include_failed``."""
    present = {p["set"] for p in (parse_tags(s.get("tags")) for s in snapshots) if p}
    out = []
    for item in local_sets:
        if not item.get("complete") or item["id"] in present:
            continue
        if item.get("status") != "success" and not include_failed:
            continue
        out.append(item)
    return sorted(out, key=lambda s: (s["ended"] or "", s["id"]))


def replicated_sets(snapshots):
    """``{set id: {ended, kind, status, type, parents, binlog, snapshots: [short ids]}}`` from the repository."""
    out = {}
    for snap in snapshots:
        parsed = parse_tags(snap.get("tags"))
        if not parsed:
            continue
        entry = out.setdefault(parsed["set"], dict(parsed, snapshots=[]))
        entry["snapshots"].append(snap.get("id") or snap.get("short_id"))
    return out


def lag_seconds(local_sets, snapshots):
    """Newest complete successful local set's end minus the newest replicated successful set's end (0 when
    every one is off-site; None when nothing is replicated yet; ``local_sets`` empty: 0)."""
    good = [parse_time(s["ended"]) for s in local_sets if s.get("complete") and s.get("status") == "success"]
    if not good:
        return 0.0
    remote = [parse_time(r["ended"]) for r in replicated_sets(snapshots).values() if r.get("status") == "success"]
    if not remote:
        return None
    return max(0.0, (max(good) - max(remote)).total_seconds())


def prune_plan(snapshots, policy=None, now=None):
    """Which snapshots to forget: the retention plan over the sets the snapshots describe.

    Returns ``{"keep": {set: reasons}, "forget_sets": [ids], "forget": [snapshot ids], "warnings": [..]}``."""
    reps = replicated_sets(snapshots)
    sets = []
    for set_id, rep in reps.items():
        first_parent = rep["parents"][0] if rep["parents"] else None
        comps = {"set": {"backup_type": rep.get("type") or "full", "parent": first_parent,
                         "binlog": {"archived": True} if rep["binlog"] else None}}
        extra = {"p%d" % i: {"backup_type": "incremental", "parent": p} for i, p in enumerate(rep["parents"][1:])}
        comps.update(extra)
        sets.append({"id": set_id, "name": rep.get("kind"), "ended": rep["ended"], "status": rep.get("status"),
                     "complete": True, "components": comps})
    plan = plan_retention(sets, policy, now)
    forget = sorted(sid for set_id in plan["delete"] for sid in reps[set_id]["snapshots"])
    return {"keep": plan["keep"], "forget_sets": plan["delete"], "forget": forget, "warnings": plan["warnings"]}


def restic_policy(retention):
    """roles/common's ``backup_retention`` (``mariadb_incremental_days``) as a ``plan_retention`` policy."""
    policy = dict(retention or {})
    if "mariadb_incremental_days" in policy:
        policy["incremental_days"] = policy.pop("mariadb_incremental_days")
    return {k: v for k, v in policy.items() if v is not None}


def redact(repository):
    """The repository URL without a password (``rest:https://user:pw@host`` -> ``rest:https://user:***@host``)."""
    return re.sub(r"(://[^/:@]+):[^@/]*@", r"\1:***@", repository or "")


_SFTP_RE = re.compile(r"^sftp:(?://)?(?:(?P<user>[^@/]+)@)?(?P<host>\[[^\]]+\]|[^:/]+)(?::(?P<port>\d+))?[:/]")


def sftp_command(repository, identity_file=None, known_hosts_file=None, port=None, ssh_options=None):
    """The ssh command restic runs for an ``sftp:`` repository (``restic -o sftp.command=...``), or None.

    None (restic's own ``ssh host -s sftp`` with the running user's ~/.ssh) unless an identity file, a known hosts
    file, a port or extra ``-o`` options are given. With them: ``ssh -o BatchMode=yes`` (never a prompt),
    ``-o StrictHostKeyChecking=yes`` with the known hosts file (an unknown host key fails), ``-i`` the key *path*
    with ``IdentitiesOnly``, ``-p`` the port, then ``user@host -s sftp``. Only paths are on this command line,
    never a key or a password."""
    if not any((identity_file, known_hosts_file, port, ssh_options)):
        return None
    match = _SFTP_RE.match(repository or "")
    if not match:
        raise OffsiteError("offsite ssh settings need an sftp repository (sftp:user@host:/path or "
                           "sftp://user@host:port//path), not %s" % redact(repository))
    argv = ["ssh", "-o", "BatchMode=yes"]
    if known_hosts_file:
        argv += ["-o", "StrictHostKeyChecking=yes", "-o", "UserKnownHostsFile=%s" % known_hosts_file]
    if identity_file:
        argv += ["-i", identity_file, "-o", "IdentitiesOnly=yes"]
    for option in ssh_options or []:
        argv += ["-o", option]
    port = port or match.group("port")
    if port:
        argv += ["-p", str(int(port))]
    host = match.group("host").strip("[]")
    argv += [("%s@%s" % (match.group("user"), host)) if match.group("user") else host, "-s", "sftp"]
    return " ".join(shlex.quote(a) for a in argv)


def offsite_metrics(state, now=None):
    """Prometheus text of the off-site state (``llmops_offsite.prom``)."""
    def ts(value):
        return parse_time(value).timestamp() if value else 0

    lines = []
    sync = state.get("sync") or {}
    gauge(lines, "llmops_offsite_last_success_timestamp_seconds", "End of the last successful off-site sync (0: none).",
          [({}, ts(sync.get("last_success")))])
    gauge(lines, "llmops_offsite_last_run_success", "1 when the last off-site sync succeeded.",
          [({}, 1 if sync.get("last_status") == "success" else 0)])
    gauge(lines, "llmops_offsite_last_run_timestamp_seconds", "When the last off-site sync ended.",
          [({}, ts(sync.get("last_run")))])
    lag = sync.get("lag_s")
    gauge(lines, "llmops_offsite_lag_seconds", "Newest complete local set's end minus the newest replicated set's "
          "end (-1: nothing replicated yet).", [({}, -1 if lag is None else lag)])
    gauge(lines, "llmops_offsite_sets_sent", "Sets sent by the last successful sync.",
          [({}, sync.get("sets_sent") or 0)])
    gauge(lines, "llmops_offsite_bytes_added", "Bytes the last successful sync added to the repository.",
          [({}, sync.get("bytes_added") or 0)])
    check = state.get("check") or {}
    if check:
        gauge(lines, "llmops_offsite_check_last_success", "1 when the last restic check of the repository passed.",
              [({}, 1 if check.get("last_status") == "success" else 0)])
        gauge(lines, "llmops_offsite_check_last_success_timestamp_seconds", "When restic check last passed.",
              [({}, ts(check.get("last_success")))])
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ restic

class Restic:
    """Runs restic with the repository and the password in the environment, never on a command line."""

    def __init__(self, repository, password=None, password_file=None, env=None, binary="restic", retries=3,
                 backoff=5.0, limit_upload_kib=0, cache_dir=None, runner=None, sleep=time.sleep, options=None):
        if not repository:
            raise OffsiteError("no off-site repository: set offsite_repository (sftp:user@host:/path, "
                               "rest:https://host:8000/path or s3:https://host/bucket/path)")
        if not password and not password_file and not (env or {}).get("RESTIC_PASSWORD") \
                and not (env or {}).get("RESTIC_PASSWORD_FILE"):
            raise OffsiteError("no repository password: set offsite_password (from the vault) or password_file")
        self.binary = binary
        # restic's extended options (``-o sftp.command=...``): before every command's arguments
        self.options = [arg for option in (options or []) for arg in ("-o", option)]
        self.retries = max(0, int(retries))
        self.backoff = float(backoff)
        self.limit_upload_kib = int(limit_upload_kib or 0)
        self.runner = runner or subprocess.run
        self.sleep = sleep
        self.tmp = None
        self.env = dict(os.environ)
        self.env.update({k: str(v) for k, v in (env or {}).items()})
        self.env["RESTIC_REPOSITORY"] = repository
        self.env.pop("RESTIC_PASSWORD", None) if password or password_file else None
        if password_file:
            self.env["RESTIC_PASSWORD_FILE"] = password_file
        elif password:
            self.tmp = tempfile.mkdtemp(prefix="llmops-restic-")
            os.chmod(self.tmp, 0o700)
            path = os.path.join(self.tmp, "password")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(password)
            self.env["RESTIC_PASSWORD_FILE"] = path
        if cache_dir:
            self.env["RESTIC_CACHE_DIR"] = cache_dir
        self.secrets = [s for s in (password, repository if "@" in (repository or "") else None) if s]
        self.log = []

    def close(self):
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _clean(self, text):
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text

    def run(self, args, cwd=None, retry=True, check=True):
        """Run ``restic args``; retry transient failures with exponential backoff; return the CompletedProcess."""
        argv = [self.binary] + self.options + list(args)
        attempts = (self.retries if retry else 0) + 1
        for attempt in range(attempts):
            try:
                proc = self.runner(argv, cwd=cwd, env=self.env, capture_output=True, text=True, check=False)
            except FileNotFoundError as exc:
                raise OffsiteError("%s not found: install Debian's restic package (scripts/bootstrap.sh, role base)"
                                   % self.binary) from exc
            self.log.append({"argv": list(args), "rc": proc.returncode, "attempt": attempt + 1})
            if proc.returncode == 0 or not check:
                return proc
            err = self._clean(proc.stderr or "")
            if _WRONG_PASSWORD_RE.search(err):
                raise OffsiteError("restic %s: wrong repository password: check offsite_password in the vault "
                                   "(%s)" % (args[0], err.strip()[-400:]))
            if attempt + 1 < attempts and _TRANSIENT_RE.search(err):
                self.sleep(self.backoff * (2 ** attempt))
                continue
            raise RepoError(args[0], proc.returncode, err.strip()[-1500:])
        raise AssertionError("unreachable")  # pragma: no cover

    def json(self, args, **kwargs):
        proc = self.run(list(args) + ["--json"], **kwargs)
        return json.loads(proc.stdout or "null")

    def snapshots(self, init=False):
        try:
            return self.json(["snapshots"]) or []
        except RepoError as exc:
            if not _NO_REPO_RE.search(exc.stderr):
                raise
            if not init:
                raise OffsiteError("the off-site repository does not exist: run once with init=true "
                                   "(offsite_init) or create it with restic init on a trusted host (%s)"
                                   % exc.stderr[-300:]) from exc
            self.run(["init"])
            return []

    def backup(self, path, tags, host=None):
        args = ["backup", "."]
        for tag in tags:
            args += ["--tag", tag]
        if host:
            args += ["--host", host]
        if self.limit_upload_kib:
            args += ["--limit-upload", str(self.limit_upload_kib)]
        proc = self.run(args + ["--json"], cwd=path)
        summary = {}
        for line in (proc.stdout or "").splitlines():
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if isinstance(doc, dict) and doc.get("message_type") == "summary":
                summary = doc
        return summary

    def restore(self, snapshot_id, target):
        """``restic restore <id> --target <target>`` (retried on transient errors; a damaged pack fails it)."""
        return self.run(["restore", snapshot_id, "--target", target])

    def dump(self, snapshot_id, path):
        """The text of one file of a snapshot (``restic dump``), or None when the snapshot has no such file."""
        proc = self.run(["dump", snapshot_id, path], check=False)
        return proc.stdout if proc.returncode == 0 else None

    def restore_size(self, snapshot_id):
        """Bytes a restore of the snapshot writes (``restic stats --mode restore-size``), or None."""
        proc = self.run(["stats", "--mode", "restore-size", snapshot_id, "--json"], check=False)
        try:
            return int(json.loads(proc.stdout or "{}").get("total_size"))
        except (TypeError, ValueError):
            return None


class RepoError(OffsiteError):
    """restic exited non-zero (not a transient error, or retries exhausted)."""

    def __init__(self, command, rc, stderr):
        self.command, self.rc, self.stderr = command, rc, stderr
        super().__init__("restic %s failed (exit %s): %s; check the repository URL, the network and the "
                         "credentials, then run the off-site sync again" % (command, rc, stderr))


# ------------------------------------------------------------------ operations

def load_state(root):
    path = layout_path(root, "offsite_state")
    return read_json(path) if os.path.isfile(path) else {}


def save_state(root, state, metrics_path=None):
    write_file_atomic(layout_path(root, "offsite_state"), (json.dumps(state, indent=2, sort_keys=True) + "\n").encode())
    if metrics_path:
        os.makedirs(os.path.dirname(os.path.abspath(metrics_path)), mode=0o755, exist_ok=True)
        write_file_atomic(metrics_path, offsite_metrics(state).encode(), mode=0o644)


def sync(restic, root, include_failed=False, extras=EXTRAS, init=False, host=None, check_mode=False, now=None):
    """Send every complete set that has no snapshot yet, then the extras. Returns the result dict."""
    local = list_sets(root)
    snapshots = restic.snapshots(init=init and not check_mode) if not (check_mode and init) else []
    todo = sets_to_send(local, snapshots, include_failed)
    layout = backup_layout(root)
    extra_paths = [(key, layout[key]) for key in extras if os.path.isdir(layout[key])]
    result = {"sets_sent": [s["id"] for s in todo], "extras_sent": [k for k, _path in extra_paths], "bytes_added": 0,
              "snapshots": {}, "changed": bool(todo or extra_paths)}
    if check_mode:
        result["lag_s"] = lag_seconds(local, snapshots)
        return result
    for item in todo:
        summary = restic.backup(item["path"], set_tags(item), host=host)
        result["bytes_added"] += int(summary.get("data_added") or 0)
        result["snapshots"][item["id"]] = summary.get("snapshot_id")
        snapshots.append({"id": summary.get("snapshot_id"), "tags": set_tags(item)})
    extras_changed = []
    for key, path in extra_paths:
        summary = restic.backup(path, [EXTRA_TAG, "extra=%s" % key], host=host)
        result["bytes_added"] += int(summary.get("data_added") or 0)
        result["snapshots"][key] = summary.get("snapshot_id")
        if summary.get("files_new") or summary.get("files_changed") or summary.get("data_added"):
            extras_changed.append(key)
    result["changed"] = bool(todo or extras_changed)
    result["lag_s"] = lag_seconds(local, snapshots)
    return result


def prune(restic, policy=None, extra_keep_days=30, check_mode=False, now=None):
    """Forget the snapshots of the sets the retention drops (and thin the extras), then ``restic prune``."""
    snapshots = restic.snapshots()
    plan = prune_plan(snapshots, policy, now)
    plan["changed"] = bool(plan["forget"])
    if check_mode:
        return plan
    if plan["forget"]:
        restic.run(["forget"] + plan["forget"], retry=False)
    for key in EXTRAS:
        restic.run(["forget", "--tag", "%s,extra=%s" % (EXTRA_TAG, key), "--keep-within", "%dd" % extra_keep_days,
                    "--keep-last", "1"], retry=False)
    restic.run(["prune"], retry=False)
    plan["changed"] = True
    return plan


def check(restic, subset_pct=5, check_mode=False, init=False):
    """``restic check --read-data-subset=<n>%``; raises on a damaged repository.

    The snapshots are listed first: a repository that does not exist fails with the advice to create it (or,
    with ``init``, is created, as a first sync would create it)."""
    args = ["check"] + (["--read-data-subset=%s%%" % subset_pct] if subset_pct else [])
    if check_mode:
        return {"changed": False, "would_run": args}
    snapshots = restic.snapshots(init=init)
    proc = restic.run(args)
    return {"changed": False, "snapshots_count": len(snapshots), "output": restic._clean(proc.stdout)[-2000:]}


def record(root, operation, ok, result=None, error=None, metrics_path=None, now=None):
    """Write the outcome of ``operation`` (sync or check) into the state file and the metrics."""
    state = load_state(root)
    when = isoformat(utc(now))
    entry = state.setdefault(operation, {})
    entry.update({"last_run": when, "last_status": "success" if ok else "failed", "error": error})
    if ok:
        entry["last_success"] = when
        if operation == "sync" and result is not None:
            entry.update({"lag_s": result.get("lag_s"), "sets_sent": len(result.get("sets_sent") or []),
                          "bytes_added": result.get("bytes_added") or 0})
    save_state(root, state, metrics_path)
    return state


# ------------------------------------------------------------------ fetch (bring a restore point back)

def newest_snapshots(snapshots):
    """``{set id: (parsed tags, snapshot)}`` with the newest snapshot of each set, and ``{extra key: snapshot}``
    with the newest snapshot of each extra."""
    sets, extras = {}, {}

    def when(snap):
        return snap.get("time") or ""

    for snap in snapshots:
        parsed = parse_tags(snap.get("tags"))
        if parsed:
            if parsed["set"] not in sets or when(snap) > when(sets[parsed["set"]][1]):
                sets[parsed["set"]] = (parsed, snap)
            continue
        tags = snap.get("tags") or []
        if EXTRA_TAG in tags:
            key = next((t.split("=", 1)[1] for t in tags if t.startswith("extra=")), None)
            if key and (key not in extras or when(snap) > when(extras[key])):
                extras[key] = snap
    return sets, extras


def fetch_selection(sets, wanted=None):
    """Which sets a restore point needs: ``(ids, by_component)``.

    ``sets``: ``{id: parsed tags}`` with ``components`` filled in. ``wanted`` (set ids): those sets; otherwise per
    component the newest (by end time) successful set that holds it. Either way every ``parent=`` of a chosen
    set comes along, recursively (the chain an incremental needs). Raises ``OffsiteError`` when a wanted set or a
    parent is not in the repository."""
    chosen = []
    by_component = {}
    if wanted:
        for set_id in wanted:
            if set_id not in sets:
                raise OffsiteError("set %s is not in the off-site repository (it holds %s): fix offsite_fetch_sets"
                                   % (set_id, ", ".join(sorted(sets)) or "no set"))
            chosen.append(set_id)
    else:
        good = sorted((s for s in sets.values() if s.get("status") == "success"),
                      key=lambda s: (s["ended"], s["set"]))
        for item in good:
            for comp in item.get("components") or []:
                by_component[comp] = item["set"]
        chosen = sorted(set(by_component.values()), key=lambda i: (sets[i]["ended"], i))
    queue = list(chosen)
    while queue:
        for parent in sets[queue.pop(0)].get("parents") or []:
            if parent not in sets:
                raise OffsiteError("set %s needs set %s (its incremental chain), which is not in the off-site "
                                   "repository: fetch another restore point (offsite_fetch_sets) or find the set"
                                   % (next(i for i in chosen if parent in (sets[i].get("parents") or [])), parent))
            if parent not in chosen:
                chosen.append(parent)
                queue.append(parent)
    return sorted(chosen, key=lambda i: (sets[i]["ended"], i)), by_component


def manifest_chain(manifest):
    """Every set id a set's manifest says it needs: each component's ``parent`` and ``chain``."""
    needed = []
    for comp in (manifest.get("components") or {}).values():
        comp = comp if isinstance(comp, dict) else {}
        chain = comp.get("chain") if isinstance(comp.get("chain"), list) else []
        for set_id in list(chain) + [comp.get("parent")]:
            if isinstance(set_id, str) and set_id and set_id not in needed:
                needed.append(set_id)
    return needed


def _restored_root(target, snap):
    """Where a restored snapshot's content is: ``target`` itself (restic keeps the folder given to ``backup .``
    as the snapshot's root), or the snapshot's path below it (restic versions that store the full path)."""
    for path in snap.get("paths") or []:
        nested = os.path.join(target, os.path.relpath(path, "/"))
        if os.path.isdir(nested) and not os.path.exists(os.path.join(target, MANIFEST)):
            return nested
    return target


def _tree(path):
    """``{relative path: ("file", sha256) | ("link", target) | ("dir", None)}`` of a folder."""
    import hashlib

    out = {}
    for base, dirs, files in os.walk(path):
        for name in dirs + files:
            full = os.path.join(base, name)
            rel = os.path.relpath(full, path)
            if os.path.islink(full):
                out[rel] = ("link", os.readlink(full))
            elif os.path.isdir(full):
                out[rel] = ("dir", None)
            else:
                digest = hashlib.sha256()
                with open(full, "rb") as handle:
                    for chunk in iter(lambda: handle.read(1 << 20), b""):
                        digest.update(chunk)
                out[rel] = ("file", digest.hexdigest())
    return out


def _tree_bytes(path):
    total = 0
    for base, _dirs, files in os.walk(path):
        for name in files:
            full = os.path.join(base, name)
            if not os.path.islink(full):
                total += os.lstat(full).st_size
    return total


def _read_text(path):
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except OSError:
        return None


def fetch(restic, root, sets=None, extras=("binlogs", "config_repo"), auth_key=None, allow_unauthenticated=False,
          check_mode=False):
    """Bring a restore point back from the off-site repository into ``root`` (a new or existing backup root).

    The sets: ``sets`` (ids), or per component the newest successful set; with every set an incremental chain
    needs (the snapshots' ``parent=`` tags, then the verified manifests' ``parent``/``chain``). Each set is
    restored with ``restic restore`` into a private staging folder under the layout's ``restore_staging`` (same
    file system), verified (``verify_set``: SHA256SUMS re-hashed, the manifest, and the HMAC with ``auth_key``),
    and only when EVERY set and extra is good are they renamed into place, one atomic rename each; otherwise
    nothing is moved and ``OffsiteError`` lists each problem. A set already in ``root`` stays when its SHA256SUMS
    and HMAC equal the off-site copy's and it verifies; one that differs is refused. ``latest`` then names the
    newest successful set in ``root``. The extras (``binlogs``, ``config_repo``, ``model_store``: their newest
    snapshot; ``model_store`` always when a fetched set holds ``models``) are added file by file: a file already
    there with other content is refused.

    Returns ``{sets: [{id, components, bytes, verified, action, snapshot}], extras: [...], by_component, latest,
    changed}``; ``check_mode`` lists what would be fetched (``verified`` None) and changes nothing."""
    root = os.path.abspath(root)
    layout = backup_layout(root)
    snapshots = restic.snapshots()
    newest, extra_snaps = newest_snapshots(snapshots)
    if not newest:
        raise OffsiteError("the off-site repository holds no backup set (no snapshot tagged %s): nothing to fetch; "
                           "check offsite_repository" % SET_TAG)
    for set_id in list(sets or []):
        check_name(set_id, "set id")
    parsed = {}
    for set_id, (tags, snap) in newest.items():
        tags = dict(tags, snapshot=snap.get("id") or snap.get("short_id"), snap=snap)
        if tags.get("components") is None and (not sets or set_id in sets):
            # a snapshot from before component tags: its manifest says (untrusted until the set is verified,
            # used only to choose)
            try:
                doc = json.loads(restic.dump(tags["snapshot"], "/" + MANIFEST) or "{}")
            except ValueError:
                doc = {}
            tags["components"] = sorted((doc.get("components") or {}) if isinstance(doc, dict) else {})
        parsed[set_id] = tags
    chosen, by_component = fetch_selection(parsed, sets)
    if "model_store" not in extras and any("models" in (parsed[s]["components"] or ()) for s in chosen):
        # a models part references its versions in the content-addressed store: without it nothing restores
        extras = [*extras, "model_store"]
    missing_extras = [key for key in extras if key not in extra_snaps]
    result = {"sets": [], "extras": [], "by_component": by_component, "missing_extras": missing_extras,
              "changed": False, "latest": None}
    if check_mode:
        for set_id in chosen:
            present = os.path.isdir(os.path.join(root, set_id))
            result["sets"].append({"id": set_id, "components": parsed[set_id]["components"],
                                   "bytes": restic.restore_size(parsed[set_id]["snapshot"]), "verified": None,
                                   "snapshot": parsed[set_id]["snapshot"],
                                   "action": "check_present" if present else "fetch"})
        for key in extras:
            if key in extra_snaps:
                snap = extra_snaps[key]
                result["extras"].append({"key": key, "snapshot": snap.get("id"), "action": "fetch",
                                         "bytes": restic.restore_size(snap.get("id"))})
        result["changed"] = any(s["action"] == "fetch" for s in result["sets"]) or bool(result["extras"])
        return result

    os.makedirs(root, mode=0o750, exist_ok=True)
    os.makedirs(layout["restore_staging"], mode=0o700, exist_ok=True)
    if os.stat(layout["restore_staging"]).st_dev != os.stat(root).st_dev:
        raise OffsiteError("%s is on another file system than %s: the fetched sets could not be moved into place "
                           "atomically; remove that mount" % (layout["restore_staging"], root))
    staging = tempfile.mkdtemp(prefix="offsite-fetch-", dir=layout["restore_staging"])
    problems, entries, moves = [], {}, []
    try:
        queue = list(chosen)
        while queue:
            set_id = queue.pop(0)
            if set_id in entries:
                continue
            info = parsed.get(set_id)
            if info is None:
                problems.append("set %s is needed by an incremental chain (its manifest) but is not in the off-site "
                                "repository: fetch another restore point (offsite_fetch_sets)" % set_id)
                continue
            entry = {"id": set_id, "components": info["components"], "bytes": 0, "verified": False,
                     "snapshot": info["snapshot"], "action": "fetch"}
            entries[set_id] = entry
            dest = resolve_set(root, set_id)
            if os.path.lexists(dest):
                path, entry["action"] = dest, "present"
                remote_sums = restic.dump(info["snapshot"], "/" + SUMS)
                remote_mac = restic.dump(info["snapshot"], "/" + SUMS_HMAC)
                if remote_sums != _read_text(os.path.join(dest, SUMS)) or \
                        remote_mac != _read_text(os.path.join(dest, SUMS_HMAC)):
                    problems.append("set %s is already in %s but differs from the off-site copy (its SHA256SUMS or "
                                    "HMAC): it is not overwritten; move it away if the off-site copy is the one to "
                                    "restore, or fetch without it" % (set_id, root))
                    continue
            else:
                target = os.path.join(staging, set_id)
                try:
                    restic.restore(info["snapshot"], target)
                except OffsiteError as exc:
                    problems.append("set %s cannot be read back from the off-site repository (snapshot %s): %s; the "
                                    "off-site copy is damaged: run offsite_operation=check with check_subset_pct=100 "
                                    "on the trusted host, and fetch an older set (offsite_fetch_sets)"
                                    % (set_id, info["snapshot"], exc))
                    continue
                path = _restored_root(target, info["snap"])
                if os.path.basename(path) != set_id:  # the HMAC covers the folder's name: verify under the set id
                    os.rename(path, target + ".set")
                    os.rename(target + ".set", target)
                    path = target
            checked = verify_set(path, auth_key, allow_unauthenticated)
            entry["bytes"] = checked["bytes"]
            entry["auth"] = checked["auth"]["state"]
            if not checked["ok"]:
                why = checked["errors"][:3] + ["mismatched: %s" % ", ".join(checked["mismatched"][:5])] * bool(
                    checked["mismatched"]) + ["missing: %s" % ", ".join(checked["missing"][:5])] * bool(
                    checked["missing"]) + ["unlisted: %s" % ", ".join(checked["extra"][:5])] * bool(checked["extra"])
                problems.append("set %s fails verification (%s): %s; it is not fetched - do not restore from it, "
                                "fetch an older set (offsite_fetch_sets)"
                                % (set_id, "the copy in place" if entry["action"] == "present" else "off-site copy",
                                   "; ".join(why)))
                continue
            entry["verified"] = True
            try:
                manifest = load_manifest(path)
            except BackupSetError as exc:
                problems.append("set %s: %s" % (set_id, exc))
                continue
            entry["status"] = manifest.get("status")
            for needed in manifest_chain(manifest):
                try:
                    check_name(needed, "set id")
                except BackupSetError as exc:
                    problems.append("set %s names %r in its chain: %s" % (set_id, needed, exc))
                    continue
                if needed not in entries and needed not in queue:
                    queue.append(needed)
            if entry["action"] == "fetch":
                moves.append((path, dest))
        extra_moves = []
        for key in extras:
            snap = extra_snaps.get(key)
            if not snap:
                continue
            target = os.path.join(staging, "extra-" + key)
            try:
                restic.restore(snap.get("id"), target)
            except OffsiteError as exc:
                problems.append("%s cannot be read back from the off-site repository (snapshot %s): %s"
                                % (key, snap.get("short_id") or snap.get("id"), exc))
                continue
            src = _restored_root(target, snap)
            dest = layout[key]
            item = {"key": key, "snapshot": snap.get("id"), "bytes": _tree_bytes(src), "action": "fetch",
                    "files_added": 0}
            result["extras"].append(item)
            if not os.path.lexists(dest):
                extra_moves.append((src, dest))
                item["files_added"] = sum(1 for entry in _tree(src).values() if entry[0] != "dir")
                continue
            mine, theirs = _tree(dest), _tree(src)
            differ = sorted(rel for rel in theirs if rel in mine and mine[rel] != theirs[rel])
            if differ:
                problems.append("%s (%s) already holds %s with other content than the off-site copy: it is not "
                                "overwritten; move %s away to fetch it" % (key, dest, ", ".join(differ[:5]), dest))
                continue
            new = sorted((rel for rel in theirs if rel not in mine), key=lambda r: r.count(os.sep))
            item["action"] = "merge" if new else "present"
            for rel in new:
                if theirs[rel][0] == "dir":
                    continue
                extra_moves.append((os.path.join(src, rel), os.path.join(dest, rel)))
                item["files_added"] += 1
        result["sets"] = [entries[i] for i in sorted(entries, key=lambda i: (parsed.get(i, {}).get("ended") or "", i))]
        if problems:
            raise OffsiteError("fetch refused, nothing was moved into %s: %s" % (root, " | ".join(problems)))
        for src, dest in moves + extra_moves:
            if os.path.lexists(dest):
                raise OffsiteError("%s appeared while the fetch ran: another run writes into %s; stop it and fetch "
                                   "again" % (dest, root))
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            os.rename(src, dest)
        result["changed"] = bool(moves or extra_moves)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    good = list_sets(root, complete_only=True)
    if good:
        link = layout["latest"]
        current = os.readlink(link) if os.path.islink(link) else None
        if current != good[-1]["id"]:
            update_latest(root, good[-1]["id"])
            result["changed"] = True
        result["latest"] = good[-1]["id"]
    return result
