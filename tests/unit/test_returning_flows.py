"""Flows that come back after their switch entries idled out, or after a reconnect: placed where their state is."""

from __future__ import annotations

from testkit import oxm
from prism.flows.identity import TCP_ACK, TCP_SYN
from prism.placement.memory import PlacementMemory
from test_failover import CLIENT_IP, CLIENT_MAC, CLIENT_PORT, IDLE_TIMEOUT, SERVER_IP, SERVER_MAC, Network, flow_id


def tcp(flags=TCP_ACK, payload=b"more"):
    return oxm.tcp_packet(CLIENT_MAC, SERVER_MAC, CLIENT_IP, SERVER_IP, 43000, 80, flags, payload)


def idle_out(network: Network) -> None:
    network.now += IDLE_TIMEOUT + 1
    for report in network.switch.expire(network.now):
        network.apply(network.director.on_flow_removed(network.now, report.cookie, report.match,
                                                       report.packets, report.bytes, report.duration_s))  # fmt: skip
    assert len(network.director.flows) == 0


def test_a_flow_moved_by_a_failover_comes_back_on_the_cells_that_hold_its_state():
    network = Network(replication_factor=1)
    network.send(CLIENT_PORT, tcp(TCP_SYN, b""))
    first = network.profile_of(tcp())
    network.apply(network.director.on_cell_down(first.primary_cell, "process", network.now))
    network.seed_all()
    moved = network.profile_of(tcp())
    assert moved.primary_cell == first.mirror_cells[0]
    network.now += 1
    network.apply(network.director.on_cell_up(first.primary_cell, network.now))  # back, empty
    network.seed_all()
    idle_out(network)
    lost_before = network.director.counters.state_lost_flows
    network.send(CLIENT_PORT, tcp())  # the connection resumes
    returned = network.profile_of(tcp())
    assert returned.primary_cell == moved.primary_cell and first.primary_cell not in returned.cells
    assert set(returned.cells) <= set(moved.cells)
    counters = network.director.counters
    assert counters.flows_returned == 1 and counters.state_lost_flows == lost_before


def test_a_reconnect_remembers_live_flows_and_an_unknown_mid_connection_flow_is_counted_lost():
    network = Network(replication_factor=1)
    network.send(CLIENT_PORT, tcp(TCP_SYN, b""))
    placed = network.profile_of(tcp())
    network.apply(network.director.on_switch_connect(network.now))  # the switch wiped everything
    network.send(CLIENT_PORT, tcp())
    assert network.profile_of(tcp()) == placed and network.director.counters.flows_returned == 1
    stranger = oxm.tcp_packet(CLIENT_MAC, SERVER_MAC, CLIENT_IP, SERVER_IP, 43001, 80, TCP_ACK, b"mid-stream")
    network.send(CLIENT_PORT, stranger)
    assert network.director.counters.state_lost_flows == 1


def test_the_memory_forgets_cells_that_failed_since_and_old_placements():
    memory = PlacementMemory(ttl_s=100.0, max_entries=2)
    memory.remember(1, ("c1", "c2"), 0.0)
    memory.cell_down("c1")
    assert memory.recall(1, 10.0, {"c1", "c2", "c3"}) == ("c2",)
    memory.remember(2, ("c3",), 0.0)
    assert memory.recall(2, 101.0, {"c3"}) is None
    for flow in (3, 4, 5):
        memory.remember(flow, ("c2",), 0.0)
    assert len(memory) == 2 and memory.evicted == 1
    saved = memory.entries()
    restored = PlacementMemory()
    assert restored.load(saved + [["x", [], 0], [9, ["nowhere"], 0]], {"c2": 1}) == 2
    assert restored.recall(5, 1.0, {"c2"}) == ("c2",)


def test_a_cell_not_yet_heard_by_a_restarted_controller_keeps_what_it_was_remembered_to_hold():
    """A restarted controller declares a cell it has not heard from dead (not a failure it saw): the flows
    remembered on that cell are still placed there when they return; a failure it saw forgets them."""
    for seen_working, returned_on_first in ((False, True), (True, False)):
        network = Network(replication_factor=1)
        network.send(CLIENT_PORT, tcp(TCP_SYN, b""))
        first = network.profile_of(tcp())
        idle_out(network)
        network.apply(network.director.on_cell_down(first.primary_cell, "process", network.now,
                                                    seen_working=seen_working))  # fmt: skip
        network.now += 1
        network.apply(network.director.on_cell_up(first.primary_cell, network.now))
        network.seed_all()
        network.send(CLIENT_PORT, tcp())  # the connection resumes
        returned = network.profile_of(tcp())
        assert network.director.counters.flows_returned == 1
        if returned_on_first:
            assert returned == first, returned
        else:  # the cell failed while the controller watched: what it held is gone
            assert first.primary_cell not in returned.cells, returned
