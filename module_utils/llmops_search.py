# -*- coding: utf-8 -*-
# Copyright: llmops-lab contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The search engine (Elasticsearch 8.15): a small REST client, the per-index fingerprint and the backup.

Used by ``library/search_backup.py`` and ``module_utils/llmops_search_restore.py`` as
``from ansible.module_utils.llmops_search import SearchClient, SearchError``.

Client (``SearchClient``), in the style of ``llmops_qdrant.QdrantClient``:

* HTTP basic authentication (user ``elastic`` by default); the password is sent only in the
  ``Authorization`` header, never in a URL, a message, ``repr()`` or the ``request_hook`` headers.
* Retries with exponential backoff on connection errors, timeouts, HTTP 429/502/503/504, and on a 500
  that is not an Elasticsearch error document; an Elasticsearch error (``{"error": {"type", "reason"}}``)
  such as ``repository_exception`` is final and raised at once as ``SearchError`` with its ``etype``.
* Environment proxy variables are ignored: the search engine is an internal service.

Backup (``backup``), through Elasticsearch's snapshot API with a shared-filesystem repository:

1. the selected indices must not be red (``_cluster/health/<indices>``): a red index cannot be snapshotted;
2. the repository ``repository`` (type ``fs``, ``location`` relative to the server's ``path.repo``) is
   registered (or re-registered) and verified: a server without ``path.repo`` answers ``repository_exception``,
   a folder the node cannot write answers ``repository_verification_exception``: both become a message that
   says what to fix;
3. one snapshot of the selected indices, ``wait_for_completion=true``, ``include_global_state=false``;
4. the repository folder, as this host sees it (``repo_path``: the host side of the ``path.repo`` mount), is
   streamed into the set as ``repository.tar.zst`` (``tar | zstd``, sha256 computed in the same pass by
   ``llmops_pipeline.run_pipeline``);
5. the server's snapshot is deleted at the end of the step. That is safe: the artefact is a complete copy of
   the repository folder (``index-N``, ``index.latest``, ``snap-<uuid>.dat``, ``meta-<uuid>.dat``,
   ``indices/<id>/...``), hashed and fsynced before the delete; a restore registers its own read-only copy of
   it and never needs the server's snapshot. A failed delete is a warning, not a failed backup.

Fingerprint of an index (``fingerprint_docs``): ``doc_count``, ``ids_sha256`` (sha256 over the document ids
sorted by their UTF-8 bytes, one JSON-encoded id per line) and ``docs_sha256`` (sha256 over, in the same
order, the sha256 of the canonical JSON (sorted keys, ASCII, no blanks) of ``{"_id", "_source"}``). A live
index is read with ``_search`` sorted on ``_doc``, paged with ``search_after``, and the number of documents
read must equal ``_count`` (else the index was written meanwhile, or a sort tie skipped documents: never a
silent pass).

What the recorded fingerprint describes (``indices.<i>.fingerprint_source``):

``snapshot``          computed from the snapshot's own files in the repository (the lab's stand-in writes them
                      as JSON, see compose/images/elasticsearch-standin/README.md); exact.
``server-unchanged``  a real Elasticsearch snapshot holds Lucene segment files that cannot be read here, so the
                      index's live fingerprint is taken right before and right after the snapshot (after a
                      refresh) and kept only when both agree: nothing was written meanwhile, so it is the
                      snapshot's. Otherwise the snapshot is taken again (``SNAPSHOT_ATTEMPTS`` in all).
``unverifiable``      written during every attempt: only ``doc_count`` of the last attempt is kept, and a restore
                      says that it could not verify the content (never a silent pass).
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import os
import secrets
import time
from urllib.parse import urlencode, urlsplit

from ansible.module_utils.llmops_backupset import run_times, utc
from ansible.module_utils.llmops_common import InvalidValueError, LlmopsError
from ansible.module_utils.llmops_http import (
    ARTEFACT_SOURCES,
    CONNECTION_ERRORS,
    SNAPSHOT_ATTEMPTS,
    SOURCE_SERVER,
    SOURCE_SNAPSHOT,
    SOURCE_UNVERIFIABLE,
    STANDIN_MARKER,
    HttpError,
    connection,
    seg,
)
from ansible.module_utils.llmops_pipeline import run_pipeline

__all__ = ["SearchClient", "SearchError"]

