"""The application's writes during a backup: a thread that keeps calling one write and records what was acknowledged.

The tests that back up a store while it is written to start one, note a moment (the backup's start), stop it, and
then check that a restore holds every write acknowledged before that moment and no hole in the sequence.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class Writer(threading.Thread):
    """Calls ``write(n)`` for n = 0, 1, 2... every ``interval`` seconds until stopped.

    ``done`` lists ``(n, time.time() of the acknowledgement, what write returned)``; n moves on only after an
    acknowledged write, so the acknowledged numbers are always 0..k-1. A write that raises is recorded in ``errors``
    (never counted as done) and tried again with the same n; after 20 errors the writer gives up.
    """

    def __init__(self, write: Callable[[int], object], interval: float = 0.05, name: str | None = None):
        super().__init__(name=name, daemon=True)
        self.write = write
        self.interval = interval
        self.done: list[tuple[int, float, object]] = []
        self.errors: list[str] = []
        self.halt = threading.Event()

    def run(self):
        n = 0
        while not self.halt.is_set():
            try:
                extra = self.write(n)
                self.done.append((n, time.time(), extra))
                n += 1
            except Exception as exc:  # noqa: BLE001 - a failed write is recorded, never counted as done
                self.errors.append(repr(exc))
                if len(self.errors) > 20:
                    return
            self.halt.wait(self.interval)

    def before(self, when: float) -> set[int]:
        """The writes acknowledged before ``when`` (a ``time.time()``)."""
        return {n for n, acked, _ in self.done if acked < when}

    def stop(self):
        self.halt.set()
        self.join(30)
