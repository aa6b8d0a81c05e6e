"""The simulator's policies as a replication factor per flow, the predictive ones through the controller's code.

- ``none``, ``fixed rf1``, ``fixed rf2``: every flow gets 0, 1 or 2 mirrors
  (``prism.policy.FixedPolicy``).
- ``predictive``: what the controller's ``prism.policy_predictive`` does with
  no failure history (every cell equally healthy: no risk boost, one mirror):
  each flow's score is the SPE's predicted duration, and the
  ``PredictionEngine``'s ``BudgetTracker`` decides, flow by flow in start
  order, whether it is mirrored; it starts from the model's training
  threshold and re-fits its line on the flows that ended (each reported one
  idle timeout after its last packet), so that mirror copies per packet
  track the budget. Scores come from ``models.features.replay_features``
  (``flow_features`` over a ``FlowHistory``, outcomes learnt when a
  controller learns them) and ``Predictor.predict_batch`` in chunks: the
  values the controller's single-flow path computes. Not simulated: the
  policy's move of a mirror off a cell holding 1.5x the mean mirror load.
- ``predictive, training threshold``: the model manifest's threshold for the
  budget kept fixed (``models.evaluation.threshold_policy``).
- ``predictive, ranked``: the best-scored flows until the budget is spent,
  knowing every score in advance: a bound, not a policy a controller can run.
- ``random @ budget``: random flows until the budget is spent.
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
RANDOM_BUDGET = "random @ budget"
PREDICTIVE = "predictive"
PREDICTIVE_THRESHOLD = "predictive, training threshold"
PREDICTIVE_RANKED = "predictive, ranked"
ORACLE = "oracle"
ALL_POLICIES = (NONE, FIXED_RF1, FIXED_RF2, RANDOM_BUDGET, PREDICTIVE, PREDICTIVE_THRESHOLD,
                PREDICTIVE_RANKED, ORACLE)  # fmt: skip
MODEL_POLICIES = (PREDICTIVE, PREDICTIVE_THRESHOLD, PREDICTIVE_RANKED)
FIXED_FACTORS = {NONE: 0, FIXED_RF1: 1, FIXED_RF2: 2}
DEFAULT_BUDGET = 0.25
PREDICT_CHUNK = 50_000  #: rows per batched predictor call (bounds its temporary arrays)

#: ``stage(name, total)`` returns a function called with units done (``prism.sim_run.Stage``).
Stage = Callable[[str, int], Callable[[int], None]]


class PolicyError(ValueError):
    """A policy that cannot be computed as asked; the message says what to change."""


def fixed_factors(n_flows: int, replication_factor: int) -> np.ndarray:
    """Every flow gets ``replication_factor`` mirrors."""
    return np.full(n_flows, replication_factor, dtype=np.int8)


def predicted_durations(frame: pd.DataFrame, predictor, stage: Optional[Stage] = None) -> np.ndarray:
    """The SPE's expected duration (s) of every flow, with the features a controller would have seen.

    Args:
        frame: flow records sorted by start (``prism.records`` columns).
        predictor: a loaded ``models.predictor.Predictor``.
        stage: progress reporting, ``stage(name, total)`` -> update function
            (``prism.sim_run.Stage``): a "features" stage, then a "predict" one.
    """
    from models.estimator import DURATION
    from models.features import replay_features

    report_delay_s = float(predictor.manifest.get("report_delay_s", 0.0))
    done = stage("features", len(frame)) if stage is not None else None
    features = replay_features(frame, predictor.horizon_s, report_delay_s)
    if done is not None:
        done(len(frame))
    progress = stage("predict", len(frame)) if stage is not None else None
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


def online_factors(frame: pd.DataFrame, scores: np.ndarray, predictor, budget: float) -> np.ndarray:
    """The controller's budget decisions, flow by flow (see the module docstring).

    Args:
        frame: flow records sorted by start.
        scores: each flow's score (predicted duration, >= 0).
        predictor: the loaded model (its training threshold and report delay).
        budget: mirror copies per packet to spend.
    """
    from prism.budget import BudgetSettings
    from prism.policy_predictive import PredictionEngine

    if not budget > 0:
        raise PolicyError(f"the predictive policy needs a budget above 0, not {budget}")
    tracker = PredictionEngine(predictor, BudgetSettings(budget)).tracker
    delay = float(predictor.manifest.get("report_delay_s", 0.0))
    start = frame["ts_start"].to_numpy(dtype=np.float64)
    reported = start + frame["duration_s"].to_numpy(dtype=np.float64) + delay
    report_order = np.argsort(reported, kind="stable").tolist()
    reported, packets = reported.tolist(), frame["packets"].to_numpy().tolist()
    score_of, flow_ids = scores.tolist(), frame["flow_id"].to_numpy(dtype=np.uint64).tolist()
    out = np.zeros(len(frame), dtype=np.int8)
    done = 0
    for flow, (now, score, flow_id) in enumerate(zip(start.tolist(), score_of, flow_ids)):
        while done < len(report_order) and reported[report_order[done]] <= now:
            ended = report_order[done]
            tracker.observe(score_of[ended], packets[ended], int(out[ended]))
            done += 1
        out[flow] = tracker.mirrors(score, flow_id)
    return out


def model_factors(
    names, frame: pd.DataFrame, predictor, budget: float, stage: Optional[Stage] = None
) -> Dict[str, np.ndarray]:
    """Replication factors of the model policies in ``names`` (all from one prediction pass).

    Raises:
        PolicyError: no budget, or no threshold in the model for the training-threshold policy.
    """
    from prism.policy_predictive import initial_threshold

    wanted = [name for name in names if name in MODEL_POLICIES]
    if not wanted:
        return {}
    scores = np.maximum(predicted_durations(frame, predictor, stage), 0.0)
    out: Dict[str, np.ndarray] = {}
    if PREDICTIVE in wanted:
        out[PREDICTIVE] = online_factors(frame, scores, predictor, budget)
    if PREDICTIVE_THRESHOLD in wanted:
        threshold = initial_threshold(predictor, budget)
        if threshold is None:
            raise PolicyError(f"the model {predictor.directory} has no calibrated threshold")
        out[PREDICTIVE_THRESHOLD] = threshold_factors(scores, threshold)
    if PREDICTIVE_RANKED in wanted:
        out[PREDICTIVE_RANKED] = budget_factors(scores, frame["packets"].to_numpy(), budget)
    return out
