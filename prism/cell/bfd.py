"""BFD (RFC 5880, asynchronous mode) between a cell and Open vSwitch on the cell's data port.

Open vSwitch runs a BFD session on every cell port that has ``bfd:enable=true``
and clears the port's OpenFlow LIVE flag when that session is not Up, so a
FAST_FAILOVER group moves the port's traffic to the next bucket without the
controller. The cell's half of the session lives here and runs from the
cell's packet loop (``prism.cell.loop``): a loop that stalls stops sending,
and the switch declares the cell dead after ``mult`` x the negotiated
interval.

What Open vSwitch sends and accepts (lib/bfd.c, OVS 3.1): control packets of
24 bytes, no authentication, in Ethernet to ``00:23:20:00:00:01``, IPv4
``169.254.1.1 -> 169.254.1.0``, UDP to port 3784 with TTL 255; it processes any
such packet that arrives on the port (it checks the UDP port and the TTL,
not the addresses by default). Its detection time is the interval we
advertise (our DesiredMinTx, at least its RequiredMinRx) times the
multiplier we send. A non-zero diagnostic of Path Down, Concatenated Path
Down or Reverse Concatenated Path Down in our packets makes it stop
forwarding to the port while the session stays Up: that is how a draining or
overloaded cell asks the switch to stop using it.

``BfdSession`` is pure: every method takes ``now`` (seconds of a monotonic
clock) and frames are bytes in and out.
"""

from __future__ import annotations

import enum
import random
import struct
from dataclasses import dataclass
from typing import Optional

BFD_UDP_PORT = 3784  #: RFC 5881 single-hop control port
BFD_SOURCE_PORT = 49152  #: RFC 5881: source port in 49152-65535
#: Open vSwitch's default BFD destination MAC (``bfd_dst_mac``), used both ways.
BFD_MAC = bytes.fromhex("002320000001")
#: Open vSwitch's default BFD addresses (``bfd_src_ip`` / ``bfd_dst_ip``): the switch's end, then ours.
SWITCH_IP = bytes([169, 254, 1, 1])
CELL_IP = bytes([169, 254, 1, 0])
BFD_TTL = 255  #: RFC 5881 GTSM: a single-hop packet arrives with TTL 255
BFD_VERSION = 1
CONTROL_LENGTH = 24  #: mandatory section, no authentication
#: RFC 5880 6.8.3: while not Up, send at most once a second.
SLOW_TX_US = 1_000_000
MICROSECONDS = 1_000_000
ETH_TYPE_IPV4 = 0x0800
IPPROTO_UDP = 17
ETH_HEADER = 14
IP_HEADER = 20
UDP_HEADER = 8
FRAME_LENGTH = ETH_HEADER + IP_HEADER + UDP_HEADER + CONTROL_LENGTH
#: The IP TOS OVS uses for its BFD packets (precedence "internetwork control").
IPTOS_PREC_INTERNETCONTROL = 0xC0
#: RFC 5880 6.8.7: intervals are reduced by 0 to 25% at random (10 to 25% with mult 1).
JITTER_MAX = 0.25
JITTER_MIN_MULT_1 = 0.10

_CONTROL = struct.Struct("!BBBBIIIII")
_IP = struct.Struct("!BBHHHBBH4s4s")
_UDP = struct.Struct("!HHHH")

FLAG_POLL = 0x20
FLAG_FINAL = 0x10
FLAG_CPI = 0x08
FLAG_AUTH = 0x04
FLAG_DEMAND = 0x02
FLAG_MULTIPOINT = 0x01


class BfdError(ValueError):
    """A frame that is not a BFD control packet we accept (the reason says why)."""


class State(enum.IntEnum):
    """bfd.SessionState."""

    ADMIN_DOWN = 0
    DOWN = 1
    INIT = 2
    UP = 3


class Diag(enum.IntEnum):
    """bfd.LocalDiag: why the session last left Up, or (path down kinds) why not to forward."""

    NONE = 0
    EXPIRED = 1  #: Control Detection Time Expired
    ECHO_FAILED = 2
    NEIGHBOR_DOWN = 3  #: Neighbor Signaled Session Down
    FORWARDING_RESET = 4
    PATH_DOWN = 5
    CONCATENATED_PATH_DOWN = 6  #: what ``bfd:cpath_down`` sends; we send it when draining or overloaded
    ADMIN_DOWN = 7
    REVERSE_CONCATENATED_PATH_DOWN = 8


