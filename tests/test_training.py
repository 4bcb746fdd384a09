"""Training module: LightGBM classifier, model files, metrics and plots on a synthetic problem."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from sklearn import metrics as skm

from lcms.legend import LULC_LEGEND
from tasks.training.metrics import METRICS_FILE, PLOT_FILES, evaluate, metrics_markdown
from tasks.training.model import (
    METADATA_FILE,
    MODEL_FILE,
    load_model,
    predict_labels,
    predict_proba_percent,
    save_model,
    train_model,
)

CODES = np.array([1, 2, 3, 5, 8])  # not contiguous on purpose
KINDS = ("NDVI", "NDWI", "B04")
DATES = [f"2023-{m:02d}-{d:02d}" for m in range(1, 13) for d in (5, 20)][:23]
NAMES = [f"{k}@{d}" for d in DATES for k in KINDS]  # 23 dates × 3 features
PARAMS = {"learning_rate": 0.5, "num_leaves": 63, "min_data_in_leaf": 3}
ROUNDS = 20
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def class_centres(k: int, n_features: int, spread: float) -> np.ndarray:
    return np.random.default_rng(42).normal(0, spread, (k, n_features)).astype(np.float32)


def make_data(n: int, seed: int, codes=CODES, n_features: int = len(NAMES), spread=1.0, label_noise=0.03):
    """Gaussian clusters around fixed class centres; a few flipped labels so that boosting overfits."""
    rng = np.random.default_rng(seed)
    centres = class_centres(len(codes), n_features, spread)
    idx = rng.integers(0, len(codes), n)
    X = (centres[idx] + rng.normal(0, 1, (n, n_features))).astype(np.float32)
    flip = rng.random(n) < label_noise
    idx[flip] = rng.integers(0, len(codes), int(flip.sum()))
    return X, np.asarray(codes)[idx]


@pytest.fixture(scope="module")
def data():
    return {"train": make_data(6000, 1), "val": make_data(2000, 2), "test": make_data(2000, 3)}


@pytest.fixture(scope="module")
def booster(data):
    (Xt, yt), (Xv, yv) = data["train"], data["val"]
    return train_model(Xt, yt, Xv, yv, NAMES, params=PARAMS, num_boost_round=ROUNDS, early_stopping_rounds=3)


@pytest.fixture(scope="module")
def saved(booster, tmp_path_factory):
    folder = tmp_path_factory.mktemp("model")
    lineage = {"data": "synthetic Gaussian clusters", "n_train": 6000}
    save_model(booster, folder, LULC_LEGEND, booster.lcms_classes, lineage)
    return folder


@pytest.fixture(scope="module")
def evaluated(saved, data, tmp_path_factory):
    booster, metadata = load_model(saved)
    folder = tmp_path_factory.mktemp("validation")
    X, y = data["test"]
    metrics = evaluate(booster, metadata, X, y, folder, y_train=data["train"][1])
    return booster, metadata, metrics, folder


def test_trains_with_early_stopping_and_high_accuracy(booster, data):
    assert 0 < booster.best_iteration < ROUNDS
    assert booster.lcms_classes == CODES.tolist()
    metadata = {"feature_names": NAMES, "classes": CODES.tolist(), "num_iteration": booster.best_iteration}
    X, y = data["test"]
    pred = predict_labels(booster, metadata, X)
    assert pred.dtype == np.uint8
    assert set(np.unique(pred)) <= set(CODES.tolist())
    assert (pred == y).mean() > 0.9


def test_metrics_match_sklearn(evaluated, data):
    booster, metadata, metrics, folder = evaluated
    X, y = data["test"]
    pred = predict_labels(booster, metadata, X)
    labels = CODES.tolist()
    names = [next(c.name for c in LULC_LEGEND if c.code == code) for code in labels]
    assert metrics["classes"] == labels and metrics["class_names"] == names
    assert metrics["overall_accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert metrics["overall_accuracy"] > 0.9
    assert metrics["kappa"] == pytest.approx(skm.cohen_kappa_score(y, pred))
    assert metrics["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert metrics["weighted_f1"] == pytest.approx(skm.f1_score(y, pred, average="weighted"))
    p, r, f, s = skm.precision_recall_fscore_support(y, pred, labels=labels)
    for i, name in enumerate(names):
        m = metrics["per_class"][name]
        assert m["code"] == labels[i]
        assert (m["precision"], m["recall"], m["f1"], m["support"]) == pytest.approx((p[i], r[i], f[i], s[i]))
    np.testing.assert_array_equal(metrics["confusion_matrix"], skm.confusion_matrix(y, pred, labels=labels))
    # the metrics file holds the same numbers
    assert json.loads((folder / METRICS_FILE).read_text()) == json.loads(json.dumps(metrics))


def test_confusion_matrix_normalisations(evaluated):
    _, _, metrics, _ = evaluated
    recall = np.asarray(metrics["confusion_matrix_recall"])
    precision = np.asarray(metrics["confusion_matrix_precision"])
    np.testing.assert_allclose(recall.sum(axis=1), 1.0)  # normalised over reference (rows)
    np.testing.assert_allclose(precision.sum(axis=0), 1.0)  # normalised over predictions (columns)
    names = metrics["class_names"]
    np.testing.assert_allclose(np.diag(recall), [metrics["per_class"][n]["recall"] for n in names])
    np.testing.assert_allclose(np.diag(precision), [metrics["per_class"][n]["precision"] for n in names])


def test_auc_per_class(evaluated, data):
    booster, metadata, metrics, _ = evaluated
    X, y = data["test"]
    proba = booster.predict(X, num_iteration=metadata["num_iteration"])
    for i, code in enumerate(metrics["classes"]):
        auc = metrics["per_class"][metrics["class_names"][i]]["auc"]
        assert 0.0 <= auc <= 1.0
        assert auc == pytest.approx(skm.roc_auc_score(y == code, proba[:, i]))
        assert metrics["auc"][metrics["class_names"][i]] == auc


def test_plots_are_valid_pngs(evaluated):
    *_, folder = evaluated
    for name in PLOT_FILES:
        path = folder / name
        assert path.is_file(), name
        assert path.read_bytes()[:8] == PNG_SIGNATURE
        assert path.stat().st_size > 3000, name
        with Image.open(path) as img:
            img.verify()
        with Image.open(path) as img:
            assert img.format == "PNG" and min(img.size) >= 200, (name, img.size)
            # not a blank canvas
            assert len(img.convert("RGB").getcolors(maxcolors=1 << 16) or range(1 << 16)) > 5, name


def test_markdown_summary(evaluated):
    _, _, metrics, _ = evaluated
    md = metrics_markdown(metrics)
    assert f"{metrics['overall_accuracy']:.3f}" in md
    for name in metrics["class_names"]:
        assert f"| {name} |" in md


def test_save_load_round_trip(booster, saved, data):
    assert (saved / MODEL_FILE).is_file() and (saved / METADATA_FILE).is_file()
    loaded, metadata = load_model(saved)
    assert metadata["feature_names"] == NAMES == loaded.feature_name()
    assert metadata["classes"] == CODES.tolist() == loaded.lcms_classes
    by_code = {c.code: c for c in LULC_LEGEND}
    assert metadata["legend"] == [
        {"code": c, "name": by_code[c].name, "color": by_code[c].color} for c in CODES.tolist()
    ]
    lineage = metadata["lineage"]
    assert lineage["data"] == {"data": "synthetic Gaussian clusters", "n_train": 6000}
    assert lineage["params"]["objective"] == "multiclass" and lineage["params"]["num_class"] == len(CODES)
    assert lineage["lcms_version"] and "git_commit" in lineage
    assert metadata["created"]

    X = data["test"][0]
    in_memory = {"feature_names": NAMES, "classes": CODES.tolist(), "num_iteration": booster.best_iteration}
    np.testing.assert_array_equal(predict_labels(loaded, metadata, X), predict_labels(booster, in_memory, X))
    proba = predict_proba_percent(loaded, metadata, X)
    np.testing.assert_array_equal(proba, predict_proba_percent(booster, in_memory, X))
    assert proba.dtype == np.uint8 and proba.shape == (len(X), len(CODES))
    assert np.all(np.abs(proba.astype(int).sum(axis=1) - 100) <= len(CODES))


def test_class_weights_change_the_model(data):
    (Xt, yt), (Xv, yv) = data["train"], data["val"]
    keep = (yt != CODES[0]) | (np.arange(len(yt)) % 10 == 0)  # class 1 becomes rare
    Xt, yt = Xt[keep], yt[keep]
    kwargs = dict(params=PARAMS, num_boost_round=ROUNDS, early_stopping_rounds=3)
    plain = train_model(Xt, yt, Xv, yv, NAMES, **kwargs)
    weighted = train_model(Xt, yt, Xv, yv, NAMES, class_weight="balanced", **kwargs)
    assert plain.model_to_string() != weighted.model_to_string()
    X = data["test"][0]
    p_plain = plain.predict(X, num_iteration=plain.best_iteration)
    p_weighted = weighted.predict(X, num_iteration=weighted.best_iteration)
    assert not np.allclose(p_plain, p_weighted)
    # with slow learning and a fixed number of rounds the (weighted) prior shows: the rare class gains
    slow = dict(params={"learning_rate": 0.05}, num_boost_round=10, early_stopping_rounds=10)
    p_plain = train_model(Xt, yt, Xv, yv, NAMES, **slow).predict(X)
    p_weighted = train_model(Xt, yt, Xv, yv, NAMES, class_weight="balanced", **slow).predict(X)
    assert p_weighted[:, 0].mean() > 1.5 * p_plain[:, 0].mean()


def test_non_contiguous_codes_map_back(tmp_path):
    codes = [1, 2, 5, 8]
    names = [f"f{i}" for i in range(10)]  # no "@": importance as a bar chart
    (Xt, yt), (Xv, yv), (Xs, ys) = (
        make_data(n, s, codes=codes, n_features=10, spread=2.5) for n, s in ((3000, 1), (1000, 2), (1000, 3))
    )
    booster = train_model(Xt, yt, Xv, yv, names, params=PARAMS, num_boost_round=ROUNDS, early_stopping_rounds=3)
    assert booster.lcms_classes == codes
    save_model(booster, tmp_path / "model", LULC_LEGEND, codes, {"data": "four clusters"})
    loaded, metadata = load_model(tmp_path / "model")
    assert [e["name"] for e in metadata["legend"]] == ["cultivated land", "forest", "water", "artificial surface"]
    pred = predict_labels(loaded, metadata, Xs)
    assert set(np.unique(pred)) == set(codes)
    assert (pred == ys).mean() > 0.9
    # each class centre is predicted as its own code
    centres = class_centres(len(codes), 10, 2.5)
    np.testing.assert_array_equal(predict_labels(loaded, metadata, centres), codes)
    proba = predict_proba_percent(loaded, metadata, centres)
    np.testing.assert_array_equal(np.asarray(codes)[proba.argmax(axis=1)], codes)
    metrics = evaluate(loaded, metadata, Xs, ys, tmp_path / "validation")
    assert metrics["classes"] == codes and metrics["overall_accuracy"] > 0.9
    for name in PLOT_FILES:
        assert (tmp_path / "validation" / name).read_bytes()[:8] == PNG_SIGNATURE


def test_importance_heat_map_from_explicit_dates_and_kinds(saved, data, tmp_path):
    booster, metadata = load_model(saved)
    X, y = data["test"]
    dates = [n.split("@")[1] for n in NAMES]
    kinds = [n.split("@")[0] for n in NAMES]
    evaluate(booster, metadata, X[:500], y[:500], tmp_path, feature_dates=dates, feature_kinds=kinds)
    with Image.open(tmp_path / "feature_importance.png") as img:
        assert img.height > 23 * 22  # one row per date
    with pytest.raises(ValueError, match="one entry per feature"):
        evaluate(booster, metadata, X[:500], y[:500], tmp_path, feature_dates=dates[:5], feature_kinds=kinds[:5])


def test_one_class_training_set_is_rejected(data):
    (Xt, _), (Xv, _) = data["train"], data["val"]
    with pytest.raises(ValueError, match="only one class"):
        train_model(Xt, np.full(len(Xt), 2), Xv, np.full(len(Xv), 2), NAMES)


def test_bad_inputs_are_rejected(data):
    (Xt, yt), (Xv, yv) = data["train"], data["val"]
    Xnan = Xt.copy()
    Xnan[:, 4] = np.nan
    with pytest.raises(ValueError, match=f"only NaN.*{NAMES[4]}"):
        train_model(Xnan, yt, Xv, yv, NAMES)
    with pytest.raises(ValueError, match="labels for"):
        train_model(Xt, yt[:-1], Xv, yv, NAMES)
    with pytest.raises(ValueError, match="columns"):
        train_model(Xt, yt, Xv[:, :-1], yv, NAMES)
    with pytest.raises(ValueError, match="feature names"):
        train_model(Xt, yt, Xv, yv, NAMES[:-1])
    with pytest.raises(ValueError, match="no data"):
        train_model(Xt, np.where(yt == 1, 0, yt), Xv, yv, NAMES)
    with pytest.raises(ValueError, match="do not occur in the training set"):
        train_model(Xt[yt != 8], yt[yt != 8], Xv, yv, NAMES)
    with pytest.raises(ValueError, match="class_weight"):
        train_model(Xt, yt, Xv, yv, NAMES, class_weight="auto")
