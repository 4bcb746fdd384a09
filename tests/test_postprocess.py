"""Tests of tasks.postprocess.steps: majority filter, sieve, superpixel majority, erosion and chains.

Results are checked against independent computations: brute-force Python loops, scipy.ndimage
patch labelling, rasterio's (GDAL's) sieve and skimage segmentations made here.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from rasterio import features
from scipy import ndimage
from skimage.segmentation import felzenszwalb, slic

from tasks.postprocess.steps import apply_steps, erode, majority_filter, segment_image, sieve, superpixel_majority
from tasks.reference.polygons import erode_labels

LULC_PATH = (
    Path(__file__).resolve().parents[1].parent / "shared" / "data" / "slovenia-testpatch" / "eopatch" / "mask_timeless"
) / "LULC.npy"

STRUCTURE = {4: ndimage.generate_binary_structure(2, 1), 8: np.ones((3, 3), dtype=bool)}


# --- independent helpers ---------------------------------------------------------------------


def brute_majority(labels: np.ndarray, size: int, nodata: int) -> tuple[np.ndarray, int, int]:
    """Pixel-by-pixel modal filter; also returns how often the two tie rules decided."""
    h, w = labels.shape
    r = size // 2
    out = labels.copy()
    centre_ties = lowest_ties = 0
    for y in range(h):
        for x in range(w):
            centre = int(labels[y, x])
            if centre == nodata:
                continue
            window = labels[max(0, y - r) : y + r + 1, max(0, x - r) : x + r + 1]
            counts: dict[int, int] = {}
            for v in window.ravel().tolist():
                if v != nodata:
                    counts[v] = counts.get(v, 0) + 1
            top = max(counts.values())
            tied = sorted(c for c, n in counts.items() if n == top)
            if centre in tied:
                out[y, x] = centre
                centre_ties += len(tied) > 1
            else:
                out[y, x] = tied[0]
                lowest_ties += len(tied) > 1
    return out, centre_ties, lowest_ties


def patches(labels: np.ndarray, connectivity: int, nodata: int = 0):
    """Yield (class, bool mask) of every connected patch, labelled per class with scipy.ndimage."""
    for code in np.unique(labels):
        if code == nodata:
            continue
        lab, n = ndimage.label(labels == code, structure=STRUCTURE[connectivity])
        for i in range(1, n + 1):
            yield int(code), lab == i


def has_valid_neighbour(labels: np.ndarray, mask: np.ndarray, connectivity: int, nodata: int = 0) -> bool:
    ring = ndimage.binary_dilation(mask, structure=STRUCTURE[connectivity]) & ~mask
    return bool(np.any(labels[ring] != nodata))


def brute_erosion(labels: np.ndarray, radius: int, nodata: int) -> np.ndarray:
    h, w = labels.shape
    out = labels.copy()
    for y in range(h):
        for x in range(w):
            for dy in range(-radius, radius + 1):
                for dx in range(-radius, radius + 1):
                    inside = 0 <= y + dy < h and 0 <= x + dx < w
                    in_footprint = radius <= 1 or dy * dy + dx * dx <= radius * radius
                    if inside and in_footprint and labels[y + dy, x + dx] != labels[y, x]:
                        out[y, x] = nodata
    return out


def blocky_map(rng, shape=(60, 70), block=10, classes=5, noise=0.15, nodata_fraction=0.05) -> np.ndarray:
    """Blocks of random classes (1..classes) with salt-and-pepper noise and scattered no data."""
    h, w = shape
    base = rng.integers(1, classes + 1, (h // block + 1, w // block + 1)).astype(np.uint8)
    labels = np.kron(base, np.ones((block, block), dtype=np.uint8))[:h, :w]
    flip = rng.random(shape) < noise
    labels[flip] = rng.integers(1, classes + 1, int(flip.sum()))
    labels[rng.random(shape) < nodata_fraction] = 0
    return labels


# --- majority filter -------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("size", [3, 5])
def test_majority_matches_bruteforce(seed, size):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 5, (13, 17)).astype(np.uint8)  # 0 = no data, ~20 %
    expected, centre_ties, lowest_ties = brute_majority(labels, size, 0)
    assert centre_ties > 0 and lowest_ties > 0  # both tie rules are exercised
    before = labels.copy()
    out = majority_filter(labels, size=size)
    np.testing.assert_array_equal(labels, before)
    assert out.dtype == np.uint8 and out is not labels
    np.testing.assert_array_equal(out, expected)


def test_majority_other_nodata_and_dtype():
    rng = np.random.default_rng(11)
    labels = rng.integers(0, 6, (20, 15)).astype(np.int64)  # 3 = no data, 0 is a class here
    expected, _, _ = brute_majority(labels.astype(np.uint8), 3, 3)
    out = majority_filter(labels, size=3, nodata=3)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, expected)


def test_majority_rules_on_hand_made_cases():
    # Centre class 2 ties with 1 (3 votes each) -> kept.
    a = np.array([[1, 1, 1], [2, 2, 2], [0, 0, 0]], dtype=np.uint8)
    assert majority_filter(a)[1, 1] == 2
    # Centre 5 has 1 vote; 3 and 4 tie with 4 votes -> lowest code 3.
    b = np.array([[4, 4, 4], [4, 5, 3], [3, 3, 3]], dtype=np.uint8)
    assert majority_filter(b)[1, 1] == 3
    # No data never votes: 5 valid pixels of 1 vs 4 of no data around a 2 ... centre is 2 -> 1 wins.
    c = np.array([[0, 0, 1], [0, 2, 1], [0, 1, 1]], dtype=np.uint8)
    out = majority_filter(c)
    assert out[1, 1] == 1
    np.testing.assert_array_equal(out == 0, c == 0)  # no data stays, nothing becomes no data
    # Array edge: the corner window is clipped to 2 x 2 (1 vote for 7 vs 3 for 6).
    d = np.array([[7, 6, 9], [6, 6, 9], [9, 9, 9]], dtype=np.uint8)
    assert majority_filter(d)[0, 0] == 6
    # A uniform map or a map with one class and no data is unchanged.
    e = np.where(np.eye(6, dtype=bool), 0, 4).astype(np.uint8)
    np.testing.assert_array_equal(majority_filter(e, size=5), e)


# --- sieve -----------------------------------------------------------------------------------


@pytest.mark.parametrize("connectivity", [4, 8])
@pytest.mark.parametrize("min_pixels", [3, 12])
def test_sieve_properties(connectivity, min_pixels):
    rng = np.random.default_rng(min_pixels + connectivity)
    labels = blocky_map(rng)
    labels[20:24, 30:34] = 0  # a no-data hole ...
    labels[21:23, 31:33] = 0
    labels[40:46, 5:11] = 0  # ... and a small patch inside no data, which must be kept
    labels[42:44, 7:9] = 3
    before = labels.copy()
    out = sieve(labels, min_pixels, connectivity=connectivity)
    np.testing.assert_array_equal(labels, before)
    assert out.dtype == np.uint8

    np.testing.assert_array_equal(out == 0, labels == 0)  # no data neither grows nor shrinks
    for code, mask in patches(out, connectivity):
        if mask.sum() < min_pixels:
            assert not has_valid_neighbour(out, mask, connectivity), f"small patch of class {code} left"
    for code, mask in patches(labels, connectivity):
        if mask.sum() >= min_pixels:
            assert np.all(out[mask] == code), f"a large patch of class {code} changed"
    assert np.all(out[42:44, 7:9] == 3)


@pytest.mark.parametrize("connectivity", [4, 8])
def test_sieve_salt_and_pepper(connectivity):
    """Pure noise: every patch is small and only has small neighbours; all must still be merged."""
    rng = np.random.default_rng(5)
    labels = rng.integers(1, 8, (40, 40)).astype(np.uint8)
    out = sieve(labels, 6, connectivity=connectivity)
    sizes = [int(m.sum()) for _, m in patches(out, connectivity)]
    assert min(sizes) >= 6
    assert set(np.unique(out)) <= set(np.unique(labels))


def test_sieve_matches_rasterio_where_every_small_patch_has_a_large_neighbour():
    rng = np.random.default_rng(3)
    # Blocks of different sizes (so the largest neighbour is never tied) and isolated specks.
    labels = np.zeros((60, 60), dtype=np.uint8)
    labels[:, :13] = 1
    labels[:, 13:30] = 2
    labels[:35, 30:] = 3
    labels[35:, 30:48] = 4
    labels[35:, 48:] = 0  # no data
    ys, xs = rng.integers(1, 59, 60), rng.integers(1, 59, 60)
    keep = np.ones(60, dtype=bool)
    for i in range(60):  # specks at least 3 px apart, so that they never touch each other
        keep[i] = not np.any((np.abs(ys[:i] - ys[i]) < 3) & (np.abs(xs[:i] - xs[i]) < 3) & keep[:i])
    labels[ys[keep], xs[keep]] = 5 + rng.integers(0, 3, int(keep.sum()))
    labels[ys[keep][:10], xs[keep][:10] + 1] = labels[ys[keep][:10], xs[keep][:10]]  # some 2-px specks
    for connectivity in (4, 8):
        expected = features.sieve(labels, 4, connectivity=connectivity, mask=labels != 0)
        np.testing.assert_array_equal(sieve(labels, 4, connectivity=connectivity), expected)


def test_sieve_largest_neighbour_and_ties():
    labels = np.array(
        [
            [1, 1, 1, 1, 2, 2, 2, 2, 2, 2],
            [1, 1, 1, 9, 9, 2, 2, 2, 2, 2],
            [1, 1, 1, 1, 2, 2, 2, 2, 2, 2],
        ],
        dtype=np.uint8,
    )  # the 2-px patch of 9 touches 1 (10 px) and 2 (17 px) -> 2
    out = sieve(labels, 3, connectivity=4)
    assert np.all(out[1, 3:5] == 2)
    # Equal neighbours (6 px each): the lowest code wins, whichever comes first in raster order.
    tie = np.array([[4, 4, 4, 9, 3, 3, 3], [4, 4, 4, 0, 3, 3, 3]], dtype=np.uint8)
    assert sieve(tie, 3, connectivity=4)[0, 3] == 3
    assert sieve(tie[:, ::-1], 3, connectivity=4)[0, 3] == 3
    # min_pixels = 1 is a no-op; a map with only no data stays as it is.
    np.testing.assert_array_equal(sieve(tie, 1), tie)
    np.testing.assert_array_equal(sieve(np.zeros((4, 4), np.uint8), 5), np.zeros((4, 4), np.uint8))


def test_sieve_nodata_is_never_absorbed_nor_grows():
    labels = np.zeros((7, 7), dtype=np.uint8)
    labels[1:6, 1:6] = 2
    labels[3, 3] = 0  # a 1-px no-data hole inside a class
    labels[0, 0] = 6  # a 1-px patch touching only no data (8-connected to the class 2 block)
    out4 = sieve(labels, 3, connectivity=4)
    np.testing.assert_array_equal(out4, labels)  # the hole stays; the speck has no 4-neighbour: kept
    out8 = sieve(labels, 3, connectivity=8)
    assert out8[0, 0] == 2 and out8[3, 3] == 0  # diagonal neighbour with 8-connectivity
    # With another no-data code, 0 is an ordinary class.
    other = np.where(labels == 0, 7, labels).astype(np.uint8)
    other[5, 5] = 0
    out = sieve(other, 3, connectivity=4, nodata=7)
    assert out[5, 5] == 2 and np.all((out == 7) == (other == 7))


# --- superpixels -----------------------------------------------------------------------------


def standardised(image: np.ndarray) -> np.ndarray:
    """The documented preparation, written independently: NaN -> channel mean, z-scores."""
    img = image.astype(np.float64)
    mean = np.nanmean(img, axis=(0, 1))
    img = np.where(np.isnan(img), mean, img)
    return ((img - mean) / img.std(axis=(0, 1))).astype(np.float32)


def block_scene(seed=0, block=16, blocks=8, flip=0.25, nan_fraction=0.02):
    """Image of constant-mean blocks plus noise (4 bands of very different ranges) and noisy labels."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(1, 6, (blocks, blocks)).astype(np.uint8)
    truth_px = np.kron(truth, np.ones((block, block), dtype=np.uint8))
    block_id = np.kron(np.arange(blocks * blocks).reshape(blocks, blocks), np.ones((block, block), dtype=int))
    ranges = np.array([1.0, 100.0, 1000.0, 0.01])
    means = rng.normal(0, 1, (blocks * blocks, 4)) * ranges
    image = means[block_id] + rng.normal(0, 0.15, truth_px.shape + (4,)) * ranges
    image[rng.random(truth_px.shape) < nan_fraction] = np.nan
    noisy = truth_px.copy()
    flipped = rng.random(truth_px.shape) < flip
    noisy[flipped] = rng.integers(1, 6, int(flipped.sum()))
    return image, noisy, truth_px


