"""Reporting stage flow: the HTML report with its CSV and JSON files, and a Prefect artifact with the headline.

AOI level: one task in the flow's own process (it reads tile cores one at a time). The flow's
signature and tile-input checks come from the stage's declaration (flows/common.py).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows.common import StageInputError, aoi_stage_flow
from lcms.config import RunConfig
from lcms.grid import AreaGrid
from lcms.stages import change_key, get_stage
from lcms.store import TileStore
from tasks.change.polygons import PRODUCT as CHANGE_PRODUCT
from tasks.prediction.versions import one_model_version
from tasks.report.build import build_report, headline_markdown

STAGE = get_stage("report")


@task(name="report", cache_policy=NO_CACHE)
def report_task(config: RunConfig, tile_ids: list[str]) -> dict:
    product, years = config.product, config.years
    store = TileStore.from_config(config.store, product)
    selected = store.read_grid().select(tile_ids=tile_ids)
    tiles = list(selected)
    with tempfile.TemporaryDirectory(prefix="lcms-report-") as tmp:
        folder = Path(tmp)
        data = build_report(
            store, tiles, years, config.report, product, config.change.source, config.change_years, folder
        )
        report_hash = STAGE.product_hash_of(config, store, selected)
        store.put_files(STAGE.name, product, folder, report_hash, extra={"years": years, "tiles": len(tiles)})
    return {"markdown": headline_markdown(data), "url": store.published_url(STAGE.name, product, "report.html")}


def report(config: RunConfig, store: TileStore, tiles: AreaGrid, overwrite: bool) -> dict:
    """The report over the selected tiles: every year's maps and, with two years, the change between them."""
    for year in config.years:
        one_model_version(store, tiles.tile_ids, year, "report", stages=(config.change.source,))
    change_years = config.change_years
    if change_years is not None and store.product_record(CHANGE_PRODUCT, change_key(*change_years)) is None:
        raise StageInputError(
            f"the report reads the change polygons of {change_key(*change_years)}, which are missing; "
            "run `lcms change CONFIG` first"
        )
    result = report_task(config, tiles.tile_ids)
    create_markdown_artifact(
        key=f"report-{config.model_name}".lower().replace("_", "-").replace(".", "-"),
        markdown=result["markdown"] + f"\nReport: `{result['url']}`\n",
        description=f"report {config.model_name}",
    )
    return {"stage": STAGE.name, "status": "done", "url": result["url"], "message": f"report: {result['url']}"}


report_flow = aoi_stage_flow(STAGE, report)
