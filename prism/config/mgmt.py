"""Checks across the management network's keys (``management``, ``rest``, the cells' ``mgmt``).

Their settings are in ``prism.config.types``. Addresses are IP literals
(``[v6]:port`` for IPv6) with a UDP port 1-65535. Every management datagram is
authenticated with the key (``prism.mgmt.auth``); a key file that cannot be
read, or holds a key shorter than ``MIN_KEY_CHARS``, is an error here, at the
line of ``key_file``. The key is a secret: keep it out of version control
(``make demo`` and the tests make one in their work directory).
"""

from typing import Dict, Optional, Tuple

from prism.config.document import Document, Loc
from prism.config.fields import Address, format_address, parse_address
from prism.config.telemetry import resolve_path
from prism.config.types import DEFAULT_HEARTBEAT_INTERVAL_S, SEVERITY_WARNING
from prism.mgmt.auth import MgmtKeyError, read_key_file

__all__ = ["check_cell_addresses", "check_management", "check_rest", "format_address", "parse_address"]

#: Below this a ``state`` flow's progress records would come more often than a cell's tick sends them.
CELL_TICK_S = 0.1
#: Below this a taken-over flow must not have moved more than one full-size TCP window.
SMALL_TOLERANCE_BYTES = 65535


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
