"""Change polygons API of `lcms serve`: bbox queries with filters over 100 000 synthetic polygons.

    python benchmarks/serve_polygons.py [--polygons 100000] [--queries 50] [--folder /tmp/lcms-bench-serve]

Writes a change layer of random squares (20 to 200 m, random transitions and scores) over about
50 km × 45 km into a local store, exactly where the change stage puts its GeoPackage, then serves
it with the real app (uvicorn on 127.0.0.1, a logged-in HTTP client) over

- the embedded database: the GeoPackage, R-tree first, then the exact intersection test;
- PostGIS: the layer imported into the change table (GIST index). The DSN is LCMS_POSTGIS_DSN,
  or a throw-away server started like the tests' (tests/postgis_server.py) when PostgreSQL and
  PostGIS are installed; otherwise that half is skipped.

Each query is a random bbox sized to hold about --target polygons after the filters
(min_score, class_from in four classes, sorted by score, limit 1000), sent over HTTP; also a vector
tile of the same size. Prints p50 and p95 latencies per backend (goal: p95 ≤ 100 ms for a bbox
query returning 1 000 polygons) and the mean number of polygons returned.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import shutil
import socket
import sys
import threading
import time
import uuid
from pathlib import Path

import geopandas as gpd
import httpx
import numpy as np
import pandas as pd
import shapely

from lcms.config import parse_config
from lcms.store import TileStore

REPO = Path(__file__).resolve().parents[1]
WEST, SOUTH, EAST, NORTH = 14.0, 45.8, 14.65, 46.2
YEARS = (2023, 2024)
PASSWORD = "benchmark password"


def synthetic_layer(n: int, seed: int = 0) -> gpd.GeoDataFrame:
    """n random squares of 20-200 m in EPSG:4326, with the change layer's columns."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(WEST, EAST, n)
    y = rng.uniform(SOUTH, NORTH, n)
    side_m = rng.uniform(20, 200, n)
    half_lat = side_m / 2 / 111_320
    half_lon = half_lat / np.cos(np.radians(y))
    geometries = shapely.box(x - half_lon, y - half_lat, x + half_lon, y + half_lat)
    class_from = rng.integers(1, 10, n)
    class_to = (class_from + rng.integers(1, 9, n) - 1) % 9 + 1
    score = rng.uniform(0, 1, n)
    score[rng.random(n) < 0.05] = np.nan
    tile_col = ((x - WEST) / 0.05).astype(int)
    tile_row = ((y - SOUTH) / 0.05).astype(int)
    frame = pd.DataFrame(
        {
            "change_id": [hashlib.sha256(f"{i}".encode()).hexdigest()[:16] for i in range(n)],
            "tile_id": [f"B_{c:03d}_{r:03d}" for c, r in zip(tile_col, tile_row, strict=True)],
            "year_from": YEARS[0],
            "year_to": YEARS[1],
            "class_from": class_from,
            "class_to": class_to,
            "class_from_name": [f"class {c}" for c in class_from],
            "class_to_name": [f"class {c}" for c in class_to],
            "area_m2": side_m**2,
            "confidence_from": rng.uniform(60, 100, n),
            "confidence_to": rng.uniform(60, 100, n),
            "score": score,
            "status": "unreviewed",
        }
    )
    multi = [shapely.MultiPolygon([g]) for g in geometries]
    return gpd.GeoDataFrame(frame, geometry=multi, crs="EPSG:4326")


def write_store(folder: Path, layer: gpd.GeoDataFrame) -> TileStore:
    store = TileStore(str(folder / "store"), product="land-cover")
    files = folder / "layer"
    files.mkdir(parents=True)
    layer.to_file(
        files / "changes.gpkg", layer="changes", driver="GPKG", engine="pyogrio", geometry_type="MultiPolygon"
    )
    tiles = sorted(layer["tile_id"].unique())
    (files / "summary.json").write_text(json.dumps({"year_from": YEARS[0], "year_to": YEARS[1], "tiles": tiles}))
    store.put_files("change-polygons", f"{YEARS[0]}-{YEARS[1]}", files, "benchmark")
    return store


def run_config(folder: Path, serve: dict):
    return parse_config(
        {
            "name": "serve-benchmark",
            "aoi": {"bbox": [WEST, SOUTH, EAST, NORTH]},
            "years": list(YEARS),
            "store": {"url": str(folder / "store")},
            "serve": {"refresh_seconds": 3600, "max_limit": 10_000, **serve},
        }
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RunningServer:
    """The app on uvicorn in a background thread, and a client logged in as an operator."""

    def __init__(self, config):
        import uvicorn

        from lcms.serve.app import create_app
        from lcms.serve.state import ServeState
        from lcms.serve.users import add_user

        started = time.perf_counter()
        self.state = ServeState.open(config)
        self.open_seconds = time.perf_counter() - started
        with self.state.db.transaction() as conn:
            add_user(conn, f"bench-{uuid.uuid4().hex[:6]}", PASSWORD, "operator", "benchmark")
            username = conn.rows(f"SELECT username FROM {conn.t('users')} ORDER BY id DESC")[0]["username"]
        port = free_port()
        app = create_app(self.state)
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.05)
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
        answer = self.client.post("/auth/login", json={"username": username, "password": PASSWORD})
        answer.raise_for_status()

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.state.close()


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values) * 1000, q))


