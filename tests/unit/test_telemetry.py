"""Telemetry rows and files: joined flow records, NA for unsupported counters, rotation, crash safety."""

from __future__ import annotations

from types import SimpleNamespace

import pandas as pd
import pyarrow.parquet as pq
import pytest

from prism.telemetry import files as telemetry_files
from prism.flows.identity import TCP_ACK, TCP_SYN, parse_frame
from testkit.packets import build_tcp_frame, build_udp_frame
from prism.placement.profiles import FlowStateCache, MirroringProfile
from prism.telemetry.records import SOURCE_TELEMETRY, read_records
from prism.telemetry.rows import (
    ALL_ONES_32,
    ALL_ONES_64,
    TABLE_FLOWS,
    TABLE_GROUP_STATS,
    TABLE_PORT_STATS,
    PORT_COUNTERS,
    RotationPolicy,
    counter,
    duration,
    flow_outcome,
    flow_record,
    group_stats_row,
    port_stats_row,
    stats_table,
    telemetry_group,
)
from prism.telemetry.files import TelemetryError, TelemetryWriter, part_files, read_flows, read_stats

IDLE = 10
START = 1_700_000_000.0  # 2023-11-14T22:13:20Z


def ended_entry(frame: bytes, directions=((3, 300, 14.5), (2, 200, 13.0)), created_at: float = START):
    """A flow that was installed at ``created_at`` and whose two directions then idled out."""
    info = parse_frame(frame)
    cache = FlowStateCache()
    entry = cache.add(info.key, MirroringProfile.of("c1"), 1, created_at, first_packet=info)
    for forward, (packets, byte_count, lifetime) in zip((True, False), directions):
        cache.remove_direction(info.flow_id, forward, packets, byte_count, lifetime, created_at + lifetime)
    assert info.flow_id not in cache
    return entry, info


# --- counters -----------------------------------------------------------------------------
def test_all_ones_counters_are_missing_not_huge():
    assert counter(ALL_ONES_64) is None and counter(ALL_ONES_32, 32) is None
    assert counter(ALL_ONES_64 + 5) is None, "a sum with an unsupported counter is unsupported"
    assert counter(ALL_ONES_64 - 1) == ALL_ONES_64 - 1 and counter(ALL_ONES_32, 64) == ALL_ONES_32
    assert counter(0) == 0 and counter(None) is None
    assert duration(ALL_ONES_32, 5) is None
    assert duration(3, 500_000_000) == pytest.approx(3.5)
    assert duration(3, ALL_ONES_32) == 3.0


# --- flows at their end ---------------------------------------------------------------------
def test_a_flow_record_joins_the_first_packet_with_both_directions_counters():
    frame = build_tcp_frame("10.0.0.1", "10.0.0.2", 40000, 443, flags=TCP_SYN)
    entry, info = ended_entry(frame)
    record = flow_record(entry, 1, IDLE)
    assert record.flow_id == info.flow_id and record.ts_start == START
    assert (record.src_addr, record.dst_addr, record.sport, record.dport) == ("10.0.0.1", "10.0.0.2", 40000, 443)
    assert (record.proto, record.ip_version, record.first_ip_len, record.first_tcp_flags) == (6, 4, info.ip_len, TCP_SYN)
    assert record.packets == 3 + 2 + 1, "the packet-in's packet is counted once"
    assert record.bytes == 300 + 200 + len(frame)
    assert record.duration_s == pytest.approx(4.5), "the longer lifetime minus the idle timeout"
    assert (record.source, record.end_reason, record.truncated) == (SOURCE_TELEMETRY, "idle", False)
    assert record.group == "telemetry/0000000000000001/2023-11-14T22"


def test_a_tcp_flow_picked_up_without_syn_is_truncated_and_udp_never():
    mid = build_tcp_frame("10.0.0.1", "10.0.0.2", 40000, 443, flags=TCP_ACK)
    assert flow_record(ended_entry(mid)[0], 1, IDLE).truncated
    udp = build_udp_frame("10.0.0.1", "10.0.0.2", 40000, 53, b"q")
    record = flow_record(ended_entry(udp)[0], 1, IDLE)
    assert not record.truncated and record.first_tcp_flags == 0


