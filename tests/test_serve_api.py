"""`lcms serve` over the embedded database: change polygons API, reviews, sessions, bad input, S3.

Every test talks HTTP to a real `lcms serve --demo` process (fixture `serve_world`, conftest.py)
over a store whose change layer the change stage's own functions wrote (tests/serve_support.py).
Expected answers come from the stored GeoPackage read with geopandas, not from the service.
"""

from __future__ import annotations

import io
import json
import math
import sqlite3
import subprocess
import threading
from pathlib import Path

import geopandas as gpd
import mapbox_vector_tile
import pandas as pd
import pytest
import shapely
from serve_support import COLLECTION, LCMS, PASSWORD, Client, Server, config_data, items, write_config
from shapely.geometry import box

from lcms.store import TileStore

ITEMS = f"/changes/collections/{COLLECTION}/items"


def reviews_url(change_id: str) -> str:
    return f"{ITEMS}/{change_id}/reviews"


def snapshot(world) -> dict:
    """Every row of the tables a request could change (users, decisions, review states)."""
    with sqlite3.connect(world.database_path) as conn:
        return {
            table: conn.execute(f"SELECT * FROM lcms_{table} ORDER BY 1, 2").fetchall()
            for table in ("users", "decisions", "change_reviews")
        }


def by_score(frame: pd.DataFrame) -> list[str]:
    """The service's default order, computed with pandas: score descending (NaN last), then id."""
    ordered = frame.sort_values(["score", "change_id"], ascending=[False, True], na_position="last", kind="stable")
    return list(ordered["change_id"])


# ------------------------------------------------------------------------------------------- items


def test_collection_and_paged_items_match_the_stored_layer(serve_world):
    viewer = serve_world.client("vera")
    frame = serve_world.frame
    listing = viewer.get("/changes/collections").json()["collections"]
    assert [c["id"] for c in listing] == [COLLECTION]
    assert listing[0]["polygons"] == len(frame) >= 5
    west, south, east, north = listing[0]["extent"]["spatial"]["bbox"][0]
    assert (west, south, east, north) == pytest.approx(tuple(frame.total_bounds), abs=1e-9)

    # Following the next links visits every polygon once, in score order.
    seen, url, pages = [], f"{ITEMS}?limit=2", 0
    while url:
        page = viewer.get(url).json()
        assert page["numberMatched"] == len(frame) and page["numberReturned"] == len(page["features"]) <= 2
        seen += [f["id"] for f in page["features"]]
        url = next((link["href"] for link in page["links"] if link["rel"] == "next"), None)
        pages += 1
    assert seen == by_score(frame) and pages == math.ceil(len(frame) / 2)

    # Attributes and geometry of a feature equal the GeoPackage row.
    feature = items(viewer, limit=1, sortby="-area")["features"][0]
    row = frame.loc[frame["area_m2"].idxmax()]
    assert feature["id"] == row["change_id"]
    for column in ("tile_id", "class_from", "class_to", "class_from_name", "class_to_name", "area_m2"):
        assert feature["properties"][column] == row[column]
    assert feature["properties"]["score"] == pytest.approx(row["score"])
    assert shapely.geometry.shape(feature["geometry"]).equals_exact(row.geometry, 1e-9)


def test_bbox_filters_and_sorting_match_geopandas(serve_world):
    viewer = serve_world.client("vera")
    frame = serve_world.frame
    # A box around the largest polygon's centre, a little wider than it: the neighbours it touches count too.
    centre = frame.loc[frame["area_m2"].idxmax()].geometry.centroid
    bbox = (centre.x - 0.004, centre.y - 0.003, centre.x + 0.004, centre.y + 0.003)
    expected = frame[frame.intersects(box(*bbox))]
    answer = items(viewer, bbox=",".join(map(str, bbox)), limit=1000)
    assert sorted(f["id"] for f in answer["features"]) == sorted(expected["change_id"])
    assert answer["numberMatched"] == len(expected) < len(frame)

    wanted = frame[frame["class_from"].isin([1, 2]) & (frame["area_m2"] >= 10_000) & (frame["score"] >= 0)]
    answer = items(viewer, class_from=[1, 2], min_area=10_000, min_score=0, sortby="-area", limit=1000)
    order = wanted.sort_values(["area_m2", "change_id"], ascending=[False, True])
    assert [f["id"] for f in answer["features"]] == list(order["change_id"]) and len(order) >= 2

    answer = items(viewer, class_to=5, sortby="id", limit=1000)
    assert [f["id"] for f in answer["features"]] == sorted(frame.loc[frame["class_to"] == 5, "change_id"])


