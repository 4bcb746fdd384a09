"""s2cloudless cloud probabilities and masks for the download stage.

Method. s2cloudless is a per-pixel LightGBM model on ten L1C bands (TOA reflectance); its
mask is the probability averaged over a disk (`average_over`), thresholded (`threshold`)
and dilated with a disk (`dilation_size`), as eo-learn's CloudMaskTask does at 10 m. With
analysis_resolution_m equal to the data resolution this module does exactly that.

The model costs ~15-20 µs per pixel and date, which would dominate the stage at 10 m. By
default it runs at a coarse analysis resolution (160 m, as Sentinel Hub's cloud products):

1. the bands are averaged over whole factor × factor cells (factor = analysis / data
   resolution) of in-swath pixels; a cell without any in-swath pixel is no data;
2. the model runs once on the cells of all dates (256× fewer pixels at 160 m);
3. cell probabilities are upsampled bilinearly to the data grid from cells with data only
   (normalised weights), so probabilities and mask edges are smooth, not blocky;
4. the disks, given in 10 m pixels, are scaled to the analysis resolution (rounded half up).
   If they vanish there (default: 4 and 2 px -> 0 at 160 m) the upsampled field is simply
   thresholded; if not (e.g. 40 m) averaging, threshold and dilation run at the data
   resolution on the upsampled field.

Why (agreement with the full-resolution mask on a synthetic 1000 × 1000 px tile, 6 partly
cloudy dates): at 160 m, thresholding the smooth field gives 98.6 %; adding the 10 m
averaging/dilation over-masks (98.3 %), a blocky coarse mask is worse (98.0 %). At 40 m the
disks are 1 px: coarse post-processing doubles the 20 m dilation (99.0 %) while 10 m
post-processing of the upsampled field gives 99.7 %. At 80 m both give 99.2 %.

Blocks. A caller may process a big tile in blocks: with `halo_px` of context on every side
(clipped at the tile edges), results on block + halo, cropped, equal the whole-tile result
exactly. Alignment rule: coarse cells start at the first pixel of the array passed in, so
block origins must be multiples of the factor in tile pixels (16 at 160 m; 256-px blocks
are). The halo is a multiple of the factor, so block origin - halo stays on the cell grid;
block sizes and the far edge are free (the halo has a spare cell for a partial last cell).

Memory: float32 only, one date at a time (the coarse model call batches all dates, which
is small); the only whole-tile arrays are the uint8 probabilities and bool mask returned.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import cv2
import numpy as np

from lcms.config import CloudMaskConfig
from lcms.sentinel2 import REFLECTANCE_SCALE

F32 = np.float32

# The ten bands of the s2cloudless model, in its feature order (s2cloudless.utils.MODEL_BANDS;
# not imported because that module pulls in sentinelhub).
MODEL_BANDS: tuple[str, ...] = ("B01", "B02", "B04", "B05", "B08", "B8A", "B09", "B10", "B11", "B12")

NO_DATA_PROB = 255
# Rows per LightGBM call: bounds its float64 output and per-call copies to a few MiB.
_PREDICT_CHUNK = 1 << 18
# A date whose probabilities are all below threshold - margin cannot produce cloud (averages
# are convex combinations); the margin covers float32 rounding so that blocks and whole tiles
# take the same decision in effect.
_SKIP_MARGIN = 1e-4


@functools.cache
def _booster():
    """The s2cloudless LightGBM booster, loaded once per process (the model ships with the package)."""
    from s2cloudless import S2PixelCloudDetector

    return S2PixelCloudDetector(all_bands=False).classifier.classifier


@functools.cache
def _disk(radius: int) -> np.ndarray:
    """s2cloudless's disk structuring element (s2cloudless.utils.cv2_disk), uint8."""
    return cv2.circle(np.zeros((2 * radius + 1, 2 * radius + 1), np.uint8), (radius, radius), radius, 1, thickness=-1)


@functools.cache
def _avg_kernel(radius: int) -> np.ndarray:
    disk = _disk(radius)
    return disk / np.sum(disk)  # float64, exactly as s2cloudless builds it


