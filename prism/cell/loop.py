"""The cell's event loop: poll the packet socket and any registered readers, handle frames in batches, tick."""

from __future__ import annotations

import logging
import os
import select
import time
from typing import Callable, Dict, List, Optional, Protocol

from prism.cell.bfd import BFD_MAC, BfdSpeaker
from prism.cell.cell import Cell
from prism.cell.io import FATAL_ERRNOS, CellIOError
from prism.clock import AnchoredClock

LOG = logging.getLogger(__name__)

DEFAULT_TICK_S = 0.1  #: tick period: expiry check, and replication/heartbeats later
RECV_BATCH = 256  #: frames handled per wake-up before other work gets a turn
_POLL_IN = select.POLLIN | select.POLLPRI
_POLL_BROKEN = select.POLLNVAL


class FramePort(Protocol):
    """What the loop needs from a packet socket (``PacketSocket`` or a test fake)."""

    def fileno(self) -> int: ...

    def recv_frame(self) -> Optional[bytes]: ...

    def send(self, frame: bytes) -> int: ...


class _Timer:
    """A periodic callback: ``callback(now)`` every ``interval_s``, on a fixed phase."""

    __slots__ = ("interval_s", "callback", "due")

    def __init__(self, interval_s: float, callback: Callable[[float], None], due: float) -> None:
        self.interval_s = interval_s
        self.callback = callback
        self.due = due


