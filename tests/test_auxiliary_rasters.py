"""Features stage, auxiliary rasters: the reader against independent computations, the config's checks, and the
features stage storing the scaled bands at every date."""

from __future__ import annotations

import numpy as np
import pytest

from lcms.config import ConfigError, FeaturesConfig, parse_config
from lcms.geometry import PixelGrid
from lcms.store import TileStore
from tasks.features.auxiliary import auxiliary_features, read_raster
from tasks.features.tile import features_params_hash, features_tile, unpack

NODATA = -9999.0


def write_raster(path, grid: PixelGrid, values: np.ndarray, descriptions=None) -> str:
    """(y, x, band) float32 values as a GeoTIFF on `grid`, with nodata -9999."""
    import rasterio

    count = values.shape[-1]
    profile = {"driver": "GTiff", "height": grid.height, "width": grid.width, "count": count, "dtype": "float32"}
    with rasterio.open(path, "w", crs=grid.crs, transform=grid.affine, nodata=NODATA, **profile) as dst:
        dst.write(np.moveaxis(values.astype(np.float32), -1, 0))
        for i, text in enumerate(descriptions or []):
            dst.set_band_description(i + 1, text)
    return str(path)


def test_a_raster_on_the_same_grid_reads_back_identically_with_nodata_as_nan(tmp_path):
    grid = PixelGrid("EPSG:32633", (10.0, 0.0, 500_000.0, 0.0, -10.0, 5_100_000.0), (12, 15))
    values = np.random.default_rng(0).uniform(-2, 2, (12, 15, 3)).astype(np.float32)
    values[3:5, 4:9, 1] = NODATA
    path = write_raster(tmp_path / "aux.tif", grid, values)

    out = read_raster(path, grid)
    assert out.shape == (12, 15, 3) and out.dtype == np.float32
    expected = np.where(values == NODATA, np.nan, values)
    np.testing.assert_array_equal(out, expected)  # bilinear at the same pixel centres: the pixels themselves
    np.testing.assert_array_equal(read_raster(path, grid, [3, 1], "nearest"), expected[..., [2, 0]])
    with pytest.raises(ValueError, match="bands 1..3"):
        read_raster(path, grid, [4])


def test_a_coarser_raster_is_resampled_like_rasterio_and_nearest_takes_the_covering_pixel(tmp_path):
    import rasterio
    from rasterio.warp import Resampling, reproject

    tile = PixelGrid("EPSG:32633", (10.0, 0.0, 500_000.0, 0.0, -10.0, 5_100_000.0), (20, 20))
    # 20-m pixels, one pixel wider than the tile on the west and north: every 10-m pixel lies in one of them.
    coarse = PixelGrid("EPSG:32633", (20.0, 0.0, 499_980.0, 0.0, -20.0, 5_100_020.0), (12, 12))
    values = np.arange(12 * 12 * 2, dtype=np.float32).reshape(12, 12, 2)
    values[5, 6, 0] = NODATA
    path = write_raster(tmp_path / "coarse.tif", coarse, values)

    nearest = read_raster(path, tile, resampling="nearest")
    rows = (np.arange(20) * 10 + 5 + 20) // 20  # the 20-m row holding each 10-m pixel's centre
    expected = values[rows[:, None], rows[None, :]]
    np.testing.assert_array_equal(nearest, np.where(expected == NODATA, np.nan, expected))
    assert np.isnan(nearest).sum() == 4  # the nodata 20-m pixel covers four 10-m pixels

    # Another CRS (geographic) and bilinear: as rasterio's own reproject of the file, band by band.
    wgs84 = PixelGrid("EPSG:4326", (0.0002, 0.0, 14.99, 0.0, -0.0002, 46.05), (60, 80))
    path = write_raster(tmp_path / "wgs84.tif", wgs84, np.random.default_rng(1).uniform(0, 1, (60, 80, 2)))
    out = read_raster(path, tile)
    with rasterio.open(path) as src:
        for band in (1, 2):
            expected = np.full(tile.shape, np.nan, dtype=np.float32)
            reproject(
                rasterio.band(src, band),
                expected,
                src_nodata=NODATA,
                dst_transform=tile.affine,
                dst_crs=tile.crs,
                dst_nodata=np.nan,
                resampling=Resampling.bilinear,
            )
            np.testing.assert_array_equal(out[..., band - 1], expected)
    # a tile outside the raster: nothing reaches it
    assert np.isnan(
        read_raster(path, PixelGrid("EPSG:32633", (10.0, 0, 700_000.0, 0, -10.0, 5_000_000.0), (4, 4)))
    ).all()


