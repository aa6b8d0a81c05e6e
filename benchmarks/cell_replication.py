"""Packets per second one cell forwards with replication on (its SMM sending state to a peer over loopback UDP) and off.

The cell runs in its real event loop (``prism.cell.loop.CellLoop``: poll,
batches of frames, ticks every 0.1 s) on a port that hands it frames built
beforehand, so no packet socket is involved. With replication on, the State
Mirroring Module is wired in as ``prism cell`` wires it (``smm_io.attach``:
tick hook, management socket, heartbeats to a controller sink) and sends
every flow's changes to a mirror cell that is a second real SMM in its own
process and its own loop, which merges them and acknowledges over loopback UDP.
With replication off, the same cell and loop, no SMM. The cell is the primary
of every flow (rf=1).

Two workloads, the frames identical for both settings:

- established: ``--flows`` TCP connections set up beforehand (replicated before
  timing), then ``--frames`` data segments and acks: steady traffic changes
  no flow's version, so the SMM only ticks and beats;
- new connections: ``--connections`` whole connections (handshake, two data
  segments, FIN, FIN, ACK), 64 open at a time: each one replicated twice
  (handshake with its token, teardown); the removal record comes at expiry,
  later than this run.

Settings (``--settings``, default all three): ``off`` (no SMM), ``full`` (SMM,
every flow assigned ``full``: the "on" of earlier runs) and ``state`` (SMM,
every flow assigned ``state``: the primary also sends progress records; with
``--tolerance-bytes 0`` (the default here) one for every flow that moved, at
every tick: the most a cell can be asked. The shipped cell sends one only when
the mirrors need it (half the 16 MiB default tolerance moved, or half an idle
timeout passed: ``prism.cell.smm``), i.e. far fewer). The mirror's side
of state mode (far fewer copies) is not in this benchmark: the cell measured
is the flows' primary.

Rate = frames / time from the loop's start to the last frame handled; rounds
alternate the settings so that machine load hits them alike, and each ratio is
taken within a round. "settled" is the time from the last frame to the peer's
acknowledgement of the last change (one tick at most, plus the batches).

    .venv/bin/python benchmarks/cell_replication.py [--flows 1000] [--frames 50000] [--connections 5000]
        [--repeat 5] [--settings off,full,state] [--state-interval 0.1] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import random
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from prism.mgmt import protocol as mgmt  # noqa: E402
from prism.cell.cell import Cell  # noqa: E402
from prism.cell.loop import CellLoop  # noqa: E402
from prism.cell.smm import StateMirroringModule  # noqa: E402
from prism.cell.smm_io import UdpTransport, attach, receive_pending  # noqa: E402
from prism.flows.identity import TCP_ACK, TCP_FIN, TCP_PSH, TCP_SYN, parse_frame  # noqa: E402
from testkit.packets import build_tcp_frame  # noqa: E402

LOOPBACK = "127.0.0.1"
SERVER = "172.31.0.1"
PROFILE = 1
CELL_ID, PEER_ID = "bench", "peer"
PAYLOAD = b"x" * 1400
OPEN_AT_ONCE = 64  #: new connections interleaved at a time
ASSIGN_CHUNK = 400  #: flows per ``assign`` message
SETTLE_TIMEOUT_S = 30.0
PEER_START_TIMEOUT_S = 10.0
SEED_PORT = 20000
SETTINGS = ("off", "full", "state")
STATE_INTERVAL_S = 0.1  #: state flows looked at every tick in the state setting
#: The state setting's takeover tolerance: 0 makes every flow that moved send a progress
#: record at the next tick (the worst case; ``prism.cell.smm.PROGRESS_TOLERANCE_SHARE``).
STATE_TOLERANCE_BYTES = 0


def _client(index: int) -> str:
    return f"172.31.{index // 250 + 1}.{index % 250 + 1}"


class _Conn:
    """One TCP connection's frames, sequence numbers advancing with its data."""

    def __init__(self, index: int) -> None:
        self.client, self.port = _client(index), SEED_PORT + index % 40000
        self.client_seq, self.server_seq = 1001, 5001

    def handshake(self) -> List[bytes]:
        return [build_tcp_frame(self.client, SERVER, self.port, 80, flags=TCP_SYN, seq=1000),
                build_tcp_frame(SERVER, self.client, 80, self.port, flags=TCP_SYN | TCP_ACK, seq=5000,
                                ack=1001),
                self.segment(True, TCP_ACK)]  # fmt: skip

    def segment(self, from_client: bool, flags: int, payload: bytes = b"") -> bytes:
        advance = len(payload) + (1 if flags & TCP_FIN else 0)
        if from_client:
            frame = build_tcp_frame(self.client, SERVER, self.port, 80, payload, flags=flags,
                                    seq=self.client_seq, ack=self.server_seq)  # fmt: skip
            self.client_seq += advance
        else:
            frame = build_tcp_frame(SERVER, self.client, 80, self.port, payload, flags=flags,
                                    seq=self.server_seq, ack=self.client_seq)  # fmt: skip
            self.server_seq += advance
        return frame

    def life(self) -> List[List[bytes]]:
        """Handshake, data both ways, teardown: one list of frames per step."""
        return [[frame] for frame in self.handshake()] + [
            [self.segment(True, TCP_ACK | TCP_PSH, PAYLOAD)], [self.segment(False, TCP_ACK | TCP_PSH, PAYLOAD)],
            [self.segment(True, TCP_FIN | TCP_ACK)], [self.segment(False, TCP_FIN | TCP_ACK)],
            [self.segment(True, TCP_ACK)]]  # fmt: skip


