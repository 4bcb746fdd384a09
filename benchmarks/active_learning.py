"""Active learning vs random labelling at equal labels, on the real Slovenia patch and on a synthetic scene.

    python benchmarks/active_learning.py [--quick] [--seeds 5] [--rounds 5] [--start 10] [--per-round 10]
        [--unit-size 5] [--min-distance-px 10] [--uncertainty margin|entropy] [--threads 2]

For each scene, split into a training half (west) and a test half (east):

* labelling units: square blocks of --unit-size px of the west half (tasks/active/units.py). A unit is
  labelled as an operator labels it in the Validation Tool: with ONE class, the majority reference
  class of its labelled pixels, given to all its pixels (so mixed units bring some wrong pixel labels,
  as in real use). Units without any reference pixel are not in the pool;
* start: --start units drawn at random from the pool (the same start for both methods in a draw);
* each round adds --per-round units, either chosen by active learning (tasks/active: margin
  uncertainty of the current model on the west half, mean per unit, equal allocation among
  predicted classes, picks at least --min-distance-px apart) or drawn at random from the pool,
  then LightGBM is retrained (tasks/training/model.py: train_model, 20 % of the labelled pixels
  held back for early stopping);
* test: every labelled pixel of the east half (un-eroded reference), the same pixels for both
  methods and all rounds: overall accuracy and macro F1 (tasks/training/metrics.py: scores).

Scenes: the Slovenia test patch (/work/shared/data/slovenia-testpatch, 101 × 100 px at 10 m, 2017
NDVI on the 16-day grid plus its spatial context, as benchmarks/slovenia_patch_training.py builds
it; reference vector_timeless/LULC.gpkg) and a synthetic scene (tasks/download/synthetic.py, seed 0,
its true land cover as the reference; NDVI, NDWI, B02, B04, B08, B11 on the 16-day grid).
Prints both curves (mean ± sd over --seeds draws) and the AL − random difference per round, and
writes benchmarks/results/active_learning.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from slovenia_patch_training import PATCH, patch_features, patch_grid  # noqa: E402

from lcms.config import DateGridConfig, FeaturesConfig  # noqa: E402
from lcms.geometry import PixelGrid  # noqa: E402
from lcms.legend import LULC_LEGEND, LULC_NAMES  # noqa: E402
from lcms.sentinel2 import L1C_BANDS  # noqa: E402
from tasks.active.picks import pick_units  # noqa: E402
from tasks.active.uncertainty import METHODS, uncertainty  # noqa: E402
from tasks.active.units import block_units, unit_table  # noqa: E402
from tasks.download.synthetic import SyntheticScene  # noqa: E402
from tasks.features.indices import feature_stack  # noqa: E402
from tasks.features.temporal import date_grid, interpolate  # noqa: E402
from tasks.features.tile import with_context  # noqa: E402
from tasks.reference.polygons import load_reference, rasterize_reference  # noqa: E402
from tasks.training.metrics import scores  # noqa: E402
from tasks.training.model import codes_of, predict_proba, train_model  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "active_learning.json"
SYNTHETIC_FEATURES = ("NDVI", "NDWI", "B02", "B04", "B08", "B11")
SYNTHETIC_ORIGIN = (500_000.0, 5_100_000.0)  # EPSG:32633, metres


class Scene:
    """Features (y, x, n) float32, reference labels (y, x) uint8 (0 = none) and a description."""

    def __init__(self, name: str, features: np.ndarray, labels: np.ndarray, about: str):
        self.name, self.features, self.labels, self.about = name, features, labels, about


def slovenia_scene(year: int = 2017) -> Scene:
    cfg = FeaturesConfig(bands=[], indices=["NDVI"])
    values, _, _, n_kept, _ = patch_features(year, cfg.min_valid_coverage)
    values = with_context(values, cfg)  # (t, y, x, f)
    t, h, w, f = values.shape
    features = np.moveaxis(values, 0, 2).reshape(h, w, t * f)
    reference = load_reference(str(PATCH / "vector_timeless" / "LULC.gpkg"), "LULC_ID", LULC_LEGEND)
    labels = rasterize_reference(reference, patch_grid())
    about = f"Slovenia test patch {year}, {h} × {w} px at 10 m, {n_kept} frames, NDVI + context ({t * f} features)"
    return Scene("slovenia", features, labels, about)


def synthetic_scene(size: int, resolution_m: float) -> Scene:
    scene = SyntheticScene(seed=0)
    year = scene.first_year
    x0, y0 = SYNTHETIC_ORIGIN
    grid = PixelGrid.from_bounds(
        "EPSG:32633", (x0, y0, x0 + resolution_m * size, y0 + resolution_m * size), resolution_m
    )
    tile = scene.render(grid, year)
    valid = tile.data_mask & ~tile.cloud_mask
    kept = valid.mean(axis=(1, 2)) >= FeaturesConfig().min_valid_coverage
    layers = feature_stack(tile.bands[kept], L1C_BANDS, SYNTHETIC_FEATURES)
    values, _ = interpolate(layers, tile.dates[kept], valid[kept], date_grid(year, DateGridConfig()))
    t, h, w, f = values.shape
    features = np.moveaxis(values, 0, 2).reshape(h, w, t * f)
    about = (
        f"synthetic scene seed 0, {year}, {size} × {size} px at {resolution_m:g} m, {int(kept.sum())} frames, "
        f"{len(SYNTHETIC_FEATURES)} features × {t} dates; reference = its true land cover"
    )
    return Scene("synthetic", features, tile.land_cover.astype(np.uint8), about)


class Experiment:
    """The west half's units, their operator labels, and the east half's test pixels of one scene."""

    def __init__(self, scene: Scene, unit_size: int):
        h, w = scene.labels.shape
        half = w // 2
        self.scene = scene
        self.X_west = scene.features[:, :half].reshape(h * half, -1)
        self.units = block_units((h, half), unit_size)
        ref = scene.labels[:, :half]
        n_units = int(self.units.max()) + 1
        ids, lab = self.units[ref > 0], ref[ref > 0]
        votes = np.zeros((n_units, 256), np.int64)
        np.add.at(votes, (ids, lab.astype(np.int64)), 1)
        self.unit_label = np.where(votes.sum(axis=1) > 0, votes.argmax(axis=1), 0).astype(np.uint8)
        self.pool = np.nonzero(self.unit_label > 0)[0].astype(np.int32)
        east = scene.labels[:, half:]
        test = east > 0
        self.X_test = scene.features[:, half:][test]
        self.y_test = east[test]
        self.unit_flat = self.units.ravel()
        self.classes = sorted(int(c) for c in np.unique(scene.labels[scene.labels > 0]))
        self.purity = float((ref[ref > 0] == self.unit_label[ids]).mean())

    def training_rows(self, labelled: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pixel rows of the labelled units, each with its unit's one class."""
        rows = np.nonzero(np.isin(self.unit_flat, labelled))[0]
        return rows, self.unit_label[self.unit_flat[rows]]


