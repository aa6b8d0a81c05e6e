"""False failovers under steady traffic: BFD state changes and controller verdicts while nothing fails.

A PRISM network (3 cells speaking BFD with the switch, rf=1) carries steady
traffic for ``--minutes``: an iperf3 TCP transfer at 20 Mbit/s and the 1 ms
UDP probe at 1,000 datagrams/s. Nothing is failed. At the end it counts, per
cell: the switch's BFD flaps (``bfd_status:flap_count``, every change of
its forwarding decision), the cell's own session changes, and the
controller's verdicts (failures recorded after the traffic started, by
kind: ``bfd`` would be a false failover found by BFD, ``process`` one found
by missed heartbeats, the second opinion, measured in the same run). Any
count above zero is a false failover. The machine's load average is printed
with the figures: the point is a busy machine.

    .venv/bin/python benchmarks/bfd_soak.py [--minutes 10] [--interval 10] [--mult 4] [--json FILE]

Needs root and a running Open vSwitch (``make setup``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mininet_topos.demo import probe_source_port  # noqa: E402
from mininet_topos.probe import PROBE_PORT, analyse  # noqa: E402

IPERF_PORT = 5601
TCP_RATE = "20M"
SAMPLE_S = 10.0


def bfd_status(port: str) -> Dict[str, str]:
    """``ovs-vsctl get Interface PORT bfd_status`` as a dict."""
    text = subprocess.run(["ovs-vsctl", "get", "Interface", port, "bfd_status"], capture_output=True,
                          text=True, timeout=10).stdout.strip().strip("{}")  # fmt: skip
    status = {}
    for item in text.split(", "):
        if "=" in item:
            key, value = item.split("=", 1)
            status[key] = value.strip('"')
    return status


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="steady traffic, minutes (default 10)")
    parser.add_argument("--interval", type=int, default=10, help="BFD interval of the cells, ms (default 10)")
    parser.add_argument("--mult", type=int, default=4, help="BFD detection multiplier (default 4)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--workdir", type=Path, help="keep logs here (default: a temporary folder)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bfd_soak: needs root (Mininet)", file=sys.stderr)
        return 2
    from mininet_topos.harness import PrismNetwork, stop_process

    duration = args.minutes * 60
    bfd = {"interval": args.interval, "mult": args.mult, "switch_interval": 100}
    loads: List[float] = []
    with tempfile.TemporaryDirectory(prefix="prism-soak-") as scratch:
        workdir = (args.workdir or Path(scratch)).resolve()
        with PrismNetwork(workdir, clients=2, servers=1, cells=3, replication_factor=1, bfd=bfd) as net:
            server, client, prober = net.host("sv1"), net.host("c1"), net.host("c2")
            ports = {cell: net.cell_switch_port(cell) for cell in net.cell_names}
            flaps_before = {cell: int(bfd_status(port).get("flap_count", 0)) for cell, port in ports.items()}
            changes_before = {cell: net.cell_state(cell)["bfd"]["state_changes"] for cell in net.cell_names}
            sent_json, received_json = workdir / "probe-sent.json", workdir / "probe-received.json"
            net.background.append(server.popen(["iperf3", "-s", "-p", str(IPERF_PORT)],
                                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            net.background.append(server.popen(
                [sys.executable, "-m", "mininet_topos.probe", "sink", "--port", str(PROBE_PORT),
                 "--duration", str(duration + 10), "--json", str(received_json)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            time.sleep(1.0)
            started = time.time()
            iperf = client.popen(["iperf3", "-c", server.IP(), "-p", str(IPERF_PORT), "-t", str(int(duration)),
                                  "-b", TCP_RATE, "--connect-timeout", "3000"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
            sport = probe_source_port(net.cell_names, "cell1", prober.IP(), server.IP())
            probe = prober.popen([sys.executable, "-m", "mininet_topos.probe", "send", "--dst", server.IP(),
                                  "--port", str(PROBE_PORT), "--sport", str(sport), "--duration", str(duration),
                                  "--json", str(sent_json)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            net.background.extend([iperf, probe])
            end = time.monotonic() + duration
            while time.monotonic() < end:
                time.sleep(min(SAMPLE_S, max(0.0, end - time.monotonic())))
                loads.append(os.getloadavg()[0])
                print(f"  {duration - (end - time.monotonic()):5.0f} s: load {loads[-1]:.1f}, flaps "
                      f"{ {c: int(bfd_status(p).get('flap_count', 0)) - flaps_before[c] for c, p in ports.items()} }",
                      flush=True)  # fmt: skip
            probe.wait(timeout=30)
            flaps = {cell: int(bfd_status(port).get("flap_count", 0)) - flaps_before[cell]
                     for cell, port in ports.items()}  # fmt: skip
            changes = {cell: net.cell_state(cell)["bfd"]["state_changes"] - changes_before[cell]
                       for cell in net.cell_names}  # fmt: skip
            cells = net.controller.rest("/prism/v1/cells")["cells"]
            verdicts = {cell["id"]: [r["kind"] for r in cell["failure_history"] if r["detected_at"] >= started]
                        for cell in cells}  # fmt: skip
            stalls = net.controller.rest("/prism/v1/status")
            stop_process(iperf)
            for process in net.background:
                stop_process(process)
            sent, received = json.loads(sent_json.read_text()), json.loads(received_json.read_text())
            probe_figures = analyse(received["arrivals"], sent["sent"], None, rate_hz=sent["rate_hz"])
    result = {
        "minutes": args.minutes, "bfd": bfd, "load_average_samples": loads,
        "load_average_median": sorted(loads)[len(loads) // 2] if loads else None,
        "switch_bfd_flaps": flaps, "cell_bfd_state_changes": changes, "controller_verdicts": verdicts,
        "false_failovers": sum(len(v) for v in verdicts.values()),
        "probe": {"sent": probe_figures["sent"], "lost": probe_figures["lost"],
                  "max_gap_ms": probe_figures["baseline_max_gap_ms"]},
        "controller_cells_alive": stalls.get("cells_alive"),
    }  # fmt: skip
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
