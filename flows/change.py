"""Change stage flow: two years' maps compared per tile on Dask, then every tile's polygons in one layer.

The tile work is keyed by the pair of years ('2023-2024'), not by one year. The layer (GeoPackage,
and PostGIS if configured) is rebuilt from every finished tile of the pair, so a rerun over a
subset of the AOI updates those tiles and keeps the rest.
"""

from __future__ import annotations

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows.common import collect, finish_stage, prepare_stage, require_inputs, run_tile, task_runner
from lcms.config import ChangeConfig, RunConfig, StoreConfig, TileSubset
from lcms.grid import Tile
from lcms.store import StoreError, TileStore, change_key
from tasks.change.polygons import postgis_dsn, write_change_layer
from tasks.change.tile import STAGE, change_params_hash, change_tile, input_hashes, input_stages


class ChangeYearsError(ValueError):
    """The run has no pair of years to compare."""


@task(
    name="change-tile",
    cache_policy=NO_CACHE,
    retries=1,
    retry_delay_seconds=5,
    task_run_name="{tile.tile_id}/{years[0]}-{years[1]}",
)
def change_tile_task(store_cfg: StoreConfig, tile: Tile, years: tuple[int, int], cfg: ChangeConfig, overwrite: bool):
    store = TileStore.from_config(store_cfg)
    hashes = input_hashes(store, cfg, tile.tile_id, years)
    if hashes is None:
        raise StoreError(f"tile {tile.tile_id} lacks a finished {input_stages(cfg)} output for {list(years)}")
    # Redone maps of either year make the tile's changes stale.
    tile_hash = change_params_hash(cfg, tile, *years, hashes)
    key = change_key(*years)
    return run_tile(
        STAGE, store, tile, key, tile_hash, overwrite, lambda: change_tile(store, tile, years, cfg, tile_hash)
    )


@flow(name="change-tiles")
def change_tiles(config: RunConfig, tile_ids: list[str], overwrite: bool = False, show_progress: bool = False):
    years = config.change_years
    grid = TileStore.from_config(config.store).read_grid()
    futures = {
        change_tile_task.submit(config.store, grid[tile_id], years, config.change, overwrite): (
            tile_id,
            change_key(*years),
        )
        for tile_id in tile_ids
    }
    return collect(STAGE, futures, show_progress)


def change_years(config: RunConfig) -> tuple[int, int]:
    years = config.change_years
    if years is None:
        raise ChangeYearsError(
            f"the change stage compares two years, and the run has only {config.years}; "
            "add a year to `years` (and set change.years if there are more than two)"
        )
    return years


@flow(name="change")
def change_flow(
    config: RunConfig,
    subset: TileSubset = TileSubset(),
    overwrite: bool = False,
    scheduler_address: str | None = None,
    show_progress: bool = False,
) -> dict:
    """Change polygons between `change.years` (default: the last two years) for the selected tiles."""
    years = change_years(config)
    if config.change.postgis is not None:
        postgis_dsn(config.change)  # a missing DSN fails here, before any tile work
    store, tiles = prepare_stage(config, subset)
    for stage in input_stages(config.change):
        require_inputs(store, stage, STAGE, tiles.tile_ids, list(years))
    with task_runner(config, scheduler_address) as runner:
        outcomes = change_tiles.with_options(task_runner=runner)(config, tiles.tile_ids, overwrite, show_progress)
    result = finish_stage(config, STAGE, outcomes)

    done = store.done_tiles(STAGE, change_key(*years))
    grid = store.read_grid()
    layer_tiles = [grid[t] for t in grid.tile_ids if t in done]
    summary = write_change_layer(store, layer_tiles, years, config.change, list(done.values()))
    rows = "".join(
        f"| {t['from']} | {t['to']} | {t['polygons']} | {t['area_ha']:.2f} |\n" for t in summary["transitions"][:15]
    )
    create_markdown_artifact(
        key=f"change-{years[0]}-{years[1]}",
        markdown=(
            f"## Land cover change {years[0]} → {years[1]}\n\n"
            f"{summary['polygons']} polygons, {summary['area_ha']:.2f} ha, over {len(layer_tiles)} tiles.\n\n"
            "| from | to | polygons | ha |\n|---|---|---:|---:|\n" + rows + f"\nLayer: `{summary['url']}`\n"
        ),
        description=f"change {years[0]}-{years[1]}: {summary['polygons']} polygons",
    )
    message = f"change {years[0]}→{years[1]}: {summary['polygons']} polygons, {summary['area_ha']:.2f} ha"
    return {**result, "message": message, "layer": summary["url"], "polygons": summary["polygons"]}
