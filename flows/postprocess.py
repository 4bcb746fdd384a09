"""Post-processing stage flow: the configured chain over every selected tile's predicted labels."""

from __future__ import annotations

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.common import run_stage, run_tile, submit_tiles
from lcms.config import PostprocessConfig, RunConfig, StoreConfig, TileSubset
from lcms.grid import Tile
from lcms.store import StoreError, TileStore
from tasks.postprocess.tile import INPUT_STAGE, STAGE, postprocess_params_hash, postprocess_tile


@task(
    name="postprocess-tile",
    cache_policy=NO_CACHE,
    retries=1,
    retry_delay_seconds=5,
    task_run_name="{tile.tile_id}/{year}",
)
def postprocess_tile_task(store_cfg: StoreConfig, tile: Tile, year: int, cfg: PostprocessConfig, overwrite: bool):
    store = TileStore.from_config(store_cfg)
    prediction = store.done_record(INPUT_STAGE, year, tile.tile_id)
    if prediction is None:
        raise StoreError(f"tile {tile.tile_id} has no finished {INPUT_STAGE} output for {year}; run that stage first")
    tile_hash = postprocess_params_hash(cfg, tile, year, prediction.params_hash)
    return run_tile(STAGE, store, tile, year, tile_hash, overwrite, lambda: postprocess_tile(store, tile, year, cfg))


@flow(name="postprocess-tiles")
def postprocess_tiles(config: RunConfig, tile_ids: list[str], overwrite: bool = False, show_progress: bool = False):
    return submit_tiles(postprocess_tile_task, STAGE, config, config.postprocess, tile_ids, overwrite, show_progress)


@flow(name="postprocess")
def postprocess_flow(
    config: RunConfig,
    subset: TileSubset = TileSubset(),
    overwrite: bool = False,
    scheduler_address: str | None = None,
    show_progress: bool = False,
) -> dict:
    """Post-processed labels for every selected tile and year, from the prediction stage's output."""
    return run_stage(
        config,
        subset,
        overwrite,
        scheduler_address,
        show_progress,
        STAGE,
        postprocess_tiles,
        input_stages=(INPUT_STAGE,),
    )
