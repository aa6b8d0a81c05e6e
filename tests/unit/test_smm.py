"""Tests for the State Mirroring Module with fake time and an in-memory network that loses, duplicates, reorders."""

import random

import pytest

from cell_helpers import Conversation
from prism.mgmt import protocol as mgmt
from prism.cell.conntrack import Timeouts
from prism.cell.records import READER_ONLY_FIELDS, entry_to_record, entry_to_wire_record
from prism.cell.smm import SmmSettings
from prism.cell.smm_channel import ChannelSettings
from prism.flows.identity import TCP_ACK, TCP_FIN, TCP_PSH
from prism.cell.records import removal_record
from prism.flows.identity import ip_to_bytes
from smm_helpers import CONTROLLER, FakeNetwork, SmmBed, address_of, flow_state, mirror_copy

PROFILE = 7
OTHER_PROFILE = 8


def handshake_frames(conv):
    return [
        conv.frame(True, 0x02, seq=conv.client_isn, ack=0, advance=False),
        conv.frame(False, 0x12, seq=conv.server_isn, advance=False),
        conv.frame(True, TCP_ACK),
    ]


def open_flows(bed, count, primary="c1", mirrors=("c2",), profile=PROFILE, first_port=30000):
    """``count`` connections through ``primary`` (mirror copies to ``mirrors``), assigned to ``profile``."""
    conversations = [Conversation(client_port=first_port + index) for index in range(count)]
    bed.assign(conversations, profile)
    for conv in conversations:
        for frame in handshake_frames(conv):
            bed.send(frame, primary, mirrors)
    return conversations


def standard_bed(cells=3, network=None, settings=None, timeouts=None):
    bed = SmmBed(cells, network, settings, timeouts)
    bed.directory(live=list(bed.smms))
    bed.profiles({PROFILE: ("c1", ["c2"]), OTHER_PROFILE: ("c1", ["c3"])})
    return bed


# --- what is replicated ------------------------------------------------------------------
def test_a_mirror_gets_the_token_and_first_seen_the_primary_decided():
    bed = standard_bed()
    bed.now -= 0.001  # the mirror copy of the SYN is seen a little before the primary copy
    conv = Conversation()
    bed.assign([conv], PROFILE)
    syn, syn_ack, ack = handshake_frames(conv)
    bed.cells["c2"].handle_frame(mirror_copy(syn), bed.now)
    bed.now += 0.001
    bed.cells["c1"].handle_frame(syn, bed.now)
    for frame in (syn_ack, ack):
        bed.send(frame, "c1", ["c2"])
    mirror_entry = bed.cells["c2"].tracker.get(conv.syn().key)
    assert mirror_entry.token == 0 and mirror_entry.version == 0  # packets do not carry it
    bed.run_until_quiet()
    primary, mirror = bed.records("c1"), bed.records("c2")
    flow_id = conv.syn().key.flow_id
    assert mirror[flow_id]["token"] == primary[flow_id]["token"] != 0
    assert mirror[flow_id]["first_seen"] == primary[flow_id]["first_seen"]
    assert flow_state(mirror[flow_id]) == flow_state(primary[flow_id])
    assert mirror[flow_id]["mirror_packets"] == 3  # its own counters are kept
    assert flow_id not in bed.records("c3")  # not in the profile


def test_replication_is_batched_acknowledged_and_stays_under_the_datagram_size():
    bed = standard_bed()
    open_flows(bed, 300)
    bed.run_until_quiet()
    counters = bed.smms["c1"].replication_counters()
    assert counters["records_sent"] >= 300 and counters["batches_sent"] < counters["records_sent"] / 4
    assert counters["acks"] == counters["batches_sent"] and counters["lost_batches"] == 0
    assert max(bed.network.datagram_sizes) <= ChannelSettings().max_datagram
    assert bed.smms["c2"].replication_counters()["records_applied"] == 300
    assert len(bed.records("c2")) == 300


