"""A packet as a switch sees it: a dict of OXM fields, to and from Ethernet frames.

The fake switch (``testkit.fakeswitch``) matches and rewrites packets as dicts
keyed by OXM field names exactly as Ryu spells them (``in_port``, ``eth_dst``,
``ipv4_src``, ``tcp_dst`` ...). Besides OXM fields a packet dict may carry a
few header values that OpenFlow 1.3 cannot match (``ip_ttl``, ``tcp_seq``,
``tcp_ack``, ``tcp_window``) and the bytes after the last parsed header
(``payload``), so that ``to_frame(from_frame(f)) == f`` for every frame that
``to_frame`` builds. This codec is written independently of ``prism.flows.identity``
on purpose: a fake that shared the parser under test would share its bugs.

A layer is built only when one of its fields is present, so a packet whose
IPv4 header was cut short round-trips as Ethernet + raw payload.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Any, Dict, Mapping

import dpkt

ETH_TYPE_IPV4 = 0x0800
ETH_TYPE_ARP = 0x0806
ETH_TYPE_VLAN = 0x8100
ETH_TYPE_IPV6 = 0x86DD
PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17
PROTO_ICMPV6 = 58
PROTO_SCTP = 132
ICMPV6_ND_SOLICIT = 135
ICMPV6_ND_ADVERT = 136
OFPVID_PRESENT = 0x1000
BROADCAST_MAC = "ff:ff:ff:ff:ff:ff"

MAC_FIELDS = frozenset({"eth_src", "eth_dst", "arp_sha", "arp_tha", "ipv6_nd_sll", "ipv6_nd_tll"})
IPV4_FIELDS = frozenset({"ipv4_src", "ipv4_dst", "arp_spa", "arp_tpa"})
IPV6_FIELDS = frozenset({"ipv6_src", "ipv6_dst", "ipv6_nd_target"})
#: Header values a packet dict may carry that are not OXM match fields.
EXTRA_FIELDS = frozenset({"ip_ttl", "tcp_seq", "tcp_ack", "tcp_window", "payload"})

_ETH = struct.Struct("!6s6sH")
_VLAN = struct.Struct("!HH")
_ARP = struct.Struct("!HHBBH6s4s6s4s")
_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_IPV6 = struct.Struct("!IHBB16s16s")
_TCP = struct.Struct("!HHIIBBHHH")
_UDP = struct.Struct("!HHHH")
_SCTP = struct.Struct("!HHII")  # ports, verification tag, checksum
_ICMP = struct.Struct("!BBH")
_ICMP_REST = 4  # identifier/sequence or unused word after type, code, checksum

Packet = Dict[str, Any]


def normalize(field: str, value: Any) -> Any:
    """The canonical form of one field's value (lower-case MAC, compressed IP text).

    Raises:
        ValueError: the value does not fit the field.
    """
    if field in MAC_FIELDS:
        octets = str(value).lower().split(":")
        if len(octets) != 6 or not all(len(o) == 2 for o in octets):
            raise ValueError(f"{field}: {value!r} is not a MAC address")
        int("".join(octets), 16)
        return ":".join(octets)
    if field in IPV4_FIELDS:
        return str(ipaddress.IPv4Address(value))
    if field in IPV6_FIELDS:
        return str(ipaddress.IPv6Address(value))
    if field == "payload":
        return bytes(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{field}: {value!r} is not an integer")
    return value


def normalize_packet(packet: Mapping[str, Any]) -> Packet:
    """A copy of ``packet`` with every value in canonical form."""
    return {name: normalize(name, value) for name, value in packet.items()}


def is_multicast_mac(mac: str) -> bool:
    """True for broadcast and multicast Ethernet addresses (group bit set)."""
    return bool(int(mac[:2], 16) & 1)


def _mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def _mac_text(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


# --- Building ---------------------------------------------------------------
def to_frame(packet: Mapping[str, Any]) -> bytes:
    """The Ethernet frame of ``packet`` (defaults for missing fields, real checksums, dpkt's headers).

    A packet without ``eth_type`` is raw bytes: its ``payload`` alone.
    """
    payload = bytes(packet.get("payload", b""))
    if "eth_type" not in packet:
        return payload
    eth_type = packet["eth_type"]
    body: Any = payload
    if eth_type == ETH_TYPE_ARP and "arp_op" in packet:
        body = _arp(packet) + payload
    elif eth_type == ETH_TYPE_IPV4 and ("ipv4_src" in packet or "ip_proto" in packet):
        body = _ipv4(packet, payload)
    elif eth_type == ETH_TYPE_IPV6 and ("ipv6_src" in packet or "ip_proto" in packet):
        body = _ipv6(packet, payload)
    if "vlan_vid" in packet:
        tag = dpkt.ethernet.VLANtag8021Q(pri=packet.get("vlan_pcp", 0), id=packet["vlan_vid"] & 0x0FFF, type=eth_type)
        body, eth_type = bytes(tag) + bytes(body), ETH_TYPE_VLAN
    header = dpkt.ethernet.Ethernet(dst=_mac(packet.get("eth_dst", BROADCAST_MAC)),
                                    src=_mac(packet.get("eth_src", "00:00:00:00:00:00")), type=eth_type)
    return header.pack_hdr() + bytes(body)  # not data=: dpkt's Ethernet would parse it and pack it anew


def _arp(packet: Mapping[str, Any]) -> bytes:
    return bytes(dpkt.arp.ARP(
        op=packet["arp_op"], sha=_mac(packet.get("arp_sha", "00:00:00:00:00:00")),
        spa=ipaddress.IPv4Address(packet.get("arp_spa", "0.0.0.0")).packed,
        tha=_mac(packet.get("arp_tha", "00:00:00:00:00:00")),
        tpa=ipaddress.IPv4Address(packet.get("arp_tpa", "0.0.0.0")).packed,
    ))  # fmt: skip


def _l4(packet: Mapping[str, Any], payload: bytes) -> Any:
    """The transport message (its IP layer fills in the checksum when packed), or ``payload`` if there is none."""
    proto = packet.get("ip_proto", 0)
    if proto == PROTO_TCP and "tcp_src" in packet:
        return dpkt.tcp.TCP(
            sport=packet["tcp_src"], dport=packet.get("tcp_dst", 0), seq=packet.get("tcp_seq", 0),
            ack=packet.get("tcp_ack", 0), flags=packet.get("tcp_flags", 0) & 0xFF,
            win=packet.get("tcp_window", 65535), data=payload,
        )  # fmt: skip
    if proto == PROTO_UDP and "udp_src" in packet:
        return dpkt.udp.UDP(sport=packet["udp_src"], dport=packet.get("udp_dst", 0),
                            ulen=dpkt.udp.UDP.__hdr_len__ + len(payload), data=payload)  # fmt: skip
    if proto == PROTO_SCTP and "sctp_src" in packet:
        return bytes(dpkt.sctp.SCTP(sport=packet["sctp_src"], dport=packet.get("sctp_dst", 0), chunks=[payload]))
    if proto == PROTO_ICMP and "icmpv4_type" in packet:
        return bytes(dpkt.icmp.ICMP(type=packet["icmpv4_type"], code=packet.get("icmpv4_code", 0), data=payload))
    if proto == PROTO_ICMPV6 and "icmpv6_type" in packet:
        body = payload
        if "ipv6_nd_target" in packet:
            body = bytes(_ICMP_REST) + ipaddress.IPv6Address(packet["ipv6_nd_target"]).packed + payload
        return dpkt.icmp6.ICMP6(type=packet["icmpv6_type"], code=packet.get("icmpv6_code", 0), data=body)
    return payload


def _ipv4(packet: Mapping[str, Any], payload: bytes) -> bytes:
    return bytes(dpkt.ip.IP(
        tos=(packet.get("ip_dscp", 0) << 2) | packet.get("ip_ecn", 0), ttl=packet.get("ip_ttl", 64),
        p=packet.get("ip_proto", 0), src=ipaddress.IPv4Address(packet.get("ipv4_src", "0.0.0.0")).packed,
        dst=ipaddress.IPv4Address(packet.get("ipv4_dst", "0.0.0.0")).packed, data=_l4(packet, payload),
    ))  # fmt: skip


def _ipv6(packet: Mapping[str, Any], payload: bytes) -> bytes:
    body = _l4(packet, payload)
    tc = (packet.get("ip_dscp", 0) << 2) | packet.get("ip_ecn", 0)
    return bytes(dpkt.ip6.IP6(
        _v_fc_flow=(6 << 28) | (tc << 20) | (packet.get("ipv6_flabel", 0) & 0xFFFFF), plen=len(body),
        nxt=packet.get("ip_proto", 0), hlim=packet.get("ip_ttl", 64),
        src=ipaddress.IPv6Address(packet.get("ipv6_src", "::")).packed,
        dst=ipaddress.IPv6Address(packet.get("ipv6_dst", "::")).packed, data=body,
    ))  # fmt: skip


# --- Parsing -------------------------------------------------------------------
def from_frame(frame: bytes) -> Packet:
    """The fields of an Ethernet frame; never raises.

    Whatever cannot be parsed (a short header, an unknown protocol) stays in
    ``payload``. IPv4 options, TCP options and IPv6 extension headers are not
    fields: such frames do not round-trip byte for byte.
    """
    frame = bytes(frame)
    if len(frame) < _ETH.size:
        return {"payload": frame}
    dst, src, eth_type = _ETH.unpack_from(frame)
    packet: Packet = {"eth_dst": _mac_text(dst), "eth_src": _mac_text(src)}
    offset = _ETH.size
    if eth_type == ETH_TYPE_VLAN and len(frame) >= offset + _VLAN.size:
        tci, eth_type = _VLAN.unpack_from(frame, offset)
        packet["vlan_vid"] = OFPVID_PRESENT | (tci & 0x0FFF)
        packet["vlan_pcp"] = tci >> 13
        offset += _VLAN.size
    packet["eth_type"] = eth_type
    rest = frame[offset:]
    if eth_type == ETH_TYPE_ARP and len(rest) >= _ARP.size:
        _, _, _, _, op, sha, spa, tha, tpa = _ARP.unpack_from(rest)
        packet.update(
            arp_op=op, arp_sha=_mac_text(sha), arp_spa=str(ipaddress.IPv4Address(spa)),
            arp_tha=_mac_text(tha), arp_tpa=str(ipaddress.IPv4Address(tpa)),
        )  # fmt: skip
        rest = rest[_ARP.size :]
    elif eth_type == ETH_TYPE_IPV4 and len(rest) >= _IPV4.size and rest[0] >> 4 == 4:
        ver_ihl, tos, total, _, _, ttl, proto, _, src_ip, dst_ip = _IPV4.unpack_from(rest)
        header_len = (ver_ihl & 0x0F) * 4
        if header_len >= _IPV4.size and len(rest) >= header_len:
            packet.update(
                ip_dscp=tos >> 2, ip_ecn=tos & 3, ip_proto=proto, ip_ttl=ttl,
                ipv4_src=str(ipaddress.IPv4Address(src_ip)), ipv4_dst=str(ipaddress.IPv4Address(dst_ip)),
            )  # fmt: skip
            end = total if header_len <= total <= len(rest) else len(rest)
            rest = _parse_l4(packet, proto, rest[header_len:end])
    elif eth_type == ETH_TYPE_IPV6 and len(rest) >= _IPV6.size and rest[0] >> 4 == 6:
        first, length, proto, hops, src_ip, dst_ip = _IPV6.unpack_from(rest)
        tc = (first >> 20) & 0xFF
        packet.update(
            ip_dscp=tc >> 2, ip_ecn=tc & 3, ip_proto=proto, ip_ttl=hops, ipv6_flabel=first & 0xFFFFF,
            ipv6_src=str(ipaddress.IPv6Address(src_ip)), ipv6_dst=str(ipaddress.IPv6Address(dst_ip)),
        )  # fmt: skip
        body = rest[_IPV6.size :]
        rest = _parse_l4(packet, proto, body[:length] if length <= len(body) else body)
    packet["payload"] = rest
    return packet


def _parse_l4(packet: Packet, proto: int, body: bytes) -> bytes:
    """Add the transport fields of ``body`` to ``packet``; returns what follows them."""
    if proto == PROTO_TCP and len(body) >= _TCP.size:
        sport, dport, seq, ack, offset, flags, window, _, _ = _TCP.unpack_from(body)
        header_len = (offset >> 4) * 4
        if header_len < _TCP.size or header_len > len(body):
            return body
        packet.update(
            tcp_src=sport, tcp_dst=dport, tcp_seq=seq, tcp_ack=ack, tcp_flags=flags, tcp_window=window
        )
        return body[header_len:]
    if proto == PROTO_UDP and len(body) >= _UDP.size:
        sport, dport, _, _ = _UDP.unpack_from(body)
        packet.update(udp_src=sport, udp_dst=dport)
        return body[_UDP.size :]
    if proto == PROTO_SCTP and len(body) >= _SCTP.size:
        sport, dport, _, _ = _SCTP.unpack_from(body)
        packet.update(sctp_src=sport, sctp_dst=dport)
        return body[_SCTP.size :]
    if proto == PROTO_ICMP and len(body) >= _ICMP.size:
        packet.update(icmpv4_type=body[0], icmpv4_code=body[1])
        return body[_ICMP.size :]
    if proto == PROTO_ICMPV6 and len(body) >= _ICMP.size:
        packet.update(icmpv6_type=body[0], icmpv6_code=body[1])
        nd_len = _ICMP.size + _ICMP_REST + 16
        if body[0] in (ICMPV6_ND_SOLICIT, ICMPV6_ND_ADVERT) and len(body) >= nd_len:
            packet["ipv6_nd_target"] = str(ipaddress.IPv6Address(body[_ICMP.size + _ICMP_REST : nd_len]))
            return body[nd_len:]
        return body[_ICMP.size :]
    return body


# --- Packets for tests -------------------------------------------------------------
def udp_packet(
    eth_src: str, eth_dst: str, src: str, dst: str, sport: int, dport: int, payload: bytes = b""
) -> Packet:
    """A UDP packet over IPv4 or IPv6 (chosen by the address text)."""
    packet = _ip(eth_src, eth_dst, src, dst, PROTO_UDP)
    packet.update(udp_src=sport, udp_dst=dport, payload=payload)
    return packet


def tcp_packet(
    eth_src: str,
    eth_dst: str,
    src: str,
    dst: str,
    sport: int,
    dport: int,
    flags: int = 0x10,
    payload: bytes = b"",
) -> Packet:
    """A TCP segment over IPv4 or IPv6 (``flags`` default ACK)."""
    packet = _ip(eth_src, eth_dst, src, dst, PROTO_TCP)
    packet.update(tcp_src=sport, tcp_dst=dport, tcp_flags=flags, tcp_seq=1, tcp_ack=1, payload=payload)
    return packet


def arp_packet(eth_src: str, spa: str, tpa: str, eth_dst: str = BROADCAST_MAC, op: int = 1) -> Packet:
    """An ARP request (``op=1``, broadcast by default) or reply (``op=2``)."""
    tha = "00:00:00:00:00:00" if op == 1 else eth_dst
    return {
        "eth_src": eth_src, "eth_dst": eth_dst, "eth_type": ETH_TYPE_ARP, "arp_op": op,
        "arp_sha": eth_src, "arp_spa": spa, "arp_tha": tha, "arp_tpa": tpa, "payload": b"",
    }  # fmt: skip


def nd_solicit_packet(eth_src: str, src: str, target: str) -> Packet:
    """An IPv6 neighbour solicitation for ``target`` to its solicited-node multicast group."""
    low = ipaddress.IPv6Address(target).packed[-3:]
    group = ipaddress.IPv6Address(bytes.fromhex("ff0200000000000000000001ff") + low)
    eth_dst = "33:33:" + ":".join(f"{b:02x}" for b in group.packed[-4:])
    packet = _ip(eth_src, eth_dst, src, str(group), PROTO_ICMPV6)
    packet.update(
        icmpv6_type=ICMPV6_ND_SOLICIT, icmpv6_code=0, ipv6_nd_target=target, ip_ttl=255, payload=b""
    )
    return packet


def _ip(eth_src: str, eth_dst: str, src: str, dst: str, proto: int) -> Packet:
    if ipaddress.ip_address(src).version == 4:
        return {
            "eth_src": eth_src, "eth_dst": eth_dst, "eth_type": ETH_TYPE_IPV4,
            "ip_proto": proto, "ipv4_src": src, "ipv4_dst": dst,
        }  # fmt: skip
    return {
        "eth_src": eth_src, "eth_dst": eth_dst, "eth_type": ETH_TYPE_IPV6,
        "ip_proto": proto, "ipv6_src": src, "ipv6_dst": dst,
    }  # fmt: skip
