# -*- coding: utf-8 -*-
# Copyright: llmops-lab contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Minimal Qdrant REST client for the llmops-lab bundle (stdlib only).

Used by the bundle's Ansible modules as
``from ansible.module_utils.llmops_qdrant import QdrantClient, QdrantError``.

* The API key is sent as the ``api-key`` header and never appears in exception
  messages, ``repr()`` or the ``request_hook`` headers.
* Retries (exponential backoff) only on connection errors, timeouts and HTTP
  5xx/429.  Every attempt has its own socket timeout.
* Snapshot downloads are streamed to a temp file next to the destination,
  hashed with SHA-256 on the fly, fsynced and renamed into place.
* Snapshot uploads stream a multipart/form-data body from the file in chunks
  with a precomputed Content-Length; the file is never loaded into memory.
* Environment proxy variables are ignored: Qdrant is an internal service.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import tempfile
import time
import uuid
from urllib.parse import urlencode, urlsplit

try:
    from ansible.module_utils.llmops_common import InvalidValueError
    from ansible.module_utils.llmops_http import CONNECTION_ERRORS, HttpError, connection, seg
except ImportError:  # imported directly (tests) rather than through Ansible
    from module_utils.llmops_common import InvalidValueError
    from module_utils.llmops_http import CONNECTION_ERRORS, HttpError, connection, seg

__all__ = ["QdrantClient", "QdrantError"]

_RETRY_STATUSES = frozenset([429, 500, 502, 503, 504])


class QdrantError(HttpError):
    """A failed Qdrant call.  ``status`` is the HTTP status (None for connection errors),
    ``error`` Qdrant's error text (``status.error`` of the response body)."""

    def __init__(self, message, status=None, error=None, method=None, path=None):
        super().__init__(message, status=status, method=method, path=path)
        self.error = error


# what a snapshot download retries after
_DOWNLOAD_ERRORS = (QdrantError,) + CONNECTION_ERRORS


def _bool(value):
    return "true" if value else "false"


