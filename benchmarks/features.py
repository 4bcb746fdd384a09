"""Features stage on one tile: time and peak memory of the whole tile task (read, indices,
interpolation, pack, write), by default on 1000 × 1000 px with 60 dates and 13 bands.

    python benchmarks/features.py [--size 1000] [--dates 60] [--block 256]

The download output is made first (synthetic source, true clouds as the cloud mask so that
this measures the features stage only); the features run then happens in a fresh process,
so that its peak RSS is its own.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time

import numpy as np

from lcms.config import FeaturesConfig
from lcms.geometry import PixelGrid
from lcms.layout import SPATIAL_CHUNK
from lcms.sentinel2 import L1C_BANDS
from lcms.store import TileStore
from tasks.download.synthetic import SyntheticScene

RUN_FEATURES = """
import json, resource, sys, time
from lcms.config import FeaturesConfig
from lcms.grid import Tile
from lcms.geometry import PixelGrid
from lcms.store import TileStore
from tasks.features.tile import features_tile
args = json.loads(sys.argv[1])
store = TileStore(args["store"])
grid = PixelGrid.from_attrs(args["grid"])
t0 = time.perf_counter()
features_tile(store, Tile("T", grid, grid.bounds), 2023, FeaturesConfig(block_size=args["block"]))
print(json.dumps({"seconds": time.perf_counter() - t0,
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def make_download(store: TileStore, grid: PixelGrid, dates: int) -> None:
    scene = SyntheticScene(seed=2, dates_per_year=dates)
    times = scene.acquisition_dates(2023)
    coverage = np.zeros(len(times))
    with store.writer("download", 2023, "T", grid, "bench", {"time": times, "band": np.array(L1C_BANDS)}) as w:
        for region, block in grid.blocks(SPATIAL_CHUNK):
            tile = scene.render(block, 2023, times)
            valid = tile.data_mask & ~tile.cloud_mask
            w.write("bands", tile.bands, region)
            w.write("data_mask", tile.data_mask, region)
            w.write("cloud_prob", np.where(tile.cloud_mask, 100, 0).astype(np.uint8), region)
            w.write("cloud_mask", tile.cloud_mask, region)
            w.write("shadow_mask", np.zeros_like(tile.cloud_mask), region)
            w.write("valid_mask", valid, region)
            coverage += valid.sum(axis=(1, 2))
        w.write("valid_coverage", (coverage / grid.height / grid.width).astype(np.float32))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1000)
    parser.add_argument("--dates", type=int, default=60)
    parser.add_argument("--block", type=int, default=256)
    args = parser.parse_args()
    grid = PixelGrid.from_bounds(
        "EPSG:32633", (460_000, 5_090_000, 460_000 + 10 * args.size, 5_090_000 + 10 * args.size), 10
    )
    with tempfile.TemporaryDirectory(prefix="lcms-bench-features-") as folder:
        store = TileStore(folder)
        t0 = time.perf_counter()
        make_download(store, grid, args.dates)
        print(f"download output made in {time.perf_counter() - t0:.1f} s")
        coverage = store.open_tile("download", 2023, "T").read("valid_coverage")
        kept = int((coverage >= FeaturesConfig().min_valid_coverage).sum())
        request = json.dumps({"store": folder, "grid": grid.to_attrs(), "block": args.block})
        out = subprocess.run([sys.executable, "-c", RUN_FEATURES, request], capture_output=True, text=True, check=True)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        n_features = len(FeaturesConfig().feature_names)
        px_dates = args.size**2 * args.dates
        print(
            f"tile {args.size} × {args.size} px, {args.dates} dates × 13 bands ({kept} frames kept), "
            f"{n_features} features on 23 dates, {args.block}-px blocks"
        )
        print(
            f"features stage: {result['seconds']:.1f} s, {px_dates / result['seconds'] / 1e6:.2f} Mpx·dates/s, "
            f"peak RSS {result['peak_rss_mib']:.0f} MiB"
        )


if __name__ == "__main__":
    main()
