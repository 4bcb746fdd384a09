"""Land-cover classification on the real Slovenia test patch, through the stages, each half held out in turn.

    python benchmarks/slovenia_patch_training.py [--store /tmp/lcms-slovenia-store] [--year 2017]
        [--seeds 1] [--erosion-px 0] [--min-valid-coverage 0.8] [--context NDVI] [--context-sizes 3 5]
        [--dem] [--l1c-composite] [--phenology NDVI] [--class-weight balanced] [--feature-fraction 0.3]
    python benchmarks/slovenia_patch_training.py --config examples/slovenia-patch-best.yaml [--seeds 3]
        [--l1c-composite]
    python benchmarks/slovenia_patch_training.py --compare [--seeds 3]   # the table of variants, CV choice, JSON

The issue-5 experiment, redone in both directions (issue 22), through the store-backed stage tasks
(no Prefect needed):

1. features: the patch's NDVI frames of the year (eopatch/data/NDVI.npy) with valid = IS_DATA and
   not CLM, frames with valid coverage >= --min-valid-coverage, interpolated onto the 16-day grid
   of the year (tasks/features/temporal.py), plus the spatial context features of
   FeaturesConfig.context_* (tasks/features/context.py), the yearly statistics of
   FeaturesConfig.phenology_* (tasks/features/phenology.py), with --dem, the patch's elevation and
   slope (tasks/features/terrain.py, read from a GeoTIFF), and, with --l1c-composite, the per-pixel
   median of the patch's three clear L1C scenes (l1c_scenes.npy 2, 3, 4: July to September 2015,
   another year than the NDVI series; the patch has no 2017 bands) as 13 features L1C_1..L1C_13
   (B01..B12 in l1c_scenes_timestamps.json's order, TOA reflectance) read from a 13-band GeoTIFF as
   an auxiliary raster (tasks/features/auxiliary.py), computed on the whole patch and written
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

The settings come from the flags, or from an LCMS config's `features`, `reference.erosion_px` and
`training` sections (--config; its paths and bands are replaced by the patch's: NDVI only).

--compare runs `VARIANTS` (the defaults, the previous best, each idea alone on top of it, and the
combination) through the stages, and then the setting chosen by cross-validation inside the
training half only (`choose_by_cv`: for each direction, each variant of `CANDIDATES` is trained on
the north half of the training half and scored on every labelled pixel of its south half, and the
other way round; the variant with the highest mean OA + macro F1 over both folds wins; no pixel of
the test half is read). It writes the table to benchmarks/results/slovenia_patch_training.json.
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
from tasks.features.phenology import with_phenology
from tasks.features.temporal import date_grid, interpolate
from tasks.features.tile import pack, static_features, unpack, with_context, with_static
from tasks.merge.dataset import merge_samples
from tasks.reference.polygons import erode_labels, rasterize_reference
from tasks.reference.tile import reference_polygons, reference_tile, reference_version
from tasks.sampling.tile import sampling_tile
from tasks.training.metrics import metrics_markdown
from tasks.training.model import train_with_config
from tasks.training.stage import training_stage

PATCH = Path(__file__).resolve().parents[2] / "shared" / "data" / "slovenia-testpatch" / "eopatch"
TILE_ID = "33N_patch"
HALVES = ("west", "east")
L1C_CLEAR_SCENES = (2, 3, 4)  # l1c_scenes.npy: 0 and 1 are fully cloudy (data README)


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


def write_patch_l1c_composite(path: Path) -> str:
    """The per-pixel median of the patch's clear L1C scenes (2015) as a 13-band GeoTIFF on the patch grid (band
    descriptions = band names), for FeaturesConfig.auxiliary_rasters."""
    import rasterio

    grid = patch_grid()
    order = json.loads((PATCH.parent / "l1c_scenes_timestamps.json").read_text())["band_order"]
    scenes = np.load(PATCH.parent / "l1c_scenes.npy")  # (scene, y, x, band)
    median = np.median(scenes[list(L1C_CLEAR_SCENES)], axis=0).astype(np.float32)
    profile = {"driver": "GTiff", "height": grid.height, "width": grid.width, "count": len(order), "dtype": "float32"}
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", crs=grid.crs, transform=grid.affine, **profile) as dst:
        dst.write(np.moveaxis(median, -1, 0))
        for band, name in enumerate(order, start=1):
            dst.set_band_description(band, name)
    return str(path)


def with_patch_inputs(overrides: dict, folder: Path) -> dict:
    """`overrides` with the benchmark's switches `dem` and `l1c_composite` replaced by the files they stand
    for (written into `folder`): FeaturesConfig.dem_path and an entry of FeaturesConfig.auxiliary_rasters."""
    overrides = dict(overrides)
    if overrides.pop("dem", False):
        overrides["dem_path"] = write_patch_dem(folder / "dem.tif")
    if overrides.pop("l1c_composite", False):
        path = write_patch_l1c_composite(folder / "l1c_median_2015.tif")
        composite = {"path": path, "name": "L1C", "scale": 1.0}  # TOA reflectance (0..0.5 here) fits int16 x 1e4
        overrides["auxiliary_rasters"] = [*overrides.get("auxiliary_rasters", []), composite]
    return overrides


def patch_values(year: int, features: FeaturesConfig):
    """The features stage's output on the whole patch: (values (t, y, x, f) float32, no_valid, dates, frames
    kept, valid_count), in the order of `features.stored_feature_names`."""
    values, no_valid, targets, n_kept, valid_count = patch_features(year, features.min_valid_coverage)
    values = with_context(values, features)  # on the whole patch: each half sees its neighbour, like a buffer
    values = with_phenology(values, targets, features)
    values = with_static(values, static_features(features, patch_grid()))  # DEM, auxiliary rasters: as the stage
    return values, no_valid, targets, n_kept, valid_count


def write_patch_inputs(store: TileStore, year: int, features: FeaturesConfig, reference: ReferenceConfig) -> int:
    """Features and reference of both halves in the store, as those stages write them; returns frames kept."""
    values, no_valid, targets, n_kept, valid_count = patch_values(year, features)
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


# The variants --compare runs, each a set of overrides of (features, reference, training) settings.
BEST_SO_FAR = {"erosion_px": 0, "context_features": ["NDVI"]}
VARIANTS: dict[str, dict] = {
    "defaults": {},
    "erosion 0 + NDVI context (previous best)": BEST_SO_FAR,
    "+ NDVI phenology": {**BEST_SO_FAR, "phenology_features": ["NDVI"]},
    "+ class_weight balanced": {**BEST_SO_FAR, "class_weight": "balanced"},
    "+ feature_fraction 0.3": {**BEST_SO_FAR, "feature_fraction": 0.3},
    "+ phenology, feature_fraction 0.3": {**BEST_SO_FAR, "phenology_features": ["NDVI"], "feature_fraction": 0.3},
    "+ phenology, balanced, feature_fraction 0.3": {
        **BEST_SO_FAR,
        "phenology_features": ["NDVI"],
        "class_weight": "balanced",
        "feature_fraction": 0.3,
    },
    "+ phenology, feature_fraction 0.3, L1C 2015 composite": {
        **BEST_SO_FAR,
        "phenology_features": ["NDVI"],
        "feature_fraction": 0.3,
        "l1c_composite": True,
    },
    "+ phenology, balanced, feature_fraction 0.3, L1C 2015 composite": {
        **BEST_SO_FAR,
        "phenology_features": ["NDVI"],
        "class_weight": "balanced",
        "feature_fraction": 0.3,
        "l1c_composite": True,
    },
}
# What cross-validation inside the training half chooses from (every variant but the defaults).
CANDIDATES = [name for name in VARIANTS if name != "defaults"]
REFERENCE_KEYS = {"erosion_px"}
TRAINING_KEYS = set(TrainingConfig.model_fields)


def settings(overrides: dict, threads: int = 2):
    """(FeaturesConfig, ReferenceConfig, TrainingConfig) of the patch: NDVI only, with `overrides`."""
    f = {k: v for k, v in overrides.items() if k not in REFERENCE_KEYS | TRAINING_KEYS}
    r = {k: v for k, v in overrides.items() if k in REFERENCE_KEYS}
    t = {k: v for k, v in overrides.items() if k in TRAINING_KEYS}
    features = FeaturesConfig(**{"bands": [], "indices": ["NDVI"], **f})
    reference = ReferenceConfig(path=str(PATCH / "vector_timeless" / "LULC.gpkg"), class_column="LULC_ID", **r)
    return features, reference, TrainingConfig(**{"num_threads": threads, **t})


def settings_from_config(path: Path, threads: int) -> dict:
    """The overrides an LCMS config's features, reference.erosion_px and training sections give (NDVI only)."""
    import yaml

    data = yaml.safe_load(path.read_text()) or {}
    features = {k: v for k, v in (data.get("features") or {}).items() if k not in ("bands", "indices", "dem_path")}
    erosion = (data.get("reference") or {}).get("erosion_px")
    training = dict(data.get("training") or {})
    training.setdefault("num_threads", threads)
    for raster in features.get("auxiliary_rasters", []):  # relative paths: against the config's folder
        if "://" not in raster["path"]:
            raster["path"] = str((path.parent / Path(raster["path"]).expanduser()).resolve())
    return {**features, **({"erosion_px": erosion} if erosion is not None else {}), **training}


