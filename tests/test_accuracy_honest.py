"""Training stage validation on every labelled pixel of the held-out area, beside the (eroded) test samples."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn import metrics as skm

from lcms.config import DateGridConfig, MergeConfig, SamplingConfig, TrainingConfig
from lcms.geometry import PixelGrid
from lcms.grid import Tile
from lcms.layout import SPLIT_CODES
from lcms.store import TileStore
from tasks.features.temporal import date_grid
from tasks.features.tile import pack
from tasks.merge.dataset import merge_samples
from tasks.reference.polygons import erode_labels
from tasks.sampling.tile import sampling_tile
from tasks.training.holdout import held_out_area
from tasks.training.metrics import metrics_markdown, scores
from tasks.training.model import predict_labels
from tasks.training.stage import fetch_model, training_stage

LEGEND = [
    {"code": 0, "name": "no data", "color": "#000000"},
    {"code": 1, "name": "field", "color": "#ffff00"},
    {"code": 2, "name": "forest", "color": "#054907"},
    {"code": 3, "name": "water", "color": "#0000ff"},
]


def test_held_out_area_follows_the_split_method():
    rows = np.array([0, 0, 5, 5, 9])
    cols = np.array([0, 9, 6, 8, 9])
    split = np.array([SPLIT_CODES[s] for s in ("train", "test", "validation", "test", "test")], dtype=np.uint8)
    halves = held_out_area("halves", (10, 10), rows, cols, split)
    # The east half, less the validation sample there (never scored, whatever the method).
    assert halves[:, 5:].sum() == 49 and not halves[5, 6] and not halves[:, :5].any()
    blocks = held_out_area("blocks", (10, 10), rows, cols, split, block_px=5)
    expected = np.zeros((10, 10), bool)
    expected[0:5, 5:10] = expected[5:10, 5:10] = True  # the two blocks holding test samples
    expected[5, 6] = False
    np.testing.assert_array_equal(blocks, expected)
    assert held_out_area("tile", (10, 10), rows, cols, split).sum() == 100 - 2  # all but train/validation pixels
    none = held_out_area("tile", (10, 10), rows, cols, np.zeros(5, np.uint8))
    assert not none.any()
    with pytest.raises(ValueError, match="unknown split"):
        held_out_area("random", (10, 10), rows, cols, split)


def test_scores_macro_f1_counts_only_classes_in_the_reference():
    y = np.array([1, 1, 2, 2])
    pred = np.array([1, 2, 2, 2])
    block = scores(y, pred, [1, 2, 3], ["a", "b", "c"])
    assert block["macro_f1"] == pytest.approx(skm.f1_score(y, pred, labels=[1, 2], average="macro"))
    assert block["per_class"]["c"]["support"] == 0 and block["overall_accuracy"] == 0.75


def labels_of(shape: tuple[int, int]) -> np.ndarray:
    """Fields and forest in 6-px stripes, a 1-px water line in each tile, no data in the first row."""
    rows, cols = np.indices(shape)
    labels = np.where((cols // 6) % 2 == 0, 1, 2).astype(np.uint8)
    labels[:, 13] = 3
    labels[0] = 0
    return labels


def write_tile(store, tile, labels, rng, no_valid):
    """Pure class signal inside the classes; border pixels (those erosion removes) take the other class's."""
    dates = date_grid(2023, DateGridConfig(step_days=90))
    h, w = labels.shape
    border = (erode_labels(labels, 1) == 0) & (labels > 0)
    signal = np.where(labels == 1, 0.2, np.where(labels == 2, 0.8, 0.5)).astype(np.float32)
    signal[border & (labels == 1)] = 0.8  # a border field pixel looks like forest...
    signal[border & (labels == 2)] = 0.2  # ...and a border forest pixel like a field
    values = signal[None, :, :, None] + rng.normal(0, 0.03, (len(dates), h, w, 1)).astype(np.float32)
    values[:, no_valid] = np.nan
    coords = {"time": dates, "feature": np.array(["NDVI"])}
    with store.writer("features", 2023, tile.tile_id, tile.grid, "f", coords) as writer:
        writer.write("features", pack(values, "int16"))
        writer.write("no_valid", no_valid)
        writer.write("valid_count", np.full((h, w), 3, np.uint16))
    with store.writer("reference", 2023, tile.tile_id, tile.grid, "r", {}, {"legend": LEGEND}) as writer:
        writer.write("labels", labels)
        writer.write("labels_eroded", erode_labels(labels, 1))


