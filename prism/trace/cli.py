"""``prism trace``: captures (pcap, pcapng) and Argus binetflow files -> one flow-record Parquet file.

Each input file is read whole into its own flows (flows never span files;
the file name is the records' ``group``). A file that is cut short, damaged,
of an unknown format or of an unsupported link type is reported on stderr
with the reason and skipped; the others are written. ``--salvage`` keeps the
flows read before a file's damage instead (all flagged ``truncated``).
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, List, Optional

from prism.trace.binetflow import BinetflowError, looks_like_binetflow, read_binetflow
from prism.trace.capture import LINKTYPE_ETHERNET, CaptureError, read_packets, sniff_format
from prism.trace.flowmeter import DEFAULT_IDLE_TIMEOUT_S, FlowMeter
from prism.flows.identity import NotAFlow, PacketInfo, parse_frame, parse_ip
from prism.trace.linktypes import IP_PAYLOAD, SUPPORTED_LINKTYPES, ethernet_encapsulated_ip
from prism.telemetry.records import END_CAPTURE, FlowRecord, RecordsError, write_records

#: File name endings picked up when a directory is given.
TRACE_SUFFIXES = (".pcap", ".pcapng", ".cap", ".binetflow")
#: Bytes read to tell the format of a file.
SNIFF_BYTES = 512
#: Packets between progress-bar updates (a per-packet update costs more than parsing).
PROGRESS_EVERY = 2000
#: Most zero bytes added to a packet cut by the snap length (an IP packet's maximum).
MAX_SNAP_PADDING = 65535


@dataclass
class FileResult:
    """What one input file gave: records, or the reason it was skipped, plus notes."""

    path: Path
    records: List[FlowRecord] = field(default_factory=list)
    error: Optional[str] = None
    notes: Counter = field(default_factory=Counter)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``prism trace`` options."""
    parser.add_argument(
        "files", nargs="+", metavar="FILE",
        help="pcap/pcapng captures or Argus .binetflow files; a directory means its "
             f"{', '.join(TRACE_SUFFIXES)} files",
    )  # fmt: skip
    parser.add_argument("-o", "--output", required=True, help="flow-record Parquet file to write")
    parser.add_argument(
        "--idle-timeout", type=float, default=DEFAULT_IDLE_TIMEOUT_S, metavar="SECONDS",
        help=f"gap that ends a flow (default {DEFAULT_IDLE_TIMEOUT_S:g} s)",
    )  # fmt: skip
    parser.add_argument(
        "--salvage", action="store_true",
        help="keep the flows read before a file's damage (flagged truncated) instead of skipping it",
    )  # fmt: skip
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar, no summary")


def run(args: argparse.Namespace) -> int:
    """Trace the files; 0 if a record file was written, 1 if nothing could be read."""
    if args.idle_timeout <= 0:
        print(f"prism trace: --idle-timeout must be positive, got {args.idle_timeout}", file=sys.stderr)
        return 2
    paths = expand_inputs(args.files)
    results = trace_files(paths, args.idle_timeout, args.salvage, progress=not args.quiet)
    records: List[FlowRecord] = []
    for result in results:
        if result.error:
            print(f"prism trace: skipped {result.path}: {result.error}", file=sys.stderr)
        else:
            records.extend(result.records)
    read_ok = [r for r in results if not r.error]
    if not read_ok:
        print("prism trace: no input file could be read; nothing written", file=sys.stderr)
        return 1
    try:
        write_records(records, args.output)
    except (RecordsError, OSError) as exc:
        print(f"prism trace: cannot write {args.output}: {exc}", file=sys.stderr)
        return 1
    if not args.quiet:
        notes = sum((r.notes for r in read_ok), Counter())
        extra = "; ".join(f"{count} {what}" for what, count in notes.most_common())
        print(
            f"prism trace: {len(records)} flows from {len(read_ok)} file(s), "
            f"{len(results) - len(read_ok)} skipped -> {args.output}"
            + (f" ({extra})" if extra else ""),
            file=sys.stderr,
        )
    return 0


def expand_inputs(names: Iterable[str]) -> List[Path]:
    """Files as given, and the trace files inside given directories (sorted, recursive)."""
    paths: List[Path] = []
    for name in names:
        path = Path(name)
        if path.is_dir():
            paths.extend(
                sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(TRACE_SUFFIXES))
            )
        else:
            paths.append(path)
    return paths


