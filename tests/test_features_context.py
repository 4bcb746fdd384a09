"""Features stage, spatial context: neighbourhood statistics against brute force, and whole across block edges."""

from __future__ import annotations

import numpy as np
import pytest

from lcms.config import FeaturesConfig
from lcms.geometry import PixelGrid
from lcms.store import TileStore
from tasks.features.context import context_names, halo_px, spatial_context
from tasks.features.terrain import terrain_features
from tasks.features.tile import features_tile, unpack


def brute_force(values: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and population std over the valid values of each size × size window, cut at the edges."""
    t, h, w = values.shape
    r = size // 2
    mean = np.full(values.shape, np.nan)
    std = np.full(values.shape, np.nan)
    for k in range(t):
        for y in range(h):
            for x in range(w):
                window = values[k, max(y - r, 0) : y + r + 1, max(x - r, 0) : x + r + 1]
                window = window[np.isfinite(window)]
                if window.size:
                    mean[k, y, x], std[k, y, x] = window.mean(), window.std()
    return mean, std


def test_spatial_context_equals_brute_force_with_missing_values():
    rng = np.random.default_rng(3)
    values = rng.normal(0.4, 0.2, (2, 9, 11, 2)).astype(np.float32)
    values[0, 2:6, 3:8, 0] = np.nan  # a hole wider than a 3-px window: its centre has no valid neighbour
    values[1, 0, :, 1] = np.nan
    out = spatial_context(values, [3, 5])
    assert out.shape == (2, 9, 11, 2 * 2 * 2) and out.dtype == np.float32
    names = context_names(["A", "B"], [3, 5])
    assert names == ["A_mean3", "A_std3", "A_mean5", "A_std5", "B_mean3", "B_std3", "B_mean5", "B_std5"]
    for j, feature in enumerate("AB"):
        for size in (3, 5):
            mean, std = brute_force(values[..., j].astype(np.float64), size)
            np.testing.assert_allclose(out[..., names.index(f"{feature}_mean{size}")], mean, atol=1e-5)
            np.testing.assert_allclose(out[..., names.index(f"{feature}_std{size}")], std, atol=2e-4)
    assert np.isnan(out[0, 4, 5, names.index("A_mean3")])  # no valid value in its window
    assert np.isfinite(out[0, 4, 5, names.index("A_mean5")])
    assert halo_px([3, 5]) == 2 and halo_px([]) == 0
    with pytest.raises(ValueError, match="odd"):
        spatial_context(values, [4])


def test_context_config_is_checked():
    cfg = FeaturesConfig(bands=["B04"], indices=["NDVI"], context_features=["NDVI"], context_sizes=[3, 7])
    assert cfg.stored_feature_names == ["B04", "NDVI", "NDVI_mean3", "NDVI_std3", "NDVI_mean7", "NDVI_std7"]
    assert FeaturesConfig().stored_feature_names == FeaturesConfig().feature_names
    for bad in ({"context_features": ["EVI"]}, {"context_features": ["NDVI"], "context_sizes": [2]}):
        with pytest.raises(ValueError):
            FeaturesConfig(bands=["B04"], indices=["NDVI"], **bad)


def test_features_stage_context_is_whole_across_block_edges(tmp_path):
    """A 260-px tile in 256-px blocks: the stored context equals the context of the whole tile's features."""
    from flows.common import load_grid
    from lcms.config import parse_config
    from tasks.download.tile import download_tile

    cfg = parse_config(
        {
            "name": "context-test",
            "aoi": {"bbox": [460_000, 5_090_000, 462_500, 5_092_500], "bbox_crs": "EPSG:32633"},
            "years": [2023],
            "grid": {"tile_size_m": 2500, "buffer_m": 50},
            "store": {"url": str(tmp_path / "store")},
            "download": {"source": {"seed": 5, "dates_per_year": 5, "cloud_cover": 0.2}, "block_size": 256},
            "features": {"block_size": 256, "bands": ["B04"], "indices": ["NDVI"], "min_valid_coverage": 0.0},
        }
    )
    store = TileStore.from_config(cfg.store)
    tile = load_grid(cfg, store).tiles[0]
    download_tile(store, tile, 2023, cfg.download)
    features_tile(store, tile, 2023, cfg.features)
    plain = unpack(store.open_tile("features", 2023, tile.tile_id).read("features"))

    # A DEM in another resolution: a plane rising 0.1 m per m eastwards, on a 20-m grid that covers the tile.
    dem_grid = PixelGrid(
        "EPSG:32633", (20.0, 0.0, tile.grid.bounds[0] - 100, 0.0, -20.0, tile.grid.bounds[3] + 100), (150, 150)
    )
    x_centres = dem_grid.bounds[0] + 20.0 * (np.arange(150) + 0.5)
    write_geotiff(tmp_path / "dem.tif", dem_grid, np.tile(500 + 0.1 * (x_centres - x_centres[0]), (150, 1)))

    update = {"context_features": ["NDVI"], "context_sizes": [3, 5], "dem_path": str(tmp_path / "dem.tif")}
    with_context = cfg.features.model_copy(update=update)
    features_tile(store, tile, 2023, with_context)
    out = store.open_tile("features", 2023, tile.tile_id)
    names = list(out.coord("feature"))
    assert names == with_context.stored_feature_names
    assert names[-2:] == ["ELEVATION_10KM", "SLOPE"]
    stored = unpack(out.read("features"))
    np.testing.assert_array_equal(stored[..., :2], plain)
    expected = spatial_context(plain[..., [1]], [3, 5])
    assert stored.shape[1:3] == (260, 260)
    # int16 packing rounds each value by up to 0.5e-4, before (expected) or after (stored) the windows.
    np.testing.assert_allclose(stored[..., 2:-2], expected, atol=2.5e-4, equal_nan=True)
    edge = stored[:, 250 : 262 - 2, 250:258, 2:]  # around the block edges at 256
    assert np.isfinite(edge).mean() > 0.9

    # Terrain: the same at every date; the plane's elevation (in 10 km) at each pixel centre, its slope 0.1.
    elevation, slope = stored[..., -2], stored[..., -1]
    assert (elevation == elevation[:1]).all() and (slope == slope[:1]).all()
    x = tile.grid.bounds[0] + 10.0 * (np.arange(260) + 0.5)
    np.testing.assert_allclose(elevation[0], np.tile((500 + 0.1 * (x - x_centres[0])) / 10_000, (260, 1)), atol=1e-4)
    np.testing.assert_allclose(slope[0], 0.1, atol=2e-4)


def write_geotiff(path, grid: PixelGrid, values: np.ndarray) -> None:
    import rasterio

    profile = {"driver": "GTiff", "height": grid.height, "width": grid.width, "count": 1, "dtype": "float32"}
    with rasterio.open(path, "w", crs=grid.crs, transform=grid.affine, nodata=-9999, **profile) as dst:
        dst.write(values.astype(np.float32), 1)


def test_terrain_features_of_a_tilted_plane():
    rows, cols = np.indices((6, 7))
    dem = 300.0 + 3.0 * cols - 4.0 * rows  # 3 m per 10-m pixel east, 4 m per pixel south: slope 0.5
    out = terrain_features(dem, 10.0)
    np.testing.assert_allclose(out[..., 0], dem / 10_000, rtol=1e-6)
    np.testing.assert_allclose(out[..., 1], 0.5, rtol=1e-6)
