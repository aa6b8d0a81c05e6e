"""Replication survives real packet loss: nftables drops 30 % of state and ack datagrams on a veth between two namespaces.

Two network namespaces of the test's own (``psmmt<pid>a``/``b``) joined by a
veth pair. Cell c1's management socket and the fake controller live in the
first, cell c2's in the second; nftables in the second drops a random 30 %
of the UDP datagrams c2 receives (state) and sends (acks). The sockets are
created inside the namespaces (``setns`` for the creating thread only), the
cells' loops run in threads of the test process. Needs root and ``nft``
(Debian package ``nftables``).
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.integration.smm_cells import (
    PROFILE,
    FakeController,
    RunningCell,
    feed_flows,
    in_netns,
    records_of,
    start_cells,
    wait_for,
)

_TAG = f"{os.getpid() % 1_000_000}"
NETNS_A, NETNS_B = f"psmmt{_TAG}a", f"psmmt{_TAG}b"
VETH_A, VETH_B = f"psm{_TAG}a", f"psm{_TAG}b"  # at most 10 characters: within IFNAMSIZ
ADDRESS_A, ADDRESS_B = "172.31.251.1", "172.31.251.2"
MGMT_PORT_B = 7701
LOSS_PERCENT = 30
FLOWS = 300

NFT_RULES = f"""
table inet psmmtest {{
  chain input {{
    type filter hook input priority 0; policy accept;
    udp dport {MGMT_PORT_B} numgen random mod 100 < {LOSS_PERCENT} counter drop
  }}
  chain output {{
    type filter hook output priority 0; policy accept;
    udp sport {MGMT_PORT_B} numgen random mod 100 < {LOSS_PERCENT} counter drop
  }}
}}
"""

def _run(*argv: str, check: bool = True, stdin: str = None) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False, input=stdin)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {result.stderr.strip()}")
    return result


def _dropped_packets() -> int:
    listing = _run("ip", "netns", "exec", NETNS_B, "nft", "list", "table", "inet", "psmmtest").stdout
    return sum(int(line.split("packets ")[1].split()[0]) for line in listing.splitlines()
               if "counter packets" in line)  # fmt: skip


@pytest.fixture
def lossy_link():
    """Two namespaces, a veth between them, nftables dropping in the second. Removed even on failure."""
    if os.geteuid() != 0:
        pytest.fail("this test needs root (network namespaces, nftables): run `make test` as root")
    if shutil.which("nft") is None:
        pytest.fail("this test needs nft: install the Debian package nftables (scripts/setup.sh)")
    try:
        for netns in (NETNS_A, NETNS_B):
            _run("ip", "netns", "add", netns)
            _run("ip", "netns", "exec", netns, "ip", "link", "set", "lo", "up")
        _run("ip", "link", "add", VETH_A, "netns", NETNS_A, "type", "veth", "peer", "name", VETH_B,
             "netns", NETNS_B)  # fmt: skip
        for netns, veth, address in ((NETNS_A, VETH_A, ADDRESS_A), (NETNS_B, VETH_B, ADDRESS_B)):
            _run("ip", "netns", "exec", netns, "ip", "addr", "add", f"{address}/24", "dev", veth)
            _run("ip", "netns", "exec", netns, "ip", "link", "set", veth, "up")
        _run("ip", "netns", "exec", NETNS_B, "nft", "-f", "-", stdin=NFT_RULES)
        yield
    finally:
        for netns in (NETNS_A, NETNS_B):  # takes the veth ends and the nftables table with it
            _run("ip", "netns", "del", netns, check=False)


def test_no_state_is_lost_when_30_percent_of_replication_datagrams_are_dropped(lossy_link, tmp_path):
    with in_netns(NETNS_A):
        controller = FakeController((ADDRESS_A, 0))
        c1 = RunningCell("c1", controller.address, tmp_path / "c1.sock", (ADDRESS_A, 0))
    with in_netns(NETNS_B):
        c2 = RunningCell("c2", controller.address, tmp_path / "c2.sock", (ADDRESS_B, MGMT_PORT_B))
    cells = {"c1": c1, "c2": c2}
    try:
        start_cells(controller, cells, {PROFILE: ("c1", ["c2"])})
        feed_flows(controller, cells, FLOWS, "c1", [])  # no mirror copies: c2 learns by replication only

        def converged():
            primary = records_of(c1)
            return len(primary) == FLOWS and primary == records_of(c2)

        wait_for(converged, controller, "the mirror to converge despite the loss")
        counters = c1.state()["replication"]["counters"]
        assert _dropped_packets() > 0
        assert counters["retries"] > 0
        assert counters["acks"] <= counters["batches_sent"]
        # a seed through the same lossy link completes too
        controller.send({"type": "seed", "profile_id": PROFILE, "target": "c2"}, c1.address)
        wait_for(lambda: controller.of_type("seeded"), controller, "seeded despite the loss")
        assert controller.of_type("seeded")[0]["flows"] == FLOWS
    finally:
        for running in cells.values():
            running.stop()
        controller.close()