def segment_majority_bruteforce(labels, segments, nodata=0):
    out = labels.copy()
    for s in np.unique(segments):
        inside = segments == s
        votes = labels[inside & (labels != nodata)]
        if votes.size:
            counts = np.bincount(votes)
            out[inside & (labels != nodata)] = np.flatnonzero(counts == counts.max())[0]
    return out


@pytest.mark.parametrize("method", ["slic", "felzenszwalb"])
def test_superpixels_recover_blocks(method):
    image, noisy, truth = block_scene()
    noisy[:8, :8] = 0  # some no data
    before_image, before_labels = image.copy(), noisy.copy()
    out = superpixel_majority(noisy, image, method)
    np.testing.assert_array_equal(image, before_image)  # NaNs and values untouched
    np.testing.assert_array_equal(noisy, before_labels)
    assert out.dtype == np.uint8
    assert np.mean(noisy == truth) < 0.85
    valid = noisy != 0
    assert np.mean(out[valid] == truth[valid]) > 0.97
    np.testing.assert_array_equal(out == 0, noisy == 0)

    # Every segment is single-class and carries the majority class of its valid pixels.
    segments = segment_image(image, method)
    assert segments.shape == noisy.shape and segments.max() > 20
    for s in np.unique(segments):
        assert np.unique(out[(segments == s) & valid]).size <= 1
    np.testing.assert_array_equal(out, segment_majority_bruteforce(noisy, segments))
    np.testing.assert_array_equal(superpixel_majority(noisy, image, method), out)  # deterministic

    # The segments are skimage's on the documented preparation (made here independently).
    if method == "slic":
        expected = slic(
            standardised(image),
            n_segments=round(noisy.size / 100),  # the default: ~10 x 10 px segments
            compactness=0.1,
            sigma=0.5,
            convert2lab=False,
            start_label=0,
            channel_axis=-1,
        )
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            expected = felzenszwalb(standardised(image), scale=10, sigma=0.5, min_size=20, channel_axis=-1)
    np.testing.assert_array_equal(segments, expected)


