"""New flows per second with 1, 2 and 3 controllers sharing the switches through etcd, and takeover time.

One run, one private etcd on loopback. For each repeat, for k = 1, 2, 3
(interleaved, so that a busy machine slows every k alike): k ryu-managers with
the Mirroring Director and the same configuration (``--switches`` switches,
an ``etcd`` section naming a cluster of its own), and ``--switches`` scripted
OpenFlow 1.3 switches of this process (``benchmarks/harness``), each connected
to every controller as Open vSwitch is to a list. Each switch grants every
role request; the controller whose MASTER request came last is its master.
When every switch has a master that has taken it over (asked for its ports
again), each master connection gets ``--flows`` new flows (TCP SYNs and UDP
datagrams, ``--window`` in flight per switch, all switches at once) and the
wall time until the last answer gives new flows per second.

After the last k = 2 and k = 3 phase, the master of switch 1 is killed
(SIGKILL by PID): the takeover time is from the kill to the MASTER request of
its successor arriving at the switch, and to the successor asking for the
ports (tables adopted); then ``--flows-after`` new flows are sent to it.

Every process started is ended by its PID. Figures depend on the machine's
cores: k ryu-managers need k cores to run k times as fast (``nproc`` is printed).

    .venv/bin/python benchmarks/cluster_scale.py [--switches 6] [--flows 1000] [--repeat 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import selectors
import signal
import socket
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.harness import openflow_wire as wire  # noqa: E402
from benchmarks.harness.openflow_peer import PeerProtocol, ScriptedSwitch  # noqa: E402
from benchmarks.harness.ryu_process import ryu_manager  # noqa: E402
from benchmarks.harness.workload import CELL_PORTS, EDGE_PORTS, new_flows, warm_up_flows  # noqa: E402
from mininet_topos.etcd_process import EtcdProcess  # noqa: E402
from prism.openflow.changes import COOKIE_PIPELINE, TABLE_FSC  # noqa: E402

DIRECTOR_APP = str(ROOT / "ryu_apps" / "mirroring_director.py")
LEASE_S = 0.75
SETTLE_TIMEOUT_S = 60.0
ANSWER_TIMEOUT_S = 30.0
RECV_BYTES = 1 << 16
WARM_UP_FLOWS = 64


def config_text(switches: int, endpoint: str, cluster: str) -> str:
    cells = "\n".join(f"      - {{id: {cell_id}, port: {port}}}" for cell_id, port in CELL_PORTS.items())
    text = "idle_timeout: 60\ndefault_replication_factor: 1\nswitches:\n"
    for dp_id in range(1, switches + 1):
        text += (f"  - dpid: {dp_id}\n    name: s{dp_id}\n    cells:\n{cells}\n"
                 f"    edge_ports: [{', '.join(map(str, EDGE_PORTS))}]\n")
    return text + f'etcd:\n  endpoints: ["{endpoint}"]\n  lease_s: {LEASE_S}\n  cluster: {cluster}\n'


@dataclass
class Connection:
    """One switch's connection to one controller."""

    dp_id: int
    controller: int
    peer: ScriptedSwitch
    closed: bool = False

    @property
    def protocol(self) -> PeerProtocol:
        return self.peer.protocol

    def master_since(self) -> Optional[int]:
        """Arrival (ns) of the last MASTER request, if MASTER is the role it holds."""
        masters = [ns for ns, role, _gen in self.protocol.role_requests if role == wire.OFPCR_ROLE_MASTER]
        return masters[-1] if masters and self.protocol.role == wire.OFPCR_ROLE_MASTER else None


