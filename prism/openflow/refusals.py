"""What a switch refused: an OpenFlow error message's echoed request, read as the flow or group it was about.

OpenFlow 1.3 error messages (OFPT_ERROR) carry at least the first 64 bytes
of the request that failed. For our own FLOW_MOD and GROUP_MOD additions
that is enough to know which flow (an FSC entry's cookie is the flow id) or
which group the switch does not hold, so that the director can roll its
view back (``MirroringDirector.on_refused``). Anything else (a deletion, a
modification, another message) is only counted by the caller.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Optional

OFP_VERSION_1_3 = 0x04
OFPT_FLOW_MOD = 14
OFPT_GROUP_MOD = 15
OFPFC_ADD = 0
OFPGC_ADD = 0
_HEADER = struct.Struct("!BBHI")
_FLOW_MOD_HEAD = struct.Struct("!QQBB")  # cookie, cookie_mask, table_id, command (after the header)
_GROUP_MOD_HEAD = struct.Struct("!HBxI")  # command, type, pad, group_id (after the header)

FLOW = "flow"
GROUP = "group"


@dataclass(frozen=True)
class Refusal:
    """An addition the switch refused.

    Attributes:
        kind: ``FLOW`` (an FSC entry; ``ident`` is its cookie) or ``GROUP`` (``ident`` is the group id).
        ident: The cookie or group id.
        table_id: The flow entry's table (None for a group).
        error_type: The error's type.
        error_code: The error's code (e.g. OFPFMFC_TABLE_FULL, OFPGMFC_OUT_OF_GROUPS).
    """

    kind: str
    ident: int
    table_id: Optional[int]
    error_type: int
    error_code: int


def refused_addition(error_type: int, error_code: int, data: bytes) -> Optional[Refusal]:
    """The flow or group addition an error message echoes, or None if it echoes something else."""
    data = bytes(data or b"")
    if len(data) < _HEADER.size:
        return None
    version, msg_type, _length, _xid = _HEADER.unpack_from(data)
    if version != OFP_VERSION_1_3:
        return None
    if msg_type == OFPT_FLOW_MOD and len(data) >= _HEADER.size + _FLOW_MOD_HEAD.size:
        cookie, _mask, table_id, command = _FLOW_MOD_HEAD.unpack_from(data, _HEADER.size)
        if command == OFPFC_ADD:
            return Refusal(FLOW, cookie, table_id, error_type, error_code)
    elif msg_type == OFPT_GROUP_MOD and len(data) >= _HEADER.size + _GROUP_MOD_HEAD.size:
        command, _type, group_id = _GROUP_MOD_HEAD.unpack_from(data, _HEADER.size)
        if command == OFPGC_ADD:
            return Refusal(GROUP, group_id, None, error_type, error_code)
    return None
