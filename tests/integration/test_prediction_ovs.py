"""The predictive policy and the telemetry on real Open vSwitch: who gets mirrors, and what is recorded.

One network runs the director with the shipped first-packet model
(``prediction.policy: first_packet``, models/first_packet, budget 0.5), the REST
API and the stats collector. The shipped model leans on its history features
(what recent flows of the same service, source and destination did), and a
cold controller has none: it then predicts a DNS query at 4.7-6.9 s and
iperf3's data connection at 4.3-5.1 s, against the training threshold of
4.2 s. So the test first lets the controller see one round of the traffic end
(five DNS exchanges and one iperf3 transfer), as a network's own telemetry
would, and then checks a second round: the DNS exchanges get no mirror, the
transfer's data connection does. After the run, the telemetry files hold
every ended flow with its final counters, and the statistics tables.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

import pytest

from mininet_topos.harness import STATS_COLLECTOR_APP, PrismNetwork
from mininet_topos.prism_topo import prediction_config
from prism.openflow.changes import MIRROR_MAC
from prism.telemetry.files import read_flows, read_stats
from tests.support import poll, wait_listening

IDLE_TIMEOUT_S = 2
DNS_PORT = 53
IPERF_PORT = 5201
WARM_UP_DATA_PORT, DATA_PORT = 45001, 45002
TRANSFER_S = 3
TRANSFER_RATE = "20M"
#: Copies the long transfer's mirror must have received (a 3 s transfer at 20 Mbit/s sends thousands).
MIRROR_COPIES_MIN = 100
QUERY = b"\x12\x34\x01\x00\x00\x01" + b"\x00" * 24  # 30 bytes, a DNS-sized query

DNS_RESPONDER = f"""
import socket
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("0.0.0.0", {DNS_PORT}))
while True:
    data, peer = sock.recvfrom(2048)
    sock.sendto(data[:2] + b"answer", peer)
"""
DNS_CLIENT = """
import socket, sys
server, count = sys.argv[1], int(sys.argv[2])
answered = 0
for _ in range(count):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:  # a new source port: a new flow
        sock.settimeout(2.0)
        sock.sendto(QUERY, (server, 53))
        try:
            sock.recvfrom(2048)
            answered += 1
        except OSError:
            pass
