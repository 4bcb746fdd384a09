"""Download stage with the synthetic source: the tile task alone, the Prefect flows, and the CLI."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import yaml

import tasks.download.tile
from lcms.config import TileSubset, parse_config
from lcms.geometry import PixelGrid
from lcms.grid import TileSelectionError
from lcms.sentinel2 import L1C_BANDS
from lcms.store import TileStore
from tasks.download.cloud_mask import cloud_masks, halo_px, lattice_origin
from tasks.download.tile import download_params_hash, download_tile, make_source


def synthetic_scene(source_cfg):
    return make_source(source_cfg).scene


def small_config(tmp_path, **changes):
    data = {
        "name": "test",
        # 5 km × 2.5 km in UTM 33N: two tiles of 2.5 km (250 + 2 × 5 px buffer = 260 px).
        "aoi": {"bbox": [460_000, 5_090_000, 465_000, 5_092_500], "bbox_crs": "EPSG:32633"},
        "years": [2023],
        "grid": {"tile_size_m": 2500, "buffer_m": 50},
        "store": {"url": str(tmp_path / "store")},
        "cluster": {"kind": "local", "n_workers": 2},
        "download": {"source": {"seed": 3, "dates_per_year": 8}},
    }
    for key, value in changes.items():
        data[key] = {**data[key], **value} if isinstance(value, dict) and key in data else value
    return parse_config(data)


def test_download_tile_blocks_match_whole_tile_processing(tmp_path):
    from flows.common import load_grid

    # 256-px blocks on a 260-px tile: four blocks, so the cloud pass needs its halo.
    cfg = small_config(tmp_path, download={"source": {"seed": 3, "dates_per_year": 8}, "block_size": 256})
    store = TileStore.from_config(cfg.store)
    tile = load_grid(cfg, store).tiles[0]
    record = download_tile(store, tile, 2023, cfg.download)

    # Independent path: render the tile with the context the stage reads beyond its edges, and
    # cloud-mask it whole (cells on the zone's lattice) instead of block by block.
    scene = synthetic_scene(cfg.download.source)
    expected = scene.render(tile.grid, 2023)
    halo = halo_px(cfg.download.cloud_mask, 10.0)
    minx, miny, maxx, maxy = tile.grid.bounds
    grown = PixelGrid.from_bounds(
        tile.grid.crs, (minx - 10 * halo, miny - 10 * halo, maxx + 10 * halo, maxy + 10 * halo), 10.0
    )
    wide = scene.render(grown, 2023)
    inner = (slice(halo, halo + tile.grid.height), slice(halo, halo + tile.grid.width))
    prob, cloudy = cloud_masks(
        wide.bands, L1C_BANDS, wide.data_mask, 10.0, cfg.download.cloud_mask, origin=lattice_origin(grown), region=inner
    )
    reader = store.open_tile("download", 2023, tile.tile_id)
    valid = expected.data_mask & ~cloudy & ~reader.read("shadow_mask")
    np.testing.assert_array_equal(reader.read("bands"), expected.bands)
    np.testing.assert_array_equal(reader.read("data_mask"), expected.data_mask)
    np.testing.assert_array_equal(reader.read("cloud_prob"), prob)
    np.testing.assert_array_equal(reader.read("cloud_mask"), cloudy)
    np.testing.assert_array_equal(reader.read("valid_mask"), valid)
    np.testing.assert_allclose(reader.read("valid_coverage"), valid.mean(axis=(1, 2)), atol=1e-6)
    np.testing.assert_array_equal(reader.coord("time"), expected.dates)
    assert record.params_hash == download_params_hash(cfg.download, tile, 2023)
    assert record.extra["n_dates"] == len(expected.dates)
    # The detector finds the generator's opaque clouds.
    truth = expected.cloud_mask
    assert truth.any() and (cloudy & truth).sum() / truth.sum() > 0.9


class NoAcquisitions:
    band_names = L1C_BANDS

    def acquisition_dates(self, grid, year):
        return np.array([], dtype="datetime64[s]")

    def read(self, grid, dates):
        raise AssertionError("nothing to read")


class FailsMidTile:
    """Delivers the first blocks, then fails as a connection would after its retries."""

    band_names = L1C_BANDS

    def __init__(self, scene):
        self.scene, self.calls = scene, 0

    def acquisition_dates(self, grid, year):
        return self.scene.acquisition_dates(year)

    def read(self, grid, dates):
        self.calls += 1
        if self.calls == 3:
            raise TimeoutError("read timed out after 5 retries")
        tile = self.scene.render(grid, 2023, dates)
        return tile.bands, tile.data_mask


def test_a_year_without_acquisitions_is_done_with_zero_frames(tmp_path, caplog):
    from flows.common import load_grid

    cfg = small_config(tmp_path)
    store = TileStore.from_config(cfg.store)
    tile = load_grid(cfg, store).tiles[0]
    record = download_tile(store, tile, 2023, cfg.download, source=NoAcquisitions())
    assert record.extra["n_dates"] == 0 and "no acquisitions" in caplog.text
    ds = store.open_dataset("download", 2023, tile.tile_id)
    assert ds.sizes["time"] == 0 and ds.valid_mask.shape == (0, 260, 260)


def test_a_source_failing_mid_tile_leaves_the_previous_state(tmp_path):
    from flows.common import load_grid

    cfg = small_config(tmp_path, download={"source": {"seed": 3, "dates_per_year": 8}, "block_size": 256})
    store = TileStore.from_config(cfg.store)
    tile = load_grid(cfg, store).tiles[0]
    before = download_tile(store, tile, 2023, cfg.download)
    with pytest.raises(TimeoutError):
        download_tile(store, tile, 2023, cfg.download, source=FailsMidTile(synthetic_scene(cfg.download.source)))
    assert store.done_record("download", 2023, tile.tile_id) == before
    store.fs.invalidate_cache()
    assert store.fs.glob(f"{store.tile_dir('download', 2023, tile.tile_id)}/attempt-*") == [
        f"{store.tile_dir('download', 2023, tile.tile_id)}/{before.attempt}.zarr"
    ]


@pytest.mark.usefixtures("prefect_server")
class TestFlows:
    def test_skip_overwrite_and_changed_parameters(self, tmp_path):
        from flows.download import download_flow

        cfg = small_config(tmp_path)
        first = download_flow(cfg)
        assert (first["done"], first["skipped"], first["failed"]) == (2, 0, 0)
        store = TileStore.from_config(cfg.store)
        attempts = {t: r.attempt for t, r in store.done_tiles("download", 2023).items()}
        assert len(attempts) == 2

        again = download_flow(cfg)
        assert (again["done"], again["skipped"]) == (0, 2)
        assert {t: r.attempt for t, r in store.done_tiles("download", 2023).items()} == attempts

        one = sorted(attempts)[0]
        redo = download_flow(cfg, TileSubset(tile_ids=[one]), overwrite=True)
        assert (redo["done"], redo["skipped"], redo["tiles"]) == (1, 0, 1)
        now = {t: r.attempt for t, r in store.done_tiles("download", 2023).items()}
        assert now[one] != attempts[one] and all(now[t] == attempts[t] for t in attempts if t != one)

        reseeded = download_flow(small_config(tmp_path, download={"source": {"seed": 4, "dates_per_year": 8}}))
        assert reseeded["done"] == 2

    def test_a_failing_tile_does_not_stop_the_others_and_a_rerun_retries_it(self, tmp_path, monkeypatch):
        from flows.common import TileFailures
        from flows.download import download_flow

        cfg = small_config(tmp_path)
        real = tasks.download.tile.download_tile
        grid_ids = []

        def flaky(store, tile, year, download_cfg):
            grid_ids.append(tile.tile_id)
            if tile.tile_id.endswith("_0185_2036"):
                raise OSError("simulated lost connection")
            return real(store, tile, year, download_cfg)

        # Threads of the LocalCluster share this process, so the patch reaches the tile tasks.
        monkeypatch.setattr("tasks.download.tile.download_tile", flaky)
        with pytest.raises(TileFailures, match=r"1 of 2 tile-years failed \(33N_0185_2036/2023: OSError"):
            download_flow(cfg)
        store = TileStore.from_config(cfg.store)
        assert sorted(store.done_tiles("download", 2023)) == ["33N_0184_2036"]

        monkeypatch.setattr("tasks.download.tile.download_tile", real)
        rerun = download_flow(cfg)
        assert (rerun["done"], rerun["skipped"]) == (1, 1)

    def test_the_run_flow_builds_the_grid_then_runs_the_stages(self, tmp_path):
        from flows.run import run_flow

        cfg = small_config(tmp_path, years=[2023, 2024])
        summaries = run_flow(cfg)
        assert [s["stage"] for s in summaries] == ["download", "features"]
        assert summaries[0]["done"] == 4 and summaries[1]["done"] == 4
        store = TileStore.from_config(cfg.store)
        assert len(store.read_grid()) == 2
        assert len(store.done_tiles("download", 2024)) == 2

    def test_bad_subsets_and_mismatched_grids_fail_before_work(self, tmp_path):
        from flows.common import GridMismatchError
        from flows.download import download_flow

        cfg = small_config(tmp_path)
        with pytest.raises(TileSelectionError, match="not in the grid: 33N_9999_9999"):
            download_flow(cfg, TileSubset(tile_ids=["33N_9999_9999"]))
        store = TileStore.from_config(cfg.store)
        assert store.done_tiles("download", 2023) == {}
        with pytest.raises(GridMismatchError, match="other aoi/grid settings"):
            download_flow(small_config(tmp_path, grid={"tile_size_m": 5000, "buffer_m": 50}))
        assert store.done_tiles("download", 2023) == {}


def test_cli_runs_the_chain_on_ephemeral_prefect(tmp_path):
    cfg = small_config(tmp_path)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    lcms = [sys.executable, "-m", "lcms.cli"]

    grid = subprocess.run([*lcms, "grid", str(path)], capture_output=True, text=True, env=env, timeout=120)
    assert grid.returncode == 0, grid.stderr
    assert "33N" in grid.stdout and "2 tiles" in grid.stdout

    run = subprocess.run([*lcms, "run", str(path)], capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "download: 2 done, 0 skipped, 0 failed of 2 tile-years" in run.stdout
    assert "features: 2 done, 0 skipped, 0 failed of 2 tile-years" in run.stdout

    status = subprocess.run([*lcms, "status", str(path)], capture_output=True, text=True, env=env, timeout=120)
    assert "2 / 2" in status.stdout

    bad = subprocess.run(
        [*lcms, "download", str(path), "--tiles", "nope"], capture_output=True, text=True, env=env, timeout=120
    )
    assert bad.returncode == 1 and "not in the grid: nope" in bad.stderr
