"""State mode in the cells: progress records, takeover within the replicated window, milestones, per-flow seeds."""

import random

from cell_helpers import Conversation
from prism.mgmt import protocol as mgmt
from prism.cell.conntrack import Timeouts
from prism.cell.smm import PROGRESS_REFRESH_SHARE, SmmSettings
from prism.flows.identity import TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST, parse_frame
from testkit.packets import build_udp_frame
from smm_helpers import FakeNetwork, SmmBed, flow_state, mirror_copy

PROFILE = 7
INTERVAL = 0.5
DATA = b"d" * 1000


def state_bed(cells=3, network=None, timeouts=None, **directory):
    bed = SmmBed(cells, network, timeouts=timeouts)
    bed.directory(live=list(bed.smms), state_interval_s=INTERVAL, **directory)
    bed.profiles({PROFILE: ("c1", ["c2"])})
    return bed


def handshake(bed, conv, primary="c1", mirrors=("c2",)):
    for frame in (conv.frame(True, 0x02, seq=conv.client_isn, ack=0, advance=False),
                  conv.frame(False, 0x12, seq=conv.server_isn, advance=False),
                  conv.frame(True, TCP_ACK)):  # fmt: skip
        assert bed.send_state_mode(frame, primary, mirrors)


def transfer(bed, conv, segments, primary="c1", mirrors=("c2",)):
    """``segments`` data segments from the client, each acknowledged by the server."""
    for _ in range(segments):
        assert bed.send_state_mode(conv.frame(True, TCP_ACK | TCP_PSH, DATA), primary, mirrors)
        assert bed.send_state_mode(conv.frame(False, TCP_ACK), primary, mirrors)


def open_state_flow(bed, port=40000):
    conv = Conversation(client_port=port)
    bed.assign([conv], PROFILE, mgmt.MODE_STATE)
    handshake(bed, conv)
    return conv


# --- progress records --------------------------------------------------------------------
def test_a_state_mirror_learns_positions_and_counters_from_progress_records():
    bed = state_bed(takeover_tolerance_bytes=16_000)  # 40 frames of 22 kB: more than half of it
    conv = open_state_flow(bed)
    bed.run_until_quiet()
    transfer(bed, conv, 20)
    mirror = bed.cells["c2"].tracker.get(conv.syn().key)
    assert mirror.mirror_packets == 2  # the SYN and the SYN-ACK: the ACK and the data are not copied
    bed.run(INTERVAL + 0.1)
    bed.run_until_quiet()
    primary = bed.cells["c1"].tracker.get(conv.syn().key)
    assert mirror.orig.seq_end == primary.orig.seq_end == conv.client_next
    assert mirror.reply.ack_max == primary.reply.ack_max
    assert (mirror.packets, mirror.bytes) == (primary.packets, primary.bytes) == (43, primary.primary_bytes)
    assert mirror.last_seen == primary.last_seen and mirror.token == primary.token != 0
    assert flow_state(bed.records("c2")[conv.syn().key.flow_id]) == flow_state(bed.records("c1")[conv.syn().key.flow_id])
    assert bed.smms["c1"].replication_counters()["progress_records"] == 1


def test_a_slow_state_flow_sends_no_progress_record_while_its_mirrors_need_none():
    bed = state_bed()  # the default tolerance (16 MiB) and timeouts (established: 3600 s)
    conv = open_state_flow(bed)
    bed.run_until_quiet()
    for _ in range(12):  # 3 s of a slow flow: not one record an interval any more
        transfer(bed, conv, 2)
        bed.run(0.25)
    bed.run(INTERVAL)
    assert bed.smms["c1"].replication_counters()["progress_records"] == 0
    mirror = bed.cells["c2"].tracker.get(conv.syn().key)
    assert mirror.orig.seq_end < conv.client_next  # what a takeover may lose: within the tolerance


