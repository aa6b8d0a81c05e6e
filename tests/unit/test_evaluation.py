"""The one policy engine (prism.sim.evaluation): expected protection over a uniform failure time, from decision timelines."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from prism.sim.evaluation import (
    CONTROLLER,
    FIXED_RF1,
    FIXED_RF1_STATE,
    ORACLE,
    RANDOM,
    Decisions,
    EvalSettings,
    EvaluationError,
    FlowCurves,
    compare,
    fixed_policy,
    format_table,
    judge,
    policy_table,
    ranked_policy,
    result,
    targets,
    threshold_policy,
)
from prism.telemetry.records import MILESTONES_S, FlowRecord, milestone_column, records_to_frame

# Three flows: a long one with few packets, a long heavy one, and an instant one.
DURATION = np.array([10.0, 10.0, 0.0])
PACKETS = np.array([10.0, 80.0, 10.0])


def test_fixed_policies():
    none = fixed_policy(DURATION, PACKETS, 0, "none")
    rf1 = fixed_policy(DURATION, PACKETS, 1, "rf1")
    rf2 = fixed_policy(DURATION, PACKETS, 2, "rf2")
    assert (none.flows_mirrored, none.packets_mirrored, none.packets_protected) == (0.0, 0.0, 0.0)
    assert (rf1.packets_mirrored, rf1.flows_protected, rf1.packets_protected_2) == (1.0, 1.0, 0.0)
    assert (rf2.packets_mirrored, rf2.packets_protected_2) == (2.0, 1.0)


def test_risk_is_weighted_by_duration_and_packets_still_to_come():
    # Mirror only the light long flow: half the at-risk flows (durations 10 and 10). Without
    # milestone counts a flow's first packet is at age 0 and the others spread evenly, so the
    # packets still to come integrate to (p - 1) * d / 2: 45 of 45 + 395.
    row = threshold_policy(DURATION, PACKETS, np.array([1.0, 0.0, 0.0]), 0.5, "x")
    assert row.flows_protected == pytest.approx(0.5)
    assert row.packets_protected == pytest.approx(45 / 440)
    assert row.packets_mirrored == pytest.approx(0.1)


def test_ranked_policy_spends_exactly_the_budget_and_splits_ties():
    row = ranked_policy(DURATION, PACKETS, np.array([1.0, 1.0, 0.0]), 0.45, "tied")
    assert row.packets_mirrored == pytest.approx(0.45)
    # The tied block (90 packets) is mirrored in part: 45/90 of its protection.
    assert row.packets_protected == pytest.approx(0.5) and row.threshold == 1.0
    best = ranked_policy(DURATION, PACKETS, np.array([2.0, 1.0, 0.0]), 0.1, "best")
    assert best.flows_protected == pytest.approx(0.5)


def test_oracle_is_never_worse_than_random_or_a_model():
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"duration_s": rng.exponential(5, 500), "packets": rng.integers(1, 200, 500)})
    noisy = frame["duration_s"].to_numpy() * rng.lognormal(0, 1, 500)
    rows = policy_table(frame, {"model": noisy}, budgets=(0.1, 0.3))
    by_name = {(r.policy, r.budget): r for r in rows}
    for budget in (0.1, 0.3):
        oracle, model, random = (by_name[(name, budget)] for name in ("oracle", "model", "random"))
        assert oracle.packets_protected >= model.packets_protected >= random.packets_protected
        assert model.packets_mirrored == pytest.approx(budget)
    assert "| oracle | full | 0.1 |" in format_table(rows)


# --- flows with milestone counts ---------------------------------------------------------------
def tcp_flow(duration, packets, at, state_at=None, state=4, flags=0x02, nbytes=None, flow_id=1):
    """A TCP flow record whose cumulative packets at each milestone are ``at(m)`` (bytes 100 per packet)."""
    state = min(state, packets)
    counts = []
    for m in MILESTONES_S:
        p = packets if m >= duration else at(m)
        s = state if m >= duration else min(state_at(m) if state_at else 2, p, state)
        counts.append((p, p * 100, s))
    return FlowRecord(flow_id, 0.0, 4, 6, "192.0.2.1", "192.0.2.2", 40000 + flow_id, 443, 60, flags, "pcap",
                      duration, packets, nbytes or packets * 100, False, "fin", "g", state, tuple(counts))  # fmt: skip


def test_curves_follow_the_milestones_and_interpolate_between_them():
    # 100 packets in 10 s: 50 by 1 s (a burst), then 5 per second.
    record = tcp_flow(10.0, 100, lambda m: 50 if m <= 1 else int(50 + 5 * (m - 1)))
    curves = FlowCurves.from_frame(records_to_frame([record]))
    at = lambda age: float(curves.at("packets", np.array([0]), np.array([age]))[0])  # noqa: E731
    assert at(0.0) == 1.0 and at(1.0) == 50.0 and at(2.0) == 55.0
    assert at(3.0) == pytest.approx(60.0)  # linear between the 2 s and 4 s milestones
    assert at(10.0) == 100.0 and at(50.0) == 100.0
    assert not curves.estimated[0]


def test_v1_records_and_argus_records_are_estimated_evenly():
    frame = pd.DataFrame({"duration_s": [4.0], "packets": [9], "bytes": [900], "proto": [6],
                          "end_reason": ["fin"]})  # fmt: skip
    curves = FlowCurves.from_frame(frame)
    assert curves.estimated[0]
    assert curves.at("packets", np.array([0]), np.array([2.0]))[0] == pytest.approx(5.0)
    # State packets: SYN and SYN/ACK at birth, a FIN per side at the end.
    assert curves.state[0] == 4
    assert curves.at("state", np.array([0]), np.array([2.0]))[0] == pytest.approx(2.0)


def promoted(age, rf=1, mode=1, flows=1):
    """Every flow born unmirrored and promoted at ``age``."""
    n = flows
    return Decisions(np.repeat(np.arange(n), 2), np.tile([0.0, age], n), np.tile([0, rf], n), np.tile([mode, mode], n))


def test_a_promoted_flow_is_unprotected_until_its_seed_completes():
    record = tcp_flow(10.0, 100, lambda m: int(10 * m) + 1)
    curves = FlowCurves.from_frame(records_to_frame([record]))
    decisions = promoted(1.0, mode=0)
    out = judge(curves, decisions, EvalSettings(seed_delay_s=0.5))
    assert out.time_protected[0] == pytest.approx(10.0 - 1.5)
    assert out.promoted[0] and out.mirrored[0]
    late = judge(curves, decisions, EvalSettings(seed_delay_s=2.0))
    assert late.time_protected[0] == pytest.approx(7.0)
    assert late.packets_protected[0] < out.packets_protected[0]
    # Full mode copies every packet after the promotion: 100 - 11 by 1 s.
    assert out.copies[0] == pytest.approx(100 - 11)


def test_state_mode_copies_only_state_packets_and_the_first_packet_at_birth():
    # 4 state packets: SYN + SYN/ACK in the first 250 ms, FINs at the end.
    record = tcp_flow(10.0, 100, lambda m: int(10 * m) + 1, state_at=lambda m: 2, state=4)
    frame = records_to_frame([record])
    curves = FlowCurves.from_frame(frame)
    birth = judge(curves, Decisions.fixed(1, 1, "state"))
    assert birth.copies[0] == 4  # the SYN is the first packet: no extra copy
    later = judge(curves, promoted(1.0))
    assert later.copies[0] == 2  # the FINs
    mid_flow = records_to_frame([tcp_flow(10.0, 100, lambda m: int(10 * m) + 1, flags=0x10)])
    assert judge(FlowCurves.from_frame(mid_flow), Decisions.fixed(1, 1, "state")).copies[0] == 5


def test_state_mode_pays_the_records_the_cell_sends_and_promotions_pay_seeds():
    record = tcp_flow(10.0, 100, lambda m: int(10 * m) + 1)  # 10 kB in 10 s, closed by FIN
    curves = FlowCurves.from_frame(records_to_frame([record]))
    settings = EvalSettings(replication_bytes_per_flow=300.0, seed_bytes_per_flow=10.0, progress_record_bytes=1.0,
                            state_change_record_bytes=50.0, takeover_tolerance_bytes=2000)  # fmt: skip
    full_birth = judge(curves, Decisions.fixed(1, 1, "full"), settings).smm_bytes[0]
    state_birth = judge(curves, Decisions.fixed(1, 1, "state"), settings).smm_bytes[0]
    state_later = judge(curves, promoted(4.0), settings).smm_bytes[0]
    two_later = judge(curves, promoted(4.0, rf=2), settings).smm_bytes[0]
    assert full_birth == 300.0  # three change records
    # handshake and teardown, no removal (state mirrors expire flows themselves); a progress record per
    # 1000 B moved (half the tolerance)
    assert state_birth == 2 * 50.0 + 10
    assert state_later == 10.0 + 50.0 + 5  # the seed, the teardown, 5900 B moved over the last 6 s
    assert two_later == 2 * state_later
    after_the_end = judge(curves, promoted(30.0), settings).smm_bytes[0]
    assert after_the_end == 10.0  # promoted once quiet: the seed is paid, nothing else (its FINs are past)
    idle = records_to_frame([tcp_flow(10.0, 100, lambda m: int(10 * m) + 1)]).assign(end_reason="idle")
    idle_curves = FlowCurves.from_frame(idle)
    # ended idle: the handshake only, no teardown, no removal; promoted late: the seed alone
    assert judge(idle_curves, Decisions.fixed(1, 1, "state"), settings).smm_bytes[0] == 50.0 + 10
    assert judge(idle_curves, promoted(30.0), settings).smm_bytes[0] == 10.0
    slow = judge(curves, Decisions.fixed(1, 1, "state"), EvalSettings(progress_record_bytes=1.0,
                                                                       state_change_record_bytes=50.0))
    assert slow.smm_bytes[0] == 2 * 50.0  # 10 kB is far from 8 MiB, 10 s far from half an hour


def test_a_slow_long_state_flow_pays_a_record_per_half_idle_timeout():
    udp = pd.DataFrame({"duration_s": [600.0], "packets": [100], "bytes": [10_000], "proto": [17],
                        "end_reason": ["idle"]})  # fmt: skip
    settings = EvalSettings(progress_record_bytes=1.0, state_change_record_bytes=50.0)
    refresh = settings.refresh_s(np.array([17.0]), np.array([100.0]))[0]
    assert refresh == settings.timeouts.udp_replied / 2
    out = judge(FlowCurves.from_frame(udp), Decisions.fixed(1, 1, "state"), settings)
    # first packet and reply; a progress record every 90 s of its 600 s
    assert out.smm_bytes[0] == 2 * 50.0 + np.floor(600.0 / refresh)


def test_demotion_ends_protection_and_a_double_failure_needs_two_seeded_mirrors():
    record = tcp_flow(10.0, 100, lambda m: int(10 * m) + 1)
    curves = FlowCurves.from_frame(records_to_frame([record]))
    demoted = Decisions(np.array([0, 0]), np.array([0.0, 4.0]), np.array([1, 0]), np.array([0, 0]))
    assert judge(curves, demoted).time_protected[0] == pytest.approx(4.0)
    two = Decisions(np.array([0, 0]), np.array([0.0, 2.0]), np.array([1, 2]), np.array([0, 0]))
    out = judge(curves, two, EvalSettings(seed_delay_s=1.0))
    assert out.time_protected[0] == pytest.approx(10.0)  # one mirror all along
    assert 0 < out.packets_protected_2[0] < out.packets_protected[0]  # the second from 3 s on


def test_bad_timelines_are_refused():
    with pytest.raises(EvaluationError, match="age 0"):
        Decisions.of(SimpleNamespace(flow=[0], age_s=[1.0], replication_factor=[1], mode=[0]), 1)
    with pytest.raises(EvaluationError, match="sorted"):
        Decisions.of(SimpleNamespace(flow=[1, 0], age_s=[0.0, 0.0], replication_factor=[1, 1], mode=[0, 0]), 2)
    with pytest.raises(EvaluationError, match="each of the 2 flows"):
        Decisions.of(SimpleNamespace(flow=[0], age_s=[0.0], replication_factor=[1], mode=[0]), 2)


def stub_controller(frame):
    """A stand-in for models.replay's timeline: promote every flow alive at 1 s, in state mode."""
    alive = frame["duration_s"].to_numpy() > 1.0
    rows = []
    for i, lives in enumerate(alive):
        rows.append((i, 0.0, 0, 1))
        if lives:
            rows.append((i, 1.0, 1, 1))
    flow, age, rf, mode = (np.array(column) for column in zip(*rows))
    return SimpleNamespace(flow=flow, age_s=age, replication_factor=rf, mode=mode, redecisions=len(frame))


