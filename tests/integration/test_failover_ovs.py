"""Failover on real Open vSwitch with real cells: a long TCP transfer survives its primary's failure.

Each test runs a fresh network (3 cells, management network, heartbeats) and an
iperf3 transfer whose data connection uses a known client port, finds that
flow's primary cell from the cells' own tables, fails it, and checks from the
outside: iperf3's result, the server-side capture (no reset), the cells' tables
(the entry carried over with the primary's token) and the controller's REST view.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Dict, Optional

import dpkt
import pytest

from mininet_topos.harness import PrismNetwork, stop_process
from tests.support import poll, wait_capturing, wait_listening

CLIENT_PORT = 45100
IPERF_PORT = 5401
TRANSFER_S = 8
#: The transfer runs this long before its primary fails (the scenario, not a wait for readiness).
FAIL_AT_S = 2.5
#: After the client has finished: the last segments and ACKs still crossing the cells reach the capture.
CAPTURE_SETTLE_S = 0.5
RATE = "10M"
REST_TOKEN = "test-token"


class Transfer:
    """An iperf3 transfer c1 -> sv1 with a server-side capture; all stopped by PID."""

    def __init__(self, net: PrismNetwork, name: str):
        self.net = net
        self.capture = net.workdir / f"{name}-server.pcap"
        server = net.host("sv1")
        self.server_ip = server.IP()
        self.processes = [
            server.popen(["tcpdump", "-i", "sv1-eth0", "-n", "-s", "128", "-U", "-w",
                          str(self.capture), f"tcp port {IPERF_PORT}"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
            server.popen(["iperf3", "-s", "-1", "-p", str(IPERF_PORT)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        ]
        wait_capturing([self.capture], self.processes[:1])
        wait_listening(server, IPERF_PORT, self.processes[1])
        self.client = net.host("c1").popen(
            ["iperf3", "-c", self.server_ip, "-p", str(IPERF_PORT), "--cport", str(CLIENT_PORT),
             "-t", str(TRANSFER_S), "-b", RATE, "-i", "0.5", "-J", "--connect-timeout", "3000"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        # if the test fails before finish(), the network stops them with itself
        net.background.extend([*self.processes, self.client])

    def finish(self) -> Dict:
        try:
            output, _ = self.client.communicate(timeout=TRANSFER_S + 30)
        except subprocess.TimeoutExpired:
            self.client.kill()
            output, _ = self.client.communicate()
        time.sleep(CAPTURE_SETTLE_S)  # not a wait for a state: the capture gets the last packets in flight
        for process in self.processes:
            stop_process(process)
        try:
            result = json.loads(output.decode(errors="replace"))
        except ValueError:
            result = {"error": f"no JSON from iperf3: {output[-300:]!r}"}
        intervals = [i["sum"] for i in result.get("intervals", [])]
        return {
            "error": result.get("error"),
            "bytes": result.get("end", {}).get("sum_received", {}).get("bytes", 0),
            "late_bytes": sum(i["bytes"] for i in intervals if i["start"] >= FAIL_AT_S + 2),
            "resets": self.resets(),
        }

    def resets(self) -> int:
        count = 0
        with open(self.capture, "rb") as handle:
            for _, frame in dpkt.pcap.Reader(handle):
                tcp = getattr(dpkt.ethernet.Ethernet(frame).data, "data", None)
                if isinstance(tcp, dpkt.tcp.TCP) and tcp.flags & dpkt.tcp.TH_RST:
                    count += 1
        return count


def data_flow(state: Dict) -> Optional[Dict]:
    """The iperf3 data connection's record in a cell's table."""
    for flow in state.get("flows", []):
        if f":{CLIENT_PORT} " in flow.get("key", "") + " " and flow.get("state") != "removed":
            return flow
    return None


def state_of(net: PrismNetwork, cell: str) -> Dict:
    """A cell's state document, or {} for a cell that is no longer running."""
    try:
        return net.cell_state(cell)
    except OSError:
        return {}


def find_primary(net: PrismNetwork) -> str:
    """The cell that forwards the transfer as its primary (polled: its table reports it within a state interval)."""

    def forwarding():
        for cell in net.cell_names:
            flow = data_flow(net.cell_state(cell))
            if flow and flow.get("primary_packets", 0) > 0:
                return cell
        return None

    primary = poll(forwarding, timeout=5, interval=0.2)
    assert primary, f"no cell forwards the transfer\n{net.controller.log_tail()}"
    return primary


