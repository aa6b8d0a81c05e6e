"""Traffic interruption when a TCP transfer's primary cell fails (link down, process killed), BFD against heartbeats.

Each run is the demo's scenario (``mininet_topos.demo.run_demo``): a fresh
network (ryu-manager, userspace OVS, 3 ``prism cell`` processes, management
network), UDP flows and an iperf3 TCP transfer from the clients to the
server, and the transfer's primary cell failing ``--fail-at`` seconds in.
The interruption is the longest gap between the transfer's data packets at
the server (its own capture) in the 3 s after the failure; detection is the
time from the failure (the kill, the link going down) to the controller
declaring the cell dead. Beside the transfer runs a probe: a UDP flow at
1,000 datagrams/s with sequence numbers whose primary is the failing cell;
its longest gap and the datagrams it lost see what the transfer's 128 KB
blocks cannot (``mininet_topos.probe``).

Each failure kind runs with BFD between the switch and the cells (the cells'
``--bfd``, the ports' ``bfd:*``, 10 ms x 3) and, as the baseline, without
(heartbeats only: a dead process is found after 0.35 s of silence). Runs
alternate process/BFD, process/heartbeats, link/BFD, link/heartbeats, ... so
that machine load hits all alike.

Baselines from the same runs: the normal max gap (the longest gap before the
failure, i.e. what the transfer shows with nothing failing), and one control
run without replication (rf=0, process killed), in which the transfer's state
is lost with its primary: whether TCP survives there is the comparison for
the survival counts.

    .venv/bin/python benchmarks/failover.py [--runs 5] [--duration 6] [--fail-at 2.5] [--json FILE]

Needs root and a running Open vSwitch (``make setup``); a run waits for any
other PRISM network on the machine to stop first.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mininet_topos.demo import TCP_RATE, DemoOptions, run_demo  # noqa: E402

#: (failure kind, BFD on): the scenarios, in the order runs alternate.
SCENARIOS = (("process", True), ("process", False), ("link", True), ("link", False))
CONTROL = "rf=0 control (process, BFD)"
#: What each run keeps from the demo's report.
KEPT = ("failed_cell", "tcp_survived", "interruption_ms", "detection_ms", "detected_as", "baseline_max_gap_ms",
        "state_lost_flows", "groups_rewritten", "openflow_messages_failover",
        "conntrack_entry_carried_over", "flows_total", "flows_mirrored", "iperf3_completed", "probe")  # fmt: skip


def scenario_name(kind: str, bfd: bool) -> str:
    return f"{kind} ({'BFD' if bfd else 'heartbeats'})"


def run_one(kind: str, bfd: bool, replication_factor: int, args: argparse.Namespace, workdir: Path) -> dict:
    """One demo run with its primary failing as ``kind``; the figures this benchmark uses."""
    options = DemoOptions(cells=3, clients=2, replication_factor=replication_factor,
                          duration_s=args.duration, fail_at_s=args.fail_at, fail_primary=kind,
                          udp_flows_per_client=args.udp_flows, workdir=workdir,
                          prediction=args.prediction, bfd=bfd)  # fmt: skip
    report = run_demo(options)
    run = {key: report.get(key) for key in KEPT}
    run["retransmits"] = report["tcp"].get("retransmits")
    run["tcp_error"] = report["tcp"].get("error")
    return run


def _median(values: List[float]) -> Optional[float]:
    return statistics.median(values) if values else None


def summarize(runs: List[dict]) -> dict:
    """Median and worst over the runs that failed a cell (a run that found no primary is counted apart)."""
    valid = [r for r in runs if r["failed_cell"]]
    resumed = [r["interruption_ms"] for r in valid if r["interruption_ms"] is not None]
    detection = [r["detection_ms"] for r in valid if r["detection_ms"] is not None]
    gaps = [r["baseline_max_gap_ms"] for r in valid if r["baseline_max_gap_ms"] is not None]
    probes = [r["probe"] for r in valid if r.get("probe") and r["probe"].get("max_gap_ms") is not None]
    on_failed = sum(1 for r in valid if (r.get("probe") or {}).get("primary") == r["failed_cell"])
    never = len(valid) - len(resumed)
    return {
        "runs": len(runs),
        "runs_without_failure": len(runs) - len(valid),
        "survived": sum(1 for r in valid if r["tcp_survived"]),
        "interruption_ms_median": _median(resumed),
        # a transfer that never resumed is worse than any gap
        "interruption_ms_worst": None if never else (max(resumed) if resumed else None),
        "never_resumed": never,
        "detection_ms_median": _median(detection),
        "detection_ms_worst": max(detection) if detection else None,
        "normal_max_gap_ms_median": _median(gaps),
        "normal_max_gap_ms_worst": max(gaps) if gaps else None,
        "state_lost_flows": sum(r["state_lost_flows"] or 0 for r in valid),
        "groups_rewritten_median": _median([r["groups_rewritten"] for r in valid if r["groups_rewritten"] is not None]),
        "conntrack_carried_over": sum(1 for r in valid if r["conntrack_entry_carried_over"]),
        "iperf3_completed": sum(1 for r in valid if r["iperf3_completed"]),
        "probe_runs": len(probes),
        "probe_on_failed_cell": on_failed,
        "probe_max_gap_ms_median": _median([p["max_gap_ms"] for p in probes]),
        "probe_max_gap_ms_worst": max((p["max_gap_ms"] for p in probes), default=None),
        "probe_lost_median": _median([p["lost_after_failure"] for p in probes
                                      if p.get("lost_after_failure") is not None]),
        "probe_normal_max_gap_ms_median": _median([p["baseline_max_gap_ms"] for p in probes
                                                   if p.get("baseline_max_gap_ms") is not None]),
        "probe_sender_longest_pause_ms_median": _median([p["sender_longest_pause_ms"] for p in probes
                                                         if p.get("sender_longest_pause_ms") is not None]),
        "detected_as": sorted({r["detected_as"] for r in valid if r.get("detected_as")}),
    }



def _ms(value: Optional[float], never: int = 0) -> str:
    if never:
        return "never"
    return "-" if value is None else f"{value:.0f}"


def report(args: argparse.Namespace, summaries: Dict[str, dict]) -> None:
    print(f"\nfailover: {args.runs} runs per failure kind, {args.duration:g} s transfer "
          f"(iperf3 at {TCP_RATE}), failure at {args.fail_at:g} s; policy "
          f"{'predictive (shipped model)' if args.prediction else 'FixedPolicy rf=1'}")  # fmt: skip
    print(f"  {'failure':<24}{'survived':>9}  {'interruption ms':>17}  {'detection ms':>13}  "
          f"{'normal max gap ms':>17}  {'vs normal':>9}  {'state lost':>10}  {'conntrack kept':>14}  "
          f"{'probe gap ms':>13}  {'probe lost':>10}")
    print(f"  {'':<24}{'':>9}  {'median / worst':>17}  {'med / worst':>13}  {'median / worst':>17}"
          f"{'':>39}{'med / worst':>13}  {'median':>10}")
    for name, s in summaries.items():
        interruption = f"{_ms(s['interruption_ms_median'])} / {_ms(s['interruption_ms_worst'], s['never_resumed'])}"
        detection = f"{_ms(s['detection_ms_median'])} / {_ms(s['detection_ms_worst'])}"
        gap = f"{_ms(s['normal_max_gap_ms_median'])} / {_ms(s['normal_max_gap_ms_worst'])}"
        ratio = "-"
        if s["interruption_ms_median"] is not None and s["normal_max_gap_ms_median"]:
            ratio = f"{s['interruption_ms_median'] / s['normal_max_gap_ms_median']:.1f}x"
        valid = s["runs"] - s["runs_without_failure"]
        probe = f"{_ms(s['probe_max_gap_ms_median'])} / {_ms(s['probe_max_gap_ms_worst'])}"
        lost = "-" if s["probe_lost_median"] is None else f"{s['probe_lost_median']:g}"
        print(f"  {name:<24}{s['survived']:>5}/{valid:<3}  {interruption:>17}  {detection:>13}  {gap:>17}  "
              f"{ratio:>9}  {s['state_lost_flows']:>10}  {s['conntrack_carried_over']:>10}/{valid:<3}  "
              f"{probe:>13}  {lost:>10}")
        if s["iperf3_completed"] != s["survived"]:
            print(f"    (iperf3 itself completed in {s['iperf3_completed']}/{valid}: its control connection is "
                  f"another flow)")
        if s["runs_without_failure"]:
            print(f"    ({s['runs_without_failure']} run(s) found no primary for the transfer and failed nothing)")
    print("  interruption: longest gap between the transfer's data packets at the server within 3 s of the\n"
          "  failure; normal max gap: the longest gap before the failure in the same runs (the baseline);\n"
          "  detection: the failure to the controller declaring the cell dead;\n"
          "  probe: 1,000 UDP datagrams/s whose primary is the failing cell: longest gap at the server within\n"
          "  3 s of the failure, and the datagrams missing there;\n"
          "  state lost: flows the controller found with no live replica; conntrack kept: the cell now\n"
          "  forwarding the transfer holds the failed primary's entry (same token)")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs per failure kind (default 5)")
    parser.add_argument("--duration", type=float, default=6.0, help="transfer length, s (default 6)")
    parser.add_argument("--fail-at", type=float, default=2.5, help="failure time into the transfer, s (default 2.5)")
    parser.add_argument("--udp-flows", type=int, default=3, help="UDP flows per client beside it (default 3)")
    parser.add_argument("--prediction", action="store_true",
                        help="the shipped model picks which flows get mirrors (default: every flow rf=1)")
    parser.add_argument("--no-control", action="store_false", dest="control", help="skip the rf=0 control run")
    parser.add_argument("--kinds", nargs="+", choices=("process", "link"), default=["process", "link"],
                        help="failure kinds to run (default both)")
    parser.add_argument("--json", type=Path, help="write every run and the summary to this file")
    parser.add_argument("--workdir", type=Path, help="keep logs and captures here (default: a temporary folder)")
    args = parser.parse_args(argv)
    if args.runs < 1 or not 0 < args.fail_at < args.duration - 1:
        parser.error("--runs must be >= 1 and --fail-at between 0 and --duration - 1")
    if os.geteuid() != 0:
        print("failover: needs root (Mininet); run it as root after `make setup`", file=sys.stderr)
        return 2
    started = time.monotonic()
    scenarios = [s for s in SCENARIOS if s[0] in args.kinds]
    runs: Dict[str, List[dict]] = {scenario_name(*s): [] for s in scenarios}
    if args.control:
        runs[CONTROL] = []
    with tempfile.TemporaryDirectory(prefix="prism-failover-") as scratch:
        base = (args.workdir or Path(scratch)).resolve()
        plan = [(scenario_name(kind, bfd), kind, bfd, 1) for _ in range(args.runs) for kind, bfd in scenarios]
        if args.control:
            plan.append((CONTROL, "process", True, 0))
        for number, (name, kind, bfd, replication_factor) in enumerate(plan, 1):
            workdir = base / f"run{number:02d}-{kind}-{'bfd' if bfd else 'hb'}-rf{replication_factor}"
            run = run_one(kind, bfd, replication_factor, args, workdir)
            runs[name].append(run)
            probe = run.get("probe") or {}
            print(f"run {number}/{len(plan)} {name:<24}: failed {run['failed_cell']}, TCP "
                  f"{'survived' if run['tcp_survived'] else 'BROKE'}, interruption {run['interruption_ms']} ms, "
                  f"detection {run['detection_ms']} ms ({run['detected_as']}), normal max gap "
                  f"{run['baseline_max_gap_ms']} ms, state lost {run['state_lost_flows']}, probe gap "
                  f"{probe.get('max_gap_ms')} ms lost {probe.get('lost_after_failure')} "
                  f"(primary {probe.get('primary')})", flush=True)  # fmt: skip
    summaries = {name: summarize(kind_runs) for name, kind_runs in runs.items()}
    report(args, summaries)
    print(f"  ({time.monotonic() - started:.0f} s)")
    if args.json:
        document = {"benchmark": "failover",
                    "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                    "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                                "load_average": os.getloadavg()},
                    "summary": summaries, "runs": runs}  # fmt: skip
        args.json.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
