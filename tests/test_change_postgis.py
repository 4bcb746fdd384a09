"""tasks/change/postgis.py against a real PostgreSQL + PostGIS server (tests/postgis_server.py)."""

from __future__ import annotations

import hashlib
import logging
import uuid

import geopandas as gpd
import numpy as np
import pandas as pd
import psycopg
import pytest
import shapely
from postgis_server import create_database
from psycopg import sql
from pyproj import Transformer
from shapely.geometry import MultiPolygon, Polygon, box

from tasks.change.postgis import (
    ChangeStoreError,
    PostgisMissingError,
    read_changes_postgis,
    redact_dsn,
    write_changes_postgis,
)

PIXEL = 10.0  # m

# Two tiles in different UTM zones (central Europe), origins in metres of their zone.
TILE_33 = ("33UXP", 32633, 520_000.0, 5_400_000.0)
TILE_34 = ("34UCV", 32634, 390_000.0, 5_420_000.0)


def pixel_polygons(x0: float, y0: float) -> list[Polygon | MultiPolygon]:
    """Polygons made of whole 10 m pixels: a rectangle, an L, one with a hole, a two-part MultiPolygon."""

    def px(col, row, w=1, h=1):
        return box(x0 + col * PIXEL, y0 + row * PIXEL, x0 + (col + w) * PIXEL, y0 + (row + h) * PIXEL)

    rectangle = px(0, 0, 12, 7)
    ell = shapely.union_all([px(20, 0, 3, 15), px(23, 0, 9, 4)])
    ring = px(40, 0, 10, 10).difference(px(43, 3, 3, 4))
    multi = MultiPolygon([px(60, 0, 5, 5), px(70, 8, 4, 6)])
    return [rectangle, ell, ring, multi]


def change_id(tile: str, years: tuple[int, int], geom) -> str:
    return hashlib.sha1(f"{tile}:{years[0]}:{years[1]}:".encode() + shapely.to_wkb(geom)).hexdigest()[:24]


def make_changes(tile=TILE_33, years=(2020, 2024), shift: float = 0.0, n: int = 4) -> gpd.GeoDataFrame:
    """`n` change polygons of one tile in its UTM CRS, as tasks/change/detect.py hands them over."""
    name, epsg, x0, y0 = tile
    geoms = pixel_polygons(x0 + shift, y0)[:n]
    rows = [
        {
            "change_id": change_id(name, years, g),
            "tile_id": name,
            "year_from": years[0],
            "year_to": years[1],
            "class_from": 3,
            "class_to": 7 + i,
            "class_from_name": "forest",
            "class_to_name": f"class {7 + i}",
            "area_m2": g.area,
            "confidence_from": 80.0 + i,
            "confidence_to": 60.5 + i,
            "score": float("nan") if i == 1 else 0.9 - 0.1 * i,
            "status": "unreviewed",
        }
        for i, g in enumerate(geoms)
    ]
    return gpd.GeoDataFrame(rows, geometry=geoms, crs=f"EPSG:{epsg}")


@pytest.fixture
def table() -> str:
    return f"changes_{uuid.uuid4().hex[:10]}"


def set_status(dsn: str, table: str, ids_status: dict[str, str], schema: str = "public") -> None:
    """What the operator app does."""
    with psycopg.connect(dsn) as conn:
        for cid, status in ids_status.items():
            conn.execute(
                sql.SQL("UPDATE {} SET status = %s WHERE change_id = %s").format(sql.Identifier(schema, table)),
                (status, cid),
            )


def closed_port_dsn(password: str = "pw") -> tuple[str, int]:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"postgresql://lcms:{password}@127.0.0.1:{port}/lcms_test?connect_timeout=3", port


