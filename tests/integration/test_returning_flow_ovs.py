"""A TCP connection that goes quiet past the switch's idle timeout, resumes, and then loses its primary cell: it survives.

The connection's switch entries idle out while its cells keep its state;
when it resumes it must go back to those cells (the director's placement
memory), so that when its primary then dies, a mirror holding its state
takes over. The same across a controller restart during the pause: the new
controller wipes the switch and places the returning flow by the placements
its predecessor saved. Checked from the outside: every message of the
connection is echoed, before and after the failure, with no reset.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from mininet_topos.harness import PrismNetwork
from tests.integration.test_failover_ovs import state_of
from tests.support import poll, wait_listening

CLIENT_PORT = 45200
ECHO_PORT = 7007
IDLE_TIMEOUT_S = 3
BEFORE_S, MAX_PAUSE_S, AFTER_S = 2.0, 60.0, 6.0
FAIL_AFTER_RESUME_S = 1.5

ECHO_SERVER = """
import socket, sys
server = socket.socket(); server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("", int(sys.argv[1]))); server.listen(1)
conn, _ = server.accept()
while True:
    data = conn.recv(4096)
    if not data:
        break
    conn.sendall(data)
"""

CLIENT = """
import json, socket, sys, time
import os
server, port, cport, before, pause, after = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), *map(float, sys.argv[4:7])
go = sys.argv[7]  # the pause lasts until this file exists (at most ``pause`` seconds)
sock = socket.socket(); sock.bind(("", cport)); sock.settimeout(10)
sock.connect((server, port))
result = {"echoed_before": 0, "echoed_after": 0, "error": None}
def talk(seconds, field):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        message = b"x" * 100
        sock.sendall(message)
        got = b""
        while len(got) < len(message):
            chunk = sock.recv(4096)
            if not chunk:
                raise ConnectionError("closed by the peer")
            got += chunk
        result[field] += 1
        time.sleep(0.1)  # pacing: ten exchanges a second
try:
    talk(before, "echoed_before")
    print("paused", flush=True)
    deadline = time.monotonic() + pause
    while not os.path.exists(go) and time.monotonic() < deadline:
        time.sleep(0.05)  # the client's own poll for the test's go-ahead (tests.support is not importable here)
    print("resumed", flush=True)
    talk(after, "echoed_after")
except Exception as error:
    result["error"] = f"{type(error).__name__}: {error}"
print(json.dumps(result), flush=True)
"""


def conversation(net: PrismNetwork):
    """Start the echo server and the client; returns the client process (its stdout says where it is)."""
    server, client = net.host("sv1"), net.host("c1")
    (net.workdir / "echo_server.py").write_text(ECHO_SERVER)
    (net.workdir / "echo_client.py").write_text(CLIENT)
    echo = server.popen([sys.executable, str(net.workdir / "echo_server.py"), str(ECHO_PORT)],
                        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    net.background.append(echo)
    wait_listening(server, ECHO_PORT, echo)
    process = client.popen([sys.executable, str(net.workdir / "echo_client.py"), server.IP(), str(ECHO_PORT),
                            str(CLIENT_PORT), str(BEFORE_S), str(MAX_PAUSE_S), str(AFTER_S),
                            str(net.workdir / "resume")],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    net.background.append(process)
    return process


def connection_flow(state):
    for flow in state.get("flows", []):
        if f":{CLIENT_PORT} " in flow.get("key", "") + " ":
            return flow
    return None


def saved_placements(net: PrismNetwork) -> int:
    """How many flow placements the controller's placements file holds (0 if none yet)."""
    try:
        document = json.loads((net.workdir / "placements.json").read_text())
    except (OSError, ValueError):
        return 0
    return sum(len(entries) for entries in document["switches"].values())


def primary_counts(net: PrismNetwork) -> dict:
    """Each cell's count of the connection's packets it forwarded as primary (0 if it holds none)."""
    return {c: (connection_flow(state_of(net, c)) or {}).get("primary_packets", 0) for c in net.cell_names}


