"""The configuration's telemetry and prediction sections: values, defaults, paths, problems with positions."""

from __future__ import annotations

import pytest

from prism.config.load import ConfigError, PredictionConfig, TelemetryConfig, load_config, parse_config, render_config
from prism.config.telemetry import (
    DEFAULT_CHEAP_FLOW_PACKETS,
    DEFAULT_MIRROR_BUDGET,
    POLICY_AGING,
    POLICY_FIRST_PACKET,
    resolve_path,
)
from prism.policy.base import MODE_FULL, MODE_STATE
from prism.policy.aging import DEFAULT_BUDGET as DEFAULT_AGING_BUDGET
from prism.policy.aging import DEFAULT_MILESTONES_S

BASE = """\
switches:
  - dpid: 1
    cells:
      - {id: c1, port: 1}
      - {id: c2, port: 2}
    edge_ports: [3]
max_replication_factor: 1
"""


def problems(text: str):
    with pytest.raises(ConfigError) as info:
        parse_config(text, "conf/prism.yaml")
    return [str(p) for p in info.value.problems]


def test_both_sections_are_read_with_paths_relative_to_the_file_and_round_trip(tmp_path):
    path = tmp_path / "conf" / "prism.yaml"
    path.parent.mkdir()
    path.write_text(BASE + "telemetry:\n  dir: out/telemetry\n  rotate_records: 500\n  rotate_s: 60\n"
                    "  poll_interval: 2.5\nprediction: {model: ../models/default, budget: 0.3, horizon_s: 2}\n")
    config = load_config(path)
    assert config.telemetry == TelemetryConfig(str(tmp_path / "conf" / "out" / "telemetry"), 500, 60.0, 2.5)
    assert config.prediction == PredictionConfig(str(tmp_path / "models" / "default"), 0.3, 2.0)
    assert parse_config(render_config(config)) == config


def test_defaults_and_absent_sections():
    config = parse_config(BASE + "telemetry: {dir: /tmp/t}\nprediction: {model: /m}\n")
    assert config.telemetry == TelemetryConfig("/tmp/t")
    assert config.prediction == PredictionConfig("/m", DEFAULT_AGING_BUDGET, None)
    assert config.prediction.policy == POLICY_AGING and config.prediction.mode == MODE_STATE
    assert config.prediction.milestones_s == DEFAULT_MILESTONES_S
    assert parse_config(render_config(config)) == config
    first = parse_config(BASE + "prediction: {policy: first_packet, model: /m}\n").prediction
    assert first == PredictionConfig("/m", DEFAULT_MIRROR_BUDGET, None, policy=POLICY_FIRST_PACKET)
    plain = parse_config(BASE)
    assert plain.telemetry is None and plain.prediction is None
    assert "telemetry" not in render_config(plain) and "prediction" not in render_config(plain)


