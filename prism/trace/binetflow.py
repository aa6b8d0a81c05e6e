"""Argus bidirectional flow records (``*.binetflow`` CSV or TSV) read into FlowRecords.

Argus reports per flow its start time, duration, protocol, endpoints, a
state string (for TCP the flags seen from each side, e.g. ``SPA_SRPA``) and
total packets and bytes; it has no first-packet size or flags, no count of
state packets and no counts at age milestones, so those columns are null.
Start times are taken as UTC. A row the CSV reader cannot parse (a field over
the reader's limit, 128 KiB) or with a non-finite duration is skipped and
counted, like any malformed row.
"""

from __future__ import annotations

import csv
import io
import math
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Dict, Iterator, List, Optional, TextIO

from prism.trace.flowmeter import DEFAULT_IDLE_TIMEOUT_S
from prism.flows.identity import PROTO_TCP, FlowKey, ip_to_bytes, ip_to_str
from prism.telemetry.records import (
    END_CAPTURE,
    END_FIN,
    END_IDLE,
    END_RST,
    SOURCE_BINETFLOW,
    FlowRecord,
)

#: Columns a file must have (Argus ``ra -s`` names as the Stratosphere files use them).
REQUIRED_COLUMNS = (
    "StartTime", "Dur", "Proto", "SrcAddr", "Sport", "DstAddr", "Dport", "State",
    "TotPkts", "TotBytes",
)  # fmt: skip
TIME_FORMATS = ("%Y/%m/%d %H:%M:%S.%f", "%Y/%m/%d %H:%M:%S", "%Y-%m-%d %H:%M:%S.%f")
#: Argus protocol names -> IP protocol numbers; other records (arp, llc, man ...) are not IP flows.
PROTOCOLS = {
    "tcp": 6, "udp": 17, "icmp": 1, "ipv6-icmp": 58, "icmp6": 58, "igmp": 2,
    "gre": 47, "esp": 50, "sctp": 132, "ipv6": 41, "pim": 103,
}  # fmt: skip
PORT_PROTOCOLS = frozenset((6, 17, 132))


class BinetflowError(Exception):
    """A file that is not an Argus binetflow file at all."""


@dataclass
class BinetflowResult:
    """Records read from one file, and the rows that were skipped with why."""

    records: List[FlowRecord] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)


def looks_like_binetflow(head: bytes) -> bool:
    """True if a file's first bytes are an Argus CSV/TSV header line."""
    text = head.lstrip(b"\xef\xbb\xbf").split(b"\n", 1)[0].decode("ascii", errors="replace")
    return text.startswith("StartTime") and "Proto" in text and "SrcAddr" in text


def read_binetflow(
    text: TextIO, group: str, idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S
) -> BinetflowResult:
    """Parse a binetflow file into flow records.

    Args:
        text: the file, opened as text.
        group: the file's name, stored in each record's ``group``.
        idle_timeout_s: a flow whose last packet is within this long of the
            file's last activity is flagged as cut short by the capture's end.

    Returns:
        The records by start time and the skipped-row counts by reason.

    Raises:
        BinetflowError: no header line, or a required column is missing.
    """
    header_line = text.readline().lstrip("\ufeff")
    delimiter = "\t" if header_line.count("\t") > header_line.count(",") else ","
    header = [name.strip() for name in next(csv.reader(io.StringIO(header_line), delimiter=delimiter), [])]
    missing = [name for name in REQUIRED_COLUMNS if name not in header]
    if missing:
        raise BinetflowError(f"not an Argus binetflow file: missing column(s) {', '.join(missing)}")
    result = BinetflowResult()
    parsed = []
    for row in _rows(csv.DictReader(text, fieldnames=header, delimiter=delimiter), result.skipped):
        item = _parse_row(row, result.skipped)
        if item is not None:
            parsed.append(item)
    if not parsed:
        return result
    capture_end = max(start + duration for start, duration, *_ in parsed)
    for start, duration, proto, src, sport, dst, dport, state, packets, nbytes in parsed:
        result.records.append(
            _record(start, duration, proto, src, sport, dst, dport, state, packets, nbytes,
                    group, capture_end, idle_timeout_s)  # fmt: skip
        )
    result.records.sort(key=lambda record: record.ts_start)
    return result


def _rows(reader: csv.DictReader, skipped: Counter) -> Iterator[Dict[str, Optional[str]]]:
    """The reader's rows; a line it cannot parse is counted and passed over."""
    while True:
        try:
            yield next(reader)
        except StopIteration:
            return
        except csv.Error as exc:  # the reader resumes at the next line
            skipped[f"unparsable row ({exc})"] += 1


def _parse_row(row: Dict[str, Optional[str]], skipped: Counter):
    proto = PROTOCOLS.get((row.get("Proto") or "").strip().lower())
    if proto is None:
        skipped["not an IP protocol"] += 1
        return None
    try:
        start = _parse_time((row.get("StartTime") or "").strip())
        duration = float(row["Dur"])
        src = ip_to_str(ip_to_bytes((row["SrcAddr"] or "").strip()))
        dst = ip_to_str(ip_to_bytes((row["DstAddr"] or "").strip()))
        sport = _port(row["Sport"]) if proto in PORT_PROTOCOLS else 0
        dport = _port(row["Dport"]) if proto in PORT_PROTOCOLS else 0
        packets = int(row["TotPkts"])
        nbytes = int(row["TotBytes"])
        FlowKey.between(proto, src, sport, dst, dport)  # validates versions and ranges
    except (KeyError, TypeError, ValueError):
        skipped["malformed row"] += 1
        return None
    if not math.isfinite(duration) or duration < 0 or packets < 1 or nbytes < 0:
        skipped["impossible counters"] += 1
        return None
    state = (row.get("State") or "").strip().upper()
    return start, duration, proto, src, sport, dst, dport, state, packets, nbytes


def _parse_time(text: str) -> float:
    for fmt in TIME_FORMATS:
        try:
            moment = datetime.strptime(text, fmt)
        except ValueError:
            continue
        return moment.replace(tzinfo=timezone.utc).timestamp()
    raise ValueError(f"unknown time format: {text!r}")


def _port(text: Optional[str]) -> int:
    text = (text or "").strip()
    return int(text, 16) if text.lower().startswith("0x") else int(text)


def _record(start, duration, proto, src, sport, dst, dport, state, packets, nbytes,
            group, capture_end, idle_timeout_s) -> FlowRecord:  # fmt: skip
    key, _forward = FlowKey.between(proto, src, sport, dst, dport)
    is_tcp = proto == PROTO_TCP
    if is_tcp and "R" in state:
        reason = END_RST
    elif is_tcp and "F" in state:
        reason = END_FIN
    elif capture_end - (start + duration) < idle_timeout_s:
        reason = END_CAPTURE
    else:
        reason = END_IDLE
    syn_seen = "S" in state.split("_", 1)[0]
    truncated = reason == END_CAPTURE or (is_tcp and not (syn_seen and reason in (END_FIN, END_RST)))
    return FlowRecord(
        flow_id=key.flow_id,
        ts_start=start,
        ip_version=key.ip_version,
        proto=proto,
        src_addr=src,
        dst_addr=dst,
        sport=sport,
        dport=dport,
        first_ip_len=None,
        first_tcp_flags=None,
        source=SOURCE_BINETFLOW,
        duration_s=duration,
        packets=packets,
        bytes=nbytes,
        truncated=truncated,
        end_reason=reason,
        group=group,
    )
