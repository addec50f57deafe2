#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""llmops-lab STAND-IN for the Qdrant 1.19.0 REST API.

THIS IS NOT QDRANT.  It is a small, stdlib-only HTTP server that implements the
subset of Qdrant's REST API used by the llmops-lab backup bundle (collections,
points upsert/count/scroll/retrieve, collection and full-storage snapshots),
with response bodies shaped like Qdrant's OpenAPI document.  There is no vector
index and no search.  Points are kept as JSON on disk, snapshots are plain tar
archives in a stand-in format that real Qdrant cannot restore (and vice versa).
Production uses the official qdrant/qdrant image.
"""

from __future__ import annotations

import argparse
import datetime as dt
import email.message
import email.parser
import hashlib
import hmac
import io
import json
import math
import os
import random
import re
import signal
import sys
import tarfile
import tempfile
import threading
import time
import traceback
import urllib.error
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, unquote, urlsplit

QDRANT_VERSION = "1.19.0"
TITLE = "qdrant - vector search engine (llmops-lab STAND-IN, not Qdrant)"
SNAPSHOT_FORMAT = "llmops-lab-qdrant-standin-snapshot/1"
STORAGE_FORMAT = "llmops-lab-qdrant-standin-collection/1"
STANDIN_NOTE = (
    "This archive was written by the llmops-lab Qdrant STAND-IN (standin.py).\n"
    "It is NOT a real Qdrant snapshot: it holds the collection config and points as JSON\n"
    "and can only be restored by the stand-in.  Real Qdrant cannot recover from it.\n"
)
CHUNK = 1 << 20
MAX_JSON_BODY = 32 * 1024 * 1024  # Qdrant's default service.max_request_size_mb
MAX_DRAIN = 256 * 1024 * 1024  # unread bodies up to this size are drained before an error answer
DISTANCES = ("Cosine", "Euclid", "Dot", "Manhattan")
PRIORITIES = ("snapshot", "replica", "no_sync")
UNAUTHENTICATED_PATHS = ("/healthz", "/livez", "/readyz")
_BAD_NAME_CHARS = re.compile(r'[<>:"/\\|?*\x00-\x1f]')
_SNAPSHOT_NAME = re.compile(r"^[^/\\\x00-\x1f]+\.snapshot$")


# --------------------------------------------------------------------------- configuration (as Qdrant reads it)


class ConfigError(Exception):
    """A configuration file the stand-in cannot read: it refuses to start (never without the key it was given)."""


_CONFIG_KEY = re.compile(r"([A-Za-z0-9_.-]+)[ \t]*:(?:[ \t]+(.*))?$")


def _yaml_scalar(text: str, where: str):
    """One YAML scalar of the subset the stand-in reads: plain, 'single-quoted' or "double-quoted" (JSON escapes)."""
    text = text.strip()
    if text[:1] == '"':
        try:
            value, end = json.JSONDecoder().raw_decode(text)
        except ValueError:
            raise ConfigError(f"{where}: a double-quoted string the stand-in cannot read (it reads JSON escapes)") \
                from None
        rest = text[end:].strip()
    elif text[:1] == "'":
        out, i = [], 1
        while True:
            j = text.find("'", i)
            if j < 0:
                raise ConfigError(f"{where}: unterminated single-quoted string")
            out.append(text[i:j])
            if text[j + 1:j + 2] == "'":
                out.append("'")
                i = j + 2
                continue
            value, rest = "".join(out), text[j + 1:].strip()
            break
    else:
        comment = re.search(r"[ \t]#", text)
        value = (text[:comment.start()] if comment else text).strip()
        if value[:1] in tuple("[{&*!|>%@`"):
            raise ConfigError(f"{where}: {value[:1]!r} (flow collections, anchors, tags, block scalars) is beyond "
                              "the YAML the stand-in reads")
        lowered = value.lower()
        if lowered in ("", "~", "null"):
            return None
        if lowered in ("true", "false"):
            return lowered == "true"
        if re.fullmatch(r"[-+]?[0-9]+", value):
            return int(value)
        return value
    if rest and not rest.startswith("#"):
        raise ConfigError(f"{where}: unexpected text after the string")
    return value


def load_config_text(text: str, name: str) -> dict:
    """A Qdrant configuration file's mappings: a JSON document, or YAML block mappings of scalars (the subset that
    roles/stack writes and config.yaml-style settings use); anything else is a ConfigError, never skipped."""
    if text.lstrip().startswith("{"):
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"{name}: not JSON ({exc})") from None
        if not isinstance(doc, dict):
            raise ConfigError(f"{name}: not a mapping")
        return doc
    root: dict = {}
    stack: list = [(-1, root)]
    for number, raw in enumerate(text.splitlines(), 1):
        where = f"{name}:{number}"
        stripped = raw.strip()
        if not stripped or stripped.startswith("#") or stripped in ("---", "..."):
            continue
        indent = len(raw) - len(raw.lstrip(" "))
        if raw[indent:indent + 1] == "\t":
            raise ConfigError(f"{where}: a tab in the indentation")
        match = _CONFIG_KEY.match(stripped)
        if not match:
            raise ConfigError(f"{where}: not a `key: value` line (lists and other YAML are beyond the stand-in)")
        while indent <= stack[-1][0]:
            stack.pop()
        parent = stack[-1][1]
        key, value = match.group(1), match.group(2)
        if key in parent:
            raise ConfigError(f"{where}: {key} is set twice")
        if value is None or not value.strip() or value.strip().startswith("#"):
            parent[key] = {}
            stack.append((indent, parent[key]))
        else:
            parent[key] = _yaml_scalar(value, where)
    return root


def _merge(into: dict, more: dict) -> dict:
    for key, value in more.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value
    return into


def load_settings(config_path: str | None = None, env=None, workdir: str | None = None) -> tuple[dict, list]:
    """The settings as Qdrant 1.19 builds them: config/config.yaml, config/<RUN_MODE>.yaml (RUN_MODE default
    development), config/local.yaml (relative to the working folder, /qdrant in the image; each optional, any of
    the extensions .yaml, .yml, .json), then --config-path (required to exist), then QDRANT__SECTION__KEY
    variables. Returns (settings, files read)."""
    env = os.environ if env is None else env
    base = os.path.join(workdir or os.getcwd(), "config")
    settings: dict = {}
    read = []
    candidates = [os.path.join(base, stem) for stem in ("config", env.get("RUN_MODE") or "development", "local")]
    for stem in candidates:
        for ext in (".yaml", ".yml", ".json"):
            if os.path.isfile(stem + ext):
                path = stem + ext
                break
        else:
            continue
        with open(path, encoding="utf-8") as handle:
            _merge(settings, load_config_text(handle.read(), path))
        read.append(path)
    if config_path:
        try:
            with open(config_path, encoding="utf-8") as handle:
                text = handle.read()
        except OSError as exc:
            raise ConfigError(f"--config-path {config_path}: {exc.strerror}") from None
        _merge(settings, load_config_text(text, config_path))
        read.append(config_path)
    for name, value in env.items():
        if name.startswith("QDRANT__") and value != "":
            parts = [p.lower() for p in name[len("QDRANT__"):].split("__") if p]
            node = settings
            for part in parts[:-1]:
                if not isinstance(node.get(part), dict):
                    node[part] = {}
                node = node[part]
            if parts:
                node[parts[-1]] = value
    return settings, read


def _setting(settings: dict, section: str, key: str):
    node = settings.get(section)
    return node.get(key) if isinstance(node, dict) else None


class ApiError(Exception):
    """An error answered to the client as a Qdrant-style error body."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def not_found_collection(name: str) -> ApiError:
    return ApiError(404, f"Not found: Collection `{name}` doesn't exist!")


