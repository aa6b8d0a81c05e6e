"""Failover, drain and seeding in the director, tested through the fake switch: what happens to packets."""

from __future__ import annotations

from collections import Counter
from typing import Dict, List, Optional

import pytest

from testkit import oxm
from prism.director.actions import MgmtMessage, split_decisions
from prism.config.load import CellConfig, SwitchConfig
from prism.director.core import DROP_UNUSABLE_CELL, MirroringDirector, UnknownCell
from prism.director.failover import SEED_RETRY_S
from prism.director.repair import plan_repair, profile_key
from testkit.fakeswitch import FakeSwitch, Result
from prism.flows.identity import parse_frame
from prism.openflow.changes import MIRROR_MAC, Command, FlowMod, GroupMod, GroupType
from prism.policy.base import FixedPolicy
from prism.placement.profiles import MirroringProfile
from prism.placement.ring import HashRing

IDLE_TIMEOUT = 10
CLIENT_PORT, SERVER_PORT = 1, 2
CLIENT_MAC, SERVER_MAC = "02:00:00:00:01:01", "02:00:00:00:02:02"
CLIENT_IP, SERVER_IP = "10.0.1.1", "10.0.2.2"
FOUR_CELLS = {"c1": 11, "c2": 12, "c3": 13, "c4": 14}
SIX_CELLS = {**FOUR_CELLS, "c5": 15, "c6": 16}
FLOWS = 120


class Network:
    """A director driving a fake switch; management messages are kept for inspection."""

    def __init__(self, replication_factor: int = 2, cells: Optional[Dict[str, int]] = None, policy=None):
        cells = cells or FOUR_CELLS
        self.config = SwitchConfig(
            dp_id=1, name="s1",
            cells=tuple(CellConfig(id=c, port=p) for c, p in cells.items()),
            edge_ports=(CLIENT_PORT, SERVER_PORT),
        )  # fmt: skip
        self.ring = HashRing(list(cells))
        self.director = MirroringDirector(
            self.config, IDLE_TIMEOUT, policy or FixedPolicy(self.ring, replication_factor), ring=self.ring
        )
        self.switch = FakeSwitch()
        self.now = 0.0
        self.messages: List[MgmtMessage] = []
        self.apply(self.director.on_switch_connect(self.now))

    def apply(self, decisions) -> List:
        """Send OpenFlow changes to the switch, keep management messages; returns the OpenFlow part."""
        changes, messages = split_decisions(decisions)
        self.switch.apply(changes, now=self.now)
        self.messages += messages
        return changes

    def send(self, in_port: int, packet) -> Result:
        result = self.switch.process(in_port, packet, now=self.now)
        total = Result(outputs=list(result.outputs))
        for packet_in in result.packet_ins:
            changes = self.director.on_packet_in(self.now, packet_in.in_port, packet_in.table_id, packet_in.data)
            total.extend(self.switch.apply(changes, now=self.now))
        assert total.packet_ins == []
        return total

    def start_flows(self, count: int = FLOWS) -> List[dict]:
        packets = [udp(40000 + i) for i in range(count)]
        for packet in packets:
            self.send(CLIENT_PORT, packet)
        self.take_messages()
        return packets

    def profile_of(self, packet) -> MirroringProfile:
        return self.director.flows.get(flow_id(packet)).profile

    def group_of(self, packet) -> int:
        return self.director.flows.get(flow_id(packet)).group_id

    def port(self, cell_id: str) -> int:
        return self.director.cell_ports[cell_id]

    def take_messages(self, kind: Optional[str] = None) -> List[MgmtMessage]:
        taken = [m for m in self.messages if kind is None or m.type == kind]
        self.messages = [m for m in self.messages if m not in taken]
        return taken

    def seed_all(self) -> None:
        """Every cell asked to seed answers ``seeded`` (as the cells' SMMs do once the target acked)."""
        for message in self.take_messages("seed"):
            body = message.message
            self.apply(self.director.on_seeded(message.cell_id, body["profile_id"], body["target"], self.now))


