"""Controller cost per new flow: PRISM's Mirroring Director against Ryu's simple_switch_13, same packet-ins.

Each controller runs in its own ``ryu-manager`` on loopback, both for the
whole run, each facing a scripted OpenFlow 1.3 switch of this process
(``benchmarks/harness``): handshake, then a warm-up (hosts learnt, PRISM's
profile groups created). Then blocks alternate, PRISM, simple_switch_13,
PRISM ..., each controller getting the same packet-ins in its block, so that
a busy machine slows both alike and every ratio is taken between two blocks
that ran back to back. A block is:

- ECHO round trips: the framework's floor (Ryu answers them, no app sees them);
- sequential: ``--flows`` new flows, one packet-in in flight; the time from
  sending it to the last message of its answer (the PACKET_OUT) is the
  latency per new flow;
- pipelined: ``--flows`` other new flows, ``--window`` in flight; new flows
  per second, and the controller process's CPU time per new flow (from
  ``/proc/<pid>/task/*/schedstat``). That CPU time is the cost the target is
  about: Ryu runs an app on one thread, so it is the work done per new flow,
  however much of the machine other processes take; wall-clock rates also
  depend on how long the controller waited for a CPU, printed as "waiting".

Each packet-in is the first frame of a new flow (TCP SYNs and UDP datagrams
from one edge port to a host on another). A new flow's answer is PRISM's two
Flow State Cache entries and its packet-out through the profile group, and
simple_switch_13's L2 entry and packet-out; the harness counts the flow mods
per packet-in and prints them. PRISM runs as configured for production: with
the shipped model (``--model``, ``none`` for a FixedPolicy), so every new
flow's features and prediction are in its cost, and with its management
channel sending the cells' ``assign`` batches to UDP sinks of this process.
Every ryu-manager started is stopped by its PID, on errors and Ctrl-C too.

    .venv/bin/python benchmarks/controller_packet_in.py [--flows 1000] [--repeat 6] [--window 32] [--json FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import socket
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.harness.openflow_peer import PeerError, PeerProtocol, ScriptedSwitch  # noqa: E402
from mininet_topos.ryu_process import RyuProcess, RyuStartError, ryu_manager  # noqa: E402
from benchmarks.harness.workload import CELL_PORTS, DP_ID, EDGE_PORTS, new_flows, warm_up_flows  # noqa: E402
from prism.config.load import parse_config  # noqa: E402
from prism.openflow.changes import COOKIE_PIPELINE, TABLE_FSC  # noqa: E402

DEFAULT_MODEL = ROOT / "models" / "first_packet"  #: --policy first_packet's model
SHIPPED_CONFIG = ROOT / "examples" / "prism.yaml"
DEFAULT_BUDGET = 0.25  #: as the configuration's default (prism/config/telemetry.py)
TARGET_RATIO = 2.0  #: the issue's target: PRISM within 2x of simple_switch_13's cost per new flow
TIMEOUT_S = 10.0
NS_PER_US = 1_000
NS_PER_S = 1_000_000_000
UDP_SINK_BUFFER = 4 << 20
PERCENT = 100.0


@dataclass(frozen=True)
class Controller:
    """One controller under test: how to launch it and where its table-miss sends packet-ins from."""

    name: str
    apps: Tuple[str, ...]
    table_id: int
    cookie: int


PRISM = Controller("PRISM director", ("ryu_apps/mirroring_director.py",), TABLE_FSC, COOKIE_PIPELINE)
SIMPLE_SWITCH = Controller("simple_switch_13", ("ryu.app.simple_switch_13",), 0, 0)
CONTROLLERS = (PRISM, SIMPLE_SWITCH)  #: the order of every block


def prism_config_text(
    listen_port: int, sink_ports: Dict[str, int], replication_factor: int, model: Optional[Path], budget: float,
    prediction: Optional[dict] = None,
) -> str:
    """The PRISM configuration the benchmark's switch matches (cells' management on UDP sinks).

    With ``prediction`` (a ``prediction`` section, e.g. the shipped one), that policy; else with
    ``model``, the first-packet predictive policy: every new flow's profile comes from the model.
    """
    cells = "\n".join(
        f'      - {{id: {cell_id}, port: {port}, mgmt: "127.0.0.1:{sink_ports[cell_id]}"}}'
        for cell_id, port in CELL_PORTS.items()
    )
    text = (
        f"idle_timeout: 60\ndefault_replication_factor: {replication_factor}\n"
        f'management:\n  listen: "127.0.0.1:{listen_port}"\n'
        f"switches:\n  - dpid: {DP_ID:#x}\n    name: bench\n    cells:\n{cells}\n"
        f"    edge_ports: [{', '.join(map(str, EDGE_PORTS))}]\n"
    )
    if prediction is not None:
        text += yaml.safe_dump({"prediction": prediction}, sort_keys=False)
    elif model is not None:
        text += f'prediction:\n  policy: first_packet\n  model: "{model.resolve()}"\n  budget: {budget}\n'
    return text


def shipped_prediction(path: Path = SHIPPED_CONFIG) -> Optional[dict]:
    """The shipped configuration's ``prediction`` section (a relative model made absolute), or None."""
    prediction = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("prediction")
    if isinstance(prediction, dict) and prediction.get("model"):
        prediction["model"] = str((path.parent / prediction["model"]).resolve())
    return prediction


