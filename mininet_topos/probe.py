"""A one-millisecond probe: a UDP flow at 1,000 datagrams/s with sequence numbers, and what reached the far end.

    python -m mininet_topos.probe send --dst 172.31.0.3 --port 9500 --sport 47001 --rate 1000 --duration 8 --json s.json
    python -m mininet_topos.probe sink --port 9500 --duration 12 --json r.json

The sender keeps an absolute schedule (a late datagram goes out at once, the
rest keep their times) and records its own longest pause between two sends,
so that a gap the sender caused is not blamed on the network. The sink
records every datagram's sequence number and arrival time (wall clock: the
namespaces of one machine share it); ``analyse`` turns both into the longest
gap and the datagrams lost around a failure. It only ever addresses the
hosts of the test network it is given.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import struct
import sys
import time
from typing import Dict, List, Optional, Sequence

PROBE_PORT = 9500
PROBE_RATE_HZ = 1000.0
#: Sequence number (8 bytes) and the send time (wall clock, 8 bytes) in every datagram.
_HEADER = struct.Struct("!Qd")
PAYLOAD_BYTES = 64
#: Arrivals are read in bursts; the sink wakes this often to notice SIGTERM and its deadline.
SINK_POLL_S = 0.2


class _Stopped(Exception):
    """SIGTERM: stop and write what was seen."""


def _stop(signum, frame):  # noqa: ARG001 - signal handler signature
    raise _Stopped()


def send(dst: str, port: int, sport: int, rate_hz: float, duration_s: float) -> Dict:
    """Send for ``duration_s`` at ``rate_hz``; returns how many were sent and the sender's longest pause."""
    interval = 1.0 / rate_hz
    payload = bytearray(PAYLOAD_BYTES)
    sent = errors = 0
    longest_pause = 0.0
    previous = None
    first_wall = time.time()
    previous_handler = signal.signal(signal.SIGTERM, _stop)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("0.0.0.0", sport))
            start = time.monotonic()
            total = int(duration_s * rate_hz)
            for sequence in range(total):
                due = start + sequence * interval
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                now = time.monotonic()
                if previous is not None:
                    longest_pause = max(longest_pause, now - previous)
                previous = now
                _HEADER.pack_into(payload, 0, sequence, time.time())
                try:
                    sock.sendto(payload, (dst, port))
                    sent += 1
                except OSError:
                    errors += 1
    except _Stopped:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
    return {"sent": sent, "send_errors": errors, "rate_hz": rate_hz, "first_send": first_wall,
            "sender_longest_pause_ms": round(longest_pause * 1000, 2)}  # fmt: skip


def sink(port: int, duration_s: float) -> Dict:
    """Record ``[sequence, arrival]`` of every probe datagram for ``duration_s`` (or until SIGTERM)."""
    arrivals: List[List[float]] = []
    previous_handler = signal.signal(signal.SIGTERM, _stop)
    deadline = time.monotonic() + duration_s
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("0.0.0.0", port))
            sock.settimeout(SINK_POLL_S)
            while time.monotonic() < deadline:
                try:
                    data = sock.recv(2048)
                except socket.timeout:
                    continue
                arrived = time.time()
                if len(data) >= _HEADER.size:
                    sequence, _sent_at = _HEADER.unpack_from(data)
                    arrivals.append([sequence, arrived])
    except _Stopped:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
    return {"arrivals": arrivals}


def analyse(arrivals: Sequence[Sequence[float]], sent: Optional[int], fail_time: Optional[float],
            window_s: float = 3.0, rate_hz: float = PROBE_RATE_HZ,
            first_send: Optional[float] = None) -> Dict:  # fmt: skip
    """The probe's figures around a failure at ``fail_time`` (wall clock).

    The window runs from half a second before the failure to ``window_s`` after it. Datagram
    ``n`` was due at ``first_send + n / rate_hz`` (the sender keeps that schedule).

    Returns:
        ``max_gap_ms``: the longest gap between arrivals in the window, counting the silence up to
        the last datagram due in it when nothing more arrived (a flow that never resumes shows the
        whole silence); ``baseline_max_gap_ms``: the longest gap before the window; ``lost``:
        datagrams sent that never arrived (whole run); ``lost_after_failure``: those due in the
        window that never arrived; ``received``, ``sent``, ``rate_hz``.
    """
    ordered = sorted(arrivals, key=lambda a: a[1])
    times = [a[1] for a in ordered]
    sequences = {int(a[0]) for a in ordered}
    result: Dict = {"rate_hz": rate_hz, "sent": sent, "received": len(sequences),
                    "lost": None if sent is None else max(0, sent - len(sequences))}  # fmt: skip
    if fail_time is None:
        result.update(max_gap_ms=None, baseline_max_gap_ms=_max_gap(times), lost_after_failure=None)
        return result
    start, end = fail_time - 0.5, fail_time + window_s
    window = [t for t in times if start <= t <= end]
    result["baseline_max_gap_ms"] = _max_gap([t for t in times if t < start])
    if first_send is not None and sent:
        due = [n for n in range(sent) if start <= first_send + n / rate_hz <= end]
        result["lost_after_failure"] = sum(1 for n in due if n not in sequences)
        if due:
            last_due = first_send + due[-1] / rate_hz
            if window and last_due > window[-1]:
                window.append(last_due)  # silence to the end: it counts as a gap
    else:
        result["lost_after_failure"] = None
    result["max_gap_ms"] = _max_gap(window)
    return result


def _max_gap(times: List[float]) -> Optional[float]:
    if len(times) < 2:
        return None
    return round(max(b - a for a, b in zip(times, times[1:])) * 1000, 2)


def main(argv: Optional[List[str]] = None) -> int:
    """Command-line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="tool", required=True)
    sender = sub.add_parser("send")
    sender.add_argument("--dst", required=True)
    sender.add_argument("--port", type=int, default=PROBE_PORT)
    sender.add_argument("--sport", type=int, required=True)
    sender.add_argument("--rate", type=float, default=PROBE_RATE_HZ)
    sender.add_argument("--duration", type=float, required=True)
    sender.add_argument("--json", required=True)
    receiver = sub.add_parser("sink")
    receiver.add_argument("--port", type=int, default=PROBE_PORT)
    receiver.add_argument("--duration", type=float, required=True)
    receiver.add_argument("--json", required=True)
    args = parser.parse_args(argv)
    if args.tool == "send":
        result = send(args.dst, args.port, args.sport, args.rate, args.duration)
    else:
        result = sink(args.port, args.duration)
    with open(args.json + ".tmp", "w", encoding="utf-8") as handle:
        json.dump(result, handle)
    os.replace(args.json + ".tmp", args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
