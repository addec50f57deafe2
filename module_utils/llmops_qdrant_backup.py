# -*- coding: utf-8 -*-
# Copyright: llmops-lab contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Qdrant backups through the snapshot API, plus the fingerprint a restore is verified against.

For each collection: ``POST /collections/<c>/snapshots`` (the server writes a tar archive and
reports its ``checksum``), stream it to ``<dest>/<encode_name(c)>.snapshot`` with
``QdrantClient.download_snapshot`` (sha256 computed while streaming, temp file + rename), compare
the two checksums, then delete the server-side snapshot (also when anything failed: best effort,
reported). Snapshots are tar archives of already compact segment files and are stored as they are
(``compressed: false``). A collection name is data, never a path: the file name is
``llmops_backupset.encode_name`` of it, and the entry records the mapping (``collections.<c>.file``).

Fingerprint (``fingerprint_points``), the same whether it is computed from a snapshot file or from a
live server, so that a restore can recompute it: ``points_count``, ``vectors`` (the vector config),
``ids_sha256`` (sha256 over the point ids in Qdrant's order: integers first, by value, then UUIDs by
their 128-bit value; one JSON-encoded id per line) and ``points_sha256``: sha256 over one line per
point in the same order, the canonical JSON (sorted keys, ASCII, no blanks) of
``{"id", "payload", "vector"}`` where every dense vector is written as the hex of its little-endian
float32 values (Qdrant stores float32; named vectors by name, sparse ones as ``{indices, values}``).

What the recorded fingerprint describes (``collections.<c>.fingerprint_source``):

``snapshot``          computed from the downloaded snapshot file itself (``snapshot_fingerprint``). This
                      works for the lab's stand-in, whose archive holds the collection as JSON.
``server-unchanged``  a real Qdrant snapshot holds segment files (id tracker, mmap/chunked vector
                      storages, gridstore or RocksDB payloads) plus a WAL to replay: reading them would
                      mean reimplementing Qdrant's storage, and the REST API (OpenAPI 1.19) offers no
                      endpoint that describes a snapshot's content (only name, size, checksum). So the
                      server's fingerprint is taken right before and right after the snapshot and kept
                      only when both are identical: nothing was written meanwhile, so it is the
                      snapshot's. Otherwise the snapshot is taken again (``SNAPSHOT_ATTEMPTS`` in all).
``unverifiable``      the collection was written during every attempt: only ``vectors`` is recorded and
                      a restore says that it could not verify the content (never a silent pass).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import struct
import tarfile
import time
import uuid

from ansible.module_utils.llmops_backupset import (
    BackupSetError,
    boot_id,
    encode_name,
    isoformat,
    owner_state,
    process_start_time,
    read_json,
    run_times,
    utc,
    write_file_atomic,
)
from ansible.module_utils.llmops_common import LlmopsError
from ansible.module_utils.llmops_http import (
    ARTEFACT_SOURCES,
    SNAPSHOT_ATTEMPTS,
    SOURCE_SERVER,
    SOURCE_SNAPSHOT,
    SOURCE_UNVERIFIABLE,
    STANDIN_MARKER,
)
from ansible.module_utils.llmops_pipeline import age_recipients, hash_file, run_pipeline
from ansible.module_utils.llmops_qdrant import QdrantError

SCROLL_PAGE = 1000
FULL_STORAGE_FILE = "full-storage.snapshot"
SNAPSHOT_SUFFIX = ".snapshot"
FINGERPRINT_KEYS = ("points_count", "vectors", "ids_sha256", "points_sha256")
# The lab's Qdrant stand-in writes its collection snapshots in this format (see its standin.py).
STANDIN_SNAPSHOT_FORMAT = "llmops-lab-qdrant-standin-snapshot/1"


class QdrantBackupError(LlmopsError):
    """A Qdrant backup step failed; the message says which and why (never the API key)."""


def _id_key(pid):
    if isinstance(pid, int) and not isinstance(pid, bool):
        return (0, pid, "")
    try:
        return (1, uuid.UUID(str(pid)).int, "")
    except ValueError:
        return (2, 0, str(pid))


