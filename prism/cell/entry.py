"""One tracked connection: its states, the monotone facts they derive from, and per-direction sequence state."""

from __future__ import annotations

import enum
from typing import Dict, Optional, Tuple

from prism.flows.identity import FlowKey

SEQ_MODULUS = 1 << 32
SEQ_MASK = SEQ_MODULUS - 1
SEQ_HALF = 1 << 31
#: A flow's token is a random number of this many bits, never 0 (0: not decided yet).
TOKEN_BITS = 32
TOKEN_MAX = (1 << TOKEN_BITS) - 1
#: ``ConnEntry.anchor`` bits: the direction's positions await a primary copy's confirmation.
ANCHOR_ORIG = 1
ANCHOR_REPLY = 2
ANCHOR_BOTH = ANCHOR_ORIG | ANCHOR_REPLY


class ConnState(enum.Enum):
    """Connection states. TCP uses the first eight; other protocols NEW/REPLIED."""

    SYN_SENT = "SYN_SENT"
    SYN_RECV = "SYN_RECV"
    ESTABLISHED = "ESTABLISHED"
    FIN_WAIT = "FIN_WAIT"
    CLOSE_WAIT = "CLOSE_WAIT"
    LAST_ACK = "LAST_ACK"
    TIME_WAIT = "TIME_WAIT"
    CLOSED = "CLOSED"
    NEW = "NEW"  #: non-TCP: packets seen from the initiator only
    REPLIED = "REPLIED"  #: non-TCP: packets seen in both directions


class FlowVerdict(enum.Enum):
    """A flow's firewall decision, taken when it is created (or later by policy)."""

    ACCEPT = "accept"
    DENY = "deny"


# --- Facts ------------------------------------------------------------------------
# A connection's state is a function of facts that are only ever added, never
# removed (until the connection is reopened). Setting a fact twice is a no-op,
# so a duplicated packet (a mirror copy and later the primary copy of the same
# segment) cannot move the state machine twice, and two views of one
# connection merge by OR-ing their facts.
FACT_SYN_ORIG = 1 << 0  #: the initiator's SYN
FACT_SYN_REPLY = 1 << 1  #: the responder's SYN (normally a SYN-ACK)
FACT_HANDSHAKE_DONE = 1 << 2  #: the initiator acknowledged the responder's SYN
FACT_FIN_ORIG = 1 << 3  #: the initiator sent FIN
FACT_FIN_REPLY = 1 << 4  #: the responder sent FIN
FACT_FIN_ORIG_ACKED = 1 << 5  #: the responder acknowledged the initiator's FIN
FACT_FIN_REPLY_ACKED = 1 << 6  #: the initiator acknowledged the responder's FIN
FACT_RST = 1 << 7  #: an accepted RST in either direction
FACT_SEEN_ORIG = 1 << 8  #: non-TCP: a packet from the initiator
FACT_SEEN_REPLY = 1 << 9  #: non-TCP: a packet from the responder
TCP_FACTS_MASK = (1 << 8) - 1

FACT_NAMES: Dict[int, str] = {
    FACT_SYN_ORIG: "syn_orig",
    FACT_SYN_REPLY: "syn_reply",
    FACT_HANDSHAKE_DONE: "handshake_done",
    FACT_FIN_ORIG: "fin_orig",
    FACT_FIN_REPLY: "fin_reply",
    FACT_FIN_ORIG_ACKED: "fin_orig_acked",
    FACT_FIN_REPLY_ACKED: "fin_reply_acked",
    FACT_RST: "rst",
    FACT_SEEN_ORIG: "seen_orig",
    FACT_SEEN_REPLY: "seen_reply",
}
FACT_BITS: Dict[str, int] = {name: bit for bit, name in FACT_NAMES.items()}


def facts_to_names(facts: int) -> Tuple[str, ...]:
    """The names of the facts set in ``facts``, lowest bit first."""
    return tuple(name for bit, name in FACT_NAMES.items() if facts & bit)


