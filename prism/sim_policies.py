"""The simulator's policies as a replication factor per flow, the predictive one through the shipped SPE.

- ``none``, ``fixed rf1``, ``fixed rf2``: every flow gets 0, 1 or 2 mirrors
  (``prism.policy.FixedPolicy``).
- ``predictive``: the controller's rule with the model's own operating point:
  one mirror when the SPE's predicted duration reaches the threshold the model
  manifest calibrated for the mirroring budget (``Predictor.threshold_for``),
  as ``models.evaluation.threshold_policy`` does. Features come from
  ``models.features.replay_features`` (``flow_features`` over a
  ``FlowHistory``, flow outcomes learnt one idle timeout after a flow ends,
  exactly as the controller learns them), predictions from
  ``Predictor.predict_batch`` in chunks.
- ``predictive @ budget``: the same predictions ranked, the best ones mirrored
  until the budget (share of packets) is spent on this population: the
  predictive policy at equal budget with ``random @ budget``.
- ``oracle``: knows the future: one mirror for exactly the flows that a
  failure hits (those at risk under ``none``), none for the others.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional

import numpy as np
import pandas as pd

NONE = "none"
FIXED_RF1 = "fixed rf1"
FIXED_RF2 = "fixed rf2"
PREDICTIVE = "predictive"
PREDICTIVE_BUDGET = "predictive @ budget"
RANDOM_BUDGET = "random @ budget"
ORACLE = "oracle"
ALL_POLICIES = (NONE, FIXED_RF1, FIXED_RF2, PREDICTIVE, PREDICTIVE_BUDGET, RANDOM_BUDGET, ORACLE)
MODEL_POLICIES = (PREDICTIVE, PREDICTIVE_BUDGET)
FIXED_FACTORS = {NONE: 0, FIXED_RF1: 1, FIXED_RF2: 2}
DEFAULT_BUDGET = 0.25
PREDICT_CHUNK = 50_000  #: rows per batched predictor call (bounds its temporary arrays)


class PolicyError(ValueError):
    """A policy that cannot be computed as asked; the message says what to change."""


def fixed_factors(n_flows: int, replication_factor: int) -> np.ndarray:
    """Every flow gets ``replication_factor`` mirrors."""
    return np.full(n_flows, replication_factor, dtype=np.int8)


def predicted_durations(frame: pd.DataFrame, predictor, progress: Optional[Callable[[int], None]] = None) -> np.ndarray:
    """The SPE's expected duration (s) of every flow, with the features a controller would have seen.

    Args:
        frame: flow records sorted by start (``prism.records`` columns).
        predictor: a loaded ``models.predictor.Predictor``.
        progress: called with the rows predicted, chunk by chunk.
    """
    from models.estimator import DURATION
    from models.features import replay_features

    report_delay_s = float(predictor.manifest.get("report_delay_s", 0.0))
    features = replay_features(frame, predictor.horizon_s, report_delay_s)
    out = np.empty(len(frame), dtype=np.float64)
    for start in range(0, len(frame), PREDICT_CHUNK):
        stop = start + PREDICT_CHUNK
        out[start:stop] = predictor.predict_batch(features[start:stop])[DURATION]
        if progress is not None:
            progress(len(out[start:stop]))
    return out


def threshold_factors(scores: np.ndarray, threshold: float) -> np.ndarray:
    """One mirror for the flows scored at or above ``threshold``."""
    return (np.asarray(scores) >= threshold).astype(np.int8)


def budget_factors(scores: np.ndarray, packets: np.ndarray, budget: float) -> np.ndarray:
    """One mirror for the best-scored flows whose packets still fit in ``budget`` of all packets.

    Flows are taken best score first (ties in flow order); a flow that does not
    fit in what is left is skipped and the next ones are tried, so that one
    elephant does not leave the budget unspent.
    """
    if not 0.0 <= budget <= 1.0:
        raise PolicyError(f"the budget is a share of packets in 0..1, not {budget}")
    packets = np.asarray(packets, dtype=np.int64)
    order = np.argsort(-np.asarray(scores, dtype=float), kind="stable")
    left = int(budget * packets.sum())
    out = np.zeros(len(order), dtype=np.int8)
    smallest = int(packets.min()) if len(packets) else 0
    for flow, size in zip(order.tolist(), packets[order].tolist()):
        if left < smallest:
            break
        if size <= left:
            out[flow] = 1
            left -= size
    return out


def random_factors(packets: np.ndarray, budget: float, seed: int) -> np.ndarray:
    """One mirror for random flows until ``budget`` of the packets is spent."""
    scores = np.random.default_rng(seed).random(len(packets))
    return budget_factors(scores, packets, budget)


def oracle_factors(at_risk_without_mirrors: np.ndarray) -> np.ndarray:
    """One mirror for exactly the flows a failure hits."""
    return np.asarray(at_risk_without_mirrors, dtype=bool).astype(np.int8)


def model_factors(
    names, frame: pd.DataFrame, predictor, budget: float, progress: Optional[Callable[[int], None]] = None
) -> Dict[str, np.ndarray]:
    """Replication factors of the model policies in ``names`` (both from one prediction pass).

    Raises:
        PolicyError: the model has no threshold for a budget this small.
    """
    wanted = [name for name in names if name in MODEL_POLICIES]
    if not wanted:
        return {}
    durations = predicted_durations(frame, predictor, progress)
    out: Dict[str, np.ndarray] = {}
    if PREDICTIVE in wanted:
        threshold = predictor.threshold_for(budget)
        if threshold is None:
            calibrated = ", ".join(sorted(predictor.manifest.get("thresholds", {}))) or "none"
            raise PolicyError(f"the model has no threshold for a budget of {budget:g} or less "
                              f"(calibrated budgets: {calibrated}); pass a larger --budget")  # fmt: skip
        out[PREDICTIVE] = threshold_factors(durations, threshold)
    if PREDICTIVE_BUDGET in wanted:
        out[PREDICTIVE_BUDGET] = budget_factors(durations, frame["packets"].to_numpy(), budget)
    return out
