"""``prism simulate``: replay flow records or a generated population through the policies and failures."""

from __future__ import annotations

import argparse
import json
import math
import resource
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import pandas as pd

from models.artifact import ModelError
from models.controller_row import SHIPPED_CONFIG
from prism.atomic import atomic_write_bytes
from prism.telemetry.records import RecordsError, read_records
from prism.telemetry.training_groups import trained_groups
from prism.sim.distributions import DEFAULT_AGH_DIR, DistributionError, load_distributions
from prism.sim.policies import ALL_POLICIES, CONTROLLER, DEFAULT_BUDGET, MODEL_POLICIES, PolicyError
from prism.sim.population import ARRIVAL_MODES, ARRIVALS_REAL, PopulationError, generate_population
from prism.sim.run import cell_ids, format_balance, format_table, replay_frame, run_policies
from prism.sim.schedule import ScheduleError, given_failures, parse_fail_at, random_failures
from prism.sim.flows import SimulationError
from prism.sim.engine import DEFAULT_SAMPLES, DEFAULT_SEED_TIME_S, SimSettings

#: The first-packet SPE of the predictive policies (models/default is the aging model).
DEFAULT_MODEL = Path(__file__).resolve().parent / "first_packet"
DEFAULT_FLOWS = 100_000
DEFAULT_CELLS = 64
#: Failures per hour over all cells: a stress (each of 64 cells fails every ~11 min)
#: that gives a few hundred at-risk flows per million; shares are per at-risk flow.
DEFAULT_FAILURE_RATE = 360.0
DEFAULT_REPAIR_S = 30.0
TIMELINE_POOLED = "pooled"
TIMELINE_RECORDED = "recorded"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``prism simulate`` options."""
    parser.add_argument("records", nargs="*", metavar="FLOWS",
                        help="flow-record Parquet files to replay (default: generate --flows flows)")  # fmt: skip
    parser.add_argument("--flows", type=int, default=DEFAULT_FLOWS, metavar="N",
                        help=f"flows to generate from the AGH 2015 distributions (default {DEFAULT_FLOWS:,})")  # fmt: skip
    parser.add_argument("--cells", type=int, default=DEFAULT_CELLS, metavar="N", help="cells (default 64)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of population, failures and random policy")
    parser.add_argument("--arrivals", choices=ARRIVAL_MODES, default=ARRIVALS_REAL,
                        help="generated arrivals: the hour's real rate from 19:00, or spread over the hour")  # fmt: skip
    parser.add_argument("--distributions", default=str(DEFAULT_AGH_DIR), metavar="DIR",
                        help="AGH 2015 flow-distribution directory")  # fmt: skip
    parser.add_argument("--failure-rate", type=float, default=DEFAULT_FAILURE_RATE, metavar="PER_HOUR",
                        help=f"random cell failures per hour, all cells together (default {DEFAULT_FAILURE_RATE:g})")  # fmt: skip
    parser.add_argument("--repair-time", type=float, default=DEFAULT_REPAIR_S, metavar="S",
                        help=f"seconds until a failed cell returns (default {DEFAULT_REPAIR_S:g})")  # fmt: skip
    parser.add_argument("--failure-window", type=float, metavar="S",
                        help="random failures only in the first S seconds after the first flow (default: "
                             "until the last flow starts)")  # fmt: skip
    parser.add_argument("--fail-at", action="append", default=[], metavar="S[:CELL]",
                        help="a failure S seconds after the first flow (of CELL, else a random cell); "
                             "repeatable; replaces the random failures")  # fmt: skip
    parser.add_argument("--policies", nargs="+", default=list(ALL_POLICIES), metavar="NAME",
                        help="policies to compare: " + ", ".join(repr(p) for p in ALL_POLICIES))  # fmt: skip
    parser.add_argument("--model", default=str(DEFAULT_MODEL), metavar="DIR",
                        help="first-packet SPE model directory of the predictive policies (default models/first_packet)")  # fmt: skip
    parser.add_argument("--config", default=str(SHIPPED_CONFIG), metavar="FILE",
                        help="configuration whose policy gives the controller row, replayed flow by flow "
                             "(default: the shipped examples/prism.yaml)")  # fmt: skip
    parser.add_argument("--budget-mode", choices=("full", "state"), default="full",
                        help="mode of the budgeted birth policies: random, ranked, oracle (default full)")  # fmt: skip
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET, metavar="SHARE",
                        help="share of packets the predictive and random policies may mirror (default 0.25)")  # fmt: skip
    parser.add_argument("--seed-time", type=float, default=DEFAULT_SEED_TIME_S, metavar="S",
                        help="seconds until a new mirror holds the state (default 0.5)")  # fmt: skip
    parser.add_argument("--timeline", choices=(TIMELINE_POOLED, TIMELINE_RECORDED), default=TIMELINE_POOLED,
                        help="replayed records: each capture starts at 0 (pooled) or at its recorded time")  # fmt: skip
    parser.add_argument("--include-training-groups", action="store_true",
                        help="replay flows of the captures the model was trained on too (dropped by default)")  # fmt: skip
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars on stderr")


def run(args: argparse.Namespace) -> int:
    """Simulate and print the tables; 0 on success, 1 on bad input."""
    started = time.perf_counter()
    rss_start = _peak_rss_mb()
    timings: Dict[str, float] = {}
    try:
        predictor = _load_model(args)
        frame, source = _flows(args, predictor, timings)
        cells = cell_ids(args.cells)
        schedule = _schedule(args, frame, cells)
        settings = SimSettings(seed_time_s=args.seed_time, samples=DEFAULT_SAMPLES)
        clock = time.perf_counter()
        stages = _Stages(args.no_progress)
        try:
            reports = run_policies(frame, cells, schedule, args.policies, predictor, args.budget, args.seed,
                                   settings, stages, _controller(args), args.budget_mode)  # fmt: skip
        finally:
            stages.close()
        timings["simulate"] = time.perf_counter() - clock
        timings.update({f"stage {name}": seconds for name, seconds in stages.seconds.items()})
    except (RecordsError, DistributionError, PopulationError, ScheduleError, PolicyError,
            SimulationError, ValueError) as exc:  # fmt: skip
        print(f"prism simulate: {exc}", file=sys.stderr)
        return 1
    elapsed = time.perf_counter() - started
    peak = _peak_rss_mb()
    span = float(frame["ts_start"].iloc[-1] - frame["ts_start"].iloc[0])
    print(f"{len(frame):,} flows ({source}) over {span:,.0f} s, {len(cells)} cells, "
          f"{len(schedule.failures)} failures (repair after {args.repair_time:g} s), budget {args.budget:.0%}")  # fmt: skip
    print(format_table(reports))
    print()
    print(format_balance(reports))
    print(f"\ntime {elapsed:.1f} s, peak memory {peak:,.0f} MB (max RSS; {rss_start:,.0f} MB after start-up)")
    if args.json:
        report = {
            "flows": int(len(frame)), "source": source, "cells": len(cells), "seed": args.seed,
            "span_s": span, "budget": args.budget, "repair_time_s": args.repair_time,
            "failures": [dict(at=f.at, cell_id=f.cell_id, repair_at=f.repair_at if math.isfinite(f.repair_at)
                              else None) for f in schedule.failures],  # fmt: skip
            "model": str(args.model) if predictor is not None else None,
            "config": str(args.config) if CONTROLLER in args.policies else None,
            "model_digest": predictor.manifest.get("model_digest") if predictor is not None else None,
            "time_s": elapsed, "timings_s": timings, "peak_rss_mb": peak, "startup_rss_mb": rss_start,
            "policies": [r.as_dict() for r in reports],
        }  # fmt: skip
        atomic_write_bytes(args.json, (json.dumps(report, indent=2) + "\n").encode())
    return 0


def _controller(args):
    """The controller row's replay (``models.controller_row``), if that row is asked for."""
    if CONTROLLER not in args.policies:
        return None
    from models.controller_row import controller_replay
    from prism.config.load import ConfigError

    try:
        return controller_replay(args.config)
    except (ConfigError, ModelError) as exc:
        raise PolicyError(f"the controller row: {exc}") from None