@pytest.mark.parametrize("loss, duplicate, reorder", [
    (0.3, 0.0, 0.0), (0.0, 0.3, 0.3), (0.25, 0.2, 0.3),
], ids=["loss", "duplicates+reordering", "all"])  # fmt: skip
def test_the_mirror_converges_to_the_primary_despite_a_faulty_network(loss, duplicate, reorder):
    network = FakeNetwork(random.Random(42), loss, duplicate, reorder)
    bed = standard_bed(network=network)
    conversations = open_flows(bed, 150)
    rng = random.Random(5)
    for _ in range(20):  # flows move on while replication is under way
        bed.step()
        for conv in rng.sample(conversations, 10):
            bed.send(conv.frame(True, TCP_ACK | TCP_PSH, b"data"), "c1", ["c2"])
        for conv in rng.sample(conversations, 3):
            bed.send(conv.frame(True, TCP_FIN | TCP_ACK), "c1", ["c2"])
    bed.run_until_quiet()
    primary, mirror = bed.records("c1"), bed.records("c2")
    assert primary.keys() == mirror.keys()
    for flow_id, record in primary.items():
        assert flow_state(mirror[flow_id]) == flow_state(record)
    counters = bed.smms["c1"].replication_counters()
    if loss:
        assert counters["retries"] > 0 and network.dropped > 0
    if duplicate:
        assert bed.smms["c2"].replication_counters()["records_ignored"] > 0


def test_a_batch_that_exhausts_its_retries_is_counted_lost_and_its_flows_sent_again_in_full():
    bed = standard_bed()
    conversations = open_flows(bed, 20)
    bed.network.blocked.add(address_of("c2"))
    bed.run(5.0)  # longer than all retries of a batch
    counters = bed.smms["c1"].replication_counters()
    assert counters["lost_batches"] > 0 and counters["records_resent"] >= 20
    assert {record["token"] for record in bed.records("c2").values()} == {0}  # mirror copies only
    for conv in conversations[:5]:  # more changes while the mirror is cut off
        bed.send(conv.frame(True, TCP_FIN | TCP_ACK), "c1", ["c2"])
    bed.network.blocked.clear()
    bed.run_until_quiet()
    primary, mirror = bed.records("c1"), bed.records("c2")
    assert {k: flow_state(v) for k, v in mirror.items()} == {k: flow_state(v) for k, v in primary.items()}


# --- assignments ---------------------------------------------------------------------
def test_changes_wait_for_their_assign_then_go_out():
    bed = standard_bed()
    conv = Conversation()
    for frame in handshake_frames(conv):
        bed.send(frame, "c1", ["c2"])
    bed.run(1.0)
    assert bed.smms["c1"].replication_counters()["records_sent"] == 0
    assert bed.smms["c1"].replication_counters()["held_flows"] == 1
    bed.step()
    beat = bed.smms["c1"]
    beat.heartbeat(bed.now)
    assert bed.network.controller_messages("heartbeat")[-1]["unassigned"] == [conv.syn().key.flow_id]
    bed.assign([conv], PROFILE)
    bed.run_until_quiet()
    assert conv.syn().key.flow_id in bed.records("c2")
    assert bed.smms["c1"].replication_counters()["held_flows"] == 0


def test_changes_before_the_first_directory_wait_for_it_then_go_out():
    """Profiles and assign known but no directory yet: who is live is unknown, not "nobody"."""
    bed = SmmBed(3)
    bed.profiles({PROFILE: ("c1", ["c2"])})
    conversations = open_flows(bed, 3)
    bed.run(1.0)  # the handshakes' versions are all made: no later change would carry them
    counters = bed.smms["c1"].replication_counters()
    assert counters["records_sent"] == 0 and counters["held_flows"] == 3
    bed.directory(live=list(bed.smms))
    bed.run_until_quiet()
    primary, mirror = bed.records("c1"), bed.records("c2")
    for conv in conversations:
        flow_id = conv.syn().key.flow_id
        assert mirror[flow_id]["token"] == primary[flow_id]["token"] != 0
    assert bed.smms["c1"].replication_counters()["held_flows"] == 0


def test_held_flows_are_bounded_in_number_and_time():
    bed = standard_bed(settings=SmmSettings(max_held_flows=2, hold_timeout_s=3.0))
    for index in range(3):
        conv = Conversation(client_port=31000 + index)
        bed.send(handshake_frames(conv)[0], "c1", [])
    bed.step()
    assert bed.smms["c1"].replication_counters()["held_dropped"] == 1
    bed.run(4.0)
    counters = bed.smms["c1"].replication_counters()
    assert counters["held_dropped"] == 3 and counters["held_flows"] == 0


def test_a_cell_that_is_only_a_mirror_sends_nothing():
    bed = standard_bed()
    open_flows(bed, 5)
    bed.run_until_quiet()
    assert bed.smms["c2"].replication_counters()["records_sent"] == 0