_RETRY_STATUSES = frozenset([429, 502, 503, 504])
REDACTED = "<redacted>"

DEFAULT_REPOSITORY = "llmops_backup"
ARTEFACT = "repository.tar.zst"
SEARCH_PAGE = 1000
FINGERPRINT_KEYS = ("doc_count", "ids_sha256", "docs_sha256")
# The lab's stand-in writes its repositories in this format (compose/images/elasticsearch-standin/standin.py).
STANDIN_SNAPSHOT_FORMAT = "llmops-lab-elasticsearch-standin-snapshot/1"


class SearchError(HttpError):
    """A failed call. ``status``: HTTP status (None for connection errors); ``etype`` / ``reason``: the
    Elasticsearch error's ``type`` and ``reason`` when the server sent one."""

    def __init__(self, message, status=None, etype=None, reason=None, method=None, path=None):
        super().__init__(message, status=status, method=method, path=path)
        self.etype = etype
        self.reason = reason


class SearchBackupError(LlmopsError):
    """A search backup step failed; the message says which and why (never the password)."""


def seg_list(values):
    return ",".join(seg(v) for v in values)


class SearchClient:
    """Small Elasticsearch REST client. ``url`` like ``http://127.0.0.1:9200``."""

    def __init__(self, url, user="elastic", password=None, timeout=30, retries=3, backoff=1.0, verify_tls=True,
                 request_hook=None):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidValueError("the search url must look like http(s)://host:port, got scheme %r"
                                    % (parts.scheme,))
        if parts.username or parts.password:
            raise InvalidValueError("the search url must not carry credentials; use login_user and login_password")
        self._scheme = parts.scheme
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._base_path = parts.path.rstrip("/")
        self.url = "%s://%s%s" % (parts.scheme, parts.netloc, self._base_path)
        self.user = user
        self._password = password or None
        self.timeout = timeout
        self.retries = max(0, int(retries))
        self.backoff = float(backoff)
        self.verify_tls = verify_tls
        self.request_hook = request_hook
        self._sleep = time.sleep

    def __repr__(self):
        return "SearchClient(url=%r, user=%r, password=%s, timeout=%r, retries=%r)" % (
            self.url, self.user, "'***'" if self._password else "None", self.timeout, self.retries)

    # ------------------------------------------------------------------ transport
    def _connection(self):
        return connection(self._scheme, self._host, self._port, self.timeout, self.verify_tls)

    def _headers(self, content_type=None):
        headers = {"Accept": "application/json", "User-Agent": "llmops-lab-search-client/1"}
        if content_type:
            headers["Content-Type"] = content_type
        public = dict(headers)
        if self._password is not None:
            token = base64.b64encode(("%s:%s" % (self.user or "", self._password)).encode("utf-8")).decode("ascii")
            headers["Authorization"] = "Basic " + token
            public["Authorization"] = "Basic " + REDACTED
        return headers, public

    def _scrub(self, text):
        text = str(text)
        if self._password:
            for secret in (self._password, base64.b64encode(("%s:%s" % (self.user or "", self._password))
                                                            .encode("utf-8")).decode("ascii")):
                text = text.replace(secret, REDACTED)
        return text

    def _fail(self, method, path, status, text, etype=None, reason=None):
        text = self._scrub(text)
        if status is None:
            msg = "Elasticsearch %s %s failed: %s" % (method, path, text)
        else:
            msg = "Elasticsearch %s %s failed with HTTP %s: %s" % (method, path, status, text)
        if status == 401:
            msg += " (check login_user and login_password: the server refused the credentials)"
        return SearchError(msg, status=status, etype=etype, reason=self._scrub(reason) if reason else None,
                           method=method, path=path)

    @staticmethod
    def _error_of(doc, raw, status):
        """``(text, etype, reason)`` of an error answer."""
        err = doc.get("error") if isinstance(doc, dict) else None
        if isinstance(err, dict):
            etype, reason = err.get("type"), err.get("reason")
            return "%s: %s" % (etype, reason), etype, reason
        if isinstance(err, str):
            return err, None, err
        return raw.decode("utf-8", "replace")[:500] or "HTTP %s" % status, None, None

    def _attempts(self):
        for attempt in range(self.retries + 1):
            if attempt:
                self._sleep(self.backoff * (2 ** (attempt - 1)))
            yield attempt

    def request(self, method, path, query=None, body=None, ndjson=None, allow=()):
        """One logical request with retries; returns ``(status, parsed JSON or text)``.

        ``body`` is sent as JSON, ``ndjson`` (a list of JSON-able lines) as ``application/x-ndjson``.
        A status in ``allow`` (404, say) is returned rather than raised.
        """
        target = self._base_path + path + ("?" + urlencode(query) if query else "")
        if ndjson is not None:
            payload = b"".join(json.dumps(line, ensure_ascii=False).encode("utf-8") + b"\n" for line in ndjson)
            headers, public = self._headers("application/x-ndjson")
            hook_body = list(ndjson)
        elif body is not None:
            payload = json.dumps(body, ensure_ascii=False).encode("utf-8")
            headers, public = self._headers("application/json")
            hook_body = body
        else:
            payload, hook_body = None, None
            headers, public = self._headers()
        last_error = None
        for _attempt in self._attempts():
            conn = self._connection()
            try:
                conn.request(method, target, body=payload, headers=headers)
                resp = conn.getresponse()
                raw = resp.read()
            except CONNECTION_ERRORS as exc:
                last_error = self._fail(method, path, None, "%s: %s" % (type(exc).__name__, exc))
                continue
            finally:
                conn.close()
            status = resp.status
            parsed = None
            if raw and "json" in (resp.getheader("Content-Type") or ""):
                try:
                    parsed = json.loads(raw.decode("utf-8"))
                except (ValueError, UnicodeDecodeError):
                    parsed = None
            doc = parsed if parsed is not None else raw.decode("utf-8", "replace")
            if self.request_hook is not None:
                self.request_hook(method, path, dict(query or {}), dict(public), hook_body, status, doc)
            if 200 <= status < 300 or status in allow:
                return status, doc
            text, etype, reason = self._error_of(parsed, raw, status)
            last_error = self._fail(method, path, status, text, etype, reason)
            if status not in _RETRY_STATUSES and not (status == 500 and etype is None):
                raise last_error
        raise last_error

    def _call(self, method, path, query=None, body=None, ndjson=None):
        return self.request(method, path, query=query, body=body, ndjson=ndjson)[1]

    # ------------------------------------------------------------------ cluster
    def info(self):
        return self._call("GET", "/")

    def health(self, indices=None, wait_for_status=None, timeout_s=None):
        """``_cluster/health`` (of ``indices`` when given); with ``wait_for_status`` a timed-out wait (HTTP 408)
        is returned with ``timed_out: true``, not raised."""
        query = {}
        if wait_for_status:
            query["wait_for_status"] = wait_for_status
            query["timeout"] = "%ds" % int(timeout_s or 30)
        path = "/_cluster/health" + ("/" + seg_list(indices) if indices else "")
        return self.request("GET", path, query=query or None, allow=(408,))[1]

    def cat_indices(self):
        """Every index as ``_cat/indices?format=json`` rows (``index``, ``health``, ``status``, ``docs.count``)."""
        return self._call("GET", "/_cat/indices", query={"format": "json", "expand_wildcards": "all"})

    # ------------------------------------------------------------------ indices and documents
    def get_index(self, name):
        return self._call("GET", "/" + seg(name))

    def index_exists(self, name):
        return self.request("GET", "/" + seg(name), allow=(404,))[0] == 200

    def create_index(self, name, settings=None, mappings=None):
        body = {}
        if settings:
            body["settings"] = settings
        if mappings:
            body["mappings"] = mappings
        return self._call("PUT", "/" + seg(name), body=body)

    def delete_index(self, name):
        return self._call("DELETE", "/" + seg(name))

    def close_index(self, name):
        return self._call("POST", "/%s/_close" % seg(name))

    def open_index(self, name):
        return self._call("POST", "/%s/_open" % seg(name))

    def put_doc(self, index, doc_id, source):
        return self._call("PUT", "/%s/_doc/%s" % (seg(index), seg(doc_id)), body=source)

    def get_doc(self, index, doc_id):
        """The document's ``_source``, or None when there is none."""
        status, doc = self.request("GET", "/%s/_doc/%s" % (seg(index), seg(doc_id)), allow=(404,))
        if status == 404 and isinstance(doc, dict) and doc.get("found") is False:
            return None
        if status == 404:
            raise self._fail("GET", "/%s/_doc/%s" % (index, doc_id), 404, self._error_of(doc, b"", 404)[0])
        return doc["_source"]

    def bulk(self, operations, refresh=True):
        """``operations``: ``(action, index, id, source)`` with action index/create/delete; raises on any item
        error, naming the first."""
        lines = []
        for action, index, doc_id, source in operations:
            meta = {"_index": index}
            if doc_id is not None:
                meta["_id"] = doc_id
            lines.append({action: meta})
            if action != "delete":
                lines.append(source)
        result = self._call("POST", "/_bulk", query={"refresh": "true"} if refresh else None, ndjson=lines)
        if result.get("errors"):
            first = next(item for item in result["items"] if next(iter(item.values())).get("error"))
            raise SearchError("Elasticsearch bulk request had item errors, first: %s"
                              % self._scrub(json.dumps(first, ensure_ascii=False)))
        return result

    def refresh(self, indices):
        return self._call("POST", "/%s/_refresh" % seg_list(indices))

    def count(self, index):
        return int(self._call("GET", "/%s/_count" % seg(index))["count"])

    def iter_docs(self, index, page=SEARCH_PAGE, source=True):
        """Every document of ``index`` as ``(id, _source)``, sorted on ``_doc``, paged with ``search_after``."""
        after = None
        while True:
            body = {"size": int(page), "sort": ["_doc"], "_source": source, "track_total_hits": True}
            if after is not None:
                body["search_after"] = after
            result = self._call("POST", "/%s/_search" % seg(index), body=body)
            hits = result["hits"]["hits"]
            for hit in hits:
                yield hit["_id"], hit.get("_source")
            if len(hits) < page:
                return
            after = hits[-1]["sort"]

    # ------------------------------------------------------------------ snapshot repositories
    def put_repository(self, name, location, readonly=False, verify=True):
        settings = {"location": location}
        if readonly:
            settings["readonly"] = True
        return self._call("PUT", "/_snapshot/" + seg(name), query={"verify": "true" if verify else "false"},
                          body={"type": "fs", "settings": settings})

    def get_repository(self, name):
        """The repository's ``{type, settings}``, or None when it is not registered."""
        status, doc = self.request("GET", "/_snapshot/" + seg(name), allow=(404,))
        return doc.get(name) if status == 200 and isinstance(doc, dict) else None

    def verify_repository(self, name):
        return self._call("POST", "/_snapshot/%s/_verify" % seg(name))

    def delete_repository(self, name):
        return self._call("DELETE", "/_snapshot/" + seg(name))

    # ------------------------------------------------------------------ snapshots
    def create_snapshot(self, repository, snapshot, indices, include_global_state=False):
        body = {"indices": ",".join(indices), "include_global_state": bool(include_global_state),
                "ignore_unavailable": False}
        return self._call("PUT", "/_snapshot/%s/%s" % (seg(repository), seg(snapshot)),
                          query={"wait_for_completion": "true"}, body=body)["snapshot"]

    def get_snapshot(self, repository, snapshot):
        return self._call("GET", "/_snapshot/%s/%s" % (seg(repository), seg(snapshot)))["snapshots"][0]

    def delete_snapshot(self, repository, snapshot):
        return self._call("DELETE", "/_snapshot/%s/%s" % (seg(repository), seg(snapshot)))

    def restore_snapshot(self, repository, snapshot, indices, rename_pattern=None, rename_replacement=None):
        body = {"indices": ",".join(indices), "include_global_state": False, "include_aliases": True}
        if rename_pattern:
            body["rename_pattern"] = rename_pattern
            body["rename_replacement"] = rename_replacement or ""
        return self._call("POST", "/_snapshot/%s/%s/_restore" % (seg(repository), seg(snapshot)),
                          query={"wait_for_completion": "true"}, body=body)["snapshot"]