def udp_sinks() -> Dict[str, socket.socket]:
    """One bound UDP socket per cell, standing in for the cells' management addresses."""
    sinks = {}
    for cell_id in CELL_PORTS:
        sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_SINK_BUFFER)
        sink.bind(("127.0.0.1", 0))
        sink.setblocking(False)
        sinks[cell_id] = sink
    return sinks


def drain(sinks: Dict[str, socket.socket]) -> int:
    """Datagrams waiting in the sinks (read and dropped)."""
    count = 0
    for sink in sinks.values():
        while True:
            try:
                sink.recv(65535)
            except BlockingIOError:
                break
            count += 1
    return count


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (``fraction`` in 0..1)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


def start_switch(controller: Controller, ryu, warm_up: Sequence) -> ScriptedSwitch:
    """Connect a scripted switch to ``ryu``, handshake, and send the warm-up flows one by one."""
    protocol = PeerProtocol(DP_ID, sorted([*CELL_PORTS.values(), *EDGE_PORTS]))
    switch = ScriptedSwitch.connect(("127.0.0.1", ryu.ofp_port), protocol, controller.table_id,
                                    controller.cookie, TIMEOUT_S)  # fmt: skip
    try:
        switch.handshake(TIMEOUT_S)
        switch.exchange(warm_up, 1, TIMEOUT_S)
    except BaseException:
        switch.close()
        raise
    return switch


def measure(
    switch: ScriptedSwitch, ryu: RyuProcess, sequential: Sequence, pipelined: Sequence, window: int, echoes: int
) -> dict:
    """One block: ECHO round trips, then the sequential and the pipelined packet-ins."""
    errors_before = len(switch.protocol.errors)
    stray_before = switch.protocol.unexpected_packet_outs
    echo = switch.echo_round_trips_us(echoes, TIMEOUT_S)
    cpu_start, wait_start = ryu.schedstat_ns()
    one_by_one = switch.exchange(sequential, 1, TIMEOUT_S)
    cpu_middle, _ = ryu.schedstat_ns()
    in_flight = switch.exchange(pipelined, window, TIMEOUT_S)
    cpu_end, wait_end = ryu.schedstat_ns()
    both = (one_by_one, in_flight)
    return {
        "cpu_us_per_flow": (cpu_end - cpu_middle) / NS_PER_US / in_flight.flows,
        "cpu_us_per_flow_sequential": (cpu_middle - cpu_start) / NS_PER_US / one_by_one.flows,
        "flows_per_s": in_flight.flows_per_s,
        "us_per_flow": 1e6 / in_flight.flows_per_s,
        "controller_waiting_share": (wait_end - wait_start) / NS_PER_S / (one_by_one.wall_s + in_flight.wall_s),
        "latency_us": one_by_one.latencies_us,
        "pipelined_latency_us_median": statistics.median(in_flight.latencies_us),
        "echo_us_median": statistics.median(echo),
        "peer_cpu_share": in_flight.peer_cpu_s / in_flight.wall_s,
        "flow_mods_per_flow": dict(Counter(n for r in both for n in r.flow_mods)),
        "group_mods": sum(sum(r.group_mods) for r in both),
        "errors_from_controller": len(switch.protocol.errors) - errors_before,
        "unexpected_packet_outs": switch.protocol.unexpected_packet_outs - stray_before,
    }


