"""The benchmark suite: every LCMS stage beside its eo-learn 1.5.7 equivalent on one synthetic tile, and scaling.

    .venv/bin/python -m benchmarks.suite [--size 500] [--dates 48] [--tiles 4] [--out benchmarks/results/suite.json]

1. One SyntheticScene tile (`--size`² px at 10 m, `--dates` acquisitions in 2023, the 13 L1C bands)
   is rendered and saved as .npy files that both sides load, with every stage's input made from it
   by LCMS's own functions (so both sides get the same arrays at every stage, and a difference in
   one stage does not carry into the next). Downstream of the cloud mask, both use the generator's
   true cloud mask. The features are the eo-learn land-cover example's: B02 B03 B04 B08 B11 B12,
   NDVI, NDWI, NDBI, interpolated onto the 16-day grid (23 dates). Reference labels are the scene's
   land cover in a checkerboard of 4 × 4 blocks: training samples come from one colour, the other
   colour's eroded labels are the test pixels on which both models' OA is measured.
2. Each stage runs in its own process per side (benchmarks/suite_workers.py), LCMS in the project's
   venv through its task functions and its Zarr tile store, eo-learn through its EOTasks in
   benchmarks/.venv-eolearn (created with eo-learn[extra]==1.5.7 if missing). Seconds are wall
   time of the stage alone (inputs are loaded before the clock starts); peak RSS is the process's
   VmHWM, inputs included. Compute libraries run `--threads` threads (default 1: OMP, MKL,
   OpenBLAS, numba, LightGBM), so the ratios are per core; Zarr/Blosc keep their own I/O threads
   (CPU seconds are recorded beside wall seconds). Both sides' processes start with the environment
   LCMS's clusters give their worker processes (lcms/cluster.py WORKER_ENVIRON: one malloc arena, and
   none of Dask's default trim threshold, which made the store's writes twice as slow).
3. The table gives per stage: seconds, peak RSS, throughput and eo-learn / LCMS ratios, the
   agreement of the two outputs, then the OA of both models on the same test pixels, and the
   issue's two totals (sum of the stages' seconds, max of their peaks) with their verdicts: the
   per-tile chain (every stage but training; >= 20× faster at <= 1/3 of the memory, and >= 4× with
   eo-learn's cloud mask at 160 m too) and training (<= 1/5 of eo-learn's time at equal or better
   OA, both on the suite's test pixels and on the real Slovenia patch with each half held out in turn:
   the `lcms_real_patch` worker, LCMS's training-stage defaults with seeds 0 and 1 beside eo-learn's
   example classifier, both in the LCMS venv's LightGBM, which is eo-learn's version; --skip-real-patch
   leaves it out); the stages slower than eo-learn's; the large tile's peaks (<= 1 GiB). The same goes to
   `--out` as JSON. `--lcms-only` runs the LCMS side alone (no eo-learn venv needed).
4. Scaling (LCMS only): `--tiles` tiles of `--scaling-size`² px through the download and features
   stages on a `dask scheduler` process and 1, then 2 `dask worker` processes (1 thread each, started
   with Dask's command line as on EC2: benchmarks/cli_cluster.py); parallel
   efficiency = t1 / (2 · t2). Then the peak memory of the download (cloud mask) and features
   stages on one `--big-size`² px tile (default 1000², `--dates` dates).

At the defaults the suite takes about 6-7 minutes on 2 cores, most of it eo-learn's 10 m cloud
mask. `--batch` runs all stages of a side in one process (quicker; peaks reset between stages
but less exact), for the smoke test.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))  # sibling benchmark scripts
import interpolation  # noqa: E402
from eolearn_env import ensure_eolearn_venv  # noqa: E402
from suite_workers import (  # noqa: E402
    FEATURE_BANDS,
    FEATURE_NAMES,
    FEATURES_CONFIG,
    MIN_VALID_COVERAGE,
    TILE_ID,
    YEAR,
)

WORKERS = HERE / "suite_workers.py"
ORIGIN = (460_000.0, 5_100_000.0)  # upper-left corner in UTM 33N, as benchmarks/cloud_mask.py
GOAL_SPEEDUP = 20.0  # per-tile chain, against eo-learn with its default 10 m cloud mask
GOAL_LIKE_FOR_LIKE = 4.0  # per-tile chain, against eo-learn with its cloud mask at 160 m too
GOAL_MEMORY = 1 / 3  # per-tile chain: LCMS's peak RSS over eo-learn's
GOAL_TRAINING_SPEEDUP = 5.0  # training: <= 1/5 of eo-learn's time, at equal or better OA
GOAL_BIG_PEAK_MIB = 1024  # every stage of the 1000² px × 48-date tile
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS")

# (key, label, LCMS worker, eo-learn worker, what LCMS runs, what eo-learn runs, throughput unit)
STAGES = [
    (
        "cloud_mask",
        "cloud mask",
        "lcms_cloud_mask",
        "eolearn_cloud_mask",
        "tasks.download.cloud_mask.cloud_masks, 160 m analysis (default)",
        "CloudMaskTask, 10 m (its defaults)",
        "Mpx·dates/s",
    ),
    (
        "filter",
        "filter",
        "lcms_filter",
        "eolearn_filter",
        "valid_mask + valid_coverage, frames >= 0.8, 6 bands",
        "ZipFeatureTask (IS_VALID) + SimpleFilterTask >= 0.8",
        "Mpx·dates/s",
    ),
    (
        "indices",
        "indices",
        "lcms_indices",
        "eolearn_indices",
        "tasks.features.indices.feature_stack (uint16 DN in)",
        "3 × NormalizedDifferenceIndexTask + MergeFeatureTask",
        "Mpx·dates/s",
    ),
    (
        "interpolation",
        "interpolation",
        "lcms_interpolation",
        "eolearn_interpolation",
        "tasks.features.temporal.interpolate",
        "LinearInterpolationTask",
        "Mpx·dates/s",
    ),
    (
        "sampling",
        "sampling",
        "lcms_sampling",
        "eolearn_sampling",
        "erode_labels + reference write + sampling_tile (Zarr in/out)",
        "EOPatch.load + ErosionTask + FractionSamplingTask + EOPatch.save (the example's sampling workflow)",
        "Mpx/s",
    ),
    (
        "training",
        "training",
        "lcms_training",
        "eolearn_training",
        "read samples + train_with_config (TrainingConfig defaults) + save_model",
        "LGBMClassifier (defaults) fit + joblib.dump",
        "k samples/s",
    ),
    (
        "prediction",
        "prediction",
        "lcms_prediction",
        "eolearn_prediction",
        "prediction_tile (Zarr in/out, 256² blocks)",
        "PredictPatchTask: predict + predict_proba (in memory)",
        "Mpx/s",
    ),
    (
        "store_write",
        "store write",
        "lcms_store_write",
        "eolearn_store_write",
        "TileStore writers: download + features stages",
        "EOPatch.save: raw + features patches",
        "Mpx·dates/s",
    ),
    (
        "store_read",
        "store read",
        "lcms_store_read",
        "eolearn_store_read",
        "TileStore.open_tile + whole reads + unpack",
        "EOPatch.load: raw + features patches",
        "Mpx·dates/s",
    ),
]
EXTRA_EOLEARN = ("eolearn_cloud_mask_160m",)


# --------------------------------------------------------------------------- inputs


def prepare(folder: Path, args) -> dict:
    """Render the tile and save every stage's input, made with LCMS's functions; returns the metadata."""
    from lcms.config import CloudMaskConfig, DateGridConfig
    from lcms.geometry import PixelGrid
    from lcms.sentinel2 import L1C_BANDS
    from lcms.store import TileStore
    from tasks.download.cloud_mask import cloud_masks, valid_coverage, valid_mask
    from tasks.download.synthetic import SyntheticScene
    from tasks.features.indices import feature_stack
    from tasks.features.temporal import date_grid, interpolate
    from tasks.features.tile import pack
    from tasks.reference.polygons import erode_labels

    (folder / "out").mkdir(parents=True)
    (folder / "interp").mkdir()
    x0, y1 = ORIGIN
    size = args.size
    grid = PixelGrid("EPSG:32633", (10.0, 0.0, x0, 0.0, -10.0, y1), (size, size))
    scene = SyntheticScene(seed=1, dates_per_year=args.dates)
    dates = scene.acquisition_dates(YEAR)
    tile = scene.render(grid, YEAR, dates)
    save = {
        "bands": tile.bands,
        "data_mask": tile.data_mask,
        "cloud_true": tile.cloud_mask,
        "dates": dates.astype("datetime64[s]").astype(np.int64),
    }
    valid = valid_mask(tile.data_mask, tile.cloud_mask)
    kept = np.flatnonzero(valid_coverage(valid) >= MIN_VALID_COVERAGE)
    if len(kept) < 2:
        raise SystemExit(f"only {len(kept)} frame(s) with valid coverage >= 0.8: use a larger --size or more --dates")
    needed = [L1C_BANDS.index(b) for b in FEATURE_BANDS]
    bands6 = tile.bands[kept][..., needed]
    values = feature_stack(bands6, FEATURE_BANDS, FEATURE_NAMES)
    # Acquisitions at midnight: eo-learn counts target dates from the first timestamp's date, LCMS
    # from the true times; with whole days both read the same clock (benchmarks/interpolation.py).
    times = dates[kept].astype("datetime64[D]").astype("datetime64[s]")
    targets = date_grid(YEAR, DateGridConfig())
    interpolation.save_inputs(folder / "interp", values, valid[kept], times, targets)
    features, no_valid = interpolate(values, times, valid[kept], targets)
    del values
    prob, _ = cloud_masks(tile.bands, L1C_BANDS, tile.data_mask, 10.0, CloudMaskConfig())  # stored content
    save.update(
        valid=valid,
        bands6_kept=bands6,
        features=features,
        no_valid=no_valid,
        valid_count=valid[kept].sum(axis=0, dtype=np.uint16),
        cloud_prob=prob,
    )

    # Train on one colour of a 4 × 4 checkerboard, test on the other's eroded labels.
    block = max(size // 4, 1)
    rows, cols = np.indices((size, size))
    test_blocks = (rows // block + cols // block) % 2 == 1
    save["labels_train"] = np.where(test_blocks, 0, tile.land_cover).astype(np.uint8)
    save["labels_test"] = np.where(test_blocks & ~no_valid, erode_labels(tile.land_cover, 1), 0).astype(np.uint8)
    for name, array in save.items():
        np.save(folder / f"{name}.npy", array)

    # The features stage's output, as features_tile writes it, for sampling and prediction.
    store = TileStore(str(folder / "store"))
    coords = {"time": targets, "feature": np.array(FEATURE_NAMES)}
    with store.writer("features", YEAR, TILE_ID, grid, "suite", coords, {"method": "interpolation"}) as writer:
        writer.write("features", pack(features, "int16"))
        writer.write("no_valid", no_valid)
        writer.write("valid_count", save["valid_count"])

    offsets = (targets.astype("datetime64[D]") - targets.astype("datetime64[D]")[0]).astype(int).tolist()
    info = {
        "size": size,
        "dates_total": len(dates),
        "bands": len(L1C_BANDS),
        "grid": grid.to_attrs(),
        "bounds": list(grid.bounds),
        "dates": save["dates"].tolist(),
        "kept": kept.tolist(),
        "targets": targets.astype(np.int64).tolist(),
        "target_offsets_days": offsets,
        "fraction": args.fraction,
        "cloud_fraction_true": float(tile.cloud_mask.mean()),
        "no_valid_fraction": float(no_valid.mean()),
        "test_pixels": int((save["labels_test"] > 0).sum()),
        "classes": np.unique(tile.land_cover).tolist(),
        "scaling": {"tiles": args.tiles, "size": args.scaling_size, "dates": args.dates},
        "big": {"size": args.big_size, "dates": args.dates},
    }
    (folder / "meta.json").write_text(json.dumps(info))
    return info


# --------------------------------------------------------------------------- running workers


def run_workers(python: Path, folder: Path, names: list[str], threads: int) -> dict:
    """Run workers in one subprocess (one name: its own process) with `threads` compute threads, in the
    environment LCMS's clusters give their worker processes (lcms/cluster.py `worker_environment`: one malloc
    arena, no trim threshold, one BLAS thread), where the stages' tile tasks run in a real run; both sides alike."""
    from lcms.cluster import worker_environment

    env = {**os.environ, **worker_environment(), **dict.fromkeys(THREAD_VARS, str(threads))}
    cmd = [str(python), str(WORKERS), "--folder", str(folder), "--threads", str(threads), *names]
    load = os.getloadavg()[0]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(names)} failed:\n{proc.stderr[-4000:]}")
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    for figures in results.values():
        figures["load_average_before"] = load  # other processes on the machine slow the stages down
    return results