def test_superpixels_nodata_ties_and_nan_channel():
    # Piecewise-constant image: felzenszwalb without smoothing segments exactly the 4 quadrants.
    image = np.zeros((20, 20, 2))
    image[:10, 10:, 0] = 5.0
    image[10:, :10, 1] = 5.0
    image[10:, 10:] = 5.0
    image[..., 1][::3, ::3] = np.nan  # NaN in a channel
    labels = np.zeros((20, 20), dtype=np.uint8)
    labels[:10, :10] = 0  # quadrant with only no data -> stays no data
    labels[:10, 10:] = 0  # quadrant mostly no data: the few valid pixels decide
    labels[:2, 10:] = 6
    labels[10:, :10] = 4  # tie 4 vs 2 (50 px each) -> 2
    labels[10:15, :10] = 2
    labels[10:, 10:] = 8  # majority 8 with a few 1
    labels[12, 12:16] = 1
    out = superpixel_majority(labels, image, "felzenszwalb", sigma=0, min_size=5, scale=1)
    expected = labels.copy()
    expected[10:, :10] = 2
    expected[10:, 10:] = 8
    np.testing.assert_array_equal(out, expected)
    # A channel that is all NaN (or constant) is harmless.
    image[..., 1] = np.nan
    out = superpixel_majority(labels, image, "felzenszwalb", sigma=0, min_size=5, scale=1)
    np.testing.assert_array_equal(out[10:, 10:], 8)