def test_training_scores_every_labelled_pixel_of_the_held_out_tile(tmp_path):
    store = TileStore(str(tmp_path / "store"), product="land-cover")
    rng = np.random.default_rng(0)
    shape = (40, 48)
    tiles = []
    for i in range(2):
        grid = PixelGrid("EPSG:32633", (10.0, 0.0, 500_000.0 + 480 * i, 0.0, -10.0, 5_000_000.0), shape)
        tile = Tile(f"33N_t{i}", grid, grid.bounds)
        no_valid = np.zeros(shape, bool)
        no_valid[5, 5:9] = True  # never observed: not scored
        write_tile(store, tile, labels_of(shape), rng, no_valid)
        sampling_tile(store, tile, 2023, SamplingConfig(fraction=1.0))
        tiles.append(tile)
    merge = MergeConfig(split="tile", test_fraction=0.5, validation_fraction=0.1, seed=0)
    merge_samples(store, [t.tile_id for t in tiles], [2023], {t.tile_id: 48 for t in tiles}, merge, 100)
    record, metrics = training_stage(store, "land-cover", TrainingConfig(num_boost_round=50, num_threads=1))

    merged = store.open_product("merge", "land-cover")
    test_tile = merged.attrs["tile_ids"][int(merged.read("tile")[merged.read("split") == SPLIT_CODES["test"]][0])]
    # Water (code 3) is a 1-px line: erosion removes it, so the model never learnt it; it is counted, not scored.
    labels = labels_of(shape)
    no_valid = store.open_tile("features", 2023, test_tile).read("no_valid")
    scored = np.isin(labels, [1, 2]) & ~no_valid
    everything = metrics["all_labelled"]
    assert everything["n_samples"] == scored.sum()
    assert metrics["all_labelled_unseen_classes"] == {3: int(((labels == 3) & ~no_valid).sum())}

    # Independent check: the stored model on the stored features of every scored pixel.
    booster, metadata = fetch_model(store, "land-cover", tmp_path / "model")
    features = store.open_tile("features", 2023, test_tile).read("features").astype(np.float32) / 10_000
    X = features[:, scored, :].transpose(1, 0, 2).reshape(int(scored.sum()), -1)
    predicted = predict_labels(booster, metadata, X)
    assert everything["overall_accuracy"] == pytest.approx(skm.accuracy_score(labels[scored], predicted))
    # Eroded test samples are interior pixels, all right; the borders the model never saw are wrong.
    assert metrics["overall_accuracy"] > 0.99
    assert everything["overall_accuracy"] < 0.8
    interior = erode_labels(labels, 1)[scored] > 0
    assert metrics["interior"]["n_samples"] == interior.sum() == metrics["n_samples"]
    assert metrics["interior"]["overall_accuracy"] == pytest.approx(
        skm.accuracy_score(labels[scored][interior], predicted[interior])
    )
    assert set(everything["per_class"]["field"]) >= {"recall", "precision", "f1", "support"}

    stored = json.loads(store.read_file("training", "land-cover", "metrics.json"))
    assert stored["all_labelled"]["overall_accuracy"] == everything["overall_accuracy"]
    assert record.extra["all_labelled_overall_accuracy"] == everything["overall_accuracy"]
    md = store.read_file("training", "land-cover", "metrics.md").decode()
    assert md == metrics_markdown(metrics) + md[len(metrics_markdown(metrics)) :]
    assert f"**{everything['overall_accuracy']:.3f}**" in md and f"{metrics['overall_accuracy']:.3f}" in md
    assert "every labelled pixel" in md and "eroded" in md

    # A cap on the pixels scored draws a seeded random subset and says so.
    _, capped = training_stage(
        store, "land-cover", TrainingConfig(num_boost_round=50, num_threads=1, all_labelled_max_pixels=100)
    )
    assert capped["all_labelled"]["n_samples"] == 100
    assert "a random 100 of them" in capped["all_labelled_description"]
