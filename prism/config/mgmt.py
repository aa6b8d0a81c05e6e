"""Checks of the configuration's management network and REST sections (``management:``, ``rest:``, cells' ``mgmt``).

Schema::

    management:                       # optional; without it no heartbeats are heard
      listen: "172.30.0.254:7600"     # the controller's UDP address on the management network
      heartbeat_interval: 0.1         # s, > 0: how often cells send heartbeats
      dead_after: 0.35                # s, > heartbeat_interval (default 3.5 intervals)
      alive_after: 1.0                # s, > 0: unbroken heartbeats before a dead cell is used again
      key_file: mgmt.key              # the deployment's management key (relative: to this file), or
      key_env: PRISM_MGMT_KEY         #   the environment variable holding it (the default)
      generation_file: /var/lib/prism/controller-generation   # the controller's generation (fencing)
      state_interval_s: 1.0           # s, > 0: progress records of a ``state`` flow (prism/mgmt/protocol.py)
      takeover_tolerance_bytes: 16777216  # >= 0: how far a taken-over ``state`` flow may have moved
    rest:                             # optional; at most one of:
      token_env: PRISM_REST_TOKEN     #   environment variable holding the REST token
      token_file: /etc/prism/token    #   file holding it
      listen: "127.0.0.1:8080"        # optional: the REST API's TCP address (default: loopback)
    openflow:
      listen: "127.0.0.1:6653"        # optional: the OpenFlow listener's TCP address (default: loopback)
    limits:
      max_flows: 1000000              # flows each switch's director tracks; beyond: unmirrored, untracked
    switches:
      - cells:
          - {id: cell1, port: 1, mgmt: "172.30.0.10:7700"}   # the cell's management address

Addresses are IP literals (``[v6]:port`` for IPv6) with a UDP port 1-65535.
Every management datagram is authenticated with the key (``prism.mgmt.auth``);
a key file that cannot be read, or holds a key shorter than
``MIN_KEY_CHARS``, is an error here, at the line of ``key_file``. The key is
a secret: keep it out of version control (``make demo`` and the tests make
one in their work directory).
"""

from __future__ import annotations

import ipaddress
import math
import re
from typing import Dict, List, Optional, Tuple

from yaml.nodes import Node, ScalarNode

from prism.mgmt.auth import MgmtKeyError, read_key_file

from prism.config.telemetry import resolve_path
from prism.config.types import (
    DEFAULT_ALIVE_AFTER_S,
    DEFAULT_DEAD_AFTER_INTERVALS,
    DEFAULT_HEARTBEAT_INTERVAL_S,
    DEFAULT_STATE_INTERVAL_S,
    DEFAULT_TAKEOVER_TOLERANCE_BYTES,
    SEVERITY_WARNING,
    CellConfig,
    LimitsConfig,
    ManagementConfig,
    OpenFlowConfig,
    RestConfig,
)

MANAGEMENT_KEYS = ("listen", "heartbeat_interval", "dead_after", "alive_after", "key_file", "key_env",
                   "generation_file", "state_interval_s", "takeover_tolerance_bytes")  # fmt: skip
#: Below this a ``state`` flow's progress records would come more often than a cell's tick sends them.
CELL_TICK_S = 0.1
#: Below this a taken-over flow must not have moved more than one full-size TCP window.
SMALL_TOLERANCE_BYTES = 65535
REST_KEYS = ("token_env", "token_file", "listen")
OPENFLOW_KEYS = ("listen",)
LIMITS_KEYS = ("max_flows",)
MAX_UDP_PORT = 65535
_TAG_INT = "tag:yaml.org,2002:int"
_TAG_FLOAT = "tag:yaml.org,2002:float"
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ADDRESS = re.compile(r"(?:\[(?P<v6>[^\]]+)\]|(?P<v4>[^:\[\]]+)):(?P<port>[0-9]+)")


def parse_address(text: str) -> Optional[Tuple[str, int]]:
    """``"IP:PORT"`` or ``"[IPv6]:PORT"`` as ``(ip, port)``, or None if it is not one."""
    match = _ADDRESS.fullmatch(text.strip())
    if match is None:
        return None
    host = match.group("v6") or match.group("v4")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if (address.version == 6) != (match.group("v6") is not None):
        return None
    port = int(match.group("port"))
    if not 1 <= port <= MAX_UDP_PORT:
        return None
    return str(address), port