# --------------------------------------------------------------------------------------------
# fingerprints


def _doc_line(doc_id, source):
    return json.dumps({"_id": doc_id, "_source": source}, sort_keys=True, ensure_ascii=True,
                      separators=(",", ":")).encode("ascii")


def fingerprint_docs(docs):
    """The fingerprint (see the module docstring) of an iterable of ``(id, _source)``."""
    rows = sorted(((doc_id.encode("utf-8"), doc_id, hashlib.sha256(_doc_line(doc_id, source)).digest())
                   for doc_id, source in docs), key=lambda r: r[0])
    ids, all_docs = hashlib.sha256(), hashlib.sha256()
    for _key, doc_id, digest in rows:
        ids.update(json.dumps(doc_id).encode("ascii") + b"\n")
        all_docs.update(digest)
    return {"doc_count": len(rows), "ids_sha256": ids.hexdigest(), "docs_sha256": all_docs.hexdigest()}


def fingerprint_index(client, name):
    """The fingerprint of a live index (refreshed first) plus ``counted``, the server's ``_count``."""
    client.refresh([name])
    fp = fingerprint_docs(client.iter_docs(name))
    fp["counted"] = client.count(name)
    return fp


def consistent(fp):
    return fp.get("counted", fp["doc_count"]) == fp["doc_count"]


