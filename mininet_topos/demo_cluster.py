"""``prism demo --controllers N --fail-controller``: the master controller is killed mid-transfer.

Before the kill, one UDP flow per client is started that runs across it (the
"established" flows: set up by the old master, carried by the switch alone
during the takeover) into a sink of their own. The master is killed by PID
(SIGKILL); the report's ``controller_failover`` section says when its
successor held the switch (role confirmed, tables adopted), whether any
established flow lost a datagram, whether the switch holds a duplicate or
orphaned group, and how many new flows the new master set up afterwards.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

from mininet_topos.cluster_net import cluster_status, controller_named, group_report, wait_for_master

#: UDP ports of the flows that run across the takeover, and of the new flows after it.
ESTABLISHED_BASE_PORT = 9100
NEW_FLOWS_BASE_PORT = 9120
SINK_SPAN = 40
ESTABLISHED_RATE = 50.0
#: The established flows start this long before the kill and last this long in all.
ESTABLISHED_LEAD_S = 1.0
ESTABLISHED_SPAN_S = 2.5
NEW_FLOWS = 4
NEW_FLOW_DATAGRAMS = 10
TAKEOVER_TIMEOUT_S = 15.0
#: How long the old master may take to install the established flows (a bound on a busy machine).
ESTABLISHED_SETUP_TIMEOUT_S = 10.0
#: How long the new master may take to count the new flows it set up (their datagrams were all sent).
NEW_FLOWS_TIMEOUT_S = 5.0
POLL_S = 0.05


def settle_master(net, lease_s: float) -> str:
    """Wait for the switch's master, once the controllers have seen each other; ``net.controller`` is it."""
    wait_for_master(net)
    time.sleep(3 * lease_s)
    name = wait_for_master(net)
    net.controller = controller_named(net, name)
    return name


