"""Forged, replayed, impersonating and poisoned management datagrams against cells: each refused and counted.

The bed's cells authenticate (``SmmBed(auth=True)``): c1 is the primary of
PROFILE with c2 as its mirror, c3 is live but outside PROFILE. After every
attack the cells' tables, directory and profiles are what they were.
"""

from __future__ import annotations

import json
import zlib

import pytest

from prism.mgmt import protocol as mgmt
from prism.cell.records import MAX_VERSION, entry_to_wire_record
from prism.mgmt.auth import CONTROLLER_SENDER, MgmtAuth
from smm_helpers import CONTROLLER, KEY, SmmBed, address_of
from test_smm import PROFILE, open_flows

OTHER_KEY = b"not-the-deployment-key-" * 3
KIND_EXAMPLES = {
    "directory": {"type": "directory", "epoch": 99, "cells": {}, "live": []},
    "profiles": {"type": "profiles", "epoch": 99, "full": True, "profiles": {}},
    "assign": {"type": "assign", "flows": [[1, 99, "x"]]},
    "seed": {"type": "seed", "profile_id": PROFILE, "target": "c3"},
    "drain": {"type": "drain", "target": "c1"},
    "restore": {"type": "restore", "target": "c1"},
    "state": {"type": "state", "cell": "c1", "seq": 1, "records": []},
    "ack": {"type": "ack", "cell": "c1", "seq": 1},
    "heartbeat": {"type": "heartbeat", "cell": "c1", "seq": 1},
    "seeded": {"type": "seeded", "cell": "c1", "profile_id": PROFILE, "target": "c2", "flows": 1},
    "milestone": {"type": "milestone", "cell": "c1", "flows": [[1, 0.25, 3, 300]]},
}
#: Issue 8's and 9's fields on existing types: a per-flow seed and its answer, a state-mode assign,
#: a directory with milestones, a heartbeat with ``path_down``.
FIELD_VARIANTS = (
    {"type": "seed", "profile_id": PROFILE, "target": "c3", "flows": [1, 2]},
    {"type": "seeded", "cell": "c1", "profile_id": PROFILE, "target": "c2", "flows": [1, 2], "count": 2},
    {"type": "assign", "flows": [[1, 99, "x", "state"]]},
    {"type": "directory", "epoch": 99, "cells": {}, "live": [], "milestones_s": [0.25], "state_interval_s": 0.1},
    {"type": "heartbeat", "cell": "c1", "seq": 1, "path_down": "draining"},
)


def replicated_bed():
    bed = SmmBed(3, auth=True)
    bed.directory(live=list(bed.smms))
    bed.profiles({PROFILE: ("c1", ["c2"])})
    open_flows(bed, 3)
    bed.run_until_quiet()
    return bed


def picture(bed):
    """What an attack must not change: every cell's table, live set and profiles."""
    return {cell_id: (bed.records(cell_id), sorted(smm.view.live), dict(smm.view.profiles))
            for cell_id, smm in bed.smms.items()}  # fmt: skip


def auth_counts(smm):
    return smm.auth.counters.as_dict()


def test_messages_of_every_type_sealed_with_another_key_are_refused_and_counted():
    assert set(KIND_EXAMPLES) == set(mgmt.MESSAGE_TYPES)
    bed = replicated_bed()
    before = picture(bed)
    forger = MgmtAuth(OTHER_KEY, CONTROLLER_SENDER)
    for message in (*KIND_EXAMPLES.values(), *FIELD_VARIANTS):
        bed.smms["c2"].on_datagram(forger.seal(mgmt.encode(message), bed.now), CONTROLLER, bed.now)
    bed.smms["c2"].on_datagram(mgmt.encode(KIND_EXAMPLES["state"]), address_of("c1"), bed.now)  # unsealed
    bed.run_until_quiet()
    counts = auth_counts(bed.smms["c2"])
    assert counts["refused_bad_tag"] == len(KIND_EXAMPLES) + len(FIELD_VARIANTS)
    assert counts["refused_malformed"] == 1
    assert picture(bed) == before


def test_every_datagram_replayed_is_refused_and_counted():
    bed = SmmBed(3, auth=True)
    carried = []
    original = bed.network.send

    def record(source, destination, datagram):
        carried.append((source, destination, datagram))
        return original(source, destination, datagram)

    bed.network.send = record
    bed.directory(live=list(bed.smms))
    bed.profiles({PROFILE: ("c1", ["c2"])})
    controller_datagram = bed.controller_auth.seal(mgmt.encode(KIND_EXAMPLES["drain"]), bed.now)
    bed.smms["c1"].on_datagram(controller_datagram, CONTROLLER, bed.now)
    open_flows(bed, 3)
    bed.run_until_quiet()
    kinds = {mgmt.decode(datagram[datagram.index(b"PR\x01"):-32])["type"] for _, _, datagram in carried
             if datagram.find(b"PR\x01") >= 0}  # fmt: skip
    assert {"state", "ack"} <= kinds
    before = picture(bed)
    refused_before = {cell_id: auth_counts(smm)["refused_replayed"] for cell_id, smm in bed.smms.items()}
    replayed = 1
    bed.smms["c1"].on_datagram(controller_datagram, CONTROLLER, bed.now)
    for source, destination, datagram in carried:
        if destination != CONTROLLER:
            bed.network.endpoints[destination].on_datagram(datagram, source, bed.now)
            replayed += 1
    refused = sum(auth_counts(smm)["refused_replayed"] - refused_before[cell_id]
                  for cell_id, smm in bed.smms.items())  # fmt: skip
    assert refused == replayed
    assert picture(bed) == before


