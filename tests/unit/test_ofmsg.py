"""ryu_apps.ofmsg builds Ryu OpenFlow 1.3 messages that serialize and say what the descriptions say."""

from __future__ import annotations

import struct

import pytest

pytest.importorskip("ryu")

from ryu.ofproto import ofproto_protocol, ofproto_v1_3, ofproto_v1_3_parser  # noqa: E402

from prism.openflow.changes import (  # noqa: E402
    COOKIE_ALL_MASK,
    MIRROR_MAC,
    OFPG_ALL,
    OFPG_ANY,
    OFPP_CONTROLLER,
    TABLE_FSC,
    Barrier,
    Bucket,
    Command,
    FlowMod,
    GroupAction,
    GroupMod,
    GroupType,
    Match,
    Output,
    PacketOut,
    SetField,
)
from ryu_apps.ofmsg import match_to_dict, to_ofmsg, to_ofmsgs  # noqa: E402

OFP = ofproto_v1_3
GROUP_MOD_HEADER = struct.Struct("!HBxI")


@pytest.fixture
def datapath():
    """A stand-in datapath: only the protocol version, no connection."""
    return ofproto_protocol.ProtocolDesc(OFP.OFP_VERSION)


def _reparse_flow_mod(datapath, message):
    message.serialize()
    version, msg_type, msg_len, xid = ofproto_v1_3_parser.ofproto_parser.header(message.buf)
    return ofproto_v1_3_parser.OFPFlowMod.parser(datapath, version, msg_type, msg_len, xid, message.buf)


def test_flow_mod_add_round_trips_through_the_wire_format(datapath):
    change = FlowMod(
        Command.ADD, TABLE_FSC,
        Match.of(eth_type=0x86DD, ip_proto=17, ipv6_src="2001:db8::1", ipv6_dst="2001:db8::2", udp_src=5, udp_dst=53),
        priority=200, actions=(GroupAction(0x10000),), cookie=0xDEADBEEF12345678, idle_timeout=10,
        send_flow_removed=True,
    )  # fmt: skip
    parsed = _reparse_flow_mod(datapath, to_ofmsg(datapath, change))
    assert parsed.command == OFP.OFPFC_ADD and parsed.table_id == TABLE_FSC and parsed.priority == 200
    assert parsed.cookie == 0xDEADBEEF12345678 and parsed.idle_timeout == 10
    assert parsed.flags == OFP.OFPFF_SEND_FLOW_REM and parsed.buffer_id == OFP.OFP_NO_BUFFER
    assert match_to_dict(parsed.match) == change.match.as_dict()
    (instruction,) = parsed.instructions
    assert instruction.type == OFP.OFPIT_APPLY_ACTIONS
    assert [a.group_id for a in instruction.actions] == [0x10000]


def test_flow_mod_with_actions_and_goto(datapath):
    change = FlowMod(
        Command.ADD, 0, Match.of(in_port=3), priority=100, actions=(Output(OFPP_CONTROLLER),), goto_table=2
    )
    parsed = _reparse_flow_mod(datapath, to_ofmsg(datapath, change))
    apply, goto = parsed.instructions
    assert apply.actions[0].port == OFP.OFPP_CONTROLLER and apply.actions[0].max_len == OFP.OFPCML_NO_BUFFER
    assert goto.table_id == 2
    assert parsed.flags == 0


def test_delete_everything_means_all_tables_any_port_any_group(datapath):
    parsed = _reparse_flow_mod(datapath, to_ofmsg(datapath, FlowMod(Command.DELETE, None)))
    assert parsed.command == OFP.OFPFC_DELETE and parsed.table_id == OFP.OFPTT_ALL
    assert (parsed.out_port, parsed.out_group) == (OFP.OFPP_ANY, OFP.OFPG_ANY)
    assert parsed.cookie_mask == 0 and match_to_dict(parsed.match) == {} and parsed.instructions == []


def test_delete_by_cookie(datapath):
    change = FlowMod(Command.DELETE, TABLE_FSC, cookie=42, cookie_mask=COOKIE_ALL_MASK)
    parsed = _reparse_flow_mod(datapath, to_ofmsg(datapath, change))
    assert (parsed.cookie, parsed.cookie_mask, parsed.table_id) == (42, COOKIE_ALL_MASK, TABLE_FSC)


