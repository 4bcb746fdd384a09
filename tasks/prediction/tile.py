"""Prediction stage, tile level: a trained model applied to every pixel of a tile, block by block.

Plain functions, no Prefect: the flow in flows/prediction.py wraps them. Per tile and year:

1. the model is fetched from the store once per worker process (cached by its attempt);
2. the tile's features must be those the model learnt from: the same feature names in the same
   order, and the same dates relative to the first (`check_features_match`);
3. per block of `block_size` pixels: features → float values (NaN where missing) → the model's
   trees, compiled to machine code (tasks/prediction/compiled.py: lleaves, LightGBM's own
   predictor as the fallback, `prediction.compile`) → `labels` (legend codes), `probabilities`
   (percent per class) and `confidence` (the winning class's percent). Pixels without any valid
   observation are not predicted and get no data (0) everywhere.
Memory is one block of int16 features, a few thousand float rows and the block's predictions,
whatever the tile size.
"""

from __future__ import annotations

import functools
import json
import tempfile
from pathlib import Path

import numpy as np

from lcms.config import PredictionConfig, params_hash
from lcms.grid import Tile
from lcms.store import DoneRecord, TileStore
from tasks.features.tile import unpack
from tasks.prediction.compiled import load_predictor
from tasks.training.stage import STAGE as MODEL_STAGE
from tasks.training.stage import fetch_model

STAGE = "prediction"
INPUT_STAGE = "features"
ROWS_PER_PASS = 8192  # pixels decoded and predicted at once: 8192 × 576 float64 columns = 36 MiB


class PredictionError(ValueError):
    """Features a model cannot be applied to; the message says what differs and what to do."""


def prediction_params_hash(tile: Tile, year: int, model_attempt: str, features_hash: str) -> str:
    # The prediction config's block_size and num_threads change how, not what: not in the hash.
    return params_hash(tile.grid.to_attrs(), year, model_attempt, features_hash)


@functools.lru_cache(maxsize=2)
def _cached_model(store_url: str, storage_options_key: str, name: str, version: str):
    store = TileStore(store_url, json.loads(storage_options_key))
    # Versions are immutable, so the files can go once the model is in memory.
    with tempfile.TemporaryDirectory(prefix=f"lcms-model-{name}-") as folder:
        return fetch_model(store, name, Path(folder), version)


def load_stored_model(store: TileStore, name: str, version: str | None = None):
    """(booster, metadata, version) of the model `name`: its current version, or the pinned `version`.

    Fetched once per process and version.
    """
    if version is None:
        record = store.product_record(MODEL_STAGE, name)
        if record is None:
            raise PredictionError(f"{store.url} has no trained model {name!r}: run `lcms training CONFIG` first")
        version = record.attempt
    options = json.dumps(store.storage_options, sort_keys=True)  # hashable, nested options kept as they are
    booster, metadata = _cached_model(store.url, options, name, version)
    return booster, metadata, version


def check_features_match(metadata: dict, feature_names: list[str], dates: np.ndarray, where: str) -> None:
    """Raise PredictionError unless a tile's features are the ones the model was trained on."""
    data = metadata["lineage"]["data"]
    if "features" not in data or "date_offsets_days" not in data:
        raise PredictionError(
            "the model does not record the features it was trained on (an older LCMS made it): "
            "rerun `lcms merge CONFIG` and `lcms training CONFIG`"
        )
    expected_names = [str(n) for n in data["features"]]
    feature_names = [str(n) for n in feature_names]
    if feature_names != expected_names:
        raise PredictionError(
            f"{where}: the features are {feature_names} but the model was trained on {expected_names}; "
            "rerun the features stage with the model's features config, or retrain the model on these features"
        )
    offsets = (
        (dates.astype("datetime64[D]") - dates.astype("datetime64[D]")[0]).astype(int).tolist() if len(dates) else []
    )
    if offsets != list(data["date_offsets_days"]):
        raise PredictionError(
            f"{where}: {len(offsets)} dates (days after the first: {offsets[:5]}...) but the model expects "
            f"{len(data['date_offsets_days'])} ({data['date_offsets_days'][:5]}...); use the model's features.date_grid"
        )


def prediction_tile_hash(store: TileStore, tile: Tile, year: int, cfg: PredictionConfig) -> str:
    """A retrained model or redone features make the tile's prediction stale."""
    features = store.require_done(INPUT_STAGE, year, tile.tile_id)
    _, _, attempt = load_stored_model(store, store.product, cfg.model_version)
    return prediction_params_hash(tile, year, attempt, features.params_hash)


