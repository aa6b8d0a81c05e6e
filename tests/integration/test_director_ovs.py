"""The Mirroring Director on real Open vSwitch, with real cells, seen through real packets.

One network (3 cells, replication factor 2, so every flow has a primary and two
mirrors) is shared by the tests of this module; each test uses flows of its own.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

import dpkt
import pytest

from mininet_topos.harness import PrismNetwork, stop_process
from prism.openflow.changes import MIRROR_MAC
from tests.support import poll, wait_capturing, wait_listening

IDLE_TIMEOUT_S = 3
POLL_TIMEOUT_S = 15.0
CAPTURE_SETTLE_S = 1.0


@pytest.fixture(scope="module")
def network(ovs, tmp_path_factory):
    """A running PRISM network: 2 clients, 1 server, 3 cells, rf 2, 3 s idle timeout."""
    workdir = tmp_path_factory.mktemp("director-ovs")
    with PrismNetwork(workdir, clients=2, servers=1, cells=3, replication_factor=2,
                      idle_timeout=IDLE_TIMEOUT_S) as net:
        yield net
        if net.controller.process.poll() is not None:
            pytest.fail(f"ryu-manager died:\n{net.controller.log_tail()}")


class Captures:
    """tcpdump in every cell host (and the server), stopped by PID, read with dpkt."""

    def __init__(self, net: PrismNetwork, name: str, bpf: str):
        self.net = net
        self.files: Dict[str, Path] = {}
        self.processes = []
        for host in net.cell_names + net.server_names:
            path = net.workdir / f"{name}-{host}.pcap"
            self.files[host] = path
            self.processes.append(net.host(host).popen(
                ["tcpdump", "-i", f"{host}-eth0", "-n", "-U", "-w", str(path), bpf],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        # tcpdump writes the file header once its capture is active: from then on it sees every packet.
        wait_capturing(self.files.values(), self.processes)

    def stop(self) -> None:
        time.sleep(CAPTURE_SETTLE_S)  # the last packets' copies still crossing the cells
        for process in self.processes:
            stop_process(process)

    def frames(self, host: str) -> List[dpkt.ethernet.Ethernet]:
        with open(self.files[host], "rb") as handle:
            return [dpkt.ethernet.Ethernet(frame) for _, frame in dpkt.pcap.Reader(handle)]


def mac(eth) -> str:
    return ":".join(f"{b:02x}" for b in eth.dst)


def roles_by_flow(captures: Captures, net: PrismNetwork, src_ip: str, dst_ip: str) -> Dict:
    """Per flow between the two hosts, per cell: unmarked and marked frames, per direction.

    A flow is (protocol, sorted ports), ICMP by address pair, as PRISM's flow key.
    """
    flows: Dict = {}
    for cell in net.cell_names:
        for eth in captures.frames(cell):
            ip = eth.data
            if not isinstance(ip, dpkt.ip.IP):
                continue
            src, dst = ".".join(map(str, ip.src)), ".".join(map(str, ip.dst))
            direction = "fwd" if (src, dst) == (src_ip, dst_ip) else \
                "rev" if (src, dst) == (dst_ip, src_ip) else None
            if direction is None:
                continue
            ports = tuple(sorted((getattr(ip.data, "sport", 0), getattr(ip.data, "dport", 0))))
            counts = flows.setdefault((ip.p, ports), {}).setdefault(cell, {
                "primary_fwd": 0, "primary_rev": 0, "mirror_fwd": 0, "mirror_rev": 0})
            role = "mirror" if mac(eth) == MIRROR_MAC else "primary"
            counts[f"{role}_{direction}"] += 1
    return flows


def assert_primary_and_mirrors(roles: Dict[str, Dict], replication_factor: int) -> str:
    """Exactly one cell forwards both directions; the others see only marked copies of both."""
    empty = {"primary_fwd": 0, "primary_rev": 0, "mirror_fwd": 0, "mirror_rev": 0}
    roles = {cell: roles.get(cell, empty) for cell in ("cell1", "cell2", "cell3")}
    primaries = [cell for cell, c in roles.items() if c["primary_fwd"] or c["primary_rev"]]
    assert len(primaries) == 1, f"expected one primary cell, saw {roles}"
    primary = primaries[0]
    assert roles[primary]["primary_fwd"] > 0 and roles[primary]["primary_rev"] > 0, roles
    assert roles[primary]["mirror_fwd"] == 0, roles
    mirrors = [cell for cell, c in roles.items() if c["mirror_fwd"] and c["mirror_rev"]]
    assert len(mirrors) == replication_factor and primary not in mirrors, roles
    return primary


def test_icmp_and_tcp_reach_the_server_through_the_primary_while_mirrors_get_marked_copies(network):
    net = network
    client, server = net.host("c1"), net.host("sv1")
    captures = Captures(net, "paths", "icmp or tcp port 5301")
    try:
        ping = client.cmd(f"ping -c 5 -i 0.2 -W 2 {server.IP()}")
        iperf_server = server.popen(["iperf3", "-s", "-1", "-p", "5301"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        net.background.append(iperf_server)  # stopped with the network if the test fails
        wait_listening(server, 5301, iperf_server)
        transfer = client.cmd(f"iperf3 -c {server.IP()} -p 5301 -t 1 -b 5M")
        stop_process(iperf_server)
    finally:
        captures.stop()
    assert " 0% packet loss" in ping, ping
    assert "receiver" in transfer, transfer
    flows = roles_by_flow(captures, net, client.IP(), server.IP())
    # ICMP echo, iperf3's control connection and its data connection
    assert len(flows) == 3, flows
    for roles in flows.values():
        assert_primary_and_mirrors(roles, replication_factor=2)
    # The server saw the client's packets (delivered after the primary cell).
    server_frames = [e for e in captures.frames("sv1") if isinstance(e.data, dpkt.ip.IP)]
    assert any(".".join(map(str, e.data.src)) == client.IP() for e in server_frames)


def parse_groups(dump: str) -> Dict[int, Dict]:
    groups = {}
    for line in dump.splitlines():
        match = re.search(r"group_id=(\d+),type=(\w+),(.*)", line)
        if match:
            groups[int(match.group(1))] = {"type": match.group(2),
                                           "buckets": match.group(3).split("bucket=")[1:]}
    return groups


def group_packet_counts(net: PrismNetwork) -> Dict[int, int]:
    counts = {}
    for line in net.ofctl("dump-group-stats").splitlines():
        match = re.search(r"group_id=(\d+),.*?packet_count=(\d+)", line)
        if match:
            counts[int(match.group(1))] = int(match.group(2))
    return counts


def test_one_group_per_profile_with_expected_buckets_and_rising_counters(network):
    net = network
    client, server = net.host("c2"), net.host("sv1")
    # Start from no groups: earlier tests' flows idle out (their groups would
    # count no new packets below).
    assert poll(lambda: not parse_groups(net.ofctl("dump-groups")), timeout=IDLE_TIMEOUT_S * 4 + 5)
    # Many UDP flows: more flows than profiles, so groups must be shared.
    senders = [client.popen([sys.executable, "-m", "mininet_topos.traffic", "udp-send",
                             "--dst", server.IP(), "--port", str(9100 + i), "--count", "90",
                             "--rate", "30"], stdout=subprocess.DEVNULL) for i in range(12)]
    # Every flow has started (its FSC entries exist): its group exists until it idles out.
    assert poll(lambda: all(f"tp_dst={9100 + i}" in net.ofctl("dump-flows", "table=1,udp")
                            for i in range(12))), net.ofctl("dump-flows", "table=1,udp")
    before = group_packet_counts(net)
    groups = parse_groups(net.ofctl("dump-groups"))
    all_groups = {gid: g for gid, g in groups.items() if g["type"] == "all"}
    ff_groups = {gid: g for gid, g in groups.items() if g["type"] == "ff"}
    # 12 flows over 3 cells with rf 2: at most 3! = 6 distinct profiles.
    assert 1 <= len(all_groups) <= 6, groups
    assert len(ff_groups) == len(all_groups)
    profiles = set()
    cell_ports = {"101", "102", "103"}
    for gid, group in all_groups.items():
        first, *mirrors = group["buckets"]
        ff_id = int(re.search(r"group:(\d+)", first).group(1))
        assert ff_id in ff_groups
        watched = re.findall(r"watch_port:(\d+)", "".join(ff_groups[ff_id]["buckets"]))
        assert len(watched) == 3 and set(watched) == cell_ports, ff_groups[ff_id]
        mirror_ports = [re.search(r"output:(\d+)", m).group(1) for m in mirrors]
        assert len(mirrors) == 2 and all(MIRROR_MAC in m for m in mirrors), group
        assert watched[1:] == mirror_ports, (watched, mirror_ports)
        profiles.add(tuple(watched))
    assert len(profiles) == len(all_groups), "two groups for one profile"

    def every_group_counted_packets():
        after = group_packet_counts(net)
        return all(after.get(g, 0) > before.get(g, 0) for g in all_groups)

    # Counters lag by up to a second: poll while the flows still run (3 s).
    assert poll(every_group_counted_packets, timeout=2.5, interval=0.2), \
        (before, group_packet_counts(net))
    for sender in senders:
        sender.wait(timeout=15)


def test_idle_flows_expire_and_unused_groups_are_deleted(network):
    net = network
    client, server = net.host("c1"), net.host("sv1")
    client.cmd(f"{sys.executable} -m mininet_topos.traffic udp-send --dst {server.IP()} "
               f"--port 9300 --count 5 --rate 50")
    assert "table=1" in net.ofctl("dump-flows", "table=1,udp,tp_dst=9300")

    def all_expired():
        flows = net.ofctl("dump-flows", "table=1")
        fsc_entries = [line for line in flows.splitlines() if "priority=0" not in line
                       and "table=1" in line]
        return not fsc_entries and "group_id" not in net.ofctl("dump-groups")

    # Every flow of this module has stopped: after the idle timeout the FSC is
    # empty and, reference counts at zero, every group is gone.
    assert poll(all_expired, timeout=IDLE_TIMEOUT_S * 4 + 10), net.ofctl("dump-groups")


#: Sends malformed frames that the switch hands to the controller (IP ethertypes
#: go to table 1, where a miss is a packet-in). Run inside a client host.
GARBAGE_SENDER = """
import os, socket, sys
sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
sock.bind((sys.argv[1], 0))
header = bytes.fromhex("000000000003" "000000000002")
frames = [header + b"\\x08\\x00", header + b"\\x08\\x00\\x45",
          header + b"\\x08\\x00\\x4f" + os.urandom(30),
          header + b"\\x86\\xdd" + os.urandom(10),
          header + b"\\x81\\x00\\x00\\x05\\x08\\x00" + os.urandom(3)]
