"""Flow-record schema: round trip, validation with clear errors, atomic writes, digest."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from prism.telemetry import records
from prism.atomic import atomic_write
from prism.telemetry.records import (
    COLUMN_NAMES,
    SCHEMA_VERSION,
    FlowRecord,
    RecordsError,
    read_records,
    records_digest,
    records_to_frame,
    write_records,
)


def record(**changes) -> FlowRecord:
    base = dict(
        flow_id=2**63 + 5, ts_start=1000.5, ip_version=4, proto=6, src_addr="192.0.2.1",
        dst_addr="198.51.100.2", sport=40000, dport=443, first_ip_len=60, first_tcp_flags=2,
        source="pcap", duration_s=2.5, packets=10, bytes=4000, truncated=False, end_reason="fin",
        group="a.pcap",
    )  # fmt: skip
    base.update(changes)
    return FlowRecord(**base)


def test_round_trip_keeps_values_nulls_and_dtypes(tmp_path):
    rows = [record(), record(first_ip_len=None, first_tcp_flags=None, source="binetflow", ip_version=6,
                             src_addr="2001:db8::1", dst_addr="2001:db8::2")]  # fmt: skip
    path = write_records(rows, tmp_path / "sub" / "flows.parquet")
    frame = read_records(path)
    assert list(frame.columns) == list(COLUMN_NAMES)
    assert frame["flow_id"].dtype == "uint64" and frame.loc[0, "flow_id"] == 2**63 + 5
    assert frame["first_ip_len"].isna().tolist() == [False, True]
    assert frame.equals(records_to_frame(rows))
    metadata = pq.read_schema(path).metadata
    assert metadata[b"prism.schema_version"] == str(SCHEMA_VERSION).encode()


def test_several_files_are_concatenated(tmp_path):
    a = write_records([record()], tmp_path / "a.parquet")
    b = write_records([record(group="b.pcap"), record(group="b.pcap")], tmp_path / "b.parquet")
    assert read_records([a, b])["group"].tolist() == ["a.pcap", "b.pcap", "b.pcap"]


def test_missing_column_is_named(tmp_path):
    frame = records_to_frame([record()]).drop(columns=["duration_s"])
    path = tmp_path / "f.parquet"
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path)
    with pytest.raises(RecordsError, match=r"missing column\(s\) duration_s"):
        read_records(path)


def test_wrong_column_type_is_named(tmp_path):
    frame = records_to_frame([record()])
    frame["packets"] = frame["packets"].astype(str)
    path = tmp_path / "f.parquet"
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path)
    with pytest.raises(RecordsError, match="column 'packets' is .* cannot be int64"):
        read_records(path)


def test_impossible_values_and_missing_values_are_refused():
    with pytest.raises(RecordsError, match="'ip_version' is not 4 or 6"):
        records_to_frame([record(ip_version=5)])
    with pytest.raises(RecordsError, match="'end_reason' is not one of"):
        records_to_frame([record(end_reason="timeout")])
    frame = records_to_frame([record()])
    frame["src_addr"] = None
    with pytest.raises(RecordsError, match="'src_addr' has 1 missing values"):
        records.conform(frame)


def test_other_schema_version_is_refused(tmp_path):
    table = pa.Table.from_pandas(records_to_frame([record()]), schema=records.ARROW_SCHEMA, preserve_index=False)
    table = table.replace_schema_metadata({b"prism.schema_version": b"99"})
    path = tmp_path / "f.parquet"
    pq.write_table(table, path)
    with pytest.raises(RecordsError, match="schema version 99"):
        read_records(path)


def test_unreadable_and_missing_files(tmp_path):
    with pytest.raises(RecordsError, match="no such flow-record file"):
        read_records(tmp_path / "none.parquet")
    (tmp_path / "x.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(RecordsError, match="not a readable Parquet file"):
        read_records(tmp_path / "x.parquet")


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = write_records([record()], tmp_path / "flows.parquet")
    before = path.read_bytes()

    def half_write(table, handle, **kwargs):
        handle.write(b"PAR1 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(records.pq, "write_table", half_write)
    with pytest.raises(OSError, match="disk full"):
        write_records([record(), record()], path)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["flows.parquet"]


def test_atomic_write_gives_ordinary_permissions(tmp_path):
    path = atomic_write(tmp_path / "f.bin", lambda handle: handle.write(b"x"))
    assert path.stat().st_mode & 0o777 == 0o644 and path.read_bytes() == b"x"


def test_digest_follows_content_not_encoding(tmp_path):
    rows = [record(), record(first_ip_len=None)]
    frame = records_to_frame(rows)
    reread = read_records(write_records(rows, tmp_path / "f.parquet"))
    assert records_digest(frame) == records_digest(reread)
    assert records_digest(frame) != records_digest(records_to_frame([record(), record(first_ip_len=0)]))
    assert records_digest(frame) != records_digest(records_to_frame([record(), record(flow_id=2**63 + 6)]))


def counts(packets=10, nbytes=4000, state=4):
    """Milestone counts of a flow that has all its packets by the first milestone."""
    return tuple((packets, nbytes, state) for _ in records.MILESTONES_S)


def test_milestone_columns_are_named_by_kind_and_milliseconds():
    assert records.milestone_column("packets", 0.25) == "packets_at_250ms"
    assert records.milestone_column("state_packets", 64.0) == "state_packets_at_64000ms"
    assert len(records.MILESTONE_COLUMNS) == 3 * len(records.MILESTONES_S)
    with pytest.raises(ValueError):
        records.milestone_column("packets", 3.0)
    with pytest.raises(ValueError):
        records.milestone_column("flows", 0.25)


def test_state_and_milestone_counts_round_trip(tmp_path):
    rows = [record(state_packets=4, milestones=counts()), record()]
    frame = read_records(write_records(rows, tmp_path / "f.parquet"))
    assert frame["state_packets"].dtype == "Int64"
    assert frame["state_packets"].tolist()[0] == 4 and frame["state_packets"].isna().tolist() == [False, True]
    assert frame.loc[0, records.milestone_column("bytes", 8.0)] == 4000
    assert frame[list(records.MILESTONE_COLUMNS)].iloc[1].isna().all()


def test_impossible_milestone_counts_are_refused():
    falling = counts()[:3] + ((3, 100, 1),) + counts()[4:]
    with pytest.raises(RecordsError, match="packets_at_2000ms' is negative, below an earlier"):
        records_to_frame([record(state_packets=4, milestones=falling)])
    with pytest.raises(RecordsError, match="bytes_at_250ms' .* above the flow's total"):
        records_to_frame([record(state_packets=4, milestones=counts(nbytes=5000))])
    with pytest.raises(RecordsError, match="'state_packets' is negative or above packets"):
        records_to_frame([record(state_packets=11)])
    with pytest.raises(RecordsError, match="9 milestone counts|expected 9"):
        records_to_frame([record(milestones=counts()[:2])])


def test_version_1_file_is_read_with_the_new_columns_null(tmp_path):
    v1_names = [name for name in COLUMN_NAMES if name not in records.V2_COLUMNS]
    frame = records_to_frame([record(state_packets=4, milestones=counts())])[v1_names]
    table = pa.Table.from_pandas(frame, preserve_index=False)
    table = table.replace_schema_metadata({b"prism.schema_version": b"1"})
    path = tmp_path / "v1.parquet"
    pq.write_table(table, path)
    reread = read_records(path)
    assert list(reread.columns) == list(COLUMN_NAMES)
    assert reread[list(records.V2_COLUMNS)].isna().all().all()
    assert reread.loc[0, "packets"] == 10
