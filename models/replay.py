"""Replay flow records through a policy object, as the controller would drive it: ``replay_decisions``.

The evaluation's ``controller`` row must be what the controller does, so the
policy object here is the one the director holds (``prism.policy.aging.AgingPolicy``,
``FixedPolicy``, ...), called through the same methods, with the events the
director would see, in time order over all flows (the policy's budget is shared,
so the order matters):

- **birth** at ``ts_start``: ``profile_for(first packet, live cells, now)``;
- **milestone** at ``ts_start + M`` for each of the policy's ``milestones_s``
  while the director still holds the flow, i.e. before its FSC entries idle
  out one ``idle_timeout_s`` after its last packet: ``redecide(flow_id,
  current profile, M, packets, bytes, live cells, now)``, the counters being
  the record's milestone columns (a flow shorter than M has its totals there,
  as the primary cell reports a flow it still tracks). A flow that sent its
  last packet before M is thus still asked about, as the cells report it,
  with what its primary would tell (``prism.mgmt.protocol`` ``milestone``):
  ``idle_s``, the time since its last packet, exactly ``M - duration`` once
  M is past its last packet, and **estimated** before that from the record's
  counts at every milestone (``MILESTONES_S``): no packet since the previous
  milestone adds that interval to the previous idle time; k packets in it put
  the last one, taken as spread evenly, ``interval / (k + 1)`` before M; and
  ``closing``, True once M is past the last packet of a TCP flow that ended
  by FIN or RST (``end_reason``), else False (estimated: a FIN before the
  last packet, a half-close, is not in the records).
  ``DecisionTimeline.idle_estimated`` counts the re-decisions given estimates;
- **end** at ``ts_start + duration + idle_timeout_s``: ``flow_ended(entry, now)``
  with the counters the switch's flow-removed reports give (``EndedFlow``: all
  packets but the first, which went out by packet-out; the duration including
  the idle timeout).

Records without milestone counts (Argus binetflow: the columns are null) get
counters interpolated at a uniform rate over the flow's duration
(``DecisionTimeline.interpolated`` counts them): an approximation that says
nothing about how bursty a flow is.

Events at the same instant run in the order end, birth, milestone.

**Reused flow ids.** ``prism trace`` starts a new record when a TCP key
reopens with a SYN after a FIN or RST, and captures may share 5-tuples, so
two records can carry one ``flow_id``. When the second begins after the
first's end event (its FSC entries idled out), the switch sees exactly that:
a new packet-in under the same id, and the replay keeps it. When the two
overlap while the director still holds the first, the switch would keep one
FSC entry and never ask the policy about the second; the replay gives the
later record a replay-unique id instead (``replay_flow_ids``), so that each
record is judged as the flow it is and the policy's memory of the first is
not taken over (``DecisionTimeline.reids`` counts them). This treats the
second connection as a flow of its own, a new packet-in the switch would not
have sent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from prism.flows.identity import ip_to_bytes
from prism.policy.base import MODE_STATE
from prism.placement.profiles import MirroringProfile
from prism.telemetry.records import END_FIN, END_RST, MILESTONES_S, milestone_column

#: The FSC entries' idle timeout the replay assumes by default (configuration ``idle_timeout``).
DEFAULT_IDLE_TIMEOUT_S = 10.0
DEFAULT_CELLS = ("cell1", "cell2", "cell3")
MODE_CODE_FULL = 0
MODE_CODE_STATE = 1
_END, _BIRTH, _MILESTONE = 0, 1, 2
PROTO_TCP = 6


#: Ethernet header bytes added to an IP length for a frame length.
ETHERNET_HEADER_BYTES = 14


@dataclass(frozen=True)
class RecordPacket:
    """A flow's first packet as much as a record tells (what policies read of a ``PacketInfo``).

    ``ip_len`` and ``tcp_flags`` are 0 when the record does not know them (Argus).
    """

    flow_id: int
    ip_version: int
    proto: int
    src: bytes
    dst: bytes
    sport: int
    dport: int
    ip_len: int
    tcp_flags: int

    @property
    def key(self) -> str:
        return f"{self.proto}:{self.sport}-{self.dport}#{self.flow_id:x}"

    @property
    def frame_len(self) -> int:
        return self.ip_len + ETHERNET_HEADER_BYTES if self.ip_len else 0


@dataclass(frozen=True)
class EndedFlow:
    """What ``flow_ended`` reads of a ``prism.placement.profiles.FlowEntry`` after its last flow-removed report.

    As the switch reports them: the FSC entries never counted the first packet (it went out
    by packet-out), and their duration runs to the idle timeout after the last packet.
    """

    flow_id: int
    packets: int
    bytes: int
    duration_s: float
    profile: MirroringProfile
    first_packet: RecordPacket
    created_at: float


@dataclass(frozen=True)
class DecisionTimeline:
    """Every decision a policy made over a frame of flow records (contract section 3).

    Arrays of equal length, sorted by flow then age; a flow's first row is at age 0
    (its birth), then one row per re-decision that changed its replication factor or
    mode, which holds from that age on.

    Attributes:
        flow: Row index of the flow in the frame (0-based position).
        age_s: Age of the decision (s).
        replication_factor: Mirrors from then on.
        mode: ``MODE_CODE_FULL`` (0) or ``MODE_CODE_STATE`` (1).
        redecisions: ``redecide`` calls made.
        interpolated: Flows whose milestone counters were interpolated (no counts in the record).
        idle_estimated: Re-decisions at an age before the flow's last packet, whose ``idle_s``
            (and ``closing``: False) are estimates (module docstring).
        reids: Records given a replay-unique flow id (their id was held by an earlier record).
    """

    flow: np.ndarray
    age_s: np.ndarray
    replication_factor: np.ndarray
    mode: np.ndarray
    redecisions: int = 0
    interpolated: int = 0
    idle_estimated: int = 0
    reids: int = 0

    def final_replication_factor(self, flows: int) -> np.ndarray:
        """Each flow's last replication factor (``flows`` = rows of the frame)."""
        last = np.zeros(flows, dtype=np.int64)
        last[self.flow] = self.replication_factor  # later rows of a flow overwrite earlier ones
        return last


