"""The Ryu shell: configuration at start, events to the director, messages out, exceptions contained."""

from __future__ import annotations

import textwrap
from types import SimpleNamespace

import pytest

pytest.importorskip("ryu")

from ryu.ofproto import ofproto_v1_3, ofproto_v1_3_parser  # noqa: E402

from tests.support import FakeDatapath, director_app  # noqa: E402

from testkit import oxm  # noqa: E402
from prism.openflow.changes import TABLE_FSC  # noqa: E402

app_module = pytest.importorskip("ryu_apps.mirroring_director")

OFP = ofproto_v1_3
PARSER = ofproto_v1_3_parser
CONFIG = textwrap.dedent("""\
    idle_timeout: 7
    default_replication_factor: 1
    switches:
      - dpid: 0x1
        cells:
          - {id: cell1, port: 1}
          - {id: cell2, port: 2}
        edge_ports: [4, 5]
    """)


@pytest.fixture
def app(tmp_path, monkeypatch):
    return director_app(tmp_path, monkeypatch, CONFIG)


def _event(**fields):
    return SimpleNamespace(msg=SimpleNamespace(**fields))


def _packet_in(datapath, in_port, table_id, data):
    return _event(datapath=datapath, match=PARSER.OFPMatch(in_port=in_port), table_id=table_id, data=data)


def test_a_missing_or_bad_configuration_stops_the_app_with_the_problem(tmp_path, monkeypatch):
    monkeypatch.delenv(app_module.CONFIG_ENV, raising=False)
    with pytest.raises(SystemExit, match=app_module.CONFIG_ENV):
        app_module.MirroringDirectorApp()
    path = tmp_path / "bad.yaml"
    path.write_text(CONFIG.replace("idle_timeout: 7", "idle_timeout: 7\ncolour: blue"))
    monkeypatch.setenv(app_module.CONFIG_ENV, str(path))
    with pytest.raises(SystemExit) as stopped:
        app_module.MirroringDirectorApp()
    assert "bad.yaml:2" in str(stopped.value) and "colour" in str(stopped.value)


def test_a_connecting_switch_is_converged_to_the_pipeline(app):
    datapath = FakeDatapath(1)
    app.switch_features_handler(_event(datapath=datapath))
    kinds = [type(m).__name__ for m in datapath.sent]
    assert kinds[:3] == ["OFPFlowMod", "OFPGroupMod", "OFPBarrierRequest"]
    assert datapath.sent[0].command == OFP.OFPFC_DELETE and datapath.sent[1].group_id == OFP.OFPG_ALL
    assert len(datapath.sent) == 3 + len(app.directors[1].pipeline()) + 1
    assert type(datapath.sent[-1]).__name__ == "OFPPortDescStatsRequest"  # the cell ports' link state
    assert app.directors[1].idle_timeout == 7


def test_switches_not_in_the_configuration_are_ignored(app):
    datapath = FakeDatapath(99)
    app.switch_features_handler(_event(datapath=datapath))
    app.packet_in_handler(_packet_in(datapath, 4, TABLE_FSC, b"\x00" * 60))
    assert datapath.sent == [] and app.ignored_switches[99] == 2


def test_a_new_flow_sends_groups_entries_and_the_first_packet(app):
    datapath = FakeDatapath(1)
    app.switch_features_handler(_event(datapath=datapath))
    datapath.sent.clear()
    frame = oxm.to_frame(
        oxm.udp_packet("02:00:00:00:00:04", "02:00:00:00:00:05", "10.0.0.4", "10.0.0.5", 1, 2)
    )
    app.packet_in_handler(_packet_in(datapath, 4, TABLE_FSC, frame))
    kinds = [type(m).__name__ for m in datapath.sent]
    assert kinds == ["OFPFlowMod", "OFPGroupMod", "OFPGroupMod", "OFPFlowMod", "OFPFlowMod", "OFPPacketOut"]
    assert datapath.sent[-1].data == frame
    assert app.directors[1].counters.flows_total == 1


def test_garbage_and_failing_handlers_never_escape(app, monkeypatch):
    datapath = FakeDatapath(1)
    app.packet_in_handler(_packet_in(datapath, 4, TABLE_FSC, b"\xff" * 7))
    assert datapath.sent == [] and app.handler_errors == {}
    app.packet_in_handler(_event(datapath=datapath, match=PARSER.OFPMatch(), table_id=1, data=b""))
    assert app.handler_errors["packet_in"] == 1, "a packet-in without in_port is caught and counted"

    def explode(*args):
        raise RuntimeError("boom")

    monkeypatch.setattr(app.directors[1], "on_flow_removed", explode)
    app.flow_removed_handler(
        _event(datapath=datapath, cookie=1, match=PARSER.OFPMatch(), packet_count=0, byte_count=0,
               duration_sec=1, duration_nsec=0)
    )  # fmt: skip
    assert app.handler_errors["flow_removed"] == 1


def test_flow_removed_reaches_the_director_with_a_plain_match(app, monkeypatch):
    calls = []
    monkeypatch.setattr(app.directors[1], "on_flow_removed", lambda *args: calls.append(args) or [])
    match = PARSER.OFPMatch(eth_type=0x0800, ip_proto=17, ipv4_src="10.0.0.4", ipv4_dst="10.0.0.5")
    app.flow_removed_handler(
        _event(datapath=FakeDatapath(1), cookie=42, match=match, packet_count=3, byte_count=300,
               duration_sec=2, duration_nsec=500_000_000)
    )  # fmt: skip
    ((_now, cookie, fields, packets, byte_count, duration_s),) = calls
    assert (cookie, packets, byte_count, duration_s) == (42, 3, 300, 2.5)
    assert fields == {"eth_type": 0x0800, "ip_proto": 17, "ipv4_src": "10.0.0.4", "ipv4_dst": "10.0.0.5"}


def test_switch_errors_are_counted(app):
    msg = SimpleNamespace(datapath=FakeDatapath(1), type=OFP.OFPET_GROUP_MOD_FAILED, code=0, data=b"\x04")
    app.error_handler(SimpleNamespace(msg=msg))
    assert app.switch_errors[(OFP.OFPET_GROUP_MOD_FAILED, 0)] == 1
