"""The Mirroring Director, tested through the fake switch: what happens to packets."""

from __future__ import annotations

import os
import random
from typing import Dict, List, Optional

import pytest

from testkit import oxm
from prism.config.load import CellConfig, SwitchConfig
from prism.director.core import DROP_CELL_PORT_IN_FSC, DROP_UNKNOWN_PORT, MirroringDirector
from testkit.fakeswitch import FakeSwitch, Result
from prism.flows.identity import parse_frame
from prism.openflow.changes import (
    COOKIE_HOST,
    FF_GROUP_OFFSET,
    MIRROR_MAC,
    PROFILE_GROUP_BASE,
    TABLE_CLASSIFY,
    TABLE_DELIVERY,
    TABLE_FSC,
    GroupAction,
    GroupType,
    Output,
    PacketOut,
    SetField,
)
from prism.policy.base import FixedPolicy
from prism.placement.profiles import MirroringProfile
from prism.placement.ring import HashRing

IDLE_TIMEOUT = 10
CLIENT_PORT, SERVER_PORT, OTHER_PORT = 1, 2, 3
EDGE_PORTS = (CLIENT_PORT, SERVER_PORT, OTHER_PORT)
CELL_PORTS = {"c1": 11, "c2": 12, "c3": 13, "c4": 14}
CLIENT_MAC, SERVER_MAC, OTHER_MAC = "02:00:00:00:01:01", "02:00:00:00:02:02", "02:00:00:00:03:03"
CLIENT_IP, SERVER_IP = "10.0.1.1", "10.0.2.2"
CLIENT_IP6, SERVER_IP6 = "2001:db8:1::1", "2001:db8:2::2"


class Network:
    """A director driving a fake switch, with packet-ins and flow-removed fed back."""

    def __init__(self, replication_factor: int = 2, cells: Optional[Dict[str, int]] = None) -> None:
        cells = cells or CELL_PORTS
        self.config = SwitchConfig(
            dp_id=1,
            name="s1",
            cells=tuple(CellConfig(id=c, port=p) for c, p in cells.items()),
            edge_ports=EDGE_PORTS,
        )
        self.ring = HashRing(list(cells))
        self.director = MirroringDirector(
            self.config, IDLE_TIMEOUT, FixedPolicy(self.ring, replication_factor)
        )
        self.switch = FakeSwitch()
        self.now = 0.0
        self.changes: List = []
        self.connect()

    def connect(self) -> None:
        self.apply(self.director.on_switch_connect(self.now))

    def apply(self, changes) -> Result:
        self.changes.extend(changes)
        result = self.switch.apply(changes, now=self.now)
        self._feed_flow_removed(result.flow_removed)
        return result

    def send(self, in_port: int, packet) -> Result:
        """One packet in; returns every copy that left the switch (after the controller's help)."""
        result = self.switch.process(in_port, packet, now=self.now)
        total = Result(outputs=list(result.outputs))
        for packet_in in result.packet_ins:
            changes = self.director.on_packet_in(
                self.now, packet_in.in_port, packet_in.table_id, packet_in.data
            )
            total.extend(self.apply(changes))
        assert total.packet_ins == [], "a packet-out must not bounce back to the controller"
        return total

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self._feed_flow_removed(self.switch.expire(self.now))

    def _feed_flow_removed(self, reports) -> None:
        for report in reports:
            self.apply(
                self.director.on_flow_removed(
                    self.now, report.cookie, report.match, report.packets, report.bytes, report.duration_s
                )
            )

    def learn_hosts(self) -> None:
        """The client and the server resolve each other by ARP."""
        self.send(CLIENT_PORT, oxm.arp_packet(CLIENT_MAC, CLIENT_IP, SERVER_IP))
        self.send(SERVER_PORT, oxm.arp_packet(SERVER_MAC, SERVER_IP, CLIENT_IP, eth_dst=CLIENT_MAC, op=2))

    def profile_of(self, packet) -> MirroringProfile:
        return self.director.flows.get(flow_id(packet)).profile

    def port(self, cell_id: str) -> int:
        return self.director.cell_ports[cell_id]


def flow_id(packet) -> int:
    return parse_frame(oxm.to_frame(packet)).flow_id


