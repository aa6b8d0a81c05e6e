"""Checks of the configuration's ``telemetry`` and ``prediction`` sections, with file:line positions.

Schema::

    telemetry:                        # optional; without it no statistics are written
      dir: /var/lib/prism/telemetry   # where the Parquet files go (relative: to the config file)
      rotate_records: 10000           # int >= 1: a file is closed after this many records ...
      rotate_s: 300                   # s, > 0: ... or when its first record is this old
      poll_interval: 10               # s, > 0: flow, port and group statistics are polled this often
    prediction:                       # optional; without it every flow gets default_replication_factor
      policy: aging                   # "aging" (default): decide as flows age (prism/policy/aging.py);
                                      # "first_packet": decide once at the first packet (needs a model)
      model: ../models/default        # a model directory (prism train); relative: to the config file.
                                      # aging without a model: every flow alive at a milestone is promoted
      budget: 0.1                     # 0 < share <= 1: mirror copies per packet the policy may spend
                                      # (default 0.1 aging, 0.25 first_packet)
      horizon_s: 2                    # s, > 0: look-ahead of the cells' failure probability
                                      # (default: the model's takeover horizon)
      milestones_s: [0.25, 1, 4, 16, 64]  # aging: ages (s) at which a live flow is re-decided,
                                      # ascending, among 0.25 0.5 1 2 4 8 16 32 64
      mode: state                     # aging: mode of promoted flows, state (only SYN/FIN/RST copied),
                                      # full (every packet copied) or auto (full for flows slower than
                                      # 1 packet/s while the budget allows, else state)
      promote_quiet: true             # aging: promote a flow that sent nothing since its last report
                                      # too (sparse long flows; ended flows the cells still report)
      birth: auto                     # aging: auto (default) mirrors a TCP flow opened by a SYN at birth
                                      # (state mode) while the copy budget has headroom; off: never
      promote_probability: 0.5        # aging with a model: promote a flow the model gives at least
                                      # this probability of living the model's horizon more
      demote_probability: 0           # aging with a model: drop the mirrors of a flow below this (0: never)
      cheap_flow_packets: 64          # first_packet: int >= 0: a flow predicted to outlive horizon_s
                                      # with at most this many packets is mirrored below the line (0: never)

Paths are kept as written when absolute and joined to the configuration
file's directory otherwise, so that a configuration means the same thing
whatever directory ryu-manager starts in. Whether the model loads is checked
when the controller starts (``models.artifact.ModelError``), not here.
"""

from __future__ import annotations

import math
import posixpath
from dataclasses import dataclass
from typing import List, Optional, Tuple

from yaml.nodes import Node, ScalarNode, SequenceNode

from prism.policy.budget import DEFAULT_CHEAP_FLOW_PACKETS
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

TELEMETRY_KEYS = ("dir", "rotate_records", "rotate_s", "poll_interval")
PREDICTION_KEYS = ("policy", "model", "budget", "horizon_s", "milestones_s", "mode", "promote_quiet", "birth",
                   "promote_probability", "demote_probability", "cheap_flow_packets")
DEFAULT_PROMOTE_QUIET = AgingSettings.promote_quiet
_TAG_BOOL = "tag:yaml.org,2002:bool"
POLICY_AGING = "aging"  #: decide as flows age (prism.policy.aging)
POLICY_FIRST_PACKET = "first_packet"  #: decide once at the first packet (prism.policy.predictive)
POLICIES = (POLICY_AGING, POLICY_FIRST_PACKET)
DEFAULT_ROTATE_RECORDS = 10_000
DEFAULT_ROTATE_S = 300.0
DEFAULT_POLL_INTERVAL_S = 10.0
DEFAULT_MIRROR_BUDGET = 0.25  #: first_packet policy
MAX_MIRROR_BUDGET = 1.0
_TAG_INT = "tag:yaml.org,2002:int"
_TAG_FLOAT = "tag:yaml.org,2002:float"


@dataclass(frozen=True)
class TelemetryConfig:
    """Where and how the stats collector writes telemetry (``telemetry:`` section).

    Attributes:
        dir: Output directory (absolute, or as the configuration gave it when read from text).
        rotate_records: Records after which a file is closed and a new one started.
        rotate_s: Seconds after its first record at which a file is closed.
        poll_interval: Seconds between two polls of every switch's statistics.
    """

    dir: str
    rotate_records: int = DEFAULT_ROTATE_RECORDS
    rotate_s: float = DEFAULT_ROTATE_S
    poll_interval: float = DEFAULT_POLL_INTERVAL_S


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

    model: Optional[str]
    budget: float = DEFAULT_AGING_BUDGET
    horizon_s: Optional[float] = None
    cheap_flow_packets: int = DEFAULT_CHEAP_FLOW_PACKETS
    policy: str = POLICY_AGING
    milestones_s: Tuple[float, ...] = DEFAULT_MILESTONES_S
    mode: str = DEFAULT_MODE
    promote_probability: float = DEFAULT_PROMOTE_PROBABILITY
    demote_probability: float = DEFAULT_DEMOTE_PROBABILITY
    promote_quiet: bool = DEFAULT_PROMOTE_QUIET
    birth: str = AgingSettings.birth


