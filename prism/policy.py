"""Replication policies: which cells get a new flow's packets (its MirroringProfile)."""

from __future__ import annotations

from typing import Collection, Protocol

from prism.flows import PacketInfo
from prism.profiles import MirroringProfile
from prism.ring import HashRing


class NoLiveCell(ValueError):
    """No live cell can take a flow."""


class Policy(Protocol):
    """What the director asks for every new flow (FixedPolicy now, the predictive policy later)."""

    def profile_for(
        self, packet_info: PacketInfo, live_cells: Collection[str], now: float
    ) -> MirroringProfile:
        """The profile of the flow whose first packet is ``packet_info``.

        Args:
            packet_info: The flow's first packet as parsed by ``prism.flows``.
            live_cells: Ids of the cells that may be chosen.
            now: Current time in seconds.

        Raises:
            NoLiveCell: ``live_cells`` holds no cell the policy can use.
        """
        ...  # pragma: no cover


class FixedPolicy:
    """Every flow gets the same replication factor, placed by the ring.

    The primary is the first live cell of ``ring.order(flow_id)``, the mirrors
    the next ``replication_factor`` live cells (fewer if not enough are live).

    Args:
        ring: Consistent-hash ring over all configured cells.
        replication_factor: Mirror cells per flow (0: no mirroring).
    """

    def __init__(self, ring: HashRing, replication_factor: int) -> None:
        if replication_factor < 0:
            raise ValueError(f"replication_factor must be >= 0, not {replication_factor}")
        self.ring = ring
        self.replication_factor = replication_factor

    def profile_for(
        self, packet_info: PacketInfo, live_cells: Collection[str], now: float
    ) -> MirroringProfile:
        """See ``Policy.profile_for``; ``now`` is unused."""
        live = live_cells if isinstance(live_cells, (set, frozenset)) else frozenset(live_cells)
        ranked = [cell_id for cell_id in self.ring.order(packet_info.flow_id) if cell_id in live]
        if not ranked:
            raise NoLiveCell(f"no live cell for flow {packet_info.key} (live: {sorted(live)})")
        mirror_cells = tuple(ranked[1 : 1 + self.replication_factor])
        return MirroringProfile(
            primary_cell=ranked[0], mirror_cells=mirror_cells, replication_factor=len(mirror_cells)
        )

    def __repr__(self) -> str:
        return f"FixedPolicy({self.ring!r}, replication_factor={self.replication_factor})"
