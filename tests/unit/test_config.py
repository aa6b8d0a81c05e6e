"""Tests for prism.config.load and ``prism check-config``: every error kind with its exact location."""

import pathlib
import textwrap
import time

import pytest

from prism import cli
from prism.config.load import (
    CellConfig,
    ConfigError,
    PrismConfig,
    SwitchConfig,
    load_config,
    parse_config,
    parse_dpid,
    render_config,
)

REPO = pathlib.Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "prism.yaml"

VALID = """\
idle_timeout: 5
default_replication_factor: 1
max_replication_factor: 2
switches:
  - dpid: 1
    name: s1
    cells:
      - {id: c1, port: 1}
      - {id: c2, port: 2}
      - {id: c3, port: 3}
    edge_ports: [4, 5]
"""


def problems(text, source="prism.yaml"):
    with pytest.raises(ConfigError) as info:
        parse_config(textwrap.dedent(text), source)
    return [str(p) for p in info.value.problems]


def one_switch(cells="[{id: c1, port: 1}, {id: c2, port: 2}]", edge="[4]", extra="", max_rf=1):
    """One switch on lines 1-4, then ``extra``, then (if not None) max_replication_factor."""
    text = f"switches:\n  - dpid: 1\n    cells: {cells}\n    edge_ports: {edge}\n{extra}"
    return text if max_rf is None else text + f"max_replication_factor: {max_rf}\n"


# --- valid ----------------------------------------------------------------------
def test_valid_config():
    config = parse_config(VALID, "prism.yaml")
    assert config == PrismConfig(
        switches={1: SwitchConfig(1, "s1", (CellConfig("c1", 1), CellConfig("c2", 2),
                                            CellConfig("c3", 3)), (4, 5))},
        idle_timeout=5, default_replication_factor=1, max_replication_factor=2,
    )  # fmt: skip
    assert config.source == "prism.yaml" and config.warnings == ()
    switch = config.switches[1]
    assert switch.cell_ids == ("c1", "c2", "c3")
    assert switch.cell_ports == {"c1": 1, "c2": 2, "c3": 3}
    assert switch.cell_on_port(2) == CellConfig("c2", 2) and switch.cell_on_port(4) is None
    assert config.cell_count == 3


def test_defaults():
    config = parse_config(one_switch(max_rf=None))
    assert (config.idle_timeout, config.default_replication_factor, config.max_replication_factor) == (
        10, 1, 2,
    )  # fmt: skip
    assert config.switches[1].name == "s1"
    # max 2 with 2 cells: a ceiling that cannot be reached is only a warning.
    assert [str(w) for w in config.warnings] == [
        "<string>:3:12: warning: switches[0].cells: max_replication_factor (default) 2 needs 3 "
        "cells to be reached; switches[0] ('s1') has 2 cells"
    ]


@pytest.mark.parametrize(
    "text,dp_id",
    [("1", 1), ("0x1a", 0x1A), ("'00:00:00:00:00:00:01:00'", 0x100), ("00:00:00:00:00:00:00:10", 16),
     ("10:00:00:00:00:00:00:01", 0x1000000000000001), ("0000000000000010", 16), ('"0x2"', 2),
     ("18446744073709551615", 2**64 - 1)],
)  # fmt: skip
def test_dpid_forms(text, dp_id):
    config = parse_config(f"switches:\n  - dpid: {text}\n    cells: [{{id: a, port: 1}}]\n"
                          "    edge_ports: [2]\ndefault_replication_factor: 0\n"
                          "max_replication_factor: 0\n")  # fmt: skip
    assert list(config.switches) == [dp_id]


def test_parse_dpid_rejects():
    for text in ("", "x", "0x", "1.5", "00:00:00:01", "18446744073709551616", "-1"):
        assert parse_dpid(text) is None, text


def test_render_round_trip():
    config = parse_config(VALID)
    assert parse_config(render_config(config)) == config


def test_example_file_is_valid():
    config = load_config(EXAMPLE)
    assert len(config.switches) == 1
    switch = next(iter(config.switches.values()))
    assert len(switch.cells) == 3 and len(switch.edge_ports) == 4
    assert config.warnings == ()