def resolve_path(path: str, source: str) -> str:
    """``path`` joined to the directory of the configuration file ``source`` unless absolute.

    Text that was not read from a file (``source`` in angle brackets) keeps relative paths.
    """
    if posixpath.isabs(path) or (source.startswith("<") and source.endswith(">")):
        return path
    return posixpath.normpath(posixpath.join(posixpath.dirname(source) or ".", path))


def _number(checker, node: Node, path: str, what: str, maximum: Optional[float] = None) -> Optional[float]:
    """A number > 0 (and <= ``maximum``), or None (reported)."""
    value = None
    if isinstance(node, ScalarNode) and node.tag in (_TAG_INT, _TAG_FLOAT):
        try:
            value = float(node.value)
        except ValueError:
            value = None
    if value is None:
        shown = repr(node.value) if isinstance(node, ScalarNode) else "a collection"
        checker.report(node, path, f"expected {what}, got {shown}")
        return None
    if not math.isfinite(value) or value <= 0 or (maximum is not None and value > maximum):
        bound = "> 0" if maximum is None else f"> 0 and <= {maximum:g}"
        checker.report(node, path, f"{what} must be {bound}, got {node.value}")
        return None
    return value


def check_telemetry(checker, node: Optional[Node]) -> Optional[TelemetryConfig]:
    """The ``telemetry`` section, or None when absent or unusable (problems reported)."""
    if node is None:
        return None
    fields = checker.mapping(node, "telemetry", TELEMETRY_KEYS, ("dir",))
    if fields is None or "dir" not in fields:
        return None
    directory = checker.string(fields["dir"], "telemetry.dir", "telemetry.dir")
    rotate_records = DEFAULT_ROTATE_RECORDS
    if "rotate_records" in fields:
        rotate_records = checker.integer(fields["rotate_records"], "telemetry.rotate_records", 1)
    seconds = {"rotate_s": DEFAULT_ROTATE_S, "poll_interval": DEFAULT_POLL_INTERVAL_S}
    for key in seconds:
        if key in fields:
            seconds[key] = _number(checker, fields[key], f"telemetry.{key}", "a number of seconds")
    if directory is None or rotate_records is None or None in seconds.values():
        return None
    return TelemetryConfig(
        resolve_path(directory, checker.source), rotate_records, seconds["rotate_s"], seconds["poll_interval"]
    )


def _probability(checker, node: Node, path: str) -> Optional[float]:
    """A number within [0, 1], or None (reported)."""
    value = None
    if isinstance(node, ScalarNode) and node.tag in (_TAG_INT, _TAG_FLOAT):
        try:
            value = float(node.value)
        except ValueError:
            value = None
    if value is None or not 0.0 <= value <= 1.0:
        shown = repr(node.value) if isinstance(node, ScalarNode) else "a collection"
        checker.report(node, path, f"expected a probability between 0 and 1, got {shown}")
        return None
    return value


def _milestones(checker, node: Node, path: str) -> Optional[Tuple[float, ...]]:
    """An ascending list of distinct allowed milestones (s), or None (reported)."""
    if not isinstance(node, SequenceNode) or not node.value:
        checker.report(node, path, "expected a non-empty list of ages in seconds, e.g. [0.25, 1, 4, 16, 64]")
        return None
    values: List[float] = []
    allowed = ", ".join(f"{m:g}" for m in ALLOWED_MILESTONES_S)
    for index, item in enumerate(node.value):
        value = _number(checker, item, f"{path}[{index}]", "a number of seconds")
        if value is None:
            return None
        if value not in ALLOWED_MILESTONES_S:
            checker.report(item, f"{path}[{index}]", f"{item.value} s is not a milestone the flow records "
                           f"count at (one of {allowed})")  # fmt: skip
            return None
        if values and value <= values[-1]:
            checker.report(item, f"{path}[{index}]", f"milestones must be ascending and distinct, "
                           f"{item.value} follows {values[-1]:g}")  # fmt: skip
            return None
        values.append(value)
    return tuple(values)


def _choice(checker, node: Node, path: str, choices: Tuple[str, ...]) -> Optional[str]:
    """One of ``choices``, or None (reported)."""
    if isinstance(node, ScalarNode) and node.value in choices:
        return node.value
    shown = repr(node.value) if isinstance(node, ScalarNode) else "a collection"
    checker.report(node, path, f"expected one of {', '.join(choices)}, got {shown}")
    return None