def _flat(values: np.ndarray) -> np.ndarray:
    """(t, y, x, f) → (y, x, t·f), date-major like the sampling stage's columns."""
    t, h, w, f = values.shape
    return values.transpose(1, 2, 0, 3).reshape(h, w, t * f)


def _scores(y: np.ndarray, pred: np.ndarray) -> tuple[float, float]:
    from sklearn import metrics as skm

    present = np.unique(y)
    return float(skm.accuracy_score(y, pred)), float(
        skm.f1_score(y, pred, labels=present, average="macro", zero_division=0)
    )


def cv_score(year: int, train_half: str, overrides: dict, seeds: int, threads: int, inputs: Path) -> dict:
    """Spatial 2-fold CV inside `train_half` only: train on its north (rows < height/2) or south part (on the
    reference eroded as the variant says; 20 % of its samples are validation rows: early stopping on them where
    training.early_stopping_rounds is set, else they train too), score every labelled pixel of
    the other part (un-eroded). Means over folds and `seeds`: {"oa", "macro_f1", "score" = oa + macro_f1}.
    Input files (DEM, L1C composite) are written into `inputs`."""
    features, reference, training = settings(with_patch_inputs(overrides, inputs), threads)
    values, no_valid, *_ = patch_values(year, features)
    X = _flat(unpack(pack(values, features.dtype)))  # as stored
    cols = patch_tiles()[train_half][1]
    labels = rasterize_reference(reference_polygons(reference), patch_grid())[:, cols]
    X, no_valid = X[:, cols], no_valid[:, cols]
    north = np.zeros(labels.shape, dtype=bool)
    north[: labels.shape[0] // 2] = True
    oas, f1s = [], []
    for fit_part in (north, ~north):
        fit_labels = np.where(fit_part, labels, 0)  # erode within the fitting part only
        if reference.erosion_px:
            fit_labels = erode_labels(fit_labels, reference.erosion_px)
        fit = (fit_labels > 0) & ~no_valid
        score = ~fit_part & (labels > 0) & ~no_valid & np.isin(labels, np.unique(fit_labels[fit]))
        for seed in range(seeds):
            rng = np.random.default_rng(seed)
            n = int(fit.sum())
            val = np.zeros(n, dtype=bool)
            val[rng.choice(n, size=int(0.2 * n + 0.5), replace=False)] = True
            Xf, yf = X[fit], fit_labels[fit]
            names = [f"c{i}" for i in range(X.shape[-1])]
            booster = train_with_config(Xf[~val], yf[~val], Xf[val], yf[val], names, training, seed=seed)
            proba = booster.predict(X[score], num_iteration=booster.best_iteration)
            pred = np.asarray(booster.lcms_classes)[proba.argmax(axis=1)]
            oa, f1 = _scores(labels[score], pred)
            oas.append(oa)
            f1s.append(f1)
    return {"oa": float(np.mean(oas)), "macro_f1": float(np.mean(f1s)), "score": float(np.mean(oas) + np.mean(f1s))}


def choose_by_cv(year: int, train_half: str, seeds: int, threads: int, inputs: Path) -> tuple[str, dict[str, dict]]:
    """The candidate with the best CV score inside `train_half`, and every candidate's CV figures."""
    table = {name: cv_score(year, train_half, VARIANTS[name], seeds, threads, inputs) for name in CANDIDATES}
    return max(table, key=lambda n: table[n]["score"]), table


def run_settings(
    store_path: Path, year: int, overrides: dict, seeds: int, threads: int, verbose: bool = True
) -> dict[str, list[dict]]:
    """Every stage on the patch with `overrides`, both directions, `seeds` validation draws each."""
    shutil.rmtree(store_path, ignore_errors=True)
    features, reference, training = settings(with_patch_inputs(overrides, store_path / "inputs"), threads)
    store = TileStore(str(store_path))
    n_kept = write_patch_inputs(store, year, features, reference)
    for tile, _ in patch_tiles().values():
        sampling_tile(store, tile, year, SamplingConfig(fraction=1.0))
    if verbose:
        print(
            f"{year}: {n_kept} frames with valid coverage >= {features.min_valid_coverage}; features "
            f"{features.stored_feature_names} on {len(date_grid(year, DateGridConfig()))} dates; "
            f"reference eroded by {reference.erosion_px} px for sampling; class_weight {training.class_weight}, "
            f"feature_fraction {training.feature_fraction}"
        )
    results: dict[str, list[dict]] = {}
    for train_half, test_half in (("west", "east"), ("east", "west")):
        direction = f"train {train_half}, test {test_half}"
        for seed in range(seeds):
            metrics, seconds = run_direction(store, year, test_half, seed * 100, training)
            results.setdefault(direction, []).append(metrics)
            if verbose:
                print(f"\n# {direction}, validation draw {seed}: training stage {seconds:.1f} s")
                print(metrics_markdown(metrics))
    return results


def summary(runs: list[dict]) -> dict:
    """Means over validation draws of one direction: every labelled pixel (A), interior (B), per-class recall."""
    a = [m["all_labelled"] for m in runs]
    mean = lambda get: round(float(np.mean([get(m) for m in runs])), 4)  # noqa: E731
    return {
        "pixels": a[0]["n_samples"],
        "oa": mean(lambda m: m["all_labelled"]["overall_accuracy"]),
        "kappa": mean(lambda m: m["all_labelled"]["kappa"]),
        "macro_f1": mean(lambda m: m["all_labelled"]["macro_f1"]),
        "interior_pixels": runs[0]["interior"]["n_samples"],
        "interior_oa": mean(lambda m: m["interior"]["overall_accuracy"]),
        "interior_macro_f1": mean(lambda m: m["interior"]["macro_f1"]),
        "recall": {
            n: {
                "recall": round(float(np.mean([x["per_class"][n]["recall"] for x in a])), 3),
                "pixels": a[0]["per_class"][n]["support"],
            }
            for n, c in a[0]["per_class"].items()
            if c["support"] > 0
        },
    }


def print_table(results: dict[str, dict[str, list[dict]]], seeds: int) -> None:
    print(f"\n# Both directions (means over {seeds} validation draw(s)); A = every labelled pixel of the")
    print("# held-out half (un-eroded reference), B = its interior pixels (those a 1-px erosion keeps)\n")
    print("| settings | direction | pixels A | OA A | kappa A | macro F1 A | OA B | macro F1 B | recall A per class |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---|")
    for name, directions in results.items():
        for direction, runs in directions.items():
            m = summary(runs)
            recall = ", ".join(f"{n} {r['recall']:.2f} ({r['pixels']})" for n, r in m["recall"].items())
            print(
                f"| {name} | {direction} | {m['pixels']} | {m['oa']:.3f} | {m['kappa']:.3f} | {m['macro_f1']:.3f} | "
                f"{m['interior_oa']:.3f} | {m['interior_macro_f1']:.3f} | {recall} |"
            )
    print("\nrecall: class recall (pixels of the class in A)")


def compare(args) -> None:
    """Every variant, then the CV-chosen setting per direction; the table printed and written as JSON."""
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    results: dict[str, dict[str, list[dict]]] = {}
    for name, overrides in VARIANTS.items():
        print(f"\n## {name}: {overrides}", flush=True)
        results[name] = run_settings(args.store, args.year, overrides, args.seeds, args.threads, verbose=False)
        print_table({name: results[name]}, args.seeds)
    chosen, cv_tables = {}, {}
    for train_half, test_half in (("west", "east"), ("east", "west")):
        direction = f"train {train_half}, test {test_half}"
        chosen[direction], cv_tables[direction] = choose_by_cv(
            args.year, train_half, args.cv_seeds, args.threads, args.store.with_name(args.store.name + "-inputs")
        )
        print(f"\n# CV inside the {train_half} half (north ↔ south folds, {args.cv_seeds} seed(s)): {direction}")
        print("| candidate | CV OA | CV macro F1 | OA + F1 |\n|---|---:|---:|---:|")
        for name, cv in cv_tables[direction].items():
            mark = " **chosen**" if name == chosen[direction] else ""
            print(f"| {name}{mark} | {cv['oa']:.3f} | {cv['macro_f1']:.3f} | {cv['score']:.3f} |")
        # the chosen variant's test figures for this direction are those of its run above
    results["chosen by CV in the training half"] = {d: results[chosen[d]][d] for d in chosen}
    print_table(results, args.seeds)
    out = Path(__file__).resolve().parent / "results" / "slovenia_patch_training.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "data": "real Slovenia test patch (../shared/data/slovenia-testpatch), 2017 NDVI, 101 x 100 px at "
                "10 m; the L1C variant adds the per-pixel median of the patch's 3 clear L1C scenes "
                "(Jul-Sep 2015, 13 bands)",
                "pixels": "A = every labelled pixel of the held-out half (un-eroded reference, LULC.gpkg), "
                "classes the model learnt; B = its interior pixels (kept by a 1-px erosion)",
                "split": "by tile: west half (columns 0-49) and east half (50-99), each held out in turn; the "
                "training half's samples, 10 % of them the validation split (early stopping on it only where "
                "training.early_stopping_rounds is set; without it, the default, they train too)",
                "seeds": args.seeds,
                "cv_method": "2-fold spatial CV (north/south parts) inside the training half only; "
                f"score = OA + macro F1; {args.cv_seeds} seed(s)",
                "started_utc": started,
                "variants": {name: VARIANTS.get(name, "per direction") for name in results},
                "chosen_by_cv": chosen,
                "cv_figures": cv_tables,
                "results": {name: {d: summary(r) for d, r in dirs.items()} for name, dirs in results.items()},
            },
            indent=2,
        )
        + "\n"
    )
    print(f"\nwritten: {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path, default=Path("/tmp/lcms-slovenia-store"))
    parser.add_argument("--year", type=int, default=2017)
    parser.add_argument("--seeds", type=int, default=1, help="validation draws per direction (means are printed)")
    parser.add_argument("--config", type=Path, help="take the settings from an LCMS config (features, training, ...)")
    parser.add_argument("--compare", action="store_true", help="run VARIANTS and the CV choice; write the JSON")
    parser.add_argument("--cv-seeds", type=int, default=1, help="validation draws per CV fold (--compare)")
    parser.add_argument("--erosion-px", type=int, default=ReferenceConfig.model_fields["erosion_px"].default)
    parser.add_argument(
        "--min-valid-coverage", type=float, default=FeaturesConfig.model_fields["min_valid_coverage"].default
    )
    default_features = FeaturesConfig(bands=[], indices=["NDVI"])
    parser.add_argument("--context", nargs="*", default=default_features.context_features, help="e.g. NDVI")
    parser.add_argument("--context-sizes", nargs="+", type=int, default=default_features.context_sizes)
    parser.add_argument("--phenology", nargs="*", default=default_features.phenology_features, help="e.g. NDVI")
    parser.add_argument("--dem", action="store_true", help="add the patch's DEM: elevation and slope")
    parser.add_argument(
        "--l1c-composite",
        action="store_true",
        help="add the median of the patch's clear 2015 L1C scenes (13 bands) as an auxiliary raster",
    )
    parser.add_argument("--class-weight", default=TrainingConfig().class_weight)
    parser.add_argument("--feature-fraction", type=float, default=TrainingConfig().feature_fraction)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    if args.compare:
        compare(args)
        return
    if args.config:
        overrides = {**settings_from_config(args.config, args.threads), "l1c_composite": args.l1c_composite}
    else:
        overrides = {
            "erosion_px": args.erosion_px,
            "min_valid_coverage": args.min_valid_coverage,
            "context_features": args.context,
            "context_sizes": args.context_sizes,
            "phenology_features": args.phenology,
            "dem": args.dem,
            "l1c_composite": args.l1c_composite,
            "class_weight": args.class_weight,
            "feature_fraction": args.feature_fraction,
        }
    results = run_settings(args.store, args.year, overrides, args.seeds, args.threads)
    print_table({"settings": results}, args.seeds)


if __name__ == "__main__":
    main()