def udp(sport=40000, dport=53, src=CLIENT_IP, dst=SERVER_IP, payload=b"query"):
    return oxm.udp_packet(CLIENT_MAC, SERVER_MAC, src, dst, sport, dport, payload)


def udp_reply(sport=40000, dport=53, src=CLIENT_IP, dst=SERVER_IP):
    return oxm.udp_packet(SERVER_MAC, CLIENT_MAC, dst, src, dport, sport, b"answer")


def expected_profile(network: Network, packet, replication_factor: int = 2) -> MirroringProfile:
    order = network.ring.order(flow_id(packet))
    return MirroringProfile.of(order[0], *order[1 : 1 + replication_factor])


def assert_reaches_cells(network: Network, result: Result, profile: MirroringProfile, eth_dst: str) -> None:
    """Unmarked copy to the primary, one marked copy per mirror, nothing elsewhere."""
    primary, mirrors = network.port(profile.primary_cell), [network.port(c) for c in profile.mirror_cells]
    assert result.ports == sorted([primary, *mirrors])
    assert [p["eth_dst"] for p in result.to_port(primary)] == [eth_dst]
    for port in mirrors:
        assert [p["eth_dst"] for p in result.to_port(port)] == [MIRROR_MAC]


# --- Flows through the cells -------------------------------------------------------------
def test_first_packet_reaches_the_primary_unmarked_and_each_mirror_marked():
    network = Network()
    packet = udp()
    result = network.send(CLIENT_PORT, packet)
    profile = expected_profile(network, packet)
    assert network.profile_of(packet) == profile
    assert_reaches_cells(network, result, profile, SERVER_MAC)
    copy = result.to_port(network.port(profile.primary_cell))[0]
    assert copy["payload"] == b"query" and copy["udp_dst"] == 53 and copy["ipv4_src"] == CLIENT_IP
    counters = network.director.counters
    assert (
        counters.packet_ins,
        counters.flows_total,
        counters.flows_mirrored,
        counters.groups_installed,
    ) == (1, 1, 1, 1)


def test_later_packets_and_the_reply_use_the_same_group_without_the_controller():
    network = Network()
    network.send(CLIENT_PORT, udp())
    profile = network.profile_of(udp())
    group_id = network.director.profiles[profile].group_id
    assert_reaches_cells(network, network.send(CLIENT_PORT, udp()), profile, SERVER_MAC)
    assert_reaches_cells(network, network.send(SERVER_PORT, udp_reply()), profile, CLIENT_MAC)
    assert network.director.counters.packet_ins == 1
    assert network.switch.groups[group_id].packet_count == 3, "the first packet came through a packet-out"
    fsc = network.switch.flows(TABLE_FSC)
    assert sorted(e.packet_count for e in fsc if e.cookie == flow_id(udp())) == [1, 1]


def test_both_directions_of_a_flow_have_one_entry_each():
    network = Network()
    network.send(CLIENT_PORT, udp())
    entries = [e for e in network.switch.flows(TABLE_FSC) if e.cookie == flow_id(udp())]
    assert len(entries) == 2
    assert {(e.match["ipv4_src"], e.match["udp_src"]) for e in entries} == {
        (CLIENT_IP, 40000),
        (SERVER_IP, 53),
    }
    assert all(e.idle_timeout == IDLE_TIMEOUT and e.send_flow_removed for e in entries)


def test_tcp_connection_follows_one_profile():
    network = Network()
    syn = oxm.tcp_packet(CLIENT_MAC, SERVER_MAC, CLIENT_IP, SERVER_IP, 50000, 80, flags=0x02)
    syn_ack = oxm.tcp_packet(SERVER_MAC, CLIENT_MAC, SERVER_IP, CLIENT_IP, 80, 50000, flags=0x12)
    profile = expected_profile(network, syn)
    assert_reaches_cells(network, network.send(CLIENT_PORT, syn), profile, SERVER_MAC)
    assert_reaches_cells(network, network.send(SERVER_PORT, syn_ack), profile, CLIENT_MAC)
    assert network.director.counters.flows_total == 1


