"""The trace-driven simulator: flows, cells and failures through the controller's own placement and failover.

A run replays flows (each with a start, duration, packets and bytes) against
N cells and a ``FailureSchedule``, once per policy (its decision timeline,
``prism.sim.evaluation.Decisions``: a replication factor and mode per flow from
birth, changed at the ages the policy re-decided), with the code the
controller runs:

- placement by ``prism.placement.ring.HashRing`` (its numpy ``order_array``): a flow's
  profile is the first live cell of its ring order and the next
  ``replication_factor`` live ones, what ``prism.policy.base.FixedPolicy`` returns;
- one group per distinct profile in a ``prism.director.groups.GroupTable``: new flows
  join the group of their profile, failover rewrites groups in place;
- ``prism.director.failover.plan_repair`` for every group that names a failed cell
  (promote the first seeded mirror, else lose the state; restore the
  replication factor with the ring keyed on the profile) and, when a cell
  returns, for groups left short of mirrors. A new mirror holds the state
  ``seed_time_s`` after its repair (the SMM's snapshot), not before;
- a re-decision (``redecide``) keeps the flow's current primary and gives it
  the next live cells of its ring order (as they were at its start, less the
  cells down now) as mirrors, moving it to that profile's group; a flow
  promoted (mirrors after birth) is protected only ``seed_delay_s``
  (``prism.sim.evaluation.EvalSettings``) after the promotion: its per-flow seed.

A flow is *at risk* at a failure if it is alive then (started before, ends
after) and its group's primary is the failed cell; its state *survives* if
the repair promoted a mirror that held it. A flow whose state was lost counts
once and ends there (its connection broke). Packets at risk are those the
flow still had to send after the failure (``prism.sim.evaluation.FlowCurves``: its
milestone counts, or its packets spread evenly over its duration).

Costs come from the evaluation engine (``prism.sim.evaluation.judge``: mirror
copies per packet and per byte in each mode, the SMM's changes, promotion
seeds and progress records), plus ``seed_bytes_per_flow`` per flow for each
mirror a repair seeded.

The controller here learns of a failure at once (a link-down; a dead process
is found about ``models.train.DEFAULT_HORIZON_S`` later) and flows stay in
their groups until they end (the FSC's idle timeout is not simulated).
"""

from __future__ import annotations

import heapq
import math
from dataclasses import asdict, dataclass
from typing import List, Optional, Tuple

import numpy as np

from prism.sim.evaluation import Decisions, EvalSettings, FlowCurves, judge
from prism.director.failover import plan_repair
from prism.director.groups import GroupTable, PendingSeed
from prism.openflow.changes import PROFILE_GROUP_BASE
from prism.placement.profiles import MirroringProfile
from prism.placement.ring import HashRing
from prism.sim.evaluation import SEED_BYTES_PER_FLOW
from prism.sim.flows import Flows, Progress, SimulationError
from prism.sim.schedule import DOWN, SAMPLE, FailureSchedule

DEFAULT_SEED_TIME_S = 0.5
DEFAULT_SAMPLES = 16  #: evenly spaced instants at which balance and group counts are sampled
OFMSGS_PER_GROUP_REWRITE = 2  #: GroupMod MODIFY of the FAST_FAILOVER and the ALL group


@dataclass(frozen=True)
class SimSettings:
    """Knobs of a run.

    Attributes:
        seed_time_s: time from a repair to its new mirrors holding the state.
        samples: evenly spaced sampling instants (failure instants are added).
        seed_bytes_per_flow: SMM bytes per flow in a repaired group's new mirror's seed.
        costs: the engine's costs and promotion seed delay.
    """

    seed_time_s: float = DEFAULT_SEED_TIME_S
    samples: int = DEFAULT_SAMPLES
    seed_bytes_per_flow: float = SEED_BYTES_PER_FLOW
    costs: EvalSettings = EvalSettings()


