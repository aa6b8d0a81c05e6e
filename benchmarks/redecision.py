"""The director's re-decision work at age milestones, in-process, with 10^4 live flows.

A director (three cells, the shipped configuration's aging policy, or the age
rule when it has none) holds ``--flows`` live flows born through packet-ins.
Then every flow crosses a milestone, reported as the cells report them
(``milestone`` messages of up to 500 flows):

- ``promote``: the first milestone, where the age rule promotes every flow
  with packets since birth: ``policy.redecide``, the move of both FSC
  entries (MODIFY_STRICT), the group bookkeeping, and the Ryu messages built
  and serialized as the app sends them; then the tick that turns the moves
  into ``assign`` and per-flow ``seed`` messages;
- ``keep``: the next milestone with no packets since (the policy keeps the
  flow: the lookup and ``redecide`` only).

A new flow's packet-in (``on_packet_in`` and its Ryu messages, serialized),
timed in the same round, is the yardstick: a ratio holds on a busy machine.

Each is timed per reported flow; rounds are repeated on fresh directors and
the median is printed, with the work per second if every one of the live
flows crossed a milestone within one second (the worst case: a burst of flows
born together). ``parse_frame`` per flow is printed beside as a yardstick.

    .venv/bin/python benchmarks/redecision.py [--flows 10000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402
from ryu.ofproto import ofproto_protocol, ofproto_v1_3  # noqa: E402

from benchmarks.harness.workload import CELL_PORTS, DP_ID, EDGE_PORTS, new_flows, warm_up_flows  # noqa: E402
from prism.director.actions import split_decisions  # noqa: E402
from prism.config.load import parse_config  # noqa: E402
from prism.director.core import MirroringDirector  # noqa: E402
from prism.flows.identity import parse_frame  # noqa: E402
from prism.openflow.changes import TABLE_FSC  # noqa: E402
from prism.policy.aging import AgingPolicy, settings_from_config  # noqa: E402
from prism.placement.ring import HashRing  # noqa: E402
from ryu_apps.ofmsg import to_ofmsgs  # noqa: E402

SHIPPED_CONFIG = ROOT / "examples" / "prism.yaml"
BATCH = 500  #: flows per ``milestone`` message (prism.mgmt.protocol.MAX_MILESTONES_PER_MESSAGE)
US = 1e6


def aging_settings():
    """The shipped configuration's aging settings without its model (the age rule)."""
    shipped = (yaml.safe_load(SHIPPED_CONFIG.read_text()) or {}).get("prediction") or {}
    shipped = {k: v for k, v in shipped.items() if k not in ("model", "policy")}
    cells = "\n".join(f"      - {{id: {cell}, port: {port}}}" for cell, port in CELL_PORTS.items())
    text = (f"max_replication_factor: 1\nprediction: {yaml.safe_dump(shipped, default_flow_style=True).strip()}\n"
            f"switches:\n  - dpid: {DP_ID}\n    cells:\n{cells}\n    edge_ports: {list(EDGE_PORTS)}\n")  # fmt: skip
    config = parse_config(text, "redecision")
    return config, settings_from_config(config.prediction)


def one_round(count: int) -> Dict[str, float]:
    config, settings = aging_settings()
    switch = config.switches[DP_ID]
    ring = HashRing(list(CELL_PORTS))
    director = MirroringDirector(switch, 60, AgingPolicy(ring, 1, settings), ring=ring)
    datapath = ofproto_protocol.ProtocolDesc(ofproto_v1_3.OFP_VERSION)
    director.on_switch_connect(0.0)
    for flow in warm_up_flows(200):
        director.on_packet_in(0.0, flow.in_port, TABLE_FSC, flow.frame)
    born = new_flows(count)
    start = time.perf_counter()
    for flow in born:  # the yardstick: a new flow's packet-in, as the app handles it
        for message in to_ofmsgs(datapath, director.on_packet_in(0.0, flow.in_port, TABLE_FSC, flow.frame)):
            message.serialize()
    new_flow = (time.perf_counter() - start) / len(born)
    director.tick(0.0)
    by_primary: Dict[str, List[int]] = {}
    for entry in director.flows:
        by_primary.setdefault(entry.profile.primary_cell, []).append(entry.flow_id)
    first, second = settings.milestones_s[0], settings.milestones_s[1]
    reports = [(cell, [(f, first, 10, 1000) for f in flows[i:i + BATCH]])
               for cell, flows in by_primary.items() for i in range(0, len(flows), BATCH)]  # fmt: skip
    flows = sum(len(r) for _, r in reports)
    start = time.perf_counter()
    sent = 0
    for cell, batch in reports:
        changes, _ = split_decisions(director.on_milestone(cell, batch, first))
        for message in to_ofmsgs(datapath, changes):
            message.serialize()
            sent += 1
    promote = time.perf_counter() - start
    start = time.perf_counter()
    messages = 0
    now = first
    while True:  # assigns go out ASSIGNS_PER_TICK at a time; then the seeds
        now += 0.05
        out = director.tick(now)
        messages += len(out)
        if not any(m.type in ("assign", "seed") for m in out):
            break
    tick = time.perf_counter() - start
    keep_reports = [(cell, [(f, second, 10, 1000) for f, *_ in batch]) for cell, batch in reports]
    start = time.perf_counter()
    for cell, batch in keep_reports:
        director.on_milestone(cell, batch, second)
    keep = time.perf_counter() - start
    frames = [flow.frame for flow in new_flows(2000)]
    start = time.perf_counter()
    for frame in frames:
        parse_frame(frame)
    parse = (time.perf_counter() - start) / len(frames)
    counters = director.counters
    return {
        "flows": flows, "promotions": counters.promotions, "ofmsgs": sent, "mgmt_messages": messages,
        "promote_us": promote / flows * US, "tick_us": tick / flows * US, "keep_us": keep / flows * US,
        "parse_frame_us": parse * US, "new_flow_us": new_flow * US,
    }  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flows", type=int, default=10_000, help="live flows (default 10000)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds, fresh directors (default 5)")
    args = parser.parse_args()
    logging.basicConfig(stream=open(os.devnull, "w"), level=logging.INFO)
    rounds = [one_round(args.flows) for _ in range(args.rounds)]
    median = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
    flows = median["flows"]
    print(f"live flows {flows:.0f}, promoted {median['promotions']:.0f}, "
          f"OpenFlow messages {median['ofmsgs']:.0f}, management messages {median['mgmt_messages']:.0f}")
    for name, label in (("promote_us", "promotion (redecide + move + Ryu messages)"),
                        ("tick_us", "its assign/seed messages (tick)"),
                        ("keep_us", "kept (lookup + redecide)"),
                        ("new_flow_us", "a new flow's packet-in (yardstick)"),
                        ("parse_frame_us", "parse_frame (yardstick)")):
        spread = [round(r[name], 2) for r in rounds]
        print(f"{label:<44}: {median[name]:7.2f} us per flow (rounds {spread})")
    ratios = [(r["promote_us"] + r["tick_us"]) / r["new_flow_us"] for r in rounds]
    print(f"a promotion with its messages costs {statistics.median(ratios):.2f}x a new flow's packet-in "
          f"(rounds {[round(x, 2) for x in ratios]})")
    burst = (median["promote_us"] + median["tick_us"]) * flows / US
    print(f"every live flow promoted within one second: {burst * 1000:.0f} ms of controller work "
          f"({burst:.1%} of a core); kept: {median['keep_us'] * flows / 1000:.0f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
