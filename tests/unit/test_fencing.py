"""Fencing: controller generations on directory/profiles, and the tie-break between equal versions."""

from __future__ import annotations

from cell_helpers import Conversation
from prism.cell.conntrack import ConnTracker
from prism.cell.smm_view import ControlView
from test_conntrack_versions import NOW, handshake, tokens

CELLS = {"c1": ["10.0.0.1", 7700], "c2": ["10.0.0.2", 7700]}


def directory(epoch, generation, live):
    return {"type": "directory", "epoch": epoch, "generation": generation, "cells": CELLS, "live": live}


def profiles(epoch, generation, primary):
    return {"type": "profiles", "epoch": epoch, "generation": generation, "full": True,
            "profiles": {"7": [primary, []]}}  # fmt: skip


def test_a_cell_refuses_an_older_generation_and_a_newer_one_counts_epochs_afresh():
    view = ControlView("c1", 300.0)
    assert view.apply_directory(directory(5, 20, ["c1", "c2"]))
    assert view.apply_profiles(profiles(5, 20, "c1"))
    assert not view.apply_directory(directory(9, 19, []))  # the replaced controller
    assert not view.apply_profiles(profiles(9, 19, "c2"))
    assert view.live == {"c1", "c2"} and view.profiles[7].primary_cell == "c1"
    assert view.stale_generations == 2
    assert not view.apply_profiles(profiles(4, 20, "c2"))  # a reordered full table of the same controller
    assert view.apply_directory(directory(1, 21, ["c2"]))  # a restarted controller, epochs from 1
    assert view.apply_profiles(profiles(1, 21, "c2"))
    assert view.live == {"c2"} and view.profiles[7].primary_cell == "c2" and view.generation == 21


def two_primaries():
    """Two cells that each versioned the same connection as its primary (a link flap): same version, other tokens."""
    first, second = ConnTracker(tokens=tokens(1)), ConnTracker(tokens=tokens(2))
    conv = Conversation()
    a, b = handshake(first, conv), handshake(second, conv)
    assert a.version == b.version and a.token != b.token
    return first, second, conv.syn().key


def decided(tracker, key):
    entry = tracker.get(key)
    return entry.version, entry.token, entry.verdict, entry.first_seen


def test_equal_versions_converge_to_the_same_state_whichever_arrives_first():
    first, second, key = two_primaries()
    from_first, from_second = first.snapshot(), second.snapshot()
    first.merge(from_second, NOW)
    second.merge(from_first, NOW)
    assert decided(first, key) == decided(second, key)
    first.merge(second.snapshot(), NOW)  # a repeat of the winner changes nothing
    assert decided(first, key) == decided(second, key)


def test_a_removal_wins_over_an_entry_of_the_same_version():
    first, _second, key = two_primaries()
    version = first.get(key).version
    removal = {**first.snapshot()[0], "removed": True, "version": version}
    assert first.merge([removal], NOW) == 1 and first.get(key) is None


def test_tombstones_and_assignments_are_bounded():
    from prism.cell.conntrack import Timeouts, TrackerConfig

    tracker = ConnTracker(TrackerConfig(timeouts=Timeouts(established=1.0), max_tombstones=2))
    for port in range(5):
        handshake(tracker, Conversation(client_port=30000 + port))
    tracker.expire(NOW + 3600)
    assert tracker.counters()["tombstones"] == 2 and tracker.counters()["tombstones_evicted"] == 3
    view = ControlView("c1", 300.0, max_assignments=3)
    view.apply_assign({"flows": [[flow_id, 7, "x"] for flow_id in range(10)]}, NOW)
    assert view.assignments == 3 and view.assignments_evicted == 7 and view.flows_of(7) == {7, 8, 9}
