"""``prism demo``: the main scenario on real Open vSwitch, with a readable report.

Starts the network (ryu-manager with the Mirroring Director, a userspace OVS
switch in Mininet, a ``prism cell`` in every cell host), sends UDP flows and a
TCP transfer (iperf3) from the clients to a server through the cells, takes the
TCP flow's primary cell down mid-transfer, and reports what happened: flows,
groups, per-cell work, whether TCP survived and how long traffic stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

#: iperf3's data connection uses this client port, so the demo can find its flow.
TCP_CLIENT_PORT = 45000
IPERF_PORT = 5201
UDP_BASE_PORT = 9000
TCP_RATE = "20M"
INTERVAL_S = 0.1
#: Capture window after the failure in which the longest gap is the interruption.
GAP_WINDOW_S = 3.0
#: How long after the transfer's end iperf3 may take to report before it is stopped.
IPERF_GRACE_S = 5.0
#: Width of the throughput bins computed from the server-side capture.
THROUGHPUT_BIN_S = 0.1
#: With --fail-controller the primary cell fails this long after the master controller is killed.
CELL_FAIL_AFTER_CONTROLLER_S = 2.0


@dataclass
class DemoOptions:
    """What ``prism demo`` was asked to do.

    ``prediction``: the shipped model decides which flows get mirrors (at most
    ``replication_factor``). ``prism demo`` turns it on (``--no-prediction``
    turns it off); it is off here so that callers who set a replication
    factor get every flow mirrored, as the failover tests expect.
    """

    cells: int = 3
    clients: int = 2
    replication_factor: int = 1
    duration_s: float = 8.0
    fail_at_s: float = 3.0
    fail_primary: str = "link"
    udp_flows_per_client: int = 3
    workdir: Path = Path("out/demo")
    json_path: Optional[Path] = None
    prediction: bool = False
    controllers: int = 1
    fail_controller: bool = False


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``prism demo``."""
    parser.add_argument("--cells", type=int, default=3, help="cell hosts (default 3)")
    parser.add_argument("--clients", type=int, default=2, help="client hosts (default 2)")
    parser.add_argument("--rf", type=int, default=1, dest="replication_factor",
                        help="replication factor: mirror cells per flow, or with prediction the most "
                             "a flow gets (default 1)")
    parser.add_argument("--duration", type=float, default=8.0, dest="duration_s",
                        help="length of the TCP transfer in seconds (default 8)")
    parser.add_argument("--fail-at", type=float, default=3.0, dest="fail_at_s",
                        help="seconds into the transfer when the primary fails (default 3)")
    parser.add_argument("--fail-primary", choices=["link", "process", "none"], default="link",
                        help="how the TCP flow's primary cell fails: its link goes down, or its "
                             "process is killed with the link up (default: link)")
    parser.add_argument("--udp-flows", type=int, default=3, dest="udp_flows_per_client",
                        help="UDP flows per client (default 3)")
    parser.add_argument("--workdir", type=Path, default=Path("out/demo"),
                        help="where logs, captures and the report go (default out/demo)")
    parser.add_argument("--json", type=Path, dest="json_path", help="also write the report as JSON")
    parser.add_argument("--controllers", type=int, default=1,
                        help="ryu-manager instances sharing the switch through a private etcd (default 1)")
    parser.add_argument("--fail-controller", action="store_true",
                        help="kill the master controller at --fail-at, then fail the transfer's primary "
                             f"cell {CELL_FAIL_AFTER_CONTROLLER_S:g} s later (needs --controllers 2 or more)")
    parser.add_argument("--no-prediction", action="store_false", dest="prediction",
                        help="every flow gets --rf mirrors (default: the shipped model predicts which "
                             "flows are long enough to need mirrors)")


