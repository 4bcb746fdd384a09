"""Change polygons as an OGC API - Features style API, with vector tiles for the map.

A *collection* is one product's change polygons for one pair of years, named
``<product>_<from>-<to>`` (e.g. ``land-cover_2023-2024``). Its items are GeoJSON features in
CRS84 with the polygon's attributes (tasks/change/columns.py) and its review state (status,
version, agreement, reviewers, the corrected classes).

One query layer serves both backends (`ChangeQuery` builds the SQL once; a `Source` supplies
what differs): on the embedded database the change layer is the store's GeoPackage, ATTACHed
read-only to the SQLite connection, its R-tree (``rtree_changes_geom``) narrowing a bbox before
an exact intersection test; on PostGIS it is the change table (tasks/change/postgis.py) with its
GIST index. Every filter value is a query parameter; column names and sort orders come from fixed
tables in this module, never from the request.

`ChangeLayers` finds the current layer through the store (`TileStore.product_record`), so a
rerun of the change stage is picked up within ``serve.refresh_seconds``: a new layer is
downloaded first when the store is on S3, imported into the change table on PostGIS, and the
reviews are checked against it: reviews of changes that are gone are marked orphaned (never
deleted), and unmarked if their change comes back (change ids are hashes of the tile, the years
and the polygon's pixels, so an unchanged polygon keeps its id across reruns).
"""

from __future__ import annotations

import json
import math
import os
import re
import sqlite3
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import orjson  # fast JSON, and raw GeoJSON geometry text embedded without parsing
import shapely
from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from pydantic import Field
from pyproj import Transformer

from lcms.serve.auth import Viewer
from lcms.serve.db import Conn, history, utcnow
from lcms.serve.state import ServeState, StateDep
from lcms.stages import change_key
from tasks.change.columns import COLUMNS

PRODUCT_STAGE = "change-polygons"  # the store's file product of the change layer (tasks/change/polygons.py)
LAYER_FILE = "changes.gpkg"
COLLECTION_ID = re.compile(r"^(?P<product>[a-z][a-z0-9_-]*)_(?P<year_from>\d{4})-(?P<year_to>\d{4})$")
STATUSES = ("unreviewed", "confirmed", "rejected", "corrected", "unsure", "conflict")
DECISIONS = ("confirmed", "rejected", "corrected", "unsure")
SORTS = {
    "score": "c.score ASC NULLS LAST, c.change_id ASC",
    "-score": "c.score DESC NULLS LAST, c.change_id ASC",
    "area": "c.area_m2 ASC, c.change_id ASC",
    "-area": "c.area_m2 DESC, c.change_id ASC",
    "id": "c.change_id ASC",
    "-id": "c.change_id DESC",
}
# The layer's own columns; its `status` column is not used: a change's review status is derived from its decisions.
ATTRIBUTES = tuple(column for column in COLUMNS if column != "status")
REVIEW_COLUMNS = ("status", "version", "agreement", "reviewers", "reviewed_class_from", "reviewed_class_to")
MVT_EXTENT = 4096
ClassCode = Annotated[int, Field(ge=0, le=255)]
WEB_MERCATOR_HALF = 20037508.342789244
MAX_ZOOM = 24


# -------------------------------------------------------------------------------------------- layers


@dataclass(frozen=True)
class Layer:
    """The current change layer of a product and pair of years."""

    product: str
    years: tuple[int, int]
    attempt: str
    path: str  # the local GeoPackage file (the store's own file, or a downloaded copy)
    srid: int  # of the GeoPackage's geometries
    count: int
    extent: tuple[float, float, float, float] | None  # in CRS84
    written_at: str

    @property
    def collection_id(self) -> str:
        return collection_id(self.product, self.years)


def collection_id(product: str, years: tuple[int, int]) -> str:
    return f"{product}_{years[0]}-{years[1]}"


def parse_collection_id(value: str) -> tuple[str, tuple[int, int]]:
    match = COLLECTION_ID.match(value or "")
    if match is None:
        raise HTTPException(
            404, f"unknown collection {value!r}: collections are named <product>_<from>-<to>, e.g. land-cover_2023-2024"
        )
    years = (int(match["year_from"]), int(match["year_to"]))
    return match["product"], years