def udp(sport: int = 40000, payload: bytes = b"query"):
    return oxm.udp_packet(CLIENT_MAC, SERVER_MAC, CLIENT_IP, SERVER_IP, sport, 53, payload)


def flow_id(packet) -> int:
    return parse_frame(oxm.to_frame(packet)).flow_id


def copies(result: Result, network: Network) -> Dict[str, List[str]]:
    """cell id -> eth_dst of each copy it received."""
    by_port = {port: cell for cell, port in network.director.cell_ports.items()}
    received: Dict[str, List[str]] = {}
    for port, packet in result.outputs:
        received.setdefault(by_port.get(port, f"port {port}"), []).append(packet["eth_dst"])
    return received


def assert_delivery(network: Network, packet, profile: MirroringProfile) -> None:
    """The primary gets the packet unmarked, each mirror one marked copy, no other cell anything."""
    expected = {profile.primary_cell: [SERVER_MAC], **{m: [MIRROR_MAC] for m in profile.mirror_cells}}
    assert copies(network.send(CLIENT_PORT, packet), network) == expected


def victim_primary(network: Network, packets) -> str:
    """The cell that is primary of the most flows."""
    return Counter(network.profile_of(p).primary_cell for p in packets).most_common(1)[0][0]


# --- a dead primary ------------------------------------------------------------------------------
def test_a_dead_primary_costs_two_group_mods_per_profile_and_existing_flows_move_to_the_first_mirror():
    network = Network(replication_factor=2)
    packets = network.start_flows()
    dead = victim_primary(network, packets)
    before = {flow_id(p): network.profile_of(p) for p in packets}
    groups_naming = network.director.profiles_naming(dead)
    flows_naming = sum(g.refcount for g in groups_naming)
    fsc_before = network.switch.dump()[0]

    changes = network.apply(network.director.on_cell_down(dead, "process", network.now))

    assert len(changes) == 2 * len(groups_naming) < flows_naming
    assert all(isinstance(c, GroupMod) and c.command is Command.MODIFY for c in changes)
    assert {c.group_id for c in changes if c.group_type is GroupType.ALL} == {g.group_id for g in groups_naming}
    assert network.switch.dump()[0] == fsc_before  # no flow entry touched
    stats = network.director.last_failover
    assert (stats.groups_rewritten, stats.flows_affected, stats.ofmsgs, stats.state_lost_flows) == (
        len(groups_naming), flows_naming, 2 * len(groups_naming), 0
    )
    assert stats.profiles_affected == len({g.profile for g in groups_naming})
    for packet in packets:
        old = before[flow_id(packet)]
        new = network.profile_of(packet)
        assert dead not in new.cells and new.replication_factor == 2
        if old.primary_cell == dead:
            assert new.primary_cell == old.mirror_cells[0]
            assert new.mirror_cells[0] == old.mirror_cells[1]
        elif dead in old.mirror_cells:
            assert new.primary_cell == old.primary_cell
        else:
            assert new == old
        assert_delivery(network, packet, new)


def test_new_mirrors_count_as_replicas_only_once_seeded():
    network = Network(replication_factor=2)
    packets = network.start_flows()
    dead = victim_primary(network, packets)
    network.apply(network.director.on_cell_down(dead, "process", network.now))
    seeds = network.take_messages("seed")
    rewritten = [g for g in network.director.groups.values() if g.pending_mirrors]
    assert len(seeds) == len(rewritten) == network.director.last_failover.groups_rewritten
    for message in seeds:
        group = network.director.groups[message.message["profile_id"]]
        assert message.cell_id == group.profile.primary_cell  # the new primary seeds
        assert group.pending_mirrors == (message.message["target"],) == group.profile.mirror_cells[-1:]
        assert len(group.confirmed_mirrors) == 1
    # a report from a cell that is not the group's primary changes nothing
    stale = seeds[0].message
    assert network.director.on_seeded("nobody", stale["profile_id"], stale["target"], 0.0) == []
    assert network.director.counters.stale_seeded == 1
    network.messages += seeds
    network.seed_all()
    assert all(len(g.confirmed_mirrors) == 2 and not g.pending_mirrors for g in network.director.groups.values())
    assert network.director.counters.seeds_confirmed == len(seeds)


