"""Several controllers on one PRISM network: their private etcd, their roles, the switch's groups.

``PrismNetwork(controllers=N)`` calls :func:`add_cluster`: a private etcd on
loopback (``mininet_topos.etcd_process``), an ``etcd`` section in the
configuration, and N ryu-manager processes named ``ctl1``..``ctlN``
(``PRISM_CONTROLLER_ID``), each on its own OpenFlow and REST port; the switch
connects to all of them. The helpers below read what tests and the demo check.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections import Counter
from typing import Any, Callable, Dict, List, Optional, Sequence

from mininet_topos.etcd_process import EtcdProcess
from mininet_topos.prism_topo import MGMT_CONTROLLER_PORT, MGMT_PREFIX

#: The first controller's host number on the management network (.254, as with one controller).
MGMT_CONTROLLER_HOST = 254

#: Lease used by the test networks (the configuration's default when None).
POLL_S = 0.02
_GROUP_LINE = re.compile(r"group_id=(\d+),type=(\w+)(.*)")
_WATCH = re.compile(r"watch_port:(\d+)")
_FLOW_GROUP = re.compile(r"group:(\d+)")


def add_cluster(network, count: int, lease_s: Optional[float], apps: Sequence, extra_env,
                controller_process: Callable[..., Any]) -> None:  # fmt: skip
    """Give ``network`` an etcd and ``count`` controllers sharing its switches.

    ``controller_process`` makes one controller (``harness.ControllerProcess``: passed in,
    so that this module does not import the harness that imports it).
    """
    network.etcd = EtcdProcess(network.workdir / "etcd")
    section = {"endpoints": [network.etcd.endpoint]}
    if lease_s is not None:
        section["lease_s"] = lease_s
    network.config["etcd"] = section
    # each controller its own address on the management network; every cell names them all
    network.controller_mgmt_ips = [f"{MGMT_PREFIX}{MGMT_CONTROLLER_HOST - i}" for i in range(count)]
    network.controllers = [
        controller_process(network.workdir, network.config_path, apps, name=f"ctl{index}",
                          extra_env={**(extra_env or {}), "PRISM_CONTROLLER_ID": f"ctl{index}",
                                     "PRISM_MGMT_LISTEN": f"{address}:{MGMT_CONTROLLER_PORT}"})
        for index, address in enumerate(network.controller_mgmt_ips, start=1)
    ]  # fmt: skip


def cluster_status(controller) -> Optional[dict]:
    """A controller's ``/prism/v1/cluster`` answer, or None if it does not answer."""
    try:
        return controller.rest("/prism/v1/cluster")
    except Exception:  # noqa: BLE001 - a dead or busy controller simply does not answer
        return None


def masters(network, dp_id: int = 1) -> List[str]:
    """Names of the live controllers that say they are master of ``dp_id`` with its tables adopted."""
    key = f"{dp_id:016x}"
    found = []
    for controller in network.controllers:
        if controller.process is None or controller.process.poll() is not None:
            continue
        status = cluster_status(controller)
        cluster = (status or {}).get("cluster") or {}
        if cluster.get("roles", {}).get(key) == "master" and key in cluster.get("ready", []):
            found.append(controller.name)
    return found


def wait_for_master(network, dp_id: int = 1, timeout: float = 20.0, not_named: str = "") -> str:
    """Poll until exactly one live controller (other than ``not_named``) masters ``dp_id``; its name."""
    deadline = time.monotonic() + timeout
    found: List[str] = []
    while time.monotonic() < deadline:
        found = masters(network, dp_id)
        if len(found) == 1 and found[0] != not_named:
            return found[0]
        time.sleep(POLL_S)
    raise AssertionError(f"no single master of {dp_id:016x} in {timeout} s (masters: {found})")


def controller_named(network, name: str):
    return next(c for c in network.controllers if c.name == name)


def group_report(network, switch: str = "s1") -> Dict[str, int]:
    """Groups on the switch: ALL groups, profiles held twice, ALL groups no flow uses, FF groups without ALL."""
    groups = subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "dump-groups", switch],
                            capture_output=True, text=True, timeout=10).stdout
    flows = subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "dump-flows", switch, "table=1"],
                           capture_output=True, text=True, timeout=10).stdout
    all_groups: Dict[int, tuple] = {}
    ff_groups: Dict[int, tuple] = {}
    for line in groups.splitlines():
        match = _GROUP_LINE.search(line)
        if not match:
            continue
        group_id, kind = int(match.group(1)), match.group(2)
        if kind == "all":
            all_groups[group_id] = ()
        elif kind == "ff":
            ff_groups[group_id] = tuple(_WATCH.findall(match.group(3)))
    used = {int(g) for g in _FLOW_GROUP.findall(flows)}
    ff_offset = 0x0100_0000
    profiles = Counter(ff_groups.get(g + ff_offset) for g in all_groups)
    return {
        "all_groups": len(all_groups),
        "duplicate_groups": sum(n - 1 for n in profiles.values() if n > 1),
        "orphaned_groups": sum(1 for g in all_groups if g not in used),
        "stray_ff_groups": sum(1 for g in ff_groups if g - ff_offset not in all_groups),
        "fsc_entries": sum(1 for line in flows.splitlines() if "group:" in line),
    }