def _gpkg_blob_wkb(blob: bytes) -> bytes:
    """The WKB inside a GeoPackage geometry blob (after its header and envelope)."""
    flags = blob[3]
    envelope = {0: 0, 1: 32, 2: 48, 3: 48, 4: 64}[(flags >> 1) & 0b111]
    return blob[8 + envelope :]


def gpkg_geometries(blobs: list[bytes]) -> np.ndarray:
    return shapely.from_wkb([_gpkg_blob_wkb(b) for b in blobs]) if blobs else np.array([], dtype=object)


class ChangeLayers:
    """The current layer of each collection, refreshed from the store every ``serve.refresh_seconds``."""

    def __init__(self, state: ServeState):
        self.state = state
        self._layers: dict[tuple[str, tuple[int, int]], tuple[float, Layer | None]] = {}
        self._lock = threading.Lock()
        cache = state.config.serve.cache_path
        self._cache = Path(cache) if cache else Path(tempfile.mkdtemp(prefix="lcms-serve-layers-"))

    def candidates(self) -> list[tuple[str, tuple[int, int]]]:
        """The collections the service looks for: the config's product, every pair of its years."""
        years = sorted(self.state.config.years)
        pairs = [(a, b) for i, a in enumerate(years) for b in years[i + 1 :]]
        return [(self.state.config.product, pair) for pair in pairs]

    def all(self) -> list[Layer]:
        return [layer for product, years in self.candidates() if (layer := self.get(product, years)) is not None]

    def get(self, product: str, years: tuple[int, int]) -> Layer | None:
        key = (product, years)
        now = time.monotonic()
        with self._lock:
            checked, layer = self._layers.get(key, (-math.inf, None))
            if now - checked < self.state.config.serve.refresh_seconds:
                return layer
            store = self.state.store_for(product)
            record = store.product_record(PRODUCT_STAGE, change_key(*years))
            if record is None:
                fresh = None
            elif layer is not None and layer.attempt == record.attempt:
                fresh = layer
            else:
                fresh = self._open(store, product, years, record)
                sync_layer(self.state, fresh)
            self._layers[key] = (now, fresh)
            return fresh

    def require(self, collection: str) -> Layer:
        product, years = parse_collection_id(collection)
        layer = self.get(product, years) if (product, years) in self.candidates() else None
        if layer is None:
            known = [collection_id(*c) for c in self.candidates()]
            raise HTTPException(
                404, f"unknown collection {collection!r}: this service has {known} (run the change stage to make one)"
            )
        return layer

    def _open(self, store, product: str, years: tuple[int, int], record) -> Layer:
        name = change_key(*years)
        if store.is_local:
            path = store.file_url(PRODUCT_STAGE, name, LAYER_FILE)
        else:
            folder = self._cache / product / name / record.attempt
            if not (folder / LAYER_FILE).is_file():  # the GeoPackage is moved in last: its presence means complete
                folder.mkdir(parents=True, exist_ok=True)
                download = Path(tempfile.mkdtemp(prefix="download-", dir=folder))
                store.get_files(PRODUCT_STAGE, name, download)
                for file in sorted(download.iterdir(), key=lambda f: f.name == LAYER_FILE):
                    os.replace(file, folder / file.name)
                download.rmdir()
            path = str(folder / LAYER_FILE)
        with sqlite3.connect(Path(path).resolve().as_uri() + "?mode=ro&immutable=1", uri=True) as raw:
            srid = raw.execute("SELECT srs_id FROM gpkg_geometry_columns WHERE table_name = 'changes'").fetchone()[0]
            count = raw.execute("SELECT count(*) FROM changes").fetchone()[0]
            # The layer's exact extent (the R-tree's is rounded outwards to float32).
            box = raw.execute(
                "SELECT min_x, min_y, max_x, max_y FROM gpkg_contents WHERE table_name = 'changes'"
            ).fetchone()
        extent = None
        if count and box[0] is not None:
            extent = (
                tuple(Transformer.from_crs(srid, 4326, always_xy=True).transform_bounds(*box)) if srid != 4326 else box
            )
        return Layer(product, years, record.attempt, path, int(srid), int(count), extent, record.written_at)


