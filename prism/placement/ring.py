"""Placement of flows on cells: weighted rendezvous (highest-random-weight) hashing.

Why rendezvous hashing: it needs no table or virtual nodes, it gives every flow
a full ranking of the cells (primary first, then the takeover successors that
become mirrors), removing a cell moves exactly the flows it held, and adding one
moves only flows to the new cell. Balance is that of independent uniform draws:
over 100,000 flows and 8 equal cells max/mean is about 1.01 (see
``tests/unit/test_ring.py``). Cost is O(cells) per lookup, fine for 8-64 cells.

Scores: for flow ``f`` and cell ``c`` with 64-bit seed ``s_c`` (blake2b of the
cell id), ``h = splitmix64(f XOR s_c)``. With equal weights the cells rank by
``h`` (pure integer arithmetic: identical on every machine). With unequal
weights each ``h`` becomes ``u`` in (0, 1) and the score is ``-w / ln(u)``,
which gives each cell a share of flows proportional to its weight.
"""

from __future__ import annotations

import hashlib
import math
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

MASK64 = 0xFFFF_FFFF_FFFF_FFFF
SPLITMIX_GAMMA = 0x9E37_79B9_7F4A_7C15
SPLITMIX_MUL1 = 0xBF58_476D_1CE4_E5B9
SPLITMIX_MUL2 = 0x94D0_49BB_1331_11EB
CELL_SEED_PERSON = b"prism-ring-cell"
CELL_SEED_BYTES = 8
DEFAULT_WEIGHT = 1.0
#: The vectorised lookups work on blocks of at most this many (flow, cell) scores.
ARRAY_CHUNK_ELEMENTS = 1 << 22
#: 53 significant bits of the hash become a uniform u in (0, 1).
_U_SHIFT = 11
_U_SCALE = 2.0**-53

Weights = Union[Mapping[str, float], Sequence[float], None]


def splitmix64(value: int) -> int:
    """The splitmix64 finaliser: a fast, well-mixing 64-bit bijection."""
    value = (value + SPLITMIX_GAMMA) & MASK64
    value = ((value ^ (value >> 30)) * SPLITMIX_MUL1) & MASK64
    value = ((value ^ (value >> 27)) * SPLITMIX_MUL2) & MASK64
    return value ^ (value >> 31)


def cell_seed(cell_id: str) -> int:
    """A cell's 64-bit seed: blake2b of its id (stable across processes)."""
    digest = hashlib.blake2b(
        cell_id.encode("utf-8"), digest_size=CELL_SEED_BYTES, person=CELL_SEED_PERSON
    ).digest()
    return int.from_bytes(digest, "big")


def _unit_interval(h: int) -> float:
    """Map a 64-bit hash to u in the open interval (0, 1)."""
    return ((h >> _U_SHIFT) + 0.5) * _U_SCALE


