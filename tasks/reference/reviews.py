"""Operators' reviewed changes as reference data (`reference.reviews: true`).

Operators decide on the change polygons in the Validation Tool (`lcms serve`, lcms/serve/reviews.py).
Each decided change says what the place was in the change's later year (``year_to``):

* **confirmed**: the detected class after (``class_to`` of the change layer);
* **corrected**: the class after the operator gave, over the outline they drew (else the polygon's own);
* **rejected**: nothing changed, so the place kept the detected class before (``class_from``);
* **not sure**, in conflict or unreviewed: nothing.

Why read the service's database rather than an exported GeoPackage: the database is the one place
the decisions live (append-only, with reviewers and times), so a decision made after the last export
is not missed, no one has to remember to export, and the decisions' version (the count and the latest
decision id and time, `lcms.serve.db.reviews_version`) goes into each reference tile's hash: a new
decision makes the reference stale on the next run. The database is the one `lcms serve` uses for the
same config (`serve.database`, `serve.database_path`; the SQLite file under a local store by default).
The outlines of changes that were not redrawn come from the store's current change layer
(``change-polygons/<product>/<from>-<to>/changes.gpkg``); a reviewed change that is no longer in it
(orphaned by a rerun of the change stage) and was not redrawn has no outline left, and is skipped with a
warning.

On a tile, the reviewed polygons are burnt over the base reference, oldest decision first, so where they
overlap the newer decision wins, and where a review and the base reference disagree the review wins (a
decision on this year's map is newer than the base reference). `overlay_reviews` counts the base pixels
it changed; the tile's done mark keeps that count and each polygon's provenance (change id, decision,
class, reviewer, decision id and time), and the report sums the counts.

Reviewed polygons were chosen by the change detector and by operators, not by a probability sample:
they are training data only, never an accuracy estimate's sample. Their provenance says ``source: review``
(the base reference's pixels are ``source: base``).
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

import geopandas as gpd
import numpy as np
import shapely
from rasterio import features

from lcms.config import ChangeConfig, ReferenceConfig, ReviewsDatabaseConfig
from lcms.geometry import PixelGrid
from lcms.legend import NO_DATA
from lcms.stages import change_key
from lcms.store import TileStore

log = logging.getLogger(__name__)

LAYER_STAGE = "change-polygons"  # the store's change layer (tasks/change/polygons.py)
SOURCE_BASE = "base"
SOURCE_REVIEW = "review"
USED = ("confirmed", "corrected", "rejected")
CRS84 = "EPSG:4326"


def open_reviews_database(where: ReviewsDatabaseConfig, store: TileStore):
    """The service database holding the reviews, or None when the embedded one was never made (no reviews yet)."""
    from lcms.serve.db import PostgisDatabase, SqliteDatabase

    if where.database == "postgis":
        from flows.change import postgis_dsn

        postgis = where.postgis
        return PostgisDatabase(postgis_dsn(ChangeConfig().model_copy(update={"postgis": postgis})), postgis)
    path = where.database_path or store.serve_database_path()
    if not Path(path).is_file():
        return None
    return SqliteDatabase(path)


def _read_reviews(cfg: ReferenceConfig, store: TileStore, year: int) -> tuple[dict, list[dict]]:
    """The reviews' version for `year` (decisions and change layers) and the decided changes ending in it."""
    from lcms.serve.db import reviewed_changes, reviews_version

    where = cfg.reviews_database or ReviewsDatabaseConfig()
    db = open_reviews_database(where, store)
    if db is None:
        return {"decisions": 0, "last_id": None, "last_at": None, "layers": {}}, []
    try:
        with db.transaction(write=False) as conn:
            version = reviews_version(conn, store.product, year)
            rows = reviewed_changes(conn, store.product, year)
    finally:
        db.close()
    layers = {}
    for year_from in sorted({int(r["year_from"]) for r in rows}):
        record = store.product_record(LAYER_STAGE, change_key(year_from, year))
        layers[change_key(year_from, year)] = record.attempt if record is not None else None
    return {**version, "layers": layers}, rows


def reviews_version(cfg: ReferenceConfig, store: TileStore, year: int) -> dict:
    """What the reviewed data of `year` is at: decisions count, latest decision id and time, change layers read."""
    return _read_reviews(cfg, store, year)[0]


def _layer(store: TileStore, years: tuple[int, int]) -> gpd.GeoDataFrame | None:
    from tasks.change.polygons import read_change_layer

    if store.product_record(LAYER_STAGE, change_key(*years)) is None:
        return None
    layer = read_change_layer(store, years)
    return layer.to_crs(CRS84).set_index("change_id")


def reviewed_polygons(cfg: ReferenceConfig, store: TileStore, year: int) -> tuple[gpd.GeoDataFrame, dict]:
    """The decided changes ending in `year` as reference polygons in CRS84, oldest decision first, and the
    reviews' version they are (`reviews_version`).

    Columns: ``class_code`` (the class the place had in `year`), ``change_id``, ``decision``, ``reviewer`` (of
    the decision that counts), ``reviewers`` (all), ``decision_id``, ``decided_at``, ``year_from``, ``year_to``,
    ``geometry_edited`` and ``source`` (= ``review``).
    """
    version, rows = _read_reviews(cfg, store, year)
    key = (store.url, store.product, year, json.dumps(version, sort_keys=True, default=str))
    with _CACHE_LOCK:
        found = _CACHE.get(key)
    if found is None:  # once per version and process, not once per tile
        found = _build_polygons(store, rows)
        with _CACHE_LOCK:
            while len(_CACHE) >= 8:
                _CACHE.pop(next(iter(_CACHE)))
            _CACHE[key] = found
    return found, version


