"""Merge stage flow: the samples of the selected tiles in one dataset, with its train/validation/test split.

AOI level: one task in the flow's own process, no Dask cluster (it streams one tile at a time).
The flow's signature and input checks come from the stage's declaration (flows/common.py).
"""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows.common import aoi_stage_flow
from lcms.config import RunConfig
from lcms.grid import AreaGrid
from lcms.layout import WriteSkipped
from lcms.stages import get_stage
from lcms.store import TileStore
from tasks.merge.dataset import merge_block_px, merge_product_hash, merge_samples

STAGE = get_stage("merge")


@task(name="merge-samples", cache_policy=NO_CACHE)
def merge_task(config: RunConfig, tile_ids: list[str]) -> dict:
    store = TileStore.from_config(config.store, config.product)
    tiles = store.read_grid().select(tile_ids=tile_ids)
    widths = {tile.tile_id: tile.grid.width for tile in tiles}
    record = merge_samples(store, tile_ids, config.merge_years, widths, config.merge, merge_block_px(config))
    return dict(record.extra)


def merge(config: RunConfig, store: TileStore, tiles: AreaGrid, overwrite: bool) -> dict:
    """Merge the samples of the tiles and `merge.years` into the product's dataset."""
    years = config.merge_years
    wanted = merge_product_hash(config, store, tiles)
    record = store.product_record(STAGE.name, config.product)
    if not overwrite and record is not None and record.params_hash == wanted:
        extra, status = dict(record.extra), "skipped"
    else:
        try:
            extra, status = merge_task(config, tiles.tile_ids), "done"
        except WriteSkipped:  # another run made the same dataset while this one waited, or is making it
            record = store.product_record(STAGE.name, config.product)
            if record is None:
                raise
            extra, status = dict(record.extra), "skipped"
    counts = extra["split_counts"]
    create_markdown_artifact(
        key=f"merge-{config.product}".lower().replace("_", "-").replace(".", "-"),
        markdown=(
            f"## Merged dataset `{config.product}`\n\n"
            f"{extra['n_samples']} samples from {len(tiles)} tiles, years {years}, split by "
            f"{extra['split_method']}:\n\n| split | samples | tiles |\n|---|---:|---:|\n"
            + "".join(f"| {k} | {counts[k]} | {extra['tiles_per_split'][k]} |\n" for k in counts)
        ),
        description=f"merge {config.product}: {status}",
    )
    message = f"merge: dataset {config.product!r} {status}, {extra['n_samples']} samples ({counts})"
    return {"stage": STAGE.name, "status": status, "message": message, **extra}


merge_flow = aoi_stage_flow(STAGE, merge)
