"""The aging policy: decide little at a flow's birth, then again as it ages, from what the flow showed.

A flow's first packet says little about it; its own history says much more
(issue 8). So:

1. **Birth** (``profile_for``, the packet-in path): the primary is the first
   live cell of the flow's ring order, as with ``FixedPolicy``; no model call.
   The flow is remembered (its first packet and birth time). With ``birth``
   ``auto``, a TCP flow opened by a SYN (not a SYN/ACK, not mid-connection) also
   gets mirrors at birth, in ``state`` mode, while the copy budget has headroom
   for it (3. below): its mirror sees the SYN (the packet-out to the ALL group)
   and every SYN/FIN/RST, the primary's SMM sends the rest, so it holds the
   flow's state from birth without a seed. Every other flow: no mirror.
2. **Milestones** (``redecide``, when the flow's primary cell reports it
   crossed an age in ``milestones_s``, with its packets and bytes so far):
   - a flow that sent nothing since the previous milestone (or since its
     first packet) is **quiet**: it may have ended (the cells report every
     flow they still track) or be a sparse long flow (a keep-alive). With
     ``promote_quiet`` (default) the age rule promotes it like any other;
     without, it waits for a milestone where it has sent something. A model
     is asked about quiet flows only if it was trained on them
     (``scores_quiet_flows``);
   - what the primary knows comes with the report: a **closing** connection
     (a FIN or RST seen) is never promoted, and a flow that sent at least
     ``IDLE_RULE_MIN_PACKETS`` and has been **idle** (no packet) for more
     than ``max_idle_share`` of its age is not promoted either: it has
     probably ended (the director holds an ended flow for one idle timeout,
     and the cells report it meanwhile), and a seed for it would protect
     nothing;
   - an unmirrored flow is **promoted** (mirrors chosen as below, in
     ``mode``, ``state`` by default: only its SYN/FIN/RST are copied, the
     primary's State Mirroring Module replicates the rest) if it is old enough
     for the budget (``min_promotion_age_s``) and, with a model, if the model
     gives it at least ``promote_probability`` of living ``horizon_s`` more
     (``prism.policy.aging_features.aging_row``: age, packets, bytes, rates, mean
     packet size, protocol, coarse port class); without a model every flow
     alive at a milestone is promoted (the age rule);
   - a ``full`` flow goes to ``state`` when the budget is overspent;
   - with a model and ``demote_probability`` > 0, a mirrored flow the model
     gives less than that is **demoted** (its mirrors dropped).
   The primary never moves.
3. **Budget.** Mirror copies per packet are estimated at each flow's end
   (``full``: its packets after promotion, per mirror; ``state``: the state
   packets it can still send, ``STATE_COPIES_AFTER_PROMOTION`` for TCP) over
   a window of ended flows. While the window spends more than ``budget``,
   ``auto`` mode promotes in ``state`` only, and while the flows mirrored in
   ``state`` alone spend more, promotion waits for a later milestone
   (``min_promotion_age_s`` steps up one milestone a time), stepping back
   down when they spend less than ``RELAX_SHARE`` of it.
   The gate judges the flows promoted at milestones (and the unmirrored);
   **birth mirroring** is the level below the first milestone: open while the
   gate is at the first milestone and what mirroring every SYN-opened flow at
   birth would cost (``BirthEstimate``: the SYN, the SYN/ACK, then the
   teardown; a scan's unanswered or refused SYN costs a copy per packet) is
   under the headroom, the budget less what the promotions spend, over the
   last ``BIRTH_WINDOW`` reports. The estimate is the same whether birth
   mirroring is open or not (it counts what it would cost, not what it did),
   so it does not swing open and shut by its own doing. Its reports are
   each flow's birth (its first packet, a SYN's copy: known at once), its
   milestone reports and its end, so a scan's SYNs close birth mirroring as
   they arrive, not one idle timeout after they end.
4. **Mirrors** (as the predictive policy chose them): the next live cells on
   the ring, healthy and not overloaded first (a cell ``prism.policy.base.AVOID_RISK_RATIO``
   times riskier than the median, or holding more than ``LOAD_FACTOR`` times
   the mean mirror load plus ``LOAD_SLACK`` flows, goes to the back); one
   mirror, then more while the primary and every mirror could all fail within
   the horizon with a probability above ``risk_target``, up to
   ``max_replication_factor``.

Pure: no model library here. The model comes in as an ``AliveScorer``
(``models.predictor.AgingPredictor`` is one); ``now`` is always passed in.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Collection, Deque, Dict, List, Mapping, Optional, Protocol, Sequence, Tuple

from prism.policy.aging_features import PROTO_TCP, aging_row, port_class, proto_class
from prism.flows.identity import PacketInfo
from prism.policy.base import MODE_FULL, MODE_STATE, Decision, NoLiveCell, choose_mirrors
from prism.placement.profiles import MirroringProfile
from prism.placement.ring import HashRing

#: Ages (s) at which live flows are re-decided by default: a subset of the flow records'
#: milestones (``prism.telemetry.records.MILESTONES_S``), so that the evaluation can replay them.
DEFAULT_MILESTONES_S: Tuple[float, ...] = (0.25, 1.0, 4.0, 16.0, 64.0)
#: The milestones a configuration may name (those the flow records count at).
ALLOWED_MILESTONES_S: Tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
#: Configuration value of ``mode``: each promoted flow's mode chosen by its rate (``AgingSettings``).
MODE_AUTO = "auto"
POLICY_MODES = (MODE_STATE, MODE_FULL, MODE_AUTO)
DEFAULT_MODE = MODE_STATE
#: In ``auto`` mode a flow slower than this (packets per second, both directions, so far) is
#: promoted in ``full`` (written when the SMM sent a progress record every second a state flow
#: moved; since it sends one only when the mirrors need it, ``state`` costs few bytes at any rate).
SLOW_FLOW_PPS = 1.0
#: A flow silent for more than this share of its age at a milestone is not promoted
#: (``AgingSettings.max_idle_share``): more silence than life so far, i.e. its
#: packets so far all came in the first half of its age. Scale-free (the same
#: rule at 0.25 s as at 64 s), chosen before looking at the captures' outcome.
DEFAULT_MAX_IDLE_SHARE = 0.5
#: The idle rule judges only flows that end in silence (not TCP: a TCP connection's end
#: is seen, ``closing``; a silent one is a control channel or keep-alive and is protected)
#: and that sent at least this many packets: an exchange
#: (a query and its answer, a handshake) followed by silence is over, but a flow
#: that sent only its first packet cannot be told from a sparse long one (a
#: keep-alive): ``promote_quiet`` decides those. On nDPI, 486 of the 2402 flows with
#: one packet at 0.25 s live on and carry 52 % of the at-risk flow time.
IDLE_RULE_MIN_PACKETS = 2
#: Look-ahead of the "will it live on?" question and of the cells' failure probability (s).
DEFAULT_HORIZON_S = 2.0
DEFAULT_PROMOTE_PROBABILITY = 0.5
DEFAULT_DEMOTE_PROBABILITY = 0.0  #: never demote unless configured
DEFAULT_BUDGET = 0.1  #: mirror copies per packet
DEFAULT_BUDGET_WINDOW = 4096  #: ended flows in the budget's window
MIN_BUDGET_FLOWS = 1024  #: ended flows the budget gate judges at least (a few dozen bursty flows are noise)
RELAX_SHARE = 0.5  #: the gate steps down when the window spends less than this share of the budget
#: A TCP flow promoted after its handshake can still send this many state packets (a FIN per
#: direction, or a RST): the budget's estimate of its copies per mirror.
STATE_COPIES_AFTER_PROMOTION = 2
#: State packets of a TCP handshake a mirror present at birth is copied (SYN, SYN/ACK).
HANDSHAKE_COPIES = 2
#: Copies per mirror of a TCP flow mirrored at birth in ``state`` mode: its handshake and its
#: teardown (a FIN per direction); never more than its packets (a scan's SYN, SYN + RST).
STATE_COPIES_AT_BIRTH = HANDSHAKE_COPIES + STATE_COPIES_AFTER_PROMOTION
#: Configuration values of ``birth``: mirror SYN-opened TCP flows at birth while the budget
#: has headroom (``auto``), or never (``off``).
BIRTH_AUTO = "auto"
BIRTH_OFF = "off"
BIRTH_CHOICES = (BIRTH_AUTO, BIRTH_OFF)
DEFAULT_BIRTH = BIRTH_AUTO
#: Reports (milestone reports and flow ends) over which birth mirroring's cost is estimated, and
#: the fewest it is judged on (birth mirroring stays closed before).
BIRTH_WINDOW = 1024
MIN_BIRTH_REPORTS = 256
_TCP_SYN, _TCP_ACK, _TCP_FIN, _TCP_RST = 0x02, 0x10, 0x01, 0x04
_OPENING_FLAGS = _TCP_SYN | _TCP_ACK | _TCP_FIN | _TCP_RST

MAX_RISK_BOOST = 100.0
DEFAULT_RISK_TARGET = 1e-6
HEALTH_REFRESH_S = 1.0
#: The most live flows remembered per policy; beyond it the oldest is forgotten (it keeps
#: its profile, and is re-decided as a flow of unknown protocol).
MAX_LIVE_FLOWS = 1 << 18


class AliveScorer(Protocol):
    """What the policy needs of a model (``models.predictor.AgingPredictor``).

    An optional ``scores_quiet_flows`` attribute (True: the model was trained on
    quiet flows' rows too) lets the policy ask it about quiet flows.
    """

    horizon_s: float

    def alive_probability(self, row: Sequence[float]) -> float:
        """P(a flow with this ``aging_row`` lives ``horizon_s`` more)."""
        ...  # pragma: no cover


class Health(Protocol):
    """What the policy needs of ``prism.control.health.FailureDetector``."""

    def failure_probability(self, cell_id: str, horizon_s: float, now: float) -> float: ...  # pragma: no cover


@dataclass(frozen=True)
class AgingSettings:
    """How the aging policy decides (configuration ``prediction``).

    Attributes:
        milestones_s: Ages (s, ascending, from ``ALLOWED_MILESTONES_S``) of the re-decisions.
        mode: The mode of promoted flows (``state``, ``full``, or ``auto``: ``full`` for flows
            slower than ``slow_flow_pps`` while the copy budget allows, else ``state``).
        budget: Mirror copies per packet the policy may spend (estimated online).
        promote_probability: With a model, the least P(lives ``horizon_s`` more) to promote.
        demote_probability: With a model, a mirrored flow below this is demoted (0: never).
        horizon_s: Look-ahead (s) of the cells' failure probability (the model's own horizon
            is what its probability is about).
        risk_target: Mirrors are added while all replicas could fail together with more than this.
        budget_window: Ended flows over which the copies per packet are estimated.
        promote_quiet: Promote (age rule) a flow that sent nothing since its previous report too
            (default): sparse long flows (a keep-alive every few seconds) are protected from the
            first milestone, at the price of ended flows the cells still report (a seed each, no
            copies). On the shipped records this protects 16 (nDPI) and 6 (Argus) points more of
            the at-risk flows than waiting for packets (notes of issue 8).
        slow_flow_pps: ``auto`` mode's rate below which a flow is promoted in ``full``.
        max_idle_share: A flow of ``IDLE_RULE_MIN_PACKETS`` or more whose report says it
            was silent (``idle_s``) for more than this share of its age is not promoted:
            probably ended (the cells report every flow they still hold; the director
            holds an ended flow one idle timeout more). Reports without ``idle_s``, and
            flows of one packet so far, fall back to ``promote_quiet``.
        birth: ``auto``: mirror a SYN-opened TCP flow at birth (``state`` mode) while the copy
            budget has headroom for it (module docstring); ``off``: never mirror at birth.
    """

    milestones_s: Tuple[float, ...] = DEFAULT_MILESTONES_S
    mode: str = DEFAULT_MODE
    budget: float = DEFAULT_BUDGET
    promote_probability: float = DEFAULT_PROMOTE_PROBABILITY
    demote_probability: float = DEFAULT_DEMOTE_PROBABILITY
    horizon_s: float = DEFAULT_HORIZON_S
    risk_target: float = DEFAULT_RISK_TARGET
    budget_window: int = DEFAULT_BUDGET_WINDOW
    promote_quiet: bool = True
    slow_flow_pps: float = SLOW_FLOW_PPS
    max_idle_share: float = DEFAULT_MAX_IDLE_SHARE
    birth: str = DEFAULT_BIRTH

    def __post_init__(self) -> None:
        milestones = tuple(float(m) for m in self.milestones_s)
        object.__setattr__(self, "milestones_s", milestones)
        if any(m not in ALLOWED_MILESTONES_S for m in milestones) or list(milestones) != sorted(set(milestones)):
            raise ValueError(f"milestones_s must be ascending, distinct and among {ALLOWED_MILESTONES_S}, "
                             f"not {self.milestones_s}")  # fmt: skip
        if self.birth not in BIRTH_CHOICES:
            raise ValueError(f"birth must be one of {BIRTH_CHOICES}, not {self.birth!r}")
        if self.mode not in POLICY_MODES:
            raise ValueError(f"mode must be one of {POLICY_MODES}, not {self.mode!r}")
        if not 0 < self.budget <= 1:
            raise ValueError(f"budget must be > 0 and <= 1, not {self.budget}")
        for name in ("promote_probability", "demote_probability"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be within [0, 1], not {getattr(self, name)}")
        if self.demote_probability > self.promote_probability:
            raise ValueError("demote_probability must not exceed promote_probability")
        if not 0 < self.max_idle_share <= 1:
            raise ValueError(f"max_idle_share must be within (0, 1], not {self.max_idle_share}")
        if not self.horizon_s > 0 or self.budget_window < 1:
            raise ValueError("horizon_s must be > 0 and budget_window >= 1")


class BirthEstimate:
    """What mirroring every SYN-opened TCP flow at birth would cost, in copies per packet, right now.

    Fed by every report the policy hears, whichever flows it mirrored: a flow's
    packets since its previous report, and, for a SYN-opened flow, the copies a
    mirror present at birth would have had since (``birth_copies``). The same
    estimate whether birth mirroring is open or not, so opening it does not
    move it. Over the last ``window`` reports.
    """

    def __init__(self, window: int = BIRTH_WINDOW):
        self.window = window
        self._reports: Deque[Tuple[int, int]] = deque()
        self._packets = 0
        self._copies = 0

    def report(self, packets: int, copies: int) -> None:
        """``packets`` more packets of one flow, ``copies`` more that birth mirroring would copy.

        A report of no packet (a quiet flow's) says nothing about the cost and is not kept.
        """
        if packets <= 0 and copies <= 0:
            return
        self._reports.append((packets, copies))
        self._packets += packets
        self._copies += copies
        if len(self._reports) > self.window:
            old_packets, old_copies = self._reports.popleft()
            self._packets -= old_packets
            self._copies -= old_copies

    @property
    def judged(self) -> bool:
        """Whether enough reports came in to judge (``MIN_BIRTH_REPORTS``)."""
        return len(self._reports) >= min(MIN_BIRTH_REPORTS, self.window)

    def share(self) -> float:
        """Estimated copies per packet of birth mirroring (0 before any report)."""
        return self._copies / self._packets if self._packets else 0.0


def birth_copies(packets: int, closing: bool) -> int:
    """Copies per mirror a SYN-opened flow of ``packets`` so far sent a mirror present from its birth.

    Its handshake (SYN, SYN/ACK), and once ``closing`` its teardown; never more than its packets.
    """
    return min(int(packets), STATE_COPIES_AT_BIRTH if closing else HANDSHAKE_COPIES)


class CopyBudget:
    """Estimated mirror copies per packet over a window of ended flows, and the promotion gate it sets.

    Args:
        budget: Copies per packet to spend.
        milestones_s: The policy's milestones; the gate is the index of the first one that may promote.
        window: Ended flows in the window.
        birth: Whether SYN-opened flows may be mirrored at birth (the level below the first
            milestone): while the gate is at the first milestone and ``birth_estimate`` is
            under the ``headroom``.
    """

    def __init__(self, budget: float, milestones_s: Sequence[float], window: int = DEFAULT_BUDGET_WINDOW,
                 birth: bool = False) -> None:  # fmt: skip
        self.budget = budget
        self.milestones_s = tuple(milestones_s)
        self.window = window
        self.birth = birth
        self.birth_estimate = BirthEstimate()
        self.birth_open = False  #: whether a SYN-opened flow is mirrored at birth now
        self._ends: Deque[Tuple[int, float, float]] = deque()
        self._packets = 0
        self._copies = 0.0
        self._full_copies = 0.0
        self.gate = 0  #: index into milestones_s of the youngest age that may promote
        self.gate_raises = 0

    @classmethod
    def of(cls, settings: "AgingSettings") -> "CopyBudget":
        """The budget ``settings`` ask for (budget, milestones, window, birth mirroring)."""
        return cls(settings.budget, settings.milestones_s, settings.budget_window, settings.birth == BIRTH_AUTO)

    @property
    def min_promotion_age_s(self) -> float:
        """The youngest age at which a flow may be promoted now."""
        if self.gate >= len(self.milestones_s):
            return float("inf")
        return self.milestones_s[self.gate]

    def observe(self, packets: int, copies: float, full: bool = False) -> None:
        """A flow ended with ``packets`` (both directions) and an estimated ``copies`` to its mirrors.

        ``full``: it was mirrored in ``full`` mode. The gate follows the other flows' copies only:
        ``auto`` mode stops choosing ``full`` first (``share`` above the budget).
        """
        packets = max(int(packets), 1)
        full_copies = copies if full else 0.0
        self._ends.append((packets, copies, full_copies))
        self._packets += packets
        self._copies += copies
        self._full_copies += full_copies
        if len(self._ends) > self.window:
            old_packets, old_copies, old_full = self._ends.popleft()
            self._packets -= old_packets
            self._copies -= old_copies
            self._full_copies -= old_full
        if len(self._ends) < MIN_BUDGET_FLOWS:
            return
        share = (self._copies - self._full_copies) / self._packets
        if share > self.budget and self.gate < len(self.milestones_s):
            self.gate += 1
            self.gate_raises += 1
            self.birth_open = False
            self._restart_window()
        elif share < RELAX_SHARE * self.budget and self.gate > 0:
            self.gate -= 1
            self._restart_window()

    def report(self, packets: int, copies: int) -> None:
        """A flow's report (its birth, a milestone's, its end): feeds ``birth_estimate`` (``BirthEstimate.report``)."""
        estimate = self.birth_estimate
        estimate.report(packets, copies)
        self.birth_open = (self.birth and self.gate == 0 and estimate.judged
                           and estimate.share() < self.headroom())  # fmt: skip

    def headroom(self) -> float:
        """Copies per packet birth mirroring may spend: the budget less what promotions spend."""
        return self.budget - self.share()

    def _restart_window(self) -> None:
        """A new gate is judged on flows that end after it (the old ones were decided under the old one)."""
        self._ends.clear()
        self._packets = 0
        self._copies = 0.0
        self._full_copies = 0.0

    def share(self) -> float:
        """Estimated copies per packet over the window (0 before any flow ended)."""
        return self._copies / self._packets if self._packets else 0.0

    def status(self) -> Dict[str, object]:
        """Plain values for the REST API."""
        return {"budget": self.budget, "estimated_share": self.share(), "ended_flows_in_window": len(self._ends),
                "min_promotion_age_s": self.min_promotion_age_s, "gate_raises": self.gate_raises,
                "birth_open": self.birth_open, "birth_estimated_share": self.birth_estimate.share()}  # fmt: skip


class _Flow:
    """What the policy remembers of a live flow."""

    __slots__ = ("first", "born", "mode", "mirrors", "last_age", "last_packets", "promoted_packets", "syn",
                 "reported", "birth_copies")  # fmt: skip

    def __init__(self, first: Optional[PacketInfo], born: float, mode: str) -> None:
        self.first = first
        self.born = born
        self.mode = mode
        self.mirrors: Tuple[str, ...] = ()
        self.last_age = 0.0
        self.last_packets = 0
        self.promoted_packets = -1  #: packets when it got mirrors (-1: never mirrored; 0: at birth)
        self.syn = opened_by_syn(first)  #: a TCP flow whose first packet is a SYN
        #: Packets and copies (``birth_copies``) reported to the birth estimate so far: a flow
        #: born here reports its first packet (and a SYN's copy) at birth.
        self.reported = 0 if first is None else 1
        self.birth_copies = int(self.syn)


def opened_by_syn(first: Optional[PacketInfo]) -> bool:
    """Whether a flow's first packet opens a TCP connection: a SYN, no ACK, FIN or RST."""
    return first is not None and first.proto == PROTO_TCP and first.tcp_flags & _OPENING_FLAGS == _TCP_SYN


