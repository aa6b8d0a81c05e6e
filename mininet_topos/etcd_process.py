"""A private etcd for tests, the demo and benchmarks: loopback only, its own data dir, ended by PID.

Debian's ``etcd-server`` is installed by ``make setup`` and never started as a
service (no systemd on these machines). ``EtcdProcess`` starts ``etcd`` on two
free loopback ports with fast raft timers (10 ms heartbeat, 100 ms election),
so that leases of 1 s are accepted, waits until it answers ``/health``, and
stops it by PID. ``stop()`` then ``start()`` brings the same member back on
the same ports with its data (etcd going away and coming back).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Optional

ETCD_BINARY = "etcd"
ETCD_START_TIMEOUT_S = 20.0
ETCD_STOP_TIMEOUT_S = 5.0
#: Raft timers (ms). With these the smallest lease etcd grants is 1 s (its minimum is
#: 1.5 election timeouts, rounded up to a second).
HEARTBEAT_MS = 10
ELECTION_MS = 100
MEMBER_NAME = "prism"


def _free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class EtcdProcess:
    """One etcd member on loopback.

    Args:
        workdir: Its data directory (``etcd-data``) and log (``etcd.log``) go here.
        fresh: Remove a data directory left by an earlier run before the first start.
    """

    def __init__(self, workdir: Path, fresh: bool = True) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.data_dir = self.workdir / "etcd-data"
        if fresh and self.data_dir.exists():
            shutil.rmtree(self.data_dir)
        self.client_port = _free_port()
        self.peer_port = _free_port()
        self.log_path = self.workdir / "etcd.log"
        self.process: Optional[subprocess.Popen] = None

    @property
    def endpoint(self) -> str:
        """``host:port`` of its client API (what the ``etcd.endpoints`` setting names)."""
        return f"127.0.0.1:{self.client_port}"

    def start(self) -> None:
        """Start etcd and wait until it is healthy (RuntimeError with its log if it does not come up)."""
        if shutil.which(ETCD_BINARY) is None:
            raise RuntimeError("etcd is not installed: run `make setup` (Debian's etcd-server)")
        client_url = f"http://127.0.0.1:{self.client_port}"
        peer_url = f"http://127.0.0.1:{self.peer_port}"
        command = [
            ETCD_BINARY, "--name", MEMBER_NAME, "--data-dir", str(self.data_dir),
            "--listen-client-urls", client_url, "--advertise-client-urls", client_url,
            "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
            "--initial-cluster", f"{MEMBER_NAME}={peer_url}",
            "--heartbeat-interval", str(HEARTBEAT_MS), "--election-timeout", str(ELECTION_MS),
            "--log-level", "warn",
        ]  # fmt: skip
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the process
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + ETCD_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"etcd exited at start:\n{self.log_tail()}")
            if self.healthy():
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"etcd did not become healthy in time:\n{self.log_tail()}")

    def healthy(self) -> bool:
        """Whether it answers ``/health`` with ``health: true``."""
        try:
            with urllib.request.urlopen(f"http://{self.endpoint}/health", timeout=1) as response:
                return json.loads(response.read().decode()).get("health") in (True, "true")
        except (OSError, ValueError):
            return False

    def stop(self, kill: bool = False) -> None:
        """End it by PID (``kill``: SIGKILL at once, as a crash would); its data stay."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            process.wait(ETCD_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(ETCD_STOP_TIMEOUT_S)

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of its log."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> "EtcdProcess":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
