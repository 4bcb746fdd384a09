"""Workers of benchmarks/suite.py: one measurement per process, LCMS in the project's venv, eo-learn in its own.

    python benchmarks/suite_workers.py --folder DIR [--threads 1] WORKER [WORKER ...]

Not meant to be run by hand: `python -m benchmarks.suite` prepares DIR (the synthetic tile and every
stage's input as .npy files, a tile store with the features) and starts these. Each worker loads
its inputs (not timed), runs one stage (timed: wall and CPU seconds), records the process's peak
RSS (VmHWM) right after, then saves its output for the driver to compare (not timed). It prints
one JSON line: {worker: figures}. Several workers in one call (the suite's --batch) run one after
the other with the peak reset in between (/proc/self/clear_refs), which is quicker but less exact.

This file is imported by the eo-learn venv's python too, so LCMS modules are imported inside the
LCMS workers only. The cloud-mask and interpolation workers are those of benchmarks/cloud_mask.py
and benchmarks/interpolation.py; eo-learn's prediction task is benchmarks/prediction.py's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))  # sibling benchmark scripts
from eolearn_env import peak_rss_mib  # noqa: E402

YEAR = 2023
TILE_ID = "T"
MODEL_NAME = "suite"
# The eo-learn land-cover example's features: six bands and three normalised differences.
FEATURE_BANDS = ("B02", "B03", "B04", "B08", "B11", "B12")
FEATURE_NDIS = {"NDVI": ("B08", "B04"), "NDWI": ("B03", "B08"), "NDBI": ("B11", "B08")}
FEATURE_NAMES = (*FEATURE_BANDS, *FEATURE_NDIS)
FEATURES_CONFIG = {"bands": list(FEATURE_BANDS), "indices": list(FEATURE_NDIS)}  # lcms.config.FeaturesConfig
MIN_VALID_COVERAGE = 0.8  # FeaturesConfig's default; the eo-learn example's ValidDataFractionPredicate(0.8)
# ErosionTask builds cv2.getStructuringElement(MORPH_ELLIPSE, (r, r)): r is the kernel's side, so the
# example's disk_radius=1 is a 1 × 1 kernel that erodes nothing. 3 gives a 3 × 3 cross, the nearest
# to LCMS's radius-1 erosion (3 × 3 square).
EOLEARN_EROSION_RADIUS = 3


class Timer:
    """Wall and CPU seconds (all threads of this process) of a `with` block."""

    def __enter__(self) -> Timer:
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self._wall
        self.cpu_seconds = time.process_time() - self._cpu

    def figures(self, **extra) -> dict:
        return {"seconds": self.seconds, "cpu_seconds": self.cpu_seconds, "peak_rss_mib": peak_rss_mib(), **extra}


def reset_peak_rss() -> None:
    """Start VmHWM afresh (Linux >= 4.0), for several workers in one process."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def meta(folder: Path) -> dict:
    return json.loads((folder / "meta.json").read_text())


def load_reflectance(path: Path):
    """float32 reflectance (DN / 10000) of a uint16 .npy, converted one frame at a time.

    eo-learn holds bands as float32 reflectance; reading frame by frame keeps the uint16 copy out
    of the worker's peak memory.
    """
    import numpy as np

    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = header(f)
        if fortran or dtype != np.uint16:
            raise ValueError(f"{path}: expected a C-order uint16 array, got {dtype}")
        out = np.empty(shape, np.float32)
        frame = int(np.prod(shape[1:]))
        for t in range(shape[0]):
            dn = np.fromfile(f, dtype=np.uint16, count=frame).reshape(shape[1:])
            np.divide(dn.astype(np.float32), np.float32(10_000), out=out[t])
    return out


def folder_size_mib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


# --------------------------------------------------------------------------- LCMS


def _lcms_path() -> None:
    sys.path.insert(0, str(REPO))


def _lcms_tile(folder: Path):
    from lcms.geometry import PixelGrid
    from lcms.grid import Tile
    from lcms.store import TileStore

    grid = PixelGrid.from_attrs(meta(folder)["grid"])
    return TileStore(str(folder / "store")), Tile(TILE_ID, grid, grid.bounds)


def lcms_cloud_mask(folder: Path, threads: int) -> dict:
    """tasks.download.cloud_mask.cloud_masks at its default 160 m analysis resolution (benchmarks/cloud_mask.py)."""
    import cloud_mask as bench

    _lcms_path()
    return bench._worker_lcms(folder, 160.0, folder / "out" / "lcms_cloud.npy")