# --- removal --------------------------------------------------------------------------
SHORT = Timeouts(established=5.0, closed=1.0, time_wait=1.0, last_ack=1.0, fin_wait=1.0,
                 close_wait=1.0, syn_sent=5.0, syn_recv=5.0)  # fmt: skip


def _close(bed, conv, mirrors=("c2",)):
    for from_client in (True, False):
        bed.send(conv.frame(from_client, TCP_FIN | TCP_ACK), "c1", mirrors)
    bed.send(conv.frame(True, TCP_ACK), "c1", mirrors)


def test_an_expired_flow_is_removed_from_its_mirrors_and_its_key_reused_without_shadowing():
    bed = standard_bed(timeouts=SHORT)
    (conv,) = open_flows(bed, 1)
    _close(bed, conv, mirrors=())  # the mirror keeps it alive longer than the primary
    bed.run_until_quiet()
    key = conv.syn().key
    old_version = bed.cells["c2"].tracker.get(key).version
    bed.run(2.5)  # expired at c1
    assert key not in bed.cells["c1"].tracker
    bed.run_until_quiet()
    assert key not in bed.cells["c2"].tracker
    assert bed.smms["c1"].replication_counters()["removals_sent"] == 1
    again = Conversation(client_port=30000, client_isn=999_000)  # same ports: same key
    bed.assign([again], PROFILE)
    for frame in handshake_frames(again):
        bed.send(frame, "c1", ["c2"])
    bed.run_until_quiet()
    entry = bed.cells["c2"].tracker.get(key)
    assert entry.orig.isn == 999_000 and entry.version > old_version + 1
    assert entry.token == bed.cells["c1"].tracker.get(key).token


def test_a_new_connection_reaches_the_mirror_while_the_old_ones_removal_is_still_retried():
    bed = standard_bed(timeouts=SHORT)
    (conv,) = open_flows(bed, 1)
    _close(bed, conv, mirrors=())
    bed.run_until_quiet()
    key = conv.syn().key
    bed.network.blocked.add(address_of("c2"))
    bed.run(2.5)  # expired at c1: the removal is in flight, retried
    again = Conversation(client_port=30000, client_isn=999_000)
    for frame in handshake_frames(again):
        bed.send(frame, "c1", [])
    bed.network.blocked.clear()
    bed.run_until_quiet()
    entry = bed.cells["c2"].tracker.get(key)
    assert entry is not None and entry.orig.isn == 999_000
    assert flow_state(bed.records("c2")[key.flow_id]) == flow_state(bed.records("c1")[key.flow_id])


def test_a_mirror_does_not_send_removals():
    bed = standard_bed(timeouts=SHORT)
    (conv,) = open_flows(bed, 1)
    _close(bed, conv)
    bed.run(3.0)
    assert conv.syn().key not in bed.cells["c2"].tracker
    assert bed.smms["c2"].replication_counters()["removals_sent"] == 0


# --- takeover -------------------------------------------------------------------------
def test_after_a_takeover_the_new_primary_keeps_the_entry_and_replicates_to_the_new_mirror():
    bed = standard_bed()
    conversations = open_flows(bed, 10)
    bed.run_until_quiet()
    before = bed.records("c1")
    # c1 dies; the fast-failover bucket sends the primary copies to c2 at once
    del bed.network.endpoints[address_of("c1")]
    bed.directory(live=["c2", "c3"])
    for conv in conversations:
        bed.cells["c2"].handle_frame(conv.frame(True, TCP_ACK | TCP_PSH, b"after"), bed.now)
    taken = bed.records("c2")
    for flow_id, record in before.items():
        assert taken[flow_id]["token"] == record["token"]
        assert taken[flow_id]["first_seen"] == record["first_seen"]
        assert taken[flow_id]["version"] == record["version"] + 2  # a takeover skips one
    assert bed.cells["c2"].counters()["forwarded"] == 0  # counted by the loop, not the cell
    assert bed.cells["c2"].tracker.counters()["flows_taken_over"] == 10
    # the controller names c2 primary and c3 the new mirror, and asks c2 to seed it
    bed.profiles({PROFILE: ("c2", ["c3"])})
    bed.run_until_quiet()
    mirror = bed.records("c3")
    for flow_id, record in bed.records("c2").items():
        assert flow_state(mirror[flow_id]) == flow_state(record)
    # a removal from the old primary (one above the versions it knew) loses
    stale = [removal_record(conv.syn().key, before[conv.syn().key.flow_id]["version"] + 1)
             for conv in conversations]  # fmt: skip
    for cell_id in ("c2", "c3"):
        assert bed.cells[cell_id].tracker.merge(stale, bed.now) == 0
        assert len(bed.cells[cell_id].tracker) == 10