def _load_model(args):
    if not any(name in MODEL_POLICIES for name in args.policies):
        return None
    from models.predictor import Predictor

    try:
        return Predictor.load(args.model)
    except ModelError as exc:
        raise PolicyError(str(exc)) from None


def _flows(args, predictor, timings) -> tuple:
    clock = time.perf_counter()
    if args.records:
        frame = read_records(args.records)
        source = ", ".join(args.records)
        trained: set = set()
        if predictor is not None and not args.include_training_groups:
            trained = trained_groups(predictor.manifest, frame)
            source += " (captures the model was not trained on)"
        frame = replay_frame(frame, trained, pooled=args.timeline == TIMELINE_POOLED)
        if frame.empty:
            raise RecordsError("no flows to replay (see --include-training-groups)")
    else:
        dists = load_distributions(args.distributions)
        with _bar(args.no_progress, "population", args.flows) as bar:
            frame = generate_population(args.flows, dists, args.seed, args.arrivals, bar.update)
        source = f"generated from {Path(dists.source).name}, {args.arrivals} arrivals"
    timings["flows"] = time.perf_counter() - clock
    return frame, source


def _schedule(args, frame: pd.DataFrame, cells: List[str]):
    first, last = float(frame["ts_start"].iloc[0]), float(frame["ts_start"].iloc[-1])
    rng = np.random.default_rng([args.seed, 1])
    if args.fail_at:
        times = [parse_fail_at(text) for text in args.fail_at]
        return given_failures(cells, [(first + at, cell) for at, cell in times], args.repair_time, rng)
    if args.failure_window is not None:
        last = min(last, first + args.failure_window)
    return random_failures(cells, first, last, args.failure_rate, args.repair_time, rng)


def _bar(disabled: bool, name: str, total: int):
    from tqdm import tqdm

    return tqdm(total=total, desc=name, unit="", file=sys.stderr, disable=disabled, leave=False,
                dynamic_ncols=True, unit_scale=True)  # fmt: skip


class _Stages:
    """Progress bars for the run's stages (``prism.sim.run.Stage``), each closing the previous one, and their times."""

    def __init__(self, disabled: bool) -> None:
        self.disabled = disabled
        self.bar = None
        self.name = ""
        self.started = 0.0
        self.seconds: Dict[str, float] = {}

    def __call__(self, name: str, total: int):
        self.close()
        self.bar = _bar(self.disabled, name, total)
        self.name, self.started = name, time.perf_counter()
        return self.bar.update

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.seconds[self.name] = time.perf_counter() - self.started
            self.bar = None


def _peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MB (Linux reports kB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main(argv: Optional[List[str]] = None) -> int:  # pragma: no cover - python -m models.simulate_cli
    parser = argparse.ArgumentParser(prog="prism simulate")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
