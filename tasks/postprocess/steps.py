"""Post-processing of predicted label maps: majority filter, sieve, superpixel majority, erosion.

Label maps are 2-D (y, x) arrays of legend class codes. Any integer dtype with values in 0..255 is
accepted and every function returns a new uint8 array; the input is never modified. ``nodata``
(default 0, `lcms.legend.NO_DATA`) marks pixels without a class. All steps are vectorised
(loops run over classes or over merge rounds, never over pixels).

Steps and their rules
---------------------

`majority_filter` (modal filter)
    Each valid pixel takes the most frequent class of the ``size`` × ``size`` window around it.
    *No data* pixels neither vote nor change: they stay no data, and a valid pixel never becomes
    no data. *Ties*: when the centre pixel's class is one of the most frequent classes, it is
    kept; otherwise the lowest code among the tied classes wins. *Array edge*: windows are
    clipped, only pixels inside the array vote (so a corner pixel of a 3 × 3 filter has 4 voters).
    Counts are exact integers (unnormalised box sums of one-hot masks).

`sieve` (minimum mapping unit)
    A patch is a connected set of pixels of one class (4- or 8-connected, ``connectivity``).
    Every patch smaller than ``min_pixels`` joins its *largest* neighbouring patch (the rule of
    GDAL's / rasterio's sieve), where "largest" means most pixels, ties broken by the lowest class
    code, then by the patch met first in raster order. Neighbours are taken with the same
    connectivity as patches. All small patches are merged at once in a round: a small patch and
    the patch it joins (and whatever joins them) form a group, and the group takes the class of
    its largest member by the same order. A group never holds two patches of ``min_pixels`` or
    more (those do not move), so large patches keep their class and shape except for growing.
    Rounds repeat until every patch is ≥ ``min_pixels`` or has no valid neighbour. Unlike GDAL's
    single pass, small patches whose neighbours are all small (salt-and-pepper noise) are
    therefore merged too. *No data*: never a neighbour, never grows, never absorbs a class, and
    stays no data. A small patch with no valid neighbour (surrounded by no data and/or the array
    edge, or the only patch of the map) is **kept as it is**, not turned into no data.

`superpixel_majority`
    ``image`` (y, x, c) is segmented into superpixels and every valid pixel takes the majority
    class of its segment. Before segmenting, non-finite values (NaN, ±inf) are replaced by their
    channel's mean over finite values (0 for a channel without any) and each channel is
    standardised to zero mean and unit standard deviation, so that bands with different ranges
    weigh alike. Methods: ``"slic"`` (`skimage.segmentation.slic`, no Lab conversion, connected
    segments; default ``n_segments`` = pixels / 100, i.e. ~10 × 10 px = 1 ha segments at 10 m,
    ``compactness`` 0.1 suited to standardised bands, ``sigma`` 0.5) or ``"felzenszwalb"``
    (`skimage.segmentation.felzenszwalb`; defaults ``scale`` 10, ``sigma`` 0.5, ``min_size`` 20 px).
    Both are deterministic; `segment_image` returns the segment ids alone. *No data* pixels do
    not vote and stay no data; a segment with only no data stays no data. *Ties*: the lowest code
    wins.

`erode`
    Negative buffer of ``radius_px`` pixels, through `tasks.reference.erode_labels`: a pixel keeps
    its class only if every pixel of its neighbourhood (3 × 3 square for radius 1, disk
    x² + y² ≤ r² above) has the same class, otherwise it becomes no data. *No data counts as a
    class*, so classes also shrink away from no-data areas, and a feature narrower than
    2·radius + 1 pixels vanishes. *Array edge*: pixels outside the array are ignored, so classes
    do not erode from the array edge (a uniform map stays unchanged).

`apply_steps`
    Runs a chain of the steps above, in the given order (order matters: e.g. eroding before a
    majority filter is not the same as after), each on the previous result.
"""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Mapping, Sequence

import cv2
import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from skimage.measure import label as label_regions
from skimage.segmentation import felzenszwalb, slic

from lcms.legend import NO_DATA
from tasks.reference.polygons import erode_labels

