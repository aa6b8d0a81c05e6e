"""State Mirroring Modules over real UDP sockets on loopback: two cells' loops in threads and a fake controller."""

from __future__ import annotations

import os
import select
import socket
import sys
import threading
import time
from collections import deque
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))

from cell_helpers import Conversation  # noqa: E402
from prism import mgmt  # noqa: E402
from prism.cell.cell import Cell  # noqa: E402
from prism.cell.conntrack import ConnTracker  # noqa: E402
from prism.cell.loop import CellLoop  # noqa: E402
from prism.cell.main import cell_state_document  # noqa: E402
from prism.cell.smm import SmmSettings, StateMirroringModule  # noqa: E402
from prism.cell.smm_io import UdpTransport, attach  # noqa: E402
from prism.cell.state_server import StateServer, read_state  # noqa: E402
from prism.flows import TCP_ACK, TCP_PSH  # noqa: E402
from smm_helpers import flow_state, mirror_copy  # noqa: E402

LOOPBACK = "127.0.0.1"
PROFILE = 11
FLOWS = 200
DEADLINE_S = 30.0  #: a bound for a hung test, not a performance assertion
HEARTBEATS_WANTED = 10


class QueuePort:
    """A packet socket fed by the test thread: frames go in a deque, a pipe wakes the loop's poll."""

    def __init__(self):
        self.frames = deque()
        self.sent = deque()
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)

    def put(self, frame):
        self.frames.append(frame)
        os.write(self._write, b"x")

    def fileno(self):
        return self._read

    def recv_frame(self):
        if self.frames:
            return self.frames.popleft()
        try:
            os.read(self._read, 65536)
        except BlockingIOError:
            pass
        return self.frames.popleft() if self.frames else None

    def send(self, frame):
        self.sent.append(frame)
        return len(frame)

    def close(self):
        os.close(self._read)
        os.close(self._write)


class RunningCell:
    """A cell with its SMM on a loopback UDP socket and its state socket, its loop in a thread.

    The test reads the cell only through the state socket, as ``prism cell-state`` does
    (the loop thread owns the tracker).
    """

    def __init__(self, cell_id, controller, state_path):
        self.cell = Cell(cell_id, ConnTracker())
        self.port = QueuePort()
        self.transport = UdpTransport((LOOPBACK, 0))
        self.smm = StateMirroringModule(self.cell, self.transport, controller, SmmSettings())
        self.loop = CellLoop(self.cell, self.port, tick_interval_s=0.05)
        attach(self.loop, self.smm, self.transport)
        self.state_path = state_path
        self.server = StateServer(state_path, lambda: cell_state_document(self.cell, self.smm, "queue"))
        self.loop.add_reader(self.server.fileno(), self.server.serve_pending)
        self.thread = threading.Thread(target=self.loop.run, name=f"cell-{cell_id}", daemon=True)

    def state(self):
        return read_state(self.state_path)

    def stop(self):
        self.loop.stop()
        self.thread.join(10)
        self.server.close()
        self.loop.close()
        self.port.close()
        self.transport.close()


class FakeController:
    """The controller's management socket: sends control messages, collects what cells send."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((LOOPBACK, 0))
        self.address = self.sock.getsockname()
        self.received = []

    def send(self, message, address):
        self.sock.sendto(mgmt.encode(message), address)

    def collect(self, timeout_s):
        ready, _, _ = select.select([self.sock], [], [], timeout_s)
        while ready:
            datagram, _ = self.sock.recvfrom(65536)
            self.received.append(mgmt.decode(datagram))
            ready, _, _ = select.select([self.sock], [], [], 0)

    def of_type(self, kind, cell_id=None):
        return [m for m in self.received if m and m["type"] == kind
                and (cell_id is None or m.get("cell") == cell_id)]  # fmt: skip

    def close(self):
        self.sock.close()


def wait_for(condition, controller, what):
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        controller.collect(0.05)


@pytest.fixture
def two_cells(tmp_path):
    controller = FakeController()
    cells = {cell_id: RunningCell(cell_id, controller.address, tmp_path / f"{cell_id}.sock")
             for cell_id in ("c1", "c2")}  # fmt: skip
    directory = {"type": "directory", "epoch": 1, "live": ["c1", "c2"],
                 "cells": {cell_id: list(c.transport.address) for cell_id, c in cells.items()}}  # fmt: skip
    profiles = {"type": "profiles", "epoch": 1, "full": True, "profiles": {str(PROFILE): ["c1", ["c2"]]}}
    for running in cells.values():
        running.thread.start()
        controller.send(directory, running.transport.address)
        controller.send(profiles, running.transport.address)
    try:
        yield controller, cells
    finally:
        for running in cells.values():
            running.stop()
        controller.close()


def test_two_cells_replicate_over_loopback_udp_and_beat_to_the_controller(two_cells):
    controller, cells = two_cells
    conversations = [Conversation(client_port=20000 + index) for index in range(FLOWS)]
    assign = [[c.syn().key.flow_id, PROFILE, str(c.syn().key)] for c in conversations]
    for running in cells.values():
        controller.send({"type": "assign", "flows": assign}, running.transport.address)
    for conv in conversations:
        frames = [conv.frame(True, 0x02, seq=conv.client_isn, ack=0, advance=False),
                  conv.frame(False, 0x12, seq=conv.server_isn, advance=False),
                  conv.frame(True, TCP_ACK), conv.frame(True, TCP_ACK | TCP_PSH, b"data")]  # fmt: skip
        for frame in frames:
            cells["c2"].port.put(mirror_copy(frame))
            cells["c1"].port.put(frame)

    def converged():
        primary = {r["flow_id"]: flow_state(r) for r in cells["c1"].state()["flows"]}
        mirror = {r["flow_id"]: flow_state(r) for r in cells["c2"].state()["flows"]}
        return len(primary) == FLOWS and primary == mirror

    wait_for(converged, controller, "the mirror to hold the primary's records")
    wait_for(lambda: len(controller.of_type("heartbeat", "c1")) >= HEARTBEATS_WANTED, controller,
             "heartbeats")  # fmt: skip
    assert len(cells["c1"].port.sent) == 4 * FLOWS  # every primary copy forwarded
    mirror_state = cells["c2"].state()
    tokens = {flow["token"] for flow in mirror_state["flows"]}
    assert 0 not in tokens and len(tokens) == FLOWS  # learnt through replication only
    assert mirror_state["replication"]["counters"]["records_applied"] >= FLOWS
    beats = controller.of_type("heartbeat", "c1")
    assert [b["seq"] for b in beats] == sorted(b["seq"] for b in beats) and beats[0]["seq"] == 1
    assert beats[-1]["flows"] == FLOWS
    assert beats[-1]["replication"]["records_sent"] >= FLOWS
    # the seed of a new mirror: c1 snapshots the profile to c2 and reports seeded
    controller.send({"type": "seed", "profile_id": PROFILE, "target": "c2"}, cells["c1"].transport.address)
    wait_for(lambda: controller.of_type("seeded"), controller, "seeded")
    (seeded,) = controller.of_type("seeded")
    assert seeded == {"type": "seeded", "cell": "c1", "profile_id": PROFILE, "target": "c2", "flows": FLOWS}