def format_address(address: Tuple[str, int]) -> str:
    """The text form :func:`parse_address` reads."""
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def check_address(checker, node: Node, path: str, what: str) -> Optional[Tuple[str, int]]:
    """An address string, or None (reported through ``checker``)."""
    text = checker.string(node, path, what)
    if text is None:
        return None
    address = parse_address(text)
    if address is None:
        checker.report(node, path, f"{what} {text!r} is not IP:PORT (e.g. 172.30.0.10:7700 or [fd00::a]:7700; "
                                   f"a UDP port 1-{MAX_UDP_PORT}, no host names)")  # fmt: skip
    return address


def _seconds(checker, node: Node, path: str) -> Optional[float]:
    if not (isinstance(node, ScalarNode) and node.tag in (_TAG_INT, _TAG_FLOAT)):
        checker.report(node, path, f"expected a number of seconds, got {node.value!r}"
                       if isinstance(node, ScalarNode) else f"expected a number of seconds")  # fmt: skip
        return None
    try:
        value = float(node.value)
    except ValueError:
        checker.report(node, path, f"expected a number of seconds, got {node.value!r}")
        return None
    if not math.isfinite(value) or value <= 0:
        checker.report(node, path, f"must be a number of seconds > 0, got {node.value}")
        return None
    return value


def check_management(checker, node: Optional[Node]) -> ManagementConfig:
    """The ``management`` section (defaults where absent or wrong; problems reported)."""
    if node is None:
        return ManagementConfig()
    fields = checker.mapping(node, "management", MANAGEMENT_KEYS, ())
    if fields is None:
        return ManagementConfig()
    listen = None
    if "listen" in fields:
        listen = check_address(checker, fields["listen"], "management.listen", "management.listen")
    values: Dict[str, Optional[float]] = {}
    for key in ("heartbeat_interval", "dead_after", "alive_after", "state_interval_s"):
        if key in fields:
            values[key] = _seconds(checker, fields[key], f"management.{key}")
    interval = values.get("heartbeat_interval") or DEFAULT_HEARTBEAT_INTERVAL_S
    dead_after = values.get("dead_after") or interval * DEFAULT_DEAD_AFTER_INTERVALS
    alive_after = values.get("alive_after") or DEFAULT_ALIVE_AFTER_S
    if values.get("dead_after") and dead_after <= interval:
        checker.report(fields["dead_after"], "management.dead_after",
                       f"{dead_after} s is not longer than heartbeat_interval {interval} s: every cell "
                       f"would be declared dead between two heartbeats (use e.g. {interval * 3.5:g})")  # fmt: skip
    elif values.get("dead_after") and dead_after < 2 * interval:
        checker.report(fields["dead_after"], "management.dead_after",
                       f"{dead_after} s is less than two heartbeat intervals: one lost heartbeat fails a cell",
                       SEVERITY_WARNING)  # fmt: skip
    key_file, key_env = _key_source(checker, fields)
    generation_file = None
    if "generation_file" in fields:
        generation_file = checker.string(fields["generation_file"], "management.generation_file",
                                         "management.generation_file")  # fmt: skip
        if generation_file is not None:
            generation_file = resolve_path(generation_file, checker.source)
    state_interval = values.get("state_interval_s") or DEFAULT_STATE_INTERVAL_S
    if values.get("state_interval_s") and state_interval < CELL_TICK_S:
        checker.report(fields["state_interval_s"], "management.state_interval_s",
                       f"{state_interval} s is shorter than a cell's tick ({CELL_TICK_S} s): progress records "
                       f"go at most once a tick", SEVERITY_WARNING)  # fmt: skip
    tolerance = DEFAULT_TAKEOVER_TOLERANCE_BYTES
    if "takeover_tolerance_bytes" in fields:
        node = fields["takeover_tolerance_bytes"]
        checked = checker.integer(node, "management.takeover_tolerance_bytes", 0)
        if checked is not None:
            tolerance = checked
            if checked < SMALL_TOLERANCE_BYTES:
                checker.report(node, "management.takeover_tolerance_bytes",
                               f"{checked} bytes is less than one TCP window: a cell taking over a state-mode "
                               f"flow refuses it if it moved further since its last record", SEVERITY_WARNING)  # fmt: skip
    return ManagementConfig(listen, interval, dead_after, alive_after, key_file=key_file, key_env=key_env,
                            generation_file=generation_file, state_interval_s=state_interval,
                            takeover_tolerance_bytes=tolerance)  # fmt: skip


