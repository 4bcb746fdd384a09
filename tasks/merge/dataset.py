"""Merge stage: every tile-year's samples in one ML-ready dataset with a spatial split.

Plain functions, no Prefect: the flow in flows/merge.py wraps them. Two passes over the
sampling stage's output keep memory at one tile's samples:

1. labels, tile, row and column of every sample are read (small), the columns of every
   tile-year are checked to line up, and each sample gets its split (`assign_splits`);
2. the feature rows are copied tile by tile into the merged dataset.

Columns are named ``FEATURE@MM-DD`` after the first year's date grid: the same position in
every year's grid is the same column, so samples of several years train one model and the model
predicts any year with the same date grid.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from lcms.config import MergeConfig, params_hash
from lcms.layout import SPLIT_CODES
from lcms.store import DoneRecord, TileStore
from tasks.sampling.samples import split_by_blocks, split_by_tile, split_halves

log = logging.getLogger(__name__)

STAGE = "merge"
INPUT_STAGE = "sampling"


class MergeError(ValueError):
    """Samples that cannot be merged into one dataset; the message says what to change."""


@dataclass(frozen=True)
class TileSamples:
    """The small per-sample arrays of one tile-year, read in the first pass."""

    tile_id: str
    year: int
    y: np.ndarray
    row: np.ndarray
    col: np.ndarray
    columns: list[str]
    width: int
    params_hash: str
    dtype: str  # of the stored feature rows
    legend: list


def _split_column(name: str) -> tuple[str, str]:
    feature, _, date = name.rpartition("@")
    return feature, date


def canonical_columns(samples: list[TileSamples]) -> list[str]:
    """Year-free column names, after checking that every tile-year's columns line up.

    Two columns line up when they hold the same feature at the same position of the date grid,
    i.e. the same number of days after the grid's first date.
    """
    first = samples[0]
    first_dates = np.array([_split_column(c)[1] for c in first.columns], dtype="datetime64[D]")
    for s in samples[1:]:
        if len(s.columns) != len(first.columns):
            raise MergeError(
                f"tile {s.tile_id}/{s.year} has {len(s.columns)} feature columns, {first.tile_id}/{first.year} "
                f"has {len(first.columns)}: rerun the features and sampling stages with one features config"
            )
        features = [_split_column(c)[0] for c in s.columns]
        if features != [_split_column(c)[0] for c in first.columns]:
            raise MergeError(
                f"tiles {s.tile_id}/{s.year} and {first.tile_id}/{first.year} have different features; "
                "rerun the features and sampling stages with one features config"
            )
        dates = np.array([_split_column(c)[1] for c in s.columns], dtype="datetime64[D]")
        if not np.array_equal(dates - dates[0], first_dates - first_dates[0]):
            raise MergeError(
                f"tiles {s.tile_id}/{s.year} and {first.tile_id}/{first.year} have different date grids; "
                "rerun the features and sampling stages with one features.date_grid"
            )
    return [f"{_split_column(c)[0]}@{str(d)[5:]}" for c, d in zip(first.columns, first_dates, strict=True)]


def date_offsets(columns: list[str]) -> list[int]:
    """Days after the first date of each date of date-major columns ``FEATURE@YYYY-MM-DD``."""
    dates = np.array(list(dict.fromkeys(_split_column(c)[1] for c in columns)), dtype="datetime64[D]")
    return (dates - dates[0]).astype(int).tolist()


def choose_split(cfg: MergeConfig, n_tiles: int) -> str:
    if cfg.split != "auto":
        return cfg.split
    return "tile" if n_tiles >= cfg.min_tiles_for_tile_split else "blocks"


def assign_splits(
    tile_ids: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    widths: np.ndarray,
    method: str,
    cfg: MergeConfig,
    block_px: int,
) -> np.ndarray:
    """The split code (train 0, validation 1, test 2) of every sample; see MergeConfig for the methods."""
    if method == "tile":
        masks = split_by_tile(tile_ids, cfg.test_fraction, cfg.validation_fraction, cfg.seed)
    elif method == "blocks":
        masks = split_by_blocks(
            rows, cols, block_px, cfg.test_fraction, cfg.validation_fraction, cfg.seed, tile_ids=tile_ids
        )
    elif method == "halves":
        masks = {"test": np.zeros(len(rows), dtype=bool)}
        for width in np.unique(widths):  # tiles of one grid share a width; a few widths at most
            of_width = widths == width
            masks["test"][of_width] = split_halves(cols[of_width], int(width))["test"]
        # Validation: a random share of all samples, from the west halves.
        west = np.flatnonzero(~masks["test"])
        n_val = min(int(np.floor(cfg.validation_fraction * len(rows) + 0.5)), max(len(west) - 1, 0))
        masks["validation"] = np.zeros(len(rows), dtype=bool)
        masks["validation"][np.random.default_rng(cfg.seed).choice(west, size=n_val, replace=False)] = True
    else:
        raise MergeError(f"unknown split method {method!r}")
    codes = np.full(len(rows), SPLIT_CODES["train"], dtype=np.uint8)
    codes[masks["validation"]] = SPLIT_CODES["validation"]
    codes[masks["test"]] = SPLIT_CODES["test"]
    return codes


def read_tile_samples(store: TileStore, tile_ids: list[str], years: list[int], tile_widths: dict[str, int]):
    """First pass: the small arrays of every tile-year that has samples."""
    out = []
    for year in years:
        for tile_id in tile_ids:
            reader = store.open_tile(INPUT_STAGE, year, tile_id)
            y = reader.read("label")
            if len(y) == 0:
                continue
            out.append(
                TileSamples(
                    tile_id,
                    year,
                    y,
                    reader.read("row"),
                    reader.read("col"),
                    list(reader.coord("column")),
                    tile_widths[tile_id],
                    reader.record.params_hash,
                    str(reader.group["features"].dtype),
                    reader.attrs["legend"],
                )
            )
    return out


# Raised when the merged dataset's content changes, so that older datasets are redone.
MERGE_FORMAT = 2


def merge_params_hash(cfg: MergeConfig, block_px: int, inputs: dict[str, str]) -> str:
    return params_hash(cfg, block_px, inputs, MERGE_FORMAT)


def merge_block_px(config) -> int:
    """Side of the `blocks` split's squares in pixels, for a run config."""
    return max(1, round(config.merge.block_size_m / config.grid.resolution_m))


