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

import ipaddress
import re
from typing import Annotated, Any, Dict, Optional, Tuple

from pydantic import PlainValidator

from prism.config.document import Document, Loc
from prism.config.fields import Section, checked_by, fail, integer, number, text
from prism.config.telemetry import resolve_path
from prism.config.types import (
    DEFAULT_ALIVE_AFTER_S,
    DEFAULT_DEAD_AFTER_INTERVALS,
    DEFAULT_HEARTBEAT_INTERVAL_S,
    DEFAULT_LIMIT_MAX_FLOWS,
    DEFAULT_STATE_INTERVAL_S,
    DEFAULT_TAKEOVER_TOLERANCE_BYTES,
    SEVERITY_WARNING,
    ManagementConfig,
)
from prism.mgmt.auth import MgmtKeyError, read_key_file

#: Below this a ``state`` flow's progress records would come more often than a cell's tick sends them.
CELL_TICK_S = 0.1
#: Below this a taken-over flow must not have moved more than one full-size TCP window.
SMALL_TOLERANCE_BYTES = 65535
MAX_UDP_PORT = 65535
_ENV_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_NOT_ENV_NAME = "{shown} is not an environment variable name (letters, digits, _)"
_ADDRESS = re.compile(r"(?:\[(?P<v6>[^\]]+)\]|(?P<v4>[^:\[\]]+)):(?P<port>[0-9]+)")
Address = Tuple[str, int]


def parse_address(text: str) -> Optional[Address]:
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


def format_address(address: Address) -> str:
    """The text form :func:`parse_address` reads."""
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def address(what: str) -> PlainValidator:
    """An ``IP:PORT`` string, as ``(ip, port)``."""
    as_text = checked_by(text(what))

    def check(value: Any) -> Address:
        found = parse_address(as_text(value))
        if found is None:
            fail(f"{what} {{shown}} is not IP:PORT (e.g. 172.30.0.10:7700 or [fd00::a]:7700; "
                 f"a UDP port 1-{MAX_UDP_PORT}, no host names)")  # fmt: skip
        return found

    return PlainValidator(check)


class ManagementSection(Section):
    """The ``management`` section as written (``dead_after`` None: DEFAULT_DEAD_AFTER_INTERVALS heartbeats)."""

    listen: Annotated[Optional[Address], address("management.listen")] = None
    heartbeat_interval: Annotated[float, number()] = DEFAULT_HEARTBEAT_INTERVAL_S
    dead_after: Annotated[Optional[float], number()] = None
    alive_after: Annotated[float, number()] = DEFAULT_ALIVE_AFTER_S
    key_file: Annotated[Optional[str], text("management.key_file")] = None
    key_env: Annotated[Optional[str], text("management.key_env", _ENV_NAME, _NOT_ENV_NAME)] = None
    generation_file: Annotated[Optional[str], text("management.generation_file")] = None
    state_interval_s: Annotated[float, number()] = DEFAULT_STATE_INTERVAL_S
    takeover_tolerance_bytes: Annotated[int, integer(0)] = DEFAULT_TAKEOVER_TOLERANCE_BYTES


class RestSection(Section):
    """The ``rest`` section as written."""

    token_env: Annotated[Optional[str], text("rest.token_env", _ENV_NAME, _NOT_ENV_NAME)] = None
    token_file: Annotated[Optional[str], text("rest.token_file")] = None
    listen: Annotated[Optional[Address], address("rest.listen")] = None


class OpenFlowSection(Section):
    """The ``openflow`` section as written."""

    listen: Annotated[Optional[Address], address("openflow.listen")] = None


class LimitsSection(Section):
    """The ``limits`` section as written."""

    max_flows: Annotated[int, integer(1)] = DEFAULT_LIMIT_MAX_FLOWS


