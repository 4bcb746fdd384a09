"""Sampling stage, tile level: labelled pixels of one tile-year and their features, as rows.

Plain functions, no Prefect: the flow in flows/sampling.py wraps them. Per tile and year:

1. eligible pixels: labelled in the reference stage's eroded labels, with at least one valid
   observation (features' `no_valid` is False), inside the tile's core (the buffer overlaps the
   neighbours, whose own samples cover it);
2. `tasks.sampling.sample_pixels` picks them (seeded per tile and year);
3. their features are read block by block (only blocks holding samples) and stored as rows
   (sample × date·feature), in the features' own dtype, with label, row and column.
"""

from __future__ import annotations

import hashlib

import numpy as np

from lcms.config import SamplingConfig, params_hash
from lcms.grid import Tile
from lcms.legend import NO_DATA
from lcms.store import DoneRecord, TileStore
from tasks.sampling.samples import feature_columns, sample_pixels

STAGE = "sampling"
INPUT_STAGES = ("features", "reference")
# Rows of the features read at a time: whole 256-px chunk rows keep reads aligned to chunks.
READ_ROWS = 256


def tile_seed(seed: int, tile_id: str, year: int) -> int:
    """A seed of its own for each tile-year, so that tiles do not all sample the same pattern."""
    digest = hashlib.sha256(f"{seed}/{tile_id}/{year}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def sampling_params_hash(cfg: SamplingConfig, tile: Tile, year: int, input_hashes: dict[str, str]) -> str:
    return params_hash(cfg, tile.grid.to_attrs(), year, input_hashes)


def input_hashes(store: TileStore, tile_id: str, year: int) -> dict[str, str]:
    """The params hashes of the features and reference this tile-year's samples are made from."""
    return {stage: store.require_done(stage, year, tile_id).params_hash for stage in INPUT_STAGES}


def sampling_tile_hash(store: TileStore, tile: Tile, year: int, cfg: SamplingConfig) -> str:
    """Includes the features and reference it reads: redoing either makes the samples stale."""
    return sampling_params_hash(cfg, tile, year, input_hashes(store, tile.tile_id, year))


def eligible_mask(labels: np.ndarray, no_valid: np.ndarray, tile: Tile) -> np.ndarray:
    """True where a pixel may be sampled: labelled, observed at least once, inside the tile's core."""
    inside = np.zeros(labels.shape, dtype=bool)
    inside[tile.core_window] = True
    return (labels != NO_DATA) & ~no_valid & inside


def sampling_tile(store: TileStore, tile: Tile, year: int, cfg: SamplingConfig) -> DoneRecord:
    """Sample one tile-year and store the samples; a tile without labelled pixels stores none."""
    features = store.open_tile("features", year, tile.tile_id)
    reference = store.open_tile("reference", year, tile.tile_id)
    labels = reference.read("labels_eroded")
    eligible = eligible_mask(labels, features.read("no_valid"), tile)
    n_eligible = int(eligible.sum())

    if n_eligible == 0:
        pixels = np.empty(0, dtype=np.int64)
    elif cfg.count is not None:
        pixels = sample_pixels(
            labels,
            count=min(cfg.count, n_eligible),
            stratified=cfg.stratified,
            max_per_class=cfg.max_per_class,
            exclude=~eligible,
            seed=tile_seed(cfg.seed, tile.tile_id, year),
        )
    else:
        pixels = sample_pixels(
            labels,
            fraction=cfg.fraction,
            stratified=cfg.stratified,
            max_per_class=cfg.max_per_class,
            exclude=~eligible,
            seed=tile_seed(cfg.seed, tile.tile_id, year),
        )

    dates = features.coord("time")
    names = list(features.coord("feature"))
    columns = feature_columns(dates, names)
    dtype = str(features.group["features"].dtype)
    X = read_sample_features(features, pixels, tile.grid.width, len(columns))
    rows, cols = np.divmod(pixels, tile.grid.width)
    y = labels.reshape(-1)[pixels]

    classes, counts = np.unique(y, return_counts=True)
    per_class = {str(int(c)): int(n) for c, n in zip(classes, counts, strict=True)}
    tile_hash = sampling_params_hash(cfg, tile, year, input_hashes(store, tile.tile_id, year))
    coords = {"sample": np.arange(len(pixels), dtype=np.int64), "column": np.array(columns)}
    attrs = {"features": names, "n_eligible": n_eligible, "per_class": per_class, "legend": reference.attrs["legend"]}
    with store.writer(STAGE, year, tile.tile_id, tile.grid, tile_hash, coords, attrs, {"features": dtype}) as writer:
        writer.write("features", X)
        writer.write("label", y.astype(np.uint8))
        writer.write("row", rows.astype(np.int32))
        writer.write("col", cols.astype(np.int32))
        return writer.commit(extra={"n_samples": int(len(pixels)), "n_eligible": n_eligible, "per_class": per_class})


def read_sample_features(features, pixels: np.ndarray, width: int, n_columns: int) -> np.ndarray:
    """Rows of features (n, dates × features, date-major) at flat pixel indices, read by row bands.

    Only bands of READ_ROWS rows that hold samples are read, so a sparse sample of a large tile
    reads a fraction of it and memory stays at one band of the features.
    """
    dtype = features.group["features"].dtype
    out = np.empty((len(pixels), n_columns), dtype=dtype)
    rows = pixels // width
    for start in np.unique(rows // READ_ROWS) * READ_ROWS:
        in_band = np.flatnonzero((rows >= start) & (rows < start + READ_ROWS))
        block = features.read("features", (slice(start, start + READ_ROWS), slice(None)))  # (t, r, x, f)
        local = pixels[in_band] - start * width
        t, r, w, f = block.shape
        picked = block.reshape(t, r * w, f)[:, local, :]  # (t, n, f)
        out[in_band] = picked.transpose(1, 0, 2).reshape(len(in_band), t * f)
    return out
