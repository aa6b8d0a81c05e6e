"""The configuration's management network and REST sections: values, defaults, problems with positions."""

from __future__ import annotations

import pytest

from prism.config.load import (
    ConfigError,
    ManagementConfig,
    RestConfig,
    parse_config,
    render_config,
)
from prism.config.mgmt import format_address, parse_address

BASE = """\
{top}switches:
  - dpid: 1
    cells:
      - {{id: c1, port: 1{mgmt1}}}
      - {{id: c2, port: 2{mgmt2}}}
    edge_ports: [3]
max_replication_factor: 1
"""


def document(top: str = "", mgmt1: str = "", mgmt2: str = "") -> str:
    return BASE.format(top=top, mgmt1=mgmt1, mgmt2=mgmt2)


def problems(text: str):
    with pytest.raises(ConfigError) as info:
        parse_config(text, "prism.yaml")
    return [str(p) for p in info.value.problems]


def test_a_full_management_section_is_read_and_round_trips():
    text = document(
        top='management:\n  listen: "172.30.0.254:7600"\n  heartbeat_interval: 0.2\n  dead_after: 0.7\n'
            '  alive_after: 2\nrest: {token_env: MY_TOKEN}\n',
        mgmt1=', mgmt: "172.30.0.10:7700"', mgmt2=', mgmt: "[fd00::b]:7700"',
    )  # fmt: skip
    config = parse_config(text, "prism.yaml")
    assert config.management == ManagementConfig(("172.30.0.254", 7600), 0.2, 0.7, 2.0)
    assert config.rest == RestConfig(token_env="MY_TOKEN")
    assert [cell.mgmt for cell in config.switches[1].cells] == [("172.30.0.10", 7700), ("fd00::b", 7700)]
    assert config.warnings == ()
    assert parse_config(render_config(config)) == config


def test_defaults_without_the_sections_and_dead_after_follows_the_interval():
    config = parse_config(document())
    assert config.management == ManagementConfig() and config.management.listen is None
    assert config.management.dead_after == pytest.approx(0.35)
    assert config.rest == RestConfig()
    assert parse_config(render_config(config)) == config
    slow = parse_config(document(top="management: {heartbeat_interval: 1}\n"))
    assert slow.management.dead_after == pytest.approx(3.5)


def test_bad_values_are_reported_with_their_position():
    text = document(
        top='management:\n  listen: "controller:7600"\n  heartbeat_interval: 0.2\n  dead_after: 0.1\n'
            '  alive_after: "soon"\nrest: {token_env: "A-B", token_file: /tmp/t}\n',
        mgmt1=', mgmt: "172.30.0.10:99999"',
    )  # fmt: skip
    found = problems(text)
    assert found[0].startswith("prism.yaml:2:11: management.listen: management.listen 'controller:7600' is not IP:PORT")
    assert found[1].startswith("prism.yaml:4:15: management.dead_after: 0.1 s is not longer than heartbeat_interval")
    assert found[2] == "prism.yaml:5:16: management.alive_after: expected a number of seconds, got 'soon'"
    assert found[3].startswith("prism.yaml:6:19: rest.token_env: 'A-B' is not an environment variable name")
    assert found[4] == "prism.yaml:6:38: rest.token_file: give either token_env or token_file, not both"
    assert found[5].startswith("prism.yaml:10:33: switches[0].cells[0].mgmt: cell management address "
                               "'172.30.0.10:99999' is not IP:PORT")  # fmt: skip
    assert len(found) == 6


def test_duplicate_cell_addresses_and_the_controllers_own_address_are_errors():
    text = document(
        top='management: {listen: "10.9.0.1:7600"}\n',
        mgmt1=', mgmt: "10.9.0.2:7700"', mgmt2=', mgmt: "10.9.0.2:7700"',
    )  # fmt: skip
    assert problems(text) == [
        "prism.yaml:6:33: switches[0].cells[1].mgmt: duplicate management address 10.9.0.2:7700 "
        "(also cell 'c1' at line 5)"
    ]
    text = document(top='management: {listen: "10.9.0.1:7600"}\n', mgmt1=', mgmt: "10.9.0.1:7600"')
    assert "has the controller's management.listen address" in problems(text)[0]