def ids_digest(ids):
    """sha256 over point ids sorted in Qdrant's order, one JSON-encoded id per line."""
    digest = hashlib.sha256()
    for pid in sorted(ids, key=_id_key):
        digest.update(json.dumps(pid).encode("utf-8") + b"\n")
    return digest.hexdigest()


def _floats(values):
    try:
        return struct.pack("<%df" % len(values), *values).hex()
    except (OverflowError, struct.error):  # not representable as float32: keep every bit of the float64
        return "f64:" + struct.pack("<%dd" % len(values), *values).hex()


def canonical_vector(vector):
    """A vector as it is hashed: dense -> hex of float32 values, named -> by name, sparse -> {indices, values}."""
    if vector is None:
        return None
    if isinstance(vector, list):
        if all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in vector):
            return _floats([float(x) for x in vector])
        return [canonical_vector(v) for v in vector]  # multi-vector
    if isinstance(vector, dict):
        if set(vector) == {"indices", "values"} and isinstance(vector["values"], list):
            return {"indices": list(vector["indices"]), "values": _floats([float(x) for x in vector["values"]])}
        return {str(k): canonical_vector(v) for k, v in vector.items()}
    return vector


def point_line(pid, vector, payload):
    """The canonical line of one point in ``points_sha256``."""
    doc = {"id": pid, "payload": payload if payload is not None else {}, "vector": canonical_vector(vector)}
    return json.dumps(doc, sort_keys=True, ensure_ascii=True, separators=(",", ":")).encode("ascii") + b"\n"


def fingerprint_points(points, vectors):
    """The fingerprint (see the module docstring) of an iterable of ``{id, vector, payload}``."""
    rows = []
    for point in points:
        pid = point["id"]
        rows.append((_id_key(pid), json.dumps(pid).encode("utf-8") + b"\n",
                     hashlib.sha256(point_line(pid, point.get("vector"), point.get("payload"))).digest()))
    rows.sort(key=lambda r: r[0])
    ids, pts = hashlib.sha256(), hashlib.sha256()
    for _key, id_line, point_digest in rows:
        ids.update(id_line)
        pts.update(point_digest)
    return {"points_count": len(rows), "vectors": vectors, "ids_sha256": ids.hexdigest(),
            "points_sha256": pts.hexdigest()}


def vectors_config(info):
    """The vector config (``config.params.vectors``) of a ``get_collection`` answer."""
    return ((info or {}).get("config") or {}).get("params", {}).get("vectors")


def fingerprint_collection(client, name, info=None):
    """The fingerprint of a live collection: every point scrolled with payload and vector, plus the exact count.

    ``points_count`` is the exact count when it agrees with the scroll, else the scroll's (the
    collection is being written); ``counted`` is the server's count.
    """
    if info is None:
        info = client.get_collection(name)
    fp = fingerprint_points(client.scroll_all(name, with_payload=True, with_vector=True, page=SCROLL_PAGE),
                            vectors_config(info))
    fp["counted"] = client.count(name, exact=True)
    return fp


def same_fingerprint(before, after):
    """Whether two live fingerprints are equal and each is self-consistent (scroll and exact count agree)."""
    consistent = all(fp.get("counted", fp["points_count"]) == fp["points_count"] for fp in (before, after))
    return consistent and all(before.get(k) == after.get(k) for k in FINGERPRINT_KEYS)


