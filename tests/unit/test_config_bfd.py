"""The configuration's ``bfd`` section: values, defaults, problems with their line, and what the harness applies."""

from __future__ import annotations

import pytest

from prism.config.load import ConfigError, parse_config, render_config
from prism.config.bfd import BfdConfig, bfd_interface_options, cell_bfd_arguments

BASE = """\
{top}switches:
  - dpid: 1
    cells:
      - {{id: c1, port: 1}}
      - {{id: c2, port: 2}}
    edge_ports: [3]
max_replication_factor: 1
"""


def problems(text: str):
    with pytest.raises(ConfigError) as info:
        parse_config(text, "prism.yaml")
    return [str(p) for p in info.value.problems]


def test_no_section_no_bfd():
    assert parse_config(BASE.format(top=""), "prism.yaml").bfd is None


def test_section_is_read_with_defaults_and_round_trips():
    config = parse_config(BASE.format(top="bfd: {interval: 15}\n"), "prism.yaml")
    assert config.bfd == BfdConfig(interval=15, mult=4, switch_interval=100)
    assert config.bfd.detection_ms == 60
    assert parse_config(render_config(config), "again.yaml") == config


def test_empty_mapping_means_defaults():
    assert parse_config(BASE.format(top="bfd: {}\n"), "prism.yaml").bfd == BfdConfig()


@pytest.mark.parametrize("top, expected", [
    ("bfd:\n  interval: 0\n", "prism.yaml:2:13: bfd.interval: must be an integer between 1 and 10000, got 0"),
    ("bfd:\n  mult: 300\n", "prism.yaml:2:9: bfd.mult: must be an integer between 1 and 255, got 300"),
    ("bfd:\n  switch_interval: fast\n", "prism.yaml:2:20: bfd.switch_interval: expected an integer"),
    ("bfd:\n  enable: true\n", "prism.yaml:2:3: bfd.enable: unknown key 'enable'"),
    ("bfd: 10\n", "prism.yaml:1:6: bfd"),
])  # fmt: skip
def test_problems_have_their_line(top, expected):
    found = problems(BASE.format(top=top))
    assert any(p.startswith(expected) for p in found), found


def test_a_fragile_detection_time_is_a_warning():
    config = parse_config(BASE.format(top="bfd: {interval: 3, mult: 2}\n"), "prism.yaml")
    assert any("6 ms" in str(w) for w in config.warnings)


def test_switch_and_cell_get_the_same_session_each_direction_its_own_interval():
    config = BfdConfig(interval=20, mult=4, switch_interval=150)
    # the switch accepts the cell's packets every 20 ms and sends its own every 150 ms
    assert bfd_interface_options(config) == ["bfd:enable=true", "bfd:min_rx=20", "bfd:min_tx=150", "bfd:mult=4"]
    assert cell_bfd_arguments(config) == ["--bfd", "--bfd-min-tx", "20", "--bfd-min-rx", "150", "--bfd-mult", "4"]