def test_auxiliary_config_names_and_checks(tmp_path):
    grid = PixelGrid("EPSG:32633", (10.0, 0.0, 500_000.0, 0.0, -10.0, 5_100_000.0), (4, 4))
    path = write_raster(tmp_path / "three.tif", grid, np.zeros((4, 4, 3)), ["B02", "B03", "B04"])
    cfg = FeaturesConfig(
        bands=["B04"],
        indices=["NDVI"],
        dem_path="/dem.tif",
        auxiliary_rasters=[{"path": path, "name": "L1C"}, {"path": path, "name": "soil_2", "bands": [3]}],
    )
    # every band by default (its count read from the file), named by 1-based index, after terrain
    expected = ["B04", "NDVI", "ELEVATION_10KM", "SLOPE", "L1C_1", "L1C_2", "L1C_3", "soil_2_3"]
    assert cfg.stored_feature_names == expected
    assert FeaturesConfig().auxiliary_rasters == []

    bad_entries = {
        "name": [{"path": path, "name": "L1C-median"}],
        "distinct": [{"path": path, "name": "A"}, {"path": path, "name": "A", "bands": [1]}],
        "indexes": [{"path": path, "name": "A", "bands": [0, 1]}],
        "non-zero": [{"path": path, "name": "A", "scale": 0}],
        "clash": [{"path": path, "name": "X", "bands": [2]}],
    }
    for problem, entries in bad_entries.items():
        config = {
            "name": "aux-test",
            "aoi": {"bbox": [500_000, 5_099_960, 500_040, 5_100_000], "bbox_crs": "EPSG:32633"},
            "years": [2023],
            "store": {"url": str(tmp_path / "store")},
            "features": {"bands": ["B04", "X_2"], "indices": ["NDVI"], "auxiliary_rasters": entries},
        }
        with pytest.raises(ConfigError) as caught:
            parse_config(config)
        lines = [line for line in str(caught.value).splitlines() if "auxiliary_rasters" in line]
        assert len(lines) == 1, (problem, str(caught.value))
        assert problem in lines[0] or (problem == "name" and "pattern" in lines[0]), (problem, lines[0])


def test_features_stage_stores_the_scaled_auxiliary_bands_at_every_date(tmp_path):
    from flows.common import load_grid
    from tasks.download.tile import download_tile

    cfg = parse_config(
        {
            "name": "aux-test",
            "aoi": {"bbox": [460_000, 5_090_000, 460_500, 5_090_500], "bbox_crs": "EPSG:32633"},
            "years": [2023],
            "grid": {"tile_size_m": 500, "buffer_m": 20},
            "store": {"url": str(tmp_path / "store")},
            "download": {"source": {"seed": 5, "dates_per_year": 4, "cloud_cover": 0.2}},
            "features": {"bands": ["B04"], "indices": ["NDVI"], "min_valid_coverage": 0.0},
        }
    )
    store = TileStore.from_config(cfg.store)
    tile = load_grid(cfg, store).tiles[0]
    download_tile(store, tile, 2023, cfg.download)

    values = np.random.default_rng(2).uniform(0, 3000, (*tile.grid.shape, 2)).astype(np.float32)
    values[:3, :5, 1] = NODATA
    path = write_raster(tmp_path / "aux.tif", tile.grid, values)
    aux = cfg.features.model_copy(
        update={
            "auxiliary_rasters": FeaturesConfig(
                auxiliary_rasters=[{"path": path, "name": "S", "scale": 1e-3}]
            ).auxiliary_rasters
        }
    )
    features_tile(store, tile, 2023, aux)
    out = store.open_tile("features", 2023, tile.tile_id)
    assert list(out.coord("feature")) == ["B04", "NDVI", "S_1", "S_2"]
    stored = unpack(out.read("features"))
    expected = np.where(values == NODATA, np.nan, values * 1e-3)
    assert stored.shape[0] == len(out.coord("time")) > 1
    for date in range(stored.shape[0]):
        # int16 storage keeps 1e-4: the scaled values (0..3) to within half of that
        np.testing.assert_allclose(stored[date, ..., 2:], expected, atol=0.51e-4, equal_nan=True)
    assert np.isnan(stored[:, :3, :5, 3]).all() and np.isfinite(stored[..., 2]).all()
    np.testing.assert_array_equal(auxiliary_features(aux.auxiliary_rasters, tile.grid), expected.astype(np.float32))

    # the raster is part of the stage's parameters: adding it (or changing its scale) makes old features stale
    download_hash = store.require_done("download", 2023, tile.tile_id).params_hash
    hashes = {
        features_params_hash(c, tile, 2023, download_hash)
        for c in (cfg.features, aux, aux.model_copy(update={"auxiliary_rasters": []}))
    }
    assert len(hashes) == 2
    rescaled = FeaturesConfig(auxiliary_rasters=[{"path": path, "name": "S", "scale": 2e-3}]).auxiliary_rasters
    assert (
        features_params_hash(aux.model_copy(update={"auxiliary_rasters": rescaled}), tile, 2023, download_hash)
        not in hashes
    )


def test_the_features_flow_refuses_a_raster_it_cannot_open_before_any_work(tmp_path):
    from flows.features import check_feature_rasters

    grid = PixelGrid("EPSG:32633", (10.0, 0.0, 500_000.0, 0.0, -10.0, 5_100_000.0), (4, 4))
    good = write_raster(tmp_path / "good.tif", grid, np.ones((4, 4, 1)))
    (tmp_path / "broken.tif").write_text("not a raster")
    base = {
        "name": "aux-check",
        "aoi": {"bbox": [500_000, 5_099_960, 500_040, 5_100_000], "bbox_crs": "EPSG:32633"},
        "years": [2023],
        "store": {"url": str(tmp_path / "store")},
    }
    ok = parse_config({**base, "features": {"dem_path": good, "auxiliary_rasters": [{"path": good, "name": "A"}]}})
    check_feature_rasters(ok, None)  # both open: no error
    for features, field in [
        ({"dem_path": str(tmp_path / "missing.tif")}, "features.dem_path"),
        (
            {
                "auxiliary_rasters": [
                    {"path": good, "name": "A", "bands": [1]},
                    {"path": str(tmp_path / "broken.tif"), "name": "B", "bands": [1]},
                ]
            },
            "features.auxiliary_rasters[1].path",
        ),
    ]:
        with pytest.raises(ConfigError) as caught:
            check_feature_rasters(parse_config({**base, "features": features}), None)
        message = str(caught.value)
        assert len(message.splitlines()) == 1 and message.startswith(field), message
        assert "cannot be opened" in message
    assert not (tmp_path / "store").exists()  # nothing was written