def test_unsupported_flow_counters_give_no_record_and_an_unknown_outcome():
    frame = build_udp_frame("10.0.0.1", "10.0.0.2", 40000, 53, b"q")
    entry, _ = ended_entry(frame, directions=((ALL_ONES_64, 10, 11.0), (1, 10, 10.5)))
    outcome = flow_outcome(entry, IDLE)
    assert outcome.packets is None and outcome.bytes == 20 + len(frame)
    assert outcome.duration_s == pytest.approx(1.0)
    assert flow_record(entry, 1, IDLE) is None


def test_a_flow_shorter_than_the_expiry_granularity_has_duration_zero():
    entry, _ = ended_entry(build_udp_frame("10.0.0.1", "10.0.0.2", 1, 53), directions=((0, 0, 9.7), (0, 0, 9.7)))
    assert flow_outcome(entry, IDLE).duration_s == 0.0


def test_group_is_switch_and_utc_hour():
    assert telemetry_group(0xABC, START + 3600) == "telemetry/0000000000000abc/2023-11-14T23"


# --- statistics rows --------------------------------------------------------------------------
def port_stat(port_no=1, **overrides):
    values = {name: 10 for name in PORT_COUNTERS}
    values.update(duration_sec=5, duration_nsec=0, port_no=port_no)
    values.update(overrides)
    return SimpleNamespace(**values)


def test_unsupported_port_and_group_counters_are_na_in_the_files(tmp_path):
    rows = [port_stat(rx_frame_err=ALL_ONES_64, collisions=ALL_ONES_64, duration_sec=ALL_ONES_32),
            port_stat(2, rx_bytes=ALL_ONES_64 - 1)]  # fmt: skip
    table_rows = [port_stats_row(START, 1, stat) for stat in rows]
    writer = TelemetryWriter(tmp_path, RotationPolicy(100, 60), START)
    writer.add(TABLE_PORT_STATS, table_rows, START)
    writer.flush_all(START + 1)
    frame = read_stats(tmp_path, TABLE_PORT_STATS)
    first, second = frame.iloc[0], frame.iloc[1]
    assert pd.isna(first["rx_frame_err"]) and pd.isna(first["collisions"]) and pd.isna(first["duration_s"])
    assert first["rx_packets"] == 10 and second["duration_s"] == 5.0
    assert second["rx_bytes"] == ALL_ONES_64 - 1, "the largest real counter survives exactly"
    assert frame["rx_frame_err"].isna().sum() == 1

    bucket = SimpleNamespace
    group = SimpleNamespace(group_id=0x10, ref_count=ALL_ONES_32, duration_sec=2, duration_nsec=0,
                            packet_count=7, byte_count=ALL_ONES_64,
                            bucket_stats=[bucket(packet_count=7, byte_count=700),
                                          bucket(packet_count=ALL_ONES_64, byte_count=1)])  # fmt: skip
    writer.add(TABLE_GROUP_STATS, [group_stats_row(START, 1, group)], START)
    writer.flush_all(START + 1)
    groups = read_stats(tmp_path, TABLE_GROUP_STATS)
    row = groups.iloc[0]
    assert pd.isna(row["ref_count"]) and pd.isna(row["bytes"]) and row["packets"] == 7
    assert list(row["bucket_packets"]) == [7, None] and list(row["bucket_bytes"]) == [700, 1]


def test_stats_table_refuses_rows_that_do_not_fit():
    with pytest.raises(ValueError, match="no column"):
        stats_table(TABLE_PORT_STATS, [{"ts": 1.0}])
    with pytest.raises(ValueError, match="unknown statistics table"):
        stats_table("nope", [])
    bad = port_stats_row(START, 1, port_stat())
    bad["rx_packets"] = -1
    with pytest.raises(ValueError, match="port_stats"):
        stats_table(TABLE_PORT_STATS, [bad])


# --- rotation ---------------------------------------------------------------------------------
def test_rotation_policy():
    policy = RotationPolicy(max_records=3, max_age_s=10)
    assert not policy.due(0, None, 100)
    assert not policy.due(2, 100, 109.9)
    assert policy.due(3, 100, 100)
    assert policy.due(1, 100, 110)
    with pytest.raises(ValueError):
        RotationPolicy(0, 10)


def flow_records(count: int, start: float = START, first_port: int = 20000):
    out = []
    for i in range(count):
        frame = build_udp_frame("10.0.0.1", "10.0.0.2", first_port + i, 53, b"q")
        entry, _ = ended_entry(frame, created_at=start + i)
        out.append(flow_record(entry, 1, IDLE))
    return out


