"""Download stage, tile level: one tile-year of bands, cloud masks and valid-data masks.

Plain functions, no Prefect: the flow in flows/download.py wraps them. A tile is made in
passes over its blocks, all inside one write attempt of the store (so the tile is marked
done only when everything is written), by tasks/download/masks.py's `fill_tile`:

1. bands and data mask (and the layers the cloud method needs), read from the source block
   by block;
2. s2cloudless cloud probabilities and masks, block by block, each block read back from
   the attempt with enough surrounding context (halo, read from the source beyond the
   tile's edges) that the result equals processing the whole area at once;
3. cloud shadows, then valid = data and not cloud and not shadow, and each frame's valid
   coverage.
"""

from __future__ import annotations

import logging

import numpy as np

from lcms.config import DownloadConfig, params_hash
from lcms.grid import Tile
from lcms.store import DoneRecord, TileStore
from tasks.download import masks
from tasks.download.sources import BandSource, SourceCredentials

log = logging.getLogger(__name__)

STAGE = "download"


def download_params_hash(cfg: DownloadConfig, tile: Tile, year: int) -> str:
    """What the tile's output depends on: source and cloud-mask settings, the tile's grid, the year.

    The block size is left out: it changes how the tile is produced, not what is produced.
    """
    return params_hash(cfg.source, cfg.cloud_mask, tile.grid.to_attrs(), year)


def make_source(cfg, storage_options: dict | None = None, credentials: SourceCredentials | None = None) -> BandSource:
    """The source a `lcms.config` source config describes (synthetic, sentinelhub or files)."""
    # Imported when chosen: each source pulls in its own client libraries.
    if cfg.kind == "synthetic":
        from tasks.download.synthetic import SyntheticScene, SyntheticSource

        return SyntheticSource(SyntheticScene(**cfg.model_dump(exclude={"kind"})))
    if cfg.kind == "sentinelhub":
        from tasks.download.sentinelhub_source import SentinelHubSource

        return SentinelHubSource(cfg, credentials)
    if cfg.kind == "files":
        from tasks.download.file_source import FileSource

        return FileSource(cfg, storage_options)
    raise ValueError(f"unknown source kind {cfg.kind!r}")


def download_tile_hash(store: TileStore, tile: Tile, year: int, cfg: DownloadConfig) -> str:
    """The download reads no other stage: its hash is its settings, the tile and the year."""
    return download_params_hash(cfg, tile, year)


def with_halo(region: tuple[slice, slice], halo: int, shape: tuple[int, int]) -> tuple[tuple[slice, slice], tuple]:
    """`region` grown by `halo` pixels (clipped to `shape`), and where `region` sits inside it."""
    rows, cols = region
    r0, c0 = max(rows.start - halo, 0), max(cols.start - halo, 0)
    r1, c1 = min(rows.stop + halo, shape[0]), min(cols.stop + halo, shape[1])
    inner = (slice(rows.start - r0, rows.stop - r0), slice(cols.start - c0, cols.stop - c0))
    return (slice(r0, r1), slice(c0, c1)), inner


def download_tile(
    store: TileStore,
    tile: Tile,
    year: int,
    cfg: DownloadConfig,
    source: BandSource | None = None,
    credentials: SourceCredentials | None = None,
) -> DoneRecord:
    """Fetch and store one tile-year; the tile is marked done only when every array is written.

    `credentials` are the source's, resolved by the caller (the flow reads Prefect Secret blocks).
    """
    source = source or make_source(cfg.source, store.storage_options, credentials)
    dates = source.acquisition_dates(tile.grid, year)
    if not len(dates):
        log.warning("tile %s has no acquisitions in %s: stored with zero frames", tile.tile_id, year)
    coords = {"time": dates, "band": np.array(source.band_names)}
    attrs = {"source": cfg.source.kind}
    tile_hash = download_params_hash(cfg, tile, year)
    with store.writer(STAGE, year, tile.tile_id, tile.grid, tile_hash, coords, attrs) as writer:
        valid_pixels = masks.fill_tile(writer, source, tile.grid, dates, cfg)
        coverage = (valid_pixels / (tile.grid.height * tile.grid.width)).astype(np.float32)
        writer.write("valid_coverage", coverage)
        return writer.commit(
            extra={"n_dates": len(dates), "mean_valid_coverage": float(coverage.mean()) if len(dates) else 0.0}
        )
