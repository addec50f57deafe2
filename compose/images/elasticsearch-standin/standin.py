#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-3.0-or-later
# ruff: noqa: UP031 - printf-style messages, as Elasticsearch words them
"""llmops-lab STAND-IN for the Elasticsearch 8.15 REST API.

THIS IS NOT ELASTICSEARCH.  It is a small, stdlib-only HTTP server that implements the subset of the
Elasticsearch REST API the llmops-lab backup bundle uses (indices, documents, bulk, a match-all search
paged with search_after, cluster health, _cat/indices and the snapshot API with a shared-filesystem
repository), with request and response bodies shaped like Elasticsearch's own OpenAPI document.  There is
no Lucene, no analysis, no query DSL beyond match_all.  Documents are kept as JSON files on disk; snapshots
are real files in a repository folder under ``path.repo``, in a stand-in format that real Elasticsearch
cannot restore (and vice versa).  Production uses the official ``elasticsearch:8.15.3`` image.

Settings, as the official image takes them: ``--path.repo`` / environment ``path.repo`` (comma-separated),
``--path.data`` / ``path.data``, ``--http.port`` / ``http.port`` (9200), ``--network.host`` /
``network.host``, ``cluster.name``, ``node.name``, ``xpack.security.enabled`` (true) and the password of the
built-in user ``elastic`` from the file named by ``ELASTIC_PASSWORD_FILE`` (or ``ELASTIC_PASSWORD``).
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import fnmatch
import hashlib
import hmac
import json
import os
import re
import secrets
import signal
import sys
import tempfile
import threading
import time
import traceback
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

ES_VERSION = "8.15.3"
LUCENE_VERSION = "9.11.1"
STORAGE_FORMAT = "llmops-lab-elasticsearch-standin-index/1"
SNAPSHOT_FORMAT = "llmops-lab-elasticsearch-standin-snapshot/1"
STANDIN_MARKER = "STANDIN.txt"
STANDIN_NOTE = (
    "This snapshot repository was written by the llmops-lab Elasticsearch STAND-IN (standin.py).\n"
    "It is NOT a real Elasticsearch repository: its files hold index metadata and documents as JSON\n"
    "and only the stand-in can restore them.  Production uses the official elasticsearch:8.15.3 image.\n"
)
MAX_BODY = 100 * 1024 * 1024  # http.max_content_length
_BAD_INDEX_CHARS = set('\\/*?"<>| ,#:')
_BAD_SNAPSHOT_CHARS = set('\\/*?"<>| ,#')
HEALTH_ORDER = {"green": 0, "yellow": 1, "red": 2}


class EsError(Exception):
    """An Elasticsearch error answer: ``{"error": {"root_cause": [..], "type", "reason", ...}, "status"}``."""

    def __init__(self, status, etype, reason, headers=None, **extra):
        super().__init__(reason)
        self.status = status
        self.etype = etype
        self.reason = reason
        self.headers = headers or {}
        self.extra = extra

    def body(self):
        cause = {"type": self.etype, "reason": self.reason, **self.extra}
        return {"error": {"root_cause": [dict(cause)], **cause}, "status": self.status}


def now_ms():
    return int(time.time() * 1000)


def fsync_dir(path):
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


def write_atomic(path, data: bytes):
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_dir(directory)


def dump(obj) -> bytes:
    return json.dumps(obj, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode("utf-8")


def read_json(path):
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def short_uuid():
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode("ascii").rstrip("=")


def check_index_name(name):
    if not name or name != name.lower() or any(c in _BAD_INDEX_CHARS for c in name) \
            or name[0] in "-_+" or name in (".", "..") or len(name.encode("utf-8")) > 255:
        raise EsError(400, "invalid_index_name_exception",
                      f"Invalid index name [{name}], must be lowercase, must not contain '\\', '/', '*', '?', "
                      "'\"', '<', '>', '|', ' ', ',', '#', ':', must not start with '_', '-' or '+', must not be "
                      "'.' or '..' and must be at most 255 bytes long", index=name)


def flatten_settings(settings, prefix=""):
    out = {}
    for key, value in (settings or {}).items():
        full = prefix + key
        if isinstance(value, dict):
            out.update(flatten_settings(value, full + "."))
        else:
            out[full] = value
    return out


def nest_settings(flat):
    out = {}
    for key, value in flat.items():
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def index_settings(body_settings):
    """The flat ``index.*`` settings of an index as ES keeps them (string values)."""
    flat = {}
    for key, value in flatten_settings(body_settings or {}).items():
        key = key if key.startswith("index.") else "index." + key
        flat[key] = value if isinstance(value, str) else json.dumps(value) if isinstance(value, (dict, list)) \
            else str(value).lower() if isinstance(value, bool) else str(value)
    flat.setdefault("index.number_of_shards", "1")
    flat.setdefault("index.number_of_replicas", "1")
    return flat


def java_replacement(rep):
    """A Java regex replacement (``$1``) as a Python one (``\\g<1>``)."""
    out, i = [], 0
    while i < len(rep):
        c = rep[i]
        if c == "\\" and i + 1 < len(rep):
            out.append(rep[i + 1].replace("\\", "\\\\"))
            i += 2
            continue
        if c == "$":
            m = re.match(r"\$(\d+)", rep[i:])
            if m:
                out.append(f"\\g<{m.group(1)}>")
                i += len(m.group(0))
                continue
        out.append(c.replace("\\", "\\\\"))
        i += 1
    return "".join(out)


def csv_list(value):
    if value is None:
        return []
    if isinstance(value, list):
        return [str(v) for v in value]
    return [v for v in str(value).split(",") if v != ""]


def expand(patterns, names, allow_missing=False):
    """Index names that ``patterns`` (comma list, wildcards, ``-`` exclusions, ``_all``) select from ``names``."""
    patterns = csv_list(patterns)
    if not patterns or patterns in (["_all"], ["*"]):
        return sorted(names)
    chosen = []
    for i, pattern in enumerate(patterns):
        if pattern.startswith("-") and i > 0:
            chosen = [n for n in chosen if not fnmatch.fnmatchcase(n, pattern[1:])]
            continue
        if pattern in ("_all", "*"):
            matched = sorted(names)
        elif "*" in pattern:
            matched = sorted(n for n in names if fnmatch.fnmatchcase(n, pattern))
        else:
            if pattern not in names:
                if allow_missing:
                    continue
                raise EsError(404, "index_not_found_exception", f"no such index [{pattern}]",
                              index=pattern, **{"resource.type": "index_or_alias", "resource.id": pattern,
                                                "index_uuid": "_na_"})
            matched = [pattern]
        chosen += [n for n in matched if n not in chosen]
    return chosen


# --------------------------------------------------------------------------- the node's data


class Index:
    """One index: ``<data>/indices/<uuid>/meta.json`` (name, settings, mappings, state) and ``docs.json``."""

    def __init__(self, folder, meta, docs):
        self.folder = folder
        self.meta = meta
        self.docs = docs  # {"seq": n, "docs": {id: {"seq", "version", "seq_no", "source"}}}
        self.red = False

    @property
    def name(self):
        return self.meta["name"]

    @property
    def uuid(self):
        return self.meta["uuid"]

    def is_open(self):
        return self.meta["state"] == "open"

    def save_meta(self):
        write_atomic(os.path.join(self.folder, "meta.json"), dump(self.meta))

    def save_docs(self):
        write_atomic(os.path.join(self.folder, "docs.json"), dump(self.docs))

    def health(self):
        if self.red:
            return "red"
        return "yellow" if int(self.meta["settings"].get("index.number_of_replicas", "1")) > 0 else "green"

    def shards(self):
        return int(self.meta["settings"].get("index.number_of_shards", "1"))


class Node:
    def __init__(self, data_dir, repo_paths, cluster_name, node_name):
        self.data_dir = os.path.abspath(data_dir)
        self.repo_paths = [os.path.abspath(p) for p in repo_paths]
        self.cluster_name = cluster_name
        self.node_name = node_name
        self.lock = threading.RLock()
        os.makedirs(os.path.join(self.data_dir, "indices"), exist_ok=True)
        state_path = os.path.join(self.data_dir, "node.json")
        if os.path.exists(state_path):
            self.state = read_json(state_path)
        else:
            self.state = {"format": STORAGE_FORMAT, "cluster_uuid": short_uuid(), "node_id": short_uuid(),
                          "repositories": {}}
            write_atomic(state_path, dump(self.state))
        self.indices = {}
        root = os.path.join(self.data_dir, "indices")
        for entry in sorted(os.listdir(root)):
            folder = os.path.join(root, entry)
            try:
                meta = read_json(os.path.join(folder, "meta.json"))
            except (OSError, ValueError):
                continue
            index = Index(folder, meta, {"seq": 0, "docs": {}})
            try:
                docs = read_json(os.path.join(folder, "docs.json"))
                if not isinstance(docs, dict) or not isinstance(docs.get("docs"), dict):
                    raise ValueError("not a document store")
                index.docs = docs
            except (OSError, ValueError) as exc:
                # a shard whose files cannot be read stays unassigned: the index (and the cluster) is red
                print("index [{}]: cannot read its documents ({}): the index is red".format(meta.get("name"), exc),
                      file=sys.stderr)
                index.red = True
            self.indices[meta["name"]] = index

    def save_state(self):
        write_atomic(os.path.join(self.data_dir, "node.json"), dump(self.state))

    # ----------------------------------------------------------------- indices
    def get(self, name, must_be_open=True):
        index = self.indices.get(name)
        if index is None:
            raise EsError(404, "index_not_found_exception", f"no such index [{name}]", index=name,
                          **{"resource.type": "index_or_alias", "resource.id": name, "index_uuid": "_na_"})
        if must_be_open and not index.is_open():
            raise EsError(400, "index_closed_exception", "closed", index=name, index_uuid=index.uuid)
        if must_be_open and index.red:
            raise EsError(503, "no_shard_available_action_exception",
                          f"[{name}][0] shard is unassigned: its files cannot be read")
        return index

    def create_index(self, name, settings=None, mappings=None, aliases=None, index_uuid=None, docs=None,
                     creation_date=None):
        check_index_name(name)
        if name in self.indices:
            raise EsError(400, "resource_already_exists_exception",
                          f"index [{name}/{self.indices[name].uuid}] already exists", index=name,
                          index_uuid=self.indices[name].uuid)
        index_uuid = index_uuid or short_uuid()
        flat = index_settings(settings)
        flat.update({"index.uuid": index_uuid, "index.provided_name": name,
                     "index.creation_date": str(creation_date or now_ms()), "index.version.created": "8512000"})
        meta = {"format": STORAGE_FORMAT, "name": name, "uuid": index_uuid, "state": "open", "settings": flat,
                "mappings": mappings or {}, "aliases": aliases or {}}
        folder = os.path.join(self.data_dir, "indices", index_uuid)
        index = Index(folder, meta, docs or {"seq": 0, "docs": {}})
        index.save_docs()
        index.save_meta()
        self.indices[name] = index
        return index

    def delete_index(self, name):
        index = self.get(name, must_be_open=False)
        del self.indices[name]
        tomb = index.folder + ".deleted-" + secrets.token_hex(4)
        os.replace(index.folder, tomb)
        for root, dirs, files in os.walk(tomb, topdown=False):
            for f in files:
                os.unlink(os.path.join(root, f))
            for d in dirs:
                os.rmdir(os.path.join(root, d))
        os.rmdir(tomb)
        fsync_dir(os.path.dirname(tomb))

    def auto_index(self, name):
        if name not in self.indices:
            return self.create_index(name)
        return self.get(name)

    def write_doc(self, index, doc_id, source, op="index"):
        docs = index.docs["docs"]
        existing = docs.get(doc_id)
        if op == "create" and existing is not None:
            raise EsError(409, "version_conflict_engine_exception",
                          "[%s]: version conflict, document already exists (current version [%d])"
                          % (doc_id, existing["version"]), index=index.name, index_uuid=index.uuid, shard="0")
        index.docs["seq"] += 1
        version = existing["version"] + 1 if existing else 1
        docs[doc_id] = {"seq": index.docs["seq"], "version": version, "seq_no": index.docs["seq"] - 1,
                        "source": source}
        return {"_index": index.name, "_id": doc_id, "_version": version,
                "result": "updated" if existing else "created",
                "_shards": {"total": 2, "successful": 1, "failed": 0}, "_seq_no": index.docs["seq"] - 1,
                "_primary_term": 1}, (200 if existing else 201)

    def delete_doc(self, index, doc_id):
        existing = index.docs["docs"].pop(doc_id, None)
        index.docs["seq"] += 1
        return {"_index": index.name, "_id": doc_id, "_version": (existing["version"] + 1) if existing else 1,
                "result": "deleted" if existing else "not_found",
                "_shards": {"total": 2, "successful": 1, "failed": 0}, "_seq_no": index.docs["seq"] - 1,
                "_primary_term": 1}, (200 if existing else 404)

    def health(self, names=None):
        chosen = [self.indices[n] for n in (names if names is not None else sorted(self.indices))]
        status = "green"
        for index in chosen:
            if not index.is_open():
                continue
            if HEALTH_ORDER[index.health()] > HEALTH_ORDER[status]:
                status = index.health()
        opened = [i for i in chosen if i.is_open()]
        primaries = sum(i.shards() for i in opened if not i.red)
        unassigned = sum(i.shards() * int(i.meta["settings"].get("index.number_of_replicas", "1"))
                         for i in opened) + sum(i.shards() for i in opened if i.red)
        total = primaries + unassigned
        return {"cluster_name": self.cluster_name, "status": status, "timed_out": False, "number_of_nodes": 1,
                "number_of_data_nodes": 1, "active_primary_shards": primaries, "active_shards": primaries,
                "relocating_shards": 0, "initializing_shards": 0, "unassigned_shards": unassigned,
                "unassigned_primary_shards": sum(i.shards() for i in opened if i.red),
                "delayed_unassigned_shards": 0, "number_of_pending_tasks": 0, "number_of_in_flight_fetch": 0,
                "task_max_waiting_in_queue_millis": 0,
                "active_shards_percent_as_number": 100.0 if not total else round(100.0 * primaries / total, 1)}

    # ----------------------------------------------------------------- repositories
    def resolve_location(self, repo, location):
        """An fs repository's location, which must lie under one of path.repo (as ES checks it)."""
        if not isinstance(location, str) or not location:
            raise EsError(500, "repository_exception", f"[{repo}] missing location")
        if not self.repo_paths:
            raise EsError(500, "repository_exception",
                          f"[{repo}] location [{location}] doesn't match any of the locations specified by "
                          "path.repo because this setting is empty")
        full = os.path.normpath(location if os.path.isabs(location) else os.path.join(self.repo_paths[0], location))
        for root in self.repo_paths:
            if full == root or full.startswith(root.rstrip(os.sep) + os.sep):
                return full
        raise EsError(500, "repository_exception",
                      f"[{repo}] location [{location}] doesn't match any of the locations specified by path.repo "
                      f"[{', '.join(self.repo_paths)}]")

    def repository(self, repo):
        spec = self.state["repositories"].get(repo)
        if spec is None:
            raise EsError(404, "repository_missing_exception", f"[{repo}] missing")
        return spec

    def repo_dir(self, repo):
        spec = self.repository(repo)
        return self.resolve_location(repo, spec["settings"]["location"]), spec

    @staticmethod
    def read_repo_data(path):
        latest = os.path.join(path, "index.latest")
        if not os.path.exists(latest):
            return -1, {"format": SNAPSHOT_FORMAT, "snapshots": [], "indices": {}}
        with open(latest, "rb") as fh:
            gen = int.from_bytes(fh.read(8), "big", signed=True)
        try:
            return gen, read_json(os.path.join(path, "index-%d" % gen))
        except (OSError, ValueError) as exc:
            raise EsError(500, "repository_exception", "[%s] could not read repository data from index-%d: %s"
                          % (path, gen, exc)) from None

    @staticmethod
    def write_repo_data(path, gen, data):
        new = gen + 1
        write_atomic(os.path.join(path, "index-%d" % new), dump(data))
        write_atomic(os.path.join(path, "index.latest"), new.to_bytes(8, "big", signed=True))
        if gen >= 0 and os.path.exists(os.path.join(path, "index-%d" % gen)):
            os.unlink(os.path.join(path, "index-%d" % gen))
        return new

    def find_snapshot(self, repo, path, name):
        _gen, data = self.read_repo_data(path)
        for snap in data["snapshots"]:
            if snap["name"] == name:
                return snap, data
        raise EsError(404, "snapshot_missing_exception", f"[{repo}:{name}] is missing")

    def snapshot_info(self, repo, path, snap):
        info = read_json(os.path.join(path, "snap-{}.dat".format(snap["uuid"])))
        if info.get("format") != SNAPSHOT_FORMAT:
            raise EsError(500, "snapshot_exception",
                          f"[{repo}:{snap['name']}] snap-{snap['uuid']}.dat is not in the stand-in's format")
        return info["snapshot"]