# --------------------------------------------------------------------------- helpers


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0)


def fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str, data: bytes) -> None:
    """Write data to path atomically: temp file in the same dir + fsync + rename + fsync dir."""
    directory = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(directory)


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def validate_collection_name(name: str) -> None:
    if not name or len(name) > 255 or name in (".", "..") or name.startswith(".") or _BAD_NAME_CHARS.search(name):
        raise ApiError(
            422,
            f"Validation error in path parameters: [collection_name: invalid collection name {name!r}: "
            'must be 1..255 chars, not start with "." and not contain <>:"/\\|?* or control chars]',
        )


def validate_snapshot_name(name: str) -> None:
    if not _SNAPSHOT_NAME.match(name) or name.startswith("."):
        raise ApiError(404, f"Not found: Snapshot file `{name}` does not exist!")


def norm_point_id(value):
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**64:
        return value
    if isinstance(value, str):
        try:
            return str(uuid.UUID(value))
        except ValueError:
            pass
    raise ApiError(
        400,
        f"Format error in JSON body: value {value!r} is not a valid point ID, "
        "valid values are either an unsigned integer or a UUID",
    )


def point_sort_key(pid):
    # Qdrant orders numeric ids before UUIDs; UUIDs by their 128-bit value.
    if isinstance(pid, int):
        return (0, pid)
    return (1, uuid.UUID(pid).int)


def is_single_vector_config(vectors) -> bool:
    return isinstance(vectors, dict) and "size" in vectors and "distance" in vectors


def validate_vector_params(params, where: str) -> dict:
    if not isinstance(params, dict):
        raise ApiError(400, f"Format error in JSON body: {where}: expected an object with size and distance")
    size = params.get("size")
    distance = params.get("distance")
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ApiError(422, f"Validation error in JSON body: [{where}.size: value {size!r} invalid, must be >= 1]")
    if distance not in DISTANCES:
        raise ApiError(
            400,
            f"Format error in JSON body: {where}.distance: unknown variant `{distance}`, "
            f"expected one of {', '.join(f'`{d}`' for d in DISTANCES)}",
        )
    out = {"size": size, "distance": distance}
    if "on_disk" in params and isinstance(params["on_disk"], bool):
        out["on_disk"] = params["on_disk"]
    return out


def validate_vectors_config(vectors) -> dict:
    if vectors is None:
        raise ApiError(400, "Bad request: the llmops-lab stand-in needs `vectors` in the collection config")
    if is_single_vector_config(vectors):
        return validate_vector_params(vectors, "vectors")
    if isinstance(vectors, dict) and vectors:
        return {str(k): validate_vector_params(v, f"vectors.{k}") for k, v in vectors.items()}
    raise ApiError(400, "Format error in JSON body: vectors: expected {size, distance} or a map of named vectors")


def _number_list(vec, where: str) -> list:
    if not isinstance(vec, list) or not all(
        isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in vec
    ):
        raise ApiError(400, f"Format error in JSON body: {where}: expected a dense vector (array of numbers)")
    return [float(x) for x in vec]


def _prepare_dense(vec, params: dict, where: str, normalize: bool = True) -> list:
    floats = _number_list(vec, where)
    if len(floats) != params["size"]:
        raise ApiError(
            400, f"Wrong input: Vector dimension error: expected dim: {params['size']}, got {len(floats)}"
        )
    if params["distance"] == "Cosine" and normalize:
        # Like Qdrant, Cosine vectors are normalised on insert.
        norm = math.sqrt(sum(x * x for x in floats))
        if norm > 0:
            floats = [x / norm for x in floats]
    return floats


