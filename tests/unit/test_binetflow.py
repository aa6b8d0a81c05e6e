"""Argus binetflow records -> flow records: formats, protocols, truncation from the TCP state."""

from __future__ import annotations

import io

import pytest

from prism.trace.binetflow import BinetflowError, looks_like_binetflow, read_binetflow
from prism.flows.identity import FlowKey
from prism.telemetry.records import END_CAPTURE, END_FIN, END_IDLE, END_RST, MILESTONE_COLUMNS, records_to_frame
from prism.trace.cli import trace_file

HEADER = "StartTime,Dur,Proto,SrcAddr,Sport,Dir,DstAddr,Dport,State,sTos,dTos,TotPkts,TotBytes,SrcBytes,SrcPkts,Label"
ROWS = [
    "2019/04/04 16:23:00.000000,0.5,udp,10.8.0.69,48427,  <->,8.8.8.8,53,CON,0,0,2,142,63,1,",
    "2019/04/04 16:23:01.000000,129.9,tcp,10.8.0.69,48009,   ->,31.13.83.2,443,SPA_SRPA,0,0,26,5723,1621,13,",
    "2019/04/04 16:23:02.000000,3.0,tcp,10.8.0.69,48010,   ->,31.13.83.2,443,FSPA_FSPA,0,0,12,2000,900,6,",
    "2019/04/04 16:23:03.000000,0.0,tcp,10.8.0.69,48011,   ->,31.13.83.2,443,PA_PA,0,0,1,60,60,1,",
    "2019/04/04 16:23:04.000000,1.0,icmp,10.8.0.69,0x0008,   ->,1.1.1.1,0x4d2f,ECO,0,0,2,196,98,1,",
    "2019/04/04 16:23:05.000000,0.0,arp,10.8.0.69,,   who,10.8.0.1,,INT,0,0,1,60,60,1,",
    "2019/04/04 16:23:06.000000,0.2,tcp,2001:db8::1,5000,   ->,2001:db8::2,80,S_RA,0,0,2,120,60,1,",
    "2019/04/04 16:23:07.000000,oops,udp,10.8.0.69,1,   ->,10.8.0.1,2,CON,0,0,1,60,60,1,",
]


def parse(rows, delimiter=","):
    text = delimiter.join(HEADER.split(",")) + "\n" + "\n".join(r.replace(",", delimiter) for r in rows) + "\n"
    return read_binetflow(io.StringIO(text), "test.binetflow", idle_timeout_s=10.0)


def test_rows_become_records_and_bad_rows_are_counted():
    result = parse(ROWS)
    assert len(result.records) == 6
    assert result.skipped == {"not an IP protocol": 1, "malformed row": 1}
    frame = records_to_frame(result.records)
    assert frame["first_ip_len"].isna().all() and (frame["source"] == "binetflow").all()


def test_tab_separated_files_are_read_too():
    assert len(parse(ROWS, delimiter="\t").records) == 6


def test_tcp_state_sets_end_reason_and_truncation():
    by_port = {r.sport: r for r in parse(ROWS).records}
    reset = by_port[48009]  # SYN seen, RST: complete
    assert reset.end_reason == END_RST and not reset.truncated
    assert reset.duration_s == pytest.approx(129.9) and reset.packets == 26 and reset.bytes == 5723
    assert by_port[48010].end_reason == END_FIN and not by_port[48010].truncated
    no_syn = by_port[48011]
    assert no_syn.truncated and no_syn.end_reason == END_IDLE


def test_last_activity_marks_capture_end_and_icmp_has_no_ports():
    records = parse(ROWS).records
    dns = next(r for r in records if r.dport == 53)
    assert dns.end_reason == END_IDLE  # ended long before the last record's end
    icmp = next(r for r in records if r.proto == 1)
    assert (icmp.sport, icmp.dport) == (0, 0)
    ipv6 = next(r for r in records if r.ip_version == 6)
    assert ipv6.end_reason == END_RST and ipv6.flow_id == FlowKey.between(6, "2001:db8::1", 5000, "2001:db8::2", 80)[0].flow_id
    last = parse(ROWS[:1]).records[0]
    assert last.end_reason == END_CAPTURE and last.truncated


def test_missing_columns_are_an_error():
    with pytest.raises(BinetflowError, match="missing column"):
        read_binetflow(io.StringIO("StartTime,Proto,SrcAddr\n1,2,3\n"), "x")


def test_header_sniffing():
    assert looks_like_binetflow((HEADER + "\n").encode())
    assert not looks_like_binetflow(b"\xd4\xc3\xb2\xa1")


def test_records_have_no_state_or_milestone_counts():
    frame = records_to_frame(parse(ROWS).records)
    assert frame["state_packets"].isna().all()
    assert frame[list(MILESTONE_COLUMNS)].isna().all().all()


def test_field_over_the_csv_limit_is_skipped_not_a_crash(tmp_path):
    huge = "2019/04/04 16:23:09.000000,1.0,udp,10.8.0.69,1,   ->,10.8.0.1,2,CON,0,0,1,60,60," + "x" * 200_000
    result = parse(ROWS[:2] + [huge] + ROWS[2:3])
    assert len(result.records) == 3
    assert sum(n for why, n in result.skipped.items() if why.startswith("unparsable row")) == 1
    path = tmp_path / "big.binetflow"
    path.write_text(HEADER + "\n" + "\n".join(ROWS[:2] + [huge]) + "\n")
    assert len(trace_file(path).records) == 2


@pytest.mark.parametrize("duration", ["nan", "inf", "-inf", "NaN", "Infinity"])
def test_non_finite_duration_is_refused(duration):
    row = f"2019/04/04 16:23:09.000000,{duration},udp,10.8.0.69,1,   ->,10.8.0.1,2,CON,0,0,1,60,60,1,"
    result = parse(ROWS[:1] + [row])
    assert len(result.records) == 1 and result.skipped == {"impossible counters": 1}
