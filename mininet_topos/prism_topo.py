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
    """``clients`` + ``servers`` edge hosts and ``cells`` cell hosts on one switch."""

    def build(self, clients: int = 2, servers: int = 1, cells: int = 3) -> None:  # noqa: D102
        if clients < 1 or servers < 1 or cells < 1:
            raise ValueError("the topology needs at least one client, server and cell")
        switch = self.addSwitch(SWITCH_NAME, dpid=f"{SWITCH_DPID:016x}")
        port = EDGE_PORT_BASE
        for name in client_names(clients) + server_names(servers):
            self.addLink(self.addHost(name), switch, port2=port)
            port += 1
        for index, name in enumerate(cell_names(cells)):
            self.addLink(self.addHost(name), switch, port2=CELL_PORT_BASE + index)


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
) -> Dict:
    """The PRISM configuration (as a YAML-ready dict) for ``PrismTopo``.

    With ``management`` the cells have management addresses and the controller
    listens for their heartbeats (see ``PrismNetwork``, which builds that network).
    With ``prediction`` the controller serves the shipped model (``prediction_config``).
    """
    edge_ports = list(range(EDGE_PORT_BASE, EDGE_PORT_BASE + clients + servers))
    config = {
        "idle_timeout": idle_timeout,
        "default_replication_factor": replication_factor,
        "max_replication_factor": max(replication_factor, min(2, cells - 1)),
        "switches": [
            {
                "dpid": SWITCH_DPID,
                "name": SWITCH_NAME,
                "edge_ports": edge_ports,
                "cells": [
                    {"id": name, "port": CELL_PORT_BASE + index}
                    for index, name in enumerate(cell_names(cells))
                ],
            }
        ],
    }
    if management:
        config["management"] = {"listen": f"{MGMT_CONTROLLER_IP}:{MGMT_CONTROLLER_PORT}"}
        for index, cell in enumerate(config["switches"][0]["cells"]):
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
