"""Model artifacts: a skops file plus a JSON manifest, written atomically and checked on load.

A model directory holds ``model.skops`` (a dict of fitted estimators by name,
see ``models.estimator``) and ``manifest.json``. Loading never unpickles:
skops rebuilds only the types listed in ``TRUSTED_TYPES``, and a model whose
manifest does not match this code (schema version, feature names and order),
whose file is missing or differs from the digest in its manifest, or that
holds any other type, is refused with a ``ModelError`` saying what to do.

Two kinds of model (manifest ``kind``): ``first_packet`` (``prism.policy.features``
rows of a flow's first packet, for ``prism.policy.predictive``; the kind of
manifests without the key) and ``aging`` (``prism.policy.aging_features`` rows of a
live flow at an age milestone, for ``prism.policy.aging``). Every manifest
carries ``probe_rows``: up to ``MAX_PROBE_ROWS`` real held-out feature rows on
which ``models.predictor`` checks, at load, that its compact tree walker gives
scikit-learn's numbers.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import platform
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Dict, List, Mapping, Optional, Union

from prism.policy.aging_features import AGING_FEATURE_NAMES
from prism.atomic import atomic_write_bytes
from prism.telemetry.records import READABLE_SCHEMA_VERSIONS, SCHEMA_VERSION

from prism.policy.features import FEATURE_NAMES

MODEL_FILE = "model.skops"
MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = "prism-spe-model"
MANIFEST_VERSION = 1

#: Types (beyond skops' defaults: builtins, numpy arrays and dtypes) a model file may hold.
TRUSTED_TYPES = (
    "sklearn.ensemble._hist_gradient_boosting.gradient_boosting.HistGradientBoostingClassifier",
    "sklearn.ensemble._hist_gradient_boosting.gradient_boosting.HistGradientBoostingRegressor",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn.ensemble._hist_gradient_boosting.binning._BinMapper",
    "sklearn._loss.loss.HalfBinomialLoss",
    "sklearn._loss.loss.HalfSquaredError",
    "sklearn._loss.link.LogitLink",
    "sklearn._loss.link.IdentityLink",
    "sklearn._loss.link.Interval",
    "models.estimator.ServicePortRate",
    "models.estimator.ServicePortMean",
)
#: Every type a model file may name (read from its ``schema.json`` before loading):
#: skops trusts any scikit-learn estimator by default, PRISM only these.
ALLOWED_TYPES = frozenset(TRUSTED_TYPES) | {
    "builtins.dict", "builtins.list", "builtins.tuple", "builtins.str", "builtins.int",
    "builtins.float", "builtins.bool", "numpy.ndarray", "numpy.dtype", "numpy.float64",
    "numpy.int64", "numpy.uint64", "numpy.bool_", "numpy.random._generator.Generator",
    "sklearn._loss._loss.CyHalfBinomialLoss", "sklearn._loss._loss.CyHalfSquaredError",
    "sklearn.preprocessing._label.LabelEncoder",
}  # fmt: skip
SCHEMA_MEMBER = "schema.json"
KIND_FIRST_PACKET = "first_packet"
KIND_AGING = "aging"
#: Real held-out feature rows stored in a manifest for the load-time check (at most).
MAX_PROBE_ROWS = 256
#: Estimators a first_packet model file must hold, by name -> class name.
REQUIRED_MODELS = {
    "alive": "HistGradientBoostingClassifier",
    "duration": "HistGradientBoostingRegressor",
    "packets": "HistGradientBoostingRegressor",
    "bytes": "HistGradientBoostingRegressor",
    "baseline_alive": "ServicePortRate",
    "baseline_duration": "ServicePortMean",
    "baseline_packets": "ServicePortMean",
    "baseline_bytes": "ServicePortMean",
}
#: Estimators an aging model file must hold.
REQUIRED_AGING_MODELS = {
    "alive": "HistGradientBoostingClassifier",  #: P(the flow lives the horizon more)
    "remaining_packets": "HistGradientBoostingRegressor",  #: log1p(packets still to come)
}
#: kind -> (feature names, required estimators).
KINDS = {
    KIND_FIRST_PACKET: (FEATURE_NAMES, REQUIRED_MODELS),
    KIND_AGING: (AGING_FEATURE_NAMES, REQUIRED_AGING_MODELS),
}
LIBRARIES = ("numpy", "scipy", "sklearn", "skops", "pandas", "pyarrow")


class ModelError(Exception):
    """A model directory that cannot be used; the message says why and what to do."""


@dataclass(frozen=True)
class LoadedModel:
    """A checked model: its estimators by name and its manifest."""

    estimators: Dict[str, object]
    manifest: dict
    directory: Path


def library_versions() -> Dict[str, str]:
    """Versions of Python and the libraries a model file depends on."""
    import importlib

    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        versions[name] = getattr(importlib.import_module(name), "__version__", "unknown")
    return versions


def file_digest(path: Path) -> str:
    """``sha256:<hex>`` of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return "sha256:" + digest.hexdigest()