# --- seeding ----------------------------------------------------------------------------
def test_seed_sends_every_flow_of_the_profile_then_reports_seeded():
    network = FakeNetwork(random.Random(3), loss=0.2)
    bed = standard_bed(network=network)
    open_flows(bed, 40, mirrors=("c2",), profile=PROFILE)
    open_flows(bed, 15, mirrors=("c3",), profile=OTHER_PROFILE, first_port=40000)
    bed.run_until_quiet()
    assert len(bed.records("c3")) == 15
    bed.control({"type": "seed", "profile_id": PROFILE, "target": "c3"}, ["c1"])
    bed.control({"type": "seed", "profile_id": PROFILE, "target": "c3"}, ["c1"])  # asked twice
    assert network.controller_messages("seeded") == []
    bed.run_until_quiet()
    (seeded,) = network.controller_messages("seeded")
    assert seeded == {"type": "seeded", "cell": "c1", "profile_id": PROFILE, "target": "c3", "flows": 40}
    primary, target = bed.records("c1"), bed.records("c3")
    assert len(target) == 55
    for flow_id, record in primary.items():
        assert flow_state(target[flow_id]) == flow_state(record)
    counters = bed.smms["c1"].replication_counters()
    assert counters["snapshots_sent"] == 1 and counters["seeds_completed"] == 1
    bed.control({"type": "seed", "profile_id": PROFILE, "target": "c3"}, ["c1"])  # our answer was lost
    assert len(network.controller_messages("seeded")) == 2


def test_seed_of_an_empty_profile_is_answered_at_once():
    bed = standard_bed()
    bed.control({"type": "seed", "profile_id": 99, "target": "c3"}, ["c1"])
    (seeded,) = bed.network.controller_messages("seeded")
    assert seeded["flows"] == 0


def test_a_seed_to_a_cell_that_dies_is_abandoned():
    bed = standard_bed()
    open_flows(bed, 10)
    bed.run_until_quiet()
    bed.network.blocked.add(address_of("c3"))
    bed.control({"type": "seed", "profile_id": PROFILE, "target": "c3"}, ["c1"])
    bed.run(0.5)
    bed.directory(live=["c1", "c2"])
    counters = bed.smms["c1"].replication_counters()
    assert counters["seeds_abandoned"] == 1 and counters["seeds_in_progress"] == 0
    assert counters["abandoned_batches"] > 0
    assert bed.network.controller_messages("seeded") == []


# --- bounded work, heartbeats, bad input --------------------------------------------
def test_a_tick_batches_a_bounded_number_of_records():
    bed = standard_bed(settings=SmmSettings(max_records_per_tick=10))
    open_flows(bed, 100)
    bed.cells["c1"].tick(bed.now)
    assert bed.smms["c1"].replication_counters()["records_sent"] == 10
    bed.run_until_quiet()
    assert len(bed.records("c2")) == 100


def test_heartbeats_carry_counters_and_rates():
    bed = standard_bed()
    smm = bed.smms["c1"]
    smm.heartbeat(bed.now)
    open_flows(bed, 10)
    bed.now += 0.1
    smm.heartbeat(bed.now)
    first, second = bed.network.controller_messages("heartbeat")
    assert (first["seq"], second["seq"]) == (1, 2)
    assert second["cell"] == "c1" and second["flows"] == 10
    assert second["primary_pps"] == pytest.approx(300.0)  # 30 primary copies in 0.1 s
    assert second["mirror_pps"] == 0
    assert set(second["replication"]) >= {
        "replication_bytes_sent", "batches_sent", "acks", "retries", "lost_batches",
        "records_sent", "records_applied", "snapshots_sent",
    }  # fmt: skip
    mirror_beat = bed.smms["c2"]
    mirror_beat.heartbeat(bed.now)
    mirror_beat.heartbeat(bed.now + 0.1)
    assert bed.network.controller_messages("heartbeat")[-1]["mirror_pps"] == 0


