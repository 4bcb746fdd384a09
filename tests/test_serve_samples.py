"""The sample queues' API (lcms/serve/samples.py) on a real `lcms serve` over the embedded database.

The database starts as one made before labelling units existed: its ``lcms_sample_points`` table is
created here with the old columns (no ``unit``) and holds a design loaded then. The service adds the
column when it first touches the tables; the old design keeps working. Then a probability sample
(points inserted out of order) and an active-learning "label next" queue (each point with its unit
polygon) are loaded with `load_design`, as `lcms sample-design` and `lcms label-next` do.
What the routes answer is compared with what was loaded and with the database read with sqlite3.
"""

from __future__ import annotations

import json
import random
import sqlite3

import pytest
from serve_support import PASSWORD, Client, Server, make_change_store

from lcms.config import PostgisConfig
from lcms.legend import LULC_NAMES
from lcms.serve.db import PostgisDatabase, open_database
from lcms.serve.samples import labelled_records, load_design
from lcms.serve.users import add_user

USERS = {"vera": "viewer", "olga": "operator", "oscar": "operator"}
CLASSES = {"1": "cultivated land", "2": "forest", "3": "grassland"}
# The table as the service made it before units (lcms/serve/samples.py before the `unit` column).
OLD_POINTS_TABLE = (
    "CREATE TABLE lcms_sample_points (design_id TEXT NOT NULL, sample_id INTEGER NOT NULL, source TEXT NOT NULL, "
    "stratum INTEGER NOT NULL, map_class TEXT NOT NULL, lon DOUBLE PRECISION NOT NULL, lat DOUBLE PRECISION NOT NULL, "
    "point TEXT NOT NULL, PRIMARY KEY (design_id, sample_id))"
)
OLD_DESIGNS_TABLE = (
    "CREATE TABLE lcms_sample_designs (design_id TEXT PRIMARY KEY, product TEXT NOT NULL, sample_key TEXT NOT NULL, "
    "kind TEXT NOT NULL, design TEXT NOT NULL, loaded_at TEXT NOT NULL)"
)


def design(design_id: str, kind: str, **extra) -> dict:
    return {
        "design_id": design_id,
        "product": "land-cover",
        "key": f"{kind}-2024",
        "kind": kind,
        "years": [2024],
        **extra,
    }


def probability_points(n: int) -> list[dict]:
    """n points of a stratified sample: stratum = map class, in a shuffled insertion order."""
    points = [
        {"sample_id": i, "stratum": 1 + i % 3, "map_class": 1 + i % 3, "lon": 14.49 + i * 1e-3, "lat": 45.97, "row": i}
        for i in range(1, n + 1)
    ]
    random.Random(3).shuffle(points)
    return points


def square(lon: float, lat: float, half: float = 2e-4) -> dict:
    ring = [[lon - half, lat - half], [lon + half, lat - half], [lon + half, lat + half], [lon - half, lat + half]]
    return {"type": "Polygon", "coordinates": [[*ring, ring[0]]]}


def active_points(n: int) -> list[dict]:
    return [
        {
            "sample_id": i,
            "stratum": 2,
            "map_class": 2 if i % 2 else 5,  # the model's (predicted) class
            "lon": 14.5 + i * 1e-3,
            "lat": 45.975,
            "unit": square(14.5 + i * 1e-3, 45.975),
            "score": 1 - i / 10,
        }
        for i in range(1, n + 1)
    ]


class SampleWorld:
    def __init__(self, folder):
        self.config_path, self.config, self.store = make_change_store(folder)
        self.database = folder / "serve.sqlite"
        with sqlite3.connect(self.database) as conn:  # a database from before units
            conn.execute(OLD_DESIGNS_TABLE)
            conn.execute(OLD_POINTS_TABLE)
            conn.execute(
                "INSERT INTO lcms_sample_designs VALUES (?, 'land-cover', 'map-2023', 'map', ?, '2026-01-01T00:00Z')",
                ("legacy", json.dumps({**design("legacy", "map"), "years": [2023], "reference_classes": CLASSES})),
            )
            for i in (1, 2):
                conn.execute(
                    "INSERT INTO lcms_sample_points VALUES ('legacy', ?, 'probability', 1, '1', 14.49, 45.97, '{}')",
                    (i,),
                )
        db = open_database(self.config, self.store)
        with db.transaction() as conn:
            for username, role in USERS.items():
                add_user(conn, username, PASSWORD, role, "test")
        db.close()
        self.server = Server(self.config_path, folder / "serve.log")

    def load(self, *args, **kwargs) -> int:
        db = open_database(self.config, self.store)
        try:
            return load_design(db, *args, **kwargs)
        finally:
            db.close()

    def records(self, design_id: str) -> list[dict]:
        db = open_database(self.config, self.store)
        try:
            return labelled_records(db, design_id)
        finally:
            db.close()

    def labels(self, design_id: str) -> list[tuple]:
        with sqlite3.connect(self.database) as conn:
            return conn.execute(
                "SELECT sample_id, reviewer, reference_class FROM lcms_sample_labels WHERE design_id = ? ORDER BY id",
                (design_id,),
            ).fetchall()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    made = SampleWorld(tmp_path_factory.mktemp("samples"))
    yield made
    made.server.stop()