def _tcp_state_of(facts: int) -> ConnState:
    """The TCP state that a set of facts means (see the module's fact list)."""
    if facts & FACT_RST:
        return ConnState.CLOSED
    fin_orig, fin_reply = facts & FACT_FIN_ORIG, facts & FACT_FIN_REPLY
    if fin_orig and fin_reply:
        both_acked = facts & FACT_FIN_ORIG_ACKED and facts & FACT_FIN_REPLY_ACKED
        return ConnState.TIME_WAIT if both_acked else ConnState.LAST_ACK
    if fin_orig or fin_reply:
        acked = FACT_FIN_ORIG_ACKED if fin_orig else FACT_FIN_REPLY_ACKED
        return ConnState.CLOSE_WAIT if facts & acked else ConnState.FIN_WAIT
    if facts & FACT_HANDSHAKE_DONE and facts & FACT_SYN_REPLY:
        return ConnState.ESTABLISHED
    if facts & FACT_SYN_REPLY:
        return ConnState.SYN_RECV
    return ConnState.SYN_SENT


#: TCP state of every combination of TCP facts (a table: the hot path looks it up).
TCP_STATE_OF_FACTS: Tuple[ConnState, ...] = tuple(
    _tcp_state_of(facts) for facts in range(TCP_FACTS_MASK + 1)
)


def other_state_of(facts: int) -> ConnState:
    """State of a non-TCP flow."""
    return ConnState.REPLIED if facts & FACT_SEEN_REPLY else ConnState.NEW


def state_of(proto_is_tcp: bool, facts: int) -> ConnState:
    """State of a flow from its facts."""
    if proto_is_tcp:
        return TCP_STATE_OF_FACTS[facts & TCP_FACTS_MASK]
    return other_state_of(facts)


# --- Sequence-number arithmetic (RFC 1982 serial numbers, 32 bits) ---------------
def seq_diff(a: int, b: int) -> int:
    """``a - b`` as a signed distance in sequence space."""
    diff = (a - b) & SEQ_MASK
    return diff - SEQ_MODULUS if diff >= SEQ_HALF else diff


def seq_later(a: Optional[int], b: Optional[int]) -> Optional[int]:
    """The later of two sequence numbers (None means unknown)."""
    if a is None:
        return b
    if b is None:
        return a
    return a if seq_diff(a, b) >= 0 else b


# --- Entries ------------------------------------------------------------------------
class Direction:
    """What one side of a TCP connection has sent and what its peer allowed it.

    Attributes:
        isn: Initial sequence number (from its SYN), None before it.
        seq_end: Highest ``seq + len`` (SYN and FIN count one) sent.
        ack_max: Highest acknowledgement number it sent.
        window: Last window it advertised (unscaled, as on the wire).
        max_window: Largest window it advertised.
        allowed_end: Highest sequence its peer allowed it to send
            (peer's ack + peer's window, scaled by the assumed window scale).
        fin_end: Sequence number just after its FIN, None before it.
    """

    __slots__ = ("isn", "seq_end", "ack_max", "window", "max_window", "allowed_end", "fin_end")

    def __init__(self) -> None:
        self.isn: Optional[int] = None
        self.seq_end: Optional[int] = None
        self.ack_max: Optional[int] = None
        self.window = 0
        self.max_window = 0
        self.allowed_end: Optional[int] = None
        self.fin_end: Optional[int] = None

    def as_dict(self) -> Dict[str, Optional[int]]:
        """Plain dict (JSON-able)."""
        return {name: getattr(self, name) for name in self.__slots__}


