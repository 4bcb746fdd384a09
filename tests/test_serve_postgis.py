"""`lcms serve` with serve.database: postgis: the same API over a real PostgreSQL + PostGIS server.

The service imports the store's change layer into the change table (as the change stage does with
change.postgis set) and keeps users, sessions and reviews in the same database. The DSN reaches the
server process through LCMS_POSTGIS_DSN only, never the config. Expected answers come from the
stored GeoPackage read with geopandas.
"""

from __future__ import annotations

import threading
import uuid

import mapbox_vector_tile
import psycopg
import pytest
from serve_support import (
    COLLECTION,
    PASSWORD,
    Client,
    Server,
    config_data,
    items,
    layer_frame,
    make_change_store,
    run_change_stage,
    write_config,
)
from shapely.geometry import box
from test_serve_api import INJECTIONS, by_score, reviews_url, tile_lonlat_bounds, tile_of

ITEMS = f"/changes/collections/{COLLECTION}/items"


class PostgisWorld:
    def __init__(self, folder, dsn: str):
        self.dsn = dsn
        self.schema = f"serve_{uuid.uuid4().hex[:8]}"
        self.table = "changes"
        _, config, self.store = make_change_store(folder)
        self.frame = layer_frame(self.store)
        data = config_data(
            config.store.url,
            None,
            database="postgis",
            postgis={"schema_name": self.schema, "table": self.table, "dsn_env": "LCMS_SERVE_TEST_DSN"},
        )
        self.config_path = write_config(folder / "config-postgis.yaml", data)
        self.env = {"LCMS_SERVE_TEST_DSN": dsn}
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("LCMS_SERVE_TEST_DSN", dsn)
            from lcms.config import load_config
            from lcms.serve.db import open_database
            from lcms.serve.users import add_user

            self.config = load_config(self.config_path)
            db = open_database(self.config, self.store)
            with db.transaction() as conn:
                for username, role in {
                    "vera": "viewer",
                    "olga": "operator",
                    "oscar": "operator",
                    "ada": "admin",
                }.items():
                    add_user(conn, username, PASSWORD, role, "test")
            db.close()
        self.server = Server(self.config_path, folder / "serve.log", env=self.env)

    def client(self, username=None) -> Client:
        return Client(self.server.url, username)

    def count(self, table: str) -> int:
        with psycopg.connect(self.dsn) as conn:
            return conn.execute(f'SELECT count(*) FROM "{self.schema}".{table}').fetchone()[0]


@pytest.fixture(scope="module")
def pg_world(postgis_dsn, tmp_path_factory):
    world = PostgisWorld(tmp_path_factory.mktemp("serve-postgis"), postgis_dsn)
    yield world
    world.server.stop()


def test_items_bbox_filters_and_tiles_match_the_layer(pg_world):
    viewer = pg_world.client("vera")
    frame = pg_world.frame
    assert pg_world.count("changes") == len(frame)  # imported into the change table
    assert [f["id"] for f in items(viewer, limit=1000)["features"]] == by_score(frame)

    centre = frame.loc[frame["area_m2"].idxmax()].geometry.centroid
    bbox = (centre.x - 0.004, centre.y - 0.003, centre.x + 0.004, centre.y + 0.003)
    answer = items(viewer, bbox=",".join(map(str, bbox)), limit=1000)
    assert sorted(f["id"] for f in answer["features"]) == sorted(frame.loc[frame.intersects(box(*bbox)), "change_id"])

    wanted = frame[frame["class_from"].isin([1, 2]) & (frame["area_m2"] >= 10_000)]
    answer = items(viewer, class_from=[1, 2], min_area=10_000, sortby="-area", limit=1000)
    order = wanted.sort_values(["area_m2", "change_id"], ascending=[False, True])
    assert [f["id"] for f in answer["features"]] == list(order["change_id"])

    point = frame.loc[frame["area_m2"].idxmax()].geometry.representative_point()
    x, y = tile_of(point.x, point.y, 15)
    tile = viewer.get(f"/changes/collections/{COLLECTION}/tiles/15/{x}/{y}.mvt")
    got = {f["properties"]["change_id"] for f in mapbox_vector_tile.decode(tile.content)["changes"]["features"]}
    assert got == set(frame.loc[frame.intersects(box(*tile_lonlat_bounds(15, x, y))), "change_id"])

    before = pg_world.count("lcms_decisions"), pg_world.count("changes"), pg_world.count("lcms_users")
    for attempt in INJECTIONS:
        assert items(viewer, reviewer=attempt)["numberMatched"] == 0
        assert viewer.get(ITEMS, params={"min_area": attempt}).status_code == 400
    assert (pg_world.count("lcms_decisions"), pg_world.count("changes"), pg_world.count("lcms_users")) == before


