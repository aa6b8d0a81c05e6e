"""Start and stop a whole PRISM network: ryu-manager, Mininet on OVS, and the cells.

Used by ``prism demo`` and by the integration tests, so both run the same
thing. Everything started here is ended by PID and every bridge and host is
removed in ``stop()``, which ``with PrismNetwork(...)`` always calls.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from functools import partial
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import yaml
from mininet.net import Mininet
from mininet.node import OVSSwitch, RemoteController

from mininet_topos.prism_topo import (
    IP_BASE,
    MGMT_BRIDGE,
    MGMT_CELL_PORT,
    MGMT_CONTROLLER_IP,
    MGMT_CONTROLLER_PORT,
    MGMT_PREFIX_LEN,
    SWITCH_NAME,
    cell_mgmt_ip,
    PrismTopo,
    cell_names,
    client_names,
    prism_config,
    server_names,
    switch_of,
)
from mininet_topos.ryu_process import RyuProcess, free_tcp_port, start_ryu_manager

from prism.atomic import atomic_write
from prism.config.bfd import BfdConfig, bfd_interface_options, cell_bfd_arguments
from prism.mgmt.auth import new_key_text

LOG = logging.getLogger("prism.harness")

REPO_ROOT = Path(__file__).resolve().parent.parent
#: The Ryu apps a PRISM controller runs: the director and its REST API / metrics.
CONTROLLER_APPS = (REPO_ROOT / "ryu_apps" / "mirroring_director.py",
                   REPO_ROOT / "ryu_apps" / "rest_api.py")
#: The stats collector (telemetry), for ``PrismNetwork(extra_apps=...)``.
STATS_COLLECTOR_APP = REPO_ROOT / "ryu_apps" / "stats_collector.py"
CONTROLLER_START_TIMEOUT_S = 30.0
SWITCH_CONNECT_TIMEOUT_S = 30.0
PROCESS_STOP_TIMEOUT_S = 5.0
OFCTL = ["ovs-ofctl", "-O", "OpenFlow13"]
#: Held for a network's whole life: its names (s1, prism-mgmt, c1, ...) are
#: machine-wide, so a second PRISM network waits for the first to stop.
NETWORK_LOCK = Path("/run/lock/prism-network.lock")
NETWORK_LOCK_TIMEOUT_S = 300.0  # below pytest-timeout (600 s): fail with a message, not hang
#: Packet-ins the switch sends per second at most, and in one burst (Open vSwitch's
#: controller_rate_limit / controller_burst_limit on the bridge's Controller record;
#: OVS takes at least 100 and 25). New flows beyond it queue per port in the switch
#: and are dropped when the queue is full: a flood of new flows cannot swamp the controller.
PACKET_IN_RATE_LIMIT = 1000
PACKET_IN_BURST_LIMIT = 200
#: Host interface offloads turned off (ethtool -K names), one at a time.
OFFLOADS_OFF = ("tx", "rx", "tso", "gso", "gro")
#: Open vSwitch's longest wait between two attempts to reach its controller (ms; its default is 8000).
CONTROLLER_MAX_BACKOFF_MS = 1000
#: Seconds the cells get to be usable at the controller (BFD up, heartbeats heard) after they start.
CELLS_READY_TIMEOUT_S = 30.0


def venv_bin(name: str) -> str:
    """Path of a console script next to the running interpreter (the venv's bin)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else (shutil.which(name) or name)


def stop_process(process: Optional[subprocess.Popen], timeout: float = PROCESS_STOP_TIMEOUT_S) -> None:
    """End one process we started: SIGTERM, then SIGKILL after ``timeout``."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout)


class ControllerProcess:
    """``ryu-manager`` with PRISM's apps as a subprocess on loopback (started by ``mininet_topos.ryu_process``)."""

    def __init__(self, workdir: Path, config_path: Path, apps: Sequence[Path] = CONTROLLER_APPS,
                 extra_env: Optional[Dict[str, str]] = None, name: str = ""):
        self.workdir = workdir
        self.name = name
        self.config_path = config_path
        self.apps = [str(app) for app in apps]
        self.extra_env = dict(extra_env or {})
        self.log_path = workdir / (f"ryu-manager-{name}.log" if name else "ryu-manager.log")
        # Chosen once: a restart listens on the same ports and the switch reconnects by itself.
        self.of_port = free_tcp_port()
        self.rest_port = free_tcp_port()
        self.ryu: Optional[RyuProcess] = None

    @property
    def process(self) -> Optional[subprocess.Popen]:
        """The ryu-manager process (None before ``start()``)."""
        return self.ryu.proc if self.ryu else None

    def start(self) -> None:
        """Start ryu-manager and wait until it listens for OpenFlow connections (RyuStartError if not)."""
        env = {"PRISM_CONFIG": str(self.config_path), **self.extra_env}
        inherited = env.get("PYTHONPATH", os.environ.get("PYTHONPATH"))
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), inherited]))
        self.ryu = start_ryu_manager(self.apps, self.log_path, cwd=REPO_ROOT, env=env,
                                     timeout=CONTROLLER_START_TIMEOUT_S, ofp_port=self.of_port,
                                     wsapi_port=self.rest_port)  # fmt: skip

    def rest(self, path: str, method: str = "GET", body: Optional[dict] = None,
             token: Optional[str] = None) -> dict:
        """Call the controller's REST API on loopback; returns the decoded JSON."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{self.rest_port}{path}", data=data,
                                         method=method)
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.loads(response.read().decode() or "null")

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the controller's log."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """End ryu-manager by PID."""
        if self.ryu is not None:
            self.ryu.stop()


class ListeningController(RemoteController):
    """A remote controller that ``ControllerProcess`` has already seen listening.

    Mininet's own check telnets to the port and decodes the controller's
    binary OpenFlow HELLO as text, which now and then raises UnicodeDecodeError.
    """

    def checkListening(self) -> None:  # noqa: N802 - Mininet's name
        return None


class PrismNetwork:
    """The whole PRISM test network, started and always fully stopped.

    Args:
        workdir: where the config, logs, state sockets and captures go.
        clients, servers, cells: topology size.
        replication_factor: the config's default replication factor.
        idle_timeout: FSC idle timeout (s).
        start_cells: run ``prism cell`` in every cell host.
        cell_args: extra arguments for every ``prism cell``.
        extra_apps: Ryu apps the controller runs beside ``CONTROLLER_APPS`` (e.g. STATS_COLLECTOR_APP).
        apps: Ryu apps to run instead of ``CONTROLLER_APPS`` (paths or module names, e.g.
            ``("ryu.app.simple_switch_13",)`` with ``start_cells=False, management=False``
            for a baseline on the same topology); it must install a table-0 entry.
        controllers: ryu-manager instances; more than one share the switch through a private
            etcd (``mininet_topos.cluster_net``), ``self.controller`` is the first.
        bfd: The configuration's ``bfd`` section (e.g. ``{"min_tx": 10, "min_rx": 10, "mult": 3}``):
            every cell port gets ``bfd:*`` and every cell ``--bfd`` with those values. None: no BFD.
    """

    def __init__(self, workdir: Path, clients: int = 2, servers: int = 1, cells: int = 3,
                 replication_factor: int = 1, idle_timeout: int = 10, start_cells: bool = True,
                 cell_args: Sequence[str] = (), extra_env: Optional[Dict[str, str]] = None,
                 config_overrides: Optional[dict] = None, management: bool = True,
                 extra_apps: Sequence[Path] = (), apps: Optional[Sequence[Path]] = None,
                 controllers: int = 1, lease_s: Optional[float] = None, switches: int = 1,
                 packet_in_limit: Tuple[int, int] = (PACKET_IN_RATE_LIMIT, PACKET_IN_BURST_LIMIT),
                 bfd: Optional[dict] = None):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.clients, self.servers, self.cells = clients, servers, cells
        self.switches = switches
        self.management = management
        self.config = prism_config(clients, servers, cells, idle_timeout, replication_factor,
                                   management=management, switches=switches)
        #: The management key of this network alone, made at start in the workdir (never committed).
        self.key_path = self.workdir / "mgmt.key"
        if management:
            self.config["management"].update({"key_file": str(self.key_path),
                                              "generation_file": str(self.workdir / "controller-generation")})
        self.config.update(config_overrides or {})
        if bfd is not None:
            self.config["bfd"] = dict(bfd)
        self.bfd: Optional[BfdConfig] = BfdConfig(**self.config["bfd"]) if "bfd" in self.config else None
        self.config_path = self.workdir / "prism.yaml"
        self.start_cells = start_cells
        self.cell_args = list(cell_args)
        self.packet_in_limit = packet_in_limit
        base_apps = CONTROLLER_APPS if apps is None else tuple(apps)
        self.controllers = [ControllerProcess(self.workdir, self.config_path, (*base_apps, *extra_apps),
                                              extra_env=extra_env)]
        self.etcd = None
        #: The controllers' addresses on the management network (one per controller).
        self.controller_mgmt_ips = [MGMT_CONTROLLER_IP]
        if controllers > 1:
            from mininet_topos.cluster_net import add_cluster

            add_cluster(self, controllers, lease_s, (*base_apps, *extra_apps), extra_env, ControllerProcess)
        self.controller = self.controllers[0]
        self.net: Optional[Mininet] = None
        self.cell_processes: Dict[str, subprocess.Popen] = {}
        self.background: List[subprocess.Popen] = []
        self._lock = None

    # -- lifecycle -----------------------------------------------------------
    def __enter__(self) -> "PrismNetwork":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _acquire_lock(self) -> None:
        NETWORK_LOCK.parent.mkdir(parents=True, exist_ok=True)
        self._lock = open(NETWORK_LOCK, "a")  # noqa: SIM115 - held until stop()
        deadline = time.monotonic() + NETWORK_LOCK_TIMEOUT_S
        while True:
            try:
                fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"another PRISM network holds {NETWORK_LOCK}") from None
                time.sleep(0.5)

    def _release_lock(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing the file releases the lock
            self._lock = None

    def start(self) -> None:
        """Write the config, start the controller, the network and the cells."""
        self._acquire_lock()
        if self.management and not self.key_path.exists():
            atomic_write(self.key_path, lambda handle: handle.write(new_key_text().encode()), 0o600)
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        if self.management:
            self._create_mgmt_bridge()
        if self.etcd is not None:
            self.etcd.start()
        for controller in self.controllers:
            controller.start()
        topo = PrismTopo(clients=self.clients, servers=self.servers, cells=self.cells, switches=self.switches)
        switch = partial(OVSSwitch, datapath="user", protocols="OpenFlow13")
        self.net = Mininet(topo=topo, switch=switch, controller=None, ipBase=IP_BASE,
                           autoSetMacs=True, build=False, waitConnected=False)
        for index, controller in enumerate(self.controllers):
            self.net.addController(ListeningController(f"ctl{index}", ip="127.0.0.1", port=controller.of_port))
        self.net.build()
        self.net.start()
        self._configure_controller_connections()
        for host in self.net.hosts:
            self._configure_host(host)
        for switch in self.net.switches:  # no IPv6 chatter from the switch-side ends either
            for intf in switch.intfNames():
                if intf != "lo":
                    subprocess.run(["sysctl", "-qw", f"net.ipv6.conf.{intf}.disable_ipv6=1"],
                                   capture_output=True, timeout=10)
        if self.bfd is not None:
            for name in cell_names(self.cells):
                self.set_cell_bfd(name, bfd_interface_options(self.bfd))
        if self.management:
            for index, name in enumerate(cell_names(self.cells)):
                self._attach_to_mgmt(self.host(name), index)
        if not self.net.waitConnected(timeout=SWITCH_CONNECT_TIMEOUT_S):
            raise RuntimeError(f"switch did not connect:\n{self.controller.log_tail()}")
        self._wait_for_pipeline()
        if self.start_cells:
            for name in cell_names(self.cells):
                self.start_cell(name)
            self.wait_cells_usable()

    def stop(self) -> None:
        """End everything this network started, whatever state it is in.

        Without the lock nothing was started, and the names (bridge, links)
        belong to whoever holds it: then there is nothing to stop.
        """
        if self._lock is None:
            return
        for process in self.background:
            with contextlib.suppress(Exception):
                stop_process(process)
        for name in list(self.cell_processes):
            with contextlib.suppress(Exception):
                self.stop_cell(name)
        if self.net is not None:
            with contextlib.suppress(Exception):
                self.net.stop()
            self.net = None
        for controller in self.controllers:
            controller.stop()
        if self.etcd is not None:
            self.etcd.stop()
        if self.management:
            self._delete_mgmt_bridge()
        self._release_lock()

    # -- hosts and cells -------------------------------------------------------
    @staticmethod
    def _configure_host(host) -> None:
        """Checksummed, MTU-sized frames (cells forward raw frames) and no IPv6 chatter.

        With transmit checksum offload on, a veth hands frames over with a partial
        checksum that only the kernel knows to complete; a cell that forwards the
        raw frame would pass on a bad checksum and the server would drop it.
        """
        for intf in host.intfList():
            for feature in OFFLOADS_OFF:
                host.cmd(f"ethtool -K {intf} {feature} off >/dev/null 2>&1")
            settings = host.cmd(f"ethtool -k {intf}")
            if "tx-checksumming: off" not in settings:
                raise RuntimeError(f"could not turn checksum offload off on {intf}:\n{settings}")
        host.cmd("sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1")

    # -- the management network -------------------------------------------------
    @staticmethod
    def _ip(*args: str, check: bool = True) -> None:
        subprocess.run(["ip", *args], check=check, capture_output=True, timeout=10)

    def _create_mgmt_bridge(self) -> None:
        """A Linux bridge in the root namespace, holding the controller's management address."""
        self._delete_mgmt_bridge()  # a run that was killed may have left ours behind
        self._ip("link", "add", MGMT_BRIDGE, "type", "bridge")
        for address in self.controller_mgmt_ips:
            self._ip("addr", "add", f"{address}/{MGMT_PREFIX_LEN}", "dev", MGMT_BRIDGE)
        self._ip("link", "set", MGMT_BRIDGE, "up")

    def _attach_to_mgmt(self, host, index: int) -> None:
        """Give a cell host its second interface, ``<cell>-eth1``, on the management bridge."""
        outside, inside = f"mg-{host.name}", f"{host.name}-eth1"
        self._ip("link", "add", outside, "type", "veth", "peer", "name", inside)
        self._ip("link", "set", inside, "netns", str(host.pid))
        self._ip("link", "set", outside, "master", MGMT_BRIDGE, "up")
        host.cmd(f"ip addr add {cell_mgmt_ip(index)}/{MGMT_PREFIX_LEN} dev {inside}")
        host.cmd(f"ip link set {inside} up")

    def _delete_mgmt_bridge(self) -> None:
        for index, name in enumerate(cell_names(self.cells)):
            self._ip("link", "del", f"mg-{name}", check=False)
        self._ip("link", "del", MGMT_BRIDGE, check=False)

    def _cell_mgmt_args(self, cell_id: str) -> List[str]:
        if not self.management:
            return []
        index = cell_names(self.cells).index(cell_id)
        controllers = [arg for address in self.controller_mgmt_ips
                       for arg in ("--controller", f"{address}:{MGMT_CONTROLLER_PORT}")]  # fmt: skip
        return ["--mgmt-listen", f"{cell_mgmt_ip(index)}:{MGMT_CELL_PORT}", *controllers,
                "--mgmt-key-file", str(self.key_path)]

    def _configure_controller_connections(self) -> None:
        """On each switch's Controller records: the packet-in rate limit, and reconnection within a second.

        Open vSwitch backs off up to 8 s between attempts to reach a controller
        that went away; a restarted controller would wait that long for its
        switches. ``max_backoff`` (ms, at least 1000) caps it.
        """
        rate, burst = self.packet_in_limit
        for switch in self.net.switches:
            uuids = subprocess.run(["ovs-vsctl", "-t", "10", "get", "bridge", switch.name, "controller"],
                                   capture_output=True, text=True, timeout=15, check=True).stdout  # fmt: skip
            for uuid in uuids.strip().strip("[]").split(","):
                if uuid.strip():
                    subprocess.run(["ovs-vsctl", "-t", "10", "set", "controller", uuid.strip(),
                                    f"controller_rate_limit={rate}", f"controller_burst_limit={burst}",
                                    f"max_backoff={CONTROLLER_MAX_BACKOFF_MS}"],
                                   capture_output=True, timeout=15, check=True)  # fmt: skip

    def _wait_for_pipeline(self) -> None:
        deadline = time.monotonic() + SWITCH_CONNECT_TIMEOUT_S
        while time.monotonic() < deadline:
            if all("table=0" in self.ofctl("dump-flows", "table=0", switch=switch.name)
                   for switch in self.net.switches):
                return
            time.sleep(0.2)
        raise RuntimeError(f"the director installed no pipeline:\n{self.controller.log_tail()}")

    def restart_controller(self) -> None:
        """Stop the controller and start it again on the same ports; returns once every switch is back on it.

        The switches' old entries stay in their tables while no controller is
        connected, so the pipeline's presence proves nothing: the controller's
        own ``switches_connected`` does.
        """
        self.controller.stop()
        self.controller.start()
        self.wait_for_switches()

    def wait_for_switches(self, timeout: float = SWITCH_CONNECT_TIMEOUT_S) -> None:
        """Wait until the controller reports every switch of the network connected (RuntimeError if not)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if len(self.controller.rest("/prism/v1/status")["switches_connected"]) >= len(self.net.switches):
                    return
            except OSError:
                pass  # the REST server is not up yet
            time.sleep(0.2)
        raise RuntimeError(f"the switches did not connect to the controller:\n{self.controller.log_tail()}")

    def host(self, name: str):
        """The Mininet host called ``name``."""
        return self.net.get(name)

    def state_socket(self, cell_id: str) -> Path:
        """Where cell ``cell_id`` serves its state table."""
        return self.workdir / f"{cell_id}.sock"

    def start_cell(self, cell_id: str) -> subprocess.Popen:
        """Run ``prism cell`` in the cell host (by PID, logged to the workdir)."""
        host = self.host(cell_id)
        log = open(self.workdir / f"{cell_id}.log", "ab")  # noqa: SIM115
        process = host.popen(
            [sys.executable, "-m", "prism.cli", "cell", "--interface", f"{cell_id}-eth0",
             "--cell-id", cell_id, "--state-socket", str(self.state_socket(cell_id)),
             *self._cell_mgmt_args(cell_id), *(cell_bfd_arguments(self.bfd) if self.bfd else ()),
             *self.cell_args],
            stdout=log, stderr=subprocess.STDOUT, cwd=str(REPO_ROOT),
            env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)),
        )
        log.close()
        self.cell_processes[cell_id] = process
        deadline = time.monotonic() + 10
        while not self.state_socket(cell_id).exists():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"cell {cell_id} did not start: "
                                   f"{(self.workdir / f'{cell_id}.log').read_text(errors='replace')}")
            time.sleep(0.1)
        return process

    def stop_cell(self, cell_id: str, kill: bool = False) -> None:
        """End a cell process by PID (``kill`` = SIGKILL, as a crash would)."""
        process = self.cell_processes.pop(cell_id)
        if kill and process.poll() is None:
            process.kill()
            process.wait(PROCESS_STOP_TIMEOUT_S)
        stop_process(process)

    def cell_state(self, cell_id: str) -> dict:
        """The JSON state document of a running cell."""
        with contextlib.closing(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)) as sock:
            sock.settimeout(5)
            sock.connect(str(self.state_socket(cell_id)))
            chunks = []
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        return json.loads(b"".join(chunks).decode())

    def cell_switch_port(self, cell_id: str) -> str:
        """The switch's interface to a cell (e.g. ``s1-eth101``)."""
        host, switch = self.host(cell_id), self.net.get(SWITCH_NAME)
        for link in self.net.linksBetween(host, switch):
            return link.intf1.name if link.intf1.node is switch else link.intf2.name
        raise KeyError(f"no link between {cell_id} and {SWITCH_NAME}")

    def set_cell_bfd(self, cell_id: str, options: Sequence[str]) -> None:
        """``ovs-vsctl set Interface <the cell's switch port> <options>`` (e.g. ``bfd:enable=true``)."""
        subprocess.run(["ovs-vsctl", "--timeout=10", "set", "Interface", self.cell_switch_port(cell_id),
                        *options], check=True, capture_output=True, timeout=15)  # fmt: skip

    def port_live(self, cell_id: str) -> bool:
        """Whether the switch holds the cell's port LIVE (``dump-ports-desc``)."""
        port = self.cell_switch_port(cell_id)
        lines = self.ofctl("dump-ports-desc").splitlines()
        for index, line in enumerate(lines):
            if f"({port})" in line:
                for detail in lines[index + 1:index + 4]:
                    if detail.strip().startswith("state:"):
                        return "LIVE" in detail
        return False

    def wait_cells_usable(self, timeout: float = CELLS_READY_TIMEOUT_S) -> None:
        """Wait until every running cell's port is LIVE (with BFD) and the controller uses every cell."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._cells_usable():
                return
            time.sleep(0.2)
        raise RuntimeError(f"cells not usable within {timeout:g} s:\n{self.controller.log_tail()}")

    def _cells_usable(self) -> bool:
        if self.bfd is not None and not all(self.port_live(name) for name in self.cell_processes):
            return False
        if not self.management or not any("rest_api" in app for app in self.controller.apps):
            return True
        try:
            cells = self.controller.rest("/prism/v1/cells")["cells"]
        except Exception:  # noqa: BLE001 - the REST API may not answer yet
            return False
        return all(cell["state"] == "alive" for cell in cells if cell["id"] in self.cell_processes)

    def set_cell_link(self, cell_id: str, up: bool) -> None:
        """Take a cell's link down or up (both ends, as a cable pull would)."""
        self.net.configLinkStatus(cell_id, self.switch_of(cell_id), "up" if up else "down")

    def switch_of(self, host: str) -> str:
        """The switch a host or cell hangs on (s1 with one switch)."""
        return switch_of(host, self.clients, self.servers, self.cells, self.switches)

    # -- switch inspection -----------------------------------------------------
    def ofctl(self, *args: str, switch: str = SWITCH_NAME) -> str:
        """Run ``ovs-ofctl -O OpenFlow13 <args> s1`` (or ``switch``) and return its output."""
        command = [*OFCTL, args[0], switch, *args[1:]]
        return subprocess.run(command, capture_output=True, text=True, timeout=10).stdout

    @property
    def client_names(self) -> List[str]:
        return client_names(self.clients)

    @property
    def server_names(self) -> List[str]:
        return server_names(self.servers)

    @property
    def cell_names(self) -> List[str]:
        return cell_names(self.cells)
