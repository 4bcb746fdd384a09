"""Spectral indices and tasselled-cap components of Sentinel-2 time series: plain numpy, no I/O.

Input is a block of digital numbers, uint16 (t, y, x, b) with DN = reflectance × 10000
(`lcms.sentinel2.REFLECTANCE_SCALE`) and 0 where there is no data; output is float32
(t, y, x, f), one layer per requested feature. A feature is either a band name (given back as
reflectance, DN / 10000) or one of the indices below.

Normalised differences (in [-1, 1]; 0 where both bands are 0, i.e. no data):

* NDVI = (B08 - B04) / (B08 + B04)  -- Rouse et al. (1974), NIR and red.
* NDWI = (B03 - B08) / (B03 + B08)  -- McFeeters, S. K. (1996), "The use of the Normalized
  Difference Water Index (NDWI) in the delineation of open water features", Int. J. Remote
  Sensing 17(7), 1425-1432. Green and NIR; > 0 over open water.
* NDBI = (B11 - B08) / (B11 + B08)  -- Zha, Y., Gao, J. & Ni, S. (2003), "Use of normalized
  difference built-up index in automatically mapping urban areas from TM imagery", Int. J.
  Remote Sensing 24(3), 583-594. SWIR1 and NIR; higher over built-up land than vegetation.

The ratios do not depend on the scale of the bands, so they are computed from the DN held in
float32 (integers below 2**24 are exact there, as are their sums and differences): the only
rounding is that of the division, with no cancellation between rounded reflectances.

Tasselled cap (Kauth & Thomas 1976), with the six-band Sentinel-2 coefficients of
Shi, T. & Xu, H. (2019), "Derivation of Tasseled Cap Transformation Coefficients for Sentinel-2
MSI At-Sensor Reflectance Data", IEEE J. Sel. Topics Appl. Earth Observ. Remote Sens. 12(10),
4038-4048, doi:10.1109/JSTARS.2019.2938388. Each component is a linear combination of the
reflectances of B02, B03, B04, B08, B11 and B12 (no offset):

    TC_BRIGHTNESS =  0.3510 B02 + 0.3813 B03 + 0.3437 B04 + 0.7196 B08 + 0.2396 B11 + 0.1949 B12
    TC_GREENNESS  = -0.3599 B02 - 0.3533 B03 - 0.4734 B04 + 0.6633 B08 + 0.0087 B11 - 0.2856 B12
    TC_WETNESS    =  0.2578 B02 + 0.2305 B03 + 0.0883 B04 + 0.1071 B08 - 0.7611 B11 - 0.5308 B12

The coefficients were derived for top-of-atmosphere (at-sensor, L1C) reflectance. They need no
B10, so they also run on L2A bands, but on surface reflectance the components are biased
relative to the published axes (still consistent over time for one product level). Shi & Xu
also give a 13-band set; it needs B10 (absent from L2A) and is not used here.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lcms.sentinel2 import REFLECTANCE_SCALE

F32 = np.float32

# Normalised differences: (a - b) / (a + b) for the pair (a, b).
_NORMALISED_DIFFERENCES: dict[str, tuple[str, str]] = {
    "NDVI": ("B08", "B04"),
    "NDWI": ("B03", "B08"),
    "NDBI": ("B11", "B08"),
}

TC_BANDS: tuple[str, ...] = ("B02", "B03", "B04", "B08", "B11", "B12")
# Shi & Xu (2019), six-band set for Sentinel-2 at-sensor reflectance, in the order of TC_BANDS.
TC_COEFFICIENTS: dict[str, tuple[float, ...]] = {
    "TC_BRIGHTNESS": (0.3510, 0.3813, 0.3437, 0.7196, 0.2396, 0.1949),
    "TC_GREENNESS": (-0.3599, -0.3533, -0.4734, 0.6633, 0.0087, -0.2856),
    "TC_WETNESS": (0.2578, 0.2305, 0.0883, 0.1071, -0.7611, -0.5308),
}

INDEX_BANDS: dict[str, tuple[str, ...]] = {
    **_NORMALISED_DIFFERENCES,
    **{name: TC_BANDS for name in TC_COEFFICIENTS},
}

# Pixels (of the flattened t·y·x block) per chunk: each band used and each feature of a chunk is a
# contiguous float32 row of 128 KiB, so a chunk's work stays in cache, and the strided (pixel, feature)
# output is written once per chunk by one transposing copy.
_CHUNK_PIXELS = 1 << 15


def check_features(band_names: Sequence[str], features: Sequence[str]) -> None:
    """Raise ValueError unless every feature can be computed from `band_names`.

    A feature is a band of `band_names` or a name of `INDEX_BANDS` whose bands are all present.
    """
    band_names, features = list(band_names), list(features)
    if len(set(band_names)) != len(band_names):
        raise ValueError(f"band names repeat: {band_names}")
    if not features:
        raise ValueError("no features requested: give at least one band or index")
    repeated = sorted({f for f in features if features.count(f) > 1})
    if repeated:
        raise ValueError(f"features repeat: {repeated}")
    for feature in features:
        if feature in band_names:
            continue
        if feature not in INDEX_BANDS:
            raise ValueError(
                f"unknown feature {feature!r}: not one of the bands {band_names} nor of the indices {list(INDEX_BANDS)}"
            )
        missing = [b for b in INDEX_BANDS[feature] if b not in band_names]
        if missing:
            raise ValueError(
                f"{feature} needs band(s) {missing}, which are not among the bands {band_names} "
                f"(it uses {list(INDEX_BANDS[feature])})"
            )


def feature_stack(bands: np.ndarray, band_names: Sequence[str], features: Sequence[str]) -> np.ndarray:
    """float32 (t, y, x, len(features)) features of uint16 DN `bands` (t, y, x, len(band_names)).

    Band features are reflectance (DN / 10000); index features as in the module docstring.
    Only the bands that the features need are converted, a chunk of pixels at a time.
    """
    check_features(band_names, features)
    if bands.ndim != 4 or bands.shape[-1] != len(band_names):
        raise ValueError(f"bands must be (t, y, x, {len(band_names)}) for bands {list(band_names)}, got {bands.shape}")
    if not np.issubdtype(bands.dtype, np.integer):
        raise TypeError(f"bands must be integer DN (reflectance × {REFLECTANCE_SCALE}), got {bands.dtype}")

    position = {name: i for i, name in enumerate(band_names)}
    used = sorted({b for f in features for b in INDEX_BANDS.get(f, (f,))}, key=position.__getitem__)
    n_t, n_y, n_x, n_b = bands.shape
    out = np.empty((n_t, n_y, n_x, len(features)), F32)
    flat, flat_out = bands.reshape(-1, n_b), out.reshape(-1, len(features))
    size = min(_CHUNK_PIXELS, len(flat)) or 1
    dn = {name: np.empty(size, F32) for name in used}  # float32 DN of each band used, per chunk
    rows = np.empty((len(features), size), F32)  # the chunk's features, one contiguous row each
    scratch = np.empty(size, F32)
    # DN are >= 0 in an unsigned dtype, so a + b == 0 only where both are 0, and there a - b == 0 too:
    # dividing by max(a + b, 1) gives the ratio elsewhere and 0 there, with no mask.
    unsigned = np.issubdtype(bands.dtype, np.unsignedinteger)
    scale = F32(REFLECTANCE_SCALE)
    for start in range(0, len(flat), size):
        stop = min(start + size, len(flat))
        n = stop - start
        chunk = {name: dn[name][:n] for name in used}
        for name in used:
            chunk[name][...] = flat[start:stop, position[name]]
        for k, feature in enumerate(features):
            target = rows[k, :n]
            if feature in position:
                np.divide(chunk[feature], scale, out=target)
            elif feature in _NORMALISED_DIFFERENCES:
                a, b = (chunk[name] for name in _NORMALISED_DIFFERENCES[feature])
                if unsigned:
                    total = np.add(a, b, out=scratch[:n])
                    np.maximum(total, 1, out=total)
                    np.subtract(a, b, out=target)
                    np.divide(target, total, out=target)
                else:
                    _normalised_difference(a, b, target)
            else:
                _linear_combination(TC_COEFFICIENTS[feature], [chunk[name] for name in TC_BANDS], target)
                target /= scale  # coefficients apply to reflectance; the sum is linear in the scale
        flat_out[start:stop] = rows[:, :n].T
    return out


def _normalised_difference(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    """out = (a - b) / (a + b), and 0 where a + b == 0 (no data), without division warnings."""
    total = a + b
    difference = a - b
    out[...] = 0
    np.divide(difference, total, out=out, where=total != 0)


def _linear_combination(coefficients: Sequence[float], layers: Sequence[np.ndarray], out: np.ndarray) -> None:
    """out = sum of coefficient × layer, accumulated in float32 without a stacked copy."""
    acc = layers[0] * F32(coefficients[0])
    term = np.empty_like(acc)
    for c, layer in zip(coefficients[1:], layers[1:], strict=True):
        np.multiply(layer, F32(c), out=term)
        acc += term
    out[...] = acc
