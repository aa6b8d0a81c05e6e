"""The management protocol between the controller and the cells, and between cells.

PRISM keeps control and replication traffic off the data path: every cell has
a second interface on a management network (in Mininet, a Linux bridge in the
root namespace that the controller also sits on). Messages are UDP datagrams:
one JSON object, zlib-compressed, behind a 4-byte header (magic + version),
sealed in an authenticated envelope (``prism.mgmt.auth``: HMAC-SHA256 under
the deployment's key, a replay counter per sender) that is checked before
anything here runs. ``decode`` never raises on garbage: it returns None and
the caller counts it. It inflates at most ``MAX_MESSAGE_BYTES`` (``encode``
refuses to make a bigger message), refuses bytes after the compressed stream,
NaN and infinities, and integers of more than 64 bits.

Message types (field ``type``); ``cell`` is always the sender's cell id
(messages from the controller carry none):

- ``heartbeat`` cell -> controller, every HEARTBEAT_INTERVAL_S:
  ``{cell, seq, flows, primary_pps, mirror_pps, replication: {...counters}, unassigned}``;
  ``seq`` starts at 1 with every process; ``unassigned`` lists (at most 32)
  flow ids whose changes the cell holds because their ``assign`` (or their
  profile, or the cell's first ``directory``) has not arrived (``assign`` is
  not acknowledged: answer with their ``assign``).
  The controller takes a ``seq`` back at 1, or more than 2 below the last,
  for a restarted process (a failure even without a missed heartbeat), and
  accepts a cell's messages only from the cell's configured management IP.
- ``directory`` controller -> every cell, on start, on every change and every 5 s,
  and to a cell at the first heartbeat the controller gets from it (a cell
  started after the last one must not wait for the next):
  ``{epoch, cells: {cell_id: [mgmt_ip, mgmt_port]}, live: [cell_id, ...],
  milestones_s: [age_s, ...], state_interval_s, takeover_tolerance_bytes}``.
  Until its first directory a cell knows no live peer: it holds its flows'
  changes (an empty ``live`` then means "not told", not "nobody is live").
  The last three fields are optional: ``milestones_s`` (default ``[]``: no
  ``milestone`` reports) are the ages at which primaries report their flows;
  ``state_interval_s`` (default DEFAULT_STATE_INTERVAL_S) is how often a
  primary looks at each of its ``state`` flows for a progress record due
  (see "Mirroring modes" below: not a record every interval);
  ``takeover_tolerance_bytes`` (default DEFAULT_TAKEOVER_TOLERANCE_BYTES) is
  how far beyond the replicated window a cell that takes a ``state`` flow
  over accepts its packets (configuration: ``management.state_interval_s``,
  ``management.takeover_tolerance_bytes``; ``prediction.milestones_s``).
- ``profiles`` controller -> the cells a change concerns:
  ``{epoch, profiles: {profile_id: [primary_cell, [mirror_cells...]]}}``
  (profile_id is the profile's ALL group id, a decimal string as a JSON key;
  a profile missing from a later full message is gone). ``full`` true means
  "this is the whole table"; every cell gets its whole table every 5 s.
  A cell ignores a partial ``profiles`` with an epoch below the last it
  applied (a reordered datagram); a full table and a ``directory`` always
  apply (the controller may have restarted with lower epochs). Both carry
  the controller's ``generation`` (``prism.mgmt.generation``, bumped at every
  start): a cell refuses those of a lower generation than it applied (a
  replaced controller is fenced), and within one a full table with a stale
  epoch too.
- ``assign`` controller -> the cells of a profile:
  ``{flows: [[flow_id, profile_id, key_text, mode], ...]}`` batched per tick;
  tells a cell which profile a flow of its belongs to and its mirroring mode
  (optional 4th element, ``"full"`` (default) or ``"state"``, see below; a
  later ``assign`` may change either).
  Also sent, with every flow of the profile, to a cell that a failover or
  drain adds to a profile (so that it can seed others later), and again for
  the flow ids a heartbeat lists as ``unassigned``.
- ``seed`` controller -> a profile's (new) primary: ``{profile_id, target}``
  or ``{profile_id, target, flows: [flow_id, ...]}``: send a snapshot of every
  flow of that profile (or only of the listed flows: a per-flow promotion) to
  ``target``; when the target has acknowledged it, the primary sends
  ``seeded`` to the controller (which repeats an unanswered ``seed`` every
  second). A repeated ``seed`` (same profile, target and flow list) is
  ignored while that seed runs, answered with ``seeded`` again within 10 s of
  its end, and starts a new snapshot after that. A seed whose target leaves
  the directory's live cells is abandoned (counted). Listed flows this cell
  does not hold are not sent (``count`` says how many were).
- ``seeded`` cell -> controller: ``{cell, profile_id, target, flows}`` where
  ``flows`` is the number of flows sent for a whole-profile seed, or, for a
  per-flow seed, the request's ``flows`` list echoed as it came, with
  ``count`` the number of those flows sent.
- ``milestone`` cell -> controller:
  ``{cell, flows: [[flow_id, age_s, packets, bytes, idle_s, closing], ...]}``:
  a flow's primary (the cell forwarding its packets) reports each flow whose
  age (time since its first packet) crossed one of the directory's
  ``milestones_s``: at most once per flow and milestone per cell, batched per
  tick (at most MAX_MILESTONES_PER_MESSAGE flows per message), ``age_s`` the
  milestone crossed, ``packets``/``bytes`` the flow's frames in both
  directions up to the tick that noticed it (at most one tick late), as its
  primaries counted them (replicated counters included after a takeover).
  What only the primary knows comes after: ``idle_s`` the seconds since the
  flow's last packet at that tick (ms resolution; a flow the cell still
  tracks may have ended: cells report every flow they hold), ``closing``
  true once a FIN or RST of the connection was seen (TCP only; the
  connection is closing or closed). A receiver reads the first four elements
  and takes the later ones if present (senders before them sent four; a
  future sender may append more, which a receiver ignores).
  A cell that takes a flow over reports only milestones still ahead of it.
- ``state`` cell -> cell: ``{seq, records: [record, ...]}`` where a record is a
  ConnTracker snapshot record (``prism.cell.records``, schema 2) without its
  reader-only fields (key text, state name, role, the writer's counters), or
  a removal record ``{..key fields.., removed: true, version}`` sent by a
  flow's primary when the flow expires. A later per-flow version wins, a
  repeat is harmless. ``ack`` cell -> cell: ``{seq}``, to the datagram's
  source address. ``seq`` is per sending cell and peer, from a random start
  per process. Unacknowledged ``state`` messages are retried with backoff; a
  batch that exhausts its retries is counted as lost and its flows are sent
  again in full. State datagrams are kept under 1400 bytes (one frame: a lost
  IP fragment would lose the whole datagram). Records carry ``packets`` and
  ``bytes``: the flow's frames in both directions as its primaries counted
  them (a receiver keeps the larger count).

Mirroring modes. A ``full`` flow's mirrors receive a copy of every packet and
rebuild sequence positions and counters from them; its primary sends a record
only when the flow's version grows (handshake and token, teardown, verdict,
removal). A ``state`` flow's mirrors receive copies of its TCP SYN, FIN and
RST packets only (other protocols: the first packet), so its primary also
sends *progress records* (a new version; sequence positions and windows per
direction, counters, last_seen, token, verdict; queued for the profile's
other live cells, batched and acknowledged like any record), only when the
mirrors need one (``prism.cell.smm``):
- the flow's frames grew by more than half (PROGRESS_TOLERANCE_SHARE) the
  ``takeover_tolerance_bytes`` since its last record: sent at the next tick,
  so that a cell taking it over finds its next packets within reach;
- the flow sent anything since its last record and half
  (PROGRESS_REFRESH_SHARE) of its idle timeout in its state (the tracker's
  ``Timeouts``: 1800 s for an established TCP connection, 90 s for a UDP
  flow with replies, 15 s without) has passed since the last_seen its
  mirrors hold: a mirror expires the flow by its own timers, so it learns
  in time that the flow lives on.
Every ``state_interval_s`` the primary looks at each ``state`` flow for the
second rule (and rebinds it to its current entry); the first is checked every
tick. A flow's changes (handshake, teardown, verdict) still go as change
records at once. A ``state`` flow that expires at its primary gets no
removal record: its mirrors hold its facts (change records, the SYN/FIN/RST
copies) and a last_seen never later than the primary's (the records' and
their copies'), so their own timers (the same ``Timeouts``) expire it no
later than the primary did: after a FIN or RST by the closing states'
short timeouts, after silence by the idle timeout (at most half an idle
timeout earlier than the primary, the lag of the last record's last_seen).
A new connection on the key reopens it from its SYN copy, or starts above
the mirror's own tombstone. This needs the cells' clocks to agree (one
host, or synchronised) and the same tracker ``Timeouts`` in every cell. A
later version wins; a repeated record, or a mirror copy of a SYN/FIN/RST already folded
into a record, changes nothing.

Takeover of a ``state`` flow. A cell that receives the first unmarked
(primary) copies of a flow it holds from records or mirror copies checks the
first packet of each direction against what it holds: the sequence number
must lie between the replicated highest sequence sent minus the usual
retransmission slack (the larger of the peer's window and 66,000 bytes) and
the replicated highest sequence allowed by the peer plus
``takeover_tolerance_bytes``; an acknowledgement must lie within the same
bounds around the other direction's sequence. A packet in that range
re-anchors the direction (its positions become the cell's) and the flow goes
on as usual; one outside it is dropped (``out_of_window``, the flow is not
re-anchored, though the cell now versions it as its primary). A SYN is
judged as a new connection's. Mirror copies never re-anchor: in loose mode
they are folded in unchecked (as any mirror copy), in strict mode they are
checked against the same bounds. A flow the cell never held is not taken over at all: a
mid-connection TCP packet without state is dropped (``no_state``). What a
takeover may lose, its mirror's copy being at most half the tolerance (in
frames) and half an idle timeout (in time) behind the primary: the counters
(packets, bytes) and last_seen of the frames since the last record that
reached the mirror (for a slow flow, up to half its idle timeout: 30 minutes
of an established TCP connection's counters; what the controller learns from
later ``milestone`` reports of the taking cell is low by as much); a window
advertisement since then (the re-anchoring packet brings the current one);
the FIN acknowledgements (pure ACKs are not copied) if the teardown began
after the last record, which the connection's next packets restore; and a
connection whose position moved more than the tolerance beyond the last
record (faster than half the tolerance per tick, or records lost) is refused
and must reconnect; a milestone the failed primary crossed but had not
reported yet (at most one tick) is not reported (the taking cell reports only
those still ahead). A ``state`` flow's mirror expires it by its own timers
(no removal record), up to half an idle timeout before its primary would
have: a connection silent that long and then taken over is dropped
(``no_state``) and must reconnect.
Token, verdict, facts from the handshake and any teardown flag the switch
copied are never lost.
- ``drain`` / ``restore`` controller -> cell: ``{target}``, informational, the cell logs them.

A cell with a configured controller accepts ``directory``, ``profiles``,
``assign``, ``seed``, ``drain`` and ``restore`` only from the controller's IP
address (any source port) and sealed by ``CONTROLLER_SENDER``; ``state`` only
from a live peer, and of its records only those of flows whose profile names
the sender (or whose assignment has not arrived); ``ack`` only for the
sealer's own channel. Every message naming a ``cell`` must be sealed by it.
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from typing import Any, Dict, Optional

MAGIC = b"PR"
VERSION = 1
_HEADER = struct.Struct("!2sBx")

#: Well-known UDP ports on the management network.
CONTROLLER_MGMT_PORT = 7600
CELL_MGMT_PORT = 7700

HEARTBEAT_INTERVAL_S = 0.1
#: How often a primary looks at each of its ``state`` flows for a progress record
#: its mirrors' timers need (``directory.state_interval_s``; configuration
#: ``management.state_interval_s``; records themselves go only when due, see above).
DEFAULT_STATE_INTERVAL_S = 1.0
#: How far (bytes of sequence space) beyond the replicated window a cell taking
#: over a ``state`` flow accepts its packets (``directory.takeover_tolerance_bytes``;
#: configuration ``management.takeover_tolerance_bytes``). 16 MiB covers a
#: flow of about 1.3 Gbit/s for the 0.1 s tick in which its next early record
#: waits; a forged segment of a flow the cell holds still passes only with a
#: chance of about 2**24 / 2**32 per number checked.
DEFAULT_TAKEOVER_TOLERANCE_BYTES = 16 * 1024 * 1024
#: Mirroring modes of ``assign`` (the same strings as ``prism.placement.profiles``).
MODE_FULL = "full"
MODE_STATE = "state"
ASSIGN_MODES = (MODE_FULL, MODE_STATE)
#: Flows per ``milestone`` message at most (the rest go in further messages).
MAX_MILESTONES_PER_MESSAGE = 500
#: Largest datagram we send; state batches are split below this.
MAX_DATAGRAM = 60_000
#: A decompressed message larger than this is refused (no zip bombs), and
#: ``encode`` makes none: a full ``profiles`` table or an ``assign`` of a
#: MAX_DATAGRAM compresses about 4-8 times, far below it.
MAX_MESSAGE_BYTES = 1024 * 1024
#: Integers in a message are below this in magnitude (64-bit counters at most).
MAX_INTEGER = 1 << 64

MESSAGE_TYPES = frozenset(
    {"heartbeat", "directory", "profiles", "assign", "seed", "seeded", "state", "ack",
     "drain", "restore", "milestone"}
)


class MessageTooBig(ValueError):
    """A message whose JSON exceeds ``MAX_MESSAGE_BYTES``: no receiver would inflate it."""


def encode(message: Dict[str, Any]) -> bytes:
    """One message as a datagram. ``message['type']`` must be a known type.

    Raises:
        ValueError: an unknown type, or a NaN or infinite number.
        MessageTooBig: its JSON is longer than ``MAX_MESSAGE_BYTES``.
    """
    if message.get("type") not in MESSAGE_TYPES:
        raise ValueError(f"unknown management message type {message.get('type')!r}")
    text = json.dumps(message, separators=(",", ":"), allow_nan=False).encode()
    if len(text) > MAX_MESSAGE_BYTES:
        raise MessageTooBig(f"{message['type']} message of {len(text)} bytes (at most {MAX_MESSAGE_BYTES})")
    return _HEADER.pack(MAGIC, VERSION) + zlib.compress(text, 1)


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number a message may carry")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is not finite")
    return value


def _bounded_int(text: str) -> int:
    if len(text) > 21:  # cheaper than converting first: 2**64 has 20 digits
        raise ValueError("integer too large")
    value = int(text)
    if abs(value) >= MAX_INTEGER:
        raise ValueError("integer too large")
    return value


def decode(datagram: bytes) -> Optional[Dict[str, Any]]:
    """The message in ``datagram``, or None if it is not a valid PRISM message."""
    if len(datagram) < _HEADER.size:
        return None
    magic, version = _HEADER.unpack_from(datagram)
    if magic != MAGIC or version != VERSION:
        return None
    try:
        inflater = zlib.decompressobj()
        text = inflater.decompress(datagram[_HEADER.size:], MAX_MESSAGE_BYTES)
        if inflater.unconsumed_tail or not inflater.eof or inflater.unused_data:
            return None  # bigger than any real message, truncated, or trailing bytes
        message = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float,
                             parse_int=_bounded_int)  # fmt: skip
    except (zlib.error, ValueError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str) \
            or message["type"] not in MESSAGE_TYPES:
        return None
    return message
