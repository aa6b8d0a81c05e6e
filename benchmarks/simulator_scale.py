"""How the simulator's cost grows with flows: time and peak memory at 10^4, 10^5 and 10^6 flows on 64 cells.

Each size runs ``prism simulate`` (generated AGH 2015 population, real arrival
rate, random failures, every policy with the shipped model) in a process of
its own, so that each peak resident memory is that size's alone. Printed per
size: wall time, the simulator's own stages, peak memory (max RSS, and above
the process's start-up), and the growth ratio time(10x) / time(x) measured in
this same run: 10 means linear, more means worse than linear.

    .venv/bin/python benchmarks/simulator_scale.py [--sizes 10000 100000 1000000] [--cells 64]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Sequence

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SIZES = (10_000, 100_000, 1_000_000)
DEFAULT_CELLS = 64
STAGES = ("flows", "stage features", "stage predict", "stage placement")


def run_size(flows: int, cells: int, seed: int, extra: Sequence[str]) -> Dict[str, object]:
    """One ``prism simulate`` run in a fresh process; its JSON report plus the wall time seen from here."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "simulate.json"
        command = [sys.executable, "-m", "prism.cli", "simulate", "--flows", str(flows), "--cells", str(cells),
                   "--seed", str(seed), "--json", str(out), "--no-progress", *extra]  # fmt: skip
        started = time.perf_counter()
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - started
        if done.returncode != 0:
            raise SystemExit(f"prism simulate --flows {flows} failed:\n{done.stderr}")
        report = json.loads(out.read_text())
    report["wall_s"] = wall
    return report


def main(argv: Sequence[str] = None) -> int:
    """Run every size and print the cost table and the growth ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES), metavar="N")
    parser.add_argument("--cells", type=int, default=DEFAULT_CELLS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="FILE", help="also write the measurements as JSON")
    args, extra = parser.parse_known_args(argv)
    print(f"prism simulate, generated flows, {args.cells} cells, every policy, one process per size")
    reports: List[Dict[str, object]] = []
    for flows in args.sizes:
        report = run_size(flows, args.cells, args.seed, extra)
        reports.append(report)
        print(f"  {flows:>9,} flows done in {report['wall_s']:.1f} s", flush=True)
    print()
    print("| flows | failures | wall time s | simulate s | population s | features+prediction s "
          "| placement s | policies s | peak memory MB | above start-up MB | wall ratio | simulate ratio |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    previous = None
    for report in reports:
        timings = report["timings_s"]
        policies = sum(v for k, v in timings.items() if k.startswith("stage ") and k not in STAGES)
        ratio = "| | |" if previous is None else (
            f"| {report['wall_s'] / previous['wall_s']:.1f} | {timings['simulate'] / previous['timings_s']['simulate']:.1f} |"
        )
        print(f"| {report['flows']:,} | {len(report['failures'])} | {report['wall_s']:.1f} | {timings['simulate']:.1f} "
              f"| {timings['flows']:.1f} | {timings.get('stage features', 0.0) + timings.get('stage predict', 0.0):.1f} | {timings.get('stage placement', 0.0):.1f} "
              f"| {policies:.1f} | {report['peak_rss_mb']:,.0f} | {report['peak_rss_mb'] - report['startup_rss_mb']:,.0f} "
              f"{ratio}")  # fmt: skip
        previous = report
    if len(reports) > 1:
        first, last = reports[0], reports[-1]
        decades = max(1e-9, _decades(first, last))
        wall = (last["wall_s"] / first["wall_s"]) ** (1 / decades)
        own = (last["timings_s"]["simulate"] / first["timings_s"]["simulate"]) ** (1 / decades)
        memory = (last["peak_rss_mb"] - last["startup_rss_mb"]) / max(1.0, first["peak_rss_mb"] - first["startup_rss_mb"])
        print(f"\nper 10x flows (10 = linear): wall time grows {wall:.1f}x (start-up and model loading are "
              f"fixed), the simulation itself {own:.1f}x; memory above start-up grows {memory:.1f}x "
              f"from {first['flows']:,} to {last['flows']:,} flows")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(reports, indent=2) + "\n")
    return 0


def _decades(first: Dict[str, object], last: Dict[str, object]) -> float:
    import math

    return math.log10(last["flows"] / first["flows"])


if __name__ == "__main__":
    sys.exit(main())