def merge_product_hash(config, store: TileStore, tiles) -> str:
    """What the merged dataset of `tiles` depends on (the merge stage's staleness rule, lcms/stages.py)."""
    inputs = sampling_inputs(store, tiles.tile_ids, config.merge_years)
    return merge_params_hash(config.merge, merge_block_px(config), inputs)


def sampling_inputs(store: TileStore, tile_ids: list[str], years: list[int]) -> dict[str, str]:
    """``"tile/year" -> params hash`` of the sampling output each merged sample comes from."""
    inputs = {}
    for year in years:
        done = store.done_tiles(INPUT_STAGE, year)
        for tile_id in tile_ids:
            if tile_id in done:
                inputs[f"{tile_id}/{year}"] = done[tile_id].params_hash
    return inputs


def merge_samples(
    store: TileStore,
    tile_ids: list[str],
    years: list[int],
    tile_widths: dict[str, int],
    cfg: MergeConfig,
    block_px: int,
) -> DoneRecord:
    """Merge the samples of the given tiles and years into the dataset of the store's product."""
    samples = read_tile_samples(store, tile_ids, years, tile_widths)
    if not samples:
        raise MergeError(
            f"none of the {len(tile_ids)} tiles has samples in {years}: check that the reference "
            "overlaps them and that the sampling stage ran"
        )
    columns = canonical_columns(samples)
    sample_tiles = sorted({s.tile_id for s in samples})
    tile_index = {t: i for i, t in enumerate(sample_tiles)}
    counts = np.array([len(s.y) for s in samples])
    tiles = np.concatenate([np.full(len(s.y), s.tile_id, dtype=object) for s in samples]).astype(str)
    rows = np.concatenate([s.row for s in samples])
    cols = np.concatenate([s.col for s in samples])
    widths = np.concatenate([np.full(len(s.y), s.width) for s in samples])
    method = choose_split(cfg, len(sample_tiles))
    try:
        split = assign_splits(tiles, rows, cols, widths, method, cfg, block_px)
    except ValueError as exc:
        raise MergeError(
            f"cannot split the samples by {method} ({exc}); choose merge.split 'blocks' or 'halves' for few tiles"
        ) from None

    n = int(counts.sum())
    dtypes = {s.dtype for s in samples}
    if len(dtypes) != 1:
        raise MergeError(f"tiles store features as {sorted(dtypes)}: rerun features and sampling with one dtype")
    inputs = {f"{s.tile_id}/{s.year}": s.params_hash for s in samples}
    split_counts = {name: int((split == code).sum()) for name, code in SPLIT_CODES.items()}
    tiles_per_split = {name: np.unique(tiles[split == code]).tolist() for name, code in SPLIT_CODES.items()}
    attrs = {
        "tile_ids": sample_tiles,
        "years": sorted({s.year for s in samples}),
        "split_method": method,
        "split_counts": split_counts,
        "block_px": block_px if method == "blocks" else None,
        "legend": samples[0].legend,
        "inputs": inputs,
        # What a tile's features must be for the model to apply: names, and days after the first date.
        "features": list(dict.fromkeys(_split_column(c)[0] for c in samples[0].columns)),
        "date_offsets_days": date_offsets(samples[0].columns),
    }
    coords = {"sample": np.arange(n, dtype=np.int64), "column": np.array(columns)}
    record_hash = merge_params_hash(cfg, block_px, sampling_inputs(store, tile_ids, years))
    with store.product_writer(STAGE, store.product, record_hash, coords, attrs, {"features": dtypes.pop()}) as writer:
        writer.write("label", np.concatenate([s.y for s in samples]).astype(np.uint8))
        writer.write("split", split)
        writer.write("tile", np.array([tile_index[t] for t in tiles], dtype=np.uint32))
        writer.write("year", np.concatenate([np.full(len(s.y), s.year, dtype=np.int16) for s in samples]))
        writer.write("row", rows.astype(np.int32))
        writer.write("col", cols.astype(np.int32))
        start = 0
        for s in samples:  # second pass: the feature rows, one tile-year at a time
            writer.write_rows("features", store.open_tile(INPUT_STAGE, s.year, s.tile_id).read("features"), start)
            start += len(s.y)
        extra = {
            "n_samples": n,
            "split_method": method,
            "split_counts": split_counts,
            "tiles_per_split": {k: len(v) for k, v in tiles_per_split.items()},
        }
        log.info("merged %d samples from %d tile-years: %s", n, len(samples), split_counts)
        return writer.commit(extra=extra)