# --- erosion ---------------------------------------------------------------------------------


def test_erosion_shapes():
    labels = np.zeros((11, 11), dtype=np.uint8)
    labels[2:7, 2:7] = 3  # 5 x 5 block
    labels[9, :] = 5  # 1-px line, ending at the array edge
    out = erode(labels, radius_px=1)
    expected = np.zeros_like(labels)
    expected[3:6, 3:6] = 3
    np.testing.assert_array_equal(out, expected)
    two = erode(labels, radius_px=2)
    assert two.sum() == 3 and two[4, 4] == 3  # disk of radius 2: only the centre survives
    np.testing.assert_array_equal(erode(labels, radius_px=0), labels)
    # The array edge does not erode: a uniform map is unchanged.
    np.testing.assert_array_equal(erode(np.full((5, 6), 2, np.uint8), radius_px=2), np.full((5, 6), 2))


@pytest.mark.parametrize("radius", [1, 2, 3])
@pytest.mark.parametrize("nodata", [0, 3])
def test_erosion_matches_bruteforce(radius, nodata):
    labels = blocky_map(np.random.default_rng(radius), shape=(25, 30), block=8, noise=0.05)
    out = erode(labels.astype(np.int32), radius_px=radius, nodata=nodata)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, brute_erosion(labels, radius, nodata))
    if nodata == 0:
        np.testing.assert_array_equal(out, erode_labels(labels, radius))


# --- chains ----------------------------------------------------------------------------------


