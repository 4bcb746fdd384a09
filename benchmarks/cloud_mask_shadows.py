"""Cloud shadows through the download stage on a synthetic tile: precision, recall, time and peak memory.

    .venv/bin/python benchmarks/cloud_mask_shadows.py [--size 512] [--dates 24] [--seed 42] [--cloud-cover 0.4]

Runs `tasks.download.tile.download_tile` (synthetic L1C source, s2cloudless at the defaults,
shadows on) on one `size` × `size` px tile at 10 m in a subprocess per setting, so that each
reports its own peak RSS (VmHWM), with `tile_edge_context` off (clouds and their context end
at the tile's edges) and on (the detector's context and the shadow margin beyond the edges are
read from the source). Then it compares the stored shadow masks with the synthetic scene's
true shadows (`SyntheticTile.shadow_mask`: every true shadow pixel of the tile, also those
cast by clouds outside it) and prints precision and recall.

Synthetic figures: the scene's shadows are its own cloud field moved 0.6-2 km away from the
sun, darkening the ground by up to 60 %; real shadows are softer and their clouds vary in height.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))
from eolearn_env import peak_rss_mib  # noqa: E402

ORIGIN = (460_000.0, 5_100_000.0)  # upper-left corner in UTM 33N (EPSG:32633)
YEAR = 2023


def _setup(args):
    from lcms.config import CloudMaskConfig, DownloadConfig, SyntheticSourceConfig
    from lcms.geometry import PixelGrid
    from lcms.grid import Tile

    x0, y1 = ORIGIN
    grid = PixelGrid("EPSG:32633", (10, 0, x0, 0, -10, y1), (args.size, args.size))
    source = SyntheticSourceConfig(seed=args.seed, dates_per_year=args.dates, cloud_cover=args.cloud_cover)
    cfg = DownloadConfig(source=source, cloud_mask=CloudMaskConfig(tile_edge_context=args.context == "on"))
    return Tile("BENCH", grid, grid.bounds), cfg


def _worker(args) -> dict:
    from lcms.store import TileStore
    from tasks.download.tile import download_tile

    tile, cfg = _setup(args)
    t0 = time.perf_counter()
    download_tile(TileStore(str(args.store)), tile, YEAR, cfg)
    return {"seconds": time.perf_counter() - t0, "peak_rss_mib": peak_rss_mib()}


def _scores(args, store: Path) -> dict:
    import numpy as np

    from lcms.store import TileStore
    from tasks.download.synthetic import SyntheticScene

    tile, cfg = _setup(args)
    reader = TileStore(str(store)).open_tile("download", YEAR, tile.tile_id)
    found = reader.read("shadow_mask")
    truth = SyntheticScene(**cfg.source.model_dump(exclude={"kind"})).render(tile.grid, YEAR, reader.coord("time"))
    hit = np.count_nonzero(found & truth.shadow_mask)
    return {
        "true_shadow_fraction": float(truth.shadow_mask.mean()),
        "found_fraction": float(found.mean()),
        "precision": hit / max(np.count_nonzero(found), 1),
        "recall": hit / max(np.count_nonzero(truth.shadow_mask), 1),
        "cloud_agreement": float((reader.read("cloud_mask") == truth.cloud_mask).mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--dates", type=int, default=24)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--cloud-cover", type=float, default=0.4)
    parser.add_argument("--context", choices=["on", "off"], help=argparse.SUPPRESS)
    parser.add_argument("--store", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = parser.parse_args()
    if args.context and args.store:
        print(json.dumps(_worker(args)))
        return

    print(
        f"synthetic tile {args.size} × {args.size} px at 10 m, {args.dates} dates, seed {args.seed}, "
        f"cloud cover {args.cloud_cover}",
        flush=True,
    )
    results = {}
    with tempfile.TemporaryDirectory(prefix="lcms-shadow-bench-") as tmp:
        for context in ("off", "on"):
            store = Path(tmp) / f"store-{context}"
            cmd = [sys.executable, str(Path(__file__).resolve()), "--context", context, "--store", str(store)]
            cmd += ["--size", str(args.size), "--dates", str(args.dates), "--seed", str(args.seed)]
            cmd += ["--cloud-cover", str(args.cloud_cover)]
            proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(proc.stderr[-3000:])
            args.context = context
            results[context] = {**json.loads(proc.stdout.strip().splitlines()[-1]), **_scores(args, store)}
            args.context = None
    print(
        f"{'tile_edge_context':<18}{'seconds':>9}{'peak RSS MiB':>14}{'precision':>11}{'recall':>8}{'true shadow':>13}"
    )
    for context, r in results.items():
        print(
            f"{context:<18}{r['seconds']:9.1f}{r['peak_rss_mib']:14.0f}{r['precision']:11.3f}{r['recall']:8.3f}"
            f"{r['true_shadow_fraction']:13.3f}"
        )
    print("(recall: of every true shadow pixel of the tile, also those cast by clouds beyond its edges)")
    if args.out:
        args.out.write_text(
            json.dumps(
                {
                    "args": {k: v for k, v in vars(args).items() if k in ("size", "dates", "seed", "cloud_cover")},
                    "results": results,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
