"""Mastership from leases: who is master of which switch, spreading, takeover, rejoin, etcd away."""

from __future__ import annotations

import pytest

from prism.cluster.mastership import ROLE_MASTER, ROLE_SLAVE, Beat, Mastership, Membership, master_of, switch_key
from prism.cluster.shared_state import (
    Publisher,
    SharedGroup,
    SharedStateError,
    beats_from,
    claims_from,
    controller_key,
    decode_group,
    encode_beat,
    encode_claim,
    encode_group,
    claim_key,
    switch_state_from,
    switch_state_values,
)
from prism.placement.profiles import MirroringProfile

LEASE = 0.75
SWITCHES = tuple(range(1, 7))


def beats(revision, *controllers, switches=SWITCHES):
    return {c: Beat(revision, frozenset(switches)) for c in controllers}


def test_switch_key_is_stable_and_switches_spread_over_controllers():
    assert switch_key(1) == switch_key(1) != switch_key(2)
    owners = [master_of(dp, ["a", "b", "c"]) for dp in range(1, 301)]
    assert {o: owners.count(o) for o in set(owners)}.keys() == {"a", "b", "c"}
    assert max(owners.count(o) for o in "abc") < 1.3 * 100
    # minimal disruption: removing c moves only c's switches
    after = [master_of(dp, ["a", "b"]) for dp in range(1, 301)]
    assert all(before == now for before, now in zip(owners, after) if before != "c")


def test_membership_declares_a_silent_controller_dead_after_the_lease():
    members = Membership(LEASE)
    members.observe(0.0, {"a": Beat(1), "b": Beat(2)})
    members.observe(0.5, {"a": Beat(3), "b": Beat(2)})  # b did not renew
    assert set(members.live(0.7)) == {"a", "b"}
    assert set(members.live(0.76)) == {"a"}
    members.observe(0.8, {"a": Beat(4)})  # b's key gone (etcd's lease expired)
    assert set(members.live(0.8)) == {"a"}


def test_each_switch_gets_exactly_one_master_and_the_standby_takes_over_within_the_lease():
    a, b = Mastership("a", SWITCHES, LEASE), Mastership("b", SWITCHES, LEASE)
    for m in (a, b):
        m.renewed(0.0)
    changes_a = a.decide(0.0, beats(1, "a", "b"), SWITCHES)
    changes_b = b.decide(0.0, beats(1, "a", "b"), SWITCHES)
    masters_a = {c.dp_id for c in changes_a if c.role == ROLE_MASTER}
    masters_b = {c.dp_id for c in changes_b if c.role == ROLE_MASTER}
    assert masters_a | masters_b == set(SWITCHES) and not masters_a & masters_b
    assert masters_a and masters_b  # spread
    for m, changes in ((a, changes_a), (b, changes_b)):
        for change in changes:
            m.set_role(change.dp_id, change.role)
    assert b.decide(0.1, beats(1, "a", "b"), SWITCHES) == []  # nothing new while both renew
    # a is killed: its revision stops changing; b renews
    b.renewed(0.5)
    assert b.decide(0.5, {**beats(1, "a"), **beats(5, "b")}, SWITCHES) == []
    b.renewed(0.8)
    taken = b.decide(0.8, {**beats(1, "a"), **beats(7, "b")}, SWITCHES)
    assert {c.dp_id for c in taken} == masters_a and {c.role for c in taken} == {ROLE_MASTER}
    # asked once: not asked again while the request is in flight
    assert b.decide(0.85, {**beats(1, "a"), **beats(8, "b")}, SWITCHES) == []


def test_a_controller_that_rejoins_takes_back_only_its_switches():
    b = Mastership("b", SWITCHES, LEASE)
    b.renewed(0.0)
    for change in b.decide(0.0, beats(1, "b"), SWITCHES):
        b.set_role(change.dp_id, change.role)
    assert all(b.is_master(dp) for dp in SWITCHES)
    b.renewed(1.0)
    handed = b.decide(1.0, {**beats(2, "b"), **beats(3, "a")}, SWITCHES)
    assert len(handed) == len(SWITCHES) // 2  # the bounded share of the controller that came back
    assert {c.role for c in handed} == {ROLE_SLAVE}


def test_a_rejoining_controller_not_yet_connected_to_a_switch_is_not_its_master():
    b = Mastership("b", SWITCHES, LEASE)
    b.renewed(0.0)
    for change in b.decide(0.0, {**beats(1, "b"), **beats(2, "a", switches=())}, SWITCHES):
        b.set_role(change.dp_id, change.role)
    assert all(b.is_master(dp) for dp in SWITCHES)


def test_without_its_own_renewal_a_controller_keeps_its_roles_and_claims_nothing():
    a = Mastership("a", SWITCHES, LEASE)
    a.renewed(0.0)
    for change in a.decide(0.0, beats(1, "a"), SWITCHES):
        a.set_role(change.dp_id, change.role)
    # etcd unreachable: nothing renewed, nothing read; roles stay
    assert a.decide(5.0, beats(1, "a", "b"), SWITCHES) == []
    assert all(a.is_master(dp) for dp in SWITCHES)


def test_shared_state_round_trips_and_rejects_foreign_values():
    profile = MirroringProfile.of("cell1", "cell2")
    assert decode_group(encode_group(profile, 2)) == SharedGroup(profile, 2)
    assert decode_group(encode_group(profile, 1, ["cell2"])).pending == ("cell2",)
    with pytest.raises(SharedStateError):
        decode_group('{"cells": ["a", "b"], "target_rf": 1, "pending": ["c"]}')
    with pytest.raises(SharedStateError):
        decode_group('{"cells": ["x", "x"], "target_rf": 1}')
    with pytest.raises(SharedStateError):
        decode_group("not json")
    values = switch_state_values("t", 1, [(0x10000, profile, 1, ())], ["cell3"], [])
    state = switch_state_from({k: (v, 9) for k, v in values.items()}, "t", 1)
    assert state.groups == {0x10000: SharedGroup(profile, 1)} and state.down == {"cell3"} and not state.unreadable
    read = {controller_key("t", "a"): (encode_beat([2, 1]), 4), controller_key("t", "b"): ("{", 5)}
    assert beats_from(read, "t") == {"a": Beat(4, frozenset({1, 2}))}
    assert claims_from({claim_key("t", 3): (encode_claim("a"), 12)}, "t") == {3: ("a", 12)}


def test_publisher_sends_only_differences():
    publisher = Publisher()
    puts, deletes = publisher.changes({"k1": "v1", "k2": "v2"})
    assert puts == {"k1": "v1", "k2": "v2"} and deletes == []
    publisher.written(puts, deletes)
    assert publisher.changes({"k1": "v1", "k2": "v2"}) == ({}, [])
    puts, deletes = publisher.changes({"k1": "v9"})
    assert puts == {"k1": "v9"} and deletes == ["k2"]


def test_bounded_load_gives_every_controller_its_share_of_few_switches():
    from prism.cluster.mastership import assign_masters

    for switches in (3, 4, 6, 9):
        masters = assign_masters({dp: ["a", "b", "c"] for dp in range(1, switches + 1)})
        counts = [list(masters.values()).count(c) for c in "abc"]
        assert max(counts) - min(counts) <= 1, (switches, counts)
    # a switch connected to one controller only goes to it, whatever the bound
    masters = assign_masters({1: ["a"], 2: ["a"], 3: ["a", "b"]})
    assert masters[1] == masters[2] == "a"
