"""The aging policy: nothing at birth, promotion at milestones (age rule or model), budget gate, demotion."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from prism.policy.aging_features import AGING_FEATURE_NAMES, PORT_CLASS_WELL_KNOWN, aging_row, port_class
from prism.flows.identity import parse_frame
from testkit.oxm import tcp_packet, to_frame, udp_packet
from prism.policy.base import MODE_FULL, MODE_STATE, Policy
from prism.policy.aging import (
    BIRTH_WINDOW,
    HANDSHAKE_COPIES,
    MIN_BIRTH_REPORTS,
    MIN_BUDGET_FLOWS,
    STATE_COPIES_AT_BIRTH,
    AgingPolicy,
    AgingSettings,
    CopyBudget,
    birth_copies,
    estimated_copies,
    make_policies,
    opened_by_syn,
)
from prism.placement.profiles import MirroringProfile
from prism.placement.ring import HashRing

CELLS = ("c1", "c2", "c3")


def _udp(sport: int):
    return parse_frame(to_frame(udp_packet("02:00:00:00:00:01", "02:00:00:00:00:02", "10.0.0.1", "10.0.0.2",
                                           sport, 53)))  # fmt: skip


def _tcp(sport: int):
    return parse_frame(to_frame(tcp_packet("02:00:00:00:00:01", "02:00:00:00:00:02", "10.0.0.1", "10.0.0.2",
                                           sport, 443, flags=0x02)))  # fmt: skip


class FixedScorer:
    """A model that gives every flow the same probability, and keeps the rows it was asked about."""

    horizon_s = 2.0

    def __init__(self, probability: float) -> None:
        self.probability = probability
        self.rows = []

    def alive_probability(self, row):
        self.rows.append(row)
        return self.probability


def _entry(flow_id: int, packets: int):
    return SimpleNamespace(flow_id=flow_id, packets=packets)


def test_birth_gives_the_primary_only_and_no_model_call():
    scorer = FixedScorer(1.0)
    policy = AgingPolicy(HashRing(CELLS), 2, scorer=scorer)
    info = _udp(1000)
    profile = policy.profile_for(info, frozenset(CELLS), 0.0)
    assert profile == MirroringProfile(HashRing(CELLS).order(info.flow_id)[0])
    assert scorer.rows == [] and policy.mode_for(info.flow_id) == MODE_STATE
    assert policy.milestones_s == AgingSettings().milestones_s
    assert isinstance(policy, AgingPolicy) and callable(Policy.redecide)


def test_the_age_rule_promotes_a_flow_alive_at_a_milestone_keeping_its_primary():
    policy = AgingPolicy(HashRing(CELLS), 1)
    info = _tcp(1000)
    birth = policy.profile_for(info, CELLS, 0.0)
    profile, mode = policy.redecide(info.flow_id, birth, 0.25, 5, 600, CELLS, 0.25)
    assert profile.primary_cell == birth.primary_cell and profile.replication_factor == 1
    assert mode == MODE_STATE and policy.mode_for(info.flow_id) == MODE_STATE
    assert policy.mirror_load() == {profile.mirror_cells[0]: 1}
    assert policy.redecide(info.flow_id, profile, 1.0, 9, 900, CELLS, 1.0) is None  # stays mirrored
    policy.flow_ended(_entry(info.flow_id, 12), 20.0)
    assert policy.mirror_load() == {} and policy.live_flows == 0


def test_a_dead_primary_alone_leaves_nothing_to_mirror_to():
    policy = AgingPolicy(HashRing(CELLS), 1)
    info = _tcp(1001)  # noqa
    birth = policy.profile_for(info, CELLS, 0.0)
    assert policy.redecide(info.flow_id, birth, 0.25, 5, 600, {birth.primary_cell}, 0.25) is None


def test_the_model_decides_promotion_from_the_flows_own_counters():
    low, high = FixedScorer(0.2), FixedScorer(0.8)
    for scorer, promoted in ((low, False), (high, True)):
        policy = AgingPolicy(HashRing(CELLS), 1, scorer=scorer)
        info = _tcp(2000)
        birth = policy.profile_for(info, CELLS, 0.0)
        decision = policy.redecide(info.flow_id, birth, 1.0, 20, 4000, CELLS, 1.0)
        assert (decision is not None) == promoted
        assert scorer.rows[0] == aging_row(1.0, 20, 4000, 0.0, 0, 1, PORT_CLASS_WELL_KNOWN)
    assert len(AGING_FEATURE_NAMES) == len(high.rows[0])


def test_the_second_milestone_sees_the_rate_since_the_first():
    scorer = FixedScorer(0.1)
    policy = AgingPolicy(HashRing(CELLS), 1, scorer=scorer)
    info = _udp(3000)
    birth = policy.profile_for(info, CELLS, 0.0)
    policy.redecide(info.flow_id, birth, 0.25, 10, 1000, CELLS, 0.25)
    policy.redecide(info.flow_id, birth, 1.0, 13, 1300, CELLS, 1.0)
    assert scorer.rows[1] == aging_row(1.0, 13, 1300, 0.25, 10, 2, port_class(3000, 53))
    assert AGING_FEATURE_NAMES.index("log_recent_rate") == 4 and scorer.rows[1][4] == pytest.approx(1.6094379)


def test_a_quiet_flow_is_promoted_by_default_without_asking_a_model_trained_on_busy_flows():
    scorer = FixedScorer(0.0)
    policy = AgingPolicy(HashRing(CELLS), 1, scorer=scorer)
    info = _udp(3200)
    birth = policy.profile_for(info, CELLS, 0.0)
    assert policy.redecide(info.flow_id, birth, 0.25, 1, 80, CELLS, 0.25) is not None and scorer.rows == []
    scorer.scores_quiet_flows = True
    other = _udp(3201)
    birth = policy.profile_for(other, CELLS, 0.0)
    assert policy.redecide(other.flow_id, birth, 0.25, 1, 80, CELLS, 0.25) is None and len(scorer.rows) == 1


def test_without_promote_quiet_a_quiet_flow_is_not_promoted_nor_scored():
    scorer = FixedScorer(1.0)
    policy = AgingPolicy(HashRing(CELLS), 1, AgingSettings(promote_quiet=False), scorer=scorer)
    info = _udp(3100)
    birth = policy.profile_for(info, CELLS, 0.0)
    assert policy.redecide(info.flow_id, birth, 0.25, 1, 80, CELLS, 0.25) is None  # the first packet only
    promoted = policy.redecide(info.flow_id, birth, 1.0, 4, 320, CELLS, 1.0)
    assert promoted is not None and len(scorer.rows) == 1
    assert policy.redecide(info.flow_id, promoted[0], 4.0, 4, 320, CELLS, 4.0) is None  # quiet: kept as it is
    assert policy.counts["quiet"] == 1 and policy.mirror_load() == {promoted[0].mirror_cells[0]: 1}


def test_demotion_drops_the_mirrors_of_a_flow_the_model_gives_up_on():
    scorer = FixedScorer(0.9)
    policy = AgingPolicy(HashRing(CELLS), 1, AgingSettings(demote_probability=0.3), scorer=scorer)
    info = _tcp(4000)
    birth = policy.profile_for(info, CELLS, 0.0)
    promoted, _mode = policy.redecide(info.flow_id, birth, 0.25, 4, 400, CELLS, 0.25)
    scorer.probability = 0.1
    demoted, mode = policy.redecide(info.flow_id, promoted, 1.0, 5, 500, CELLS, 1.0)
    assert demoted == MirroringProfile(birth.primary_cell) and policy.counts["demoted"] == 1
    assert policy.mirror_load() == {}


def test_an_overspent_budget_delays_promotion_and_moves_full_flows_to_state():
    settings = AgingSettings(milestones_s=(0.25, 1.0, 4.0), mode=MODE_FULL, budget=0.1)
    policy = AgingPolicy(HashRing(CELLS), 1, settings)
    keep = _udp(6000)
    keep_birth = policy.profile_for(keep, CELLS, 0.0)
    keep_profile, _ = policy.redecide(keep.flow_id, keep_birth, 0.25, 2, 200, CELLS, 0.25)
    # full flows whose every later packet is copied: the gate stays, they go to state
    fulls = [_udp(5000 + i) for i in range(MIN_BUDGET_FLOWS)]
    for info in fulls:
        birth = policy.profile_for(info, CELLS, 0.0)
        policy.redecide(info.flow_id, birth, 0.25, 2, 100, CELLS, 0.25)
        policy.flow_ended(_entry(info.flow_id, 10), 11.0)
    assert policy.budget.share() == pytest.approx(9 / 11) and policy.budget.gate == 0  # the switch counts 10 of 11
    assert policy.redecide(keep.flow_id, keep_profile, 1.0, 9, 900, CELLS, 1.0) == (keep_profile, MODE_STATE)
    # state flows whose FIN/RST copies alone overspend (2 copies of 3 packets): promotion waits
    state_policy = AgingPolicy(HashRing(CELLS), 1, AgingSettings(milestones_s=(0.25, 1.0, 4.0), budget=0.1))
    for i in range(MIN_BUDGET_FLOWS):
        info = _tcp(7000 + i)
        birth = state_policy.profile_for(info, CELLS, 0.0)
        state_policy.redecide(info.flow_id, birth, 0.25, 1, 60, CELLS, 0.25)
        state_policy.flow_ended(_entry(info.flow_id, 3), 11.0)
    assert state_policy.budget.min_promotion_age_s == 1.0 and state_policy.budget.gate_raises == 1
    late = _tcp(8000)
    birth = state_policy.profile_for(late, CELLS, 12.0)
    assert state_policy.redecide(late.flow_id, birth, 0.25, 3, 300, CELLS, 12.25) is None
    assert state_policy.redecide(late.flow_id, birth, 1.0, 5, 500, CELLS, 13.0) is not None


def test_auto_mode_copies_slow_flows_in_full_while_the_budget_allows():
    policy = AgingPolicy(HashRing(CELLS), 1, AgingSettings(mode="auto", budget=0.1))
    slow, fast = _udp(9000), _udp(9001)
    assert policy.mode_for(slow.flow_id) == MODE_STATE
    for info, packets, expected in ((slow, 3, MODE_FULL), (fast, 30, MODE_STATE)):
        birth = policy.profile_for(info, CELLS, 0.0)
        assert policy.redecide(info.flow_id, birth, 4.0, packets, 100 * packets, CELLS, 4.0)[1] == expected
    policy.budget._copies, policy.budget._packets = 5.0, 10  # overspent: state only
    late = _udp(9002)
    birth = policy.profile_for(late, CELLS, 10.0)
    assert policy.redecide(late.flow_id, birth, 4.0, 3, 300, CELLS, 14.0)[1] == MODE_STATE


def test_copy_budget_relaxes_when_spending_little():
    budget = CopyBudget(0.1, (0.25, 1.0))
    budget.gate = 1
    for _ in range(MIN_BUDGET_FLOWS):
        budget.observe(100, 0.0)
    assert budget.gate == 0 and budget.min_promotion_age_s == 0.25


def test_a_flow_unknown_to_the_policy_is_adopted_by_its_counters():
    policy = AgingPolicy(HashRing(CELLS), 1, scorer=FixedScorer(0.9))
    decision = policy.redecide(12345, MirroringProfile("c1"), 4.0, 100, 10_000, CELLS, 50.0)
    assert decision is not None and decision[0].primary_cell == "c1"
    assert policy.counts["adopted"] == 1 and policy.live_flows == 1


def test_settings_are_checked():
    for bad in ({"milestones_s": (1.0, 0.25)}, {"milestones_s": (0.3,)}, {"mode": "partial"}, {"budget": 0},
                {"promote_probability": 1.5}, {"demote_probability": 0.9, "promote_probability": 0.5}):  # fmt: skip
        with pytest.raises(ValueError):
            AgingSettings(**bad)


def test_make_policies_share_one_budget():
    first, second = make_policies([HashRing(CELLS), HashRing(CELLS)], [1, 1], AgingSettings())
    assert first.budget is second.budget and "age rule" in repr(first)


def test_settings_from_a_configuration_section():
    from prism.config.load import parse_config
    from prism.policy.aging import settings_from_config

    text = ("switches:\n  - dpid: 1\n    cells: [{id: c1, port: 1}, {id: c2, port: 2}]\n    edge_ports: [3]\n"
            "prediction: {milestones_s: [0.5, 4], mode: auto, budget: 0.05, promote_probability: 0.7,"
            " promote_quiet: no}\n")
    settings = settings_from_config(parse_config(text).prediction, horizon_s=3.0)
    assert settings == AgingSettings((0.5, 4.0), "auto", 0.05, 0.7, 0.0, 3.0, promote_quiet=False)


def test_the_policy_core_imports_no_data_or_model_library():
    """Issue 11's layering: the aging policy and its features import neither numpy/pandas/pyarrow nor models."""
    import subprocess
    import sys

    code = ("import sys, prism.policy.aging, prism.policy.aging_features, prism.policy.base\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'numpy', 'pandas', 'pyarrow', 'models', "
            "'sklearn'}))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_closing_connection_is_never_promoted():
    policy = AgingPolicy(HashRing(CELLS), 1)
    info = _tcp(5100)
    birth = policy.profile_for(info, CELLS, 0.0)
    assert policy.redecide(info.flow_id, birth, 0.25, 8, 900, CELLS, 0.25, idle_s=0.01, closing=True) is None
    assert policy.redecide(info.flow_id, birth, 1.0, 9, 950, CELLS, 1.0, idle_s=0.0, closing=True) is None
    assert policy.counts["closing"] == 2 and policy.counts["promoted"] == 0
    other = _tcp(5101)
    birth = policy.profile_for(other, CELLS, 0.0)
    assert policy.redecide(other.flow_id, birth, 0.25, 8, 900, CELLS, 0.25, idle_s=0.01, closing=False) is not None


def test_a_flow_idle_for_more_than_a_share_of_its_age_is_taken_as_ended():
    policy = AgingPolicy(HashRing(CELLS), 1)  # max_idle_share 0.5
    share = AgingSettings().max_idle_share
    ended, sparse, busy = _udp(5200), _udp(5201), _udp(5202)
    births = {info.flow_id: policy.profile_for(info, CELLS, 0.0) for info in (ended, sparse, busy)}
    # its last packet at 2 ms, reported at 0.25 s: silent for 99% of its age
    assert policy.redecide(ended.flow_id, births[ended.flow_id], 0.25, 2, 160, CELLS, 0.25, idle_s=0.248) is None
    assert policy.counts["idle"] == 1
    # the handshake, then silence from 0.1 s: at 1 s idle 0.9 s of 1 s
    assert policy.redecide(busy.flow_id, births[busy.flow_id], 1.0, 3, 200, CELLS, 1.0, idle_s=0.9) is None
    assert policy.counts["idle"] == 2
    # only its first packet so far: not judged by the idle rule (a keep-alive looks the same): promote_quiet
    assert policy.redecide(sparse.flow_id, births[sparse.flow_id], 0.25, 1, 80, CELLS, 0.25, idle_s=0.25)
    # at the share exactly: promoted (silent for no more than half its life)
    assert policy.redecide(busy.flow_id, births[busy.flow_id], 4.0, 9, 900, CELLS, 4.0, idle_s=share * 4.0)
    assert policy.counts["promoted"] == 2


def test_a_silent_tcp_connection_that_is_not_closing_is_promoted():
    """A control channel (iperf3's, SSH): a few packets at its start, then silence until the end. The
    cell would report its FIN or RST; without one it is alive, and the idle rule must not leave it bare."""
    policy = AgingPolicy(HashRing(CELLS), 1)
    control, exchange = _tcp(5300), _udp(5301)
    births = {info.flow_id: policy.profile_for(info, CELLS, 0.0) for info in (control, exchange)}
    decided = policy.redecide(control.flow_id, births[control.flow_id], 0.25, 6, 700, CELLS, 0.25,
                              idle_s=0.2, closing=False)  # fmt: skip
    assert decided is not None and decided[0].mirror_cells
    # the same silence on a UDP exchange: probably over
    assert policy.redecide(exchange.flow_id, births[exchange.flow_id], 0.25, 6, 700, CELLS, 0.25, idle_s=0.2) is None
    assert policy.counts["idle"] == 1 and policy.counts["promoted"] == 1


def test_without_idle_s_the_policy_decides_as_before_and_the_share_is_checked():
    policy = AgingPolicy(HashRing(CELLS), 1)
    info = _udp(5300)
    birth = policy.profile_for(info, CELLS, 0.0)
    assert policy.redecide(info.flow_id, birth, 0.25, 1, 80, CELLS, 0.25) is not None  # promote_quiet
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="max_idle_share"):
            AgingSettings(max_idle_share=bad)