# --- every error kind, with its location ---------------------------------------------
def test_duplicate_port_message_as_documented():
    text = """\
    switches:
      - dpid: 1
        cells:
          - id: c1
            port: 3
          - id: c2
            port: 3
        edge_ports: [4]
    """
    assert problems(text) == [
        "prism.yaml:7:15: switches[0].cells[1].port: duplicate port 3 (also cell 'c1' at line 5)"
    ]


def test_duplicate_cell_id():
    assert problems(one_switch("[{id: c1, port: 1}, {id: c1, port: 2}]")) == [
        "prism.yaml:3:37: switches[0].cells[1].id: duplicate cell id 'c1' "
        "(also switches[0].cells[0] at line 3)"
    ]


def test_port_both_cell_and_edge():
    assert problems(one_switch(edge="[4, 2]")) == [
        "prism.yaml:4:21: switches[0].edge_ports[1]: port 2 is both an edge port and cell 'c2's port "
        "(line 3)"
    ]


def test_duplicate_edge_port():
    assert problems(one_switch(edge="[4, 4]")) == [
        "prism.yaml:4:21: switches[0].edge_ports[1]: duplicate edge port 4 "
        "(also switches[0].edge_ports[0] at line 4)"
    ]


def test_unknown_keys_at_every_level():
    text = one_switch("[{id: c1, port: 1, weight: 2}, {id: c2, port: 2}]", extra="colour: blue\n")
    text = text.replace("    edge_ports", "    edge_port: [9]\n    edge_ports")
    assert problems(text) == [
        "prism.yaml:3:31: switches[0].cells[0].weight: unknown key 'weight' (expected one of: id, port, mgmt)",
        "prism.yaml:4:5: switches[0].edge_port: unknown key 'edge_port' (did you mean 'edge_ports'?)",
        "prism.yaml:6:1: colour: unknown key 'colour' (expected one of: idle_timeout, "
        "default_replication_factor, max_replication_factor, mirroring_mode, management, rest, telemetry, prediction, bfd, etcd, switches, openflow, limits)",
    ]


def test_missing_fields():
    text = """\
    idle_timeout: 3
    """
    assert problems(text) == ["prism.yaml:1:1: missing required key 'switches'"]
    text = """\
    switches:
      - name: s1
      - dpid: 2
        cells:
          - {port: 1}
          - {id: c2}
        edge_ports: [3]
    """
    assert problems(text) == [
        "prism.yaml:2:5: switches[0]: missing required key 'dpid'",
        "prism.yaml:2:5: switches[0]: missing required key 'cells'",
        "prism.yaml:2:5: switches[0]: missing required key 'edge_ports'",
        "prism.yaml:5:9: switches[1].cells[0]: missing required key 'id'",
        "prism.yaml:6:9: switches[1].cells[1]: missing required key 'port'",
    ]


def test_wrong_types():
    text = """\
    idle_timeout: ten
    default_replication_factor: 1.5
    max_replication_factor: [2]
    switches:
      - dpid: true
        name: 7
        cells:
          - {id: 1, port: "1"}
          - {id: "", port: 0}
          - just-a-cell
        edge_ports: 4
      - not-a-switch
    """
    assert problems(text) == [
        "prism.yaml:1:15: idle_timeout: expected an integer, got a string",
        "prism.yaml:2:29: default_replication_factor: expected an integer, got a float",
        "prism.yaml:3:25: max_replication_factor: expected an integer, got a list",
        "prism.yaml:5:11: switches[0].dpid: not a datapath id: 'true' "
        "(use e.g. 1, 0x1, 0000000000000001 or 00:00:00:00:00:00:00:01)",
        "prism.yaml:6:11: switches[0].name: switch name must be a string, got an integer (quote it: '7')",
        "prism.yaml:8:14: switches[0].cells[0].id: cell id must be a string, got an integer "
        "(quote it: '1')",
        "prism.yaml:8:23: switches[0].cells[0].port: expected an integer, got a string",
        "prism.yaml:9:14: switches[0].cells[1].id: cell id must not be empty",
        "prism.yaml:9:24: switches[0].cells[1].port: must be an integer between 1 and 4294967040, got 0",
        "prism.yaml:10:9: switches[0].cells[2]: expected a mapping, got a string",
        "prism.yaml:11:17: switches[0].edge_ports: expected a list of ports, got an integer",
        "prism.yaml:12:5: switches[1]: expected a mapping, got a string",
    ]


