"""Connection tracking as a stateful firewall does it: per-flow TCP state, sequence checks, counters, verdicts."""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Tuple

from prism.cell.entry import (
    ANCHOR_ORIG,
    ANCHOR_REPLY,
    FACT_FIN_ORIG,
    FACT_FIN_ORIG_ACKED,
    FACT_FIN_REPLY,
    FACT_FIN_REPLY_ACKED,
    FACT_HANDSHAKE_DONE,
    FACT_RST,
    FACT_SEEN_ORIG,
    FACT_SEEN_REPLY,
    FACT_SYN_ORIG,
    FACT_SYN_REPLY,
    SEQ_HALF,
    SEQ_MASK,
    TCP_STATE_OF_FACTS,
    TOKEN_BITS,
    ConnEntry,
    ConnState,
    Direction,
    FlowVerdict,
    seq_diff,
)
from prism.cell.records import (
    decision_digest,
    entry_to_record,
    is_removal,
    merge_entry,
    record_to_entry,
    record_to_removal,
    removal_record,
    wire_removal_record,
)
from prism.flows.identity import PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, FlowKey, PacketInfo
from prism.flows.identity import TCP_ACK as _ACK
from prism.flows.identity import TCP_FIN as _FIN
from prism.flows.identity import TCP_RST as _RST
from prism.flows.identity import TCP_SYN as _SYN
from prism.mgmt.protocol import DEFAULT_TAKEOVER_TOLERANCE_BYTES

#: Window scale assumed in strict mode (PacketInfo carries no TCP options;
#: 7 is what Linux announces with its default buffer sizes).
DEFAULT_WINDOW_SCALE = 7
MAX_WINDOW_SCALE = 14  #: RFC 7323
#: Smallest slack (bytes) allowed behind the highest sequence/ack seen in
#: strict mode, as Linux conntrack's MAXACKWINCONST.
MIN_WINDOW_SLACK = 66000
DEFAULT_MAX_FLOWS = 1_000_000
#: How long a removed flow's tombstone is kept: longer than a replication
#: batch can be retried, so that no late record of the old flow resurrects it.
DEFAULT_TOMBSTONE_TTL_S = 120.0


def _within(number: int, sent: int, allowed: Optional[int], behind: int, tolerance: int) -> bool:
    """``number`` is no more than ``behind`` before ``sent`` and no more than ``tolerance`` after
    the later of ``sent`` and ``allowed`` (32-bit sequence space)."""
    if seq_diff(number, sent) < -behind:
        return False
    ahead = sent if allowed is None or seq_diff(allowed, sent) < 0 else allowed
    return seq_diff(number, ahead) <= tolerance


class Action(enum.Enum):
    """What the cell does with a packet."""

    FORWARD = "forward"  #: a primary copy that passed: send it back to the switch
    DROP = "drop"  #: a primary copy that did not pass
    ABSORB = "absorb"  #: a mirror copy: state updated (if valid), never sent


@dataclass(frozen=True)
class Verdict:
    """The decision for one packet; ``reason`` says why a packet is dropped."""

    action: Action
    reason: str = ""


FORWARD = Verdict(Action.FORWARD)
ABSORB = Verdict(Action.ABSORB)
DROP_NO_STATE = Verdict(Action.DROP, "no_state")  #: mid-connection TCP, unknown connection
DROP_INVALID_FLAGS = Verdict(Action.DROP, "invalid_flags")  #: SYN+FIN, SYN+RST, no SYN/ACK/RST
DROP_OUT_OF_WINDOW = Verdict(Action.DROP, "out_of_window")  #: strict mode only
DROP_DENIED = Verdict(Action.DROP, "denied")  #: the flow's verdict is DENY
DROP_TABLE_FULL = Verdict(Action.DROP, "table_full")  #: ``max_flows`` reached
DROP_REASONS = tuple(
    verdict.reason
    for verdict in (
        DROP_NO_STATE, DROP_INVALID_FLAGS, DROP_OUT_OF_WINDOW, DROP_DENIED, DROP_TABLE_FULL
    )
)  # fmt: skip

_DENY = FlowVerdict.DENY
#: Facts of a connection that is closing or closed: a FIN or a RST was seen (the
#: packets a ``state`` flow's mirrors receive copies of).
CLOSING_FACTS = FACT_FIN_ORIG | FACT_FIN_REPLY | FACT_RST
#: States in which a new SYN starts a new connection on the same key.
_REOPENABLE = frozenset((ConnState.TIME_WAIT, ConnState.CLOSED))


