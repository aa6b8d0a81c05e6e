"""The controller's core across switches: cell health, failover, management messages, status views.

``ControlPlane`` ties the failure detector (``prism.control.health``) to the directors
of every switch (``prism.director.core``): heartbeats, ``seeded`` reports and port
status come in, :class:`SwitchChange` and ``MgmtMessage`` go out, in the order
they must be sent. It also answers the REST API's questions with plain dicts.
Nothing here touches a socket or a clock: the Ryu shell does.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from itertools import islice
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple, Union

from prism.director.actions import Decision, MgmtMessage, assign_messages, directory_message
from prism.director.core import MirroringDirector
from prism.director.failover import UnknownCell
from prism.control.health import FailureDetector, FailureKind, HealthChange, HealthSettings
from prism.openflow.changes import OfChange

#: Every cell gets the directory this often, and at once after a health change.
DIRECTORY_REFRESH_S = 5.0
#: Look-ahead of the failure probability shown by default (a flow's typical lifetime).
DEFAULT_RISK_HORIZON_S = 60.0
#: Most flows a flow listing returns.
MAX_FLOWS_LISTED = 10_000
#: Heartbeat fields kept as the cell's last report (shown by the REST API).
REPORT_FIELDS = ("seq", "flows", "primary_pps", "mirror_pps", "replication", "unassigned", "path_down")
#: Most unassigned flow ids of one heartbeat answered (the cells send at most 32).
MAX_UNASSIGNED_ANSWERED = 64
#: Most flows of one ``milestone`` message looked at (the cells send at most 500).
MAX_MILESTONES_ANSWERED = 2_000

Address = Tuple[str, int]


@dataclass(frozen=True)
class SwitchChange:
    """An OpenFlow change for one switch."""

    dp_id: int
    change: OfChange


Outgoing = Union[SwitchChange, MgmtMessage]


class ControlPlane:
    """Health, failover and management traffic for every switch of one controller.

    Args:
        directors: dp_id -> the switch's director.
        now: Current time (start of the cells' observation).
        settings: The failure detector's timing.
        addresses: Cell id -> its management ``(host, port)`` (cells without one get no messages).
        state_interval_s: How often primaries send progress records of ``state`` flows (in the
            directory; None: the cells' default).
        takeover_tolerance_bytes: How far beyond the replicated window a cell taking a ``state``
            flow over accepts its packets (in the directory; None: the cells' default).
        expect_heartbeats: Whether the cells with an address must beat once the controller listens
            (``start_listening``): a cell never heard from is then declared dead.

    The directory also carries ``milestones_s``: every age at which some
    switch's policy re-decides a live flow (the primaries report them).
    Every ``now`` comes from a monotonic clock (``prism.control.health``).
    """

    def __init__(
        self,
        directors: Mapping[int, MirroringDirector],
        now: float,
        settings: Optional[HealthSettings] = None,
        addresses: Optional[Mapping[str, Address]] = None,
        state_interval_s: Optional[float] = None,
        takeover_tolerance_bytes: Optional[int] = None,
        expect_heartbeats: bool = False,
    ) -> None:
        self.directors = dict(directors)
        self.addresses: Dict[str, Address] = dict(addresses or {})
        self.state_interval_s = state_interval_s
        self.takeover_tolerance_bytes = takeover_tolerance_bytes
        self._switches_of: Dict[str, List[int]] = defaultdict(list)
        for dp_id, director in self.directors.items():
            for cell_id in director.cell_ports:
                self._switches_of[cell_id].append(dp_id)
        self.detector = FailureDetector(list(self._switches_of), now, settings,
                                        self.addresses if expect_heartbeats else ())
        self._port_live: Dict[str, bool] = {}
        self._reports: Dict[str, Dict[str, Any]] = {}
        self._directory_epoch = 0
        self._next_directory: Optional[float] = None
        self.counts: Dict[str, int] = defaultdict(int)
        self.health_log: List[HealthChange] = []

    # --- inputs --------------------------------------------------------------------------
    def on_mgmt_message(self, message: Mapping[str, Any], sender: Address, now: float) -> List[Outgoing]:
        """A decoded management datagram from ``sender``; unknown or malformed ones are counted."""
        cell_id = message.get("cell")
        if not isinstance(cell_id, str) or cell_id not in self._switches_of:
            self.counts["mgmt_unknown_sender"] += 1
            return []
        expected = self.addresses.get(cell_id)
        if expected is not None and expected[0] != sender[0]:
            self.counts["mgmt_wrong_address"] += 1
            return []
        kind = message.get("type")
        if kind == "heartbeat":
            self.counts["heartbeats"] += 1
            seq = message.get("seq")
            first_heard = cell_id not in self._reports
            self._reports[cell_id] = {k: message[k] for k in REPORT_FIELDS if k in message}
            seq = seq if isinstance(seq, int) and not isinstance(seq, bool) else None
            out = self._apply(self.detector.on_heartbeat(cell_id, now, seq), now)
            if first_heard and cell_id in self.addresses and not _has_directory_for(out, cell_id):
                # It started after the last directory (or the controller's start-up one went
                # nowhere): until it has one it knows no live peer and replicates nothing.
                out.append(self._directory_to(cell_id))
            return out + self._reassign(cell_id, message.get("unassigned"))
        if kind == "seeded":
            profile_id, target = message.get("profile_id"), message.get("target")
            if not isinstance(profile_id, int) or not isinstance(target, str):
                self.counts["mgmt_malformed"] += 1
                return []
            flows = message.get("flows")
            flows = flows if isinstance(flows, list) else None  # a list: a per-flow seed's, echoed
            self.counts["seeded"] += 1
            out: List[Outgoing] = []
            for dp_id in self._switches_of[cell_id]:
                out += _wrap(dp_id, self.directors[dp_id].on_seeded(cell_id, profile_id, target, now, flows))
            return out
        if kind == "milestone":
            reports = _milestone_reports(message.get("flows"))
            if reports is None:
                self.counts["mgmt_malformed"] += 1
                return []
            self.counts["milestone_messages"] += 1
            out = []
            for dp_id in self._switches_of[cell_id]:
                out += _wrap(dp_id, self.directors[dp_id].on_milestone(cell_id, reports, now))
            return out
        self.counts["mgmt_ignored"] += 1
        return []

    def start_listening(self, now: float) -> None:
        """The management channel is bound: the heartbeat clock of every cell not heard yet starts now."""
        self.detector.start_listening(now)

    def on_port_status(self, dp_id: int, port: int, link_up: bool, now: float,
                       live: Optional[bool] = None) -> List[Outgoing]:  # fmt: skip
        """A switch reported a port's state; only cell ports matter.

        Args:
            dp_id: The switch.
            port: The port number.
            link_up: Link up and not administratively down.
            now: Arrival time.
            live: The port's OpenFlow LIVE flag where it means something (BFD on the cell ports): a
                port whose link is up but is not LIVE cannot carry the cell's traffic. None: as ``link_up``.
        """
        director = self.directors.get(dp_id)
        cell = director.switch.cell_on_port(port) if director is not None else None
        if cell is None:
            return []
        live = link_up if live is None else live and link_up
        self._port_live[cell.id] = live
        if not link_up:
            return self._apply(self.detector.on_link(cell.id, False, now), now)
        if not live:
            asked = (self._reports.get(cell.id) or {}).get("path_down")
            reason = f"port not LIVE: the cell asked to be left out ({asked})" if asked else \
                "port not LIVE: BFD session with the switch down"
            return self._apply(self.detector.on_link(cell.id, False, now, FailureKind.BFD, reason), now)
        return self._apply(self.detector.on_link(cell.id, True, now), now)

    def tick(self, now: float) -> List[Outgoing]:
        """Periodic work: heartbeat timeouts and recoveries, then each director's messages, the directory."""
        out = self._apply(self.detector.tick(now), now)
        for dp_id, director in self.directors.items():
            out += _wrap(dp_id, director.tick(now))
        if self._next_directory is None or now >= self._next_directory:
            out += self.directory(now)
        return out

    def drain(self, cell_id: str, now: float) -> List[Outgoing]:
        """Drain a cell on every switch it is on (UnknownCell if none)."""
        return self._admin(cell_id, now, MirroringDirector.drain_cell)

    def restore(self, cell_id: str, now: float) -> List[Outgoing]:
        """Restore a drained cell on every switch it is on (UnknownCell if none)."""
        return self._admin(cell_id, now, MirroringDirector.restore_cell)

    def directory(self, now: float) -> List[MgmtMessage]:
        """The directory for every cell with a management address."""
        self._directory_epoch += 1
        self._next_directory = now + DIRECTORY_REFRESH_S
        return [self._directory_to(cell_id) for cell_id in sorted(self.addresses)]

    def _directory_to(self, cell_id: str) -> MgmtMessage:
        """The current directory (latest epoch) for one cell."""
        body = directory_message(self._directory_epoch, self.addresses, self.detector.usable_cells)
        body["milestones_s"] = list(self.milestones_s)
        if self.state_interval_s is not None:
            body["state_interval_s"] = self.state_interval_s
        if self.takeover_tolerance_bytes is not None:
            body["takeover_tolerance_bytes"] = self.takeover_tolerance_bytes
        return MgmtMessage(cell_id, body)

    @property
    def milestones_s(self) -> Tuple[float, ...]:
        """Every age (s, ascending) at which some switch's policy re-decides a live flow."""
        return tuple(sorted({age for director in self.directors.values() for age in director.milestones_s}))

    # --- internals ------------------------------------------------------------------------------
    def _reassign(self, cell_id: str, unassigned: Any) -> List[Outgoing]:
        """``assign`` again the flows a cell reports it holds without one (``assign`` is not acknowledged)."""
        if not isinstance(unassigned, list) or not unassigned:
            return []
        flow_ids = [f for f in unassigned[:MAX_UNASSIGNED_ANSWERED] if isinstance(f, int) and not isinstance(f, bool)]
        found = []
        for dp_id in self._switches_of[cell_id]:
            found += self.directors[dp_id].assignments(cell_id, flow_ids)
        self.counts["reassigned"] += len(found)
        return [MgmtMessage(cell_id, body) for body in assign_messages(found)]

    def _admin(self, cell_id: str, now: float, action) -> List[Outgoing]:
        if cell_id not in self._switches_of:
            raise UnknownCell(f"no cell {cell_id!r} (cells: {', '.join(sorted(self._switches_of))})")
        out: List[Outgoing] = []
        for dp_id in self._switches_of[cell_id]:
            out += _wrap(dp_id, action(self.directors[dp_id], cell_id, now))
        return out

    def _apply(self, changes: Iterable[HealthChange], now: float) -> List[Outgoing]:
        out: List[Outgoing] = []
        changed = False
        for change in changes:
            changed = True
            self.health_log = (self.health_log + [change])[-100:]
            for dp_id in self._switches_of[change.cell_id]:
                director = self.directors[dp_id]
                if change.alive:
                    decisions = director.on_cell_up(change.cell_id, now)
                else:
                    decisions = director.on_cell_down(change.cell_id, change.kind.value, now,
                                                      seen_working=change.counted)  # fmt: skip
                out += _wrap(dp_id, decisions)
        if changed:
            out += self.directory(now)
        return out

    # --- views for the REST API -------------------------------------------------------------------
    def cell_ids(self) -> List[str]:
        """Every configured cell id, sorted."""
        return sorted(self._switches_of)

    def status(self, now: float) -> Dict[str, Any]:
        """Counters over all switches, per switch, and the latest failover."""
        switches = {}
        totals: Dict[str, int] = defaultdict(int)
        latest = None
        for dp_id, director in sorted(self.directors.items()):
            counters = director.counters.as_dict()
            counters["drops"] = sum(counters["drops"].values())
            counters["redecisions_refused"] = sum(counters["redecisions_refused"].values())
            counters["flows_active"] = len(director.flows)
            counters["groups_active"] = len(director.groups)
            for name, value in counters.items():
                totals[name] += value
            failover = director.last_failover
            switches[f"{dp_id:016x}"] = {
                **counters,
                "drop_reasons": dict(director.counters.drops),
                "redecisions_refused_reasons": dict(director.counters.redecisions_refused),
                "last_failover": failover.as_dict() if failover else None,
                "last_repair": director.last_repair.as_dict() if director.last_repair else None,
            }
            if failover and (latest is None or failover.at >= latest.at):
                latest = failover
        usable = self.detector.usable_cells
        return {
            **totals,
            "cells_total": len(self._switches_of),
            "cells_alive": len(usable),
            "last_failover": latest.as_dict() if latest else None,
            "mgmt": dict(self.counts),
            "switches": switches,
        }

    def cells(self, now: float, horizon_s: float = DEFAULT_RISK_HORIZON_S) -> List[Dict[str, Any]]:
        """Every cell's health, history, risk and load."""
        return [self.cell(cell_id, now, horizon_s) for cell_id in self.cell_ids()]

    def cell(self, cell_id: str, now: float, horizon_s: float = DEFAULT_RISK_HORIZON_S) -> Dict[str, Any]:
        """One cell's view (UnknownCell if not configured)."""
        if cell_id not in self._switches_of:
            raise UnknownCell(f"no cell {cell_id!r} (cells: {', '.join(sorted(self._switches_of))})")
        health = self.detector.health(cell_id)
        primary = mirror = 0
        switches = []
        draining = False
        for dp_id in self._switches_of[cell_id]:
            director = self.directors[dp_id]
            for group in director.groups.values():
                if group.profile.primary_cell == cell_id:
                    primary += group.refcount
                elif cell_id in group.profile.mirror_cells:
                    mirror += group.refcount
            draining |= cell_id in director.draining_cells
            switches.append(
                {"dp_id": f"{dp_id:016x}", "port": director.cell_ports[cell_id], **director.drain_status(cell_id)}
            )
        address = self.addresses.get(cell_id)
        last = health.last_heartbeat
        return {
            "id": cell_id,
            "state": health.state.value,
            "usable": health.usable and not draining,
            "draining": draining,
            "link_up": health.link_up,
            "port_live": self._port_live.get(cell_id),
            "path_down": (self._reports.get(cell_id) or {}).get("path_down"),
            "heartbeat_seen": health.heartbeat_seen,
            "last_heartbeat_age_s": None if last is None else max(0.0, now - last),
            "heartbeats": health.heartbeats,
            "holddown_s": health.holddown_s,
            "failures": health.failures,
            "failure_history": [record.as_dict(now) for record in health.history],
            "failure_rate_per_hour": self.detector.failure_rate(cell_id, now) * 3600.0,
            "failure_probability": self.detector.failure_probability(cell_id, horizon_s, now),
            "risk_horizon_s": horizon_s,
            "flows_primary": primary,
            "flows_mirror": mirror,
            "mgmt_address": f"{address[0]}:{address[1]}" if address else None,
            "last_report": self._reports.get(cell_id),
            "switches": switches,
        }

    def profiles(self) -> List[Dict[str, Any]]:
        """Every installed profile group on every switch."""
        rows = []
        for dp_id, director in sorted(self.directors.items()):
            for group in director.groups.values():
                rows.append({
                    "dp_id": f"{dp_id:016x}",
                    "profile_id": group.group_id,
                    "group_id": group.group_id,
                    "ff_group_id": group.ff_group_id,
                    "primary_cell": group.profile.primary_cell,
                    "mirror_cells": list(group.profile.mirror_cells),
                    "replication_factor": group.profile.replication_factor,
                    "target_replication_factor": group.target_replication_factor,
                    "replicas_confirmed": len(group.confirmed_mirrors),
                    "pending_mirrors": list(group.pending_mirrors),
                    "refcount": group.refcount,
                })  # fmt: skip
        return rows

    def flows(self, cell_id: Optional[str] = None, limit: int = MAX_FLOWS_LISTED) -> Dict[str, Any]:
        """Flows in the controller's FSC copies, optionally only those naming ``cell_id``."""
        if cell_id is not None and cell_id not in self._switches_of:
            raise UnknownCell(f"no cell {cell_id!r} (cells: {', '.join(sorted(self._switches_of))})")
        rows: List[Dict[str, Any]] = []
        total = 0
        for dp_id, director in sorted(self.directors.items()):
            cache = director.flows
            # counts are O(1) (O(profiles) for one cell); only the rows listed are visited
            total += len(cache) if cell_id is None else cache.count_on_cell(cell_id)
            entries = cache.iter_entries() if cell_id is None else cache.iter_on_cell(cell_id)
            for entry in islice(entries, max(0, limit - len(rows))):
                profile = entry.profile
                row = {
                    "dp_id": f"{dp_id:016x}",
                    "flow_id": f"{entry.flow_id:016x}",
                    "key": str(entry.key),
                    "group_id": entry.group_id,
                    "primary_cell": profile.primary_cell,
                    "mirror_cells": list(profile.mirror_cells),
                    "mode": entry.mode,
                    "seeding": director.flow_seed_targets(entry.flow_id),
                    "created_at": entry.created_at,
                    "last_seen": entry.last_seen,
                }
                if cell_id is not None:
                    row["role"] = "primary" if profile.primary_cell == cell_id else "mirror"
                rows.append(row)
        return {"flows": rows, "total": total, "truncated": total > len(rows)}


def _has_directory_for(outgoing: Iterable[Outgoing], cell_id: str) -> bool:
    return any(isinstance(m, MgmtMessage) and m.type == "directory" and m.cell_id == cell_id for m in outgoing)


def _wrap(dp_id: int, decisions: Iterable[Decision]) -> List[Outgoing]:
    return [d if isinstance(d, MgmtMessage) else SwitchChange(dp_id, d) for d in decisions]


def _milestone_reports(flows: Any) -> Optional[List[tuple]]:
    """``[[flow_id, age_s, packets, bytes(, idle_s, closing)], ...]`` checked; None if it is not a list at all.

    A row gives ``(flow_id, age_s, packets, bytes, idle_s, closing)``, the last two None
    when absent or malformed (``prism.mgmt.protocol``: a longer row's further elements are ignored).

    Malformed rows are skipped; at most MAX_MILESTONES_ANSWERED are kept.
    """
    if not isinstance(flows, list):
        return None
    reports = []
    for row in flows[:MAX_MILESTONES_ANSWERED]:
        if not isinstance(row, list) or len(row) < 4:  # later elements (idle_s, closing) are optional
            continue
        flow_id, age_s, packets, byte_count = row[:4]
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (flow_id, packets, byte_count)):
            continue
        if isinstance(age_s, bool) or not isinstance(age_s, (int, float)) or age_s != age_s or age_s < 0:
            continue
        idle_s = row[4] if len(row) > 4 and _seconds(row[4]) else None
        closing = row[5] if len(row) > 5 and isinstance(row[5], bool) else None
        reports.append((flow_id, float(age_s), packets, byte_count,
                        None if idle_s is None else float(idle_s), closing))  # fmt: skip
    return reports


def _seconds(value: Any) -> bool:
    """A finite number of seconds >= 0 (not a bool)."""
    return (not isinstance(value, bool) and isinstance(value, (int, float))
            and value == value and 0 <= value < float("inf"))  # fmt: skip
