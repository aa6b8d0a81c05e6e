"""Tests for the tracker's snapshot records and merge/restore: later version wins, repeats are harmless."""

import copy
import json

import pytest

from cell_helpers import Conversation
from prism.cell.conntrack import ABSORB, DROP_NO_STATE, FORWARD, ConnTracker, TrackerConfig
from prism.cell.entry import ConnState, FlowVerdict
from prism.cell.records import RECORD_SCHEMA, StateRecordError
from prism.flows.identity import TCP_ACK, TCP_FIN, TCP_PSH

NOW = 50.0


def _established(conv=None, tracker=None):
    tracker = tracker or ConnTracker()
    conv = conv or Conversation()
    for info in conv.handshake():
        tracker.process(info, False, NOW)
    return tracker, conv


def _state_fields(record):
    """A record without this cell's counters and role."""
    return {name: value for name, value in record.items()
            if name not in ("role", "primary_packets", "primary_bytes", "mirror_packets",
                            "mirror_bytes", "dropped_packets")}  # fmt: skip


def test_snapshot_is_json_and_restores_to_the_same_state():
    primary, conv = _established()
    primary.process(conv.packet(True, TCP_ACK | TCP_PSH, b"hello"), False, NOW + 1)
    records = json.loads(json.dumps(primary.snapshot()))
    assert records[0]["schema"] == RECORD_SCHEMA
    assert records[0]["key"] == "tcp 10.0.0.1:40000 <-> 10.0.0.2:80"
    assert records[0]["state"] == "ESTABLISHED" and records[0]["initiator"] == "a"
    replica = ConnTracker()
    assert replica.restore(records) == 1
    restored = replica.snapshot()
    assert _state_fields(restored[0]) == _state_fields(records[0])
    assert restored[0]["role"] == "replica" and restored[0]["primary_packets"] == 0


def test_a_seeded_replica_forwards_mid_connection_packets_an_empty_cell_drops():
    primary, conv = _established()
    data = conv.packet(True, TCP_ACK | TCP_PSH, b"after failover")
    assert ConnTracker().process(data, False, NOW) is DROP_NO_STATE
    replica = ConnTracker()
    replica.merge(primary.snapshot())
    assert replica.process(data, False, NOW) is FORWARD


def test_merge_later_version_wins_and_repeats_change_nothing():
    primary, conv = _established()
    old = primary.snapshot()
    primary.process(conv.packet(True, TCP_FIN | TCP_ACK), False, NOW + 2)
    new = primary.snapshot()
    assert new[0]["version"] > old[0]["version"]
    replica = ConnTracker()
    assert replica.merge(new) == 1
    assert replica.merge(new) == 0  # a repeat
    assert replica.merge(old) == 0  # reordered: the older one arrives late
    assert _state_fields(replica.snapshot()[0]) == _state_fields(new[0])
    assert replica.counters()["records_ignored"] == 2


def test_merge_into_a_live_mirror_keeps_its_counters_and_accumulates_facts():
    conv = Conversation()
    mirror = ConnTracker()
    for info in conv.handshake():
        assert mirror.process(info, True, NOW) is ABSORB
    primary, _ = _established(conv)
    primary.set_verdict(conv.syn().key, FlowVerdict.DENY)  # decided at the primary only
    entry = mirror.get(conv.syn().key)
    assert mirror.merge(primary.snapshot()) == 1
    assert entry.verdict is FlowVerdict.DENY
    assert entry.version == primary.get(conv.syn().key).version
    assert entry.mirror_packets == 3 and entry.primary_packets == 0
    assert entry.state is ConnState.ESTABLISHED


