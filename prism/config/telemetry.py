"""The ``telemetry`` and ``prediction`` sections: their settings (each field its own check) and the
checks across the prediction's keys. ``examples/prism.yaml`` documents every key.

Paths (``telemetry.dir``, ``prediction.model``) are kept as written when
absolute and joined to the configuration file's directory otherwise, so that
a configuration means the same thing whatever directory ryu-manager starts
in. Whether the model loads is checked when the controller starts
(``models.artifact.ModelError``), not here.
"""

import posixpath
from dataclasses import dataclass
from typing import Annotated, Optional, Tuple

from pydantic import PlainValidator

from prism.config.document import Document
from prism.config.fields import FORBID, checked_by, choice, fail, flag, integer, listed, number, probability, text
from prism.config.types import SEVERITY_WARNING
from prism.policy.aging import (
    ALLOWED_MILESTONES_S,
    BIRTH_CHOICES,
    POLICY_MODES,
    DEFAULT_BUDGET as DEFAULT_AGING_BUDGET,
    DEFAULT_DEMOTE_PROBABILITY,
    DEFAULT_MILESTONES_S,
    DEFAULT_MODE,
    DEFAULT_PROMOTE_PROBABILITY,
    AgingSettings,
)
from prism.policy.budget import DEFAULT_CHEAP_FLOW_PACKETS

DEFAULT_PROMOTE_QUIET = AgingSettings.promote_quiet
POLICY_AGING = "aging"  #: decide as flows age (prism.policy.aging)
POLICY_FIRST_PACKET = "first_packet"  #: decide once at the first packet (prism.policy.predictive)
POLICIES = (POLICY_AGING, POLICY_FIRST_PACKET)
DEFAULT_ROTATE_RECORDS = 10_000
DEFAULT_ROTATE_S = 300.0
DEFAULT_POLL_INTERVAL_S = 10.0
DEFAULT_MIRROR_BUDGET = 0.25  #: first_packet policy
MAX_MIRROR_BUDGET = 1.0
_ALLOWED = ", ".join(f"{m:g}" for m in ALLOWED_MILESTONES_S)


def _milestone(value: object) -> float:
    seconds = checked_by(number())(value)
    if seconds not in ALLOWED_MILESTONES_S:
        fail(f"{{text}} s is not a milestone the flow records count at (one of {_ALLOWED})")
    return seconds


@dataclass(frozen=True)
class TelemetryConfig:
    """Where and how the stats collector writes telemetry (``telemetry:`` section).

    Attributes:
        dir: Output directory (absolute, or as the configuration gave it when read from text).
        rotate_records: Records after which a file is closed and a new one started.
        rotate_s: Seconds after its first record at which a file is closed.
        poll_interval: Seconds between two polls of every switch's statistics.
    """

    __pydantic_config__ = FORBID

    dir: Annotated[str, text("telemetry.dir")]
    rotate_records: Annotated[int, integer(1)] = DEFAULT_ROTATE_RECORDS
    rotate_s: Annotated[float, number()] = DEFAULT_ROTATE_S
    poll_interval: Annotated[float, number()] = DEFAULT_POLL_INTERVAL_S


@dataclass(frozen=True)
class PredictionConfig:
    """The predictive replication policy (``prediction:`` section).

    Attributes:
        model: The model directory (``model.skops`` + ``manifest.json``); None: the aging
            policy's age rule (no model).
        budget: Mirror copies per packet the policy may spend (0.25: a quarter of the packets once).
        horizon_s: Look-ahead of the cells' failure probability; None: the model's horizon.
        cheap_flow_packets: first_packet: a flow predicted to outlive the horizon with at most this
            many packets is mirrored whatever the budget line (it costs next to nothing); 0: never.
        policy: ``aging`` or ``first_packet``.
        milestones_s: aging: ages (s) at which live flows are re-decided.
        mode: aging: the mode of promoted flows (state, full or auto).
        promote_probability: aging with a model: least P(lives the horizon more) to promote.
        demote_probability: aging with a model: mirrored flows below this lose their mirrors.
        promote_quiet: aging: promote flows quiet since their last report too.
        birth: aging: ``auto`` mirrors SYN-opened TCP flows at birth while the budget has headroom,
            ``off`` never.
    """

    __pydantic_config__ = FORBID

    model: Annotated[Optional[str], text("prediction.model")] = None
    budget: Annotated[float, number("a share of packets (e.g. 0.25)", MAX_MIRROR_BUDGET)] = None  # type: ignore
    horizon_s: Annotated[Optional[float], number()] = None
    cheap_flow_packets: Annotated[int, integer(0)] = DEFAULT_CHEAP_FLOW_PACKETS
    policy: Annotated[str, choice(*POLICIES)] = POLICY_AGING
    milestones_s: Annotated[Tuple[Annotated[float, PlainValidator(_milestone)], ...], listed(
        "ages in seconds", "age", "expected a non-empty list of ages in seconds, e.g. [0.25, 1, 4, 16, 64]",
    )] = DEFAULT_MILESTONES_S  # fmt: skip
    mode: Annotated[str, choice(*POLICY_MODES)] = DEFAULT_MODE
    promote_probability: Annotated[float, probability()] = DEFAULT_PROMOTE_PROBABILITY
    demote_probability: Annotated[float, probability()] = DEFAULT_DEMOTE_PROBABILITY
    promote_quiet: Annotated[bool, flag()] = DEFAULT_PROMOTE_QUIET
    birth: Annotated[str, choice(*BIRTH_CHOICES)] = AgingSettings.birth

    def __post_init__(self) -> None:
        if self.budget is None:
            budget = DEFAULT_MIRROR_BUDGET if self.policy == POLICY_FIRST_PACKET else DEFAULT_AGING_BUDGET
            object.__setattr__(self, "budget", budget)


def resolve_path(path: str, source: str) -> str:
    """``path`` joined to the directory of the configuration file ``source`` unless absolute.

    Text that was not read from a file (``source`` in angle brackets) keeps relative paths.
    """
    if posixpath.isabs(path) or (source.startswith("<") and source.endswith(">")):
        return path
    return posixpath.normpath(posixpath.join(posixpath.dirname(source) or ".", path))


def check_prediction(doc: Document) -> None:
    """Checks across the ``prediction`` keys: a model for first_packet, milestones ascending,
    demotion below promotion, and room for a mirror (a warning)."""
    at = ("prediction",)
    if not doc.has(at):
        return
    if doc.value(at + ("policy",)) == POLICY_FIRST_PACKET and not doc.has(at + ("model",)):
        doc.report(at, "missing required key 'model' (the first_packet policy needs a model)")
    previous = None
    for index, seconds in doc.items(at + ("milestones_s",)):
        if doc.value(at + ("milestones_s", index)) is None:
            continue
        if previous is not None and seconds <= previous:
            doc.report(at + ("milestones_s", index),
                       f"milestones must be ascending and distinct, {seconds:g} follows {previous:g}")
        previous = seconds
    promote = doc.value(at + ("promote_probability",), DEFAULT_PROMOTE_PROBABILITY)
    demote = doc.value(at + ("demote_probability",), DEFAULT_DEMOTE_PROBABILITY)
    if promote is not None and demote is not None and demote > promote:
        doc.report(at + ("demote_probability",), f"must not exceed promote_probability ({promote:g})")
    if doc.value(("max_replication_factor",)) == 0:
        doc.report(at, "max_replication_factor is 0: the predictive policy can never mirror a flow "
                   "(raise max_replication_factor)", SEVERITY_WARNING)  # fmt: skip
