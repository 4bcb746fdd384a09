"""Training stage, model level: a LightGBM land-cover classifier, its files and its predictions.

Plain functions, no Prefect (a flow will wrap them); files are written only into folders given
by the caller. Scoring a model on a test set (metrics.json and the validation plots) is in
tasks/training/metrics.py.

- `train_model`: multiclass LightGBM with early stopping on a validation set and optional
  balanced class weights. Legend codes (e.g. 1, 2, 5, 8) are mapped to 0..k-1 internally; the
  sorted codes are the order of the model's outputs and are kept on the booster
  (`booster.lcms_classes`) and in the saved metadata.
- `save_model` / `load_model`: `model.txt` (LightGBM text format, with feature names) and
  `model.json` beside it (legend of the classes, output order, feature names, lineage, time).
- `predict` (codes and percent from one pass), `predict_labels` (legend codes, uint8) and
  `predict_proba_percent` (uint8 percent, (n, k)); `predict_proba` gives the exact probabilities.
- `as_matrix` / `as_labels` check and convert feature matrices and label vectors.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import lightgbm as lgb
import numpy as np
from sklearn.utils.class_weight import compute_sample_weight

from lcms.legend import NO_DATA, LegendClass
from lcms.lineage import code_version

log = logging.getLogger(__name__)

MODEL_FILE = "model.txt"
METADATA_FILE = "model.json"
METADATA_FORMAT = "lcms-lightgbm-classifier/1"
CLASSES_ATTR = "lcms_classes"

DEFAULT_PARAMS: dict[str, Any] = {
    "learning_rate": 0.1,
    "num_leaves": 31,
    "min_data_in_leaf": 20,
    "feature_fraction": 0.9,
    "metric": "multi_logloss",
    "deterministic": True,
    "force_row_wise": True,
    "verbosity": -1,
}

# Characters LightGBM refuses (JSON specials) or silently rewrites (whitespace) in feature names.
_JSON_SPECIALS = '",:[]{}'
_BAD_NAME_CHARS = set(_JSON_SPECIALS) | {" ", "\t", "\n"}


# --------------------------------------------------------------------------- input checks


def _check_feature_names(feature_names: Sequence[str], n_columns: int | None = None) -> list[str]:
    names = [str(n) for n in feature_names]
    if not names:
        raise ValueError("feature_names is empty")
    if len(set(names)) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"feature names must be unique; duplicated: {dupes}")
    bad = [n for n in names if set(n) & _BAD_NAME_CHARS]
    if bad:
        raise ValueError(f"feature names must not contain whitespace or any of {_JSON_SPECIALS}: {bad[:5]}")
    if n_columns is not None and len(names) != n_columns:
        raise ValueError(f"{len(names)} feature names for {n_columns} feature columns")
    return names


def as_matrix(X: Any, feature_names: Sequence[str], what: str) -> np.ndarray:
    """A 2-D float array with the columns in `feature_names` order (pandas frames are reordered)."""
    if hasattr(X, "columns"):
        missing = [n for n in feature_names if n not in X.columns]
        if missing:
            raise ValueError(f"{what} lacks feature columns {missing[:5]}")
        X = X[list(feature_names)].to_numpy()
    X = np.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"{what} must be 2-D (samples × features), got shape {X.shape}")
    if X.shape[1] != len(feature_names):
        raise ValueError(f"{what} has {X.shape[1]} columns but there are {len(feature_names)} feature names")
    if X.shape[0] == 0:
        raise ValueError(f"{what} has no rows")
    if X.dtype not in (np.float32, np.float64):
        X = X.astype(np.float32)
    return X


def as_labels(y: Any, n_rows: int, what: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1:
        y = y.reshape(-1) if y.ndim == 2 and 1 in y.shape else y
    if y.ndim != 1:
        raise ValueError(f"{what} must be 1-D, got shape {y.shape}")
    if len(y) != n_rows:
        raise ValueError(f"{what} has {len(y)} labels for {n_rows} rows of features")
    if not np.issubdtype(y.dtype, np.integer):
        if np.issubdtype(y.dtype, np.floating) and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
            y = y.astype(np.int64)
        else:
            raise ValueError(f"{what} must hold integer legend codes, got dtype {y.dtype}")
    return y.astype(np.int64)


def _classes_of(booster: lgb.Booster) -> list[int] | None:
    classes = getattr(booster, CLASSES_ATTR, None)
    return None if classes is None else [int(c) for c in classes]


# --------------------------------------------------------------------------- training


def train_model(
    X_train: Any,
    y_train: Any,
    X_val: Any,
    y_val: Any,
    feature_names: Sequence[str],
    *,
    params: dict | None = None,
    class_weight: Literal[None, "balanced"] = None,
    num_boost_round: int = 500,
    early_stopping_rounds: int = 20,
    seed: int = 0,
) -> lgb.Booster:
    """Train a multiclass LightGBM model with early stopping on (X_val, y_val).

    Labels are legend codes; the k codes present in `y_train` (sorted) become outputs 0..k-1,
    recorded as `booster.lcms_classes` (a plain Python attribute: LightGBM boosters hold no user
    metadata). `params` override `DEFAULT_PARAMS` (objective, num_class and seed are always set
    here). `class_weight="balanced"` weights the training samples by n / (k × class count).
    """
    names = _check_feature_names(feature_names)
    X_train = as_matrix(X_train, names, "X_train")
    X_val = as_matrix(X_val, names, "X_val")
    y_train = as_labels(y_train, X_train.shape[0], "y_train")
    y_val = as_labels(y_val, X_val.shape[0], "y_val")
    if class_weight not in (None, "balanced"):
        raise ValueError(f"class_weight must be None or 'balanced', got {class_weight!r}")
    if num_boost_round < 1 or early_stopping_rounds < 1:
        raise ValueError("num_boost_round and early_stopping_rounds must be at least 1")

    nan_only = np.flatnonzero(np.isnan(X_train).all(axis=0))
    if nan_only.size:
        raise ValueError(f"feature columns with only NaN in the training set: {[names[i] for i in nan_only]}")
    if NO_DATA in y_train or NO_DATA in y_val:
        raise ValueError(f"label {NO_DATA} (no data) in the training/validation labels: drop unlabelled samples")
    classes = np.unique(y_train)
    if classes.size < 2:
        raise ValueError(
            f"the training set has only one class ({classes.tolist()}): a classifier needs at least two classes"
        )
    unseen = np.setdiff1d(np.unique(y_val), classes)
    if unseen.size:
        raise ValueError(f"validation labels {unseen.tolist()} do not occur in the training set")

    idx_train = np.searchsorted(classes, y_train)
    idx_val = np.searchsorted(classes, y_val)
    full_params = {**DEFAULT_PARAMS, **(params or {})}
    full_params.update(objective="multiclass", num_class=int(classes.size), seed=int(seed))
    weights = compute_sample_weight("balanced", y_train) if class_weight == "balanced" else None

    train_set = lgb.Dataset(X_train, label=idx_train, weight=weights, feature_name=names, free_raw_data=True)
    val_set = lgb.Dataset(X_val, label=idx_val, reference=train_set, free_raw_data=True)
    booster = lgb.train(
        full_params,
        train_set,
        num_boost_round=num_boost_round,
        valid_sets=[val_set],
        valid_names=["val"],
        callbacks=[lgb.early_stopping(early_stopping_rounds, first_metric_only=True, verbose=False)],
    )
    setattr(booster, CLASSES_ATTR, [int(c) for c in classes])
    booster.lcms_class_weight = class_weight
    log.info(
        "trained %d classes on %d samples × %d features: best iteration %d of %d",
        classes.size,
        X_train.shape[0],
        X_train.shape[1],
        booster.best_iteration,
        booster.current_iteration(),
    )
    return booster


# --------------------------------------------------------------------------- model files


def _code_version() -> dict[str, str | None]:
    """The lcms version and code revision, under the keys model.json has always used."""
    code = code_version()
    return {"lcms_version": code["lcms_version"], "git_commit": code["revision"]}


def _jsonable(value: Any) -> Any:
    """Params and lineage as plain JSON (numpy scalars, paths, tuples...)."""
    return json.loads(json.dumps(value, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def save_model(
    booster: lgb.Booster,
    folder: Path,
    legend: Sequence[LegendClass],
    classes: Sequence[int],
    lineage: dict,
) -> Path:
    """Write folder/model.txt (trees up to the best iteration) and folder/model.json; return the folder.

    `classes` are the legend codes in the order of the model's outputs (as `train_model` sets
    them); `lineage` describes the data and is stored under metadata["lineage"]["data"], beside
    the training params and the code version (lcms version, git commit).
    """
    folder = Path(folder)
    classes = [int(c) for c in classes]
    own = _classes_of(booster)
    if own is not None and own != classes:
        raise ValueError(f"classes {classes} differ from the model's output classes {own}")
    if len(classes) != booster.num_model_per_iteration():
        raise ValueError(f"{len(classes)} classes for a model with {booster.num_model_per_iteration()} outputs")
    by_code = {c.code: c for c in legend}
    missing = [c for c in classes if c not in by_code]
    if missing:
        raise ValueError(f"classes {missing} are not in the legend")

    best = booster.best_iteration if booster.best_iteration > 0 else booster.current_iteration()
    folder.mkdir(parents=True, exist_ok=True)
    booster.save_model(folder / MODEL_FILE, num_iteration=best, importance_type="gain")
    metadata = {
        "format": METADATA_FORMAT,
        "model_file": MODEL_FILE,
        "classes": classes,  # legend code of each model output, in output order
        "legend": [{"code": c, "name": by_code[c].name, "color": by_code[c].color} for c in classes],
        "feature_names": booster.feature_name(),
        "num_iteration": int(best),
        "lineage": {
            "data": _jsonable(lineage),
            "params": _jsonable(booster.params),
            "class_weight": getattr(booster, "lcms_class_weight", None),
            **_code_version(),
        },
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    (folder / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
    return folder


def load_model(folder: Path) -> tuple[lgb.Booster, dict]:
    """Read what `save_model` wrote: (booster, metadata)."""
    folder = Path(folder)
    metadata = json.loads((folder / METADATA_FILE).read_text())
    if metadata.get("format") != METADATA_FORMAT:
        raise ValueError(f"{folder / METADATA_FILE}: unknown format {metadata.get('format')!r}")
    booster = lgb.Booster(model_file=str(folder / metadata.get("model_file", MODEL_FILE)))
    if booster.feature_name() != metadata["feature_names"]:
        raise ValueError(f"{folder}: feature names of model.txt and model.json differ")
    if booster.num_model_per_iteration() != len(metadata["classes"]):
        raise ValueError(
            f"{folder}: model.txt has {booster.num_model_per_iteration()} outputs, model.json lists "
            f"{len(metadata['classes'])} classes"
        )
    setattr(booster, CLASSES_ATTR, [int(c) for c in metadata["classes"]])
    booster.lcms_class_weight = metadata["lineage"].get("class_weight")
    return booster, metadata


# --------------------------------------------------------------------------- prediction


def predict_proba(booster: lgb.Booster, metadata: dict, X: Any, num_threads: int = 0) -> np.ndarray:
    """Class probabilities as float64, shape (n, k), columns in metadata["classes"] order."""
    X = as_matrix(X, metadata["feature_names"], "X")
    proba = booster.predict(X, num_iteration=metadata.get("num_iteration") or None, num_threads=num_threads)
    return np.asarray(proba, dtype=np.float64).reshape(X.shape[0], len(metadata["classes"]))


def predict_proba_percent(booster: lgb.Booster, metadata: dict, X: Any, num_threads: int = 0) -> np.ndarray:
    """Class probabilities as uint8 percent, shape (n, k), columns in metadata["classes"] order.

    `num_threads` 0 lets LightGBM use every core; give 1 inside Dask workers that run in parallel.
    """
    return np.clip(np.rint(predict_proba(booster, metadata, X, num_threads) * 100), 0, 100).astype(np.uint8)


def codes_of(proba: np.ndarray, classes: Sequence[int]) -> np.ndarray:
    """The legend code (uint8) of each row's most probable column; `classes` are the columns' codes."""
    codes = np.asarray(classes)
    if codes.min() < 0 or codes.max() > 255:
        raise ValueError(f"class codes {codes.tolist()} do not fit uint8")
    return codes.astype(np.uint8)[np.argmax(proba, axis=1)]


def predict(booster: lgb.Booster, metadata: dict, X: Any, num_threads: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Legend codes (n,) uint8 and probabilities in percent (n, k) uint8, from one prediction pass.

    Codes come from the exact probabilities, so rounding to percent never changes the winner.
    """
    proba = predict_proba(booster, metadata, X, num_threads)
    return codes_of(proba, metadata["classes"]), np.clip(np.rint(proba * 100), 0, 100).astype(np.uint8)


def predict_labels(booster: lgb.Booster, metadata: dict, X: Any) -> np.ndarray:
    """The most probable legend code of each row, uint8."""
    return codes_of(predict_proba(booster, metadata, X), metadata["classes"])