def tile_of(lon: float, lat: float, z: int) -> tuple[int, int]:
    """The XYZ tile holding a point (the slippy-map formula)."""
    n = 2**z
    x = int((lon + 180) / 360 * n)
    y = int((1 - math.asinh(math.tan(math.radians(lat))) / math.pi) / 2 * n)
    return x, y


def tile_lonlat_bounds(z: int, x: int, y: int) -> tuple[float, float, float, float]:
    n = 2**z

    def lat(row):
        return math.degrees(math.atan(math.sinh(math.pi * (1 - 2 * row / n))))

    return x / n * 360 - 180, lat(y + 1), (x + 1) / n * 360 - 180, lat(y)


def test_vector_tiles_hold_the_polygons_of_the_tile(serve_world):
    viewer = serve_world.client("vera")
    frame = serve_world.frame
    point = frame.loc[frame["area_m2"].idxmax()].geometry.representative_point()
    z = 15
    x, y = tile_of(point.x, point.y, z)
    answer = viewer.get(f"/changes/collections/{COLLECTION}/tiles/{z}/{x}/{y}.mvt")
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/vnd.mapbox-vector-tile"
    decoded = mapbox_vector_tile.decode(answer.content)
    got = {f["properties"]["change_id"] for f in decoded["changes"]["features"]}
    expected = set(frame.loc[frame.intersects(box(*tile_lonlat_bounds(z, x, y))), "change_id"])
    assert got == expected and len(got) >= 1
    # The filters apply to tiles too.
    kept = viewer.get(f"/changes/collections/{COLLECTION}/tiles/{z}/{x}/{y}.mvt", params={"min_area": 10**9})
    assert mapbox_vector_tile.decode(kept.content)["changes"]["features"] == []


# --------------------------------------------------------------------------------------- bad input


INJECTIONS = ["1 OR 1=1", "'; DROP TABLE lcms_decisions; --", "1) UNION SELECT password_hash FROM lcms_users --"]


def test_bad_input_gets_a_status_and_a_message_naming_it_and_changes_nothing(serve_world):
    viewer = serve_world.client("vera")
    operator = serve_world.client("olga")
    before = snapshot(serve_world)
    change_id = serve_world.frame["change_id"].iloc[0]
    cases = [
        (viewer.get(ITEMS, params={"bbox": "1,2,3"}), 400, "bbox"),
        (viewer.get(ITEMS, params={"bbox": "14,46,13,47"}), 400, "bbox"),
        (viewer.get(ITEMS, params={"bbox": "a,b,c,d"}), 400, "bbox"),
        (viewer.get(ITEMS, params={"limit": 10**7}), 400, "limit"),
        (viewer.get(ITEMS, params={"limit": 0}), 400, "limit"),
        (viewer.get(ITEMS, params={"min_score": "high"}), 400, "min_score"),
        (viewer.get(ITEMS, params={"class_from": "forest"}), 400, "class_from"),
        (viewer.get(ITEMS, params={"status": "approved"}), 400, "status"),
        (viewer.get(ITEMS, params={"sortby": "geometry"}), 400, "sortby"),
        (viewer.get(ITEMS, params={"class-from": 1}), 400, "class-from"),
        (viewer.get("/changes/collections/land-cover_2019-2020/items"), 404, "land-cover_2019-2020"),
        (viewer.get("/changes/collections/nonsense/items"), 404, "nonsense"),
        (viewer.get(f"/changes/collections/{COLLECTION}/tiles/3/9/1.mvt"), 400, "x=9"),
        (viewer.get(f"/changes/collections/{COLLECTION}/tiles/30/0/0.mvt"), 400, "z=30"),
        (viewer.get(f"{ITEMS}/0000000000000000"), 404, "0000000000000000"),
        (operator.post(reviews_url("0000000000000000"), json={"decision": "confirmed", "version": 0}), 404, "0000"),
        (
            operator.post(
                reviews_url(change_id), json={"decision": "corrected", "class_from": 1, "class_to": 99, "version": 0}
            ),
            422,
            "99",
        ),
        (operator.post(reviews_url(change_id), json={"decision": "maybe", "version": 0}), 422, "decision"),
        (operator.post(reviews_url(change_id), json={"decision": "confirmed"}), 422, "version"),
        (
            operator.post(reviews_url(change_id), json={"decision": "rejected", "class_to": 2, "version": 0}),
            422,
            "class_to",
        ),
        (
            operator.post(reviews_url(change_id), json={"decision": "confirmed", "version": 0, "comment": "x" * 5000}),
            422,
            "comment",
        ),
    ]
    for answer, status, named in cases:
        assert answer.status_code == status, (answer.request.url, answer.text)
        assert named in answer.json()["detail"], (answer.request.url, answer.text)
    # Injection attempts in every filter: typed ones are refused, free-text ones match nothing.
    for param in ("bbox", "class_from", "class_to", "status", "decision", "min_score", "min_area", "sortby", "limit"):
        for attempt in INJECTIONS:
            answer = viewer.get(ITEMS, params={param: attempt})
            assert answer.status_code == 400 and param in answer.json()["detail"], (param, answer.text)
    for param in ("reviewer", "tile_id"):
        for attempt in INJECTIONS:
            assert items(viewer, **{param: attempt})["numberMatched"] == 0
    assert viewer.get(f"/changes/collections/{INJECTIONS[1]}/items").status_code == 404
    assert snapshot(serve_world) == before
    assert items(viewer)["numberMatched"] == len(serve_world.frame)


