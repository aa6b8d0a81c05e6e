"""Telemetry file writes off the shared event loop: a ``TelemetryWriter`` in a native thread behind a bounded queue.

Every Ryu app of a ryu-manager process shares one eventlet loop: a Parquet
write with its fsync there would stall packet-ins, port status and the failure
detector alike. The stats collector hands rows to this thread instead
(``add`` never blocks: when the queue holds ``max_rows`` rows, new rows are
dropped and counted) and the thread owns the writer. Under ryu-manager the
``threading`` and ``queue`` modules are eventlet's green ones, so the real
ones come from ``eventlet.patcher.original``.
"""

from __future__ import annotations

import logging
from typing import Any, Optional, Sequence

LOG = logging.getLogger(__name__)

#: Rows waiting for the writer thread at most; beyond, new rows are dropped (and counted).
MAX_QUEUED_ROWS = 200_000
#: Commands (row batches, ticks) waiting at most.
MAX_QUEUED_COMMANDS = 4096
#: Seconds ``close`` waits for the thread to write what it holds.
CLOSE_TIMEOUT_S = 30.0


def _native(name: str):
    """The unpatched standard module ``name`` (eventlet patches threading and queue under ryu-manager)."""
    try:
        from eventlet import patcher
    except ImportError:  # pragma: no cover - eventlet is a dependency; plain threads then
        return __import__(name)
    return patcher.original(name)


class TelemetryThread:
    """Owns a ``TelemetryWriter`` and runs it in a native thread.

    Args:
        writer: The writer (only this thread calls it once started).
        max_rows: Rows queued at most.
        max_commands: Commands queued at most.

    Attributes:
        rows_dropped: Rows refused because the queue was full.
        errors: Exceptions raised by the writer (logged by the thread).
    """

    def __init__(self, writer, max_rows: int = MAX_QUEUED_ROWS, max_commands: int = MAX_QUEUED_COMMANDS) -> None:
        threading, queue = _native("threading"), _native("queue")
        self.writer = writer
        self.max_rows = max_rows
        self._queue = queue.Queue(max_commands)
        self._full = queue.Full
        self._lock = threading.Lock()
        self._event = threading.Event
        self._queued_rows = 0
        self.rows_dropped = 0
        self.errors = 0
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="prism-telemetry-writer", daemon=True)
        self._thread.start()

    @property
    def queued_rows(self) -> int:
        """Rows waiting for the thread."""
        return self._queued_rows

    def add(self, table: str, rows: Sequence[Any], now: float) -> bool:
        """Queue rows for ``table`` (never blocks); False if they were dropped (queue full or closed)."""
        count = len(rows)
        with self._lock:
            if self._closed or self._queued_rows + count > self.max_rows:
                self.rows_dropped += count
                return False
            self._queued_rows += count
        try:
            self._queue.put_nowait(("add", table, list(rows), now))
        except self._full:
            with self._lock:
                self._queued_rows -= count
                self.rows_dropped += count
            return False
        return True

    def tick(self, now: float) -> None:
        """Let the writer close parts that are old enough (skipped if the queue is full)."""
        if not self._closed:
            try:
                self._queue.put_nowait(("tick", None, None, now))
            except self._full:
                pass

    def wait_idle(self, timeout: float = CLOSE_TIMEOUT_S) -> bool:
        """Block until everything queued so far is written (tests and shutdown; blocks the caller's loop)."""
        if not self._thread.is_alive():
            return True
        done = self._event()
        try:
            self._queue.put(("sync", None, done, 0.0), timeout=timeout)
        except self._full:
            return False
        return done.wait(timeout)

    def close(self, now: float, timeout: float = CLOSE_TIMEOUT_S) -> bool:
        """Write every open part and end the thread; True if it finished within ``timeout``."""
        if self._closed:
            return not self._thread.is_alive()
        self._closed = True
        try:
            self._queue.put(("flush", None, None, now), timeout=timeout)
        except self._full:
            return False
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        while True:
            command, table, rows, now = self._queue.get()
            try:
                if command == "add":
                    with self._lock:
                        self._queued_rows -= len(rows)
                    self.writer.add(table, rows, now)
                elif command == "tick":
                    self.writer.tick(now)
                elif command == "sync":
                    rows.set()
                elif command == "flush":
                    self.writer.flush_all(now)
                    return
            except Exception:  # noqa: BLE001 - the thread must outlive one bad batch
                self.errors += 1
                LOG.exception("telemetry writer: %s failed", command)


def describe(thread: Optional[TelemetryThread]) -> dict:
    """The queue's figures for logs and tests."""
    if thread is None:
        return {}
    return {"queued_rows": thread.queued_rows, "rows_dropped": thread.rows_dropped, "errors": thread.errors}
