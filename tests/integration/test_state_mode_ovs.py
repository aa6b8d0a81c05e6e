"""State mode and re-decisions on real Open vSwitch with real cells.

- An iperf3 transfer in ``state`` mode (``mirroring_mode: state``, rf 1): its
  mirror cell receives only the copies of the handshake (SYN, SYN-ACK; the
  switch's tcp_flags entries) and the primary's progress records, and the
  transfer survives its primary's process kill and its link going down.
- A flow born without a mirror (the aging policy, age rule) is promoted at an
  age milestone: its FSC entries move to a group with a mirror, the primary
  seeds that mirror with the flow; a failure after the seed completed keeps
  the connection with its state, and no flow's state is counted lost.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Dict, Optional

import pytest

from mininet_topos.demo import data_connection_outcome
from mininet_topos.harness import PrismNetwork
from tests.integration.test_failover_ovs import (
    CLIENT_PORT,
    FAIL_AT_S,
    REST_TOKEN,
    Transfer,
    data_flow,
    find_primary,
    forwarding_cell,
    poll,
    primary_counts,
    rest,
    state_of,
)

#: Mirror copies a state-mode TCP flow's mirror may get before any teardown:
#: SYN and SYN-ACK (a retransmitted handshake packet at most doubles them).
HANDSHAKE_COPIES_MAX = 4
#: State flows looked at every 0.2 s.
STATE_INTERVAL_S = 0.2
#: A progress record once a flow moved half of this (512 KiB: about every 0.4 s of the 10 Mbit/s
#: transfer), so that the mirror is fed by records well before the failure (the shipped 16 MiB
#: would send the first one after about 7 s of it).
TAKEOVER_TOLERANCE_BYTES = 1 << 20
PROMOTION_MILESTONE_S = 1.0


def make_network(tmp_path: Path, overrides: Dict) -> PrismNetwork:
    overrides = {"rest": {"token_env": "PRISM_REST_TOKEN"}, **overrides}
    net = PrismNetwork(tmp_path, clients=1, servers=1, cells=3, replication_factor=1, idle_timeout=10,
                       extra_env={"PRISM_REST_TOKEN": REST_TOKEN}, config_overrides=overrides)  # fmt: skip
    net.config["management"]["state_interval_s"] = STATE_INTERVAL_S  # written when the network starts
    net.config["management"]["takeover_tolerance_bytes"] = TAKEOVER_TOLERANCE_BYTES
    return net


def transfer_flow(net: PrismNetwork) -> Optional[Dict]:
    """The controller's view of the transfer's data connection."""
    for row in rest(net, "/prism/v1/flows")["flows"]:
        if f":{CLIENT_PORT} " in row["key"] + " ":
            return row
    return None


def fail(net: PrismNetwork, cell: str, kind: str) -> None:
    if kind == "process":
        net.stop_cell(cell, kill=True)
    else:
        net.set_cell_link(cell, up=False)


@pytest.mark.parametrize("kind", ["process", "link"])
def test_state_mode_transfer_survives_its_primary_with_only_handshake_copies(ovs, tmp_path, kind):
    with make_network(tmp_path, {"mirroring_mode": "state"}) as net:
        transfer = Transfer(net, f"state-{kind}")
        time.sleep(FAIL_AT_S)  # the scenario: the transfer runs a while before the failure
        primary = find_primary(net)
        flow = poll(lambda: transfer_flow(net), timeout=5)
        assert flow and flow["mode"] == "state" and len(flow["mirror_cells"]) == 1, flow
        mirror = flow["mirror_cells"][0]
        assert flow["primary_cell"] == primary, flow
        before = data_flow(net.cell_state(primary))
        # the mirror holds the flow from the handshake copies and the progress records
        held = poll(lambda: _replicated(net, mirror, before), timeout=5)
        assert held, (data_flow(state_of(net, mirror)), before)
        assert held["mirror_packets"] <= HANDSHAKE_COPIES_MAX, held
        mirror_cell = net.cell_state(mirror)["counters"]
        assert mirror_cell["mirror_packets"] <= HANDSHAKE_COPIES_MAX * 2, mirror_cell  # + iperf3's control connection
        counts = primary_counts(net, skip=primary)
        fail(net, primary, kind)
        successor = poll(lambda: forwarding_cell(net, primary, counts), timeout=8)
        result = transfer.finish()
        assert successor == mirror, (successor, mirror, net.controller.log_tail())
        assert result["error"] is None and result["late_bytes"] > 0 and result["resets"] == 0, result
        after = data_flow(net.cell_state(successor))
        assert after["token"] == before["token"] and after["first_seen"] == before["first_seen"], (before, after)
        assert after["mirror_packets"] <= HANDSHAKE_COPIES_MAX + 2, after  # + the FINs of the teardown
        status = rest(net, "/prism/v1/status")
        assert status["state_lost_flows"] == 0, status
        assert status["flows_state_mode"] >= 1, status


def _replicated(net: PrismNetwork, mirror: str, before: Dict) -> Optional[Dict]:
    """The mirror's record of the flow once progress records have brought it well past the handshake."""
    held = data_flow(state_of(net, mirror))
    if held and held.get("token") == before["token"] and held.get("packets", 0) > 100:
        return held
    return None


