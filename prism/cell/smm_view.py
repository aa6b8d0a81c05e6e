"""A cell's view of the controller's tables: the directory, the profiles, and which profile each flow belongs to."""

from __future__ import annotations

import ipaddress
from collections import deque
from typing import Callable, Deque, Dict, List, Mapping, Optional, Set, Tuple

from prism.mgmt import protocol as mgmt
from prism.placement.profiles import MirroringProfile

Address = Tuple[str, int]
#: Assignments a cell keeps at most by default (as many as its table holds flows).
DEFAULT_MAX_ASSIGNMENTS = 1_000_000


class ControlView:
    """What the controller told this cell, as of its latest messages.

    Every ``apply_*`` takes the decoded message and raises ``KeyError``,
    ``TypeError`` or ``ValueError`` on a malformed one, leaving the view as
    it was. Epochs: a partial ``profiles`` older than the last one applied is
    ignored (a reordered datagram); a full table and a directory always apply
    (the controller may have restarted and counts epochs from scratch).

    Generations (fencing): a ``directory`` or ``profiles`` of a controller
    generation below the highest applied is refused (``stale_generations``):
    a controller that was replaced by a restarted or second one cannot move
    the cells back. A higher generation starts the epochs afresh; within a
    generation (above 0) a stale epoch is refused even for a full table.
    Messages without a generation count as generation 0.

    An assignment is forgotten ``assignment_grace_s`` after it arrived or
    after its flow left this cell's table, whichever is later, unless the
    flow is in the table then (``prune``): the work is spread over time, a
    constant amount per assignment, never a scan of the whole table.

    At most ``max_assignments`` are kept: beyond, the oldest is forgotten
    (``assignments_evicted``; its flow's changes wait for an ``assign`` again,
    which the cell asks for in its heartbeats).

    Args:
        cell_id: This cell's id.
        assignment_grace_s: How long an assignment outlives its flow here.
        max_assignments: Assignments kept at most.
    """

    def __init__(self, cell_id: str, assignment_grace_s: float,
                 max_assignments: int = DEFAULT_MAX_ASSIGNMENTS) -> None:  # fmt: skip
        self.cell_id = cell_id
        self.assignment_grace_s = assignment_grace_s
        self.max_assignments = max_assignments
        self.assignments_evicted = 0
        self.addresses: Dict[str, Address] = {}
        self.live: Set[str] = set()
        self.profiles: Dict[int, MirroringProfile] = {}
        self._assignments: Dict[int, List] = {}  # flow_id -> [profile_id, assigned at, mode]
        self._checks: Deque[Tuple[float, int]] = deque()  # (when, flow_id), oldest first
        self._profile_flows: Dict[int, Set[int]] = {}
        self._epochs: Dict[str, int] = {}
        self.generation = 0
        self.stale_messages = 0
        self.stale_generations = 0
        #: From the directory: ages at which primaries report flows (ascending).
        self.milestones_s: Tuple[float, ...] = ()
        #: From the directory: period of a ``state`` flow's progress records.
        self.state_interval_s: float = mgmt.DEFAULT_STATE_INTERVAL_S
        #: From the directory: how far a taken-over ``state`` flow may have moved.
        self.takeover_tolerance_bytes: int = mgmt.DEFAULT_TAKEOVER_TOLERANCE_BYTES

    # -- messages --------------------------------------------------------------------------
    def apply_directory(self, message: Mapping) -> bool:
        """A ``directory``: every cell's management address and the live cells. Returns True if applied."""
        addresses = {}
        for cell_id, (host, port) in message["cells"].items():
            ipaddress.ip_address(host)  # an address literal: sendto must never resolve a name
            addresses[str(cell_id)] = (str(host), int(port))
        live = {str(cell_id) for cell_id in message["live"]}
        milestones = tuple(sorted({_positive(age, "milestones_s") for age in message.get("milestones_s", ())}))
        interval = _positive(message.get("state_interval_s", mgmt.DEFAULT_STATE_INTERVAL_S), "state_interval_s")
        tolerance = message.get("takeover_tolerance_bytes", mgmt.DEFAULT_TAKEOVER_TOLERANCE_BYTES)
        if not isinstance(tolerance, int) or isinstance(tolerance, bool) or tolerance < 0:
            raise ValueError(f"takeover_tolerance_bytes must be an integer >= 0, not {tolerance!r}")
        if not self._fresh("directory", message, True):
            return False
        self.addresses, self.live = addresses, live
        self.milestones_s, self.state_interval_s, self.takeover_tolerance_bytes = milestones, interval, tolerance
        return True

    def apply_profiles(self, message: Mapping) -> bool:
        """A ``profiles`` message (whole table if ``full``, else updates). Returns True if applied."""
        full = message.get("full") is True
        table = {}
        for profile_id, (primary_cell, mirror_cells) in message["profiles"].items():
            mirrors = tuple(str(cell_id) for cell_id in mirror_cells)
            table[int(profile_id)] = MirroringProfile(str(primary_cell), mirrors, len(mirrors))
        if not self._fresh("profiles", message, full):
            return False
        if full:
            self.profiles = table
        else:
            self.profiles.update(table)
        return True

    def apply_assign(self, message: Mapping, now: float) -> List[Tuple[int, str]]:
        """An ``assign``: flows, the profile each belongs to and its mode (a flow may move to another profile).

        Returns:
            Each flow id with its mode (``mgmt.MODE_FULL`` when the entry has none).
        """
        flows = [_assignment(flow) for flow in message["flows"]]
        for flow_id, profile_id, mode in flows:
            previous = self._assignments.get(flow_id)
            if previous is not None and previous[0] != profile_id:
                self._discard(previous[0], flow_id)
            self._assignments[flow_id] = [profile_id, now, mode]
            self._profile_flows.setdefault(profile_id, set()).add(flow_id)
            self._checks.append((now, flow_id))
        while len(self._assignments) > self.max_assignments and self._checks:
            _, flow_id = self._checks.popleft()
            assignment = self._assignments.pop(flow_id, None)
            if assignment is not None:
                self._discard(assignment[0], flow_id)
                self.assignments_evicted += 1
        return [(flow_id, mode) for flow_id, _, mode in flows]

    def _fresh(self, kind: str, message: Mapping, full: bool) -> bool:
        epoch, generation = message.get("epoch", 0), message.get("generation", 0)
        if not isinstance(epoch, int) or not isinstance(generation, int):
            raise ValueError("epoch and generation must be integers")
        if generation < self.generation:
            self.stale_generations += 1
            return False
        if generation > self.generation:
            self.generation = generation
            self._epochs = {name: -1 for name in self._epochs}  # a new controller counts afresh
        last = self._epochs.get(kind)
        if last is not None and epoch < last:
            self.stale_messages += 1
            if not full or generation > 0:
                return False
        self._epochs[kind] = epoch
        return True

    # -- questions -------------------------------------------------------------------------
    def profile_of(self, flow_id: int) -> Optional[MirroringProfile]:
        """The profile of a flow, or None if its assignment or its profile is not known yet."""
        assignment = self._assignments.get(flow_id)
        return None if assignment is None else self.profiles.get(assignment[0])

    def mode_of(self, flow_id: int) -> Optional[str]:
        """A flow's mirroring mode by its latest ``assign``, or None if it has none."""
        assignment = self._assignments.get(flow_id)
        return None if assignment is None else assignment[2]

    def other_primary(self, flow_id: int) -> bool:
        """Another live cell is the flow's primary by its profile."""
        profile = self.profile_of(flow_id)
        return profile is not None and profile.primary_cell != self.cell_id and profile.primary_cell in self.live

    @property
    def has_directory(self) -> bool:
        """A directory has been applied: ``live`` says who is live (before it, nobody is known to be)."""
        return "directory" in self._epochs

    def peers_of(self, flow_id: int) -> Optional[List[str]]:
        """The other live cells of a flow's profile.

        None while that is not known: no assignment or profile for the flow
        yet, or no directory yet (an empty ``live`` then means "not told", not
        "no peer is live": changes routed to nobody would never be sent).
        """
        profile = self.profile_of(flow_id)
        if profile is None or not self.has_directory:
            return None
        cells = (profile.primary_cell, *profile.mirror_cells)
        return [cell_id for cell_id in cells if cell_id != self.cell_id and cell_id in self.live]

    def is_primary(self, flow_id: int) -> bool:
        """This cell is the flow's primary by its profile, and live by the directory."""
        profile = self.profile_of(flow_id)
        return profile is not None and profile.primary_cell == self.cell_id and self.cell_id in self.live

    def flows_of(self, profile_id: int) -> Set[int]:
        """The flow ids assigned to a profile."""
        return self._profile_flows.get(profile_id, set())

    def address_of(self, cell_id: str) -> Optional[Address]:
        """A live cell's management address (None: not live, or unknown)."""
        return self.addresses.get(cell_id) if cell_id in self.live else None

    @property
    def assignments(self) -> int:
        """Number of flows with a known profile id."""
        return len(self._assignments)

    # -- housekeeping ----------------------------------------------------------------------
    def flow_gone(self, flow_id: int, now: float) -> None:
        """A flow left this cell's table: its assignment is checked again after the grace period."""
        if flow_id in self._assignments:
            self._checks.append((now, flow_id))

    def prune(self, now: float, present: Callable[[int], bool]) -> int:
        """Forget the assignments due for a check whose flow is not ``present`` here; returns how many."""
        limit = now - self.assignment_grace_s
        forgotten = 0
        checks = self._checks
        while checks and checks[0][0] <= limit:
            since, flow_id = checks.popleft()
            assignment = self._assignments.get(flow_id)
            if assignment is None or assignment[1] > since or present(flow_id):
                continue  # gone already, assigned again since (checked later), or still here
            del self._assignments[flow_id]
            self._discard(assignment[0], flow_id)
            forgotten += 1
        return forgotten

    def _discard(self, profile_id: int, flow_id: int) -> None:
        flows = self._profile_flows.get(profile_id)
        if flows is not None:
            flows.discard(flow_id)
            if not flows:
                del self._profile_flows[profile_id]


def _assignment(flow) -> Tuple[int, int, str]:
    """One ``assign`` entry ``[flow_id, profile_id, key_text(, mode)]`` as ``(flow_id, profile_id, mode)``."""
    if not isinstance(flow, (list, tuple)) or len(flow) not in (3, 4):
        raise ValueError(f"an assign entry is [flow_id, profile_id, key_text(, mode)], not {flow!r}")
    mode = flow[3] if len(flow) == 4 else mgmt.MODE_FULL
    if mode not in mgmt.ASSIGN_MODES:
        raise ValueError(f"unknown mirroring mode {mode!r} (known: {', '.join(mgmt.ASSIGN_MODES)})")
    return int(flow[0]), int(flow[1]), mode


def _positive(value, name: str) -> float:
    """A finite number of seconds > 0 from a message."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value < float("inf"):
        raise ValueError(f"{name} must be numbers of seconds > 0, not {value!r}")
    return float(value)