# ----------------------------------------------------------------------------------------- reviews


def test_reviews_agreement_conflict_resolution_and_stale_versions(serve_world):
    olga, oscar = serve_world.client("olga"), serve_world.client("oscar")
    ada, vera = serve_world.client("ada"), serve_world.client("vera")
    change_id = by_score(serve_world.frame)[1]

    first = olga.post(reviews_url(change_id), json={"decision": "confirmed", "version": 0, "comment": "new road"})
    assert first.status_code == 201, first.text
    assert (first.json()["status"], first.json()["agreement"], first.json()["version"]) == ("confirmed", "single", 1)

    before = snapshot(serve_world)
    stale = oscar.post(reviews_url(change_id), json={"decision": "rejected", "version": 0})
    assert stale.status_code == 409 and "stale version 0" in stale.json()["detail"]
    assert stale.json()["current"]["version"] == 1 and stale.json()["current"]["history"][0]["reviewer"] == "olga"
    denied = vera.post(reviews_url(change_id), json={"decision": "rejected", "version": 1})
    assert denied.status_code == 403 and "operator" in denied.json()["detail"]
    early = ada.post(f"{ITEMS}/{change_id}/resolution", json={"decision": "rejected", "version": 1})
    assert early.status_code == 409 and "not in conflict" in early.json()["detail"]
    assert snapshot(serve_world) == before

    second = oscar.post(reviews_url(change_id), json={"decision": "rejected", "version": 1, "comment": "shadow"})
    assert (second.json()["status"], second.json()["agreement"]) == ("conflict", "conflict")
    not_admin = olga.post(f"{ITEMS}/{change_id}/resolution", json={"decision": "rejected", "version": 2})
    assert not_admin.status_code == 403
    resolved = ada.post(
        f"{ITEMS}/{change_id}/resolution", json={"decision": "corrected", "class_from": 1, "class_to": 3, "version": 2}
    )
    assert resolved.status_code == 201, resolved.text
    state = resolved.json()
    assert (state["status"], state["agreement"], state["resolved_by"]) == ("corrected", "resolved", "ada")
    assert (state["class_from"], state["class_to"], state["version"]) == (1, 3, 3)
    assert [d["decision"] for d in state["history"]] == ["confirmed", "rejected", "corrected"]

    # The review state shows in the items and their filters.
    assert [f["id"] for f in items(vera, status="corrected")["features"]] == [change_id]
    assert [f["id"] for f in items(vera, reviewer="oscar")["features"]] == [change_id]
    assert [f["id"] for f in items(vera, decision="rejected")["features"]] == [change_id]
    feature = vera.get(f"{ITEMS}/{change_id}").json()
    assert feature["properties"]["reviewers"] == ["olga", "oscar"] and len(feature["properties"]["history"]) == 3
    unreviewed = items(vera, status="unreviewed", limit=1000)["numberMatched"]
    assert unreviewed == items(vera, limit=1000)["numberMatched"] - len(
        vera.get(f"/changes/collections/{COLLECTION}/reviews").json()["reviews"]
    )