def test_merge_never_moves_a_mirror_backwards():
    conv = Conversation()
    primary, _ = _established(conv)
    stale = primary.snapshot()  # ESTABLISHED
    mirror = ConnTracker()
    for info in conv.handshake():
        mirror.process(info, True, NOW)
    mirror.process(conv.packet(True, TCP_FIN | TCP_ACK), True, NOW)
    entry = mirror.get(conv.syn().key)
    assert entry.state is ConnState.FIN_WAIT
    stale[0]["version"] = entry.version + 1  # even with a higher version
    mirror.merge(stale)
    assert entry.state is ConnState.FIN_WAIT  # facts only accumulate
    assert entry.orig.fin_end is not None


def test_a_new_incarnation_replaces_the_old_one():
    old_conv = Conversation()
    replica, _ = _established(old_conv)
    new_primary = ConnTracker()
    new_conv = Conversation(client_isn=777777)
    new_primary.process(new_conv.syn(), False, NOW + 5)
    record = new_primary.snapshot()[0]
    record["version"] = replica.get(old_conv.syn().key).version + 1
    replica.merge([record])
    entry = replica.get(old_conv.syn().key)
    assert entry.state is ConnState.SYN_SENT and entry.orig.isn == 777777


def _good_record():
    tracker, _ = _established()
    return tracker.snapshot()[0]


@pytest.mark.parametrize("change, message", [
    (lambda r: r.update(schema=99), "schema"),
    (lambda r: r.pop("addr_a"), "addr_a"),
    (lambda r: r.update(addr_a="not-an-ip"), "bad flow key"),
    (lambda r: r.update(port_a=70000), "port_a"),
    (lambda r: r.update(ip_version=6), "ip_version"),
    (lambda r: r.update(flow_id=1), "flow_id"),
    (lambda r: r.update(initiator="c"), "initiator"),
    (lambda r: r.update(facts=["syn_orig", "telepathy"]), "unknown fact"),
    (lambda r: r.update(verdict="maybe"), "verdict"),
    (lambda r: r.update(version=-1), "version"),
    (lambda r: r.update(token=1 << 32), "token"),
    (lambda r: r.update(version=True), "version"),
    (lambda r: r.update(last_seen="yesterday"), "last_seen"),
    (lambda r: r["orig"].update(seq_end=-1), "seq_end"),
    (lambda r: r.update(reply=None), "reply"),
], ids=lambda value: value if isinstance(value, str) else "")  # fmt: skip
def test_malformed_records_are_refused_and_nothing_is_applied(change, message):
    good = _good_record()
    bad = copy.deepcopy(good)
    change(bad)
    other = Conversation(client_port=41000)
    source, _ = _established(other)
    batch = source.snapshot() + [bad]
    replica = ConnTracker()
    with pytest.raises(StateRecordError, match=message):
        replica.merge(batch)
    assert len(replica) == 0
    with pytest.raises(StateRecordError, match="state record 1"):
        replica.merge(batch)


def test_records_with_swapped_endpoints_keep_the_initiator():
    record = _good_record()
    swapped = dict(record, addr_a=record["addr_b"], port_a=record["port_b"],
                   addr_b=record["addr_a"], port_b=record["port_a"], initiator="b")  # fmt: skip
    replica = ConnTracker()
    replica.merge([swapped])
    assert replica.snapshot()[0]["initiator"] == "a"


# --- state mode: counters in records, re-anchoring at a takeover ---------------------------
def _replica_of(primary):
    replica = ConnTracker()
    replica.merge(json.loads(json.dumps(primary.snapshot())), NOW)
    return replica


def test_records_carry_the_flow_counters_and_a_receiver_keeps_the_larger():
    primary, conv = _established()
    for _ in range(5):
        primary.process(conv.packet(True, TCP_ACK | TCP_PSH, b"x" * 100), False, NOW)
    entry = primary.get(conv.syn().key)
    record = primary.snapshot()[0]
    assert (record["packets"], record["bytes"]) == (8, entry.primary_bytes)
    replica = _replica_of(primary)
    taken = replica.get(conv.syn().key)
    assert (taken.packets, taken.bytes) == (8, entry.primary_bytes)
    older = dict(record, version=record["version"] + 1, packets=3, bytes=10)
    replica.merge([older], NOW)  # a later version with smaller counters (another primary's) never lowers them
    assert taken.packets == 8
    assert replica.process(conv.packet(True, TCP_ACK), False, NOW) is FORWARD
    assert taken.packets == 9  # a takeover counts on from the replicated counters


