"""``prism simulate``: tables and JSON from a generated population or flow records; clear errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from prism.cli import main
from prism.telemetry.records import empty_frame, read_records, write_records
from prism.sim.policies import ALL_POLICIES

ROOT_FLOWS = Path(__file__).resolve().parents[2] / "data" / "flows" / "ndpi_flows.parquet"
FAST = ["--policies", "none", "fixed rf1", "--no-progress"]


def test_generated_run_prints_both_tables_and_writes_json(tmp_path, capsys):
    out = tmp_path / "sim.json"
    code = main(["simulate", "--flows", "5000", "--cells", "8", "--failure-rate", "2000", "--seed", "1",
                 "--json", str(out), "--no-progress"])  # fmt: skip
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "5,000 flows (generated" in printed.out
    assert "at-risk packets protected" in printed.out and "peak groups" in printed.out
    assert "peak memory" in printed.out
    report = json.loads(out.read_text())
    assert [p["policy"] for p in report["policies"]] == list(ALL_POLICIES)
    assert report["flows"] == 5000 and report["cells"] == 8
    assert report["peak_rss_mb"] > 0 and report["failures"]
    assert report["model_digest"].startswith("sha256:")
    assert "stage features" in report["timings_s"] and "stage predict" in report["timings_s"]


def test_given_failures_replace_random_ones(tmp_path, capsys):
    out = tmp_path / "sim.json"
    code = main(["simulate", "--flows", "3000", "--cells", "4", "--fail-at", "1:c02", "--fail-at", "2",
                 "--json", str(out), *FAST])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    failures = json.loads(out.read_text())["failures"]
    assert len(failures) == 2 and failures[0]["cell_id"] == "c02"
    assert failures[1]["at"] - failures[0]["at"] == pytest.approx(1.0)


def test_flow_records_are_replayed(tmp_path, capsys):
    frame = read_records(ROOT_FLOWS).head(400)
    path = tmp_path / "flows.parquet"
    write_records(frame, path)
    code = main(["simulate", str(path), "--cells", "4", "--failure-window", "60", "--failure-rate", "600",
                 *FAST])  # fmt: skip
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert printed.out.startswith("400 flows (")


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p.write_bytes(b""), "not a readable Parquet file"),
        (lambda p: pd.DataFrame({"flow_id": [1]}).to_parquet(p), "missing column"),
        (lambda p: write_records(empty_frame(), p), "no flows to replay"),
    ],
    ids=["empty file", "missing column", "no rows"],
)
def test_bad_flow_files_give_a_clear_error(tmp_path, capsys, make, message):
    path = tmp_path / "flows.parquet"
    make(path)
    assert main(["simulate", str(path), *FAST]) == 1
    err = capsys.readouterr().err
    assert err.startswith("prism simulate: ") and message in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--fail-at", "3:c99"], "unknown cell 'c99'"),
        (["--fail-at", "soon"], "expected SECONDS or SECONDS:CELL"),
        (["--policies", "always"], "unknown policy always"),
        (["--cells", "0"], "at least one cell"),
        (["--failure-rate", "1e12"], "failures expected"),
        (["--distributions", "/nonexistent"], "no such distribution directory"),
    ],
)
def test_bad_options_give_a_clear_error(capsys, args, message):
    argv = ["simulate", "--flows", "500", "--cells", "4", "--no-progress", "--policies", "none", *args]
    assert main(argv) == 1
    assert message in capsys.readouterr().err


def test_a_broken_model_directory_is_refused(tmp_path, capsys):
    assert main(["simulate", "--flows", "500", "--model", str(tmp_path), "--no-progress"]) == 1
    assert "prism simulate:" in capsys.readouterr().err