#: Diagnostics that make Open vSwitch stop forwarding to an Up session's port.
NOT_FORWARDING = frozenset({Diag.PATH_DOWN, Diag.CONCATENATED_PATH_DOWN, Diag.REVERSE_CONCATENATED_PATH_DOWN})


@dataclass(frozen=True)
class BfdSettings:
    """The cell's side of the session: intervals in milliseconds, the detection multiplier.

    Raises:
        ValueError: an interval below 1 ms or a multiplier outside 1-255.
    """

    min_tx_ms: int = 10  #: how often we send (the switch finds us dead after mult of these)
    min_rx_ms: int = 100  #: how often the switch should send (we find it dead after its mult of these)
    mult: int = 4

    def __post_init__(self) -> None:
        for name in ("min_tx_ms", "min_rx_ms"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"BFD {name} must be a whole number of milliseconds >= 1, not {value!r}")
        if isinstance(self.mult, bool) or not isinstance(self.mult, int) or not 1 <= self.mult <= 255:
            raise ValueError(f"BFD mult must be 1-255, not {self.mult!r}")


@dataclass(frozen=True)
class ControlPacket:
    """The mandatory section of a BFD control packet (RFC 5880 4.1); intervals in microseconds."""

    state: State
    diag: Diag
    flags: int
    mult: int
    my_disc: int
    your_disc: int
    min_tx_us: int
    min_rx_us: int
    min_echo_rx_us: int = 0

    @property
    def poll(self) -> bool:
        return bool(self.flags & FLAG_POLL)

    @property
    def final(self) -> bool:
        return bool(self.flags & FLAG_FINAL)

    def encode(self) -> bytes:
        """The 24 bytes on the wire."""
        return _CONTROL.pack((BFD_VERSION << 5) | int(self.diag), (int(self.state) << 6) | self.flags,
                             self.mult, CONTROL_LENGTH, self.my_disc, self.your_disc,
                             self.min_tx_us, self.min_rx_us, self.min_echo_rx_us)  # fmt: skip

    @classmethod
    def decode(cls, data: bytes) -> "ControlPacket":
        """Parse and check a control packet as RFC 5880 6.8.6 asks (BfdError if it must be discarded)."""
        if len(data) < CONTROL_LENGTH:
            raise BfdError(f"control packet of {len(data)} bytes, at least {CONTROL_LENGTH} needed")
        vers_diag, state_flags, mult, length, my_disc, your_disc, min_tx, min_rx, echo = _CONTROL.unpack_from(data)
        if vers_diag >> 5 != BFD_VERSION:
            raise BfdError(f"BFD version {vers_diag >> 5}, not {BFD_VERSION}")
        if length < CONTROL_LENGTH or length > len(data):
            raise BfdError(f"length field {length} does not fit a {len(data)}-byte payload")
        flags = state_flags & 0x3F
        if flags & FLAG_AUTH:
            raise BfdError("authenticated control packet (no authentication is configured)")
        if flags & FLAG_MULTIPOINT:
            raise BfdError("multipoint flag set")
        if mult == 0:
            raise BfdError("detection multiplier 0")
        if my_disc == 0:
            raise BfdError("my discriminator 0")
        state = State(state_flags >> 6)
        if your_disc == 0 and state not in (State.DOWN, State.ADMIN_DOWN):
            raise BfdError(f"your discriminator 0 in state {state.name}")
        diag = vers_diag & 0x1F
        return cls(state, Diag(diag) if diag in Diag._value2member_map_ else Diag.NONE, flags, mult,
                   my_disc, your_disc, min_tx, min_rx, echo)  # fmt: skip


