"""Detection that cannot lie: controller stalls, clock steps, never-heard cells, BFD liveness, O(1) flow counts."""

from __future__ import annotations

import socket
import textwrap
import threading
import time
from types import SimpleNamespace

import pytest

pytest.importorskip("ryu")

from ryu.ofproto import ofproto_v1_3, ofproto_v1_3_parser  # noqa: E402

from prism.mgmt import protocol as mgmt  # noqa: E402
from prism.control.health import FailureDetector, FailureKind, HealthSettings  # noqa: E402
from prism.mgmt.auth import MgmtAuth  # noqa: E402
from prism.clock import AnchoredClock  # noqa: E402
from tests.support import director_app  # noqa: E402
from test_director_app_failover import KEY_TEXT, FakeDatapath, connect_with_flows, group_mods  # noqa: E402

app_module = pytest.importorskip("ryu_apps.mirroring_director")

OFP = ofproto_v1_3
PARSER = ofproto_v1_3_parser
STALL_S = 2.0
BEAT_S = 0.1


def make_app(tmp_path, monkeypatch, cells_port, bfd=""):
    """A director app whose cells cell1 and cell2 beat from 127.0.0.1 (cell3 has no management address)."""
    config = textwrap.dedent(f"""\
        default_replication_factor: 1
        management: {{listen: "127.0.0.1:7600", heartbeat_interval: 0.1, dead_after: 0.35,
                      key_file: mgmt.key, generation_file: generation}}
        switches:
          - dpid: 0x1
            cells:
              - {{id: cell1, port: 1, mgmt: "127.0.0.1:{cells_port}"}}
              - {{id: cell2, port: 2, mgmt: "127.0.0.1:{cells_port + 1}"}}
              - {{id: cell3, port: 3}}
            edge_ports: [4, 5]
        """) + bfd
    return director_app(tmp_path, monkeypatch, config, key=KEY_TEXT, mgmt_channel=True)


@pytest.fixture
def cells_socket():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    yield sock
    sock.close()


class Beater(threading.Thread):
    """Cells beating every 100 ms from their own thread, whatever the controller does."""

    def __init__(self, sock, address, cells):
        super().__init__(daemon=True)
        self.sock, self.address, self.cells = sock, address, set(cells)
        self.sealers = {cell: MgmtAuth(KEY_TEXT.encode(), cell) for cell in self.cells}
        self.seq = 0
        self.done = threading.Event()

    def run(self):
        while not self.done.is_set():
            self.seq += 1
            for cell in sorted(self.cells):
                heartbeat = mgmt.encode({"type": "heartbeat", "cell": cell, "seq": self.seq})
                self.sock.sendto(self.sealers[cell].seal(heartbeat, time.time()), self.address)
            self.done.wait(BEAT_S)