def wait_line(process, expected: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if line.strip() == expected:
            return
        if not line and process.poll() is not None:
            break
    raise AssertionError(f"the client never printed {expected!r}")


@pytest.mark.parametrize("restart", [False, True], ids=["idle-out", "idle-out-and-controller-restart"])
def test_a_tcp_connection_resumed_after_an_idle_out_survives_its_primarys_failure(ovs, tmp_path, restart):
    with PrismNetwork(tmp_path, clients=1, servers=1, cells=3, replication_factor=1,
                      idle_timeout=IDLE_TIMEOUT_S) as net:  # fmt: skip
        client = conversation(net)
        wait_line(client, "paused", timeout=BEFORE_S + 15)
        def idled_out():
            return not connection_flow(net.controller.rest("/prism/v1/flows"))

        assert poll(idled_out, timeout=IDLE_TIMEOUT_S + 5), "the switch entries did not idle out"
        if restart:
            # The controller saves its placements every 5 s: wait for a save that has the flow.
            assert poll(lambda: saved_placements(net), timeout=10), "the controller saved no placement"
            net.restart_controller()  # returns once the switch is connected to the new controller
            # A cell the new controller never heard beat is judged by its link alone (prism/control/health.py): wait
            # until it hears every cell, or a killed process would go unnoticed.
            assert poll(lambda: all(c["heartbeat_seen"] and c["state"] == "alive"
                                    for c in net.controller.rest("/prism/v1/cells")["cells"]), timeout=10)
        counts = primary_counts(net)
        (net.workdir / "resume").touch()
        wait_line(client, "resumed", timeout=15)
        time.sleep(FAIL_AFTER_RESUME_S)  # the scenario: the resumed conversation runs a while before the failure
        grown = {c: count - counts[c] for c, count in primary_counts(net).items()}
        primary = max(grown, key=grown.get)
        assert grown[primary] > 0, grown
        status = net.controller.rest("/prism/v1/status")
        assert status["flows_returned"] >= 1, (status, net.controller.log_tail())
        net.stop_cell(primary, kill=True)
        output, _ = client.communicate(timeout=AFTER_S + 30)
        result = json.loads(output.strip().splitlines()[-1])
        assert result["error"] is None and result["echoed_before"] > 0, (result, net.controller.log_tail())
        assert result["echoed_after"] >= (AFTER_S - FAIL_AFTER_RESUME_S) * 5, result
        assert net.controller.rest("/prism/v1/status")["state_lost_flows"] == 0


def test_a_connection_moved_by_a_failover_comes_back_to_the_cells_holding_its_state(ovs, tmp_path):
    """Its first primary dies and restarts empty during the pause: the resumed connection must not go there."""
    with PrismNetwork(tmp_path, clients=1, servers=1, cells=3, replication_factor=1,
                      idle_timeout=IDLE_TIMEOUT_S) as net:  # fmt: skip
        client = conversation(net)
        wait_line(client, "paused", timeout=BEFORE_S + 15)
        first = max(net.cell_names, key=lambda c: (connection_flow(state_of(net, c)) or {}).get("primary_packets", 0))
        net.stop_cell(first, kill=True)

        def moved():
            flows = net.controller.rest("/prism/v1/flows")["flows"]
            return not flows or all(f["primary_cell"] != first for f in flows)

        assert poll(moved, timeout=10), net.controller.log_tail()
        net.start_cell(first)  # back, with an empty table

        def usable_and_idle():
            cell = net.controller.rest(f"/prism/v1/cells/{first}")
            return cell["usable"] and not connection_flow(net.controller.rest("/prism/v1/flows"))

        assert poll(usable_and_idle, timeout=30), net.controller.rest(f"/prism/v1/cells/{first}")
        counts = primary_counts(net)
        (net.workdir / "resume").touch()
        wait_line(client, "resumed", timeout=15)
        time.sleep(FAIL_AFTER_RESUME_S)  # the scenario: the resumed conversation runs a while before the failure
        grown = {c: count - counts[c] for c, count in primary_counts(net).items()}
        primary = max(grown, key=grown.get)
        assert primary != first and grown[primary] > 0, (first, grown)
        net.stop_cell(primary, kill=True)
        output, _ = client.communicate(timeout=AFTER_S + 30)
        result = json.loads(output.strip().splitlines()[-1])
        assert result["error"] is None, (result, net.controller.log_tail())
        assert result["echoed_after"] >= (AFTER_S - FAIL_AFTER_RESUME_S) * 5, result
