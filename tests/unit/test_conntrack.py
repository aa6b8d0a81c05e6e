"""Tests for prism.cell.conntrack: the TCP state machine, sequence checks, verdicts, counters, expiry."""

import random

import pytest

from cell_helpers import CLIENT, SERVER, Conversation, info_of
from prism.cell.conntrack import (
    ABSORB,
    DROP_DENIED,
    DROP_INVALID_FLAGS,
    DROP_NO_STATE,
    DROP_OUT_OF_WINDOW,
    DROP_TABLE_FULL,
    FORWARD,
    Action,
    ConnTracker,
    Timeouts,
    TrackerConfig,
)
from prism.cell.entry import ConnState, FlowVerdict
from prism.cell.records import removal_record
from prism.flows.identity import TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN
from testkit.packets import build_icmp_frame, build_ip_frame, build_udp_frame

NOW = 100.0
STRICT = TrackerConfig(strict=True)


def established(tracker, conv, now=NOW, mirror=False):
    for info in conv.handshake():
        assert tracker.process(info, mirror, now) is (ABSORB if mirror else FORWARD)
    return tracker.get(conv.syn().key)


# --- the state machine --------------------------------------------------------------
def test_handshake_moves_through_syn_sent_syn_recv_established_with_growing_versions():
    tracker, conv = ConnTracker(), Conversation()
    syn, syn_ack, ack = conv.handshake()
    states, versions = [], []
    for info in (syn, syn_ack, ack):
        assert tracker.process(info, False, NOW) is FORWARD
        entry = tracker.get(info.key)
        states.append(entry.state)
        versions.append(entry.version)
    assert states == [ConnState.SYN_SENT, ConnState.SYN_RECV, ConnState.ESTABLISHED]
    assert versions == sorted(set(versions))
    assert entry.orig.isn == 1000 and entry.reply.isn == 5000


def test_data_in_established_is_forwarded_without_a_new_version():
    tracker, conv = ConnTracker(), Conversation()
    entry = established(tracker, conv)
    version = entry.version
    for _ in range(3):
        assert tracker.process(conv.packet(True, TCP_ACK | TCP_PSH, b"x" * 100), False, NOW) is FORWARD
        assert tracker.process(conv.packet(False, TCP_ACK), False, NOW) is FORWARD
    assert entry.state is ConnState.ESTABLISHED
    assert entry.version == version
    assert entry.orig.seq_end == 1001 + 300
    assert entry.reply.ack_max == 1001 + 300


def test_client_close_goes_fin_wait_close_wait_last_ack_time_wait():
    tracker, conv = ConnTracker(), Conversation()
    entry = established(tracker, conv)
    steps = [
        (True, TCP_FIN | TCP_ACK, ConnState.FIN_WAIT),
        (False, TCP_ACK, ConnState.CLOSE_WAIT),
        (False, TCP_FIN | TCP_ACK, ConnState.LAST_ACK),
        (True, TCP_ACK, ConnState.TIME_WAIT),
    ]
    for from_client, flags, state in steps:
        assert tracker.process(conv.packet(from_client, flags), False, NOW) is FORWARD
        assert entry.state is state


def test_server_close_first_and_fin_ack_combined():
    tracker, conv = ConnTracker(), Conversation()
    entry = established(tracker, conv)
    tracker.process(conv.packet(False, TCP_FIN | TCP_ACK), False, NOW)
    assert entry.state is ConnState.FIN_WAIT
    # the client acknowledges the server's FIN and sends its own in one segment
    tracker.process(conv.packet(True, TCP_FIN | TCP_ACK), False, NOW)
    assert entry.state is ConnState.LAST_ACK
    tracker.process(conv.packet(False, TCP_ACK), False, NOW)
    assert entry.state is ConnState.TIME_WAIT


def test_rst_closes_an_established_connection():
    tracker, conv = ConnTracker(), Conversation()
    entry = established(tracker, conv)
    assert tracker.process(conv.packet(False, TCP_RST | TCP_ACK), False, NOW) is FORWARD
    assert entry.state is ConnState.CLOSED


