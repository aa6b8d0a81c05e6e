"""The State Mirroring Module: a cell's replication to its flows' mirror cells, seeding, and its heartbeats."""

from __future__ import annotations

import heapq
import logging
import random
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Protocol, Sequence, Set, Tuple, Union

from prism.mgmt import protocol as mgmt
from prism.mgmt.auth import CONTROLLER_SENDER, MgmtAuth
from prism.cell.cell import Cell, TickReport
from prism.cell.conntrack import CLOSING_FACTS
from prism.cell.entry import ConnEntry
from prism.cell.records import StateRecordError, entry_to_wire_record
from prism.cell.smm_channel import (
    ChannelSettings,
    FlushResult,
    PeerChannel,
    ReplicationCounters,
)
from prism.cell.smm_view import DEFAULT_MAX_ASSIGNMENTS, Address, ControlView
from prism.flows.identity import FlowKey

LOG = logging.getLogger(__name__)

#: Records batched per tick at most. Building, encoding and sending one costs
#: about 20-45 us here and merging one at the receiver about as much, so 1000
#: keeps a tick under about 50 ms (heartbeats and frames wait for it) while a
#: cell still replicates 10,000 records per second.
DEFAULT_MAX_RECORDS_PER_TICK = 1000
DEFAULT_MAX_HELD_FLOWS = 100_000
DEFAULT_HOLD_TIMEOUT_S = 30.0
DEFAULT_ASSIGNMENT_GRACE_S = 300.0
#: Decimals of a milestone entry's ``idle_s`` (milliseconds: a tick is 100 ms).
MILESTONE_IDLE_DECIMALS = 3
UNASSIGNED_REPORTED = 32  #: flow ids of held flows listed in a heartbeat
SEED_MEMORY_S = 10.0  #: a repeated seed this soon after completing is answered with ``seeded`` again
#: A ``state`` flow's progress record goes at the next tick once its frames (both
#: directions) grew by more than this share of the takeover tolerance since its
#: last record: a cell taking it over then finds its next packets within the
#: replicated window plus the tolerance, with the rest as margin for one tick.
PROGRESS_TOLERANCE_SHARE = 0.5
#: ... and, if it sent anything since, once this share of its idle timeout
#: (``ConnTracker.idle_timeout``, for its state) has passed since the last_seen
#: its mirrors hold: a mirror expires the flow by its own timers (the same
#: ``Timeouts``), so it learns that the flow lives on well before (the other
#: half is for the record's retries and the interval's lateness).
PROGRESS_REFRESH_SHARE = 0.5
CONTROL_TYPES = frozenset(("directory", "profiles", "assign", "seed", "drain", "restore"))
PEER_TYPES = frozenset(("state", "ack"))  #: from a cell, naming it in ``cell``


class Transport(Protocol):
    """What the SMM needs to send: one datagram to one address (``UdpTransport`` or a test fake)."""

    def sendto(self, datagram: bytes, address: Address) -> bool: ...


@dataclass(frozen=True)
class SmmSettings:
    """The SMM's knobs.

    Attributes:
        heartbeat_interval_s: Period of heartbeats to the controller.
        channel: Batching and retry settings of every peer channel.
        max_records_per_tick: Records batched per tick (and per ack burst) at most.
        max_held_flows: Flows whose changes wait for their ``assign`` at most;
            the oldest is dropped beyond (counted in ``held_dropped``).
        hold_timeout_s: A flow waiting longer than this for its ``assign`` is dropped (counted).
        assignment_grace_s: An assignment is kept this long after its flow left the table.
        max_assignments: Assignments kept at most (the oldest go first beyond).
    """

    heartbeat_interval_s: float = mgmt.HEARTBEAT_INTERVAL_S
    channel: ChannelSettings = field(default_factory=ChannelSettings)
    max_records_per_tick: int = DEFAULT_MAX_RECORDS_PER_TICK
    max_held_flows: int = DEFAULT_MAX_HELD_FLOWS
    hold_timeout_s: float = DEFAULT_HOLD_TIMEOUT_S
    assignment_grace_s: float = DEFAULT_ASSIGNMENT_GRACE_S
    max_assignments: int = DEFAULT_MAX_ASSIGNMENTS

    def __post_init__(self) -> None:
        if self.heartbeat_interval_s <= 0:
            raise ValueError(f"heartbeat_interval_s must be positive, not {self.heartbeat_interval_s}")
        if self.max_records_per_tick < 1 or self.max_held_flows < 1:
            raise ValueError("max_records_per_tick and max_held_flows must be at least 1")


