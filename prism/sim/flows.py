"""The simulator's flows as arrays, and their placement when they start."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from prism.placement.ring import HashRing
from prism.sim.schedule import UP, FailureSchedule

PLACEMENT_CHUNK = 65_536  #: flows ranked per ``order_array`` call (bounds its temporaries)

Progress = Optional[Callable[[int], None]]


class SimulationError(ValueError):
    """Input the simulator cannot run; the message says what to change."""


@dataclass(frozen=True)
class Flows:
    """The flows of a run as arrays, sorted by start time.

    Attributes:
        flow_id: uint64 ids (placement).
        start: start times (s).
        duration: durations (s, >= 0).
        packets: packets per flow (>= 1).
        nbytes: bytes per flow.
        proto: IP protocol numbers.
    """

    flow_id: np.ndarray
    start: np.ndarray
    duration: np.ndarray
    packets: np.ndarray
    nbytes: np.ndarray
    proto: np.ndarray

    @classmethod
    def from_frame(cls, frame) -> "Flows":
        """From flow records (``prism.telemetry.records`` columns), which must be sorted by ``ts_start``.

        Raises:
            SimulationError: no flows, a missing column, or unsorted start times.
        """
        needed = ("flow_id", "ts_start", "duration_s", "packets", "bytes", "proto")
        missing = [name for name in needed if name not in frame.columns]
        if missing:
            raise SimulationError(f"flow records lack column(s) {', '.join(missing)}")
        if len(frame) == 0:
            raise SimulationError("no flows to simulate")
        start = frame["ts_start"].to_numpy(dtype=np.float64)
        if np.any(np.diff(start) < 0):
            raise SimulationError("flows must be sorted by ts_start")
        return cls(
            frame["flow_id"].to_numpy(dtype=np.uint64), start,
            frame["duration_s"].to_numpy(dtype=np.float64), frame["packets"].to_numpy(dtype=np.int64),
            frame["bytes"].to_numpy(dtype=np.int64), frame["proto"].to_numpy(dtype=np.int16),
        )  # fmt: skip

    def __len__(self) -> int:
        return len(self.start)

    @property
    def end(self) -> np.ndarray:
        """End times."""
        return self.start + self.duration

    def curves(self):
        """``prism.sim.evaluation.FlowCurves`` of these flows: packets and bytes spread evenly over each."""
        import pandas as pd

        from prism.sim.evaluation import FlowCurves

        return FlowCurves.from_frame(pd.DataFrame({"duration_s": self.duration, "packets": self.packets,
                                                   "bytes": self.nbytes, "proto": self.proto}))  # fmt: skip



def live_ranks(
    ring: HashRing, flows: Flows, schedule: FailureSchedule, depth: int, progress: Progress = None
) -> np.ndarray:
    """Each flow's first ``depth`` live cells in ring order at its start (cell indices; -1: too few).

    Row ``i`` equals ``[c for c in ring.order(flow_id) if c is live][:depth]``
    as indices into ``ring.cells``, computed with ``ring.order_array`` over the
    ``depth`` + (most cells ever down at once) best-ranked cells.
    """
    cells = ring.cells
    index = {cell_id: i for i, cell_id in enumerate(cells)}
    events = [(t, kind, cell_id) for t, kind, cell_id in schedule.events()]
    times = np.array([t for t, _k, _c in events], dtype=np.float64)
    live = np.ones((len(events) + 1, len(cells)), dtype=bool)
    for epoch, (_t, kind, cell_id) in enumerate(events, start=1):
        live[epoch] = live[epoch - 1]
        live[epoch, index[cell_id]] = kind == UP
    width = min(len(cells), depth + schedule.max_concurrent_down())
    out = np.full((len(flows), depth), -1, dtype=np.int16)
    for begin in range(0, len(flows), PLACEMENT_CHUNK):
        stop = min(begin + PLACEMENT_CHUNK, len(flows))
        ranked = ring.order_array(flows.flow_id[begin:stop], n=width)
        epoch = np.searchsorted(times, flows.start[begin:stop], side="right")
        alive = live[epoch[:, None], ranked]
        first = np.argsort(~alive, axis=1, kind="stable")[:, :depth]
        chosen = np.take_along_axis(ranked, first, axis=1)
        usable = np.take_along_axis(alive, first, axis=1)
        out[begin:stop, : chosen.shape[1]] = np.where(usable, chosen, -1)
        if progress is not None:
            progress(stop - begin)
    return out
