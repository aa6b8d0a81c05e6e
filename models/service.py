"""The director's model service: loads the SPE model, builds each switch's predictive policy, reloads live.

``ModelService`` owns the shared ``PredictionEngine`` (model, feature history,
budget) of every switch's ``PredictivePolicy``. ``reload()`` loads the model
directory again (a retrained model written over the old one) with the
``run`` it is given (the Ryu shell passes a native thread, ``eventlet.tpool``; loading and checking a model takes a second or two
that the controller's green threads must not wait for) and swaps it in only
if it loads and passes its checks: a broken model file raises ``ModelError``
and the model in service stays.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, List, Optional

from models.artifact import ModelError
from prism.policy.budget import BudgetSettings
from prism.config.load import PrismConfig, SwitchConfig
from prism.policy.predictive import Health, PredictionEngine, PredictivePolicy
from prism.placement.ring import HashRing

__all__ = ["AgingService", "ModelError", "ModelService", "load_model", "run_here"]


def load_model(directory: str):
    """``models.predictor.Predictor.load`` (scikit-learn is imported only when a model is used)."""
    from models.predictor import Predictor

    return Predictor.load(directory)


def run_here(function: Callable, *args):
    """Run ``function(*args)`` in the caller's thread (the Ryu shell passes a native-thread runner)."""
    return function(*args)


class ModelService:
    """The model in service, the predictive policies that use it, and live reloads.

    Args:
        config: The configuration (its ``prediction`` section must be set).
        load: Loads a model directory (default ``Predictor.load``; raises ModelError).
        run: Runs the load (default: in a native thread).

    Raises:
        ModelError: the configured model cannot be used (the controller must not start with it).
    """

    def __init__(self, config: PrismConfig, load: Callable[[str], Any] = load_model,
                 run: Callable[..., Any] = run_here) -> None:  # fmt: skip
        if config.prediction is None:
            raise ValueError("the configuration has no prediction section")
        self.settings = config.prediction
        self.idle_timeout = config.idle_timeout
        self.max_replication_factor = config.max_replication_factor
        self.directory = self.settings.model
        self._load, self._run = load, run
        predictor = load(self.directory)
        self.engine = PredictionEngine(predictor, BudgetSettings(self.settings.budget))
        self.policies: List[PredictivePolicy] = []
        self.loaded_at = time.time()
        self.reloads = 0
        self.failed_reloads = 0
        self.last_error: Optional[str] = None

    def policy_for(self, switch: SwitchConfig, ring: HashRing) -> PredictivePolicy:
        """The predictive policy of one switch (its ring; the shared model, history and budget)."""
        max_rf = min(self.max_replication_factor, max(len(switch.cells) - 1, 0))
        policy = PredictivePolicy(ring, self.engine, max_rf, self.idle_timeout, self.settings.horizon_s,
                                  cheap_flow_packets=self.settings.cheap_flow_packets)  # fmt: skip
        self.policies.append(policy)
        return policy

    def attach_health(self, health: Health) -> None:
        """Give every policy the failure detector (it exists only once the directors do)."""
        for policy in self.policies:
            policy.health = health

    def reload(self) -> Dict[str, Any]:
        """Load the model directory again and serve it.

        Returns:
            ``{"model": <status of the new model>, "previous": <status of the old one>}``.

        Raises:
            ModelError: the directory's model is unusable; the previous model stays in service.
        """
        previous = self.status()
        try:
            predictor = self._run(self._load, self.directory)
        except ModelError as error:
            self.failed_reloads += 1
            self.last_error = str(error)
            raise
        self.engine.replace_predictor(predictor)
        self.loaded_at = time.time()
        self.reloads += 1
        self.last_error = None
        return {"model": self.status(), "previous": previous}

    def status(self) -> Dict[str, Any]:
        """What is in service, for the REST API: directory, digest, horizon, budget state."""
        predictor = self.engine.predictor
        manifest = getattr(predictor, "manifest", {}) or {}
        return {
            "directory": self.directory,
            "model_digest": manifest.get("model_digest"),
            "training_data_digest": manifest.get("training_data", {}).get("digest"),
            "horizon_s": predictor.horizon_s,
            "loaded_at": self.loaded_at,
            "reloads": self.reloads,
            "failed_reloads": self.failed_reloads,
            "last_error": self.last_error,
            "policy": self.engine.status(),
        }