def _counters(frame: pd.DataFrame, milestones: Sequence[float]) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Packets and bytes per flow and milestone (flows x milestones), and which flows were interpolated."""
    duration = frame["duration_s"].to_numpy(dtype=float)
    packets = frame["packets"].to_numpy(dtype=float)
    bytes_ = frame["bytes"].to_numpy(dtype=float)
    n, k = len(frame), len(milestones)
    at_packets, at_bytes = np.empty((n, k)), np.empty((n, k))
    missing = np.zeros(n, dtype=bool)
    for j, m in enumerate(milestones):
        column_p, column_b = milestone_column("packets", m), milestone_column("bytes", m)
        if column_p in frame and column_b in frame:
            p = frame[column_p].to_numpy(dtype=float, na_value=np.nan)
            b = frame[column_b].to_numpy(dtype=float, na_value=np.nan)
        else:
            p = b = np.full(n, np.nan)
        gone = np.isnan(p) | np.isnan(b)
        missing |= gone
        share = np.where(duration > 0, np.minimum(m / np.maximum(duration, 1e-12), 1.0), 1.0)
        at_packets[:, j] = np.where(gone, np.maximum(np.round(1 + (packets - 1) * share), 1), p)
        at_bytes[:, j] = np.where(gone, np.round(bytes_ * np.maximum(share, 1.0 / np.maximum(packets, 1))), b)
    return at_packets, at_bytes, missing


def what_the_primary_knows(frame: pd.DataFrame, milestones: Sequence[float]) -> Tuple[np.ndarray, np.ndarray]:
    """``idle_s`` and ``closing`` of every flow at every milestone (flows x milestones), as the
    module docstring says: exact past the flow's last packet, estimated before it."""
    grid = tuple(sorted(set(MILESTONES_S) | {float(m) for m in milestones}))
    at_packets, _, _ = _counters(frame, grid)
    duration = np.maximum(frame["duration_s"].to_numpy(dtype=float), 0.0)
    n = len(frame)
    idle_grid = np.empty((n, len(grid)))
    idle, previous_age, previous_packets = np.zeros(n), 0.0, np.ones(n)
    for j, m in enumerate(grid):
        interval = m - previous_age
        new = at_packets[:, j] - previous_packets
        idle = np.where(new > 0, interval / (np.maximum(new, 0) + 1.0), idle + interval)
        idle = np.where(m > duration, m - duration, np.minimum(idle, m))
        idle_grid[:, j] = idle
        previous_age, previous_packets = m, np.maximum(previous_packets, at_packets[:, j])
    columns = [grid.index(float(m)) for m in milestones]
    end_reason = frame["end_reason"].to_numpy(dtype=object) if "end_reason" in frame else np.full(n, "")
    closed = (frame["proto"].to_numpy(dtype=np.int64) == PROTO_TCP) & np.isin(end_reason, (END_FIN, END_RST))
    past = np.asarray(milestones, dtype=float)[None, :] > duration[:, None]
    return idle_grid[:, columns], closed[:, None] & past


