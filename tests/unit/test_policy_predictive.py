"""The predictive policy through the director and the fake switch: who gets mirrors, within what budget."""

from __future__ import annotations

import random
from typing import Dict, List, Optional

import pytest

from prism.policy.features import FEATURE_NAMES, FirstPacket
from testkit import oxm
from prism.policy.budget import BudgetSettings
from prism.config.load import CellConfig, SwitchConfig
from prism.director.core import MirroringDirector
from testkit.fakeswitch import FakeSwitch, Result
from prism.director.flow_end import flow_removed, tell_policy
from prism.flows.identity import TCP_SYN, parse_frame
from prism.openflow.changes import MIRROR_MAC
from prism.policy.base import FixedPolicy, NoLiveCell
from prism.policy.predictive import PredictionEngine, PredictivePolicy
from prism.placement.ring import HashRing

IDLE_TIMEOUT = 10
CLIENT_PORT, SERVER_PORT = 1, 2
CELL_PORTS = {"c1": 11, "c2": 12, "c3": 13, "c4": 14}
CLIENT_MAC, SERVER_MAC = "02:00:00:00:01:01", "02:00:00:00:02:02"
CLIENT_IP, SERVER_IP = "10.0.1.1", "10.0.2.2"
SERVICE_PORT = FEATURE_NAMES.index("service_port")
TRAINING_THRESHOLD_S = 10.0
#: Predicted duration (s) by service port: DNS short, web medium, a bulk transfer long.
DURATIONS = {53: 0.05, 443: 5.0, 5201: 30.0}
#: Predicted packets by service port: none of these is a cheap long-lived flow.
PACKETS = {53: 2.0, 443: 200.0, 5201: 5000.0}
#: A control channel: outlives the horizon (2 s) below the line (10 s) with few packets.
CONTROL_PORT, CONTROL_S, CONTROL_PACKETS = 5202, 3.0, 12.0


class FakePredictor:
    """Predicts a flow's duration and packets from its service port; the training threshold is 10 s."""

    horizon_s = 2.0
    manifest = {"thresholds": {"0.25": TRAINING_THRESHOLD_S}}

    def __init__(self, durations: Optional[Dict[int, float]] = None,
                 packets: Optional[Dict[int, float]] = None) -> None:  # fmt: skip
        self.durations = DURATIONS if durations is None else durations
        self.packets = PACKETS if packets is None else packets
        self.calls = 0
        self.packet_calls = 0

    def predict_duration(self, features) -> float:
        self.calls += 1
        return self.durations.get(int(features[SERVICE_PORT]), 1.0)

    def predict_packets(self, features) -> float:
        self.packet_calls += 1
        return self.packets.get(int(features[SERVICE_PORT]), 1000.0)

    def threshold_for(self, budget: float) -> Optional[float]:
        return TRAINING_THRESHOLD_S if budget >= 0.25 else None


class FakeHealth:
    """Failure probabilities by cell (default: every cell alike)."""

    def __init__(self, risk: Optional[Dict[str, float]] = None, default: float = 1e-4) -> None:
        self.risk = risk or {}
        self.default = default

    def failure_probability(self, cell_id: str, horizon_s: float, now: float) -> float:
        return self.risk.get(cell_id, self.default)


