"""SPE models: sklearn conventions, training split, artifacts refused when they do not match, fast predictor."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pandas as pd
import pytest
import skops.io as sio
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.preprocessing import StandardScaler

from models import artifact
from models.artifact import MANIFEST_FILE, MODEL_FILE, ModelError, load_model, save_model
from models.estimator import ServicePortMean, ServicePortRate
from prism.policy.features import FEATURE_NAMES
from models import predictor as predictor_module
from models.aging import AgingTrainConfig, train_aging
from models.predictor import AgingPredictor, CompactEnsemble, Predictor
from prism.policy.aging_features import AGING_FEATURE_NAMES
from models.train import TrainConfig, split_by_group, train
from prism import cli
from prism.telemetry.records import MILESTONES_S, SCHEMA_VERSION, FlowRecord, records_to_frame, write_records

COL = {name: i for i, name in enumerate(FEATURE_NAMES)}


def synthetic_records(groups=12, flows=120, seed=1) -> pd.DataFrame:
    """Web flows live long and carry many packets; DNS flows are short; per capture file."""
    rng = np.random.default_rng(seed)
    rows = []
    for g in range(groups):
        source = "binetflow" if g % 4 == 3 else "pcap"
        t = 1000.0 * g
        for i in range(flows):
            t += rng.exponential(0.5)
            web = rng.random() < 0.4
            duration = rng.exponential(20.0) if web else rng.exponential(0.3)
            packets = int(1 + (duration * rng.uniform(5, 20) if web else rng.integers(1, 3)))
            rows.append(FlowRecord(
                flow_id=g * 100000 + i + 1, ts_start=t, ip_version=4, proto=6 if web else 17,
                src_addr=f"10.0.{g}.{i % 7}", dst_addr="192.0.2.80" if web else "192.0.2.53",
                sport=40000 + i, dport=443 if web else 53,
                first_ip_len=None if source == "binetflow" else 60,
                first_tcp_flags=None if source == "binetflow" else (2 if web else 0),
                source=source, duration_s=float(duration), packets=packets, bytes=packets * 500,
                truncated=False, end_reason="fin" if web else "idle", group=f"cap{g}.pcap",
            ))  # fmt: skip
    return records_to_frame(rows)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    frame = synthetic_records()
    result = train(frame, TrainConfig(horizon_s=2.0, report_delay_s=5.0, test_share=0.25, seed=0))
    directory = tmp_path_factory.mktemp("model")
    save_model(directory, result.estimators, result.manifest())
    return frame, result, directory


# --- estimators ---------------------------------------------------------------------
@pytest.mark.parametrize("estimator", [ServicePortRate(), ServicePortMean()])
def test_baseline_follows_sklearn_conventions(estimator):
    assert clone(estimator).get_params() == {"min_flows": 3, "smoothing": 5.0}
    X = np.zeros((10, len(FEATURE_NAMES)))
    with pytest.raises(NotFittedError):
        estimator.predict(X)
    assert estimator.fit(X, np.r_[np.ones(5), np.zeros(5)].astype(int)) is estimator
    assert hasattr(estimator, "port_means_") and not hasattr(clone(estimator), "port_means_")


def test_baseline_backs_off_from_rare_ports_to_the_service_class():
    X = np.zeros((8, len(FEATURE_NAMES)))
    X[:, COL["proto"]] = 6
    X[:, COL["service_class"]] = 2
    X[:6, COL["service_port"]] = 443
    X[6:, COL["service_port"]] = 8443  # only two flows: below min_flows
    y = np.array([1, 1, 1, 1, 1, 1, 0, 0])
    model = ServicePortRate(smoothing=0.0, min_flows=3).fit(X, y)
    assert model.predict_proba(X[:1])[0, 1] == 1.0
    assert model.predict_proba(X[6:7])[0, 1] == pytest.approx(6 / 8)  # the class's rate


def test_split_never_cuts_a_capture_and_holds_out_each_source():
    frame = synthetic_records(groups=12, flows=10)
    test = split_by_group(frame, 0.25, seed=3)
    groups_test = set(frame.loc[test, "group"])
    assert groups_test and not groups_test & set(frame.loc[~test, "group"])
    assert set(frame.loc[test, "source"]) == {"pcap", "binetflow"}


def test_training_beats_the_baseline_on_learnable_data(trained):
    _frame, result, _directory = trained
    hgb, baseline = result.metrics["hgb"], result.metrics["baseline"]
    assert hgb["alive_roc_auc"] > 0.8
    assert hgb["packets_mae_log"] <= baseline["packets_mae_log"] + 0.05
    by_name = {(row.policy, row.budget): row for row in result.policies}
    predictive = by_name[("predictive (HGB)", 0.25)]
    assert predictive.packets_protected > by_name[("random", 0.25)].packets_protected
    assert predictive.packets_mirrored == pytest.approx(0.25)
    assert set(result.thresholds) == {0.1, 0.25, 0.5}


# --- artifacts ----------------------------------------------------------------------
def test_manifest_records_what_the_issue_asks(trained):
    frame, result, directory = trained
    manifest = json.loads((directory / MANIFEST_FILE).read_text())
    assert manifest["feature_names"] == list(FEATURE_NAMES)
    assert manifest["schema_version"] == SCHEMA_VERSION and manifest["horizon_s"] == 2.0
    assert manifest["training_data"]["digest"].startswith("sha256:")
    assert {"sklearn", "skops", "numpy"} <= set(manifest["libraries"])
    assert "alive_roc_auc" in manifest["metrics_heldout"]["hgb"]
    assert "alive_roc_auc" in manifest["metrics_heldout"]["baseline"]
    # A skops zip, not a pickle.
    assert "schema.json" in zipfile.ZipFile(directory / MODEL_FILE).namelist()


def copy_model(src, dst):
    dst.mkdir()
    for name in (MODEL_FILE, MANIFEST_FILE):
        (dst / name).write_bytes((src / name).read_bytes())
    return dst


def edit_manifest(directory, **changes):
    manifest = json.loads((directory / MANIFEST_FILE).read_text())
    manifest.update(changes)
    (directory / MANIFEST_FILE).write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda d: (d / MANIFEST_FILE).unlink(), "no manifest.json"),
        (lambda d: (d / MODEL_FILE).unlink(), "model file model.skops is missing"),
        (lambda d: (d / MODEL_FILE).write_bytes((d / MODEL_FILE).read_bytes() + b"x"), "digest"),
        (lambda d: edit_manifest(d, schema_version=0), "schema v0"),
        (lambda d: edit_manifest(d, feature_names=list(reversed(FEATURE_NAMES))), "another order"),
        (lambda d: edit_manifest(d, feature_names=list(FEATURE_NAMES[:-1])), "missing"),
        (lambda d: edit_manifest(d, model_file="../elsewhere.skops"), "outside the directory"),
        (lambda d: (d / MANIFEST_FILE).write_text("{not json"), "unreadable manifest"),
        (lambda d: edit_manifest(d, probe_rows=[]), "no probe_rows"),
        (lambda d: edit_manifest(d, probe_rows=[[1.0, 2.0]]), "probe_rows must be"),
        (lambda d: edit_manifest(d, kind="oracle"), "unknown model kind 'oracle'"),
    ],
    ids=["no-manifest", "no-model", "digest", "schema", "order", "features", "path", "json", "no-probe",
         "probe-width", "kind"],
)
def test_load_refuses_a_model_that_does_not_match(trained, tmp_path, damage, message):
    directory = copy_model(trained[2], tmp_path / "m")
    damage(directory)
    with pytest.raises(ModelError, match=message):
        load_model(directory)


def test_load_refuses_untrusted_types(trained, tmp_path):
    directory = copy_model(trained[2], tmp_path / "m")
    estimators = dict(load_model(directory).estimators, extra=StandardScaler())
    (directory / MODEL_FILE).write_bytes(sio.dumps(estimators))
    edit_manifest(directory, model_digest=artifact.file_digest(directory / MODEL_FILE))
    with pytest.raises(ModelError, match="does not trust: sklearn.preprocessing._data.StandardScaler"):
        load_model(directory)


def test_load_refuses_a_model_of_the_wrong_shape(trained, tmp_path):
    directory = copy_model(trained[2], tmp_path / "m")
    estimators = load_model(directory).estimators
    estimators["alive"] = estimators["baseline_alive"]
    (directory / MODEL_FILE).write_bytes(sio.dumps(estimators))
    edit_manifest(directory, model_digest=artifact.file_digest(directory / MODEL_FILE))
    with pytest.raises(ModelError, match="'alive' should be a HistGradientBoostingClassifier"):
        load_model(directory)


# --- the predictor --------------------------------------------------------------------
def test_compact_predictor_equals_sklearn(trained):
    frame, result, directory = trained
    predictor = Predictor.load(directory)
    X = result.data.X[:300]
    expected = result.estimators["alive"].predict_proba(X)[:, 1]
    single = np.array([predictor.predict_one(row.tolist()).alive for row in X])
    batch = predictor.predict_batch(X)
    assert np.allclose(single, expected, atol=1e-9) and np.allclose(batch["alive"], expected, atol=1e-9)
    duration = np.expm1(result.estimators["duration"].predict(X))
    assert np.allclose(batch["duration"], duration, atol=1e-6)
    assert predictor.predict_duration(X[0].tolist()) == pytest.approx(duration[0])
    packets = np.expm1(result.estimators["packets"].predict(X[:5]))
    assert [predictor.predict_one(r.tolist()).packets for r in X[:5]] == pytest.approx(packets.tolist())


def test_predictor_ranks_web_flows_above_dns(trained):
    _frame, result, directory = trained
    predictor = Predictor.load(directory)
    X = result.data.X
    web = X[:, COL["service_port"]] == 443
    scores = predictor.predict_batch(X)["duration"]
    assert scores[web].mean() > 5 * scores[~web].mean()
    assert predictor.threshold_for(0.25) == result.thresholds[0.25]
    assert predictor.threshold_for(0.01) is None and predictor.horizon_s == 2.0


def test_predictor_refuses_categorical_trees():
    from sklearn.ensemble import HistGradientBoostingClassifier

    X = np.c_[np.arange(200) % 4, np.arange(200) % 7]
    model = HistGradientBoostingClassifier(max_iter=3, categorical_features=[0]).fit(X, X[:, 0] == 1)
    with pytest.raises(ModelError, match="categorical"):
        CompactEnsemble(model)


# --- the commands -----------------------------------------------------------------------
def test_train_and_evaluate_commands(tmp_path, capsys):
    flows = write_records(synthetic_records(groups=8, flows=80), tmp_path / "flows.parquet")
    model_dir = tmp_path / "model"
    assert cli.main(["train", str(flows), "-o", str(model_dir), "--kind", "first_packet"]) == 0
    assert (model_dir / MODEL_FILE).exists() and (model_dir / MANIFEST_FILE).exists()
    report = tmp_path / "eval.json"
    assert cli.main(["evaluate", str(flows), "--model", str(model_dir), "--json", str(report)]) == 0
    out = capsys.readouterr().out
    assert "| fixed rf2 |" in out and "| oracle | full | 0.25 |" in out and "| predictive (HGB) |" in out
    data = json.loads(report.read_text())
    trained_on = json.loads((model_dir / MANIFEST_FILE).read_text())["training_data"]["train_flows"]
    assert data["excluded_training_flows"] == trained_on and data["flows"] == 8 * 80 - trained_on
    policies = {row["policy"] for row in data["policies"]}
    assert {"controller", "none", "fixed rf1", "fixed rf2", "random", "oracle"} <= policies


def test_commands_fail_cleanly_on_bad_input(tmp_path, capsys):
    assert cli.main(["evaluate", str(tmp_path / "none.parquet"), "--model", str(tmp_path)]) == 1
    assert "no manifest.json" in capsys.readouterr().err
    assert cli.main(["train", str(tmp_path / "none.parquet"), "-o", str(tmp_path / "m")]) == 1
    assert "no such flow-record file" in capsys.readouterr().err


def test_shipped_default_model_is_an_aging_model_that_loads_and_matches_this_code():
    predictor = Predictor.load("models/default")
    assert isinstance(predictor, AgingPredictor) and predictor.feature_names == AGING_FEATURE_NAMES
    manifest = predictor.manifest
    assert manifest["kind"] == "aging" and manifest["training_data"]["test_groups"]
    assert set(manifest["training_data"]["sources"]) == {"pcap", "binetflow"}
    assert 0 < len(manifest["probe_rows"]) <= artifact.MAX_PROBE_ROWS
    assert 0.0 <= predictor.alive_probability(manifest["probe_rows"][0]) <= 1.0


# --- the aging model ------------------------------------------------------------------
def aging_records(groups: int = 8, flows: int = 60, seed: int = 1):
    """Flows with milestone counts: long busy web flows, short DNS exchanges."""
    rng = np.random.default_rng(seed)
    rows = []
    for g in range(groups):
        t = 1000.0 * g
        for i in range(flows):
            t += rng.exponential(0.5)
            web = rng.random() < 0.4
            duration = float(rng.exponential(20.0) if web else rng.exponential(0.1))
            rate = rng.uniform(5, 20) if web else 20.0
            packets = int(1 + duration * rate)
            counts = tuple((1 + int(min(m, duration) * rate), 500 * (1 + int(min(m, duration) * rate)), 1)
                           for m in MILESTONES_S)  # fmt: skip
            rows.append(FlowRecord(
                flow_id=g * 100000 + i + 1, ts_start=t, ip_version=4, proto=6 if web else 17,
                src_addr=f"10.0.{g}.{i % 7}", dst_addr="192.0.2.80", sport=40000 + i, dport=443 if web else 53,
                first_ip_len=60, first_tcp_flags=2 if web else None, source="pcap", duration_s=duration,
                packets=packets, bytes=packets * 500, truncated=False, end_reason="fin" if web else "idle",
                group=f"cap{g}.pcap", state_packets=min(3, packets) if web else 1, milestones=counts,
            ))  # fmt: skip
    return records_to_frame(rows)


@pytest.fixture(scope="module")
def aging_model(tmp_path_factory):
    frame = aging_records()
    result = train_aging(frame, AgingTrainConfig(quiet_rows=True))
    directory = tmp_path_factory.mktemp("aging")
    save_model(directory, result.estimators, result.manifest(), kind=artifact.KIND_AGING)
    return result, directory


def test_aging_model_round_trips_with_real_probe_rows(aging_model):
    result, directory = aging_model
    predictor = Predictor.load(directory)
    assert isinstance(predictor, AgingPredictor) and predictor.scores_quiet_flows
    manifest = predictor.manifest
    held_out = result.rows.X[result.test]
    probe = np.array([[np.nan if v is None else v for v in row] for row in manifest["probe_rows"]])
    assert len(probe) == min(len(held_out), artifact.MAX_PROBE_ROWS)
    assert all(any(np.allclose(row, h, equal_nan=True) for h in held_out) for row in probe[:20])
    expected = result.estimators["alive"].predict_proba(held_out)[:, 1]
    assert [predictor.alive_probability(r) for r in held_out.tolist()] == pytest.approx(expected.tolist())
    batch = predictor.predict_batch(held_out)
    assert np.allclose(batch["alive"], expected) and (batch["remaining_packets"] >= 0).all()
    assert manifest["metrics_heldout"]["alive_roc_auc"] > 0.5


def test_a_model_whose_walker_disagrees_on_its_probe_rows_is_refused(aging_model, monkeypatch):
    """A walker that routes one split differently on the real rows the manifest stores is caught at load."""
    _result, directory = aging_model
    loaded = load_model(directory)
    probe = predictor_module.probe_matrix(loaded.manifest)
    original_init = CompactEnsemble.__init__

    def broken_init(self, estimator):
        original_init(self, estimator)
        node = self.roots[0]  # the first tree's root split: every probe row passes it
        values = probe[:, self.feature[node]]
        values = values[~np.isnan(values)]
        self.threshold[node] = float(np.median(values)) - 1e-9 if self.threshold[node] >= np.median(values) \
            else float(np.median(values)) + 1e-9  # moves the median row to the other side

    monkeypatch.setattr(CompactEnsemble, "__init__", broken_init)
    with pytest.raises(ModelError, match="disagrees with scikit-learn on the model's probe rows"):
        Predictor.load(directory)


def test_train_command_writes_an_aging_model_by_default(tmp_path, capsys):
    flows = write_records(aging_records(groups=6, flows=50), tmp_path / "flows.parquet")
    model_dir = tmp_path / "aging"
    assert cli.main(["train", str(flows), "-o", str(model_dir), "--fit-all", "--quiet-rows",
                     "--drop-features", "port_class"]) == 0  # fmt: skip
    assert "aging model written" in capsys.readouterr().out
    predictor = Predictor.load(model_dir)
    assert predictor.manifest["drop_features"] == ["port_class"] and predictor.manifest["quiet_rows"]
    assert cli.main(["train", str(flows), "-o", str(model_dir), "--milestones", "3"]) == 2


def test_first_packet_models_fit_on_records_without_first_packet_sizes():
    """Argus records alone (no first-packet size or flags: all-missing columns) still train."""
    frame = synthetic_records(groups=4, flows=40)
    frame["source"] = "binetflow"
    frame["first_ip_len"] = pd.array([None] * len(frame), dtype="Int32")
    frame["first_tcp_flags"] = pd.array([None] * len(frame), dtype="Int16")
    result = train(frame, TrainConfig(horizon_s=2.0, report_delay_s=5.0, test_share=0.25, seed=0))
    assert np.isnan(result.data.X[:, COL["first_ip_len"]]).all()
    assert np.isfinite(result.estimators["duration"].predict(result.data.X[:5])).all()
