"""Replication policies judged the way the elephant-flow literature asks: protection at equal cost.

A cell fails at a time drawn uniformly over the trace. A flow is at risk if
it is alive at that instant; its state survives if a mirror holds it
(replication factor >= 1; >= 2 for a double failure that takes the primary
and its first mirror). In expectation over the failure time:

- a flow of duration d is at risk with probability proportional to d, so the
  share of at-risk *flows* protected is ``sum(d, protected) / sum(d)``;
- with its p packets spread over d, the packets it still sends after the
  failure are proportional to p * d, so the share of at-risk *packets*
  protected is ``sum(p*d, protected) / sum(p*d)``.

The cost is the mirroring: copies sent per packet, ``sum(rf * p) / sum(p)``.
Durations are as observed (flows cut by the capture's end count with the part
that was seen). Flows are pooled as if their captures were one timeline.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

#: Shares of packets mirrored at which the ranked policies are compared by default.
DEFAULT_BUDGETS = (0.1, 0.25, 0.5)
_EPS = 1e-12


@dataclass(frozen=True)
class PolicyResult:
    """One row of the policy table.

    Attributes:
        policy: the policy's name.
        budget: target share of packets mirrored (ranked policies), else None.
        threshold: score from which a flow is mirrored, if the policy has one.
        flows_mirrored: share of flows given at least one mirror.
        packets_mirrored: mirror copies per packet (1.0: every packet once).
        flows_protected: share of at-risk flows whose state survives one cell failure.
        packets_protected: share of at-risk packets whose state survives one cell failure.
        packets_protected_2: the same for a double failure (primary and first mirror).
    """

    policy: str
    budget: Optional[float]
    threshold: Optional[float]
    flows_mirrored: float
    packets_mirrored: float
    flows_protected: float
    packets_protected: float
    packets_protected_2: float

    def as_dict(self) -> dict:
        """Plain values for JSON."""
        return asdict(self)


class _Risk:
    """Per-flow weights of one trace."""

    def __init__(self, duration_s: np.ndarray, packets: np.ndarray):
        self.duration = np.asarray(duration_s, dtype=float)
        self.packets = np.asarray(packets, dtype=float)
        self.flow_weight = self.duration
        self.packet_weight = self.duration * self.packets
        self.total_flow = max(self.flow_weight.sum(), _EPS)
        self.total_packet = max(self.packet_weight.sum(), _EPS)
        self.total_packets = max(self.packets.sum(), _EPS)


def _result(risk: _Risk, name: str, share: np.ndarray, factor: np.ndarray,
            budget=None, threshold=None) -> PolicyResult:  # fmt: skip
    """``share``: fraction of each flow mirrored (0..1, fractional for ties); ``factor``: its rf."""
    return PolicyResult(
        policy=name,
        budget=budget,
        threshold=threshold,
        flows_mirrored=float((share * (factor >= 1)).mean()) if len(share) else 0.0,
        packets_mirrored=float((share * factor * risk.packets).sum() / risk.total_packets),
        flows_protected=float((share * (factor >= 1) * risk.flow_weight).sum() / risk.total_flow),
        packets_protected=float((share * (factor >= 1) * risk.packet_weight).sum() / risk.total_packet),
        packets_protected_2=float((share * (factor >= 2) * risk.packet_weight).sum() / risk.total_packet),
    )


def fixed_policy(duration_s, packets, replication_factor: int, name: str) -> PolicyResult:
    """Every flow gets ``replication_factor`` mirrors."""
    risk = _Risk(duration_s, packets)
    ones = np.ones(len(risk.duration))
    return _result(risk, name, ones, ones * replication_factor)


def random_policy(budget: float, name: str = "random") -> PolicyResult:
    """Mirror (rf 1) a random share of flows: in expectation every share equals the budget."""
    return PolicyResult(name, budget, None, budget, budget, budget, budget, 0.0)


def ranked_policy(duration_s, packets, scores, budget: float, name: str) -> PolicyResult:
    """Mirror (rf 1) the highest-scored flows until ``budget`` of the packets are mirrored.

    Flows with equal scores are taken as a block; the block that crosses the
    budget is mirrored in part (its expected value under a random choice
    within the tie), so that every policy spends exactly the budget.
    """
    risk = _Risk(duration_s, packets)
    scores = np.asarray(scores, dtype=float)
    order = np.argsort(-scores, kind="stable")
    sorted_scores = scores[order]
    # Blocks of equal score, best first.
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    block_packets = np.add.reduceat(risk.packets[order], starts) if len(order) else np.array([])
    allowed = budget * risk.total_packets
    before = np.r_[0.0, np.cumsum(block_packets)[:-1]]
    block_share = np.clip((allowed - before) / np.maximum(block_packets, _EPS), 0.0, 1.0)
    share_sorted = np.repeat(block_share, np.diff(np.r_[starts, len(order)]))
    share = np.empty(len(order))
    share[order] = share_sorted
    taken = np.flatnonzero(block_share > 0)
    threshold = float(sorted_scores[starts[taken[-1]]]) if len(taken) else None
    return _result(risk, name, share, np.ones(len(order)), budget, threshold)


def threshold_policy(duration_s, packets, scores, threshold: float, name: str) -> PolicyResult:
    """Mirror (rf 1) every flow scored at or above ``threshold`` (what the controller does)."""
    risk = _Risk(duration_s, packets)
    share = (np.asarray(scores, dtype=float) >= threshold).astype(float)
    return _result(risk, name, share, np.ones(len(share)), None, threshold)


def policy_table(
    frame: pd.DataFrame,
    scores: Mapping[str, np.ndarray],
    budgets: Sequence[float] = DEFAULT_BUDGETS,
    thresholds: Sequence[Tuple[str, str, float]] = (),
) -> List[PolicyResult]:
    """The full comparison: none, fixed rf 1 and 2, and at each budget random,
    every scored policy and the oracle; then the controller's own thresholds.

    Args:
        frame: flow records (``duration_s``, ``packets``).
        scores: policy name -> one score per flow (higher: mirror first).
        budgets: shares of packets mirrored to compare at.
        thresholds: ``(label, score name, threshold)`` rows for ``threshold_policy``
            (the operating points stored in a model manifest), applied to
            ``scores[score name]``.

    Returns:
        Rows in table order.
    """
    duration = frame["duration_s"].to_numpy(dtype=float)
    packets = frame["packets"].to_numpy(dtype=float)
    rows = [
        fixed_policy(duration, packets, 0, "none"),
        fixed_policy(duration, packets, 1, "fixed rf1"),
        fixed_policy(duration, packets, 2, "fixed rf2"),
    ]
    for budget in budgets:
        rows.append(random_policy(budget))
        for name, values in scores.items():
            rows.append(ranked_policy(duration, packets, values, budget, name))
        # The oracle knows durations: mirroring by duration maximises p*d per packet mirrored.
        rows.append(ranked_policy(duration, packets, duration, budget, "oracle"))
    for label, name, threshold in thresholds:
        rows.append(threshold_policy(duration, packets, scores[name], threshold, label))
    return rows


def format_table(rows: Iterable[PolicyResult]) -> str:
    """A Markdown table of policy rows (shares in percent)."""
    lines = [
        "| policy | budget | flows mirrored | mirror copies / packet | at-risk flows protected "
        "| at-risk packets protected | packets protected, 2 failures |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        budget = "" if row.budget is None else f"{row.budget:.0%}"
        lines.append(
            f"| {row.policy} | {budget} | {row.flows_mirrored:.1%} | {row.packets_mirrored:.2f} "
            f"| {row.flows_protected:.1%} | {row.packets_protected:.1%} | {row.packets_protected_2:.1%} |"
        )
    return "\n".join(lines)


def at_risk_summary(frame: pd.DataFrame) -> Dict[str, float]:
    """How concentrated the risk is: flows, and the share of risk in the longest 10% of flows."""
    duration = frame["duration_s"].to_numpy(dtype=float)
    packets = frame["packets"].to_numpy(dtype=float)
    risk = _Risk(duration, packets)
    top = np.argsort(-duration)[: max(1, len(duration) // 10)]
    return {
        "flows": int(len(frame)),
        "flows_with_duration": int((duration > 0).sum()),
        "packets": int(packets.sum()),
        "risk_share_longest_10pct_flows": float(risk.packet_weight[top].sum() / risk.total_packet),
    }
