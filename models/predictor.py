"""Fast per-flow inference for the controller: ``Predictor.load(dir)``, ``predict_one``, ``predict_batch``.

scikit-learn's HistGradientBoosting ``predict`` costs a few hundred
microseconds for one row (input validation and thread setup dominate). At
load, ``CompactEnsemble`` copies the fitted trees into flat Python lists and
walks them in a tight loop, which gives the same numbers (checked at load
against scikit-learn on probe rows) in tens of microseconds. Batches walk the
same trees level by level with numpy, all trees at once: no OpenMP threads,
whose barriers make scikit-learn's predict slow on a busy two-core machine.

The load-time check runs on the manifest's ``probe_rows`` (real held-out
feature rows, so that the walk reaches the thresholds real flows reach), each
also with one column missing in turn (the trees' missing-value routes), and a
model whose compact walker disagrees with scikit-learn on any of them is
refused. ``Predictor.load`` returns an ``AgingPredictor`` for an ``aging`` model
(``prism.policy.aging``'s scorer), a ``Predictor`` for a ``first_packet`` one.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
from threadpoolctl import threadpool_limits

from models.artifact import KIND_AGING, LoadedModel, ModelError, load_model, model_kind
from models.estimator import ALIVE, BYTES, DURATION, PACKETS
from prism.policy.features import FEATURE_NAMES

PROBE_TOLERANCE = 1e-9
PREDICT_CHUNK = 50_000  #: rows per batched call of ``replay_durations`` (bounds its temporary arrays)
REMAINING_PACKETS = "remaining_packets"
_LEAF = -1


class Prediction(NamedTuple):
    """What the SPE says about one flow."""

    alive: float  #: probability the flow is alive after the horizon
    duration_s: float  #: expected duration (the policy's ranking score)
    packets: float  #: expected packets (both directions)
    bytes: float  #: expected bytes


class CompactEnsemble:
    """A fitted HistGradientBoosting model's trees as flat lists, evaluated in pure Python.

    Args:
        estimator: a fitted HistGradientBoostingClassifier (binary) or Regressor
            without categorical splits.

    Raises:
        ModelError: the estimator is of an unsupported shape.
    """

    def __init__(self, estimator):
        predictors = getattr(estimator, "_predictors", None)
        if not predictors or any(len(per_iter) != 1 for per_iter in predictors):
            raise ModelError("only binary classifiers and single-output regressors can be compiled")
        baseline = np.asarray(estimator._baseline_prediction, dtype=float).ravel()
        self.baseline = float(baseline[0])
        self.roots: List[int] = []
        feature: List[int] = []
        threshold: List[float] = []
        missing_left: List[bool] = []
        left: List[int] = []
        right: List[int] = []
        value: List[float] = []
        for (tree,) in predictors:
            nodes = tree.nodes
            if nodes["is_categorical"].any():
                raise ModelError("categorical splits are not supported by the compact predictor")
            offset = len(feature)
            self.roots.append(offset)
            for node in nodes:
                leaf = bool(node["is_leaf"])
                feature.append(_LEAF if leaf else int(node["feature_idx"]))
                threshold.append(float(node["num_threshold"]))
                missing_left.append(bool(node["missing_go_to_left"]))
                left.append(offset + int(node["left"]))
                right.append(offset + int(node["right"]))
                value.append(float(node["value"]))
        self.feature, self.threshold, self.missing_left = feature, threshold, missing_left
        self.left, self.right, self.value = left, right, value
        self.is_classifier = hasattr(estimator, "classes_")
        self.max_depth = int(max(tree.nodes["depth"].max() for (tree,) in predictors))
        # The same trees as arrays, for evaluating many rows at once.
        self._np_roots = np.array(self.roots, dtype=np.int64)
        self._np_feature = np.array(feature, dtype=np.int64)
        self._np_threshold = np.array(threshold, dtype=float)
        self._np_missing_left = np.array(missing_left, dtype=bool)
        self._np_left = np.array(left, dtype=np.int64)
        self._np_right = np.array(right, dtype=np.int64)
        self._np_value = np.array(value, dtype=float)

    @property
    def n_trees(self) -> int:
        """Number of trees."""
        return len(self.roots)

    def raw(self, x: Sequence[float]) -> float:
        """The ensemble's raw score for one row (log-odds, or the regression value)."""
        feature, threshold, missing_left = self.feature, self.threshold, self.missing_left
        left, right, value = self.left, self.right, self.value
        total = self.baseline
        for node in self.roots:
            f = feature[node]
            while f >= 0:
                v = x[f]
                if v <= threshold[node] or (v != v and missing_left[node]):
                    node = left[node]
                else:
                    node = right[node]
                f = feature[node]
            total += value[node]
        return total

    def predict(self, x: Sequence[float]) -> float:
        """P(class 1) for a classifier, the regression value for a regressor."""
        raw = self.raw(x)
        if self.is_classifier:
            return 1.0 / (1.0 + math.exp(-raw)) if raw > -700 else 0.0
        return raw

    def raw_batch(self, X: np.ndarray) -> np.ndarray:
        """Raw scores of many rows: all trees step one level at a time, in numpy."""
        n_rows = len(X)
        node = np.broadcast_to(self._np_roots, (n_rows, len(self.roots))).copy()
        rows = np.arange(n_rows)[:, None]
        for _level in range(self.max_depth):
            feature = self._np_feature[node]
            inner = feature >= 0
            if not inner.any():
                break
            values = X[rows, np.where(inner, feature, 0)]
            go_left = (values <= self._np_threshold[node]) | (
                np.isnan(values) & self._np_missing_left[node]
            )
            step = np.where(go_left, self._np_left[node], self._np_right[node])
            node = np.where(inner, step, node)
        return self.baseline + self._np_value[node].sum(axis=1)

    def predict_batch(self, X: np.ndarray) -> np.ndarray:
        """``predict`` for many rows."""
        raw = self.raw_batch(X)
        if self.is_classifier:
            return 1.0 / (1.0 + np.exp(-np.clip(raw, -700, 700)))
        return raw


