"""Compiled trees (tasks/prediction/compiled.py) against LightGBM's own predictions, the cache, the fallback."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pytest

import tasks.prediction.compiled as compiled
from tasks.features.tile import INT16_FILL, INT16_SCALE
from tasks.prediction.tile import predict_block

REPO = Path(__file__).resolve().parents[1]
CLASSES = [1, 3, 5, 8]


def small_multiclass_model(
    n_classes: int, n_features: int, rounds: int, seed: int, nan_share: float, **params
) -> tuple[lgb.Booster, np.ndarray]:
    """A small multiclass LightGBM model trained on rows with NaNs, and 5000 test rows with NaNs too."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(3000, n_features)).astype(np.float32)
    y = (np.argmax(X[:, :n_classes], axis=1) + (X[:, n_classes] > 1.0)) % n_classes
    X[rng.random(X.shape) < nan_share] = np.nan
    params = {"objective": "multiclass", "num_class": n_classes, "num_threads": 1, "verbose": -1, "seed": 0, **params}
    booster = lgb.train(params, lgb.Dataset(X, y), num_boost_round=rounds)
    X_test = rng.normal(size=(5000, n_features)).astype(np.float32)
    X_test[rng.random(X_test.shape) < nan_share] = np.nan
    return booster, X_test


@pytest.fixture(scope="module")
def model():
    """4 classes × 12 rounds on 20 features, 15 % NaN, and test rows."""
    booster, X_test = small_multiclass_model(4, 20, 12, seed=7, nan_share=0.15)
    return booster, {"classes": CLASSES, "num_iteration": 12}, X_test


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    """One cache for the tests that only predict: the model compiles once for them."""
    return tmp_path_factory.mktemp("compiled")


def test_lleaves_gives_lightgbms_labels_and_probabilities(model, shared_cache):
    booster, metadata, X = model
    predictor = compiled.load_predictor(booster, metadata, "lleaves", shared_cache)
    assert predictor.name == "lleaves"
    expected = booster.predict(X, num_threads=1)  # LightGBM itself, softmax probabilities
    for threads in (1, 2):
        proba = predictor.predict_proba(X.astype(predictor.dtype), threads)
        assert proba.shape == (len(X), 4)
        assert np.abs(proba - expected).max() <= 1e-6
        np.testing.assert_array_equal(np.argmax(proba, axis=1), np.argmax(expected, axis=1))


def test_predict_block_decodes_int16_and_skips_pixels_without_data(model, shared_cache):
    booster, metadata, X = model
    # 4 dates × 5 features stored as the features stage does: int16 × 10 000, fill where missing.
    t, r, c, f = 4, 50, 100, 5
    values = np.clip(X[: r * c].reshape(r, c, t, f), -3, 3)
    stored = np.where(np.isnan(values), INT16_FILL, np.rint(np.nan_to_num(values) * INT16_SCALE)).astype(np.int16)
    stored = np.ascontiguousarray(stored.transpose(2, 0, 1, 3))  # (t, r, c, f)
    no_valid = np.zeros((r, c), bool)
    no_valid[10:20, 30:60] = True
    predictor = compiled.load_predictor(booster, metadata, "auto", shared_cache)
    assert predictor.name == "lleaves"
    labels, percent = predict_block(predictor, stored, no_valid, np.array(CLASSES, np.uint8))

    decoded = np.where(stored == INT16_FILL, np.nan, stored.astype(np.float32) / np.float32(INT16_SCALE))
    proba = booster.predict(decoded.transpose(1, 2, 0, 3).reshape(r * c, t * f), num_threads=1).reshape(r, c, 4)
    expected = np.array(CLASSES, np.uint8)[np.argmax(proba, axis=2)]
    assert (labels[~no_valid] == expected[~no_valid]).all()
    np.testing.assert_array_equal(percent[~no_valid], np.rint(proba * 100).astype(np.uint8)[~no_valid])
    assert (labels[no_valid] == 0).all() and (percent[no_valid] == 0).all()


