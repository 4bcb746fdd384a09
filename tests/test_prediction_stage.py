"""Prediction and post-processing stages: tile tasks against independent predictions, flows, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from test_model_stages import run_config, sample_all, synthetic_labels, widths, write_inputs

from flows.common import load_grid
from lcms.config import MergeConfig, PostprocessConfig, PredictionConfig, TileSubset, TrainingConfig
from lcms.store import TileStore
from tasks.merge.dataset import merge_samples
from tasks.prediction.tile import PredictionError, load_stored_model, prediction_tile
from tasks.training.model import predict_labels, predict_proba_percent
from tasks.training.stage import training_stage


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 6-tile store with features, reference, samples, a merged dataset and a trained model (2023)."""
    tmp_path = tmp_path_factory.mktemp("prediction")
    cfg = run_config(tmp_path, years=[2023])
    store = TileStore.from_config(cfg.store)
    grid = load_grid(cfg, store)
    for i, tile in enumerate(grid):
        no_valid = np.zeros(tile.grid.shape, bool)
        no_valid[200:210, 40:60] = True
        write_inputs(store, tile, 2023, synthetic_labels(i, tile.grid.shape), seed=i, no_valid=no_valid)
    sample_all(store, grid, [2023])
    merge_samples(store, grid.tile_ids, [2023], widths(grid), MergeConfig(split="tile"), 100)
    training_stage(store, "land-cover", TrainingConfig(num_boost_round=40))
    return cfg, store, grid


def test_prediction_equals_the_model_applied_pixel_by_pixel(trained):
    _, store, grid = trained
    tile = grid.tiles[3]
    prediction_tile(store, tile, 2023, PredictionConfig(block_size=256), "land-cover")
    out = store.open_tile("prediction", 2023, tile.tile_id)
    labels, percent, confidence = out.read("labels"), out.read("probabilities"), out.read("confidence")
    assert labels.shape == tile.grid.shape and percent.shape == (*tile.grid.shape, 3)

    # Independent: the whole tile's stored features decoded at once, one row per pixel, through the model.
    booster, metadata, _ = load_stored_model(store, "land-cover")
    raw = store.open_tile("features", 2023, tile.tile_id).read("features")  # (time, y, x, feature) int16
    values = np.where(raw == -32768, np.nan, raw.astype(np.float32) / np.float32(10_000))
    X = values.transpose(1, 2, 0, 3).reshape(labels.size, -1)
    # The same as xarray's CF decoding, to float rounding.
    decoded = store.open_dataset("features", 2023, tile.tile_id)["features"].transpose("y", "x", "time", "feature")
    np.testing.assert_allclose(X, decoded.values.reshape(labels.size, -1), rtol=1e-6)
    no_valid = store.open_tile("features", 2023, tile.tile_id).read("no_valid")
    expected = predict_labels(booster, metadata, X).reshape(labels.shape)
    expected[no_valid] = 0
    np.testing.assert_array_equal(labels, expected)
    expected_percent = predict_proba_percent(booster, metadata, X).reshape(percent.shape)
    np.testing.assert_array_equal(percent[~no_valid], expected_percent[~no_valid])
    assert (percent[no_valid] == 0).all() and (confidence[no_valid] == 0).all()
    np.testing.assert_array_equal(confidence, percent.max(axis=2))
    sums = percent[~no_valid].sum(axis=1).astype(int)
    assert sums.min() >= 98 and sums.max() <= 102  # rounding of each class to whole percent
    # The classes are well apart: most pixels get their reference class.
    reference = synthetic_labels(3, tile.grid.shape)
    known = (reference > 0) & ~no_valid
    assert (labels[known] == reference[known]).mean() > 0.95
    ds = store.open_dataset("prediction", 2023, tile.tile_id)
    assert ds["probabilities"].coords["class"].values.tolist() == [1, 2, 3]
    assert ds.rio.crs.to_epsg() == 32633


