"""``prism train FLOWS... -o DIR``: fit a model on flow records and write a model directory.

``--kind aging`` (default): the aging policy's model (``models.aging``: P(a live flow
lives the horizon more) and its remaining packets, from its age and counters at each
milestone). ``--kind first_packet``: the first-packet SPE (``models.train``).
"""

from __future__ import annotations

import argparse
import json
import sys

from prism.trace.flowmeter import DEFAULT_IDLE_TIMEOUT_S
from prism.telemetry.records import RecordsError, read_records

from prism.policy.aging_features import AGING_FEATURE_NAMES
from prism.policy.aging import ALLOWED_MILESTONES_S, DEFAULT_MILESTONES_S

from models.aging import AgingTrainConfig, train_aging
from models.artifact import KIND_AGING, KIND_FIRST_PACKET, ModelError, save_model
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
    parser.add_argument("--kind", choices=(KIND_AGING, KIND_FIRST_PACKET), default=KIND_AGING,
                        help="aging (default): scores live flows at age milestones (prediction.policy aging); "
                             "first_packet: scores a flow at its first packet")  # fmt: skip
    parser.add_argument("--milestones", type=float, nargs="+", default=list(DEFAULT_MILESTONES_S),
                        metavar="SECONDS", help="aging: the policy's milestones (default "
                        f"{' '.join(f'{m:g}' for m in DEFAULT_MILESTONES_S)})")  # fmt: skip
    parser.add_argument("--quiet-rows", action="store_true",
                        help="aging: train on flows quiet since their previous milestone too "
                             "(the policy then asks the model about them)")  # fmt: skip
    parser.add_argument("--drop-features", nargs="+", default=[], choices=AGING_FEATURE_NAMES, metavar="NAME",
                        help="aging: features the trees may not split on (ablations)")  # fmt: skip
    parser.add_argument("--fit-all", action="store_true",
                        help="aging: fit the shipped model on every flow (held-out metrics from a separate fit)")


def run(args: argparse.Namespace) -> int:
    """Train, save, print the held-out metrics and policy table; 0 on success."""
    problems = []
    if args.horizon <= 0:
        problems.append("--horizon must be positive")
    if not 0 < args.test_share < 1:
        problems.append("--test-share must be between 0 and 1")
    if any(not 0 < b <= 1 for b in args.budgets):
        problems.append("--budgets must be shares in (0, 1]")
    if args.kind == KIND_AGING and (any(m not in ALLOWED_MILESTONES_S for m in args.milestones)
                                    or args.milestones != sorted(set(args.milestones))):  # fmt: skip
        problems.append(f"--milestones must be ascending and among {' '.join(f'{m:g}' for m in ALLOWED_MILESTONES_S)}")
    if problems:
        print("prism train: " + "; ".join(problems), file=sys.stderr)
        return 2
    if args.kind == KIND_AGING:
        return _run_aging(args)
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


def _run_aging(args: argparse.Namespace) -> int:
    try:
        frame = read_records(args.flows)
        config = AgingTrainConfig(
            milestones_s=tuple(args.milestones), horizon_s=args.horizon, idle_timeout_s=args.report_delay,
            quiet_rows=args.quiet_rows, drop_features=tuple(args.drop_features), test_share=args.test_share,
            seed=args.seed,
        )  # fmt: skip
        result = train_aging(frame, config, hold_out=not args.fit_all)
        save_model(args.output, result.estimators, result.manifest(), kind=KIND_AGING)
    except (RecordsError, ModelError, ValueError, OSError) as exc:
        print(f"prism train: {exc}", file=sys.stderr)
        return 1
    fitted = "every flow" if args.fit_all else f"{int((~result.test).sum())} rows of the training captures"
    print(f"aging model written to {args.output} (horizon {config.horizon_s:g} s, milestones "
          f"{' '.join(f'{m:g}' for m in config.milestones_s)}; fitted on {fitted})")  # fmt: skip
    print("held-out metrics (captures not fitted on):")
    print(json.dumps(result.metrics, indent=2))
    return 0
