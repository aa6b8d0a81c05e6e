"""Training the SPE from flow records: labels, the split by capture, fitting, held-out metrics.

``prism train`` and ``notebooks/01_train_spe.ipynb`` both call ``train``; the
notebook then plots what it returns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    log_loss,
    mean_absolute_error,
    r2_score,
    roc_auc_score,
)
from sklearn.model_selection import GroupKFold, GroupShuffleSplit
from threadpoolctl import threadpool_limits

from prism.trace.flowmeter import DEFAULT_IDLE_TIMEOUT_S
from prism.telemetry.records import END_CAPTURE, records_digest
from prism.telemetry.training_groups import training_groups_facts

from models.artifact import probe_rows_json
from models.estimator import (
    ALIVE,
    BASELINE_ALIVE,
    BASELINE_DURATION,
    BASELINE_OF,
    BYTES,
    DURATION,
    PACKETS,
    TARGETS,
    make_models,
)
from models.evaluation import DEFAULT_BUDGETS, PolicyResult, policy_table, ranked_policy
from models.features import replay_features

#: The takeover horizon H in seconds. A cell failure that is not a link-down
#: (a dead process) is found by missed heartbeats; at 3 missed heartbeats of
#: 0.5 s plus the group rewrite, another cell takes the flow over about 2 s
#: after the failure. A flow that ends sooner never needs its state elsewhere.
#: In the shipped data, 2 s splits flows into a minority that lives longer
#: (12% of nDPI flows, 47% of Argus flows) carrying most packets.
DEFAULT_HORIZON_S = 2.0
DEFAULT_TEST_SHARE = 0.25
#: Folds of the cross-validation on training captures that calibrates the thresholds.
CALIBRATION_FOLDS = 5
#: Names of the ranked policies in tables.
PREDICTIVE = "predictive (HGB)"
BASELINE = "baseline (port mean)"


@dataclass(frozen=True)
class TrainConfig:
    """Training settings (all stored in the model manifest).

    Attributes:
        horizon_s: the takeover horizon H.
        report_delay_s: delay from a flow's last packet to its report (the switch's
            idle timeout), after which its outcome enters the history features.
        test_share: share of capture files held out per data source.
        seed: random seed of the split and the models.
        budgets: shares of packets mirrored at which thresholds are calibrated.
    """

    horizon_s: float = DEFAULT_HORIZON_S
    report_delay_s: float = DEFAULT_IDLE_TIMEOUT_S
    test_share: float = DEFAULT_TEST_SHARE
    seed: int = 0
    budgets: Sequence[float] = DEFAULT_BUDGETS


@dataclass
class Dataset:
    """Flow records with their features and labels (NaN: unknown label)."""

    frame: pd.DataFrame
    X: np.ndarray
    alive: np.ndarray  #: 1.0 alive after H, 0.0 not, NaN unknown (cut by the capture end)
    log_duration: np.ndarray  #: log1p(duration_s), NaN where ``alive`` is unknown
    log_packets: np.ndarray  #: log1p(packets), NaN when the flow was cut by the capture end
    log_bytes: np.ndarray

    def target(self, name: str) -> np.ndarray:
        """The label array of a model (or its baseline) by name."""
        name = next((t for t, b in BASELINE_OF.items() if b == name), name)
        return {ALIVE: self.alive, DURATION: self.log_duration,
                PACKETS: self.log_packets, BYTES: self.log_bytes}[name]  # fmt: skip

    def weight(self, name: str) -> Optional[np.ndarray]:
        """Training weights of a model: packets for the duration models, else none.

        The policy ranks flows by predicted duration and protects packets, so
        the duration model is fitted where the packets are.
        """
        if name in (DURATION, BASELINE_DURATION):
            return self.frame["packets"].to_numpy(dtype=float)
        return None


@dataclass
class TrainResult:
    """What ``train`` produced: fitted models, the split, metrics and operating points."""

    config: TrainConfig
    estimators: Dict[str, object]
    data: Dataset
    test_mask: np.ndarray
    metrics: Dict[str, Dict[str, float]]
    thresholds: Dict[str, float]
    policies: List[PolicyResult]
    test_scores: Dict[str, np.ndarray] = field(default_factory=dict)

    def manifest(self) -> dict:
        """The training facts for the model manifest."""
        frame, test = self.data.frame, self.test_mask
        return {
            "horizon_s": self.config.horizon_s,
            "report_delay_s": self.config.report_delay_s,
            "seed": self.config.seed,
            "training_data": {
                "digest": records_digest(frame),
                "flows": int(len(frame)),
                "train_flows": int((~test).sum()),
                "test_flows": int(test.sum()),
                **training_groups_facts(frame, frame.loc[~test, "group"].unique().tolist()),
                "test_groups": sorted(frame.loc[test, "group"].unique().tolist()),
            },
            "metrics_heldout": self.metrics,
            "probe_rows": probe_rows_json(self.data.X[test]),
            "thresholds": {f"{b:g}": t for b, t in self.thresholds.items()},
            "policies_heldout": [row.as_dict() for row in self.policies],
        }


def build_dataset(frame: pd.DataFrame, config: TrainConfig) -> Dataset:
    """Features (replayed as the controller would see them) and labels of flow records."""
    frame = frame.reset_index(drop=True)
    X = replay_features(frame, config.horizon_s, config.report_delay_s)
    duration = frame["duration_s"].to_numpy(dtype=float)
    censored = (frame["end_reason"] == END_CAPTURE).to_numpy()
    alive = (duration > config.horizon_s).astype(float)
    alive[censored & (duration <= config.horizon_s)] = np.nan
    log_duration = np.log1p(duration)
    log_duration[np.isnan(alive)] = np.nan
    log_packets = np.log1p(frame["packets"].to_numpy(dtype=float))
    log_bytes = np.log1p(frame["bytes"].to_numpy(dtype=float))
    log_packets[censored] = np.nan
    log_bytes[censored] = np.nan
    return Dataset(frame, X, alive, log_duration, log_packets, log_bytes)


def split_by_group(frame: pd.DataFrame, test_share: float, seed: int) -> np.ndarray:
    """Hold out ``test_share`` of the capture files of each source; True marks test rows.

    Splitting per source keeps both packet captures and Argus files on each
    side; splitting by group (never by row) keeps flows of one capture, which
    share hosts and history, on one side.
    """
    test = np.zeros(len(frame), dtype=bool)
    for _source, index in frame.groupby("source").indices.items():
        groups = frame["group"].to_numpy()[index]
        if len(np.unique(groups)) < 2:
            continue
        splitter = GroupShuffleSplit(n_splits=1, test_size=test_share, random_state=seed)
        _train_idx, test_idx = next(splitter.split(index, groups=groups))
        test[index[test_idx]] = True
    return test


def fittable(X: np.ndarray) -> np.ndarray:
    """``X`` with every all-missing column set to 0 (HistGradientBoosting cannot bin a column
    without values; a constant one is never split on, so NaN rows predict the same later).
    Argus records, for one, carry no first-packet size or flags."""
    empty = np.isnan(X).all(axis=0)
    if not empty.any():
        return X
    X = X.copy()
    X[:, empty] = 0.0
    return X


def fit_models(data: Dataset, rows: np.ndarray, seed: int) -> Dict[str, object]:
    """Fit every model on the given rows, each on the rows whose label is known."""
    models = make_models(seed)
    for name, model in models.items():
        y = data.target(name)
        known = rows & ~np.isnan(y)
        labels = y[known].astype(int) if name in (ALIVE, BASELINE_ALIVE) else y[known]
        weight = data.weight(name)
        model.fit(fittable(data.X[known]), labels, sample_weight=None if weight is None else weight[known])
    return models


def policy_scores(models: Mapping[str, object], X: np.ndarray) -> Dict[str, np.ndarray]:
    """Ranking scores of the predictive policy and of the baseline: predicted duration (s)."""
    return {
        PREDICTIVE: np.expm1(models[DURATION].predict(X)),
        BASELINE: np.expm1(models[BASELINE_DURATION].predict(X)),
    }


def heldout_metrics(models: Mapping[str, object], data: Dataset, rows: np.ndarray) -> Dict[str, Dict[str, float]]:
    """Classification and regression metrics of both models on the given rows."""
    metrics: Dict[str, Dict[str, float]] = {}
    known = rows & ~np.isnan(data.alive)
    y = data.alive[known].astype(int)
    for label, names in {"hgb": TARGETS, "baseline": tuple(BASELINE_OF[t] for t in TARGETS)}.items():
        alive_name = names[0]
        entry: Dict[str, float] = {"flows_labelled": int(known.sum()), "alive_share": float(y.mean())}
        p = np.clip(models[alive_name].predict_proba(data.X[known])[:, 1], 1e-6, 1 - 1e-6)
        if len(np.unique(y)) == 2:
            entry["alive_roc_auc"] = float(roc_auc_score(y, p))
            entry["alive_average_precision"] = float(average_precision_score(y, p))
            entry["alive_log_loss"] = float(log_loss(y, p, labels=[0, 1]))
        entry["alive_brier"] = float(brier_score_loss(y, p))
        for target, name in zip(TARGETS[1:], names[1:]):
            values = data.target(target)
            ok = rows & ~np.isnan(values)
            if not ok.any():
                continue
            predicted = models[name].predict(data.X[ok])
            weight = data.weight(target)
            # The duration models are fitted per packet, so they are judged per packet too.
            suffix, weight = ("_per_packet", weight[ok]) if weight is not None else ("", None)
            entry[f"{target}_mae_log{suffix}"] = float(
                mean_absolute_error(values[ok], predicted, sample_weight=weight)
            )
            entry[f"{target}_r2_log{suffix}"] = float(r2_score(values[ok], predicted, sample_weight=weight))
        metrics[label] = entry
    return metrics


def calibrate_thresholds(data: Dataset, train_rows: np.ndarray, config: TrainConfig) -> Dict[float, float]:
    """Thresholds on the predictive score (predicted duration, s) that spend each budget.

    Scores come from a grouped cross-validation over the training captures
    (each flow scored by a model that did not see its capture), so the
    thresholds are not those of an overfitted model.
    """
    index = np.flatnonzero(train_rows)
    groups = data.frame["group"].to_numpy()[index]
    folds = min(CALIBRATION_FOLDS, len(np.unique(groups)))
    scores = np.full(len(index), np.nan)
    y, weight = data.target(DURATION), data.weight(DURATION)
    if folds < 2:
        return {}
    for fit_idx, score_idx in GroupKFold(n_splits=folds).split(index, groups=groups):
        rows = np.zeros(len(data.frame), dtype=bool)
        rows[index[fit_idx]] = True
        known = rows & ~np.isnan(y)
        model = make_models(config.seed)[DURATION]
        model.fit(fittable(data.X[known]), y[known], sample_weight=weight[known])
        scores[score_idx] = np.expm1(model.predict(data.X[index[score_idx]]))
    frame = data.frame.iloc[index]
    duration, packets = frame["duration_s"].to_numpy(), frame["packets"].to_numpy()
    thresholds = {}
    for budget in config.budgets:
        row = ranked_policy(duration, packets, scores, budget, "calibration")
        if row.threshold is not None:
            thresholds[float(budget)] = float(row.threshold)
    return thresholds


def train(frame: pd.DataFrame, config: Optional[TrainConfig] = None) -> TrainResult:
    """Fit the SPE on flow records and measure it on held-out capture files.

    Args:
        frame: flow records (``prism.telemetry.records`` schema), e.g. from ``read_records``.
        config: settings; defaults to ``TrainConfig()``.

    Returns:
        The fitted models (trained on the training captures only, so that
        the stored held-out metrics describe the shipped model), the split,
        held-out metrics of the gradient-boosted model and the baseline, the
        calibrated thresholds and the held-out policy table.
    """
    config = config or TrainConfig()
    # One OpenMP thread: on a small shared machine HistGradientBoosting's
    # thread barriers cost far more than they save (results are identical).
    with threadpool_limits(limits=1, user_api="openmp"):
        return _train(frame, config)


def _train(frame: pd.DataFrame, config: TrainConfig) -> TrainResult:
    data = build_dataset(frame, config)
    test = split_by_group(data.frame, config.test_share, config.seed)
    if test.all() or not test.any():
        raise ValueError("need flows from at least two capture files to hold some out")
    models = fit_models(data, ~test, config.seed)
    metrics = heldout_metrics(models, data, test)
    thresholds = calibrate_thresholds(data, ~test, config)
    scores = policy_scores(models, data.X[test])
    policies = policy_table(data.frame[test], scores, config.budgets)
    return TrainResult(config, models, data, test, metrics, thresholds, policies, scores)
