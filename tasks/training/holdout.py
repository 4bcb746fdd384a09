"""Training stage, validation on every labelled pixel of the held-out area, not only the sampled ones.

Plain functions, no Prefect. The merged dataset's test split holds the *sampled* pixels of the
held-out area, drawn from the reference stage's eroded labels (`labels_eroded`): class borders,
where maps go wrong most, are left out, and so are thin classes. A map is used on every pixel, so
the training stage also scores the model on every labelled pixel (the reference stage's
un-eroded `labels`) of the held-out area, reading their features from the features stage.

The held-out area of a tile-year follows the merge stage's split method:

- ``tile``: the whole core of every tile whose samples went to test;
- ``halves``: the east half (``col >= width // 2``) of every tile, as `split_halves` cuts it;
- ``blocks``: every ``block_px`` block of a tile that holds test samples (a block without any
  sample has no split and is left out).

Only the tile's core is scored (the buffer belongs to the neighbours), only pixels with at least
one valid observation (features' `no_valid` is False) and a class the model learnt. Pixels that
are training or validation samples are never scored, whatever the method. Each pixel also says
whether it is *interior* (it keeps its class after a 1-px erosion of the reference), so that the
figures of the interior pixels, those an eroded test sample holds, can be given beside, whatever
erosion the reference stage used for sampling.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from lcms.layout import SPLIT_CODES
from lcms.legend import NO_DATA
from lcms.store import TileStore
from tasks.reference.polygons import erode_labels
from tasks.sampling.tile import read_sample_features

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HeldOutPixels:
    """Every labelled pixel of the held-out area: features (n, columns) as stored, labels (n,), and counts.

    X keeps the features stage's dtype (int16 × 10000 with fill, or float32): half the memory of
    float32; predict it through `StoredRows`, which decodes it block by block.
    """

    X: np.ndarray
    y: np.ndarray
    interior: np.ndarray  # (n,) bool: the pixel keeps its class after a 1-px erosion of the reference
    n_labelled: int  # labelled, observed pixels of the held-out area with a class the model learnt
    n_scored: int  # after the optional random cap
    unseen: dict[int, int]  # labelled pixels of classes the model never learnt: not scored


def held_out_area(
    method: str,
    shape: tuple[int, int],
    rows: np.ndarray,
    cols: np.ndarray,
    split: np.ndarray,
    block_px: int | None = None,
) -> np.ndarray:
    """(y, x) bool: the held-out area of one tile, from its samples (rows, cols, split codes) and the method."""
    height, width = shape
    area = np.zeros(shape, dtype=bool)
    test = split == SPLIT_CODES["test"]
    if method == "halves":
        area[:, width // 2 :] = True
    elif method == "tile":
        if test.any():
            area[:] = True
    elif method == "blocks":
        if not block_px:
            raise ValueError("the blocks split needs block_px")
        for r, c in {(int(r) // block_px, int(c) // block_px) for r, c in zip(rows[test], cols[test], strict=True)}:
            area[r * block_px : (r + 1) * block_px, c * block_px : (c + 1) * block_px] = True
    else:
        raise ValueError(f"unknown split method {method!r}")
    # Never score a pixel the model learnt from or stopped on, whatever the method.
    learnt = ~test
    area[rows[learnt], cols[learnt]] = False
    return area


def core_windows(store: TileStore, tile_ids: list[str]) -> dict[str, tuple[slice, slice]]:
    """Each tile's core window from the store's grid; tiles of a store without a grid (benchmarks) are all core."""
    if store.grid_params_hash() is None:
        return {}
    grid = store.read_grid()
    return {t: grid[t].core_window for t in tile_ids if t in set(grid.tile_ids)}


def held_out_pixels(
    store: TileStore,
    merged,
    classes: list[int],
    max_pixels: int | None = None,
    seed: int = 0,
) -> HeldOutPixels:
    """Features and un-eroded labels of every labelled pixel of the held-out area of the merged dataset.

    `merged` is the merge stage's reader; the reference and features stages' tiles are read from
    `store`. With more than `max_pixels` such pixels, a uniform random subset of that size
    (seeded) is scored.
    """
    tile_ids = list(merged.attrs["tile_ids"])
    method = merged.attrs["split_method"]
    block_px = merged.attrs.get("block_px")
    n_columns = len(merged.coord("column"))
    tile = merged.read("tile")
    year = merged.read("year")
    rows, cols, split = merged.read("row"), merged.read("col"), merged.read("split")
    cores = core_windows(store, tile_ids)

    # First pass: the scored pixels of every tile-year (indices, labels, interior flags: small).
    found, unseen = [], {}
    for t_index, tile_id in enumerate(tile_ids):
        of_tile = tile == t_index
        for yr in np.unique(year[of_tile]).tolist():
            # A tile's split does not depend on the year (tile and block splits key on the tile only).
            no_valid = store.open_tile("features", yr, tile_id).read("no_valid")
            labels = store.open_tile("reference", yr, tile_id).read("labels")
            area = held_out_area(method, labels.shape, rows[of_tile], cols[of_tile], split[of_tile], block_px)
            core = np.zeros(labels.shape, dtype=bool)
            core[cores.get(tile_id, (slice(None), slice(None)))] = True
            scored = area & core & (labels != NO_DATA) & ~no_valid
            known = np.isin(labels, classes)
            for c, n in zip(*np.unique(labels[scored & ~known], return_counts=True), strict=True):
                unseen[int(c)] = unseen.get(int(c), 0) + int(n)
            pixels = np.flatnonzero((scored & known).reshape(-1))
            if pixels.size:
                y = labels.reshape(-1)[pixels].astype(np.int64)
                inside = erode_labels(labels, 1).reshape(-1)[pixels] != NO_DATA
                found.append((tile_id, yr, labels.shape[1], pixels, y, inside))
    n = sum(len(f[3]) for f in found)
    if n == 0:
        empty = np.empty(0, np.int64)
        return HeldOutPixels(np.empty((0, n_columns), np.float32), empty, empty.astype(bool), 0, 0, unseen)
    # A random subset, drawn before any feature is read, when there are too many.
    keep = np.ones(n, dtype=bool)
    if max_pixels is not None and n > max_pixels:
        keep[:] = False
        keep[np.random.default_rng(seed).choice(n, size=max_pixels, replace=False)] = True
    # Second pass: the features of the kept pixels, one tile-year at a time.
    Xs, ys, inner, start = [], [], [], 0
    for tile_id, yr, width, pixels, y, inside in found:
        kept = keep[start : start + len(pixels)]
        start += len(pixels)
        if kept.any():
            features = store.open_tile("features", yr, tile_id)
            Xs.append(read_sample_features(features, pixels[kept], width, n_columns))
            ys.append(y[kept])
            inner.append(inside[kept])
    X, y, interior = np.concatenate(Xs), np.concatenate(ys), np.concatenate(inner)
    log.info("held-out area: %d labelled pixels, %d scored", n, len(y))
    return HeldOutPixels(X, y, interior, n, len(y), unseen)