class _ModelView:
    """What every loaded model answers from its manifest: horizon, feature names, estimators."""

    def __init__(self, loaded: LoadedModel):
        self.manifest = loaded.manifest
        self.directory = loaded.directory
        self._estimators = loaded.estimators

    @property
    def horizon_s(self) -> float:
        """The horizon H (s): how much longer the model asks a flow to live."""
        return float(self.manifest["horizon_s"])

    @property
    def feature_names(self) -> Tuple[str, ...]:
        """Input columns, in order."""
        return tuple(self.manifest["feature_names"])

    @property
    def estimators(self) -> Dict[str, object]:
        """The loaded scikit-learn estimators by name (models and baselines)."""
        return dict(self._estimators)


class Predictor(_ModelView):
    """The SPE's inference API, for the director and the policy.

    Use ``Predictor.load(directory)``; the constructor takes a loaded model.
    """

    def __init__(self, loaded: LoadedModel):
        super().__init__(loaded)
        self._alive = CompactEnsemble(loaded.estimators[ALIVE])
        self._duration = CompactEnsemble(loaded.estimators[DURATION])
        self._packets = CompactEnsemble(loaded.estimators[PACKETS])
        self._bytes = CompactEnsemble(loaded.estimators[BYTES])
        self._check_against_sklearn()

    @classmethod
    def load(cls, directory):
        """Load and check a model directory (see ``models.artifact.load_model``).

        Returns:
            A ``Predictor`` (first_packet model) or an ``AgingPredictor`` (aging model).

        Raises:
            ModelError: the model is unusable; the message says why.
        """
        loaded = load_model(Path(directory))
        if model_kind(loaded.manifest) == KIND_AGING:
            return AgingPredictor(loaded)
        return Predictor(loaded)

    def threshold_for(self, budget: float) -> Optional[float]:
        """The predicted-duration threshold (s) calibrated on training data for a mirroring budget.

        Args:
            budget: share of packets to mirror.

        Returns:
            The threshold of the nearest calibrated budget not above ``budget``,
            or None if the manifest has none that small.
        """
        points = {float(k): v for k, v in self.manifest.get("thresholds", {}).items()}
        fitting = [b for b in points if b <= budget + 1e-12]
        return points[max(fitting)] if fitting else None

    def predict_one(self, features: Sequence[float]) -> Prediction:
        """Predict one flow from ``prism.policy.features.flow_features`` output."""
        return Prediction(
            self._alive.predict(features),
            math.expm1(self._duration.predict(features)),
            math.expm1(self._packets.predict(features)),
            math.expm1(self._bytes.predict(features)),
        )

    def predict_alive(self, features: Sequence[float]) -> float:
        """Only P(alive after the horizon) for one flow."""
        return self._alive.predict(features)

    def predict_duration(self, features: Sequence[float]) -> float:
        """Only the expected duration (s) for one flow: the policy's ranking score, its hot path."""
        return math.expm1(self._duration.predict(features))

    def predict_packets(self, features: Sequence[float]) -> float:
        """Only the expected packets (both directions) for one flow (the policy's cheap-flow rule)."""
        return math.expm1(self._packets.predict(features))

    def predict_batch(self, rows) -> Dict[str, np.ndarray]:
        """Predict many flows at once (numpy over all trees; no OpenMP threads).

        Args:
            rows: array-like (n_flows, n_features) of ``flow_features`` rows.

        Returns:
            ``{"alive": P(alive), "duration": expected seconds, "packets": expected
            packets, "bytes": expected bytes}``.
        """
        X = np.asarray(rows, dtype=float)
        if X.ndim != 2 or X.shape[1] != len(FEATURE_NAMES):
            raise ValueError(f"expected rows of {len(FEATURE_NAMES)} features, got shape {X.shape}")
        return {
            ALIVE: self._alive.predict_batch(X),
            DURATION: np.expm1(self._duration.predict_batch(X)),
            PACKETS: np.expm1(self._packets.predict_batch(X)),
            BYTES: np.expm1(self._bytes.predict_batch(X)),
        }

    def replay_durations(self, frame, stage=None) -> np.ndarray:
        """The expected duration (s) of every flow record, from the features a controller would have seen.

        Args:
            frame: flow records sorted by start (``prism.telemetry.records`` columns).
            stage: progress reporting, ``stage(name, total)`` -> update function
                (``prism.sim.run.Stage``): a "features" stage, then a "predict" one.
        """
        from models.features import replay_features

        done = stage("features", len(frame)) if stage is not None else None
        features = replay_features(frame, self.horizon_s, float(self.manifest.get("report_delay_s", 0.0)))
        if done is not None:
            done(len(frame))
        progress = stage("predict", len(frame)) if stage is not None else None
        out = np.empty(len(frame), dtype=np.float64)
        for start in range(0, len(frame), PREDICT_CHUNK):
            stop = start + PREDICT_CHUNK
            out[start:stop] = self.predict_batch(features[start:stop])[DURATION]
            if progress is not None:
                progress(len(out[start:stop]))
        return out

    def _check_against_sklearn(self) -> None:
        probe = probe_matrix(self.manifest)
        pairs = (
            (self._alive, lambda X: self._estimators[ALIVE].predict_proba(X)[:, 1]),
            (self._duration, self._estimators[DURATION].predict),
            (self._packets, self._estimators[PACKETS].predict),
            (self._bytes, self._estimators[BYTES].predict),
        )
        check_walkers(pairs, probe, self.directory)


