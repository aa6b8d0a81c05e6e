"""The fake switch obeys the OpenFlow 1.3 rules the director's tests rely on."""

from __future__ import annotations

import pytest

from testkit import oxm
from testkit.fakeswitch import (
    REASON_ACTION,
    REASON_NO_MATCH,
    REMOVED_DELETE,
    REMOVED_GROUP_DELETE,
    REMOVED_IDLE,
    FakeSwitch,
    FakeSwitchError,
)
from prism.openflow.changes import (
    MIRROR_MAC,
    OFPG_ALL,
    OFPG_ANY,
    OFPP_CONTROLLER,
    OFPP_IN_PORT,
    Barrier,
    Bucket,
    Command,
    FlowMod,
    GroupAction,
    GroupMod,
    GroupType,
    Match,
    Output,
    PacketOut,
    SetField,
)

MAC_A = "02:00:00:00:00:0a"
MAC_B = "02:00:00:00:00:0b"
UDP = oxm.udp_packet(MAC_A, MAC_B, "10.0.0.1", "10.0.0.2", 1000, 53, b"query")


def add(table_id, priority=0, actions=(), goto=None, cookie=0, idle=0, notify=False, **match):
    """A FlowMod ADD."""
    return FlowMod(
        Command.ADD, table_id, Match.of(**match), priority, tuple(actions), goto, cookie,
        idle_timeout=idle, send_flow_removed=notify,
    )  # fmt: skip


def group(group_id, group_type, *buckets, command=Command.ADD):
    """A GroupMod."""
    return GroupMod(command, group_type, group_id, tuple(buckets))


def test_highest_priority_matching_entry_wins_and_missing_fields_are_wildcards():
    switch = FakeSwitch()
    switch.apply([add(0, 10, [Output(1)]), add(0, 20, [Output(2)], in_port=5, eth_type=0x0800)])
    assert switch.process(5, UDP).ports == [2]
    assert switch.process(6, UDP).ports == [1]


def test_no_matching_entry_drops_the_packet():
    switch = FakeSwitch()
    switch.apply([add(0, 10, [Output(1)], eth_type=0x86DD)])
    result = switch.process(5, UDP)
    assert result.outputs == [] and result.packet_ins == []


def test_a_packet_without_a_field_does_not_match_a_value_for_it():
    switch = FakeSwitch()
    switch.apply([add(0, 10, [Output(1)], eth_type=0x0800, ip_proto=6, tcp_dst=53)])
    assert switch.process(5, UDP).outputs == []


def test_match_values_compare_in_canonical_form():
    switch = FakeSwitch()
    switch.apply(
        [add(0, 10, [Output(1)], eth_type=0x86DD, ipv6_src="2001:0DB8:0::1", eth_src="02:00:00:00:00:0A")]
    )
    packet = oxm.udp_packet(MAC_A, MAC_B, "2001:db8::1", "2001:db8::2", 1, 2)
    assert switch.process(5, packet).ports == [1]


@pytest.mark.parametrize(
    "match",
    [
        {"ipv4_src": "10.0.0.1"},
        {"eth_type": 0x86DD, "ipv4_src": "10.0.0.1"},
        {"eth_type": 0x0800, "udp_dst": 53},
        {"eth_type": 0x0800, "ip_proto": 6, "udp_dst": 53},
        {"arp_op": 1},
    ],
)
def test_a_match_without_its_prerequisites_is_refused(match):
    with pytest.raises(FakeSwitchError) as refused:
        FakeSwitch().apply([add(0, 10, [Output(1)], **match)])
    assert refused.value.code == "OFPBMC_BAD_PREREQ"


def test_goto_table_continues_and_apply_actions_rewrite_the_packet_in_place():
    switch = FakeSwitch()
    switch.apply(
        [
            add(0, 10, [SetField("eth_dst", MIRROR_MAC), Output(1)], goto=2),
            add(2, 10, [Output(2)], eth_dst=MIRROR_MAC),
        ]
    )
    result = switch.process(5, UDP)
    assert result.ports == [1, 2]
    assert all(p["eth_dst"] == MIRROR_MAC for _, p in result.outputs)


