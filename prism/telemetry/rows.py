"""Telemetry rows: flows joined at their end, switch statistics, unsupported counters as NA, file rotation.

Pure: values in, rows and Arrow tables out; ``prism.telemetry.files`` writes
them. The stats collector (``ryu_apps/stats_collector.py``) writes four tables,
each in its own subdirectory of ``telemetry.dir``:

``flows/`` -- one row per ended flow, the flow-record schema v1 of
``prism.telemetry.records`` (``source`` = ``"telemetry"``), so that ``prism train`` reads
the network's own telemetry as it reads captures. The director joins, at the
flow's end, what it saw at the first packet with the switch's flow-removed
reports of both directions (``flow_record``):

- ``ts_start``: when the first packet reached the controller (packet-in);
- ``packets`` / ``bytes``: the two FSC entries' counters plus the first packet,
  which the controller sent on with a packet-out (bytes are Ethernet frames);
- ``duration_s``: the longer entry's lifetime minus the idle timeout that
  removed it (the time from the first to the last packet, to about the
  switch's one-second expiry granularity);
- ``truncated``: a TCP flow whose first packet was not a SYN (picked up
  mid-connection, e.g. after a controller restart); ``end_reason``: ``"idle"``;
- ``group``: ``telemetry/<dpid>/<UTC hour of ts_start>``, so training splits
  never cut an hour of one switch's traffic.

A flow whose switch counters are unsupported (all ones) has no usable
outcome; it is counted, not written (the schema's counters are not nullable).

Statistics tables (``TELEMETRY_SCHEMA_VERSION`` 1, stored in each file's
Parquet metadata as ``prism.telemetry_schema_version`` with ``prism.table``).
Every counter the switch reports as all ones (``0xffffffffffffffff`` for 64-bit,
``0xffffffff`` for 32-bit fields) is null (NA), never a huge number.
``ts`` is when the controller received the reply (seconds since the epoch),
``dp_id`` the switch.

``flow_stats/`` (every flow entry of every table, per poll):

=============  ==========  ====================================================
column         type        meaning
=============  ==========  ====================================================
ts             float64     reply time
dp_id          uint64      switch
table_id       int16       table of the entry
priority       int32       entry priority
cookie         uint64      entry cookie (the flow_id for FSC entries, table 1)
idle_timeout   int32       seconds (0: none)
hard_timeout   int32       seconds (0: none)
duration_s     float64?    entry age in seconds
packets        uint64?     packets matched
bytes          uint64?     bytes matched
match          string      the match fields as sorted JSON
=============  ==========  ====================================================

``port_stats/`` (every port, per poll): ``ts``, ``dp_id``, ``port_no`` (int64),
``duration_s`` (float64?), and uint64? counters ``rx_packets``, ``tx_packets``,
``rx_bytes``, ``tx_bytes``, ``rx_dropped``, ``tx_dropped``, ``rx_errors``,
``tx_errors``, ``rx_frame_err``, ``rx_over_err``, ``rx_crc_err``, ``collisions``.

``group_stats/`` (every group, per poll): ``ts``, ``dp_id``, ``group_id``
(int64), ``ref_count`` (int64?: flow entries and groups pointing to it),
``duration_s`` (float64?), ``packets`` and ``bytes`` (uint64?), and
``bucket_packets`` / ``bucket_bytes`` (list of uint64?, one per bucket in bucket
order: for a profile's ALL group, the primary then one per mirror, so the
mirror buckets count the mirroring's cost).

(``?``: nullable.) Files are ``<table>-<UTC start>-<seq>.parquet``; a file is
closed when it holds ``rotate_records`` rows or its first row is ``rotate_s``
old, and written whole under a temporary name then renamed (``prism.atomic``).
"""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import pyarrow as pa

from prism.flows.outcome import ALL_ONES_32, ALL_ONES_64, FlowOutcome, counter, flow_outcome  # noqa: F401 - API here too
from prism.flows.identity import PROTO_TCP, TCP_SYN, ip_to_str
from prism.telemetry.records import END_IDLE, SOURCE_TELEMETRY, FlowRecord

TELEMETRY_SCHEMA_VERSION = 1
VERSION_KEY = b"prism.telemetry_schema_version"
TABLE_KEY = b"prism.table"
NANOSECONDS = 1e9

TABLE_FLOWS = "flows"
TABLE_FLOW_STATS = "flow_stats"
TABLE_PORT_STATS = "port_stats"
TABLE_GROUP_STATS = "group_stats"