def sync_layer(state: ServeState, layer: Layer) -> None:
    """Bring the database up to a new layer: import it into PostGIS, then mark and unmark orphaned reviews."""
    db = state.db
    with db.transaction() as conn:
        seen = conn.one(
            f"SELECT attempt FROM {conn.t('layers')} WHERE product = ? AND year_from = ? AND year_to = ?",
            (layer.product, *layer.years),
        )
    if db.kind == "postgis" and (seen is None or seen["attempt"] != layer.attempt):
        import_into_postgis(state, layer)
    attach = {"layer": layer.path} if db.kind == "sqlite" else None
    with db.transaction(attach=attach) as conn:
        ids = f"SELECT c.change_id FROM {_source(state, layer).table} c WHERE c.year_from = ? AND c.year_to = ?"
        where = "product = ? AND year_from = ? AND year_to = ?"
        now = utcnow()
        conn.run(
            f"UPDATE {conn.t('change_reviews')} SET orphaned = 1, orphaned_at = ? "
            f"WHERE {where} AND orphaned = 0 AND change_id NOT IN ({ids})",
            (now, layer.product, *layer.years, *layer.years),
        )
        conn.run(
            f"UPDATE {conn.t('change_reviews')} SET orphaned = 0, orphaned_at = NULL "
            f"WHERE {where} AND orphaned = 1 AND change_id IN ({ids})",
            (layer.product, *layer.years, *layer.years),
        )
        updated = conn.run(
            f"UPDATE {conn.t('layers')} SET attempt = ?, synced_at = ? "
            "WHERE product = ? AND year_from = ? AND year_to = ?",
            (layer.attempt, now, layer.product, *layer.years),
        )
        if not updated:
            conn.run(
                f"INSERT INTO {conn.t('layers')} (product, year_from, year_to, attempt, synced_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (layer.product, *layer.years, layer.attempt, now),
            )


def import_into_postgis(state: ServeState, layer: Layer) -> None:
    """Write the layer's polygons into the change table (as the change stage does with change.postgis set)."""
    import geopandas as gpd

    from lcms.serve.db import serve_postgis
    from tasks.change.postgis import write_changes_postgis

    postgis = serve_postgis(state.config)
    changes = gpd.read_file(layer.path, layer="changes", engine="pyogrio")
    summary = json.loads(
        state.store_for(layer.product).read_file(PRODUCT_STAGE, change_key(*layer.years), "summary.json")
    )
    keys = [(tile, *layer.years) for tile in summary.get("tiles", [])]
    write_changes_postgis(
        changes, state.db.dsn, table=postgis.table, schema=postgis.schema_name, srid=postgis.srid, replace_keys=keys
    )


# --------------------------------------------------------------------------------------- query layer


@dataclass(frozen=True)
class Source:
    """What differs between the backends: where the polygons are and how geometry is tested and read."""

    kind: str
    table: str  # FROM expression, aliased `c` by the caller
    srid: int

    def bbox_sql(self, bbox: tuple[float, float, float, float]) -> tuple[str, list]:
        """Polygons intersecting a CRS84 bbox: index first, then the exact test."""
        if self.kind == "sqlite":
            box = _to_srid(bbox, self.srid)
            # Envelopes inside the box need no exact test; only those across its edges are parsed.
            return (
                "c.fid IN (SELECT id FROM layer.rtree_changes_geom WHERE maxx >= ? AND minx <= ? AND maxy >= ? "
                "AND miny <= ? AND ((minx >= ? AND maxx <= ? AND miny >= ? AND maxy <= ?) "
                "OR lcms_intersects(id, ?, ?, ?, ?)))",
                [box[0], box[2], box[1], box[3], *box, *box],
            )
        envelope = "ST_MakeEnvelope(?, ?, ?, ?, 4326)"
        if self.srid != 4326:
            envelope = f"ST_Transform({envelope}, {int(self.srid)})"
        return f"c.geometry && {envelope} AND ST_Intersects(c.geometry, {envelope})", [*bbox, *bbox]

    @property
    def geometry_sql(self) -> str:
        if self.kind == "sqlite":
            return "c.geom AS geometry"
        geometry = "c.geometry" if self.srid == 4326 else "ST_Transform(c.geometry, 4326)"
        return f"ST_AsGeoJSON({geometry}, 7) AS geometry"

    def geojson(self, values: list) -> list[str]:
        """The geometries of the rows as GeoJSON text in CRS84."""
        if self.kind != "sqlite":
            return values
        geometries = gpkg_geometries(values)
        if self.srid != 4326 and len(geometries):
            transformer = Transformer.from_crs(self.srid, 4326, always_xy=True)
            geometries = shapely.transform(geometries, lambda xy: np.column_stack(transformer.transform(*xy.T)))
        return list(shapely.to_geojson(geometries)) if len(geometries) else []


