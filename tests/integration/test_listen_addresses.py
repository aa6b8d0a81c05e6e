"""ryu-manager with PRISM's apps listens where the configuration says, and on loopback by default."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.integration.conftest import free_tcp_port
from tests.support import poll

REPO = Path(__file__).resolve().parents[2]
APPS = ("ryu_apps/mirroring_director.py", "ryu_apps/rest_api.py")
START_TIMEOUT_S = 30.0


def listeners(port: int):
    """Local addresses (hex, as in /proc/net/tcp) listening on TCP ``port``."""
    found = set()
    with open("/proc/net/tcp", encoding="ascii") as rows:
        next(rows)
        for row in rows:
            local, state = row.split()[1], row.split()[3]
            address, _, hex_port = local.partition(":")
            if state == "0A" and int(hex_port, 16) == port:
                found.add(address)
    return found


@pytest.mark.parametrize("configured", [True, False], ids=["configured", "default"])
def test_openflow_and_rest_listen_on_the_configured_or_loopback_address(tmp_path, configured):
    of_port, rest_port = free_tcp_port(), free_tcp_port()
    listen = (f'openflow: {{listen: "127.0.0.1:{of_port}"}}\nrest: {{listen: "127.0.0.1:{rest_port}"}}\n'
              if configured else "")  # fmt: skip
    config = tmp_path / "prism.yaml"
    config.write_text(listen + textwrap.dedent("""\
        switches:
          - dpid: 1
            cells: [{id: cell1, port: 1}, {id: cell2, port: 3}]
            edge_ports: [2]
        """))
    args = [] if configured else ["--ofp-tcp-listen-port", str(of_port), "--wsapi-port", str(rest_port)]
    log = tmp_path / "ryu.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(Path(sys.prefix) / "bin" / "ryu-manager"), *args, *APPS], cwd=str(REPO),
                                stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "PRISM_CONFIG": str(config), "PYTHONPATH": str(REPO)})  # fmt: skip
    try:
        poll(lambda: (listeners(of_port) and listeners(rest_port)) or proc.poll() is not None,
             timeout=START_TIMEOUT_S, interval=0.1)  # fmt: skip
        assert proc.poll() is None and listeners(of_port) and listeners(rest_port), log.read_text(errors="replace")
        assert listeners(of_port) == listeners(rest_port) == {"0100007F"}  # 127.0.0.1, not 0.0.0.0
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
