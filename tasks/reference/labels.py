"""Active learning's labelled units as reference data, burnt over the base reference like reviewed changes.

With `reference.active_labels`, the reference stage reads the "label next" queues (design kind ``active``,
`lcms label-next`) of the product and year from `lcms serve`'s database, and each point's latest label
(`lcms.serve.samples.labelled_records`). A labelled unit's outline comes from the queue's own store file
(``label-next/<product>/<design id>/units.geojson``, tasks/active/queue.py), else from the database's
``unit`` column. Units are drawn oldest label first, so where units overlap the newest label wins; they
are drawn after the reviewed changes (tasks/reference/reviews.py), over the base reference.

`labels_version` (queues, labelled units, the latest label's time) enters the tile's hash: a new or
changed label makes the reference stale, so the plan runs the stage again.
"""

from __future__ import annotations

import logging

import geopandas as gpd
import numpy as np
import shapely

from lcms.config import ReferenceConfig, ReviewsDatabaseConfig
from lcms.store import StoreError, TileStore

log = logging.getLogger(__name__)

SOURCE_ACTIVE = "active"
CRS84 = "EPSG:4326"
_COLUMNS = ["class_code", "design_id", "sample_id", "reviewer", "labelled_at", "source"]


def _read_labels(cfg: ReferenceConfig, store: TileStore, year: int) -> tuple[dict, list[dict]]:
    from lcms.serve.samples import labelled_records
    from tasks.active.queue import active_designs
    from tasks.reference.reviews import open_reviews_database

    db = open_reviews_database(cfg.reviews_database or ReviewsDatabaseConfig(), store)
    if db is None:
        return {"queues": 0, "labelled_units": 0, "last_at": None}, []
    try:
        designs = active_designs(db, store.product, year)
        records = [r for d in designs for r in labelled_records(db, d["design_id"])]
    finally:
        db.close()
    records = [r for r in records if r.get("reference_class") not in (None, 0)]
    version = {
        "queues": len(designs),
        "labelled_units": len(records),
        "last_at": max((str(r["created_at"]) for r in records), default=None),
    }
    return version, records


def labels_version(cfg: ReferenceConfig, store: TileStore, year: int) -> dict:
    """What the active labels of `year` are at: queues, labelled units, the latest label's time."""
    return _read_labels(cfg, store, year)[0]


def _stored_units(store: TileStore, design_id: str) -> dict[int, object]:
    try:
        frame = gpd.read_file(store.read_file("label-next", design_id, "units.geojson").decode())
    except StoreError:
        return {}
    frame = frame.set_crs(CRS84, allow_override=True)
    return {int(s): g for s, g in zip(frame["sample_id"], frame.geometry, strict=True)}


def labelled_units(cfg: ReferenceConfig, store: TileStore, year: int) -> tuple[gpd.GeoDataFrame, dict]:
    """The labelled units of `year` as reference polygons in CRS84, oldest label first, and their version.

    Columns: ``class_code`` (the operator's class), ``design_id``, ``sample_id``, ``reviewer``, ``labelled_at``
    and ``source`` (= ``active``)."""
    version, records = _read_labels(cfg, store, year)
    outlines: dict[str, dict[int, object]] = {}
    rows, geometries, missing = [], [], []
    for r in sorted(records, key=lambda r: (str(r["created_at"]), r["design_id"], int(r["sample_id"]))):
        if r["design_id"] not in outlines:
            outlines[r["design_id"]] = _stored_units(store, r["design_id"])
        geometry = outlines[r["design_id"]].get(int(r["sample_id"]))
        if geometry is None and r.get("unit"):
            geometry = shapely.geometry.shape(r["unit"])
        if geometry is None:
            missing.append(f"{r['design_id']}#{r['sample_id']}")
            continue
        rows.append(
            {
                "class_code": int(r["reference_class"]),
                "design_id": r["design_id"],
                "sample_id": int(r["sample_id"]),
                "reviewer": r["reviewer"],
                "labelled_at": str(r["created_at"]),
                "source": SOURCE_ACTIVE,
            }
        )
        geometries.append(geometry)
    if missing:
        log.warning("%d labelled units have no outline (no units.geojson, no unit column): %s", len(missing), missing)
    frame = gpd.GeoDataFrame(rows, columns=_COLUMNS, geometry=gpd.GeoSeries(geometries, crs=CRS84), crs=CRS84)
    return frame, version


def provenance(units: gpd.GeoDataFrame, index: np.ndarray, changed: np.ndarray) -> list[dict]:
    """One record per labelled unit that labels pixels of the tile: where it came from, pixels, changed pixels."""
    pixels = np.bincount(index.ravel(), minlength=len(units) + 1)
    changed_by = np.bincount(index[changed], minlength=len(units) + 1)
    out = []
    for i in np.flatnonzero(pixels[1:]):
        row = units.iloc[i]
        record = {k: (row[k].item() if isinstance(row[k], np.generic) else row[k]) for k in _COLUMNS}
        out.append({**record, "pixels": int(pixels[i + 1]), "changed_base_pixels": int(changed_by[i + 1])})
    return out
