"""``prism cell`` on a real interface: a veth pair into a network namespace of the test's own, no OVS."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from prism.cell.io import PacketSocket
from prism.cell.state_server import read_state
from prism.flows.identity import TCP_ACK, TCP_PSH, TCP_SYN
from prism.openflow.changes import MIRROR_MAC
from testkit.packets import build_arp_frame, build_tcp_frame
from tests.support import poll

REPO_ROOT = Path(__file__).resolve().parents[2]
_TAG = f"{os.getpid() % 1_000_000}"
NETNS = f"pcelltest{_TAG}"
VETH_ROOT = f"pct{_TAG}r"  # at most 10 characters: within IFNAMSIZ
VETH_CELL = f"pct{_TAG}c"
CELL_ID = f"pcelltest{_TAG}"

CLIENT, SERVER = "172.31.250.1", "172.31.250.2"
CLIENT_MAC, SERVER_MAC = "02:00:00:00:fa:01", "02:00:00:00:fa:02"
CPORT, SPORT = 43210, 8080
CLIENT_ISN, SERVER_ISN = 100_000, 900_000

START_TIMEOUT_S = 15.0
FRAME_TIMEOUT_S = 5.0
STOP_TIMEOUT_S = 10.0


def _ip(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {result.stderr.strip()}")
    return result


@pytest.fixture
def veth_netns():
    """A namespace holding one veth end; the other end stays here. Removed even on failure."""
    if os.geteuid() != 0:
        pytest.fail("this test needs root (network namespaces, raw sockets): run `make test` as root")
    try:
        _ip("ip", "netns", "add", NETNS)
        _ip("ip", "link", "add", VETH_ROOT, "type", "veth", "peer", "name", VETH_CELL)
        _ip("ip", "link", "set", VETH_CELL, "netns", NETNS)
        # No IPv6 chatter (router solicitations, DAD) on either end: only our frames travel.
        _ip("sysctl", "-qw", f"net.ipv6.conf.{VETH_ROOT}.disable_ipv6=1")
        _ip("ip", "netns", "exec", NETNS, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
            f"net.ipv6.conf.{VETH_CELL}.disable_ipv6=1")  # fmt: skip
        _ip("ip", "link", "set", VETH_ROOT, "up")
        _ip("ip", "netns", "exec", NETNS, "ip", "link", "set", VETH_CELL, "up")
        yield
    finally:
        _ip("ip", "netns", "del", NETNS, check=False)  # takes the cell's end, and so the pair
        _ip("ip", "link", "del", VETH_ROOT, check=False)


@pytest.fixture
def cell_process(veth_netns, tmp_path):
    """``prism cell`` in the namespace (``ip netns exec`` execs: the PID is the cell's)."""
    state_socket = tmp_path / "cell.sock"
    log_path = tmp_path / "cell.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", NETNS, sys.executable, "-m", "prism.cli", "cell",
             "--interface", VETH_CELL, "--cell-id", CELL_ID, "--state-socket", str(state_socket),
             "--log-level", "DEBUG"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=str(REPO_ROOT),
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        )  # fmt: skip
    try:
        poll(lambda: state_socket.exists() or proc.poll() is not None, timeout=START_TIMEOUT_S, interval=0.05)
        if not state_socket.exists() or proc.poll() is not None:
            pytest.fail(f"prism cell did not start:\n{log_path.read_text(errors='replace')}")
        yield proc, state_socket, log_path
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(STOP_TIMEOUT_S)


def _frame(from_client: bool, flags: int, seq: int, ack: int, payload: bytes = b"",
           eth_dst: str = None) -> bytes:  # fmt: skip
    if from_client:
        return build_tcp_frame(CLIENT, SERVER, CPORT, SPORT, payload, flags=flags, seq=seq,
                               ack=ack, eth_src=CLIENT_MAC, eth_dst=eth_dst or SERVER_MAC)  # fmt: skip
    return build_tcp_frame(SERVER, CLIENT, SPORT, CPORT, payload, flags=flags, seq=seq, ack=ack,
                           eth_src=SERVER_MAC, eth_dst=eth_dst or CLIENT_MAC)  # fmt: skip


class Switch:
    """The root-namespace end of the veth: sends frames to the cell, collects what comes back."""

    def __init__(self) -> None:
        self.port = PacketSocket(VETH_ROOT)
        self.received = []

    def send_and_expect(self, frame: bytes) -> None:
        """Send ``frame``; return once the cell has sent it back byte for byte."""
        self.port.send(frame)
        deadline = time.monotonic() + FRAME_TIMEOUT_S
        while frame not in self.received:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail(f"the cell did not send back a frame of {len(frame)} bytes "
                            f"({len(self.received)} frames came back)")  # fmt: skip
            if self.port.wait(min(remaining, 0.5)):
                while (got := self.port.recv_frame()) is not None:
                    self.received.append(got)

    def resend_until_back(self, frame: bytes) -> None:
        """Like ``send_and_expect``, resending while the link comes back up."""
        deadline = time.monotonic() + FRAME_TIMEOUT_S
        while frame not in self.received:
            if time.monotonic() > deadline:
                pytest.fail("the cell did not forward again after its link came back")
            try:
                self.port.send(frame)
            except OSError:  # the link is not up yet
                pass
            if self.port.wait(0.2):
                while (got := self.port.recv_frame()) is not None:
                    self.received.append(got)

    def close(self) -> None:
        self.port.close()


