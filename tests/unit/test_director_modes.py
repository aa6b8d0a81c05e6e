"""Mirroring modes and re-decisions at age milestones, tested through the fake switch."""

from __future__ import annotations

from typing import Optional

import pytest

from testkit import oxm
from prism.director.actions import MgmtMessage, split_decisions
from prism.director.groups import STATE_ENTRIES_PER_PROFILE
from prism.openflow.changes import (
    FF_GROUP_OFFSET,
    MIRROR_MAC,
    TABLE_FSC,
    TABLE_PROFILE,
    Command,
    FlowMod,
    Match,
)
from prism.policy.base import FixedPolicy
from prism.placement.profiles import MODE_FULL, MODE_STATE, MirroringProfile
from tests.unit.test_director import (
    CLIENT_IP,
    CLIENT_IP6,
    CLIENT_MAC,
    CLIENT_PORT,
    IDLE_TIMEOUT,
    SERVER_IP,
    SERVER_IP6,
    SERVER_MAC,
    SERVER_PORT,
    Network,
    flow_id,
    udp,
    udp_reply,
)

SYN, FIN, RST, ACK, PSH = 0x02, 0x01, 0x04, 0x10, 0x08


class ModeNetwork(Network):
    """A network whose director's policy is FixedPolicy with a mode (and optionally a re-decision)."""

    def __init__(self, replication_factor: int = 1, mode: str = MODE_STATE, policy=None) -> None:
        super().__init__(replication_factor)
        self.director.policy = policy or FixedPolicy(self.ring, replication_factor, mode)

    def primary_port(self, packet) -> int:
        return self.port(self.profile_of(packet).primary_cell)

    def mirror_ports(self, packet):
        return [self.port(c) for c in self.profile_of(packet).mirror_cells]

    def mirrored(self, result, packet) -> bool:
        """True if every mirror got a marked copy; False if none did (anything else fails)."""
        copies = [[p for p in result.to_port(port) if p["eth_dst"] == MIRROR_MAC] for port in self.mirror_ports(packet)]
        assert all(len(c) == len(copies[0]) for c in copies), copies
        return bool(copies and copies[0])


def tcp(flags, forward=True, ip6=False, payload=b""):
    client, server = (CLIENT_IP6, SERVER_IP6) if ip6 else (CLIENT_IP, SERVER_IP)
    if forward:
        return oxm.tcp_packet(CLIENT_MAC, SERVER_MAC, client, server, 50000, 80, flags=flags, payload=payload)
    return oxm.tcp_packet(SERVER_MAC, CLIENT_MAC, server, client, 80, 50000, flags=flags, payload=payload)


class Promoting:
    """A policy: no mirror at birth (FixedPolicy rf 0); at a milestone, the answer it is given."""

    def __init__(self, ring, answer=None, birth_mode: str = MODE_FULL) -> None:
        self.base = FixedPolicy(ring, 0, birth_mode)
        self.answer = answer
        self.milestones_s = (0.5, 2.0)
        self.calls = []

    def profile_for(self, info, live, now):
        return self.base.profile_for(info, live, now)

    def mode_for(self, flow_id):
        return self.base.mode_for(flow_id)

    def redecide(self, flow_id, current, age_s, packets, byte_count, live_cells, now):
        self.calls.append((flow_id, current, age_s, packets, byte_count, tuple(live_cells)))
        return self.answer(current, tuple(live_cells)) if self.answer else None


def promote(mode: str, mirrors: int = 1):
    """An answer: the same primary, the next live cells of the ring's order as mirrors."""

    def answer(current: MirroringProfile, live):
        others = [c for c in live if c != current.primary_cell][:mirrors]
        return MirroringProfile.of(current.primary_cell, *others), mode

    return answer