def test_refused_connection_rst_to_syn_closes():
    tracker, conv = ConnTracker(TrackerConfig(strict=True)), Conversation()
    tracker.process(conv.syn(), False, NOW)
    rst = conv.packet(False, TCP_RST | TCP_ACK, seq=0, ack=1001)
    assert tracker.process(rst, False, NOW) is FORWARD
    assert tracker.get(rst.key).state is ConnState.CLOSED


def test_new_syn_after_time_wait_reopens_with_a_higher_version():
    tracker, conv = ConnTracker(), Conversation()
    entry = established(tracker, conv)
    for from_client, flags in ((True, TCP_FIN | TCP_ACK), (False, TCP_FIN | TCP_ACK), (True, TCP_ACK)):
        tracker.process(conv.packet(from_client, flags), False, NOW)
    assert entry.state is ConnState.TIME_WAIT
    version = entry.version
    # a late duplicate of the old SYN does not reopen
    tracker.process(conv.syn(), False, NOW)
    assert entry.state is ConnState.TIME_WAIT and entry.version == version
    again = Conversation(client_isn=90000)
    assert tracker.process(again.syn(), False, NOW + 1) is FORWARD
    assert entry.state is ConnState.SYN_SENT and entry.version > version
    assert entry.orig.isn == 90000 and tracker.flows_reopened == 1
    for info in again.handshake()[1:]:
        tracker.process(info, False, NOW + 1)
    assert entry.state is ConnState.ESTABLISHED


# --- stateful-firewall drops ---------------------------------------------------------
@pytest.mark.parametrize("flags", [TCP_ACK, TCP_ACK | TCP_PSH, TCP_FIN | TCP_ACK, TCP_RST,
                                   TCP_SYN | TCP_ACK])  # fmt: skip
def test_mid_connection_packet_without_state_is_dropped_and_counted(flags):
    tracker = ConnTracker()
    info = Conversation().packet(True, flags, b"data")
    assert tracker.process(info, False, NOW) is DROP_NO_STATE
    assert DROP_NO_STATE.action is Action.DROP and DROP_NO_STATE.reason == "no_state"
    assert info.key not in tracker
    assert tracker.counters()["dropped_no_state"] == 1


def test_mirror_copy_without_state_is_absorbed_and_creates_nothing():
    tracker = ConnTracker()
    info = Conversation().packet(True, TCP_ACK, b"data", mirror=True)
    assert tracker.process(info, True, NOW) is ABSORB
    assert len(tracker) == 0
    counters = tracker.counters()
    assert counters["mirror_rejected_no_state"] == 1 and counters["dropped_no_state"] == 0


@pytest.mark.parametrize("flags", [TCP_SYN | TCP_FIN, TCP_SYN | TCP_RST, 0, TCP_FIN,
                                   TCP_FIN | TCP_PSH | 0x20])  # fmt: skip
def test_invalid_flag_combinations_are_dropped(flags):
    tracker, conv = ConnTracker(), Conversation()
    entry = established(tracker, conv)
    version = entry.version
    assert tracker.process(conv.packet(True, flags, advance=False), False, NOW) is DROP_INVALID_FLAGS
    assert entry.version == version and entry.dropped_packets == 1


# --- sequence checks ----------------------------------------------------------------
def test_loose_mode_passes_retransmissions_and_wild_sequence_numbers():
    tracker, conv = ConnTracker(), Conversation()
    established(tracker, conv)
    data = conv.frame(True, TCP_ACK | TCP_PSH, b"y" * 500)
    assert tracker.process(info_of(data), False, NOW) is FORWARD
    assert tracker.process(info_of(data), False, NOW) is FORWARD  # retransmission
    wild = conv.packet(True, TCP_ACK, b"z", seq=conv.client_next + (1 << 30), advance=False)
    assert tracker.process(wild, False, NOW) is FORWARD


