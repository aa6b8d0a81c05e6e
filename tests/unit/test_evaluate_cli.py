"""``prism evaluate``: the controller row from a configuration's policy, beside every other row, as text and JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prism.cli import main
from prism.telemetry.records import read_records, write_records

from models.controller_row import SHIPPED_CONFIG, controller_replay, describe

ROOT = Path(__file__).resolve().parents[2]
NDPI = ROOT / "data" / "flows" / "ndpi_flows.parquet"
AGING_CONFIG = """
prediction:
  policy: aging
  budget: 0.1
switches:
  - dpid: 1
    cells:
      - {id: cell1, port: 1}
      - {id: cell2, port: 2}
      - {id: cell3, port: 3}
    edge_ports: [4, 5]
"""


@pytest.fixture(scope="module")
def flows(tmp_path_factory):
    path = tmp_path_factory.mktemp("flows") / "flows.parquet"
    write_records(read_records(NDPI).head(600), path)
    return path


@pytest.fixture(scope="module")
def aging_config(tmp_path_factory):
    path = tmp_path_factory.mktemp("config") / "prism.yaml"
    path.write_text(AGING_CONFIG)
    return path


def test_json_has_the_controller_row_and_every_other(flows, aging_config, tmp_path, capsys):
    out = tmp_path / "eval.json"
    code = main(["evaluate", str(flows), "--config", str(aging_config), "--model", str(tmp_path / "absent"),
                 "--json", str(out)])  # fmt: skip
    assert code == 1 and "no manifest.json" in capsys.readouterr().err  # a named model must load
    assert main(["evaluate", str(flows), "--config", str(aging_config), "--include-training-groups",
                 "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| controller | state |" in printed and "controller vs fixed rf1" in printed
    report = json.loads(out.read_text())
    rows = {row["policy"]: row for row in report["policies"]}
    assert {"controller", "none", "fixed rf1", "fixed rf2", "fixed rf1 state", "random", "oracle"} <= set(rows)
    controller = rows["controller"]
    assert controller["mode"] == "state" and controller["flows_promoted"] > 0
    assert rows["random"]["packets_mirrored"] == pytest.approx(controller["packets_mirrored"])
    assert report["targets"]["copies_vs_rf1"] == pytest.approx(controller["packets_mirrored"])
    assert report["redecisions"] > 0 and "aging policy" in report["controller"]


def test_the_controller_row_is_the_configured_policy_replayed(flows, aging_config):
    frame = read_records(flows)
    timeline = controller_replay(aging_config)(frame)
    assert timeline.mode.max() == 1 and (timeline.age_s > 0).any()  # promotions at milestones, state mode
    again = controller_replay(aging_config)(frame)  # a fresh policy each replay: the same decisions
    assert (again.replication_factor == timeline.replication_factor).all()
    fixed = controller_replay(SHIPPED_CONFIG)(frame) if "fixed policy" in describe(SHIPPED_CONFIG) else None
    if fixed is not None:
        assert len(fixed.flow) == len(frame) and (fixed.age_s == 0).all()


def test_bad_configuration_is_refused(flows, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("switches: []\nprediction: {policy: aging, budget: 7}\n")
    assert main(["evaluate", str(flows), "--config", str(bad)]) == 1
    assert "prism evaluate:" in capsys.readouterr().err


def test_cross_source_trains_on_one_source_and_judges_the_other(aging_config, tmp_path, capsys):
    both = tmp_path / "both.parquet"
    write_records(read_records([NDPI, ROOT / "data" / "flows" / "slips_flows.parquet"]), both)
    out = tmp_path / "cross.json"
    code = main(["evaluate", str(both), "--config", str(aging_config), "--cross-source", "--max-flows", "700",
                 "--json", str(out)])  # fmt: skip
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "## cross-source summary" in printed.out
    report = json.loads(out.read_text())
    pairs = {(p["train_source"], p["test_source"]): p for p in report["pairs"]}
    assert set(pairs) == {("pcap", "binetflow"), ("binetflow", "pcap")}
    for (train, test), pair in pairs.items():
        rows = {row["policy"]: row for row in pair["policies"]}
        # The configuration names no model: its controller row is the age rule, and the same policy
        # with the training source's aging model is a row of its own.
        assert {"controller", "controller + aging model", "fixed rf1", "baseline (port mean)", "oracle"} <= set(rows)
        assert "model none (age rule)" in pair["controller"] and pair["with_model"] == f"aging model trained on {train}"
        assert 0 < pair["flows"] <= 700 and pair["train_flows"] <= 700
    # Judged only on flows of the other source: Argus records have no milestone counts.
    assert pairs[("pcap", "binetflow")]["at_risk"]["flows_without_milestone_counts"] == pairs[("pcap", "binetflow")]["flows"]
    assert pairs[("binetflow", "pcap")]["at_risk"]["flows_without_milestone_counts"] == 0


def test_cross_source_needs_two_sources(flows, aging_config, capsys):
    assert main(["evaluate", str(flows), "--config", str(aging_config), "--cross-source"]) == 1
    assert "at least two sources" in capsys.readouterr().err