def test_a_cached_model_is_not_compiled_again(model, tmp_path):
    booster, metadata, X = model
    compiled.load_predictor(booster, metadata, "lleaves", tmp_path)
    (object_file,) = tmp_path.glob("*.so")
    mtime, count = object_file.stat().st_mtime_ns, compiled.CompileStats.compiled
    again = compiled.load_predictor(booster, metadata, "lleaves", tmp_path)
    assert compiled.CompileStats.compiled == count and object_file.stat().st_mtime_ns == mtime
    assert np.abs(again.predict_proba(X.astype(np.float64)) - booster.predict(X)).max() <= 1e-6
    # Other trees are another model: compiled beside it.
    fewer = {**metadata, "num_iteration": 6}
    compiled.load_predictor(booster, fewer, "lleaves", tmp_path)
    assert compiled.CompileStats.compiled == count + 1 and len(list(tmp_path.glob("*.so"))) == 2


CHILD = textwrap.dedent(
    """
    import json, sys
    import lightgbm as lgb, numpy as np
    import tasks.prediction.compiled as compiled
    booster = lgb.Booster(model_file=sys.argv[1])
    predictor = compiled.load_predictor(booster, {"classes": [1, 3, 5, 8]}, "lleaves", sys.argv[2])
    X = np.load(sys.argv[3]).astype(np.float64)
    np.save(sys.argv[4], predictor.predict_proba(X, 1))
    print(json.dumps({"name": predictor.name, "compiled": compiled.CompileStats.compiled}))
    """
)


def test_two_processes_compile_once_and_both_predict(model, tmp_path):
    booster, metadata, X = model
    booster.save_model(tmp_path / "model.txt")
    np.save(tmp_path / "X.npy", X)
    cache = tmp_path / "cache"
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, str(tmp_path / "model.txt"), str(cache), str(tmp_path / "X.npy")]
            + [str(tmp_path / f"proba{i}.npy")],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outputs = [child.communicate(timeout=120) for child in children]
    assert all(child.returncode == 0 for child in children), [err[-2000:] for _, err in outputs]
    reports = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    assert [r["name"] for r in reports] == ["lleaves", "lleaves"]
    assert sorted(r["compiled"] for r in reports) == [0, 1]  # one compiled, the other waited and loaded it
    assert len(list(cache.glob("*.so"))) == 1 and not list(cache.glob(".*tmp*"))
    expected = booster.predict(X)
    for i in range(2):
        assert np.abs(np.load(tmp_path / f"proba{i}.npy") - expected).max() <= 1e-6


def test_off_and_failing_compilers_fall_back_to_lightgbm(model, tmp_path, monkeypatch, caplog):
    booster, metadata, X = model
    with caplog.at_level(logging.WARNING, logger=compiled.__name__):
        off = compiled.load_predictor(booster, metadata, "off", tmp_path)
    assert off.name == "lightgbm" and not caplog.records and not list(tmp_path.iterdir())
    np.testing.assert_array_equal(off.predict_proba(X), booster.predict(X).reshape(len(X), 4))

    def broken(model_file, object_file):
        raise compiled.CompileError("LLVM ran out of registers")

    monkeypatch.setattr(compiled, "_compile_lleaves", broken)
    with caplog.at_level(logging.WARNING, logger=compiled.__name__):
        fallback = compiled.load_predictor(booster, metadata, "auto", tmp_path)
    assert fallback.name == "lightgbm"
    (record,) = caplog.records
    message = record.getMessage()
    assert "\n" not in message and "lleaves" in message and "LLVM ran out of registers" in message
    assert "LightGBM" in message and not list(tmp_path.glob("*.so"))
    labels = np.argmax(fallback.predict_proba(X), axis=1)
    np.testing.assert_array_equal(labels, np.argmax(booster.predict(X), axis=1))


def test_a_compiler_crash_in_the_child_falls_back(model, tmp_path, monkeypatch, caplog):
    booster, metadata, _ = model
    # The compiling child dies (as on an LLVM abort): the worker carries on with LightGBM.
    monkeypatch.setattr(compiled, "_LLEAVES_COMPILE", "import os; os.abort()")
    with caplog.at_level(logging.WARNING, logger=compiled.__name__):
        predictor = compiled.load_predictor(booster, metadata, "lleaves", tmp_path)
    assert predictor.name == "lightgbm" and "lleaves failed" in predictor.reason
    assert not list(tmp_path.glob("*.so")) and not list(tmp_path.glob(".*tmp*"))