def test_ipv6_flows_work():
    network = Network()
    packet = oxm.udp_packet(CLIENT_MAC, SERVER_MAC, CLIENT_IP6, SERVER_IP6, 40000, 53, b"q6")
    reply = oxm.udp_packet(SERVER_MAC, CLIENT_MAC, SERVER_IP6, CLIENT_IP6, 53, 40000, b"a6")
    profile = expected_profile(network, packet)
    assert_reaches_cells(network, network.send(CLIENT_PORT, packet), profile, SERVER_MAC)
    assert_reaches_cells(network, network.send(SERVER_PORT, reply), profile, CLIENT_MAC)
    assert network.director.counters.packet_ins == 1
    assert {e.match["ipv6_src"] for e in network.switch.flows(TABLE_FSC) if e.cookie == flow_id(packet)} == {
        CLIENT_IP6,
        SERVER_IP6,
    }


def test_replication_factor_zero_gives_a_group_with_only_the_failover_bucket():
    network = Network(replication_factor=0)
    packet = udp()
    result = network.send(CLIENT_PORT, packet)
    profile = expected_profile(network, packet, replication_factor=0)
    assert result.ports == [network.port(profile.primary_cell)]
    group_id = network.director.profiles[profile].group_id
    all_group, ff_group = network.switch.groups[group_id], network.switch.groups[group_id + FF_GROUP_OFFSET]
    assert all_group.group_type is GroupType.ALL and [b.actions for b in all_group.buckets] == [
        (GroupAction(group_id + FF_GROUP_OFFSET),)
    ]
    assert ff_group.group_type is GroupType.FAST_FAILOVER and len(ff_group.buckets) == 1
    assert network.director.counters.flows_mirrored == 0


def test_group_buckets_follow_the_profile():
    network = Network()
    network.send(CLIENT_PORT, udp())
    profile = network.profile_of(udp())
    group_id = network.director.profiles[profile].group_id
    primary, (first, second) = network.port(profile.primary_cell), [
        network.port(c) for c in profile.mirror_cells
    ]
    ff_group = network.switch.groups[group_id + FF_GROUP_OFFSET]
    assert [(b.watch_port, b.actions) for b in ff_group.buckets] == [
        (primary, (Output(primary),)),
        (first, (Output(first),)),
        (second, (Output(second),)),
    ]
    assert [b.actions for b in network.switch.groups[group_id].buckets] == [
        (GroupAction(group_id + FF_GROUP_OFFSET),),
        (SetField("eth_dst", MIRROR_MAC), Output(first)),
        (SetField("eth_dst", MIRROR_MAC), Output(second)),
    ]


def test_fast_failover_moves_traffic_to_the_first_mirror_when_the_primary_port_is_dead():
    network = Network()
    network.send(CLIENT_PORT, udp())
    profile = network.profile_of(udp())
    network.switch.set_port_live(network.port(profile.primary_cell), False)
    result = network.send(CLIENT_PORT, udp())
    first, second = [network.port(c) for c in profile.mirror_cells]
    assert result.ports == sorted([first, first, second])
    assert sorted(p["eth_dst"] for p in result.to_port(first)) == sorted([SERVER_MAC, MIRROR_MAC])
    assert [p["eth_dst"] for p in result.to_port(second)] == [MIRROR_MAC]


def test_a_new_flow_while_the_primary_port_is_dead_still_gets_through():
    network = Network()
    profile = expected_profile(network, udp())
    network.switch.set_port_live(network.port(profile.primary_cell), False)
    result = network.send(CLIENT_PORT, udp())
    assert SERVER_MAC in [p["eth_dst"] for p in result.to_port(network.port(profile.mirror_cells[0]))]


# --- Groups: one per profile, reference-counted -------------------------------------------------
def _two_flows_with_one_profile(network: Network):
    by_profile: Dict[MirroringProfile, int] = {}
    for sport in range(40000, 41000):
        profile = expected_profile(network, udp(sport))
        if profile in by_profile:
            return udp(by_profile[profile]), udp(sport)
        by_profile[profile] = sport
    raise AssertionError("no two flows share a profile")


def test_two_flows_with_the_same_profile_share_one_group():
    network = Network()
    first, second = _two_flows_with_one_profile(network)
    network.send(CLIENT_PORT, first)
    network.send(CLIENT_PORT, second)
    profile = network.profile_of(first)
    assert network.profile_of(second) == profile
    assert len(network.switch.groups) == 2, "one ALL and one FF group"
    assert network.director.profiles[profile].refcount == 2
    assert network.director.counters.groups_installed == 1