def prepare_vector(vectors_config: dict, vec, normalize: bool = True):
    """A point's vector as stored; ``normalize=False`` for vectors read back from a snapshot, which were
    normalised when they were first inserted (normalising again could change their last bit; Qdrant
    restores a snapshot's vectors as they are)."""
    if is_single_vector_config(vectors_config):
        if isinstance(vec, dict) and set(vec) == {""}:
            vec = vec[""]
        return _prepare_dense(vec, vectors_config, "vector", normalize)
    if not isinstance(vec, dict):
        raise ApiError(400, "Wrong input: Not existing vector name error: (collection has named vectors only)")
    out = {}
    for vname, value in vec.items():
        if vname not in vectors_config:
            raise ApiError(400, f"Wrong input: Not existing vector name error: {vname}")
        out[vname] = _prepare_dense(value, vectors_config[vname], f"vector.{vname}", normalize)
    return out


def select_payload(payload: dict, spec):
    if spec is None or spec is True:
        return dict(payload)
    if spec is False:
        return None
    if isinstance(spec, list):
        return {k: payload[k] for k in spec if k in payload}
    if isinstance(spec, dict):
        if "include" in spec:
            keys = spec["include"] if isinstance(spec["include"], list) else [spec["include"]]
            return {k: payload[k] for k in keys if k in payload}
        if "exclude" in spec:
            keys = spec["exclude"] if isinstance(spec["exclude"], list) else [spec["exclude"]]
            return {k: v for k, v in payload.items() if k not in keys}
    raise ApiError(400, "Format error in JSON body: with_payload: expected bool, list of keys or include/exclude")


def select_vector(vector, spec):
    if spec is None or spec is False:
        return None
    if spec is True:
        return vector
    if isinstance(spec, list):
        if isinstance(vector, dict):
            return {k: v for k, v in vector.items() if k in spec}
        return vector if "" in spec else None
    raise ApiError(400, "Format error in JSON body: with_vector: expected bool or list of vector names")


def default_collection_info_config(config: dict) -> dict:
    return {
        "params": {
            "vectors": config["vectors"],
            "shard_number": 1,
            "replication_factor": 1,
            "write_consistency_factor": 1,
            "on_disk_payload": True,
        },
        "hnsw_config": {"m": 16, "ef_construct": 100, "full_scan_threshold": 10000, "max_indexing_threads": 0},
        "optimizer_config": {
            "deleted_threshold": 0.2,
            "vacuum_min_vector_number": 1000,
            "default_segment_number": 0,
            "max_segment_size": None,
            "memmap_threshold": None,
            "indexing_threshold": 10000,
            "flush_interval_sec": 5,
            "max_optimization_threads": None,
        },
        "wal_config": {"wal_capacity_mb": 32, "wal_segments_ahead": 0, "wal_retain_closed": 1},
        "quantization_config": None,
        "strict_mode_config": {"enabled": False},
        "metadata": config.get("metadata") or None,
    }


# --------------------------------------------------------------------------- storage


class Collection:
    def __init__(self, name: str, config: dict, points: dict | None = None, operation_id: int = 0):
        self.name = name
        self.config = config
        self.points = points if points is not None else {}
        self.operation_id = operation_id
        self._sorted: list | None = None

    def sorted_ids(self) -> list:
        if self._sorted is None:
            self._sorted = sorted(self.points, key=point_sort_key)
        return self._sorted

    def touch(self) -> None:
        self._sorted = None

    def points_as_list(self) -> list:
        return [{"id": pid, "vector": self.points[pid][0], "payload": self.points[pid][1]} for pid in self.sorted_ids()]

    def load_points(self, items) -> None:
        if not isinstance(items, list):
            raise ApiError(400, "Bad request: points must be a list")
        points = {}
        for item in items:
            if not isinstance(item, dict) or "id" not in item:
                raise ApiError(400, "Bad request: every point needs an id")
            pid = norm_point_id(item["id"])
            vector = prepare_vector(self.config["vectors"], item.get("vector"), normalize=False)
            payload = item.get("payload") or {}
            if not isinstance(payload, dict):
                raise ApiError(400, "Format error in JSON body: payload must be an object")
            points[pid] = (vector, payload)
        self.points = points
        self.touch()


