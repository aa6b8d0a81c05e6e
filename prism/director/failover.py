"""Failover and drain: repairing profile groups when cells die, drain, return; seeding new mirrors.

Cost model (DESIGN.md section 2): a repair loops over the *groups* whose
profile names a cell, never over flows. Each rewritten group costs two
OpenFlow messages (GroupMod MODIFY of its FAST_FAILOVER and its ALL group,
same ids), whatever the number of flows pointing at it; the flows' FSC
entries are not touched. The controller's own copy of the FSC is relabelled
in memory.

How one group is repaired is planned by ``prism.director.repair.plan_repair``; this
module applies the plans: GroupMods, the flows' new labels, ``profiles``
updates to the cells concerned, ``seed`` requests to the primaries of groups
with a new mirror (repeated until ``seeded`` comes back). A cell that joins a
group gets ``assign`` for the group's flows (about 400 flows per datagram) so
that it can seed others in turn; those go out with the next ticks, off the
failover's path.

A re-decision that moves one live flow to another group (``flow_moved``)
queues the flow's ``assign`` (with its mode) for the new group's cells and,
for mirrors that did not hold the flow, a per-flow seed
(``prism.director.flow_seeds``); a repair that makes a cell primary before it was
seeded with such a flow counts the flow in ``state_lost_flows``.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple

from prism.director.actions import (
    Decision,
    MgmtMessage,
    admin_message,
    assign_entry,
    assign_messages,
    profiles_message,
    seed_message,
)
from prism.director.flow_seeds import FlowSeeds
from prism.director.groups import GroupState, GroupTable, PendingSeed
from prism.openflow.changes import Command, OfChange
from prism.placement.profiles import MODE_FULL, MirroringProfile
from prism.director.repair import needs_repair, plan_repair
from prism.placement.ring import HashRing

if TYPE_CHECKING:  # pragma: no cover
    from prism.placement.profiles import FlowStateCache

#: A seed not answered by ``seeded`` within this time is asked for again.
SEED_RETRY_S = 1.0
#: Every cell gets its whole profile table this often (a lost ``profiles`` datagram heals).
PROFILE_REFRESH_S = 5.0
#: Flow assignments queued per cell between two ticks; beyond it they are dropped and counted.
MAX_QUEUED_ASSIGNS = 200_000
#: Flow assignments sent per tick, all cells together (the rest waits for the next ticks), so
#: that a failover's bulk assignments never hold the controller for long.
ASSIGNS_PER_TICK = 2_000

ADMIN = "admin"  #: the ``kind`` of drain and restore steps


class UnknownCell(KeyError):
    """A cell id that the switch's configuration does not have."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown cell"


@dataclass(frozen=True)
class FailoverStats:
    """What one failover (or drain/restore/seeding step) cost.

    ``ofmsgs`` counts OpenFlow messages: two per rewritten group, whatever
    ``flows_affected`` is.
    """

    action: str
    cell_id: str
    kind: str
    at: float
    profiles_affected: int = 0
    groups_rewritten: int = 0
    flows_affected: int = 0
    ofmsgs: int = 0
    mgmt_messages: int = 0
    state_lost_flows: int = 0
    mirrors_added: int = 0
    seeds_sent: int = 0
    under_replicated_groups: int = 0
    unplaced_groups: int = 0

    def as_dict(self) -> Dict[str, object]:
        """Plain dict for JSON."""
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


