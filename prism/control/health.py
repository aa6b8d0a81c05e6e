"""Cell health: heartbeats and link state in, ALIVE/DEAD changes out, with hysteresis, history and risk.

A cell is usable when its data link is up AND its heartbeats are fresh. The
two inputs are separate because they fail separately: a link going down is
reported by the switch at once (port status), a dead process leaves its link
up and only stops beating.

Rules (every method takes ``now``; nothing here reads a clock):

- **Alive from configuration.** Every configured cell starts ALIVE. A cell
  that is expected to beat (it has a management address and the controller
  listens: ``expect_heartbeats``) is silent until proven otherwise from the
  moment the controller starts listening (``start_listening``): a cell never
  heard from is declared dead ``dead_after`` later, like one that fell
  silent, so a dead process whose link stays up cannot blackhole its flows
  for ever after a controller restart. Such a verdict is recorded but not
  counted as a failure of the cell (it was never seen working). Other cells
  are judged by their link alone.
- **Data path.** A cell's port is usable when its link is up and, with BFD,
  the switch holds it LIVE (``on_link(..., kind=BFD)``): the BFD session with
  the cell is up and the cell did not ask to be left out.
- **Dead.** A link going down makes the cell DEAD at once (kind ``link``).
  No heartbeat for more than ``dead_after`` seconds makes it DEAD (kind
  ``process``). So does a heartbeat whose ``seq`` went back to the start (1)
  or more than two behind: the process restarted and lost its state, however
  fast it came back.
- **Back, with hysteresis.** A DEAD cell comes back only when its link is up
  and it has beaten without a gap for ``alive_after + holddown`` seconds.
  ``holddown`` is zero for an occasional failure and doubles with every further
  failure inside ``flap_window`` (from ``holddown_base`` up to ``holddown_max``),
  so a flapping cell is kept out for longer and longer instead of thrashing
  the switch's groups.

Every ``now`` must come from a monotonic clock: a step of the wall clock
would otherwise look like every cell falling silent at once. Heartbeats are
given their arrival time, not the time the controller got round to reading
them, so a controller that stalls does not find silence it caused itself.

Defaults, for heartbeats every 0.1 s on a local management bridge:
``dead_after`` is 3.5 intervals (0.35 s): two lost heartbeats in a row plus
50 ms of scheduling jitter in either process are survived, a third loss is not.
Detection then takes 0.35 s plus at most one controller tick. ``alive_after``
is 1 s (ten heartbeats in a row).

Failure probability: failures of a cell are a Poisson process whose rate has a
Gamma(``prior_failures``, ``prior_exposure_s``) prior; after ``n`` failures in
``T`` seconds of being up, the rate's posterior is Gamma(n + a, T + b) and the
probability of at least one failure within ``h`` seconds (the posterior
predictive) is ``1 - ((T + b) / (T + b + h)) ** (n + a)``, close to
``1 - exp(-rate * h)`` with ``rate = (n + a) / (T + b)`` for small ``h``.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from dataclasses import dataclass, replace
from typing import Deque, Dict, Iterable, List, Optional, Tuple

HEARTBEAT_INTERVAL_S = 0.1  #: as prism.mgmt.protocol.HEARTBEAT_INTERVAL_S
DEAD_AFTER_INTERVALS = 3.5
ALIVE_AFTER_S = 1.0
HOLDDOWN_BASE_S = 1.0
HOLDDOWN_MAX_S = 30.0
FLAP_WINDOW_S = 60.0
#: Gamma prior of the failure rate: 0.1 failure in one hour of observation,
#: weak enough that a cell's own history dominates after its first failure.
PRIOR_FAILURES = 0.1
PRIOR_EXPOSURE_S = 3600.0
MAX_HISTORY = 100  #: failure records kept per cell (counts are kept for all)
#: A process's first heartbeat carries this seq (prism.mgmt.protocol); a seq back at it means a restart.
FIRST_HEARTBEAT_SEQ = 1
#: A heartbeat seq this far behind the last one is a restarted process, not a reordered datagram.
REORDER_TOLERANCE_SEQS = 2


class FailureKind(str, enum.Enum):
    """Why a cell became unusable."""

    LINK = "link"  #: its data link (switch port) went down
    PROCESS = "process"  #: its heartbeats stopped, or its process restarted
    BFD = "bfd"  #: the switch stopped holding its port LIVE (BFD session down, or the cell asked to be left out)


class CellState(str, enum.Enum):
    """A cell's health as the director sees it."""

    ALIVE = "alive"
    DEAD = "dead"


