"""Prediction speed: LCMS's prediction tile task (LightGBM, lleaves, treelite) beside eo-learn's PredictPatchTask.

    python benchmarks/prediction.py [--quick] [--size 1000] [--dates 30] [--threads 1] [--repeats 2]
                                    [--compile off lleaves treelite]

The tile (default 1000 × 1000 px at 10 m) is real LCMS features: a SyntheticScene rendering
(`dates` acquisitions in 2023, true clouds as the cloud mask) goes through the features
stage (`tasks.features.tile.features_tile`, default FeaturesConfig: 6 bands + 6 indices
interpolated onto 23 dates, stored as int16 in a local Zarr store), i.e. 276 columns per pixel.
One LightGBM model is trained (single-threaded, not timed) on 20 000 pixels of that tile, the
scene's land cover as labels, with lightgbm's sklearn `LGBMClassifier(n_estimators=100)` as in
eo-learn's land-cover example: 100 trees per class. Both sides then use exactly the same trees:

* LCMS: the classifier's booster saved with `tasks.training.save_model` (model.txt + model.json,
  all 100 iterations) and stored as the training stage's product, as the training stage does;
* eo-learn: the classifier object itself, pickled with joblib as the example does and loaded
  in the eo-learn venv (same lightgbm 4.7.0); the worker checks that its trees are those of
  LCMS's model.txt (identical `dump_model()["tree_info"]`) before timing anything.

Each side runs in its own subprocess (peak RSS is that process's own VmHWM), with the same
number of threads (`--threads`, default 1: tiles run in parallel, one per core, so the per-core
figure is what counts; also OMP_NUM_THREADS; the classifier's n_jobs). LCMS runs once per
predictor (`--compile`, `prediction.compile`: off = LightGBM itself, lleaves, treelite; treelite
needs gcc). Per predictor:

* compile: `tasks.prediction.compiled.load_predictor` into an empty cache, timed once (the
  compiler runs in a child process; its peak RSS is reported apart);
* LCMS end to end: `tasks.prediction.tile.prediction_tile` with the compiled model cached (model
  fetched from the store once per process, int16 features read block by block from Zarr,
  decoded 8192 rows at a time, pixels without a valid observation skipped, labels /
  probabilities / confidence written to Zarr); a breakdown says how much of it is the predictor
  and the int16 decode. Best of `--repeats` runs (first run in brackets);
* LCMS pure predict: the predictor on the whole tile's rows (all pixels, as eo-learn), 8192 per
  call, with `--threads` threads and with every core.

eo-learn:
* end to end: an EOWorkflow LoadTask → PredictPatchTask → SaveTask on an EOPatch saved with
  EOPatch.save (FEATURES float32 (t, h, w, f), NaN where missing: the same values LCMS decodes).
  PredictPatchTask is the example's EOTask (eo-learn has no prediction task): reshape FEATURES
  to (h·w, t·f), `model.predict(X)` → MASK_TIMELESS LBL_GBM, `model.predict_proba(X)` →
  DATA_TIMELESS SCR_GBM. The load is restricted to FEATURES and the save to the two outputs (the
  example saves the whole patch back, which would also rewrite FEATURES: cheaper for eo-learn
  here, so the ratio is conservative);
* pure predict: `model.predict(X)` + `model.predict_proba(X)` on the same matrix.

The table gives Mpx/s (pixels of the tile per second), CPU/wall (cores kept busy: below the
thread count, another process had a core and the run is noisy), peak RSS and the eo-learn /
LCMS time ratios; then per predictor the agreement of the labels with eo-learn's (equal pixels
among those with a valid observation; LCMS writes no data where a pixel never had one), of the
percent probabilities, and the largest probability difference from the first predictor
(LightGBM itself when compile=off is measured first). --quick runs a 500 × 500 px tile once;
--keep DIR keeps the store, model and EOPatch. The data preparation (rendering, features stage,
training, EOPatch.save) is not timed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the shared eo-learn venv helper
from eolearn_env import ensure_eolearn_venv  # noqa: E402

REPO = HERE.parent
YEAR = 2023
TILE_ID = "T"
MODEL_NAME = "bench"
EOPATCH = "tile"
N_TRAIN = 20_000
ORIGIN = (460_000, 5_090_000)  # lower-left corner in UTM 33N (EPSG:32633)


# --------------------------------------------------------------------------- workers (one per subprocess)
# Inputs in `folder`: store/ (LCMS tile store with features and the model), grid.json, model.joblib,
# eopatches/tile (EOPatch with FEATURES), made by the driver. Outputs: .npy files in `folder`.


def peak_rss_mib() -> float:
    """This process's peak resident memory (VmHWM of its own address space).

    Not getrusage's ru_maxrss: Linux carries that over exec from the parent, so a worker started
    by a driver that once held the whole tile would report the driver's peak, not its own.
    """
    with open("/proc/self/status") as status:
        kib = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    return kib / 1024


class Runs:
    """Wall and CPU seconds (all threads of the process) of repeated runs; figures of the fastest."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []

    @contextlib.contextmanager
    def run(self):
        t0, c0 = time.perf_counter(), time.process_time()
        yield
        self.wall.append(time.perf_counter() - t0)
        self.cpu.append(time.process_time() - c0)

    @property
    def best_index(self) -> int:
        return self.wall.index(min(self.wall))

    def figures(self) -> dict:
        i = self.best_index
        return {"seconds": self.wall[i], "first_seconds": self.wall[0], "cpu_per_wall": self.cpu[i] / self.wall[i]}


