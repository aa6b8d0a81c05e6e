"""Raw Ethernet I/O on one interface (AF_PACKET): receive every frame, send frames back out the same interface."""

from __future__ import annotations

import errno
import select
import socket
import struct
from typing import Optional

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_PROMISC = 1
PACKET_IGNORE_OUTGOING = 23  #: Linux >= 4.20: do not loop our own sends back to us
PACKET_OUTGOING = 4  #: sll_pkttype of a frame this host sent
PACKET_STATISTICS = 6  #: getsockopt: struct tpacket_stats {packets, drops}, reset by each read
_TPACKET_STATS = struct.Struct("II")
SO_RCVBUFFORCE = 33  #: like SO_RCVBUF, past net.core.rmem_max (needs CAP_NET_ADMIN)
DEFAULT_RCVBUF = 8 * 1024 * 1024
#: Largest frame accepted: a jumbo frame, or an offloaded aggregate.
MAX_FRAME_LEN = 65536 + 64
_PACKET_MREQ = struct.Struct("iHH8s")


class CellIOError(Exception):
    """The cell cannot use its interface; the message says which one and why."""


class PacketSocket:
    """A raw socket on one interface, non-blocking, promiscuous.

    Frames are received into one preallocated buffer; ``recv_frame`` returns a
    ``bytes`` copy of one frame. Frames this host sent (``PACKET_OUTGOING``)
    are skipped, so the cell never sees what it forwarded.

    Args:
        interface: Interface name.
        rcvbuf: Receive buffer size in bytes.
        promiscuous: Receive frames addressed to other MACs too (the cell
            receives traffic for the hosts it stands in front of).
    """

    def __init__(self, interface: str, rcvbuf: int = DEFAULT_RCVBUF,
                 promiscuous: bool = True) -> None:  # fmt: skip
        self.interface = interface
        self._buffer = bytearray(MAX_FRAME_LEN)
        self._view = memoryview(self._buffer)
        try:
            self.ifindex = socket.if_nametoindex(interface)
        except OSError as error:
            raise CellIOError(f"no interface {interface!r}: {error.strerror or error}") from error
        try:
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        except PermissionError as error:
            raise CellIOError(
                f"cannot open a raw socket on {interface}: run as root (or with CAP_NET_RAW)"
            ) from error
        try:
            sock.bind((interface, ETH_P_ALL))
            self._set_rcvbuf(sock, rcvbuf)
            if promiscuous:
                mreq = _PACKET_MREQ.pack(self.ifindex, PACKET_MR_PROMISC, 0, b"")
                sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq)
            try:
                sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
            except OSError:  # older kernels: the pkttype check below does the job
                pass
            sock.setblocking(False)
        except OSError as error:
            sock.close()
            raise CellIOError(f"cannot set up raw I/O on {interface}: {error}") from error
        self._sock = sock
        self.rcvbuf = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)

    @staticmethod
    def _set_rcvbuf(sock: socket.socket, size: int) -> None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)

    def fileno(self) -> int:
        """The socket's file descriptor (for poll)."""
        return self._sock.fileno()

    def recv_frame(self) -> Optional[bytes]:
        """The next received frame, or None if none is queued (never blocks).

        Raises:
            OSError: a socket error (e.g. ENETDOWN while the link is down).
        """
        recvfrom_into, buffer = self._sock.recvfrom_into, self._buffer
        while True:
            try:
                nbytes, address = recvfrom_into(buffer)
            except BlockingIOError:
                return None
            if address[2] != PACKET_OUTGOING:
                return bytes(self._view[:nbytes])

    def take_drops(self) -> int:
        """Frames the kernel dropped for want of buffer space since the last call (0 if unknown)."""
        try:
            raw = self._sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, _TPACKET_STATS.size)
        except OSError:
            return 0
        return _TPACKET_STATS.unpack(raw)[1]

    def send(self, frame: bytes) -> int:
        """Send one frame out of the interface unchanged; returns bytes sent."""
        return self._sock.send(frame)

    def wait(self, timeout_s: float) -> bool:
        """Block until a frame may be readable or ``timeout_s`` passes; True if readable."""
        poller = select.poll()
        poller.register(self._sock.fileno(), select.POLLIN)
        return bool(poller.poll(max(0, int(timeout_s * 1000))))

    def close(self) -> None:
        """Close the socket (the kernel drops the promiscuous membership with it)."""
        self._sock.close()

    def __enter__(self) -> "PacketSocket":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


#: Socket errors after which the interface is gone for good (the cell stops).
FATAL_ERRNOS = frozenset((errno.ENODEV, errno.ENXIO, errno.EBADF))