class ControllerFailover:
    """The established flows, the kill, the takeover, the new flows after it."""

    def __init__(self, net, server, workdir: Path) -> None:
        self.net = net
        self.server = server
        self.sink_json = workdir / "udp-established.json"
        self.senders: List[subprocess.Popen] = []
        self.sent: Dict[int, int] = {}
        self.report: Dict = {}

    def start_established_flows(self) -> None:
        count = int(ESTABLISHED_RATE * ESTABLISHED_SPAN_S)
        self.net.background.append(self.server.popen(
            [sys.executable, "-m", "mininet_topos.traffic", "udp-sink", "--port", str(ESTABLISHED_BASE_PORT),
             "--span", str(SINK_SPAN), "--duration", "30", "--json", str(self.sink_json)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        time.sleep(0.5)  # the sink is listening
        for index, name in enumerate(self.net.client_names):
            port = ESTABLISHED_BASE_PORT + index
            self.sent[port] = count
            self.senders.append(self._send(name, port, count, ESTABLISHED_RATE))

    def wait_established(self, switch: str = "s1") -> float:
        """Poll until the switch holds both directions' entries of every established flow (seconds waited).

        On a busy machine the old master can take longer than ESTABLISHED_LEAD_S to set them up; killed
        before that, it leaves flows the switch does not carry alone, which is not what the demo shows.
        """
        started = time.monotonic()
        wanted = [re.compile(rf"\b{field}={port}\b") for port in self.sent for field in ("tp_dst", "tp_src")]
        while time.monotonic() - started < ESTABLISHED_SETUP_TIMEOUT_S:
            flows = subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "dump-flows", switch, "table=1"],
                                   capture_output=True, text=True, timeout=10).stdout  # fmt: skip
            if all(match.search(flows) for match in wanted):
                return time.monotonic() - started
            time.sleep(POLL_S)
        raise AssertionError(f"the master did not set up the established flows within {ESTABLISHED_SETUP_TIMEOUT_S} s")

    @staticmethod
    def _flows_total_reaching(controller, wanted: int) -> int:
        """The controller's flow count once it reaches ``wanted``, or as it is after NEW_FLOWS_TIMEOUT_S."""
        deadline = time.monotonic() + NEW_FLOWS_TIMEOUT_S
        while True:
            status = cluster_status(controller)
            total = status["directors"]["0000000000000001"]["flows_total"] if status else 0
            if total >= wanted or time.monotonic() > deadline:
                return total
            time.sleep(POLL_S)

    def _send(self, client: str, port: int, count: int, rate: float) -> subprocess.Popen:
        sender = self.net.host(client).popen(
            [sys.executable, "-m", "mininet_topos.traffic", "udp-send", "--dst", self.server.IP(),
             "--port", str(port), "--count", str(count), "--rate", str(rate)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.net.background.append(sender)
        return sender

    def kill_master(self) -> float:
        """SIGKILL the master's ryu-manager, wait for its successor; returns the kill time."""
        old = self.net.controller
        # Equal profiles in two groups can predate the takeover (a repair after an early cell
        # verdict rewrites a group into a profile another group holds): count only what it adds.
        before_groups = group_report(self.net)
        killed_at = time.time()
        old.process.kill()
        old.process.wait(5)
        new_name = wait_for_master(self.net, not_named=old.name, timeout=TAKEOVER_TIMEOUT_S)
        new = controller_named(self.net, new_name)
        self.net.controller = new
        takeover = cluster_status(new)["cluster"]["takeovers"][-1]
        groups = group_report(self.net)
        before = cluster_status(new)["directors"]["0000000000000001"]["flows_total"]
        for index in range(NEW_FLOWS):
            client = self.net.client_names[index % len(self.net.client_names)]
            self._send(client, NEW_FLOWS_BASE_PORT + index, NEW_FLOW_DATAGRAMS, 50.0).wait(10)
        after = self._flows_total_reaching(new, before + NEW_FLOWS)
        self.report = {
            "killed": old.name, "new_master": new_name,
            "role_ms": round((takeover["started_at"] - killed_at) * 1000, 1),
            "takeover_ms": round((takeover["finished_at"] - killed_at) * 1000, 1),
            "groups_adopted": takeover["groups_adopted"], "flows_adopted": takeover["flows_adopted"],
            "new_flows_after": after - before,
            "duplicate_groups": max(0, groups["duplicate_groups"] - before_groups["duplicate_groups"]),
            "duplicate_groups_before": before_groups["duplicate_groups"],
            "orphaned_groups": groups["orphaned_groups"],
        }  # fmt: skip
        return killed_at

    def finish(self) -> Dict:
        """After the run: which established flows lost a datagram (the sink has been stopped)."""
        for sender in self.senders:
            sender.wait(10)
        received = json.loads(self.sink_json.read_text()) if self.sink_json.exists() else {"flows": {}}
        by_port: Dict[int, int] = {}
        for flow, count in received.get("flows", {}).items():
            port = int(flow.rsplit("->", 1)[1])
            by_port[port] = by_port.get(port, 0) + count
        lost = {port: sent - by_port.get(port, 0) for port, sent in self.sent.items()}
        new_received = sum(by_port.get(NEW_FLOWS_BASE_PORT + i, 0) for i in range(NEW_FLOWS))
        return {
            **self.report,
            "established_flows": len(self.sent),
            "flows_lost": sum(1 for missing in lost.values() if missing > 0),
            "established_datagrams_lost": sum(max(0, m) for m in lost.values()),
            "new_flow_datagrams_received": new_received,
            "new_flow_datagrams_sent": NEW_FLOWS * NEW_FLOW_DATAGRAMS,
        }


def tcp_gap_ms(capture: Path, start: float, end: float, client_port: int) -> Optional[float]:
    """Longest gap (ms) between the connection's data packets reaching the server within [start, end]."""
    import dpkt

    times: List[float] = []
    try:
        with open(capture, "rb") as handle:
            for timestamp, frame in dpkt.pcap.Reader(handle):
                tcp = getattr(dpkt.ethernet.Ethernet(frame).data, "data", None)
                if isinstance(tcp, dpkt.tcp.TCP) and tcp.sport == client_port and len(tcp.data) \
                        and start <= timestamp <= end:
                    times.append(float(timestamp))
    except (OSError, ValueError, dpkt.dpkt.NeedData):
        return None
    if len(times) < 2:
        return None
    return round(max(b - a for a, b in zip(times, times[1:])) * 1000, 1)