def trace_files(
    paths: List[Path], idle_timeout_s: float, salvage: bool = False, progress: bool = True
) -> List[FileResult]:
    """Read every file into flow records; never raises for a bad file.

    Args:
        paths: input files.
        idle_timeout_s: gap that ends a flow.
        salvage: keep flows read before a file's damage.
        progress: show a progress bar on stderr (only on a terminal).

    Returns:
        One FileResult per path, in order.
    """
    from tqdm import tqdm

    total = sum(_size(path) for path in paths)
    with tqdm(
        total=total, unit="B", unit_scale=True, desc="prism trace", file=sys.stderr,
        disable=None if progress else True, leave=False,
    ) as bar:  # fmt: skip
        results = []
        for path in paths:
            done_before = bar.n
            results.append(trace_file(path, idle_timeout_s, salvage, bar.update))
            bar.update(done_before + _size(path) - bar.n)
    return results


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def trace_file(
    path: Path,
    idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S,
    salvage: bool = False,
    advance: Callable[[int], object] = lambda n: None,
) -> FileResult:
    """Read one file (capture or binetflow) into flow records; never raises for a bad file.

    Args:
        path: the file.
        idle_timeout_s: gap that ends a flow.
        salvage: keep flows read before damage (flagged truncated) instead of skipping.
        advance: called with byte counts as the file is read (progress).

    Returns:
        The file's records, or the reason it was skipped in ``error``.
    """
    result = FileResult(path)
    try:
        with open(path, "rb") as handle:
            head = handle.read(SNIFF_BYTES)
            handle.seek(0)
            if sniff_format(head):
                _trace_capture(handle, result, idle_timeout_s, salvage, advance)
            elif looks_like_binetflow(head):
                text = io.TextIOWrapper(handle, encoding="utf-8", errors="replace", newline="")
                flows = read_binetflow(text, path.name, idle_timeout_s)
                result.records = flows.records
                result.notes.update({f"rows skipped ({k})": v for k, v in flows.skipped.items()})
            elif not head:
                result.error = "empty file"
            else:
                result.error = "unknown format (not pcap, pcapng or Argus binetflow)"
    except OSError as exc:
        result.error = f"cannot read: {exc.strerror or exc}"
    except BinetflowError as exc:
        result.error = str(exc)
    if result.error:
        result.records = []
    elif not result.records and not result.error:
        result.error = _why_empty(result.notes)
    return result


def _trace_capture(
    handle: BinaryIO, result: FileResult, idle_timeout_s: float, salvage: bool,
    advance: Callable[[int], object],
) -> None:  # fmt: skip
    meter = FlowMeter(result.path.name, idle_timeout_s)
    last_offset = 0
    count = 0
    try:
        for packet in read_packets(handle):
            count += 1
            if count % PROGRESS_EVERY == 0:
                advance(packet.offset - last_offset)
                last_offset = packet.offset
            info = decode(packet.linktype, packet.data, packet.wire_len)
            if isinstance(info, PacketInfo):
                meter.add(packet.ts, info)
            else:
                result.notes[_note(packet.linktype, info)] += 1
    except CaptureError as exc:
        if not salvage:
            result.error = exc.reason + f" after {count} packet(s), at byte {exc.offset}"
            return
        result.notes[f"damaged capture salvaged ({exc.reason})"] += 1
        result.records = [
            dataclasses.replace(r, truncated=True, end_reason=END_CAPTURE)
            if r.end_reason not in ("fin", "rst") else dataclasses.replace(r, truncated=True)
            for r in meter.finish()
        ]  # fmt: skip
        return
    result.records = meter.finish()


def decode(linktype: int, data: bytes, wire_len: int) -> PacketInfo | NotAFlow:
    """One captured frame of a link type -> PacketInfo, or NotAFlow with the reason.

    A packet captured with a short snap length is padded with zeros to its
    wire length, so that its headers parse and its IP length counts in full.
    """
    if wire_len > len(data):
        data = data + bytes(min(wire_len - len(data), MAX_SNAP_PADDING))
    if linktype == LINKTYPE_ETHERNET:
        info = parse_frame(data)
        if info:
            return info
        inner = ethernet_encapsulated_ip(data)  # PPPoE or MPLS: only frames parse_frame refused pay for it
        return info if inner is None else parse_ip(inner, frame_len=len(data))
    payload_of = IP_PAYLOAD.get(linktype)
    if payload_of is None:
        return NotAFlow(f"unsupported link type {linktype}")
    payload = payload_of(data)
    if payload is None:
        return NotAFlow("not IP")
    return parse_ip(payload, frame_len=len(data))


def _note(linktype: int, info: NotAFlow) -> str:
    if linktype not in SUPPORTED_LINKTYPES:
        return f"packets of unsupported link type {linktype}"
    return "non-flow packets (ARP, non-IP, malformed)"


def _why_empty(notes: Counter) -> str:
    unsupported = [what for what in notes if what.startswith("packets of unsupported link type")]
    if unsupported:
        return unsupported[0].replace("packets of ", "")
    if notes:
        return "no IP flows in it (" + "; ".join(f"{n} {w}" for w, n in notes.items()) + ")"
    return "no packets or flow records in it"
