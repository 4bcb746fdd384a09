"""Accuracy sample queues in the Validation Tool: operators label sample points without seeing the map.

`lcms sample-design` draws a stratified random sample of map pixels (tasks/accuracy/) and loads it here
with `load_design`: a row per point in ``lcms_sample_points`` (its stratum and map class are kept for the
analysis, and never sent by these routes). Operators give each point's reference class (one year) or its
classes in both years (a pair of years); every label is a new row of ``lcms_sample_labels`` (a label is
never overwritten: the latest per reviewer and point counts, and the latest of all is the point's label).
`lcms accuracy` reads them back with `labelled_records`.

Routes (the least role in brackets; state-changing ones need the CSRF token, see auth.py):

- ``GET /samples`` [viewer]: the sample designs with their progress;
- ``GET /samples/{design_id}/queue`` [viewer]: the points in the design's random order, with lon/lat, whether
  they are labelled and by whom, never the map's class or the stratum;
- ``POST /samples/{design_id}/points/{sample_id}/labels`` [operator]: a label.

Every point carries a ``source``: ``probability`` for the design's own points. Points of another source
(picked by an operator or by active learning) may live in the same table but never enter the estimates
(tasks/accuracy/products.py `probability_records`).
"""

from __future__ import annotations

import json

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel, Field

from lcms.serve.auth import Operator, Viewer
from lcms.serve.db import Conn, utcnow
from lcms.serve.state import StateDep

router = APIRouter(prefix="/samples", tags=["accuracy samples"])

_TABLES = """
CREATE TABLE IF NOT EXISTS {p}lcms_sample_designs (
    design_id TEXT PRIMARY KEY, product TEXT NOT NULL, sample_key TEXT NOT NULL, kind TEXT NOT NULL,
    design TEXT NOT NULL, loaded_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS {p}lcms_sample_points (
    design_id TEXT NOT NULL, sample_id INTEGER NOT NULL, source TEXT NOT NULL, stratum INTEGER NOT NULL,
    map_class TEXT NOT NULL, lon DOUBLE PRECISION NOT NULL, lat DOUBLE PRECISION NOT NULL, point TEXT NOT NULL,
    PRIMARY KEY (design_id, sample_id)
);
CREATE TABLE IF NOT EXISTS {p}lcms_sample_labels (
    id {id}, design_id TEXT NOT NULL, sample_id INTEGER NOT NULL, reviewer TEXT NOT NULL,
    reference_class INTEGER, reference_from INTEGER, reference_to INTEGER, comment TEXT NOT NULL DEFAULT '',
    created_at TEXT NOT NULL
);
"""


def ensure_tables(db) -> None:
    """Create the sample tables if missing (both backends); once per database handle."""
    if getattr(db, "_sample_tables_ready", False):
        return
    with db.transaction() as conn:
        if conn.kind == "sqlite":
            sql = _TABLES.format(p="", id="INTEGER PRIMARY KEY AUTOINCREMENT")
        else:
            sql = _TABLES.format(p=f'"{conn.schema}".', id="bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY")
        for statement in filter(str.strip, sql.split(";")):
            conn.run(statement)
    db._sample_tables_ready = True


def load_design(db, design: dict, points: list[dict], source: str = "probability") -> int:
    """Load a design and its points as a queue (nothing if that design is loaded already); the points added."""
    ensure_tables(db)
    with db.transaction() as conn:
        if conn.one(f"SELECT 1 AS x FROM {conn.t('sample_designs')} WHERE design_id = ?", (design["design_id"],)):
            return 0
        conn.run(
            f"INSERT INTO {conn.t('sample_designs')} (design_id, product, sample_key, kind, design, loaded_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (design["design_id"], design["product"], design["key"], design["kind"], json.dumps(design), utcnow()),
        )
        for p in points:
            map_class = p.get("map_class", f"{p.get('map_class_from')}-{p.get('map_class_to')}")
            conn.run(
                f"INSERT INTO {conn.t('sample_points')} "
                "(design_id, sample_id, source, stratum, map_class, lon, lat, point) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    design["design_id"],
                    int(p["sample_id"]),
                    source,
                    int(p["stratum"]),
                    str(map_class),
                    float(p["lon"]),
                    float(p["lat"]),
                    json.dumps(p),
                ),
            )
    return len(points)


def add_points(db, design_id: str, points: list[dict], source: str) -> None:
    """Add points of another source (an operator's or active learning's picks) to a design's table."""
    ensure_tables(db)
    with db.transaction() as conn:
        for p in points:
            conn.run(
                f"INSERT INTO {conn.t('sample_points')} "
                "(design_id, sample_id, source, stratum, map_class, lon, lat, point) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    design_id,
                    int(p["sample_id"]),
                    source,
                    int(p["stratum"]),
                    str(p.get("map_class", "")),
                    float(p["lon"]),
                    float(p["lat"]),
                    json.dumps(p),
                ),
            )


def _latest_labels(conn: Conn, design_id: str) -> dict[int, dict]:
    rows = conn.rows(
        f"SELECT sample_id, reviewer, reference_class, reference_from, reference_to, comment, created_at "
        f"FROM {conn.t('sample_labels')} WHERE design_id = ? ORDER BY id",
        (design_id,),
    )
    return {r["sample_id"]: r for r in rows}  # the latest label of each point wins