def run(args: argparse.Namespace) -> int:
    """Run the demo; exit code 0 when the TCP transfer survived (or no failure was asked)."""
    options = DemoOptions(**{k: v for k, v in vars(args).items() if k in DemoOptions.__dataclass_fields__})
    problem = _preflight(options)
    if problem:
        print(f"prism demo: {problem}", file=sys.stderr)
        return 2
    report = run_demo(options)
    print(format_report(report))
    if options.json_path:
        options.json_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = options.json_path.with_suffix(options.json_path.suffix + ".tmp")
        tmp.write_text(json.dumps(report, indent=2, sort_keys=True))
        os.replace(tmp, options.json_path)
        print(f"JSON report: {options.json_path}")
    figure = (options.json_path.with_suffix(".png") if options.json_path
              else options.workdir / "demo.png")
    try:
        write_figure(report, figure)
        print(f"figure: {figure}")
    except Exception as error:  # noqa: BLE001 - the figure is a bonus, the report stands
        print(f"prism demo: no figure ({error})", file=sys.stderr)
    survived = report["tcp_survived"]
    expected = options.replication_factor > 0 or options.fail_primary == "none"
    return 0 if survived or not expected else 1


def _preflight(options: DemoOptions) -> Optional[str]:
    if os.geteuid() != 0:
        return "needs root (Mininet creates network namespaces); run `sudo make demo`"
    if options.cells < 1 or options.clients < 1:
        return "--cells and --clients must be at least 1"
    if options.replication_factor > options.cells - 1:
        return f"--rf {options.replication_factor} needs at least {options.replication_factor + 1} cells"
    if options.fail_at_s >= options.duration_s:
        return "--fail-at must be before the end of --duration"
    if options.controllers < 1:
        return "--controllers must be at least 1"
    if options.fail_controller and options.fail_at_s < 1.0:
        return "--fail-controller starts flows 1 s before the kill: --fail-at must be at least 1"
    if options.fail_controller and options.controllers < 2:
        return "--fail-controller needs --controllers 2 or more (a standby to take over)"
    if options.fail_controller and options.fail_at_s + CELL_FAIL_AFTER_CONTROLLER_S + 1 >= options.duration_s:
        return (f"--fail-controller fails the cell {CELL_FAIL_AFTER_CONTROLLER_S:g} s after the controller: "
                f"--duration must be more than --fail-at + {CELL_FAIL_AFTER_CONTROLLER_S + 1:g}")
    if subprocess.run(["ovs-vsctl", "--timeout=3", "show"], capture_output=True).returncode != 0:
        return "Open vSwitch is not running: run `make setup` first"
    return None


