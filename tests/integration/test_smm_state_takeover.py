"""A ``state`` mirror that saw only the handshake copies and the SMM's records takes a real TCP transfer over.

No Open vSwitch: the test plays the switch. A client and a server, each in a
network namespace of the test's own, send their frames into veth pairs whose
other ends the test reads (``Relay``); it sends each frame to the primary
cell unmarked and, as the switch does for a ``state`` flow, a marked copy of
the SYN/FIN/RST segments only to the mirror cell. What a cell forwards goes
on to the host its destination MAC names. Both cells are ``prism cell``
processes in a third namespace, with their management sockets and the fake
controller on its loopback. Mid-transfer the primary's process is killed and
the relay sends the flow's frames to the mirror instead (what the
FAST_FAILOVER group does): the transfer must complete with every byte, the
mirror must have taken the flow over within the replicated window, and it
must never have seen a data segment before.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Dict, List, Optional

import pytest

from prism.mgmt import protocol as mgmt
from prism.cell.io import PacketSocket
from prism.cell.state_server import read_state
from prism.flows.identity import PROTO_TCP, TCP_FIN, TCP_RST, TCP_SYN, FlowKey, PacketInfo, mac_to_bytes, parse_frame
from prism.openflow.changes import MIRROR_MAC
from tests.integration.smm_cells import KEY, FakeController, in_netns, wait_for
from tests.support import poll

REPO_ROOT = Path(__file__).resolve().parents[2]
_TAG = f"{os.getpid() % 1_000_000}"
NS_CLIENT, NS_SERVER, NS_CELLS = f"pstc{_TAG}", f"psts{_TAG}", f"pstx{_TAG}"
#: veth pairs: (end in the namespace, end the relay reads), at most 15 characters each
LINKS = {name: (f"ps{_TAG}{name[0]}i", f"ps{_TAG}{name[0]}r") for name in ("client", "server", "1", "2")}
CLIENT, SERVER, SERVER_PORT, CLIENT_PORT = "172.31.253.1", "172.31.253.2", 5201, 43000
CLIENT_MAC, SERVER_MAC = "02:00:00:00:fd:01", "02:00:00:00:fd:02"
CELL_MGMT = {"c1": ("127.0.0.1", 7700), "c2": ("127.0.0.2", 7700)}
CONTROLLER = ("127.0.0.1", 7600)
PROFILE = 31
TRANSFER_BYTES = 16 * 1024 * 1024
CHUNK_BYTES = 32 * 1024
CHUNK_PAUSE_S = 0.01  #: paced at about 3 MB/s: the transfer lasts a few seconds
#: The primary forwarded at least this much before it dies: beyond the handshake's window (its
#: unscaled SYN-ACK window taken at the assumed scale 7: 8 MB) plus the tolerance, so that a
#: mirror without the progress records would refuse the connection.
KILL_AFTER_BYTES = 10 * 1024 * 1024
TOLERANCE_BYTES = 1024 * 1024
START_TIMEOUT_S = 15.0
TRANSFER_TIMEOUT_S = 60.0  #: a bound for a hung test, not a performance assertion
STATE_FLAGS = TCP_SYN | TCP_FIN | TCP_RST
_MIRROR_DST, _CLIENT_DST = mac_to_bytes(MIRROR_MAC), mac_to_bytes(CLIENT_MAC)

SERVER_SCRIPT = f"""
import socket, sys
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("{SERVER}", {SERVER_PORT}))
listener.listen(1)
print("listening", flush=True)
conn, _ = listener.accept()
total = 0
while True:
    data = conn.recv(65536)
    if not data:
        break
    total += len(data)
