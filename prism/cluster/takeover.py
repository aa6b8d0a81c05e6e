"""A new master's view of a switch it takes over: what to adopt from the switch's tables, what to remove.

The switch keeps forwarding while its master changes. The new master reads
its groups (group description) and flow entries (flow statistics), and with
what etcd holds (``prism.cluster.shared_state.SwitchShared``) rebuilds the director's
copy of them without sending a single change to a live group or entry:
:func:`plan_takeover` decides, ``MirroringDirector.adopt`` applies.

A profile is read back from the switch itself: the FAST_FAILOVER group's
buckets watch the primary's port, then each mirror's. Only groups that no
flow entry uses any more are deleted (their flows ended while no master was
there to hear it).

A flow's mirroring mode (issue 8) is read back from its FSC entries too: a
``full`` entry applies the profile's ALL group; a ``state`` TCP entry writes
the ALL group id into the metadata and goes to TABLE_PROFILE; a ``state``
entry of another protocol applies the FAST_FAILOVER group. A group whose
TABLE_PROFILE entries are installed (cookie COOKIE_PROFILE_BASE + its id)
is adopted with them, so that they are deleted with it and not added twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Set, Tuple

from prism.flows.identity import FlowKey, key_from_match
from prism.openflow.changes import (
    COOKIE_PIPELINE,
    COOKIE_PROFILE_BASE,
    FF_GROUP_OFFSET,
    MAX_PROFILE_GROUPS,
    METADATA_PROFILE_MASK,
    PROFILE_GROUP_BASE,
    TABLE_CLASSIFY,
    TABLE_FSC,
    TABLE_PROFILE,
)
from prism.placement.profiles import MODE_FULL, MODE_STATE, MirroringProfile
from prism.cluster.shared_state import SwitchShared

GROUP_ALL = "all"
GROUP_FAST_FAILOVER = "ff"


@dataclass(frozen=True)
class SwitchBucket:
    """One bucket as the switch reports it."""

    watch_port: Optional[int] = None
    output_ports: Tuple[int, ...] = ()
    group_ids: Tuple[int, ...] = ()


@dataclass(frozen=True)
class SwitchGroup:
    """One group as the switch reports it (``group_type``: GROUP_ALL, GROUP_FAST_FAILOVER or other text)."""

    group_id: int
    group_type: str
    buckets: Tuple[SwitchBucket, ...] = ()


@dataclass(frozen=True)
class SwitchFlow:
    """One flow entry as the switch reports it."""

    table_id: int
    cookie: int
    match: Mapping[str, object]
    group_ids: Tuple[int, ...] = ()
    goto_table: Optional[int] = None
    metadata: Optional[int] = None  #: the value a write-metadata instruction writes


@dataclass(frozen=True)
class TakeoverPlan:
    """What a new master adopts and removes.

    Attributes:
        has_pipeline: Table 0 holds PRISM's pipeline (False: a fresh switch, converge it from scratch).
        groups: ALL group id -> (profile, target replication factor) to adopt.
        pending: ALL group id -> its mirrors still waiting for their seed (from etcd).
        flows: ``(key, forward, group_id, mode)`` per FSC entry to adopt.
        state_entries: ALL group ids whose TABLE_PROFILE entries the switch holds.
        orphan_groups: ALL group ids no FSC entry uses (deleted with their FAST_FAILOVER group).
        stray_ff_groups: FAST_FAILOVER groups without their ALL group (deleted).
        unreadable_groups: ALL groups in use whose profile could not be read (kept, not adopted).
        unreadable_flows: FSC entries whose match or group could not be read (left to idle out).
        duplicate_profiles: Profiles held by more than one adopted group (a failover leaves such pairs).
    """

    has_pipeline: bool
    groups: Mapping[int, Tuple[MirroringProfile, int]] = field(default_factory=dict)
    pending: Mapping[int, Tuple[str, ...]] = field(default_factory=dict)
    flows: Tuple[Tuple[FlowKey, bool, int, str], ...] = ()
    state_entries: Tuple[int, ...] = ()
    orphan_groups: Tuple[int, ...] = ()
    stray_ff_groups: Tuple[int, ...] = ()
    unreadable_groups: Tuple[int, ...] = ()
    unreadable_flows: int = 0
    duplicate_profiles: int = 0


def is_profile_group(group_id: int) -> bool:
    """An ALL group id in PRISM's profile range."""
    return PROFILE_GROUP_BASE <= group_id < PROFILE_GROUP_BASE + MAX_PROFILE_GROUPS


