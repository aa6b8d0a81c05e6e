"""Model reloads through the REST API of a real ryu-manager on loopback (no switch needed)."""

from __future__ import annotations

import json
import shutil
import textwrap
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("ryu")

REPO = Path(__file__).resolve().parents[2]
APPS = ("ryu_apps/mirroring_director.py", "ryu_apps/rest_api.py", "ryu_apps/stats_collector.py")
TOKEN = "t0ken-for-model-tests"
CONFIG = textwrap.dedent("""\
    switches:
      - dpid: 1
        cells: [{id: cell1, port: 1}, {id: cell2, port: 2}, {id: cell3, port: 3}]
        edge_ports: [4, 5]
    """)


def call(manager, path, method="GET", body=None, token=None):
    """(status, decoded JSON) of one request."""
    request = urllib.request.Request(manager.wsapi_url(path), method=method, data=body)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read().decode())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read().decode())


def start(ryu_manager, tmp_path, monkeypatch, extra: str = ""):
    path = tmp_path / "prism.yaml"
    path.write_text(CONFIG + extra)
    monkeypatch.delenv("PRISM_REST_TOKEN", raising=False)
    env = {"PRISM_CONFIG": str(path), "PYTHONPATH": str(REPO), "PRISM_REST_TOKEN": TOKEN}
    return ryu_manager(*(str(REPO / app) for app in APPS), env=env, wait_wsapi=True)


def test_reload_serves_a_new_model_and_a_broken_one_leaves_the_old_in_service(ryu_manager, tmp_path, monkeypatch):
    model = tmp_path / "model"
    shutil.copytree(REPO / "models" / "first_packet", model)  # the first-packet policy reloads its model
    manager = start(ryu_manager, tmp_path, monkeypatch,
                    f"prediction: {{policy: first_packet, model: {model}, budget: 0.3}}\n"
                    f"telemetry: {{dir: {tmp_path / 't'}}}\n")
    status, body = call(manager, "/prism/v1/model")
    assert status == 200 and body["directory"] == str(model) and body["policy"]["budget"] == 0.3
    digest = body["model_digest"]

    assert call(manager, "/prism/v1/model/reload", "POST")[0] == 401
    assert call(manager, "/prism/v1/model/reload", "POST", body=b'{"colour": 1}', token=TOKEN)[0] == 400
    status, body = call(manager, "/prism/v1/model/reload", "POST", body=b'{"reason": "retrained"}', token=TOKEN)
    assert status == 200, body
    assert body["model"]["reloads"] == 1 and body["previous"]["model_digest"] == digest
    assert body["model"]["policy"]["generation"] == 1

    skops = model / "model.skops"
    good = skops.read_bytes()
    skops.write_bytes(good[: len(good) // 3])
    status, body = call(manager, "/prism/v1/model/reload", "POST", token=TOKEN)
    assert status == 422, body
    assert str(model) in body["error"] and "previous model stays in service" in body["error"]
    assert "Traceback" not in body["error"]
    assert body["model"]["model_digest"] == digest and body["model"]["failed_reloads"] == 1
    status, body = call(manager, "/prism/v1/model")
    assert body["model_digest"] == digest and body["policy"]["generation"] == 1 and body["last_error"]
    assert call(manager, "/prism/v1/status")[0] == 200, "the controller carried on"

    skops.write_bytes(good)
    status, body = call(manager, "/prism/v1/model/reload", "POST", token=TOKEN)
    assert status == 200 and body["model"]["reloads"] == 2 and body["model"]["last_error"] is None
    assert manager.alive()


def test_without_a_model_there_is_nothing_to_reload(ryu_manager, tmp_path, monkeypatch):
    manager = start(ryu_manager, tmp_path, monkeypatch)
    status, body = call(manager, "/prism/v1/model")
    assert status == 404 and "prediction" in body["error"]
    status, body = call(manager, "/prism/v1/model/reload", "POST", token=TOKEN)
    assert status == 409 and "prediction" in body["error"]
    assert call(manager, "/prism/v1/model/reload", "GET")[0] == 405
