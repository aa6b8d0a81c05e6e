"""The controller benchmark's scripted switch speaks OpenFlow 1.3 as Ryu reads it, and counts answers right."""

from __future__ import annotations

import socket
import threading

import pytest

pytest.importorskip("ryu")

from ryu.ofproto import ofproto_parser, ofproto_protocol, ofproto_v1_3, ofproto_v1_3_parser  # noqa: E402

from benchmarks.harness import openflow_wire as wire  # noqa: E402
from benchmarks.harness.openflow_peer import NewFlow, PeerError, PeerProtocol, ScriptedSwitch  # noqa: E402
from prism.config.load import CellConfig, SwitchConfig  # noqa: E402
from prism.director.core import MirroringDirector  # noqa: E402
from prism.openflow.changes import COOKIE_PIPELINE, TABLE_FSC  # noqa: E402
from testkit.packets import build_tcp_frame, build_udp_frame  # noqa: E402
from prism.policy.base import FixedPolicy  # noqa: E402
from prism.placement.ring import HashRing  # noqa: E402
from ryu_apps.ofmsg import to_ofmsgs  # noqa: E402

OFP = ofproto_v1_3
PARSER = ofproto_v1_3_parser
DP_ID = 0x1
EDGE_PORT = 4
FRAME_A = build_tcp_frame("172.31.0.1", "172.31.255.1", 20000, 443)
FRAME_B = build_udp_frame("172.31.0.2", "172.31.255.1", 20001, 53, b"q")


@pytest.fixture
def datapath():
    return ofproto_protocol.ProtocolDesc(OFP.OFP_VERSION)


def ryu_parse(datapath, message: bytes):
    """What Ryu's own receive loop makes of ``message``."""
    version, msg_type, length, xid = ofproto_parser.header(message)
    return ofproto_parser.msg(datapath, version, msg_type, length, xid, bytearray(message))


def serialized(messages) -> bytes:
    out = b""
    for xid, message in enumerate(messages, start=100):
        message.set_xid(xid)
        message.serialize()
        out += bytes(message.buf)
    return out


def packet_out(datapath, frame: bytes):
    return PARSER.OFPPacketOut(datapath, buffer_id=OFP.OFP_NO_BUFFER, in_port=EDGE_PORT,
                               actions=[PARSER.OFPActionOutput(5)], data=frame)  # fmt: skip


def flow_mod(datapath, table_id: int):
    return PARSER.OFPFlowMod(datapath, table_id=table_id, match=PARSER.OFPMatch(in_port=EDGE_PORT), instructions=[])


def test_packet_in_parses_with_ryu_as_the_director_reads_it(datapath):
    message = wire.packet_in(FRAME_A, EDGE_PORT, TABLE_FSC, COOKIE_PIPELINE, xid=7)
    msg = ryu_parse(datapath, message)
    assert isinstance(msg, PARSER.OFPPacketIn)
    assert (msg.match["in_port"], msg.table_id, msg.cookie, msg.xid) == (EDGE_PORT, TABLE_FSC, COOKIE_PIPELINE, 7)
    assert (msg.buffer_id, msg.total_len, msg.reason) == (OFP.OFP_NO_BUFFER, len(FRAME_A), OFP.OFPR_NO_MATCH)
    assert bytes(msg.data) == FRAME_A


def test_handshake_messages_parse_with_ryu(datapath):
    hello = ryu_parse(datapath, wire.hello(1))
    assert isinstance(hello, PARSER.OFPHello)
    assert OFP.OFP_VERSION in hello.elements[0].versions
    features = ryu_parse(datapath, wire.features_reply(2, 0xABCDEF))
    assert (features.datapath_id, features.xid) == (0xABCDEF, 2)
    ports = ryu_parse(datapath, wire.port_desc_reply(3, [1, 2, 4], DP_ID))
    assert isinstance(ports, PARSER.OFPPortDescStatsReply)
    assert [(p.port_no, p.state, p.config) for p in ports.body] == [(1, 0, 0), (2, 0, 0), (4, 0, 0)]
    echo = ryu_parse(datapath, wire.echo_reply(4, b"abc"))
    assert (echo.xid, bytes(echo.data)) == (4, b"abc")


def test_peer_answers_requests_and_attributes_mods_to_the_packet_out_that_ends_them(datapath):
    protocol = PeerProtocol(DP_ID, [1, 2, 4])
    protocol.begin([FRAME_A, FRAME_B])
    echo = PARSER.OFPEchoRequest(datapath, data=b"ping")
    stream = serialized([
        flow_mod(datapath, 1), flow_mod(datapath, 1), PARSER.OFPBarrierRequest(datapath),
        packet_out(datapath, FRAME_A),
        echo, packet_out(datapath, b"not a frame the peer sent"),
        PARSER.OFPGroupMod(datapath, group_id=0x10000), flow_mod(datapath, 0), packet_out(datapath, FRAME_B),
        PARSER.OFPPortDescStatsRequest(datapath, 0),
    ])  # fmt: skip
    replies = b"".join(protocol.receive(stream[i : i + 7], now_ns=i) for i in range(0, len(stream), 7))

    assert [(c.index, c.flow_mods, c.group_mods) for c in protocol.completions] == [(0, 2, 0), (1, 1, 1)]
    assert protocol.waiting == 0
    assert protocol.unexpected_packet_outs == 1
    assert protocol.flow_mod_tables == {1: 2, 0: 1}
    answered = [ryu_parse(datapath, m) for m in wire.split_messages(replies)]
    assert [type(m).__name__ for m in answered] == ["OFPBarrierReply", "OFPEchoReply", "OFPPortDescStatsReply"]
    assert answered[0].xid == 102 and bytes(answered[1].data) == b"ping"


