"""Download stage flow: bands, cloud masks and valid-data masks for every tile and year of the AOI."""

from __future__ import annotations

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.common import run_stage, run_tile, submit_tiles
from lcms.config import DownloadConfig, RunConfig, StoreConfig, TileSubset
from lcms.grid import Tile
from lcms.store import TileStore
from tasks.download.tile import STAGE, download_params_hash, download_tile


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
    return submit_tiles(download_tile_task, STAGE, config, config.download, tile_ids, overwrite, show_progress)


@flow(name="download")
def download_flow(
    config: RunConfig,
    subset: TileSubset = TileSubset(),
    overwrite: bool = False,
    scheduler_address: str | None = None,
    show_progress: bool = False,
) -> dict:
    """Fill the store with every selected tile's bands and masks, for each year of the config."""
    return run_stage(config, subset, overwrite, scheduler_address, show_progress, STAGE, download_tiles)