# --- birth mirroring (issue 8: the only lever on the first 0.25 s + seed) -------------------------------
def _tcp_flags(sport: int, flags: int):
    return parse_frame(to_frame(tcp_packet("02:00:00:00:00:01", "02:00:00:00:00:02", "10.0.0.1", "10.0.0.2",
                                           sport, 443, flags=flags)))  # fmt: skip


def _cheap_traffic(policy, flows: int, packets: int = 100, sport: int = 20000) -> None:
    """UDP flows that report many packets and no birth copy: the estimate has headroom."""
    for i in range(flows):
        info = _udp(sport + i)
        birth = policy.profile_for(info, CELLS, 0.0)
        policy.redecide(info.flow_id, birth, 0.25, packets, 100 * packets, CELLS, 0.25)


def test_opened_by_syn_is_a_syn_without_ack_fin_or_rst():
    assert opened_by_syn(_tcp_flags(1, 0x02))
    for flags in (0x12, 0x10, 0x18, 0x04, 0x03):
        assert not opened_by_syn(_tcp_flags(1, flags)), hex(flags)
    assert not opened_by_syn(_udp(1)) and not opened_by_syn(None)


def test_birth_copies_are_the_handshake_then_the_teardown_never_more_than_the_packets():
    assert [birth_copies(p, False) for p in (1, 2, 10)] == [1, 2, HANDSHAKE_COPIES]
    assert [birth_copies(p, True) for p in (1, 2, 3, 10)] == [1, 2, 3, STATE_COPIES_AT_BIRTH]


