"""The SPE's estimators: the gradient-boosted models and a per-service-port baseline.

``make_models`` builds the four HistGradientBoosting models: alive after the
horizon; log duration (weighted by packets in training: the replication
policy ranks flows by it, and what it protects is packets); log packets; log
bytes. ``ServicePortRate`` / ``ServicePortMean``
are the baseline: the average outcome of earlier flows to the same
(protocol, service port), backing off to the service class and then to all
flows when a port was seldom seen. All follow scikit-learn's conventions:
``__init__`` stores parameters, ``fit`` returns self, fitted attributes end in
``_``, ``predict`` checks that the estimator is fitted.
"""

from __future__ import annotations

from typing import Dict

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.utils.validation import check_is_fitted, validate_data

from prism.policy.features import FEATURE_NAMES

_PROTO = FEATURE_NAMES.index("proto")
_PORT = FEATURE_NAMES.index("service_port")
_SERVICE = FEATURE_NAMES.index("service_class")
PORT_KEY_BASE = 1 << 16  #: key of (proto, port) = proto * PORT_KEY_BASE + port

# Model names inside an artifact.
ALIVE = "alive"  #: classifier: P(flow still alive after the horizon)
DURATION = "duration"  #: regressor of log1p(duration_s): the policy's ranking score
PACKETS = "packets"  #: regressor of log1p(packets)
BYTES = "bytes"  #: regressor of log1p(bytes)
BASELINE_ALIVE = "baseline_alive"
BASELINE_DURATION = "baseline_duration"
BASELINE_PACKETS = "baseline_packets"
BASELINE_BYTES = "baseline_bytes"
TARGETS = (ALIVE, DURATION, PACKETS, BYTES)
#: Model name -> its baseline.
BASELINE_OF = {
    ALIVE: BASELINE_ALIVE, DURATION: BASELINE_DURATION,
    PACKETS: BASELINE_PACKETS, BYTES: BASELINE_BYTES,
}  # fmt: skip

#: Gradient-boosting settings: few shallow trees, so that one flow's
#: prediction is about a hundred node visits in ``models.predictor``. On the
#: shipped data (grouped 5-fold cross-validation) 60 trees of depth 4 were
#: no better at equal mirroring budget than 30 (differences within the noise
#: of a few long flows), and 150 trees of depth 6 gained 0.005 ROC AUC.
HGB_SCORE_PARAMS = dict(
    max_iter=30, learning_rate=0.25, max_leaf_nodes=12, max_depth=4, min_samples_leaf=40,
    l2_regularization=1.0, early_stopping=False,
)  # fmt: skip
#: The packets and bytes estimates are for budget accounting: fewer trees.
HGB_VOLUME_PARAMS = dict(HGB_SCORE_PARAMS, max_iter=20, learning_rate=0.35)


def make_models(random_state: int = 0) -> Dict[str, BaseEstimator]:
    """Unfitted models by name: the three gradient-boosted ones and their baselines."""
    return {
        ALIVE: HistGradientBoostingClassifier(random_state=random_state, **HGB_SCORE_PARAMS),
        DURATION: HistGradientBoostingRegressor(random_state=random_state, **HGB_SCORE_PARAMS),
        PACKETS: HistGradientBoostingRegressor(random_state=random_state, **HGB_VOLUME_PARAMS),
        BYTES: HistGradientBoostingRegressor(random_state=random_state, **HGB_VOLUME_PARAMS),
        BASELINE_ALIVE: ServicePortRate(),
        BASELINE_DURATION: ServicePortMean(),
        BASELINE_PACKETS: ServicePortMean(),
        BASELINE_BYTES: ServicePortMean(),
    }


class _ServicePortAverage(BaseEstimator):
    """Smoothed average of y per (proto, service port) -> per service class -> overall."""

    def __init__(self, smoothing: float = 5.0, min_flows: int = 3):
        self.smoothing = smoothing
        self.min_flows = min_flows

    def fit(self, X, y, sample_weight=None):
        """Learn the averages (weighted by ``sample_weight`` if given). Returns self."""
        X, y = validate_data(self, X, y, ensure_all_finite="allow-nan", y_numeric=True)
        if X.shape[1] != len(FEATURE_NAMES):
            raise ValueError(f"expected {len(FEATURE_NAMES)} feature columns, got {X.shape[1]}")
        y = y.astype(float)
        weight = np.ones(len(y)) if sample_weight is None else np.asarray(sample_weight, dtype=float)
        self.prior_ = float(np.average(y, weights=weight))
        services = X[:, _SERVICE].astype(np.int64)
        self.service_means_ = self._smoothed(services, y, weight, {})
        ports = _port_keys(X)
        port_service = dict(zip(ports.tolist(), services.tolist()))
        port_prior = {key: self.service_means_.get(s, self.prior_) for key, s in port_service.items()}
        self.port_means_ = self._smoothed(ports, y, weight, port_prior)
        return self

    def _smoothed(self, keys: np.ndarray, y: np.ndarray, weight: np.ndarray, priors: dict) -> dict:
        """Per key: (sum w*y + smoothing * prior) / (sum w + smoothing), weights scaled to mean 1."""
        weight = weight / max(weight.mean(), 1e-12)
        uniques, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
        weight_sums = np.bincount(inverse, weights=weight)
        value_sums = np.bincount(inverse, weights=weight * y)
        means = {}
        for key, count, w_sum, v_sum in zip(uniques.tolist(), counts, weight_sums, value_sums):
            if count < self.min_flows:
                continue
            base = priors.get(key, self.prior_)
            means[key] = float((v_sum + self.smoothing * base) / (w_sum + self.smoothing))
        return means

    def _average(self, X) -> np.ndarray:
        check_is_fitted(self, "port_means_")
        X = validate_data(self, X, reset=False, ensure_all_finite="allow-nan")
        out = np.empty(len(X))
        for i, (key, service) in enumerate(zip(_port_keys(X), X[:, _SERVICE].astype(np.int64))):
            value = self.port_means_.get(int(key))
            if value is None:
                value = self.service_means_.get(int(service), self.prior_)
            out[i] = value
        return out


def _port_keys(X: np.ndarray) -> np.ndarray:
    return X[:, _PROTO].astype(np.int64) * PORT_KEY_BASE + X[:, _PORT].astype(np.int64)


class ServicePortRate(ClassifierMixin, _ServicePortAverage):
    """Baseline classifier: P(alive) = smoothed share of alive flows of the same service port.

    Args:
        smoothing: pseudo-count pulling a port's rate toward its service class's.
        min_flows: ports with fewer training flows use their service class's rate.
    """

    def fit(self, X, y, sample_weight=None):
        """Learn the rates; ``y`` is 0/1. Returns self."""
        super().fit(X, y, sample_weight)
        self.classes_ = np.array([0, 1])
        return self

    def predict_proba(self, X) -> np.ndarray:
        """Columns: P(not alive), P(alive)."""
        alive = self._average(X)
        return np.column_stack([1.0 - alive, alive])

    def predict(self, X) -> np.ndarray:
        """1 where P(alive) >= 0.5."""
        return (self.predict_proba(X)[:, 1] >= 0.5).astype(int)


class ServicePortMean(RegressorMixin, _ServicePortAverage):
    """Baseline regressor: the smoothed mean target of the same service port.

    Args:
        smoothing: pseudo-count pulling a port's mean toward its service class's.
        min_flows: ports with fewer training flows use their service class's mean.
    """

    def predict(self, X) -> np.ndarray:
        """The mean target of each row's service port."""
        return self._average(X)
