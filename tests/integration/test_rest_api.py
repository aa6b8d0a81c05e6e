"""The REST API and metrics through a real ryu-manager on loopback (no switch needed)."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("ryu")
prometheus_parser = pytest.importorskip("prometheus_client.parser")

from prism.mgmt import protocol as mgmt  # noqa: E402
from prism.mgmt.auth import MgmtAuth, new_key_text  # noqa: E402
from tests.support import poll  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
APPS = ("ryu_apps/mirroring_director.py", "ryu_apps/rest_api.py")
TOKEN = "t0ken-for-tests"
#: This run's management key (written to the test's temporary directory only).
KEY_TEXT = new_key_text()
#: How long to wait for a heartbeat sent over UDP to show in the API.
HEARTBEAT_WAIT_S = 5.0
#: The controller freeze (SIGSTOP), and how long after it no cell may be declared dead.
FREEZE_S = 2.0
AFTER_FREEZE_S = 1.0


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def prism_config(tmp_path):
    # No cell beats here: a long dead_after keeps cell1 and cell2 (management addresses, never
    # heard) alive for these tests; test_a_cell_never_heard_from_is_declared_dead uses the default.
    return write_config(tmp_path, dead_after=3600)


def write_config(tmp_path, dead_after=None):
    listen, cell1, cell2 = free_udp_port(), free_udp_port(), free_udp_port()
    path = tmp_path / "prism.yaml"
    timing = f", dead_after: {dead_after}" if dead_after else ""
    path.write_text(textwrap.dedent(f"""\
        default_replication_factor: 1
        management: {{listen: "127.0.0.1:{listen}", key_file: mgmt.key, generation_file: generation{timing}}}
        switches:
          - dpid: 1
            cells:
              - {{id: cell1, port: 1, mgmt: "127.0.0.1:{cell1}"}}
              - {{id: cell2, port: 2, mgmt: "127.0.0.1:{cell2}"}}
              - {{id: cell3, port: 3}}
            edge_ports: [4, 5]
        """))
    (tmp_path / "mgmt.key").write_text(KEY_TEXT)
    return path, listen


def call(manager, path, method="GET", body=None, token=None):
    """(status, parsed JSON or text, headers) of one request."""
    request = urllib.request.Request(manager.wsapi_url(path), method=method, data=body)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            status, raw, headers = response.status, response.read(), response.headers
    except urllib.error.HTTPError as error:
        status, raw, headers = error.code, error.read(), error.headers
    text = raw.decode("utf-8")
    if headers.get("Content-Type", "").startswith("application/json"):
        return status, json.loads(text), headers
    return status, text, headers


def start(ryu_manager, prism_config, monkeypatch, token):
    path, _listen = prism_config
    monkeypatch.delenv("PRISM_REST_TOKEN", raising=False)
    env = {"PRISM_CONFIG": str(path), "PYTHONPATH": str(REPO)}
    if token:
        env["PRISM_REST_TOKEN"] = token
    return ryu_manager(*(str(REPO / app) for app in APPS), env=env, wait_wsapi=True)


def test_read_endpoints_errors_and_metrics(ryu_manager, prism_config, monkeypatch):
    manager = start(ryu_manager, prism_config, monkeypatch, TOKEN)
    status, body, _ = call(manager, "/prism/v1/status")
    assert status == 200
    assert body["flows_total"] == 0 and body["cells_total"] == 3 and body["last_failover"] is None
    assert "0000000000000001" in body["switches"]

    status, body, _ = call(manager, "/prism/v1/cells")
    assert status == 200 and [c["id"] for c in body["cells"]] == ["cell1", "cell2", "cell3"]
    cell = body["cells"][0]
    assert cell["state"] == "alive" and cell["link_up"] and cell["failure_history"] == []
    assert 0 < cell["failure_probability"] < 1 and cell["flows_primary"] == 0

    assert call(manager, "/prism/v1/profiles")[:2] == (200, {"profiles": []})
    assert call(manager, "/prism/v1/flows?cell=cell2")[:2] == (200, {"flows": [], "total": 0, "truncated": False})

    for path, code in (
        ("/prism/v1/cells/nope", 404),
        ("/prism/v1/flows?cell=nope", 404),
        ("/prism/v1/nothing", 404),
        ("/prism/v1/cells?horizon_s=-1", 400),
        ("/prism/v1/flows?limit=many", 400),
        ("/prism/v1/cells/cell1/drain", 405),
    ):
        status, body, _ = call(manager, path)
        assert status == code and isinstance(body, dict) and body["error"], path
        assert "Traceback" not in body["error"]

    status, text, headers = call(manager, "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    families = {f.name: f for f in prometheus_parser.text_string_to_metric_families(text)}
    assert {"prism_flows", "prism_cell_alive", "prism_cell_failure_probability", "prism_cell_flows",
            "prism_failovers", "prism_groups_rewritten", "prism_mgmt_messages"} <= set(families)  # fmt: skip
    alive = {s.labels["cell"]: s.value for s in families["prism_cell_alive"].samples}
    assert alive == {"cell1": 1.0, "cell2": 1.0, "cell3": 1.0}


def test_changes_need_the_token_and_well_formed_bodies(ryu_manager, prism_config, monkeypatch):
    manager = start(ryu_manager, prism_config, monkeypatch, TOKEN)
    drain = "/prism/v1/cells/cell2/drain"
    status, body, headers = call(manager, drain, "POST")
    assert status == 401 and "Bearer" in body["error"] and headers["WWW-Authenticate"].startswith("Bearer")
    assert call(manager, drain, "POST", token="wrong")[0] == 401
    status, body, _ = call(manager, drain, "POST", body=b"{not json", token=TOKEN)
    assert status == 400 and "malformed JSON" in body["error"]
    assert call(manager, drain, "POST", body=b"[1, 2]", token=TOKEN)[0] == 400
    assert call(manager, drain, "POST", body=b'{"colour": "blue"}', token=TOKEN)[0] == 400
    assert call(manager, "/prism/v1/cells/nope/drain", "POST", token=TOKEN)[0] == 404

    status, body, _ = call(manager, drain, "POST", body=b'{"reason": "maintenance"}', token=TOKEN)
    assert status == 202 and body["action"] == "drain" and body["cell"]["draining"] is True
    status, body, _ = call(manager, "/prism/v1/cells/cell2")
    assert body["draining"] is True and body["usable"] is False
    status, body, _ = call(manager, "/prism/v1/cells/cell2/restore", "POST", token=TOKEN)
    assert status == 200 and body["cell"]["draining"] is False and body["cell"]["usable"] is True
    assert call(manager, "/prism/v1/status")[1]["drains"] == 1


def test_without_a_token_changes_are_refused_with_how_to_set_one(ryu_manager, prism_config, monkeypatch):
    manager = start(ryu_manager, prism_config, monkeypatch, token=None)
    status, body, _ = call(manager, "/prism/v1/cells/cell1/drain", "POST", token="anything")
    assert status == 403 and "PRISM_REST_TOKEN" in body["error"]
    assert call(manager, "/prism/v1/cells/cell1")[1]["draining"] is False


def test_heartbeats_over_the_management_channel_show_in_the_cells_view(ryu_manager, prism_config, monkeypatch):
    manager = start(ryu_manager, prism_config, monkeypatch, TOKEN)
    _path, listen = prism_config
    cell1, forger = MgmtAuth(KEY_TEXT.encode(), "cell1"), MgmtAuth(new_key_text().encode(), "cell1")
    sent = []  # the heartbeats' sequence numbers, each sent once forged and once sealed with the key
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as cell:

        def beat_until_heard():
            sent.append(len(sent) + 1)
            heartbeat = mgmt.encode({"type": "heartbeat", "cell": "cell1", "seq": sent[-1], "flows": 7})
            cell.sendto(forger.seal(heartbeat, time.time()), ("127.0.0.1", listen))
            cell.sendto(cell1.seal(heartbeat, time.time()), ("127.0.0.1", listen))
            body = call(manager, "/prism/v1/cells/cell1")[1]
            return body if body["heartbeat_seen"] else None

        body = poll(beat_until_heard, timeout=HEARTBEAT_WAIT_S, interval=0.1)
    assert body, f"no heartbeat heard in {HEARTBEAT_WAIT_S} s: {call(manager, '/prism/v1/cells/cell1')[1]}"
    assert body["last_report"]["flows"] == 7, body
    refused = call(manager, "/prism/v1/status")[1]["mgmt_auth"]["refused_bad_tag"]
    assert refused >= len(sent)
    metrics = call(manager, "/metrics")[1]
    assert re.search(r'prism_mgmt_refused_total\{reason="bad_tag"\} [1-9]', metrics), metrics


def test_the_rest_api_binds_loopback_unless_told_otherwise():
    script = (
        "from ryu import cfg; import ryu.app.wsgi; import ryu_apps.rest_api; "
        "cfg.CONF([], project='ryu'); print(cfg.CONF.wsapi_host)"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "127.0.0.1"


def test_a_cell_never_heard_from_is_declared_dead(ryu_manager, tmp_path, monkeypatch):
    """A (re)started controller starts the clock of every cell that should beat: silence kills it."""
    config = write_config(tmp_path)  # dead_after: the default 0.35 s
    manager = start(ryu_manager, config, monkeypatch, TOKEN)
    poll(lambda: call(manager, "/prism/v1/cells/cell1")[1]["state"] == "dead", timeout=HEARTBEAT_WAIT_S, interval=0.1)
    body = call(manager, "/prism/v1/cells/cell1")[1]
    assert body["state"] == "dead" and not body["heartbeat_seen"], body
    [record] = body["failure_history"]
    assert record["kind"] == "process" and "since the controller started listening" in record["reason"]
    assert record["counted"] is False and body["failures"] == 0  # never seen working: no risk penalty
    cell3 = call(manager, "/prism/v1/cells/cell3")[1]  # no management address: judged by its link
    assert cell3["state"] == "alive" and cell3["failure_history"] == []


def test_a_two_second_controller_freeze_kills_no_beating_cell(ryu_manager, tmp_path, monkeypatch):
    """The whole ryu-manager process is stopped (SIGSTOP) for 2 s while both cells keep beating."""
    import os
    import signal
    import threading

    path, listen = write_config(tmp_path)  # dead_after: the default 0.35 s
    addresses = {}
    for line in path.read_text().splitlines():
        for cell in ("cell1", "cell2"):
            if f"id: {cell}," in line:
                addresses[cell] = int(line.rsplit(":", 1)[1].strip(' "}'))
    manager = start(ryu_manager, (path, listen), monkeypatch, TOKEN)
    done = threading.Event()

    def beat():
        sockets = {}
        for cell, port in addresses.items():
            sockets[cell] = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sockets[cell].bind(("127.0.0.1", port))
        sealers = {cell: MgmtAuth(KEY_TEXT.encode(), cell) for cell in sockets}  # issue 10: only sealed ones count
        seq = 0
        try:
            while not done.is_set():
                seq += 1
                for cell, sock in sockets.items():
                    heartbeat = mgmt.encode({"type": "heartbeat", "cell": cell, "seq": seq})
                    sock.sendto(sealers[cell].seal(heartbeat, time.time()), ("127.0.0.1", listen))
                done.wait(0.1)
        finally:
            for sock in sockets.values():
                sock.close()

    beater = threading.Thread(target=beat, daemon=True)
    beater.start()
    try:
        assert poll(lambda: all(c["heartbeat_seen"] for c in call(manager, "/prism/v1/cells")[1]["cells"][:2]),
                    timeout=HEARTBEAT_WAIT_S, interval=0.1), ("heartbeats not heard", manager.log_tail())
        os.kill(manager.pid, signal.SIGSTOP)
        try:
            time.sleep(FREEZE_S)  # the scenario: the controller is frozen this long
        finally:
            os.kill(manager.pid, signal.SIGCONT)
        time.sleep(AFTER_FREEZE_S)  # an absence is checked over a while: no cell may be judged dead after the thaw
        cells = call(manager, "/prism/v1/cells")[1]["cells"]
    finally:
        done.set()
        beater.join()
    for cell in cells[:2]:
        assert cell["state"] == "alive" and cell["failures"] == 0, cell
    status, text, _ = call(manager, "/metrics")
    stalls = [line for line in text.splitlines() if line.startswith("prism_controller_stalls_total")]
    assert stalls and float(stalls[0].split()[-1]) >= 1, text  # the freeze was seen, and survived
