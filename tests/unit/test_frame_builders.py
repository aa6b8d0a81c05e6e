"""The test-frame builders (testkit.packets, testkit.oxm): dpkt finds their checksums valid, parse_frame reads them."""

from __future__ import annotations

import struct

import dpkt
import pytest

from prism.flows.identity import (
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_SCTP,
    PROTO_TCP,
    PROTO_UDP,
    TCP_ACK,
    TCP_SYN,
    PacketInfo,
    ip_to_bytes,
    parse_frame,
)
from testkit import oxm, packets

C4, S4, C6, S6 = "10.0.0.1", "10.0.0.2", "2001:db8::1", "2001:db8::2"
MAC_A, MAC_B = "02:00:00:00:00:0a", "02:00:00:00:00:0b"
PAYLOADS = (b"", b"odd", bytes(range(256)) * 2)


def ip_of(frame: bytes):
    """The IPv4/IPv6 packet dpkt finds in ``frame`` (through any VLAN tags)."""
    eth = dpkt.ethernet.Ethernet(frame)
    assert isinstance(eth.data, (dpkt.ip.IP, dpkt.ip6.IP6)), eth
    return eth.data


def transport_bytes(ip) -> bytes:
    """The transport message as sent (after any IPv6 extension headers), from the frame's own bytes."""
    return bytes(ip.data) if isinstance(ip.data, dpkt.Packet) else ip.data


def checksum_verifies(ip, proto: int, message: bytes) -> bool:
    """Whether ``message``'s checksum verifies: over the pseudo header, except ICMP's (the message alone)."""
    if proto == PROTO_ICMP:
        return dpkt.in_cksum(message) == 0
    if isinstance(ip, dpkt.ip.IP):
        pseudo = struct.pack("!4s4sxBH", ip.src, ip.dst, proto, len(message))
    else:
        pseudo = struct.pack("!16s16sIxxxB", ip.src, ip.dst, len(message), proto)
    return dpkt.in_cksum(pseudo + message) == 0


def assert_checksums_valid(frame: bytes, proto: int) -> None:
    ip = ip_of(frame)
    if isinstance(ip, dpkt.ip.IP):
        assert dpkt.in_cksum(ip.pack_hdr() + bytes(ip.opts)) == 0, "IPv4 header checksum"  # the header as parsed
    message = transport_bytes(ip)
    if proto == PROTO_SCTP:  # the CRC32c over the packet with its checksum field zeroed
        (crc,) = struct.unpack_from("!I", message, 8)
        assert crc == dpkt.crc32c.cksum(message[:8] + bytes(4) + message[12:]), "SCTP CRC32c"
    else:
        assert checksum_verifies(ip, proto, message), f"checksum of protocol {proto}"


BUILT = [
    pytest.param(build, src, dst, payload, id=f"{build.__name__}-v{4 if src == C4 else 6}-{len(payload)}")
    for build in (packets.build_tcp_frame, packets.build_udp_frame, packets.build_sctp_frame)
    for src, dst in ((C4, S4), (C6, S6))
    for payload in PAYLOADS
]


@pytest.mark.parametrize("build, src, dst, payload", BUILT)
def test_built_frames_have_checksums_dpkt_accepts_and_the_fields_parse_frame_reads(build, src, dst, payload):
    proto = {packets.build_tcp_frame: PROTO_TCP, packets.build_udp_frame: PROTO_UDP,
             packets.build_sctp_frame: PROTO_SCTP}[build]  # fmt: skip
    frame = build(src, dst, 40000, 443, payload)
    assert_checksums_valid(frame, proto)
    info = parse_frame(frame)
    assert isinstance(info, PacketInfo), info
    assert (info.proto, info.src, info.dst, info.sport, info.dport) == (
        proto, ip_to_bytes(src), ip_to_bytes(dst), 40000, 443)
    assert info.payload_len == len(payload) and info.frame_len == len(frame)