#: Odd 64-bit step (the golden ratio's) between a reused flow id and the ids tried for it.
_ID_STEP = 0x9E3779B97F4A7C15
_ID_MASK = (1 << 64) - 1


def replay_flow_ids(frame: pd.DataFrame, idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S) -> Tuple[np.ndarray, int]:
    """Each record's flow id for the replay, and how many were changed (module docstring, "Reused flow ids").

    A record whose ``flow_id`` an earlier record still holds at its start (that one's end
    event, one ``idle_timeout_s`` after its last packet, comes later) gets an id no record uses.
    """
    ids = frame["flow_id"].to_numpy(dtype=np.uint64).copy()
    if len(ids) == len(np.unique(ids)):
        return ids, 0
    start = frame["ts_start"].to_numpy(dtype=float)
    end = start + np.maximum(frame["duration_s"].to_numpy(dtype=float), 0.0) + idle_timeout_s
    taken = set(int(i) for i in ids)
    held_until: dict = {}
    changed = 0
    for i in np.lexsort((np.arange(len(ids)), start)).tolist():
        flow_id = int(ids[i])
        if held_until.get(flow_id, -np.inf) > start[i]:  # the first still held: a second packet-in here is the replay's
            new_id = flow_id
            while new_id in taken:
                new_id = (new_id + _ID_STEP) & _ID_MASK
            taken.add(new_id)
            ids[i] = np.uint64(new_id)
            flow_id = new_id
            changed += 1
        held_until[flow_id] = max(held_until.get(flow_id, -np.inf), end[i])
    return ids, changed


