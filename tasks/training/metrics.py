"""Training stage, validation: a model's scores on a test set, `metrics.json` and the validation plots.

Plain functions, no Prefect; files are written only into the folder given by the caller.

- `evaluate`: accuracy, kappa, F1, per-class precision/recall/F1/AUC, confusion matrices and
  gain importance, written to `metrics.json`, and the PNG plots of `PLOT_FILES` (drawn by
  tasks/plots.py): confusion matrices normalised both ways, one-vs-rest ROC curves, feature
  importance (date × feature heat map when the features have dates) and class frequencies.
- `scores`: the figures of one set of pixels (OA, kappa, macro/weighted F1, per-class precision,
  recall and F1, confusion matrix); `evaluate` gives them for the test samples at the top level of
  `metrics.json` and, with `all_labelled`, for every labelled pixel of the held-out area under
  ``metrics["all_labelled"]`` (tasks/training/holdout.py), side by side.
- `metrics_markdown`: a short markdown summary of the metrics (e.g. for a Prefect artifact), both
  sets of pixels side by side when both were scored.

Macro F1 is the mean F1 of the model's classes that occur in the scored reference (a class
without any reference pixel there has no recall, so no F1).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
from matplotlib.figure import Figure
from sklearn import metrics as skm

from lcms.legend import lighten
from tasks import plots
from tasks.training.model import StoredRows, as_labels, as_matrix, codes_of, predict_proba

METRICS_FILE = "metrics.json"

PLOT_FILES = (
    "confusion_matrix_recall.png",
    "confusion_matrix_precision.png",
    "roc_curves.png",
    "feature_importance.png",
    "class_frequency.png",
)


def _split_feature_names(names: Sequence[str]) -> tuple[list[str], list[str]] | None:
    """(dates, kinds) from "FEATURE@DATE" names, or None if any name lacks the '@'."""
    if not all("@" in n for n in names):
        return None
    parts = [n.rsplit("@", 1) for n in names]
    return [p[1] for p in parts], [p[0] for p in parts]


def _importance_layout(
    features: Sequence[str], feature_dates: Sequence[str] | None, feature_kinds: Sequence[str] | None
) -> tuple[list[str], list[str]] | None:
    """(date, kind) of every feature column, from the arguments or the names; None: no dates."""
    if (feature_dates is None) != (feature_kinds is None):
        raise ValueError("give both feature_dates and feature_kinds, or neither")
    if feature_dates is None or feature_kinds is None:
        return _split_feature_names(features)
    if len(feature_dates) != len(features) or len(feature_kinds) != len(features):
        raise ValueError(
            f"feature_dates ({len(feature_dates)}) and feature_kinds ({len(feature_kinds)}) need one entry "
            f"per feature column ({len(features)})"
        )
    return [str(d) for d in feature_dates], [str(k) for k in feature_kinds]


def feature_importance_figure(
    features: Sequence[str],
    gain: np.ndarray,
    feature_dates: Sequence[str] | None = None,
    feature_kinds: Sequence[str] | None = None,
) -> Figure:
    """Gain importance in % of the total: a date × feature heat map, or sorted bars for features without dates."""
    total = float(gain.sum()) or 1.0
    share = 100 * np.asarray(gain, dtype=np.float64) / total
    layout = _importance_layout(features, feature_dates, feature_kinds)
    if layout is None:
        order = np.argsort(-share, kind="stable")
        return plots.barh_figure(
            [features[i] for i in order],
            [("gain", [float(share[i]) for i in order], ["#4c72b0"] * len(order))],
            "Feature importance (gain, % of total)",
            "% of total gain",
        )
    dates, kinds = layout
    date_axis = list(dict.fromkeys(dates))
    kind_axis = list(dict.fromkeys(kinds))
    m = np.full((len(date_axis), len(kind_axis)), np.nan)
    for d, k, v in zip(dates, kinds, share, strict=True):
        i, j = date_axis.index(d), kind_axis.index(k)
        m[i, j] = v if np.isnan(m[i, j]) else m[i, j] + v
    return plots.importance_figure(m, date_axis, kind_axis)


def _r(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def scores(y_true: np.ndarray, y_pred: np.ndarray, classes: Sequence[int], names: Sequence[str]) -> dict[str, Any]:
    """OA, kappa, macro/weighted F1, per-class precision/recall/F1/support and the confusion matrix."""
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        y_true, y_pred, labels=classes, zero_division=0
    )
    present = [c for c, n in zip(classes, support, strict=True) if n > 0]
    return {
        "n_samples": int(len(y_true)),
        "overall_accuracy": float(skm.accuracy_score(y_true, y_pred)),
        "kappa": _r(float(skm.cohen_kappa_score(y_true, y_pred, labels=classes))),
        "macro_f1": float(skm.f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0)),
        "weighted_f1": float(skm.f1_score(y_true, y_pred, labels=classes, average="weighted", zero_division=0)),
        "per_class": {
            name: {
                "code": int(code),
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, (code, name) in enumerate(zip(classes, names, strict=True))
        },
        "confusion_matrix": skm.confusion_matrix(y_true, y_pred, labels=classes).tolist(),
    }


def _rows_or_matrix(X: Any, features: list[str], what: str) -> Any:
    """Stored rows (predicted block by block) as they are, anything else as a checked matrix."""
    if isinstance(X, StoredRows):
        if X.shape[1] != len(features):
            raise ValueError(f"{what} has {X.shape[1]} columns but there are {len(features)} feature names")
        return X
    return as_matrix(X, features, what)


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
    all_labelled: tuple[Any, Any] | None = None,
    interior: Any = None,
) -> dict:
    """Score the model on a test set; write folder/metrics.json and the PNG plots; return the metrics.

    `all_labelled` = (X, y) of every labelled pixel of the held-out area: its `scores` go under
    ``metrics["all_labelled"]``, beside the test set's at the top level; `interior` (bool, one per
    pixel of `all_labelled`) marks the pixels that a 1-px erosion keeps: theirs go under
    ``metrics["interior"]``.

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

    X_test = _rows_or_matrix(X_test, features, "X_test")
    y_test = as_labels(y_test, X_test.shape[0], "y_test")
    unknown = np.setdiff1d(np.unique(y_test), classes)
    if unknown.size:
        raise ValueError(f"test labels {unknown.tolist()} are not among the model's classes {classes}")
    proba = predict_proba(booster, metadata, X_test)
    y_pred = codes_of(proba, classes).astype(np.int64)

    block = scores(y_test, y_pred, classes, names)
    support = [block["per_class"][n]["support"] for n in names]
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

    for name in names:
        block["per_class"][name]["auc"] = auc[name]
    metrics: dict[str, Any] = {
        "n_samples": block["n_samples"],
        "classes": classes,
        "class_names": names,
        **{k: block[k] for k in ("overall_accuracy", "kappa", "macro_f1", "weighted_f1", "per_class")},
        "auc": auc,
        "confusion_matrix": block["confusion_matrix"],  # rows: reference, columns: prediction, in `classes` order
        "confusion_matrix_recall": cm_recall.tolist(),  # rows sum to 1 (normalize="true")
        "confusion_matrix_precision": cm_precision.tolist(),  # columns sum to 1 (normalize="pred")
        "feature_importance_gain": dict(zip(features, gain.tolist(), strict=True)),
        "num_iteration": metadata.get("num_iteration"),
        "plots": list(PLOT_FILES),
    }

    if all_labelled is not None:
        X_all = _rows_or_matrix(all_labelled[0], features, "all_labelled X")
        y_all = as_labels(all_labelled[1], X_all.shape[0], "all_labelled y")
        pred_all = codes_of(predict_proba(booster, metadata, X_all), classes).astype(np.int64)
        metrics["all_labelled"] = scores(y_all, pred_all, classes, names)
        if interior is not None and np.asarray(interior).any():
            inside = np.asarray(interior, dtype=bool)
            metrics["interior"] = scores(y_all[inside], pred_all[inside], classes, names)

    importance = feature_importance_figure(features, gain, feature_dates, feature_kinds)  # checks the dates first
    series: list[plots.BarSeries] = []
    if y_train is not None:
        y_tr = np.asarray(y_train).reshape(-1)
        series.append(("train", [int(np.sum(y_tr == c)) for c in classes], colors))
    series.append(("test", [int(s) for s in support], [lighten(c) for c in colors] if series else colors))
    figures = {
        "confusion_matrix_recall.png": plots.confusion_matrix_figure(
            cm_recall, names, "Confusion matrix, normalised by reference (recall on the diagonal)"
        ),
        "confusion_matrix_precision.png": plots.confusion_matrix_figure(
            cm_precision, names, "Confusion matrix, normalised by prediction (precision on the diagonal)"
        ),
        "roc_curves.png": plots.roc_figure(roc, "ROC curves, one vs rest"),
        "feature_importance.png": importance,
        "class_frequency.png": plots.barh_figure(names, series, "Class frequency", "samples"),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name in PLOT_FILES:
        plots.save_png(figures[name], folder / name)

    (folder / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def metrics_markdown(metrics: dict) -> str:
    """A short markdown summary of `evaluate`'s metrics (e.g. for a Prefect artifact).

    With ``metrics["all_labelled"]``, every figure is given on every labelled pixel of the
    held-out area first and on the test samples beside it.
    """

    def f(x: float | None) -> str:
        return "–" if x is None else f"{x:.3f}"

    test_name = metrics.get("test_samples_description", "test samples")
    everything = metrics.get("all_labelled")
    if not everything:
        lines = [
            "## Model validation",
            "",
            f"- {test_name}: {metrics['n_samples']}",
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

    all_name = metrics.get("all_labelled_description", "every labelled pixel of the held-out area")
    inner = metrics.get("interior") or {"per_class": {}}
    sets = [("A", everything), ("B", inner), ("C", metrics)]

    def row(label: str, key: str, bold: bool = False) -> str:
        cells = [f(s.get(key)) if key in s else "–" for _, s in sets]
        cells[0] = f"**{cells[0]}**" if bold else cells[0]
        return f"| {label} | " + " | ".join(cells) + " |"

    lines = [
        "## Model validation",
        "",
        f"A: {all_name}. B: the interior pixels of A (those a 1-px erosion of the reference keeps). C: {test_name}.",
        "",
        "| | A: every labelled pixel | B: interior pixels | C: test samples |",
        "|---|---:|---:|---:|",
        f"| pixels | {everything['n_samples']} | {inner.get('n_samples', '–')} | {metrics['n_samples']} |",
        row("overall accuracy", "overall_accuracy", bold=True),
        row("kappa", "kappa"),
        row("macro F1", "macro_f1"),
        row("weighted F1", "weighted_f1"),
        "",
        "| class | code | recall A | precision A | F1 A | pixels A | recall B | F1 B | pixels B | recall C | F1 C "
        "| pixels C | AUC C |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, m in metrics["per_class"].items():
        a = everything["per_class"][name]
        b = inner["per_class"].get(name, {})
        lines.append(
            f"| {name} | {m['code']} | {f(a['recall'])} | {f(a['precision'])} | {f(a['f1'])} | {a['support']} | "
            f"{f(b.get('recall'))} | {f(b.get('f1'))} | {b.get('support', '–')} | "
            f"{f(m['recall'])} | {f(m['f1'])} | {m['support']} | {f(m['auc'])} |"
        )
    return "\n".join(lines) + "\n"