class Fabric:
    """Every scripted switch's connections, served from one selector loop."""

    def __init__(self, switches: int, controllers: List) -> None:
        self.selector = selectors.DefaultSelector()
        self.connections: List[Connection] = []
        for dp_id in range(1, switches + 1):
            for index, ryu in enumerate(controllers):
                protocol = PeerProtocol(dp_id, [*CELL_PORTS.values(), *EDGE_PORTS])
                peer = ScriptedSwitch.connect(("127.0.0.1", ryu.ofp_port), protocol, TABLE_FSC,
                                              COOKIE_PIPELINE, SETTLE_TIMEOUT_S)  # fmt: skip
                peer.sock.sendall(wire.hello(1))
                peer.sock.setblocking(False)
                connection = Connection(dp_id, index, peer)
                self.selector.register(peer.sock, selectors.EVENT_READ, connection)
                self.connections.append(connection)

    def pump(self, timeout: float) -> None:
        """Receive and answer whatever arrives within ``timeout``."""
        for key, _events in self.selector.select(timeout):
            connection: Connection = key.data
            try:
                data = connection.peer.sock.recv(RECV_BYTES)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = b""
            if not data:
                self.selector.unregister(connection.peer.sock)
                connection.closed = True
                continue
            reply = connection.protocol.receive(data, time.perf_counter_ns())
            if reply:
                connection.peer.sock.setblocking(True)
                connection.peer.sock.sendall(reply)
                connection.peer.sock.setblocking(False)

    def master(self, dp_id: int) -> Optional[Connection]:
        """The connection holding MASTER most recently granted, once it has asked for the ports again."""
        candidates = [(c.master_since(), c) for c in self.connections
                      if c.dp_id == dp_id and not c.closed and c.master_since() is not None]  # fmt: skip
        if not candidates:
            return None
        _since, connection = max(candidates, key=lambda item: item[0])
        return connection if connection.protocol.port_desc_replies >= 2 else None

    def settle(self, switches: int) -> Dict[int, Connection]:
        """Wait until every switch has an adopted master that stays for three leases."""
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        stable_since, last = None, None
        while time.monotonic() < deadline:
            self.pump(0.02)
            current = {dp_id: self.master(dp_id) for dp_id in range(1, switches + 1)}
            if None in current.values():
                stable_since = None
                continue
            ids = {dp_id: id(c) for dp_id, c in current.items()}
            if ids != last:
                stable_since, last = time.monotonic(), ids
            elif time.monotonic() - stable_since > 3 * LEASE_S:
                return current
        raise RuntimeError("the switches' masters did not settle")

    def load(self, masters: Dict[int, Connection], flows: Dict[int, list], window: int) -> float:
        """Send every switch's new flows to its master, ``window`` in flight each; wall seconds."""
        state = {}
        for dp_id, connection in masters.items():
            frames = flows[dp_id]
            connection.protocol.begin([f.frame for f in frames])
            packets = [wire.packet_in(f.frame, f.in_port, TABLE_FSC, COOKIE_PIPELINE, i + 1000)
                       for i, f in enumerate(frames)]  # fmt: skip
            state[dp_id] = [packets, 0]
        started = time.perf_counter()
        deadline = time.monotonic() + ANSWER_TIMEOUT_S

        def top_up():
            for dp_id, connection in masters.items():
                packets, sent = state[dp_id]
                answered = len(connection.protocol.completions)
                while sent < len(packets) and sent - answered < window:
                    connection.peer.sock.setblocking(True)
                    connection.peer.sock.sendall(packets[sent])
                    connection.peer.sock.setblocking(False)
                    sent += 1
                state[dp_id][1] = sent

        top_up()
        while any(len(c.protocol.completions) < len(flows[d]) for d, c in masters.items()):
            if time.monotonic() > deadline:
                done = {d: len(c.protocol.completions) for d, c in masters.items()}
                raise RuntimeError(f"answers stopped: {done} of {len(next(iter(flows.values())))} each")
            self.pump(0.05)
            top_up()
        return time.perf_counter() - started

    def close(self) -> None:
        for connection in self.connections:
            with contextlib.suppress(OSError):
                connection.peer.sock.close()
        self.selector.close()