def _scaled_px(px_at_10m: int, resolution_m: float) -> int:
    """A size given in 10 m pixels (as eo-learn's defaults) in pixels of `resolution_m`."""
    # Half up (Python's round() would send 0.5 to 0).
    return int(math.floor(px_at_10m * 10.0 / resolution_m + 0.5))


def _factor(cfg: CloudMaskConfig, resolution_m: float) -> int:
    """Integer ratio of analysis to data resolution (1 = full resolution)."""
    ratio = cfg.analysis_resolution_m / resolution_m
    factor = int(round(ratio))
    if factor < 1 or abs(ratio - factor) > 1e-6:
        raise ValueError(
            f"analysis_resolution_m ({cfg.analysis_resolution_m}) must be a whole multiple of the data "
            f"resolution ({resolution_m} m)"
        )
    return factor


def _band_indices(band_names: Sequence[str]) -> list[int]:
    names = list(band_names)
    missing = [b for b in MODEL_BANDS if b not in names]
    if missing:
        raise ValueError(
            f"cloud masking needs bands {missing}, which are missing from {names}: s2cloudless needs the "
            f"Sentinel-2 L1C bands {list(MODEL_BANDS)} (L2A products have no B10)"
        )
    return [names.index(b) for b in MODEL_BANDS]


def _predict(x: np.ndarray) -> np.ndarray:
    """Cloud probability (float32) of an (n, 10) float32 reflectance array, in chunks."""
    out = np.empty(len(x), F32)
    booster = _booster()
    for i in range(0, len(x), _PREDICT_CHUNK):
        out[i : i + _PREDICT_CHUNK] = booster.predict(x[i : i + _PREDICT_CHUNK])
    return out


def _to_reflectance(dn: np.ndarray) -> np.ndarray:
    # Divide (not multiply by 1e-4) so DN/10000 rounds as reflectance stored as float32 does.
    return dn.astype(F32) / F32(REFLECTANCE_SCALE)


