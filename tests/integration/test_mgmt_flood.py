"""A flood of 10,000 forged management datagrams per second, against a cell process and against the controller.

Forged means: sealed with another key, garbage, larger than any envelope,
or a compressed bomb; every kind of message. The flood runs for a few
seconds only, from its own process, inside the test's own namespace (the
cell) or on loopback (the controller). Nothing forged may be accepted, the
refusals are counted where an operator looks (the cell's state document, the
REST status, the metrics), and nobody is declared dead. The cell's data path
is offered a fixed rate it handles easily alone; under the flood it must
still forward at least ``MIN_RATE_KEPT`` of what it forwarded alone (the
saturated ratio is measured by ``benchmarks/mgmt_flood.py``).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from benchmarks.mgmt_flood import FloodBed, finish_flood
from prism.mgmt import protocol as mgmt
from prism.mgmt.auth import MgmtAuth, new_key_text
from tests.support import poll

REPO_ROOT = Path(__file__).resolve().parents[2]
FLOOD_RATE = 10_000
FLOOD_SECONDS = 4.0
OFFERED_FPS = 2000.0
MEASURE_S = 3.0
MIN_RATE_KEPT = 0.8
DEAD_AFTER_S = 0.35  #: the default failure detector's limit between two heartbeats
APPS = ("ryu_apps/mirroring_director.py", "ryu_apps/rest_api.py")
#: The share of the forged flood the controller must count as refused (the kernel may drop the rest).
REFUSED_SHARE_MIN = 0.9


@pytest.fixture
def flood_bed(tmp_path):
    if os.geteuid() != 0:
        pytest.fail("this test needs root (a network namespace, raw sockets): run `make test` as root")
    bed = FloodBed(tmp_path, str(os.getpid() % 100_000))
    try:
        bed.start()
        yield bed
    finally:
        bed.stop()


def test_a_cell_under_a_forged_flood_refuses_it_all_keeps_forwarding_and_beating(flood_bed):
    alone = flood_bed.forwarding_rate(MEASURE_S, OFFERED_FPS)
    since = time.monotonic()
    flood = flood_bed.flood(FLOOD_RATE, FLOOD_SECONDS + 1.0)
    try:
        # measure once the flood reaches the cell: it has refused some of it
        assert poll(lambda: flood_bed.state()["replication"]["counters"]["auth_refused"] > 0, timeout=5,
                    interval=0.05), "the forged flood never reached the cell"  # fmt: skip
        flooded = flood_bed.forwarding_rate(MEASURE_S, OFFERED_FPS)
    finally:
        sent = finish_flood(flood)
    gap = flood_bed.longest_beat_gap(since)
    counters = flood_bed.state()["replication"]["counters"]
    print(f"cell: {alone:.0f} fps alone, {flooded:.0f} fps flooded ({flooded / alone:.2f}); "
          f"{sent} forged sent, {counters['auth_refused']} refused; longest heartbeat gap {gap:.3f} s")
    assert sent >= FLOOD_RATE * FLOOD_SECONDS * 0.9
    assert counters["auth_accepted"] == 0
    assert counters["auth_refused"] >= sent * 0.5  # the rest the kernel dropped: never read, never accepted
    assert counters["auth_refused_bad_tag"] > 0 and counters["auth_refused_oversized"] > 0
    assert gap < DEAD_AFTER_S, f"heartbeats stopped for {gap:.3f} s under the flood"
    assert flooded >= MIN_RATE_KEPT * alone, f"{flooded:.0f} fps under the flood, {alone:.0f} alone"


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _get(manager, path: str):
    with urllib.request.urlopen(manager.wsapi_url(path), timeout=10) as response:
        return response.read().decode()


def test_the_controller_under_a_forged_flood_declares_no_cell_dead(ryu_manager, tmp_path, monkeypatch):
    import json

    key = new_key_text()
    (tmp_path / "mgmt.key").write_text(key)
    listen, cell1, cell2 = _free_udp_port(), _free_udp_port(), _free_udp_port()
    config = tmp_path / "prism.yaml"
    config.write_text(textwrap.dedent(f"""\
        management: {{listen: "127.0.0.1:{listen}", key_file: mgmt.key, generation_file: generation}}
        switches:
          - dpid: 1
            cells:
              - {{id: cell1, port: 1, mgmt: "127.0.0.1:{cell1}"}}
              - {{id: cell2, port: 2, mgmt: "127.0.0.1:{cell2}"}}
            edge_ports: [3]
        """))
    monkeypatch.chdir(REPO_ROOT)
    manager = ryu_manager(*APPS, env={"PRISM_CONFIG": str(config)}, wait_wsapi=True)
    stop = threading.Event()

    def beat(cell_id: str, port: int) -> None:
        auth, seq = MgmtAuth(key.encode(), cell_id), 0
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.1", port))
            while not stop.wait(0.1):
                seq += 1
                message = mgmt.encode({"type": "heartbeat", "cell": cell_id, "seq": seq, "flows": 0})
                sock.sendto(auth.seal(message, time.time()), ("127.0.0.1", listen))

    beaters = [threading.Thread(target=beat, args=args, daemon=True) for args in (("cell1", cell1), ("cell2", cell2))]
    for thread in beaters:
        thread.start()
    try:
        def all_heard():
            return all(cell["heartbeat_seen"] for cell in json.loads(_get(manager, "/prism/v1/cells"))["cells"])

        assert poll(all_heard, timeout=10, interval=0.1), ("the controller heard no heartbeats", manager.log_tail())
        flood = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.mgmt_flood", "send", "--to", f"127.0.0.1:{listen}",
             "--rate", str(FLOOD_RATE), "--seconds", str(FLOOD_SECONDS)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=str(REPO_ROOT),
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        )  # fmt: skip
        sent = finish_flood(flood)

        def flood_counted():
            return json.loads(_get(manager, "/prism/v1/status"))["mgmt_auth"]["refused"] >= sent * REFUSED_SHARE_MIN

        # the controller has worked through the flood it buffered (a cell it declared dead meanwhile stays so)
        poll(flood_counted, timeout=5, interval=0.1)
        cells = json.loads(_get(manager, "/prism/v1/cells"))["cells"]
        status = json.loads(_get(manager, "/prism/v1/status"))
        metrics = _get(manager, "/metrics")
    finally:
        stop.set()
        for thread in beaters:
            thread.join(5)
    refused = status["mgmt_auth"]
    print(f"controller: {sent} forged sent, {refused['refused']} refused, {refused['accepted']} accepted")
    assert sent >= FLOOD_RATE * FLOOD_SECONDS * 0.9
    assert [(cell["id"], cell["state"], cell["failures"]) for cell in cells] == \
        [("cell1", "alive", 0), ("cell2", "alive", 0)]
    assert refused["refused"] >= sent * REFUSED_SHARE_MIN  # its buffer holds about a second of the flood
    assert refused["accepted"] == status["mgmt"]["heartbeats"]  # only the cells' own heartbeats
    assert re.search(r'prism_mgmt_refused_total\{reason="bad_tag"\} [1-9]', metrics)
