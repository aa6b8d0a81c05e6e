"""prism trace: capture readers, link types, flow splitting and truncation flags, bad files, the CLI."""

from __future__ import annotations

import io
import struct

import pytest

from prism import cli
from prism.trace.capture import (
    LINKTYPE_C_HDLC,
    LINKTYPE_ETHERNET,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_LOOP,
    LINKTYPE_NULL,
    LINKTYPE_PPP,
    LINKTYPE_PPP_HDLC,
    LINKTYPE_RAW,
    LINKTYPE_RAW_BSD,
    CaptureError,
    read_packets,
)
from prism.trace.flowmeter import FlowMeter
from prism.flows.identity import TCP_ACK, TCP_SYN, FlowKey, parse_ip
from prism.telemetry.records import (
    END_CAPTURE,
    END_FIN,
    END_IDLE,
    MILESTONE_KINDS,
    MILESTONES_S,
    milestone_column,
    read_records,
    records_to_frame,
)
from prism.trace.cli import decode, trace_file

from testkit.packets import ethernet_frame
from tests.unit.trace_helpers import (
    PPP_PROTOCOL,
    frame_for,
    pcap_bytes,
    pcapng_bytes,
    tcp_conversation,
    tcp_ip,
    udp_ip,
    write,
)

V4 = ("192.0.2.10", "198.51.100.20")
V6 = ("2001:db8::10", "2001:db8:1::20")
ALL_LINKTYPES = (
    LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2, LINKTYPE_RAW, LINKTYPE_RAW_BSD,
    LINKTYPE_NULL, LINKTYPE_LOOP, LINKTYPE_PPP, LINKTYPE_PPP_HDLC, LINKTYPE_C_HDLC,
)  # fmt: skip


def conversation_file(tmp_path, linktype, addrs=V4, name="conv.pcap", **kwargs):
    packets = [(ts, frame_for(linktype, p)) for ts, p in tcp_conversation(*addrs, 40000, 443)]
    return write(tmp_path / name, pcap_bytes(packets, linktype, **kwargs))


@pytest.mark.parametrize("linktype", ALL_LINKTYPES)
@pytest.mark.parametrize("addrs", [V4, V6], ids=["ipv4", "ipv6"])
def test_every_link_type_gives_one_complete_bidirectional_flow(tmp_path, linktype, addrs):
    result = trace_file(conversation_file(tmp_path, linktype, addrs))
    assert result.error is None
    (flow,) = result.records
    assert (flow.src_addr, flow.dst_addr, flow.sport, flow.dport) == (addrs[0], addrs[1], 40000, 443)
    assert flow.ip_version == (6 if ":" in addrs[0] else 4)
    assert flow.packets == 10 and flow.first_tcp_flags == TCP_SYN
    assert flow.end_reason == END_FIN and not flow.truncated
    assert flow.flow_id == FlowKey.between(6, addrs[1], 443, addrs[0], 40000)[0].flow_id
    assert flow.duration_s == pytest.approx(2.05)
    assert flow.group == "conv.pcap"


@pytest.mark.parametrize("linktype, addrs", [(LINKTYPE_IPV4, V4), (LINKTYPE_IPV6, V6)])
def test_ipv4_and_ipv6_only_link_types(tmp_path, linktype, addrs):
    (flow,) = trace_file(conversation_file(tmp_path, linktype, addrs)).records
    assert flow.src_addr == addrs[0] and flow.packets == 10


@pytest.mark.parametrize("order, nanos", [(">", False), ("<", True)], ids=["big-endian", "nanoseconds"])
def test_pcap_byte_orders_and_resolutions(tmp_path, order, nanos):
    (flow,) = trace_file(conversation_file(tmp_path, LINKTYPE_ETHERNET, order=order, nanos=nanos)).records
    assert flow.ts_start == pytest.approx(1000.0) and flow.duration_s == pytest.approx(2.05)


