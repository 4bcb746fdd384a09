"""Reference stage: the tile task on the real Slovenia patch, and the flow on synthetic reference data."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lcms.config import ReferenceConfig, parse_config
from lcms.geometry import PixelGrid
from lcms.grid import Tile
from lcms.store import TileStore
from tasks.download.synthetic import SyntheticScene
from tasks.reference.polygons import ReferenceError, erode_labels
from tasks.reference.tile import reference_tile, reference_version


def test_real_patch_through_the_stage_reproduces_the_reference_raster(shared_data, tmp_path):
    root = shared_data / "slovenia-testpatch" / "eopatch"
    ring = json.loads((root / "bbox.geojson").read_text())["coordinates"][0]
    xs, ys = [p[0] for p in ring], [p[1] for p in ring]
    expected = np.load(root / "mask_timeless" / "LULC.npy")[..., 0]
    h, w = expected.shape
    # eo-learn's grid of the patch: its bbox split into 101 × 100 pixels.
    grid = PixelGrid(
        "EPSG:32633",
        ((max(xs) - min(xs)) / w, 0.0, min(xs), 0.0, -(max(ys) - min(ys)) / h, max(ys)),
        (h, w),
    )
    cfg = ReferenceConfig(path=str(root / "vector_timeless" / "LULC.gpkg"), class_column="LULC_ID")
    store = TileStore(str(tmp_path / "store"))
    record = reference_tile(store, Tile("patch", grid, grid.bounds), 2017, cfg, reference_version(cfg))
    reader = store.open_tile("reference", 2017, "patch")
    np.testing.assert_array_equal(reader.read("labels"), expected)
    eroded = reader.read("labels_eroded")
    np.testing.assert_array_equal(eroded, erode_labels(expected.astype(np.uint8), 1))
    assert record.extra["after_erosion"] < record.extra["labelled_pixels"]
    assert reader.attrs["legend"][2]["name"] == "forest"


def synthetic_run(tmp_path, reference_path):
    return parse_config(
        {
            "name": "reference-test",
            "aoi": {"bbox": [460_000, 5_090_000, 465_000, 5_092_500], "bbox_crs": "EPSG:32633"},
            "years": [2023],
            "grid": {"tile_size_m": 2500, "buffer_m": 50},
            "store": {"url": str(tmp_path / "store")},
            "reference": {"path": str(reference_path), "class_column": "LULC_ID", "erosion_px": 0},
        }
    )


@pytest.mark.usefixtures("prefect_server")
def test_flow_rasterises_synthetic_reference_and_refuses_a_missing_or_distant_one(tmp_path):
    from flows.common import load_grid
    from flows.reference import reference_flow

    # The generator's own reference polygons over the first tile only.
    cfg = synthetic_run(tmp_path, tmp_path / "reference.gpkg")
    store = TileStore.from_config(cfg.store)
    tiles = load_grid(cfg, store).tiles
    scene = SyntheticScene(seed=0)
    scene.reference_polygons(tiles[0].grid, 2023).to_file(tmp_path / "reference.gpkg", driver="GPKG")

    summary = reference_flow(cfg)
    assert (summary["done"], summary["failed"]) == (2, 0)
    first = store.open_tile("reference", 2023, tiles[0].tile_id).read("labels")
    np.testing.assert_array_equal(first, scene.land_cover(tiles[0].grid, 2023))
    # The second tile overlaps the first only in its buffer: labels there, no data elsewhere.
    second = store.open_tile("reference", 2023, tiles[1].tile_id).read("labels")
    assert (second[:, 20:] == 0).all() and second[:, :10].any()
    assert reference_flow(cfg)["skipped"] == 2

    far = tmp_path / "far.gpkg"
    far_grid = PixelGrid.from_bounds("EPSG:32633", (600_000, 5_000_000, 601_000, 5_001_000), 10.0)
    scene.reference_polygons(far_grid, 2023).to_file(far, driver="GPKG")
    with pytest.raises(ReferenceError, match="intersects none of the 2 selected tiles"):
        reference_flow(synthetic_run(tmp_path, far))
    no_reference = cfg.model_copy(update={"reference": ReferenceConfig()})
    with pytest.raises(ReferenceError, match="reference.path is not set"):
        reference_flow(no_reference)
