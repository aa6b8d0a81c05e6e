"""A flood of forged management datagrams against a running cell: its forwarding rate with and without it.

Run as root from the repository root (``.venv/bin/python -m benchmarks.mgmt_flood``).
It makes its own network namespace and veth pair, runs ``prism cell`` in the
namespace (management socket on the namespace's loopback, a fake
controller there that verifies its heartbeats), and pushes TCP data frames
of established connections at the cell from the root side as fast as one
process can (``blast``). It measures the cell's forwarded frames per second
over ``--seconds``, first alone, then while another process sends
``--rate`` forged datagrams per second (``send``: sealed with a wrong key,
garbage, oversized, and compressed bombs) to the cell's management port.
It prints both rates, their ratio, the longest gap between two heartbeats
the fake controller received, and the cell's refusal counters. Everything
it made is removed at the end, whatever happens.

``send`` and ``blast`` are also subcommands, for the integration tests.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from prism.mgmt import protocol as mgmt
from prism.flows.identity import TCP_ACK, TCP_PSH, TCP_SYN
from prism.mgmt.auth import CONTROLLER_SENDER, MgmtAuth, Sealer, new_key_text
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # testkit (test tools) is not installed: import it from the checkout

from testkit.packets import build_tcp_frame  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RATE = 10_000
DEFAULT_SECONDS = 5.0
BOMB_SHARE = 0.01  #: forged datagrams that are (wrong-key) zlib bombs near the size limit
BIG_SHARE = 0.01  #: forged datagrams larger than any envelope accepted
SERVER, CLIENT = "172.31.250.2", "172.31.250.1"
FLOWS = 64
PAYLOAD = b"x" * 1000
PACE_SLICE_S = 0.01  #: the sender paces itself in slices this long


def _forger_messages() -> List[dict]:
    return [
        {"type": "directory", "epoch": 1 << 40, "generation": 1 << 50, "cells": {}, "live": []},
        {"type": "profiles", "epoch": 1 << 40, "full": True, "profiles": {}},
        {"type": "assign", "flows": [[1, 2, "x"]]},
        {"type": "seed", "profile_id": 1, "target": "nobody"},
        {"type": "drain", "target": "c1"},
        {"type": "state", "cell": "c2", "seq": 1, "records": [{"schema": 2, "removed": True,
                                                                "version": (1 << 53) - 1}]},
        {"type": "ack", "cell": "c2", "seq": 1},
        {"type": "heartbeat", "cell": "c1", "seq": 1},
        {"type": "seeded", "cell": "c1", "profile_id": 1, "target": "c2", "flows": 0},
    ]  # fmt: skip


def forged_datagrams(count: int, seed: int = 1) -> List[bytes]:
    """``count`` forged datagrams of every kind: wrong-key seals of every type, garbage, bombs, oversized."""
    rng = random.Random(seed)
    bodies = [mgmt.encode(message) for message in _forger_messages()]
    bomb = mgmt.MAGIC + bytes([mgmt.VERSION, 0]) + zlib.compress(b" " * 50_000_000, 9)
    senders = [Sealer(new_key_text().encode(), sender) for sender in (CONTROLLER_SENDER, "c1", "c2")]
    now = time.time()
    datagrams = []
    for index in range(count):
        draw = rng.random()
        sealer = senders[index % len(senders)]
        if draw < BOMB_SHARE:
            datagrams.append(sealer.seal(bomb, now))
        elif draw < BOMB_SHARE + BIG_SHARE:
            datagrams.append(os.urandom(rng.randrange(61_000, 65_000)))
        elif draw < 0.2:
            datagrams.append(os.urandom(rng.randrange(1, 1400)))
        else:
            datagrams.append(sealer.seal(bodies[index % len(bodies)], now))
    return datagrams


def send_flood(target: Tuple[str, int], rate: float, seconds: float, seed: int = 1) -> int:
    """Send ``rate`` forged datagrams per second to ``target`` for ``seconds``; returns how many went out."""
    datagrams = forged_datagrams(4096, seed)
    family = socket.AF_INET6 if ":" in target[0] else socket.AF_INET
    sent = 0
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        start = time.monotonic()
        end = start + seconds
        while True:
            now = time.monotonic()
            if now >= end:
                break
            due = int((now - start) * rate)
            while sent < due:
                try:
                    sock.sendto(datagrams[sent % len(datagrams)], target)
                except OSError:
                    pass  # a full buffer, ICMP unreachable: the flood goes on
                sent += 1
            time.sleep(PACE_SLICE_S)
    return sent


def connection_frames(flows: int = FLOWS) -> Tuple[List[bytes], List[bytes]]:
    """(handshakes, data frames): ``flows`` TCP connections, then one data segment per flow (loose mode passes repeats)."""
    handshakes, data = [], []
    for index in range(flows):
        port = 30000 + index
        handshakes += [build_tcp_frame(CLIENT, SERVER, port, 80, flags=TCP_SYN, seq=1000),
                       build_tcp_frame(SERVER, CLIENT, 80, port, flags=TCP_SYN | TCP_ACK, seq=5000, ack=1001),
                       build_tcp_frame(CLIENT, SERVER, port, 80, flags=TCP_ACK, seq=1001, ack=5001)]  # fmt: skip
        data.append(build_tcp_frame(CLIENT, SERVER, port, 80, PAYLOAD, flags=TCP_ACK | TCP_PSH, seq=1001,
                                    ack=5001))  # fmt: skip
    return handshakes, data


def blast(interface: str, seconds: float, rate: Optional[float]) -> int:
    """Send data frames out of ``interface`` for ``seconds`` (at ``rate`` per second, or as fast as possible)."""
    from prism.cell.io import PacketSocket

    handshakes, data = connection_frames()
    port = PacketSocket(interface)
    sent = 0
    try:
        for frame in handshakes:
            port.send(frame)
            time.sleep(0.001)
        start = time.monotonic()
        end = start + seconds
        while True:
            now = time.monotonic()
            if now >= end:
                break
            due = len(data) if rate is None else int((now - start) * rate) - sent
            for _ in range(max(0, due)):
                try:
                    port.send(data[sent % len(data)])
                except OSError:
                    pass
                sent += 1
            if rate is not None:
                time.sleep(0.001)
    finally:
        port.close()
    return sent


# --- the benchmark: a namespace, a cell process, a fake controller -----------------------
def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {result.stderr.strip()}")
    return result


class FloodBed:
    """A namespace with a veth to the root side, a ``prism cell`` in it, and a heartbeat listener there.

    Args:
        workdir: Key, state socket and log go here.
        tag: Makes the namespace and interface names unique.
    """

    CELL_MGMT = ("127.0.0.1", 7700)
    CONTROLLER = ("127.0.0.1", 7600)

    def __init__(self, workdir: Path, tag: str) -> None:
        self.workdir = workdir
        self.netns, self.veth_root, self.veth_cell = f"pfl{tag}", f"pfl{tag}r", f"pfl{tag}c"
        self.key = new_key_text()
        self.key_path = workdir / "mgmt.key"
        self.state_path = workdir / "cell.sock"
        self.proc: Optional[subprocess.Popen] = None
        self.beats: List[float] = []
        self.beat_sock: Optional[socket.socket] = None
        self._listening = threading.Event()
        self._listener: Optional[threading.Thread] = None

    def start(self) -> None:
        self.key_path.write_text(self.key)
        os.chmod(self.key_path, 0o600)
        _run("ip", "netns", "add", self.netns)
        _run("ip", "netns", "exec", self.netns, "ip", "link", "set", "lo", "up")
        _run("ip", "link", "add", self.veth_root, "type", "veth", "peer", "name", self.veth_cell,
             "netns", self.netns)  # fmt: skip
        _run("sysctl", "-qw", f"net.ipv6.conf.{self.veth_root}.disable_ipv6=1")
        _run("ip", "netns", "exec", self.netns, "sysctl", "-qw", f"net.ipv6.conf.{self.veth_cell}.disable_ipv6=1")
        _run("ip", "link", "set", self.veth_root, "up")
        _run("ip", "netns", "exec", self.netns, "ip", "link", "set", self.veth_cell, "up")
        self._listener = threading.Thread(target=self._listen, daemon=True)
        self._listener.start()
        if not self._listening.wait(10):
            raise RuntimeError("the heartbeat listener did not start")
        log = open(self.workdir / "cell.log", "wb")  # noqa: SIM115 - the process owns it
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.netns, sys.executable, "-m", "prism.cli", "cell",
             "--interface", self.veth_cell, "--cell-id", "c1", "--state-socket", str(self.state_path),
             "--mgmt-listen", "%s:%d" % self.CELL_MGMT, "--controller", "%s:%d" % self.CONTROLLER,
             "--mgmt-key-file", str(self.key_path), "--heartbeat-interval", "0.1"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=str(REPO_ROOT),
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + 15
        while not (self.state_path.exists() and self.beats):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the cell did not start: {self.log_text()}")
            time.sleep(0.05)

    def _listen(self) -> None:
        """Receive and verify heartbeats inside the namespace (a thread: setns is per thread)."""
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        with open(f"/run/netns/{self.netns}") as target:
            if libc.setns(target.fileno(), 0x40000000) != 0:
                raise OSError(ctypes.get_errno(), "setns failed")
        sock = self.beat_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(self.CONTROLLER)
        auth = MgmtAuth(self.key.encode(), CONTROLLER_SENDER)
        self._listening.set()
        while True:
            try:
                ready, _, _ = select.select([sock], [], [], 0.5)
                if not ready:
                    continue
                datagram = sock.recv(65536)
            except (OSError, ValueError):
                return  # closed
            opened = auth.open(datagram, time.time())
            if opened is not None and opened[1]["type"] == "heartbeat":
                self.beats.append(time.monotonic())

    def state(self) -> Dict:
        from prism.cell.state_server import read_state

        return read_state(self.state_path)

    def log_text(self) -> str:
        try:
            return (self.workdir / "cell.log").read_text(errors="replace")[-4000:]
        except OSError:
            return "(no log)"

    def longest_beat_gap(self, since: float) -> float:
        """Longest gap between heartbeats received after ``since`` (monotonic seconds), up to now."""
        times = [since] + [t for t in self.beats if t >= since] + [time.monotonic()]
        return max(b - a for a, b in zip(times, times[1:]))

    def flood(self, rate: float, seconds: float) -> subprocess.Popen:
        """Start the forged flood at the cell's management port (a process inside the namespace)."""
        return subprocess.Popen(
            ["ip", "netns", "exec", self.netns, sys.executable, "-m", "benchmarks.mgmt_flood", "send",
             "--to", "%s:%d" % self.CELL_MGMT, "--rate", str(rate), "--seconds", str(seconds)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=str(REPO_ROOT),
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        )  # fmt: skip

    def forwarding_rate(self, seconds: float, rate: Optional[float] = None) -> float:
        """Frames per second the cell forwarded while the root side blasted data at it for ``seconds``."""
        before = self.state()["counters"]["forwarded"]
        start = time.monotonic()
        sent = blast(self.veth_root, seconds, rate)
        elapsed = time.monotonic() - start
        time.sleep(0.2)  # the cell drains what is queued
        forwarded = self.state()["counters"]["forwarded"] - before
        if sent == 0:
            raise RuntimeError("no frame was sent")
        return forwarded / elapsed

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.beat_sock is not None:
            self.beat_sock.close()
        _run("ip", "netns", "del", self.netns, check=False)
        _run("ip", "link", "del", self.veth_root, check=False)


def finish_flood(process: subprocess.Popen) -> int:
    """Wait for a flood process; returns the datagrams it sent (RuntimeError if it failed)."""
    out, err = process.communicate(timeout=120)
    if process.returncode != 0:
        raise RuntimeError(f"the flood sender failed: {err.decode(errors='replace')[-2000:]}")
    return json.loads(out.decode())["sent"]


def measure(rate: float, seconds: float, paced: Optional[float]) -> Dict:
    """Forwarding rate alone and under the flood, with heartbeat gaps and refusal counters."""
    with tempfile.TemporaryDirectory(prefix="prism-flood-") as workdir:
        bed = FloodBed(Path(workdir), str(os.getpid() % 100_000))
        try:
            bed.start()
            alone = bed.forwarding_rate(seconds, paced)
            since = time.monotonic()
            flood = bed.flood(rate, seconds + 1.0)
            time.sleep(0.5)  # the flood is under way
            flooded = bed.forwarding_rate(seconds, paced)
            sent = finish_flood(flood)
            gap = bed.longest_beat_gap(since)
            counters = bed.state()["replication"]["counters"]
        finally:
            bed.stop()
    refused = {name: value for name, value in counters.items() if name.startswith("auth_refused")}
    return {"rate_alone_fps": round(alone), "rate_flooded_fps": round(flooded),
            "ratio": round(flooded / alone, 3) if alone else None, "forged_sent": sent,
            "longest_heartbeat_gap_s": round(gap, 3), "refused": refused,
            "accepted": counters.get("auth_accepted")}  # fmt: skip


def main(argv: Sequence[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    send = sub.add_parser("send", help="send forged datagrams (used by the tests)")
    send.add_argument("--to", required=True, metavar="IP:PORT")
    send.add_argument("--rate", type=float, default=DEFAULT_RATE)
    send.add_argument("--seconds", type=float, default=DEFAULT_SECONDS)
    parser.add_argument("--rate", type=float, default=DEFAULT_RATE, help="forged datagrams per second")
    parser.add_argument("--seconds", type=float, default=DEFAULT_SECONDS, help="length of each phase")
    parser.add_argument("--paced", type=float, default=None,
                        help="offer data frames at this rate instead of as fast as possible")  # fmt: skip
    args = parser.parse_args(argv)
    if args.command == "send":
        host, _, port = args.to.rpartition(":")
        sent = send_flood((host.strip("[]"), int(port)), args.rate, args.seconds)
        print(json.dumps({"sent": sent}))
        return 0
    if os.geteuid() != 0:
        print("mgmt_flood: needs root (a network namespace and a veth pair)", file=sys.stderr)
        return 2
    result = measure(args.rate, args.seconds, args.paced)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
