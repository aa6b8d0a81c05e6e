"""Link-layer headers of captured frames: where the IP packet starts, per link type."""

from __future__ import annotations

import struct
from typing import Callable, Dict, Optional

from prism.flows.identity import ETH_HEADER_LEN, MAX_VLAN_TAGS, VLAN_TAG_LEN, VLAN_TPIDS
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

ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_IPV6 = 0x86DD
SLL_HEADER = 16
SLL2_HEADER = 20
NULL_HEADER = 4
#: BSD address families meaning IPv4 / IPv6 (IPv6's value differs per BSD).
AF_INET = 2
AF_INET6_VALUES = frozenset({10, 24, 28, 30})
#: PPP's HDLC-like framing (RFC 1662): all-stations address, unnumbered-information control.
PPP_ADDRESS_CONTROL = b"\xff\x03"
#: PPP protocol numbers of IPv4 and IPv6 (RFC 1332, RFC 5072).
PPP_IPV4, PPP_IPV6 = 0x0021, 0x0057
C_HDLC_HEADER = 4  #: address, control, Ethernet type
ETHERTYPE_PPPOE_SESSION = 0x8864
ETHERTYPE_MPLS = frozenset((0x8847, 0x8848))  #: unicast, multicast
PPPOE_HEADER = 6  #: version/type, code, session id, length (then PPP's protocol)
MPLS_LABEL = 4
MPLS_BOTTOM_OF_STACK = 0x100  #: in a label entry's third byte, as part of the 32-bit entry
MAX_MPLS_LABELS = 8


def _ethertype_payload(header: int, type_at: int) -> Callable[[bytes], Optional[bytes]]:
    """The IP packet after a ``header``-byte link header whose Ethernet type is at byte ``type_at``."""

    def payload(data: bytes) -> Optional[bytes]:
        if len(data) < header:
            return None
        (protocol,) = struct.unpack_from("!H", data, type_at)
        return data[header:] if protocol in (ETHERTYPE_IPV4, ETHERTYPE_IPV6) else None

    return payload


def _null_payload(order: str) -> Callable[[bytes], Optional[bytes]]:
    def payload(data: bytes) -> Optional[bytes]:
        if len(data) < NULL_HEADER:
            return None
        (family,) = struct.unpack_from(order + "I", data)
        if family != AF_INET and family not in AF_INET6_VALUES:
            # A capture from another machine may store the family in the other order.
            (family,) = struct.unpack_from(("<" if order == ">" else ">") + "I", data)
        ok = family == AF_INET or family in AF_INET6_VALUES
        return data[NULL_HEADER:] if ok else None

    return payload


def _ppp_payload(data: bytes) -> Optional[bytes]:
    """IP inside PPP, with or without the address and control bytes, protocol field compressed or not."""
    if data[:2] == PPP_ADDRESS_CONTROL:
        data = data[2:]
    if not data:
        return None
    if data[0] & 1:  # a compressed protocol field: one byte, odd (RFC 1661 section 6.5)
        protocol, start = data[0], 1
    elif len(data) >= 2:
        protocol, start = (data[0] << 8) | data[1], 2
    else:
        return None
    return data[start:] if protocol in (PPP_IPV4, PPP_IPV6) else None


def ethernet_encapsulated_ip(frame: bytes) -> Optional[bytes]:
    """The IP packet inside an Ethernet frame's PPPoE session or MPLS label stack (after VLAN tags), else None.

    For captures only: the cells and the director see plain Ethernet/IP, which
    ``parse_frame`` reads; this is where a capture from an access or core
    network keeps its flows.
    """
    offset = ETH_HEADER_LEN - 2
    for _ in range(MAX_VLAN_TAGS + 1):
        if len(frame) < offset + 2:
            return None
        (eth_type,) = struct.unpack_from("!H", frame, offset)
        if eth_type not in VLAN_TPIDS:
            break
        offset += VLAN_TAG_LEN
    offset += 2
    if eth_type == ETHERTYPE_PPPOE_SESSION:
        return _ppp_payload(frame[offset + PPPOE_HEADER:]) if len(frame) > offset + PPPOE_HEADER else None
    if eth_type in ETHERTYPE_MPLS:
        for _ in range(MAX_MPLS_LABELS):
            if len(frame) < offset + MPLS_LABEL:
                return None
            (entry,) = struct.unpack_from("!I", frame, offset)
            offset += MPLS_LABEL
            if entry & MPLS_BOTTOM_OF_STACK:
                inner = frame[offset:]
                return inner if inner and inner[0] >> 4 in (4, 6) else None  # else Ethernet over MPLS
    return None


def _raw_payload(data: bytes) -> Optional[bytes]:
    return data


#: Link type -> function returning the IP packet inside a frame (None: not IP).
#: Ethernet is absent: whole frames go to ``prism.flows.identity.parse_frame``.
IP_PAYLOAD: Dict[int, Callable[[bytes], Optional[bytes]]] = {
    LINKTYPE_NULL: _null_payload("<"),
    LINKTYPE_LOOP: _null_payload(">"),
    LINKTYPE_RAW_BSD: _raw_payload,
    LINKTYPE_RAW: _raw_payload,
    LINKTYPE_IPV4: _raw_payload,
    LINKTYPE_IPV6: _raw_payload,
    LINKTYPE_LINUX_SLL: _ethertype_payload(SLL_HEADER, type_at=14),
    LINKTYPE_LINUX_SLL2: _ethertype_payload(SLL2_HEADER, type_at=0),
    LINKTYPE_PPP: _ppp_payload,
    LINKTYPE_PPP_HDLC: _ppp_payload,
    LINKTYPE_C_HDLC: _ethertype_payload(C_HDLC_HEADER, type_at=2),
}

#: Every link type a trace can decode.
SUPPORTED_LINKTYPES = frozenset(IP_PAYLOAD) | {LINKTYPE_ETHERNET}