def test_progress_records_go_before_the_mirrors_idle_expiry_and_only_for_flows_that_moved():
    timeouts = Timeouts(established=4.0)  # a record is due 2 s after the last_seen the mirror holds
    bed = state_bed(timeouts=timeouts)
    moving, idle = open_state_flow(bed, 40000), open_state_flow(bed, 40001)
    bed.run_until_quiet()
    for _ in range(28):  # 7 s of traffic on one flow, 2 segments per 0.25 s
        transfer(bed, moving, 2)
        bed.run(0.25)
    progress = bed.smms["c1"].replication_counters()["progress_records"]
    refresh = timeouts.established * PROGRESS_REFRESH_SHARE
    assert int(7.0 / (refresh + INTERVAL)) <= progress <= int(7.0 / refresh)  # one per 2 s (+ the look's lateness)
    assert bed.smms["c2"].replication_counters()["progress_records"] == 0  # mirrors never send
    mirror = bed.cells["c2"].tracker.get(moving.syn().key)
    assert mirror is not None and bed.now - mirror.last_seen < refresh + INTERVAL + 0.25  # never expired
    assert bed.cells["c2"].tracker.get(idle.syn().key) is None  # it expired here as at its primary
    assert bed.cells["c1"].tracker.get(idle.syn().key) is None


def test_full_mode_flows_send_no_progress_records():
    bed = state_bed()
    conv = Conversation()
    bed.assign([conv], PROFILE)  # no mode: full
    handshake(bed, conv)
    transfer(bed, conv, 10)
    bed.run(2.0)
    assert bed.smms["c1"].replication_counters()["progress_records"] == 0


def test_a_flow_that_moves_more_than_half_the_tolerance_is_recorded_at_the_next_tick():
    bed = state_bed(takeover_tolerance_bytes=8000)
    conv = open_state_flow(bed)
    bed.run_until_quiet()
    bed.step()
    transfer(bed, conv, 5)  # 5 x 1054 B of frames from the client alone: more than 4000
    bed.step()
    assert bed.smms["c1"].replication_counters()["progress_records"] == 1
    bed.run_until_quiet()
    assert bed.cells["c2"].tracker.get(conv.syn().key).orig.seq_end == conv.client_next


def test_records_repeated_or_reordered_and_copies_seen_twice_change_nothing():
    network = FakeNetwork(random.Random(5), loss=0.1, duplicate=0.3, reorder=0.3)
    bed = state_bed(network=network)
    conversations = [open_state_flow(bed, 41000 + index) for index in range(10)]
    for _ in range(6):
        for conv in conversations:
            transfer(bed, conv, 3)
        bed.run(0.3)
    fins = []
    for conv in conversations:  # teardown: the FINs are copied
        fins += [conv.frame(True, TCP_FIN | TCP_ACK), conv.frame(False, TCP_FIN | TCP_ACK)]
        bed.send_state_mode(fins[-2], "c1", ["c2"])
        bed.send_state_mode(fins[-1], "c1", ["c2"])
    bed.run(INTERVAL)
    bed.run_until_quiet()
    primary, mirror = bed.records("c1"), bed.records("c2")
    for flow_id, record in primary.items():
        assert flow_state(mirror[flow_id]) == flow_state(record)
        assert record["state"] == mirror[flow_id]["state"] == "LAST_ACK"
    # every record once more, and every FIN copy once more: nothing changes
    again = [dict(record, schema=2) for record in bed.cells["c1"].tracker.snapshot()]
    assert bed.cells["c2"].tracker.merge(again, bed.now) == 0
    for frame in fins:
        bed.cells["c2"].handle_frame(mirror_copy(frame), bed.now)
    for flow_id, record in primary.items():
        assert flow_state(bed.records("c2")[flow_id]) == flow_state(record)


