"""Flow identity: parse raw frames into a canonical bidirectional FlowKey and its flow_id."""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import struct
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple, Union

from prism.openflow.changes import COOKIE_HOST, COOKIE_PIPELINE

# --- Ethernet ---------------------------------------------------------------
ETH_HEADER_LEN = 14
VLAN_TAG_LEN = 4
MAX_VLAN_TAGS = 2  #: 802.1Q, or 802.1ad outer + 802.1Q inner
VLAN_VID_MASK = 0x0FFF
ETH_TYPE_IPV4 = 0x0800
ETH_TYPE_IPV6 = 0x86DD
ETH_TYPE_8021Q = 0x8100
ETH_TYPE_8021AD = 0x88A8
ETH_TYPE_QINQ_LEGACY = 0x9100
VLAN_TPIDS = frozenset((ETH_TYPE_8021Q, ETH_TYPE_8021AD, ETH_TYPE_QINQ_LEGACY))

# --- IP -----------------------------------------------------------------------
IPV4_MIN_HEADER_LEN = 20
IPV4_ADDR_LEN = 4
IPV4_FRAG_OFFSET_MASK = 0x1FFF
IPV6_HEADER_LEN = 40
IPV6_ADDR_LEN = 16
IPV6_FRAG_OFFSET_MASK = 0xFFF8
#: Extension headers walked before giving up (a loop guard for hostile chains).
MAX_IPV6_EXT_HEADERS = 8

PROTO_HOPOPTS = 0
PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17
PROTO_ROUTING = 43
PROTO_FRAGMENT = 44
PROTO_AH = 51
PROTO_ICMPV6 = 58
PROTO_DSTOPTS = 60
PROTO_SCTP = 132
#: IPv6 extension headers whose length is ``(hdr_ext_len + 1) * 8`` bytes.
IPV6_OPTION_HEADERS = frozenset((PROTO_HOPOPTS, PROTO_ROUTING, PROTO_DSTOPTS))
#: Extension headers the parser walks (others, e.g. ESP, end the chain).
IPV6_EXT_HEADERS = IPV6_OPTION_HEADERS | {PROTO_FRAGMENT, PROTO_AH}
IPV6_FRAGMENT_HEADER_LEN = 8

# --- Transport ----------------------------------------------------------------
TCP_MIN_HEADER_LEN = 20
UDP_HEADER_LEN = 8
SCTP_COMMON_HEADER_LEN = 12
#: Protocols whose flows are told apart by ports (others: by address pair only).
PORT_PROTOCOLS = frozenset((PROTO_TCP, PROTO_UDP, PROTO_SCTP))
PROTO_NAMES = {
    PROTO_ICMP: "icmp",
    PROTO_TCP: "tcp",
    PROTO_UDP: "udp",
    PROTO_ICMPV6: "icmpv6",
    PROTO_SCTP: "sctp",
}
#: OXM field-name prefix of each port protocol (``tcp_src``, ``udp_dst`` ...).
PORT_FIELD_PREFIX = {PROTO_TCP: "tcp", PROTO_UDP: "udp", PROTO_SCTP: "sctp"}

TCP_FIN = 0x01
TCP_SYN = 0x02
TCP_RST = 0x04
TCP_PSH = 0x08
TCP_ACK = 0x10
TCP_URG = 0x20
TCP_ECE = 0x40
TCP_CWR = 0x80

# --- flow_id ----------------------------------------------------------------
FLOW_ID_BYTES = 8
FLOW_ID_PERSON = b"prism-flow-id"
#: Values a flow_id never takes: 0 (no cookie) and the pipeline's own cookies.
RESERVED_FLOW_IDS = frozenset((0, COOKIE_PIPELINE, COOKIE_HOST))

_ETH = struct.Struct("!6s6sH")
_VLAN_TAG = struct.Struct("!HH")
_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_IPV6 = struct.Struct("!IHBB16s16s")
_IPV6_EXT = struct.Struct("!BB")
_IPV6_FRAG = struct.Struct("!BBH")
_TCP = struct.Struct("!HHIIBBH")
_PORTS = struct.Struct("!HH")
_CANONICAL = {
    4: struct.Struct("!BB4sH4sH"),
    6: struct.Struct("!BB16sH16sH"),
}
_U64 = struct.Struct("!Q")
_ETH_TYPE_OF_VERSION = {4: ETH_TYPE_IPV4, 6: ETH_TYPE_IPV6}
_ADDR_LEN_OF_VERSION = {4: IPV4_ADDR_LEN, 6: IPV6_ADDR_LEN}

