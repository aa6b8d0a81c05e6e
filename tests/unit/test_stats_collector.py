"""The stats collector's Ryu shell: requests on the timer, replies and ended flows into telemetry files."""

from __future__ import annotations

import struct
import textwrap
import time
from types import SimpleNamespace

import pandas as pd
import pytest

pytest.importorskip("ryu")

from ryu.controller.handler import DEAD_DISPATCHER, MAIN_DISPATCHER  # noqa: E402
from ryu.ofproto import ofproto_v1_3, ofproto_v1_3_parser  # noqa: E402

from tests.support import FakeDatapath  # noqa: E402

from prism.flows.identity import parse_frame  # noqa: E402
from testkit.packets import build_udp_frame  # noqa: E402
from prism.placement.profiles import FlowStateCache, MirroringProfile  # noqa: E402
from prism.telemetry.rows import ALL_ONES_32, ALL_ONES_64, TABLE_FLOWS, flow_record  # noqa: E402
from prism.telemetry.files import part_files, read_flows, read_stats  # noqa: E402
from ryu_apps.telemetry_events import EventFlowEnded  # noqa: E402

collector_module = pytest.importorskip("ryu_apps.stats_collector")

OFP = ofproto_v1_3
PARSER = ofproto_v1_3_parser
NOW = 1_700_000_000.0
CONFIG = textwrap.dedent("""\
    switches:
      - dpid: 0x1
        cells:
          - {id: cell1, port: 1}
          - {id: cell2, port: 2}
        edge_ports: [4, 5]
    telemetry: {dir: telemetry, rotate_records: 100, rotate_s: 30, poll_interval: 5}
    """)


@pytest.fixture
def app(tmp_path, monkeypatch):
    path = tmp_path / "prism.yaml"
    path.write_text(CONFIG)
    monkeypatch.setenv(collector_module.CONFIG_ENV, str(path))
    return collector_module.StatsCollectorApp()


def reply(datapath, body):
    return SimpleNamespace(msg=SimpleNamespace(datapath=datapath, body=body))


def connect(app, dp_id=1) -> FakeDatapath:
    datapath = FakeDatapath(dp_id)
    app.state_change_handler(SimpleNamespace(datapath=datapath, state=MAIN_DISPATCHER))
    return datapath


def test_requests_go_to_every_connected_switch_each_poll_interval(app):
    first, second = connect(app, 1), connect(app, 2)
    app.tick(NOW)
    kinds = [type(m).__name__ for m in first.sent]
    assert kinds == ["OFPFlowStatsRequest", "OFPPortStatsRequest", "OFPGroupStatsRequest"]
    assert first.sent[0].table_id == OFP.OFPTT_ALL and first.sent[2].group_id == OFP.OFPG_ALL
    assert len(second.sent) == 3
    app.tick(NOW + 4.9)
    assert len(first.sent) == 3
    app.state_change_handler(SimpleNamespace(datapath=second, state=DEAD_DISPATCHER))
    app.tick(NOW + 5.0)
    assert len(first.sent) == 6 and len(second.sent) == 3


def test_port_stats_from_the_wire_keep_unsupported_counters_as_na(app, tmp_path):
    datapath = connect(app)
    counters = [7] * 12
    counters[8] = ALL_ONES_64  # rx_frame_err not kept by the switch
    raw = struct.pack(OFP.OFP_PORT_STATS_PACK_STR, 3, *counters, ALL_ONES_32, 0)
    stat = PARSER.OFPPortStats.parser(raw, 0)
    app.port_stats_handler(reply(datapath, [stat]))
    app.flush(NOW)
    frame = read_stats(tmp_path / "telemetry", "port_stats")
    row = frame.iloc[0]
    assert row["port_no"] == 3 and row["dp_id"] == 1 and row["rx_packets"] == 7
    assert pd.isna(row["rx_frame_err"]) and pd.isna(row["duration_s"])


def test_flow_and_group_stats_rows(app, tmp_path):
    datapath = connect(app)
    flow = PARSER.OFPFlowStats(table_id=1, duration_sec=4, duration_nsec=500_000_000, priority=200,
                               idle_timeout=10, hard_timeout=0, flags=1, cookie=0xABC, packet_count=ALL_ONES_64,
                               byte_count=900, match=PARSER.OFPMatch(eth_type=0x0800, ip_proto=17),
                               instructions=[])  # fmt: skip
    group = PARSER.OFPGroupStats(group_id=0x10, ref_count=2, packet_count=5, byte_count=500, duration_sec=3,
                                 duration_nsec=0, bucket_stats=[PARSER.OFPBucketCounter(5, 500),
                                                                PARSER.OFPBucketCounter(5, 500)])  # fmt: skip
    app.flow_stats_handler(reply(datapath, [flow]))
    app.group_stats_handler(reply(datapath, [group]))
    app.flush(NOW)
    flows = read_stats(tmp_path / "telemetry", "flow_stats").iloc[0]
    assert flows["cookie"] == 0xABC and flows["duration_s"] == 4.5 and pd.isna(flows["packets"])
    assert flows["bytes"] == 900 and flows["match"] == '{"eth_type": 2048, "ip_proto": 17}'
    groups = read_stats(tmp_path / "telemetry", "group_stats").iloc[0]
    assert (groups["group_id"], groups["ref_count"], list(groups["bucket_packets"])) == (0x10, 2, [5, 5])


