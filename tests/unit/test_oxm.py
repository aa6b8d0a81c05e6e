"""The fake switch's packet codec: frames round-trip, garbage never raises."""

from __future__ import annotations

import os
import struct

import pytest

from testkit import oxm

MAC_A = "02:00:00:00:00:0a"
MAC_B = "02:00:00:00:00:0b"


@pytest.mark.parametrize(
    "packet",
    [
        oxm.udp_packet(MAC_A, MAC_B, "10.0.0.1", "10.0.0.2", 1000, 53, b"query"),
        oxm.tcp_packet(MAC_A, MAC_B, "10.0.0.1", "10.0.0.2", 40000, 80, flags=0x02),
        oxm.udp_packet(MAC_A, MAC_B, "2001:db8::1", "2001:db8::2", 1000, 53, b"x" * 100),
        oxm.tcp_packet(MAC_A, MAC_B, "2001:db8::1", "2001:db8::2", 40000, 80, payload=b"GET /"),
        oxm.arp_packet(MAC_A, "10.0.0.1", "10.0.0.2"),
        oxm.nd_solicit_packet(MAC_A, "fe80::1", "2001:db8::2"),
        dict(
            oxm.udp_packet(MAC_A, MAC_B, "10.0.0.1", "10.0.0.2", 1, 2),
            vlan_vid=oxm.OFPVID_PRESENT | 7,
            vlan_pcp=3,
        ),
    ],
)
def test_frames_round_trip_and_keep_the_fields(packet):
    frame = oxm.to_frame(packet)
    parsed = oxm.from_frame(frame)
    assert oxm.to_frame(parsed) == frame
    assert {k: v for k, v in parsed.items() if k in packet} == oxm.normalize_packet(packet)


def test_a_short_ip_header_stays_payload():
    frame = oxm.to_frame(oxm.udp_packet(MAC_A, MAC_B, "10.0.0.1", "10.0.0.2", 1, 2))[:24]
    parsed = oxm.from_frame(frame)
    assert parsed["eth_type"] == oxm.ETH_TYPE_IPV4 and "ipv4_src" not in parsed
    assert oxm.to_frame(parsed) == frame


@pytest.mark.parametrize(
    "eth_type", [oxm.ETH_TYPE_IPV4, oxm.ETH_TYPE_IPV6, oxm.ETH_TYPE_ARP, oxm.ETH_TYPE_VLAN, 0x1234]
)
@pytest.mark.parametrize("size", [0, 1, 4, 20, 28, 40, 48, 60, 200])
def test_garbage_after_a_known_ethertype_never_raises(eth_type, size):
    for first in (0x45, 0x4F, 0x60, 0x00):
        frame = bytes(12) + struct.pack("!H", eth_type) + bytes([first]) + os.urandom(size)
        oxm.to_frame(oxm.from_frame(frame))
        oxm.to_frame(oxm.from_frame(frame[: 14 + size // 2]))


def test_short_frames_are_payload_only():
    assert oxm.from_frame(b"abc") == {"payload": b"abc"}
    assert oxm.to_frame({"payload": b"abc"}) == b"abc"


def test_normalize_rejects_values_that_do_not_fit():
    with pytest.raises(ValueError):
        oxm.normalize("eth_dst", "not-a-mac")
    with pytest.raises(ValueError):
        oxm.normalize("ipv4_src", "2001:db8::1")
    with pytest.raises(ValueError):
        oxm.normalize("tcp_dst", "80")