def lcms_filter(folder: Path, threads: int) -> dict:
    """Valid mask, valid coverage per frame, frames >= 0.8 kept with the bands the features need.

    In the features stage the same selection is an index of the store read (only kept frames and
    needed bands are read); here it runs on the tile in memory, as eo-learn's does.
    """
    import numpy as np

    _lcms_path()
    from lcms.config import FeaturesConfig
    from lcms.sentinel2 import L1C_BANDS
    from tasks.download.cloud_mask import valid_coverage, valid_mask

    bands = np.load(folder / "bands.npy")
    data_mask = np.load(folder / "data_mask.npy")
    cloud = np.load(folder / "cloud_true.npy")
    cfg = FeaturesConfig(**FEATURES_CONFIG)
    needed = [L1C_BANDS.index(b) for b in cfg.bands]
    with Timer() as t:
        valid = valid_mask(data_mask, cloud)
        coverage = valid_coverage(valid)
        kept = np.flatnonzero(coverage >= cfg.min_valid_coverage)
        kept_bands = np.empty((len(kept), *bands.shape[1:3], len(needed)), bands.dtype)
        for i, frame in enumerate(kept):  # frame by frame, straight into place: no copy of the 13 bands
            np.take(bands[frame], needed, axis=-1, out=kept_bands[i])
        kept_valid = valid[kept]
    figures = t.figures(kept=len(kept))
    np.save(folder / "out" / "lcms_kept.npy", kept)
    del kept_bands, kept_valid
    return figures


def lcms_indices(folder: Path, threads: int) -> dict:
    """tasks.features.indices.feature_stack: reflectances and NDVI/NDWI/NDBI from uint16 DN of the kept frames."""
    import numpy as np

    _lcms_path()
    from tasks.features.indices import feature_stack

    bands = np.load(folder / "bands6_kept.npy")
    with Timer() as t:
        values = feature_stack(bands, FEATURE_BANDS, FEATURE_NAMES)
    figures = t.figures()
    np.save(folder / "out" / "lcms_indices.npy", values)
    return figures


def lcms_interpolation(folder: Path, threads: int) -> dict:
    """tasks.features.temporal.interpolate on the kept frames (benchmarks/interpolation.py's worker)."""
    import interpolation as bench

    return bench._worker_lcms(folder / "interp", folder / "out" / "lcms_interpolation.npy", 1)


def lcms_sampling(folder: Path, threads: int) -> dict:
    """Reference erosion (tasks.reference.erode_labels) and its store write, then tasks.sampling.tile.sampling_tile.

    The features are read from the tile store (written by the driver as the features stage would),
    the samples written to it: Zarr I/O is part of this row, as the example's LoadTask and SaveTask
    are part of eo-learn's. Reading and decompressing the whole tile's features is most of it (the
    fraction puts samples in every chunk); erosion and sampling in memory are `in_memory_seconds`.
    """
    import numpy as np

    _lcms_path()
    from lcms.config import SamplingConfig
    from lcms.legend import LULC_LEGEND
    from tasks.reference.polygons import erode_labels
    from tasks.sampling.samples import sample_pixels
    from tasks.sampling.tile import sampling_tile

    store, tile = _lcms_tile(folder)
    labels = np.load(folder / "labels_train.npy")
    cfg = SamplingConfig(fraction=meta(folder)["fraction"], stratified=True)
    attrs = {"legend": [c.__dict__ for c in LULC_LEGEND], "source": "benchmarks/suite.py"}
    with Timer() as t:
        eroded = erode_labels(labels, 1)
        with store.writer("reference", YEAR, TILE_ID, tile.grid, "suite", {}, attrs) as writer:
            writer.write("labels", labels)
            writer.write("labels_eroded", eroded)
        record = sampling_tile(store, tile, YEAR, cfg)
    figures = t.figures(samples=record.extra["n_samples"])
    np.save(folder / "out" / "lcms_eroded.npy", eroded)
    # The same work with the features in memory and nothing written, as eo-learn's `in_memory_seconds`.
    features = np.load(folder / "features.npy")
    with Timer() as in_memory:
        eroded = erode_labels(labels, 1)
        pixels = sample_pixels(eroded, fraction=cfg.fraction, stratified=True, seed=0)
        t_, h, w, f = features.shape
        features.reshape(t_, h * w, f)[:, pixels, :].transpose(1, 0, 2).reshape(len(pixels), t_ * f)
    return {**figures, "in_memory_seconds": in_memory.seconds}


