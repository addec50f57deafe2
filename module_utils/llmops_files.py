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
                 ``run_pipeline``.
``backup_models`` one content-addressed copy per model version under
                 ``<backup_root>/models/<model>/<version>-<hash12>/`` (outside the sets), shared by
                 every set that references it, keyed and fingerprinted by the tree hash of the copy;
                 the set itself gets ``models_index.json``.
``backup_configs`` the given paths mirrored (by absolute path) into a Git worktree at
                 ``<backup_root>/configs.git-worktree`` and committed when something changed; the
                 fingerprint is the tree hash (with modes) of each path's mirror; the set gets
                 ``configs_commit.json`` with the commit and what Git does not keep (modes, empty
                 folders), which the restore puts back.

File names are content: they stay as they are on disk, whatever they hold (newlines, quotes,
leading dashes...). They are never parsed out of a tool's text output: trees are read with
Python's own walkers, Git only through ``-z`` forms with ``core.quotePath=false``, and tools get
paths as separate arguments, never through a shell.
"""

from __future__ import annotations

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

from ansible.module_utils.llmops_backupset import (
    BackupSetError,
    fsync_dir,
    isoformat,
    list_sets,
    load_manifest,
    parse_time,
    run_times,
    utc,
    write_file_atomic,
    write_json,
)
from ansible.module_utils.llmops_common import LlmopsError
from ansible.module_utils.llmops_layout import LAYOUT, layout_path
from ansible.module_utils.llmops_pipeline import hash_file, run_pipeline

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
    never parsed from a tool's output. Folders named in ``exclude`` are neither yielded nor entered, files so
    named are not yielded. Symlinks are not followed."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in exclude]
        for name in dirnames + filenames:
            if name in exclude:
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


def tree_info(root, modes=True, cache=None, exclude=()):
    """Walk ``root``; return ``{sha256, entries, files, dirs, symlinks, bytes, skipped}``.

    ``entries``: ``[{path, kind, mode, size, sha256, ino, nlink, mtime_ns}]`` sorted like the hash.
    ``cache`` (``{path: [size, mtime_ns, sha256]}``) lets a file whose size and mtime are unchanged
    reuse a known sha256 instead of being read again. ``exclude``: names left out (see ``walk_tree``).
    """
    root = os.path.abspath(os.fspath(root))
    if not os.path.isdir(root) or os.path.islink(root):
        raise FilesBackupError("%s is not a folder" % root)
    records = []
    skipped = []
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
            if known and int(known[0]) == st.st_size and int(known[1]) == st.st_mtime_ns:
                digest = known[2]
            else:
                digest, _size = hash_file(full)
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
            "bytes": sum(e["size"] for e in files), "skipped": skipped}


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
    """``(set_id, path)`` of the tree of ``component`` in the newest complete successful set, or ``(None, None)``."""
    if not backup_root:
        return None, None
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
        return item["id"], path
    return None, None


def _limit(items, limit=ITEMS_LIMIT):
    return items[:limit]


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
    linked_from, prev_path = previous_tree(backup_root, component, exclude=tree)
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
    info = tree_info(tree)
    regular = [e for e in info["entries"] if e["kind"] == "f"]
    new = [e for e in regular if e["nlink"] < 2]
    copied = {e["path"] for e in info["entries"]}
    files = [{"path": os.path.join(tree, e["path"]), "sha256": e["sha256"], "size": e["size"]} for e in regular]
    archive = None
    if full_archive:
        result = run_pipeline(["tar", "--sort=name", "--numeric-owner", "-C", tree, "-cf", "-", "."],
                              os.path.join(dest, ARCHIVE), zstd_level=zstd_level, zstd_threads=zstd_threads,
                              source_name="tar")
        archive = {"file": ARCHIVE, "sha256": result.sha256, "size": result.bytes_out, "bytes_raw": result.bytes_in}
        files.append({"path": result.path, "sha256": result.sha256, "size": result.bytes_out})
    return {
        "status": "success",
        "type": "files",
        "mode": "tree",
        "backup_type": "full",
        "tool": "rsync -a --delete --link-dest" + (" + tar | zstd" if full_archive else ""),
        "tool_version": _rsync_version(rsync_path),
        **run_times(started, t0),
        "source": src,
        "tree_dir": _rel_inside(backup_root, tree) if backup_root else None,
        "bytes": sum(f["size"] for f in files),
        "files": files,
        "file_count": info["files"],
        "tree_bytes": info["bytes"],
        "bytes_new": sum(e["size"] for e in new),
        "files_new": len(new),
        "files_linked": len(regular) - len(new),
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
    """

    def __init__(self, path):
        self.path = os.path.abspath(path)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
        self.env.update({
            "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1", "GIT_TERMINAL_PROMPT": "0",
            "GIT_AUTHOR_NAME": GIT_AUTHOR[0], "GIT_AUTHOR_EMAIL": GIT_AUTHOR[1],
            "GIT_COMMITTER_NAME": GIT_AUTHOR[0], "GIT_COMMITTER_EMAIL": GIT_AUTHOR[1], "LC_ALL": "C",
        })

    def git(self, *args):
        """Run ``git <args>`` in the worktree; return stdout."""
        argv = ["git", "-c", "safe.directory=%s" % self.path, "-c", "commit.gpgsign=false",
                "-c", "core.hooksPath=%s" % os.devnull, "-c", "core.quotePath=false", "-c", "core.fsmonitor=false",
                "-c", "core.autocrlf=false", "-c", "core.symlinks=true", "-c", "core.attributesFile=%s" % os.devnull,
                "-c", "core.excludesFile=%s" % os.devnull, "-C", self.path]
        return run_tool(argv + list(args), env=self.env)

    def exists(self):
        return os.path.isdir(os.path.join(self.path, GIT_DIR))

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


