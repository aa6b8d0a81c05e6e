"""Honest generalisation: train on one source of flow records, judge on another (``prism evaluate --cross-source``).

The sources are the records' ``source`` column: ``pcap`` (the nDPI captures)
and ``binetflow`` (the Stratosphere Argus files), each split whole. For every
ordered pair (train, test):

1. the models are fitted on the training source only, with the training code
   of ``prism train``: the aging model (``models.aging.train_aging``, fitted
   on every training flow, with the configuration's milestones) and the
   port-mean baseline of ``models.train`` (its ``Dataset`` labels and weights, on every
   training flow) that gives the ``baseline (port mean)`` row;
2. the configuration's policy (the shipped ``examples/prism.yaml`` by default)
   is replayed over the test source (``models.controller_row``): the
   ``controller`` row, with the aging model of the training source in place
   of its configured one. A configuration that names no model (the age rule:
   nothing learnt, nothing to transfer) keeps its controller row as it is, and
   the same policy with the training source's model is the row
   ``controller + aging model``;
3. every row of ``prism.sim.evaluation.compare`` is judged on the test source.

Nothing of the test source is seen before it is judged.
"""

from __future__ import annotations

import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import pandas as pd

from prism.sim.evaluation import EvalSettings
from prism.telemetry.records import read_records

#: The row of the configured policy with the training source's model, when the configuration names none.
WITH_MODEL = "controller + aging model"
#: Human names of the shipped sources.
SOURCE_NAMES = {"pcap": "nDPI captures", "binetflow": "Stratosphere (Argus)", "telemetry": "telemetry"}


@dataclass
class CrossResult:
    """One (train, test) pair's report (``models.evaluate_cli.evaluate``'s dict plus the pair)."""

    train_source: str
    test_source: str
    train_flows: int
    report: dict


def subset(frame: pd.DataFrame, max_flows: Optional[int], seed: int = 0) -> pd.DataFrame:
    """At most ``max_flows`` flows per source, whole capture files taken in a seeded random order."""
    if not max_flows:
        return frame.reset_index(drop=True)
    parts = []
    rng = np.random.default_rng(seed)
    for _source, part in frame.groupby("source", sort=True):
        groups = rng.permutation(np.asarray(part["group"].unique(), dtype=object))
        sizes = part.groupby("group").size()
        keep, total = [], 0
        for group in groups:
            if total and total + sizes[group] > max_flows:
                continue
            keep.append(group)
            total += int(sizes[group])
        parts.append(part[part["group"].isin(keep)])
    return pd.concat(parts).sort_values("ts_start", kind="stable").reset_index(drop=True)


def train_for(frame: pd.DataFrame, config, workdir: Path):
    """The aging model (a loaded ``Predictor``) and the port-mean baseline, fitted on every flow of ``frame``.

    Returns:
        ``(aging_predictor, baseline_estimator, first_packet_train_config)``.
    """
    from models.aging import AgingTrainConfig, train_aging
    from models.artifact import KIND_AGING, save_model
    from models.estimator import BASELINE_DURATION
    from models.predictor import Predictor
    from models.estimator import make_models
    from models.train import TrainConfig, build_dataset

    prediction = config.prediction
    milestones = tuple(getattr(prediction, "milestones_s", ()) or ()) if prediction is not None else ()
    aging_config = AgingTrainConfig(idle_timeout_s=float(config.idle_timeout),
                                    **({"milestones_s": milestones} if milestones else {}))  # fmt: skip
    aging = train_aging(frame, aging_config, hold_out=False)
    directory = workdir / "aging"
    save_model(directory, aging.estimators, aging.manifest(), kind=KIND_AGING)
    first_config = TrainConfig(report_delay_s=float(config.idle_timeout))
    # The baseline alone, as models.train.fit_models fits it, on every training flow: the
    # first-packet trees cannot be fitted on Argus records (no first-packet size or flags).
    data = build_dataset(frame, first_config)
    baseline = make_models(first_config.seed)[BASELINE_DURATION]
    y, weight = data.target(BASELINE_DURATION), data.weight(BASELINE_DURATION)
    known = ~np.isnan(y)
    baseline.fit(data.X[known], y[known], sample_weight=weight[known])
    return Predictor.load(directory), baseline, first_config


def baseline_scores(frame: pd.DataFrame, estimator, train_config) -> np.ndarray:
    """The port-mean baseline's predicted duration (s) of every flow, from its first packet."""
    from models.train import build_dataset

    return np.expm1(estimator.predict(build_dataset(frame, train_config).X))


