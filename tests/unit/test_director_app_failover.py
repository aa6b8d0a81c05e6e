"""The Ryu shell's failover wiring: port status, port descriptions, heartbeats, ticks, the UDP channel."""

from __future__ import annotations

import socket
import textwrap
import time
from types import SimpleNamespace

import pytest

pytest.importorskip("ryu")

from ryu.ofproto import ofproto_v1_3, ofproto_v1_3_parser  # noqa: E402

from tests.support import FakeDatapath, director_app  # noqa: E402

from prism.mgmt import protocol as mgmt
from testkit import oxm  # noqa: E402
from prism.director.actions import MgmtMessage  # noqa: E402
from prism.mgmt.auth import MgmtAuth, Verifier  # noqa: E402
from prism.openflow.changes import COOKIE_UNPROTECTED, TABLE_FSC  # noqa: E402

app_module = pytest.importorskip("ryu_apps.mirroring_director")

OFP = ofproto_v1_3
PARSER = ofproto_v1_3_parser
KEY_TEXT = "k" * 64  #: this test's management key (written to its own temporary directory)
KEY = KEY_TEXT.encode()


def open_sealed(datagram: bytes) -> dict:
    """A datagram the controller sent, checked and decoded as a cell would."""
    return mgmt.decode(Verifier(KEY).open(datagram, time.time()).body)


@pytest.fixture
def cell_socket():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(2.0)
    yield sock
    sock.close()


@pytest.fixture
def app(tmp_path, monkeypatch, cell_socket):
    cell_port = cell_socket.getsockname()[1]
    config = textwrap.dedent(f"""\
        default_replication_factor: 1
        management: {{listen: "127.0.0.1:7600", heartbeat_interval: 0.1, dead_after: 0.35,
                      key_file: mgmt.key, generation_file: generation}}
        switches:
          - dpid: 0x1
            cells:
              - {{id: cell1, port: 1, mgmt: "127.0.0.1:{cell_port}"}}
              - {{id: cell2, port: 2, mgmt: "127.0.0.1:{cell_port + 1 if cell_port < 65535 else 1}"}}
              - {{id: cell3, port: 3}}
            edge_ports: [4, 5]
        """)
    instance = director_app(tmp_path, monkeypatch, config, key=KEY_TEXT, mgmt_channel=True)
    yield instance
    if instance.channel is not None:
        instance.channel.close()


def connect_with_flows(app, count=12):
    datapath = FakeDatapath(1)
    app.switch_features_handler(SimpleNamespace(msg=SimpleNamespace(datapath=datapath)))
    for i in range(count):
        frame = oxm.to_frame(oxm.udp_packet("02:00:00:00:00:04", "02:00:00:00:00:05", "10.0.0.4", "10.0.0.5",
                                            40000 + i, 53))  # fmt: skip
        msg = SimpleNamespace(datapath=datapath, match=PARSER.OFPMatch(in_port=4), table_id=TABLE_FSC, data=frame)
        app.packet_in_handler(SimpleNamespace(msg=msg))
    datapath.sent.clear()
    return datapath


def port_desc(port_no, link_down=False, admin_down=False):
    return PARSER.OFPPort(
        port_no=port_no, hw_addr="02:00:00:00:00:01", name=f"s1-eth{port_no}".encode(),
        config=OFP.OFPPC_PORT_DOWN if admin_down else 0, state=OFP.OFPPS_LINK_DOWN if link_down else 0,
        curr=0, advertised=0, supported=0, peer=0, curr_speed=0, max_speed=0,
    )  # fmt: skip


def group_mods(datapath):
    return [m for m in datapath.sent if isinstance(m, PARSER.OFPGroupMod)]


def test_a_cell_link_going_down_rewrites_its_groups_and_seeds_through_the_channel(app, cell_socket):
    datapath = connect_with_flows(app)
    groups = app.directors[1].profiles_naming("cell2")
    assert groups
    msg = SimpleNamespace(datapath=datapath, reason=OFP.OFPPR_MODIFY, desc=port_desc(2, link_down=True))
    app.port_status_handler(SimpleNamespace(msg=msg))
    mods = group_mods(datapath)
    assert len(mods) == 2 * len(groups) and all(m.command == OFP.OFPGC_MODIFY for m in mods)
    assert "cell2" in app.directors[1].down_cells
    received = []
    cell_socket.settimeout(0.5)
    try:
        while True:
            received.append(open_sealed(cell_socket.recv(65535)))
    except socket.timeout:
        pass
    kinds = {m["type"] for m in received}
    assert "profiles" in kinds and "directory" in kinds  # cell1's address; cell3 has none: counted
    assert {m["generation"] for m in received if m["type"] in ("profiles", "directory")} == {app.generation}
    assert app.channel.counts["no_address"] > 0


