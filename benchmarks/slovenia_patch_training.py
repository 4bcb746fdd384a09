"""Land-cover classification on the real Slovenia test patch, through the stages, each half held out in turn.

    python benchmarks/slovenia_patch_training.py [--store /tmp/lcms-slovenia-store] [--year 2017]
        [--seeds 1] [--erosion-px 0] [--min-valid-coverage 0.8] [--context NDVI] [--context-sizes 3 5]
        [--dem] [--class-weight balanced]

The issue-5 experiment, redone in both directions (issue 22), through the store-backed stage tasks
(no Prefect needed):

1. features: the patch's NDVI frames of the year (eopatch/data/NDVI.npy) with valid = IS_DATA and
   not CLM, frames with valid coverage >= --min-valid-coverage, interpolated onto the 16-day grid
   of the year (tasks/features/temporal.py), plus the spatial context features of
   FeaturesConfig.context_* (tasks/features/context.py) and, with --dem, the patch's elevation and
   slope (tasks/features/terrain.py, read from a GeoTIFF), computed on the whole patch and written
   to the store as the features stage writes them (int16), as two tiles: the west half
   (columns 0-49) and the east half (columns 50-99);
2. reference stage: vector_timeless/LULC.gpkg rasterised onto each tile, eroded by --erosion-px;
3. sampling stage: every eligible pixel (fraction 1);
4. merge stage, split by tile: one half trains (a random 20 % of its samples held back for early
   stopping; --seeds draws), the other half is the test tile;
5. training stage: LightGBM with early stopping, metrics and plots in the store, scored on every
   labelled pixel of the held-out half (un-eroded reference) and on its test samples.
It prints, for train west → test east and train east → test west, the training stage's
validation (both sets of pixels side by side) and a closing table of both directions.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np

from lcms.config import (
    DateGridConfig,
    FeaturesConfig,
    MergeConfig,
    ReferenceConfig,
    SamplingConfig,
    TrainingConfig,
)
from lcms.geometry import PixelGrid
from lcms.grid import Tile
from lcms.store import TileStore
from tasks.features.temporal import date_grid, interpolate
from tasks.features.terrain import read_dem, terrain_features
from tasks.features.tile import pack, with_context
from tasks.merge.dataset import merge_samples
from tasks.reference.tile import reference_tile, reference_version
from tasks.sampling.tile import sampling_tile
from tasks.training.metrics import metrics_markdown
from tasks.training.stage import training_stage

PATCH = Path(__file__).resolve().parents[2] / "shared" / "data" / "slovenia-testpatch" / "eopatch"
TILE_ID = "33N_patch"
HALVES = ("west", "east")


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


def patch_tiles() -> dict[str, tuple[Tile, slice]]:
    """The patch as two tiles without buffer: its west and east halves, with their columns in the patch."""
    grid = patch_grid()
    half = grid.width // 2
    cols = {"west": slice(0, half), "east": slice(half, grid.width)}
    return {
        h: (Tile(f"{TILE_ID}_{h}", grid.window(slice(None), c), grid.window(slice(None), c).bounds), c)
        for h, c in cols.items()
    }


def write_patch_dem(path: Path) -> str:
    """The patch's DEM (data_timeless/DEM.npy) as a GeoTIFF on the patch grid, for FeaturesConfig.dem_path."""
    import rasterio

    grid = patch_grid()
    dem = np.load(PATCH / "data_timeless" / "DEM.npy")[..., 0].astype(np.float32)
    profile = {"driver": "GTiff", "height": grid.height, "width": grid.width, "count": 1, "dtype": "float32"}
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", crs=grid.crs, transform=grid.affine, **profile) as dst:
        dst.write(dem, 1)
    return str(path)


def write_patch_inputs(store: TileStore, year: int, features: FeaturesConfig, reference: ReferenceConfig) -> int:
    """Features and reference of both halves in the store, as those stages write them; returns frames kept."""
    values, no_valid, targets, n_kept, valid_count = patch_features(year, features.min_valid_coverage)
    values = with_context(values, features)  # on the whole patch: each half sees its neighbour, like a buffer
    if features.dem_path:  # as the features stage adds it: read onto the grid, the same at every date
        grid = patch_grid()
        terrain = terrain_features(read_dem(features.dem_path, grid), grid.resolution)
        values = np.concatenate([values, np.broadcast_to(terrain, (len(values), *terrain.shape))], axis=-1)
    coords = {"time": targets, "feature": np.array(features.stored_feature_names)}
    for tile, cols in patch_tiles().values():
        with store.writer("features", year, tile.tile_id, tile.grid, f"eopatch-{year}", coords) as writer:
            writer.write("features", pack(values[:, :, cols], "int16"))
            writer.write("no_valid", no_valid[:, cols])
            writer.write("valid_count", valid_count[:, cols])
        reference_tile(store, tile, year, reference, reference_version(reference))
    return n_kept