def replay_decisions(frame: pd.DataFrame, policy, idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S,
                     cells: Sequence[str] = DEFAULT_CELLS) -> DecisionTimeline:  # fmt: skip
    """Drive ``policy`` with the events a controller would see for ``frame``'s flows (module docstring).

    Args:
        frame: Flow records (``prism.telemetry.records`` schema, v1 or v2).
        policy: A ``prism.policy.base.Policy`` (over a ring of ``cells``), used as the director uses it.
        idle_timeout_s: The FSC entries' idle timeout: how long after its last packet a flow ends.
        cells: The live cells (all of them, all along).

    Returns:
        The decisions, flow by flow.
    """
    n = len(frame)
    milestones = tuple(float(m) for m in getattr(policy, "milestones_s", ()))
    start = frame["ts_start"].to_numpy(dtype=float)
    duration = np.maximum(frame["duration_s"].to_numpy(dtype=float), 0.0)
    end = start + duration + idle_timeout_s
    at_packets, at_bytes, missing = _counters(frame, milestones)
    idle_at, closing_at = what_the_primary_knows(frame, milestones)
    flow_ids, reids = replay_flow_ids(frame, idle_timeout_s)
    protos = frame["proto"].to_numpy(dtype=np.int64)
    versions = frame["ip_version"].to_numpy(dtype=np.int64)
    sources, destinations = frame["src_addr"].to_numpy(dtype=object), frame["dst_addr"].to_numpy(dtype=object)
    first_len = frame["first_ip_len"].to_numpy(dtype=float, na_value=np.nan)
    first_flags = frame["first_tcp_flags"].to_numpy(dtype=float, na_value=np.nan)
    sports = frame["sport"].to_numpy(dtype=np.int64)
    dports = frame["dport"].to_numpy(dtype=np.int64)
    packets_total = frame["packets"].to_numpy(dtype=np.int64)
    bytes_total = frame["bytes"].to_numpy(dtype=np.int64)

    # Events: (time, order, flow, milestone index); a milestone only while the flow is held.
    times: List[np.ndarray] = [end, start]
    kinds: List[np.ndarray] = [np.full(n, _END), np.full(n, _BIRTH)]
    flows: List[np.ndarray] = [np.arange(n), np.arange(n)]
    which: List[np.ndarray] = [np.full(n, -1), np.full(n, -1)]
    for j, m in enumerate(milestones):
        held = np.flatnonzero(m < duration + idle_timeout_s)
        times.append(start[held] + m)
        kinds.append(np.full(len(held), _MILESTONE))
        flows.append(held)
        which.append(np.full(len(held), j))
    time_all, kind_all = np.concatenate(times), np.concatenate(kinds)
    flow_all, which_all = np.concatenate(flows), np.concatenate(which)
    order = np.lexsort((flow_all, kind_all, time_all))

    live = frozenset(cells)
    profiles: List[Optional[MirroringProfile]] = [None] * n
    packets_of: List[Optional[RecordPacket]] = [None] * n
    rows_flow: List[int] = []
    rows_age: List[float] = []
    rows_rf: List[int] = []
    rows_mode: List[int] = []
    redecisions = idle_estimated = 0
    for index in order.tolist():
        i, kind, now = int(flow_all[index]), int(kind_all[index]), float(time_all[index])
        flow_id = int(flow_ids[i])
        if kind == _BIRTH:
            packet = packets_of[i] = RecordPacket(
                flow_id, int(versions[i]), int(protos[i]), ip_to_bytes(str(sources[i])),
                ip_to_bytes(str(destinations[i])), int(sports[i]), int(dports[i]),
                0 if np.isnan(first_len[i]) else int(first_len[i]),
                0 if np.isnan(first_flags[i]) else int(first_flags[i]),
            )  # fmt: skip
            profile = policy.profile_for(packet, live, now)
            profiles[i] = profile
            rows_flow.append(i)
            rows_age.append(0.0)
            rows_rf.append(profile.replication_factor)
            rows_mode.append(MODE_CODE_STATE if policy.mode_for(flow_id) == MODE_STATE else MODE_CODE_FULL)
        elif kind == _MILESTONE:
            j = int(which_all[index])
            redecisions += 1
            idle_estimated += milestones[j] <= duration[i]
            decision = policy.redecide(flow_id, profiles[i], milestones[j], int(at_packets[i, j]),
                                       int(at_bytes[i, j]), live, now, idle_s=float(idle_at[i, j]),
                                       closing=bool(closing_at[i, j]))  # fmt: skip
            if decision is None:
                continue
            profile, mode = decision
            if profile.primary_cell != profiles[i].primary_cell:
                raise ValueError(f"the policy moved flow {flow_id:#x}'s primary at a re-decision")
            profiles[i] = profile
            rows_flow.append(i)
            rows_age.append(milestones[j])
            rows_rf.append(profile.replication_factor)
            rows_mode.append(MODE_CODE_STATE if mode == MODE_STATE else MODE_CODE_FULL)
        else:
            first = packets_of[i]
            first_bytes = min(first.ip_len or int(bytes_total[i] / max(packets_total[i], 1)), int(bytes_total[i]))
            policy.flow_ended(EndedFlow(flow_id, max(int(packets_total[i]) - 1, 0), int(bytes_total[i]) - first_bytes,
                                        float(duration[i]) + idle_timeout_s, profiles[i], first,
                                        float(start[i])), now)  # fmt: skip
    flow_arr = np.asarray(rows_flow, dtype=np.int64)
    age_arr = np.asarray(rows_age, dtype=float)
    sort = np.lexsort((age_arr, flow_arr))
    return DecisionTimeline(flow_arr[sort], age_arr[sort], np.asarray(rows_rf, dtype=np.int64)[sort],
                            np.asarray(rows_mode, dtype=np.int8)[sort], redecisions, int(missing.sum()),
                            int(idle_estimated), reids)  # fmt: skip