def _worker_lcms(folder: Path, threads: int, repeats: int, mode: str = "off") -> dict:
    """One predictor (`mode`: off = LightGBM, lleaves, treelite): compile, tile task, pure predict."""
    import resource

    import numpy as np

    sys.path.insert(0, str(REPO))
    import tasks.prediction.compiled as compiled
    import tasks.prediction.tile as prediction_tile_module
    from lcms.config import PredictionConfig
    from lcms.geometry import PixelGrid
    from lcms.grid import Tile
    from lcms.store import TileStore
    from tasks.features.tile import unpack

    store = TileStore(str(folder / "store"))
    grid = PixelGrid.from_attrs(json.loads((folder / "grid.json").read_text()))
    tile = Tile(TILE_ID, grid, grid.bounds)
    cfg = PredictionConfig(num_threads=threads, compile=mode)

    # Compiling (into a fresh cache folder: timed once; the tile tasks then find it cached).
    os.environ["LCMS_HOME"] = str(folder / f"home-{mode}")
    booster, metadata, _ = prediction_tile_module.load_stored_model(store, MODEL_NAME)
    t0 = time.perf_counter()
    predictor = compiled.load_predictor(booster, metadata, mode, num_threads=threads)
    compile_seconds = time.perf_counter() - t0
    if predictor.name != ("lightgbm" if mode == "off" else mode):
        raise RuntimeError(f"{mode} did not compile: {predictor.reason}")
    compile_child_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # lleaves' LLVM, gcc

    # Breakdown of the tile task: time spent inside the predictor and in the int16 decode.
    spent = {"predict": 0.0, "unpack": 0.0}

    def timed(name, fn):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[name] += time.perf_counter() - t0

        return wrapper

    prediction_tile_module.unpack = timed("unpack", unpack)
    predictor.predict_proba = timed("predict", predictor.predict_proba)
    prediction_tile_module.load_predictor = lambda *args, **kwargs: predictor
    runs, parts = Runs(), []
    for _ in range(repeats):
        spent.update(predict=0.0, unpack=0.0)
        with runs.run():
            prediction_tile_module.prediction_tile(store, tile, YEAR, cfg, MODEL_NAME)
        parts.append(dict(spent))
    task = {**runs.figures(), "peak_rss_mib": peak_rss_mib(), **parts[runs.best_index]}
    out = store.open_tile("prediction", YEAR, TILE_ID)
    np.save(folder / f"lcms_{mode}_labels.npy", out.read("labels"))
    np.save(folder / f"lcms_{mode}_percent.npy", out.read("probabilities"))

    # Pure predict: the whole tile's float rows in memory, 8192 rows per call (as the task does), all
    # pixels (as eo-learn); the tile task's threads, then every core. Probabilities kept at 1 thread.
    features = store.open_tile("features", YEAR, TILE_ID)
    values = unpack(features.read("features"))  # (t, y, x, f)
    t, h, w, f = values.shape
    X = np.ascontiguousarray(values.transpose(1, 2, 0, 3)).reshape(h * w, t * f).astype(predictor.dtype)
    del values
    rows = prediction_tile_module.ROWS_PER_PASS
    pure = {}
    for label, n_threads in (("pure", threads), ("pure_all", os.cpu_count())):
        predictor = compiled.load_predictor(booster, metadata, mode, num_threads=n_threads)  # cached now
        runs = Runs()
        for _ in range(repeats):
            with runs.run():
                proba = np.concatenate(
                    [predictor.predict_proba(X[s : s + rows], n_threads) for s in range(0, h * w, rows)]
                )
        pure[label] = {**runs.figures(), "peak_rss_mib": peak_rss_mib(), "threads": n_threads}
        if label == "pure":
            np.save(folder / f"lcms_{mode}_pure_proba.npy", proba.reshape(h, w, -1))
    return {"task": task, **pure, "compile_seconds": compile_seconds, "compile_child_mib": compile_child_mib}


