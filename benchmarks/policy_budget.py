"""Does the predictive policy's online threshold hold the mirroring budget on traffic it was not trained on?

Replays flow records (by default the shipped captures the model was NOT trained
on) through the controller's own prediction path, in start-time order with the
captures laid end to end on one timeline: each flow is scored at its first
packet (``PredictionEngine.score_first``: features with the live history, the
predicted duration), the budget tracker decides whether it is mirrored, and its
outcome reaches the history and the budget's window when the switch would have
reported it (duration + idle timeout later), as ``PredictivePolicy.flow_ended``
does. Printed per budget: mirror copies per packet realised over the whole
replay and over its second half, flows mirrored and at-risk packets protected
(``prism.sim.evaluation``'s weights), for

- the online threshold (what the controller does),
- the training data's threshold kept fixed (the manifest's operating point),
- the evaluation's ranked policy, which spends exactly the budget knowing
  every score in advance (a bound, not something a controller can run).

    .venv/bin/python benchmarks/policy_budget.py [--model models/first_packet] [--budgets 0.1 0.25 0.5]
"""

from __future__ import annotations

import argparse
import heapq
import sys
from pathlib import Path
from typing import Dict, List

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from prism.sim.evaluation import ranked_policy  # noqa: E402
from prism.policy.features import FirstPacket  # noqa: E402
from models.predictor import Predictor  # noqa: E402
from prism.policy.budget import BudgetSettings  # noqa: E402
from prism.policy.predictive import PredictionEngine  # noqa: E402
from prism.telemetry.records import read_records  # noqa: E402
from prism.telemetry.training_groups import trained_groups

GAP_BETWEEN_CAPTURES_S = 1.0


def one_timeline(frame):
    """Captures laid end to end (each keeps its own timing), sorted by start."""
    frame = frame.sort_values(["group", "ts_start"]).reset_index(drop=True)
    offset, shifted = 0.0, np.empty(len(frame))
    for _group, index in frame.groupby("group", sort=False).groups.items():
        starts = frame.loc[index, "ts_start"].to_numpy()
        ends = starts + frame.loc[index, "duration_s"].to_numpy()
        shifted[index] = starts - starts.min() + offset
        offset += ends.max() - starts.min() + GAP_BETWEEN_CAPTURES_S
    frame = frame.assign(ts_start=shifted)
    return frame.sort_values("ts_start", kind="stable").reset_index(drop=True)


def replay(frame, predictor, budget: float, idle_s: float, adapt: bool) -> Dict[str, float]:
    """Run the flows through the engine; returns realised shares and protection."""
    settings = BudgetSettings(budget) if adapt else BudgetSettings(budget, refit_every=1 << 62)
    engine = PredictionEngine(predictor, settings)
    pending: List[tuple] = []
    rf = np.zeros(len(frame))
    rows = list(frame.itertuples(index=False))
    for seq, row in enumerate(rows):
        now = float(row.ts_start)
        while pending and pending[0][0] <= now:
            at, _seq, first, duration, packets, score, factor, generation = heapq.heappop(pending)
            engine.flow_ended(first, duration, packets, score, factor, generation, at)
        first = FirstPacket.from_record(row)
        score = max(engine.score_first(first, now), 0.0)
        factor = 1 if engine.tracker.mirrors(score, int(row.flow_id)) else 0
        rf[seq] = factor
        report_at = now + float(row.duration_s) + idle_s
        heapq.heappush(pending, (report_at, seq, first, float(row.duration_s), int(row.packets),
                                 score, factor, engine.generation))  # fmt: skip
    packets = frame["packets"].to_numpy(float)
    duration = frame["duration_s"].to_numpy(float)
    half = len(frame) // 2
    risk = packets * duration
    return {
        "realised": float((rf * packets).sum() / packets.sum()),
        "realised_second_half": float((rf[half:] * packets[half:]).sum() / packets[half:].sum()),
        "flows_mirrored": float(rf.mean()),
        "packets_protected": float((rf * risk).sum() / max(risk.sum(), 1e-12)),
        "threshold_end": engine.tracker.threshold,
        "fits": engine.tracker.fits,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "models" / "first_packet"))
    parser.add_argument("--flows", nargs="+", default=sorted(str(p) for p in (ROOT / "data" / "flows").glob("*.parquet")))
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.1, 0.25, 0.5])
    parser.add_argument("--idle", type=float, default=10.0, help="idle timeout: report delay after a flow's last packet")
    parser.add_argument("--include-training-groups", action="store_true")
    args = parser.parse_args()
    predictor = Predictor.load(args.model)
    frame = read_records(args.flows)
    if not args.include_training_groups:
        trained_on = trained_groups(predictor.manifest, frame)
        frame = frame[~frame["group"].isin(trained_on)]
    frame = one_timeline(frame)
    print(f"{len(frame)} flows, {frame['group'].nunique()} captures on one timeline of "
          f"{frame['ts_start'].max() / 3600:.1f} h; {int(frame['packets'].sum())} packets; idle timeout {args.idle:g} s")
    print("| budget | policy | copies / packet | 2nd half | flows mirrored | at-risk packets protected |")
    print("|---:|---|---:|---:|---:|---:|")
    for budget in args.budgets:
        for name, adapt in (("online threshold", True), ("training threshold, fixed", False)):
            result = replay(frame, predictor, budget, args.idle, adapt)
            print(f"| {budget:.0%} | {name} | {result['realised']:.3f} | {result['realised_second_half']:.3f} "
                  f"| {result['flows_mirrored']:.1%} | {result['packets_protected']:.1%} |")
        scores = np.maximum(_offline_scores(frame, predictor), 0.0)
        bound = ranked_policy(frame["duration_s"], frame["packets"], scores, budget, "ranked")
        print(f"| {budget:.0%} | ranked, scores known in advance | {bound.packets_mirrored:.3f} |  "
              f"| {bound.flows_mirrored:.1%} | {bound.packets_protected:.1%} |")
    return 0


def _offline_scores(frame, predictor) -> np.ndarray:
    """The same scores as the replay's (same history order), without deciding anything."""
    engine = PredictionEngine(predictor, BudgetSettings(1.0))
    pending: List[tuple] = []
    out = np.zeros(len(frame))
    for seq, row in enumerate(frame.itertuples(index=False)):
        now = float(row.ts_start)
        while pending and pending[0][0] <= now:
            at, _seq, first, duration, packets = heapq.heappop(pending)
            engine.history.record_end(first, duration, packets, at)
        first = FirstPacket.from_record(row)
        out[seq] = engine.score_first(first, now)
        heapq.heappush(pending, (now + float(row.duration_s) + 10.0, seq, first, float(row.duration_s), int(row.packets)))
    return out


if __name__ == "__main__":
    sys.exit(main())