def test_a_model_of_other_features_is_refused(trained, tmp_path):
    _, store, grid = trained
    tile = grid.tiles[0]
    other = TileStore(str(tmp_path / "other"))
    other.write_grid(grid, "h")
    # Same store layout, but the features of the tile have one feature fewer.
    write_inputs(other, tile, 2023, synthetic_labels(0, tile.grid.shape), names=["NDVI"])
    other.put_files("training", "land-cover", _model_folder(store, tmp_path), "h")
    with pytest.raises(
        PredictionError, match=r"features are \['NDVI'\] but the model was trained on \['NDVI', 'B04'\]"
    ):
        prediction_tile(other, tile, 2023, PredictionConfig(), "land-cover")
    write_inputs(other, tile, 2023, synthetic_labels(0, tile.grid.shape), n_dates=3)
    with pytest.raises(PredictionError, match="3 dates"):
        prediction_tile(other, tile, 2023, PredictionConfig(), "land-cover")
    assert not other.is_done("prediction", 2023, tile.tile_id)
    with pytest.raises(PredictionError, match="no trained model 'crops'"):
        prediction_tile(other, tile, 2023, PredictionConfig(), "crops")


def _model_folder(store, tmp_path):
    folder = tmp_path / "model-copy"
    store.get_files("training", "land-cover", folder)
    return folder


@pytest.mark.usefixtures("prefect_server")
def test_prediction_and_postprocess_flows(trained):
    from flows.common import StageInputError
    from flows.postprocess import postprocess_flow
    from flows.prediction import prediction_flow

    cfg, store, grid = trained
    subset_cfg = cfg.model_copy(update={"years": [2023]})
    two = TileSubset(tile_ids=grid.tile_ids[:2])
    with pytest.raises(StageInputError, match="prediction stage's output"):
        postprocess_flow(subset_cfg, two)
    assert prediction_flow(subset_cfg, two)["done"] == 2
    assert prediction_flow(subset_cfg, two)["skipped"] == 2
    result = postprocess_flow(subset_cfg, two)
    assert result["done"] == 2
    tile = grid.tiles[0]
    original = store.open_tile("prediction", 2023, tile.tile_id).read("labels")
    smoothed = store.open_tile("postprocess", 2023, tile.tile_id).read("labels")
    assert smoothed.shape == original.shape and (smoothed != original).any()
    # The prediction is kept as it was.
    np.testing.assert_array_equal(store.open_tile("prediction", 2023, tile.tile_id).read("labels"), original)
    # Another chain redoes the post-processing only; an empty chain copies the prediction.
    copy_cfg = subset_cfg.model_copy(update={"postprocess": PostprocessConfig(steps=[])})
    assert postprocess_flow(copy_cfg, two)["done"] == 2
    np.testing.assert_array_equal(store.open_tile("postprocess", 2023, tile.tile_id).read("labels"), original)
    assert prediction_flow(copy_cfg, two)["skipped"] == 2

    # A retrained model makes the predictions stale.
    training_stage(store, "land-cover", TrainingConfig(num_boost_round=41))
    assert prediction_flow(subset_cfg, two)["done"] == 2


def test_superpixel_chain_reads_feature_means(trained):
    from tasks.postprocess.tile import mean_features, postprocess_tile

    _, store, grid = trained
    tile = grid.tiles[1]
    prediction_tile(store, tile, 2023, PredictionConfig(), "land-cover")
    image = mean_features(store, tile, 2023, ["B04"])
    values = store.open_dataset("features", 2023, tile.tile_id)["features"].sel(feature="B04")
    np.testing.assert_allclose(image[..., 0], values.mean("time", skipna=True).values, rtol=1e-5, equal_nan=True)
    cfg = PostprocessConfig(steps=[{"kind": "superpixels", "features": ["NDVI", "B04"], "segment_size_px": 64}])
    record = postprocess_tile(store, tile, 2023, cfg)
    labels = store.open_tile("postprocess", 2023, tile.tile_id).read("labels")
    assert set(np.unique(labels)) <= {0, 1, 2, 3}
    assert record.extra["changed_pixels"] >= 0


