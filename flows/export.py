"""Export stage flow: each year's maps as COGs with STAC items, per UTM zone or in one CRS.

AOI level: one task per year in the flow's own process; the COG writer streams tile by tile.
The flow's signature and input checks come from the stage's declaration (flows/common.py).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from flows.common import aoi_stage_flow
from lcms.config import ExportConfig, RunConfig, StoreConfig
from lcms.grid import AreaGrid
from lcms.stages import get_stage
from lcms.store import TileStore
from tasks.export.imagery import export_imagery_year
from tasks.export.maps import export_year, map_groups
from tasks.export.stac import write_catalogue

STAGE = get_stage("export")
MANIFEST = "maps.json"  # every exported map: url, zone, year, size, tiles, model version


@task(name="export-year", cache_policy=NO_CACHE, task_run_name="maps/{year}")
def export_task(store_cfg: StoreConfig, tile_ids: list[str], year: int, cfg: ExportConfig, product: str):
    store = TileStore.from_config(store_cfg, product)
    tiles = store.read_grid().select(tile_ids=tile_ids)
    current = store.product_record("training", product)
    return export_year(store, tiles, year, cfg, product, current.attempt if current else None)


@task(name="export-imagery", cache_policy=NO_CACHE, task_run_name="imagery/{year}")
def imagery_task(store_cfg: StoreConfig, tile_ids: list[str], year: int, cfg: ExportConfig, product: str):
    store = TileStore.from_config(store_cfg, product)
    tiles = store.read_grid().select(tile_ids=tile_ids)
    return export_imagery_year(store, tiles, year, cfg, map_groups(tiles, cfg))


@task(name="export-catalogue", cache_policy=NO_CACHE)
def catalogue_task(store_cfg: StoreConfig, cfg: ExportConfig, product: str) -> int:
    store = TileStore.from_config(store_cfg, product)
    return len(write_catalogue(cfg.url or store.maps_url(), store.storage_options))


def export(config: RunConfig, store: TileStore, tiles: AreaGrid, overwrite: bool) -> dict:
    """Write the maps of the selected tiles for every year of the config (each in one step), the imagery
    composites beside them, and the STAC catalogue of the maps folder."""
    outputs = [
        row
        for year in config.years
        for row in export_task(config.store, tiles.tile_ids, year, config.export, config.product)
    ]
    imagery = [
        row
        for year in (config.years if config.export.imagery.enabled else [])
        for row in imagery_task(config.store, tiles.tile_ids, year, config.export, config.product)
    ]
    catalogue_task(config.store, config.export, config.product)  # catalog.json + a collection per product
    create_table_artifact(key="export-maps", table=outputs, description=f"export: {len(outputs)} maps")
    # The list of maps is the stage's stored product: its done mark says from what they were made,
    # so that a rerun with nothing new skips the export.
    with tempfile.TemporaryDirectory(prefix="lcms-export-") as tmp:
        (Path(tmp) / MANIFEST).write_text(json.dumps(outputs, indent=1, default=str))
        store.put_files(STAGE.name, config.product, Path(tmp), STAGE.product_hash_of(config, store, tiles))
    listing = "\n".join(
        f"  {o['url']} ({o['width']} × {o['height']} px, {o['tiles']} tiles, model {o['model_version']})"
        + (f"; left out (other model versions): {', '.join(o['left_out'])}" if o["left_out"] else "")
        for o in outputs
    )
    return {
        "stage": STAGE.name,
        "status": "done",
        "maps": outputs,
        "imagery": imagery,
        "message": f"export: {len(outputs)} maps, {len(imagery)} imagery composites\n{listing}",
    }


export_flow = aoi_stage_flow(STAGE, export)
