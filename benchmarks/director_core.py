"""Where PRISM's cost per new flow goes: the director's packet-in path by stage, in-process, beside simple_switch_13's.

No sockets and no event loop: the same PACKET_IN bytes the controller
benchmark sends are decoded with Ryu's parser, handed to
``MirroringDirector.on_packet_in`` (three cells, hosts learnt and profile
groups created by a warm-up), turned into Ryu messages by ``ryu_apps.ofmsg``
and serialized, as the Ryu app does. The director runs with a FixedPolicy
(replication factor 1), with the shipped configuration's policy
(``examples/prism.yaml``'s ``prediction``: the aging policy, which gives a new
flow its primary only and decides again at age milestones; once more with its
birth mirroring held open, so that every SYN-opened flow gets a mirror chosen
at birth, the path's worst case) and, when the
model loads, with the first-packet predictive policy (``--model``, default
``models/first_packet``; budget 0.25).
Each stage is also timed alone on prebuilt inputs; ``parse_frame`` is the
baseline. simple_switch_13's own handler runs on the same decoded messages
with a stand-in datapath that serializes what it is sent. Logging is at info
to /dev/null, as ``ryu-manager`` logs: simple_switch_13 writes a line per
packet-in; the director logs new flows at debug (what a line per new flow
would cost is timed as a separate stage). Rounds are interleaved and the
median is reported, so a busy machine slows every stage alike.

    .venv/bin/python benchmarks/director_core.py [--flows 3000] [--rounds 7] [--model models/first_packet | none]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ryu.app.simple_switch_13 import SimpleSwitch13  # noqa: E402
from ryu.controller import ofp_event  # noqa: E402
from ryu.ofproto import ofproto_parser, ofproto_protocol, ofproto_v1_3  # noqa: E402

from benchmarks.harness import openflow_wire as wire  # noqa: E402
from benchmarks.harness.workload import CELL_PORTS, DP_ID, EDGE_PORTS, new_flows, warm_up_flows  # noqa: E402
from prism.config.load import PrismConfig, load_config, parse_config  # noqa: E402
from prism.director.core import MirroringDirector  # noqa: E402
from prism.flows.identity import direction_match, parse_frame  # noqa: E402
from prism.openflow.changes import COOKIE_PIPELINE, TABLE_FSC, Match  # noqa: E402
from prism.policy.base import FixedPolicy  # noqa: E402
from prism.placement.ring import HashRing  # noqa: E402
from ryu_apps.ofmsg import to_ofmsgs  # noqa: E402

WARM_UP_FLOWS = 200
REPLICATION_FACTOR = 1
IDLE_TIMEOUT_S = 60
MIRROR_BUDGET = 0.25
US = 1e6
FIXED = "FixedPolicy"
SHIPPED = "AgingPolicy (shipped)"
BIRTH_OPEN = "AgingPolicy (shipped, birth mirroring open)"
PREDICTIVE = "PredictivePolicy"
SHIPPED_CONFIG = ROOT / "examples" / "prism.yaml"


class BenchDatapath(ofproto_protocol.ProtocolDesc):
    """Stands in for Ryu's Datapath: numbers and serializes what it is sent (as ``send_msg`` does), keeps nothing."""

    def __init__(self) -> None:
        super().__init__(ofproto_v1_3.OFP_VERSION)
        self.id = DP_ID
        self.xid = 0
        self.sent_bytes = 0

    def send_msg(self, msg) -> None:
        self.xid = (self.xid + 1) & 0xFFFFFFFF
        msg.set_xid(self.xid)
        msg.serialize()
        self.sent_bytes += len(msg.buf)


def decode(datapath, message: bytes):
    """Ryu's receive loop's work for one message (header, then the type's parser)."""
    version, msg_type, length, xid = ofproto_parser.header(message)
    return ofproto_parser.msg(datapath, version, msg_type, length, xid, bytearray(message))


def bench_config(model: Optional[Path]) -> PrismConfig:
    """The controller benchmark's switch, with a prediction section when ``model`` is given."""
    cells = "\n".join(f"      - {{id: {cell}, port: {port}}}" for cell, port in CELL_PORTS.items())
    text = (f"idle_timeout: {IDLE_TIMEOUT_S}\ndefault_replication_factor: {REPLICATION_FACTOR}\n"
            f"switches:\n  - dpid: {DP_ID}\n    cells:\n{cells}\n    edge_ports: {list(EDGE_PORTS)}\n")  # fmt: skip
    if model is not None:
        text += f'prediction:\n  policy: first_packet\n  model: "{model.resolve()}"\n  budget: {MIRROR_BUDGET}\n'
    return parse_config(text, "director_core")


