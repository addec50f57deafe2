"""Redis restores from a backup set: stage and check the RDB, swap it into the data folder, load it
so that the AOF matches, verify, roll back, clean up. Used by ``library/redis_restore.py``.

Why a load step: with ``appendonly yes`` Redis 7 starts from the AOF (``appendonlydir``), not from
``dump.rdb``; with no AOF there it would start empty. So after the swap a throw-away container of
the server's own image (no network, no password) starts on the data folder with AOF off, loads
``dump.rdb``, then ``CONFIG SET appendonly yes`` makes it write a fresh AOF from the loaded data;
once that rewrite has finished, ``SHUTDOWN SAVE`` and the container is removed. The real service
then starts from an AOF that holds exactly the backup.

The safety copy is the previous ``dump.rdb`` and AOF folder, renamed into ``<data>/<safety>/``
(same file system: instant). Talks to the throw-away server with ``docker exec redis-cli``; the
real server's password travels only in ``REDISCLI_AUTH``.

Verification: the backup's manifest entry holds the fingerprint of its artefact
(``fingerprint_detail``, see ``llmops_redis``). The load step computes the same fingerprint of the
RDB as the throw-away server loaded it and compares it with the manifest before the AOF is written;
the verify step computes it on the restored, running server (one ``EVAL`` per database) and
compares again. Both compare the keys without expiry and those whose expiry lies after the moment
of the comparison (``compare_fingerprints``), so keys that expired since the backup do not count.
A set made before artefact fingerprints existed is verified against what the load step recorded.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import time

from ansible.module_utils.llmops_backupset import write_file_atomic
from ansible.module_utils.llmops_common import load_state
from ansible.module_utils.llmops_exec import ExecError, ExecTarget, ImageTarget
from ansible.module_utils.llmops_redis import (
    ARTEFACT,
    BUCKET_MS,
    FINGERPRINT_METHOD,
    RedisError,
    compare_fingerprints,
    config_get,
    fingerprint_parts,
    info,
    summarize,
    unpack_rdb,
    wait_until_up,
)

STAGED_RDB = "dump.rdb"
SETTINGS_FILE = "server.json"
LOADED_FILE = "loaded-fingerprint.json"
DEFAULTS = {"appendonly": "yes", "appenddirname": "appendonlydir", "appendfilename": "appendonly.aof",
            "dbfilename": "dump.rdb", "databases": "16"}


def artefact_of(set_path, entry):
    """``(path, sha256)`` of the set's RDB artefact (``entry``: the set's redis manifest entry)."""
    for item in entry.get("files") or []:
        if item["path"].endswith(ARTEFACT) and item.get("sha256"):
            return os.path.join(set_path, item["path"]), item["sha256"]
    raise RedisError("the set's redis component lists no %s artefact with a sha256: restore Redis from another set"
                     % ARTEFACT)


def server_settings(target, conn, password=None):
    """The live server's persistence settings (``CONFIG GET``; the defaults where it is not allowed)."""
    return {name: config_get(target, conn, name, password) or default for name, default in DEFAULTS.items()}


def stage(image, artefact, sha256, staging, settings, timeout=None):
    """Unpack the RDB into ``staging`` (sha256 checked) and check it with the image's ``redis-check-rdb``.

    ``settings`` (from ``server_settings``) are saved next to it for the later steps. Returns
    ``{"rdb": path, "keys_read": n}``; raises ``RedisError`` when the file is damaged.
    """
    if os.path.exists(staging):
        shutil.rmtree(staging)
    os.makedirs(staging, mode=0o700)
    rdb = os.path.join(staging, STAGED_RDB)
    unpack_rdb(artefact, sha256, rdb, timeout=timeout)
    tools = ImageTarget(image, {staging: "/staging"})
    try:
        out = tools.text(["sh", "-c", 'redis-check-rdb "$0" 2>&1', "/staging/" + STAGED_RDB], timeout=timeout or 3600)
    except ExecError as exc:
        raise RedisError("redis-check-rdb rejects the backup's RDB: %s" % exc) from exc
    if "RDB looks OK" not in out:
        raise RedisError("redis-check-rdb did not confirm the backup's RDB: %s" % out[-800:])
    keys = re.search(r"(\d+) keys read", out)
    write_file_atomic(os.path.join(staging, SETTINGS_FILE), json.dumps(dict(settings, image=image)).encode("utf-8"))
    return {"rdb": rdb, "keys_read": int(keys.group(1)) if keys else None}


def load_settings(staging):
    """The settings ``stage`` saved; raises ``RedisError`` when stage did not run."""
    settings = load_state(os.path.join(staging, SETTINGS_FILE))
    if settings is None or not os.path.isfile(os.path.join(staging, STAGED_RDB)):
        raise RedisError("nothing staged in %s: run step=stage first" % staging)
    return settings


def _chown(path, owner):
    uid, gid = (int(x) for x in owner.split(":"))
    os.chown(path, uid, gid)


