"""What every process's command line held while a run went on: where a secret must never be.

The processes of the lab's containers are read too: they share this host's /proc.
"""

from __future__ import annotations

import os
import threading
import time


class CmdlineSampler(threading.Thread):
    """Reads every /proc/*/cmdline every 20 ms until stopped.

    ``seen`` holds each distinct command line (arguments NUL-separated); ``hits`` those holding one of ``secrets``
    (a string or a list of them).
    """

    def __init__(self, secrets: str | list[str] = ()):
        super().__init__(daemon=True)
        self.secrets = [s.encode() for s in ([secrets] if isinstance(secrets, str) else secrets)]
        self.seen: set[bytes] = set()
        self.samples = 0
        self.halt = threading.Event()

    def run(self):
        while not self.halt.is_set():
            for pid in os.listdir("/proc"):
                if pid.isdigit():
                    try:
                        with open(f"/proc/{pid}/cmdline", "rb") as handle:
                            self.seen.add(handle.read())
                    except OSError:
                        pass
            self.samples += 1
            time.sleep(0.02)

    @property
    def hits(self) -> list[bytes]:
        return sorted(cmd for cmd in self.seen if any(secret in cmd for secret in self.secrets))

    def stop(self):
        self.halt.set()
        self.join(timeout=10)
