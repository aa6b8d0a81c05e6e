"""A scripted OpenFlow 1.3 switch on loopback: handshake, then packet-ins timed until the controller has answered.

Two layers: ``PeerProtocol`` answers the controller's requests and attributes
its FLOW_MOD / GROUP_MOD / PACKET_OUT messages to packet-ins, without any
socket (the unit tests feed it recorded bytes); ``ScriptedSwitch`` drives it
over a TCP connection to ``ryu-manager`` and times every packet-in.

A packet-in's answer is complete when the PACKET_OUT carrying its frame
arrives: both controllers measured send their flow mods for a packet first and
its packet-out last, over one ordered TCP stream, and handle one packet-in
after the other. The flow and group mods received since the previous
completion are counted as that packet-in's.
"""

from __future__ import annotations

import socket
import time
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from benchmarks.harness import openflow_wire as wire

RECV_BYTES = 1 << 16
CONNECT_RETRY_S = 0.05
NS_PER_US = 1_000
NS_PER_S = 1_000_000_000


class PeerError(RuntimeError):
    """The controller did not answer as a switch expects (closed, silent, or spoke something else)."""


@dataclass(frozen=True)
class NewFlow:
    """One packet-in to send: the first frame of a new flow and the port it came in on."""

    frame: bytes
    in_port: int


@dataclass(frozen=True)
class Completion:
    """The controller's whole answer to one packet-in."""

    index: int
    done_ns: int
    flow_mods: int
    group_mods: int


class PeerProtocol:
    """What the scripted switch answers and counts (no I/O).

    Args:
        dp_id: The datapath id announced in FEATURES_REPLY.
        ports: Port numbers announced in PORT_DESC replies (all up).
    """

    def __init__(self, dp_id: int, ports: Sequence[int]) -> None:
        self.dp_id = dp_id
        self.ports = tuple(ports)
        self.received: Counter = Counter()  #: messages from the controller, by OpenFlow type
        self.flow_mod_tables: Counter = Counter()  #: FLOW_MODs by table id
        self.port_desc_replies = 0
        self.errors: List[bytes] = []  #: ERROR messages the controller sent (it should send none)
        self.unexpected_packet_outs = 0  #: packet-outs carrying no frame this peer is waiting for
        self.echo_replies: Dict[int, int] = {}  #: xid -> arrival (ns) of ECHO_REPLYs
        self.completions: List[Completion] = []
        #: ROLE_REQUESTs received: (arrival ns, role, generation_id); each is granted.
        self.role_requests: List[Tuple[int, int, int]] = []
        self._reader = wire.MessageReader()
        self._waiting: Dict[bytes, int] = {}
        self._flow_mods = 0
        self._group_mods = 0

    def begin(self, frames: Sequence[bytes]) -> None:
        """Start a new exchange: wait for a packet-out of each frame (index = position)."""
        if len(set(frames)) != len(frames):
            raise ValueError("the frames of one exchange must be distinct (a packet-out names its frame)")
        self._waiting = {frame: index for index, frame in enumerate(frames)}
        self.completions = []
        self._flow_mods = self._group_mods = 0

    @property
    def role(self) -> int:
        """The role last granted to this controller (EQUAL before any request)."""
        granted = [role for _ns, role, _gen in self.role_requests if role != wire.OFPCR_ROLE_NOCHANGE]
        return granted[-1] if granted else wire.OFPCR_ROLE_EQUAL

    @property
    def waiting(self) -> int:
        """Packet-ins of the current exchange not answered yet."""
        return len(self._waiting)

    def receive(self, data: bytes, now_ns: int) -> bytes:
        """Feed bytes from the controller; returns the bytes to send back (possibly none).

        Raises:
            WireError: the controller sent something that is not OpenFlow 1.3.
        """
        replies = []
        for message in self._reader.feed(data):
            reply = self.handle(message, now_ns)
            if reply:
                replies.append(reply)
        return b"".join(replies)

    def handle(self, message: bytes, now_ns: int) -> Optional[bytes]:
        """One whole message from the controller; returns the reply, if it needs one."""
        _, msg_type, _, xid = wire.header_of(message)
        self.received[msg_type] += 1
        if msg_type == wire.OFPT_PACKET_OUT:
            index = self._waiting.pop(wire.packet_out_frame(message), None)
            if index is None:
                self.unexpected_packet_outs += 1
            else:
                self.completions.append(Completion(index, now_ns, self._flow_mods, self._group_mods))
                self._flow_mods = self._group_mods = 0
            return None
        if msg_type == wire.OFPT_FLOW_MOD:
            self._flow_mods += 1
            self.flow_mod_tables[wire.flow_mod_summary(message).table_id] += 1
            return None
        if msg_type == wire.OFPT_GROUP_MOD:
            self._group_mods += 1
            return None
        if msg_type == wire.OFPT_ECHO_REQUEST:
            return wire.echo_reply(xid, message[wire.HEADER.size :])
        if msg_type == wire.OFPT_ECHO_REPLY:
            self.echo_replies[xid] = now_ns
            return None
        if msg_type == wire.OFPT_BARRIER_REQUEST:
            return wire.barrier_reply(xid)
        if msg_type == wire.OFPT_FEATURES_REQUEST:
            return wire.features_reply(xid, self.dp_id)
        if msg_type == wire.OFPT_GET_CONFIG_REQUEST:
            return wire.get_config_reply(xid)
        if msg_type == wire.OFPT_MULTIPART_REQUEST:
            mp_type = wire.multipart_type(message)
            if mp_type == wire.OFPMP_PORT_DESC:
                self.port_desc_replies += 1
                return wire.port_desc_reply(xid, self.ports, self.dp_id)
            return wire.empty_multipart_reply(xid, mp_type)
        if msg_type == wire.OFPT_ROLE_REQUEST:
            role, generation_id = wire.role_of_request(message)
            self.role_requests.append((now_ns, role, generation_id))
            return wire.role_reply(xid, role, generation_id)
        if msg_type == wire.OFPT_ERROR:
            self.errors.append(message)
        return None  # HELLO, SET_CONFIG and anything else: nothing to answer


