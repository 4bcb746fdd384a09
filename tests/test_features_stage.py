"""Features stage: the tile task on synthetic downloads and on hand-made download tiles, the flows."""

from __future__ import annotations

import numpy as np
import pytest

from lcms.config import ConfigError, DateGridConfig, FeaturesConfig, parse_config
from lcms.geometry import PixelGrid
from lcms.grid import Tile
from lcms.sentinel2 import L1C_BANDS
from lcms.store import TileStore
from tasks.download.tile import download_tile
from tasks.features.temporal import date_grid
from tasks.features.tile import INT16_FILL, features_tile

B04, B08 = L1C_BANDS.index("B04"), L1C_BANDS.index("B08")


def small_run(tmp_path, store=None, **features):
    return parse_config(
        {
            "name": "features-test",
            "aoi": {"bbox": [460_000, 5_090_000, 462_500, 5_092_500], "bbox_crs": "EPSG:32633"},
            "years": [2023],
            "grid": {"tile_size_m": 2500, "buffer_m": 50},
            "store": store or {"url": str(tmp_path / "store")},
            "download": {"source": {"seed": 5, "dates_per_year": 30, "cloud_cover": 0.4}, "block_size": 256},
            "features": {"block_size": 256, **features},
        }
    )


@pytest.fixture(scope="module")
def downloaded(tmp_path_factory):
    """One synthetic tile (260 px, 30 dates) through the download stage."""
    from flows.common import load_grid

    cfg = small_run(tmp_path_factory.mktemp("features"))
    store = TileStore.from_config(cfg.store)
    tile = load_grid(cfg, store).tiles[0]
    download_tile(store, tile, 2023, cfg.download)
    return cfg, store, tile


def test_interpolated_ndvi_equals_an_independent_per_pixel_interp(downloaded):
    cfg, store, tile = downloaded
    record = features_tile(store, tile, 2023, cfg.features)
    out = store.open_tile("features", 2023, tile.tile_id)
    names = list(out.coord("feature"))
    assert names == cfg.features.feature_names
    np.testing.assert_array_equal(out.coord("time"), date_grid(2023, cfg.features.date_grid))
    features = out.read("features")
    assert features.dtype == np.int16 and features.shape == (23, 260, 260, len(names))

    # Independent path: NDVI from the stored bands, frame filter by hand, np.interp per pixel.
    download = store.open_tile("download", 2023, tile.tile_id)
    kept = download.read("valid_coverage") >= cfg.features.min_valid_coverage
    assert record.extra["frames_kept"] == kept.sum() and 0 < kept.sum() < len(kept)
    bands = download.read("bands")[kept].astype(np.float64)
    valid = download.read("valid_mask")[kept]
    ndvi = (bands[..., B08] - bands[..., B04]) / (bands[..., B08] + bands[..., B04])
    t = download.coord("time")[kept].astype("int64").astype(np.float64)
    targets = out.coord("time").astype("int64").astype(np.float64)
    rng = np.random.default_rng(0)
    checked = 0
    for y, x in zip(rng.integers(0, 260, 300), rng.integers(0, 260, 300), strict=True):
        v = valid[:, y, x]
        if not v.any():
            assert out.read("no_valid")[y, x]
            continue
        expected = np.interp(targets, t[v], ndvi[v, y, x])
        got = features[:, y, x, names.index("NDVI")] / 1e4
        np.testing.assert_allclose(got, expected, atol=1.5e-4)  # int16 packing: 0.5e-4
        checked += 1
    assert checked > 200
    np.testing.assert_array_equal(out.read("valid_count"), valid.sum(axis=0))


def test_float32_features_and_xarray_decoding(downloaded):
    cfg, store, tile = downloaded
    features_tile(store, tile, 2023, cfg.features.model_copy(update={"dtype": "int16"}))
    packed = store.open_tile("features", 2023, tile.tile_id).read("features")
    decoded = store.open_dataset("features", 2023, tile.tile_id).features.values
    np.testing.assert_allclose(decoded, np.where(packed == INT16_FILL, np.nan, packed * 1e-4), atol=1e-7)

    features_tile(store, tile, 2023, cfg.features.model_copy(update={"dtype": "float32"}))
    floats = store.open_tile("features", 2023, tile.tile_id).read("features")
    assert floats.dtype == np.float32
    np.testing.assert_allclose(floats, packed * 1e-4, atol=0.6e-4)


def test_mosaics(downloaded):
    cfg, store, tile = downloaded
    for method in ("median_mosaic", "max_ndvi_mosaic"):
        features_tile(store, tile, 2023, cfg.features.model_copy(update={"method": method}))
        out = store.open_tile("features", 2023, tile.tile_id)
        assert out.attrs["method"] == method
        ndvi = out.read("features")[..., cfg.features.feature_names.index("NDVI")]
        has_data = ~out.read("no_valid")
        assert (ndvi[:, has_data] != INT16_FILL).all()


GRID = PixelGrid.from_bounds("EPSG:32633", (460_000, 5_090_000, 460_300, 5_090_300), 10.0)  # 30 × 30 px
TILE = Tile("T", GRID, GRID.bounds)
DATES = np.array(["2023-03-01", "2023-06-01", "2023-09-01"], dtype="datetime64[s]")