def test_pcapng_with_two_interfaces_of_different_link_types(tmp_path):
    conv = tcp_conversation(*V4, 40000, 443)
    # The same connection seen on an Ethernet and a Linux cooked interface, nanosecond stamps.
    packets = [(ts, i % 2, frame_for((LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL)[i % 2], p))
               for i, (ts, p) in enumerate(conv)]  # fmt: skip
    path = write(tmp_path / "two.pcapng",
                 pcapng_bytes(packets, (LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL), tsresol=9))  # fmt: skip
    (flow,) = trace_file(path).records
    assert flow.packets == 10 and flow.duration_s == pytest.approx(2.05) and not flow.truncated


def test_big_endian_pcapng(tmp_path):
    packets = [(ts, 0, frame_for(LINKTYPE_RAW, p)) for ts, p in tcp_conversation(*V6, 40000, 443)]
    path = write(tmp_path / "be.pcapng", pcapng_bytes(packets, (LINKTYPE_RAW,), order=">"))
    (flow,) = trace_file(path).records
    assert flow.src_addr == V6[0] and flow.packets == 10


def test_truncated_pcap_is_reported_and_skipped(tmp_path):
    whole = conversation_file(tmp_path, LINKTYPE_ETHERNET).read_bytes()
    path = write(tmp_path / "cut.pcap", whole[:-30])
    result = trace_file(path)
    assert result.records == []
    assert "file ends inside packet data" in result.error and "after 9 packet(s)" in result.error


def test_truncated_capture_salvaged_flags_its_flows(tmp_path):
    whole = conversation_file(tmp_path, LINKTYPE_ETHERNET).read_bytes()
    path = write(tmp_path / "cut.pcap", whole[:-30])
    result = trace_file(path, salvage=True)
    assert result.error is None
    (flow,) = result.records
    assert flow.packets == 9 and flow.truncated


def test_truncated_pcapng_block_is_reported(tmp_path):
    packets = [(ts, 0, frame_for(LINKTYPE_RAW, p)) for ts, p in tcp_conversation(*V4, 1, 2)]
    data = pcapng_bytes(packets, (LINKTYPE_RAW,))
    result = trace_file(write(tmp_path / "cut.pcapng", data[:-7]))
    assert result.records == [] and "file ends inside a block" in result.error


def test_damaged_record_length_is_reported_not_allocated():
    data = bytearray(pcap_bytes([(1.0, b"\x45" + bytes(39))], LINKTYPE_RAW))
    data[24 + 8 : 24 + 12] = (0x7FFFFFFF).to_bytes(4, "little")
    with pytest.raises(CaptureError, match="damaged packet record"):
        list(read_packets(io.BytesIO(bytes(data))))


@pytest.mark.parametrize(
    "content, reason",
    [
        (b"", "empty file"),
        (b"this is not a capture\n" * 10, "unknown format"),
        (bytes(range(256)) * 4, "unknown format"),
        (b"\xd4\xc3\xb2\xa1\x02\x00", "file ends inside the pcap file header"),
    ],
    ids=["empty", "text", "garbage", "header-cut"],
)
def test_bad_files_are_reported_with_a_reason(tmp_path, content, reason):
    result = trace_file(write(tmp_path / "bad.pcap", content))
    assert result.records == [] and reason in result.error


@pytest.mark.parametrize("encapsulation", ["pppoe", "mpls", "mpls-two-labels-vlan"])
@pytest.mark.parametrize("addrs", [V4, V6], ids=["v4", "v6"])
def test_ethernet_captures_keep_flows_inside_pppoe_and_mpls(tmp_path, encapsulation, addrs):
    def framed(packet):
        version = packet[0] >> 4
        if encapsulation == "pppoe":  # session header (version/type 0x11, code 0, session 1, length)
            ppp = struct.pack("!H", PPP_PROTOCOL[version]) + packet
            return ethernet_frame(struct.pack("!BBHH", 0x11, 0, 1, len(ppp)) + ppp, 0x8864)
        labels = [(16, True)] if encapsulation == "mpls" else [(100, False), (16, True)]
        stack = b"".join(struct.pack("!I", label << 12 | (0x100 if bottom else 0) | 64) for label, bottom in labels)
        return ethernet_frame(stack + packet, 0x8847, vlans=[7] if "vlan" in encapsulation else [])

    packets = [(ts, framed(p)) for ts, p in tcp_conversation(*addrs, 40000, 443)]
    result = trace_file(write(tmp_path / "encapsulated.pcap", pcap_bytes(packets, LINKTYPE_ETHERNET)))
    assert len(result.records) == 1 and result.records[0].packets == len(packets)
    assert result.records[0].end_reason == "fin"