def _ends_silently(flow: _Flow) -> bool:
    """Whether silence is how this flow ends: not TCP, whose end the cell sees (``closing``).

    An established TCP connection that is silent is a control channel or a
    keep-alive: alive until FIN, RST or the tracker's own expiry, cheap to
    protect, and exactly what must not lose its state (iperf3's control
    connection, an SSH session). A flow of unknown protocol is not judged either.
    """
    return flow.first is not None and flow.first.proto != PROTO_TCP


class AgingPolicy:
    """The ``prism.policy.base.Policy`` of one switch that decides as flows age (see the module docstring).

    Args:
        ring: The switch's ring over all its cells.
        max_replication_factor: The most mirrors a flow gets (0: never mirror).
        settings: Milestones, mode, budget and thresholds.
        scorer: The model (None: the age rule, every flow alive at a milestone is promoted).
        health: The failure detector (None: every cell equally healthy).
        budget: The copy budget (default: one of its own; shared by every switch's policy
            when the caller passes the same one).
    """

    def __init__(self, ring: HashRing, max_replication_factor: int, settings: AgingSettings = AgingSettings(),
                 scorer: Optional[AliveScorer] = None, health: Optional[Health] = None,
                 budget: Optional[CopyBudget] = None) -> None:  # fmt: skip
        if max_replication_factor < 0:
            raise ValueError(f"max_replication_factor must be >= 0, not {max_replication_factor}")
        self.ring = ring
        self.max_replication_factor = max_replication_factor
        self.settings = settings
        self.scorer = scorer
        self.health = health
        self.budget = budget if budget is not None else CopyBudget.of(settings)
        self._birth_mode = MODE_STATE if settings.mode == MODE_AUTO else settings.mode
        self._flows: Dict[int, _Flow] = {}
        self._alone: Dict[str, MirroringProfile] = {}
        self._mirrored: Dict[Tuple[str, Tuple[str, ...]], MirroringProfile] = {}
        self._mirror_load: Dict[str, int] = {}
        self._risk: Dict[str, float] = {}
        self._reference = 0.0
        self._risk_at: Optional[float] = None
        self.counts: Dict[str, int] = dict.fromkeys(
            ("born", "redecided", "scored", "promoted", "demoted", "to_state", "kept", "quiet", "forgotten",
             "adopted", "closing", "idle", "born_mirrored"), 0)

    @property
    def milestones_s(self) -> Tuple[float, ...]:
        """See ``prism.policy.base.Policy.milestones_s``."""
        return self.settings.milestones_s

    # --- birth: the packet-in path -----------------------------------------------------
    def profile_for(self, packet_info: PacketInfo, live_cells: Collection[str], now: float) -> MirroringProfile:
        """The primary (first live cell of the ring order), and mirrors for a SYN-opened TCP flow while
        birth mirroring is open (module docstring); the flow is remembered.

        Raises:
            NoLiveCell: no live cell on this switch's ring.
        """
        flow_id = packet_info.flow_id
        for cell_id in self.ring.order(flow_id):
            if cell_id in live_cells:
                break
        else:
            raise NoLiveCell(f"no live cell for flow {packet_info.key} (live: {sorted(live_cells)})")
        flows = self._flows
        flow = flows[flow_id] = _Flow(packet_info, now, self._birth_mode)
        if len(flows) > MAX_LIVE_FLOWS:
            self._forget(next(iter(flows)))
        self.counts["born"] += 1
        self.budget.report(flow.reported, flow.birth_copies)  # the first packet (a SYN's copy): known now
        if flow.syn and self.budget.birth_open and self.max_replication_factor:
            mirrors = self._choose_mirrors(flow_id, cell_id, live_cells, now)
            if mirrors:
                flow.mirrors, flow.promoted_packets, flow.mode = mirrors, 0, MODE_STATE
                self._load(flow)
                self.counts["born_mirrored"] += 1
                key = (cell_id, mirrors)
                profile = self._mirrored.get(key)
                if profile is None:
                    profile = self._mirrored[key] = MirroringProfile(cell_id, mirrors, len(mirrors))
                return profile
        profile = self._alone.get(cell_id)
        if profile is None:  # profiles are immutable: one per primary serves every new flow
            profile = self._alone[cell_id] = MirroringProfile(cell_id)
        return profile

    def mode_for(self, flow_id: int) -> str:
        """See ``prism.policy.base.Policy.mode_for`` (a flow it does not know: the configured mode)."""
        flow = self._flows.get(flow_id)
        return flow.mode if flow is not None else self._birth_mode

    # --- milestones ----------------------------------------------------------------------
    def redecide(self, flow_id: int, current: MirroringProfile, age_s: float, packets: int, bytes: int,
                 live_cells: Collection[str], now: float, idle_s: Optional[float] = None,
                 closing: Optional[bool] = None) -> Optional[Decision]:  # fmt: skip
        """See ``prism.policy.base.Policy.redecide`` and the module docstring."""
        counts = self.counts
        counts["redecided"] += 1
        flow = self._flows.get(flow_id)
        if flow is None:  # placed before a restart, or forgotten: known by its counters only
            flow = self._flows[flow_id] = _Flow(None, now - age_s, self._birth_mode)
            flow.mirrors = current.mirror_cells
            flow.promoted_packets = 0 if current.mirror_cells else -1
            counts["adopted"] += 1
        if flow.mirrors != current.mirror_cells:  # the director moved it (a mirror failed)
            self._unload(flow)
            flow.mirrors = current.mirror_cells
            self._load(flow)
        quiet = packets <= max(flow.last_packets, 1)
        scorer = self.scorer
        ask = scorer is not None and (not quiet or getattr(scorer, "scores_quiet_flows", False))
        probability = self._alive_probability(flow, age_s, packets, bytes) if ask else None
        self._report(flow, packets, bool(closing))
        flow.last_age, flow.last_packets = age_s, packets
        if not current.mirror_cells:
            if not self.max_replication_factor or age_s < self.budget.min_promotion_age_s:
                counts["kept"] += 1
                return None
            if closing:  # a FIN or RST seen: nothing left worth a seed
                counts["closing"] += 1
                return None
            if (idle_s is not None and packets >= IDLE_RULE_MIN_PACKETS and _ends_silently(flow)
                    and idle_s > self.settings.max_idle_share * age_s):  # fmt: skip
                counts["idle"] += 1  # an exchange, then silence for most of its life: probably ended
                return None
            if probability is None and quiet and not self.settings.promote_quiet:
                counts["quiet"] += 1
                return None
            if probability is not None and probability < self.settings.promote_probability:
                counts["kept"] += 1
                return None
            mirrors = self._choose_mirrors(flow_id, current.primary_cell, live_cells, now)
            if not mirrors:
                counts["kept"] += 1
                return None
            flow.mirrors, flow.promoted_packets = mirrors, packets
            flow.mode = self._promotion_mode(age_s, packets)
            self._load(flow)
            counts["promoted"] += 1
            return MirroringProfile(current.primary_cell, mirrors, len(mirrors)), flow.mode
        if probability is not None and probability < self.settings.demote_probability:  # (never when quiet)
            self._unload(flow)
            flow.mirrors = ()
            counts["demoted"] += 1
            return MirroringProfile(current.primary_cell), flow.mode
        if flow.mode == MODE_FULL and self.budget.share() > self.settings.budget:
            flow.mode = MODE_STATE
            counts["to_state"] += 1
            return current, MODE_STATE
        counts["kept"] += 1
        return None

    def _report(self, flow: _Flow, packets: int, closing: bool) -> None:
        """Feed the birth estimate with what a report says: its packets since the last, and the
        copies a birth mirror of a SYN-opened flow would have had since."""
        copies = 0
        if flow.syn:
            so_far = birth_copies(packets, closing)
            copies, flow.birth_copies = max(so_far - flow.birth_copies, 0), max(so_far, flow.birth_copies)
        more, flow.reported = max(packets - flow.reported, 0), max(packets, flow.reported)
        self.budget.report(more, copies)

    def _promotion_mode(self, age_s: float, packets: int) -> str:
        """The configured mode; in ``auto``, ``full`` for a slow flow while the copy budget allows."""
        mode = self.settings.mode
        if mode != MODE_AUTO:
            return mode
        slow = packets < self.settings.slow_flow_pps * age_s
        return MODE_FULL if slow and self.budget.share() <= self.settings.budget else MODE_STATE

    def _alive_probability(self, flow: _Flow, age_s: float, packets: int, bytes_: int) -> Optional[float]:
        """The model's P(lives ``horizon_s`` more); None without a model."""
        if self.scorer is None:
            return None
        first = flow.first
        if first is None:
            proto_cls, port_cls = -1, -1  # unknown: the trees send NaN-like values to a side
        else:
            proto_cls, port_cls = proto_class(first.proto), port_class(first.sport, first.dport)
        row = aging_row(age_s, packets, bytes_, flow.last_age, flow.last_packets, proto_cls, port_cls)
        self.counts["scored"] += 1
        return self.scorer.alive_probability(row)

    # --- mirrors -------------------------------------------------------------------------
    def _choose_mirrors(self, flow_id: int, primary: str, live_cells: Collection[str], now: float) -> Tuple[str, ...]:
        candidates = [c for c in self.ring.order(flow_id) if c != primary and c in live_cells]
        if not candidates:
            return ()
        return choose_mirrors(primary, candidates, self._risks(now), self._reference, self._mirror_load,
                              self.max_replication_factor, self.settings.risk_target)  # fmt: skip

    def _risks(self, now: float) -> Mapping[str, float]:
        """Every cell's failure probability within the horizon, refreshed once a HEALTH_REFRESH_S."""
        if self.health is None:
            return self._risk
        if self._risk_at is None or now - self._risk_at >= HEALTH_REFRESH_S or now < self._risk_at:
            horizon = self.settings.horizon_s
            self._risk = {c: self.health.failure_probability(c, horizon, now) for c in self.ring.cells}
            values = sorted(self._risk.values())
            self._reference = values[len(values) // 2] if values else 0.0
            self._risk_at = now
        return self._risk

    def _load(self, flow: _Flow) -> None:
        for cell_id in flow.mirrors:
            self._mirror_load[cell_id] = self._mirror_load.get(cell_id, 0) + 1

    def _unload(self, flow: _Flow) -> None:
        for cell_id in flow.mirrors:
            if self._mirror_load.get(cell_id, 0) > 0:
                self._mirror_load[cell_id] -= 1

    def _forget(self, flow_id: int) -> None:
        flow = self._flows.pop(flow_id)
        self._unload(flow)
        self.counts["forgotten"] += 1

    # --- flow ends -----------------------------------------------------------------------
    def flow_ended(self, entry, now: float) -> None:
        """A flow's last FSC entry was removed: its estimated copies feed the budget.

        Args:
            entry: Its ``prism.placement.profiles.FlowEntry`` with the summed flow-removed counters.
            now: Current time.
        """
        flow = self._flows.pop(entry.flow_id, None)
        if flow is None:
            return
        self._unload(flow)
        packets = entry.packets + 1  # the switch's entries never counted the first packet (a packet-out)
        self._report(flow, packets, True)  # ended: its teardown, if any, is behind it
        if flow.promoted_packets == 0 and flow.syn:  # mirrored at birth: its cost is the birth estimate's
            return
        self.budget.observe(packets, estimated_copies(flow, packets), flow.mode == MODE_FULL)

    # --- questions -----------------------------------------------------------------------
    @property
    def live_flows(self) -> int:
        """Flows born (or adopted) and not yet ended."""
        return len(self._flows)

    def mirror_load(self) -> Dict[str, int]:
        """Cell -> live flows it mirrors."""
        return {cell_id: count for cell_id, count in self._mirror_load.items() if count}

    def status(self) -> Dict[str, object]:
        """Plain values for the REST API."""
        return {"live_flows": len(self._flows), **self.counts, **self.budget.status()}

    def __repr__(self) -> str:
        return (f"AgingPolicy({self.ring!r}, milestones_s={self.milestones_s}, mode={self.settings.mode!r}, "
                f"max_replication_factor={self.max_replication_factor}, "
                f"model={'yes' if self.scorer is not None else 'age rule'})")  # fmt: skip


def estimated_copies(flow: _Flow, packets: int) -> float:
    """Copies a flow sent its mirrors, as the budget estimates them from its end counters."""
    if flow.promoted_packets < 0 or not flow.mirrors:
        return 0.0
    if flow.promoted_packets == 0 and flow.syn and flow.mode == MODE_STATE:  # mirrored at birth
        return float(birth_copies(packets, True) * len(flow.mirrors))
    after = max(int(packets) - flow.promoted_packets, 0)
    if flow.mode == MODE_FULL:
        return float(after * len(flow.mirrors))
    tcp = flow.first is None or flow.first.proto == PROTO_TCP
    return float(min(after, STATE_COPIES_AFTER_PROMOTION) * len(flow.mirrors)) if tcp else 0.0


def make_policies(rings: Sequence[HashRing], max_replication_factors: Sequence[int], settings: AgingSettings,
                  scorer: Optional[AliveScorer] = None) -> List[AgingPolicy]:  # fmt: skip
    """One policy per switch, sharing one copy budget."""
    budget = CopyBudget.of(settings)
    return [AgingPolicy(ring, rf, settings, scorer, budget=budget) for ring, rf in zip(rings, max_replication_factors)]


def settings_from_config(prediction, horizon_s: Optional[float] = None) -> AgingSettings:
    """``AgingSettings`` of a configuration's ``prediction`` section (``prism.config.load.PredictionConfig``).

    Args:
        prediction: The section.
        horizon_s: The look-ahead when the section names none (the model's horizon, if any).
    """
    horizon = prediction.horizon_s or horizon_s or DEFAULT_HORIZON_S
    return AgingSettings(milestones_s=prediction.milestones_s, mode=prediction.mode, budget=prediction.budget,
                         promote_probability=prediction.promote_probability,
                         demote_probability=prediction.demote_probability, horizon_s=horizon,
                         promote_quiet=getattr(prediction, "promote_quiet", AgingSettings.promote_quiet),
                         birth=getattr(prediction, "birth", AgingSettings.birth))  # fmt: skip
