"""Smoke test of the stack itself: Ryu's simple_switch_13 on a userspace OVS bridge in Mininet."""

from __future__ import annotations

import json
import os
from pathlib import Path

from mininet.topo import Topo

from .conftest import is_listening, net_namespace, ovs_bridges, processes_in_namespace
from tests.support import poll, wait_listening

SWITCH = "smoke1"  # a name no other test uses, so leftovers are ours
SIMPLE_SWITCH = "ryu.app.simple_switch_13"
REAP_TIMEOUT_S = 10.0
IPERF_SECONDS = 1
IPERF_PORT = 5201  # iperf3's default


class TwoHosts(Topo):
    """h1 - smoke1 - h2."""

    def build(self):
        switch = self.addSwitch(SWITCH)
        for name in ("h1", "h2"):
            self.addLink(self.addHost(name), switch)


def _reaped(popen) -> bool:
    return poll(lambda: popen.poll() is not None, timeout=REAP_TIMEOUT_S, interval=0.1)


def test_ovs_runs_with_userspace_tso(ovs):
    assert ovs.version
    assert ovs.userspace_tso, "ovs-vswitchd needs other_config:userspace-tso-enable=true for TCP"


def test_simple_switch_pingall_tcp_and_clean_teardown(ryu_manager, mininet_net):
    ryu = ryu_manager(SIMPLE_SWITCH)
    assert SWITCH not in ovs_bridges(), "a bridge from an earlier run was left behind"

    with mininet_net(TwoHosts(), ryu.ofp_port) as net:
        assert ovs_bridges().count(SWITCH) == 1
        datapath = net.get(SWITCH).cmd(f"ovs-vsctl get bridge {SWITCH} datapath_type").strip()
        assert datapath == "netdev"
        hosts = [net.get("h1"), net.get("h2")]
        shells = [host.shell for host in hosts]
        namespaces = [net_namespace(host.pid) for host in hosts]
        assert all(host.IP().startswith("172.31.") for host in hosts)

        assert net.pingAll() == 0

        # TCP through the userspace datapath (fails without userspace TSO).
        server, client = hosts[1], hosts[0]
        server.cmd(f"iperf3 -s -1 -D -B {server.IP()}")
        wait_listening(server, IPERF_PORT)  # -D returns before the server listens
        report = client.cmd(f"iperf3 -c {server.IP()} -t {IPERF_SECONDS} -J")
        assert json.loads(report)["end"]["sum_received"]["bytes"] > 0, report

    # Teardown left nothing: no bridge, no switch ports, no host process or namespace.
    assert SWITCH not in ovs_bridges()
    assert not Path(f"/sys/class/net/{SWITCH}-eth1").exists()
    assert all(_reaped(shell) for shell in shells)
    for inode in namespaces:
        assert processes_in_namespace(inode) == []

    assert ryu.alive(), ryu.log_tail()
    ryu.stop()
    assert not ryu.alive()
    assert not is_listening(ryu.ofp_port)
