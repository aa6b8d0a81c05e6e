"""A new master takes over a switch that keeps forwarding: adopt its groups and flows, touch nothing live."""

from __future__ import annotations

from testkit.fakeswitch import FakeSwitch
from prism.director.core import MirroringDirector
from prism.openflow.changes import FF_GROUP_OFFSET, GroupAction, GroupType, Output
from prism.policy.base import FixedPolicy
from prism.cluster.shared_state import SwitchShared
from prism.cluster.takeover import GROUP_ALL, GROUP_FAST_FAILOVER, SwitchBucket, SwitchFlow, SwitchGroup, plan_takeover
from tests.unit.test_director import CLIENT_PORT, IDLE_TIMEOUT, Network, expected_profile, flow_id, udp


def switch_report(switch: FakeSwitch):
    """The switch's groups and flows as a group-desc / flow-stats reply would give them."""
    kinds = {GroupType.ALL: GROUP_ALL, GroupType.FAST_FAILOVER: GROUP_FAST_FAILOVER}
    groups = [
        SwitchGroup(group_id, kinds[entry.group_type], tuple(
            SwitchBucket(bucket.watch_port,
                         tuple(a.port for a in bucket.actions if isinstance(a, Output)),
                         tuple(a.group_id for a in bucket.actions if isinstance(a, GroupAction)))
            for bucket in entry.buckets))
        for group_id, entry in switch.groups.items()
    ]  # fmt: skip
    flows = [SwitchFlow(e.table_id, e.cookie, dict(e.match), tuple(e.group_ids()), e.goto_table,
                        e.write_metadata[0] if e.write_metadata else None) for e in switch.flows()]  # fmt: skip
    return groups, flows


def take_over(network: Network, shared: SwitchShared = SwitchShared(), policy=None):
    """A second controller's director adopts the switch; returns what it sent."""
    new = MirroringDirector(network.config, IDLE_TIMEOUT, policy or FixedPolicy(network.ring, 2))
    groups, flows = switch_report(network.switch)
    cell_of_port = {port: cell for cell, port in network.config.cell_ports.items()}
    plan = plan_takeover(cell_of_port, groups, flows, shared)
    changes = new.adopt(network.now, plan, shared.down, shared.draining)
    network.director = new
    return plan, changes


def test_the_new_master_adopts_every_group_and_flow_and_sends_nothing():
    network = Network()
    network.learn_hosts()
    packets = [udp(sport=40000 + i) for i in range(20)]
    for packet in packets:
        network.send(CLIENT_PORT, packet)
    old_groups = dict(network.director.groups)
    plan, changes = take_over(network)
    assert changes == []
    assert plan.has_pipeline and plan.duplicate_profiles == 0 and not plan.orphan_groups
    assert {g: (v.profile, v.refcount) for g, v in network.director.groups.items()} == {
        g: (v.profile, v.refcount) for g, v in old_groups.items()
    }
    assert len(network.director.flows) == len(packets)
    # established flows keep flowing without the controller; a new flow of an adopted profile reuses its group
    before = len(network.switch.groups)
    result = network.send(CLIENT_PORT, packets[0])
    assert result.ports  # the strict fake switch refuses a group ADD over an adopted id
    fresh = udp(sport=50000)
    network.send(CLIENT_PORT, fresh)
    assert network.profile_of(fresh) == expected_profile(network, fresh)
    profiles = [g.profile for g in network.director.groups.values()]
    assert len(profiles) == len(set(profiles))
    assert len(network.switch.groups) >= before


def test_established_flows_cause_no_packet_in_after_the_takeover():
    network = Network()
    network.learn_hosts()
    packet = udp()
    network.send(CLIENT_PORT, packet)
    take_over(network)
    result = network.switch.process(CLIENT_PORT, packet, now=network.now)
    assert result.packet_ins == [] and result.outputs


