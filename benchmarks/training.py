"""Training: LCMS's `train_model` beside eo-learn's example classifier, on the same samples.

    python benchmarks/training.py [--quick] [--threads 2] [--repeats 3]

Two contenders, both LightGBM 4, both with the same number of threads (--threads, default 2,
set explicitly as `num_threads` / `n_jobs`):

* LCMS: `tasks.training.train_model` with the training stage's settings (TrainingConfig's
  defaults: 50 rounds at learning rate 0.3, 15 leaves, 30 % of the columns per tree, 63 bins,
  no early stopping, so the validation split trains too; seed 0); predictions through
  `predict_labels` (the trees the model keeps, as `save_model` writes them);
* eo-learn: the land-cover example's `lightgbm.LGBMClassifier(objective="multiclass",
  num_class=k, metric="multi_logloss")`, otherwise defaults (100 rounds, no validation set),
  random_state=0 and verbose=-1 (quiet), fitted on training + validation, as eo-learn uses
  all its training samples.

First, the real patch in both directions (`real_patch`): the store-backed stages of
benchmarks/slovenia_patch_training.py (2017 NDVI, int16 in a store under --store), one half
trains, the other is held out; LCMS's training stage (`fit_merged`, TrainingConfig's defaults)
beside eo-learn's example classifier on the same training + validation rows, both scored on every
labelled pixel of the held-out half (un-eroded reference, class borders included).

Datasets (the test split is never seen by either contender):

* "Slovenia 2017": the real patch as in benchmarks/slovenia_patch_training.py: 2017 NDVI
  frames with valid coverage >= 0.8 interpolated onto the 16-day grid, LULC.gpkg rasterised
  and eroded by 1 px, every labelled pixel with data; the west half trains (every 5th sample
  held back as LCMS's validation split), the east half tests;
* "Slovenia 2016+2017": the same, with 2016 and 2017 each interpolated onto its own year's
  grid and the samples of both years stacked (about twice as many samples);
* "synthetic": one `tasks.download.synthetic.SyntheticScene` tile (500 × 500 px, 200 × 200 with
  --quick) of 2023: NDVI, NDWI and B02/B04/B08/B11 reflectance, frames with true valid
  coverage >= 0.8 (true cloud mask, no cloud detector), interpolated onto the 16-day grid;
  100k uniformly sampled pixels of the eroded land cover (15k with --quick), split by
  50-px blocks into 50 % test, 10 % validation, 40 % train.

Fit and predict seconds are wall-clock medians of --repeats runs (time.perf_counter); OA,
Cohen's kappa and macro F1 are computed here with sklearn.metrics on the test split. Peak
memory is not measured: LightGBM allocates in C++, which tracemalloc cannot see, and the
process's peak RSS mixes both contenders. The load average is printed, since other processes
on the machine slow OpenMP threads down badly.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import lightgbm as lgb
import numpy as np
from sklearn import metrics as skm

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # sibling benchmark scripts, as interpolation.py imports eolearn_env
from slovenia_patch_training import PATCH, merge_seed, patch_grid, patch_tiles, write_patch_inputs  # noqa: E402

from lcms.config import (  # noqa: E402
    DateGridConfig,
    FeaturesConfig,
    MergeConfig,
    ReferenceConfig,
    SamplingConfig,
    TrainingConfig,
)
from lcms.geometry import PixelGrid  # noqa: E402
from lcms.legend import LULC_LEGEND  # noqa: E402
from lcms.sentinel2 import L1C_BANDS  # noqa: E402
from lcms.store import TileStore  # noqa: E402
from tasks.download.synthetic import SyntheticScene  # noqa: E402
from tasks.features.indices import feature_stack  # noqa: E402
from tasks.features.temporal import date_grid, interpolate  # noqa: E402
from tasks.features.tile import unpack  # noqa: E402
from tasks.merge.dataset import merge_samples  # noqa: E402
from tasks.reference.polygons import erode_labels, load_reference, rasterize_reference  # noqa: E402
from tasks.sampling.samples import gather_samples, sample_pixels, split_by_blocks, split_halves  # noqa: E402
from tasks.sampling.tile import sampling_tile  # noqa: E402
from tasks.training.holdout import held_out_pixels  # noqa: E402
from tasks.training.model import predict_labels, train_with_config  # noqa: E402
from tasks.training.stage import fit_merged  # noqa: E402

SYNTHETIC_FEATURES = ("NDVI", "NDWI", "B02", "B04", "B08", "B11")
SYNTHETIC_ORIGIN = (500_000.0, 5_100_000.0)  # EPSG:32633, metres
MIN_VALID_COVERAGE = FeaturesConfig().min_valid_coverage


@dataclass
class Samples:
    name: str
    X_train: np.ndarray
    y_train: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    columns: list[str]


@dataclass
class Result:
    contender: str
    rounds: int  # boosting rounds in the model (one tree per class each)
    fit_s: float
    predict_s: float
    oa: float
    kappa: float
    macro_f1: float


def column_names(targets: np.ndarray, features: tuple[str, ...]) -> list[str]:
    """Date-major names by day of year, so that rows of different years share columns."""
    doy = (targets.astype("datetime64[D]") - targets.astype("datetime64[Y]").astype("datetime64[D]")).astype(int) + 1
    return [f"{f}@doy{d:03d}" for d in doy for f in features]


def assemble(name: str, X: np.ndarray, y: np.ndarray, split: dict[str, np.ndarray], columns: list[str]) -> Samples:
    # Test pixels of a class that no training sample has cannot be predicted by either contender.
    test = split["test"] & np.isin(y, np.unique(y[split["train"]]))
    return Samples(
        name,
        X[split["train"]],
        y[split["train"]],
        X[split["validation"]],
        y[split["validation"]],
        X[test],
        y[test],
        columns,
    )


# --------------------------------------------------------------------------- datasets


def slovenia_year(year: int, grid: PixelGrid, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """X, y and the west/east + every-5th-validation split of one year of the patch."""
    times = np.array(json.loads((PATCH / "timestamps.json").read_text()), dtype="datetime64[s]")
    in_year = (times >= np.datetime64(f"{year}-01-01")) & (times < np.datetime64(f"{year + 1}-01-01"))
    ndvi = np.load(PATCH / "data" / "NDVI.npy")[in_year]
    valid = (np.load(PATCH / "mask" / "IS_DATA.npy") & ~np.load(PATCH / "mask" / "CLM.npy").astype(bool))[in_year]
    valid = valid[..., 0].astype(bool)
    kept = valid.mean(axis=(1, 2)) >= MIN_VALID_COVERAGE
    targets = date_grid(year, DateGridConfig())
    features, no_valid = interpolate(ndvi[kept].astype(np.float32), times[in_year][kept], valid[kept], targets)
    pixels = sample_pixels(labels, fraction=1.0, exclude=no_valid)
    X, y = gather_samples(features, labels, pixels)
    halves = split_halves(pixels % grid.width, grid.width)
    # As slovenia_patch_training.py: every 5th west-half sample is LCMS's validation split.
    val = halves["train"] & (np.arange(len(y)) % 5 == 0)
    split = np.where(halves["test"], 2, np.where(val, 1, 0))
    print(f"  Slovenia {year}: {in_year.sum()} frames, {kept.sum()} kept, {len(y)} labelled pixels", flush=True)
    return X, y, split


def slovenia(years: tuple[int, ...]) -> Samples:
    grid = patch_grid()
    reference = load_reference(str(PATCH / "vector_timeless" / "LULC.gpkg"), "LULC_ID", LULC_LEGEND)
    labels = erode_labels(rasterize_reference(reference, grid), radius_px=1)
    parts = [slovenia_year(year, grid, labels) for year in years]
    X = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    code = np.concatenate([p[2] for p in parts])
    split = {"train": code == 0, "validation": code == 1, "test": code == 2}
    columns = column_names(date_grid(years[-1], DateGridConfig()), ("NDVI",))
    return assemble("Slovenia " + "+".join(map(str, years)), X, y, split, columns)


def synthetic(size: int, n_samples: int) -> Samples:
    t0 = time.perf_counter()
    scene = SyntheticScene(seed=0)
    year = scene.first_year
    x0, y0 = SYNTHETIC_ORIGIN
    grid = PixelGrid.from_bounds("EPSG:32633", (x0, y0, x0 + 10.0 * size, y0 + 10.0 * size), 10.0)
    tile = scene.render(grid, year)
    valid = tile.data_mask & ~tile.cloud_mask
    kept = valid.mean(axis=(1, 2)) >= MIN_VALID_COVERAGE
    layers = feature_stack(tile.bands[kept], L1C_BANDS, SYNTHETIC_FEATURES)
    targets = date_grid(year, DateGridConfig())
    features, no_valid = interpolate(layers, tile.dates[kept], valid[kept], targets)
    del layers
    labels = erode_labels(tile.land_cover, radius_px=1)
    pixels = sample_pixels(labels, count=n_samples, exclude=no_valid, seed=0)
    X, y = gather_samples(features, labels, pixels)
    split = split_by_blocks(pixels // size, pixels % size, 50, test_fraction=0.5, validation_fraction=0.1, seed=0)
    print(
        f"  synthetic {size} × {size} px {year}: {len(tile.dates)} dates, {kept.sum()} kept, "
        f"{len(y)} samples; built in {time.perf_counter() - t0:.1f} s",
        flush=True,
    )
    return assemble(f"synthetic {size}²", X, y, split, column_names(targets, SYNTHETIC_FEATURES))


# --------------------------------------------------------------------------- contenders


def timed(fn: Callable, repeats: int) -> tuple[object, float]:
    """The last result of `fn()` and the median wall time of `repeats` calls."""
    seconds = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        seconds.append(time.perf_counter() - t0)
    return out, statistics.median(seconds)


def scores(contender: str, rounds: int, fit_s: float, predict_s: float, y_true, y_pred) -> Result:
    return Result(
        contender,
        rounds,
        fit_s,
        predict_s,
        float(skm.accuracy_score(y_true, y_pred)),
        float(skm.cohen_kappa_score(y_true, y_pred)),
        float(skm.f1_score(y_true, y_pred, average="macro", zero_division=0)),
    )


def run_lcms(s: Samples, threads: int, repeats: int) -> Result:
    cfg = TrainingConfig(num_threads=threads)  # what the training stage runs

    def fit() -> lgb.Booster:
        return train_with_config(s.X_train, s.y_train, s.X_val, s.y_val, s.columns, cfg)

    booster, fit_s = timed(fit, repeats)
    # What save_model records and predict_labels reads: the trees up to the best iteration (all without early stopping).
    metadata = {"feature_names": s.columns, "classes": booster.lcms_classes, "num_iteration": booster.best_iteration}
    y_pred, predict_s = timed(lambda: predict_labels(booster, metadata, s.X_test), repeats)
    return scores("LCMS train_model", booster.best_iteration, fit_s, predict_s, s.y_test, y_pred)


def run_eolearn(s: Samples, threads: int, repeats: int) -> Result:
    X = np.concatenate([s.X_train, s.X_val])
    y = np.concatenate([s.y_train, s.y_val])

    def fit() -> lgb.LGBMClassifier:
        return eolearn_classifier(len(np.unique(y)), threads).fit(X, y)

    model, fit_s = timed(fit, repeats)
    y_pred, predict_s = timed(lambda: model.predict(s.X_test), repeats)
    # LightGBM stops before n_estimators when no tree of a round can split any more.
    return scores("eo-learn LGBMClassifier", model.booster_.current_iteration(), fit_s, predict_s, s.y_test, y_pred)


# --------------------------------------------------------------------------- the real patch, both directions


def eolearn_classifier(n_classes: int, threads: int, seed: int = 0) -> lgb.LGBMClassifier:
    """The eo-learn land-cover example's classifier: multiclass LightGBM, otherwise its defaults (100 rounds)."""
    return lgb.LGBMClassifier(
        objective="multiclass",
        num_class=n_classes,
        metric="multi_logloss",
        random_state=seed,
        n_jobs=threads,
        verbose=-1,
    )