def summarize(blocks: List[dict]) -> dict:
    """One controller's figures over every block (medians; latency percentiles over all flows)."""
    latencies = [v for block in blocks for v in block["latency_us"]]

    def median(key: str) -> float:
        return statistics.median(block[key] for block in blocks)

    return {
        "cpu_us_per_flow": median("cpu_us_per_flow"),
        "flows_per_s": median("flows_per_s"),
        "us_per_flow": median("us_per_flow"),
        "latency_us_median": statistics.median(latencies),
        "latency_us_p90": percentile(latencies, 0.9),
        "echo_us_median": median("echo_us_median"),
        "controller_waiting_share": median("controller_waiting_share"),
        "peer_cpu_share": max(block["peer_cpu_share"] for block in blocks),
        "flow_mods_per_flow": dict(sum((Counter(b["flow_mods_per_flow"]) for b in blocks), Counter())),
        "group_mods": sum(block["group_mods"] for block in blocks),
        "problems": sum(b["errors_from_controller"] + b["unexpected_packet_outs"] for b in blocks),
    }


def paired_ratios(prism: List[dict], base: List[dict]) -> dict:
    """PRISM / simple_switch_13, block by block (each pair ran back to back), then the median."""

    def ratio(figure: Callable[[dict], float]) -> float:
        return statistics.median(figure(p) / max(1e-9, figure(b)) for p, b in zip(prism, base))

    def latency(block: dict) -> float:
        return statistics.median(block["latency_us"])

    return {
        "cpu": ratio(lambda block: block["cpu_us_per_flow"]),
        "wall": ratio(lambda block: block["us_per_flow"]),
        "latency": ratio(latency),
        "latency_above_echo": ratio(lambda block: latency(block) - block["echo_us_median"]),
    }


def report(args, summaries: Dict[str, dict], ratios: dict, mgmt_datagrams: int, problems: List[str]) -> None:
    print(f"\n{args.flows} new flows per mode and block, {args.repeat} blocks per controller alternating, "
          f"pipelined window {args.window}; medians of blocks")  # fmt: skip
    print(f"  {'':<17} {'CPU us':>7} {'flows/s':>8} {'us/flow':>8} {'lat med':>8} {'lat p90':>8} {'echo':>6} "
          f"{'waiting':>8}  flow mods per new flow")  # fmt: skip
    for name, s in summaries.items():
        mods = ", ".join(f"{n}: {c}" for n, c in sorted(s["flow_mods_per_flow"].items()))
        print(f"  {name:<17} {s['cpu_us_per_flow']:7.0f} {s['flows_per_s']:8.0f} {s['us_per_flow']:8.0f} "
              f"{s['latency_us_median']:8.0f} {s['latency_us_p90']:8.0f} {s['echo_us_median']:6.0f} "
              f"{s['controller_waiting_share'] * PERCENT:7.0f}%  {{{mods}}}")  # fmt: skip
    print("  CPU us: the controller process's CPU time per new flow, pipelined (what it costs, whatever else runs);\n"
          "  flows/s, us/flow: wall clock, pipelined; lat: one packet-in in flight, from sending it to the last\n"
          "  message of its answer (all flows); echo: ECHO round trip, the framework's floor; waiting: share of the\n"
          "  measured time the controller was ready but waited for a CPU (other load); times in microseconds")
    met = "met" if ratios["cpu"] <= TARGET_RATIO else "NOT met"
    print(f"PRISM / simple_switch_13 cost per new flow (controller CPU, median of paired blocks): "
          f"{ratios['cpu']:.2f} (target <= {TARGET_RATIO:g}: {met})")  # fmt: skip
    prism, base = summaries[PRISM.name], summaries[SIMPLE_SWITCH.name]
    print(f"  wall clock: pipelined {ratios['wall']:.2f}, latency {ratios['latency']:.2f}, latency above the echo "
          f"floor {ratios['latency_above_echo']:.2f}")  # fmt: skip
    print(f"  PRISM sent {mgmt_datagrams} management datagrams to the cells' sinks; the peer used at most "
          f"{prism['peer_cpu_share'] * PERCENT:.0f}% / {base['peer_cpu_share'] * PERCENT:.0f}% of a CPU while "
          f"pipelining")  # fmt: skip
    for problem in problems:
        print(f"WARNING: {problem}")