@pytest.mark.parametrize(
    "section, expected",
    [
        ("telemetry: {rotate_records: 5}\n", "conf/prism.yaml:8:12: telemetry: missing required key 'dir'"),
        ("telemetry: {dir: t, rotate_records: 0}\n",
         "conf/prism.yaml:8:37: telemetry.rotate_records: must be an integer >= 1, got 0"),
        ("telemetry: {dir: t, poll_interval: -1}\n",
         "conf/prism.yaml:8:36: telemetry.poll_interval: a number of seconds must be > 0, got -1"),
        ("telemetry: {dir: t, rotate_s: soon}\n",
         "conf/prism.yaml:8:31: telemetry.rotate_s: expected a number of seconds, got 'soon'"),
        ("telemetry: {dir: t, rotat_s: 5}\n",
         "conf/prism.yaml:8:21: telemetry.rotat_s: unknown key 'rotat_s' (did you mean 'rotate_s'?)"),
        ("prediction: {model: m, budget: 1.5}\n",
         "conf/prism.yaml:8:32: prediction.budget: a share of packets (e.g. 0.25) must be > 0 and <= 1, got 1.5"),
        ("prediction: {model: m, budget: 0}\n",
         "conf/prism.yaml:8:32: prediction.budget: a share of packets (e.g. 0.25) must be > 0 and <= 1, got 0"),
        ("prediction: {model: 3}\n", "conf/prism.yaml:8:21: prediction.model: prediction.model must be a string, "
                                     "got an integer (quote it: '3')"),
        ("prediction: {policy: first_packet, budget: 0.2}\n",
         "conf/prism.yaml:8:13: prediction: missing required key 'model' (the first_packet policy needs a model)"),
        ("prediction: {policy: oldest}\n",
         "conf/prism.yaml:8:22: prediction.policy: expected one of aging, first_packet, got 'oldest'"),
        ("prediction: {milestones_s: [0.25, 3]}\n",
         "conf/prism.yaml:8:35: prediction.milestones_s[1]: 3 s is not a milestone the flow records count at "
         "(one of 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64)"),
        ("prediction: {milestones_s: [1, 0.5]}\n",
         "conf/prism.yaml:8:32: prediction.milestones_s[1]: milestones must be ascending and distinct, 0.5 follows 1"),
        ("prediction: {milestones_s: 4}\n",
         "conf/prism.yaml:8:28: prediction.milestones_s: expected a non-empty list of ages in seconds, "
         "e.g. [0.25, 1, 4, 16, 64]"),
        ("prediction: {milestones_s: [soon]}\n",
         "conf/prism.yaml:8:29: prediction.milestones_s[0]: expected a number of seconds, got 'soon'"),
        ("prediction: {mode: partial}\n",
         "conf/prism.yaml:8:20: prediction.mode: expected one of state, full, auto, got 'partial'"),
        ("prediction: {promote_quiet: 1}\n",
         "conf/prism.yaml:8:29: prediction.promote_quiet: expected true or false, got '1'"),
        ("prediction: {birth: always}\n",
         "conf/prism.yaml:8:21: prediction.birth: expected one of auto, off, got 'always'"),
        ("prediction: {promote_probability: 2}\n",
         "conf/prism.yaml:8:35: prediction.promote_probability: expected a probability between 0 and 1, got '2'"),
        ("prediction: {promote_probability: 0.2, demote_probability: 0.5}\n",
         "conf/prism.yaml:8:60: prediction.demote_probability: must not exceed promote_probability (0.2)"),
        ("prediction: {model: m, cheap_flow_packets: -1}\n",
         "conf/prism.yaml:8:44: prediction.cheap_flow_packets: must be an integer >= 0, got -1"),
        ("prediction: {model: m, cheap_flow_packets: 2.5}\n",
         "conf/prism.yaml:8:44: prediction.cheap_flow_packets: expected an integer, got a float"),
    ],
)
def test_problems_name_file_line_and_key(section, expected):
    assert expected in problems(BASE + section)


def test_cheap_flow_packets_defaults_reads_and_round_trips():
    assert parse_config(BASE + "prediction: {model: /m}\n").prediction.cheap_flow_packets == DEFAULT_CHEAP_FLOW_PACKETS
    for packets in (0, 16):
        config = parse_config(BASE + f"prediction: {{model: /m, cheap_flow_packets: {packets}}}\n")
        assert config.prediction == PredictionConfig("/m", DEFAULT_AGING_BUDGET, None, packets)
        assert parse_config(render_config(config)) == config


def test_every_problem_of_both_sections_is_listed_at_once():
    found = problems(BASE + "telemetry: {dir: '', poll_interval: 0}\nprediction: {model: m, horizon_s: 0}\n")
    assert len(found) == 3, found


def test_prediction_without_room_for_a_mirror_is_a_warning():
    config = parse_config(BASE.replace("max_replication_factor: 1", "max_replication_factor: 0\ndefault_replication_factor: 0")
                          + "prediction: {model: /m}\n", "p.yaml")  # fmt: skip
    assert config.prediction is not None
    assert any("can never mirror" in str(w) for w in config.warnings)


def test_resolve_path():
    assert resolve_path("/abs/m", "conf/prism.yaml") == "/abs/m"
    assert resolve_path("m", "conf/prism.yaml") == "conf/m"
    assert resolve_path("../m", "/etc/prism/prism.yaml") == "/etc/m"
    assert resolve_path("m", "prism.yaml") == "m"
    assert resolve_path("m", "<string>") == "m"


def test_the_aging_policy_needs_no_model_and_its_keys_round_trip():
    config = parse_config(BASE + "prediction:\n  milestones_s: [0.5, 2, 8]\n  mode: full\n  budget: 0.05\n"
                          "  promote_probability: 0.6\n  demote_probability: 0.1\n  promote_quiet: false\n")  # fmt: skip
    assert config.prediction == PredictionConfig(None, 0.05, None, DEFAULT_CHEAP_FLOW_PACKETS, POLICY_AGING,
                                                 (0.5, 2.0, 8.0), MODE_FULL, 0.6, 0.1, False)  # fmt: skip
    assert parse_config(render_config(config)) == config


def test_birth_defaults_to_auto_reads_off_though_yaml_takes_it_for_a_boolean_and_round_trips():
    assert parse_config(BASE + "prediction: {budget: 0.1}\n").prediction.birth == "auto"
    for text in ("off", "auto", "'off'"):
        config = parse_config(BASE + f"prediction: {{birth: {text}}}\n")
        assert config.prediction.birth == text.strip("'")
        assert parse_config(render_config(config)) == config
