"""Labelling units: groups of pixels an operator labels with one class, and their scores.

Units are an int32 (y, x) array of unit ids (0..n-1; -1 = in no unit):

* `block_units`: square blocks of `size` × `size` pixels, row by row (the default: cheap, the same
  for every model, and the same shape an operator sees);
* `slic_units`: SLIC superpixels of scikit-image on the features, about `size`² pixels each, which
  follow the land-cover edges so that a unit is more often one class.

`unit_table` aggregates a per-pixel uncertainty and the predicted labels to the units: the unit's
score is the mean uncertainty of its pixels with a prediction, its class the majority predicted
class, its position the centroid of its pixels (pixel coordinates).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from affine import Affine
from rasterio import features as rio_features
from shapely.geometry import shape
from shapely.ops import unary_union

UNIT_KINDS: tuple[str, ...] = ("block", "slic")


@dataclass(frozen=True)
class UnitTable:
    """Per unit, in order of id: the columns the picks need."""

    unit: np.ndarray  # int32 unit ids
    score: np.ndarray  # float32 mean uncertainty of the unit's predicted pixels (NaN: none)
    label: np.ndarray  # uint8 majority predicted class (0: no prediction in the unit)
    row: np.ndarray  # float64 centroid row of the unit's pixels
    col: np.ndarray  # float64 centroid column
    n_pixels: np.ndarray  # int64 pixels in the unit


def block_units(shape_yx: tuple[int, int], size: int) -> np.ndarray:
    """int32 (y, x) unit ids of square blocks of `size` px, numbered row by row (edge blocks are smaller)."""
    if size < 1:
        raise ValueError(f"unit size must be at least 1 px, got {size}")
    h, w = shape_yx
    n_cols = -(-w // size)
    rows = (np.arange(h) // size)[:, None]
    cols = (np.arange(w) // size)[None, :]
    return (rows * n_cols + cols).astype(np.int32)


def slic_units(image: np.ndarray, size: int, compactness: float = 0.1, seed: int = 0) -> np.ndarray:
    """int32 (y, x) unit ids of SLIC superpixels of `image` (y, x, f), about `size`² px each.

    The features are standardised per channel first (SLIC's distance mixes them with the position);
    NaN becomes the channel mean.
    """
    try:
        from skimage.segmentation import slic
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise RuntimeError("SLIC units need scikit-image: pip install scikit-image, or use block units") from exc
    if image.ndim != 3:
        raise ValueError(f"SLIC needs an image (y, x, features), got shape {image.shape}")
    img = image.astype(np.float32)
    mean = np.nanmean(img, axis=(0, 1))
    sd = np.nanstd(img, axis=(0, 1))
    img = np.where(np.isnan(img), mean, img)
    img = (img - mean) / np.where(sd > 0, sd, 1)
    h, w = img.shape[:2]
    n_segments = max(1, round(h * w / (size * size)))
    labels = slic(
        img, n_segments=n_segments, compactness=compactness, channel_axis=-1, start_label=0, convert2lab=False
    )  # features, not colours: no Lab conversion
    _, ids = np.unique(labels, return_inverse=True)  # consecutive 0..n-1
    return ids.reshape(h, w).astype(np.int32)


def make_units(kind: str, shape_yx: tuple[int, int], size: int, image: np.ndarray | None = None) -> np.ndarray:
    """Units of `kind` ("block" or "slic"; SLIC needs the feature image)."""
    if kind == "block":
        return block_units(shape_yx, size)
    if kind == "slic":
        if image is None:
            raise ValueError("SLIC units need the feature image")
        return slic_units(image, size)
    raise ValueError(f"unit kind must be one of {list(UNIT_KINDS)}, got {kind!r}")


def unit_table(units: np.ndarray, uncertainty: np.ndarray, labels: np.ndarray) -> UnitTable:
    """Mean uncertainty, majority predicted class and centroid of every unit id 0..max.

    Pixels with NaN uncertainty or label 0 (no prediction) count for the centroid and size but not
    for the score and class.
    """
    if units.shape != uncertainty.shape or units.shape != labels.shape:
        raise ValueError(f"units {units.shape}, uncertainty {uncertainty.shape} and labels {labels.shape} differ")
    inside = units >= 0
    ids = units[inside].astype(np.int64)
    n = int(ids.max()) + 1 if ids.size else 0
    rows, cols = np.nonzero(inside)
    n_pixels = np.bincount(ids, minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        row = np.bincount(ids, weights=rows, minlength=n) / n_pixels
        col = np.bincount(ids, weights=cols, minlength=n) / n_pixels
    u = uncertainty[inside]
    lab = labels[inside]
    predicted = ~np.isnan(u) & (lab > 0)
    n_pred = np.bincount(ids[predicted], minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        score = np.bincount(ids[predicted], weights=u[predicted], minlength=n) / n_pred
    votes = np.zeros((n, 256), np.int64)
    np.add.at(votes, (ids[predicted], lab[predicted].astype(np.int64)), 1)
    majority = np.where(n_pred > 0, votes.argmax(axis=1), 0).astype(np.uint8)
    return UnitTable(np.arange(n, dtype=np.int32), score.astype(np.float32), majority, row, col, n_pixels)


def unit_polygons(units: np.ndarray, transform: Affine, wanted: np.ndarray | None = None) -> dict[int, object]:
    """Shapely polygons (in the grid's CRS) of the unit ids in `wanted` (default: all), from their pixels."""
    mask = units >= 0 if wanted is None else np.isin(units, wanted)
    parts: dict[int, list] = {}
    for geom, value in rio_features.shapes(units.astype(np.int32), mask=mask, transform=transform):
        parts.setdefault(int(value), []).append(shape(geom))
    return {uid: unary_union(geoms) for uid, geoms in parts.items()}