def _to_srid(bbox, srid: int) -> tuple[float, float, float, float]:
    if srid == 4326:
        return tuple(bbox)
    return tuple(Transformer.from_crs(4326, srid, always_xy=True).transform_bounds(*bbox))


def _source(state: ServeState, layer: Layer) -> Source:
    if state.db.kind == "sqlite":
        return Source("sqlite", "layer.changes", layer.srid)
    from lcms.serve.db import serve_postgis

    postgis = serve_postgis(state.config)
    return Source("postgis", f'"{postgis.schema_name}"."{postgis.table}"', postgis.srid)


def _intersects_function(raw: sqlite3.Connection):
    """SQLite function ``lcms_intersects(fid, minx, miny, maxx, maxy)``: does that polygon intersect the box?

    Exact, for the polygons whose R-tree envelope crosses the box's edge.
    """

    def intersects(fid, minx, miny, maxx, maxy) -> int:
        row = raw.execute("SELECT geom FROM layer.changes WHERE fid = ?", (fid,)).fetchone()
        if row is None or row[0] is None:
            return 0
        geometry = shapely.from_wkb(_gpkg_blob_wkb(row[0]))
        return int(shapely.intersects(geometry, shapely.box(minx, miny, maxx, maxy)))

    return intersects


@dataclass
class ChangeQuery:
    """Filters on a collection's polygons; `sql` turns them into one parameterised query."""

    bbox: tuple[float, float, float, float] | None = None
    class_from: list[int] = field(default_factory=list)
    class_to: list[int] = field(default_factory=list)
    status: list[str] = field(default_factory=list)
    decision: str | None = None
    reviewer: str | None = None
    min_score: float | None = None
    min_area_m2: float | None = None
    tile_id: str | None = None
    change_ids: list[str] = field(default_factory=list)

    def where(self, conn: Conn, source: Source, layer: Layer) -> tuple[str, list]:
        clauses, params = ["c.year_from = ? AND c.year_to = ?"], [*layer.years]
        if self.bbox is not None:
            clause, values = source.bbox_sql(self.bbox)
            clauses.append(clause)
            params += values
        for column, values in (("c.class_from", self.class_from), ("c.class_to", self.class_to)):
            if values:
                clauses.append(f"{column} IN ({', '.join('?' * len(values))})")
                params += values
        if self.status:
            clauses.append(f"COALESCE(r.status, 'unreviewed') IN ({', '.join('?' * len(self.status))})")
            params += self.status
        if self.change_ids:
            clauses.append(f"c.change_id IN ({', '.join('?' * len(self.change_ids))})")
            params += self.change_ids
        if self.min_score is not None:
            clauses.append("c.score >= ?")
            params.append(self.min_score)
        if self.min_area_m2 is not None:
            clauses.append("c.area_m2 >= ?")
            params.append(self.min_area_m2)
        if self.tile_id is not None:
            clauses.append("c.tile_id = ?")
            params.append(self.tile_id)
        decided = f"SELECT 1 FROM {conn.t('decisions')} d WHERE d.product = ? AND d.change_id = c.change_id"
        if self.decision is not None:
            clauses.append(f"EXISTS ({decided} AND d.decision = ?)")
            params += [layer.product, self.decision]
        if self.reviewer is not None:
            clauses.append(f"EXISTS ({decided} AND d.reviewer = ?)")
            params += [layer.product, self.reviewer]
        return " AND ".join(clauses), params

    def sql(
        self, conn: Conn, source: Source, layer: Layer, sort: str = "-score", limit: int | None = None, offset: int = 0
    ) -> tuple[str, list]:
        where, params = self.where(conn, source, layer)
        columns = ", ".join(f"c.{a}" for a in ATTRIBUTES)
        sql = (
            f"SELECT {columns}, {source.geometry_sql}, COALESCE(r.status, 'unreviewed') AS status, "
            "COALESCE(r.version, 0) AS version, COALESCE(r.agreement, 'none') AS agreement, r.reviewers, "
            "r.class_from AS reviewed_class_from, r.class_to AS reviewed_class_to, r.geometry AS reviewed_geometry "
            f"FROM {source.table} c {self._join(conn)} WHERE {where} ORDER BY {SORTS[sort]}"
        )
        params = [layer.product, *params]
        if limit is not None:
            sql += " LIMIT ? OFFSET ?"
            params += [limit, offset]
        return sql, params

    def count_sql(self, conn: Conn, source: Source, layer: Layer) -> tuple[str, list]:
        where, params = self.where(conn, source, layer)
        return f"SELECT count(*) AS n FROM {source.table} c {self._join(conn)} WHERE {where}", [layer.product, *params]

    def mvt_sql(self, conn: Conn, source: Source, layer: Layer, bounds, limit: int) -> tuple[str, list]:
        """PostGIS only: the vector tile made by the database (ST_AsMVT), with the same filters."""
        where, params = self.where(conn, source, layer)
        geometry = "c.geometry" if source.srid == 3857 else "ST_Transform(c.geometry, 3857)"
        sql = (
            "SELECT ST_AsMVT(t, 'changes', ?, 'geom') AS tile FROM ("
            f"SELECT ST_AsMVTGeom({geometry}, ST_MakeEnvelope(?, ?, ?, ?, 3857), ?, 64, true) AS geom, "
            "c.change_id, c.class_from, c.class_to, c.area_m2, c.score, COALESCE(r.status, 'unreviewed') AS status, "
            f"COALESCE(r.version, 0) AS version FROM {source.table} c {self._join(conn)} WHERE {where} "
            f"ORDER BY {SORTS['-score']} LIMIT ?) t"
        )
        return sql, [MVT_EXTENT, *bounds, MVT_EXTENT, layer.product, *params, limit]

    @staticmethod
    def _join(conn: Conn) -> str:
        return f"LEFT JOIN {conn.t('change_reviews')} r ON r.product = ? AND r.change_id = c.change_id"


