"""Tests of training-sample selection and the spatial train / validation / test splits."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from tasks.sampling.samples import (
    feature_columns,
    gather_samples,
    sample_pixels,
    split_by_blocks,
    split_by_tile,
    split_halves,
)

H, W = 60, 80


def make_labels(seed: int = 1) -> np.ndarray:
    """Classes of very different sizes (incl. a tiny one) plus no-data pixels."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(np.array([0, 1, 2, 3], dtype=np.uint8), size=(H, W), p=[0.1, 0.5, 0.3, 0.1])
    labels[labels == 3] = 2  # keep class 3 only where we put it
    labels[5:7, 5:8] = 3  # 6 pixels of class 3
    return labels


def class_counts(labels: np.ndarray, pixels: np.ndarray) -> dict[int, int]:
    vals, n = np.unique(labels.reshape(-1)[pixels], return_counts=True)
    return dict(zip(vals.tolist(), n.tolist(), strict=True))


# ------------------------------------------------------------------------------- sample_pixels


@pytest.mark.parametrize("stratified", [False, True])
def test_no_data_and_excluded_never_sampled(stratified):
    labels = make_labels()
    exclude = np.zeros_like(labels, dtype=bool)
    exclude[:, :20] = True
    px = sample_pixels(labels, fraction=1.0, stratified=stratified, exclude=exclude)
    flat_labels = labels.reshape(-1)
    assert np.all(flat_labels[px] != 0)
    assert not exclude.reshape(-1)[px].any()
    # fraction 1 takes every eligible pixel exactly once
    expected = np.flatnonzero((labels != 0) & ~exclude)
    np.testing.assert_array_equal(px, expected)
    assert px.dtype == np.int64


def test_uniform_fraction_and_count_exact():
    labels = make_labels()
    n_eligible = int((labels != 0).sum())
    px = sample_pixels(labels, fraction=0.25, seed=3)
    assert px.size == int(np.floor(0.25 * n_eligible + 0.5))
    assert np.all(np.diff(px) > 0)  # sorted, unique
    assert np.all(labels.reshape(-1)[px] != 0)
    px = sample_pixels(labels, count=123, seed=3)
    assert px.size == 123 and np.unique(px).size == 123
    # flat index = row * width + col
    lab = np.zeros((3, 5), dtype=np.uint8)
    lab[2, 4] = 7
    np.testing.assert_array_equal(sample_pixels(lab, count=1), [2 * 5 + 4])


def test_stratified_fraction_within_one_pixel():
    labels = make_labels()
    px = sample_pixels(labels, fraction=0.3, stratified=True, seed=5)
    got = class_counts(labels, px)
    for c in (1, 2, 3):
        expected = 0.3 * int((labels == c).sum())
        assert abs(got[c] - expected) <= 1, (c, got[c], expected)


def test_stratified_fraction_cap():
    labels = make_labels()
    px = sample_pixels(labels, fraction=0.5, stratified=True, max_per_class=50, seed=5)
    got = class_counts(labels, px)
    assert got[1] == 50 and got[2] == 50
    assert got[3] == 3  # 0.5 * 6, below the cap


def test_stratified_count_equal_shares():
    labels = make_labels()
    px = sample_pixels(labels, count=300, stratified=True, seed=2)
    got = class_counts(labels, px)
    # class 3 has only 6 pixels: it gives up 94 of its 100, shared by classes 1 and 2 (147 each).
    assert got == {1: 147, 2: 147, 3: 6}
    assert px.size == 300


def test_stratified_count_remainder_and_cap():
    labels = make_labels()
    # 301 // 3 = 100; class 3 takes 6, leaving 295 for two classes: 147 each + 1 to the lowest code.
    got = class_counts(labels, sample_pixels(labels, count=301, stratified=True, seed=2))
    assert got == {1: 148, 2: 147, 3: 6}
    # With a cap of 40 the total cannot be reached: every class filled to its capacity.
    got = class_counts(labels, sample_pixels(labels, count=301, stratified=True, max_per_class=40, seed=2))
    assert got == {1: 40, 2: 40, 3: 6}
    # A cap above the equal shares changes nothing: class 3 gives up 77, shared by classes 1 and 2.
    got = class_counts(labels, sample_pixels(labels, count=250, stratified=True, max_per_class=200, seed=2))
    assert got == {1: 122, 2: 122, 3: 6}


def test_stratified_sample_is_spread_within_class():
    labels = np.ones((100, 100), dtype=np.uint8)
    px = sample_pixels(labels, count=500, stratified=True, seed=0)
    rows = px // 100
    assert rows.min() < 10 and rows.max() > 90  # random, not the first pixels in raster order


