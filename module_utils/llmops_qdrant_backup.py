# -*- coding: utf-8 -*-
# Copyright: llmops-lab contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Qdrant backups through the snapshot API, plus the fingerprint a restore is verified against.

For each collection: ``POST /collections/<c>/snapshots`` (the server writes a tar archive and
reports its ``checksum``), stream it to ``<dest>/<c>.snapshot`` with ``QdrantClient.download_snapshot``
(sha256 computed while streaming, temp file + rename), compare the two checksums, then delete the
server-side snapshot (also when anything failed: best effort, reported). Snapshots are tar
archives of already compact segment files and are stored as they are (``compressed: false``).

The fingerprint of a collection (``fingerprint_collection``) is what a restore recomputes:
``points_count`` (exact count), ``vectors`` (the vector config) and ``ids_sha256``: the sha256
over the point ids in Qdrant's order (integers first, by value, then UUIDs by their 128-bit
value), one JSON-encoded id per line (``1\\n2\\n"3fa8...."\\n``), gathered by scrolling without
payloads or vectors.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid

from ansible.module_utils.llmops_backupset import run_times, utc
from ansible.module_utils.llmops_pipeline import hash_file
from ansible.module_utils.llmops_qdrant import QdrantError

SCROLL_PAGE = 1000
FULL_STORAGE_FILE = "full-storage.snapshot"


class QdrantBackupError(Exception):
    """A Qdrant backup step failed; the message says which and why (never the API key)."""


def _id_key(pid):
    if isinstance(pid, int) and not isinstance(pid, bool):
        return (0, pid)
    try:
        return (1, uuid.UUID(str(pid)).int)
    except ValueError:
        return (2, str(pid))


def ids_digest(ids):
    """sha256 over point ids sorted in Qdrant's order, one JSON-encoded id per line."""
    digest = hashlib.sha256()
    for pid in sorted(ids, key=_id_key):
        digest.update(json.dumps(pid).encode("utf-8") + b"\n")
    return digest.hexdigest()


def vectors_config(info):
    """The vector config (``config.params.vectors``) of a ``get_collection`` answer."""
    return ((info or {}).get("config") or {}).get("params", {}).get("vectors")


def fingerprint_collection(client, name, info=None):
    """``{points_count, vectors, ids_sha256}`` of a collection (see the module docstring)."""
    if info is None:
        info = client.get_collection(name)
    ids = [p["id"] for p in client.scroll_all(name, with_payload=False, with_vector=False, page=SCROLL_PAGE)]
    count = client.count(name, exact=True)
    return {"points_count": count, "vectors": vectors_config(info), "ids_sha256": ids_digest(ids),
            "ids_scrolled": len(ids)}


def snapshot_filename(collection):
    """``<collection>.snapshot``; refuses names that are not a single path component."""
    if not collection or "/" in collection or collection in (".", "..") or "\x00" in collection:
        raise QdrantBackupError("collection name %r cannot be used as a file name" % (collection,))
    return collection + ".snapshot"


def _fetch(client, dest_path, snap, download, delete, what, warnings):
    """Download a server-side snapshot, verify its checksum, always try to delete it on the server.

    Returns ``{snapshot, sha256, size, server_checksum, checksum_verified, server_snapshot_deleted}``.
    """
    name = snap.get("name") if isinstance(snap, dict) else None
    if not name:
        raise QdrantBackupError("%s: the server did not return a snapshot description: %r" % (what, snap))
    deleted = False
    try:
        sha = download(name, dest_path)
        server_sum = (snap.get("checksum") or "").strip().lower() or None
        digest, size = hash_file(dest_path)
        if digest != sha:
            os.unlink(dest_path)
            raise QdrantBackupError("%s: %s changed on disk after the download (sha256 %s, streamed %s)"
                                    % (what, dest_path, digest, sha))
        if server_sum is not None and server_sum != sha:
            os.unlink(dest_path)
            raise QdrantBackupError("%s: checksum mismatch for snapshot %s: the server reports sha256 %s, the "
                                    "downloaded file has %s; the file was removed, run the backup again"
                                    % (what, name, server_sum, sha))
        if server_sum is None:
            warnings.append("%s: the server reported no checksum for snapshot %s; only the local sha256 is kept"
                            % (what, name))
        if snap.get("size") is not None and int(snap["size"]) != size:
            os.unlink(dest_path)
            raise QdrantBackupError("%s: snapshot %s has %d bytes, the server announced %s"
                                    % (what, name, size, snap["size"]))
    finally:
        try:
            delete(name)
            deleted = True
        except QdrantError as exc:
            warnings.append("%s: could not delete the server-side snapshot %s: %s" % (what, name, exc))
    return {"snapshot": name, "sha256": sha, "size": size, "server_checksum": server_sum,
            "checksum_verified": server_sum is not None, "server_snapshot_deleted": deleted}


