"""Training stage, model level: a LightGBM land-cover classifier, its files and its validation.

Plain functions, no Prefect (a flow will wrap them); files are written only into folders given
by the caller.

- `train_model`: multiclass LightGBM with early stopping on a validation set and optional
  balanced class weights. Legend codes (e.g. 1, 2, 5, 8) are mapped to 0..k-1 internally; the
  sorted codes are the order of the model's outputs and are kept on the booster
  (`booster.lcms_classes`) and in the saved metadata.
- `save_model` / `load_model`: `model.txt` (LightGBM text format, with feature names) and
  `model.json` beside it (legend of the classes, output order, feature names, lineage, time).
- `predict_labels` (legend codes, uint8) and `predict_proba_percent` (uint8 percent, (n, k)).
- `evaluate`: `metrics.json` and PNG plots; `metrics_markdown` renders a short summary.

Plots are drawn with Pillow (matplotlib is not installed in the project environment), so they
need no display and no extra dependency.
"""

from __future__ import annotations

import json
import logging
import math
import subprocess
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any, Literal

import lightgbm as lgb
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from sklearn import metrics as skm
from sklearn.utils.class_weight import compute_sample_weight

from lcms.legend import NO_DATA, LegendClass

log = logging.getLogger(__name__)

MODEL_FILE = "model.txt"
METADATA_FILE = "model.json"
METRICS_FILE = "metrics.json"
METADATA_FORMAT = "lcms-lightgbm-classifier/1"
CLASSES_ATTR = "lcms_classes"

PLOT_FILES = (
    "confusion_matrix_recall.png",
    "confusion_matrix_precision.png",
    "roc_curves.png",
    "feature_importance.png",
    "class_frequency.png",
)

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


def _as_matrix(X: Any, feature_names: Sequence[str], what: str) -> np.ndarray:
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


def _as_labels(y: Any, n_rows: int, what: str) -> np.ndarray:
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
    X_train = _as_matrix(X_train, names, "X_train")
    X_val = _as_matrix(X_val, names, "X_val")
    y_train = _as_labels(y_train, X_train.shape[0], "y_train")
    y_val = _as_labels(y_val, X_val.shape[0], "y_val")
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
    try:
        version = importlib_metadata.version("lcms")
    except importlib_metadata.PackageNotFoundError:
        version = None
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"lcms_version": version, "git_commit": commit or None}


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


def _predict_proba(booster: lgb.Booster, metadata: dict, X: Any, num_threads: int = 0) -> np.ndarray:
    X = _as_matrix(X, metadata["feature_names"], "X")
    proba = booster.predict(X, num_iteration=metadata.get("num_iteration") or None, num_threads=num_threads)
    return np.asarray(proba, dtype=np.float64).reshape(X.shape[0], len(metadata["classes"]))


def predict_proba_percent(booster: lgb.Booster, metadata: dict, X: Any, num_threads: int = 0) -> np.ndarray:
    """Class probabilities as uint8 percent, shape (n, k), columns in metadata["classes"] order.

    `num_threads` 0 lets LightGBM use every core; give 1 inside Dask workers that run in parallel.
    """
    return np.clip(np.rint(_predict_proba(booster, metadata, X, num_threads) * 100), 0, 100).astype(np.uint8)


def _codes_of(proba: np.ndarray, classes: Sequence[int]) -> np.ndarray:
    codes = np.asarray(classes)
    if codes.min() < 0 or codes.max() > 255:
        raise ValueError(f"class codes {codes.tolist()} do not fit uint8")
    return codes.astype(np.uint8)[np.argmax(proba, axis=1)]


