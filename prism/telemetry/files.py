"""Telemetry files: buffered rows written as rotated, crash-safe Parquet parts, and read back.

Each table (``prism.telemetry.rows.TABLES``) has a directory under the telemetry
directory and one open part in memory. A part is written when the rotation
policy says so, on ``flush_all`` (controller shutdown) and never half: the
whole file goes to a temporary name, is fsynced, then renamed
(``prism.atomic``). A crash loses at most the rows of the open parts (fewer than
``rotate_records`` per table, none older than ``rotate_s``), never a closed
file, and leaves no partial file under a part's name. Time comes in as
``now``; nothing here reads a clock.
"""

from __future__ import annotations

import datetime
import logging
import re
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Union

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from prism.atomic import atomic_write
from prism.telemetry.records import RecordsError, read_records, write_records
from prism.telemetry.rows import (
    STATS_COLUMNS,
    TABLE_FLOWS,
    TABLE_KEY,
    TABLES,
    TELEMETRY_SCHEMA_VERSION,
    VERSION_KEY,
    PartBuffer,
    RotationPolicy,
    stats_table,
)

LOG = logging.getLogger(__name__)
PART_SUFFIX = ".parquet"
#: Parts' worth of rows kept in memory per table while files cannot be written; older rows are dropped.
MAX_PARTS_KEPT = 10
_PART_NAME = re.compile(
    r"(?P<table>[a-z_]+)-(?P<start>\d{8}T\d{6}Z)(-(?P<writer>[A-Za-z0-9_.]+))?-(?P<seq>\d{6})\.parquet")
#: What a writer's id may keep in a file name; anything else becomes "_".
_UNSAFE_IN_NAME = re.compile(r"[^A-Za-z0-9_.]")
#: pandas dtypes of the statistics tables' nullable Arrow types when read back.
_READ_TYPES = {
    pa.uint64(): pd.UInt64Dtype(), pa.int64(): pd.Int64Dtype(), pa.int32(): pd.Int32Dtype(),
    pa.int16(): pd.Int16Dtype(), pa.float64(): pd.Float64Dtype(), pa.string(): pd.StringDtype(),
}  # fmt: skip


class TelemetryError(Exception):
    """A telemetry file that cannot be read as the schema says."""