def test_top_level_not_a_mapping_and_switches_not_a_list():
    assert problems("- a\n- b\n") == ["prism.yaml:1:1: expected a mapping, got a list"]
    assert problems("switches: s1\n") == [
        "prism.yaml:1:11: switches: expected a list of switches, got a string"
    ]
    assert problems("switches: []\n") == ["prism.yaml:1:11: switches: at least one switch is required"]
    assert problems("switches:\n  - {}\n")[0] == "prism.yaml:2:5: switches[0]: missing required key 'dpid'"
    assert "not a datapath id: a mapping" in problems(one_switch().replace("dpid: 1", "dpid: {}"))[0]
    assert problems(one_switch(cells="[]")) == [
        "prism.yaml:3:12: switches[0].cells: at least one cell is required"
    ]


def test_duplicate_dpids_and_names():
    text = """\
    switches:
      - dpid: 1
        name: edge
        cells: [{id: a, port: 1}, {id: b, port: 2}]
        edge_ports: [3]
      - dpid: "00:00:00:00:00:00:00:01"
        name: edge
        cells: [{id: a, port: 1}, {id: b, port: 2}]
        edge_ports: [3]
    max_replication_factor: 1
    """
    assert problems(text) == [
        "prism.yaml:6:11: switches[1].dpid: duplicate dpid 0x1 (also switches[0] at line 2)",
        "prism.yaml:7:11: switches[1].name: duplicate switch name 'edge' (also switches[0] at line 3)",
    ]


def test_duplicate_yaml_key():
    assert problems("switches: []\nswitches: []\n")[1] == (
        "prism.yaml:2:1: switches: duplicate key 'switches' (also at line 1)"
    )


def test_invalid_yaml_position():
    assert problems("switches:\n  - dpid: 1\n cells: [\n") == [
        "prism.yaml:3:2: invalid YAML: expected <block end>, but found '<block mapping start>' "
        "(while parsing a block mapping)"
    ]
    assert problems("a: [1, 2\n")[0].startswith("prism.yaml:2:1: invalid YAML:")
    assert problems("a: 1\n---\nb: 2\n") == [
        "prism.yaml:2:1: invalid YAML: but found another document (expected a single document in the stream)"
    ]


@pytest.mark.parametrize("text", ["", "# only a comment\n", "\n\n"])
def test_empty_file(text):
    assert problems(text) == ["prism.yaml:1:1: empty configuration: expected at least a 'switches' list"]


def test_replication_factor_larger_than_cells_minus_one_is_an_error():
    assert problems(one_switch(extra="default_replication_factor: 2\n", max_rf=2)) == [
        "prism.yaml:5:29: default_replication_factor: 2 needs 3 cells per switch; "
        "switches[0] ('s1') has 2 cells (add cells or lower it)"
    ]
    # The implicit default (1) on a single-cell switch: reported at the cells.
    assert problems(one_switch(cells="[{id: c1, port: 1}]")) == [
        "prism.yaml:3:12: switches[0].cells: default_replication_factor (default) 1 needs 2 cells "
        "per switch; switches[0] ('s1') has 1 cell (add cells or lower it)"
    ]


def test_default_above_max():
    text = one_switch(extra="default_replication_factor: 1\n", max_rf=0)
    assert problems(text) == [
        "prism.yaml:5:29: default_replication_factor: 1 is more than max_replication_factor 0"
    ]


def test_negative_factor_and_idle_timeout():
    text = one_switch(extra="idle_timeout: 0\ndefault_replication_factor: -1\n")
    assert problems(text) == [
        "prism.yaml:5:15: idle_timeout: must be an integer >= 1, got 0",
        "prism.yaml:6:29: default_replication_factor: must be an integer >= 0, got -1",
    ]


def test_empty_edge_ports_is_a_warning():
    config = parse_config(one_switch(edge="[]"), "p.yaml")
    assert [str(w) for w in config.warnings] == [
        "p.yaml:4:17: warning: switches[0].edge_ports: no edge ports: no traffic will reach the cells"
    ]


def test_all_problems_reported_and_sorted():
    text = """\
    switches:
      - dpid: 1
        cells:
          - {id: c1, port: 3}
          - {id: c1, port: 3}
        edge_ports: [3, x]
    colour: blue
    idle_timeout: -5
    """
    lines = problems(text)
    assert len(lines) == 6
    assert [line.split(":")[1] for line in lines] == ["5", "5", "6", "6", "7", "8"]