def check_snapshot_name(repo, name):
    if not name or name != name.lower() or any(c in _BAD_SNAPSHOT_CHARS for c in name) or name.startswith("_"):
        raise EsError(400, "invalid_snapshot_name_exception",
                      f"[{repo}:{name}] Invalid snapshot name [{name}], must be lowercase, must not start with '_' "
                      "and must not contain '\\', '/', '*', '?', '\"', '<', '>', '|', ' ', ',', '#'")


def iso(ms):
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.") + "%03dZ" % (ms % 1000)


# --------------------------------------------------------------------------- HTTP


class Handler(BaseHTTPRequestHandler):
    server_version = "llmops-lab-elasticsearch-standin"
    sys_version = ""
    protocol_version = "HTTP/1.1"

    node: Node = None
    password: str | None = None
    security: bool = True

    def log_message(self, format, *args):  # noqa: A002 - signature from the base class
        sys.stderr.write(f"{self.log_date_time_string()} {format % args}\n")

    def do_GET(self):
        self._dispatch("GET")

    def do_POST(self):
        self._dispatch("POST")

    def do_PUT(self):
        self._dispatch("PUT")

    def do_DELETE(self):
        self._dispatch("DELETE")

    def do_HEAD(self):
        self._dispatch("HEAD")

    # ----------------------------------------------------------------- plumbing
    def _send(self, status, obj, headers=None, content_type="application/json"):
        body = b"" if obj is None else (obj if isinstance(obj, bytes) else dump(obj))
        self.send_response(status)
        self.send_header("Content-Type", content_type + ("; charset=UTF-8" if "json" in content_type else ""))
        self.send_header("Content-Length", str(0 if self.command == "HEAD" else len(body)))
        self.send_header("X-elastic-product", "Elasticsearch")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _read_body(self):
        length = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            raise EsError(400, "illegal_argument_exception", "chunked request bodies are not supported by the "
                          "llmops-lab stand-in")
        if not length:
            return b""
        length = int(length)
        if length > MAX_BODY:
            raise EsError(413, "content_too_long_exception", "entity content is too long [%d] for the configured "
                          "buffer limit [%d]" % (length, MAX_BODY))
        return self.rfile.read(length)

    def _json_body(self, raw, required=False):
        if not raw.strip():
            if required:
                raise EsError(400, "parse_exception", "request body is required")
            return {}
        try:
            body = json.loads(raw.decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise EsError(400, "x_content_parse_exception", f"[1:1] failed to parse the request body: {exc}") \
                from None
        if not isinstance(body, dict):
            raise EsError(400, "parse_exception", "request body must be a JSON object")
        return body

    def _authenticate(self, path):
        if not self.security:
            return
        header = self.headers.get("Authorization") or ""
        challenge = {"WWW-Authenticate": 'Basic realm="security", charset="UTF-8"'}
        if not header:
            raise EsError(401, "security_exception", f"missing authentication credentials for REST request [{path}]",
                          headers=challenge,
                          header={"WWW-Authenticate": ['Basic realm="security", charset="UTF-8"']})
        user = None
        ok = False
        if header.lower().startswith("basic "):
            try:
                user, _, given = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8").partition(":")
            except (ValueError, UnicodeDecodeError):
                user, given = None, ""
            ok = user == "elastic" and self.password is not None and \
                hmac.compare_digest(given.encode("utf-8"), self.password.encode("utf-8"))
        if not ok:
            raise EsError(401, "security_exception",
                          f"unable to authenticate user [{user or ''}] for REST request [{path}]", headers=challenge,
                          header={"WWW-Authenticate": ['Basic realm="security", charset="UTF-8"']})

    def _dispatch(self, method):
        split = urlsplit(self.path)
        path = split.path
        query = {k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        try:
            raw = self._read_body()
            self._authenticate(path)
            segs = [unquote(s) for s in path.strip("/").split("/")] if path.strip("/") else []
            with self.node.lock:
                status, obj, ctype = self._route(method, segs, query, raw)
            self._send(status, obj, content_type=ctype)
        except EsError as exc:
            self._send(exc.status, exc.body(), headers=exc.headers)
        except Exception as exc:  # noqa: BLE001 - a bug answers 500 in the ES shape, the node keeps running
            traceback.print_exc()
            err = EsError(500, "exception", f"llmops-lab stand-in internal error: {exc}")
            self._send(500, err.body())

    def _route(self, method, segs, query, raw):  # noqa: C901 - one table of routes
        node = self.node
        n = len(segs)
        j = "application/json"
        if n == 0 and method in ("GET", "HEAD"):
            return 200, self._root(), j
        if segs[0] == "_cluster" and n >= 2 and segs[1] == "health" and method == "GET":
            return self._health(segs[2] if n > 2 else None, query)
        if segs[:2] == ["_cat", "indices"] and method == "GET":
            return 200, self._cat(segs[2] if n > 2 else None, query), "application/json" \
                if query.get("format") == "json" else "text/plain"
        if segs[0] == "_bulk" and n == 1 and method in ("POST", "PUT"):
            return 200, self._bulk(None, raw, query), j
        if segs[0] == "_snapshot":
            return self._snapshot(method, segs[1:], query, raw)
        if segs[0].startswith("_"):
            raise EsError(400, "illegal_argument_exception", "request [/{}] is not implemented by the llmops-lab "
                          "stand-in (method [{}])".format("/".join(segs), method))
        name = segs[0]
        if n == 1:
            if method == "PUT":
                body = self._json_body(raw)
                node.create_index(name, body.get("settings"), body.get("mappings"), body.get("aliases"))
                return 200, {"acknowledged": True, "shards_acknowledged": True, "index": name}, j
            if method in ("GET", "HEAD"):
                out = {}
                for idx in expand(name, node.indices, allow_missing=query.get("ignore_unavailable") == "true"):
                    index = node.indices[idx]
                    out[idx] = {"aliases": index.meta.get("aliases") or {}, "mappings": index.meta["mappings"],
                                "settings": nest_settings(index.meta["settings"])}
                return 200, out, j
            if method == "DELETE":
                if "*" in name or name == "_all":
                    raise EsError(400, "illegal_argument_exception",
                                  "Wildcard expressions or all indices are not allowed")
                for idx in csv_list(name):
                    node.get(idx, must_be_open=False)
                for idx in csv_list(name):
                    node.delete_index(idx)
                return 200, {"acknowledged": True}, j
        if n == 2 and segs[1] in ("_close", "_open") and method == "POST":
            chosen = expand(name, node.indices)
            for idx in chosen:
                index = node.indices[idx]
                index.meta["state"] = "close" if segs[1] == "_close" else "open"
                index.save_meta()
            if segs[1] == "_close":
                return 200, {"acknowledged": True, "shards_acknowledged": True,
                             "indices": {idx: {"closed": True} for idx in chosen}}, j
            return 200, {"acknowledged": True, "shards_acknowledged": True}, j
        if n == 2 and segs[1] == "_refresh" and method in ("POST", "GET"):
            chosen = expand(name, node.indices)
            total = sum(node.get(idx).shards() for idx in chosen)
            return 200, {"_shards": {"total": total * 2, "successful": total, "failed": 0}}, j
        if n == 2 and segs[1] == "_count" and method in ("GET", "POST"):
            body = self._json_body(raw)
            self._only_match_all(body)
            chosen = expand(name, node.indices)
            count = sum(len(node.get(idx).docs["docs"]) for idx in chosen)
            shards = sum(node.indices[idx].shards() for idx in chosen)
            return 200, {"count": count, "_shards": {"total": shards, "successful": shards, "skipped": 0,
                                                      "failed": 0}}, j
        if n == 2 and segs[1] == "_search" and method in ("GET", "POST"):
            return 200, self._search(name, self._json_body(raw), query), j
        if n == 2 and segs[1] == "_bulk" and method in ("POST", "PUT"):
            return 200, self._bulk(name, raw, query), j
        if n == 3 and segs[1] == "_doc":
            doc_id = segs[2]
            if method in ("PUT", "POST"):
                body = self._json_body(raw, required=True)
                index = node.auto_index(name)
                result, status = node.write_doc(index, doc_id, body, op=query.get("op_type", "index"))
                index.save_docs()
                return status, result, j
            if method in ("GET", "HEAD"):
                index = node.get(name)
                doc = index.docs["docs"].get(doc_id)
                if doc is None:
                    return 404, {"_index": name, "_id": doc_id, "found": False}, j
                return 200, {"_index": name, "_id": doc_id, "_version": doc["version"], "_seq_no": doc["seq_no"],
                             "_primary_term": 1, "found": True, "_source": doc["source"]}, j
            if method == "DELETE":
                index = node.get(name)
                result, status = node.delete_doc(index, doc_id)
                index.save_docs()
                return status, result, j
        raise EsError(405 if n <= 3 else 400, "illegal_argument_exception",
                      "request [{} /{}] is not implemented by the llmops-lab stand-in".format(method, "/".join(segs)))

    # ----------------------------------------------------------------- endpoints
    def _root(self):
        node = self.node
        return {"name": node.node_name, "cluster_name": node.cluster_name, "cluster_uuid": node.state["cluster_uuid"],
                "version": {"number": ES_VERSION, "build_flavor": "default", "build_type": "llmops-lab-standin",
                            "build_hash": "llmops-lab-standin-not-elasticsearch",
                            "build_date": "2024-10-09T22:08:00.328917561Z", "build_snapshot": False,
                            "lucene_version": LUCENE_VERSION, "minimum_wire_compatibility_version": "7.17.0",
                            "minimum_index_compatibility_version": "7.0.0"},
                "tagline": "You Know, for Search (llmops-lab STAND-IN, not Elasticsearch)"}

    def _health(self, target, query):
        names = expand(target, self.node.indices) if target else None
        body = self.node.health(names)
        wanted = query.get("wait_for_status")
        if wanted and HEALTH_ORDER.get(body["status"], 2) > HEALTH_ORDER.get(wanted, 2):
            body["timed_out"] = True
            return 408, body, "application/json"
        return 200, body, "application/json"

    def _cat(self, target, query):
        rows = []
        for name in expand(target, self.node.indices):
            index = self.node.indices[name]
            count = len(index.docs["docs"])
            size = str(len(dump(index.docs))) + "b"
            rows.append({"health": index.health() if index.is_open() else None, "status": index.meta["state"],
                         "index": name, "uuid": index.uuid, "pri": str(index.shards()),
                         "rep": index.meta["settings"].get("index.number_of_replicas", "1"),
                         "docs.count": str(count) if index.is_open() else None,
                         "docs.deleted": "0" if index.is_open() else None,
                         "store.size": size, "pri.store.size": size, "dataset.size": size})
        if query.get("format") == "json":
            return [{k: v for k, v in r.items() if v is not None} for r in rows]
        return ("".join("{} {} {} {} {} {} {}\n".format(r["health"] or "", r["status"], r["index"], r["uuid"], r["pri"],
                                                    r["rep"], r["docs.count"] or "") for r in rows)).encode("utf-8")

    @staticmethod
    def _only_match_all(body):
        query = body.get("query")
        if query not in (None, {"match_all": {}}):
            raise EsError(400, "illegal_argument_exception",
                          "the llmops-lab stand-in implements only the match_all query")

    def _search(self, target, body, query):
        self._only_match_all(body)
        size = int(body.get("size", query.get("size", 10)))
        if size < 0 or size > 10000:
            raise EsError(400, "illegal_argument_exception", "Result window is too large, from + size must be "
                          "less than or equal to: [10000] but was [%d]" % size)
        sort = body.get("sort", "_doc")
        sort = sort if isinstance(sort, list) else [sort]
        if len(sort) != 1:
            raise EsError(400, "illegal_argument_exception", "the llmops-lab stand-in sorts on one field only")
        field = sort[0] if isinstance(sort[0], str) else next(iter(sort[0]))
        order = "asc" if isinstance(sort[0], str) else (sort[0][field] if isinstance(sort[0][field], str)
                                                         else sort[0][field].get("order", "asc"))
        if field not in ("_doc", "_id") or order != "asc":
            raise EsError(400, "illegal_argument_exception",
                          "the llmops-lab stand-in sorts only on _doc or _id, ascending")
        chosen = expand(target, self.node.indices)
        hits = []
        for name in chosen:
            index = self.node.get(name)
            for doc_id, doc in index.docs["docs"].items():
                key = doc["seq"] if field == "_doc" else doc_id
                hits.append((key, name, doc_id, doc))
        hits.sort(key=lambda h: (h[0], h[1]))
        total = len(hits)
        after = body.get("search_after")
        if after is not None:
            if not isinstance(after, list) or len(after) != 1:
                raise EsError(400, "illegal_argument_exception", "search_after has 1 value(s) but sort has 1")
            hits = [h for h in hits if h[0] > after[0]]
        source = body.get("_source", True)
        out = []
        for key, name, doc_id, doc in hits[:size]:
            hit = {"_index": name, "_id": doc_id, "_score": None, "sort": [key]}
            if source is True:
                hit["_source"] = doc["source"]
            elif isinstance(source, (list, str)):
                fields = [source] if isinstance(source, str) else source
                hit["_source"] = {k: v for k, v in doc["source"].items() if k in fields}
            out.append(hit)
        shards = sum(self.node.indices[n].shards() for n in chosen)
        return {"took": 1, "timed_out": False,
                "_shards": {"total": shards, "successful": shards, "skipped": 0, "failed": 0},
                "hits": {"total": {"value": total, "relation": "eq"}, "max_score": None, "hits": out}}

    def _bulk(self, default_index, raw, query):
        lines = raw.split(b"\n")
        items = []
        touched = {}
        errors = False
        i = 0
        while i < len(lines):
            line = lines[i].strip()
            i += 1
            if not line:
                continue
            try:
                action = json.loads(line.decode("utf-8"))
                (op, meta), = action.items()
            except (ValueError, UnicodeDecodeError, TypeError) as exc:
                raise EsError(400, "illegal_argument_exception", "Malformed action/metadata line [%d]: %s"
                              % (i, exc)) from None
            if op not in ("index", "create", "delete"):
                raise EsError(400, "illegal_argument_exception", "Malformed action/metadata line [%d], expected "
                              "one of [create, delete, index] but found [%s]" % (i, op))
            source = None
            if op != "delete":
                if i >= len(lines):
                    raise EsError(400, "illegal_argument_exception", "The bulk request must be terminated by a "
                                  "newline [\\n]")
                try:
                    source = json.loads(lines[i].decode("utf-8"))
                except (ValueError, UnicodeDecodeError) as exc:
                    raise EsError(400, "x_content_parse_exception", "line [%d]: %s" % (i + 1, exc)) from None
                i += 1
            name = meta.get("_index") or default_index
            doc_id = meta.get("_id")
            try:
                if not name:
                    raise EsError(400, "action_request_validation_exception", "Validation Failed: 1: index is "
                                  "missing;")
                if op == "delete":
                    index = self.node.get(name)
                    result, status = self.node.delete_doc(index, str(doc_id))
                else:
                    index = self.node.auto_index(name)
                    doc_id = str(doc_id) if doc_id is not None else short_uuid()[:20]
                    result, status = self.node.write_doc(index, doc_id, source, op=op)
                touched[name] = index
                result["status"] = status
                items.append({op: result})
            except EsError as exc:
                errors = True
                items.append({op: {"_index": name, "_id": doc_id, "status": exc.status,
                                   "error": {"type": exc.etype, "reason": exc.reason, **exc.extra}}})
        for index in touched.values():
            index.save_docs()
        return {"took": 1, "errors": errors, "items": items}

    # ----------------------------------------------------------------- snapshots
    def _snapshot(self, method, segs, query, raw):
        j = "application/json"
        node = self.node
        if not segs:
            if method == "GET":
                return 200, node.state["repositories"], j
        repo = segs[0]
        if len(segs) == 1:
            if method in ("PUT", "POST"):
                body = self._json_body(raw, required=True)
                if body.get("type") != "fs":
                    raise EsError(500, "repository_exception",
                                  f"[{repo}] repository type [{body.get('type')}] does not exist")
                settings = {k: (v if isinstance(v, str) else json.dumps(v)) for k, v in
                            flatten_settings(body.get("settings") or {}).items()}
                path = node.resolve_location(repo, settings.get("location"))
                readonly = settings.get("readonly", "false") == "true"
                if not readonly:
                    os.makedirs(path, exist_ok=True)
                elif not os.path.isdir(path):
                    raise EsError(500, "repository_exception",
                                  f"[{repo}] location [{settings['location']}] does not exist")
                node.state["repositories"][repo] = {"type": "fs", "settings": settings}
                if query.get("verify", "true") != "false":
                    try:
                        self._verify(repo)
                    except EsError:
                        del node.state["repositories"][repo]
                        raise
                node.save_state()
                return 200, {"acknowledged": True}, j
            if method == "GET":
                return 200, {name: node.state["repositories"][name] for name in
                             expand(repo, node.state["repositories"], allow_missing=False)
                             } if "*" in repo else {repo: node.repository(repo)}, j
            if method == "DELETE":
                node.repository(repo)
                del node.state["repositories"][repo]
                node.save_state()
                return 200, {"acknowledged": True}, j
        if len(segs) == 2 and segs[1] == "_verify" and method == "POST":
            return 200, self._verify(repo), j
        name = segs[1]
        if len(segs) == 2:
            if method in ("PUT", "POST"):
                return self._create_snapshot(repo, name, self._json_body(raw), query)
            if method == "GET":
                path, _spec = node.repo_dir(repo)
                _gen, data = node.read_repo_data(path)
                if name in ("_all", "*"):
                    snaps = data["snapshots"]
                else:
                    snaps = [node.find_snapshot(repo, path, n)[0] for n in csv_list(name)]
                infos = [node.snapshot_info(repo, path, s) for s in snaps]
                return 200, {"snapshots": infos, "total": len(infos), "remaining": 0}, j
            if method == "DELETE":
                return self._delete_snapshot(repo, name)
        if len(segs) == 3 and segs[2] == "_restore" and method == "POST":
            return self._restore(repo, name, self._json_body(raw), query)
        raise EsError(400, "illegal_argument_exception", "request [{} /_snapshot/{}] is not implemented by the "
                      "llmops-lab stand-in".format(method, "/".join(segs)))

    def _verify(self, repo):
        node = self.node
        path, spec = node.repo_dir(repo)
        readonly = spec["settings"].get("readonly") == "true"
        try:
            if readonly:
                os.listdir(path)
            else:
                probe = os.path.join(path, f"tests-{short_uuid()}")
                write_atomic(os.path.join(probe, "data-{}.dat".format(node.state["node_id"])), b"verify")
                os.unlink(os.path.join(probe, "data-{}.dat".format(node.state["node_id"])))
                os.rmdir(probe)
        except OSError as exc:
            raise EsError(500, "repository_verification_exception",
                          f"[{repo}] [{spec['settings'].get('location')}] is not accessible on the node: "
                          f"{type(exc).__name__}: {exc}") from None
        return {"nodes": {node.state["node_id"]: {"name": node.node_name}}}

    def _create_snapshot(self, repo, name, body, query):
        node = self.node
        check_snapshot_name(repo, name)
        path, spec = node.repo_dir(repo)
        if spec["settings"].get("readonly") == "true":
            raise EsError(500, "repository_exception", f"[{repo}] cannot create snapshot in a readonly repository")
        gen, data = node.read_repo_data(path)
        if any(s["name"] == name for s in data["snapshots"]):
            raise EsError(400, "invalid_snapshot_name_exception",
                          f"[{repo}:{name}] Invalid snapshot name [{name}], snapshot with the same name already exists")
        chosen = expand(body.get("indices"), node.indices,
                        allow_missing=bool(body.get("ignore_unavailable")))
        for idx in chosen:
            if node.indices[idx].red:
                raise EsError(500, "snapshot_exception", f"[{repo}:{name}] Indices don't have primary shards [{idx}]")
        started = now_ms()
        snap_uuid = short_uuid()
        write_atomic(os.path.join(path, STANDIN_MARKER), STANDIN_NOTE.encode("utf-8"))
        index_ids = {}
        for idx in chosen:
            index = node.indices[idx]
            entry = data["indices"].setdefault(idx, {"id": short_uuid(), "snapshots": []})
            index_ids[idx] = entry["id"]
            folder = os.path.join(path, "indices", entry["id"])
            blob = dump({"format": SNAPSHOT_FORMAT, "index": idx,
                         "docs": [[doc_id, doc["source"]] for doc_id, doc in
                                  sorted(index.docs["docs"].items(), key=lambda kv: kv[1]["seq"])]})
            digest = hashlib.sha256(blob).hexdigest()
            blob_name = "__" + digest
            if not os.path.exists(os.path.join(folder, "0", blob_name)):
                write_atomic(os.path.join(folder, "0", blob_name), blob)
            write_atomic(os.path.join(folder, "0", f"snap-{snap_uuid}.dat"),
                         dump({"format": SNAPSHOT_FORMAT, "snapshot": name, "blob": blob_name, "sha256": digest,
                               "doc_count": len(index.docs["docs"])}))
            meta = {k: index.meta[k] for k in ("name", "uuid", "settings", "mappings", "aliases")}
            write_atomic(os.path.join(folder, f"meta-{snap_uuid}.dat"),
                         dump({"format": SNAPSHOT_FORMAT, "index": meta}))
            entry["snapshots"].append(snap_uuid)
        ended = now_ms()
        shards = sum(node.indices[i].shards() for i in chosen)
        info = {"snapshot": name, "uuid": snap_uuid, "repository": repo, "version_id": 8512000,
                "version": ES_VERSION, "indices": chosen, "data_streams": [],
                "include_global_state": bool(body.get("include_global_state", True)),
                "metadata": body.get("metadata") or {}, "state": "SUCCESS", "start_time": iso(started),
                "start_time_in_millis": started, "end_time": iso(ended), "end_time_in_millis": ended,
                "duration_in_millis": ended - started, "failures": [],
                "shards": {"total": shards, "failed": 0, "successful": shards},
                "feature_states": []}
        write_atomic(os.path.join(path, f"meta-{snap_uuid}.dat"),
                     dump({"format": SNAPSHOT_FORMAT, "repositories_of_cluster": sorted(node.state["repositories"])}))
        write_atomic(os.path.join(path, f"snap-{snap_uuid}.dat"),
                     dump({"format": SNAPSHOT_FORMAT, "snapshot": info, "index_ids": index_ids}))
        data["snapshots"].append({"name": name, "uuid": snap_uuid, "state": 1, "indices": chosen})
        node.write_repo_data(path, gen, data)
        if query.get("wait_for_completion") == "true":
            return 200, {"snapshot": info}, "application/json"
        return 200, {"accepted": True}, "application/json"

    def _delete_snapshot(self, repo, names):
        node = self.node
        path, spec = node.repo_dir(repo)
        if spec["settings"].get("readonly") == "true":
            raise EsError(500, "repository_exception", f"[{repo}] cannot delete snapshot from a readonly repository")
        for name in csv_list(names):
            snap, data = node.find_snapshot(repo, path, name)
            gen, data = node.read_repo_data(path)
            data["snapshots"] = [s for s in data["snapshots"] if s["uuid"] != snap["uuid"]]
            for idx, entry in list(data["indices"].items()):
                folder = os.path.join(path, "indices", entry["id"])
                if snap["uuid"] in entry["snapshots"]:
                    entry["snapshots"].remove(snap["uuid"])
                    for f in (f"meta-{snap['uuid']}.dat", os.path.join("0", f"snap-{snap['uuid']}.dat")):
                        if os.path.exists(os.path.join(folder, f)):
                            os.unlink(os.path.join(folder, f))
                # blobs no snapshot refers to any more are removed, like ES's cleanup after a delete
                shard = os.path.join(folder, "0")
                live = set()
                if os.path.isdir(shard):
                    for f in os.listdir(shard):
                        if f.startswith("snap-"):
                            live.add(read_json(os.path.join(shard, f))["blob"])
                    for f in os.listdir(shard):
                        if f.startswith("__") and f not in live:
                            os.unlink(os.path.join(shard, f))
                if not entry["snapshots"]:
                    del data["indices"][idx]
                    for root, dirs, files in os.walk(folder, topdown=False):
                        for f in files:
                            os.unlink(os.path.join(root, f))
                        for d in dirs:
                            os.rmdir(os.path.join(root, d))
                    if os.path.isdir(folder):
                        os.rmdir(folder)
            for f in ("snap-{}.dat".format(snap["uuid"]), "meta-{}.dat".format(snap["uuid"])):
                if os.path.exists(os.path.join(path, f)):
                    os.unlink(os.path.join(path, f))
            node.write_repo_data(path, gen, data)
        return 200, {"acknowledged": True}, "application/json"

    def _restore(self, repo, name, body, query):
        node = self.node
        path, _spec = node.repo_dir(repo)
        snap, data = node.find_snapshot(repo, path, name)
        info = node.snapshot_info(repo, path, snap)
        chosen = expand(body.get("indices"), info["indices"], allow_missing=bool(body.get("ignore_unavailable")))
        pattern = body.get("rename_pattern")
        replacement = body.get("rename_replacement")
        targets = {}
        for idx in chosen:
            target = re.sub(pattern, java_replacement(replacement or ""), idx) if pattern else idx
            check_index_name(target)
            if target in targets.values():
                raise EsError(500, "snapshot_restore_exception", "[{}:{}/{}] indices [{}] and [{}] are renamed "
                              "into the same index [{}]".format(repo, name, info["uuid"], targets, idx, target))
            existing = node.indices.get(target)
            if existing is not None and existing.is_open():
                raise EsError(500, "snapshot_restore_exception",
                              "[{}:{}/{}] cannot restore index [{}] because an open index with same name already "
                              "exists in the cluster. Either close or delete the existing index or restore the "
                              "index under a different name by providing a rename pattern and replacement name"
                              .format(repo, name, info["uuid"], target))
            targets[idx] = target
        loaded = {}
        for idx, target in targets.items():
            folder = os.path.join(path, "indices", data["indices"][idx]["id"])
            try:
                meta = read_json(os.path.join(folder, "meta-{}.dat".format(snap["uuid"])))["index"]
                shard = read_json(os.path.join(folder, "0", "snap-{}.dat".format(snap["uuid"])))
                with open(os.path.join(folder, "0", shard["blob"]), "rb") as fh:
                    blob = fh.read()
            except (OSError, ValueError, KeyError) as exc:
                raise EsError(500, "snapshot_restore_exception", "[{}:{}/{}] cannot read the files of index [{}]: "
                              "{}".format(repo, name, info["uuid"], idx, exc)) from None
            if hashlib.sha256(blob).hexdigest() != shard["sha256"]:
                raise EsError(500, "snapshot_restore_exception", "[{}:{}/{}] the files of index [{}] are corrupted "
                              "(checksum mismatch)".format(repo, name, info["uuid"], idx))
            loaded[target] = (meta, json.loads(blob.decode("utf-8"))["docs"])
        for target, (meta, docs) in loaded.items():
            if target in node.indices:
                node.delete_index(target)
            store = {"seq": 0, "docs": {}}
            for doc_id, source in docs:
                store["seq"] += 1
                store["docs"][doc_id] = {"seq": store["seq"], "version": 1, "seq_no": store["seq"] - 1,
                                         "source": source}
            settings = {k: v for k, v in meta["settings"].items()
                        if k not in ("index.uuid", "index.provided_name", "index.creation_date",
                                     "index.version.created")}
            node.create_index(target, settings, meta["mappings"], meta.get("aliases"), docs=store)
        shards = sum(node.indices[t].shards() for t in loaded)
        if query.get("wait_for_completion") == "true":
            return 200, {"snapshot": {"snapshot": name, "indices": sorted(loaded),
                                      "shards": {"total": shards, "failed": 0, "successful": shards}}}, \
                "application/json"
        return 200, {"accepted": True}, "application/json"


# --------------------------------------------------------------------------- start-up


def setting(args, env, name, default=None):
    value = getattr(args, name.replace(".", "_"), None)
    if value is not None:
        return value
    return env.get(name, default)


def read_password(env):
    path = env.get("ELASTIC_PASSWORD_FILE")
    if path:
        with open(path, encoding="utf-8") as fh:
            return fh.read().rstrip("\r\n")
    return env.get("ELASTIC_PASSWORD")


def main(argv=None):
    parser = argparse.ArgumentParser(description="llmops-lab STAND-IN for Elasticsearch (NOT Elasticsearch)")
    parser.add_argument("--path.data", dest="path_data")
    parser.add_argument("--path.repo", dest="path_repo")
    parser.add_argument("--http.port", dest="http_port", type=int)
    parser.add_argument("--network.host", dest="network_host")
    args = parser.parse_args(argv)
    env = os.environ
    data = setting(args, env, "path.data", "/usr/share/elasticsearch/data")
    repo = setting(args, env, "path.repo", "") or ""
    port = int(setting(args, env, "http.port", 9200))
    host = setting(args, env, "network.host", "0.0.0.0")  # noqa: S104 - a container's service address
    security = str(env.get("xpack.security.enabled", "true")).lower() != "false"
    try:
        password = read_password(env)
    except OSError as exc:
        print(f"cannot read ELASTIC_PASSWORD_FILE: {exc}", file=sys.stderr)
        return 1
    if security and not password:
        print("warning: security is on and the elastic user has no password: every request gets 401",
              file=sys.stderr)
    Handler.node = Node(data, [p.strip() for p in repo.split(",") if p.strip()],
                        env.get("cluster.name", "llmops-search"), env.get("node.name", "llmops-es-standin"))
    Handler.password = password
    Handler.security = security
    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True

    def _terminate(_signum, _frame):
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, _terminate)
    print("llmops-lab Elasticsearch STAND-IN %s listening on %s:%d (path.data %s, path.repo %s)"
          % (ES_VERSION, host, port, data, repo or "<empty>"), file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
