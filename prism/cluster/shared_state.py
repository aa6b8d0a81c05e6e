"""What several controllers keep in etcd, as keys and text values: leases, claims, group numbering, verdicts.

Layout under ``/prism/<cluster>/``::

    controllers/<id>                 lease key of a live controller: {"switches": [dpid, ...]}
    masters/<dpid:016x>              the last claim of a switch: {"controller": id}; the revision
                                     of that write is the switch's generation id (fencing)
    switches/<dpid:016x>/groups/<group_id:08x>   {"cells": [primary, mirror...], "target_rf": n,
                                     "pending": [mirrors not yet seeded]}
    switches/<dpid:016x>/cells       {"down": [...], "draining": [...]}: the cell verdicts

A new master reads a switch's groups and flows from the switch itself; from
etcd it takes only what the switch cannot say: the replication factor a group
should have, which of its mirrors still wait for their seed, and which cells
are dead or drained. All of it is written by the
master after the fact, in batches (:class:`Publisher`): no flow waits for etcd.
Bad values (another writer, an older version) raise :class:`SharedStateError`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Dict, FrozenSet, Iterable, List, Mapping, Optional, Tuple

from prism.cluster.mastership import Beat
from prism.placement.profiles import MirroringProfile

KEY_ROOT = "/prism"


class SharedStateError(ValueError):
    """A value in etcd that is not what PRISM writes there."""


def cluster_prefix(cluster: str) -> str:
    return f"{KEY_ROOT}/{cluster}/"


def controllers_prefix(cluster: str) -> str:
    return f"{cluster_prefix(cluster)}controllers/"


def controller_key(cluster: str, controller_id: str) -> str:
    return controllers_prefix(cluster) + controller_id


def masters_prefix(cluster: str) -> str:
    return f"{cluster_prefix(cluster)}masters/"


def claim_key(cluster: str, dp_id: int) -> str:
    return f"{masters_prefix(cluster)}{dp_id:016x}"


def switch_prefix(cluster: str, dp_id: int) -> str:
    return f"{cluster_prefix(cluster)}switches/{dp_id:016x}/"


def group_key(cluster: str, dp_id: int, group_id: int) -> str:
    return f"{switch_prefix(cluster, dp_id)}groups/{group_id:08x}"


def verdicts_key(cluster: str, dp_id: int) -> str:
    return f"{switch_prefix(cluster, dp_id)}cells"


def _json(text: str, what: str) -> dict:
    try:
        value = json.loads(text)
    except (TypeError, ValueError) as exc:
        raise SharedStateError(f"{what}: not JSON ({exc})") from None
    if not isinstance(value, dict):
        raise SharedStateError(f"{what}: expected an object, got {type(value).__name__}")
    return value


def _names(value, what: str) -> Tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise SharedStateError(f"{what}: expected a list of cell ids, got {value!r}")
    return tuple(value)


# --- controller lease keys ----------------------------------------------------------------
def encode_beat(switches: Iterable[int]) -> str:
    return json.dumps({"switches": sorted(set(switches))}, separators=(",", ":"))


def decode_beat(text: str, revision: int) -> Beat:
    value = _json(text, "controller key")
    switches = value.get("switches", [])
    if not isinstance(switches, list) or not all(isinstance(s, int) and s >= 0 for s in switches):
        raise SharedStateError(f"controller key: switches must be a list of dpids, got {switches!r}")
    return Beat(int(revision), frozenset(switches))


def beats_from(items: Mapping[str, Tuple[str, int]], cluster: str) -> Dict[str, Beat]:
    """Controller id -> beat from a read of :func:`controllers_prefix` (key -> (value, mod_revision)).

    Unreadable keys are left out (that controller counts as silent).
    """
    prefix = controllers_prefix(cluster)
    beats = {}
    for key, (text, revision) in items.items():
        if not key.startswith(prefix) or len(key) == len(prefix):
            continue
        try:
            beats[key[len(prefix):]] = decode_beat(text, revision)
        except SharedStateError:
            continue
    return beats


def encode_claim(controller_id: str) -> str:
    return json.dumps({"controller": controller_id}, separators=(",", ":"))


def claims_from(items: Mapping[str, Tuple[str, int]], cluster: str) -> Dict[int, Tuple[str, int]]:
    """dpid -> (controller id, generation) from a read of :func:`masters_prefix`."""
    prefix = masters_prefix(cluster)
    claims = {}
    for key, (text, revision) in items.items():
        try:
            dp_id = int(key[len(prefix):], 16)
            controller_id = _json(text, "claim").get("controller")
        except (ValueError, SharedStateError):
            continue
        if isinstance(controller_id, str):
            claims[dp_id] = (controller_id, int(revision))
    return claims


# --- a switch's state ------------------------------------------------------------------------
@dataclass(frozen=True)
class SharedGroup:
    """A group as a master published it: its profile, target replication factor, unseeded mirrors."""

    profile: MirroringProfile
    target_rf: int
    pending: Tuple[str, ...] = ()


def encode_group(profile: MirroringProfile, target_rf: int, pending: Iterable[str] = ()) -> str:
    value = {"cells": list(profile.cells), "target_rf": target_rf}
    if pending:
        value["pending"] = sorted(pending)
    return json.dumps(value, separators=(",", ":"))


def decode_group(text: str) -> SharedGroup:
    value = _json(text, "group")
    cells = _names(value.get("cells"), "group cells")
    target_rf = value.get("target_rf")
    if not cells or not isinstance(target_rf, int) or target_rf < 0:
        raise SharedStateError(f"group: needs cells and a target_rf >= 0, got {value!r}")
    pending = _names(value.get("pending", []), "pending mirrors")
    try:
        profile = MirroringProfile.of(*cells)
    except ValueError as exc:
        raise SharedStateError(f"group: {exc}") from None
    if not set(pending) <= set(profile.mirror_cells):
        raise SharedStateError(f"group: pending mirrors {pending} are not among {profile.mirror_cells}")
    return SharedGroup(profile, target_rf, pending)


def encode_verdicts(down: Iterable[str], draining: Iterable[str]) -> str:
    return json.dumps({"down": sorted(down), "draining": sorted(draining)}, separators=(",", ":"))


def decode_verdicts(text: str) -> Tuple[FrozenSet[str], FrozenSet[str]]:
    value = _json(text, "cell verdicts")
    return (frozenset(_names(value.get("down", []), "down cells")),
            frozenset(_names(value.get("draining", []), "draining cells")))  # fmt: skip


@dataclass(frozen=True)
class SwitchShared:
    """What etcd holds about one switch.

    Attributes:
        groups: group id -> SharedGroup, as the last master published it.
        down: Cells found dead.
        draining: Cells being drained.
        unreadable: Keys whose values were not PRISM's (left out).
    """

    groups: Mapping[int, SharedGroup] = field(default_factory=dict)
    down: FrozenSet[str] = frozenset()
    draining: FrozenSet[str] = frozenset()
    unreadable: Tuple[str, ...] = ()


def switch_state_from(items: Mapping[str, Tuple[str, int]], cluster: str, dp_id: int) -> SwitchShared:
    """The switch's shared state from a read of :func:`switch_prefix` (key -> (value, mod_revision))."""
    groups_prefix = f"{switch_prefix(cluster, dp_id)}groups/"
    verdicts = verdicts_key(cluster, dp_id)
    groups: Dict[int, SharedGroup] = {}
    down: FrozenSet[str] = frozenset()
    draining: FrozenSet[str] = frozenset()
    unreadable: List[str] = []
    for key, (text, _revision) in sorted(items.items()):
        try:
            if key.startswith(groups_prefix):
                groups[int(key[len(groups_prefix):], 16)] = decode_group(text)
            elif key == verdicts:
                down, draining = decode_verdicts(text)
        except (ValueError, SharedStateError):
            unreadable.append(key)
    return SwitchShared(groups, down, draining, tuple(unreadable))