# --- state mode in the switch ---------------------------------------------------------------
@pytest.mark.parametrize("ip6", [False, True])
def test_state_mode_tcp_copies_only_syn_fin_rst_to_the_mirrors(ip6):
    network = ModeNetwork()
    network.learn_hosts()
    syn = tcp(SYN, ip6=ip6)
    result = network.send(CLIENT_PORT, syn)
    assert result.to_port(network.primary_port(syn))[0]["eth_dst"] == SERVER_MAC
    assert network.mirrored(result, syn), "the SYN (first packet, a packet-out) reaches the mirror"
    assert network.mirrored(network.send(SERVER_PORT, tcp(SYN | ACK, forward=False, ip6=ip6)), syn)
    for flags, forward in [(ACK, True), (ACK | PSH, True), (ACK, False), (ACK | PSH, False)]:
        result = network.send(CLIENT_PORT if forward else SERVER_PORT, tcp(flags, forward, ip6, b"data"))
        assert result.ports == [network.primary_port(syn)], (flags, forward)
        assert not network.mirrored(result, syn)
    for flags, forward in [(FIN | ACK, True), (FIN | ACK, False), (RST, True), (RST | ACK, False)]:
        result = network.send(CLIENT_PORT if forward else SERVER_PORT, tcp(flags, forward, ip6))
        assert network.mirrored(result, syn), (flags, forward)
        assert len(result.to_port(network.primary_port(syn))) == 1
    assert network.director.counters.packet_ins == 3  # two ARPs and the SYN


def test_state_mode_other_protocols_copy_the_first_packet_only():
    network = ModeNetwork()
    network.learn_hosts()
    first = network.send(CLIENT_PORT, udp())
    assert network.mirrored(first, udp())
    for packet, port in [(udp(), CLIENT_PORT), (udp_reply(), SERVER_PORT)]:
        result = network.send(port, packet)
        assert result.ports == [network.primary_port(udp())]
    assert network.switch.flows(TABLE_PROFILE) == [], "non-TCP flows need no profile entries"
    fsc = [e for e in network.switch.flows(TABLE_FSC) if e.cookie == flow_id(udp())]
    group_id = network.director.flows.get(flow_id(udp())).group_id
    assert {e.actions for e in fsc} == {(network.changes[-1].actions[0].__class__(group_id + FF_GROUP_OFFSET),)}


def test_full_mode_is_unchanged_and_costs_no_profile_entries():
    network = ModeNetwork(mode=MODE_FULL)
    network.learn_hosts()
    syn = tcp(SYN)
    network.send(CLIENT_PORT, syn)
    assert network.mirrored(network.send(CLIENT_PORT, tcp(ACK, payload=b"x")), syn)
    assert network.switch.flows(TABLE_PROFILE) == []


def test_cost_per_profile_and_flow_in_state_mode():
    """Per flow: two FSC entries in either mode; per profile: 2 groups, plus 7 TABLE_PROFILE entries in state mode."""
    network = ModeNetwork()
    network.learn_hosts()
    for sport in range(50000, 50040):
        network.send(CLIENT_PORT, oxm.tcp_packet(CLIENT_MAC, SERVER_MAC, CLIENT_IP, SERVER_IP, sport, 80, flags=SYN))
    profiles = len(network.director.groups)
    assert len(network.switch.flows(TABLE_FSC)) - 1 == 2 * 40  # minus the table-miss entry
    assert len(network.switch.flows(TABLE_PROFILE)) == STATE_ENTRIES_PER_PROFILE * profiles == 7 * profiles
    assert len(network.switch.groups) == 2 * profiles
    fsc = [e for e in network.switch.flows(TABLE_FSC) if e.cookie != 0 and e.goto_table == TABLE_PROFILE]
    assert len(fsc) == 80 and all(e.write_metadata[0] in network.director.groups for e in fsc)


def test_profile_entries_die_with_the_groups():
    network = ModeNetwork()
    network.learn_hosts()
    network.send(CLIENT_PORT, tcp(SYN))
    assert len(network.switch.flows(TABLE_PROFILE)) == STATE_ENTRIES_PER_PROFILE
    network.advance(IDLE_TIMEOUT + 1)
    assert network.director.flows.get(flow_id(tcp(SYN))) is None
    assert network.switch.flows(TABLE_PROFILE) == [] and network.switch.groups == {}


def test_state_mode_failover_rewrites_groups_only():
    network = ModeNetwork()
    network.learn_hosts()
    syn = tcp(SYN)
    network.send(CLIENT_PORT, syn)
    old = network.profile_of(syn)
    profile_entries = network.switch.dump()[0]
    network.switch.set_port_live(network.port(old.primary_cell), False)
    # before the controller acts, the FF group already sends data to the mirror
    assert network.send(CLIENT_PORT, tcp(ACK, payload=b"x")).ports == [network.port(old.mirror_cells[0])]
    decisions = network.director.on_cell_down(old.primary_cell, "link", network.now)
    changes, _ = split_decisions(decisions)
    assert {type(c) for c in changes} == {type(changes[0])} and all(c.command is Command.MODIFY for c in changes)
    assert network.switch.dump()[0] == profile_entries, "no flow entry changes in a failover"
    network.apply(changes)
    new = network.profile_of(syn)
    assert new.primary_cell == old.mirror_cells[0] and new.mirror_cells
    assert network.send(CLIENT_PORT, tcp(ACK, payload=b"x")).ports == [network.port(new.primary_cell)]
    assert network.mirrored(network.send(CLIENT_PORT, tcp(FIN | ACK)), syn)


