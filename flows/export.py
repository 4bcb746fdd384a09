"""Export stage flow: each year's maps as COGs with STAC items, per UTM zone or in one CRS.

AOI level: one task per year in the flow's own process; the COG writer streams tile by tile.
The flow's signature and input checks come from the stage's declaration (flows/common.py).
"""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from flows.common import aoi_stage_flow
from lcms.config import ExportConfig, RunConfig, StoreConfig
from lcms.grid import AreaGrid
from lcms.stages import get_stage
from lcms.store import TileStore
from tasks.export.maps import export_year

STAGE = get_stage("export")


@task(name="export-year", cache_policy=NO_CACHE, task_run_name="maps/{year}")
def export_task(store_cfg: StoreConfig, tile_ids: list[str], year: int, cfg: ExportConfig, product: str):
    store = TileStore.from_config(store_cfg, product)
    tiles = store.read_grid().select(tile_ids=tile_ids)
    current = store.product_record("training", product)
    return export_year(store, tiles, year, cfg, product, current.attempt if current else None)


def export(config: RunConfig, store: TileStore, tiles: AreaGrid, overwrite: bool) -> dict:
    """Write the maps of the selected tiles for every year of the config (always rewritten, each in one step)."""
    outputs = [
        row
        for year in config.years
        for row in export_task(config.store, tiles.tile_ids, year, config.export, config.product)
    ]
    create_table_artifact(key="export-maps", table=outputs, description=f"export: {len(outputs)} maps")
    listing = "\n".join(
        f"  {o['url']} ({o['width']} × {o['height']} px, {o['tiles']} tiles, model {o['model_version']})"
        + (f"; left out (other model versions): {', '.join(o['left_out'])}" if o["left_out"] else "")
        for o in outputs
    )
    return {
        "stage": STAGE.name,
        "status": "done",
        "maps": outputs,
        "message": f"export: {len(outputs)} maps\n{listing}",
    }


export_flow = aoi_stage_flow(STAGE, export)
