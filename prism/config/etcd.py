"""The configuration's ``etcd`` section: several controllers sharing one network (absent: one controller).

Every controller of the network reads the same file; each is told its own id
by ``PRISM_CONTROLLER_ID`` (the Ryu shell reads it, default host name and
OpenFlow port). Nothing here opens a connection: the shell does
(``ryu_apps/cluster.py``).
"""

from dataclasses import dataclass
from typing import Annotated, Tuple

from prism.cluster.mastership import DEFAULT_LEASE_S
from prism.config.fields import FORBID, Address, address, listed, number, text

MAX_LEASE_S = 10.0
DEFAULT_CLUSTER = "prism"
_CLUSTER_NAME = r"[A-Za-z0-9_.-]{1,64}"
_NOT_CLUSTER_NAME = "etcd.cluster {shown} must be 1-64 letters, digits, '.', '_' or '-'"


@dataclass(frozen=True)
class EtcdConfig:
    """Where etcd is and how mastership is held (``etcd:`` section).

    Attributes:
        endpoints: etcd client addresses ``(ip, port)``; the first that answers is used.
        lease_s: Seconds after which a silent controller loses its switches.
        cluster: Name under which this network's keys live (``/prism/<cluster>/...``).
    """

    __pydantic_config__ = FORBID

    endpoints: Annotated[Tuple[Annotated[Address, address("etcd endpoint")], ...], listed("endpoints", "endpoint")]
    lease_s: Annotated[float, number(maximum=MAX_LEASE_S)] = DEFAULT_LEASE_S
    cluster: Annotated[str, text("etcd.cluster", _CLUSTER_NAME, _NOT_CLUSTER_NAME)] = DEFAULT_CLUSTER
