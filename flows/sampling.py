"""Sampling stage flow: training pixels and their features from every tile and year."""

from __future__ import annotations

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.common import run_stage, run_tile, submit_tiles
from lcms.config import RunConfig, SamplingConfig, StoreConfig, TileSubset
from lcms.grid import Tile
from lcms.store import TileStore
from tasks.sampling.tile import INPUT_STAGES, STAGE, input_hashes, sampling_params_hash, sampling_tile


@task(
    name="sampling-tile", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5, task_run_name="{tile.tile_id}/{year}"
)
def sampling_tile_task(store_cfg: StoreConfig, tile: Tile, year: int, cfg: SamplingConfig, overwrite: bool) -> dict:
    store = TileStore.from_config(store_cfg)
    # The hash includes the features and reference it reads: redoing either makes the samples stale.
    tile_hash = sampling_params_hash(cfg, tile, year, input_hashes(store, tile.tile_id, year))
    return run_tile(STAGE, store, tile, year, tile_hash, overwrite, lambda: sampling_tile(store, tile, year, cfg))


@flow(name="sampling-tiles")
def sampling_tiles(config: RunConfig, tile_ids: list[str], overwrite: bool = False, show_progress: bool = False):
    return submit_tiles(sampling_tile_task, STAGE, config, config.sampling, tile_ids, overwrite, show_progress)


@flow(name="sampling")
def sampling_flow(
    config: RunConfig,
    subset: TileSubset = TileSubset(),
    overwrite: bool = False,
    scheduler_address: str | None = None,
    show_progress: bool = False,
) -> dict:
    """Samples for every selected tile and year, from the features and reference stages' output."""
    return run_stage(
        config, subset, overwrite, scheduler_address, show_progress, STAGE, sampling_tiles, input_stages=INPUT_STAGES
    )