def lcms_training(folder: Path, threads: int) -> dict:
    """The samples read from the store, tasks.training.model.train_with_config with the training stage's
    settings (TrainingConfig's defaults; every 10th sample is the validation split, as MergeConfig's 0.1,
    which the defaults train on too), save_model, and the model put in the store as the training stage does."""
    import numpy as np

    _lcms_path()
    from lcms.config import TrainingConfig
    from lcms.legend import LULC_LEGEND
    from tasks.features.tile import unpack
    from tasks.training.model import save_model, train_with_config

    store, _ = _lcms_tile(folder)
    info = meta(folder)
    model_dir = folder / "lcms_model"
    with Timer() as t:
        samples = store.open_tile("sampling", YEAR, TILE_ID)
        X = unpack(samples.read("features"))
        y = samples.read("label")
        columns = [str(c) for c in samples.coord("column")]
        every_10th = np.arange(len(y)) % 10 == 0  # MergeConfig's validation_fraction 0.1
        val = every_10th & np.isin(y, np.unique(y[~every_10th]))
        cfg = TrainingConfig(num_threads=threads)  # what the training stage runs (tasks/training/stage.py)
        booster = train_with_config(X[~val], y[~val], X[val], y[val], columns, cfg)
        lineage = {"features": list(FEATURE_NAMES), "date_offsets_days": info["target_offsets_days"]}
        save_model(booster, model_dir, LULC_LEGEND, booster.lcms_classes, lineage)
        store.put_files("training", MODEL_NAME, model_dir, "suite")
    # Without early stopping (TrainingConfig's default) the validation rows train too.
    trained_on = len(y) if cfg.early_stopping_rounds is None else int((~val).sum())
    return t.figures(samples=trained_on, validation=int(val.sum()), rounds=booster.best_iteration)


def lcms_real_patch(folder: Path, threads: int) -> dict:
    """OA on the real Slovenia patch, both directions: LCMS's training stage (TrainingConfig's defaults, seeds 0
    and 1) beside eo-learn's example classifier on the same rows (benchmarks/training.py `real_patch_scores`).

    eo-learn's classifier runs here, in the LCMS venv: both venvs have LightGBM 4.7.0, and LGBMClassifier is
    the same code in both."""
    _lcms_path()
    import lightgbm
    import training as bench

    scores = bench.real_patch_scores(2017, threads, 1, folder / "real_patch_store", seeds=(0, 1))
    return {"year": 2017, "lightgbm": lightgbm.__version__, "directions": scores}


def lcms_prediction(folder: Path, threads: int) -> dict:
    """tasks.prediction.tile.prediction_tile: Zarr features → LightGBM per 256² block → Zarr labels."""
    import numpy as np

    _lcms_path()
    from lcms.config import PredictionConfig
    from tasks.prediction.tile import compiled_predictor, load_stored_model, prediction_tile

    store, tile = _lcms_tile(folder)
    cfg = PredictionConfig(num_threads=threads)  # compile: auto = lleaves from 500² px tiles
    # The trees are compiled once per model and machine, before the clock (kept per process), as in a country
    # run where that cost is spread over hundreds of tiles; its seconds are reported beside.
    _, _, attempt = load_stored_model(store, MODEL_NAME, None)
    with Timer() as compiling:
        predictor = compiled_predictor(store, MODEL_NAME, attempt, cfg, tile.grid.shape[0] * tile.grid.shape[1])
    with Timer() as t:
        prediction_tile(store, tile, YEAR, cfg, MODEL_NAME)
    figures = t.figures()
    figures["predictor"] = type(predictor).__name__
    figures["compile_seconds"] = compiling.figures()["seconds"]
    np.save(folder / "out" / "lcms_labels.npy", store.open_tile("prediction", YEAR, TILE_ID).read("labels"))
    return figures


_DOWNLOAD_ARRAYS = ("bands", "data_mask", "cloud_prob", "cloud_true", "valid")


def _lcms_stage_arrays(folder: Path) -> dict:
    import numpy as np

    names = (*_DOWNLOAD_ARRAYS, "features", "no_valid", "valid_count")
    return {name: np.load(folder / f"{name}.npy") for name in names}


