"""Tests for prism.flows.identity: parsing, canonical keys, flow_id, matches."""

import random
import struct

import pytest

from prism.flows import identity as flows
from testkit import packets
from prism.flows.identity import (
    ETH_TYPE_IPV4,
    ETH_TYPE_IPV6,
    PROTO_AH,
    PROTO_DSTOPTS,
    PROTO_FRAGMENT,
    PROTO_HOPOPTS,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_ROUTING,
    PROTO_SCTP,
    PROTO_TCP,
    PROTO_UDP,
    TCP_ACK,
    TCP_PSH,
    TCP_SYN,
    FlowKey,
    NotAFlow,
    PacketInfo,
    direction_match,
    ip_to_bytes,
    key_from_match,
    parse_frame,
    parse_ip,
)
from prism.openflow.changes import COOKIE_HOST, COOKIE_PIPELINE

C4, S4 = "10.0.0.1", "10.0.0.2"
C6, S6 = "2001:db8::1", "2001:db8::2"


def parsed(frame):
    info = parse_frame(frame)
    assert isinstance(info, PacketInfo), info
    return info


# --- TCP / UDP / ICMP, v4 and v6 ---------------------------------------------------
def test_ipv4_tcp_fields():
    payload = b"hello world"
    frame = packets.build_tcp_frame(
        C4, S4, 40000, 80, payload, flags=TCP_PSH | TCP_ACK, seq=123, ack=456, window=999,
        eth_src="02:00:00:00:00:0a", eth_dst="02:00:00:00:00:0b",
    )  # fmt: skip
    info = parsed(frame)
    assert info.eth_src == "02:00:00:00:00:0a"
    assert info.eth_dst == "02:00:00:00:00:0b"
    assert info.vlan is None
    assert info.eth_type == ETH_TYPE_IPV4
    assert (info.ip_version, info.proto) == (4, PROTO_TCP)
    assert (info.src, info.dst) == (ip_to_bytes(C4), ip_to_bytes(S4))
    assert (info.sport, info.dport) == (40000, 80)
    assert (info.tcp_flags, info.tcp_seq, info.tcp_ack, info.tcp_window) == (
        TCP_PSH | TCP_ACK, 123, 456, 999,
    )  # fmt: skip
    assert info.payload_len == len(payload)
    assert info.ip_len == 20 + 20 + len(payload)
    assert info.frame_len == len(frame)
    assert info.forward is True  # 10.0.0.1 < 10.0.0.2
    assert info.key == FlowKey(4, PROTO_TCP, ip_to_bytes(C4), 40000, ip_to_bytes(S4), 80)


def test_tcp_options_counted_in_header_not_payload():
    frame = packets.build_tcp_frame(C4, S4, 1, 2, b"xyz", options=b"\x02\x04\x05\xb4")
    assert parsed(frame).payload_len == 3


def test_ipv6_udp_fields():
    frame = packets.build_udp_frame(S6, C6, 53, 5353, b"q" * 30)
    info = parsed(frame)
    assert info.eth_type == ETH_TYPE_IPV6
    assert (info.ip_version, info.proto, info.sport, info.dport) == (6, PROTO_UDP, 53, 5353)
    assert info.payload_len == 30
    assert info.ip_len == 40 + 8 + 30
    assert info.forward is False  # S6 > C6
    assert info.key.addr_a == ip_to_bytes(C6)
    assert info.tcp_flags == info.tcp_seq == 0


@pytest.mark.parametrize(
    "src,dst,proto", [(C4, S4, PROTO_ICMP), (C6, S6, PROTO_ICMPV6)], ids=["icmp", "icmpv6"]
)
def test_icmp_keyed_by_address_pair(src, dst, proto):
    request = parsed(packets.build_icmp_frame(src, dst, ident=7, payload=b"abcd"))
    reply = parsed(packets.build_icmp_frame(dst, src, ident=9))
    assert request.proto == proto
    assert (request.sport, request.dport) == (0, 0)
    assert request.key == reply.key
    assert request.forward != reply.forward
    assert request.payload_len == 8 + 4  # no L4 header is parsed: the ICMP message