def test_cells_concerned_get_one_profiles_message_each():
    network = Network(replication_factor=2)
    packets = network.start_flows()
    dead = victim_primary(network, packets)
    network.apply(network.director.on_cell_down(dead, "process", network.now))
    updates = network.take_messages("profiles")
    assert sorted(m.cell_id for m in updates) == sorted(set(network.director.cell_ports) - {dead})
    for message in updates:
        for profile_id, (primary, mirrors) in message.message["profiles"].items():
            group = network.director.groups[int(profile_id)]
            assert [primary, mirrors] == [group.profile.primary_cell, list(group.profile.mirror_cells)]
            assert dead not in [primary, *mirrors]


def test_a_dead_primary_without_mirrors_gets_a_ring_successor_and_its_flows_lose_their_state():
    network = Network(replication_factor=0)
    packets = network.start_flows(40)
    dead = victim_primary(network, packets)
    lost = sum(g.refcount for g in network.director.profiles_naming(dead))
    network.apply(network.director.on_cell_down(dead, "link", network.now))
    assert network.director.last_failover.state_lost_flows == lost > 0
    assert network.director.counters.state_lost_flows == lost
    assert network.take_messages("seed") == []  # nothing to seed from an empty primary
    for packet in packets:
        profile = network.profile_of(packet)
        assert dead not in profile.cells
        assert_delivery(network, packet, profile)


def test_link_failure_moves_traffic_in_the_data_plane_before_the_controller_acts():
    network = Network(replication_factor=1)
    packets = network.start_flows(30)
    dead = victim_primary(network, packets)
    victims = [p for p in packets if network.profile_of(p).primary_cell == dead]
    network.switch.set_port_live(network.port(dead), False)
    for packet in victims:  # FF bucket: the mirror gets the primary copy (and its marked copy)
        mirror = network.profile_of(packet).mirror_cells[0]
        assert copies(network.send(CLIENT_PORT, packet), network) == {mirror: [SERVER_MAC, MIRROR_MAC]}
    network.apply(network.director.on_cell_down(dead, "link", network.now))
    for packet in victims:
        assert_delivery(network, packet, network.profile_of(packet))


# --- a second failure before the first is repaired ---------------------------------------------------
def test_a_second_failure_before_seeding_promotes_the_next_seeded_mirror_and_seeds_again():
    network = Network(replication_factor=2, cells=SIX_CELLS)
    packets = network.start_flows()
    first = victim_primary(network, packets)
    victim = next(p for p in packets if network.profile_of(p).primary_cell == first)
    _, m1, m2 = network.profile_of(victim).cells
    network.apply(network.director.on_cell_down(first, "process", network.now))
    after_first = network.profile_of(victim)
    new_mirror = after_first.mirror_cells[-1]
    assert after_first.cells == (m1, m2, new_mirror)
    first_seeds = network.take_messages("seed")

    network.apply(network.director.on_cell_down(m1, "process", network.now))  # before any seeded
    after_second = network.profile_of(victim)
    assert after_second.primary_cell == m2 and new_mirror in after_second.mirror_cells
    assert after_second.replication_factor == 2 and first not in after_second.cells and m1 not in after_second.cells
    assert network.director.last_failover.state_lost_flows == 0
    assert_delivery(network, victim, after_second)
    group = network.director.groups[network.group_of(victim)]
    # both mirrors now wait for a snapshot from the new primary: the first one's seeding came from m1
    assert set(group.pending_mirrors) == set(after_second.mirror_cells)
    seeds = [m for m in network.take_messages("seed") if m.message["profile_id"] == group.group_id]
    assert {m.cell_id for m in seeds} == {m2} and {m.message["target"] for m in seeds} == set(group.pending_mirrors)
    # the first primary's seeding answer is now stale
    for message in first_seeds:
        if message.cell_id == m1:
            network.director.on_seeded(m1, message.message["profile_id"], message.message["target"], 0.0)
    assert network.director.groups[group.group_id].pending_mirrors == group.pending_mirrors
    network.messages += seeds
    network.seed_all()
    done = network.director.groups[group.group_id]
    assert done.pending_mirrors == () and len(done.confirmed_mirrors) == 2