def test_concurrent_decisions_on_one_version_one_wins(serve_world):
    olga, oscar = serve_world.client("olga"), serve_world.client("oscar")
    change_id = by_score(serve_world.frame)[2]
    answers = []
    barrier = threading.Barrier(2)

    def decide(client, decision):
        barrier.wait()
        answers.append(client.post(reviews_url(change_id), json={"decision": decision, "version": 0}))

    threads = [threading.Thread(target=decide, args=a) for a in ((olga, "confirmed"), (oscar, "unsure"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(a.status_code for a in answers) == [201, 409]
    state = serve_world.client("vera").get(reviews_url(change_id)).json()
    assert state["version"] == 1 and len(state["history"]) == 1


def test_the_decision_log_is_append_only(serve_world):
    olga = serve_world.client("olga")
    change_id = by_score(serve_world.frame)[3]
    assert olga.post(reviews_url(change_id), json={"decision": "unsure", "version": 0}).status_code == 201
    with sqlite3.connect(serve_world.database_path) as conn:
        for statement in ("UPDATE lcms_decisions SET decision = 'rejected'", "DELETE FROM lcms_decisions"):
            with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                conn.execute(statement)
        assert conn.execute("SELECT count(*) FROM lcms_decisions WHERE change_id = ?", (change_id,)).fetchone()[0] == 1


def test_export_holds_confirmed_and_corrected_changes_with_edited_outlines(serve_world, tmp_path):
    olga = serve_world.client("olga")
    frame = serve_world.frame
    confirmed, edited = by_score(frame)[4], by_score(frame)[5]
    state = olga.get(reviews_url(confirmed)).json()
    olga.post(reviews_url(confirmed), json={"decision": "confirmed", "version": state["version"]})
    outline = frame.set_index("change_id").loc[edited].geometry.buffer(-0.0002)
    answer = olga.post(
        reviews_url(edited),
        json={
            "decision": "corrected",
            "class_from": 2,
            "class_to": 8,
            "version": olga.get(reviews_url(edited)).json()["version"],
            "geometry": shapely.geometry.mapping(outline),
        },
    )
    assert answer.status_code == 201, answer.text

    # Which changes are confirmed or corrected, from the review list (not the export).
    listed = olga.get(f"/changes/collections/{COLLECTION}/reviews").json()["reviews"]
    expected = {r["change_id"]: r for r in listed if r["status"] in ("confirmed", "corrected")}
    assert {confirmed, edited} <= set(expected)

    csv = pd.read_csv(io.BytesIO(olga.get(f"/changes/collections/{COLLECTION}/export?format=csv").content))
    assert set(csv["change_id"]) == set(expected)
    row = csv.set_index("change_id").loc[edited]
    assert (row["class_from"], row["class_to"], row["class_to_name"], bool(row["geometry_edited"])) == (
        2,
        8,
        "artificial surface",
        True,
    )
    package = tmp_path / "export.gpkg"
    package.write_bytes(olga.get(f"/changes/collections/{COLLECTION}/export?format=gpkg").content)
    exported = gpd.read_file(package).set_index("change_id")
    assert exported.crs.to_epsg() == 4326 and set(exported.index) == set(expected)
    assert exported.loc[edited].geometry.equals_exact(shapely.MultiPolygon([outline]), 1e-7)
    assert exported.loc[confirmed].geometry.equals_exact(frame.set_index("change_id").loc[confirmed].geometry, 1e-9)

    # The command line writes the same rows.
    done = subprocess.run(
        [LCMS, "reviews", "export", str(serve_world.config_path), "--out", str(tmp_path / "cli")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    from_cli = pd.read_csv(tmp_path / "cli" / f"{COLLECTION}-reviewed.csv")
    assert (
        from_cli.sort_values("change_id")
        .reset_index(drop=True)
        .equals(csv.sort_values("change_id").reset_index(drop=True))
    )
    assert set(gpd.read_file(tmp_path / "cli" / f"{COLLECTION}-reviewed.gpkg")["change_id"]) == set(expected)


# ---------------------------------------------------------------------------------- users, sessions


def test_login_cookies_csrf_logout_and_expiry(serve_world):
    anonymous = serve_world.client()
    assert anonymous.get(ITEMS).status_code == 401
    assert anonymous.post("/auth/login", json={"username": "admin", "password": "admin"}).status_code == 401

    login = anonymous.post("/auth/login", json={"username": "olga", "password": PASSWORD})
    cookies = "\n".join(login.headers.get_list("set-cookie"))
    session_cookie = next(c for c in login.headers.get_list("set-cookie") if c.startswith("lcms_session="))
    assert "HttpOnly" in session_cookie and "SameSite=strict" in session_cookie and "Secure" not in cookies
    behind_https = serve_world.client().post(
        "/auth/login", json={"username": "olga", "password": PASSWORD}, headers={"X-Forwarded-Proto": "https"}
    )
    assert all("Secure" in c for c in behind_https.headers.get_list("set-cookie"))

    # CSRF: a state-changing request without the header, or with another session's token, is refused.
    change_id = by_score(serve_world.frame)[6]
    before = snapshot(serve_world)
    missing = anonymous.post(reviews_url(change_id), json={"decision": "confirmed", "version": 0})
    assert missing.status_code == 403 and "CSRF" in missing.json()["detail"]
    wrong = anonymous.post(
        reviews_url(change_id),
        json={"decision": "confirmed", "version": 0},
        headers={"X-CSRF-Token": behind_https.json()["csrf_token"]},
    )
    assert wrong.status_code == 403 and "wrong CSRF" in wrong.json()["detail"]
    assert snapshot(serve_world) == before

    # Logout ends the session; an expired session is refused with the reason.
    operator = serve_world.client("oscar")
    assert operator.get("/auth/me").json()["role"] == "operator"
    assert operator.post("/auth/logout").status_code == 200
    assert operator.get("/auth/me").status_code == 401
    viewer = serve_world.client("vera")
    with sqlite3.connect(serve_world.database_path) as conn:
        conn.execute("UPDATE lcms_sessions SET expires_at = '2000-01-01T00:00:00.000000Z' WHERE revoked_at IS NULL")
    expired = viewer.get(ITEMS)
    assert expired.status_code == 401 and "expired" in expired.json()["detail"]


def test_users_from_the_command_line_and_login_rate_limit(serve_world):
    from serve_support import add_users

    add_users(serve_world.config_path, {"carl": "operator"})  # the command line (a process each: one is enough)
    from lcms.serve.db import SqliteDatabase
    from lcms.serve.users import add_user

    with SqliteDatabase(serve_world.database_path).transaction() as conn:
        add_user(conn, "rita", PASSWORD, "viewer", "test")
    carl = serve_world.client("carl")
    assert carl.get("/auth/me").json()["role"] == "operator"
    # An admin manages users through the API too (the same functions as `lcms users ...`); others may not.
    admin = serve_world.client("demo-admin")
    assert admin.patch("/users/carl", json={"disabled": True}).json()["disabled"] is True
    assert carl.get("/auth/me").status_code == 401  # disabling ends the sessions
    assert serve_world.client().post("/auth/login", json={"username": "carl", "password": PASSWORD}).status_code == 401
    assert serve_world.client("olga").get("/users").status_code == 403
    assert admin.patch("/users/rita", json={"role": "operator"}).json()["role"] == "operator"
    assert admin.post("/users", json={"username": "rita", "password": PASSWORD, "role": "viewer"}).status_code == 409

    guesser = serve_world.client()
    for _ in range(5):
        assert guesser.post("/auth/login", json={"username": "rita", "password": "wrong guess!"}).status_code == 401
    blocked = guesser.post("/auth/login", json={"username": "rita", "password": PASSWORD})
    assert blocked.status_code == 429 and "too many failed logins" in blocked.json()["detail"]
    assert int(blocked.headers["Retry-After"]) > 0


def test_demo_binds_to_localhost_only_and_no_account_exists_by_default(serve_world, tmp_path):
    log = serve_world.server.log.read_text()
    assert "Uvicorn running on http://127.0.0.1:" in log
    refused = subprocess.run(
        [LCMS, "serve", str(serve_world.config_path), "--demo", "--host", "0.0.0.0"], capture_output=True, text=True
    )
    assert refused.returncode != 0 and "127.0.0.1 only" in refused.stderr

    from lcms.serve.db import SqliteDatabase
    from lcms.serve.users import list_users

    with SqliteDatabase(tmp_path / "fresh.sqlite").transaction() as conn:
        assert list_users(conn) == []


def test_access_log_is_json_without_secrets(serve_world):
    client = serve_world.client("vera")
    client.get(ITEMS, params={"limit": 1})
    lines = [json.loads(line) for line in serve_world.server.log.read_text().splitlines() if line.startswith("{")]
    assert any(r["path"] == ITEMS and r["user"] == "vera" and r["status"] == 200 for r in lines)
    text = serve_world.server.log.read_text()
    for secret in (PASSWORD, serve_world.admin_password, client.csrf, client.cookies["lcms_session"]):
        assert secret not in text


# ------------------------------------------------------------------------------------------- reruns


def test_reviews_survive_a_rerun_and_vanished_changes_are_orphaned(serve_world):
    from serve_support import run_change_stage
    from test_change import noisy_maps

    olga = serve_world.client("olga")
    frame = serve_world.frame
    tiles = sorted(frame["tile_id"].unique())
    gone_tile = tiles[0]
    unreviewed = {f["id"] for f in items(olga, status="unreviewed", limit=1000)["features"]}
    fresh = frame[frame["change_id"].isin(unreviewed)]
    in_gone = fresh.loc[fresh["tile_id"] == gone_tile, "change_id"].iloc[0]
    kept = fresh.loc[fresh["tile_id"] != gone_tile, "change_id"].iloc[0]
    for change_id in (in_gone, kept):
        version = olga.get(reviews_url(change_id)).json()["version"]
        olga.post(reviews_url(change_id), json={"decision": "confirmed", "version": version})

    def no_change_in_first_tile(tile, year, seed):
        # The later year looks like the earlier one in that tile: its changes are gone on rerun.
        return noisy_maps(tile, min(year, 2023) if tile.tile_id == gone_tile else year, seed)

    run_change_stage(serve_world.config, serve_world.store, maps=no_change_in_first_tile)
    viewer = serve_world.client("vera")
    ids = {f["id"] for f in items(viewer, limit=1000)["features"]}
    assert in_gone not in ids and kept in ids
    orphans = viewer.get(f"/changes/collections/{COLLECTION}/reviews", params={"orphaned": True}).json()["reviews"]
    assert in_gone in {r["change_id"] for r in orphans} and kept not in {r["change_id"] for r in orphans}
    assert viewer.get(reviews_url(kept)).json()["status"] == "confirmed"
    assert len(viewer.get(reviews_url(in_gone)).json()["history"]) >= 1  # kept, never deleted

    # The original maps again: the change comes back with its id, and its review is no longer orphaned.
    run_change_stage(serve_world.config, serve_world.store)
    assert in_gone in {f["id"] for f in items(viewer, limit=1000)["features"]}
    orphans = viewer.get(f"/changes/collections/{COLLECTION}/reviews", params={"orphaned": True}).json()["reviews"]
    assert in_gone not in {r["change_id"] for r in orphans}
    assert viewer.get(reviews_url(in_gone)).json()["status"] == "confirmed"


# ----------------------------------------------------------------------------------------------- S3


def test_a_store_on_s3_is_served_from_a_local_copy_of_its_layer(serve_world, s3_bucket, tmp_path):
    local = serve_world.store
    s3 = TileStore(f"{s3_bucket}/store", product="land-cover")
    record = local.get_files("change-polygons", "2023-2024", tmp_path / "layer")
    s3.put_files("change-polygons", "2023-2024", tmp_path / "layer", record.params_hash)
    data = config_data(s3.url, str(tmp_path / "serve.sqlite"), cache_path=str(tmp_path / "cache"))
    config_path = write_config(tmp_path / "config.yaml", data)

    from lcms.config import load_config
    from lcms.serve.db import open_database
    from lcms.serve.users import add_user

    with open_database(load_config(config_path), s3).transaction() as conn:
        add_user(conn, "vera", PASSWORD, "viewer", "test")
    server = Server(config_path, tmp_path / "serve.log")
    try:
        viewer = Client(server.url, "vera")
        answer = items(viewer, limit=1000)
        assert sorted(f["id"] for f in answer["features"]) == sorted(serve_world.frame["change_id"])
    finally:
        server.stop()


def test_the_compose_stack_runs_the_service_on_its_postgis():
    from urllib.parse import urlparse

    import yaml

    compose = yaml.safe_load((Path(__file__).resolve().parents[1] / "docker" / "compose.yaml").read_text())
    serve, postgis = compose["services"]["serve"], compose["services"]["postgis"]
    command = serve["command"]
    assert command[:2] == ["lcms", "serve"] and command[command.index("--database") + 1] == "postgis"
    port = command[command.index("--port") + 1]
    assert serve["ports"] == [f"127.0.0.1:{port}:{port}"] and f":{port}/health" in " ".join(
        serve["healthcheck"]["test"]
    )
    dsn = urlparse(serve["environment"]["LCMS_POSTGIS_DSN"])
    assert (dsn.hostname, dsn.username, dsn.path) == ("postgis", postgis["environment"]["POSTGRES_USER"], "/lcms")
    assert dsn.password == postgis["environment"]["POSTGRES_PASSWORD"]
    assert "postgis" in postgis["image"] and serve["depends_on"] == {"postgis": {"condition": "service_healthy"}}
