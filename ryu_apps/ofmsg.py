"""The one place that turns ``prism.openflow.changes`` descriptions into Ryu OpenFlow 1.3 messages.

Everything is built through ``datapath.ofproto`` / ``datapath.ofproto_parser``
(as Ryu's own apps do), so a ``ProtocolDesc`` stands in for a datapath in
tests, and os-ken's parser would work the same way.
"""

from __future__ import annotations

import socket
import struct
from functools import partial
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from prism.openflow.changes import (
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
from prism.cluster.takeover import GROUP_ALL, GROUP_FAST_FAILOVER, SwitchBucket, SwitchFlow, SwitchGroup


def to_ofmsgs(datapath: Any, changes: Iterable[OfChange]) -> List[Any]:
    """Ryu message objects for ``changes``, in order.

    Args:
        datapath: A Ryu ``Datapath`` (or anything with ``ofproto`` and ``ofproto_parser``).
        changes: FlowMod / GroupMod / PacketOut / Barrier descriptions.

    Raises:
        TypeError: something that is not an OpenFlow change description.
    """
    return [to_ofmsg(datapath, change) for change in changes]


def to_ofmsg(datapath: Any, change: OfChange) -> Any:
    """The Ryu message for one change description."""
    if isinstance(change, FlowMod):
        return _flow_mod(datapath, change)
    if isinstance(change, GroupMod):
        return _group_mod(datapath, change)
    if isinstance(change, PacketOut):
        ofp = datapath.ofproto
        return datapath.ofproto_parser.OFPPacketOut(
            datapath=datapath,
            buffer_id=ofp.OFP_NO_BUFFER,
            in_port=change.in_port,
            actions=_actions(datapath, change.actions),
            data=change.data,
        )
    if isinstance(change, Barrier):
        return datapath.ofproto_parser.OFPBarrierRequest(datapath)
    raise TypeError(f"not an OpenFlow change description: {change!r}")


def match_to_dict(match: Any) -> Dict[str, Any]:
    """The fields of a Ryu ``OFPMatch`` as a plain dict (e.g. from a flow-removed message)."""
    return dict(match.items())


def _flow_mod(datapath: Any, mod: FlowMod) -> Any:
    ofp = datapath.ofproto
    parser = datapath.ofproto_parser
    commands = {
        Command.ADD: ofp.OFPFC_ADD,
        Command.MODIFY: ofp.OFPFC_MODIFY,
        Command.MODIFY_STRICT: ofp.OFPFC_MODIFY_STRICT,
        Command.DELETE: ofp.OFPFC_DELETE,
    }
    instructions = []
    if mod.actions:
        instructions.append(
            parser.OFPInstructionActions(ofp.OFPIT_APPLY_ACTIONS, _actions(datapath, mod.actions))
        )
    if mod.write_metadata is not None:
        instructions.append(parser.OFPInstructionWriteMetadata(*mod.write_metadata))
    if mod.goto_table is not None:
        instructions.append(parser.OFPInstructionGotoTable(mod.goto_table))
    return parser.OFPFlowMod(
        datapath=datapath,
        cookie=mod.cookie,
        cookie_mask=mod.cookie_mask,
        table_id=ofp.OFPTT_ALL if mod.table_id is None else mod.table_id,
        command=commands[mod.command],
        idle_timeout=mod.idle_timeout,
        hard_timeout=mod.hard_timeout,
        priority=mod.priority,
        buffer_id=ofp.OFP_NO_BUFFER,
        out_port=ofp.OFPP_ANY,
        out_group=ofp.OFPG_ANY,
        flags=ofp.OFPFF_SEND_FLOW_REM if mod.send_flow_removed else 0,
        match=_match(datapath, mod.match.as_dict()),
        instructions=instructions,
    )


def _group_mod(datapath: Any, mod: GroupMod) -> Any:
    ofp = datapath.ofproto
    parser = datapath.ofproto_parser
    commands = {
        Command.ADD: ofp.OFPGC_ADD,
        Command.MODIFY: ofp.OFPGC_MODIFY,
        Command.DELETE: ofp.OFPGC_DELETE,
    }
    types = {GroupType.ALL: ofp.OFPGT_ALL, GroupType.FAST_FAILOVER: ofp.OFPGT_FF}
    return parser.OFPGroupMod(
        datapath,
        command=commands[mod.command],
        type_=types[mod.group_type],
        group_id=mod.group_id,
        buckets=[_bucket(datapath, bucket) for bucket in mod.buckets],
    )


def _bucket(datapath: Any, bucket: Bucket) -> Any:
    ofp = datapath.ofproto
    return datapath.ofproto_parser.OFPBucket(
        weight=0,
        watch_port=bucket.watch_port,
        watch_group=ofp.OFPG_ANY,
        actions=_actions(datapath, bucket.actions),
    )


def _match(datapath: Any, fields: Mapping[str, Any]) -> Any:
    """An ``OFPMatch`` built as Ryu's own parser builds one: fields in OXM order, values as given.

    ``OFPMatch(**fields)`` converts every value three times (normalize, encode,
    decode) before serializing encodes it again; for an FSC entry's five-tuple
    with text addresses that was 40 % of the controller's cost per new flow.
    The bytes sent are the same; values are not normalized (a MAC stays in the
    case given). Masked values (tuples) take the keyword path, which applies the mask.

    Unmasked OpenFlow-basic fields are also encoded here, once, to their OXM
    TLVs (``_encoded_tlvs``: C-level address conversion instead of Ryu's
    per-byte integer and text codecs); ``serialize`` then copies those bytes.
    Experimenter fields, or a value the fast codec does not take, leave the
    match to Ryu's own ``serialize``.
    """
    parser = datapath.ofproto_parser
    if any(isinstance(value, (tuple, list)) for value in fields.values()):
        return parser.OFPMatch(**fields)
    ofp = datapath.ofproto
    ordered = sorted(fields.items(), key=lambda item: _oxm_order(ofp, item[0]))
    tlvs = _encoded_tlvs(ofp, ordered)
    if tlvs is None:
        return parser.OFPMatch(_ordered_fields=ordered)
    return _encoded_match_class(parser)(tlvs, ordered)


_CODECS: Dict[Tuple[str, str], Any] = {}
_ENCODED_MATCH: Dict[str, Any] = {}
_OXM_HEADER = struct.Struct("!I")
_MATCH_HEADER = struct.Struct("!HH")
OFPMT_OXM = 1  #: OpenFlow 1.3 ofp_match_type: OXM


def _codec(ofp: Any, name: str) -> Any:
    """``(tlv_header_without_length, encode)`` of an OpenFlow-basic field, or None; cached per ofproto."""
    key = (ofp.__name__, name)
    if key not in _CODECS:
        from ryu.lib import type_desc  # Ryu's field types (this module is only used under Ryu)

        codec = None
        number = ofp.oxm_from_user_header(name)
        if isinstance(number, int):
            descriptor = next(f for f in ofp.oxm_types if f.name == name).type
            if isinstance(descriptor, type_desc.IntDescr):
                size = descriptor.size
                encode = partial(_int_bytes, size)
            elif descriptor is type_desc.IPv4Addr:
                encode = partial(socket.inet_pton, socket.AF_INET)
            elif descriptor is type_desc.IPv6Addr:
                encode = partial(socket.inet_pton, socket.AF_INET6)
            elif descriptor is type_desc.MacAddr:
                encode = _mac_bytes
            else:
                encode = descriptor.from_user
            codec = (number << 9, encode)
        _CODECS[key] = codec
    return _CODECS[key]


def _int_bytes(size: int, value: int) -> bytes:
    return value.to_bytes(size, "big")


def _mac_bytes(value: str) -> bytes:
    raw = bytes.fromhex(value.replace(":", ""))
    if len(raw) != 6:
        raise ValueError(f"not a MAC address: {value!r}")
    return raw


def _encoded_tlvs(ofp: Any, ordered: Sequence[Tuple[str, Any]]) -> Optional[bytes]:
    """The OXM TLVs of unmasked basic fields, or None if one of them needs Ryu's own codec."""
    parts = []
    for name, value in ordered:
        codec = _codec(ofp, name)
        if codec is None:
            return None
        header, encode = codec
        try:
            raw = encode(value)
        except (TypeError, ValueError, OSError, OverflowError, AttributeError):
            return None
        parts.append(_OXM_HEADER.pack(header | len(raw)))
        parts.append(raw)
    return b"".join(parts)


def _encoded_match_class(parser: Any) -> Any:
    """A subclass of the parser's ``OFPMatch`` that serializes TLVs encoded beforehand (one per parser)."""
    cls = _ENCODED_MATCH.get(parser.__name__)
    if cls is None:

        class EncodedMatch(parser.OFPMatch):
            """An ``OFPMatch`` whose OXM TLVs were encoded when it was built; reads like any other."""

            def __init__(self, tlvs: bytes, ordered: Sequence[Tuple[str, Any]]) -> None:
                super().__init__(_ordered_fields=list(ordered))
                self._tlvs = tlvs

            def serialize(self, buf, offset):  # noqa: D102 - OFPMatch.serialize, same bytes
                length = _MATCH_HEADER.size + len(self._tlvs)
                padded = (length + 7) // 8 * 8
                end = offset + padded
                if len(buf) < end:
                    buf += bytearray(end - len(buf))
                _MATCH_HEADER.pack_into(buf, offset, OFPMT_OXM, length)
                buf[offset + _MATCH_HEADER.size : offset + length] = self._tlvs
                buf[offset + length : end] = bytes(padded - length)
                self.length = length
                return padded

        cls = _ENCODED_MATCH[parser.__name__] = EncodedMatch
    return cls


_OXM_ORDER: Dict[Tuple[str, str], Any] = {}


def _oxm_order(ofp: Any, name: str) -> Any:
    """Sort key of an OXM field (its number, as OFPMatch sorts), cached; KeyError for an unknown name."""
    key = (ofp.__name__, name)
    order = _OXM_ORDER.get(key)
    if order is None:
        number = ofp.oxm_from_user_header(name)
        order = _OXM_ORDER[key] = number[0] if isinstance(number, tuple) else number
    return order


def _actions(datapath: Any, actions: Iterable[Action]) -> List[Any]:
    parser = datapath.ofproto_parser
    built = []
    for action in actions:
        if isinstance(action, Output):
            built.append(parser.OFPActionOutput(action.port, action.max_len))
        elif isinstance(action, GroupAction):
            built.append(parser.OFPActionGroup(action.group_id))
        elif isinstance(action, SetField):
            built.append(parser.OFPActionSetField(**{action.field: action.value}))
        else:
            raise TypeError(f"not an action description: {action!r}")
    return built


# --- Mastership and takeover (ryu_apps.cluster) ------------------------------------------------
def role_request(datapath: Any, master: bool, generation_id: int) -> Any:
    """An OFPRoleRequest for MASTER or SLAVE with ``generation_id`` (the switch fences older ones)."""
    ofp = datapath.ofproto
    role = ofp.OFPCR_ROLE_MASTER if master else ofp.OFPCR_ROLE_SLAVE
    return datapath.ofproto_parser.OFPRoleRequest(datapath, role, generation_id)


def role_of_reply(datapath: Any, role: int) -> Optional[bool]:
    """True for MASTER, False for SLAVE, None for EQUAL/NOCHANGE (a role reply's role)."""
    ofp = datapath.ofproto
    return {ofp.OFPCR_ROLE_MASTER: True, ofp.OFPCR_ROLE_SLAVE: False}.get(role)


def takeover_requests(datapath: Any) -> List[Any]:
    """What a new master asks: every group's description and every flow entry (all tables)."""
    ofp = datapath.ofproto
    parser = datapath.ofproto_parser
    return [
        parser.OFPGroupDescStatsRequest(datapath, 0),
        parser.OFPFlowStatsRequest(datapath, 0, ofp.OFPTT_ALL, ofp.OFPP_ANY, ofp.OFPG_ANY),
    ]


def port_desc_request(datapath: Any) -> Any:
    """The ports' description (link state of the cell ports)."""
    return datapath.ofproto_parser.OFPPortDescStatsRequest(datapath, 0)


def switch_groups(datapath: Any, body: Iterable[Any]) -> List[SwitchGroup]:
    """A group description reply's groups as ``prism.cluster.takeover.SwitchGroup``."""
    ofp = datapath.ofproto
    kinds = {ofp.OFPGT_ALL: GROUP_ALL, ofp.OFPGT_FF: GROUP_FAST_FAILOVER}
    groups = []
    for desc in body:
        buckets = []
        for bucket in desc.buckets:
            parser = datapath.ofproto_parser
            outputs = tuple(a.port for a in bucket.actions if isinstance(a, parser.OFPActionOutput))
            chained = tuple(a.group_id for a in bucket.actions if isinstance(a, parser.OFPActionGroup))
            watch = bucket.watch_port if bucket.watch_port != ofp.OFPP_ANY else None
            buckets.append(SwitchBucket(watch, outputs, chained))
        groups.append(SwitchGroup(desc.group_id, kinds.get(desc.type, str(desc.type)), tuple(buckets)))
    return groups


def switch_flows(datapath: Any, body: Iterable[Any]) -> List[SwitchFlow]:
    """A flow statistics reply's entries as ``prism.cluster.takeover.SwitchFlow`` (group actions, goto and metadata kept)."""
    parser = datapath.ofproto_parser
    flows = []
    for stat in body:
        group_ids = tuple(
            action.group_id
            for instruction in stat.instructions if isinstance(instruction, parser.OFPInstructionActions)
            for action in instruction.actions if isinstance(action, parser.OFPActionGroup)
        )  # fmt: skip
        goto_table = metadata = None
        for instruction in stat.instructions:  # a state-mode TCP entry: metadata and TABLE_PROFILE (issue 8)
            if isinstance(instruction, parser.OFPInstructionGotoTable):
                goto_table = instruction.table_id
            elif isinstance(instruction, parser.OFPInstructionWriteMetadata):
                metadata = instruction.metadata
        flows.append(SwitchFlow(stat.table_id, stat.cookie, match_to_dict(stat.match), group_ids, goto_table,
                                metadata))  # fmt: skip
    return flows
