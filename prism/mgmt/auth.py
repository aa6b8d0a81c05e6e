"""Authenticated management datagrams: an HMAC-SHA256 envelope under a per-deployment key, replay windows per sender.

Every management datagram (``prism.mgmt.protocol.encode``'s bytes, the *body*) travels
inside an envelope::

    "PA" | version (1 byte) | sender length n (1 byte) | sender (n bytes, ASCII)
         | counter (8 bytes, big-endian) | body | tag (32 bytes)

The tag is HMAC-SHA256, under the deployment's key, over every byte before
it. The sender is a cell id, or ``CONTROLLER_SENDER`` for the controller (a
name no cell id can take). The counter is the sender's clock in microseconds
when it sealed the datagram, made strictly increasing per sender
(``Sealer``): a restarted sender goes on above its previous counters without
storing anything, and a receiver that restarted refuses what was recorded
before its window (``max_age_s``).

``Verifier.open`` checks, cheapest first, and decompresses nothing: the
size, the header, the tag (constant time), then the counter (not older than
``max_age_s`` behind the receiver's clock nor ``max_skew_s`` ahead of it,
and never seen before from that sender). Only a datagram that passes all
four is handed to ``prism.mgmt.protocol.decode``, whose decompression is capped.
A refusal raises ``AuthRefused`` with a reason; ``AuthCounters`` counts
them by reason.

A shared key authenticates membership of the deployment, not a sender's
identity: any holder of the key can claim any sender id. Receivers check
the claim further where it matters (the address the controller expects a
cell at; a cell takes control messages only from ``CONTROLLER_SENDER``,
state only from live peers of the flow's profile).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import struct
from collections import Counter
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

from prism.mgmt import protocol as mgmt

#: Environment variable holding the management key when nothing else names its source.
DEFAULT_MGMT_KEY_ENV = "PRISM_MGMT_KEY"

MAGIC = b"PA"
VERSION = 1
_HEAD = struct.Struct("!2sBB")
_COUNTER = struct.Struct("!Q")
TAG_BYTES = hashlib.sha256().digest_size
#: The controller's sender id; a cell id starts with a letter or digit, never '@'.
CONTROLLER_SENDER = "@controller"
MAX_SENDER_BYTES = 64
#: Envelope bytes around the body at most.
MAX_OVERHEAD = _HEAD.size + MAX_SENDER_BYTES + _COUNTER.size + TAG_BYTES
#: Largest envelope accepted: the largest body a sender makes, plus the envelope.
MAX_SEALED_BYTES = mgmt.MAX_DATAGRAM + MAX_OVERHEAD
#: Shortest key accepted (characters of the key text; e.g. 64 hex digits from ``new_key_text``).
MIN_KEY_CHARS = 32
MAX_KEY_FILE_CHARS = 4096
MICROSECONDS = 1_000_000
#: Counters this far behind the newest one seen from a sender are refused (reordering tolerated).
DEFAULT_REPLAY_WINDOW_S = 2.0
#: Counters older than this behind the receiver's clock are refused (a recording replayed after a restart).
DEFAULT_MAX_AGE_S = 30.0
#: Counters further ahead of the receiver's clock than this are refused.
DEFAULT_MAX_SKEW_S = 30.0
#: Counters remembered per sender inside its window at most (the window shrinks beyond).
MAX_REMEMBERED = 8192
#: Senders with a replay window at most (only key holders create one).
MAX_SENDERS = 4096

REFUSAL_REASONS = ("oversized", "malformed", "bad_tag", "replayed", "stale", "undecodable", "wrong_sender")


class MgmtKeyError(ValueError):
    """The management key is missing, unreadable or too short; the message says where it was looked for."""


class AuthRefused(Exception):
    """A datagram refused by ``Verifier.open``; ``reason`` is one of ``REFUSAL_REASONS``."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def key_bytes(text: str, where: str) -> bytes:
    """The HMAC key from its text form (surrounding whitespace ignored).

    Raises:
        MgmtKeyError: shorter than ``MIN_KEY_CHARS``.
    """
    key = text.strip()
    if len(key) < MIN_KEY_CHARS:
        raise MgmtKeyError(f"the management key in {where} has {len(key)} characters; it needs at least "
                           f"{MIN_KEY_CHARS} (make one with `python -c 'import secrets; "
                           f"print(secrets.token_hex(32))'`)")  # fmt: skip
    return key.encode("utf-8")