def shipped_policy_factory(birth_open: bool = False) -> Callable[[HashRing], object]:
    """The shipped configuration's prediction section on the benchmark's switch (the aging policy).

    ``birth_open``: its birth mirroring held open (every SYN-opened flow gets a mirror chosen at
    birth: the path's worst case; the benchmark's flows report no cost that would shut it).
    """
    import dataclasses

    from prism.policy.aging import CopyBudget

    class OpenBirth(CopyBudget):
        def report(self, packets: int, copies: int) -> None:
            super().report(packets, copies)
            self.birth_open = True

    from ryu_apps.prediction import AgingService

    shipped = load_config(SHIPPED_CONFIG).prediction
    if shipped is None or shipped.policy != "aging":
        raise SystemExit(f"{SHIPPED_CONFIG} does not configure the aging policy")
    config = dataclasses.replace(bench_config(None), prediction=shipped)
    service = AgingService(config, run=lambda function, *args: function(*args))
    switch = config.switches[DP_ID]

    def make(ring: HashRing) -> object:
        policy = service.policy_for(switch, ring)
        if birth_open:
            policy.budget = OpenBirth.of(policy.settings)
            policy.budget.birth_open = True
        return policy

    return make


def policy_factory(model: Optional[Path]) -> Dict[str, Callable[[HashRing], object]]:
    """Policy name -> a function making that policy over a ring; the predictive one only if the model loads."""
    factories: Dict[str, Callable[[HashRing], object]] = {FIXED: lambda ring: FixedPolicy(ring, REPLICATION_FACTOR),
                                                          SHIPPED: shipped_policy_factory(),
                                                          BIRTH_OPEN: shipped_policy_factory(birth_open=True)}  # fmt: skip
    if model is None:
        return factories
    try:
        from ryu_apps.prediction import ModelService

        config = bench_config(model)
        service = ModelService(config, run=lambda function, *args: function(*args))
    except Exception as error:  # a missing model or package only drops the predictive stages
        print(f"(no predictive policy: {type(error).__name__}: {error})")
        return factories
    switch = config.switches[DP_ID]
    factories[PREDICTIVE] = lambda ring: service.policy_for(switch, ring)
    return factories


def new_director(make_policy: Callable[[HashRing], object]) -> MirroringDirector:
    switch = bench_config(None).switches[DP_ID]
    ring = HashRing(list(CELL_PORTS))
    director = MirroringDirector(switch, IDLE_TIMEOUT_S, make_policy(ring), ring=ring)
    director.on_switch_connect(0.0)
    return director