def fit(exp: Experiment, labelled: np.ndarray, seed: int, threads: int):
    rows, y = exp.training_rows(labelled)
    X = exp.X_west[rows]
    rng = np.random.default_rng(seed)
    val = rng.random(len(rows)) < 0.2
    train_classes = np.unique(y[~val])
    val &= np.isin(y, train_classes)  # early stopping only on classes the model can output
    names = [f"f{i}" for i in range(X.shape[1])]
    booster = train_model(
        X[~val],
        y[~val],
        X[val],
        y[val],
        names,
        params={"num_threads": threads, "min_data_in_leaf": 5},
        num_boost_round=300,
        early_stopping_rounds=20,
        seed=seed,
    )
    metadata = {"classes": booster.lcms_classes, "feature_names": names, "num_iteration": booster.best_iteration}
    return booster, metadata, int(len(rows))


def evaluate(exp: Experiment, booster, metadata) -> dict:
    pred = codes_of(predict_proba(booster, metadata, exp.X_test), metadata["classes"])
    s = scores(exp.y_test, pred, exp.classes, [LULC_NAMES.get(c, str(c)) for c in exp.classes])
    return {"oa": s["overall_accuracy"], "macro_f1": s["macro_f1"]}


def al_picks(exp: Experiment, booster, metadata, labelled, args) -> np.ndarray:
    proba = predict_proba(booster, metadata, exp.X_west)
    percent = np.clip(np.rint(proba * 100), 0, 100).astype(np.uint8)  # as the prediction stage stores it
    h, w = exp.units.shape
    labels = codes_of(proba, metadata["classes"]).reshape(h, w)
    table = unit_table(exp.units, uncertainty(percent.reshape(h, w, -1), args.uncertainty), labels)
    not_pool = np.setdiff1d(table.unit, exp.pool)
    exclude = np.concatenate([labelled, not_pool])
    return pick_units(table, args.per_round, args.min_distance_px, exclude=exclude).unit


def run_draw(exp: Experiment, seed: int, args) -> dict[str, list[dict]]:
    rng = np.random.default_rng(1000 + seed)
    start = rng.choice(exp.pool, size=args.start, replace=False).astype(np.int32)
    curves: dict[str, list[dict]] = {}
    for method in ("active", "random"):
        labelled = start.copy()
        curve = []
        for r in range(args.rounds + 1):
            booster, metadata, n_px = fit(exp, labelled, seed, args.threads)
            curve.append({"units": int(len(labelled)), "pixels": n_px, **evaluate(exp, booster, metadata)})
            if r == args.rounds:
                break
            if method == "active":
                new = al_picks(exp, booster, metadata, labelled, args)
            else:
                table_pool = np.setdiff1d(exp.pool, labelled)
                new = np.random.default_rng([seed, r]).choice(
                    table_pool, size=min(args.per_round, table_pool.size), replace=False
                )
            labelled = np.concatenate([labelled, np.asarray(new, np.int32)])
        curves[method] = curve
    return curves


