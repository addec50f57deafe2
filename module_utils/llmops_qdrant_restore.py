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
``verify``   the live fingerprint (points count, ids and points digests, vector config) against the
             fingerprint of the artefact: the manifest's when it describes the snapshot
             (``fingerprint_source`` ``snapshot`` or ``server-unchanged``); else the one computed from the
             snapshot file when its format is readable here; else the collection is reported as
             ``unverified`` (only its vector config is checked), never silently passed.
``rollback`` upload the safety snapshots back; delete the collections that did not exist before.
``cleanup``  remove the staging folder (the safety copies unless they are kept).
"""

from __future__ import annotations

import json
import os

from ansible.module_utils.llmops_backupset import set_member as member_path
from ansible.module_utils.llmops_backupset import write_json
from ansible.module_utils.llmops_common import LlmopsError, load_state, remove_paths
from ansible.module_utils.llmops_pipeline import decompress_to, hash_file, is_encrypted
from ansible.module_utils.llmops_qdrant import QdrantError
from ansible.module_utils.llmops_qdrant_backup import (
    ARTEFACT_SOURCES,
    FINGERPRINT_KEYS,
    SNAPSHOT_SUFFIX,
    fingerprint_collection,
    snapshot_filename,
    snapshot_fingerprint,
)

SAFETY_INDEX = "safety.json"
TOUCHED = "uploaded.json"  # the collections the restore step started to upload: all a rollback must undo


class QdrantRestoreError(LlmopsError):
    """A Qdrant restore step failed; the message says which and why (never the API key)."""


def set_member(set_path, rel, what="file"):
    """``llmops_backupset.set_member``, raising ``QdrantRestoreError``."""
    return member_path(set_path, rel, what, QdrantRestoreError)


def _file_name(value, what):
    """A snapshot file name read from a manifest or a safety index: one path component ending in .snapshot."""
    if not isinstance(value, str) or not value.endswith(SNAPSHOT_SUFFIX) or os.path.basename(value) != value \
            or value.startswith(".") or "\0" in value:
        raise QdrantRestoreError("%s names the snapshot file %r, which is not a plain file name" % (what, value))
    return value


def set_collections(set_path, entry, only=None):
    """``{name: {path, sha256, fingerprint, source}}`` of the collections to restore from the set's qdrant entry.

    ``only`` restricts to those names; a name the set does not hold raises. The file of each collection
    is the one the entry maps it to (``collections.<c>.file``), looked up in the entry's ``files`` and
    checked to lie inside the set. ``source`` says what the recorded fingerprint describes
    (``fingerprint_source``; sets written before it existed: ``legacy`` when ``fingerprint_stable`` was
    true, ``legacy-unstable`` otherwise).
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
        fname = _file_name(item.get("file") or snapshot_filename(name), "the manifest (collection %r)" % name)
        listed = [f for f in entry.get("files") or [] if isinstance(f, dict) and isinstance(f.get("path"), str)
                  and os.path.basename(f["path"]) == fname]
        if len(listed) != 1:
            raise QdrantRestoreError("the manifest lists %d files for the snapshot %s of collection %s"
                                     % (len(listed), fname, name))
        path = set_member(set_path, listed[0]["path"], "snapshot file")
        if listed[0].get("sha256") != item.get("sha256"):
            raise QdrantRestoreError("the manifest gives two sha256 for the snapshot of collection %s" % name)
        fp = fingerprints.get(name) or {k: item[k] for k in FINGERPRINT_KEYS if k in item}
        source = item.get("fingerprint_source") or ("legacy" if entry.get("fingerprint_stable") is not False
                                                    else "legacy-unstable")
        out[name] = {"path": path, "sha256": item.get("sha256"), "fingerprint": fp, "source": source,
                     "file": fname, "snapshot_sha256": item.get("snapshot_sha256") if item.get("encrypted") else None}
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
        path, checksum = item["path"], item["sha256"]
        if is_encrypted(path):
            # an encrypted set (backup_encryption): decrypted into the staging folder, the file's sha256 checked
            # while it streams; the server checks the snapshot's own on upload
            clear_dir = os.path.join(safety_dir, ".decrypted")
            os.makedirs(clear_dir, mode=0o700, exist_ok=True)
            path, checksum = os.path.join(clear_dir, item["file"]), item["snapshot_sha256"]
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
            try:
                decompress_to(item["path"], ["dd", "of=%s" % path, "conv=notrunc", "status=none"],
                              expected_sha256=item["sha256"], consumer_name="decrypt snapshot")
            except LlmopsError as exc:
                os.unlink(path)
                raise QdrantRestoreError("cannot decrypt the snapshot of %s (restored before it: %s): %s"
                                         % (name, ", ".join(done) or "none", exc)) from exc
        try:
            client.upload_snapshot(name, path, priority="snapshot", checksum=checksum)
        except QdrantError as exc:
            raise QdrantRestoreError("uploading the snapshot of %s failed (restored before it: %s): %s"
                                     % (name, ", ".join(done) or "none", exc)) from exc
        finally:
            if path != item["path"]:
                os.unlink(path)
        done.append(name)
    return done


