"""Where ended flows' state still lives: the cells of each flow's last profile, for as long as cells keep state.

A flow's switch entries idle out long before its cells forget it (10 s
against an hour for an established TCP connection), and a switch reconnect
or a controller restart wipes the entries of live flows. The flow's next
packet then looks new. Placed afresh, it could land on cells that never saw
it, while the cells that hold its state are not asked: a failover would
lose it. ``PlacementMemory`` remembers each flow's cells when its entries
end (and, saved to a file, across a controller restart), so that the
director places the returning flow on the cells that still hold its state.

A cell that failed since loses what it held: every cell has an incarnation,
bumped when it goes down, and a remembered cell counts only in the
incarnation it was remembered in. Memory is bounded in time (``ttl_s``, as
long as cells keep an established connection) and in size
(``max_entries``, the oldest forgotten first).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

#: As long as a cell keeps an idle established TCP connection (prism.cell.conntrack.Timeouts).
DEFAULT_TTL_S = 3600.0
DEFAULT_MAX_ENTRIES = 1_000_000


class PlacementMemory:
    """flow_id -> the cells (primary first) and their incarnations when the flow was last placed.

    Args:
        ttl_s: How long a placement is remembered.
        max_entries: Placements remembered at most (the oldest go first).
    """

    def __init__(self, ttl_s: float = DEFAULT_TTL_S, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._entries: "OrderedDict[int, Tuple[Tuple[str, ...], Tuple[int, ...], float]]" = OrderedDict()
        self._incarnations: Dict[str, int] = {}
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._entries)

    def remember(self, flow_id: int, cells: Sequence[str], now: float) -> None:
        """The flow, just ended, was last placed on ``cells`` (primary first)."""
        incarnations = tuple(self._incarnations.get(cell_id, 0) for cell_id in cells)
        self._entries.pop(flow_id, None)
        self._entries[flow_id] = (tuple(cells), incarnations, now)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
            self.evicted += 1

    def recall(self, flow_id: int, now: float, live: Iterable[str]) -> Optional[Tuple[str, ...]]:
        """The live cells that still hold the flow's state, primary first; None if none does or it is not known.

        The placement is forgotten once recalled (the flow is placed again).
        """
        remembered = self._entries.pop(flow_id, None)
        if remembered is None:
            return None
        cells, incarnations, at = remembered
        if now - at > self.ttl_s:
            return None
        usable = set(live)
        holding = tuple(
            cell_id for cell_id, incarnation in zip(cells, incarnations)
            if cell_id in usable and self._incarnations.get(cell_id, 0) == incarnation
        )  # fmt: skip
        return holding or None

    def cell_down(self, cell_id: str) -> None:
        """``cell_id`` failed: what it held is gone (its remembered placements no longer count)."""
        self._incarnations[cell_id] = self._incarnations.get(cell_id, 0) + 1

    def expire(self, now: float) -> int:
        """Forget placements older than ``ttl_s`` (oldest first, stops at the first fresh one); returns how many."""
        forgotten = 0
        while self._entries:
            flow_id, (_, _, at) = next(iter(self._entries.items()))
            if now - at <= self.ttl_s:
                break
            del self._entries[flow_id]
            forgotten += 1
        return forgotten

    # -- persistence (the controller saves it, with its live flows, and loads it at start) --------
    def entries(self) -> List[tuple]:
        """``(flow_id, (cells...), at)`` per placement, oldest first (JSON-able: tuples encode as arrays)."""
        return [(flow_id, cells, at) for flow_id, (cells, _, at) in self._entries.items()]

    def load(self, entries: Iterable[Sequence], known_cells: Mapping[str, object]) -> int:
        """Add saved placements (a new process: every cell in its first incarnation); returns how many.

        Entries naming unknown cells or malformed are skipped.
        """
        loaded = 0
        for entry in entries:
            try:
                flow_id, cells, at = int(entry[0]), [str(c) for c in entry[1]], float(entry[2])
            except (TypeError, ValueError, IndexError, KeyError):
                continue
            if not cells or any(cell_id not in known_cells for cell_id in cells):
                continue
            self._entries.pop(flow_id, None)
            self._entries[flow_id] = (tuple(cells), tuple(0 for _ in cells), at)
            loaded += 1
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
            self.evicted += 1
        return loaded