def test_strict_mode_passes_retransmissions_and_drops_out_of_window_segments():
    tracker, conv = ConnTracker(STRICT), Conversation()
    entry = established(tracker, conv)
    data = conv.frame(True, TCP_ACK | TCP_PSH, b"y" * 500)
    assert tracker.process(info_of(data), False, NOW) is FORWARD
    assert tracker.process(info_of(data), False, NOW) is FORWARD  # retransmission passes
    far_ahead = conv.packet(True, TCP_ACK, b"z", seq=conv.client_next + (1 << 30), advance=False)
    assert tracker.process(far_ahead, False, NOW) is DROP_OUT_OF_WINDOW
    unsent_ack = conv.packet(False, TCP_ACK, ack=conv.client_next + 100000, advance=False)
    assert tracker.process(unsent_ack, False, NOW) is DROP_OUT_OF_WINDOW
    blind_rst = conv.packet(False, TCP_RST, seq=conv.server_next + (1 << 31) - 7, advance=False)
    assert tracker.process(blind_rst, False, NOW) is DROP_OUT_OF_WINDOW
    assert entry.state is ConnState.ESTABLISHED
    assert tracker.counters()["dropped_out_of_window"] == 3


def test_strict_mode_refuses_segments_and_acks_from_far_behind():
    tracker = ConnTracker(STRICT)
    conv = Conversation(client_isn=1 << 31, server_isn=3 << 30)
    established(tracker, conv)
    window_bytes = 65535 << 7  # the assumed scale applied to the advertised window
    stale_data = conv.packet(True, TCP_ACK, b"s", seq=conv.client_next - (1 << 30), advance=False)
    assert tracker.process(stale_data, False, NOW) is DROP_OUT_OF_WINDOW
    stale_ack = conv.packet(False, TCP_ACK, ack=conv.client_next - (1 << 30), advance=False)
    assert tracker.process(stale_ack, False, NOW) is DROP_OUT_OF_WINDOW
    old_but_in_window = conv.packet(True, TCP_ACK, b"o", seq=conv.client_next - window_bytes + 10,
                                    advance=False)  # fmt: skip
    assert tracker.process(old_but_in_window, False, NOW) is FORWARD
    at_window_edge = conv.packet(True, TCP_ACK, b"e", seq=conv.client_next + window_bytes,
                                 advance=False)  # fmt: skip
    assert tracker.process(at_window_edge, False, NOW) is FORWARD
    past_window_edge = conv.packet(True, TCP_ACK, b"p", seq=conv.client_next + window_bytes + 1,
                                   advance=False)  # fmt: skip
    assert tracker.process(past_window_edge, False, NOW) is DROP_OUT_OF_WINDOW


def test_loose_mode_accepts_the_rst_that_strict_mode_refuses():
    tracker, conv = ConnTracker(), Conversation()
    entry = established(tracker, conv)
    blind_rst = conv.packet(False, TCP_RST, seq=conv.server_next + (1 << 31) - 7, advance=False)
    assert tracker.process(blind_rst, False, NOW) is FORWARD
    assert entry.state is ConnState.CLOSED


def test_strict_mode_refuses_a_syn_ack_that_does_not_acknowledge_the_syn():
    tracker, conv = ConnTracker(STRICT), Conversation()
    tracker.process(conv.syn(), False, NOW)
    bad = conv.packet(False, TCP_SYN | TCP_ACK, seq=5000, ack=4242, advance=False)
    assert tracker.process(bad, False, NOW) is DROP_OUT_OF_WINDOW
    assert tracker.get(bad.key).state is ConnState.SYN_SENT


