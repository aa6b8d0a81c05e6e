"""The new flows both controller benchmarks send: first frames of distinct flows between two hosts."""

from __future__ import annotations

from typing import List

from benchmarks.harness.openflow_peer import NewFlow
from prism.flows.identity import TCP_SYN
from testkit.packets import build_tcp_frame, build_udp_frame

DP_ID = 0x1
CELL_PORTS = {"cell1": 1, "cell2": 2, "cell3": 3}
EDGE_PORTS = (4, 5, 6, 7)
CLIENT = ("02:00:00:00:00:01", EDGE_PORTS[0])  #: (MAC, port) where new flows come from
SERVER = ("02:00:00:00:00:02", EDGE_PORTS[1])
SERVER_IP = "172.31.255.1"
HOSTS_PER_SUBNET = 250
UDP_EVERY = 4  #: one new flow in four is a UDP datagram, the rest TCP SYNs
UDP_PAYLOAD = b"q" * 32
WARM_UP_START = 10_000_000  #: flow numbers of warm-up flows start here (never measured ones)


def new_flows(count: int, start: int = 0) -> List[NewFlow]:
    """``count`` distinct first frames of new flows, client to server, numbered from ``start``."""
    flows = []
    hosts = HOSTS_PER_SUBNET * HOSTS_PER_SUBNET
    macs = {"eth_src": CLIENT[0], "eth_dst": SERVER[0]}
    for i in range(start, start + count):
        host = i % hosts
        src = f"172.31.{host // HOSTS_PER_SUBNET}.{host % HOSTS_PER_SUBNET + 1}"
        sport = 20000 + i // hosts
        if i % UDP_EVERY == UDP_EVERY - 1:
            frame = build_udp_frame(src, SERVER_IP, sport, 53, UDP_PAYLOAD, **macs)
        else:
            frame = build_tcp_frame(src, SERVER_IP, sport, 443, flags=TCP_SYN, **macs)
        flows.append(NewFlow(frame, CLIENT[1]))
    return flows


def warm_up_flows(count: int) -> List[NewFlow]:
    """The server speaks first (so both controllers know where it is), then ``count`` client flows.

    After them simple_switch_13 answers every new flow with an entry (it knows
    both hosts) and PRISM has learnt both hosts and, with a few dozen flows,
    created every profile group of three cells.
    """
    first = build_udp_frame(SERVER_IP, "172.31.0.1", 53, 40000, b"hello", eth_src=SERVER[0], eth_dst=CLIENT[0])
    return [NewFlow(first, SERVER[1])] + new_flows(count, start=WARM_UP_START)