SeedKey = Tuple[int, str, Optional[Tuple[int, ...]]]
"""A seed request: profile id, target, and the flows it lists (None: the whole profile)."""


class SeedOp:
    """One ``seed`` request in progress: the flows of a profile not yet acknowledged by the target.

    ``requested`` is the request's ``flows`` list as it came (None: the whole
    profile), echoed in ``seeded``.
    """

    __slots__ = ("op_id", "profile_id", "target", "pending", "flows", "started", "requested")

    def __init__(self, op_id: int, profile_id: int, target: str, keys: Iterable[FlowKey],
                 now: float, requested: Optional[List[int]] = None) -> None:  # fmt: skip
        self.op_id = op_id
        self.profile_id = profile_id
        self.target = target
        self.pending: Set[FlowKey] = set(keys)
        self.flows = len(self.pending)
        self.started = now
        self.requested = requested


class ProgressMark:
    """A ``state`` flow's entry here (None: not seen yet), its counters and last_seen at its last
    record (what its mirrors hold), and when the flow is looked at next."""

    __slots__ = ("entry", "packets", "bytes", "seen", "due")

    def __init__(self, entry: Optional[ConnEntry], due: float) -> None:
        self.entry = entry
        self.packets = entry.primary_packets if entry is not None else 0
        self.bytes = entry.primary_bytes if entry is not None else 0
        self.seen = entry.last_seen if entry is not None else 0.0
        self.due = due


