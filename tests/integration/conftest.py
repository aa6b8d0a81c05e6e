"""Fixtures for tests on real Open vSwitch, Mininet and ``ryu-manager``.

- ``ovs`` (session): the Open vSwitch daemons answer, or the test FAILS (never
  skips): ``make test`` starts them through ``scripts/setup.sh``.
- ``ryu_manager`` (factory): ``ryu_manager("ryu.app.simple_switch_13")`` starts
  ``ryu-manager`` from the venv as a subprocess on free loopback ports, waits
  until it listens, and stops it by PID at teardown; its log tail is added to
  the report of a failed test.
- ``mininet_net`` (factory): ``with mininet_net(topo, ryu.ofp_port) as net:``
  builds and starts a Mininet network (userspace OVS bridges, OpenFlow 1.3,
  remote controller on 127.0.0.1) and always calls ``net.stop()``.

Mininet runs in the pytest process; Ryu never does (eventlet's monkey-patching
removes ``select.poll``, which Mininet needs), so ``ryu-manager`` is always a
subprocess.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Iterator, List, Mapping, Optional, Sequence

import pytest

from mininet_topos.ryu_process import RyuProcess, free_tcp_port, is_listening, start_ryu_manager  # noqa: F401 - re-exported

#: Address range of test networks. Mininet's default 10.0.0.0/8 contains the
#: resolver in /etc/resolv.conf (10.255.255.53), so a DNS lookup inside a host
#: would hang waiting on the test network; outside this range it fails at once.
TEST_IP_BASE = "172.31.0.0/16"

#: How long to wait for ryu-manager to listen and for switches to connect.
RYU_START_TIMEOUT_S = 30.0
SWITCH_CONNECT_TIMEOUT_S = 30.0
#: How long an interrupted host command may take to give its prompt back at teardown.
HOST_DRAIN_TIMEOUT_S = 5.0
#: Lines of ryu-manager's log shown with a failure.
LOG_TAIL_LINES = 60

_RYU_KEY = pytest.StashKey[list]()


def _sigterm_as_keyboard_interrupt(signum, frame):  # pragma: no cover - signal path
    raise KeyboardInterrupt(f"signal {signum}")


# SIGTERM (e.g. from .ci/run) unwinds like Ctrl-C, so fixtures still stop Mininet and Ryu.
signal.signal(signal.SIGTERM, _sigterm_as_keyboard_interrupt)


# --- Open vSwitch ------------------------------------------------------------


@dataclass(frozen=True)
class OvsInfo:
    """The running Open vSwitch: its version and whether userspace TSO is on."""

    version: str
    userspace_tso: bool


def _run(*argv: str, timeout: float = 10.0) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


def ovs_bridges() -> List[str]:
    """Names of all bridges in the Open vSwitch database (``ovs-vsctl list-br``)."""
    result = _run("ovs-vsctl", "-t", "10", "list-br")
    if result.returncode != 0:
        raise RuntimeError(f"ovs-vsctl list-br failed: {result.stderr.strip()}")
    return result.stdout.split()


@pytest.fixture(scope="session")
def ovs() -> OvsInfo:
    """Open vSwitch daemons that answer; FAILS (does not skip) when they do not."""
    if os.geteuid() != 0:
        pytest.fail("integration tests need root (Open vSwitch and Mininet): run `make test` as root")
    for daemon in ("ovsdb-server", "ovs-vswitchd"):
        try:
            result = _run("ovs-appctl", "-t", daemon, "version")
        except FileNotFoundError:
            pytest.fail("Open vSwitch is not installed: run `make test` (its setup installs it)")
        if result.returncode != 0:
            pytest.fail(
                f"Open vSwitch daemon {daemon} is not running: run `make test`, or start it with "
                f"`scripts/ovs.sh start` (as root). ovs-appctl said: {result.stderr.strip()}"
            )
    version = _run("ovs-vsctl", "--version").stdout.splitlines()[0].split()[-1]
    tso = _run("ovs-vsctl", "get", "Open_vSwitch", ".", "other_config:userspace-tso-enable")
    return OvsInfo(version=version, userspace_tso=tso.stdout.strip().strip('"') == "true")


# --- ryu-manager -----------------------------------------------------------


class RyuManager(RyuProcess):
    """One ``ryu-manager`` started by the ``ryu_manager`` fixture; it knows whether the test ended it."""

    stopped_by_test: bool = False

    def stop(self) -> Optional[int]:
        self.stopped_by_test = True
        return super().stop()

    def kill(self) -> Optional[int]:
        self.stopped_by_test = True
        return super().kill()


@pytest.fixture
def ryu_manager(request, tmp_path):
    """Factory: ``ryu_manager(*apps, env=None, args=(), wait_wsapi=False) -> RyuManager``.

    ``apps`` are module names (``"ryu.app.simple_switch_13"``,
    ``"ryu_apps.mirroring_director"``) or file paths, as ``ryu-manager`` takes
    them. ``env`` entries are added to this process's environment; ``args`` go
    before the apps (e.g. ``("--config-file", path)``). OpenFlow and the REST API
    listen on free ports of 127.0.0.1. Returns once the OpenFlow port listens
    (and the REST port too with ``wait_wsapi=True``); the one launcher is
    ``mininet_topos.ryu_process``.

    At teardown every manager is stopped by PID (SIGTERM, then SIGKILL). A
    manager that exited on its own, without the test calling ``stop()`` or
    ``kill()``, makes the test error: the controller crashed.
    """
    started: List[RyuManager] = []
    request.node.stash[_RYU_KEY] = started

    def start(
        *apps: str,
        env: Optional[Mapping[str, str]] = None,
        args: Sequence[str] = (),
        wait_wsapi: bool = False,
    ) -> RyuManager:
        log_path = tmp_path / f"ryu-manager-{len(started)}.log"
        ryu = start_ryu_manager(apps, log_path, env=env, args=args, wait_wsapi=wait_wsapi,
                                timeout=RYU_START_TIMEOUT_S)  # fmt: skip
        manager = RyuManager(ryu.proc, ryu.apps, ryu.ofp_port, ryu.wsapi_port, ryu.log_path)
        started.append(manager)
        return manager

    yield start

    crashed = [m for m in started if not m.stopped_by_test and not m.alive()]
    for manager in started:
        RyuProcess.stop(manager)
    if crashed:
        details = "\n".join(
            f"ryu-manager {' '.join(m.apps)} (pid {m.pid}) exited with code "
            f"{m.proc.returncode}; log tail:\n{m.log_tail(LOG_TAIL_LINES)}"
            for m in crashed
        )
        pytest.fail(f"ryu-manager died during the test:\n{details}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Add each ryu-manager's log tail to the report of a failed test phase."""
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for manager in item.stash.get(_RYU_KEY, []):
            with contextlib.suppress(OSError):
                report.sections.append(
                    (f"ryu-manager {' '.join(manager.apps)} (pid {manager.pid}) log tail",
                     manager.log_tail(LOG_TAIL_LINES))
                )


