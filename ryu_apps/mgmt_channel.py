"""The controller's end of the management network: one UDP socket, PRISM management datagrams in and out.

Under ``ryu-manager`` the ``socket`` module is eventlet's green one, so a
blocking ``recvfrom`` only parks its own green thread. The receive timeout
lets the loop that owns the channel notice that the app is stopping.
"""

from __future__ import annotations

import ipaddress
import socket
from collections import Counter
from typing import Any, Dict, Mapping, Optional, Tuple

from prism.actions import MgmtMessage
from prism.mgmt import MAX_DATAGRAM, decode, encode

#: Seconds a receive waits before giving its loop a chance to stop.
RECEIVE_TIMEOUT_S = 0.5
#: Largest datagram read (UDP's limit).
RECEIVE_BUFFER = 65535

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

    def close(self) -> None:
        """Close the socket."""
        self._sock.close()