def real_patch_scores(
    year: int, threads: int, repeats: int, store_dir: Path, seeds: tuple[int, ...] = (0,)
) -> dict[str, dict]:
    """Both directions of the real patch through the stages; LCMS's training stage beside eo-learn's classifier.

    As benchmarks/slovenia_patch_training.py: NDVI of `year` on the 16-day grid (int16 in the
    store), the un-eroded reference eroded by ReferenceConfig's default for sampling, every
    eligible pixel sampled, one half trains (10 % of all samples are the validation split), the
    other half tests. LCMS: `fit_merged` with TrainingConfig's defaults (what the training stage
    runs, block by block from the store), once per seed of `seeds` (TrainingConfig.seed; the
    default is 0); eo-learn: its example classifier, fitted on the same training + validation rows
    (it is deterministic: no row or column sampling). Both are scored on every labelled pixel of
    the held-out half (`held_out_pixels`: the un-eroded reference, class borders included).

    Returns {"west_to_east": ..., "east_to_west": ...}, each with "pixels", "eolearn" (a Result as a
    dict) and "lcms" (one Result dict per seed).
    """
    import shutil
    from dataclasses import asdict

    shutil.rmtree(store_dir, ignore_errors=True)
    store = TileStore(str(store_dir))
    features = FeaturesConfig(bands=[], indices=["NDVI"])
    reference = ReferenceConfig(path=str(PATCH / "vector_timeless" / "LULC.gpkg"), class_column="LULC_ID")
    write_patch_inputs(store, year, features, reference)
    tiles = patch_tiles()
    for tile, _ in tiles.values():
        sampling_tile(store, tile, year, SamplingConfig(fraction=1.0))
    tile_ids = [tiles[h][0].tile_id for h in ("west", "east")]
    widths = {t.tile_id: t.grid.width for t, _ in tiles.values()}
    results: dict[str, dict] = {}
    for train_half, test_half in (("west", "east"), ("east", "west")):
        merge = MergeConfig(split="tile", test_fraction=0.5, validation_fraction=0.1, seed=merge_seed(test_half, 0))
        merge_samples(store, tile_ids, [year], widths, merge, 100)
        merged = store.open_product("merge", "land-cover")
        lcms_runs, held = [], None
        for seed in seeds:
            cfg = TrainingConfig(num_threads=threads, seed=seed)
            fitted, lcms_s = timed(lambda: fit_merged(merged, cfg), repeats)  # noqa: B023
            booster = fitted.booster
            classes = booster.lcms_classes
            if held is None:
                held = held_out_pixels(store, merged, classes)
                X_held = unpack(held.X)
            metadata = {"feature_names": booster.feature_name(), "classes": classes, "num_iteration": None}
            predicted = predict_labels(booster, metadata, X_held)  # every tree the model keeps, as save_model
            lcms = scores(f"LCMS training stage, seed {seed}", booster.best_iteration, lcms_s, 0.0, held.y, predicted)
            lcms_runs.append(asdict(lcms))

        X = unpack(merged.read("features"))
        y, split = merged.read("label").astype(np.int64), merged.read("split")
        learn = np.isin(split, [0, 1]) & np.isin(y, classes)
        model, eo_s = timed(lambda: eolearn_classifier(len(classes), threads).fit(X[learn], y[learn]), repeats)  # noqa: B023
        eo = scores(
            "eo-learn LGBMClassifier", model.booster_.current_iteration(), eo_s, 0.0, held.y, model.predict(X_held)
        )
        results[f"{train_half}_to_{test_half}"] = {"pixels": held.n_scored, "lcms": lcms_runs, "eolearn": asdict(eo)}
    return results


