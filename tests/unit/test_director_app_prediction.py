"""The director's Ryu shell with a model configured: predictive policies, health, live reloads."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("ryu")

from models.artifact import ModelError  # noqa: E402
from prism.policy.base import FixedPolicy  # noqa: E402
from prism.policy.predictive import PredictivePolicy  # noqa: E402
from tests.support import director_app  # noqa: E402

app_module = pytest.importorskip("ryu_apps.mirroring_director")

REPO = Path(__file__).resolve().parents[2]
CONFIG = textwrap.dedent("""\
    idle_timeout: 7
    default_replication_factor: 1
    switches:
      - dpid: 0x1
        cells:
          - {id: cell1, port: 1}
          - {id: cell2, port: 2}
          - {id: cell3, port: 3}
        edge_ports: [4, 5]
    """)


def make_app(tmp_path, monkeypatch, prediction: str = ""):
    return director_app(tmp_path, monkeypatch, CONFIG + prediction)


@pytest.fixture
def model_copy(tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(REPO / "models" / "first_packet", copy)  # models/default is the aging model
    return copy


def test_a_configured_model_gives_every_switch_the_predictive_policy_with_health(tmp_path, monkeypatch,
                                                                                model_copy):
    app = make_app(tmp_path, monkeypatch, f"prediction: {{policy: first_packet, model: {model_copy}, budget: 0.3}}\n")
    policy = app.directors[1].policy
    assert isinstance(policy, PredictivePolicy)
    assert policy.health is app.control.detector and policy.max_replication_factor == 2
    assert policy.engine.tracker.settings.budget == 0.3


def test_without_a_model_the_fixed_policy_and_no_reload(tmp_path, monkeypatch):
    app = make_app(tmp_path, monkeypatch)
    assert isinstance(app.directors[1].policy, FixedPolicy) and app.models is None
    with pytest.raises(LookupError, match="prediction"):
        app.reload_model()


def test_a_model_that_does_not_load_stops_the_controller_with_the_reason(tmp_path, monkeypatch):
    with pytest.raises(SystemExit) as stopped:
        make_app(tmp_path, monkeypatch, f"prediction: {{policy: first_packet, model: {tmp_path / 'nowhere'}}}\n")
    assert "prediction.model" in str(stopped.value) and "nowhere" in str(stopped.value)


def test_reload_swaps_the_model_and_a_broken_file_keeps_the_old_one(tmp_path, monkeypatch, model_copy):
    app = make_app(tmp_path, monkeypatch, f"prediction: {{policy: first_packet, model: {model_copy}}}\n")
    app.models._run = lambda function, *args: function(*args)
    engine = app.directors[1].policy.engine
    answer = app.reload_model()
    assert answer["model"]["reloads"] == 1 and engine.generation == 1
    in_service = engine.predictor
    (model_copy / "manifest.json").write_text("{not json")
    with pytest.raises(ModelError):
        app.reload_model()
    assert engine.predictor is in_service and app.models.status()["failed_reloads"] == 1


def test_a_flows_last_flow_removed_teaches_the_policy_and_raises_the_telemetry_event(tmp_path, monkeypatch,
                                                                                    model_copy):
    from types import SimpleNamespace

    from ryu.ofproto import ofproto_v1_3_parser

    from prism.flows.identity import direction_match, parse_frame
    from prism.openflow.changes import TABLE_FSC
    from testkit.packets import build_udp_frame
    from ryu_apps.telemetry_events import EventFlowEnded
    from tests.support import FakeDatapath

    app = make_app(tmp_path, monkeypatch, f"prediction: {{policy: first_packet, model: {model_copy}}}\n")
    events = []
    monkeypatch.setattr(app, "send_event_to_observers", lambda event, *args: events.append(event))
    datapath = FakeDatapath(1)
    frame = build_udp_frame("10.0.0.4", "10.0.0.5", 40000, 53, b"query")
    info = parse_frame(frame)
    parser = ofproto_v1_3_parser
    app.packet_in_handler(SimpleNamespace(msg=SimpleNamespace(
        datapath=datapath, match=parser.OFPMatch(in_port=4), table_id=TABLE_FSC, data=frame)))  # fmt: skip
    engine = app.directors[1].policy.engine
    assert engine.flows_scored == 1 and app.directors[1].policy.in_flight == 1
    for forward, packets in ((True, 1), (False, 1)):
        match = parser.OFPMatch(**direction_match(info.key, forward))
        app.flow_removed_handler(SimpleNamespace(msg=SimpleNamespace(
            datapath=datapath, cookie=info.flow_id, match=match, packet_count=packets, byte_count=70,
            duration_sec=7, duration_nsec=300_000_000)))  # fmt: skip
        assert len(events) == (0 if forward else 1), "the flow ends with its last direction"
    (event,) = events
    assert isinstance(event, EventFlowEnded) and event.dp_id == 1 and event.flow_id == info.flow_id
    record = event.record
    assert (record.packets, record.bytes, record.dport) == (3, 140 + len(frame), 53)
    assert abs(record.duration_s - 0.3) < 1e-6, "lifetime 7.3 s minus the 7 s idle timeout"
    assert app.directors[1].policy.in_flight == 0
    assert engine.tracker.status()["ended_flows_in_window"] == 1
    assert app.handler_errors == {}


def test_the_aging_policy_without_a_model_uses_the_age_rule_and_tells_the_cells_its_milestones(tmp_path,
                                                                                               monkeypatch):
    from prism.policy.aging import AgingPolicy

    app = make_app(tmp_path, monkeypatch, "prediction: {milestones_s: [0.25, 1]}\n")
    policy = app.directors[1].policy
    assert isinstance(policy, AgingPolicy) and policy.scorer is None
    assert policy.health is app.control.detector
    assert app.models.status()["milestones_s"] == [0.25, 1.0]
    assert app.control.milestones_s == (0.25, 1.0)
    with pytest.raises(LookupError):
        app.models.reload()


def test_mirroring_mode_reaches_the_fixed_policy(tmp_path, monkeypatch):
    app = make_app(tmp_path, monkeypatch, "mirroring_mode: state\n")
    policy = app.directors[1].policy
    assert isinstance(policy, FixedPolicy) and policy.mode_for(1) == "state"