def test_ended_flows_are_written_as_flow_records_and_flows_without_counters_counted(app, tmp_path):
    info = parse_frame(build_udp_frame("10.0.0.1", "10.0.0.2", 40000, 53, b"q"))
    cache = FlowStateCache()
    entry = cache.add(info.key, MirroringProfile.of("cell1"), 1, NOW, first_packet=info)
    cache.remove_direction(info.flow_id, True, 1, 60, 10.2, NOW + 10.2)
    cache.remove_direction(info.flow_id, False, 1, 60, 10.1, NOW + 10.2)
    app.flow_ended_handler(EventFlowEnded(1, info.flow_id, flow_record(entry, 1, 10), NOW + 10.2))
    app.flow_ended_handler(EventFlowEnded(1, 99, None, NOW + 11))
    assert app.counts["flows_recorded"] == 1 and app.counts["flows_without_counters"] == 1
    assert app.writer_thread.wait_idle()
    assert part_files(tmp_path / "telemetry", TABLE_FLOWS) == [], "the open part lives in memory"
    app.flush(NOW + 12)
    frame = read_flows(tmp_path / "telemetry")
    assert list(frame["flow_id"]) == [info.flow_id]
    assert (frame["packets"][0], frame["source"][0]) == (3, "telemetry")


def test_the_timer_rotates_old_parts(app, tmp_path):
    datapath = connect(app)
    app.port_stats_handler(reply(datapath, [PARSER.OFPPortStats(*([1] + [0] * 12 + [1, 0]))]))
    received = app.clock.now()
    app.tick(received + 1)
    assert app.writer_thread.wait_idle()
    assert part_files(tmp_path / "telemetry", "port_stats") == []
    app.tick(received + 31)
    assert app.writer_thread.wait_idle()
    assert len(part_files(tmp_path / "telemetry", "port_stats")) == 1


def test_a_bad_reply_is_counted_and_survived(app):
    datapath = connect(app)
    app.port_stats_handler(reply(datapath, [object()]))
    assert app.handler_errors["port_stats"] == 1


def test_without_a_telemetry_section_nothing_is_recorded(tmp_path, monkeypatch):
    path = tmp_path / "prism.yaml"
    path.write_text(CONFIG.split("telemetry:")[0])
    monkeypatch.setenv(collector_module.CONFIG_ENV, str(path))
    app = collector_module.StatsCollectorApp()
    assert app.writer is None
    app.flow_ended_handler(EventFlowEnded(1, 1, None, NOW))
    app.flush(NOW)
    assert not (tmp_path / "telemetry").exists()


def test_with_several_controllers_only_a_switchs_master_polls_it(app, monkeypatch):
    director = SimpleNamespace(cluster=SimpleNamespace(may_send=lambda dp_id: dp_id == 1))
    monkeypatch.setattr(collector_module.app_manager, "lookup_service_brick", lambda name: director)
    mastered, other = connect(app, 1), connect(app, 2)
    app.tick(NOW)
    assert len(mastered.sent) == 3 and other.sent == []


class SlowWriter:
    """A writer whose writes hang until released (a slow disk's fsync), recording the thread that writes."""

    def __init__(self):
        import threading

        self.release = threading.Event()
        self.threads = set()
        self.rows = []

    def add(self, table, rows, now):
        import threading

        self.threads.add(threading.get_ident())
        self.release.wait(10)
        self.rows += rows

    def tick(self, now):
        pass

    def flush_all(self, now):
        self.rows.append("flushed")


def test_a_slow_write_never_blocks_the_caller_and_a_full_queue_drops_rows():
    import threading

    from ryu_apps.telemetry_thread import TelemetryThread

    writer = SlowWriter()
    thread = TelemetryThread(writer, max_rows=10)
    started = time.monotonic()
    assert thread.add("port_stats", [1, 2, 3], NOW)  # taken by the thread, which hangs in its write
    for _ in range(50):
        thread.add("port_stats", [4, 5, 6], NOW)
    assert time.monotonic() - started < 0.5  # the caller (the event loop) never waited
    assert thread.rows_dropped > 0 and thread.queued_rows <= 10
    writer.release.set()
    assert thread.close(NOW + 1)
    assert writer.rows[-1] == "flushed" and writer.rows[:3] == [1, 2, 3]
    assert writer.threads and threading.get_ident() not in writer.threads
    assert not thread.add("port_stats", [7], NOW)  # closed: refused and counted
