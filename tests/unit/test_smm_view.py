"""Tests for the SMM's view of the controller's tables: directory, profiles, assignments and their pruning."""

import pytest

from cell_helpers import Conversation
from prism.cell.conntrack import ConnTracker
from prism.cell.smm_view import ControlView

GRACE = 300.0


def assign(view, now, *pairs):
    view.apply_assign({"flows": [[flow_id, profile_id, ""] for flow_id, profile_id in pairs]}, now)


def test_peers_are_the_other_live_cells_of_the_flows_profile():
    view = ControlView("c2", GRACE)
    view.apply_directory({"epoch": 1, "cells": {"c1": ["10.0.0.1", 7700], "c2": ["10.0.0.2", 7700],
                                                "c3": ["10.0.0.3", 7700]}, "live": ["c1", "c2"]})  # fmt: skip
    view.apply_profiles({"epoch": 1, "full": True, "profiles": {"5": ["c1", ["c2", "c3"]]}})
    assert view.peers_of(42) is None  # not assigned yet
    assign(view, 0.0, (42, 5))
    assert view.peers_of(42) == ["c1"]  # c3 is not live
    assert not view.is_primary(42)
    assert view.address_of("c1") == ("10.0.0.1", 7700) and view.address_of("c3") is None


def test_a_directory_with_a_host_name_is_refused_whole():
    view = ControlView("c1", GRACE)
    with pytest.raises(ValueError):
        view.apply_directory({"epoch": 1, "cells": {"c2": ["cell-two", 7700]}, "live": ["c2"]})
    assert view.addresses == {} and view.live == set()


def test_a_flow_moved_to_another_profile_leaves_the_first():
    view = ControlView("c1", GRACE)
    assign(view, 0.0, (1, 5), (2, 5))
    assign(view, 1.0, (1, 6))
    assert view.flows_of(5) == {2} and view.flows_of(6) == {1}


def test_assignments_are_pruned_after_the_grace_period_unless_the_flow_is_here():
    view = ControlView("c1", GRACE)
    assign(view, 0.0, (1, 5), (2, 5), (3, 5))
    here = {2}
    assert view.prune(GRACE - 1, here.__contains__) == 0
    assert view.prune(GRACE, here.__contains__) == 2  # 1 and 3 never came
    assert view.flows_of(5) == {2}
    view.flow_gone(2, 1000.0)  # flow 2 expired here at t=1000
    assert view.prune(1000.0 + GRACE - 1, lambda flow_id: False) == 0
    assert view.prune(1000.0 + GRACE, lambda flow_id: False) == 1
    assert view.assignments == 0


def test_an_assignment_renewed_since_is_not_pruned_by_the_older_check():
    view = ControlView("c1", GRACE)
    assign(view, 0.0, (1, 5))
    assign(view, 100.0, (1, 5))
    assert view.prune(GRACE, lambda flow_id: False) == 0
    assert view.prune(100.0 + GRACE, lambda flow_id: False) == 1


def test_the_tracker_finds_a_key_by_flow_id_until_the_flow_leaves():
    tracker = ConnTracker()
    conv = Conversation()
    for info in conv.handshake():
        tracker.process(info, False, 1.0)
    key = conv.syn().key
    assert tracker.key_of(key.flow_id) == key
    replica = ConnTracker()
    replica.merge(tracker.snapshot(), 1.0)
    assert replica.key_of(key.flow_id) == key
    tracker.expire(1.0 + 10_000)
    assert tracker.key_of(key.flow_id) is None