def run_demo(options: DemoOptions) -> Dict:
    """Run the scenario and return the report as a JSON-able dict."""
    # Mininet only when the demo runs, not when `prism demo --help` does
    from mininet_topos.harness import PrismNetwork, stop_process

    workdir = options.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    for stale in workdir.glob("*"):
        if stale.is_file() or stale.is_socket():
            stale.unlink()
    from mininet_topos.prism_topo import prediction_config

    overrides = {}
    if options.prediction:  # --rf is then the most mirrors a flow gets (--rf 0: none, the control)
        overrides = {"prediction": prediction_config(), "max_replication_factor": options.replication_factor}
    clustered = options.controllers > 1
    with PrismNetwork(workdir, clients=options.clients, servers=1, cells=options.cells,
                      replication_factor=options.replication_factor, config_overrides=overrides,
                      controllers=options.controllers) as net:
        if clustered:
            from mininet_topos import demo_cluster

            demo_cluster.settle_master(net, net.config["etcd"].get("lease_s", 0.75))
        server = net.host(net.server_names[0])
        server_ip = server.IP()
        capture = workdir / "server.pcap"
        net.background.append(server.popen(
            ["tcpdump", "-i", f"{server.name}-eth0", "-n", "-s", "128", "-U", "-w", str(capture),
             f"tcp port {IPERF_PORT}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        net.background.append(server.popen(["iperf3", "-s", "-1", "-p", str(IPERF_PORT)],
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        sink_json = workdir / "udp-sink.json"
        net.background.append(server.popen(
            [sys.executable, "-m", "mininet_topos.traffic", "udp-sink", "--port", str(UDP_BASE_PORT),
             "--duration", str(options.duration_s + 4), "--json", str(sink_json)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        time.sleep(1.0)  # tcpdump, iperf3 and the sink are listening
        udp_sent = _start_udp_flows(net, server_ip, options)
        tcp_client = net.host(net.client_names[0])
        iperf = tcp_client.popen(
            ["iperf3", "-c", server_ip, "-p", str(IPERF_PORT), "--cport", str(TCP_CLIENT_PORT),
             "-t", str(options.duration_s), "-b", TCP_RATE, "-i", str(INTERVAL_S), "-J",
             "--connect-timeout", "3000"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        net.background.append(iperf)
        controller_failover = None
        if options.fail_controller:
            time.sleep(options.fail_at_s - demo_cluster.ESTABLISHED_LEAD_S)
            controller_failover = demo_cluster.ControllerFailover(net, server, workdir)
            controller_failover.start_established_flows()
            time.sleep(demo_cluster.ESTABLISHED_LEAD_S)
            killed_at = controller_failover.kill_master()
            time.sleep(max(0.0, killed_at + CELL_FAIL_AFTER_CONTROLLER_S - time.time()))
        else:
            time.sleep(options.fail_at_s)
        failed_cell, fail_time, last_states = None, None, {}
        tcp_primary = _find_tcp_primary(net)
        if options.fail_primary != "none" and tcp_primary:
            failed_cell = tcp_primary
            last_states[failed_cell] = _cell_summary(net, failed_cell)  # unreachable once killed
            entry_before = _tcp_entry(net, failed_cell)
            fail_time = time.time()
            if options.fail_primary == "link":
                net.set_cell_link(failed_cell, up=False)
            else:
                net.stop_cell(failed_cell, kill=True)
        try:
            # iperf3 waits long for a control connection that lost its state
            output, _ = iperf.communicate(timeout=options.duration_s + IPERF_GRACE_S)
        except subprocess.TimeoutExpired:
            iperf.kill()
            output, _ = iperf.communicate()
        time.sleep(1.0)  # let counters and the capture settle
        iperf_result = _parse_iperf(output, options.fail_at_s)
        per_cell = {name: _cell_summary(net, name) for name in net.cell_names}
        for name, summary in last_states.items():
            if "error" in per_cell[name]:
                per_cell[name] = {**summary, "killed": True}
        status = _controller_status(net)
        cells_view = _controller_cells(net)
        carried_over = _entry_carried_over(net, failed_cell, entry_before) if failed_cell else None
        groups_text = net.ofctl("dump-groups")
        for sender in udp_sent:
            sender.wait(timeout=10)
        for process in net.background:  # the sink writes its JSON when it is stopped
            stop_process(process)
        if controller_failover is not None:
            controller_failover_report = controller_failover.finish()
            # the cell fails CELL_FAIL_AFTER_CONTROLLER_S after the kill: the window stops short of it
            controller_failover_report["tcp_gap_ms_at_takeover"] = demo_cluster.tcp_gap_ms(
                capture, killed_at - 0.5, killed_at + CELL_FAIL_AFTER_CONTROLLER_S - 0.1, TCP_CLIENT_PORT)
    udp = json.loads(sink_json.read_text()) if sink_json.exists() else {"datagrams": 0, "flows": {}}
    gaps = interruption_from_capture(capture, fail_time, TCP_CLIENT_PORT)
    # The transfer's data connection is the flow whose primary failed; judge it
    # by what reached the server. iperf3's control connection is another flow
    # with its own profile (the policy may leave it unmirrored): reported apart.
    data = data_connection_outcome(capture, fail_time, TCP_CLIENT_PORT)
    if fail_time:
        survived = data["resets"] == 0 and data["packets_after_failure"] > 0
    else:
        survived = bool(iperf_result["ok"])
    failover = status.get("last_failover") or {}
    detection = _detection_ms(cells_view, failed_cell) if options.fail_primary == "process" else None
    report = {
        "options": {"cells": options.cells, "clients": options.clients,
                    "replication_factor": options.replication_factor,
                    "fail_at_s": options.fail_at_s,
                    "fail_primary": options.fail_primary, "duration_s": options.duration_s,
                    "prediction": options.prediction, "controllers": options.controllers,
                    "fail_controller": options.fail_controller},
        "flows_total": status.get("flows_total"),
        "flows_mirrored": status.get("flows_mirrored"),
        # one ALL group (and its FAST_FAILOVER group) per profile
        "groups": groups_text.count("type=all"),
        "switch_groups": _group_summary(groups_text),
        "controller": status,
        "per_cell": per_cell,
        "failed_cell": failed_cell,
        "tcp_survived": survived,
        "tcp": iperf_result,
        "tcp_data_connection": data,
        "iperf3_completed": bool(iperf_result["ok"]),
        "interruption_ms": gaps["interruption_ms"],
        "detection_ms": detection,
        "state_lost_flows": failover.get("state_lost_flows"),
        "groups_rewritten": failover.get("groups_rewritten"),
        "openflow_messages_failover": failover.get("ofmsgs"),
        "conntrack_entry_carried_over": carried_over,
        "replication_bytes": sum(cell.get("replication_bytes_sent", 0) for cell in per_cell.values()),
        "baseline_max_gap_ms": gaps["baseline_max_gap_ms"],
        "udp_datagrams_received": udp.get("datagrams", 0),
        "udp_flows_received": len(udp.get("flows", {})),
        "workdir": str(workdir),
    }
    if options.fail_controller:
        report["controller_failover"] = controller_failover_report
    return report


def _start_udp_flows(net, server_ip: str, options: DemoOptions) -> List[subprocess.Popen]:
    senders = []
    for client_index, name in enumerate(net.client_names):
        for flow in range(options.udp_flows_per_client):
            port = UDP_BASE_PORT + client_index * options.udp_flows_per_client + flow
            senders.append(net.host(name).popen(
                [sys.executable, "-m", "mininet_topos.traffic", "udp-send", "--dst", server_ip,
                 "--port", str(port), "--count", "40", "--rate", "20"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    net.background.extend(senders)
    return senders


def _flows_of(state: Dict) -> List[Dict]:
    return state.get("flows", [])


def _find_tcp_primary(net) -> Optional[str]:
    """The cell that forwards iperf3's data connection as primary, from the cells' own tables."""
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        for name in net.cell_names:
            for flow in _flows_of(net.cell_state(name)):
                if str(TCP_CLIENT_PORT) in flow.get("key", "") and flow.get("primary_packets", 0) > 0:
                    return name
        time.sleep(0.2)
    return None


def _tcp_entry(net, cell: str) -> Optional[Dict]:
    """The transfer's connection-tracking entry in a cell's table."""
    try:
        flows = _flows_of(net.cell_state(cell))
    except OSError:
        return None
    for flow in flows:
        if f":{TCP_CLIENT_PORT} " in flow.get("key", "") and flow.get("state") != "removed":
            return flow
    return None


def _entry_carried_over(net, failed_cell: str, before: Optional[Dict]) -> Optional[bool]:
    """Whether the cell now forwarding the transfer holds the old primary's entry (same token)."""
    if not before:
        return None
    for name in net.cell_names:
        if name == failed_cell:
            continue
        entry = _tcp_entry(net, name)
        if entry and entry.get("primary_packets", 0) > 0:
            return entry.get("token") == before.get("token") and bool(before.get("token"))
    return False


def _controller_cells(net) -> Dict:
    try:
        return {cell["id"]: cell for cell in net.controller.rest("/prism/v1/cells")["cells"]}
    except Exception:  # noqa: BLE001 - the report says what is missing
        return {}


def _detection_ms(cells: Dict, failed_cell: Optional[str]) -> Optional[float]:
    history = cells.get(failed_cell, {}).get("failure_history") or []
    if not history:
        return None
    return round(history[-1]["detection_s"] * 1000, 1)


def _cell_summary(net, name: str) -> Dict:
    try:
        state = net.cell_state(name)
    except OSError as error:
        return {"error": str(error)}
    counters = state.get("counters", {})
    replication = state.get("replication", {}).get("counters", {})
    return {
        "replication_bytes_sent": replication.get("replication_bytes_sent", 0),
        "primary_packets": counters.get("primary_packets", 0),
        "mirror_packets": counters.get("mirror_packets", 0),
        "forwarded": counters.get("forwarded", 0),
        "dropped": counters.get("dropped", 0),
        "flows_tracked": len(_flows_of(state)),
    }


def _controller_status(net) -> Dict:
    try:
        return net.controller.rest("/prism/v1/status")
    except Exception as error:  # noqa: BLE001 - the report says what went wrong
        return {"error": f"controller status unavailable: {error}"}


def _group_summary(dump: str) -> List[str]:
    return [line.strip() for line in dump.splitlines() if "group_id=" in line]


def _parse_iperf(output: bytes, fail_at_s: float) -> Dict:
    try:
        result = json.loads(output.decode(errors="replace"))
    except ValueError:
        return {"ok": False, "error": "iperf3 printed no JSON (stopped after the transfer's end)",
                "bytes": 0, "bytes_after_failure": 0, "retransmits": None}
    end = result.get("end", {})
    received = end.get("sum_received", {}).get("bytes", 0)
    intervals = [i["sum"] for i in result.get("intervals", [])]
    return {
        "ok": "error" not in result and received > 0,
        "error": result.get("error"),
        "bytes": received,
        # a second of margin: the failure came fail_at_s after iperf3 was started
        "bytes_after_failure": sum(i.get("bytes", 0) for i in intervals
                                   if i.get("start", 0) >= fail_at_s + 1.0),
        "retransmits": end.get("sum_sent", {}).get("retransmits"),
        "throughput_bps": [round(i.get("bits_per_second", 0)) for i in intervals],
        "interval_start_s": [round(i.get("start", 0), 3) for i in intervals],
    }


def interruption_from_capture(capture: Path, fail_time: Optional[float], client_port: int) -> Dict:
    """The longest gap between data packets reaching the server around the failure.

    Returns ``interruption_ms`` (longest gap within GAP_WINDOW_S after the
    failure, None without a failure) and ``baseline_max_gap_ms`` (the longest
    gap before it, what "normal" looks like).
    """
    import dpkt

    times: List[float] = []
    try:
        with open(capture, "rb") as handle:
            for timestamp, frame in dpkt.pcap.Reader(handle):
                eth = dpkt.ethernet.Ethernet(frame)
                tcp = getattr(eth.data, "data", None)
                if isinstance(tcp, dpkt.tcp.TCP) and tcp.sport == client_port and len(tcp.data):
                    times.append(float(timestamp))
    except (OSError, ValueError, dpkt.dpkt.NeedData):
        pass
    baseline = _max_gap([t for t in times if fail_time is None or t < fail_time])
    if fail_time is None or not times:
        return {"interruption_ms": None, "baseline_max_gap_ms": baseline}
    window = [t for t in times if fail_time - 0.5 <= t <= fail_time + GAP_WINDOW_S]
    after = [t for t in times if t >= fail_time]
    if not after:
        return {"interruption_ms": None, "baseline_max_gap_ms": baseline}
    return {"interruption_ms": _max_gap(window), "baseline_max_gap_ms": baseline}


def data_connection_outcome(capture: Path, fail_time: Optional[float], client_port: int) -> Dict:
    """Resets and data packets after the failure, for the connection from ``client_port``."""
    import dpkt

    resets = after = 0
    arrivals: List[tuple] = []  # (time, payload bytes) of data reaching the server
    try:
        with open(capture, "rb") as handle:
            for timestamp, frame in dpkt.pcap.Reader(handle):
                ip = dpkt.ethernet.Ethernet(frame).data
                tcp = getattr(ip, "data", None)
                if not isinstance(tcp, dpkt.tcp.TCP) or client_port not in (tcp.sport, tcp.dport):
                    continue
                if tcp.flags & dpkt.tcp.TH_RST:
                    resets += 1
                # the capture keeps 128 bytes a packet: the size comes from the IP header
                payload = ip.len - ip.hl * 4 - tcp.off * 4
                if tcp.sport == client_port and payload > 0:
                    arrivals.append((float(timestamp), payload))
                    if fail_time and timestamp >= fail_time + 1.0:
                        after += 1
    except (OSError, ValueError, dpkt.dpkt.NeedData):
        pass
    start = arrivals[0][0] if arrivals else 0.0
    bins: List[int] = []
    for timestamp, size in arrivals:
        index = int((timestamp - start) / THROUGHPUT_BIN_S)
        bins.extend([0] * (index + 1 - len(bins)))
        bins[index] += size
    return {
        "resets": resets,
        "packets_after_failure": after,
        # throughput at the server, from the capture (whatever iperf3 reported)
        "throughput_bps": [round(b * 8 / THROUGHPUT_BIN_S) for b in bins],
        "bin_s": THROUGHPUT_BIN_S,
        "failure_at_s": round(fail_time - start, 3) if fail_time and arrivals else None,
    }


def _max_gap(times: List[float]) -> Optional[float]:
    if len(times) < 2:
        return None
    return round(max(b - a for a, b in zip(times, times[1:])) * 1000, 1)


def format_report(report: Dict) -> str:
    """The one-screen text report."""
    lines = ["", "PRISM demo report", "=" * 17]
    options = report["options"]
    policy = ("predictive (shipped model)" if options.get("prediction")
              else f"replication factor {options['replication_factor']}")
    lines.append(f"network: {options['clients']} clients, 1 server, {options['cells']} cells, policy {policy}")
    lines.append(f"flows seen by the director: {report['flows_total']} "
                 f"({report['flows_mirrored']} mirrored)")
    lines.append(f"profile groups installed: {report['groups']}")
    for group in report["switch_groups"][:6]:
        lines.append(f"  {group[:110]}")
    lines.append("")
    lines.append(f"{'cell':<8}{'primary pkts':>14}{'mirror pkts':>13}{'forwarded':>11}{'flows':>7}")
    for name, cell in report["per_cell"].items():
        if "error" in cell:
            lines.append(f"{name:<8} unreachable: {cell['error']}")
            continue
        mark = "  <- failed" if name == report["failed_cell"] else ""
        if cell.get("killed"):
            mark += " (killed; counts from before)"
        lines.append(f"{name:<8}{cell['primary_packets']:>14}{cell['mirror_packets']:>13}"
                     f"{cell['forwarded']:>11}{cell['flows_tracked']:>7}{mark}")
    lines.append("")
    lines.append(f"UDP: {report['udp_datagrams_received']} datagrams in "
                 f"{report['udp_flows_received']} flows reached the server")
    tcp = report["tcp"]
    data = report["tcp_data_connection"]
    at_server = sum(data["throughput_bps"]) * data["bin_s"] / 8
    lines.append(f"TCP transfer (iperf3): {at_server / 1e6:.1f} MB reached the server, "
                 f"retransmits {tcp.get('retransmits')}, resets {data['resets']}"
                 + (f"; iperf3: {tcp['error']}" if tcp.get("error") else ""))
    if report["failed_cell"]:
        verdict = "SURVIVED" if report["tcp_survived"] else "BROKE"
        if report["tcp_survived"] and not report["iperf3_completed"]:
            verdict += (" (but iperf3 aborted: its control connection, a separate flow the "
                        "policy did not mirror, lost its state)")
        how = "link down" if options["fail_primary"] == "link" else "process killed"
        stopped = "never resumed" if report["interruption_ms"] is None else \
            f"stopped for {report['interruption_ms']} ms"
        lines.append(f"failover: {report['failed_cell']} {how} mid-transfer -> TCP {verdict}; "
                     f"traffic {stopped} (normal max gap {report['baseline_max_gap_ms']} ms)")
        if report["detection_ms"] is not None:
            lines.append(f"  detected dead after {report['detection_ms']} ms of missed heartbeats")
        lines.append(f"  groups rewritten: {report['groups_rewritten']} "
                     f"({report['openflow_messages_failover']} OpenFlow messages); "
                     f"flows whose state was lost: {report['state_lost_flows']}; "
                     f"conntrack entry carried over: {report['conntrack_entry_carried_over']}")
        lines.append(f"  replication traffic between cells: {report['replication_bytes']} bytes")
    else:
        lines.append("failover: no failure injected")
    takeover = report.get("controller_failover")
    if takeover:
        lines.append(f"controller failover: {takeover['killed']} (master) killed -> {takeover['new_master']} "
                     f"master after {takeover['role_ms']} ms, tables adopted after {takeover['takeover_ms']} ms "
                     f"({takeover['groups_adopted']} groups, {takeover['flows_adopted']} flow entries)")
        lines.append(f"  established flows across it: {takeover['established_flows']}, lost "
                     f"{takeover['flows_lost']} ({takeover['established_datagrams_lost']} datagrams); TCP gap "
                     f"{takeover['tcp_gap_ms_at_takeover']} ms; duplicate groups {takeover['duplicate_groups']}, "
                     f"orphaned {takeover['orphaned_groups']}; new flows set up by the new master: "
                     f"{takeover['new_flows_after']}")
    lines.append(f"logs and captures: {report['workdir']}")
    return "\n".join(lines)


def write_figure(report: Dict, path: Path) -> None:
    """A PNG: the transfer's throughput over time with the failure marked, and what
    each replication policy mirrors against what it protects (the shipped model's
    held-out evaluation, with this run's controller figures beside it).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mininet_topos.prism_topo import DEFAULT_MODEL_DIR

    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    data = report["tcp_data_connection"]
    series = data["throughput_bps"]
    left.plot([i * data["bin_s"] for i in range(len(series))], [bps / 1e6 for bps in series],
              color="tab:blue")
    if report["failed_cell"] and data["failure_at_s"] is not None:
        left.axvline(data["failure_at_s"], color="tab:red", linestyle="--",
                     label=f"{report['failed_cell']} fails ({report['options']['fail_primary']})")
        left.legend(loc="lower right")
    verdict = "survived" if report["tcp_survived"] else "broke"
    left.set(title=f"TCP data connection at the server ({verdict})", xlabel="time (s)",
             ylabel="throughput (Mbit/s)")
    left.set_ylim(bottom=0)
    manifest_path = Path(DEFAULT_MODEL_DIR) / "manifest.json"
    policies = json.loads(manifest_path.read_text()).get("policies_heldout", []) \
        if manifest_path.exists() else []
    for row in policies:
        budget = row.get("budget")
        label = row["policy"] + (f" @{budget:.0%}" if budget else "")
        right.scatter(row["packets_mirrored"], row["packets_protected"], s=30)
        right.annotate(label, (row["packets_mirrored"], row["packets_protected"]), fontsize=7,
                       xytext=(3, 3), textcoords="offset points")
    right.set(title="held-out real flows: mirroring cost vs protection",
              xlabel="mirror copies per packet", ylabel="at-risk packets whose state survives")
    total, mirrored = report.get("flows_total"), report.get("flows_mirrored")
    if total:
        right.text(0.98, 0.02, f"this run: {mirrored}/{total} flows mirrored",
                   transform=right.transAxes, ha="right", fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    figure.savefig(tmp, dpi=100)
    plt.close(figure)
    os.replace(tmp, path)