def inspect(client, collections=None):
    """Check-mode view: ``{server_version, collections: {name: {points_count, vectors}}}``; changes nothing."""
    names = list(collections) if collections else client.list_collections()
    out = {}
    for name in names:
        info = client.get_collection(name)
        out[name] = {"points_count": client.count(name, exact=True), "vectors": vectors_config(info)}
    return {"server_version": server_version(client), "collections": out}


def server_version(client):
    """The server's version from ``GET /`` (None when it does not say)."""
    try:
        return client.health().get("version")
    except QdrantError:
        return None


def backup(client, dest, collections=None, full_storage=False):
    """Snapshot every collection (or ``collections``) into ``dest``; return the manifest entry.

    ``dest`` is created 0700. Fails with ``QdrantBackupError``/``QdrantError`` on the first problem;
    the server-side snapshots taken so far are deleted either way.
    """
    started = utc()
    t0 = time.monotonic()
    version = server_version(client)
    names = list(collections) if collections else client.list_collections()
    if len(set(names)) != len(names):
        raise QdrantBackupError("collections lists a name twice: %s" % ", ".join(names))
    for name in names:
        snapshot_filename(name)
    infos = {name: client.get_collection(name) for name in names}  # a missing collection fails before any write
    os.makedirs(dest, mode=0o700, exist_ok=True)
    warnings = []
    files = []
    details = {}
    fingerprint = {}
    stable = True
    for name in names:
        before = fingerprint_collection(client, name, infos[name])
        snap = client.create_snapshot(name)
        path = os.path.join(dest, snapshot_filename(name))
        fetched = _fetch(client, path, snap,
                         lambda s, p, n=name: client.download_snapshot(n, s, p),
                         lambda s, n=name: client.delete_snapshot(n, s), "collection %s" % name, warnings)
        after = fingerprint_collection(client, name)
        if before != after:
            stable = False
            warnings.append("collection %s changed while its snapshot was taken (points %s -> %s): a restore may "
                            "differ slightly from the recorded fingerprint"
                            % (name, before["points_count"], after["points_count"]))
        files.append({"path": path, "sha256": fetched["sha256"], "size": fetched["size"]})
        fp = {k: after[k] for k in ("points_count", "vectors", "ids_sha256")}
        fingerprint[name] = fp
        details[name] = dict(fetched, file=os.path.basename(path), compressed=False, **fp)
    full = None
    if full_storage:
        snap = client.create_full_snapshot()
        path = os.path.join(dest, FULL_STORAGE_FILE)
        full = _fetch(client, path, snap, client.download_full_snapshot, client.delete_full_snapshot,
                      "full-storage snapshot", warnings)
        full.update(file=FULL_STORAGE_FILE, compressed=False)
        files.append({"path": path, "sha256": full["sha256"], "size": full["size"]})
    return {
        "status": "success",
        "type": "qdrant",
        "backup_type": "full",
        "tool": "qdrant snapshot API",
        "server_version": version,
        "url": client.url,
        **run_times(started, t0),
        "bytes": sum(f["size"] for f in files),
        "compressed": False,
        "files": files,
        "collections": details,
        "full_storage": full,
        "fingerprint": fingerprint,
        "fingerprint_stable": stable,
        "warnings": warnings,
    }