def same_fingerprint(before, after):
    return consistent(before) and consistent(after) and all(before[k] == after[k] for k in FINGERPRINT_KEYS)


def compare(expected, actual):
    """Differences between an expected fingerprint and a live one, for the keys the expected one has."""
    out = ["%s: expected %s, found %s" % (k, json.dumps(expected[k]), json.dumps(actual.get(k)))
           for k in FINGERPRINT_KEYS if k in expected and expected[k] != actual.get(k)]
    if not consistent(actual):
        out.append("_count says %s documents, paging read %s: the index is being written"
                   % (actual["counted"], actual["doc_count"]))
    return out


# --------------------------------------------------------------------------------------------
# the stand-in's repository format (readable here; a real repository holds Lucene files)


def _read_json(path):
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def repository_snapshots(repo_dir):
    """``{snapshot name: uuid}`` of a stand-in repository folder; None when it is not one (a real ES repository)."""
    if not os.path.isfile(os.path.join(repo_dir, STANDIN_MARKER)):
        return None
    try:
        with open(os.path.join(repo_dir, "index.latest"), "rb") as handle:
            gen = int.from_bytes(handle.read(8), "big", signed=True)
        data = _read_json(os.path.join(repo_dir, "index-%d" % gen))
    except (OSError, ValueError) as exc:
        raise SearchBackupError("the stand-in repository %s has no readable index-N: %s" % (repo_dir, exc)) from exc
    return {snap["name"]: snap["uuid"] for snap in data.get("snapshots") or []}