def read_key_file(path: str) -> bytes:
    """The key held in the file ``path``.

    Raises:
        MgmtKeyError: it cannot be read, or the key is too short.
    """
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read(MAX_KEY_FILE_CHARS + 1)
    except (OSError, UnicodeDecodeError) as error:
        raise MgmtKeyError(f"the management key file {path} cannot be read: "
                           f"{getattr(error, 'strerror', None) or error}") from None  # fmt: skip
    if len(text) > MAX_KEY_FILE_CHARS:
        raise MgmtKeyError(f"the management key file {path} is longer than {MAX_KEY_FILE_CHARS} characters")
    return key_bytes(text, path)


def new_key_text() -> str:
    """A fresh random key in text form (64 hex digits), for a key file."""
    return secrets.token_hex(32)


class Sealer:
    """Seals one sender's datagrams: strictly increasing counters from its clock.

    Args:
        key: The deployment's key (``key_bytes``).
        sender: This sender's id (a cell id, or ``CONTROLLER_SENDER``).
    """

    def __init__(self, key: bytes, sender: str) -> None:
        encoded = sender.encode("ascii")
        if not 0 < len(encoded) <= MAX_SENDER_BYTES:
            raise ValueError(f"sender id {sender!r} must be 1-{MAX_SENDER_BYTES} ASCII characters")
        self.sender = sender
        self._prefix = _HEAD.pack(MAGIC, VERSION, len(encoded)) + encoded
        self._key = key
        self._last = 0

    def seal(self, body: bytes, now: float) -> bytes:
        """``body`` in an envelope with the next counter (at least ``now`` in microseconds)."""
        counter = max(self._last + 1, int(now * MICROSECONDS))
        self._last = counter
        signed = self._prefix + _COUNTER.pack(counter) + body
        return signed + hmac.new(self._key, signed, hashlib.sha256).digest()


class _Window:
    """Counters seen from one sender inside its replay window."""

    __slots__ = ("highest", "floor", "seen")

    def __init__(self) -> None:
        self.highest = 0
        self.floor = 0  # counters at or below are refused
        self.seen: set = set()

    def accept(self, counter: int, window: int) -> bool:
        if counter <= self.floor or counter <= self.highest - window or counter in self.seen:
            return False
        self.seen.add(counter)
        if counter > self.highest:
            self.highest = counter
        if len(self.seen) > 2 * MAX_REMEMBERED:
            kept = sorted(c for c in self.seen if c > self.highest - window)[-MAX_REMEMBERED:]
            self.seen = set(kept)
            if kept:
                self.floor = max(self.floor, kept[0] - 1)
        return True


@dataclass(frozen=True)
class Opened:
    """An authenticated datagram: who sealed it, and the body (a ``prism.mgmt.protocol`` datagram)."""

    sender: str
    body: bytes