def test_files_rotate_by_record_count_and_time_and_flush_at_shutdown(tmp_path):
    writer = TelemetryWriter(tmp_path, RotationPolicy(max_records=4, max_age_s=30), START)
    written = writer.add(TABLE_FLOWS, flow_records(10), START)
    assert len(written) == 2 and writer.pending(TABLE_FLOWS) == 2, "a batch larger than a part is split"
    assert writer.tick(START + 29) == []
    assert len(writer.tick(START + 30)) == 1, "the open part closes when its first row is rotate_s old"
    writer.add(TABLE_FLOWS, flow_records(1, START + 50, first_port=30000), START + 50)
    assert len(writer.flush_all(START + 51)) == 1 and writer.flush_all(START + 52) == []
    parts = part_files(tmp_path, TABLE_FLOWS)
    assert [len(read_records(p)) for p in parts] == [4, 4, 2, 1]
    frame = read_flows(tmp_path)
    assert len(frame) == 11 and frame["flow_id"].is_unique
    assert writer.rows_written[TABLE_FLOWS] == 11 and writer.files_written[TABLE_FLOWS] == 4
    assert not [p for p in (tmp_path / TABLE_FLOWS).iterdir() if p.name.startswith(".")], "no temporary file left"


def test_a_restarted_writer_never_overwrites_a_closed_part(tmp_path):
    for _ in range(2):  # two writers started in the same second
        writer = TelemetryWriter(tmp_path, RotationPolicy(10, 30), START)
        writer.add(TABLE_FLOWS, flow_records(1), START)
        writer.flush_all(START)
    assert len(part_files(tmp_path, TABLE_FLOWS)) == 2


def test_writers_of_two_controllers_started_in_the_same_second_name_their_parts_apart(tmp_path):
    for controller, port, in_name in (("ctl-a:6653", 20000, "ctl_a_6653"), ("ctl-b:6653", 30000, "ctl_b_6653")):
        writer = TelemetryWriter(tmp_path, RotationPolicy(10, 30), START, writer_id=controller)
        writer.add(TABLE_FLOWS, flow_records(2, first_port=port), START)
        assert writer.flush_all(START)[0].name.endswith(f"Z-{in_name}-000001.parquet")
    assert len(part_files(tmp_path, TABLE_FLOWS)) == 2 and len(read_flows(tmp_path)) == 4


def test_a_write_that_fails_half_way_leaves_no_file_and_keeps_the_rows(tmp_path, monkeypatch):
    writer = TelemetryWriter(tmp_path, RotationPolicy(10, 30), START)
    writer.add(TABLE_PORT_STATS, [port_stats_row(START, 1, port_stat())], START)
    writer.flush_all(START)
    closed = part_files(tmp_path, TABLE_PORT_STATS)
    before = closed[0].read_bytes()

    real_write = pq.write_table

    def crash_half_way(table, handle, **kwargs):
        handle.write(b"PAR1 half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(telemetry_files.pq, "write_table", crash_half_way)
    writer.add(TABLE_PORT_STATS, [port_stats_row(START + 1, 1, port_stat(2))], START + 1)
    assert writer.flush_all(START + 2) == [] and writer.write_errors == 1
    assert part_files(tmp_path, TABLE_PORT_STATS) == closed and closed[0].read_bytes() == before
    assert sorted(p.name for p in (tmp_path / TABLE_PORT_STATS).iterdir()) == [closed[0].name]
    assert writer.pending(TABLE_PORT_STATS) == 1, "the rows wait for the next attempt"

    monkeypatch.setattr(telemetry_files.pq, "write_table", real_write)
    assert len(writer.flush_all(START + 3)) == 1
    assert list(read_stats(tmp_path, TABLE_PORT_STATS)["port_no"]) == [1, 2]


def test_reading_refuses_foreign_files_with_a_clear_error(tmp_path):
    writer = TelemetryWriter(tmp_path, RotationPolicy(10, 30), START)
    writer.add(TABLE_PORT_STATS, [port_stats_row(START, 1, port_stat())], START)
    (path,) = writer.flush_all(START)
    with pytest.raises(TelemetryError, match="not a group_stats file"):
        read_stats([path], TABLE_GROUP_STATS)
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"not parquet")
    with pytest.raises(TelemetryError, match="not a readable Parquet file"):
        read_stats([garbage], TABLE_PORT_STATS)
    assert read_stats(tmp_path / "empty", TABLE_PORT_STATS).empty