def test_a_port_found_down_at_connection_and_a_deleted_port_fail_the_cell(app):
    datapath = connect_with_flows(app)
    reply = SimpleNamespace(msg=SimpleNamespace(datapath=datapath, body=[port_desc(1), port_desc(3, admin_down=True)]))
    app.port_desc_handler(reply)
    assert app.directors[1].down_cells == {"cell3"}
    deleted = SimpleNamespace(datapath=datapath, reason=OFP.OFPPR_DELETE, desc=port_desc(1))
    app.port_status_handler(SimpleNamespace(msg=deleted))
    assert app.directors[1].down_cells == {"cell1", "cell3"}


def test_heartbeats_then_silence_fail_the_cell_over_on_a_tick(app):
    datapath = connect_with_flows(app)
    groups = app.directors[1].profiles_naming("cell1")
    for seq in range(5):
        app.control.on_mgmt_message({"type": "heartbeat", "cell": "cell1", "seq": seq}, ("127.0.0.1", 1), 100.0)
    app.tick(100.2)
    assert group_mods(datapath) == []
    app.tick(100.5)
    assert len(group_mods(datapath)) == 2 * len(groups)
    assert app.directors[1].last_failover.kind == "process"


def test_a_heartbeat_datagram_travels_the_channel(app):
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    cell1 = MgmtAuth(KEY, "cell1")
    try:
        sealed = cell1.seal(mgmt.encode({"type": "heartbeat", "cell": "cell1", "seq": 1}), time.time())
        sender.sendto(sealed, app.channel.address)
        sender.sendto(b"garbage", app.channel.address)
        message, source = app.channel.receive()
        app.handle_mgmt_message(message, source)
        assert app.channel.receive() is None and app.channel.auth_counts()["refused_malformed"] == 1
    finally:
        sender.close()
    assert app.control.detector.health("cell1").heartbeat_seen


def test_forged_replayed_and_impersonating_datagrams_are_refused_and_counted(app):
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    heartbeat = mgmt.encode({"type": "heartbeat", "cell": "cell1", "seq": 1})
    genuine = MgmtAuth(KEY, "cell1").seal(heartbeat, time.time())
    try:
        for datagram in (
            MgmtAuth(b"x" * 64, "cell1").seal(heartbeat, time.time()),  # another key
            MgmtAuth(KEY, "cell2").seal(heartbeat, time.time()),  # cell2 claiming to be cell1
            genuine, genuine,  # the second is a replay
        ):
            sender.sendto(datagram, app.channel.address)
        results = [app.channel.receive() for _ in range(4)]
    finally:
        sender.close()
    assert [result is None for result in results] == [True, True, False, True]
    counts = app.channel.auth_counts()
    assert (counts["refused_bad_tag"], counts["refused_wrong_sender"], counts["refused_replayed"]) == (1, 1, 1)
    assert counts["accepted"] == 1


def test_the_drain_of_the_socket_authenticates_issue_8_and_9_messages_too(app):
    """``receive_pending`` (what the app's loop and tick read with) opens every datagram like ``receive``."""
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    cell1, forger = MgmtAuth(KEY, "cell1"), MgmtAuth(b"x" * 64, "cell1")
    milestone = mgmt.encode({"type": "milestone", "cell": "cell1", "flows": [[1, 0.25, 3, 300]]})
    path_down = mgmt.encode({"type": "heartbeat", "cell": "cell1", "seq": 1, "path_down": "draining"})
    try:
        for body in (milestone, path_down):
            sender.sendto(forger.seal(body, time.time()), app.channel.address)
            sender.sendto(cell1.seal(body, time.time()), app.channel.address)
        deadline = time.monotonic() + 2.0
        received = []
        while len(received) < 2 and time.monotonic() < deadline:
            received += app.channel.receive_pending()
    finally:
        sender.close()
    assert [message["type"] for message, _, _ in received] == ["milestone", "heartbeat"]
    assert received[1][0]["path_down"] == "draining"
    counts = app.channel.auth_counts()
    assert (counts["refused_bad_tag"], counts["accepted"]) == (2, 2) and app.channel.drained


def test_control_plane_failures_are_caught_and_counted(app, monkeypatch):
    def explode(*args):
        raise RuntimeError("boom")

    monkeypatch.setattr(app.control, "tick", explode)
    app.tick(1.0)
    assert app.handler_errors["tick"] == 1
    app.handle_mgmt_message({"type": "heartbeat"}, ("127.0.0.1", 1))  # no cell: counted, not raised
    assert app.control.counts["mgmt_unknown_sender"] == 1