conn.sendall(str(total).encode())
conn.close()
print(total, flush=True)
"""

CLIENT_SCRIPT = f"""
import socket, time
sock = socket.socket()
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.bind(("{CLIENT}", {CLIENT_PORT}))
sock.connect(("{SERVER}", {SERVER_PORT}))
chunk = bytes(range(256)) * ({CHUNK_BYTES} // 256)
sent = 0
while sent < {TRANSFER_BYTES}:
    sock.sendall(chunk)
    sent += len(chunk)
    time.sleep({CHUNK_PAUSE_S})  # pacing: the transfer lasts long enough to fail a cell in its middle
sock.shutdown(socket.SHUT_WR)
reply = b""
while True:
    data = sock.recv(100)
    if not data:
        break
    reply += data
print(sent, reply.decode(), flush=True)
"""


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {result.stderr.strip()}")
    return result


def _in(namespace: str, *argv: str) -> None:
    _run("ip", "netns", "exec", namespace, *argv)


@pytest.fixture
def namespaces():
    """Client, server and cells namespaces, one veth pair each to the root namespace; removed even on failure."""
    if os.geteuid() != 0:
        pytest.fail("this test needs root (network namespaces, raw sockets): run `make test` as root")
    placement = {"client": NS_CLIENT, "server": NS_SERVER, "1": NS_CELLS, "2": NS_CELLS}
    try:
        for namespace in (NS_CLIENT, NS_SERVER, NS_CELLS):
            _run("ip", "netns", "add", namespace)
            _in(namespace, "ip", "link", "set", "lo", "up")
            _in(namespace, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
        for name, (inner, outer) in LINKS.items():
            _run("ip", "link", "add", outer, "type", "veth", "peer", "name", inner, "netns", placement[name])
            _run("sysctl", "-qw", f"net.ipv6.conf.{outer}.disable_ipv6=1")
            _run("ip", "link", "set", outer, "up")
            _in(placement[name], "ip", "link", "set", inner, "up")
            for offload in ("tx", "tso", "gso", "gro"):  # one frame per segment, checksums filled in
                _run("ethtool", "-K", outer, offload, "off", check=False)
                _in(placement[name], "ethtool", "-K", inner, offload, "off")
        for name, namespace, address, mac, peer, peer_mac in (
                ("client", NS_CLIENT, CLIENT, CLIENT_MAC, SERVER, SERVER_MAC),
                ("server", NS_SERVER, SERVER, SERVER_MAC, CLIENT, CLIENT_MAC)):  # fmt: skip
            inner = LINKS[name][0]
            _in(namespace, "ip", "link", "set", inner, "address", mac)
            _in(namespace, "ip", "address", "add", f"{address}/24", "dev", inner)
            _in(namespace, "ip", "neigh", "replace", peer, "lladdr", peer_mac, "dev", inner, "nud", "permanent")
        yield
    finally:
        for namespace in (NS_CLIENT, NS_SERVER, NS_CELLS):
            _run("ip", "netns", "del", namespace, check=False)
        for _, outer in LINKS.values():
            _run("ip", "link", "del", outer, check=False)


class Relay:
    """The switch, played in a thread: hosts' frames to the primary cell (and state copies to the mirror).

    ``primary`` and ``mirror`` name the cells' links ("1", "2"; mirror None:
    no copies); assigning ``primary`` is the fast failover.
    """

    def __init__(self) -> None:
        self.sockets = {name: PacketSocket(outer) for name, (_, outer) in LINKS.items()}
        self.primary: str = "1"
        self.mirror: Optional[str] = "2"
        self.copies: Dict[str, int] = {"1": 0, "2": 0}
        self.data_copies = 0
        self.errors: List[BaseException] = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="relay", daemon=True)

    def _run(self) -> None:
        by_fd = {sock.fileno(): name for name, sock in self.sockets.items()}
        try:
            while not self._stop.is_set():
                ready, _, _ = select.select(list(by_fd), [], [], 0.05)
                for fd in ready:
                    name = by_fd[fd]
                    while (frame := self.sockets[name].recv_frame()) is not None:
                        self._relay(name, frame)
        except BaseException as error:  # noqa: BLE001 - reported by the test
            self.errors.append(error)

    def _relay(self, source: str, frame: bytes) -> None:
        if source in ("1", "2"):  # forwarded by a cell: to the host its destination MAC names
            destination = "client" if frame[:6] == _CLIENT_DST else "server"
            self.sockets[destination].send(frame)
            return
        info = parse_frame(frame)
        if info.__class__ is not PacketInfo or info.proto != PROTO_TCP:
            self.sockets["server" if source == "client" else "client"].send(frame)
            return
        mirror = self.mirror
        if mirror is not None and info.tcp_flags & STATE_FLAGS:
            self.sockets[mirror].send(_MIRROR_DST + frame[6:])  # marked as the mirror bucket marks it
            self.copies[mirror] += 1
            if info.payload_len:
                self.data_copies += 1
        self.sockets[self.primary].send(frame)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self.thread.is_alive():  # never started when the cells failed to come up
            self.thread.join(5)
        for sock in self.sockets.values():
            sock.close()


def _start_cell(cell_id: str, tmp_path: Path) -> subprocess.Popen:
    host, port = CELL_MGMT[cell_id]
    key_file = tmp_path / "mgmt.key"  # the FakeController's key (issue 10: cells authenticate)
    if not key_file.exists():
        key_file.write_bytes(KEY)
        key_file.chmod(0o600)
    with open(tmp_path / f"{cell_id}.log", "wb") as log:
        return subprocess.Popen(
            ["ip", "netns", "exec", NS_CELLS, sys.executable, "-m", "prism.cli", "cell",
             "--interface", LINKS[cell_id[1]][0], "--cell-id", cell_id,
             "--state-socket", str(tmp_path / f"{cell_id}.sock"), "--mgmt-key-file", str(key_file),
             "--mgmt-listen", f"{host}:{port}", "--controller", "%s:%d" % CONTROLLER],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=str(REPO_ROOT),
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        )  # fmt: skip


def _flow(tmp_path: Path, cell_id: str, flow_id: int) -> Optional[dict]:
    for record in read_state(tmp_path / f"{cell_id}.sock")["flows"]:
        if record["flow_id"] == flow_id:
            return record
    return None


def _stop(process: Optional[subprocess.Popen]) -> None:
    if process is not None and process.poll() is None:
        process.send_signal(signal.SIGKILL)
        process.wait(10)


def test_a_state_mirror_takes_a_tcp_transfer_over_mid_way(namespaces, tmp_path):
    with in_netns(NS_CELLS):
        controller = FakeController(CONTROLLER)
    relay = Relay()
    cells: Dict[str, subprocess.Popen] = {}
    server = client = None
    flow_id = FlowKey.between(PROTO_TCP, CLIENT, CLIENT_PORT, SERVER, SERVER_PORT)[0].flow_id
    logs = lambda: "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-2000:]}"  # noqa: E731
                             for p in sorted(tmp_path.glob("*.log")))  # fmt: skip
    try:
        for cell_id in ("c1", "c2"):
            cells[cell_id] = _start_cell(cell_id, tmp_path)
        poll(lambda: all((tmp_path / f"{cell_id}.sock").exists() for cell_id in cells)
             or any(p.poll() is not None for p in cells.values()), timeout=START_TIMEOUT_S, interval=0.05)  # fmt: skip
        assert all(p.poll() is None for p in cells.values()), logs()
        assert all((tmp_path / f"{cell_id}.sock").exists() for cell_id in cells), logs()
        relay.start()
        directory = {"type": "directory", "epoch": 1, "live": ["c1", "c2"],
                     "cells": {cell_id: list(address) for cell_id, address in CELL_MGMT.items()},
                     "takeover_tolerance_bytes": TOLERANCE_BYTES}  # fmt: skip
        control = [directory,
                   {"type": "profiles", "epoch": 1, "full": True, "profiles": {str(PROFILE): ["c1", ["c2"]]}},
                   {"type": "assign", "flows": [[flow_id, PROFILE, "", mgmt.MODE_STATE]]}]  # fmt: skip
        for message in control:
            for address in CELL_MGMT.values():
                controller.send(message, address)
        wait_for(lambda: all(controller.of_type("heartbeat", cell_id) for cell_id in cells), controller,
                 "both cells' heartbeats")  # fmt: skip

        server_log = open(tmp_path / "server.log", "w+")
        server = subprocess.Popen(["ip", "netns", "exec", NS_SERVER, sys.executable, "-c", SERVER_SCRIPT],
                                  stdout=server_log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)  # fmt: skip
        poll(lambda: "listening" in (tmp_path / "server.log").read_text() or server.poll() is not None,
             timeout=START_TIMEOUT_S, interval=0.05)  # fmt: skip
        assert server.poll() is None and "listening" in (tmp_path / "server.log").read_text(), logs()
        client_log = open(tmp_path / "client.log", "w+")
        client = subprocess.Popen(["ip", "netns", "exec", NS_CLIENT, sys.executable, "-c", CLIENT_SCRIPT],
                                  stdout=client_log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)  # fmt: skip

        def primary_moved_on():
            primary, mirror = _flow(tmp_path, "c1", flow_id), _flow(tmp_path, "c2", flow_id)
            # the mirror has a progress record of a primary that forwarded enough of the transfer
            return (primary is not None and mirror is not None and primary["primary_bytes"] >= KILL_AFTER_BYTES
                    and mirror["packets"] > 10)  # fmt: skip

        wait_for(lambda: primary_moved_on() or client.poll() is not None, controller, "the transfer to get going")
        assert client.poll() is None, "the transfer ended before the failure: " + logs()
        before = _flow(tmp_path, "c2", flow_id)
        # the mirror saw the SYN and the SYN-ACK (once each, unless one was retransmitted), no data
        assert relay.data_copies == 0 and 2 <= relay.copies["2"] <= 4
        assert before["mirror_packets"] == relay.copies["2"] and before["primary_packets"] == 0
        assert before["state"] == "ESTABLISHED" and before["token"] == _flow(tmp_path, "c1", flow_id)["token"]

        cells["c1"].send_signal(signal.SIGKILL)  # the primary's process dies mid-transfer ...
        cells["c1"].wait(10)
        relay.primary, relay.mirror = "2", None  # ... and the switch fails over to the mirror
        for address in (CELL_MGMT["c2"],):
            controller.send({**directory, "epoch": 2, "live": ["c2"]}, address)

        try:
            client.wait(TRANSFER_TIMEOUT_S)
            server.wait(TRANSFER_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the transfer did not survive the takeover: {read_state(tmp_path / 'c2.sock')['tracker']}")
        assert client.returncode == 0 and server.returncode == 0, logs()
        assert (tmp_path / "server.log").read_text().split()[-1] == str(TRANSFER_BYTES), logs()
        assert (tmp_path / "client.log").read_text().split() == [str(TRANSFER_BYTES), str(TRANSFER_BYTES)]
        assert not relay.errors, relay.errors

        taken = _flow(tmp_path, "c2", flow_id)
        state = read_state(tmp_path / "c2.sock")
        tracker = state["tracker"]
        assert taken["role"] == "primary" and taken["token"] == before["token"] != 0
        assert taken["first_seen"] == before["first_seen"]
        assert tracker["flows_taken_over"] == 1 and tracker["flows_reanchored"] == 2
        assert tracker["dropped_out_of_window"] == 0 and tracker["dropped_no_state"] == 0
        assert state["counters"]["dropped"] == 0
        # its counters go on from the replicated ones: what a takeover loses is the frames since the last record
        assert taken["packets"] > before["packets"] and taken["bytes"] > before["bytes"]
    finally:
        relay.stop()
        for process in (client, server, *cells.values()):
            _stop(process)
        controller.close()