def open_layer(state: ServeState, layer: Layer, write: bool = False):
    """A transaction that sees the layer's polygons beside the service's tables (as `Source` expects)."""
    if state.db.kind == "sqlite":
        return _SqliteLayerTransaction(state, layer, write)
    return state.db.transaction(write=write)


class _SqliteLayerTransaction:
    def __init__(self, state: ServeState, layer: Layer, write: bool):
        self._cm = state.db.transaction(write=write, attach={"layer": layer.path})

    def __enter__(self) -> Conn:
        conn = self._cm.__enter__()
        conn.raw.create_function("lcms_intersects", 5, _intersects_function(conn.raw), deterministic=True)
        return conn

    def __exit__(self, *exc):
        return self._cm.__exit__(*exc)


def run_query(
    state: ServeState,
    layer: Layer,
    query: ChangeQuery,
    sort: str = "-score",
    limit: int | None = None,
    offset: int = 0,
    count: bool = True,
    conn: Conn | None = None,
) -> tuple[list[dict], int | None]:
    """Rows (attributes, GeoJSON geometry text, review state) and the number matched."""
    source = _source(state, layer)

    def go(conn: Conn):
        rows = conn.rows(*query.sql(conn, source, layer, sort, limit, offset))
        matched = conn.one(*query.count_sql(conn, source, layer))["n"] if count else None
        return rows, matched

    if conn is not None:
        rows, matched = go(conn)
    else:
        with open_layer(state, layer) as conn:
            rows, matched = go(conn)
    for row, geojson in zip(rows, source.geojson([r["geometry"] for r in rows]), strict=True):
        row["geometry"] = geojson
    return rows, matched


# ------------------------------------------------------------------------------------------ GeoJSON