def test_changes_for_a_disconnected_switch_and_messages_before_binding_are_counted(app):
    app.channel.close()
    app.channel = None
    app.send_outgoing([MgmtMessage("cell1", {"type": "drain", "target": "cell1"})])
    app.drain_cell("cell1")
    assert app.unsent["mgmt_channel_not_bound"] >= 1
    assert app.unsent["switch_not_connected"] == 0  # no flows yet: nothing for the switch


def test_a_second_connection_for_a_live_switch_is_refused_and_its_events_ignored(app):
    first = connect_with_flows(app, count=1)
    first.is_active = True
    second = FakeDatapath(1)
    second.is_active, second.closed = True, False
    second.close = lambda: setattr(second, "closed", True)
    app.switch_features_handler(SimpleNamespace(msg=SimpleNamespace(datapath=second)))
    assert second.closed and app.datapaths[1] is first and second.sent == []
    packet_ins = app.directors[1].counters.packet_ins
    frame = oxm.to_frame(oxm.udp_packet("02:00:00:00:00:04", "02:00:00:00:00:05", "10.0.0.4", "10.0.0.5", 999, 53))
    msg = SimpleNamespace(datapath=second, match=PARSER.OFPMatch(in_port=4), table_id=TABLE_FSC, data=frame)
    app.packet_in_handler(SimpleNamespace(msg=msg))
    down = SimpleNamespace(datapath=second, reason=OFP.OFPPR_MODIFY, desc=port_desc(2, link_down=True))
    app.port_status_handler(SimpleNamespace(msg=down))
    assert app.directors[1].counters.packet_ins == packet_ins and second.sent == []
    assert app.directors[1].down_cells == frozenset() and app.duplicate_connections[1] == 3
    first.is_active = False  # the first connection died: a new one takes its place
    app.switch_features_handler(SimpleNamespace(msg=SimpleNamespace(datapath=second)))
    assert app.datapaths[1] is second


def test_a_refused_group_rolls_the_director_back_and_shows_in_the_status(app):
    from ryu_apps.rest_api import status_document

    datapath = connect_with_flows(app, count=3)
    group_id = next(iter(app.directors[1].groups))
    refused = PARSER.OFPGroupMod(datapath, OFP.OFPGC_ADD, OFP.OFPGT_ALL, group_id, [])
    refused.serialize()
    error = SimpleNamespace(datapath=datapath, type=OFP.OFPET_GROUP_MOD_FAILED, code=OFP.OFPGMFC_OUT_OF_GROUPS,
                            data=bytes(refused.buf)[:64])  # fmt: skip
    app.error_handler(SimpleNamespace(msg=error))
    assert group_id not in app.directors[1].groups
    sent = [m for m in datapath.sent if isinstance(m, PARSER.OFPFlowMod)]
    assert sent and all(m.cookie == COOKIE_UNPROTECTED for m in sent)
    status = status_document(app, time.time())
    assert status["groups_refused"] == 1 and status["flows_unprotected"] == len(sent) // 2
    assert status["switch_errors"] == {f"{OFP.OFPET_GROUP_MOD_FAILED:#x}/{OFP.OFPGMFC_OUT_OF_GROUPS:#x}": 1}


def test_the_status_lists_the_switches_connected_now(app):
    from ryu_apps.rest_api import status_document

    assert status_document(app, time.time())["switches_connected"] == []
    datapath = connect_with_flows(app, count=0)
    assert status_document(app, time.time())["switches_connected"] == ["0000000000000001"]
    app.state_change_handler(SimpleNamespace(datapath=datapath))
    assert status_document(app, time.time())["switches_connected"] == []


def test_a_table_that_takes_long_to_read_is_saved_less_often(app, monkeypatch):
    connect_with_flows(app, count=3)
    app.save_placements()
    assert app.placement_save_interval_s == app_module.PLACEMENT_SAVE_S  # three flows read in no time
    monkeypatch.setattr(app_module, "PLACEMENT_SAVE_SHARE", 1e-12)  # as if reading took the whole loop
    app.save_placements()
    assert app.placement_save_interval_s > app_module.PLACEMENT_SAVE_S


def test_a_restarted_controller_loads_the_placements_its_predecessor_saved(app):
    connect_with_flows(app, count=3)
    app.save_placements()
    restarted = app_module.MirroringDirectorApp()
    assert restarted.generation > app.generation
    memory = restarted.directors[1].memory
    assert len(memory) == 3
    flow = next(iter(app.directors[1].flows))
    assert memory.recall(flow.flow_id, time.time(), {"cell1", "cell2", "cell3"}) == flow.profile.cells
