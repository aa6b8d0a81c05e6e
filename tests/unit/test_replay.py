"""replay_decisions: the director's calls, in time order, on the policy object itself; aging rows."""

from __future__ import annotations

import numpy as np
import pytest

from models.aging import aging_rows
from models.replay import MODE_CODE_FULL, MODE_CODE_STATE, replay_decisions, what_the_primary_knows
from prism.policy.aging_features import AGING_FEATURE_NAMES, aging_row, port_class, proto_class
from prism.policy.base import FixedPolicy
from prism.policy.aging import AgingPolicy, AgingSettings
from prism.telemetry.records import MILESTONES_S, FlowRecord, records_to_frame
from prism.placement.ring import HashRing

CELLS = ("cell1", "cell2", "cell3")
IDLE = 10.0


def _record(flow_id: int, start: float, duration: float, packets: int, counts=None, **changes) -> FlowRecord:
    """A flow whose packets and bytes (100 B each) at each milestone are ``counts(m)`` (default: uniform)."""
    if counts is None:
        def counts(m):
            return 1 + int((packets - 1) * min(m / duration, 1.0)) if duration > 0 else packets
    milestones = tuple((counts(m), 100 * counts(m), 1) for m in MILESTONES_S)
    base = dict(flow_id=flow_id, ts_start=start, ip_version=4, proto=17, src_addr="192.0.2.1",
                dst_addr="198.51.100.2", sport=40000 + flow_id, dport=5000, first_ip_len=100, first_tcp_flags=None,
                source="pcap", duration_s=duration, packets=packets, bytes=100 * packets, truncated=False,
                end_reason="idle", group="a.pcap", state_packets=1, milestones=milestones)  # fmt: skip
    base.update(changes)
    return FlowRecord(**base)


class Recorder:
    """Wraps a policy and records the calls the replay makes, in order."""

    def __init__(self, policy):
        self.policy, self.calls, self.known = policy, [], {}
        self.milestones_s = policy.milestones_s

    def profile_for(self, packet, live, now):
        self.calls.append(("birth", packet.flow_id, now))
        return self.policy.profile_for(packet, live, now)

    def mode_for(self, flow_id):
        return self.policy.mode_for(flow_id)

    def redecide(self, flow_id, current, age_s, packets, bytes_, live, now, **known):
        self.calls.append(("milestone", flow_id, now, age_s, packets))
        self.known[(flow_id, age_s)] = known
        return self.policy.redecide(flow_id, current, age_s, packets, bytes_, live, now, **known)

    def flow_ended(self, entry, now):
        self.calls.append(("end", entry.flow_id, now, entry.packets))
        self.policy.flow_ended(entry, now)


def test_events_come_in_time_order_with_the_records_counters():
    frame = records_to_frame([_record(1, 100.0, 3.0, 31), _record(2, 101.0, 0.1, 2)])
    recorder = Recorder(AgingPolicy(HashRing(CELLS), 1, AgingSettings(milestones_s=(0.25, 4.0, 16.0))))
    timeline = replay_decisions(frame, recorder, idle_timeout_s=IDLE)
    times = [call[2] for call in recorder.calls]
    assert times == sorted(times)
    assert ("milestone", 1, 100.25, 0.25, 3) in recorder.calls  # 1 + 30 * 0.25 / 3
    assert ("milestone", 1, 104.0, 4.0, 31) in recorder.calls  # after its last packet, still held
    assert not any(c[0] == "milestone" and c[1] == 1 and c[3] == 16.0 for c in recorder.calls)  # idled out
    assert ("end", 2, 101.0 + 0.1 + IDLE, 1) in recorder.calls  # the switch never counts the first packet
    assert timeline.redecisions == sum(c[0] == "milestone" for c in recorder.calls) and timeline.interpolated == 0
    # flow 0 promoted at 0.25 s in state mode; flow 1 ended at 0.1 s: idle for 0.15 of 0.25 s, not promoted
    assert recorder.known[(2, 0.25)] == {"idle_s": pytest.approx(0.15), "closing": False}
    assert timeline.flow.tolist() == [0, 0, 1]
    assert timeline.age_s.tolist() == [0.0, 0.25, 0.0]
    assert timeline.replication_factor.tolist() == [0, 1, 0]
    assert timeline.mode.tolist() == [MODE_CODE_STATE] * 3
    assert timeline.final_replication_factor(2).tolist() == [1, 0]
    assert timeline.idle_estimated == 1  # flow 1 at 0.25 s, before its last packet


def test_the_first_packet_policy_replays_too():
    """The first-packet policy reads the whole first packet and the flow-removed outcome."""
    from models.predictor import Predictor
    from prism.policy.budget import BudgetSettings
    from prism.policy.predictive import PredictionEngine, PredictivePolicy

    predictor = Predictor.load("models/first_packet")
    policy = PredictivePolicy(HashRing(CELLS), PredictionEngine(predictor, BudgetSettings(0.5)), 1, IDLE)
    frame = records_to_frame([_record(i, 100.0 + i, 3.0, 20, proto=6, first_tcp_flags=2) for i in range(30)])
    timeline = replay_decisions(frame, policy, idle_timeout_s=IDLE)
    assert timeline.flow.tolist() == list(range(30)) and policy.engine.flows_scored == 30
    assert len(policy.engine.history) > 0 and policy.engine.outcomes_unknown == 0


def test_a_fixed_policy_gives_one_row_per_flow():
    frame = records_to_frame([_record(i, 100.0 + i, 1.0, 5) for i in range(4)])
    timeline = replay_decisions(frame, FixedPolicy(HashRing(CELLS), 2))
    assert timeline.flow.tolist() == [0, 1, 2, 3] and set(timeline.replication_factor) == {2}
    assert set(timeline.mode) == {MODE_CODE_FULL} and timeline.redecisions == 0


