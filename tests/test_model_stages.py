"""Sampling, merge and training stages: tile task, AOI tasks, flows, CLI, and the real Slovenia patch.

Most tests write the features and reference stages' output directly (known arrays on a real
grid), so that every sampled row can be checked against an independent read of the store.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import rasterio
import yaml
from PIL import Image
from rasterio.features import shapes
from shapely.geometry import shape
from shapely.ops import unary_union
from sklearn import metrics as skm

from flows.common import load_grid
from lcms.config import MergeConfig, SamplingConfig, TrainingConfig, parse_config
from lcms.layout import SPLIT_CODES
from lcms.legend import LULC_LEGEND
from lcms.store import TileStore
from tasks.change.polygons import read_change_layer
from tasks.download.synthetic import SyntheticScene
from tasks.features.tile import pack
from tasks.merge.dataset import MergeError, merge_samples
from tasks.sampling.tile import sampling_tile
from tasks.training.metrics import PLOT_FILES
from tasks.training.model import predict_labels
from tasks.training.stage import TrainingError, fetch_model, training_stage

LEGEND_ATTR = [c.__dict__ for c in LULC_LEGEND]
FEATURES = ["NDVI", "B04"]


def run_config(tmp_path, width_m=7_500, **changes):
    data = {
        "name": "model-test",
        # 2.5 km tiles (250 px + 5 px of buffer on each side): 3 × 2 = 6 tiles by default.
        "aoi": {"bbox": [460_000, 5_090_000, 460_000 + width_m, 5_095_000], "bbox_crs": "EPSG:32633"},
        "years": [2023, 2024],
        "grid": {"tile_size_m": 2500, "buffer_m": 50},
        "store": {"url": str(tmp_path / "store")},
        "cluster": {"kind": "local", "n_workers": 2},
    }
    data.update(changes)
    return parse_config(data)


def dates_of(year: int, n: int = 4) -> np.ndarray:
    """The first dates of a 60-day date grid, as the features stage makes them (same offsets every year)."""
    from lcms.config import DateGridConfig
    from tasks.features.temporal import date_grid

    return date_grid(year, DateGridConfig(step_days=60))[:n]


def synthetic_labels(tile_index: int, shape: tuple[int, int]) -> np.ndarray:
    """Classes 1, 2, 3 in 20-px stripes (shifted per tile), no data in the top 30 rows."""
    rows, cols = np.indices(shape)
    labels = (1 + (rows // 20 + cols // 20 + tile_index) % 3).astype(np.uint8)
    labels[:30] = 0
    return labels


def write_inputs(store, tile, year, labels, seed=0, no_valid=None, names=FEATURES, n_dates=4):
    """Features (class signal + noise) and reference labels of one tile-year, as the stages store them."""
    rng = np.random.default_rng(seed)
    h, w = labels.shape
    signal = 0.2 * labels[None, :, :, None].astype(np.float32) + np.linspace(0, 0.3, n_dates)[:, None, None, None]
    values = (signal + rng.normal(0, 0.08, (n_dates, h, w, len(names)))).astype(np.float32)
    no_valid = np.zeros((h, w), bool) if no_valid is None else no_valid
    values[:, no_valid] = np.nan
    coords = {"time": dates_of(year, n_dates), "feature": np.array(names)}
    with store.writer("features", year, tile.tile_id, tile.grid, f"f{seed}", coords) as writer:
        writer.write("features", pack(values, "int16"))
        writer.write("no_valid", no_valid)
        writer.write("valid_count", np.full((h, w), 5, np.uint16))
    with store.writer("reference", year, tile.tile_id, tile.grid, f"r{seed}", {}, {"legend": LEGEND_ATTR}) as writer:
        writer.write("labels", labels)
        writer.write("labels_eroded", labels)


@pytest.fixture
def aoi(tmp_path):
    """A store with a 6-tile grid and features + reference for both years on every tile."""
    cfg = run_config(tmp_path)
    store = TileStore.from_config(cfg.store)
    grid = load_grid(cfg, store)
    for year in cfg.years:
        for i, tile in enumerate(grid):
            write_inputs(store, tile, year, synthetic_labels(i, tile.grid.shape), seed=year * 10 + i)
    return cfg, store, grid


# --------------------------------------------------------------------------- sampling, tile task


def test_samples_are_the_features_of_labelled_core_pixels(aoi):
    cfg, store, grid = aoi
    tile = grid.tiles[0]
    no_valid = np.zeros(tile.grid.shape, bool)
    no_valid[100:120, 100:140] = True  # never observed: must not be sampled
    labels = synthetic_labels(0, tile.grid.shape)
    write_inputs(store, tile, 2023, labels, seed=7, no_valid=no_valid)

    record = sampling_tile(store, tile, 2023, SamplingConfig(count=3000))
    assert record.extra["n_samples"] == 3000
    reader = store.open_tile("sampling", 2023, tile.tile_id)
    rows, cols, y = reader.read("row"), reader.read("col"), reader.read("label")
    rows_core, cols_core = tile.core_window
    assert (rows >= rows_core.start).all() and (rows < rows_core.stop).all()
    assert (cols >= cols_core.start).all() and (cols < cols_core.stop).all()
    assert not no_valid[rows, cols].any()
    np.testing.assert_array_equal(y, labels[rows, cols])
    assert len(set(zip(rows.tolist(), cols.tolist(), strict=True))) == 3000  # no pixel twice

    # Independent read: the features stage's output through xarray, pointwise at (row, col).
    import xarray as xr

    features = store.open_dataset("features", 2023, tile.tile_id)["features"]
    expected = features.isel(y=xr.DataArray(rows, dims="s"), x=xr.DataArray(cols, dims="s"))
    expected = expected.transpose("s", "time", "feature").values.reshape(3000, -1)  # date-major
    got = store.open_dataset("sampling", 2023, tile.tile_id)["features"].values  # decoded like the features
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-7)
    assert list(reader.coord("column"))[:3] == ["NDVI@2023-01-01", "B04@2023-01-01", "NDVI@2023-03-02"]


def test_sampling_sizes_strata_caps_and_seeds(aoi):
    _, store, grid = aoi
    tile, other = grid.tiles[0], grid.tiles[1]
    rows_core, cols_core = tile.core_window
    labels = synthetic_labels(0, tile.grid.shape)
    eligible = labels[rows_core, cols_core] > 0

    def sample(cfg, t=tile, year=2023):
        sampling_tile(store, t, year, cfg)
        reader = store.open_tile("sampling", year, t.tile_id)
        return reader.read("row"), reader.read("col"), reader.read("label")

    # More than the tile holds: every eligible pixel, once.
    rows, _, _ = sample(SamplingConfig(count=10**6))
    assert len(rows) == eligible.sum()
    rows, _, _ = sample(SamplingConfig(fraction=0.1))
    assert len(rows) == int(np.floor(0.1 * eligible.sum() + 0.5))
    _, _, y = sample(SamplingConfig(count=900, stratified=True))
    assert np.bincount(y, minlength=4)[1:].tolist() == [300, 300, 300]
    _, _, y = sample(SamplingConfig(fraction=0.5, stratified=True, max_per_class=1000))
    assert np.bincount(y, minlength=4)[1:].max() == 1000

    first = sample(SamplingConfig(count=500, seed=1))
    again = sample(SamplingConfig(count=500, seed=1))
    np.testing.assert_array_equal(first[0], again[0])
    other_year = sample(SamplingConfig(count=500, seed=1), year=2024)
    assert not np.array_equal(first[0] * 1000 + first[1], other_year[0] * 1000 + other_year[1])
    other_tile = sample(SamplingConfig(count=500, seed=1), t=other)
    assert not np.array_equal(first[0] * 1000 + first[1], other_tile[0] * 1000 + other_tile[1])


def test_a_tile_without_labels_stores_no_samples(aoi):
    _, store, grid = aoi
    tile = grid.tiles[2]
    write_inputs(store, tile, 2023, np.zeros(tile.grid.shape, np.uint8))
    record = sampling_tile(store, tile, 2023, SamplingConfig())
    assert record.extra["n_samples"] == 0
    assert store.open_dataset("sampling", 2023, tile.tile_id).sizes["sample"] == 0


def test_sampling_config_is_checked():
    assert SamplingConfig(fraction=0.2).count is None
    with pytest.raises(ValueError, match="either fraction or count"):
        SamplingConfig(fraction=0.2, count=10)
    with pytest.raises(ValueError, match="stratified"):
        SamplingConfig(max_per_class=10)
    with pytest.raises(ValueError, match="merge.years"):
        parse_config({**run_config_dict(), "merge": {"years": [2019]}})


def run_config_dict():
    return {"name": "x", "aoi": {"bbox": [14, 46, 14.1, 46.1]}, "years": [2023]}


# --------------------------------------------------------------------------- merge


def sample_all(store, grid, years, cfg=None):
    cfg = cfg or SamplingConfig(count=2000)
    for year in years:
        for tile in grid:
            sampling_tile(store, tile, year, cfg)


def widths(grid):
    return {t.tile_id: t.grid.width for t in grid}


def test_merge_by_tile_keeps_tiles_whole_across_years_and_copies_every_row(aoi):
    cfg, store, grid = aoi
    sample_all(store, grid, [2023, 2024])
    merge_cfg = MergeConfig(split="tile", test_fraction=0.34, validation_fraction=0.16)
    record = merge_samples(store, grid.tile_ids, [2023, 2024], widths(grid), merge_cfg, 100)
    assert record.extra["n_samples"] == 2 * 6 * 2000
    merged = store.open_product("merge", "land-cover")
    tiles = np.array(merged.attrs["tile_ids"])[merged.read("tile")]
    split, year = merged.read("split"), merged.read("year")
    # Every tile is in one split, in both years; 6 tiles: 2 test, 1 validation, 3 train.
    per_tile = {t: set(split[tiles == t].tolist()) for t in grid.tile_ids}
    assert all(len(s) == 1 for s in per_tile.values())
    counts = np.bincount([s.pop() for s in per_tile.values()], minlength=3)
    assert counts.tolist() == [3, 1, 2]
    # Columns line up by position across a common and a leap year, named without the year.
    # 2024-03-01 is 60 days after 2024-01-01, like 2023-03-02 in 2023: the first year names the column.
    assert list(merged.coord("column")) == [f"{f}@{d}" for d in ("01-01", "03-02", "05-01", "06-30") for f in FEATURES]
    # The rows are the tiles' rows, in order.
    for t in (grid.tiles[0], grid.tiles[5]):
        source = store.open_tile("sampling", 2024, t.tile_id)
        mine = (tiles == t.tile_id) & (year == 2024)
        np.testing.assert_array_equal(merged.read("features")[mine], source.read("features"))
        np.testing.assert_array_equal(merged.read("label")[mine], source.read("label"))
        np.testing.assert_array_equal(merged.read("row")[mine], source.read("row"))


def test_merge_by_blocks_and_by_halves(aoi):
    _, store, grid = aoi
    sample_all(store, grid, [2023])
    # One dataset per product: the two splits are made one after the other into the store's product.
    record = merge_samples(store, grid.tile_ids[:2], [2023], widths(grid), MergeConfig(split="auto"), 100)
    assert record.extra["split_method"] == "blocks"  # 2 tiles < min_tiles_for_tile_split
    merged = store.open_product("merge", store.product)
    key = merged.read("tile").astype(np.int64) * 100 + (merged.read("row") // 100) * 10 + merged.read("col") // 100
    split = merged.read("split")
    assert all(len(set(split[key == k].tolist())) == 1 for k in np.unique(key))
    assert len(set(split.tolist())) == 3

    merge_samples(store, grid.tile_ids, [2023], widths(grid), MergeConfig(split="halves"), 100)
    merged = store.open_product("merge", store.product)
    split, col = merged.read("split"), merged.read("col")
    width = grid.tiles[0].grid.width
    np.testing.assert_array_equal(split == SPLIT_CODES["test"], col >= width // 2)
    assert abs((split == SPLIT_CODES["validation"]).mean() - 0.1) < 0.01


def test_merge_refuses_misaligned_or_missing_samples(aoi, tmp_path):
    _, store, grid = aoi
    sample_all(store, grid, [2023])
    with pytest.raises(MergeError, match="cannot split the samples by tile"):
        merge_samples(store, grid.tile_ids[:1], [2023], widths(grid), MergeConfig(split="tile"), 100)
    # A tile whose features were made with another config.
    write_inputs(store, grid.tiles[1], 2023, synthetic_labels(1, grid.tiles[1].grid.shape), names=["NDVI"])
    sampling_tile(store, grid.tiles[1], 2023, SamplingConfig(count=100))
    with pytest.raises(MergeError, match="feature columns"):
        merge_samples(store, grid.tile_ids, [2023], widths(grid), MergeConfig(), 100)
    assert store.product_record("merge", "land-cover") is None  # nothing half-written
    for tile in grid.tiles[:2]:
        write_inputs(store, tile, 2023, np.zeros(tile.grid.shape, np.uint8))
        sampling_tile(store, tile, 2023, SamplingConfig())
    with pytest.raises(MergeError, match="none of the 2 tiles has samples"):
        merge_samples(store, grid.tile_ids[:2], [2023], widths(grid), MergeConfig(), 100)


# --------------------------------------------------------------------------- training


def test_training_stores_a_model_whose_metrics_can_be_recomputed(aoi, tmp_path):
    _, store, grid = aoi
    sample_all(store, grid, [2023])
    merge_samples(store, grid.tile_ids, [2023], widths(grid), MergeConfig(split="tile"), 100)
    record, metrics = training_stage(store, "land-cover", TrainingConfig(num_boost_round=60))
    assert set(PLOT_FILES) | {"model.txt", "model.json", "metrics.json", "metrics.md"} <= set(record.arrays)

    booster, metadata = fetch_model(store, "land-cover", tmp_path / "model")
    assert metadata["classes"] == [1, 2, 3]
    assert [c["name"] for c in metadata["legend"]] == ["cultivated land", "forest", "grassland"]
    lineage = metadata["lineage"]["data"]
    assert lineage["dataset_attempt"] == store.product_record("merge", "land-cover").attempt
    assert lineage["split_method"] == "tile" and lineage["years"] == [2023]
    # Independent check: predict the test split with the downloaded model, score with sklearn.
    merged = store.open_product("merge", "land-cover")
    test = merged.read("split") == SPLIT_CODES["test"]
    X = merged.read("features")[test].astype(np.float32) / 10_000
    y = merged.read("label")[test]
    predicted = predict_labels(booster, metadata, X)
    assert metrics["overall_accuracy"] == pytest.approx(skm.accuracy_score(y, predicted))
    assert metrics["kappa"] == pytest.approx(skm.cohen_kappa_score(y, predicted))
    assert metrics["n_samples"] == test.sum()
    assert metrics["overall_accuracy"] > 0.9  # the classes are 2.5 noise sigmas apart
    stored = json.loads(store.read_file("training", "land-cover", "metrics.json"))
    assert stored["overall_accuracy"] == metrics["overall_accuracy"]
    assert "overall accuracy" in store.read_file("training", "land-cover", "metrics.md").decode()
    with Image.open(tmp_path / "model" / "feature_importance.png") as image:
        assert image.size[0] > 100


def test_training_refuses_one_class_and_drops_classes_it_never_saw(aoi):
    _, store, grid = aoi
    for i, tile in enumerate(grid):
        write_inputs(store, tile, 2023, np.where(synthetic_labels(i, tile.grid.shape) > 0, 2, 0).astype(np.uint8))
    sample_all(store, grid, [2023], SamplingConfig(count=300))
    merge_samples(store, grid.tile_ids, [2023], widths(grid), MergeConfig(split="tile"), 100)
    with pytest.raises(TrainingError, match="has 1 class"):
        training_stage(store, "land-cover", TrainingConfig())
    assert store.product_record("training", "land-cover") is None

    # Class 8 only on the test tiles: reported, not scored.
    merged = store.open_product("merge", "land-cover")
    tile_ids = np.array(merged.attrs["tile_ids"])[merged.read("tile")]
    test_tiles = set(tile_ids[merged.read("split") == SPLIT_CODES["test"]])
    for i, tile in enumerate(grid):
        labels = synthetic_labels(i, tile.grid.shape)
        if tile.tile_id in test_tiles:
            labels[labels == 3] = 8
        write_inputs(store, tile, 2023, labels)
    sample_all(store, grid, [2023], SamplingConfig(count=600))
    merge_samples(store, grid.tile_ids, [2023], widths(grid), MergeConfig(split="tile"), 100)
    _, metrics = training_stage(store, "land-cover", TrainingConfig(num_boost_round=30))
    assert metrics["dropped_unseen_classes"]["test"].get("8", metrics["dropped_unseen_classes"]["test"].get(8)) > 0
    assert metrics["classes"] == [1, 2, 3]


# --------------------------------------------------------------------------- real data


def test_real_patch_through_sampling_merge_and_training(shared_data, tmp_path):
    """The Slovenia patch: 2017 NDVI and CLM → features; LULC.gpkg → reference; east half held out."""
    from lcms.config import DateGridConfig, ReferenceConfig
    from lcms.geometry import PixelGrid
    from lcms.grid import Tile
    from tasks.features.temporal import date_grid, interpolate
    from tasks.reference.tile import reference_tile, reference_version

    root = shared_data / "slovenia-testpatch" / "eopatch"
    ring = json.loads((root / "bbox.geojson").read_text())["coordinates"][0]
    xs, ys = [p[0] for p in ring], [p[1] for p in ring]
    h, w = 101, 100
    grid = PixelGrid(
        "EPSG:32633", ((max(xs) - min(xs)) / w, 0.0, min(xs), 0.0, -(max(ys) - min(ys)) / h, max(ys)), (h, w)
    )
    tile = Tile("33N_patch", grid, grid.bounds)
    store = TileStore(str(tmp_path / "store"))

    times = np.array(json.loads((root / "timestamps.json").read_text()), dtype="datetime64[s]")
    in_2017 = times.astype("datetime64[Y]") == np.datetime64("2017", "Y")
    valid = (np.load(root / "mask" / "IS_DATA.npy") & ~np.load(root / "mask" / "CLM.npy").astype(bool))[..., 0]
    kept = in_2017 & (valid.mean(axis=(1, 2)) >= 0.8)
    ndvi = np.load(root / "data" / "NDVI.npy")[kept].astype(np.float32)
    targets = date_grid(2017, DateGridConfig())
    values, no_valid = interpolate(ndvi, times[kept], valid[kept].astype(bool), targets)
    with store.writer("features", 2017, tile.tile_id, grid, "ndvi", {"time": targets, "feature": ["NDVI"]}) as wr:
        wr.write("features", pack(values, "int16"))
        wr.write("no_valid", no_valid)
        wr.write("valid_count", valid[kept].sum(axis=0).astype(np.uint16))
    reference = ReferenceConfig(path=str(root / "vector_timeless" / "LULC.gpkg"), class_column="LULC_ID")
    reference_tile(store, tile, 2017, reference, reference_version(reference))

    sampling_tile(store, tile, 2017, SamplingConfig(fraction=1.0))
    merge_samples(store, [tile.tile_id], [2017], {tile.tile_id: w}, MergeConfig(split="halves"), 100)
    _, metrics = training_stage(store, "land-cover", TrainingConfig())
    labelled = (store.open_tile("reference", 2017, tile.tile_id).read("labels_eroded") > 0) & ~no_valid
    assert metrics["samples"]["test"] + metrics["samples"]["train"] + metrics["samples"]["validation"] == labelled.sum()
    # Forest and cultivated land dominate the patch; a 2017 NDVI series separates them well.
    assert metrics["overall_accuracy"] > 0.9, metrics["overall_accuracy"]
    assert metrics["per_class"]["forest"]["f1"] > 0.9

    # The patch's map: predicted, post-processed, exported; the COG equals the tile pixel for pixel.
    import rasterio

    from lcms.config import ExportConfig, PostprocessConfig, PredictionConfig
    from lcms.grid import AreaGrid
    from tasks.export.cog import validate_cog
    from tasks.export.maps import export_year
    from tasks.postprocess.tile import postprocess_tile
    from tasks.prediction.tile import prediction_tile

    prediction_tile(store, tile, 2017, PredictionConfig(), "land-cover")
    postprocess_tile(store, tile, 2017, PostprocessConfig())
    maps = export_year(store, AreaGrid([tile]), 2017, ExportConfig(url=str(tmp_path / "maps")), "land-cover")
    labels_map = maps[0]["url"]
    assert validate_cog(labels_map)[0]
    with rasterio.open(labels_map) as src:
        assert src.shape == grid.shape and src.crs.to_epsg() == 32633
        assert src.transform.almost_equals(grid.affine)
        np.testing.assert_array_equal(src.read(1), store.open_tile("postprocess", 2017, tile.tile_id).read("labels"))
        assert src.colormap(1)[2][:3] == (5, 73, 7)
    predicted = store.open_tile("prediction", 2017, tile.tile_id).read("labels")
    reference_labels = store.open_tile("reference", 2017, tile.tile_id).read("labels_eroded")
    east = np.zeros(grid.shape, bool)
    east[:, w // 2 :] = True
    scored = east & (reference_labels > 0) & ~no_valid
    # The map agrees with the held-out reference as the test split's metrics said.
    assert (predicted[scored] == reference_labels[scored]).mean() > 0.9


# --------------------------------------------------------------------------- flows and CLI


@pytest.mark.usefixtures("prefect_server")
def test_flows_chain_skip_and_redo(aoi):
    import asyncio

    from prefect.client.orchestration import get_client

    from flows.common import StageInputError
    from flows.merge import merge_flow
    from flows.sampling import sampling_flow
    from flows.training import training_flow

    cfg, store, grid = aoi
    cfg = cfg.model_copy(update={"sampling": SamplingConfig(count=500), "training": TrainingConfig(num_boost_round=30)})
    with pytest.raises(StageInputError, match="merged dataset 'land-cover'"):
        training_flow(cfg)
    with pytest.raises(StageInputError, match="sampling stage's output"):
        merge_flow(cfg)

    assert sampling_flow(cfg)["done"] == 12
    merged = merge_flow(cfg)
    assert merged["status"] == "done" and merged["split_method"] == "tile"  # 6 tiles
    assert merged["n_samples"] == 12 * 500
    trained = training_flow(cfg)
    assert trained["status"] == "done" and trained["overall_accuracy"] > 0.8

    assert merge_flow(cfg)["status"] == "skipped"
    assert training_flow(cfg)["status"] == "skipped"
    # Other training settings redo the model only; a changed sampling redoes the merge too.
    retrained = cfg.model_copy(update={"training": TrainingConfig(num_boost_round=31)})
    assert training_flow(retrained)["status"] == "done"
    resampled = cfg.model_copy(update={"sampling": SamplingConfig(count=400)})
    assert sampling_flow(resampled)["done"] == 12
    assert merge_flow(resampled)["n_samples"] == 12 * 400

    async def artifact_keys():
        async with get_client() as client:
            return {a.key for a in await client.read_artifacts()}

    assert {"merge-land-cover", "training-land-cover", "sampling-tiles"} <= asyncio.run(artifact_keys())


def test_cli_runs_every_stage_on_synthetic_reference(tmp_path):
    """`lcms synthetic-reference`, then `lcms run` through the report, in subprocesses on ephemeral Prefect.

    Two years: the model learns 2023 and maps both; the scene's planted changes must come out as change polygons.
    """
    cfg = run_config(
        tmp_path,
        width_m=5_000,
        years=[2023, 2024],
        merge={"years": [2023]},
        download={"source": {"seed": 5, "dates_per_year": 16, "cloud_cover": 0.2}},
        reference={"path": str(tmp_path / "reference.gpkg")},
        sampling={"count": 1500},
        training={"num_boost_round": 40},
    )
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    lcms = [sys.executable, "-m", "lcms.cli"]

    made = subprocess.run([*lcms, "synthetic-reference", str(path)], capture_output=True, text=True, env=env)
    assert made.returncode == 0, made.stderr
    assert (tmp_path / "reference.gpkg").exists()
    again = subprocess.run([*lcms, "synthetic-reference", str(path)], capture_output=True, text=True, env=env)
    assert "exists, kept" in again.stdout

    run = subprocess.run([*lcms, "run", str(path)], capture_output=True, text=True, env=env, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "sampling: 8 done, 0 skipped, 0 failed of 8 tile-years" in run.stdout
    assert "merge: dataset 'land-cover' done" in run.stdout
    assert "training: model 'land-cover' done" in run.stdout
    assert "prediction: 8 done" in run.stdout and "postprocess: 8 done" in run.stdout
    assert "export: 4 maps" in run.stdout
    assert (tmp_path / "store" / "maps" / "land-cover_2024_33N_labels.tif").exists()
    assert "change 2023→2024:" in run.stdout and "report: " in run.stdout

    # The planted changes of the synthetic scene, found through the whole chain (by area overlap). Recall is
    # high; precision is bounded by the 2024 maps (a model of 2023 only, 10 dates a year: two tiles' 2024 maps
    # have OA ~0.85), so every false change must be a map error, not a change-detection error.
    store = TileStore.from_config(cfg.store)
    grid = store.read_grid()
    scene = SyntheticScene(**cfg.download.source.model_dump(exclude={"kind"}))
    truth_parts, false_px, false_on_map_errors = [], 0, 0
    for tile in grid:
        mask = scene.change_mask(tile.core_grid, 2023, 2024).astype(np.uint8)
        truth_parts += [shape(g) for g, v in shapes(mask, mask=mask > 0, transform=tile.core_grid.transform)]
        detected_px = store.open_tile("change", "2023-2024", tile.tile_id).read("status", tile.core_window) == 2
        map_error = np.zeros(mask.shape, bool)
        for year in (2023, 2024):
            labels = store.open_tile("postprocess", year, tile.tile_id).read("labels", tile.core_window)
            map_error |= labels != scene.land_cover(tile.core_grid, year)
        false_px += (detected_px & (mask == 0)).sum()
        false_on_map_errors += (detected_px & (mask == 0) & map_error).sum()
    truth = unary_union(truth_parts)
    layer = read_change_layer(store, (2023, 2024)).to_crs(grid[grid.tile_ids[0]].grid.crs)
    detected = unary_union(list(layer.geometry))
    overlap = detected.intersection(truth).area
    precision, recall = overlap / detected.area, overlap / truth.area
    # The synthetic scene's classes are realistically close (fodder fields look like meadows, grassland
    # like shrubland): many planted changes between them have a year's confidence below the change
    # stage's 60 % and are not kept (measured recall 0.51, precision 0.86 on a slightly harder version of
    # the scene; ≥ 0.9 before it was made realistic). Changes must still come out, and every kept one must
    # be real or a map error.
    assert recall >= 0.4 and precision >= 0.5, (precision, recall)
    assert false_on_map_errors == false_px  # a false change is always where a year's map is wrong
    assert (tmp_path / "store" / "report").is_dir()
    status = subprocess.run([*lcms, "status", str(path)], capture_output=True, text=True, env=env, timeout=120)
    training_row = next(line for line in status.stdout.splitlines() if line.startswith("│ training "))
    assert "│ land-cover " in training_row and "│ done " in training_row
    assert "training/land-cover/current" in training_row

    # A subset rerun keeps the AOI-wide products whole: the merge still holds every tile's samples, the model
    # is still the one trained on all of them, and the maps and the report cover the whole AOI.
    tile_id = grid.tile_ids[0]
    model_before = store.product_record("training", "land-cover").attempt
    with rasterio.open(tmp_path / "store" / "maps" / "land-cover_2024_33N_labels.tif") as src:
        map_shape = src.shape
    merge = subprocess.run([*lcms, "merge", str(path), "--tiles", tile_id], capture_output=True, text=True, env=env)
    assert merge.returncode == 0, merge.stderr[-2000:]
    assert "nothing to do: every output of merge is up to date" in merge.stdout  # found before Prefect starts
    rerun = subprocess.run(
        [*lcms, "run", str(path), "--tiles", tile_id], capture_output=True, text=True, env=env, timeout=900
    )
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "nothing to do" in rerun.stdout and "Starting temporary server" not in rerun.stderr
    assert store.product_record("training", "land-cover").attempt == model_before
    with rasterio.open(tmp_path / "store" / "maps" / "land-cover_2024_33N_labels.tif") as src:
        assert src.shape == map_shape and src.tags()["lcms_model_version"] == model_before
    assert store.product_record("report", "land-cover").extra["tiles"] == len(grid)