def _predict_patch_task():
    """The eo-learn land-cover example's prediction EOTask (eo-learn 1.5.7 ships none)."""
    import numpy as np
    from eolearn.core import EOTask, FeatureType

    class PredictPatchTask(EOTask):
        """Model predictions on a patch: labels and, optionally, class scores, as new timeless features."""

        def __init__(self, model, features_feature, predicted_labels_name, predicted_scores_name=None):
            self.model = model
            self.features_feature = features_feature
            self.predicted_labels_name = predicted_labels_name
            self.predicted_scores_name = predicted_scores_name

        def execute(self, eopatch):
            features = eopatch[self.features_feature]
            t, w, h, f = features.shape
            features = np.moveaxis(features, 0, 2).reshape(w * h, t * f)
            predicted_labels = self.model.predict(features).reshape(w, h)[..., np.newaxis]
            eopatch[(FeatureType.MASK_TIMELESS, self.predicted_labels_name)] = predicted_labels
            if self.predicted_scores_name:
                predicted_scores = self.model.predict_proba(features)
                eopatch[(FeatureType.DATA_TIMELESS, self.predicted_scores_name)] = predicted_scores.reshape(w, h, -1)
            return eopatch

    return PredictPatchTask


def _worker_eolearn_prepare(folder: Path) -> dict:
    """Write the EOPatch (FEATURES float32 (t, h, w, f) with NaN, timestamps, bbox) with EOPatch.save."""
    import datetime as dt

    import numpy as np
    from eolearn.core import EOPatch, FeatureType, OverwritePermission
    from sentinelhub import CRS, BBox

    values = np.load(folder / "features.npy")
    meta = json.loads((folder / "eopatch.json").read_text())
    epoch = dt.datetime(1970, 1, 1)
    patch = EOPatch(
        bbox=BBox(tuple(meta["bounds"]), crs=CRS(meta["epsg"])),
        timestamps=[epoch + dt.timedelta(seconds=s) for s in meta["times"]],
    )
    patch[FeatureType.DATA, "FEATURES"] = values
    t0 = time.perf_counter()
    patch.save(str(folder / "eopatches" / EOPATCH), overwrite_permission=OverwritePermission.OVERWRITE_FEATURES)
    return {"save_seconds": time.perf_counter() - t0}