def npy_blocks(path: Path, regions: list[tuple[slice, slice]]):
    """Spatial blocks [:, rows, cols] of a (t, y, x, ...) .npy file, each copied out of a memory map whose
    pages are then given back (MADV_DONTNEED), so that only one block at a time is resident: a stage's
    output as the stage hands it to the writer."""
    import mmap

    import numpy as np

    mapped = np.load(path, mmap_mode="r")
    for rows, cols in regions:
        block = np.empty((mapped.shape[0], *mapped[0, rows, cols].shape), mapped.dtype)
        for t in range(len(block)):  # a date at a time: the pages of one date's rows are resident at most
            block[t] = mapped[t, rows, cols]
            mapped._mmap.madvise(mmap.MADV_DONTNEED)
        yield block


def lcms_store_write(folder: Path, threads: int) -> dict:
    """TileStore writers of the download and features stages, block by block as those stages write."""
    import numpy as np

    _lcms_path()
    from lcms.config import DownloadConfig, FeaturesConfig
    from lcms.sentinel2 import L1C_BANDS
    from lcms.store import TileStore
    from tasks.download.cloud_mask import valid_coverage
    from tasks.features.tile import pack

    _, tile = _lcms_tile(folder)
    info = meta(folder)
    # The features stage computes and writes its float32 features one block at a time: they come here
    # block by block from a memory map (`npy_blocks`), never whole. The download stage's arrays are in
    # memory whole, as its one 512-px block holds the whole tile at this size.
    a = {name: np.load(folder / f"{name}.npy") for name in _DOWNLOAD_ARRAYS + ("no_valid", "valid_count")}
    store = TileStore(str(folder / "store_io"))
    dates = np.array(info["dates"], "int64").astype("datetime64[s]")
    targets = np.array(info["targets"], "int64").astype("datetime64[s]")
    grid = tile.grid
    with Timer() as t:
        coords = {"time": dates, "band": np.array(L1C_BANDS)}
        with store.writer("download", YEAR, TILE_ID, grid, "suite", coords) as w:
            for region, _ in grid.blocks(DownloadConfig().block_size):
                rows, cols = region
                w.write("bands", a["bands"][:, rows, cols], region)
                w.write("data_mask", a["data_mask"][:, rows, cols], region)
                w.write("cloud_prob", a["cloud_prob"][:, rows, cols], region)
                w.write("cloud_mask", a["cloud_true"][:, rows, cols], region)
                w.write("shadow_mask", np.zeros_like(a["cloud_true"][:, rows, cols]), region)
                w.write("valid_mask", a["valid"][:, rows, cols], region)
            w.write("valid_coverage", valid_coverage(a["valid"]))
        coords = {"time": targets, "feature": np.array(FEATURE_NAMES)}
        with store.writer("features", YEAR, TILE_ID, grid, "suite", coords) as w:
            regions = [region for region, _ in grid.blocks(FeaturesConfig().block_size)]
            for region, values in zip(regions, npy_blocks(folder / "features.npy", regions), strict=True):
                rows, cols = region
                w.write("features", pack(values, "int16"), region)
                w.write("no_valid", a["no_valid"][rows, cols], region)
                w.write("valid_count", a["valid_count"][rows, cols], region)
    return t.figures(on_disk_mib=folder_size_mib(folder / "store_io"))


def lcms_store_read(folder: Path, threads: int) -> dict:
    """TileStore.open_tile and whole-tile reads of both stages, features unpacked to float32 (by chunk)."""
    import numpy as np

    _lcms_path()
    from lcms.store import TileStore
    from tasks.features.tile import unpack

    store = TileStore(str(folder / "store_io"))
    with Timer() as t:
        download = store.open_tile("download", YEAR, TILE_ID)
        got = {
            name: download.read(stored)
            for name, stored in [
                ("bands", "bands"),
                ("data_mask", "data_mask"),
                ("cloud_prob", "cloud_prob"),
                ("cloud_true", "cloud_mask"),
                ("valid", "valid_mask"),
            ]
        }
        download.read("valid_coverage")
        features = store.open_tile("features", YEAR, TILE_ID)
        # Unpacked chunk by chunk into the whole float32 array: the int16 copy of the tile is never held.
        spec = features.group["features"]
        got["features"] = np.empty(spec.shape, np.float32)
        for region, _ in features.grid.blocks(spec.chunks[1]):
            unpack(features.read("features", region), out=got["features"][:, region[0], region[1]])
        got["no_valid"] = features.read("no_valid")
        got["valid_count"] = features.read("valid_count")
    figures = t.figures()
    expected = _lcms_stage_arrays(folder)
    # features are stored as int16 (value × 10000): equal to 1e-4 after the round trip
    exact = all(np.array_equal(got[k], expected[k]) for k in expected if k != "features")
    close = np.allclose(got["features"], expected["features"], atol=0.51e-4, equal_nan=True)
    return {**figures, "round_trip_equal": bool(exact and close)}


