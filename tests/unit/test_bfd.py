"""Tests for the cell's BFD session (RFC 5880 asynchronous mode) against packets shaped as Open vSwitch sends them."""

import random
import struct

import pytest

from prism.cell.bfd import (
    BFD_MAC,
    FLAG_FINAL,
    FLAG_POLL,
    FRAME_LENGTH,
    BfdError,
    BfdSession,
    BfdSettings,
    BfdSpeaker,
    ControlPacket,
    Diag,
    State,
    build_frame,
    is_bfd_frame,
    parse_frame,
)
from prism.cell.cell import Cell
from prism.cell.loop import CellLoop
from test_cell import FakeClock, FakePort

OVS_DISC = 0x1234
CELL_MAC = bytes.fromhex("020000000001")
OVS_MAC = bytes.fromhex("020000000099")


def ovs_packet(state, your_disc=0, flags=0, min_tx_ms=10, min_rx_ms=10, mult=3, diag=Diag.NONE):
    """A control packet as Open vSwitch's bfd_put_packet writes it."""
    return ControlPacket(state, diag, flags, mult, OVS_DISC, your_disc, min_tx_ms * 1000, min_rx_ms * 1000)


def ovs_frame(packet, ttl=255):
    """The whole frame: OVS's MAC to 00:23:20:00:00:01, 169.254.1.1 -> 169.254.1.0, UDP 49152 -> 3784."""
    frame = bytearray(build_frame(packet, OVS_MAC))
    frame[0:6] = BFD_MAC
    frame[14 + 8] = ttl
    return bytes(frame)


def up_session(settings=BfdSettings(10, 10, 3), now=0.0):
    """A session brought Up by the three-way handshake."""
    session = BfdSession(settings, 0xBEEF, now, random.Random(1))
    session.receive(ovs_packet(State.DOWN), now)
    assert session.state is State.INIT
    session.receive(ovs_packet(State.UP, your_disc=0xBEEF), now)
    assert session.state is State.UP
    return session


def test_packet_round_trip_and_wire_layout():
    packet = ControlPacket(State.UP, Diag.CONCATENATED_PATH_DOWN, FLAG_FINAL, 3, 7, 9, 10_000, 20_000)
    wire = packet.encode()
    assert len(wire) == 24
    assert wire[0] == (1 << 5) | 6  # version 1, diag 6
    assert wire[1] == (3 << 6) | FLAG_FINAL
    assert ControlPacket.decode(wire) == packet


def test_frame_is_what_ovs_accepts():
    frame = build_frame(ControlPacket(State.DOWN, Diag.NONE, 0, 3, 5, 0, 10_000, 10_000), CELL_MAC)
    assert len(frame) == FRAME_LENGTH
    assert frame[:6] == BFD_MAC and frame[6:12] == CELL_MAC and frame[12:14] == b"\x08\x00"
    assert frame[14 + 8] == 255 and frame[14 + 9] == 17  # TTL 255, UDP
    assert frame[14 + 12:14 + 20] == bytes([169, 254, 1, 0, 169, 254, 1, 1])
    assert struct.unpack("!H", frame[14 + 22:14 + 24])[0] == 3784
    words = struct.unpack("!10H", frame[14:34])
    total = sum(words)
    assert (total & 0xFFFF) + (total >> 16) == 0xFFFF  # the IP header checksum verifies
    assert is_bfd_frame(frame) and parse_frame(frame).my_disc == 5


@pytest.mark.parametrize("mutate, reason", [
    (lambda f: f[:14 + 8] + b"\x40" + f[14 + 9:], "TTL"),
    (lambda f: f[:42] + bytes([2 << 5]) + f[43:], "version"),
    (lambda f: f[:42 + 2] + b"\x00" + f[42 + 3:], "multiplier"),
    (lambda f: f[:42 + 1] + bytes([(3 << 6) | 0x04]) + f[42 + 2:], "authenticated"),
    (lambda f: f[:42 + 4] + b"\0\0\0\0" + f[42 + 8:], "my discriminator"),
    (lambda f: f[:50], "bytes"),
])  # fmt: skip
def test_discarded_packets_say_why(mutate, reason):
    frame = ovs_frame(ovs_packet(State.UP, your_disc=1))
    with pytest.raises(BfdError, match=reason):
        parse_frame(mutate(frame))


def test_not_bfd_frames_are_not_taken():
    frame = ovs_frame(ovs_packet(State.DOWN))
    assert not is_bfd_frame(frame[:12] + b"\x86\xdd" + frame[14:])
    assert not is_bfd_frame(frame[:14 + 20 + 2] + b"\x0e\xc9" + frame[14 + 20 + 4:])  # UDP 3785
    assert not is_bfd_frame(frame[:30])  # no UDP header