def management_config(section: Optional[ManagementSection], source: str) -> ManagementConfig:
    """The settings of a checked section: ``dead_after`` defaulted, files resolved against ``source``'s directory."""
    if section is None:
        return ManagementConfig()
    values = section.model_dump()
    values["dead_after"] = section.dead_after or section.heartbeat_interval * DEFAULT_DEAD_AFTER_INTERVALS
    for key in ("key_file", "generation_file"):
        values[key] = values[key] and resolve_path(values[key], source)
    return ManagementConfig(**values)


def check_management(doc: Document) -> None:
    """Checks across the ``management`` keys: timing against the heartbeat interval, one readable key source."""
    at = ("management",)
    interval = doc.value(at + ("heartbeat_interval",), DEFAULT_HEARTBEAT_INTERVAL_S)
    dead_after = doc.value(at + ("dead_after",))
    if interval and dead_after and dead_after <= interval:
        doc.report(at + ("dead_after",), f"{dead_after} s is not longer than heartbeat_interval {interval} s: "
                   f"every cell would be declared dead between two heartbeats (use e.g. {interval * 3.5:g})")
    elif interval and dead_after and dead_after < 2 * interval:
        doc.report(at + ("dead_after",), f"{dead_after} s is less than two heartbeat intervals: one lost "
                   "heartbeat fails a cell", SEVERITY_WARNING)  # fmt: skip
    key_file = doc.value(at + ("key_file",))
    if key_file is not None:
        try:
            read_key_file(resolve_path(key_file, doc.source))
        except MgmtKeyError as error:
            doc.report(at + ("key_file",), str(error))
    if doc.has(at + ("key_file",)) and doc.has(at + ("key_env",)):
        doc.report(at + ("key_file",), "give either key_file or key_env, not both")
    state_interval = doc.value(at + ("state_interval_s",))
    if state_interval is not None and state_interval < CELL_TICK_S:
        doc.report(at + ("state_interval_s",), f"{state_interval} s is shorter than a cell's tick ({CELL_TICK_S} "
                   "s): progress records go at most once a tick", SEVERITY_WARNING)  # fmt: skip
    tolerance = doc.value(at + ("takeover_tolerance_bytes",))
    if tolerance is not None and tolerance < SMALL_TOLERANCE_BYTES:
        doc.report(at + ("takeover_tolerance_bytes",), f"{tolerance} bytes is less than one TCP window: a cell "
                   "taking over a state-mode flow refuses it if it moved further since its last record",
                   SEVERITY_WARNING)  # fmt: skip


def check_rest(doc: Document) -> None:
    """At most one REST token source."""
    if doc.has(("rest", "token_env")) and doc.has(("rest", "token_file")):
        doc.report(("rest", "token_file"), "give either token_env or token_file, not both")


def _address_at(doc: Document, loc: Loc) -> Optional[Address]:
    written = doc.value(loc)
    return parse_address(written) if written is not None else None


def check_cell_addresses(doc: Document) -> None:
    """Cells' management addresses: unique, not the controller's, and consistent with ``listen``."""
    listen = _address_at(doc, ("management", "listen"))
    seen: Dict[Address, Tuple[str, int]] = {}
    with_address = 0
    for index, _ in doc.items(("switches",)):
        for cell, _ in doc.items(("switches", index, "cells")):
            loc = ("switches", index, "cells", cell, "mgmt")
            mgmt = _address_at(doc, loc)
            if mgmt is None:
                continue
            with_address += 1
            label = f"cell '{doc.value(loc[:-1] + ('id',)) or '?'}'"
            if mgmt == listen:
                doc.report(loc, f"{label} has the controller's management.listen address")
            else:
                doc.unique(seen, mgmt, loc, f"duplicate management address {format_address(mgmt)}", label)
    if listen is not None and not with_address:
        doc.report(("management", "listen"), "no cell has a 'mgmt' address: the controller hears heartbeats "
                   "but cannot send profiles, seeds or assignments", SEVERITY_WARNING)  # fmt: skip
    if listen is None and with_address:
        doc.report(("management",), "cells have 'mgmt' addresses but management.listen is not set: no "
                   "heartbeats are heard, so a dead cell process goes unnoticed", SEVERITY_WARNING)  # fmt: skip
