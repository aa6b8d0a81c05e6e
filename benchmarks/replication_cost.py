"""Replication bytes per flow per second of long TCP flows: PRISM's changes-only SMM against per-packet and periodic replication.

``--mode state`` runs the same flows in ``state`` mode: the mirror gets copies
of SYN/FIN/RST only and the primary's SMM sends a progress record of a flow
only when its mirrors need one (its frames moved more than half the takeover
tolerance, or half its idle timeout passed since the last_seen they hold:
``prism.cell.smm``); it prints the records per flow by kind (change,
progress, removal) and the wire bytes per record (state datagrams and their
acks, compressed, as sent). With the defaults (16 MiB tolerance) these slow
flows send no progress record at all; ``--tolerance-bytes 8000`` makes each
send one about every second (4 kB/s of frames), to price a progress record.

    .venv/bin/python benchmarks/replication_cost.py [--mode full|state] [--flows 500] [--duration 30]
        [--state-interval 1.0] [--tolerance-bytes N] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the checkout's packages, test tools included, without an install

from prism.mgmt import protocol as mgmt  # noqa: E402
from prism.cell.cell import Cell  # noqa: E402
from prism.cell.conntrack import ConnTracker, Timeouts, TrackerConfig  # noqa: E402
from prism.cell.records import entry_to_record, entry_to_wire_record  # noqa: E402
from prism.cell.smm import StateMirroringModule  # noqa: E402
from prism.flows.identity import TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN, mac_to_bytes, parse_frame  # noqa: E402
from prism.openflow.changes import MIRROR_MAC  # noqa: E402
from testkit.packets import build_tcp_frame  # noqa: E402

DEFAULT_FLOWS = 500
DEFAULT_DURATION_S = 30.0
SIMULATED_PPS = 4  #: data packets per flow per second fed to the cells (versions do not depend on it)
TYPICAL_PPS = (100, 1000, 10_000)  #: packet rates of long flows the per-packet alternative is priced at
TICK_S = 0.1
SEED_BATCHES = (1, 10, 100)  #: flows promoted per tick in the per-flow seed measurement
PROFILE = 1
SEED = 11
SERVER = "172.31.0.1"
PAYLOAD = b"x" * 1000
SHORT = Timeouts(time_wait=1.0, closed=1.0, last_ack=1.0)  #: teardown expires within the run
DESCRIPTION = """Replication traffic of long TCP flows between a primary cell and its mirror,
with the real State Mirroring Module (fake time, in-memory network): each flow
opens, carries data, closes and expires; the SMM sends what changed (handshake
with its token, teardown, removal). Its bytes (state and acks, compressed, as
on the wire) are divided by flows and seconds, and compared with replicating
every packet's state and with checkpointing every flow at every tick."""

_MIRROR_DST = mac_to_bytes(MIRROR_MAC)
_TCP_FLAGS = 14 + 20 + 13  #: offset of the TCP flags in an IPv4 frame without options
_STATE_FLAGS = TCP_SYN | TCP_FIN | TCP_RST  #: what the switch copies of a ``state`` flow


def _client(index: int) -> str:
    return f"172.31.{index // 250 + 1}.{index % 250 + 1}"


class CountingNetwork:
    """Delivers datagrams at once and counts bytes by message type, compressed and not."""

    def __init__(self) -> None:
        self.endpoints: Dict[Tuple[str, int], StateMirroringModule] = {}
        self.queue: List[tuple] = []
        self.wire: Dict[str, int] = {}
        self.json: Dict[str, int] = {}
        self.datagrams: Dict[str, int] = {}

    def transport(self, address: Tuple[str, int]):
        network = self

        class Transport:
            def sendto(self, datagram: bytes, destination: Tuple[str, int]) -> bool:
                network.queue.append((address, destination, datagram))
                return True

        return Transport()

    def deliver(self, now: float) -> None:
        while self.queue:
            batch, self.queue = self.queue, []
            for source, destination, datagram in batch:
                message = mgmt.decode(datagram)
                kind = message["type"]
                self.wire[kind] = self.wire.get(kind, 0) + len(datagram)
                self.json[kind] = self.json.get(kind, 0) + 4 + len(json.dumps(message, separators=(",", ":")))
                self.datagrams[kind] = self.datagrams.get(kind, 0) + 1
                endpoint = self.endpoints.get(destination)
                if endpoint is not None:
                    endpoint.on_datagram(datagram, source, now)


