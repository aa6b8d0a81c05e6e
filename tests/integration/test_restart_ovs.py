"""A controller restart on real Open vSwitch: the switch reconnects and converges.

In a module of its own: the director tests share one network for their
module, and a second network would wait for that one's machine-wide lock.
"""

from __future__ import annotations

import sys

from mininet_topos.harness import PrismNetwork
from tests.integration.test_director_ovs import parse_groups
from tests.support import poll


def test_controller_restart_converges_to_the_same_tables_without_stale_groups(ovs, tmp_path):
    """ryu-manager restarts: the switch reconnects, every old group and flow goes, traffic resumes."""
    with PrismNetwork(tmp_path, clients=1, servers=1, cells=3, replication_factor=1,
                      idle_timeout=30) as net:
        client, server = net.host("c1"), net.host("sv1")
        for port in (9400, 9401, 9402):
            client.cmd(f"{sys.executable} -m mininet_topos.traffic udp-send --dst {server.IP()} "
                       f"--port {port} --count 3 --rate 50")
        before = parse_groups(net.ofctl("dump-groups"))
        assert before, "the flows installed groups"
        net.restart_controller()  # same ports: the switch reconnects by itself

        def reconverged():
            flows = net.ofctl("dump-flows", "table=1")
            return "table=0" in net.ofctl("dump-flows", "table=0") and "udp" not in flows \
                and not parse_groups(net.ofctl("dump-groups"))

        assert poll(reconverged, timeout=30), (net.ofctl("dump-groups"), net.ofctl("dump-flows"),
                                               net.controller.log_tail())
        ping = client.cmd(f"ping -c 3 -i 0.2 -W 2 {server.IP()}")
        assert " 0% packet loss" in ping, f"{ping}\n{net.controller.log_tail()}"
        groups = parse_groups(net.ofctl("dump-groups"))
        assert len([g for g in groups.values() if g["type"] == "all"]) == 1, groups