def forwarding_cell(net: PrismNetwork, exclude: str, since: Dict[str, int]) -> Optional[str]:
    """The cell whose primary packet count for the flow grew since ``since``."""
    for cell in net.cell_names:
        if cell == exclude:
            continue
        flow = data_flow(state_of(net, cell))
        if flow and flow.get("primary_packets", 0) > since.get(cell, 0):
            return cell
    return None


def primary_counts(net: PrismNetwork, skip: str = "") -> Dict[str, int]:
    counts = {}
    for cell in net.cell_names:
        if cell != skip:
            flow = data_flow(state_of(net, cell))
            counts[cell] = flow.get("primary_packets", 0) if flow else 0
    return counts


def rest(net: PrismNetwork, path: str, method: str = "GET", body=None):
    return net.controller.rest(path, method=method, body=body, token=REST_TOKEN)


def make_network(tmp_path: Path, replication_factor: int) -> PrismNetwork:
    return PrismNetwork(tmp_path, clients=1, servers=1, cells=3,
                        replication_factor=replication_factor, idle_timeout=10,
                        extra_env={"PRISM_REST_TOKEN": REST_TOKEN},
                        config_overrides={"rest": {"token_env": "PRISM_REST_TOKEN"}})


def fail_primary_and_check(net: PrismNetwork, kind: str) -> Dict:
    """Run the transfer, fail its primary mid-way, and return what happened."""
    transfer = Transfer(net, kind)
    time.sleep(FAIL_AT_S)  # the scenario: the transfer runs a while before the failure
    primary = find_primary(net)
    before = data_flow(net.cell_state(primary))
    counts = primary_counts(net, skip=primary)
    if kind == "process":
        net.stop_cell(primary, kill=True)
    else:
        net.set_cell_link(primary, up=False)
    failed_at = time.monotonic()
    successor = poll(lambda: forwarding_cell(net, primary, counts), timeout=8)
    takeover_s = time.monotonic() - failed_at
    result = transfer.finish()
    return {"primary": primary, "before": before, "successor": successor,
            "takeover_s": takeover_s, "transfer": result}


@pytest.mark.parametrize("kind", ["process", "link"])
def test_tcp_transfer_survives_primary_failure_with_its_state(ovs, tmp_path, kind):
    with make_network(tmp_path, replication_factor=1) as net:
        outcome = fail_primary_and_check(net, kind)
        transfer = outcome["transfer"]
        assert transfer["error"] is None, (outcome, net.controller.log_tail())
        assert transfer["late_bytes"] > 0, outcome
        assert transfer["resets"] == 0, outcome
        successor = outcome["successor"]
        assert successor, f"no cell took over: {outcome}\n{net.controller.log_tail()}"
        # The connection-tracking entry was carried over, not recreated: same
        # primary-drawn token, same first-seen time.
        after = data_flow(net.cell_state(successor))
        before = outcome["before"]
        assert after["token"] == before["token"] and after["token"], (before, after)
        assert after["first_seen"] == before["first_seen"], (before, after)
        # The controller saw the failure and restored the replication factor:
        # every profile has its mirror back, and the new mirror holds the state.
        cells = {c["id"]: c for c in rest(net, "/prism/v1/cells")["cells"]}
        failed = cells[outcome["primary"]]
        assert not failed["usable"] and failed["failures"] >= 1, failed
        assert failed["failure_history"][-1]["kind"] == kind, failed
        profiles = poll(lambda: _restored(net), timeout=10)
        assert profiles, rest(net, "/prism/v1/profiles")
        for profile in profiles:
            assert outcome["primary"] not in [profile["primary_cell"], *profile["mirror_cells"]]
        flow_profile = [p for p in profiles if p["primary_cell"] == successor]
        new_mirrors = {m for p in flow_profile for m in p["mirror_cells"]}
        assert new_mirrors, profiles
        for mirror in new_mirrors:
            mirrored = data_flow(net.cell_state(mirror))
            assert mirrored and mirrored["token"] == before["token"], (mirror, mirrored)