__all__ = ["STEPS", "apply_steps", "erode", "majority_filter", "segment_image", "sieve", "superpixel_majority"]

SLIC_PIXELS_PER_SEGMENT = 100  # ~10 x 10 px = 1 ha at 10 m
SLIC_COMPACTNESS = 0.1
SLIC_SIGMA = 0.5
FELZENSZWALB_SCALE = 10.0
FELZENSZWALB_SIGMA = 0.5
FELZENSZWALB_MIN_SIZE = 20

METHODS = ("slic", "felzenszwalb")

# Offsets (dy, dx) of the neighbours of a pixel, for 4- and 8-connectivity.
_OFFSETS = {
    4: ((-1, 0), (1, 0), (0, -1), (0, 1)),
    8: ((-1, 0), (1, 0), (0, -1), (0, 1), (-1, -1), (-1, 1), (1, -1), (1, 1)),
}


# --- argument checks -----------------------------------------------------------------------


def _check_labels(labels, name: str = "labels") -> np.ndarray:
    """`labels` as a uint8 (y, x) array (a copy is made only when the dtype changes)."""
    arr = np.asarray(labels)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (y, x) label array, got shape {arr.shape}")
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must have an integer dtype with values 0..255 (uint8 expected), got {arr.dtype}")
    if arr.size and (arr.min() < 0 or arr.max() > 255):
        raise ValueError(
            f"{name} values must lie in 0..255 (uint8 class codes), got {int(arr.min())}..{int(arr.max())}"
        )
    return arr.astype(np.uint8)


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_int(value, name: str, minimum: int, maximum: int | None = None) -> int:
    allowed = f">= {minimum}" if maximum is None else f"in {minimum}..{maximum}"
    if not _is_int(value) or value < minimum or (maximum is not None and value > maximum):
        raise ValueError(f"{name} must be an integer {allowed}, got {value!r}")
    return int(value)


def _check_number(value, name: str, *, positive: bool) -> float:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and np.isfinite(value)
    if not ok or (value <= 0 if positive else value < 0):
        raise ValueError(f"{name} must be a finite number {'> 0' if positive else '>= 0'}, got {value!r}")
    return float(value)


def _check_nodata(nodata) -> int:
    return _check_int(nodata, "nodata", 0, 255)


# --- majority filter -----------------------------------------------------------------------


def majority_filter(labels: np.ndarray, size: int = 3, nodata: int = NO_DATA) -> np.ndarray:
    """Modal filter over a `size` × `size` window (odd `size` >= 3); see the module docstring.

    No-data pixels do not vote and stay no data; the centre's class wins ties it is part of,
    otherwise the lowest tied code; windows are clipped at the array edge.
    """
    labels = _check_labels(labels)
    if not _is_int(size) or size < 3 or size % 2 == 0:
        raise ValueError(f"size must be an odd integer >= 3 (window size in pixels), got {size!r}")
    nodata = _check_nodata(nodata)
    out = labels.copy()
    codes = [c for c in np.flatnonzero(np.bincount(labels.ravel(), minlength=256)) if c != nodata]
    if len(codes) <= 1:
        return out

    best_count = np.zeros(labels.shape, dtype=np.int32)
    best_code = np.full(labels.shape, nodata, dtype=np.uint8)
    centre_count = np.zeros(labels.shape, dtype=np.int32)
    ksize = (int(size), int(size))
    for code in codes:  # ascending, so a later class needs strictly more votes: ties -> lowest code
        mask = labels == code
        count = cv2.boxFilter(
            mask.view(np.uint8), cv2.CV_32S, ksize, normalize=False, borderType=cv2.BORDER_CONSTANT
        )  # exact integer window sums; zero padding = pixels outside the array do not vote
        better = count > best_count
        best_count[better] = count[better]
        best_code[better] = code
        centre_count[mask] = count[mask]

    valid = labels != nodata
    change = valid & (centre_count < best_count)  # centre class among the most frequent -> kept
    out[change] = best_code[change]
    return out


# --- sieve ---------------------------------------------------------------------------------


