"""Sample queues in the Validation Tool: probability samples for accuracy, and active learning's "label next".

`lcms sample-design` draws a stratified random sample of map pixels (tasks/accuracy/) and loads it here
with `load_design`: a row per point in ``lcms_sample_points`` (its stratum and map class are kept for the
analysis, and never sent by these routes). Operators give each point's reference class (one year) or its
classes in both years (a pair of years); every label is a new row of ``lcms_sample_labels`` (a label is
never overwritten: the latest per reviewer and point counts, and the latest of all is the point's label).
`lcms accuracy` reads them back with `labelled_records`.

A design of kind ``active`` (`lcms label-next`) is a "label next" queue: labelling units picked by active
learning (source ``active``), each with its ``unit`` (a GeoJSON polygon in WGS84, the block or superpixel to
label). Its labels are training data, not an estimate, so its points also carry the model's
``predicted_class`` (the app shows it only on request); a probability sample's points never do: an operator
who saw the map's class would no longer be an independent reference. Every other kind is a probability
sample. A point's optional ``unit`` is stored for any kind (nullable column ``unit``, added by
``ALTER TABLE`` to databases made before it).

Routes (the least role in brackets; state-changing ones need the CSRF token, see auth.py):

- ``GET /samples`` [viewer]: the designs with their progress (labelled / total, and by whom);
- ``GET /samples/{design_id}/queue`` [viewer]: the points in the design's order, with lon/lat (and the unit
  when there is one), whether they are labelled and by whom, never the map's class or the stratum;
- ``GET /samples/{design_id}/next`` [viewer]: the first point in the design's order that nobody has labelled
  (``mine=1``: that this user has not labelled, for a second opinion), after ``after`` and wrapping around
  (so a skipped point comes back at the end); ``{"done": true}`` when none is left;
- ``POST /samples/{design_id}/points/{sample_id}/labels`` [operator]: a label.

Every point carries a ``source``: ``probability`` for a probability design's own points, ``active`` for
an active queue's. Points of another source (picked by an operator) may live in the same table but are
not in the queue and never enter the estimates (tasks/accuracy/products.py `probability_records`).
"""

from __future__ import annotations

import json
from collections import Counter

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel, Field

from lcms.legend import LULC_NAMES, NO_DATA
from lcms.serve.auth import Operator, Viewer
from lcms.serve.db import Conn, utcnow
from lcms.serve.state import StateDep

router = APIRouter(prefix="/samples", tags=["sample queues"])

ACTIVE = "active"  # the design kind, and its points' source, of active learning's "label next" queues
PROBABILITY = "probability"

_TABLES = """
CREATE TABLE IF NOT EXISTS {p}lcms_sample_designs (
    design_id TEXT PRIMARY KEY, product TEXT NOT NULL, sample_key TEXT NOT NULL, kind TEXT NOT NULL,
    design TEXT NOT NULL, loaded_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS {p}lcms_sample_points (
    design_id TEXT NOT NULL, sample_id INTEGER NOT NULL, source TEXT NOT NULL, stratum INTEGER NOT NULL,
    map_class TEXT NOT NULL, lon DOUBLE PRECISION NOT NULL, lat DOUBLE PRECISION NOT NULL, point TEXT NOT NULL,
    unit TEXT,
    PRIMARY KEY (design_id, sample_id)
);
CREATE TABLE IF NOT EXISTS {p}lcms_sample_labels (
    id {id}, design_id TEXT NOT NULL, sample_id INTEGER NOT NULL, reviewer TEXT NOT NULL,
    reference_class INTEGER, reference_from INTEGER, reference_to INTEGER, comment TEXT NOT NULL DEFAULT '',
    created_at TEXT NOT NULL
);
"""


def _has_unit_column(conn: Conn) -> bool:
    if conn.kind == "sqlite":
        return any(r["name"] == "unit" for r in conn.rows("PRAGMA table_info(lcms_sample_points)"))
    return bool(
        conn.one(
            "SELECT 1 AS x FROM information_schema.columns WHERE table_schema = ? AND table_name = "
            "'lcms_sample_points' AND column_name = 'unit'",
            (conn.schema,),
        )
    )


def ensure_tables(db) -> None:
    """Create the sample tables if missing, and add the ``unit`` column to an older points table (both
    backends); once per database handle."""
    if getattr(db, "_sample_tables_ready", False):
        return
    with db.transaction() as conn:
        if conn.kind == "sqlite":
            sql = _TABLES.format(p="", id="INTEGER PRIMARY KEY AUTOINCREMENT")
        else:
            sql = _TABLES.format(p=f'"{conn.schema}".', id="bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY")
        for statement in filter(str.strip, sql.split(";")):
            conn.run(statement)
        if not _has_unit_column(conn):  # a database made before units existed
            conn.run(f"ALTER TABLE {conn.t('sample_points')} ADD COLUMN unit TEXT")
    db._sample_tables_ready = True


