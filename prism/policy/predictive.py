"""The predictive replication policy: mirror the flows predicted to outlive a takeover, within a budget.

For every new flow (``PredictivePolicy.profile_for``, the packet-in path):

1. **Placement.** The primary is the first live cell of the flow's ring order,
   as with ``FixedPolicy``, so both policies place a flow on the same cell.
2. **Prediction.** ``prism.policy.features.flow_features`` (first packet + the
   bounded history of recent flows) and the model's predicted duration.
3. **Risk.** The score is the predicted duration times how much likelier the
   primary is to fail within ``horizon_s`` than the median cell of the switch
   (``failure_probability`` from ``prism.control.health``, between 1 and
   ``MAX_RISK_BOOST``): a flow on a flapping cell needs its state elsewhere
   sooner, so more of them are mirrored.
4. **Budget.** ``prism.policy.budget.BudgetTracker`` says whether the score is
   mirrored; its threshold is re-fitted on ended flows so that the mirror
   copies per packet track the configured budget.
4b. **Cheap long-lived flows.** A flow below the line that is predicted to
   outlive ``horizon_s`` and to carry at most ``cheap_flow_packets`` packets
   (control channels, SSH, keep-alives: long idle stateful connections) is
   mirrored anyway: the budget is a share of packets, so it costs next to
   nothing. Its packets are predicted only then (not on every packet-in);
   its copies count in the budget's window and are taken off the budget
   before the line is fitted.
5. **Mirrors.** Candidates are the next live cells on the ring, healthy and
   not overloaded first: a cell ``prism.policy.base.AVOID_RISK_RATIO`` times riskier than the
   median, or holding more than ``LOAD_FACTOR`` times the mean mirror load
   (plus ``LOAD_SLACK`` flows), goes to the back. One mirror, then more while
   the primary and every mirror could all fail within the horizon with a
   probability above ``risk_target`` (independent failures), up to
   ``max_replication_factor``.

At a flow's end (``flow_ended``, called by the director with the joined
flow-removed counters) the outcome feeds the feature history
(``FlowHistory.record_end``) and the budget's window. The model, the history
and the budget are shared by every switch (``PredictionEngine``); placement is
per switch.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Collection, Dict, List, Mapping, Optional, Protocol, Sequence, Tuple, Union

from prism.policy.features import FirstPacket, FlowHistory, flow_features
from prism.policy.budget import CHEAP_FLOWS_BUDGET_SHARE, DEFAULT_CHEAP_FLOW_PACKETS, BudgetSettings, BudgetTracker
from prism.flows.outcome import flow_outcome
from prism.flows.identity import FlowKey, PacketInfo
from prism.policy.base import MODE_FULL, Decision, NoLiveCell, choose_mirrors
from prism.placement.profiles import MirroringProfile
from prism.placement.ring import HashRing

MAX_RISK_BOOST = 100.0
DEFAULT_RISK_TARGET = 1e-6
#: A takeover successor is predicted to access a flow's state if every cell before it may
#: fail within the flow's remaining predicted lifetime with at least this probability.
ACCESS_PROBABILITY = 1e-3
HEALTH_REFRESH_S = 1.0
MAX_IN_FLIGHT = 1 << 18


class Predictor(Protocol):
    """What the policy needs of ``models.predictor.Predictor``."""

    horizon_s: float

    def predict_duration(self, features: Sequence[float]) -> float: ...  # pragma: no cover

    def predict_packets(self, features: Sequence[float]) -> float: ...  # pragma: no cover

    def threshold_for(self, budget: float) -> Optional[float]: ...  # pragma: no cover


class Health(Protocol):
    """What the policy needs of ``prism.control.health.FailureDetector``."""

    def failure_probability(self, cell_id: str, horizon_s: float, now: float) -> float: ...  # pragma: no cover


def initial_threshold(predictor: Predictor, budget: float) -> Optional[float]:
    """The training data's threshold for ``budget``; below every calibrated budget, the highest one."""
    threshold = predictor.threshold_for(budget)
    if threshold is None:
        calibrated = getattr(predictor, "manifest", {}).get("thresholds", {})
        threshold = max((float(value) for value in calibrated.values()), default=None)
    return threshold