def test_round_trip_two_utm_zones(postgis_dsn, table):
    a = make_changes(TILE_33)
    b = make_changes(TILE_34, years=(2019, 2024))
    assert write_changes_postgis(a, postgis_dsn, table=table) == 4
    assert write_changes_postgis(b, postgis_dsn, table=table) == 4

    got = read_changes_postgis(postgis_dsn, table=table).set_index("change_id")
    assert got.crs.to_epsg() == 4326
    assert len(got) == 8
    for frame in (a, b):
        to_wgs84 = Transformer.from_crs(frame.crs, 4326, always_xy=True)
        for row in frame.itertuples():
            expected = shapely.transform(row.geometry, lambda xy, t=to_wgs84: np.column_stack(t.transform(*xy.T)))
            if expected.geom_type == "Polygon":
                expected = MultiPolygon([expected])
            stored = got.loc[row.change_id]
            assert stored.geometry.geom_type == "MultiPolygon"
            assert shapely.equals_exact(stored.geometry, expected, tolerance=1e-9), row.change_id
            for column in ("tile_id", "year_from", "year_to", "class_from", "class_to", "class_to_name", "status"):
                assert stored[column] == getattr(row, column)
            assert stored["area_m2"] == row.area_m2
            assert stored["confidence_to"] == row.confidence_to
            assert (np.isnan(stored["score"]) and np.isnan(row.score)) or stored["score"] == row.score
    assert got["year_from"].dtype == np.int64 and got["score"].dtype == np.float64

    with psycopg.connect(postgis_dsn) as conn:
        t = sql.Identifier("public", table)
        rows = conn.execute(
            sql.SQL(
                "SELECT area_m2, ST_Area(geometry::geography), ST_SRID(geometry), GeometryType(geometry) FROM {}"
            ).format(t)
        ).fetchall()
        assert all(srid == 4326 and kind == "MULTIPOLYGON" for _, _, srid, kind in rows)
        for area_m2, geodesic, _, _ in rows:
            assert geodesic == pytest.approx(area_m2, rel=0.005)
        typmod = conn.execute(
            "SELECT type, srid FROM geometry_columns WHERE f_table_name = %s AND f_geometry_column = 'geometry'",
            (table,),
        ).fetchone()
        assert typmod == ("MULTIPOLYGON", 4326)
        indexes = " ".join(r[0] for r in conn.execute("SELECT indexdef FROM pg_indexes WHERE tablename = %s", (table,)))
        assert "USING gist (geometry)" in indexes
        assert "(tile_id, year_from, year_to)" in indexes
        assert f"{table}_pkey ON public.{table} USING btree (change_id)" in indexes

    only = read_changes_postgis(postgis_dsn, table=table, where={"tile_id": "34UCV", "class_to": [7, 8]})
    assert sorted(only["class_to"]) == [7, 8] and set(only["tile_id"]) == {"34UCV"}


def test_rerun_replaces_unreviewed_rows_of_that_tile_and_years_only(postgis_dsn, table):
    first = make_changes(TILE_33, (2020, 2024))
    other_years = make_changes(TILE_33, (2021, 2024), n=2)
    other_tile = make_changes(TILE_34, (2020, 2024))
    for frame in (first, other_years, other_tile):
        write_changes_postgis(frame, postgis_dsn, table=table)

    # The rerun finds the rectangle again (same pixels → same id, new score), the rest moved by one pixel.
    rerun = pd.concat([first.iloc[:1], make_changes(TILE_33, (2020, 2024), shift=PIXEL).iloc[1:3]])
    rerun.loc[rerun.index[0], "score"] = 0.123
    rerun = gpd.GeoDataFrame(rerun, crs=first.crs)
    assert write_changes_postgis(rerun, postgis_dsn, table=table) == 3

    got = read_changes_postgis(postgis_dsn, table=table)
    tile_years = got[(got.tile_id == "33UXP") & (got.year_from == 2020)]
    assert sorted(tile_years.change_id) == sorted(rerun.change_id)
    assert tile_years.set_index("change_id").loc[first.change_id.iloc[0], "score"] == 0.123
    assert sorted(got[got.year_from == 2021].change_id) == sorted(other_years.change_id)
    assert sorted(got[got.tile_id == "34UCV"].change_id) == sorted(other_tile.change_id)