# --------------------------------------------------------------------------- eo-learn


def _eo_patch(folder: Path, timestamps_key: str = "dates", index=None):
    import datetime as dt

    from eolearn.core import EOPatch
    from sentinelhub import CRS, BBox

    info = meta(folder)
    seconds = info[timestamps_key] if index is None else [info[timestamps_key][i] for i in index]
    epoch = dt.datetime(1970, 1, 1)
    return EOPatch(
        bbox=BBox(tuple(info["bounds"]), crs=CRS.UTM_33N),
        timestamps=[epoch + dt.timedelta(seconds=int(s)) for s in seconds],
    )


def eolearn_cloud_mask(folder: Path, threads: int) -> dict:
    """CloudMaskTask at its defaults: data resolution (10 m), average_over 4, dilation 2 (benchmarks/cloud_mask.py)."""
    import cloud_mask as bench

    return bench._worker_eolearn(folder, 10.0, folder / "out" / "eolearn_cloud.npy")


def eolearn_cloud_mask_160m(folder: Path, threads: int) -> dict:
    """CloudMaskTask on the patch resized to 160 m by SpatialResizeTask, mask upsampled (benchmarks/cloud_mask.py)."""
    import cloud_mask as bench

    return bench._worker_eolearn(folder, 160.0, folder / "out" / "eolearn_cloud_160m.npy")


def eolearn_filter(folder: Path, threads: int) -> dict:
    """IS_VALID = IS_DATA & ~CLM (ZipFeatureTask), then SimpleFilterTask on valid fraction >= 0.8."""
    import numpy as np
    from eolearn.core import FeatureType, ZipFeatureTask
    from eolearn.features import SimpleFilterTask

    patch = _eo_patch(folder)
    patch.data["BANDS-S2-L1C"] = load_reflectance(folder / "bands.npy")
    patch.mask["IS_DATA"] = np.load(folder / "data_mask.npy")[..., None]
    patch.mask["CLM"] = np.load(folder / "cloud_true.npy")[..., None]
    add_valid = ZipFeatureTask(
        {FeatureType.MASK: ["IS_DATA", "CLM"]}, (FeatureType.MASK, "IS_VALID"), lambda data, cloud: data & ~cloud
    )
    # The example's ValidDataFractionPredicate uses ">"; ">=" as LCMS, so that both keep the same frames.
    keep = SimpleFilterTask((FeatureType.MASK, "IS_VALID"), lambda valid: valid.mean() >= MIN_VALID_COVERAGE)
    with Timer() as t:
        filtered = keep.execute(add_valid.execute(patch))
    figures = t.figures(kept=len(filtered.timestamps))
    kept = [patch.timestamps.index(ts) for ts in filtered.timestamps]
    np.save(folder / "out" / "eolearn_kept.npy", np.array(kept, np.int64))
    return figures


def eolearn_indices(folder: Path, threads: int) -> dict:
    """Three NormalizedDifferenceIndexTasks and MergeFeatureTask (bands + indices → FEATURES)."""
    import numpy as np
    from eolearn.core import FeatureType, MergeFeatureTask
    from eolearn.features import NormalizedDifferenceIndexTask

    info = meta(folder)
    patch = _eo_patch(folder, index=info["kept"])
    patch.data["BANDS"] = load_reflectance(folder / "bands6_kept.npy")
    band = {name: i for i, name in enumerate(FEATURE_BANDS)}
    tasks = [
        NormalizedDifferenceIndexTask((FeatureType.DATA, "BANDS"), (FeatureType.DATA, name), (band[a], band[b]))
        for name, (a, b) in FEATURE_NDIS.items()
    ]
    merge = MergeFeatureTask({FeatureType.DATA: ["BANDS", *FEATURE_NDIS]}, (FeatureType.DATA, "FEATURES"))
    with Timer() as t:
        for task in [*tasks, merge]:
            patch = task.execute(patch)
    figures = t.figures()
    np.save(folder / "out" / "eolearn_indices.npy", patch.data["FEATURES"])
    return figures


def eolearn_interpolation(folder: Path, threads: int) -> dict:
    """LinearInterpolationTask with the valid mask, numba compiled first (benchmarks/interpolation.py's worker)."""
    import interpolation as bench

    return bench._worker_eolearn(folder / "interp", folder / "out" / "eolearn_interpolation.npy", 1)