def probe_matrix(manifest: dict) -> np.ndarray:
    """The manifest's probe rows, then each of them with one column missing in turn (NaN)."""
    rows = np.array([[np.nan if v is None else float(v) for v in row] for row in manifest["probe_rows"]], dtype=float)
    holes = rows.copy()
    holes[np.arange(len(rows)), np.arange(len(rows)) % rows.shape[1]] = np.nan
    return np.vstack([rows, holes])


def check_walkers(pairs, probe: np.ndarray, directory) -> None:
    """Refuse the model unless every compact ensemble gives scikit-learn's numbers on ``probe``.

    Args:
        pairs: ``(CompactEnsemble, sklearn prediction function)`` per model.
        probe: Rows to compare on.
        directory: The model directory (for the message).

    Raises:
        ModelError: a walker disagrees (single rows or the batch).
    """
    with threadpool_limits(limits=1, user_api="openmp"):
        for compact, sklearn_predict in pairs:
            expected = np.asarray(sklearn_predict(probe), dtype=float)
            got = np.array([compact.predict(row) for row in probe.tolist()])
            got_batch = compact.predict_batch(probe)
            if not (
                np.allclose(got, expected, rtol=0, atol=PROBE_TOLERANCE)
                and np.allclose(got_batch, expected, rtol=0, atol=PROBE_TOLERANCE)
            ):
                worst = max(np.max(np.abs(got - expected)), np.max(np.abs(got_batch - expected)))
                raise ModelError(
                    f"{directory}: the compact predictor disagrees with scikit-learn on the model's "
                    f"probe rows (max difference {worst:.3g}); this scikit-learn version stores trees "
                    "differently: retrain or use the pinned version"
                )


class AgingPredictor(_ModelView):
    """The aging model's inference for ``prism.policy.aging`` (an ``AliveScorer``).

    Use ``Predictor.load(directory)`` on an ``aging`` model; the constructor takes a loaded one.
    """

    def __init__(self, loaded: LoadedModel):
        super().__init__(loaded)
        self._alive = CompactEnsemble(loaded.estimators[ALIVE])
        self._remaining = CompactEnsemble(loaded.estimators[REMAINING_PACKETS])
        self.alive_probability = self._alive.predict  # the hot path: one bound method, no wrapper
        #: Trained on flows quiet since their previous milestone too: the policy may ask about them.
        self.scores_quiet_flows = bool(self.manifest.get("quiet_rows", False))
        check_walkers(((self._alive, lambda X: self._estimators[ALIVE].predict_proba(X)[:, 1]),
                       (self._remaining, self._estimators[REMAINING_PACKETS].predict)),
                      probe_matrix(self.manifest), self.directory)  # fmt: skip

    def remaining_packets(self, row: Sequence[float]) -> float:
        """Expected packets still to come (both directions) of a flow with this ``aging_row``."""
        return max(math.expm1(self._remaining.predict(row)), 0.0)

    def predict_batch(self, rows) -> Dict[str, np.ndarray]:
        """``{"alive": P(lives the horizon more), "remaining_packets": expected}`` for many rows."""
        X = np.asarray(rows, dtype=float)
        if X.ndim != 2 or X.shape[1] != len(self.feature_names):
            raise ValueError(f"expected rows of {len(self.feature_names)} features, got shape {X.shape}")
        return {ALIVE: self._alive.predict_batch(X),
                REMAINING_PACKETS: np.maximum(np.expm1(self._remaining.predict_batch(X)), 0.0)}  # fmt: skip