def snapshot_fingerprint(path, collection=None):
    """The fingerprint of what a collection snapshot file holds, or None when its format is not readable here.

    Reads the lab stand-in's format (``STANDIN.txt``, ``config.json``, ``points.json``). A real
    Qdrant snapshot (segments + WAL) returns None: see the module docstring. Raises
    ``QdrantBackupError`` for a stand-in archive that is incomplete or names another collection.
    """
    try:
        tar = tarfile.open(path, mode="r:")
    except (tarfile.TarError, OSError):
        return None
    with tar:
        first = tar.next()
        if first is None or first.name != STANDIN_MARKER:
            return None
        docs = {}
        for member in tar:
            if member.name in ("config.json", "points.json") and member.isfile():
                try:
                    docs[member.name] = json.loads(tar.extractfile(member).read().decode("utf-8"))
                except (ValueError, UnicodeDecodeError) as exc:
                    raise QdrantBackupError("snapshot %s: %s is not JSON: %s" % (path, member.name, exc)) from exc
    config, points = docs.get("config.json"), docs.get("points.json")
    if not isinstance(config, dict) or config.get("format") != STANDIN_SNAPSHOT_FORMAT or not isinstance(points, list):
        raise QdrantBackupError("snapshot %s is a stand-in archive without a readable config.json and points.json"
                                % path)
    if collection is not None and config.get("collection") != collection:
        raise QdrantBackupError("snapshot %s holds collection %r, not %r"
                                % (path, config.get("collection"), collection))
    fp = fingerprint_points(points, (config.get("config") or {}).get("vectors"))
    if config.get("points_count") is not None and int(config["points_count"]) != fp["points_count"]:
        raise QdrantBackupError("snapshot %s announces %s points and holds %d"
                                % (path, config["points_count"], fp["points_count"]))
    return fp


def snapshot_filename(collection):
    """``<encode_name(collection)>.snapshot``: one safe path component for any collection name."""
    try:
        return encode_name(collection) + SNAPSHOT_SUFFIX
    except BackupSetError as exc:
        raise QdrantBackupError(str(exc)) from exc


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


def encrypt_in_place(path, fetched):
    """With encryption on (``llmops_pipeline.configure_age``), replace the downloaded snapshot at ``path`` (checked
    against the server's checksum and fingerprinted already) by ``zstd | age`` of it under the same name; return
    ``fetched`` with the file's new ``sha256`` / ``size`` and the snapshot's own as ``snapshot_sha256`` /
    ``snapshot_size`` (what the server checks on upload). The clear download lives only inside the run's
    ``.partial`` set folder, until this returns. Without encryption: ``fetched`` with ``compressed`` false."""
    if not age_recipients():
        return dict(fetched, compressed=False, encrypted=False)
    sealed = path + ".age"
    try:
        result = run_pipeline(["cat", "--", path], sealed, source_name="snapshot")
        os.replace(sealed, path)
    finally:
        if os.path.lexists(sealed):
            os.unlink(sealed)
    return dict(fetched, sha256=result.sha256, size=result.bytes_out, snapshot_sha256=fetched["sha256"],
                snapshot_size=fetched["size"], compressed=True, encrypted=True)


def inspect(client, collections=None):
    """Check-mode view: ``{server_version, collections: {name: {points_count, vectors, file}}}``; changes nothing."""
    names = list(collections) if collections else client.list_collections()
    out = {}
    for name in names:
        info = client.get_collection(name)
        out[name] = {"points_count": client.count(name, exact=True), "vectors": vectors_config(info),
                     "file": snapshot_filename(name)}
    return {"server_version": server_version(client), "collections": out}


def server_version(client):
    """The server's version from ``GET /`` (None when it does not say)."""
    try:
        return client.health().get("version")
    except QdrantError:
        return None


def _file_names(names, full_storage):
    """``{collection: file name}``; refuses two collections (or one and the full-storage snapshot) on one file."""
    files = {name: snapshot_filename(name) for name in names}
    taken = {}
    for name, fname in files.items():
        if fname in taken or (full_storage and fname == FULL_STORAGE_FILE):
            raise QdrantBackupError("collections %r and %r would both be written to %s"
                                    % (taken.get(fname, "full storage"), name, fname))
        taken[fname] = name
    return files


LEDGER_FORMAT = "llmops-qdrant-snapshots/1"