class PredictionEngine:
    """The model, the feature history and the budget, shared by the policies of every switch.

    Args:
        predictor: The loaded model.
        budget: Budget settings (mirror copies per packet, window).
        history: The feature history (default: empty, over the model's horizon).
    """

    def __init__(self, predictor: Predictor, budget: BudgetSettings, history: Optional[FlowHistory] = None):
        self.predictor = predictor
        self.history = history if history is not None else FlowHistory(predictor.horizon_s)
        self.tracker = BudgetTracker(budget, initial_threshold(predictor, budget.budget))
        self.generation = 0
        self.flows_scored = 0
        self.flows_mirrored = 0
        self.flows_mirrored_cheap = 0  #: of flows_mirrored: below the line, as cheap long-lived flows
        self.packets_predicted = 0  #: flows whose packets were predicted (the cheap-flow rule's extra cost)
        self.outcomes_unknown = 0

    def score(self, packet_info: PacketInfo, now: float, record: bool = True) -> Tuple[FirstPacket, float]:
        """The flow's first packet as the features see it, and its predicted duration (s).

        Args:
            packet_info: The first packet.
            now: Its arrival.
            record: Count the flow as started in the history (a new flow, not a question).
        """
        first = FirstPacket.from_packet(packet_info, now)
        return first, self.score_first(first, now, record)

    def score_first(self, first: FirstPacket, now: float, record: bool = True) -> float:
        """The predicted duration (s) of a flow given as its ``FirstPacket`` (replays of flow records)."""
        return self.predict(first, now, record)[1]

    def predict(self, first: FirstPacket, now: float, record: bool = True) -> Tuple[List[float], float]:
        """A flow's feature row (for further predictions) and its predicted duration (s)."""
        features = flow_features(first, self.history, now, record_start=record)
        return features, self.predictor.predict_duration(features)

    def predicted_packets(self, features: Sequence[float]) -> Optional[float]:
        """A flow's expected packets (both directions); None if the predictor cannot say."""
        predict_packets = getattr(self.predictor, "predict_packets", None)
        if predict_packets is None:
            return None
        self.packets_predicted += 1
        return predict_packets(features)

    def flow_ended(
        self, first: FirstPacket, duration_s: float, packets: Optional[int], score: Optional[float],
        replication_factor: int, generation: int, now: float, outside_line: bool = False,
    ) -> None:  # fmt: skip
        """Feed an ended flow's outcome to the history and (same model only) the budget.

        ``outside_line``: the flow was mirrored regardless of the budget line (a cheap long-lived flow).
        """
        if packets is None:
            self.outcomes_unknown += 1
            return
        self.history.record_end(first, duration_s, packets, now)
        if score is not None and generation == self.generation:
            self.tracker.observe(score, packets, replication_factor, outside_line)

    def replace_predictor(self, predictor: Predictor) -> None:
        """Serve a new model: the budget starts again from its training threshold (scores differ).

        The history is kept when the new model has the same horizon.
        """
        if predictor.horizon_s != self.predictor.horizon_s:
            self.history = FlowHistory(predictor.horizon_s)
        self.predictor = predictor
        self.generation += 1
        self.tracker.reset(initial_threshold(predictor, self.tracker.settings.budget))

    def status(self) -> Dict[str, object]:
        """Plain values for the REST API."""
        return {
            "generation": self.generation,
            "flows_scored": self.flows_scored,
            "flows_mirrored": self.flows_mirrored,
            "flows_mirrored_cheap": self.flows_mirrored_cheap,
            "packets_predicted": self.packets_predicted,
            "outcomes_unknown": self.outcomes_unknown,
            "history_keys": len(self.history),
            **self.tracker.status(),
        }


@dataclass(slots=True)
class _Flight:
    """A flow the policy decided and has not seen end."""

    first: FirstPacket
    predicted_s: float
    score: float
    cells: Tuple[str, ...]
    generation: int
    decided_at: float
    cheap: bool = False  #: mirrored below the line as a cheap long-lived flow

    @property
    def replication_factor(self) -> int:
        return len(self.cells) - 1


