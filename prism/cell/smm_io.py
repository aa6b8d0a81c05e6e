"""The SMM's socket: UDP on the management network, and the wiring of an SMM into a cell's loop."""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
from typing import Callable, Optional, Tuple

from prism.cell.io import CellIOError
from prism.cell.smm import Address, StateMirroringModule

LOG = logging.getLogger(__name__)

#: Receive buffer of the management socket: a seed burst from several peers fits.
DEFAULT_MGMT_RCVBUF = 4 * 1024 * 1024
#: Datagrams handled per wake-up before frames and timers get a turn: a state
#: datagram carries up to about 25 records at 20-40 us each to merge.
MAX_DATAGRAMS_PER_WAKEUP = 16
_RECV_SIZE = 65536
#: Send errors that mean "not now" (no route yet, buffer full): counted, never fatal.
_TRANSIENT_SEND_ERRNOS = frozenset((errno.EAGAIN, errno.ENOBUFS, errno.ENETUNREACH,
                                    errno.EHOSTUNREACH, errno.ECONNREFUSED, errno.ENETDOWN,
                                    errno.EPERM, errno.EINVAL))  # fmt: skip


def parse_address(text: str, default_port: int) -> Address:
    """``IP[:PORT]`` (``[IPv6]:PORT`` for IPv6) as ``(ip, port)``.

    Raises:
        ValueError: not an IP address literal or a bad port; the message says which.
    """
    host, port_text = text, ""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else rest
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    try:
        ipaddress.ip_address(host)
    except ValueError as error:
        raise ValueError(f"{text!r}: {host!r} is not an IP address") from error
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{text!r}: port must be 1..65535")
    return host, int(port_text)


class UdpTransport:
    """A non-blocking UDP socket bound to the cell's management address.

    Args:
        listen: ``(ip, port)`` to bind (port 0: any free port).
        rcvbuf: Receive buffer size in bytes.

    Raises:
        CellIOError: the address cannot be bound.
    """

    def __init__(self, listen: Address, rcvbuf: int = DEFAULT_MGMT_RCVBUF) -> None:
        family = socket.AF_INET6 if ":" in listen[0] else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.bind(listen)
            sock.setblocking(False)
        except OSError as error:
            sock.close()
            raise CellIOError(f"cannot bind the management socket to {listen[0]}:{listen[1]}: "
                              f"{error.strerror or error}") from error  # fmt: skip
        self._sock = sock
        self.address: Address = sock.getsockname()[:2]
        self.send_errors = 0

    def fileno(self) -> int:
        """The socket's descriptor (for poll)."""
        return self._sock.fileno()

    def sendto(self, datagram: bytes, address: Address) -> bool:
        """Send one datagram; False (and counted) if the kernel refused it for now."""
        try:
            self._sock.sendto(datagram, address)
            return True
        except OSError as error:
            if error.errno not in _TRANSIENT_SEND_ERRNOS:
                raise
            self.send_errors += 1
            return False

    def recv(self) -> Optional[Tuple[bytes, Address]]:
        """The next datagram and its source, or None if none is queued (never blocks)."""
        while True:
            try:
                datagram, source = self._sock.recvfrom(_RECV_SIZE)
            except BlockingIOError:
                return None
            except ConnectionRefusedError:  # an ICMP error for an earlier send: skip it
                continue
            return datagram, source[:2]

    def close(self) -> None:
        """Close the socket."""
        self._sock.close()


def receive_pending(transport: UdpTransport, smm: StateMirroringModule, clock: Callable[[], float],
                    limit: int = MAX_DATAGRAMS_PER_WAKEUP) -> int:  # fmt: skip
    """Hand up to ``limit`` queued datagrams to the SMM; returns how many."""
    handled = 0
    while handled < limit:
        got = transport.recv()
        if got is None:
            break
        smm.on_datagram(got[0], got[1], clock())
        handled += 1
    return handled


def attach(loop, smm: StateMirroringModule, transport: UdpTransport) -> None:
    """Wire an SMM into a running cell: tick hook, management socket reader, heartbeat timer.

    Args:
        loop: The cell's ``CellLoop``.
        smm: The SMM (of ``loop.cell``).
        transport: Its management socket.
    """
    loop.cell.add_tick_hook(smm.tick_hook)
    loop.add_reader(transport.fileno(), lambda: receive_pending(transport, smm, loop.clock))
    loop.add_timer(smm.settings.heartbeat_interval_s, smm.heartbeat)

