"""Build well-formed test frames (Ethernet/VLAN, IPv4/IPv6, TCP/UDP/SCTP/ICMP) with correct checksums."""

from __future__ import annotations

import struct
from typing import Iterable, Optional, Sequence, Tuple

from prism.flows.identity import (
    ETH_TYPE_8021AD,
    ETH_TYPE_8021Q,
    ETH_TYPE_IPV4,
    ETH_TYPE_IPV6,
    PROTO_FRAGMENT,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_SCTP,
    PROTO_TCP,
    PROTO_UDP,
    TCP_ACK,
    TCP_SYN,
    ip_to_bytes,
    mac_to_bytes,
)

DEFAULT_ETH_SRC = "02:00:00:00:00:01"
DEFAULT_ETH_DST = "02:00:00:00:00:02"
DEFAULT_TTL = 64
DEFAULT_WINDOW = 65535
IPV4_FLAG_MORE_FRAGMENTS = 0x2000
IPV4_FLAG_DONT_FRAGMENT = 0x4000
IPV6_FLAG_MORE_FRAGMENTS = 0x0001
ICMP_ECHO_REQUEST = 8
ICMPV6_ECHO_REQUEST = 128
ETH_MIN_FRAME_LEN = 60  #: without FCS; shorter frames are padded with zeros

_ETH = struct.Struct("!6s6sH")
_VLAN_TAG = struct.Struct("!HH")
_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_IPV6 = struct.Struct("!IHBB16s16s")
_TCP = struct.Struct("!HHIIBBHHH")
_UDP = struct.Struct("!HHHH")
_SCTP = struct.Struct("!HHII")
_ICMP_ECHO = struct.Struct("!BBHHH")
_IPV6_FRAG = struct.Struct("!BBHI")
_U16 = struct.Struct("!H")
_CRC32C_POLY = 0x82F63B78