def test_goto_an_earlier_or_the_same_table_is_refused():
    with pytest.raises(FakeSwitchError) as refused:
        FakeSwitch().apply([add(1, 10, goto=1)])
    assert refused.value.code == "OFPBIC_BAD_TABLE_ID"


def test_output_to_controller_is_a_packet_in_whose_reason_depends_on_the_entry():
    switch = FakeSwitch()
    switch.apply(
        [add(0, 0, [Output(OFPP_CONTROLLER)], cookie=7), add(0, 10, [Output(OFPP_CONTROLLER)], in_port=9)]
    )
    (miss,) = switch.process(5, UDP).packet_ins
    assert (miss.in_port, miss.table_id, miss.reason, miss.cookie) == (5, 0, REASON_NO_MATCH, 7)
    assert oxm.from_frame(miss.data) == oxm.from_frame(oxm.to_frame(UDP))
    assert switch.process(9, UDP).packet_ins[0].reason == REASON_ACTION


def test_output_to_the_ingress_port_needs_in_port():
    switch = FakeSwitch()
    switch.apply([add(0, 10, [Output(5)], in_port=5), add(0, 10, [Output(OFPP_IN_PORT)], in_port=6)])
    assert switch.process(5, UDP).outputs == []
    assert switch.process(6, UDP).ports == [6]


def test_add_with_the_same_match_and_priority_replaces_and_keeps_counters():
    switch = FakeSwitch()
    switch.apply([add(0, 10, [Output(1)], eth_type=0x0800)])
    switch.process(5, UDP)
    switch.apply([add(0, 10, [Output(2)], eth_type=0x0800)])
    assert len(switch.flows(0)) == 1
    assert switch.process(5, UDP).ports == [2]
    assert switch.flows(0)[0].packet_count == 2


def test_delete_is_non_strict_and_filters_by_cookie_mask():
    switch = FakeSwitch()
    switch.apply(
        [
            add(0, 10, [Output(1)], cookie=0x11, notify=True, eth_type=0x0800, in_port=1),
            add(0, 20, [Output(1)], cookie=0x12, eth_type=0x0800, in_port=2),
            add(1, 10, [Output(1)], cookie=0x21, eth_type=0x86DD),
        ]
    )
    result = switch.apply(
        [FlowMod(Command.DELETE, None, Match.of(eth_type=0x0800), cookie=0x10, cookie_mask=0xF0)]
    )
    assert [e.cookie for e in switch.flows()] == [0x21]
    assert [(r.cookie, r.reason) for r in result.flow_removed] == [(0x11, REMOVED_DELETE)]
    switch.apply([FlowMod(Command.DELETE, None)])
    assert switch.flows() == []


def test_group_all_sends_each_bucket_its_own_copy():
    switch = FakeSwitch()
    switch.apply(
        [
            group(
                1, GroupType.ALL, Bucket((Output(1),)), Bucket((SetField("eth_dst", MIRROR_MAC), Output(2)))
            ),
            add(0, 10, [GroupAction(1), Output(3)]),
        ]
    )
    result = switch.process(5, UDP)
    assert result.to_port(1)[0]["eth_dst"] == MAC_B
    assert result.to_port(2)[0]["eth_dst"] == MIRROR_MAC
    assert result.to_port(3)[0]["eth_dst"] == MAC_B, "a group works on a copy"
    assert switch.groups[1].packet_count == 1 and switch.groups[1].bucket_packets == [1, 1]