def real_patch(year: int, threads: int, repeats: int, store_dir: Path, seeds: tuple[int, ...] = (0, 1)) -> list[str]:
    """`real_patch_scores` as a table."""
    cfg = TrainingConfig(num_threads=threads)
    rounds = "early stopping" if cfg.early_stopping_rounds else "fixed rounds, validation rows train too"
    lines = [
        f"Slovenia {year}, real patch, both directions: scored on every labelled pixel of the held-out half "
        f"(un-eroded reference); LCMS = training stage defaults {cfg.lightgbm_params | {'rounds': cfg.num_boost_round}}"
        f" ({rounds})",
        f"  {'direction':<22}{'contender':<34}{'rounds':>8}{'fit s':>9}{'OA':>8}{'kappa':>8}{'macro F1':>10}",
    ]
    for key, r in real_patch_scores(year, threads, repeats, store_dir, seeds).items():
        direction = "train " + key.replace("_to_", " → ")
        eo = r["eolearn"]
        for x in (*r["lcms"], eo):
            figures = f"{x['rounds']:>8}{x['fit_s']:9.3f}{x['oa']:8.4f}{x['kappa']:8.4f}{x['macro_f1']:10.4f}"
            lines.append(f"  {direction:<22}{x['contender']:<34}{figures}")
        oa = statistics.mean(x["oa"] for x in r["lcms"])
        f1 = statistics.mean(x["macro_f1"] for x in r["lcms"])
        fit = statistics.mean(x["fit_s"] for x in r["lcms"])
        lines.append(
            f"  {'':<22}{r['pixels']} pixels; LCMS (mean of {len(r['lcms'])} seeds) / eo-learn fit time "
            f"{fit / eo['fit_s']:.2f}×, OA {oa - eo['oa']:+.4f}, macro F1 {f1 - eo['macro_f1']:+.4f}"
        )
    return lines


