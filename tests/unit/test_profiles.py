"""Tests for prism.placement.profiles: MirroringProfile validation and the FlowStateCache."""

import dataclasses

import pytest

from prism.flows.identity import PROTO_TCP, PROTO_UDP, FlowKey, parse_frame
from testkit.packets import build_udp_frame
from prism.placement.profiles import FlowEntry, FlowStateCache, MirroringProfile

P12 = MirroringProfile.of("c1", "c2")
P123 = MirroringProfile.of("c1", "c2", "c3")
P3 = MirroringProfile.of("c3")


def key(port):
    return FlowKey.between(PROTO_TCP, "10.0.0.1", port, "10.0.0.2", 80)[0]


# --- MirroringProfile ------------------------------------------------------------
def test_profile_fields_and_cells():
    profile = MirroringProfile("c1", ("c2", "c3"), 2)
    assert profile == P123
    assert profile.cells == ("c1", "c2", "c3")
    assert MirroringProfile("c1").cells == ("c1",)
    assert MirroringProfile("c1").replication_factor == 0


def test_profile_is_frozen_and_hashable():
    with pytest.raises(dataclasses.FrozenInstanceError):
        P12.primary_cell = "c9"
    assert len({P12, MirroringProfile.of("c1", "c2"), P123}) == 2


def test_profile_list_mirrors_become_tuple():
    profile = MirroringProfile("c1", ["c2"], 1)
    assert profile.mirror_cells == ("c2",)
    assert hash(profile) == hash(P12)


def test_mirror_order_matters():
    assert MirroringProfile.of("c1", "c2", "c3") != MirroringProfile.of("c1", "c3", "c2")


@pytest.mark.parametrize(
    "args,message",
    [
        (("c1", ("c1",), 1), "primary cell 'c1' is also a mirror"),
        (("c1", ("c2", "c2"), 2), "duplicate mirror cells"),
        (("c1", ("c2",), 2), "replication_factor 2 does not match 1 mirror cells"),
        (("c1", ("c2",), 0), "replication_factor 0 does not match"),
        (("c1", ("c2",), True), "replication_factor True does not match"),
        (("", (), 0), "non-empty str"),
        (("c1", ("c2", 3), 2), "non-empty str"),
    ],
)
def test_profile_validation(args, message):
    with pytest.raises(ValueError, match=message):
        MirroringProfile(*args)


def test_profile_str():
    assert str(P123) == "c1 -> [c2, c3] (rf=2)"
    assert str(MirroringProfile("c4")) == "c4 (no mirrors)"


def test_profile_from_order():
    assert MirroringProfile.from_order(["c1", "c2", "c3", "c4"], 2) == P123
    assert MirroringProfile.from_order(["c3"], 0) == MirroringProfile("c3")
    with pytest.raises(ValueError, match="needs 3 cells, 2 available"):
        MirroringProfile.from_order(["c1", "c2"], 2)


# --- FlowStateCache -----------------------------------------------------------------
def test_add_get_len_iter_contains():
    cache = FlowStateCache()
    first = parse_frame(build_udp_frame("10.0.0.1", "10.0.0.2", 5, 6))
    entry = cache.add(first.key, P12, 0x10001, now=10.0, first_packet=first)
    assert isinstance(entry, FlowEntry)
    assert cache.get(first.key.flow_id) is entry
    assert entry.flow_id == first.key.flow_id
    assert (entry.created_at, entry.last_seen, entry.directions) == (10.0, 10.0, {True, False})
    assert entry.first_packet is first and entry.group_id == 0x10001
    assert len(cache) == 1 and first.key.flow_id in cache and list(cache) == [entry]
    assert cache.get(12345) is None


def test_add_twice_is_an_error():
    cache = FlowStateCache()
    cache.add(key(1), P12, 1, 0.0)
    with pytest.raises(ValueError, match="already cached"):
        cache.add(key(1), P123, 2, 1.0)


def test_remove_direction_ends_flow_after_both():
    cache = FlowStateCache()
    k = key(1)
    cache.add(k, P12, 1, 0.0)
    assert cache.remove_direction(k.flow_id, True, packets=10, byte_count=1000, duration_s=3.0) is False
    assert cache.get(k.flow_id).directions == {False}
    assert cache.remove_direction(k.flow_id, True, packets=10) is False  # repeat: ignored
    assert cache.get(k.flow_id).packets == 10
    entry = cache.get(k.flow_id)
    assert cache.remove_direction(k.flow_id, False, 5, 500, 4.0, now=20.0) is True
    assert k.flow_id not in cache and len(cache) == 0
    assert (entry.packets, entry.bytes, entry.duration_s, entry.last_seen) == (15, 1500, 4.0, 20.0)
    assert cache.remove_direction(k.flow_id, False) is False  # unknown flow
    assert cache.profiles() == [] and cache.profiles_on_cell("c1") == []


def test_one_direction_installed():
    cache = FlowStateCache()
    cache.add(key(1), P12, 1, 0.0, directions=[False])
    assert cache.remove_direction(key(1).flow_id, False) is True