def snapshot_fingerprints(repo_dir, snapshot):
    """``{index: fingerprint}`` of what snapshot ``snapshot`` of the repository folder holds, read from its files;
    None when the format is not readable here (a real Elasticsearch repository)."""
    snaps = repository_snapshots(repo_dir)
    if snaps is None:
        return None
    if snapshot not in snaps:
        raise SearchBackupError("the repository %s holds no snapshot %s (it holds: %s)"
                                % (repo_dir, snapshot, ", ".join(sorted(snaps)) or "none"))
    snap_uuid = snaps[snapshot]
    try:
        info = _read_json(os.path.join(repo_dir, "snap-%s.dat" % snap_uuid))
        out = {}
        for index, index_id in (info.get("index_ids") or {}).items():
            shard = os.path.join(repo_dir, "indices", index_id, "0")
            meta = _read_json(os.path.join(shard, "snap-%s.dat" % snap_uuid))
            with open(os.path.join(shard, os.path.basename(meta["blob"])), "rb") as handle:
                blob = handle.read()
            if hashlib.sha256(blob).hexdigest() != meta["sha256"]:
                raise SearchBackupError("snapshot %s, index %s: its data file is corrupted (sha256)"
                                        % (snapshot, index))
            doc = json.loads(blob.decode("utf-8"))
            if doc.get("format") != STANDIN_SNAPSHOT_FORMAT:
                raise SearchBackupError("snapshot %s, index %s: unknown data format" % (snapshot, index))
            fp = fingerprint_docs((doc_id, source) for doc_id, source in doc["docs"])
            if fp["doc_count"] != int(meta["doc_count"]):
                raise SearchBackupError("snapshot %s, index %s announces %s documents and holds %d"
                                        % (snapshot, index, meta["doc_count"], fp["doc_count"]))
            out[index] = fp
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SearchBackupError("snapshot %s in %s cannot be read: %s" % (snapshot, repo_dir, exc)) from exc
    return out


# --------------------------------------------------------------------------------------------
# backup