def run_stages(lcms_python: Path, eo_python: Path | None, folder: Path, args) -> dict:
    lcms_names = [s[2] for s in STAGES]
    eo_names = [s[3] for s in STAGES]
    if args.cloud_160m:
        eo_names.insert(1, EXTRA_EOLEARN[0])
    results: dict[str, dict] = {}
    if args.batch:
        print("running LCMS stages in one process ...", flush=True)
        results.update(run_workers(lcms_python, folder, lcms_names, args.threads))
        if eo_python is not None:
            print("running eo-learn stages in one process ...", flush=True)
            results.update(run_workers(eo_python, folder, eo_names, args.threads))
        return results
    for key, label, lcms_worker, eo_worker, *_ in STAGES:
        t0 = time.perf_counter()
        results.update(run_workers(lcms_python, folder, [lcms_worker], args.threads))
        line = f"  {label:<14} LCMS {results[lcms_worker]['seconds']:8.2f} s"
        if eo_python is not None:
            extra = [EXTRA_EOLEARN[0]] if key == "cloud_mask" and args.cloud_160m else []
            for name in [eo_worker, *extra]:
                results.update(run_workers(eo_python, folder, [name], args.threads))
            line += f"   eo-learn {results[eo_worker]['seconds']:8.2f} s"
        print(f"{line}   ({time.perf_counter() - t0:.0f} s with process start-up)", flush=True)
    return results