def labelled_records(db, design_id: str) -> list[dict]:
    """Every labelled point of a design's table (any source), with its stratum, source and latest label."""
    ensure_tables(db)
    with db.transaction(write=False) as conn:
        labels = _latest_labels(conn, design_id)
        points = conn.rows(
            f"SELECT design_id, sample_id, source, stratum, map_class, lon, lat FROM {conn.t('sample_points')} "
            "WHERE design_id = ? ORDER BY sample_id",
            (design_id,),
        )
    records = []
    for p in points:
        label = labels.get(p["sample_id"])
        if label is not None:
            records.append(
                {
                    **p,
                    **{
                        k: label[k]
                        for k in ("reference_class", "reference_from", "reference_to", "reviewer", "created_at")
                    },
                }
            )
    return records


def _design(conn: Conn, design_id: str) -> dict:
    row = conn.one(f"SELECT design FROM {conn.t('sample_designs')} WHERE design_id = ?", (design_id,))
    if row is None:
        raise HTTPException(404, f"no sample design {design_id!r}: GET /samples lists them")
    return json.loads(row["design"])


@router.get("", summary="The accuracy sample designs, with their labelling progress")
def list_designs(user: Viewer, state: StateDep):
    ensure_tables(state.db)
    with state.db.transaction(write=False) as conn:
        designs = conn.rows(
            f"SELECT design_id, product, sample_key, kind, loaded_at FROM {conn.t('sample_designs')} ORDER BY loaded_at"
        )
        for d in designs:
            d["points"] = conn.one(
                f"SELECT COUNT(*) AS n FROM {conn.t('sample_points')} WHERE design_id = ? AND source = 'probability'",
                (d["design_id"],),
            )["n"]
            d["labelled"] = len(_latest_labels(conn, d["design_id"]))
    return {"designs": designs}


@router.get("/{design_id}/queue", summary="A design's points to label, without the map's class")
def queue(
    design_id: str,
    user: Viewer,
    state: StateDep,
    unlabelled: bool = Query(False, description="only the points nobody labelled yet"),
    limit: int = Query(100, ge=1, le=10_000),
    offset: int = Query(0, ge=0),
):
    ensure_tables(state.db)
    with state.db.transaction(write=False) as conn:
        design = _design(conn, design_id)
        labels = _latest_labels(conn, design_id)
        points = conn.rows(
            f"SELECT sample_id, lon, lat FROM {conn.t('sample_points')} WHERE design_id = ? "
            "AND source = 'probability' ORDER BY sample_id",
            (design_id,),
        )
    items = []
    for p in points:
        label = labels.get(p["sample_id"])
        if unlabelled and label is not None:
            continue
        items.append({**p, "labelled": label is not None, "labelled_by": label["reviewer"] if label else None})
    return {
        "design_id": design_id,
        "kind": design["kind"],
        "years": design["years"],
        "classes": design["reference_classes"],
        "asks": "reference_class" if design["kind"] == "map" else "reference_from and reference_to",
        "total": len(points),
        "labelled": len(labels),
        "points": items[offset : offset + limit],
    }


class LabelBody(BaseModel):
    reference_class: int | None = Field(None, description="one year's sample: the class seen at the point")
    reference_from: int | None = Field(None, description="a pair of years' sample: the class in the first year")
    reference_to: int | None = Field(None, description="a pair of years' sample: the class in the second year")
    comment: str = Field("", max_length=2000)


@router.post("/{design_id}/points/{sample_id}/labels", summary="Label a sample point (its reference class)")
def label_point(design_id: str, sample_id: int, body: LabelBody, user: Operator, state: StateDep):
    ensure_tables(state.db)
    with state.db.transaction() as conn:
        design = _design(conn, design_id)
        if not conn.one(
            f"SELECT 1 AS x FROM {conn.t('sample_points')} WHERE design_id = ? AND sample_id = ?",
            (design_id, sample_id),
        ):
            raise HTTPException(404, f"design {design_id!r} has no point {sample_id}")
        classes = {int(k) for k in design["reference_classes"]}
        wanted = ("reference_class",) if design["kind"] == "map" else ("reference_from", "reference_to")
        needs = f"this {design['kind']} sample needs {' and '.join(wanted)}"
        for name in ("reference_class", "reference_from", "reference_to"):
            value = getattr(body, name)
            if (name in wanted) != (value is not None):
                raise HTTPException(422, f"body field {name!r}: {needs}")
            if value is not None and value not in classes:
                raise HTTPException(422, f"body field {name!r}: class {value} is not in the legend {sorted(classes)}")
        conn.run(
            f"INSERT INTO {conn.t('sample_labels')} (design_id, sample_id, reviewer, reference_class, reference_from, "
            "reference_to, comment, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                design_id,
                sample_id,
                user.username,
                body.reference_class,
                body.reference_from,
                body.reference_to,
                body.comment,
                utcnow(),
            ),
        )
        labelled = len(_latest_labels(conn, design_id))
    return {"design_id": design_id, "sample_id": sample_id, "reviewer": user.username, "labelled": labelled}