def test_comparison_has_every_row_and_the_controller_targets():
    records = [tcp_flow(d, p, lambda m, d=d, p=p: max(1, int(p * min(m, d) / d)), flow_id=i + 1)
               for i, (d, p) in enumerate([(0.1, 3), (0.5, 6), (20.0, 400), (8.0, 60), (0.0, 1)])]  # fmt: skip
    frame = records_to_frame(records)
    comparison = compare(frame, controller=stub_controller(frame), baseline_scores=np.arange(5.0))
    names = [row.policy for row in comparison.rows]
    assert names == [CONTROLLER, "none", FIXED_RF1, "fixed rf2", FIXED_RF1_STATE, RANDOM,
                     "baseline (port mean)", ORACLE]  # fmt: skip
    controller = comparison.row(CONTROLLER)
    assert controller.mode == "state" and controller.flows_promoted == pytest.approx(2 / 5)
    # Random, baseline and oracle spend what the controller spent.
    for name in (RANDOM, "baseline (port mean)", ORACLE):
        assert comparison.row(name).packets_mirrored == pytest.approx(controller.packets_mirrored)
    assert comparison.row(ORACLE).packets_protected >= comparison.row(RANDOM).packets_protected
    figures = targets(comparison)
    assert figures["copies_vs_rf1"] == pytest.approx(controller.packets_mirrored)
    # Missed: the first 1.05 s (promotion at 1 s + the seed) of the two long flows, whose evenly spread
    # packets still to come fall as (1 - a/d)^2: about (1 - 1.05/20)^2 and (1 - 1.05/8)^2 of them kept.
    assert 0.85 < figures["packets_protected_vs_rf1"] < 0.9


def test_milestone_columns_are_the_records_schema():
    assert milestone_column("packets", 0.25) in records_to_frame([tcp_flow(1.0, 2, lambda m: 1)]).columns
    assert result(FlowCurves.from_frame(records_to_frame([tcp_flow(1.0, 2, lambda m: 1)])),
                  Decisions.fixed(1, 1), "x").packets_mirrored == 1.0  # fmt: skip