@pytest.mark.parametrize("kwargs", [dict(fraction=0.1), dict(count=50, stratified=True)])
def test_seed_determinism(kwargs):
    labels = make_labels()
    a = sample_pixels(labels, seed=11, **kwargs)
    b = sample_pixels(labels, seed=11, **kwargs)
    c = sample_pixels(labels, seed=12, **kwargs)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(),
        dict(fraction=0.1, count=3),
        dict(fraction=0.0),
        dict(fraction=1.5),
        dict(fraction=float("nan")),
        dict(count=0),
        dict(count=2.5),
        dict(count=10**9),
        dict(count=5, max_per_class=3),
        dict(count=5, stratified=True, max_per_class=0),
        dict(count=5, exclude=np.zeros((H, W), dtype=np.uint8)),
        dict(count=5, exclude=np.zeros((H, W + 1), dtype=bool)),
    ],
)
def test_sample_pixels_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        sample_pixels(make_labels(), **kwargs)


def test_sample_pixels_bad_labels():
    with pytest.raises(ValueError, match="2-D"):
        sample_pixels(np.ones((2, 3, 4), np.uint8), count=1)
    with pytest.raises(ValueError, match="integer"):
        sample_pixels(np.ones((2, 3), np.float32), count=1)


# ----------------------------------------------------------------------- gather / column names


@pytest.mark.parametrize("dtype", [np.int16, np.float32])
def test_gather_samples_matches_hand_made(dtype):
    t, h, w, f = 3, 4, 5, 2
    # value encodes (date, row, col, feature): 1000*date + 100*row + 10*col + feature
    ti, yi, xi, fi = np.meshgrid(np.arange(t), np.arange(h), np.arange(w), np.arange(f), indexing="ij")
    features = (1000 * ti + 100 * yi + 10 * xi + fi).astype(dtype)
    labels = np.arange(h * w, dtype=np.uint8).reshape(h, w)
    pixels = np.array([0, 7, 19], dtype=np.int64)  # (0,0), (1,2), (3,4)
    x, y = gather_samples(features, labels, pixels)
    assert x.dtype == dtype and x.shape == (3, t * f)
    assert y.dtype == np.uint8
    np.testing.assert_array_equal(y, [0, 7, 19])
    expected_row_1_2 = [100 + 20 + 0, 100 + 20 + 1, 1120, 1121, 2120, 2121]
    np.testing.assert_array_equal(x[1], expected_row_1_2)
    np.testing.assert_array_equal(x[2], [340, 341, 1340, 1341, 2340, 2341])

    dates = [dt.date(2023, 1, 1), np.datetime64("2023-02-01"), "2023-03-01"]
    cols = feature_columns(dates, ["NDVI", "NDWI"])
    assert cols == [
        "NDVI@2023-01-01",
        "NDWI@2023-01-01",
        "NDVI@2023-02-01",
        "NDWI@2023-02-01",
        "NDVI@2023-03-01",
        "NDWI@2023-03-01",
    ]
    # column j <-> date j // f, feature j % f: check name against the encoded value
    for j, name in enumerate(cols):
        date_idx, feat_idx = divmod(int(x[0, j]), 1000)
        assert name == f"{['NDVI', 'NDWI'][feat_idx % 10]}@{['2023-01-01', '2023-02-01', '2023-03-01'][date_idx]}"


def test_gather_samples_bad_arguments():
    features = np.zeros((2, 3, 4, 1), np.float32)
    labels = np.zeros((3, 4), np.uint8)
    with pytest.raises(ValueError):
        gather_samples(features[0], labels, np.array([0]))
    with pytest.raises(ValueError):
        gather_samples(features, labels[:2], np.array([0]))
    with pytest.raises(ValueError):
        gather_samples(features, labels, np.array([12]))
    with pytest.raises(ValueError):
        gather_samples(features, labels, np.array([-1]))
    x, y = gather_samples(features, labels, np.array([], dtype=np.int64))
    assert x.shape == (0, 2) and y.shape == (0,)


def test_feature_columns_datetime_and_duplicates():
    assert feature_columns([dt.datetime(2023, 5, 6, 10, 30)], ["B04"]) == ["B04@2023-05-06"]
    with pytest.raises(ValueError):
        feature_columns(["2023-01-01", "2023-01-01"], ["NDVI"])
    with pytest.raises(ValueError):
        feature_columns(["2023-01-01"], [])


# -------------------------------------------------------------------------------------- splits


def tile_samples(n_tiles: int, per_tile: int = 100) -> np.ndarray:
    return np.repeat(np.array([f"T{i:02d}" for i in range(n_tiles)]), per_tile)


def assert_partition(masks: dict[str, np.ndarray], n: int) -> None:
    assert set(masks) == {"train", "validation", "test"}
    total = sum(m.astype(int) for m in masks.values())
    assert all(m.dtype == bool and m.shape == (n,) for m in masks.values())
    assert np.all(total == 1)