def test_strict_mode_across_sequence_number_wraparound():
    tracker = ConnTracker(STRICT)
    conv = Conversation(client_isn=0xFFFFFF00, server_isn=0xFFFFFFF0)
    entry = established(tracker, conv)
    for _ in range(4):  # 4 x 100 bytes crosses 2**32 on the client side
        assert tracker.process(conv.packet(True, TCP_ACK | TCP_PSH, b"w" * 100), False, NOW) is FORWARD
        assert tracker.process(conv.packet(False, TCP_ACK | TCP_PSH, b"v" * 10), False, NOW) is FORWARD
    assert entry.orig.seq_end == (0xFFFFFF00 + 1 + 400) & 0xFFFFFFFF
    assert entry.reply.ack_max == entry.orig.seq_end
    old = conv.packet(True, TCP_ACK, b"w" * 100, seq=0xFFFFFF01, advance=False)
    assert tracker.process(old, False, NOW) is FORWARD  # a retransmission from before the wrap


# --- mirror copies and duplicates ------------------------------------------------------
def test_mirror_copies_update_state_and_count_by_role():
    tracker, conv = ConnTracker(), Conversation()
    entry = established(tracker, conv, mirror=True)
    assert entry.state is ConnState.ESTABLISHED
    assert (entry.mirror_packets, entry.primary_packets) == (3, 0)
    assert entry.role == "mirror"
    assert tracker.process(conv.packet(True, TCP_ACK, b"abc"), False, NOW) is FORWARD
    assert (entry.mirror_packets, entry.primary_packets) == (3, 1)
    assert entry.primary_bytes > 0 and entry.mirror_bytes > 0
    assert entry.role == "primary"


def _conversation_packets():
    conv = Conversation()
    packets = conv.handshake()
    packets.append(conv.packet(True, TCP_ACK | TCP_PSH, b"request"))
    packets.append(conv.packet(False, TCP_ACK | TCP_PSH, b"response" * 10))
    packets.append(conv.packet(True, TCP_FIN | TCP_ACK))
    packets.append(conv.packet(False, TCP_FIN | TCP_ACK))
    packets.append(conv.packet(True, TCP_ACK))
    return packets


@pytest.mark.parametrize("config", [TrackerConfig(), STRICT], ids=["loose", "strict"])
def test_each_packet_twice_gives_the_same_states_and_versions_as_once(config):
    # The same token draws on both sides, so that the records compare whole.
    once = ConnTracker(config, tokens=lambda rng=random.Random(3): rng.getrandbits(32))
    twice = ConnTracker(config, tokens=lambda rng=random.Random(3): rng.getrandbits(32))
    for info in _conversation_packets():
        expected = once.process(info, False, NOW)
        assert twice.process(info, True, NOW) is ABSORB  # the marked mirror copy ...
        assert twice.process(info, False, NOW) is expected  # ... then the primary copy
        a, b = once.get(info.key), twice.get(info.key)
        assert (a.state, a.version, a.facts) == (b.state, b.version, b.facts)
    record_once, record_twice = once.snapshot()[0], twice.snapshot()[0]
    for record in (record_once, record_twice):
        # counters say what this cell saw (here every packet twice; a real cell gets one copy)
        for name in ("role", "primary_packets", "primary_bytes", "mirror_packets", "mirror_bytes",
                     "packets", "bytes"):  # fmt: skip
            record.pop(name)
    assert record_once == record_twice
    assert record_once["state"] == "TIME_WAIT"


def test_strict_mirror_does_not_take_state_from_a_copy_the_primary_would_drop():
    tracker, conv = ConnTracker(STRICT), Conversation()
    entry = established(tracker, conv, mirror=True)
    bogus_fin = conv.packet(True, TCP_FIN | TCP_ACK, seq=conv.client_next + (1 << 30), advance=False)
    assert tracker.process(bogus_fin, True, NOW) is ABSORB
    assert entry.state is ConnState.ESTABLISHED
    assert tracker.counters()["mirror_rejected_out_of_window"] == 1


