"""Download stage, tile level: one tile-year of bands, cloud masks and valid-data masks.

Plain functions, no Prefect: the flow in flows/download.py wraps them. A tile is made in
two passes over its blocks, both inside one write attempt of the store (so the tile is
marked done only when everything is written):

1. bands and data mask, read from the source block by block;
2. s2cloudless cloud probabilities and masks, block by block, each block read back from
   the attempt with enough surrounding context (halo) that the result equals processing
   the whole tile at once; then valid = data and not cloud, and each frame's valid coverage.
"""

from __future__ import annotations

import logging

import numpy as np

from lcms.config import DownloadConfig, params_hash
from lcms.grid import Tile
from lcms.store import DoneRecord, TileStore
from tasks.download import cloud_mask
from tasks.download.sources import BandSource, make_source

log = logging.getLogger(__name__)

STAGE = "download"


def download_params_hash(cfg: DownloadConfig, tile: Tile, year: int) -> str:
    """What the tile's output depends on: source and cloud-mask settings, the tile's grid, the year.

    The block size is left out: it changes how the tile is produced, not what is produced.
    """
    return params_hash(cfg.source, cfg.cloud_mask, tile.grid.to_attrs(), year)


def with_halo(region: tuple[slice, slice], halo: int, shape: tuple[int, int]) -> tuple[tuple[slice, slice], tuple]:
    """`region` grown by `halo` pixels (clipped to `shape`), and where `region` sits inside it."""
    rows, cols = region
    r0, c0 = max(rows.start - halo, 0), max(cols.start - halo, 0)
    r1, c1 = min(rows.stop + halo, shape[0]), min(cols.stop + halo, shape[1])
    inner = (slice(rows.start - r0, rows.stop - r0), slice(cols.start - c0, cols.stop - c0))
    return (slice(r0, r1), slice(c0, c1)), inner


def download_tile(
    store: TileStore, tile: Tile, year: int, cfg: DownloadConfig, source: BandSource | None = None
) -> DoneRecord:
    """Fetch and store one tile-year; the tile is marked done only when every array is written."""
    source = source or make_source(cfg.source, store.storage_options)
    dates = source.acquisition_dates(tile.grid, year)
    if not len(dates):
        log.warning("tile %s has no acquisitions in %s: stored with zero frames", tile.tile_id, year)
    coords = {"time": dates, "band": np.array(source.band_names)}
    attrs = {"source": cfg.source.kind}
    tile_hash = download_params_hash(cfg, tile, year)
    blocks = list(tile.grid.blocks(cfg.block_size))
    with store.writer(STAGE, year, tile.tile_id, tile.grid, tile_hash, coords, attrs) as writer:
        for region, block_grid in blocks:
            if len(dates):
                bands, data_mask = source.read(block_grid, dates)
            else:  # nothing to ask the source for: an empty, valid tile
                bands = np.zeros((0, *block_grid.shape, len(source.band_names)), np.uint16)
                data_mask = np.zeros((0, *block_grid.shape), bool)
            writer.write("bands", bands, region)
            writer.write("data_mask", data_mask, region)

        halo = cloud_mask.halo_px(cfg.cloud_mask, tile.grid.resolution) if cfg.cloud_mask.method != "none" else 0
        valid_pixels = np.zeros(len(dates), dtype=np.int64)
        for region, _ in blocks:
            context, inner = with_halo(region, halo, tile.grid.shape)
            bands = writer.read("bands", context)
            data_mask = writer.read("data_mask", context)
            if cfg.cloud_mask.method == "none":
                prob, cloudy = np.full(data_mask.shape, 255, np.uint8), np.zeros_like(data_mask)
            else:
                prob, cloudy = cloud_mask.cloud_masks(
                    bands, source.band_names, data_mask, tile.grid.resolution, cfg.cloud_mask
                )
            prob, cloudy, data_mask = (
                prob[:, inner[0], inner[1]],
                cloudy[:, inner[0], inner[1]],
                data_mask[:, inner[0], inner[1]],
            )
            valid = cloud_mask.valid_mask(data_mask, cloudy)
            writer.write("cloud_prob", prob, region)
            writer.write("cloud_mask", cloudy, region)
            writer.write("valid_mask", valid, region)
            valid_pixels += valid.sum(axis=(1, 2))
        coverage = (valid_pixels / (tile.grid.height * tile.grid.width)).astype(np.float32)
        writer.write("valid_coverage", coverage)
        return writer.commit(
            extra={"n_dates": len(dates), "mean_valid_coverage": float(coverage.mean()) if len(dates) else 0.0}
        )