@dataclass(frozen=True)
class PolicyReport:
    """What one policy did in one run (shares are 0..1; ``*_max_mean`` are max/mean ratios)."""

    policy: str
    flows: int
    failures: int
    flows_mirrored: float  #: share of flows given at least one mirror (at some age)
    packets_mirrored: float  #: mirror copies per packet of traffic
    bytes_mirrored: float  #: mirror copies per byte of traffic
    replication_bytes: float  #: SMM state records and seeds, per byte of traffic
    at_risk_flows: int  #: flow-failure pairs: a flow alive on a cell when it failed
    at_risk_packets: float  #: packets those flows still had to send
    flows_protected: float  #: share of at-risk flows whose state survived
    packets_protected: float  #: share of at-risk packets whose flow's state survived
    lost_flows: int
    unplaced_flows: int  #: flows that started while every cell was down
    primaries_max_mean: float  #: per-cell flows held as primary, max/mean over live cells
    replicas_max_mean: float  #: per-cell flows held as mirror, max/mean
    held_max_mean: float  #: primaries + replicas per cell, max/mean
    flows_held_per_cell: float  #: mean primaries + replicas per live cell
    peak_alive_flows: int
    peak_groups: int  #: most groups (distinct profiles) holding alive flows at once
    profiles_used: int  #: distinct profiles over the run
    groups_rewritten_per_failure: float
    flows_affected_per_failure: float  #: alive flows in the rewritten groups
    ofmsgs_per_failure: float
    cell_primaries: Tuple[float, ...] = ()  #: mean flows held as primary per cell (``ring.cells`` order)
    cell_replicas: Tuple[float, ...] = ()  #: mean flows held as mirror per cell
    flows_promoted: float = 0.0  #: share of flows whose first mirror came after birth
    lost_unseeded: int = 0  #: of ``lost_flows``: promoted flows whose seed had not completed

    def as_dict(self) -> dict:
        """Plain values for JSON."""
        return asdict(self)


def simulate_policy(
    name: str,
    decisions,
    flows: Flows,
    ranks: np.ndarray,
    ring: HashRing,
    schedule: FailureSchedule,
    settings: SimSettings = SimSettings(),
    progress: Progress = None,
    curves: Optional[FlowCurves] = None,
) -> Tuple[PolicyReport, np.ndarray]:
    """Run one policy.

    Args:
        name: the policy's name in the report.
        decisions: its ``prism.sim.evaluation.Decisions``, or one replication factor per
            flow (decided at birth, ``full`` mode).
        flows: the flows.
        ranks: ``live_ranks`` of the flows, at least ``max(replication_factor) + 1``
            deep (+ 1 more when the policy re-decides: a re-decided flow's primary may
            have moved).
        ring: the ring over the cells.
        schedule: the failures.
        settings: knobs.
        progress: called with 1 per event processed.
        curves: the flows' curves (``FlowCurves.from_frame`` of their records); default:
            packets and bytes spread evenly over each flow's duration.

    Returns:
        ``(report, at_risk)``: the report and a bool array of the flows found
        at risk at some failure.
    """
    if not isinstance(decisions, Decisions):
        rf = np.asarray(decisions, dtype=np.int64)
        if rf.shape != (len(flows),) or (len(rf) and rf.min() < 0):
            raise SimulationError(f"{name}: need one replication factor >= 0 per flow")
        decisions = Decisions.at_birth(rf)
    else:
        decisions = Decisions.of(decisions, len(flows))
    depth = int(decisions.replication_factor.max(initial=0)) + 1
    if ranks.shape[1] < depth:
        raise SimulationError(f"{name}: ranks are {ranks.shape[1]} deep, replication factor {depth - 1} needs {depth}")
    curves = curves if curves is not None else flows.curves()
    run = _Run(name, decisions, flows, curves, ranks, ring, schedule, settings)
    return run.execute(progress)