class Network:
    """A director with the predictive policy driving a fake switch; flow-removed fed back."""

    def __init__(self, budget: float = 0.3, health: Optional[FakeHealth] = None, max_rf: int = 2,
                 predictor: Optional[FakePredictor] = None, cheap_flow_packets: int = 64,
                 **budget_settings) -> None:  # fmt: skip
        self.config = SwitchConfig(1, "s1", tuple(CellConfig(c, p) for c, p in CELL_PORTS.items()),
                                   (CLIENT_PORT, SERVER_PORT))  # fmt: skip
        self.ring = HashRing(list(CELL_PORTS))
        self.predictor = predictor or FakePredictor()
        self.engine = PredictionEngine(self.predictor, BudgetSettings(budget, **budget_settings))
        self.policy = PredictivePolicy(self.ring, self.engine, max_rf, IDLE_TIMEOUT, health=health,
                                       cheap_flow_packets=cheap_flow_packets)  # fmt: skip
        self.director = MirroringDirector(self.config, IDLE_TIMEOUT, self.policy, ring=self.ring)
        self.switch = FakeSwitch()
        self.now = 0.0
        self.apply(self.director.on_switch_connect(self.now))
        self.send(CLIENT_PORT, oxm.arp_packet(CLIENT_MAC, CLIENT_IP, SERVER_IP))
        self.send(SERVER_PORT, oxm.arp_packet(SERVER_MAC, SERVER_IP, CLIENT_IP, eth_dst=CLIENT_MAC, op=2))

    def apply(self, changes) -> Result:
        result = self.switch.apply(changes, now=self.now)
        for report in result.flow_removed:
            self.flow_removed(report)
        return result

    def flow_removed(self, report) -> None:
        """What the Ryu shell does: the director's changes first, then the policy hears of an ended flow."""
        changes, ended = flow_removed(self.director, self.now, report.cookie, report.match, report.packets,
                                      report.bytes, report.duration_s)  # fmt: skip
        self.apply(changes)
        if ended is not None:
            tell_policy(self.director, ended, self.now)

    def send(self, in_port: int, packet) -> Result:
        result = self.switch.process(in_port, packet, now=self.now)
        total = Result(outputs=list(result.outputs))
        for packet_in in result.packet_ins:
            total.extend(self.apply(self.director.on_packet_in(self.now, packet_in.in_port, packet_in.table_id,
                                                               packet_in.data)))  # fmt: skip
        return total

    def advance_to(self, now: float) -> None:
        self.now = now
        for report in self.switch.expire(now):
            self.flow_removed(report)

    def profile_of(self, packet):
        return self.director.flows.get(flow_id(packet)).profile


def flow_id(packet) -> int:
    return parse_frame(oxm.to_frame(packet)).flow_id


def request(dport: int, sport: int = 40000):
    if dport == 53:
        return oxm.udp_packet(CLIENT_MAC, SERVER_MAC, CLIENT_IP, SERVER_IP, sport, dport, b"query")
    return oxm.tcp_packet(CLIENT_MAC, SERVER_MAC, CLIENT_IP, SERVER_IP, sport, dport, flags=TCP_SYN)


def mirror_copies(result: Result) -> int:
    return sum(1 for _port, fields in result.outputs if fields["eth_dst"] == MIRROR_MAC)


def cells_reached(network: Network, result: Result) -> Dict[str, str]:
    """cell -> 'primary' or 'mirror' for every copy that reached a cell."""
    by_port = {port: cell for cell, port in CELL_PORTS.items()}
    return {by_port[port]: ("mirror" if fields["eth_dst"] == MIRROR_MAC else "primary")
            for port, fields in result.outputs if port in by_port}  # fmt: skip


# --- who gets mirrors ---------------------------------------------------------------------------
def test_a_short_flow_reaches_only_its_primary_and_a_long_one_gets_a_marked_mirror():
    network = Network()
    dns = network.send(CLIENT_PORT, request(53))
    transfer = network.send(CLIENT_PORT, request(5201, sport=45000))
    assert list(cells_reached(network, dns).values()) == ["primary"]
    reached = cells_reached(network, transfer)
    assert sorted(reached.values()) == ["mirror", "primary"]
    profile = network.profile_of(request(5201, sport=45000))
    assert profile.replication_factor == 1 and reached[profile.mirror_cells[0]] == "mirror"
    assert network.profile_of(request(53)).replication_factor == 0
    assert network.director.counters.flows_mirrored == 1 and network.engine.flows_mirrored == 1


def test_the_primary_is_the_fixed_policys_primary():
    network = Network()
    fixed = FixedPolicy(network.ring, 1)
    for sport in range(40000, 40040):
        info = parse_frame(oxm.to_frame(request(5201, sport)))
        live = tuple(CELL_PORTS)
        assert network.policy.profile_for(info, live, 0.0).primary_cell == fixed.profile_for(info, live, 0.0).primary_cell


def test_no_mirror_ever_when_max_replication_factor_is_zero_or_one_cell_is_live():
    network = Network(max_rf=0)
    network.send(CLIENT_PORT, request(5201))
    assert network.profile_of(request(5201)).replication_factor == 0
    info = parse_frame(oxm.to_frame(request(5201, 41000)))
    assert Network().policy.profile_for(info, ("c2",), 0.0).replication_factor == 0
    with pytest.raises(NoLiveCell):
        Network().policy.profile_for(info, (), 0.0)