_CACHE: dict[tuple, gpd.GeoDataFrame] = {}
_CACHE_LOCK = threading.Lock()


def _build_polygons(store: TileStore, rows: list[dict]) -> gpd.GeoDataFrame:
    layers: dict[tuple[int, int], gpd.GeoDataFrame | None] = {}
    records, geometries, skipped = [], [], []
    for row in rows:
        years = (int(row["year_from"]), int(row["year_to"]))
        if years not in layers:
            layers[years] = _layer(store, years)
        layer = layers[years]
        detected = layer.loc[row["change_id"]] if layer is not None and row["change_id"] in layer.index else None
        edited = row["geometry"] if row["status"] == "corrected" else None
        if row["status"] == "corrected":
            code = row["class_to"]
        elif detected is not None:
            code = detected["class_to"] if row["status"] == "confirmed" else detected["class_from"]
        else:
            code = None
        if edited:
            geometry = shapely.from_geojson(edited)
        elif detected is not None:
            geometry = detected.geometry
        else:
            geometry = None
        if code is None or geometry is None:
            skipped.append(row["change_id"])
            continue
        records.append(
            {
                "class_code": int(code),
                "change_id": row["change_id"],
                "decision": row["status"],
                "reviewer": row["reviewer"],
                "reviewers": row["reviewers"] or "",
                "decision_id": int(row["decision_id"]),
                "decided_at": row["decided_at"],
                "year_from": years[0],
                "year_to": years[1],
                "geometry_edited": bool(edited),
                "source": SOURCE_REVIEW,
            }
        )
        geometries.append(geometry)
    if skipped:
        log.warning(
            "%d reviewed changes have no outline left (gone from the change layer and not redrawn), skipped: %s",
            len(skipped),
            ", ".join(skipped[:10]) + (" ..." if len(skipped) > 10 else ""),
        )
    columns = ["class_code", "change_id", "decision", "reviewer", "reviewers", "decision_id", "decided_at"]
    columns += ["year_from", "year_to", "geometry_edited", "source"]
    frame = gpd.GeoDataFrame(records, columns=columns, geometry=gpd.GeoSeries(geometries, crs=CRS84), crs=CRS84)
    return frame.sort_values("decision_id", kind="stable").reset_index(drop=True)


def rasterize_reviews(reviews: gpd.GeoDataFrame, grid: PixelGrid) -> np.ndarray:
    """int32 (y, x): 1 + the row of `reviews` whose polygon covers each pixel centre (0: none); later rows
    (newer decisions) are drawn over earlier ones."""
    if reviews.empty:
        return np.zeros(grid.shape, dtype=np.int32)
    on_grid = reviews.geometry.to_crs(grid.crs)
    minx, miny, maxx, maxy = grid.bounds
    clipped = shapely.clip_by_rect(on_grid.values, minx, miny, maxx, maxy)
    shapes = [(g, i + 1) for i, g in enumerate(clipped) if not shapely.is_empty(g)]
    if not shapes:
        return np.zeros(grid.shape, dtype=np.int32)
    return features.rasterize(shapes, out_shape=grid.shape, transform=grid.affine, fill=0, dtype="int32")


def overlay_reviews(base: np.ndarray, index: np.ndarray, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The base labels with the reviewed classes over them, and where a review changed a base label.

    `base`: uint8 (y, x) labels of the base reference (0 = none); `index`: 1 + the review covering each pixel
    (0 = none), from `rasterize_reviews`; `codes`: each review's class. Returns (labels, changed): a reviewed
    pixel takes its review's class; `changed` is True where the base reference had another class there.
    """
    reviewed = index > 0
    review_class = np.zeros(base.shape, dtype=np.uint8)
    review_class[reviewed] = np.asarray(codes, dtype=np.uint8)[index[reviewed] - 1]
    labels = np.where(reviewed, review_class, base).astype(np.uint8)
    changed = reviewed & (base != NO_DATA) & (base != review_class)
    return labels, changed


def provenance(reviews: gpd.GeoDataFrame, index: np.ndarray, changed: np.ndarray) -> list[dict]:
    """One record per review that labels pixels of the tile: its provenance, pixels and changed base pixels."""
    rows = np.flatnonzero(np.bincount(index.ravel(), minlength=len(reviews) + 1)[1:])
    pixels = np.bincount(index.ravel(), minlength=len(reviews) + 1)
    changed_by = np.bincount(index[changed], minlength=len(reviews) + 1)
    keep = ["change_id", "decision", "class_code", "reviewer", "reviewers", "decision_id", "decided_at"]
    keep += ["year_from", "year_to", "geometry_edited", "source"]
    out = []
    for i in rows:
        record = {k: _plain(reviews.iloc[i][k]) for k in keep}
        out.append({**record, "pixels": int(pixels[i + 1]), "changed_base_pixels": int(changed_by[i + 1])})
    return out


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value
