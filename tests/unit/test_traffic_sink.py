"""The demo's UDP sink counts what reached its sockets, also when it is stopped while starved (loopback only)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from tests.support import poll

ROOT = Path(__file__).resolve().parents[2]
DATAGRAMS = 50


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _catches_sigterm(pid: int) -> bool:
    """Whether the process has its SIGTERM handler in place (it sets it once its sockets are bound)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) & (1 << (signal.SIGTERM - 1)))
    return False


def test_a_sink_stopped_while_starved_counts_the_datagrams_waiting_in_its_socket(tmp_path):
    port, report = _free_port(), tmp_path / "sink.json"
    sink = subprocess.Popen([sys.executable, "-m", "mininet_topos.traffic", "udp-sink", "--port", str(port),
                             "--span", "1", "--duration", "30", "--json", str(report)], cwd=ROOT)  # fmt: skip
    try:
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        assert poll(lambda: _catches_sigterm(sink.pid), timeout=20), "the sink did not start"
        os.kill(sink.pid, signal.SIGSTOP)  # starved: nothing is read from here on
        for _ in range(DATAGRAMS):
            sender.sendto(b"x", ("127.0.0.1", port))
        sender.close()
        sink.terminate()
        os.kill(sink.pid, signal.SIGCONT)
        assert sink.wait(10) == 0
    finally:
        if sink.poll() is None:
            sink.kill()
            sink.wait(5)
    counted = json.loads(report.read_text())["datagrams"]
    assert counted == DATAGRAMS
