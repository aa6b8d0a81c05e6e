"""The aging model's training rows and labels: one row per flow and milestone the controller asks about.

The controller re-decides a flow at each of the policy's milestones M while it
still holds the flow (before its FSC entries idle out, one idle timeout after
its last packet), with the packets and bytes its primary cell counted so far
(``prism.policy_aging``). Training rows are those same questions, made from
flow records' milestone columns by ``prism.aging_features.aging_row``, the
function the policy calls:

- **alive**: 1 if the flow still sends packets ``horizon_s`` after M
  (duration >= M + horizon), 0 if not; unknown (NaN) when the capture ended
  first (``end_reason`` capture_end and duration < M + horizon);
- **remaining packets**: log1p(packets after M), unknown when cut by the capture.

Records without milestone counts (Argus binetflow) get them interpolated at a
uniform rate (``interpolate=True``; the rows are flagged), else they are left
out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from prism.aging_features import AGING_FEATURE_NAMES, aging_row, port_class, proto_class
from prism.policy_aging import DEFAULT_MILESTONES_S
from prism.records import END_CAPTURE, milestone_column

from models.replay import DEFAULT_IDLE_TIMEOUT_S, _counters

#: The question the model answers: does the flow live this much longer (s)?
DEFAULT_AGING_HORIZON_S = 2.0


@dataclass
class AgingRows:
    """Feature rows and labels of (flow, milestone) questions.

    Attributes:
        X: rows x ``AGING_FEATURE_NAMES``.
        alive: 1/0/NaN (unknown: cut by the capture's end).
        log_remaining_packets: log1p(packets after the milestone), NaN when cut by the capture.
        flow: row index of the flow in the frame.
        milestone: the milestone (s).
        group: the flow's capture file.
        source: the flow's source (pcap, binetflow, ...).
        interpolated: True where the counters were interpolated (no milestone columns).
    """

    X: np.ndarray
    alive: np.ndarray
    log_remaining_packets: np.ndarray
    flow: np.ndarray
    milestone: np.ndarray
    group: np.ndarray
    source: np.ndarray
    interpolated: np.ndarray

    def take(self, mask: np.ndarray) -> "AgingRows":
        """The rows where ``mask`` is True."""
        return AgingRows(*(getattr(self, name)[mask] for name in self.__dataclass_fields__))

    def __len__(self) -> int:
        return len(self.alive)


def aging_rows(frame: pd.DataFrame, milestones_s: Sequence[float] = DEFAULT_MILESTONES_S,
               horizon_s: float = DEFAULT_AGING_HORIZON_S, idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S,
               interpolate: bool = True, quiet_rows: bool = False) -> AgingRows:  # fmt: skip
    """The (flow, milestone) rows of ``frame`` (see the module docstring).

    Args:
        frame: Flow records.
        milestones_s: The policy's milestones (the previous one sets the recent rate).
        horizon_s: How much longer a flow must live to count as alive.
        idle_timeout_s: How long the director holds a flow after its last packet.
        interpolate: Interpolate missing milestone counts (else drop those flows).
        quiet_rows: Keep rows of flows that sent nothing since the previous milestone (the
            policy never promotes them, so by default the model is not trained on them).
    """
    frame = frame.reset_index(drop=True)
    milestones = tuple(float(m) for m in milestones_s)
    at_packets, at_bytes, missing = _counters(frame, milestones)
    duration = np.maximum(frame["duration_s"].to_numpy(dtype=float), 0.0)
    packets = frame["packets"].to_numpy(dtype=float)
    censored = (frame["end_reason"] == END_CAPTURE).to_numpy()
    protos = frame["proto"].to_numpy(dtype=np.int64)
    sports, dports = frame["sport"].to_numpy(dtype=np.int64), frame["dport"].to_numpy(dtype=np.int64)
    groups, sources = frame["group"].to_numpy(dtype=object), frame["source"].to_numpy(dtype=object)
    rows, alive, remaining, flows, ms = [], [], [], [], []
    for i in range(len(frame)):
        if missing[i] and not interpolate:
            continue
        proto_cls, port_cls = proto_class(int(protos[i])), port_class(int(sports[i]), int(dports[i]))
        previous_age, previous_packets = 0.0, 0.0
        for j, m in enumerate(milestones):
            if m >= duration[i] + idle_timeout_s:
                break
            p, b = at_packets[i, j], at_bytes[i, j]
            quiet = p <= max(previous_packets, 1.0)
            if quiet_rows or not quiet:
                rows.append(aging_row(m, p, b, previous_age, previous_packets, proto_cls, port_cls))
                lives = duration[i] >= m + horizon_s
                alive.append(1.0 if lives else (np.nan if censored[i] else 0.0))
                remaining.append(np.nan if censored[i] else np.log1p(max(packets[i] - p, 0.0)))
                flows.append(i)
                ms.append(m)
            previous_age, previous_packets = m, p
    flow_arr = np.asarray(flows, dtype=np.int64)
    X = np.asarray(rows, dtype=float).reshape(-1, len(AGING_FEATURE_NAMES))
    return AgingRows(X, np.asarray(alive, dtype=float), np.asarray(remaining, dtype=float), flow_arr,
                     np.asarray(ms, dtype=float), groups[flow_arr], sources[flow_arr], missing[flow_arr])  # fmt: skip


def feature_columns(drop: Optional[Sequence[str]] = None) -> np.ndarray:
    """Indexes of the feature columns to keep (``drop``: names to leave out, for ablations)."""
    drop = set(drop or ())
    return np.array([i for i, name in enumerate(AGING_FEATURE_NAMES) if name not in drop], dtype=np.int64)


def milestone_packets(frame: pd.DataFrame, m: float) -> np.ndarray:
    """A milestone's packets column as floats (NaN unknown)."""
    return frame[milestone_column("packets", m)].to_numpy(dtype=float, na_value=np.nan)