def _neighbour_best(comp: np.ndarray, key: np.ndarray, connectivity: int) -> np.ndarray:
    """Per pixel, the highest `key` of a different, valid component among its neighbours (0 if none)."""
    height, width = comp.shape
    padded = np.pad(comp, 1)  # 0 = no data / outside the array
    pixel_key = key[comp]
    best = np.zeros(comp.shape, dtype=key.dtype)
    for dy, dx in _OFFSETS[connectivity]:
        other = padded[1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width]
        other_key = key[other]  # key[0] == 0, so no data never wins
        np.maximum(best, np.where(other != comp, other_key, 0), out=best)
    best[pixel_key == 0] = 0  # no-data pixels look for nothing
    return best


def sieve(labels: np.ndarray, min_pixels: int, connectivity: int = 8, nodata: int = NO_DATA) -> np.ndarray:
    """Minimum mapping unit: merge every patch smaller than `min_pixels` into its largest neighbour.

    Patches are `connectivity`-connected (4 or 8) sets of one class; see the module docstring for
    the merge order and ties. No data stays no data and never absorbs or grows into a class;
    small patches without any valid neighbour are kept unchanged.
    """
    labels = _check_labels(labels)
    min_pixels = _check_int(min_pixels, "min_pixels", 1)
    if connectivity not in (4, 8) or isinstance(connectivity, bool):
        raise ValueError(f"connectivity must be 4 or 8 (pixel neighbourhood of a patch), got {connectivity!r}")
    nodata = _check_nodata(nodata)
    out = labels.copy()
    if min_pixels <= 1 or out.size == 0:
        return out

    while True:
        # Components of equal value; no data is background (0), components are 1..n in raster order.
        comp = label_regions(out, background=nodata, connectivity=1 if connectivity == 4 else 2).astype(np.int64)
        n = int(comp.max())
        if n == 0:
            break
        sizes = np.bincount(comp.ravel(), minlength=n + 1)
        sizes[0] = 0
        small = sizes < min_pixels
        small[0] = False
        if not small.any():
            break
        classes = np.zeros(n + 1, dtype=np.uint8)
        classes[comp.ravel()] = out.ravel()

        # Rank the components: most pixels first, then lowest class code, then lowest id (raster
        # order). key = n + 1 - rank, so a higher key is a better target; key[0] = 0 for no data.
        ids = np.arange(1, n + 1)
        order = np.lexsort((ids, classes[1:], -sizes[1:]))
        key = np.zeros(n + 1, dtype=np.int64)
        key[ids[order]] = n - np.arange(n)
        by_key = np.zeros(n + 1, dtype=np.int64)
        by_key[key] = np.arange(n + 1)  # component id of each key

        # Best neighbouring component of every small component.
        pixel_best = _neighbour_best(comp, key, connectivity)
        sel = small[comp] & (pixel_best > 0)
        if not sel.any():
            break  # the remaining small patches have no valid neighbour: keep them
        best = np.zeros(n + 1, dtype=np.int64)
        np.maximum.at(best, comp[sel], pixel_best[sel])
        movers = np.flatnonzero(best)
        targets = by_key[best[movers]]

        # Groups: connected components of the "joins" graph; each takes its best member's class.
        graph = coo_matrix((np.ones(movers.size, dtype=np.int8), (movers, targets)), shape=(n + 1, n + 1))
        _, group = connected_components(graph, directed=False)
        group_key = np.zeros(group.max() + 1, dtype=np.int64)
        np.maximum.at(group_key, group, key)
        new_class = classes[by_key[group_key[group]]]
        new_class[0] = nodata
        out = new_class[comp]
    return out


# --- superpixels ---------------------------------------------------------------------------


def _prepare_image(image) -> np.ndarray:
    """float32 (y, x, c) image with non-finite values filled by channel means, channels standardised."""
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3:
        raise ValueError(f"image must be a (y, x, c) array (or (y, x) for one channel), got shape {arr.shape}")
    if arr.shape[2] == 0 or not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"image must be a real-valued (y, x, c) array with at least one channel, got {arr.dtype}")
    arr = arr.astype(np.float64)  # new array: the caller's image is never touched
    finite = np.isfinite(arr)
    count = finite.sum(axis=(0, 1))
    total = np.where(finite, arr, 0.0).sum(axis=(0, 1))
    mean = np.divide(total, count, out=np.zeros_like(total), where=count > 0)
    arr = np.where(finite, arr, mean)
    arr -= mean
    std = arr.std(axis=(0, 1))
    arr /= np.where(std > 0, std, 1.0)
    return arr.astype(np.float32)