# --- takeover -----------------------------------------------------------------------------
def test_a_state_mirror_takes_over_within_the_window_and_re_anchors():
    bed = state_bed(takeover_tolerance_bytes=64_000)
    conv = open_state_flow(bed)
    bed.run_until_quiet()  # the handshake's change record
    transfer(bed, conv, 40)  # 44 kB of frames: more than half the tolerance, a record goes
    bed.run(INTERVAL + 0.1)
    bed.run_until_quiet()
    assert bed.smms["c1"].replication_counters()["progress_records"] == 1
    transfer(bed, conv, 20)  # 22 kB more that no record carried: the primary then fails
    key = conv.syn().key
    replicated = bed.cells["c2"].tracker.get(key).packets
    assert bed.send_state_mode(conv.frame(True, TCP_ACK | TCP_PSH, DATA), "c2")  # the mirror forwards
    assert bed.send_state_mode(conv.frame(False, TCP_ACK), "c2")
    entry = bed.cells["c2"].tracker.get(key)
    assert entry.anchor == 0 and entry.orig.seq_end == conv.client_next
    assert entry.packets == replicated + 2  # what it lost: the 40 frames since the last record
    tracker = bed.cells["c2"].tracker.counters()
    assert tracker["flows_taken_over"] == 1 and tracker["flows_reanchored"] == 2
    transfer(bed, conv, 5, primary="c2", mirrors=())


def test_a_taking_over_cell_refuses_packets_beyond_the_tolerance():
    bed = state_bed(takeover_tolerance_bytes=10_000)
    conv = open_state_flow(bed)
    bed.run_until_quiet()
    window = 65535 << 7  # the server's advertised window, at the assumed scale
    far = (conv.client_next + window + 20_000) & 0xFFFFFFFF  # beyond the window + tolerance
    assert not bed.send_state_mode(conv.frame(True, TCP_ACK | TCP_PSH, DATA, seq=far, advance=False), "c2")
    behind = (conv.client_next - window - 20_000) & 0xFFFFFFFF  # older than any window
    assert not bed.send_state_mode(conv.frame(True, TCP_ACK | TCP_PSH, DATA, seq=behind, advance=False), "c2")
    bad_ack = (conv.server_next + window + 20_000) & 0xFFFFFFFF
    assert not bed.send_state_mode(conv.frame(True, TCP_ACK | TCP_PSH, DATA, ack=bad_ack, advance=False), "c2")
    assert bed.cells["c2"].dropped_by_reason == {"out_of_window": 3}
    assert bed.send_state_mode(conv.frame(True, TCP_ACK | TCP_PSH, DATA), "c2")  # the real next one


def test_a_cell_never_takes_over_a_flow_it_never_had():
    bed = state_bed()
    conv = Conversation()
    bed.assign([conv], PROFILE, mgmt.MODE_STATE)
    for flags in (TCP_ACK, TCP_ACK | TCP_PSH, TCP_FIN | TCP_ACK, TCP_RST):
        assert not bed.cells["c3"].handle_frame(conv.frame(True, flags, DATA), bed.now)
    assert bed.cells["c3"].dropped_by_reason == {"no_state": 4}
    assert len(bed.cells["c3"].tracker) == 0


# --- milestones -----------------------------------------------------------------------------
def test_the_primary_reports_each_milestone_once_with_both_directions_counters():
    bed = state_bed(milestones_s=[0.25, 1.0, 4.0])
    conv = open_state_flow(bed)
    transfer(bed, conv, 2)
    bed.run(0.3)
    transfer(bed, conv, 3)
    bed.run(1.0)
    messages = bed.network.controller_messages("milestone")
    reported = [flow for message in messages for flow in message["flows"]]
    flow_id = conv.syn().key.flow_id
    entry = bed.cells["c1"].tracker.get(conv.syn().key)
    assert [flow[:4] for flow in reported] == [[flow_id, 0.25, 7, reported[0][3]],
                                              [flow_id, 1.0, 13, entry.primary_bytes]]  # fmt: skip
    # idle since the segments (sent at 0 s, then at 0.3 s), at the ticks that noticed 0.25 s and 1.0 s
    (idle_1, closing_1), (idle_2, closing_2) = [flow[4:] for flow in reported]
    assert 0.25 <= idle_1 <= 0.35 and 0.65 <= idle_2 <= 0.8 and closing_1 is closing_2 is False
    assert all(message["cell"] == "c1" for message in messages)
    bed.run(3.0)
    reported = [flow for message in bed.network.controller_messages("milestone") for flow in message["flows"]]
    assert [flow[1] for flow in reported] == [0.25, 1.0, 4.0]  # the mirror reports nothing