def test_half_configured_management_is_a_warning():
    no_cells = parse_config(document(top='management: {listen: "10.9.0.1:7600"}\n'), "prism.yaml")
    assert "no cell has a 'mgmt' address" in str(no_cells.warnings[0])
    no_listen = parse_config(document(mgmt1=', mgmt: "10.9.0.2:7700"'), "prism.yaml")
    assert "management.listen is not set" in str(no_listen.warnings[0])
    tight = parse_config(document(top="management: {heartbeat_interval: 0.1, dead_after: 0.15}\n"), "prism.yaml")
    assert "one lost heartbeat fails a cell" in str(tight.warnings[0])


@pytest.mark.parametrize(
    "text, expected",
    [
        ("127.0.0.1:7600", ("127.0.0.1", 7600)),
        ("[::1]:7600", ("::1", 7600)),
        ("::1:7600", None),
        ("[127.0.0.1]:7600", None),
        ("localhost:7600", None),
        ("127.0.0.1:0", None),
        ("127.0.0.1", None),
    ],
)
def test_address_parsing(text, expected):
    assert parse_address(text) == expected
    if expected:
        assert parse_address(format_address(expected)) == expected


def test_the_management_key_source_and_generation_file(tmp_path):
    (tmp_path / "mgmt.key").write_text("a" * 64 + "\n")
    config_path = str(tmp_path / "prism.yaml")
    text = document(top="management:\n  key_file: mgmt.key\n  generation_file: state/generation\n")
    config = parse_config(text, config_path)
    assert config.management.key_file == str(tmp_path / "mgmt.key")
    assert config.management.generation_file == str(tmp_path / "state" / "generation")
    assert parse_config(render_config(config), config_path) == config
    env = parse_config(document(top="management: {key_env: MY_KEY}\n"))
    assert (env.management.key_env, env.management.key_file) == ("MY_KEY", None)


def test_management_key_problems_are_reported_with_their_position(tmp_path):
    (tmp_path / "short.key").write_text("abc")
    found = problems(document(top='management:\n  key_file: short.key\n  key_env: "A-B"\n').replace(
        "short.key", str(tmp_path / "short.key")))
    assert found[0].startswith("prism.yaml:2:13: management.key_file: the management key in ")
    assert "needs at least 32" in found[0]
    assert found[1] == "prism.yaml:2:13: management.key_file: give either key_file or key_env, not both"
    assert found[2].startswith("prism.yaml:3:12: management.key_env: 'A-B' is not an environment variable name")
    missing = problems(document(top="management: {key_file: /nonexistent/prism.key}\n"))
    assert missing == ["prism.yaml:1:24: management.key_file: the management key file /nonexistent/prism.key "
                       "cannot be read: No such file or directory"]


def test_state_mode_keys_are_read_defaulted_and_round_trip():
    config = parse_config(document(top="management:\n  state_interval_s: 0.5\n  takeover_tolerance_bytes: 1048576\n"))
    assert (config.management.state_interval_s, config.management.takeover_tolerance_bytes) == (0.5, 1048576)
    assert parse_config(render_config(config)) == config
    default = parse_config(document())
    assert default.management.state_interval_s == 1.0
    assert default.management.takeover_tolerance_bytes == 16 * 1024 * 1024


def test_state_mode_keys_report_bad_values_with_their_lines():
    found = problems(document(
        top="management:\n  state_interval_s: 0\n  takeover_tolerance_bytes: lots\n"))  # fmt: skip
    assert found == [
        "prism.yaml:2:21: management.state_interval_s: a number of seconds must be > 0, got 0",
        "prism.yaml:3:29: management.takeover_tolerance_bytes: expected an integer, got a string",
    ]
    assert problems(document(top="management: {takeover_tolerance_bytes: -1}\n")) == [
        "prism.yaml:1:40: management.takeover_tolerance_bytes: must be an integer >= 0, got -1"]
    odd = parse_config(document(top="management: {state_interval_s: 0.01, takeover_tolerance_bytes: 1000}\n"),
                       "prism.yaml")  # fmt: skip
    assert [problem.path for problem in odd.warnings] == [
        "management.state_interval_s", "management.takeover_tolerance_bytes"]