def test_operator_decisions_survive_a_rerun(postgis_dsn, table):
    schema = f"lcms_{uuid.uuid4().hex[:6]}"  # also: the schema is created when missing
    first = make_changes(TILE_33)
    write_changes_postgis(first, postgis_dsn, table=table, schema=schema)
    confirmed, rejected = first.change_id.iloc[0], first.change_id.iloc[2]
    set_status(postgis_dsn, table, {confirmed: "confirmed", rejected: "rejected"}, schema=schema)
    before = read_changes_postgis(postgis_dsn, table=table, schema=schema).set_index("change_id")

    # Rerun: the confirmed polygon comes again (as 'unreviewed', new score), the rejected one does not.
    rerun = gpd.GeoDataFrame(pd.concat([first.iloc[[0]], make_changes(shift=PIXEL).iloc[[1]]]), crs=first.crs)
    rerun.loc[rerun.index[0], "score"] = 0.5
    assert write_changes_postgis(rerun, postgis_dsn, table=table, schema=schema) == 2

    got = read_changes_postgis(postgis_dsn, table=table, schema=schema).set_index("change_id")
    assert sorted(got.index) == sorted([confirmed, rejected, rerun.change_id.iloc[1]])
    assert got.loc[confirmed, "status"] == "confirmed"
    assert got.loc[confirmed, "score"] == 0.5  # attributes follow the new run, the decision stays
    assert got.loc[rejected].drop("geometry").equals(before.loc[rejected].drop("geometry"))  # untouched
    assert got.loc[rejected, "geometry"].equals(before.loc[rejected, "geometry"])
    assert got.loc[rerun.change_id.iloc[1], "status"] == "unreviewed"


def frames_equal(left: gpd.GeoDataFrame, right: gpd.GeoDataFrame) -> bool:
    return left.drop(columns="geometry").equals(right.drop(columns="geometry")) and bool(
        left.geometry.geom_equals_exact(right.geometry, tolerance=0).all()
    )


def test_a_bad_row_mid_batch_leaves_the_table_as_it_was(postgis_dsn, table):
    write_changes_postgis(make_changes(TILE_33), postgis_dsn, table=table)
    write_changes_postgis(make_changes(TILE_34), postgis_dsn, table=table)
    before = read_changes_postgis(postgis_dsn, table=table)

    rerun = make_changes(TILE_33, shift=PIXEL)
    rerun.loc[2, "confidence_to"] = 150.0  # not a percentage: the table's CHECK refuses it, after the DELETE ran
    with pytest.raises(
        ChangeStoreError,
        match=rf"public\.{table}.*confidence_to_check.*nothing was written|"
        rf"nothing was written.*confidence_to_check",
    ) as info:
        write_changes_postgis(rerun, postgis_dsn, table=table)
    assert "password" not in str(info.value) and postgis_dsn not in str(info.value)
    assert frames_equal(read_changes_postgis(postgis_dsn, table=table), before)

    # A table in another SRID: refused, with what to do, and again nothing changes.
    with pytest.raises(ChangeStoreError, match=r"SRID 4326, not 3035.*srid=4326"):
        write_changes_postgis(make_changes(TILE_33, shift=PIXEL), postgis_dsn, table=table, srid=3035)
    assert frames_equal(read_changes_postgis(postgis_dsn, table=table), before)