# --- re-decisions at milestones --------------------------------------------------------------------
def milestone(network, packet, age_s=0.5, packets=10, byte_count=1000, cell: Optional[str] = None):
    entry = network.director.flows.get(flow_id(packet))
    cell = cell or entry.profile.primary_cell
    decisions = network.director.on_milestone(cell, [(entry.flow_id, age_s, packets, byte_count)], network.now)
    changes, messages = split_decisions(decisions)
    assert messages == []
    network.apply(changes)
    return changes


def tick_messages(network):
    return [m for m in network.director.tick(network.now) if isinstance(m, MgmtMessage)]


@pytest.mark.parametrize("mode", [MODE_FULL, MODE_STATE])
def test_promotion_moves_both_entries_keeping_counters(mode):
    network = Network(replication_factor=0)
    policy = network.director.policy = Promoting(network.ring, promote(mode))
    network.learn_hosts()
    syn = tcp(SYN)
    network.send(CLIENT_PORT, syn)
    for _ in range(3):
        network.send(CLIENT_PORT, tcp(ACK, payload=b"x"))
        network.send(SERVER_PORT, tcp(ACK, forward=False, payload=b"y"))
    old_group = network.director.flows.get(flow_id(syn)).group_id
    before = {e.match["ipv4_src"]: e.packet_count for e in network.switch.flows(TABLE_FSC) if e.cookie == flow_id(syn)}
    changes = milestone(network, syn)
    assert policy.calls[0][2:5] == (0.5, 10, 1000)
    strict = [c for c in changes if isinstance(c, FlowMod) and c.command is Command.MODIFY_STRICT]
    assert len(strict) == 2 and all(c.table_id == TABLE_FSC for c in strict)
    after = {e.match["ipv4_src"]: e.packet_count for e in network.switch.flows(TABLE_FSC) if e.cookie == flow_id(syn)}
    assert after == before == {CLIENT_IP: 3, SERVER_IP: 3}
    entry = network.director.flows.get(flow_id(syn))
    assert entry.mode == mode and entry.profile.replication_factor == 1 and entry.group_id != old_group
    assert old_group not in network.switch.groups, "the emptied group is deleted"
    data = network.send(CLIENT_PORT, tcp(ACK, payload=b"x"))
    assert data.ports == sorted([network.port(entry.profile.primary_cell), network.port(entry.profile.mirror_cells[0])]
                                if mode == MODE_FULL else [network.port(entry.profile.primary_cell)])  # fmt: skip
    fin = network.send(CLIENT_PORT, tcp(FIN | ACK))
    assert network.port(entry.profile.mirror_cells[0]) in fin.ports
    counters = network.director.counters
    assert (counters.milestones, counters.redecisions, counters.promotions, counters.entries_moved) == (1, 1, 1, 2)


def test_promotion_sends_assign_with_mode_then_a_per_flow_seed_and_waits_for_seeded():
    network = Network(replication_factor=0)
    network.director.policy = Promoting(network.ring, promote(MODE_STATE))
    network.learn_hosts()
    syn = tcp(SYN)
    network.send(CLIENT_PORT, syn)
    tick_messages(network)  # the birth's assign
    milestone(network, syn)
    entry = network.director.flows.get(flow_id(syn))
    primary, mirror = entry.profile.primary_cell, entry.profile.mirror_cells[0]
    assert network.director.flow_seed_targets(entry.flow_id) == [mirror]
    messages = tick_messages(network)
    kinds = [(m.cell_id, m.type) for m in messages if m.type != "profiles"]
    assigns = [m for m in messages if m.type == "assign"]
    assert {m.cell_id for m in assigns} == {primary, mirror}
    assert all(m.message["flows"] == [[entry.flow_id, entry.group_id, str(entry.key), MODE_STATE]] for m in assigns)
    seeds = [m for m in messages if m.type == "seed"]
    assert [(m.cell_id, m.message) for m in seeds] == [
        (primary, {"type": "seed", "profile_id": entry.group_id, "target": mirror, "flows": [entry.flow_id]})
    ]
    assert kinds.index((primary, "seed")) > kinds.index((primary, "assign")), "the primary knows the flow first"
    network.now += 1.5
    retry = [m for m in tick_messages(network) if m.type == "seed"]
    assert [m.message for m in retry] == [seeds[0].message]
    assert network.director.on_seeded(primary, entry.group_id, mirror, network.now, [entry.flow_id + 1]) == []
    assert network.director.counters.stale_seeded == 1
    network.director.on_seeded(primary, entry.group_id, mirror, network.now, [entry.flow_id])
    assert network.director.flow_seed_targets(entry.flow_id) == []
    counters = network.director.counters
    assert (counters.flow_seeds_sent, counters.flow_seeds_retried, counters.flow_seeds_confirmed) == (1, 1, 1)
    network.now += 1.5
    assert [m for m in tick_messages(network) if m.type == "seed"] == []