def test_apply_steps_runs_in_order():
    labels = blocky_map(np.random.default_rng(8), shape=(40, 40), block=10, noise=0.2)
    before = labels.copy()
    a = apply_steps(labels, [("majority", {"size": 3}), ("erosion", {"radius_px": 1})])
    b = apply_steps(labels, [("erosion", {"radius_px": 1}), ("majority", {"size": 3})])
    np.testing.assert_array_equal(a, erode(majority_filter(labels, size=3), radius_px=1))
    np.testing.assert_array_equal(b, majority_filter(erode(labels, radius_px=1), size=3))
    assert not np.array_equal(a, b)  # order matters
    np.testing.assert_array_equal(labels, before)

    image, noisy, _ = block_scene(seed=2)
    chain = [("superpixels", {"method": "slic"}), ("sieve", {"min_pixels": 30, "connectivity": 4}), ("erosion", None)]
    expected = erode(sieve(superpixel_majority(noisy, image), 30, connectivity=4))
    np.testing.assert_array_equal(apply_steps(noisy, chain, image=image), expected)

    out = apply_steps(labels, [])
    np.testing.assert_array_equal(out, labels)
    assert out is not labels and not np.shares_memory(out, labels)


# --- argument checks -------------------------------------------------------------------------

LABELS = np.ones((6, 6), dtype=np.uint8)
IMAGE = np.zeros((6, 6, 2))


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: majority_filter(LABELS, size=4), "size"),
        (lambda: majority_filter(LABELS, size=1), "size"),
        (lambda: majority_filter(LABELS, size=3.0), "size"),
        (lambda: majority_filter(LABELS, nodata=256), "nodata"),
        (lambda: majority_filter(LABELS, nodata=-1), "nodata"),
        (lambda: majority_filter(LABELS[None]), "labels"),
        (lambda: majority_filter(LABELS.astype(float)), "labels"),
        (lambda: majority_filter(LABELS.astype(bool)), "labels"),
        (lambda: majority_filter(LABELS.astype(np.int16) * 300), "labels"),
        (lambda: majority_filter(LABELS.astype(np.int16) * -1), "labels"),
        (lambda: sieve(LABELS, 0), "min_pixels"),
        (lambda: sieve(LABELS, 2.5), "min_pixels"),
        (lambda: sieve(LABELS, 4, connectivity=6), "connectivity"),
        (lambda: superpixel_majority(LABELS, IMAGE, "watershed"), "method"),
        (lambda: superpixel_majority(LABELS, IMAGE, compactness=0), "compactness"),
        (lambda: superpixel_majority(LABELS, IMAGE, n_segments=0), "n_segments"),
        (lambda: superpixel_majority(LABELS, IMAGE, "felzenszwalb", scale=-1), "scale"),
        (lambda: superpixel_majority(LABELS, IMAGE, sigma=-0.5), "sigma"),
        (lambda: superpixel_majority(LABELS, IMAGE, "felzenszwalb", min_size=0), "min_size"),
        (lambda: superpixel_majority(LABELS, IMAGE[:5]), "image"),
        (lambda: superpixel_majority(LABELS, IMAGE.astype(str)), "image"),
        (lambda: erode(LABELS, radius_px=-1), "radius_px"),
        (lambda: erode(LABELS, radius_px=1.5), "radius_px"),
        (lambda: apply_steps(LABELS, [("smooth", {})]), "unknown name"),
        (lambda: apply_steps(LABELS, [("majority", {"radius_px": 1})]), "radius_px"),
        (lambda: apply_steps(LABELS, [("majority",)]), "pair"),
        (lambda: apply_steps(LABELS, [("sieve", {})]), "min_pixels"),
        (lambda: apply_steps(LABELS, [("majority", [3])]), "mapping"),
        (lambda: apply_steps(LABELS, "majority"), "steps"),
        (lambda: apply_steps(LABELS, [("majority", {}), ("superpixels", {})]), "image"),
        (lambda: apply_steps(LABELS, [("majority", {"size": 2})]), "size"),
    ],
)
def test_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# --- real reference raster -------------------------------------------------------------------


def test_majority_and_sieve_on_slovenia_lulc():
    raw = np.load(LULC_PATH)
    assert raw.shape == (101, 100, 1) and raw.dtype == np.uint16
    labels = raw[..., 0]
    min_pixels = 9
    out = apply_steps(labels, [("majority", {"size": 3}), ("sieve", {"min_pixels": min_pixels})])
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out == 0, labels == 0)
    valid = labels != 0
    before = np.bincount(labels[valid], minlength=11) / valid.sum()
    after = np.bincount(out[valid], minlength=11) / valid.sum()
    assert np.abs(after - before).max() < 0.03, (before.round(3), after.round(3))
    assert set(np.unique(out)) <= set(np.unique(labels))
    for code, mask in patches(out, 8):
        assert mask.sum() >= min_pixels or not has_valid_neighbour(out, mask, 8), f"small patch of class {code}"
    assert not np.array_equal(out, labels)  # something was actually smoothed
