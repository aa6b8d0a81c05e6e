"""A flow's end as the director sees it: the flow-removed report that removes its last FSC entry.

``flow_removed`` wraps ``MirroringDirector.on_flow_removed``: it returns the
director's changes and, when this report ended the flow, the flow's entry
(first packet, profile, both directions' summed counters) as it was just
before the director forgot it, so that telemetry can join first-packet
features with final counters. ``tell_policy`` then gives the entry to the
director's policy (``policy.flow_ended(entry, now)``, if it has one), which is
how the predictive policy's feature history and budget learn outcomes; the
caller sends the director's changes first, so a failing policy can never keep
a group from being deleted. The Ryu shell and the tests both go through these
two calls, so both see flow ends the same way.
"""

from __future__ import annotations

from typing import List, Mapping, Optional, Tuple

from prism.openflow.changes import OfChange
from prism.placement.profiles import FlowEntry


def flow_removed(
    director, now: float, cookie: int, match: Mapping[str, object], packets: int, byte_count: int,
    duration_s: float,
) -> Tuple[List[OfChange], Optional[FlowEntry]]:  # fmt: skip
    """``director.on_flow_removed(...)`` and the ended flow's entry (None if the flow lives on).

    Args:
        director: The switch's ``MirroringDirector``.
        now: Current time (seconds).
        cookie: The removed entry's cookie (the flow_id).
        match: Its match fields.
        packets: Packets it counted.
        byte_count: Bytes it counted.
        duration_s: How long it lived.

    Returns:
        The director's changes, and the flow's entry if this was its last direction.
    """
    entry = director.flows.get(cookie)
    changes = director.on_flow_removed(now, cookie, match, packets, byte_count, duration_s)
    if entry is None or director.flows.get(cookie) is entry:
        return changes, None
    return changes, entry


def tell_policy(director, entry: FlowEntry, now: float) -> None:
    """Give an ended flow to the director's policy, if the policy learns from outcomes."""
    ended = getattr(director.policy, "flow_ended", None)
    if ended is not None:
        ended(entry, now)