def _unit_text(point: dict) -> str | None:
    """A point's labelling unit as stored: GeoJSON text, or None."""
    unit = point.get("unit")
    if unit is None or unit == "":
        return None
    if isinstance(unit, str):  # already GeoJSON text (a points.csv read back)
        unit = json.loads(unit)
    if not isinstance(unit, dict) or "type" not in unit or "coordinates" not in unit:
        raise ValueError(f"sample point {point.get('sample_id')}: 'unit' must be a GeoJSON geometry, not {unit!r}")
    return json.dumps(unit)


def _insert_points(conn: Conn, design_id: str, points: list[dict], source: str, map_class_of) -> None:
    for p in points:
        conn.run(
            f"INSERT INTO {conn.t('sample_points')} (design_id, sample_id, source, stratum, map_class, lon, lat, "
            "point, unit) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                design_id,
                int(p["sample_id"]),
                source,
                int(p["stratum"]),
                str(map_class_of(p)),
                float(p["lon"]),
                float(p["lat"]),
                json.dumps(p),
                _unit_text(p),
            ),
        )


def load_design(db, design: dict, points: list[dict], source: str = PROBABILITY) -> int:
    """Load a design and its points as a queue (nothing if that design is loaded already); the points added.

    A point may carry ``"unit"``: its labelling unit, a GeoJSON geometry in WGS84 (a dict, or its JSON text)."""
    ensure_tables(db)
    with db.transaction() as conn:
        if conn.one(f"SELECT 1 AS x FROM {conn.t('sample_designs')} WHERE design_id = ?", (design["design_id"],)):
            return 0
        stored = {**design, "queue_source": source}  # which points make the queue (see `_queue_source`)
        conn.run(
            f"INSERT INTO {conn.t('sample_designs')} (design_id, product, sample_key, kind, design, loaded_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (design["design_id"], design["product"], design["key"], design["kind"], json.dumps(stored), utcnow()),
        )
        _insert_points(
            conn,
            design["design_id"],
            points,
            source,
            lambda p: p.get("map_class", f"{p.get('map_class_from')}-{p.get('map_class_to')}"),
        )
    return len(points)


def add_points(db, design_id: str, points: list[dict], source: str) -> None:
    """Add points of another source (an operator's or active learning's picks) to a design's table."""
    ensure_tables(db)
    with db.transaction() as conn:
        _insert_points(conn, design_id, points, source, lambda p: p.get("map_class", ""))


def _latest_labels(conn: Conn, design_id: str) -> dict[int, dict]:
    rows = conn.rows(
        f"SELECT sample_id, reviewer, reference_class, reference_from, reference_to, comment, created_at "
        f"FROM {conn.t('sample_labels')} WHERE design_id = ? ORDER BY id",
        (design_id,),
    )
    return {r["sample_id"]: r for r in rows}  # the latest label of each point wins


def _labellers(conn: Conn, design_id: str) -> dict[int, set[str]]:
    """Who labelled each point (anyone who ever did)."""
    rows = conn.rows(
        f"SELECT DISTINCT sample_id, reviewer FROM {conn.t('sample_labels')} WHERE design_id = ?", (design_id,)
    )
    found: dict[int, set[str]] = {}
    for r in rows:
        found.setdefault(r["sample_id"], set()).add(r["reviewer"])
    return found


def _geometry(text: str | None) -> dict | None:
    return json.loads(text) if text else None


def labelled_records(db, design_id: str) -> list[dict]:
    """Every labelled point of a design's table (any source), with its stratum, source, unit (GeoJSON or None)
    and latest label."""
    ensure_tables(db)
    with db.transaction(write=False) as conn:
        labels = _latest_labels(conn, design_id)
        points = conn.rows(
            f"SELECT design_id, sample_id, source, stratum, map_class, lon, lat, unit FROM {conn.t('sample_points')} "
            "WHERE design_id = ? ORDER BY sample_id",
            (design_id,),
        )
    records = []
    for p in points:
        label = labels.get(p["sample_id"])
        if label is not None:
            p["unit"] = _geometry(p["unit"])
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


def _queue_source(design: dict) -> str:
    """The source of the points that make the design's queue (designs loaded before it was recorded: by kind)."""
    return design.get("queue_source") or (ACTIVE if design["kind"] == ACTIVE else PROBABILITY)


