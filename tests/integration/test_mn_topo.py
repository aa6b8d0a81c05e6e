"""The README's ``mn --custom mininet_topos/prism_topo.py --topo prism,...`` builds the
topology that ``prism_config`` describes, and its switch is programmed by PRISM's controller.

Mininet's own launcher runs, with the README's arguments, through its
``MininetRunner`` (``/usr/bin/mn``'s code) inside a small wrapper: ``mn`` itself
answers any error with Mininet's ``cleanup()``, which kills processes by name
machine-wide, so the wrapper stops the network it started instead. The names
(s1, c1, ...) are machine-wide: the test holds the PRISM network lock throughout.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import signal
import subprocess
import time

import pytest
import yaml

from mininet_topos.harness import NETWORK_LOCK, NETWORK_LOCK_TIMEOUT_S, REPO_ROOT, ControllerProcess
from mininet_topos.prism_topo import CELL_PORT_BASE, EDGE_PORT_BASE, IP_BASE, SWITCH_NAME, prism_config
from tests.support import poll

MN = "/usr/bin/mn"
MN_PYTHON = "/usr/bin/python3"  # mn's own interpreter (Debian's Mininet is installed for it)
CLIENTS, SERVERS, CELLS = 2, 1, 3
MN_TIMEOUT_S = 180.0
#: Mininet's CLI commands run after the network started (``--post``): the ports the switch
#: has, a host's address, and (polled) the pipeline PRISM's controller installed.
POST_SCRIPT = f"""\
sh ovs-ofctl -O OpenFlow13 show {SWITCH_NAME}
c1 ip -4 -o addr show dev c1-eth0
sh for i in $(seq 100); do ovs-ofctl -O OpenFlow13 dump-flows {SWITCH_NAME} | grep -q CONTROLLER && break; sleep 0.2; done
sh ovs-ofctl -O OpenFlow13 dump-flows {SWITCH_NAME}
"""

#: Runs mn's MininetRunner; stops any network it started if mn did not (never cleanup()).
#: argv: the file to write the network's process ids to, then mn's own arguments.
MN_WRAPPER = """
import json, runpy, sys
import mininet.net, mininet.node

pid_file, mn_args = sys.argv[1], sys.argv[2:]
networks = []
real_start, real_stop = mininet.net.Mininet.start, mininet.net.Mininet.stop

def start(self):
    networks.append(self)
    real_start(self)
    pids = [node.pid for node in self.hosts + self.switches if getattr(node, "pid", None)]
    with open(pid_file, "w") as handle:
        json.dump(pids, handle)

def stop(self):
    if self in networks:
        networks.remove(self)
    real_stop(self)

real_check = mininet.node.RemoteController.checkListening

def check_listening(self):
    try:
        real_check(self)
    except UnicodeDecodeError:  # Mininet decodes the controller's binary HELLO as text
        pass

mininet.net.Mininet.start, mininet.net.Mininet.stop = start, stop
mininet.node.RemoteController.checkListening = check_listening
mn = runpy.run_path(MN_PATH, run_name="mn_under_test")
sys.argv = ["mn", *mn_args]
try:
    mn["MininetRunner"]()
finally:
    for net in list(networks):
        stop(net)
""".replace("MN_PATH", repr(MN))


@contextlib.contextmanager
def network_lock():
    """The machine-wide PRISM network lock (as ``PrismNetwork`` takes it)."""
    NETWORK_LOCK.parent.mkdir(parents=True, exist_ok=True)
    with open(NETWORK_LOCK, "a") as handle:
        taken = poll(lambda: _try_lock(handle), timeout=NETWORK_LOCK_TIMEOUT_S, interval=0.5)
        assert taken, f"another PRISM network holds {NETWORK_LOCK}"
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _try_lock(handle) -> bool:
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _end_leftovers(pid_file) -> None:
    """If the wrapper died before stopping its network: end its hosts by PID, drop the bridge."""
    with contextlib.suppress(OSError, ValueError):
        for pid in json.loads(pid_file.read_text()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    subprocess.run(["ovs-vsctl", "--if-exists", "del-br", SWITCH_NAME], capture_output=True, check=False)


@pytest.mark.timeout(420)
def test_mn_custom_topo_prism_builds_the_configured_topology_under_prism(ovs, tmp_path):
    config_path = tmp_path / "prism.yaml"
    config_path.write_text(yaml.safe_dump(prism_config(CLIENTS, SERVERS, CELLS, management=False)))
    post = tmp_path / "post.mn"
    post.write_text(POST_SCRIPT)
    wrapper = tmp_path / "mn_wrapper.py"
    wrapper.write_text(MN_WRAPPER)
    pid_file = tmp_path / "mn-pids.json"
    env = dict(os.environ, PATH=os.environ.get("PATH", "") + ":/usr/local/sbin:/usr/sbin:/sbin")
    env.pop("PYTHONPATH", None)
    with network_lock():
        controller = ControllerProcess(tmp_path, config_path)
        try:
            controller.start()
            command = [
                MN_PYTHON, str(wrapper), str(pid_file),
                "--custom", "mininet_topos/prism_topo.py",
                "--topo", f"prism,clients={CLIENTS},servers={SERVERS},cells={CELLS}",
                "--switch", "ovs,datapath=user,protocols=OpenFlow13",
                "--controller", f"remote,ip=127.0.0.1,port={controller.of_port}",
                "--ipbase", IP_BASE, "--mac", "--test", "none", "--post", str(post),
            ]  # fmt: skip
            started = time.monotonic()
            result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                                    timeout=MN_TIMEOUT_S)  # fmt: skip
            output = result.stdout + result.stderr
            status = controller.rest("/prism/v1/status")
            bridges = subprocess.run(["ovs-vsctl", "list-br"], capture_output=True, text=True).stdout.split()
        finally:
            _end_leftovers(pid_file)
            controller.stop()
    assert result.returncode == 0, output
    assert "Caught exception" not in output, output
    assert "completed in" in output, output
    print(f"\nmn --custom ... --topo prism: {time.monotonic() - started:.1f} s")

    # Edge hosts on ports 1.., cells on 101..: what prism_config() tells the controller.
    ports = {int(number): name for number, name in re.findall(r"^\s*(\d+)\(([\w-]+)\):", output, re.M)}
    edge = CLIENTS + SERVERS
    assert sorted(ports) == [*range(EDGE_PORT_BASE, EDGE_PORT_BASE + edge),
                             *range(CELL_PORT_BASE, CELL_PORT_BASE + CELLS)], output  # fmt: skip
    assert re.search(r"c1-eth0\s+inet 172\.31\.\d+\.\d+/16", output), output
    # The switch (dpid 1) connected to PRISM's director, which installed its pipeline.
    assert status["switches"]["0000000000000001"]["switch_connects"] >= 1, status
    assert re.search(r"table=1,.*actions=CONTROLLER", output), output
    assert SWITCH_NAME not in bridges, "mn stopped its network"