def test_three_way_handshake_then_fast_packets():
    session = BfdSession(BfdSettings(10, 10, 3), 0xBEEF, 0.0, random.Random(1))
    first = session.poll(0.0)
    assert first.state is State.DOWN and first.your_disc == 0 and first.min_tx_us == 1_000_000  # slow while down
    session.receive(ovs_packet(State.DOWN), 0.1)
    answer = session.poll(0.1)  # a state change goes out at once
    assert answer.state is State.INIT and answer.your_disc == OVS_DISC
    session.receive(ovs_packet(State.UP, your_disc=0xBEEF), 0.2)
    up = session.poll(0.2)
    assert up.state is State.UP and up.min_tx_us == 10_000 and up.mult == 3
    assert session.changes == 1
    # Up: one packet every 7.5-10 ms (RFC 5880 jitter), none in between
    assert session.poll(0.2 + 0.0074) is None
    assert session.poll(0.2 + 0.0101) is not None


def test_poll_is_answered_with_final_at_once():
    session = up_session()
    session.poll(0.0)
    session.receive(ovs_packet(State.UP, your_disc=0xBEEF, flags=FLAG_POLL, min_tx_ms=20, min_rx_ms=20), 0.001)
    answer = session.poll(0.001)
    assert answer is not None and answer.final and not answer.poll
    assert session.tx_interval_s() == pytest.approx(0.020)  # the switch now wants 20 ms


def test_silence_expires_the_session_after_mult_intervals():
    session = up_session(now=1.0)
    assert not session.expire(1.029)
    assert session.expire(1.031)  # 3 x 10 ms after the last packet
    assert session.state is State.DOWN and session.diag is Diag.EXPIRED
    assert session.poll(1.031).state is State.DOWN


def test_neighbor_down_takes_the_session_down():
    session = up_session()
    session.receive(ovs_packet(State.DOWN), 0.5)
    assert session.state is State.DOWN and session.diag is Diag.NEIGHBOR_DOWN


def test_wrong_discriminator_is_discarded():
    session = up_session()
    session.receive(ovs_packet(State.DOWN, your_disc=0x999), 0.1)
    assert session.state is State.UP and session.discarded == 1


def test_path_down_keeps_the_session_up_and_tells_the_switch_at_once():
    session = up_session()
    session.poll(0.0)
    session.set_path_down("draining")
    packet = session.poll(0.0001)
    assert packet.state is State.UP and packet.diag is Diag.CONCATENATED_PATH_DOWN
    assert session.describe(0.0)["path_down"] == "draining"
    session.set_path_down(None)
    assert session.poll(0.0002).diag is Diag.NONE


def test_settings_are_checked():
    with pytest.raises(ValueError, match="min_tx_ms"):
        BfdSettings(0, 10, 3)
    with pytest.raises(ValueError, match="mult"):
        BfdSettings(10, 10, 0)


class _Stop:
    def __init__(self, loop, after):
        self.loop, self.after = loop, after

    def __call__(self, _cell, report):
        if report.now >= self.after:
            self.loop.stop()


def test_loop_gives_bfd_frames_to_the_speaker_not_the_cell():
    """The loop answers the switch's handshake from its own thread, and never forwards a BFD frame."""
    port = FakePort([ovs_frame(ovs_packet(State.DOWN))])
    cell = Cell("c1")
    clock = FakeClock(start=0.0, step=0.001)
    loop = CellLoop(cell, port, clock=clock, tick_interval_s=0.01)
    speaker = BfdSpeaker(BfdSession(BfdSettings(10, 10, 3), 0xBEEF, 0.0, random.Random(1)), port.send, CELL_MAC)
    loop.set_bfd(speaker)
    cell.add_tick_hook(_Stop(loop, 0.05))
    loop.run()
    loop.close()
    assert cell.forwarded == 0 and cell.counters()["ignored"] == 0
    sent = [parse_frame(frame) for frame in port.sent]
    assert sent and all(frame[6:12] == CELL_MAC for frame in port.sent)
    assert any(p.state is State.INIT and p.your_disc == OVS_DISC for p in sent)  # the handshake answered
    # and with no more packets from the switch, the loop's timer expired the session (3 x 10 ms)
    assert sent[-1].state is State.DOWN and sent[-1].diag is Diag.EXPIRED
    port.close()


def test_overload_guard_needs_sustained_drops_and_quiet_to_clear():
    from prism.cell.bfd import OverloadGuard

    guard = OverloadGuard(ticks=3, clear_after_s=2.0)
    assert not guard.update(5, 0.0) and not guard.update(1, 0.1)
    assert not guard.update(0, 0.2)  # a quiet tick resets the streak
    assert not guard.update(2, 0.3) and not guard.update(2, 0.4)
    assert guard.update(2, 0.5)  # third dropping tick in a row
    assert guard.update(0, 1.0) and guard.update(0, 2.4)  # not yet 2 s quiet
    assert not guard.update(0, 2.5)
    with pytest.raises(ValueError):
        OverloadGuard(ticks=0)