def test_fast_failover_uses_the_first_bucket_with_a_live_watch_port():
    switch = FakeSwitch()
    switch.apply(
        [
            group(1, GroupType.FAST_FAILOVER, Bucket((Output(1),), 1), Bucket((Output(2),), 2)),
            add(0, 10, [GroupAction(1)]),
        ]
    )
    assert switch.process(5, UDP).ports == [1]
    switch.set_port_live(1, False)
    assert switch.process(5, UDP).ports == [2]
    switch.set_port_live(2, False)
    assert switch.process(5, UDP).ports == []
    switch.set_port_live(1, True)
    assert switch.process(5, UDP).ports == [1]
    assert switch.groups[1].bucket_packets == [2, 1]


def test_output_to_a_dead_port_is_lost():
    switch = FakeSwitch()
    switch.apply([add(0, 10, [Output(1), Output(2)])])
    switch.set_port_live(2, False)
    assert switch.process(5, UDP).ports == [1]
    assert switch.lost_on_dead_port == 1


def test_a_bucket_may_apply_another_group():
    switch = FakeSwitch()
    switch.apply(
        [
            group(2, GroupType.FAST_FAILOVER, Bucket((Output(1),), 1), Bucket((Output(2),), 2)),
            group(
                1,
                GroupType.ALL,
                Bucket((GroupAction(2),)),
                Bucket((SetField("eth_dst", MIRROR_MAC), Output(2))),
            ),
            add(0, 10, [GroupAction(1)]),
        ]
    )
    switch.set_port_live(1, False)
    result = switch.process(5, UDP)
    assert sorted(p["eth_dst"] for p in result.to_port(2)) == sorted([MAC_B, MIRROR_MAC])


def test_group_loops_are_refused():
    switch = FakeSwitch()
    switch.apply(
        [group(1, GroupType.ALL, Bucket((Output(1),))), group(2, GroupType.ALL, Bucket((GroupAction(1),)))]
    )
    with pytest.raises(FakeSwitchError) as refused:
        switch.apply([group(1, GroupType.ALL, Bucket((GroupAction(2),)), command=Command.MODIFY)])
    assert refused.value.code == "OFPGMFC_LOOP"
    assert switch.groups[1].buckets == (Bucket((Output(1),)),), "a refused modify leaves the group as it was"


@pytest.mark.parametrize(
    "changes, code",
    [
        ([group(1, GroupType.ALL), group(1, GroupType.ALL)], "OFPGMFC_GROUP_EXISTS"),
        ([group(1, GroupType.ALL, command=Command.MODIFY)], "OFPGMFC_UNKNOWN_GROUP"),
        ([add(0, 10, [GroupAction(9)])], "OFPBAC_BAD_OUT_GROUP"),
        ([group(1, GroupType.ALL, Bucket((GroupAction(9),)))], "OFPBAC_BAD_OUT_GROUP"),
        ([group(1, GroupType.FAST_FAILOVER, Bucket((Output(1),)))], "OFPGMFC_BAD_WATCH"),
        (
            [
                group(2, GroupType.ALL),
                group(1, GroupType.ALL, Bucket((GroupAction(2),))),
                group(2, GroupType.ALL, command=Command.DELETE),
            ],
            "OFPGMFC_CHAINED_GROUP",
        ),
        ([add(0, 10, [Output(0xFFFFFFF9)])], "OFPBAC_BAD_OUT_PORT"),
        ([add(0, 10, [SetField("in_port", 3)])], "OFPBAC_BAD_SET_TYPE"),
    ],
)
def test_refused_changes_carry_the_openflow_error_code(changes, code):
    with pytest.raises(FakeSwitchError) as refused:
        FakeSwitch().apply(changes)
    assert refused.value.code == code


def test_a_non_strict_switch_records_the_error_and_applies_the_rest():
    switch = FakeSwitch(strict=False)
    switch.apply([add(0, 10, [GroupAction(9)]), add(0, 20, [Output(1)])])
    assert [e.code for e in switch.errors] == ["OFPBAC_BAD_OUT_GROUP"]
    assert [e.priority for e in switch.flows()] == [20]


