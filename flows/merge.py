"""Merge stage flow: the samples of the selected tiles in one dataset, with its train/validation/test split.

AOI level: one task in the flow's own process, no Dask cluster (it streams one tile at a time).
"""

from __future__ import annotations

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows.common import prepare_stage, require_inputs
from lcms.config import MergeConfig, RunConfig, StoreConfig, TileSubset
from lcms.store import TileStore
from tasks.merge.dataset import INPUT_STAGE, STAGE, merge_params_hash, merge_samples, sampling_inputs


@task(name="merge-samples", cache_policy=NO_CACHE)
def merge_task(
    store_cfg: StoreConfig,
    tile_ids: list[str],
    years: list[int],
    widths: dict[str, int],
    cfg: MergeConfig,
    block_px: int,
) -> dict:
    record = merge_samples(TileStore.from_config(store_cfg), tile_ids, years, widths, cfg, block_px)
    return dict(record.extra)


@flow(name="merge")
def merge_flow(
    config: RunConfig,
    subset: TileSubset = TileSubset(),
    overwrite: bool = False,
    scheduler_address: str | None = None,  # unused: the merge needs no cluster; kept for a uniform stage call
    show_progress: bool = False,
) -> dict:
    """Merge the samples of the selected tiles and `merge.years` into the dataset `merge.name`."""
    cfg = config.merge
    store, tiles = prepare_stage(config, subset)
    years = config.merge_years
    require_inputs(store, INPUT_STAGE, STAGE, tiles.tile_ids, years)
    block_px = max(1, round(cfg.block_size_m / config.grid.resolution_m))
    wanted = merge_params_hash(cfg, block_px, sampling_inputs(store, tiles.tile_ids, years))
    record = store.product_record(STAGE, cfg.name)
    if not overwrite and record is not None and record.params_hash == wanted:
        extra, status = dict(record.extra), "skipped"
    else:
        widths = {tile.tile_id: tile.grid.width for tile in tiles}
        extra, status = merge_task(config.store, tiles.tile_ids, years, widths, cfg, block_px), "done"
    counts = extra["split_counts"]
    create_markdown_artifact(
        key=f"merge-{cfg.name}".lower().replace("_", "-").replace(".", "-"),
        markdown=(
            f"## Merged dataset `{cfg.name}`\n\n"
            f"{extra['n_samples']} samples from {len(tiles)} tiles, years {years}, split by "
            f"{extra['split_method']}:\n\n| split | samples | tiles |\n|---|---:|---:|\n"
            + "".join(f"| {k} | {counts[k]} | {extra['tiles_per_split'][k]} |\n" for k in counts)
        ),
        description=f"merge {cfg.name}: {status}",
    )
    message = f"merge: dataset {cfg.name!r} {status}, {extra['n_samples']} samples ({counts})"
    return {"stage": STAGE, "status": status, "message": message, **extra}