def write_download(store, valid_mask, ndvi_per_frame):
    """A hand-made download tile: B04 = 1000, B08 set so that NDVI takes the given value per frame."""
    t = len(DATES)
    bands = np.full((t, 30, 30, 13), 1000, np.uint16)
    for i, value in enumerate(ndvi_per_frame):
        bands[i, ..., B08] = round(1000 * (1 + value) / (1 - value))
    data = np.ones((t, 30, 30), bool)
    coverage = valid_mask.mean(axis=(1, 2)).astype(np.float32)
    with store.writer("download", 2023, "T", GRID, "h", {"time": DATES, "band": np.array(L1C_BANDS)}) as w:
        w.write("bands", bands)
        w.write("data_mask", data)
        w.write("cloud_prob", np.zeros((t, 30, 30), np.uint8))
        w.write("cloud_mask", ~valid_mask)
        w.write("shadow_mask", np.zeros_like(valid_mask))
        w.write("valid_mask", valid_mask)
        w.write("valid_coverage", coverage)


def ndvi_out(store):
    out = store.open_tile("features", 2023, "T")
    return out.read("features")[..., -1] / 1e4, out.read("no_valid"), out.coord("time")


def test_frame_filter_one_valid_frame_and_empty_tiles(tmp_path):
    store = TileStore(str(tmp_path / "s"))
    cfg = FeaturesConfig(bands=[], indices=["NDVI"])
    valid = np.ones((3, 30, 30), bool)
    valid[0, :20] = False  # frame 0 only 1/3 valid: dropped by the 0.8 filter
    write_download(store, valid, [0.1, 0.5, 0.7])
    features_tile(store, TILE, 2023, cfg)
    ndvi, no_valid, times = ndvi_out(store)
    assert not no_valid.any()
    # Frame 0 is dropped everywhere, even where it was valid: dates before June hold June's value.
    assert np.allclose(ndvi[times < DATES[1], 25, 5], 0.5, atol=1e-3)
    assert np.allclose(ndvi[times > DATES[2], 25, 5], 0.7, atol=1e-3)

    # One valid frame: that value on every date.
    valid = np.zeros((3, 30, 30), bool)
    valid[1] = True
    write_download(store, valid, [0.1, 0.5, 0.7])
    features_tile(store, TILE, 2023, FeaturesConfig(bands=[], indices=["NDVI"], min_valid_coverage=0.5))
    ndvi, no_valid, _ = ndvi_out(store)
    assert np.allclose(ndvi, 0.5, atol=1e-3) and not no_valid.any()

    # No valid frame: done, every pixel marked, features are fill values.
    write_download(store, np.zeros((3, 30, 30), bool), [0.1, 0.5, 0.7])
    record = features_tile(store, TILE, 2023, cfg)
    assert record.extra["frames_kept"] == 0
    out = store.open_tile("features", 2023, "T")
    assert out.read("no_valid").all() and (out.read("features") == INT16_FILL).all()


def test_a_date_grid_outside_the_data_range_takes_the_nearest_values(tmp_path):
    store = TileStore(str(tmp_path / "s"))
    write_download(store, np.ones((3, 30, 30), bool), [0.1, 0.5, 0.7])
    late = FeaturesConfig(bands=[], indices=["NDVI"], date_grid=DateGridConfig(start="10-01", end="12-31"))
    features_tile(store, TILE, 2023, late)
    ndvi, _, times = ndvi_out(store)
    assert times.min() > DATES[-1] and np.allclose(ndvi, 0.7, atol=1e-3)


def test_bad_feature_names_fail_before_work(tmp_path):
    with pytest.raises(ConfigError, match=r"features.bands \['B99'\] are not bands"):
        small_run(tmp_path, bands=["B99"])
    with pytest.raises(ConfigError, match="features.indices"):
        small_run(tmp_path, indices=["EVI"])
    l2a = {
        "name": "x",
        "aoi": {"bbox": [14, 46, 14.1, 46.1]},
        "years": [2023],
        "download": {
            "source": {"kind": "files", "path": "/tmp", "collection": "L2A"},
            "cloud_mask": {"method": "none"},
        },
        "features": {"bands": ["B10"]},
    }
    with pytest.raises(ConfigError, match=r"\['B10'\] are not bands"):
        parse_config(l2a)


@pytest.mark.usefixtures("prefect_server")
def test_flows_chain_download_and_features_and_refuse_missing_inputs(tmp_path):
    from flows.common import StageInputError
    from flows.features import features_flow
    from flows.run import run_flow

    cfg = small_run(tmp_path)
    with pytest.raises(StageInputError, match=r"download stage's output, which is missing for 1 tile-year"):
        features_flow(cfg)
    summaries = run_flow(cfg)
    assert [(s["stage"], s["done"]) for s in summaries] == [("download", 1), ("features", 1)]
    again = features_flow(cfg)
    assert (again["done"], again["skipped"]) == (0, 1)
    # A changed feature setting redoes the tile.
    changed = small_run(tmp_path, date_grid={"step_days": 10})
    assert features_flow(changed)["done"] == 1


@pytest.mark.usefixtures("prefect_server")
def test_the_whole_chain_runs_on_an_s3_store(tmp_path, s3_bucket, s3_endpoint):
    from flows.run import run_flow

    s3_store = {"url": f"{s3_bucket}/lcms", "storage_options": {"endpoint_url": s3_endpoint}}
    cfg = small_run(tmp_path, store=s3_store)
    summaries = run_flow(cfg)
    assert [(s["stage"], s["done"], s["failed"]) for s in summaries] == [("download", 1, 0), ("features", 1, 0)]
    store = TileStore.from_config(cfg.store)
    assert store.url.startswith("s3://")
    tile_id = store.read_grid().tile_ids[0]
    ds = store.open_dataset("features", 2023, tile_id)
    assert ds.rio.crs.to_epsg() == 32633 and ds.sizes["time"] == 23
    assert not (tmp_path / "store").exists()