def test_deleting_a_group_removes_the_flows_that_use_it():
    switch = FakeSwitch()
    switch.apply(
        [
            group(1, GroupType.ALL, Bucket((Output(1),))),
            group(2, GroupType.ALL, Bucket((Output(2),))),
            add(1, 10, [GroupAction(1)], cookie=1, notify=True, in_port=1),
            add(1, 10, [GroupAction(2)], cookie=2, notify=True, in_port=2),
            add(0, 0, [Output(3)]),
        ]
    )
    result = switch.apply([group(1, GroupType.ALL, command=Command.DELETE)])
    assert [(r.cookie, r.reason) for r in result.flow_removed] == [(1, REMOVED_GROUP_DELETE)]
    assert sorted(e.cookie for e in switch.flows()) == [0, 2]
    switch.apply([group(OFPG_ANY, GroupType.ALL, command=Command.DELETE)])
    assert switch.groups != {}, "OFPG_ANY is no group: OVS deletes nothing"
    switch.apply([group(OFPG_ALL, GroupType.ALL, command=Command.DELETE)])
    assert switch.groups == {} and [e.cookie for e in switch.flows()] == [0]


def test_deleting_a_missing_group_is_harmless():
    switch = FakeSwitch(strict=False)
    switch.apply([group(1, GroupType.ALL, Bucket((Output(1),))), add(0, 10, [GroupAction(1)], notify=True)])
    before = switch.dump()
    result = switch.apply([group(5, GroupType.ALL, command=Command.DELETE)])
    assert switch.errors == [], "OpenFlow 1.3: deleting a group that does not exist is no error"
    assert result.flow_removed == [] and switch.dump() == before


def test_idle_entries_expire_with_a_flow_removed_report_when_asked():
    switch = FakeSwitch()
    switch.apply(
        [
            add(0, 10, [Output(1)], cookie=1, idle=10, notify=True, in_port=5),
            add(0, 10, [Output(1)], cookie=2, idle=10, in_port=6),
        ],
        now=100,
    )
    switch.process(5, UDP, now=105)
    switch.process(5, UDP, now=108)
    assert switch.expire(now=117) == []
    assert [e.cookie for e in switch.flows()] == [1], "entry 2 idle since 100: gone at 110, silently"
    (removed,) = switch.expire(now=118)
    assert (removed.cookie, removed.packets, removed.reason, removed.duration_s) == (1, 2, REMOVED_IDLE, 18)
    assert removed.bytes == 2 * len(oxm.to_frame(UDP))
    assert removed.match == {"in_port": 5}
    assert switch.flows() == []


def test_packet_out_runs_its_actions_from_the_given_in_port():
    switch = FakeSwitch()
    switch.apply([group(1, GroupType.ALL, Bucket((Output(1),)), Bucket((Output(2),)))])
    result = switch.apply([Barrier(), PacketOut(2, (GroupAction(1),), oxm.to_frame(UDP))])
    assert result.ports == [1], "the copy for the ingress port is dropped"
    assert result.to_port(1)[0]["udp_dst"] == 53
    assert switch.barriers == 1


def test_dump_is_independent_of_install_order_and_counters():
    changes = [
        add(0, 10, [Output(1)], in_port=1),
        add(0, 10, [Output(2)], in_port=2),
        group(1, GroupType.ALL),
    ]
    first, second = FakeSwitch(), FakeSwitch()
    first.apply(changes)
    second.apply(list(reversed(changes)))
    first.process(1, UDP)
    assert first.dump() == second.dump()


# --- metadata, masked matches, MODIFY_STRICT (state-mode pipeline) ------------------------------------
TCP_SYN = oxm.tcp_packet(MAC_A, MAC_B, "10.0.0.1", "10.0.0.2", 1000, 80, flags=0x02)
TCP_ACK = oxm.tcp_packet(MAC_A, MAC_B, "10.0.0.1", "10.0.0.2", 1000, 80, flags=0x10)


