"""A fake OpenFlow 1.3 switch that applies ``prism.openflow.changes`` changes, for tests.

Like Faucet's ``clib/fakeoftable.py``, it follows the OpenFlow 1.3.5
specification closely enough that a test can assert what happens to a packet
("the first packet reaches the primary cell and each mirror") instead of which
messages were sent:

- flow tables (section 5.3): the highest-priority entry whose every match field
  equals the packet's wins; a field missing from the match is a wildcard; a
  packet without a field never matches a value for it; match prerequisites
  (section 7.2.3.6) are checked when an entry is added (OFPBMC_BAD_PREREQ);
  no matching entry drops the packet; apply-actions run in order on the packet,
  then WRITE_METADATA (``metadata = metadata & ~mask | value & mask``; every
  packet enters the pipeline with metadata 0, section 7.2.3.7), then
  GOTO_TABLE (only to a later table) continues the pipeline;
- maskable fields (``metadata``, ``tcp_flags``, section 7.2.3.7 and the ONF
  extension that OVS implements) take ``(value, mask)``: a packet matches if
  its value ANDed with the mask equals the value; a value with bits outside
  its mask is refused (OFPBMC_BAD_WILDCARDS), a mask on another field too
  (OFPBMC_BAD_MASK); a packet without a TCP header never matches
  ``tcp_flags``;
- Output to ``OFPP_CONTROLLER`` records a packet-in (OFPR_NO_MATCH from a
  table-miss entry, OFPR_ACTION otherwise); output to the packet's own in_port
  is dropped unless ``OFPP_IN_PORT`` is used (section 4.5); output to a port
  marked down is lost;
- groups (section 5.6): ALL runs every bucket on its own copy; FAST_FAILOVER
  runs the first bucket whose watch_port is live; a bucket may apply another
  group (chaining, no loops); a group in apply-actions works on a copy;
- FlowMod ADD replaces an entry with the same match and priority, keeping its
  counters; MODIFY (non-strict) and MODIFY_STRICT (same match and priority)
  replace the instructions of existing entries only, keeping counters,
  cookie and timeouts (section 6.4); DELETE is non-strict (an entry whose match is at least as specific)
  with cookie/cookie_mask, across all tables when ``table_id`` is None;
- GroupMod ADD of an existing id fails with OFPGMFC_GROUP_EXISTS, MODIFY of a
  missing one with OFPGMFC_UNKNOWN_GROUP; deleting a group another group
  forwards to fails with OFPGMFC_CHAINED_GROUP; DELETE ``OFPG_ALL`` removes all
  (``OFPG_ANY``, like any id that is not a group, removes nothing, as in OVS);
  deleting a group removes the flow entries that forward to it (section 6.5);
- an action naming a missing group fails with OFPBAC_BAD_OUT_GROUP;
- ``expire(now)`` removes idle/hard-timed-out entries and reports flow-removed
  records for entries added with OFPFF_SEND_FLOW_REM, as deletes do.

A failed change raises ``FakeSwitchError`` (``strict=True``) or is recorded in
``errors`` and skipped, as a real switch answers with an error message.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from testkit import oxm
from prism.openflow.changes import (
    OFPCML_NO_BUFFER,
    OFPG_ALL,
    OFPP_ANY,
    OFPP_CONTROLLER,
    OFPP_IN_PORT,
    Action,
    Barrier,
    Bucket,
    Command,
    FlowMod,
    GroupAction,
    GroupMod,
    GroupType,
    OfChange,
    Output,
    PacketOut,
    SetField,
)

OFPP_MAX = 0xFFFFFF00  #: the highest physical port number
OFPP_TABLE = 0xFFFFFFF9  #: packet-out only: submit to the first table
OFPG_MAX = 0xFFFFFF00  #: the highest group id
OFPTT_ALL = 0xFF  #: table id of a packet-in caused by a packet-out
MAX_TABLE_ID = 0xFE
MAX_GROUP_CHAIN = 8  #: deeper chains are refused as loops

REASON_NO_MATCH = "no_match"
REASON_ACTION = "action"
REMOVED_IDLE = "idle_timeout"
REMOVED_HARD = "hard_timeout"
REMOVED_DELETE = "delete"
REMOVED_GROUP_DELETE = "group_delete"

#: field -> (prerequisite field, allowed values or None for "present").
PREREQUISITES: Mapping[str, Tuple[str, Optional[frozenset]]] = {
    "vlan_pcp": ("vlan_vid", None),
    "ip_dscp": ("eth_type", frozenset({oxm.ETH_TYPE_IPV4, oxm.ETH_TYPE_IPV6})),
    "ip_ecn": ("eth_type", frozenset({oxm.ETH_TYPE_IPV4, oxm.ETH_TYPE_IPV6})),
    "ip_proto": ("eth_type", frozenset({oxm.ETH_TYPE_IPV4, oxm.ETH_TYPE_IPV6})),
    "ipv4_src": ("eth_type", frozenset({oxm.ETH_TYPE_IPV4})),
    "ipv4_dst": ("eth_type", frozenset({oxm.ETH_TYPE_IPV4})),
    "ipv6_src": ("eth_type", frozenset({oxm.ETH_TYPE_IPV6})),
    "ipv6_dst": ("eth_type", frozenset({oxm.ETH_TYPE_IPV6})),
    "ipv6_flabel": ("eth_type", frozenset({oxm.ETH_TYPE_IPV6})),
    "tcp_src": ("ip_proto", frozenset({oxm.PROTO_TCP})),
    "tcp_dst": ("ip_proto", frozenset({oxm.PROTO_TCP})),
    "tcp_flags": ("ip_proto", frozenset({oxm.PROTO_TCP})),
    "udp_src": ("ip_proto", frozenset({oxm.PROTO_UDP})),
    "udp_dst": ("ip_proto", frozenset({oxm.PROTO_UDP})),
    "sctp_src": ("ip_proto", frozenset({oxm.PROTO_SCTP})),
    "sctp_dst": ("ip_proto", frozenset({oxm.PROTO_SCTP})),
    "icmpv4_type": ("ip_proto", frozenset({oxm.PROTO_ICMP})),
    "icmpv4_code": ("ip_proto", frozenset({oxm.PROTO_ICMP})),
    "icmpv6_type": ("ip_proto", frozenset({oxm.PROTO_ICMPV6})),
    "icmpv6_code": ("ip_proto", frozenset({oxm.PROTO_ICMPV6})),
    "ipv6_nd_target": ("icmpv6_type", frozenset({oxm.ICMPV6_ND_SOLICIT, oxm.ICMPV6_ND_ADVERT})),
    "arp_op": ("eth_type", frozenset({oxm.ETH_TYPE_ARP})),
    "arp_spa": ("eth_type", frozenset({oxm.ETH_TYPE_ARP})),
    "arp_tpa": ("eth_type", frozenset({oxm.ETH_TYPE_ARP})),
    "arp_sha": ("eth_type", frozenset({oxm.ETH_TYPE_ARP})),
    "arp_tha": ("eth_type", frozenset({oxm.ETH_TYPE_ARP})),
}
MATCH_FIELDS = frozenset(PREREQUISITES) | {"in_port", "eth_src", "eth_dst", "eth_type", "vlan_vid", "metadata"}
#: Fields whose match may carry a mask, with their width in bits.
MASKABLE_BITS: Mapping[str, int] = {"metadata": 64, "tcp_flags": 12}
#: Fields a packet always has in the pipeline, with their value at its start.
PIPELINE_DEFAULTS: Mapping[str, int] = {"metadata": 0}


class FakeSwitchError(Exception):
    """A change the switch refused, named by its OpenFlow error code (e.g. OFPGMFC_GROUP_EXISTS)."""

    def __init__(self, code: str, change: Any, detail: str = "") -> None:
        super().__init__(f"{code}: {detail} in {change!r}" if detail else f"{code} in {change!r}")
        self.code = code
        self.change = change


@dataclass
class FlowEntry:
    """One installed flow entry with its counters (mutable: the switch owns it)."""

    table_id: int
    priority: int
    match: Dict[str, Any]
    actions: Tuple[Action, ...]
    goto_table: Optional[int]
    cookie: int
    idle_timeout: int
    hard_timeout: int
    send_flow_removed: bool
    installed_at: float
    last_used: float
    packet_count: int = 0
    byte_count: int = 0
    write_metadata: Optional[Tuple[int, int]] = None

    def matches(self, packet: Mapping[str, Any]) -> bool:
        """True if every match field has the packet's value (under the mask, for a masked field)."""
        for name, value in self.match.items():
            have = packet.get(name, PIPELINE_DEFAULTS.get(name, _ABSENT))
            if isinstance(value, tuple):
                if have is _ABSENT or have & value[1] != value[0]:
                    return False
            elif have != value:
                return False
        return True

    def group_ids(self) -> List[int]:
        """The groups this entry's actions apply."""
        return [a.group_id for a in self.actions if isinstance(a, GroupAction)]