def is_bfd_frame(frame: bytes) -> bool:
    """True for an IPv4/UDP frame to the BFD control port (cheap: the data path calls it on every frame)."""
    return (
        len(frame) >= ETH_HEADER + IP_HEADER + UDP_HEADER
        and frame[12] == 0x08 and frame[13] == 0x00
        and frame[ETH_HEADER + 9] == IPPROTO_UDP
        and frame[ETH_HEADER] == 0x45
        and frame[ETH_HEADER + IP_HEADER + 2] == BFD_UDP_PORT >> 8
        and frame[ETH_HEADER + IP_HEADER + 3] == BFD_UDP_PORT & 0xFF
    )  # fmt: skip


def parse_frame(frame: bytes) -> ControlPacket:
    """The control packet of a BFD frame (``is_bfd_frame``), with the single-hop TTL check (BfdError)."""
    if not is_bfd_frame(frame):
        raise BfdError("not an IPv4/UDP frame to port 3784 without IP options")
    ttl = frame[ETH_HEADER + 8]
    if ttl != BFD_TTL:
        raise BfdError(f"TTL {ttl}, a single-hop BFD packet has {BFD_TTL}")
    return ControlPacket.decode(frame[ETH_HEADER + IP_HEADER + UDP_HEADER:])


def build_frame(packet: ControlPacket, source_mac: bytes, source_port: int = BFD_SOURCE_PORT) -> bytes:
    """A whole Ethernet frame carrying ``packet`` to the switch (OVS's addresses, mirrored)."""
    payload = packet.encode()
    udp = _UDP.pack(source_port, BFD_UDP_PORT, UDP_HEADER + len(payload), 0)  # checksum 0: none (IPv4)
    header = _IP.pack(0x45, IPTOS_PREC_INTERNETCONTROL, IP_HEADER + len(udp) + len(payload), 0, 0,
                      BFD_TTL, IPPROTO_UDP, 0, CELL_IP, SWITCH_IP)  # fmt: skip
    header = header[:10] + struct.pack("!H", _ip_checksum(header)) + header[12:]
    return BFD_MAC + source_mac + struct.pack("!H", ETH_TYPE_IPV4) + header + udp + payload


def _ip_checksum(header: bytes) -> int:
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