@pytest.mark.parametrize("seeded", [False, True])
def test_a_failover_before_the_seed_completes_loses_the_promoted_flow(seeded):
    network = Network(replication_factor=0)
    network.director.policy = Promoting(network.ring, promote(MODE_STATE))
    network.learn_hosts()
    syn = tcp(SYN)
    network.send(CLIENT_PORT, syn)
    milestone(network, syn)
    entry = network.director.flows.get(flow_id(syn))
    primary, mirror = entry.profile.primary_cell, entry.profile.mirror_cells[0]
    seed = [m for m in tick_messages(network) if m.type == "seed"][0]
    if seeded:
        network.director.on_seeded(primary, seed.message["profile_id"], mirror, network.now, seed.message["flows"])
    changes, _ = split_decisions(network.director.on_cell_down(primary, "process", network.now))
    network.apply(changes)
    assert network.director.flows.get(entry.flow_id).profile.primary_cell == mirror
    assert network.director.counters.state_lost_flows == (0 if seeded else 1)
    assert network.director.last_failover.state_lost_flows == (0 if seeded else 1)


def test_demotion_and_mode_change_move_entries_without_a_seed():
    network = Network(replication_factor=1)
    answers = iter([
        lambda current, live: (current, MODE_STATE),  # same profile, new mode
        lambda current, live: (MirroringProfile.of(current.primary_cell), MODE_FULL),  # demotion
    ])  # fmt: skip
    network.director.policy = Promoting(network.ring, lambda current, live: next(answers)(current, live))
    network.director.policy.base = FixedPolicy(network.ring, 1)
    network.learn_hosts()
    syn = tcp(SYN)
    network.send(CLIENT_PORT, syn)
    group_id = network.director.flows.get(flow_id(syn)).group_id
    mirror_port = network.port(network.profile_of(syn).mirror_cells[0])
    tick_messages(network)
    milestone(network, syn)
    entry = network.director.flows.get(flow_id(syn))
    assert (entry.mode, entry.group_id) == (MODE_STATE, group_id)
    assert len(network.switch.flows(TABLE_PROFILE)) == STATE_ENTRIES_PER_PROFILE
    assert mirror_port not in network.send(CLIENT_PORT, tcp(ACK, payload=b"x")).ports
    assert mirror_port in network.send(CLIENT_PORT, tcp(FIN | ACK)).ports
    messages = tick_messages(network)
    assert [m.type for m in messages if m.type in ("seed", "assign")] == ["assign", "assign"]
    milestone(network, syn, age_s=2.0)
    entry = network.director.flows.get(flow_id(syn))
    assert entry.profile.replication_factor == 0 and entry.group_id != group_id
    assert network.switch.flows(TABLE_PROFILE) == [] and group_id not in network.switch.groups
    assert mirror_port not in network.send(CLIENT_PORT, tcp(FIN | ACK)).ports
    counters = network.director.counters
    assert (counters.mode_changes, counters.demotions, counters.promotions) == (2, 1, 0)
    assert [m.type for m in tick_messages(network) if m.type == "seed"] == []