def test_sctp_ports():
    info = parsed(packets.build_sctp_frame(C4, S4, 3868, 3869, b"\0" * 16))
    assert (info.proto, info.sport, info.dport, info.payload_len) == (PROTO_SCTP, 3868, 3869, 16)


def test_other_protocol_by_address_pair():
    frame = packets.build_ip_frame(C4, S4, 47, b"\0" * 24)  # GRE
    info = parsed(frame)
    assert (info.proto, info.sport, info.dport, info.payload_len) == (47, 0, 0, 24)
    assert str(info.key) == "proto 47 10.0.0.1 <-> 10.0.0.2"


def test_ethernet_padding_ignored():
    frame = packets.build_udp_frame(C4, S4, 1, 2, b"", pad=True)
    info = parsed(frame)
    assert info.frame_len == 60
    assert info.ip_len == 28
    assert info.payload_len == 0


# --- Both directions ------------------------------------------------------------------
@pytest.mark.parametrize("client,server", [(C4, S4), (S4, C4), (C6, S6), (S6, C6)])
def test_both_directions_same_key_and_flow_id(client, server):
    syn, syn_ack, ack = packets.build_tcp_handshake(client, server, 51000, 443)
    infos = [parsed(f) for f in (syn, syn_ack, ack)]
    assert len({i.key for i in infos}) == 1
    assert len({i.key.flow_id for i in infos}) == 1
    assert infos[0].forward == infos[2].forward != infos[1].forward
    assert infos[0].tcp_flags == TCP_SYN


def test_same_address_ordered_by_port():
    a = parsed(packets.build_udp_frame(C4, C4, 9000, 8000))
    b = parsed(packets.build_udp_frame(C4, C4, 8000, 9000))
    assert a.key == b.key
    assert (a.key.port_a, a.key.port_b) == (8000, 9000)
    assert (a.forward, b.forward) == (False, True)


def test_flow_key_between_matches_parser():
    info = parsed(packets.build_tcp_frame(S4, C4, 80, 40000))
    assert FlowKey.between(PROTO_TCP, S4, 80, C4, 40000) == (info.key, info.forward)


@pytest.mark.parametrize(
    "args",
    [
        (PROTO_TCP, C4, 1, S6, 2),
        (PROTO_TCP, "not an ip", 1, S4, 2),
        (PROTO_TCP, C4, 70000, S4, 2),
        (300, C4, 1, S4, 2),
        (PROTO_TCP, b"\1\2\3", 1, b"\1\2\3", 2),
    ],
)
def test_flow_key_between_rejects_bad_input(args):
    with pytest.raises(ValueError):
        FlowKey.between(*args)


# --- flow_id ------------------------------------------------------------------------------
def test_flow_id_stable_value():
    key, _ = FlowKey.between(PROTO_TCP, C4, 40000, S4, 80)
    # Pinned: placement and cookies must not change between releases.
    assert key.flow_id == FlowKey.between(PROTO_TCP, S4, 80, C4, 40000)[0].flow_id
    assert key.flow_id == 0x37CB3855D893770B


def test_flow_ids_differ_between_flows():
    ids = {FlowKey.between(PROTO_UDP, C4, port, S4, 53)[0].flow_id for port in range(1000)}
    assert len(ids) == 1000


def test_flow_id_distinguishes_protocol_and_version():
    tcp, _ = FlowKey.between(PROTO_TCP, C4, 1, S4, 2)
    udp, _ = FlowKey.between(PROTO_UDP, C4, 1, S4, 2)
    v6, _ = FlowKey.between(PROTO_TCP, "::ffff:10.0.0.1", 1, "::ffff:10.0.0.2", 2)
    assert len({tcp.flow_id, udp.flow_id, v6.flow_id}) == 3


@pytest.mark.parametrize("reserved", [0, COOKIE_PIPELINE, COOKIE_HOST])
def test_reserved_values_remapped_deterministically(reserved):
    remapped = flows._remap_reserved(reserved)
    assert remapped not in flows.RESERVED_FLOW_IDS
    assert remapped == flows._remap_reserved(reserved)
    assert 0 < remapped < 2**64
    assert flows._remap_reserved(12345) == 12345


def test_flow_id_not_in_equality_or_repr():
    a, _ = FlowKey.between(PROTO_TCP, C4, 1, S4, 2)
    b, _ = FlowKey.between(PROTO_TCP, C4, 1, S4, 2)
    _ = a.flow_id  # cached on a only
    assert a == b and hash(a) == hash(b)
    assert "_flow_id" not in repr(a)


