"""Running cells with State Mirroring Modules for integration tests: loops in threads, a fake controller."""

from __future__ import annotations

import ctypes
import os
import select
import socket
import sys
import threading
import time
from collections import deque
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))

from cell_helpers import Conversation  # noqa: E402
from prism.mgmt import protocol as mgmt  # noqa: E402
from prism.cell.cell import Cell  # noqa: E402
from prism.cell.conntrack import ConnTracker  # noqa: E402
from prism.cell.loop import CellLoop  # noqa: E402
from prism.cell.main import cell_state_document  # noqa: E402
from prism.cell.smm import SmmSettings, StateMirroringModule  # noqa: E402
from prism.cell.smm_io import UdpTransport, attach  # noqa: E402
from prism.cell.state_server import StateServer, read_state  # noqa: E402
from prism.flows.identity import TCP_ACK, TCP_PSH  # noqa: E402
from prism.mgmt.auth import CONTROLLER_SENDER, MgmtAuth, new_key_text  # noqa: E402
from smm_helpers import flow_state, mirror_copy  # noqa: E402

LOOPBACK = "127.0.0.1"
PROFILE = 11
DEADLINE_S = 60.0  #: a bound for a hung test, not a performance assertion
#: How often the fake controller re-sends its standing messages (directory, profiles), as the
#: real one re-sends the directory (``prism.control.plane.DIRECTORY_REFRESH_S``, shorter here).
REFRESH_S = 1.0
TICK_S = 0.05
CLONE_NEWNET = 0x40000000
#: This test run's management key: made at import, never written to the repository.
KEY = new_key_text().encode()
_libc = ctypes.CDLL(None, use_errno=True)

__all__ = ["Conversation", "FakeController", "RunningCell", "DEADLINE_S", "PROFILE", "feed_flows",
           "in_netns", "records_of", "start_cells", "wait_for"]  # fmt: skip


class QueuePort:
    """A packet socket fed by the test thread: frames go in a deque, a pipe wakes the loop's poll."""

    def __init__(self) -> None:
        self.frames: deque = deque()
        self.sent: deque = deque()
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)

    def put(self, frame: bytes) -> None:
        self.frames.append(frame)
        os.write(self._write, b"x")

    def fileno(self) -> int:
        return self._read

    def recv_frame(self):
        if self.frames:
            return self.frames.popleft()
        try:
            os.read(self._read, 65536)
        except BlockingIOError:
            pass
        return self.frames.popleft() if self.frames else None

    def send(self, frame: bytes) -> int:
        self.sent.append(frame)
        return len(frame)

    def close(self) -> None:
        os.close(self._read)
        os.close(self._write)


class RunningCell:
    """A cell with its SMM on a UDP socket and its state socket, its loop in a thread.

    The test reads the cell only through the state socket, as ``prism cell-state``
    does (the loop thread owns the tracker). Create it inside a network
    namespace to bind its management socket there: the socket stays in it.
    """

    def __init__(self, cell_id: str, controller: Tuple[str, int], state_path: Path,
                 listen: Tuple[str, int] = (LOOPBACK, 0)) -> None:  # fmt: skip
        self.cell = Cell(cell_id, ConnTracker())
        self.port = QueuePort()
        self.transport = UdpTransport(listen)
        self.smm = StateMirroringModule(self.cell, self.transport, controller, SmmSettings(),
                                        auth=MgmtAuth(KEY, cell_id))  # fmt: skip
        self.loop = CellLoop(self.cell, self.port, tick_interval_s=TICK_S)
        attach(self.loop, self.smm, self.transport)
        self.state_path = state_path
        self.server = StateServer(state_path, lambda: cell_state_document(self.cell, self.smm, "queue", self.loop.clock()))
        self.loop.add_reader(self.server.fileno(), self.server.serve_pending)
        self.thread = threading.Thread(target=self.loop.run, name=f"cell-{cell_id}", daemon=True)

    @property
    def address(self) -> Tuple[str, int]:
        return self.transport.address

    def state(self) -> dict:
        return read_state(self.state_path)

    def stop(self) -> None:
        self.loop.stop()
        self.thread.join(10)
        self.server.close()
        self.loop.close()
        self.port.close()
        self.transport.close()