def test_a_cell_that_takes_over_reports_only_the_milestones_ahead():
    bed = state_bed(milestones_s=[0.25, 1.0, 2.0])
    conv = open_state_flow(bed)
    transfer(bed, conv, 2)
    bed.run(1.2)
    del bed.cells["c1"], bed.smms["c1"]  # the primary's process dies
    bed.directory(live=["c2", "c3"], state_interval_s=INTERVAL, milestones_s=[0.25, 1.0, 2.0])
    transfer(bed, conv, 2, primary="c2", mirrors=())
    bed.run(1.0)
    reported = [(message["cell"], flow[1]) for message in bed.network.controller_messages("milestone")
                for flow in message["flows"]]  # fmt: skip
    assert reported == [("c1", 0.25), ("c1", 1.0), ("c2", 2.0)]


def test_milestones_given_later_apply_to_the_flows_already_forwarded():
    bed = state_bed()
    conv = open_state_flow(bed)
    bed.run(0.5)
    bed.directory(live=list(bed.smms), milestones_s=[1.0])
    bed.run(0.6)
    (message,) = bed.network.controller_messages("milestone")
    assert message["flows"][0][:2] == [conv.syn().key.flow_id, 1.0]


# --- per-flow seeds -------------------------------------------------------------------------
def test_a_per_flow_seed_sends_only_the_listed_flows_and_echoes_them():
    bed = state_bed()
    conversations = [open_state_flow(bed, 42000 + index) for index in range(5)]
    bed.run_until_quiet()
    chosen = [conversations[1].syn().key.flow_id, conversations[3].syn().key.flow_id, 12345]
    bed.control({"type": "seed", "profile_id": PROFILE, "target": "c3", "flows": chosen}, ["c1"])
    bed.run_until_quiet()
    (seeded,) = bed.network.controller_messages("seeded")
    assert seeded == {"type": "seeded", "cell": "c1", "profile_id": PROFILE, "target": "c3",
                      "flows": chosen, "count": 2}  # fmt: skip
    assert sorted(bed.records("c3")) == sorted(chosen[:2])
    bed.control({"type": "seed", "profile_id": PROFILE, "target": "c3"}, ["c1"])  # the whole profile
    bed.run_until_quiet()
    assert bed.network.controller_messages("seeded")[-1]["flows"] == 5


# --- bad input ------------------------------------------------------------------------------
def test_malformed_state_mode_fields_are_counted_and_change_nothing():
    bed = state_bed()
    smm = bed.smms["c1"]
    for bad in ({"milestones_s": [-1]}, {"state_interval_s": 0}, {"takeover_tolerance_bytes": "x"},
                {"milestones_s": "1.0"}):  # fmt: skip
        bed.directory(live=list(bed.smms), **bad)
    conv = Conversation()
    bed.control({"type": "assign", "flows": [[conv.syn().key.flow_id, PROFILE, "", "fast"]]})
    bed.control({"type": "seed", "profile_id": PROFILE, "target": "c3", "flows": ["x"]}, ["c1"])
    assert smm.replication_counters()["bad_messages"] == 6
    assert smm.view.state_interval_s == INTERVAL and smm.view.milestones_s == ()


def test_an_rst_copy_closes_the_mirror_s_entry_and_its_record_changes_nothing_more():
    bed = state_bed()
    conv = open_state_flow(bed)
    transfer(bed, conv, 3)
    bed.run(INTERVAL + 0.1)
    rst = conv.frame(False, TCP_RST | TCP_ACK)
    bed.send_state_mode(rst, "c1", ["c2"])
    assert bed.cells["c2"].tracker.get(conv.syn().key).state.value == "CLOSED"
    bed.run_until_quiet()
    flow_id = conv.syn().key.flow_id
    assert flow_state(bed.records("c2")[flow_id]) == flow_state(bed.records("c1")[flow_id])
    bed.cells["c2"].handle_frame(mirror_copy(rst), bed.now)  # the copy once more
    assert flow_state(bed.records("c2")[flow_id]) == flow_state(bed.records("c1")[flow_id])