def test_an_old_database_gets_the_unit_column_and_units_round_trip(world):
    viewer, operator = Client(world.server.url, "vera"), Client(world.server.url, "olga")
    listed = viewer.get("/samples")  # the first touch of the sample tables: the column is added
    assert listed.status_code == 200, listed.text
    with sqlite3.connect(world.database) as conn:
        columns = [r[1] for r in conn.execute("PRAGMA table_info(lcms_sample_points)")]
        assert columns[-1] == "unit"
        assert conn.execute("SELECT unit FROM lcms_sample_points WHERE design_id = 'legacy'").fetchall() == [
            (None,),
            (None,),
        ]
    legacy = viewer.get("/samples/legacy/queue").json()
    assert [p["sample_id"] for p in legacy["points"]] == [1, 2] and all("unit" not in p for p in legacy["points"])
    assert operator.post("/samples/legacy/points/2/labels", json={"reference_class": 3}).status_code == 200
    (record,) = world.records("legacy")
    assert record["unit"] is None and record["sample_id"] == 2 and record["reference_class"] == 3

    points = active_points(4)
    assert world.load(design("active-units", "active"), points, source="active") == 4
    queue = viewer.get("/samples/active-units/queue").json()
    assert queue["kind"] == "active" and queue["asks"] == "reference_class"
    assert [p["unit"] for p in queue["points"]] == [p["unit"] for p in points]
    # No legend in the design: the run's (here eo-learn's LULC) without "no data".
    assert queue["classes"] == {str(k): v for k, v in LULC_NAMES.items() if k != 0}
    assert operator.post("/samples/active-units/points/3/labels", json={"reference_class": 8}).status_code == 200
    (record,) = world.records("active-units")
    assert record["unit"] == points[2]["unit"] and record["source"] == "active" and record["reviewer"] == "olga"
    # labelled_records keeps its keys for tasks/accuracy (and adds the unit).
    assert set(record) == {
        "design_id", "sample_id", "source", "stratum", "map_class", "lon", "lat", "unit",
        "reference_class", "reference_from", "reference_to", "reviewer", "created_at",
    }  # fmt: skip
    # An active queue may show the model's class (its labels train, they do not estimate).
    nxt = viewer.get("/samples/active-units/next").json()
    assert nxt["point"]["sample_id"] == 1 and nxt["point"]["predicted_class"] == points[0]["map_class"]
    assert nxt["point"]["unit"] == points[0]["unit"]

    # A unit that is no geometry: one line naming the point.
    with pytest.raises(ValueError, match="sample point 1: 'unit' must be a GeoJSON geometry"):
        world.load(design("bad-unit", "active"), [{**points[0], "unit": [1, 2]}], source="active")


def test_next_follows_the_design_order_wraps_after_a_skip_and_ends(world):
    points = probability_points(6)
    world.load(design("order", "map", reference_classes=CLASSES), points)
    olga, oscar, vera = (Client(world.server.url, u) for u in ("olga", "oscar", "vera"))

    def nxt(client, **params):
        answer = client.get("/samples/order/next", params=params)
        assert answer.status_code == 200, answer.text
        return answer.json()

    first = nxt(vera)
    assert first["point"]["sample_id"] == 1 and first["position"] == 1  # the design's order, not the insertion's
    assert (first["total"], first["remaining"]) == (6, 6)
    assert nxt(vera, after=3)["point"]["sample_id"] == 4  # after a skip of point 3
    assert nxt(vera, after=6)["point"]["sample_id"] == 1  # past the end: back to the first one left

    for sample_id in (1, 2):
        assert olga.post(f"/samples/order/points/{sample_id}/labels", json={"reference_class": 2}).status_code == 200
    after_two = nxt(olga)
    assert after_two["point"]["sample_id"] == 3 and after_two["remaining"] == 4
    # A second opinion: oscar's next point is the first one *he* has not labelled, with who did.
    mine = nxt(oscar, mine=1)
    assert mine["point"]["sample_id"] == 1 and mine["point"]["labelled_by"] == ["olga"] and mine["remaining"] == 6
    assert nxt(olga, mine=1)["point"]["sample_id"] == 3

    for sample_id in (3, 4, 5, 6):
        oscar.post(f"/samples/order/points/{sample_id}/labels", json={"reference_class": 1}).raise_for_status()
    done = nxt(vera)
    assert done == {"done": True, "design_id": "order", "total": 6, "remaining": 0}
    assert nxt(oscar, mine=1)["point"]["sample_id"] == 1  # everyone's done, oscar still has 1 and 2 to give
    listed = {d["design_id"]: d for d in vera.get("/samples").json()["designs"]}
    assert listed["order"]["labelled"] == 6 and listed["order"]["points"] == 6
    assert listed["order"]["labelled_by"] == {"olga": 2, "oscar": 4}
    assert listed["active-units"]["queue"] == "label next" and listed["order"]["queue"] == "probability sample"
    assert world.labels("order") == [(1, "olga", 2), (2, "olga", 2)] + [(i, "oscar", 1) for i in (3, 4, 5, 6)]