# --------------------------------------------------------------------------- comparing outputs


def agreement(folder: Path, info: dict, results: dict) -> dict:
    """How far the two sides' outputs of each stage agree."""
    out = folder / "out"
    load = np.load
    truth = load(folder / "cloud_true.npy")
    data = load(folder / "data_mask.npy")
    agree: dict[str, dict] = {}

    def have(*names: str) -> bool:
        return all((out / f"{n}.npy").exists() for n in names)

    if have("lcms_cloud", "eolearn_cloud"):
        lcms, eo = load(out / "lcms_cloud.npy"), load(out / "eolearn_cloud.npy")
        agree["cloud_mask"] = {
            "lcms_vs_eolearn": float((lcms == eo)[data].mean()),
            "lcms_vs_truth": float((lcms == truth)[data].mean()),
            "eolearn_vs_truth": float((eo == truth)[data].mean()),
        }
        if have("eolearn_cloud_160m"):
            eo160 = load(out / "eolearn_cloud_160m.npy")
            agree["cloud_mask"]["eolearn_160m_vs_truth"] = float((eo160 == truth)[data].mean())
            agree["cloud_mask"]["lcms_vs_eolearn_160m"] = float((lcms == eo160)[data].mean())
    if have("lcms_kept", "eolearn_kept"):
        lcms, eo = load(out / "lcms_kept.npy"), load(out / "eolearn_kept.npy")
        agree["filter"] = {"same_frames": bool(np.array_equal(lcms, eo)), "lcms": len(lcms), "eolearn": len(eo)}
    if have("lcms_indices", "eolearn_indices"):
        lcms, eo = load(out / "lcms_indices.npy"), load(out / "eolearn_indices.npy")
        both = np.isfinite(lcms) & np.isfinite(eo)
        agree["indices"] = {
            "max_abs_diff": float(np.abs(lcms[both] - eo[both]).max()) if both.any() else None,
            # no data (both bands 0): LCMS gives 0, eo-learn NaN
            "eolearn_nan_fraction": float(np.isnan(eo).mean()),
        }
        del lcms, eo, both
    if have("lcms_interpolation", "eolearn_interpolation"):
        lcms, eo = load(out / "lcms_interpolation.npy"), load(out / "eolearn_interpolation.npy")
        both = ~np.isnan(eo) & ~np.isnan(lcms)
        agree["interpolation"] = {
            "max_abs_diff": float(np.abs(lcms[both] - eo[both]).max()) if both.any() else None,
            # eo-learn leaves NaN before a pixel's first / after its last valid observation; LCMS clamps
            "eolearn_defined_fraction": float((~np.isnan(eo)).mean()),
        }
        del lcms, eo, both
    if have("lcms_eroded", "eolearn_eroded"):
        lcms, eo = load(out / "lcms_eroded.npy"), load(out / "eolearn_eroded.npy")
        agree["sampling"] = {
            "eroded_labels_equal": float((lcms == eo).mean()),
            "lcms_samples": results.get("lcms_sampling", {}).get("samples"),
            "eolearn_samples": results.get("eolearn_sampling", {}).get("samples"),
        }
    if have("lcms_labels", "eolearn_labels"):
        lcms, eo = load(out / "lcms_labels.npy"), load(out / "eolearn_labels.npy")
        observed = ~load(folder / "no_valid.npy")
        agree["prediction"] = {"labels_equal": float((lcms == eo)[observed].mean())}
    for key in ("store_read",):
        flags = {side: results.get(f"{side}_{key}", {}).get("round_trip_equal") for side in ("lcms", "eolearn")}
        agree[key] = {f"{side}_round_trip_equal": flag for side, flag in flags.items()}
    return agree