def test_a_state_mode_udp_flow_is_kept_alive_and_counted_at_its_mirror_by_progress_records():
    bed = state_bed(timeouts=Timeouts(udp_new=2.0))  # a record is due 1 s after the mirror's last_seen
    frame = build_udp_frame("10.0.0.1", "10.0.0.2", 5000, 53, b"q" * 50)
    key = parse_frame(frame).key
    bed.control({"type": "assign", "flows": [[key.flow_id, PROFILE, "", mgmt.MODE_STATE]]})
    bed.send(frame, "c1", ["c2"])  # the first packet is copied
    for _ in range(16):  # 4 s: twice the mirror's idle timeout
        bed.run(0.25)
        bed.send(frame, "c1")
    bed.run_until_quiet()
    mirror, primary = bed.cells["c2"].tracker.get(key), bed.cells["c1"].tracker.get(key)
    assert mirror is not None and mirror.mirror_packets == 1
    assert primary.packets - mirror.packets <= 1.0 / 0.25 + INTERVAL / 0.25  # at most a refresh behind
    assert primary.last_seen - mirror.last_seen <= 1.0 + INTERVAL
    assert bed.smms["c1"].replication_counters()["progress_records"] >= 3


def test_a_state_flow_whose_assignment_is_forgotten_leaves_the_progress_scan():
    bed = SmmBed(2, settings=SmmSettings(assignment_grace_s=1.0))
    bed.directory(live=["c1", "c2"], state_interval_s=INTERVAL)
    bed.profiles({PROFILE: ("c1", ["c2"])})
    bed.assign([Conversation(client_port=40000 + index) for index in range(3)], PROFILE, mgmt.MODE_STATE)
    assert bed.smms["c1"].describe()["state_flows"] == 3
    bed.run(3.0)  # never seen here: forgotten after the grace period
    assert bed.smms["c1"].describe()["state_flows"] == 0


def test_a_new_connection_on_a_key_gets_its_own_milestones():
    bed = state_bed(milestones_s=[0.25, 30.0])
    conv = open_state_flow(bed)
    bed.run(0.5)
    for frame in (conv.frame(True, TCP_FIN | TCP_ACK), conv.frame(False, TCP_FIN | TCP_ACK),
                  conv.frame(True, TCP_ACK)):  # closed (TIME_WAIT), then the same ports again  # fmt: skip
        bed.send_state_mode(frame, "c1", ["c2"])
    assert bed.cells["c1"].tracker.get(conv.syn().key).state.value == "TIME_WAIT"
    again = Conversation(client_isn=777_000, server_isn=888_000)
    handshake(bed, again)
    assert bed.cells["c1"].tracker.counters()["flows_reopened"] == 1
    bed.run(0.5)
    reported = [(flow[0], flow[1]) for message in bed.network.controller_messages("milestone")
                for flow in message["flows"]]  # fmt: skip
    assert reported == [(conv.syn().key.flow_id, 0.25)] * 2