def summarise(draws: list[dict[str, list[dict]]]) -> dict:
    out: dict = {}
    for method in ("active", "random"):
        rounds = len(draws[0][method])
        out[method] = []
        for r in range(rounds):
            rows = [d[method][r] for d in draws]
            entry = {"units": rows[0]["units"], "pixels_mean": float(np.mean([x["pixels"] for x in rows]))}
            for m in ("oa", "macro_f1"):
                vals = np.array([x[m] for x in rows])
                entry[m] = {"mean": float(vals.mean()), "sd": float(vals.std(ddof=1)) if len(vals) > 1 else 0.0}
            out[method].append(entry)
    diffs = {}
    for m in ("oa", "macro_f1"):
        per_round = []
        for r in range(len(draws[0]["active"])):
            d = np.array([x["active"][r][m] - x["random"][r][m] for x in draws])
            per_round.append({"mean": float(d.mean()), "sd": float(d.std(ddof=1)) if len(d) > 1 else 0.0})
        added = np.array([[x["active"][r][m] - x["random"][r][m] for r in range(1, len(x["active"]))] for x in draws])
        diffs[m] = {"per_round": per_round, "mean_over_added_rounds": float(added.mean()) if added.size else 0.0}
    out["active_minus_random"] = diffs
    return out


def print_summary(name: str, summary: dict, n_seeds: int) -> None:
    print(f"\n| {name}: units | pixels AL / random | OA active | OA random | ΔOA | F1 active | F1 random | ΔF1 |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    d = summary["active_minus_random"]
    for r, (a, b) in enumerate(zip(summary["active"], summary["random"], strict=True)):
        print(
            f"| {a['units']} | {a['pixels_mean']:.0f} / {b['pixels_mean']:.0f} | "
            f"{a['oa']['mean']:.3f} ± {a['oa']['sd']:.3f} | {b['oa']['mean']:.3f} ± {b['oa']['sd']:.3f} | "
            f"{d['oa']['per_round'][r]['mean']:+.3f} | "
            f"{a['macro_f1']['mean']:.3f} ± {a['macro_f1']['sd']:.3f} | "
            f"{b['macro_f1']['mean']:.3f} ± {b['macro_f1']['sd']:.3f} | {d['macro_f1']['per_round'][r]['mean']:+.3f} |"
        )
    print(
        f"AL − random, mean over the rounds after the start and {n_seeds} draws: "
        f"OA {d['oa']['mean_over_added_rounds']:+.3f}, macro F1 {d['macro_f1']['mean_over_added_rounds']:+.3f}"
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 draws, 2 rounds, small synthetic scene")
    parser.add_argument("--scenes", nargs="+", default=["slovenia", "synthetic"], choices=["slovenia", "synthetic"])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--start", type=int, default=10, help="units labelled at random before the first round")
    parser.add_argument("--per-round", type=int, default=10, help="units added per round (K)")
    parser.add_argument("--unit-size", type=int, default=5, help="block side, px")
    parser.add_argument("--min-distance-px", type=float, default=10.0, help="thinning distance between AL picks")
    parser.add_argument("--uncertainty", default="margin", choices=list(METHODS))
    parser.add_argument("--synthetic-size", type=int, default=150, help="px per side")
    parser.add_argument("--synthetic-resolution", type=float, default=20.0, help="m per px")
    parser.add_argument(
        "--threads", type=int, default=1, help="LightGBM threads (1: small data, and no spin-waits on a busy machine)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.rounds = min(args.seeds, 2), min(args.rounds, 2)
        args.synthetic_size = min(args.synthetic_size, 60)

    t0 = time.perf_counter()
    results: dict = {
        "benchmark": "active learning vs random labelling at equal labels (benchmarks/active_learning.py)",
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "split": "train/pool = west half of the scene, test = every labelled pixel of the east half (un-eroded)",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_average": os.getloadavg()},
        "scenes": {},
    }
    for name in args.scenes:
        ts = time.perf_counter()
        scene = (
            slovenia_scene() if name == "slovenia" else synthetic_scene(args.synthetic_size, args.synthetic_resolution)
        )
        exp = Experiment(scene, args.unit_size)
        print(
            f"\n# {scene.about}\n# pool {exp.pool.size} units of {args.unit_size} px (west half; one class per unit, "
            f"{exp.purity:.1%} of their labelled pixels agree with it), test {exp.y_test.size} px (east half)",
            flush=True,
        )
        draws = [run_draw(exp, seed, args) for seed in range(args.seeds)]
        summary = summarise(draws)
        print_summary(name, summary, args.seeds)
        results["scenes"][name] = {
            "about": scene.about,
            "pool_units": int(exp.pool.size),
            "unit_purity": exp.purity,
            "test_pixels": int(exp.y_test.size),
            "draws": draws,
            **summary,
            "seconds": round(time.perf_counter() - ts, 1),
        }
    results["seconds"] = round(time.perf_counter() - t0, 1)
    results["machine"]["load_average_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"\nwrote {args.out} in {results['seconds']} s")
    return results


if __name__ == "__main__":
    main()
