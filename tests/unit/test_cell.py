"""Tests for the cell process logic with a fake packet socket: forwarding, absorbing, drops, ticks, errors."""

import errno
import os
import random
from collections import deque

import pytest

from cell_helpers import CLIENT, SERVER, Conversation
from prism.cell import cell as cell_module
from prism.cell.cell import Cell
from prism.cell.conntrack import ConnTracker, Timeouts, TrackerConfig
from prism.cell.io import CellIOError
from prism.cell.loop import CellLoop
from prism.flows.identity import TCP_ACK, TCP_PSH
from prism.openflow.changes import MIRROR_MAC
from testkit.packets import build_arp_frame, build_udp_frame


class FakePort:
    """A packet socket that obeys the FramePort contract: a queue in, a list out, a pipe for poll."""

    def __init__(self, frames=(), send_error=None, recv_error=None):
        self.queue = deque(frames)
        self.sent = []
        self.send_error = send_error
        self.recv_error = recv_error
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        if self.queue or recv_error:
            os.write(self._write, b"x")

    def fileno(self):
        return self._read

    def recv_frame(self):
        if self.recv_error is not None:
            error, self.recv_error = self.recv_error, None
            return self._raise(error)
        if not self.queue:
            try:
                os.read(self._read, 4096)  # nothing left: stop being readable
            except BlockingIOError:
                pass
            return None
        return self.queue.popleft()

    @staticmethod
    def _raise(error):
        raise error

    def send(self, frame):
        if self.send_error is not None:
            raise self.send_error
        self.sent.append(frame)
        return len(frame)

    def close(self):
        os.close(self._read)
        os.close(self._write)


class FakeClock:
    def __init__(self, start=1000.0, step=0.05):
        self.now, self.step = start, step

    def __call__(self):
        self.now += self.step
        return self.now


def run_until_idle(cell, port, max_ticks=50, **kwargs):
    """Run a loop until the port's queue is empty (and at least one tick ran)."""
    loop = CellLoop(cell, port, clock=FakeClock(), tick_interval_s=0.01, **kwargs)
    ticks = []

    def stop_when_idle(_cell, report):
        ticks.append(report)
        if not port.queue or len(ticks) >= max_ticks:
            loop.stop()

    cell.add_tick_hook(stop_when_idle)
    try:
        loop.run()
    finally:
        loop.close()
        port.close()
    return ticks


def _conversation_frames():
    conv = Conversation()
    frames = [conv.frame(True, 0x02, seq=1000, ack=0, advance=False),
              conv.frame(False, 0x12, seq=5000, advance=False),
              conv.frame(True, TCP_ACK)]  # fmt: skip
    frames.append(conv.frame(True, TCP_ACK | TCP_PSH, b"GET / HTTP/1.0\r\n\r\n"))
    return conv, frames


# --- Cell.handle_frame ------------------------------------------------------------------
def test_primary_copies_pass_mirror_copies_are_absorbed_and_non_flows_ignored():
    cell = Cell("c1")
    conv, frames = _conversation_frames()
    assert [cell.handle_frame(frame, 1.0) for frame in frames] == [True] * 4
    mirror = conv.frame(True, TCP_ACK | TCP_PSH, b"more", mirror=True)
    assert cell.handle_frame(mirror, 2.0) is False
    assert cell.handle_frame(build_arp_frame(), 2.0) is False
    counters = cell.counters()
    assert counters["primary_packets"] == 4 and counters["mirror_packets"] == 1
    assert counters["ignored"] == 1 and cell.ignored_by_reason == {"not IP": 1}
    assert counters["flows_tracked"] == 1
    entry = next(iter(cell.tracker))
    assert entry.mirror_packets == 1 and entry.orig.seq_end == conv.client_next


def test_unknown_mid_connection_packet_is_dropped_and_counted_by_reason():
    cell = Cell("c1")
    data = Conversation().frame(True, TCP_ACK | TCP_PSH, b"orphan")
    assert cell.handle_frame(data, 1.0) is False
    assert cell.dropped == 1 and cell.dropped_by_reason == {"no_state": 1}
    assert cell.counters()["dropped_no_state"] == 1


def test_mirror_mac_is_configurable_and_case_insensitive():
    cell = Cell("c1", mirror_mac="02:AA:BB:CC:DD:EE")
    udp = build_udp_frame(CLIENT, SERVER, 1, 2, eth_dst="02:aa:bb:cc:dd:ee")
    assert cell.handle_frame(udp, 1.0) is False and cell.mirror_packets == 1
    assert cell.handle_frame(build_udp_frame(CLIENT, SERVER, 1, 2, eth_dst=MIRROR_MAC), 1.0)


def test_garbage_frames_never_raise():
    cell = Cell("c1")
    rng = random.Random(7)
    _, frames = _conversation_frames()
    for _ in range(2000):
        base = bytearray(rng.choice(frames))
        for _ in range(rng.randint(1, 6)):
            base[rng.randrange(len(base))] = rng.randrange(256)
        cell.handle_frame(bytes(base[: rng.randint(0, len(base))]), 1.0)
    assert cell.frames == 2000
    assert cell.primary_packets + cell.mirror_packets + cell.ignored == 2000