class ConnEntry:
    """One connection in the tracker (mutable; owned by ``ConnTracker``).

    Attributes:
        key: The flow's canonical key.
        is_tcp: True for TCP (cached ``key.proto == PROTO_TCP``).
        orig_forward: True if the initiator is ``key``'s a-side.
        facts: Bitmask of ``FACT_*``.
        state: ``ConnState`` derived from ``facts``.
        verdict: The flow's ``FlowVerdict``.
        token: What the flow's primary decided at random for it (as a NAT
            picks a port, or a firewall a session id); 0 until a primary
            decides. Packets do not carry it: mirrors learn it only through
            replication, and a cell taking over keeps it.
        version: The primary's count of the flow's changes (see
            ``ConnTracker``); replicas keep the highest.
        versioned_facts: ``facts`` when ``version`` last grew: a primary
            copy finding ``facts`` different gives a new version.
        first_seen: ``now`` of the first packet.
        last_seen: ``now`` of the latest accepted packet.
        orig: The initiator's ``Direction``.
        reply: The responder's ``Direction``.
        primary_packets: Primary copies accepted here (this cell's own count).
        primary_bytes: Their frame bytes.
        mirror_packets: Mirror copies absorbed here.
        mirror_bytes: Their frame bytes.
        dropped_packets: Primary copies of this flow dropped here.
        base_packets: The flow's frames (both directions) that other
            primaries counted before this cell's own, from their records.
        base_bytes: Their bytes.
        anchor: Directions (ANCHOR_ORIG, ANCHOR_REPLY) whose positions came
            from a record and were not yet confirmed by a primary copy: the
            first primary copy of such a direction is checked against them
            with the takeover tolerance (``ConnTracker``), then re-anchors it.
    """

    __slots__ = (
        "key", "is_tcp", "orig_forward", "facts", "state", "verdict", "token", "version",
        "versioned_facts", "first_seen", "last_seen", "orig", "reply", "primary_packets",
        "primary_bytes", "mirror_packets", "mirror_bytes", "dropped_packets", "base_packets",
        "base_bytes", "anchor",
    )  # fmt: skip

    def __init__(self, key: FlowKey, is_tcp: bool, orig_forward: bool, now: float) -> None:
        self.key = key
        self.is_tcp = is_tcp
        self.orig_forward = orig_forward
        self.facts = 0
        self.state = ConnState.SYN_SENT if is_tcp else ConnState.NEW
        self.verdict = FlowVerdict.ACCEPT
        self.token = 0
        self.version = 0
        self.versioned_facts = 0
        self.first_seen = now
        self.last_seen = now
        self.orig = Direction()
        self.reply = Direction()
        self.primary_packets = 0
        self.primary_bytes = 0
        self.mirror_packets = 0
        self.mirror_bytes = 0
        self.dropped_packets = 0
        self.base_packets = 0
        self.base_bytes = 0
        self.anchor = 0

    @property
    def packets(self) -> int:
        """The flow's frames in both directions as its primaries counted them.

        This cell's primary copies, after what earlier primaries counted: the
        count from their records (``base_packets``) or, if larger, the mirror
        copies absorbed here (a ``full`` mirror sees every packet).
        """
        return self.primary_packets + max(self.base_packets, self.mirror_packets)

    @property
    def bytes(self) -> int:
        """Frame bytes of ``packets``."""
        return self.primary_bytes + max(self.base_bytes, self.mirror_bytes)

    def count_from(self, packets: int, frame_bytes: int) -> None:
        """Take a record's flow counters if they are ahead of this cell's (a repeat changes nothing)."""
        if packets > self.packets:
            self.base_packets = packets - self.primary_packets
        if frame_bytes > self.bytes:
            self.base_bytes = frame_bytes - self.primary_bytes

    @property
    def role(self) -> str:
        """This cell's role for the flow: ``primary``, ``mirror`` or ``replica`` (state only)."""
        if self.primary_packets or self.dropped_packets:
            return "primary"
        if self.mirror_packets:
            return "mirror"
        return "replica"

    def __repr__(self) -> str:
        return f"ConnEntry({self.key}, {self.state.value}, v{self.version})"
