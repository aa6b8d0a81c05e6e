"""Build well-formed test frames (Ethernet/VLAN, IPv4/IPv6, TCP/UDP/SCTP/ICMP) with correct checksums.

The headers are dpkt's (``dpkt.tcp.TCP``, ``dpkt.ip.IP`` ...) and dpkt fills in
the checksums: the transport's over its IPv4/IPv6 pseudo header, the IPv4
header's, ICMP's and SCTP's CRC32c. Test tools only: the controller parses
frames with its own hot-path code (``prism.flows.identity.parse_frame``).
"""

from __future__ import annotations

from typing import Iterable, Optional, Sequence, Tuple, Union

import dpkt

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
ICMP_ECHO_REQUEST = 8
ICMPV6_ECHO_REQUEST = 128
ETH_MIN_FRAME_LEN = 60  #: without FCS; shorter frames are padded with zeros
ETH_TYPE_ARP = 0x0806
#: A UDP checksum of 0 means "none", so a computed 0 is sent as this (RFC 768).
UDP_CHECKSUM_OF_ZERO = 0xFFFF

Transport = Union[dpkt.tcp.TCP, dpkt.udp.UDP, dpkt.icmp.ICMP, dpkt.icmp6.ICMP6]


def _checksummed(src: str, dst: str, proto: int, message: Transport) -> bytes:
    """``message`` packed with its checksum over the pseudo header of ``src`` -> ``dst``.

    dpkt's IP and IPv6 layers fill in their payload's zero checksum when they
    are packed; the carrier packet itself is thrown away.
    """
    message.sum = 0
    if ":" in src:
        carrier = dpkt.ip6.IP6(src=ip_to_bytes(src), dst=ip_to_bytes(dst), nxt=proto, data=message)
    else:
        carrier = dpkt.ip.IP(src=ip_to_bytes(src), dst=ip_to_bytes(dst), p=proto, data=message)
    bytes(carrier)
    if proto == PROTO_UDP and not message.sum:
        message.sum = UDP_CHECKSUM_OF_ZERO  # dpkt's IPv4 layer does this, its IPv6 layer does not
    return bytes(message)


# --- L4 ------------------------------------------------------------------------
def tcp_segment(
    src: str, dst: str, sport: int, dport: int, payload: bytes = b"", flags: int = TCP_SYN,
    seq: int = 0, ack: int = 0, window: int = DEFAULT_WINDOW, options: bytes = b"",
) -> bytes:  # fmt: skip
    """A TCP segment with a correct checksum (``options`` padded to 4 bytes)."""
    options += b"\0" * (-len(options) % 4)
    segment = dpkt.tcp.TCP(sport=sport, dport=dport, seq=seq, ack=ack, flags=flags, win=window, opts=options,
                           data=payload)  # fmt: skip
    segment.off = (segment.__hdr_len__ + len(options)) // 4
    return _checksummed(src, dst, PROTO_TCP, segment)


def udp_datagram(src: str, dst: str, sport: int, dport: int, payload: bytes = b"") -> bytes:
    """A UDP datagram with a correct checksum."""
    datagram = dpkt.udp.UDP(sport=sport, dport=dport, ulen=dpkt.udp.UDP.__hdr_len__ + len(payload), data=payload)
    return _checksummed(src, dst, PROTO_UDP, datagram)


def sctp_packet(sport: int, dport: int, chunks: bytes = b"", tag: int = 0) -> bytes:
    """An SCTP packet (common header + raw ``chunks``) with a correct CRC32c."""
    # dpkt packs each chunk with bytes(): raw chunk bytes go in as they are, well-formed or not
    return bytes(dpkt.sctp.SCTP(sport=sport, dport=dport, vtag=tag, chunks=[chunks]))


def icmp_echo(
    src: str, dst: str, ident: int = 1, seq: int = 1, payload: bytes = b"ping"
) -> Tuple[int, bytes]:
    """An ICMP (IPv4) or ICMPv6 echo request; returns ``(proto, message)``."""
    if ":" in src:
        echo6 = dpkt.icmp6.ICMP6(type=ICMPV6_ECHO_REQUEST, code=0,
                                 data=dpkt.icmp6.ICMP6.Echo(id=ident, seq=seq, data=payload))  # fmt: skip
        return PROTO_ICMPV6, _checksummed(src, dst, PROTO_ICMPV6, echo6)
    echo = dpkt.icmp.ICMP(type=ICMP_ECHO_REQUEST, code=0, data=dpkt.icmp.ICMP.Echo(id=ident, seq=seq, data=payload))
    return PROTO_ICMP, bytes(echo)  # ICMP's checksum covers the message alone: dpkt fills it in


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
    packet = dpkt.ip.IP(src=ip_to_bytes(src), dst=ip_to_bytes(dst), p=proto, ttl=ttl, id=ident, opts=options,
                        data=payload)  # fmt: skip
    packet.hl = (packet.__hdr_len__ + len(options)) // 4
    packet.offset, packet.mf = fragment_offset, int(more_fragments)
    return bytes(packet)  # dpkt sets the total length and the header checksum; the payload is packed as given


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
    packet = dpkt.ip6.IP6(src=ip_to_bytes(src), dst=ip_to_bytes(dst), nxt=types[0], hlim=hop_limit,
                          plen=len(chain) + len(payload), data=chain + payload)  # fmt: skip
    return bytes(packet)


def ipv6_option_header(options_len: int = 6) -> bytes:
    """Body of a hop-by-hop / destination-options / routing header (PadN filled)."""
    total = 2 + options_len
    if total % 8:
        raise ValueError("an IPv6 option header is a multiple of 8 bytes")
    pad = bytes([1, options_len - 2]) + b"\0" * (options_len - 2) if options_len >= 2 else b""
    return bytes([total // 8 - 1]) + pad


def ipv6_fragment_header(offset: int = 0, more: bool = False, ident: int = 1) -> bytes:
    """Body of an IPv6 fragment header (offset in 8-byte units)."""
    header = dpkt.ip6.IP6FragmentHeader(nxt=0, id=ident)
    header.frag_off, header.m_flag = offset, int(more)
    return bytes(header)[1:]  # the next-header byte is the chain's (ipv6_packet)


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
    # the tags are packed one by one: dpkt's own vlan_tags stop at two, and tests use three
    tags = b"".join(bytes(dpkt.ethernet.VLANtag8021Q(id=vid, type=inner_type))
                    for vid, inner_type in zip(vlans, types[1:]))  # fmt: skip
    header = dpkt.ethernet.Ethernet(dst=mac_to_bytes(eth_dst), src=mac_to_bytes(eth_src), type=types[0])
    frame = header.pack_hdr() + tags + payload  # not data=: dpkt's Ethernet would parse it and pack it anew
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
    request = dpkt.arp.ARP(op=dpkt.arp.ARP_OP_REQUEST, sha=mac_to_bytes(eth_src), spa=ip_to_bytes(sender_ip),
                           tha=b"\0" * 6, tpa=ip_to_bytes(target_ip))  # fmt: skip
    return ethernet_frame(bytes(request), ETH_TYPE_ARP, eth_src, "ff:ff:ff:ff:ff:ff", vlans)


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
