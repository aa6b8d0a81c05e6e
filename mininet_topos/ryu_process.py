"""``ryu-manager`` as a subprocess on loopback ports, always ended by its PID: the one launcher.

The demo and the integration tests (through ``mininet_topos.harness``), the
tests' ``ryu_manager`` fixture and the benchmarks all start Ryu here. Ryu never
runs in the caller's process: eventlet's monkey-patching would remove
``select.poll``, which Mininet needs.
"""

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
LOG_TAIL_LINES = 40
POLL_INTERVAL_S = 0.05
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
            next(rows)  # header
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
    """One running ryu-manager: its process, ports and log."""

    proc: subprocess.Popen
    apps: Tuple[str, ...]
    ofp_port: int
    wsapi_port: int
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def controller(self) -> str:
        """The switch-side controller target, e.g. ``tcp:127.0.0.1:40123``."""
        return f"tcp:127.0.0.1:{self.ofp_port}"

    def wsapi_url(self, path: str = "") -> str:
        """URL of the REST API (apps with a ``wsgi`` context)."""
        return f"http://127.0.0.1:{self.wsapi_port}{path}"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:]) or "(no log)"

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

    def kill(self) -> Optional[int]:
        """SIGKILL at once (a controller crash, as a test may want); returns the exit code."""
        if self.proc.poll() is None:
            self.proc.kill()
        return self.proc.wait()


def start_ryu_manager(
    apps: Sequence[str],
    log_path: Path,
    *,
    cwd: Optional[Path] = None,
    env: Optional[Mapping[str, str]] = None,
    args: Sequence[str] = (),
    wait_wsapi: bool = False,
    timeout: float = START_TIMEOUT_S,
    ofp_port: Optional[int] = None,
    wsapi_port: Optional[int] = None,
) -> RyuProcess:
    """Start ryu-manager with ``apps`` on free ports of 127.0.0.1; returns once it listens.

    Args:
        apps: Module names or file paths, as ryu-manager takes them.
        log_path: Where its stdout and stderr go.
        cwd: Its working directory.
        env: Added to this process's environment.
        args: Options before the apps (e.g. ``("--config-file", path)``).
        wait_wsapi: Also wait for the REST (WSGI) port to listen.
        timeout: Seconds to wait for the ports.
        ofp_port, wsapi_port: The ports to listen on (default: free ones). A restart on the
            same OpenFlow port lets the switches reconnect by themselves.

    Raises:
        RyuStartError: it exited before listening, or did not listen in time (it is
            stopped then; the message holds its log tail).
    """
    if not apps:
        raise ValueError("ryu-manager needs at least one app")
    ofp_port = ofp_port or free_tcp_port()
    wsapi_port = wsapi_port or free_tcp_port()
    while wsapi_port == ofp_port:
        wsapi_port = free_tcp_port()
    argv = [
        str(ryu_manager_path()),
        "--ofp-listen-host", "127.0.0.1",
        "--ofp-tcp-listen-port", str(ofp_port),
        "--wsapi-host", "127.0.0.1",
        "--wsapi-port", str(wsapi_port),
        *args,
        *apps,
    ]  # fmt: skip
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=full_env, cwd=cwd)  # fmt: skip
    ryu = RyuProcess(proc, tuple(str(app) for app in apps), ofp_port, wsapi_port, Path(log_path))
    ports = [ofp_port] + ([wsapi_port] if wait_wsapi else [])
    deadline = time.monotonic() + timeout
    while not all(is_listening(port) for port in ports):
        if proc.poll() is not None:
            raise RyuStartError(f"ryu-manager {' '.join(ryu.apps)} exited with code {proc.returncode} "
                                f"before listening; log tail:\n{ryu.log_tail()}")  # fmt: skip
        if time.monotonic() > deadline:
            ryu.stop()
            raise RyuStartError(f"ryu-manager {' '.join(ryu.apps)} did not listen on {ports} within "
                                f"{timeout:g} s; log tail:\n{ryu.log_tail()}")  # fmt: skip
        time.sleep(POLL_INTERVAL_S)
    return ryu


@contextlib.contextmanager
def ryu_manager(
    apps: Sequence[str], log_path: Path, cwd: Path, env: Optional[Mapping[str, str]] = None
) -> Iterator[RyuProcess]:
    """``start_ryu_manager`` with ``cwd`` on PYTHONPATH, stopped by PID when the block ends."""
    ryu = start_ryu_manager(apps, log_path, cwd=cwd, env={"PYTHONPATH": str(cwd), **(env or {})})
    try:
        yield ryu
    finally:
        ryu.stop()
