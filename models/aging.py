"""The aging model's training rows and labels: one row per flow and milestone the controller asks about.

The controller re-decides a flow at each of the policy's milestones M while it
still holds the flow (before its FSC entries idle out, one idle timeout after
its last packet), with the packets and bytes its primary cell counted so far
(``prism.policy.aging``). Training rows are those same questions, made from
flow records' milestone columns by ``prism.policy.aging_features.aging_row``, the
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
from typing import Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from prism.policy.aging_features import AGING_FEATURE_NAMES, aging_row, port_class, proto_class
from prism.policy.aging import DEFAULT_MILESTONES_S
from prism.telemetry.records import END_CAPTURE, milestone_column

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


# --- training -----------------------------------------------------------------------------
#: Few shallow trees: a re-decision walks about a hundred nodes. The counters are noisy and
#: the sources differ; a larger leaf minimum keeps the trees from learning one capture.
HGB_AGING_PARAMS = dict(
    max_iter=30, learning_rate=0.2, max_leaf_nodes=8, max_depth=3, min_samples_leaf=80,
    l2_regularization=1.0, early_stopping=False,
)  # fmt: skip
DEFAULT_TEST_SHARE = 0.25


@dataclass(frozen=True)
class AgingTrainConfig:
    """Aging-model training settings (stored in the manifest).

    Attributes:
        milestones_s: The milestones the rows are made at (the policy's).
        horizon_s: How much longer a flow must live to count as alive.
        idle_timeout_s: How long the director holds a flow after its last packet.
        quiet_rows: Train on rows of flows quiet since the previous milestone too.
        drop_features: Feature names left out (constant in training: the trees never split on them).
        test_share: Share of capture files held out (per source) for the manifest's metrics.
        seed: Random seed of the split and the models.
    """

    milestones_s: Tuple[float, ...] = DEFAULT_MILESTONES_S
    horizon_s: float = DEFAULT_AGING_HORIZON_S
    idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S
    quiet_rows: bool = False
    drop_features: Tuple[str, ...] = ()
    test_share: float = DEFAULT_TEST_SHARE
    seed: int = 0


def _masked(X: np.ndarray, drop: Sequence[str]) -> np.ndarray:
    """``X`` with the dropped features' columns constant (0): no tree splits on them, so the
    policy's full rows give the same predictions whatever those columns hold."""
    if not drop:
        return X
    X = X.copy()
    X[:, [AGING_FEATURE_NAMES.index(name) for name in drop]] = 0.0
    return X


def fit_aging(rows: AgingRows, config: AgingTrainConfig) -> dict:
    """Fit the aging estimators on ``rows`` (each on the rows whose label is known)."""
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
    from threadpoolctl import threadpool_limits

    X = _masked(rows.X, config.drop_features)
    known_alive, known_packets = ~np.isnan(rows.alive), ~np.isnan(rows.log_remaining_packets)
    if len(np.unique(rows.alive[known_alive])) < 2:
        raise ValueError("the training rows need flows that live on and flows that end")
    with threadpool_limits(limits=1, user_api="openmp"):
        alive = HistGradientBoostingClassifier(random_state=config.seed, **HGB_AGING_PARAMS)
        alive.fit(X[known_alive], rows.alive[known_alive].astype(int))
        remaining = HistGradientBoostingRegressor(random_state=config.seed, **HGB_AGING_PARAMS)
        remaining.fit(X[known_packets], rows.log_remaining_packets[known_packets])
    return {"alive": alive, "remaining_packets": remaining}


def alive_metrics(estimators: dict, rows: AgingRows, config: AgingTrainConfig) -> dict:
    """ROC AUC of the model's P(alive) and of the age alone on labelled rows (None: one class only)."""
    from sklearn.metrics import roc_auc_score

    known = ~np.isnan(rows.alive)
    y = rows.alive[known]
    out = {"rows": int(known.sum()), "alive_share": float(y.mean()) if len(y) else None}
    if len(np.unique(y)) < 2:
        return {**out, "alive_roc_auc": None, "age_only_roc_auc": None}
    p = estimators["alive"].predict_proba(_masked(rows.X[known], config.drop_features))[:, 1]
    return {**out, "alive_roc_auc": float(roc_auc_score(y, p)),
            "age_only_roc_auc": float(roc_auc_score(y, rows.X[known, 0]))}  # fmt: skip


@dataclass
class AgingTrainResult:
    """The fitted aging model, its held-out rows and metrics."""

    config: AgingTrainConfig
    estimators: dict
    rows: AgingRows
    test: np.ndarray  #: held-out rows (whole capture files)
    metrics: dict
    frame: pd.DataFrame

    def manifest(self) -> dict:
        """The training facts for the model manifest (``models.artifact.save_model``, kind aging)."""
        from prism.telemetry.records import records_digest

        from models.artifact import probe_rows_json
        from prism.telemetry.training_groups import training_groups_facts

        test_flows = np.unique(self.rows.flow[self.test])
        train_groups = sorted(set(self.rows.group[~self.test].tolist()))
        return {
            "horizon_s": self.config.horizon_s,
            "milestones_s": list(self.config.milestones_s),
            "idle_timeout_s": self.config.idle_timeout_s,
            "quiet_rows": self.config.quiet_rows,
            "drop_features": list(self.config.drop_features),
            "seed": self.config.seed,
            "training_data": {
                "digest": records_digest(self.frame),
                "flows": int(len(self.frame)),
                "rows": int(len(self.rows)),
                "train_rows": int((~self.test).sum()),
                "test_rows": int(self.test.sum()),
                "test_flows": int(len(test_flows)),
                **training_groups_facts(self.frame, train_groups),
                "test_groups": sorted(set(self.rows.group[self.test].tolist())),
                "sources": sorted(set(self.rows.source.tolist())),
                "interpolated_rows": int(self.rows.interpolated.sum()),
            },
            "metrics_heldout": self.metrics,
            "probe_rows": probe_rows_json(self.rows.X[self.test] if self.test.any() else self.rows.X),
        }


def train_aging(frame: pd.DataFrame, config: Optional[AgingTrainConfig] = None,
                hold_out: bool = True) -> AgingTrainResult:  # fmt: skip
    """Fit the aging model on flow records.

    Args:
        frame: Flow records.
        config: Settings (default ``AgingTrainConfig()``).
        hold_out: Hold out ``test_share`` of the capture files (per source) and fit on the
            rest, so that the manifest's metrics describe the model; False fits on everything
            (the metrics then come from the same held-out split, fitted apart).
    """
    from models.train import split_by_group

    config = config or AgingTrainConfig()
    frame = frame.reset_index(drop=True)
    rows = aging_rows(frame, config.milestones_s, config.horizon_s, config.idle_timeout_s,
                      quiet_rows=config.quiet_rows)  # fmt: skip
    if not len(rows):
        raise ValueError("no flow lives to a milestone: nothing to train on")
    test_flow = split_by_group(frame, config.test_share, config.seed)
    test = test_flow[rows.flow]
    held_out = fit_aging(rows.take(~test), config) if test.any() and (~test).any() else None
    metrics = alive_metrics(held_out, rows.take(test), config) if held_out is not None else {}
    estimators = held_out if hold_out and held_out is not None else fit_aging(rows, config)
    return AgingTrainResult(config, estimators, rows, test, metrics, frame)