def test_groups_are_deleted_when_the_last_flow_idles_out():
    network = Network()
    first, second = _two_flows_with_one_profile(network)
    network.send(CLIENT_PORT, first)
    network.advance(5)
    network.send(CLIENT_PORT, second)
    network.send(SERVER_PORT, udp_reply(second["udp_src"]))
    profile = network.profile_of(first)
    network.advance(6)  # first idle for 11 s: gone; second used 6 s ago
    assert flow_id(first) not in network.director.flows
    assert network.director.profiles[profile].refcount == 1
    assert len(network.switch.groups) == 2
    network.advance(IDLE_TIMEOUT)
    assert len(network.director.flows) == 0
    assert dict(network.director.profiles) == {}
    assert network.switch.groups == {} and network.switch.flows(TABLE_FSC)[0].priority == 0
    counters = network.director.counters
    assert (counters.flows_ended, counters.groups_deleted) == (2, 1)


def test_final_counters_of_both_directions_are_recorded():
    network = Network()
    network.send(CLIENT_PORT, udp())
    for _ in range(3):
        network.send(CLIENT_PORT, udp())
    network.send(SERVER_PORT, udp_reply())
    entry = network.director.flows.get(flow_id(udp()))
    network.advance(IDLE_TIMEOUT)
    assert flow_id(udp()) not in network.director.flows
    assert entry.packets == 4, "3 forward + 1 reply through the entries; the first was a packet-out"
    assert entry.bytes == 3 * len(oxm.to_frame(udp())) + len(oxm.to_frame(udp_reply()))


def test_freed_group_ids_are_reused():
    network = Network()
    network.send(CLIENT_PORT, udp())
    assert network.director.profiles[network.profile_of(udp())].group_id == PROFILE_GROUP_BASE
    network.advance(IDLE_TIMEOUT)
    other = udp(sport=41234)
    network.send(CLIENT_PORT, other)
    assert network.director.profiles[network.profile_of(other)].group_id == PROFILE_GROUP_BASE


def test_a_direction_that_idled_out_comes_back_when_it_is_used_again():
    network = Network()
    network.send(CLIENT_PORT, udp())
    for _ in range(3):
        network.advance(4)
        network.send(CLIENT_PORT, udp())  # the reply direction idles out meanwhile
    assert flow_id(udp()) in network.director.flows
    assert len([e for e in network.switch.flows(TABLE_FSC) if e.cookie == flow_id(udp())]) == 1
    profile = network.profile_of(udp())
    assert_reaches_cells(network, network.send(SERVER_PORT, udp_reply()), profile, CLIENT_MAC)
    assert len([e for e in network.switch.flows(TABLE_FSC) if e.cookie == flow_id(udp())]) == 2
    assert (
        network.director.counters.flows_total == 1 and network.director.counters.directions_reinstalled == 1
    )


def test_a_second_packet_in_for_a_flow_being_installed_only_goes_out_through_its_group():
    network = Network()
    data = oxm.to_frame(udp())
    first = network.director.on_packet_in(network.now, CLIENT_PORT, TABLE_FSC, data)
    second = network.director.on_packet_in(network.now, CLIENT_PORT, TABLE_FSC, data)
    group_id = network.director.profiles[network.profile_of(udp())].group_id
    assert second == [PacketOut(CLIENT_PORT, (GroupAction(group_id),), data)]
    network.apply(first + second)
    assert len(network.switch.flows(TABLE_FSC)) == 3, "two directions and the table-miss entry"


# --- Hosts: learnt on edge ports only ---------------------------------------------------------------
def test_packets_from_the_primary_cell_are_delivered_to_the_right_host():
    network = Network()
    network.learn_hosts()
    network.send(CLIENT_PORT, udp())
    profile = network.profile_of(udp())
    forwarded = network.send(network.port(profile.primary_cell), udp())
    assert forwarded.ports == [SERVER_PORT]
    back = network.send(network.port(profile.primary_cell), udp_reply())
    assert back.ports == [CLIENT_PORT]