def run_controller(app, seconds):
    """The controller's tick loop, undisturbed, for ``seconds``."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        app.tick(app.clock.now())
        time.sleep(app_module.TICK_S)


@pytest.mark.parametrize("drain_first", [True, False])
def test_a_two_second_controller_stall_kills_no_beating_cell(tmp_path, monkeypatch, cells_socket, drain_first):
    """The event loop is blocked for 2 s (a long REST request, a statistics reply) while cells keep beating.

    cell2 stops beating when the stall starts: its silence is real, and it is found dead.
    With ``drain_first`` False the tick judges before reading the waiting datagrams (the old
    behaviour): then the beating cell1 is wrongly failed, which shows the test can fail.
    """
    app = make_app(tmp_path, monkeypatch, cells_socket.getsockname()[1])
    try:
        datapath = connect_with_flows(app)
        app.control.start_listening(app.clock.now())
        beater = Beater(cells_socket, app.channel.address, ["cell1", "cell2"])
        beater.start()
        try:
            run_controller(app, 0.6)
            assert app.control.detector.usable_cells == ("cell1", "cell2", "cell3")
            beater.cells.discard("cell2")
            time.sleep(STALL_S)  # the stall: nothing runs on the controller's loop
            if not drain_first:
                monkeypatch.setattr(app, "receive_pending", lambda: 0)
            app.tick(app.clock.now())
            assert app.stalls == 1 and app.longest_stall_s >= STALL_S - 0.1
            usable = app.control.detector.usable_cells
            if drain_first:
                assert usable == ("cell1", "cell3")
                [record] = app.control.detector.history("cell2")
                assert record.kind is FailureKind.PROCESS
                assert record.detected_at - record.started_at >= STALL_S - 0.1  # silent the whole stall
            else:
                assert "cell1" not in usable
        finally:
            beater.done.set()
            beater.join()
        assert group_mods(datapath)  # cell2's groups were rewritten
    finally:
        app.channel.close()


def test_a_wall_clock_step_moves_neither_the_clock_nor_a_verdict():
    readings = {"mono": 50.0, "wall": 1_700_000_000.0}
    clock = AnchoredClock(monotonic=lambda: readings["mono"], wall=lambda: readings["wall"])
    detector = FailureDetector(["c1"], clock.now(), HealthSettings())
    detector.on_heartbeat("c1", clock.now(), 1)
    readings["wall"] += 3600.0 + 0.1  # 0.1 s passes, and the wall clock steps an hour forward
    readings["mono"] += 0.1
    assert clock.now() == pytest.approx(1_700_000_000.1)
    assert clock.drift_s() == pytest.approx(3600.0)
    assert clock.wall_to_clock(readings["wall"]) == pytest.approx(clock.now())
    assert detector.tick(clock.now()) == []


def test_behaviour_in_the_controller_never_reads_the_wall_clock():
    """Only the clock module (and records) may call time.time() in the director and the REST API."""
    root = app_module.__file__.rsplit("/", 1)[0]
    for name in ("mirroring_director.py", "rest_api.py", "mgmt_channel.py", "stats_collector.py"):
        text = open(f"{root}/{name}", encoding="utf-8").read()
        assert "time.time()" not in text, name


def test_a_cell_never_heard_from_is_declared_dead_once_the_controller_listens():
    settings = HealthSettings(dead_after=0.35)
    detector = FailureDetector(["mute", "beating", "no_mgmt"], 0.0, settings, expect_heartbeats=["mute", "beating"])
    assert detector.tick(100.0) == []  # not listening yet: no heartbeat could have been heard
    detector.start_listening(100.0)
    for now in (100.1, 100.2, 100.3):
        detector.on_heartbeat("beating", now, int(now * 10))
    assert detector.tick(100.35) == []
    [change] = detector.tick(100.36)
    assert (change.cell_id, change.alive, change.kind) == ("mute", False, FailureKind.PROCESS)
    assert "since the controller started listening" in change.reason
    health = detector.health("mute")
    assert health.failures == 0 and not health.history[-1].counted  # never seen working: no risk penalty
    assert detector.usable_cells == ("beating", "no_mgmt")
    # it starts beating: back after alive_after of unbroken heartbeats
    back = []
    for i in range(12):
        back += detector.on_heartbeat("mute", 101.0 + i * 0.1, i + 1)
    assert [c.alive for c in back] == [True]


def live_port(port_no, live, link_down=False):
    state = (OFP.OFPPS_LIVE if live else 0) | (OFP.OFPPS_LINK_DOWN if link_down else 0)
    return PARSER.OFPPort(port_no=port_no, hw_addr="02:00:00:00:00:01", name=b"s1-eth%d" % port_no, config=0,
                          state=state, curr=0, advertised=0, supported=0, peer=0, curr_speed=0, max_speed=0)


def port_status(app, datapath, desc):
    app.port_status_handler(SimpleNamespace(msg=SimpleNamespace(datapath=datapath, reason=OFP.OFPPR_MODIFY,
                                                                desc=desc)))  # fmt: skip


def test_a_port_that_loses_live_with_its_link_up_fails_the_cell_over_as_bfd(tmp_path, monkeypatch, cells_socket):
    app = make_app(tmp_path, monkeypatch, cells_socket.getsockname()[1], bfd="bfd: {interval: 10}\n")
    try:
        datapath = connect_with_flows(app)
        groups = app.directors[1].profiles_naming("cell1")
        now = app.clock.now()
        app.control.on_mgmt_message({"type": "heartbeat", "cell": "cell1", "seq": 1, "path_down": "draining"},
                                    ("127.0.0.1", 1), now)  # fmt: skip
        port_status(app, datapath, live_port(1, live=True))
        assert group_mods(datapath) == []
        port_status(app, datapath, live_port(1, live=False))
        assert len(group_mods(datapath)) == 2 * len(groups)
        assert app.directors[1].last_failover.kind == "bfd"
        view = app.control.cell("cell1", app.clock.now())
        assert view["port_live"] is False and view["path_down"] == "draining"
        assert "asked to be left out (draining)" in view["failure_history"][-1]["reason"]
    finally:
        app.channel.close()


def test_without_bfd_the_live_flag_is_not_read(tmp_path, monkeypatch, cells_socket):
    app = make_app(tmp_path, monkeypatch, cells_socket.getsockname()[1])
    try:
        datapath = connect_with_flows(app)
        port_status(app, datapath, live_port(1, live=False))  # a switch that never sets LIVE
        assert group_mods(datapath) == [] and "cell1" in app.control.detector.usable_cells
    finally:
        app.channel.close()


def test_flow_counts_do_not_walk_the_flows(tmp_path, monkeypatch, cells_socket):
    app = make_app(tmp_path, monkeypatch, cells_socket.getsockname()[1])
    try:
        connect_with_flows(app, count=30)
        cache = app.directors[1].flows
        everything = app.control.flows(limit=10_000)
        assert everything["total"] == len(cache) == len(everything["flows"])
        for cell in ("cell1", "cell2", "cell3"):
            assert cache.count_on_cell(cell) == len(cache.flows_on_cell(cell))
            listed = app.control.flows(cell, limit=2)
            assert listed["total"] == cache.count_on_cell(cell)
            assert len(listed["flows"]) == min(2, listed["total"])

        def no_copy():
            raise AssertionError("the REST listing copied the whole cache")

        monkeypatch.setattr(type(cache), "__iter__", lambda self: no_copy())
        assert app.control.flows(limit=3)["total"] == 30
    finally:
        app.channel.close()


def test_the_clock_is_shared_and_fake_datapaths_still_work():
    assert isinstance(FakeDatapath(1).id, int)


def test_handling_that_yields_cannot_reorder_heartbeats(tmp_path, monkeypatch, cells_socket):
    """Sending while handling a heartbeat can yield to the other green thread; it must not handle newer
    heartbeats meanwhile, or the older ones handled afterwards look like a restarted process."""
    app = make_app(tmp_path, monkeypatch, cells_socket.getsockname()[1])
    try:
        app.control.start_listening(app.clock.now())
        sealer = MgmtAuth(KEY_TEXT.encode(), "cell1")

        def beat(seq):
            body = mgmt.encode({"type": "heartbeat", "cell": "cell1", "seq": seq})
            cells_socket.sendto(sealer.seal(body, time.time()), app.channel.address)

        for seq in range(1, 6):
            beat(seq)
        time.sleep(0.05)
        handle = app.handle_mgmt_message
        nested = []

        def yielding_handle(message, sender, at=None):
            if not nested:  # the first message's handling yields: newer datagrams arrive, the loop runs
                for seq in range(6, 10):
                    beat(seq)
                time.sleep(0.05)
                nested.append(app.receive_pending())
            handle(message, sender, at)

        monkeypatch.setattr(app, "handle_mgmt_message", yielding_handle)
        assert app.receive_pending() == 5
        assert nested == [None]  # the other thread was told to wait
        assert app.receive_pending() == 4
        health = app.control.detector.health("cell1")
        assert health.heartbeat_seq == 9 and health.failures == 0 and health.state.value == "alive"
    finally:
        app.channel.close()