class Verifier:
    """Opens envelopes: size, header, tag, then counter (fresh and never seen from that sender).

    Args:
        key: The deployment's key.
        replay_window_s: How far behind a sender's newest counter a datagram may still come (reordering).
        max_age_s: How far behind the receiver's clock a counter may be.
        max_skew_s: How far ahead of the receiver's clock a counter may be.
    """

    def __init__(self, key: bytes, replay_window_s: float = DEFAULT_REPLAY_WINDOW_S,
                 max_age_s: float = DEFAULT_MAX_AGE_S, max_skew_s: float = DEFAULT_MAX_SKEW_S) -> None:  # fmt: skip
        self._key = key
        self._window = int(replay_window_s * MICROSECONDS)
        self._max_age = int(max_age_s * MICROSECONDS)
        self._max_skew = int(max_skew_s * MICROSECONDS)
        self._senders: Dict[str, _Window] = {}

    def open(self, datagram: bytes, now: float) -> Opened:
        """The sender and body of an authentic, fresh, first-seen datagram.

        Raises:
            AuthRefused: anything else (nothing was decompressed or parsed).
        """
        size = len(datagram)
        if size > MAX_SEALED_BYTES:
            raise AuthRefused("oversized", f"{size} bytes")
        if size < _HEAD.size + 1 + _COUNTER.size + TAG_BYTES:
            raise AuthRefused("malformed", "too short")
        magic, version, sender_len = _HEAD.unpack_from(datagram)
        body_at = _HEAD.size + sender_len + _COUNTER.size
        if magic != MAGIC or version != VERSION or not 0 < sender_len <= MAX_SENDER_BYTES \
                or size < body_at + TAG_BYTES:
            raise AuthRefused("malformed", "bad header")
        signed, tag = datagram[:-TAG_BYTES], datagram[-TAG_BYTES:]
        if not hmac.compare_digest(hmac.new(self._key, signed, hashlib.sha256).digest(), tag):
            raise AuthRefused("bad_tag")
        try:
            sender = datagram[_HEAD.size:_HEAD.size + sender_len].decode("ascii")
        except UnicodeDecodeError:
            raise AuthRefused("malformed", "sender id not ASCII") from None
        (counter,) = _COUNTER.unpack_from(datagram, _HEAD.size + sender_len)
        now_us = int(now * MICROSECONDS)
        if counter < now_us - self._max_age or counter > now_us + self._max_skew:
            raise AuthRefused("stale", f"counter {counter} vs clock {now_us}")
        window = self._senders.get(sender)
        if window is None:
            if len(self._senders) >= MAX_SENDERS:
                self._forget_oldest()
            window = self._senders[sender] = _Window()
        if not window.accept(counter, self._window):
            raise AuthRefused("replayed", f"counter {counter} from {sender}")
        return Opened(sender, datagram[body_at:-TAG_BYTES])

    def _forget_oldest(self) -> None:
        oldest = min(self._senders, key=lambda name: self._senders[name].highest)
        del self._senders[oldest]


class AuthCounters:
    """Refused datagrams by reason (``REFUSAL_REASONS``) and accepted ones."""

    def __init__(self) -> None:
        self.refused: Counter = Counter()
        self.accepted = 0

    def refuse(self, reason: str) -> None:
        """Count one refusal."""
        self.refused[reason] += 1

    def as_dict(self) -> Dict[str, int]:
        """``{"refused_<reason>": n, ..., "refused": total, "accepted": n}`` (every reason present)."""
        counts = {f"refused_{reason}": self.refused[reason] for reason in REFUSAL_REASONS}
        counts["refused"] = sum(self.refused.values())
        counts["accepted"] = self.accepted
        return counts


class MgmtAuth:
    """One endpoint's sealing and opening, with its counters: what a cell or the controller holds.

    Args:
        key: The deployment's key.
        sender: This endpoint's sender id.
        verifier: Opens incoming envelopes (default: a ``Verifier`` on ``key``).
    """

    def __init__(self, key: bytes, sender: str, verifier: Optional[Verifier] = None) -> None:
        self.sealer = Sealer(key, sender)
        self.verifier = verifier or Verifier(key)
        self.counters = AuthCounters()

    @property
    def sender(self) -> str:
        """This endpoint's sender id."""
        return self.sealer.sender

    def seal(self, body: bytes, now: float) -> bytes:
        """``Sealer.seal``."""
        return self.sealer.seal(body, now)

    def open(self, datagram: bytes, now: float) -> Optional[Tuple[str, dict]]:
        """The sender and decoded message of an authentic datagram; None (counted by reason) otherwise."""
        try:
            opened = self.verifier.open(datagram, now)
        except AuthRefused as refusal:
            self.counters.refuse(refusal.reason)
            return None
        message = mgmt.decode(opened.body)
        if message is None:
            self.counters.refuse("undecodable")
            return None
        claimed = message.get("cell")
        if claimed is not None and claimed != opened.sender:
            self.counters.refuse("wrong_sender")
            return None
        self.counters.accepted += 1
        return opened.sender, message