def _worker_eolearn(folder: Path, threads: int, repeats: int) -> dict:
    import warnings

    import joblib
    import lightgbm as lgb
    import numpy as np
    from eolearn.core import (
        EOPatch,
        EOWorkflow,
        FeatureType,
        LoadTask,
        OverwritePermission,
        SaveTask,
        linearly_connect_tasks,
    )

    warnings.filterwarnings("ignore")
    model = joblib.load(folder / "model.joblib")  # as the example loads its model, before the workflow
    same_trees = lgb.Booster(model_file=str(folder / "model" / "model.txt")).dump_model()["tree_info"]
    if model.booster_.dump_model()["tree_info"] != same_trees:
        raise RuntimeError("the pickled classifier's trees differ from LCMS's model.txt")
    model.set_params(n_jobs=threads)

    PredictPatchTask = _predict_patch_task()
    features = (FeatureType.DATA, "FEATURES")
    labels_feature, scores_feature = (FeatureType.MASK_TIMELESS, "LBL_GBM"), (FeatureType.DATA_TIMELESS, "SCR_GBM")
    root = str(folder / "eopatches")
    load = LoadTask(root, features=[features])
    predict = PredictPatchTask(model, features, "LBL_GBM", "SCR_GBM")
    save = SaveTask(
        root, features=[labels_feature, scores_feature], overwrite_permission=OverwritePermission.OVERWRITE_FEATURES
    )
    nodes = linearly_connect_tasks(load, predict, save)
    workflow = EOWorkflow(nodes)
    runs, steps = Runs(), []
    for _ in range(repeats):
        with runs.run():
            result = workflow.execute({nodes[0]: {"eopatch_folder": EOPATCH}, nodes[-1]: {"eopatch_folder": EOPATCH}})
        if result.workflow_failed():
            raise RuntimeError(f"eo-learn workflow failed at {result.error_node_uid}")
        steps.append(
            {stats.node_name: (stats.end_time - stats.start_time).total_seconds() for stats in result.stats.values()}
        )
        del result
    task = {**runs.figures(), "peak_rss_mib": peak_rss_mib(), "steps": steps[runs.best_index]}

    # Pure predict + predict_proba on the same (h·w, t·f) matrix as the task builds.
    patch = EOPatch.load(str(folder / "eopatches" / EOPATCH), features=[features])
    values = patch[features]
    t, h, w, f = values.shape
    X = np.moveaxis(values, 0, 2).reshape(h * w, t * f)
    del patch, values
    runs, predict_runs = Runs(), []
    labels = scores = None
    for _ in range(repeats):
        labels = scores = None
        with runs.run():
            t0 = time.perf_counter()
            labels = model.predict(X)
            predict_runs.append(time.perf_counter() - t0)
            scores = model.predict_proba(X)
    np.save(folder / "eolearn_pure_labels.npy", labels.reshape(h, w))
    np.save(
        folder / "eolearn_pure_percent.npy", np.clip(np.rint(scores * 100), 0, 100).astype(np.uint8).reshape(h, w, -1)
    )
    pure = {**runs.figures(), "peak_rss_mib": peak_rss_mib(), "predict_only_seconds": min(predict_runs)}

    saved = EOPatch.load(str(folder / "eopatches" / EOPATCH), features=[labels_feature, scores_feature])
    np.save(folder / "eolearn_labels.npy", saved[labels_feature][..., 0])
    np.save(folder / "eolearn_percent.npy", np.clip(np.rint(saved[scores_feature] * 100), 0, 100).astype(np.uint8))
    return {"task": task, "pure": pure}


# --------------------------------------------------------------------------- driver


