"""What the aging policy knows of a live flow at an age milestone, as one feature row.

A flow is described by what it has shown so far, never by the numbers of its
ports: its age, its packets and bytes (both directions), its rate overall and
since the previous milestone, its mean packet size, its protocol and, at most,
a coarse port class (well-known, registered or dynamic ports). The same
function makes the rows the model is trained on (``models.aging.aging_rows``, from
flow records' milestone columns) and the rows the controller asks about
(``prism.policy.aging.AgingPolicy.redecide``), so both see one definition.

Pure Python, no numpy: the controller calls it once per flow and milestone.
"""

from __future__ import annotations

import math
from typing import List, Tuple

PROTO_TCP = 6
PROTO_UDP = 17

PROTO_CLASS_OTHER = 0
PROTO_CLASS_TCP = 1
PROTO_CLASS_UDP = 2

PORT_CLASS_NONE = 0  #: no ports (ICMP, ...)
PORT_CLASS_WELL_KNOWN = 1  #: one side below 1024
PORT_CLASS_REGISTERED = 2  #: the lower port 1024-49151
PORT_CLASS_DYNAMIC = 3  #: both ports 49152 and above
WELL_KNOWN_PORT_LIMIT = 1024
DYNAMIC_PORT_START = 49152

#: The row's columns, in order (the model's ``feature_names``).
AGING_FEATURE_NAMES: Tuple[str, ...] = (
    "age_s",
    "log_packets",
    "log_bytes",
    "log_rate",  #: packets per second over the whole age
    "log_recent_rate",  #: packets per second since the previous milestone
    "mean_packet_bytes",
    "proto_class",
    "port_class",
)
#: Columns that depend on the port numbers (dropped to test whether they generalise).
PORT_FEATURES = ("port_class",)


def proto_class(proto: int) -> int:
    """TCP, UDP or other (``PROTO_CLASS_*``)."""
    return PROTO_CLASS_TCP if proto == PROTO_TCP else PROTO_CLASS_UDP if proto == PROTO_UDP else PROTO_CLASS_OTHER


def port_class(sport: int, dport: int) -> int:
    """The coarse class of a flow's ports (``PORT_CLASS_*``), by the lower of the two."""
    low = min(sport, dport)
    if low <= 0:
        return PORT_CLASS_NONE
    if low < WELL_KNOWN_PORT_LIMIT:
        return PORT_CLASS_WELL_KNOWN
    return PORT_CLASS_REGISTERED if low < DYNAMIC_PORT_START else PORT_CLASS_DYNAMIC


def aging_row(age_s: float, packets: float, bytes_: float, previous_age_s: float, previous_packets: float,
              proto_cls: int, port_cls: int) -> List[float]:  # fmt: skip
    """The feature row of a flow at age ``age_s`` (columns: ``AGING_FEATURE_NAMES``).

    Args:
        age_s: The milestone's age (s, > 0).
        packets: Packets so far, both directions (at least the first).
        bytes_: Bytes so far.
        previous_age_s: Age of the previous counters (0: birth).
        previous_packets: Packets at ``previous_age_s`` (0 at birth: the first packet counts as recent).
        proto_cls: ``proto_class(proto)``.
        port_cls: ``port_class(sport, dport)``.
    """
    packets = max(float(packets), 1.0)
    bytes_ = max(float(bytes_), 0.0)
    age = max(float(age_s), 1e-6)
    recent_span = max(age - float(previous_age_s), 1e-6)
    recent = max(packets - float(previous_packets), 0.0)
    return [
        age,
        math.log(packets),
        math.log1p(bytes_),
        math.log(packets / age),
        math.log1p(recent / recent_span),
        bytes_ / packets,
        float(proto_cls),
        float(port_cls),
    ]
