"""The flow-record schema (one row per flow) and its crash-safe Parquet files.

One schema for every producer and consumer: ``prism trace`` (captures and
Argus records), the controller's telemetry (first-packet features joined with
the switch's flow-removed report) and model training. A row holds what the
director sees at a flow's first packet, then what the flow turned out to be.

Columns (``SCHEMA_VERSION`` 2); "first" means the flow's first observed packet,
whose sender is taken as the flow's initiator:

========================  =========  =====================================================
column                    dtype      meaning
========================  =========  =====================================================
flow_id                   uint64     ``prism.flows.identity.FlowKey.flow_id`` (the FSC cookie)
ts_start                  float64    time of the first packet, seconds since the epoch
ip_version                int8       4 or 6
proto                     int16      IP protocol number (6 TCP, 17 UDP, 1 ICMP ...)
src_addr                  string     first packet's source address (text)
dst_addr                  string     first packet's destination address (text)
sport                     int32      first packet's source port (0: protocol has none)
dport                     int32      first packet's destination port (0: none)
first_ip_len              Int32      first packet's IP length in bytes; null if unknown
first_tcp_flags           Int16      first packet's TCP flags (0 if not TCP); null if unknown
source                    string     "pcap", "binetflow" or "telemetry"
duration_s                float64    last packet time - first packet time (>= 0)
packets                   int64      packets, both directions (>= 1)
bytes                     int64      bytes, both directions, as the source counts them
                                     (captures: IP lengths; Argus: TotBytes; switch: frames)
truncated                 bool       the flow was not seen whole: a TCP flow without SYN
                                     or without FIN/RST, or the capture ended within an
                                     idle timeout of its last packet
end_reason                string     "fin", "rst", "idle" (idle timeout), "capture_end"
                                     (still active when the capture ended: outcomes are
                                     lower bounds) or "unknown"
group                     string     capture file or telemetry file the flow came from;
                                     train/test splits never cut a group
state_packets             Int64      packets that change what a mirror must know: TCP
                                     packets with SYN, FIN or RST set; 1 (the first
                                     packet) for other protocols; null if unknown
packets_at_<M>ms          Int64      per age milestone M in ``MILESTONES_S``: the flow's
bytes_at_<M>ms                       packets / bytes / state packets (both directions)
state_packets_at_<M>ms               that arrived at or before ``ts_start + M`` (a flow
                                     shorter than M has its totals there); null if
                                     unknown (Argus binetflow, telemetry without the
                                     counters). Names: ``milestone_column()``.
========================  =========  =====================================================

Files carry the schema version in their Parquet metadata
(``prism.schema_version``). Version 1 files (without ``state_packets`` and the
milestone columns) are still read: those columns are then null. A frame handed
to ``conform`` may likewise lack them.
Readers check every column's presence and type
and refuse a file with a clear ``RecordsError``; extra columns are dropped.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import astuple, dataclass, fields
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from prism.atomic import atomic_write

SCHEMA_VERSION = 2
#: Versions ``read_records`` accepts (v1 lacks the columns added in v2: read as null).
READABLE_SCHEMA_VERSIONS = (1, 2)
METADATA_KEY = b"prism.schema_version"

SOURCE_PCAP = "pcap"
SOURCE_BINETFLOW = "binetflow"
SOURCE_TELEMETRY = "telemetry"

END_FIN = "fin"
END_RST = "rst"
END_IDLE = "idle"
END_CAPTURE = "capture_end"
END_UNKNOWN = "unknown"
END_REASONS = (END_FIN, END_RST, END_IDLE, END_CAPTURE, END_UNKNOWN)

#: Flow ages (seconds) at which records count a flow's packets so far: the ages
#: at which a policy may re-decide a live flow (doubling from 250 ms to 64 s).
MILESTONES_S = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
#: What the milestone columns count.
MILESTONE_KINDS = ("packets", "bytes", "state_packets")


def milestone_column(kind: str, seconds: float) -> str:
    """The column holding a flow's ``kind`` count at age ``seconds``.

    >>> milestone_column("packets", 0.25)
    'packets_at_250ms'
    """
    if kind not in MILESTONE_KINDS:
        raise ValueError(f"milestone kind {kind!r} is not one of {MILESTONE_KINDS}")
    if seconds not in MILESTONES_S:
        raise ValueError(f"{seconds!r} s is not a milestone ({MILESTONES_S})")
    return f"{kind}_at_{round(seconds * 1000)}ms"


#: Milestone columns, kind by kind, each in milestone order.
MILESTONE_COLUMNS = tuple(milestone_column(k, m) for k in MILESTONE_KINDS for m in MILESTONES_S)


@dataclass(frozen=True)
class Column:
    """One column of the schema: name, pandas dtype, Arrow type, nullability."""

    name: str
    dtype: str
    arrow: pa.DataType
    nullable: bool = False


#: The schema, in column order. The only place column names and types are defined.
COLUMNS = (
    Column("flow_id", "uint64", pa.uint64()),
    Column("ts_start", "float64", pa.float64()),
    Column("ip_version", "int8", pa.int8()),
    Column("proto", "int16", pa.int16()),
    Column("src_addr", "string", pa.string()),
    Column("dst_addr", "string", pa.string()),
    Column("sport", "int32", pa.int32()),
    Column("dport", "int32", pa.int32()),
    Column("first_ip_len", "Int32", pa.int32(), nullable=True),
    Column("first_tcp_flags", "Int16", pa.int16(), nullable=True),
    Column("source", "string", pa.string()),
    Column("duration_s", "float64", pa.float64()),
    Column("packets", "int64", pa.int64()),
    Column("bytes", "int64", pa.int64()),
    Column("truncated", "bool", pa.bool_()),
    Column("end_reason", "string", pa.string()),
    Column("group", "string", pa.string()),
    Column("state_packets", "Int64", pa.int64(), nullable=True),
    *(Column(name, "Int64", pa.int64(), nullable=True) for name in MILESTONE_COLUMNS),
)
#: Columns added in schema v2: absent from v1 files and null there.
V2_COLUMNS = ("state_packets",) + MILESTONE_COLUMNS
COLUMN_NAMES = tuple(column.name for column in COLUMNS)
ARROW_SCHEMA = pa.schema(
    [pa.field(c.name, c.arrow, nullable=c.nullable) for c in COLUMNS],
    metadata={METADATA_KEY: str(SCHEMA_VERSION).encode()},
)


class RecordsError(Exception):
    """A flow-record file or frame that does not follow the schema."""


#: One flow's counts at every milestone: ``(packets, bytes, state_packets)`` per
#: milestone, in ``MILESTONES_S`` order.
MilestoneCounts = Tuple[Tuple[int, int, int], ...]


@dataclass(frozen=True)
class FlowRecord:
    """One flow as a row of the schema (see the module doc).

    Fields are the schema's columns in order, except that the milestone
    columns are held together in ``milestones`` (None: unknown, all null).
    """

    flow_id: int
    ts_start: float
    ip_version: int
    proto: int
    src_addr: str
    dst_addr: str
    sport: int
    dport: int
    first_ip_len: Optional[int]
    first_tcp_flags: Optional[int]
    source: str
    duration_s: float
    packets: int
    bytes: int
    truncated: bool
    end_reason: str
    group: str
    state_packets: Optional[int] = None
    milestones: Optional[MilestoneCounts] = None

    def row(self) -> tuple:
        """The record's values in column order (milestone columns spread out)."""
        values = astuple(self)[:-1]
        if self.milestones is None:
            return values + (None,) * len(MILESTONE_COLUMNS)
        if len(self.milestones) != len(MILESTONES_S):
            raise RecordsError(
                f"flow {self.flow_id}: {len(self.milestones)} milestone counts, "
                f"expected {len(MILESTONES_S)}"
            )
        by_kind = tuple(zip(*self.milestones))  # (packets...), (bytes...), (state...)
        return values + tuple(v for kind in by_kind for v in kind)