def eolearn_sampling(folder: Path, threads: int) -> dict:
    """The example's sampling workflow: load the patch (FEATURES, LULC), ErosionTask, FractionSamplingTask
    (per-class fraction, class 0 excluded), save the sampled features and labels.

    LCMS's row reads its features from the tile store and writes the samples to it, as its stage does;
    the example's sampling workflow likewise starts with LoadTask and ends with SaveTask, so both rows
    time the same work. The erosion and sampling alone (patch in memory) are `in_memory_seconds`.
    """
    import numpy as np
    from eolearn.core import EOPatch, FeatureType
    from eolearn.geometry import ErosionTask
    from eolearn.ml_tools import FractionSamplingTask

    info = meta(folder)
    patch = _eo_patch(folder, "targets")
    patch.data["FEATURES"] = np.load(folder / "features.npy")
    patch.mask_timeless["LULC"] = np.load(folder / "labels_train.npy")[..., None]
    source, target = folder / "eopatches" / "sampling_in", folder / "eopatches" / "sampling_out"
    patch.save(str(source))  # what the example's features workflow saved (not timed)
    del patch
    lulc, eroded = (FeatureType.MASK_TIMELESS, "LULC"), (FeatureType.MASK_TIMELESS, "LULC_ERODED")
    erosion = ErosionTask((*lulc, "LULC_ERODED"), disk_radius=EOLEARN_EROSION_RADIUS)
    sampled = [(FeatureType.DATA, "FEATURES_SAMPLED"), (FeatureType.MASK_TIMELESS, "LULC_ERODED_SAMPLED")]
    sampling = FractionSamplingTask(
        features_to_sample=[(FeatureType.DATA, "FEATURES", "FEATURES_SAMPLED"), (*eroded, "LULC_ERODED_SAMPLED")],
        sampling_feature=eroded,
        fraction=info["fraction"],
        exclude_values=[0],
    )
    with Timer() as t:
        patch = EOPatch.load(str(source))
        with Timer() as in_memory:
            patch = sampling.execute(erosion.execute(patch), seed=0)
        patch.save(str(target), features=sampled)
    X = patch.data["FEATURES_SAMPLED"]  # (t, n, 1, f)
    figures = t.figures(samples=X.shape[1], in_memory_seconds=in_memory.seconds)
    # as the example: (t, n, 1, f) → (n, t·f), date-major columns like LCMS's
    t_, w, h, f = X.shape
    np.save(folder / "out" / "eolearn_X.npy", np.moveaxis(X, 0, 2).reshape(w * h, t_ * f))
    np.save(folder / "out" / "eolearn_y.npy", patch.mask_timeless["LULC_ERODED_SAMPLED"].ravel())
    np.save(folder / "out" / "eolearn_eroded.npy", patch.mask_timeless["LULC_ERODED"][..., 0])
    return figures


def eolearn_training(folder: Path, threads: int) -> dict:
    """The example's LGBMClassifier (multiclass, multi_logloss, otherwise defaults) fitted and pickled with joblib."""
    import joblib
    import lightgbm as lgb
    import numpy as np

    X = np.load(folder / "out" / "eolearn_X.npy")
    y = np.load(folder / "out" / "eolearn_y.npy")
    with Timer() as t:
        model = lgb.LGBMClassifier(
            objective="multiclass",
            num_class=len(np.unique(y)),
            metric="multi_logloss",
            random_state=0,
            n_jobs=threads,
            verbose=-1,
        )
        model.fit(X, y)
        joblib.dump(model, folder / "eolearn_model.joblib")
    return t.figures(samples=len(y), rounds=model.booster_.current_iteration())


def eolearn_prediction(folder: Path, threads: int) -> dict:
    """The example's PredictPatchTask on the whole tile's FEATURES: predict, then predict_proba."""
    import joblib
    import numpy as np
    from eolearn.core import FeatureType
    from prediction import _predict_patch_task

    model = joblib.load(folder / "eolearn_model.joblib")
    model.set_params(n_jobs=threads)
    patch = _eo_patch(folder, "targets")
    patch.data["FEATURES"] = np.load(folder / "features.npy")
    task = _predict_patch_task()(model, (FeatureType.DATA, "FEATURES"), "LBL_GBM", "SCR_GBM")
    with Timer() as t:
        patch = task.execute(patch)
    figures = t.figures()
    np.save(folder / "out" / "eolearn_labels.npy", patch.mask_timeless["LBL_GBM"][..., 0])
    return figures


