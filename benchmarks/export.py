"""COG export of a synthetic mosaic: time, throughput, peak memory and output size.

    python benchmarks/export.py [--tiles 8] [--size 1000] [--compress DEFLATE] [--crs EPSG:3035]

Builds `tiles` × `tiles` pieces of `size` px cores (plus a 10 px buffer) on a 10 m UTM 33N
lattice. Each piece's `read` renders its window on demand (blocky class patches, consistent
across tile borders), so no map exists in memory before the export asks for it, as in the
real stage where `read` pulls a tile from the store. Prints seconds, Mpx/s, the process's
peak RSS before and after the export, tracemalloc's peak of Python/numpy allocations during
it, and the COG's size. With `--crs` the cores are reprojected into that CRS at 10 m.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import time
import tracemalloc
from pathlib import Path

import numpy as np

from lcms.geometry import PixelGrid
from lcms.legend import LULC_LEGEND
from tasks.export.cog import TilePiece, export_cog, validate_cog

RES = 10.0
BUFFER = 10
PATCH = 25  # px side of the class patches
X0, Y1 = 400_000.0, 5_200_000.0


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def render(rows: slice, cols: slice, row0: int, col0: int) -> np.ndarray:
    """Class codes 1–10 of the global pixels (row0 + rows, col0 + cols): hashed 25 px patches."""
    r = (np.arange(rows.start, rows.stop) + row0) // PATCH
    c = (np.arange(cols.start, cols.stop) + col0) // PATCH
    h = (r[:, None].astype(np.uint64) * np.uint64(73856093)) ^ (c[None, :].astype(np.uint64) * np.uint64(19349663))
    return (h % np.uint64(10) + np.uint64(1)).astype(np.uint8)


def make_pieces(tiles: int, size: int) -> list[TilePiece]:
    pieces = []
    side = size + 2 * BUFFER
    for ty in range(tiles):
        for tx in range(tiles):
            # Global row/col of the grid's first pixel: buffers render the neighbours' pixels, as real tiles do.
            row0, col0 = ty * size - BUFFER, tx * size - BUFFER
            grid = PixelGrid("EPSG:32633", (RES, 0, X0 + col0 * RES, 0, -RES, Y1 - row0 * RES), (side, side))
            core = (slice(BUFFER, BUFFER + size), slice(BUFFER, BUFFER + size))

            def read(window, row0=row0, col0=col0):
                return render(window[0], window[1], row0, col0)

            pieces.append(TilePiece(f"33N_{tx:03d}_{ty:03d}", grid, core, read))
    return pieces


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiles", type=int, default=8, help="tiles per side")
    parser.add_argument("--size", type=int, default=1000, help="core side in pixels")
    parser.add_argument("--compress", default="DEFLATE")
    parser.add_argument("--blocksize", type=int, default=512)
    parser.add_argument("--crs", default=None, help="reproject into this CRS at 10 m (e.g. EPSG:3035)")
    parser.add_argument("--out", default="/tmp/lcms-bench-export/lulc.tif", help="output COG (its folder is emptied)")
    args = parser.parse_args()

    out = Path(args.out)
    shutil.rmtree(out.parent, ignore_errors=True)
    pieces = make_pieces(args.tiles, args.size)
    mpx = args.tiles**2 * args.size**2 / 1e6
    tile_mib = (args.size + 2 * BUFFER) ** 2 / 2**20
    print(
        f"{args.tiles} × {args.tiles} tiles of {args.size} px: {mpx:.0f} Mpx uint8 = "
        f"{mpx * 1e6 / 2**20:.0f} MiB mosaic, {tile_mib:.1f} MiB per tile; {args.compress}, {args.blocksize} px blocks"
        + (f", reprojected to {args.crs}" if args.crs else "")
    )
    rss_before = peak_rss_mib()
    tracemalloc.start()
    t0 = time.perf_counter()
    result = export_cog(
        pieces,
        str(out),
        crs=args.crs,
        resolution=RES if args.crs else None,
        legend=LULC_LEGEND,
        compress=args.compress,
        blocksize=args.blocksize,
    )
    seconds = time.perf_counter() - t0
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss_after = peak_rss_mib()
    t1 = time.perf_counter()
    is_valid, errors, _ = validate_cog(out)
    validate_s = time.perf_counter() - t1

    print(f"{'export seconds':<34}{seconds:10.2f}")
    print(f"{'throughput Mpx/s':<34}{mpx / seconds:10.2f}")
    print(f"{'output px (h × w)':<34}{result.shape[0]:>5} × {result.shape[1]}")
    print(f"{'peak RSS before export MiB':<34}{rss_before:10.0f}")
    print(f"{'peak RSS after export MiB':<34}{rss_after:10.0f}")
    print(f"{'  growth during export MiB':<34}{rss_after - rss_before:10.0f}")
    print(f"{'tracemalloc peak MiB':<34}{traced_peak / 2**20:10.1f}")
    print(f"{'COG size MiB':<34}{out.stat().st_size / 2**20:10.2f}")
    print(f"{'cog_validate':<34}{'valid' if is_valid else 'INVALID ' + '; '.join(errors):>10} ({validate_s:.2f} s)")


if __name__ == "__main__":
    main()
