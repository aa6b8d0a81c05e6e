"""PRISM's YAML configuration: read a file, check it, get a :class:`PrismConfig` or every problem.

The schema is the settings dataclasses themselves: each key is a field whose
annotation carries its check (``prism/config/types.py``, ``bfd.py``,
``etcd.py``, ``telemetry.py``; the document and its switches in
``schema.py``), and ``examples/prism.yaml`` documents every key. Unknown keys
are errors. Every problem is reported at once as
``file:line:column: key.path: message``.

A ``default_replication_factor`` that a switch cannot honour with all of its
cells healthy (more than its cells minus one) is an error: every flow would be
under-replicated from the start, which is a configuration mistake rather than
a failure. ``max_replication_factor`` is only a ceiling that the policy caps
to the cells that exist, so exceeding it is a warning.
"""

import dataclasses
from pathlib import Path
from typing import Any, Union

import yaml

from prism.config.etcd import EtcdConfig
from prism.config.fields import format_address
from prism.config.schema import check_document, parse_dpid
from prism.config.telemetry import PredictionConfig, TelemetryConfig
from prism.config.types import (
    DEFAULT_IDLE_TIMEOUT_S,
    DEFAULT_MAX_REPLICATION_FACTOR,
    DEFAULT_REPLICATION_FACTOR,
    SEVERITY_ERROR,
    SEVERITY_WARNING,
    CellConfig,
    ConfigError,
    ConfigProblem,
    ManagementConfig,
    PrismConfig,
    RestConfig,
    SwitchConfig,
)

__all__ = [
    "DEFAULT_IDLE_TIMEOUT_S", "DEFAULT_MAX_REPLICATION_FACTOR", "DEFAULT_REPLICATION_FACTOR", "SEVERITY_ERROR",
    "SEVERITY_WARNING", "CellConfig", "ConfigError", "ConfigProblem", "EtcdConfig", "ManagementConfig",
    "PredictionConfig", "PrismConfig", "RestConfig", "SwitchConfig", "TelemetryConfig", "load_config",
    "parse_config", "parse_dpid", "render_config",
]  # fmt: skip


def load_config(path: Union[str, Path]) -> PrismConfig:
    """Read and validate a configuration file.

    Args:
        path: The YAML file.

    Returns:
        The configuration.

    Raises:
        ConfigError: the file cannot be read or has errors (all of them listed).
    """
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError([ConfigProblem(source, 0, 0, "", f"cannot read: {reason}")]) from None
    return parse_config(text, source)


def parse_config(text: str, source: str = "<string>") -> PrismConfig:
    """Validate a configuration given as YAML text.

    Args:
        text: The YAML document.
        source: Name used in problem locations (usually the file name).

    Returns:
        The configuration.

    Raises:
        ConfigError: every problem found, sorted by position.
    """
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        message = f"invalid YAML: {exc.problem}" + (f" ({exc.context})" if exc.context else "")
        line, column = (mark.line + 1, mark.column + 1) if mark else (0, 0)
        raise ConfigError([ConfigProblem(source, line, column, "", message)]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([ConfigProblem(source, 0, 0, "", f"invalid YAML: {exc}")]) from None
    config, problems = check_document(root, source)
    if config is None or any(p.severity == SEVERITY_ERROR for p in problems):
        raise ConfigError(problems)
    return dataclasses.replace(config, source=source, warnings=tuple(problems))


def render_config(config: PrismConfig) -> str:
    """YAML text that :func:`parse_config` reads back as an equal configuration."""
    document = {
        "idle_timeout": config.idle_timeout,
        "default_replication_factor": config.default_replication_factor,
        "max_replication_factor": config.max_replication_factor,
        "mirroring_mode": config.mirroring_mode,
        "switches": [
            {"dpid": switch.dp_id, "name": switch.name, "cells": [_render(cell) for cell in switch.cells],
             "edge_ports": list(switch.edge_ports)}
            for switch in config.switches.values()
        ],
    }  # fmt: skip
    for key in ("management", "rest", "openflow", "limits", "telemetry", "prediction", "bfd", "etcd"):
        if getattr(config, key) is not None:
            document[key] = _render(getattr(config, key))
    return yaml.safe_dump(document, sort_keys=False)


def _render(settings: Any) -> dict:
    """A settings dataclass as the mapping the schema reads: no None values, addresses as text."""
    rendered = {}
    for key, value in dataclasses.asdict(settings).items():
        if key in ("listen", "mgmt") and value is not None:
            value = format_address(value)
        elif key == "endpoints":
            value = [format_address(endpoint) for endpoint in value]
        if value is not None:
            rendered[key] = list(value) if isinstance(value, tuple) else value
    return rendered
