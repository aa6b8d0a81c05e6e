"""Frames per second through the cell's per-frame work (parse + track + verdict), against parse_frame alone."""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path
from typing import Callable, List, Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the checkout's packages, test tools included, without an install

from prism.cell.cell import Cell  # noqa: E402
from prism.cell.conntrack import ConnTracker, TrackerConfig  # noqa: E402
from prism.flows.identity import TCP_ACK, TCP_PSH, TCP_SYN, parse_frame  # noqa: E402
from prism.openflow.changes import MIRROR_MAC  # noqa: E402
from testkit.packets import build_tcp_frame  # noqa: E402

DEFAULT_FLOWS = 1000
DEFAULT_FRAMES = 50_000
DEFAULT_REPEATS = 5
MIRROR_SHARE = 0.5  #: share of the data frames that arrive as mirror copies (rf=1 on 2 cells)
PAYLOAD = b"x" * 1400
SEED = 7
DESCRIPTION = """Frames per second through the cell's per-frame work, against parse_frame alone.
Frames are built beforehand and no socket is involved, so this is the ceiling
the Python data path reaches on one core; the ratio says what connection
tracking costs on top of parsing."""


def _client(index: int) -> str:
    return f"172.31.{index // 250 + 1}.{index % 250 + 1}"


def build_handshakes(flows: int) -> List[bytes]:
    """SYN, SYN-ACK, ACK of ``flows`` connections, in that order per flow."""
    frames = []
    for index in range(flows):
        client, port = _client(index), 20000 + index
        frames.append(build_tcp_frame(client, "172.31.0.1", port, 80, flags=TCP_SYN, seq=1000))
        frames.append(build_tcp_frame("172.31.0.1", client, 80, port, flags=TCP_SYN | TCP_ACK,
                                      seq=5000, ack=1001))  # fmt: skip
        frames.append(build_tcp_frame(client, "172.31.0.1", port, 80, flags=TCP_ACK, seq=1001,
                                      ack=5001))  # fmt: skip
    return frames


def build_data(flows: int, count: int, mirror_share: float) -> List[bytes]:
    """``count`` data segments (1400 bytes, or acks back) over random established flows."""
    rng = random.Random(SEED)
    next_seq = [1001] * flows
    frames = []
    for _ in range(count):
        index = rng.randrange(flows)
        client, port = _client(index), 20000 + index
        eth_dst = MIRROR_MAC if rng.random() < mirror_share else "02:00:00:00:00:02"
        if rng.random() < 0.5:
            frames.append(build_tcp_frame(client, "172.31.0.1", port, 80, PAYLOAD,
                                          flags=TCP_ACK | TCP_PSH, seq=next_seq[index], ack=5001,
                                          eth_dst=eth_dst))  # fmt: skip
            next_seq[index] += len(PAYLOAD)
        else:
            frames.append(build_tcp_frame("172.31.0.1", client, 80, port, flags=TCP_ACK, seq=5001,
                                          ack=next_seq[index], eth_dst=eth_dst))  # fmt: skip
    return frames


def best_rates(cases: Sequence[tuple], repeats: int) -> List[tuple]:
    """(name, frames per second of the fastest run) for each ``(name, work, frames)`` case.

    Rounds interleave the cases, so that a busy machine slows all of them alike.
    """
    best = [float("inf")] * len(cases)
    for _ in range(repeats):
        for index, (_name, work, _frames) in enumerate(cases):
            start = time.perf_counter()
            work()
            best[index] = min(best[index], time.perf_counter() - start)
    return [(name, frames / seconds) for (name, _work, frames), seconds in zip(cases, best)]


def measure(flows: int, count: int, repeats: int) -> Sequence[tuple]:
    """Rows of (name, frames per second)."""
    handshakes = build_handshakes(flows)
    data = build_data(flows, count, MIRROR_SHARE)

    def parse_only() -> None:
        for frame in data:
            parse_frame(frame)

    def primed_cell(strict: bool) -> Cell:
        cell = Cell("bench", ConnTracker(TrackerConfig(strict=strict)))
        for frame in handshakes:
            cell.handle_frame(frame, 1.0)
        return cell

    def cell_run(cell: Cell) -> Callable[[], None]:
        handle = cell.handle_frame

        def run() -> None:
            for frame in data:
                handle(frame, 2.0)

        return run

    def new_connections() -> None:
        handle = Cell("bench").handle_frame
        for frame in handshakes:
            handle(frame, 1.0)

    loose, strict = primed_cell(False), primed_cell(True)
    rows = best_rates([
        ("parse_frame only (baseline)", parse_only, len(data)),
        ("cell, established, loose", cell_run(loose), len(data)),
        ("cell, established, strict", cell_run(strict), len(data)),
        ("cell, new connections (handshakes)", new_connections, len(handshakes)),
    ], repeats)  # fmt: skip
    for cell in (loose, strict):
        counters = cell.counters()
        if counters["dropped"] or counters["flows_tracked"] != flows:
            raise SystemExit(f"benchmark workload is wrong: {counters}")
    return rows


def main(argv: Sequence[str] = None) -> int:
    """Print frames per second for each case and its ratio to the baseline."""
    parser = argparse.ArgumentParser(description=DESCRIPTION)
    parser.add_argument("--flows", type=int, default=DEFAULT_FLOWS)
    parser.add_argument("--frames", type=int, default=DEFAULT_FRAMES)
    parser.add_argument("--repeats", type=int, default=DEFAULT_REPEATS)
    args = parser.parse_args(argv)
    rows = measure(args.flows, args.frames, args.repeats)
    baseline = rows[0][1]
    print(f"cell forwarding: {args.frames} data frames over {args.flows} flows "
          f"({MIRROR_SHARE:.0%} mirror copies), best of {args.repeats}, Python "
          f"{sys.version.split()[0]}")  # fmt: skip
    print(f"{'case':<38}{'frames/s':>12}{'vs parse':>10}{'us/frame':>10}")
    for name, rate in rows:
        print(f"{name:<38}{rate:>12,.0f}{rate / baseline:>10.2f}{1e6 / rate:>10.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
