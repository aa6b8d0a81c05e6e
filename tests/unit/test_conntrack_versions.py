"""Tests for the tracker's replication rules: the primary's versions and token, takeover, tombstones and removals."""

import random

from cell_helpers import Conversation
from prism.cell.conntrack import ABSORB, DROP_DENIED, FORWARD, ConnTracker, Timeouts, TrackerConfig
from prism.cell.entry import FlowVerdict
from prism.cell.records import removal_record
from prism.flows.identity import TCP_ACK, TCP_FIN, TCP_PSH, parse_frame
from testkit.packets import build_udp_frame

NOW = 100.0
SHORT = TrackerConfig(timeouts=Timeouts(time_wait=1.0, closed=1.0), tombstone_ttl_s=30.0)


def tokens(seed):
    rng = random.Random(seed)
    return lambda: rng.getrandbits(32)


def handshake(tracker, conv, mirror=False, now=NOW):
    for info in conv.handshake():
        assert tracker.process(info, mirror, now) is (ABSORB if mirror else FORWARD)
    return tracker.get(conv.syn().key)


def close(tracker, conv, mirror=False, now=NOW):
    for info in (conv.packet(True, TCP_FIN | TCP_ACK), conv.packet(False, TCP_FIN | TCP_ACK),
                 conv.packet(True, TCP_ACK)):  # fmt: skip
        tracker.process(info, mirror, now)


def test_the_primary_draws_a_token_and_mirror_copies_never_version():
    primary, mirror = ConnTracker(tokens=tokens(1)), ConnTracker(tokens=tokens(2))
    conv = Conversation()
    entry = handshake(primary, conv)
    copy = handshake(mirror, conv, mirror=True)
    assert entry.token != 0 and entry.version == 3  # SYN, SYN-ACK, ACK each changed the facts
    assert copy.token == 0 and copy.version == 0 and copy.state is entry.state
    assert mirror.take_changes() == [] and primary.take_changes() == [conv.syn().key]


def test_a_late_old_record_cannot_hide_the_token_from_a_mirror_that_moved_on():
    """Versions come from the primary only, so a record is never outnumbered by the mirror's own packets."""
    primary, mirror = ConnTracker(tokens=tokens(1)), ConnTracker()
    conv = Conversation()
    primary.process(conv.syn(), False, NOW)
    after_syn = primary.snapshot()  # lost, retried later
    for info in conv.handshake():
        mirror.process(info, True, NOW)
    for info in conv.handshake()[1:]:
        primary.process(info, False, NOW)
    assert mirror.merge(after_syn, NOW) == 1
    entry = mirror.get(conv.syn().key)
    assert entry.token == primary.get(conv.syn().key).token
    assert entry.state is primary.get(conv.syn().key).state  # facts kept, not moved back


def test_a_merge_takes_first_seen_from_the_primary():
    primary, mirror = ConnTracker(), ConnTracker()
    conv = Conversation()
    handshake(mirror, conv, mirror=True, now=NOW - 0.002)  # the mirror copy came first
    handshake(primary, conv, now=NOW)
    mirror.merge(primary.snapshot(), NOW)
    assert mirror.get(conv.syn().key).first_seen == NOW


def test_a_denied_flow_is_versioned_with_its_verdict_and_token():
    tracker = ConnTracker(admit=lambda info: False)
    conv = Conversation()
    assert tracker.process(conv.syn(), False, NOW) is DROP_DENIED
    entry = tracker.get(conv.syn().key)
    assert entry.verdict is FlowVerdict.DENY and entry.version == 1 and entry.token != 0
    assert tracker.process(conv.syn(), False, NOW) is DROP_DENIED and entry.version == 1


def test_a_takeover_keeps_the_entry_and_skips_one_version():
    primary, mirror = ConnTracker(), ConnTracker()
    conv = Conversation()
    handshake(primary, conv)
    handshake(mirror, conv, mirror=True)
    mirror.merge(primary.snapshot(), NOW)
    before = primary.get(conv.syn().key)
    data = conv.packet(True, TCP_ACK | TCP_PSH, b"after the failover")
    assert mirror.process(data, False, NOW + 1) is FORWARD
    entry = mirror.get(conv.syn().key)
    assert (entry.token, entry.first_seen) == (before.token, before.first_seen)
    assert entry.version == before.version + 2
    assert mirror.take_changes() == [conv.syn().key]
    assert mirror.counters()["flows_taken_over"] == 1
    stale_removal = removal_record(conv.syn().key, before.version + 1)
    assert mirror.merge([stale_removal], NOW) == 0 and conv.syn().key in mirror