class Flow:
    """One long TCP connection's frames (sequence numbers advance as data goes)."""

    def __init__(self, index: int) -> None:
        self.client, self.port = _client(index), 20000 + index % 40000
        self.client_seq, self.server_seq = 1001, 5001

    def frame(self, from_client: bool, flags: int, payload: bytes = b"") -> bytes:
        if from_client:
            frame = build_tcp_frame(self.client, SERVER, self.port, 80, payload, flags=flags,
                                    seq=self.client_seq, ack=self.server_seq)  # fmt: skip
            self.client_seq += len(payload) + (1 if flags & TCP_FIN else 0)
        else:
            frame = build_tcp_frame(SERVER, self.client, 80, self.port, payload, flags=flags,
                                    seq=self.server_seq, ack=self.client_seq)  # fmt: skip
            self.server_seq += len(payload) + (1 if flags & TCP_FIN else 0)
        return frame

    def handshake(self) -> List[bytes]:
        return [build_tcp_frame(self.client, SERVER, self.port, 80, flags=TCP_SYN, seq=1000),
                build_tcp_frame(SERVER, self.client, 80, self.port, flags=TCP_SYN | TCP_ACK,
                                seq=5000, ack=1001),
                self.frame(True, TCP_ACK)]  # fmt: skip

    def teardown(self) -> List[bytes]:
        return [self.frame(True, TCP_FIN | TCP_ACK), self.frame(False, TCP_FIN | TCP_ACK),
                self.frame(True, TCP_ACK)]  # fmt: skip


def simulate(flows: int, duration_s: float, mode: str = mgmt.MODE_FULL,
             state_interval_s: float = mgmt.DEFAULT_STATE_INTERVAL_S,
             tolerance_bytes: int = mgmt.DEFAULT_TAKEOVER_TOLERANCE_BYTES) -> dict:  # fmt: skip
    """Run ``flows`` long flows through primary c1 (mirror c2) with real SMMs; returns the byte counts.

    In ``state`` mode the mirror gets copies of SYN/FIN/RST segments only.
    """
    network = CountingNetwork()
    cells, smms = {}, {}
    for cell_id, address in (("c1", ("10.9.0.1", 7700)), ("c2", ("10.9.0.2", 7700))):
        cell = Cell(cell_id, ConnTracker(TrackerConfig(timeouts=SHORT)))
        smm = StateMirroringModule(cell, network.transport(address), None, rng=random.Random(SEED))
        cell.add_tick_hook(smm.tick_hook)
        cells[cell_id], smms[cell_id] = cell, smm
        network.endpoints[address] = smm
    directory = mgmt.encode({"type": "directory", "epoch": 1, "live": ["c1", "c2"],
                             "cells": {"c1": ["10.9.0.1", 7700], "c2": ["10.9.0.2", 7700]},
                             "state_interval_s": state_interval_s,
                             "takeover_tolerance_bytes": tolerance_bytes})  # fmt: skip
    profiles = mgmt.encode({"type": "profiles", "epoch": 1, "full": True,
                            "profiles": {str(PROFILE): ["c1", ["c2"]]}})  # fmt: skip
    conns = [Flow(index) for index in range(flows)]
    assign = mgmt.encode({"type": "assign", "flows": [
        [build_key(conn), PROFILE, "", mode] for conn in conns]})  # fmt: skip
    for smm in smms.values():
        for message in (directory, profiles, assign):
            smm.on_datagram(message, ("10.9.0.254", 7600), 0.0)
    rng = random.Random(SEED)
    now, data_frames = 0.0, 0

    copy_all = mode == mgmt.MODE_FULL

    def through(frame: bytes) -> None:
        if copy_all or frame[_TCP_FLAGS] & _STATE_FLAGS:
            cells["c2"].handle_frame(_MIRROR_DST + frame[6:], now)
        cells["c1"].handle_frame(frame, now)

    def tick() -> None:
        for cell in cells.values():
            cell.tick(now)
        network.deliver(now)

    for conn in conns:
        for frame in conn.handshake():
            through(frame)
    ticks = int(duration_s / TICK_S)
    per_tick = flows * SIMULATED_PPS * TICK_S
    for _ in range(ticks):
        now += TICK_S
        for _ in range(int(per_tick)):
            conn = conns[rng.randrange(flows)]
            through(conn.frame(rng.random() < 0.5, TCP_ACK | TCP_PSH, PAYLOAD))
            data_frames += 1
        tick()
    for conn in conns:
        for frame in conn.teardown():
            through(frame)
    for _ in range(int(3.0 / TICK_S)):  # teardown, expiry, removals
        now += TICK_S
        tick()
    primary = smms["c1"].replication_counters()
    if len(cells["c1"].tracker) or len(cells["c2"].tracker) or primary["lost_batches"]:
        raise SystemExit(f"benchmark workload is wrong: {primary}")
    mirror_copies = cells["c2"].mirror_packets
    return {"network": network, "counters": primary, "data_frames": data_frames,
            "frame_bytes": len(PAYLOAD) + 54, "mirror_copies": mirror_copies,
            "primary_frames": cells["c1"].primary_packets}  # fmt: skip


