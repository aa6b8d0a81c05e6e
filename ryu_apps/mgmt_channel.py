"""The controller's end of the management network: one UDP socket, PRISM management datagrams in and out.

Under ``ryu-manager`` the ``socket`` module is eventlet's green one, so a
blocking ``recvfrom`` only parks its own green thread. The receive timeout
lets the loop that owns the channel notice that the app is stopping.

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
from collections import Counter
from typing import Any, Dict, List, Mapping, Optional, Tuple

from prism.actions import MgmtMessage
from prism.mgmt import MAX_DATAGRAM, decode, encode

#: Seconds a receive waits before giving its loop a chance to stop.
RECEIVE_TIMEOUT_S = 0.5
#: Largest datagram read (UDP's limit).
RECEIVE_BUFFER = 65535
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

    Raises:
        OSError: the address cannot be bound (not on this host yet, or taken).
    """

    def __init__(self, listen: Address, addresses: Mapping[str, Address]) -> None:
        family = socket.AF_INET6 if ipaddress.ip_address(listen[0]).version == 6 else socket.AF_INET
        self.listen = listen
        self.addresses: Dict[str, Address] = dict(addresses)
        self.counts: Counter = Counter()
        self._sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            self._sock.bind(listen)
        except OSError:
            self._sock.close()
            raise
        self._sock.settimeout(RECEIVE_TIMEOUT_S)
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
        datagram = encode(dict(message.message))
        if len(datagram) > MAX_DATAGRAM:
            self.counts["too_big"] += 1
            return False
        try:
            self._sock.sendto(datagram, address)
        except OSError:
            self.counts["send_errors"] += 1
            return False
        self.counts[f"sent_{message.type}"] += 1
        return True

    def receive(self) -> Optional[Tuple[Dict[str, Any], Address]]:
        """The next valid message and its sender, or None after a timeout or an invalid datagram."""
        try:
            datagram, sender = self._sock.recvfrom(RECEIVE_BUFFER)
        except socket.timeout:
            return None
        message = decode(datagram)
        if message is None:
            self.counts["undecodable"] += 1
            return None
        self.counts[f"received_{message['type']}"] += 1
        return message, (sender[0], sender[1])

    def fileno(self) -> int:
        """The socket's descriptor (to wait until it is readable)."""
        return self._sock.fileno()

    def receive_pending(self, limit: int = MAX_PENDING) -> List[Tuple[Dict[str, Any], Address, Optional[float]]]:
        """Every datagram waiting now, without blocking: ``(message, sender, arrival)`` for the valid ones.

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
        for _ in range(limit):
            try:
                datagram, ancillary, _flags, sender = raw.recvmsg(RECEIVE_BUFFER, 64, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                break
            arrival = None
            for level, kind, data in ancillary:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMP and len(data) >= _TIMEVAL.size:
                    seconds, microseconds = _TIMEVAL.unpack_from(data)
                    arrival = seconds + microseconds / 1e6
            message = decode(datagram)
            if message is None:
                self.counts["undecodable"] += 1
                continue
            self.counts[f"received_{message['type']}"] += 1
            received.append((message, (sender[0], sender[1]), arrival))
        return received

    def close(self) -> None:
        """Close the socket."""
        self._sock.close()
