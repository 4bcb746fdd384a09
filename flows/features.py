"""Features stage flow: indices and temporal interpolation (or mosaics) for every tile and year."""

from __future__ import annotations

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.common import run_stage, run_tile, submit_tiles
from lcms.config import FeaturesConfig, RunConfig, StoreConfig, TileSubset
from lcms.grid import Tile
from lcms.store import StoreError, TileStore
from tasks.features.tile import INPUT_STAGE, STAGE, features_params_hash, features_tile


@task(
    name="features-tile", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5, task_run_name="{tile.tile_id}/{year}"
)
def features_tile_task(store_cfg: StoreConfig, tile: Tile, year: int, cfg: FeaturesConfig, overwrite: bool) -> dict:
    store = TileStore.from_config(store_cfg)
    # The hash includes the download it reads, so a redone download makes features stale.
    download = store.done_record(INPUT_STAGE, year, tile.tile_id)
    if download is None:
        raise StoreError(f"tile {tile.tile_id} has no finished {INPUT_STAGE} output for {year}; run that stage first")
    download_hash = download.params_hash
    return run_tile(
        STAGE,
        store,
        tile,
        year,
        features_params_hash(cfg, tile, year, download_hash),
        overwrite,
        lambda: features_tile(store, tile, year, cfg),
    )


@flow(name="features-tiles")
def features_tiles(config: RunConfig, tile_ids: list[str], overwrite: bool = False, show_progress: bool = False):
    return submit_tiles(features_tile_task, STAGE, config, config.features, tile_ids, overwrite, show_progress)


@flow(name="features")
def features_flow(
    config: RunConfig,
    subset: TileSubset = TileSubset(),
    overwrite: bool = False,
    scheduler_address: str | None = None,
    show_progress: bool = False,
) -> dict:
    """Features for every selected tile and year, from the download stage's output."""
    return run_stage(
        config, subset, overwrite, scheduler_address, show_progress, STAGE, features_tiles, input_stages=(INPUT_STAGE,)
    )
