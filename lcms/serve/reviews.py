"""Operators' decisions on change polygons: an append-only log, a derived status, admin resolution, export.

A decision is ``confirmed``, ``rejected`` (a false change), ``corrected`` (the right from/to classes
of the legend, optionally an edited outline) or ``unsure``, with a comment. Each is a new row of
``lcms_decisions``, which the database refuses to update or delete (db.py). A change's state in
``lcms_change_reviews`` is derived from its decisions (`derive`):

- each reviewer's latest decision counts (earlier ones stay in the history);
- ``unsure`` votes do not count; all-unsure gives status ``unsure``;
- counting votes that agree (same decision; for ``corrected`` also the same classes) give that
  status, agreement ``single`` (one reviewer) or ``agreement``; votes that differ give ``conflict``;
- an admin resolves a conflict with a ``resolution`` decision: it becomes the status (agreement
  ``resolved``), and only reviewers' decisions made after it are counted with it.

Optimistic concurrency: the state's ``version`` is the number of decisions on the change. A new
decision names the version it was made on; if another came first, the answer is 409 with the
current state and history, and nothing is written.

Reviews are keyed by (product, change_id); change ids are stable across reruns (a hash of tile,
years and the polygon's pixels). changes.py marks the reviews of vanished changes ``orphaned``.
"""

from __future__ import annotations

import csv
import io
import json
import tempfile
from pathlib import Path
from typing import Annotated, Literal

import shapely
from fastapi import APIRouter, HTTPException, Query, Response
from pydantic import BaseModel, Field

from lcms.serve.auth import Admin, Operator, User, Viewer
from lcms.serve.changes import (
    DECISIONS,
    ChangeQuery,
    Layer,
    find_change,
    open_layer,
    run_query,
)
from lcms.serve.db import Conn, history, utcnow
from lcms.serve.state import ServeState, StateDep

MAX_COMMENT = 2000
MAX_VERTICES = 10_000
EXPORTED = ("confirmed", "corrected")


class DecisionBody(BaseModel):
    decision: Literal[DECISIONS]
    version: int = Field(..., ge=0, description="The change's version this decision was made on (from its state)")
    comment: str = Field("", max_length=MAX_COMMENT)
    class_from: int | None = Field(None, description="corrected only: the right class before")
    class_to: int | None = Field(None, description="corrected only: the right class after")
    geometry: dict | None = Field(None, description="corrected only: an edited outline (GeoJSON Polygon, CRS84)")


def legend(state: ServeState) -> dict[int, str]:
    """The classes a correction may name (the run's legend, without 'no data')."""
    from tasks.reference.tile import legend_of

    return {c.code: c.name for c in legend_of(state.config.reference) if c.code != 0}


def _check_geometry(geojson: dict, original_geojson: str) -> str:
    try:
        geometry = shapely.from_geojson(json.dumps(geojson))
    except Exception:  # noqa: BLE001 - shapely raises several kinds for bad GeoJSON
        raise HTTPException(422, "body field 'geometry': not a GeoJSON geometry") from None
    if geometry.geom_type not in ("Polygon", "MultiPolygon"):
        raise HTTPException(422, f"body field 'geometry': must be a Polygon or MultiPolygon, not {geometry.geom_type}")
    if shapely.get_num_coordinates(geometry) > MAX_VERTICES:
        raise HTTPException(422, f"body field 'geometry': more than {MAX_VERTICES} vertices")
    minx, miny, maxx, maxy = geometry.bounds
    if geometry.is_empty or not (-180 <= minx <= maxx <= 180 and -90 <= miny <= maxy <= 90):
        raise HTTPException(422, "body field 'geometry': empty, or outside lon -180..180, lat -90..90 (CRS84)")
    if not geometry.is_valid:
        raise HTTPException(422, f"body field 'geometry': invalid polygon ({shapely.is_valid_reason(geometry)})")
    original = shapely.from_geojson(original_geojson)
    if not geometry.intersects(original.envelope.buffer(0.01)):
        raise HTTPException(422, "body field 'geometry': does not overlap the change it corrects")
    return shapely.to_geojson(geometry)