def test_a_version_zero_record_fills_an_empty_table_but_never_overrides():
    mirror_only = ConnTracker()
    conv = Conversation()
    handshake(mirror_only, conv, mirror=True)
    record = mirror_only.snapshot()
    assert record[0]["version"] == 0
    empty, versioned = ConnTracker(), ConnTracker()
    assert empty.merge(record, NOW) == 1
    handshake(versioned, conv)
    assert versioned.merge(record, NOW) == 0


def test_expiry_leaves_a_tombstone_and_a_removal_only_where_the_primary_was():
    primary, mirror = ConnTracker(SHORT), ConnTracker(SHORT)
    conv = Conversation()
    handshake(primary, conv)
    handshake(mirror, conv, mirror=True)
    close(primary, conv)
    close(mirror, conv, mirror=True)
    mirror.merge(primary.snapshot(), NOW)
    version = primary.get(conv.syn().key).version
    assert primary.expire(NOW + 2) == [conv.syn().key] and mirror.expire(NOW + 2) == [conv.syn().key]
    assert primary.removal_version(conv.syn().key) == version + 1
    assert primary.removal(conv.syn().key)["removed"] is True
    assert mirror.removal_version(conv.syn().key) is None
    assert primary.counters()["tombstones"] == 1
    primary.expire(NOW + 40)
    assert primary.counters()["tombstones"] == 0 and primary.removal(conv.syn().key) is None


def test_a_removal_deletes_and_keeps_old_records_out():
    primary, mirror = ConnTracker(SHORT), ConnTracker(SHORT)
    conv = Conversation()
    handshake(primary, conv)
    old = primary.snapshot()
    close(primary, conv)
    mirror.merge(primary.snapshot(), NOW)
    primary.expire(NOW + 2)
    removal = primary.removal(conv.syn().key)
    assert mirror.merge([removal], NOW) == 1 and conv.syn().key not in mirror
    assert mirror.merge(old, NOW) == 0 and conv.syn().key not in mirror  # a late retry
    assert mirror.merge([removal], NOW) == 0  # a repeat


def _reopened(primary):
    """The same key's next connection at the primary, after the old one expired there."""
    again = Conversation(client_isn=777_000)
    handshake(primary, again)
    return again, primary.snapshot()


def test_a_new_connection_on_the_key_wins_whatever_order_removal_and_records_arrive_in():
    for removal_first in (True, False):
        primary, mirror = ConnTracker(SHORT), ConnTracker(SHORT)
        conv = Conversation()
        handshake(primary, conv)
        close(primary, conv)
        mirror.merge(primary.snapshot(), NOW)
        primary.expire(NOW + 2)
        removal = primary.removal(conv.syn().key)
        again, records = _reopened(primary)
        batches = [[removal], records] if removal_first else [records, [removal]]
        for batch in batches:
            mirror.merge(batch, NOW + 3)
        entry = mirror.get(conv.syn().key)
        assert entry is not None and entry.orig.isn == 777_000, removal_first
        assert entry.token == primary.get(conv.syn().key).token


def test_a_mirror_that_never_expired_the_old_flow_does_not_shadow_the_new_one():
    primary, mirror = ConnTracker(SHORT), ConnTracker(TrackerConfig())
    conv = Conversation()
    handshake(primary, conv)
    close(primary, conv)
    mirror.merge(primary.snapshot(), NOW)  # the mirror keeps it (longer timeouts), removal lost
    primary.expire(NOW + 2)
    again, records = _reopened(primary)
    assert mirror.merge(records, NOW + 3) == 1
    assert mirror.get(conv.syn().key).orig.isn == 777_000


def test_idle_timeouts_follow_the_state():
    tracker = ConnTracker(TrackerConfig(timeouts=Timeouts(time_wait=1.0, established=5.0, udp_new=7.0)))
    closed, idle = Conversation(client_port=40000), Conversation(client_port=40001)
    assert tracker.idle_timeout(handshake(tracker, closed)) == 5.0  # established
    handshake(tracker, idle)
    close(tracker, closed)
    assert tracker.idle_timeout(tracker.get(closed.syn().key)) == 1.0  # TIME_WAIT
    assert tracker.expire(NOW + 2) == [closed.syn().key]
    assert tracker.expire(NOW + 6) == [idle.syn().key]
    udp = parse_frame(build_udp_frame("10.0.0.1", "10.0.0.2", 5000, 53, b"q"))
    tracker.process(udp, False, NOW)
    assert tracker.idle_timeout(tracker.get(udp.key)) == 7.0  # UDP, no reply yet
