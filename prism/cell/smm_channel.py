"""Reliable, batched delivery of flow records to one peer cell: sequence numbers, acks, retries with backoff, loss."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from prism.mgmt import protocol as mgmt
from prism.flows.identity import FlowKey

#: Datagram size the SMM aims at: one Ethernet frame (1500 bytes minus IP and
#: UDP headers, with room to spare). A bigger datagram is IP-fragmented, and
#: losing any fragment loses it all: at 10 % frame loss a 40-fragment datagram
#: would almost never arrive, however often it is retried.
DEFAULT_DATAGRAM_BYTES = 1400
DEFAULT_RETRY_INITIAL_S = 0.1  #: first retry after one tick (acks come back in milliseconds)
DEFAULT_RETRY_BACKOFF = 2.0
DEFAULT_RETRY_MAX_S = 1.0
DEFAULT_MAX_ATTEMPTS = 5  #: sends of one batch, the first one included (about 2.5 s in all)
DEFAULT_WINDOW = 128  #: unacknowledged batches per peer
#: First guess of compressed bytes per record (measured: 110-150 for a slim TCP record).
INITIAL_BYTES_PER_RECORD = 160.0
_SIZE_SMOOTHING = 0.2

Tag = Optional[int]
"""What a queued flow is sent for: None (a change) or the id of a seed operation."""

RecordsOf = Callable[[Sequence[FlowKey]], List[Tuple[FlowKey, Optional[dict]]]]
"""Builds the current record of each key (None: nothing left to send for it)."""


@dataclass(frozen=True)
class ChannelSettings:
    """How a channel batches and retries.

    Attributes:
        max_datagram: Target size of a state datagram in bytes (a single record
            that does not fit is still sent, up to ``mgmt.MAX_DATAGRAM``).
        retry_initial_s: Wait before the first retry.
        retry_backoff: Factor applied to the wait after each retry.
        retry_max_s: Longest wait between two sends of a batch.
        max_attempts: Sends of one batch before it counts as lost.
        window: Unacknowledged batches per peer; more changes wait in the queue.
    """

    max_datagram: int = DEFAULT_DATAGRAM_BYTES
    retry_initial_s: float = DEFAULT_RETRY_INITIAL_S
    retry_backoff: float = DEFAULT_RETRY_BACKOFF
    retry_max_s: float = DEFAULT_RETRY_MAX_S
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    window: int = DEFAULT_WINDOW

    def __post_init__(self) -> None:
        if not 200 <= self.max_datagram <= mgmt.MAX_DATAGRAM:
            raise ValueError(f"max_datagram must be 200..{mgmt.MAX_DATAGRAM}, not {self.max_datagram}")
        if self.retry_initial_s <= 0 or self.retry_max_s < self.retry_initial_s:
            raise ValueError("retry waits must satisfy 0 < retry_initial_s <= retry_max_s")
        if self.retry_backoff < 1:
            raise ValueError(f"retry_backoff must be >= 1, not {self.retry_backoff}")
        if self.max_attempts < 1 or self.window < 1:
            raise ValueError("max_attempts and window must be at least 1")

    def retry_wait(self, attempts: int) -> float:
        """Wait after the ``attempts``-th send of a batch."""
        return min(self.retry_max_s, self.retry_initial_s * self.retry_backoff ** (attempts - 1))


class ReplicationCounters:
    """What replication did, for heartbeats and the state document (plain ints)."""

    NAMES = (
        "replication_bytes_sent", "batches_sent", "acks", "retries", "lost_batches",
        "records_sent", "removals_sent", "records_resent", "records_applied", "snapshots_sent",
        "seeds_completed", "seeds_abandoned", "batches_received", "records_received",
        "records_ignored", "rejected_batches", "acks_sent", "unknown_acks", "abandoned_batches",
        "held_dropped", "bad_datagrams", "bad_messages", "foreign_messages", "stale_control",
        "send_errors", "records_refused", "stale_generation", "progress_records",
        "milestones_reported", "removals_skipped",
    )  # fmt: skip

    def __init__(self) -> None:
        for name in self.NAMES:
            setattr(self, name, 0)

    def as_dict(self) -> Dict[str, int]:
        """The counters by name."""
        return {name: getattr(self, name) for name in self.NAMES}


class Batch:
    """One ``state`` datagram in flight: its flows, their tags, and when to send it again."""

    __slots__ = ("seq", "keys", "tags", "datagram", "records", "attempts", "next_send")

    def __init__(self, seq: int, keys: Tuple[FlowKey, ...], tags: Tuple[Tag, ...],
                 datagram: bytes, records: int) -> None:  # fmt: skip
        self.seq = seq
        self.keys = keys
        self.tags = tags
        self.datagram = datagram
        self.records = records
        self.attempts = 0
        self.next_send = 0.0


@dataclass(frozen=True)
class FlushResult:
    """What one flush did: batches sent, and queued keys that had nothing left to send (with tags)."""

    batches: int
    records: int
    skipped: Tuple[Tuple[FlowKey, Tag], ...]


class PeerChannel:
    """Sends flow records to one peer: queued by key (latest state wins), batched, acknowledged.

    A key is queued, not a record: the record is built when the batch is
    made, so a flow that changed three times between two flushes is sent
    once, as it is then. A batch is sent again (same bytes, same ``seq``)
    until acknowledged, with backoff; after ``max_attempts`` sends it counts
    as lost and its flows go back into the queue, to be sent again in full
    as they are by then. Receivers merge by version, so a duplicate or a
    reordered batch is harmless.

    Args:
        cell_id: This cell's id (the ``cell`` field of every message).
        peer_id: The peer's cell id.
        settings: Batching and retry settings.
        counters: Shared counters.
        first_seq: Sequence number of the first batch (random per process, so
            that a late ack for a previous run's batch cannot match).
    """

    def __init__(self, cell_id: str, peer_id: str, settings: ChannelSettings,
                 counters: ReplicationCounters, first_seq: int) -> None:  # fmt: skip
        self.cell_id = cell_id
        self.peer_id = peer_id
        self.settings = settings
        self.counters = counters
        self.next_seq = first_seq
        self.queued: "OrderedDict[FlowKey, Tag]" = OrderedDict()
        self.in_flight: Dict[int, Batch] = {}
        self._bytes_per_record = INITIAL_BYTES_PER_RECORD

    def queue(self, key: FlowKey, tag: Tag = None) -> None:
        """Send ``key``'s state at the next flush (a seed's tag is kept until it is sent)."""
        if tag is None and self.queued.get(key) is not None:
            return
        self.queued[key] = tag

    def queue_many(self, items: Iterable[Tuple[FlowKey, Tag]]) -> None:
        """``queue`` for each ``(key, tag)``."""
        for key, tag in items:
            self.queue(key, tag)

    @property
    def idle(self) -> bool:
        """Nothing queued and nothing unacknowledged."""
        return not self.queued and not self.in_flight

    def flush(self, now: float, records_of: RecordsOf, send: Callable[[bytes], bool],
              budget: int) -> FlushResult:  # fmt: skip
        """Batch and send queued flows, while the window and ``budget`` (records) allow.

        Args:
            now: Current time in seconds.
            records_of: Builds the current records of keys.
            send: Sends one datagram to the peer; False if it could not be handed over.
            budget: Most records to take from the queue.

        Returns:
            What was sent and what was skipped.
        """
        batches = records = 0
        skipped: List[Tuple[FlowKey, Tag]] = []
        settings = self.settings
        while self.queued and budget > 0 and len(self.in_flight) < settings.window:
            per_batch = max(1, int(settings.max_datagram * 0.9 / self._bytes_per_record))
            take = min(budget, per_batch * (settings.window - len(self.in_flight)), len(self.queued))
            items = [self.queued.popitem(last=False) for _ in range(take)]
            budget -= take
            tags = dict(items)
            built = records_of([key for key, _ in items])
            ready = []
            for key, record in built:
                if record is None:
                    skipped.append((key, tags[key]))
                else:
                    ready.append((key, record))
            start = 0
            while start < len(ready):
                if len(self.in_flight) >= settings.window:  # give the rest back, in order
                    rest = OrderedDict((key, tags[key]) for key, _ in ready[start:])
                    rest.update(self.queued)
                    self.queued = rest
                    break
                per_batch = max(1, int(settings.max_datagram * 0.9 / self._bytes_per_record))
                sent = self._send_batch(now, ready[start:start + per_batch], tags, send)
                start += sent
                batches += 1
                records += sent
        return FlushResult(batches, records, tuple(skipped))

    def _send_batch(self, now: float, chunk: Sequence[Tuple[FlowKey, dict]],
                    tags: Mapping[FlowKey, Tag], send: Callable[[bytes], bool]) -> int:  # fmt: skip
        """Encode a prefix of ``chunk`` that fits, send it as one batch; returns its length."""
        count = len(chunk)
        while True:
            message = {"type": "state", "cell": self.cell_id, "seq": self.next_seq,
                       "records": [record for _, record in chunk[:count]]}  # fmt: skip
            datagram = mgmt.encode(message)
            if len(datagram) <= self.settings.max_datagram or count == 1:
                break
            count = max(1, count // 2)
        if len(datagram) > mgmt.MAX_DATAGRAM:  # one record is a few hundred bytes: a bug
            raise ValueError(f"a state record of {len(datagram)} bytes exceeds mgmt.MAX_DATAGRAM")
        self._bytes_per_record += _SIZE_SMOOTHING * (len(datagram) / count - self._bytes_per_record)
        keys = tuple(key for key, _ in chunk[:count])
        batch = Batch(self.next_seq, keys, tuple(tags[key] for key in keys), datagram, count)
        self.next_seq += 1
        self.in_flight[batch.seq] = batch
        counters = self.counters
        counters.batches_sent += 1
        counters.records_sent += count
        counters.removals_sent += sum(1 for _, record in chunk[:count] if record.get("removed"))
        self._transmit(now, batch, send)
        return count

    def _transmit(self, now: float, batch: Batch, send: Callable[[bytes], bool]) -> None:
        batch.attempts += 1
        batch.next_send = now + self.settings.retry_wait(batch.attempts)
        if send(batch.datagram):
            self.counters.replication_bytes_sent += len(batch.datagram)
        else:
            self.counters.send_errors += 1

    def on_ack(self, seq: int) -> Optional[Batch]:
        """The peer acknowledged ``seq``: the batch, or None for an unknown/duplicate ack."""
        batch = self.in_flight.pop(seq, None)
        if batch is None:
            self.counters.unknown_acks += 1
        else:
            self.counters.acks += 1
        return batch

    def retry(self, now: float, send: Callable[[bytes], bool]) -> List[Batch]:
        """Send again the batches whose wait is over; requeue and return those that are lost."""
        lost: List[Batch] = []
        for batch in list(self.in_flight.values()):
            if batch.next_send > now:
                continue
            if batch.attempts >= self.settings.max_attempts:
                del self.in_flight[batch.seq]
                lost.append(batch)
                continue
            self.counters.retries += 1
            self._transmit(now, batch, send)
        for batch in lost:
            self.counters.lost_batches += 1
            self.counters.records_resent += batch.records
            for key, tag in zip(batch.keys, batch.tags):
                self.queue(key, tag)
        return lost

    def abandon(self) -> List[Tuple[FlowKey, Tag]]:
        """Forget everything (the peer is dead); returns the seed-tagged keys that were pending."""
        pending = [(key, tag) for key, tag in self.queued.items() if tag is not None]
        for batch in self.in_flight.values():
            pending.extend((key, tag) for key, tag in zip(batch.keys, batch.tags) if tag is not None)
        self.counters.abandoned_batches += len(self.in_flight)
        self.queued.clear()
        self.in_flight.clear()
        return pending

    def describe(self) -> Dict[str, int]:
        """Queue and window state (JSON-able)."""
        return {"queued": len(self.queued), "in_flight": len(self.in_flight), "next_seq": self.next_seq}