def _eolearn_patches(folder: Path):
    """The same content as LCMS's download and features outputs, as eo-learn holds it: two EOPatches
    (an EOPatch has one time axis), float32 reflectance and probabilities."""
    import numpy as np

    raw = _eo_patch(folder)
    raw.data["BANDS-S2-L1C"] = load_reflectance(folder / "bands.npy")
    raw.mask["IS_DATA"] = np.load(folder / "data_mask.npy")[..., None]
    prob = np.load(folder / "cloud_prob.npy")
    raw.data["CLP"] = np.where(prob == 255, 0, prob).astype(np.float32)[..., None] / np.float32(100)
    del prob
    raw.mask["CLM"] = np.load(folder / "cloud_true.npy")[..., None]
    raw.mask["IS_VALID"] = np.load(folder / "valid.npy")[..., None]
    raw.scalar["VALID_FRACTION"] = raw.mask["IS_VALID"].mean(axis=(1, 2)).astype(np.float32)
    feats = _eo_patch(folder, "targets")
    feats.data["FEATURES"] = np.load(folder / "features.npy")
    feats.mask_timeless["NO_VALID"] = np.load(folder / "no_valid.npy")[..., None]
    feats.mask_timeless["VALID_COUNT"] = np.load(folder / "valid_count.npy")[..., None]
    return raw, feats


def eolearn_store_write(folder: Path, threads: int) -> dict:
    """EOPatch.save (numpy files, gzip'd: eo-learn's default) of both patches."""
    raw, feats = _eolearn_patches(folder)
    root = folder / "eopatches"
    with Timer() as t:
        raw.save(str(root / "raw"))
        feats.save(str(root / "features"))
    return t.figures(on_disk_mib=folder_size_mib(root))


def eolearn_store_read(folder: Path, threads: int) -> dict:
    """EOPatch.load (not lazy) of both patches."""
    import numpy as np
    from eolearn.core import EOPatch

    root = folder / "eopatches"
    with Timer() as t:
        raw = EOPatch.load(str(root / "raw"))
        feats = EOPatch.load(str(root / "features"))
    figures = t.figures()
    expected_raw, expected_feats = _eolearn_patches(folder)
    equal = raw == expected_raw and feats == expected_feats
    del expected_raw, expected_feats
    return {**figures, "round_trip_equal": bool(equal and np.isfinite(raw.data["BANDS-S2-L1C"]).all())}


# --------------------------------------------------------------------------- LCMS scaling and the large tile


class _TimedSource:
    """The synthetic source of the download stage, timing its rendering (not LCMS's own work)."""

    def __init__(self, source):
        self.source, self.band_names, self.seconds = source, source.band_names, 0.0

    def acquisition_dates(self, grid, year):
        return self.source.acquisition_dates(grid, year)

    def read(self, grid, dates):
        t0 = time.perf_counter()
        try:
            return self.source.read(grid, dates)
        finally:
            self.seconds += time.perf_counter() - t0


def _tile_grid(size: int, index: int = 0):
    from lcms.geometry import PixelGrid

    x0, y1 = 500_000.0 + index * 10.0 * size, 5_200_000.0  # tiles side by side, away from the suite's tile
    return PixelGrid("EPSG:32633", (10.0, 0.0, x0, 0.0, -10.0, y1), (size, size))


def _download(store, tile, dates: int) -> dict:
    """The download stage (synthetic source, s2cloudless at 160 m, the product's defaults) on one tile."""
    from lcms.config import DownloadConfig, SyntheticSourceConfig
    from tasks.download.tile import download_tile, make_source

    cfg = DownloadConfig(source=SyntheticSourceConfig(dates_per_year=dates))
    source = _TimedSource(make_source(cfg.source))
    t0 = time.perf_counter()
    download_tile(store, tile, YEAR, cfg, source)
    return {"seconds": time.perf_counter() - t0, "render_seconds": source.seconds}


def _features(store, tile) -> dict:
    """The features stage at the product's defaults (6 bands + 6 indices, 23 dates, int16)."""
    from lcms.config import FeaturesConfig
    from tasks.features.tile import features_tile

    t0 = time.perf_counter()
    features_tile(store, tile, YEAR, FeaturesConfig())
    return {"seconds": time.perf_counter() - t0}