def established_workload(flows: int, frames: int) -> Tuple[List[bytes], List[bytes], List[int]]:
    """(handshakes, data frames, flow ids): data over random established flows, 1400 B one way, acks back."""
    rng = random.Random(7)
    conns = [_Conn(index) for index in range(flows)]
    handshakes = [frame for conn in conns for frame in conn.handshake()]
    data = []
    for _ in range(frames):
        conn = conns[rng.randrange(flows)]
        data.append(conn.segment(True, TCP_ACK | TCP_PSH, PAYLOAD) if rng.random() < 0.5
                    else conn.segment(False, TCP_ACK))  # fmt: skip
    return handshakes, data, [parse_frame(conn.handshake()[0]).key.flow_id for conn in conns]


def connection_workload(connections: int, first_index: int) -> Tuple[List[bytes], List[int]]:
    """(frames, flow ids) of whole connections, ``OPEN_AT_ONCE`` interleaved step by step."""
    frames, flow_ids = [], []
    for start in range(0, connections, OPEN_AT_ONCE):
        lives = []
        for index in range(start, min(start + OPEN_AT_ONCE, connections)):
            conn = _Conn(first_index + index)
            flow_ids.append(parse_frame(conn.handshake()[0]).key.flow_id)
            lives.append(conn.life())
        for step in range(len(lives[0])):
            for life in lives:
                frames.extend(life[step])
    return frames, flow_ids


class ListPort:
    """A packet socket stand-in that hands out a list of frames, then asks ``done()`` whether to stop the loop."""

    def __init__(self, frames: Sequence[bytes], done: Callable[[], bool]) -> None:
        self.frames, self.done, self.next = frames, done, 0
        self.forwarded = 0
        self.started = self.finished = self.settled = 0.0
        self.cpu_started = self.cpu_finished = 0.0
        self.loop: Optional[CellLoop] = None
        self._read, self._write = os.pipe()
        os.write(self._write, b"x")  # always readable: the loop drains as fast as it can

    def fileno(self) -> int:
        return self._read

    def recv_frame(self) -> Optional[bytes]:
        if self.next < len(self.frames):
            frame = self.frames[self.next]
            self.next += 1
            if self.next == len(self.frames):
                self.finished = time.perf_counter()
                self.cpu_finished = time.thread_time()
            return frame
        if self.done():
            self.settled = time.perf_counter()
            self.loop.stop()
        return None

    def send(self, frame: bytes) -> int:
        self.forwarded += 1
        return len(frame)

    def close(self) -> None:
        os.close(self._read)
        os.close(self._write)


class _IdlePort:
    """The peer's packet socket: nothing ever arrives (its state comes over UDP)."""

    def __init__(self) -> None:
        self._read, self._write = os.pipe()

    def fileno(self) -> int:
        return self._read

    def recv_frame(self) -> Optional[bytes]:
        return None

    def send(self, frame: bytes) -> int:
        return len(frame)