PORT_COUNTERS = (
    "rx_packets", "tx_packets", "rx_bytes", "tx_bytes", "rx_dropped", "tx_dropped",
    "rx_errors", "tx_errors", "rx_frame_err", "rx_over_err", "rx_crc_err", "collisions",
)  # fmt: skip

_COMMON = (("ts", pa.float64(), False), ("dp_id", pa.uint64(), False))
#: table -> (column, Arrow type, nullable), in column order.
STATS_COLUMNS: Dict[str, Tuple[Tuple[str, pa.DataType, bool], ...]] = {
    TABLE_FLOW_STATS: _COMMON + (
        ("table_id", pa.int16(), False), ("priority", pa.int32(), False), ("cookie", pa.uint64(), False),
        ("idle_timeout", pa.int32(), False), ("hard_timeout", pa.int32(), False),
        ("duration_s", pa.float64(), True), ("packets", pa.uint64(), True), ("bytes", pa.uint64(), True),
        ("match", pa.string(), False),
    ),
    TABLE_PORT_STATS: _COMMON + (("port_no", pa.int64(), False), ("duration_s", pa.float64(), True))
    + tuple((name, pa.uint64(), True) for name in PORT_COUNTERS),
    TABLE_GROUP_STATS: _COMMON + (
        ("group_id", pa.int64(), False), ("ref_count", pa.int64(), True), ("duration_s", pa.float64(), True),
        ("packets", pa.uint64(), True), ("bytes", pa.uint64(), True),
        ("bucket_packets", pa.list_(pa.uint64()), False), ("bucket_bytes", pa.list_(pa.uint64()), False),
    ),
}  # fmt: skip
STATS_TABLES = tuple(STATS_COLUMNS)
TABLES = (TABLE_FLOWS, *STATS_TABLES)

Row = Dict[str, Any]


def arrow_schema(table: str) -> pa.Schema:
    """The Arrow schema of a statistics table, with its version and name in the metadata."""
    return pa.schema(
        [pa.field(name, kind, nullable=nullable) for name, kind, nullable in STATS_COLUMNS[table]],
        metadata={VERSION_KEY: str(TELEMETRY_SCHEMA_VERSION).encode(), TABLE_KEY: table.encode()},
    )


# --- unsupported counters (``counter`` itself is in prism.flows.outcome) ----------------
def duration(seconds: Optional[int], nanoseconds: Optional[int] = 0) -> Optional[float]:
    """OpenFlow's ``duration_sec`` + ``duration_nsec`` in seconds, None if unsupported."""
    sec = counter(seconds, 32)
    if sec is None:
        return None
    nsec = counter(nanoseconds, 32)
    return sec + (nsec or 0) / NANOSECONDS


# --- flows at their end ----------------------------------------------------------------
def telemetry_group(dp_id: int, ts: float) -> str:
    """The record group of a flow: its switch and the UTC hour it started in."""
    hour = datetime.datetime.fromtimestamp(ts, tz=datetime.timezone.utc).strftime("%Y-%m-%dT%H")
    return f"telemetry/{dp_id:016x}/{hour}"


def flow_record(entry, dp_id: int, idle_timeout: float) -> Optional[FlowRecord]:
    """The flow-record row of an ended flow, or None if it cannot have one.

    The switch reports totals only: ``state_packets`` and the milestone counts
    are left null (unknown).

    None when the director kept no first packet or the switch's counters are
    unsupported (a record with invented counters would mislead training).

    Args:
        entry: The flow's ``FlowEntry`` after its last flow-removed report.
        dp_id: The switch.
        idle_timeout: The FSC entries' idle timeout.
    """
    first = entry.first_packet
    if first is None:
        return None
    outcome = flow_outcome(entry, idle_timeout)
    if outcome.packets is None or outcome.bytes is None:
        return None
    tcp = first.proto == PROTO_TCP
    return FlowRecord(
        flow_id=entry.flow_id,
        ts_start=float(entry.created_at),
        ip_version=first.ip_version,
        proto=first.proto,
        src_addr=ip_to_str(first.src),
        dst_addr=ip_to_str(first.dst),
        sport=first.sport,
        dport=first.dport,
        first_ip_len=first.ip_len,
        first_tcp_flags=first.tcp_flags if tcp else 0,
        source=SOURCE_TELEMETRY,
        duration_s=outcome.duration_s,
        packets=outcome.packets,
        bytes=outcome.bytes,
        truncated=bool(tcp and not first.tcp_flags & TCP_SYN),
        end_reason=END_IDLE,
        group=telemetry_group(dp_id, entry.created_at),
    )


