"""Tile latency of `lcms serve`: a label tile and an imagery tile of the demo's maps, cold and warm.

    .venv/bin/python benchmarks/serve_tiles.py [--config examples/demo.yaml] [--repeats 20]

Needs the demo's maps with the imagery composites (`make demo`, or `lcms export examples/demo.yaml`
after an older demo). Starts a real ``lcms serve`` process on 127.0.0.1 over the demo's store, with a
throw-away user database in a temp folder, logs in as a viewer and asks, over HTTP with keep-alive:

- **cold**: every Web Mercator tile (zooms 13-15) over the layer's bounds once, in a freshly
  started server (GDAL's block cache and the service's caches empty; the OS file cache is whatever
  it is);
- **warm**: the same tiles again, `--repeats` times each.

for the labels of the first year (`/maps/<product>/<year>/labels/...`) and the true-colour
composite of that year (`/imagery/<year>/true-colour/...`), at 256 and 512 px, and prints p50 and
p95 in milliseconds (client-side, the whole request: session check, STAC lookup, COG reads,
rendering). Then the same warm tiles rendered in this process (`lcms.serve.tiling.render_tile`:
COG reads and PNG encoding only, no HTTP, no session), to tell the tiler's share from the service's.
The goal: p95 ≤ 50 ms for a warm 256 px tile. The machine's load average is printed with the
figures: on a shared machine they are upper bounds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import morecantile
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from serve_support import PASSWORD, Client, Server  # noqa: E402

from lcms.config import load_config  # noqa: E402

LCMS = str(Path(sys.executable).with_name("lcms"))
TMS = morecantile.tms.get("WebMercatorQuad")
ZOOMS = (13, 14, 15)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def bench_config(config_path: Path, folder: Path) -> Path:
    """The demo config with absolute paths and a throw-away service database."""
    config = load_config(config_path)
    data = yaml.safe_load(config_path.read_text())
    data["store"] = {**data.get("store", {}), "url": config.store.url}
    if config.reference.path:
        data["reference"] = {**data["reference"], "path": config.reference.path}
    data["serve"] = {**data.get("serve", {}), "database_path": str(folder / "serve.sqlite")}
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def timed(client: httpx.Client, url: str) -> tuple[float, int]:
    start = time.perf_counter()
    answer = client.get(url)
    return (time.perf_counter() - start) * 1000, answer.status_code


def tiles_over(bounds) -> list[morecantile.Tile]:
    west, south, east, north = bounds
    return [t for z in ZOOMS for t in TMS.tiles(west, south, east, north, [z])]


def in_process(config_path: Path, layers: dict, repeats: int) -> list[tuple]:
    """Warm 256 px tiles through `render_tile` in this process: the tiler alone."""
    from lcms.serve.tiling import LayerIndex, render_tile
    from lcms.store import TileStore

    config = load_config(config_path)
    store = TileStore.from_config(config.store, config.product)
    index = LayerIndex(config.export.url or store.maps_url(), store.storage_options)
    rows = []
    for name, (prefix, bounds) in layers.items():
        parts = prefix.strip("/").split("/")
        layer = (
            index.get("maps", parts[1], parts[2], parts[3])
            if parts[0] == "maps"
            else index.get("imagery", None, parts[1], parts[2])
        )
        tiles = tiles_over(bounds)
        for t in tiles:  # warm-up
            render_tile(layer, t.z, t.x, t.y, 256, "png", store.storage_options)
        ms = []
        for _ in range(repeats):
            for t in tiles:
                start = time.perf_counter()
                render_tile(layer, t.z, t.x, t.y, 256, "png", store.storage_options)
                ms.append((time.perf_counter() - start) * 1000)
        rows.append((f"{name} (render_tile)", 256, "warm", len(ms), statistics.median(ms), percentile(ms, 95), []))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "examples" / "demo.yaml"))
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lcms-bench-serve-") as tmp:
        folder = Path(tmp)
        config = bench_config(Path(args.config), folder)
        subprocess.run(
            [LCMS, "users", "add", str(config), "bench", "--role", "viewer", "--password-stdin"],
            input=PASSWORD + "\n",
            text=True,
            check=True,
            capture_output=True,
        )
        server = Server(config, folder / "serve.log")
        try:
            client = Client(server.url, "bench")
            maps = client.get("/maps").json()["layers"]
            imagery = client.get("/imagery").json()["layers"]
            labels = next((m for m in maps if m["layer"] == "labels"), None)
            if labels is None:
                sys.exit("the demo has no exported maps: run `make demo` first")
            year = str(labels["year"])
            composite = next((m for m in imagery if m["period"] == year and m["composite"] == "true-colour"), None)
            if composite is None:
                sys.exit(f"no true-colour composite of {year}: run `lcms export {args.config}` to write them")
            layers = {
                f"labels {labels['product']} {year}": (f"/maps/{labels['product']}/{year}/labels", labels["bounds"]),
                f"imagery true-colour {year}": (f"/imagery/{year}/true-colour", composite["bounds"]),
            }
            rows = []
            for size in (256, 512):
                for name, (prefix, bounds) in layers.items():
                    tiles = tiles_over(bounds)
                    urls = [f"{prefix}/tiles/{t.z}/{t.x}/{t.y}.png?tile_size={size}" for t in tiles]
                    cold = [timed(client, url) for url in urls]
                    warm = [timed(client, url) for _ in range(args.repeats) for url in urls]
                    statuses = sorted({s for _, s in cold + warm})
                    for phase, results in (("cold", cold), ("warm", warm)):
                        ms = [m for m, _ in results]
                        rows.append((name, size, phase, len(ms), statistics.median(ms), percentile(ms, 95), statuses))
            client.close()
        finally:
            server.stop()
        rows += in_process(Path(args.config), layers, args.repeats)
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"lcms serve tile latency, {args.config} (zooms {ZOOMS}; ms; {os.cpu_count()} CPUs, load average {load})")
    print(f"{'layer (HTTP unless marked)':46} {'px':>4} {'phase':5} {'n':>5} {'p50 ms':>8} {'p95 ms':>8}  statuses")
    for name, size, phase, n, p50, p95, statuses in rows:
        print(f"{name:46} {size:>4} {phase:5} {n:>5} {p50:8.1f} {p95:8.1f}  {statuses}")
    goal = [r for r in rows if r[1] == 256 and r[2] == "warm" and "render_tile" not in r[0]]
    worst = max(r[5] for r in goal)
    print(f"goal p95 ≤ 50 ms for a warm 256 px tile: worst p95 {worst:.1f} ms -> {'met' if worst <= 50 else 'NOT met'}")


if __name__ == "__main__":
    main()