def test_peer_counts_the_directors_real_answer_to_a_new_flow(datapath):
    switch = SwitchConfig(dp_id=DP_ID, name="s1", edge_ports=(EDGE_PORT, 5),
                          cells=(CellConfig(id="c1", port=1), CellConfig(id="c2", port=2)))  # fmt: skip
    director = MirroringDirector(switch, 10, FixedPolicy(HashRing(["c1", "c2"]), 1))
    director.on_switch_connect(0.0)
    protocol = PeerProtocol(DP_ID, [1, 2, EDGE_PORT, 5])
    for frame in (FRAME_A, FRAME_B):  # the first new flow also learns the host and creates a group
        protocol.begin([frame])
        changes = director.on_packet_in(1.0, EDGE_PORT, TABLE_FSC, frame)
        protocol.receive(serialized(to_ofmsgs(datapath, changes)), now_ns=1)
        assert len(protocol.completions) == 1
    assert protocol.completions[0].flow_mods == 2  # the two FSC entries; no host entry (learnt before)
    assert protocol.flow_mod_tables[TABLE_FSC] == 4


def test_reader_refuses_another_version():
    with pytest.raises(wire.WireError, match="not an OpenFlow 1.3 message"):
        wire.MessageReader().feed(b"\x01\x00\x00\x08\x00\x00\x00\x01")


def _fake_controller(sock: socket.socket, answer_every: int) -> None:
    """Answers packet-ins with a flow mod and a packet-out, except each ``answer_every``-th (dropped)."""
    datapath = ofproto_protocol.ProtocolDesc(OFP.OFP_VERSION)
    reader = wire.MessageReader()
    seen = 0
    while True:
        data = sock.recv(65536)
        if not data:
            return
        for message in reader.feed(data):
            msg = ryu_parse(datapath, message)
            seen += 1
            if answer_every and seen % answer_every == 0:
                continue
            sock.sendall(serialized([flow_mod(datapath, 0), packet_out(datapath, bytes(msg.data))]))


@pytest.mark.parametrize("window", [1, 3])
def test_exchange_times_every_packet_in_until_its_packet_out(window):
    peer_end, controller_end = socket.socketpair()
    thread = threading.Thread(target=_fake_controller, args=(controller_end, 0), daemon=True)
    thread.start()
    flows = [NewFlow(build_tcp_frame(f"172.31.0.{i + 1}", "172.31.255.1", 20000, 443), EDGE_PORT) for i in range(7)]
    switch = ScriptedSwitch(peer_end, PeerProtocol(DP_ID, [EDGE_PORT]), table_id=0)
    result = switch.exchange(flows, window, timeout_s=5.0)
    switch.close()
    thread.join(5.0)
    controller_end.close()
    assert result.flows == 7 and result.flow_mods == (1,) * 7
    assert all(done >= sent for sent, done in zip(result.sent_ns, result.done_ns))


def test_exchange_says_when_the_controller_drops_a_packet_in():
    peer_end, controller_end = socket.socketpair()
    thread = threading.Thread(target=_fake_controller, args=(controller_end, 2), daemon=True)
    thread.start()
    flows = [NewFlow(build_tcp_frame(f"172.31.0.{i + 1}", "172.31.255.1", 20000, 443), EDGE_PORT) for i in range(3)]
    switch = ScriptedSwitch(peer_end, PeerProtocol(DP_ID, [EDGE_PORT]), table_id=0)
    with pytest.raises(PeerError, match="answered 1 of 3 packet-ins"):
        switch.exchange(flows, 1, timeout_s=0.3)
    switch.close()
    thread.join(5.0)
    controller_end.close()


def test_role_requests_are_read_and_granted_as_ryu_writes_and_reads_them(datapath):
    request = PARSER.OFPRoleRequest(datapath, OFP.OFPCR_ROLE_MASTER, 12345)
    peer = PeerProtocol(DP_ID, [1, 2])
    answer = peer.receive(serialized([request]), 7)
    assert peer.role_requests == [(7, OFP.OFPCR_ROLE_MASTER, 12345)] and peer.role == wire.OFPCR_ROLE_MASTER
    reply = ryu_parse(datapath, answer)
    assert isinstance(reply, PARSER.OFPRoleReply)
    assert (reply.role, reply.generation_id, reply.xid) == (OFP.OFPCR_ROLE_MASTER, 12345, 100)
