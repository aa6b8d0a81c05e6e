"""What the decision core asks the shell to send besides OpenFlow: management messages to cells.

The director's failover methods return a list of *decisions*: OpenFlow change
descriptions (``prism.openflow.changes``) for the switch and :class:`MgmtMessage` for
a cell, in the order they must be sent. The Ryu shell sends the first kind to
the datapath and encodes the second with ``prism.mgmt.protocol.encode`` to the cell's
management address. The message bodies follow the contract in ``prism.mgmt.protocol``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, List, Mapping, Sequence, Tuple, Union

from prism.openflow.changes import OfChange
from prism.placement.profiles import MODE_FULL, MirroringProfile

#: Flows per ``assign`` message: about 40 bytes each compressed, far below a datagram.
ASSIGN_BATCH_FLOWS = 400


@dataclass(frozen=True)
class MgmtMessage:
    """One management message for one cell.

    Attributes:
        cell_id: The cell it goes to.
        message: The message (a dict with ``type``, as ``prism.mgmt.protocol.encode`` takes it).
    """

    cell_id: str
    message: Mapping[str, Any]

    @property
    def type(self) -> str:
        """The message's ``type``."""
        return str(self.message.get("type"))


Decision = Union[OfChange, MgmtMessage]


def split_decisions(decisions: Iterable[Decision]) -> Tuple[List[OfChange], List[MgmtMessage]]:
    """OpenFlow changes and management messages, each in their original order."""
    changes: List[OfChange] = []
    messages: List[MgmtMessage] = []
    for decision in decisions:
        (messages if isinstance(decision, MgmtMessage) else changes).append(decision)
    return changes, messages


def profile_entry(profile: MirroringProfile) -> List[Any]:
    """A profile as the ``profiles`` message spells it: ``[primary_cell, [mirror_cells...]]``."""
    return [profile.primary_cell, list(profile.mirror_cells)]


def profiles_message(epoch: int, profiles: Mapping[int, MirroringProfile], full: bool) -> dict:
    """A ``profiles`` message: profile_id (the ALL group id, as a decimal string key) -> entry."""
    return {
        "type": "profiles",
        "epoch": epoch,
        "full": full,
        "profiles": {str(profile_id): profile_entry(p) for profile_id, p in sorted(profiles.items())},
    }


def seed_message(profile_id: int, target: str) -> dict:
    """A ``seed`` message for a profile's primary: snapshot the profile's flows to ``target``.

    (A per-flow seed, with ``flows``, is ``prism.director.flow_seeds.FlowSeed.message``.)
    """
    return {"type": "seed", "profile_id": profile_id, "target": target}


def assign_entry(flow_id: int, profile_id: int, key: object, mode: str = MODE_FULL) -> Tuple[Any, ...]:
    """One flow of an ``assign`` message: ``(flow_id, profile_id, key_text)``, with the mode unless ``full``."""
    if mode == MODE_FULL:
        return (flow_id, profile_id, str(key))
    return (flow_id, profile_id, str(key), mode)


def assign_messages(flows: Sequence[Tuple[Any, ...]]) -> List[dict]:
    """``assign`` messages for ``(flow_id, profile_id, key_text[, mode])`` tuples, ASSIGN_BATCH_FLOWS per message."""
    return [
        {"type": "assign", "flows": [list(flow) for flow in flows[start : start + ASSIGN_BATCH_FLOWS]]}
        for start in range(0, len(flows), ASSIGN_BATCH_FLOWS)
    ]


def directory_message(epoch: int, addresses: Mapping[str, Tuple[str, int]], live: Iterable[str]) -> dict:
    """A ``directory`` message: every cell's management address and which cells are live."""
    return {
        "type": "directory",
        "epoch": epoch,
        "cells": {cell_id: [host, port] for cell_id, (host, port) in sorted(addresses.items())},
        "live": sorted(live),
    }


def admin_message(kind: str, cell_id: str) -> dict:
    """A ``drain`` or ``restore`` notice for the cell concerned (informational)."""
    if kind not in ("drain", "restore"):
        raise ValueError(f"admin message kind must be drain or restore, not {kind!r}")
    return {"type": kind, "target": cell_id}
