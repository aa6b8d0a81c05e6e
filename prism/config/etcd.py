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

from dataclasses import dataclass
from typing import Annotated, Tuple

from prism.cluster.mastership import DEFAULT_LEASE_S
from prism.config.fields import FORBID, Address, address, listed, number, text

MAX_LEASE_S = 10.0
DEFAULT_CLUSTER = "prism"
_CLUSTER_NAME = r"[A-Za-z0-9_.-]{1,64}"


@dataclass(frozen=True)
class EtcdConfig:
    """Where etcd is and how mastership is held (``etcd:`` section).

    Attributes:
        endpoints: etcd client addresses ``(ip, port)``.
        lease_s: Seconds after which a silent controller loses its switches.
        cluster: Name under which this network's keys live.
    """

    __pydantic_config__ = FORBID

    endpoints: Annotated[Tuple[Annotated[Address, address("etcd endpoint")], ...], listed("endpoints", "endpoint")]
    lease_s: Annotated[float, number(maximum=MAX_LEASE_S)] = DEFAULT_LEASE_S
    cluster: Annotated[str, text("etcd.cluster", _CLUSTER_NAME,
                                 "etcd.cluster {shown} must be 1-64 letters, digits, '.', '_' or '-'")] = DEFAULT_CLUSTER
