"""End to end on real Open vSwitch: new-flow setup rate and first-packet latency, PRISM against simple_switch_13.

Both controllers run on the SAME topology (``PrismTopo``: 2 clients, 1 server,
3 cell hosts on one userspace OVS switch, started by ``PrismNetwork``), one
network at a time, alternating PRISM, simple_switch_13, PRISM, ... so that a
busy machine slows both alike. In each network, client c1 sends one-packet UDP
flows (a new source port each) to a UDP sink on server sv1:

- warm-up: a ping, then ``--warm-up`` flows (hosts learnt, PRISM's profile groups made);
- sequential: ``--flows`` flows, one every ``--interval-ms``: the first-packet
  latency of a new flow, from just before the client's send to the kernel's
  receive timestamp at the server (same machine clock);
- burst: ``--burst`` other flows back to back: flows set up per second, the
  delivered flows divided by the time from the first send to the last arrival
  (first packets lost on the way are counted, not retried). A longer burst
  loses first packets in the switch before any controller sees them, whichever
  runs (1000 back to back: about 260 delivered with either; about what a
  socket's default 212,992-byte receive buffer holds of small frames), so the
  default stays below that.

What a "new flow" costs differs by design. PRISM handles every new 5-tuple:
packet-in, two Flow State Cache entries, and the first packet sent through the
flow's profile group to its primary cell (a ``prism cell`` process that tracks
and forwards it) and mirror, then to the server. simple_switch_13 is an L2
learning switch: it sets up one entry per (in_port, eth_src, eth_dst) and never
sees a new port pair of known hosts; so in its runs every flow also has a new
source MAC, which makes each one a new flow for it (a learn, one flow entry and
a packet-out), and no cell is in its path. The ratios therefore compare the
controller + switch cost of a new flow, plus, for PRISM only, one pass through
a cell.

    .venv/bin/python benchmarks/e2e_flow_setup.py [--flows 200] [--burst 200] [--repeat 2] [--interval-ms 20]
        [--json FILE]

Needs root and a running Open vSwitch (``make setup``); the network is
machine-wide, so a run waits for any other PRISM network to stop first.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mininet_topos.harness import PrismNetwork, stop_process  # noqa: E402
from mininet_topos.prism_topo import prediction_config  # noqa: E402

SINK_PORT = 9500
WARM_UP_SPORT = 10000
SEQUENTIAL_SPORT = 20000
BURST_SPORT = 40000
MAX_FLOWS = BURST_SPORT - SEQUENTIAL_SPORT
MAX_BURST = 65535 - BURST_SPORT
WARM_UP_INTERVAL_MS = 20.0
SETTLE_S = 2.0  #: after the burst's last send, time for late first packets to arrive
SINK_READY_TIMEOUT_S = 10.0
SENDER_TIMEOUT_S = 120.0
FLOW_MAC_BASE = 0x50  #: per-flow source MACs 02:50:... for simple_switch_13
NS_PER_MS = 1e6
NS_PER_S = 1e9
CLIENT, SERVER = "c1", "sv1"


@dataclass(frozen=True)
class Controller:
    """One controller under test and how its network is started."""

    name: str
    apps: Optional[Sequence[str]]  #: None: PRISM's own apps
    cells: bool  #: prism cell processes and the management network
    mac_per_flow: bool  #: every flow gets its own source MAC (else c1's)


PRISM = Controller("PRISM", None, True, False)
SIMPLE_SWITCH = Controller("simple_switch_13", ("ryu.app.simple_switch_13",), False, True)
CONTROLLERS = (PRISM, SIMPLE_SWITCH)


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (``fraction`` in 0..1)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


def traffic(host, *arguments: str):
    """Start ``benchmarks.harness.e2e_traffic`` in a Mininet host."""
    return host.popen([sys.executable, "-m", "benchmarks.harness.e2e_traffic", *arguments],
                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=str(ROOT),
                      env=dict(os.environ, PYTHONPATH=str(ROOT)))  # fmt: skip


def send_flows(net: PrismNetwork, controller: Controller, first_sport: int, count: int,
               interval_ms: float, out: Path) -> Dict[str, int]:  # fmt: skip
    """Send ``count`` one-packet flows from c1 to sv1; returns sport -> send time (ns)."""
    client, server = net.host(CLIENT), net.host(SERVER)
    arguments = ["send", "--iface", f"{CLIENT}-eth0", "--src-mac", client.MAC(), "--dst-mac", server.MAC(),
                 "--src-ip", client.IP(), "--dst-ip", server.IP(), "--dport", str(SINK_PORT),
                 "--first-sport", str(first_sport), "--count", str(count),
                 "--interval-ms", str(interval_ms), "--json", str(out)]  # fmt: skip
    if controller.mac_per_flow:
        arguments += ["--mac-base", str(FLOW_MAC_BASE)]
    sender = traffic(client, *arguments)
    output, _ = sender.communicate(timeout=SENDER_TIMEOUT_S)
    if sender.returncode != 0:
        raise RuntimeError(f"the sender failed: {output.decode(errors='replace')[-800:]}")
    return json.loads(out.read_text())


def run_once(controller: Controller, args: argparse.Namespace, workdir: Path) -> dict:
    """One network with ``controller``: warm-up, sequential and burst phases; the raw times."""
    overrides = {"prediction": prediction_config()} if controller.cells and args.prediction else {}
    network = PrismNetwork(workdir, clients=2, servers=1, cells=3, replication_factor=1,
                           idle_timeout=args.idle_timeout, start_cells=controller.cells,
                           management=controller.cells, apps=controller.apps,
                           config_overrides=overrides)  # fmt: skip
    arrivals_path, ready = workdir / "arrivals.json", workdir / "sink.ready"
    ready.unlink(missing_ok=True)
    with network as net:
        sink = traffic(net.host(SERVER), "sink", "--port", str(SINK_PORT), "--json", str(arrivals_path),
                       "--ready", str(ready))  # fmt: skip
        net.background.append(sink)
        deadline = time.monotonic() + SINK_READY_TIMEOUT_S
        while not ready.exists():
            if sink.poll() is not None or time.monotonic() > deadline:
                stop_process(sink)
                raise RuntimeError(f"the UDP sink did not start: {sink.stdout.read().decode(errors='replace')}")
            time.sleep(0.05)
        net.host(CLIENT).cmd(f"ping -c 2 -i 0.2 -W 2 {net.host(SERVER).IP()}")
        send_flows(net, controller, WARM_UP_SPORT, args.warm_up, WARM_UP_INTERVAL_MS, workdir / "warm.json")
        sequential = send_flows(net, controller, SEQUENTIAL_SPORT, args.flows, args.interval_ms,
                                workdir / "sequential.json")  # fmt: skip
        burst = send_flows(net, controller, BURST_SPORT, args.burst, 0.0, workdir / "burst.json")
        time.sleep(SETTLE_S)
        stop_process(sink)  # it writes the arrivals when stopped
        seen = _controller_view(net, controller)
    arrivals = json.loads(arrivals_path.read_text())
    return {"controller": controller.name, "sequential": sequential, "burst": burst,
            "arrivals": arrivals, "controller_view": seen}  # fmt: skip


def _controller_view(net: PrismNetwork, controller: Controller) -> dict:
    """What the controller says it did (a sanity check that every flow was new to it)."""
    if controller.cells:
        try:
            status = net.controller.rest("/prism/v1/status")
        except Exception as error:  # noqa: BLE001 - printed, not fatal
            return {"error": str(error)}
        try:
            cells = net.controller.rest("/prism/v1/cells")["cells"]
        except Exception:  # noqa: BLE001 - the status is enough to go on
            cells = []
        # a cell declared dead mid-run (e.g. heartbeats late on a loaded machine) skews the run: say so
        return {"flows_total": status.get("flows_total"), "flows_mirrored": status.get("flows_mirrored"),
                "cell_failures": sum(cell.get("failures", 0) for cell in cells)}
    flows = [line for line in net.ofctl("dump-flows").splitlines() if "priority=1," in line]
    return {"flow_entries": len(flows)}


def analyse(run: dict) -> dict:
    """Latency of the sequential flows, rate and latency of the burst."""
    arrivals = run["arrivals"]
    latency = [(arrivals[p] - t) / NS_PER_MS for p, t in run["sequential"].items() if p in arrivals]
    burst_sent = run["burst"]
    burst_arrived = [arrivals[p] for p in burst_sent if p in arrivals]
    burst_latency = [(arrivals[p] - t) / NS_PER_MS for p, t in burst_sent.items() if p in arrivals]
    first_send = min(burst_sent.values())
    span_s = (max(burst_arrived) - first_send) / NS_PER_S if burst_arrived else float("nan")
    send_span_s = (max(burst_sent.values()) - first_send) / NS_PER_S
    return {
        "latency_ms_median": statistics.median(latency) if latency else float("nan"),
        "latency_ms_p90": percentile(latency, 0.9) if latency else float("nan"),
        "latency_ms_max": max(latency) if latency else float("nan"),
        "sequential_lost": len(run["sequential"]) - len(latency),
        "burst_flows_per_s": len(burst_arrived) / span_s if burst_arrived else 0.0,
        "burst_delivered": len(burst_arrived),
        "burst_sent": len(burst_sent),
        "burst_offered_per_s": len(burst_sent) / send_span_s if send_span_s > 0 else float("inf"),
        "burst_latency_ms_median": statistics.median(burst_latency) if burst_latency else float("nan"),
        "burst_latency_ms_p90": percentile(burst_latency, 0.9) if burst_latency else float("nan"),
        "controller_view": run["controller_view"],
    }


def summarize(results: List[dict]) -> dict:
    """Medians over one controller's runs."""
    keys = ("latency_ms_median", "latency_ms_p90", "latency_ms_max", "burst_flows_per_s",
            "burst_latency_ms_median", "burst_latency_ms_p90", "burst_offered_per_s")  # fmt: skip
    summary = {key: statistics.median(r[key] for r in results) for key in keys}
    summary["sequential_lost"] = sum(r["sequential_lost"] for r in results)
    summary["burst_delivered"] = sum(r["burst_delivered"] for r in results)
    summary["burst_sent"] = sum(r["burst_sent"] for r in results)
    return summary