def test_birth_mirroring_opens_only_once_judged_and_with_headroom_and_mirrors_syn_flows_in_state_mode():
    policy = AgingPolicy(HashRing(CELLS), 2, AgingSettings(mode=MODE_FULL))
    syn = _tcp_flags(100, 0x02)
    assert policy.profile_for(syn, CELLS, 0.0).mirror_cells == ()  # not judged yet: closed
    _cheap_traffic(policy, MIN_BIRTH_REPORTS)
    assert policy.budget.birth_open and policy.budget.birth_estimate.share() < 0.1 * policy.budget.budget
    first = _tcp_flags(101, 0x02)
    load_before = sum(policy.mirror_load().values())
    profile = policy.profile_for(first, CELLS, 1.0)
    assert profile.primary_cell == HashRing(CELLS).order(first.flow_id)[0] and profile.replication_factor == 1
    assert policy.mode_for(first.flow_id) == MODE_STATE  # whatever the configured mode: state
    assert policy.counts["born_mirrored"] == 1 and sum(policy.mirror_load().values()) == load_before + 1
    assert policy.profile_for(_tcp_flags(102, 0x02), CELLS, 1.0).replication_factor == 1
    for not_opening in (_tcp_flags(103, 0x12), _tcp_flags(104, 0x10), _udp(105)):  # SYN/ACK, mid-connection, UDP
        assert policy.profile_for(not_opening, CELLS, 1.0).mirror_cells == ()
    # a mirrored-at-birth flow is kept at its milestones (no seed, no second promotion)
    promoted = policy.counts["promoted"]
    assert policy.redecide(first.flow_id, profile, 0.25, 10, 1000, CELLS, 1.25) is None
    assert policy.counts["promoted"] == promoted