def _metadata_switch(value=0x10001, mask=0xFFFFFFFF):
    switch = FakeSwitch()
    switch.apply([
        FlowMod(Command.ADD, 0, Match.of(in_port=1), 100, write_metadata=(value, mask), goto_table=3),
        FlowMod(Command.ADD, 3, Match.of(metadata=(value, mask), eth_type=0x0800, ip_proto=6, tcp_flags=(2, 2)),
                300, (Output(7),)),
        FlowMod(Command.ADD, 3, Match.of(metadata=(value, mask)), 200, (Output(8),)),
        FlowMod(Command.ADD, 3, Match.of(), 0, (Output(9),)),
    ])  # fmt: skip
    return switch


def test_write_metadata_carries_to_the_next_table_and_tcp_flags_match_under_their_mask():
    switch = _metadata_switch()
    assert switch.process(1, TCP_SYN).ports == [7]
    assert switch.process(1, oxm.tcp_packet(MAC_A, MAC_B, "10.0.0.1", "10.0.0.2", 1000, 80, flags=0x12)).ports == [7]
    assert switch.process(1, TCP_ACK).ports == [8]
    assert switch.process(1, UDP).ports == [8], "no TCP header: never matches tcp_flags"
    assert "metadata" not in switch.process(1, UDP).outputs[0][1], "metadata never leaves the switch"
    other = _metadata_switch(value=0x10002)
    other.apply([FlowMod(Command.ADD, 3, Match.of(metadata=(0x10001, 0xFFFFFFFF)), 250, (Output(6),))])
    assert other.process(1, TCP_ACK).ports == [8], "another profile's metadata"
    assert FakeSwitch().process(1, TCP_ACK).ports == []


def test_masked_match_values_are_checked():
    switch = FakeSwitch()
    with pytest.raises(FakeSwitchError, match="OFPBMC_BAD_WILDCARDS"):
        switch.apply([FlowMod(Command.ADD, 3, Match.of(metadata=(0x3, 0x1)), 1, (Output(1),))])
    with pytest.raises(FakeSwitchError, match="OFPBMC_BAD_MASK"):
        switch.apply([FlowMod(Command.ADD, 3, Match.of(in_port=(1, 1)), 1, (Output(1),))])
    with pytest.raises(FakeSwitchError, match="OFPBMC_BAD_PREREQ"):
        switch.apply([FlowMod(Command.ADD, 3, Match.of(tcp_flags=(2, 2)), 1, (Output(1),))])
    with pytest.raises(FakeSwitchError, match="OFPBIC_UNSUP_METADATA"):
        switch.apply([FlowMod(Command.ADD, 0, Match.of(), 1, write_metadata=(0x3, 0x1), goto_table=3)])


def test_modify_strict_replaces_instructions_of_the_exact_entry_and_keeps_its_counters():
    switch = FakeSwitch()
    match = Match.of(in_port=1, eth_type=0x0800)
    switch.apply([
        FlowMod(Command.ADD, 0, match, 100, (Output(2),), cookie=5, idle_timeout=10),
        FlowMod(Command.ADD, 0, Match.of(in_port=1), 50, (Output(3),)),
    ])  # fmt: skip
    switch.process(1, UDP)
    switch.apply([
        FlowMod(Command.MODIFY_STRICT, 0, match, 100, (Output(4),), cookie=99, idle_timeout=1),
        FlowMod(Command.MODIFY_STRICT, 0, match, 101, (Output(5),)),  # no such priority: adds nothing
        FlowMod(Command.MODIFY_STRICT, 0, match, 100, (Output(6),), cookie=6, cookie_mask=0xFF),  # other cookie
    ])  # fmt: skip
    entry = switch.flows(0)[0]
    assert (entry.actions, entry.packet_count, entry.cookie, entry.idle_timeout) == ((Output(4),), 1, 5, 10)
    assert len(switch.flows(0)) == 2 and switch.flows(0)[1].actions == (Output(3),)
    assert switch.process(1, UDP).ports == [4]