@pytest.mark.parametrize("src, dst", [(C4, S4), (C6, S6)])
def test_icmp_echo_tagged_frames_and_the_handshake_verify(src, dst):
    icmp = packets.build_icmp_frame(src, dst, ident=7, seq=9, payload=b"ping!")
    assert_checksums_valid(icmp, PROTO_ICMP if src == C4 else PROTO_ICMPV6)
    tagged = packets.build_udp_frame(src, dst, 1, 2, b"tagged", vlans=[100, 200], pad=True)
    assert_checksums_valid(tagged, PROTO_UDP)
    assert parse_frame(tagged).vlan == 100
    for frame, flags in zip(packets.build_tcp_handshake(src, dst, 40000, 80), (TCP_SYN, TCP_SYN | TCP_ACK, TCP_ACK)):
        assert_checksums_valid(frame, PROTO_TCP)
        assert parse_frame(frame).tcp_flags == flags


def test_options_and_extension_headers_keep_the_checksums_valid():
    tcp_options = packets.build_tcp_frame(C4, S4, 1, 2, b"data", options=b"\x02\x04\x05\xb4")
    assert_checksums_valid(tcp_options, PROTO_TCP)
    assert parse_frame(tcp_options).payload_len == 4
    ip_options = packets.build_udp_frame(C4, S4, 1, 2, b"data", options=b"\x01\x01\x01", ttl=3)
    assert_checksums_valid(ip_options, PROTO_UDP)
    assert ip_of(ip_options).ttl == 3 and parse_frame(ip_options).dport == 2
    chained = packets.build_udp_frame(C6, S6, 1, 2, b"data", ext_headers=[(0, packets.ipv6_option_header())])
    ip = ip_of(chained)
    assert ip.nxt == 0 and ip.p == PROTO_UDP  # dpkt walked the hop-by-hop header to UDP
    assert_checksums_valid(chained, PROTO_UDP)
    assert parse_frame(chained).sport == 1


@pytest.mark.parametrize("src, dst", [(C4, S4), (C6, S6)])
def test_a_udp_checksum_computed_as_zero_is_sent_as_all_ones(src, dst):
    # With a 2-byte payload equal to the checksum of the same datagram carrying zeros, the sum comes out zero.
    zeros = packets.udp_datagram(src, dst, 1, 2, b"\0\0")
    datagram = packets.udp_datagram(src, dst, 1, 2, zeros[6:8])
    assert datagram[6:8] == b"\xff\xff"
    assert checksum_verifies(ip_of(packets.build_ip_frame(src, dst, PROTO_UDP, datagram)), PROTO_UDP, datagram)


@pytest.mark.parametrize(
    "packet, proto",
    [
        (oxm.udp_packet(MAC_A, MAC_B, C4, S4, 1000, 53, b"odd"), PROTO_UDP),
        (oxm.tcp_packet(MAC_A, MAC_B, C6, S6, 40000, 80, payload=b"GET /"), PROTO_TCP),
        (dict(oxm.udp_packet(MAC_A, MAC_B, C6, S6, 1, 2), vlan_vid=oxm.OFPVID_PRESENT | 7, vlan_pcp=3), PROTO_UDP),
        (oxm.nd_solicit_packet(MAC_A, "fe80::1", "2001:db8::2"), PROTO_ICMPV6),
        ({**oxm.udp_packet(MAC_A, MAC_B, C4, S4, 1, 2), "ip_proto": PROTO_SCTP, "sctp_src": 5, "sctp_dst": 6,
          "payload": b"chunk"}, PROTO_SCTP),
        ({**oxm.udp_packet(MAC_A, MAC_B, C4, S4, 1, 2), "ip_proto": PROTO_ICMP, "icmpv4_type": 8,
          "payload": b"\0\1\0\1echo"}, PROTO_ICMP),
    ],
)
def test_the_fake_switchs_frames_verify_too(packet, proto):
    assert_checksums_valid(oxm.to_frame(packet), proto)