# --- Mininet -----------------------------------------------------------------


@contextlib.contextmanager
def mininet_net(
    topo,
    controller_port: int,
    *,
    ip_base: str = TEST_IP_BASE,
    wait_connected: bool = True,
    log_level: str = "warning",
    **mininet_kwargs,
) -> Iterator["mininet.net.Mininet"]:  # noqa: F821 - mininet is imported lazily
    """Build and start a Mininet network controlled by ``127.0.0.1:controller_port``.

    Switches are Open vSwitch bridges with the userspace datapath
    (``datapath='user'``, the kernel here has no OVS module) speaking
    OpenFlow 1.3; hosts get addresses from ``ip_base`` (default
    ``TEST_IP_BASE``) and MACs from their numbers. ``mininet_kwargs`` go to
    ``Mininet()`` (e.g. ``link=TCLink``). ``net.stop()`` always runs on exit,
    which deletes the bridges, links and host processes.

    Raises:
        RuntimeError: eventlet's monkey-patching is active in this process, or
            a switch did not connect to the controller.
    """
    if not hasattr(select, "poll"):
        raise RuntimeError(
            "select.poll is missing: eventlet's monkey-patching is active in this process "
            "(Ryu imported and patched here?). Mininet needs the real select; run Ryu as a "
            "subprocess (ryu_manager fixture)."
        )
    from mininet.log import setLogLevel
    from mininet.net import Mininet
    from mininet.node import OVSSwitch, RemoteController

    setLogLevel(log_level)
    options = {"autoSetMacs": True, **mininet_kwargs}
    net = Mininet(
        topo=topo,
        switch=partial(OVSSwitch, datapath="user", protocols="OpenFlow13"),
        controller=None,
        ipBase=ip_base,
        build=False,
        waitConnected=False,
        **options,
    )
    namespaces: List[int] = []
    try:
        net.addController("c0", controller=RemoteController, ip="127.0.0.1", port=controller_port)
        net.build()
        namespaces = [net_namespace(host.pid) for host in net.hosts]
        net.start()
        if wait_connected and not net.waitConnected(timeout=SWITCH_CONNECT_TIMEOUT_S):
            raise RuntimeError(
                f"switches did not connect to the controller on 127.0.0.1:{controller_port} "
                f"within {SWITCH_CONNECT_TIMEOUT_S:.0f} s"
            )
        yield net
    finally:
        _stop_net(net, namespaces)


def net_namespace(pid: int) -> int:
    """Inode of the network namespace of process ``pid``."""
    return os.stat(f"/proc/{pid}/ns/net").st_ino


def processes_in_namespace(inode: int) -> List[int]:
    """PIDs of every process whose network namespace has this inode."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.stat(entry / "ns" / "net").st_ino == inode:
                    pids.append(int(entry.name))
            except OSError:
                continue  # exited meanwhile
    return pids


def _stop_net(net, namespaces: Sequence[int]) -> None:
    """``net.stop()``, made safe for a test that was interrupted, then a check-and-sweep.

    A host interrupted mid-``cmd()`` (Ctrl-C, pytest-timeout) still waits for
    its output, and ``net.stop()`` would fail on its first command to it, leaving
    the bridge behind. Daemons started in a host (``iperf3 -D``) survive
    ``net.stop()`` and keep its namespace alive. So: interrupt and drain busy
    hosts, stop, then end what is left in the hosts' namespaces (by PID) and
    delete any bridge or switch port of this net that is still there.
    """
    for host in net.hosts:
        if host.shell is not None and host.waiting:
            host.sendInt()
            deadline = time.monotonic() + HOST_DRAIN_TIMEOUT_S
            while host.waiting and time.monotonic() < deadline:
                host.monitor(timeoutms=100)
            host.waiting = False
    try:
        net.stop()
    finally:
        for inode in namespaces:
            for pid in processes_in_namespace(inode):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        for switch in net.switches:
            _run("ovs-vsctl", "--if-exists", "del-br", switch.name)
            for intf in switch.intfNames():
                if intf != "lo" and Path(f"/sys/class/net/{intf}").exists():
                    _run("ip", "link", "del", intf)


@pytest.fixture(name="mininet_net")
def mininet_net_fixture(ovs):
    """The ``mininet_net`` context manager, after checking that Open vSwitch runs.

    Usage: ``with mininet_net(topo, ryu.ofp_port) as net: ...``.
    """
    return mininet_net
