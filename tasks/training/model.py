"""Training stage, model level: a LightGBM land-cover classifier, its files and its predictions.

Plain functions, no Prefect (a flow will wrap them); files are written only into folders given
by the caller. Scoring a model on a test set (metrics.json and the validation plots) is in
tasks/training/metrics.py.

- `train_model`: multiclass LightGBM, either a fixed number of rounds on the training and
  validation rows together or with early stopping on the validation rows, and optional
  balanced class weights. Legend codes (e.g. 1, 2, 5, 8) are mapped to 0..k-1 internally; the
  sorted codes are the order of the model's outputs and are kept on the booster
  (`booster.lcms_classes`) and in the saved metadata.
- `save_model` / `load_model`: `model.txt` (LightGBM text format, with feature names) and
  `model.json` beside it (legend of the classes, output order, feature names, lineage, time).
- `predict` (codes and percent from one pass), `predict_labels` (legend codes, uint8) and
  `predict_proba_percent` (uint8 percent, (n, k)); `predict_proba` gives the exact probabilities.
- `as_matrix` / `as_labels` check and convert feature matrices and label vectors.
- `StoredRows`: rows of a stored feature matrix (the merged dataset's int16 `features`), read
  block by block as float32: LightGBM builds its binned dataset from it (`lightgbm.Sequence`), and
  `predict_proba` predicts it block by block, so no float32 copy of the whole matrix is ever made.
- `training_row_cap` / `stratified_rows`: how many training rows fit a memory setting, and which
  (a class-stratified, seeded random subset when there are more).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import lightgbm as lgb
import numpy as np
from sklearn.utils.class_weight import compute_sample_weight

from lcms.layout import SAMPLE_CHUNK
from lcms.legend import NO_DATA, LegendClass
from lcms.lineage import code_version
from tasks.features.tile import unpack

if TYPE_CHECKING:
    from lcms.config import TrainingConfig

log = logging.getLogger(__name__)

MODEL_FILE = "model.txt"
METADATA_FILE = "model.json"
METADATA_FORMAT = "lcms-lightgbm-classifier/1"
CLASSES_ATTR = "lcms_classes"

# The training stage's defaults (lcms.config.TrainingConfig, where they are documented and a user
# changes them); train_model's own defaults for callers that give no params.
DEFAULT_PARAMS: dict[str, Any] = {
    "learning_rate": 0.3,
    "num_leaves": 15,
    "min_data_in_leaf": 20,
    "feature_fraction": 0.3,
    "max_bin": 63,
    "max_delta_step": 1.0,
    "bin_construct_sample_cnt": 20_000,
    "metric": "multi_logloss",
    "deterministic": True,
    # Column-wise histograms: row-wise ones keep a second, row-major copy of the binned features.
    "force_col_wise": True,
    "verbosity": -1,
}

# What LightGBM holds per training row besides its binned features (one byte per column up to
# 255 bins): the score (float64), gradient and hessian (float32) of every class, the label, the
# weight and the row's index in bagging / partitions. Validation rows hold a score per class.
BYTES_PER_ROW_AND_CLASS = 16
BYTES_PER_ROW = 16
# Rows drawn to find the bin edges (LightGBM's bin_construct_sample_cnt, its default), and what
# finding them costs a while per sampled value: the float32 sample, LightGBM's double values and
# row indices, and allocator slack.
BIN_SAMPLE_ROWS = 200_000
BIN_SAMPLE_BYTES_PER_VALUE = 24

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


class StoredRows(lgb.Sequence):
    """Rows `rows` (increasing) of a stored (n, columns) feature matrix, as float32, block by block.

    `features` is the merged dataset's zarr array (int16 × 10000 with fill, or float32; read chunk
    by chunk, only the chunks that hold the rows) or a numpy array of the same. `train_model` finds
    the bin edges on `sample`, then LightGBM reads ranges of `batch_size` rows; single rows work
    too (one decoded block is cached), for LightGBM's own bin sampling. `has_value` collects the
    columns with a finite value among the blocks read by range.
    """

    def __init__(self, features: Any, rows: np.ndarray | None = None, batch_size: int = SAMPLE_CHUNK):
        if len(features.shape) != 2:
            raise ValueError(f"stored features must be 2-D (samples × columns), got shape {features.shape}")
        self.features = features
        self.rows = np.arange(features.shape[0], dtype=np.int64) if rows is None else np.asarray(rows, np.int64)
        n_stored = features.shape[0]
        if self.rows.size and (np.any(np.diff(self.rows) <= 0) or self.rows[0] < 0 or self.rows[-1] >= n_stored):
            raise ValueError("StoredRows needs increasing row indices within the stored features")
        self.batch_size = int(batch_size)
        self.shape = (len(self.rows), int(features.shape[1]))
        self.has_value = np.zeros(self.shape[1], dtype=bool)
        self._cached: tuple[int, np.ndarray | None] = (-1, None)

    def __len__(self) -> int:
        return self.shape[0]

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows start:stop of this selection as float32 (n, columns), NaN where missing."""
        rows = self.rows[start:stop]
        if rows.size == 0:
            return np.empty((0, self.shape[1]), dtype=np.float32)
        lo, hi = int(rows[0]), int(rows[-1]) + 1
        if hi - lo == rows.size:  # a contiguous run: a plain slice
            stored = self.features[lo:hi]
        elif isinstance(self.features, np.ndarray):
            stored = self.features[rows]
        else:  # zarr: only the chunks holding these rows
            stored = self.features.oindex[rows, :]
        values = unpack(np.asarray(stored))
        return values if values.dtype == np.float32 else values.astype(np.float32)

    def sample(self, n: int, seed: int = 0) -> np.ndarray:
        """All rows as float32 when there are at most `n`, else `n` of them drawn at random (seeded)."""
        picked = (
            self
            if len(self) <= n
            else StoredRows(
                self.features,
                np.sort(self.rows[np.random.default_rng(seed).choice(len(self), size=n, replace=False)]),
                self.batch_size,
            )
        )
        out = np.empty(picked.shape, dtype=np.float32)
        for start, block in picked.blocks():
            out[start : start + len(block)] = block
        return out

    def blocks(self):
        """(start, float32 block) over all rows, `batch_size` rows at a time."""
        for start in range(0, len(self), self.batch_size):
            yield start, self.read(start, min(start + self.batch_size, len(self)))

    def __getitem__(self, idx):
        if isinstance(idx, slice):
            start, stop, step = idx.indices(len(self))
            if step != 1:
                raise IndexError("StoredRows reads contiguous ranges only")
            block = self.read(start, stop)
            self.has_value |= np.isfinite(block).any(axis=0)
            return block
        i = int(idx) + (len(self) if int(idx) < 0 else 0)
        if not 0 <= i < len(self):
            raise IndexError(f"row {idx} of {len(self)}")
        first = i - i % self.batch_size
        if self._cached[0] != first:
            self._cached = (first, self.read(first, min(first + self.batch_size, len(self))))
        return self._cached[1][i - first].astype(np.float64)  # LightGBM's bin sampling takes float64 rows