# --------------------------------------------------------------------------- report


def table(s: Samples, results: list[Result]) -> str:
    lines = [
        f"{s.name}: {len(s.y_train)} train / {len(s.y_val)} val / {len(s.y_test)} test samples, "
        f"{len(s.columns)} features, {len(np.unique(s.y_train))} classes",
        f"  {'contender':<24}{'rounds':>8}{'fit s':>9}{'pred s':>9}{'OA':>8}{'kappa':>8}{'macro F1':>10}",
    ]
    for r in results:
        lines.append(
            f"  {r.contender:<24}{r.rounds:>8}{r.fit_s:9.2f}{r.predict_s:9.3f}"
            f"{r.oa:8.4f}{r.kappa:8.4f}{r.macro_f1:10.4f}"
        )
    lcms, eo = results
    lines.append("  (rounds: in the model; with early stopping, LCMS trains a few more rounds, which it then drops)")
    lines.append(
        f"  LCMS / eo-learn fit time: {lcms.fit_s / eo.fit_s:.2f}×; OA LCMS − eo-learn: {lcms.oa - eo.oa:+.4f} "
        f"(kappa {lcms.kappa - eo.kappa:+.4f}, macro F1 {lcms.macro_f1 - eo.macro_f1:+.4f})"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller synthetic tile and sample, 1 repeat")
    parser.add_argument("--threads", type=int, default=2, help="LightGBM threads for both contenders")
    parser.add_argument("--repeats", type=int, help="timed runs per fit / predict (default 3, 1 with --quick)")
    parser.add_argument("--skip-synthetic", action="store_true")
    parser.add_argument("--store", type=Path, default=Path("/tmp/lcms-training-benchmark-store"))
    args = parser.parse_args()
    repeats = args.repeats or (1 if args.quick else 3)
    size, n_samples = (200, 15_000) if args.quick else (500, 100_000)

    print(f"LightGBM {lgb.__version__}, {args.threads} threads, {os.cpu_count()} CPUs, median of {repeats} run(s)")
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print("building samples ...", flush=True)
    datasets = [slovenia((2017,)), slovenia((2016, 2017))]
    if not args.skip_synthetic:
        datasets.append(synthetic(size, n_samples))

    t0 = time.perf_counter()
    print("training on the real patch, both directions ...", flush=True)
    print()
    print("\n".join(real_patch(2017, args.threads, repeats, args.store)))
    print(flush=True)
    for s in datasets:
        print(f"training on {s.name} ...", flush=True)
        results = [run_lcms(s, args.threads, repeats), run_eolearn(s, args.threads, repeats)]
        print()
        print(table(s, results))
        print(flush=True)
    print(f"training and prediction took {time.perf_counter() - t0:.0f} s in all")
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