def test_when_the_new_primary_dies_before_seeding_a_pending_mirror_is_not_trusted_while_a_seeded_one_lives():
    profile = MirroringProfile.of("a", "b", "c")
    ring = HashRing(["a", "b", "c", "d", "e"])
    repair = plan_repair(profile, 2, pending={"b"}, down={"a"}, draining=(), ring=ring)
    assert repair.profile.primary_cell == "c" and not repair.state_lost
    assert set(repair.profile.mirror_cells) == {"b", *repair.added} and repair.pending[-1:] == repair.added[-1:]
    only_pending = plan_repair(profile, 2, pending={"b", "c"}, down={"a"}, draining=(), ring=ring)
    assert only_pending.profile.primary_cell == "b" and only_pending.state_lost
    assert only_pending.pending == ()  # nothing to seed from a primary that holds partial state


def test_failover_choices_spread_over_the_live_cells_and_are_deterministic():
    ring = HashRing([f"c{i}" for i in range(1, 9)])
    chosen = Counter()
    for a in ring.cells:
        for b in ring.cells:
            if a != b and a != "c1" and b != "c1":
                repair = plan_repair(MirroringProfile.of(a, "c1", b), 2, (), {"c1"}, (), ring)
                assert repair == plan_repair(MirroringProfile.of(a, "c1", b), 2, (), {"c1"}, (), ring)
                chosen[repair.added[0]] += 1
    assert set(chosen) == set(ring.cells) - {"c1"}
    assert max(chosen.values()) <= 2.5 * min(chosen.values())
    assert profile_key(MirroringProfile.of("a", "b")) != profile_key(MirroringProfile.of("b", "a"))


# --- new flows, equal profiles, unknown cells -------------------------------------------------------
def test_new_flows_never_get_a_dead_or_drained_cell():
    network = Network(replication_factor=1)
    network.apply(network.director.on_cell_down("c1", "process", network.now))
    network.apply(network.director.drain_cell("c2", network.now))
    assert network.director.live_cells == ("c3", "c4")
    packets = network.start_flows(60)
    assert all(set(network.profile_of(p).cells) == {"c3", "c4"} for p in packets)


class TablePolicy:
    """Profiles by UDP source port (to build exact situations)."""

    def __init__(self, table):
        self.table = table

    def profile_for(self, packet_info, live_cells, now):
        return self.table[packet_info.sport]


def test_groups_that_become_equal_are_both_kept_and_new_flows_join_one_of_them():
    policy = TablePolicy({40000: MirroringProfile.of("c1", "c2"), 40001: MirroringProfile.of("c3", "c1")})
    network = Network(cells={"c1": 11, "c2": 12, "c3": 13}, policy=policy)
    a, b = udp(40000), udp(40001)
    network.send(CLIENT_PORT, a)
    network.send(CLIENT_PORT, b)
    group_a, group_b = network.group_of(a), network.group_of(b)
    network.apply(network.director.on_cell_down("c3", "process", network.now))
    equal = MirroringProfile.of("c1", "c2")
    groups = network.director.groups
    assert groups[group_a].profile == groups[group_b].profile == equal
    assert (network.group_of(a), network.group_of(b)) == (group_a, group_b)
    policy.table[40002] = equal
    network.send(CLIENT_PORT, udp(40002))
    assert network.group_of(udp(40002)) == min(group_a, group_b)
    assert network.director.profiles[equal].refcount == 2
    for packet in (a, b, udp(40002)):
        assert_delivery(network, packet, equal)


