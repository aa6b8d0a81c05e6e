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
#: BFD between the switch and the cells (the configuration's ``bfd`` section) unless ``--no-bfd``.
DEMO_BFD = {"interval": 10, "mult": 4, "switch_interval": 100}
#: The probe's source ports are searched from here for one whose primary is the failing cell.
PROBE_SPORT_BASE = 47000
PROBE_SPORT_SEARCH = 500


@dataclass
class DemoOptions:
    """What ``prism demo`` was asked to do.

    ``prediction``: the shipped configuration's policy (``examples/prism.yaml``,
    or ``policy_config``) decides which flows get mirrors (at most
    ``replication_factor``) and in which mode; without a ``prediction``
    section there, the shipped model's first-packet policy. ``prism demo``
    turns it on (``--no-prediction`` turns it off); it is off here so that
    callers who set a replication factor get every flow mirrored, as the
    failover tests expect.
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
    policy_config: Optional[Path] = None
    bfd: bool = True
    probe: bool = True


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
    parser.add_argument("--policy-config", type=Path, dest="policy_config",
                        help="the configuration whose replication policy (prediction, mirroring_mode, "
                             "management.state_interval_s) the demo runs (default: the shipped "
                             "examples/prism.yaml)")
    parser.add_argument("--no-bfd", action="store_false", dest="bfd",
                        help="cells do not speak BFD with the switch: a dead cell process is found by "
                             "missed heartbeats only (the baseline)")
    parser.add_argument("--no-probe", action="store_false", dest="probe",
                        help="no 1,000 packets/s UDP probe beside the transfer")
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
    from mininet_topos.prism_topo import prediction_config, shipped_policy_config

    overrides: Dict = {}
    management: Dict = {}
    if options.prediction:  # the shipped configuration's policy; --rf is the most mirrors a flow gets
        overrides = shipped_policy_config(options.policy_config) if options.policy_config \
            else shipped_policy_config()
        management = overrides.pop("management", {})
        overrides.setdefault("prediction", prediction_config())
        overrides["max_replication_factor"] = options.replication_factor
    from mininet_topos.probe import PROBE_PORT, PROBE_RATE_HZ

    probe_sent_json, probe_sink_json = workdir / "probe-sent.json", workdir / "probe-received.json"
    probe_sender = None
    network = PrismNetwork(workdir, clients=options.clients, servers=1, cells=options.cells,
                           replication_factor=options.replication_factor, config_overrides=overrides,
                           bfd=DEMO_BFD if options.bfd else None, controllers=options.controllers)
    network.config["management"].update(management)  # written when the network starts
    clustered = options.controllers > 1
    with network as net:
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
        if options.probe:
            net.background.append(server.popen(
                [sys.executable, "-m", "mininet_topos.probe", "sink", "--port", str(PROBE_PORT),
                 "--duration", str(options.duration_s + 6), "--json", str(probe_sink_json)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        time.sleep(1.0)  # tcpdump, iperf3 and the sinks are listening
        udp_sent = _start_udp_flows(net, server_ip, options)
        tcp_client = net.host(net.client_names[0])
        iperf = tcp_client.popen(
            ["iperf3", "-c", server_ip, "-p", str(IPERF_PORT), "--cport", str(TCP_CLIENT_PORT),
             "-t", str(options.duration_s), "-b", TCP_RATE, "-i", str(INTERVAL_S), "-J",
             "--connect-timeout", "3000"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        net.background.append(iperf)
        iperf_started = time.monotonic()
        failed_cell, fail_time, last_states = None, None, {}
        tcp_primary = _find_tcp_primary(net)
        probe_sport = None
        if options.probe and tcp_primary:
            # the probe's primary is the cell that will fail: a source port the ring places there
            probe_client = net.host(net.client_names[-1])
            probe_sport = probe_source_port(net.cell_names, tcp_primary, probe_client.IP(), server_ip)
            probe_sender = probe_client.popen(
                [sys.executable, "-m", "mininet_topos.probe", "send", "--dst", server_ip,
                 "--port", str(PROBE_PORT), "--sport", str(probe_sport), "--rate", str(PROBE_RATE_HZ),
                 "--duration", str(max(1.0, options.duration_s - (time.monotonic() - iperf_started))),
                 "--json", str(probe_sent_json)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            net.background.append(probe_sender)
        controller_failover = None
        if options.fail_controller:  # the master dies first, the transfer's primary cell after it
            lead_s = demo_cluster.ESTABLISHED_LEAD_S
            time.sleep(max(0.0, options.fail_at_s - lead_s - (time.monotonic() - iperf_started)))
            controller_failover = demo_cluster.ControllerFailover(net, server, workdir)
            controller_failover.start_established_flows()
            time.sleep(lead_s)  # the flows run a while before the kill (part of the scenario)
            controller_failover.wait_established()  # and the old master has set them up
            killed_at = controller_failover.kill_master()
            time.sleep(max(0.0, killed_at + CELL_FAIL_AFTER_CONTROLLER_S - time.time()))
        else:
            time.sleep(max(0.0, options.fail_at_s - (time.monotonic() - iperf_started)))
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
        senders = udp_sent + ([probe_sender] if probe_sender else [])
        senders += controller_failover.senders if controller_failover is not None else []
        for sender in senders:  # every datagram sent before the sinks stop
            try:
                sender.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        for process in net.background:  # the sinks write their JSON when they are stopped
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
    detection = _detection(cells_view, failed_cell, fail_time)
    probe = probe_report(probe_sent_json, probe_sink_json, fail_time) if options.probe else None
    if probe is not None:
        probe["source_port"] = probe_sport
        probe["primary"] = tcp_primary if probe_sport else None
    report = {
        "options": {"cells": options.cells, "clients": options.clients,
                    "replication_factor": options.replication_factor,
                    "fail_at_s": options.fail_at_s,
                    "fail_primary": options.fail_primary, "duration_s": options.duration_s,
                    "prediction": options.prediction, "bfd": DEMO_BFD if options.bfd else None,
                    "controllers": options.controllers, "fail_controller": options.fail_controller},
        "flows_total": status.get("flows_total"),
        "flows_mirrored": status.get("flows_mirrored"),
        "flows_promoted": status.get("promotions"),
        "flows_seeded": status.get("flows_seeded"),
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
        "detection_ms": detection["detection_ms"],
        "detected_as": detection["kind"],
        "detection_after_last_heartbeat_ms": detection["after_last_heartbeat_ms"],
        "probe": probe,
        # every failover's flows whose state was lost (the last failover's alone: in "controller")
        "state_lost_flows": status.get("state_lost_flows"),
        "groups_rewritten": failover.get("groups_rewritten"),
        "openflow_messages_failover": failover.get("ofmsgs"),
        "conntrack_entry_carried_over": carried_over,
        "replication_bytes": sum(cell.get("replication_bytes_sent", 0) for cell in per_cell.values()),
        # summed over cells: mirror copies absorbed against packets forwarded as primary
        "mirror_packets": sum(cell.get("mirror_packets", 0) for cell in per_cell.values()),
        "primary_packets": sum(cell.get("primary_packets", 0) for cell in per_cell.values()),
        "policy": _policy_name(net.config),
        "baseline_max_gap_ms": gaps["baseline_max_gap_ms"],
        "udp_datagrams_received": udp.get("datagrams", 0),
        "udp_flows_received": len(udp.get("flows", {})),
        "workdir": str(workdir),
    }
    if options.fail_controller:
        report["controller_failover"] = controller_failover_report
    return report


def _policy_name(config: Dict) -> str:
    """The replication policy the controller ran, as the report names it."""
    prediction = config.get("prediction")
    if prediction:
        policy = prediction.get("policy", "aging")
        model = "model" if prediction.get("model") else "age rule"
        mode = prediction.get("mode", "state") if policy == "aging" else "full"
        return f"{policy} ({model}, {mode} mode, at most {config.get('max_replication_factor')} mirrors)"
    return (f"fixed (replication factor {config.get('default_replication_factor')}, "
            f"{config.get('mirroring_mode', 'full')} mode)")


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


def _detection(cells: Dict, failed_cell: Optional[str], fail_time: Optional[float]) -> Dict:
    """When the controller declared the failed cell dead, counted from the failure itself.

    ``detection_ms``: the failure (the kill, the link going down) to the controller's verdict;
    ``kind``: what found it (``bfd``: the switch stopped holding the port LIVE; ``process``: missed
    heartbeats; ``link``); ``after_last_heartbeat_ms``: the detector's own figure (from the last
    heartbeat it heard, for a process failure found by heartbeats).
    """
    empty = {"detection_ms": None, "kind": None, "after_last_heartbeat_ms": None}
    if failed_cell is None or fail_time is None:
        return empty
    history = [r for r in cells.get(failed_cell, {}).get("failure_history") or []
               if r["detected_at"] >= fail_time - 0.5]
    if not history:
        return empty
    record = history[0]
    return {"detection_ms": round((record["detected_at"] - fail_time) * 1000, 1), "kind": record["kind"],
            "after_last_heartbeat_ms": round(record["detection_s"] * 1000, 1) if record["kind"] == "process"
            else None}  # fmt: skip


def probe_source_port(cell_names: List[str], cell: str, client_ip: str, server_ip: str) -> int:
    """A UDP source port whose flow to the probe port the ring places on ``cell`` as primary."""
    from mininet_topos.probe import PROBE_PORT
    from prism.flows.identity import FlowKey
    from prism.placement.ring import HashRing

    ring = HashRing(cell_names)
    for sport in range(PROBE_SPORT_BASE, PROBE_SPORT_BASE + PROBE_SPORT_SEARCH):
        key, _ = FlowKey.between(17, client_ip, sport, server_ip, PROBE_PORT)
        if ring.primary(key.flow_id) == cell:
            return sport
    raise RuntimeError(f"no probe source port in {PROBE_SPORT_SEARCH} tries puts the probe on {cell}")


def probe_report(sent_path: Path, received_path: Path, fail_time: Optional[float]) -> Optional[Dict]:
    """The probe's figures (``mininet_topos.probe.analyse``), or None if it did not run."""
    from mininet_topos.probe import analyse

    try:
        sent = json.loads(sent_path.read_text())
        received = json.loads(received_path.read_text())
    except (OSError, ValueError):
        return None
    result = analyse(received.get("arrivals", []), sent.get("sent"), fail_time, GAP_WINDOW_S, sent.get("rate_hz"),
                     sent.get("first_send"))
    result["sender_longest_pause_ms"] = sent.get("sender_longest_pause_ms")
    return result


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
    """Resets and data packets after the failure, for the connection from ``client_port``.

    A reset after both sides' FIN (the transfer was complete and closed in
    order; e.g. a stray ACK reaching a socket already closed) is counted apart,
    as ``resets_after_close``: it does not break the connection.
    """
    import dpkt

    resets = after = resets_after_close = 0
    fins = set()  # the sides (source ports) that sent a FIN
    arrivals: List[tuple] = []  # (time, payload bytes) of data reaching the server
    try:
        with open(capture, "rb") as handle:
            for timestamp, frame in dpkt.pcap.Reader(handle):
                ip = dpkt.ethernet.Ethernet(frame).data
                tcp = getattr(ip, "data", None)
                if not isinstance(tcp, dpkt.tcp.TCP) or client_port not in (tcp.sport, tcp.dport):
                    continue
                if tcp.flags & dpkt.tcp.TH_RST:
                    if len(fins) == 2:
                        resets_after_close += 1
                    else:
                        resets += 1
                if tcp.flags & dpkt.tcp.TH_FIN:
                    fins.add(tcp.sport)
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
        "resets_after_close": resets_after_close,
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
    policy = report.get("policy") or ("predictive (shipped model)" if options.get("prediction")
                                      else f"replication factor {options['replication_factor']}")
    lines.append(f"network: {options['clients']} clients, 1 server, {options['cells']} cells, policy {policy}")
    lines.append(f"flows seen by the director: {report['flows_total']} "
                 f"({report['flows_mirrored']} mirrored at birth, {report.get('flows_promoted') or 0} "
                 f"promoted as they aged, {report.get('flows_seeded') or 0} of those seeded)")
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
    if report.get("primary_packets"):
        share = report["mirror_packets"] / report["primary_packets"]
        lines.append(f"{'all':<8}{report['primary_packets']:>14}{report['mirror_packets']:>13}"
                     f"   mirror copies per primary packet: {share:.4f}")
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
            how_found = {"bfd": "BFD: the switch stopped holding its port LIVE",
                         "process": "missed heartbeats", "link": "port status"}.get(report["detected_as"], "")
            lines.append(f"  controller declared it dead {report['detection_ms']} ms after the failure ({how_found})")
        probe = report.get("probe")
        if probe and probe.get("max_gap_ms") is not None:
            lines.append(f"  probe ({probe['rate_hz']:g} packets/s, primary {probe.get('primary')}): longest gap "
                         f"{probe['max_gap_ms']} ms (normal {probe['baseline_max_gap_ms']} ms), lost "
                         f"{probe['lost_after_failure']} around the failure, {probe['lost']} in all")
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