def switch_state_values(
    cluster: str, dp_id: int, groups: Iterable[Tuple[int, MirroringProfile, int, Iterable[str]]],
    down: Iterable[str], draining: Iterable[str],
) -> Dict[str, str]:
    """Key -> value of everything a master publishes about a switch now.

    ``groups``: ``(group_id, profile, target_rf, pending_mirrors)`` per group.
    """
    values = {group_key(cluster, dp_id, gid): encode_group(profile, rf, pending)
              for gid, profile, rf, pending in groups}  # fmt: skip
    values[verdicts_key(cluster, dp_id)] = encode_verdicts(down, draining)
    return values


class Publisher:
    """What was last written under one prefix, so that only differences are sent."""

    def __init__(self) -> None:
        self._written: Dict[str, str] = {}

    def changes(self, current: Mapping[str, str]) -> Tuple[Dict[str, str], List[str]]:
        """``(puts, deletes)`` that bring etcd from what was written to ``current``."""
        puts = {k: v for k, v in current.items() if self._written.get(k) != v}
        deletes = sorted(k for k in self._written if k not in current)
        return puts, deletes

    def written(self, puts: Mapping[str, str], deletes: Iterable[str]) -> None:
        """Those changes reached etcd."""
        self._written.update(puts)
        for key in deletes:
            self._written.pop(key, None)

    def reset(self, current: Optional[Mapping[str, str]] = None) -> None:
        """Forget what was written (``current``: what etcd holds now, as read)."""
        self._written = dict(current or {})