class SnapshotLedger:
    """The server-side snapshots this module created and has not deleted yet, in a file under the backup root
    (LAYOUT ``qdrant_snapshots``), each with its owner: this module's process (host, boot, pid, start time).

    A run killed between a snapshot's creation and its deletion (SIGKILL, the OOM killer, a crash) leaves the
    snapshot on the server - a full copy of the collection on Qdrant's disk. Qdrant names snapshots itself
    (``<collection>-<peer>-<time>.snapshot``, no prefix of ours) and an operator's own snapshots look the same,
    so the ledger, not the name, says which are ours: ``sweep`` deletes those whose owner process is gone, and
    only those (a snapshot not in the ledger is never touched). Without a path (no backup root) nothing is kept.
    """

    def __init__(self, path, url):
        self.path = path
        self.url = url
        self.owner = {"host": socket.gethostname(), "boot_id": boot_id(), "pid": os.getpid(),
                      "pid_start": process_start_time(os.getpid()), "pid_cmd": "qdrant_backup"}

    def _load(self):
        if not self.path:
            return []
        try:
            doc = read_json(self.path)
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            raise QdrantBackupError("cannot read the snapshot ledger %s (%s): delete it, then check the server's "
                                    "snapshots (GET /collections/<c>/snapshots) for leftovers" % (self.path, exc)) \
                from exc
        entries = doc.get("snapshots") if isinstance(doc, dict) else None
        return [e for e in entries or [] if isinstance(e, dict) and e.get("name")]

    def _save(self, entries):
        if self.path:
            write_file_atomic(self.path, json.dumps({"format": LEDGER_FORMAT, "snapshots": entries}, indent=2,
                                                    sort_keys=True).encode("utf-8"))

    def add(self, collection, name):
        entries = self._load()
        entries.append(dict(self.owner, url=self.url, collection=collection, name=name, created=isoformat(utc())))
        self._save(entries)

    def drop(self, collection, name):
        entries = self._load()
        kept = [e for e in entries if not (e.get("url") == self.url and e.get("collection") == collection
                                           and e.get("name") == name)]
        if len(kept) != len(entries):
            self._save(kept)

    def sweep(self, client, warnings):
        """Delete this server's snapshots whose owner process is gone; returns ``["<collection>/<name>"]``."""
        entries = self._load()
        kept, deleted = [], []
        for entry in entries:
            state, why = owner_state(entry, "snapshot ledger entry")
            if entry.get("url") != self.url or state != "dead":
                kept.append(entry)
                continue
            collection, name = entry.get("collection"), entry["name"]
            label = "%s/%s" % (collection or "(full storage)", name)
            try:
                if collection:
                    client.delete_snapshot(collection, name)
                else:
                    client.delete_full_snapshot(name)
            except QdrantError as exc:
                if exc.status != 404:  # 404: gone already (deleted by hand, or the collection with it)
                    warnings.append("could not delete the server-side snapshot %s left by a backup that died: %s; "
                                    "it is tried again at the next run" % (label, exc))
                    kept.append(entry)
                    continue
            deleted.append(label)
            warnings.append("deleted the server-side snapshot %s that a backup which died had left (%s)"
                            % (label, why))
        if len(kept) != len(entries):
            self._save(kept)
        return deleted


class _Snapshotter:
    """Takes one collection's snapshot and the fingerprint of what it holds (see the module docstring)."""

    def __init__(self, client, warnings, ledger=None):
        self.client = client
        self.warnings = warnings
        self.ledger = ledger or SnapshotLedger(None, client.url)
        self.readable = None  # whether this server's snapshots can be read here (learnt from the first one)

    def _take(self, name, path):
        snap = self.client.create_snapshot(name)
        if isinstance(snap, dict) and snap.get("name"):
            try:
                self.ledger.add(name, snap["name"])
            except OSError:  # not recorded (a full backup volume): not kept on the server either
                try:
                    self.client.delete_snapshot(name, snap["name"])
                except QdrantError:
                    pass
                raise

        def delete(snapshot):
            self.client.delete_snapshot(name, snapshot)
            self.ledger.drop(name, snapshot)

        return _fetch(self.client, path, snap, lambda s, p: self.client.download_snapshot(name, s, p),
                      delete, "collection %s" % name, self.warnings)

    def collection(self, name, path):
        """``(fetched, fingerprint, source, attempts)`` for collection ``name`` written to ``path``."""
        attempts = 0
        while True:
            attempts += 1
            before = fingerprint_collection(self.client, name) if self.readable is False else None
            fetched = self._take(name, path)
            fp = snapshot_fingerprint(path, name)
            if fp is not None:
                self.readable = True
                return fetched, fp, SOURCE_SNAPSHOT, attempts
            if before is None:  # the first unreadable snapshot: take it again between two server fingerprints
                self.readable = False
                self.warnings.append(
                    "collection %s: the snapshot's format cannot be read here (a real Qdrant snapshot); its "
                    "fingerprint is the server's, taken right before and after the snapshot when the two agree"
                    % name)
                attempts -= 1
                continue
            after = fingerprint_collection(self.client, name)
            if same_fingerprint(before, after):
                return fetched, {k: after[k] for k in FINGERPRINT_KEYS}, SOURCE_SERVER, attempts
            if attempts >= SNAPSHOT_ATTEMPTS:
                self.warnings.append(
                    "collection %s was written during each of %d snapshots: the snapshot is kept but its content "
                    "has no fingerprint (fingerprint_source %s); a restore cannot verify it"
                    % (name, attempts, SOURCE_UNVERIFIABLE))
                return fetched, {"vectors": after["vectors"]}, SOURCE_UNVERIFIABLE, attempts
            self.warnings.append("collection %s was written while its snapshot was taken (points %s -> %s); "
                                 "taking it again" % (name, before["points_count"], after["points_count"]))