def _sync_argv(source, inside, is_dir, repo):
    argv = ["rsync"] + _RSYNC_BASE + ["--checksum"]
    if is_dir:
        return argv + ["--exclude=%s" % GIT_DIR, source + "/", os.path.join(repo, inside) + "/"]
    return argv + [source, os.path.join(repo, inside)]


def config_record(path):
    """What Git does not keep of a mirrored config path, for the restore to put back: ``{kind, mode}`` and, for
    a folder, ``entries``: ``[[relative path, kind, mode]]`` of its folders and files (empty folders included),
    sorted by path."""
    st = os.lstat(path)
    kind = _kind(st)
    record = {"kind": kind, "mode": 0 if kind == "l" else stat.S_IMODE(st.st_mode)}
    if kind == "d":
        entries = [[rel, _kind(est), stat.S_IMODE(est.st_mode)] for rel, _full, est in walk_tree(path, (GIT_DIR,))
                   if _kind(est) in ("d", "f")]
        record["entries"] = sorted(entries, key=lambda e: os.fsencode(e[0]))
    return record


def _path_changes(source, mirror, is_dir, inside):
    """Check mode: the worktree paths a backup would commit (new or changed files and links) and delete."""
    if not os.path.lexists(mirror):
        if not is_dir:
            return [inside], []
        return [os.path.join(inside, e["path"]) for e in tree_info(source, exclude=(GIT_DIR,))["entries"]
                if e["kind"] != "d"], []
    if not is_dir:
        same = path_info(source) == path_info(mirror)
        return ([] if same else [inside]), []

    def index(root):
        if not os.path.isdir(root) or os.path.islink(root):
            return {}
        return {e["path"]: (e["kind"], e["mode"], e["size"], e["sha256"])
                for e in tree_info(root, exclude=(GIT_DIR,))["entries"]}

    new, old = index(source), index(mirror)
    changes = [os.path.join(inside, rel) for rel, item in sorted(new.items())
               if item[0] != "d" and old.get(rel) != item]
    deleted = [os.path.join(inside, rel) for rel, item in sorted(old.items()) if item[0] != "d" and rel not in new]
    return changes, deleted


def _printable(path):
    return json.dumps(path, ensure_ascii=False)[1:-1]


def backup_configs(paths, dest, backup_root, check_mode=False, host=None):
    """Mirror ``paths`` into the history worktree and commit when something changed; return the entry.

    The fingerprint of each path is ``path_info`` of its mirror, read after the copy (``fingerprint.paths``);
    ``configs_commit.json`` records, per path, what Git does not keep (``config_record``).
    """
    started = utc()
    t0 = time.monotonic()
    if not backup_root:
        raise FilesBackupError("mode=configs needs backup_root (the history lives in <backup_root>/%s)"
                               % CONFIGS_REPO)
    if not paths:
        raise FilesBackupError("mode=configs needs paths (files or folders to keep the history of)")
    repo = GitRepo(layout_path(backup_root, "config_repo"))
    targets = _config_targets(paths, repo.path)
    prefixes = [inside for _s, inside, _d in targets]
    host = host or socket.gethostname()
    if check_mode:
        changes, deleted = [], []
        for source, inside, is_dir in targets:
            more, gone = _path_changes(source, os.path.join(repo.path, inside), is_dir, inside)
            changes += more
            deleted += gone
        if repo.exists():
            deleted += [p for p in repo.tracked() if not _under(p, prefixes)]
        return {"changed": bool(changes or deleted), "would_commit": _limit(changes), "would_delete": _limit(deleted),
                "repo": repo.path, "head": repo.head() if repo.exists() else None}
    repo.init()
    warnings = []
    for source, inside, is_dir in targets:
        os.makedirs(os.path.dirname(os.path.join(repo.path, inside)) if not is_dir
                    else os.path.join(repo.path, inside), mode=0o700, exist_ok=True)
        outcome = {}
        run_tool(_sync_argv(source, inside, is_dir, repo.path), ok_codes=(0, RSYNC_VANISHED), result=outcome)
        if outcome["rc"] == RSYNC_VANISHED:
            warnings.append("files vanished from %s while it was copied (rsync code 24)" % source)
    for rel in repo.tracked():
        if not _under(rel, prefixes) and os.path.lexists(os.path.join(repo.path, rel)):
            os.unlink(os.path.join(repo.path, rel))
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
    mirrors = {source: os.path.join(repo.path, inside) for source, inside, _d in targets}
    fingerprints = {source: path_info(mirror, exclude=(GIT_DIR,)) for source, mirror in mirrors.items()}
    records = {source: config_record(mirror) for source, mirror in mirrors.items()}
    os.makedirs(dest, mode=0o700, exist_ok=True)
    ref = os.path.join(os.path.abspath(dest), CONFIGS_REF)
    write_json(ref, {"repo": repo.path, "commit": commit, "changed": changed, "host": host, "files": files,
                     "paths": records})
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
        "paths": [s for s, _i, _d in targets],
        "config_files": files,
        "bytes": size,
        "files": [{"path": ref, "sha256": digest, "size": size}],
        "warnings": warnings,
        "fingerprint": {"commit": commit, "files": len(files), "paths": fingerprints},
        "fingerprint_of": "copy",
    }