# --- cheap long-lived flows ---------------------------------------------------------------------
def control_predictor(packets: Optional[Dict[int, float]] = None) -> FakePredictor:
    """DURATIONS and PACKETS plus the control channel and ports 5203 (heavy) and 5204 (at the limit)."""
    return FakePredictor({**DURATIONS, CONTROL_PORT: CONTROL_S, 5203: CONTROL_S, 5204: CONTROL_S},
                         {**PACKETS, CONTROL_PORT: CONTROL_PACKETS, 5203: 65.0, 5204: 64.0, **(packets or {})})


def test_a_cheap_long_lived_flow_below_the_line_gets_a_mirror():
    network = Network(predictor=control_predictor())
    assert CONTROL_S < network.engine.tracker.threshold, "below the budget line"
    result = network.send(CLIENT_PORT, request(CONTROL_PORT))
    assert sorted(cells_reached(network, result).values()) == ["mirror", "primary"]
    assert network.profile_of(request(CONTROL_PORT)).replication_factor == 1
    network.send(CLIENT_PORT, request(5204, sport=41000))
    assert network.profile_of(request(5204, sport=41000)).replication_factor == 1, "at most 64 packets"
    assert network.engine.flows_mirrored == network.engine.flows_mirrored_cheap == 2
    assert network.engine.status()["flows_mirrored_cheap"] == 2


def test_a_long_heavy_flow_below_the_line_and_a_short_flow_get_no_mirror():
    network = Network(predictor=control_predictor())
    network.send(CLIENT_PORT, request(5203))
    assert network.profile_of(request(5203)).replication_factor == 0, "65 packets: not cheap"
    network.send(CLIENT_PORT, request(443))
    assert network.profile_of(request(443)).replication_factor == 0, "a web flow of 200 packets"
    short = Network(predictor=control_predictor({53: 1.0}))
    short.send(CLIENT_PORT, request(53))
    assert short.profile_of(request(53)).replication_factor == 0, "1 packet, but ends within the horizon"
    at_horizon = Network(predictor=FakePredictor({CONTROL_PORT: 2.0}, {CONTROL_PORT: 1.0}))
    at_horizon.send(CLIENT_PORT, request(CONTROL_PORT))
    assert at_horizon.profile_of(request(CONTROL_PORT)).replication_factor == 0, "must outlive the horizon"
    assert network.engine.flows_mirrored_cheap == short.engine.flows_mirrored_cheap == 0


def test_packets_are_predicted_only_below_the_line_for_flows_that_outlive_the_horizon():
    predictor = control_predictor()
    network = Network(predictor=predictor)
    network.send(CLIENT_PORT, request(53))
    network.send(CLIENT_PORT, request(5201, sport=45000))
    assert predictor.packet_calls == 0, "a short flow and a flow above the line: no packet prediction"
    network.send(CLIENT_PORT, request(CONTROL_PORT))
    network.send(CLIENT_PORT, request(443))
    assert predictor.packet_calls == 2


def test_the_rule_is_off_at_zero_packets():
    predictor = control_predictor()
    network = Network(predictor=predictor, cheap_flow_packets=0)
    network.send(CLIENT_PORT, request(CONTROL_PORT))
    assert network.profile_of(request(CONTROL_PORT)).replication_factor == 0
    assert predictor.packet_calls == 0
    with pytest.raises(ValueError):
        PredictivePolicy(network.ring, network.engine, 1, IDLE_TIMEOUT, cheap_flow_packets=-1)


# --- health and load ---------------------------------------------------------------------------
def first_mirror_candidate(network: Network, info) -> str:
    return network.ring.order(info.flow_id)[1]


def test_an_unhealthy_cell_is_avoided_as_mirror():
    info = parse_frame(oxm.to_frame(request(5201)))
    order = HashRing(list(CELL_PORTS)).order(info.flow_id)
    network = Network(health=FakeHealth({order[1]: 0.5}))
    profile = network.policy.profile_for(info, tuple(CELL_PORTS), 0.0)
    assert profile.primary_cell == order[0]
    assert profile.mirror_cells == (order[2],), "the next healthy cell on the ring"


