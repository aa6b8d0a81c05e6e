"""Which flows belong to a model's training captures: by capture name AND content.

A manifest lists the capture files (the records' ``group``) a model was trained
on, so that an evaluation leaves them out. A name alone is not enough: another
source's ``dns.pcap`` is not nDPI's ``dns.pcap`` (it would be dropped from a
judgement it belongs to), and a training capture under a new name is still
training data. So a manifest also keeps a fingerprint of each training group's
flows, and a group is left out only when its name and its fingerprint match.
Manifests without fingerprints fall back to names.
"""

from __future__ import annotations

import hashlib
from typing import Dict, Iterable, Mapping, Optional, Set

import numpy as np
import pandas as pd

#: The manifest's ``training_data`` key holding ``{group: fingerprint}``.
FINGERPRINTS_KEY = "train_group_fingerprints"
_FIELDS = ("flow_id", "ts_start", "packets", "bytes")


def group_fingerprints(frame: pd.DataFrame, groups: Optional[Iterable[str]] = None) -> Dict[str, str]:
    """``{group: sha256 of its flows}`` over (flow_id, ts_start, packets, bytes), in a canonical order.

    Args:
        frame: flow records (``prism.telemetry.records`` columns).
        groups: only these groups (default: every group of ``frame``).
    """
    wanted = None if groups is None else set(groups)
    result: Dict[str, str] = {}
    for group, rows in frame.groupby("group", sort=True):
        if wanted is not None and group not in wanted:
            continue
        columns = [rows[name].to_numpy() for name in _FIELDS]
        order = np.lexsort(columns[::-1])
        digest = hashlib.sha256()
        for column, dtype in zip(columns, ("<u8", "<f8", "<i8", "<i8")):
            digest.update(np.ascontiguousarray(column[order].astype(dtype)).tobytes())
        result[str(group)] = digest.hexdigest()[:32]
    return result


def training_groups_facts(frame: pd.DataFrame, train_groups: Iterable[str]) -> Dict[str, object]:
    """The manifest's ``train_groups`` and their fingerprints."""
    names = sorted(set(train_groups))
    return {"train_groups": names, FINGERPRINTS_KEY: group_fingerprints(frame, names)}


def trained_groups(manifest: Mapping, frame: pd.DataFrame) -> Set[str]:
    """The groups of ``frame`` that are the training captures of the model ``manifest`` describes."""
    training = manifest.get("training_data", {}) if manifest else {}
    names = set(training.get("train_groups", []))
    fingerprints = training.get(FINGERPRINTS_KEY)
    present = names & set(frame["group"].unique())
    if not present or fingerprints is None:
        return present
    seen = group_fingerprints(frame, present)
    return {group for group in present if fingerprints.get(group) == seen.get(group)}