def tile_for(bbox, z: int) -> tuple[int, int]:
    lon, lat = (bbox[0] + bbox[2]) / 2, (bbox[1] + bbox[3]) / 2
    n = 2**z
    return int((lon + 180) / 360 * n), int((1 - math.asinh(math.tan(math.radians(lat))) / math.pi) / 2 * n)


def measure(server: RunningServer, n: int, queries: int, target: int, seed: int = 1) -> dict:
    """Latencies of bbox queries with filters and of vector tiles, in seconds."""
    rng = np.random.default_rng(seed)
    filters = {"min_score": 0.2, "class_from": [1, 2, 3, 4], "sortby": "-score", "limit": 1000}
    passing = 0.8 * 0.95 * 4 / 9  # score ≥ 0.2 (and not NaN), class_from in four of nine classes
    share = min(1.0, target / (n * passing))  # of the whole area, for `target` polygons after the filters
    width, height = (EAST - WEST) * math.sqrt(share), (NORTH - SOUTH) * math.sqrt(share)
    collection = f"land-cover_{YEARS[0]}-{YEARS[1]}"
    bbox_times, tile_times, returned = [], [], []
    zoom = max(0, round(math.log2(360 / width)))
    for i in range(queries + 5):  # the first 5 warm the caches and are not counted
        west = rng.uniform(WEST, EAST - width)
        south = rng.uniform(SOUTH, NORTH - height)
        bbox = (west, south, west + width, south + height)
        started = time.perf_counter()
        answer = server.client.get(
            f"/changes/collections/{collection}/items", params={**filters, "bbox": ",".join(f"{v:.6f}" for v in bbox)}
        )
        elapsed = time.perf_counter() - started
        answer.raise_for_status()
        x, y = tile_for(bbox, zoom)
        started = time.perf_counter()
        tile = server.client.get(
            f"/changes/collections/{collection}/tiles/{zoom}/{x}/{y}.mvt",
            params={"min_score": 0.2, "class_from": [1, 2, 3, 4]},
        )
        tile_elapsed = time.perf_counter() - started
        tile.raise_for_status()
        if i >= 5:
            bbox_times.append(elapsed)
            tile_times.append(tile_elapsed)
            returned.append(answer.json()["numberReturned"])
    return {"bbox": bbox_times, "tile": tile_times, "returned": returned, "zoom": zoom}


def report(name: str, server: RunningServer, result: dict) -> None:
    load = os.getloadavg()[0]  # latencies are wall time: on a busy machine they include waiting for a core
    print(
        f"\n{name} (service opened in {server.open_seconds:.1f} s; load average {load:.1f} on {os.cpu_count()} cores)"
    )
    print(f"  {'query':<42} {'p50 ms':>8} {'p95 ms':>8} {'polygons':>9}")
    mean = np.mean(result["returned"])
    print(
        f"  {'bbox + filters, GeoJSON (limit 1000)':<42} {percentile(result['bbox'], 50):8.1f} "
        f"{percentile(result['bbox'], 95):8.1f} {mean:9.0f}"
    )
    label = f"vector tile z{result['zoom']} + filters"
    print(f"  {label:<42} {percentile(result['tile'], 50):8.1f} {percentile(result['tile'], 95):8.1f}")


def postgis_dsn_or_server():
    """LCMS_POSTGIS_DSN, or a throw-away server like the tests'; (dsn, server to stop) or (None, reason)."""
    dsn = os.environ.get("LCMS_POSTGIS_DSN")
    if dsn:
        return dsn, None
    sys.path.insert(0, str(REPO / "tests"))
    try:
        from postgis_server import DATABASE, create_database, start_server

        server = start_server()
    except BaseException as exc:  # noqa: BLE001 - pytest's skip/fail are BaseExceptions
        return None, f"no LCMS_POSTGIS_DSN and no local PostGIS to start ({exc})"
    create_database(server.dsn("postgres"), DATABASE, postgis=True)
    return server.dsn(DATABASE), server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--polygons", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--target", type=int, default=1000, help="polygons a query should return")
    parser.add_argument("--folder", default="/tmp/lcms-bench-serve", help="local folder (emptied first)")
    parser.add_argument("--skip-postgis", action="store_true")
    args = parser.parse_args()
    logging.getLogger("lcms.serve.access").setLevel(logging.WARNING)

    folder = Path(args.folder)
    shutil.rmtree(folder, ignore_errors=True)
    started = time.perf_counter()
    layer = synthetic_layer(args.polygons)
    write_store(folder, layer)
    print(f"{args.polygons} synthetic change polygons written in {time.perf_counter() - started:.1f} s")

    server = RunningServer(run_config(folder, {"database_path": str(folder / "serve.sqlite")}))
    try:
        report("GeoPackage (embedded SQLite)", server, measure(server, args.polygons, args.queries, args.target))
    finally:
        server.stop()

    if args.skip_postgis:
        return
    dsn, pg = postgis_dsn_or_server()
    if dsn is None:
        print(f"\nPostGIS: skipped: {pg}")
        return
    os.environ["LCMS_SERVE_BENCH_DSN"] = dsn
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    postgis = {"schema_name": schema, "table": "changes", "dsn_env": "LCMS_SERVE_BENCH_DSN"}
    try:
        server = RunningServer(run_config(folder, {"database": "postgis", "postgis": postgis}))
        try:
            report("PostGIS", server, measure(server, args.polygons, args.queries, args.target))
        finally:
            server.stop()
    finally:
        if pg is not None:
            pg.stop()
            shutil.rmtree(pg.root, ignore_errors=True)


if __name__ == "__main__":
    main()