class QdrantClient:
    """Small Qdrant REST client.  ``url`` like ``http://qdrant:6333``."""

    def __init__(self, url, api_key=None, timeout=30, retries=3, backoff=1.0, verify_tls=True, request_hook=None):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidValueError("Qdrant url must look like http(s)://host:port, got scheme %r" % (parts.scheme,))
        if parts.username or parts.password:
            raise InvalidValueError("Qdrant url must not carry credentials; use api_key")
        self._scheme = parts.scheme
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._base_path = parts.path.rstrip("/")
        self.url = "%s://%s%s" % (parts.scheme, parts.netloc, self._base_path)
        self._api_key = api_key or None
        self.timeout = timeout
        self.retries = max(0, int(retries))
        self.backoff = float(backoff)
        self.verify_tls = verify_tls
        self.request_hook = request_hook
        self._sleep = time.sleep

    def __repr__(self):
        return "QdrantClient(url=%r, api_key=%s, timeout=%r, retries=%r)" % (
            self.url, "'***'" if self._api_key else "None", self.timeout, self.retries)

    # ------------------------------------------------------------------ transport
    def _connection(self):
        return connection(self._scheme, self._host, self._port, self.timeout, self.verify_tls)

    def _headers(self, extra=None):
        headers = {"Accept": "application/json", "User-Agent": "llmops-lab-qdrant-client/1"}
        if extra:
            headers.update(extra)
        public = dict(headers)
        if self._api_key:
            headers["api-key"] = self._api_key
            public["api-key"] = "<redacted>"
        return headers, public

    def _target(self, path, query):
        target = self._base_path + path
        if query:
            target += "?" + urlencode(query)
        return target

    def _scrub(self, text):
        text = str(text)
        if self._api_key and self._api_key in text:
            text = text.replace(self._api_key, "<redacted>")
        return text

    def _fail(self, method, path, status, error):
        error = self._scrub(error) if error is not None else None
        if status is None:
            msg = ("Qdrant %s %s failed: %s; Qdrant does not answer at %s: check that it runs (`docker ps`, its "
                   "container's logs) and that the URL and port (stack_ports.qdrant) are right, then run again"
                   % (method, path, error, self.url))
        else:
            msg = "Qdrant %s %s failed with HTTP %s: %s" % (method, path, status, error)
            if status in (401, 403):
                msg += ("; the API key was refused: check that qdrant_api_key (the vault) is the server's "
                        "service.api_key (QDRANT__SERVICE__API_KEY), then run again")
        return QdrantError(msg, status=status, error=error, method=method, path=path)

    @staticmethod
    def _error_text(raw, status):
        try:
            doc = json.loads(raw.decode("utf-8"))
            err = doc.get("status", {}).get("error") if isinstance(doc, dict) else None
            if isinstance(err, str):
                return err, doc
            return raw.decode("utf-8", "replace")[:500] or "HTTP %s" % status, doc
        except (ValueError, UnicodeDecodeError, AttributeError):
            return raw.decode("utf-8", "replace")[:500] or "HTTP %s" % status, None

    def _hook(self, method, path, query, headers, json_body, status, response_json):
        if self.request_hook is not None:
            self.request_hook(method, path, dict(query or {}), dict(headers), json_body, status, response_json)

    def _attempts(self):
        """Yield attempt numbers, sleeping with exponential backoff between them."""
        for attempt in range(self.retries + 1):
            if attempt:
                self._sleep(self.backoff * (2 ** (attempt - 1)))
            yield attempt

    def _exchange(self, method, path, query=None, body=None, stream=False, send_body=None, extra_headers=None,
                  hook_body=None):
        """One logical request with retries.  Returns (status, response, conn) when stream=True
        (caller reads and closes), else (status, parsed_json_or_text)."""
        target = self._target(path, query)
        extra = dict(extra_headers or {})
        payload = None
        if body is not None:
            payload = json.dumps(body).encode("utf-8")
            extra["Content-Type"] = "application/json"
        headers, public = self._headers(extra)
        last_error = None
        for _attempt in self._attempts():
            conn = self._connection()
            try:
                if send_body is not None:
                    conn.putrequest(method, target)
                    for key, value in headers.items():
                        conn.putheader(key, value)
                    conn.endheaders()
                    try:
                        send_body(conn)
                    except (BrokenPipeError, ConnectionResetError):
                        # The server may answer (e.g. 401) and close before the whole body is sent:
                        # read that answer if there is one, else it is a connection error below.
                        pass
                else:
                    conn.request(method, target, body=payload, headers=headers)
                resp = conn.getresponse()
            except CONNECTION_ERRORS as exc:
                conn.close()
                last_error = self._fail(method, path, None, "%s: %s" % (type(exc).__name__, exc))
                continue
            status = resp.status
            ok = 200 <= status < 300
            if stream and ok:
                self._hook(method, path, query, public, body if hook_body is None else hook_body, status, None)
                return status, resp, conn
            try:
                raw = resp.read()
            except CONNECTION_ERRORS as exc:
                conn.close()
                last_error = self._fail(method, path, None, "%s: %s" % (type(exc).__name__, exc))
                continue
            conn.close()
            ctype = resp.getheader("Content-Type") or ""
            parsed = None
            if "json" in ctype:
                try:
                    parsed = json.loads(raw.decode("utf-8"))
                except (ValueError, UnicodeDecodeError):
                    parsed = None
            self._hook(method, path, query, public, body if hook_body is None else hook_body, status,
                       parsed if parsed is not None else raw.decode("utf-8", "replace"))
            if ok:
                return status, (parsed if parsed is not None else raw.decode("utf-8", "replace"))
            text, _doc = self._error_text(raw, status)
            last_error = self._fail(method, path, status, text)
            if status not in _RETRY_STATUSES:
                raise last_error
        raise last_error

    def _call(self, method, path, query=None, body=None):
        _status, doc = self._exchange(method, path, query=query, body=body)
        if isinstance(doc, dict) and "result" in doc:
            return doc["result"]
        return doc

    # ------------------------------------------------------------------ service
    def health(self):
        """GET / (version info) and GET /healthz; returns the version info plus ``healthz``."""
        info = self._call("GET", "/")
        text = self._call("GET", "/healthz")
        info = dict(info) if isinstance(info, dict) else {"raw": info}
        info["healthz"] = str(text).strip()
        return info

    def probe(self, endpoint="readyz"):
        """GET /healthz, /livez or /readyz; returns the plain-text answer."""
        if endpoint not in ("healthz", "livez", "readyz"):
            raise ValueError("endpoint must be healthz, livez or readyz")
        return str(self._call("GET", "/" + endpoint)).strip()

    # ------------------------------------------------------------------ collections
    def list_collections(self):
        return [c["name"] for c in self._call("GET", "/collections")["collections"]]

    def get_collection(self, name):
        return self._call("GET", "/collections/" + seg(name))

    def collection_exists(self, name):
        return bool(self._call("GET", "/collections/%s/exists" % seg(name))["exists"])

    def create_collection(self, name, size, distance="Cosine"):
        body = {"vectors": {"size": int(size), "distance": distance}}
        return self._call("PUT", "/collections/" + seg(name), body=body)

    def delete_collection(self, name):
        return self._call("DELETE", "/collections/" + seg(name))

    # ------------------------------------------------------------------ points
    def upsert_points(self, name, points, wait=True):
        points = [dict(p) for p in points]
        return self._call("PUT", "/collections/%s/points" % seg(name), query={"wait": _bool(wait)},
                          body={"points": points})

    def retrieve(self, name, ids, with_payload=True, with_vector=True):
        return self._call("POST", "/collections/%s/points" % seg(name),
                          body={"ids": list(ids), "with_payload": with_payload, "with_vector": with_vector})

    def count(self, name, exact=True):
        return self._call("POST", "/collections/%s/points/count" % seg(name), body={"exact": bool(exact)})["count"]

    def scroll_all(self, name, with_payload=True, with_vector=True, page=256):
        """Generator over every point of the collection, in Qdrant's id order."""
        offset = None
        while True:
            body = {"limit": int(page), "with_payload": with_payload, "with_vector": with_vector}
            if offset is not None:
                body["offset"] = offset
            result = self._call("POST", "/collections/%s/points/scroll" % seg(name), body=body)
            yield from result["points"]
            offset = result.get("next_page_offset")
            if offset is None:
                return

    # ------------------------------------------------------------------ snapshots (collection)
    def create_snapshot(self, name):
        return self._call("POST", "/collections/%s/snapshots" % seg(name), query={"wait": "true"})

    def list_snapshots(self, name):
        return self._call("GET", "/collections/%s/snapshots" % seg(name))

    def delete_snapshot(self, name, snapshot):
        return self._call("DELETE", "/collections/%s/snapshots/%s" % (seg(name), seg(snapshot)),
                          query={"wait": "true"})

    def download_snapshot(self, name, snapshot, dest_path, chunk=1 << 20, progress=None):
        """Stream a collection snapshot to dest_path (atomically); returns its sha256 hex."""
        return self._download("/collections/%s/snapshots/%s" % (seg(name), seg(snapshot)), dest_path, chunk,
                              progress)

    def upload_snapshot(self, name, path, priority="snapshot", checksum=None):
        """Recover collection ``name`` from a local snapshot file (multipart upload, streamed)."""
        query = {"wait": "true", "priority": priority}
        if checksum:
            query["checksum"] = checksum
        boundary = "llmops-qdrant-" + uuid.uuid4().hex
        filename = os.path.basename(path).replace('"', "_").replace("\r", "_").replace("\n", "_")
        head = ("--%s\r\nContent-Disposition: form-data; name=\"snapshot\"; filename=\"%s\"\r\n"
                "Content-Type: application/octet-stream\r\n\r\n" % (boundary, filename)).encode("utf-8")
        tail = ("\r\n--%s--\r\n" % boundary).encode("ascii")
        size = os.path.getsize(path)

        def send_body(conn, chunk=1 << 20):
            conn.send(head)
            with open(path, "rb") as fh:
                while True:
                    block = fh.read(chunk)
                    if not block:
                        break
                    conn.send(block)
            conn.send(tail)

        extra = {"Content-Type": "multipart/form-data; boundary=%s" % boundary,
                 "Content-Length": str(len(head) + size + len(tail))}
        _status, doc = self._exchange("POST", "/collections/%s/snapshots/upload" % seg(name), query=query,
                                      send_body=send_body, extra_headers=extra)
        return doc.get("result") if isinstance(doc, dict) else doc

    def recover_snapshot(self, name, location, priority="snapshot", checksum=None):
        body = {"location": location, "priority": priority}
        if checksum:
            body["checksum"] = checksum
        return self._call("PUT", "/collections/%s/snapshots/recover" % seg(name), query={"wait": "true"},
                          body=body)

    # ------------------------------------------------------------------ snapshots (full storage)
    def create_full_snapshot(self):
        return self._call("POST", "/snapshots", query={"wait": "true"})

    def list_full_snapshots(self):
        return self._call("GET", "/snapshots")

    def download_full_snapshot(self, snapshot, dest_path, chunk=1 << 20, progress=None):
        return self._download("/snapshots/" + seg(snapshot), dest_path, chunk, progress)

    def delete_full_snapshot(self, snapshot):
        return self._call("DELETE", "/snapshots/" + seg(snapshot), query={"wait": "true"})

    # ------------------------------------------------------------------ download helper
    def _download(self, path, dest_path, chunk, progress):
        dest_path = os.path.abspath(dest_path)
        directory = os.path.dirname(dest_path)
        last_error = None
        for _attempt in self._attempts():
            _status, resp, conn = self._exchange("GET", path, stream=True,
                                                 extra_headers={"Accept": "application/octet-stream"})
            total = resp.getheader("Content-Length")
            total = int(total) if total and total.isdigit() else None
            digest = hashlib.sha256()
            done = 0
            fd, tmp = tempfile.mkstemp(prefix=".%s.part-" % os.path.basename(dest_path), dir=directory)
            try:
                with os.fdopen(fd, "wb") as out:
                    while True:
                        block = resp.read(chunk)
                        if not block:
                            break
                        out.write(block)
                        digest.update(block)
                        done += len(block)
                        if progress is not None:
                            progress(done, total)
                    out.flush()
                    os.fsync(out.fileno())
                if total is not None and done != total:
                    raise self._fail("GET", path, None, "short read: got %d of %d bytes" % (done, total))
                os.replace(tmp, dest_path)
                tmp = None
            except _DOWNLOAD_ERRORS as exc:
                last_error = exc if isinstance(exc, QdrantError) else self._fail(
                    "GET", path, None, "%s: %s" % (type(exc).__name__, exc))
                if isinstance(exc, OSError) and not isinstance(exc, (ConnectionError, socket.timeout, TimeoutError)):
                    raise last_error from exc  # local disk errors are not retried
                continue
            finally:
                conn.close()
                if tmp is not None and os.path.exists(tmp):
                    os.unlink(tmp)
            try:
                dir_fd = os.open(directory, os.O_RDONLY)
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)
            except OSError:
                pass
            return digest.hexdigest()
        raise last_error
