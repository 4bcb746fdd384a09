"""Land-cover classification on the real Slovenia test patch, with a spatially held-out half.

    python benchmarks/slovenia_patch_training.py [--out /tmp/lcms-slovenia-model]

The issue-5 experiment, run with the tile-level modules directly (the stages that will
wire them together are not built yet):

1. features: the patch's 2017 NDVI frames (eopatch/data/NDVI.npy) with valid = IS_DATA and
   not CLM, frames with valid coverage >= 0.8, interpolated onto the 16-day 2017 grid
   (tasks/temporal.py);
2. reference: vector_timeless/LULC.gpkg rasterised onto the patch grid and eroded by 1 px
   (tasks/reference.py);
3. samples: every labelled pixel; the west half of the patch trains (with a validation
   share for early stopping), the east half tests (tasks/sampling.py);
4. LightGBM with early stopping, then metrics and plots in --out (tasks/training.py).
It prints OA, kappa and per-class F1 on the held-out east half.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from lcms.config import DateGridConfig
from lcms.geometry import PixelGrid
from lcms.legend import LULC_LEGEND
from tasks.reference import erode_labels, load_reference, rasterize_reference
from tasks.sampling import feature_columns, gather_samples, sample_pixels, split_halves
from tasks.temporal import date_grid, interpolate
from tasks.training import evaluate, metrics_markdown, save_model, train_model

PATCH = Path(__file__).resolve().parents[2] / "shared" / "data" / "slovenia-testpatch" / "eopatch"
YEAR = 2017


def patch_grid() -> PixelGrid:
    """eo-learn's grid of the patch: 101 × 100 pixels stretched to fill its bbox exactly."""
    ring = json.loads((PATCH / "bbox.geojson").read_text())["coordinates"][0]
    xs, ys = [p[0] for p in ring], [p[1] for p in ring]
    minx, miny, maxx, maxy = min(xs), min(ys), max(xs), max(ys)
    height, width = np.load(PATCH / "mask_timeless" / "LULC.npy", mmap_mode="r").shape[:2]
    return PixelGrid(
        "EPSG:32633", ((maxx - minx) / width, 0.0, minx, 0.0, -(maxy - miny) / height, maxy), (height, width)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("/tmp/lcms-slovenia-model"))
    parser.add_argument("--min-valid-coverage", type=float, default=0.8)
    args = parser.parse_args()

    times = np.array(json.loads((PATCH / "timestamps.json").read_text()), dtype="datetime64[s]")
    in_year = (times >= np.datetime64(f"{YEAR}-01-01")) & (times < np.datetime64(f"{YEAR + 1}-01-01"))
    ndvi = np.load(PATCH / "data" / "NDVI.npy")[in_year]
    valid = (np.load(PATCH / "mask" / "IS_DATA.npy") & ~np.load(PATCH / "mask" / "CLM.npy").astype(bool))[in_year]
    valid = valid[..., 0].astype(bool)
    kept = valid.mean(axis=(1, 2)) >= args.min_valid_coverage
    targets = date_grid(YEAR, DateGridConfig())
    features, no_valid = interpolate(ndvi[kept].astype(np.float32), times[in_year][kept], valid[kept], targets)
    print(f"{YEAR}: {in_year.sum()} frames, {kept.sum()} kept (valid coverage >= {args.min_valid_coverage})")

    grid = patch_grid()
    reference = load_reference(str(PATCH / "vector_timeless" / "LULC.gpkg"), "LULC_ID", LULC_LEGEND)
    labels = erode_labels(rasterize_reference(reference, grid), radius_px=1)
    pixels = sample_pixels(labels, fraction=1.0, exclude=no_valid)
    X, y = gather_samples(features, labels, pixels)
    columns = feature_columns(targets, ["NDVI"])

    halves = split_halves(pixels % grid.width, grid.width)
    train = halves["train"]
    # Early stopping needs its own data: every 5th training sample of the west half.
    val = train & (np.arange(len(y)) % 5 == 0)
    fit = train & ~val
    t0 = time.perf_counter()
    booster = train_model(X[fit], y[fit], X[val], y[val], columns, seed=0)
    seconds = time.perf_counter() - t0
    classes = booster.lcms_classes
    args.out.mkdir(parents=True, exist_ok=True)
    save_model(booster, args.out, LULC_LEGEND, classes, {"data": "Slovenia test patch 2017 NDVI, west half"})
    metadata = json.loads((args.out / "model.json").read_text())
    test = halves["test"] & np.isin(y, classes)
    metrics = evaluate(booster, metadata, X[test], y[test], args.out, y_train=y[fit])
    print(
        f"samples: {fit.sum()} train, {val.sum()} validation, {test.sum()} test (east half); trained in {seconds:.2f} s"
    )
    print(metrics_markdown(metrics))
    print(f"metrics and plots in {args.out}")


if __name__ == "__main__":
    main()
