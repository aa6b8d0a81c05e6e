"""The one engine that compares replication policies: protection against cost, from decision timelines.

``prism evaluate``, ``prism simulate``, ``prism train`` (its calibration and
held-out table) and the notebooks all judge policies here.

**Decisions.** A policy is judged by what it decided, flow by flow: a
timeline of ``(flow, age_s, replication_factor, mode)`` rows, sorted by flow
then age, a flow's first row at age 0 (its birth), each row holding until
the flow's next one (``models.replay.DecisionTimeline`` of the controller's
own policy object, or ``Decisions.at_birth`` for a policy that decides once).

**Flows as curves.** Each flow's cumulative packets, bytes and state packets
(TCP SYN/FIN/RST; a non-TCP flow's first packet) by age come from its
record's milestone columns (``prism.telemetry.records.MILESTONES_S``), linearly
interpolated between milestones (and between the last milestone and the
flow's end). Records without them (Argus binetflow, telemetry) are taken as
spreading their packets and bytes evenly over their duration, with their
state packets at birth (a TCP flow's SYN and SYN/ACK; a non-TCP flow's first
packet) and at its end (the FIN of each side, or one RST, as its
``end_reason`` says): ``FlowCurves.estimated`` counts them.

**Protection.** A cell fails at a time drawn uniformly over a long trace. A
flow alive then (at an age in [0, duration]) is at risk; so are the packets
it still sends after that age. It is protected at age ``a`` if it has at
least one mirror at ``a`` and, if its mirrors came after its birth
(a promotion), its seed has completed (``seed_delay_s`` after the
promotion); ``packets_protected_2`` asks the same of two mirrors (a double
failure taking the primary and the first mirror). In expectation over the
failure time, protected at-risk flows are ``sum(time protected) /
sum(duration)`` and protected at-risk packets ``sum(integral over protected
ages of the packets still to come) / sum(the same over every age)``.

**Cost.**
- mirror copies per packet: ``full`` copies every packet while a flow is
  mirrored, once per mirror; ``state`` copies the state packets that arrive
  while mirrored, plus the first packet of a flow mirrored at birth;
- replication bytes per traffic byte: the State Mirroring Module's records,
  as ``benchmarks/replication_cost.py`` measures them with real SMMs and as
  ``prism.cell.smm`` sends them (``prism.mgmt.protocol``, "Mirroring modes"):
  - ``full``: a mirror present at birth gets the flow's three change
    records (handshake with its token, teardown, removal:
    ``REPLICATION_BYTES_PER_FLOW``); a mirror added later gets a seed
    (``SEED_BYTES_PER_FLOW``), the removal, and the teardown if state packets
    (a FIN, a RST) still come after it was added;
  - ``state`` (``STATE_CHANGE_RECORD_BYTES`` a record): a mirror present at
    birth gets the handshake record (a non-TCP flow: its first packet's and,
    taken as replied if it has two packets or more, its reply's) and the
    teardown's if the flow closes by FIN or RST, never a removal (state
    mirrors expire their flows themselves); a mirror added later gets a seed
    and the teardown if its FIN/RST come after; and every state mirror gets
    progress records (``PROGRESS_RECORD_BYTES``) only when the cell sends
    them: once the flow's bytes moved by half the takeover tolerance
    (``PROGRESS_TOLERANCE_SHARE``), or, for a flow still sending, once half
    its idle timeout (``PROGRESS_REFRESH_SHARE`` of the tracker's
    ``Timeouts``: an established TCP connection's, a replied UDP flow's,
    ICMP's, other protocols') passed since the last record; per segment of
    a flow's timeline the larger of the two counts (what a flow of even rate
    sends: the records of one rule reset the other's clock).
  A promotion after the flow's last packet (the director still holds the
  flow until its idle timeout) pays its seed and records too.

Policies that decide once, at birth, are built here: fixed, random (in
expectation: every flow mirrored with the same probability, spending the
budget), ranked by a score (best first until the budget is spent; a block of
equal scores that crosses the budget is mirrored in part, its expected value
under a random choice within the tie) and the oracle (knows each flow's
future: ranked by at-risk packets per mirror copy). A policy mirrored "in
part" carries a per-flow ``weight`` (expected share mirrored) into the sums.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from prism.cell.conntrack import Timeouts
from prism.cell.smm import PROGRESS_REFRESH_SHARE, PROGRESS_TOLERANCE_SHARE
from prism.mgmt.protocol import DEFAULT_TAKEOVER_TOLERANCE_BYTES
from prism.telemetry.records import END_FIN, END_RST, MILESTONES_S, milestone_column

MODE_CODE_FULL = 0
MODE_CODE_STATE = 1
MODE_NAMES = {MODE_CODE_FULL: "full", MODE_CODE_STATE: "state"}
MODE_CODES = {name: code for code, name in MODE_NAMES.items()}

#: Shares of packets mirrored at which ranked policies are compared by default.
DEFAULT_BUDGETS = (0.1, 0.25, 0.5)
#: Seconds from the milestone at which a flow is promoted until its new mirror
#: holds its state, the longest the path can take: the primary cell reports the
#: milestone at its next tick (``prism.cell.loop.DEFAULT_TICK_S``, 0.1 s), the
#: controller sends the per-flow ``seed`` at its next control tick
#: (``ryu_apps.mirroring_director.TICK_S``, 0.05 s), and the primary SMM's
#: snapshot crosses the management network as it is asked (well under a
#: millisecond on the demo's veth pairs). 0.075 s on average; the bound is used
#: so that protection is never overstated (``prism evaluate --seed-delay``).
SEED_DELAY_S = 0.15
#: The SMM's bytes per flow and mirror for its three change records over the
#: flow's life (handshake with its token, teardown, removal; state datagrams and
#: acks, compressed, batched): 191 B, ``benchmarks/replication_cost.py --flows 500
#: --duration 30`` (full mode). Used for every flow (a UDP flow has fewer changes:
#: an upper bound for those).
REPLICATION_BYTES_PER_FLOW = 191.0
CHANGE_RECORDS_PER_FLOW = 3
#: Change records a mirror added after birth gets at least (the removal); the teardown too
#: if the flow's closing state packets come after it was added.
CHANGE_RECORDS_AFTER_PROMOTION = 1
#: Wire bytes per flow of a per-flow seed (``seed`` with ``flows``, as a promotion asks), state
#: datagrams and acks: 61.5 B with 100 flows promoted per tick to the same mirror (a busy cell, as
#: the other costs), 112.1 B with 10, 395.3 B alone: ``benchmarks/replication_cost.py --mode state
#: --flows 500 --duration 30`` (its per-flow seed lines). Was 55 B (records batched 100 a datagram).
SEED_BYTES_PER_FLOW = 61.5
#: Wire bytes of one ``state``-mode progress record, state datagram and ack
#: (compressed, batched): 100.0 B, ``benchmarks/replication_cost.py --mode state
#: --flows 500 --duration 30 --tolerance-bytes 8000`` (every flow sends one about
#: every second; a busy cell; 178.7 B with 10 flows per tick in the earlier run).
PROGRESS_RECORD_BYTES = 100.0
#: Wire bytes of one change record (handshake, teardown, removal) to a ``state``
#: mirror, state datagram and ack: 81.6 B, ``benchmarks/replication_cost.py
#: --mode state --flows 500 --duration 30`` (2.00 change records and no removal
#: per flow closed by FIN: 163.1 B per flow; fewer records per datagram than the
#: full mode's three).
STATE_CHANGE_RECORD_BYTES = 81.6
#: Change records a ``state`` mirror gets at birth before the flow's end: the
#: handshake (TCP) or the first packet's (other protocols).
STATE_BIRTH_RECORDS = 1
#: How often the cell looks at a ``state`` flow (``prism.mgmt.protocol.DEFAULT_STATE_INTERVAL_S``):
#: kept for the configuration's value; records no longer go every interval.
STATE_INTERVAL_S = 1.0
PROTO_UDP = 17
PROTO_ICMP = 1
PROTO_ICMPV6 = 58
#: IP bytes of a copied state packet whose size the records do not give (a SYN
#: with the usual options: 20 B IPv4 + 20 B TCP + 20 B options).
STATE_PACKET_BYTES = 60.0
PROTO_TCP = 6
_TCP_STATE_FLAGS = 0x01 | 0x02 | 0x04  # FIN, SYN, RST
_EPS = 1e-12


class EvaluationError(ValueError):
    """Decisions or flows the engine cannot judge; the message says what is wrong."""


@dataclass(frozen=True)
class EvalSettings:
    """Costs and delays of the judgement (module docstring)."""

    seed_delay_s: float = SEED_DELAY_S
    state_interval_s: float = STATE_INTERVAL_S
    replication_bytes_per_flow: float = REPLICATION_BYTES_PER_FLOW
    seed_bytes_per_flow: float = SEED_BYTES_PER_FLOW
    progress_record_bytes: float = PROGRESS_RECORD_BYTES
    state_change_record_bytes: float = STATE_CHANGE_RECORD_BYTES
    takeover_tolerance_bytes: int = DEFAULT_TAKEOVER_TOLERANCE_BYTES
    timeouts: Timeouts = Timeouts()

    def refresh_s(self, proto: np.ndarray, packets: np.ndarray) -> np.ndarray:
        """Per flow: seconds between two progress records of a slow ``state`` flow that still sends
        (``PROGRESS_REFRESH_SHARE`` of its idle timeout: TCP established; a non-TCP flow of two
        packets or more taken as replied)."""
        t = self.timeouts
        udp = np.where(packets >= 2, t.udp_replied, t.udp_new)
        timeout = np.where(proto == PROTO_TCP, t.established,
                           np.where(proto == PROTO_UDP, udp,
                                    np.where(np.isin(proto, (PROTO_ICMP, PROTO_ICMPV6)), t.icmp, t.other)))
        return timeout * PROGRESS_REFRESH_SHARE

    @property
    def progress_bytes_threshold(self) -> float:
        """Bytes a ``state`` flow moves before its next progress record (``PROGRESS_TOLERANCE_SHARE``)."""
        return max(self.takeover_tolerance_bytes * PROGRESS_TOLERANCE_SHARE, 1.0)


# --- flows ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class FlowCurves:
    """Every flow's cumulative packets, bytes and state packets by age, as values at knots.

    Knot ``j`` of a flow is at age ``knots[i, j]``: 0, each milestone (capped at
    the flow's duration), then the duration; values between knots are linear
    and a value at an age is right-continuous (a packet at age ``a`` has
    arrived "at ``a``").

    Attributes:
        duration, packets, bytes, state: per-flow totals (float).
        knots: ages (flows x knots).
        cum_packets, cum_bytes, cum_state: values at the knots.
        first_is_state: the first packet is a state packet (TCP SYN/FIN/RST, or not TCP).
        estimated: flows whose record has no milestone counts (module docstring).
        proto: IP protocol number (0: unknown).
        closed: a TCP flow that ended by FIN or RST (``end_reason``).
    """

    duration: np.ndarray
    packets: np.ndarray
    bytes: np.ndarray
    state: np.ndarray
    knots: np.ndarray
    cum_packets: np.ndarray
    cum_bytes: np.ndarray
    cum_state: np.ndarray
    first_is_state: np.ndarray
    estimated: np.ndarray
    proto: np.ndarray = field(default_factory=lambda: np.zeros(0))
    closed: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))

    def __len__(self) -> int:
        return len(self.duration)

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> "FlowCurves":
        """From flow records (``prism.telemetry.records`` schema, v1 or v2)."""
        n = len(frame)
        duration = np.maximum(frame["duration_s"].to_numpy(dtype=float), 0.0)
        packets = frame["packets"].to_numpy(dtype=float)
        nbytes = np.nan_to_num(_column(frame, "bytes", n), nan=0.0)
        proto = np.nan_to_num(_column(frame, "proto", n), nan=0.0)
        tcp = proto == PROTO_TCP
        flags = _column(frame, "first_tcp_flags", n)
        # Unknown flags (Argus) count as not a state packet here; such records are estimated below.
        first_is_state = ~tcp | ((np.nan_to_num(flags, nan=0.0).astype(np.int64) & _TCP_STATE_FLAGS) > 0)
        first_len = _column(frame, "first_ip_len", n)
        mean_len = nbytes / np.maximum(packets, 1.0)
        first_bytes = np.minimum(np.where(np.isnan(first_len), mean_len, first_len), nbytes)
        state = _column(frame, "state_packets", n)
        columns = {kind: np.column_stack([_column(frame, milestone_column(kind, m), n) for m in MILESTONES_S])
                   for kind in ("packets", "bytes", "state_packets")}  # fmt: skip
        known = ~(np.isnan(columns["packets"]).any(axis=1) | np.isnan(columns["bytes"]).any(axis=1)
                  | np.isnan(columns["state_packets"]).any(axis=1) | np.isnan(state))  # fmt: skip
        milestones = np.asarray(MILESTONES_S, dtype=float)
        knots = np.column_stack([np.zeros(n), np.minimum(milestones[None, :], duration[:, None]), duration])
        # Estimates for records without counts: even spread; state packets at birth and end.
        share = np.where(duration[:, None] > 0, knots[:, 1:-1] / np.maximum(duration[:, None], _EPS), 1.0)
        est_packets = 1.0 + (packets[:, None] - 1.0) * share
        est_bytes = first_bytes[:, None] + (nbytes - first_bytes)[:, None] * share
        end_reason = frame["end_reason"].to_numpy(dtype=object) if "end_reason" in frame else np.full(n, "")
        birth_state = np.where(tcp, np.minimum(packets, 2.0), 1.0)
        closing = np.where(end_reason == END_FIN, 2.0, np.where(end_reason == END_RST, 1.0, 0.0))
        est_state_total = np.where(tcp, np.minimum(packets, birth_state + closing), 1.0)
        est_state = np.where(share >= 1.0, est_state_total[:, None], birth_state[:, None])
        state = np.where(known, state, est_state_total)
        cum_packets = np.where(known[:, None], columns["packets"], est_packets)
        cum_bytes = np.where(known[:, None], columns["bytes"], est_bytes)
        cum_state = np.where(known[:, None], columns["state_packets"], est_state)
        start_state = np.where(known, first_is_state.astype(float), np.minimum(birth_state, 1.0))
        first_is_state = np.where(known, first_is_state, True)
        return cls(
            duration=duration, packets=packets, bytes=nbytes, state=state, knots=knots,
            cum_packets=_monotone(np.ones(n), cum_packets, packets),
            cum_bytes=_monotone(first_bytes, cum_bytes, nbytes),
            cum_state=_monotone(np.minimum(start_state, state), cum_state, state),
            first_is_state=first_is_state.astype(bool), estimated=~known,
            proto=proto, closed=tcp & np.isin(end_reason, (END_FIN, END_RST)),
        )  # fmt: skip

    def at(self, kind: str, flows: np.ndarray, ages: np.ndarray) -> np.ndarray:
        """Cumulative ``kind`` ("packets", "bytes", "state") of ``flows`` at ``ages`` (right-continuous)."""
        values = {"packets": self.cum_packets, "bytes": self.cum_bytes, "state": self.cum_state}[kind][flows]
        knots = self.knots[flows]
        ages = np.asarray(ages, dtype=float)
        left = (knots <= ages[:, None]).sum(axis=1) - 1
        left = np.clip(left, 0, knots.shape[1] - 1)
        right = np.minimum(left + 1, knots.shape[1] - 1)
        rows = np.arange(len(flows))
        x0, x1 = knots[rows, left], knots[rows, right]
        y0, y1 = values[rows, left], values[rows, right]
        span = x1 - x0
        inside = (right > left) & (span > 0)
        slope = np.where(inside, (y1 - y0) / np.where(inside, span, 1.0), 0.0)
        out = y0 + slope * np.clip(ages - x0, 0.0, None)
        return np.where(right > left, out, values[rows, -1])

    def remaining_integral(self, flows: np.ndarray, ages: np.ndarray) -> np.ndarray:
        """``G(a) = integral from 0 to a of (packets - cumulative packets)``: at-risk packet weight up to ``a``."""
        knots = self.knots[flows]
        values = self.cum_packets[flows]
        total = self.packets[flows][:, None]
        ages = np.minimum(np.asarray(ages, dtype=float), self.duration[flows])
        x0, x1 = knots[:, :-1], knots[:, 1:]
        y0, y1 = values[:, :-1], values[:, 1:]
        span = x1 - x0
        slope = np.where(span > 0, (y1 - y0) / np.where(span > 0, span, 1.0), 0.0)
        overlap = np.clip(ages[:, None] - x0, 0.0, span)
        return ((total - y0) * overlap - slope * overlap**2 / 2.0).sum(axis=1)

    def at_risk_packets(self) -> np.ndarray:
        """Each flow's at-risk packet weight over its whole life (``G(duration)``)."""
        return self.remaining_integral(np.arange(len(self)), self.duration)


def _column(frame: pd.DataFrame, name: str, n: int) -> np.ndarray:
    if name not in frame:
        return np.full(n, np.nan)
    return frame[name].to_numpy(dtype=float, na_value=np.nan)


def _monotone(start: np.ndarray, middle: np.ndarray, total: np.ndarray) -> np.ndarray:
    """Knot values: ``start`` at age 0, the milestones, ``total`` at the end; never falling, never above the total."""
    values = np.column_stack([start, middle, total])
    return np.minimum(np.maximum.accumulate(values, axis=1), total[:, None])


# --- decisions -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Decisions:
    """A decision timeline as the engine reads it (see the module docstring).

    Attributes:
        flow: flow index (row of the flow records), ascending.
        age_s: age of the decision, ascending within a flow, 0 for a flow's first row.
        replication_factor: mirrors from then on.
        mode: ``MODE_CODE_FULL`` or ``MODE_CODE_STATE``.
    """

    flow: np.ndarray
    age_s: np.ndarray
    replication_factor: np.ndarray
    mode: np.ndarray

    @classmethod
    def of(cls, timeline, flows: int) -> "Decisions":
        """From any timeline with those four arrays (``models.replay.DecisionTimeline``), checked.

        Raises:
            EvaluationError: arrays of different lengths, unsorted rows, a flow
                without a row at age 0, a negative factor or an unknown mode.
        """
        flow = np.asarray(timeline.flow, dtype=np.int64)
        age = np.asarray(timeline.age_s, dtype=float)
        rf = np.asarray(timeline.replication_factor, dtype=np.int64)
        mode = np.asarray(timeline.mode, dtype=np.int64)
        if not len(flow) == len(age) == len(rf) == len(mode):
            raise EvaluationError("timeline arrays differ in length")
        order_ok = np.all((np.diff(flow) > 0) | ((np.diff(flow) == 0) & (np.diff(age) >= 0)))
        if not order_ok:
            raise EvaluationError("timeline rows must be sorted by flow, then age")
        first = np.r_[True, np.diff(flow) > 0] if len(flow) else np.zeros(0, dtype=bool)
        if len(np.unique(flow)) != flows or (len(flow) and (flow[0] != 0 or flow[-1] != flows - 1)):
            raise EvaluationError(f"the timeline must have rows for each of the {flows} flows")
        if np.any(age[first] != 0.0) or np.any(age < 0):
            raise EvaluationError("a flow's first decision must be at age 0 (its birth)")
        if np.any(rf < 0) or not np.isin(mode, list(MODE_NAMES)).all():
            raise EvaluationError("replication factors must be >= 0 and modes 0 (full) or 1 (state)")
        return cls(flow, age, rf, mode)

    @classmethod
    def at_birth(cls, replication_factor, mode: str = "full") -> "Decisions":
        """One decision per flow, at birth (``replication_factor``: one int per flow)."""
        rf = np.asarray(replication_factor, dtype=np.int64)
        return cls(np.arange(len(rf)), np.zeros(len(rf)), rf, np.full(len(rf), MODE_CODES[mode]))

    @classmethod
    def fixed(cls, flows: int, replication_factor: int, mode: str = "full") -> "Decisions":
        """Every flow gets ``replication_factor`` mirrors at birth."""
        return cls.at_birth(np.full(flows, replication_factor), mode)

    def ready_ages(self, mirrors: int = 1, seed_delay_s: float = SEED_DELAY_S) -> np.ndarray:
        """Per row: the age from which ``mirrors`` mirrors hold the flow's state (inf: it has fewer).

        Mirrors present at birth hold it from age 0 (they get the first
        packet); mirrors that came later hold it ``seed_delay_s`` after the
        decision that brought the flow up to ``mirrors`` (a run of rows with
        enough mirrors keeps that age).
        """
        first = np.r_[True, self.flow[1:] != self.flow[:-1]] if len(self.flow) else np.zeros(0, dtype=bool)
        enough = self.replication_factor >= mirrors
        before = np.r_[False, enough[:-1]] & ~first
        run_start = enough & ~before
        delay = np.where(first, 0.0, seed_delay_s)
        index = np.where(run_start, np.arange(len(self.flow)), -1)
        run_of = np.maximum.accumulate(index) if len(index) else index
        ready = (self.age_s + delay)[np.maximum(run_of, 0)] if len(index) else np.zeros(0)
        return np.where(enough & (run_of >= 0), ready, np.inf)

    def segments(self, duration: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Each row's ``(start, end, first)``: ages it holds over (capped at the flow's duration)."""
        last = np.r_[self.flow[1:] != self.flow[:-1], True] if len(self.flow) else np.zeros(0, dtype=bool)
        first = np.r_[True, self.flow[1:] != self.flow[:-1]] if len(self.flow) else np.zeros(0, dtype=bool)
        d = duration[self.flow]
        start = np.minimum(self.age_s, d)
        following = np.r_[self.age_s[1:], 0.0] if len(self.flow) else np.zeros(0)
        end = np.where(last, d, np.minimum(following, d))
        return start, np.maximum(end, start), first


# --- per-flow cost and protection ------------------------------------------------------------
@dataclass(frozen=True)
class FlowOutcome:
    """Per flow (arrays): what a policy's decisions cost and protected."""

    copies: np.ndarray  #: mirror copies sent
    copy_bytes: np.ndarray  #: bytes of those copies
    smm_bytes: np.ndarray  #: SMM replication bytes (changes, seeds, progress records)
    mirrored: np.ndarray  #: ever had a mirror
    promoted: np.ndarray  #: got its first mirror after birth
    time_protected: np.ndarray  #: ages (s) during which one failure leaves its state
    packets_protected: np.ndarray  #: at-risk packet weight protected against one failure
    packets_protected_2: np.ndarray  #: the same against a double failure


def judge(curves: FlowCurves, decisions: Decisions, settings: EvalSettings = EvalSettings()) -> FlowOutcome:
    """Cost and protection of every flow under ``decisions`` (module docstring)."""
    n = len(curves)
    flow, rf, mode = decisions.flow, decisions.replication_factor.astype(float), decisions.mode
    start, end, first = decisions.segments(curves.duration)
    # Copies: packets (full) or state packets (state) in (start, end]; a birth row also the first packet.
    p_end, p_start = curves.at("packets", flow, end), curves.at("packets", flow, start)
    s_end, s_start = curves.at("state", flow, end), curves.at("state", flow, start)
    b_end, b_start = curves.at("bytes", flow, end), curves.at("bytes", flow, start)
    p_start, s_start, b_start = (np.where(first, 0.0, v) for v in (p_start, s_start, b_start))
    full = mode == MODE_CODE_FULL
    state_copies = s_end - s_start + np.where(first & ~curves.first_is_state[flow], 1.0, 0.0)
    copies = rf * np.where(full, p_end - p_start, state_copies)
    copy_bytes = rf * np.where(full, b_end - b_start, state_copies * STATE_PACKET_BYTES)
    # SMM bytes (module docstring): change records of mirrors present at birth, seed and later
    # change records of mirrors added since, progress records of state mirrors when the cell sends them.
    previous = np.where(first, 0.0, np.r_[0.0, rf[:-1]])
    added = np.maximum(rf - previous, 0.0)
    record = settings.replication_bytes_per_flow / CHANGE_RECORDS_PER_FLOW
    closing_after = (curves.state[flow] - s_start) > 0  # a teardown still to replicate
    later_records = CHANGE_RECORDS_AFTER_PROMOTION + closing_after
    full_added = np.where(first, settings.replication_bytes_per_flow,
                          settings.seed_bytes_per_flow + later_records * record)  # fmt: skip
    tcp = curves.proto[flow] == PROTO_TCP
    teardown = (tcp & curves.closed[flow]).astype(float)  # no removal: state mirrors expire flows themselves
    replied = (~tcp & (curves.packets[flow] >= 2)).astype(float)
    birth_records = STATE_BIRTH_RECORDS + replied + teardown
    later_state = teardown * closing_after
    state_added = np.where(first, birth_records * settings.state_change_record_bytes,
                           settings.seed_bytes_per_flow + later_state * settings.state_change_record_bytes)
    per_added = np.where(full, full_added, state_added)
    moved_bytes = b_end - b_start
    span = end - start
    refresh = settings.refresh_s(curves.proto[flow], curves.packets[flow])
    progress = np.maximum(np.floor(moved_bytes / settings.progress_bytes_threshold),
                          np.floor(span / np.maximum(refresh, _EPS)))
    progress = np.where(~full & (p_end - p_start > 0), progress, 0.0) * rf
    smm = _per_flow(flow, added * per_added + progress * settings.progress_record_bytes, n)
    most = np.zeros(n)
    np.maximum.at(most, flow, rf)
    mirrored_at_birth = np.zeros(n, dtype=bool)
    mirrored_at_birth[flow[first]] = rf[first] >= 1
    time_1, packets_1 = _protection(curves, decisions, start, end, first, 1, settings.seed_delay_s)
    _time_2, packets_2 = _protection(curves, decisions, start, end, first, 2, settings.seed_delay_s)
    return FlowOutcome(
        copies=_per_flow(flow, copies, n), copy_bytes=_per_flow(flow, copy_bytes, n), smm_bytes=smm,
        mirrored=most >= 1, promoted=(most >= 1) & ~mirrored_at_birth,
        time_protected=time_1, packets_protected=packets_1, packets_protected_2=packets_2,
    )  # fmt: skip


def _per_flow(flow: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    return np.bincount(flow, weights=values, minlength=n).astype(float)


def _protection(curves, decisions, start, end, first, mirrors: int, seed_delay_s: float):
    """Per flow: time and at-risk packet weight with ``mirrors`` mirrors holding its state."""
    n = len(curves)
    flow = decisions.flow
    enough = decisions.replication_factor >= mirrors
    ready = decisions.ready_ages(mirrors, seed_delay_s)
    lo = np.minimum(np.maximum(start, ready), end)
    hi = end
    use = enough
    time = np.where(use, hi - lo, 0.0)
    weight = np.zeros(len(flow))
    if use.any():
        rows = np.flatnonzero(use)
        weight[rows] = (curves.remaining_integral(flow[rows], hi[rows])
                        - curves.remaining_integral(flow[rows], lo[rows]))  # fmt: skip
    return _per_flow(flow, time, n), _per_flow(flow, np.maximum(weight, 0.0), n)


# --- the table row -------------------------------------------------------------------------
@dataclass(frozen=True)
class PolicyResult:
    """One row of the policy table (shares are 0..1).

    Attributes:
        policy: the policy's name.
        budget: target mirror copies per packet (budgeted policies), else None.
        threshold: score from which a flow is mirrored, if the policy has one.
        flows_mirrored: share of flows given at least one mirror at some age.
        packets_mirrored: mirror copies per packet (1.0: every packet once).
        flows_protected: share of at-risk flows whose state survives one cell failure.
        packets_protected: share of at-risk packets whose state survives one cell failure.
        packets_protected_2: the same for a double failure (primary and first mirror).
        flows_promoted: share of flows whose first mirror came after birth.
        bytes_mirrored: bytes of mirror copies per traffic byte.
        replication_bytes: SMM replication bytes per traffic byte.
        mode: "full", "state" or "mixed" (the modes its decisions used while mirrored).
    """

    policy: str
    budget: Optional[float]
    threshold: Optional[float]
    flows_mirrored: float
    packets_mirrored: float
    flows_protected: float
    packets_protected: float
    packets_protected_2: float
    flows_promoted: float = 0.0
    bytes_mirrored: float = 0.0
    replication_bytes: float = 0.0
    mode: str = "full"

    def as_dict(self) -> dict:
        """Plain values for JSON."""
        return asdict(self)


def result(curves: FlowCurves, decisions: Decisions, name: str, settings: EvalSettings = EvalSettings(),
           weight: Optional[np.ndarray] = None, budget: Optional[float] = None,
           threshold: Optional[float] = None) -> PolicyResult:  # fmt: skip
    """The table row of ``decisions`` (``weight``: per-flow share mirrored, for choices made in part)."""
    outcome = judge(curves, decisions, settings)
    w = np.ones(len(curves)) if weight is None else np.asarray(weight, dtype=float)
    risk_flows = max(float(curves.duration.sum()), _EPS)
    risk_packets = max(float(curves.at_risk_packets().sum()), _EPS)
    packets = max(float(curves.packets.sum()), _EPS)
    nbytes = max(float(curves.bytes.sum()), _EPS)
    n = max(len(curves), 1)
    used = decisions.mode[decisions.replication_factor >= 1]
    mode = "full" if not len(used) or (used == MODE_CODE_FULL).all() else (
        "state" if (used == MODE_CODE_STATE).all() else "mixed")  # fmt: skip
    return PolicyResult(
        policy=name, budget=budget, threshold=threshold,
        flows_mirrored=float((w * outcome.mirrored).sum() / n),
        packets_mirrored=float((w * outcome.copies).sum() / packets),
        flows_protected=float((w * outcome.time_protected).sum() / risk_flows),
        packets_protected=float((w * outcome.packets_protected).sum() / risk_packets),
        packets_protected_2=float((w * outcome.packets_protected_2).sum() / risk_packets),
        flows_promoted=float((w * outcome.promoted).sum() / n),
        bytes_mirrored=float((w * outcome.copy_bytes).sum() / nbytes),
        replication_bytes=float((w * outcome.smm_bytes).sum() / nbytes),
        mode=mode,
    )  # fmt: skip


# --- policies that decide at birth ---------------------------------------------------------
def birth_copies(curves: FlowCurves, mode: str = "full", settings: EvalSettings = EvalSettings()) -> np.ndarray:
    """Mirror copies each flow costs with one mirror from birth in ``mode``."""
    return judge(curves, Decisions.fixed(len(curves), 1, mode), settings).copies


def within_budget(scores, cost, allowance: float) -> Tuple[np.ndarray, Optional[float]]:
    """Best-scored flows first until their ``cost`` reaches ``allowance``; a tied block that crosses it in part.

    Returns:
        ``(weight, threshold)``: per-flow share mirrored (0..1) and the lowest score taken.
    """
    scores = np.asarray(scores, dtype=float)
    cost = np.asarray(cost, dtype=float)
    order = np.argsort(-scores, kind="stable")
    sorted_scores = scores[order]
    if not len(order):
        return np.zeros(0), None
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    block_cost = np.add.reduceat(cost[order], starts)
    before = np.r_[0.0, np.cumsum(block_cost)[:-1]]
    block_share = np.clip((allowance - before) / np.maximum(block_cost, _EPS), 0.0, 1.0)
    block_share = np.where((block_cost <= 0) & (before <= allowance), 1.0, block_share)
    share = np.empty(len(order))
    share[order] = np.repeat(block_share, np.diff(np.r_[starts, len(order)]))
    taken = np.flatnonzero(block_share > 0)
    threshold = float(sorted_scores[starts[taken[-1]]]) if len(taken) else None
    return share, threshold


def fill_budget(scores, cost, allowance: float) -> np.ndarray:
    """One realisation of ``within_budget`` (0/1 per flow): best-scored first (ties in flow order); a
    flow whose cost does not fit in what is left is skipped and the next ones are tried, so that one
    elephant does not leave the budget unspent."""
    cost = np.asarray(cost, dtype=float)
    order = np.argsort(-np.asarray(scores, dtype=float), kind="stable")
    left = float(allowance)
    out = np.zeros(len(order), dtype=np.int8)
    smallest = float(cost.min()) if len(cost) else 0.0
    for flow, size in zip(order.tolist(), cost[order].tolist()):
        if left < smallest:
            break
        if size <= left:
            out[flow] = 1
            left -= size
    return out


def ranked(curves: FlowCurves, scores, budget: float, name: str, mode: str = "full",
           settings: EvalSettings = EvalSettings()) -> PolicyResult:  # fmt: skip
    """One mirror at birth, in ``mode``, for the best-scored flows until ``budget`` copies per packet are spent."""
    cost = birth_copies(curves, mode, settings)
    weight, threshold = within_budget(scores, cost, budget * curves.packets.sum())
    return result(curves, Decisions.fixed(len(curves), 1, mode), name, settings, weight, budget, threshold)


def random_choice(curves: FlowCurves, budget: float, name: str = "random", mode: str = "full",
                  settings: EvalSettings = EvalSettings()) -> PolicyResult:  # fmt: skip
    """One mirror at birth for random flows, in expectation: each with the probability that spends ``budget``."""
    cost = birth_copies(curves, mode, settings)
    probability = min(1.0, budget * curves.packets.sum() / max(cost.sum(), _EPS))
    weight = np.full(len(curves), probability)
    return result(curves, Decisions.fixed(len(curves), 1, mode), name, settings, weight, budget)


def oracle_scores(curves: FlowCurves, mode: str = "full", settings: EvalSettings = EvalSettings()) -> np.ndarray:
    """What an oracle ranks by: each flow's at-risk packets per mirror copy (it knows the future)."""
    return curves.at_risk_packets() / np.maximum(birth_copies(curves, mode, settings), _EPS)


def oracle(curves: FlowCurves, budget: float, name: str = "oracle", mode: str = "full",
           settings: EvalSettings = EvalSettings()) -> PolicyResult:  # fmt: skip
    """Knows every flow's future: mirrors at birth the flows with the most at-risk packets per copy."""
    return ranked(curves, oracle_scores(curves, mode, settings), budget, name, mode, settings)


def threshold_choice(curves: FlowCurves, scores, threshold: float, name: str, mode: str = "full",
                     settings: EvalSettings = EvalSettings()) -> PolicyResult:  # fmt: skip
    """One mirror at birth for every flow scored at or above ``threshold``."""
    rf = (np.asarray(scores, dtype=float) >= threshold).astype(np.int64)
    return result(curves, Decisions.at_birth(rf, mode), name, settings, threshold=threshold)


# --- the first-packet tables of ``prism train`` (full mode, at birth) ---------------------------
def _duration_packets_curves(duration_s, packets) -> FlowCurves:
    frame = pd.DataFrame({"duration_s": np.asarray(duration_s, dtype=float),
                          "packets": np.asarray(packets, dtype=float), "bytes": np.asarray(packets, dtype=float),
                          "proto": np.zeros(len(np.asarray(packets)), dtype=int)})  # fmt: skip
    return FlowCurves.from_frame(frame)


def fixed_policy(duration_s, packets, replication_factor: int, name: str) -> PolicyResult:
    """Every flow gets ``replication_factor`` mirrors at birth (flows given as durations and packets)."""
    curves = _duration_packets_curves(duration_s, packets)
    return result(curves, Decisions.fixed(len(curves), replication_factor), name)


def ranked_policy(duration_s, packets, scores, budget: float, name: str) -> PolicyResult:
    """``ranked`` in full mode for flows given as durations and packets (packets spread evenly)."""
    return ranked(_duration_packets_curves(duration_s, packets), scores, budget, name)


def threshold_policy(duration_s, packets, scores, threshold: float, name: str) -> PolicyResult:
    """``threshold_choice`` in full mode for flows given as durations and packets."""
    return threshold_choice(_duration_packets_curves(duration_s, packets), scores, threshold, name)


def random_policy(budget: float, name: str = "random") -> PolicyResult:
    """Random flows in full mode at birth, in expectation: every share equals the budget."""
    return PolicyResult(name, budget, None, budget, budget, budget, budget, 0.0)


def policy_table(
    frame: pd.DataFrame,
    scores: Mapping[str, np.ndarray],
    budgets: Sequence[float] = DEFAULT_BUDGETS,
    thresholds: Sequence[Tuple[str, str, float]] = (),
) -> List[PolicyResult]:
    """First-packet policies in full mode: none, fixed rf 1 and 2, and at each budget random,
    every scored policy and the oracle; then fixed thresholds (``prism train``'s table).

    Args:
        frame: flow records.
        scores: policy name -> one score per flow (higher: mirror first).
        budgets: mirror copies per packet to compare at.
        thresholds: ``(label, score name, threshold)`` rows for ``threshold_choice``.
    """
    curves = FlowCurves.from_frame(frame)
    n = len(curves)
    rows = [result(curves, Decisions.fixed(n, rf), name)
            for rf, name in ((0, "none"), (1, "fixed rf1"), (2, "fixed rf2"))]  # fmt: skip
    for budget in budgets:
        rows.append(random_choice(curves, budget))
        for name, values in scores.items():
            rows.append(ranked(curves, values, budget, name))
        rows.append(oracle(curves, budget))
    for label, name, threshold in thresholds:
        rows.append(threshold_choice(curves, scores[name], threshold, label))
    return rows


# --- the comparison of ``prism evaluate`` and ``prism simulate`` ------------------------------------
CONTROLLER = "controller"
NONE = "none"
FIXED_RF1 = "fixed rf1"
FIXED_RF2 = "fixed rf2"
FIXED_RF1_STATE = "fixed rf1 state"
RANDOM = "random"
BASELINE = "baseline (port mean)"
ORACLE = "oracle"


@dataclass(frozen=True)
class Comparison:
    """The rows of one comparison, and the facts they rest on."""

    rows: List[PolicyResult]
    flows: int
    estimated_flows: int  #: flows whose curves were estimated (no milestone counts)
    budget: float  #: the copies per packet the budgeted rows spend (the controller's)
    notes: List[str] = field(default_factory=list)

    def row(self, name: str) -> PolicyResult:
        """The row of a policy by name."""
        return next(r for r in self.rows if r.policy == name)


def compare(
    frame: pd.DataFrame,
    controller=None,
    baseline_scores: Optional[np.ndarray] = None,
    budget: Optional[float] = None,
    budget_mode: str = "state",
    settings: EvalSettings = EvalSettings(),
    extra_scores: Mapping[str, np.ndarray] = {},
    extra_timelines: Mapping[str, object] = {},
) -> Comparison:
    """The comparison rows: controller, none, fixed rf1, fixed rf2, fixed rf1 state, random,
    port-mean baseline, oracle (and any ``extra_scores`` ranked the same way).

    Random, baseline, oracle and the extra ranked rows decide at birth, in
    ``budget_mode``, and spend ``budget`` copies per packet: by default what the
    controller row spent (protection at equal cost), else 10%.

    Args:
        frame: flow records.
        controller: the controller's decision timeline (``models.replay.replay_decisions``), or None.
        baseline_scores: the port-mean baseline's score per flow (predicted duration), or None.
        budget: copies per packet of the budgeted rows (None: the controller's).
        budget_mode: mode of the budgeted rows.
        settings: costs and delays.
        extra_scores: more ranked rows, name -> score per flow.
        extra_timelines: more rows from decision timelines (after the controller's), name -> timeline.
    """
    curves = FlowCurves.from_frame(frame)
    n = len(curves)
    rows: List[PolicyResult] = []
    notes: List[str] = []
    if controller is not None:
        rows.append(result(curves, Decisions.of(controller, n), CONTROLLER, settings))
    if budget is None:
        budget = rows[0].packets_mirrored if rows else DEFAULT_BUDGETS[0]
    rows += [result(curves, Decisions.of(timeline, n), name, settings) for name, timeline in extra_timelines.items()]
    rows += [
        result(curves, Decisions.fixed(n, 0), NONE, settings),
        result(curves, Decisions.fixed(n, 1), FIXED_RF1, settings),
        result(curves, Decisions.fixed(n, 2), FIXED_RF2, settings),
        result(curves, Decisions.fixed(n, 1, "state"), FIXED_RF1_STATE, settings),
        random_choice(curves, budget, RANDOM, budget_mode, settings),
    ]
    if baseline_scores is not None:
        rows.append(ranked(curves, baseline_scores, budget, BASELINE, budget_mode, settings))
    for name, values in extra_scores.items():
        rows.append(ranked(curves, values, budget, name, budget_mode, settings))
    rows.append(oracle(curves, budget, ORACLE, budget_mode, settings))
    estimated = int(curves.estimated.sum())
    if estimated < n:
        notes.append("packets, bytes and state packets between two age milestones (and between the last "
                     "milestone and a flow's end) are interpolated linearly from the records' counts")  # fmt: skip
    if estimated:
        notes.append(f"{estimated} of {n} flows have no milestone counts: their packets are taken as "
                     f"spread evenly over their duration, their state packets at birth and end")  # fmt: skip
    return Comparison(rows, n, estimated, float(budget), notes)


def format_table(rows: Iterable[PolicyResult]) -> str:
    """A Markdown table of policy rows (shares in percent)."""
    lines = [
        "| policy | mode | budget | flows mirrored | promoted | mirror copies / packet | replication bytes / byte "
        "| at-risk flows protected | at-risk packets protected | packets protected, 2 failures |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        budget = "" if row.budget is None else f"{row.budget:.3g}"
        lines.append(
            f"| {row.policy} | {row.mode} | {budget} | {row.flows_mirrored:.1%} | {row.flows_promoted:.1%} "
            f"| {row.packets_mirrored:.4f} | {row.replication_bytes:.4f} | {row.flows_protected:.1%} "
            f"| {row.packets_protected:.1%} | {row.packets_protected_2:.1%} |"
        )
    return "\n".join(lines)


def at_risk_summary(frame: pd.DataFrame) -> Dict[str, float]:
    """How concentrated the risk is: flows, and the share of at-risk packets in the longest 10% of flows."""
    curves = FlowCurves.from_frame(frame)
    weight = curves.at_risk_packets()
    top = np.argsort(-curves.duration)[: max(1, len(curves) // 10)]
    return {
        "flows": int(len(frame)),
        "flows_with_duration": int((curves.duration > 0).sum()),
        "packets": int(curves.packets.sum()),
        "flows_without_milestone_counts": int(curves.estimated.sum()),
        "risk_share_longest_10pct_flows": float(weight[top].sum() / max(weight.sum(), _EPS)),
    }


def targets(comparison: Comparison) -> Dict[str, float]:
    """The issue's targets: the controller row against fixed rf1 (shares of rf1's protection and copies)."""
    try:
        controller, rf1 = comparison.row(CONTROLLER), comparison.row(FIXED_RF1)
    except StopIteration:
        return {}
    return {
        "packets_protected_vs_rf1": controller.packets_protected / max(rf1.packets_protected, _EPS),
        "flows_protected_vs_rf1": controller.flows_protected / max(rf1.flows_protected, _EPS),
        "copies_vs_rf1": controller.packets_mirrored / max(rf1.packets_mirrored, _EPS),
        "replication_bytes": controller.replication_bytes,
    }
