"""SPE features: service classes, the bounded history, one function for controller and training."""

from __future__ import annotations

import math

import numpy as np
import pytest

from models.features import replay_features
from prism.flows.identity import TCP_SYN, ip_to_bytes, parse_frame
from prism.policy.features import (
    FEATURE_NAMES,
    SERVICE_DNS,
    SERVICE_DYNAMIC,
    SERVICE_NONE,
    SERVICE_OTHER_WELL_KNOWN,
    SERVICE_QUIC,
    SERVICE_REGISTERED,
    SERVICE_WEB,
    FirstPacket,
    FlowHistory,
    flow_features,
    service_of,
)
from prism.trace.flowmeter import FlowMeter
from testkit.packets import build_tcp_frame
from prism.telemetry.records import records_to_frame

COL = {name: i for i, name in enumerate(FEATURE_NAMES)}


@pytest.mark.parametrize(
    "proto, sport, dport, expected",
    [
        (6, 40000, 443, (443, SERVICE_WEB)),
        (17, 50000, 443, (443, SERVICE_QUIC)),
        (17, 53, 50000, (53, SERVICE_DNS)),  # seen from the server first
        (6, 40000, 8081, (8081, SERVICE_REGISTERED)),
        (6, 50000, 600, (600, SERVICE_OTHER_WELL_KNOWN)),
        (17, 50000, 60000, (50000, SERVICE_DYNAMIC)),
        (1, 0, 0, (0, SERVICE_NONE)),
    ],
)
def test_service_of(proto, sport, dport, expected):
    assert service_of(proto, sport, dport) == expected


def first(ts=0.0, src="10.0.0.1", dst="10.0.0.2", sport=40000, dport=443, proto=6):
    return FirstPacket(ts, 4, proto, ip_to_bytes(src), ip_to_bytes(dst), sport, dport, 60, TCP_SYN)


def test_features_of_a_new_flow_with_no_history():
    x = flow_features(first(), FlowHistory(2.0), 0.0)
    assert len(x) == len(FEATURE_NAMES)
    assert x[COL["service_port"]] == 443 and x[COL["to_service"]] == 1.0
    assert x[COL["tcp_syn_only"]] == 1.0 and x[COL["first_ip_len"]] == 60
    assert x[COL["dst_recent_flows"]] == 0.0 and math.isnan(x[COL["dst_alive_share"]])


def test_unknown_first_packet_fields_are_nan():
    unknown = FirstPacket(0.0, 4, 6, ip_to_bytes("10.0.0.1"), ip_to_bytes("10.0.0.2"), 1, 443, None, None)
    x = flow_features(unknown, FlowHistory(2.0), 0.0)
    assert math.isnan(x[COL["first_ip_len"]]) and math.isnan(x[COL["tcp_syn_only"]])


def test_history_counts_decay_and_outcomes_average():
    history = FlowHistory(horizon_s=2.0, half_life_s=10.0, alpha=0.5)
    history.record_start(first(ts=0.0), 0.0)
    history.record_start(first(ts=0.0, sport=40001), 0.0)
    x = flow_features(first(ts=10.0, sport=40002), history, 10.0)
    assert x[COL["dst_recent_flows"]] == pytest.approx(1.0)  # 2 flows, one half-life ago
    history.record_end(first(), duration_s=5.0, packets=99, now=11.0)
    history.record_end(first(sport=40001), duration_s=1.0, packets=0, now=12.0)
    x = flow_features(first(ts=13.0, sport=40003), history, 13.0)
    assert x[COL["dst_alive_share"]] == pytest.approx(0.5)  # 1 then 0 with alpha 0.5
    assert x[COL["service_log_packets"]] == pytest.approx(math.log(100) / 2)
    assert x[COL["src_log_duration"]] == pytest.approx((math.log(6) + math.log(2)) / 2)


def test_history_memory_is_bounded_least_recently_used_first():
    history = FlowHistory(horizon_s=2.0, max_entries=3)
    for i in range(10):
        history.record_start(first(ts=i, src=f"10.0.1.{i}", dst=f"10.0.2.{i}"), float(i))
    assert len(history) <= 3 * 3
    x_old = flow_features(first(src="10.0.1.0", dst="10.0.2.0"), history, 10.0)
    x_new = flow_features(first(src="10.0.1.9", dst="10.0.2.9"), history, 10.0)
    assert x_old[COL["src_recent_flows"]] == 0.0 and x_new[COL["src_recent_flows"]] > 0


def test_controller_and_training_compute_identical_features():
    """A packet seen by the controller and the record prism trace makes of it give one feature row."""
    frame_bytes = build_tcp_frame("192.0.2.1", "198.51.100.2", 40000, 443, flags=TCP_SYN)
    info = parse_frame(frame_bytes)
    meter = FlowMeter("g")
    meter.add(123.25, info)
    (record,) = meter.finish()
    row = next(records_to_frame([record]).itertuples())
    from_packet = FirstPacket.from_packet(info, 123.25)
    from_record = FirstPacket.from_record(row)
    assert from_packet == from_record
    history = FlowHistory(2.0)
    assert flow_features(from_packet, history, 123.25) == flow_features(from_record, history, 123.25)


def records_of(flows):
    """flows: (ts_start, duration, packets, sport)."""
    from prism.telemetry.records import FlowRecord

    return records_to_frame([
        FlowRecord(i + 1, ts, 4, 6, "10.0.0.1", "10.0.0.2", sport, 443, 60, 2, "pcap", d, p, p * 100,
                   False, "fin", "g")
        for i, (ts, d, p, sport) in enumerate(flows)
    ])  # fmt: skip


def test_replay_sees_an_outcome_only_after_the_report_delay():
    frame = records_of([(0.0, 5.0, 50, 1000), (10.0, 1.0, 2, 1001), (20.0, 1.0, 2, 1002)])
    X = replay_features(frame, horizon_s=2.0, report_delay_s=10.0)
    # Flow 0 ends at 5 s and is reported at 15 s: flow 1 (10 s) cannot know it, flow 2 (20 s) can.
    assert math.isnan(X[1, COL["dst_alive_share"]])
    assert X[2, COL["dst_alive_share"]] == 1.0
    assert X[0, COL["dst_recent_flows"]] == 0.0 and X[1, COL["dst_recent_flows"]] > 0


def test_replay_keeps_groups_apart_and_rows_aligned():
    a = records_of([(0.0, 1.0, 2, 1000), (100.0, 1.0, 2, 1001)])
    b = records_of([(50.0, 1.0, 2, 2000)])
    b["group"] = "other"
    frame = __import__("pandas").concat([a, b], ignore_index=True)
    X = replay_features(frame, 2.0, 0.0)
    assert X[2, COL["dst_recent_flows"]] == 0.0  # group "other" has no history of "g"
    assert X[1, COL["dst_alive_share"]] == 0.0
    assert X.shape == (3, len(FEATURE_NAMES)) and not np.isnan(X[:, COL["service_port"]]).any()


def test_recording_the_start_in_the_same_call_changes_nothing_but_speed():
    one, two = FlowHistory(2.0, half_life_s=5.0), FlowHistory(2.0, half_life_s=5.0)
    flows = [first(ts=t, src=f"10.0.0.{t % 3}", sport=1000 + t) for t in range(12)]
    for flow in flows:
        separate = flow_features(flow, one, flow.ts)
        one.record_start(flow, flow.ts)
        together = flow_features(flow, two, flow.ts, record_start=True)
        assert separate == together
        if flow.ts % 4 == 0:
            for history in (one, two):
                history.record_end(flow, 3.0, 7, flow.ts + 0.5)