def _peer_main(conn) -> None:
    """The mirror cell: a real loop and SMM on loopback; stops when the pipe says so, sends its counters."""
    cell = Cell(PEER_ID)
    transport = UdpTransport((LOOPBACK, 0))
    smm = StateMirroringModule(cell, transport, None)
    loop = CellLoop(cell, _IdlePort())
    attach(loop, smm, transport)
    loop.add_reader(conn.fileno(), lambda: conn.recv() and loop.stop())
    conn.send(transport.address)
    loop.run()
    conn.send({**smm.replication_counters(), "flows_tracked": len(cell.tracker)})


class Peer:
    """The mirror cell in a child process (forked), ended on ``stop()``."""

    def __init__(self) -> None:
        parent, child = multiprocessing.get_context("fork").Pipe()
        self.conn = parent
        self.process = multiprocessing.get_context("fork").Process(target=_peer_main, args=(child,), daemon=True)
        self.process.start()
        if not parent.poll(PEER_START_TIMEOUT_S):
            self.process.kill()
            raise RuntimeError("the peer cell did not start")
        self.address = tuple(parent.recv())

    def stop(self) -> dict:
        self.conn.send("stop")
        counters = self.conn.recv() if self.conn.poll(SETTLE_TIMEOUT_S) else {}
        self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
        return counters


class Replication:
    """What a replicating cell needs: the peer, a controller sink for heartbeats, the control messages."""

    def __init__(self, peer: Peer, flow_ids: Sequence[int]) -> None:
        self.peer = peer
        self.controller = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.controller.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.controller.bind((LOOPBACK, 0))
        self.controller.setblocking(False)
        self.flow_ids = list(flow_ids)
        self.tolerance_bytes = STATE_TOLERANCE_BYTES

    def wire(self, cell: Cell, loop: CellLoop, mode: str,
             state_interval_s: float) -> Tuple[StateMirroringModule, UdpTransport]:  # fmt: skip
        """An SMM for ``cell`` in ``loop`` (as ``prism cell`` does), told the directory, profile and flows (in ``mode``)."""
        transport = UdpTransport((LOOPBACK, 0))
        smm = StateMirroringModule(cell, transport, self.controller.getsockname())
        attach(loop, smm, transport)
        source, now = self.controller.getsockname(), time.time()
        messages = [
            {"type": "directory", "epoch": 1, "live": [CELL_ID, PEER_ID],
             "cells": {CELL_ID: list(transport.address), PEER_ID: list(self.peer.address)},
             "state_interval_s": state_interval_s, "takeover_tolerance_bytes": self.tolerance_bytes},
            {"type": "profiles", "epoch": 1, "full": True, "profiles": {str(PROFILE): [CELL_ID, [PEER_ID]]}},
        ]  # fmt: skip
        for start in range(0, len(self.flow_ids), ASSIGN_CHUNK):
            chunk = self.flow_ids[start:start + ASSIGN_CHUNK]
            messages.append({"type": "assign", "flows": [[flow_id, PROFILE, "", mode] for flow_id in chunk]})
        for message in messages:
            smm.on_datagram(mgmt.encode(message), source, now)
        return smm, transport

    def drain(self) -> int:
        count = 0
        while True:
            try:
                self.controller.recv(65536)
            except BlockingIOError:
                return count
            count += 1

    def close(self) -> None:
        self.controller.close()


def _settled(smm: StateMirroringModule, port: ListPort, last_tick: List[float]) -> bool:
    """Every change up to the last frame queued by a tick and acknowledged by the peer."""
    if not port.finished or last_tick[0] < port.finished:
        return False
    return all(channel.idle for channel in smm.channels.values())