class Store:
    def __init__(self, storage_path: str, snapshots_path: str):
        self.storage_path = os.path.abspath(storage_path)
        self.snapshots_path = os.path.abspath(snapshots_path)
        self.collections_dir = os.path.join(self.storage_path, "collections")
        self.tmp_dir = os.path.join(self.snapshots_path, ".tmp")
        self.lock = threading.RLock()
        self.collections: dict[str, Collection] = {}
        for path in (self.storage_path, self.collections_dir, self.snapshots_path, self.tmp_dir):
            os.makedirs(path, exist_ok=True)
        self.peer_id = self._peer_id()
        self._load()

    # -- persistence
    def _peer_id(self) -> int:
        path = os.path.join(self.storage_path, "standin_peer_id")
        try:
            with open(path, encoding="ascii") as fh:
                return int(fh.read().strip())
        except (OSError, ValueError):
            peer = random.SystemRandom().randint(10**15, 2**53)
            atomic_write(path, str(peer).encode("ascii"))
            return peer

    def _collection_file(self, name: str) -> str:
        return os.path.join(self.collections_dir, name + ".json")

    def _load(self) -> None:
        for entry in sorted(os.listdir(self.collections_dir)):
            path = os.path.join(self.collections_dir, entry)
            if entry.startswith(".tmp-"):
                os.unlink(path)  # leftover of an interrupted atomic write
                continue
            if not entry.endswith(".json") or entry.startswith("."):
                continue
            with open(path, encoding="utf-8") as fh:
                doc = json.load(fh)
            coll = Collection(doc["name"], doc["config"], operation_id=int(doc.get("operation_id", 0)))
            coll.points = {
                (p["id"] if isinstance(p["id"], int) else str(p["id"])): (p["vector"], p.get("payload") or {})
                for p in doc.get("points", [])
            }
            self.collections[coll.name] = coll
        for entry in os.listdir(self.tmp_dir):
            try:
                os.unlink(os.path.join(self.tmp_dir, entry))
            except OSError:
                pass

    def persist(self, coll: Collection) -> None:
        doc = {
            "format": STORAGE_FORMAT,
            "name": coll.name,
            "config": coll.config,
            "operation_id": coll.operation_id,
            "points": coll.points_as_list(),
        }
        atomic_write(self._collection_file(coll.name), json.dumps(doc, ensure_ascii=False).encode("utf-8"))

    def get(self, name: str) -> Collection:
        validate_collection_name(name)
        coll = self.collections.get(name)
        if coll is None:
            raise not_found_collection(name)
        return coll

    # -- collections
    def create(self, name: str, body: dict) -> None:
        validate_collection_name(name)
        config = {"vectors": validate_vectors_config(body.get("vectors"))}
        if isinstance(body.get("metadata"), dict):
            config["metadata"] = body["metadata"]
        with self.lock:
            if name in self.collections:
                raise ApiError(409, f"Wrong input: Collection `{name}` already exists!")
            coll = Collection(name, config)
            self.persist(coll)
            self.collections[name] = coll

    def delete(self, name: str) -> bool:
        validate_collection_name(name)
        with self.lock:
            if self.collections.pop(name, None) is None:
                return False
            try:
                os.unlink(self._collection_file(name))
            except FileNotFoundError:
                pass
            fsync_dir(self.collections_dir)
            return True

    def upsert(self, name: str, body: dict) -> int:
        if "points" in body:
            items = body["points"]
            if not isinstance(items, list):
                raise ApiError(400, "Format error in JSON body: points must be an array")
        elif isinstance(body.get("batch"), dict):
            batch = body["batch"]
            ids = batch.get("ids") or []
            vectors = batch.get("vectors") or []
            payloads = batch.get("payloads") or [None] * len(ids)
            if not (len(ids) == len(vectors) == len(payloads)):
                raise ApiError(400, "Wrong input: batch ids, vectors and payloads must have the same length")
            items = [{"id": i, "vector": v, "payload": p} for i, v, p in zip(ids, vectors, payloads, strict=True)]
        else:
            raise ApiError(400, "Format error in JSON body: expected `points` or `batch`")
        if body.get("update_filter") is not None:
            raise ApiError(400, "Bad request: update_filter is not supported by the llmops-lab stand-in")
        with self.lock:
            coll = self.get(name)
            prepared = []
            for item in items:
                if not isinstance(item, dict) or "id" not in item or "vector" not in item:
                    raise ApiError(400, "Format error in JSON body: every point needs `id` and `vector`")
                payload = item.get("payload")
                if payload is None:
                    payload = {}
                if not isinstance(payload, dict):
                    raise ApiError(400, "Format error in JSON body: payload must be an object")
                prepared.append((norm_point_id(item["id"]), prepare_vector(coll.config["vectors"], item["vector"]),
                                 payload))
            for pid, vector, payload in prepared:
                coll.points[pid] = (vector, payload)
            coll.touch()
            coll.operation_id += 1
            self.persist(coll)
            return coll.operation_id - 1

    # -- snapshots
    def _unique_name(self, directory: str, prefix: str) -> tuple[str, dt.datetime]:
        stamp = utcnow()
        while True:
            name = f"{prefix}-{stamp.strftime('%Y-%m-%d-%H-%M-%S')}.snapshot"
            if not os.path.exists(os.path.join(directory, name)):
                return name, stamp
            # Two snapshots in the same second: real Qdrant would overwrite; the stand-in moves on a second.
            stamp += dt.timedelta(seconds=1)

    def _write_snapshot(self, directory: str, name: str, members: list[tuple[str, bytes]]) -> dict:
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix="snapshot-", dir=self.tmp_dir)
        mtime = time.time()
        try:
            with os.fdopen(fd, "wb") as raw:
                with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
                    for member_name, data in members:
                        info = tarfile.TarInfo(member_name)
                        info.size = len(data)
                        info.mtime = int(mtime)
                        info.mode = 0o644
                        info.uname = info.gname = "qdrant"
                        tar.addfile(info, io.BytesIO(data))
                raw.flush()
                os.fsync(raw.fileno())
            checksum = sha256_file(tmp)
            final = os.path.join(directory, name)
            os.replace(tmp, final)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        atomic_write(final + ".checksum", checksum.encode("ascii"))
        fsync_dir(directory)
        return describe_snapshot(final)

    @staticmethod
    def _collection_members(coll: Collection, prefix: str = "") -> list[tuple[str, bytes]]:
        config = {
            "format": SNAPSHOT_FORMAT,
            "collection": coll.name,
            "qdrant_version": QDRANT_VERSION,
            "config": coll.config,
            "operation_id": coll.operation_id,
            "points_count": len(coll.points),
        }
        return [
            (prefix + "config.json", json.dumps(config, ensure_ascii=False, indent=1).encode("utf-8")),
            (prefix + "points.json", json.dumps(coll.points_as_list(), ensure_ascii=False).encode("utf-8")),
        ]

    def create_collection_snapshot(self, name: str) -> dict:
        with self.lock:
            coll = self.get(name)
            members = [("STANDIN.txt", STANDIN_NOTE.encode("utf-8"))] + self._collection_members(coll)
            directory = os.path.join(self.snapshots_path, name)
            os.makedirs(directory, exist_ok=True)
            snap_name, _ = self._unique_name(directory, f"{name}-{self.peer_id}")
            return self._write_snapshot(directory, snap_name, members)

    def create_full_snapshot(self) -> dict:
        with self.lock:
            members = [("STANDIN.txt", STANDIN_NOTE.encode("utf-8"))]
            names = sorted(self.collections)
            manifest = {"format": SNAPSHOT_FORMAT, "kind": "full", "collections": names, "aliases": {}}
            members.append(("config.json", json.dumps(manifest, ensure_ascii=False).encode("utf-8")))
            for cname in names:
                members += self._collection_members(self.collections[cname], f"collections/{cname}/")
            snap_name, _ = self._unique_name(self.snapshots_path, "full-snapshot")
            return self._write_snapshot(self.snapshots_path, snap_name, members)

    def snapshot_dir(self, collection: str | None) -> str:
        if collection is None:
            return self.snapshots_path
        return os.path.join(self.snapshots_path, collection)

    def list_snapshots(self, collection: str | None) -> list:
        directory = self.snapshot_dir(collection)
        if not os.path.isdir(directory):
            return []
        out = []
        for entry in sorted(os.listdir(directory)):
            path = os.path.join(directory, entry)
            if entry.endswith(".snapshot") and not entry.startswith(".") and os.path.isfile(path):
                out.append(describe_snapshot(path))
        return out

    def snapshot_path(self, collection: str | None, snapshot: str) -> str:
        validate_snapshot_name(snapshot)
        path = os.path.join(self.snapshot_dir(collection), snapshot)
        if not os.path.isfile(path):
            raise ApiError(404, f"Not found: Snapshot file `{snapshot}` does not exist!")
        return path

    def delete_snapshot(self, collection: str | None, snapshot: str) -> None:
        with self.lock:
            path = self.snapshot_path(collection, snapshot)
            os.unlink(path)
            try:
                os.unlink(path + ".checksum")
            except FileNotFoundError:
                pass
            fsync_dir(os.path.dirname(path))

    def recover(self, name: str, path: str, priority: str | None, checksum: str | None) -> None:
        validate_collection_name(name)
        if priority is not None and priority not in PRIORITIES:
            raise ApiError(
                400, f"Format error in query: priority: unknown variant `{priority}`, expected one of "
                + ", ".join(f"`{p}`" for p in PRIORITIES),
            )
        if checksum:
            actual = sha256_file(path)
            if not hmac.compare_digest(actual.lower(), checksum.strip().lower()):
                raise ApiError(400, f"Wrong input: Snapshot checksum mismatch: expected {checksum}, got {actual}")
        try:
            with tarfile.open(path, mode="r:*") as tar:
                names = set(tar.getnames())
                if "STANDIN.txt" not in names or "config.json" not in names or "points.json" not in names:
                    raise ApiError(
                        400,
                        "Bad request: not an llmops-lab stand-in collection snapshot "
                        "(real Qdrant snapshots cannot be recovered by the stand-in)",
                    )
                config = json.loads(tar.extractfile("config.json").read().decode("utf-8"))
                points = json.loads(tar.extractfile("points.json").read().decode("utf-8"))
        except (tarfile.TarError, OSError, ValueError, AttributeError) as exc:
            raise ApiError(400, f"Bad request: cannot read snapshot archive: {exc}") from None
        if config.get("format") != SNAPSHOT_FORMAT or not isinstance(config.get("config"), dict):
            raise ApiError(400, "Bad request: unsupported snapshot format (full snapshots cannot be recovered)")
        coll_config = {"vectors": validate_vectors_config(config["config"].get("vectors"))}
        if isinstance(config["config"].get("metadata"), dict):
            coll_config["metadata"] = config["config"]["metadata"]
        coll = Collection(name, coll_config, operation_id=int(config.get("operation_id", 0)))
        coll.load_points(points)
        with self.lock:
            self.persist(coll)
            self.collections[name] = coll


