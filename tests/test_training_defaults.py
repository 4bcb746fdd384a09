"""The training stage's LightGBM settings: the fields TrainingConfig adds, and training without early stopping.

By default the training stage trains a fixed number of rounds on the training and validation rows together
(`early_stopping_rounds` None); with a number, the validation rows only judge when to stop. The merged
datasets here are real Zarr products written through the store (benchmarks/training_memory.py's writer).
"""

from __future__ import annotations

import sys
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pytest
from pydantic import ValidationError

from lcms.config import TrainingConfig
from lcms.layout import SPLIT_CODES
from lcms.store import TileStore
from tasks.features.tile import unpack
from tasks.training.model import StoredRows, predict_proba, train_model
from tasks.training.stage import fit_merged

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from training_memory import NAME, write_synthetic_merged  # noqa: E402


def _merged(tmp_path: Path, n: int, columns: int, classes: int):
    store = TileStore(str(tmp_path / "store"))
    write_synthetic_merged(store, n, columns, classes, seed=0)
    return store.open_product("merge", NAME)


@pytest.mark.parametrize(
    "field, bad",
    [("max_bin", 1), ("max_delta_step", -0.5), ("bin_sample_rows", 10), ("early_stopping_rounds", 0)],
)
def test_new_fields_are_validated(field, bad):
    with pytest.raises(ValidationError, match=field):
        TrainingConfig(**{field: bad})


def test_fields_reach_lightgbm():
    cfg = TrainingConfig(max_bin=4, max_delta_step=0.7, bin_sample_rows=500, feature_fraction=0.5, num_threads=1)
    assert cfg.early_stopping_rounds is None and TrainingConfig(early_stopping_rounds=5).early_stopping_rounds == 5
    rng = np.random.default_rng(0)
    X = rng.normal(size=(2_000, 6)).astype(np.float32)
    y = np.where(X[:, 0] + 0.5 * X[:, 1] > 0, 2, 1)
    names = [f"f{i}" for i in range(6)]
    booster = train_model(X[:1500], y[:1500], X[1500:], y[1500:], names, params=cfg.lightgbm_params, num_boost_round=8)
    params = booster.params
    assert params["max_bin"] == 4 and params["max_delta_step"] == 0.7
    assert params["bin_construct_sample_cnt"] == 500 and params["feature_fraction"] == 0.5
    # max_bin is obeyed: 4 bins give at most 3 split thresholds per feature over all trees.
    thresholds: dict[int, set[float]] = {}

    def walk(node: dict) -> None:
        if "split_feature" in node:
            thresholds.setdefault(node["split_feature"], set()).add(node["threshold"])
            walk(node["left_child"])
            walk(node["right_child"])

    for tree in booster.dump_model()["tree_info"]:
        walk(tree["tree_structure"])
    assert thresholds and max(len(t) for t in thresholds.values()) <= 3


def test_without_early_stopping_the_validation_rows_train_too(tmp_path):
    """The default: num_boost_round rounds on training + validation rows, block by block from the store; the
    same model as LightGBM trained by hand on those rows as float32 arrays."""
    merged = _merged(tmp_path, 4_000, 20, 3)
    cfg = TrainingConfig(num_threads=1, num_boost_round=12)
    fitted = fit_merged(merged, cfg)
    booster = fitted.booster
    assert booster.current_iteration() == booster.best_iteration == 12

    X = unpack(merged.read("features"))
    y, split = merged.read("label").astype(np.int64), merged.read("split")
    learn = (split == SPLIT_CODES["train"]) | (split == SPLIT_CODES["validation"])  # in row order, as the store
    classes = np.unique(y[split == SPLIT_CODES["train"]])
    params = {
        **cfg.lightgbm_params,
        "objective": "multiclass",
        "num_class": len(classes),
        "seed": cfg.seed,
        "deterministic": True,
        "force_col_wise": True,
        "verbosity": -1,
    }
    by_hand = lgb.train(params, lgb.Dataset(X[learn], np.searchsorted(classes, y[learn])), 12)
    test = split == SPLIT_CODES["test"]
    meta = {"feature_names": booster.feature_name(), "classes": booster.lcms_classes, "num_iteration": None}
    p_stage = predict_proba(booster, meta, StoredRows(merged.group["features"], np.flatnonzero(test)))
    np.testing.assert_allclose(p_stage, by_hand.predict(X[test]), rtol=0, atol=1e-9)

    # Trained on the training rows alone, the model differs: the validation rows did count.
    train_only = lgb.train(params, lgb.Dataset(X[split == 0], np.searchsorted(classes, y[split == 0])), 12)
    assert not np.allclose(train_only.predict(X[test]), p_stage)


def test_with_early_stopping_the_validation_rows_only_judge():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(3_000, 5)).astype(np.float32)
    y = np.where(X[:, 0] > 0, 2, 1)
    flip = rng.random(3_000) < 0.2  # noisy labels: the validation loss soon stops improving
    y[flip] = 3 - y[flip]
    names = [f"f{i}" for i in range(5)]
    params = {"learning_rate": 0.5, "num_leaves": 63, "min_data_in_leaf": 3, "num_threads": 1}
    stopped = train_model(
        X[:2000], y[:2000], X[2000:], y[2000:], names, params=params, num_boost_round=200, early_stopping_rounds=3
    )
    assert 0 < stopped.best_iteration < 200
    # The rounds it keeps are those LightGBM trains on the training rows alone.
    classes = np.unique(y)
    full = {k: v for k, v in stopped.params.items() if k not in ("num_iterations", "early_stopping_round")}
    by_hand = lgb.train(full, lgb.Dataset(X[:2000], np.searchsorted(classes, y[:2000])), stopped.best_iteration)
    np.testing.assert_allclose(
        stopped.predict(X[2000:], num_iteration=stopped.best_iteration), by_hand.predict(X[2000:]), atol=1e-9
    )