def test_when_every_candidate_is_risky_the_replication_factor_rises():
    info = parse_frame(oxm.to_frame(request(5201)))
    network = Network(health=FakeHealth(default=0.05), max_rf=2)
    profile = network.policy.profile_for(info, tuple(CELL_PORTS), 0.0)
    assert profile.replication_factor == 2
    assert profile.cells == tuple(network.ring.order(info.flow_id)[:3])
    capped = Network(health=FakeHealth(default=0.05), max_rf=1)
    assert capped.policy.profile_for(info, tuple(CELL_PORTS), 0.0).replication_factor == 1


def test_short_flows_on_a_flapping_primary_are_mirrored():
    predictor = FakePredictor({53: 0.5})
    info = parse_frame(oxm.to_frame(request(53)))
    primary = HashRing(list(CELL_PORTS)).order(info.flow_id)[0]
    calm = Network(predictor=predictor, health=FakeHealth())
    assert calm.policy.profile_for(info, tuple(CELL_PORTS), 0.0).replication_factor == 0
    flapping = Network(predictor=predictor, health=FakeHealth({primary: 1e-4 * 50}))
    assert flapping.policy.profile_for(info, tuple(CELL_PORTS), 0.0).replication_factor == 1, "0.5 s x 50 > 10 s"


def test_an_overloaded_cell_is_passed_over_as_mirror():
    network = Network(budget=1.0)
    live = tuple(CELL_PORTS)
    for sport in range(20000, 20200):
        network.policy.profile_for(parse_frame(oxm.to_frame(request(5201, sport))), live, 0.0)
    loads = network.policy.mirror_load()
    assert sum(loads.values()) == 200
    assert max(loads.values()) <= 1.5 * (200 / len(loads)) + 8 + 1


# --- the budget over a population ------------------------------------------------------------------
KINDS = ((53, 2, 0.0, 0.6), (443, 20, 3.0, 0.3), (5201, 100, 25.0, 0.1))  # port, packets, seconds, share
#: Long-lived, few packets: a keep-alive connection (SSH), predicted cheap.
KEEPALIVE = (22, 6, 20.0, 0.05)


def run_population(network: Network, flows: int, seed: int = 0, kinds=KINDS) -> List[tuple]:
    """Start ``flows`` flows (2 per second) of ``kinds``; per flow (start, packets, mirror copies, port)."""
    rng = random.Random(seed)
    events = []
    ports: Dict[int, int] = {}
    for index in range(flows):
        port, packets, seconds, _share = rng.choices(kinds, weights=[k[3] for k in kinds])[0]
        ports[index] = port
        start = index * 0.5
        for n in range(packets):
            events.append((start + seconds * n / max(packets - 1, 1), index, n, port))
    events.sort()
    copies: Dict[int, int] = {}
    sizes: Dict[int, int] = {}
    starts: Dict[int, float] = {}
    clock = 0.0
    for at, index, n, port in events:
        if at - clock >= 1.0:
            network.advance_to(at)
            clock = at
        network.now = at
        packet = request(port, sport=10000 + index)
        if n % 2:  # the server's answer
            packet = dict(packet, eth_src=SERVER_MAC, eth_dst=CLIENT_MAC, ipv4_src=SERVER_IP, ipv4_dst=CLIENT_IP)
            key = "udp" if port == 53 else "tcp"
            packet[f"{key}_src"], packet[f"{key}_dst"] = packet[f"{key}_dst"], packet[f"{key}_src"]
        result = network.send(SERVER_PORT if n % 2 else CLIENT_PORT, packet)
        copies[index] = copies.get(index, 0) + mirror_copies(result)
        sizes[index] = sizes.get(index, 0) + 1
        starts.setdefault(index, at)
    network.advance_to(clock + 60)
    return [(starts[i], sizes[i], copies[i], ports[i]) for i in sorted(starts)]


