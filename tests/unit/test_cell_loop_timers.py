"""Tests for the cell loop's timers (the SMM's heartbeats): regular, on phase, never bursting, never fatal."""

import os
import time

from prism.cell.cell import Cell
from prism.cell.loop import CellLoop
from prism.clock import AnchoredClock

INTERVAL = 0.1


class IdlePort:
    """A packet socket that never has a frame."""

    def __init__(self):
        self._read, self._write = os.pipe()

    def fileno(self):
        return self._read

    def recv_frame(self):
        return None

    def send(self, frame):
        return len(frame)

    def close(self):
        os.close(self._read)
        os.close(self._write)


class SteppingClock:
    """Advances ``step`` seconds at every read, plus any ``jumps`` queued by the test."""

    def __init__(self, step):
        self.now, self.step, self.jumps = 1000.0, step, []

    def __call__(self):
        self.now += self.step + (self.jumps.pop(0) if self.jumps else 0.0)
        return self.now


def run_timer(clock, calls, tick_interval_s=0.05, on_call=None):
    port = IdlePort()
    loop = CellLoop(Cell("c1"), port, clock=clock, tick_interval_s=tick_interval_s)
    times = []

    def beat(now):
        times.append(now)
        if on_call:
            on_call(len(times))
        if len(times) >= calls:
            loop.stop()

    loop.add_timer(INTERVAL, beat)
    try:
        loop.run()
    finally:
        loop.close()
        port.close()
    return times


def test_a_timer_keeps_its_phase_instead_of_drifting():
    # Every clock read costs 0.03 s: a timer re-armed from "now" would drift by
    # up to that much per call; one on phase stays within one step of the grid.
    times = run_timer(SteppingClock(0.03), calls=30)
    start = times[0]
    for index, at in enumerate(times):
        assert abs(at - (start + index * INTERVAL)) <= 0.06 + 1e-9, (index, at - start)


def test_a_late_timer_skips_the_missed_calls_instead_of_bursting():
    clock = SteppingClock(0.01)

    def stall(count):
        if count == 3:
            clock.jumps.append(0.55)  # the process stalled for five intervals

    times = run_timer(clock, calls=8, on_call=stall)
    gaps = [later - earlier for earlier, later in zip(times, times[1:])]
    assert min(gaps) >= INTERVAL * 0.5, gaps  # no two calls back to back


def test_a_failing_timer_is_logged_and_the_loop_goes_on():
    port = IdlePort()
    loop = CellLoop(Cell("c1"), port, clock=SteppingClock(0.02), tick_interval_s=0.05)
    calls = []

    def broken(now):
        calls.append(now)
        if len(calls) >= 3:
            loop.stop()
        raise RuntimeError("boom")

    loop.add_timer(INTERVAL, broken)
    try:
        loop.run()
    finally:
        loop.close()
        port.close()
    assert len(calls) == 3


def test_a_wall_clock_step_moves_no_cell_time():
    """The cell's default clock is monotonic on the wall clock's scale: an hour's step expires none of its flows."""
    port = IdlePort()
    try:
        clock = CellLoop(Cell("c1"), port).clock
        assert isinstance(getattr(clock, "__self__", None), AnchoredClock), clock
        assert abs(clock() - time.time()) < 5  # records (last_seen) still read as dates
    finally:
        port.close()
    readings = {"mono": 100.0, "wall": 1_700_000_000.0}
    anchored = AnchoredClock(monotonic=lambda: readings["mono"], wall=lambda: readings["wall"])
    readings["wall"] += 3600.0
    readings["mono"] += 1.0
    assert anchored.now() == 1_700_000_001.0