Buffer = Union[bytes, bytearray, memoryview]


# --- Address text helpers -----------------------------------------------------
def mac_to_str(mac: bytes) -> str:
    """``b'\\x02\\x00...'`` -> ``'02:00:...'`` (lower case)."""
    return mac.hex(":")


def mac_to_bytes(mac: str) -> bytes:
    """``'02:00:00:00:00:01'`` -> 6 bytes. Raises ValueError on bad text."""
    packed = bytes.fromhex(mac.replace(":", "").replace("-", ""))
    if len(packed) != 6:
        raise ValueError(f"not a MAC address: {mac!r}")
    return packed


def ip_to_str(addr: bytes) -> str:
    """Packed IPv4 (4 bytes) or IPv6 (16 bytes) address -> canonical text."""
    return str(ipaddress.ip_address(bytes(addr)))


def ip_to_bytes(addr: str) -> bytes:
    """IPv4/IPv6 address text -> packed bytes. Raises ValueError on bad text."""
    return ipaddress.ip_address(addr).packed


def ip_version_of(addr: str) -> int:
    """4 or 6 for an address text. Raises ValueError on bad text."""
    return ipaddress.ip_address(addr).version


def _remap_reserved(flow_id: int) -> int:
    """Rehash a reserved value until it is not; deterministic."""
    while flow_id in RESERVED_FLOW_IDS:
        digest = hashlib.blake2b(
            _U64.pack(flow_id), digest_size=FLOW_ID_BYTES, person=FLOW_ID_PERSON
        ).digest()
        flow_id = int.from_bytes(digest, "big") ^ 1  # ^1: 0 -> 1, no fixed point
    return flow_id