def test_refused_re_decisions_are_counted_and_change_nothing():
    network = Network(replication_factor=0)
    policy = network.director.policy = Promoting(network.ring)
    network.learn_hosts()
    syn = tcp(SYN)
    network.send(CLIENT_PORT, syn)
    entry = network.director.flows.get(flow_id(syn))
    other = next(c for c in network.director.live_cells if c != entry.profile.primary_cell)
    dump = network.switch.dump()
    answers = [
        lambda current, live: (MirroringProfile.of(other), MODE_STATE),  # moves the primary
        lambda current, live: (current, "bogus"),
        lambda current, live: "nonsense",
        lambda current, live: 1 / 0,
    ]
    for answer in answers:
        policy.answer = answer
        milestone(network, syn)
    assert milestone(network, syn, cell=other) == []  # not the primary: the policy is not asked
    assert network.director.on_milestone(entry.profile.primary_cell, [(12345, 0.5, 1, 1)], network.now) == []
    assert network.switch.dump() == dump and len(policy.calls) == len(answers)
    refused = network.director.counters.redecisions_refused
    assert sum(refused.values()) == len(answers) + 2


def test_a_flow_ending_before_its_seed_cancels_it():
    network = Network(replication_factor=0)
    network.director.policy = Promoting(network.ring, promote(MODE_STATE))
    network.learn_hosts()
    network.send(CLIENT_PORT, udp())
    milestone(network, udp())
    network.advance(IDLE_TIMEOUT + 1)
    assert network.director.flows.get(flow_id(udp())) is None
    assert [m for m in tick_messages(network) if m.type == "seed"] == []
    assert network.switch.groups == {}


def test_a_flow_whose_primary_is_draining_is_not_moved():
    network = Network(replication_factor=0)
    network.director.policy = Promoting(network.ring, promote(MODE_STATE))
    network.learn_hosts()
    network.send(CLIENT_PORT, udp())
    entry = network.director.flows.get(flow_id(udp()))
    network.apply(split_decisions(network.director.drain_cell(entry.profile.primary_cell, network.now))[0])
    draining = network.director.flows.get(entry.flow_id).profile
    assert draining.primary_cell == entry.profile.primary_cell, "it waits for its new mirror's seed"
    assert milestone(network, udp()) == []
    assert network.director.counters.promotions == 0
    assert network.director.flows.get(entry.flow_id).profile == draining


def test_a_second_promotion_before_the_first_seed_keeps_waiting_for_it():
    network = Network(replication_factor=0)
    policy = network.director.policy = Promoting(network.ring, promote(MODE_STATE, mirrors=1))
    network.learn_hosts()
    network.send(CLIENT_PORT, udp())
    milestone(network, udp())
    first_mirror = network.profile_of(udp()).mirror_cells[0]
    policy.answer = promote(MODE_STATE, mirrors=2)
    milestone(network, udp(), age_s=2.0)
    entry = network.director.flows.get(flow_id(udp()))
    assert entry.profile.replication_factor == 2
    assert network.director.flow_seed_targets(entry.flow_id) == sorted(entry.profile.mirror_cells)
    seeds = [m for m in tick_messages(network) if m.type == "seed"]
    assert sorted(m.message["target"] for m in seeds) == sorted(entry.profile.mirror_cells)
    assert all(m.message["profile_id"] == entry.group_id for m in seeds) and first_mirror in entry.profile.mirror_cells


def test_a_state_flow_whose_direction_idled_out_is_reinstalled_on_its_path():
    """A direction's FSC entry expired while the other lives: the packet-in reinstalls it in state mode and
    sends the packet as the entry would (data to the primary only, a FIN to the mirrors too)."""
    network = ModeNetwork()
    network.learn_hosts()
    syn = tcp(SYN)
    network.send(CLIENT_PORT, syn)
    network.send(SERVER_PORT, tcp(SYN | ACK, forward=False))
    reply_entry = [e for e in network.switch.flows(TABLE_FSC) if e.cookie == flow_id(syn)
                   and e.match.get("ipv4_src") == SERVER_IP]  # fmt: skip
    assert len(reply_entry) == 1
    network.apply([FlowMod(Command.DELETE, TABLE_FSC, Match.of(**reply_entry[0].match), cookie=flow_id(syn),
                           cookie_mask=0xFFFF_FFFF_FFFF_FFFF)])  # fmt: skip
    data = network.send(SERVER_PORT, tcp(ACK, forward=False, payload=b"late"))
    assert data.ports == [network.primary_port(syn)]
    assert network.director.counters.directions_reinstalled == 1
    assert network.mirrored(network.send(SERVER_PORT, tcp(FIN | ACK, forward=False)), syn)