def test_records_without_milestone_counts_are_interpolated():
    frame = records_to_frame([_record(1, 0.0, 10.0, 101, milestones=None)])
    recorder = Recorder(AgingPolicy(HashRing(CELLS), 1, AgingSettings(milestones_s=(1.0,))))
    timeline = replay_decisions(frame, recorder)
    assert ("milestone", 1, 1.0, 1.0, 11) in recorder.calls and timeline.interpolated == 1


def test_a_policy_that_moves_the_primary_is_refused():
    class Mover(FixedPolicy):
        milestones_s = (0.25,)

        def redecide(self, flow_id, current, *args, **known):
            others = [c for c in CELLS if c != current.primary_cell]
            return type(current)(others[0]), "full"

    frame = records_to_frame([_record(1, 0.0, 1.0, 5)])
    with pytest.raises(ValueError, match="primary"):
        replay_decisions(frame, Mover(HashRing(CELLS), 0))


def test_aging_rows_are_the_policys_rows_with_labels():
    quiet_then_busy = {0.25: 1, 0.5: 1, 1.0: 4, 2.0: 4, 4.0: 8, 8.0: 8, 16.0: 8, 32.0: 8, 64.0: 8}
    frame = records_to_frame([_record(1, 0.0, 5.0, 8, counts=quiet_then_busy.get, proto=6, dport=443),
                              _record(2, 0.0, 3.0, 9, end_reason="capture_end", truncated=True)])  # fmt: skip
    rows = aging_rows(frame, milestones_s=(0.25, 1.0, 4.0), horizon_s=2.0, idle_timeout_s=IDLE)
    assert rows.X.shape[1] == len(AGING_FEATURE_NAMES)
    # flow 0: quiet at 0.25 (left out), busy at 1 and 4; flow 1 (uniform): one packet at 0.25, then 3, 9
    assert rows.flow.tolist() == [0, 0, 1, 1] and rows.milestone.tolist() == [1.0, 4.0, 1.0, 4.0]
    assert rows.X[0].tolist() == aging_row(1.0, 4, 400, 0.25, 1, proto_class(6), port_class(40001, 443))
    assert rows.alive[:2].tolist() == [1.0, 0.0]  # 5 s >= 1 + 2; 5 s < 4 + 2
    assert np.isnan(rows.alive[3]) and rows.alive[2] == 1.0  # cut by the capture at 3 s < 4 + 2
    assert rows.log_remaining_packets[:2].tolist() == [np.log1p(4), 0.0]
    assert np.isnan(rows.log_remaining_packets[2:]).all()
    everything = aging_rows(frame, milestones_s=(0.25, 1.0, 4.0), quiet_rows=True)
    assert len(everything) == len(rows) + 2


def test_the_primary_s_idle_time_and_closing_are_exact_past_the_last_packet_and_estimated_before():
    counts = {0.25: 1, 0.5: 1, 1.0: 4, 2.0: 4, 4.0: 9, 8.0: 9, 16.0: 9, 32.0: 9, 64.0: 9}
    frame = records_to_frame([_record(1, 0.0, 3.0, 9, counts=counts.get, proto=6, end_reason="fin"),
                              _record(2, 0.0, 3.0, 9, counts=counts.get, end_reason="fin"),  # UDP: no FIN
                              _record(3, 0.0, 3.0, 9, counts=counts.get, proto=6, end_reason="idle")])
    idle, closing = what_the_primary_knows(frame, (0.25, 1.0, 2.0, 4.0))
    # quiet since birth: 0.25; 3 packets in (0.5, 1]: the last taken 0.5 / 4 before 1 s; quiet since: + 1 s;
    # past the last packet (3 s): exactly 4 - 3
    assert idle[0].tolist() == pytest.approx([0.25, 0.125, 1.125, 1.0])
    assert closing[0].tolist() == [False, False, False, True]  # the FIN, known once past the last packet
    assert not closing[1].any() and not closing[2].any()
    assert idle[1].tolist() == idle[0].tolist()
    uniform = records_to_frame([_record(4, 0.0, 10.0, 101, milestones=None)])  # Argus: counts interpolated
    idle, closing = what_the_primary_knows(uniform, (1.0, 16.0))
    assert idle[0, 0] == pytest.approx(0.5 / 6) and idle[0, 1] == pytest.approx(6.0) and not closing.any()


def test_a_flow_id_still_held_by_an_earlier_record_is_replaced_and_a_later_one_kept():
    """Two records of one id: overlapping while held -> the later gets its own id; after the hold -> kept."""
    from models.replay import replay_flow_ids

    frame = records_to_frame([_record(7, 100.0, 2.0, 5, proto=6, first_tcp_flags=2),
                              _record(7, 103.0, 1.0, 5, proto=6, first_tcp_flags=2),  # first held until 112
                              _record(7, 200.0, 1.0, 5, proto=6, first_tcp_flags=2),  # both idled out by then
                              _record(8, 100.0, 1.0, 5)])  # fmt: skip
    ids, changed = replay_flow_ids(frame, IDLE)
    assert changed == 1 and ids[0] == ids[2] == 7 and ids[3] == 8
    assert ids[1] not in (7, 8)
    recorder = Recorder(AgingPolicy(HashRing(CELLS), 1, AgingSettings(milestones_s=(0.25,), birth="off")))
    timeline = replay_decisions(frame, recorder, idle_timeout_s=IDLE)
    assert timeline.reids == 1
    ends = [call for call in recorder.calls if call[0] == "end"]
    assert sorted(call[1] for call in ends) == sorted(int(i) for i in ids)  # every record ends under its own id
    assert recorder.policy.counts["adopted"] == 0  # no record's milestone found its id forgotten