# --- other protocols --------------------------------------------------------------------
def test_udp_new_then_replied():
    tracker = ConnTracker()
    request = info_of(build_udp_frame(CLIENT, SERVER, 5353, 53, b"q"))
    reply = info_of(build_udp_frame(SERVER, CLIENT, 53, 5353, b"a"))
    assert tracker.process(request, False, NOW) is FORWARD
    entry = tracker.get(request.key)
    assert entry.state is ConnState.NEW
    version = entry.version
    tracker.process(request, False, NOW)
    assert entry.version == version
    assert tracker.process(reply, False, NOW) is FORWARD
    assert entry.state is ConnState.REPLIED and entry.version == version + 1
    tracker.process(reply, True, NOW)
    assert entry.version == version + 1 and entry.mirror_packets == 1


@pytest.mark.parametrize("frame", [
    build_icmp_frame(CLIENT, SERVER),
    build_icmp_frame("2001:db8::1", "2001:db8::2"),
    build_ip_frame(CLIENT, SERVER, 47, b"\0" * 8),
], ids=["icmp", "icmpv6", "gre"])  # fmt: skip
def test_other_protocols_are_tracked_by_address_pair(frame):
    tracker = ConnTracker()
    info = info_of(frame)
    assert tracker.process(info, False, NOW) is FORWARD
    assert tracker.get(info.key).state is ConnState.NEW


def test_ipv6_tcp_handshake():
    tracker = ConnTracker(STRICT)
    conv = Conversation(client="2001:db8::10", server="2001:db8::20")
    assert established(tracker, conv).state is ConnState.ESTABLISHED


# --- verdicts, policy, limits --------------------------------------------------------------
def test_admit_policy_denies_a_flow_and_its_later_packets():
    tracker = ConnTracker(admit=lambda info: info.dport != 23)
    conv = Conversation(server_port=23)
    syn = conv.syn()
    assert tracker.process(syn, False, NOW) is DROP_DENIED
    entry = tracker.get(syn.key)
    assert entry.verdict is FlowVerdict.DENY and entry.dropped_packets == 1
    assert tracker.process(conv.syn_ack(), True, NOW) is ABSORB
    assert entry.state is ConnState.SYN_SENT  # denied flows do not advance
    assert tracker.counters()["dropped_denied"] == 1


def test_set_verdict_bumps_the_version_and_drops_later_packets():
    tracker, conv = ConnTracker(), Conversation()
    entry = established(tracker, conv)
    tracker.take_changes()
    version = entry.version
    assert tracker.set_verdict(entry.key, FlowVerdict.DENY)
    assert entry.version == version + 1 and tracker.take_changes() == [entry.key]
    assert tracker.process(conv.packet(True, TCP_ACK), False, NOW) is DROP_DENIED
    assert tracker.set_verdict(entry.key, FlowVerdict.DENY) and entry.version == version + 1
    assert not tracker.set_verdict(Conversation(client_port=1).syn().key, FlowVerdict.DENY)


def test_table_full_drops_new_flows_only():
    tracker = ConnTracker(TrackerConfig(max_flows=1))
    conv = Conversation()
    established(tracker, conv)
    assert tracker.process(Conversation(client_port=40001).syn(), False, NOW) is DROP_TABLE_FULL
    assert tracker.process(conv.packet(True, TCP_ACK), False, NOW) is FORWARD
    assert len(tracker) == 1


def test_config_rejects_impossible_values():
    with pytest.raises(ValueError, match="window_scale"):
        TrackerConfig(window_scale=15)
    with pytest.raises(ValueError, match="max_flows"):
        TrackerConfig(max_flows=0)


def test_take_changes_reports_each_changed_flow_once():
    tracker = ConnTracker()
    first, second = Conversation(), Conversation(client_port=40001)
    tracker.process(first.syn(), False, NOW)
    tracker.process(second.syn(), False, NOW)
    tracker.process(first.syn_ack(), False, NOW)
    assert tracker.take_changes() == [first.syn().key, second.syn().key]
    assert tracker.take_changes() == []
    tracker.process(first.syn_ack(), False, NOW)  # a repeat changes nothing
    assert tracker.take_changes() == []