@dataclass
class GroupEntry:
    """One installed group with its counters."""

    group_type: GroupType
    buckets: Tuple[Bucket, ...]
    packet_count: int = 0
    byte_count: int = 0
    bucket_packets: List[int] = field(default_factory=list)

    def group_ids(self) -> List[int]:
        """The groups this group's buckets apply (chaining)."""
        return [a.group_id for b in self.buckets for a in b.actions if isinstance(a, GroupAction)]


@dataclass(frozen=True)
class PacketIn:
    """A packet sent to the controller."""

    in_port: int
    table_id: int
    reason: str
    cookie: int
    data: bytes
    fields: Mapping[str, Any]


@dataclass(frozen=True)
class FlowRemoved:
    """A flow-removed report (for entries with OFPFF_SEND_FLOW_REM)."""

    cookie: int
    table_id: int
    priority: int
    match: Mapping[str, Any]
    packets: int
    bytes: int
    duration_s: float
    reason: str
    idle_timeout: int


@dataclass
class Result:
    """What the switch did with packets: outputs ``(port, fields)``, packet-ins, flow-removed."""

    outputs: List[Tuple[int, Dict[str, Any]]] = field(default_factory=list)
    packet_ins: List[PacketIn] = field(default_factory=list)
    flow_removed: List[FlowRemoved] = field(default_factory=list)

    def to_port(self, port: int) -> List[Dict[str, Any]]:
        """The packets output to ``port``, in order."""
        return [packet for out_port, packet in self.outputs if out_port == port]

    @property
    def ports(self) -> List[int]:
        """The ports packets went out of, sorted, one entry per copy."""
        return sorted(port for port, _ in self.outputs)

    def extend(self, other: "Result") -> None:
        """Append everything ``other`` holds."""
        self.outputs.extend(other.outputs)
        self.packet_ins.extend(other.packet_ins)
        self.flow_removed.extend(other.flow_removed)