@dataclass(frozen=True)
class Timeouts:
    """Idle timeouts in seconds, per state (Linux conntrack's spirit, shorter)."""

    syn_sent: float = 30.0
    syn_recv: float = 30.0
    established: float = 3600.0
    fin_wait: float = 60.0
    close_wait: float = 60.0
    last_ack: float = 30.0
    time_wait: float = 60.0
    closed: float = 10.0
    udp_new: float = 30.0
    udp_replied: float = 180.0
    icmp: float = 30.0
    other: float = 600.0

    def tcp_table(self) -> Dict[ConnState, float]:
        """Timeout of each TCP state."""
        return {
            ConnState.SYN_SENT: self.syn_sent,
            ConnState.SYN_RECV: self.syn_recv,
            ConnState.ESTABLISHED: self.established,
            ConnState.FIN_WAIT: self.fin_wait,
            ConnState.CLOSE_WAIT: self.close_wait,
            ConnState.LAST_ACK: self.last_ack,
            ConnState.TIME_WAIT: self.time_wait,
            ConnState.CLOSED: self.closed,
        }

    def other_table(self, proto: int) -> Dict[ConnState, float]:
        """Timeout of the NEW and REPLIED states of a non-TCP protocol."""
        if proto == PROTO_UDP:
            return {ConnState.NEW: self.udp_new, ConnState.REPLIED: self.udp_replied}
        if proto in (PROTO_ICMP, PROTO_ICMPV6):
            return {ConnState.NEW: self.icmp, ConnState.REPLIED: self.icmp}
        return {ConnState.NEW: self.other, ConnState.REPLIED: self.other}


@dataclass(frozen=True)
class TrackerConfig:
    """How strictly the tracker judges packets.

    Attributes:
        strict: Check TCP sequence and acknowledgement numbers against the
            windows seen (Linux conntrack's rules); loose (default) checks
            flags and state only, so retransmissions and odd segments pass.
        window_scale: Window scale assumed for the strict check.
        max_flows: Table size; new flows beyond it are dropped (``table_full``).
        timeouts: Idle timeouts per state.
        tombstone_ttl_s: How long a removed flow's last version is remembered.
        max_tombstones: Tombstones kept at most; the oldest go first beyond
            (``tombstones_evicted``: a late record of such a flow could come back).
    """

    strict: bool = False
    window_scale: int = DEFAULT_WINDOW_SCALE
    max_flows: int = DEFAULT_MAX_FLOWS
    timeouts: Timeouts = field(default_factory=Timeouts)
    tombstone_ttl_s: float = DEFAULT_TOMBSTONE_TTL_S
    max_tombstones: int = DEFAULT_MAX_FLOWS

    def __post_init__(self) -> None:
        if not 0 <= self.window_scale <= MAX_WINDOW_SCALE:
            raise ValueError(f"window_scale must be 0..{MAX_WINDOW_SCALE}, not {self.window_scale}")
        if self.max_flows < 1 or self.max_tombstones < 1:
            raise ValueError(f"max_flows and max_tombstones must be at least 1, not "
                             f"{self.max_flows} and {self.max_tombstones}")  # fmt: skip


AdmitPolicy = Callable[[PacketInfo], bool]
"""Decides at a flow's first packet whether it is accepted (True) or denied."""

TokenSource = Callable[[], int]
"""Draws a flow's token: a random integer below 2**TOKEN_BITS (a 0 is taken as 1)."""


class SystemTokens:
    """The default ``TokenSource``: TOKEN_BITS random bits from the operating system."""

    __slots__ = ("_draw",)

    def __init__(self) -> None:
        self._draw = random.SystemRandom().getrandbits

    def __call__(self) -> int:
        return self._draw(TOKEN_BITS)


class _Tombstone:
    """A removed flow's last version, kept until ``until``; ``removed_here``: its primary removed it here."""

    __slots__ = ("version", "until", "removed_here")

    def __init__(self, version: int, until: float, removed_here: bool) -> None:
        self.version = version
        self.until = until
        self.removed_here = removed_here


