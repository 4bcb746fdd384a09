"""Download stage, tile level: fill the store with one tile-year of bands and masks.

Plain functions, no Prefect: the flow in flows/download.py wraps them.
Sources: `synthetic` (tasks/synthetic.py). Sentinel Hub and scene import come with the
download stage's own issue and plug in behind `download_tile`.
"""

from __future__ import annotations

import logging

import numpy as np

from lcms.config import DownloadConfig, SyntheticSourceConfig, params_hash
from lcms.grid import Tile
from lcms.sentinel2 import L1C_BANDS
from lcms.store import DoneRecord, TileStore
from tasks.synthetic import SyntheticScene

log = logging.getLogger(__name__)

STAGE = "download"


def download_params_hash(cfg: DownloadConfig, tile: Tile, year: int) -> str:
    """What the tile's download output depends on: the source settings, the tile's grid and the year.

    The block size is left out: it changes how the tile is produced, not what is produced.
    """
    return params_hash(cfg.source, tile.grid.to_attrs(), year)


def synthetic_scene(source: SyntheticSourceConfig) -> SyntheticScene:
    return SyntheticScene(**source.model_dump(exclude={"kind"}))


def download_tile(store: TileStore, tile: Tile, year: int, cfg: DownloadConfig) -> DoneRecord:
    """Produce and store one tile-year, block by block; the tile is marked done only at the end."""
    scene = synthetic_scene(cfg.source)
    dates = scene.acquisition_dates(year)
    coords = {"time": dates, "band": np.array(L1C_BANDS)}
    attrs = {"source": cfg.source.kind, "processing_level": "L1C"}
    with store.writer(STAGE, year, tile.tile_id, tile.grid, download_params_hash(cfg, tile, year), coords, attrs) as w:
        coverage = np.zeros(len(dates), dtype=np.int64)
        for region, block_grid in tile.grid.blocks(cfg.block_size):
            block = scene.render(block_grid, year, dates)
            w.write("bands", block.bands, region)
            w.write("data_mask", block.data_mask, region)
            coverage += block.data_mask.sum(axis=(1, 2))
        if not len(dates):
            log.warning("tile %s has no acquisitions in %s", tile.tile_id, year)
        data_fraction = (coverage / (tile.grid.height * tile.grid.width)).round(4).tolist()
        return w.commit(extra={"n_dates": len(dates), "data_fraction": data_fraction})