def accuracy(folder: Path, real_patch: dict | None = None) -> dict:
    """OA and kappa of both models' maps on the same test pixels; with `real_patch` (the lcms_real_patch
    worker's figures), OA and macro F1 on the real Slovenia patch, both directions, under "real_patch"."""
    from sklearn.metrics import cohen_kappa_score

    test = np.load(folder / "labels_test.npy")
    mask = test > 0
    result = {"test_pixels": int(mask.sum())}
    for side in ("lcms", "eolearn"):
        path = folder / "out" / f"{side}_labels.npy"
        if path.exists():
            pred = np.load(path)[mask]
            result[side] = {
                "oa": float((pred == test[mask]).mean()),
                "kappa": float(cohen_kappa_score(test[mask], pred)),
            }
    if real_patch:
        result["real_patch"] = {"year": real_patch["year"], "lightgbm": real_patch["lightgbm"]}
        for direction, r in real_patch["directions"].items():
            keep = ("oa", "kappa", "macro_f1", "rounds", "fit_s")
            seeds = [{k: run[k] for k in keep} for run in r["lcms"]]
            result["real_patch"][direction] = {
                "pixels": r["pixels"],
                "lcms_seeds": seeds,
                # TrainingConfig's seeds 0 and 1: feature_fraction makes the model depend on the seed
                "lcms": {k: float(np.mean([run[k] for run in seeds])) for k in ("oa", "kappa", "macro_f1")},
                "eolearn": {k: r["eolearn"][k] for k in keep},
            }
    return result


# --------------------------------------------------------------------------- figures


def stage_rows(info: dict, results: dict, agree: dict) -> list[dict]:
    px = info["size"] ** 2
    work = {
        "cloud_mask": px * info["dates_total"] / 1e6,
        "filter": px * info["dates_total"] / 1e6,
        "indices": px * len(info["kept"]) / 1e6,
        "interpolation": px * len(info["kept"]) / 1e6,
        "sampling": px / 1e6,
        "prediction": px / 1e6,
        "store_write": px * info["dates_total"] / 1e6,
        "store_read": px * info["dates_total"] / 1e6,
    }
    rows = []
    for key, label, lcms_worker, eo_worker, lcms_what, eo_what, unit in STAGES:
        row = {"stage": key, "label": label, "unit": unit}
        for side, worker, what in (("lcms", lcms_worker, lcms_what), ("eolearn", eo_worker, eo_what)):
            if worker not in results:
                continue
            r = dict(results[worker])
            units = r.get("samples", 0) / 1e3 if key == "training" else work[key]
            r["throughput"] = units / r["seconds"] if r["seconds"] > 0 else None
            r["what"] = what + (f", s2cloudless model: {r['model']}" if "model" in r else "")
            row[side] = r
        if "lcms" in row and "eolearn" in row:
            row["eolearn_over_lcms_seconds"] = row["eolearn"]["seconds"] / row["lcms"]["seconds"]
            row["eolearn_over_lcms_peak_rss"] = row["eolearn"]["peak_rss_mib"] / row["lcms"]["peak_rss_mib"]
        if key in agree:
            row["agreement"] = agree[key]
        rows.append(row)
    return rows