def test_unsupported_link_type_is_named(tmp_path):
    path = write(tmp_path / "ppi.pcap", pcap_bytes([(1.0, bytes(40))], 192))
    assert trace_file(path).error == "unsupported link type 192"


def test_ppp_without_framing_or_with_a_compressed_protocol_and_its_control_packets(tmp_path):
    packets = [(ts, p) for ts, p in tcp_conversation(*V4, 40000, 443)]
    bare = [(ts, b"\x00\x21" + p) for ts, p in packets]  # no address and control bytes
    compressed = [(ts, b"\xff\x03\x21" + p) for ts, p in packets]  # one-byte protocol
    lcp = [(0.5, b"\xff\x03\xc0\x21" + bytes(20))]  # a link control packet: not a flow
    for name, frames in (("bare", bare), ("compressed", compressed)):
        result = trace_file(write(tmp_path / f"{name}.pcap", pcap_bytes(sorted(frames + lcp), LINKTYPE_PPP)))
        assert len(result.records) == 1 and result.records[0].packets == len(packets), name


def test_missing_file_is_reported(tmp_path):
    assert "cannot read" in trace_file(tmp_path / "nope.pcap").error


def test_snap_length_cut_packets_count_their_full_ip_length():
    packet = udp_ip(*V4, 5000, 53, b"q" * 200)
    info = decode(LINKTYPE_RAW, packet[:60], wire_len=len(packet))
    assert info.ip_len == len(packet) and info.dport == 53


# --- flow splitting and truncation -----------------------------------------------
def meter_records(packets, idle_timeout_s=10.0):
    meter = FlowMeter("g", idle_timeout_s)
    for ts, packet in packets:
        meter.add(ts, parse_ip(packet))
    return meter.finish()


def test_tcp_flow_without_syn_is_truncated():
    packets = [(t, tcp_ip(*V4, 40000, 443, TCP_ACK, b"x")) for t in (0.0, 1.0)]
    packets.append((50.0, udp_ip(*V4, 1, 2)))  # the capture goes on long after
    tcp = [r for r in meter_records(packets) if r.proto == 6][0]
    assert tcp.truncated and tcp.end_reason == END_IDLE


def test_flow_still_active_at_capture_end_is_truncated():
    packets = [(0.0, udp_ip(*V4, 5000, 53)), (1.0, udp_ip(*V4, 6000, 123)), (3.0, udp_ip(*V4, 6000, 123))]
    by_port = {r.dport: r for r in meter_records(packets)}
    assert by_port[123].end_reason == END_CAPTURE and by_port[123].truncated
    assert by_port[53].end_reason == END_CAPTURE  # within one idle timeout of the end too
    long_after = packets + [(20.0, udp_ip(*V4, 7000, 80))]
    by_port = {r.dport: r for r in meter_records(long_after)}
    assert by_port[123].end_reason == END_IDLE and not by_port[123].truncated


def test_idle_gap_splits_a_flow_and_bytes_are_ip_lengths():
    packet = udp_ip(*V4, 5000, 5001, b"p" * 72)
    reply = udp_ip(V4[1], V4[0], 5001, 5000, b"r" * 10)
    records = meter_records([(0.0, packet), (0.5, reply), (30.0, packet), (30.2, packet), (90.0, packet)])
    first, second, third = records
    assert (first.packets, first.bytes, first.duration_s) == (2, len(packet) + len(reply), 0.5)
    assert first.end_reason == END_IDLE and not first.truncated
    assert second.packets == 2 and second.ts_start == 30.0
    assert first.flow_id == second.flow_id == third.flow_id


def test_port_reuse_after_close_starts_a_new_flow():
    conv = tcp_conversation(*V4, 40000, 443, start=0.0, data_packets=2)
    again = tcp_conversation(*V4, 40000, 443, start=2.0, data_packets=2)
    records = meter_records(conv + again + [(100.0, udp_ip(*V4, 1, 2))])
    tcp = [r for r in records if r.proto == 6]
    assert len(tcp) == 2 and all(not r.truncated for r in tcp)


