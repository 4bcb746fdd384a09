"""Synthetic tile generation and tile-store I/O on one tile: throughput and peak memory.

    python benchmarks/store_io.py [--size 1000] [--dates 48] [--store /tmp/lcms-bench]

Renders a tile of `size` × `size` px with `dates` acquisitions block by block, writes it
to a local tile store as the download stage does, then reads it back. Prints seconds,
throughput, on-disk size and the process's peak RSS after each step.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import time
from pathlib import Path

import numpy as np

from lcms.geometry import PixelGrid
from lcms.layout import SPATIAL_CHUNK
from lcms.sentinel2 import L1C_BANDS
from lcms.store import TileStore
from tasks.download.synthetic import SyntheticScene


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1000, help="tile side in pixels")
    parser.add_argument("--dates", type=int, default=48, help="acquisitions in the year")
    parser.add_argument("--store", default="/tmp/lcms-bench-store", help="local folder (emptied first)")
    args = parser.parse_args()

    shutil.rmtree(args.store, ignore_errors=True)
    store = TileStore(args.store)
    store.ensure_writable()
    grid = PixelGrid.from_bounds(
        "EPSG:32633", (460_000, 5_090_000, 460_000 + 10 * args.size, 5_090_000 + 10 * args.size), 10
    )
    scene = SyntheticScene(seed=1, dates_per_year=args.dates)
    dates = scene.acquisition_dates(2023)
    pixel_dates = args.size**2 * len(dates)
    raw_bytes = pixel_dates * (len(L1C_BANDS) * 2 + 4)  # bands + data, cloud and valid masks + probability
    print(f"tile {args.size} × {args.size} px, {len(dates)} dates, 13 bands: {raw_bytes / 2**20:.0f} MiB uncompressed")
    print(f"{'step':<34}{'seconds':>9}{'Mpx·dates/s':>13}{'MiB/s':>9}{'peak RSS MiB':>14}")

    def report(step, seconds):
        print(
            f"{step:<34}{seconds:9.2f}{pixel_dates / seconds / 1e6:13.2f}"
            f"{raw_bytes / seconds / 2**20:9.0f}{peak_rss_mib():14.0f}"
        )

    render_s = write_s = 0.0
    coords = {"time": dates, "band": np.array(L1C_BANDS)}
    with store.writer("download", 2023, "T", grid, "bench", coords) as writer:
        for region, block_grid in grid.blocks(SPATIAL_CHUNK):
            t0 = time.perf_counter()
            block = scene.render(block_grid, 2023, dates)
            t1 = time.perf_counter()
            # The generator's true cloud mask stands in for s2cloudless here: this measures I/O only.
            valid = block.data_mask & ~block.cloud_mask
            writer.write("bands", block.bands, region)
            writer.write("data_mask", block.data_mask, region)
            writer.write("cloud_prob", np.where(block.cloud_mask, 100, 0).astype(np.uint8), region)
            writer.write("cloud_mask", block.cloud_mask, region)
            writer.write("shadow_mask", np.zeros_like(block.cloud_mask), region)
            writer.write("valid_mask", valid, region)
            render_s += t1 - t0
            write_s += time.perf_counter() - t1
        writer.write("valid_coverage", np.zeros(len(dates), np.float32))
    report("render (synthetic, 256-px blocks)", render_s)
    report("write to store (zstd)", write_s)

    on_disk = sum(f.stat().st_size for f in Path(args.store).rglob("*") if f.is_file())
    print(f"on disk: {on_disk / 2**20:.0f} MiB, compression ratio {raw_bytes / on_disk:.2f}")

    reader = store.open_tile("download", 2023, "T")
    t0 = time.perf_counter()
    for region, _ in grid.blocks(SPATIAL_CHUNK):
        reader.read("bands", region)
        reader.read("data_mask", region)
    report("read back by 256-px block", time.perf_counter() - t0)
    t0 = time.perf_counter()
    bands = reader.read("bands")
    reader.read("data_mask")
    report("read back whole tile", time.perf_counter() - t0)
    assert bands.dtype == np.uint16


if __name__ == "__main__":
    main()