@pytest.mark.usefixtures("prefect_server")
def test_export_flow_writes_valid_cogs_equal_to_the_tiles(trained, tmp_path):
    import pystac
    import rasterio
    from rasterio.windows import from_bounds

    from flows.export import export_flow
    from flows.postprocess import postprocess_flow
    from flows.prediction import prediction_flow
    from lcms.config import ExportConfig
    from tasks.export.cog import validate_cog

    cfg, store, grid = trained
    maps = tmp_path / "maps"
    cfg = cfg.model_copy(update={"export": ExportConfig(url=str(maps), compress="ZSTD", blocksize=256)})
    three = TileSubset(tile_ids=grid.tile_ids[:3])
    prediction_flow(cfg, three)
    postprocess_flow(cfg, three)
    result = export_flow(cfg, three)
    assert [m["map"] for m in result["maps"]] == ["labels", "confidence"]
    labels_tif = maps / "land-cover_2023_33N_labels.tif"
    valid, errors, _ = validate_cog(str(labels_tif))
    assert valid, errors
    with rasterio.open(labels_tif) as src:
        assert src.colormap(1)[2][:3] == (5, 73, 7)  # forest, #054907
        assert src.tags(1)["CLASS_2"] == "forest"
        assert src.overviews(1) and src.profile["compress"].lower() == "zstd"
        for tile in grid.tiles[:3]:
            core = tile.core_grid
            window = from_bounds(*core.bounds, transform=src.transform).round_offsets().round_lengths()
            expected = store.open_tile("postprocess", 2023, tile.tile_id).read("labels", tile.core_window)
            np.testing.assert_array_equal(src.read(1, window=window), expected)
    with rasterio.open(maps / "land-cover_2023_33N_confidence.tif") as src:
        tile = grid.tiles[0]
        window = from_bounds(*tile.core_grid.bounds, transform=src.transform).round_offsets().round_lengths()
        expected = store.open_tile("prediction", 2023, tile.tile_id).read("confidence", tile.core_window)
        np.testing.assert_array_equal(src.read(1, window=window), expected)
    item = pystac.Item.from_file(str(maps / "land-cover_2023_33N_labels.json"))
    assert item.assets["data"].href == "./land-cover_2023_33N_labels.tif"  # relative: the folder can move
    assert item.assets["data"].get_absolute_href() == str(labels_tif)
    assert item.properties["start_datetime"].startswith("2023-01-01")

    with pytest.raises(Exception, match="postprocess stage's output"):
        export_flow(cfg, TileSubset(tile_ids=grid.tile_ids[3:4]))


@pytest.mark.usefixtures("prefect_server")
def test_prediction_refuses_missing_features_and_empty_subsets(trained):
    from flows.common import StageInputError
    from flows.prediction import prediction_flow
    from lcms.grid import TileSelectionError

    cfg, store, grid = trained
    with pytest.raises(StageInputError, match=r"features stage's output, which is missing for 1 tile-year\(s\)"):
        prediction_flow(cfg.model_copy(update={"years": [2023, 2024]}), TileSubset(tile_ids=grid.tile_ids[:1]))
    with pytest.raises(TileSelectionError):
        prediction_flow(cfg, TileSubset(bbox=(20.0, 40.0, 20.1, 40.1)))
    assert not store.done_tiles("prediction", 2024)


def test_export_to_s3(trained, s3_bucket, s3_endpoint):
    import fsspec

    from lcms.config import ExportConfig
    from tasks.export.cog import validate_cog
    from tasks.export.maps import export_year
    from tasks.postprocess.tile import postprocess_tile

    _, store, grid = trained
    tiles = grid.select(tile_ids=grid.tile_ids[:2])
    for tile in tiles:
        prediction_tile(store, tile, 2023, PredictionConfig(), "land-cover")
        postprocess_tile(store, tile, 2023, PostprocessConfig())
    maps = export_year(store, tiles, 2023, ExportConfig(url=f"{s3_bucket}/maps"), "land-cover")
    assert [m["url"] for m in maps] == [
        f"{s3_bucket}/maps/land-cover_2023_33N_{k}.tif" for k in ("labels", "confidence")
    ]
    fs = fsspec.filesystem("s3", endpoint_url=s3_endpoint)
    assert fs.exists(f"{s3_bucket}/maps/land-cover_2023_33N_labels.json")
    assert validate_cog(maps[0]["url"], {"endpoint_url": s3_endpoint})[0]
