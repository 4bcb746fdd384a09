"""Change stage, tile level: two years' maps of a tile compared, stored as status, polygons and their table.

Plain functions, no Prefect: flows/change.py runs `change_tile` per tile. The array work is in
tasks/change/detect.py; this module reads the inputs from the store, checks that the two years can be
compared (same grid, same legend), and writes the `change` stage under the key '<from>-<to>'.
The polygons' outlines are not stored as vectors here: the `polygon` array holds them exactly,
and tasks/change/polygons.py turns them into geometries for the GeoPackage and PostGIS.
"""

from __future__ import annotations

import math

import numpy as np

from lcms.config import ChangeConfig, params_hash
from lcms.grid import Tile
from lcms.stages import change_key
from lcms.store import DoneRecord, StoreError, TileReader, TileStore
from tasks.change.detect import ChangeParameters, change_scores, detect_changes, polygon_ids, series_difference
from tasks.features.tile import unpack

STAGE = "change"


class ChangeError(ValueError):
    """Two years' maps that cannot be compared (other grids or legends), or a feature to rank by that is missing."""


def change_params_hash(cfg: ChangeConfig, tile: Tile, year_from: int, year_to: int, input_hashes: list[str]) -> str:
    # The output CRS and PostGIS target do not change the tile's arrays.
    tile_cfg = cfg.model_dump(mode="json", exclude={"crs", "postgis", "years"})
    return params_hash(tile_cfg, tile.grid.to_attrs(), year_from, year_to, input_hashes)


def input_stages(cfg: ChangeConfig) -> tuple[str, ...]:
    """Stages the change stage reads: the labels' stage, and the prediction for the confidence."""
    return tuple(dict.fromkeys((cfg.source, "prediction")))


def input_hashes(store: TileStore, cfg: ChangeConfig, tile_id: str, years: tuple[int, int]) -> list[str] | None:
    """The params hashes of every input tile, or None when one is missing."""
    hashes = []
    for year in years:
        for stage in input_stages(cfg):
            record = store.done_record(stage, year, tile_id)
            if record is None:
                return None
            hashes.append(record.params_hash)
    return hashes


def change_tile_hash(store: TileStore, tile: Tile, years: tuple[int, int], cfg: ChangeConfig) -> str:
    """Includes both years' maps: a redone map of either year makes the tile's changes stale."""
    hashes = input_hashes(store, cfg, tile.tile_id, years)
    if hashes is None:
        raise StoreError(f"tile {tile.tile_id} lacks a finished {input_stages(cfg)} output for {list(years)}")
    return change_params_hash(cfg, tile, *years, hashes)


def min_pixels(cfg: ChangeConfig, tile: Tile) -> int:
    return max(1, math.ceil(cfg.min_area_m2 / tile.grid.resolution**2 - 1e-9))


def check_comparable(tile: Tile, years: tuple[int, int], readers: dict[int, TileReader]) -> list[dict]:
    """The legend both years share; ChangeError if their grids or legends differ."""
    for year, reader in readers.items():
        if reader.grid != tile.grid:
            raise ChangeError(
                f"tile {tile.tile_id}: the {year} map is on grid {reader.grid}, not the tile's {tile.grid}. "
                "Maps of both years must come from the same store grid; rerun prediction for that year."
            )
    legend_from, legend_to = (readers[y].attrs.get("legend") for y in years)
    if legend_from != legend_to:
        names_from = [(c["code"], c["name"]) for c in legend_from or []]
        names_to = [(c["code"], c["name"]) for c in legend_to or []]
        raise ChangeError(
            f"tile {tile.tile_id}: the maps of {years[0]} and {years[1]} have different legends "
            f"({names_from} vs {names_to}); compare maps of models with the same classes"
        )
    return legend_from or []


def feature_difference(store: TileStore, tile: Tile, years: tuple[int, int], feature: str) -> np.ndarray:
    """RMS difference of one feature's series between the two years, per pixel, read block by block."""
    readers = [store.open_tile("features", year, tile.tile_id) for year in years]
    for year, reader in zip(years, readers, strict=True):
        if feature not in list(reader.coord("feature")):
            raise ChangeError(
                f"tile {tile.tile_id}/{year} has no feature {feature!r} to rank changes by; "
                f"it has {list(reader.coord('feature'))}. Set change.ranking_feature to one of them or null."
            )
    index = [[list(r.coord("feature")).index(feature)] for r in readers]
    difference = np.full(tile.grid.shape, np.nan, dtype=np.float32)
    for region, _ in tile.grid.blocks(256):
        series = [
            unpack(r.read("features", region, {"feature": i}))[..., 0] for r, i in zip(readers, index, strict=True)
        ]
        difference[region] = series_difference(*series)
    return difference


def change_tile(
    store: TileStore, tile: Tile, years: tuple[int, int], cfg: ChangeConfig, tile_hash: str | None = None
) -> DoneRecord:
    """Compare one tile's maps of two years and store the result under the key '<from>-<to>'."""
    tile_hash = tile_hash or change_tile_hash(store, tile, years, cfg)
    year_from, year_to = years
    labels = {y: store.open_tile(cfg.source, y, tile.tile_id) for y in years}
    legend = check_comparable(tile, years, labels)
    predictions = {y: store.open_tile("prediction", y, tile.tile_id) for y in years}
    check_comparable(tile, years, predictions)
    params = ChangeParameters(cfg.min_confidence, min_pixels(cfg, tile), cfg.opening_radius_px, cfg.connectivity)
    changes = detect_changes(
        labels[year_from].read("labels"),
        labels[year_to].read("labels"),
        predictions[year_from].read("confidence"),
        predictions[year_to].read("confidence"),
        params,
        core=tile.core_window,
    )
    if cfg.ranking_feature is not None and changes.count:
        scores = change_scores(feature_difference(store, tile, years, cfg.ranking_feature), changes)
    else:
        scores = np.full(changes.count, np.nan, dtype=np.float32)
    ids = polygon_ids(tile.tile_id, year_from, year_to, changes.polygon)
    attrs = {
        "year_from": year_from,
        "year_to": year_to,
        "source": cfg.source,
        "legend": legend,
        "min_pixels": params.min_pixels,
        "ranking_feature": cfg.ranking_feature,
    }
    key = change_key(year_from, year_to)
    with store.writer(STAGE, key, tile.tile_id, tile.grid, tile_hash, {"change_id": ids}, attrs) as writer:
        writer.write("status", changes.status)
        writer.write("polygon", changes.polygon)
        writer.write("class_from", changes.class_from)
        writer.write("class_to", changes.class_to)
        writer.write("pixels", changes.pixels)
        writer.write("area_m2", changes.pixels * tile.grid.resolution**2)
        writer.write("confidence_from", changes.confidence_from)
        writer.write("confidence_to", changes.confidence_to)
        writer.write("score", scores)
        return writer.commit(
            extra={"polygons": changes.count, "change_m2": float(changes.pixels.sum() * tile.grid.resolution**2)}
        )