def content_disposition(filename: str) -> str:
    """``attachment`` with the file name as RFC 6266 wants it: HTTP headers are latin-1, so a name
    outside printable ASCII (a collection called in Korean, with emoji...) goes into ``filename*``
    (UTF-8, percent-encoded) with an ASCII stand-in in ``filename``."""
    fallback = "".join(ch if " " <= ch <= "~" and ch not in '"\\%' else "_" for ch in filename)
    if fallback == filename:
        return f'attachment; filename="{filename}"'
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


def describe_snapshot(path: str) -> dict:
    st = os.stat(path)
    checksum = None
    try:
        with open(path + ".checksum", encoding="ascii") as fh:
            checksum = fh.read().strip() or None
    except OSError:
        pass
    created = dt.datetime.fromtimestamp(st.st_mtime, dt.UTC).replace(tzinfo=None, microsecond=0)
    return {
        "name": os.path.basename(path),
        "creation_time": created.isoformat(),
        "size": st.st_size,
        "checksum": checksum,
    }


# --------------------------------------------------------------------------- HTTP


class BodyReader:
    """Reads at most `length` bytes of a request body."""

    def __init__(self, rfile, length: int):
        self.rfile = rfile
        self.remaining = length

    def read(self, size: int = CHUNK) -> bytes:
        if self.remaining <= 0:
            return b""
        data = self.rfile.read(min(size, self.remaining))
        if not data:
            raise ApiError(400, "Bad request: request body ended early")
        self.remaining -= len(data)
        return data

    def drain(self) -> None:
        while self.read():
            pass


