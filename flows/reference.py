"""Reference stage flow: ground-truth polygons rasterised onto every tile, with a negative buffer."""

from __future__ import annotations

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.common import prepare_stage, run_stage, run_tile, submit_tiles
from lcms.config import ReferenceConfig, RunConfig, StoreConfig, TileSubset
from lcms.grid import Tile
from lcms.store import TileStore
from tasks.reference.polygons import ReferenceError, intersects
from tasks.reference.tile import STAGE, reference_params_hash, reference_polygons, reference_tile, reference_version


@task(
    name="reference-tile",
    cache_policy=NO_CACHE,
    retries=1,
    retry_delay_seconds=5,
    task_run_name="{tile.tile_id}/{year}",
)
def reference_tile_task(store_cfg: StoreConfig, tile: Tile, year: int, cfg: ReferenceConfig, overwrite: bool) -> dict:
    store = TileStore.from_config(store_cfg)
    version = reference_version(cfg, store.storage_options)
    return run_tile(
        STAGE,
        store,
        tile,
        year,
        reference_params_hash(cfg, tile, year, version),
        overwrite,
        lambda: reference_tile(store, tile, year, cfg, version),
    )


@flow(name="reference-tiles")
def reference_tiles(config: RunConfig, tile_ids: list[str], overwrite: bool = False, show_progress: bool = False):
    return submit_tiles(reference_tile_task, STAGE, config, config.reference, tile_ids, overwrite, show_progress)


def check_reference(config: RunConfig, subset: TileSubset) -> None:
    """Fail before any work when no reference is configured, it cannot be read, or it misses every tile."""
    if config.reference.path is None:
        raise ReferenceError("reference.path is not set: give the ground-truth polygons file in the config")
    store, tiles = prepare_stage(config, subset)
    polygons = reference_polygons(config.reference, store.storage_options)
    if not any(intersects(polygons, tile.grid) for tile in tiles):
        raise ReferenceError(
            f"the reference {config.reference.path} intersects none of the {len(tiles)} selected tiles; "
            "check that it covers the AOI and that its CRS is set correctly"
        )


@flow(name="reference")
def reference_flow(
    config: RunConfig,
    subset: TileSubset = TileSubset(),
    overwrite: bool = False,
    scheduler_address: str | None = None,
    show_progress: bool = False,
) -> dict:
    """Reference labels for every selected tile and year (tiles outside the reference get no data)."""
    check_reference(config, subset)
    return run_stage(config, subset, overwrite, scheduler_address, show_progress, STAGE, reference_tiles)