def test_profile_and_cell_indexes():
    cache = FlowStateCache()
    a = cache.add(key(1), P12, 1, 0.0)
    b = cache.add(key(2), P12, 1, 0.0)
    c = cache.add(key(3), P123, 2, 0.0)
    d = cache.add(key(4), P3, 3, 0.0)
    assert sorted(e.flow_id for e in cache.flows_using_profile(P12)) == sorted([a.flow_id, b.flow_id])
    assert cache.profile_refcount(P12) == 2 and cache.profile_refcount(P3) == 1
    assert cache.profile_refcount(MirroringProfile("zz")) == 0
    assert set(cache.profiles()) == {P12, P123, P3}
    assert {e.flow_id for e in cache.flows_on_cell("c1")} == {a.flow_id, b.flow_id, c.flow_id}
    assert {e.flow_id for e in cache.flows_on_cell("c3")} == {c.flow_id, d.flow_id}
    assert set(cache.profiles_on_cell("c3")) == {P123, P3}
    assert cache.flows_on_cell("c9") == []
    cache.remove(c.flow_id)
    assert set(cache.profiles_on_cell("c3")) == {P3}
    assert set(cache.profiles_on_cell("c2")) == {P12}
    assert cache.remove(c.flow_id) is None


def test_set_profile_reindexes():
    cache = FlowStateCache()
    a = cache.add(key(1), P12, 1, 0.0)
    cache.set_profile(a.flow_id, P3, 7)
    assert (a.profile, a.group_id) == (P3, 7)
    assert cache.flows_using_profile(P12) == [] and cache.profiles_on_cell("c1") == []
    assert cache.flows_using_profile(P3) == [a]
    with pytest.raises(KeyError):
        cache.set_profile(999, P3, 7)


def test_replace_profile_relabels_all_flows_keeps_groups():
    cache = FlowStateCache()
    for port in range(5):
        cache.add(key(port), P123, 42, 0.0)
    other = cache.add(key(99), P3, 3, 0.0)
    failed_over = MirroringProfile.of("c2", "c3", "c4")
    assert cache.replace_profile(P123, failed_over) == 5
    assert cache.profile_refcount(P123) == 0 and cache.profile_refcount(failed_over) == 5
    assert {e.group_id for e in cache.flows_using_profile(failed_over)} == {42}
    assert {e.flow_id for e in cache.flows_on_cell("c4")} == {
        e.flow_id for e in cache.flows_using_profile(failed_over)
    }
    assert cache.flows_on_cell("c1") == [] and other.profile == P3


def test_touch_and_idle_flows():
    cache = FlowStateCache()
    a = cache.add(key(1), P12, 1, 0.0)
    b = cache.add(key(2), P12, 1, 0.0)
    cache.touch(b.flow_id, 8.0)
    cache.touch(b.flow_id, 5.0)  # never goes back
    cache.touch(12345, 9.0)  # unknown: ignored
    assert b.last_seen == 8.0
    assert cache.idle_flows(now=12.0, idle_s=10.0) == [a]


def test_iteration_is_a_snapshot():
    cache = FlowStateCache()
    for port in range(3):
        cache.add(key(port), P12, 1, 0.0)
    for entry in cache:
        cache.remove(entry.flow_id)
    assert len(cache) == 0


def test_udp_and_tcp_same_ports_are_distinct_flows():
    cache = FlowStateCache()
    cache.add(key(1), P12, 1, 0.0)
    cache.add(FlowKey.between(PROTO_UDP, "10.0.0.1", 1, "10.0.0.2", 80)[0], P12, 1, 0.0)
    assert len(cache) == 2 and cache.profile_refcount(P12) == 2


def test_relabel_group_moves_only_that_groups_flows_and_keeps_the_indexes_right():
    from prism.flows.identity import FlowKey

    def key(port):
        return FlowKey(4, 17, bytes([10, 0, 0, 1]), port, bytes([10, 0, 0, 2]), 53)

    old, new = MirroringProfile.of("c1", "c2"), MirroringProfile.of("c2", "c3")
    cache = FlowStateCache()
    for port in (1000, 1001):
        cache.add(key(port), old, 7, 0.0)
    cache.add(key(1002), old, 8, 0.0)  # a twin group with an equal profile
    moved = cache.relabel_group(old, new, 7)
    assert sorted(e.key.port_a for e in moved) == [1000, 1001]
    assert cache.profile_refcount(old) == 1 and cache.profile_refcount(new) == 2
    assert set(cache.profiles_on_cell("c3")) == {new} and set(cache.profiles_on_cell("c1")) == {old}
    assert cache.relabel_group(old, new, 7) == []
    cache.relabel_group(old, new, 8)
    assert cache.profiles_on_cell("c1") == [] and cache.profile_refcount(new) == 3
    assert {e.key.port_a for e in cache.flows_on_cell("c3")} == {1000, 1001, 1002}
    for port in (1000, 1001, 1002):
        cache.remove(key(port).flow_id)
    assert cache.profiles() == [] and cache.profiles_on_cell("c2") == []