class Failover:
    """Cell status (dead, draining) and every repair of one switch's profile groups.

    Holds no groups or flows of its own: each method is handed the director's
    ``GroupTable`` and ``FlowStateCache`` and returns the decisions to send.

    Args:
        cell_ids: The switch's cells, in configuration order.
        ring: The shared ring over those cells.
    """

    def __init__(self, cell_ids: Sequence[str], ring: HashRing) -> None:
        self.cell_ids: Tuple[str, ...] = tuple(cell_ids)
        self.ring = ring
        self._down: Set[str] = set()
        self._draining: Set[str] = set()
        self._counts: Dict[str, int] = defaultdict(int)
        self._epoch = 0
        self._announce: Set[int] = set()
        # (flow_id, group_id, key, mode); the key is made text at the tick
        self._assigns: Dict[str, List[Tuple[int, int, object, str]]] = defaultdict(list)
        self.flow_seeds = FlowSeeds()
        self._next_refresh: Optional[float] = None
        self.last_failover: Optional[FailoverStats] = None
        self.last_repair: Optional[FailoverStats] = None

    # --- status -----------------------------------------------------------------------
    def check(self, cell_id: str) -> None:
        """Raise UnknownCell unless the switch has ``cell_id``."""
        if cell_id not in self.cell_ids:
            raise UnknownCell(f"no cell {cell_id!r} on this switch (cells: {', '.join(self.cell_ids)})")

    @property
    def live_cells(self) -> Tuple[str, ...]:
        """Cells new flows may use: neither dead nor draining."""
        return tuple(c for c in self.cell_ids if c not in self._down and c not in self._draining)

    @property
    def down(self) -> frozenset:
        """Dead cells."""
        return frozenset(self._down)

    @property
    def draining(self) -> frozenset:
        """Cells drained (or being drained) by an administrator."""
        return frozenset(self._draining)

    @property
    def counts(self) -> Mapping[str, int]:
        """Cumulative counters."""
        return dict(self._counts)

    def count_state_lost(self, flows: int) -> None:
        """``flows`` flows were placed on cells that may lack their state (counted in ``state_lost_flows``)."""
        self._counts["state_lost_flows"] += flows

    def reset(self) -> None:
        """The switch reconnected and lost its groups: forget queued messages, refresh every cell soon."""
        self._announce.clear()
        self._assigns.clear()
        self.flow_seeds.reset()
        self._next_refresh = None

    def adopt_verdicts(self, down: Iterable[str], draining: Iterable[str]) -> None:
        """Take the cells' status from the previous master (a takeover); unknown cells are ignored."""
        self._down = {c for c in down if c in self.cell_ids}
        self._draining = {c for c in draining if c in self.cell_ids}

    # --- events ------------------------------------------------------------------------
    def cell_down(
        self, cell_id: str, kind: str, now: float, table: GroupTable, flows: "FlowStateCache"
    ) -> List[Decision]:
        """A cell died: rewrite every group naming it (idempotent)."""
        self.check(cell_id)
        if cell_id in self._down:
            return []
        self._down.add(cell_id)
        self._counts["failovers"] += 1
        decisions, stats = self._repair(table.naming(cell_id), now, table, flows, "cell_down", cell_id, kind)
        self.last_failover = stats
        return decisions

    def cell_up(self, cell_id: str, now: float, table: GroupTable, flows: "FlowStateCache") -> List[Decision]:
        """A dead cell is healthy again: it rejoins empty and refills under-replicated groups."""
        self.check(cell_id)
        if cell_id not in self._down:
            return []
        self._down.discard(cell_id)
        self._counts["recoveries"] += 1
        decisions, _ = self._repair(self._needing_repair(table), now, table, flows, "cell_up", cell_id, "")
        if cell_id not in self._down:
            decisions.append(self.profile_table(cell_id, table))
        return decisions

    def drain(self, cell_id: str, now: float, table: GroupTable, flows: "FlowStateCache") -> List[Decision]:
        """Stop new flows to a cell and start moving its flows, state first."""
        self.check(cell_id)
        first = cell_id not in self._draining
        self._draining.add(cell_id)
        if first:
            self._counts["drains"] += 1
        decisions: List[Decision] = []
        if first and cell_id not in self._down:
            decisions.append(MgmtMessage(cell_id, admin_message("drain", cell_id)))
        more, _ = self._repair(table.naming(cell_id), now, table, flows, "drain", cell_id, ADMIN)
        return decisions + more

    def restore(self, cell_id: str, now: float, table: GroupTable, flows: "FlowStateCache") -> List[Decision]:
        """Put a drained cell back in service (it refills under-replicated groups and gets new flows)."""
        self.check(cell_id)
        if cell_id not in self._draining:
            return []
        self._draining.discard(cell_id)
        self._counts["restores"] += 1
        decisions: List[Decision] = []
        if cell_id not in self._down:
            decisions.append(MgmtMessage(cell_id, admin_message("restore", cell_id)))
        more, _ = self._repair(self._needing_repair(table), now, table, flows, "restore", cell_id, ADMIN)
        return decisions + more

    def seeded(
        self, source: str, profile_id: int, target: str, now: float, table: GroupTable, flows: "FlowStateCache",
        flow_ids: Optional[Sequence[object]] = None,
    ) -> List[Decision]:  # fmt: skip
        """``source`` reports ``target`` seeded with group ``profile_id``'s flows; stale reports are counted.

        With ``flow_ids`` (a per-flow seed's echoed list) only those flows become protected on ``target``.
        """
        if flow_ids is not None:
            done = self.flow_seeds.confirm(source, profile_id, target, flow_ids)
            if done is None:
                self._counts["stale_seeded"] += 1
            else:
                self._counts["flow_seeds_confirmed"] += 1
                self._counts["flows_seeded"] += len(done)
            return []
        group = table.get(profile_id)
        wait = group.pending.get(target) if group is not None else None
        if group is None or wait is None or wait.source != source or group.profile.primary_cell != source:
            self._counts["stale_seeded"] += 1
            return []
        del group.pending[target]
        self._counts["seeds_confirmed"] += 1
        if not needs_repair(group, self._down, self._draining):
            return []
        decisions, _ = self._repair([group], now, table, flows, "seeded", target, "")
        return decisions

    def drain_status(self, cell_id: str, table: GroupTable) -> Dict[str, object]:
        """How far a drain has come: groups and flows still naming the cell."""
        self.check(cell_id)
        groups = table.naming(cell_id)
        return {
            "draining": cell_id in self._draining,
            "groups_remaining": len(groups),
            "flows_remaining": sum(g.refcount for g in groups),
            "done": cell_id in self._draining and not groups,
        }

    # --- flows and the periodic tick ----------------------------------------------------------
    def flow_added(
        self, flow_id: int, key: object, group: GroupState, group_created: bool, mode: str = MODE_FULL
    ) -> None:
        """Queue a new flow's ``assign`` (and its new group's announcement) for the next tick.

        Args:
            flow_id: The flow.
            key: Its key (``str(key)`` is the text the cells get).
            group: The group it joined.
            group_created: The group is new (its profile is announced too).
            mode: Its mirroring mode.
        """
        if group_created:
            self._announce.add(group.group_id)
        self._queue_assigns(group.profile.cells, [(flow_id, group.group_id, key, mode)])

    def flow_moved(
        self, flow_id: int, key: object, old: MirroringProfile, group: GroupState, group_created: bool, mode: str,
    ) -> List[str]:  # fmt: skip
        """A re-decision moved a live flow to ``group``: assigns for its cells, seeds for its new mirrors.

        Args:
            flow_id: The flow.
            key: Its key.
            old: Its profile before the move (same primary).
            group: The group it joined.
            group_created: The group is new (its profile is announced too).
            mode: Its mirroring mode from now on.

        Returns:
            The mirrors that must be seeded with the flow before it counts as protected there.
        """
        if group_created:
            self._announce.add(group.group_id)
        waiting = set(self.flow_seeds.waiting_targets(flow_id))  # mirrors of ``old`` not seeded yet
        self.flow_seeds.forget_flow(flow_id)
        self._queue_assigns(group.profile.cells, [(flow_id, group.group_id, key, mode)])
        targets = [
            m for m in group.profile.mirror_cells
            if (m not in old.mirror_cells or m in waiting) and m not in self._down
        ]  # fmt: skip
        for target in targets:
            self.flow_seeds.request(flow_id, group.group_id, group.profile.primary_cell, target)
        return targets

    def flow_ended(self, flow_id: int) -> None:
        """The flow is gone: no seed waits for it any more."""
        self.flow_seeds.forget_flow(flow_id)

    def _queue_assigns(self, cell_ids: Iterable[str], flows: List[Tuple[int, int, object, str]]) -> None:
        for cell_id in cell_ids:
            queue = self._assigns[cell_id]
            room = MAX_QUEUED_ASSIGNS - len(queue)
            if room < len(flows):
                self._counts["assigns_dropped"] += len(flows) - max(room, 0)
            queue.extend(flows[: max(room, 0)])

    def tick(self, now: float, table: GroupTable) -> List[MgmtMessage]:
        """Messages due now: new groups' profiles, batched assigns, seed retries, periodic full tables."""
        messages: List[MgmtMessage] = []
        announced = {gid: table.get(gid) for gid in sorted(self._announce)}
        self._announce.clear()
        messages += self._profile_updates({gid: g.profile for gid, g in announced.items() if g is not None})
        budget = ASSIGNS_PER_TICK
        for cell_id in sorted(self._assigns):
            queue = self._assigns[cell_id]
            if cell_id in self._down:
                del self._assigns[cell_id]
                continue
            if budget <= 0:
                break
            flows, rest = queue[:budget], queue[budget:]
            budget -= len(flows)
            triples = [assign_entry(flow_id, group_id, key, mode) for flow_id, group_id, key, mode in flows]
            messages += [MgmtMessage(cell_id, m) for m in assign_messages(triples)]
            self._counts["assigns_sent"] += len(flows)
            if rest:
                self._assigns[cell_id] = rest
            else:
                del self._assigns[cell_id]
        for group in table:
            for target, wait in sorted(group.pending.items()):
                if now - wait.sent_at >= SEED_RETRY_S:
                    group.pending[target] = PendingSeed(wait.source, now, wait.attempts + 1)
                    messages.append(MgmtMessage(wait.source, seed_message(group.group_id, target)))
                    self._counts["seeds_retried"] += 1
        ready = [c for c in self.cell_ids if not self._assigns.get(c)]
        batches, retries = self.flow_seeds.due(now, SEED_RETRY_S, ready, self._down)
        messages += [MgmtMessage(batch.source, batch.message()) for batch in batches]
        self._counts["flow_seeds_sent"] += len(batches) - retries
        self._counts["flow_seeds_retried"] += retries
        if self._next_refresh is None or now >= self._next_refresh:
            self._next_refresh = now + PROFILE_REFRESH_S
            messages += [self.profile_table(c, table) for c in self.cell_ids if c not in self._down]
        return messages

    def profile_table(self, cell_id: str, table: GroupTable) -> MgmtMessage:
        """The whole profile table of one cell (``full``: profiles missing from it are gone)."""
        profiles = {g.group_id: g.profile for g in table.naming(cell_id)}
        return MgmtMessage(cell_id, profiles_message(self._epoch, profiles, full=True))

    # --- the repair loop --------------------------------------------------------------------
    def _needing_repair(self, table: GroupTable) -> List[GroupState]:
        return [g for g in table if needs_repair(g, self._down, self._draining)]

    def _repair(
        self,
        groups: Iterable[GroupState],
        now: float,
        table: GroupTable,
        flows: "FlowStateCache",
        action: str,
        cell_id: str,
        kind: str,
    ) -> Tuple[List[Decision], FailoverStats]:
        """Repair ``groups``: GroupMods first, then profile updates, then seed requests."""
        changes: List[OfChange] = []
        updates: Dict[int, MirroringProfile] = {}
        previous: Dict[int, MirroringProfile] = {}
        seeds: List[MgmtMessage] = []
        tally: Dict[str, int] = defaultdict(int)
        for group in list(groups):
            repair = plan_repair(group.profile, group.target_rf, group.pending, self._down, self._draining, self.ring)
            if repair is None:
                tally["unplaced_groups"] += 1
                continue
            old = group.profile
            new = repair.profile
            if new != old:
                changes += table.group_mods(new, group.group_id, Command.MODIFY)
                table.rewrite(group.group_id, new)
                members = flows.relabel_group(old, new, group.group_id)
                lost = self.flow_seeds.group_repaired(group.group_id, new.primary_cell, new.cells)
                if not repair.state_lost:
                    tally["state_lost_flows"] += len(lost)
                updates[group.group_id] = new
                previous[group.group_id] = old
                tally["groups_rewritten"] += 1
                tally["flows_affected"] += group.refcount
                tally["mirrors_added"] += len(repair.added)
                newcomers = [c for c in new.cells if c not in old.cells and c not in self._down]
                if newcomers:
                    self._queue_assigns(
                        newcomers, [(e.key.flow_id, group.group_id, e.key, e.mode) for e in members]
                    )
            if repair.state_lost:
                tally["state_lost_flows"] += group.refcount
            kept = {
                m: wait for m, wait in group.pending.items()
                if m in repair.pending and wait.source == new.primary_cell
            }  # fmt: skip
            for target in repair.pending:
                if target not in kept:
                    kept[target] = PendingSeed(new.primary_cell, now)
                    seeds.append(MgmtMessage(new.primary_cell, seed_message(group.group_id, target)))
            group.pending = kept
            if new.replication_factor - len(kept) < group.target_rf:
                tally["under_replicated_groups"] += 1
        messages = self._profile_updates(updates, previous) + seeds
        for name in ("groups_rewritten", "state_lost_flows"):
            self._counts[name] += tally[name]
        self._counts["seeds_sent"] += len(seeds)
        stats = FailoverStats(
            action, cell_id, kind, now,
            profiles_affected=len(set(previous.values())), ofmsgs=len(changes), mgmt_messages=len(messages),
            seeds_sent=len(seeds), **tally,
        )  # fmt: skip
        if updates:
            self.last_repair = stats
        return [*changes, *messages], stats

    def _profile_updates(
        self, updates: Mapping[int, MirroringProfile], previous: Optional[Mapping[int, MirroringProfile]] = None
    ) -> List[MgmtMessage]:
        """One ``profiles`` message per live cell a group update concerns (members before and after)."""
        if not updates:
            return []
        previous = previous or {}
        self._epoch += 1
        per_cell: Dict[str, Dict[int, MirroringProfile]] = defaultdict(dict)
        for group_id, profile in updates.items():
            old = previous.get(group_id)
            for cell_id in {*profile.cells, *(old.cells if old else ())}:
                per_cell[cell_id][group_id] = profile
        return [
            MgmtMessage(cell_id, profiles_message(self._epoch, profiles, full=False))
            for cell_id, profiles in sorted(per_cell.items())
            if cell_id not in self._down
        ]

