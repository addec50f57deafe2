"""What the stores reached over HTTP share (Qdrant, Elasticsearch): the error base, path segments, which
failures are transient, and the vocabulary of where a snapshot's fingerprint came from.

Fingerprint sources: ``snapshot`` (read from the snapshot file itself: the lab's stand-ins write a format this
code reads), ``server-unchanged`` (a real server's snapshot cannot be read here: the live data was fingerprinted
before and after the snapshot and kept only when both agree, up to ``SNAPSHOT_ATTEMPTS`` snapshots), or
``unverifiable`` (never silently passed by a restore).

Stdlib only; modules import it as ``from ansible.module_utils.llmops_http import HttpError``.
"""

from __future__ import annotations

import http.client
import socket
import ssl
from urllib.parse import quote

try:
    from ansible.module_utils.llmops_common import LlmopsError
except ImportError:  # imported directly (tests) rather than through Ansible
    from module_utils.llmops_common import LlmopsError

# Connection-level failures worth a retry (with backoff) before giving up.
CONNECTION_ERRORS = (ConnectionError, socket.timeout, TimeoutError, http.client.HTTPException, OSError)

SNAPSHOT_ATTEMPTS = 3
SOURCE_SNAPSHOT = "snapshot"
SOURCE_SERVER = "server-unchanged"
SOURCE_UNVERIFIABLE = "unverifiable"
ARTEFACT_SOURCES = (SOURCE_SNAPSHOT, SOURCE_SERVER)
# The file a lab stand-in writes into each snapshot, saying it is a stand-in's.
STANDIN_MARKER = "STANDIN.txt"


class HttpError(LlmopsError):
    """A failed call to a store's HTTP API: ``status`` is the HTTP status (None for connection errors)."""

    def __init__(self, message, status=None, method=None, path=None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.method = method
        self.path = path

    def __str__(self):
        return self.message


def seg(value):
    """One URL path segment (a collection, index, document id...), every reserved character encoded."""
    return quote(str(value), safe="")


def connection(scheme, host, port, timeout, verify_tls=True):
    """An ``http.client`` connection to the store (``https``: TLS, the certificate checked unless not
    ``verify_tls``)."""
    if scheme == "https":
        context = ssl.create_default_context()
        if not verify_tls:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return http.client.HTTPSConnection(host, port, timeout=timeout, context=context)
    return http.client.HTTPConnection(host, port, timeout=timeout)