def test_a_policy_that_names_a_dead_cell_is_refused_and_unknown_cells_raise():
    policy = TablePolicy({40000: MirroringProfile.of("c1", "c2")})
    network = Network(policy=policy)
    network.apply(network.director.on_cell_down("c2", "process", network.now))
    network.send(CLIENT_PORT, udp(40000))
    assert network.director.counters.drops == {DROP_UNUSABLE_CELL: 1}
    with pytest.raises(UnknownCell, match="cell9"):
        network.director.on_cell_down("cell9", "link", 0.0)
    with pytest.raises(UnknownCell):
        network.director.drain_cell("cell9", 0.0)
    assert network.director.on_cell_down("c2", "process", 1.0) == []  # idempotent


# --- recovery, drain, restore --------------------------------------------------------------------
def test_a_returning_cell_refills_groups_that_could_not_keep_their_replication_factor():
    network = Network(replication_factor=2, cells={"c1": 11, "c2": 12, "c3": 13})
    packets = network.start_flows(30)
    network.apply(network.director.on_cell_down("c3", "process", network.now))
    assert all(g.profile.replication_factor == 1 for g in network.director.groups.values())
    assert network.director.last_failover.under_replicated_groups == len(network.director.groups)
    network.take_messages()
    network.now = 5.0
    changes = network.apply(network.director.on_cell_up("c3", network.now))
    assert len(changes) == 2 * len(network.director.groups)
    assert any(m.cell_id == "c3" and m.message["full"] for m in network.take_messages("profiles"))
    network.seed_all()
    for packet in packets:
        profile = network.profile_of(packet)
        assert profile.replication_factor == 2 and profile.mirror_cells[-1] == "c3"
        assert_delivery(network, packet, profile)
    assert all(len(g.confirmed_mirrors) == 2 for g in network.director.groups.values())


def test_drain_moves_flows_with_their_state_before_removing_the_cell():
    network = Network(replication_factor=1)
    packets = network.start_flows()
    drained = victim_primary(network, packets)
    before = {flow_id(p): network.profile_of(p) for p in packets}
    groups = network.director.profiles_naming(drained)

    step1 = network.apply(network.director.drain_cell(drained, network.now))
    assert len(step1) == 2 * len(groups)
    assert [m.cell_id for m in network.take_messages("drain")] == [drained]
    assert network.director.drain_status(drained)["done"] is False
    for packet in packets:  # nothing moved yet: the drained cell still holds its flows
        profile = network.profile_of(packet)
        assert profile.primary_cell == before[flow_id(packet)].primary_cell
        assert_delivery(network, packet, profile)
    seeds = [m for m in network.messages if m.type == "seed"]
    assert {m.cell_id for m in seeds} <= {drained} | {g.profile.primary_cell for g in groups}

    network.seed_all()
    status = network.director.drain_status(drained)
    assert status == {"draining": True, "groups_remaining": 0, "flows_remaining": 0, "done": True}
    for packet in packets:
        old, new = before[flow_id(packet)], network.profile_of(packet)
        assert drained not in new.cells and new.replication_factor == 1
        if old.primary_cell == drained:
            assert new.primary_cell == old.mirror_cells[0]  # the seeded mirror took over
        assert_delivery(network, packet, new)
    assert network.director.counters.state_lost_flows == 0
    assert network.director.last_repair.ofmsgs == 2 * network.director.last_repair.groups_rewritten


def test_a_drained_primary_without_mirrors_hands_over_only_after_seeding():
    network = Network(replication_factor=0)
    packets = network.start_flows(40)
    drained = victim_primary(network, packets)
    mine = [p for p in packets if network.profile_of(p).primary_cell == drained]
    network.apply(network.director.drain_cell(drained, network.now))
    for packet in mine:
        profile = network.profile_of(packet)
        assert profile.primary_cell == drained and len(profile.mirror_cells) == 1
    assert {m.cell_id for m in network.messages if m.type == "seed"} == {drained}
    network.seed_all()
    for packet in mine:
        profile = network.profile_of(packet)
        assert profile.primary_cell != drained and profile.mirror_cells == ()
        assert_delivery(network, packet, profile)