def _asks(design: dict) -> tuple[str, ...]:
    """The label fields a point of this design needs: one class for one year, both classes for a pair."""
    return ("reference_class",) if len(design.get("years") or [None]) == 1 else ("reference_from", "reference_to")


def _classes(design: dict, state) -> dict[str, str]:
    """The classes an operator may give: the design's, else the run's reference legend, else the LULC legend."""
    if design.get("reference_classes"):
        return {str(k): v for k, v in design["reference_classes"].items()}
    legend = state.config.reference.legend
    if legend:
        return {str(e.code): e.name for e in legend}
    return {str(k): v for k, v in LULC_NAMES.items() if k != NO_DATA}


def _queue_points(conn: Conn, design_id: str, design: dict) -> list[dict]:
    return conn.rows(
        f"SELECT sample_id, lon, lat, map_class, unit FROM {conn.t('sample_points')} WHERE design_id = ? "
        "AND source = ? ORDER BY sample_id",
        (design_id, _queue_source(design)),
    )


def _public(point: dict, design: dict) -> dict:
    """A queue point as the routes send it: never the map's class of a probability sample."""
    shown = {"sample_id": point["sample_id"], "lon": point["lon"], "lat": point["lat"]}
    if point["unit"]:
        shown["unit"] = _geometry(point["unit"])
    if design["kind"] == ACTIVE:
        shown["predicted_class"] = int(point["map_class"]) if str(point["map_class"]).isdigit() else None
    return shown


@router.get("", summary="The sample designs (accuracy samples and label-next queues), with their progress")
def list_designs(user: Viewer, state: StateDep):
    ensure_tables(state.db)
    with state.db.transaction(write=False) as conn:
        rows = conn.rows(
            f"SELECT design_id, product, sample_key, kind, design, loaded_at FROM {conn.t('sample_designs')} "
            "ORDER BY loaded_at, design_id"
        )
        designs = []
        for row in rows:
            design = json.loads(row.pop("design"))
            ids = {p["sample_id"] for p in _queue_points(conn, row["design_id"], design)}
            labels = {k: v for k, v in _latest_labels(conn, row["design_id"]).items() if k in ids}
            by = Counter(label["reviewer"] for label in labels.values())
            designs.append(
                {
                    **row,
                    "years": design.get("years"),
                    "queue": "label next" if design["kind"] == ACTIVE else "probability sample",
                    "points": len(ids),
                    "labelled": len(labels),
                    "labelled_by": dict(sorted(by.items())),
                }
            )
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
        points = _queue_points(conn, design_id, design)
    items = []
    for p in points:
        label = labels.get(p["sample_id"])
        if unlabelled and label is not None:
            continue
        items.append(
            {**_public(p, design), "labelled": label is not None, "labelled_by": label["reviewer"] if label else None}
        )
    return {
        "design_id": design_id,
        "kind": design["kind"],
        "years": design.get("years"),
        "classes": _classes(design, state),
        "asks": " and ".join(_asks(design)),
        "total": len(points),
        "labelled": sum(p["sample_id"] in labels for p in points),
        "points": items[offset : offset + limit],
    }


@router.get("/{design_id}/next", summary="The next point to label in the design's order ({done: true} when none)")
def next_point(
    design_id: str,
    user: Viewer,
    state: StateDep,
    mine: bool = Query(False, description="the next point I have not labelled (others may have): a second opinion"),
    after: int = Query(0, ge=0, description="start after this sample_id (a skipped point), wrapping around"),
):
    ensure_tables(state.db)
    with state.db.transaction(write=False) as conn:
        design = _design(conn, design_id)
        labellers = _labellers(conn, design_id)
        points = _queue_points(conn, design_id, design)
    if mine:
        left = [p for p in points if user.username not in labellers.get(p["sample_id"], ())]
    else:
        left = [p for p in points if p["sample_id"] not in labellers]
    progress = {"design_id": design_id, "total": len(points), "remaining": len(left)}
    if not left:
        return {"done": True, **progress}
    point = next((p for p in left if p["sample_id"] > after), left[0])  # wrap around: skipped points come back
    return {
        "done": False,
        **progress,
        "position": next(i for i, p in enumerate(points) if p["sample_id"] == point["sample_id"]) + 1,
        "point": {**_public(point, design), "labelled_by": sorted(labellers.get(point["sample_id"], ()))},
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
        classes = {int(k) for k in _classes(design, state)}
        wanted = _asks(design)
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
        ids = {p["sample_id"] for p in _queue_points(conn, design_id, design)}
        labelled = sum(k in ids for k in _latest_labels(conn, design_id))
    return {"design_id": design_id, "sample_id": sample_id, "reviewer": user.username, "labelled": labelled}