def parse_multipart_to_file(reader: BodyReader, boundary: bytes, field: str, tmp_dir: str) -> str | None:
    """Stream a multipart/form-data body; the part named `field` is written to a temp file (path returned)."""
    delim = b"--" + boundary
    sep = b"\r\n" + delim
    buf = b""
    while True:  # preamble up to the first delimiter
        idx = buf.find(delim)
        if idx >= 0:
            buf = buf[idx + len(delim):]
            break
        chunk = reader.read()
        if not chunk:
            raise ApiError(400, "Bad request: multipart body has no boundary")
        buf = buf[-len(delim):] + chunk
    result = None
    while True:
        while len(buf) < 2:
            chunk = reader.read()
            if not chunk:
                raise ApiError(400, "Bad request: truncated multipart body")
            buf += chunk
        if buf.startswith(b"--"):
            break  # closing delimiter
        if not buf.startswith(b"\r\n"):
            raise ApiError(400, "Bad request: malformed multipart delimiter")
        buf = buf[2:]
        while b"\r\n\r\n" not in buf:
            if len(buf) > 16384:
                raise ApiError(400, "Bad request: multipart part headers too large")
            chunk = reader.read()
            if not chunk:
                raise ApiError(400, "Bad request: truncated multipart headers")
            buf += chunk
        raw_headers, buf = buf.split(b"\r\n\r\n", 1)
        headers = email.parser.BytesHeaderParser().parsebytes(raw_headers + b"\r\n\r\n")
        part_name = headers.get_param("name", header="content-disposition")
        out = None
        if part_name == field and result is None:
            fd, result = tempfile.mkstemp(prefix="upload-", dir=tmp_dir)
            out = os.fdopen(fd, "wb")
        try:
            while True:
                idx = buf.find(sep)
                if idx >= 0:
                    if out:
                        out.write(buf[:idx])
                    buf = buf[idx + len(sep):]
                    break
                keep = len(sep) - 1
                if len(buf) > keep:
                    if out:
                        out.write(buf[:-keep])
                    buf = buf[-keep:]
                chunk = reader.read()
                if not chunk:
                    raise ApiError(400, "Bad request: truncated multipart body")
                buf += chunk
        finally:
            if out:
                out.flush()
                os.fsync(out.fileno())
                out.close()
    reader.drain()
    return result


class StandinHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = f"qdrant-standin/{QDRANT_VERSION}"
    sys_version = ""

    store: Store  # set on the subclass by make_server()
    api_key: str | None = None

    # silence BaseHTTPRequestHandler's own logging; we log one line per request ourselves
    def log_message(self, format, *args):  # noqa: A002 - signature from the base class
        pass

    def do_GET(self):
        self._dispatch("GET")

    def do_POST(self):
        self._dispatch("POST")

    def do_PUT(self):
        self._dispatch("PUT")

    def do_DELETE(self):
        self._dispatch("DELETE")

    def do_PATCH(self):
        self._dispatch("PATCH")

    def do_HEAD(self):
        self._dispatch("HEAD")

    # -- plumbing
    def _dispatch(self, method: str) -> None:
        self._t0 = time.monotonic()
        self._status = 0
        self._sent = 0
        self._body_done = int(self.headers.get("Content-Length") or 0) == 0 and "Transfer-Encoding" not in self.headers
        split = urlsplit(self.path)
        path = split.path or "/"
        try:
            self._check_auth(path)
            segs = [unquote(s) for s in path.split("/")[1:]]
            while segs and segs[-1] == "":
                segs.pop()
            query = {k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
            self._route(method, segs, query)
        except ApiError as exc:
            self._send_error(exc.status, exc.message)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as exc:  # pragma: no cover - defensive
            traceback.print_exc(file=sys.stderr)
            self._send_error(500, f"Service internal error: {type(exc).__name__}: {exc}")
        finally:
            elapsed = time.monotonic() - self._t0
            sys.stderr.write(
                f"{utcnow().isoformat()}Z INFO qdrant_standin: {self.client_address[0]} "
                f'"{method} {path}" {self._status} {self._sent} {elapsed:.6f}\n'
            )
            sys.stderr.flush()

    def _check_auth(self, path: str) -> None:
        if not self.api_key or path in UNAUTHENTICATED_PATHS:
            return
        given = self.headers.get("api-key")
        if given is None:
            auth = self.headers.get("Authorization") or ""
            if auth[:7].lower() == "bearer ":
                given = auth[7:].strip()
        if given is None:
            raise ApiError(401, "Must provide an API key or an Authorization bearer token")
        if not hmac.compare_digest(given.encode("utf-8"), self.api_key.encode("utf-8")):
            raise ApiError(401, "Invalid API key or JWT")

    def _elapsed(self) -> float:
        return round(time.monotonic() - self._t0, 6)

    def _send_bytes(self, status: int, body: bytes, content_type: str, extra: dict | None = None) -> None:
        self._status = status
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        if not self._body_done:
            self._drain_body()
        if not self._body_done:
            # request body not consumed (e.g. 401 before reading): the connection cannot be reused
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
            self._sent = len(body)

    def _drain_body(self) -> None:
        """Read and drop a not-yet-read request body (up to MAX_DRAIN) so that a client still sending
        it (e.g. an unauthorised upload) gets the error answer instead of a connection reset."""
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            return
        if "Transfer-Encoding" in self.headers or length > MAX_DRAIN:
            return
        try:
            BodyReader(self.rfile, length).drain()
            self._body_done = True
        except (ApiError, OSError):
            pass

    def _send_json(self, status: int, obj) -> None:
        self._send_bytes(status, json.dumps(obj, ensure_ascii=False).encode("utf-8"), "application/json")

    def _ok(self, result, status: int = 200) -> None:
        self._send_json(status, {"result": result, "status": "ok", "time": self._elapsed()})

    def _send_error(self, status: int, message: str) -> None:
        self._send_json(status, {"status": {"error": message}, "time": self._elapsed()})

    def _content_length(self) -> int:
        if "Transfer-Encoding" in self.headers:
            raise ApiError(411, "Bad request: chunked request bodies are not supported by the stand-in")
        try:
            return int(self.headers.get("Content-Length") or 0)
        except ValueError:
            raise ApiError(400, "Bad request: invalid Content-Length") from None

    def _json_body(self, required: bool = True) -> dict:
        length = self._content_length()
        if length > MAX_JSON_BODY:
            raise ApiError(413, f"Payload error: JSON payload ({length} bytes) is larger than allowed")
        raw = self.rfile.read(length) if length else b""
        self._body_done = True
        if not raw.strip():
            if required:
                raise ApiError(400, "Json deserialize error: EOF while parsing a value at line 1 column 0")
            return {}
        try:
            body = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise ApiError(400, f"Json deserialize error: {exc}") from None
        if not isinstance(body, dict):
            raise ApiError(400, "Json deserialize error: expected a JSON object")
        return body

    # -- routing
    def _route(self, method: str, segs: list, query: dict) -> None:
        store = self.store
        if method == "HEAD":
            method = "GET"
        n = len(segs)
        if n == 0:
            self._only(method, "GET")
            return self._ok_root()
        if n == 1 and segs[0] in ("healthz", "livez", "readyz"):
            self._only(method, "GET")
            return self._send_bytes(200, f"{segs[0]} check passed".encode("ascii"), "text/plain; charset=utf-8")
        if segs[0] == "collections":
            if n == 1:
                self._only(method, "GET")
                return self._ok({"collections": [{"name": c} for c in sorted(store.collections)]})
            name = segs[1]
            validate_collection_name(name)
            if n == 2:
                return self._collection(method, name)
            if n == 3 and segs[2] == "exists":
                self._only(method, "GET")
                return self._ok({"exists": name in store.collections})
            if segs[2] == "points":
                return self._points(method, name, segs[3:])
            if segs[2] == "snapshots":
                return self._collection_snapshots(method, name, segs[3:], query)
        if segs[0] == "snapshots" and n <= 2:
            return self._full_snapshots(method, segs[1:], query)
        raise ApiError(404, f"Not found: {'/'.join(segs)} is not implemented by the llmops-lab Qdrant stand-in")

    @staticmethod
    def _only(method: str, *allowed: str) -> None:
        if method not in allowed:
            raise ApiError(405, f"Method {method} not allowed here (llmops-lab Qdrant stand-in)")

    def _ok_root(self) -> None:
        self._send_json(200, {"title": TITLE, "version": QDRANT_VERSION, "commit": "llmops-lab-standin"})

    def _collection(self, method: str, name: str) -> None:
        store = self.store
        self._only(method, "GET", "PUT", "DELETE")
        if method == "GET":
            with store.lock:
                coll = store.get(name)
                count = len(coll.points)
                info = {
                    "status": "green",
                    "optimizer_status": "ok",
                    "indexed_vectors_count": 0,
                    "points_count": count,
                    "segments_count": 1,
                    "config": default_collection_info_config(coll.config),
                    "payload_schema": {},
                    "warnings": [],
                }
            return self._ok(info)
        if method == "PUT":
            store.create(name, self._json_body())
            return self._ok(True)
        return self._ok(store.delete(name))

    def _points(self, method: str, name: str, rest: list) -> None:
        store = self.store
        if not rest:
            self._only(method, "PUT", "POST")
            body = self._json_body()
            if method == "PUT":
                op = store.upsert(name, body)
                return self._ok({"operation_id": op, "status": "completed"})
            ids = body.get("ids")
            if not isinstance(ids, list):
                raise ApiError(400, "Format error in JSON body: missing field `ids`")
            wanted = [norm_point_id(i) for i in ids]
            with store.lock:
                coll = store.get(name)
                out = [self._record(coll, pid, body.get("with_payload", True), body.get("with_vector", False))
                       for pid in wanted if pid in coll.points]
            return self._ok(out)
        if rest == ["count"]:
            self._only(method, "POST")
            body = self._json_body(required=False)
            if body.get("filter") is not None:
                raise ApiError(400, "Bad request: filters are not supported by the llmops-lab stand-in")
            with store.lock:
                return self._ok({"count": len(store.get(name).points)})
        if rest == ["scroll"]:
            self._only(method, "POST")
            body = self._json_body(required=False)
            if body.get("filter") is not None or body.get("order_by") is not None:
                raise ApiError(400, "Bad request: filter/order_by are not supported by the llmops-lab stand-in")
            limit = body.get("limit")
            limit = 10 if limit is None else limit
            if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
                raise ApiError(422, "Validation error in JSON body: [limit: value must be >= 1]")
            offset = body.get("offset")
            with store.lock:
                coll = store.get(name)
                ids = coll.sorted_ids()
                start = 0
                if offset is not None:
                    key = point_sort_key(norm_point_id(offset))
                    lo, hi = 0, len(ids)
                    while lo < hi:  # first id >= offset
                        mid = (lo + hi) // 2
                        if point_sort_key(ids[mid]) < key:
                            lo = mid + 1
                        else:
                            hi = mid
                    start = lo
                page = ids[start:start + limit]
                nxt = ids[start + limit] if start + limit < len(ids) else None
                pts = [self._record(coll, pid, body.get("with_payload", True), body.get("with_vector", False))
                       for pid in page]
            return self._ok({"points": pts, "next_page_offset": nxt})
        raise ApiError(404, "Not found: this points endpoint is not implemented by the llmops-lab Qdrant stand-in")

    @staticmethod
    def _record(coll: Collection, pid, with_payload, with_vector) -> dict:
        vector, payload = coll.points[pid]
        return {
            "id": pid,
            "payload": select_payload(payload, with_payload),
            "vector": select_vector(vector, with_vector),
        }

    def _collection_snapshots(self, method: str, name: str, rest: list, query: dict) -> None:
        store = self.store
        if not rest:
            self._only(method, "GET", "POST")
            if method == "POST":
                self._json_body(required=False)
                return self._ok(store.create_collection_snapshot(name))
            store.get(name)
            return self._ok(store.list_snapshots(name))
        if len(rest) != 1:
            raise ApiError(404, "Not found: unknown snapshot endpoint")
        if rest[0] == "recover" and method == "PUT":
            return self._recover_from_location(name, self._json_body())
        if rest[0] == "upload" and method == "POST":
            return self._recover_from_upload(name, query)
        self._only(method, "GET", "DELETE")
        store.get(name)
        if method == "GET":
            return self._stream_file(store.snapshot_path(name, rest[0]))
        store.delete_snapshot(name, rest[0])
        return self._ok(True)

    def _full_snapshots(self, method: str, rest: list, query: dict) -> None:
        store = self.store
        if not rest:
            self._only(method, "GET", "POST")
            if method == "POST":
                self._json_body(required=False)
                return self._ok(store.create_full_snapshot())
            return self._ok(store.list_snapshots(None))
        self._only(method, "GET", "DELETE")
        if method == "GET":
            return self._stream_file(store.snapshot_path(None, rest[0]))
        store.delete_snapshot(None, rest[0])
        return self._ok(True)

    def _stream_file(self, path: str) -> None:
        size = os.path.getsize(path)
        self._status = 200
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(size))
        self.send_header("Content-Disposition", content_disposition(os.path.basename(path)))
        self.end_headers()
        if self.command == "HEAD":
            return
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(CHUNK), b""):
                self.wfile.write(block)
                self._sent += len(block)

    def _recover_from_location(self, name: str, body: dict) -> None:
        store = self.store
        location = body.get("location")
        if not isinstance(location, str) or not location:
            raise ApiError(400, "Format error in JSON body: missing field `location`")
        priority = body.get("priority")
        checksum = body.get("checksum")
        parts = urlsplit(location)
        if parts.scheme == "file":
            path = os.path.realpath(unquote(parts.path))
            root = os.path.realpath(store.snapshots_path)
            if os.path.commonpath([path, root]) != root:
                raise ApiError(400, f"Bad request: snapshot file {path} must be inside the snapshots directory {root}")
            if not os.path.isfile(path):
                raise ApiError(404, f"Not found: Snapshot file `{path}` does not exist!")
            store.recover(name, path, priority, checksum)
            return self._ok(True)
        if parts.scheme in ("http", "https"):
            fd, tmp = tempfile.mkstemp(prefix="download-", dir=store.tmp_dir)
            try:
                request = urllib.request.Request(location)  # noqa: S310 - scheme checked above (http/https)
                if body.get("api_key"):
                    request.add_header("api-key", body["api_key"])
                try:
                    with urllib.request.urlopen(request, timeout=60) as resp, os.fdopen(fd, "wb") as out:  # noqa: S310
                        for block in iter(lambda: resp.read(CHUNK), b""):
                            out.write(block)
                except (urllib.error.URLError, OSError) as exc:
                    raise ApiError(
                        400, f"Bad request: failed to download snapshot from {parts.netloc}: {exc}"
                    ) from None
                store.recover(name, tmp, priority, checksum)
            finally:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
            return self._ok(True)
        raise ApiError(400, f"Bad request: unsupported snapshot location scheme `{parts.scheme}`")

    def _recover_from_upload(self, name: str, query: dict) -> None:
        store = self.store
        validate_collection_name(name)
        ctype = self.headers.get("Content-Type") or ""
        msg = email.message.Message()
        msg["Content-Type"] = ctype
        boundary = msg.get_param("boundary")
        if msg.get_content_type() != "multipart/form-data" or not boundary:
            raise ApiError(400, "Bad request: expected a multipart/form-data body with field `snapshot`")
        reader = BodyReader(self.rfile, self._content_length())
        tmp = None
        try:
            tmp = parse_multipart_to_file(reader, str(boundary).encode("latin-1"), "snapshot", store.tmp_dir)
            self._body_done = True
            if tmp is None:
                raise ApiError(400, "Bad request: multipart field `snapshot` is missing")
            store.recover(name, tmp, query.get("priority"), query.get("checksum"))
        finally:
            if tmp:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
        return self._ok(True)