def internet_checksum(data: bytes) -> int:
    """RFC 1071 one's-complement checksum of ``data``."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _pseudo_header(src: bytes, dst: bytes, proto: int, length: int) -> bytes:
    if len(src) == 4:
        return src + dst + struct.pack("!BBH", 0, proto, length)
    return src + dst + struct.pack("!IxxxB", length, proto)


def _crc32c_table() -> Tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ _CRC32C_POLY if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC32C = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC32c (Castagnoli), the SCTP checksum."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


# --- L4 ------------------------------------------------------------------------
def tcp_segment(
    src: str, dst: str, sport: int, dport: int, payload: bytes = b"", flags: int = TCP_SYN,
    seq: int = 0, ack: int = 0, window: int = DEFAULT_WINDOW, options: bytes = b"",
) -> bytes:  # fmt: skip
    """A TCP segment with a correct checksum (``options`` padded to 4 bytes)."""
    options += b"\0" * (-len(options) % 4)
    data_offset = ((20 + len(options)) // 4) << 4
    header = _TCP.pack(sport, dport, seq, ack, data_offset, flags, window, 0, 0) + options
    segment = header + payload
    pseudo = _pseudo_header(ip_to_bytes(src), ip_to_bytes(dst), PROTO_TCP, len(segment))
    csum = internet_checksum(pseudo + segment)
    return segment[:16] + _U16.pack(csum) + segment[18:]


def udp_datagram(src: str, dst: str, sport: int, dport: int, payload: bytes = b"") -> bytes:
    """A UDP datagram with a correct checksum."""
    length = 8 + len(payload)
    datagram = _UDP.pack(sport, dport, length, 0) + payload
    pseudo = _pseudo_header(ip_to_bytes(src), ip_to_bytes(dst), PROTO_UDP, length)
    csum = internet_checksum(pseudo + datagram) or 0xFFFF
    return datagram[:6] + _U16.pack(csum) + datagram[8:]


def sctp_packet(sport: int, dport: int, chunks: bytes = b"", tag: int = 0) -> bytes:
    """An SCTP packet (common header + raw ``chunks``) with a correct CRC32c."""
    packet = _SCTP.pack(sport, dport, tag, 0) + chunks
    csum = crc32c(packet)
    return packet[:8] + struct.pack("<I", csum) + packet[12:]


def icmp_echo(
    src: str, dst: str, ident: int = 1, seq: int = 1, payload: bytes = b"ping"
) -> Tuple[int, bytes]:
    """An ICMP (IPv4) or ICMPv6 echo request; returns ``(proto, message)``."""
    if ":" in src:
        body = _ICMP_ECHO.pack(ICMPV6_ECHO_REQUEST, 0, 0, ident, seq) + payload
        pseudo = _pseudo_header(ip_to_bytes(src), ip_to_bytes(dst), PROTO_ICMPV6, len(body))
        csum = internet_checksum(pseudo + body)
        return PROTO_ICMPV6, body[:2] + _U16.pack(csum) + body[4:]
    body = _ICMP_ECHO.pack(ICMP_ECHO_REQUEST, 0, 0, ident, seq) + payload
    return PROTO_ICMP, body[:2] + _U16.pack(internet_checksum(body)) + body[4:]


# --- L3 ------------------------------------------------------------------------
def ipv4_packet(
    src: str, dst: str, proto: int, payload: bytes, ttl: int = DEFAULT_TTL, ident: int = 1,
    fragment_offset: int = 0, more_fragments: bool = False, options: bytes = b"",
) -> bytes:  # fmt: skip
    """An IPv4 packet with a correct header checksum.

    Args:
        src: Source address text.
        dst: Destination address text.
        proto: IP protocol number.
        payload: Everything after the IP header.
        ttl: Time to live.
        ident: Identification field.
        fragment_offset: Offset in 8-byte units (non-zero: a later fragment).
        more_fragments: Set the MF flag.
        options: IP options (padded to 4 bytes).

    Returns:
        The packet.
    """
    options += b"\0" * (-len(options) % 4)
    header_len = 20 + len(options)
    frag = fragment_offset | (IPV4_FLAG_MORE_FRAGMENTS if more_fragments else 0)
    header = _IPV4.pack(
        0x40 | header_len // 4, 0, header_len + len(payload), ident, frag, ttl, proto, 0,
        ip_to_bytes(src), ip_to_bytes(dst),
    ) + options  # fmt: skip
    csum = internet_checksum(header)
    return header[:10] + _U16.pack(csum) + header[12:] + payload


def ipv6_packet(
    src: str, dst: str, next_header: int, payload: bytes, hop_limit: int = DEFAULT_TTL,
    ext_headers: Sequence[Tuple[int, bytes]] = (),
) -> bytes:  # fmt: skip
    """An IPv6 packet, optionally with extension headers.

    Args:
        src: Source address text.
        dst: Destination address text.
        next_header: Upper-layer protocol of ``payload``.
        payload: The upper-layer message.
        hop_limit: Hop limit.
        ext_headers: ``(type, body)`` pairs in order; each body is the header
            without its first two bytes (use :func:`ipv6_option_header` /
            :func:`ipv6_fragment_header` to make them).

    Returns:
        The packet.
    """
    chain = b""
    types = [t for t, _ in ext_headers] + [next_header]
    for (ext_type, body), following in zip(ext_headers, types[1:]):
        chain += bytes([following]) + body
    first = types[0]
    header = _IPV6.pack(
        6 << 28, len(chain) + len(payload), first, hop_limit, ip_to_bytes(src), ip_to_bytes(dst)
    )
    return header + chain + payload


def ipv6_option_header(options_len: int = 6) -> bytes:
    """Body of a hop-by-hop / destination-options / routing header (PadN filled)."""
    total = 2 + options_len
    if total % 8:
        raise ValueError("an IPv6 option header is a multiple of 8 bytes")
    pad = bytes([1, options_len - 2]) + b"\0" * (options_len - 2) if options_len >= 2 else b""
    return bytes([total // 8 - 1]) + pad


def ipv6_fragment_header(offset: int = 0, more: bool = False, ident: int = 1) -> bytes:
    """Body of an IPv6 fragment header (offset in 8-byte units)."""
    frag = (offset << 3) | (IPV6_FLAG_MORE_FRAGMENTS if more else 0)
    return _IPV6_FRAG.pack(0, 0, frag, ident)[1:]


def ip_packet(src: str, dst: str, proto: int, payload: bytes, **kwargs) -> bytes:
    """IPv4 or IPv6 packet depending on the address text."""
    if ":" in src:
        return ipv6_packet(src, dst, proto, payload, **kwargs)
    return ipv4_packet(src, dst, proto, payload, **kwargs)


# --- L2 ------------------------------------------------------------------------
def ethernet_frame(
    payload: bytes, eth_type: int, eth_src: str = DEFAULT_ETH_SRC,
    eth_dst: str = DEFAULT_ETH_DST, vlans: Iterable[int] = (), pad: bool = False,
) -> bytes:  # fmt: skip
    """An Ethernet frame.

    Args:
        payload: What follows the header.
        eth_type: Ethernet type of ``payload``.
        eth_src: Source MAC text.
        eth_dst: Destination MAC text.
        vlans: VLAN ids, outermost first; with two, the outer tag is 802.1ad.
        pad: Pad with zeros to the 60-byte Ethernet minimum.

    Returns:
        The frame (no FCS).
    """
    vlans = tuple(vlans)
    tpids = [ETH_TYPE_8021AD] * (len(vlans) - 1) + [ETH_TYPE_8021Q] if vlans else []
    types = tpids + [eth_type]
    frame = _ETH.pack(mac_to_bytes(eth_dst), mac_to_bytes(eth_src), types[0])
    for vid, inner_type in zip(vlans, types[1:]):
        frame += _VLAN_TAG.pack(vid, inner_type)
    frame += payload
    if pad and len(frame) < ETH_MIN_FRAME_LEN:
        frame += b"\0" * (ETH_MIN_FRAME_LEN - len(frame))
    return frame


def _eth_type_of(src: str) -> int:
    return ETH_TYPE_IPV6 if ":" in src else ETH_TYPE_IPV4


def build_ip_frame(
    src: str, dst: str, proto: int, l4: bytes, eth_src: str = DEFAULT_ETH_SRC,
    eth_dst: str = DEFAULT_ETH_DST, vlans: Iterable[int] = (), pad: bool = False, **ip_kwargs,
) -> bytes:  # fmt: skip
    """A frame carrying ``l4`` (already built) over IPv4/IPv6; ``ip_kwargs`` go to the IP builder."""
    packet = ip_packet(src, dst, proto, l4, **ip_kwargs)
    return ethernet_frame(packet, _eth_type_of(src), eth_src, eth_dst, vlans, pad)


def build_tcp_frame(
    src: str, dst: str, sport: int, dport: int, payload: bytes = b"", flags: int = TCP_SYN,
    seq: int = 0, ack: int = 0, window: int = DEFAULT_WINDOW, options: bytes = b"",
    **frame_kwargs,
) -> bytes:  # fmt: skip
    """An Ethernet frame carrying one TCP segment (checksums correct).

    ``frame_kwargs``: ``eth_src``, ``eth_dst``, ``vlans``, ``pad`` and the IP
    builder's keywords (``ttl``, ``ext_headers`` ...).
    """
    segment = tcp_segment(src, dst, sport, dport, payload, flags, seq, ack, window, options)
    return build_ip_frame(src, dst, PROTO_TCP, segment, **frame_kwargs)


def build_udp_frame(
    src: str, dst: str, sport: int, dport: int, payload: bytes = b"", **frame_kwargs
) -> bytes:
    """An Ethernet frame carrying one UDP datagram (checksums correct)."""
    datagram = udp_datagram(src, dst, sport, dport, payload)
    return build_ip_frame(src, dst, PROTO_UDP, datagram, **frame_kwargs)


def build_sctp_frame(
    src: str, dst: str, sport: int, dport: int, chunks: bytes = b"", **frame_kwargs
) -> bytes:
    """An Ethernet frame carrying one SCTP packet (CRC32c correct)."""
    return build_ip_frame(src, dst, PROTO_SCTP, sctp_packet(sport, dport, chunks), **frame_kwargs)


def build_icmp_frame(
    src: str, dst: str, ident: int = 1, seq: int = 1, payload: bytes = b"ping", **frame_kwargs
) -> bytes:
    """An Ethernet frame carrying an ICMP/ICMPv6 echo request (checksums correct)."""
    proto, message = icmp_echo(src, dst, ident, seq, payload)
    return build_ip_frame(src, dst, proto, message, **frame_kwargs)


def build_tcp_handshake(
    client: str, server: str, cport: int, sport: int, client_isn: int = 1000,
    server_isn: int = 5000, **frame_kwargs,
) -> Tuple[bytes, bytes, bytes]:  # fmt: skip
    """SYN, SYN-ACK, ACK frames of one TCP connection."""
    syn = build_tcp_frame(client, server, cport, sport, flags=TCP_SYN, seq=client_isn,
                          **frame_kwargs)  # fmt: skip
    syn_ack = build_tcp_frame(server, client, sport, cport, flags=TCP_SYN | TCP_ACK,
                              seq=server_isn, ack=client_isn + 1, **frame_kwargs)  # fmt: skip
    ack = build_tcp_frame(client, server, cport, sport, flags=TCP_ACK, seq=client_isn + 1,
                          ack=server_isn + 1, **frame_kwargs)  # fmt: skip
    return syn, syn_ack, ack


def build_arp_frame(
    sender_ip: str = "10.0.0.1", target_ip: str = "10.0.0.2", eth_src: str = DEFAULT_ETH_SRC,
    vlans: Iterable[int] = (),
) -> bytes:  # fmt: skip
    """A broadcast ARP request (a frame that is not a flow)."""
    body = struct.pack(
        "!HHBBH6s4s6s4s", 1, ETH_TYPE_IPV4, 6, 4, 1, mac_to_bytes(eth_src),
        ip_to_bytes(sender_ip), b"\0" * 6, ip_to_bytes(target_ip),
    )  # fmt: skip
    return ethernet_frame(body, 0x0806, eth_src, "ff:ff:ff:ff:ff:ff", vlans)


def fragment_ipv6_frame(
    src: str, dst: str, next_header: int, chunk: bytes, offset: int, more: bool,
    ident: int = 1, eth_src: Optional[str] = None, eth_dst: Optional[str] = None,
) -> bytes:  # fmt: skip
    """A frame with one IPv6 fragment: ``chunk`` at ``offset`` (8-byte units)."""
    packet = ipv6_packet(
        src, dst, next_header, chunk,
        ext_headers=[(PROTO_FRAGMENT, ipv6_fragment_header(offset, more, ident))],
    )  # fmt: skip
    return ethernet_frame(
        packet, ETH_TYPE_IPV6, eth_src or DEFAULT_ETH_SRC, eth_dst or DEFAULT_ETH_DST
    )