class CellLoop:
    """Runs a ``Cell`` on a ``FramePort`` until ``stop()``.

    One thread; ``poll`` waits for frames, for any reader registered with
    ``add_reader`` (the state server, the State Mirroring Module's management
    socket), for the next tick and for the next timer (``add_timer``: the
    SMM's heartbeats). Frames are handled in batches of at most ``batch`` with
    one ``now`` per batch, so a busy packet socket delays a tick or a timer by
    one batch at most.

    With a BFD speaker (``set_bfd``), frames to the BFD MAC go to it instead of
    the cell, and it sends its control packets from this loop: a loop that
    stalls stops them, and the switch takes the cell out of service.

    Timers, ticks and BFD are scheduled on a monotonic clock, so a step of the
    wall clock neither fires nor starves them; the cell and the callbacks get
    ``clock``'s ``now``, on the wall clock's scale (its records travel between cells).

    Args:
        cell: The cell.
        port: Its packet socket.
        clock: The cell's time (default: monotonic on the wall clock's scale,
            ``prism.clock.AnchoredClock``: a wall-clock step expires no flow, and
            the ``last_seen`` it replicates still reads as a date).
        tick_interval_s: Period of ``cell.tick``.
        batch: Frames handled per wake-up at most.
        monotonic: Scheduling clock (default ``time.monotonic``; with a test ``clock``, that clock).
    """

    def __init__(self, cell: Cell, port: FramePort, clock: Optional[Callable[[], float]] = None,
                 tick_interval_s: float = DEFAULT_TICK_S, batch: int = RECV_BATCH,
                 monotonic: Optional[Callable[[], float]] = None) -> None:  # fmt: skip
        self.cell = cell
        self.port = port
        if clock is None:
            clock, monotonic = AnchoredClock().now, monotonic or time.monotonic
        self.clock = clock
        if monotonic is None:
            monotonic = clock
        self.monotonic = monotonic
        self.bfd: Optional[BfdSpeaker] = None
        self.tick_interval_s = tick_interval_s
        self.batch = batch
        self._readers: Dict[int, Callable[[], None]] = {}
        self._timers: List[_Timer] = []
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_read, False)
        os.set_blocking(self._wake_write, False)
        self._stopping = False
        self._poller: Optional[select.poll] = None

    def add_reader(self, fd: int, callback: Callable[[], None]) -> None:
        """Call ``callback()`` whenever ``fd`` is readable (exceptions are logged, not fatal)."""
        self._readers[fd] = callback
        if self._poller is not None:
            self._poller.register(fd, _POLL_IN)

    def add_timer(self, interval_s: float, callback: Callable[[float], None]) -> None:
        """Call ``callback(now)`` every ``interval_s`` (exceptions are logged, not fatal).

        Timers keep their phase (the next call is due one interval after the
        previous due time, not after the call), so that a periodic message
        such as a heartbeat stays regular; a timer late by more than one
        interval skips the missed calls instead of bursting.
        """
        if interval_s <= 0:
            raise ValueError(f"timer interval must be positive, not {interval_s}")
        self._timers.append(_Timer(interval_s, callback, 0.0))

    def set_bfd(self, speaker: BfdSpeaker) -> None:
        """Speak BFD on the packet port from this loop (frames to the BFD MAC go to ``speaker``)."""
        self.bfd = speaker

    def remove_reader(self, fd: int) -> None:
        """Stop watching ``fd``."""
        if self._readers.pop(fd, None) is not None and self._poller is not None:
            self._poller.unregister(fd)

    def stop(self) -> None:
        """Make ``run`` return soon; safe to call from a signal handler."""
        self._stopping = True
        try:
            os.write(self._wake_write, b"\0")
        except (BlockingIOError, OSError):
            pass

    def run(self) -> None:
        """Handle frames and ticks until ``stop()``.

        Raises:
            CellIOError: the interface went away for good.
        """
        poller = self._poller = select.poll()
        port_fd = self.port.fileno()
        poller.register(port_fd, _POLL_IN)
        poller.register(self._wake_read, select.POLLIN)
        for fd in self._readers:
            poller.register(fd, _POLL_IN)
        cell, clock, monotonic, tick_s = self.cell, self.clock, self.monotonic, self.tick_interval_s
        timers, bfd = self._timers, self.bfd
        next_tick = monotonic() + tick_s
        for timer in timers:
            timer.due = next_tick
        while not self._stopping:
            wake_at = min([next_tick, *(timer.due for timer in timers)])
            if bfd is not None:
                wake_at = min(wake_at, bfd.next_wake())
            timeout_ms = max(0.0, (wake_at - monotonic()) * 1000.0)
            events = poller.poll(timeout_ms)
            now, mono = clock(), monotonic()
            for fd, mask in events:
                if fd == port_fd:
                    if mask & _POLL_BROKEN:
                        raise CellIOError(f"the packet socket of cell {cell.cell_id} was closed")
                    self._drain(now, mono)
                elif fd == self._wake_read:
                    self._drain_wake_pipe()
                else:
                    self._call_reader(fd)
            if bfd is not None:
                self._run_bfd(mono)
            if mono >= next_tick:
                cell.tick(now)
                next_tick = mono + tick_s
                if bfd is not None:  # a long tick (replication) must not also delay the next BFD packet
                    self._run_bfd(monotonic())
            for timer in timers:
                if mono >= timer.due:
                    self._call_timer(timer, now, mono)

    def _drain(self, now: float, mono: float = 0.0) -> None:
        """Handle up to ``batch`` queued frames: the hot path."""
        cell, bfd = self.cell, self.bfd
        handle, recv, send = cell.handle_frame, self.port.recv_frame, self.port.send
        for _ in range(self.batch):
            try:
                frame = recv()
            except OSError as error:
                if error.errno in FATAL_ERRNOS:
                    raise CellIOError(f"cell {cell.cell_id} lost its interface: {error}") from error
                cell.recv_errors += 1
                return
            if frame is None:
                return
            if bfd is not None and frame[:6] == BFD_MAC:
                self._bfd_frame(frame, mono)
                continue
            try:
                if handle(frame, now):
                    try:
                        send(frame)
                        cell.forwarded += 1
                    except OSError:
                        cell.send_errors += 1
            except Exception as error:  # noqa: BLE001 - never die on one frame
                cell.count_error(error)

    def _drain_wake_pipe(self) -> None:
        try:
            while os.read(self._wake_read, 512):
                pass
        except BlockingIOError:
            pass

    def _call_reader(self, fd: int) -> None:
        callback = self._readers.get(fd)
        if callback is None:
            return
        try:
            callback()
        except Exception:  # noqa: BLE001 - a reader's failure must not stop the data path
            LOG.exception("cell %s: reader on fd %d failed", self.cell.cell_id, fd)

    def _bfd_frame(self, frame: bytes, mono: float) -> None:
        try:
            self.bfd.on_frame(frame, mono)
        except Exception:  # noqa: BLE001 - a bad BFD frame must not stop the data path
            LOG.exception("cell %s: BFD frame failed", self.cell.cell_id)

    def _run_bfd(self, mono: float) -> None:
        try:
            self.bfd.run(mono)
        except Exception:  # noqa: BLE001 - BFD's failure must not stop the data path
            LOG.exception("cell %s: BFD failed", self.cell.cell_id)

    def _call_timer(self, timer: _Timer, now: float, mono: Optional[float] = None) -> None:
        mono = now if mono is None else mono
        timer.due += timer.interval_s
        if timer.due <= mono:  # late by more than an interval: skip, do not burst
            timer.due = mono + timer.interval_s
        try:
            timer.callback(now)
        except Exception:  # noqa: BLE001 - a timer's failure must not stop the data path
            LOG.exception("cell %s: timer %r failed", self.cell.cell_id, timer.callback)

    def close(self) -> None:
        """Release the wake-up pipe."""
        for fd in (self._wake_read, self._wake_write):
            try:
                os.close(fd)
            except OSError:
                pass