def test_empty_input_with_replace_keys_clears_the_tiles_unreviewed_rows(postgis_dsn, table):
    empty = gpd.GeoDataFrame({"change_id": []}, geometry=[], crs="EPSG:32633")
    assert write_changes_postgis(empty, postgis_dsn, table=table) == 0  # creates the table, deletes nothing
    assert read_changes_postgis(postgis_dsn, table=table).empty

    first = make_changes(TILE_33)
    write_changes_postgis(first, postgis_dsn, table=table)
    write_changes_postgis(make_changes(TILE_34), postgis_dsn, table=table)
    set_status(postgis_dsn, table, {first.change_id.iloc[3]: "confirmed"})

    assert write_changes_postgis(empty, postgis_dsn, table=table) == 0  # no keys: nothing deleted
    assert len(read_changes_postgis(postgis_dsn, table=table)) == 8

    bare = gpd.GeoDataFrame(geometry=[])  # a tile without changes may come without columns or CRS
    assert write_changes_postgis(bare, postgis_dsn, table=table, replace_keys=[("33UXP", 2020, 2024)]) == 0
    got = read_changes_postgis(postgis_dsn, table=table)
    assert sorted(got[got.tile_id == "33UXP"].change_id) == [first.change_id.iloc[3]]  # the confirmed one stays
    assert (got.tile_id == "34UCV").sum() == 4


def test_database_without_postgis_gives_the_command_to_run(postgis_dsn, table):
    plain = create_database(postgis_dsn, f"plain_{uuid.uuid4().hex[:8]}", postgis=False)
    with pytest.raises(PostgisMissingError, match=rf"no PostGIS extension.*public\.{table}.*CREATE EXTENSION postgis"):
        write_changes_postgis(make_changes(), plain, table=table)
    with pytest.raises(PostgisMissingError, match="CREATE EXTENSION postgis"):
        read_changes_postgis(plain, table=table)


def test_bad_frames_fail_before_touching_the_database(table):
    dsn, _ = closed_port_dsn()  # any connection attempt would fail with a connection error instead
    good = make_changes()
    with pytest.raises(ValueError, match=r"lack required column\(s\) \['class_to_name', 'score'\]"):
        write_changes_postgis(good.drop(columns=["score", "class_to_name"]), dsn, table=table)
    with pytest.raises(ValueError, match="no CRS"):
        write_changes_postgis(good.set_crs(None, allow_override=True), dsn, table=table)
    with pytest.raises(ValueError, match="duplicate change_id"):
        write_changes_postgis(pd.concat([good, good.iloc[:1]]), dsn, table=table)
    points = good.copy()
    points.loc[1, "geometry"] = points.geometry.iloc[1].centroid
    with pytest.raises(ValueError, match=r"Polygon or MultiPolygon; rows \[1\]"):
        write_changes_postgis(points, dsn, table=table)


def test_connection_errors_say_where_and_what_to_do_without_the_password(postgis_dsn, table, caplog):
    dsn, port = closed_port_dsn(password="s3cret-pw")
    with pytest.raises(ChangeStoreError) as info:
        write_changes_postgis(make_changes(), dsn, table=table)
    message = str(info.value)
    assert f"Is PostGIS running at 127.0.0.1:{port}?" in message
    assert "set the DSN in LCMS_POSTGIS_DSN" in message and f"public.{table}" in message
    assert "s3cret-pw" not in message
    assert redact_dsn(dsn) == f"postgresql://lcms@127.0.0.1:{port}/lcms_test"

    wrong = psycopg.conninfo.make_conninfo(postgis_dsn, password="wr0ng-pw")
    with pytest.raises(ChangeStoreError, match="password authentication failed") as info:
        read_changes_postgis(wrong, table=table)
    assert "wr0ng-pw" not in str(info.value)

    password = psycopg.conninfo.conninfo_to_dict(postgis_dsn)["password"]
    with caplog.at_level(logging.DEBUG, logger="tasks.change.postgis"):
        write_changes_postgis(make_changes(), postgis_dsn, table=table)
    assert f"wrote 4 change polygons to public.{table}" in caplog.text
    assert password not in caplog.text

    with pytest.raises(ChangeStoreError, match=rf"table public\.missing_{table} does not exist"):
        read_changes_postgis(postgis_dsn, table=f"missing_{table}")