def _number(value):
    if value is None:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def properties(row: dict) -> dict[str, Any]:
    props = {a: _number(row[a]) for a in ATTRIBUTES}
    props.update(
        status=row["status"],
        version=int(row["version"]),
        agreement=row["agreement"],
        reviewers=[r for r in (row.get("reviewers") or "").split(",") if r],
        reviewed_class_from=row.get("reviewed_class_from"),
        reviewed_class_to=row.get("reviewed_class_to"),
        reviewed_geometry=json.loads(row["reviewed_geometry"]) if row.get("reviewed_geometry") else None,
    )
    return props


def feature(row: dict) -> dict:
    """One GeoJSON feature; its geometry is already GeoJSON text, embedded as it is (not parsed again)."""
    return {
        "type": "Feature",
        "id": row["change_id"],
        "geometry": orjson.Fragment(row["geometry"]),
        "properties": properties(row),
    }


# ---------------------------------------------------------------------------------------- parameters


def parse_bbox(text: str | None) -> tuple[float, float, float, float] | None:
    if text is None:
        return None
    parts = text.split(",")
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise HTTPException(
            400, f"query parameter 'bbox': expected four numbers minlon,minlat,maxlon,maxlat, got {text!r}"
        )
    minx, miny, maxx, maxy = values
    if not (-180 <= minx <= 180 and -180 <= maxx <= 180 and -90 <= miny <= 90 and -90 <= maxy <= 90):
        raise HTTPException(400, f"query parameter 'bbox': {text!r} is outside lon -180..180, lat -90..90 (CRS84)")
    if minx > maxx or miny > maxy:
        raise HTTPException(
            400, f"query parameter 'bbox': {text!r} has min > max (order is minlon,minlat,maxlon,maxlat)"
        )
    return values


def reject_unknown(request: Request, allowed: set[str]) -> None:
    unknown = sorted(set(request.query_params) - allowed)
    if unknown:
        raise HTTPException(400, f"unknown query parameter(s) {unknown}; this endpoint takes {sorted(allowed)}")


class Filters:
    """The query parameters every change query shares (items and tiles)."""

    NAMES = {"bbox", "class_from", "class_to", "status", "decision", "reviewer", "min_score", "min_area", "tile_id"}

    def __init__(
        self,
        bbox: Annotated[str | None, Query(description="minlon,minlat,maxlon,maxlat in CRS84", max_length=200)] = None,
        class_from: Annotated[list[ClassCode] | None, Query(description="Class code before (repeatable)")] = None,
        class_to: Annotated[list[ClassCode] | None, Query(description="Class code after (repeatable)")] = None,
        status: Annotated[
            list[Literal[STATUSES]] | None, Query(description="Derived review status (repeatable)")
        ] = None,
        decision: Annotated[
            Literal[DECISIONS] | None, Query(description="Changes with at least one such decision")
        ] = None,
        reviewer: Annotated[str | None, Query(max_length=64, description="Changes this user has decided on")] = None,
        min_score: Annotated[float | None, Query(description="Minimum score", allow_inf_nan=False)] = None,
        min_area: Annotated[float | None, Query(ge=0, description="Minimum area in m²", allow_inf_nan=False)] = None,
        tile_id: Annotated[str | None, Query(max_length=64)] = None,
    ):
        self.query = ChangeQuery(
            bbox=parse_bbox(bbox),
            class_from=class_from or [],
            class_to=class_to or [],
            status=list(status or []),
            decision=decision,
            reviewer=reviewer,
            min_score=min_score,
            min_area_m2=min_area,
            tile_id=tile_id,
        )


# -------------------------------------------------------------------------------------------- routes

router = APIRouter(prefix="/changes", tags=["changes"])
CONFORMANCE = [
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/core",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/geojson",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/oas30",
]