assert tuple(f.name for f in fields(FlowRecord))[:-1] == COLUMN_NAMES[: -len(MILESTONE_COLUMNS)]


def empty_frame() -> pd.DataFrame:
    """A frame with the schema's columns and dtypes and no rows."""
    return pd.DataFrame({c.name: pd.Series([], dtype=c.dtype) for c in COLUMNS})


def records_to_frame(records: Iterable[FlowRecord]) -> pd.DataFrame:
    """Rows -> a frame with the schema's dtypes (checked)."""
    rows = [record.row() for record in records]
    if not rows:
        return empty_frame()
    frame = pd.DataFrame.from_records(rows, columns=list(COLUMN_NAMES))
    return conform(frame)


def conform(frame: pd.DataFrame, origin: str = "frame") -> pd.DataFrame:
    """Check a frame against the schema and return it with exactly its columns and dtypes.

    Args:
        frame: any frame holding at least the schema's columns.
        origin: where the frame came from, for error messages.

    Returns:
        A new frame: schema columns in schema order, schema dtypes.

    Raises:
        RecordsError: a column is missing, cannot take the schema's type, holds
            missing values where none are allowed, or holds impossible values.
    """
    absent_v2 = [name for name in V2_COLUMNS if name not in frame.columns]
    if absent_v2:  # a v1 frame: what v2 added is unknown
        frame = frame.assign(**{name: pd.Series(pd.NA, index=frame.index, dtype="Int64")
                                for name in absent_v2})  # fmt: skip
    missing = [name for name in COLUMN_NAMES if name not in frame.columns]
    if missing:
        raise RecordsError(
            f"{origin}: missing column(s) {', '.join(missing)}; flow-record schema "
            f"v{SCHEMA_VERSION} needs {', '.join(COLUMN_NAMES)}"
        )
    out = {}
    problems: List[str] = []
    for column in COLUMNS:
        values = frame[column.name]
        if not column.nullable and values.isna().any():
            problems.append(f"column {column.name!r} has {int(values.isna().sum())} missing values")
            continue
        try:
            out[column.name] = _cast(values, column)
        except (TypeError, ValueError, OverflowError) as exc:
            problems.append(
                f"column {column.name!r} is {values.dtype}, cannot be {column.dtype}: {exc}"
            )
    if not problems:
        problems = _value_problems(out)
    if problems:
        raise RecordsError(f"{origin}: " + "; ".join(problems))
    return pd.DataFrame(out, index=pd.RangeIndex(len(frame)))