def backup(client, dest, collections=None, full_storage=False, ledger_path=None):
    """Snapshot every collection (or ``collections``) into ``dest``; return the manifest entry.

    ``dest`` is created 0700. Fails with ``QdrantBackupError``/``QdrantError`` on the first problem;
    the server-side snapshots taken so far are deleted either way. Without ``collections`` (every
    collection of the server), one dropped between the listing and its snapshot is left out and named
    in ``vanished`` (and a warning); a named one that is missing fails the backup.

    ``ledger_path`` (LAYOUT ``qdrant_snapshots`` of the backup root): every snapshot is recorded there from its
    creation to its deletion, and the snapshots a killed run left are deleted first (``SnapshotLedger``;
    ``stale_snapshots_deleted``).
    """
    started = utc()
    t0 = time.monotonic()
    version = server_version(client)
    warnings = []
    ledger = SnapshotLedger(ledger_path, client.url)
    stale = ledger.sweep(client, warnings)
    names = list(collections) if collections else client.list_collections()
    if len(set(names)) != len(names):
        raise QdrantBackupError("collections lists a name twice: %s" % ", ".join(names))
    file_names = _file_names(names, full_storage)
    vanished = []
    for name in list(names):
        try:
            client.get_collection(name)  # a missing collection fails before any write
        except QdrantError as exc:
            if collections or exc.status != 404:
                raise
            names.remove(name)  # listed a moment ago, dropped since
            vanished.append(name)
    os.makedirs(dest, mode=0o700, exist_ok=True)
    files = []
    details = {}
    fingerprint = {}
    snapshotter = _Snapshotter(client, warnings, ledger)
    for name in names:
        path = os.path.join(dest, file_names[name])
        try:
            fetched, fp, source, attempts = snapshotter.collection(name, path)
        except QdrantError as exc:
            # Only a collection the run was not asked for by name, and that is really gone, is skipped.
            if collections or exc.status != 404 or client.collection_exists(name):
                raise
            if os.path.lexists(path):
                os.unlink(path)
            vanished.append(name)
            continue
        fetched = encrypt_in_place(path, fetched)
        files.append({"path": path, "sha256": fetched["sha256"], "size": fetched["size"]})
        fingerprint[name] = fp
        details[name] = dict(fetched, file=file_names[name], fingerprint_source=source,
                             snapshot_attempts=attempts, **fp)
    full = None
    if full_storage:
        snap = client.create_full_snapshot()
        if isinstance(snap, dict) and snap.get("name"):
            ledger.add(None, snap["name"])

        def delete_full(snapshot):
            client.delete_full_snapshot(snapshot)
            ledger.drop(None, snapshot)

        path = os.path.join(dest, FULL_STORAGE_FILE)
        full = _fetch(client, path, snap, client.download_full_snapshot, delete_full, "full-storage snapshot",
                      warnings)
        full = encrypt_in_place(path, full)
        full.update(file=FULL_STORAGE_FILE)
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
        "fingerprint_stable": all(d["fingerprint_source"] in ARTEFACT_SOURCES for d in details.values()),
        "vanished": vanished,
        "stale_snapshots_deleted": stale,
        "warnings": warnings + ["collection %s was dropped during the backup: not in the set" % name
                                for name in vanished],
    }