def training_row_cap(max_memory_gib: float, n_columns: int, n_classes: int, bins_per_column: int = 255) -> int:
    """Training + validation rows whose LightGBM data fit `max_memory_gib`.

    Per row: the binned features (1 byte per column up to 255 bins, 2 up to 65535) and
    BYTES_PER_ROW + BYTES_PER_ROW_AND_CLASS × classes of scores, gradients and bookkeeping.
    """
    bin_bytes = 1 if bins_per_column <= 255 else 2
    per_row = n_columns * bin_bytes + BYTES_PER_ROW + BYTES_PER_ROW_AND_CLASS * n_classes
    return max(1, int(max_memory_gib * 2**30 // per_row))


def stratified_rows(rows: np.ndarray, y: np.ndarray, max_rows: int, seed: int = 0) -> np.ndarray:
    """About `max_rows` of `rows` (increasing), class by class in proportion to their counts.

    `y` holds the label of each of `rows`. With more rows than `max_rows`, every class keeps
    floor(max_rows × its count / all rows) of them, at least one, drawn at random (seeded), so the
    class shares, and with them the model's priors, stay those of the full set.
    """
    rows = np.asarray(rows, dtype=np.int64)
    if len(rows) <= max_rows:
        return rows
    rng = np.random.default_rng(seed)
    kept = []
    for code in np.unique(y):
        of_class = rows[y == code]
        n = max(1, len(of_class) * max_rows // len(rows))
        kept.append(rng.choice(of_class, size=min(n, len(of_class)), replace=False))
    return np.sort(np.concatenate(kept))


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


def _rows_or_matrix(X: Any, names: list[str], what: str) -> Any:
    """`StoredRows` as they are (checked), anything else through `as_matrix`."""
    if not isinstance(X, StoredRows):
        return as_matrix(X, names, what)
    if X.shape[1] != len(names):
        raise ValueError(f"{what} has {X.shape[1]} columns but there are {len(names)} feature names")
    if len(X) == 0:
        raise ValueError(f"{what} has no rows")
    return X


def _check_some_value(has_value: np.ndarray, names: list[str]) -> None:
    nan_only = np.flatnonzero(~has_value)
    if nan_only.size:
        raise ValueError(f"feature columns with only NaN in the training set: {[names[i] for i in nan_only]}")


def _classes_of(booster: lgb.Booster) -> list[int] | None:
    classes = getattr(booster, CLASSES_ATTR, None)
    return None if classes is None else [int(c) for c in classes]


# --------------------------------------------------------------------------- training


def _joined(X_train: Any, y_train: np.ndarray, X_val: Any, y_val: np.ndarray) -> tuple[Any, np.ndarray]:
    """Training and validation rows as one training set (labels in the same row order).

    Stored rows of the same stored matrix stay `StoredRows` (their row indices joined, in increasing
    order, as StoredRows reads them); anything else becomes one float32 array.
    """
    if isinstance(X_train, StoredRows) and isinstance(X_val, StoredRows) and X_train.features is X_val.features:
        rows = np.concatenate([X_train.rows, X_val.rows])
        order = np.argsort(rows, kind="stable")
        if np.any(np.diff(rows[order]) == 0):
            raise ValueError("a row is both a training and a validation row")
        joined = StoredRows(X_train.features, rows[order], X_train.batch_size)
        return joined, np.concatenate([y_train, y_val])[order]
    parts = [X.read(0, len(X)) if isinstance(X, StoredRows) else X for X in (X_train, X_val)]
    return np.concatenate([np.asarray(p, dtype=np.float32) for p in parts]), np.concatenate([y_train, y_val])


def train_model(
    X_train: Any,
    y_train: Any,
    X_val: Any,
    y_val: Any,
    feature_names: Sequence[str],
    *,
    params: dict | None = None,
    class_weight: Literal[None, "balanced"] = None,
    num_boost_round: int = 50,
    early_stopping_rounds: int | None = None,
    seed: int = 0,
) -> lgb.Booster:
    """Train a multiclass LightGBM model: `num_boost_round` rounds, or fewer with early stopping.

    `early_stopping_rounds` None: exactly `num_boost_round` rounds on the training and validation
    rows together (no row is kept out of the model); a number: the validation rows only judge, and
    training stops after that many rounds without a better validation multi_logloss (the model
    keeps the trees up to the best round). `booster.best_iteration` is the number of rounds the
    model keeps, in both cases.

    Labels are legend codes; the k codes present in `y_train` (sorted) become outputs 0..k-1,
    recorded as `booster.lcms_classes` (a plain Python attribute: LightGBM boosters hold no user
    metadata). `params` override `DEFAULT_PARAMS` (objective, num_class and seed are always set
    here). `class_weight="balanced"` weights the training samples by n / (k × class count).

    The features may be arrays (float32 as given, other dtypes converted) or `StoredRows` (the
    merged dataset's stored rows): LightGBM then bins them block by block, so memory holds the
    binned dataset (one byte per value) and one block, never a float32 copy of all the rows.
    """
    names = _check_feature_names(feature_names)
    X_train = _rows_or_matrix(X_train, names, "X_train")
    X_val = _rows_or_matrix(X_val, names, "X_val")
    y_train = as_labels(y_train, X_train.shape[0], "y_train")
    y_val = as_labels(y_val, X_val.shape[0], "y_val")
    if class_weight not in (None, "balanced"):
        raise ValueError(f"class_weight must be None or 'balanced', got {class_weight!r}")
    if num_boost_round < 1 or (early_stopping_rounds is not None and early_stopping_rounds < 1):
        raise ValueError("num_boost_round and early_stopping_rounds must be at least 1")

    if not isinstance(X_train, StoredRows):  # stored rows are checked as LightGBM reads them, below
        _check_some_value(~np.isnan(X_train).all(axis=0), names)
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

    if early_stopping_rounds is None:  # nothing to judge: the validation rows train too
        X_train, y_train = _joined(X_train, y_train, X_val, y_val)
    idx_train = np.searchsorted(classes, y_train)
    idx_val = np.searchsorted(classes, y_val)
    full_params = {**DEFAULT_PARAMS, **(params or {})}
    full_params.update(objective="multiclass", num_class=int(classes.size), seed=int(seed))
    weights = compute_sample_weight("balanced", y_train) if class_weight == "balanced" else None

    if isinstance(X_train, StoredRows):
        # Bin edges from a float32 sample (all rows up to bin_construct_sample_cnt, as LightGBM takes), then
        # the rows pushed block by block into those bins: memory holds the binned rows and one block.
        sample = X_train.sample(int(full_params.get("bin_construct_sample_cnt", BIN_SAMPLE_ROWS)), seed)
        bins = lgb.Dataset(sample, feature_name=names, params=full_params, free_raw_data=True).construct()
        del sample
        train_set = lgb.Dataset(
            X_train, label=idx_train, weight=weights, feature_name=names, reference=bins, params=full_params
        ).construct()
        _check_some_value(X_train.has_value, names)
    else:
        if isinstance(X_val, StoredRows):  # in-memory training rows: the validation rows fit in memory too
            X_val = X_val.read(0, len(X_val))
        train_set = lgb.Dataset(X_train, label=idx_train, weight=weights, feature_name=names, free_raw_data=True)
        bins = train_set
    if early_stopping_rounds is None:
        booster = lgb.train(full_params, train_set, num_boost_round=num_boost_round)
        booster.best_iteration = booster.current_iteration()  # every round is kept
    else:
        # Validation rows streamed from the store take their bins from the unweighted `bins`: with a weighted
        # reference, LightGBM 4.7 gives a streamed dataset zero weights, its loss is NaN and early stopping ends at 1.
        val_set = lgb.Dataset(X_val, label=idx_val, reference=bins, free_raw_data=True)
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


def train_with_config(
    X_train: Any,
    y_train: Any,
    X_val: Any,
    y_val: Any,
    feature_names: Sequence[str],
    cfg: TrainingConfig,
    seed: int | None = None,
) -> lgb.Booster:
    """`train_model` with a TrainingConfig's settings, as the training stage runs it (`seed`: cfg.seed unless given)."""
    return train_model(
        X_train,
        y_train,
        X_val,
        y_val,
        feature_names,
        params=cfg.lightgbm_params,
        class_weight=None if cfg.class_weight == "none" else "balanced",
        num_boost_round=cfg.num_boost_round,
        early_stopping_rounds=cfg.early_stopping_rounds,
        seed=cfg.seed if seed is None else seed,
    )


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
    """Class probabilities as float64, shape (n, k), columns in metadata["classes"] order.

    `X` may be `StoredRows`: then it is predicted block by block, never held whole as float32.
    """
    k = len(metadata["classes"])
    if isinstance(X, StoredRows):
        _rows_or_matrix(X, list(metadata["feature_names"]), "X")
        proba = np.empty((len(X), k), dtype=np.float64)
        for start, block in X.blocks():
            proba[start : start + len(block)] = predict_proba(booster, metadata, block, num_threads)
        return proba
    X = as_matrix(X, metadata["feature_names"], "X")
    proba = booster.predict(X, num_iteration=metadata.get("num_iteration") or None, num_threads=num_threads)
    return np.asarray(proba, dtype=np.float64).reshape(X.shape[0], k)


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