def test_a_cell_cannot_play_the_controller_or_another_cell():
    bed = replicated_bed()
    before = picture(bed)
    c3 = MgmtAuth(KEY, "c3")  # a key holder, live, but not in PROFILE
    victim = bed.smms["c2"]
    for kind in ("directory", "profiles", "assign", "seed", "drain", "restore"):
        victim.on_datagram(c3.seal(mgmt.encode(KIND_EXAMPLES[kind]), bed.now), CONTROLLER, bed.now)
    assert victim.replication_counters()["foreign_messages"] == 6
    victim.on_datagram(c3.seal(mgmt.encode(KIND_EXAMPLES["ack"]), bed.now), address_of("c3"), bed.now)
    assert auth_counts(victim)["refused_wrong_sender"] == 1  # an ack claiming c1's channel
    controller = MgmtAuth(KEY, CONTROLLER_SENDER)
    victim.on_datagram(controller.seal(mgmt.encode({**KIND_EXAMPLES["state"], "cell": None}), bed.now),
                       CONTROLLER, bed.now)  # fmt: skip
    assert victim.replication_counters()["foreign_messages"] == 7  # state sealed by the controller
    assert picture(bed) == before


def removal_of_every_flow(bed, version):
    entries = list(bed.cells["c2"].tracker)
    records = []
    for entry in entries:
        record = entry_to_wire_record(entry)
        records.append({key: record[key] for key in ("schema", "flow_id", "ip_version", "proto", "addr_a",
                                                     "port_a", "addr_b", "port_b")} | {"removed": True, "version": version})  # fmt: skip
    return records


def test_a_live_cell_outside_the_flows_profile_cannot_write_its_state():
    bed = replicated_bed()
    before = picture(bed)
    c3 = MgmtAuth(KEY, "c3")
    records = removal_of_every_flow(bed, 1000)
    message = {"type": "state", "cell": "c3", "seq": 5, "records": records}
    bed.smms["c2"].on_datagram(c3.seal(mgmt.encode(message), bed.now), address_of("c3"), bed.now)
    assert bed.smms["c2"].replication_counters()["records_refused"] == len(records) == 3
    bed.run_until_quiet()
    assert picture(bed) == before


@pytest.mark.parametrize("change", [
    {"version": MAX_VERSION + 1}, {"version": 1 << 62}, {"last_seen": 1e308 * 10}, {"first_seen": -1e400},
])  # fmt: skip
def test_huge_versions_and_non_finite_times_from_a_peer_are_refused(change):
    bed = replicated_bed()
    before = picture(bed)
    primary, mirror = MgmtAuth(KEY, "c1"), bed.smms["c2"]
    entry = next(iter(bed.cells["c1"].tracker))
    record = {**entry_to_wire_record(entry), **change}
    text = json.dumps({"type": "state", "cell": "c1", "seq": 77, "records": [record]}).encode()
    body = mgmt.MAGIC + bytes([mgmt.VERSION, 0]) + zlib.compress(text)
    mirror.on_datagram(primary.seal(body, bed.now), address_of("c1"), bed.now)
    counters = mirror.replication_counters()
    assert counters["rejected_batches"] + counters["auth_refused_undecodable"] == 1
    assert picture(bed) == before


def test_decompression_bombs_are_refused_forged_or_not():
    bed = replicated_bed()
    bomb = mgmt.MAGIC + bytes([mgmt.VERSION, 0]) + zlib.compress(b" " * (8 * mgmt.MAX_MESSAGE_BYTES), 9)
    assert len(bomb) < 60_000
    victim = bed.smms["c2"]
    victim.on_datagram(MgmtAuth(OTHER_KEY, "c1").seal(bomb, bed.now), address_of("c1"), bed.now)
    victim.on_datagram(MgmtAuth(KEY, "c1").seal(bomb, bed.now), address_of("c1"), bed.now)
    counts = auth_counts(victim)
    assert (counts["refused_bad_tag"], counts["refused_undecodable"]) == (1, 1)


def test_state_from_a_peer_not_known_live_is_refused_unacknowledged():
    bed = SmmBed(3, auth=True)  # no directory yet: nobody is known live
    victim = bed.smms["c2"]
    message = {"type": "state", "cell": "c1", "seq": 9, "records": []}
    victim.on_datagram(MgmtAuth(KEY, "c1").seal(mgmt.encode(message), bed.now), address_of("c1"), bed.now)
    counters = victim.replication_counters()
    assert counters["foreign_messages"] == 1 and counters["acks_sent"] == 0
