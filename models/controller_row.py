"""The evaluation's ``controller`` row: the policy a configuration makes the controller run, replayed over flow records.

The policy object is built as the director builds it (``ryu_apps.mirroring_director.load_directors``
with ``load_models``): a ``FixedPolicy`` without a ``prediction`` section, else the
``prediction.policy``'s service (``models.service.AgingService`` or
``ModelService``, which the Ryu shell also uses) gives the first switch's policy over its cells' ring. It is then
driven by ``models.replay.replay_decisions`` with the events a controller sees, in
time order (birth, age milestones, end one ``idle_timeout`` after the last packet),
with every cell alive. A fresh policy is built for every replay (its budget and
history start empty, as a starting controller's do).

``model`` replaces the configured model (``prism evaluate --cross-source`` judges
the shipped configuration with a model trained on the other source).
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any, Callable, Optional, Union

import pandas as pd

from prism.config.load import PrismConfig, load_config
from prism.policy.base import FixedPolicy
from prism.placement.ring import HashRing

#: The configuration the repository ships (the controller row's default).
_IN_CHECKOUT = Path(__file__).resolve().parents[1] / "examples" / "prism.yaml"
#: Where a non-editable install puts it (setup.py's data_files).
_INSTALLED = Path(sys.prefix) / "share" / "prism" / "examples" / "prism.yaml"
SHIPPED_CONFIG = _IN_CHECKOUT if _IN_CHECKOUT.is_file() else _INSTALLED
#: Placeholder for "use the configured model".
CONFIGURED = object()


def load(config: Union[str, Path, PrismConfig, None] = None) -> PrismConfig:
    """A configuration: a file, an already loaded one, or (None) the shipped one."""
    if isinstance(config, PrismConfig):
        return config
    return load_config(config if config is not None else SHIPPED_CONFIG)


def controller_policy(config: PrismConfig, model: Any = CONFIGURED):
    """The first switch's policy as the director would hold it (module docstring).

    Args:
        config: The configuration.
        model: A loaded model (``models.predictor.Predictor``) to use instead of the
            configured one, or None for none (the aging policy's age rule).

    Raises:
        models.artifact.ModelError: the configured model cannot be used.
    """
    switch = config.switches[sorted(config.switches)[0]]
    ring = HashRing(switch.cell_ids)
    prediction = config.prediction
    if prediction is None:
        return FixedPolicy(ring, config.default_replication_factor, config.mirroring_mode)
    from models.service import AgingService, ModelService, load_model

    loader: Callable[[str], Any] = load_model
    if model is not CONFIGURED:
        directory = None if model is None else str(getattr(model, "directory", None) or "<given model>")
        config = dataclasses.replace(config, prediction=dataclasses.replace(prediction, model=directory))
        loader = lambda _directory: model  # noqa: E731
    service_class = AgingService if getattr(prediction, "policy", "first_packet") == "aging" else ModelService
    service = service_class(config, load=loader)
    return service.policy_for(switch, ring)


def controller_replay(config: Union[str, Path, PrismConfig, None] = None,
                      model: Any = CONFIGURED) -> Callable[[pd.DataFrame], Any]:  # fmt: skip
    """Flow records -> the controller's ``DecisionTimeline`` under ``config`` (default: the shipped one).

    The configuration (and the configured model) is loaded once, here, so that a
    bad one fails before any flow is replayed.
    """
    config = load(config)
    controller_policy(config, model)  # fail now, not mid-run
    switch = config.switches[sorted(config.switches)[0]]

    def replay(frame: pd.DataFrame):
        from models.replay import replay_decisions

        policy = controller_policy(config, model)
        return replay_decisions(frame, policy, idle_timeout_s=float(config.idle_timeout), cells=switch.cell_ids)

    return replay


def describe(config: Union[str, Path, PrismConfig, None] = None, model: Optional[str] = None) -> str:
    """One line naming the controller row's configuration and policy (``model``: names a replaced model)."""
    config = load(config)
    prediction = config.prediction
    if prediction is not None and model is not None:
        prediction = dataclasses.replace(prediction, model=model)
    if prediction is None:
        return (f"{config.source}: fixed policy, replication factor {config.default_replication_factor}, "
                f"{config.mirroring_mode} mode")  # fmt: skip
    policy = getattr(prediction, "policy", "first_packet")
    extra = ""
    if policy == "aging":
        extra = f", milestones {list(prediction.milestones_s)} s, {prediction.mode} mode"
    return (f"{config.source}: {policy} policy, budget {prediction.budget:g}, model "
            f"{prediction.model or 'none (age rule)'}{extra}")  # fmt: skip
