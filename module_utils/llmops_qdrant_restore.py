# -*- coding: utf-8 -*-
# Copyright: llmops-lab contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Qdrant restores from a backup set through the snapshot API. Used by ``library/qdrant_restore.py``.

Qdrant keeps running: a collection is replaced by uploading its snapshot
(``POST /collections/<c>/snapshots/upload?priority=snapshot&checksum=<sha256>``), which recovers it
in place. Steps:

``safety``   snapshot each collection of the restore that exists now and download it into
             ``<staging>/<safety_name>/<c>.snapshot``; ``safety.json`` there records which
             collections existed (a collection that did not is deleted by a rollback).
``restore``  check the sha256 of EVERY snapshot file of the set against the manifest first (nothing
             is uploaded when one fails), then upload them one by one.
``verify``   the live fingerprint (exact points count, ids digest, vector config) against the manifest's.
``rollback`` upload the safety snapshots back; delete the collections that did not exist before.
``cleanup``  remove the staging folder (the safety copies unless they are kept).
"""

from __future__ import annotations

import json
import os
import shutil

from ansible.module_utils.llmops_backupset import write_json
from ansible.module_utils.llmops_pipeline import hash_file
from ansible.module_utils.llmops_qdrant import QdrantError
from ansible.module_utils.llmops_qdrant_backup import fingerprint_collection, snapshot_filename

SAFETY_INDEX = "safety.json"
TOUCHED = "uploaded.json"  # the collections the restore step started to upload: all a rollback must undo


class QdrantRestoreError(Exception):
    """A Qdrant restore step failed; the message says which and why (never the API key)."""


def set_collections(set_path, entry, only=None):
    """``{name: {path, sha256, fingerprint}}`` of the collections to restore from the set's qdrant entry.

    ``only`` restricts to those names; a name the set does not hold raises.
    """
    details = entry.get("collections") or {}
    fingerprints = entry.get("fingerprint") or {}
    names = list(only) if only else sorted(details)
    missing = [n for n in names if n not in details]
    if missing:
        raise QdrantRestoreError("the set holds no snapshot of collection(s) %s (it holds: %s)"
                                 % (", ".join(missing), ", ".join(sorted(details)) or "none"))
    out = {}
    for name in names:
        item = details[name]
        rel = None
        for f in entry.get("files") or []:
            if os.path.basename(f["path"]) == item.get("file", snapshot_filename(name)):
                rel = f["path"]
                break
        if rel is None:
            raise QdrantRestoreError("the manifest lists no file for the snapshot of collection %s" % name)
        path = rel if os.path.isabs(rel) else os.path.join(set_path, rel)
        fp = fingerprints.get(name) or {k: item.get(k) for k in ("points_count", "vectors", "ids_sha256")}
        out[name] = {"path": path, "sha256": item.get("sha256"), "fingerprint": fp}
    return out


def check_snapshots(collections):
    """Hash every snapshot file and compare with the manifest; raise listing all mismatches."""
    problems = []
    for name, item in collections.items():
        if not os.path.isfile(item["path"]):
            problems.append("%s: %s is missing" % (name, item["path"]))
            continue
        digest, _size = hash_file(item["path"])
        if not item["sha256"] or digest != item["sha256"]:
            problems.append("%s: %s has sha256 %s, the manifest says %s"
                            % (name, item["path"], digest, item["sha256"]))
    if problems:
        raise QdrantRestoreError("snapshot file(s) do not match the manifest, nothing was uploaded: %s"
                                 % "; ".join(problems))


def take_safety(client, names, safety_dir):
    """Download a snapshot of each existing collection of ``names`` into ``safety_dir``; return the index."""
    os.makedirs(safety_dir, mode=0o700, exist_ok=True)
    index = {}
    warnings = []
    for name in names:
        if not client.collection_exists(name):
            index[name] = {"existed": False}
            continue
        snap = client.create_snapshot(name)
        snap_name = snap.get("name") if isinstance(snap, dict) else None
        if not snap_name:
            raise QdrantRestoreError("collection %s: the server did not describe the safety snapshot: %r"
                                     % (name, snap))
        path = os.path.join(safety_dir, snapshot_filename(name))
        try:
            sha = client.download_snapshot(name, snap_name, path)
        finally:
            try:
                client.delete_snapshot(name, snap_name)
            except QdrantError as exc:
                warnings.append("collection %s: could not delete the server-side snapshot %s: %s"
                                % (name, snap_name, exc))
        server_sum = (snap.get("checksum") or "").strip().lower()
        if server_sum and server_sum != sha:
            raise QdrantRestoreError("collection %s: the safety snapshot's checksum %s differs from the server's %s"
                                     % (name, sha, server_sum))
        index[name] = {"existed": True, "file": os.path.basename(path), "sha256": sha,
                       "points_count": client.count(name, exact=True)}
    write_json(os.path.join(safety_dir, SAFETY_INDEX), index)
    return index, warnings


def restore_collections(client, collections, safety_dir):
    """Check every snapshot against the manifest, then upload each (``priority=snapshot``, with checksum).

    Before each upload the collection is added to ``<safety_dir>/uploaded.json``, which limits the rollback.
    """
    check_snapshots(collections)
    done = []
    for name, item in collections.items():
        os.makedirs(safety_dir, mode=0o700, exist_ok=True)
        write_json(os.path.join(safety_dir, TOUCHED), done + [name])
        try:
            client.upload_snapshot(name, item["path"], priority="snapshot", checksum=item["sha256"])
        except QdrantError as exc:
            raise QdrantRestoreError("uploading the snapshot of %s failed (restored before it: %s): %s"
                                     % (name, ", ".join(done) or "none", exc)) from exc
        done.append(name)
    return done


def compare(expected, actual):
    """Differences between a manifest fingerprint and a live one (points count, ids digest, vectors)."""
    out = []
    for key in ("points_count", "ids_sha256", "vectors"):
        if key in expected and expected[key] != actual.get(key):
            out.append("%s: expected %s, found %s" % (key, json.dumps(expected[key]), json.dumps(actual.get(key))))
    return out


def verify_collections(client, collections):
    """``{name: [differences]}`` of the collections whose live fingerprint differs from the manifest's."""
    differences = {}
    for name, item in collections.items():
        if not client.collection_exists(name):
            differences[name] = ["the collection does not exist"]
            continue
        diff = compare(item["fingerprint"], fingerprint_collection(client, name))
        if diff:
            differences[name] = diff
    return differences