class _Run:
    """The state of one policy's run (flows as arrays, groups in a GroupTable)."""

    def __init__(self, name, decisions: Decisions, flows: Flows, curves: FlowCurves, ranks, ring: HashRing,
                 schedule, settings: SimSettings):  # fmt: skip
        self.name, self.flows, self.ring, self.settings = name, flows, ring, settings
        self.decisions, self.curves = decisions, curves
        self.schedule = schedule
        self.cells = ring.cells
        self.index = {cell_id: i for i, cell_id in enumerate(self.cells)}
        first = np.r_[True, decisions.flow[1:] != decisions.flow[:-1]]
        rf = decisions.replication_factor[first]
        width = int(decisions.replication_factor.max(initial=0)) + 1
        self.ranks = ranks
        columns = np.arange(width)
        self.profile_cells = np.where(columns[None, :] <= rf[:, None], ranks[:, :width], -1).astype(np.int16)
        # Re-decisions as events in time order; each flow's time from which a mirror holds its state.
        ready = decisions.ready_ages(1, settings.costs.seed_delay_s)
        self.flow_ready = flows.start + ready[first]
        later = np.flatnonzero(~first)
        at = flows.start[decisions.flow[later]] + decisions.age_s[later]
        order = np.argsort(at, kind="stable")
        self.redecision_rows, self.redecision_at = later[order], at[order]
        self.redecision_ready = flows.start[decisions.flow[self.redecision_rows]] + ready[self.redecision_rows]
        self.redecided = 0
        self.down_mask = np.zeros(len(self.cells), dtype=bool)
        self.table = GroupTable({cell_id: port for port, cell_id in enumerate(self.cells, start=1)})
        self.group_cells = np.full((1024, width), -1, dtype=np.int16)
        self.group_target = np.zeros(1024, dtype=np.int16)
        self.flow_group = np.full(len(flows), -1, dtype=np.int64)
        self.end = flows.end
        self.live_end = self.end.copy()
        self.at_risk = np.zeros(len(flows), dtype=bool)
        self.down: set = set()
        self.seeds: List[Tuple[float, int, Tuple[str, ...]]] = []
        self.assigned = 0
        self.profiles_seen: set = set()
        self.longest = float(flows.duration.max()) if len(flows) else 0.0
        self.totals = dict(risk_flows=0, risk_packets=0.0, safe_flows=0, safe_packets=0.0, lost=0,
                           seeded_flows=0, rewritten=0, affected=0, failures=0, unplaced=0,
                           lost_unseeded=0)  # fmt: skip
        self.balance: List[Tuple[float, float, float, float]] = []
        self.cell_held = np.zeros((2, len(self.cells)))
        self.peak_flows = self.peak_groups = 0

    # --- the event loop ----------------------------------------------------------------
    def execute(self, progress: Progress) -> Tuple[PolicyReport, np.ndarray]:
        flows = self.flows
        events = [(t, kind, cell_id) for t, kind, cell_id in self.schedule.events()]
        first, last = float(flows.start[0]), float(flows.start[-1])
        grid = np.linspace(first, last, self.settings.samples + 2)[1:-1] if last > first else []
        events += [(float(t), SAMPLE, "") for t in grid]
        events += [(t, SAMPLE, "") for t, kind, _c in events if kind == DOWN]
        for t, kind, cell_id in sorted(events):
            self._assign_until(t)
            self._redecide_until(t)
            self._complete_seeds(t)
            alive = self._alive(t)
            if kind == SAMPLE:
                self._sample(alive)
            elif kind == DOWN:
                self._cell_down(t, cell_id, alive)
            else:
                self._cell_up(t, cell_id, alive)
            if progress is not None:
                progress(1)
        self._assign_until(math.inf)
        self._redecide_until(math.inf)
        return self._report(), self.at_risk

    def _assign_until(self, t: float) -> None:
        """Flows starting before ``t`` join the group of their profile (created if none)."""
        stop = int(np.searchsorted(self.flows.start, t, side="left"))
        if stop <= self.assigned:
            return
        rows = slice(self.assigned, stop)
        self.flow_group[rows] = self._groups_of(self.profile_cells[rows])
        unplaced = self.assigned + np.flatnonzero(self.flow_group[rows] < 0)
        self.live_end[unplaced] = -math.inf
        self.totals["unplaced"] += len(unplaced)
        self.assigned = stop

    def _groups_of(self, cells: np.ndarray) -> np.ndarray:
        """The group slot of each row of profile cells (cell indices, -1 padded), created if new; -1: no cell."""
        base = len(self.cells) + 1
        codes = np.zeros(len(cells), dtype=np.int64)
        for column in range(cells.shape[1]):
            codes = codes * base + (cells[:, column].astype(np.int64) + 1)
        unique, first, inverse = np.unique(codes, return_index=True, return_inverse=True)
        groups = np.empty(len(unique), dtype=np.int64)
        for i, (code, row) in enumerate(zip(unique.tolist(), first.tolist())):
            ids = [self.cells[c] for c in cells[row].tolist() if c >= 0]
            if ids:
                self.profiles_seen.add(code)
                groups[i] = self._group_for(MirroringProfile.of(*ids))
            else:  # every cell down: the controller cannot place the flow (NoLiveCell)
                groups[i] = -1
        return groups[inverse.reshape(-1)]

    def _redecide_until(self, t: float) -> None:
        """Re-decisions due before ``t`` move their (alive, placed) flows to the group of their new profile."""
        stop = int(np.searchsorted(self.redecision_at, t, side="left"))
        if stop <= self.redecided:
            return
        due = np.arange(self.redecided, stop)
        self.redecided = stop
        rows = self.redecision_rows[due]
        flows = self.decisions.flow[rows]
        # The last due decision of each flow wins; its seed runs from the decision that promoted it.
        _unique, last = np.unique(flows[::-1], return_index=True)
        keep = len(flows) - 1 - last
        due, rows, flows = due[keep], rows[keep], flows[keep]
        placed = (flows < self.assigned) & (self.flow_group[flows] >= 0)
        alive = self.live_end[flows] > self.redecision_at[due]
        use = placed & alive
        due, rows, flows = due[use], rows[use], flows[use]
        if not len(flows):
            return
        self.flow_ready[flows] = self.redecision_ready[due]
        rf = self.decisions.replication_factor[rows]
        primary = self.group_cells[self.flow_group[flows], 0].astype(np.int64)
        candidates = self.ranks[flows].astype(np.int64)
        usable = (candidates >= 0) & (candidates != primary[:, None])
        usable &= ~self.down_mask[np.maximum(candidates, 0)]
        order = np.argsort(~usable, axis=1, kind="stable")
        mirrors = np.take_along_axis(candidates, order, axis=1)
        mirrors = np.where(np.take_along_axis(usable, order, axis=1), mirrors, -1)
        width = self.group_cells.shape[1]
        cells = np.full((len(flows), width), -1, dtype=np.int64)
        cells[:, 0] = primary
        take = min(width - 1, mirrors.shape[1])
        columns = np.arange(take)
        cells[:, 1 : 1 + take] = np.where(columns[None, :] < rf[:, None], mirrors[:, :take], -1)
        self.flow_group[flows] = self._groups_of(cells)

    def _group_for(self, profile: MirroringProfile) -> int:
        group_id = self.table.group_for(profile)
        if group_id is None:
            state = self.table.create(profile)
            if state is None:
                raise SimulationError(f"{self.name}: the switch's profile group ids are exhausted")
            group_id = state.group_id
            slot = group_id - PROFILE_GROUP_BASE
            if slot >= len(self.group_cells):
                grow = len(self.group_cells)
                self.group_cells = np.vstack([self.group_cells, np.full_like(self.group_cells, -1)])
                self.group_target = np.r_[self.group_target, np.zeros(grow, dtype=np.int16)]
            self._set_cells(slot, profile)
            self.group_target[slot] = profile.replication_factor
        return group_id - PROFILE_GROUP_BASE

    def _set_cells(self, slot: int, profile: MirroringProfile) -> None:
        cells = [self.index[c] for c in profile.cells][: self.group_cells.shape[1]]
        self.group_cells[slot] = -1
        self.group_cells[slot, : len(cells)] = cells

    def _complete_seeds(self, t: float) -> None:
        while self.seeds and self.seeds[0][0] <= t:
            _due, slot, mirrors = heapq.heappop(self.seeds)
            state = self.table.get(slot + PROFILE_GROUP_BASE)
            for mirror in mirrors:
                state.pending.pop(mirror, None)

    def _alive(self, t: float) -> np.ndarray:
        lo = int(np.searchsorted(self.flows.start, t - self.longest, side="left"))
        hi = int(np.searchsorted(self.flows.start, t, side="left"))
        return lo + np.flatnonzero(self.live_end[lo:hi] > t)

    # --- failures ----------------------------------------------------------------------------
    def _cell_down(self, t: float, cell_id: str, alive: np.ndarray) -> None:
        self.down.add(cell_id)
        self.down_mask[self.index[cell_id]] = True
        self.totals["failures"] += 1
        cell = self.index[cell_id]
        slots, counts = np.unique(self.flow_group[alive], return_counts=True)
        naming = (self.group_cells[slots] == cell).any(axis=1)
        exposed_slot = np.zeros(len(self.group_cells), dtype=bool)
        lost_slot = np.zeros(len(self.group_cells), dtype=bool)
        for slot, count in zip(slots[naming].tolist(), counts[naming].tolist()):
            was_primary = self.group_cells[slot, 0] == cell
            lost = self._repair(t, slot, count)
            exposed_slot[slot] = was_primary
            lost_slot[slot] = was_primary and lost
            self.totals["affected"] += count
        exposed = alive[exposed_slot[self.flow_group[alive]]]
        unseeded = self.flow_ready[exposed] > t  # promoted, its seed not complete (or no mirror)
        lost = lost_slot[self.flow_group[exposed]] | unseeded
        self.totals["lost_unseeded"] += int((unseeded & ~lost_slot[self.flow_group[exposed]]).sum())
        flows = self.flows
        remaining = flows.packets[exposed] - self.curves.at("packets", exposed, t - flows.start[exposed])
        self.at_risk[exposed] = True
        self.totals["risk_flows"] += len(exposed)
        self.totals["risk_packets"] += float(remaining.sum())
        self.totals["safe_flows"] += int((~lost).sum())
        self.totals["safe_packets"] += float(remaining[~lost].sum())
        self.totals["lost"] += int(lost.sum())
        self.live_end[exposed[lost]] = t

    def _cell_up(self, t: float, cell_id: str, alive: np.ndarray) -> None:
        self.down.discard(cell_id)
        self.down_mask[self.index[cell_id]] = False
        slots, counts = np.unique(self.flow_group[alive], return_counts=True)
        short = (self.group_cells[slots, 1:] >= 0).sum(axis=1) < self.group_target[slots]
        for slot, count in zip(slots[short].tolist(), counts[short].tolist()):
            self._repair(t, slot, count)

    def _repair(self, t: float, slot: int, flows_in_group: int) -> bool:
        """``plan_repair`` one group, as the controller does; True if its flows' state is lost."""
        state = self.table.get(slot + PROFILE_GROUP_BASE)
        repair = plan_repair(state.profile, state.target_rf, tuple(state.pending), self.down, (), self.ring)
        if repair is None:
            return True
        if repair.profile != state.profile:
            self.table.rewrite(state.group_id, repair.profile)
            self._set_cells(slot, repair.profile)
            self.totals["rewritten"] += 1
        source = repair.profile.primary_cell
        state.pending = {m: state.pending.get(m, PendingSeed(source, t)) for m in repair.pending}
        if repair.added and not repair.state_lost:
            self.totals["seeded_flows"] += flows_in_group * len(repair.added)
            heapq.heappush(self.seeds, (t + self.settings.seed_time_s, slot, tuple(repair.added)))
        return repair.state_lost

    # --- measurements --------------------------------------------------------------------------
    def _sample(self, alive: np.ndarray) -> None:
        if not len(alive):
            return
        cells = self.group_cells[self.flow_group[alive]]
        n = len(self.cells)
        primaries = np.bincount(cells[:, 0][cells[:, 0] >= 0], minlength=n).astype(float)
        replicas = cells[:, 1:][cells[:, 1:] >= 0]
        replicas = np.bincount(replicas, minlength=n).astype(float)
        live = np.array([c not in self.down for c in self.cells])
        held = primaries + replicas
        self.cell_held += (primaries, replicas)
        self.balance.append((_max_mean(primaries[live]), _max_mean(replicas[live]),
                             _max_mean(held[live]), float(held[live].mean())))  # fmt: skip
        self.peak_flows = max(self.peak_flows, len(alive))
        self.peak_groups = max(self.peak_groups, len(np.unique(self.flow_group[alive])))

    def _report(self) -> PolicyReport:
        flows, totals = self.flows, self.totals
        packets, nbytes = float(flows.packets.sum()), float(max(flows.nbytes.sum(), 1))
        settings = self.settings
        cost = judge(self.curves, self.decisions, settings.costs)
        replication = float(cost.smm_bytes.sum()) + totals["seeded_flows"] * settings.seed_bytes_per_flow
        balance = np.array(self.balance) if self.balance else np.full((1, 4), np.nan)
        failures = max(totals["failures"], 1)
        return PolicyReport(
            policy=self.name,
            flows=len(flows),
            failures=totals["failures"],
            flows_mirrored=float(cost.mirrored.mean()),
            packets_mirrored=float(cost.copies.sum() / packets),
            bytes_mirrored=float(cost.copy_bytes.sum() / nbytes),
            replication_bytes=replication / nbytes,
            at_risk_flows=totals["risk_flows"],
            at_risk_packets=totals["risk_packets"],
            flows_protected=_share(totals["safe_flows"], totals["risk_flows"]),
            packets_protected=_share(totals["safe_packets"], totals["risk_packets"]),
            lost_flows=totals["lost"],
            unplaced_flows=totals["unplaced"],
            primaries_max_mean=_mean(balance[:, 0]),
            replicas_max_mean=_mean(balance[:, 1]),
            held_max_mean=_mean(balance[:, 2]),
            flows_held_per_cell=_mean(balance[:, 3]),
            peak_alive_flows=self.peak_flows,
            peak_groups=self.peak_groups,
            profiles_used=len(self.profiles_seen),
            groups_rewritten_per_failure=totals["rewritten"] / failures,
            flows_affected_per_failure=totals["affected"] / failures,
            ofmsgs_per_failure=OFMSGS_PER_GROUP_REWRITE * totals["rewritten"] / failures,
            cell_primaries=tuple((self.cell_held[0] / max(len(self.balance), 1)).tolist()),
            cell_replicas=tuple((self.cell_held[1] / max(len(self.balance), 1)).tolist()),
            flows_promoted=float(cost.promoted.mean()),
            lost_unseeded=totals["lost_unseeded"],
        )


def _max_mean(values: np.ndarray) -> float:
    mean = float(values.mean()) if len(values) else 0.0
    return float(values.max()) / mean if mean > 0 else float("nan")


def _mean(values: np.ndarray) -> float:
    """Mean of the values that are not NaN (NaN if none)."""
    values = values[~np.isnan(values)]
    return float(values.mean()) if len(values) else float("nan")


def _share(part: float, whole: float) -> float:
    return float(part) / float(whole) if whole else float("nan")
