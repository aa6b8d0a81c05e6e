"""Small traffic tools run inside Mininet hosts: a paced UDP sender and a UDP sink.

    python -m mininet_topos.traffic udp-send --dst 172.31.0.3 --port 9000 --count 50 --rate 100
    python -m mininet_topos.traffic udp-sink --port 9000 --duration 10 --json out.json

They only ever address the hosts of the test network they are given.
"""

from __future__ import annotations

import argparse
import json
import selectors
import signal
import socket
import sys
import time
from typing import Dict, List, Optional

PAYLOAD_BYTES = 200
SINK_PORT_SPAN = 64


def udp_send(dst: str, port: int, count: int, rate: float, sport: int = 0) -> int:
    """Send ``count`` datagrams to ``dst:port`` at ``rate`` per second; returns how many were sent."""
    interval = 1.0 / rate if rate > 0 else 0.0
    payload = bytearray(PAYLOAD_BYTES)
    sent = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        if sport:
            sock.bind(("0.0.0.0", sport))
        start = time.monotonic()
        for sequence in range(count):
            payload[:4] = sequence.to_bytes(4, "big")
            try:
                sock.sendto(payload, (dst, port))
                sent += 1
            except OSError:
                pass  # e.g. ICMP unreachable reported on a later send
            delay = start + (sequence + 1) * interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)
    return sent


class _Stopped(Exception):
    """SIGTERM arrived: stop counting and report what was received."""


def _raise_stopped(signum, frame):  # noqa: ARG001 - signal handler signature
    raise _Stopped()


def udp_sink(port: int, span: int, duration: float) -> dict:
    """Count datagrams arriving on ports ``port .. port+span-1`` for ``duration`` seconds.

    SIGTERM ends the count early; what was received so far is still returned.
    """
    selector = selectors.DefaultSelector()
    sockets: List[socket.socket] = []
    for offset in range(span):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("0.0.0.0", port + offset))
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ, port + offset)
        sockets.append(sock)
    received: Dict[str, int] = {}

    def drain(sock: socket.socket, port: int) -> None:
        while True:
            try:
                _, (src, sport) = sock.recvfrom(65535)
            except BlockingIOError:
                return
            flow = f"{src}:{sport}->{port}"
            received[flow] = received.get(flow, 0) + 1

    deadline = time.monotonic() + duration
    previous = signal.signal(signal.SIGTERM, _raise_stopped)
    try:
        while time.monotonic() < deadline:
            for key, _ in selector.select(timeout=0.2):
                drain(key.fileobj, key.data)
    except _Stopped:  # what already reached the sockets was received: a starved sink still counts it
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for offset, sock in enumerate(sockets):
            drain(sock, port + offset)
    finally:
        signal.signal(signal.SIGTERM, previous)
        for sock in sockets:
            sock.close()
    return {"flows": received, "datagrams": sum(received.values())}


def main(argv: Optional[List[str]] = None) -> int:
    """Command-line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="tool", required=True)
    send = sub.add_parser("udp-send")
    send.add_argument("--dst", required=True)
    send.add_argument("--port", type=int, required=True)
    send.add_argument("--sport", type=int, default=0)
    send.add_argument("--count", type=int, default=50)
    send.add_argument("--rate", type=float, default=100.0)
    sink = sub.add_parser("udp-sink")
    sink.add_argument("--port", type=int, required=True)
    sink.add_argument("--span", type=int, default=SINK_PORT_SPAN)
    sink.add_argument("--duration", type=float, default=10.0)
    sink.add_argument("--json")
    args = parser.parse_args(argv)
    if args.tool == "udp-send":
        print(udp_send(args.dst, args.port, args.count, args.rate, args.sport))
        return 0
    result = udp_sink(args.port, args.span, args.duration)
    text = json.dumps(result)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            handle.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
