"""Shared helpers for the trace tests: write small pcap and pcapng files in any link type."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Iterable, List, Sequence, Tuple

from prism.trace.capture import (
    LINKTYPE_C_HDLC,
    LINKTYPE_ETHERNET,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_LOOP,
    LINKTYPE_NULL,
    LINKTYPE_PPP,
    LINKTYPE_PPP_HDLC,
    LINKTYPE_RAW,
    LINKTYPE_RAW_BSD,
)
from prism.flows.identity import TCP_ACK, TCP_FIN, TCP_SYN
from testkit.packets import ethernet_frame, ip_packet, tcp_segment, udp_datagram

Packet = Tuple[float, bytes]  #: (timestamp, frame in the file's link type)

ETH_TYPE = {4: 0x0800, 6: 0x86DD}
AF = {4: 2, 6: 10}
PPP_PROTOCOL = {4: 0x0021, 6: 0x0057}


def tcp_ip(src: str, dst: str, sport: int, dport: int, flags: int, payload: bytes = b"") -> bytes:
    """A raw IPv4/IPv6 packet carrying one TCP segment."""
    return ip_packet(src, dst, 6, tcp_segment(src, dst, sport, dport, payload, flags))


def udp_ip(src: str, dst: str, sport: int, dport: int, payload: bytes = b"x") -> bytes:
    """A raw IPv4/IPv6 packet carrying one UDP datagram."""
    return ip_packet(src, dst, 17, udp_datagram(src, dst, sport, dport, payload))


def frame_for(linktype: int, packet: bytes) -> bytes:
    """Wrap a raw IP packet in the link-layer header of ``linktype``."""
    version = packet[0] >> 4
    if linktype == LINKTYPE_ETHERNET:
        return ethernet_frame(packet, ETH_TYPE[version])
    if linktype == LINKTYPE_LINUX_SLL:
        # packet type, ARPHRD_ETHER, address length, address (8 bytes), protocol
        return struct.pack("!HHH8sH", 0, 1, 6, b"\x02\0\0\0\0\x01\0\0", ETH_TYPE[version]) + packet
    if linktype == LINKTYPE_LINUX_SLL2:
        # protocol, reserved, interface index, ARPHRD, packet type, address length, address
        return struct.pack("!HHIHBB8s", ETH_TYPE[version], 0, 2, 1, 0, 6, b"\x02\0\0\0\0\x01\0\0") + packet
    if linktype == LINKTYPE_NULL:
        return struct.pack("<I", AF[version]) + packet
    if linktype == LINKTYPE_LOOP:
        return struct.pack(">I", AF[version]) + packet
    if linktype in (LINKTYPE_PPP, LINKTYPE_PPP_HDLC):  # HDLC-like framing, uncompressed protocol
        return b"\xff\x03" + struct.pack("!H", PPP_PROTOCOL[version]) + packet
    if linktype == LINKTYPE_C_HDLC:  # unicast address, control 0, Ethernet type
        return struct.pack("!BBH", 0x0F, 0, ETH_TYPE[version]) + packet
    if linktype in (LINKTYPE_RAW, LINKTYPE_RAW_BSD, LINKTYPE_IPV4, LINKTYPE_IPV6):
        return packet
    raise ValueError(f"no test framing for link type {linktype}")


def pcap_bytes(packets: Iterable[Packet], linktype: int, order: str = "<", nanos: bool = False) -> bytes:
    """A classic pcap file."""
    magic = 0xA1B23C4D if nanos else 0xA1B2C3D4
    scale = 1_000_000_000 if nanos else 1_000_000
    out = [struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, 65535, linktype)]
    for ts, data in packets:
        seconds = int(ts)
        fraction = round((ts - seconds) * scale)
        out.append(struct.pack(order + "IIII", seconds, fraction, len(data), len(data)) + data)
    return b"".join(out)


def _block(block_type: int, body: bytes, order: str = "<") -> bytes:
    body += b"\0" * (-len(body) % 4)
    length = 12 + len(body)
    return struct.pack(order + "II", block_type, length) + body + struct.pack(order + "I", length)


def pcapng_bytes(
    packets: Sequence[Tuple[float, int, bytes]], linktypes: Sequence[int], tsresol: int = 6,
    order: str = "<",
) -> bytes:  # fmt: skip
    """A pcapng file: one section, one interface per link type, packets as
    ``(ts, interface index, frame)`` in enhanced packet blocks."""
    shb = _block(0x0A0D0D0A, struct.pack(order + "IHHq", 0x1A2B3C4D, 1, 0, -1), order)
    out = [shb]
    for linktype in linktypes:
        option = struct.pack(order + "HHB3x", 9, 1, tsresol) + struct.pack(order + "HH", 0, 0)
        out.append(_block(1, struct.pack(order + "HHI", linktype, 0, 0) + option, order))
    for ts, interface, data in packets:
        units = round(ts * 10**tsresol)
        header = struct.pack(order + "IIIII", interface, units >> 32, units & 0xFFFFFFFF, len(data), len(data))
        out.append(_block(6, header + data, order))
    return b"".join(out)


def tcp_conversation(src: str, dst: str, sport: int, dport: int, start: float = 1000.0,
                     data_packets: int = 4, gap: float = 0.5) -> List[Tuple[float, bytes]]:  # fmt: skip
    """A complete TCP connection (handshake, data both ways, FIN both ways) as raw IP packets."""
    packets = [
        (start, tcp_ip(src, dst, sport, dport, TCP_SYN)),
        (start + 0.01, tcp_ip(dst, src, dport, sport, TCP_SYN | TCP_ACK)),
        (start + 0.02, tcp_ip(src, dst, sport, dport, TCP_ACK)),
    ]
    t = start + 0.02
    for i in range(data_packets):
        t += gap
        a, b, pa, pb = (src, dst, sport, dport) if i % 2 == 0 else (dst, src, dport, sport)
        packets.append((t, tcp_ip(a, b, pa, pb, TCP_ACK, b"data" * 10)))
    packets.append((t + 0.01, tcp_ip(src, dst, sport, dport, TCP_FIN | TCP_ACK)))
    packets.append((t + 0.02, tcp_ip(dst, src, dport, sport, TCP_FIN | TCP_ACK)))
    packets.append((t + 0.03, tcp_ip(src, dst, sport, dport, TCP_ACK)))
    return packets


def write(path: Path, data: bytes) -> Path:
    """Write bytes, return the path."""
    path.write_bytes(data)
    return path