class BfdSession:
    """The cell's end of one BFD session (RFC 5880 asynchronous mode, no echo, no demand).

    Args:
        settings: Our intervals and multiplier.
        my_disc: Our discriminator (non-zero, unique per session: a random 32-bit number).
        now: Current time (monotonic seconds).
        rng: Randomness for the transmit jitter (a seeded ``random.Random`` in tests).

    Attributes:
        state: bfd.SessionState.
        diag: The diagnostic we send.
        remote_state, remote_diag: What the switch said last.
        changes: State changes of this session (Up <-> not Up), for counting flaps.
        received, sent, discarded: Packet counters.
    """

    def __init__(self, settings: BfdSettings, my_disc: int, now: float,
                 rng: Optional[random.Random] = None) -> None:  # fmt: skip
        if not 0 < my_disc < 2**32:
            raise ValueError(f"my discriminator must be 1..2**32-1, not {my_disc}")
        self.settings = settings
        self.my_disc = my_disc
        self.rng = rng or random.Random()
        self.state = State.DOWN
        self.diag = Diag.NONE
        self.path_down_reason: Optional[str] = None
        self.remote_disc = 0
        self.remote_state = State.DOWN
        self.remote_diag = Diag.NONE
        self.remote_min_rx_us = 1  # RFC 5880 6.8.1: bfd.RemoteMinRxInterval starts at 1
        self.remote_min_tx_us = 0
        self.remote_mult = 0
        self.detect_at: Optional[float] = None
        self.next_tx = now
        self._final_due = False  # a Poll came: answer with Final at once
        self._send_now = False  # something changed that the switch should hear at once
        self.changes = 0
        self.up_since: Optional[float] = None
        self.received = self.sent = self.discarded = 0

    # --- inputs --------------------------------------------------------------------------------
    def receive(self, packet: ControlPacket, now: float) -> None:
        """A control packet from the switch (RFC 5880 6.8.6 reception rules)."""
        if packet.your_disc and packet.your_disc != self.my_disc:
            self.discarded += 1
            return
        self.received += 1
        self.remote_disc = packet.my_disc
        self.remote_state = packet.state
        self.remote_diag = packet.diag
        self.remote_mult = packet.mult
        self.remote_min_tx_us = packet.min_tx_us
        if packet.min_rx_us != self.remote_min_rx_us:
            self.remote_min_rx_us = packet.min_rx_us
            self.next_tx = min(self.next_tx, now + self.tx_interval_s() * (1.0 - JITTER_MAX))
        if packet.poll:
            self._final_due = True
        # detection time: the remote's multiplier times the agreed rx interval (6.8.4)
        rx_interval_us = max(self.settings.min_rx_ms * 1000, packet.min_tx_us)
        self.detect_at = now + packet.mult * rx_interval_us / MICROSECONDS
        if packet.state is State.ADMIN_DOWN:
            if self.state is not State.DOWN:
                self._set_state(State.DOWN, Diag.NEIGHBOR_DOWN, now)
            return
        if self.state is State.DOWN:
            if packet.state is State.DOWN:
                self._set_state(State.INIT, self.diag, now)
            elif packet.state is State.INIT:
                self._set_state(State.UP, self.diag, now)
        elif self.state is State.INIT:
            if packet.state in (State.INIT, State.UP):
                self._set_state(State.UP, self.diag, now)
        elif self.state is State.UP and packet.state is State.DOWN:
            self._set_state(State.DOWN, Diag.NEIGHBOR_DOWN, now)

    def set_path_down(self, reason: Optional[str]) -> None:
        """Ask the switch to stop (``reason``: e.g. ``"draining"``) or resume (None) forwarding to this cell.

        The session stays Up; the packets carry diagnostic Concatenated Path
        Down, which Open vSwitch treats as "do not forward" (its
        ``bfd:cpath_down``). The change goes out with the next packet, sent at once.
        """
        if reason == self.path_down_reason:
            return
        self.path_down_reason = reason
        self._send_now = True  # tell the switch now, not an interval later

    # --- time ------------------------------------------------------------------------------------
    def expire(self, now: float) -> bool:
        """Apply the detection timer; True if the session just went down for lack of packets."""
        if self.detect_at is not None and now >= self.detect_at and self.state in (State.INIT, State.UP):
            self._set_state(State.DOWN, Diag.EXPIRED, now)
            self.remote_disc = 0
            self.detect_at = None
            return True
        return False

    def tx_interval_s(self) -> float:
        """Seconds between two packets, before jitter: our DesiredMinTx (1 s while not Up), at least their RequiredMinRx."""
        desired_us = self.settings.min_tx_ms * 1000 if self.state is State.UP else max(
            self.settings.min_tx_ms * 1000, SLOW_TX_US)
        return max(desired_us, self.remote_min_rx_us) / MICROSECONDS

    def next_wake(self) -> float:
        """When ``poll`` next has something to do (a send or a detection timeout)."""
        due = 0.0 if self._final_due or self._send_now else self.next_tx
        return due if self.detect_at is None else min(due, self.detect_at)

    def poll(self, now: float) -> Optional[ControlPacket]:
        """Expire the session if due, then the packet to send now, if one is due (and schedule the next)."""
        self.expire(now)
        urgent = self._final_due or self._send_now
        if self.remote_min_rx_us == 0 and not self._final_due:
            return None  # RFC 5880 6.8.7: the remote asked for no periodic packets
        if not urgent and now < self.next_tx:
            return None
        packet = self._packet(final=self._final_due)
        self._final_due = self._send_now = False
        interval = self.tx_interval_s()
        low = JITTER_MIN_MULT_1 if self.settings.mult == 1 else 0.0
        self.next_tx = now + interval * (1.0 - self.rng.uniform(low, JITTER_MAX))
        self.sent += 1
        return packet

    # --- internals -----------------------------------------------------------------------------------
    def _packet(self, final: bool) -> ControlPacket:
        diag = Diag.CONCATENATED_PATH_DOWN if self.path_down_reason else self.diag
        desired_us = self.settings.min_tx_ms * 1000 if self.state is State.UP else max(
            self.settings.min_tx_ms * 1000, SLOW_TX_US)
        return ControlPacket(self.state, diag, FLAG_FINAL if final else 0, self.settings.mult,
                             self.my_disc, self.remote_disc, desired_us,
                             self.settings.min_rx_ms * 1000)  # fmt: skip

    def _set_state(self, state: State, diag: Diag, now: float) -> None:
        was_up, previous = self.state is State.UP, self.state
        self.state = state
        self.diag = diag
        if state is not previous:
            self._send_now = True  # tell the switch at once: the handshake takes no longer than its packets
        if (state is State.UP) != was_up:
            self.changes += 1
            self.up_since = now if state is State.UP else None

    def describe(self, now: float) -> dict:
        """Plain dict for the cell's state document."""
        return {
            "state": self.state.name.lower(),
            "diag": self.diag.name.lower(),
            "path_down": self.path_down_reason,
            "remote_state": self.remote_state.name.lower(),
            "remote_diag": self.remote_diag.name.lower(),
            "min_tx_ms": self.settings.min_tx_ms,
            "min_rx_ms": self.settings.min_rx_ms,
            "mult": self.settings.mult,
            "tx_interval_ms": round(self.tx_interval_s() * 1000, 3),
            "up_for_s": None if self.up_since is None else round(now - self.up_since, 3),
            "state_changes": self.changes,
            "received": self.received,
            "sent": self.sent,
            "discarded": self.discarded,
        }


