"""Packet capture files (pcap, pcapng) read into (timestamp, link type, bytes) records.

A small reader of our own rather than dpkt's: dpkt's pcap reader silently
returns a short last packet and its pcapng reader keeps one link type for the
whole file, while a trace needs every interface's own link type and time
resolution, and an exact, reportable reason when a file is cut short or
damaged. Everything here works on an already opened binary stream; opening
files is the caller's business (``prism.trace.cli``).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import BinaryIO, Iterator, List, Optional, Tuple

# --- Link types (www.tcpdump.org/linktypes.html) ----------------------------
LINKTYPE_NULL = 0  #: BSD loopback: 4-byte address family in host byte order
LINKTYPE_ETHERNET = 1
LINKTYPE_PPP = 9  #: PPP: HDLC-like address and control bytes (optional), then the protocol
LINKTYPE_RAW_BSD = 12  #: raw IP (OpenBSD's DLT_RAW value)
LINKTYPE_PPP_HDLC = 50  #: PPP in HDLC-like framing (address 0xff, control 0x03)
LINKTYPE_RAW = 101  #: raw IPv4 or IPv6, version from the first nibble
LINKTYPE_C_HDLC = 104  #: Cisco HDLC: address, control, then an Ethernet type
LINKTYPE_LOOP = 108  #: OpenBSD loopback: 4-byte address family, network order
LINKTYPE_LINUX_SLL = 113  #: Linux cooked capture v1 (16-byte header)
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276  #: Linux cooked capture v2 (20-byte header)

#: The low 16 bits of a pcap header's link-type field are the link type; the
#: upper bits may carry the FCS length (pcap spec, "LinkType and additional information").
LINKTYPE_MASK = 0xFFFF

# --- pcap -------------------------------------------------------------------
PCAP_MAGIC_US = 0xA1B2C3D4
PCAP_MAGIC_NS = 0xA1B23C4D
PCAP_GLOBAL_HEADER = 24
PCAP_RECORD_HEADER = 16

# --- pcapng -----------------------------------------------------------------
PCAPNG_SHB = 0x0A0D0D0A
PCAPNG_IDB = 0x00000001
PCAPNG_OPB = 0x00000002  #: obsolete Packet Block
PCAPNG_SPB = 0x00000003
PCAPNG_EPB = 0x00000006
PCAPNG_BYTE_ORDER_MAGIC = 0x1A2B3C4D
PCAPNG_OPT_END = 0
PCAPNG_OPT_IF_TSRESOL = 9
PCAPNG_OPT_IF_TSOFFSET = 14
PCAPNG_DEFAULT_TSRESOL = 1e-6

#: Largest packet or block a reader accepts; anything larger means a damaged
#: length field, not a real packet (the largest snap length tools use is 256 KiB).
MAX_RECORD_BYTES = 1 << 20
#: How many bytes the format sniffer needs.
MAGIC_BYTES = 4


class CaptureError(Exception):
    """A capture file that cannot be read to its end (truncated or damaged).

    Attributes:
        reason: what is wrong, for a report line.
        offset: byte offset in the file where reading stopped.
    """

    def __init__(self, reason: str, offset: int):
        super().__init__(f"{reason} (at byte {offset})")
        self.reason = reason
        self.offset = offset


@dataclass(frozen=True)
class CapturedPacket:
    """One packet as stored in a capture.

    Attributes:
        ts: capture time in seconds since the epoch.
        linktype: link type of the interface it was captured on.
        data: the captured bytes (possibly shorter than on the wire).
        wire_len: the packet's length on the wire.
        offset: byte offset of the record's end, for progress reports.
    """

    ts: float
    linktype: int
    data: bytes
    wire_len: int
    offset: int


def sniff_format(head: bytes) -> Optional[str]:
    """Name the capture format from a file's first bytes.

    Args:
        head: at least the first ``MAGIC_BYTES`` bytes of a file.

    Returns:
        "pcap", "pcapng" or None when it is neither.
    """
    if len(head) < MAGIC_BYTES:
        return None
    for order in "<>":
        (magic,) = struct.unpack(order + "I", head[:MAGIC_BYTES])
        if magic in (PCAP_MAGIC_US, PCAP_MAGIC_NS):
            return "pcap"
    if struct.unpack("<I", head[:MAGIC_BYTES])[0] == PCAPNG_SHB:
        return "pcapng"
    return None


def read_packets(stream: BinaryIO) -> Iterator[CapturedPacket]:
    """Yield every packet of a pcap or pcapng stream, in file order.

    Args:
        stream: a binary stream positioned at the start of the file.

    Yields:
        CapturedPacket for each packet record.

    Raises:
        CaptureError: the stream is not a capture, is cut short, or has a
            damaged record. Packets before the damage have been yielded.
    """
    head = stream.read(MAGIC_BYTES)
    kind = sniff_format(head)
    if kind == "pcap":
        yield from _read_pcap(stream, head)
    elif kind == "pcapng":
        yield from _read_pcapng(stream, head)
    else:
        raise CaptureError("not a pcap or pcapng file (unknown magic number)", 0)


class _Cursor:
    """Exact reads from a stream, with the offset kept for error messages."""

    def __init__(self, stream: BinaryIO, offset: int):
        self.stream = stream
        self.offset = offset

    def read(self, size: int, what: str, allow_eof: bool = False) -> Optional[bytes]:
        data = self.stream.read(size)
        if allow_eof and not data:
            return None
        if len(data) < size:
            raise CaptureError(
                f"file ends inside {what}: {len(data)} of {size} bytes", self.offset
            )
        self.offset += size
        return data


def _read_pcap(stream: BinaryIO, head: bytes) -> Iterator[CapturedPacket]:
    cursor = _Cursor(stream, MAGIC_BYTES)
    order = "<" if struct.unpack("<I", head)[0] in (PCAP_MAGIC_US, PCAP_MAGIC_NS) else ">"
    (magic,) = struct.unpack(order + "I", head)
    fraction = 1e-9 if magic == PCAP_MAGIC_NS else 1e-6
    rest = cursor.read(PCAP_GLOBAL_HEADER - MAGIC_BYTES, "the pcap file header")
    _major, _minor, _zone, _sigfigs, snaplen, network = struct.unpack(order + "HHiIII", rest)
    linktype = network & LINKTYPE_MASK
    record = struct.Struct(order + "IIII")
    while True:
        header = cursor.read(PCAP_RECORD_HEADER, "a packet record header", allow_eof=True)
        if header is None:
            return
        ts_sec, ts_frac, incl_len, orig_len = record.unpack(header)
        if incl_len > MAX_RECORD_BYTES:
            raise CaptureError(
                f"damaged packet record: captured length {incl_len} bytes", cursor.offset
            )
        data = cursor.read(incl_len, "packet data")
        yield CapturedPacket(
            ts=ts_sec + ts_frac * fraction,
            linktype=linktype,
            data=data,
            wire_len=max(orig_len, incl_len),
            offset=cursor.offset,
        )


@dataclass
class _Interface:
    linktype: int
    snaplen: int
    tsresol: float = PCAPNG_DEFAULT_TSRESOL
    tsoffset: int = 0


def _read_pcapng(stream: BinaryIO, head: bytes) -> Iterator[CapturedPacket]:
    cursor = _Cursor(stream, 0)
    order = "<"
    interfaces: List[_Interface] = []
    pending_type: Optional[bytes] = head
    while True:
        start = cursor.offset
        if pending_type is not None:
            raw_type, pending_type = pending_type, None
            cursor.offset += MAGIC_BYTES
        else:
            raw_type = cursor.read(4, "a block header", allow_eof=True)
            if raw_type is None:
                return
        if struct.unpack("<I", raw_type)[0] == PCAPNG_SHB:
            length_raw = cursor.read(4, "a section header")
            magic_raw = cursor.read(4, "a section header")
            order = _byte_order(magic_raw, cursor.offset)
            (total_len,) = struct.unpack(order + "I", length_raw)
            _check_block_length(total_len, 12, start)
            body = cursor.read(total_len - 12, "a section header")
            _check_trailer(body[-4:], total_len, order, start)
            interfaces = []
            continue
        (block_type,) = struct.unpack(order + "I", raw_type)
        (total_len,) = struct.unpack(order + "I", cursor.read(4, "a block header"))
        _check_block_length(total_len, 8, start)
        body = cursor.read(total_len - 8, f"a block of {total_len} bytes")
        _check_trailer(body[-4:], total_len, order, start)
        body = body[:-4]
        if block_type == PCAPNG_IDB:
            interfaces.append(_parse_idb(body, order, start))
        elif block_type == PCAPNG_EPB:
            yield _parse_epb(body, order, interfaces, start, cursor.offset)
        elif block_type == PCAPNG_SPB:
            yield _parse_spb(body, order, interfaces, start, cursor.offset)
        elif block_type == PCAPNG_OPB:
            yield _parse_opb(body, order, interfaces, start, cursor.offset)
        # Other blocks (name resolution, statistics, custom ...) carry no packets.


def _byte_order(magic_raw: bytes, offset: int) -> str:
    if struct.unpack("<I", magic_raw)[0] == PCAPNG_BYTE_ORDER_MAGIC:
        return "<"
    if struct.unpack(">I", magic_raw)[0] == PCAPNG_BYTE_ORDER_MAGIC:
        return ">"
    raise CaptureError("damaged pcapng section header (bad byte-order magic)", offset)


def _check_block_length(total_len: int, read_so_far: int, start: int) -> None:
    if total_len < read_so_far + 4 or total_len % 4 or total_len > MAX_RECORD_BYTES:
        raise CaptureError(f"damaged pcapng block: length {total_len}", start)


def _check_trailer(trailer: bytes, total_len: int, order: str, start: int) -> None:
    if struct.unpack(order + "I", trailer)[0] != total_len:
        raise CaptureError("damaged pcapng block: trailing length differs", start)


def _options(raw: bytes, order: str) -> Iterator[Tuple[int, bytes]]:
    pos = 0
    while pos + 4 <= len(raw):
        code, length = struct.unpack_from(order + "HH", raw, pos)
        if code == PCAPNG_OPT_END:
            return
        yield code, raw[pos + 4 : pos + 4 + length]
        pos += 4 + length + (-length % 4)


def _parse_idb(body: bytes, order: str, start: int) -> _Interface:
    if len(body) < 8:
        raise CaptureError("damaged pcapng interface block", start)
    linktype, _reserved, snaplen = struct.unpack_from(order + "HHI", body)
    interface = _Interface(linktype=linktype, snaplen=snaplen)
    for code, value in _options(body[8:], order):
        if code == PCAPNG_OPT_IF_TSRESOL and value:
            exponent = value[0] & 0x7F
            interface.tsresol = 2.0**-exponent if value[0] & 0x80 else 10.0**-exponent
        elif code == PCAPNG_OPT_IF_TSOFFSET and len(value) == 8:
            (interface.tsoffset,) = struct.unpack(order + "q", value)
    return interface


def _interface(interfaces: List[_Interface], index: int, start: int) -> _Interface:
    if index >= len(interfaces):
        raise CaptureError(f"packet names interface {index}, which was never described", start)
    return interfaces[index]


def _packet(
    interface: _Interface, ts_units: int, data: bytes, wire_len: int, end: int
) -> CapturedPacket:
    return CapturedPacket(
        ts=interface.tsoffset + ts_units * interface.tsresol,
        linktype=interface.linktype,
        data=data,
        wire_len=max(wire_len, len(data)),
        offset=end,
    )


def _parse_epb(body, order, interfaces, start, end) -> CapturedPacket:
    if len(body) < 20:
        raise CaptureError("damaged pcapng enhanced packet block", start)
    index, ts_high, ts_low, caplen, origlen = struct.unpack_from(order + "IIIII", body)
    if 20 + caplen > len(body):
        raise CaptureError("damaged pcapng enhanced packet block: data overruns block", start)
    interface = _interface(interfaces, index, start)
    return _packet(interface, (ts_high << 32) | ts_low, body[20 : 20 + caplen], origlen, end)


def _parse_opb(body, order, interfaces, start, end) -> CapturedPacket:
    if len(body) < 20:
        raise CaptureError("damaged pcapng packet block", start)
    index, _drops, ts_high, ts_low, caplen, origlen = struct.unpack_from(order + "HHIIII", body)
    if 20 + caplen > len(body):
        raise CaptureError("damaged pcapng packet block: data overruns block", start)
    interface = _interface(interfaces, index, start)
    return _packet(interface, (ts_high << 32) | ts_low, body[20 : 20 + caplen], origlen, end)


def _parse_spb(body, order, interfaces, start, end) -> CapturedPacket:
    if len(body) < 4:
        raise CaptureError("damaged pcapng simple packet block", start)
    (origlen,) = struct.unpack_from(order + "I", body)
    interface = _interface(interfaces, 0, start)
    caplen = min(origlen, interface.snaplen or origlen, len(body) - 4)
    # A simple packet block has no timestamp; 0 keeps the order but not the time.
    return _packet(interface, 0, body[4 : 4 + caplen], origlen, end)
