"""Peak memory of the controller's and a cell's per-flow state at 10^6 flows, and that it stops growing at the bounds.

Each scenario runs in a fresh process (``ru_maxrss`` is per process) and
reports the peak resident size at the bound and after 20 % more flows than
the bound were offered, against a baseline of the same process before any
flow:

- ``director``: a switch's ``MirroringDirector`` (FSC copy, groups, failover
  assignments) fed new UDP flows through ``on_packet_in``, ``max_flows`` = N;
  flows beyond go to their primary unmirrored and untracked.
- ``tracker``: a cell's ``ConnTracker`` fed N established TCP connections as
  primary, ``max_flows`` = N; connections beyond are dropped (``table_full``).
- ``tombstones``: the tracker's tombstones after its N flows expire, ``max_tombstones`` = N / 2.
- ``assignments``: a cell's ``ControlView`` with ``max_assignments`` = N.

Usage: ``.venv/bin/python -m benchmarks.memory_bounds [--flows N]`` (default 10^5; the README figure: 10^6).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from typing import Dict
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # testkit (test tools) is not installed: import it from the checkout


DEFAULT_FLOWS = 100_000  #: `make bench` quick default; the README figure is --flows 1000000
OVERSHOOT = 1.2
SCENARIOS = ("director", "tracker", "tombstones", "assignments")


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _client(index: int) -> str:
    return f"10.{index >> 16 & 0xFF}.{index >> 8 & 0xFF}.{index & 0xFF}"


def new_director(max_flows: int):
    """A switch's MirroringDirector (rf 1 over 3 cells, FixedPolicy), connected, with no flow yet."""
    from prism.config.load import CellConfig, SwitchConfig
    from prism.director.core import MirroringDirector
    from prism.policy.base import FixedPolicy
    from prism.placement.ring import HashRing

    cells = {"c1": 1, "c2": 2, "c3": 3}
    switch = SwitchConfig(1, "s1", tuple(CellConfig(c, p) for c, p in cells.items()), (4, 5))
    ring = HashRing(list(cells))
    director = MirroringDirector(switch, 10, FixedPolicy(ring, 1), ring=ring, max_flows=max_flows)
    director.on_switch_connect(0.0)
    return director


def offer_new_flow(director, index: int) -> None:
    """The first packet of UDP flow ``index`` (a client address of its own) as a packet-in."""
    from testkit import oxm
    from prism.openflow.changes import TABLE_FSC

    frame = oxm.to_frame(oxm.udp_packet("02:00:00:00:00:04", "02:00:00:00:00:05", _client(index), "172.16.0.1",
                                        10000 + index % 50000, 53))  # fmt: skip
    director.on_packet_in(1.0, 4, TABLE_FSC, frame)


def run_director(flows: int) -> Dict:
    director = new_director(flows)
    base = _rss_mib()
    marks = {}
    total = int(flows * OVERSHOOT)
    for index in range(total):
        offer_new_flow(director, index)
        if index + 1 == flows:
            marks["at_bound_mib"] = _rss_mib()
    marks["after_overshoot_mib"] = _rss_mib()
    counters = director.counters
    return {"baseline_mib": base, **marks, "tracked": len(director.flows),
            "unprotected": counters.flows_unprotected, "offered": total}  # fmt: skip


def _tracker(flows: int, **config):
    from prism.cell.conntrack import ConnTracker, TrackerConfig
    from prism.flows.identity import TCP_ACK, TCP_SYN, parse_frame
    from testkit.packets import build_tcp_frame

    tracker = ConnTracker(TrackerConfig(max_flows=flows, **config))
    base = _rss_mib()
    marks = {}
    total = int(flows * OVERSHOOT)
    for index in range(total):
        client, port = _client(index), 10000 + index % 50000
        for frame in (build_tcp_frame(client, "172.16.0.1", port, 80, flags=TCP_SYN, seq=1000),
                      build_tcp_frame("172.16.0.1", client, 80, port, flags=TCP_SYN | TCP_ACK, seq=5000, ack=1001),
                      build_tcp_frame(client, "172.16.0.1", port, 80, flags=TCP_ACK, seq=1001, ack=5001)):  # fmt: skip
            tracker.process(parse_frame(frame), False, 1.0)
        if index + 1 == flows:
            marks["at_bound_mib"] = _rss_mib()
    marks["after_overshoot_mib"] = _rss_mib()
    return tracker, base, marks, total


def run_tracker(flows: int) -> Dict:
    tracker, base, marks, total = _tracker(flows)
    return {"baseline_mib": base, **marks, "tracked": len(tracker), "offered": total,
            "dropped_table_full": tracker.counters().get("dropped_table_full")}  # fmt: skip


def run_tombstones(flows: int) -> Dict:
    tracker, base, marks, total = _tracker(flows, max_tombstones=flows // 2)
    tracker.expire(1e7)
    counters = tracker.counters()
    return {"baseline_mib": base, "flows_peak_mib": marks["at_bound_mib"], "after_expiry_mib": _rss_mib(),
            "tombstones": counters["tombstones"], "tombstones_evicted": counters["tombstones_evicted"]}  # fmt: skip


def run_assignments(flows: int) -> Dict:
    from prism.cell.smm_view import ControlView

    view = ControlView("c1", 300.0, max_assignments=flows)
    base = _rss_mib()
    marks = {}
    total = int(flows * OVERSHOOT)
    chunk = 10_000
    for start in range(0, total, chunk):
        view.apply_assign({"flows": [[(1 << 40) + i, 7 + i % 64, ""] for i in range(start, start + chunk)]}, 1.0)
        if start + chunk == flows:
            marks["at_bound_mib"] = _rss_mib()
    marks["after_overshoot_mib"] = _rss_mib()
    return {"baseline_mib": base, **marks, "assignments": view.assignments, "evicted": view.assignments_evicted}


RUNNERS = {"director": run_director, "tracker": run_tracker, "tombstones": run_tombstones,
           "assignments": run_assignments}  # fmt: skip


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flows", type=int, default=DEFAULT_FLOWS)
    parser.add_argument("--scenario", choices=SCENARIOS, help="run one scenario in this process")
    args = parser.parse_args(argv)
    if args.scenario:
        start = time.perf_counter()
        result = RUNNERS[args.scenario](args.flows)
        result["seconds"] = round(time.perf_counter() - start, 1)
        print(json.dumps({k: round(v, 1) if isinstance(v, float) else v for k, v in result.items()}))
        return 0
    for scenario in SCENARIOS:
        out = subprocess.run([sys.executable, "-m", "benchmarks.memory_bounds", "--scenario", scenario,
                              "--flows", str(args.flows)], capture_output=True, text=True)  # fmt: skip
        print(f"{scenario:12s} {out.stdout.strip() or out.stderr.strip()[-500:]}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