class FakeController:
    """The controller's management socket: sends control messages, collects what cells send.

    Messages sent with ``standing=True`` (the directory, the profile table) are
    sent again every REFRESH_S while the test collects, as the real controller
    refreshes its directory: a datagram lost on a lossy link is not lost for good.
    """

    def __init__(self, bind: Tuple[str, int] = (LOOPBACK, 0)) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(bind)
        self.address = self.sock.getsockname()
        self.received: List[dict] = []
        self.auth = MgmtAuth(KEY, CONTROLLER_SENDER)
        self.standing: Dict[Tuple[str, Tuple[str, int]], dict] = {}
        self._next_refresh = time.monotonic() + REFRESH_S

    def send(self, message: dict, address: Tuple[str, int], standing: bool = False) -> None:
        if standing:
            self.standing[(message["type"], tuple(address))] = message
        self.sock.sendto(self.auth.seal(mgmt.encode(message), time.time()), address)

    def refresh(self) -> None:
        """Send the standing messages again once REFRESH_S has passed since the last time."""
        if time.monotonic() < self._next_refresh:
            return
        self._next_refresh = time.monotonic() + REFRESH_S
        for (_, address), message in list(self.standing.items()):
            self.send(message, address)

    def collect(self, timeout_s: float) -> None:
        self.refresh()
        ready, _, _ = select.select([self.sock], [], [], timeout_s)
        while ready:
            datagram, _ = self.sock.recvfrom(65536)
            opened = self.auth.open(datagram, time.time())
            self.received.append(opened[1] if opened else None)
            ready, _, _ = select.select([self.sock], [], [], 0)

    def of_type(self, kind: str, cell_id: str = None) -> List[dict]:
        return [m for m in self.received if m and m["type"] == kind
                and (cell_id is None or m.get("cell") == cell_id)]  # fmt: skip

    def close(self) -> None:
        self.sock.close()


def start_cells(controller: FakeController, cells: Dict[str, RunningCell],
                profiles: Dict[int, Tuple[str, Sequence[str]]]) -> None:  # fmt: skip
    """Start the loops and give every cell the directory and the profile table."""
    directory = {"type": "directory", "epoch": 1, "live": sorted(cells),
                 "cells": {cell_id: list(c.address) for cell_id, c in cells.items()}}  # fmt: skip
    table = {"type": "profiles", "epoch": 1, "full": True,
             "profiles": {str(pid): [primary, list(mirrors)] for pid, (primary, mirrors) in profiles.items()}}
    for running in cells.values():
        running.thread.start()
        controller.send(directory, running.address, standing=True)
        controller.send(table, running.address, standing=True)


def feed_flows(controller: FakeController, cells: Dict[str, RunningCell], count: int,
               primary: str, mirrors: Sequence[str], profile: int = PROFILE) -> List[Conversation]:  # fmt: skip
    """``count`` connections (handshake and one data segment): assigned, then their packets fed."""
    conversations = [Conversation(client_port=20000 + index) for index in range(count)]
    assign = [[c.syn().key.flow_id, profile, str(c.syn().key)] for c in conversations]
    for start in range(0, len(assign), 400):
        for running in cells.values():
            controller.send({"type": "assign", "flows": assign[start:start + 400]}, running.address)
    for conv in conversations:
        frames = [conv.frame(True, 0x02, seq=conv.client_isn, ack=0, advance=False),
                  conv.frame(False, 0x12, seq=conv.server_isn, advance=False),
                  conv.frame(True, TCP_ACK), conv.frame(True, TCP_ACK | TCP_PSH, b"data")]  # fmt: skip
        for frame in frames:
            for cell_id in mirrors:
                cells[cell_id].port.put(mirror_copy(frame))
            cells[primary].port.put(frame)
    return conversations


def records_of(running: RunningCell) -> Dict[int, dict]:
    """A cell's flows (without what belongs to the cell itself), read from its state socket."""
    return {record["flow_id"]: flow_state(record) for record in running.state()["flows"]}


def wait_for(condition, controller: FakeController, what: str) -> None:
    """Collect the controller's datagrams until ``condition()``; fail after DEADLINE_S."""
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        controller.collect(0.05)


@contextmanager
def in_netns(name: str):
    """Run the block with this thread in network namespace ``name`` (sockets made there stay there)."""
    with open("/proc/thread-self/ns/net") as own, open(f"/run/netns/{name}") as target:
        if _libc.setns(target.fileno(), CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {name} failed")
        try:
            yield
        finally:
            if _libc.setns(own.fileno(), CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back to the test's namespace failed")
