"""A burst of new flows reaches the controller at the switch's packet-in rate limit, not at line rate.

The harness sets Open vSwitch's ``controller_rate_limit`` / ``controller_burst_limit``
on the bridge's Controller record; this test sets them low, sends a few
thousand new UDP flows in a fraction of a second from a client, and counts
the packet-ins the director handled a moment later (its REST status). Open
vSwitch queues the excess per port (a queue as deep as the burst limit) and
drops the rest: the controller sees at most the rate over the window plus
the burst. With a limit far above the burst, far more get through: the limit
is what bounds them.
"""

from __future__ import annotations

import sys
import time

import pytest

from mininet_topos.harness import PrismNetwork

RATE, BURST = 200, 50
UNLIMITED = (100_000, 25_000)
FLOWS = 3000
WINDOW_S = 2.0  #: after the burst's start
SLACK = 100  #: ARP, and packet-ins counted a little after the window closed

SENDER = """
import socket, sys, time
target = sys.argv[1]
start = time.monotonic()
for port in range(20000, 20000 + int(sys.argv[2])):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("", port))
    s.sendto(b"new flow", (target, 9))
    s.close()
print(round(time.monotonic() - start, 3))
"""


@pytest.mark.parametrize("limited", [True, False], ids=["limited", "unlimited"])
def test_new_flows_beyond_the_rate_limit_wait_in_the_switch(ovs, tmp_path, limited):
    with PrismNetwork(tmp_path, clients=1, servers=1, cells=2, start_cells=False,
                      packet_in_limit=(RATE, BURST) if limited else UNLIMITED) as net:  # fmt: skip
        handled, allowed = burst_of_new_flows(net)
    if limited:
        assert 0 < handled <= allowed
    else:
        assert handled > 2 * allowed


def burst_of_new_flows(net):
    """(packet-ins handled within WINDOW_S of a burst of FLOWS new flows, what RATE and BURST allow)."""
    client, server = net.host(net.client_names[0]), net.host(net.server_names[0])
    client.cmd(f"ip neigh replace {server.IP()} lladdr {server.MAC()} dev {client.defaultIntf()}")  # no ARP
    before = net.controller.rest("/prism/v1/status")["packet_ins"]
    script = net.workdir / "burst.py"
    script.write_text(SENDER)
    start = time.monotonic()
    took = client.cmd(f"{sys.executable} {script} {server.IP()} {FLOWS}").strip()
    assert float(took) < WINDOW_S / 2, took
    time.sleep(max(0.0, start + WINDOW_S - time.monotonic()))  # the measurement window itself, not a wait for a state
    handled = net.controller.rest("/prism/v1/status")["packet_ins"] - before
    allowed = RATE * WINDOW_S + BURST + SLACK
    print(f"{FLOWS} new flows sent in {took} s; {handled} packet-ins in {WINDOW_S} s "
          f"({RATE}/s, burst {BURST} allow {allowed:.0f})")
    return handled, allowed
