"""Features stage, spatial context: neighbourhood means and standard deviations of each feature.

Plain numpy/scipy, no I/O. A pixel on a class border, or a pixel of a thin class (hedges, roads,
shrub strips), looks like a mixture of its neighbours; the mean and spread of its neighbourhood
at a few scales, date by date, tell the classifier where it sits.

`spatial_context` works on a (t, y, x, f) stack and returns (t, y, x, f × len(sizes) × len(stats)),
named ``{feature}_{stat}{size}`` (e.g. ``NDVI_mean3``, ``NDVI_std5``), so the features stay
date × feature like the rest of the stage's output. Missing values (NaN) are left out of each
window; a window without any valid value gives NaN. Outside the array, windows are cut
(the stage reads each block with a halo of `halo_px(sizes)` pixels, so only the tile's own
edge is cut, and tiles carry a buffer for that).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

CONTEXT_STATS = ("mean", "std")


def context_names(names: Sequence[str], sizes: Sequence[int], stats: Sequence[str] = CONTEXT_STATS) -> list[str]:
    """Names of `spatial_context`'s output features, in its order (feature, then size, then stat)."""
    return [f"{n}_{stat}{size}" for n in names for size in sizes for stat in stats]


def halo_px(sizes: Sequence[int]) -> int:
    """Pixels a block must be read beyond its edges so that every window of `sizes` is whole."""
    return max((int(s) // 2 for s in sizes), default=0)


def check_sizes(sizes: Sequence[int]) -> list[int]:
    sizes = [int(s) for s in sizes]
    bad = [s for s in sizes if s < 3 or s % 2 == 0]
    if bad:
        raise ValueError(f"context window sizes must be odd and at least 3, got {bad}")
    if len(set(sizes)) != len(sizes):
        raise ValueError(f"context window sizes must not repeat: {sizes}")
    return sizes


def _window_sum(a: np.ndarray, size: int) -> np.ndarray:
    """Sum over a size × size window of every (y, x) plane of a (t, y, x) array; zero outside.

    In float64: the variance is E[x²] - E[x]², which cancels badly in float32 on flat windows.
    """
    return ndimage.uniform_filter(a, size=(1, size, size), mode="constant", cval=0.0) * float(size * size)


def spatial_context(values: np.ndarray, sizes: Sequence[int], stats: Sequence[str] = CONTEXT_STATS) -> np.ndarray:
    """Neighbourhood statistics of a (t, y, x, f) float stack: (t, y, x, f × len(sizes) × len(stats)), float32."""
    if values.ndim != 4:
        raise ValueError(f"spatial_context expects a (time, y, x, feature) stack, got shape {values.shape}")
    sizes = check_sizes(sizes)
    unknown = sorted(set(stats) - set(CONTEXT_STATS))
    if unknown:
        raise ValueError(f"unknown context statistics {unknown}; choose from {CONTEXT_STATS}")
    t, h, w, f = values.shape
    out = np.empty((t, h, w, f * len(sizes) * len(stats)), dtype=np.float32)
    k = 0
    for j in range(f):
        v = values[..., j].astype(np.float64)
        valid = np.isfinite(v)
        v0 = np.where(valid, v, 0.0)
        for size in sizes:
            count = _window_sum(valid.astype(np.float64), size)
            with np.errstate(invalid="ignore", divide="ignore"):
                mean = _window_sum(v0, size) / count
                if "std" in stats:
                    square = _window_sum(v0 * v0, size) / count
                    std = np.sqrt(np.maximum(square - mean * mean, 0))
            none = count < 0.5
            mean[none] = np.nan
            for stat in stats:
                if stat == "mean":
                    out[..., k] = mean
                else:
                    std[none] = np.nan
                    out[..., k] = std
                k += 1
    return out