class StateMirroringModule:
    """Replicates a cell's flow state to the flows' mirror cells; seeds new mirrors; beats.

    Pure apart from ``transport.sendto``: time comes in as ``now``. Wire it to
    a cell with ``cell.add_tick_hook(smm.tick_hook)``, feed it every datagram
    of the management socket (``on_datagram``) and call ``heartbeat`` on a
    timer (``prism.cell.smm_io.attach`` does all three).

    What is replicated, and when: at every tick, each flow whose version grew
    (``TickReport.changed``: this cell received its primary copies and its
    facts, token or verdict changed) is queued for every other live cell of
    the flow's profile; a flow that expired here as its primary is queued as
    a removal record (not a ``state`` flow: see below). A flow whose ``assign`` or profile has not arrived, or
    any flow before the first ``directory`` (who is live is not known yet),
    waits (at most ``max_held_flows``, ``hold_timeout_s``). Records are built
    at flush time (latest state), batched per peer under ``max_datagram``, compressed,
    sequence-numbered, acknowledged and retried (``PeerChannel``). A ``seed``
    queues every flow of the profile (or the flows it lists) for the target,
    tagged; ``seeded`` goes to the controller once the target acknowledged
    them all.

    State mode (``assign`` with mode ``state``): the mirrors see only the
    flow's SYN/FIN/RST copies, so a flow gets a new version
    (``ConnTracker.note_progress``) and its record is queued like a change
    (sequence positions and windows, counters, last_seen, token, verdict)
    only when its mirrors need one (``_send_progress``): it moved more than
    half the directory's ``takeover_tolerance_bytes``, or half its idle
    timeout passed since the last_seen they hold. Its expiry sends no
    removal record (its mirrors' timers expire it). Milestones: each flow
    this cell forwards is reported to the controller (``milestone``) once per
    age in the directory's ``milestones_s`` it crosses here, with its idle
    time and whether it is closing. See ``prism.mgmt.protocol`` for both messages and
    for what a takeover may lose.

    Args:
        cell: The cell (its tracker, its packet counters).
        transport: Sends datagrams.
        controller: The controller's management address, or a list of them when several
            controllers share the network (each gets the heartbeats and reports; control
            messages are accepted from any of them); None: no heartbeats, control messages
            accepted from anyone.
        settings: Knobs.
        rng: Randomness (first sequence numbers).
        auth: Seals what the SMM sends and opens what it receives
            (``prism.mgmt.auth``); then control messages are taken only from
            ``CONTROLLER_SENDER``, ``state`` only from a live peer and only
            for flows of profiles it belongs to, ``ack`` only for the sender's
            own channel. None (benchmarks and replication tests only): plain
            ``prism.mgmt.protocol`` datagrams, the claimed ``cell`` trusted. ``prism
            cell`` always authenticates.
    """

    def __init__(self, cell: Cell, transport: Transport,
                 controller: Union[Address, Sequence[Address], None] = None,
                 settings: Optional[SmmSettings] = None,
                 rng: Optional[random.Random] = None, auth: Optional[MgmtAuth] = None) -> None:  # fmt: skip
        self.cell = cell
        self.cell_id = cell.cell_id
        self.tracker = cell.tracker
        self.transport = transport
        if controller is None:
            self.controllers: Tuple[Address, ...] = ()
        elif isinstance(controller[0], str):
            self.controllers = (tuple(controller),)
        else:
            self.controllers = tuple(tuple(c) for c in controller)
        self.controller = self.controllers[0] if self.controllers else None
        self._controller_hosts = {c[0] for c in self.controllers}
        self.settings = settings or SmmSettings()
        self._rng = rng or random.Random()
        self.auth = auth
        self.counters = ReplicationCounters()
        self.view = ControlView(self.cell_id, self.settings.assignment_grace_s, self.settings.max_assignments)
        self._held: "OrderedDict[int, Tuple[FlowKey, float]]" = OrderedDict()
        self.channels: Dict[str, PeerChannel] = {}
        self._flush_turn = 0
        self._seeds: Dict[SeedKey, SeedOp] = {}
        self._seeds_by_id: Dict[int, SeedOp] = {}
        self._seeds_done: Dict[SeedKey, Tuple[float, int]] = {}
        #: ``state`` flows by id (assigned so): their progress marks.
        self._state_flows: Dict[int, ProgressMark] = {}
        #: Milestone schedule: (due time, flow id), and per scheduled flow the
        #: next milestone's index and the first_seen it was computed from.
        self._milestone_heap: List[Tuple[float, int]] = []
        self._milestone_next: Dict[int, Tuple[int, float]] = {}
        self._next_op = 1
        self.heartbeat_seq = 0
        #: Fields the cell adds to every heartbeat (e.g. ``path_down`` while it asks the switch to stop using it).
        self.extra_report: Dict[str, Any] = {}
        self._last_beat: Optional[Tuple[float, int, int]] = None
        self._handlers: Dict[str, Callable[[Mapping, Address, float], None]] = {
            "state": self._on_state, "ack": self._on_ack, "directory": self._on_directory,
            "profiles": self._on_profiles, "assign": self._on_assign, "seed": self._on_seed,
            "drain": self._on_admin, "restore": self._on_admin,
        }  # fmt: skip

    # -- the cell's tick -------------------------------------------------------------------
    def tick_hook(self, cell: Cell, report: TickReport) -> None:
        """``Cell.add_tick_hook`` adapter."""
        self.on_tick(report.now, report.changed, report.expired)

    def on_tick(self, now: float, changed: Sequence[FlowKey] = (),
                expired: Sequence[FlowKey] = ()) -> None:  # fmt: skip
        """Queue this tick's changes and removals, retry, then send (bounded).

        Args:
            now: Current time in seconds.
            changed: Flows whose version grew since the last tick.
            expired: Flows removed from the table since the last tick.
        """
        state_flows, milestones = self._state_flows, self.view.milestones_s
        for key in changed:
            self._route(key, now)
            if state_flows and key.flow_id in state_flows:
                self._mark_sent(key, now)
            if milestones:
                self._schedule_milestones(key, now)
        for key in expired:
            if self._removal_needed(key):
                self._route(key, now)
            self.view.flow_gone(key.flow_id, now)
        if state_flows:
            self._send_progress(now)
        if self._milestone_heap:
            self._report_milestones(now)
        self._drop_stale_held(now)
        for peer_id, channel in self.channels.items():
            address = self.view.address_of(peer_id)
            if address is not None and channel.in_flight:
                channel.retry(now, self._sender(address, now))
        self._flush(now, self.settings.max_records_per_tick)
        self.view.prune(now, self._present)

    def _removal_needed(self, key: FlowKey) -> bool:
        """An expired flow's removal record goes to its mirrors if this cell, its primary, removed it,
        unless the flow is in ``state`` mode: its mirrors hold its facts (change records, the FIN/RST
        copies) and a last_seen never later than this cell's, so their own timers (the same
        ``Timeouts``) expire it no later than this cell did (``prism.mgmt.protocol``, "Mirroring modes")."""
        if self.tracker.removal_version(key) is None or not self.view.is_primary(key.flow_id):
            return False
        if self.view.mode_of(key.flow_id) == mgmt.MODE_STATE:
            self.counters.removals_skipped += 1
            return False
        return True

    # -- state mode: progress records -----------------------------------------------------
    def _mark_sent(self, key: FlowKey, now: float) -> None:
        """A record of a ``state`` flow is on its way: its next progress record is due an interval later."""
        self._state_flows[key.flow_id] = ProgressMark(self.tracker.get(key), now + self.view.state_interval_s)

    def _send_progress(self, now: float) -> None:
        """Version and queue the ``state`` flows whose mirrors need a progress record now.

        A flow's progress record goes (``prism.mgmt.protocol``, "Mirroring modes"):
        at the next tick once its frames grew by more than
        ``PROGRESS_TOLERANCE_SHARE`` of the takeover tolerance since its last
        record (so that a cell taking it over finds its next packets within
        reach); and, if it sent anything since its last record, once
        ``PROGRESS_REFRESH_SHARE`` of its idle timeout has passed since the
        last_seen its mirrors hold (so that they do not expire it). Nothing
        else: counters and last_seen of a slow flow may lag that long at its
        mirrors. A flow is looked at every ``state_interval_s`` (its entry
        looked up again: it may have expired, or a new connection taken its
        key); between two looks the scan touches one attribute of it per tick.
        """
        tracker, view = self.tracker, self.view
        interval = view.state_interval_s
        early = int(view.takeover_tolerance_bytes * PROGRESS_TOLERANCE_SHARE)
        gone = []
        for flow_id, mark in self._state_flows.items():
            entry = mark.entry
            if now < mark.due:
                if entry is None or entry.primary_bytes - mark.bytes <= early:
                    continue
            else:
                key = tracker.key_of(flow_id)
                current = tracker.get(key) if key is not None else None
                if current is None and view.mode_of(flow_id) is None:
                    gone.append(flow_id)  # assignment forgotten: the flow is long gone
                    continue
                if current is not entry:  # seen, expired or replaced since: bind the current entry
                    self._state_flows[flow_id] = ProgressMark(current, now + interval)
                    continue
                mark.due = now + interval
                if entry is None or entry.primary_packets == mark.packets:
                    continue
                moved = entry.primary_bytes - mark.bytes > early
                if not moved and now < mark.seen + tracker.idle_timeout(entry) * PROGRESS_REFRESH_SHARE:
                    continue
            mark.packets, mark.bytes, mark.seen = entry.primary_packets, entry.primary_bytes, entry.last_seen
            mark.due = now + interval
            tracker.note_progress(entry.key)
            self.counters.progress_records += 1
            self._route(entry.key, now)
        for flow_id in gone:
            del self._state_flows[flow_id]

    # -- milestones ------------------------------------------------------------------------
    def _schedule_milestones(self, key: FlowKey, now: float) -> None:
        """Schedule a flow this cell forwards for the milestones still ahead of its age (once per connection)."""
        entry = self.tracker.get(key)
        if entry is None or not entry.primary_packets:
            return
        scheduled = self._milestone_next.get(key.flow_id)
        if scheduled is not None and scheduled[1] == entry.first_seen:
            return  # already scheduled (an older heap item of a previous connection finds this one)
        milestones = self.view.milestones_s
        age = now - entry.first_seen
        index = 0
        while index < len(milestones) and milestones[index] <= age:
            index += 1  # crossed before this cell forwarded it (a takeover): its primary reported it
        if index == len(milestones):
            return
        self._milestone_next[key.flow_id] = (index, entry.first_seen)
        heapq.heappush(self._milestone_heap, (entry.first_seen + milestones[index], key.flow_id))

    def _report_milestones(self, now: float) -> None:
        """Report the flows whose age crossed a milestone since the last tick (``milestone``)."""
        heap, schedule, milestones = self._milestone_heap, self._milestone_next, self.view.milestones_s
        tracker, view = self.tracker, self.view
        reports = []
        while heap and heap[0][0] <= now:
            _, flow_id = heapq.heappop(heap)
            scheduled = schedule.pop(flow_id, None)
            key = tracker.key_of(flow_id)
            entry = tracker.get(key) if key is not None else None
            if scheduled is None or entry is None:
                continue
            index, first_seen = scheduled
            if entry.first_seen != first_seen:  # a new connection on the key: start again
                self._schedule_milestones(key, now)
                continue
            if view.other_primary(flow_id) or not entry.primary_packets:
                continue  # another live cell forwards it now: that one reports
            age = now - first_seen
            idle = round(max(now - entry.last_seen, 0.0), MILESTONE_IDLE_DECIMALS)
            closing = bool(entry.facts & CLOSING_FACTS) if entry.is_tcp else False
            while index < len(milestones) and milestones[index] <= age:
                reports.append([flow_id, milestones[index], entry.packets, entry.bytes, idle, closing])
                index += 1
            if index < len(milestones):
                schedule[flow_id] = (index, first_seen)
                heapq.heappush(heap, (first_seen + milestones[index], flow_id))
        if reports and self.controllers:
            self.counters.milestones_reported += len(reports)
            limit = mgmt.MAX_MILESTONES_PER_MESSAGE
            for start in range(0, len(reports), limit):
                datagram = mgmt.encode({"type": "milestone", "cell": self.cell_id,
                                        "flows": reports[start:start + limit]})  # fmt: skip
                for controller in self.controllers:  # each acts only for the switches it masters
                    self._send(datagram, controller, now)

    def _reschedule_milestones(self, now: float) -> None:
        """The directory changed the milestones: schedule every flow forwarded here afresh."""
        self._milestone_heap.clear()
        self._milestone_next.clear()
        if self.view.milestones_s:
            for entry in self.tracker:
                if entry.primary_packets:
                    self._schedule_milestones(entry.key, now)

    def _present(self, flow_id: int) -> bool:
        return flow_id in self._held or self.tracker.key_of(flow_id) is not None

    def _route(self, key: FlowKey, now: float) -> None:
        """Queue ``key`` for the other live cells of its profile, or hold it until assigned."""
        peers = self.view.peers_of(key.flow_id)
        if peers is None:
            self._hold(key.flow_id, key, now)
            return
        for cell_id in peers:
            self._channel(cell_id).queue(key)

    def _hold(self, flow_id: int, key: FlowKey, now: float) -> None:
        if flow_id in self._held:
            return
        self._held[flow_id] = (key, now)
        if len(self._held) > self.settings.max_held_flows:
            self._held.popitem(last=False)
            self.counters.held_dropped += 1

    def _drop_stale_held(self, now: float) -> None:
        limit = now - self.settings.hold_timeout_s
        while self._held:
            flow_id, (_, since) = next(iter(self._held.items()))
            if since > limit:
                return
            del self._held[flow_id]
            self.counters.held_dropped += 1

    def _release_held(self, now: float, flow_ids: Optional[Iterable[int]] = None) -> None:
        """Route held flows (all, or those of ``flow_ids``) whose assignment and profile are now known."""
        held = self._held
        if flow_ids is None:
            candidates = [(flow_id, key) for flow_id, (key, _) in held.items()]
        else:
            candidates = [(flow_id, held[flow_id][0]) for flow_id in flow_ids if flow_id in held]
        ready = [key for flow_id, key in candidates if self.view.profile_of(flow_id)]
        for key in ready:
            del self._held[key.flow_id]
            self._route(key, now)

    def _channel(self, peer_id: str) -> PeerChannel:
        channel = self.channels.get(peer_id)
        if channel is None:
            first_seq = self._rng.randrange(1, 1 << 30)
            channel = PeerChannel(self.cell_id, peer_id, self.settings.channel, self.counters, first_seq)
            self.channels[peer_id] = channel
        return channel

    def _sender(self, address: Address, now: float) -> Callable[[bytes], bool]:
        sendto, auth = self.transport.sendto, self.auth
        if auth is None:
            return lambda datagram: sendto(datagram, address)
        return lambda datagram: sendto(auth.seal(datagram, now), address)

    def _flush(self, now: float, budget: int) -> None:
        """Send queued records, peers taking turns at going first (none starves under load)."""
        peers = list(self.channels.items())
        if not peers:
            return
        self._flush_turn = (self._flush_turn + 1) % len(peers)
        for peer_id, channel in peers[self._flush_turn:] + peers[:self._flush_turn]:
            if budget <= 0:
                return
            address = self.view.address_of(peer_id)
            if address is None or not channel.queued:
                continue
            result = channel.flush(now, self._records_of, self._sender(address, now), budget)
            budget -= result.records + len(result.skipped)
            self._settle_skipped(result, now)

    def _records_of(self, keys: Sequence[FlowKey]) -> List[Tuple[FlowKey, Optional[dict]]]:
        """Each key's current record: its entry, else its removal, else None."""
        tracker, built = self.tracker, []
        for key in keys:
            entry = tracker.get(key)
            if entry is not None:
                built.append((key, entry_to_wire_record(entry)))
            else:
                built.append((key, tracker.removal(key, wire=True)))
        return built

    # -- datagrams -------------------------------------------------------------------------
    def on_datagram(self, datagram: bytes, source: Address, now: float) -> None:
        """Handle one datagram from the management socket (never raises on bad input)."""
        if self.auth is None:
            message = mgmt.decode(datagram)
            sender = message.get("cell") if message is not None else None
        else:
            opened = self.auth.open(datagram, now)
            message, sender = (None, None) if opened is None else (opened[1], opened[0])
        if message is None:
            self.counters.bad_datagrams += 1
            return
        kind = message["type"]
        if kind in CONTROL_TYPES and (self.controllers and source[0] not in self._controller_hosts
                                      or self.auth is not None and sender != CONTROLLER_SENDER):
            self.counters.foreign_messages += 1
            return
        if kind in PEER_TYPES and (not isinstance(sender, str) or sender == CONTROLLER_SENDER
                                   or message.get("cell") != sender):
            self.counters.foreign_messages += 1
            return
        handler = self._handlers.get(kind)
        if handler is None:  # heartbeat, seeded: not for a cell
            self.counters.bad_messages += 1
            return
        try:
            handler(message, source, now)
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            self.counters.bad_messages += 1
            LOG.debug("cell %s: bad %s message from %s: %s", self.cell_id, kind, source, error)

    def _on_state(self, message: Mapping, source: Address, now: float) -> None:
        seq = message["seq"]
        records = message["records"]
        if not isinstance(seq, int) or not isinstance(records, list):
            raise ValueError("state needs an integer seq and a list of records")
        sender = message["cell"]
        if self.auth is not None:
            if sender not in self.view.live:  # before the first directory nobody is known live
                self.counters.foreign_messages += 1  # not acknowledged: it retries once it is live
                return
            kept = [record for record in records if self._may_write(sender, record)]
            self.counters.records_refused += len(records) - len(kept)
            records = kept
        self.counters.batches_received += 1
        self.counters.records_received += len(records)
        try:
            applied = self.tracker.merge(records, now)
        except StateRecordError as error:  # resending will not help: acknowledge, count, log
            self.counters.rejected_batches += 1
            LOG.warning("cell %s: refused a state batch from %s: %s",
                        self.cell_id, message.get("cell"), error)  # fmt: skip
            applied = 0
        else:
            self.counters.records_ignored += len(records) - applied
        self.counters.records_applied += applied
        self._send(mgmt.encode({"type": "ack", "cell": self.cell_id, "seq": seq}), source, now)
        self.counters.acks_sent += 1

    def _may_write(self, sender: str, record: Any) -> bool:
        """A record ``sender`` may write here: its flow's profile (when known here) includes the sender.

        A flow whose assignment has not arrived yet is taken from any live
        peer (the ``assign`` to the cells of a profile goes out in one tick,
        but datagrams race); its record then goes through the usual checks.
        """
        if not isinstance(record, dict) or not isinstance(record.get("flow_id"), int):
            return False
        profile = self.view.profile_of(record["flow_id"])
        return profile is None or sender == profile.primary_cell or sender in profile.mirror_cells

    def _on_ack(self, message: Mapping, source: Address, now: float) -> None:
        channel = self.channels.get(message["cell"])
        seq = message["seq"]
        if channel is None or not isinstance(seq, int):
            self.counters.unknown_acks += 1
            return
        batch = channel.on_ack(seq)
        if batch is None:
            return
        for key, tag in zip(batch.keys, batch.tags):
            if tag is not None:
                self._seed_progress(tag, key, now)
        if channel.queued:  # acks clock the next batches out, within the tick's budget
            address = self.view.address_of(channel.peer_id)
            if address is not None:
                result = channel.flush(now, self._records_of, self._sender(address, now),
                                       batch.records * 2)  # fmt: skip
                self._settle_skipped(result, now)

    def _settle_skipped(self, result: FlushResult, now: float) -> None:
        for key, tag in result.skipped:
            if tag is not None:
                self._seed_progress(tag, key, now)

    # -- control messages from the controller ---------------------------------------------
    def _on_directory(self, message: Mapping, source: Address, now: float) -> None:
        milestones = self.view.milestones_s
        if not self._applied(self.view.apply_directory(message)):
            return
        self.tracker.set_takeover_tolerance(self.view.takeover_tolerance_bytes)
        if self.view.milestones_s != milestones:
            self._reschedule_milestones(now)
        for peer_id in [peer for peer in self.channels if peer not in self.view.live]:
            for key, tag in self.channels.pop(peer_id).abandon():
                self._seed_progress(tag, key, now, abandoned=True)
        self._release_held(now)
        self._flush(now, self.settings.max_records_per_tick)

    def _on_profiles(self, message: Mapping, source: Address, now: float) -> None:
        if self._applied(self.view.apply_profiles(message)):
            self._release_held(now)

    def _on_assign(self, message: Mapping, source: Address, now: float) -> None:
        state_flows = self._state_flows
        for flow_id, mode in self.view.apply_assign(message, now):
            if mode == mgmt.MODE_STATE:
                if flow_id not in state_flows:
                    key = self.tracker.key_of(flow_id)
                    entry = self.tracker.get(key) if key is not None else None
                    state_flows[flow_id] = ProgressMark(entry, now + self.view.state_interval_s)
            else:
                state_flows.pop(flow_id, None)
        if self._held:
            self._release_held(now, (int(flow[0]) for flow in message["flows"]))

    def _applied(self, applied: bool) -> bool:
        self.counters.stale_control = self.view.stale_messages
        self.counters.stale_generation = self.view.stale_generations
        return applied

    def _on_admin(self, message: Mapping, source: Address, now: float) -> None:
        LOG.info("cell %s: the controller announces %s of %s", self.cell_id, message["type"],
                 message.get("target"))  # fmt: skip

    # -- seeding ---------------------------------------------------------------------------
    def _on_seed(self, message: Mapping, source: Address, now: float) -> None:
        profile_id, target = int(message["profile_id"]), str(message["target"])
        if target == self.cell_id:
            raise ValueError("a cell cannot seed itself")
        requested = message.get("flows")
        if requested is not None:
            if not isinstance(requested, list) or not all(
                    isinstance(flow_id, int) and not isinstance(flow_id, bool) for flow_id in requested):
                raise ValueError("seed flows must be a list of flow ids")
            flow_ids: Iterable[int] = requested
        else:
            flow_ids = self.view.flows_of(profile_id)
        op_key = (profile_id, target, None if requested is None else tuple(requested))
        if op_key in self._seeds:
            return  # in progress: the controller asked again before our answer
        done = self._seeds_done.get(op_key)
        if done is not None and now - done[0] < SEED_MEMORY_S:
            self._send_seeded(profile_id, target, done[1], now, requested)  # our answer was lost
            return
        key_of = self.tracker.key_of
        keys = [key for key in map(key_of, flow_ids) if key is not None]
        op = SeedOp(self._next_op, profile_id, target, keys, now, requested)
        self._next_op += 1
        self.counters.snapshots_sent += 1
        if not keys:
            self._complete_seed(op, now)
            return
        self._seeds[op_key] = op
        self._seeds_by_id[op.op_id] = op
        channel = self._channel(target)
        for key in keys:
            channel.queue(key, op.op_id)
        self._flush(now, self.settings.max_records_per_tick)

    def _seed_progress(self, op_id: int, key: FlowKey, now: float, abandoned: bool = False) -> None:
        op = self._seeds_by_id.get(op_id)
        if op is None:
            return
        if abandoned:
            del self._seeds_by_id[op_id]
            del self._seeds[_seed_key(op)]
            self.counters.seeds_abandoned += 1
            return
        op.pending.discard(key)
        if not op.pending:
            del self._seeds_by_id[op_id]
            del self._seeds[_seed_key(op)]
            self._complete_seed(op, now)

    def _complete_seed(self, op: SeedOp, now: float) -> None:
        self.counters.seeds_completed += 1
        self._seeds_done[_seed_key(op)] = (now, op.flows)
        for op_key in [k for k, (at, _) in self._seeds_done.items() if now - at >= SEED_MEMORY_S]:
            del self._seeds_done[op_key]
        self._send_seeded(op.profile_id, op.target, op.flows, now, op.requested)

    def _send_seeded(self, profile_id: int, target: str, flows: int, now: float,
                     requested: Optional[List[int]] = None) -> None:  # fmt: skip
        """``seeded`` to every controller: ``flows`` the count for a whole profile, else the list and ``count``."""
        message = {"type": "seeded", "cell": self.cell_id, "profile_id": profile_id, "target": target,
                   "flows": flows}  # fmt: skip
        if requested is not None:
            message["flows"], message["count"] = requested, flows
        datagram = mgmt.encode(message)
        for controller in self.controllers:
            self._send(datagram, controller, now)

    # -- heartbeats ------------------------------------------------------------------------
    def heartbeat(self, now: float) -> None:
        """Send one heartbeat to the controller (call every ``heartbeat_interval_s``)."""
        if self.controller is None:
            return
        cell = self.cell
        primary, mirror = cell.primary_packets, cell.mirror_packets
        primary_pps = mirror_pps = 0.0
        if self._last_beat is not None:
            elapsed = now - self._last_beat[0]
            if elapsed > 0:
                primary_pps = (primary - self._last_beat[1]) / elapsed
                mirror_pps = (mirror - self._last_beat[2]) / elapsed
        self._last_beat = (now, primary, mirror)
        self.heartbeat_seq += 1
        message = {
            "type": "heartbeat", "cell": self.cell_id, "seq": self.heartbeat_seq,
            "flows": len(self.tracker), "primary_pps": round(primary_pps, 1),
            "mirror_pps": round(mirror_pps, 1), "replication": self.replication_counters(),
            "unassigned": [flow_id for flow_id, _ in zip(self._held, range(UNASSIGNED_REPORTED))],
            **self.extra_report,
        }  # fmt: skip
        datagram = mgmt.encode(message)
        for controller in self.controllers:
            self._send(datagram, controller, now)

    def _send(self, datagram: bytes, address: Address, now: float) -> None:
        if self.auth is not None:
            datagram = self.auth.seal(datagram, now)
        if not self.transport.sendto(datagram, address):
            self.counters.send_errors += 1

    # -- reporting -------------------------------------------------------------------------
    def replication_counters(self) -> Dict[str, int]:
        """Counters plus the current held/queued/in-flight totals."""
        counters = self.counters.as_dict()
        counters["held_flows"] = len(self._held)
        counters["queued_records"] = sum(len(c.queued) for c in self.channels.values())
        counters["in_flight_batches"] = sum(len(c.in_flight) for c in self.channels.values())
        counters["seeds_in_progress"] = len(self._seeds)
        counters["assignments_evicted"] = self.view.assignments_evicted
        if self.auth is not None:
            counters.update({f"auth_{name}": value for name, value in self.auth.counters.as_dict().items()})
        return counters

    def describe(self) -> Dict[str, Any]:
        """The SMM's part of the cell's state document."""
        return {
            "controller": list(self.controller) if self.controller else None,
            "controllers": [list(c) for c in self.controllers],
            "counters": self.replication_counters(),
            "live": sorted(self.view.live),
            "profiles": len(self.view.profiles),
            "assignments": self.view.assignments,
            "peers": {peer_id: channel.describe() for peer_id, channel in sorted(self.channels.items())},
            "seeds": [{"profile_id": op.profile_id, "target": op.target, "flows": op.flows,
                       "pending": len(op.pending)} for op in self._seeds.values()],  # fmt: skip
            "heartbeat_seq": self.heartbeat_seq,
            "generation": self.view.generation,
            "state_flows": len(self._state_flows),
            "milestones_s": list(self.view.milestones_s),
            "milestones_scheduled": len(self._milestone_next),
            "state_interval_s": self.view.state_interval_s,
            "takeover_tolerance_bytes": self.view.takeover_tolerance_bytes,
        }


def _seed_key(op: SeedOp) -> SeedKey:
    return op.profile_id, op.target, None if op.requested is None else tuple(op.requested)