def test_error_lists_every_problem_in_its_message():
    with pytest.raises(ConfigError) as info:
        parse_config("switches: []\ncolour: 1\n", "x.yaml")
    assert str(info.value).splitlines() == [
        "x.yaml:1:11: switches: at least one switch is required",
        "x.yaml:2:1: colour: unknown key 'colour' (expected one of: idle_timeout, "
        "default_replication_factor, max_replication_factor, mirroring_mode, management, rest, telemetry, prediction, bfd, etcd, switches, openflow, limits)",
    ]
    assert len(info.value.errors) == 2


def test_unreadable_file(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "missing.yaml")
    assert str(info.value) == f"{tmp_path / 'missing.yaml'}: cannot read: No such file or directory"
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(binary)


# --- the command ----------------------------------------------------------------------
def test_check_config_ok(capsys):
    assert cli.main(["check-config", str(EXAMPLE)]) == 0
    out, err = capsys.readouterr()
    assert out == "OK: 1 switch, 3 cells\n" and err == ""


def test_check_config_counts_and_warnings(tmp_path, capsys):
    path = tmp_path / "two.yaml"
    path.write_text(VALID + "  - dpid: 2\n    cells: [{id: d1, port: 1}, {id: d2, port: 2}]\n"
                    "    edge_ports: [3]\n")  # fmt: skip
    assert cli.main(["check-config", str(path)]) == 0
    out, err = capsys.readouterr()
    assert out == "OK: 2 switches, 5 cells\n"
    assert err == (
        f"{path}:3:25: warning: max_replication_factor: 2 needs 3 cells to be reached; "
        "switches[1] ('s2') has 2 cells\n"
    )


def test_check_config_errors(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(one_switch(edge="[1, 1]"))
    assert cli.main(["check-config", str(path)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        f"{path}:4:18: switches[0].edge_ports[0]: port 1 is both an edge port and cell 'c1's port (line 3)",
        f"{path}:4:21: switches[0].edge_ports[1]: port 1 is both an edge port and cell 'c1's port (line 3)",
        f"{path}: 2 errors",
    ]


def test_mirroring_mode_defaults_to_full_and_takes_state_only():
    base = "switches:\n  - dpid: 1\n    cells: [{id: c1, port: 1}, {id: c2, port: 2}]\n    edge_ports: [3]\n"
    base += "max_replication_factor: 1\n"
    assert parse_config(base).mirroring_mode == "full"
    config = parse_config(base + "mirroring_mode: state\n")
    assert config.mirroring_mode == "state" and parse_config(render_config(config)) == config
    with pytest.raises(ConfigError, match="mirroring_mode: expected one of full, state, got 'copy'"):
        parse_config(base + "mirroring_mode: copy\n")


def test_an_alias_bomb_is_refused_at_once():
    lines = ["a0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    lines += [f"a{n}: &a{n} [{', '.join([f'*a{n - 1}'] * 9)}]" for n in range(1, 9)]  # 9^9 values expanded
    started = time.perf_counter()
    found = problems("\n".join(lines) + "\nswitches: *a8\n")
    assert time.perf_counter() - started < 30, "the bound for a hung test, not a performance assertion"
    assert any("more than 100,000 values once its aliases are expanded" in problem for problem in found)


def test_yaml_oddities_are_problems_with_their_line_not_tracebacks():
    """What pydantic never sees as YAML: aliases of their own container, unknown tags, odd keys, null sections."""
    assert "a YAML alias may not refer to a mapping or list that encloses it" in problems("a: &x [*x]\n")[-1]
    base = one_switch()
    assert problems(base + "idle_timeout: !seconds 5\n") == [
        "prism.yaml:6:15: idle_timeout: expected an integer, got !seconds"]
    assert problems(base + "? [a]\n: 1\n")[0].startswith("prism.yaml:6:3: <a list>: unknown key '<a list>'")
    assert problems(base + "bfd:\n") == ["prism.yaml:6:5: bfd: expected a mapping, got null"]
    assert problems(base.replace("dpid: 1", "dpid: 1\n    name:")) == [
        "prism.yaml:3:10: switches[0].name: switch name must be a string, got null"]