def test_split_by_tile_whole_tiles_and_proportions():
    tiles = tile_samples(20)
    masks = split_by_tile(tiles, test_fraction=0.2, validation_fraction=0.1, seed=4)
    assert_partition(masks, tiles.size)
    for name, m in masks.items():
        # each tile entirely inside one split
        in_split = set(tiles[m])
        assert not in_split & set(tiles[~m]), name
    n_tiles = {k: len(set(tiles[m])) for k, m in masks.items()}
    assert n_tiles == {"train": 14, "validation": 2, "test": 4}


def test_split_by_tile_deterministic_and_seed_dependent():
    tiles = tile_samples(10)
    a = split_by_tile(tiles, seed=1)
    b = split_by_tile(tiles, seed=1)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert any(not np.array_equal(a["test"], split_by_tile(tiles, seed=s)["test"]) for s in range(2, 6))


def test_split_by_tile_few_tiles():
    # 2 tiles: 1 to test, validation is a random sample subset of the other tile.
    tiles = tile_samples(2, per_tile=200)
    masks = split_by_tile(tiles, test_fraction=0.2, validation_fraction=0.1, seed=0)
    assert_partition(masks, tiles.size)
    assert len(set(tiles[masks["test"]])) == 1
    assert set(tiles[masks["train"]]) == set(tiles[masks["validation"]])
    # share of the pool = 0.1 / 0.8 = 0.125 of 200 = 25
    assert masks["validation"].sum() == 25
    # no validation requested
    masks = split_by_tile(tiles, validation_fraction=0.0)
    assert not masks["validation"].any()


def test_split_by_tile_errors():
    with pytest.raises(ValueError, match="split_by_blocks"):
        split_by_tile(tile_samples(1))
    with pytest.raises(ValueError):
        split_by_tile(tile_samples(5), test_fraction=0.6, validation_fraction=0.4)
    with pytest.raises(ValueError):
        split_by_tile(tile_samples(5), test_fraction=0.0)
    with pytest.raises(ValueError):
        split_by_tile(np.array([], dtype=str))


def grid_samples(h: int = 200, w: int = 300, step: int = 2):
    r, c = np.meshgrid(np.arange(0, h, step), np.arange(0, w, step), indexing="ij")
    return r.reshape(-1), c.reshape(-1)


def test_split_by_blocks_blocks_whole_and_proportions():
    rows, cols = grid_samples()
    block = 20
    masks = split_by_blocks(rows, cols, block, test_fraction=0.5, validation_fraction=0.1, seed=3)
    assert_partition(masks, rows.size)
    block_id = (rows // block) * 1000 + cols // block
    train_blocks = set(block_id[masks["train"]])
    test_blocks = set(block_id[masks["test"]])
    val_blocks = set(block_id[masks["validation"]])
    assert not train_blocks & test_blocks
    assert not val_blocks & test_blocks and not val_blocks & train_blocks
    n_blocks = 10 * 15
    assert len(test_blocks) == 75
    assert len(val_blocks) == 15  # 0.1 / 0.5 of the 75 pool blocks
    # equal sample counts per block -> sample proportions follow
    assert masks["test"].mean() == pytest.approx(0.5)
    assert masks["validation"].mean() == pytest.approx(0.1)
    assert len(train_blocks) + len(val_blocks) + len(test_blocks) == n_blocks


def test_split_by_blocks_tiles_distinct_and_deterministic():
    rows, cols = grid_samples(40, 40, 1)
    rows2 = np.concatenate([rows, rows])
    cols2 = np.concatenate([cols, cols])
    tiles = np.repeat(np.array(["A", "B"]), rows.size)
    a = split_by_blocks(rows2, cols2, 20, tile_ids=tiles, validation_fraction=0.0, seed=7)
    b = split_by_blocks(rows2, cols2, 20, tile_ids=tiles, validation_fraction=0.0, seed=7)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert a["test"].sum() == 4 * 400  # 8 blocks (2 tiles x 4), half to test
    # no block (tile, block row, block col) has samples in both train and test
    key = np.char.add(tiles, (rows2 // 20 * 10 + cols2 // 20).astype(str))
    assert not set(key[a["test"]]) & set(key[a["train"]])


def test_split_by_blocks_errors():
    rows, cols = grid_samples(10, 10, 1)
    with pytest.raises(ValueError, match="one"):
        split_by_blocks(rows, cols, 100)
    with pytest.raises(ValueError):
        split_by_blocks(rows, cols, 0)
    with pytest.raises(ValueError):
        split_by_blocks(rows, cols[:-1], 5)
    with pytest.raises(ValueError):
        split_by_blocks(rows.astype(float), cols, 5)


def test_split_halves():
    cols = np.array([0, 1, 49, 50, 51, 99])
    masks = split_halves(cols, 100)
    np.testing.assert_array_equal(masks["train"], [True, True, True, False, False, False])
    np.testing.assert_array_equal(masks["test"], ~masks["train"])
    assert not masks["validation"].any()
    with pytest.raises(ValueError):
        split_halves(np.array([100]), 100)