def group_and_mode(entry: SwitchFlow) -> Tuple[Optional[int], str]:
    """The ALL group id an FSC entry sends to, and the flow's mode (None: no profile group found)."""
    if entry.goto_table == TABLE_PROFILE and entry.metadata is not None:
        group_id = entry.metadata & METADATA_PROFILE_MASK
        return (group_id, MODE_STATE) if is_profile_group(group_id) else (None, MODE_STATE)
    for group_id in entry.group_ids:
        if is_profile_group(group_id):
            return group_id, MODE_FULL
        if is_profile_group(group_id - FF_GROUP_OFFSET):
            return group_id - FF_GROUP_OFFSET, MODE_STATE
    return None, MODE_FULL


def profile_from_ff(group: SwitchGroup, cell_of_port: Mapping[int, str]) -> Optional[MirroringProfile]:
    """The profile a FAST_FAILOVER group encodes (watch ports: primary, then mirrors), or None."""
    cells = []
    for bucket in group.buckets:
        cell_id = cell_of_port.get(bucket.watch_port) if bucket.watch_port is not None else None
        if cell_id is None or cell_id in cells:
            return None
        cells.append(cell_id)
    if not cells:
        return None
    return MirroringProfile.of(*cells)


def plan_takeover(
    cell_of_port: Mapping[int, str],
    groups: List[SwitchGroup],
    flows: List[SwitchFlow],
    shared: SwitchShared = SwitchShared(),
) -> TakeoverPlan:
    """Decide what to adopt from the switch's tables.

    Args:
        cell_of_port: The switch's cell ports -> cell ids.
        groups: Every group the switch reported.
        flows: Every flow entry the switch reported (all tables).
        shared: What etcd holds about the switch.
    """
    has_pipeline = any(f.table_id == TABLE_CLASSIFY and f.cookie == COOKIE_PIPELINE for f in flows)
    by_id = {g.group_id: g for g in groups}
    used: Dict[int, int] = {}
    fsc: List[Tuple[FlowKey, bool, int, str]] = []
    profile_entries: Set[int] = set()
    unreadable_flows = 0
    for entry in flows:
        if entry.table_id == TABLE_PROFILE and is_profile_group(entry.cookie - COOKIE_PROFILE_BASE):
            profile_entries.add(entry.cookie - COOKIE_PROFILE_BASE)
        if entry.table_id != TABLE_FSC or entry.cookie == COOKIE_PIPELINE:
            continue
        group_id, mode = group_and_mode(entry)
        try:
            key, forward = key_from_match(dict(entry.match))
        except ValueError:
            key = None
        if group_id is None or key is None or key.flow_id != entry.cookie or group_id not in by_id:
            unreadable_flows += 1
            continue
        fsc.append((key, forward, group_id, mode))
        used[group_id] = used.get(group_id, 0) + 1
    adopted: Dict[int, Tuple[MirroringProfile, int]] = {}
    pending: Dict[int, Tuple[str, ...]] = {}
    orphans, unreadable = [], []
    for group in sorted(groups, key=lambda g: g.group_id):
        if group.group_type != GROUP_ALL or not is_profile_group(group.group_id):
            continue
        if group.group_id not in used:
            orphans.append(group.group_id)
            continue
        ff = by_id.get(group.group_id + FF_GROUP_OFFSET)
        profile = profile_from_ff(ff, cell_of_port) if ff is not None else None
        known = shared.groups.get(group.group_id)
        if profile is None and known is not None:
            profile = known.profile
        if profile is None:
            unreadable.append(group.group_id)
            continue
        same = known is not None and known.profile == profile  # etcd describes what the switch holds
        adopted[group.group_id] = (profile, known.target_rf if same else profile.replication_factor)
        if same and known.pending:
            pending[group.group_id] = known.pending
    fsc = [flow for flow in fsc if flow[2] in adopted]
    all_ids: Set[int] = {g.group_id for g in groups if g.group_type == GROUP_ALL}
    stray_ff = sorted(
        g.group_id for g in groups
        if g.group_type == GROUP_FAST_FAILOVER and is_profile_group(g.group_id - FF_GROUP_OFFSET)
        and g.group_id - FF_GROUP_OFFSET not in all_ids
    )  # fmt: skip
    profiles = [profile for profile, _rf in adopted.values()]
    return TakeoverPlan(
        has_pipeline=has_pipeline,
        groups=adopted,
        pending=pending,
        flows=tuple(fsc),
        state_entries=tuple(sorted(group_id for group_id in profile_entries if group_id in adopted)),
        orphan_groups=tuple(orphans),
        stray_ff_groups=tuple(stray_ff),
        unreadable_groups=tuple(unreadable),
        unreadable_flows=unreadable_flows,
        duplicate_profiles=len(profiles) - len(set(profiles)),
    )