def cross_source(frame: pd.DataFrame, config, settings: EvalSettings = EvalSettings(),
                 max_flows: Optional[int] = None, log=None) -> List[CrossResult]:  # fmt: skip
    """Every ordered pair of sources in ``frame``: train on one, judge on the other (module docstring).

    Raises:
        ValueError: fewer than two sources.
    """
    from models.controller_row import controller_replay, describe
    from prism.sim.evaluation import at_risk_summary, compare, targets

    frame = subset(frame, max_flows)
    sources = sorted(frame["source"].unique())
    if len(sources) < 2:
        raise ValueError(f"--cross-source needs flows of at least two sources, these have only {sources}")
    by_source: Dict[str, pd.DataFrame] = {s: frame[frame["source"] == s].reset_index(drop=True) for s in sources}
    results = []
    for train_source in sources:
        with tempfile.TemporaryDirectory(prefix="prism-cross-") as workdir:
            if log:
                log(f"training on {train_source} ({len(by_source[train_source])} flows)")
            aging, baseline, train_config = train_for(by_source[train_source], config, Path(workdir))
            for test_source in sources:
                if test_source == train_source:
                    continue
                test = by_source[test_source]
                names_model = config.prediction is not None and bool(config.prediction.model)
                with_model = controller_replay(config, aging)(test)
                timeline = with_model if names_model else controller_replay(config)(test)
                extra = {} if names_model else {WITH_MODEL: with_model}
                comparison = compare(test, controller=timeline,
                                     baseline_scores=baseline_scores(test, baseline, train_config),
                                     settings=settings, extra_timelines=extra)  # fmt: skip
                trained = f"aging model trained on {train_source}"
                report = {
                    "controller": describe(config, trained) if names_model else describe(config),
                    "with_model": trained,
                    "flows": int(len(test)), "groups": int(test["group"].nunique()),
                    "redecisions": int(getattr(timeline, "redecisions", 0)),
                    "at_risk": at_risk_summary(test), "budget": comparison.budget,
                    "notes": comparison.notes, "targets": targets(comparison),
                    "policies": [row.as_dict() for row in comparison.rows],
                }  # fmt: skip
                results.append(CrossResult(train_source, test_source, int(len(by_source[train_source])), report))
    return results


def summary_table(results: Sequence[CrossResult]) -> str:
    """The cross-source table (Markdown): per pair, the controller against fixed rf1 and the rows at its cost."""
    lines = [
        "| trained on | judged on | policy | mirror copies / packet | replication bytes / byte "
        "| at-risk flows protected | at-risk packets protected |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for result in results:
        rows = {row["policy"]: row for row in result.report["policies"]}
        for name in ("controller", WITH_MODEL, "fixed rf1", "fixed rf1 state", "random", "baseline (port mean)",
                     "oracle"):  # fmt: skip
            row = rows.get(name)
            if row is None:
                continue
            lines.append(
                f"| {SOURCE_NAMES.get(result.train_source, result.train_source)} "
                f"| {SOURCE_NAMES.get(result.test_source, result.test_source)} | {name} "
                f"| {row['packets_mirrored']:.4f} | {row['replication_bytes']:.4f} "
                f"| {row['flows_protected']:.1%} | {row['packets_protected']:.1%} |"
            )
    return "\n".join(lines)


def run_cross_source(args, config, settings: EvalSettings, print_report, write_json) -> int:
    """``prism evaluate --cross-source``: print every pair's table and the summary; JSON if asked.

    ``print_report(report)`` and ``write_json(path, report)`` are the evaluate command's own.
    """
    frame = read_records(args.flows)
    results = cross_source(frame, config, settings, args.max_flows,
                           log=lambda text: print(f"prism evaluate: {text}", file=sys.stderr))  # fmt: skip
    for result in results:
        print(f"\n## trained on {SOURCE_NAMES.get(result.train_source, result.train_source)} "
              f"({result.train_flows} flows), judged on {SOURCE_NAMES.get(result.test_source, result.test_source)} "
              f"({result.report['flows']} flows)")  # fmt: skip
        print_report(result.report)
    print("\n## cross-source summary")
    print(summary_table(results))
    if args.json:
        write_json(args.json, {
            "flows_files": [str(f) for f in args.flows], "max_flows_per_source": args.max_flows,
            "settings": asdict(settings),
            "pairs": [{"train_source": r.train_source, "test_source": r.test_source,
                       "train_flows": r.train_flows, **r.report} for r in results],
        })  # fmt: skip
    return 0