def _key_source(checker, fields: Dict[str, Node]) -> Tuple[Optional[str], Optional[str]]:
    """``key_file`` (resolved, readable, long enough) and ``key_env`` (a variable name): at most one."""
    key_file = key_env = None
    if "key_env" in fields:
        key_env = checker.string(fields["key_env"], "management.key_env", "management.key_env")
        if key_env is not None and not _ENV_NAME.fullmatch(key_env):
            checker.report(fields["key_env"], "management.key_env",
                           f"{key_env!r} is not an environment variable name (letters, digits, _)")
            key_env = None
    if "key_file" in fields:
        key_file = checker.string(fields["key_file"], "management.key_file", "management.key_file")
        if key_file is not None:
            key_file = resolve_path(key_file, checker.source)
            try:
                read_key_file(key_file)
            except MgmtKeyError as error:
                checker.report(fields["key_file"], "management.key_file", str(error))
    if "key_env" in fields and "key_file" in fields:
        checker.report(fields["key_file"], "management.key_file", "give either key_file or key_env, not both")
    return key_file, key_env


def check_rest(checker, node: Optional[Node]) -> RestConfig:
    """The ``rest`` section: at most one token source."""
    if node is None:
        return RestConfig()
    fields = checker.mapping(node, "rest", REST_KEYS, ())
    if fields is None:
        return RestConfig()
    token_env = token_file = None
    if "token_env" in fields:
        token_env = checker.string(fields["token_env"], "rest.token_env", "rest.token_env")
        if token_env is not None and not _ENV_NAME.fullmatch(token_env):
            checker.report(fields["token_env"], "rest.token_env",
                           f"{token_env!r} is not an environment variable name (letters, digits, _)")
            token_env = None
    if "token_file" in fields:
        token_file = checker.string(fields["token_file"], "rest.token_file", "rest.token_file")
    if "token_env" in fields and "token_file" in fields:
        checker.report(fields["token_file"], "rest.token_file",
                       "give either token_env or token_file, not both")
    listen = None
    if "listen" in fields:
        listen = check_address(checker, fields["listen"], "rest.listen", "rest.listen")
    return RestConfig(token_env, token_file, listen)


def check_limits(checker, node: Optional[Node]) -> LimitsConfig:
    """The ``limits`` section: bounds of the controller's state."""
    if node is None:
        return LimitsConfig()
    fields = checker.mapping(node, "limits", LIMITS_KEYS, ())
    if fields is None or "max_flows" not in fields:
        return LimitsConfig()
    value = checker.integer(fields["max_flows"], "limits.max_flows", 1)
    return LimitsConfig() if value is None else LimitsConfig(value)


def check_openflow(checker, node: Optional[Node]) -> OpenFlowConfig:
    """The ``openflow`` section: the address the OpenFlow listener binds."""
    if node is None:
        return OpenFlowConfig()
    fields = checker.mapping(node, "openflow", OPENFLOW_KEYS, ())
    if fields is None or "listen" not in fields:
        return OpenFlowConfig()
    return OpenFlowConfig(check_address(checker, fields["listen"], "openflow.listen", "openflow.listen"))


def check_cell_addresses(
    checker, cells: List[Tuple[CellConfig, Node, str]], management: ManagementConfig, root: Node
) -> None:
    """Cells' management addresses: unique, not the controller's, and consistent with ``listen``."""
    seen: Dict[Tuple[str, int], Tuple[str, int]] = {}
    with_address = 0
    for cell, node, path in cells:
        if cell.mgmt is None:
            continue
        with_address += 1
        if cell.mgmt == management.listen:
            checker.report(node, path, f"cell '{cell.id}' has the controller's management.listen address")
        elif cell.mgmt in seen:
            other, line = seen[cell.mgmt]
            checker.report(node, path, f"duplicate management address {format_address(cell.mgmt)} "
                                       f"(also cell '{other}' at line {line})")  # fmt: skip
        else:
            seen[cell.mgmt] = (cell.id, node.start_mark.line + 1)
    if management.listen is not None and not with_address:
        checker.report(root, "management.listen", "no cell has a 'mgmt' address: the controller hears "
                       "heartbeats but cannot send profiles, seeds or assignments", SEVERITY_WARNING)  # fmt: skip
    if management.listen is None and with_address:
        checker.report(root, "management", "cells have 'mgmt' addresses but management.listen is not set: "
                       "no heartbeats are heard, so a dead cell process goes unnoticed", SEVERITY_WARNING)  # fmt: skip