def _collection(request: Request, layer: Layer) -> dict:
    base = str(request.url_for("change_collection", collection_id=layer.collection_id))
    return {
        "id": layer.collection_id,
        "title": f"{layer.product} changes {layer.years[0]} → {layer.years[1]}",
        "itemType": "feature",
        "crs": ["http://www.opengis.net/def/crs/OGC/1.3/CRS84"],
        "extent": {
            "spatial": {"bbox": [list(layer.extent)] if layer.extent else []},
            "temporal": {"interval": [[f"{layer.years[0]}-01-01T00:00:00Z", f"{layer.years[1]}-12-31T23:59:59Z"]]},
        },
        "product": layer.product,
        "years": list(layer.years),
        "polygons": layer.count,
        "layer_version": layer.attempt,
        "written_at": layer.written_at,
        "links": [
            {"rel": "self", "href": base, "type": "application/json"},
            {"rel": "items", "href": base + "/items", "type": "application/geo+json"},
            {"rel": "tiles", "href": base + "/tiles/{z}/{x}/{y}.mvt", "type": "application/vnd.mapbox-vector-tile"},
        ],
    }


@router.get("", summary="Landing page of the change polygons API")
def landing(request: Request, user: Viewer):
    return {
        "title": "LCMS change polygons",
        "links": [
            {"rel": "conformance", "href": str(request.url_for("conformance"))},
            {"rel": "data", "href": str(request.url_for("change_collections"))},
            {"rel": "service-desc", "href": str(request.url_for("openapi"))},
        ],
    }


@router.get("/conformance", name="conformance", summary="OGC API - Features conformance classes")
def conformance(user: Viewer):
    return {"conformsTo": CONFORMANCE}


@router.get("/collections", name="change_collections", summary="Change collections: one per product and pair of years")
def collections(request: Request, user: Viewer, state: StateDep):
    return {"collections": [_collection(request, layer) for layer in state.layers.all()], "links": []}


@router.get("/collections/{collection_id}", name="change_collection", summary="One change collection")
def collection(collection_id: str, request: Request, user: Viewer, state: StateDep):
    return _collection(request, state.layers.require(collection_id))


@router.get(
    "/collections/{collection_id}/items",
    summary="Change polygons as GeoJSON, filtered, sorted and paged",
    response_class=Response,
    responses={200: {"content": {"application/geo+json": {}}}},
)
def items(
    collection_id: str,
    request: Request,
    filters: Annotated[Filters, Depends()],
    user: Viewer,
    state: StateDep,
    sortby: Annotated[Literal[tuple(SORTS)], Query(description="score, area or id; '-' for descending")] = "-score",
    limit: Annotated[int, Query(ge=1, description="Polygons per page (at most serve.max_limit)")] = 100,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
):
    reject_unknown(request, Filters.NAMES | {"sortby", "limit", "offset", "f"})
    most = state.config.serve.max_limit
    if limit > most:
        raise HTTPException(400, f"query parameter 'limit': {limit} is above the most one page holds ({most})")
    layer = state.layers.require(collection_id)
    rows, matched = run_query(state, layer, filters.query, sortby, limit, offset)
    links = [{"rel": "self", "type": "application/geo+json", "href": str(request.url)}]
    if offset + len(rows) < matched:
        links.append(
            {
                "rel": "next",
                "type": "application/geo+json",
                "href": str(request.url.include_query_params(offset=offset + limit)),
            }
        )
    if offset > 0:
        previous = max(0, offset - limit)
        links.append(
            {
                "rel": "prev",
                "type": "application/geo+json",
                "href": str(request.url.include_query_params(offset=previous)),
            }
        )
    head = {
        "type": "FeatureCollection",
        "numberMatched": matched,
        "numberReturned": len(rows),
        "timeStamp": utcnow(),
        "links": links,
    }
    body = orjson.dumps({**head, "features": [feature(r) for r in rows]})
    return Response(body, media_type="application/geo+json")


def find_change(state: ServeState, layer: Layer, change_id: str, conn: Conn | None = None) -> dict:
    """One change's row (attributes, geometry, review state); 404 naming the change if the layer lacks it."""
    rows, _ = run_query(state, layer, ChangeQuery(change_ids=[change_id]), count=False, conn=conn)
    if not rows:
        raise HTTPException(404, f"change {change_id!r} is not in collection {layer.collection_id}")
    return rows[0]


@router.get(
    "/collections/{collection_id}/items/{change_id}",
    summary="One change polygon with its review history",
    response_class=Response,
    responses={200: {"content": {"application/geo+json": {}}}},
)
def item(
    collection_id: str,
    change_id: str,
    user: Viewer,
    state: StateDep,
):
    layer = state.layers.require(collection_id)
    row = find_change(state, layer, change_id[:64])
    with state.db.transaction(write=False) as conn:
        decisions = history(conn, layer.product, row["change_id"])
    answer = feature(row)
    answer["properties"]["history"] = decisions
    return Response(orjson.dumps(answer), media_type="application/geo+json")