def seed_cost(flows: int, per_tick: int) -> dict:
    """Wire bytes per flow of per-flow seeds (``seed`` with ``flows``, as the director sends a promotion's):
    ``flows`` established state flows at primary c1, seeded to a new mirror c3, ``per_tick`` flows
    promoted (and asked for) per tick; state datagrams to c3 and c3's acks, compressed, as sent."""
    network = CountingNetwork()
    cells, smms = {}, {}
    addresses = {"c1": ("10.9.0.1", 7700), "c3": ("10.9.0.3", 7700)}
    for cell_id, address in addresses.items():
        cell = Cell(cell_id, ConnTracker(TrackerConfig(timeouts=SHORT)))
        smm = StateMirroringModule(cell, network.transport(address), None, rng=random.Random(SEED))
        cell.add_tick_hook(smm.tick_hook)
        cells[cell_id], smms[cell_id] = cell, smm
        network.endpoints[address] = smm
    conns = [Flow(index) for index in range(flows)]
    control = [mgmt.encode({"type": "directory", "epoch": 1, "live": list(addresses),
                            "cells": {cell_id: list(a) for cell_id, a in addresses.items()}}),
               mgmt.encode({"type": "profiles", "epoch": 1, "full": True, "profiles": {str(PROFILE): ["c1", []]}}),
               mgmt.encode({"type": "assign", "flows": [[build_key(conn), PROFILE, "", mgmt.MODE_STATE]
                                                        for conn in conns]})]  # fmt: skip
    for smm in smms.values():
        for message in control:
            smm.on_datagram(message, ("10.9.0.254", 7600), 0.0)
    now = 0.0
    for conn in conns:
        for frame in conn.handshake() + [conn.frame(True, TCP_ACK | TCP_PSH, PAYLOAD), conn.frame(False, TCP_ACK)]:
            cells["c1"].handle_frame(frame, now)
    for _ in range(3):
        now += TICK_S
        for cell in cells.values():
            cell.tick(now)
        network.deliver(now)
    network.wire.clear()
    network.datagrams.clear()
    for start in range(0, flows, per_tick):
        chunk = [build_key(conn) for conn in conns[start:start + per_tick]]
        smms["c1"].on_datagram(mgmt.encode({"type": "seed", "profile_id": PROFILE, "target": "c3",
                                            "flows": chunk}), ("10.9.0.254", 7600), now)  # fmt: skip
        network.deliver(now)  # the management network answers within the tick
        now += TICK_S
        for cell in cells.values():
            cell.tick(now)
        network.deliver(now)
    seeded = len(cells["c3"].tracker)
    wire = network.wire.get("state", 0) + network.wire.get("ack", 0)
    return {"flows": flows, "per_tick": per_tick, "seeded": seeded, "bytes_per_flow": wire / max(seeded, 1),
            "datagrams": network.datagrams.get("state", 0)}


def build_key(conn: Flow) -> int:
    """The flow_id of a connection."""
    return parse_frame(conn.handshake()[0]).key.flow_id


def record_sizes(flows: int) -> dict:
    """Bytes of one established flow's record: full (state document), slim JSON, slim compressed in batches."""
    tracker = ConnTracker()
    for index in range(flows):
        conn = Flow(index)
        for frame in conn.handshake():
            tracker.process(parse_frame(frame), False, 1.0)
    full = [entry_to_record(entry) for entry in tracker]
    slim = [entry_to_wire_record(entry) for entry in tracker]
    sizes = {"full_json": _mean_json(full), "slim_json": _mean_json(slim)}
    for per_datagram in (1, 12, 100):
        total = 0
        for start in range(0, len(slim), per_datagram):
            total += len(mgmt.encode({"type": "state", "cell": "c1", "seq": 1,
                                      "records": slim[start:start + per_datagram]}))  # fmt: skip
        sizes[f"compressed_{per_datagram}"] = total / len(slim)
    return sizes


