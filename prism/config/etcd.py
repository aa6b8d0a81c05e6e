"""Check of the configuration's ``etcd`` section: several controllers sharing one network.

Schema::

    etcd:                             # optional; without it one controller runs the network alone
      endpoints: ["127.0.0.1:2379"]   # etcd client addresses, IP:PORT (the first that answers is used)
      lease_s: 0.75                   # s, 0 < lease_s <= 10: a controller silent this long is dead and
                                      # a standby becomes master of its switches (default 0.75)
      cluster: prism                  # key prefix in etcd (/prism/<cluster>/...): one per network

Every controller of the network reads the same file; each is told its own id
by ``PRISM_CONTROLLER_ID`` (the Ryu shell reads it, default host name and
OpenFlow port). Nothing here opens a connection: the shell does
(``ryu_apps/cluster.py``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional, Tuple

from yaml.nodes import Node

from prism.config.mgmt import check_address, format_address
from prism.config.telemetry import _number
from prism.cluster.mastership import DEFAULT_LEASE_S

ETCD_KEYS = ("endpoints", "lease_s", "cluster")
MAX_LEASE_S = 10.0
DEFAULT_CLUSTER = "prism"
_CLUSTER_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


@dataclass(frozen=True)
class EtcdConfig:
    """Where etcd is and how mastership is held (``etcd:`` section).

    Attributes:
        endpoints: etcd client addresses ``(ip, port)``.
        lease_s: Seconds after which a silent controller loses its switches.
        cluster: Name under which this network's keys live.
    """

    endpoints: Tuple[Tuple[str, int], ...]
    lease_s: float = DEFAULT_LEASE_S
    cluster: str = DEFAULT_CLUSTER


def check_etcd(checker, node: Optional[Node]) -> Optional[EtcdConfig]:
    """The ``etcd`` section, or None when absent or unusable (problems reported)."""
    if node is None:
        return None
    fields = checker.mapping(node, "etcd", ETCD_KEYS, ("endpoints",))
    if fields is None or "endpoints" not in fields:
        return None
    items = checker.sequence(fields["endpoints"], "etcd.endpoints", "endpoint", "endpoints")
    endpoints = [check_address(checker, item, f"etcd.endpoints[{i}]", "etcd endpoint")
                 for i, item in enumerate(items or ())]  # fmt: skip
    lease_s: Optional[float] = DEFAULT_LEASE_S
    if "lease_s" in fields:
        lease_s = _number(checker, fields["lease_s"], "etcd.lease_s", "a number of seconds", MAX_LEASE_S)
    cluster: Optional[str] = DEFAULT_CLUSTER
    if "cluster" in fields:
        cluster = checker.string(fields["cluster"], "etcd.cluster", "etcd.cluster")
        if cluster is not None and not _CLUSTER_NAME.fullmatch(cluster):
            checker.report(fields["cluster"], "etcd.cluster",
                           f"etcd.cluster {cluster!r} must be 1-64 letters, digits, '.', '_' or '-'")
            cluster = None
    if not items or None in endpoints or lease_s is None or cluster is None:
        return None
    return EtcdConfig(tuple(endpoints), lease_s, cluster)


def render_etcd(etcd: EtcdConfig) -> dict:
    """The section as :func:`check_etcd` reads it back."""
    return {"endpoints": [format_address(e) for e in etcd.endpoints], "lease_s": etcd.lease_s,
            "cluster": etcd.cluster}
