"""The cell's packet logic: a frame is a primary copy (track, then forward or drop) or a mirror copy (track only)."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

from prism.cell.conntrack import FORWARD, ConnTracker
from prism.flows.identity import FlowKey, PacketInfo, mac_to_bytes, mac_to_str, parse_frame
from prism.openflow.changes import MIRROR_MAC

LOG = logging.getLogger(__name__)

#: How often ``tick`` begins a scan of the table for idle flows (the scan is O(flows)).
EXPIRE_INTERVAL_S = 1.0
#: Flows one tick checks for idleness at most: a scan of a large table is spread over
#: several ticks (at 10^6 flows the loop's longest pause went from 1.9 s to 36 ms,
#: ``benchmarks/cell_expiry.py``).
EXPIRE_SLICE = 10_000


#: Digits in a parser reason, collapsed so that reasons stay a small set of keys.
_DIGITS = re.compile(r"\d+")


@dataclass(frozen=True)
class TickReport:
    """What changed since the previous tick.

    Attributes:
        now: Time of this tick.
        changed: Flows whose version grew (what a State Mirroring Module replicates).
        expired: Flows removed for idleness.
    """

    now: float
    changed: Tuple[FlowKey, ...]
    expired: Tuple[FlowKey, ...]


TickHook = Callable[["Cell", TickReport], None]


def _bump(counts: Dict[str, int], reason: str) -> None:
    counts[reason] = counts.get(reason, 0) + 1


class Cell:
    """One cell: its connection tracker and what it did with every frame.

    No sockets here: ``handle_frame`` takes bytes and the time and says
    whether to send the frame back out; ``prism.cell.loop`` does the I/O.
    Periodic work (expiry now; replication and heartbeats in the State
    Mirroring Module) hooks in through ``add_tick_hook``: each tick reports
    the flows whose version grew and the flows that expired since the
    previous tick.

    Args:
        cell_id: The cell's id (as in the configuration).
        tracker: Its connection tracker (default: loose, default limits).
        mirror_mac: Destination MAC that marks mirror copies.
        expire_interval_s: Minimum time between two expiry scans.
    """

    def __init__(self, cell_id: str, tracker: Optional[ConnTracker] = None,
                 mirror_mac: str = MIRROR_MAC,
                 expire_interval_s: float = EXPIRE_INTERVAL_S) -> None:  # fmt: skip
        self.cell_id = cell_id
        self.tracker = tracker if tracker is not None else ConnTracker()
        self._process = self.tracker.process  # bound once: the hot path calls it per frame
        self.mirror_mac = mac_to_str(mac_to_bytes(mirror_mac))  # canonical lower-case text
        self.expire_interval_s = expire_interval_s
        self._next_expiry: Optional[float] = None
        self._tick_hooks: List[TickHook] = []
        self.frames = 0  #: frames received
        self.primary_packets = 0  #: flow packets not marked as mirror copies
        self.mirror_packets = 0  #: flow packets marked as mirror copies
        self.forwarded = 0  #: primary copies sent back out (counted by the I/O loop)
        self.dropped = 0  #: primary copies the tracker refused
        self.ignored = 0  #: frames that are not flow packets (ARP ...)
        self.send_errors = 0
        self.recv_errors = 0
        self.errors = 0  #: frames whose handling raised (a bug; the cell carries on)
        self.hook_errors = 0
        self.dropped_by_reason: Dict[str, int] = {}
        self.ignored_by_reason: Dict[str, int] = {}
        self.errors_by_reason: Dict[str, int] = {}

    # -- the hot path ----------------------------------------------------------------
    def handle_frame(self, frame: bytes, now: float) -> bool:
        """Track one received frame.

        Args:
            frame: The Ethernet frame as received.
            now: Current time in seconds.

        Returns:
            True if the frame must be sent back out unchanged (a primary copy
            that passed); False if it was absorbed, dropped or ignored.
        """
        self.frames += 1
        info = parse_frame(frame)
        if info.__class__ is not PacketInfo:
            self.ignored += 1
            # numbers in a reason would make one key per crafted packet
            _bump(self.ignored_by_reason, _DIGITS.sub("N", info.reason.split(":", 1)[0]))
            return False
        if info.eth_dst == self.mirror_mac:
            self.mirror_packets += 1
            self._process(info, True, now)
            return False
        self.primary_packets += 1
        verdict = self._process(info, False, now)
        if verdict is FORWARD:
            return True
        self.dropped += 1
        _bump(self.dropped_by_reason, verdict.reason)
        return False

    def count_error(self, error: BaseException) -> None:
        """Count a frame whose handling raised; logs the first of each kind."""
        self.errors += 1
        kind = type(error).__name__
        if kind not in self.errors_by_reason:
            LOG.exception("cell %s: error handling a frame (counted, not fatal)", self.cell_id)
        _bump(self.errors_by_reason, kind)

    # -- periodic work -------------------------------------------------------------------
    def add_tick_hook(self, hook: TickHook) -> None:
        """Call ``hook(cell, report)`` on every tick (after expiry)."""
        self._tick_hooks.append(hook)

    def tick(self, now: float) -> TickReport:
        """Periodic work: expire idle flows, then run the hooks.

        A scan of the table begins every ``expire_interval_s`` and checks
        ``EXPIRE_SLICE`` flows per tick until it has seen them all.

        Args:
            now: Current time in seconds.

        Returns:
            The report the hooks received.
        """
        expired: List[FlowKey] = []
        if self.tracker.sweeping:
            expired = self.tracker.expire(now, EXPIRE_SLICE)
        elif self._next_expiry is None or now >= self._next_expiry:
            expired = self.tracker.expire(now, EXPIRE_SLICE)
            self._next_expiry = now + self.expire_interval_s
        report = TickReport(now, tuple(self.tracker.take_changes()), tuple(expired))
        for hook in self._tick_hooks:
            try:
                hook(self, report)
            except Exception:  # noqa: BLE001 - one bad hook must not stop the data path
                self.hook_errors += 1
                LOG.exception("cell %s: tick hook %r failed", self.cell_id, hook)
        return report

    # -- reporting -------------------------------------------------------------------------
    def counters(self) -> Dict[str, int]:
        """Flat counters (``primary_packets``, ``dropped_no_state`` ...)."""
        counters = {
            "frames": self.frames,
            "primary_packets": self.primary_packets,
            "mirror_packets": self.mirror_packets,
            "forwarded": self.forwarded,
            "dropped": self.dropped,
            "ignored": self.ignored,
            "send_errors": self.send_errors,
            "recv_errors": self.recv_errors,
            "errors": self.errors,
            "hook_errors": self.hook_errors,
            "flows_tracked": len(self.tracker),
        }
        for reason, count in self.tracker.dropped.items():
            counters[f"dropped_{reason}"] = count
        return counters

    def state_document(self, now: float, **extra) -> dict:
        """Everything a reader of the cell needs, as one JSON-able dict.

        Args:
            now: Current time in seconds.
            **extra: More top-level fields (e.g. ``interface``).

        Returns:
            ``cell_id``, ``time``, ``mirror_mac``, ``strict``, ``counters``,
            ``dropped_by_reason``, ``ignored_by_reason``, ``errors_by_reason``,
            ``tracker`` (table counters) and ``flows`` (one record per flow).
        """
        document = {
            "cell_id": self.cell_id,
            "time": now,
            "mirror_mac": self.mirror_mac,
            "strict": self.tracker.config.strict,
            "counters": self.counters(),
            "dropped_by_reason": dict(self.dropped_by_reason),
            "ignored_by_reason": dict(self.ignored_by_reason),
            "errors_by_reason": dict(self.errors_by_reason),
            "tracker": self.tracker.counters(),
            "flows": self.tracker.snapshot(),
        }
        document.update(extra)
        return document