def test_arp_is_flooded_to_edge_ports_only_and_replies_go_to_the_learnt_host():
    network = Network()
    request = network.send(CLIENT_PORT, oxm.arp_packet(CLIENT_MAC, CLIENT_IP, SERVER_IP))
    assert request.ports == [SERVER_PORT, OTHER_PORT]
    reply = network.send(
        SERVER_PORT, oxm.arp_packet(SERVER_MAC, SERVER_IP, CLIENT_IP, eth_dst=CLIENT_MAC, op=2)
    )
    assert reply.ports == [CLIENT_PORT]
    assert dict(network.director.hosts) == {CLIENT_MAC: CLIENT_PORT, SERVER_MAC: SERVER_PORT}
    delivery = {
        e.match["eth_dst"]: e.actions for e in network.switch.flows(TABLE_DELIVERY) if e.cookie == COOKIE_HOST
    }
    assert delivery == {CLIENT_MAC: (Output(CLIENT_PORT),), SERVER_MAC: (Output(SERVER_PORT),)}


def test_ipv6_neighbour_discovery_goes_through_the_controller():
    network = Network()
    solicit = oxm.nd_solicit_packet(CLIENT_MAC, CLIENT_IP6, SERVER_IP6)
    result = network.send(CLIENT_PORT, solicit)
    assert result.ports == [SERVER_PORT, OTHER_PORT]
    assert result.to_port(SERVER_PORT)[0]["ipv6_nd_target"] == SERVER_IP6
    assert network.director.hosts[CLIENT_MAC] == CLIENT_PORT
    assert network.director.counters.flows_total == 0


def test_a_host_moving_to_another_edge_port_is_relearnt():
    network = Network()
    network.learn_hosts()
    network.send(OTHER_PORT, oxm.arp_packet(SERVER_MAC, SERVER_IP, CLIENT_IP))
    assert network.director.hosts[SERVER_MAC] == OTHER_PORT
    entries = [e for e in network.switch.flows(TABLE_DELIVERY) if e.match.get("eth_dst") == SERVER_MAC]
    assert [e.actions for e in entries] == [(Output(OTHER_PORT),)]


def test_hosts_are_never_learnt_from_cell_ports():
    network = Network()
    network.learn_hosts()
    cell_port = network.port("c1")
    stranger = oxm.udp_packet("02:00:00:00:09:09", "02:00:00:00:08:08", "10.9.9.9", "10.8.8.8", 1, 2)
    result = network.send(cell_port, stranger)
    assert result.ports == list(EDGE_PORTS), "unknown destination: flooded to the edge ports, never to cells"
    spoof = oxm.udp_packet(CLIENT_MAC, SERVER_MAC, CLIENT_IP, SERVER_IP, 1, 2)
    assert network.send(cell_port, spoof).ports == [SERVER_PORT]
    assert dict(network.director.hosts) == {CLIENT_MAC: CLIENT_PORT, SERVER_MAC: SERVER_PORT}


def test_mirror_copies_sent_back_by_a_cell_go_nowhere():
    network = Network()
    marked = dict(udp(), eth_dst=MIRROR_MAC)
    assert network.send(network.port("c2"), marked).outputs == []
    assert network.director.counters.packet_ins == 0


def test_ip_multicast_from_an_edge_port_is_flooded_and_is_not_a_flow():
    network = Network()
    mdns = oxm.udp_packet(CLIENT_MAC, "01:00:5e:00:00:fb", CLIENT_IP, "224.0.0.251", 5353, 5353)
    assert network.send(CLIENT_PORT, mdns).ports == [SERVER_PORT, OTHER_PORT]
    assert network.director.counters.flows_total == 0 and network.switch.groups == {}


def test_non_ip_from_an_edge_port_is_delivered_by_l2():
    network = Network()
    network.learn_hosts()
    frame = {
        "eth_src": CLIENT_MAC,
        "eth_dst": SERVER_MAC,
        "eth_type": 0x88B5,
        "payload": b"local experimental",
    }
    assert network.send(CLIENT_PORT, frame).ports == [SERVER_PORT]
    assert network.director.counters.flows_total == 0


# --- Connect and reconnect -------------------------------------------------------------------------------
def _traffic(network: Network) -> None:
    network.learn_hosts()
    for sport in (40000, 40001, 40002):
        network.send(CLIENT_PORT, udp(sport))
        network.send(SERVER_PORT, udp_reply(sport))
    network.send(CLIENT_PORT, oxm.udp_packet(CLIENT_MAC, SERVER_MAC, CLIENT_IP6, SERVER_IP6, 1, 2))