def _mean_json(records: Sequence[dict]) -> float:
    return sum(len(json.dumps(r, separators=(",", ":"))) for r in records) / len(records)


def state_report(args: argparse.Namespace) -> int:
    """Print what ``state`` mode costs: wire bytes per record, per flow and second, against the traffic."""
    run = simulate(args.flows, args.duration, mgmt.MODE_STATE, args.state_interval, args.tolerance_bytes)
    network, counters = run["network"], run["counters"]
    state_bytes, ack_bytes = network.wire.get("state", 0), network.wire.get("ack", 0)
    records = counters["records_sent"]
    progress = counters["progress_records"]
    removals, skipped = counters["removals_sent"], counters["removals_skipped"]
    changes = records - progress - removals
    flow_seconds = args.flows * args.duration
    traffic = run["primary_frames"] * run["frame_bytes"]  # upper bound: handshakes are smaller frames
    figures = {
        "mode": "state", "flows": args.flows, "duration_s": args.duration,
        "state_interval_s": args.state_interval, "takeover_tolerance_bytes": args.tolerance_bytes,
        "frames_per_flow_per_s": SIMULATED_PPS,
        "records_sent": records, "progress_records": progress, "change_records": changes,
        "removals_sent": removals, "removals_skipped": skipped,
        "change_records_per_flow": changes / args.flows, "progress_records_per_flow": progress / args.flows,
        "removals_per_flow": removals / args.flows,
        "other_records": records - progress, "state_datagrams": network.datagrams.get("state", 0),
        "acks": network.datagrams.get("ack", 0), "state_bytes": state_bytes, "ack_bytes": ack_bytes,
        "bytes_per_record": (state_bytes + ack_bytes) / records,
        "state_bytes_per_record": state_bytes / records, "ack_bytes_per_record": ack_bytes / records,
        "bytes_per_flow_per_s": (state_bytes + ack_bytes) / flow_seconds,
        "bytes_per_flow": (state_bytes + ack_bytes) / args.flows,
        "mirror_copies": run["mirror_copies"], "primary_frames": run["primary_frames"],
        "traffic_bytes": traffic,
    }  # fmt: skip
    print(f"replication cost, state mode: {args.flows} TCP flows x {args.duration:g} s at "
          f"{SIMULATED_PPS} frames/s each through primary c1, mirror c2 (rf=1), state flows looked at every "
          f"{args.state_interval:g} s, takeover tolerance {args.tolerance_bytes:,} B, tick {TICK_S} s, "
          f"Python {sys.version.split()[0]}")  # fmt: skip
    print(f"  SMM sent {records} records ({progress} progress records, {changes} change records "
          f"(handshake, teardown), {removals} removals; {skipped} removals not needed: closed by FIN) "
          f"in {figures['state_datagrams']} datagrams; {figures['acks']} acks back")  # fmt: skip
    print(f"  per flow: {changes / args.flows:.2f} change records, {progress / args.flows:.2f} progress "
          f"records, {removals / args.flows:.2f} removals; {figures['bytes_per_flow']:.1f} B")  # fmt: skip
    print(f"  wire bytes per record, state + acks (compressed, as sent): "
          f"{figures['bytes_per_record']:.1f} B ({figures['state_bytes_per_record']:.1f} state + "
          f"{figures['ack_bytes_per_record']:.1f} acks)")  # fmt: skip
    print(f"  per flow per second: {figures['bytes_per_flow_per_s']:.1f} B")
    print(f"  mirror copies: {run['mirror_copies']} for {run['primary_frames']} frames forwarded "
          f"({run['mirror_copies'] / run['primary_frames']:.4f} per frame)")  # fmt: skip
    print(f"  replication bytes per traffic byte at this rate ({SIMULATED_PPS} x {run['frame_bytes']} B "
          f"frames/s per flow): {(state_bytes + ack_bytes) / traffic:.4f}")  # fmt: skip
    seeds = [seed_cost(min(args.flows, 500), per_tick) for per_tick in SEED_BATCHES]
    figures["seeds"] = seeds
    print("  per-flow seeds to a new mirror (as a promotion asks), state datagrams + acks: " + ", ".join(
        f"{seed['per_tick']} flows per tick {seed['bytes_per_flow']:.1f} B per flow" for seed in seeds))  # fmt: skip
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(figures, handle, indent=1)
    return 0


