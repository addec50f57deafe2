# -*- coding: utf-8 -*-
# Copyright: llmops-lab contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""File backups: upload trees (rsync with hard links), model folders (content-addressed store) and
configuration files (a Git history).

Tree hash (``tree_info(root)["sha256"]``), the fingerprint that restores recompute: one record
per entry below ``root`` (``root`` itself excluded), sorted by the relative path's bytes, each
``kind NUL path NUL mode NUL size NUL sha256 LF`` hashed with sha256, where ``kind`` is ``f``
(regular file: ``sha256`` of its content), ``l`` (symlink: ``sha256`` of its target, ``size`` the
target's length, mode ``0``) or ``d`` (folder: size ``0``, sha256 ``-``); ``mode`` is the octal
permission bits, or ``-`` with ``modes=False`` (the model store hashes content only, as it keeps
its copies 0600/0700). Other kinds (sockets, fifos, devices) are skipped and reported.

Every fingerprint is taken from the backup's own copy, after the copy, never from a second read of
the live source (which may have changed meanwhile): what a restore verifies is what was kept.

``backup_tree``  rsync ``-a --delete --link-dest=<previous set's tree>`` into ``dest/uploads``;
                 unchanged files become hard links into the previous set. The fingerprint is the tree
                 hash of that copy. Optional full archive ``uploads.tar.zst`` of the copy through
                 ``run_pipeline``; with encryption on (``llmops_pipeline.configure_age``) the archive is always
                 written, sealed, and the set keeps only it (the copy goes before the set is finalized).
``backup_models`` one content-addressed copy per model version under
                 ``<backup_root>/models/<model>/<version>-<hash12>/`` (outside the sets), shared by
                 every set that references it, keyed and fingerprinted by the tree hash of the copy;
                 the set itself gets ``models_index.json``.
``backup_configs`` the given paths mirrored (by absolute path) into a Git worktree at
                 ``<backup_root>/configs.git-worktree`` and committed when something changed; the
                 fingerprint is the tree hash (with modes) of each path's mirror; the set gets
                 ``configs_commit.json`` with the commit and what Git does not keep (modes, owners, empty
                 folders), which the restore puts back. Secrets never enter the history (it is kept forever,
                 unencrypted): names matching ``exclude`` (the stack's ``secrets`` folders...) are not copied, and
                 copied files holding a known secret value or matching ``SECRET_PATTERNS`` are removed before the
                 commit; both are reported by name (see ``backup_configs``).

File names are content: they stay as they are on disk, whatever they hold (newlines, quotes,
leading dashes...). They are never parsed out of a tool's text output: trees are read with
Python's own walkers, Git only through ``-z`` forms with ``core.quotePath=false``, and tools get
paths as separate arguments, never through a shell.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import stat
import subprocess
import time
import urllib.parse

from ansible.module_utils.llmops_backupset import (
    BackupSetError,
    fsync_dir,
    hashes_by_inode,
    isoformat,
    list_sets,
    load_manifest,
    parse_time,
    run_times,
    utc,
    write_file_atomic,
    write_json,
)
from ansible.module_utils.llmops_common import LlmopsError, remove_paths
from ansible.module_utils.llmops_layout import LAYOUT, layout_path
from ansible.module_utils.llmops_pipeline import age_recipients, hash_file, run_pipeline

TREE_DIR = "uploads"
ARCHIVE = "uploads.tar.zst"
MODELS_DIR = LAYOUT["model_store"]  # the store entries' paths in the manifests are relative to the root
MODELS_INDEX = "models_index.json"
CONFIGS_REPO = LAYOUT["config_repo"]
CONFIGS_REF = "configs_commit.json"
GIT_AUTHOR = ("llmops-backup", "backup@localhost")
ITEMS_LIMIT = 200
_STORE_ENTRY_RE = re.compile(r"(?P<version>.+)-(?P<hash>[0-9a-f]{12})", re.DOTALL)
# --modify-window=-1: compare modification times to the nanosecond (rsync >= 3.1.3), so that a file
# rewritten with the same size within the same second is not taken as unchanged. --no-D: sockets,
# fifos and devices are not copied (a set holds regular files, folders and symlinks only).
_RSYNC_BASE = ["-a", "--no-D", "--delete", "--numeric-ids", "--modify-window=-1"]
RSYNC_VANISHED = 24  # "some files vanished before they could be transferred": the copy is complete otherwise
GIT_DIR = ".git"
# $GIT_DIR/info/attributes outranks any .gitattributes a config folder brings: content is stored and
# checked out byte for byte (no end-of-line conversion, filter, ident or re-encoding).
GIT_ATTRIBUTES = "* -text -eol -crlf -ident -filter -working-tree-encoding\n"
# The config history never holds a secret (see backup_configs). Entries whose own name matches one of these globs are
# never copied into it: the stack's secrets folders (<stack_root>/<project>/secrets), environment files, private keys
# and vault files.
CONFIG_EXCLUDE = ("secrets", ".env", "*.env", "*.key", ".vault_pass*", "vault.yml")
# ... and files whose content matches one of these (Python regular expressions on the bytes) are left out too: Redis's
# requirepass/masterauth lines, private keys (PEM), assignments to a key that ends in password, passwd, secret, api_key
# or token (KEY=value, key: value, "key": "value"; not *_FILE, which names a file; not when the value is empty or a
# reference: {{ jinja }}, ${VAR}, $(cmd), %(name)s, !vault) and URLs with a password.
SECRET_PATTERNS = (
    r"(?im)^[ \t]*(?:requirepass|masterauth)[ \t]+\S",
    r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----",
    r"(?im)^[ \t]*(?:export[ \t]+)?[\"']?[a-z0-9_.-]*(?:password|passwd|secret|api[_-]?key|token)[\"']?"
    r"[ \t]*[:=][ \t]*(?![\"']?(?:\{\{|\$\{|\$\(|%\(|!vault|$)|\"\"|'')[^\s#]",
    r"(?i)\b[a-z][a-z0-9+.-]*://[^/\s:@]+:[^/\s@]+@",
)
SECRET_MIN_LENGTH = 8  # shorter known values are not looked for (they would match by chance)
_HARVEST_LIMIT = 65536  # excluded files up to this size lend their values to the content check
_SCAN_CHUNK = 1 << 20


class FilesBackupError(LlmopsError):
    """A file backup step failed; the message says which and why."""


# --------------------------------------------------------------------------------------------
# helpers


def run_tool(argv, env=None, cwd=None, timeout=None, ok_codes=(0,), result=None):
    """Run ``argv`` (no shell); return stdout as text; raise ``FilesBackupError`` with stderr's tail.

    An exit code in ``ok_codes`` is not an error; with a dict ``result`` the code and stderr are put there.
    """
    try:
        proc = subprocess.run(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              stdin=subprocess.DEVNULL, timeout=timeout, check=False)
    except OSError as exc:
        raise FilesBackupError("cannot run %s: %s" % (argv[0], exc)) from exc
    except subprocess.TimeoutExpired as exc:
        raise FilesBackupError("%s timed out after %ss" % (argv[0], timeout)) from exc
    err = proc.stderr.decode("utf-8", "replace").strip()[-2000:]
    if proc.returncode not in ok_codes:
        raise FilesBackupError("%s exited with code %d: %s" % (" ".join(argv[:2]), proc.returncode, err))
    if result is not None:
        result.update(rc=proc.returncode, stderr=err)
    return proc.stdout.decode("utf-8", "surrogateescape")


def walk_tree(root, exclude=()):
    """Yield ``(rel, full, lstat)`` for every entry below ``root`` (not ``root``), Python's own walk: names are
    never parsed from a tool's output. Folders named in ``exclude`` (names, or a function of the name that says
    whether to leave it out) are neither yielded nor entered, files so named are not yielded. Symlinks are not
    followed."""
    skip = exclude if callable(exclude) else (lambda name: name in exclude)
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not skip(d)]
        for name in dirnames + filenames:
            if skip(name):
                continue
            full = os.path.join(dirpath, name)
            try:
                st = os.lstat(full)
            except FileNotFoundError:  # removed since the folder was listed
                continue
            yield os.path.relpath(full, root), full, st


def _kind(st):
    if stat.S_ISLNK(st.st_mode):
        return "l"
    if stat.S_ISDIR(st.st_mode):
        return "d"
    if stat.S_ISREG(st.st_mode):
        return "f"
    return None


def scan_tree(root, exclude=()):
    """``{rel: {kind, mode, size, mtime_ns, target}}`` of ``root`` without reading any content (rsync's quick
    check: what a check mode compares), plus ``{rel: None}`` for sockets, fifos and devices."""
    out = {}
    if not os.path.isdir(root) or os.path.islink(root):
        return out
    for rel, full, st in walk_tree(root, exclude):
        kind = _kind(st)
        if kind is None:
            out[rel] = None
            continue
        out[rel] = {"kind": kind, "mode": 0 if kind == "l" else stat.S_IMODE(st.st_mode),
                    "size": st.st_size if kind == "f" else 0, "mtime_ns": st.st_mtime_ns if kind == "f" else 0,
                    "target": os.readlink(full) if kind == "l" else None}
    return out


def compare_scans(new, old):
    """What copying ``new`` over ``old`` changes: ``{changes: [{path, kind, change}], deleted: [paths]}``.

    ``change`` is ``new`` or ``changed`` (kind, mode, size, modification time or link target differ).
    """
    changes = []
    for rel in sorted(new, key=os.fsencode):
        item = new[rel]
        if item is None:
            continue
        before = old.get(rel)
        if before is None:
            changes.append({"path": rel, "kind": item["kind"], "change": "new"})
        elif before != item and not (item["kind"] == "d" and before["kind"] == "d" and before["mode"] == item["mode"]):
            changes.append({"path": rel, "kind": item["kind"], "change": "changed"})
    deleted = sorted((rel for rel in old if rel not in new and old[rel] is not None), key=os.fsencode)
    return {"changes": changes, "deleted": deleted}


def tree_info(root, modes=True, cache=None, exclude=(), inodes=None):
    """Walk ``root``; return ``{sha256, entries, files, dirs, symlinks, bytes, skipped, files_hashed}``.

    ``entries``: ``[{path, kind, mode, size, sha256, ino, nlink, mtime_ns}]`` sorted like the hash.
    ``cache`` (``{path: [size, mtime_ns, sha256]}``) lets a file whose size and mtime are unchanged
    reuse a known sha256 instead of being read again; ``inodes`` (``{(st_dev, st_ino): (size, sha256)}``)
    does the same for a file that *is* a known file (a hard link to it). ``files_hashed`` counts the files
    read. ``exclude``: names left out (see ``walk_tree``).
    """
    root = os.path.abspath(os.fspath(root))
    if not os.path.isdir(root) or os.path.islink(root):
        raise FilesBackupError("%s is not a folder" % root)
    records = []
    skipped = []
    hashed = 0
    for rel, full, st in walk_tree(root, exclude):
        mode = stat.S_IMODE(st.st_mode)
        entry = {"path": rel, "mode": mode, "ino": st.st_ino, "nlink": st.st_nlink, "mtime_ns": st.st_mtime_ns}
        if stat.S_ISLNK(st.st_mode):
            target = os.fsencode(os.readlink(full))
            entry.update(kind="l", mode=0, size=len(target), sha256=hashlib.sha256(target).hexdigest())
        elif stat.S_ISDIR(st.st_mode):
            entry.update(kind="d", size=0, sha256="-")
        elif stat.S_ISREG(st.st_mode):
            known = (cache or {}).get(rel)
            linked = (inodes or {}).get((st.st_dev, st.st_ino))
            if known and int(known[0]) == st.st_size and int(known[1]) == st.st_mtime_ns:
                digest = known[2]
            elif linked and linked[0] == st.st_size:
                digest = linked[1]
            else:
                digest, _size = hash_file(full)
                hashed += 1
            entry.update(kind="f", size=st.st_size, sha256=digest)
        else:
            skipped.append(rel)
            continue
        records.append((os.fsencode(rel), entry))
    records.sort(key=lambda r: r[0])
    digest = hashlib.sha256()
    for raw, entry in records:
        mode = ("%o" % entry["mode"]) if modes else "-"
        digest.update(b"\0".join([entry["kind"].encode(), raw, mode.encode(), str(entry["size"]).encode(),
                                  entry["sha256"].encode()]) + b"\n")
    entries = [e for _raw, e in records]
    files = [e for e in entries if e["kind"] == "f"]
    return {"sha256": digest.hexdigest(), "entries": entries, "files": len(files),
            "dirs": sum(1 for e in entries if e["kind"] == "d"),
            "symlinks": sum(1 for e in entries if e["kind"] == "l"),
            "bytes": sum(e["size"] for e in files), "skipped": skipped, "files_hashed": hashed}


def tree_hash(root, modes=True):
    """The tree hash of ``root`` (see the module docstring)."""
    return tree_info(root, modes=modes)["sha256"]


def path_info(path, exclude=()):
    """The fingerprint of one path that may be a folder, a file or a symlink (configs are all three):
    ``{kind, mode, sha256, files}`` where ``sha256`` is the tree hash (with modes) of a folder, the
    content's sha256 of a file, the target's sha256 of a symlink; ``mode`` the path's own permission bits.
    """
    st = os.lstat(path)
    kind = _kind(st)
    if kind == "d":
        info = tree_info(path, exclude=exclude)
        return {"kind": "d", "mode": stat.S_IMODE(st.st_mode), "sha256": info["sha256"], "files": info["files"]}
    if kind == "l":
        return {"kind": "l", "mode": 0, "sha256": hashlib.sha256(os.fsencode(os.readlink(path))).hexdigest(),
                "files": 0}
    if kind == "f":
        return {"kind": "f", "mode": stat.S_IMODE(st.st_mode), "sha256": hash_file(path)[0], "files": 1}
    raise FilesBackupError("%s is not a file, folder or symlink" % path)


def _rel_inside(root, path):
    """``path`` relative to the set it lies in, given the backup ``root`` (strips ``.<id>.partial``)."""
    rel = os.path.relpath(os.path.abspath(path), os.path.abspath(root))
    parts = rel.split(os.sep)
    if parts[0] in ("..", ".") or len(parts) < 2:
        return None
    return os.sep.join(parts[1:])


def previous_tree(backup_root, component, exclude=None):
    """``(set_id, path, set_path)`` of the tree of ``component`` in the newest complete successful set, or
    ``(None, None, None)``."""
    if not backup_root:
        return None, None, None
    for item in reversed(list_sets(backup_root, complete_only=True)):
        try:
            comp = (load_manifest(item["path"]).get("components") or {}).get(component) or {}
        except BackupSetError:
            continue
        if comp.get("status") != "success" or not comp.get("tree_dir"):
            continue
        path = os.path.normpath(os.path.join(item["path"], str(comp["tree_dir"])))
        if not path.startswith(item["path"] + os.sep) or os.path.islink(path) or not os.path.isdir(path) \
                or not os.path.realpath(path).startswith(os.path.realpath(item["path"]) + os.sep):
            continue
        if exclude and os.path.abspath(exclude) == path:
            continue
        return item["id"], path, item["path"]
    return None, None, None


def _limit(items, limit=ITEMS_LIMIT):
    return items[:limit]


def fsync_tree(root, skip_linked=False):
    """fsync every regular file and folder of the tree ``root`` (``root`` included), children before their folder:
    rsync does not fsync, and a set must not be finalized while what it lists may still be only in the page cache.
    Symlinks and other kinds are not opened. With ``skip_linked`` a file with more than one link (one rsync
    ``--link-dest`` hard-linked to a finalized set, whose data was synced then) is not opened: its new name is
    synced with its folder. Returns the number of files and folders synced."""
    count = 0
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames + dirnames:
            full = os.path.join(dirpath, name)
            try:
                st = os.lstat(full)
            except FileNotFoundError:
                continue
            if stat.S_ISREG(st.st_mode) and not (skip_linked and st.st_nlink > 1):
                fd = os.open(full, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
                count += 1
        fsync_dir(dirpath)  # its files' names and the folders below it
        count += 1
    return count


# --------------------------------------------------------------------------------------------
# tree (uploads)


def backup_tree(src, dest, backup_root=None, component="uploads", full_archive=False, zstd_level=3,
                zstd_threads=0, check_mode=False, rsync_path="rsync"):
    """rsync ``src`` into ``dest/uploads`` hard-linking unchanged files to the previous set; return the entry.

    The fingerprint is the tree hash of the copy (what the set holds), taken after the copy. In check
    mode nothing is written: the result tells what would be copied (``would_copy``: new or changed
    against the previous set's tree, by rsync's quick check: kind, mode, size, modification time, link
    target) and what is gone since the previous set (``would_delete``).
    """
    started = utc()
    t0 = time.monotonic()
    src = os.path.abspath(os.fspath(src))
    dest = os.path.abspath(os.fspath(dest))
    if not os.path.isdir(src):
        raise FilesBackupError("src %s is not a folder" % src)
    tree = os.path.join(dest, TREE_DIR)
    linked_from, prev_path, prev_set = previous_tree(backup_root, component, exclude=tree)
    previous = scan_tree(prev_path) if prev_path else {}
    if check_mode:
        source = scan_tree(src)
        items = compare_scans(source, previous)
        files = [c for c in items["changes"] if c["kind"] != "d"]
        return {"changed": True, "would_copy": _limit(files), "would_copy_count": len(files),
                "would_delete": _limit(items["deleted"]), "would_delete_count": len(items["deleted"]),
                "skipped": _limit(sorted(rel for rel, item in source.items() if item is None)),
                "linked_from": linked_from, "link_dest": prev_path, "full_archive": bool(full_archive), "tree": tree}
    argv = [rsync_path] + _RSYNC_BASE
    if prev_path:
        argv.append("--link-dest=%s" % prev_path)
    argv += [src + "/", tree + "/"]
    os.makedirs(dest, mode=0o700, exist_ok=True)
    outcome = {}
    run_tool(argv, ok_codes=(0, RSYNC_VANISHED), result=outcome)
    warnings = []
    if outcome["rc"] == RSYNC_VANISHED:
        warnings.append("files vanished from %s while it was copied (rsync code 24); the copy and its tree hash "
                        "hold what was there when rsync reached it" % src)
    fsync_tree(tree, skip_linked=bool(prev_path))  # rsync -a without -H: only --link-dest makes a second link
    fsync_dir(dest)
    # a file rsync hard-linked to the previous set's is that file: its sha256 is the one that set recorded
    known = hashes_by_inode(prev_set, os.path.relpath(prev_path, prev_set)) if prev_path else None
    info = tree_info(tree, inodes=known)
    regular = [e for e in info["entries"] if e["kind"] == "f"]
    new = [e for e in regular if e["nlink"] < 2]
    copied = {e["path"] for e in info["entries"]}
    files = [{"path": os.path.join(tree, e["path"]), "sha256": e["sha256"], "size": e["size"]} for e in regular]
    archive = None
    encrypted = bool(age_recipients())
    if full_archive or encrypted:
        result = run_pipeline(["tar", "--sort=name", "--numeric-owner", "-C", tree, "-cf", "-", "."],
                              os.path.join(dest, ARCHIVE), zstd_level=zstd_level, zstd_threads=zstd_threads,
                              source_name="tar")
        archive = {"file": ARCHIVE, "sha256": result.sha256, "size": result.bytes_out, "bytes_raw": result.bytes_in,
                   "encrypted": result.encrypted}
        files.append({"path": result.path, "sha256": result.sha256, "size": result.bytes_out})
    if encrypted:
        # Encryption at rest: the set keeps only the encrypted archive; the clear copy (the fingerprint's source)
        # lived only inside the run's .partial folder and goes now, before the set is finalized.
        shutil.rmtree(tree)
        fsync_dir(dest)
        files = [f for f in files if f["path"] == result.path]
    return {
        "status": "success",
        "type": "files",
        "mode": "tree",
        "backup_type": "full",
        "tool": "rsync -a --delete --link-dest" + (" + tar | zstd | age, tree removed" if encrypted else
                                                   " + tar | zstd" if full_archive else ""),
        "tool_version": _rsync_version(rsync_path),
        **run_times(started, t0),
        "source": src,
        "tree_dir": _rel_inside(backup_root, tree) if backup_root and not encrypted else None,
        "encrypted": encrypted,
        "bytes": sum(f["size"] for f in files),
        "files": files,
        "file_count": info["files"],
        "tree_bytes": info["bytes"],
        "bytes_new": sum(e["size"] for e in new),
        "files_new": len(new),
        "files_linked": len(regular) - len(new),
        "files_hashed": info["files_hashed"],
        "linked_from": linked_from,
        "transferred": len(new),
        "deleted": sum(1 for rel, item in previous.items() if item is not None and rel not in copied),
        "symlinks": info["symlinks"],
        "skipped": info["skipped"],
        "warnings": warnings,
        "full_archive": archive,
        "fingerprint": {"tree_sha256": info["sha256"], "files": info["files"], "bytes": info["bytes"]},
        "fingerprint_of": "copy",
    }


def _rsync_version(rsync_path):
    try:
        first = run_tool([rsync_path, "--version"]).splitlines()[0]
    except (FilesBackupError, IndexError):
        return None
    match = re.search(r"version\s+(\S+)", first)
    return match.group(1) if match else first.strip()


# --------------------------------------------------------------------------------------------
# models


def _store_entries(model_store):
    """``{key: {version, hash12, path, stored}}`` of the store folder of one model."""
    out = {}
    if not os.path.isdir(model_store):
        return out
    for entry in os.listdir(model_store):
        full = os.path.join(model_store, entry)
        match = _STORE_ENTRY_RE.fullmatch(entry)
        if entry.startswith(".") or not match or os.path.islink(full) or not os.path.isdir(full):
            continue
        meta = {}
        try:
            with open(full + ".json", encoding="utf-8") as handle:
                meta = json.load(handle)
        except (OSError, ValueError):
            pass
        try:
            stored = float(meta["stored_epoch"]) if "stored_epoch" in meta else parse_time(meta["stored"]).timestamp()
        except (KeyError, TypeError, ValueError):
            stored = os.stat(full).st_mtime
        out[entry] = {"version": match.group("version"), "hash12": match.group("hash"), "path": full,
                      "stored": stored, "meta": meta}
    return out


def _hash_cache(entries, version):
    """Source file stats recorded when versions named ``version`` were stored (newest wins)."""
    cache = {}
    for item in sorted(entries.values(), key=lambda e: e["stored"]):
        if item["version"] == version:
            cache.update(item["meta"].get("source_files") or {})
    return cache


def referenced_store_entries(backup_root):
    """``{model: set(keys)}`` referenced by any finalized set's manifest under ``backup_root``."""
    refs = {}
    for item in list_sets(backup_root):
        try:
            components = load_manifest(item["path"]).get("components") or {}
        except BackupSetError:
            continue
        for comp in components.values():
            models = (comp or {}).get("models") if isinstance(comp, dict) else None
            if not isinstance(models, dict):
                continue
            for model, desc in models.items():
                for ver in ((desc or {}).get("versions") or {}).values():
                    if isinstance(ver, dict) and ver.get("store"):
                        refs.setdefault(model, set()).add(os.path.basename(ver["store"]))
    return refs


def _store_version(src, model_store, version, entries):
    """Copy ``src`` into the model's store (files 0600, folders 0700) via a temp folder + rename.

    The copy is keyed and fingerprinted by its own tree hash (content only), read after the copy:
    ``(key, info of the copy, reused)``, ``reused`` when the store already held that content.
    """
    os.makedirs(model_store, mode=0o700, exist_ok=True)
    tmp = os.path.join(model_store, ".tmp-%s" % secrets.token_hex(8))
    try:
        run_tool(["rsync", "-a", "--no-D", "--numeric-ids", "--chmod=D0700,F0600", src + "/", tmp + "/"])
        os.chmod(tmp, 0o700)
        copied = tree_info(tmp, modes=False)
        key = "%s-%s" % (version, copied["sha256"][:12])
        target = os.path.join(model_store, key)
        if key in entries or os.path.lexists(target):
            return key, copied, True
        fsync_tree(tmp)  # on disk before it is renamed into the store and a set references it
        os.rename(tmp, target)
        tmp = None
    finally:
        if tmp is not None and os.path.lexists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    fsync_dir(model_store)
    # rsync -a kept the sizes and modification times: they are the source's as copied, the hash cache's key
    meta = {"version": version, "source": src, "tree_sha256": copied["sha256"], "files": copied["files"],
            "bytes": copied["bytes"], "stored": isoformat(utc()), "stored_epoch": time.time(),
            "source_files": {e["path"]: [e["size"], e["mtime_ns"], e["sha256"]] for e in copied["entries"]
                             if e["kind"] == "f"}}
    write_json(target + ".json", meta)
    return key, copied, False


def backup_models(src, dest, backup_root, keep_versions=5, check_mode=False, trust_mtime=True):
    """Store new model versions of ``src/<model>/<version>`` in the content-addressed store; return the entry.

    Versions whose tree hash (content only) is already stored are reused; a new one is copied and
    recorded under the tree hash of its copy (the fingerprint describes what the store holds). Symlinks
    next to the versions (``current``) are recorded, not followed. Afterwards each model keeps its newest
    ``keep_versions`` stored versions plus every version a finalized set or this run references.
    """
    started = utc()
    t0 = time.monotonic()
    src = os.path.abspath(os.fspath(src))
    dest = os.path.abspath(os.fspath(dest))
    if not backup_root:
        raise FilesBackupError("mode=models needs backup_root (the store lives in <backup_root>/models)")
    if keep_versions < 1:
        raise FilesBackupError("keep_versions must be at least 1, got %d" % keep_versions)
    store = layout_path(backup_root, "model_store")
    if not os.path.isdir(src):
        raise FilesBackupError("src %s is not a folder" % src)
    models = {}
    stored_new, reused, warnings = [], [], []
    for model in sorted(os.listdir(src)):
        model_path = os.path.join(src, model)
        if model.startswith(".") or os.path.islink(model_path) or not os.path.isdir(model_path):
            continue
        model_store = os.path.join(store, model)
        entries = _store_entries(model_store)
        desc = {"links": {}, "versions": {}}
        for version in sorted(os.listdir(model_path)):
            vpath = os.path.join(model_path, version)
            if os.path.islink(vpath):
                desc["links"][version] = os.readlink(vpath)
                continue
            if version.startswith(".") or not os.path.isdir(vpath):
                continue
            info = tree_info(vpath, modes=False, cache=_hash_cache(entries, version) if trust_mtime else None)
            key = "%s-%s" % (version, info["sha256"][:12])
            is_new = key not in entries
            if is_new and not check_mode:
                key, copied, stored_before = _store_version(vpath, model_store, version, entries)
                if copied["sha256"] != info["sha256"]:
                    warnings.append("%s/%s changed while it was copied: the store keeps the copy, under the tree hash "
                                    "of the copy (%s)" % (model, version, copied["sha256"]))
                info, is_new = copied, not stored_before
            (stored_new if is_new else reused).append("%s/%s" % (model, key))
            desc["versions"][version] = {"sha256": info["sha256"], "store": "%s/%s/%s" % (MODELS_DIR, model, key),
                                         "files": info["files"], "bytes": info["bytes"], "new": is_new}
        models[model] = desc
    pruned = prune_models(backup_root, keep_versions, models, dry_run=check_mode)
    base = {"models": models, "stored_new": stored_new, "reused": reused, "pruned": pruned,
            "store": store, "keep_versions": keep_versions, "warnings": warnings}
    if check_mode:
        base["changed"] = bool(stored_new or pruned)
        return base
    os.makedirs(dest, mode=0o700, exist_ok=True)
    index = os.path.join(dest, MODELS_INDEX)
    write_json(index, {"source": src, "store": store, "models": models})
    digest, size = hash_file(index)
    fingerprint = {m: {v: d["sha256"] for v, d in desc["versions"].items()} for m, desc in models.items()}
    base.update({
        "status": "success",
        "type": "files",
        "mode": "models",
        "backup_type": "full",
        "tool": "rsync -a (content-addressed store)",
        "tool_version": _rsync_version("rsync"),
        **run_times(started, t0),
        "source": src,
        "bytes": size,
        "bytes_new": sum(d["bytes"] for desc in models.values() for d in desc["versions"].values() if d["new"]),
        "files": [{"path": index, "sha256": digest, "size": size}],
        "fingerprint": fingerprint,
        "fingerprint_of": "copy",
    })
    return base


def prune_models(backup_root, keep_versions, current=None, dry_run=False):
    """Delete stored versions beyond the newest ``keep_versions`` per model that nothing references.

    ``current`` is this run's ``models`` description (its versions are kept too). Returns the
    removed (or, with ``dry_run``, removable) entries as ``<model>/<key>``.
    """
    store = layout_path(backup_root, "model_store")
    if not os.path.isdir(store):
        return []
    refs = referenced_store_entries(backup_root)
    for model, desc in (current or {}).items():
        for ver in desc["versions"].values():
            refs.setdefault(model, set()).add(os.path.basename(ver["store"]))
    removed = []
    for model in sorted(os.listdir(store)):
        model_store = os.path.join(store, model)
        if model.startswith(".") or not os.path.isdir(model_store):
            continue
        entries = _store_entries(model_store)
        newest = sorted(entries, key=lambda k: (entries[k]["stored"], k), reverse=True)
        keep = set(newest[:keep_versions]) | refs.get(model, set())
        for key in sorted(set(entries) - keep):
            if not dry_run:
                shutil.rmtree(entries[key]["path"])
                if os.path.exists(entries[key]["path"] + ".json"):
                    os.unlink(entries[key]["path"] + ".json")
            removed.append("%s/%s" % (model, key))
        if not dry_run and removed:
            fsync_dir(model_store)
    return removed


# --------------------------------------------------------------------------------------------
# configs


class GitRepo:
    """A Git worktree driven with a fixed identity and no global or system configuration.

    No ``GIT_*`` variable of the caller's environment is passed on; hooks, fsmonitor, attribute and
    exclude files outside the repository are off; paths are never quoted (``core.quotePath=false``)
    and every listing is read in its ``-z`` form.

    The repository lives on the backup volume, which is untrusted (a NAS, a copied-in tree): Git must read
    its ``.git/config``, which could name a program to run (a ``filter.<x>.clean``/``smudge``/``process``
    driver, ``core.fsmonitor``, ``core.hooksPath``, ``diff.<x>.textconv``, ``core.pager``, ``include.path``,
    ``core.worktree``...). So before any Git command the repository is checked (``check``): ``.git`` must be
    a folder (not a link or a ``gitdir:`` file) without ``commondir``, the worktree not a symbolic link,
    ``.git/config`` may hold only the keys of ``GIT_CONFIG_ALLOWED`` (read with ``git config --file
    --no-includes``, outside any repository); anything else refuses, naming the key. (Attributes alone run
    nothing: every program an attribute could name comes from a configuration key.) Every command also runs
    with ``core.hooksPath=/dev/null``, ``core.fsmonitor=false``, ``core.pager=cat``, ``core.editor=false``,
    ``core.sshCommand=false``, ``credential.helper=`` and ``protocol.allow=never``, as a second line.
    """

    # What ``git init`` writes, and harmless settings; a key not listed here (any filter, hook, program,
    # include, worktree or extension) makes ``check`` refuse the repository.
    GIT_CONFIG_ALLOWED = {
        "core.repositoryformatversion": ("0", "1"),
        "core.filemode": None, "core.bare": ("false",), "core.logallrefupdates": None,
        "core.ignorecase": None, "core.precomposeunicode": None, "core.symlinks": None,
        "extensions.objectformat": ("sha1",),
    }

    def __init__(self, path):
        self.path = os.path.abspath(path)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
        self.env.update({
            "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1", "GIT_TERMINAL_PROMPT": "0",
            "GIT_AUTHOR_NAME": GIT_AUTHOR[0], "GIT_AUTHOR_EMAIL": GIT_AUTHOR[1],
            "GIT_COMMITTER_NAME": GIT_AUTHOR[0], "GIT_COMMITTER_EMAIL": GIT_AUTHOR[1], "LC_ALL": "C",
            "GIT_NO_REPLACE_OBJECTS": "1", "GIT_PROTOCOL_FROM_USER": "0",
        })
        self._checked = None

    def _refuse(self, why):
        raise FilesBackupError(
            "the config history %s %s; Git is not run there (a program planted in a repository's configuration "
            "would run as root). Inspect it: if it was tampered with, move it aside and restore the configs from a "
            "trusted copy of the backup volume; if you added the setting yourself, remove it" % (self.path, why))

    def _state(self):
        """What ``check`` depends on (so that it runs again only when one of them changed)."""
        state = []
        for rel in ("", GIT_DIR, os.path.join(GIT_DIR, "config"), os.path.join(GIT_DIR, "commondir")):
            try:
                st = os.lstat(os.path.join(self.path, rel))
                state.append((st.st_mode, st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns))
            except OSError:  # absent, or a parent is not a folder
                state.append(None)
        return tuple(state)

    def check(self):
        """Refuse (``FilesBackupError``) a repository whose configuration could run a program or point Git
        elsewhere; a path without ``.git`` yet passes (``init`` creates it)."""
        state = self._state()
        if state == self._checked:
            return
        if os.path.islink(self.path):
            self._refuse("is a symbolic link (to %s)" % os.path.realpath(self.path))
        git_dir = os.path.join(self.path, GIT_DIR)
        if not os.path.lexists(git_dir):
            self._checked = state
            return
        if os.path.islink(git_dir) or not os.path.isdir(git_dir):
            self._refuse("has a %s that is not a plain folder (a link or a 'gitdir:' file leads Git elsewhere)"
                         % GIT_DIR)
        if os.path.lexists(os.path.join(git_dir, "commondir")):
            self._refuse("has %s/commondir, which leads Git to another repository" % GIT_DIR)
        config = os.path.join(git_dir, "config")
        if os.path.lexists(config):
            if os.path.islink(config) or not os.path.isfile(config):
                self._refuse("has a %s/config that is not a plain file" % GIT_DIR)
            listing = run_tool(["git", "config", "--file", config, "--no-includes", "--null", "--list"],
                               env=self.env, cwd="/")
            for item in listing.split("\0"):
                if not item:
                    continue
                key, _sep, value = item.partition("\n")
                allowed = self.GIT_CONFIG_ALLOWED.get(key.lower(), False)
                if allowed is False:
                    self._refuse("holds the setting %r in %s/config, which is not one git init writes (it could "
                                 "run a program or redirect Git)" % (key[:200], GIT_DIR))
                if allowed is not None and value.strip().lower() not in allowed:
                    self._refuse("holds %s = %r in %s/config (only %s is accepted)"
                                 % (key, value[:200], GIT_DIR, " or ".join(allowed)))
        self._checked = state

    def git(self, *args):
        """Run ``git <args>`` in the worktree (checked first, see ``check``); return stdout."""
        self.check()
        argv = ["git", "-c", "safe.directory=%s" % self.path, "-c", "commit.gpgsign=false",
                "-c", "core.hooksPath=%s" % os.devnull, "-c", "core.quotePath=false", "-c", "core.fsmonitor=false",
                "-c", "core.autocrlf=false", "-c", "core.symlinks=true", "-c", "core.attributesFile=%s" % os.devnull,
                "-c", "core.excludesFile=%s" % os.devnull, "-c", "core.fsync=committed",
                "-c", "core.pager=cat", "-c", "core.editor=false", "-c", "core.sshCommand=false",
                "-c", "credential.helper=", "-c", "protocol.allow=never", "-c", "gc.auto=0", "-C", self.path]
        return run_tool(argv + list(args), env=self.env)

    def exists(self):
        """Whether the repository exists; one that does is checked (``check`` refuses a tampered one)."""
        if not os.path.lexists(os.path.join(self.path, GIT_DIR)):
            return False
        self.check()
        return True

    def init(self):
        os.makedirs(self.path, mode=0o700, exist_ok=True)
        os.chmod(self.path, 0o700)
        if not self.exists():
            self.git("init", "-q", "-b", "main")
        info = os.path.join(self.path, GIT_DIR, "info")
        os.makedirs(info, exist_ok=True)
        attributes = os.path.join(info, "attributes")
        try:
            with open(attributes, encoding="utf-8") as handle:
                current = handle.read()
        except FileNotFoundError:
            current = None
        if current != GIT_ATTRIBUTES:
            write_file_atomic(attributes, GIT_ATTRIBUTES.encode("utf-8"))

    def head(self):
        try:
            return self.git("rev-parse", "--verify", "-q", "HEAD").strip() or None
        except FilesBackupError:
            return None

    def tracked(self):
        return sorted(p for p in self.git("ls-files", "-z").split("\0") if p)

    def blobs(self, shas):
        """``{sha: content}`` of the blobs ``shas`` (one ``git cat-file --batch``, same hardening as ``git``)."""
        shas = sorted(set(shas))
        if not shas:
            return {}
        self.check()
        argv = ["git", "-c", "safe.directory=%s" % self.path, "-c", "core.hooksPath=%s" % os.devnull,
                "-c", "core.fsmonitor=false", "-c", "gc.auto=0", "-C", self.path, "cat-file", "--batch"]
        proc = subprocess.run(argv, input=("\n".join(shas) + "\n").encode("ascii"), env=self.env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
        if proc.returncode:
            raise FilesBackupError("git cat-file exited with code %d: %s"
                                   % (proc.returncode, proc.stderr.decode("utf-8", "replace")[-2000:]))
        out, pos, found = proc.stdout, 0, {}
        while pos < len(out):
            end = out.index(b"\n", pos)
            header = out[pos:end].split()
            pos = end + 1
            if len(header) < 3:  # "<sha> missing"
                continue
            size = int(header[2])
            found[header[0].decode("ascii")] = out[pos:pos + size]
            pos += size + 1
        return found


def _config_targets(paths, repo):
    """``[(absolute source, path inside the worktree, is_dir)]``; refuses missing, root, repeated and nested
    paths, and paths that contain the history repository."""
    targets = []
    for path in paths:
        full = os.path.abspath(os.fspath(path))
        if full == os.sep:
            raise FilesBackupError("paths must not contain /")
        if not os.path.lexists(full):
            raise FilesBackupError("config path %s does not exist" % full)
        if repo == full or repo.startswith(full.rstrip(os.sep) + os.sep):
            raise FilesBackupError("config path %s contains the history repository %s" % (full, repo))
        inside = full.lstrip(os.sep)
        if GIT_DIR in inside.split(os.sep):
            raise FilesBackupError("config path %s: a %s folder cannot be kept in a Git history" % (full, GIT_DIR))
        for other, _inside, _d in targets:
            if other == full or _under(inside, [_inside]) or _under(_inside, [inside]):
                raise FilesBackupError("config paths %s and %s overlap" % (other, full))
        is_dir = os.path.isdir(full) and not os.path.islink(full)
        targets.append((full, inside, is_dir))
    return targets


def _under(rel, prefixes):
    return any(rel == p or rel.startswith(p + "/") for p in prefixes)


def _sync_argv(source, inside, is_dir, repo, rules=()):
    argv = ["rsync"] + _RSYNC_BASE + ["--checksum"]
    if is_dir:
        # --delete-excluded: a secret a run before these rules copied leaves the worktree (and the next commit)
        excludes = ["--exclude=%s" % GIT_DIR] + ["--exclude=%s" % rule for rule in rules]
        delete = ["--delete-excluded"] if rules else []
        return argv + delete + excludes + [source + "/", os.path.join(repo, inside) + "/"]
    return argv + [source, os.path.join(repo, inside)]


def config_record(path, excluded=None):
    """What Git does not keep of a mirrored config path, for the restore to put back: ``{kind, mode, uid, gid}`` and,
    for a folder, ``entries``: ``[[relative path, kind, mode, uid, gid]]`` of its folders and files (empty folders
    included), sorted by path, and ``excluded``: ``[[relative path, kind, reason]]``, what was kept out as secrets."""
    st = os.lstat(path)
    kind = _kind(st)
    record = {"kind": kind, "mode": 0 if kind == "l" else stat.S_IMODE(st.st_mode)}
    if kind != "l":
        record.update(uid=st.st_uid, gid=st.st_gid)
    if kind == "d":
        entries = [[rel, _kind(est), stat.S_IMODE(est.st_mode), est.st_uid, est.st_gid]
                   for rel, _full, est in walk_tree(path, (GIT_DIR,)) if _kind(est) in ("d", "f")]
        record["entries"] = sorted(entries, key=lambda e: os.fsencode(e[0]))
    if excluded:
        record["excluded"] = sorted(([rel, kind_, reason] for rel, kind_, reason in excluded),
                                    key=lambda e: os.fsencode(e[0]))
    return record


# --------------------------------------------------------------------------------------------
# secrets: never in the config history


def check_exclude_rules(rules):
    """``rules`` as a tuple of globs, each on one file or folder name; refuses anything else."""
    out = []
    for rule in rules if rules is not None else CONFIG_EXCLUDE:
        if not isinstance(rule, str) or not rule.strip() or rule in (".", "..") or "/" in rule or "\\" in rule \
                or any(ord(ch) < 32 for ch in rule) or rule[:2] in ("+ ", "- ") or rule.startswith("!"):
            raise FilesBackupError("exclude rule %r is not a file or folder name: give names or globs of names "
                                   "(*, ?, [...]), without / or \\" % (rule,))
        out.append(rule)
    return tuple(out)


def excluded_by(name, rules):
    """The first of ``rules`` that the file or folder name ``name`` matches (``fnmatch``, case-sensitive), or None."""
    for rule in rules:
        if fnmatch.fnmatchcase(name, rule):
            return rule
    return None


def _read_regular(path, limit=None):
    """Yield the content of the regular file ``path`` in chunks (up to ``limit`` bytes); nothing when ``path`` is not a
    regular file (never follows a symlink, never blocks on a fifo)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return
        left = limit
        while left is None or left > 0:
            chunk = handle.read(_SCAN_CHUNK if left is None else min(left, _SCAN_CHUNK))
            if not chunk:
                return
            if left is not None:
                left -= len(chunk)
            yield chunk


_ASSIGNMENT = re.compile(r"""\s*(?:export\s+)?["']?(?P<key>[\w.-]+)["']?\s*[:=]\s*(?P<value>.*?)\s*$""")
_SECRET_KEY = re.compile(r"(?i)(?:password|passwd|secret|api[_-]?key|token|auth|credentials?)$")


class SecretScanner:
    """Tells which files carry a secret: one of the known ``values`` (as written, or JSON-, URL-, backslash-escaped
    or base64-encoded) or a match of one of ``patterns`` (regular expressions, applied to the bytes). Values shorter
    than ``SECRET_MIN_LENGTH`` are not looked for. A reason never holds the secret."""

    def __init__(self, values=(), patterns=None):
        self.patterns = []
        for pattern in SECRET_PATTERNS if patterns is None else patterns:
            try:
                self.patterns.append(re.compile(str(pattern).encode("utf-8")))
            except re.error as exc:
                raise FilesBackupError("secret pattern %r is not a regular expression (%s): fix secret_patterns"
                                       % (pattern, exc)) from exc
        self.needles = set()
        self.short = 0
        for value in values or ():
            self.add(value)

    def add(self, value):
        """Look for ``value`` too (and its encoded forms); False when it is too short to be looked for."""
        value = str(value).strip()
        if not value:
            return False
        if len(value) < SECRET_MIN_LENGTH:
            self.short += 1
            return False
        raw = value.encode("utf-8", "surrogateescape")
        self.needles |= {raw, json.dumps(value)[1:-1].encode("utf-8"),
                         json.dumps(value, ensure_ascii=False)[1:-1].encode("utf-8", "surrogateescape"),
                         urllib.parse.quote(value, safe="").encode("ascii"),
                         urllib.parse.quote_plus(value).encode("ascii"),
                         value.replace("\\", "\\\\").replace('"', '\\"').encode("utf-8", "surrogateescape"),
                         base64.b64encode(raw).rstrip(b"=")}
        return True

    def harvest(self, path):
        """Learn the values an excluded secret file holds, so that no other file may carry them either: a file of one
        line that is not a ``key=value`` / ``key: value`` line is one value (the stack's secret files); of the
        ``key=value`` / ``key: value`` lines (env and YAML files), those whose key names a secret (see
        ``_SECRET_KEY``). Other values of excluded files are not learnt (a setting such as ``LOG_LEVEL=info`` would
        then exclude every file that mentions it)."""
        self.harvest_bytes(b"".join(_read_regular(path, _HARVEST_LIMIT + 1)))

    def harvest_bytes(self, data):
        """``harvest`` of a file's content ``data`` (a blob of the history)."""
        if not data or len(data) > _HARVEST_LIMIT:
            return
        lines = [line for line in data.decode("utf-8", "surrogateescape").splitlines() if line.strip()]
        for line in lines:
            match = _ASSIGNMENT.match(line)
            if match and _SECRET_KEY.search(match.group("key")):
                value = match.group("value")
                if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
                    value = value[1:-1]
                self.add(value)
            elif len(lines) == 1:
                self.add(line)  # also a password that holds = or :

    def scan_bytes(self, data):
        """``scan`` of a file's whole content ``data`` (a blob of the history)."""
        if any(needle in data for needle in self.needles):
            return "holds a known secret value"
        for pattern in self.patterns:
            if pattern.search(data):
                return "matches the secret pattern %s" % pattern.pattern.decode("utf-8")
        return None

    def scan(self, path):
        """Why the file ``path`` must be kept out of the history, or None (also when it is not a regular file)."""
        overlap = max([len(n) for n in self.needles] + [4096])
        tail = b""
        for chunk in _read_regular(path):
            data = tail + chunk
            if any(needle in data for needle in self.needles):
                return "holds a known secret value"
            for pattern in self.patterns:
                if pattern.search(data):
                    return "matches the secret pattern %s" % pattern.pattern.decode("utf-8")
            tail = data[-overlap:]
        return None


def _excluded_entries(source, rules):
    """``[(rel, full, kind, rule)]``: the entries below the folder ``source`` whose own name matches a rule (an
    excluded folder is not entered); ``.git`` folders are not entered either."""
    out = []
    for dirpath, dirnames, filenames in os.walk(source):
        keep = []
        folders = set(dirnames)
        for name in sorted(dirnames) + sorted(filenames):
            full = os.path.join(dirpath, name)
            rule = excluded_by(name, rules)
            if rule:
                try:
                    kind = _kind(os.lstat(full)) or "other"
                except FileNotFoundError:
                    continue
                out.append((os.path.relpath(full, source), full, kind, "name matches %s" % rule))
            elif name in folders and name != GIT_DIR:
                keep.append(name)
        dirnames[:] = keep
    return out


def _harvest_tree(scanner, full, kind):
    if kind == "f":
        scanner.harvest(full)
    elif kind == "d":
        for _rel, path, st in walk_tree(full):
            if stat.S_ISREG(st.st_mode):
                scanner.harvest(path)


def _secret_files(root, scanner):
    """``[(rel, reason)]``: the regular files below the folder ``root`` (``.git`` left out) that carry a secret."""
    return [(rel, reason) for rel, full, st in walk_tree(root, (GIT_DIR,)) if stat.S_ISREG(st.st_mode)
            for reason in [scanner.scan(full)] if reason]


def _target_rule(source, rules):
    """The rule that a config path itself (any of its names) matches, or None."""
    for name in source.strip(os.sep).split(os.sep):
        rule = excluded_by(name, rules)
        if rule:
            return rule
    return None


def _path_changes(source, mirror, is_dir, inside, rules=(), scanner=None):
    """Check mode: the worktree paths a backup would commit (new or changed files and links) and delete, and what it
    would keep out as secrets (``[(source path, reason)]``)."""
    excluded = []
    if not is_dir:
        reason = scanner.scan(source) if scanner else None
        if reason:
            return [], ([inside] if os.path.lexists(mirror) else []), [(source, reason)]
        if not os.path.lexists(mirror):
            return [inside], [], []
        same = path_info(source) == path_info(mirror)
        return ([] if same else [inside]), [], []
    excluded += [(full, why) for _rel, full, _k, why in _excluded_entries(source, rules)]
    flagged = dict(_secret_files(source, scanner)) if scanner else {}
    rules = tuple(rules) + (GIT_DIR,)

    def index(root, skip):
        if not os.path.isdir(root) or os.path.islink(root):
            return {}
        return {e["path"]: (e["kind"], e["mode"], e["size"], e["sha256"])
                for e in tree_info(root, exclude=skip)["entries"]}

    new = {rel: item for rel, item in index(source, lambda name: excluded_by(name, rules) is not None).items()
           if rel not in flagged}
    old = index(mirror, (GIT_DIR,))  # a secret committed before the rules shows as would-delete
    excluded += [(os.path.join(source, rel), reason) for rel, reason in sorted(flagged.items())]
    changes = [os.path.join(inside, rel) for rel, item in sorted(new.items())
               if item[0] != "d" and old.get(rel) != item]
    deleted = [os.path.join(inside, rel) for rel, item in sorted(old.items()) if item[0] != "d" and rel not in new]
    return changes, deleted, excluded


def _printable(path):
    return json.dumps(path, ensure_ascii=False)[1:-1]


def backup_configs(paths, dest, backup_root, check_mode=False, host=None, exclude=None, secret_values=(),
                   secret_patterns=None):
    """Mirror ``paths`` into the history worktree and commit when something changed; return the entry.

    Secrets never reach the history (it is kept forever and is not encrypted):

    * entries whose own name matches an ``exclude`` rule (default ``CONFIG_EXCLUDE``) are never copied, and a
      config path one of whose names matches is left out whole;
    * every copied file is then read, and one that holds one of ``secret_values`` (or a value learnt from the
      excluded files, ``SecretScanner.harvest``) or matches one of ``secret_patterns`` (default ``SECRET_PATTERNS``)
      is removed from the worktree before ``git add``.

    What was left out is reported by name and reason (``excluded``, a warning, and ``excluded`` in the path's record
    of ``configs_commit.json``), never by content. A file that a run before these rules committed is deleted from the
    tip by the next commit (the history still holds it: rewrite it as the module's documentation says).

    The fingerprint of each path is ``path_info`` of its mirror, read after the copy (``fingerprint.paths``);
    ``configs_commit.json`` records, per path, what Git does not keep (``config_record``: modes, owners, empty folders).
    """
    started = utc()
    t0 = time.monotonic()
    if not backup_root:
        raise FilesBackupError("mode=configs needs backup_root (the history lives in <backup_root>/%s)"
                               % CONFIGS_REPO)
    if not paths:
        raise FilesBackupError("mode=configs needs paths (files or folders to keep the history of)")
    rules = check_exclude_rules(exclude)
    scanner = SecretScanner(secret_values, secret_patterns)
    repo = GitRepo(layout_path(backup_root, "config_repo"))
    all_targets = _config_targets(paths, repo.path)
    excluded = []  # (source path, reason)
    targets = []
    for source, inside, is_dir in all_targets:
        rule = _target_rule(source, rules)
        if rule:
            excluded.append((source, "name matches %s" % rule))
            _harvest_tree(scanner, source, "d" if is_dir else "f")
        else:
            targets.append((source, inside, is_dir))
    if not targets:
        raise FilesBackupError("every config path is excluded as a secret (%s): nothing to keep; list the folders "
                               "that hold them, or change exclude" % ", ".join(s for s, _r in excluded))
    by_name = {}
    for source, _inside, is_dir in targets:
        if is_dir:
            by_name[source] = _excluded_entries(source, rules)
            for _rel, full, kind, _why in by_name[source]:
                _harvest_tree(scanner, full, kind)
    prefixes = [inside for _s, inside, _d in targets]
    host = host or socket.gethostname()
    if check_mode:
        changes, deleted = [], []
        for source, inside, is_dir in targets:
            more, gone, left_out = _path_changes(source, os.path.join(repo.path, inside), is_dir, inside, rules,
                                                 scanner)
            changes += more
            deleted += gone
            excluded += left_out
        if repo.exists():
            deleted += [p for p in repo.tracked() if not _under(p, prefixes)]
        return {"changed": bool(changes or deleted), "would_commit": _limit(changes), "would_delete": _limit(deleted),
                "would_exclude": _limit([{"path": p, "reason": r} for p, r in excluded]),
                "repo": repo.path, "head": repo.head() if repo.exists() else None}
    repo.init()
    warnings = []
    left_out = {}  # source -> [(rel, kind, reason)]
    for source, inside, is_dir in targets:
        mirror = os.path.join(repo.path, inside)
        os.makedirs(os.path.dirname(mirror) if not is_dir else mirror, mode=0o700, exist_ok=True)
        outcome = {}
        run_tool(_sync_argv(source, inside, is_dir, repo.path, rules), ok_codes=(0, RSYNC_VANISHED), result=outcome)
        if outcome["rc"] == RSYNC_VANISHED:
            warnings.append("files vanished from %s while it was copied (rsync code 24)" % source)
        items = left_out.setdefault(source, [])
        items += [(rel, kind, why) for rel, _full, kind, why in by_name.get(source, [])]
        if is_dir:
            for rel, reason in _secret_files(mirror, scanner):
                os.unlink(os.path.join(mirror, rel))
                items.append((rel, "f", reason))
        else:
            reason = scanner.scan(mirror)
            if reason:
                os.unlink(mirror)
                excluded.append((source, reason))
        excluded += [(os.path.join(source, rel), why) for rel, _kind_, why in items]
    kept = [(s, i, d) for s, i, d in targets if os.path.lexists(os.path.join(repo.path, i))]
    prefixes = [inside for _s, inside, _d in kept]
    for rel in repo.tracked():
        if not _under(rel, prefixes) and os.path.lexists(os.path.join(repo.path, rel)):
            os.unlink(os.path.join(repo.path, rel))
    if excluded:
        warnings.append("%d secret file(s) or folder(s) were kept out of the config history (they come from the "
                        "vault: roles/stack renders them again): %s" % (len(excluded), "; ".join(
                            "%s (%s)" % (_printable(p), r) for p, r in _limit(excluded, 20))))
    if scanner.short:
        warnings.append("%d secret value(s) are shorter than %d characters and were not looked for in the configs"
                        % (scanner.short, SECRET_MIN_LENGTH))
    repo.git("add", "--all", "--force")  # --force: a .gitignore among the configs must not hide any of them
    status = repo.git("status", "--porcelain", "-z", "--no-renames", "--untracked-files=all")
    changed = bool(status.strip("\0"))
    now = utc()
    if changed:
        summary = [_printable(s[3:]) for s in status.split("\0") if len(s) > 3]
        message = "configs of %s at %s\n\n%d path(s) changed:\n%s\n" % (
            host, isoformat(now), len(summary), "\n".join(_limit(summary, 50)))
        repo.git("commit", "-q", "--no-verify", "-m", message)
    commit = repo.head()
    files = repo.tracked()
    mirrors = {source: os.path.join(repo.path, inside) for source, inside, _d in kept}
    fingerprints = {source: path_info(mirror, exclude=(GIT_DIR,)) for source, mirror in mirrors.items()}
    records = {source: config_record(mirror, left_out.get(source)) for source, mirror in mirrors.items()}
    os.makedirs(dest, mode=0o700, exist_ok=True)
    ref = os.path.join(os.path.abspath(dest), CONFIGS_REF)
    write_json(ref, {"repo": repo.path, "commit": commit, "changed": changed, "host": host, "files": files,
                     "paths": records, "excluded": [{"path": p, "reason": r} for p, r in excluded]})
    digest, size = hash_file(ref)
    return {
        "status": "success",
        "type": "files",
        "mode": "configs",
        "backup_type": "full",
        "tool": "rsync -a --delete + git commit",
        "tool_version": run_tool(["git", "--version"]).strip(),
        "started": isoformat(started),
        "ended": isoformat(now),
        "duration_s": round(time.monotonic() - t0, 3),
        "repo": repo.path,
        "commit": commit,
        "changed": changed,
        "paths": [s for s, _i, _d in kept],
        "config_files": files,
        "excluded": [{"path": p, "reason": r} for p, r in excluded],
        "bytes": size,
        "files": [{"path": ref, "sha256": digest, "size": size}],
        "warnings": warnings,
        "fingerprint": {"commit": commit, "files": len(files), "paths": fingerprints},
        "fingerprint_of": "copy",
    }


def _history_entries(repo):
    """``{path: {blob sha}}``: every file path any commit of the history holds, with each content it had (one
    ``git log --raw -z``, which lists the files of the first commit and every change after it)."""
    out = repo.git("log", "--all", "--root", "--raw", "-z", "--no-abbrev", "--no-renames", "--format=")
    fields = out.split("\0")
    entries = {}
    i = 0
    while i < len(fields):
        field = fields[i].lstrip("\n")
        if field.startswith(":") and i + 1 < len(fields):
            parts = field[1:].split()
            if len(parts) >= 5 and not parts[1].startswith("16"):  # not a submodule (gitlink)
                entries.setdefault(fields[i + 1], set()).add(parts[3])
            i += 2
        else:
            i += 1
    null = "0" * 40
    return {path: {sha for sha in shas if sha != null} for path, shas in entries.items()}


def rewrite_config_history(backup_root, exclude=None, secret_values=(), secret_patterns=None, remove=(),
                           check_mode=False):
    """Remove every secret from the whole config history (``<backup_root>/configs.git-worktree``), as if it had never
    been committed: a history written before ``backup_configs`` kept secrets out still holds them in its old commits.

    What goes: every path of any commit one of whose names matches an ``exclude`` rule (default ``CONFIG_EXCLUDE``),
    every path whose content in any commit holds one of ``secret_values`` (or a value learnt from the excluded files'
    old contents, ``SecretScanner.harvest``) or matches one of ``secret_patterns``, and the paths of ``remove``
    (relative to ``/``, as the history stores them). Each goes from every commit, with all its versions.

    ``git filter-repo`` rewrites the commits (through ``GitRepo``: the repository is checked first, hooks and
    filters are off), then the reflogs expire and ``git gc --prune=now`` deletes the old objects, so the blobs are
    gone from the repository, not only unreferenced. Every commit id changes: the config part of the sets written
    before can no longer be restored (``configs_commit.json`` names the old commit); run a config backup at once.
    Nothing is written in check mode; the result says what would be removed (paths and reasons, never content).
    """
    if not backup_root:
        raise FilesBackupError("the history rewrite needs backup_root (the history lives in <backup_root>/%s)"
                               % CONFIGS_REPO)
    rules = check_exclude_rules(exclude)
    scanner = SecretScanner(secret_values, secret_patterns)
    repo = GitRepo(layout_path(backup_root, "config_repo"))
    if not repo.exists():
        raise FilesBackupError("no config history at %s: nothing to rewrite" % repo.path)
    entries = _history_entries(repo)
    reasons = {}
    for path in remove or ():
        rel = os.path.normpath(str(path)).lstrip(os.sep)
        if rel in entries:
            reasons[rel] = "listed in remove"
    by_name = {}
    for path in entries:
        for name in path.split("/"):
            rule = excluded_by(name, rules)
            if rule:
                by_name[path] = "name matches %s" % rule
                break
    contents = repo.blobs(sha for path in entries for sha in entries[path])
    for path in by_name:
        for sha in entries[path]:
            scanner.harvest_bytes(contents.get(sha, b""))
    reasons.update(by_name)
    for path, shas in sorted(entries.items()):
        if path in reasons:
            continue
        for sha in sorted(shas):
            why = scanner.scan_bytes(contents.get(sha, b""))
            if why:
                reasons[path] = why
                break
    removed = [{"path": p, "reason": r} for p, r in sorted(reasons.items())]
    head = repo.head()
    result = {"repo": repo.path, "head_before": head, "removed": removed, "changed": bool(removed),
              "commits_before": len([c for c in repo.git("rev-list", "--all").split() if c]) if head else 0}
    if check_mode or not removed:
        result["head_after"] = head
        return result
    bad = [p for p in reasons if "\n" in p or "==>" in p]
    if bad:
        raise FilesBackupError("%d path(s) to remove hold a newline or '==>', which git filter-repo cannot be given in "
                               "a file: %s; remove them with git filter-repo --path-regex by hand"
                               % (len(bad), ", ".join(_printable(p) for p in bad[:5])))
    if not shutil.which("git-filter-repo"):
        raise FilesBackupError("git filter-repo is not installed: install the Debian package git-filter-repo "
                               "(roles/base does, scripts/bootstrap.sh too), then run the rewrite again")
    listing = os.path.join(repo.path, GIT_DIR, "llmops-remove-paths")
    write_file_atomic(listing, "".join("literal:%s\n" % p for p in sorted(reasons)).encode("utf-8", "surrogateescape"))
    try:
        repo.git("filter-repo", "--force", "--quiet", "--invert-paths", "--paths-from-file", listing,
                 "--replace-refs", "delete-no-add")
    finally:
        os.unlink(listing)
    repo.git("reflog", "expire", "--expire=now", "--all")
    repo.git("gc", "-q", "--prune=now")
    repo.git("reset", "-q", "--hard")
    for path in reasons:  # an untracked copy left in the worktree goes too
        remove_paths([os.path.join(repo.path, path)])
    result["head_after"] = repo.head()
    result["commits_after"] = len([c for c in repo.git("rev-list", "--all").split() if c])
    result["warnings"] = ["the config history was rewritten: %d path(s) removed from every commit, every commit id "
                          "changed, so the configs of the sets written before can no longer be restored; run a config "
                          "backup now (playbooks/backup.yml -e components=configs)" % len(removed)]
    return result