def check_decision(state: ServeState, body: DecisionBody, change: dict) -> str | None:
    """Check a decision against the legend and the change; the edited geometry as GeoJSON text, if any."""
    if body.decision != "corrected":
        given = [n for n in ("class_from", "class_to", "geometry") if getattr(body, n) is not None]
        if given:
            raise HTTPException(422, f"body field(s) {given} only go with decision 'corrected', not {body.decision!r}")
        return None
    classes = legend(state)
    for name in ("class_from", "class_to"):
        code = getattr(body, name)
        if code is None:
            raise HTTPException(422, f"body field {name!r}: a correction names the right classes (one of {classes})")
        if code not in classes:
            raise HTTPException(422, f"body field {name!r}: class {code} is not in the legend {classes}")
    if body.class_from == body.class_to:
        raise HTTPException(
            422, "body fields 'class_from' and 'class_to' are equal: a change that is not one is 'rejected'"
        )
    return _check_geometry(body.geometry, change["geometry"]) if body.geometry is not None else None


# ------------------------------------------------------------------------------------------ derivation


def derive(decisions: list[dict]) -> dict:
    """The state of a change from its decisions (oldest first); see the module doc."""
    last_resolution = max((i for i, d in enumerate(decisions) if d["kind"] == "resolution"), default=None)
    later = decisions if last_resolution is None else decisions[last_resolution + 1 :]
    latest: dict[str, dict] = {}
    for d in later:
        if d["kind"] == "review":
            latest[d["reviewer"]] = d
    votes = list(latest.values())
    if last_resolution is not None:
        votes.insert(0, decisions[last_resolution])
    state = {
        "version": len(decisions),
        "status": "unreviewed",
        "agreement": "none",
        "class_from": None,
        "class_to": None,
        "geometry": None,
        "reviewers": ",".join(sorted({d["reviewer"] for d in decisions if d["kind"] == "review"})),
        "resolved_by": None,
    }
    counted = [v for v in votes if v["decision"] != "unsure"]
    if not votes:
        return state
    if not counted:
        return {**state, "status": "unsure"}

    def key(v):
        return (v["decision"], v["class_from"], v["class_to"]) if v["decision"] == "corrected" else (v["decision"],)

    if len({key(v) for v in counted}) > 1:
        return {**state, "status": "conflict", "agreement": "conflict"}
    first = counted[0]
    if last_resolution is not None:
        agreement = "resolved"
        state["resolved_by"] = decisions[last_resolution]["reviewer"]
    else:
        agreement = "single" if len(counted) == 1 else "agreement"
    edited = [v["geometry"] for v in sorted(counted, key=lambda v: v["id"]) if v["geometry"]]
    return {
        **state,
        "status": first["decision"],
        "agreement": agreement,
        "class_from": first["class_from"],
        "class_to": first["class_to"],
        "geometry": edited[-1] if edited else None,
    }


def _state_row(conn: Conn, product: str, change_id: str, lock: bool) -> dict | None:
    suffix = " FOR UPDATE" if lock and conn.kind == "postgis" else ""
    return conn.one(
        f"SELECT version, status, agreement, class_from, class_to, reviewers, resolved_by, orphaned "
        f"FROM {conn.t('change_reviews')} WHERE product = ? AND change_id = ?{suffix}",
        (product, change_id),
    )


def review_state(conn: Conn, product: str, change_id: str) -> dict:
    row = _state_row(conn, product, change_id, lock=False) or {
        "version": 0,
        "status": "unreviewed",
        "agreement": "none",
    }
    decisions = history(conn, product, change_id)
    return {"change_id": change_id, **row, "orphaned": bool(row.get("orphaned")), "history": decisions}