# --- statistics rows -------------------------------------------------------------------
def match_text(match: Mapping[str, Any]) -> str:
    """Match fields as sorted JSON (masked fields as [value, mask])."""
    return json.dumps({k: list(v) if isinstance(v, tuple) else v for k, v in match.items()},
                      sort_keys=True, default=str)  # fmt: skip


def flow_stats_row(ts: float, dp_id: int, stat, match: Mapping[str, Any]) -> Row:
    """One ``flow_stats`` row from an OFPFlowStats-like object and its match as a dict."""
    return {
        "ts": ts, "dp_id": dp_id, "table_id": stat.table_id, "priority": stat.priority,
        "cookie": stat.cookie, "idle_timeout": stat.idle_timeout, "hard_timeout": stat.hard_timeout,
        "duration_s": duration(stat.duration_sec, stat.duration_nsec),
        "packets": counter(stat.packet_count), "bytes": counter(stat.byte_count),
        "match": match_text(match),
    }  # fmt: skip


def port_stats_row(ts: float, dp_id: int, stat) -> Row:
    """One ``port_stats`` row from an OFPPortStats-like object."""
    row: Row = {"ts": ts, "dp_id": dp_id, "port_no": stat.port_no,
                "duration_s": duration(stat.duration_sec, stat.duration_nsec)}  # fmt: skip
    for name in PORT_COUNTERS:
        row[name] = counter(getattr(stat, name))
    return row


def group_stats_row(ts: float, dp_id: int, stat) -> Row:
    """One ``group_stats`` row from an OFPGroupStats-like object (``bucket_stats`` in bucket order)."""
    buckets = list(stat.bucket_stats or ())
    return {
        "ts": ts, "dp_id": dp_id, "group_id": stat.group_id, "ref_count": counter(stat.ref_count, 32),
        "duration_s": duration(stat.duration_sec, stat.duration_nsec),
        "packets": counter(stat.packet_count), "bytes": counter(stat.byte_count),
        "bucket_packets": [counter(b.packet_count) for b in buckets],
        "bucket_bytes": [counter(b.byte_count) for b in buckets],
    }  # fmt: skip


def stats_table(table: str, rows: Sequence[Row]) -> pa.Table:
    """Rows of a statistics table as an Arrow table of its schema.

    Raises:
        ValueError: unknown table, or a row missing a column / holding a value of the wrong type.
    """
    if table not in STATS_COLUMNS:
        raise ValueError(f"unknown statistics table {table!r} (known: {', '.join(STATS_TABLES)})")
    schema = arrow_schema(table)
    try:
        arrays = [pa.array([row[f.name] for row in rows], type=f.type) for f in schema]
        return pa.Table.from_arrays(arrays, schema=schema)
    except KeyError as error:
        raise ValueError(f"{table}: a row has no column {error}") from None
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as error:
        raise ValueError(f"{table}: {error}") from None


# --- rotation ------------------------------------------------------------------------
@dataclass(frozen=True)
class RotationPolicy:
    """When an open telemetry file is closed: ``max_records`` rows, or its first row ``max_age_s`` old."""

    max_records: int
    max_age_s: float

    def __post_init__(self) -> None:
        if self.max_records < 1 or not self.max_age_s > 0:
            raise ValueError(f"rotation needs max_records >= 1 and max_age_s > 0, not {self}")

    def due(self, records: int, opened_at: Optional[float], now: float) -> bool:
        """True if a file holding ``records`` rows, the first added at ``opened_at``, must be closed now."""
        if records <= 0 or opened_at is None:
            return False
        return records >= self.max_records or now - opened_at >= self.max_age_s


@dataclass
class PartBuffer:
    """The open (in-memory) part of one table: rows since the last file was closed."""

    rows: List[Any] = field(default_factory=list)
    opened_at: Optional[float] = None

    def add(self, rows: Sequence[Any], now: float) -> None:
        """Append rows received at ``now``."""
        if rows and self.opened_at is None:
            self.opened_at = now
        self.rows.extend(rows)

    def take(self) -> Tuple[List[Any], Optional[float]]:
        """The rows and their opening time; the buffer starts empty again."""
        rows, opened_at = self.rows, self.opened_at
        self.rows, self.opened_at = [], None
        return rows, opened_at