def test_group_mods_carry_type_id_and_buckets(datapath):
    ff = GroupMod(
        Command.ADD, GroupType.FAST_FAILOVER, 0x1010000, (Bucket((Output(5),), 5), Bucket((Output(6),), 6))
    )
    all_group = GroupMod(
        Command.ADD, GroupType.ALL, 0x10000,
        (Bucket((GroupAction(0x1010000),)), Bucket((SetField("eth_dst", MIRROR_MAC), Output(6)))),
    )  # fmt: skip
    for change, group_type in ((ff, OFP.OFPGT_FF), (all_group, OFP.OFPGT_ALL)):
        message = to_ofmsg(datapath, change)
        message.serialize()
        command, parsed_type, group_id = GROUP_MOD_HEADER.unpack_from(message.buf, OFP.OFP_HEADER_SIZE)
        assert (command, parsed_type, group_id) == (OFP.OFPGC_ADD, group_type, change.group_id)
        offset = OFP.OFP_GROUP_MOD_SIZE
        buckets = []
        while offset < len(message.buf):
            bucket = ofproto_v1_3_parser.OFPBucket.parser(message.buf, offset)
            buckets.append(bucket)
            offset += bucket.len
        assert [b.watch_port for b in buckets] == [b.watch_port for b in change.buckets]
    mirror = buckets[1]
    assert mirror.actions[0].key == "eth_dst" and mirror.actions[0].value == MIRROR_MAC
    assert mirror.actions[1].port == 6


def test_group_delete_all(datapath):
    message = to_ofmsg(datapath, GroupMod(Command.DELETE, GroupType.ALL, OFPG_ALL))
    message.serialize()
    assert GROUP_MOD_HEADER.unpack_from(message.buf, OFP.OFP_HEADER_SIZE) == (
        OFP.OFPGC_DELETE,
        OFP.OFPGT_ALL,
        OFP.OFPG_ALL,
    )


def test_packet_out_and_barrier(datapath):
    frame = bytes(range(60))
    packet_out, barrier = to_ofmsgs(datapath, [PacketOut(4, (GroupAction(0x10000),), frame), Barrier()])
    packet_out.serialize()
    barrier.serialize()
    assert packet_out.buf.endswith(frame)
    buffer_id, in_port = struct.unpack_from("!II", packet_out.buf, OFP.OFP_HEADER_SIZE)
    assert (buffer_id, in_port) == (OFP.OFP_NO_BUFFER, 4)
    assert barrier.msg_type == OFP.OFPT_BARRIER_REQUEST


def test_anything_else_is_refused(datapath):
    with pytest.raises(TypeError):
        to_ofmsg(datapath, "flow please")
    with pytest.raises(TypeError):
        to_ofmsg(datapath, PacketOut(1, ("drop",), b""))


@pytest.mark.parametrize(
    "fields",
    [
        {"eth_type": 0x800, "ip_proto": 6, "ipv4_src": "172.31.0.1", "ipv4_dst": "172.31.255.1",
         "tcp_src": 20000, "tcp_dst": 443},
        {"udp_dst": 53, "ipv6_dst": "2001:db8::2", "eth_type": 0x86DD, "ip_proto": 17, "ipv6_src": "2001:db8::1",
         "udp_src": 5},
        {"eth_dst": MIRROR_MAC},
        {"in_port": 4, "eth_type": 0x86DD, "ip_proto": 58},
        {"eth_type": 0x800, "ipv4_src": ("10.0.0.0", "255.0.0.0")},  # masked: the keyword path
        {},
    ],
)  # fmt: skip
def test_match_is_built_in_oxm_order_with_the_same_bytes_as_keywords(datapath, fields):
    change = FlowMod(Command.ADD, TABLE_FSC, Match.of(**fields))
    built, reference = bytearray(), bytearray()
    to_ofmsg(datapath, change).match.serialize(built, 0)
    ofproto_v1_3_parser.OFPMatch(**fields).serialize(reference, 0)
    assert built == reference
    assert match_to_dict(_reparse_flow_mod(datapath, to_ofmsg(datapath, change)).match) == \
        match_to_dict(ofproto_v1_3_parser.OFPMatch(**fields))  # fmt: skip