def model_kind(manifest: Mapping) -> str:
    """The manifest's kind (``first_packet`` when it names none: manifests from before the aging model)."""
    return str(manifest.get("kind", KIND_FIRST_PACKET))


def probe_rows_json(rows) -> List[List[Optional[float]]]:
    """Feature rows as JSON values (NaN as null), at most ``MAX_PROBE_ROWS``, spread over the rows given."""
    import numpy as np

    X = np.asarray(rows, dtype=float)
    if len(X) > MAX_PROBE_ROWS:
        X = X[np.linspace(0, len(X) - 1, MAX_PROBE_ROWS).round().astype(int)]
    return [[None if math.isnan(v) else float(v) for v in row] for row in X.tolist()]


def save_model(directory, estimators: Mapping[str, object], manifest: Mapping, kind: str = KIND_FIRST_PACKET,
               probe_rows=None) -> Path:  # fmt: skip
    """Write ``model.skops`` and ``manifest.json`` into ``directory`` (each atomically).

    The model file is written first and the manifest, which names the model
    file's digest, last: a crash in between leaves a directory that ``load_model``
    refuses (digest mismatch), never a silently different model.

    Args:
        directory: the model directory (created if needed).
        estimators: fitted estimators by name (see ``KINDS``).
        manifest: training facts (horizon, data digest, metrics ...); the
            format, kind, schema version, feature names, library versions,
            probe rows and model digest are added here.
        kind: ``first_packet`` or ``aging``.
        probe_rows: real held-out feature rows (at least one; ``MAX_PROBE_ROWS``
            spread over them are kept); default: the manifest's ``probe_rows``.

    Returns:
        The manifest path.
    """
    import skops.io as sio

    directory = Path(directory)
    if kind not in KINDS:
        raise ModelError(f"cannot save: unknown model kind {kind!r} (one of {', '.join(KINDS)})")
    feature_names, required = KINDS[kind]
    missing = sorted(set(required) - set(estimators))
    if missing:
        raise ModelError(f"cannot save: estimators missing: {', '.join(missing)}")
    probe = probe_rows_json(probe_rows if probe_rows is not None else manifest.get("probe_rows", []))
    if not probe or any(len(row) != len(feature_names) for row in probe):
        raise ModelError(f"cannot save: probe_rows must be real feature rows of {len(feature_names)} columns")
    data = sio.dumps(dict(estimators), compression=zipfile.ZIP_DEFLATED, compresslevel=9)
    model_path = atomic_write_bytes(directory / MODEL_FILE, data)
    full = {
        "format": MANIFEST_FORMAT,
        "manifest_version": MANIFEST_VERSION,
        "kind": kind,
        "schema_version": SCHEMA_VERSION,
        "feature_names": list(feature_names),
        "model_file": MODEL_FILE,
        "model_digest": file_digest(model_path),
        "libraries": library_versions(),
        **{k: v for k, v in manifest.items() if k not in ("format", "model_digest", "kind", "probe_rows")},
        "probe_rows": probe,
    }
    text = json.dumps(full, indent=2, sort_keys=False, allow_nan=False) + "\n"
    return atomic_write_bytes(directory / MANIFEST_FILE, text.encode())


def read_manifest(directory) -> dict:
    """Read and check a model directory's manifest (not the model file).

    Raises:
        ModelError: missing or unreadable manifest, or one that does not match this code.
    """
    directory = Path(directory)
    path = directory / MANIFEST_FILE
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelError(f"{directory}: no {MANIFEST_FILE}; not a PRISM model directory "
                         f"(create one with `prism train FLOWS -o {directory}`)") from None  # fmt: skip
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: unreadable manifest ({exc})") from None
    problems = manifest_problems(manifest)
    if problems:
        raise ModelError(f"{path}: " + "; ".join(problems) + "; retrain with `prism train`")
    return manifest