def test_a_reconnect_converges_to_the_same_tables_without_duplicates():
    network = Network()
    pipeline_only = network.switch.dump()
    _traffic(network)
    programmed = network.switch.dump()
    network.connect()
    assert network.switch.dump() == pipeline_only
    assert len(network.director.flows) == 0 and dict(network.director.profiles) == {}
    _traffic(network)
    assert network.switch.dump() == programmed
    assert network.director.counters.switch_connects == 2


def test_a_restarted_controller_converges_a_programmed_switch():
    network = Network()
    _traffic(network)
    fresh = Network()
    fresh.switch = network.switch
    fresh.connect()
    assert fresh.switch.dump() == Network().switch.dump()
    assert (
        fresh.director.counters.unknown_flow_removed == 8
    ), "flow-removed for the deleted entries are ignored"


def test_the_pipeline_classifies_by_port_and_protocol():
    network = Network()
    classify = {(tuple(sorted(e.match.items())), e.priority): e for e in network.switch.flows(TABLE_CLASSIFY)}
    for port in CELL_PORTS.values():
        assert classify[((("in_port", port),), 300)].goto_table == TABLE_DELIVERY
    ipv4 = classify[((("eth_type", 0x0800), ("in_port", CLIENT_PORT)), 200)]
    assert ipv4.goto_table == TABLE_FSC and ipv4.actions == ()
    assert network.switch.process(20, udp()).outputs == [], "unknown ports: dropped"


# --- Bad input ------------------------------------------------------------------------------------------
def test_garbage_packet_ins_are_counted_and_change_nothing():
    network = Network()
    _traffic(network)
    before = (network.switch.dump(), len(network.director.flows), dict(network.director.hosts))
    packet_ins_before = network.director.counters.packet_ins
    rng = random.Random(7)
    valid = oxm.to_frame(udp(sport=45000))
    garbage = [b"", b"\x00", os.urandom(13), valid[:14], valid[:20], valid[:40]]
    garbage += [bytes(rng.getrandbits(8) for _ in range(rng.randrange(14, 120))) for _ in range(200)]
    garbage += [valid[:12] + b"\x08\x00" + bytes(rng.getrandbits(8) for _ in range(40)) for _ in range(100)]
    changes = []
    for data in garbage:
        changes += network.director.on_packet_in(network.now, CLIENT_PORT, TABLE_FSC, data)
    assert all(
        isinstance(c, PacketOut) for c in changes
    ), "at most a multicast frame is flooded, no state changes"
    network.apply(changes)
    assert (network.switch.dump(), len(network.director.flows), dict(network.director.hosts)) == before
    counters = network.director.counters
    assert counters.flows_total == 4 and counters.packet_ins == packet_ins_before + len(garbage)
    assert sum(counters.drops.values()) + len(changes) == len(
        garbage
    ), "every packet-in dropped and counted, or flooded"
    assert any(reason.startswith("not a flow: ") for reason in network.director.counters.drops)


@pytest.mark.parametrize(
    "in_port, table_id, reason",
    [
        (99, TABLE_FSC, DROP_UNKNOWN_PORT),
        (CELL_PORTS["c1"], TABLE_FSC, DROP_CELL_PORT_IN_FSC),
        (CLIENT_PORT, 7, "unknown table"),
    ],
)
def test_packet_ins_from_where_they_cannot_come_are_counted(in_port, table_id, reason):
    network = Network()
    before = network.switch.dump()
    assert network.director.on_packet_in(network.now, in_port, table_id, oxm.to_frame(udp())) == []
    assert network.director.counters.drops == {reason: 1}
    assert network.switch.dump() == before


def test_unknown_flow_removed_reports_are_counted_and_ignored():
    network = Network()
    assert network.director.on_flow_removed(network.now, 12345, {}, 1, 100, 1.0) == []
    network.send(CLIENT_PORT, udp())
    other = udp(sport=9)
    bad_match = oxm.normalize_packet(
        {"eth_type": 0x0800, "ip_proto": 17, "ipv4_src": "1.2.3.4", "ipv4_dst": "5.6.7.8"}
    )
    assert network.director.on_flow_removed(network.now, flow_id(udp()), bad_match, 1, 100, 1.0) == []
    assert network.director.counters.unknown_flow_removed == 2
    assert flow_id(udp()) in network.director.flows and flow_id(other) not in network.director.flows