_ABSENT = object()


class FakeSwitch:
    """An in-memory OpenFlow 1.3 switch.

    Args:
        strict: raise ``FakeSwitchError`` on a refused change (else record it in ``errors``).
    """

    def __init__(self, strict: bool = True) -> None:
        self.strict = strict
        self.now = 0.0
        self.errors: List[FakeSwitchError] = []
        self.lost_on_dead_port = 0
        self.barriers = 0
        self._tables: Dict[int, List[FlowEntry]] = {}
        self._groups: Dict[int, GroupEntry] = {}
        self._port_down: set = set()

    # --- State --------------------------------------------------------------------
    def set_port_live(self, port: int, live: bool) -> None:
        """Mark a port up or down (FAST_FAILOVER watches it; output to a down port is lost)."""
        if live:
            self._port_down.discard(port)
        else:
            self._port_down.add(port)

    def port_live(self, port: int) -> bool:
        """True unless the port was marked down."""
        return port not in self._port_down

    def flows(self, table_id: Optional[int] = None) -> List[FlowEntry]:
        """Installed entries (all tables, or one), highest priority first per table."""
        tables = sorted(self._tables) if table_id is None else [table_id]
        return [entry for t in tables for entry in self._tables.get(t, [])]

    @property
    def groups(self) -> Mapping[int, GroupEntry]:
        """Installed groups by id."""
        return dict(self._groups)

    def dump(self) -> Tuple[tuple, tuple]:
        """Flow tables and groups without counters, in a canonical order (compare with ``==``)."""
        flows = sorted(
            (
                e.table_id, e.priority, tuple(sorted(e.match.items())), e.actions, e.goto_table,
                e.cookie, e.idle_timeout, e.hard_timeout, e.send_flow_removed, e.write_metadata,
            )  # fmt: skip
            for e in self.flows()
        )
        groups = sorted((gid, g.group_type.value, g.buckets) for gid, g in self._groups.items())
        return tuple(flows), tuple(groups)

    # --- Changes -------------------------------------------------------------------
    def apply(self, changes: Iterable[OfChange], now: Optional[float] = None) -> Result:
        """Apply changes in order; returns packet-out results and flow-removed reports."""
        if now is not None:
            self.now = now
        result = Result()
        for change in changes:
            try:
                self._apply_one(change, result)
            except FakeSwitchError as error:
                if self.strict:
                    raise
                self.errors.append(error)
        return result

    def _apply_one(self, change: OfChange, result: Result) -> None:
        if isinstance(change, FlowMod):
            self._flow_mod(change, result)
        elif isinstance(change, GroupMod):
            self._group_mod(change, result)
        elif isinstance(change, PacketOut):
            self._packet_out(change, result)
        elif isinstance(change, Barrier):
            self.barriers += 1
        else:
            raise FakeSwitchError("OFPBRC_BAD_TYPE", change, "not an OpenFlow change")

    def _flow_mod(self, mod: FlowMod, result: Result) -> None:
        if mod.command is Command.DELETE:
            self._remove_flows(
                lambda e: (mod.table_id is None or e.table_id == mod.table_id)
                and (e.cookie & mod.cookie_mask) == (mod.cookie & mod.cookie_mask)
                and _at_least_as_specific(e.match, mod.match.as_dict()),
                REMOVED_DELETE,
                result,
            )
            return
        if mod.table_id is None or not 0 <= mod.table_id <= MAX_TABLE_ID:
            raise FakeSwitchError("OFPFMFC_BAD_TABLE_ID", mod)
        match = self._checked_match(mod)
        if mod.goto_table is not None and not mod.table_id < mod.goto_table <= MAX_TABLE_ID:
            raise FakeSwitchError("OFPBIC_BAD_TABLE_ID", mod, "GOTO_TABLE must name a later table")
        self._check_actions(mod.actions, mod, packet_out=False)
        if mod.write_metadata is not None:
            value, mask = mod.write_metadata
            if not (0 <= value < 1 << 64 and 0 <= mask < 1 << 64) or value & ~mask:
                raise FakeSwitchError("OFPBIC_UNSUP_METADATA", mod, f"metadata {value:#x}/{mask:#x}")
        table = self._tables.setdefault(mod.table_id, [])
        if mod.command in (Command.MODIFY, Command.MODIFY_STRICT):
            strict = mod.command is Command.MODIFY_STRICT
            for entry in table:
                cookie_ok = (entry.cookie & mod.cookie_mask) == (mod.cookie & mod.cookie_mask)
                if strict:
                    chosen = cookie_ok and entry.priority == mod.priority and entry.match == match
                else:
                    chosen = cookie_ok and _at_least_as_specific(entry.match, match)
                if chosen:
                    entry.actions, entry.goto_table = mod.actions, mod.goto_table
                    entry.write_metadata = mod.write_metadata
            return
        entry = FlowEntry(
            mod.table_id, mod.priority, match, mod.actions, mod.goto_table, mod.cookie,
            mod.idle_timeout, mod.hard_timeout, mod.send_flow_removed, self.now, self.now,
            write_metadata=mod.write_metadata,
        )  # fmt: skip
        for index, old in enumerate(table):
            if old.priority == mod.priority and old.match == match:
                entry.packet_count, entry.byte_count = old.packet_count, old.byte_count
                table[index] = entry
                return
        table.append(entry)
        table.sort(key=lambda e: -e.priority)  # stable: among equals, the first added wins

    def _checked_match(self, mod: FlowMod) -> Dict[str, Any]:
        match = {}
        for name, value in mod.match.fields:
            if name not in MATCH_FIELDS:
                raise FakeSwitchError("OFPBMC_BAD_FIELD", mod, name)
            if isinstance(value, (tuple, list)):
                match[name] = _checked_mask(name, value, mod)
                continue
            try:
                match[name] = oxm.normalize(name, value)
            except ValueError as error:
                raise FakeSwitchError("OFPBMC_BAD_VALUE", mod, str(error)) from None
        for name in match:
            prerequisite, allowed = PREREQUISITES.get(name, (None, None))
            if prerequisite is None:
                continue
            if prerequisite not in match or (
                allowed is not None
                and (isinstance(match[prerequisite], tuple) or match[prerequisite] not in allowed)
            ):
                raise FakeSwitchError("OFPBMC_BAD_PREREQ", mod, f"{name} needs {prerequisite}")
        return match

    def _check_actions(self, actions: Sequence[Action], change: Any, packet_out: bool) -> None:
        for action in actions:
            if isinstance(action, Output):
                reserved = {OFPP_IN_PORT, OFPP_CONTROLLER} | ({OFPP_TABLE} if packet_out else set())
                if not (0 < action.port <= OFPP_MAX or action.port in reserved):
                    raise FakeSwitchError("OFPBAC_BAD_OUT_PORT", change, f"port {action.port:#x}")
            elif isinstance(action, GroupAction):
                if action.group_id not in self._groups:
                    raise FakeSwitchError("OFPBAC_BAD_OUT_GROUP", change, f"group {action.group_id}")
            elif isinstance(action, SetField):
                if action.field not in MATCH_FIELDS or action.field in ("in_port", "metadata"):
                    raise FakeSwitchError("OFPBAC_BAD_SET_TYPE", change, action.field)
                try:
                    oxm.normalize(action.field, action.value)
                except ValueError as error:
                    raise FakeSwitchError("OFPBAC_BAD_SET_ARGUMENT", change, str(error)) from None
            else:
                raise FakeSwitchError("OFPBAC_BAD_TYPE", change, repr(action))

    def _remove_flows(self, doomed, reason: str, result: Result) -> None:
        for table_id, table in self._tables.items():
            keep = []
            for entry in table:
                if doomed(entry):
                    if entry.send_flow_removed:
                        result.flow_removed.append(self._removed(entry, reason))
                else:
                    keep.append(entry)
            self._tables[table_id] = keep

    def _removed(self, entry: FlowEntry, reason: str) -> FlowRemoved:
        return FlowRemoved(
            entry.cookie, entry.table_id, entry.priority, dict(entry.match), entry.packet_count,
            entry.byte_count, self.now - entry.installed_at, reason, entry.idle_timeout,
        )  # fmt: skip

    def _group_mod(self, mod: GroupMod, result: Result) -> None:
        if mod.command is Command.DELETE:
            if mod.group_id == OFPG_ALL:
                doomed = set(self._groups)
            else:
                if any(
                    mod.group_id in g.group_ids() for gid, g in self._groups.items() if gid != mod.group_id
                ):
                    raise FakeSwitchError("OFPGMFC_CHAINED_GROUP", mod, "another group forwards to it")
                doomed = {mod.group_id} & set(self._groups)
            self._remove_flows(lambda e: bool(doomed & set(e.group_ids())), REMOVED_GROUP_DELETE, result)
            for group_id in doomed:
                del self._groups[group_id]
            return
        if not 0 <= mod.group_id <= OFPG_MAX:
            raise FakeSwitchError("OFPGMFC_INVALID_GROUP", mod)
        if mod.command is Command.ADD and mod.group_id in self._groups:
            raise FakeSwitchError("OFPGMFC_GROUP_EXISTS", mod)
        if mod.command is Command.MODIFY and mod.group_id not in self._groups:
            raise FakeSwitchError("OFPGMFC_UNKNOWN_GROUP", mod)
        for bucket in mod.buckets:
            if mod.group_type is GroupType.FAST_FAILOVER and bucket.watch_port == OFPP_ANY:
                raise FakeSwitchError("OFPGMFC_BAD_WATCH", mod, "a FAST_FAILOVER bucket needs a watch_port")
            self._check_actions(bucket.actions, mod, packet_out=False)
        previous = self._groups.get(mod.group_id)
        entry = GroupEntry(mod.group_type, mod.buckets, bucket_packets=[0] * len(mod.buckets))
        if previous is not None:
            entry.packet_count, entry.byte_count = previous.packet_count, previous.byte_count
        self._groups[mod.group_id] = entry
        if self._chain_depth(mod.group_id, 0) is None:
            if previous is None:
                del self._groups[mod.group_id]
            else:
                self._groups[mod.group_id] = previous
            raise FakeSwitchError("OFPGMFC_LOOP", mod, "group chain loops or is too deep")

    def _chain_depth(self, group_id: int, depth: int) -> Optional[int]:
        if depth > MAX_GROUP_CHAIN:
            return None
        deepest = depth
        for child in self._groups[group_id].group_ids():
            if child in self._groups:
                child_depth = self._chain_depth(child, depth + 1)
                if child_depth is None:
                    return None
                deepest = max(deepest, child_depth)
        return deepest

    def _packet_out(self, out: PacketOut, result: Result) -> None:
        self._check_actions(out.actions, out, packet_out=True)
        packet = oxm.from_frame(out.data)
        packet["in_port"] = out.in_port
        self._run_actions(out.actions, packet, _Context(out.in_port, OFPTT_ALL, 0, REASON_ACTION), result, 0)

    # --- Timeouts --------------------------------------------------------------------
    def expire(self, now: float) -> List[FlowRemoved]:
        """Remove entries idle for >= idle_timeout or older than hard_timeout at ``now``."""
        self.now = now
        reasons: Dict[int, str] = {}
        for entry in self.flows():
            if entry.hard_timeout and now - entry.installed_at >= entry.hard_timeout:
                reasons[id(entry)] = REMOVED_HARD
            elif entry.idle_timeout and now - entry.last_used >= entry.idle_timeout:
                reasons[id(entry)] = REMOVED_IDLE
        result = Result()
        for reason in (REMOVED_HARD, REMOVED_IDLE):
            self._remove_flows(lambda e, r=reason: reasons.get(id(e)) == r, reason, result)
        return result.flow_removed

    # --- Packets ------------------------------------------------------------------------
    def process(
        self, in_port: int, packet: Union[Mapping[str, Any], bytes], now: Optional[float] = None
    ) -> Result:
        """Run one packet (OXM field dict or Ethernet frame) through the pipeline from table 0.

        Returns:
            The copies output ``(port, fields)`` (fields without ``in_port``) and packet-ins.
        """
        if now is not None:
            self.now = now
        fields = (
            oxm.from_frame(packet) if isinstance(packet, (bytes, bytearray)) else oxm.normalize_packet(packet)
        )
        fields["in_port"] = in_port
        result = Result()
        self._run_pipeline(fields, 0, result)
        return result

    def _run_pipeline(self, packet: Dict[str, Any], table_id: Optional[int], result: Result) -> None:
        while table_id is not None:
            entry = next((e for e in self._tables.get(table_id, []) if e.matches(packet)), None)
            if entry is None:
                return  # no table-miss entry: drop
            entry.packet_count += 1
            entry.byte_count += _length(packet)
            entry.last_used = self.now
            miss = entry.priority == 0 and not entry.match
            context = _Context(
                packet["in_port"], table_id, entry.cookie, REASON_NO_MATCH if miss else REASON_ACTION
            )
            self._run_actions(entry.actions, packet, context, result, 0)
            if entry.write_metadata is not None:
                value, mask = entry.write_metadata
                packet["metadata"] = packet.get("metadata", 0) & ~mask | value & mask
            table_id = entry.goto_table

    def _run_actions(
        self,
        actions: Sequence[Action],
        packet: Dict[str, Any],
        context: "_Context",
        result: Result,
        depth: int,
    ) -> None:
        for action in actions:
            if isinstance(action, SetField):
                packet[action.field] = oxm.normalize(action.field, action.value)
            elif isinstance(action, GroupAction):
                self._run_group(action.group_id, packet, context, result, depth + 1)
            elif isinstance(action, Output):
                self._output(action, packet, context, result)

    def _run_group(
        self, group_id: int, packet: Dict[str, Any], context: "_Context", result: Result, depth: int
    ) -> None:
        group = self._groups.get(group_id)
        if group is None or depth > MAX_GROUP_CHAIN:
            return
        group.packet_count += 1
        group.byte_count += _length(packet)
        if group.group_type is GroupType.ALL:
            chosen = list(enumerate(group.buckets))
        else:
            live = (
                (i, b)
                for i, b in enumerate(group.buckets)
                if b.watch_port == OFPP_ANY or self.port_live(b.watch_port)
            )
            chosen = list(itertools.islice(live, 1))
        for index, bucket in chosen:
            group.bucket_packets[index] += 1
            self._run_actions(bucket.actions, dict(packet), context, result, depth)

    def _output(self, action: Output, packet: Dict[str, Any], context: "_Context", result: Result) -> None:
        in_port = packet["in_port"]
        if action.port == OFPP_CONTROLLER:
            data = oxm.to_frame(packet)
            if action.max_len != OFPCML_NO_BUFFER:
                data = data[: action.max_len]
            copy = dict(packet)
            result.packet_ins.append(
                PacketIn(in_port, context.table_id, context.reason, context.cookie, data, copy)
            )
            return
        if action.port == OFPP_TABLE:
            self._run_pipeline(dict(packet), 0, result)
            return
        port = in_port if action.port == OFPP_IN_PORT else action.port
        if action.port == in_port:
            return  # section 4.5: only OFPP_IN_PORT sends a packet back where it came from
        if not self.port_live(port):
            self.lost_on_dead_port += 1
            return
        copy = {k: v for k, v in packet.items() if k not in ("in_port", "metadata")}
        result.outputs.append((port, copy))