def _totals(selected: list[dict], replace: dict | None = None) -> dict:
    """Sum of the stages' seconds and max of their peaks per side; `replace` swaps an eo-learn stage's figures
    (e.g. its cloud mask at 160 m). eo-learn's figures and the ratios only where every stage has them."""
    replace = replace or {}
    lcms_rss, lcms_at = max((r["lcms"]["peak_rss_mib"], r["stage"]) for r in selected)
    result = {
        "stages": [r["stage"] for r in selected],
        "lcms_seconds": sum(r["lcms"]["seconds"] for r in selected),
        "lcms_cpu_seconds": sum(r["lcms"].get("cpu_seconds", r["lcms"]["seconds"]) for r in selected),
        "lcms_peak_rss_mib": lcms_rss,
        "lcms_peak_stage": lcms_at,
    }
    if not all("eolearn" in r for r in selected):
        return result
    eo_parts = [replace.get(r["stage"], r["eolearn"]) for r in selected]
    eo_rss, eo_at = max((p["peak_rss_mib"], r["stage"]) for p, r in zip(eo_parts, selected, strict=True))
    result |= {
        "eolearn_seconds": sum(p["seconds"] for p in eo_parts),
        "eolearn_cpu_seconds": sum(p.get("cpu_seconds", p["seconds"]) for p in eo_parts),
        "eolearn_peak_rss_mib": eo_rss,
        "eolearn_peak_stage": eo_at,
    }
    result |= {
        "speedup": result["eolearn_seconds"] / result["lcms_seconds"],
        "cpu_speedup": result["eolearn_cpu_seconds"] / result["lcms_cpu_seconds"],
        "memory_ratio": lcms_rss / eo_rss,
    }
    return result


def _judge(totals: dict, speedup_at_least: float, memory_ratio_at_most: float | None) -> dict:
    """`totals` with its goal and whether it is met (None without eo-learn's figures)."""
    goal = {"speedup_at_least": speedup_at_least, "memory_ratio_at_most": memory_ratio_at_most}
    have = "speedup" in totals
    speed = totals["speedup"] >= speedup_at_least if have else None
    memory = None if memory_ratio_at_most is None or not have else totals["memory_ratio"] <= memory_ratio_at_most
    return {**totals, "goal": goal, "speed_goal_met": speed, "memory_goal_met": memory}


def end_to_end(rows: list[dict], results: dict, big: dict | None = None) -> dict:
    """The issue's two totals and their verdicts.

    per_tile: every stage but training (the per-tile chain), >= 20× eo-learn at <= 1/3 of its peak; its
    like-for-like variant with eo-learn's cloud mask at 160 m (LCMS's analysis resolution), >= 4×.
    training (once per AOI): <= 1/5 of eo-learn's time; its OA goal (equal or better on the suite's test pixels
    and on the real patch both ways) is `training_accuracy_goal`, added by main.
    Also: the stages slower than eo-learn's equivalent (goal: none), and the large tile's peaks (<= 1 GiB).
    """
    per_tile = [r for r in rows if r["stage"] != "training" and "lcms" in r]
    training = [r for r in rows if r["stage"] == "training" and "lcms" in r]
    result: dict = {}
    if per_tile:
        result["per_tile"] = _judge(_totals(per_tile), GOAL_SPEEDUP, GOAL_MEMORY)
        if EXTRA_EOLEARN[0] in results and "eolearn_seconds" in result["per_tile"]:
            like = _totals(per_tile, {"cloud_mask": results[EXTRA_EOLEARN[0]]})
            result["per_tile_like_for_like"] = _judge(like, GOAL_LIKE_FOR_LIKE, GOAL_MEMORY)
        result["per_tile_without_cloud_mask"] = _totals([r for r in per_tile if r["stage"] != "cloud_mask"])
    if training:
        result["training"] = _judge(_totals(training), GOAL_TRAINING_SPEEDUP, None)
    compared = [r for r in rows if "lcms" in r and "eolearn" in r]
    if compared:
        result["slower_than_eolearn"] = [r["stage"] for r in compared if r["lcms"]["seconds"] > r["eolearn"]["seconds"]]
    if big:
        peaks = {stage: big[stage]["peak_rss_mib"] for stage in ("download", "features") if stage in big}
        result["big_tile"] = {
            "size": big["size"],
            "dates": big["dates"],
            "peak_rss_mib": peaks,
            "goal_peak_rss_mib_at_most": GOAL_BIG_PEAK_MIB,
            "goal_met": all(v <= GOAL_BIG_PEAK_MIB for v in peaks.values()),
        }
    return result


def verdict(e2e: dict) -> str:
    if "speedup" not in e2e:
        return f"LCMS {e2e['lcms_seconds']:.2f} s, peak {e2e['lcms_peak_rss_mib']:.0f} MiB (no eo-learn figures)"
    goal = e2e.get("goal")
    if goal is None:  # a total without a goal of its own
        return f"speed {e2e['speedup']:.1f}×, memory {e2e['memory_ratio']:.2f} of eo-learn's"
    text = (
        f"speed {e2e['speedup']:.1f}× (goal >= {goal['speedup_at_least']:.0f}×): "
        f"{'met' if e2e['speed_goal_met'] else 'NOT met'}"
    )
    if goal["memory_ratio_at_most"] is not None:
        text += (
            f"; memory {e2e['memory_ratio']:.2f} of eo-learn's (goal <= 1/3): "
            f"{'met' if e2e['memory_goal_met'] else 'NOT met'}"
        )
    return text


REAL_PATCH_DIRECTIONS = {"west_to_east": "W → E", "east_to_west": "E → W"}


def training_accuracy_goal(e2e: dict, acc: dict) -> dict:
    """Whether LCMS's OA is equal or better than eo-learn's on the synthetic test pixels and on the real patch in
    both directions (mean of LCMS's seeds), and the training goal as a whole: that, and <= 1/5 of the time."""
    oa_met: dict[str, bool] = {}
    if "lcms" in acc and "eolearn" in acc:
        oa_met["synthetic"] = acc["lcms"]["oa"] >= acc["eolearn"]["oa"]
    real = acc.get("real_patch", {})
    for direction in REAL_PATCH_DIRECTIONS:
        if direction in real:
            oa_met[direction] = real[direction]["lcms"]["oa"] >= real[direction]["eolearn"]["oa"]
    complete = len(oa_met) == 1 + len(REAL_PATCH_DIRECTIONS)
    met = bool(e2e.get("speed_goal_met")) and complete and all(oa_met.values())
    return {"oa_equal_or_better": oa_met, "all_oa_measured": complete, "goal_met": met}