def _restored(net: PrismNetwork):
    profiles = rest(net, "/prism/v1/profiles")["profiles"]
    if profiles and all(p["replicas_confirmed"] >= p["target_replication_factor"] for p in profiles):
        return profiles
    return None


def test_without_replication_the_same_failure_breaks_the_connection(ovs, tmp_path):
    """The control: rf 0, the primary's process dies, the connection's state is gone."""
    with make_network(tmp_path, replication_factor=0) as net:
        outcome = fail_primary_and_check(net, "process")
        transfer = outcome["transfer"]
        broken = transfer["error"] is not None or transfer["late_bytes"] == 0 or transfer["resets"]
        assert broken, outcome
        status = rest(net, "/prism/v1/status")
        assert status["last_failover"]["state_lost_flows"] >= 1, status


def test_draining_the_primary_moves_the_transfer_with_its_state(ovs, tmp_path):
    with make_network(tmp_path, replication_factor=1) as net:
        transfer = Transfer(net, "drain")
        time.sleep(FAIL_AT_S)  # the scenario: the transfer runs a while before the drain
        primary = find_primary(net)
        before = data_flow(net.cell_state(primary))
        counts = primary_counts(net, skip=primary)
        answer = rest(net, f"/prism/v1/cells/{primary}/drain", method="POST", body={"reason": "test"})
        assert answer, answer
        successor = poll(lambda: forwarding_cell(net, primary, counts), timeout=8)
        result = transfer.finish()
        assert result["error"] is None and result["late_bytes"] > 0 and result["resets"] == 0, result
        assert successor, net.controller.log_tail()
        after = data_flow(net.cell_state(successor))
        assert after["token"] == before["token"], (before, after)
        # The drained cell forwards nothing more and no profile names it.
        drained = data_flow(net.cell_state(primary))["primary_packets"]
        time.sleep(1.0)  # an absence is checked over a while: a second of transfer must not reach it
        assert data_flow(net.cell_state(primary))["primary_packets"] == drained
        cell = rest(net, f"/prism/v1/cells/{primary}")
        assert cell["draining"] and cell["flows_primary"] == 0 and cell["flows_mirror"] == 0, cell
        # Restoring it puts it back in service for new flows.
        rest(net, f"/prism/v1/cells/{primary}/restore", method="POST", body={})
        assert poll(lambda: not rest(net, f"/prism/v1/cells/{primary}")["draining"]), \
            rest(net, f"/prism/v1/cells/{primary}")


def test_rest_refuses_changes_without_the_token(ovs, tmp_path):
    with make_network(tmp_path, replication_factor=1) as net:
        import urllib.error
        with pytest.raises(urllib.error.HTTPError) as refused:
            net.controller.rest("/prism/v1/cells/cell1/drain", method="POST", body={})
        assert refused.value.code in (401, 403)
        with pytest.raises(urllib.error.HTTPError) as unknown:
            rest(net, "/prism/v1/cells/nosuchcell")
        assert unknown.value.code == 404
        assert "error" in json.loads(unknown.value.read().decode())


def test_rf2_survives_a_second_failure_before_the_first_is_repaired(ovs, tmp_path):
    """Primary killed, then the mirror that took over is killed 0.2 s later: the
    third cell, an original mirror, still holds the connection's state."""
    with make_network(tmp_path, replication_factor=2) as net:
        transfer = Transfer(net, "double")
        time.sleep(FAIL_AT_S)  # the scenario: the transfer runs a while before the failure
        first = find_primary(net)
        before = data_flow(net.cell_state(first))
        counts = primary_counts(net, skip=first)
        net.stop_cell(first, kill=True)
        second = poll(lambda: forwarding_cell(net, first, counts), timeout=8)
        assert second, net.controller.log_tail()
        time.sleep(0.2)  # the scenario: the second failure comes 0.2 s after the takeover, before any repair
        counts = primary_counts(net, skip=first)
        net.stop_cell(second, kill=True)
        counts.pop(second, None)
        third = poll(lambda: forwarding_cell(net, second, counts), timeout=8)
        result = transfer.finish()
        assert third and third not in (first, second), (first, second, third)
        assert result["error"] is None and result["late_bytes"] > 0 and result["resets"] == 0, result
        after = data_flow(net.cell_state(third))
        assert after["token"] == before["token"], (before, after)