def paired_ratios(prism: List[dict], base: List[dict]) -> dict:
    """PRISM / simple_switch_13 for each pair of runs that ran back to back, then the median."""

    def ratio(key: str) -> float:
        return statistics.median(p[key] / max(1e-9, b[key]) for p, b in zip(prism, base))

    return {"latency_median": ratio("latency_ms_median"), "latency_p90": ratio("latency_ms_p90"),
            "burst_rate": ratio("burst_flows_per_s")}  # fmt: skip


def report(args: argparse.Namespace, summaries: Dict[str, dict], ratios: dict) -> None:
    print(f"\n{args.flows} sequential flows and a burst of {args.burst} per run, {args.repeat} networks per "
          f"controller alternating; medians of runs")  # fmt: skip
    print(f"  {'':<17} {'1st-pkt ms med':>14} {'p90':>6} {'max':>6} {'lost':>5} | "
          f"{'burst flows/s':>13} {'delivered':>10} {'offered/s':>9} {'burst ms med':>12} {'p90':>6}")
    for name, s in summaries.items():
        print(f"  {name:<17} {s['latency_ms_median']:14.2f} {s['latency_ms_p90']:6.2f} {s['latency_ms_max']:6.1f} "
              f"{s['sequential_lost']:5d} | {s['burst_flows_per_s']:13.0f} "
              f"{s['burst_delivered']:>5}/{s['burst_sent']:<4} {s['burst_offered_per_s']:9.0f} "
              f"{s['burst_latency_ms_median']:12.1f} {s['burst_latency_ms_p90']:6.1f}")  # fmt: skip
    print("  1st-pkt: one new flow at a time, client send to server kernel receive; burst: flows back to back,\n"
          "  delivered first packets / (last arrival - first send); offered/s: the sender's own rate")
    print(f"PRISM / simple_switch_13 (median of back-to-back pairs): first-packet latency "
          f"{ratios['latency_median']:.2f}x (p90 {ratios['latency_p90']:.2f}x), "
          f"burst setup rate {ratios['burst_rate']:.2f}x")  # fmt: skip
    print("  simple_switch_13 ran with no cells in the path and a new source MAC per flow (the only kind of\n"
          "  new flow an L2 learning switch sets up): its figures are the controller + switch cost of a new\n"
          "  flow; PRISM's also hold the first packet's pass through its primary cell (and a mirror copy).")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flows", type=int, default=200, help="sequential flows per run (default 200)")
    parser.add_argument("--burst", type=int, default=200,
                        help="flows in the burst per run (default 200; a switch port queues about 256)")
    parser.add_argument("--repeat", type=int, default=2, help="networks per controller, alternating (default 2)")
    parser.add_argument("--interval-ms", type=float, default=20.0,
                        help="spacing of the sequential flows (default 20)")  # fmt: skip
    parser.add_argument("--warm-up", type=int, default=20, help="flows before measuring (default 20)")
    parser.add_argument("--idle-timeout", type=int, default=30, help="PRISM's FSC idle timeout, s (default 30)")
    parser.add_argument("--no-prediction", action="store_false", dest="prediction",
                        help="PRISM with FixedPolicy rf=1 (default: the shipped model decides mirrors)")
    parser.add_argument("--json", type=Path, help="write every figure to this file")
    parser.add_argument("--workdir", type=Path, help="keep logs here (default: a temporary folder)")
    args = parser.parse_args(argv)
    if not 2 <= args.flows <= MAX_FLOWS or not 2 <= args.burst <= MAX_BURST or args.repeat < 1 or args.warm_up < 1:
        parser.error(f"--flows must be 2..{MAX_FLOWS}, --burst 2..{MAX_BURST}, --repeat and --warm-up >= 1")
    if os.geteuid() != 0:
        print("e2e_flow_setup: needs root (Mininet); run it as root after `make setup`", file=sys.stderr)
        return 2
    started = time.monotonic()
    results: Dict[str, List[dict]] = {c.name: [] for c in CONTROLLERS}
    with tempfile.TemporaryDirectory(prefix="prism-e2e-") as scratch:
        base = (args.workdir or Path(scratch)).resolve()
        for index in range(args.repeat):
            for controller in CONTROLLERS:
                workdir = base / f"{controller.name}-{index + 1}"
                result = analyse(run_once(controller, args, workdir))
                results[controller.name].append(result)
                print(f"run {index + 1}/{args.repeat} {controller.name:<17}: first packet median "
                      f"{result['latency_ms_median']:.2f} ms (p90 {result['latency_ms_p90']:.2f}, "
                      f"lost {result['sequential_lost']}); burst {result['burst_flows_per_s']:.0f} flows/s "
                      f"({result['burst_delivered']}/{result['burst_sent']} delivered); "
                      f"controller: {result['controller_view']}", flush=True)  # fmt: skip
    summaries = {name: summarize(runs) for name, runs in results.items()}
    ratios = paired_ratios(results[PRISM.name], results[SIMPLE_SWITCH.name])
    report(args, summaries, ratios)
    policy = "predictive (shipped model)" if args.prediction else "FixedPolicy rf=1"
    print(f"  PRISM policy: {policy}; {time.monotonic() - started:.0f} s")
    if args.json:
        document = {"benchmark": "e2e_flow_setup",
                    "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                    "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                                "load_average": os.getloadavg()},
                    "summary": summaries, "ratios": ratios, "runs": results}  # fmt: skip
        args.json.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
