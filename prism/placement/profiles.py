"""Mirroring profiles and the controller's copy of the Flow State Cache (FSC)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, FrozenSet, Iterable, Iterator, List, Optional, Set, Tuple

from prism.flows.identity import FlowKey, PacketInfo

#: Both directions of a flow: True = a-side to b-side (``PacketInfo.forward``).
BOTH_DIRECTIONS: FrozenSet[bool] = frozenset((True, False))

#: Mirroring modes of a flow. ``full``: the switch copies every packet to the
#: mirrors. ``state``: it copies only the packets that change what a mirror
#: must know (TCP SYN, FIN and RST; for other protocols the first packet) and
#: the primary's State Mirroring Module replicates the rest as records.
MODE_FULL = "full"
MODE_STATE = "state"
MODES: Tuple[str, ...] = (MODE_FULL, MODE_STATE)


def check_mode(mode: object) -> str:
    """``mode`` if it is one of MODES.

    Raises:
        ValueError: anything else.
    """
    if mode not in MODES:
        raise ValueError(f"mirroring mode must be one of {', '.join(MODES)}, not {mode!r}")
    return str(mode)


@dataclass(frozen=True)
class MirroringProfile:
    """Where a flow's packets go: one primary cell and its mirror cells.

    Attributes:
        primary_cell: The cell that processes and forwards the flow.
        mirror_cells: Cells that receive marked copies to keep the flow's state,
            in takeover order (the first becomes primary if the primary fails).
        replication_factor: Number of mirrors; must equal ``len(mirror_cells)``.

    Raises:
        ValueError: empty or non-str cell ids, the primary among the mirrors,
            duplicate mirrors, or a replication_factor that does not match.
    """

    primary_cell: str
    mirror_cells: Tuple[str, ...] = ()
    replication_factor: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.mirror_cells, tuple):
            object.__setattr__(self, "mirror_cells", tuple(self.mirror_cells))
        for cell_id in (self.primary_cell, *self.mirror_cells):
            if not isinstance(cell_id, str) or not cell_id:
                raise ValueError(f"cell ids must be non-empty str, not {cell_id!r}")
        if self.primary_cell in self.mirror_cells:
            raise ValueError(
                f"primary cell {self.primary_cell!r} is also a mirror in {self.mirror_cells}"
            )
        if len(set(self.mirror_cells)) != len(self.mirror_cells):
            raise ValueError(f"duplicate mirror cells in {self.mirror_cells}")
        if isinstance(self.replication_factor, bool) or self.replication_factor != len(
            self.mirror_cells
        ):
            raise ValueError(
                f"replication_factor {self.replication_factor!r} does not match "
                f"{len(self.mirror_cells)} mirror cells {self.mirror_cells}"
            )

    @classmethod
    def of(cls, primary_cell: str, *mirror_cells: str) -> "MirroringProfile":
        """``MirroringProfile.of('c1', 'c2', 'c3')``: replication_factor follows the mirrors."""
        return cls(primary_cell, tuple(mirror_cells), len(mirror_cells))

    @classmethod
    def from_order(cls, ranked_cells: Iterable[str], replication_factor: int) -> "MirroringProfile":
        """The profile of a ring order: first cell primary, the next ones mirrors.

        Args:
            ranked_cells: Cells best first (``HashRing.order``).
            replication_factor: Mirrors wanted.

        Returns:
            The profile.

        Raises:
            ValueError: fewer than ``replication_factor + 1`` cells.
        """
        ranked = list(ranked_cells)
        if replication_factor < 0 or len(ranked) < replication_factor + 1:
            raise ValueError(
                f"replication_factor {replication_factor} needs {replication_factor + 1} "
                f"cells, {len(ranked)} available: {ranked}"
            )
        return cls.of(ranked[0], *ranked[1 : replication_factor + 1])

    @property
    def cells(self) -> Tuple[str, ...]:
        """The primary then the mirrors."""
        return (self.primary_cell, *self.mirror_cells)

    def __str__(self) -> str:
        if not self.mirror_cells:
            return f"{self.primary_cell} (no mirrors)"
        return f"{self.primary_cell} -> [{', '.join(self.mirror_cells)}] (rf={self.replication_factor})"


@dataclass(slots=True)
class FlowEntry:
    """What the controller knows about one flow in a switch's FSC.

    Mutable bookkeeping owned by a :class:`FlowStateCache`; change it through
    the cache's methods so that its indexes stay right.

    Attributes:
        key: The flow's canonical key.
        profile: Its mirroring profile.
        group_id: The group its FSC entries point to.
        created_at: When the flow was installed (the caller's clock, seconds).
        last_seen: Last time the controller heard of it.
        directions: Directions whose FSC entry is still installed.
        first_packet: The first packet, kept for telemetry (features at start).
        packets: Packets reported by flow-removed messages so far (both directions).
        bytes: Bytes reported by flow-removed messages so far.
        duration_s: Longest duration a flow-removed message reported.
        mode: Its mirroring mode (MODE_FULL or MODE_STATE).
    """

    key: FlowKey
    profile: MirroringProfile
    group_id: int
    created_at: float
    last_seen: float
    directions: Set[bool] = field(default_factory=lambda: set(BOTH_DIRECTIONS))
    first_packet: Optional[PacketInfo] = None
    packets: int = 0
    bytes: int = 0
    duration_s: float = 0.0
    mode: str = MODE_FULL

    @property
    def flow_id(self) -> int:
        """The flow's id (the FSC entries' cookie)."""
        return self.key.flow_id


class FlowStateCache:
    """flow_id -> FlowEntry, indexed by profile and by cell.

    Lookups by profile and by cell cost what the answer costs, so that a cell
    failure touches only the flows and profiles that name it.
    """

    def __init__(self) -> None:
        self._entries: Dict[int, FlowEntry] = {}
        self._by_profile: Dict[MirroringProfile, Set[int]] = {}
        self._profiles_by_cell: Dict[str, Set[MirroringProfile]] = {}

    # --- index upkeep ----------------------------------------------------------------
    def _index(self, entry: FlowEntry) -> None:
        flow_ids = self._by_profile.get(entry.profile)
        if flow_ids is None:
            flow_ids = self._by_profile[entry.profile] = set()
            for cell_id in entry.profile.cells:
                self._profiles_by_cell.setdefault(cell_id, set()).add(entry.profile)
        flow_ids.add(entry.flow_id)

    def _unindex(self, entry: FlowEntry) -> None:
        flow_ids = self._by_profile[entry.profile]
        flow_ids.discard(entry.flow_id)
        if not flow_ids:
            del self._by_profile[entry.profile]
            for cell_id in entry.profile.cells:
                profiles = self._profiles_by_cell[cell_id]
                profiles.discard(entry.profile)
                if not profiles:
                    del self._profiles_by_cell[cell_id]

    # --- flows ------------------------------------------------------------------------
    def add(
        self,
        key: FlowKey,
        profile: MirroringProfile,
        group_id: int,
        now: float,
        first_packet: Optional[PacketInfo] = None,
        directions: Iterable[bool] = BOTH_DIRECTIONS,
        mode: str = MODE_FULL,
    ) -> FlowEntry:
        """Record a newly installed flow.

        Args:
            key: The flow.
            profile: Its mirroring profile.
            group_id: The group its entries point to.
            now: Current time (seconds).
            first_packet: The packet that created it, for telemetry.
            directions: Directions installed (default both).
            mode: Its mirroring mode.

        Returns:
            The new entry.

        Raises:
            ValueError: the flow is already in the cache.
        """
        if key.flow_id in self._entries:
            raise ValueError(f"flow {key} (flow_id {key.flow_id:#x}) is already cached")
        entry = FlowEntry(
            key, profile, group_id, now, now, set(directions), first_packet, mode=mode
        )
        self._entries[key.flow_id] = entry
        self._index(entry)
        return entry

    def get(self, flow_id: int) -> Optional[FlowEntry]:
        """The flow's entry, or None."""
        return self._entries.get(flow_id)

    def touch(self, flow_id: int, now: float) -> None:
        """Note that the flow was seen at ``now`` (unknown flows are ignored)."""
        entry = self._entries.get(flow_id)
        if entry is not None:
            entry.last_seen = max(entry.last_seen, now)

    def remove_direction(
        self,
        flow_id: int,
        forward: bool,
        packets: int = 0,
        byte_count: int = 0,
        duration_s: float = 0.0,
        now: Optional[float] = None,
    ) -> bool:
        """Account a flow-removed report for one direction.

        Args:
            flow_id: The flow (the entry's cookie).
            forward: Which direction's entry was removed.
            packets: Packets the entry counted.
            byte_count: Bytes the entry counted.
            duration_s: How long the entry lived.
            now: Current time, recorded as ``last_seen`` if given.

        Returns:
            True if this was the flow's last installed direction: the flow has
            ended and its entry is gone from the cache. False otherwise,
            including for unknown flows and repeated reports.
        """
        entry = self._entries.get(flow_id)
        if entry is None or forward not in entry.directions:
            return False
        entry.directions.discard(forward)
        entry.packets += packets
        entry.bytes += byte_count
        entry.duration_s = max(entry.duration_s, duration_s)
        if now is not None:
            entry.last_seen = max(entry.last_seen, now)
        if entry.directions:
            return False
        self.remove(flow_id)
        return True

    def remove(self, flow_id: int) -> Optional[FlowEntry]:
        """Forget a flow entirely; returns its entry, or None if unknown."""
        entry = self._entries.pop(flow_id, None)
        if entry is not None:
            self._unindex(entry)
        return entry

    def set_profile(self, flow_id: int, profile: MirroringProfile, group_id: int) -> None:
        """Move one flow to another profile and group.

        Raises:
            KeyError: unknown flow.
        """
        entry = self._entries[flow_id]
        self._unindex(entry)
        entry.profile = profile
        entry.group_id = group_id
        self._index(entry)

    def replace_profile(self, old: MirroringProfile, new: MirroringProfile) -> int:
        """Relabel every flow of ``old`` as ``new`` (a group rewritten in place).

        Group ids are kept. Returns the number of flows relabelled.
        """
        flow_ids = list(self._by_profile.get(old, ()))
        for flow_id in flow_ids:
            entry = self._entries[flow_id]
            self._unindex(entry)
            entry.profile = new
            self._index(entry)
        return len(flow_ids)

    def relabel_group(
        self, old: MirroringProfile, new: MirroringProfile, group_id: int
    ) -> List[FlowEntry]:
        """Relabel as ``new`` the flows of ``old`` whose entries point at ``group_id``.

        A failover rewrites one group in place; another group may hold an equal
        profile and keeps its label. Moves the flow ids between the indexes in
        bulk (no per-flow re-indexing), so that a failover's cost in the
        controller stays small next to the switch's.

        Returns:
            The entries relabelled.
        """
        flow_ids = self._by_profile.get(old)
        if not flow_ids or old == new:
            return []
        moving = [entry for f in flow_ids if (entry := self._entries[f]).group_id == group_id]
        if not moving:
            return []
        moved_ids = {entry.key.flow_id for entry in moving}
        flow_ids -= moved_ids
        if not flow_ids:
            del self._by_profile[old]
            for cell_id in old.cells:
                profiles = self._profiles_by_cell[cell_id]
                profiles.discard(old)
                if not profiles:
                    del self._profiles_by_cell[cell_id]
        target = self._by_profile.get(new)
        if target is None:
            target = self._by_profile[new] = set()
            for cell_id in new.cells:
                self._profiles_by_cell.setdefault(cell_id, set()).add(new)
        target |= moved_ids
        for entry in moving:
            entry.profile = new
        return moving

    # --- queries --------------------------------------------------------------------
    def flows_using_profile(self, profile: MirroringProfile) -> List[FlowEntry]:
        """Entries of the flows that use ``profile``."""
        return [self._entries[f] for f in self._by_profile.get(profile, ())]

    def profile_refcount(self, profile: MirroringProfile) -> int:
        """How many cached flows use ``profile``."""
        return len(self._by_profile.get(profile, ()))

    def flow_ids_by_profile(self) -> List[Tuple[MirroringProfile, List[int]]]:
        """Every profile in use with its flows' ids: O(profiles) in Python, the ids copied in C."""
        return [(profile, list(flow_ids)) for profile, flow_ids in self._by_profile.items()]

    def profiles(self) -> List[MirroringProfile]:
        """The distinct profiles in use."""
        return list(self._by_profile)

    def profiles_on_cell(self, cell_id: str) -> List[MirroringProfile]:
        """Profiles in use that name ``cell_id`` as primary or mirror."""
        return list(self._profiles_by_cell.get(cell_id, ()))

    def flows_on_cell(self, cell_id: str) -> List[FlowEntry]:
        """Entries of the flows whose profile names ``cell_id`` (primary or mirror)."""
        return [
            self._entries[f]
            for profile in self._profiles_by_cell.get(cell_id, ())
            for f in self._by_profile[profile]
        ]

    def count_on_cell(self, cell_id: str) -> int:
        """How many flows' profiles name ``cell_id``: O(profiles naming it), whatever the number of flows."""
        return sum(len(self._by_profile[profile]) for profile in self._profiles_by_cell.get(cell_id, ()))

    def iter_on_cell(self, cell_id: str) -> Iterator[FlowEntry]:
        """Entries of the flows naming ``cell_id``, lazily (do not change the cache while iterating)."""
        entries = self._entries
        for profile in self._profiles_by_cell.get(cell_id, ()):
            for flow_id in self._by_profile[profile]:
                yield entries[flow_id]

    def iter_entries(self) -> Iterator[FlowEntry]:
        """Every entry, lazily, without copying (do not change the cache while iterating)."""
        return iter(self._entries.values())

    def idle_flows(self, now: float, idle_s: float) -> List[FlowEntry]:
        """Entries not seen for more than ``idle_s`` seconds at ``now``."""
        return [e for e in self._entries.values() if now - e.last_seen > idle_s]

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[FlowEntry]:
        return iter(list(self._entries.values()))

    def __contains__(self, flow_id: object) -> bool:
        return flow_id in self._entries