def test_cell_forwards_primary_copies_drops_unknown_mid_connection_and_absorbs_mirror_copies(
    cell_process,
):
    """The test plays the switch from the root-namespace end of the veth.

    To show that a frame was *not* sent back without timing anything, such
    frames are followed by one that is: the cell handles frames in order, so
    when the follower comes back, the first one would already have.
    """
    proc, state_socket, log_path = cell_process
    switch = Switch()
    try:
        syn = _frame(True, TCP_SYN, CLIENT_ISN, 0)
        syn_ack = _frame(False, TCP_SYN | TCP_ACK, SERVER_ISN, CLIENT_ISN + 1)
        ack = _frame(True, TCP_ACK, CLIENT_ISN + 1, SERVER_ISN + 1)
        for frame in (syn, syn_ack, ack):
            switch.send_and_expect(frame)

        # A mid-connection segment of a connection the cell never saw: dropped.
        orphan = build_tcp_frame(CLIENT, SERVER, CPORT + 1, SPORT, b"orphan", flags=TCP_ACK,
                                 seq=77, ack=88, eth_src=CLIENT_MAC, eth_dst=SERVER_MAC)  # fmt: skip
        switch.port.send(orphan)
        # A mirror copy of the client's first 100 data bytes: absorbed, but it moves the state.
        request = b"q" * 100
        mirror = _frame(True, TCP_ACK | TCP_PSH, CLIENT_ISN + 1, SERVER_ISN + 1, request,
                        eth_dst=MIRROR_MAC)  # fmt: skip
        switch.port.send(mirror)
        switch.port.send(build_arp_frame(CLIENT, SERVER, CLIENT_MAC))  # not a flow: ignored
        # The primary copy of the server's answer comes back; by then the cell handled the rest.
        answer = _frame(False, TCP_ACK | TCP_PSH, SERVER_ISN + 1, CLIENT_ISN + 1 + len(request),
                        b"a" * 50)  # fmt: skip
        switch.send_and_expect(answer)
        assert orphan not in switch.received
        assert mirror not in switch.received
        assert switch.received.count(syn) == 1  # the cell never loops its own sends back

        state = read_state(state_socket)
    finally:
        switch.close()

    counters = state["counters"]
    assert state["cell_id"] == CELL_ID and state["interface"] == VETH_CELL
    assert counters["primary_packets"] == 5 and counters["forwarded"] == 4
    assert counters["dropped"] == 1 and counters["dropped_no_state"] == 1
    assert counters["mirror_packets"] == 1 and counters["ignored"] == 1
    assert counters["flows_tracked"] == 1
    (flow,) = state["flows"]
    assert flow["key"] == f"tcp {CLIENT}:{CPORT} <-> {SERVER}:{SPORT}"
    assert flow["state"] == "ESTABLISHED" and flow["role"] == "primary"
    assert (flow["primary_packets"], flow["mirror_packets"]) == (4, 1)
    assert flow["primary_bytes"] == len(syn) + len(syn_ack) + len(ack) + len(answer)
    assert flow["mirror_bytes"] == len(mirror)
    assert flow["orig"]["seq_end"] == CLIENT_ISN + 1 + len(request)  # learnt from the mirror copy
    assert flow["reply"]["ack_max"] == CLIENT_ISN + 1 + len(request)

    shown = subprocess.run(
        [sys.executable, "-m", "prism.cli", "cell-state", str(state_socket)],
        capture_output=True, text=True, timeout=30, cwd=str(REPO_ROOT),
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert "ESTABLISHED" in shown.stdout and "no_state 1" in shown.stdout

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(STOP_TIMEOUT_S) == 0, log_path.read_text(errors="replace")
    assert not state_socket.exists()


def test_cell_survives_its_link_going_down_and_up(cell_process):
    """A cell whose link flaps (the demo's failover) keeps running and forwarding, state intact."""
    proc, state_socket, log_path = cell_process
    switch = Switch()
    try:
        syn = _frame(True, TCP_SYN, CLIENT_ISN, 0)
        syn_ack = _frame(False, TCP_SYN | TCP_ACK, SERVER_ISN, CLIENT_ISN + 1)
        switch.send_and_expect(syn)
        switch.send_and_expect(syn_ack)
        in_netns = ("ip", "netns", "exec", NETNS, "ip", "link", "set", VETH_CELL)
        _ip(*in_netns, "down")
        _ip(*in_netns, "up")
        ack = _frame(True, TCP_ACK, CLIENT_ISN + 1, SERVER_ISN + 1)
        switch.resend_until_back(ack)
        state = read_state(state_socket)
    finally:
        switch.close()
    assert proc.poll() is None, log_path.read_text(errors="replace")
    (flow,) = state["flows"]
    assert flow["state"] == "ESTABLISHED"