def _scaling_tile(index: int, store_url: str, size: int, dates: int) -> dict:
    """One tile through download and features, in a Dask worker."""
    from lcms.grid import Tile
    from lcms.store import TileStore

    store = TileStore(store_url)
    grid = _tile_grid(size, index)
    tile = Tile(f"T{index:02d}", grid, grid.bounds)
    download = _download(store, tile, dates)
    features = _features(store, tile)
    return {"download": download, "features": features, "pid": os.getpid()}


def _warm_worker() -> bool:
    """Imports and the s2cloudless model, before the clock starts."""
    from tasks.download import cloud_mask, tile  # noqa: F401
    from tasks.features import tile as features_tile  # noqa: F401

    cloud_mask.cloud_model()  # the compiled model if this machine has it (benchmarks/suite.py), else LightGBM
    return True


def lcms_scaling(folder: Path, threads: int) -> dict:
    """N tiles through the download and features stages on a Dask cluster of production's shape: a `dask
    scheduler` process and 1, then 2 `dask worker` processes of 1 thread each, started with Dask's command
    line and talking TCP on 127.0.0.1 (benchmarks/cli_cluster.py); the tiles go to a local store that every
    process sees. efficiency = t1 / (2 · t2)."""
    _lcms_path()
    from cli_cluster import cli_cluster
    from distributed import Client

    info = meta(folder)["scaling"]
    # The worker processes import this folder's modules (eolearn_env) and lcms as this process does.
    paths = [str(HERE), str(REPO), os.environ.get("PYTHONPATH")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    runs = {}
    for n_workers in (1, 2):
        with (
            cli_cluster(n_workers, folder / f"dask-{n_workers}", env) as cluster,
            Client(cluster.address, set_as_default=False) as client,
        ):
            client.run(_warm_worker)
            store = str(folder / f"scaling-store-{n_workers}")
            t0, c0 = time.perf_counter(), sum(client.run(time.process_time).values())
            futures = client.map(
                _scaling_tile, range(info["tiles"]), store_url=store, size=info["size"], dates=info["dates"], pure=False
            )
            tiles = client.gather(futures)
            seconds = time.perf_counter() - t0
            cpu = sum(client.run(time.process_time).values()) - c0
            peaks = client.run(peak_rss_mib)
        runs[str(n_workers)] = {
            "seconds": seconds,
            "worker_cpu_seconds": cpu,
            "worker_peak_rss_mib": sorted(peaks.values()),
            "tile_seconds": [r["download"]["seconds"] + r["features"]["seconds"] for r in tiles],
            "render_seconds": sum(r["download"]["render_seconds"] for r in tiles),
            "workers_used": len({r["pid"] for r in tiles}),
            "cluster": f"dask scheduler + {n_workers} dask worker process(es), 1 thread each, TCP on 127.0.0.1",
        }
    t1, t2 = runs["1"]["seconds"], runs["2"]["seconds"]
    return {"runs": runs, "speedup": t1 / t2, "parallel_efficiency": t1 / (2 * t2)}


def lcms_big_download(folder: Path, threads: int) -> dict:
    """The download stage on the large tile (render, write, s2cloudless at 160 m by 512-px blocks)."""
    _lcms_path()
    from lcms.grid import Tile
    from lcms.store import TileStore

    info = meta(folder)["big"]
    grid = _tile_grid(info["size"])
    result = _download(TileStore(str(folder / "big-store")), Tile("BIG", grid, grid.bounds), info["dates"])
    return {**result, "peak_rss_mib": peak_rss_mib()}


def lcms_big_features(folder: Path, threads: int) -> dict:
    """The features stage on the large tile (read, indices, interpolation, pack, write by 256-px blocks)."""
    _lcms_path()
    from lcms.grid import Tile
    from lcms.store import TileStore

    info = meta(folder)["big"]
    grid = _tile_grid(info["size"])
    result = _features(TileStore(str(folder / "big-store")), Tile("BIG", grid, grid.bounds))
    return {**result, "peak_rss_mib": peak_rss_mib()}


WORKERS: dict[str, Callable[[Path, int], dict]] = {
    name: fn for name, fn in list(globals().items()) if name.startswith(("lcms_", "eolearn_")) and callable(fn)
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("workers", nargs="+", choices=sorted(WORKERS))
    args = parser.parse_args()
    import warnings

    warnings.filterwarnings("ignore")
    results = {}
    for name in args.workers:
        reset_peak_rss()
        results[name] = WORKERS[name](args.folder, args.threads)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
