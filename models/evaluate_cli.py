"""``prism evaluate FLOWS --model DIR``: the policy table (and model metrics) on any flow records."""

from __future__ import annotations

import argparse
import json
import sys
from typing import List

import numpy as np
from threadpoolctl import threadpool_limits

from prism.atomic import atomic_write_bytes
from prism.records import RecordsError, read_records

from models.artifact import ModelError
from models.estimator import BASELINE_DURATION, DURATION
from models.evaluation import DEFAULT_BUDGETS, at_risk_summary, format_table, policy_table
from models.predictor import Predictor
from models.train import BASELINE, PREDICTIVE, TrainConfig, build_dataset, heldout_metrics


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``prism evaluate`` options."""
    parser.add_argument("flows", nargs="+", metavar="FLOWS", help="flow-record Parquet files")
    parser.add_argument("--model", required=True, metavar="DIR", help="model directory")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--budgets", type=float, nargs="+", default=list(DEFAULT_BUDGETS),
                        metavar="SHARE", help="shares of packets mirrored to compare at")  # fmt: skip
    parser.add_argument("--include-training-groups", action="store_true",
                        help="keep flows of capture files the model was trained on (dropped by default)")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    """Evaluate; prints a Markdown table; 0 on success."""
    try:
        predictor = Predictor.load(args.model)
        frame = read_records(args.flows)
    except (ModelError, RecordsError) as exc:
        print(f"prism evaluate: {exc}", file=sys.stderr)
        return 1
    manifest = predictor.manifest
    excluded = 0
    if not args.include_training_groups:
        trained_on = set(manifest.get("training_data", {}).get("train_groups", []))
        keep = ~frame["group"].isin(trained_on).to_numpy()
        excluded = int((~keep).sum())
        frame = frame[keep].reset_index(drop=True)
    if frame.empty:
        print("prism evaluate: no flows left to evaluate (all belong to the model's training "
              "captures; see --include-training-groups)", file=sys.stderr)  # fmt: skip
        return 1
    config = TrainConfig(horizon_s=predictor.horizon_s,
                         report_delay_s=float(manifest.get("report_delay_s", 0.0)))  # fmt: skip
    data = build_dataset(frame, config)
    estimators = predictor.estimators
    scores = {
        PREDICTIVE: predictor.predict_batch(data.X)[DURATION],
        BASELINE: np.expm1(estimators[BASELINE_DURATION].predict(data.X)),
    }
    thresholds = [
        (f"{PREDICTIVE}, threshold {t:.3g} s set for {float(b):.0%} on training data", PREDICTIVE, t)
        for b, t in manifest.get("thresholds", {}).items()
    ]
    rows = policy_table(data.frame, scores, args.budgets, thresholds)
    everything = np.ones(len(frame), dtype=bool)
    with threadpool_limits(limits=1, user_api="openmp"):
        metrics = heldout_metrics(estimators, data, everything)
    summary = at_risk_summary(data.frame)
    print(f"{len(frame)} flows from {frame['group'].nunique()} capture(s) "
          f"({excluded} flows of training captures left out); horizon {predictor.horizon_s:g} s")  # fmt: skip
    print(format_table(rows))
    print(_metrics_lines(metrics))
    if args.json:
        report = {
            "model": str(args.model),
            "model_digest": manifest.get("model_digest"),
            "flows_files": [str(f) for f in args.flows],
            "flows": int(len(frame)),
            "excluded_training_flows": excluded,
            "horizon_s": predictor.horizon_s,
            "at_risk": summary,
            "metrics": metrics,
            "policies": [row.as_dict() for row in rows],
        }
        atomic_write_bytes(args.json, (json.dumps(report, indent=2) + "\n").encode())
    return 0


def _metrics_lines(metrics: dict) -> str:
    lines: List[str] = []
    for name, entry in metrics.items():
        parts = [f"{key} {value:.3f}" for key, value in entry.items() if isinstance(value, float)]
        lines.append(f"{name}: " + ", ".join(parts))
    return "\n".join(lines)
