"""The director's model service: policies share one model, a reload swaps it, a broken model is refused."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from models.artifact import ModelError
from prism.config.load import parse_config
from prism.placement.ring import HashRing
from ryu_apps.prediction import ModelService, load_model

REPO = Path(__file__).resolve().parents[2]
SHIPPED_MODEL = REPO / "models" / "first_packet"  # the first_packet policy's model (models/default: aging)
CONFIG = """\
idle_timeout: 5
max_replication_factor: 3
switches:
  - dpid: 1
    cells: [{{id: c1, port: 1}}, {{id: c2, port: 2}}, {{id: c3, port: 3}}]
    edge_ports: [4]
  - dpid: 2
    cells: [{{id: d1, port: 1}}, {{id: d2, port: 2}}]
    edge_ports: [4]
prediction: {{model: {model}, budget: 0.3, cheap_flow_packets: 7}}
"""


class Model:
    """A stand-in for a loaded Predictor."""

    horizon_s = 2.0

    def __init__(self, digest: str) -> None:
        self.manifest = {"model_digest": digest, "thresholds": {"0.25": 8.0}}

    def predict_duration(self, features) -> float:
        return 1.0

    def threshold_for(self, budget):
        return 8.0


def service(model_dir: str = "/models/x", loads=None):
    loads = loads if loads is not None else [Model("sha256:first")]

    def load(directory: str):
        assert directory == model_dir
        found = loads.pop(0)
        if isinstance(found, Exception):
            raise found
        return found

    config = parse_config(CONFIG.format(model=model_dir))
    return ModelService(config, load=load, run=lambda function, *args: function(*args)), loads


def test_every_switch_gets_a_policy_on_the_shared_engine_with_its_own_ceiling():
    models, _ = service()
    config = parse_config(CONFIG.format(model="/models/x"))
    policies = [models.policy_for(switch, HashRing(switch.cell_ids)) for switch in config.switches.values()]
    assert policies[0].engine is policies[1].engine is models.engine
    assert [p.max_replication_factor for p in policies] == [2, 1], "capped to each switch's cells - 1"
    assert policies[0].idle_timeout == 5 and models.engine.tracker.settings.budget == 0.3
    assert [p.cheap_flow_packets for p in policies] == [7, 7]
    health = object()
    models.attach_health(health)
    assert all(p.health is health for p in policies)


def test_a_reload_serves_the_new_model_and_reports_both():
    models, _ = service(loads=[Model("sha256:first"), Model("sha256:second")])
    answer = models.reload()
    assert answer["previous"]["model_digest"] == "sha256:first"
    assert answer["model"]["model_digest"] == "sha256:second" and answer["model"]["reloads"] == 1
    assert models.engine.generation == 1


def test_a_broken_model_leaves_the_old_one_in_service():
    models, _ = service(loads=[Model("sha256:first"), ModelError("/models/x: model.skops does not match")])
    engine_model = models.engine.predictor
    with pytest.raises(ModelError, match="does not match"):
        models.reload()
    assert models.engine.predictor is engine_model and models.engine.generation == 0
    status = models.status()
    assert status["failed_reloads"] == 1 and "does not match" in status["last_error"]
    assert status["model_digest"] == "sha256:first"


def test_the_shipped_model_loads_and_a_corrupted_copy_is_refused(tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(SHIPPED_MODEL, copy)
    config = parse_config(CONFIG.format(model=str(copy)))
    models = ModelService(config, run=lambda function, *args: function(*args))
    digest = models.status()["model_digest"]
    assert digest.startswith("sha256:")
    data = (copy / "model.skops").read_bytes()
    (copy / "model.skops").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError):
        models.reload()
    assert models.status()["model_digest"] == digest and models.status()["failed_reloads"] == 1
    with pytest.raises(ModelError):
        load_model(str(tmp_path / "missing"))
