"""OpenFlow 1.3 on the wire, switch side: the few messages a scripted switch sends, packed by hand, and framing.

Only what the controller benchmark's peer needs: HELLO, FEATURES_REPLY,
PORT_DESC multipart replies, ECHO and BARRIER replies, PACKET_IN; and, from the
controller, just enough decoding to count FLOW_MOD / GROUP_MOD messages and to
take the frame out of a PACKET_OUT. Layouts are those of the OpenFlow 1.3.5
specification (section 7); ``tests/unit/test_bench_peer.py`` checks them
against Ryu's own parser, so that a layout mistake cannot turn the benchmark
into a measurement of nothing. Hand-packed because the peer must stay much
cheaper than the controllers it measures.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Iterable, List, Sequence, Tuple

OFP_VERSION = 0x04  #: OpenFlow 1.3

# Message types (ofp_type).
OFPT_HELLO = 0
OFPT_ERROR = 1
OFPT_ECHO_REQUEST = 2
OFPT_ECHO_REPLY = 3
OFPT_FEATURES_REQUEST = 5
OFPT_FEATURES_REPLY = 6
OFPT_GET_CONFIG_REQUEST = 7
OFPT_GET_CONFIG_REPLY = 8
OFPT_SET_CONFIG = 9
OFPT_PACKET_IN = 10
OFPT_PACKET_OUT = 13
OFPT_FLOW_MOD = 14
OFPT_GROUP_MOD = 15
OFPT_MULTIPART_REQUEST = 18
OFPT_MULTIPART_REPLY = 19
OFPT_BARRIER_REQUEST = 20
OFPT_BARRIER_REPLY = 21
OFPT_ROLE_REQUEST = 24
OFPT_ROLE_REPLY = 25

# Controller roles (ofp_controller_role).
OFPCR_ROLE_NOCHANGE = 0
OFPCR_ROLE_EQUAL = 1
OFPCR_ROLE_MASTER = 2
OFPCR_ROLE_SLAVE = 3

OFPMP_PORT_DESC = 13
OFPHET_VERSIONBITMAP = 1
OFP_NO_BUFFER = 0xFFFFFFFF
OFPR_NO_MATCH = 0  #: packet-in reason of a table-miss entry
OFPMT_OXM = 1
OXM_OF_IN_PORT = (0x8000 << 16) | (0 << 9) | 4  #: class OPENFLOW_BASIC, field IN_PORT, 4 bytes
OFPPF_10GB_FD = 1 << 6
OFPPF_COPPER = 1 << 11
PORT_SPEED_KBPS = 10_000_000
#: Capabilities announced: flow, table, port and group statistics.
CAPABILITIES = 0x1 | 0x2 | 0x4 | 0x8
N_TABLES = 254

HEADER = struct.Struct("!BBHI")
_HELLO_ELEMENT = struct.Struct("!HHI")
_FEATURES = struct.Struct("!QIBB2xII")
_MULTIPART = struct.Struct("!HH4x")
_PORT = struct.Struct("!I4x6s2x16sIIIIIIII")
_PACKET_IN = struct.Struct("!IHBBQ")
_IN_PORT_MATCH = struct.Struct("!HHII4x")  # ofp_match with one OXM (in_port), padded to 8
_PACKET_OUT = struct.Struct("!IIH6x")
_FLOW_MOD = struct.Struct("!QQBBHHHIIIH2x")
_GROUP_MOD = struct.Struct("!HBxI")
_ROLE = struct.Struct("!I4xQ")
_MAX_LEN = 0xFFFF


class WireError(ValueError):
    """Bytes from the controller that are not OpenFlow 1.3 as this peer understands it."""


def _message(msg_type: int, xid: int, body: bytes = b"") -> bytes:
    length = HEADER.size + len(body)
    if length > _MAX_LEN:
        raise WireError(f"OpenFlow message of {length} bytes is longer than {_MAX_LEN}")
    return HEADER.pack(OFP_VERSION, msg_type, length, xid) + body


def hello(xid: int = 0) -> bytes:
    """HELLO with a version bitmap naming OpenFlow 1.3 only."""
    return _message(OFPT_HELLO, xid, _HELLO_ELEMENT.pack(OFPHET_VERSIONBITMAP, 8, 1 << OFP_VERSION))


def features_reply(xid: int, dp_id: int, n_buffers: int = 0) -> bytes:
    """FEATURES_REPLY for switch ``dp_id`` (no buffers: every packet-in carries its whole frame)."""
    return _message(OFPT_FEATURES_REPLY, xid, _FEATURES.pack(dp_id, n_buffers, N_TABLES, 0, CAPABILITIES, 0))


def port_desc_reply(xid: int, ports: Iterable[int], dp_id: int = 0) -> bytes:
    """PORT_DESC multipart reply: every port up, 10 Gb/s copper, MACs derived from ``dp_id`` and the port."""
    body = b""
    for port_no in ports:
        mac = struct.pack("!HI", dp_id & 0xFFFF, port_no)
        name = f"p{port_no}".encode("ascii")
        features = OFPPF_10GB_FD | OFPPF_COPPER
        body += _PORT.pack(port_no, mac, name, 0, 0, features, features, features, 0,
                           PORT_SPEED_KBPS, PORT_SPEED_KBPS)  # fmt: skip
    return _message(OFPT_MULTIPART_REPLY, xid, _MULTIPART.pack(OFPMP_PORT_DESC, 0) + body)


def empty_multipart_reply(xid: int, mp_type: int) -> bytes:
    """A multipart reply of ``mp_type`` with no entries (for requests the peer has nothing to say to)."""
    return _message(OFPT_MULTIPART_REPLY, xid, _MULTIPART.pack(mp_type, 0))


def echo_reply(xid: int, data: bytes = b"") -> bytes:
    """ECHO_REPLY carrying the request's data back."""
    return _message(OFPT_ECHO_REPLY, xid, data)