def test_restore_puts_a_drained_cell_back_for_new_flows():
    network = Network(replication_factor=1)
    network.apply(network.director.drain_cell("c1", network.now))
    network.seed_all()
    assert "c1" not in network.director.live_cells
    assert network.director.restore_cell("c4", network.now) == []  # not drained: nothing to do
    decisions = network.director.restore_cell("c1", network.now)
    assert [d.type for d in decisions if isinstance(d, MgmtMessage)] == ["restore"]
    assert network.director.live_cells == ("c1", "c2", "c3", "c4")
    packets = network.start_flows(60)
    assert any("c1" in network.profile_of(p).cells for p in packets)


# --- periodic messages ------------------------------------------------------------------------------
def test_tick_batches_assigns_per_cell_and_announces_new_groups_once():
    network = Network(replication_factor=1)
    network.director.tick(0.0)  # the first full tables
    packets = [udp(40000 + i) for i in range(50)]
    for packet in packets:
        network.send(CLIENT_PORT, packet)
    messages = network.director.tick(0.05)
    assigns = [m for m in messages if m.type == "assign"]
    assert len(assigns) == len({m.cell_id for m in assigns})  # one message per cell
    for message in assigns:
        for flow, profile_id, key_text in message.message["flows"]:
            entry = network.director.flows.get(flow)
            assert entry.group_id == profile_id and message.cell_id in entry.profile.cells
            assert key_text == str(entry.key)
    assert sum(len(m.message["flows"]) for m in assigns) == 50 * 2
    announced = {int(k) for m in messages if m.type == "profiles" for k in m.message["profiles"]}
    assert announced == set(network.director.groups)
    assert network.director.tick(0.1) == []


def test_unanswered_seeds_are_asked_again():
    network = Network(replication_factor=1)
    packets = network.start_flows(20)
    network.director.tick(0.0)
    network.apply(network.director.on_cell_down(victim_primary(network, packets), "process", 0.0))
    seeds = network.take_messages("seed")
    assert [m for m in network.director.tick(SEED_RETRY_S / 2) if m.type == "seed"] == []
    again = [m for m in network.director.tick(SEED_RETRY_S) if m.type == "seed"]
    assert sorted((m.cell_id, m.message["profile_id"]) for m in again) == sorted(
        (m.cell_id, m.message["profile_id"]) for m in seeds
    )
    assert network.director.counters.seeds_retried == len(seeds)


def test_a_switch_reconnect_keeps_dead_and_drained_cells_out():
    network = Network(replication_factor=1)
    network.apply(network.director.on_cell_down("c1", "link", 0.0))
    network.apply(network.director.drain_cell("c2", 0.0))
    network.apply(network.director.on_switch_connect(1.0))
    assert network.director.live_cells == ("c3", "c4") and network.director.groups == {}
    assert not any(isinstance(c, FlowMod) and c.command is Command.MODIFY for c in network.switch.flows())


def test_assignments_are_spread_over_ticks_when_there_are_many(monkeypatch):
    from prism.director import failover

    monkeypatch.setattr(failover, "ASSIGNS_PER_TICK", 30)
    network = Network(replication_factor=1)
    for packet in [udp(40000 + i) for i in range(50)]:
        network.send(CLIENT_PORT, packet)
    sent, ticks = 0, 0
    while True:
        flows = sum(len(m.message["flows"]) for m in network.director.tick(0.05 * ticks) if m.type == "assign")
        assert flows <= 30
        if not flows:
            break
        sent, ticks = sent + flows, ticks + 1
    assert sent == 100 and ticks == 4 and network.director.counters.assigns_sent == 100