def main(argv: Sequence[str] = None) -> int:
    """Print replication bytes per flow per second and the ratios to the alternatives."""
    parser = argparse.ArgumentParser(description=DESCRIPTION)
    parser.add_argument("--flows", type=int, default=DEFAULT_FLOWS)
    parser.add_argument("--duration", type=float, default=DEFAULT_DURATION_S, metavar="SECONDS")
    parser.add_argument("--mode", choices=mgmt.ASSIGN_MODES, default=mgmt.MODE_FULL,
                        help="mirroring mode of every flow (default full)")
    parser.add_argument("--state-interval", type=float, default=mgmt.DEFAULT_STATE_INTERVAL_S,
                        metavar="SECONDS", help="state mode: how often each state flow is looked at")
    parser.add_argument("--tolerance-bytes", type=int, default=mgmt.DEFAULT_TAKEOVER_TOLERANCE_BYTES,
                        metavar="N", help="state mode: the takeover tolerance (a progress record "
                        "once a flow's frames moved more than half of it)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    if args.mode == mgmt.MODE_STATE:
        return state_report(args)
    run = simulate(args.flows, args.duration)
    network, counters = run["network"], run["counters"]
    sizes = record_sizes(min(args.flows, 1000))
    flow_seconds = args.flows * args.duration
    wire = network.wire.get("state", 0) + network.wire.get("ack", 0)
    uncompressed = network.json.get("state", 0) + network.json.get("ack", 0)
    per_flow = wire / args.flows
    per_flow_s = wire / flow_seconds
    per_record = network.wire["state"] / counters["records_sent"]
    print(f"replication cost: {args.flows} TCP flows x {args.duration:g} s through primary c1, "
          f"mirror c2 (rf=1), tick {TICK_S} s, Python {sys.version.split()[0]}")  # fmt: skip
    print(f"  SMM sent {counters['records_sent']} records ({counters['records_sent'] / args.flows:.2f} "
          f"per flow: handshake+token, teardown, removal) in {counters['batches_sent']} datagrams; "
          f"{network.datagrams.get('ack', 0)} acks back")  # fmt: skip
    print(f"  wire bytes (state + acks): {wire:,} = {per_flow:,.0f} B per flow over its whole life, "
          f"whatever its length and rate = {per_flow_s:.2f} B per flow per second over "
          f"{args.duration:g} s")  # fmt: skip
    print(f"  uncompressed JSON of the same messages: {uncompressed:,} B "
          f"(compression saves {1 - wire / uncompressed:.0%})")  # fmt: skip
    print("")
    print("one established flow's record (bytes):")
    print(f"  {'full record as in the state document (raw snapshot)':<53}{sizes['full_json']:8.0f}")
    print(f"  {'replicated fields only, JSON':<53}{sizes['slim_json']:8.0f}"
          f"   {sizes['slim_json'] / sizes['full_json']:.2f} of raw")  # fmt: skip
    for per_datagram in (1, 12, 100):
        size = sizes[f"compressed_{per_datagram}"]
        label = f"compressed, {per_datagram} records per datagram"
        print(f"  {label:<53}{size:8.0f}"
              f"   {size / sizes['full_json']:.2f} of raw")  # fmt: skip
    print(f"  {'measured on the wire in this run (per record)':<53}{per_record:8.0f}"
          f"   {per_record / sizes['full_json']:.2f} of raw")  # fmt: skip
    print("")
    print(f"{'replication scheme':<52}{'B/flow/s':>12}{'vs SMM':>10}")
    print(f"{'PRISM SMM: versioned changes only (measured)':<52}{per_flow_s:>12.2f}{1:>10.0f}")
    checkpoint = per_record / TICK_S
    print(f"{'checkpoint every flow every tick (0.1 s)':<52}{checkpoint:>12,.0f}"
          f"{checkpoint / per_flow_s:>10,.0f}")  # fmt: skip
    for pps in TYPICAL_PPS:
        per_packet = per_record * pps
        print(f"{f'state of every packet, {pps:,} pps flow':<52}{per_packet:>12,.0f}"
              f"{per_packet / per_flow_s:>10,.0f}")  # fmt: skip
    for pps in TYPICAL_PPS:
        mirrored = run["frame_bytes"] * pps
        print(f"{f'(for scale) mirror copies of a {pps:,} pps flow':<52}{mirrored:>12,.0f}"
              f"{mirrored / per_flow_s:>10,.0f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
