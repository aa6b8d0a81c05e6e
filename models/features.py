"""The first-packet SPE's features over flow records (pandas): ``replay_features`` for training.

The features themselves (``FirstPacket``, ``FlowHistory``, ``flow_features``)
are in ``prism.policy.features``, pure, since the controller computes them at
a new flow's first packet.
"""

from __future__ import annotations

import heapq
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from prism.policy.features import FEATURE_NAMES, FirstPacket, FlowHistory, flow_features


def replay_features(
    frame: pd.DataFrame,
    horizon_s: float,
    report_delay_s: float,
    make_history: Optional[Callable[[], FlowHistory]] = None,
) -> np.ndarray:
    """Features of every flow record, computed as a controller would have seen them.

    Each group (capture) is replayed on its own, with a fresh history, in
    start-time order; a flow's outcome reaches the history ``report_delay_s``
    after its last packet (the switch reports a flow when its idle timeout
    expires), never earlier.

    Args:
        frame: flow records (``prism.telemetry.records`` schema).
        horizon_s: the takeover horizon H.
        report_delay_s: delay between a flow's last packet and its report.
        make_history: builds a fresh history per group (default: ``FlowHistory(horizon_s)``).

    Returns:
        Array (len(frame), len(FEATURE_NAMES)), rows aligned with ``frame``.
    """
    make_history = make_history or (lambda: FlowHistory(horizon_s))
    out = np.full((len(frame), len(FEATURE_NAMES)), np.nan)
    positions = np.arange(len(frame))
    for _group, index in pd.Series(positions).groupby(frame["group"].to_numpy()):
        rows = frame.iloc[index.to_numpy()]
        order = np.argsort(rows["ts_start"].to_numpy(), kind="stable")
        history = make_history()
        pending: List[Tuple[float, int, FirstPacket, float, int]] = []
        for seq, (pos, row) in enumerate(zip(index.to_numpy()[order], rows.iloc[order].itertuples())):
            first = FirstPacket.from_record(row)
            now = first.ts
            while pending and pending[0][0] <= now:
                end_time, _seq, ended, duration, packets = heapq.heappop(pending)
                history.record_end(ended, duration, packets, end_time)
            out[pos] = flow_features(first, history, now, record_start=True)
            report_at = now + float(row.duration_s) + report_delay_s
            heapq.heappush(pending, (report_at, seq, first, float(row.duration_s), int(row.packets)))
    return out


def features_frame(values: Sequence[Sequence[float]]) -> pd.DataFrame:
    """Feature rows -> a frame with ``FEATURE_NAMES`` columns (for notebooks and plots)."""
    return pd.DataFrame(np.asarray(values, dtype=float), columns=list(FEATURE_NAMES))