def per_flow_us(function: Callable, items: Sequence) -> float:
    start = time.perf_counter()
    for item in items:
        function(item)
    return (time.perf_counter() - start) / len(items) * US


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flows", type=int, default=3000, help="new flows per round (default 3000)")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (default 7)")
    parser.add_argument("--model", default=str(ROOT / "models" / "first_packet"),
                        help="model directory for the first-packet predictive policy, or 'none' "
                             "(default models/first_packet)")  # fmt: skip
    args = parser.parse_args()
    logging.basicConfig(stream=open(os.devnull, "w"), level=logging.INFO, format="%(message)s")
    policies = policy_factory(None if args.model == "none" else Path(args.model))

    datapath = BenchDatapath()
    flows = new_flows(args.flows)
    warm_up = warm_up_flows(WARM_UP_FLOWS)
    frames = [flow.frame for flow in flows]
    in_port = flows[0].in_port
    prism_packet_ins = [wire.packet_in(f.frame, f.in_port, TABLE_FSC, COOKIE_PIPELINE) for f in flows]
    switch_packet_ins = [wire.packet_in(f.frame, f.in_port, 0) for f in flows]
    infos = [parse_frame(frame) for frame in frames]
    decoded = [decode(datapath, message) for message in switch_packet_ins]

    def warm_director(policy: str, log_new_flows: bool = False) -> MirroringDirector:
        director = new_director(policies[policy])
        if log_new_flows:  # the director logs each new flow at debug; ryu-manager's level is info
            director.logger = logging.getLogger("prism.bench.verbose")
            director.logger.setLevel(logging.DEBUG)
        for flow in warm_up:
            director.on_packet_in(0.5, flow.in_port, TABLE_FSC, flow.frame)
        return director

    def warm_simple_switch() -> SimpleSwitch13:
        app = SimpleSwitch13()
        for flow in warm_up:
            message = decode(datapath, wire.packet_in(flow.frame, flow.in_port, 0))
            app._packet_in_handler(ofp_event.EventOFPPacketIn(message))
        return app

    director = warm_director(FIXED)
    decisions = [director.on_packet_in(1.0, in_port, TABLE_FSC, frame) for frame in frames]
    ryu_messages = [to_ofmsgs(datapath, changes) for changes in decisions]
    for messages in ryu_messages:
        for message in messages:
            message.set_xid(1)
    live = director.live_cells

    def profile_round(policy: str) -> Callable[[], float]:
        def measure() -> float:
            chooser = warm_director(policy).policy
            return per_flow_us(lambda info: chooser.profile_for(info, live, 1.0), infos)

        return measure

    def on_packet_in_round(policy: str, log_new_flows: bool = False) -> Callable[[], float]:
        def measure() -> float:
            director = warm_director(policy, log_new_flows)
            return per_flow_us(lambda frame: director.on_packet_in(1.0, in_port, TABLE_FSC, frame), frames)

        return measure

    def fsc_entries(info) -> None:
        Match.of(**direction_match(info.key, True))
        Match.of(**direction_match(info.key, False))

    def serialize(messages) -> None:
        for message in messages:
            message.serialize()

    def prism_app_round(policy: str) -> Callable[[], float]:
        def measure() -> float:
            director = warm_director(policy)

            def one(message: bytes) -> None:  # MirroringDirectorApp.packet_in_handler, then send()
                msg = decode(datapath, message)
                changes = director.on_packet_in(time.time(), msg.match["in_port"], msg.table_id, msg.data)
                for ofmsg in to_ofmsgs(datapath, changes):
                    datapath.send_msg(ofmsg)

            return per_flow_us(one, prism_packet_ins)

        return measure

    def simple_switch_handler_round() -> float:
        app = warm_simple_switch()
        return per_flow_us(lambda msg: app._packet_in_handler(ofp_event.EventOFPPacketIn(msg)), decoded)

    def simple_switch_app_round() -> float:
        app = warm_simple_switch()
        return per_flow_us(
            lambda message: app._packet_in_handler(ofp_event.EventOFPPacketIn(decode(datapath, message))),
            switch_packet_ins,
        )

    stages: Dict[str, Callable[[], float]] = {
        "Ryu: decode the PACKET_IN (both apps)": lambda: per_flow_us(lambda m: decode(datapath, m), prism_packet_ins),
        "parse_frame (baseline)": lambda: per_flow_us(parse_frame, frames),
    }
    for policy in policies:
        stages[f"profile_for, {policy}"] = profile_round(policy)
    stages["FSC entry descriptions (2 x direction_match + Match)"] = lambda: per_flow_us(fsc_entries, infos)
    for policy in policies:
        stages[f"on_packet_in, {policy}"] = on_packet_in_round(policy)
    stages[f"on_packet_in, {FIXED}, a log line per new flow"] = on_packet_in_round(FIXED, log_new_flows=True)
    stages["ofmsg.to_ofmsgs (Ryu message objects)"] = lambda: per_flow_us(lambda c: to_ofmsgs(datapath, c), decisions)
    stages["Ryu: serialize PRISM's messages"] = lambda: per_flow_us(serialize, ryu_messages)
    for policy in policies:
        stages[f"PRISM app path, {policy}"] = prism_app_round(policy)
    stages["simple_switch_13 handler (parse, build, serialize)"] = simple_switch_handler_round
    stages["simple_switch_13 app path: decode + handler"] = simple_switch_app_round

    samples: Dict[str, List[float]] = {name: [] for name in stages}
    for _ in range(args.rounds):
        for name, measure in stages.items():
            samples[name].append(measure())
    medians = {name: statistics.median(values) for name, values in samples.items()}

    messages_per_flow = sum(len(m) for m in ryu_messages) / len(ryu_messages)
    print(f"{args.flows} new flows x {args.rounds} interleaved rounds, median us per new flow "
          f"(with {FIXED} PRISM answers each with {messages_per_flow:.1f} messages)")  # fmt: skip
    width = max(map(len, medians))
    base = medians["parse_frame (baseline)"]
    for name, value in medians.items():
        print(f"  {name:<{width}}  {value:8.2f} us  {value / base:6.1f}x parse_frame")
    decision = medians[f"on_packet_in, {FIXED}"]
    rest = decision - base - medians[f"profile_for, {FIXED}"] - medians[
        "FSC entry descriptions (2 x direction_match + Match)"]  # fmt: skip
    print(f"  on_packet_in ({FIXED}) less parse, policy and FSC descriptions (flow and group bookkeeping, "
          f"assign queue): {rest:.2f} us; a log line per new flow would add "
          f"{medians[f'on_packet_in, {FIXED}, a log line per new flow'] - decision:.2f} us")  # fmt: skip
    simple = medians["simple_switch_13 app path: decode + handler"]
    for policy in policies:
        print(f"PRISM ({policy}) / simple_switch_13 per new flow, in-process: "
              f"{medians[f'PRISM app path, {policy}'] / simple:.2f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