def run_cell(primer: Sequence[bytes], frames: Sequence[bytes], replication: Optional[Replication],
             mode: str = mgmt.MODE_FULL, state_interval_s: float = mgmt.DEFAULT_STATE_INTERVAL_S) -> dict:  # fmt: skip
    """A fresh cell (and SMM, its flows in ``mode``) in a real loop: ``primer`` untimed (and replicated), then ``frames`` timed."""
    cell = Cell(CELL_ID)
    last_tick = [0.0]
    smm = transport = None
    loops = []

    def loop_over(batch: Sequence[bytes]) -> ListPort:
        port = ListPort(batch, lambda: True)
        loop = port.loop = CellLoop(cell, port)
        loops.append((loop, port))
        if replication is not None:
            nonlocal smm, transport
            if smm is None:
                smm, transport = replication.wire(cell, loop, mode, state_interval_s)
                cell.add_tick_hook(lambda _cell, _report: last_tick.__setitem__(0, time.perf_counter()))
            else:  # the same SMM in the next loop: its socket and heartbeats
                attach_reader(loop, smm, transport)
            port.done = lambda: _settled(smm, port, last_tick)
        return port

    try:
        if primer:
            port = loop_over(primer)
            port.loop.run()
        port = loop_over(frames)
        counters_before = dict(smm.replication_counters()) if smm else {}
        port.started, port.cpu_started = time.perf_counter(), time.thread_time()
        port.loop.run()
        handled, cpu = port.finished - port.started, port.cpu_finished - port.cpu_started
        result = {"frames": len(frames), "seconds": handled, "pps": len(frames) / handled,
                  "cpu_seconds": cpu, "cpu_pps": len(frames) / cpu,
                  "forwarded": port.forwarded, "dropped": cell.dropped,
                  "settled_ms": (port.settled - port.finished) * 1e3 if smm else 0.0}  # fmt: skip
        if smm is not None:
            after = smm.replication_counters()
            result["records_sent"] = after["records_sent"] - counters_before.get("records_sent", 0)
            result["progress_records"] = (after["progress_records"]
                                          - counters_before.get("progress_records", 0))  # fmt: skip
            result["replication_bytes"] = (after["replication_bytes_sent"]
                                           - counters_before.get("replication_bytes_sent", 0))  # fmt: skip
            result["problems"] = {k: after[k] for k in ("lost_batches", "send_errors", "held_dropped")
                                  if after.get(k)}  # fmt: skip
        return result
    finally:
        for loop, port in loops:
            loop.close()
            port.close()
        if transport is not None:
            transport.close()


def attach_reader(loop: CellLoop, smm: StateMirroringModule, transport: UdpTransport) -> None:
    """The SMM's socket and heartbeats in another loop of the same cell (its tick hook is already on the cell)."""
    loop.add_reader(transport.fileno(), lambda: receive_pending(transport, smm, loop.clock))
    loop.add_timer(smm.settings.heartbeat_interval_s, smm.heartbeat)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flows", type=int, default=1000, help="established flows (default 1000)")
    parser.add_argument("--frames", type=int, default=50_000, help="data frames over them per run (default 50000)")
    parser.add_argument("--connections", type=int, default=5000,
                        help="whole new connections per run (default 5000, 8 frames each)")  # fmt: skip
    parser.add_argument("--repeat", type=int, default=5, help="rounds, each running off and on (default 5)")
    parser.add_argument("--settings", default=",".join(SETTINGS),
                        help=f"comma-separated subset of {','.join(SETTINGS)} (default all)")
    parser.add_argument("--state-interval", type=float, default=STATE_INTERVAL_S, metavar="SECONDS",
                        help=f"progress interval in the state setting (default {STATE_INTERVAL_S}: every "
                             "tick, the most a cell can be asked; the shipped default is "
                             f"{mgmt.DEFAULT_STATE_INTERVAL_S})")  # fmt: skip
    parser.add_argument("--tolerance-bytes", type=int, default=STATE_TOLERANCE_BYTES, metavar="N",
                        help="takeover tolerance in the state setting (default 0: a progress record for "
                             f"every flow that moved, at every tick; shipped {mgmt.DEFAULT_TAKEOVER_TOLERANCE_BYTES})")
    parser.add_argument("--json", type=Path, help="write every run to this file")
    args = parser.parse_args(argv)
    settings = [name for name in args.settings.split(",") if name]
    if not settings or any(name not in SETTINGS for name in settings) or "off" not in settings:
        parser.error(f"--settings: a comma-separated subset of {','.join(SETTINGS)} including off")
    if min(args.flows, args.frames, args.connections, args.repeat) < 1:
        parser.error("--flows, --frames, --connections and --repeat must be >= 1")
    handshakes, data, established_ids = established_workload(args.flows, args.frames)
    connections, connection_ids = connection_workload(args.connections, args.flows)
    workloads = {"established": (handshakes, data), "new connections": ((), connections)}
    runs: Dict[str, Dict[str, List[dict]]] = {name: {setting: [] for setting in settings} for name in workloads}
    peer = Peer()
    replication = Replication(peer, established_ids + connection_ids)
    replication.tolerance_bytes = args.tolerance_bytes
    started = time.monotonic()
    try:
        for round_number in range(args.repeat):
            for name, (primer, frames) in workloads.items():
                for setting in settings:
                    mode = mgmt.MODE_STATE if setting == "state" else mgmt.MODE_FULL
                    result = run_cell(primer, frames, None if setting == "off" else replication, mode,
                                      args.state_interval)  # fmt: skip
                    runs[name][setting].append(result)
                    replication.drain()
            print(f"round {round_number + 1}/{args.repeat}: " + ", ".join(
                f"{name} " + " / ".join(f"{setting} {runs[name][setting][-1]['pps']:,.0f}" for setting in settings)
                + " pps" for name in workloads), flush=True)  # fmt: skip
    finally:
        heartbeats = replication.drain()
        replication.close()
        peer_counters = peer.stop()
    report(args, runs, peer_counters)
    print(f"({time.monotonic() - started:.0f} s, Python {platform.python_version()})")
    if args.json:
        document = {"benchmark": "cell_replication", "args": {k: str(v) if isinstance(v, Path) else v
                                                              for k, v in vars(args).items()},
                    "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                                "load_average": os.getloadavg()},
                    "runs": runs, "peer": peer_counters, "heartbeats_at_end": heartbeats}  # fmt: skip
        args.json.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    return 0


