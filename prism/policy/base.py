"""Replication policies: which cells get a flow's packets (its MirroringProfile) and how (its mode).

Every policy the director holds answers four questions (issue 8, contract section 3):

- ``profile_for(packet_info, live_cells, now)``: a new flow's profile (its first packet);
- ``mode_for(flow_id)``: the mode of the flow's latest decision (``MODE_FULL``: every
  packet copied to the mirrors, ``MODE_STATE``: only the state-changing ones);
- ``milestones_s``: the ages (s) at which the director asks again about a live flow;
- ``redecide(flow_id, current, age_s, packets, bytes, live_cells, now)``: a live flow
  crossed a milestone with these counters (both directions so far); None keeps it as it
  is, else its new profile (same primary: a re-decision never moves the primary) and mode;
- ``flow_ended(entry, now)``: the flow's last FSC entry was removed.
"""

from __future__ import annotations

from typing import Collection, Mapping, Optional, Protocol, Sequence, Tuple

from prism.flows.identity import PacketInfo
from prism.placement.profiles import MODE_FULL, MODE_STATE, MODES, MirroringProfile
from prism.placement.ring import HashRing

# The modes (``full``: every packet copied; ``state``: only TCP SYN/FIN/RST and other flows'
# first packet, the rest replicated by the primary's State Mirroring Module) live with the
# flow entries in prism.placement.profiles; re-exported here for policies.
__all__ = ["MODE_FULL", "MODE_STATE", "MODES", "Decision", "FixedPolicy", "NoLiveCell", "Policy"]

#: ``MirroringProfile`` plus mode: what a re-decision returns.
Decision = Tuple[MirroringProfile, str]


class NoLiveCell(ValueError):
    """No live cell can take a flow."""


class Policy(Protocol):
    """What the director asks of a policy (``FixedPolicy``, ``prism.policy.aging.AgingPolicy``, ...)."""

    def profile_for(
        self, packet_info: PacketInfo, live_cells: Collection[str], now: float
    ) -> MirroringProfile:
        """The profile of the flow whose first packet is ``packet_info``.

        Args:
            packet_info: The flow's first packet as parsed by ``prism.flows.identity``.
            live_cells: Ids of the cells that may be chosen.
            now: Current time in seconds.

        Raises:
            NoLiveCell: ``live_cells`` holds no cell the policy can use.
        """
        ...  # pragma: no cover

    def mode_for(self, flow_id: int) -> str:
        """The mode (``MODE_FULL`` or ``MODE_STATE``) of the flow's latest decision."""
        ...  # pragma: no cover

    @property
    def milestones_s(self) -> Tuple[float, ...]:
        """Ages (s, ascending) at which the director re-decides a live flow (``()``: never)."""
        ...  # pragma: no cover

    def redecide(
        self, flow_id: int, current: MirroringProfile, age_s: float, packets: int, bytes: int,
        live_cells: Collection[str], now: float, idle_s: Optional[float] = None, closing: Optional[bool] = None,
    ) -> Optional[Decision]:  # fmt: skip
        """A live flow reached the milestone ``age_s`` with ``packets``/``bytes`` (both directions).

        ``idle_s`` (seconds since the flow's last packet) and ``closing`` (a FIN or
        RST was seen) are what its primary cell knows (``prism.mgmt.protocol`` ``milestone``);
        None when the report did not carry them.

        Returns:
            None to keep the flow as it is, else its new profile (``current.primary_cell``
            stays primary) and mode.
        """
        ...  # pragma: no cover

    def flow_ended(self, entry, now: float) -> None:
        """The flow's last FSC entry was removed (``entry``: its ``FlowEntry`` with the counters)."""
        ...  # pragma: no cover


class FixedPolicy:
    """Every flow gets the same replication factor, placed by the ring.

    The primary is the first live cell of ``ring.order(flow_id)``, the mirrors
    the next ``replication_factor`` live cells (fewer if not enough are live).

    Args:
        ring: Consistent-hash ring over all configured cells.
        replication_factor: Mirror cells per flow (0: no mirroring).
        mode: Every flow's mode (``MODE_FULL`` or ``MODE_STATE``; configuration ``mirroring_mode``).
    """

    #: A fixed policy never re-decides.
    milestones_s: Tuple[float, ...] = ()

    def __init__(self, ring: HashRing, replication_factor: int, mode: str = MODE_FULL) -> None:
        if replication_factor < 0:
            raise ValueError(f"replication_factor must be >= 0, not {replication_factor}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        self.ring = ring
        self.replication_factor = replication_factor
        self.mode = mode

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

    def mode_for(self, flow_id: int) -> str:
        """The configured mode, for every flow."""
        return self.mode

    def redecide(self, flow_id: int, current: MirroringProfile, age_s: float, packets: int, bytes: int,
                 live_cells: Collection[str], now: float, idle_s: Optional[float] = None,
                 closing: Optional[bool] = None) -> Optional[Decision]:  # fmt: skip
        """Never changes a flow (it has no milestones)."""
        return None

    def flow_ended(self, entry, now: float) -> None:
        """Nothing to learn."""

    def __repr__(self) -> str:
        mode = "" if self.mode == MODE_FULL else f", mode={self.mode!r}"
        return f"FixedPolicy({self.ring!r}, replication_factor={self.replication_factor}{mode})"


#: A mirror candidate this many times likelier to fail than the switch's median cell goes to the back.
AVOID_RISK_RATIO = 10.0
#: A candidate holding more than LOAD_FACTOR x the candidates' mean mirror load, plus LOAD_SLACK
#: flows, goes to the back (after the healthy ones, before the risky ones).
LOAD_FACTOR = 1.5
LOAD_SLACK = 8


def choose_mirrors(primary: str, candidates: Sequence[str], risk: Mapping[str, float], reference: float,
                   loads: Mapping[str, int], max_replication_factor: int,
                   risk_target: float) -> Tuple[str, ...]:  # fmt: skip
    """A flow's mirrors: healthy, not overloaded candidates first (ring order within each rank).

    One mirror, then more while the primary and every mirror could all fail within the
    horizon with a probability above ``risk_target`` (independent failures), up to
    ``max_replication_factor``.

    Args:
        primary: The flow's primary cell.
        candidates: Live cells other than the primary, in the flow's ring order (not empty).
        risk: Cell -> its failure probability within the horizon.
        reference: The switch's median failure probability (0: none known).
        loads: Cell -> flows it mirrors now.
        max_replication_factor: The most mirrors.
        risk_target: Mirrors are added while all replicas could fail together with more than this.
    """
    ranked = list(candidates)
    mean_load = sum(loads.get(c, 0) for c in ranked) / len(ranked)
    load_limit = LOAD_FACTOR * mean_load + LOAD_SLACK

    def rank(cell_id: str) -> int:
        risky = reference > 0 and risk.get(cell_id, 0.0) >= AVOID_RISK_RATIO * reference
        return 2 if risky else (1 if loads.get(cell_id, 0) > load_limit else 0)

    ranked.sort(key=rank)  # stable: ring order within each rank
    limit = min(max_replication_factor, len(ranked))
    chosen = [ranked[0]]
    all_fail = risk.get(primary, 0.0) * risk.get(ranked[0], 0.0)
    while len(chosen) < limit and all_fail > risk_target:
        chosen.append(ranked[len(chosen)])
        all_fail *= risk.get(chosen[-1], 0.0)
    return tuple(chosen)