def echo_request(xid: int, data: bytes = b"") -> bytes:
    """ECHO_REQUEST (the controller framework answers it without any app seeing it)."""
    return _message(OFPT_ECHO_REQUEST, xid, data)


def barrier_reply(xid: int) -> bytes:
    """BARRIER_REPLY: everything before it is applied (this peer applies nothing)."""
    return _message(OFPT_BARRIER_REPLY, xid)


def get_config_reply(xid: int, miss_send_len: int = _MAX_LEN) -> bytes:
    """GET_CONFIG_REPLY: normal fragment handling, whole frames to the controller."""
    return _message(OFPT_GET_CONFIG_REPLY, xid, struct.pack("!HH", 0, miss_send_len))


def packet_in(
    frame: bytes, in_port: int, table_id: int, cookie: int = 0, xid: int = 0, reason: int = OFPR_NO_MATCH
) -> bytes:
    """PACKET_IN of a whole frame (no buffer) that missed in ``table_id``, with an in_port match."""
    header = _PACKET_IN.pack(OFP_NO_BUFFER, len(frame), reason, table_id, cookie)
    match = _IN_PORT_MATCH.pack(OFPMT_OXM, 4 + 8, OXM_OF_IN_PORT, in_port)
    return _message(OFPT_PACKET_IN, xid, header + match + b"\0\0" + frame)


# --- From the controller ---------------------------------------------------------------


def header_of(message: bytes) -> Tuple[int, int, int, int]:
    """``(version, type, length, xid)`` of a message."""
    return HEADER.unpack_from(message)


def packet_out_frame(message: bytes) -> bytes:
    """The frame a PACKET_OUT carries (empty when it names a switch buffer instead)."""
    _, _, actions_len = _PACKET_OUT.unpack_from(message, HEADER.size)
    return bytes(message[HEADER.size + _PACKET_OUT.size + actions_len :])


@dataclass(frozen=True)
class FlowModSummary:
    """The fields of a FLOW_MOD the benchmark reports on."""

    table_id: int
    command: int
    priority: int
    cookie: int


def flow_mod_summary(message: bytes) -> FlowModSummary:
    """Table, command, priority and cookie of a FLOW_MOD."""
    cookie, _, table_id, command, _, _, priority = _FLOW_MOD.unpack_from(message, HEADER.size)[:7]
    return FlowModSummary(table_id, command, priority, cookie)


def group_mod_id(message: bytes) -> int:
    """The group id a GROUP_MOD names."""
    return _GROUP_MOD.unpack_from(message, HEADER.size)[2]


def role_of_request(message: bytes) -> Tuple[int, int]:
    """``(role, generation_id)`` of a ROLE_REQUEST."""
    return _ROLE.unpack_from(message, HEADER.size)


def role_reply(xid: int, role: int, generation_id: int) -> bytes:
    """ROLE_REPLY granting ``role`` (this peer checks no generation)."""
    return _message(OFPT_ROLE_REPLY, xid, _ROLE.pack(role, generation_id))


def multipart_type(message: bytes) -> int:
    """The ``type`` of a multipart request or reply."""
    return _MULTIPART.unpack_from(message, HEADER.size)[0]


class MessageReader:
    """Cuts a TCP byte stream into whole OpenFlow messages (keeps the incomplete tail)."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> List[bytes]:
        """The messages completed by ``data``, in order.

        Raises:
            WireError: a header with a version other than 1.3 or a length below the header's.
        """
        buffer = self._buffer
        buffer += data
        messages = []
        offset = 0
        while len(buffer) - offset >= HEADER.size:
            version, _, length, _ = HEADER.unpack_from(buffer, offset)
            if version != OFP_VERSION or length < HEADER.size:
                raise WireError(f"not an OpenFlow 1.3 message: version {version:#x}, length {length}")
            if len(buffer) - offset < length:
                break
            messages.append(bytes(buffer[offset : offset + length]))
            offset += length
        del buffer[:offset]
        return messages

    @property
    def pending(self) -> int:
        """Bytes of an incomplete message kept for the next ``feed``."""
        return len(self._buffer)


def split_messages(stream: bytes) -> Sequence[bytes]:
    """Every whole message in ``stream`` (a recorded exchange); an incomplete tail is an error."""
    reader = MessageReader()
    messages = reader.feed(stream)
    if reader.pending:
        raise WireError(f"{reader.pending} bytes after the last whole message")
    return messages
