"""Two controllers share a switch through etcd (real OVS, real ryu-manager, real etcd).

- The master is killed (SIGKILL by PID): the standby is master within the lease
  and has adopted the switch's tables; no packet of an established flow is
  lost, no group is duplicated or orphaned, and new flows are set up by the new master.
- The killed controller comes back: it takes back its switch the same way.
- etcd goes away: both controllers keep their roles and say etcd is unreachable;
  new flows are still set up; etcd comes back and nothing changes hands.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time

import pytest

from mininet_topos.cluster_net import (
    cluster_status,
    controller_named,
    group_report,
    masters,
    wait_for_master,
)
from mininet_topos.harness import PrismNetwork
from prism.cluster.mastership import assign_masters
from tests.support import poll

LEASE_S = 0.75
#: How long two controllers may take to see each other and settle who masters what.
SETTLE_TIMEOUT_S = 20.0
DP1_KEY = "0000000000000001"
#: The issue's target is 1 s; the slack covers a loaded 2-core machine (the figure is printed).
TAKEOVER_LIMIT_S = 1.5
PING_INTERVAL_S = 0.01
_PING_SUMMARY = re.compile(r"(\d+) packets transmitted, (\d+) received")


def start_ping(host, dst: str, count: int):
    """A ping at 100 packets/s in the background (an established flow through the cells)."""
    return host.popen(["ping", "-n", "-i", str(PING_INTERVAL_S), "-c", str(count), "-W", "1", dst],
                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_first_reply(process, timeout: float = 10.0) -> None:
    """Return once the background ping printed its first reply: its packets cross the switch both ways."""
    # no pause between looks: readline itself waits for ping's next line
    replied = poll(lambda: "bytes from" in process.stdout.readline() or process.poll() is not None,
                   timeout=timeout, interval=0)  # fmt: skip
    assert replied and process.poll() is None, "the background ping got no reply"


def ping_result(process, timeout: float = 30.0):
    out, _ = process.communicate(timeout=timeout)
    match = _PING_SUMMARY.search(out)
    assert match, out
    return int(match.group(1)), int(match.group(2))


def director_counters(controller, dp_key: str = "0000000000000001") -> dict:
    return cluster_status(controller)["directors"][dp_key]


class NewFlow:
    """A ping between two hosts that have not talked (ARP and a new flow through a controller)."""

    def __init__(self, net, src: str, dst: str) -> None:
        self.output = net.host(src).cmd(f"ping -n -c 3 -i 0.2 -W 2 {net.host(dst).IP()}")
        self.net = net

    def __bool__(self) -> bool:
        return " 0% packet loss" in self.output

    def __repr__(self) -> str:
        logs = "\n".join(c.log_tail(15) for c in self.net.controllers)
        return f"{self.output}\n{logs}"


def new_flow_works(net, src: str, dst: str) -> NewFlow:
    return NewFlow(net, src, dst)


def settled_master(net) -> str:
    """The master once both controllers have seen each other, and the other its standby.

    The first to start holds the switch alone until the second's lease key shows up; from then on
    the master is the one rendezvous hashing picks for the pair (``assign_masters``, which every
    controller computes), and the other says it is a slave.
    """
    expected = assign_masters({1: [c.name for c in net.controllers]})[1]

    def settled() -> bool:
        standbys = [cluster_status(c) for c in net.controllers if c.name != expected]
        return masters(net) == [expected] and all(s and s["cluster"]["roles"].get(DP1_KEY) == "slave"
                                                  for s in standbys)  # fmt: skip

    assert poll(settled, timeout=SETTLE_TIMEOUT_S, interval=0.1), \
        (f"{expected} never became the master with the other as its standby",
         [cluster_status(c) for c in net.controllers])  # fmt: skip
    return expected


def test_kill_the_master_standby_takes_over_without_loss_then_the_old_master_rejoins(ovs, tmp_path):
    with PrismNetwork(tmp_path, clients=2, servers=1, cells=3, replication_factor=1, idle_timeout=30,
                      controllers=2, lease_s=LEASE_S) as net:
        first = settled_master(net)
        assert (flow := new_flow_works(net, "c1", "sv1")), flow
        server_ip = net.host("sv1").IP()
        ping = start_ping(net.host("c1"), server_ip, 600)
        wait_first_reply(ping)  # the flow is established (its entries installed) before the kill
        victim = controller_named(net, first)
        killed_at = time.time()
        victim.process.kill()
        victim.process.wait(5)
        second = wait_for_master(net, not_named=first)
        status = cluster_status(controller_named(net, second))["cluster"]
        takeover = status["takeovers"][-1]
        takeover_s = takeover["started_at"] - killed_at
        print(f"takeover: role confirmed {takeover_s * 1000:.0f} ms after the kill, tables adopted "
              f"{(takeover['finished_at'] - killed_at) * 1000:.0f} ms after; {takeover}")
        assert not takeover["fresh"] and takeover["flows_adopted"] >= 2, takeover
        assert takeover_s <= TAKEOVER_LIMIT_S, takeover
        sent, received = ping_result(ping)
        assert received == sent, f"an established flow lost {sent - received} of {sent} packets"
        report = group_report(net)
        assert report["duplicate_groups"] == 0 and report["orphaned_groups"] == 0, report
        assert report["stray_ff_groups"] == 0, report
        before = director_counters(controller_named(net, second))["flows_total"]
        assert (flow := new_flow_works(net, "c2", "sv1")), flow
        assert director_counters(controller_named(net, second))["flows_total"] > before

        # the killed controller comes back with its id: it takes its switch back, again without loss
        ping = start_ping(net.host("c2"), server_ip, 400)
        wait_first_reply(ping)  # the ping crosses the switch before the controller returns
        victim.start()
        back = wait_for_master(net, not_named=second, timeout=30)
        assert back == first
        sent, received = ping_result(ping)
        assert received == sent, f"the handover lost {sent - received} of {sent} packets"
        report = group_report(net)
        assert report["duplicate_groups"] == 0 and report["orphaned_groups"] == 0, report
        before = director_counters(victim)["flows_total"]
        assert (flow := new_flow_works(net, "c2", "c1")), flow
        assert director_counters(victim)["flows_total"] > before


def test_etcd_away_and_back_controllers_keep_roles_and_say_so(ovs, tmp_path):
    with PrismNetwork(tmp_path, clients=2, servers=1, cells=3, replication_factor=1, idle_timeout=30,
                      controllers=2, lease_s=LEASE_S) as net:
        master = settled_master(net)
        takeovers_before = {c.name: len(cluster_status(c)["cluster"]["takeovers"]) for c in net.controllers}
        net.etcd.stop(kill=True)

        def both_say_unreachable():
            answers = [cluster_status(c)["cluster"] for c in net.controllers]
            return all(a is not None and not a["etcd_reachable"] and a["etcd_error"] for a in answers)

        assert poll(both_say_unreachable, timeout=10, interval=0.05), [cluster_status(c) for c in net.controllers]
        time.sleep(3 * LEASE_S)  # an absence is checked over a while: past a lease, nobody may give up or take over
        assert masters(net) == [master]
        assert (flow := new_flow_works(net, "c1", "sv1")), flow  # no flow waits for etcd
        standby = next(c for c in net.controllers if c.name != master)
        assert cluster_status(standby)["cluster"]["roles"] == {"0000000000000001": "slave"}
        net.etcd.start()
        assert poll(lambda: all(cluster_status(c)["cluster"]["etcd_reachable"] for c in net.controllers),
                    timeout=10, interval=0.05), [cluster_status(c) for c in net.controllers]  # fmt: skip
        time.sleep(3 * LEASE_S)  # an absence again: with etcd back, nothing may change hands over a few leases
        assert masters(net) == [master]
        # nothing changed hands: no takeover anywhere since before etcd went away
        assert {c.name: len(cluster_status(c)["cluster"]["takeovers"]) for c in net.controllers} == takeovers_before
        assert "etcd unreachable" in controller_named(net, master).log_path.read_text()


def test_two_switches_are_spread_over_two_controllers(ovs, tmp_path):
    with PrismNetwork(tmp_path, clients=2, servers=2, cells=4, replication_factor=1, idle_timeout=30,
                      controllers=2, lease_s=LEASE_S, switches=2) as net:
        def owners():
            return {owner for dp_id in (1, 2) for owner in masters(net, dp_id)}

        # one switch each, once both controllers have seen each other (the first to start holds both till then)
        assert poll(lambda: owners() == {"ctl1", "ctl2"} and all(len(masters(net, dp)) == 1 for dp in (1, 2)),
                    timeout=SETTLE_TIMEOUT_S, interval=0.1), owners()  # fmt: skip
        assert net.switch_of("c1") == net.switch_of("sv1") == "s1"
        assert net.switch_of("c2") == net.switch_of("sv2") == "s2"
        assert (flow := new_flow_works(net, "c1", "sv1")), flow
        assert (flow := new_flow_works(net, "c2", "sv2")), flow
        for dp_key, switch in (("0000000000000001", "s1"), ("0000000000000002", "s2")):
            owner = controller_named(net, wait_for_master(net, int(dp_key, 16)))
            assert director_counters(owner, dp_key)["flows_total"] >= 1
            assert group_report(net, switch)["all_groups"] >= 1


def test_a_controller_stopped_with_sigint_hands_its_switch_over_before_its_lease_ends(ovs, tmp_path):
    with PrismNetwork(tmp_path, clients=1, servers=1, cells=3, replication_factor=1, idle_timeout=30,
                      controllers=2, lease_s=LEASE_S) as net:
        first = settled_master(net)
        victim = controller_named(net, first)
        stopped_at = time.time()
        victim.process.send_signal(signal.SIGINT)  # Ctrl-C: ryu-manager stops its apps, the lease is revoked
        second = wait_for_master(net, not_named=first)
        takeover = cluster_status(controller_named(net, second))["cluster"]["takeovers"][-1]
        print(f"graceful handover: MASTER {(takeover['started_at'] - stopped_at) * 1000:.0f} ms after SIGINT")
        assert takeover["started_at"] - stopped_at < LEASE_S, takeover
        victim.process.wait(10)  # it ends (0, or -2 when the interrupt escaped Ryu's own handler)
        assert (flow := new_flow_works(net, "c1", "sv1")), flow
