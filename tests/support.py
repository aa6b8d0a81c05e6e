"""Helpers shared by the unit and integration tests: one ``poll``, one ``FakeDatapath``, readiness checks."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Callable, List, Mapping, Optional, TypeVar

from ryu.ofproto import ofproto_protocol, ofproto_v1_3

T = TypeVar("T")

#: How long ``poll`` waits by default: generous, since a passing test never waits it out.
POLL_TIMEOUT_S = 20.0
POLL_INTERVAL_S = 0.25
#: How long a server or a capture may take to start in a Mininet host of a loaded 2-core machine.
START_TIMEOUT_S = 10.0
#: A pcap file's global header: tcpdump -U writes it once its capture is active.
PCAP_HEADER_BYTES = 24


def poll(predicate: Callable[[], T], timeout: float = POLL_TIMEOUT_S, interval: float = POLL_INTERVAL_S) -> T:
    """Call ``predicate`` until it returns something truthy; returns that (or the last value).

    Tests wait for a state with this, never with a bare sleep.
    """
    deadline = time.monotonic() + timeout
    value = predicate()
    while not value and time.monotonic() < deadline:
        time.sleep(interval)
        value = predicate()
    return value


def listening(host, port: int, proto: str = "tcp") -> bool:
    """True once a socket in Mininet ``host`` listens on ``port`` (``ss`` in the host's namespace).

    ``proto`` ``"udp"`` looks for a bound UDP socket instead.
    """
    table = host.cmd("ss -ltnH" if proto == "tcp" else "ss -lunH")
    return any(line.split()[3].rsplit(":", 1)[-1] == str(port) for line in table.splitlines() if len(line.split()) > 3)


def wait_listening(host, port: int, process: Optional[subprocess.Popen] = None, proto: str = "tcp",
                   timeout: float = START_TIMEOUT_S) -> None:
    """Return once ``host`` listens on ``port``; fail if ``process`` (the server) exits first."""
    poll(lambda: listening(host, port, proto) or (process is not None and process.poll() is not None),
         timeout=timeout, interval=0.05)  # fmt: skip
    assert listening(host, port, proto), (
        f"{host} never listened on {proto} port {port} in {timeout} s"
        + (f" (server exited with {process.returncode})" if process is not None and process.poll() is not None else "")
        + f"\n{host.cmd('ss -ltun')}"
    )


def capturing(path: Path) -> bool:
    """True once tcpdump (``-U -w path``) has written the pcap header, i.e. its capture is active."""
    return path.exists() and path.stat().st_size >= PCAP_HEADER_BYTES


def wait_capturing(paths, processes=(), timeout: float = START_TIMEOUT_S) -> None:
    """Return once every capture file in ``paths`` is active; fail if a tcpdump in ``processes`` exits first."""
    paths, processes = list(paths), list(processes)
    poll(lambda: all(capturing(p) for p in paths) or any(p.poll() is not None for p in processes),
         timeout=timeout, interval=0.05)  # fmt: skip
    idle = [str(p) for p in paths if not capturing(p)]
    exited = [p.args for p in processes if p.poll() is not None]
    assert not idle and not exited, f"tcpdump did not start capturing in {timeout} s: {idle}; exited: {exited}"


def director_app(tmp_path: Path, monkeypatch, config: str, key: Optional[str] = None,
                 env: Optional[Mapping[str, str]] = None, mgmt_channel: bool = False):
    """A ``MirroringDirectorApp`` started as ``ryu-manager`` would start it, from ``config`` (YAML text).

    The configuration goes to ``tmp_path/prism.yaml`` (named by ``PRISM_CONFIG``), ``key``, if given, to
    ``tmp_path/mgmt.key``; ``env`` entries are set for the app's start. With ``mgmt_channel`` the app's
    management channel listens on a free loopback port (not the configured one), as its ``start()`` would.
    """
    from ryu_apps import mirroring_director
    from ryu_apps.mgmt_channel import MgmtChannel

    path = tmp_path / "prism.yaml"
    path.write_text(config)
    if key is not None:
        (tmp_path / "mgmt.key").write_text(key)
    monkeypatch.setenv(mirroring_director.CONFIG_ENV, str(path))
    for name, value in (env or {}).items():
        monkeypatch.setenv(name, value)
    app = mirroring_director.MirroringDirectorApp()
    if mgmt_channel:
        app.channel = MgmtChannel(("127.0.0.1", 0), mirroring_director.cell_addresses(app.config), app.mgmt_auth,
                                  app.generation)  # fmt: skip
    return app


class FakeDatapath(ofproto_protocol.ProtocolDesc):
    """A Ryu OpenFlow 1.3 datapath that serializes what it is sent (as Ryu's does) and keeps it in ``sent``."""

    def __init__(self, dp_id: int = 1) -> None:
        super().__init__(ofproto_v1_3.OFP_VERSION)
        self.id = dp_id
        self.sent: List = []

    def send_msg(self, message) -> None:
        message.serialize()  # what Ryu's Datapath does before writing to the socket
        self.sent.append(message)
