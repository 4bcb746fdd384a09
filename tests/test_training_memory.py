"""Training in bounded memory: the merged dataset's int16 rows go into LightGBM block by block.

The merged datasets here are real Zarr products written through the store (the synthetic writer
of benchmarks/training_memory.py); peak memory is measured in a fresh subprocess from its VmHWM.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from lcms.config import TrainingConfig
from lcms.layout import SPLIT_CODES
from lcms.store import TileStore
from tasks.features.tile import unpack
from tasks.training.model import (
    BIN_SAMPLE_BYTES_PER_VALUE,
    BYTES_PER_ROW,
    BYTES_PER_ROW_AND_CLASS,
    StoredRows,
    predict_proba,
    stratified_rows,
    train_model,
    training_row_cap,
)
from tasks.training.stage import fit_merged

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from training_memory import NAME, measure_in_subprocess, write_synthetic_merged  # noqa: E402


def _merged(tmp_path: Path, n: int, columns: int, classes: int, seed: int = 0):
    store = TileStore(str(tmp_path / "store"))
    write_synthetic_merged(store, n, columns, classes, seed=seed)
    return store, store.open_product("merge", NAME)


def test_stratified_rows_keep_every_class_share():
    rng = np.random.default_rng(1)
    y = rng.choice([1, 2, 5, 8], size=10_000, p=[0.6, 0.3, 0.0995, 0.0005])
    rows = np.sort(rng.choice(50_000, size=10_000, replace=False))
    kept = stratified_rows(rows, y, 1_000, seed=3)
    assert np.all(np.diff(kept) > 0) and np.isin(kept, rows).all()
    kept_y = y[np.searchsorted(rows, kept)]
    for code in (1, 2, 5, 8):
        n = int((y == code).sum())
        assert (kept_y == code).sum() == max(1, n * 1_000 // len(rows))  # floor of its share, at least one
    assert len(kept) <= 1_000 + 4
    assert np.array_equal(stratified_rows(rows, y, 20_000), rows)  # under the cap: every row


def test_row_cap_follows_the_memory_setting():
    # 1 GiB over (100 binned bytes + per-row bookkeeping + 4 classes' scores and gradients) per row.
    assert training_row_cap(1.0, 100, 4) == 2**30 // (100 + BYTES_PER_ROW + 4 * BYTES_PER_ROW_AND_CLASS)
    assert training_row_cap(1.0, 100, 4, bins_per_column=1023) == 2**30 // (200 + BYTES_PER_ROW + 4 * 16)
    assert training_row_cap(2.5, 276, 10) == int(2.5 * 2**30) // (276 + 16 + 160)


def test_stored_rows_read_what_unpack_gives(tmp_path):
    _, merged = _merged(tmp_path, 40_000, 12, 3)
    stored = merged.group["features"]
    whole = unpack(stored[:])
    rows = np.sort(np.random.default_rng(0).choice(40_000, size=5_000, replace=False))
    seq = StoredRows(stored, rows, batch_size=1_000)
    assert np.array_equal(seq[0:5_000], whole[rows], equal_nan=True)
    assert np.array_equal(seq[1_234], whole[rows[1_234]], equal_nan=True)
    assert seq[1_234].dtype == np.float64  # LightGBM's bin sampling wants float64 rows
    assert np.array_equal(seq.sample(10_000), whole[rows], equal_nan=True)  # fewer rows than asked: all
    contiguous = StoredRows(stored, np.arange(100, 200))
    assert np.array_equal(contiguous[0:100], whole[100:200], equal_nan=True)
    with pytest.raises(ValueError, match="increasing"):
        StoredRows(stored, rows[::-1])


@pytest.mark.parametrize("class_weight", [None, "balanced"])
def test_model_from_stored_rows_equals_the_old_way(tmp_path, class_weight):
    """Below the memory cap, the block-by-block model is the one trained on the whole float32 arrays.

    With class weights too: LightGBM 4.7 gave streamed validation rows binned on a weighted reference zero
    weights, so their loss was NaN and early stopping ended at the first round."""
    _, merged = _merged(tmp_path, 6_000, 30, 4)
    cfg = TrainingConfig(
        num_threads=1, num_boost_round=40, early_stopping_rounds=5, class_weight=class_weight or "none"
    )
    fitted = fit_merged(merged, cfg)
    assert len(fitted.train_rows) + len(fitted.val_rows) + len(fitted.test_rows) == 6_000

    X = unpack(merged.read("features"))  # the old way: everything as float32, rows copied out
    y, split = merged.read("label"), merged.read("split")
    train, val, test = (split == SPLIT_CODES[k] for k in ("train", "validation", "test"))
    old = train_model(
        X[train],
        y[train],
        X[val],
        y[val],
        [str(c) for c in merged.coord("column")],
        params=cfg.lightgbm_params,
        class_weight=class_weight,
        num_boost_round=cfg.num_boost_round,
        early_stopping_rounds=cfg.early_stopping_rounds,
        seed=cfg.seed,
    )
    new = fitted.booster
    assert new.best_iteration == old.best_iteration > 1
    meta = {"feature_names": new.feature_name(), "classes": new.lcms_classes, "num_iteration": new.best_iteration}
    p_new = predict_proba(new, meta, StoredRows(merged.group["features"], fitted.test_rows))
    p_old = predict_proba(old, meta, X[test])
    np.testing.assert_allclose(p_new, p_old, rtol=0, atol=1e-12)
    assert np.array_equal(np.argmax(p_new, axis=1), np.argmax(p_old, axis=1))


def test_nan_only_column_in_stored_rows_is_rejected():
    X = np.random.default_rng(0).integers(-5_000, 5_000, size=(400, 3)).astype(np.int16)
    X[:, 1] = np.iinfo(np.int16).min  # the int16 fill: missing everywhere
    y = np.repeat([1, 2], 200)
    with pytest.raises(ValueError, match="only NaN.*b"):
        train_model(StoredRows(X, np.arange(0, 400, 2)), y[::2], StoredRows(X, np.arange(1, 400, 2)), y[1::2], "abc")


def test_peak_memory_is_bounded_by_the_setting(tmp_path):
    """A merged dataset far larger than training.max_memory_gib trains within a bound derived from it."""
    n, columns, classes = 1_000_000, 64, 5
    store, merged = _merged(tmp_path, n, columns, classes)
    setting_gib = 0.02
    cap = training_row_cap(setting_gib, columns, classes)
    assert cap < n // 5  # the dataset is much larger than the setting allows
    sample_rows = 20_000  # LightGBM's bin_construct_sample_cnt, lowered from 200 000 to keep the test small
    result = measure_in_subprocess(
        store.url,
        {
            "max_memory_gib": setting_gib,
            "num_boost_round": 3,
            "num_threads": 1,
            "extra_params": {"bin_construct_sample_cnt": sample_rows},
        },
    )
    used = result["train_rows_used"] + result["validation_rows_used"]
    assert cap - classes * 2 <= used <= cap + 2 * classes  # the stratified floors

    # The bound: the setting, finding the bin edges on the sample rows, the small per-sample arrays
    # (label, split, row indices: 48 bytes a sample of the dataset, not of its 64 columns) and
    # 96 MiB for blocks being decoded, histograms, the model and allocator slack, over what the
    # process held before training.
    bound_gib = (setting_gib * 2**30 + BIN_SAMPLE_BYTES_PER_VALUE * sample_rows * columns + 48 * n) / 2**30 + 96 / 1024
    grown = result["peak_rss_gib"] - result["rss_before_training_gib"]
    assert grown < bound_gib, result
    assert n * columns * 4 / 2**30 > bound_gib  # the old way's float32 copy alone would not fit
    assert result["test_oa_synthetic"] > 0.5  # a real model: 5 classes, chance is about 0.2