@dataclass(frozen=True)
class HealthSettings:
    """The failure detector's parameters (seconds).

    Raises:
        ValueError: a non-positive value, or ``dead_after`` not above the heartbeat interval.
    """

    heartbeat_interval: float = HEARTBEAT_INTERVAL_S
    dead_after: float = HEARTBEAT_INTERVAL_S * DEAD_AFTER_INTERVALS
    alive_after: float = ALIVE_AFTER_S
    holddown_base: float = HOLDDOWN_BASE_S
    holddown_max: float = HOLDDOWN_MAX_S
    flap_window: float = FLAP_WINDOW_S
    prior_failures: float = PRIOR_FAILURES
    prior_exposure_s: float = PRIOR_EXPOSURE_S

    def __post_init__(self) -> None:
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, not {value!r}")
            if value <= 0 and name != "holddown_base":
                raise ValueError(f"{name} must be > 0, not {value}")
        if self.holddown_base < 0 or self.holddown_max < self.holddown_base:
            raise ValueError(
                f"hold-down must satisfy 0 <= holddown_base ({self.holddown_base}) "
                f"<= holddown_max ({self.holddown_max})"
            )
        if self.dead_after <= self.heartbeat_interval:
            raise ValueError(
                f"dead_after ({self.dead_after} s) must be longer than the heartbeat interval "
                f"({self.heartbeat_interval} s), or every cell would be declared dead between two heartbeats"
            )

    def holddown(self, recent_failures: int) -> float:
        """Extra seconds a cell stays out after its ``recent_failures``-th failure inside the flap window."""
        if recent_failures <= 1:
            return 0.0
        return min(self.holddown_max, self.holddown_base * 2.0 ** (recent_failures - 2))


@dataclass(frozen=True)
class FailureRecord:
    """One failure of a cell.

    Attributes:
        kind: link or process.
        started_at: Best estimate of when it failed (the last heartbeat for a process failure).
        detected_at: When the detector declared the cell dead.
        ended_at: When the cell came back (None while it is down).
        reason: What was observed.
        counted: A failure of a cell seen working since the controller started (it counts in the
            cell's failure rate and hold-down); False for a cell that never showed up.
    """

    kind: FailureKind
    started_at: float
    detected_at: float
    ended_at: Optional[float] = None
    reason: str = ""
    counted: bool = True

    def duration_s(self, now: float) -> float:
        """Seconds from failure to recovery (to ``now`` while still down)."""
        end = now if self.ended_at is None else self.ended_at
        return max(0.0, end - self.started_at)

    def as_dict(self, now: float) -> Dict[str, object]:
        """Plain dict for JSON."""
        return {
            "kind": self.kind.value,
            "started_at": self.started_at,
            "detected_at": self.detected_at,
            "ended_at": self.ended_at,
            "duration_s": self.duration_s(now),
            "detection_s": max(0.0, self.detected_at - self.started_at),
            "reason": self.reason,
            "counted": self.counted,
        }


@dataclass(frozen=True)
class HealthChange:
    """A cell became usable (``alive``) or unusable; what the director acts on."""

    cell_id: str
    alive: bool
    at: float
    kind: Optional[FailureKind] = None
    reason: str = ""
    #: False for a cell never seen working since the controller started: not a failure the
    #: controller saw, so nothing it knew the cell to hold is known to be lost.
    counted: bool = True


@dataclass(frozen=True)
class CellHealth:
    """A snapshot of one cell's health (for the REST API and tests)."""

    cell_id: str
    state: CellState
    link_up: bool
    heartbeat_seen: bool
    last_heartbeat: Optional[float]
    heartbeat_seq: Optional[int]
    heartbeats: int
    failures: int
    holddown_s: float
    history: Tuple[FailureRecord, ...]

    @property
    def usable(self) -> bool:
        """True if new flows and mirrors may use the cell."""
        return self.state is CellState.ALIVE


class _Cell:
    """Mutable per-cell bookkeeping of the detector."""

    __slots__ = (
        "cell_id", "alive", "link_up", "link_up_since", "last_heartbeat", "last_seq", "heartbeats",
        "streak_start", "down_since", "alive_since", "exposure_s", "failures", "holddown", "history",
        "expects_heartbeats", "link_reason", "seen_up",
    )  # fmt: skip

    def __init__(self, cell_id: str, now: float) -> None:
        self.cell_id = cell_id
        self.alive = True
        self.link_up = True
        self.link_up_since = now
        self.last_heartbeat: Optional[float] = None
        self.last_seq: Optional[int] = None
        self.heartbeats = 0
        self.streak_start: Optional[float] = None
        self.down_since = now
        self.alive_since = now
        self.exposure_s = 0.0
        self.failures = 0
        self.holddown = 0.0
        self.history: Deque[FailureRecord] = deque(maxlen=MAX_HISTORY)
        self.expects_heartbeats = False
        self.link_reason = ""
        self.seen_up = False  #: a heartbeat, or its port coming (back) up, since the start


