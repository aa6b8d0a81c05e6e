"""PRISM's Mininet topology: clients, servers and cells on one fast-path switch.

Usable with Mininet's own launcher (userspace datapath, OpenFlow 1.3)::

    PRISM_CONFIG=out/prism.yaml ryu-manager ryu_apps/mirroring_director.py &
    mn --custom mininet_topos/prism_topo.py --topo prism,clients=2,servers=1,cells=3 \\
       --switch ovs,datapath=user,protocols=OpenFlow13 \\
       --controller remote,ip=127.0.0.1,port=6653 --ipbase 172.31.0.0/16 --mac

``prism_config(topo)`` gives the matching PRISM configuration (cells and edge
ports by switch port number), so topology and controller cannot disagree.
Nothing happens at import time.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from typing import Dict, List

from mininet.topo import Topo

#: The switch's datapath id (``dpid`` as Mininet wants it: 16 hex digits).
SWITCH_DPID = 1
SWITCH_NAME = "s1"
#: Hosts get addresses from here. It must not contain the resolver address of
#: /etc/resolv.conf (10.255.255.53 on these machines), or lookups hang.
IP_BASE = "172.31.0.0/16"
#: The management network (cells' second interface, a Linux bridge in the root
#: namespace where the controller listens): heartbeats and state replication
#: never travel on the data path.
MGMT_BRIDGE = "prism-mgmt"
MGMT_PREFIX = "172.30.0."
MGMT_PREFIX_LEN = 24
MGMT_CONTROLLER_IP = MGMT_PREFIX + "254"
MGMT_CONTROLLER_PORT = 7600
MGMT_CELL_PORT = 7700
MGMT_CELL_HOST_BASE = 10
#: Switch port numbers: edge hosts count up from 1, cells from CELL_PORT_BASE.
EDGE_PORT_BASE = 1
CELL_PORT_BASE = 101
#: This file. ``mn --custom FILE`` executes it with no ``__file__``; the README runs
#: that command from the repository, where this relative path holds.
_THIS_FILE = Path(globals().get("__file__", "mininet_topos/prism_topo.py"))
#: The shipped first-packet SPE model, used by ``prism_config(prediction=True)`` and
#: ``prediction_config`` (``prediction.policy: first_packet``; models/default is the aging model).
DEFAULT_MODEL_DIR = _THIS_FILE.resolve().parent.parent / "models" / "first_packet"
#: The demo's mirroring budget: mirror copies per packet the predictive policy may spend.
DEMO_MIRROR_BUDGET = 0.5
#: The shipped configuration: ``prism demo`` runs its replication policy.
SHIPPED_CONFIG = _THIS_FILE.resolve().parent.parent / "examples" / "prism.yaml"


class PrismTopo(Topo):
    """``clients`` + ``servers`` edge hosts and ``cells`` cell hosts on ``switches`` switches.

    With several switches (s1, s2, ... with dpids 1, 2, ...) the hosts and the cells
    are dealt round-robin (:func:`layout`); each switch is a pod of its own (no
    link between switches: a flow stays on the switch of its client and server).
    """

    def build(self, clients: int = 2, servers: int = 1, cells: int = 3, switches: int = 1) -> None:  # noqa: D102
        pods = layout(clients, servers, cells, switches)
        for index, pod in enumerate(pods):
            switch = self.addSwitch(switch_name(index), dpid=f"{SWITCH_DPID + index:016x}")
            for port, name in pod["edge"].items():
                self.addLink(self.addHost(name), switch, port2=port)
            for port, name in pod["cells"].items():
                self.addLink(self.addHost(name), switch, port2=port)


def switch_name(index: int) -> str:
    """Name of the switch with 0-based ``index``: s1, s2, ..."""
    return f"s{index + 1}"


def layout(clients: int, servers: int, cells: int, switches: int = 1) -> List[Dict]:
    """Per switch: ``edge`` and ``cells`` as port -> host name (round-robin), and ``cell_indexes``.

    Raises:
        ValueError: fewer than one client, server or cell per switch.
    """
    if switches < 1 or clients < switches or servers < switches or cells < switches:
        raise ValueError("the topology needs at least one client, server and cell per switch")
    pods: List[Dict] = [{"edge": {}, "cells": {}, "cell_indexes": []} for _ in range(switches)]
    edge_hosts = client_names(clients) + server_names(servers)
    # clients round-robin, then servers round-robin, so that every pod gets both
    ordered = [(i % switches, name) for i, name in enumerate(client_names(clients))]
    ordered += [(i % switches, name) for i, name in enumerate(server_names(servers))]
    for pod_index, name in sorted(ordered, key=lambda item: edge_hosts.index(item[1])):
        pod = pods[pod_index]
        pod["edge"][EDGE_PORT_BASE + len(pod["edge"])] = name
    for index, name in enumerate(cell_names(cells)):
        pod = pods[index % switches]
        pod["cells"][CELL_PORT_BASE + len(pod["cells"])] = name
        pod["cell_indexes"].append(index)
    return pods


def switch_of(host: str, clients: int, servers: int, cells: int, switches: int = 1) -> str:
    """The name of the switch ``host`` hangs on."""
    for index, pod in enumerate(layout(clients, servers, cells, switches)):
        if host in pod["edge"].values() or host in pod["cells"].values():
            return switch_name(index)
    raise KeyError(host)


def client_names(count: int) -> List[str]:
    """Host names of the clients: c1, c2, ..."""
    return [f"c{i}" for i in range(1, count + 1)]


def server_names(count: int) -> List[str]:
    """Host names of the servers: sv1, sv2, ..."""
    return [f"sv{i}" for i in range(1, count + 1)]


def cell_names(count: int) -> List[str]:
    """Host names of the cells, which are also their PRISM cell ids."""
    return [f"cell{i}" for i in range(1, count + 1)]


def cell_mgmt_ip(index: int) -> str:
    """Management address of the cell with 0-based ``index``."""
    return f"{MGMT_PREFIX}{MGMT_CELL_HOST_BASE + index}"


def prism_config(
    clients: int,
    servers: int,
    cells: int,
    idle_timeout: int = 10,
    replication_factor: int = 1,
    management: bool = True,
    prediction: bool = False,
    switches: int = 1,
) -> Dict:
    """The PRISM configuration (as a YAML-ready dict) for ``PrismTopo``.

    With ``management`` the cells have management addresses and the controller
    listens for their heartbeats (see ``PrismNetwork``, which builds that network).
    With ``prediction`` the controller serves the shipped model (``prediction_config``).
    """
    pods = layout(clients, servers, cells, switches)
    smallest = min(len(pod["cells"]) for pod in pods)
    config = {
        "idle_timeout": idle_timeout,
        "default_replication_factor": replication_factor,
        "max_replication_factor": max(replication_factor, min(2, smallest - 1)),
        "switches": [
            {
                "dpid": SWITCH_DPID + index,
                "name": switch_name(index),
                "edge_ports": sorted(pod["edge"]),
                "cells": [{"id": name, "port": port} for port, name in sorted(pod["cells"].items())],
            }
            for index, pod in enumerate(pods)
        ],
    }
    if management:
        config["management"] = {"listen": f"{MGMT_CONTROLLER_IP}:{MGMT_CONTROLLER_PORT}"}
        for switch in config["switches"]:
            for cell in switch["cells"]:
                index = cell_names(cells).index(cell["id"])
                cell["mgmt"] = f"{cell_mgmt_ip(index)}:{MGMT_CELL_PORT}"
    if prediction:
        config["prediction"] = prediction_config()
    return config


def prediction_config(model_dir: Path = DEFAULT_MODEL_DIR, budget: float = DEMO_MIRROR_BUDGET) -> Dict:
    """The ``prediction`` section: the first-packet predictive policy with ``model_dir`` and ``budget``."""
    return {"policy": "first_packet", "model": str(model_dir), "budget": budget}


def shipped_policy_config(path: Path = SHIPPED_CONFIG) -> Dict:
    """What the shipped configuration (``examples/prism.yaml``) says about replication, as overrides.

    Its ``prediction`` section (a relative ``model`` made absolute), ``mirroring_mode``
    and ``max_replication_factor``, and its management section's state-mode settings
    (``state_interval_s``, ``takeover_tolerance_bytes``, under ``"management"``);
    the demo's network, addresses and ports stay its own.
    """
    shipped = yaml.safe_load(path.read_text()) or {}
    overrides: Dict = {}
    for key in ("prediction", "mirroring_mode", "max_replication_factor"):
        if key in shipped:
            overrides[key] = shipped[key]
    prediction = overrides.get("prediction")
    if isinstance(prediction, dict) and prediction.get("model"):
        prediction["model"] = str((path.parent / prediction["model"]).resolve())
    management = {k: v for k, v in (shipped.get("management") or {}).items()
                  if k in ("state_interval_s", "takeover_tolerance_bytes")}
    if management:
        overrides["management"] = management
    return overrides


topos = {"prism": PrismTopo}