@dataclass(frozen=True)
class _Context:
    """Where a packet-in comes from: ingress port, table, cookie and reason."""

    in_port: int
    table_id: int
    cookie: int
    reason: str


def _at_least_as_specific(entry_match: Mapping[str, Any], filter_match: Mapping[str, Any]) -> bool:
    """Non-strict match: the entry has every field of the filter with the same value."""
    return all(
        name in entry_match
        and entry_match[name] == (tuple(value) if isinstance(value, (tuple, list)) else oxm.normalize(name, value))
        for name, value in filter_match.items()
    )


def _checked_mask(name: str, value: Any, mod: Any) -> Tuple[int, int]:
    """A masked match value ``(value, mask)`` of a maskable field, checked as a switch checks it."""
    bits = MASKABLE_BITS.get(name)
    if bits is None:
        raise FakeSwitchError("OFPBMC_BAD_MASK", mod, f"{name} takes no mask here")
    if len(value) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise FakeSwitchError("OFPBMC_BAD_VALUE", mod, f"{name}: {value!r} is not (value, mask)")
    field_value, mask = value
    if not (0 <= field_value < 1 << bits and 0 <= mask < 1 << bits):
        raise FakeSwitchError("OFPBMC_BAD_VALUE", mod, f"{name}: {value!r} does not fit {bits} bits")
    if field_value & ~mask:
        raise FakeSwitchError("OFPBMC_BAD_WILDCARDS", mod, f"{name}: value bits outside the mask")
    return field_value, mask


def _length(packet: Mapping[str, Any]) -> int:
    return len(oxm.to_frame(packet))
