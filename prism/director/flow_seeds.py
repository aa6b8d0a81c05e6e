"""Per-flow seeds: a flow promoted to new mirrors is protected only once its primary has seeded them.

A re-decision (``MirroringDirector.on_milestone``) that gives a live flow a
mirror it did not have asks the flow's primary for a snapshot of that flow
alone (``seed`` with ``flows``, ``prism.mgmt.protocol``). Until the primary reports
``seeded`` with the same flow list, the new mirror does not hold the flow's
state: if the primary dies before that and the mirror takes over, the flow's
state is lost (counted in ``state_lost_flows``).

Requests made between two ticks are batched per (group, target): the tick
sends one ``seed`` per batch, after the ``assign`` messages queued for the
primary (the primary must know the flow's new profile before it seeds it),
and repeats a batch not answered within ``SEED_RETRY_S``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Set, Tuple

#: Flows per per-flow ``seed`` message (a flow id is about 20 bytes of JSON).
FLOW_SEED_BATCH = 400

BatchKey = Tuple[int, str, Tuple[int, ...]]


@dataclass
class FlowSeed:
    """One ``seed`` request for some flows of a group, to one target.

    Attributes:
        source: The primary asked to send the snapshot.
        group_id: The flows' group (the ``profile_id`` of the message).
        target: The mirror to seed.
        flows: The flow ids, in the order sent (``seeded`` echoes them).
        sent_at: When it was last sent (None: not yet).
        attempts: How many times it was sent.
    """

    source: str
    group_id: int
    target: str
    flows: Tuple[int, ...]
    sent_at: Optional[float] = None
    attempts: int = 0

    @property
    def key(self) -> BatchKey:
        """What a ``seeded`` report must name to confirm it."""
        return (self.group_id, self.target, self.flows)

    def message(self) -> dict:
        """The ``seed`` message for its source."""
        return {"type": "seed", "profile_id": self.group_id, "target": self.target, "flows": list(self.flows)}


class FlowSeeds:
    """The per-flow seeds of one switch: queued, in flight, confirmed."""

    def __init__(self) -> None:
        self._queued: Dict[Tuple[int, str], Tuple[str, List[int]]] = {}
        self._batches: Dict[BatchKey, FlowSeed] = {}
        self._waiting: Dict[int, Set[Tuple[str, int]]] = {}  # flow_id -> {(target, group_id)}

    def __len__(self) -> int:
        """Flows waiting for at least one seed."""
        return len(self._waiting)

    def reset(self) -> None:
        """Forget everything (the switch reconnected: its flows start afresh)."""
        self._queued.clear()
        self._batches.clear()
        self._waiting.clear()

    def request(self, flow_id: int, group_id: int, source: str, target: str) -> None:
        """Queue a seed of one flow of ``group_id`` from ``source`` to ``target`` (sent at the next tick)."""
        source_now, flows = self._queued.setdefault((group_id, target), (source, []))
        if source_now != source:  # the group's primary changed since: start over with the new one
            flows = []
            self._queued[(group_id, target)] = (source, flows)
        flows.append(flow_id)
        self._waiting.setdefault(flow_id, set()).add((target, group_id))

    def unseeded(self, flow_id: int, cell_id: str) -> bool:
        """True if ``cell_id`` was asked to hold ``flow_id`` and has not been seeded with it yet."""
        return any(target == cell_id for target, _ in self._waiting.get(flow_id, ()))

    def waiting_targets(self, flow_id: int) -> List[str]:
        """The cells still waiting for the flow's state, sorted."""
        return sorted({target for target, _ in self._waiting.get(flow_id, ())})

    def forget_flow(self, flow_id: int) -> None:
        """The flow ended or moved again: nothing waits for it any more."""
        self._waiting.pop(flow_id, None)

    def group_repaired(self, group_id: int, new_primary: str, cells: Sequence[str]) -> List[int]:
        """A failover or drain rewrote ``group_id``: drop its seeds, return the flows whose state is lost.

        A seed from a primary that is no longer the group's primary cannot
        complete; a seed to a cell no longer in the group is moot (a new
        mirror gets a whole-group seed). The flows lost are those still
        waiting for their state on the new primary.
        """
        lost = sorted(f for f, waits in self._waiting.items() if (new_primary, group_id) in waits)
        kept_cells = set(cells)
        doomed = [
            key for key, batch in self._batches.items()
            if batch.group_id == group_id and (batch.source != new_primary or batch.target not in kept_cells)
        ]  # fmt: skip
        for key in doomed:
            batch = self._batches.pop(key)
            self._unwait(batch.flows, batch.target, group_id)
        for (queued_group, target), (source, flows) in list(self._queued.items()):
            if queued_group == group_id and (source != new_primary or target not in kept_cells):
                del self._queued[(queued_group, target)]
                self._unwait(flows, target, group_id)
        return lost

    def confirm(self, source: str, group_id: int, target: str, flows: Iterable[object]) -> Optional[List[int]]:
        """A ``seeded`` report for a per-flow seed: the flows now protected on ``target``, or None if stale."""
        try:
            key = (group_id, target, tuple(int(f) for f in flows))
        except (TypeError, ValueError):
            return None
        batch = self._batches.get(key)
        if batch is None or batch.source != source:
            return None
        del self._batches[key]
        return self._unwait(batch.flows, target, group_id)

    def due(self, now: float, retry_s: float, ready: Iterable[str], down: Iterable[str]) -> Tuple[List[FlowSeed], int]:
        """Seeds to send now: queued ones whose source is ``ready``, and retries.

        Args:
            now: Current time.
            retry_s: An unanswered seed is sent again after this long.
            ready: Sources whose ``assign`` messages have all gone out.
            down: Dead cells (their seeds are dropped: the repair handles their groups).

        Returns:
            The batches to send (their ``sent_at`` and ``attempts`` updated) and how many are retries.
        """
        ready, down = set(ready), set(down)
        out: List[FlowSeed] = []
        retries = 0
        for (group_id, target), (source, flows) in list(self._queued.items()):
            if source in down or target in down:
                del self._queued[(group_id, target)]
                self._unwait(flows, target, group_id)
                continue
            if source not in ready:
                continue
            del self._queued[(group_id, target)]
            live = [f for f in dict.fromkeys(flows) if (target, group_id) in self._waiting.get(f, ())]
            for start in range(0, len(live), FLOW_SEED_BATCH):
                batch = FlowSeed(source, group_id, target, tuple(live[start : start + FLOW_SEED_BATCH]))
                self._batches[batch.key] = batch
        for key, batch in list(self._batches.items()):
            if batch.source in down or batch.target in down:
                del self._batches[key]
                self._unwait(batch.flows, batch.target, batch.group_id)
                continue
            if not any((batch.target, batch.group_id) in self._waiting.get(f, ()) for f in batch.flows):
                del self._batches[key]  # every flow of it ended or moved
                continue
            if batch.sent_at is None or now - batch.sent_at >= retry_s:
                retries += batch.sent_at is not None
                batch.sent_at = now
                batch.attempts += 1
                out.append(batch)
        return out, retries

    def _unwait(self, flows: Iterable[int], target: str, group_id: int) -> List[int]:
        done = []
        for flow_id in flows:
            waits = self._waiting.get(flow_id)
            if waits is None or (target, group_id) not in waits:
                continue
            waits.discard((target, group_id))
            done.append(flow_id)
            if not waits:
                del self._waiting[flow_id]
        return done
