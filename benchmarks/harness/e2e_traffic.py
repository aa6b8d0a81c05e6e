"""One-packet UDP flows for the end-to-end benchmark: a raw sender and a timestamping sink, run inside Mininet hosts.

    python -m benchmarks.harness.e2e_traffic send --iface c1-eth0 --src-mac ... --dst-mac ... \\
        --src-ip 172.31.0.1 --dst-ip 172.31.0.3 --dport 9500 --first-sport 20000 --count 200 \\
        --interval-ms 20 --json sent.json
    python -m benchmarks.harness.e2e_traffic sink --port 9500 --json arrivals.json

The sender writes whole Ethernet frames on a packet socket (frames built
beforehand, checksums correct), one frame per flow, each flow a new source
port; it records the wall-clock time just before each send. ``--mac-base``
gives every flow its own source MAC too (what makes a flow new for an L2
learning switch). The sink records the kernel's receive timestamp
(SO_TIMESTAMPNS) of the first datagram of each source port until SIGTERM.
Both hosts share the machine's clock, so arrival minus send is the one-way
latency. Only the addresses given are ever used.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import struct
import sys
import time
from typing import Dict, List, Optional

from testkit.packets import build_udp_frame

PAYLOAD_BYTES = 32
ETH_P_ALL = 0x0003
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
_TIMESPEC = struct.Struct("@qq")
_CMSG_SPACE = 64
RECV_TIMEOUT_S = 0.2
NS_PER_S = 1_000_000_000


def flow_mac(base: int, index: int) -> str:
    """A locally administered unicast MAC for flow ``index`` (``base`` is the top 16 bits after 02)."""
    value = (0x02 << 40) | ((base & 0xFF) << 32) | (index & 0xFFFFFFFF)
    return ":".join(f"{(value >> shift) & 0xFF:02x}" for shift in range(40, -8, -8))


def build_frames(args: argparse.Namespace) -> List[bytes]:
    """The first (and only) frame of each of ``args.count`` flows."""
    frames = []
    for index in range(args.count):
        sport = args.first_sport + index
        src_mac = flow_mac(args.mac_base, sport) if args.mac_base is not None else args.src_mac
        payload = struct.pack("!I", index) + bytes(PAYLOAD_BYTES - 4)
        frames.append(build_udp_frame(args.src_ip, args.dst_ip, sport, args.dport, payload,
                                      eth_src=src_mac, eth_dst=args.dst_mac))  # fmt: skip
    return frames


def send(args: argparse.Namespace) -> Dict[str, int]:
    """Send the flows (paced by ``interval_ms``, or back to back with 0); returns sport -> send time (ns)."""
    frames = build_frames(args)
    sent: Dict[str, int] = {}
    interval_ns = int(args.interval_ms * 1e6)
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL)) as sock:
        sock.bind((args.iface, 0))
        start = time.time_ns()
        for index, frame in enumerate(frames):
            if interval_ns:
                delay = start + index * interval_ns - time.time_ns()
                if delay > 0:
                    time.sleep(delay / NS_PER_S)
            stamp = time.time_ns()
            sock.send(frame)
            sent[str(args.first_sport + index)] = stamp
    return sent


class _Stop(Exception):
    """SIGTERM: write what arrived."""


def _raise_stop(signum, frame):  # noqa: ARG001 - signal handler signature
    raise _Stop()


def sink(args: argparse.Namespace) -> Dict[str, int]:
    """First arrival (kernel timestamp, ns) per source port on UDP ``args.port``, until SIGTERM."""
    arrivals: Dict[str, int] = {}
    previous = signal.signal(signal.SIGTERM, _raise_stop)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        sock.bind(("0.0.0.0", args.port))
        sock.settimeout(RECV_TIMEOUT_S)
        if args.ready:
            open(args.ready, "w").close()  # noqa: SIM115 - an empty marker file
        while True:
            try:
                _, ancillary, _, source = sock.recvmsg(2048, _CMSG_SPACE)
            except socket.timeout:
                continue
            stamp = time.time_ns()
            for level, kind, data in ancillary:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= _TIMESPEC.size:
                    seconds, nanos = _TIMESPEC.unpack_from(data)
                    stamp = seconds * NS_PER_S + nanos
            arrivals.setdefault(str(source[1]), stamp)
    except _Stop:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        sock.close()
    return arrivals


def main(argv: Optional[List[str]] = None) -> int:
    """Command-line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="tool", required=True)
    sender = sub.add_parser("send")
    sender.add_argument("--iface", required=True)
    sender.add_argument("--src-mac", required=True)
    sender.add_argument("--dst-mac", required=True)
    sender.add_argument("--src-ip", required=True)
    sender.add_argument("--dst-ip", required=True)
    sender.add_argument("--dport", type=int, required=True)
    sender.add_argument("--first-sport", type=int, required=True)
    sender.add_argument("--count", type=int, required=True)
    sender.add_argument("--interval-ms", type=float, default=0.0, help="0: back to back")
    sender.add_argument("--mac-base", type=int, help="a source MAC per flow (02:<base>:<sport>)")
    receiver = sub.add_parser("sink")
    receiver.add_argument("--port", type=int, required=True)
    receiver.add_argument("--ready", help="touch this file once listening")
    for command in (sender, receiver):
        command.add_argument("--json", required=True)
    args = parser.parse_args(argv)
    result = send(args) if args.tool == "send" else sink(args)
    with open(args.json, "w", encoding="utf-8") as handle:
        json.dump(result, handle)
    return 0


if __name__ == "__main__":
    sys.exit(main())
