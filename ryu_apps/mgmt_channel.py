"""The controller's end of the management network: one UDP socket, PRISM management datagrams in and out.

Under ``ryu-manager`` the ``socket`` module is eventlet's green one, so a
blocking ``recvfrom`` only parks its own green thread. The receive timeout
lets the loop that owns the channel notice that the app is stopping.

Every datagram is sealed and opened by ``prism.mgmt.auth`` (HMAC under the
deployment's key, a replay counter per sender); refusals are counted by
reason in ``counts`` (``refused_<reason>``). ``directory`` and ``profiles``
carry the controller's ``generation`` (fencing: cells refuse older ones).
The socket's receive buffer is enlarged so that a burst of forged datagrams
does not push real heartbeats out before the loop reads them.

``receive_pending`` empties the socket without blocking and gives every
datagram the time the kernel received it (``SO_TIMESTAMP``), so a
controller that was busy for a while still sees when each heartbeat really
arrived: the failure detector judges the cells, not the controller's stall.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import sys
import time
from collections import Counter
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from prism.director.actions import MgmtMessage
from prism.mgmt.protocol import MAX_DATAGRAM, MessageTooBig, encode
from prism.mgmt.auth import MgmtAuth

#: Seconds a receive waits before giving its loop a chance to stop.
RECEIVE_TIMEOUT_S = 0.5
#: Largest datagram read (UDP's limit).
RECEIVE_BUFFER = 65535
#: Kernel receive buffer of the socket (SO_RCVBUF): about a second of a 10,000/s flood.
SOCKET_RCVBUF = 8 * 1024 * 1024
#: Messages stamped with the controller's generation.
FENCED_TYPES = frozenset(("directory", "profiles"))
#: Linux's SO_TIMESTAMP (also the control message type): the kernel's receive time as a struct timeval.
SO_TIMESTAMP = 29
_TIMEVAL = struct.Struct("@ll")
#: Most datagrams one ``receive_pending`` reads (the rest wait for the next call).
MAX_PENDING = 4096

Address = Tuple[str, int]


class MgmtChannel:
    """A bound UDP socket on the controller's management address.

    Args:
        listen: ``(host, port)`` to bind (the address cells send heartbeats to).
        addresses: Cell id -> its management ``(host, port)``.
        auth: Seals and opens datagrams (sender ``CONTROLLER_SENDER``).
        generation: The controller's generation, stamped on ``directory`` and ``profiles``.
        clock: Wall-clock time (counters).

    Raises:
        OSError: the address cannot be bound (not on this host yet, or taken).
    """

    def __init__(self, listen: Address, addresses: Mapping[str, Address], auth: MgmtAuth,
                 generation: int = 0, clock: Callable[[], float] = time.time) -> None:  # fmt: skip
        family = socket.AF_INET6 if ipaddress.ip_address(listen[0]).version == 6 else socket.AF_INET
        self.listen = listen
        self.addresses: Dict[str, Address] = dict(addresses)
        self.auth = auth
        self.generation = generation
        self.clock = clock
        self.counts: Counter = Counter()
        self._sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_RCVBUF)
            self._sock.bind(listen)
        except OSError:
            self._sock.close()
            raise
        self._sock.settimeout(RECEIVE_TIMEOUT_S)
        self.drained = True  #: the last ``receive_pending`` emptied the socket
        self.timestamps = False
        if sys.platform.startswith("linux"):
            try:
                self._sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMP, 1)
                self.timestamps = True
            except OSError:
                pass

    @property
    def address(self) -> Address:
        """The bound address (the real port if 0 was asked for)."""
        return self._sock.getsockname()[:2]

    def send(self, message: MgmtMessage) -> bool:
        """Send one message to its cell; False (and counted) if it has no address, is too big, or fails."""
        address = self.addresses.get(message.cell_id)
        if address is None:
            self.counts["no_address"] += 1
            return False
        body = dict(message.message)
        if body.get("type") in FENCED_TYPES:
            body["generation"] = self.generation
        try:
            datagram = encode(body)
        except MessageTooBig:
            datagram = b""
        if not datagram or len(datagram) > MAX_DATAGRAM:
            self.counts["too_big"] += 1
            return False
        try:
            self._sock.sendto(self.auth.seal(datagram, self.clock()), address)
        except OSError:
            self.counts["send_errors"] += 1
            return False
        self.counts[f"sent_{message.type}"] += 1
        return True

    def receive(self) -> Optional[Tuple[Dict[str, Any], Address]]:
        """The next authentic message from a cell and its address, or None after a timeout or a refusal.

        A refused datagram is counted (``refused_<reason>``; ``refused_wrong_sender``
        also for a message sealed by the controller's own id, or naming no cell).
        """
        try:
            datagram, address = self._sock.recvfrom(RECEIVE_BUFFER)
        except socket.timeout:
            return None
        message = self._open(datagram)
        if message is None:
            return None
        return message, (address[0], address[1])

    def _open(self, datagram: bytes) -> Optional[Dict[str, Any]]:
        """The authentic message a cell sealed in ``datagram``, or None (refusal counted)."""
        opened = self.auth.open(datagram, self.clock())
        if opened is None:
            self.counts["refused"] += 1
            return None
        sender, message = opened
        if message.get("cell") != sender:
            self.auth.counters.refuse("wrong_sender")
            self.counts["refused"] += 1
            return None
        self.counts[f"received_{message['type']}"] += 1
        return message

    def auth_counts(self) -> Dict[str, int]:
        """Refused datagrams by reason, and accepted ones (``AuthCounters.as_dict``)."""
        return self.auth.counters.as_dict()

    def fileno(self) -> int:
        """The socket's descriptor (to wait until it is readable)."""
        return self._sock.fileno()

    def receive_pending(self, limit: int = MAX_PENDING) -> List[Tuple[Dict[str, Any], Address, Optional[float]]]:
        """Every datagram waiting now (``limit`` at most), without blocking: ``(message, sender, arrival)``.

        Only authentic messages are returned (see ``receive``); refusals are counted.
        ``drained`` then says whether the socket was emptied (False: ``limit`` was reached).

        ``arrival`` is the kernel's receive time by the wall clock (None without timestamps).
        """
        raw = getattr(self._sock, "fd", self._sock)  # eventlet's GreenSocket wraps the real socket
        timeout = raw.gettimeout()
        if timeout is not None:  # a plain socket with a timeout would wait that long for nothing
            raw.setblocking(False)
        try:
            return self._read_pending(raw, limit)
        finally:
            if timeout is not None:
                raw.settimeout(timeout)

    def _read_pending(self, raw, limit: int) -> List[Tuple[Dict[str, Any], Address, Optional[float]]]:
        received = []
        self.drained = False
        for _ in range(limit):
            try:
                datagram, ancillary, _flags, sender = raw.recvmsg(RECEIVE_BUFFER, 64, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                self.drained = True
                break
            arrival = None
            for level, kind, data in ancillary:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMP and len(data) >= _TIMEVAL.size:
                    seconds, microseconds = _TIMEVAL.unpack_from(data)
                    arrival = seconds + microseconds / 1e6
            message = self._open(datagram)
            if message is None:
                continue
            received.append((message, (sender[0], sender[1]), arrival))
        return received

    def close(self) -> None:
        """Close the socket."""
        self._sock.close()