@dataclass(frozen=True)
class ExchangeResult:
    """Timings of one exchange of packet-ins (times in ns of ``time.perf_counter_ns``)."""

    window: int
    sent_ns: Tuple[int, ...]
    done_ns: Tuple[int, ...]
    flow_mods: Tuple[int, ...]
    group_mods: Tuple[int, ...]
    peer_cpu_s: float

    @property
    def flows(self) -> int:
        return len(self.sent_ns)

    @property
    def wall_s(self) -> float:
        """From the first packet-in sent to the last answer complete."""
        return (max(self.done_ns) - min(self.sent_ns)) / NS_PER_S

    @property
    def flows_per_s(self) -> float:
        return self.flows / self.wall_s

    @property
    def latencies_us(self) -> List[float]:
        """Per packet-in: from sending it to its answer complete."""
        return [(done - sent) / NS_PER_US for sent, done in zip(self.sent_ns, self.done_ns)]


class ScriptedSwitch:
    """A TCP connection to the controller, spoken to as a switch.

    Args:
        sock: A connected socket.
        protocol: The answers and counts.
        table_id: The table whose miss sends packet-ins to this controller.
        cookie: That table-miss entry's cookie (carried in each packet-in).
    """

    def __init__(self, sock: socket.socket, protocol: PeerProtocol, table_id: int, cookie: int = 0) -> None:
        self.sock = sock
        self.protocol = protocol
        self.table_id = table_id
        self.cookie = cookie
        self._xid = 0

    @classmethod
    def connect(
        cls, address: Tuple[str, int], protocol: PeerProtocol, table_id: int, cookie: int, timeout_s: float
    ) -> "ScriptedSwitch":
        """Connect (retrying until ``timeout_s``), with Nagle off as a real switch has it."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                sock = socket.create_connection(address, timeout=timeout_s)
                break
            except OSError as error:
                if time.monotonic() > deadline:
                    raise PeerError(f"cannot connect to the controller at {address[0]}:{address[1]}: {error}")
                time.sleep(CONNECT_RETRY_S)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(sock, protocol, table_id, cookie)

    def close(self) -> None:
        self.sock.close()

    def _next_xid(self) -> int:
        self._xid = (self._xid + 1) & 0xFFFFFFFF
        return self._xid

    def _pump(self, done: Callable[[], bool], timeout_s: float, what: str) -> None:
        """Receive and answer until ``done()``; PeerError after ``timeout_s`` without it."""
        deadline = time.monotonic() + timeout_s
        while not done():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise PeerError(f"no {what} within {timeout_s:g} s")
            self._receive_once(remaining, what)

    def _receive_once(self, timeout_s: float, what: str) -> None:
        self.sock.settimeout(timeout_s)
        try:
            data = self.sock.recv(RECV_BYTES)
        except socket.timeout:
            return
        if not data:
            raise PeerError(f"the controller closed the connection while waiting for {what}")
        reply = self.protocol.receive(data, time.perf_counter_ns())
        if reply:
            self.sock.sendall(reply)

    def handshake(self, timeout_s: float) -> None:
        """HELLO, FEATURES_REPLY, PORT_DESC reply: after that Ryu hands packet-ins to the apps."""
        self.sock.sendall(wire.hello(self._next_xid()))
        self._pump(lambda: self.protocol.port_desc_replies > 0, timeout_s, "features and port requests")

    def exchange(self, flows: Sequence[NewFlow], window: int, timeout_s: float) -> ExchangeResult:
        """Send one packet-in per flow, at most ``window`` unanswered at a time, and time each answer.

        Args:
            flows: Distinct frames, each sent once.
            window: Packet-ins in flight (1: one after the other, for latency).
            timeout_s: Longest wait for any one answer.

        Raises:
            PeerError: an answer did not come (the controller dropped a packet-in, or died).
        """
        if window < 1:
            raise ValueError(f"window must be >= 1, not {window}")
        protocol = self.protocol
        protocol.begin([flow.frame for flow in flows])
        packets = [
            wire.packet_in(flow.frame, flow.in_port, self.table_id, self.cookie, self._next_xid())
            for flow in flows
        ]
        count = len(packets)
        sent = [0] * count
        sock = self.sock
        sock.settimeout(timeout_s)
        cpu_start = time.process_time()
        next_index = 0
        while next_index < min(window, count):
            sent[next_index] = time.perf_counter_ns()
            sock.sendall(packets[next_index])
            next_index += 1
        completions = protocol.completions
        while len(completions) < count:
            before = len(completions)
            try:
                data = sock.recv(RECV_BYTES)
            except socket.timeout:
                raise PeerError(
                    f"the controller answered {before} of {count} packet-ins, then nothing for "
                    f"{timeout_s:g} s (dropped one? see its log)"
                ) from None
            if not data:
                raise PeerError(f"the controller closed the connection after answering {before} of {count}")
            reply = protocol.receive(data, time.perf_counter_ns())
            if reply:
                sock.sendall(reply)
            for _ in range(len(completions) - before):
                if next_index < count:
                    sent[next_index] = time.perf_counter_ns()
                    sock.sendall(packets[next_index])
                    next_index += 1
        peer_cpu_s = time.process_time() - cpu_start
        by_index = sorted(completions, key=lambda c: c.index)
        return ExchangeResult(
            window=window,
            sent_ns=tuple(sent),
            done_ns=tuple(c.done_ns for c in by_index),
            flow_mods=tuple(c.flow_mods for c in by_index),
            group_mods=tuple(c.group_mods for c in by_index),
            peer_cpu_s=peer_cpu_s,
        )

    def echo_round_trips_us(self, count: int, timeout_s: float) -> List[float]:
        """``count`` ECHO_REQUESTs one after the other: the framework's own floor (no app sees them)."""
        rtts = []
        for _ in range(count):
            xid = self._next_xid()
            start = time.perf_counter_ns()
            self.sock.sendall(wire.echo_request(xid))
            self._pump(lambda: xid in self.protocol.echo_replies, timeout_s, "echo reply")
            rtts.append((self.protocol.echo_replies.pop(xid) - start) / NS_PER_US)
        return rtts