def training_verdict(e2e: dict, acc: dict) -> str:
    text = verdict(e2e)
    if "lcms" in acc and "eolearn" in acc:
        text += f"; synthetic OA {acc['lcms']['oa']:.4f} vs eo-learn {acc['eolearn']['oa']:.4f}"
    real = acc.get("real_patch", {})
    for direction, label in REAL_PATCH_DIRECTIONS.items():
        if direction in real:
            r = real[direction]
            text += (
                f"; real patch {label} OA {r['lcms']['oa']:.4f} (mean of {len(r['lcms_seeds'])} seeds) "
                f"vs eo-learn {r['eolearn']['oa']:.4f}"
            )
    if "speedup" in e2e:
        goal = training_accuracy_goal(e2e, acc)
        missing = "" if goal["all_oa_measured"] else " (not every OA measured)"
        text += (
            f"; goal (<= 1/5 of the time, OA equal or better on the synthetic tile and the real patch both ways)"
            f"{missing}: {'met' if goal['goal_met'] else 'NOT met'}"
        )
    return text


def fmt(x, spec: str = ".2f", empty: str = "–") -> str:
    return empty if x is None else format(x, spec)


def print_verdicts(e2e: dict, acc: dict) -> None:
    """The issue's two totals against their goals, the stages slower than eo-learn's, the large tile's peaks."""
    t = e2e.get("per_tile")
    if t:
        print()
        print(f"PER TILE (sum of {len(t['stages'])} stages: {', '.join(t['stages'])}; max of their peaks):")
        print(f"  {verdict(t)}")
        if "eolearn_peak_stage" in t:
            print(
                f"  peaks set by: LCMS {t['lcms_peak_stage']} ({t['lcms_peak_rss_mib']:.0f} MiB), "
                f"eo-learn {t['eolearn_peak_stage']} ({t['eolearn_peak_rss_mib']:.0f} MiB); CPU seconds: LCMS "
                f"{t['lcms_cpu_seconds']:.1f}, eo-learn {t['eolearn_cpu_seconds']:.1f}: {t['cpu_speedup']:.1f}×"
            )
        like = e2e.get("per_tile_like_for_like")
        if like:
            print(f"  like for like (eo-learn's cloud mask at 160 m too): {verdict(like)}")
        print(f"  without the cloud-mask stage: {verdict(e2e['per_tile_without_cloud_mask'])}")
    if "training" in e2e:
        print(f"TRAINING (once per AOI): {training_verdict(e2e['training'], acc)}")
    if "slower_than_eolearn" in e2e:
        slower = e2e["slower_than_eolearn"]
        print(f"stages slower than eo-learn's equivalent (goal: none): {', '.join(slower) if slower else 'none'}")
    big = e2e.get("big_tile")
    if big:
        peaks = ", ".join(f"{k} {v:.0f} MiB" for k, v in big["peak_rss_mib"].items())
        print(
            f"large tile ({big['size']}² px × {big['dates']} dates) peak RSS per stage: {peaks} "
            f"(goal <= {big['goal_peak_rss_mib_at_most']} MiB at 1000² × 48): "
            f"{'met' if big['goal_met'] else 'NOT met'}"
        )