def run_worker(python: Path, worker: str, folder: Path, threads: int, repeats: int, mode: str = "off") -> dict:
    """Run one worker in its own subprocess with `threads` OpenMP threads; returns its figures."""
    cmd = [str(python), str(Path(__file__).resolve()), "--worker", worker, "--folder", str(folder)]
    cmd += ["--threads", str(threads), "--repeats", str(repeats), "--compile", mode]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{worker} worker failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def make_features(store, grid, n_dates: int):
    """Download output of a SyntheticScene tile, then the features stage on it; returns the scene."""
    import numpy as np

    from lcms.config import FeaturesConfig
    from lcms.grid import Tile
    from lcms.layout import SPATIAL_CHUNK
    from lcms.sentinel2 import L1C_BANDS
    from tasks.download.synthetic import SyntheticScene
    from tasks.features.tile import features_tile

    scene = SyntheticScene(seed=2, dates_per_year=n_dates)
    times = scene.acquisition_dates(YEAR)
    coverage = np.zeros(len(times))
    coords = {"time": times, "band": np.array(L1C_BANDS)}
    with store.writer("download", YEAR, TILE_ID, grid, "bench", coords) as w:
        for region, block in grid.blocks(SPATIAL_CHUNK):
            rendered = scene.render(block, YEAR, times)
            valid = rendered.data_mask & ~rendered.cloud_mask
            w.write("bands", rendered.bands, region)
            w.write("data_mask", rendered.data_mask, region)
            w.write("cloud_prob", np.where(rendered.cloud_mask, 100, 0).astype(np.uint8), region)
            w.write("cloud_mask", rendered.cloud_mask, region)
            w.write("shadow_mask", np.zeros_like(rendered.cloud_mask), region)
            w.write("valid_mask", valid, region)
            coverage += valid.sum(axis=(1, 2))
        w.write("valid_coverage", (coverage / grid.height / grid.width).astype(np.float32))
    features_tile(store, Tile(TILE_ID, grid, grid.bounds), YEAR, FeaturesConfig())
    return scene