def select_indices(names, patterns=None):
    """The names of ``names`` that ``patterns`` select (fnmatch; a pattern without wildcard must exist); without
    patterns every index not starting with ``.`` (system and hidden indices are not the application's data)."""
    names = sorted(names)
    if not patterns:
        return [n for n in names if not n.startswith(".")]
    chosen = []
    for pattern in patterns:
        if any(c in pattern for c in "*?["):
            matched = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        elif pattern in names:
            matched = [pattern]
        else:
            raise SearchBackupError("index %r does not exist (the server has: %s)" % (pattern, ", ".join(names)
                                                                                      or "none"))
        chosen += [n for n in matched if n not in chosen]
    return chosen


def check_health(client, indices):
    """Fail with the red indices named when any of ``indices`` (or the cluster) is red."""
    health = client.health(indices)
    if health.get("status") == "red":
        red = [row["index"] for row in client.cat_indices() if row.get("health") == "red" and row["index"] in indices]
        raise SearchBackupError(
            "cluster health is red (%s unassigned primary shard(s); red indices: %s): a red index cannot be "
            "snapshotted; bring its shards back (GET _cluster/allocation/explain) and run the backup again"
            % (health.get("unassigned_primary_shards", "?"), ", ".join(red) or "?"))
    return health.get("status")


def ensure_repository(client, name, location, readonly=False):
    """Register the ``fs`` repository ``name`` at ``location`` (relative to ``path.repo``) and verify it."""
    try:
        current = client.get_repository(name)
        if current is None or current.get("type") != "fs" or (current.get("settings") or {}).get("location") != \
                location or str((current.get("settings") or {}).get("readonly", "false")).lower() != \
                str(bool(readonly)).lower():
            client.put_repository(name, location, readonly=readonly, verify=False)
        return client.verify_repository(name)
    except SearchError as exc:
        if exc.etype == "repository_exception" and "path.repo" in (exc.reason or ""):
            raise SearchBackupError(
                "Elasticsearch refuses the snapshot repository %s at %s: %s. Set path.repo in the server's "
                "configuration (the Compose template's environment path.repo=/usr/share/elasticsearch/snapshots, "
                "with a volume there) and restart it" % (name, location, exc.reason)) from exc
        if exc.etype == "repository_verification_exception":
            raise SearchBackupError(
                "the snapshot repository %s at %s failed verification: %s. The server must be able to write the "
                "folder (owner uid 1000 in the official image) and every node must see it" % (name, location,
                                                                                              exc.reason)) from exc
        raise


def snapshot_name(prefix="llmops"):
    return "%s-%s-%s" % (prefix, time.strftime("%Y%m%d-%H%M%S", time.gmtime()), secrets.token_hex(4))


def inspect(client, indices=None):
    """Check-mode view: ``{server_version, health, indices: {name: {doc_count, health}}}``; changes nothing."""
    rows = {row["index"]: row for row in client.cat_indices()}
    chosen = select_indices(rows, indices)
    return {"server_version": (client.info().get("version") or {}).get("number"),
            "health": client.health(chosen).get("status") if chosen else None,
            "indices": {n: {"doc_count": int(rows[n].get("docs.count") or 0), "health": rows[n].get("health"),
                            "status": rows[n].get("status")} for n in chosen}}