# --- the loop with a fake socket -----------------------------------------------------------
def test_loop_sends_passing_primary_frames_back_unchanged_and_nothing_else():
    conv, frames = _conversation_frames()
    orphan = Conversation(client_port=40001).frame(True, TCP_ACK, b"x")
    mirror = conv.frame(False, TCP_ACK, mirror=True)
    port = FakePort(frames[:2] + [orphan, mirror, build_arp_frame(), b"\x00" * 5] + frames[2:])
    cell = Cell("c1")
    run_until_idle(cell, port)
    assert port.sent == frames
    counters = cell.counters()
    assert counters["forwarded"] == 4 and counters["dropped_no_state"] == 1
    assert counters["mirror_packets"] == 1 and counters["ignored"] == 2
    assert counters["frames"] == 8


def test_loop_counts_send_errors_and_carries_on():
    _, frames = _conversation_frames()
    port = FakePort(frames, send_error=OSError(errno.ENOBUFS, "No buffer space available"))
    cell = Cell("c1")
    run_until_idle(cell, port)
    assert cell.send_errors == 4 and cell.forwarded == 0 and cell.primary_packets == 4


def test_loop_survives_a_frame_whose_handling_raises():
    _, frames = _conversation_frames()
    tracker = ConnTracker()
    real_process = tracker.process
    calls = []

    def flaky(info, is_mirror, now):
        calls.append(info)
        if len(calls) == 2:
            raise RuntimeError("bug")
        return real_process(info, is_mirror, now)

    tracker.process = flaky
    cell = Cell("c1", tracker)
    port = FakePort(frames[:1] + frames[1:2] * 2 + frames[2:])
    run_until_idle(cell, port)
    assert cell.errors == 1 and cell.errors_by_reason == {"RuntimeError": 1}
    assert len(port.sent) == 4  # the SYN-ACK's second copy got through


def test_transient_recv_error_is_counted_and_fatal_one_stops_the_loop():
    port = FakePort(recv_error=OSError(errno.ENETDOWN, "Network is down"))
    cell = Cell("c1")
    run_until_idle(cell, port)
    assert cell.recv_errors == 1
    port = FakePort(recv_error=OSError(errno.ENODEV, "No such device"))
    loop = CellLoop(Cell("c2"), port, clock=FakeClock(), tick_interval_s=0.01)
    with pytest.raises(CellIOError, match="lost its interface"):
        loop.run()
    loop.close()
    port.close()


def test_ticks_report_changed_and_expired_flows_to_hooks():
    tracker = ConnTracker(TrackerConfig(timeouts=Timeouts(syn_sent=1.0)))
    cell = Cell("c1", tracker, expire_interval_s=5.0)
    conv = Conversation()
    syn = conv.frame(True, 0x02, seq=1000, ack=0, advance=False)
    assert cell.handle_frame(syn, 0.0)
    reports = []
    cell.add_tick_hook(lambda c, report: reports.append(report))
    cell.add_tick_hook(lambda c, report: 1 / 0)  # a broken hook does not stop the others
    first = cell.tick(0.1)
    assert first.changed == (conv.syn().key,) and first.expired == ()
    assert cell.tick(0.2).changed == ()
    assert cell.tick(2.0).expired == ()  # idle past its timeout, but the last scan was at 0.1
    assert cell.tick(5.2).expired == (conv.syn().key,)
    assert len(reports) == 4 and cell.hook_errors == 4


def test_a_scan_of_a_large_table_goes_on_at_every_tick_until_done(monkeypatch):
    monkeypatch.setattr(cell_module, "EXPIRE_SLICE", 2)
    tracker = ConnTracker(TrackerConfig(timeouts=Timeouts(udp_new=1.0)))
    cell = Cell("c1", tracker, expire_interval_s=5.0)
    for port in range(5):
        assert cell.handle_frame(build_udp_frame(CLIENT, SERVER, 10000 + port, 53), 0.0)
    assert len(cell.tick(2.0).expired) == 2  # the scan begins: two flows per tick
    assert len(cell.tick(2.1).expired) == 2  # and goes on before the interval has passed
    assert len(cell.tick(2.2).expired) == 1 and not tracker.sweeping
    assert cell.handle_frame(build_udp_frame(CLIENT, SERVER, 20000, 53), 2.2)
    assert cell.tick(4.0).expired == ()  # the next scan waits for the interval
    assert len(cell.tick(7.0).expired) == 1


def test_loop_calls_registered_readers_and_survives_their_errors():
    port = FakePort()
    cell = Cell("c1")
    loop = CellLoop(cell, port, clock=FakeClock(), tick_interval_s=0.01)
    read_fd, write_fd = os.pipe()
    calls = []

    def reader():
        calls.append(os.read(read_fd, 100))
        if len(calls) == 1:
            os.write(write_fd, b"again")
            raise ValueError("reader bug")
        loop.stop()

    loop.add_reader(read_fd, reader)
    os.write(write_fd, b"hello")
    loop.run()
    loop.close()
    port.close()
    os.close(read_fd)
    os.close(write_fd)
    assert calls == [b"hello", b"again"]
