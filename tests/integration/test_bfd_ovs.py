"""BFD between real Open vSwitch and real cells: the switch routes around a dead cell process by itself.

One network (3 cells speaking BFD with the switch, 10 ms x 4; rf=1) for the
module. A 1,000 datagrams/s UDP probe runs from c1 to sv1 with its primary
on cell1. With the controller frozen (SIGSTOP), cell1's process is killed
with its link up: the switch clears the port's LIVE flag and its
FAST_FAILOVER group moves the probe to the mirror cell, which forwards it,
all before the controller runs again. Then the controller, thawed, has
declared cell1 dead (kind bfd) from the port status. A cell asked to drain
(SIGUSR1) tells the switch to stop using it (Concatenated Path Down) and the
controller shows why; SIGUSR2 brings it back.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from mininet_topos.demo import probe_source_port
from mininet_topos.harness import PrismNetwork, stop_process
from mininet_topos.probe import PROBE_PORT, analyse
from tests import support

BFD = {"interval": 10, "mult": 4, "switch_interval": 100}
FROZEN_S = 1.5  # below Open vSwitch's 5 s inactivity probe of the controller connection
PROBE_S = 8.0
#: The switch's detection time is read off a poll: look every 10 ms, not every 250.
FINE_POLL_S = 0.01


def poll(predicate, timeout: float):
    """``tests.support.poll`` at the fine interval this module's timings need."""
    return support.poll(predicate, timeout=timeout, interval=FINE_POLL_S)


@pytest.fixture(scope="module")
def net(ovs, tmp_path_factory):
    with PrismNetwork(tmp_path_factory.mktemp("bfd"), clients=1, servers=1, cells=3, replication_factor=1,
                      bfd=BFD) as network:  # fmt: skip
        yield network


def probe_entry(net, cell, sport):
    """The probe flow's entry in a cell's table ({} if none or the cell is gone)."""
    try:
        flows = net.cell_state(cell).get("flows", [])
    except OSError:
        return {}
    for flow in flows:
        if f":{sport} " in flow.get("key", "") + " " and f":{PROBE_PORT}" in flow.get("key", ""):
            return flow
    return {}


def cells_view(net):
    return {cell["id"]: cell for cell in net.controller.rest("/prism/v1/cells")["cells"]}


def test_every_cell_port_is_live_through_bfd(net):
    for cell in net.cell_names:
        assert net.port_live(cell), net.ofctl("dump-ports-desc")
        state = net.cell_state(cell)["bfd"]
        assert state["state"] == "up" and state["remote_state"] == "up", state
    status = subprocess.run(["ovs-vsctl", "get", "Interface", net.cell_switch_port("cell1"), "bfd_status"],
                            capture_output=True, text=True, timeout=10).stdout  # fmt: skip
    assert 'forwarding="true"' in status and "state=up" in status, status


def test_a_killed_cell_is_routed_around_by_the_switch_without_the_controller(net):
    client, server = net.host("c1"), net.host("sv1")
    sport = probe_source_port(net.cell_names, "cell1", client.IP(), server.IP())
    sent_json, received_json = net.workdir / "probe-sent.json", net.workdir / "probe-received.json"
    sink = server.popen([sys.executable, "-m", "mininet_topos.probe", "sink", "--port", str(PROBE_PORT),
                         "--duration", str(PROBE_S + 5), "--json", str(received_json)],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    net.background.append(sink)
    support.wait_listening(server, PROBE_PORT, sink, proto="udp")
    sender = client.popen([sys.executable, "-m", "mininet_topos.probe", "send", "--dst", server.IP(),
                           "--port", str(PROBE_PORT), "--sport", str(sport), "--duration", str(PROBE_S),
                           "--json", str(sent_json)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    net.background.append(sender)
    assert poll(lambda: probe_entry(net, "cell1", sport).get("primary_packets", 0) > 100, timeout=10), \
        "the probe does not go through cell1"
    others = {cell: probe_entry(net, cell, sport).get("primary_packets", 0) for cell in ("cell2", "cell3")}
    controller = net.controller.process.pid
    os.kill(controller, signal.SIGSTOP)
    try:
        killed_at = time.time()
        net.stop_cell("cell1", kill=True)
        assert poll(lambda: not net.port_live("cell1"), timeout=2), "the switch still holds cell1 LIVE"
        switch_detection_ms = (time.time() - killed_at) * 1000

        def taken_over():
            return [cell for cell, count in others.items()
                    if probe_entry(net, cell, sport).get("primary_packets", 0) > count + 100]

        successor = poll(taken_over, timeout=FROZEN_S)
        assert successor, f"no cell took the probe over while the controller was frozen ({others})"
    finally:
        os.kill(controller, signal.SIGCONT)
    failed = poll(lambda: (lambda c: c if c["state"] == "dead" else None)(cells_view(net)["cell1"]), timeout=10)
    assert failed, cells_view(net)["cell1"]
    assert failed["failure_history"][-1]["kind"] == "bfd" and failed["port_live"] is False, failed
    assert sender.wait(timeout=PROBE_S + 10) == 0
    stop_process(sink)
    sent, received = json.loads(sent_json.read_text()), json.loads(received_json.read_text())
    probe = analyse(received["arrivals"], sent["sent"], killed_at, 3.0, sent["rate_hz"], sent["first_send"])
    print(f"switch cleared LIVE {switch_detection_ms:.0f} ms after the kill (polled); probe: {probe}")
    # the traffic moved: the probe lost a few dozen datagrams at the failure, not the rest of its run
    assert probe["lost_after_failure"] is not None and probe["lost_after_failure"] < 500, probe
    assert probe["received"] > 0.8 * sent["sent"], probe


def test_a_draining_cell_asks_the_switch_to_stop_using_it(net):
    process = net.cell_processes["cell2"]
    process.send_signal(signal.SIGUSR1)
    assert poll(lambda: not net.port_live("cell2"), timeout=3), "the switch still forwards to cell2"
    view = poll(lambda: (lambda c: c if c["state"] == "dead" and c["path_down"] else None)(
        cells_view(net)["cell2"]), timeout=5)
    assert view, cells_view(net)["cell2"]
    assert view["path_down"] == "draining" and view["failure_history"][-1]["kind"] == "bfd", view
    assert net.cell_state("cell2")["bfd"]["state"] == "up"  # the session itself stays up
    process.send_signal(signal.SIGUSR2)
    assert poll(lambda: net.port_live("cell2"), timeout=3)
    back = poll(lambda: cells_view(net)["cell2"]["state"] == "alive", timeout=10)
    assert back, cells_view(net)["cell2"]
    assert cells_view(net)["cell2"]["path_down"] is None
