"""How long a cell's expiry scan holds its packet loop: one whole sweep against sliced sweeps.

A cell's ``ConnTracker`` holds N UDP flows, half of them idle past their
timeout. The baseline is one whole sweep, ``expire(now)``, as a cell ran it
before sweeps were sliced: the packet loop waited for all of it. The sliced
run is what ``Cell.tick`` does now, ``expire(now, EXPIRE_SLICE)`` once per
tick until the sweep ends. Both run in this process on identical tables;
the figure is the longest single call of the sliced run over the whole
sweep (lower is better: the loop's longest pause), with the number of ticks
the sliced sweep spans.

Usage: ``.venv/bin/python benchmarks/cell_expiry.py [--flows N] [--repeat R]``
(default 10^5 flows; the figure in docs/results.md: --flows 1000000).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # testkit (test tools) is not installed

from prism.cell.cell import EXPIRE_SLICE  # noqa: E402
from prism.cell.conntrack import ConnTracker, Timeouts, TrackerConfig  # noqa: E402
from prism.flows.identity import parse_frame  # noqa: E402
from testkit.packets import build_udp_frame  # noqa: E402

DEFAULT_FLOWS = 100_000
UDP_TIMEOUT_S = 30.0
SWEEP_AT_S = 40.0  #: when the sweep runs: the flows first seen at 0 are idle past their timeout


def _client(index: int) -> str:
    return f"10.{index >> 16 & 0xFF}.{index >> 8 & 0xFF}.{index & 0xFF}"


def filled_tracker(flows: int) -> ConnTracker:
    """``flows`` UDP flows: even ones last seen at 0 s (idle at the sweep), odd ones at 20 s."""
    tracker = ConnTracker(TrackerConfig(max_flows=flows, max_tombstones=flows,
                                        timeouts=Timeouts(udp_new=UDP_TIMEOUT_S)))  # fmt: skip
    for index in range(flows):
        frame = build_udp_frame(_client(index), "172.16.0.1", 10000 + index % 50000, 53)
        tracker.process(parse_frame(frame), False, 0.0 if index % 2 == 0 else 20.0)
    return tracker


def whole_sweep(tracker: ConnTracker) -> dict:
    """The baseline: one call checks every flow."""
    started = time.perf_counter()
    expired = tracker.expire(SWEEP_AT_S)
    return {"longest_call_ms": (time.perf_counter() - started) * 1e3, "calls": 1, "expired": len(expired)}


def sliced_sweep(tracker: ConnTracker) -> dict:
    """What ``Cell.tick`` does: EXPIRE_SLICE flows per call until the sweep ends."""
    longest, calls, expired = 0.0, 0, 0
    while True:
        started = time.perf_counter()
        expired += len(tracker.expire(SWEEP_AT_S, EXPIRE_SLICE))
        longest = max(longest, time.perf_counter() - started)
        calls += 1
        if not tracker.sweeping:
            break
    return {"longest_call_ms": longest * 1e3, "calls": calls, "expired": expired}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flows", type=int, default=DEFAULT_FLOWS,
                        help=f"flows in the table (default {DEFAULT_FLOWS})")  # fmt: skip
    parser.add_argument("--repeat", type=int, default=3, help="runs of each, alternated (default 3)")
    args = parser.parse_args(argv)
    if args.flows < 2 or args.repeat < 1:
        parser.error("--flows must be at least 2 and --repeat at least 1")
    runs = {"whole": [], "sliced": []}
    for _ in range(args.repeat):  # alternated, on fresh identical tables: noise hits both alike
        runs["whole"].append(whole_sweep(filled_tracker(args.flows)))
        runs["sliced"].append(sliced_sweep(filled_tracker(args.flows)))
    for kind, results in runs.items():
        if any(result["expired"] != args.flows // 2 + args.flows % 2 for result in results):
            raise SystemExit(f"{kind} sweep expired the wrong flows: {results}")
    whole = statistics.median(result["longest_call_ms"] for result in runs["whole"])
    sliced = statistics.median(result["longest_call_ms"] for result in runs["sliced"])
    report = {"flows": args.flows, "slice": EXPIRE_SLICE, "whole_sweep_ms": round(whole, 2),
              "sliced_longest_call_ms": round(sliced, 2), "sliced_calls": runs["sliced"][0]["calls"],
              "ratio": round(sliced / whole, 3)}  # fmt: skip
    print(json.dumps(report))
    print(f"longest pause of the packet loop: {sliced:.1f} ms sliced vs {whole:.1f} ms whole sweep "
          f"({report['ratio']:.3f}x) over {report['sliced_calls']} ticks, {args.flows} flows")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
