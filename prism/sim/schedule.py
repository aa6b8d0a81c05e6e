"""Failure schedules for the simulator: random cell failures at a rate, or failures at given times."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, List, Optional, Sequence, Tuple

import numpy as np

SECONDS_PER_HOUR = 3600.0
#: More random failures than this in one run is a mistake (a timeline of years, a rate per second).
MAX_RANDOM_FAILURES = 100_000
#: Event kinds, in the order they are applied at equal times (a sample sees the state before both).
SAMPLE, DOWN, UP = 0, 1, 2


class ScheduleError(ValueError):
    """A failure schedule that cannot be built; the message says what to change."""


@dataclass(frozen=True)
class CellFailure:
    """One cell failure: down at ``at``, back (empty) at ``repair_at`` (``math.inf``: never)."""

    at: float
    cell_id: str
    repair_at: float


@dataclass(frozen=True)
class FailureSchedule:
    """The failures of one simulated run, by time."""

    failures: Tuple[CellFailure, ...] = ()

    def events(self) -> List[Tuple[float, int, str]]:
        """``(time, DOWN or UP, cell_id)`` for every failure and repair, in time order."""
        events = [(f.at, DOWN, f.cell_id) for f in self.failures]
        events += [(f.repair_at, UP, f.cell_id) for f in self.failures if math.isfinite(f.repair_at)]
        return sorted(events)

    def max_concurrent_down(self) -> int:
        """The most cells down at one time."""
        down = worst = 0
        for _time, kind, _cell in self.events():
            down += 1 if kind == DOWN else -1
            worst = max(worst, down)
        return worst


def _check_cells(cells: Sequence[str]) -> None:
    if not cells:
        raise ScheduleError("a failure schedule needs at least one cell")


def random_failures(
    cells: Sequence[str],
    start: float,
    end: float,
    rate_per_hour: float,
    repair_s: float,
    rng: np.random.Generator,
) -> FailureSchedule:
    """Failures as a Poisson process: exponential times between failures of the whole cluster.

    Each failure takes a cell chosen uniformly among the cells up at that
    moment (none up: no failure); it returns after ``repair_s``.

    Args:
        cells: cell ids.
        start: first time a failure may happen.
        end: no failure at or after this time.
        rate_per_hour: failures per hour, over all cells (0: none).
        repair_s: time from a failure to the cell's return (``math.inf``: never).
        rng: the random source.

    Raises:
        ScheduleError: no cells, a negative rate or a non-positive repair time.
    """
    _check_cells(cells)
    if rate_per_hour < 0 or not math.isfinite(rate_per_hour):
        raise ScheduleError(f"the failure rate must be a finite number >= 0, not {rate_per_hour}")
    if not repair_s > 0:
        raise ScheduleError(f"the repair time must be positive, not {repair_s}")
    failures: List[CellFailure] = []
    if rate_per_hour == 0:
        return FailureSchedule()
    expected = rate_per_hour * max(0.0, end - start) / SECONDS_PER_HOUR
    if expected > MAX_RANDOM_FAILURES:
        raise ScheduleError(
            f"{expected:,.0f} failures expected over {end - start:,.0f} s at {rate_per_hour:g} per hour "
            f"(at most {MAX_RANDOM_FAILURES:,}): lower the rate or limit the failures to a window"
        )
    mean_gap = SECONDS_PER_HOUR / rate_per_hour
    now = start + rng.exponential(mean_gap)
    while now < end:
        down = {f.cell_id for f in failures if f.repair_at > now}
        up = [c for c in cells if c not in down]
        if up:
            cell_id = up[int(rng.integers(len(up)))]
            failures.append(CellFailure(now, cell_id, now + repair_s))
        now += rng.exponential(mean_gap)
    return FailureSchedule(tuple(failures))


def given_failures(
    cells: Sequence[str],
    times: Iterable[Tuple[float, Optional[str]]],
    repair_s: float,
    rng: np.random.Generator,
) -> FailureSchedule:
    """Failures at given times, of given cells or (``None``) of a random cell that is up.

    Raises:
        ScheduleError: an unknown cell, a cell failing while down, no cell up,
            or a non-positive repair time.
    """
    _check_cells(cells)
    if not repair_s > 0:
        raise ScheduleError(f"the repair time must be positive, not {repair_s}")
    failures: List[CellFailure] = []
    for at, cell_id in sorted(times, key=lambda item: item[0]):
        down = {f.cell_id for f in failures if f.repair_at > at}
        if cell_id is None:
            up = [c for c in cells if c not in down]
            if not up:
                raise ScheduleError(f"no cell is up at {at:g} s to fail")
            cell_id = up[int(rng.integers(len(up)))]
        elif cell_id not in cells:
            raise ScheduleError(f"unknown cell {cell_id!r} in the failure schedule (cells: {cells[0]} .. {cells[-1]})")
        elif cell_id in down:
            raise ScheduleError(f"cell {cell_id!r} fails at {at:g} s while it is still down")
        failures.append(CellFailure(float(at), cell_id, float(at) + repair_s))
    return FailureSchedule(tuple(failures))


def parse_fail_at(text: str) -> Tuple[float, Optional[str]]:
    """``"30"`` or ``"30:c03"`` (seconds after the first flow, optional cell) -> ``(30.0, "c03")``.

    Raises:
        ScheduleError: not a number of seconds.
    """
    seconds, _sep, cell_id = text.partition(":")
    try:
        at = float(seconds)
    except ValueError:
        raise ScheduleError(f"--fail-at {text!r}: expected SECONDS or SECONDS:CELL, e.g. 30 or 30:c03") from None
    if at < 0 or not math.isfinite(at):
        raise ScheduleError(f"--fail-at {text!r}: the time must be a finite number >= 0")
    return at, (cell_id or None)
