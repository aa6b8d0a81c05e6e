"""The Mirroring Director's decision core for one switch: pipeline, FSC entries, profile groups, failover."""

from __future__ import annotations

import logging
import re
import struct
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Dict, List, Mapping, Optional, Sequence, Tuple

from prism.director.actions import Decision, MgmtMessage, assign_entry
from prism.flows.identity import (
    ETH_TYPE_IPV4,
    ETH_TYPE_IPV6,
    PROTO_ICMPV6,
    PROTO_TCP,
    TCP_SYN,
    FlowKey,
    NotAFlow,
    PacketInfo,
    direction_match,
    key_from_match,
    parse_frame,
)
from prism.director.failover import SEED_RETRY_S, Failover, FailoverStats, UnknownCell
from prism.director.groups import GroupTable, PendingSeed, ProfileGroup
from prism.openflow.changes import (
    COOKIE_HOST,
    COOKIE_PIPELINE,
    COOKIE_UNPROTECTED,
    FF_GROUP_OFFSET,
    METADATA_PROFILE_MASK,
    MIRROR_MAC,
    OFPCML_NO_BUFFER,
    OFPG_ALL,
    OFPP_CONTROLLER,
    PRIORITY_HIGH,
    PRIORITY_LOW,
    PRIORITY_MID,
    PRIORITY_MISS,
    STATE_TCP_FLAGS,
    TABLE_CLASSIFY,
    TABLE_DELIVERY,
    TABLE_FSC,
    TABLE_PROFILE,
    Action,
    Barrier,
    Command,
    FlowMod,
    GroupAction,
    GroupMod,
    GroupType,
    Match,
    OfChange,
    Output,
    PacketOut,
)
from prism.policy.base import NoLiveCell, Policy
from prism.placement.memory import PlacementMemory
from prism.placement.profiles import MODE_FULL, MODE_STATE, MODES, FlowEntry, FlowStateCache, MirroringProfile
from prism.placement.ring import HashRing
from prism.openflow.refusals import FLOW, GROUP, Refusal

if TYPE_CHECKING:  # pragma: no cover
    from prism.config.load import SwitchConfig
    from prism.cluster.takeover import TakeoverPlan

ETH_TYPE_ARP = 0x0806
MAX_IDLE_TIMEOUT = 0xFFFF  #: OpenFlow's idle_timeout is 16 bits
MAX_HOSTS = 65536  #: learnt MACs per switch; beyond it new hosts are flooded to, not learnt
#: Flows in the controller's FSC copy per switch by default (``limits.max_flows``).
DEFAULT_MAX_FLOWS = 1_000_000
_ETH = struct.Struct("!6s6s")
_DIGITS = re.compile(r"\d+")

# Reasons a packet-in was dropped (``counters.drops`` keys); parse failures add "not a flow: <reason>".
DROP_UNKNOWN_PORT = "unknown in_port"
DROP_UNKNOWN_TABLE = "unknown table"
DROP_CELL_PORT_IN_FSC = "cell port in the FSC table"
DROP_CELL_PORT_IN_CLASSIFY = "cell port in the classify table"
DROP_SHORT_FRAME = "frame shorter than an Ethernet header"
DROP_NO_LIVE_CELL = "no live cell"
DROP_BAD_PROFILE = "policy named an unknown cell"
DROP_UNUSABLE_CELL = "policy named a dead or drained cell"
DROP_NO_GROUP_ID = "no free group id"

# Re-decisions not applied (``counters.redecisions_refused`` keys).
REFUSED_UNKNOWN_FLOW = "unknown or ended flow"
REFUSED_NOT_PRIMARY = "reported by a cell that is not the flow's primary"
REFUSED_BAD_ANSWER = "policy answer unusable"
REFUSED_MOVED_PRIMARY = "policy moved the primary"
REFUSED_UNUSABLE_CELL = "policy named an unknown, dead or drained cell"
REFUSED_NO_GROUP_ID = "no free group id"
REFUSED_POLICY_ERROR = "policy raised"

__all__ = ["DirectorCounters", "MirroringDirector", "ProfileGroup", "UnknownCell"]


@dataclass(frozen=True)
class DirectorCounters:
    """Cumulative counters of one director (a snapshot)."""

    switch_connects: int = 0
    packet_ins: int = 0
    flows_total: int = 0
    flows_mirrored: int = 0
    flows_unprotected: int = 0
    flows_returned: int = 0
    flows_refused: int = 0
    groups_refused: int = 0
    flows_ended: int = 0
    takeovers: int = 0
    flow_races: int = 0
    directions_reinstalled: int = 0
    groups_installed: int = 0
    groups_deleted: int = 0
    hosts_learnt: int = 0
    l2_forwarded: int = 0
    unknown_flow_removed: int = 0
    failovers: int = 0
    recoveries: int = 0
    drains: int = 0
    restores: int = 0
    groups_rewritten: int = 0
    state_lost_flows: int = 0
    seeds_sent: int = 0
    seeds_confirmed: int = 0
    seeds_retried: int = 0
    stale_seeded: int = 0
    assigns_sent: int = 0
    assigns_dropped: int = 0
    flows_state_mode: int = 0
    milestones: int = 0
    redecisions: int = 0
    promotions: int = 0
    demotions: int = 0
    mode_changes: int = 0
    entries_moved: int = 0
    flow_seeds_sent: int = 0
    flow_seeds_retried: int = 0
    flow_seeds_confirmed: int = 0
    flows_seeded: int = 0
    drops: Mapping[str, int] = field(default_factory=dict)
    redecisions_refused: Mapping[str, int] = field(default_factory=dict)

    def as_dict(self) -> Dict[str, object]:
        """Plain dict (drops as a dict) for JSON and logs."""
        values = {name: getattr(self, name) for name in self.__dataclass_fields__}
        values["drops"] = dict(self.drops)
        values["redecisions_refused"] = dict(self.redecisions_refused)
        return values