def predict(booster: lgb.Booster, metadata: dict, X: Any, num_threads: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Legend codes (n,) uint8 and probabilities in percent (n, k) uint8, from one prediction pass.

    Codes come from the exact probabilities, so rounding to percent never changes the winner.
    """
    proba = _predict_proba(booster, metadata, X, num_threads)
    return _codes_of(proba, metadata["classes"]), np.clip(np.rint(proba * 100), 0, 100).astype(np.uint8)


def predict_labels(booster: lgb.Booster, metadata: dict, X: Any) -> np.ndarray:
    """The most probable legend code of each row, uint8."""
    return _codes_of(_predict_proba(booster, metadata, X), metadata["classes"])


# --------------------------------------------------------------------------- evaluation


def _split_feature_names(names: Sequence[str]) -> tuple[list[str], list[str]] | None:
    """(dates, kinds) from "FEATURE@DATE" names, or None if any name lacks the '@'."""
    if not all("@" in n for n in names):
        return None
    parts = [n.rsplit("@", 1) for n in names]
    return [p[1] for p in parts], [p[0] for p in parts]


def _r(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def evaluate(
    booster: lgb.Booster,
    metadata: dict,
    X_test: Any,
    y_test: Any,
    folder: Path,
    feature_dates: Sequence[str] | None = None,
    feature_kinds: Sequence[str] | None = None,
    *,
    y_train: Any = None,
) -> dict:
    """Score the model on a test set; write folder/metrics.json and the PNG plots; return the metrics.

    `feature_dates`/`feature_kinds` (one per feature column) lay the gain importance out as a
    date × feature heat map; without them it is parsed from "FEATURE@DATE" column names, and
    other names give a bar chart. `y_train` adds the training counts to class_frequency.png.
    """
    folder = Path(folder)
    classes = [int(c) for c in metadata["classes"]]
    legend = {e["code"]: e for e in metadata["legend"]}
    names = [legend[c]["name"] for c in classes]
    colors = [legend[c]["color"] for c in classes]
    features = list(metadata["feature_names"])

    X_test = _as_matrix(X_test, features, "X_test")
    y_test = _as_labels(y_test, X_test.shape[0], "y_test")
    unknown = np.setdiff1d(np.unique(y_test), classes)
    if unknown.size:
        raise ValueError(f"test labels {unknown.tolist()} are not among the model's classes {classes}")
    proba = _predict_proba(booster, metadata, X_test)
    y_pred = _codes_of(proba, classes).astype(np.int64)

    precision, recall, f1, support = skm.precision_recall_fscore_support(
        y_test, y_pred, labels=classes, zero_division=0
    )
    cm = skm.confusion_matrix(y_test, y_pred, labels=classes)
    cm_recall = skm.confusion_matrix(y_test, y_pred, labels=classes, normalize="true")
    cm_precision = skm.confusion_matrix(y_test, y_pred, labels=classes, normalize="pred")

    auc: dict[str, float | None] = {}
    roc: list[tuple[str, str, np.ndarray, np.ndarray]] = []
    for i, (code, name) in enumerate(zip(classes, names, strict=True)):
        positive = y_test == code
        if positive.all() or not positive.any():
            auc[name] = None  # undefined without both positives and negatives
            continue
        fpr, tpr, _ = skm.roc_curve(positive, proba[:, i])
        auc[name] = float(skm.roc_auc_score(positive, proba[:, i]))
        roc.append((f"{name} (AUC {auc[name]:.3f})", legend[code]["color"], fpr, tpr))

    num_iteration = metadata.get("num_iteration") or None
    gain = booster.feature_importance(importance_type="gain", iteration=num_iteration).astype(np.float64)

    metrics: dict[str, Any] = {
        "n_samples": int(len(y_test)),
        "classes": classes,
        "class_names": names,
        "overall_accuracy": float(skm.accuracy_score(y_test, y_pred)),
        "kappa": _r(float(skm.cohen_kappa_score(y_test, y_pred, labels=classes))),
        "macro_f1": float(skm.f1_score(y_test, y_pred, labels=classes, average="macro", zero_division=0)),
        "weighted_f1": float(skm.f1_score(y_test, y_pred, labels=classes, average="weighted", zero_division=0)),
        "per_class": {
            name: {
                "code": code,
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
                "auc": auc[name],
            }
            for i, (code, name) in enumerate(zip(classes, names, strict=True))
        },
        "auc": auc,
        "confusion_matrix": cm.tolist(),  # rows: reference, columns: prediction, in `classes` order
        "confusion_matrix_recall": cm_recall.tolist(),  # rows sum to 1 (normalize="true")
        "confusion_matrix_precision": cm_precision.tolist(),  # columns sum to 1 (normalize="pred")
        "feature_importance_gain": dict(zip(features, gain.tolist(), strict=True)),
        "num_iteration": metadata.get("num_iteration"),
        "plots": list(PLOT_FILES),
    }

    folder.mkdir(parents=True, exist_ok=True)
    _heatmap_png(
        folder / "confusion_matrix_recall.png",
        cm_recall,
        names,
        names,
        "Confusion matrix, normalised by reference (recall on the diagonal)",
        xlabel="predicted",
        ylabel="reference",
        vmin=0.0,
        vmax=1.0,
    )
    _heatmap_png(
        folder / "confusion_matrix_precision.png",
        cm_precision,
        names,
        names,
        "Confusion matrix, normalised by prediction (precision on the diagonal)",
        xlabel="predicted",
        ylabel="reference",
        vmin=0.0,
        vmax=1.0,
    )
    _roc_png(folder / "roc_curves.png", roc, "ROC curves, one vs rest")
    _importance_png(folder / "feature_importance.png", features, gain, feature_dates, feature_kinds)
    series = []
    if y_train is not None:
        y_tr = np.asarray(y_train).reshape(-1)
        series.append(("train", [int(np.sum(y_tr == c)) for c in classes], colors))
    series.append(("test", [int(s) for s in support], [_lighten(c) for c in colors] if series else colors))
    _barh_png(folder / "class_frequency.png", names, series, "Class frequency", "samples")

    (folder / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def metrics_markdown(metrics: dict) -> str:
    """A short markdown summary of `evaluate`'s metrics (e.g. for a Prefect artifact)."""

    def f(x: float | None) -> str:
        return "–" if x is None else f"{x:.3f}"

    lines = [
        "## Model validation",
        "",
        f"- samples: {metrics['n_samples']}",
        f"- overall accuracy: **{f(metrics['overall_accuracy'])}**",
        f"- kappa: {f(metrics['kappa'])}",
        f"- macro F1: {f(metrics['macro_f1'])}, weighted F1: {f(metrics['weighted_f1'])}",
        "",
        "| class | code | precision | recall | F1 | AUC | support |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, m in metrics["per_class"].items():
        lines.append(
            f"| {name} | {m['code']} | {f(m['precision'])} | {f(m['recall'])} | {f(m['f1'])} | "
            f"{f(m['auc'])} | {m['support']} |"
        )
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- plots (Pillow)

_WHITE = (255, 255, 255)
_BLACK = (0, 0, 0)
_GREY = (90, 90, 90)
_BLUES = ((247, 251, 255), (198, 219, 239), (107, 174, 214), (33, 113, 181), (8, 48, 107))
_VIRIDIS = ((68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37))


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _text_size(font: Any, text: str) -> tuple[int, int]:
    left, top, right, bottom = font.getbbox(text)
    return int(math.ceil(right - min(left, 0))), int(math.ceil(bottom - min(top, 0)))


def _rgb(color: str) -> tuple[int, int, int]:
    c = color.lstrip("#")
    return int(c[0:2], 16), int(c[2:4], 16), int(c[4:6], 16)


def _lighten(color: str, amount: float = 0.55) -> str:
    r, g, b = (round(v + (255 - v) * amount) for v in _rgb(color))
    return f"#{r:02x}{g:02x}{b:02x}"


def _cmap(stops: Sequence[tuple[int, int, int]], t: float) -> tuple[int, int, int]:
    t = min(max(t, 0.0), 1.0) * (len(stops) - 1)
    i = min(int(t), len(stops) - 2)
    a, b, w = stops[i], stops[i + 1], t - i
    return tuple(round(a[k] + (b[k] - a[k]) * w) for k in range(3))  # type: ignore[return-value]


def _rotated_text(img: Image.Image, xy: tuple[int, int], text: str, font: Any, fill=_BLACK) -> None:
    """Text reading bottom to top, its bounding box's top-left corner at xy."""
    w, h = _text_size(font, text)
    mask = Image.new("L", (w + 2, h + 4), 0)
    ImageDraw.Draw(mask).text((0, 0), text, font=font, fill=255)
    mask = mask.rotate(90, expand=True)
    img.paste(Image.new("RGB", mask.size, fill), xy, mask)


def _heatmap_png(
    path: Path,
    matrix: np.ndarray,
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    title: str,
    *,
    xlabel: str,
    ylabel: str,
    vmin: float | None = None,
    vmax: float | None = None,
    cmap: Sequence[tuple[int, int, int]] = _BLUES,
    annotate: bool = True,
    fmt: str = "{:.2f}",
    cell: tuple[int, int] = (64, 40),
) -> None:
    m = np.asarray(matrix, dtype=np.float64)
    nr, nc = m.shape
    font, small, big = _font(13), _font(11), _font(16)
    finite = m[np.isfinite(m)]
    lo = vmin if vmin is not None else (float(finite.min()) if finite.size else 0.0)
    hi = vmax if vmax is not None else (float(finite.max()) if finite.size else 1.0)
    span = hi - lo if hi > lo else 1.0
    cw, ch = cell
    label_w = max(_text_size(font, s)[0] for s in row_labels)
    col_h = max(_text_size(font, s)[0] for s in col_labels)
    left, top = label_w + 40, 50
    grid_w, grid_h = nc * cw, nr * ch
    bottom = col_h + 45
    width = max(left + grid_w + 110, _text_size(big, title)[0] + 30)
    img = Image.new("RGB", (width, top + grid_h + bottom), _WHITE)
    draw = ImageDraw.Draw(img)
    draw.text((15, 12), title, font=big, fill=_BLACK)
    for i in range(nr):
        for j in range(nc):
            v = m[i, j]
            x0, y0 = left + j * cw, top + i * ch
            t = (v - lo) / span if math.isfinite(v) else None
            fill = (200, 200, 200) if t is None else _cmap(cmap, t)
            draw.rectangle([x0, y0, x0 + cw, y0 + ch], fill=fill)
            if annotate and t is not None:
                text = fmt.format(v)
                tw, th = _text_size(small, text)
                ink = _WHITE if 0.299 * fill[0] + 0.587 * fill[1] + 0.114 * fill[2] < 140 else _BLACK
                draw.text((x0 + (cw - tw) / 2, y0 + (ch - th) / 2), text, font=small, fill=ink)
    draw.rectangle([left, top, left + grid_w, top + grid_h], outline=_GREY)
    for i, s in enumerate(row_labels):
        tw, th = _text_size(font, s)
        draw.text((left - tw - 6, top + i * ch + (ch - th) / 2), s, font=font, fill=_BLACK)
    for j, s in enumerate(col_labels):
        tw, th = _text_size(font, s)
        _rotated_text(img, (left + j * cw + (cw - th) // 2, top + grid_h + 6), s, font)
    xw, _ = _text_size(font, xlabel)
    draw.text((left + (grid_w - xw) / 2, top + grid_h + col_h + 20), xlabel, font=font, fill=_GREY)
    yw, yh = _text_size(font, ylabel)
    _rotated_text(img, (6, top + (grid_h - yw) // 2), ylabel, font, fill=_GREY)
    # colour bar
    bx, bh = left + grid_w + 20, max(grid_h, 60)
    for k in range(bh):
        draw.line([bx, top + k, bx + 16, top + k], fill=_cmap(cmap, 1 - k / max(bh - 1, 1)))
    draw.rectangle([bx, top, bx + 16, top + bh], outline=_GREY)
    draw.text((bx + 22, top - 2), f"{hi:.3g}", font=small, fill=_BLACK)
    draw.text((bx + 22, top + bh - 12), f"{lo:.3g}", font=small, fill=_BLACK)
    img.save(path, format="PNG")


def _barh_png(
    path: Path,
    labels: Sequence[str],
    series: Sequence[tuple[str, Sequence[float], Sequence[str]]],
    title: str,
    xlabel: str,
) -> None:
    """Horizontal bars, one group per label, one bar per series (colours per bar)."""
    font, small, big = _font(13), _font(11), _font(16)
    bar_h, gap = 16, 10
    group_h = bar_h * len(series) + gap
    label_w = max(_text_size(font, s)[0] for s in labels)
    left, top, plot_w = label_w + 20, 50 + 20 * len(series), 520
    vmax = max([max(v, default=0) for _, v, _ in series] + [0]) or 1
    height = top + group_h * len(labels) + 50
    img = Image.new("RGB", (left + plot_w + 110, height), _WHITE)
    draw = ImageDraw.Draw(img)
    draw.text((15, 12), title, font=big, fill=_BLACK)
    for s, (name, _, cols) in enumerate(series):
        y = 38 + 20 * s
        draw.rectangle([left, y, left + 14, y + 12], fill=_rgb(cols[0]) if cols else _GREY, outline=_GREY)
        draw.text((left + 20, y - 1), name, font=small, fill=_BLACK)
    for i, label in enumerate(labels):
        y0 = top + i * group_h
        tw, th = _text_size(font, label)
        draw.text((left - tw - 6, y0 + (group_h - gap - th) / 2), label, font=font, fill=_BLACK)
        for s, (_, values, cols) in enumerate(series):
            v = float(values[i])
            y = y0 + s * bar_h
            x1 = left + round(plot_w * v / vmax)
            draw.rectangle([left, y, max(x1, left + 1), y + bar_h - 2], fill=_rgb(cols[i]), outline=_GREY)
            draw.text((x1 + 4, y + 1), f"{v:.4g}", font=small, fill=_BLACK)
    axis_y = top + group_h * len(labels)
    draw.line([left, top - 4, left, axis_y], fill=_GREY)
    draw.line([left, axis_y, left + plot_w, axis_y], fill=_GREY)
    xw, _ = _text_size(font, xlabel)
    draw.text((left + (plot_w - xw) / 2, axis_y + 20), xlabel, font=font, fill=_GREY)
    draw.text((left - 3, axis_y + 4), "0", font=small, fill=_GREY)
    draw.text((left + plot_w - 10, axis_y + 4), f"{vmax:.4g}", font=small, fill=_GREY)
    img.save(path, format="PNG")


def _roc_png(path: Path, curves: Sequence[tuple[str, str, np.ndarray, np.ndarray]], title: str) -> None:
    font, small, big = _font(13), _font(11), _font(16)
    left, top, size = 70, 50, 480
    legend_w = max([_text_size(small, c[0])[0] for c in curves] + [60]) + 40
    img = Image.new("RGB", (left + size + 30 + legend_w, top + size + 60), _WHITE)
    draw = ImageDraw.Draw(img)
    draw.text((15, 12), title, font=big, fill=_BLACK)

    def px(x: float, y: float) -> tuple[float, float]:
        return left + x * size, top + (1 - y) * size

    for k in range(6):
        t = k / 5
        gx, gy = px(t, t)
        draw.line([gx, top, gx, top + size], fill=(235, 235, 235))
        draw.line([left, gy, left + size, gy], fill=(235, 235, 235))
        draw.text((gx - 8, top + size + 5), f"{t:.1f}", font=small, fill=_GREY)
        draw.text((left - 28, gy - 6), f"{t:.1f}", font=small, fill=_GREY)
    for k in range(0, 40, 2):  # dashed chance line
        draw.line([px(k / 40, k / 40), px((k + 1) / 40, (k + 1) / 40)], fill=(150, 150, 150))
    draw.rectangle([left, top, left + size, top + size], outline=_GREY)
    for _label, color, fpr, tpr in curves:
        draw.line([px(float(x), float(y)) for x, y in zip(fpr, tpr, strict=True)], fill=_rgb(color), width=3)
    draw.text((left + size / 2 - 50, top + size + 25), "false positive rate", font=font, fill=_GREY)
    tw, _ = _text_size(font, "true positive rate")
    _rotated_text(img, (8, top + (size - tw) // 2), "true positive rate", font, fill=_GREY)
    lx = left + size + 20
    for i, (label, color, _, _) in enumerate(curves):
        y = top + 10 + 20 * i
        draw.line([lx, y + 6, lx + 24, y + 6], fill=_rgb(color), width=4)
        draw.text((lx + 30, y), label, font=small, fill=_BLACK)
    if not curves:
        draw.text((left + 20, top + 20), "no class with both positives and negatives", font=font, fill=_BLACK)
    img.save(path, format="PNG")


def _importance_png(
    path: Path,
    features: Sequence[str],
    gain: np.ndarray,
    feature_dates: Sequence[str] | None,
    feature_kinds: Sequence[str] | None,
) -> None:
    total = float(gain.sum()) or 1.0
    share = 100 * gain / total
    if (feature_dates is None) != (feature_kinds is None):
        raise ValueError("give both feature_dates and feature_kinds, or neither")
    if feature_dates is not None and feature_kinds is not None:
        if len(feature_dates) != len(features) or len(feature_kinds) != len(features):
            raise ValueError(
                f"feature_dates ({len(feature_dates)}) and feature_kinds ({len(feature_kinds)}) need one entry "
                f"per feature column ({len(features)})"
            )
        layout: tuple[list[str], list[str]] | None = ([str(d) for d in feature_dates], [str(k) for k in feature_kinds])
    else:
        layout = _split_feature_names(features)
    if layout is None:
        order = np.argsort(-share, kind="stable")
        _barh_png(
            path,
            [features[i] for i in order],
            [("gain", [float(share[i]) for i in order], ["#4c72b0"] * len(order))],
            "Feature importance (gain, % of total)",
            "% of total gain",
        )
        return
    dates, kinds = layout
    date_axis = list(dict.fromkeys(dates))
    kind_axis = list(dict.fromkeys(kinds))
    m = np.full((len(date_axis), len(kind_axis)), np.nan)
    for d, k, v in zip(dates, kinds, share, strict=True):
        i, j = date_axis.index(d), kind_axis.index(k)
        m[i, j] = v if np.isnan(m[i, j]) else m[i, j] + v
    _heatmap_png(
        path,
        m,
        date_axis,
        kind_axis,
        "Feature importance (gain, % of total)",
        xlabel="feature",
        ylabel="date",
        vmin=0.0,
        cmap=_VIRIDIS,
        annotate=m.size <= 400,
        fmt="{:.1f}",
        cell=(56, 22),
    )