def record_decision(
    state: ServeState, layer: Layer, change_id: str, body: DecisionBody, user: User, kind: str = "review"
) -> dict:
    """Append one decision and rederive the change's state, in one transaction; 409 on a stale version."""
    with open_layer(state, layer, write=True) as conn:
        change = find_change(state, layer, change_id, conn=conn)
        geometry = check_decision(state, body, change)
        now = utcnow()
        # A row to lock, so that concurrent decisions on one change queue up (PostGIS; SQLite's lock is global).
        conn.run(
            f"INSERT INTO {conn.t('change_reviews')} (product, change_id, year_from, year_to, version, status, "
            "agreement, reviewers, updated_at) VALUES (?, ?, ?, ?, 0, 'unreviewed', 'none', '', ?) "
            "ON CONFLICT (product, change_id) DO NOTHING",
            (layer.product, change_id, *layer.years, now),
        )
        current = _state_row(conn, layer.product, change_id, lock=True)
        if kind == "resolution" and current["status"] != "conflict":
            raise HTTPException(
                409, f"change {change_id!r} is not in conflict (its status is {current['status']}): nothing to resolve"
            )
        if body.version != current["version"]:
            detail = {
                "detail": f"stale version {body.version}: change {change_id!r} is at version {current['version']} "
                "(someone decided meanwhile); review its current state and decide again",
                "current": review_state(conn, layer.product, change_id),
            }
            raise HTTPException(409, detail)
        conn.run(
            f"INSERT INTO {conn.t('decisions')} (product, year_from, year_to, change_id, kind, reviewer, decision, "
            "class_from, class_to, geometry, comment, version, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                layer.product,
                *layer.years,
                change_id,
                kind,
                user.username,
                body.decision,
                body.class_from,
                body.class_to,
                geometry,
                body.comment,
                body.version,
                now,
            ),
        )
        decisions = history(conn, layer.product, change_id)
        for d in decisions:
            d["geometry"] = json.dumps(d["geometry"]) if d["geometry"] else None
        derived = derive(decisions)
        conn.run(
            f"UPDATE {conn.t('change_reviews')} SET version = ?, status = ?, agreement = ?, class_from = ?, "
            "class_to = ?, geometry = ?, reviewers = ?, resolved_by = ?, updated_at = ? "
            "WHERE product = ? AND change_id = ?",
            (
                derived["version"],
                derived["status"],
                derived["agreement"],
                derived["class_from"],
                derived["class_to"],
                derived["geometry"],
                derived["reviewers"],
                derived["resolved_by"],
                now,
                layer.product,
                change_id,
            ),
        )
        return review_state(conn, layer.product, change_id)


# ---------------------------------------------------------------------------------------------- export


def export_frame(state: ServeState, layer: Layer):
    """Confirmed and corrected changes of a layer: final classes, reviewers, and the edited outline if any."""
    import geopandas as gpd
    import pandas as pd

    rows, _ = run_query(state, layer, ChangeQuery(status=list(EXPORTED)), sort="id", count=False)
    names = legend(state)
    records, geometries = [], []
    for row in rows:
        corrected = row["status"] == "corrected"
        class_from = row["reviewed_class_from"] if corrected else row["class_from"]
        class_to = row["reviewed_class_to"] if corrected else row["class_to"]
        records.append(
            {
                "change_id": row["change_id"],
                "tile_id": row["tile_id"],
                "year_from": row["year_from"],
                "year_to": row["year_to"],
                "status": row["status"],
                "class_from": class_from,
                "class_to": class_to,
                "class_from_name": names.get(class_from, str(class_from)),
                "class_to_name": names.get(class_to, str(class_to)),
                "detected_class_from": row["class_from"],
                "detected_class_to": row["class_to"],
                "area_m2": row["area_m2"],
                "score": row["score"],
                "agreement": row["agreement"],
                "reviewers": row["reviewers"] or "",
                "decisions": row["version"],
                "geometry_edited": bool(row["reviewed_geometry"]),
            }
        )
        geometries.append(shapely.from_geojson(row["reviewed_geometry"] or row["geometry"]))
    columns = list(records[0]) if records else ["change_id", "status", "class_from", "class_to"]
    frame = pd.DataFrame.from_records(records, columns=columns)
    return gpd.GeoDataFrame(frame, geometry=gpd.GeoSeries(geometries, crs="EPSG:4326"), crs="EPSG:4326")


