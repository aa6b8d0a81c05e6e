"""FixedPolicy: primary and mirrors follow the ring over the live cells."""

from __future__ import annotations

import pytest

from prism.flows.identity import parse_frame
from testkit.oxm import to_frame, udp_packet
from prism.policy.base import MODE_FULL, MODE_STATE, FixedPolicy, NoLiveCell, Policy
from prism.placement.profiles import MirroringProfile
from prism.placement.ring import HashRing

CELLS = ("c1", "c2", "c3", "c4", "c5")


def _packet(sport: int):
    return parse_frame(
        to_frame(udp_packet("02:00:00:00:00:01", "02:00:00:00:00:02", "10.0.0.1", "10.0.0.2", sport, 53))
    )


@pytest.mark.parametrize("replication_factor", [0, 1, 2, 4])
def test_primary_and_mirrors_are_the_ring_order(replication_factor):
    ring = HashRing(CELLS)
    policy = FixedPolicy(ring, replication_factor)
    for sport in range(1000, 1050):
        info = _packet(sport)
        order = ring.order(info.flow_id)
        profile = policy.profile_for(info, CELLS, now=0.0)
        assert profile == MirroringProfile.of(order[0], *order[1 : 1 + replication_factor])


def test_dead_cells_are_skipped_and_the_rest_keep_their_rank():
    ring = HashRing(CELLS)
    policy = FixedPolicy(ring, 2)
    for sport in range(1000, 1050):
        info = _packet(sport)
        order = ring.order(info.flow_id)
        live = [c for c in CELLS if c != order[0]]
        assert policy.profile_for(info, live, now=0.0) == MirroringProfile.of(*order[1:4])


def test_fewer_mirrors_when_not_enough_cells_are_live():
    policy = FixedPolicy(HashRing(CELLS), 3)
    profile = policy.profile_for(_packet(1), ["c2", "c4"], now=0.0)
    assert set(profile.cells) == {"c2", "c4"} and profile.replication_factor == 1


def test_cells_outside_the_ring_are_never_chosen():
    policy = FixedPolicy(HashRing(["c1", "c2"]), 2)
    assert set(policy.profile_for(_packet(1), ["c1", "c2", "c9"], now=0.0).cells) == {"c1", "c2"}


def test_no_live_cell_is_an_error():
    with pytest.raises(NoLiveCell):
        FixedPolicy(HashRing(CELLS), 1).profile_for(_packet(1), [], now=0.0)
    with pytest.raises(NoLiveCell):
        FixedPolicy(HashRing(CELLS), 1).profile_for(_packet(1), ["c9"], now=0.0)


def test_a_negative_replication_factor_is_refused():
    with pytest.raises(ValueError):
        FixedPolicy(HashRing(CELLS), -1)


def test_fixed_policy_is_a_policy():
    policy: Policy = FixedPolicy(HashRing(CELLS), 1)
    assert "replication_factor=1" in repr(policy)


def test_fixed_policy_answers_the_aging_interface():
    """Mode as configured, no milestones, never a re-decision; flow ends are accepted and ignored."""
    policy = FixedPolicy(HashRing(CELLS), 1)
    info = _packet(1234)
    profile = policy.profile_for(info, CELLS, now=0.0)
    assert policy.mode_for(info.flow_id) == MODE_FULL and policy.milestones_s == ()
    assert policy.redecide(info.flow_id, profile, 1.0, 10, 1000, CELLS, 1.0) is None
    policy.flow_ended(object(), 2.0)
    assert FixedPolicy(HashRing(CELLS), 1, MODE_STATE).mode_for(info.flow_id) == MODE_STATE
    with pytest.raises(ValueError, match="mode"):
        FixedPolicy(HashRing(CELLS), 1, "partial")