# ------------------------------------------------------------------------------------------ vector tiles


def tile_bounds(z: int, x: int, y: int) -> tuple[float, float, float, float]:
    """A Web Mercator tile's bounds in EPSG:3857."""
    size = 2 * WEB_MERCATOR_HALF / 2**z
    return (
        -WEB_MERCATOR_HALF + x * size,
        WEB_MERCATOR_HALF - (y + 1) * size,
        -WEB_MERCATOR_HALF + (x + 1) * size,
        WEB_MERCATOR_HALF - y * size,
    )


def check_tile(z: int, x: int, y: int) -> None:
    if not 0 <= z <= MAX_ZOOM:
        raise HTTPException(400, f"zoom z={z} is outside 0..{MAX_ZOOM}")
    top = 2**z - 1
    for name, value in (("x", x), ("y", y)):
        if not 0 <= value <= top:
            raise HTTPException(400, f"tile {name}={value} is outside 0..{top} at zoom {z}")


_TO_LONLAT = Transformer.from_crs(3857, 4326, always_xy=True)
_TO_MERCATOR = Transformer.from_crs(4326, 3857, always_xy=True)
MVT_PROPERTIES = ("change_id", "class_from", "class_to", "area_m2", "score", "status", "version")


@router.get(
    "/collections/{collection_id}/tiles/{z}/{x}/{y}.mvt",
    summary="Change polygons as a Mapbox vector tile (layer 'changes'), with the same filters as items",
    response_class=Response,
    responses={200: {"content": {"application/vnd.mapbox-vector-tile": {}}}},
)
def vector_tile(
    collection_id: str,
    z: int,
    x: int,
    y: int,
    request: Request,
    filters: Annotated[Filters, Depends()],
    user: Viewer,
    state: StateDep,
):
    reject_unknown(request, Filters.NAMES - {"bbox"})
    check_tile(z, x, y)
    layer = state.layers.require(collection_id)
    bounds = tile_bounds(z, x, y)
    lonlat = _TO_LONLAT.transform_bounds(*bounds)
    query = filters.query
    query.bbox = (max(-180, lonlat[0]), max(-90, lonlat[1]), min(180, lonlat[2]), min(90, lonlat[3]))
    headers = {"Cache-Control": "private, max-age=5"}
    if state.db.kind == "postgis":
        with state.db.transaction(write=False) as conn:
            sql, params = query.mvt_sql(conn, _source(state, layer), layer, bounds, state.config.serve.max_limit)
            data = conn.one(sql, params)["tile"]
        return Response(bytes(data or b""), media_type="application/vnd.mapbox-vector-tile", headers=headers)
    rows, _ = run_query(state, layer, query, "-score", state.config.serve.max_limit, 0, count=False)
    # All geometries at once: to Web Mercator, clipped to the tile plus a margin (so outlines do not show at its edges).
    geometries = shapely.from_geojson([row["geometry"] for row in rows]) if rows else np.array([], dtype=object)
    if len(geometries):
        geometries = shapely.transform(geometries, lambda xy: np.column_stack(_TO_MERCATOR.transform(*xy.T)))
        margin = (bounds[2] - bounds[0]) * 64 / MVT_EXTENT
        geometries = shapely.clip_by_rect(
            geometries, bounds[0] - margin, bounds[1] - margin, bounds[2] + margin, bounds[3] + margin
        )
    features = []
    for row, geometry in zip(rows, geometries, strict=True):
        if geometry.is_empty:
            continue
        props = {k: v for k, v in properties(row).items() if k in MVT_PROPERTIES and v is not None}
        features.append({"geometry": geometry, "properties": props})
    import mapbox_vector_tile

    data = mapbox_vector_tile.encode(
        [{"name": "changes", "features": features}],
        default_options={"quantize_bounds": bounds, "extents": MVT_EXTENT},
    )
    return Response(data, media_type="application/vnd.mapbox-vector-tile", headers=headers)