def export_bytes(frame, fmt: str) -> bytes:
    if fmt == "csv":
        out = io.StringIO()
        table = frame.drop(columns="geometry").assign(geometry_wkt=[g.wkt for g in frame.geometry])
        table.to_csv(out, index=False, quoting=csv.QUOTE_MINIMAL)
        return out.getvalue().encode()
    with tempfile.TemporaryDirectory(prefix="lcms-export-") as tmp:
        path = Path(tmp) / "reviews.gpkg"
        frame.to_file(path, layer="reviewed_changes", driver="GPKG", engine="pyogrio", geometry_type="MultiPolygon")
        return path.read_bytes()


# ---------------------------------------------------------------------------------------------- routes

router = APIRouter(prefix="/changes/collections/{collection_id}", tags=["reviews"])


@router.get("/items/{change_id}/reviews", summary="A change's review state and full decision history")
def get_reviews(collection_id: str, change_id: str, user: Viewer, state: StateDep):
    layer = state.layers.require(collection_id)
    with state.db.transaction(write=False) as conn:
        found = review_state(conn, layer.product, change_id[:64])
    if found["version"] == 0:
        find_change(state, layer, change_id[:64])  # 404 for a change that is not there and was never reviewed
    return found


@router.post("/items/{change_id}/reviews", status_code=201, summary="Decide on a change (operator)")
def post_review(
    collection_id: str,
    change_id: str,
    body: DecisionBody,
    user: Operator,
    state: StateDep,
):
    layer = state.layers.require(collection_id)
    return record_decision(state, layer, change_id[:64], body, user)


@router.post("/items/{change_id}/resolution", status_code=201, summary="Resolve a conflict (admin)")
def post_resolution(
    collection_id: str,
    change_id: str,
    body: DecisionBody,
    user: Admin,
    state: StateDep,
):
    layer = state.layers.require(collection_id)
    return record_decision(state, layer, change_id[:64], body, user, kind="resolution")


@router.get("/reviews", summary="Review states of a collection's changes; orphaned=true for those whose change is gone")
def list_reviews(
    collection_id: str,
    user: Viewer,
    state: StateDep,
    orphaned: Annotated[bool | None, Query()] = None,
    status: Annotated[Literal[("confirmed", "rejected", "corrected", "unsure", "conflict")] | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=100_000)] = 1000,
    offset: Annotated[int, Query(ge=0)] = 0,
):
    layer = state.layers.require(collection_id)
    clauses, params = ["product = ? AND year_from = ? AND year_to = ? AND version > 0"], [layer.product, *layer.years]
    if orphaned is not None:
        clauses.append("orphaned = ?")
        params.append(int(orphaned))
    if status is not None:
        clauses.append("status = ?")
        params.append(status)
    with state.db.transaction(write=False) as conn:
        rows = conn.rows(
            f"SELECT change_id, version, status, agreement, class_from, class_to, reviewers, resolved_by, updated_at, "
            f"orphaned, orphaned_at FROM {conn.t('change_reviews')} WHERE {' AND '.join(clauses)} "
            "ORDER BY change_id LIMIT ? OFFSET ?",
            (*params, limit, offset),
        )
    for row in rows:
        row["orphaned"] = bool(row["orphaned"])
        row["reviewers"] = [r for r in (row["reviewers"] or "").split(",") if r]
    return {"collection": layer.collection_id, "reviews": rows}


@router.get(
    "/export",
    summary="Confirmed and corrected changes as GeoPackage or CSV",
    response_class=Response,
    responses={200: {"content": {"application/geopackage+sqlite3": {}, "text/csv": {}}}},
)
def export(
    collection_id: str,
    user: Viewer,
    state: StateDep,
    format: Annotated[Literal["gpkg", "csv"], Query()] = "gpkg",
):
    layer = state.layers.require(collection_id)
    data = export_bytes(export_frame(state, layer), format)
    media = "text/csv" if format == "csv" else "application/geopackage+sqlite3"
    name = f"{layer.collection_id}-reviewed.{format}"
    return Response(data, media_type=media, headers={"Content-Disposition": f'attachment; filename="{name}"'})
