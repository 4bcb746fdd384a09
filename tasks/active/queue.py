"""A "label next" queue from a year of the prediction store: the picks, their unit polygons and the design.

Store product (declared in lcms/stages.py as ``label-next``, written by `lcms label-next`, no flow): one per
queue, named by its design id, under ``label-next/<product>/<design id>/``:

- ``design.json``: method (uncertainty, units, allocation, thinning), unit size, thinning distance, seed,
  the model version the probabilities came from, the prediction tiles read, and the picks per class;
- ``units.geojson``: one feature per pick (WGS84): its sample id, tile, unit id, score, predicted class and
  the unit polygon. The reference stage takes the labelled units' outlines from here
  (tasks/reference/labels.py), whatever the database stores.

A tile's units are laid on its core window (the buffer belongs to a neighbour), so every place is in
one tile's units. Units that overlap a unit of an earlier active queue of the same product and year are
excluded, as are units without a prediction. Picks are made over all tiles together: the tiles' unit
tables are concatenated before `pick_units`, with centroids in metres so that thinning holds across tiles.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path

import geopandas as gpd
import numpy as np
import shapely
from rasterio import features as rio_features

from lcms.store import StoreError, TileStore
from tasks.active.picks import pick_units
from tasks.active.uncertainty import uncertainty
from tasks.active.units import UnitTable, make_units, unit_polygons, unit_table

STAGE = "label-next"
ACTIVE = "active"  # design kind and point source (lcms/serve/samples.py)
PREDICTION = "prediction"
CRS84 = "EPSG:4326"


class QueueError(ValueError):
    """No prediction to pick from, or nothing left to pick."""


@dataclass(frozen=True)
class QueueSettings:
    count: int = 20
    unit: str = "block"  # or "slic"
    unit_size: int = 5  # px: block side, or SLIC's typical side
    min_distance_px: float = 10.0  # thinning, between unit centroids
    uncertainty: str = "margin"  # or "entropy"
    seed: int = 0  # recorded in the design and its id; the picks themselves are deterministic (no draw)


def queue_key(year: int) -> str:
    """The design key (the database's ``sample_key``) of a year's active queues."""
    return f"active-{year}"


def earlier_units(store: TileStore, design_ids: list[str]) -> gpd.GeoDataFrame:
    """The unit polygons (WGS84) of earlier queues, from their stored units.geojson (missing ones skipped)."""
    frames = []
    for design_id in design_ids:
        try:
            frames.append(gpd.read_file(store.read_file(STAGE, design_id, "units.geojson").decode()))
        except StoreError:
            continue
    if not frames:
        return gpd.GeoDataFrame(geometry=gpd.GeoSeries([], crs=CRS84), crs=CRS84)
    import pandas as pd

    return gpd.GeoDataFrame(pd.concat(frames, ignore_index=True), crs=CRS84)


def _covered(earlier: gpd.GeoDataFrame, grid) -> np.ndarray:
    """bool (y, x): pixels of `grid` under an earlier queue's unit."""
    if earlier.empty:
        return np.zeros(grid.shape, bool)
    shapes = [(g, 1) for g in earlier.geometry.to_crs(grid.crs) if g is not None and not g.is_empty]
    if not shapes:
        return np.zeros(grid.shape, bool)
    return rio_features.rasterize(shapes, out_shape=grid.shape, transform=grid.affine, fill=0, dtype="uint8") > 0


def _tile_table(store: TileStore, year: int, tile_id: str, window, settings: QueueSettings, earlier):
    reader = store.open_tile(PREDICTION, year, tile_id)
    rows, cols = window if window is not None else (slice(None), slice(None))
    grid = reader.grid.window(rows, cols)
    percent = reader.read("probabilities")[rows, cols]
    labels = reader.read("labels")[rows, cols]
    image = None
    if settings.unit == "slic":
        from tasks.features.tile import unpack

        stored = store.open_tile("features", year, tile_id).read("features")[:, rows, cols]
        t, h, w, f = stored.shape
        image = np.moveaxis(unpack(stored), 0, 2).reshape(h, w, t * f)
    units = make_units(settings.unit, labels.shape, settings.unit_size, image)
    table = unit_table(units, uncertainty(percent, settings.uncertainty), labels)
    covered = _covered(earlier, grid)
    taken = np.unique(units[covered & (units >= 0)])
    return reader, grid, units, table, taken


def make_queue(
    store: TileStore, year: int, settings: QueueSettings, earlier_design_ids: list[str] = ()
) -> tuple[dict, list[dict], gpd.GeoDataFrame]:
    """Pick `settings.count` units over the year's predicted tiles: (design, points for `load_design`, units)."""
    done = store.done_tiles(PREDICTION, year)
    if not done:
        raise QueueError(f"no prediction of {store.product!r} for {year} in {store.url}: run `lcms predict` first")
    from tasks.training.holdout import core_windows

    windows = core_windows(store, sorted(done))
    earlier = earlier_units(store, list(earlier_design_ids))
    tables, per_tile, offset = [], [], 0
    for tile_id in sorted(done):
        reader, grid, units, table, taken = _tile_table(store, year, tile_id, windows.get(tile_id), settings, earlier)
        res = grid.resolution
        x0, y0 = grid.affine[2], grid.affine[5]
        # centroids in metres from a common origin, in "pixels" of this resolution, so thinning spans tiles
        table = replace(
            table,
            unit=table.unit + offset,
            row=(-(y0 + table.row * -res)) / res,
            col=(x0 + table.col * res) / res,
        )
        tables.append(table)
        per_tile.append((tile_id, reader, grid, units, offset))
        offset += len(table.unit)
        if taken.size:
            tables[-1] = replace(
                table, score=np.where(np.isin(table.unit - per_tile[-1][4], taken), np.nan, table.score)
            )
    joined = UnitTable(*(np.concatenate([getattr(t, f) for t in tables]) for f in UnitTable.__dataclass_fields__))
    picks = pick_units(joined, settings.count, settings.min_distance_px)
    if picks.unit.size == 0:
        raise QueueError(f"no unit left to label in the {year} prediction (all labelled or queued already)")

    model_versions = sorted({str(r.extra.get("model_version") or r.extra.get("model_attempt")) for r in done.values()})
    points, geometries = [], []
    for sample_id, (uid, label, score) in enumerate(zip(picks.unit, picks.label, picks.score, strict=True), 1):
        tile_id, _, grid, units, start = next(p for p in reversed(per_tile) if p[4] <= uid)
        local = int(uid - start)
        polygon = unit_polygons(units, grid.affine, np.array([local]))[local]
        on_crs84 = gpd.GeoSeries([polygon], crs=grid.crs).to_crs(CRS84).iloc[0]
        centre = gpd.GeoSeries([polygon.representative_point()], crs=grid.crs).to_crs(CRS84).iloc[0]
        points.append(
            {
                "sample_id": sample_id,
                "stratum": int(label),
                "map_class": int(label),
                "predicted_class": int(label),
                "lon": round(float(centre.x), 7),
                "lat": round(float(centre.y), 7),
                "tile": tile_id,
                "unit_id": local,
                "score": round(float(score), 4),
                "unit": shapely.geometry.mapping(on_crs84),
            }
        )
        geometries.append(on_crs84)
    points = [json.loads(json.dumps(p)) for p in points]  # plain JSON types (tuples of the mapping → lists)
    design = {
        "product": store.product,
        "years": [year],
        "kind": ACTIVE,
        "key": queue_key(year),
        "method": {
            "uncertainty": settings.uncertainty,
            "unit_score": "mean uncertainty of the unit's predicted pixels",
            "allocation": "equal among predicted classes (tasks/active/picks.py)",
            "thinning": "greedy by score, round robin over classes, min distance between unit centroids",
        },
        "unit": settings.unit,
        "unit_size_px": settings.unit_size,
        "min_distance_px": settings.min_distance_px,
        "seed": settings.seed,
        "count": settings.count,
        "n_total": len(points),
        "model_versions": model_versions,
        "prediction_attempts": {t: r.attempt for t, r in sorted(done.items())},
        "earlier_queues": list(earlier_design_ids),
        "picks_per_class": {str(c): int((picks.label == c).sum()) for c in np.unique(picks.label)},
        "quota_per_class": {str(c): n for c, n in picks.quota.items()},
    }
    digest = hashlib.sha256(json.dumps([design, points], sort_keys=True).encode()).hexdigest()[:12]
    design["design_id"] = f"{store.product}_{design['key']}_{digest}"
    design["drawn_at"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    props = [{k: v for k, v in p.items() if k != "unit"} | {"design_id": design["design_id"]} for p in points]
    units_frame = gpd.GeoDataFrame(props, geometry=gpd.GeoSeries(geometries, crs=CRS84), crs=CRS84)
    return design, points, units_frame


def store_queue(store: TileStore, design: dict, units: gpd.GeoDataFrame, folder: Path) -> None:
    """Store design.json and units.geojson as the ``label-next`` product named by the design id."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "design.json").write_text(json.dumps(design, indent=1) + "\n")
    (folder / "units.geojson").write_text(units.to_json(drop_id=True))
    store.put_files(STAGE, design["design_id"], folder, design["design_id"], extra={"design_id": design["design_id"]})


def active_designs(db, product: str, year: int) -> list[dict]:
    """The active queues of `product` and `year` loaded in the service database, oldest first."""
    from lcms.serve.samples import ensure_tables

    ensure_tables(db)
    with db.transaction(write=False) as conn:
        rows = conn.rows(
            f"SELECT design_id, design, loaded_at FROM {conn.t('sample_designs')} WHERE kind = ? AND product = ? "
            "ORDER BY loaded_at, design_id",
            (ACTIVE, product),
        )
    designs = [json.loads(r["design"]) for r in rows]
    return [d for d in designs if list(d.get("years") or []) == [year]]
