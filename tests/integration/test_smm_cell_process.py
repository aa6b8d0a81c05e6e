"""``prism cell --mgmt-listen --controller`` as a process: heartbeats, replication to a mirror, takeover after it dies.

The cell runs in a network namespace of the test's own (``psmmc<pid>``) on one
end of a veth pair; the test plays the switch from the other end. Inside the
namespace, on its loopback, are the cell's management socket, the fake
controller's and the mirror cell's (an in-process cell loop in a thread).
"""

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
from testkit.packets import build_tcp_frame
from tests.integration.smm_cells import KEY, FakeController, RunningCell, in_netns, wait_for
from tests.support import poll

REPO_ROOT = Path(__file__).resolve().parents[2]
_TAG = f"{os.getpid() % 1_000_000}"
NETNS = f"psmmc{_TAG}"
VETH_ROOT, VETH_CELL = f"psc{_TAG}r", f"psc{_TAG}c"
CELL_MGMT, MIRROR_MGMT, CONTROLLER = ("127.0.0.1", 7700), ("127.0.0.2", 7700), ("127.0.0.1", 7600)
PROFILE = 21
CLIENT, SERVER, CPORT, SPORT = "172.31.252.1", "172.31.252.2", 43000, 8080
CLIENT_MAC, SERVER_MAC = "02:00:00:00:fc:01", "02:00:00:00:fc:02"
CLIENT_ISN, SERVER_ISN = 100_000, 900_000
START_TIMEOUT_S = 15.0
FRAME_TIMEOUT_S = 5.0


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {result.stderr.strip()}")
    return result


def _frame(from_client: bool, flags: int, seq: int, ack: int, payload: bytes = b"") -> bytes:
    if from_client:
        return build_tcp_frame(CLIENT, SERVER, CPORT, SPORT, payload, flags=flags, seq=seq, ack=ack,
                               eth_src=CLIENT_MAC, eth_dst=SERVER_MAC)  # fmt: skip
    return build_tcp_frame(SERVER, CLIENT, SPORT, CPORT, payload, flags=flags, seq=seq, ack=ack,
                           eth_src=SERVER_MAC, eth_dst=CLIENT_MAC)  # fmt: skip


@pytest.fixture
def cell_netns():
    if os.geteuid() != 0:
        pytest.fail("this test needs root (network namespaces, raw sockets): run `make test` as root")
    try:
        _run("ip", "netns", "add", NETNS)
        _run("ip", "netns", "exec", NETNS, "ip", "link", "set", "lo", "up")
        _run("ip", "link", "add", VETH_ROOT, "type", "veth", "peer", "name", VETH_CELL, "netns", NETNS)
        _run("sysctl", "-qw", f"net.ipv6.conf.{VETH_ROOT}.disable_ipv6=1")
        _run("ip", "netns", "exec", NETNS, "sysctl", "-qw", f"net.ipv6.conf.{VETH_CELL}.disable_ipv6=1")
        _run("ip", "link", "set", VETH_ROOT, "up")
        _run("ip", "netns", "exec", NETNS, "ip", "link", "set", VETH_CELL, "up")
        yield
    finally:
        _run("ip", "netns", "del", NETNS, check=False)
        _run("ip", "link", "del", VETH_ROOT, check=False)


def test_a_cell_process_beats_replicates_and_its_mirror_takes_over_with_the_same_entry(
    cell_netns, tmp_path
):
    state_socket, log_path = tmp_path / "c1.sock", tmp_path / "c1.log"
    with in_netns(NETNS):
        controller = FakeController(CONTROLLER)
        mirror = RunningCell("c2", CONTROLLER, tmp_path / "c2.sock", MIRROR_MGMT)
    switch = PacketSocket(VETH_ROOT)
    proc = None
    try:
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", NETNS, sys.executable, "-m", "prism.cli", "cell",
                 "--interface", VETH_CELL, "--cell-id", "c1", "--state-socket", str(state_socket),
                 "--mgmt-listen", "%s:%d" % CELL_MGMT, "--controller", "%s:%d" % CONTROLLER,
                 "--heartbeat-interval", "0.1", "--log-level", "DEBUG"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=str(REPO_ROOT),
                env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "PRISM_MGMT_KEY": KEY.decode()},
            )  # fmt: skip
        wait_for(lambda: controller.of_type("heartbeat", "c1") or proc.poll() is not None, controller,
                 "the cell's first heartbeat")  # fmt: skip
        assert proc.poll() is None, log_path.read_text(errors="replace")
        assert poll(state_socket.exists, timeout=START_TIMEOUT_S, interval=0.05), log_path.read_text(errors="replace")
        mirror.thread.start()
        directory = {"type": "directory", "epoch": 1, "live": ["c1", "c2"],
                     "cells": {"c1": list(CELL_MGMT), "c2": list(MIRROR_MGMT)}}  # fmt: skip
        profiles = {"type": "profiles", "epoch": 1, "full": True, "profiles": {str(PROFILE): ["c1", ["c2"]]}}
        for address in (CELL_MGMT, MIRROR_MGMT):
            controller.send(directory, address)
            controller.send(profiles, address)

        handshake = [_frame(True, TCP_SYN, CLIENT_ISN, 0),
                     _frame(False, TCP_SYN | TCP_ACK, SERVER_ISN, CLIENT_ISN + 1),
                     _frame(True, TCP_ACK, CLIENT_ISN + 1, SERVER_ISN + 1)]  # fmt: skip
        received = []
        for frame in handshake:  # the cell forwards each primary copy back
            switch.send(frame)
            deadline = time.monotonic() + FRAME_TIMEOUT_S
            while frame not in received:
                assert time.monotonic() < deadline, "the cell did not forward the handshake"
                if switch.wait(0.2):
                    while (got := switch.recv_frame()) is not None:
                        received.append(got)
        primary_flow = read_state(state_socket)["flows"][0]
        # The switch's packet-in made the controller assign the flow (after its first packets).
        assign = {"type": "assign", "flows": [[primary_flow["flow_id"], PROFILE, primary_flow["key"]]]}
        for address in (CELL_MGMT, MIRROR_MGMT):
            controller.send(assign, address)

        def mirrored():
            flows = mirror.state()["flows"]
            return flows and flows[0]["token"] == primary_flow["token"]

        wait_for(mirrored, controller, "the mirror to get the flow's token")
        wait_for(lambda: len(controller.of_type("heartbeat", "c1")) >= 10, controller, "ten heartbeats")
        beats = controller.of_type("heartbeat", "c1")
        assert beats[0]["seq"] == 1 and beats[-1]["flows"] == 1
        state = read_state(state_socket)
        assert state["replication"]["counters"]["records_sent"] >= 1
        assert state["replication"]["counters"]["acks"] >= 1

        proc.send_signal(signal.SIGKILL)  # the primary's process dies, its link stays up
        proc.wait(10)
        data = _frame(True, TCP_ACK | TCP_PSH, CLIENT_ISN + 1, SERVER_ISN + 1, b"after the failover")
        mirror.port.put(data)  # the switch now sends the primary copies to c2
        assert poll(lambda: data in mirror.port.sent, timeout=FRAME_TIMEOUT_S, interval=0.02), \
            "the mirror did not forward after the takeover"
        (taken,) = mirror.state()["flows"]
        assert taken["token"] == primary_flow["token"] != 0
        assert taken["first_seen"] == primary_flow["first_seen"]
        assert taken["role"] == "primary" and taken["state"] == "ESTABLISHED"
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        switch.close()
        mirror.stop()
        controller.close()
