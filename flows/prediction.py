"""Prediction stage flow: the trained model over every selected tile and year, on Dask."""

from __future__ import annotations

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.common import prepare_stage, run_stage, run_tile, submit_tiles
from lcms.config import PredictionConfig, RunConfig, StoreConfig, TileSubset
from lcms.grid import Tile
from lcms.store import StoreError, TileStore
from tasks.prediction.tile import (
    INPUT_STAGE,
    STAGE,
    check_features_match,
    load_stored_model,
    prediction_params_hash,
    prediction_tile,
)


@task(
    name="prediction-tile",
    cache_policy=NO_CACHE,
    retries=1,
    retry_delay_seconds=5,
    task_run_name="{tile.tile_id}/{year}",
)
def prediction_tile_task(
    store_cfg: StoreConfig, tile: Tile, year: int, cfg: tuple[PredictionConfig, str], overwrite: bool
) -> dict:
    prediction_cfg, model_name = cfg
    store = TileStore.from_config(store_cfg)
    features = store.done_record(INPUT_STAGE, year, tile.tile_id)
    if features is None:
        raise StoreError(f"tile {tile.tile_id} has no finished {INPUT_STAGE} output for {year}; run that stage first")
    _, _, attempt = load_stored_model(store, model_name)
    # A retrained model or redone features make the tile's prediction stale.
    tile_hash = prediction_params_hash(tile, year, attempt, features.params_hash)
    return run_tile(
        STAGE,
        store,
        tile,
        year,
        tile_hash,
        overwrite,
        lambda: prediction_tile(store, tile, year, prediction_cfg, model_name),
    )


@flow(name="prediction-tiles")
def prediction_tiles(config: RunConfig, tile_ids: list[str], overwrite: bool = False, show_progress: bool = False):
    stage_cfg = (config.prediction, config.model_name)
    return submit_tiles(prediction_tile_task, STAGE, config, stage_cfg, tile_ids, overwrite, show_progress)


def check_model_applies(config: RunConfig, subset: TileSubset) -> None:
    """Fail before the cluster starts when there is no model, or the features are not the model's.

    The first selected tile of each year stands for the others (one features config per run);
    each tile task checks its own tile again.
    """
    store, tiles = prepare_stage(config, subset)
    _, metadata, _ = load_stored_model(store, config.model_name)
    tile_id = tiles.tile_ids[0]
    for year in config.years:
        if store.is_done(INPUT_STAGE, year, tile_id):
            features = store.open_tile(INPUT_STAGE, year, tile_id)
            where = f"tile {tile_id}/{year}"
            check_features_match(metadata, list(features.coord("feature")), features.coord("time"), where)


@flow(name="prediction")
def prediction_flow(
    config: RunConfig,
    subset: TileSubset = TileSubset(),
    overwrite: bool = False,
    scheduler_address: str | None = None,
    show_progress: bool = False,
) -> dict:
    """Labels, class probabilities and confidence for every selected tile and year."""
    check_model_applies(config, subset)
    return run_stage(
        config,
        subset,
        overwrite,
        scheduler_address,
        show_progress,
        STAGE,
        prediction_tiles,
        input_stages=(INPUT_STAGE,),
    )