# --- expiry -----------------------------------------------------------------------------------
def test_expiry_uses_per_state_timeouts():
    timeouts = Timeouts(syn_sent=5, established=1000, udp_new=10, udp_replied=50)
    tracker = ConnTracker(TrackerConfig(timeouts=timeouts))
    conv, half_open = Conversation(), Conversation(client_port=40001)
    established(tracker, conv, now=0.0)
    tracker.process(half_open.syn(), False, 0.0)
    udp = info_of(build_udp_frame(CLIENT, SERVER, 5353, 53))
    tracker.process(udp, False, 0.0)
    assert tracker.expire(4.0) == []
    assert tracker.expire(6.0) == [half_open.syn().key]
    assert tracker.expire(11.0) == [udp.key]
    assert tracker.expire(999.0) == []
    assert tracker.process(conv.packet(True, TCP_ACK), False, 999.0) is FORWARD  # refreshes last_seen
    assert tracker.expire(1998.0) == []
    assert tracker.expire(2000.0) == [conv.syn().key]
    assert len(tracker) == 0 and tracker.counters()["flows_expired"] == 3


def _idle_udp_flows(tracker, count, now=0.0):
    infos = [info_of(build_udp_frame(CLIENT, SERVER, 10000 + index, 53)) for index in range(count)]
    for info in infos:
        tracker.process(info, False, now)
    return [info.key for info in infos]


def test_a_sliced_sweep_checks_every_flow_once_over_several_calls():
    tracker = ConnTracker(TrackerConfig(timeouts=Timeouts(udp_new=10)))
    keys = _idle_udp_flows(tracker, 25)
    assert not tracker.sweeping
    removed = []
    calls = 0
    while True:
        removed += tracker.expire(20.0, limit=10)
        calls += 1
        if not tracker.sweeping:
            break
    assert calls == 3 and removed == keys and len(tracker) == 0
    assert tracker.counters()["flows_expired"] == 25
    assert tracker.expire(40.0, limit=10) == [] and not tracker.sweeping  # an empty table: a sweep ends at once


def test_a_sweep_skips_flows_gone_since_it_began_and_leaves_new_ones_to_the_next():
    tracker = ConnTracker(TrackerConfig(timeouts=Timeouts(udp_new=10)))
    keys = _idle_udp_flows(tracker, 4)
    assert tracker.expire(20.0, limit=2) == keys[:2] and tracker.sweeping
    newcomer = info_of(build_udp_frame(CLIENT, SERVER, 30000, 53))
    tracker.process(newcomer, False, 0.0)  # as idle as the others, but after the sweep began
    assert tracker.merge([removal_record(keys[2], 1)], 20.0) == 1  # another cell removed it
    assert tracker.expire(20.0, limit=2) == [keys[3]] and not tracker.sweeping
    assert newcomer.key in tracker
    assert tracker.expire(20.0, limit=2) == [newcomer.key]


def test_tombstones_leave_in_the_order_they_expire_even_when_one_is_renewed():
    tracker = ConnTracker(TrackerConfig(timeouts=Timeouts(udp_new=1), tombstone_ttl_s=10))
    first, second = _idle_udp_flows(tracker, 2)
    assert tracker.expire(5.0) == [first, second]  # tombstones until 15
    tracker.process(info_of(build_udp_frame(CLIENT, SERVER, 10000, 53)), False, 8.0)  # first comes back
    assert tracker.expire(12.0) == [first]  # and leaves again: its tombstone now lasts until 22
    tracker.expire(16.0)
    assert tracker.counters()["tombstones"] == 1  # second's is gone, first's renewed one stays
    tracker.expire(23.0)
    assert tracker.counters()["tombstones"] == 0


def test_expired_flows_are_not_reported_as_changed():
    tracker = ConnTracker(TrackerConfig(timeouts=Timeouts(syn_sent=1)))
    info = Conversation().syn()
    tracker.process(info, False, 0.0)
    assert tracker.expire(5.0) == [info.key]
    assert tracker.take_changes() == []
