"""Land-cover classification on the real Slovenia test patch, through the stages, east half held out.

    python benchmarks/slovenia_patch_training.py [--store /tmp/lcms-slovenia-store] [--year 2017]

The issue-5 experiment, run through the store-backed stage tasks (no Prefect needed):

1. features: the patch's NDVI frames of the year (eopatch/data/NDVI.npy) with valid = IS_DATA and
   not CLM, frames with valid coverage >= 0.8, interpolated onto the 16-day grid of the year
   (tasks/features/temporal.py), written to the store as the features stage writes them (int16);
2. reference stage: vector_timeless/LULC.gpkg rasterised onto the patch grid, eroded by 1 px;
3. sampling stage: every eligible pixel (fraction 1);
4. merge stage, split `halves`: the west half trains (10 % of all samples held back for early
   stopping), the east half tests;
5. training stage: LightGBM with early stopping, metrics and plots in the store.
It prints OA, kappa and per-class F1 on the held-out east half, and where the model is stored.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np

from lcms.config import DateGridConfig, MergeConfig, ReferenceConfig, SamplingConfig, TrainingConfig
from lcms.geometry import PixelGrid
from lcms.grid import Tile
from lcms.store import TileStore
from tasks.features.temporal import date_grid, interpolate
from tasks.features.tile import pack
from tasks.merge.dataset import merge_samples
from tasks.reference.tile import reference_tile, reference_version
from tasks.sampling.tile import sampling_tile
from tasks.training.metrics import metrics_markdown
from tasks.training.stage import training_stage

PATCH = Path(__file__).resolve().parents[2] / "shared" / "data" / "slovenia-testpatch" / "eopatch"
TILE_ID = "33N_patch"


def patch_grid() -> PixelGrid:
    """eo-learn's grid of the patch: 101 × 100 pixels stretched to fill its bbox exactly."""
    ring = json.loads((PATCH / "bbox.geojson").read_text())["coordinates"][0]
    xs, ys = [p[0] for p in ring], [p[1] for p in ring]
    minx, miny, maxx, maxy = min(xs), min(ys), max(xs), max(ys)
    height, width = np.load(PATCH / "mask_timeless" / "LULC.npy", mmap_mode="r").shape[:2]
    return PixelGrid(
        "EPSG:32633", ((maxx - minx) / width, 0.0, minx, 0.0, -(maxy - miny) / height, maxy), (height, width)
    )


def patch_features(year: int, min_valid_coverage: float = 0.8):
    """NDVI of the year's frames with enough valid pixels, interpolated: (values, no_valid, dates, frames kept)."""
    times = np.array(json.loads((PATCH / "timestamps.json").read_text()), dtype="datetime64[s]")
    in_year = times.astype("datetime64[Y]") == np.datetime64(str(year), "Y")
    valid = (np.load(PATCH / "mask" / "IS_DATA.npy") & ~np.load(PATCH / "mask" / "CLM.npy").astype(bool))[..., 0]
    kept = in_year & (valid.astype(bool).mean(axis=(1, 2)) >= min_valid_coverage)
    targets = date_grid(year, DateGridConfig())
    ndvi = np.load(PATCH / "data" / "NDVI.npy")[kept].astype(np.float32)
    values, no_valid = interpolate(ndvi, times[kept], valid[kept].astype(bool), targets)
    return values, no_valid, targets, int(kept.sum()), valid[kept].sum(axis=0).astype(np.uint16)


def write_patch_inputs(store: TileStore, tile: Tile, year: int) -> int:
    """Features and reference of the patch in the store, as those stages write them; returns frames kept."""
    values, no_valid, targets, n_kept, valid_count = patch_features(year)
    coords = {"time": targets, "feature": np.array(["NDVI"])}
    with store.writer("features", year, tile.tile_id, tile.grid, f"eopatch-ndvi-{year}", coords) as writer:
        writer.write("features", pack(values, "int16"))
        writer.write("no_valid", no_valid)
        writer.write("valid_count", valid_count)
    reference = ReferenceConfig(path=str(PATCH / "vector_timeless" / "LULC.gpkg"), class_column="LULC_ID")
    reference_tile(store, tile, year, reference, reference_version(reference))
    return n_kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path, default=Path("/tmp/lcms-slovenia-store"))
    parser.add_argument("--year", type=int, default=2017)
    args = parser.parse_args()

    shutil.rmtree(args.store, ignore_errors=True)
    store = TileStore(str(args.store))
    grid = patch_grid()
    tile = Tile(TILE_ID, grid, grid.bounds)
    n_kept = write_patch_inputs(store, tile, args.year)
    print(f"{args.year}: {n_kept} frames with valid coverage >= 0.8")

    sampling_tile(store, tile, args.year, SamplingConfig(fraction=1.0))
    merge_samples(store, [TILE_ID], [args.year], {TILE_ID: grid.width}, MergeConfig(split="halves"), 100)
    t0 = time.perf_counter()
    record, metrics = training_stage(store, "land-cover", TrainingConfig())
    seconds = time.perf_counter() - t0
    print(f"samples: {metrics['samples']} (test = east half); training stage {seconds:.2f} s")
    print(metrics_markdown(metrics))
    print(f"model, metrics and plots: {store.url}/training/land-cover/{record.attempt}/")


if __name__ == "__main__":
    main()
