"""One simulated run: flow records, cells and failures in, every policy's report out, and its tables."""

from __future__ import annotations

from typing import Callable, Dict, Iterable, List, Optional, Sequence

import pandas as pd

from prism.sim.evaluation import Decisions, FlowCurves
from prism.placement.ring import HashRing
from prism.sim.policies import (
    ALL_POLICIES,
    CONTROLLER,
    DEFAULT_BUDGET,
    FIXED_POLICIES,
    MODEL_POLICIES,
    NONE,
    ORACLE,
    RANDOM_BUDGET,
    ControllerReplay,
    PolicyError,
    Stage,
    model_decisions,
    oracle_decisions,
    random_decisions,
)
from prism.sim.schedule import FailureSchedule
from prism.sim.flows import Flows, live_ranks
from prism.sim.engine import PolicyReport, SimSettings, simulate_policy

CELL_ID_FORMAT = "c{:02d}"


def cell_ids(n_cells: int) -> List[str]:
    """``c00``, ``c01``, ... (ids sort like their numbers up to 100 cells)."""
    if n_cells < 1:
        raise ValueError(f"at least one cell is needed, not {n_cells}")
    return [CELL_ID_FORMAT.format(i) for i in range(n_cells)]


def replay_frame(frame: pd.DataFrame, exclude_groups: Iterable[str] = (), pooled: bool = True) -> pd.DataFrame:
    """Flow records ready to replay: some captures left out, optionally each moved to start at 0, sorted by start.

    Args:
        frame: flow records.
        exclude_groups: groups (capture files) to leave out, e.g. the model's training captures.
        pooled: move every group to start at time 0 (captures taken years apart
            replay as if they had run together, as ``prism.sim.evaluation`` pools them).
    """
    excluded = set(exclude_groups)
    if excluded:
        frame = frame[~frame["group"].isin(excluded)]
    if pooled and len(frame):
        first = frame.groupby("group", observed=True)["ts_start"].transform("min")
        frame = frame.assign(ts_start=frame["ts_start"] - first)
    return frame.sort_values("ts_start", kind="stable").reset_index(drop=True)


def _no_progress(_name: str, _total: int) -> Callable[[int], None]:
    return lambda _done: None