def test_reviews_versions_and_the_append_only_log_on_postgis(pg_world):
    olga, oscar, ada = pg_world.client("olga"), pg_world.client("oscar"), pg_world.client("ada")
    change_id = by_score(pg_world.frame)[0]
    assert olga.post(reviews_url(change_id), json={"decision": "confirmed", "version": 0}).status_code == 201
    stale = oscar.post(reviews_url(change_id), json={"decision": "rejected", "version": 0})
    assert stale.status_code == 409 and stale.json()["current"]["version"] == 1
    assert (
        oscar.post(reviews_url(change_id), json={"decision": "rejected", "version": 1}).json()["status"] == "conflict"
    )
    resolved = ada.post(f"{ITEMS}/{change_id}/resolution", json={"decision": "rejected", "version": 2}).json()
    assert (resolved["status"], resolved["agreement"], resolved["version"]) == ("rejected", "resolved", 3)
    assert [f["id"] for f in items(olga, status="rejected")["features"]] == [change_id]

    # Two decisions on the same version at once: one is written, the other gets 409.
    other = by_score(pg_world.frame)[1]
    answers, barrier = [], threading.Barrier(2)

    def decide(client):
        barrier.wait()
        answers.append(client.post(reviews_url(other), json={"decision": "confirmed", "version": 0}).status_code)

    threads = [threading.Thread(target=decide, args=(c,)) for c in (olga, oscar)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(answers) == [201, 409]

    with psycopg.connect(pg_world.dsn, autocommit=True) as conn:
        for statement in ("UPDATE {}.lcms_decisions SET decision = 'confirmed'", "DELETE FROM {}.lcms_decisions"):
            with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
                conn.execute(statement.format(f'"{pg_world.schema}"'))
        with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
            conn.execute(f'TRUNCATE "{pg_world.schema}".lcms_decisions')
    assert pg_world.count("lcms_decisions") == 4  # confirmed, rejected, the resolution, one of the two at once


def test_a_rerun_is_imported_and_orphans_are_marked_on_postgis(pg_world):
    from test_change import noisy_maps

    olga = pg_world.client("olga")
    frame = pg_world.frame
    gone_tile = sorted(frame["tile_id"].unique())[0]
    unreviewed = {f["id"] for f in items(olga, status="unreviewed", limit=1000)["features"]}
    in_gone = frame.loc[(frame["tile_id"] == gone_tile) & frame["change_id"].isin(unreviewed), "change_id"].iloc[0]
    assert olga.post(reviews_url(in_gone), json={"decision": "confirmed", "version": 0}).status_code == 201

    def no_change_in_first_tile(tile, year, seed):
        return noisy_maps(tile, min(year, 2023) if tile.tile_id == gone_tile else year, seed)

    run_change_stage(pg_world.config, pg_world.store, maps=no_change_in_first_tile)
    now = layer_frame(pg_world.store)
    assert sorted(f["id"] for f in items(olga, limit=1000)["features"]) == sorted(now["change_id"])
    assert pg_world.count("changes") == len(now)
    reviewed = {r["change_id"] for r in olga.get(f"/changes/collections/{COLLECTION}/reviews").json()["reviews"]}
    orphans = olga.get(f"/changes/collections/{COLLECTION}/reviews", params={"orphaned": True}).json()["reviews"]
    assert {r["change_id"] for r in orphans} == reviewed - set(now["change_id"]) and in_gone in reviewed
    assert olga.get(reviews_url(in_gone)).json()["history"][0]["decision"] == "confirmed"