def test_roles_and_the_csrf_token(world):
    world.load(design("roles", "map", reference_classes=CLASSES), probability_points(3))
    url = "/samples/roles/points/1/labels"
    assert Client(world.server.url).get("/samples/roles/next").status_code == 401
    assert Client(world.server.url).post(url, json={"reference_class": 1}).status_code == 401
    vera = Client(world.server.url, "vera")
    assert vera.get("/samples/roles/next").status_code == 200
    refused = vera.post(url, json={"reference_class": 1})
    assert refused.status_code == 403 and "operator" in refused.json()["detail"]
    olga = Client(world.server.url, "olga")
    no_token = olga.post(url, json={"reference_class": 1}, headers={"X-CSRF-Token": ""})
    assert no_token.status_code == 403 and "CSRF" in no_token.json()["detail"]
    wrong = olga.post(url, json={"reference_class": 1}, headers={"X-CSRF-Token": "not-the-token"})
    assert wrong.status_code == 403
    assert world.labels("roles") == []  # nothing refused was stored
    assert olga.post(url, json={"reference_class": 1, "comment": "clear"}).status_code == 200
    assert world.labels("roles") == [(1, "olga", 1)]
    assert olga.get("/samples/nowhere/next").status_code == 404


def test_a_probability_sample_never_sends_the_map_class_or_the_stratum(world):
    points = probability_points(5)
    world.load(design("blind", "map", reference_classes=CLASSES), points)
    olga = Client(world.server.url, "olga")
    answers = [
        olga.get("/samples"),
        olga.get("/samples/blind/queue", params={"limit": 100}),
        olga.get("/samples/blind/queue", params={"unlabelled": True}),
        olga.get("/samples/blind/next"),
        olga.post("/samples/blind/points/1/labels", json={"reference_class": 3}),
        olga.get("/samples/blind/next", params={"mine": 1, "after": 2}),
    ]
    for answer in answers:
        assert answer.status_code == 200, answer.text
        text = answer.text
        for word in ("map_class", "stratum", "predicted", 'point":"{', "row"):
            assert word not in text, f"{answer.url}: {word!r} in {text[:300]}"
    for p in answers[1].json()["points"]:
        assert set(p) == {"sample_id", "lon", "lat", "labelled", "labelled_by"}
    assert set(answers[3].json()["point"]) == {"sample_id", "lon", "lat", "labelled_by"}


def test_postgis_gets_the_unit_column_too(postgis_dsn):
    import psycopg

    schema = "samples_migration"
    with psycopg.connect(postgis_dsn, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        conn.execute(f'CREATE SCHEMA "{schema}"')
        conn.execute(OLD_POINTS_TABLE.replace("lcms_sample_points", f'"{schema}".lcms_sample_points'))
        conn.execute(
            f'INSERT INTO "{schema}".lcms_sample_points '
            "VALUES ('legacy', 1, 'probability', 1, '1', 14.49, 45.97, '{}')"
        )
    db = PostgisDatabase(postgis_dsn, PostgisConfig(schema_name=schema))
    try:
        unit = square(14.6, 45.9)
        load_design(db, design("pg-active", "active"), [{**active_points(1)[0], "unit": unit}], source="active")
        with db.transaction() as conn:
            conn.run(
                f"INSERT INTO {conn.t('sample_labels')} (design_id, sample_id, reviewer, reference_class, created_at) "
                "VALUES ('pg-active', 1, 'olga', 2, '2026-01-01T00:00:00Z')"
            )
    finally:
        db.close()
    with psycopg.connect(postgis_dsn) as conn:
        rows = conn.execute(f'SELECT design_id, unit FROM "{schema}".lcms_sample_points ORDER BY design_id').fetchall()
    assert rows[0] == ("legacy", None) and json.loads(rows[1][1]) == unit
    db = PostgisDatabase(postgis_dsn, PostgisConfig(schema_name=schema))
    try:
        (record,) = labelled_records(db, "pg-active")
    finally:
        db.close()
    assert record["unit"] == unit and record["reference_class"] == 2