def make_server(host: str, port: int, storage: str, snapshots: str, api_key: str | None) -> ThreadingHTTPServer:
    store = Store(storage, snapshots)
    handler = type("Handler", (StandinHandler,), {"store": store, "api_key": api_key or None})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


def main(argv: list | None = None) -> int:
    parser = argparse.ArgumentParser(description="llmops-lab STAND-IN for the Qdrant 1.19.0 REST API (not Qdrant)")
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.add_argument("--storage")
    parser.add_argument("--snapshots")
    parser.add_argument("--config-path", help="a configuration file read after config/*.yaml (as Qdrant's own flag)")
    args = parser.parse_args(argv)
    try:
        settings, read = load_settings(args.config_path)
    except (ConfigError, OSError, UnicodeDecodeError) as exc:
        sys.stderr.write(f"{utcnow().isoformat()}Z ERROR qdrant_standin: cannot read the configuration: {exc}\n")
        return 1
    host = args.host or _setting(settings, "service", "host") or "0.0.0.0"  # noqa: S104
    port = args.port if args.port is not None else int(_setting(settings, "service", "http_port") or 6333)
    storage = args.storage or _setting(settings, "storage", "storage_path") or "/qdrant/storage"
    snapshots = args.snapshots or _setting(settings, "storage", "snapshots_path") or "/qdrant/snapshots"
    api_key = _setting(settings, "service", "api_key")
    if api_key is not None and not isinstance(api_key, str):
        sys.stderr.write(f"{utcnow().isoformat()}Z ERROR qdrant_standin: service.api_key is not a string\n")
        return 1
    api_key = api_key or None
    args = argparse.Namespace(host=str(host), port=int(port), storage=str(storage), snapshots=str(snapshots))
    server = make_server(args.host, args.port, args.storage, args.snapshots, api_key)

    def _terminate(signum, frame):
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, _terminate)
    store = server.RequestHandlerClass.store
    sys.stderr.write(
        f"{utcnow().isoformat()}Z INFO qdrant_standin: llmops-lab Qdrant STAND-IN (API {QDRANT_VERSION}, NOT Qdrant) "
        f"listening on {args.host}:{server.server_address[1]}, storage={store.storage_path}, "
        f"snapshots={store.snapshots_path}, api_key={'set' if api_key else 'unset'}, "
        f"config files: {', '.join(read) or 'none'}\n"
    )
    sys.stderr.flush()
    try:
        server.serve_forever(poll_interval=0.5)
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
