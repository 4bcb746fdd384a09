"""Reporting stage flow: the HTML report with its CSV and JSON files, and a Prefect artifact with the headline.

AOI level: one task in the flow's own process (it reads tile cores one at a time).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows.common import StageInputError, prepare_stage, require_inputs
from lcms.config import ReportConfig, RunConfig, StoreConfig, TileSubset
from lcms.store import TileStore, change_key
from tasks.change.polygons import PRODUCT as CHANGE_PRODUCT
from tasks.report.build import build_report, headline_markdown

STAGE = "report"


@task(name="report", cache_policy=NO_CACHE)
def report_task(
    store_cfg: StoreConfig,
    tile_ids: list[str],
    years: list[int],
    cfg: ReportConfig,
    model: str,
    source: str,
    change_years: tuple[int, int] | None,
) -> dict:
    store = TileStore.from_config(store_cfg)
    tiles = list(store.read_grid().select(tile_ids=tile_ids))
    with tempfile.TemporaryDirectory(prefix="lcms-report-") as tmp:
        folder = Path(tmp)
        data = build_report(store, tiles, years, cfg, model, source, change_years, folder)
        store.put_files(STAGE, model, folder, params_hash="-", extra={"years": years, "tiles": len(tiles)})
    return {"markdown": headline_markdown(data), "url": store.file_url(STAGE, model, "report.html")}


@flow(name="report")
def report_flow(
    config: RunConfig,
    subset: TileSubset = TileSubset(),
    overwrite: bool = False,  # the report is always rewritten (it replaces the old one in one step)
    scheduler_address: str | None = None,  # unused: no cluster needed
    show_progress: bool = False,
) -> dict:
    """The report over the selected tiles: every year's maps and, with two years, the change between them."""
    store, tiles = prepare_stage(config, subset)
    source = config.change.source
    require_inputs(store, source, STAGE, tiles.tile_ids, config.years)
    change_years = config.change_years
    if change_years is not None:
        key = change_key(*change_years)
        require_inputs(store, "change", STAGE, tiles.tile_ids, [key])
        if store.product_record(CHANGE_PRODUCT, key) is None:
            raise StageInputError(
                f"the report reads the change polygons of {key}, which are missing; run `lcms change CONFIG` first"
            )
    result = report_task(
        config.store, tiles.tile_ids, config.years, config.report, config.model_name, source, change_years
    )
    create_markdown_artifact(
        key=f"report-{config.model_name}".lower().replace("_", "-").replace(".", "-"),
        markdown=result["markdown"] + f"\nReport: `{result['url']}`\n",
        description=f"report {config.model_name}",
    )
    return {"stage": STAGE, "status": "done", "url": result["url"], "message": f"report: {result['url']}"}