@pytest.mark.parametrize("datagram", [
    b"", b"garbage", mgmt.encode({"type": "state", "cell": "c9", "seq": "x", "records": []}),
    mgmt.encode({"type": "state", "cell": "c9", "seq": 1, "records": [{"schema": 2}]}),
    mgmt.encode({"type": "ack", "cell": "c9", "seq": 5}),
    mgmt.encode({"type": "heartbeat", "cell": "c9"}),
], ids=["empty", "garbage", "bad-seq", "bad-record", "unknown-peer-ack", "not-for-a-cell"])  # fmt: skip
def test_bad_datagrams_are_counted_never_raised(datagram):
    bed = standard_bed()
    smm = bed.smms["c2"]
    smm.on_datagram(datagram, address_of("c3"), bed.now)
    counters = smm.replication_counters()
    problems = ("bad_datagrams", "bad_messages", "rejected_batches", "unknown_acks")
    assert sum(counters[name] for name in problems) == 1


def test_control_messages_from_others_than_the_controller_are_ignored():
    bed = standard_bed()
    smm = bed.smms["c2"]
    message = mgmt.encode({"type": "directory", "epoch": 99, "cells": {}, "live": []})
    smm.on_datagram(message, address_of("c3"), bed.now)
    assert smm.replication_counters()["foreign_messages"] == 1 and smm.view.live == {"c1", "c2", "c3"}


def test_a_stale_partial_profiles_message_is_ignored_but_a_full_table_always_applies():
    bed = standard_bed()
    smm = bed.smms["c1"]
    stale = {"type": "profiles", "epoch": 0, "profiles": {str(PROFILE): ["c3", []]}}
    smm.on_datagram(mgmt.encode(stale), CONTROLLER, bed.now)
    assert smm.view.profiles[PROFILE].primary_cell == "c1"
    smm.on_datagram(mgmt.encode({**stale, "full": True}), CONTROLLER, bed.now)  # a restarted controller
    assert list(smm.view.profiles) == [PROFILE] and smm.view.profiles[PROFILE].primary_cell == "c3"
    assert smm.replication_counters()["stale_control"] == 2


def test_reader_only_fields_are_not_replicated():
    bed = standard_bed()
    open_flows(bed, 1)
    captured = []
    original = bed.network.send

    def capture(source, destination, datagram):
        message = mgmt.decode(datagram)
        if message and message["type"] == "state":
            captured.extend(message["records"])
        return original(source, destination, datagram)

    bed.network.send = capture
    bed.run_until_quiet()
    assert captured and not set(READER_ONLY_FIELDS) & set(captured[0])
    record = bed.records("c2")[captured[0]["flow_id"]]
    assert record["role"] == "mirror" and record["primary_packets"] == 0


def test_a_wire_record_is_the_record_without_its_reader_only_fields():
    bed = standard_bed()
    open_flows(bed, 1)
    open_flows(bed, 1, first_port=50000)
    for entry in bed.cells["c1"].tracker:
        full, wire = entry_to_record(entry), entry_to_wire_record(entry)
        for name in READER_ONLY_FIELDS:
            full.pop(name)
        for name in ("addr_a", "addr_b"):  # same address, text written by inet_ntop
            assert ip_to_bytes(wire.pop(name)) == ip_to_bytes(full.pop(name))
        assert wire == full


def test_with_several_controllers_each_gets_the_heartbeats_and_either_may_send_control():
    from prism.cell.cell import Cell
    from prism.cell.conntrack import ConnTracker, TrackerConfig
    from prism.cell.smm import StateMirroringModule

    second = ("172.30.0.253", mgmt.CONTROLLER_MGMT_PORT)
    sent = []
    transport = type("T", (), {"sendto": lambda self, datagram, address: sent.append(address) or True})()
    smm = StateMirroringModule(Cell("c1", ConnTracker(TrackerConfig())), transport, [CONTROLLER, second])
    smm.heartbeat(1.0)
    assert sent == [CONTROLLER, second]
    directory = mgmt.encode({"type": "directory", "epoch": 1, "cells": {}, "live": ["c1"]})
    smm.on_datagram(directory, second, 1.0)
    assert smm.view.live == {"c1"} and smm.replication_counters()["foreign_messages"] == 0
    smm.on_datagram(directory, ("172.30.0.9", 7700), 1.0)
    assert smm.replication_counters()["foreign_messages"] == 1
