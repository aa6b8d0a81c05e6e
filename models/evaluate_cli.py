"""``prism evaluate FLOWS``: the policy comparison (``prism.sim.evaluation``) on any flow records.

Rows: ``controller`` (what the configuration, by default the shipped
``examples/prism.yaml``, makes the controller do, flow by flow:
``models.controller_row``), none, fixed rf1 and rf2 (full), fixed rf1 in
state mode, random, the port-mean baseline and the oracle; random, baseline
and oracle decide at birth and spend the controller's mirror copies per
packet (protection at equal cost). ``--budgets`` adds the first-packet table
at fixed budgets (full mode: the model's predicted duration, the baseline,
random, oracle). ``--cross-source`` trains on one source and judges on
another (``models.cross_source``).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import numpy as np
from threadpoolctl import threadpool_limits

from prism.atomic import atomic_write_bytes
from prism.config.load import ConfigError
from prism.sim.evaluation import (
    DEFAULT_BUDGETS,
    EvalSettings,
    at_risk_summary,
    compare,
    format_table,
    policy_table,
    targets,
)
from prism.telemetry.records import RecordsError, read_records
from prism.telemetry.training_groups import trained_groups

from models.artifact import ModelError
from models.controller_row import CONFIGURED, SHIPPED_CONFIG, controller_replay, describe, load

#: The first-packet SPE whose port-mean baseline is a row (models/default is the aging model).
DEFAULT_MODEL = Path(__file__).resolve().parent / "first_packet"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``prism evaluate`` options."""
    parser.add_argument("flows", nargs="+", metavar="FLOWS", help="flow-record Parquet files")
    parser.add_argument("--config", default=str(SHIPPED_CONFIG), metavar="FILE",
                        help="configuration whose policy gives the controller row (default: the shipped "
                             "examples/prism.yaml)")  # fmt: skip
    parser.add_argument("--model", metavar="DIR",
                        help="first-packet model directory of the port-mean baseline row (and the first-packet "
                             "table), whose training captures are left out (default: models/first_packet)")  # fmt: skip
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--budgets", type=float, nargs="+", metavar="SHARE",
                        help="also compare first-packet policies at these mirror copies per packet "
                             f"(e.g. {' '.join(f'{b:g}' for b in DEFAULT_BUDGETS)})")  # fmt: skip
    parser.add_argument("--include-training-groups", action="store_true",
                        help="keep flows of capture files the model was trained on (dropped by default)")  # fmt: skip
    parser.add_argument("--seed-delay", type=float, default=EvalSettings().seed_delay_s, metavar="S",
                        help="seconds from a promotion until its new mirror holds the state "
                             f"(default {EvalSettings().seed_delay_s:g})")  # fmt: skip
    parser.add_argument("--cross-source", action="store_true",
                        help="train on each source of FLOWS (its files) in turn and judge on the others: "
                             "the model of the controller row and of the baseline is that one")  # fmt: skip
    parser.add_argument("--max-flows", type=int, metavar="N",
                        help="with --cross-source: use at most N flows per source (a quick run)")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    """Evaluate; prints Markdown tables; 0 on success."""
    if args.seed_delay < 0 or (args.budgets and any(not 0 < b <= 2 for b in args.budgets)):
        print("prism evaluate: --seed-delay must be >= 0 and --budgets in (0, 2]", file=sys.stderr)
        return 2
    try:
        config = load(args.config)
        settings = EvalSettings(seed_delay_s=args.seed_delay, state_interval_s=config.management.state_interval_s)
        if args.cross_source:
            from models.cross_source import run_cross_source

            return run_cross_source(args, config, settings, print_report, write_json)
        predictor = _load_model(args.model)
        if predictor is not None and not _has_baseline(predictor):
            print(f"prism evaluate: {args.model} is an aging model (it scores live flows, not first packets); "
                  f"the port-mean baseline row comes from {DEFAULT_MODEL}", file=sys.stderr)  # fmt: skip
            predictor = _load_model(str(DEFAULT_MODEL))
        frame = read_records(args.flows)
    except (ModelError, RecordsError, ConfigError, OSError, ValueError) as exc:
        print(f"prism evaluate: {exc}", file=sys.stderr)
        return 1
    excluded = 0
    manifest = predictor.manifest if predictor is not None else {}
    if not args.include_training_groups:
        trained_on = trained_groups(manifest, frame) | _controller_training_groups(config, frame)
        keep = ~frame["group"].isin(trained_on).to_numpy()
        excluded = int((~keep).sum())
        frame = frame[keep].reset_index(drop=True)
    if frame.empty:
        print("prism evaluate: no flows left to evaluate (all belong to the model's training "
              "captures; see --include-training-groups and --cross-source)", file=sys.stderr)  # fmt: skip
        return 1
    try:
        report = evaluate(frame, config, predictor, settings, args.budgets)
    except (ModelError, ValueError) as exc:
        print(f"prism evaluate: {exc}", file=sys.stderr)
        return 1
    print(f"{len(frame)} flows from {frame['group'].nunique()} capture(s) ({excluded} flows of the models' "
          f"training captures left out)")  # fmt: skip
    print_report(report)
    if args.json:
        report.update({
            "flows_files": [str(f) for f in args.flows],
            "excluded_training_flows": excluded,
            "model": None if predictor is None else str(predictor.directory),
            "model_digest": manifest.get("model_digest"),
        })  # fmt: skip
        write_json(args.json, report)
    return 0