class AgingService:
    """Every switch's aging policy (``prism.policy.aging``), sharing one copy budget and, if configured, a model.

    Without ``prediction.model`` the policies use the age rule (no model, no scikit-learn).
    With one, the model is loaded like the first-packet policy's and must answer
    ``alive_probability(row)`` (``prism.policy.aging.AliveScorer``); ``reload()``
    swaps it on every policy at once.

    Args:
        config: The configuration (its ``prediction`` section, ``policy: aging``).
        load: Loads a model directory (default ``Predictor.load``; raises ModelError).
        run: Runs a reload's load (default: in a native thread).

    Raises:
        ModelError: the configured model cannot be used.
    """

    def __init__(self, config: PrismConfig, load: Callable[[str], Any] = load_model,
                 run: Callable[..., Any] = run_here) -> None:  # fmt: skip
        from prism.policy.aging import CopyBudget, settings_from_config

        if config.prediction is None:
            raise ValueError("the configuration has no prediction section")
        self.settings = config.prediction
        self.max_replication_factor = config.max_replication_factor
        self.directory = self.settings.model
        self._load, self._run = load, run
        self.scorer = self._checked(load(self.directory)) if self.directory else None
        horizon = getattr(self.scorer, "horizon_s", None)
        self.aging = settings_from_config(self.settings, horizon)
        self.budget = CopyBudget.of(self.aging)
        self.policies: List[Any] = []
        self.loaded_at = time.time()
        self.reloads = 0
        self.failed_reloads = 0
        self.last_error: Optional[str] = None

    @staticmethod
    def _checked(scorer: Any) -> Any:
        if not callable(getattr(scorer, "alive_probability", None)):
            raise ModelError("the model cannot score live flows (no alive_probability): the aging policy needs "
                             "a model trained on flows' ages and counters (prism train), or none (the age rule)")
        return scorer

    def policy_for(self, switch: SwitchConfig, ring: HashRing):
        """The aging policy of one switch (its ring; the shared budget and model)."""
        from prism.policy.aging import AgingPolicy

        max_rf = min(self.max_replication_factor, max(len(switch.cells) - 1, 0))
        policy = AgingPolicy(ring, max_rf, self.aging, self.scorer, budget=self.budget)
        self.policies.append(policy)
        return policy

    def attach_health(self, health: Health) -> None:
        """Give every policy the failure detector."""
        for policy in self.policies:
            policy.health = health

    def reload(self) -> Dict[str, Any]:
        """Load the model directory again and give it to every policy (ModelError: the old one stays)."""
        if not self.directory:
            raise LookupError("the aging policy runs without a model (the age rule): nothing to reload")
        previous = self.status()
        try:
            scorer = self._checked(self._run(self._load, self.directory))
        except ModelError as error:
            self.failed_reloads += 1
            self.last_error = str(error)
            raise
        self.scorer = scorer
        for policy in self.policies:
            policy.scorer = scorer
        self.loaded_at = time.time()
        self.reloads += 1
        self.last_error = None
        return {"model": self.status(), "previous": previous}

    def status(self) -> Dict[str, Any]:
        """What is in service, for the REST API."""
        manifest = getattr(self.scorer, "manifest", {}) or {}
        totals: Dict[str, Any] = {}
        for policy in self.policies:
            for name, value in policy.status().items():
                if isinstance(value, int) and not isinstance(value, bool) and name in policy.counts:
                    totals[name] = totals.get(name, 0) + value
        return {
            "policy": "aging",
            "directory": self.directory,
            "model_digest": manifest.get("model_digest"),
            "milestones_s": list(self.aging.milestones_s),
            "mode": self.aging.mode,
            "horizon_s": self.aging.horizon_s,
            "loaded_at": self.loaded_at,
            "reloads": self.reloads,
            "failed_reloads": self.failed_reloads,
            "last_error": self.last_error,
            "counts": totals,
            "budget": self.budget.status(),
        }
