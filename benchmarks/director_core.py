"""Where PRISM's cost per new flow goes: the director's packet-in path by stage, in-process, beside simple_switch_13's.

No sockets and no event loop: the same PACKET_IN bytes the controller
benchmark sends are decoded with Ryu's parser, handed to
``MirroringDirector.on_packet_in`` (FixedPolicy, three cells, replication
factor 1, hosts learnt and profile groups created by a warm-up), turned into
Ryu messages by ``ryu_apps.ofmsg`` and serialized, as the Ryu app does.
Each stage is also timed alone on prebuilt inputs; ``parse_frame`` is the
baseline. simple_switch_13's own handler runs on the same decoded messages
with a stand-in datapath that serializes what it is sent. Log lines (one per
new flow in both apps) are formatted and written to /dev/null, as
``ryu-manager`` would write them to its log. Rounds are interleaved and the
median is reported, so a busy machine slows every stage alike.

    .venv/bin/python benchmarks/director_core.py [--flows 3000] [--rounds 7] [--model models/default]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ryu.app.simple_switch_13 import SimpleSwitch13  # noqa: E402
from ryu.controller import ofp_event  # noqa: E402
from ryu.ofproto import ofproto_parser, ofproto_protocol, ofproto_v1_3  # noqa: E402

from benchmarks.harness import openflow_wire as wire  # noqa: E402
from benchmarks.harness.workload import CELL_PORTS, DP_ID, EDGE_PORTS, new_flows, warm_up_flows  # noqa: E402
from prism.config import CellConfig, SwitchConfig  # noqa: E402
from prism.director import MirroringDirector  # noqa: E402
from prism.flows import direction_match, parse_frame  # noqa: E402
from prism.openflow import COOKIE_PIPELINE, TABLE_FSC, Match  # noqa: E402
from prism.policy import FixedPolicy  # noqa: E402
from prism.ring import HashRing  # noqa: E402
from ryu_apps.ofmsg import to_ofmsgs  # noqa: E402

WARM_UP_FLOWS = 200
REPLICATION_FACTOR = 1
IDLE_TIMEOUT_S = 60
US = 1e6


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


def new_director() -> MirroringDirector:
    switch = SwitchConfig(dp_id=DP_ID, name="bench", edge_ports=EDGE_PORTS,
                          cells=tuple(CellConfig(id=c, port=p) for c, p in CELL_PORTS.items()))  # fmt: skip
    ring = HashRing(list(CELL_PORTS))
    director = MirroringDirector(switch, IDLE_TIMEOUT_S, FixedPolicy(ring, REPLICATION_FACTOR), ring=ring)
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
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "default",
                        help="SPE model for the prediction stage (skipped if it does not load)")  # fmt: skip
    args = parser.parse_args()
    logging.basicConfig(stream=open(os.devnull, "w"), level=logging.INFO, format="%(message)s")

    datapath = BenchDatapath()
    flows = new_flows(args.flows)
    warm_up = warm_up_flows(WARM_UP_FLOWS)
    frames = [flow.frame for flow in flows]
    in_port = flows[0].in_port
    prism_packet_ins = [wire.packet_in(f.frame, f.in_port, TABLE_FSC, COOKIE_PIPELINE) for f in flows]
    switch_packet_ins = [wire.packet_in(f.frame, f.in_port, 0) for f in flows]
    infos = [parse_frame(frame) for frame in frames]
    decoded = [decode(datapath, message) for message in switch_packet_ins]

    def warm_director() -> MirroringDirector:
        director = new_director()
        for flow in warm_up:
            director.on_packet_in(0.5, flow.in_port, TABLE_FSC, flow.frame)
        return director

    def warm_simple_switch() -> SimpleSwitch13:
        app = SimpleSwitch13()
        for flow in warm_up:
            message = decode(datapath, wire.packet_in(flow.frame, flow.in_port, 0))
            app._packet_in_handler(ofp_event.EventOFPPacketIn(message))
        return app

    director = warm_director()
    decisions = [director.on_packet_in(1.0, in_port, TABLE_FSC, frame) for frame in frames]
    ryu_messages = [to_ofmsgs(datapath, changes) for changes in decisions]
    live = director.live_cells
    policy = director.policy

    def on_packet_in_round() -> float:
        director = warm_director()
        return per_flow_us(lambda frame: director.on_packet_in(1.0, in_port, TABLE_FSC, frame), frames)

    def on_packet_in_quiet_round() -> float:
        director = warm_director()
        director.logger = logging.getLogger("prism.bench.quiet")
        director.logger.setLevel(logging.WARNING)
        return per_flow_us(lambda frame: director.on_packet_in(1.0, in_port, TABLE_FSC, frame), frames)

    def fsc_entries(info) -> None:
        Match.of(**direction_match(info.key, True))
        Match.of(**direction_match(info.key, False))

    for messages in ryu_messages:
        for message in messages:
            message.set_xid(1)

    def serialize(messages) -> None:
        for message in messages:
            message.serialize()

    def prism_total_round() -> float:
        director = warm_director()

        def one(message: bytes) -> None:  # MirroringDirectorApp.packet_in_handler, then send()
            msg = decode(datapath, message)
            changes = director.on_packet_in(time.time(), msg.match["in_port"], msg.table_id, msg.data)
            for ofmsg in to_ofmsgs(datapath, changes):
                datapath.send_msg(ofmsg)

        return per_flow_us(one, prism_packet_ins)

    def simple_switch_handler_round() -> float:
        app = warm_simple_switch()
        return per_flow_us(lambda msg: app._packet_in_handler(ofp_event.EventOFPPacketIn(msg)), decoded)

    def simple_switch_total_round() -> float:
        app = warm_simple_switch()
        return per_flow_us(
            lambda message: app._packet_in_handler(ofp_event.EventOFPPacketIn(decode(datapath, message))),
            switch_packet_ins,
        )

    stages: Dict[str, Callable[[], float]] = {
        "Ryu: decode the PACKET_IN (both apps)": lambda: per_flow_us(lambda m: decode(datapath, m), prism_packet_ins),
        "parse_frame (baseline)": lambda: per_flow_us(parse_frame, frames),
        "policy.profile_for (ring order)": lambda: per_flow_us(lambda i: policy.profile_for(i, live, 1.0), infos),
        "FSC entry descriptions (2 x direction_match + Match)": lambda: per_flow_us(fsc_entries, infos),
        "on_packet_in, whole decision": on_packet_in_round,
        "on_packet_in, log line off": on_packet_in_quiet_round,
        "ofmsg.to_ofmsgs (Ryu message objects)": lambda: per_flow_us(lambda c: to_ofmsgs(datapath, c), decisions),
        "Ryu: serialize PRISM's messages": lambda: per_flow_us(serialize, ryu_messages),
        "PRISM app path: decode + decide + build + serialize": prism_total_round,
        "simple_switch_13 handler (parse, build, serialize)": simple_switch_handler_round,
        "simple_switch_13 app path: decode + handler": simple_switch_total_round,
    }
    spe = spe_stage(args.model, infos)
    if spe is not None:
        stages["SPE features + predict_duration (not in the app yet)"] = spe
    samples: Dict[str, List[float]] = {name: [] for name in stages}
    for _ in range(args.rounds):
        for name, measure in stages.items():
            samples[name].append(measure())
    medians = {name: statistics.median(values) for name, values in samples.items()}

    messages_per_flow = sum(len(m) for m in ryu_messages) / len(ryu_messages)
    print(f"{args.flows} new flows x {args.rounds} interleaved rounds, median us per new flow "
          f"(PRISM answers each with {messages_per_flow:.1f} messages)")  # fmt: skip
    width = max(map(len, medians))
    base = medians["parse_frame (baseline)"]
    for name, value in medians.items():
        print(f"  {name:<{width}}  {value:8.2f} us  {value / base:6.1f}x parse_frame")
    decision = medians["on_packet_in, whole decision"]
    rest = decision - base - medians["policy.profile_for (ring order)"] - medians[
        "FSC entry descriptions (2 x direction_match + Match)"]  # fmt: skip
    print(f"  on_packet_in less parse, policy and FSC descriptions (FSC and group bookkeeping, assign queue, "
          f"log line): {rest:.2f} us; the log line alone: {decision - medians['on_packet_in, log line off']:.2f} us")
    prism = medians["PRISM app path: decode + decide + build + serialize"]
    simple = medians["simple_switch_13 app path: decode + handler"]
    print(f"PRISM / simple_switch_13 per new flow, in-process: {prism / simple:.2f}")
    if spe is not None:
        with_spe = prism + medians["SPE features + predict_duration (not in the app yet)"]
        print(f"  with the SPE's prediction added: {with_spe / simple:.2f}")
    return 0


def spe_stage(model: Path, infos) -> Callable[[], float] | None:
    """Per-new-flow SPE cost (features + predicted duration), or None if the model does not load."""
    try:
        from models.features import FirstPacket, FlowHistory, flow_features
        from models.predictor import Predictor

        predictor = Predictor.load(model)
    except Exception as error:  # a missing model or package only drops this stage
        print(f"(no SPE stage: {type(error).__name__}: {error})")
        return None

    def round_() -> float:
        history = FlowHistory(predictor.horizon_s)

        def one(info) -> float:
            first = FirstPacket.from_packet(info, 1.0)
            return predictor.predict_duration(flow_features(first, history, 1.0, record_start=True))

        return per_flow_us(one, infos)

    return round_


if __name__ == "__main__":
    sys.exit(main())