class ConnTracker:
    """Per-flow connection state of one cell. Pure: time comes in as ``now``.

    Versioning rule (what the State Mirroring Module replicates): a flow's
    ``version`` is its *primary's* count of changes. It grows by one when a
    primary copy finds the flow without a token (the primary then draws one:
    a new flow, a reopened key, or a flow taken over before any primary
    versioned it) or with facts (and so a state) other than at its last
    version, and when policy changes the verdict (``set_verdict``). Mirror
    copies update facts, sequence numbers and counters but never the version:
    only the primary's records move a replica's version, so two cells never
    number the same flow's changes independently. A cell that receives the
    primary copies of a flow acts as its primary (after a fast failover too);
    the first primary copy of a flow another primary versioned (a takeover)
    adds two, keeping the token and first_seen it merged.
    Sequence numbers, windows and counters change on every packet without a
    new version: mirror copies rebuild those. Between cells, a record replaces
    a flow's state only if its version is higher (``merge``); facts only
    accumulate, so a merge never moves a connection backwards, and applying a
    record twice changes nothing.

    Removal: an expired flow leaves a tombstone for ``tombstone_ttl_s``, one
    version above the flow's last if this cell versioned it (its primary:
    ``removal_version`` gives it for the removal record), else at its last.
    Records at or below a tombstone are ignored, and a new flow on the key
    starts above it.

    Args:
        config: Strictness, table size, timeouts.
        admit: Policy deciding a new flow's verdict (default: accept all).
        tokens: Draws flow tokens (default ``SystemTokens()``; tests pass a seeded one).
    """

    def __init__(self, config: Optional[TrackerConfig] = None,
                 admit: Optional[AdmitPolicy] = None,
                 tokens: Optional[TokenSource] = None) -> None:  # fmt: skip
        self.config = config or TrackerConfig()
        self._admit = admit
        self._tokens = tokens if tokens is not None else SystemTokens()
        self._strict = self.config.strict
        self._scale = self.config.window_scale
        self._max_flows = self.config.max_flows
        self._flows: Dict[FlowKey, ConnEntry] = {}
        self._keys_by_id: Dict[int, FlowKey] = {}  # flow_id -> key (not on the per-packet path)
        self._changed: Dict[FlowKey, None] = {}  # insertion-ordered set
        #: Insertion order is expiry order: a key is popped before it is stored again.
        self._tombstones: Dict[FlowKey, _Tombstone] = {}
        self._sweep: Optional[List[FlowKey]] = None  # keys still to check in the expiry sweep under way
        self._sweep_next = 0
        self._tcp_timeouts = self.config.timeouts.tcp_table()
        self._other_timeouts: Dict[int, Dict[ConnState, float]] = {}
        #: Primary copies dropped, by reason.
        self.dropped: Dict[str, int] = dict.fromkeys(DROP_REASONS, 0)
        #: Mirror copies that did not update state, by the reason a primary would drop them.
        self.mirror_rejected: Dict[str, int] = dict.fromkeys(DROP_REASONS, 0)
        self.flows_created = 0
        self.flows_expired = 0
        self.flows_reopened = 0
        self.flows_taken_over = 0  #: flows versioned elsewhere that got their first primary copy here
        self.tombstones_evicted = 0  #: tombstones forgotten early (``max_tombstones``)
        self.flows_reanchored = 0  #: directions whose replicated positions a primary copy confirmed
        self._tolerance = DEFAULT_TAKEOVER_TOLERANCE_BYTES
        self.records_applied = 0
        self.records_ignored = 0

    # -- the data path -----------------------------------------------------------------
    def process(self, info: PacketInfo, is_mirror: bool, now: float) -> Verdict:
        """Track one packet and decide what happens to it.

        Args:
            info: The parsed packet.
            is_mirror: True for a mirror copy (update state only, never forward).
            now: Current time in seconds.

        Returns:
            ``FORWARD`` or a DROP verdict for a primary copy; ``ABSORB`` for a
            mirror copy (which updates state only if a primary copy would pass).
        """
        entry = self._flows.get(info.key)
        if info.proto != PROTO_TCP:
            return self._track_other(entry, info, is_mirror, now)
        # TCP, the hot path: inlined rather than split into helpers.
        flags = info.tcp_flags
        if flags & _SYN:
            if flags & (_FIN | _RST):
                return self._reject(entry, DROP_INVALID_FLAGS, is_mirror)
        elif not flags & (_ACK | _RST):
            return self._reject(entry, DROP_INVALID_FLAGS, is_mirror)
        if entry is None:
            if flags & (_SYN | _ACK) != _SYN:  # only a connection's first SYN creates state
                return self._reject(None, DROP_NO_STATE, is_mirror)
            entry = self._create(info, now)
            if entry is None:
                return self._reject(None, DROP_TABLE_FULL, is_mirror)
            is_orig = True
        else:
            is_orig = info.forward == entry.orig_forward
            if flags & (_SYN | _ACK) == _SYN and entry.state in _REOPENABLE and (
                not is_orig or info.tcp_seq != entry.orig.isn
            ):
                self._reopen(entry, info, now)
                is_orig = True
            elif entry.anchor:
                if not self._anchor(entry, info, is_orig, is_mirror):
                    return self._reject(entry, DROP_OUT_OF_WINDOW, is_mirror)
            elif self._strict and not self._in_window(entry, info, is_orig):
                return self._reject(entry, DROP_OUT_OF_WINDOW, is_mirror)
        if entry.verdict is _DENY:
            return self._reject(entry, DROP_DENIED, is_mirror)
        self._update_tcp(entry, info, is_orig)
        return self._accept(entry, info, is_mirror, now)

    def _accept(self, entry: ConnEntry, info: PacketInfo, is_mirror: bool, now: float) -> Verdict:
        entry.last_seen = now
        if is_mirror:
            entry.mirror_packets += 1
            entry.mirror_bytes += info.frame_len
            return ABSORB
        if entry.facts != entry.versioned_facts or not entry.token or not entry.primary_packets:
            self._version(entry)
        entry.primary_packets += 1
        entry.primary_bytes += info.frame_len
        return FORWARD

    def _reject(self, entry: Optional[ConnEntry], verdict: Verdict, is_mirror: bool) -> Verdict:
        if is_mirror:
            self.mirror_rejected[verdict.reason] += 1
            return ABSORB
        self.dropped[verdict.reason] += 1
        if entry is not None:
            if (entry.facts != entry.versioned_facts or not entry.token
                    or not (entry.primary_packets or entry.dropped_packets)):  # fmt: skip
                self._version(entry)  # a denied flow's verdict and token are replicated too
            entry.dropped_packets += 1
        return verdict

    def _version(self, entry: ConnEntry) -> None:
        """A primary copy found the flow changed since its last version, undecided, or new here.

        The first primary copy of a flow that another primary versioned (a
        takeover) skips one version: the previous primary, if it still runs,
        may send a removal one above the last version it knew, and that must
        not win over the live flow.
        """
        if not entry.token:
            entry.token = self._tokens() or 1
        elif entry.version and not (entry.primary_packets or entry.dropped_packets):
            entry.version += 1
            self.flows_taken_over += 1
        self._bump(entry)

    def _track_other(self, entry: Optional[ConnEntry], info: PacketInfo, is_mirror: bool,
                     now: float) -> Verdict:  # fmt: skip
        if entry is None:
            entry = self._create(info, now)
            if entry is None:
                return self._reject(None, DROP_TABLE_FULL, is_mirror)
        elif info.forward != entry.orig_forward and not entry.facts & FACT_SEEN_REPLY:
            entry.facts |= FACT_SEEN_REPLY
            entry.state = ConnState.REPLIED
        if entry.verdict is _DENY:
            return self._reject(entry, DROP_DENIED, is_mirror)
        return self._accept(entry, info, is_mirror, now)

    def _bump(self, entry: ConnEntry) -> None:
        entry.version += 1
        entry.versioned_facts = entry.facts
        self._changed[entry.key] = None

    def _create(self, info: PacketInfo, now: float) -> Optional[ConnEntry]:
        """A new entry (version 0, or its key's tombstone's: the primary path versions it)."""
        if len(self._flows) >= self._max_flows:
            return None
        is_tcp = info.proto == PROTO_TCP
        entry = ConnEntry(info.key, is_tcp, info.forward, now)
        if not is_tcp:
            entry.facts = FACT_SEEN_ORIG
        if self._admit is not None and not self._admit(info):
            entry.verdict = FlowVerdict.DENY
        if self._tombstones:
            tombstone = self._tombstones.pop(info.key, None)
            if tombstone is not None:
                entry.version = tombstone.version
        self._flows[info.key] = entry
        self._keys_by_id[info.key.flow_id] = info.key
        self.flows_created += 1
        return entry

    def _reopen(self, entry: ConnEntry, info: PacketInfo, now: float) -> None:
        """A new connection on a closed key: fresh state and no token (a primary copy versions it)."""
        entry.orig_forward = info.forward
        entry.facts = 0
        entry.state = ConnState.SYN_SENT
        entry.orig = Direction()
        entry.reply = Direction()
        entry.first_seen = now
        entry.token = 0
        entry.anchor = 0
        if self._admit is not None:
            entry.verdict = FlowVerdict.ACCEPT if self._admit(info) else FlowVerdict.DENY
        self.flows_reopened += 1

    def _update_tcp(self, entry: ConnEntry, info: PacketInfo, is_orig: bool) -> None:
        """Fold one accepted segment into the entry. Idempotent for a repeated segment."""
        flags = info.tcp_flags
        seq = info.tcp_seq
        facts = entry.facts
        if is_orig:
            sender, receiver = entry.orig, entry.reply
        else:
            sender, receiver = entry.reply, entry.orig
        end = seq + info.payload_len
        if flags & _SYN:
            end += 1
            if is_orig:
                if not facts & FACT_SYN_REPLY:  # a SYN (or its retransmission) before the answer
                    sender.isn = seq
                    sender.seq_end = None
                facts |= FACT_SYN_ORIG
            else:
                if not facts & FACT_SYN_REPLY:
                    sender.isn = seq
                facts |= FACT_SYN_REPLY
        if flags & _FIN:
            end += 1
        end &= SEQ_MASK
        # "later than" in sequence space is inlined: 0 < (a - b) mod 2**32 < 2**31
        highest = sender.seq_end
        if highest is None or 0 < ((end - highest) & SEQ_MASK) < SEQ_HALF:
            sender.seq_end = end
        window = info.tcp_window
        sender.window = window
        if window > sender.max_window:
            sender.max_window = window
        if flags & _ACK:
            ack = info.tcp_ack
            highest = sender.ack_max
            if highest is None or 0 < ((ack - highest) & SEQ_MASK) < SEQ_HALF:
                sender.ack_max = ack
            allowed = (ack + (window << self._scale)) & SEQ_MASK
            highest = receiver.allowed_end
            if highest is None or 0 < ((allowed - highest) & SEQ_MASK) < SEQ_HALF:
                receiver.allowed_end = allowed
            if is_orig:
                if (not facts & FACT_HANDSHAKE_DONE and facts & FACT_SYN_REPLY
                        and not flags & _SYN and receiver.isn is not None
                        and seq_diff(ack, receiver.isn) > 0):  # fmt: skip
                    facts |= FACT_HANDSHAKE_DONE
                if facts & FACT_FIN_REPLY and seq_diff(ack, receiver.fin_end) >= 0:
                    facts |= FACT_FIN_REPLY_ACKED
            elif facts & FACT_FIN_ORIG and seq_diff(ack, receiver.fin_end) >= 0:
                facts |= FACT_FIN_ORIG_ACKED
        if flags & _FIN:
            if sender.fin_end is None:
                sender.fin_end = end
            facts |= FACT_FIN_ORIG if is_orig else FACT_FIN_REPLY
        if flags & _RST:
            facts |= FACT_RST
        if facts != entry.facts:
            entry.facts = facts
            entry.state = TCP_STATE_OF_FACTS[facts]

    def _anchor(self, entry: ConnEntry, info: PacketInfo, is_orig: bool, is_mirror: bool) -> bool:
        """A primary copy of a direction whose positions came from a record (a takeover).

        The first one of each direction must lie within the replicated window
        plus ``takeover_tolerance_bytes`` (see ``prism.mgmt.protocol``: a record may be
        an interval behind): its sequence number between the direction's
        highest sequence sent minus the retransmission slack and the highest
        of that and the sequence its peer allowed, plus the tolerance; its
        acknowledgement likewise against the other direction. A packet that
        passes re-anchors the direction (the caller folds it in); in strict
        mode it replaces the usual window check, whose bounds are stale.
        Mirror copies (a ``state`` mirror's SYN/FIN/RST) never re-anchor; in
        loose mode they are not checked (as any mirror copy), in strict mode
        they are checked with the tolerance.
        """
        bit = ANCHOR_ORIG if is_orig else ANCHOR_REPLY
        if not entry.anchor & bit:
            return not self._strict or self._in_window(entry, info, is_orig)
        if is_mirror and not self._strict:
            return True
        flags = info.tcp_flags
        if is_orig:
            sender, receiver = entry.orig, entry.reply
        else:
            sender, receiver = entry.reply, entry.orig
        if flags & _SYN:  # a handshake segment: judged as a new connection's
            return not self._strict or self._in_window(entry, info, is_orig)
        tolerance = self._tolerance
        if sender.seq_end is not None and not _within(
            info.tcp_seq, sender.seq_end, sender.allowed_end,
            max(receiver.max_window << self._scale, MIN_WINDOW_SLACK), tolerance,
        ):  # fmt: skip
            return False
        if flags & _ACK and receiver.seq_end is not None and not _within(
            info.tcp_ack, receiver.seq_end, receiver.allowed_end,
            max(sender.max_window << self._scale, MIN_WINDOW_SLACK), tolerance,
        ):  # fmt: skip
            return False
        if not is_mirror:
            entry.anchor &= ~bit
            self.flows_reanchored += 1
        return True

    def set_takeover_tolerance(self, tolerance_bytes: int) -> None:
        """How far beyond the replicated window a taken-over flow's first packets may lie (bytes, >= 0)."""
        if not isinstance(tolerance_bytes, int) or isinstance(tolerance_bytes, bool) or tolerance_bytes < 0:
            raise ValueError(f"takeover tolerance must be an integer >= 0, not {tolerance_bytes!r}")
        self._tolerance = tolerance_bytes

    @property
    def takeover_tolerance_bytes(self) -> int:
        """The tolerance ``set_takeover_tolerance`` set (default ``prism.mgmt.protocol.DEFAULT_TAKEOVER_TOLERANCE_BYTES``)."""
        return self._tolerance

    def _in_window(self, entry: ConnEntry, info: PacketInfo, is_orig: bool) -> bool:
        """Strict mode: Linux conntrack's four window checks, with an assumed window scale."""
        flags = info.tcp_flags
        if is_orig:
            sender, receiver = entry.orig, entry.reply
        else:
            sender, receiver = entry.reply, entry.orig
        if flags & _SYN:
            if flags & _ACK and not is_orig and entry.orig.isn is not None:
                return info.tcp_ack == (entry.orig.isn + 1) & SEQ_MASK
            return True
        # Inlined serial-number tests: a before b  <=>  (a - b) mod 2**32 >= 2**31.
        seq = info.tcp_seq
        if sender.seq_end is not None:
            end = seq + info.payload_len + (1 if flags & _FIN else 0)
            behind = max(receiver.max_window << self._scale, MIN_WINDOW_SLACK)
            if ((end - sender.seq_end + behind) & SEQ_MASK) >= SEQ_HALF:
                return False  # older than any window
            allowed = sender.allowed_end
            if allowed is not None and 0 < ((seq - allowed) & SEQ_MASK) < SEQ_HALF:
                return False  # beyond what the receiver allowed
        if flags & _ACK and receiver.seq_end is not None:
            ack = info.tcp_ack
            if 0 < ((ack - receiver.seq_end) & SEQ_MASK) < SEQ_HALF:
                return False  # acknowledges data never sent
            behind = max(sender.max_window << self._scale, MIN_WINDOW_SLACK)
            if ((ack - receiver.seq_end + behind) & SEQ_MASK) >= SEQ_HALF:
                return False
        return True

    # -- table maintenance -----------------------------------------------------------------
    def expire(self, now: float, limit: Optional[int] = None) -> List[FlowKey]:
        """Remove flows idle longer than their state's timeout, leaving tombstones; drop old tombstones.

        A sweep checks every flow the table held when it began. With ``limit``
        one call checks at most that many and the sweep goes on at the next
        call (``sweeping``), so that a table of a million flows never holds the
        packet loop for a whole scan; a flow added meanwhile waits for the next
        sweep.

        Args:
            now: Current time in seconds.
            limit: Flows checked by this call at most (None: the whole sweep).

        Returns:
            The keys removed.
        """
        self._drop_stale_tombstones(now)
        if self._sweep is None:
            self._sweep, self._sweep_next = list(self._flows), 0
        sweep, start = self._sweep, self._sweep_next
        stop = len(sweep) if limit is None else min(len(sweep), start + max(1, limit))
        expired = []
        flows, tcp_timeouts = self._flows, self._tcp_timeouts
        for index in range(start, stop):
            key = sweep[index]
            entry = flows.get(key)
            if entry is None:  # removed since the sweep began
                continue
            if entry.is_tcp:
                timeout = tcp_timeouts[entry.state]
            else:
                timeout = self._other_timeout_table(key.proto)[entry.state]
            if now - entry.last_seen > timeout:
                expired.append(key)
        if stop >= len(sweep):
            self._sweep = None
        else:
            self._sweep_next = stop
        until = now + self.config.tombstone_ttl_s
        tombstones = self._tombstones
        for key in expired:
            entry = flows.pop(key)
            self._keys_by_id.pop(key.flow_id, None)
            self._changed.pop(key, None)
            versioned_here = bool(entry.primary_packets or entry.dropped_packets) and entry.version > 0
            version = entry.version + 1 if versioned_here else entry.version
            tombstones.pop(key, None)
            tombstones[key] = _Tombstone(version, until, versioned_here)
        self.flows_expired += len(expired)
        self._bound_tombstones()
        return expired

    @property
    def sweeping(self) -> bool:
        """Whether an expiry sweep begun with a ``limit`` has flows left to check."""
        return self._sweep is not None

    def _drop_stale_tombstones(self, now: float) -> None:
        """Forget the tombstones whose lifetime ended: the oldest first, so O(tombstones dropped)."""
        tombstones = self._tombstones
        while tombstones:
            key = next(iter(tombstones))
            if tombstones[key].until > now:
                return
            del tombstones[key]

    def _bound_tombstones(self) -> None:
        """Forget the oldest tombstones beyond ``max_tombstones`` (counted)."""
        tombstones, limit = self._tombstones, self.config.max_tombstones
        while len(tombstones) > limit:
            del tombstones[next(iter(tombstones))]
            self.tombstones_evicted += 1

    def removal_version(self, key: FlowKey) -> Optional[int]:
        """The version of ``key``'s removal record if this cell, as its primary, removed it; else None."""
        tombstone = self._tombstones.get(key)
        if tombstone is None or not tombstone.removed_here or key in self._flows:
            return None
        return tombstone.version

    def idle_timeout(self, entry: ConnEntry) -> float:
        """Seconds of silence after which ``entry`` expires in its current state (``Timeouts``)."""
        if entry.is_tcp:
            return self._tcp_timeouts[entry.state]
        return self._other_timeout_table(entry.key.proto)[entry.state]

    def removal(self, key: FlowKey, wire: bool = False) -> Optional[dict]:
        """``key``'s removal record if this cell, as its primary, removed it (``removal_version``).

        Args:
            key: The flow.
            wire: The replicated form (``wire_removal_record``: no key text).
        """
        version = self.removal_version(key)
        if version is None:
            return None
        return wire_removal_record(key, version) if wire else removal_record(key, version)

    def _other_timeout_table(self, proto: int) -> Dict[ConnState, float]:
        table = self._other_timeouts.get(proto)
        if table is None:
            table = self._other_timeouts[proto] = self.config.timeouts.other_table(proto)
        return table

    def set_verdict(self, key: FlowKey, verdict: FlowVerdict) -> bool:
        """Change a flow's verdict (a policy decision mirrors cannot see in packets).

        Args:
            key: The flow.
            verdict: Its new verdict.

        Returns:
            True if the flow exists (its version grows if the verdict changed).
        """
        entry = self._flows.get(key)
        if entry is None:
            return False
        if entry.verdict is not verdict:
            entry.verdict = verdict
            self._bump(entry)
        return True

    def note_progress(self, key: FlowKey) -> bool:
        """The flow's primary sends a progress record of it (``state`` mode): one version more.

        Sequence positions, windows and counters move with every packet
        without a version; a record of them needs one so that a mirror takes
        it over older ones. The caller routes the record (it is not reported
        by ``take_changes``).

        Returns:
            True if the flow exists.
        """
        entry = self._flows.get(key)
        if entry is None:
            return False
        entry.version += 1
        entry.versioned_facts = entry.facts
        return True

    def take_changes(self) -> List[FlowKey]:
        """Keys of the flows whose version grew since the last call (oldest first)."""
        changed = [key for key in self._changed if key in self._flows]
        self._changed.clear()
        return changed

    # -- access --------------------------------------------------------------------------
    def get(self, key: FlowKey) -> Optional[ConnEntry]:
        """The entry of ``key``, or None."""
        return self._flows.get(key)

    def key_of(self, flow_id: int) -> Optional[FlowKey]:
        """The key of the tracked flow ``flow_id``, or None."""
        return self._keys_by_id.get(flow_id)

    def __len__(self) -> int:
        return len(self._flows)

    def __contains__(self, key: object) -> bool:
        return key in self._flows

    def __iter__(self) -> Iterator[ConnEntry]:
        return iter(list(self._flows.values()))

    def counters(self) -> Dict[str, int]:
        """Table-wide counters as a flat dict (``dropped_no_state`` ...)."""
        counters = {
            "flows_tracked": len(self._flows),
            "tombstones": len(self._tombstones),
            "tombstones_evicted": self.tombstones_evicted,
            "flows_created": self.flows_created,
            "flows_expired": self.flows_expired,
            "flows_reopened": self.flows_reopened,
            "flows_taken_over": self.flows_taken_over,
            "flows_reanchored": self.flows_reanchored,
            "records_applied": self.records_applied,
            "records_ignored": self.records_ignored,
            "dropped": sum(self.dropped.values()),
            "mirror_rejected": sum(self.mirror_rejected.values()),
        }
        for reason in DROP_REASONS:
            counters[f"dropped_{reason}"] = self.dropped[reason]
            counters[f"mirror_rejected_{reason}"] = self.mirror_rejected[reason]
        return counters

    # -- replication -----------------------------------------------------------------------
    def snapshot(self, keys: Optional[Iterable[FlowKey]] = None) -> List[dict]:
        """Plain, JSON-able records of flows (see ``prism.cell.records``).

        Args:
            keys: Only these flows (unknown keys are skipped); default all.

        Returns:
            One record per flow.
        """
        if keys is None:
            return [entry_to_record(entry) for entry in self._flows.values()]
        flows = self._flows
        return [entry_to_record(flows[key]) for key in keys if key in flows]

    def merge(self, records: Iterable[Mapping], now: float = 0.0) -> int:
        """Apply records from another cell: a higher version wins, a repeat changes nothing.

        Records are all validated before any is applied. Merged state does not
        count as a local change (``take_changes``) and leaves this cell's
        packet counters alone. A removal record (``removal_record``) with a
        higher version removes the flow and leaves a tombstone; a record at
        or below a tombstone is ignored.

        Args:
            records: Records as made by ``snapshot`` or ``removal`` (possibly via JSON).
            now: Current time in seconds (for the tombstones' lifetime).

        Returns:
            How many records changed the table.

        Raises:
            StateRecordError: a record is malformed (nothing was applied).
        """
        incoming: List[Tuple[FlowKey, int, Optional[ConnEntry]]] = []
        for index, record in enumerate(records):
            if is_removal(record):
                key, version = record_to_removal(record, index)
                incoming.append((key, version, None))
            else:
                entry = record_to_entry(record, index)
                incoming.append((entry.key, entry.version, entry))
        applied = 0
        tombstones = self._tombstones
        for key, version, entry in incoming:
            local = self._flows.get(key)
            tombstone = tombstones.get(key) if tombstones else None
            if tombstone is not None and version <= tombstone.version or (
                local is not None and not _wins(version, entry, local)
            ):
                self.records_ignored += 1
                continue
            if entry is None:  # a removal
                if local is not None:
                    del self._flows[key]
                    self._keys_by_id.pop(key.flow_id, None)
                    self._changed.pop(key, None)
                tombstones.pop(key, None)  # stored again at the end: insertion order stays expiry order
                tombstones[key] = _Tombstone(version, now + self.config.tombstone_ttl_s, False)
                if len(tombstones) > self.config.max_tombstones:
                    self._bound_tombstones()
            elif local is not None:
                merge_entry(local, entry)
            elif len(self._flows) >= self._max_flows:
                self.records_ignored += 1
                continue
            else:
                if tombstone is not None:
                    del tombstones[key]
                self._flows[key] = entry
                self._keys_by_id[key.flow_id] = key
            applied += 1
        self.records_applied += applied
        return applied

    def restore(self, records: Iterable[Mapping]) -> int:
        """Replace the whole table by ``records`` (validated first); returns the flows restored."""
        incoming = [record_to_entry(record, index) for index, record in enumerate(records)]
        self._flows.clear()
        self._keys_by_id.clear()
        self._changed.clear()
        self._tombstones.clear()
        self._sweep = None
        for entry in incoming:
            local = self._flows.get(entry.key)
            if local is None:
                self._flows[entry.key] = entry
                self._keys_by_id[entry.key.flow_id] = entry.key
            elif entry.version > local.version:
                merge_entry(local, entry)
        return len(self._flows)


def _wins(version: int, incoming: Optional[ConnEntry], local: ConnEntry) -> bool:
    """Whether a record (``incoming`` None: a removal) at ``version`` replaces the local entry.

    A higher version wins. At an equal version a removal wins, and of two
    entries the higher ``decision_digest`` (an identical decision is a
    repeat, and changes nothing): every cell orders them alike, so no two
    cells keep different states under one version.
    """
    if version != local.version:
        return version > local.version
    if version == 0:  # nobody's decision yet: mirror copies' views, never replaced by another's
        return False
    if incoming is None:
        return True
    return decision_digest(incoming) > decision_digest(local)
