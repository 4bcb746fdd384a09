"""Reference stage, tile level: ground-truth polygons rasterised onto a tile, then eroded.

Plain functions, no Prefect: the flow in flows/reference.py wraps them. The polygons are
read once per process (cached by path and settings), not once per tile.
"""

from __future__ import annotations

import contextlib
import functools
import json

import fsspec
import geopandas as gpd

from lcms import lineage
from lcms.config import ReferenceConfig, params_hash
from lcms.grid import Tile
from lcms.legend import LULC_LEGEND, LegendClass
from lcms.store import DoneRecord, TileStore, s3_storage_options
from tasks.reference import labels as active_labels
from tasks.reference import reviews
from tasks.reference.polygons import erode_labels, load_reference, rasterize_reference

STAGE = "reference"


def legend_of(cfg: ReferenceConfig) -> tuple[LegendClass, ...]:
    if cfg.legend is None:
        return LULC_LEGEND
    return (LULC_LEGEND[0], *(LegendClass(e.code, e.name, e.color) for e in cfg.legend))


def reference_version(cfg: ReferenceConfig, storage_options: dict | None = None) -> dict:
    """Size and modification time of the reference file: a changed file makes tiles stale."""
    fs, path = fsspec.core.url_to_fs(cfg.path, **s3_storage_options(cfg.path, storage_options))  # S3 timeouts
    info = fs.info(path)
    return {
        "size": info.get("size"),
        "mtime": str(info.get("mtime") or info.get("LastModified") or info.get("created")),
    }


def reference_params_hash(cfg: ReferenceConfig, tile: Tile, year: int, version: dict) -> str:
    return params_hash(cfg, tile.grid.to_attrs(), year, version)


def reference_tile_hash(store: TileStore, tile: Tile, year: int, cfg: ReferenceConfig) -> str:
    """Includes the reference file's version, so an edited file makes the labels stale, and with
    `reviews` the reviews' version (tasks/reference/reviews.py), so a new decision does too."""
    cfg = cfg.for_year(year)  # the year's own file when the reference differs per year
    return reference_params_hash(cfg, tile, year, _version(cfg, store, year))


def _version(cfg: ReferenceConfig, store: TileStore, year: int) -> dict:
    version = reference_version(cfg, store.storage_options)
    if cfg.reviews:
        version = {**version, "reviews": reviews.reviews_version(cfg, store, year)}
    if cfg.active_labels:
        version = {**version, "active_labels": active_labels.labels_version(cfg, store, year)}
    return version


@functools.lru_cache(maxsize=4)
def _load_cached(cfg_json: str, options_json: str) -> gpd.GeoDataFrame:
    cfg = ReferenceConfig.model_validate_json(cfg_json)
    mapping = dict(cfg.mapping) if cfg.mapping else None
    return load_reference(cfg.path, cfg.class_column, legend_of(cfg), mapping, json.loads(options_json) or None)


def reference_polygons(cfg: ReferenceConfig, storage_options: dict | None = None) -> gpd.GeoDataFrame:
    """The reference polygons as `load_reference` returns them, read once per process."""
    return _load_cached(cfg.model_dump_json(), json.dumps(storage_options or {}, sort_keys=True))


def reference_tile(
    store: TileStore, tile: Tile, year: int, cfg: ReferenceConfig, version: dict | None = None
) -> DoneRecord:
    """Rasterise and erode the reference on one tile; a tile outside the reference gets all no data.

    With a reference per year (`reference.paths`, or '{year}' in `reference.path`), `year`'s file.
    With `reviews`, operators' reviewed changes ending in `year` are burnt over the base reference
    before the erosion (tasks/reference/reviews.py); the done mark keeps their provenance, how many base
    pixels they changed, and the reviews' version in its lineage inputs.
    """
    cfg = cfg.for_year(year)
    version = version if version is not None else _version(cfg, store, year)
    polygons = reference_polygons(cfg, store.storage_options)
    base = rasterize_reference(polygons, tile.grid)
    extra: dict = {}
    labels = base
    if cfg.reviews:
        decided, seen = reviews.reviewed_polygons(cfg, store, year)
        version = {**version, "reviews": seen}  # what was read, should a decision have come since the hash
        index = reviews.rasterize_reviews(decided, tile.grid)
        labels, changed = reviews.overlay_reviews(base, index, decided["class_code"].to_numpy())
        extra["sources"] = {
            reviews.SOURCE_BASE: int(((base > 0) & (index == 0)).sum()),
            reviews.SOURCE_REVIEW: int((index > 0).sum()),
        }
        extra["reviews"] = {
            "version": version.get("reviews"),
            "changed_base_pixels": int(changed.sum()),
            "provenance": reviews.provenance(decided, index, changed),
        }
    if cfg.active_labels:  # labelled units of "label next" queues, over the base and the reviews
        units, seen = active_labels.labelled_units(cfg, store, year)
        version = {**version, "active_labels": seen}
        index = reviews.rasterize_reviews(units, tile.grid)
        labels, changed = reviews.overlay_reviews(labels, index, units["class_code"].to_numpy())
        extra.setdefault("sources", {})[active_labels.SOURCE_ACTIVE] = int((index > 0).sum())
        extra["active_labels"] = {
            "version": seen,
            "changed_pixels": int(changed.sum()),
            "provenance": active_labels.provenance(units, index, changed),
        }
    eroded = erode_labels(labels, cfg.erosion_px) if cfg.erosion_px else labels.copy()
    tile_hash = reference_params_hash(cfg, tile, year, version)
    attrs = {"legend": [c.__dict__ for c in legend_of(cfg)], "source": cfg.path}
    if cfg.reviews:
        attrs["reviews"] = "operators' reviewed changes over the base reference (done.json: extra.reviews)"
    with (
        _reviews_in_lineage(cfg, store, year, version),
        store.writer(STAGE, year, tile.tile_id, tile.grid, tile_hash, {}, attrs) as writer,
    ):
        writer.write("labels", labels)
        writer.write("labels_eroded", eroded)
        return writer.commit(
            extra={"labelled_pixels": int((labels > 0).sum()), "after_erosion": int((eroded > 0).sum()), **extra}
        )


def _reviews_in_lineage(cfg: ReferenceConfig, store: TileStore, year: int, version: dict):
    """While the tile is written, its lineage also names the reviews' version it read (`lineage.reviews`: where,
    the decisions' count, the latest decision's id and time, the change layers' attempts). Not an entry of
    `inputs`, which name done marks of the store's stages (`lcms lineage` follows them)."""
    current = lineage.current()
    if not cfg.reviews or not current:  # no reviews, or a tile function called by hand (nothing recorded)
        return contextlib.nullcontext()
    seen = version.get("reviews") or {}
    entry = {"product": store.product, "year_to": year, **seen}
    return lineage.recording({**current, "reviews": entry})