class FailureDetector:
    """Turns heartbeats, link events and the passing of time into cell health changes.

    Args:
        cell_ids: The configured cells (all start ALIVE).
        now: Current time (seconds): the start of every cell's observation.
        settings: Timing and prior parameters.
        expect_heartbeats: Cells that must beat once the controller listens (``start_listening``).
    """

    def __init__(
        self, cell_ids: Iterable[str], now: float, settings: Optional[HealthSettings] = None,
        expect_heartbeats: Iterable[str] = (),
    ) -> None:
        self.settings = settings or HealthSettings()
        self._cells: Dict[str, _Cell] = {cell_id: _Cell(cell_id, now) for cell_id in cell_ids}
        self._expected = frozenset(expect_heartbeats) & set(self._cells)
        self.listening_since: Optional[float] = None
        self.unknown_heartbeats = 0

    def start_listening(self, now: float) -> None:
        """The controller hears heartbeats from now on: the clock of every expected, never-heard cell starts."""
        if self.listening_since is not None:
            return
        self.listening_since = now
        for cell_id in self._expected:
            self._cells[cell_id].expects_heartbeats = True

    # --- inputs ------------------------------------------------------------------------
    def on_heartbeat(self, cell_id: str, now: float, seq: Optional[int] = None) -> List[HealthChange]:
        """A heartbeat arrived from ``cell_id``.

        Args:
            cell_id: The sender.
            now: Arrival time.
            seq: The heartbeat's sequence number, if it has one (a restart resets it).

        Returns:
            A DEAD change if the sequence shows a restarted process; a recovery if due.
        """
        cell = self._cells.get(cell_id)
        if cell is None:
            self.unknown_heartbeats += 1
            return []
        changes: List[HealthChange] = []
        if seq is not None and cell.last_seq is not None and seq < cell.last_seq:
            if seq <= FIRST_HEARTBEAT_SEQ or cell.last_seq - seq > REORDER_TOLERANCE_SEQS:
                reason = f"process restarted (heartbeat seq {cell.last_seq} -> {seq})"
                if cell.alive:
                    changes.append(self._fail(cell, FailureKind.PROCESS, now, now, reason))
                cell.streak_start = now
                cell.last_seq = seq
            # else: a reordered datagram; it still shows the process is alive
        elif seq is not None:
            cell.last_seq = seq
        gap = None if cell.last_heartbeat is None else now - cell.last_heartbeat
        if cell.streak_start is None or gap is None or gap > self.settings.dead_after:
            cell.streak_start = now
        cell.last_heartbeat = max(now, cell.last_heartbeat or now)
        cell.heartbeats += 1
        cell.seen_up = True
        return changes + self._evaluate(cell, now)

    def on_link(self, cell_id: str, up: bool, now: float, kind: FailureKind = FailureKind.LINK,
                reason: str = "link down") -> List[HealthChange]:  # fmt: skip
        """The switch reported the cell's port usable or not (unknown cells are ignored).

        Args:
            cell_id: The cell.
            up: True if the port can carry the cell's traffic (link up and, with BFD, LIVE).
            now: When the switch reported it.
            kind: Why it cannot (LINK: link down; BFD: link up but not LIVE).
            reason: What was observed, for the record.
        """
        cell = self._cells.get(cell_id)
        if cell is None:
            return []
        if cell.link_up == up:
            return []
        cell.seen_up |= up  # a port coming back up; the first report at connection time proves nothing
        cell.link_up = up
        if up:
            cell.link_up_since = now
            return self._evaluate(cell, now)
        cell.link_reason = reason
        if cell.alive:
            # a port that has not been LIVE since we started is a cell not up yet, not a failure
            counted = kind is not FailureKind.BFD or cell.seen_up
            return [self._fail(cell, kind, now, now, reason, counted=counted)]
        return []

    def tick(self, now: float) -> List[HealthChange]:
        """Apply the passing of time: cells whose heartbeats stopped die, recovered cells come back."""
        changes: List[HealthChange] = []
        for cell in self._cells.values():
            changes += self._evaluate(cell, now)
        return changes

    # --- rules ---------------------------------------------------------------------------
    def _evaluate(self, cell: _Cell, now: float) -> List[HealthChange]:
        dead_after = self.settings.dead_after
        if cell.alive:
            if not cell.link_up:
                return [self._fail(cell, FailureKind.LINK, now, now, cell.link_reason or "link down")]
            if cell.last_heartbeat is not None and now - cell.last_heartbeat > dead_after:
                silent = now - cell.last_heartbeat
                reason = f"no heartbeat for {silent:.3f} s (dead after {dead_after:.3f} s)"
                return [self._fail(cell, FailureKind.PROCESS, cell.last_heartbeat, now, reason)]
            if cell.last_heartbeat is None and cell.expects_heartbeats and self.listening_since is not None \
                    and now - self.listening_since > dead_after:
                reason = (f"no heartbeat since the controller started listening "
                          f"{now - self.listening_since:.3f} s ago (dead after {dead_after:.3f} s)")
                return [self._fail(cell, FailureKind.PROCESS, self.listening_since, now, reason, counted=False)]
            return []
        if not cell.link_up:
            return []
        ready_since = max(cell.link_up_since, cell.down_since)
        if cell.last_heartbeat is not None:
            if now - cell.last_heartbeat > dead_after or cell.streak_start is None:
                return []
            ready_since = max(ready_since, cell.streak_start)
        if now - ready_since < self.settings.alive_after + cell.holddown:
            return []
        return [self._recover(cell, now)]

    def _fail(self, cell: _Cell, kind: FailureKind, started_at: float, now: float, reason: str,
              counted: bool = True) -> HealthChange:  # fmt: skip
        """Declare the cell dead; ``counted``: a failure of a cell seen working (its risk statistics)."""
        cell.alive = False
        cell.down_since = now
        if counted:
            cell.exposure_s += max(0.0, now - cell.alive_since)
            cell.failures += 1
        cell.history.append(FailureRecord(kind, min(started_at, now), now, None, reason, counted))
        window_start = now - self.settings.flap_window
        recent = sum(1 for record in cell.history if record.detected_at >= window_start and record.counted)
        cell.holddown = self.settings.holddown(recent)
        return HealthChange(cell.cell_id, False, now, kind, reason, counted)

    def _recover(self, cell: _Cell, now: float) -> HealthChange:
        cell.alive = True
        cell.alive_since = now
        if cell.history and cell.history[-1].ended_at is None:
            cell.history[-1] = replace(cell.history[-1], ended_at=now)
        held = f" after a hold-down of {cell.holddown:.1f} s" if cell.holddown else ""
        return HealthChange(cell.cell_id, True, now, None, f"healthy again{held}")

    # --- queries ---------------------------------------------------------------------------
    @property
    def cell_ids(self) -> Tuple[str, ...]:
        """The cells watched."""
        return tuple(self._cells)

    def __contains__(self, cell_id: object) -> bool:
        return cell_id in self._cells

    def is_usable(self, cell_id: str) -> bool:
        """True if the cell is ALIVE (KeyError if unknown)."""
        return self._cells[cell_id].alive

    @property
    def usable_cells(self) -> Tuple[str, ...]:
        """The ALIVE cells."""
        return tuple(cell_id for cell_id, cell in self._cells.items() if cell.alive)

    def health(self, cell_id: str) -> CellHealth:
        """A snapshot of one cell (KeyError if unknown)."""
        cell = self._cells[cell_id]
        return CellHealth(
            cell_id=cell_id,
            state=CellState.ALIVE if cell.alive else CellState.DEAD,
            link_up=cell.link_up,
            heartbeat_seen=cell.last_heartbeat is not None,
            last_heartbeat=cell.last_heartbeat,
            heartbeat_seq=cell.last_seq,
            heartbeats=cell.heartbeats,
            failures=cell.failures,
            holddown_s=cell.holddown,
            history=tuple(cell.history),
        )

    def history(self, cell_id: str) -> Tuple[FailureRecord, ...]:
        """The cell's recent failures, oldest first (KeyError if unknown)."""
        return tuple(self._cells[cell_id].history)

    def exposure_s(self, cell_id: str, now: float) -> float:
        """Seconds the cell has been up (at risk of failing) since observation began."""
        cell = self._cells[cell_id]
        return cell.exposure_s + (max(0.0, now - cell.alive_since) if cell.alive else 0.0)

    def failure_rate(self, cell_id: str, now: float) -> float:
        """Posterior mean failure rate (failures per second), ``(n + a) / (T + b)``."""
        settings = self.settings
        failures = self._cells[cell_id].failures
        return (failures + settings.prior_failures) / (self.exposure_s(cell_id, now) + settings.prior_exposure_s)

    def failure_probability(self, cell_id: str, horizon_s: float, now: float) -> float:
        """Probability that the cell fails at least once in the next ``horizon_s`` seconds.

        The Gamma-Poisson posterior predictive (see the module docstring).

        Args:
            cell_id: The cell (KeyError if unknown).
            horizon_s: Look-ahead in seconds (<= 0 gives 0).
            now: Current time.

        Returns:
            A probability in [0, 1].
        """
        if horizon_s <= 0:
            return 0.0
        settings = self.settings
        shape = self._cells[cell_id].failures + settings.prior_failures
        scale = self.exposure_s(cell_id, now) + settings.prior_exposure_s
        return -math.expm1(shape * math.log1p(-horizon_s / (scale + horizon_s)))