class TelemetryWriter:
    """Buffers telemetry rows per table and writes them as rotated parts.

    Args:
        directory: The telemetry directory (created if needed).
        rotation: When a part is closed.
        now: Current time: names this writer's parts (with a sequence number
            that skips names already on disk, so a restart never overwrites).
        writer_id: Names this writer's parts too, when several processes write
            to one directory (a controller's id in a cluster): two started in
            the same second then never pick the same name.
    """

    def __init__(self, directory: Union[str, Path], rotation: RotationPolicy, now: float,
                 writer_id: str = "") -> None:  # fmt: skip
        self.directory = Path(directory)
        self.rotation = rotation
        start = datetime.datetime.fromtimestamp(now, tz=datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        self._start = f"{start}-{_UNSAFE_IN_NAME.sub('_', writer_id)}" if writer_id else start
        self._buffers: Dict[str, PartBuffer] = {table: PartBuffer() for table in TABLES}
        self._seq = 0
        self.files_written: Dict[str, int] = {table: 0 for table in TABLES}
        self.rows_written: Dict[str, int] = {table: 0 for table in TABLES}
        self.rows_dropped: Dict[str, int] = {table: 0 for table in TABLES}
        self.write_errors = 0

    def pending(self, table: str) -> int:
        """Rows of ``table`` in its open part."""
        return len(self._buffers[table].rows)

    def add(self, table: str, rows: Sequence, now: float) -> List[Path]:
        """Add rows (FlowRecords for ``flows``, dicts for the statistics tables) received at ``now``.

        Returns:
            The parts closed because of them (several when a batch is larger than a part).
        """
        if table not in self._buffers:
            raise ValueError(f"unknown telemetry table {table!r} (known: {', '.join(TABLES)})")
        buffer = self._buffers[table]
        buffer.add(rows, now)
        written: List[Path] = []
        while len(buffer.rows) >= self.rotation.max_records:
            closed = self._close(table, now, limit=self.rotation.max_records)
            if not closed:
                return written
            written += closed
        if self.rotation.due(len(buffer.rows), buffer.opened_at, now):
            written += self._close(table, now)
        return written

    def tick(self, now: float) -> List[Path]:
        """Close every part whose first row is old enough (call about once a second)."""
        written: List[Path] = []
        for table, buffer in self._buffers.items():
            if self.rotation.due(len(buffer.rows), buffer.opened_at, now):
                written += self._close(table, now)
        return written

    def flush_all(self, now: float) -> List[Path]:
        """Close every non-empty part (shutdown)."""
        written: List[Path] = []
        for table, buffer in self._buffers.items():
            if buffer.rows:
                written += self._close(table, now)
        return written

    def _close(self, table: str, now: float, limit: Optional[int] = None) -> List[Path]:
        buffer = self._buffers[table]
        rows, opened_at = buffer.take()
        if limit is not None and len(rows) > limit:
            buffer.add(rows[limit:], opened_at if opened_at is not None else now)
            rows = rows[:limit]
        path = self._next_path(table)
        try:
            if table == TABLE_FLOWS:
                write_records(rows, path)
            else:
                table_data = stats_table(table, rows)
                atomic_write(path, lambda handle: pq.write_table(table_data, handle))
        except (OSError, ValueError, RecordsError, pa.ArrowException):
            # Keep the rows for the next attempt (a full disk may recover), up to a bound.
            self.write_errors += 1
            LOG.exception("telemetry: cannot write %d %s rows to %s; kept in memory", len(rows), table, path)
            rows += buffer.take()[0]
            limit = self.rotation.max_records * MAX_PARTS_KEPT
            if len(rows) > limit:
                self.rows_dropped[table] += len(rows) - limit
                rows = rows[len(rows) - limit:]
            buffer.add(rows, opened_at if opened_at is not None else now)
            return []
        self.files_written[table] += 1
        self.rows_written[table] += len(rows)
        return [path]

    def _next_path(self, table: str) -> Path:
        directory = self.directory / table
        directory.mkdir(parents=True, exist_ok=True)
        while True:
            self._seq += 1
            path = directory / f"{table}-{self._start}-{self._seq:06d}{PART_SUFFIX}"
            if not path.exists():
                return path


def part_files(directory: Union[str, Path], table: str) -> List[Path]:
    """The closed parts of ``table`` under a telemetry directory, oldest first (temporary files excluded)."""
    folder = Path(directory) / table
    if not folder.is_dir():
        return []
    parts = [p for p in folder.iterdir() if _PART_NAME.fullmatch(p.name) and p.name.startswith(table + "-")]
    return sorted(parts, key=lambda p: p.name)


def read_flows(directory: Union[str, Path]) -> pd.DataFrame:
    """Every flow record of a telemetry directory (the ``prism.telemetry.records`` schema)."""
    return read_records(part_files(directory, TABLE_FLOWS))


def read_stats(paths: Union[str, Path, Iterable[Union[str, Path]]], table: str) -> pd.DataFrame:
    """Statistics parts of one table as a frame (nullable dtypes: NA where the switch had no counter).

    Args:
        paths: Part files, or a telemetry directory (all of its parts of ``table``; none if it
            does not exist).
        table: ``flow_stats``, ``port_stats`` or ``group_stats``.

    Raises:
        TelemetryError: a file is unreadable, of another table or schema version, or lacks columns.
    """
    if table not in STATS_COLUMNS:
        raise TelemetryError(f"unknown statistics table {table!r}")
    if isinstance(paths, (str, Path)) and not str(paths).endswith(PART_SUFFIX):
        paths = part_files(paths, table)
    elif isinstance(paths, (str, Path)):
        paths = [paths]
    frames = [_read_part(Path(path), table) for path in paths]
    columns = [name for name, _kind, _nullable in STATS_COLUMNS[table]]
    if not frames:
        return pd.DataFrame({name: pd.Series([], dtype=object) for name in columns})
    return pd.concat(frames, ignore_index=True)[columns]


def _read_part(path: Path, table: str) -> pd.DataFrame:
    try:
        data = pq.read_table(path)
    except FileNotFoundError:
        raise TelemetryError(f"{path}: no such telemetry file") from None
    except (OSError, pa.ArrowException) as error:
        raise TelemetryError(f"{path}: not a readable Parquet file ({error})") from None
    metadata = data.schema.metadata or {}
    if metadata.get(TABLE_KEY) != table.encode():
        raise TelemetryError(f"{path}: not a {table} file (table {metadata.get(TABLE_KEY)!r})")
    version = metadata.get(VERSION_KEY)
    if version != str(TELEMETRY_SCHEMA_VERSION).encode():
        raise TelemetryError(f"{path}: telemetry schema version {version!r}, this PRISM reads "
                             f"{TELEMETRY_SCHEMA_VERSION}")  # fmt: skip
    missing = [name for name, _kind, _nullable in STATS_COLUMNS[table] if name not in data.column_names]
    if missing:
        raise TelemetryError(f"{path}: missing column(s) {', '.join(missing)}")
    return data.to_pandas(types_mapper=_pandas_type)


def _pandas_type(arrow_type: pa.DataType):
    """Nullable pandas dtypes, so that NA stays NA and uint64 counters stay exact."""
    if pa.types.is_list(arrow_type):
        return pd.ArrowDtype(arrow_type)
    return _READ_TYPES.get(arrow_type)