def phase(k: int, args, etcd: EtcdProcess, workdir: Path, repeat: int, takeover: bool) -> dict:
    """k controllers, the switches, one measured load (and a takeover when asked)."""
    cluster = f"bench-k{k}-r{repeat}"
    config = workdir / f"{cluster}.yaml"
    config.write_text(config_text(args.switches, etcd.endpoint, cluster))
    result: dict = {"controllers": k}
    with contextlib.ExitStack() as stack:
        controllers = [
            stack.enter_context(ryu_manager([DIRECTOR_APP], workdir / f"{cluster}-ctl{i}.log", ROOT,
                                            {"PRISM_CONFIG": str(config), "PRISM_CONTROLLER_ID": f"ctl{i}"}))
            for i in range(1, k + 1)
        ]  # fmt: skip
        fabric = Fabric(args.switches, controllers)
        stack.callback(fabric.close)
        masters = fabric.settle(args.switches)
        result["masters_per_controller"] = [
            sum(1 for c in masters.values() if c.controller == i) for i in range(k)
        ]
        warm = {dp_id: warm_up_flows(WARM_UP_FLOWS) for dp_id in masters}
        fabric.load(masters, warm, args.window)
        flows = {dp_id: new_flows(args.flows, start=dp_id * 1_000_000) for dp_id in masters}
        cpu_before = [ryu.schedstat_ns() for ryu in controllers]
        wall = fabric.load(masters, flows, args.window)
        cpu_after = [ryu.schedstat_ns() for ryu in controllers]
        total = args.flows * len(masters)
        cpu_ns = sum(a[0] - b[0] for a, b in zip(cpu_after, cpu_before))
        waiting_ns = sum(a[1] - b[1] for a, b in zip(cpu_after, cpu_before))
        result.update(flows=total, wall_s=round(wall, 3), flows_per_s=round(total / wall, 1),
                      controller_cpu_us_per_flow=round(cpu_ns / total / 1e3, 1),
                      controller_waiting_s=round(waiting_ns / 1e9, 3))
        if takeover:
            victim = masters[1]
            killed_ns = time.perf_counter_ns()
            controllers[victim.controller].proc.send_signal(signal.SIGKILL)
            deadline = time.monotonic() + SETTLE_TIMEOUT_S
            successor = None
            while successor is None and time.monotonic() < deadline:
                fabric.pump(0.005)
                successor = fabric.master(1)
                if successor is victim:
                    successor = None
            if successor is None:
                raise RuntimeError("no successor took switch 1 over")
            adopted_ns = time.perf_counter_ns()
            role_ns = successor.master_since()
            after = {1: new_flows(args.flows_after, start=50_000_000)}
            fabric.load({1: successor}, after, args.window)
            result["takeover"] = {
                "role_ms": round((role_ns - killed_ns) / 1e6, 1),
                "adopted_ms": round((adopted_ns - killed_ns) / 1e6, 1),
                "new_flows_after": len(successor.protocol.completions),
            }
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--switches", type=int, default=6,
                        help="scripted switches (6: two per controller with 3 controllers)")
    parser.add_argument("--flows", type=int, default=1000, help="new flows per switch per phase")
    parser.add_argument("--window", type=int, default=32, help="packet-ins in flight per switch")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--flows-after", type=int, default=200, help="new flows sent to the new master")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    phases: List[dict] = []
    with tempfile.TemporaryDirectory(prefix="prism-cluster-bench.") as tmp:
        workdir = Path(tmp)
        with EtcdProcess(workdir / "etcd") as etcd:
            for repeat in range(args.repeat):
                for k in (1, 2, 3):
                    takeover = repeat == args.repeat - 1 and k > 1
                    phases.append({"repeat": repeat, **phase(k, args, etcd, workdir, repeat, takeover)})
                    print(json.dumps(phases[-1]), flush=True)
    by_k = {k: [p["flows_per_s"] for p in phases if p["controllers"] == k] for k in (1, 2, 3)}
    median = {k: statistics.median(v) for k, v in by_k.items()}
    summary = {
        "machine": {"cpus": os.cpu_count(), "loadavg": os.getloadavg()},
        "switches": args.switches, "flows_per_switch": args.flows, "window": args.window,
        "new_flows_per_s": {str(k): median[k] for k in median},
        "ratio_to_one_controller": {str(k): round(median[k] / median[1], 2) for k in median},
        "controller_cpu_us_per_flow": {
            str(k): statistics.median(p["controller_cpu_us_per_flow"] for p in phases if p["controllers"] == k)
            for k in (1, 2, 3)
        },
        "takeover": {str(p["controllers"]): p["takeover"] for p in phases if "takeover" in p},
        "phases": phases,
    }  # fmt: skip
    print()
    print(f"{args.switches} scripted switches, {args.flows} new flows each per phase, window {args.window}, "
          f"{os.cpu_count()} CPUs (load {os.getloadavg()[0]:.1f})")
    for k in (1, 2, 3):
        print(f"  {k} controller(s): {median[k]:8.0f} new flows/s (median of {len(by_k[k])}; "
              f"{median[k] / median[1]:.2f}x one controller); controller CPU "
              f"{summary['controller_cpu_us_per_flow'][str(k)]:.0f} us per new flow")
    for k, t in summary["takeover"].items():
        print(f"  takeover with {k} controllers: MASTER request {t['role_ms']} ms after SIGKILL, "
              f"{t['new_flows_after']} new flows answered by the new master")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
