"""How long saving the flow placements holds the controller's event loop, against the old way, in one run.

A switch's ``MirroringDirector`` holds N live flows (new UDP flows through
``on_packet_in``, rf 1 over 3 cells). The baseline is the save as it was:
every live flow read entry by entry (``[flow_id, list(cells), now]``), then
JSON encoding and the atomic write, all on the event loop. Now the loop only
reads (``MirroringDirector.placements``, by profile) and a native thread
encodes and writes. Printed: the loop's time per save, both ways, and their
ratio (median of ``--repeat``), and how often the controller then saves
(``PLACEMENT_SAVE_SHARE``).

Usage: ``.venv/bin/python benchmarks/placement_save.py [--flows N] [--repeat R]`` (default 10^5).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # testkit (test tools) is not installed

from benchmarks.memory_bounds import new_director, offer_new_flow  # noqa: E402
from prism.director.core import MirroringDirector  # noqa: E402
from prism.placement.store import save_placements  # noqa: E402

DEFAULT_FLOWS = 100_000
PLACEMENT_SAVE_S, PLACEMENT_SAVE_SHARE = 5.0, 0.02  # as in ryu_apps/mirroring_director.py (no Ryu import here)


def director_with_flows(flows: int) -> MirroringDirector:
    """The memory benchmark's director, with ``flows`` live UDP flows."""
    director = new_director(flows)
    for index in range(flows):
        offer_new_flow(director, index)
    return director


def old_save(director: MirroringDirector, path: str, now: float) -> float:
    """The loop's time per save before: read entry by entry, encode and write, all on the loop."""
    started = time.perf_counter()
    placements = [[flow_id, list(cells), at] for flow_id, cells, at in director.memory.entries()]
    placements += [[entry.flow_id, list(entry.profile.cells), now] for entry in director.flows]
    save_placements(path, {1: placements}, now)
    return time.perf_counter() - started


def new_save(director: MirroringDirector, path: str, now: float) -> float:
    """The loop's time per save now: the read only (the native thread's encoding and write are not the loop's)."""
    started = time.perf_counter()
    placements = director.placements(now)
    held = time.perf_counter() - started
    save_placements(path, {1: placements}, now)  # what the native thread does, to check the file
    return held


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flows", type=int, default=DEFAULT_FLOWS, help=f"live flows (default {DEFAULT_FLOWS})")
    parser.add_argument("--repeat", type=int, default=5, help="saves each way, alternated (default 5)")
    args = parser.parse_args(argv)
    if args.flows < 1 or args.repeat < 1:
        parser.error("--flows and --repeat must be at least 1")
    director = director_with_flows(args.flows)
    old, new = [], []
    with tempfile.TemporaryDirectory() as work:
        path = os.path.join(work, "placements.json")
        for _ in range(args.repeat):
            old.append(old_save(director, path, 2.0))
            new.append(new_save(director, path, 2.0))
            saved = json.loads(Path(path).read_text())["switches"]["1"]
            if len(saved) != args.flows:
                raise SystemExit(f"the file holds {len(saved)} placements, not {args.flows}")
    old_ms, new_ms = statistics.median(old) * 1e3, statistics.median(new) * 1e3
    interval = max(PLACEMENT_SAVE_S, new_ms / 1e3 / PLACEMENT_SAVE_SHARE)
    report = {"flows": args.flows, "old_loop_ms": round(old_ms, 1), "new_loop_ms": round(new_ms, 1),
              "ratio": round(new_ms / old_ms, 3), "save_interval_s": round(interval, 1)}  # fmt: skip
    print(json.dumps(report))
    print(f"event loop held per save: {new_ms:.1f} ms now vs {old_ms:.1f} ms before ({report['ratio']:.3f}x), "
          f"{args.flows} flows; saved every {interval:.1f} s")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