def test_groups_whose_flows_ended_without_a_master_are_deleted():
    network = Network()
    network.learn_hosts()
    packet = udp()
    network.send(CLIENT_PORT, packet)
    group_id = network.director.flows.get(flow_id(packet)).group_id
    network.switch.expire(network.now + IDLE_TIMEOUT + 1)  # the flow-removed reached no one
    plan, changes = take_over(network)
    assert plan.orphan_groups == (group_id,)
    network.apply(changes)
    assert group_id not in network.switch.groups and group_id + FF_GROUP_OFFSET not in network.switch.groups
    assert len(network.director.groups) == 0


def test_cell_verdicts_from_etcd_keep_a_dead_cell_out_of_new_flows():
    network = Network()
    network.learn_hosts()
    plan, changes = take_over(network, SwitchShared(down=frozenset({"c1"})))
    assert "c1" not in network.director.live_cells and "c1" in network.director.down_cells


def test_a_fresh_switch_converges_from_scratch():
    network = Network()
    network.switch = FakeSwitch()
    plan, changes = take_over(network)
    assert not plan.has_pipeline
    assert changes[0].table_id is None  # the delete-everything of on_switch_connect


def test_a_mirror_still_waiting_for_its_seed_is_asked_for_again_by_the_new_master():
    from prism.cluster.shared_state import SharedGroup

    network = Network()
    network.learn_hosts()
    packet = udp()
    network.send(CLIENT_PORT, packet)
    group = next(iter(network.director.groups.values()))
    waiting = group.profile.mirror_cells[0]
    shared = SwitchShared(groups={group.group_id: SharedGroup(group.profile, 2, (waiting,))})
    plan, changes = take_over(network, shared)
    assert plan.pending == {group.group_id: (waiting,)}
    assert network.director.groups[group.group_id].pending_mirrors == (waiting,)
    seeds = [m for m in network.director.tick(network.now) if m.type == "seed"]
    assert [(m.cell_id, m.message["target"]) for m in seeds] == [(group.profile.primary_cell, waiting)]


def test_state_mode_flows_are_adopted_with_their_mode_and_their_profile_entries():
    """Issue 8's state mode: a TCP flow's FSC entries go to TABLE_PROFILE by metadata, a UDP flow's to the FF group."""
    from prism.openflow.changes import TABLE_PROFILE
    from prism.placement.profiles import MODE_STATE
    from tests.unit.test_director_modes import ACK, PSH, SYN, ModeNetwork, tcp

    network = ModeNetwork(replication_factor=1, mode=MODE_STATE)
    network.learn_hosts()
    syn, query = tcp(SYN), udp(sport=40001)
    network.send(CLIENT_PORT, syn)
    network.send(CLIENT_PORT, query)
    profile_entries = [e for e in network.switch.flows() if e.table_id == TABLE_PROFILE]
    assert profile_entries
    plan, changes = take_over(network, policy=FixedPolicy(network.ring, 1, MODE_STATE))
    assert changes == [] and plan.unreadable_flows == 0 and not plan.orphan_groups
    assert {mode for _key, _forward, _group, mode in plan.flows} == {MODE_STATE}
    assert len(plan.flows) == 4  # both directions of both flows
    director = network.director
    for packet in (syn, query):
        entry = director.flows.get(flow_id(packet))
        installed = director._groups.get(entry.group_id).state_entries  # noqa: SLF001 - not in the snapshot
        assert entry.mode == MODE_STATE and installed == (entry.group_id in plan.state_entries)
    tcp_group = director.flows.get(flow_id(syn)).group_id
    assert tcp_group in plan.state_entries
    # the adopted flow goes on as before (its data to the primary only), and the switch's entries stay
    result = network.send(CLIENT_PORT, tcp(ACK | PSH, payload=b"data"))
    assert len(result.ports) == 1
    assert [e for e in network.switch.flows() if e.table_id == TABLE_PROFILE] == profile_entries