def test_fast_init_keeps_dataclass_behaviour():
    import dataclasses

    key = FlowKey(ip_version=4, proto=PROTO_UDP, addr_a=b"\1\1\1\1", port_a=1,
                  addr_b=b"\2\2\2\2", port_b=2)  # fmt: skip
    assert key == FlowKey(4, PROTO_UDP, b"\1\1\1\1", 1, b"\2\2\2\2", 2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        key.port_a = 5
    with pytest.raises(TypeError):
        FlowKey(4, PROTO_UDP)
    info = parsed(packets.build_udp_frame(C4, S4, 1, 2))
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.sport = 3
    assert dataclasses.replace(info, sport=3).sport == 3
    assert key._flow_id == 0 and key.flow_id == key._flow_id
    with pytest.raises(TypeError, match="defaults are not supported"):

        @flows._fast_frozen_init
        @dataclasses.dataclass(frozen=True, slots=True)
        class WithDefault:
            a: int = 1


def test_str_readable():
    key4, _ = FlowKey.between(PROTO_TCP, S4, 80, C4, 40000)
    assert str(key4) == "tcp 10.0.0.1:40000 <-> 10.0.0.2:80"
    key6, _ = FlowKey.between(PROTO_UDP, C6, 5000, S6, 53)
    assert str(key6) == "udp [2001:db8::1]:5000 <-> [2001:db8::2]:53"
    icmp, _ = FlowKey.between(PROTO_ICMP, C4, 0, S4, 0)
    assert str(icmp) == "icmp 10.0.0.1 <-> 10.0.0.2"


# --- VLAN -------------------------------------------------------------------------------
def test_single_vlan_tag():
    info = parsed(packets.build_tcp_frame(C4, S4, 1, 2, vlans=[100]))
    assert info.vlan == 100
    assert info.eth_type == ETH_TYPE_IPV4
    assert info.frame_len == 14 + 4 + 40


def test_double_vlan_tag_reports_outer():
    frame = packets.build_udp_frame(C6, S6, 1, 2, vlans=[200, 300])
    assert frame[12:14] == b"\x88\xa8" and frame[16:18] == b"\x81\x00"
    info = parsed(frame)
    assert info.vlan == 200
    assert info.eth_type == ETH_TYPE_IPV6
    assert (info.sport, info.dport) == (1, 2)


def test_vlan_priority_bits_masked():
    frame = bytearray(packets.build_udp_frame(C4, S4, 1, 2, vlans=[5]))
    frame[14] |= 0xE0  # PCP 7
    assert parsed(bytes(frame)).vlan == 5


def test_three_vlan_tags_rejected():
    frame = packets.build_udp_frame(C4, S4, 1, 2, vlans=[1, 2, 3])
    assert parse_frame(frame) == NotAFlow("more than 2 VLAN tags")


# --- Fragments and IPv6 extension headers -------------------------------------------------
def test_ipv4_first_fragment_has_ports():
    segment = packets.tcp_segment(C4, S4, 1234, 80, b"x" * 64)
    frame = packets.build_ip_frame(C4, S4, PROTO_TCP, segment[:40], more_fragments=True)
    info = parsed(frame)
    assert (info.sport, info.dport) == (1234, 80)


def test_ipv4_later_fragment_has_no_ports():
    frame = packets.build_ip_frame(C4, S4, PROTO_TCP, b"\xff" * 24, fragment_offset=5)
    info = parsed(frame)
    assert (info.proto, info.sport, info.dport, info.tcp_flags) == (PROTO_TCP, 0, 0, 0)
    assert info.payload_len == 24


def test_ipv4_options_skipped():
    frame = packets.build_udp_frame(C4, S4, 7, 8, b"abc", options=b"\x01" * 8)
    info = parsed(frame)
    assert info.ip_len == 28 + 8 + 3
    assert (info.sport, info.dport, info.payload_len) == (7, 8, 3)


@pytest.mark.parametrize("ext_type", [PROTO_HOPOPTS, PROTO_ROUTING, PROTO_DSTOPTS])
def test_ipv6_option_headers_walked(ext_type):
    frame = packets.build_tcp_frame(
        C6, S6, 1000, 22, b"ssh", ext_headers=[(ext_type, packets.ipv6_option_header(14))]
    )
    info = parsed(frame)
    assert (info.proto, info.sport, info.dport, info.payload_len) == (PROTO_TCP, 1000, 22, 3)


def test_ipv6_chain_of_headers_including_ah():
    ah_body = bytes([2]) + b"\0" * 10  # payload len 2 -> (2+2)*4 = 16 bytes with the 2 first
    assert len(ah_body) + 1 == 12
    ah_body += b"\0" * 4
    chain = [
        (PROTO_HOPOPTS, packets.ipv6_option_header()),
        (PROTO_DSTOPTS, packets.ipv6_option_header()),
        (PROTO_ROUTING, packets.ipv6_option_header(22)),
        (PROTO_AH, ah_body),
        (PROTO_FRAGMENT, packets.ipv6_fragment_header(0, more=True)),
    ]
    info = parsed(packets.build_udp_frame(C6, S6, 11, 12, b"z", ext_headers=chain))
    assert (info.proto, info.sport, info.dport, info.payload_len) == (PROTO_UDP, 11, 12, 1)


def test_ipv6_later_fragment_has_no_ports():
    frame = packets.fragment_ipv6_frame(C6, S6, PROTO_UDP, b"\xaa" * 16, offset=3, more=False)
    info = parsed(frame)
    assert (info.proto, info.sport, info.dport, info.payload_len) == (PROTO_UDP, 0, 0, 16)


def test_ipv6_first_fragment_has_ports():
    datagram = packets.udp_datagram(C6, S6, 4000, 4001, b"\0" * 32)
    frame = packets.fragment_ipv6_frame(C6, S6, PROTO_UDP, datagram[:16], offset=0, more=True)
    info = parsed(frame)
    assert (info.sport, info.dport) == (4000, 4001)


def test_ipv6_too_many_extension_headers():
    chain = [(PROTO_DSTOPTS, packets.ipv6_option_header())] * (flows.MAX_IPV6_EXT_HEADERS + 1)
    result = parse_frame(packets.build_udp_frame(C6, S6, 1, 2, ext_headers=chain))
    assert result == NotAFlow("more than 8 IPv6 extension headers")


def test_ipv6_max_extension_headers_accepted():
    chain = [(PROTO_DSTOPTS, packets.ipv6_option_header())] * flows.MAX_IPV6_EXT_HEADERS
    assert parsed(packets.build_udp_frame(C6, S6, 1, 2, ext_headers=chain)).sport == 1


def test_ipv6_esp_ends_chain():
    info = parsed(packets.build_ip_frame(C6, S6, 50, b"\0" * 16))
    assert (info.proto, info.sport, info.payload_len) == (50, 0, 16)


# --- Not a flow -----------------------------------------------------------------------
def _reason(frame):
    result = parse_frame(frame)
    assert isinstance(result, NotAFlow), result
    assert not result  # NotAFlow is falsy
    return result.reason


def test_not_ip():
    assert _reason(packets.build_arp_frame()) == "not IP: eth_type 0x0806"
    assert _reason(packets.build_arp_frame(vlans=[10])) == "not IP: eth_type 0x0806"


def test_truncated_ethernet():
    assert _reason(b"\0" * 13) == "truncated Ethernet header: 13 of 14 bytes"
    assert _reason(b"") == "truncated Ethernet header: 0 of 14 bytes"


def test_truncated_vlan_tag():
    frame = packets.build_udp_frame(C4, S4, 1, 2, vlans=[7])
    assert _reason(frame[:16]) == "truncated VLAN tag"


def test_truncated_ip_headers():
    v4 = packets.build_udp_frame(C4, S4, 1, 2)
    assert _reason(v4[:14 + 19]) == "truncated IPv4 header: 19 of 20 bytes"
    v6 = packets.build_udp_frame(C6, S6, 1, 2)
    assert _reason(v6[:14 + 39]) == "truncated IPv6 header: 39 of 40 bytes"


def test_truncated_ip_packet():
    v4 = packets.build_udp_frame(C4, S4, 1, 2, b"abc")
    assert _reason(v4[:-1]) == "truncated IPv4 packet: total length 31, 30 bytes present"
    v6 = packets.build_udp_frame(C6, S6, 1, 2, b"abc")
    assert _reason(v6[:-1]) == "truncated IPv6 packet: length 51, 50 bytes present"


def test_truncated_l4_headers():
    ip_tcp = packets.ipv4_packet(C4, S4, PROTO_TCP, b"\0" * 19)
    assert parse_ip(ip_tcp) == NotAFlow("truncated TCP header: 19 of 20 bytes")
    ip_udp = packets.ipv6_packet(C6, S6, PROTO_UDP, b"\0" * 7)
    assert parse_ip(ip_udp) == NotAFlow("truncated UDP header: 7 of 8 bytes")
    ip_sctp = packets.ipv4_packet(C4, S4, PROTO_SCTP, b"\0" * 11)
    assert parse_ip(ip_sctp) == NotAFlow("truncated SCTP header: 11 of 12 bytes")


def test_bad_tcp_data_offset():
    segment = bytearray(packets.tcp_segment(C4, S4, 1, 2, b""))
    segment[12] = 4 << 4
    assert parse_ip(packets.ipv4_packet(C4, S4, PROTO_TCP, bytes(segment))) == NotAFlow(
        "bad TCP data offset 16 (segment of 20 bytes)"
    )
    segment[12] = 6 << 4
    assert "bad TCP data offset 24" in parse_ip(
        packets.ipv4_packet(C4, S4, PROTO_TCP, bytes(segment))
    ).reason


def test_bad_ipv4_header_length_and_total_length():
    packet = bytearray(packets.ipv4_packet(C4, S4, PROTO_UDP, b"\0" * 8))
    packet[0] = 0x44
    assert parse_ip(bytes(packet)) == NotAFlow("bad IPv4 header length 16 (minimum 20)")
    packet[0] = 0x45
    struct.pack_into("!H", packet, 2, 19)
    assert parse_ip(bytes(packet)) == NotAFlow("IPv4 total length 19 shorter than its header (20)")


def test_version_mismatch():
    v4 = bytearray(packets.build_udp_frame(C4, S4, 1, 2))
    v4[14] = 0x65
    assert _reason(bytes(v4)) == "bad IP version 6 in an IPv4 packet"
    v6 = bytearray(packets.build_udp_frame(C6, S6, 1, 2))
    v6[14] = 0x40
    assert _reason(bytes(v6)) == "bad IP version 4 in an IPv6 packet"
    assert parse_ip(b"\x50" + b"\0" * 39) == NotAFlow("bad IP version 5")
    assert parse_ip(b"") == NotAFlow("empty IP packet")


def test_truncated_ipv6_extension_header():
    chain = [(PROTO_HOPOPTS, packets.ipv6_option_header())]
    packet = bytearray(packets.ipv6_packet(C6, S6, PROTO_UDP, b"", ext_headers=chain))
    packet[41] = 3  # claims 32 bytes, 8 present
    assert parse_ip(bytes(packet)) == NotAFlow("truncated IPv6 extension header 0")


def test_parse_ip_records_ethernet_context():
    packet = packets.ipv4_packet(C4, S4, PROTO_UDP, packets.udp_datagram(C4, S4, 1, 2))
    info = parse_ip(packet, eth_src="02:00:00:00:00:09", vlan=3, frame_len=100)
    assert (info.eth_src, info.eth_dst, info.vlan, info.frame_len) == ("02:00:00:00:00:09", "", 3, 100)
    assert parse_ip(memoryview(packet)) == parse_ip(bytearray(packet)) == parse_ip(packet)


# --- Matches -----------------------------------------------------------------------
def test_direction_match_ipv4_tcp():
    info = parsed(packets.build_tcp_frame(S4, C4, 80, 40000))
    assert direction_match(info.key, True) == {
        "eth_type": ETH_TYPE_IPV4, "ip_proto": PROTO_TCP, "ipv4_src": C4, "ipv4_dst": S4,
        "tcp_src": 40000, "tcp_dst": 80,
    }  # fmt: skip
    assert direction_match(info.key, info.forward) == {
        "eth_type": ETH_TYPE_IPV4, "ip_proto": PROTO_TCP, "ipv4_src": S4, "ipv4_dst": C4,
        "tcp_src": 80, "tcp_dst": 40000,
    }  # fmt: skip


def test_direction_match_ipv6_udp_and_icmp():
    key, _ = FlowKey.between(PROTO_UDP, C6, 5, S6, 6)
    assert direction_match(key, False) == {
        "eth_type": ETH_TYPE_IPV6, "ip_proto": PROTO_UDP, "ipv6_src": S6, "ipv6_dst": C6,
        "udp_src": 6, "udp_dst": 5,
    }  # fmt: skip
    icmp, _ = FlowKey.between(PROTO_ICMP, C4, 0, S4, 0)
    assert direction_match(icmp, True) == {
        "eth_type": ETH_TYPE_IPV4, "ip_proto": PROTO_ICMP, "ipv4_src": C4, "ipv4_dst": S4,
    }  # fmt: skip
    sctp, _ = FlowKey.between(PROTO_SCTP, C4, 1, S4, 2)
    assert direction_match(sctp, True)["sctp_dst"] == 2


@pytest.mark.parametrize(
    "proto,src,sport,dst,dport",
    [(PROTO_TCP, S4, 80, C4, 9), (PROTO_UDP, C6, 1, S6, 2), (PROTO_ICMPV6, S6, 0, C6, 0)],
)
def test_key_from_match_inverts_direction_match(proto, src, sport, dst, dport):
    key, forward = FlowKey.between(proto, src, sport, dst, dport)
    for direction in (True, False):
        assert key_from_match(direction_match(key, direction)) == (key, direction)


def test_key_from_match_rejects_non_flow_match():
    with pytest.raises(ValueError, match="not a flow-direction match"):
        key_from_match({"in_port": 1})


# --- Never raises ----------------------------------------------------------------------
def _valid_frames():
    return [
        packets.build_tcp_frame(C4, S4, 1, 2, b"data", vlans=[1]),
        packets.build_udp_frame(C6, S6, 1, 2, b"data", vlans=[1, 2]),
        packets.build_icmp_frame(C4, S4),
        packets.build_tcp_frame(
            C6, S6, 1, 2, b"x", ext_headers=[(PROTO_HOPOPTS, packets.ipv6_option_header())]
        ),
        packets.fragment_ipv6_frame(C6, S6, PROTO_TCP, b"\0" * 8, 1, False),
        packets.build_udp_frame(C4, S4, 1, 2, options=b"\x01" * 4),
    ]


def _check_no_raise(data):
    result = parse_frame(data)
    assert isinstance(result, (PacketInfo, NotAFlow))
    if isinstance(result, NotAFlow):
        assert result.reason
    result = parse_ip(data)
    assert isinstance(result, (PacketInfo, NotAFlow))


def test_every_truncation_of_valid_frames_is_handled():
    for frame in _valid_frames():
        assert isinstance(parse_frame(frame), PacketInfo)
        for cut in range(len(frame)):
            _check_no_raise(frame[:cut])


def test_random_byte_flips_never_raise():
    rng = random.Random(20240601)
    frames = _valid_frames()
    for _ in range(20000):
        frame = bytearray(rng.choice(frames))
        for _ in range(rng.randint(1, 4)):
            frame[rng.randrange(len(frame))] = rng.randrange(256)
        _check_no_raise(bytes(frame))


def test_random_garbage_never_raises():
    rng = random.Random(7)
    for _ in range(5000):
        _check_no_raise(bytes(rng.randrange(256) for _ in range(rng.randrange(120))))


from hypothesis import given, settings, strategies as st  # noqa: E402  (pinned in the test extra)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_hypothesis_garbage_never_raises(data):
    _check_no_raise(data)


@settings(max_examples=500, deadline=None)
@given(
    st.sampled_from(range(len(_valid_frames()))),
    st.lists(st.tuples(st.integers(0, 199), st.integers(0, 255)), max_size=6),
    st.integers(0, 200),
)
def test_hypothesis_mutated_frames_never_raise(index, edits, cut):
    frame = bytearray(_valid_frames()[index])
    for position, value in edits:
        if position < len(frame):
            frame[position] = value
    _check_no_raise(bytes(frame[: len(frame) - cut % (len(frame) + 1)]))
