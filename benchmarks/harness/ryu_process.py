"""``ryu-manager`` as a subprocess on loopback ports, always ended by its PID."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping, Optional, Sequence, Tuple

START_TIMEOUT_S = 30.0
STOP_GRACE_S = 5.0
LOG_TAIL_LINES = 30
_TCP_LISTEN_STATE = "0A"  # in /proc/net/tcp


class RyuStartError(RuntimeError):
    """ryu-manager exited or did not listen in time (the message holds its log tail)."""


def free_tcp_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def is_listening(port: int) -> bool:
    """Whether a socket listens on TCP ``port``, read from /proc (connecting would look like a switch)."""
    wanted = f":{port:04X}"
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table, encoding="ascii") as rows:
            next(rows)
            for row in rows:
                fields = row.split()
                if fields[1].endswith(wanted) and fields[3] == _TCP_LISTEN_STATE:
                    return True
    return False


def ryu_manager_path() -> Path:
    """``ryu-manager`` beside the running Python (the project's venv)."""
    path = Path(sys.executable).parent / "ryu-manager"
    if not path.exists():
        raise RyuStartError(f"{path} not found: run this with the venv's Python (.venv/bin/python)")
    return path


@dataclass
class RyuProcess:
    """One running ryu-manager."""

    proc: subprocess.Popen
    ofp_port: int
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def schedstat_ns(self) -> Tuple[int, int]:
        """``(cpu, waiting)``: ns the process ran on a CPU, and waited for one, summed over its threads.

        From ``/proc/<pid>/task/*/schedstat`` (ns resolution, unlike the clock
        ticks of ``/proc/<pid>/stat``). CPU time is the controller's own work,
        whatever else the machine runs; waiting time shows how busy it was.
        """
        cpu = waiting = 0
        for task in Path(f"/proc/{self.pid}/task").iterdir():
            with contextlib.suppress(OSError, ValueError):  # a thread may end between listing and reading
                fields = (task / "schedstat").read_text(encoding="ascii").split()
                cpu += int(fields[0])
                waiting += int(fields[1])
        return cpu, waiting

    def stop(self) -> Optional[int]:
        """SIGTERM, then SIGKILL after a grace period; returns the exit code. Idempotent."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@contextlib.contextmanager
def ryu_manager(
    apps: Sequence[str], log_path: Path, cwd: Path, env: Optional[Mapping[str, str]] = None
) -> Iterator[RyuProcess]:
    """Start ryu-manager with ``apps`` on a free OpenFlow port of 127.0.0.1; stop it by PID on exit.

    Raises:
        RyuStartError: it exited before listening, or did not listen within START_TIMEOUT_S.
    """
    ofp_port = free_tcp_port()
    argv = [
        str(ryu_manager_path()),
        "--ofp-listen-host", "127.0.0.1",
        "--ofp-tcp-listen-port", str(ofp_port),
        "--wsapi-host", "127.0.0.1",
        "--wsapi-port", str(free_tcp_port()),
        *apps,
    ]  # fmt: skip
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(cwd), **(env or {})}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=full_env, cwd=cwd
        )
    ryu = RyuProcess(proc, ofp_port, log_path)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not is_listening(ofp_port):
            if proc.poll() is not None:
                raise RyuStartError(
                    f"ryu-manager {' '.join(apps)} exited with code {proc.returncode} before listening; "
                    f"log tail:\n{ryu.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise RyuStartError(
                    f"ryu-manager {' '.join(apps)} did not listen within {START_TIMEOUT_S:g} s; "
                    f"log tail:\n{ryu.log_tail()}"
                )
            time.sleep(0.05)
        yield ryu
    finally:
        ryu.stop()
