"""Download stage flow: bands and masks for every tile and year of the AOI."""

from __future__ import annotations

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.common import collect, finish_stage, prepare_stage, run_tile, task_runner
from lcms.config import DownloadConfig, RunConfig, StoreConfig, TileSubset
from lcms.grid import Tile
from lcms.store import TileStore
from tasks.download import STAGE, download_params_hash, download_tile


@task(
    name="download-tile", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5, task_run_name="{tile.tile_id}/{year}"
)
def download_tile_task(store_cfg: StoreConfig, tile: Tile, year: int, cfg: DownloadConfig, overwrite: bool) -> dict:
    store = TileStore.from_config(store_cfg)
    return run_tile(
        STAGE,
        store,
        tile,
        year,
        download_params_hash(cfg, tile, year),
        overwrite,
        lambda: download_tile(store, tile, year, cfg),
    )


@flow(name="download-tiles")
def download_tiles(config: RunConfig, tile_ids: list[str], overwrite: bool = False, show_progress: bool = False):
    grid = TileStore.from_config(config.store).read_grid()
    futures = {
        download_tile_task.submit(config.store, grid[tile_id], year, config.download, overwrite): (tile_id, year)
        for tile_id in tile_ids
        for year in config.years
    }
    return collect(STAGE, futures, show_progress)


@flow(name="download")
def download_flow(
    config: RunConfig,
    subset: TileSubset = TileSubset(),
    overwrite: bool = False,
    scheduler_address: str | None = None,
    show_progress: bool = False,
) -> dict:
    """Fill the store with every selected tile's bands and data masks, for each year of the config."""
    _, tiles = prepare_stage(config, subset)
    with task_runner(config, scheduler_address) as runner:
        outcomes = download_tiles.with_options(task_runner=runner)(config, tiles.tile_ids, overwrite, show_progress)
    return finish_stage(config, STAGE, outcomes)