class HashRing:
    """Weighted rendezvous hashing over cell ids.

    Args:
        cells: Initial cell ids.
        weights: Per-cell weights, as a mapping or a sequence parallel to
            ``cells``; missing cells get ``DEFAULT_WEIGHT``.

    Raises:
        ValueError: an empty or non-str cell id, a duplicate, or a weight that
            is not a positive finite number.
    """

    def __init__(self, cells: Iterable[str] = (), weights: Weights = None) -> None:
        self._seeds: Dict[str, int] = {}
        self._weights: Dict[str, float] = {}
        self._cells: Tuple[str, ...] = ()
        self._entries: Tuple[Tuple[int, float, str], ...] = ()
        self._uniform = True
        cells = list(cells)
        if weights is None:
            weight_of: Mapping[str, float] = {}
        elif isinstance(weights, Mapping):
            unknown = set(weights) - set(cells)
            if unknown:
                raise ValueError(f"weights for unknown cells: {sorted(unknown)}")
            weight_of = weights
        else:
            weights = list(weights)
            if len(weights) != len(cells):
                raise ValueError(f"{len(weights)} weights for {len(cells)} cells")
            weight_of = dict(zip(cells, weights))
        for cell_id in cells:
            if cell_id in self._seeds:
                raise ValueError(f"duplicate cell id {cell_id!r}")
            self.add(cell_id, weight_of.get(cell_id, DEFAULT_WEIGHT))

    # --- membership --------------------------------------------------------------
    def add(self, cell_id: str, weight: float = DEFAULT_WEIGHT) -> None:
        """Add a cell, or change the weight of one already there.

        Args:
            cell_id: The cell's id (non-empty str).
            weight: Relative share of flows (positive, finite).

        Raises:
            ValueError: bad id or weight.
        """
        if not isinstance(cell_id, str) or not cell_id:
            raise ValueError(f"cell id must be a non-empty str, not {cell_id!r}")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            raise ValueError(f"weight of {cell_id!r} must be a number, not {weight!r}")
        if not (math.isfinite(weight) and weight > 0):
            raise ValueError(f"weight of {cell_id!r} must be positive and finite, not {weight}")
        self._seeds[cell_id] = cell_seed(cell_id)
        self._weights[cell_id] = float(weight)
        self._refresh()

    def remove(self, cell_id: str) -> None:
        """Remove a cell.

        Raises:
            KeyError: the cell is not on the ring.
        """
        if cell_id not in self._seeds:
            raise KeyError(cell_id)
        del self._seeds[cell_id]
        del self._weights[cell_id]
        self._refresh()

    def _refresh(self) -> None:
        self._cells = tuple(sorted(self._seeds))
        self._uniform = len(set(self._weights.values())) <= 1
        self._entries = tuple((self._seeds[c], self._weights[c], c) for c in self._cells)

    @property
    def cells(self) -> Tuple[str, ...]:
        """Cell ids, sorted."""
        return self._cells

    def weight(self, cell_id: str) -> float:
        """A cell's weight (KeyError if absent)."""
        return self._weights[cell_id]

    def __len__(self) -> int:
        return len(self._cells)

    def __contains__(self, cell_id: object) -> bool:
        return cell_id in self._seeds

    def __repr__(self) -> str:
        if self._uniform:
            return f"HashRing({list(self._cells)!r})"
        return f"HashRing({list(self._cells)!r}, weights={self._weights!r})"

    # --- lookups -------------------------------------------------------------------
    def order(
        self, flow_id: int, n: Optional[int] = None, exclude: Iterable[str] = ()
    ) -> List[str]:
        """Cells ranked for a flow: the first is its primary, then its successors.

        Args:
            flow_id: The flow's 64-bit id.
            n: Return at most this many cells (None: all).
            exclude: Cell ids to leave out (e.g. cells known dead); ranks of the
                others are unchanged.

        Returns:
            Cell ids, best first. Shorter than ``n`` if there are not enough cells.

        Raises:
            ValueError: ``n`` is negative.
        """
        if n is not None and n < 0:
            raise ValueError(f"n must be >= 0, not {n}")
        flow_id &= MASK64
        if self._uniform:
            scored = [(splitmix64(flow_id ^ seed), cell_id) for seed, _w, cell_id in self._entries]
        else:
            scored = [
                (-weight / math.log(_unit_interval(splitmix64(flow_id ^ seed))), cell_id)
                for seed, weight, cell_id in self._entries
            ]
        scored.sort(reverse=True)
        if exclude:
            excluded = exclude if isinstance(exclude, (set, frozenset)) else set(exclude)
            ranked = [cell_id for _score, cell_id in scored if cell_id not in excluded]
        else:
            ranked = [cell_id for _score, cell_id in scored]
        return ranked if n is None else ranked[:n]

    def primary(self, flow_id: int, exclude: Iterable[str] = ()) -> Optional[str]:
        """The flow's primary cell, or None if no cell is left."""
        ranked = self.order(flow_id, 1, exclude)
        return ranked[0] if ranked else None

    # --- vectorised (simulator) -------------------------------------------------------
    def order_array(self, flow_ids, n: Optional[int] = None):
        """Vectorised :meth:`order` for many flows (needs numpy).

        Args:
            flow_ids: Array-like of 64-bit flow ids (converted to uint64).
            n: Ranks to return per flow (None: all cells).

        Returns:
            An int array of shape ``(len(flow_ids), n)`` of indices into
            :attr:`cells`, best first; row ``i`` equals ``order(flow_ids[i], n)``.

        Raises:
            ValueError: the ring is empty or ``n`` is out of range.
        """
        import numpy as np  # lazy: the core does not need numpy

        if not self._cells:
            raise ValueError("the ring has no cells")
        n = len(self._cells) if n is None else n
        if not 1 <= n <= len(self._cells):
            raise ValueError(f"n must be in 1..{len(self._cells)}, not {n}")
        ids = np.asarray(flow_ids, dtype=np.uint64).reshape(-1)
        out = np.empty((len(ids), n), dtype=np.intp)
        for start in range(0, len(ids), self._chunk_rows()):
            stop = start + self._chunk_rows()
            scores = self._score_array(np, ids[start:stop])
            # Descending by score, ties to the larger cell id (as sorting (score, id)
            # does): a stable ascending sort keeps tied columns in index order and
            # reversing flips both.
            out[start:stop] = np.argsort(scores, axis=1, kind="stable")[:, ::-1][:, :n]
        return out

    def primary_array(self, flow_ids):
        """Vectorised :meth:`primary`: an int array of indices into :attr:`cells` (needs numpy).

        Raises:
            ValueError: the ring is empty.
        """
        import numpy as np  # lazy: the core does not need numpy

        if not self._cells:
            raise ValueError("the ring has no cells")
        ids = np.asarray(flow_ids, dtype=np.uint64).reshape(-1)
        out = np.empty(len(ids), dtype=np.intp)
        last = len(self._cells) - 1
        for start in range(0, len(ids), self._chunk_rows()):
            scores = self._score_array(np, ids[start : start + self._chunk_rows()])
            # argmax takes the first maximum; on the reversed columns that is the
            # larger cell id, as in order().
            out[start : start + len(scores)] = last - np.argmax(scores[:, ::-1], axis=1)
        return out

    def _chunk_rows(self) -> int:
        return max(1, ARRAY_CHUNK_ELEMENTS // len(self._cells))

    def _score_array(self, np, ids):
        """Scores of shape ``(flows, cells)`` for a uint64 array, ranked like :meth:`order`'s."""
        seeds = np.array([seed for seed, _w, _c in self._entries], dtype=np.uint64)
        scores = _splitmix64_array(np, ids[:, None] ^ seeds[None, :])
        if self._uniform:
            return scores
        weights = np.array([w for _s, w, _c in self._entries], dtype=np.float64)
        u = ((scores >> np.uint64(_U_SHIFT)).astype(np.float64) + 0.5) * _U_SCALE
        return -weights[None, :] / np.log(u)


def _splitmix64_array(np, values):
    """splitmix64 over a uint64 array (wrap-around arithmetic)."""
    with np.errstate(over="ignore"):
        values = values + np.uint64(SPLITMIX_GAMMA)
        values = (values ^ (values >> np.uint64(30))) * np.uint64(SPLITMIX_MUL1)
        values = (values ^ (values >> np.uint64(27))) * np.uint64(SPLITMIX_MUL2)
        return values ^ (values >> np.uint64(31))