def _cast(values: pd.Series, column: Column) -> pd.Series:
    if column.dtype == "string":
        if not (pd.api.types.is_string_dtype(values) or values.dtype == object):
            raise TypeError("not text")
        return values.astype("string").reset_index(drop=True)
    if column.dtype == "bool":
        if not pd.api.types.is_bool_dtype(values):
            raise TypeError("not boolean")
        return values.astype("bool").reset_index(drop=True)
    if column.dtype.startswith(("int", "uint", "Int")):
        if not (
            pd.api.types.is_integer_dtype(values) or _whole_floats(values) or _int_objects(values)
        ):
            raise TypeError("not integers")
    elif not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
        raise TypeError("not numbers")
    return values.astype(column.dtype).reset_index(drop=True)


def _int_objects(values: pd.Series) -> bool:
    """Python ints and None in an object column (rows built from FlowRecords)."""
    if values.dtype != object:
        return False
    return all(isinstance(v, int) and not isinstance(v, bool) for v in values.dropna())


def _whole_floats(values: pd.Series) -> bool:
    if not pd.api.types.is_float_dtype(values):
        return False
    present = values.dropna().to_numpy()
    return bool(np.all(present == np.floor(present)))


def _value_problems(columns: dict) -> List[str]:
    problems = []
    checks = (
        ("ip_version", ~columns["ip_version"].isin((4, 6)), "is not 4 or 6"),
        ("duration_s", columns["duration_s"] < 0, "is negative"),
        ("packets", columns["packets"] < 1, "is below 1"),
        ("bytes", columns["bytes"] < 0, "is negative"),
        ("end_reason", ~columns["end_reason"].isin(END_REASONS), f"is not one of {END_REASONS}"),
    )
    for name, bad, what in checks:
        count = int(np.asarray(bad).sum())
        if count:
            problems.append(f"column {name!r} {what} in {count} row(s)")
    return problems + _milestone_problems(columns)