def test_records_without_counters_still_apply():
    primary, conv = _established()
    record = primary.snapshot()[0]
    del record["packets"], record["bytes"]
    replica = ConnTracker()
    assert replica.merge([record], NOW) == 1 and replica.get(conv.syn().key).packets == 0


@pytest.mark.parametrize("strict", [False, True], ids=["loose", "strict"])
def test_a_takeover_accepts_the_next_packets_within_the_window_and_re_anchors(strict):
    primary, conv = _established(tracker=ConnTracker(TrackerConfig(strict=strict)))
    replica = ConnTracker(TrackerConfig(strict=strict))
    replica.merge(primary.snapshot(), NOW)
    replica.set_takeover_tolerance(5000)
    for _ in range(3):  # 3000 bytes the replica never heard of
        primary.process(conv.packet(True, TCP_ACK | TCP_PSH, b"x" * 1000), False, NOW)
    entry = replica.get(conv.syn().key)
    assert entry.anchor == 3
    assert replica.process(conv.packet(True, TCP_ACK | TCP_PSH, b"x" * 1000), False, NOW) is FORWARD
    assert entry.anchor == 2 and entry.orig.seq_end == conv.client_next  # re-anchored
    assert replica.process(conv.packet(False, TCP_ACK), False, NOW) is FORWARD
    assert entry.anchor == 0 and replica.counters()["flows_reanchored"] == 2


def test_a_takeover_refuses_a_first_packet_beyond_window_and_tolerance_then_takes_the_real_one():
    primary, conv = _established()
    replica = ConnTracker()
    replica.merge(primary.snapshot(), NOW)
    replica.set_takeover_tolerance(0)
    window = 65535 << 7  # the peer's window at the assumed scale
    far = conv.packet(True, TCP_ACK | TCP_PSH, b"x", seq=(conv.client_next + window + 10) & 0xFFFFFFFF,
                      advance=False)  # fmt: skip
    assert replica.process(far, False, NOW).reason == "out_of_window"
    assert replica.get(conv.syn().key).anchor == 3
    assert replica.process(conv.packet(True, TCP_ACK | TCP_PSH, b"x"), False, NOW) is FORWARD
    with pytest.raises(ValueError, match="tolerance"):
        replica.set_takeover_tolerance(-1)


def test_mirror_copies_never_re_anchor_and_pass_unchecked_in_loose_mode():
    primary, conv = _established()
    replica = _replica_of(primary)
    far = (conv.client_next + (65535 << 7) + (32 << 20)) & 0xFFFFFFFF
    fin = conv.packet(True, TCP_FIN | TCP_ACK, seq=far, advance=False)
    assert replica.process(fin, True, NOW) is ABSORB
    entry = replica.get(conv.syn().key)
    assert entry.anchor == 3 and entry.state is ConnState.FIN_WAIT
    strict = ConnTracker(TrackerConfig(strict=True))
    strict.merge(primary.snapshot(), NOW)
    assert strict.process(fin, True, NOW) is ABSORB
    assert strict.get(conv.syn().key).state is ConnState.ESTABLISHED  # out of reach: not taken
    assert strict.counters()["mirror_rejected_out_of_window"] == 1


def test_a_primary_s_own_flows_are_never_checked_for_a_takeover():
    primary, conv = _established()
    wild = conv.packet(True, TCP_ACK | TCP_PSH, b"x", seq=12345, advance=False)
    assert primary.process(wild, False, NOW) is FORWARD  # loose mode, as before state mode
    assert primary.get(conv.syn().key).anchor == 0