class PredictivePolicy:
    """The ``Policy`` of one switch that mirrors what the model predicts long (see the module docstring).

    Args:
        ring: The switch's ring over all its cells.
        engine: The shared model, history and budget.
        max_replication_factor: The most mirrors a flow gets.
        idle_timeout: The FSC entries' idle timeout (what flow-removed durations include).
        horizon_s: Look-ahead of the cells' failure probability (default: the model's horizon).
        health: The failure detector (None: every cell equally healthy).
        risk_target: Mirrors are added while all replicas could fail together with more than this.
        cheap_flow_packets: A flow below the line predicted to outlive ``horizon_s`` with at most
            this many packets is mirrored anyway (0: never).
    """

    def __init__(self, ring: HashRing, engine: PredictionEngine, max_replication_factor: int,
                 idle_timeout: float, horizon_s: Optional[float] = None, health: Optional[Health] = None,
                 risk_target: float = DEFAULT_RISK_TARGET,
                 cheap_flow_packets: int = DEFAULT_CHEAP_FLOW_PACKETS) -> None:  # fmt: skip
        if max_replication_factor < 0:
            raise ValueError(f"max_replication_factor must be >= 0, not {max_replication_factor}")
        if cheap_flow_packets < 0:
            raise ValueError(f"cheap_flow_packets must be >= 0, not {cheap_flow_packets}")
        self.ring = ring
        self.engine = engine
        self.max_replication_factor = max_replication_factor
        self.idle_timeout = idle_timeout
        self.horizon_s = horizon_s if horizon_s is not None else engine.predictor.horizon_s
        self.health = health
        self.risk_target = risk_target
        self.cheap_flow_packets = cheap_flow_packets
        self._in_flight: "OrderedDict[int, _Flight]" = OrderedDict()
        self._mirror_load: Dict[str, int] = {}
        self._risk: Dict[str, float] = {}
        self._reference = 0.0  #: the median cell's failure probability
        self._risk_at: Optional[float] = None
        self.evicted = 0

    # --- the packet-in path -------------------------------------------------------------
    def profile_for(self, packet_info: PacketInfo, live_cells: Collection[str], now: float) -> MirroringProfile:
        """See ``prism.policy.base.Policy.profile_for``.

        Raises:
            NoLiveCell: no live cell on this switch's ring.
        """
        live = live_cells if isinstance(live_cells, (set, frozenset)) else frozenset(live_cells)
        ranked = [cell_id for cell_id in self.ring.order(packet_info.flow_id) if cell_id in live]
        if not ranked:
            raise NoLiveCell(f"no live cell for flow {packet_info.key} (live: {sorted(live)})")
        engine = self.engine
        first = FirstPacket.from_packet(packet_info, now)
        features, predicted = engine.predict(first, now)
        risk = self._risks(now)
        score = max(predicted, 0.0) * self._boost(ranked[0], risk)
        mirrors: Tuple[str, ...] = ()
        cheap = False
        if self.max_replication_factor and len(ranked) > 1:
            if engine.tracker.mirrors(score, packet_info.flow_id):
                mirrors = self._choose_mirrors(ranked, risk)
            elif predicted > self.horizon_s and self._cheap_allowed() and self._cheap(features):
                mirrors, cheap = self._choose_mirrors(ranked, risk), True
        engine.flows_scored += 1
        engine.flows_mirrored += bool(mirrors)
        engine.flows_mirrored_cheap += cheap
        self._remember(packet_info.flow_id, _Flight(first, predicted, score, (ranked[0], *mirrors),
                                                    engine.generation, now, cheap))  # fmt: skip
        return MirroringProfile(ranked[0], mirrors, len(mirrors))

    def _cheap_allowed(self) -> bool:
        """The cheap-flow rule may spend at most CHEAP_FLOWS_BUDGET_SHARE of the budget.

        Where most flows are tiny, the flows it picks can carry a large share of
        the packets; past this cap they wait for the line like any other flow.
        """
        tracker = self.engine.tracker
        return tracker.outside_line_share() < CHEAP_FLOWS_BUDGET_SHARE * tracker.settings.budget

    def _cheap(self, features: Sequence[float]) -> bool:
        """Predicted to carry at most ``cheap_flow_packets`` packets (the one extra prediction, below the line)."""
        if not self.cheap_flow_packets:
            return False
        packets = self.engine.predicted_packets(features)
        return packets is not None and packets <= self.cheap_flow_packets

    def _risks(self, now: float) -> Mapping[str, float]:
        """Every cell's failure probability within the horizon, refreshed once a HEALTH_REFRESH_S."""
        if self.health is None:
            return self._risk
        if self._risk_at is None or now - self._risk_at >= HEALTH_REFRESH_S or now < self._risk_at:
            self._risk = {cell_id: self.health.failure_probability(cell_id, self.horizon_s, now)
                          for cell_id in self.ring.cells}  # fmt: skip
            values = sorted(self._risk.values())
            self._reference = values[len(values) // 2] if values else 0.0
            self._risk_at = now
        return self._risk

    def _boost(self, primary: str, risk: Mapping[str, float]) -> float:
        """How much riskier the primary is than the median cell (1 .. MAX_RISK_BOOST)."""
        if not risk:
            return 1.0
        mine, reference = risk.get(primary, 0.0), self._reference
        if reference <= 0.0:
            return MAX_RISK_BOOST if mine > 0.0 else 1.0
        return min(MAX_RISK_BOOST, max(1.0, mine / reference))

    def _choose_mirrors(self, ranked: Sequence[str], risk: Mapping[str, float]) -> Tuple[str, ...]:
        return choose_mirrors(ranked[0], ranked[1:], risk, self._reference, self._mirror_load,
                              self.max_replication_factor, self.risk_target)  # fmt: skip

    def _remember(self, flow_id: int, flight: _Flight) -> None:
        old = self._in_flight.pop(flow_id, None)
        if old is not None:
            self._unload(old)
        self._in_flight[flow_id] = flight
        for cell_id in flight.cells[1:]:
            self._mirror_load[cell_id] = self._mirror_load.get(cell_id, 0) + 1
        if len(self._in_flight) > MAX_IN_FLIGHT:
            _flow_id, oldest = self._in_flight.popitem(last=False)
            self._unload(oldest)
            self.evicted += 1

    def _unload(self, flight: _Flight) -> None:
        for cell_id in flight.cells[1:]:
            self._mirror_load[cell_id] -= 1

    # --- the aging interface (this policy decides once, at birth) --------------------------
    #: It never re-decides (``prism.policy.aging.AgingPolicy`` does).
    milestones_s: Tuple[float, ...] = ()

    def mode_for(self, flow_id: int) -> str:
        """Every flow is mirrored in full."""
        return MODE_FULL

    def redecide(self, flow_id: int, current: MirroringProfile, age_s: float, packets: int, bytes: int,
                 live_cells: Collection[str], now: float, idle_s: Optional[float] = None,
                 closing: Optional[bool] = None) -> Optional[Decision]:  # fmt: skip
        """Never changes a flow."""
        return None

    # --- flow ends ----------------------------------------------------------------------
    def flow_ended(self, entry, now: float) -> None:
        """A flow's last FSC entry was removed (``MirroringDirector`` flow-end listener).

        Args:
            entry: Its ``prism.placement.profiles.FlowEntry`` with the summed flow-removed counters.
            now: Current time.
        """
        flight = self._in_flight.pop(entry.flow_id, None)
        outcome = flow_outcome(entry, self.idle_timeout)
        if flight is not None:
            self._unload(flight)
            self.engine.flow_ended(flight.first, outcome.duration_s, outcome.packets, flight.score,
                                   flight.replication_factor, flight.generation, now, flight.cheap)  # fmt: skip
        elif entry.first_packet is not None:  # decided before a restart or evicted: history only
            first = FirstPacket.from_packet(entry.first_packet, entry.created_at)
            self.engine.flow_ended(first, outcome.duration_s, outcome.packets, None, 0, -1, now)

    # --- questions ----------------------------------------------------------------------
    def predict_state_access(
        self, flow: Union[int, FlowKey, PacketInfo], now: Optional[float] = None
    ) -> List[str]:
        """The cells predicted to access a flow's state over its predicted lifetime.

        The primary and the mirrors (they hold and update the state all along),
        then further takeover successors on the ring, each while every cell
        before it could fail within the flow's remaining predicted lifetime
        with a probability of at least ``ACCESS_PROBABILITY``.

        Args:
            flow: A flow_id or key of a flow this policy placed, or the first
                packet of any flow (predicted afresh, the history left as it is).
            now: Current time (default: when the flow was placed).

        Raises:
            KeyError: a flow_id or key this policy has not placed (or has seen end).
        """
        flow_id = flow if isinstance(flow, int) else flow.flow_id
        flight = self._in_flight.get(flow_id)
        if flight is None:
            if not isinstance(flow, PacketInfo):
                raise KeyError(f"flow {flow_id:#x} is not a flow this policy placed and has not seen end")
            at = 0.0 if now is None else now
            _first, predicted = self.engine.score(flow, at, record=False)
            cells, decided_at = tuple(self.ring.order(flow_id)[:1]), at
        else:
            predicted, cells, decided_at = flight.predicted_s, flight.cells, flight.decided_at
        now = decided_at if now is None else now
        remaining = max(0.0, decided_at + max(predicted, 0.0) - now)
        access = list(cells)
        if self.health is None or remaining <= 0.0:
            return access
        all_failed = 1.0
        for cell_id in access:
            all_failed *= self.health.failure_probability(cell_id, remaining, now)
        for cell_id in self.ring.order(flow_id):
            if cell_id in access:
                continue
            if all_failed < ACCESS_PROBABILITY:
                break
            access.append(cell_id)
            all_failed *= self.health.failure_probability(cell_id, remaining, now)
        return access

    @property
    def in_flight(self) -> int:
        """Flows placed and not yet ended."""
        return len(self._in_flight)

    def mirror_load(self) -> Dict[str, int]:
        """Cell -> flows in flight it mirrors."""
        return {cell_id: count for cell_id, count in self._mirror_load.items() if count}

    def __repr__(self) -> str:
        return (f"PredictivePolicy({self.ring!r}, budget={self.engine.tracker.settings.budget}, "
                f"max_replication_factor={self.max_replication_factor})")  # fmt: skip
