"""The management protocol between the controller and the cells, and between cells.

PRISM keeps control and replication traffic off the data path: every cell has
a second interface on a management network (in Mininet, a Linux bridge in the
root namespace that the controller also sits on). Messages are UDP datagrams:
one JSON object, zlib-compressed, behind a 4-byte header (magic + version),
sealed in an authenticated envelope (``prism.mgmt_auth``: HMAC-SHA256 under
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
  ``{epoch, cells: {cell_id: [mgmt_ip, mgmt_port]}, live: [cell_id, ...]}``.
  Until its first directory a cell knows no live peer: it holds its flows'
  changes (an empty ``live`` then means "not told", not "nobody is live").
- ``profiles`` controller -> the cells a change concerns:
  ``{epoch, profiles: {profile_id: [primary_cell, [mirror_cells...]]}}``
  (profile_id is the profile's ALL group id, a decimal string as a JSON key;
  a profile missing from a later full message is gone). ``full`` true means
  "this is the whole table"; every cell gets its whole table every 5 s.
  A cell ignores a partial ``profiles`` with an epoch below the last it
  applied (a reordered datagram); a full table and a ``directory`` always
  apply (the controller may have restarted with lower epochs). Both carry
  the controller's ``generation`` (``prism.generation``, bumped at every
  start): a cell refuses those of a lower generation than it applied (a
  replaced controller is fenced), and within one a full table with a stale
  epoch too.
- ``assign`` controller -> the cells of a profile: ``{flows: [[flow_id, profile_id, key_text], ...]}``
  batched per tick; tells a cell which profile a flow of its belongs to.
  Also sent, with every flow of the profile, to a cell that a failover or
  drain adds to a profile (so that it can seed others later), and again for
  the flow ids a heartbeat lists as ``unassigned``.
- ``seed`` controller -> a profile's (new) primary: ``{profile_id, target}``:
  send a snapshot of every flow of that profile to ``target``; when the target
  has acknowledged it, the primary sends ``seeded`` to the controller (which
  repeats an unanswered ``seed`` every second). A repeated ``seed`` is
  ignored while that seed runs, answered with ``seeded`` again within 10 s of
  its end, and starts a new snapshot after that. A seed whose target leaves
  the directory's live cells is abandoned (counted).
- ``seeded`` cell -> controller: ``{cell, profile_id, target, flows}``.
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
  IP fragment would lose the whole datagram).
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
     "drain", "restore"}
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