def test_match_with_an_unknown_field_is_refused(datapath):
    with pytest.raises(KeyError, match="unknown OXM field"):
        to_ofmsg(datapath, FlowMod(Command.ADD, 0, Match.of(no_such_field=1)))


def test_state_mode_entries_write_metadata_and_match_tcp_flags_as_the_onf_extension(datapath):
    from prism.openflow.changes import METADATA_PROFILE_MASK, TABLE_PROFILE

    fsc = FlowMod(
        Command.MODIFY_STRICT, TABLE_FSC, Match.of(eth_type=0x0800, ip_proto=6, tcp_src=1, tcp_dst=2),
        priority=200, goto_table=TABLE_PROFILE, cookie=7, write_metadata=(0x10001, METADATA_PROFILE_MASK),
    )  # fmt: skip
    parsed = _reparse_flow_mod(datapath, to_ofmsg(datapath, fsc))
    assert parsed.command == OFP.OFPFC_MODIFY_STRICT
    write, goto = parsed.instructions
    assert (write.metadata, write.metadata_mask) == (0x10001, METADATA_PROFILE_MASK)
    assert goto.table_id == TABLE_PROFILE
    flags = FlowMod(
        Command.ADD, TABLE_PROFILE,
        Match.of(metadata=(0x10001, METADATA_PROFILE_MASK), eth_type=0x86DD, ip_proto=6, tcp_flags=(0x02, 0x02)),
        priority=300, actions=(GroupAction(0x10001),),
    )  # fmt: skip
    message = to_ofmsg(datapath, flags)
    message.serialize()
    assert struct.pack("!I", 0x4F4E4600) in bytes(message.buf), "tcp_flags goes out as the ONF experimenter OXM"
    parsed = _reparse_flow_mod(datapath, message)
    fields = match_to_dict(parsed.match)
    assert fields["tcp_flags"] == (0x02, 0x02) and fields["metadata"] == (0x10001, METADATA_PROFILE_MASK)


@pytest.mark.parametrize("fields", [
    dict(eth_type=0x0800, ip_proto=6, ipv4_src="10.0.1.1", ipv4_dst="10.0.2.2", tcp_src=50000, tcp_dst=80),
    dict(eth_type=0x86DD, ip_proto=17, ipv6_src="2001:db8::1", ipv6_dst="2001:db8::2", udp_src=5, udp_dst=53),
    dict(eth_type=0x86DD, ip_proto=58, ipv6_src="fe80::1", ipv6_dst="ff02::1"),
    dict(in_port=3, eth_type=0x0806),
    dict(eth_dst="02:50:52:49:53:4D"),
    dict(in_port=0xFFFFFFF0, eth_type=0x0800, ip_proto=132, ipv4_src="0.0.0.0", ipv4_dst="255.255.255.255",
         sctp_src=1, sctp_dst=65535),
])  # fmt: skip
def test_matches_encoded_ahead_serialize_to_the_bytes_ryu_writes(datapath, fields):
    change = FlowMod(Command.ADD, TABLE_FSC, Match.of(**fields), priority=200, actions=(GroupAction(7),), cookie=9)
    ours = to_ofmsg(datapath, change)
    ours.serialize()
    reference = ofproto_v1_3_parser.OFPFlowMod(
        datapath, cookie=9, cookie_mask=0, table_id=TABLE_FSC, command=OFP.OFPFC_ADD, idle_timeout=0,
        hard_timeout=0, priority=200, buffer_id=OFP.OFP_NO_BUFFER, out_port=OFP.OFPP_ANY, out_group=OFP.OFPG_ANY,
        flags=0, match=ofproto_v1_3_parser.OFPMatch(**fields),
        instructions=[ofproto_v1_3_parser.OFPInstructionActions(
            OFP.OFPIT_APPLY_ACTIONS, [ofproto_v1_3_parser.OFPActionGroup(7)])],
    )  # fmt: skip
    reference.serialize()
    assert bytes(ours.buf) == bytes(reference.buf)
    assert sorted(dict(ours.match.items())) == sorted(fields), "it still reads like any OFPMatch"