def print_report(report: dict) -> None:
    info, rows = report["tile"], report["stages"]
    print()
    print(
        f"tile {info['size']} × {info['size']} px, {info['dates_total']} dates × {info['bands']} bands; "
        f"{len(info['kept'])} frames kept (valid >= 0.8); features {len(FEATURE_NAMES)} × 23 dates; "
        f"{report['config']['threads']} compute thread(s) per side; {report['machine']['cpus']} CPUs, "
        f"load average {report['machine']['load_average_start'][0]:.2f} at start"
    )
    head = (
        f"{'stage':<14}{'LCMS s':>9}{'eo s':>9}{'eo/LCMS':>9}{'LCMS MiB':>10}{'eo MiB':>9}{'eo/LCMS':>9}"
        f"{'LCMS thr':>10}{'eo thr':>9}  unit"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        lc, eo = r.get("lcms", {}), r.get("eolearn", {})
        print(
            f"{r['label']:<14}{fmt(lc.get('seconds')):>9}{fmt(eo.get('seconds')):>9}"
            f"{fmt(r.get('eolearn_over_lcms_seconds'), '.1f') + '×':>9}"
            f"{fmt(lc.get('peak_rss_mib'), '.0f'):>10}{fmt(eo.get('peak_rss_mib'), '.0f'):>9}"
            f"{fmt(r.get('eolearn_over_lcms_peak_rss'), '.1f') + '×':>9}"
            f"{fmt(lc.get('throughput')):>10}{fmt(eo.get('throughput')):>9}  {r['unit']}"
        )
    e2e = report.get("end_to_end", {})
    for key, label in (("per_tile", "per tile"), ("training", "training")):
        t = e2e.get(key)
        if t:
            if key == "per_tile":
                print("-" * len(head))
            print(
                f"{label:<14}{t['lcms_seconds']:9.2f}{fmt(t.get('eolearn_seconds')):>9}"
                f"{fmt(t.get('speedup'), '.1f') + '×':>9}{t['lcms_peak_rss_mib']:10.0f}"
                f"{fmt(t.get('eolearn_peak_rss_mib'), '.0f'):>9}"
                f"{fmt(1 / t['memory_ratio'] if 'memory_ratio' in t else None, '.1f') + '×':>9}"
            )
    extra = report["extra"].get(EXTRA_EOLEARN[0])
    if extra:
        ratio = extra["seconds"] / rows[0]["lcms"]["seconds"]
        print(
            f"  (eo-learn cloud mask at 160 m, like LCMS's analysis resolution: {extra['seconds']:.2f} s, "
            f"{extra['peak_rss_mib']:.0f} MiB, {ratio:.1f}× LCMS)"
        )
    print()
    print("what runs (LCMS | eo-learn) and how the outputs agree:")
    for r in rows:
        what = f"{r.get('lcms', {}).get('what', '–')} | {r.get('eolearn', {}).get('what', '–')}"
        print(f"  {r['label']:<14}{what}")
        if "agreement" in r:
            text = ", ".join(f"{k} {fmt(v, '.4g') if isinstance(v, float) else v}" for k, v in r["agreement"].items())
            print(f"  {'':<14}{text}")
    acc = report["accuracy"]
    print()
    oa = ", ".join(
        f"{side} OA {acc[side]['oa']:.4f} (kappa {acc[side]['kappa']:.4f})"
        for side in ("lcms", "eolearn")
        if side in acc
    )
    rounds = ", ".join(
        f"{side} {report['raw'][f'{side}_training']['rounds']} rounds on {report['raw'][f'{side}_training']['samples']}"
        f" samples"
        for side in ("lcms", "eolearn")
        if f"{side}_training" in report["raw"]
    )
    print(f"accuracy on the same {acc['test_pixels']} test pixels: {oa}; {rounds}")
    real = acc.get("real_patch")
    if real:
        print(
            f"accuracy on the real Slovenia patch ({real['year']} NDVI, LightGBM {real['lightgbm']} for both): "
            "one half trains, every labelled pixel of the other half (un-eroded reference) is scored; LCMS = the "
            "training stage's defaults, seeds 0 and 1; eo-learn = its example classifier on the same training + "
            "validation rows"
        )
        for direction, label in REAL_PATCH_DIRECTIONS.items():
            r = real[direction]
            seeds = " / ".join(f"{x['oa']:.4f}" for x in r["lcms_seeds"])
            print(
                f"  {label}, {r['pixels']} pixels: LCMS OA {r['lcms']['oa']:.4f} ({seeds}), macro F1 "
                f"{r['lcms']['macro_f1']:.4f}; eo-learn OA {r['eolearn']['oa']:.4f}, "
                f"macro F1 {r['eolearn']['macro_f1']:.4f}"
            )
    scaling = report.get("scaling")
    if scaling:
        s = scaling["result"]
        r1, r2 = s["runs"]["1"], s["runs"]["2"]
        print()
        print(
            f"scaling: {scaling['tiles']} tiles of {scaling['size']}² px × {scaling['dates']} dates, download + "
            f"features stages (product defaults), `dask scheduler` + `dask worker` processes of 1 thread "
            "(benchmarks/cli_cluster.py: the EC2 cluster's shape, TCP on 127.0.0.1)"
        )
        print(
            f"  1 worker {r1['seconds']:.1f} s, 2 workers {r2['seconds']:.1f} s: speedup {s['speedup']:.2f}×, "
            f"parallel efficiency {s['parallel_efficiency']:.2f}; cores obtained (worker CPU / wall) "
            f"{r1['worker_cpu_seconds'] / r1['seconds']:.2f} and {r2['worker_cpu_seconds'] / r2['seconds']:.2f}"
        )
        print(
            f"  worker peak RSS {max(r1['worker_peak_rss_mib']):.0f} / {max(r2['worker_peak_rss_mib']):.0f} MiB; "
            f"synthetic rendering {r1['render_seconds']:.1f} s of the 1-worker run"
        )
        print(
            f"  this machine has {report['machine']['cpus']} cores, shared with other processes: 2 workers can at "
            "best use both, and any other load lowers the efficiency"
        )
    big = report.get("big_tile")
    if big:
        d, f = big["download"], big["features"]
        print()
        print(
            f"large tile {big['size']}² px × {big['dates']} dates × 13 bands (LCMS, product defaults): "
            f"download + cloud mask {d['seconds']:.1f} s (of which rendering {d['render_seconds']:.1f} s), "
            f"peak RSS {d['peak_rss_mib']:.0f} MiB; features {f['seconds']:.1f} s, peak RSS {f['peak_rss_mib']:.0f} MiB"
        )
    print_verdicts(e2e, acc)


# --------------------------------------------------------------------------- main


def prepare_cloud_model(lightgbm_only: bool) -> dict:
    """The s2cloudless model LCMS's workers will use: compiled once per machine as in production
    (`lcms compile-models`, the Docker image), outside every timing; or LightGBM's when asked."""
    from tasks.download import cloud_model

    if not lightgbm_only:
        print("compiling the s2cloudless model for this machine if needed (once, not timed) ...", flush=True)
        _, seconds = cloud_model.compile_cloud_model()
        return {"predictor": "treelite", "compile_seconds": seconds}
    compiled = cloud_model.compiled_file().exists()
    return {"predictor": "treelite" if compiled else "lightgbm", "compile_seconds": 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=500, help="tile side in pixels (10 m)")
    parser.add_argument("--dates", type=int, default=48, help="acquisitions in the year")
    parser.add_argument("--bands", type=int, default=13, choices=[13], help="L1C bands (s2cloudless needs them)")
    parser.add_argument("--threads", type=int, default=1, help="compute threads per side (OMP, numba, LightGBM)")
    parser.add_argument("--fraction", type=float, default=0.25, help="sampling fraction per class (eo-learn example)")
    parser.add_argument("--tiles", type=int, default=4, help="tiles of the scaling run")
    parser.add_argument("--scaling-size", type=int, default=256, help="tile side of the scaling run")
    parser.add_argument("--big-size", type=int, default=1000, help="tile side of the peak-memory run")
    parser.add_argument("--skip-eolearn", "--lcms-only", action="store_true", help="LCMS only (no eo-learn venv)")
    parser.add_argument("--no-cloud-160m", dest="cloud_160m", action="store_false", help="skip eo-learn at 160 m")
    parser.add_argument("--skip-scaling", action="store_true")
    parser.add_argument("--skip-big", action="store_true")
    parser.add_argument("--skip-real-patch", action="store_true", help="no training accuracy on the real patch")
    parser.add_argument("--batch", action="store_true", help="all stages of a side in one process (smoke test)")
    parser.add_argument(
        "--lightgbm-cloud-model",
        action="store_true",
        help="do not compile the s2cloudless model first (`lcms compile-models`); LCMS predicts it with LightGBM "
        "unless it is compiled already",
    )
    parser.add_argument("--eolearn-venv", type=Path, default=HERE / ".venv-eolearn")
    parser.add_argument("--keep", type=Path, help="new folder for the data, kept afterwards")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "suite.json", help="JSON results")
    args = parser.parse_args()

    started = time.perf_counter()
    load_start = os.getloadavg()
    eo_python = None if args.skip_eolearn else ensure_eolearn_venv(args.eolearn_venv)
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=False)
        folder = args.keep
    else:
        folder = Path(tempfile.mkdtemp(prefix="lcms-suite-"))
    try:
        cloud_model = prepare_cloud_model(args.lightgbm_cloud_model)
        t0 = time.perf_counter()
        info = prepare(folder, args)
        print(
            f"tile {args.size}² px × {info['dates_total']} dates × 13 bands rendered, stage inputs saved in "
            f"{time.perf_counter() - t0:.0f} s; {len(info['kept'])} frames kept; running the stages ...",
            flush=True,
        )
        results = run_stages(Path(sys.executable), eo_python, folder, args)
        real_patch = None
        if not args.skip_real_patch:
            print("training accuracy on the real Slovenia patch, both directions ...", flush=True)
            real_patch = run_workers(Path(sys.executable), folder, ["lcms_real_patch"], args.threads)["lcms_real_patch"]
        agree = agreement(folder, info, results)
        rows = stage_rows(info, results, agree)
        report = {
            "command": " ".join(["python -m benchmarks.suite", *sys.argv[1:]]),
            "date": dt.datetime.now().isoformat(timespec="seconds"),
            "machine": {
                "cpus": os.cpu_count(),
                "platform": platform.platform(),
                "python": platform.python_version(),
                "load_average_start": load_start,
            },
            "config": {
                "size": args.size,
                "dates": args.dates,
                "bands": 13,
                "threads": args.threads,
                "fraction": args.fraction,
                "features": list(FEATURE_NAMES),
                "features_config": FEATURES_CONFIG,
                "batch": args.batch,
                "cloud_model": cloud_model,
            },
            "tile": {k: v for k, v in info.items() if k not in ("dates", "targets", "grid")},
            "stages": rows,
            "extra": {name: results[name] for name in EXTRA_EOLEARN if name in results},
            "accuracy": accuracy(folder, real_patch),
            "raw": results,
        }
        if not args.skip_scaling:
            print(f"scaling: {args.tiles} tiles of {args.scaling_size}² px on 1, then 2 Dask workers ...", flush=True)
            scaling = run_workers(Path(sys.executable), folder, ["lcms_scaling"], 1)["lcms_scaling"]
            report["scaling"] = {**info["scaling"], "result": scaling}
        if not args.skip_big:
            print(f"large tile: {args.big_size}² px × {args.dates} dates, download then features ...", flush=True)
            big = run_workers(Path(sys.executable), folder, ["lcms_big_download"], 1)
            big |= run_workers(Path(sys.executable), folder, ["lcms_big_features"], 1)
            report["big_tile"] = {
                **info["big"],
                "download": big["lcms_big_download"],
                "features": big["lcms_big_features"],
            }
        report["end_to_end"] = end_to_end(rows, results, report.get("big_tile"))
        if "training" in report["end_to_end"]:
            report["end_to_end"]["training"]["accuracy_goal"] = training_accuracy_goal(
                report["end_to_end"]["training"], report["accuracy"]
            )
        report["machine"]["load_average_end"] = os.getloadavg()
        report["suite_seconds"] = time.perf_counter() - started
        print_report(report)
        print(f"\nsuite took {report['suite_seconds']:.0f} s; load average at end {os.getloadavg()[0]:.2f}")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1, default=float) + "\n")
        print(f"results: {args.out}")
        # `lcms estimate --calibration` can take the suite's per-stage figures too.
        from lcms.estimate import calibration_from_suite, write_calibration

        calibration = write_calibration(calibration_from_suite(report), args.out.with_name("calibration.json"))
        print(f"calibration for `lcms estimate --calibration`: {calibration}")
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