def compare(expected, actual):
    """Differences between an expected fingerprint and a live one, for the keys the expected one has."""
    out = []
    for key in FINGERPRINT_KEYS:
        if key in expected and expected[key] != actual.get(key):
            out.append("%s: expected %s, found %s" % (key, json.dumps(expected[key]), json.dumps(actual.get(key))))
    if actual.get("counted") is not None and actual["counted"] != actual.get("points_count"):
        out.append("the exact count (%s) differs from the points scrolled (%s): the collection is being written"
                   % (actual["counted"], actual.get("points_count")))
    return out


def expected_fingerprint(item):
    """``(fingerprint, against)``: what a restored collection is verified against, and a word on where it comes
    from; ``against`` is None when nothing describes the snapshot's content (only ``vectors`` is then checked).
    """
    if item["source"] in ARTEFACT_SOURCES or item["source"] == "legacy":
        return item["fingerprint"], "the manifest's fingerprint of the snapshot (%s)" % item["source"]
    from_file = snapshot_fingerprint(item["path"])
    if from_file is not None:
        return from_file, "the fingerprint of the snapshot file (the manifest's is %s)" % item["source"]
    return {"vectors": item["fingerprint"].get("vectors")} if "vectors" in item["fingerprint"] else {}, None


def verify_collections(client, collections):
    """Compare each restored collection with the fingerprint of its snapshot (``expected_fingerprint``).

    Returns ``{differences: {name: [..]}, against: {name: text}, unverified: [names]}``.
    """
    differences, against, unverified = {}, {}, []
    for name, item in collections.items():
        expected, where = expected_fingerprint(item)
        against[name] = where or "nothing: the backup could not fingerprint this snapshot (%s)" % item["source"]
        if where is None:
            unverified.append(name)
        if not client.collection_exists(name):
            differences[name] = ["the collection does not exist"]
            continue
        diff = compare(expected, fingerprint_collection(client, name))
        if diff:
            differences[name] = diff
    return {"differences": differences, "against": against, "unverified": unverified}


def read_safety(safety_dir):
    """The collections a rollback puts back: those of the safety index that the restore step started to upload."""
    index = load_state(os.path.join(safety_dir, SAFETY_INDEX), {})
    touched = set(load_state(os.path.join(safety_dir, TOUCHED), []))
    return {name: item for name, item in index.items() if name in touched}


def rollback(client, safety_dir):
    """Put every collection back as the safety step found it; return ``{uploaded, deleted}``."""
    index = read_safety(safety_dir)
    uploaded, deleted, problems = [], [], []
    for name, item in index.items():
        try:
            if item.get("existed"):
                path = os.path.join(safety_dir, _file_name(item.get("file"), "the safety index"))
                client.upload_snapshot(name, path, priority="snapshot", checksum=item["sha256"])
                uploaded.append(name)
            elif client.collection_exists(name):
                client.delete_collection(name)
                deleted.append(name)
        except (QdrantError, QdrantRestoreError, OSError) as exc:
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
    return remove_paths(removed, dry_run=dry_run)