frames += [header + b"\\x08\\x00" + os.urandom(n) for n in range(0, 200, 7)]
for frame in frames:
    sock.send(frame.ljust(14, b"\\0"))
print(len(frames))
"""


def test_garbage_packet_ins_leave_the_controller_running(network):
    net = network
    client, server = net.host("c2"), net.host("sv1")
    script = net.workdir / "garbage.py"
    script.write_text(GARBAGE_SENDER)
    before = net.controller.rest("/prism/v1/status")
    sent = client.cmd(f"{sys.executable} {script} c2-eth0")
    assert sent.strip().isdigit(), sent
    to_controller = int(sent) - 1  # every frame but the VLAN one misses the FSC

    def garbage_handled():
        status = net.controller.rest("/prism/v1/status")
        arrived = status["packet_ins"] - before["packet_ins"]
        return status if arrived >= to_controller else None

    # The frames reached the controller (as packet-ins), which counted and dropped them.
    after = poll(garbage_handled, timeout=POLL_TIMEOUT_S)
    assert after, f"{net.controller.rest('/prism/v1/status')}\n{net.controller.log_tail()}"
    assert after["drops"] > before["drops"], after["switches"]
    assert net.controller.process.poll() is None, net.controller.log_tail()
    ping = client.cmd(f"ping -c 3 -i 0.2 -W 2 {server.IP()}")
    assert " 0% packet loss" in ping, f"{ping}\n{net.controller.log_tail()}"

