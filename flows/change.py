"""Change stage flow: two years' maps compared per tile on Dask, then every tile's polygons in one layer.

The tile work is made from the stage's declaration (lcms/stages.py) by flows/common.py; it is
keyed by the pair of years ('2023-2024'), not by one year. Particular to this stage: the run must
have two years to compare; the PostGIS DSN is resolved here (environment or Prefect Secret
block), before any tile work; and once the tiles are done, the layer (GeoPackage, and PostGIS if
configured) is rebuilt from every finished tile of the pair, so a rerun over a subset of the AOI
updates those tiles and keeps the rest.
"""

from __future__ import annotations

import os

from prefect.artifacts import create_markdown_artifact

from flows.common import prepare_stage, tile_stage_flow
from lcms.config import ChangeConfig, RunConfig, TileSubset
from lcms.grid import AreaGrid
from lcms.stages import change_key, get_stage
from lcms.store import TileStore
from tasks.change.polygons import write_change_layer
from tasks.change.tile import ChangeError
from tasks.prediction.versions import one_model_version

STAGE = get_stage("change")
LAYER = get_stage("change-polygons")  # the AOI-wide layer this flow writes after the tiles


class ChangeYearsError(ValueError):
    """The run has no pair of years to compare."""


def change_years(config: RunConfig) -> tuple[int, int]:
    years = config.change_years
    if years is None:
        raise ChangeYearsError(
            f"the change stage compares two years, and the run has only {config.years}; "
            "add a year to `years` (and set change.years if there are more than two)"
        )
    return years


def postgis_dsn(cfg: ChangeConfig) -> str:
    """The PostGIS DSN from a Prefect Secret block or the environment; never from the config itself."""
    postgis = cfg.postgis
    if postgis.secret_block:
        from prefect.blocks.system import Secret

        return Secret.load(postgis.secret_block).get()
    dsn = os.environ.get(postgis.dsn_env)
    if not dsn:
        raise ChangeError(
            f"change.postgis is set, but the environment variable {postgis.dsn_env} holds no DSN; "
            "export it (postgresql://user:password@host:5432/db) or set change.postgis.secret_block"
        )
    return dsn


def check_change(config: RunConfig, subset: TileSubset) -> None:
    """Two years to compare, each year's maps from one model version, and a DSN when PostGIS is
    configured, before any tile work."""
    years = change_years(config)
    if config.change.postgis is not None:
        postgis_dsn(config.change)
    store, tiles = prepare_stage(config, subset)
    for year in years:
        one_model_version(store, tiles.tile_ids, year, "change", stages=(config.change.source, "prediction"))


def write_layer(config: RunConfig, store: TileStore, tiles: AreaGrid, result: dict) -> dict:
    """Every finished tile of the pair (not only the selected ones) in one layer, and its artifact."""
    years = change_years(config)
    record = store.product_record(LAYER.name, change_key(*years))
    if record is not None and record.params_hash == LAYER.product_hash_of(config, store, tiles):
        url = store.published_url(LAYER.name, change_key(*years), "changes.gpkg")
        message = f"change {years[0]}→{years[1]}: layer up to date ({record.extra.get('polygons')} polygons): {url}"
        return {**result, "message": message, "layer": url, "polygons": record.extra.get("polygons")}
    done = store.done_tiles(STAGE.name, change_key(*years))
    grid = store.read_grid()
    layer_tiles = [grid[t] for t in grid.tile_ids if t in done]
    dsn = postgis_dsn(config.change) if config.change.postgis is not None else None
    summary = write_change_layer(store, layer_tiles, years, config.change, list(done.values()), dsn)
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


change_flow = tile_stage_flow(STAGE, check=check_change, after=write_layer)