def _sigterm(signum, frame):  # pragma: no cover - signal path
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flows", type=int, default=1000, help="new flows per mode and block (default 1000)")
    parser.add_argument("--repeat", type=int, default=6, help="blocks per controller, alternating (default 6)")
    parser.add_argument("--window", type=int, default=32, help="packet-ins in flight, pipelined (default 32)")
    parser.add_argument("--warm-up", type=int, default=200, help="flows before measuring (default 200)")
    parser.add_argument("--echoes", type=int, default=100, help="ECHO round trips per block (default 100)")
    parser.add_argument("--policy", choices=("shipped", "first_packet", "fixed"), default="shipped",
                        help="PRISM's policy: the shipped configuration's (examples/prism.yaml, default), the "
                             "first-packet predictive policy with --model, or a FixedPolicy")  # fmt: skip
    parser.add_argument("--model", default=str(DEFAULT_MODEL),
                        help="model directory for PRISM's predictive policy, or 'none' for a FixedPolicy "
                             "(default models/first_packet)")  # fmt: skip
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET,
                        help=f"the predictive policy's mirror budget (default {DEFAULT_BUDGET})")  # fmt: skip
    parser.add_argument("--replication-factor", type=int, default=1,
                        help="PRISM's mirrors per flow without a model (default 1)")  # fmt: skip
    parser.add_argument("--json", type=Path, help="write every figure to this file")
    parser.add_argument("--log-dir", type=Path, help="keep ryu-manager logs here (default: a temporary folder)")
    args = parser.parse_args()
    if args.flows < 2 or args.repeat < 1 or args.window < 1:
        parser.error("--flows must be >= 2, --repeat and --window >= 1")
    signal.signal(signal.SIGTERM, _sigterm)

    model = None if args.model == "none" or args.policy == "fixed" else Path(args.model)
    prediction = shipped_prediction() if args.policy == "shipped" else None
    if args.policy == "shipped":
        model = None  # the shipped configuration's policy, or its fixed replication factor
    elif model is not None and not (model / "manifest.json").exists():
        parser.error(f"--model {model}: no model there (manifest.json missing); give a model directory or 'none'")
    policy = f"predictive policy, model {args.model}, budget {args.budget:g}" if model else \
        f"FixedPolicy, replication factor {args.replication_factor}"  # fmt: skip
    if prediction is not None:
        policy = f"the shipped configuration's policy: {prediction}"
    print(f"PRISM: {policy}", flush=True)
    warm_up = warm_up_flows(args.warm_up)
    sinks = udp_sinks()
    runs: Dict[str, List[dict]] = {c.name: [] for c in CONTROLLERS}
    problems: List[str] = []
    ryus: Dict[str, object] = {}
    current = CONTROLLERS[0]  # the controller being started or measured, for error messages
    started = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="prism-bench-") as scratch, contextlib.ExitStack() as stack:
            log_dir = args.log_dir or Path(scratch)
            log_dir.mkdir(parents=True, exist_ok=True)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                probe.bind(("127.0.0.1", 0))
                listen_port = probe.getsockname()[1]
            config_text = prism_config_text(
                listen_port, {c: s.getsockname()[1] for c, s in sinks.items()}, args.replication_factor,
                model, args.budget, prediction,
            )  # fmt: skip
            parse_config(config_text, "benchmark config")  # a mistake here is ours: fail before starting
            config_path = log_dir / "prism-bench.yaml"
            config_path.write_text(config_text, encoding="utf-8")
            envs = {PRISM.name: {"PRISM_CONFIG": str(config_path)}, SIMPLE_SWITCH.name: {}}
            switches = {}
            for controller in CONTROLLERS:
                current = controller
                log_path = log_dir / f"{controller.apps[0].replace('/', '_')}.log"
                ryus[controller.name] = ryu = stack.enter_context(
                    ryu_manager(controller.apps, log_path, ROOT, envs[controller.name])
                )
                switches[controller.name] = start_switch(controller, ryu, warm_up)
                stack.callback(switches[controller.name].close)
            for block in range(args.repeat):
                first = 2 * args.flows * block
                sequential, pipelined = new_flows(args.flows, first), new_flows(args.flows, first + args.flows)
                for controller in CONTROLLERS:
                    current = controller
                    run = measure(switches[controller.name], ryus[controller.name], sequential, pipelined,
                                  args.window, args.echoes)  # fmt: skip
                    runs[controller.name].append(run)
                    print(f"block {block + 1}/{args.repeat} {controller.name:<17}: "
                          f"{run['cpu_us_per_flow']:5.0f} us CPU per new flow, {run['flows_per_s']:5.0f} flows/s, "
                          f"latency median {statistics.median(run['latency_us']):5.0f} us", flush=True)  # fmt: skip
            for name, ryu in ryus.items():
                if ryu.proc.poll() is not None:
                    problems.append(f"{name}'s ryu-manager exited during the run (code {ryu.proc.returncode})")
                tracebacks = ryu.log_path.read_text(encoding="utf-8", errors="replace").count("Traceback")
                if tracebacks:
                    problems.append(f"{name}'s log holds {tracebacks} traceback(s): {ryu.log_path}")
            mgmt_datagrams = drain(sinks)
    except (PeerError, RyuStartError) as error:
        tail = ryus[current.name].log_tail() if current.name in ryus else ""
        print(f"benchmark failed ({current.name}): {error}\n{tail}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: every ryu-manager started was stopped", file=sys.stderr)
        return 130
    finally:
        for sink in sinks.values():
            sink.close()
    summaries = {name: summarize(blocks) for name, blocks in runs.items()}
    for name, summary in summaries.items():
        if summary["problems"]:
            problems.append(f"{name}: {summary['problems']} controller error(s) or stray packet-out(s)")
    ratios = paired_ratios(runs[PRISM.name], runs[SIMPLE_SWITCH.name])
    report(args, summaries, ratios, mgmt_datagrams, problems)
    print(f"  PRISM ran with the {policy}")
    print(f"({time.monotonic() - started:.0f} s; logs {'in ' + str(args.log_dir) if args.log_dir else 'removed'})")
    if args.json:
        for blocks in runs.values():
            for run in blocks:
                latencies = run.pop("latency_us")
                run["latency_us_median"] = statistics.median(latencies)
                run["latency_us_p90"] = percentile(latencies, 0.9)
        document = {
            "benchmark": "controller_packet_in",
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "prism_policy": policy,
            "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                        "load_average": os.getloadavg()},  # fmt: skip
            "summary": summaries,
            "ratios": {**ratios, "target": TARGET_RATIO, "target_met": ratios["cpu"] <= TARGET_RATIO},
            "problems": problems,
            "management_datagrams": mgmt_datagrams,
            "blocks": runs,
        }
        args.json.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    return 0

if __name__ == "__main__":
    sys.exit(main())