def train_and_store(store, folder: Path, values, no_valid, land_cover, names, dates, threads: int) -> dict:
    """LGBMClassifier(n_estimators=100) on N_TRAIN pixels; LCMS model files in the store, joblib pickle beside."""
    import joblib
    import lightgbm as lgb
    import numpy as np

    from lcms.legend import LULC_LEGEND
    from tasks.training.model import load_model, save_model

    t, h, w, f = values.shape
    columns = [f"{name}@{str(d)[:10]}" for d in dates for name in names]  # date-major, as the samples stage
    rng = np.random.default_rng(0)
    pixels = rng.choice(np.flatnonzero(~no_valid.ravel()), size=min(N_TRAIN, int((~no_valid).sum())), replace=False)
    rows, cols = np.unravel_index(pixels, (h, w))
    X = values[:, rows, cols, :].transpose(1, 0, 2).reshape(len(pixels), t * f)
    y = land_cover[rows, cols]
    t0 = time.perf_counter()
    # One training thread: LightGBM's many short parallel regions crawl when a core is busy elsewhere.
    model = lgb.LGBMClassifier(n_estimators=100, n_jobs=1, random_state=0, verbose=-1)
    model.fit(X, y, feature_name=columns)
    seconds = time.perf_counter() - t0
    classes = [int(c) for c in model.classes_]

    offsets = (dates.astype("datetime64[D]") - dates.astype("datetime64[D]")[0]).astype(int).tolist()
    lineage = {"features": list(names), "date_offsets_days": offsets, "note": "benchmarks/prediction.py"}
    save_model(model.booster_, folder / "model", LULC_LEGEND, classes, lineage)
    load_model(folder / "model")  # as LCMS will read it
    store.put_files("training", MODEL_NAME, folder / "model", "bench")
    joblib.dump(model, folder / "model.joblib")
    return {"classes": classes, "train_seconds": seconds, "n_train": len(pixels), "trees": model.booster_.num_trees()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="500 × 500 px, one run per method")
    parser.add_argument("--size", type=int, default=1000, help="tile side in pixels")
    parser.add_argument("--dates", type=int, default=30, help="acquisitions rendered in the year")
    parser.add_argument("--threads", type=int, default=1, help="prediction threads on both sides")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per measurement (best one reported)")
    parser.add_argument("--eolearn-venv", type=Path, default=HERE / ".venv-eolearn")
    parser.add_argument("--keep", type=Path, help="new folder to make the data in and keep (default: a temporary one)")
    parser.add_argument("--worker", choices=["lcms", "eolearn", "eolearn-prepare"], help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    parser.add_argument(
        "--compile",
        nargs="+",
        default=["off", "lleaves", "treelite"],
        help="LCMS predictors to measure (off = LightGBM itself; treelite needs gcc)",
    )
    args = parser.parse_args()

    if args.worker == "lcms":
        print(json.dumps(_worker_lcms(args.folder, args.threads, args.repeats, args.compile[0])))
        return
    if args.worker == "eolearn":
        print(json.dumps(_worker_eolearn(args.folder, args.threads, args.repeats)))
        return
    if args.worker == "eolearn-prepare":
        print(json.dumps(_worker_eolearn_prepare(args.folder)))
        return
    if args.quick:
        args.size, args.repeats = 500, 1

    import numpy as np

    sys.path.insert(0, str(REPO))
    from lcms.geometry import PixelGrid
    from lcms.store import TileStore
    from tasks.features.tile import unpack

    eo_python = ensure_eolearn_venv(args.eolearn_venv)
    x0, y0 = ORIGIN
    grid = PixelGrid.from_bounds("EPSG:32633", (x0, y0, x0 + 10 * args.size, y0 + 10 * args.size), 10)
    n_px = args.size**2
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=False)
    keep = contextlib.nullcontext(str(args.keep)) if args.keep else None
    with keep or tempfile.TemporaryDirectory(prefix="lcms-bench-prediction-") as tmp:
        folder = Path(tmp)
        store = TileStore(str(folder / "store"))
        (folder / "grid.json").write_text(json.dumps(grid.to_attrs()))

        t0 = time.perf_counter()
        scene = make_features(store, grid, args.dates)
        features = store.open_tile("features", YEAR, TILE_ID)
        values = unpack(features.read("features"))  # (t, y, x, f) float32, NaN where missing
        no_valid = features.read("no_valid")
        names = [str(n) for n in features.coord("feature")]
        dates = features.coord("time")
        print(
            f"tile {args.size} × {args.size} px: {len(dates)} dates × {len(names)} features "
            f"= {len(dates) * len(names)} columns; {no_valid.mean() * 100:.2f} % of pixels never valid; "
            f"features stage output made in {time.perf_counter() - t0:.0f} s",
            flush=True,
        )
        land_cover = scene.land_cover(grid, YEAR)
        model = train_and_store(store, folder, values, no_valid, land_cover, names, dates, args.threads)
        print(
            f"LGBMClassifier(n_estimators=100): {len(model['classes'])} classes {model['classes']}, "
            f"{model['trees']} trees, trained on {model['n_train']} pixels in {model['train_seconds']:.1f} s",
            flush=True,
        )
        np.save(folder / "features.npy", values)
        times = dates.astype("datetime64[s]").astype(np.int64).tolist()
        meta = {"bounds": list(grid.bounds), "epsg": 32633, "times": times}
        (folder / "eopatch.json").write_text(json.dumps(meta))
        del values
        prepared = run_worker(eo_python, "eolearn-prepare", folder, args.threads, 1)
        (folder / "features.npy").unlink()
        print(f"EOPatch saved in {prepared['save_seconds']:.0f} s (not timed)", flush=True)

        lcms = {}
        for mode in args.compile:
            print(f"running LCMS, compile={mode} ({args.threads} threads) ...", flush=True)
            lcms[mode] = run_worker(Path(sys.executable), "lcms", folder, args.threads, args.repeats, mode)
        print(f"running eo-learn ({args.threads} threads) ...", flush=True)
        eo = run_worker(eo_python, "eolearn", folder, args.threads, args.repeats)

        valid = ~no_valid
        eo_labels, eo_percent = np.load(folder / "eolearn_labels.npy"), np.load(folder / "eolearn_percent.npy")
        eo_pure_labels = np.load(folder / "eolearn_pure_labels.npy")
        reference = next(iter(lcms))  # LightGBM itself when measured (compile=off first)
        ref_proba = np.load(folder / f"lcms_{reference}_pure_proba.npy")
        agreement = {}
        for mode in lcms:
            labels, percent = np.load(folder / f"lcms_{mode}_labels.npy"), np.load(folder / f"lcms_{mode}_percent.npy")
            proba = np.load(folder / f"lcms_{mode}_pure_proba.npy")
            agreement[mode] = {
                "labels_vs_eolearn": (labels[valid] == eo_labels[valid]).mean(),
                "percent_vs_eolearn": np.abs(percent[valid].astype(int) - eo_percent[valid].astype(int)).max(),
                "pure_labels_vs_eolearn": (np.argmax(proba, axis=2) == _codes_to_index(eo_pure_labels, model)).mean(),
                "proba_vs_reference": np.abs(proba - ref_proba).max(),
            }

    def row(name: str, r: dict, ratio: str) -> str:
        first = f"({r['first_seconds']:.2f})"
        speed = n_px / r["seconds"] / 1e6
        cpu = f"{r['cpu_per_wall']:.2f}"
        return f"{name:<40}{r['seconds']:9.2f}{first:>9}{speed:9.3f}{cpu:>9}{r['peak_rss_mib']:10.0f}{ratio:>16}"

    def ratio(a: dict, b: dict) -> str:
        return f"{b['seconds'] / a['seconds']:.2f}× ({b['first_seconds'] / a['first_seconds']:.2f}×)"

    load = os.getloadavg()
    print()
    print(
        f"{args.size} × {args.size} px = {n_px / 1e6:.2f} Mpx (synthetic scene, {args.dates} acquisitions), "
        f"{len(dates)} dates × {len(names)} features = {len(dates) * len(names)} columns, {model['trees']} trees "
        f"({len(model['classes'])} classes × 100), {args.threads} thread(s); best of {args.repeats} (first run in "
        f"brackets); load average at the end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    print(
        "CPU/wall: cores kept busy. RSS: the worker's peak so far (the pure rows hold the whole tile's matrix). "
        "Ratios: eo-learn seconds / LCMS seconds."
    )
    head = f"{'method':<40}{'seconds':>9}{'(first)':>9}{'Mpx/s':>9}{'CPU/wall':>9}{'RSS MiB':>10}{'eo-learn/LCMS':>16}"
    print(head)
    print(row("eo-learn Load→PredictPatch→Save", eo["task"], ""))
    for mode, r in lcms.items():
        print(row(f"LCMS prediction_tile, compile={mode}", r["task"], ratio(r["task"], eo["task"])))
    print(row("eo-learn predict + predict_proba", eo["pure"], ""))
    for mode, r in lcms.items():
        print(row(f"LCMS {mode} pure, {r['pure']['threads']} thread(s)", r["pure"], ratio(r["pure"], eo["pure"])))
        print(row(f"LCMS {mode} pure, {r['pure_all']['threads']} thread(s)", r["pure_all"], ""))
    print()
    for mode, r in lcms.items():
        t = r["task"]
        print(
            f"compile={mode}: compiled in {r['compile_seconds']:.1f} s (compiler child peak RSS "
            f"{r['compile_child_mib']:.0f} MiB); tile task: predictor {t['predict']:.2f} s "
            f"({t['predict'] / t['seconds'] * 100:.0f} %), int16 decode {t['unpack']:.2f} s, Zarr read/write + "
            f"reshape + rest {t['seconds'] - t['predict'] - t['unpack']:.2f} s"
        )
    steps = ", ".join(f"{name} {s:.2f} s" for name, s in eo["task"]["steps"].items())
    print(
        f"eo-learn workflow: {steps}; predict alone {eo['pure']['predict_only_seconds']:.2f} s of the pure "
        f"{eo['pure']['seconds']:.2f} s (predict_proba runs the trees a second time)"
    )
    for mode, a in agreement.items():
        print(
            f"compile={mode}: labels {a['labels_vs_eolearn'] * 100:.4f} % equal to eo-learn's over the "
            f"{valid.sum()} pixels with a valid observation (LCMS writes 0 on the {no_valid.sum()} others), "
            f"pure {a['pure_labels_vs_eolearn'] * 100:.4f} % over all pixels; percent max |LCMS − eo-learn| = "
            f"{a['percent_vs_eolearn']}; probabilities max |{mode} − {reference}| = {a['proba_vs_reference']:.2e}"
        )


def _codes_to_index(codes, model: dict):
    """Legend codes → column index in the model's classes (eo-learn's labels are codes)."""
    import numpy as np

    lookup = np.zeros(256, np.int64)
    lookup[np.array(model["classes"])] = np.arange(len(model["classes"]))
    return lookup[codes]


if __name__ == "__main__":
    main()