def report(args: argparse.Namespace, runs: Dict[str, Dict[str, List[dict]]], peer: dict) -> None:
    print(f"\ncell data path, replication off vs full vs state mode (SMM -> a peer SMM in another process "
          f"over loopback UDP; state: looked at every {args.state_interval:g} s, tolerance "
          f"{args.tolerance_bytes} B), {args.repeat} rounds; medians")  # fmt: skip
    print(f"  {'workload':<17}{'setting':>8}{'frames':>7} | {'wall pps':>9}{'/off':>6}{'/full':>6} | "
          f"{'CPU pps':>9}{'/off':>6}{'/full':>6} | {'records':>8}{'progress':>9}{'B sent':>11}{'settled ms':>11}")  # fmt: skip
    problems = []

    def median(results: List[dict], key: str) -> float:
        return statistics.median(r[key] for r in results)

    def ratio(results: List[dict], base: Optional[List[dict]], key: str) -> str:
        if not base:
            return f"{'':>6}"
        return f"{statistics.median(b[key] / a[key] for a, b in zip(base, results)):>6.2f}"

    for name, settings in runs.items():
        off, full = settings["off"], settings.get("full")
        for setting, results in settings.items():
            on = setting != "off"
            print(f"  {name:<17}{setting:>8}{results[0]['frames']:>7} | {median(results, 'pps'):>9,.0f}"
                  f"{ratio(results, off, 'pps')}{ratio(results, full, 'pps')} | "
                  f"{median(results, 'cpu_pps'):>9,.0f}{ratio(results, off, 'cpu_pps')}"
                  f"{ratio(results, full, 'cpu_pps')} | "
                  f"{median(results, 'records_sent') if on else 0:>8.0f}"
                  f"{median(results, 'progress_records') if on else 0:>9.0f}"
                  f"{median(results, 'replication_bytes') if on else 0:>11,.0f}"
                  f"{median(results, 'settled_ms'):>11.0f}")  # fmt: skip
        for setting, results in settings.items():
            for result in results:
                if result["dropped"] or result.get("problems"):
                    problems.append(f"{name} {setting}: dropped {result['dropped']}, {result.get('problems')}")
    print("  wall pps: frames / time from the loop's start to the last frame handled; CPU pps: frames / the\n"
          "  loop thread's CPU time over the same span (what the cell costs, whatever else the machine runs);\n"
          "  /off, /full: median of the rounds' ratios; records, B sent: state records and bytes the SMM sent in one\n"
          "  run (acks not counted); progress: progress records queued (a flow still queued from an earlier\n"
          "  tick goes once); settled: from the last frame to the peer's ack of the last change")
    print(f"  peer at the end: {peer.get('records_applied', '?')} records applied, {peer.get('acks_sent', '?')} acks "
          f"sent, {peer.get('flows_tracked', '?')} flows")  # fmt: skip
    for problem in problems:
        print(f"WARNING: {problem}")

if __name__ == "__main__":
    sys.exit(main())