# --- state packets and age milestones ----------------------------------------------
def counts_at(record, kind):
    index = MILESTONE_KINDS.index(kind)
    return {m: counts[index] for m, counts in zip(MILESTONES_S, record.milestones)}


def test_tcp_state_packets_and_milestones_count_from_the_packets():
    (record,) = meter_records(tcp_conversation(*V4, 40000, 443, start=0.0, data_packets=4)
                              + [(100.0, udp_ip(*V4, 1, 2))])[:1]  # fmt: skip
    assert record.packets == 10 and record.state_packets == 4  # SYN, SYN/ACK, FIN, FIN
    packets = counts_at(record, "packets")
    assert [packets[m] for m in (0.25, 0.5, 1.0, 2.0, 4.0, 64.0)] == [3, 3, 4, 6, 10, 10]
    state = counts_at(record, "state_packets")
    assert [state[m] for m in (0.25, 2.0, 4.0, 64.0)] == [2, 2, 4, 4]
    assert counts_at(record, "bytes")[64.0] == record.bytes


def test_milestone_counts_packets_at_or_before_it_and_non_tcp_has_one_state_packet():
    packet = udp_ip(*V4, 5000, 5001, b"p" * 72)
    early = udp_ip(*V4, 5000, 5001, b"e")  # captured out of order, before the first packet
    records = meter_records([(10.0, packet), (10.25, packet), (10.3, packet), (9.9, early), (15.0, packet)])
    (record,) = records
    packets = counts_at(record, "packets")
    assert [packets[m] for m in (0.25, 0.5, 4.0, 8.0)] == [3, 4, 4, 5]
    assert counts_at(record, "bytes")[0.25] == 2 * len(packet) + len(early)
    assert record.state_packets == 1 and set(counts_at(record, "state_packets").values()) == {1}
    frame = records_to_frame(records)
    assert frame.loc[0, milestone_column("packets", 0.25)] == 3
    assert frame.loc[0, milestone_column("state_packets", 64.0)] == 1


# --- the command --------------------------------------------------------------------
def test_cli_writes_records_and_reports_bad_files(tmp_path, capsys):
    good = conversation_file(tmp_path, LINKTYPE_LINUX_SLL, name="good.pcap")
    bad = write(tmp_path / "garbage.pcap", b"\x00garbage" * 50)
    out = tmp_path / "out" / "flows.parquet"
    assert cli.main(["trace", str(good), str(bad), "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"skipped {bad}: unknown format" in err
    frame = read_records(out)
    assert len(frame) == 1 and frame.loc[0, "group"] == "good.pcap"


def test_cli_directory_input_and_nothing_readable(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    write(tmp_path / "in" / "a.pcap", b"nonsense")
    write(tmp_path / "in" / "notes.txt", b"ignored: not a trace file name")
    out = tmp_path / "flows.parquet"
    assert cli.main(["trace", str(tmp_path / "in"), "-o", str(out)]) == 1
    assert "a.pcap" in capsys.readouterr().err and not out.exists()


def test_cli_binetflow_and_pcap_together(tmp_path):
    pcap = conversation_file(tmp_path, LINKTYPE_ETHERNET)
    argus = write(tmp_path / "x.binetflow", (
        "StartTime,Dur,Proto,SrcAddr,Sport,Dir,DstAddr,Dport,State,sTos,dTos,TotPkts,TotBytes,SrcBytes,Label\n"
        "2019/04/04 16:23:00.325010,0.027947,udp,10.8.0.69,48427,  <->,8.8.8.8,53,CON,0,0,2,142,63,\n"
    ).encode())  # fmt: skip
    out = tmp_path / "flows.parquet"
    assert cli.main(["trace", "-q", str(pcap), str(argus), "-o", str(out)]) == 0
    frame = read_records(out)
    assert sorted(frame["source"]) == ["binetflow", "pcap"]
    assert frame["first_ip_len"].isna().sum() == 1
