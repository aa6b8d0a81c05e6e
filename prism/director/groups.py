"""A switch's profile groups: id allocation, reuse by new flows, reference counts, seeding state.

One profile is one ALL group (what FSC entries apply) chained to one
FAST_FAILOVER group (``group_id + FF_GROUP_OFFSET``). A failover rewrites a
group *in place* (same id, new profile), so two groups can come to hold equal
profiles; both are kept (their flows are not touched) and new flows reuse the
lowest id.

A profile with ``state``-mode TCP flows also has entries in TABLE_PROFILE
(:meth:`GroupTable.state_entries`): its FSC entries write its ALL group id
into the metadata, and there SYN, FIN and RST (one entry per flag and IP
version) go to the ALL group, every other packet to the FAST_FAILOVER group.
They are installed with the first such flow and deleted with the groups; a
failover rewrites the groups only (same ids), so they stay right.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Dict, Iterator, List, Mapping, Optional, Set, Tuple

from prism.openflow.changes import (
    COOKIE_ALL_MASK,
    COOKIE_PROFILE_BASE,
    FF_GROUP_OFFSET,
    METADATA_PROFILE_MASK,
    PRIORITY_HIGH,
    PRIORITY_MID,
    STATE_TCP_FLAGS,
    TABLE_PROFILE,
    MAX_PROFILE_GROUPS,
    MIRROR_MAC,
    PROFILE_GROUP_BASE,
    Bucket,
    Command,
    FlowMod,
    GroupAction,
    GroupMod,
    GroupType,
    Match,
    OfChange,
    Output,
    SetField,
)
from prism.placement.profiles import MirroringProfile

ETH_TYPES = (0x0800, 0x86DD)  #: IPv4, IPv6: the tcp_flags entries exist once per IP version
IP_PROTO_TCP = 6
#: Entries a profile holds in TABLE_PROFILE: one per state flag and IP version, and the default.
STATE_ENTRIES_PER_PROFILE = len(STATE_TCP_FLAGS) * len(ETH_TYPES) + 1


@dataclass(frozen=True)
class ProfileGroup:
    """The groups of one profile: an ALL group and the FAST_FAILOVER group it applies.

    Attributes:
        profile: The profile.
        group_id: Its ALL group (what FSC entries apply).
        refcount: Flows in the cache that use it.
        target_replication_factor: Mirrors it should have (what it was created with).
        pending_mirrors: Mirrors installed but not yet seeded (not counted as replicas).
    """

    profile: MirroringProfile
    group_id: int
    refcount: int
    target_replication_factor: int = 0
    pending_mirrors: Tuple[str, ...] = ()

    @property
    def ff_group_id(self) -> int:
        """Its FAST_FAILOVER group."""
        return self.group_id + FF_GROUP_OFFSET

    @property
    def confirmed_mirrors(self) -> Tuple[str, ...]:
        """Mirrors that hold the flows' state (counted as replicas)."""
        return tuple(m for m in self.profile.mirror_cells if m not in self.pending_mirrors)


@dataclass(frozen=True)
class PendingSeed:
    """A mirror waiting for its snapshot: who was asked to send it, when, how many times."""

    source: str
    sent_at: float
    attempts: int = 1


@dataclass
class GroupState:
    """Mutable bookkeeping of one installed profile group (owned by a GroupTable)."""

    group_id: int
    profile: MirroringProfile
    target_rf: int
    refcount: int = 0
    pending: Dict[str, PendingSeed] = field(default_factory=dict)
    state_entries: bool = False  #: its TABLE_PROFILE entries are installed

    def snapshot(self) -> ProfileGroup:
        """The public, frozen view."""
        pending = tuple(m for m in self.profile.mirror_cells if m in self.pending)
        return ProfileGroup(self.profile, self.group_id, self.refcount, self.target_rf, pending)


