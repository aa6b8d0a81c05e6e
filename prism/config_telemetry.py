"""Checks of the configuration's ``telemetry`` and ``prediction`` sections, with file:line positions.

Schema::

    telemetry:                        # optional; without it no statistics are written
      dir: /var/lib/prism/telemetry   # where the Parquet files go (relative: to the config file)
      rotate_records: 10000           # int >= 1: a file is closed after this many records ...
      rotate_s: 300                   # s, > 0: ... or when its first record is this old
      poll_interval: 10               # s, > 0: flow, port and group statistics are polled this often
    prediction:                       # optional; without it every flow gets default_replication_factor
      model: ../models/default        # a model directory (prism train); relative: to the config file
      budget: 0.25                    # 0 < share <= 1: mirror copies per packet the policy may spend
      horizon_s: 2                    # s, > 0: look-ahead of the cells' failure probability
                                      # (default: the model's takeover horizon)
      cheap_flow_packets: 64          # int >= 0: a flow predicted to outlive horizon_s with at most
                                      # this many packets is mirrored below the budget line (0: never)

Paths are kept as written when absolute and joined to the configuration
file's directory otherwise, so that a configuration means the same thing
whatever directory ryu-manager starts in. Whether the model loads is checked
when the controller starts (``models.artifact.ModelError``), not here.
"""

from __future__ import annotations

import math
import posixpath
from dataclasses import dataclass
from typing import Optional

from yaml.nodes import Node, ScalarNode

from prism.budget import DEFAULT_CHEAP_FLOW_PACKETS
from prism.config_types import SEVERITY_WARNING

TELEMETRY_KEYS = ("dir", "rotate_records", "rotate_s", "poll_interval")
PREDICTION_KEYS = ("model", "budget", "horizon_s", "cheap_flow_packets")
DEFAULT_ROTATE_RECORDS = 10_000
DEFAULT_ROTATE_S = 300.0
DEFAULT_POLL_INTERVAL_S = 10.0
DEFAULT_MIRROR_BUDGET = 0.25
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
        model: The model directory (``model.skops`` + ``manifest.json``).
        budget: Mirror copies per packet the policy may spend (0.25: a quarter of the packets once).
        horizon_s: Look-ahead of the cells' failure probability; None: the model's horizon.
        cheap_flow_packets: A flow predicted to outlive the horizon with at most this many packets
            is mirrored whatever the budget line (it costs next to nothing); 0: never.
    """

    model: str
    budget: float = DEFAULT_MIRROR_BUDGET
    horizon_s: Optional[float] = None
    cheap_flow_packets: int = DEFAULT_CHEAP_FLOW_PACKETS


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
    fields = checker.mapping(node, "prediction", PREDICTION_KEYS, ("model",))
    if fields is None or "model" not in fields:
        return None
    model = checker.string(fields["model"], "prediction.model", "prediction.model")
    budget: Optional[float] = DEFAULT_MIRROR_BUDGET
    if "budget" in fields:
        budget = _number(checker, fields["budget"], "prediction.budget",
                         "a share of packets (e.g. 0.25)", MAX_MIRROR_BUDGET)  # fmt: skip
    horizon_s = None
    horizon_ok = True
    if "horizon_s" in fields:
        horizon_s = _number(checker, fields["horizon_s"], "prediction.horizon_s", "a number of seconds")
        horizon_ok = horizon_s is not None
    cheap_flow_packets: Optional[int] = DEFAULT_CHEAP_FLOW_PACKETS
    if "cheap_flow_packets" in fields:
        cheap_flow_packets = checker.integer(fields["cheap_flow_packets"], "prediction.cheap_flow_packets", 0)
    if max_replication_factor == 0:
        checker.report(node, "prediction", "max_replication_factor is 0: the predictive policy can never "
                       "mirror a flow (raise max_replication_factor)", SEVERITY_WARNING)  # fmt: skip
    if model is None or budget is None or not horizon_ok or cheap_flow_packets is None:
        return None
    return PredictionConfig(resolve_path(model, checker.source), budget, horizon_s, cheap_flow_packets)


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
    rendered = {"model": prediction.model, "budget": prediction.budget,
                "cheap_flow_packets": prediction.cheap_flow_packets}  # fmt: skip
    if prediction.horizon_s is not None:
        rendered["horizon_s"] = prediction.horizon_s
    return rendered
