"""The simulator's policies as decision timelines (``prism.sim.evaluation.Decisions``), judged by the one engine.

- ``controller``: what the shipped configuration makes the controller do,
  flow by flow (``models.replay.replay_decisions`` driving the configured
  policy object; ``models.controller_row`` builds it); it may promote,
  demote or change a flow's mode as the flow ages.
- ``none``, ``fixed rf1``, ``fixed rf2``: every flow gets 0, 1 or 2 mirrors
  in ``full`` mode (``prism.policy.base.FixedPolicy``); ``fixed rf1 state``: one
  mirror in ``state`` mode.
- ``random @ budget``: random flows mirrored at birth until the budget is
  spent (``prism.sim.evaluation.fill_budget`` over scores drawn with the seed).
- ``predictive``: what the controller's first-packet policy
  (``prism.policy.predictive``, configuration ``prediction.policy:
  first_packet``) does with no failure history (every cell equally healthy:
  no risk boost, one mirror): each flow's score is the SPE's predicted
  duration, and the ``PredictionEngine``'s ``BudgetTracker`` decides, flow by
  flow in start order, whether it is mirrored; it starts from the model's
  training threshold and re-fits its line on the flows that ended (each
  reported one idle timeout after its last packet), so that mirror copies per
  packet track the budget. Scores come from the model
  (``models.predictor.Predictor.replay_durations``: the values the
  controller's single-flow path computes). Not simulated: the policy's move of a mirror off
  a cell holding 1.5x the mean mirror load.
- ``predictive, training threshold``: the model manifest's threshold for the
  budget kept fixed.
- ``predictive, ranked``: the best-scored flows until the budget is spent,
  knowing every score in advance (``prism.sim.evaluation.fill_budget``: a flow
  that does not fit is skipped for smaller ones): a bound, not a policy a
  controller can run.
- ``oracle``: knows the future: one mirror from birth for exactly the flows
  that a failure hits (those at risk under ``none``), none for the others.

The budgeted birth policies (random, ranked, oracle) mirror in
``budget_mode`` (``full`` by default, the first-packet policy's mode).
"""

from __future__ import annotations

from typing import Callable, Dict, Optional

import numpy as np
import pandas as pd

from prism.sim.evaluation import Decisions, EvalSettings, FlowCurves, birth_copies, fill_budget

CONTROLLER = "controller"
NONE = "none"
FIXED_RF1 = "fixed rf1"
FIXED_RF2 = "fixed rf2"
FIXED_RF1_STATE = "fixed rf1 state"
RANDOM_BUDGET = "random @ budget"
PREDICTIVE = "predictive"
PREDICTIVE_THRESHOLD = "predictive, training threshold"
PREDICTIVE_RANKED = "predictive, ranked"
ORACLE = "oracle"
ALL_POLICIES = (CONTROLLER, NONE, FIXED_RF1, FIXED_RF2, FIXED_RF1_STATE, RANDOM_BUDGET, PREDICTIVE,
                PREDICTIVE_THRESHOLD, PREDICTIVE_RANKED, ORACLE)  # fmt: skip
MODEL_POLICIES = (PREDICTIVE, PREDICTIVE_THRESHOLD, PREDICTIVE_RANKED)
#: Policies that decide once, at birth, with a fixed factor and mode.
FIXED_POLICIES = {NONE: (0, "full"), FIXED_RF1: (1, "full"), FIXED_RF2: (2, "full"), FIXED_RF1_STATE: (1, "state")}
DEFAULT_BUDGET = 0.25

#: ``stage(name, total)`` returns a function called with units done (``prism.sim.run.Stage``).
Stage = Callable[[str, int], Callable[[int], None]]
#: Flow records -> the controller's decision timeline (``models.replay.DecisionTimeline``).
ControllerReplay = Callable[[pd.DataFrame], object]


class PolicyError(ValueError):
    """A policy that cannot be computed as asked; the message says what to change."""


def budget_decisions(curves: FlowCurves, scores, budget: float, mode: str = "full",
                     settings: EvalSettings = EvalSettings()) -> Decisions:  # fmt: skip
    """One mirror at birth for the best-scored flows until ``budget`` copies per packet are spent."""
    if not 0.0 <= budget:
        raise PolicyError(f"the budget is mirror copies per packet, >= 0, not {budget}")
    chosen = fill_budget(scores, birth_copies(curves, mode, settings), budget * curves.packets.sum())
    return Decisions.at_birth(chosen, mode)


def random_decisions(curves: FlowCurves, budget: float, seed: int, mode: str = "full",
                     settings: EvalSettings = EvalSettings()) -> Decisions:  # fmt: skip
    """One mirror at birth for random flows until ``budget`` copies per packet are spent."""
    scores = np.random.default_rng(seed).random(len(curves))
    return budget_decisions(curves, scores, budget, mode, settings)


def oracle_decisions(at_risk_without_mirrors: np.ndarray, mode: str = "full") -> Decisions:
    """One mirror from birth for exactly the flows a failure hits."""
    return Decisions.at_birth(np.asarray(at_risk_without_mirrors, dtype=bool).astype(np.int8), mode)


def online_factors(frame: pd.DataFrame, scores: np.ndarray, predictor, budget: float) -> np.ndarray:
    """The first-packet policy's budget decisions, flow by flow (see the module docstring).

    Args:
        frame: flow records sorted by start.
        scores: each flow's score (predicted duration, >= 0).
        predictor: the loaded model (its training threshold and report delay).
        budget: mirror copies per packet to spend.
    """
    from prism.policy.budget import BudgetSettings
    from prism.policy.predictive import PredictionEngine

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


def model_decisions(
    names, frame: pd.DataFrame, curves: FlowCurves, predictor, budget: float, stage: Optional[Stage] = None,
) -> Dict[str, Decisions]:  # fmt: skip
    """Decisions of the model policies in ``names`` (all from one prediction pass; full mode, at birth).

    Raises:
        PolicyError: no budget, or no threshold in the model for the training-threshold policy.
    """
    from prism.policy.predictive import initial_threshold

    wanted = [name for name in names if name in MODEL_POLICIES]
    if not wanted:
        return {}
    scores = np.maximum(predictor.replay_durations(frame, stage), 0.0)
    out: Dict[str, Decisions] = {}
    if PREDICTIVE in wanted:
        out[PREDICTIVE] = Decisions.at_birth(online_factors(frame, scores, predictor, budget))
    if PREDICTIVE_THRESHOLD in wanted:
        threshold = initial_threshold(predictor, budget)
        if threshold is None:
            raise PolicyError(f"the model {predictor.directory} has no calibrated threshold")
        out[PREDICTIVE_THRESHOLD] = Decisions.at_birth((scores >= threshold).astype(np.int8))
    if PREDICTIVE_RANKED in wanted:
        out[PREDICTIVE_RANKED] = budget_decisions(curves, scores, budget)
    return out