def test_birth_off_never_mirrors_at_birth():
    policy = AgingPolicy(HashRing(CELLS), 1, AgingSettings(birth="off"))
    _cheap_traffic(policy, MIN_BIRTH_REPORTS)
    assert not policy.budget.birth_open
    assert policy.profile_for(_tcp_flags(101, 0x02), CELLS, 1.0).mirror_cells == ()


def test_a_scan_closes_birth_mirroring_as_its_syns_arrive():
    """A scan's SYNs (a copy per packet each) count at birth: birth mirroring shuts within the window."""
    policy = AgingPolicy(HashRing(CELLS), 1)
    _cheap_traffic(policy, MIN_BIRTH_REPORTS, packets=10)
    assert policy.budget.birth_open
    mirrored = 0
    for i in range(BIRTH_WINDOW):
        mirrored += bool(policy.profile_for(_tcp_flags(30000 + i, 0x02), CELLS, 2.0).mirror_cells)
    assert not policy.budget.birth_open
    # 512 reports of 2,560 packets: the 10% headroom is gone after about 285 SYNs, not the whole window
    assert 0 < mirrored < 300 and policy.counts["born_mirrored"] == mirrored


def test_birth_mirroring_stays_shut_while_the_gate_is_raised_and_its_flows_are_not_the_gates():
    budget = CopyBudget(0.1, (0.25, 1.0), birth=True)
    budget.gate = 1
    for _ in range(MIN_BIRTH_REPORTS):
        budget.report(100, 0)
    assert not budget.birth_open
    budget.gate = 0
    budget.report(100, 0)
    assert budget.birth_open
    # promotions spending the budget leave no headroom
    budget.report(100, 50)
    assert budget.birth_open and 0.001 < budget.birth_estimate.share() < 0.1
    budget._copies, budget._packets = 9.9, 100
    budget.report(100, 0)
    assert budget.headroom() == pytest.approx(0.001) and not budget.birth_open
    # a flow mirrored at birth ends: its copies are the birth estimate's, not the gate's window
    policy = AgingPolicy(HashRing(CELLS), 1)
    _cheap_traffic(policy, MIN_BIRTH_REPORTS)
    info = _tcp_flags(101, 0x02)
    assert policy.profile_for(info, CELLS, 1.0).mirror_cells
    ends_before = len(policy.budget._ends)
    policy.flow_ended(_entry(info.flow_id, 3), 12.0)
    assert len(policy.budget._ends) == ends_before


def test_estimated_copies_of_a_flow_mirrored_at_birth_are_its_state_packets():
    policy = AgingPolicy(HashRing(CELLS), 1)
    _cheap_traffic(policy, MIN_BIRTH_REPORTS)
    scan, talk = _tcp_flags(101, 0x02), _tcp_flags(102, 0x02)
    for info in (scan, talk):
        policy.profile_for(info, CELLS, 1.0)
    assert estimated_copies(policy._flows[scan.flow_id], 1) == 1.0  # an unanswered SYN
    assert estimated_copies(policy._flows[talk.flow_id], 40) == float(STATE_COPIES_AT_BIRTH)


def test_the_birth_setting_is_checked_and_read_from_a_configuration():
    from prism.config.load import parse_config
    from prism.policy.aging import settings_from_config

    with pytest.raises(ValueError, match="birth"):
        AgingSettings(birth="always")
    text = ("switches:\n  - dpid: 1\n    cells: [{id: c1, port: 1}, {id: c2, port: 2}]\n    edge_ports: [3]\n"
            "prediction: {birth: off}\n")
    assert settings_from_config(parse_config(text).prediction).birth == "off"
    assert AgingSettings().birth == "auto"