def prediction_tile(
    store: TileStore, tile: Tile, year: int, cfg: PredictionConfig, model_name: str | None = None
) -> DoneRecord:
    """Predict one tile-year with the stored model and store labels, probabilities and confidence.

    The model is the store's product's (or `model_name`), in its current version or the one
    `cfg.model_version` pins; the version is recorded with the output.
    """
    model_name = model_name or store.product
    booster, metadata, attempt = load_stored_model(store, model_name, cfg.model_version)
    features = store.open_tile(INPUT_STAGE, year, tile.tile_id)
    dates = features.coord("time")
    check_features_match(metadata, list(features.coord("feature")), dates, f"tile {tile.tile_id}/{year}")
    classes = np.array(metadata["classes"], dtype=np.uint8)
    coords = {"class": classes}
    attrs = {"model": model_name, "model_attempt": attempt, "model_version": attempt, "legend": metadata["legend"]}
    tile_hash = prediction_params_hash(tile, year, attempt, features.record.params_hash)
    predictor = compiled_predictor(store, model_name, attempt, cfg, tile.grid.shape[0] * tile.grid.shape[1])
    with store.writer(STAGE, year, tile.tile_id, tile.grid, tile_hash, coords, attrs) as writer:
        for region, _ in tile.grid.blocks(cfg.block_size):
            stored = features.read("features", region)  # (t, r, c, f) int16 (or float32)
            no_valid = features.read("no_valid", region)
            labels, percent = predict_block(predictor, stored, no_valid, classes, cfg.num_threads)
            writer.write("labels", labels, region)
            writer.write("probabilities", percent, region)
            writer.write("confidence", percent.max(axis=2), region)
        return writer.commit(extra={"model": model_name, "model_attempt": attempt, "model_version": attempt})


# `compile: auto` compiles for tiles of at least a 5 km tile at 10 m. Compiling costs ~25 s per model and machine
# and saves ~11 µs per pixel at 1 thread (LightGBM ~15, lleaves ~3.6: benchmarks/prediction.py), so it pays from
# ~2 Mpx per machine: small tiles mean a small run (the demo, tests), where LightGBM's own predictor is quicker.
AUTO_COMPILE_MIN_PIXELS = 500 * 500


def compiled_predictor(store: TileStore, model_name: str, version: str, cfg: PredictionConfig, tile_pixels: int):
    """The model's predictor for `cfg.compile` (compiled once per machine, loaded once per process)."""
    mode = cfg.compile
    if mode == "auto" and tile_pixels < AUTO_COMPILE_MIN_PIXELS:
        mode = "off"
    options = json.dumps(store.storage_options, sort_keys=True)
    return _cached_predictor(store.url, options, model_name, version, mode, cfg.num_threads)


@functools.lru_cache(maxsize=2)
def _cached_predictor(store_url: str, options: str, name: str, version: str, mode: str, num_threads: int):
    booster, metadata = _cached_model(store_url, options, name, version)
    return load_predictor(booster, metadata, mode, num_threads=num_threads)


def predict_block(
    predictor, stored: np.ndarray, no_valid: np.ndarray, classes: np.ndarray, num_threads: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """One block's (r, c) legend codes and (r, c, k) percent from its stored (t, r, c, f) features.

    Only the pixels with a valid observation are predicted (the others get 0), `ROWS_PER_PASS` at a
    time: their int16 rows are decoded to the predictor's float type there, so the float copy stays
    small whatever the block size.
    """
    t, r, c, f = stored.shape
    rows = np.ascontiguousarray(stored.transpose(1, 2, 0, 3)).reshape(r * c, t * f)  # date-major columns
    todo = np.flatnonzero(~no_valid.reshape(-1))
    labels = np.zeros(r * c, np.uint8)
    percent = np.zeros((r * c, len(classes)), np.uint8)
    for start in range(0, len(todo), ROWS_PER_PASS):
        pixels = todo[start : start + ROWS_PER_PASS]
        X = unpack(rows[pixels]).astype(predictor.dtype, copy=False)  # LightGBM's exact float32 values
        proba = predictor.predict_proba(X, num_threads)
        # Codes from the exact probabilities (rounding to percent never changes the winner); ties go
        # to the first class, as np.argmax does on LightGBM's own probabilities.
        labels[pixels] = classes[np.argmax(proba, axis=1)]
        percent[pixels] = np.rint(np.multiply(proba, 100, out=proba)).astype(np.uint8)  # proba in [0, 1]
    return labels.reshape(r, c), percent.reshape(r, c, len(classes))