print(answered)
""".replace("QUERY", repr(QUERY))


def dns_exchanges(net: PrismNetwork, client: str, count: int) -> int:
    script = net.workdir / "dns_client.py"
    script.write_text(DNS_CLIENT)
    output = net.host(client).cmd(f"{sys.executable} {script} {net.host('sv1').IP()} {count}")
    return int(output.strip().splitlines()[-1])


def start_transfer(net: PrismNetwork, client: str, data_port: int) -> subprocess.Popen:
    server = net.host("sv1")
    iperf_server = server.popen(["iperf3", "-s", "-1", "-p", str(IPERF_PORT)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    net.background.append(iperf_server)
    wait_listening(server, IPERF_PORT, iperf_server)
    iperf = net.host(client).popen(
        ["iperf3", "-c", server.IP(), "-p", str(IPERF_PORT), "--cport", str(data_port), "-t", str(TRANSFER_S),
         "-b", TRANSFER_RATE, "-J", "--connect-timeout", "3000"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    net.background.append(iperf)
    return iperf


def finish_transfer(iperf: subprocess.Popen) -> int:
    output, _ = iperf.communicate(timeout=TRANSFER_S + 20)
    result = json.loads(output.decode(errors="replace"))
    assert "error" not in result, result.get("error")
    return result["end"]["sum_received"]["bytes"]


def flows_now(net: PrismNetwork) -> List[Dict]:
    return net.controller.rest("/prism/v1/flows")["flows"]


def flows_on_port(net: PrismNetwork, port: int) -> List[Dict]:
    return [f for f in flows_now(net) if f"{port}" in f["key"].replace("<->", " ").replace(":", " ").split()]


def status(net: PrismNetwork) -> Dict:
    return net.controller.rest("/prism/v1/status")


def group_of(net: PrismNetwork, group_id: int) -> Optional[str]:
    return next((line for line in net.ofctl("dump-groups").splitlines() if f"group_id={group_id}," in line), None)


@pytest.fixture(scope="module")
def run(ovs, tmp_path_factory):
    """Both rounds of traffic; the network is stopped (telemetry flushed) before the checks read files."""
    workdir = tmp_path_factory.mktemp("prediction-ovs")
    telemetry = workdir / "telemetry"
    overrides = {
        "prediction": prediction_config(budget=0.5),
        # parts stay open for the whole run: the files checked below are written at shutdown (SIGTERM)
        "telemetry": {"dir": str(telemetry), "rotate_records": 100000, "rotate_s": 3600, "poll_interval": 1},
    }
    seen: Dict[str, object] = {"workdir": workdir, "telemetry": telemetry}
    with PrismNetwork(workdir, clients=2, servers=1, cells=3, idle_timeout=IDLE_TIMEOUT_S,
                      config_overrides=overrides, extra_apps=(STATS_COLLECTOR_APP,)) as net:
        responder = net.host("sv1").popen([sys.executable, "-c", DNS_RESPONDER],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        net.background.append(responder)
        wait_listening(net.host("sv1"), DNS_PORT, responder, proto="udp")
        seen["model"] = net.controller.rest("/prism/v1/model")
        # Round 1: what the controller learns from (cold model).
        assert dns_exchanges(net, "c2", 5) == 5
        seen["warm_up_bytes"] = finish_transfer(start_transfer(net, "c1", WARM_UP_DATA_PORT))
        ended = poll(lambda: status(net)["flows_ended"] >= 7 and status(net)["flows_active"] == 0)
        assert ended, f"round 1 did not end: {status(net)}\n{net.controller.log_tail()}"
        seen["after_warm_up"] = net.controller.rest("/prism/v1/model")
        # Round 2: the checked one.
        assert dns_exchanges(net, "c2", 3) == 3
        seen["dns_flows"] = flows_on_port(net, DNS_PORT)
        iperf = start_transfer(net, "c1", DATA_PORT)
        data = poll(lambda: [f for f in flows_on_port(net, DATA_PORT)], timeout=5.0)
        seen["data_flows"] = data
        if data:
            seen["data_group"] = group_of(net, data[0]["group_id"])
            # the mirror's counter grows while the transfer runs: read it once it shows copies (or the transfer is over)
            mirrors = data[0]["mirror_cells"][:1]
            poll(lambda: all(net.cell_state(m)["counters"]["mirror_packets"] > MIRROR_COPIES_MIN for m in mirrors),
                 timeout=TRANSFER_S)  # fmt: skip
            seen["cells"] = {name: net.cell_state(name)["counters"] for name in net.cell_names}
        seen["bytes"] = finish_transfer(iperf)
        seen["ended"] = poll(lambda: status(net)["flows_active"] == 0)
        seen["status"] = status(net)
        seen["log"] = net.controller.log_tail(80)
    return seen


def test_the_controller_serves_the_shipped_model(run):
    model = run["model"]
    # the first-packet policy's shipped model (models/default is the aging policy's)
    assert model["directory"].endswith("models/first_packet") and model["model_digest"].startswith("sha256:")
    assert model["policy"]["budget"] == 0.5 and not model["policy"]["fitted_on_network"]
    assert run["after_warm_up"]["policy"]["ended_flows_in_window"] >= 7, "flow-removed reached the policy"


def test_dns_exchanges_get_no_mirrors(run):
    flows = run["dns_flows"]
    assert len(flows) == 3, run["log"]
    assert all(flow["mirror_cells"] == [] for flow in flows), flows


def test_the_long_transfer_gets_a_mirror_that_receives_marked_copies(run):
    assert run["data_flows"], f"the data connection was never seen\n{run['log']}"
    flow = run["data_flows"][0]
    assert len(flow["mirror_cells"]) >= 1, flow
    group = run["data_group"]
    assert group is not None and "type=all" in group and MIRROR_MAC in group, group
    mirror = flow["mirror_cells"][0]
    assert run["cells"][mirror]["mirror_packets"] > MIRROR_COPIES_MIN, run["cells"]
    assert run["bytes"] > 1_000_000


def test_telemetry_holds_every_ended_flow_with_its_final_counters(run):
    assert run["ended"], run["status"]
    flows = read_flows(run["telemetry"])
    assert len(flows) == run["status"]["flows_ended"], flows
    assert set(flows["source"]) == {"telemetry"}
    # A 5-tuple may end and start again (iperf3's control connection idles out during the transfer and
    # comes back for the results), so a flow is its flow_id and its start.
    assert not flows.duplicated(["flow_id", "ts_start"]).any()
    dns = flows[flows["dport"] == DNS_PORT]
    assert len(dns) == 8 and (dns["proto"] == 17).all(), dns
    assert (dns["packets"] >= 2).all() and (dns["bytes"] >= 2 * 60).all(), "at least the query and the answer"
    assert (dns["duration_s"] < 1.5).all()
    for port, sent in ((WARM_UP_DATA_PORT, run["warm_up_bytes"]), (DATA_PORT, run["bytes"])):
        (transfer,) = flows[flows["sport"] == port].itertuples()
        assert transfer.dport == IPERF_PORT and transfer.first_tcp_flags & 0x02 and not transfer.truncated
        assert transfer.bytes > sent, "frames both ways, headers included"
        assert transfer.packets > 500 and TRANSFER_S - 1.5 < transfer.duration_s < TRANSFER_S + 2.5
    tcp = flows[flows["proto"] == 6]
    picked_up = (tcp["first_tcp_flags"] & 0x02) == 0
    assert (tcp["truncated"] == picked_up).all(), "a TCP flow first seen without SYN is marked truncated"


def test_statistics_tables_are_written_without_bogus_counters(run):
    ports = read_stats(run["telemetry"], "port_stats")
    assert len(ports) > 0 and (ports["dp_id"] == 1).all()
    # OVS answers all ones (unsupported) for a port's counters now and then, e.g.
    # for a port being removed at teardown: those rows hold NA, the rest numbers.
    assert ports["rx_packets"].notna().mean() > 0.9, ports["rx_packets"].isna().sum()
    assert (ports["rx_packets"].dropna() < 2**63).all(), "no all-ones counter survives as a number"
    groups = read_stats(run["telemetry"], "group_stats")
    assert len(groups) > 0 and groups["packets"].notna().any()
    flow_stats = read_stats(run["telemetry"], "flow_stats")
    fsc = flow_stats[flow_stats["table_id"] == 1]
    assert len(fsc) > 0 and (fsc["idle_timeout"] == IDLE_TIMEOUT_S).any()
    part_names = [p.name for p in Path(run["telemetry"]).rglob("*")]
    assert not [name for name in part_names if name.startswith(".")], "no temporary file left behind"