class GroupTable:
    """The profile groups installed on one switch.

    Args:
        cell_ports: Cell id -> switch port, for the groups' buckets.
    """

    def __init__(self, cell_ports: Mapping[str, int]) -> None:
        self._cell_ports = dict(cell_ports)
        self._groups: Dict[int, GroupState] = {}
        self._by_profile: Dict[MirroringProfile, Set[int]] = {}
        self._free_ids: List[int] = []
        self._next_id = PROFILE_GROUP_BASE

    # --- lookups -----------------------------------------------------------------------
    def get(self, group_id: int) -> Optional[GroupState]:
        """The group, or None."""
        return self._groups.get(group_id)

    def group_for(self, profile: MirroringProfile) -> Optional[int]:
        """The group new flows of ``profile`` join (the lowest id holding it), or None."""
        ids = self._by_profile.get(profile)
        return min(ids) if ids else None

    def naming(self, cell_id: str) -> List[GroupState]:
        """Groups whose profile names ``cell_id``, by id."""
        return [g for _, g in sorted(self._groups.items()) if cell_id in g.profile.cells]

    def __iter__(self) -> Iterator[GroupState]:
        return iter([g for _, g in sorted(self._groups.items())])

    def __len__(self) -> int:
        return len(self._groups)

    # --- changes -------------------------------------------------------------------------
    def create(self, profile: MirroringProfile) -> Optional[GroupState]:
        """A new group for ``profile`` (target rf = its rf), or None if every group id is taken."""
        if self._free_ids:
            group_id = heapq.heappop(self._free_ids)
        elif self._next_id < PROFILE_GROUP_BASE + MAX_PROFILE_GROUPS:
            group_id = self._next_id
            self._next_id += 1
        else:
            return None
        group = GroupState(group_id, profile, profile.replication_factor)
        self._groups[group_id] = group
        self._by_profile.setdefault(profile, set()).add(group_id)
        return group

    def adopt(
        self, group_id: int, profile: MirroringProfile, target_rf: int,
        pending: Mapping[str, PendingSeed] = MappingProxyType({}),
    ) -> GroupState:
        """Take in a group the switch already holds (a takeover), keeping its id.

        ``pending``: its mirrors still waiting for their seed.

        Raises:
            ValueError: the id is outside the profile range or already taken.
        """
        if not PROFILE_GROUP_BASE <= group_id < PROFILE_GROUP_BASE + MAX_PROFILE_GROUPS:
            raise ValueError(f"group id {group_id:#x} is not a profile group id")
        if group_id in self._groups:
            raise ValueError(f"group {group_id:#x} is already in the table")
        group = GroupState(group_id, profile, target_rf, pending=dict(pending))
        self._groups[group_id] = group
        self._by_profile.setdefault(profile, set()).add(group_id)
        if group_id >= self._next_id:
            # ids skipped below it stay unused until groups are released (no list of them is built:
            # an adopted id near the top of the range would make it millions long)
            self._next_id = group_id + 1
        elif group_id in self._free_ids:
            self._free_ids.remove(group_id)
            heapq.heapify(self._free_ids)
        return group

    def rewrite(self, group_id: int, profile: MirroringProfile) -> None:
        """Give a group a new profile (same id: its flows keep pointing at it)."""
        group = self._groups[group_id]
        self._unindex(group)
        group.profile = profile
        self._by_profile.setdefault(profile, set()).add(group_id)

    def release(self, group_id: int) -> List[OfChange]:
        """Forget a group; returns the deletions to send.

        Its TABLE_PROFILE entries first (they apply both groups), then the ALL
        group (it forwards to the FF group), then the FF group.
        """
        group = self._groups.pop(group_id)
        self._unindex(group)
        heapq.heappush(self._free_ids, group_id)
        changes: List[OfChange] = []
        if group.state_entries:
            changes.append(
                FlowMod(
                    Command.DELETE, TABLE_PROFILE, cookie=COOKIE_PROFILE_BASE + group_id, cookie_mask=COOKIE_ALL_MASK
                )
            )
        return changes + [
            GroupMod(Command.DELETE, GroupType.ALL, group_id),
            GroupMod(Command.DELETE, GroupType.FAST_FAILOVER, group_id + FF_GROUP_OFFSET),
        ]

    def state_entries(self, group_id: int) -> List[FlowMod]:
        """The group's TABLE_PROFILE entries, the first time they are asked for (then nothing).

        Per IP version and flag in STATE_TCP_FLAGS, a TCP packet whose metadata
        holds the group id and that has the flag goes to the ALL group (the
        primary and a copy to each mirror); any other packet with that
        metadata to the FAST_FAILOVER group (the primary only).
        """
        group = self._groups[group_id]
        if group.state_entries:
            return []
        group.state_entries = True
        cookie = COOKIE_PROFILE_BASE + group_id
        metadata = (group_id, METADATA_PROFILE_MASK)
        entries = [
            FlowMod(
                Command.ADD, TABLE_PROFILE,
                Match.of(metadata=metadata, eth_type=eth_type, ip_proto=IP_PROTO_TCP, tcp_flags=(flag, flag)),
                PRIORITY_HIGH, (GroupAction(group_id),), cookie=cookie,
            )  # fmt: skip
            for eth_type in ETH_TYPES
            for flag in STATE_TCP_FLAGS
        ]
        entries.append(
            FlowMod(
                Command.ADD, TABLE_PROFILE, Match.of(metadata=metadata), PRIORITY_MID,
                (GroupAction(group_id + FF_GROUP_OFFSET),), cookie=cookie,
            )  # fmt: skip
        )
        return entries

    def _unindex(self, group: GroupState) -> None:
        ids = self._by_profile[group.profile]
        ids.discard(group.group_id)
        if not ids:
            del self._by_profile[group.profile]

    # --- OpenFlow -------------------------------------------------------------------------
    def group_mods(self, profile: MirroringProfile, group_id: int, command: Command) -> List[GroupMod]:
        """The FAST_FAILOVER then the ALL group of a profile (ADD or MODIFY, in a safe order).

        FF buckets watch the primary's port, then each mirror's, each sending
        there. The ALL group applies the FF group, then sends each mirror a
        copy marked with ``MIRROR_MAC``.
        """
        primary_port = self._cell_ports[profile.primary_cell]
        mirror_ports = [self._cell_ports[cell_id] for cell_id in profile.mirror_cells]
        ff_group_id = group_id + FF_GROUP_OFFSET
        ff_buckets = tuple(Bucket((Output(port),), watch_port=port) for port in [primary_port, *mirror_ports])
        all_buckets = (Bucket((GroupAction(ff_group_id),)),) + tuple(
            Bucket((SetField("eth_dst", MIRROR_MAC), Output(port))) for port in mirror_ports
        )
        return [
            GroupMod(command, GroupType.FAST_FAILOVER, ff_group_id, ff_buckets),
            GroupMod(command, GroupType.ALL, group_id, all_buckets),
        ]