def manifest_problems(manifest) -> List[str]:
    """What makes a manifest unusable by this code (empty list: none)."""
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        return [f"not a {MANIFEST_FORMAT} manifest"]
    problems = []
    if manifest.get("manifest_version") != MANIFEST_VERSION:
        problems.append(f"manifest version {manifest.get('manifest_version')}, expected {MANIFEST_VERSION}")
    if manifest.get("schema_version") not in READABLE_SCHEMA_VERSIONS:  # v1 columns are all in v2
        problems.append(
            f"trained on flow-record schema v{manifest.get('schema_version')}, this PRISM uses v{SCHEMA_VERSION}"
        )
    kind = model_kind(manifest)
    if kind not in KINDS:
        return problems + [f"unknown model kind {kind!r} (this PRISM knows {', '.join(KINDS)})"]
    feature_names = KINDS[kind][0]
    names = manifest.get("feature_names")
    if names != list(feature_names):
        if not isinstance(names, list):
            problems.append("no feature_names list")
        else:
            extra = [n for n in names if n not in feature_names]
            absent = [n for n in feature_names if n not in names]
            detail = f"unknown {extra}, " if extra else ""
            detail += f"missing {absent}" if absent else "same names in another order"
            problems.append(f"features differ from this code's ({detail})")
    for key in ("model_file", "model_digest", "horizon_s"):
        if key not in manifest:
            problems.append(f"no {key!r}")
    probe = manifest.get("probe_rows")
    if not isinstance(probe, list) or not probe:
        problems.append("no probe_rows (real feature rows the load-time check needs)")
    elif len(probe) > MAX_PROBE_ROWS or any(
        not isinstance(row, list) or len(row) != len(feature_names)
        or any(v is not None and not isinstance(v, (int, float)) for v in row) for row in probe
    ):  # fmt: skip
        problems.append(f"probe_rows must be at most {MAX_PROBE_ROWS} rows of {len(feature_names)} numbers or nulls")
    return problems


def load_model(directory) -> LoadedModel:
    """Load and check a model directory.

    Args:
        directory: holds ``manifest.json`` and the model file it names.

    Returns:
        The estimators and manifest.

    Raises:
        ModelError: anything that makes the model unusable, with the reason.
    """
    import skops.io as sio

    directory = Path(directory)
    manifest = read_manifest(directory)
    model_name = str(manifest["model_file"])
    if Path(model_name).name != model_name:
        raise ModelError(f"{directory}: manifest names a model file outside the directory: {model_name!r}")
    model_path = directory / model_name
    if not model_path.is_file():
        raise ModelError(f"{directory}: model file {model_name} is missing")
    # One read: the digest, the type checks and the load all see these same
    # bytes, so a file replaced during a reload cannot pass as another.
    try:
        data = model_path.read_bytes()
    except OSError as exc:
        raise ModelError(f"{model_path}: cannot be read ({exc})") from None
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    if digest != manifest["model_digest"]:
        raise ModelError(
            f"{model_path}: digest {digest} differs from the manifest's {manifest['model_digest']}; "
            "the file was changed or only partly written. Restore it or retrain."
        )
    try:
        named = types_in_file(io.BytesIO(data))
        untrusted = sio.get_untrusted_types(data=data)
    except Exception as exc:  # zipfile/json/skops raise assorted errors for a damaged file
        raise ModelError(f"{model_path}: not a readable skops file ({exc})") from None
    unexpected = sorted((named - ALLOWED_TYPES) | (set(untrusted) - set(TRUSTED_TYPES)))
    if unexpected:
        raise ModelError(f"{model_path}: holds types this PRISM does not trust: {', '.join(unexpected)}")
    try:
        estimators = sio.loads(data, trusted=list(TRUSTED_TYPES))
    except Exception as exc:
        raise ModelError(f"{model_path}: cannot be loaded ({type(exc).__name__}: {exc})") from None
    _check_estimators(estimators, model_path, model_kind(manifest))
    return LoadedModel(estimators=estimators, manifest=manifest, directory=directory)


def types_in_file(model_file: Union[Path, BinaryIO]) -> set:
    """Every ``module.class`` a skops file's schema names, read without loading anything."""
    with zipfile.ZipFile(model_file) as archive:
        schema = json.loads(archive.read(SCHEMA_MEMBER))
    found = set()
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if isinstance(node.get("__module__"), str) and isinstance(node.get("__class__"), str):
                found.add(f"{node['__module__']}.{node['__class__']}")
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return found


def _check_estimators(estimators, model_path: Path, kind: str) -> None:
    if not isinstance(estimators, dict):
        raise ModelError(f"{model_path}: holds a {type(estimators).__name__}, expected a dict of estimators")
    feature_names, required = KINDS[kind]
    for name, class_name in required.items():
        estimator = estimators.get(name)
        if type(estimator).__name__ != class_name:
            found = "nothing" if estimator is None else type(estimator).__name__
            raise ModelError(f"{model_path}: {name!r} should be a {class_name}, found {found}")
        if getattr(estimator, "n_features_in_", None) != len(feature_names):
            raise ModelError(
                f"{model_path}: {name!r} takes {getattr(estimator, 'n_features_in_', '?')} features, "
                f"this code computes {len(feature_names)}"
            )