def test_no_live_cell_drops_new_flows():
    network = Network(cells={"c1": 11})
    network.director._live_cells = ()
    assert network.send(CLIENT_PORT, udp()).outputs == []
    assert network.director.counters.drops == {"no live cell": 1}


def test_a_port_cannot_be_both_a_cell_and_an_edge_port():
    config = SwitchConfig(dp_id=1, name="s1", cells=(CellConfig(id="c1", port=1),), edge_ports=(1, 2))
    with pytest.raises(ValueError):
        MirroringDirector(config, IDLE_TIMEOUT, FixedPolicy(HashRing(["c1"]), 0))


def test_a_flow_beyond_max_flows_goes_to_its_primary_unmirrored_without_the_controller():
    network = Network()
    network.director.max_flows = 1
    network.send(CLIENT_PORT, udp(sport=40000))
    extra = udp(sport=40001)
    result = network.send(CLIENT_PORT, extra)
    primary = expected_profile(network, extra).primary_cell
    assert result.ports == [network.port(primary)] and result.to_port(network.port(primary))[0]["eth_dst"] == SERVER_MAC
    assert len(network.director.flows) == 1 and network.director.counters.flows_unprotected == 1
    packet_ins = network.director.counters.packet_ins
    assert network.send(CLIENT_PORT, extra).ports == [network.port(primary)]
    assert network.send(SERVER_PORT, udp_reply(sport=40001)).ports == [network.port(primary)]
    assert network.director.counters.packet_ins == packet_ins  # the switch forwards it on its own


def test_a_group_the_switch_refused_leaves_its_flows_on_their_primary_unmirrored():
    from prism.openflow.refusals import GROUP, Refusal

    network = Network()
    network.send(CLIENT_PORT, udp())
    profile = network.profile_of(udp())
    group_id = network.director.profiles[profile].group_id
    network.apply(network.director.on_refused(Refusal(GROUP, group_id, None, 6, 0), network.now))
    assert network.director.groups == {} and len(network.director.flows) == 0
    counters = network.director.counters
    assert (counters.groups_refused, counters.flows_unprotected) == (1, 1)
    packet_ins = counters.packet_ins
    primary = network.port(profile.primary_cell)
    assert network.send(CLIENT_PORT, udp()).ports == [primary]
    assert network.send(SERVER_PORT, udp_reply()).ports == [primary]
    assert network.director.counters.packet_ins == packet_ins


def test_an_fsc_entry_the_switch_refused_is_forgotten_with_its_group():
    from prism.openflow.changes import TABLE_FSC
    from prism.openflow.refusals import FLOW, Refusal

    network = Network()
    network.send(CLIENT_PORT, udp())
    changes = network.director.on_refused(Refusal(FLOW, flow_id(udp()), TABLE_FSC, 5, 1), network.now)
    assert len(network.director.flows) == 0 and network.director.counters.flows_refused == 1
    assert network.director.groups == {} and len(changes) == 2  # the group's deletions


def test_refused_additions_are_read_from_the_echoed_request():
    from ryu.ofproto import ofproto_protocol, ofproto_v1_3

    from prism.openflow.refusals import FLOW, GROUP, refused_addition

    datapath = ofproto_protocol.ProtocolDesc(ofproto_v1_3.OFP_VERSION)
    parser = datapath.ofproto_parser
    group = parser.OFPGroupMod(datapath, ofproto_v1_3.OFPGC_ADD, ofproto_v1_3.OFPGT_ALL, 0x1234, [])
    flow = parser.OFPFlowMod(datapath, cookie=0xABCDEF, table_id=1, command=ofproto_v1_3.OFPFC_ADD)
    delete = parser.OFPGroupMod(datapath, ofproto_v1_3.OFPGC_DELETE, ofproto_v1_3.OFPGT_ALL, 0x1234, [])
    for message in (group, flow, delete):
        message.serialize()
    assert refused_addition(6, 0, bytes(group.buf)[:64]).kind == GROUP
    assert refused_addition(6, 0, bytes(group.buf)[:64]).ident == 0x1234
    refusal = refused_addition(5, 1, bytes(flow.buf)[:64])
    assert (refusal.kind, refusal.ident, refusal.table_id) == (FLOW, 0xABCDEF, 1)
    assert refused_addition(6, 0, bytes(delete.buf)) is None and refused_addition(1, 1, b"\x04") is None