def segment_image(
    image: np.ndarray,
    method: str = "slic",
    *,
    n_segments: int | None = None,
    compactness: float = SLIC_COMPACTNESS,
    scale: float = FELZENSZWALB_SCALE,
    sigma: float | None = None,
    min_size: int = FELZENSZWALB_MIN_SIZE,
) -> np.ndarray:
    """Superpixels of `image` (y, x, c) as an int (y, x) array of segment ids 0..n-1.

    The segmentation `superpixel_majority` uses: non-finite values -> channel mean, channels
    standardised, then SLIC or Felzenszwalb with the arguments and defaults described there.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    compactness = _check_number(compactness, "compactness", positive=True)
    scale = _check_number(scale, "scale", positive=True)
    sigma = _check_number(sigma, "sigma", positive=False) if sigma is not None else None
    min_size = _check_int(min_size, "min_size", 1)
    if n_segments is not None:
        n_segments = _check_int(n_segments, "n_segments", 1)
    features = _prepare_image(image)
    if features.shape[0] * features.shape[1] == 0:
        return np.zeros(features.shape[:2], dtype=np.int64)

    if method == "slic":
        if n_segments is None:
            n_segments = max(1, round(features.shape[0] * features.shape[1] / SLIC_PIXELS_PER_SEGMENT))
        return slic(
            features,
            n_segments=n_segments,
            compactness=compactness,
            sigma=SLIC_SIGMA if sigma is None else sigma,
            convert2lab=False,
            enforce_connectivity=True,
            start_label=0,
            channel_axis=-1,
        )
    with warnings.catch_warnings():
        # skimage warns for more than 3 channels; they are meant here (Euclidean distance over bands).
        warnings.filterwarnings("ignore", message="Got image with third dimension", category=RuntimeWarning)
        return felzenszwalb(
            features,
            scale=scale,
            sigma=FELZENSZWALB_SIGMA if sigma is None else sigma,
            min_size=min_size,
            channel_axis=-1,
        )


def superpixel_majority(
    labels: np.ndarray,
    image: np.ndarray,
    method: str = "slic",
    *,
    n_segments: int | None = None,
    compactness: float = SLIC_COMPACTNESS,
    scale: float = FELZENSZWALB_SCALE,
    sigma: float | None = None,
    min_size: int = FELZENSZWALB_MIN_SIZE,
    nodata: int = NO_DATA,
) -> np.ndarray:
    """Give every valid pixel the majority class of its superpixel of `image` (y, x, c).

    `method` "slic" uses `n_segments` (default: pixels / 100), `compactness` and `sigma` (default
    0.5); "felzenszwalb" uses `scale`, `sigma` (default 0.5) and `min_size`. No-data pixels do not
    vote and stay no data; ties go to the lowest code. The segments are those of `segment_image`.
    See the module docstring.
    """
    labels = _check_labels(labels)
    nodata = _check_nodata(nodata)
    arr = np.asarray(image)
    if arr.ndim not in (2, 3) or arr.shape[:2] != labels.shape:
        raise ValueError(
            f"image must be a (y, x, c) array with the labels' (y, x) shape {labels.shape}, got shape {arr.shape}"
        )
    segments = segment_image(
        arr,
        method,
        n_segments=n_segments,
        compactness=compactness,
        scale=scale,
        sigma=sigma,
        min_size=min_size,
    )
    return _segment_majority(labels, segments, nodata)


def _segment_majority(labels: np.ndarray, segments: np.ndarray, nodata: int) -> np.ndarray:
    """Every valid pixel -> the most frequent valid class of its segment (ties: lowest code)."""
    out = labels.copy()
    valid = labels != nodata
    if not valid.any():
        return out
    codes, index = np.unique(labels[valid], return_inverse=True)  # ascending codes
    seg = segments[valid].astype(np.int64).ravel()
    n_seg = int(segments.max()) + 1
    counts = np.bincount(seg * codes.size + index.ravel(), minlength=n_seg * codes.size).reshape(n_seg, codes.size)
    majority = codes[np.argmax(counts, axis=1)]  # argmax takes the first maximum: lowest code on ties
    out[valid] = majority[seg]
    return out


# --- erosion -------------------------------------------------------------------------------


def erode(labels: np.ndarray, radius_px: int = 1, nodata: int = NO_DATA) -> np.ndarray:
    """Shrink every class by `radius_px` pixels: border pixels become `nodata` (see module docstring).

    Same rule as `tasks.reference.erode_labels` (no data counts as a class, the array edge does
    not erode), for any `nodata` code.
    """
    labels = _check_labels(labels)
    radius_px = _check_int(radius_px, "radius_px", 0)
    nodata = _check_nodata(nodata)
    if nodata == NO_DATA:
        return erode_labels(labels, radius_px)  # always returns a new array
    # erode_labels writes 0 where a class erodes: swap the codes `nodata` and 0 around it.
    swap = np.arange(256, dtype=np.uint8)
    swap[[NO_DATA, nodata]] = [nodata, NO_DATA]
    return swap[erode_labels(swap[labels], radius_px)]


# --- chains --------------------------------------------------------------------------------

STEPS = {
    "majority": majority_filter,
    "sieve": sieve,
    "superpixels": superpixel_majority,
    "erosion": erode,
}
_STEP_KEYWORDS = {
    "majority": {"size", "nodata"},
    "sieve": {"min_pixels", "connectivity", "nodata"},
    "superpixels": {"method", "n_segments", "compactness", "scale", "sigma", "min_size", "nodata"},
    "erosion": {"radius_px", "nodata"},
}


def apply_steps(
    labels: np.ndarray, steps: Sequence[tuple[str, Mapping]], image: np.ndarray | None = None
) -> np.ndarray:
    """Run `steps`, a sequence of (name, kwargs) pairs, in order; return a new uint8 array.

    Names: "majority" (`majority_filter`), "sieve" (`sieve`), "superpixels"
    (`superpixel_majority`, needs `image`) and "erosion" (`erode`). `kwargs` are the keyword
    arguments of that function (a mapping, or None for the defaults). Every step is checked
    before any runs. The input array is never modified.
    """
    out = _check_labels(labels)
    if isinstance(steps, (str, bytes, Mapping)) or not isinstance(steps, Sequence):
        raise ValueError(f"steps must be a sequence of (name, kwargs) pairs, got {type(steps).__name__}")
    checked = []
    for i, step in enumerate(steps):
        if isinstance(step, (str, bytes)) or not isinstance(step, Sequence) or len(step) != 2:
            raise ValueError(f"steps[{i}] must be a (name, kwargs) pair, got {step!r}")
        name, kwargs = step
        if name not in STEPS:
            raise ValueError(f"steps[{i}] has unknown name {name!r}; allowed names are {sorted(STEPS)}")
        kwargs = {} if kwargs is None else kwargs
        if not isinstance(kwargs, Mapping):
            raise ValueError(f"steps[{i}] ({name}) kwargs must be a mapping or None, got {type(kwargs).__name__}")
        unknown = sorted(set(kwargs) - _STEP_KEYWORDS[name])
        if unknown:
            raise ValueError(
                f"steps[{i}] ({name}) has unknown keyword arguments {unknown}; "
                f"allowed are {sorted(_STEP_KEYWORDS[name])}"
            )
        if name == "sieve" and "min_pixels" not in kwargs:
            raise ValueError(f"steps[{i}] (sieve) needs 'min_pixels' in its kwargs")
        if name == "superpixels" and image is None:
            raise ValueError(f"steps[{i}] (superpixels) needs image=(y, x, c) array, got image=None")
        checked.append((name, dict(kwargs)))

    if not checked:
        return out.copy()
    for name, kwargs in checked:
        if name == "superpixels":
            out = superpixel_majority(out, image, **kwargs)
        else:
            out = STEPS[name](out, **kwargs)
    return out