def swap(datadir, staging, safety, owner="999:999"):
    """Move the RDB and the AOF folder of ``datadir`` into ``<datadir>/<safety>`` and put the staged RDB in place.

    The service must be stopped. Returns the safety copy's path and what it holds.
    """
    settings = load_settings(staging)
    kept_dir = os.path.join(datadir, safety)
    if os.path.exists(kept_dir):
        raise RedisError("a safety copy %s already exists: a previous restore was not finished; inspect it and "
                         "remove it or roll back before restoring again" % kept_dir)
    names = [settings["dbfilename"], settings["appenddirname"]]
    os.mkdir(kept_dir, 0o750)
    kept = []
    for name in names:
        if os.path.lexists(os.path.join(datadir, name)):
            os.rename(os.path.join(datadir, name), os.path.join(kept_dir, name))
            kept.append(name)
    dest = os.path.join(datadir, settings["dbfilename"])
    tmp = dest + ".restore-tmp"
    shutil.copyfile(os.path.join(staging, STAGED_RDB), tmp)
    os.chmod(tmp, 0o644)
    _chown(tmp, owner)
    os.rename(tmp, dest)
    return {"safety_copy": kept_dir, "kept": kept}


def rollback(datadir, staging, safety):
    """Put the safety copy back (the service must be stopped); the restored files are removed.

    Returns the names put back, or None when there is no safety copy (the swap never began).
    """
    kept_dir = os.path.join(datadir, safety)
    if not os.path.isdir(kept_dir):
        return None  # the swap did not begin: the data folder is as it was
    settings = load_state(os.path.join(staging, SETTINGS_FILE), DEFAULTS)
    restored = []
    for name in (settings["dbfilename"], settings["appenddirname"]):
        path = os.path.join(datadir, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.unlink(path)
        if os.path.lexists(os.path.join(kept_dir, name)):
            os.rename(os.path.join(kept_dir, name), path)
            restored.append(name)
    os.rmdir(kept_dir)
    return restored


class ThrowawayServer:
    """A ``redis-server`` in a throw-away container of ``image`` on ``datadir`` (no network, AOF off, no password).

    Use as a context manager; the container is removed on leaving.
    """

    def __init__(self, image, datadir, settings, owner="999:999", docker="docker"):
        self.docker = docker
        self.name = "llmops-redis-restore-%s" % secrets.token_hex(4)
        self.target = ExecTarget(self.name, docker=docker)
        argv = [docker, "run", "-d", "--name", self.name, "--network", "none", "--user", owner,
                "-v", "%s:/data" % datadir, "--entrypoint", "redis-server", image,
                "--port", "6379", "--dir", "/data", "--appendonly", "no", "--save", "",
                "--dbfilename", settings["dbfilename"], "--appenddirname", settings["appenddirname"],
                "--appendfilename", settings["appendfilename"], "--databases", str(settings.get("databases") or 16)]
        try:
            self._docker(argv[1:])
        except RedisError:
            self.__exit__()
            raise

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        subprocess.run([self.docker, "rm", "-f", self.name], capture_output=True, timeout=120, check=False)

    def _docker(self, args, check=True):
        proc = subprocess.run([self.docker] + args, capture_output=True, timeout=300, check=False)
        if check and proc.returncode != 0:
            raise RedisError("docker %s failed: %s" % (args[0], proc.stderr.decode("utf-8", "replace").strip()))
        return proc.stdout.decode("utf-8", "replace").strip()

    def logs(self):
        proc = subprocess.run([self.docker, "logs", "--tail", "30", self.name], capture_output=True, timeout=60,
                              check=False)
        return (proc.stdout + proc.stderr).decode("utf-8", "replace").strip()

    def running(self):
        return self._docker(["inspect", "-f", "{{.State.Running}}", self.name]) == "true"

    def info(self, section):
        return info(self.target, {}, section)

    def wait(self, ready, what, timeout, poll=0.2):
        """Poll ``INFO persistence`` until ``ready(values)``; fail when the server died or the time is up."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                values = self.info("persistence")
                if ready(values):
                    return values
            except RedisError as exc:
                if not self.running():
                    raise RedisError("the throw-away redis-server stopped while %s: %s" % (what, self.logs())) from exc
            if time.monotonic() > deadline:
                raise RedisError("the throw-away redis-server did not finish %s within %s s" % (what, timeout))
            time.sleep(poll)

    def shutdown_save(self):
        """``SHUTDOWN SAVE`` and wait for the container to exit cleanly."""
        try:
            self.target.run(["redis-cli", "SHUTDOWN", "SAVE"], timeout=60, check=False)
        except ExecError:
            pass
        code = self._docker(["wait", self.name])
        if code != "0":
            raise RedisError("the throw-away redis-server did not shut down cleanly (exit %s): %s"
                             % (code, self.logs()))


def manifest_fingerprint(entry):
    """The backup's artefact fingerprint (``fingerprint_detail``) when this code can compare with it, else None
    (a set made before artefact fingerprints, or with another method)."""
    detail = (entry or {}).get("fingerprint_detail")
    if isinstance(detail, dict) and detail.get("method") == FINGERPRINT_METHOD:
        return detail
    return None


def _describe(compared):
    return "%d keys compared, %d not (they expire before %s, so may have expired since the backup)" % (
        compared["compared_keys"], compared["not_compared_keys"], compared["cutoff"])


def load(datadir, staging, owner="999:999", timeout=600, entry=None):
    """Load the swapped-in RDB in a throw-away server and, when the real server has AOF on, write its AOF.

    Waits until the RDB is loaded, takes the loaded data's fingerprint (recorded in ``staging``)
    and, when ``entry`` (the set's manifest entry) has an artefact fingerprint, compares it with it:
    a difference fails here, before anything is written. Then (AOF on) ``CONFIG SET appendonly yes``
    and waits for the rewrite: ``aof_rewrite_in_progress:0``, no rewrite scheduled,
    ``aof_last_bgrewrite_status:ok`` and the AOF manifest present. Ends with ``SHUTDOWN SAVE``.
    Returns ``{"fingerprint": ..., "checked": ..., "aof": bool, "seconds": s}``.
    """
    settings = load_settings(staging)
    aof = str(settings["appendonly"]).lower() == "yes"
    aof_dir = os.path.join(datadir, settings["appenddirname"])
    if os.path.exists(aof_dir):
        raise RedisError("%s exists: the AOF folder must have been moved aside (step=swap) before loading" % aof_dir)
    expected = manifest_fingerprint(entry)
    t0 = time.monotonic()
    checked = None
    with ThrowawayServer(settings["image"], datadir, settings, owner=owner) as server:
        server.wait(lambda v: v.get("loading") == "0", "loading the RDB", timeout)
        loaded = fingerprint_parts(server.target, {}, reference_ms=expected["reference_ms"] if expected else None,
                                   bucket_ms=expected["bucket_ms"] if expected else BUCKET_MS, timeout=timeout)
        write_file_atomic(os.path.join(staging, LOADED_FILE), json.dumps(loaded).encode("utf-8"))
        if expected:
            compared = compare_fingerprints(expected, loaded)
            if compared["differences"]:
                raise RedisError("the RDB as loaded differs from the backup's fingerprint (%s): %s" % (
                    _describe(compared), "; ".join(compared["differences"][:20])))
            checked = {key: compared[key] for key in ("compared_keys", "not_compared_keys", "cutoff")}
        if aof:
            before = int(server.info("persistence").get("aof_rewrites") or 0)
            server.target.text(["redis-cli", "CONFIG", "SET", "appendonly", "yes"], timeout=60)
            manifest = os.path.join(aof_dir, settings["appendfilename"] + ".manifest")
            values = server.wait(lambda v: v.get("aof_enabled") == "1" and v.get("aof_rewrite_in_progress") == "0"
                                 and v.get("aof_rewrite_scheduled") == "0"
                                 and int(v.get("aof_rewrites") or 0) > before and os.path.isfile(manifest),
                                 "rewriting the AOF", timeout)
            if values.get("aof_last_bgrewrite_status") != "ok":
                raise RedisError("the AOF rewrite failed (aof_last_bgrewrite_status:%s): %s"
                                 % (values.get("aof_last_bgrewrite_status"), server.logs()))
        server.shutdown_save()
    if aof and not os.path.isfile(os.path.join(aof_dir, settings["appendfilename"] + ".manifest")):
        raise RedisError("no AOF manifest in %s after the rewrite" % aof_dir)
    return {"fingerprint": summarize(loaded), "checked": checked, "aof": aof,
            "seconds": round(time.monotonic() - t0, 2)}


def verify(target, conn, entry, staging, password=None, timeout=None):
    """Compare the restored server's fingerprint with the backup's (``compare_fingerprints``), as soon as the
    server answers (``wait_until_up``).

    The reference is the manifest's artefact fingerprint or, for a set that has none, the one the
    load step recorded from the RDB. Returns ``compare_fingerprints``' result plus ``against`` (the
    reference used) and ``summary`` (one readable line).
    """
    expected, against = manifest_fingerprint(entry), "the manifest's fingerprint of the artefact"
    if expected is None:
        expected = load_state(os.path.join(staging, LOADED_FILE))
        against = "the RDB as loaded by step=load (the set's manifest has no artefact fingerprint this code reads)"
        if expected is None:
            raise RedisError("nothing to verify against: the set's manifest has no artefact fingerprint and step=load "
                             "recorded none in %s" % staging)
    wait_until_up(target, conn, password, timeout=timeout or 300)
    live = fingerprint_parts(target, conn, password, reference_ms=expected["reference_ms"],
                             bucket_ms=expected["bucket_ms"], timeout=timeout)
    compared = compare_fingerprints(expected, live)
    return dict(compared, against=against, summary=_describe(compared))