def test_mirror_copies_per_packet_track_the_budget_over_a_population():
    network = Network(budget=0.3, min_flows=32, refit_every=8)
    flows = run_population(network, 700)
    late = flows[len(flows) // 2:]
    realised = sum(c for _s, _p, c, _port in late) / sum(p for _s, p, _c, _port in late)
    assert realised == pytest.approx(0.3, rel=0.25)
    # the training threshold (10 s) alone would have mirrored every bulk transfer: ~58% of the packets
    first = flows[:60]
    assert sum(c for _s, _p, c, _port in first) / sum(p for _s, p, _c, _port in first) > 0.45
    assert network.engine.tracker.fitted
    assert network.policy.in_flight == 0, "every flow ended and was forgotten"
    assert network.director.counters.flows_ended == len(flows)


def test_cheap_long_lived_flows_are_all_mirrored_and_the_budget_still_holds():
    predictor = FakePredictor({**DURATIONS, 22: 3.0}, {**PACKETS, 22: 6.0})
    network = Network(budget=0.3, predictor=predictor, min_flows=32, refit_every=8)
    flows = run_population(network, 700, kinds=KINDS + (KEEPALIVE,))
    keepalives = [(p, c) for _s, p, c, port in flows if port == 22]
    assert len(keepalives) > 20 and all(c == p for p, c in keepalives), "every packet mirrored once"
    late = flows[len(flows) // 2:]
    realised = sum(c for _s, _p, c, _port in late) / sum(p for _s, p, _c, _port in late)
    assert realised == pytest.approx(0.3, rel=0.25)
    assert 0 < network.engine.tracker.outside_line_share() < 0.05
    assert network.engine.flows_mirrored_cheap == len(keepalives)


def test_cheap_flows_that_turn_out_heavy_spend_at_most_half_the_budget():
    """Predicted cheap, the keep-alives really carry 60 packets each: the rule stops at its cap."""
    heavy_keepalive = (22, 60, 20.0, 0.3)
    predictor = FakePredictor({**DURATIONS, 22: 3.0}, {**PACKETS, 22: 6.0})
    network = Network(budget=0.3, predictor=predictor, min_flows=32, refit_every=8)
    flows = run_population(network, 700, kinds=KINDS + (heavy_keepalive,))
    keepalives = [(p, c) for _s, p, c, port in flows if port == 22]
    assert 0 < network.engine.flows_mirrored_cheap < len(keepalives)
    assert network.engine.tracker.outside_line_share() <= 0.3 * 0.5 * 1.25


def test_ended_flows_feed_the_feature_history_and_the_budget_window():
    network = Network(budget=0.3, min_flows=4, refit_every=1)
    for sport in range(30000, 30005):
        network.send(CLIENT_PORT, request(53, sport))
    first = FirstPacket.from_packet(parse_frame(oxm.to_frame(request(53, 31000))), 5.0)
    before = network.engine.history.stats(first, 5.0)
    assert before[1] != before[1], "no outcome known yet: alive share is NaN"
    for second in range(1, 21):  # the switch expires entries about once a second
        network.advance_to(float(second))
    after = network.engine.history.stats(first, 20.0)
    assert after[1] == 0.0, "the DNS flows ended within the horizon"
    assert network.engine.tracker.status()["ended_flows_in_window"] == 5


# --- questions and model changes ------------------------------------------------------------------
def test_predict_state_access_is_the_profile_then_successors_when_failures_are_likely():
    network = Network()
    network.send(CLIENT_PORT, request(5201))
    fid = flow_id(request(5201))
    profile = network.profile_of(request(5201))
    assert network.policy.predict_state_access(fid) == list(profile.cells)
    risky = Network(health=FakeHealth(default=0.3))
    risky.send(CLIENT_PORT, request(5201))
    access = risky.policy.predict_state_access(fid)
    assert access[:2] == list(risky.profile_of(request(5201)).cells[:2])
    assert len(access) > len(risky.profile_of(request(5201)).cells), "a likely double failure reaches further"
    assert access == [c for c in risky.ring.order(fid) if c in access], "in takeover order"
    with pytest.raises(KeyError):
        network.policy.predict_state_access(12345)
    fresh = parse_frame(oxm.to_frame(request(443, 50001)))
    assert network.policy.predict_state_access(fresh, now=1.0)[0] == network.ring.order(fresh.flow_id)[0]


def test_a_new_model_restarts_the_budget_and_old_flows_do_not_feed_it():
    network = Network(budget=0.3, min_flows=1, refit_every=1)
    network.send(CLIENT_PORT, request(5201))
    network.engine.replace_predictor(FakePredictor({5201: 1.0}))
    assert network.engine.generation == 1 and network.engine.tracker.threshold == TRAINING_THRESHOLD_S
    network.advance_to(40.0)
    assert network.engine.tracker.status()["ended_flows_in_window"] == 0
    network.send(CLIENT_PORT, request(5201, sport=46000))
    assert network.profile_of(request(5201, sport=46000)).replication_factor == 0, "the new model says 1 s"