class MirroringDirector:
    """Decides every OpenFlow change for one fast-path switch.

    Every method takes the current time and returns the changes to send, in
    order; nothing here talks to a switch. The failover methods
    (``on_cell_down``, ``on_cell_up``, ``drain_cell``, ``restore_cell``,
    ``on_seeded``, ``tick``) also return management messages for cells
    (``prism.director.actions.MgmtMessage``), after the OpenFlow changes.

    Args:
        switch: The switch's configuration (cells with their ports, edge ports).
        idle_timeout: Seconds an FSC entry lives without packets.
        policy: Chooses each new flow's profile.
        logger: Where new flows are logged, at debug (a line per new flow at info cost as much as
            the decision itself; default ``prism.director.core``).
        ring: The shared ring over the switch's cells, for failover choices
            (default: equal weights over every configured cell).
        max_flows: Flows tracked at most; a new flow beyond goes to its primary
            cell without mirroring and untracked (``flows_unprotected``), so
            neither memory nor packet-ins grow with a flood of new flows.

    A flow whose entries idled out, or were wiped by a reconnect, is
    remembered with its cells (``memory``, a ``PlacementMemory``): when it
    comes back it is placed on the live cells that still hold its state
    (``flows_returned``), not where the policy would put a new flow. A TCP
    flow that comes back mid-connection without such a placement is counted
    in ``state_lost_flows``: its cells may not hold its state.

    Raises:
        ValueError: an idle_timeout OpenFlow cannot carry, or a port that is both a cell and an edge port.
    """

    def __init__(
        self,
        switch: "SwitchConfig",
        idle_timeout: int,
        policy: Policy,
        logger: Optional[logging.Logger] = None,
        ring: Optional[HashRing] = None,
        max_flows: int = DEFAULT_MAX_FLOWS,
    ) -> None:
        if not 0 < idle_timeout <= MAX_IDLE_TIMEOUT:
            raise ValueError(f"idle_timeout must be 1..{MAX_IDLE_TIMEOUT} s, not {idle_timeout}")
        self.switch = switch
        self.dp_id: int = switch.dp_id
        self.idle_timeout = int(idle_timeout)
        self.policy = policy
        self.max_flows = max_flows
        self.memory = PlacementMemory(max_entries=max_flows)
        self.logger = logger or logging.getLogger(__name__)
        self._cell_ports: Dict[str, int] = {cell.id: cell.port for cell in switch.cells}
        self._cell_of_port: Dict[int, str] = {port: cell_id for cell_id, port in self._cell_ports.items()}
        self._edge_ports: Tuple[int, ...] = tuple(switch.edge_ports)
        shared = set(self._cell_of_port) & set(self._edge_ports)
        if shared:
            raise ValueError(f"ports {sorted(shared)} of switch {self.dp_id:#x} are both cell and edge ports")
        self.ring = ring if ring is not None else HashRing(switch.cell_ids)
        self._failover = Failover(switch.cell_ids, self.ring)
        self._live_cells: Tuple[str, ...] = self._failover.live_cells
        self._counts: Dict[str, int] = {}
        self._drops: Dict[str, int] = {}
        self._refused: Dict[str, int] = {}
        self._reset()

    def _reset(self) -> None:
        self._flows = FlowStateCache()
        self._groups = GroupTable(self._cell_ports)
        self._hosts: Dict[str, int] = {}
        self._failover.reset()

    # --- Read-only views ---------------------------------------------------------------
    @property
    def flows(self) -> FlowStateCache:
        """The controller's copy of this switch's FSC (do not modify)."""
        return self._flows

    @property
    def profiles(self) -> Mapping[MirroringProfile, ProfileGroup]:
        """By profile, the group new flows of that profile join, with its reference count.

        After a failover two groups may hold equal profiles; :attr:`groups` lists both.
        """
        table = self._groups
        return MappingProxyType(
            {g.profile: g.snapshot() for g in table if table.group_for(g.profile) == g.group_id}
        )

    @property
    def groups(self) -> Mapping[int, ProfileGroup]:
        """Every installed profile group by (ALL) group id."""
        return MappingProxyType({g.group_id: g.snapshot() for g in self._groups})

    def profiles_naming(self, cell_id: str) -> List[ProfileGroup]:
        """Installed profile groups whose profile names ``cell_id`` (what a failover rewrites)."""
        return [g.snapshot() for g in self._groups.naming(cell_id)]

    @property
    def hosts(self) -> Mapping[str, int]:
        """Learnt host MAC -> edge port."""
        return MappingProxyType(dict(self._hosts))

    @property
    def live_cells(self) -> Tuple[str, ...]:
        """Cells new flows may be placed on: neither dead nor drained."""
        return self._live_cells

    @property
    def down_cells(self) -> frozenset:
        """Cells the director was told are dead."""
        return self._failover.down

    @property
    def draining_cells(self) -> frozenset:
        """Cells drained (or being drained) by an administrator."""
        return self._failover.draining

    @property
    def last_failover(self) -> Optional[FailoverStats]:
        """What the latest ``on_cell_down`` cost (None before the first)."""
        return self._failover.last_failover

    @property
    def last_repair(self) -> Optional[FailoverStats]:
        """The latest step that rewrote groups (failover, recovery, drain, restore or seeding)."""
        return self._failover.last_repair

    @property
    def cell_ports(self) -> Mapping[str, int]:
        """Cell id -> switch port."""
        return MappingProxyType(dict(self._cell_ports))

    @property
    def edge_ports(self) -> Tuple[int, ...]:
        """Ports where hosts attach."""
        return self._edge_ports

    @property
    def counters(self) -> DirectorCounters:
        """A snapshot of the counters."""
        return DirectorCounters(
            **self._counts, **self._failover.counts, drops=MappingProxyType(dict(self._drops)),
            redecisions_refused=MappingProxyType(dict(self._refused)),
        )

    def _count(self, name: str, amount: int = 1) -> None:
        self._counts[name] = self._counts.get(name, 0) + amount

    def _drop(self, reason: str) -> List[OfChange]:
        self._drops[reason] = self._drops.get(reason, 0) + 1
        return []

    # --- Switch connection ----------------------------------------------------------------
    def on_switch_connect(self, now: float) -> List[OfChange]:
        """Converge the switch to the pipeline from whatever it holds.

        Deletes every flow entry and group, waits for that (barrier), then
        installs the static pipeline. The director's flows, groups and hosts
        start afresh; live flows come back through packet-ins.
        """
        self._count("switch_connects")
        for entry in self._flows:  # the switch holds none of them now; their cells still do
            self.memory.remember(entry.flow_id, entry.profile.cells, now)
        self._reset()
        return [
            FlowMod(Command.DELETE, None),
            GroupMod(Command.DELETE, GroupType.ALL, OFPG_ALL),
            Barrier(),
            *self.pipeline(),
        ]

    def pipeline(self) -> List[FlowMod]:
        """The static entries of tables 0-2 (cookie COOKIE_PIPELINE)."""

        def entry(table_id, priority, actions=(), goto=None, **match) -> FlowMod:
            return FlowMod(
                Command.ADD, table_id, Match.of(**match), priority, tuple(actions), goto, COOKIE_PIPELINE
            )

        to_controller = (Output(OFPP_CONTROLLER, OFPCML_NO_BUFFER),)
        mods = [entry(TABLE_CLASSIFY, PRIORITY_MISS)]  # anything from an unknown port: drop
        for port in sorted(self._cell_of_port):
            mods.append(entry(TABLE_CLASSIFY, PRIORITY_HIGH, goto=TABLE_DELIVERY, in_port=port))
        for port in self._edge_ports:
            mods += [
                entry(TABLE_CLASSIFY, PRIORITY_HIGH, to_controller, in_port=port, eth_type=ETH_TYPE_ARP),
                entry(
                    TABLE_CLASSIFY,
                    PRIORITY_HIGH,
                    to_controller,
                    in_port=port,
                    eth_type=ETH_TYPE_IPV6,
                    ip_proto=PROTO_ICMPV6,
                ),
                entry(TABLE_CLASSIFY, PRIORITY_MID, goto=TABLE_FSC, in_port=port, eth_type=ETH_TYPE_IPV4),
                entry(TABLE_CLASSIFY, PRIORITY_MID, goto=TABLE_FSC, in_port=port, eth_type=ETH_TYPE_IPV6),
                entry(TABLE_CLASSIFY, PRIORITY_LOW, goto=TABLE_DELIVERY, in_port=port),
            ]
        mods += [
            entry(TABLE_FSC, PRIORITY_MISS, to_controller),
            entry(TABLE_DELIVERY, PRIORITY_HIGH, eth_dst=MIRROR_MAC),  # a mirror copy never reaches a host
            entry(TABLE_DELIVERY, PRIORITY_MISS, to_controller),
        ]
        return mods

    def adopt(self, now: float, plan: "TakeoverPlan", down=(), draining=()) -> List[OfChange]:
        """Take over a switch that keeps forwarding: its groups and FSC entries become this director's.

        Nothing live is deleted or re-added; only groups no entry uses are deleted.
        ``down``/``draining``: the cells' status as the previous master left it (etcd).
        A plan without the pipeline (a fresh switch) converges from scratch instead.
        """
        if not plan.has_pipeline:
            return self.on_switch_connect(now)
        self._count("takeovers")
        self._reset()
        self._failover.adopt_verdicts(down, draining)
        self._live_cells = self._failover.live_cells
        for group_id, (profile, target_rf) in sorted(plan.groups.items()):
            # a mirror still waiting for its seed: asked again at the next tick (the primary's
            # "seeded" may have gone to the old master)
            pending = {
                mirror: PendingSeed(profile.primary_cell, now - SEED_RETRY_S)
                for mirror in plan.pending.get(group_id, ())
            }
            self._groups.adopt(group_id, profile, target_rf, pending)
        for group_id in plan.state_entries:
            self._groups.get(group_id).state_entries = True  # installed: deleted with the group, never re-added
        for key, forward, group_id, mode in plan.flows:
            entry = self._flows.get(key.flow_id)
            if entry is None:
                self._flows.add(key, self._groups.get(group_id).profile, group_id, now, directions=(forward,),
                                mode=mode)  # fmt: skip
                self._groups.get(group_id).refcount += 1
            elif entry.group_id == group_id:
                entry.directions.add(forward)
        changes: List[OfChange] = []
        for group_id in plan.orphan_groups:
            changes.append(GroupMod(Command.DELETE, GroupType.ALL, group_id))
            changes.append(GroupMod(Command.DELETE, GroupType.FAST_FAILOVER, group_id + FF_GROUP_OFFSET))
        for ff_group_id in plan.stray_ff_groups:
            changes.append(GroupMod(Command.DELETE, GroupType.FAST_FAILOVER, ff_group_id))
        return changes

    # --- Packet-ins -----------------------------------------------------------------------
    def on_packet_in(self, now: float, in_port: int, table_id: int, data: bytes) -> List[OfChange]:
        """Decide what to do with a packet the switch sent up; never raises on bad data.

        Args:
            now: Current time (seconds).
            in_port: The port the packet came in on.
            table_id: The table whose entry sent it.
            data: The whole frame.

        Returns:
            Changes to send: host entries, a new flow's groups and entries, packet-outs.
        """
        self._count("packet_ins")
        data = bytes(data)
        if in_port not in self._cell_of_port and in_port not in self._edge_ports:
            return self._drop(DROP_UNKNOWN_PORT)
        if len(data) < _ETH.size + 2:
            return self._drop(DROP_SHORT_FRAME)
        if table_id == TABLE_FSC:
            return self._on_fsc_miss(now, in_port, data)
        if table_id == TABLE_CLASSIFY:
            if in_port in self._cell_of_port:
                return self._drop(DROP_CELL_PORT_IN_CLASSIFY)
            eth_dst, eth_src = _macs(data)
            return self._learn(eth_src, in_port) + self._forward_l2(in_port, eth_dst, data)
        if table_id == TABLE_DELIVERY:
            eth_dst, eth_src = _macs(data)
            changes = self._learn(eth_src, in_port) if in_port in self._edge_ports else []
            return changes + self._forward_l2(in_port, eth_dst, data)
        return self._drop(DROP_UNKNOWN_TABLE)

    def _on_fsc_miss(self, now: float, in_port: int, data: bytes) -> List[OfChange]:
        if in_port in self._cell_of_port:
            return self._drop(DROP_CELL_PORT_IN_FSC)
        info = parse_frame(data)
        if isinstance(info, NotAFlow):
            return self._drop("not a flow: " + _DIGITS.sub("N", info.reason))
        changes = self._learn(info.eth_src, in_port)
        if _is_multicast(info.eth_dst):
            return changes + self._forward_l2(in_port, info.eth_dst, data)
        entry = self._flows.get(info.flow_id)
        if entry is not None:
            self._count("flow_races")
            self._flows.touch(info.flow_id, now)
            if info.forward not in entry.directions:  # this direction idled out, the other lives on
                entry.directions.add(info.forward)
                self._count("directions_reinstalled")
                changes.append(self._fsc_entry(entry.key, info.forward, entry.group_id, entry.profile, entry.mode))
            return changes + [PacketOut(in_port, (self._race_action(entry, info),), data)]
        return changes + self._new_flow(now, in_port, info, data)

    @staticmethod
    def _race_action(entry: FlowEntry, info: PacketInfo) -> GroupAction:
        """Where a packet of a known flow that reached the controller goes: as its FSC entry would send it."""
        if entry.mode == MODE_STATE and entry.profile.mirror_cells:
            flagged = info.proto == PROTO_TCP and any(info.tcp_flags & flag for flag in STATE_TCP_FLAGS)
            if not flagged:
                return GroupAction(entry.group_id + FF_GROUP_OFFSET)
        return GroupAction(entry.group_id)

    def _mode_for(self, flow_id: int) -> str:
        """The policy's mode for a new flow (``full`` for a policy without modes, or an unknown answer)."""
        mode_for = getattr(self.policy, "mode_for", None)
        mode = mode_for(flow_id) if mode_for is not None else MODE_FULL
        return mode if mode in MODES else MODE_FULL

    def _new_flow(self, now: float, in_port: int, info: PacketInfo, data: bytes) -> List[OfChange]:
        if not self._live_cells:
            return self._drop(DROP_NO_LIVE_CELL)
        holding = self.memory.recall(info.flow_id, now, self._live_cells) if len(self.memory) else None
        if holding is not None:
            profile = MirroringProfile.of(*holding)
            self._count("flows_returned")
        else:
            try:
                profile = self.policy.profile_for(info, self._live_cells, now)
            except NoLiveCell:
                return self._drop(DROP_NO_LIVE_CELL)
            if info.proto == PROTO_TCP and not info.tcp_flags & TCP_SYN:
                self._failover.count_state_lost(1)  # mid-connection, placed where its state may not be
        if any(cell_id not in self._cell_ports for cell_id in profile.cells):
            return self._drop(DROP_BAD_PROFILE)
        if any(cell_id not in self._live_cells for cell_id in profile.cells):
            return self._drop(DROP_UNUSABLE_CELL)
        if len(self._flows) >= self.max_flows:
            return self._unprotected(in_port, info, profile.primary_cell, data)
        changes: List[OfChange] = []
        group_id = self._groups.group_for(profile)
        created = group_id is None
        if created:
            new_group = self._groups.create(profile)
            if new_group is None:
                return self._drop(DROP_NO_GROUP_ID)
            group_id = new_group.group_id
            self._count("groups_installed")
            changes += self.group_mods(profile, group_id, Command.ADD)
        group = self._groups.get(group_id)
        group.refcount += 1
        mode = self._mode_for(info.flow_id)
        self._flows.add(info.key, profile, group_id, now, first_packet=info, mode=mode)
        self._failover.flow_added(info.flow_id, info.key, group, created, mode)
        self._count("flows_total")
        if profile.mirror_cells:
            self._count("flows_mirrored")
            if mode == MODE_STATE:
                self._count("flows_state_mode")
        self.logger.debug("dp %#x new flow %s profile %s group %#x", self.dp_id, info.key, profile, group_id)
        changes += self._state_entries(info.key, profile, group_id, mode)
        changes += [
            self._fsc_entry(info.key, True, group_id, profile, mode),
            self._fsc_entry(info.key, False, group_id, profile, mode),
        ]
        changes.append(PacketOut(in_port, (GroupAction(group_id),), data))  # the first packet: to every mirror
        return changes

    def _unprotected(self, in_port: int, info: PacketInfo, primary_cell: str, data: bytes) -> List[OfChange]:
        """A flow the director cannot track: both directions to its primary cell, no mirror, no record."""
        to_primary = (Output(self._cell_ports[primary_cell]),)
        return [*self._unprotected_entries(info.key, primary_cell), PacketOut(in_port, to_primary, data)]

    def _unprotected_entries(self, key, primary_cell: str) -> List[FlowMod]:
        self._count("flows_unprotected")
        to_primary = (Output(self._cell_ports[primary_cell]),)
        return [
            FlowMod(Command.ADD, TABLE_FSC, Match.of(**direction_match(key, forward)), PRIORITY_MID,
                    to_primary, cookie=COOKIE_UNPROTECTED, idle_timeout=self.idle_timeout)
            for forward in (True, False)
        ]  # fmt: skip

    def placements(self, now: float) -> List[tuple]:
        """Every remembered placement and every live flow's, for the placements file (``prism.placement.store``).

        Live flows are read by profile (one cells tuple shared by all of a
        profile's flows): about 0.1 us per flow, since it runs on the
        controller's event loop.
        """
        placements = self.memory.entries()
        for profile, flow_ids in self._flows.flow_ids_by_profile():
            cells = profile.cells
            placements += [(flow_id, cells, now) for flow_id in flow_ids]
        return placements

    # --- What the switch refused ----------------------------------------------------------
    def on_refused(self, refusal: Refusal, now: float) -> List[OfChange]:
        """The switch refused one of our additions: roll the view back to what the switch holds.

        A refused profile group (a full group table): its flows go to their
        primary cell without mirroring, by entries of their own
        (``flows_unprotected``), instead of reaching the controller packet by
        packet through entries that name a missing group; the group is
        forgotten. A refused FSC entry (a full flow table): the flow is
        forgotten (``flows_refused``; its group goes when it was the last),
        so no failover, seed or count assumes it is installed.

        Returns:
            The changes that follow (unprotected entries, group deletions).
        """
        if refusal.kind == GROUP:
            group_id = refusal.ident
            if self._groups.get(group_id) is None and self._groups.get(group_id - FF_GROUP_OFFSET) is not None:
                group_id -= FF_GROUP_OFFSET
            return self._group_refused(group_id)
        if refusal.kind == FLOW and refusal.table_id == TABLE_FSC:
            return self._flow_refused(refusal.ident)
        return []

    def _group_refused(self, group_id: int) -> List[OfChange]:
        group = self._groups.get(group_id)
        if group is None:
            return []
        self._count("groups_refused")
        changes: List[OfChange] = []
        for entry in [entry for entry in self._flows.flows_using_profile(group.profile)
                      if entry.group_id == group_id]:  # fmt: skip
            self._flows.remove(entry.flow_id)
            self._failover.flow_ended(entry.flow_id)
            changes += self._unprotected_entries(entry.key, entry.profile.primary_cell)
        return changes + list(self._groups.release(group_id))

    def _flow_refused(self, flow_id: int) -> List[OfChange]:
        entry = self._flows.remove(flow_id)
        if entry is None:
            return []
        self._count("flows_refused")
        self._failover.flow_ended(flow_id)
        group = self._groups.get(entry.group_id)
        if group is None:
            return []
        group.refcount -= 1
        return list(self._groups.release(entry.group_id)) if group.refcount <= 0 else []

    def _fsc_entry(
        self, key: FlowKey, forward: bool, group_id: int, profile: MirroringProfile, mode: str,
        command: Command = Command.ADD,
    ) -> FlowMod:  # fmt: skip
        """One direction's FSC entry; where it sends packets depends on the flow's mode.

        ``full`` (or no mirrors): the profile's ALL group. ``state``: a TCP
        flow writes the group id into the metadata and goes to TABLE_PROFILE
        (SYN/FIN/RST to the ALL group, the rest to the FF group); any other
        protocol goes to the FF group (its first packet was sent to the ALL
        group by the packet-out that installed it).
        """
        write_metadata = goto = None
        if mode == MODE_STATE and profile.mirror_cells:
            if key.proto == PROTO_TCP:
                actions: Tuple[Action, ...] = ()
                write_metadata, goto = (group_id, METADATA_PROFILE_MASK), TABLE_PROFILE
            else:
                actions = (GroupAction(group_id + FF_GROUP_OFFSET),)
        else:
            actions = (GroupAction(group_id),)
        return FlowMod(
            command,
            TABLE_FSC,
            Match.of(**direction_match(key, forward)),
            PRIORITY_MID,
            actions,
            goto,
            cookie=key.flow_id,
            idle_timeout=self.idle_timeout,
            send_flow_removed=True,
            write_metadata=write_metadata,
        )

    def _state_entries(self, key: FlowKey, profile: MirroringProfile, group_id: int, mode: str) -> List[FlowMod]:
        """The group's TABLE_PROFILE entries if this flow is the first to need them."""
        if mode == MODE_STATE and profile.mirror_cells and key.proto == PROTO_TCP:
            return self._groups.state_entries(group_id)
        return []

    # --- Re-decisions as flows age -------------------------------------------------------------
    @property
    def milestones_s(self) -> Tuple[float, ...]:
        """Ages (s) at which the policy re-decides a live flow (empty: it never does)."""
        return tuple(getattr(self.policy, "milestones_s", ()) or ())

    def on_milestone(
        self, cell_id: str, reports: Sequence[tuple], now: float
    ) -> List[Decision]:
        """``cell_id`` reports flows crossing age milestones: ask the policy again, move the flows it changes.

        A promotion, demotion or mode change moves the flow's FSC entries
        (both directions, OFPFC_MODIFY_STRICT: their counters stay) to the new
        profile's group, created if needed; the old group is deleted once its
        last flow left. The new profile's cells get ``assign`` (with the mode)
        at the next tick, and mirrors that did not hold the flow a per-flow
        ``seed`` from the primary; until that ``seeded`` comes back a failover
        to such a mirror counts the flow in ``state_lost_flows``.

        Args:
            cell_id: The reporting cell (must be each flow's primary).
            reports: ``(flow_id, age_s, packets, bytes)`` per flow, optionally followed by
                ``idle_s`` and ``closing`` (passed on to ``redecide`` when not None).
            now: Current time (seconds).

        Returns:
            OpenFlow changes (group ADDs, TABLE_PROFILE entries, FSC MODIFY_STRICTs,
            a barrier and the deletion of emptied groups).
        """
        redecide = getattr(self.policy, "redecide", None)
        changes: List[Decision] = []
        for report in reports:
            flow_id, age_s, packets, byte_count = report[:4]
            # what the primary knows (idle_s, closing), passed on where the report carried it
            known = {name: v for name, v in zip(("idle_s", "closing"), report[4:6]) if v is not None}
            self._count("milestones")
            entry = self._flows.get(flow_id)
            if entry is None:
                self._refuse(REFUSED_UNKNOWN_FLOW)
                continue
            if entry.profile.primary_cell != cell_id:
                self._refuse(REFUSED_NOT_PRIMARY)
                continue
            if redecide is None:
                continue
            self._count("redecisions")
            try:
                answer = redecide(flow_id, entry.profile, age_s, packets, byte_count, self._live_cells, now, **known)
            except NoLiveCell:
                self._refuse(REFUSED_UNUSABLE_CELL)
                continue
            except Exception:  # a policy bug must not stop the other flows' re-decisions
                self._refuse(REFUSED_POLICY_ERROR)
                self.logger.exception("dp %#x re-decision of flow %s failed", self.dp_id, entry.key)
                continue
            if answer is not None:
                changes += self._move(entry, answer, now)
        return changes

    def _refuse(self, reason: str) -> List[OfChange]:
        self._refused[reason] = self._refused.get(reason, 0) + 1
        return []

    def _move(self, entry: FlowEntry, answer: object, now: float) -> List[OfChange]:
        """Move one flow to the profile and mode the policy answered (same primary)."""
        try:
            profile, mode = answer  # type: ignore[misc]
        except (TypeError, ValueError):
            return self._refuse(REFUSED_BAD_ANSWER)
        if not isinstance(profile, MirroringProfile) or mode not in MODES:
            return self._refuse(REFUSED_BAD_ANSWER)
        old_profile, old_mode, old_group_id = entry.profile, entry.mode, entry.group_id
        if profile.primary_cell != old_profile.primary_cell:
            return self._refuse(REFUSED_MOVED_PRIMARY)
        if any(c not in self._cell_ports or c not in self._live_cells for c in profile.cells):
            return self._refuse(REFUSED_UNUSABLE_CELL)  # a draining primary's groups are being moved
        if profile == old_profile and mode == old_mode:
            return []
        changes: List[OfChange] = []
        created = False
        group_id = old_group_id if profile == old_profile else self._groups.group_for(profile)
        if group_id is None:
            new_group = self._groups.create(profile)
            if new_group is None:
                return self._refuse(REFUSED_NO_GROUP_ID)
            group_id, created = new_group.group_id, True
            self._count("groups_installed")
            changes += self.group_mods(profile, group_id, Command.ADD)
        group = self._groups.get(group_id)
        changes += self._state_entries(entry.key, profile, group_id, mode)
        for forward in sorted(entry.directions, reverse=True):
            changes.append(self._fsc_entry(entry.key, forward, group_id, profile, mode, Command.MODIFY_STRICT))
        self._count("entries_moved", len(entry.directions))
        if group_id != old_group_id:
            group.refcount += 1
            self._flows.set_profile(entry.flow_id, profile, group_id)
            old_group = self._groups.get(old_group_id)
            if old_group is not None:
                old_group.refcount -= 1
                if old_group.refcount <= 0:
                    self._count("groups_deleted")
                    changes += [Barrier(), *self._groups.release(old_group_id)]
        entry.mode = mode
        if profile.replication_factor > old_profile.replication_factor:
            self._count("promotions")
        elif profile.replication_factor < old_profile.replication_factor:
            self._count("demotions")
        if mode != old_mode:
            self._count("mode_changes")
        self._failover.flow_moved(entry.flow_id, entry.key, old_profile, group, created, mode)
        self.logger.debug(
            "dp %#x flow %s moved at %.3f: %s (%s) -> %s (%s), group %#x",
            self.dp_id, entry.key, now, old_profile, old_mode, profile, mode, group_id,
        )  # fmt: skip
        return changes

    def flow_seed_targets(self, flow_id: int) -> List[str]:
        """Mirrors that must still be seeded with the flow before they hold its state."""
        return self._failover.flow_seeds.waiting_targets(flow_id)

    # --- Profile groups ---------------------------------------------------------------------
    def group_mods(self, profile: MirroringProfile, group_id: int, command: Command) -> List[GroupMod]:
        """The FAST_FAILOVER then the ALL group of a profile (ADD or MODIFY, in a safe order).

        FF buckets watch the primary's port, then each mirror's, each sending
        there. The ALL group applies the FF group, then sends each mirror a
        copy marked with ``MIRROR_MAC``.
        """
        return self._groups.group_mods(profile, group_id, command)

    # --- Flow-removed -------------------------------------------------------------------------
    def on_flow_removed(
        self,
        now: float,
        cookie: int,
        match: Mapping[str, object],
        packets: int,
        bytes: int,
        duration_s: float,
    ) -> List[OfChange]:
        """Account one FSC entry's end; deletes a profile's groups when its last flow ends.

        Args:
            now: Current time (seconds).
            cookie: The entry's cookie (the flow_id).
            match: The entry's match fields.
            packets: Packets the entry counted.
            bytes: Bytes the entry counted.
            duration_s: How long the entry lived.

        Returns:
            Group deletions, or nothing.
        """
        entry = self._flows.get(cookie)
        if entry is None:
            self._count("unknown_flow_removed")
            return []
        try:
            key, forward = key_from_match(dict(match))
        except ValueError:
            key, forward = None, None
        if key != entry.key:
            self._count("unknown_flow_removed")
            return []
        if not self._flows.remove_direction(cookie, forward, packets, bytes, duration_s, now):
            return []
        self._count("flows_ended")
        self.memory.remember(cookie, entry.profile.cells, now)
        self._failover.flow_ended(cookie)
        group = self._groups.get(entry.group_id)
        if group is None:
            return []
        group.refcount -= 1
        if group.refcount > 0:
            return []
        self._count("groups_deleted")
        return list(self._groups.release(entry.group_id))

    # --- Failover, drain, seeding (prism.director.failover decides) --------------------------------------
    def on_cell_down(self, cell_id: str, kind: str, now: float, seen_working: bool = True) -> List[Decision]:
        """A cell died (``kind``: ``"link"`` or ``"process"``): rewrite every group naming it.

        ``seen_working`` False: the controller never saw the cell working since it started (a
        restarted controller that has not heard it yet); its remembered placements stay valid,
        since nothing the controller knew it to hold is known to be lost.

        Returns:
            Two GroupMod MODIFY per rewritten group (flows keep their entries),
            then ``profiles`` messages and ``seed`` requests. ``last_failover``
            holds the counts. Repeating it for a cell already down does nothing.

        Raises:
            UnknownCell: the switch has no such cell.
        """
        if seen_working:
            self.memory.cell_down(cell_id)
        decisions = self._failover.cell_down(cell_id, kind, now, self._groups, self._flows)
        self._live_cells = self._failover.live_cells
        stats = self._failover.last_failover
        if decisions and stats is not None:
            self.logger.warning(
                "dp %#x cell %s down (%s): %d profiles, %d groups rewritten with %d OpenFlow messages "
                "for %d flows; %d flows lost their state",
                self.dp_id, cell_id, kind, stats.profiles_affected, stats.groups_rewritten, stats.ofmsgs,
                stats.flows_affected, stats.state_lost_flows,
            )  # fmt: skip
        return decisions

    def on_cell_up(self, cell_id: str, now: float) -> List[Decision]:
        """A dead cell is healthy again: it rejoins empty and fills under-replicated groups.

        Raises:
            UnknownCell: the switch has no such cell.
        """
        decisions = self._failover.cell_up(cell_id, now, self._groups, self._flows)
        self._live_cells = self._failover.live_cells
        return decisions

    def drain_cell(self, cell_id: str, now: float) -> List[Decision]:
        """Stop giving a cell new flows and move its flows with their state.

        Each group naming it first gets a replacement mirror, seeded by its
        primary; only when ``seeded`` arrives (``on_seeded``) is the group
        rewritten without the drained cell. ``drain_status`` tells how far it is.

        Raises:
            UnknownCell: the switch has no such cell.
        """
        decisions = self._failover.drain(cell_id, now, self._groups, self._flows)
        self._live_cells = self._failover.live_cells
        return decisions

    def restore_cell(self, cell_id: str, now: float) -> List[Decision]:
        """Put a drained cell back on the ring (new flows, refills).

        Raises:
            UnknownCell: the switch has no such cell.
        """
        decisions = self._failover.restore(cell_id, now, self._groups, self._flows)
        self._live_cells = self._failover.live_cells
        return decisions

    def drain_status(self, cell_id: str) -> Dict[str, object]:
        """``{draining, groups_remaining, flows_remaining, done}`` (UnknownCell if unknown)."""
        return self._failover.drain_status(cell_id, self._groups)

    def on_seeded(
        self, source_cell: str, profile_id: int, target: str, now: float, flows: Optional[Sequence[object]] = None
    ) -> List[Decision]:
        """``source_cell`` (a group's primary) has seeded ``target`` with group ``profile_id``'s flows.

        The mirror then counts as a replica; a drain waiting for it proceeds.
        With ``flows`` (a per-flow seed's list, echoed) only those flows count
        as held by ``target``. Reports that do not match a pending seed are
        counted (``stale_seeded``).
        """
        return self._failover.seeded(source_cell, profile_id, target, now, self._groups, self._flows, flows)

    def assignments(self, cell_id: str, flow_ids: Sequence[int]) -> List[Tuple[object, ...]]:
        """``(flow_id, profile_id, key_text[, mode])`` of the flows among ``flow_ids`` whose profile names ``cell_id``.

        What a cell that reports flows without an assignment is sent again
        (unknown or ended flows are left out: the cell drops them in time).
        """
        found = []
        for flow_id in flow_ids:
            entry = self._flows.get(flow_id)
            if entry is not None and cell_id in entry.profile.cells:
                found.append(assign_entry(flow_id, entry.group_id, entry.key, entry.mode))
        return found

    def tick(self, now: float) -> List[MgmtMessage]:
        """Periodic work: new groups' ``profiles`` and flows' ``assign`` batches, seed retries, full tables."""
        self.memory.expire(now)
        return self._failover.tick(now, self._groups)

    # --- L2: hosts on edge ports ------------------------------------------------------------------
    def _learn(self, mac: str, port: int) -> List[OfChange]:
        """A TABLE_DELIVERY entry for a host seen on an edge port (nothing if known there)."""
        if (
            port not in self._edge_ports
            or _is_multicast(mac)
            or mac == MIRROR_MAC
            or self._hosts.get(mac) == port
        ):
            return []
        if mac not in self._hosts and len(self._hosts) >= MAX_HOSTS:
            return []
        self._hosts[mac] = port
        self._count("hosts_learnt")
        return [
            FlowMod(
                Command.ADD,
                TABLE_DELIVERY,
                Match.of(eth_dst=mac),
                PRIORITY_MID,
                (Output(port),),
                cookie=COOKIE_HOST,
            )
        ]

    def _forward_l2(self, in_port: int, eth_dst: str, data: bytes) -> List[OfChange]:
        """Send a frame to its learnt host, or flood it to every other edge port."""
        port = None if _is_multicast(eth_dst) else self._hosts.get(eth_dst)
        ports: Sequence[int] = [port] if port is not None else self._edge_ports
        actions: Tuple[Action, ...] = tuple(Output(p) for p in ports if p != in_port)
        if not actions:
            return []
        self._count("l2_forwarded")
        return [PacketOut(in_port, actions, data)]


def _macs(data: bytes) -> Tuple[str, str]:
    dst, src = _ETH.unpack_from(data)
    return dst.hex(":"), src.hex(":")


def _is_multicast(mac: str) -> bool:
    return not mac or bool(int(mac[:2], 16) & 1)