def _controller_training_groups(config, frame) -> set:
    """Groups of ``frame`` that the controller row's configured model was trained on (empty: no model)."""
    directory = getattr(config.prediction, "model", None) if config.prediction is not None else None
    if not directory:
        return set()
    from models.artifact import read_manifest

    return trained_groups(read_manifest(Path(directory)), frame)


def _load_model(directory: Optional[str]):
    """The baseline's model: the given directory, else the shipped one if it loads (None if it does not)."""
    from models.predictor import Predictor

    if directory is not None:
        return Predictor.load(directory)
    try:
        return Predictor.load(DEFAULT_MODEL)
    except ModelError:
        return None


def _has_baseline(predictor) -> bool:
    """Whether a loaded model has the first-packet estimators (an aging model has not)."""
    from models.estimator import BASELINE_DURATION

    return BASELINE_DURATION in getattr(predictor, "estimators", {})


def evaluate(frame, config, predictor, settings: EvalSettings, budgets=None, controller_model=CONFIGURED) -> dict:
    """The comparison on ``frame`` as a JSON-ready report.

    Args:
        frame: flow records to judge.
        config: the configuration of the controller row.
        predictor: the model of the baseline (and first-packet rows), or None.
        settings: the engine's costs.
        budgets: also the first-packet table at these budgets.
        controller_model: replaces the configured model in the controller row.
    """
    timeline = controller_replay(config, controller_model)(frame)
    scores = first_packet_scores(frame, predictor)
    comparison = compare(frame, controller=timeline, baseline_scores=scores.get("baseline"), settings=settings)
    report = {
        "controller": describe(config),
        "flows": int(len(frame)),
        "groups": int(frame["group"].nunique()),
        "redecisions": int(getattr(timeline, "redecisions", 0)),
        "replay_reids": int(getattr(timeline, "reids", 0)),  # records given a replay-unique flow id
        "at_risk": at_risk_summary(frame),
        "settings": asdict(settings),
        "budget": comparison.budget,
        "notes": comparison.notes,
        "targets": targets(comparison),
        "policies": [row.as_dict() for row in comparison.rows],
    }
    if budgets:
        named = {name: values for name, values in scores.items() if name != "baseline"}
        if "baseline" in scores:
            named["baseline (port mean)"] = scores["baseline"]
        report["first_packet_policies"] = [row.as_dict() for row in policy_table(frame, named, budgets)]
    if predictor is not None and scores:
        report["metrics"] = _metrics(frame, predictor)
    return report


def first_packet_scores(frame, predictor) -> dict:
    """Predicted durations of the model's first-packet estimators ("predictive (HGB)", "baseline"), if it has them."""
    if predictor is None:
        return {}
    from models.estimator import BASELINE_DURATION, DURATION
    from models.train import TrainConfig, build_dataset

    estimators = predictor.estimators
    if BASELINE_DURATION not in estimators:
        return {}
    manifest = predictor.manifest
    data = build_dataset(frame, TrainConfig(horizon_s=predictor.horizon_s,
                                            report_delay_s=float(manifest.get("report_delay_s", 0.0))))  # fmt: skip
    scores = {"baseline": np.expm1(estimators[BASELINE_DURATION].predict(data.X))}
    if DURATION in estimators:
        scores["predictive (HGB)"] = np.expm1(estimators[DURATION].predict(data.X))
    return scores


def _metrics(frame, predictor) -> dict:
    from models.train import TrainConfig, build_dataset, heldout_metrics

    manifest = predictor.manifest
    data = build_dataset(frame, TrainConfig(horizon_s=predictor.horizon_s,
                                            report_delay_s=float(manifest.get("report_delay_s", 0.0))))  # fmt: skip
    with threadpool_limits(limits=1, user_api="openmp"):
        try:
            return heldout_metrics(predictor.estimators, data, np.ones(len(frame), dtype=bool))
        except (KeyError, ValueError):
            return {}


def print_report(report: dict) -> None:
    """The report's tables and notes on stdout."""
    from prism.sim.evaluation import PolicyResult

    print(f"controller row: {report['controller']}; budgeted rows spend the controller's "
          f"{report['budget']:.4f} copies per packet")  # fmt: skip
    print(format_table(PolicyResult(**row) for row in report["policies"]))
    for note in report["notes"]:
        print(f"note: {note}")
    if report.get("targets"):
        t = report["targets"]
        print(f"controller vs fixed rf1: {t['packets_protected_vs_rf1']:.1%} of its at-risk packets protected, "
              f"{t['flows_protected_vs_rf1']:.1%} of its at-risk flows, {t['copies_vs_rf1']:.2%} of its copies; "
              f"replication bytes {t['replication_bytes']:.2%} of traffic")  # fmt: skip
    if report.get("first_packet_policies"):
        print("\nfirst-packet policies at fixed budgets (full mode):")
        print(format_table(PolicyResult(**row) for row in report["first_packet_policies"]))
    for name, entry in (report.get("metrics") or {}).items():
        parts = [f"{key} {value:.3f}" for key, value in entry.items() if isinstance(value, float)]
        print(f"{name}: " + ", ".join(parts))


def write_json(path: str, report: dict) -> None:
    """The report as JSON, written atomically."""
    atomic_write_bytes(path, (json.dumps(report, indent=2, default=_plain) + "\n").encode())


def _plain(value):
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    raise TypeError(f"not JSON: {type(value).__name__}")

