"""A cell's state on a UNIX socket: one JSON document per connection, and the client that reads it."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import stat
from pathlib import Path
from typing import Callable, Union

from prism.cell.io import CellIOError

LOG = logging.getLogger(__name__)

LISTEN_BACKLOG = 16
SEND_TIMEOUT_S = 2.0  #: a reader that does not read for this long is dropped
DEFAULT_READ_TIMEOUT_S = 5.0
RECV_CHUNK = 65536


def default_state_socket(cell_id: str) -> str:
    """Where cell ``cell_id`` serves its state unless told otherwise."""
    return f"/tmp/prism-cell-{cell_id}.sock"


class StateServer:
    """Serves ``document()`` as JSON to every client that connects, then closes.

    A stale socket file (no one listening) is replaced; a live one is an
    error. The file is removed on ``close`` if it is still ours.

    Args:
        path: Socket path.
        document: Builds the document (called once per batch of clients).
    """

    def __init__(self, path: Union[str, Path], document: Callable[[], dict]) -> None:
        self.path = str(path)
        self._document = document
        self.served = 0
        self._remove_stale(self.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(self.path)
            sock.listen(LISTEN_BACKLOG)
            sock.setblocking(False)
        except OSError as error:
            sock.close()
            raise CellIOError(f"cannot serve cell state on {self.path}: {error}") from error
        self._sock = sock
        self._inode = os.stat(self.path).st_ino

    @staticmethod
    def _remove_stale(path: str) -> None:
        try:
            mode = os.stat(path).st_mode
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(mode):
            raise CellIOError(f"{path} exists and is not a socket; choose another --state-socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # nobody listens: left by a cell that died
            return
        finally:
            probe.close()
        raise CellIOError(f"another process serves {path}; is a cell with this id already running?")

    def fileno(self) -> int:
        """The listening socket's descriptor (register it with the loop)."""
        return self._sock.fileno()

    def serve_pending(self) -> None:
        """Answer every client waiting to connect."""
        data = None
        while True:
            try:
                conn, _ = self._sock.accept()
            except BlockingIOError:
                return
            with conn:
                if data is None:
                    data = json.dumps(self._document(), separators=(",", ":")).encode()
                try:
                    conn.settimeout(SEND_TIMEOUT_S)
                    conn.sendall(data)
                    self.served += 1
                except OSError as error:
                    LOG.debug("state reader went away: %s", error)

    def close(self) -> None:
        """Stop serving and remove the socket file if it is still ours."""
        self._sock.close()
        with contextlib.suppress(FileNotFoundError):
            if os.stat(self.path).st_ino == self._inode:
                os.unlink(self.path)


def read_state(path: Union[str, Path], timeout_s: float = DEFAULT_READ_TIMEOUT_S) -> dict:
    """Read a running cell's state document.

    Args:
        path: The cell's state socket.
        timeout_s: Give up after this long.

    Returns:
        The document.

    Raises:
        OSError: nobody serves ``path``.
        ValueError: the answer is not a JSON document.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        sock.connect(str(path))
        chunks = []
        while True:
            chunk = sock.recv(RECV_CHUNK)
            if not chunk:
                break
            chunks.append(chunk)
    document = json.loads(b"".join(chunks).decode())
    if not isinstance(document, dict):
        raise ValueError("the cell's answer is not a JSON object")
    return document
