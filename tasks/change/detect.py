"""Change detection over arrays: which pixels changed class between two years, as scored patches.

Plain functions over numpy arrays, no store and no Prefect (tasks/change/tile.py feeds them a
tile, flows/change.py runs that per tile). The steps, in order:

1. a pixel is *changed* where both years have a label and the labels differ;
2. it is *kept* only where both years' confidence reaches the threshold;
3. morphological opening of the kept mask removes slivers (mixed pixels along class borders
   flip class from year to year without any real change);
4. connected patches of one transition (same from-class and to-class) smaller than the minimum
   area are dropped; the patches are measured on the whole buffered tile, so a change that
   crosses into the neighbouring tile is judged by its full size;
5. only the tile's core is kept (the buffer belongs to the neighbours), and each remaining patch
   becomes a polygon with its classes, area, mean confidences and an optional score.

Every pixel gets a status code (`STATUS`), so the report and operators can see why a changed
pixel is not in a polygon.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.measure import label as label_regions

# Status of each pixel in the change stage's `status` array.
STATUS = {
    "no_data": 0,  # a year without a label
    "unchanged": 1,
    "change": 2,  # in a change polygon
    "low_confidence": 3,  # the label changed, but a year's confidence is below the threshold
    "removed": 4,  # the label changed confidently, but cleaning or the minimum area removed it
}


@dataclass(frozen=True)
class ChangeParameters:
    min_confidence: int = 60
    min_pixels: int = 1
    opening_radius_px: int = 1
    connectivity: int = 8


@dataclass
class TileChanges:
    """One tile's changes: per-pixel status and polygon index, and one row per polygon."""

    status: np.ndarray  # (y, x) uint8, codes of STATUS
    polygon: np.ndarray  # (y, x) int32, 1..n = row n-1 of the table, 0 = not in a polygon
    class_from: np.ndarray  # (n,) uint8
    class_to: np.ndarray  # (n,) uint8
    pixels: np.ndarray  # (n,) int64, pixels inside the core
    confidence_from: np.ndarray  # (n,) float32, mean %
    confidence_to: np.ndarray  # (n,) float32, mean %
    patch_pixels: np.ndarray  # (n,) int64, size of the whole patch (also outside the core)

    @property
    def count(self) -> int:
        return len(self.class_from)


def disk(radius: int) -> np.ndarray:
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    return (yy**2 + xx**2) <= radius**2


def detect_changes(
    labels_from: np.ndarray,
    labels_to: np.ndarray,
    confidence_from: np.ndarray,
    confidence_to: np.ndarray,
    params: ChangeParameters,
    core: tuple[slice, slice] | None = None,
) -> TileChanges:
    """Changes between two label maps of the same grid (0 = no data), restricted to `core`."""
    if not labels_from.shape == labels_to.shape == confidence_from.shape == confidence_to.shape:
        raise ValueError(
            f"change detection needs arrays of one shape; got labels {labels_from.shape} and {labels_to.shape}, "
            f"confidence {confidence_from.shape} and {confidence_to.shape}"
        )
    valid = (labels_from > 0) & (labels_to > 0)
    changed = valid & (labels_from != labels_to)
    confident = (confidence_from >= params.min_confidence) & (confidence_to >= params.min_confidence)
    candidate = changed & confident

    kept = candidate
    if params.opening_radius_px > 0 and kept.any():
        kept = ndimage.binary_opening(kept, structure=disk(params.opening_radius_px))

    # One code per transition, so that touching patches of different transitions stay apart.
    transition = np.where(kept, labels_from.astype(np.int32) * 256 + labels_to.astype(np.int32), 0)
    patches = label_regions(transition, background=0, connectivity=1 if params.connectivity == 4 else 2)
    sizes = np.bincount(patches.ravel())
    big_enough = sizes >= max(1, params.min_pixels)
    big_enough[0] = False
    kept = big_enough[patches]

    status = np.where(valid, STATUS["unchanged"], STATUS["no_data"]).astype(np.uint8)
    status[changed & ~confident] = STATUS["low_confidence"]
    status[candidate & ~kept] = STATUS["removed"]
    status[kept] = STATUS["change"]

    inside = np.zeros(status.shape, dtype=bool)
    inside[core if core is not None else (slice(None), slice(None))] = True
    patches = np.where(kept & inside, patches, 0)
    ids, polygon = np.unique(patches, return_inverse=True)
    polygon = polygon.reshape(patches.shape).astype(np.int32)
    if ids[0] != 0:  # every pixel is in a patch: no 0 to drop
        polygon += 1
    n = int(polygon.max())
    flat = polygon.ravel()
    pixels = np.bincount(flat, minlength=n + 1)[1:]
    safe = np.maximum(pixels, 1)

    def mean(values: np.ndarray) -> np.ndarray:
        return (np.bincount(flat, weights=values.ravel().astype(np.float64), minlength=n + 1)[1:] / safe).astype(
            np.float32
        )

    # Any pixel of a patch gives its classes (a patch is one transition).
    first = np.full(n + 1, -1, dtype=np.int64)
    order = np.flatnonzero(flat)
    first[flat[order[::-1]]] = order[::-1]
    first = first[1:]
    whole_patch = ids[1:] if ids[0] == 0 else ids
    return TileChanges(
        status=status,
        polygon=polygon,
        class_from=labels_from.ravel()[first].astype(np.uint8),
        class_to=labels_to.ravel()[first].astype(np.uint8),
        pixels=pixels.astype(np.int64),
        confidence_from=mean(confidence_from),
        confidence_to=mean(confidence_to),
        patch_pixels=sizes[whole_patch].astype(np.int64),
    )


