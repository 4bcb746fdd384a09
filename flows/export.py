"""Export stage flow: each year's maps as COGs with STAC items, per UTM zone or in one CRS.

AOI level: one task per year in the flow's own process; the COG writer streams tile by tile.
"""

from __future__ import annotations

from prefect import flow, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from flows.common import prepare_stage, require_inputs
from lcms.config import ExportConfig, RunConfig, StoreConfig, TileSubset
from lcms.store import TileStore
from tasks.export.maps import STAGE, export_year


@task(name="export-year", cache_policy=NO_CACHE, task_run_name="maps/{year}")
def export_task(store_cfg: StoreConfig, tile_ids: list[str], year: int, cfg: ExportConfig, model_name: str):
    store = TileStore.from_config(store_cfg)
    tiles = store.read_grid().select(tile_ids=tile_ids)
    return export_year(store, tiles, year, cfg, model_name)


@flow(name="export")
def export_flow(
    config: RunConfig,
    subset: TileSubset = TileSubset(),
    overwrite: bool = False,  # maps are always rewritten (each replaces the old file in one step)
    scheduler_address: str | None = None,  # unused: no cluster needed
    show_progress: bool = False,
) -> dict:
    """Write the maps of the selected tiles for every year of the config."""
    cfg = config.export
    store, tiles = prepare_stage(config, subset)
    require_inputs(store, cfg.source, STAGE, tiles.tile_ids, config.years)
    if cfg.confidence and cfg.source != "prediction":
        require_inputs(store, "prediction", STAGE, tiles.tile_ids, config.years)
    outputs = [
        row for year in config.years for row in export_task(config.store, tiles.tile_ids, year, cfg, config.model_name)
    ]
    create_table_artifact(key="export-maps", table=outputs, description=f"export: {len(outputs)} maps")
    listing = "\n".join(f"  {o['url']} ({o['width']} × {o['height']} px, {o['tiles']} tiles)" for o in outputs)
    return {"stage": STAGE, "status": "done", "maps": outputs, "message": f"export: {len(outputs)} maps\n{listing}"}
