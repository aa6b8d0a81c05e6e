"""Monotonic seconds on the wall clock's scale, for the controller and the cells.

Every timer that controls behaviour (failure detection, ticks, hold-downs,
idle flows in the switch and in a cell's table, telemetry rotation) reads an
``AnchoredClock``: it never steps, so a wall-clock step (NTP, an operator)
cannot make every cell look silent at once, nor expire every flow a cell
tracks. Its values are epoch seconds as the wall clock read them when the
process started, so records (failure history, flow times, telemetry, the
``last_seen`` a cell replicates) still read as dates; ``drift_s`` says how
far the wall clock has moved from it since.
"""

from __future__ import annotations

import time
from typing import Callable


class AnchoredClock:
    """Monotonic time anchored at the wall clock's reading when it was made.

    Args:
        monotonic: The monotonic source (``time.monotonic``).
        wall: The wall clock (``time.time``), read once for the anchor and for ``drift_s``.
    """

    def __init__(self, monotonic: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:  # fmt: skip
        self._monotonic = monotonic
        self._wall = wall
        self._offset = wall() - monotonic()

    def now(self) -> float:
        """Seconds: monotonic, in epoch seconds as of the anchor."""
        return self._monotonic() + self._offset

    def wall_to_clock(self, wall_time: float) -> float:
        """A wall-clock reading (e.g. a kernel receive timestamp) on this clock, as of the current drift."""
        return wall_time - self.drift_s()

    def drift_s(self) -> float:
        """How far the wall clock has moved from this clock since the anchor (steps and slewing)."""
        return self._wall() - self.now()