def check_prediction(
    checker, node: Optional[Node], max_replication_factor: Optional[int]
) -> Optional[PredictionConfig]:
    """The ``prediction`` section, or None when absent or unusable (problems reported).

    Args:
        checker: The schema checker (reports problems with positions).
        node: The section's node, None if absent.
        max_replication_factor: The configuration's ceiling; 0 leaves the policy nothing to
            decide, which is reported as a warning.
    """
    if node is None:
        return None
    fields = checker.mapping(node, "prediction", PREDICTION_KEYS, ())
    if fields is None:
        return None
    ok = True
    policy = POLICY_AGING
    if "policy" in fields:
        policy = _choice(checker, fields["policy"], "prediction.policy", POLICIES)
        ok = policy is not None
    model = None
    if "model" in fields:
        model = checker.string(fields["model"], "prediction.model", "prediction.model")
        ok = ok and model is not None
    elif policy == POLICY_FIRST_PACKET:
        checker.report(node, "prediction", "missing required key 'model' (the first_packet policy needs a model)")
        ok = False
    budget: Optional[float] = DEFAULT_MIRROR_BUDGET if policy == POLICY_FIRST_PACKET else DEFAULT_AGING_BUDGET
    if "budget" in fields:
        budget = _number(checker, fields["budget"], "prediction.budget",
                         "a share of packets (e.g. 0.25)", MAX_MIRROR_BUDGET)  # fmt: skip
    horizon_s = None
    if "horizon_s" in fields:
        horizon_s = _number(checker, fields["horizon_s"], "prediction.horizon_s", "a number of seconds")
        ok = ok and horizon_s is not None
    cheap_flow_packets: Optional[int] = DEFAULT_CHEAP_FLOW_PACKETS
    if "cheap_flow_packets" in fields:
        cheap_flow_packets = checker.integer(fields["cheap_flow_packets"], "prediction.cheap_flow_packets", 0)
    milestones_s: Optional[Tuple[float, ...]] = DEFAULT_MILESTONES_S
    if "milestones_s" in fields:
        milestones_s = _milestones(checker, fields["milestones_s"], "prediction.milestones_s")
    mode: Optional[str] = DEFAULT_MODE
    if "mode" in fields:
        mode = _choice(checker, fields["mode"], "prediction.mode", POLICY_MODES)
    promote_quiet: Optional[bool] = DEFAULT_PROMOTE_QUIET
    if "promote_quiet" in fields:
        node_quiet = fields["promote_quiet"]
        if isinstance(node_quiet, ScalarNode) and node_quiet.tag == _TAG_BOOL:
            promote_quiet = node_quiet.value.lower() in ("true", "yes", "on")
        else:
            shown = repr(node_quiet.value) if isinstance(node_quiet, ScalarNode) else "a collection"
            checker.report(node_quiet, "prediction.promote_quiet", f"expected true or false, got {shown}")
            promote_quiet = None
    birth: Optional[str] = AgingSettings.birth
    if "birth" in fields:  # YAML reads a bare off as a boolean: the text is what counts
        birth = _choice(checker, fields["birth"], "prediction.birth", BIRTH_CHOICES)
    probabilities = {"promote_probability": DEFAULT_PROMOTE_PROBABILITY,
                     "demote_probability": DEFAULT_DEMOTE_PROBABILITY}  # fmt: skip
    for key in probabilities:
        if key in fields:
            probabilities[key] = _probability(checker, fields[key], f"prediction.{key}")
    promote, demote = probabilities["promote_probability"], probabilities["demote_probability"]
    if promote is not None and demote is not None and demote > promote:
        checker.report(fields["demote_probability"], "prediction.demote_probability",
                       f"must not exceed promote_probability ({promote:g})")  # fmt: skip
        ok = False
    if max_replication_factor == 0:
        checker.report(node, "prediction", "max_replication_factor is 0: the predictive policy can never "
                       "mirror a flow (raise max_replication_factor)", SEVERITY_WARNING)  # fmt: skip
    values = (budget, cheap_flow_packets, milestones_s, mode, promote, demote, promote_quiet, birth)
    if not ok or any(value is None for value in values):
        return None
    return PredictionConfig(None if model is None else resolve_path(model, checker.source), budget, horizon_s,
                            cheap_flow_packets, policy, milestones_s, mode, promote, demote, promote_quiet,
                            birth)  # fmt: skip


def render_telemetry(telemetry: TelemetryConfig) -> dict:
    """The section as :func:`check_telemetry` reads it back."""
    return {
        "dir": telemetry.dir,
        "rotate_records": telemetry.rotate_records,
        "rotate_s": telemetry.rotate_s,
        "poll_interval": telemetry.poll_interval,
    }


def render_prediction(prediction: PredictionConfig) -> dict:
    """The section as :func:`check_prediction` reads it back."""
    rendered = {"policy": prediction.policy, "budget": prediction.budget,
                "cheap_flow_packets": prediction.cheap_flow_packets,
                "milestones_s": list(prediction.milestones_s), "mode": prediction.mode,
                "promote_probability": prediction.promote_probability,
                "demote_probability": prediction.demote_probability,
                "promote_quiet": prediction.promote_quiet, "birth": prediction.birth}  # fmt: skip
    if prediction.model is not None:
        rendered["model"] = prediction.model
    if prediction.horizon_s is not None:
        rendered["horizon_s"] = prediction.horizon_s
    return rendered