def series_difference(series_from: np.ndarray, series_to: np.ndarray) -> np.ndarray:
    """Per pixel, the RMS difference of two years' feature series (t, y, x); NaN where never both observed.

    The series line up by position (the features stage puts every year on the same day offsets).
    Without the same number of dates, the yearly means are compared instead.
    """
    if series_from.shape != series_to.shape:
        with np.errstate(invalid="ignore"):
            mean_from = np.nanmean(series_from, axis=0) if len(series_from) else np.nan
            mean_to = np.nanmean(series_to, axis=0) if len(series_to) else np.nan
        return np.abs(np.asarray(mean_to - mean_from, dtype=np.float32))
    squared = (series_to.astype(np.float32) - series_from.astype(np.float32)) ** 2
    observed = np.isfinite(squared).sum(axis=0)
    total = np.nansum(squared, axis=0)
    return np.where(observed > 0, np.sqrt(total / np.maximum(observed, 1)), np.nan).astype(np.float32)


def change_scores(difference: np.ndarray, changes: TileChanges) -> np.ndarray:
    """A robust z-score per polygon: how far its mean series difference lies above unchanged pixels'.

    Unchanged pixels show how much the feature varies from year to year without a change (weather,
    phenology); a real change should differ far more. Score = (polygon mean − median of unchanged)
    / (1.4826 × MAD of unchanged). NaN where the polygon has no observed difference.
    """
    if changes.count == 0:
        return np.zeros(0, dtype=np.float32)
    unchanged = difference[(changes.status == STATUS["unchanged"]) & np.isfinite(difference)]
    if unchanged.size < 10:
        centre, spread = 0.0, 1.0
    else:
        centre = float(np.median(unchanged))
        spread = max(1.4826 * float(np.median(np.abs(unchanged - centre))), 1e-6)
    flat = changes.polygon.ravel()
    observed = np.isfinite(difference).ravel()
    weights = np.where(observed, difference.ravel(), 0.0)
    n = changes.count
    totals = np.bincount(flat, weights=weights, minlength=n + 1)[1:]
    counts = np.bincount(flat, weights=observed.astype(np.float64), minlength=n + 1)[1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        means = totals / counts
    return ((means - centre) / spread).astype(np.float32)


def change_id(tile_id: str, year_from: int, year_to: int, pixel_indices: np.ndarray) -> str:
    """A stable id: the same tile, years and pixels give the same id on every rerun."""
    digest = hashlib.sha1(f"{tile_id}:{year_from}:{year_to}:".encode())
    digest.update(np.ascontiguousarray(np.sort(pixel_indices), dtype=np.int64).tobytes())
    return digest.hexdigest()[:16]


def polygon_ids(tile_id: str, year_from: int, year_to: int, polygon: np.ndarray) -> list[str]:
    """The stable id of each polygon of a tile's `polygon` array (index 1..n)."""
    flat = polygon.ravel()
    order = np.argsort(flat, kind="stable")
    counts = np.bincount(flat, minlength=int(flat.max(initial=0)) + 1)
    bounds = np.cumsum(counts)
    return [change_id(tile_id, year_from, year_to, order[bounds[i - 1] : bounds[i]]) for i in range(1, len(counts))]