def test_milestones_say_how_long_a_flow_was_idle_and_whether_it_is_closing():
    bed = state_bed(milestones_s=[0.25, 1.0, 2.0])
    conv = open_state_flow(bed)
    transfer(bed, conv, 2)
    bed.run(0.5)
    for frame in (conv.frame(True, TCP_FIN | TCP_ACK), conv.frame(False, TCP_FIN | TCP_ACK)):
        bed.send_state_mode(frame, "c1", ["c2"])
    closed_at = bed.now
    frame = build_udp_frame("10.0.0.1", "10.0.0.2", 5000, 53, b"q" * 50)
    bed.control({"type": "assign", "flows": [[parse_frame(frame).key.flow_id, PROFILE, "", mgmt.MODE_STATE]]})
    bed.send(frame, "c1", ["c2"])
    udp_at = bed.now
    bed.run(2.2)
    reported = {(flow[0], flow[1]): flow[4:] for message in bed.network.controller_messages("milestone")
                for flow in message["flows"]}  # fmt: skip
    tcp, udp = conv.syn().key.flow_id, parse_frame(frame).key.flow_id
    assert reported[(tcp, 0.25)][1] is False and 0.25 <= reported[(tcp, 0.25)][0] <= 0.35
    idle, closing = reported[(tcp, 2.0)]
    assert closing is True and abs(idle - (_first_seen(bed, tcp) + 2.0 - closed_at)) <= 0.11
    idle, closing = reported[(udp, 1.0)]
    assert closing is False and 1.0 - 0.01 <= idle <= 1.0 + 0.11 and udp_at < bed.now


def _first_seen(bed, flow_id):
    """The first_seen of a tracked flow at its primary."""
    return bed.cells["c1"].tracker.get(bed.cells["c1"].tracker.key_of(flow_id)).first_seen


# --- removal records ------------------------------------------------------------------------
def _teardown(bed, conv, primary="c1", mirrors=("c2",), send=None):
    send = send or bed.send_state_mode
    for frame in (conv.frame(True, TCP_FIN | TCP_ACK), conv.frame(False, TCP_FIN | TCP_ACK),
                  conv.frame(True, TCP_ACK)):  # fmt: skip
        send(frame, primary, list(mirrors))


def test_a_closed_state_flow_gets_no_removal_record_its_mirror_expires_it_itself():
    bed = state_bed(timeouts=Timeouts(time_wait=1.0))
    conv = open_state_flow(bed)
    transfer(bed, conv, 3)
    _teardown(bed, conv)
    bed.run_until_quiet()
    sent = bed.smms["c1"].replication_counters()["records_sent"]
    bed.run(1.5)
    bed.run_until_quiet()
    counters = bed.smms["c1"].replication_counters()
    assert counters["removals_sent"] == 0 and counters["removals_skipped"] == 1
    assert counters["records_sent"] == sent
    key = conv.syn().key
    assert bed.cells["c1"].tracker.get(key) is None and bed.cells["c2"].tracker.get(key) is None
    again = Conversation(client_isn=777_000, server_isn=888_000)  # the same ports again, later
    handshake(bed, again)
    bed.run_until_quiet()
    assert bed.records("c2")[key.flow_id]["token"] == bed.records("c1")[key.flow_id]["token"] != 0


def test_an_idle_state_flow_gets_no_removal_its_mirror_expires_it_no_later_but_full_flows_keep_theirs():
    bed = state_bed(timeouts=Timeouts(established=1.0, time_wait=1.0))
    idle = open_state_flow(bed, 40000)  # ends without FIN or RST
    full = Conversation(client_port=40001)
    bed.assign([full], PROFILE)  # full mode: the mirrors keep their removal record
    for frame in (full.frame(True, 0x02, seq=full.client_isn, ack=0, advance=False),
                  full.frame(False, 0x12, seq=full.server_isn, advance=False), full.frame(True, TCP_ACK)):
        bed.send(frame, "c1", ["c2"])  # fmt: skip
    _teardown(bed, full, send=bed.send)
    gone = {}
    for _ in range(40):  # 2 s: when did each cell drop the idle flow?
        bed.step()
        for cell_id in ("c1", "c2"):
            if bed.cells[cell_id].tracker.get(idle.syn().key) is None:
                gone.setdefault(cell_id, bed.now)
    bed.run_until_quiet()
    counters = bed.smms["c1"].replication_counters()
    assert counters["removals_sent"] == 1 and counters["removals_skipped"] == 1
    assert gone["c2"] <= gone["c1"]  # the mirror's own timer, never later than the primary's