def _fast_frozen_init(cls):
    """Give a frozen slots dataclass a faster ``__init__`` with the same signature.

    The generated ``__init__`` of a frozen dataclass stores each field through
    ``object.__setattr__``; writing through the slot descriptors directly is
    about 40 % cheaper, and these two classes are built for every packet. Only
    for classes whose init fields have no defaults.
    """
    all_fields = dataclasses.fields(cls)
    init_names = [f.name for f in all_fields if f.init]
    if any(f.default is not dataclasses.MISSING for f in all_fields if f.init):
        raise TypeError(f"{cls.__name__}: init fields with defaults are not supported")
    namespace = {f"_set_{f.name}": cls.__dict__[f.name].__set__ for f in all_fields}
    namespace.update({f"_default_{f.name}": f.default for f in all_fields if not f.init})
    body = "".join(f"    _set_{name}(self, {name})\n" for name in init_names)
    body += "".join(
        f"    _set_{f.name}(self, _default_{f.name})\n" for f in all_fields if not f.init
    )
    exec(f"def __init__(self, {', '.join(init_names)}):\n{body}", namespace)  # noqa: S102
    init = namespace["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__doc__ = cls.__init__.__doc__
    cls.__init__ = init
    return cls


# --- Descriptions ---------------------------------------------------------------
@_fast_frozen_init
@dataclass(frozen=True, slots=True)
class FlowKey:
    """A connection's canonical bidirectional identity.

    Endpoints are sorted so that ``(addr_a, port_a) <= (addr_b, port_b)``; both
    directions of a connection give equal keys. The constructor trusts its
    arguments (it is on the data path); use :meth:`between` to build one from
    a directed endpoint pair with validation.

    Attributes:
        ip_version: 4 or 6.
        proto: IP protocol number (final upper-layer protocol for IPv6).
        addr_a: Packed address of the lower endpoint.
        port_a: Its port (0 for protocols without ports).
        addr_b: Packed address of the higher endpoint.
        port_b: Its port.
    """

    ip_version: int
    proto: int
    addr_a: bytes
    port_a: int
    addr_b: bytes
    port_b: int
    _flow_id: int = field(default=0, init=False, repr=False, compare=False)

    @classmethod
    def between(
        cls, proto: int, src: Union[str, bytes], sport: int, dst: Union[str, bytes], dport: int
    ) -> Tuple["FlowKey", bool]:
        """Build the key of a packet from ``src:sport`` to ``dst:dport``.

        Args:
            proto: IP protocol number.
            src: Source address, text or packed.
            sport: Source port (0 if the protocol has none).
            dst: Destination address, text or packed.
            dport: Destination port.

        Returns:
            ``(key, forward)``; ``forward`` is True if ``src`` is ``key``'s a-side.

        Raises:
            ValueError: bad address, mixed versions, or out-of-range numbers.
        """
        src_b = ip_to_bytes(src) if isinstance(src, str) else bytes(src)
        dst_b = ip_to_bytes(dst) if isinstance(dst, str) else bytes(dst)
        if len(src_b) != len(dst_b) or len(src_b) not in (IPV4_ADDR_LEN, IPV6_ADDR_LEN):
            raise ValueError(f"addresses of different or unknown versions: {src!r}, {dst!r}")
        if not 0 <= proto <= 0xFF:
            raise ValueError(f"IP protocol out of range: {proto}")
        for port in (sport, dport):
            if not 0 <= port <= 0xFFFF:
                raise ValueError(f"port out of range: {port}")
        version = 4 if len(src_b) == IPV4_ADDR_LEN else 6
        if (src_b, sport) <= (dst_b, dport):
            return cls(version, proto, src_b, sport, dst_b, dport), True
        return cls(version, proto, dst_b, dport, src_b, sport), False

    @property
    def flow_id(self) -> int:
        """Stable 64-bit id: blake2b over the canonical bytes; never reserved."""
        flow_id = self._flow_id
        if not flow_id:
            canonical = _CANONICAL[self.ip_version].pack(
                self.ip_version, self.proto, self.addr_a, self.port_a, self.addr_b, self.port_b
            )
            digest = hashlib.blake2b(
                canonical, digest_size=FLOW_ID_BYTES, person=FLOW_ID_PERSON
            ).digest()
            flow_id = _remap_reserved(int.from_bytes(digest, "big"))
            object.__setattr__(self, "_flow_id", flow_id)
        return flow_id

    @property
    def has_ports(self) -> bool:
        """True for TCP, UDP and SCTP keys."""
        return self.proto in PORT_PROTOCOLS

    @property
    def proto_name(self) -> str:
        """``'tcp'``, ``'udp'``, ``'icmp'`` ... or ``'proto 47'``."""
        return PROTO_NAMES.get(self.proto, f"proto {self.proto}")

    def endpoint_str(self, a_side: bool) -> str:
        """One endpoint as text: ``10.0.0.1:80``, ``[2001:db8::1]:80`` or just the address."""
        addr, port = (self.addr_a, self.port_a) if a_side else (self.addr_b, self.port_b)
        text = ip_to_str(addr)
        if not self.has_ports:
            return text
        return f"[{text}]:{port}" if self.ip_version == 6 else f"{text}:{port}"

    def __str__(self) -> str:
        return f"{self.proto_name} {self.endpoint_str(True)} <-> {self.endpoint_str(False)}"


@_fast_frozen_init
@dataclass(frozen=True, slots=True)
class PacketInfo:
    """What the core needs from one IP packet.

    Attributes:
        eth_src: Source MAC text (``''`` when parsed without Ethernet).
        eth_dst: Destination MAC text.
        vlan: VLAN id of the outer tag, or None if untagged.
        eth_type: 0x0800 or 0x86dd (after any VLAN tags).
        ip_version: 4 or 6.
        proto: IP protocol number (upper-layer protocol for IPv6).
        src: Packed source address.
        dst: Packed destination address.
        sport: Source port, 0 if none (other protocols, non-first fragments).
        dport: Destination port, 0 if none.
        tcp_flags: TCP flags byte (0 if not TCP).
        tcp_seq: TCP sequence number (0 if not TCP).
        tcp_ack: TCP acknowledgement number (0 if not TCP).
        tcp_window: TCP window (0 if not TCP).
        payload_len: Bytes after the L4 header (after the IP headers if no L4 header).
        ip_len: Length of the IP packet (IPv4 total length, IPv6 40 + payload length).
        frame_len: Length of the whole frame as received (padding included).
        key: The flow's canonical key.
        forward: True if the source endpoint is ``key``'s a-side.
    """

    eth_src: str
    eth_dst: str
    vlan: Optional[int]
    eth_type: int
    ip_version: int
    proto: int
    src: bytes
    dst: bytes
    sport: int
    dport: int
    tcp_flags: int
    tcp_seq: int
    tcp_ack: int
    tcp_window: int
    payload_len: int
    ip_len: int
    frame_len: int
    key: FlowKey
    forward: bool

    @property
    def flow_id(self) -> int:
        """Shortcut for ``key.flow_id``."""
        return self.key.flow_id


@dataclass(frozen=True, slots=True)
class NotAFlow:
    """A frame the core cannot use as a flow packet; ``reason`` says why."""

    reason: str

    def __bool__(self) -> bool:
        return False


ParseResult = Union[PacketInfo, NotAFlow]


# --- Parsing ----------------------------------------------------------------------
def parse_frame(frame: Buffer) -> ParseResult:
    """Parse an Ethernet frame (up to two VLAN tags) carrying IPv4 or IPv6.

    Never raises on bad input.

    Args:
        frame: The frame as received, starting at the destination MAC.

    Returns:
        A PacketInfo, or NotAFlow with a readable reason.
    """
    frame_len = len(frame)
    if frame_len < ETH_HEADER_LEN:
        return NotAFlow(f"truncated Ethernet header: {frame_len} of {ETH_HEADER_LEN} bytes")
    eth_dst, eth_src, eth_type = _ETH.unpack_from(frame, 0)
    offset = ETH_HEADER_LEN
    vlan = None
    tags = 0
    while eth_type in VLAN_TPIDS:
        if tags == MAX_VLAN_TAGS:
            return NotAFlow(f"more than {MAX_VLAN_TAGS} VLAN tags")
        if frame_len < offset + VLAN_TAG_LEN:
            return NotAFlow("truncated VLAN tag")
        tci, eth_type = _VLAN_TAG.unpack_from(frame, offset)
        if vlan is None:
            vlan = tci & VLAN_VID_MASK
        tags += 1
        offset += VLAN_TAG_LEN
    if eth_type == ETH_TYPE_IPV4:
        return _parse_ipv4(frame, offset, eth_src.hex(":"), eth_dst.hex(":"), vlan, frame_len)
    if eth_type == ETH_TYPE_IPV6:
        return _parse_ipv6(frame, offset, eth_src.hex(":"), eth_dst.hex(":"), vlan, frame_len)
    return NotAFlow(f"not IP: eth_type 0x{eth_type:04x}")


def parse_ip(
    packet: Buffer,
    eth_src: str = "",
    eth_dst: str = "",
    vlan: Optional[int] = None,
    frame_len: Optional[int] = None,
) -> ParseResult:
    """Parse a raw IPv4 or IPv6 packet (no Ethernet header). Never raises.

    Args:
        packet: The packet, starting at the IP header.
        eth_src: Source MAC text to record, if known.
        eth_dst: Destination MAC text to record, if known.
        vlan: VLAN id to record, if any.
        frame_len: Length to record as ``frame_len`` (default: ``len(packet)``).

    Returns:
        A PacketInfo, or NotAFlow with a readable reason.
    """
    if frame_len is None:
        frame_len = len(packet)
    if not packet:
        return NotAFlow("empty IP packet")
    version = packet[0] >> 4
    if version == 4:
        return _parse_ipv4(packet, 0, eth_src, eth_dst, vlan, frame_len)
    if version == 6:
        return _parse_ipv6(packet, 0, eth_src, eth_dst, vlan, frame_len)
    return NotAFlow(f"bad IP version {version}")


def _parse_ipv4(
    buf: Buffer, offset: int, eth_src: str, eth_dst: str, vlan: Optional[int], frame_len: int
) -> ParseResult:
    present = len(buf) - offset
    if present < IPV4_MIN_HEADER_LEN:
        return NotAFlow(f"truncated IPv4 header: {present} of {IPV4_MIN_HEADER_LEN} bytes")
    ver_ihl, _tos, total_len, _ident, frag, _ttl, proto, _csum, src, dst = _IPV4.unpack_from(
        buf, offset
    )
    if ver_ihl >> 4 != 4:
        return NotAFlow(f"bad IP version {ver_ihl >> 4} in an IPv4 packet")
    header_len = (ver_ihl & 0x0F) * 4
    if header_len < IPV4_MIN_HEADER_LEN:
        return NotAFlow(f"bad IPv4 header length {header_len} (minimum {IPV4_MIN_HEADER_LEN})")
    if total_len < header_len:
        return NotAFlow(f"IPv4 total length {total_len} shorter than its header ({header_len})")
    if total_len > present:
        return NotAFlow(f"truncated IPv4 packet: total length {total_len}, {present} bytes present")
    l4_len = total_len - header_len
    if frag & IPV4_FRAG_OFFSET_MASK:  # a later fragment: no L4 header, ports 0 (as OVS)
        return _finish(
            eth_src, eth_dst, vlan, ETH_TYPE_IPV4, 4, proto, src, dst,
            0, 0, 0, 0, 0, 0, l4_len, total_len, frame_len,
        )  # fmt: skip
    return _parse_l4(
        buf, offset + header_len, l4_len, eth_src, eth_dst, vlan, ETH_TYPE_IPV4, 4,
        proto, src, dst, total_len, frame_len,
    )  # fmt: skip


def _parse_ipv6(
    buf: Buffer, offset: int, eth_src: str, eth_dst: str, vlan: Optional[int], frame_len: int
) -> ParseResult:
    present = len(buf) - offset
    if present < IPV6_HEADER_LEN:
        return NotAFlow(f"truncated IPv6 header: {present} of {IPV6_HEADER_LEN} bytes")
    ver_tc_fl, payload_len, next_header, _hop, src, dst = _IPV6.unpack_from(buf, offset)
    if ver_tc_fl >> 28 != 6:
        return NotAFlow(f"bad IP version {ver_tc_fl >> 28} in an IPv6 packet")
    ip_len = IPV6_HEADER_LEN + payload_len
    if ip_len > present:
        return NotAFlow(f"truncated IPv6 packet: length {ip_len}, {present} bytes present")
    end = offset + ip_len
    pos = offset + IPV6_HEADER_LEN
    later_fragment = False
    walked = 0
    while next_header in IPV6_EXT_HEADERS:
        if walked == MAX_IPV6_EXT_HEADERS:
            return NotAFlow(f"more than {MAX_IPV6_EXT_HEADERS} IPv6 extension headers")
        walked += 1
        if next_header == PROTO_FRAGMENT:
            if end - pos < IPV6_FRAGMENT_HEADER_LEN:
                return NotAFlow("truncated IPv6 fragment header")
            following, _reserved, frag = _IPV6_FRAG.unpack_from(buf, pos)
            size = IPV6_FRAGMENT_HEADER_LEN
            later_fragment = bool(frag & IPV6_FRAG_OFFSET_MASK)
        else:
            if end - pos < 2:
                return NotAFlow(f"truncated IPv6 extension header {next_header}")
            following, ext_len = _IPV6_EXT.unpack_from(buf, pos)
            size = (ext_len + 2) * 4 if next_header == PROTO_AH else (ext_len + 1) * 8
        if end - pos < size:
            return NotAFlow(f"truncated IPv6 extension header {next_header}")
        pos += size
        next_header = following
        if later_fragment:  # no upper-layer header follows in this packet
            break
    if later_fragment:
        return _finish(
            eth_src, eth_dst, vlan, ETH_TYPE_IPV6, 6, next_header, src, dst,
            0, 0, 0, 0, 0, 0, end - pos, ip_len, frame_len,
        )  # fmt: skip
    return _parse_l4(
        buf, pos, end - pos, eth_src, eth_dst, vlan, ETH_TYPE_IPV6, 6,
        next_header, src, dst, ip_len, frame_len,
    )  # fmt: skip


def _parse_l4(
    buf: Buffer, pos: int, l4_len: int, eth_src: str, eth_dst: str, vlan: Optional[int],
    eth_type: int, version: int, proto: int, src: bytes, dst: bytes, ip_len: int, frame_len: int,
) -> ParseResult:  # fmt: skip
    if proto == PROTO_TCP:
        if l4_len < TCP_MIN_HEADER_LEN:
            return NotAFlow(f"truncated TCP header: {l4_len} of {TCP_MIN_HEADER_LEN} bytes")
        sport, dport, seq, ack, data_offset, flags, window = _TCP.unpack_from(buf, pos)
        header_len = (data_offset >> 4) * 4
        if header_len < TCP_MIN_HEADER_LEN or header_len > l4_len:
            return NotAFlow(f"bad TCP data offset {header_len} (segment of {l4_len} bytes)")
        return _finish(
            eth_src, eth_dst, vlan, eth_type, version, proto, src, dst,
            sport, dport, flags, seq, ack, window, l4_len - header_len, ip_len, frame_len,
        )  # fmt: skip
    if proto == PROTO_UDP or proto == PROTO_SCTP:
        header_len = UDP_HEADER_LEN if proto == PROTO_UDP else SCTP_COMMON_HEADER_LEN
        if l4_len < header_len:
            name = PROTO_NAMES[proto].upper()
            return NotAFlow(f"truncated {name} header: {l4_len} of {header_len} bytes")
        sport, dport = _PORTS.unpack_from(buf, pos)
        return _finish(
            eth_src, eth_dst, vlan, eth_type, version, proto, src, dst,
            sport, dport, 0, 0, 0, 0, l4_len - header_len, ip_len, frame_len,
        )  # fmt: skip
    return _finish(
        eth_src, eth_dst, vlan, eth_type, version, proto, src, dst,
        0, 0, 0, 0, 0, 0, l4_len, ip_len, frame_len,
    )  # fmt: skip


def _finish(
    eth_src: str, eth_dst: str, vlan: Optional[int], eth_type: int, version: int, proto: int,
    src: bytes, dst: bytes, sport: int, dport: int, flags: int, seq: int, ack: int,
    window: int, payload_len: int, ip_len: int, frame_len: int,
) -> PacketInfo:  # fmt: skip
    if src < dst or (src == dst and sport <= dport):
        key = FlowKey(version, proto, src, sport, dst, dport)
        forward = True
    else:
        key = FlowKey(version, proto, dst, dport, src, sport)
        forward = False
    return PacketInfo(
        eth_src, eth_dst, vlan, eth_type, version, proto, src, dst, sport, dport,
        flags, seq, ack, window, payload_len, ip_len, frame_len, key, forward,
    )  # fmt: skip


# --- OpenFlow matches -----------------------------------------------------------
def direction_match(key: FlowKey, forward: bool) -> Dict[str, Union[int, str]]:
    """OXM match fields (Ryu ``OFPMatch`` names) for one direction of a flow.

    Args:
        key: The flow.
        forward: True for packets from ``key``'s a-side to its b-side.

    Returns:
        ``eth_type``, ``ip_proto``, ``ipv4_src``/``ipv4_dst`` or
        ``ipv6_src``/``ipv6_dst`` as text, plus ``tcp_src``/``tcp_dst`` (or
        udp/sctp) for protocols with ports.
    """
    if forward:
        src, sport, dst, dport = key.addr_a, key.port_a, key.addr_b, key.port_b
    else:
        src, sport, dst, dport = key.addr_b, key.port_b, key.addr_a, key.port_a
    family = "ipv4" if key.ip_version == 4 else "ipv6"
    match: Dict[str, Union[int, str]] = {
        "eth_type": _ETH_TYPE_OF_VERSION[key.ip_version],
        "ip_proto": key.proto,
        f"{family}_src": ip_to_str(src),
        f"{family}_dst": ip_to_str(dst),
    }
    prefix = PORT_FIELD_PREFIX.get(key.proto)
    if prefix is not None:
        match[f"{prefix}_src"] = sport
        match[f"{prefix}_dst"] = dport
    return match


def key_from_match(match: Dict[str, Union[int, str]]) -> Tuple[FlowKey, bool]:
    """Inverse of :func:`direction_match`: ``(key, forward)`` from a match dict.

    Args:
        match: OXM fields as returned by ``direction_match`` (or a flow-removed report).

    Returns:
        ``(key, forward)``.

    Raises:
        ValueError: the match does not describe one flow direction.
    """
    try:
        proto = int(match["ip_proto"])
        family = "ipv4" if int(match["eth_type"]) == ETH_TYPE_IPV4 else "ipv6"
        src = str(match[f"{family}_src"])
        dst = str(match[f"{family}_dst"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"not a flow-direction match: {match!r}") from exc
    prefix = PORT_FIELD_PREFIX.get(proto)
    sport = int(match.get(f"{prefix}_src", 0)) if prefix else 0
    dport = int(match.get(f"{prefix}_dst", 0)) if prefix else 0
    return FlowKey.between(proto, src, sport, dst, dport)
