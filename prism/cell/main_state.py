"""``prism cell-state PATH``: print a running cell's counters and flow table (or its raw JSON)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import List

from prism.cell.state_server import DEFAULT_READ_TIMEOUT_S, read_state

KEY_WIDTH = 48


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``prism cell-state``."""
    parser.add_argument("path", metavar="PATH", help="the cell's state socket (--state-socket)")
    parser.add_argument("--json", action="store_true", help="print the raw JSON document")
    parser.add_argument("--timeout", type=float, default=DEFAULT_READ_TIMEOUT_S, metavar="SECONDS",
                        help=f"give up after this long (default {DEFAULT_READ_TIMEOUT_S:g})")  # fmt: skip


def _reasons(counts: dict) -> str:
    return ", ".join(f"{reason} {count}" for reason, count in sorted(counts.items()) if count)


def format_state(document: dict) -> str:
    """A cell's state document as readable text.

    Args:
        document: As served by the cell.

    Returns:
        A summary line per counter group, then one line per flow.
    """
    counters = document.get("counters", {})
    flows = document.get("flows", [])
    now = document.get("time", 0.0)
    mode = "strict" if document.get("strict") else "loose"
    lines: List[str] = [
        f"cell {document.get('cell_id', '?')} on {document.get('interface', '?')} ({mode}), "
        f"{len(flows)} flows",
        f"  primary {counters.get('primary_packets', 0)}  mirror {counters.get('mirror_packets', 0)}"
        f"  forwarded {counters.get('forwarded', 0)}  dropped {counters.get('dropped', 0)}"
        f"  ignored {counters.get('ignored', 0)}"
        f"  errors {counters.get('errors', 0) + counters.get('send_errors', 0) + counters.get('recv_errors', 0)}",
    ]
    replication = document.get("replication")
    if replication:
        r = replication.get("counters", {})
        lines.append(
            f"  replication: sent {r.get('records_sent', 0)} records in {r.get('batches_sent', 0)} "
            f"batches ({r.get('replication_bytes_sent', 0)} bytes), acks {r.get('acks', 0)}, "
            f"retries {r.get('retries', 0)}, lost {r.get('lost_batches', 0)}, "
            f"applied {r.get('records_applied', 0)}, seeds {r.get('seeds_completed', 0)}, "
            f"held {r.get('held_flows', 0)}"
        )
    for title, name in (("dropped", "dropped_by_reason"), ("ignored", "ignored_by_reason"),
                        ("errors", "errors_by_reason")):  # fmt: skip
        detail = _reasons(document.get(name, {}))
        if detail:
            lines.append(f"  {title}: {detail}")
    if flows:
        lines.append("")
        lines.append(f"{'FLOW':<{KEY_WIDTH}} {'STATE':<11} {'ROLE':<8} {'VER':>4} {'PRIMARY':>8} "
                     f"{'MIRROR':>7} {'DROPPED':>7} {'BYTES':>10} {'IDLE':>7}")  # fmt: skip
        for flow in sorted(flows, key=lambda f: (f.get("key", ""), f.get("flow_id", 0))):
            verdict = "" if flow.get("verdict", "accept") == "accept" else f" [{flow['verdict']}]"
            idle = max(0.0, now - flow.get("last_seen", now))
            byte_count = flow.get("primary_bytes", 0) + flow.get("mirror_bytes", 0)
            lines.append(
                f"{flow.get('key', '?'):<{KEY_WIDTH}} {flow.get('state', '?') + verdict:<11} "
                f"{flow.get('role', '?'):<8} {flow.get('version', 0):>4} "
                f"{flow.get('primary_packets', 0):>8} {flow.get('mirror_packets', 0):>7} "
                f"{flow.get('dropped_packets', 0):>7} {byte_count:>10} {idle:>6.1f}s"
            )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Print the state of the cell serving ``args.path``."""
    try:
        document = read_state(args.path, args.timeout)
    except (OSError, ValueError) as error:
        print(f"prism cell-state: cannot read a cell's state from {args.path}: {error}",
              file=sys.stderr)  # fmt: skip
        return 1
    if args.json:
        print(json.dumps(document, indent=2, sort_keys=True))
    else:
        print(format_state(document))
    return 0