def _cell_sums(a: np.ndarray, factor: int, acc: type) -> np.ndarray:
    """Sums over factor × factor cells from pixel (0, 0) of a (h, w, ...) array; partial cells at
    the far edges sum what they have. Reshape-sums are ~10× faster than np.add.reduceat."""

    def along_first(x: np.ndarray) -> np.ndarray:
        n = x.shape[0] // factor * factor
        out = x[:n].reshape(n // factor, factor, *x.shape[1:]).sum(axis=1, dtype=acc)
        if n < x.shape[0]:
            out = np.concatenate([out, x[n:].sum(axis=0, dtype=acc)[None]])
        return out

    return np.moveaxis(along_first(np.moveaxis(along_first(a), 1, 0)), 0, 1)


def _coarse_probabilities(
    bands: np.ndarray, idx: list[int], data_mask: np.ndarray, factor: int
) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities of whole factor × factor cells, anchored at pixel (0, 0) of the array.

    Returns float32 (t, hc, wc) probabilities (0 where no data) and bool (t, hc, wc) cell
    validity. Partial cells at the far edges average the pixels they have.
    """
    n_t, h, w = data_mask.shape
    # Sums of up to factor² DN values of 65535 fit uint32 up to factor 256.
    acc = np.uint32 if factor <= 256 else np.uint64
    valid = np.zeros((n_t, -(-h // factor), -(-w // factor)), bool)
    feats = []
    for t in range(n_t):
        m = data_mask[t]
        if not m.any():
            continue
        b = bands[t]
        if not m.all():
            b = b.copy()
            b[~m] = 0
        sums = _cell_sums(b, factor, acc)[..., idx]  # (hc, wc, 10): all 13 bands summed, cheaper than a gather
        counts = _cell_sums(m, factor, acc)
        valid[t] = counts > 0
        feats.append(_to_reflectance(sums[valid[t]]) / counts[valid[t]][:, None].astype(F32))
    prob = np.zeros(valid.shape, F32)
    if feats:
        # One model call for all dates: the coarse grid is small and LightGBM is faster on big batches.
        prob[valid] = _predict(np.concatenate(feats))
    return prob, valid


@functools.cache
def _interp_weights(n: int, factor: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear weights from cell centres to the n pixel centres of one axis (edges clamped)."""
    n_cells = -(-n // factor)
    u = (np.arange(n) + 0.5) / factor - 0.5
    i0 = np.floor(u).astype(np.intp)
    w1 = (u - i0).astype(F32)
    low, high = i0 < 0, i0 >= n_cells - 1
    i0[low], w1[low] = 0, 0
    i0[high], w1[high] = n_cells - 1, 0
    i1 = np.minimum(i0 + 1, n_cells - 1)
    return i0, i1, w1


def _upsample(cells: np.ndarray, shape: tuple[int, int], factor: int) -> np.ndarray:
    """Bilinear upsampling of a float32 (hc, wc) cell array to the (h, w) pixel grid."""
    y0, y1, wy = _interp_weights(shape[0], factor)
    x0, x1, wx = _interp_weights(shape[1], factor)
    wy = wy[:, None]
    rows = cells[y0] * (F32(1) - wy) + cells[y1] * wy  # (h, wc)
    return rows[:, x0] * (F32(1) - wx) + rows[:, x1] * wx


def _upsample_prob(prob: np.ndarray, valid: np.ndarray, shape: tuple[int, int], factor: int) -> np.ndarray:
    """Upsample cell probabilities using only cells with data (normalised bilinear weights).

    A pixel's own cell has weight >= 1/4, so every in-swath pixel gets a value.
    """
    if valid.all():
        return _upsample(prob, shape, factor)
    num = _upsample(prob, shape, factor)  # prob is 0 on cells without data
    den = _upsample(valid.astype(F32), shape, factor)
    np.divide(num, den, out=num, where=den > 0)
    return num


def _average(prob: np.ndarray, valid: np.ndarray, radius: int) -> np.ndarray:
    """s2cloudless's disk average, over pixels with data only (normalised convolution), so swath
    edges neither dilute nor invent clouds; with full data it is exactly s2cloudless's filter."""
    if valid.all():
        return cv2.filter2D(prob, -1, _avg_kernel(radius), borderType=cv2.BORDER_REFLECT)
    avg = cv2.filter2D(np.where(valid, prob, F32(0)), -1, _avg_kernel(radius), borderType=cv2.BORDER_REFLECT)
    den = cv2.filter2D(valid.astype(F32), -1, _avg_kernel(radius), borderType=cv2.BORDER_REFLECT)
    np.divide(avg, den, out=avg, where=valid)
    return avg


def _clear(prob: np.ndarray, valid: np.ndarray, cfg: CloudMaskConfig) -> bool:
    """True if no pixel can reach the threshold: averages and bilinear values are convex
    combinations, so they stay below the maximum (the margin covers float32 rounding)."""
    return not valid.any() or float(prob[valid].max()) < cfg.threshold - _SKIP_MARGIN


def _binary_mask(prob: np.ndarray, m: np.ndarray, cfg: CloudMaskConfig, resolution_m: float) -> np.ndarray:
    """s2cloudless's get_mask_from_prob on one (h, w) date, restricted to in-swath pixels `m`."""
    if _clear(prob, m, cfg):
        return np.zeros(m.shape, bool)
    radius, dilation = _scaled_px(cfg.average_over, resolution_m), _scaled_px(cfg.dilation_size, resolution_m)
    cloud = ((_average(prob, m, radius) if radius > 0 else prob) > cfg.threshold).view(np.uint8)
    if dilation > 0:
        cloud = cv2.dilate(cloud, _disk(dilation))
    return cloud.view(bool) & m


def _disks_resolved(cfg: CloudMaskConfig) -> bool:
    """Whether the averaging/dilation disks survive scaling to the analysis resolution.

    If they do (e.g. 40 m), they are applied at the data resolution after upsampling; if they
    round to 0 px (the default 160 m), the smooth upsampled field is thresholded as is:
    applying 10 m disks to it over-masks (measured agreements in the module docstring).
    """
    res = cfg.analysis_resolution_m
    return _scaled_px(cfg.average_over, res) + _scaled_px(cfg.dilation_size, res) > 0


def _percent(prob: np.ndarray, m: np.ndarray) -> np.ndarray:
    out = np.full(m.shape, NO_DATA_PROB, np.uint8)
    np.copyto(out, np.rint(prob * F32(100)), casting="unsafe", where=m)
    return out


def cloud_masks(
    bands: np.ndarray,
    band_names: Sequence[str],
    data_mask: np.ndarray,
    resolution_m: float,
    cfg: CloudMaskConfig,
) -> tuple[np.ndarray, np.ndarray]:
    """Cloud probability and mask of every date.

    bands: uint16 (t, y, x, b) DN (reflectance * 10000), with at least the ten s2cloudless
    L1C bands among `band_names`; data_mask: bool (t, y, x), True inside the swath.
    Returns cloud_prob uint8 (t, y, x) in percent 0..100 (255 where no data) and cloud_mask
    bool (t, y, x) (False where no data). In coarse mode the array's first pixel must lie on
    the tile's grid of analysis cells (see the module docstring).
    """
    idx = _band_indices(band_names)
    if bands.ndim != 4 or bands.shape[:3] != data_mask.shape or bands.shape[3] != len(band_names):
        raise ValueError(
            f"bands {bands.shape} must be (t, y, x, {len(band_names)}) and data_mask {data_mask.shape} (t, y, x)"
        )
    factor = _factor(cfg, resolution_m)
    data_mask = data_mask.astype(bool, copy=False)
    n_t, h, w = data_mask.shape
    probs = np.full((n_t, h, w), NO_DATA_PROB, np.uint8)
    masks = np.zeros((n_t, h, w), bool)
    if n_t == 0 or h == 0 or w == 0:
        return probs, masks

    if factor > 1:
        cell_prob, cell_valid = _coarse_probabilities(bands, idx, data_mask, factor)
        disks = _disks_resolved(cfg)
    for t in range(n_t):
        m = data_mask[t]
        if not m.any():
            continue
        if factor == 1:
            prob = np.zeros((h, w), F32)
            prob[m] = _predict(_to_reflectance(bands[t][m][:, idx]))
            probs[t] = _percent(prob, m)
            masks[t] = _binary_mask(prob, m, cfg, resolution_m)
            continue
        prob, valid = cell_prob[t], cell_valid[t]
        fine = _upsample_prob(prob, valid, (h, w), factor)
        probs[t] = _percent(fine, m)
        if _clear(prob, valid, cfg):
            continue
        if disks:
            masks[t] = _binary_mask(fine, m, cfg, resolution_m)
        else:
            np.logical_and(fine > cfg.threshold, m, out=masks[t])
    return probs, masks


def halo_px(cfg: CloudMaskConfig, resolution_m: float) -> int:
    """Context pixels (at `resolution_m`) to add on every side of a block (clipped at the tile
    edges) so that cloud_masks on block + halo, cropped, equals the whole-tile result.

    Full resolution: the averaging radius plus the dilation radius. Coarse: that reach in
    whole cells, plus one cell for the bilinear neighbour and one spare for a partial cell at
    the array's far edge; a multiple of the factor, so cells stay aligned to the tile grid.
    """
    factor = _factor(cfg, resolution_m)
    reach = _scaled_px(cfg.average_over, resolution_m) + _scaled_px(cfg.dilation_size, resolution_m)
    if factor == 1:
        return reach
    if not _disks_resolved(cfg):
        reach = 0
    return (math.ceil(reach / factor) + 2) * factor


def valid_mask(data_mask: np.ndarray, cloud_mask: np.ndarray) -> np.ndarray:
    """bool: in-swath and not cloudy."""
    return np.logical_and(data_mask, ~np.asarray(cloud_mask, bool))


def valid_coverage(valid: np.ndarray) -> np.ndarray:
    """float32 (t,): fraction of the tile's pixels that are valid in each frame."""
    valid = np.asarray(valid, bool)
    n = valid.shape[1] * valid.shape[2]
    if n == 0:
        return np.zeros(valid.shape[0], F32)
    return (np.count_nonzero(valid, axis=(1, 2)) / n).astype(F32)