def _read(path, default):
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        return default


def read_safety(safety_dir):
    """The collections a rollback puts back: those of the safety index that the restore step started to upload."""
    index = _read(os.path.join(safety_dir, SAFETY_INDEX), {})
    touched = set(_read(os.path.join(safety_dir, TOUCHED), []))
    return {name: item for name, item in index.items() if name in touched}


def rollback(client, safety_dir):
    """Put every collection back as the safety step found it; return ``{uploaded, deleted}``."""
    index = read_safety(safety_dir)
    uploaded, deleted, problems = [], [], []
    for name, item in index.items():
        try:
            if item.get("existed"):
                client.upload_snapshot(name, os.path.join(safety_dir, item["file"]), priority="snapshot",
                                       checksum=item["sha256"])
                uploaded.append(name)
            elif client.collection_exists(name):
                client.delete_collection(name)
                deleted.append(name)
        except (QdrantError, OSError) as exc:
            problems.append("%s: %s" % (name, exc))
    if problems:
        raise QdrantRestoreError("rollback incomplete (put back: %s): %s"
                                 % (", ".join(uploaded + deleted) or "none", "; ".join(problems)))
    return {"uploaded": uploaded, "deleted": deleted}


def cleanup(staging, safety_dir, keep_safety_copy=True, dry_run=False):
    """Remove ``staging`` except, with ``keep_safety_copy``, the safety folder; return the removed paths."""
    if not os.path.isdir(staging):
        return []
    removed = []
    for entry in sorted(os.listdir(staging)):
        full = os.path.join(staging, entry)
        if keep_safety_copy and os.path.abspath(full) == os.path.abspath(safety_dir):
            continue
        removed.append(full)
    if not keep_safety_copy and len(removed) == len(os.listdir(staging)):
        removed = [staging]
    if not dry_run:
        for path in removed:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)
    return removed
