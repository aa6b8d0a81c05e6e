"""Training captures are recognised by name and content, never by name alone."""

from __future__ import annotations

import glob
import json
from pathlib import Path

import pandas as pd

from prism.telemetry.records import read_records
from prism.telemetry.training_groups import FINGERPRINTS_KEY, group_fingerprints, trained_groups, training_groups_facts

REPO = Path(__file__).resolve().parents[2]


def frame_of(rows):
    return pd.DataFrame(rows, columns=["flow_id", "ts_start", "packets", "bytes", "group"])


TRAINING = frame_of([(1, 10.0, 5, 500, "dns.pcap"), (2, 11.0, 3, 300, "dns.pcap"), (3, 1.0, 9, 900, "web.pcap")])


def manifest_of(frame, groups):
    return {"training_data": training_groups_facts(frame, groups)}


def test_a_training_capture_is_recognised_in_any_row_order():
    manifest = manifest_of(TRAINING, ["dns.pcap", "web.pcap"])
    shuffled = TRAINING.iloc[[2, 1, 0]].reset_index(drop=True)
    assert trained_groups(manifest, shuffled) == {"dns.pcap", "web.pcap"}


def test_another_capture_under_a_training_name_is_kept():
    manifest = manifest_of(TRAINING, ["dns.pcap"])
    other = frame_of([(7, 10.0, 5, 500, "dns.pcap")])  # another source's dns.pcap
    assert trained_groups(manifest, other) == set()
    changed = TRAINING.copy()
    changed.loc[0, "packets"] = 6  # one counter differs: not the same capture
    assert trained_groups(manifest, changed) == set()


def test_a_manifest_without_fingerprints_falls_back_to_names():
    manifest = {"training_data": {"train_groups": ["dns.pcap"]}}
    assert trained_groups(manifest, frame_of([(7, 10.0, 5, 500, "dns.pcap")])) == {"dns.pcap"}
    assert trained_groups({}, TRAINING) == set()


def test_fingerprints_differ_between_groups_and_ignore_other_groups():
    prints = group_fingerprints(TRAINING)
    assert set(prints) == {"dns.pcap", "web.pcap"} and prints["dns.pcap"] != prints["web.pcap"]
    assert group_fingerprints(TRAINING, ["web.pcap"]) == {"web.pcap": prints["web.pcap"]}


def test_the_shipped_models_recognise_their_shipped_training_captures():
    frame = read_records(sorted(glob.glob(str(REPO / "data" / "flows" / "*.parquet"))))
    for model in ("default", "first_packet"):
        manifest = json.loads((REPO / "models" / model / "manifest.json").read_text())
        names = set(manifest["training_data"]["train_groups"])
        assert FINGERPRINTS_KEY in manifest["training_data"]
        assert trained_groups(manifest, frame) == names
