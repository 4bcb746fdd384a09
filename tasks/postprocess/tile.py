"""Post-processing stage, tile level: the configured chain of steps over a tile's predicted labels.

Plain functions, no Prefect: the flow in flows/postprocess.py wraps them. The steps themselves
are array functions in tasks/postprocess/steps.py; this module reads the prediction (and, for
superpixels, the yearly mean of some features), runs the chain on the whole buffered tile, and
stores the result as the `postprocess` stage. The prediction stays in the store unchanged.
"""

from __future__ import annotations

import numpy as np

from lcms.config import PostprocessConfig, params_hash
from lcms.grid import Tile
from lcms.store import DoneRecord, TileStore
from tasks.features.tile import unpack
from tasks.postprocess.steps import apply_steps

STAGE = "postprocess"
INPUT_STAGE = "prediction"


def postprocess_params_hash(cfg: PostprocessConfig, tile: Tile, year: int, prediction_hash: str) -> str:
    return params_hash(cfg, tile.grid.to_attrs(), year, prediction_hash)


def postprocess_tile_hash(store: TileStore, tile: Tile, year: int, cfg: PostprocessConfig) -> str:
    """Includes the prediction it reads: a redone prediction makes the post-processing stale."""
    prediction = store.require_done(INPUT_STAGE, year, tile.tile_id)
    return postprocess_params_hash(cfg, tile, year, prediction.params_hash)


def step_arguments(cfg: PostprocessConfig, n_pixels: int) -> list[tuple[str, dict]]:
    """The chain as (step name, keyword arguments) pairs for `tasks.postprocess.apply_steps`."""
    steps = []
    for step in cfg.steps:
        if step.kind == "majority":
            steps.append(("majority", {"size": step.size}))
        elif step.kind == "sieve":
            steps.append(("sieve", {"min_pixels": step.min_pixels, "connectivity": step.connectivity}))
        elif step.kind == "erosion":
            steps.append(("erosion", {"radius_px": step.radius_px}))
        elif step.method == "slic":
            n_segments = max(1, n_pixels // step.segment_size_px)
            steps.append(
                (
                    "superpixels",
                    {"method": "slic", "n_segments": n_segments, "compactness": step.compactness, "sigma": step.sigma},
                )
            )
        else:
            steps.append(
                (
                    "superpixels",
                    {"method": "felzenszwalb", "scale": step.scale, "sigma": step.sigma, "min_size": step.min_size},
                )
            )
    return steps


def mean_features(store: TileStore, tile: Tile, year: int, names: list[str], block_size: int = 256) -> np.ndarray:
    """The yearly mean of some features, (y, x, len(names)) float32, NaN where never observed; block by block."""
    features = store.open_tile("features", year, tile.tile_id)
    available = list(features.coord("feature"))
    missing = [n for n in names if n not in available]
    if missing:
        raise ValueError(f"tile {tile.tile_id}/{year} has no features {missing} for superpixels; it has {available}")
    index = [available.index(n) for n in names]
    image = np.full((*tile.grid.shape, len(names)), np.nan, dtype=np.float32)
    for region, _ in tile.grid.blocks(block_size):
        values = unpack(features.read("features", region, {"feature": index}))  # (t, r, c, k)
        observed = np.isfinite(values).sum(axis=0)
        total = np.nansum(values, axis=0)
        image[region] = np.where(observed > 0, total / np.maximum(observed, 1), np.nan)
    return image


def postprocess_tile(store: TileStore, tile: Tile, year: int, cfg: PostprocessConfig) -> DoneRecord:
    """Run the chain on one tile-year's predicted labels and store the result."""
    prediction = store.open_tile(INPUT_STAGE, year, tile.tile_id)
    labels = prediction.read("labels")
    image = None
    superpixels = [s for s in cfg.steps if s.kind == "superpixels"]
    if superpixels:
        image = mean_features(store, tile, year, superpixels[0].features)
    result = apply_steps(labels, step_arguments(cfg, labels.size), image=image)
    tile_hash = postprocess_params_hash(cfg, tile, year, prediction.record.params_hash)
    attrs = {"steps": [s.model_dump(mode="json") for s in cfg.steps], "legend": prediction.attrs["legend"]}
    with store.writer(STAGE, year, tile.tile_id, tile.grid, tile_hash, {}, attrs) as writer:
        writer.write("labels", result.astype(np.uint8))
        changed = int((result != labels).sum())
        # The model version travels with the labels, so a map can tell a stale post-processing.
        version = prediction.record.extra.get("model_version") or prediction.record.extra.get("model_attempt")
        return writer.commit(extra={"changed_pixels": changed, "model_version": version})