def test_a_flow_promoted_at_a_milestone_survives_a_failure_after_its_seed(ovs, tmp_path):
    # promotion alone: no mirror at birth (with birth: auto it would not open over a few flows anyway)
    prediction = {"milestones_s": [PROMOTION_MILESTONE_S], "mode": "state", "budget": 1.0, "birth": "off"}
    with make_network(tmp_path, {"prediction": prediction, "max_replication_factor": 1}) as net:
        transfer = Transfer(net, "promoted")
        born = poll(lambda: transfer_flow(net), timeout=5)
        assert born and born["mirror_cells"] == [], born
        promoted = poll(lambda: _seeded(net), timeout=PROMOTION_MILESTONE_S + 5)
        assert promoted, (transfer_flow(net), rest(net, "/prism/v1/status"), net.controller.log_tail())
        assert promoted["mode"] == "state" and len(promoted["mirror_cells"]) == 1, promoted
        primary, mirror = promoted["primary_cell"], promoted["mirror_cells"][0]
        assert primary == born["primary_cell"], (born, promoted)
        status = rest(net, "/prism/v1/status")
        assert status["promotions"] >= 1 and status["flows_seeded"] >= 1, status
        before = data_flow(net.cell_state(primary))
        held = poll(lambda: _holds(net, mirror, before), timeout=5)
        assert held, ("the mirror never reported the seeded flow", data_flow(state_of(net, mirror)), before)
        counts = primary_counts(net, skip=primary)
        killed_at = time.time()
        net.stop_cell(primary, kill=True)
        successor = poll(lambda: forwarding_cell(net, primary, counts), timeout=8)
        result = transfer.finish()
        assert successor == mirror, (successor, mirror, net.controller.log_tail())
        # The promoted flow is iperf3's data connection: judged at the server, from the capture.
        # (iperf3's control connection is another flow, idle after its first exchange: whether the
        # policy promotes it is the policy's business, and iperf3 reports nothing if it lost it.)
        data = data_connection_outcome(transfer.capture, killed_at, CLIENT_PORT)
        assert data["resets"] == 0 and data["packets_after_failure"] > 0, (data, result)
        after = data_flow(net.cell_state(successor))
        assert after["token"] == before["token"] and after["first_seen"] == before["first_seen"], (before, after)
        status = rest(net, "/prism/v1/status")
        assert status["flows_seeded"] >= 1, status


def _holds(net: PrismNetwork, mirror: str, before: Dict) -> Optional[Dict]:
    """The mirror's record of the flow once it carries the primary's token (the seed arrived)."""
    held = data_flow(state_of(net, mirror))
    return held if held and held.get("token") == before["token"] else None


def _seeded(net: PrismNetwork) -> Optional[Dict]:
    flow = transfer_flow(net)
    if flow and flow["mirror_cells"] and not flow["seeding"]:
        return flow
    return None