def merge_seed(test_half: str, start: int) -> int:
    """The first merge seed from `start` whose split by tile holds out `test_half` (tile ids sort east first)."""
    wanted = sorted(f"{TILE_ID}_{h}" for h in HALVES).index(f"{TILE_ID}_{test_half}")
    seed = start
    while np.random.default_rng(seed).permutation(2)[0] != wanted:
        seed += 1
    return seed


def run_direction(
    store: TileStore, year: int, test_half: str, seed: int, training: TrainingConfig
) -> tuple[dict, float]:
    """Sample, merge (holding out `test_half`) and train; (the training stage's metrics, seconds)."""
    tiles = patch_tiles()
    tile_ids = [tiles[h][0].tile_id for h in HALVES]
    widths = {t.tile_id: t.grid.width for t, _ in tiles.values()}
    merge = MergeConfig(split="tile", test_fraction=0.5, validation_fraction=0.1, seed=merge_seed(test_half, seed))
    merge_samples(store, tile_ids, [year], widths, merge, 100)
    t0 = time.perf_counter()
    _, metrics = training_stage(store, "land-cover", training)
    return metrics, time.perf_counter() - t0


def _row(direction: str, runs: list[dict]) -> str:
    def mean(get) -> str:
        return f"{np.mean([get(m) for m in runs]):.3f}"

    a = [m["all_labelled"] for m in runs]
    big = [n for n, c in a[0]["per_class"].items() if c["support"] >= 100]
    recall = {n: float(np.mean([m["per_class"][n]["recall"] for m in a])) for n in big}
    lowest = min(recall, key=recall.get)
    return (
        f"| {direction} | {a[0]['n_samples']} | {mean(lambda m: m['all_labelled']['overall_accuracy'])} | "
        f"{mean(lambda m: m['all_labelled']['kappa'])} | {mean(lambda m: m['all_labelled']['macro_f1'])} | "
        f"{runs[0]['interior']['n_samples']} | {mean(lambda m: m['interior']['overall_accuracy'])} | "
        f"{mean(lambda m: m['interior']['macro_f1'])} | "
        f"{lowest} {recall[lowest]:.2f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path, default=Path("/tmp/lcms-slovenia-store"))
    parser.add_argument("--year", type=int, default=2017)
    parser.add_argument("--seeds", type=int, default=1, help="validation draws per direction (means are printed)")
    parser.add_argument("--erosion-px", type=int, default=ReferenceConfig.model_fields["erosion_px"].default)
    parser.add_argument(
        "--min-valid-coverage", type=float, default=FeaturesConfig.model_fields["min_valid_coverage"].default
    )
    default_features = FeaturesConfig(bands=[], indices=["NDVI"])
    parser.add_argument("--context", nargs="*", default=default_features.context_features, help="e.g. NDVI")
    parser.add_argument("--context-sizes", nargs="+", type=int, default=default_features.context_sizes)
    parser.add_argument("--dem", action="store_true", help="add the patch's DEM: elevation and slope")
    parser.add_argument("--class-weight", default=TrainingConfig().class_weight)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    shutil.rmtree(args.store, ignore_errors=True)
    features = FeaturesConfig(
        bands=[],
        indices=["NDVI"],
        min_valid_coverage=args.min_valid_coverage,
        context_features=args.context,
        context_sizes=args.context_sizes,
        dem_path=write_patch_dem(args.store / "inputs" / "dem.tif") if args.dem else None,
    )
    reference = ReferenceConfig(
        path=str(PATCH / "vector_timeless" / "LULC.gpkg"), class_column="LULC_ID", erosion_px=args.erosion_px
    )
    training = TrainingConfig(num_threads=args.threads, class_weight=args.class_weight)
    store = TileStore(str(args.store))
    n_kept = write_patch_inputs(store, args.year, features, reference)
    for tile, _ in patch_tiles().values():
        sampling_tile(store, tile, args.year, SamplingConfig(fraction=1.0))
    print(
        f"{args.year}: {n_kept} frames with valid coverage >= {features.min_valid_coverage}; features "
        f"{features.stored_feature_names} on {len(date_grid(args.year, DateGridConfig()))} dates; "
        f"reference eroded by {reference.erosion_px} px for sampling"
    )

    results: dict[str, list[dict]] = {}
    for train_half, test_half in (("west", "east"), ("east", "west")):
        direction = f"train {train_half}, test {test_half}"
        for seed in range(args.seeds):
            metrics, seconds = run_direction(store, args.year, test_half, seed * 100, training)
            results.setdefault(direction, []).append(metrics)
            print(f"\n# {direction}, validation draw {seed}: training stage {seconds:.1f} s")
            print(metrics_markdown(metrics))
    print(f"\n# Both directions (means over {args.seeds} validation draw(s)); A = every labelled pixel of the")
    print("# held-out half (un-eroded reference), B = its interior pixels (those a 1-px erosion keeps)\n")
    print("| direction | pixels A | OA A | kappa A | macro F1 A | pixels B | OA B | macro F1 B | lowest recall A * |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for direction, runs in results.items():
        print(_row(direction, runs))
    print("\n* among the classes with at least 100 pixels in A")


if __name__ == "__main__":
    main()
