"""The download stage end to end with its real sources: scenes on disk (real L1C data) and Sentinel Hub.

The tile task runs exactly as in a flow: source → bands and data mask → s2cloudless → store.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_file_source import GRID as PATCH_GRID
from test_file_source import SIZE, write_safe

from lcms.config import CloudMaskConfig, DownloadConfig, FileSourceConfig, SentinelHubSourceConfig
from lcms.geometry import PixelGrid
from lcms.grid import Tile
from lcms.sentinel2 import L2A_BANDS
from lcms.store import TileStore
from tasks.download.sources import SourceError
from tasks.download.tile import download_tile, make_source


@pytest.fixture(scope="module")
def real_scenes(shared_data, tmp_path_factory):
    """The five real L1C scenes of the Slovenia patch written as SAFE granules (bands at native resolution)."""
    folder = shared_data / "slovenia-testpatch"
    meta = json.loads((folder / "l1c_scenes_timestamps.json").read_text())
    refl = np.load(folder / "l1c_scenes.npy")[:, :SIZE, :SIZE, :].astype(np.float64)
    root = tmp_path_factory.mktemp("scenes")
    times, frames = [], []
    for i in range(len(refl)):
        time = np.datetime64(meta["index_to_timestamp"][str(i)], "s")
        write_safe(root, refl[i], time)
        times.append(time)
        frames.append(meta["index_to_eopatch_time_index"][str(i)])
    order = np.argsort(times)
    clm = np.load(folder / "eopatch" / "mask" / "CLM.npy")[:, :SIZE, :SIZE, 0].astype(bool)
    return root, np.array(times)[order], clm[np.array(frames)[order]]


def patch_tile() -> Tile:
    return Tile("33N_patch", PATCH_GRID, PATCH_GRID.bounds)


def test_real_scenes_through_the_stage_reproduce_the_reference_cloud_masks(real_scenes, tmp_path):
    root, times, reference_clm = real_scenes
    store = TileStore(str(tmp_path / "store"))
    full_res = DownloadConfig(
        source=FileSourceConfig(kind="files", path=str(root)),
        cloud_mask=CloudMaskConfig(analysis_resolution_m=10.0),
        block_size=256,
    )
    record = download_tile(store, patch_tile(), 2015, full_res)
    assert record.extra["n_dates"] == 5
    reader = store.open_tile("download", 2015, "33N_patch")
    np.testing.assert_array_equal(reader.coord("time"), times)
    cloud = reader.read("cloud_mask")
    # The 20 m and 60 m bands went to disk at native resolution and came back resampled,
    # yet s2cloudless at eo-learn's defaults reproduces eo-learn's masks.
    agreement = (cloud == reference_clm).mean()
    assert agreement >= 0.99, agreement
    assert reader.read("cloud_prob").max() <= 100
    np.testing.assert_array_equal(reader.read("valid_mask"), reader.read("data_mask") & ~cloud)

    coarse = full_res.model_copy(update={"cloud_mask": CloudMaskConfig()})
    download_tile(store, patch_tile(), 2015, coarse)
    coarse_cloud = store.open_tile("download", 2015, "33N_patch").read("cloud_mask")
    assert (coarse_cloud == cloud).mean() >= 0.95


def test_no_scene_in_the_year_gives_an_empty_done_tile(real_scenes, tmp_path):
    root, _, _ = real_scenes
    store = TileStore(str(tmp_path / "store"))
    cfg = DownloadConfig(source=FileSourceConfig(kind="files", path=str(root)))
    record = download_tile(store, patch_tile(), 2016, cfg)
    assert record.extra["n_dates"] == 0
    assert store.open_dataset("download", 2016, "33N_patch").sizes["time"] == 0


def sh_config(service, **overrides) -> DownloadConfig:
    source = SentinelHubSourceConfig(
        kind="sentinelhub", base_url=service.url, token_url=service.token_url, max_retries=3, **overrides
    )
    return DownloadConfig(source=source, block_size=256)


def sh_tile() -> Tile:
    # 3 km × 3 km in UTM 33N inside the fake's coverage: four 256-px blocks.
    grid = PixelGrid.from_bounds("EPSG:32633", (500_000, 5_000_000, 503_000, 5_003_000), 10.0)
    return Tile("33N_sh", grid, grid.bounds)


def test_sentinel_hub_through_the_stage_with_server_errors(sentinel_hub, tmp_path):
    cfg = sh_config(sentinel_hub)
    store = TileStore(str(tmp_path / "store"))
    tile = sh_tile()
    sentinel_hub.inject("process", status=500, count=3)
    sentinel_hub.inject("process", status=429, count=2)
    record = download_tile(store, tile, 2024, cfg)
    assert record.extra["n_dates"] > 20

    # Independent path: the same source asked for the whole tile at once.
    source = make_source(cfg.source)
    dates = source.acquisition_dates(tile.grid, 2024)
    bands, data_mask = source.read(tile.grid, dates)
    reader = store.open_tile("download", 2024, "33N_sh")
    np.testing.assert_array_equal(reader.coord("time"), dates)
    np.testing.assert_array_equal(reader.read("bands"), bands)
    np.testing.assert_array_equal(reader.read("data_mask"), data_mask)
    assert reader.read("cloud_mask").any() and not reader.read("cloud_mask")[~data_mask].any()


def test_wrong_sentinel_hub_credentials_fail_fast_and_write_nothing(sentinel_hub, tmp_path, monkeypatch):
    monkeypatch.setenv("SH_CLIENT_SECRET", "wrong")
    store = TileStore(str(tmp_path / "store"))
    with pytest.raises(SourceError, match="credentials"):
        download_tile(store, sh_tile(), 2024, sh_config(sentinel_hub))
    assert sentinel_hub.counts["token"] <= 2
    assert not store.is_done("download", 2024, "33N_sh")


def test_l2a_without_cloud_detection_stores_data_as_valid(sentinel_hub, tmp_path):
    cfg = sh_config(sentinel_hub, collection="L2A")
    cfg = cfg.model_copy(update={"cloud_mask": CloudMaskConfig(method="none")})
    store = TileStore(str(tmp_path / "store"))
    download_tile(store, sh_tile(), 2024, cfg)
    reader = store.open_tile("download", 2024, "33N_sh")
    assert list(reader.coord("band")) == list(L2A_BANDS)
    np.testing.assert_array_equal(reader.read("valid_mask"), reader.read("data_mask"))
    assert (reader.read("cloud_prob") == 255).all()