def run_policies(
    frame: pd.DataFrame,
    cells: Sequence[str],
    schedule: FailureSchedule,
    policies: Iterable[str] = ALL_POLICIES,
    predictor=None,
    budget: float = DEFAULT_BUDGET,
    seed: int = 0,
    settings: SimSettings = SimSettings(),
    stage: Optional[Stage] = None,
    controller: Optional[ControllerReplay] = None,
    budget_mode: str = "full",
) -> List[PolicyReport]:
    """Simulate each policy on the same flows, cells and failures.

    Args:
        frame: flow records sorted by ``ts_start``.
        cells: cell ids.
        schedule: the failures (absolute times, like ``ts_start``).
        policies: names from ``prism.sim.policies.ALL_POLICIES``.
        predictor: a ``models.predictor.Predictor`` (needed by the model policies).
        budget: mirror copies per packet the budgeted policies may spend.
        seed: seed of the random policy.
        settings: simulator knobs.
        stage: progress reporting (see ``Stage``).
        controller: flow records -> the controller's decision timeline
            (``models.controller_row.controller_replay``); needed by ``controller``.
        budget_mode: mode of the budgeted birth policies (random, ranked, oracle).

    Returns:
        One report per policy, in ``ALL_POLICIES`` order.

    Raises:
        PolicyError: an unknown policy, a model policy without a predictor, the
            controller row without its replay.
        SimulationError: flows the simulator cannot run.
    """
    stage = stage or _no_progress
    names = [name for name in ALL_POLICIES if name in set(policies)]
    unknown = sorted(set(policies) - set(ALL_POLICIES))
    if unknown:
        raise PolicyError(f"unknown policy {', '.join(unknown)}; choose from {', '.join(ALL_POLICIES)}")
    if predictor is None and any(name in MODEL_POLICIES for name in names):
        raise PolicyError("the predictive policies need a model (--model DIR)")
    if controller is None and CONTROLLER in names:
        raise PolicyError("the controller row needs the controller's replay (a configuration, --config FILE)")
    flows = Flows.from_frame(frame)
    curves = FlowCurves.from_frame(frame)
    ring = HashRing(cells)
    decided: Dict[str, Decisions] = {}
    if CONTROLLER in names:
        done = stage("controller replay", len(flows))
        decided[CONTROLLER] = Decisions.of(controller(frame), len(flows))
        done(len(flows))
    decided.update({name: Decisions.fixed(len(flows), rf, mode)
                    for name, (rf, mode) in FIXED_POLICIES.items() if name in names})  # fmt: skip
    if RANDOM_BUDGET in names:
        decided[RANDOM_BUDGET] = random_decisions(curves, budget, seed, budget_mode, settings.costs)
    if any(name in MODEL_POLICIES for name in names):
        decided.update(model_decisions(names, frame, curves, predictor, budget, stage))
    most = max([int(d.replication_factor.max(initial=0)) for d in decided.values()] + [1])
    redecides = any(len(d.flow) > len(flows) for d in decided.values())
    depth = min(len(cells), 1 + most + (1 if redecides else 0))
    ranks = live_ranks(ring, flows, schedule, depth, stage("placement", len(flows)))
    events = len(schedule.events()) + len(schedule.failures) + settings.samples
    reports: Dict[str, PolicyReport] = {}
    if ORACLE in names and NONE not in decided:
        decided[NONE] = Decisions.fixed(len(flows), 0)
    order = sorted(decided, key=lambda name: name != NONE)  # the oracle needs "none" first
    at_risk = None
    for name in order + ([ORACLE] if ORACLE in names else []):
        if name == ORACLE:
            decided[ORACLE] = oracle_decisions(at_risk, budget_mode)
        report, risk = simulate_policy(name, decided[name], flows, ranks, ring, schedule, settings,
                                       stage(name, events), curves)  # fmt: skip
        if name == NONE:
            at_risk = risk
        reports[name] = report
    return [reports[name] for name in names]


def format_table(reports: Iterable[PolicyReport]) -> str:
    """The policy table (Markdown): protection against cost."""
    lines = [
        "| policy | flows mirrored | promoted | mirror copies / packet | replication bytes / traffic "
        "| at-risk flows protected | at-risk packets protected | flows lost | of which unseeded |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in reports:
        lines.append(
            f"| {r.policy} | {r.flows_mirrored:.1%} | {r.flows_promoted:.1%} | {r.packets_mirrored:.3f} "
            f"| {r.replication_bytes:.4f} | {_pct(r.flows_protected)} | {_pct(r.packets_protected)} "
            f"| {r.lost_flows:,} | {r.lost_unseeded:,} |"
        )
    return "\n".join(lines)


def format_balance(reports: Iterable[PolicyReport]) -> str:
    """Per-cell state balance and group-table size (Markdown)."""
    lines = [
        "| policy | primaries max/mean | replicas max/mean | held max/mean | flows held / cell "
        "| peak alive flows | peak groups | profiles used | groups rewritten / failure | flows in them |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in reports:
        lines.append(
            f"| {r.policy} | {r.primaries_max_mean:.2f} | {_ratio(r.replicas_max_mean)} | {r.held_max_mean:.2f} "
            f"| {r.flows_held_per_cell:,.0f} | {r.peak_alive_flows:,} | {r.peak_groups:,} | {r.profiles_used:,} "
            f"| {r.groups_rewritten_per_failure:,.1f} | {r.flows_affected_per_failure:,.1f} |"
        )
    return "\n".join(lines)


def _pct(value: float) -> str:
    return "n/a" if value != value else f"{value:.1%}"


def _ratio(value: float) -> str:
    return "-" if value != value else f"{value:.2f}"
