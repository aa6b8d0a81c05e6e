"""Framework-free descriptions of OpenFlow 1.3 changes, and the pipeline's constants.

The decision core returns these frozen dataclasses; only ``ryu_apps/`` turns
them into Ryu ``OFPFlowMod`` / ``OFPGroupMod`` / ``OFPPacketOut`` objects. A
test compares them with ``==`` or applies them to ``testkit.fakeswitch``.

Match fields and ``SetField`` names are OXM field names exactly as Ryu's
``OFPMatch(**kwargs)`` spells them (``in_port``, ``eth_type``, ``ipv4_src``,
``tcp_dst`` ...), so the shell can pass them through unchanged.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Mapping, Tuple, Union

# --- Pipeline tables (DESIGN.md section 2) --------------------------------
TABLE_CLASSIFY = 0  #: where a packet comes from decides where it goes next
TABLE_FSC = 1  #: the Flow State Cache: one entry per flow direction
TABLE_DELIVERY = 2  #: L2 delivery after the cell (hosts learnt on edge ports)
#: ``state``-mode TCP flows: per profile (metadata = its ALL group id), SYN, FIN
#: and RST go to the profile's ALL group (mirrors get a copy), the rest to its
#: FAST_FAILOVER group (the primary only).
TABLE_PROFILE = 3

# --- Metadata ----------------------------------------------------------------
#: The bits of the metadata register that carry a profile's ALL group id from
#: TABLE_FSC to TABLE_PROFILE (group ids stay below 2**32).
METADATA_PROFILE_MASK = 0xFFFF_FFFF

# --- TCP flags (OpenFlow 1.3 ``tcp_flags``, the ONF experimenter OXM) -------
TCP_FIN = 0x01
TCP_SYN = 0x02
TCP_RST = 0x04
#: The flags whose packets change what a ``state`` mirror must know; OVS takes
#: one flag pattern per entry, so each gets its own entry.
STATE_TCP_FLAGS = (TCP_SYN, TCP_FIN, TCP_RST)

# --- Priorities ------------------------------------------------------------
PRIORITY_MISS = 0
PRIORITY_LOW = 100
PRIORITY_MID = 200
PRIORITY_HIGH = 300
PRIORITY_CONTROL = 400  #: control traffic (heartbeats, replication) above all

# --- Cookies ---------------------------------------------------------------
#: Cookie of the pipeline's static entries (tables 0 and 2, table-miss rules).
#: Flow entries in the FSC carry the flow's 64-bit ``flow_id`` as cookie; a
#: flow_id equal to this value is remapped by ``prism.flows.identity``.
COOKIE_PIPELINE = 0x5052_4953_4D00_0000  # "PRISM\0\0\0"
COOKIE_HOST = 0x5052_4953_4D00_0001  #: learnt host entries in TABLE_DELIVERY
#: FSC entries of flows forwarded to their primary cell without mirroring (the FSC copy was full).
COOKIE_UNPROTECTED = 0x5052_4953_4D00_0002
COOKIE_ALL_MASK = 0xFFFF_FFFF_FFFF_FFFF
#: Cookie of a profile's TABLE_PROFILE entries: this base plus its ALL group id
#: (deleted, in TABLE_PROFILE only, with COOKIE_ALL_MASK when the profile's groups go).
COOKIE_PROFILE_BASE = 0x5052_4953_0000_0000  # "PRIS" then the group id

# --- Group ids -------------------------------------------------------------
#: Profile groups (type ALL) use ids from this base upwards; the FAST_FAILOVER
#: group of a profile is its ALL group's id plus ``FF_GROUP_OFFSET``.
PROFILE_GROUP_BASE = 0x0001_0000
FF_GROUP_OFFSET = 0x0100_0000
MAX_PROFILE_GROUPS = FF_GROUP_OFFSET - PROFILE_GROUP_BASE

# --- Reserved ports (OpenFlow 1.3 ofp_port_no) ----------------------------
OFPP_IN_PORT = 0xFFFFFFF8
OFPP_CONTROLLER = 0xFFFFFFFD
OFPP_ANY = 0xFFFFFFFF
OFPG_ALL = 0xFFFFFFFC  #: every group, in a group DELETE
OFPG_ANY = 0xFFFFFFFF  #: wildcard for flow stats and flow deletes only
OFPCML_NO_BUFFER = 0xFFFF

#: Destination MAC set on mirror copies so that a cell only updates state.
#: A locally administered address that no host uses.
MIRROR_MAC = "02:50:52:49:53:4d"


class Command(enum.Enum):
    """Flow/group mod commands."""

    ADD = "add"
    MODIFY = "modify"
    MODIFY_STRICT = "modify_strict"  #: flows only: same match and priority; counters kept
    DELETE = "delete"


class GroupType(enum.Enum):
    """The group types PRISM uses."""

    ALL = "all"
    FAST_FAILOVER = "ff"


# --- Actions ----------------------------------------------------------------
@dataclass(frozen=True)
class Output:
    """Output to a port (``OFPP_CONTROLLER`` sends a packet-in)."""

    port: int
    max_len: int = OFPCML_NO_BUFFER


@dataclass(frozen=True)
class GroupAction:
    """Apply a group."""

    group_id: int


@dataclass(frozen=True)
class SetField:
    """Set one OXM field, e.g. ``SetField('eth_dst', MIRROR_MAC)``."""

    field: str
    value: Union[int, str]


Action = Union[Output, GroupAction, SetField]


# --- Match ------------------------------------------------------------------
#: A match field's value: an int or address text, or ``(value, mask)`` for a maskable field.
MatchValue = Union[int, str, Tuple[int, int]]

@dataclass(frozen=True)
class Match:
    """An OXM match as sorted ``(field, value)`` pairs (hashable, comparable)."""

    fields: Tuple[Tuple[str, "MatchValue"], ...] = ()

    @classmethod
    def of(cls, **kwargs: "MatchValue") -> "Match":
        """Build from keyword arguments: ``Match.of(in_port=1, eth_type=0x800)``."""
        return cls(tuple(sorted(kwargs.items())))

    def as_dict(self) -> Mapping[str, "MatchValue"]:
        """The fields as a dict (what ``OFPMatch(**d)`` takes)."""
        return dict(self.fields)


# --- Messages -----------------------------------------------------------------
@dataclass(frozen=True)
class FlowMod:
    """An OFPT_FLOW_MOD.

    ``actions`` go in an APPLY_ACTIONS instruction; ``write_metadata`` (if
    not None, ``(value, mask)``) a WRITE_METADATA instruction; ``goto_table``
    (if not None) adds a GOTO_TABLE instruction. An entry with neither
    actions nor goto drops. MODIFY_STRICT replaces the instructions of the
    entry with the same match and priority in ``table_id`` and keeps its
    counters, cookie and timeouts (it adds nothing if there is none).
    Match values may be ``(value, mask)`` pairs for maskable fields
    (``metadata``, ``tcp_flags``).
    DELETE uses ``cookie``/``cookie_mask`` and ``match`` non-strictly, across
    ``table_id`` (``None`` means all tables).
    """

    command: Command
    table_id: Union[int, None]
    match: Match = field(default_factory=Match)
    priority: int = PRIORITY_MISS
    actions: Tuple[Action, ...] = ()
    goto_table: Union[int, None] = None
    cookie: int = 0
    cookie_mask: int = 0
    idle_timeout: int = 0
    hard_timeout: int = 0
    send_flow_removed: bool = False
    write_metadata: Union[Tuple[int, int], None] = None


@dataclass(frozen=True)
class Bucket:
    """A group bucket; ``watch_port`` matters for FAST_FAILOVER only."""

    actions: Tuple[Action, ...]
    watch_port: int = OFPP_ANY


@dataclass(frozen=True)
class GroupMod:
    """An OFPT_GROUP_MOD. DELETE with ``OFPG_ALL`` removes every group (``OFPG_ANY`` none)."""

    command: Command
    group_type: GroupType
    group_id: int
    buckets: Tuple[Bucket, ...] = ()


@dataclass(frozen=True)
class PacketOut:
    """An OFPT_PACKET_OUT carrying ``data`` (no switch buffer is used)."""

    in_port: int
    actions: Tuple[Action, ...]
    data: bytes


@dataclass(frozen=True)
class Barrier:
    """An OFPT_BARRIER_REQUEST: later messages apply after earlier ones."""


OfChange = Union[FlowMod, GroupMod, PacketOut, Barrier]