def _milestone_problems(columns: dict) -> List[str]:
    """Counts that cannot be: negative, falling with age, above the flow's totals."""
    problems = []
    state = columns["state_packets"]
    bad = (state < 0) | (state > columns["packets"])
    if int(bad.fillna(False).sum()):
        problems.append(f"column 'state_packets' is negative or above packets in "
                        f"{int(bad.fillna(False).sum())} row(s)")  # fmt: skip
    totals = {"packets": columns["packets"], "bytes": columns["bytes"], "state_packets": state}
    for kind in MILESTONE_KINDS:
        previous = pd.Series(0, index=state.index, dtype="Int64")
        for seconds in MILESTONES_S:
            name = milestone_column(kind, seconds)
            values = columns[name]
            bad = (values < previous) | (values > totals[kind])
            count = int(bad.fillna(False).sum())
            if count:
                problems.append(f"column {name!r} is negative, below an earlier milestone or "
                                f"above the flow's total in {count} row(s)")  # fmt: skip
            previous = values.fillna(previous)
    return problems


def write_records(records: Union[pd.DataFrame, Iterable[FlowRecord]], path) -> Path:
    """Write flow records to a Parquet file, atomically (never a half-written file).

    Args:
        records: a frame following the schema, or FlowRecord rows.
        path: target file; replaced only once the new file is complete on disk.

    Returns:
        The path written.

    Raises:
        RecordsError: the records do not follow the schema.
    """
    frame = records if isinstance(records, pd.DataFrame) else records_to_frame(records)
    frame = conform(frame)
    table = pa.Table.from_pandas(frame, schema=ARROW_SCHEMA, preserve_index=False)
    return atomic_write(path, lambda handle: pq.write_table(table, handle))


def read_records(paths: Union[str, Path, Sequence[Union[str, Path]]]) -> pd.DataFrame:
    """Read one or more flow-record Parquet files into one checked frame.

    Args:
        paths: a file or a list of files.

    Returns:
        The rows of all files, in file order, with the schema's dtypes.

    Raises:
        RecordsError: a file is missing, unreadable, of another schema version,
            or lacks a column / has one of the wrong type.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    frames = [_read_one(Path(path)) for path in paths]
    if not frames:
        return empty_frame()
    return conform(pd.concat(frames, ignore_index=True), origin=", ".join(map(str, paths)))


def _read_one(path: Path) -> pd.DataFrame:
    try:
        table = pq.read_table(path)
    except FileNotFoundError:
        raise RecordsError(f"{path}: no such flow-record file") from None
    except (OSError, pa.ArrowException) as exc:
        raise RecordsError(f"{path}: not a readable Parquet file ({exc})") from None
    metadata = table.schema.metadata or {}
    version = metadata.get(METADATA_KEY)
    readable = [str(v).encode() for v in READABLE_SCHEMA_VERSIONS]
    if version is not None and version not in readable:
        raise RecordsError(
            f"{path}: flow-record schema version {version.decode(errors='replace')}, "
            f"this PRISM reads versions {', '.join(map(str, READABLE_SCHEMA_VERSIONS))}; "
            f"re-create it with this version's `prism trace` or telemetry"
        )
    return conform(table.to_pandas(), origin=str(path))


def records_digest(frame: pd.DataFrame) -> str:
    """A SHA-256 of the records' content, independent of file encoding and library versions.

    Args:
        frame: records following the schema.

    Returns:
        ``"sha256:<hex>"``.
    """
    frame = conform(frame)
    digest = hashlib.sha256()
    digest.update(json.dumps([SCHEMA_VERSION, list(COLUMN_NAMES), len(frame)]).encode())
    for column in COLUMNS:
        values = frame[column.name]
        if column.dtype == "string":
            digest.update("\0".join(values.tolist()).encode("utf-8"))
        else:
            mask = values.isna().to_numpy()
            if column.nullable:  # Int16/Int32: exact in float64
                array = values.to_numpy(dtype="float64", na_value=0.0)
            else:
                array = values.to_numpy()
            digest.update(array.astype(array.dtype.newbyteorder("<")).tobytes())
            digest.update(mask.tobytes())
    return "sha256:" + digest.hexdigest()