class BfdSpeaker:
    """A ``BfdSession`` on a packet port: what the cell's loop calls.

    Args:
        session: The session.
        send: Sends one frame out of the cell's data interface.
        source_mac: The interface's MAC (source of our frames).
    """

    def __init__(self, session: BfdSession, send, source_mac: bytes) -> None:
        if len(source_mac) != 6:
            raise ValueError(f"source MAC must be 6 bytes, not {len(source_mac)}")
        self.session = session
        self._send = send
        self.source_mac = source_mac
        self.send_errors = 0
        self.bad_packets = 0

    def on_frame(self, frame: bytes, now: float) -> None:
        """A BFD frame from the switch (``is_bfd_frame``): feed it to the session, answer a Poll at once."""
        try:
            packet = parse_frame(frame)
        except (BfdError, ValueError):
            self.bad_packets += 1
            return
        self.session.receive(packet, now)
        self.run(now)

    def run(self, now: float) -> None:
        """Send the packet that is due, if any."""
        packet = self.session.poll(now)
        if packet is None:
            return
        try:
            self._send(build_frame(packet, self.source_mac))
        except OSError:
            self.send_errors += 1

    def next_wake(self) -> float:
        """When ``run`` next has work."""
        return self.session.next_wake()

    def describe(self, now: float) -> dict:
        """The session and the speaker's counters, for the cell's state document."""
        return {**self.session.describe(now), "send_errors": self.send_errors, "bad_packets": self.bad_packets}


#: ``path_down`` reason of a cell whose packet socket keeps dropping frames.
OVERLOADED = "overloaded"


class OverloadGuard:
    """Decides from the packet socket's drop counts when a cell should ask the switch to stop using it.

    Overloaded after ``ticks`` consecutive ticks that each dropped frames; no
    longer after ``clear_after_s`` without a drop. Pure: drops and ``now`` come in.

    Args:
        ticks: Consecutive dropping ticks that make the cell overloaded (>= 1).
        clear_after_s: Quiet seconds before it asks to be used again.
    """

    def __init__(self, ticks: int, clear_after_s: float = 2.0) -> None:
        if ticks < 1 or clear_after_s <= 0:
            raise ValueError(f"overload guard needs ticks >= 1 and clear_after_s > 0, not {ticks}, {clear_after_s}")
        self.ticks = ticks
        self.clear_after_s = clear_after_s
        self.overloaded = False
        self._dropping = 0
        self._last_drop: Optional[float] = None

    def update(self, drops: int, now: float) -> bool:
        """This tick's drops; returns whether the cell is overloaded now."""
        if drops > 0:
            self._dropping += 1
            self._last_drop = now
            if self._dropping >= self.ticks:
                self.overloaded = True
        else:
            self._dropping = 0
            if self.overloaded and self._last_drop is not None and now - self._last_drop >= self.clear_after_s:
                self.overloaded = False
        return self.overloaded
