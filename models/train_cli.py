"""``prism train FLOWS... -o DIR``: fit the SPE on flow records and write a model directory."""

from __future__ import annotations

import argparse
import json
import sys

from prism.flowmeter import DEFAULT_IDLE_TIMEOUT_S
from prism.records import RecordsError, read_records

from models.artifact import ModelError, save_model
from models.evaluation import DEFAULT_BUDGETS, format_table
from models.train import DEFAULT_HORIZON_S, DEFAULT_TEST_SHARE, TrainConfig, train


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``prism train`` options."""
    parser.add_argument("flows", nargs="+", metavar="FLOWS", help="flow-record Parquet files")
    parser.add_argument("-o", "--output", required=True, metavar="DIR", help="model directory to write")
    parser.add_argument("--horizon", type=float, default=DEFAULT_HORIZON_S, metavar="SECONDS",
                        help=f"takeover horizon H (default {DEFAULT_HORIZON_S:g} s)")  # fmt: skip
    parser.add_argument("--report-delay", type=float, default=DEFAULT_IDLE_TIMEOUT_S, metavar="SECONDS",
                        help="delay before a flow's outcome reaches the history features: the "
                             f"switch's idle timeout (default {DEFAULT_IDLE_TIMEOUT_S:g} s)")  # fmt: skip
    parser.add_argument("--test-share", type=float, default=DEFAULT_TEST_SHARE,
                        help=f"share of capture files held out (default {DEFAULT_TEST_SHARE:g})")  # fmt: skip
    parser.add_argument("--budgets", type=float, nargs="+", default=list(DEFAULT_BUDGETS),
                        metavar="SHARE", help="shares of packets mirrored to calibrate thresholds for")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    """Train, save, print the held-out metrics and policy table; 0 on success."""
    problems = []
    if args.horizon <= 0:
        problems.append("--horizon must be positive")
    if not 0 < args.test_share < 1:
        problems.append("--test-share must be between 0 and 1")
    if any(not 0 < b <= 1 for b in args.budgets):
        problems.append("--budgets must be shares in (0, 1]")
    if problems:
        print("prism train: " + "; ".join(problems), file=sys.stderr)
        return 2
    try:
        frame = read_records(args.flows)
        config = TrainConfig(
            horizon_s=args.horizon, report_delay_s=args.report_delay,
            test_share=args.test_share, seed=args.seed, budgets=tuple(args.budgets),
        )  # fmt: skip
        result = train(frame, config)
        save_model(args.output, result.estimators, result.manifest())
    except (RecordsError, ModelError, ValueError, OSError) as exc:
        print(f"prism train: {exc}", file=sys.stderr)
        return 1
    print(f"model written to {args.output} (horizon {config.horizon_s:g} s, "
          f"{int((~result.test_mask).sum())} training flows, {int(result.test_mask.sum())} held out)")  # fmt: skip
    print("held-out metrics:")
    print(json.dumps(result.metrics, indent=2))
    print(format_table(result.policies))
    return 0
