"""Helpers for tests/unit/test_qdrant_standin.py: run the Qdrant STAND-IN as a subprocess and
validate recorded HTTP exchanges against Qdrant's OpenAPI document (openapi-core)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from functools import lru_cache
from pathlib import Path

from module_utils.llmops_qdrant import QdrantClient

REPO_ROOT = Path(__file__).resolve().parents[2]
STANDIN = REPO_ROOT / "compose" / "images" / "qdrant-standin" / "standin.py"
OPENAPI_DOC = REPO_ROOT / "tests" / "data" / "qdrant-openapi-1.19.0.json"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Recorder:
    """request_hook for QdrantClient: keeps every exchange."""

    def __init__(self):
        self.exchanges: list[dict] = []

    def __call__(self, method, path, query, headers, json_body, status, response_json):
        self.exchanges.append(
            {
                "method": method,
                "path": path,
                "query": query,
                "headers": headers,
                "json_body": json_body,
                "status": status,
                "response": response_json,
            }
        )


class StandinProcess:
    """standin.py on 127.0.0.1:<free port> with storage/snapshots under `base`."""

    def __init__(self, base: Path, api_key: str | None):
        self.base = base
        self.storage = base / "storage"
        self.snapshots = base / "snapshots"
        self.api_key = api_key
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = base / "standin.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("QDRANT__")}
        if self.api_key:
            env["QDRANT__SERVICE__API_KEY"] = self.api_key
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._log = log
        self.proc = subprocess.Popen(
            [sys.executable, str(STANDIN), "--host", "127.0.0.1", "--port", str(self.port),
             "--storage", str(self.storage), "--snapshots", str(self.snapshots)],
            stdout=log, stderr=log, env=env, cwd=str(self.base),
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("stand-in exited early:\n" + self.log_path.read_text(errors="replace"))
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=1) as resp:  # noqa: S310
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                time.sleep(0.05)
        raise RuntimeError("stand-in did not become healthy:\n" + self.log_path.read_text(errors="replace"))

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.proc = None
        if getattr(self, "_log", None):
            self._log.close()
            self._log = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def client(self, hook=None, **kwargs) -> QdrantClient:
        kwargs.setdefault("timeout", 10)
        kwargs.setdefault("retries", 0)
        return QdrantClient(self.url, api_key=self.api_key, request_hook=hook, **kwargs)


# --------------------------------------------------------------------------- OpenAPI contract


@lru_cache(maxsize=1)
def openapi_spec():
    from openapi_core import OpenAPI

    return OpenAPI.from_file_path(str(OPENAPI_DOC))


@lru_cache(maxsize=1)
def _templates() -> list[tuple[str, re.Pattern, int, frozenset]]:
    doc = json.loads(OPENAPI_DOC.read_text())
    out = []
    for template, ops in doc["paths"].items():
        regex = re.compile("^" + re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template)) + "$")
        out.append((template, regex, template.count("{"), frozenset(m.upper() for m in ops)))
    return out


def path_template(method: str, path: str) -> str:
    """The OpenAPI path template a concrete path matches (literal segments win, like openapi-core)."""
    matches = [(n, t) for t, rx, n, methods in _templates() if rx.match(path) and method.upper() in methods]
    if not matches:
        raise AssertionError(f"{method} {path} matches no operation of the OpenAPI document")
    return min(matches)[1]


MULTIPART_BOUNDARY = "contract-boundary"
MULTIPART_SAMPLE = (
    f"--{MULTIPART_BOUNDARY}\r\nContent-Disposition: form-data; name=\"snapshot\"; filename=\"x.snapshot\"\r\n"
    f"Content-Type: application/octet-stream\r\n\r\nsnapshot-bytes\r\n--{MULTIPART_BOUNDARY}--\r\n"
).encode()


def build_request(base_url: str, ex: dict):
    from openapi_core.testing import MockRequest

    headers = {k: v for k, v in ex["headers"].items() if k.lower() not in ("content-length", "content-type")}
    if ex["path"].endswith("/snapshots/upload"):
        # The hook does not see the streamed multipart body; validate the same shape with a small sample.
        data, ctype = MULTIPART_SAMPLE, f"multipart/form-data; boundary={MULTIPART_BOUNDARY}"
    elif ex["json_body"] is not None:
        data, ctype = json.dumps(ex["json_body"]).encode(), "application/json"
    else:
        data, ctype = None, "application/json"
    return MockRequest(base_url, ex["method"].lower(), ex["path"], args=ex["query"] or None, headers=headers,
                       data=data, content_type=ctype)


def build_response(ex: dict):
    from openapi_core.testing import MockResponse

    body = ex["response"]
    if body is None:  # streamed snapshot download
        return MockResponse(b"\x00tar-bytes", status_code=ex["status"], content_type="application/octet-stream")
    if isinstance(body, str):
        return MockResponse(body.encode(), status_code=ex["status"], content_type="text/plain")
    return MockResponse(json.dumps(body).encode(), status_code=ex["status"], content_type="application/json")


def validate_exchange(base_url: str, ex: dict) -> tuple[str, str]:
    """Validate request and response of one exchange; returns (METHOD, path template)."""
    spec = openapi_spec()
    request = build_request(base_url, ex)
    spec.validate_request(request)
    spec.validate_response(request, build_response(ex))
    return ex["method"].upper(), path_template(ex["method"], ex["path"])