def backup(client, dest, repo_path, indices=None, repository=DEFAULT_REPOSITORY, location=None, zstd_level=3,
           zstd_threads=0, timeout=None):
    """Snapshot the selected indices and stream the repository folder into ``dest``; return the manifest entry.

    ``repo_path`` is the host path of the server's ``path.repo`` folder; ``location`` the repository's folder
    below it (default: ``repository``).
    """
    started = utc()
    t0 = time.monotonic()
    location = location or repository
    if os.path.isabs(location) or os.path.normpath(location) != location or location.startswith(".."):
        raise SearchBackupError("location %r must be a plain folder name relative to path.repo" % location)
    version = (client.info().get("version") or {}).get("number")
    names = select_indices([row["index"] for row in client.cat_indices()], indices)
    if not names:
        raise SearchBackupError("no index matches %s: nothing to back up" % (", ".join(indices or []) or "*"))
    closed = [row["index"] for row in client.cat_indices() if row["index"] in names and row.get("status") == "close"]
    if closed:
        raise SearchBackupError("index(es) %s are closed: open them (POST <index>/_open) or leave them out of "
                                "indices" % ", ".join(closed))
    check_health(client, names)
    ensure_repository(client, repository, location)
    repo_dir = os.path.join(repo_path, location)
    if not os.path.isdir(repo_dir):
        raise SearchBackupError("the repository folder %s is not visible on this host: repo_path must be the host "
                                "side of the server's path.repo mount" % repo_dir)
    warnings = []
    details = {}
    readable = None
    for attempt in range(1, SNAPSHOT_ATTEMPTS + 1):
        before = {n: fingerprint_index(client, n) for n in names} if readable is False else None
        snap = snapshot_name()
        info = client.create_snapshot(repository, snap, names)
        if info.get("state") != "SUCCESS":
            _drop(client, repository, snap, warnings)
            raise SearchBackupError("snapshot %s ended in state %s: %s" % (snap, info.get("state"),
                                                                           info.get("failures")))
        from_files = snapshot_fingerprints(repo_dir, snap)
        if from_files is not None:
            missing = [n for n in names if n not in from_files]
            if missing:
                raise SearchBackupError("snapshot %s does not hold %s" % (snap, ", ".join(missing)))
            details = {n: dict(from_files[n], fingerprint_source=SOURCE_SNAPSHOT) for n in names}
            break
        if before is None:
            readable = False
            warnings.append("the snapshot's files cannot be read here (a real Elasticsearch repository): each "
                            "index's fingerprint is the server's, taken right before and after the snapshot")
            _drop(client, repository, snap, warnings)
            before = {n: fingerprint_index(client, n) for n in names}
            snap = snapshot_name()
            info = client.create_snapshot(repository, snap, names)
        after = {n: fingerprint_index(client, n) for n in names}
        changed = [n for n in names if not same_fingerprint(before[n], after[n])]
        if not changed or attempt == SNAPSHOT_ATTEMPTS:
            for n in names:
                if n in changed:
                    details[n] = {"doc_count": after[n]["doc_count"], "fingerprint_source": SOURCE_UNVERIFIABLE}
                    warnings.append("index %s was written during each of %d snapshots: its content has no "
                                    "fingerprint; a restore cannot verify it" % (n, attempt))
                else:
                    details[n] = dict({k: after[n][k] for k in FINGERPRINT_KEYS}, fingerprint_source=SOURCE_SERVER)
            break
        warnings.append("index(es) %s were written while snapshot %s was taken: taking it again"
                        % (", ".join(changed), snap))
        _drop(client, repository, snap, warnings)
    os.makedirs(dest, mode=0o700, exist_ok=True)
    path = os.path.join(dest, ARTEFACT)
    try:
        result = run_pipeline(["tar", "-C", repo_dir, "--sort=name", "--exclude=./tests-*", "-cf", "-", "."], path,
                              compress=True, zstd_level=zstd_level, zstd_threads=zstd_threads,
                              timeout=timeout or None, source_name="tar")
    except LlmopsError as exc:
        _drop(client, repository, snap, warnings)
        raise SearchBackupError("streaming the repository %s into %s failed: %s" % (repo_dir, path, exc)) from exc
    deleted = _drop(client, repository, snap, warnings)
    fingerprint = {n: {k: d[k] for k in FINGERPRINT_KEYS if k in d} for n, d in details.items()}
    sources = sorted({d["fingerprint_source"] for d in details.values()})
    return {
        "status": "success",
        "type": "search",
        "backup_type": "full",
        "tool": "elasticsearch snapshot API (fs repository)",
        "server_version": version,
        "url": client.url,
        **run_times(started, t0),
        "bytes": result.bytes_out,
        "bytes_in": result.bytes_in,
        "compressed": True,
        "files": [{"path": path, "sha256": result.sha256, "size": result.bytes_out}],
        "repository": {"name": repository, "location": location, "snapshot": snap, "snapshot_uuid": info.get("uuid"),
                       "file": ARTEFACT, "server_snapshot_deleted": deleted},
        "indices": details,
        "fingerprint": fingerprint,
        "fingerprint_source": sources[0] if len(sources) == 1 else "mixed",
        "fingerprint_stable": all(d["fingerprint_source"] in ARTEFACT_SOURCES for d in details.values()),
        "warnings": warnings,
    }


def _drop(client, repository, snap, warnings):
    """Delete the server's snapshot; a failure is a warning (the snapshot stays in the repository)."""
    try:
        client.delete_snapshot(repository, snap)
        return True
    except SearchError as exc:
        warnings.append("could not delete the server's snapshot %s from repository %s: %s" % (snap, repository, exc))
        return False
