"""Deterministic synthetic Sentinel-2 L1C (or L2A) tiles: land cover, phenology, clouds, shadows, swath edges.

Used for demos, tests and scale runs where real imagery is unavailable or too slow to fetch.

The model, from the ground up:

* **Value noise in world coordinates.** Every random quantity comes from an integer hash
  (splitmix64) of the scene seed, a "channel" (what the number is for) and integer lattice
  or pixel coordinates in millimetres of the grid's CRS. Smooth fields are pseudo-random values
  on a square lattice, interpolated bilinearly with a smoothstep and summed over a few
  octaves. A pixel's value therefore depends only on (seed, year, date, world x/y of its
  centre): a window of a grid renders bit-identically to the same part of the whole grid,
  and overlapping tiles agree. No filter ever looks at neighbouring pixels for that reason.
* **Land cover** (LULC codes of `lcms.legend`): farmland made of rectangular parcels (mostly
  cultivated, some meadows) alternates with natural land (forest, grassland, shrubland);
  blocky settlements (artificial surface) and lakes and rivers (water) are laid on top.
  Each later year applies "planted" change blobs with plausible transitions, cumulatively.
* **Spectra.** Each class mixes a background spectrum (soil, dormant canopy, water, concrete)
  with a green-vegetation spectrum. The vegetation fraction is solved per pixel and date so
  that NDVI = (B08 - B04) / (B08 + B04) of the top-of-atmosphere result follows the class's
  double-logistic phenology curve. Path radiance (haze, strongest in the blue), a cloud
  layer, cloud shadows and a little sensor noise are added on top.
* **What makes it hard to classify**, as real land cover is: grassland and shrubland have
  nearly the same spectra and phenology, and natural patches vary in vigour (amplitude about
  ±25 %), dryness (NDVI base ±0.04) and brightness (±10 %) by more than the two classes differ;
  a tenth of the cultivated parcels are fodder grass, spectrally meadows (`_FODDER_SHARE`);
  every year shifts each class's spring by up to ±4 days and its vigour by ±5 %; a pixel
  whose lower right corner lies in another class is a half-and-half mix of both (mixed
  pixels at borders, labelled by their centre); and `reference_polygons(label_noise=...)`
  mislabels a share of the small polygons as a surveyor would (`_CONFUSED_WITH`).
* **Clouds** are thresholded multi-octave noise, a new field for every date, with a smooth
  opacity ramp at the edges. The per-date coverage follows a U-shaped Beta distribution with
  mean `cloud_cover`, so that some dates are clear and some overcast.
* **Cloud shadows**: each date's cloud field seen from a point 0.6-2 km towards the sun,
  darkening the ground by up to 60 %. The sun's azimuth (150-170°) and zenith (30° at the
  June solstice to 65° at the December one) are the date's own (`sun_angles`), so the clouds
  of a date sit at one height, shadow distance / tan(zenith). The true shadow mask
  (`SyntheticTile.shadow_mask`) is shadow opacity >= 0.5, outside the true cloud mask.
* **L2A** (`collection="L2A"`): the same rendering without B10 (no atmospheric correction is
  simulated), with a scene classification layer like Sen2Cor's (`SyntheticTile.scl`): no data
  0, cloud shadow 3, vegetation 4, not vegetated 5, water 6, cloud medium / high probability
  8 / 9 from the true masks.
* **Swath edges.** In about `swath_edge_fraction` of the dates, stripes of no data, bounded by
  straight lines tilted like the Sentinel-2 ground track, cross the world (one stripe per
  20 km); a 10 km tile is cut in nearly all such dates, a smaller tile only sometimes (and
  may then lie completely outside the swath).

World coordinates are assumed to be metres (a projected CRS such as UTM). Values are
sampled at pixel centres, so coarser grids see the same landscape, point-sampled.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import geopandas as gpd
import numpy as np
from rasterio import features
from scipy import special
from shapely.geometry import shape

from lcms.geometry import PixelGrid
from lcms.legend import LULC_NAMES
from lcms.sentinel2 import L1C_BANDS, L2A_BANDS, REFLECTANCE_SCALE

CULTIVATED, FOREST, GRASSLAND, SHRUBLAND, WATER, ARTIFICIAL = 1, 2, 3, 4, 5, 8
CLASSES: tuple[int, ...] = (CULTIVATED, FOREST, GRASSLAND, SHRUBLAND, WATER, ARTIFICIAL)

F32 = np.float32
B04, B08 = L1C_BANDS.index("B04"), L1C_BANDS.index("B08")
L2A_INDEX = [L1C_BANDS.index(b) for b in L2A_BANDS]  # the L1C bands without B10

# Scene classification codes (Sen2Cor's SCL) that the synthetic L2A layer uses.
SCL_NO_DATA, SCL_SHADOW, SCL_VEGETATION, SCL_NOT_VEGETATED, SCL_WATER = 0, 3, 4, 5, 6
SCL_CLOUD_MEDIUM, SCL_CLOUD_HIGH = 8, 9
N_BANDS = len(L1C_BANDS)

# ---------------------------------------------------------------------------------------------
# Hashing: splitmix64 on uint64 arrays. Integer arithmetic is exact, so hashes of the same
# world coordinates are identical whatever array they are computed in.
# ---------------------------------------------------------------------------------------------

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)

# Channels: one per purpose, so that e.g. the forest field and the cloud field are independent.
(
    _CH_REGION,
    _CH_PARCEL,
    _CH_FOREST,
    _CH_GRASS,
    _CH_SETTLE,
    _CH_LAKE,
    _CH_RIVER,
    _CH_TEXTURE,
    _CH_PHENO,
    _CH_CHANGE,
    _CH_WOBBLE,
    _CH_DATES,
    _CH_DATE,
    _CH_CLOUD,
    _CH_SENSOR,
    _CH_REFERENCE,
    _CH_CALIBRATE,
) = range(1, 18)


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser, in place on a uint64 array (returns it)."""
    with np.errstate(over="ignore"):
        z ^= z >> np.uint64(30)
        z *= _M1
        z ^= z >> np.uint64(27)
        z *= _M2
        z ^= z >> np.uint64(31)
    return z


def _hash(*parts) -> np.ndarray:
    """Hash integers or integer arrays (broadcast together) into well-mixed uint64 values."""
    h = np.array(0x243F6A8885A308D3, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for p in parts:
            # int64 -> uint64 wraps negatives, which is what we want for coordinates.
            p64 = np.asarray(p).astype(np.int64).astype(np.uint64)
            h = _mix(h ^ (p64 + _GOLDEN))
    return h


def _key(*parts) -> int:
    """A scalar hash, used as the key of a field (e.g. seed + channel + year)."""
    return int(_hash(*parts))


def _unit(h: np.ndarray) -> np.ndarray:
    """Uniform float32 in [0, 1) from the top 24 bits (exact in float32)."""
    return (h >> np.uint64(40)).astype(F32) * F32(2.0**-24)


def _unit64(h) -> np.ndarray:
    """Uniform float64 in [0, 1), for scalars such as per-date parameters."""
    return (np.asarray(h, dtype=np.uint64) >> np.uint64(11)).astype(np.float64) * 2.0**-53


# ---------------------------------------------------------------------------------------------
# Value noise. Coordinates are int64 millimetres, either a grid given as a row (1, W) of x and
# a column (H, 1) of y ("separable": the lattice is hashed once and interpolated along x then
# y), or arrays of points of one shape. Both paths do the same float32 operations per value,
# so a point evaluates exactly as the same point in a grid.
# ---------------------------------------------------------------------------------------------


def _smoothstep(t: np.ndarray) -> np.ndarray:
    return t * t * (F32(3.0) - F32(2.0) * t)


def _frac(v: np.ndarray, cell_mm: int) -> tuple[np.ndarray, np.ndarray]:
    """Lattice index and smoothstepped position inside the cell."""
    i = v // cell_mm
    # The remainder is < 2**24 for cells up to 16 km, so float32 holds it exactly.
    return i, _smoothstep((v - i * cell_mm).astype(F32) / F32(cell_mm))


def _lattice(key: int, ix, iy) -> np.ndarray:
    """Pseudo-random float32 value in [-1, 1) at integer lattice points."""
    return (_hash(key, ix, iy) >> np.uint64(40)).astype(F32) * F32(2.0**-23) - F32(1.0)


def _is_grid(xm: np.ndarray, ym: np.ndarray) -> bool:
    return xm.ndim == 2 and ym.ndim == 2 and xm.shape[0] == 1 and ym.shape[1] == 1


def _noise(key: int, xm: np.ndarray, ym: np.ndarray, cell_mm: int) -> np.ndarray:
    """One octave of smooth value noise in [-1, 1] with features about `cell_mm` across."""
    ix, wx = _frac(xm, cell_mm)
    iy, wy = _frac(ym, cell_mm)
    vx, vy = F32(1.0) - wx, F32(1.0) - wy
    if _is_grid(xm, ym):
        ix0, iy0 = int(ix.min()), int(iy.min())
        nx, ny = int(ix.max()) - ix0 + 2, int(iy.max()) - iy0 + 2
        lat = _lattice(key, np.arange(ix0, ix0 + nx)[None, :], np.arange(iy0, iy0 + ny)[:, None])
        jx, jy = ix[0] - ix0, iy[:, 0] - iy0
        along_x = lat[:, jx] * vx + lat[:, jx + 1] * wx  # (lattice rows, W)
        return along_x[jy] * vy + along_x[jy + 1] * wy
    a0 = _lattice(key, ix, iy) * vx + _lattice(key, ix + 1, iy) * wx
    a1 = _lattice(key, ix, iy + 1) * vx + _lattice(key, ix + 1, iy + 1) * wx
    return a0 * vy + a1 * wy


def _fbm(key: int, xm: np.ndarray, ym: np.ndarray, cell_mm: int, octaves: int) -> np.ndarray:
    """Sum of `octaves` octaves of value noise, each half the size and amplitude of the previous."""
    total = None
    for o in range(octaves):
        okey = _key(key, o)
        cell = max(int(cell_mm) >> o, 1)
        # Shift each octave's lattice so that lattice lines of different octaves do not coincide.
        dx, dy = int(_hash(okey, 1) % np.uint64(cell)), int(_hash(okey, 2) % np.uint64(cell))
        n = _noise(okey, xm + dx, ym + dy, cell)
        total = n if total is None else total + n * F32(0.5**o)
    return total


@functools.cache
def _fbm_quantiles(octaves: int) -> np.ndarray:
    """Quantiles (at 0, 0.0005, ..., 1) of `_fbm`, estimated once from a large fixed sample.

    Thresholding a field at a quantile gives a chosen area fraction (class shares, cloud cover).
    The sample is the same in every process, so the thresholds are deterministic.
    """
    cell = 64_000
    xs = (np.arange(512, dtype=np.int64) * 4_000)[None, :]
    ys = (np.arange(512, dtype=np.int64) * 4_000)[:, None]
    samples = [_fbm(_key(_CH_CALIBRATE, octaves, k), xs, ys, cell, octaves).ravel() for k in range(8)]
    return np.quantile(np.concatenate(samples), np.linspace(0.0, 1.0, 2001)).astype(np.float64)


def _threshold(octaves: int, upper_fraction: float) -> np.float32:
    """The value that `_fbm(..., octaves)` exceeds on about `upper_fraction` of the area."""
    q = _fbm_quantiles(octaves)
    return F32(np.interp(1.0 - upper_fraction, np.linspace(0.0, 1.0, q.size), q))


# ---------------------------------------------------------------------------------------------
# Class tables: phenology and spectra.
# ---------------------------------------------------------------------------------------------

# Double-logistic NDVI curve per class: base + amp * (S((doy - sos) / k_up) - S((doy - eos) / k_down)).
# Columns: base, amp, sos, k_up, eos, k_down (days).
_PHENOLOGY = {
    CULTIVATED: (0.20, 0.62, 115.0, 7.0, 200.0, 5.0),  # bare in winter, sharp peak in June, harvest in July
    FOREST: (0.58, 0.18, 120.0, 8.0, 285.0, 10.0),  # evergreen share keeps winter NDVI moderately high
    GRASSLAND: (0.35, 0.35, 95.0, 10.0, 250.0, 18.0),  # early spring green-up, slow summer drying
    SHRUBLAND: (0.34, 0.32, 99.0, 10.0, 253.0, 17.5),  # a little later and lower: close to grassland
    WATER: (-0.32, 0.10, 150.0, 10.0, 240.0, 10.0),  # slightly less negative with summer algae
    ARTIFICIAL: (0.08, 0.06, 120.0, 12.0, 275.0, 12.0),  # a few street trees and lawns
}

# Spectra in L1C band order B01 B02 B03 B04 B05 B06 B07 B08 B8A B09 B10 B11 B12, as reflectance.
# B09 (water vapour) and B10 (cirrus) are given as seen through the atmosphere.
# fmt: off
_BACKGROUND = {
    CULTIVATED: (0.08, 0.09, 0.12, 0.16, 0.19, 0.21, 0.23, 0.24, 0.25, 0.09, 0.003, 0.32, 0.27),  # bare soil
    FOREST:     (0.02, 0.02, 0.04, 0.035, 0.07, 0.15, 0.18, 0.20, 0.21, 0.07, 0.002, 0.14, 0.07),  # dormant canopy
    GRASSLAND:  (0.05, 0.06, 0.09, 0.11, 0.15, 0.19, 0.21, 0.22, 0.23, 0.08, 0.003, 0.30, 0.22),  # dry grass
    SHRUBLAND:  (0.055, 0.065, 0.095, 0.115, 0.15, 0.185, 0.205, 0.215, 0.225, 0.08, 0.003, 0.285, 0.21),  # wood
    WATER:      (0.06, 0.06, 0.05, 0.03, 0.025, 0.02, 0.02, 0.02, 0.018, 0.006, 0.001, 0.01, 0.008),
    ARTIFICIAL: (0.11, 0.12, 0.14, 0.16, 0.18, 0.19, 0.20, 0.21, 0.22, 0.08, 0.004, 0.24, 0.22),  # roofs, roads
}
_GREEN = (0.02, 0.025, 0.07, 0.03, 0.11, 0.30, 0.38, 0.41, 0.42, 0.14, 0.003, 0.21, 0.10)
_VEGETATION = {
    CULTIVATED: (0.02, 0.025, 0.08, 0.025, 0.12, 0.33, 0.42, 0.45, 0.46, 0.15, 0.003, 0.23, 0.10),  # crop
    FOREST:     (0.015, 0.02, 0.05, 0.025, 0.09, 0.26, 0.33, 0.36, 0.37, 0.12, 0.002, 0.17, 0.07),  # leaf-on canopy
    GRASSLAND: _GREEN, SHRUBLAND: _GREEN, WATER: _GREEN, ARTIFICIAL: _GREEN,
}
# Atmospheric path radiance added at the top of the atmosphere (Rayleigh + aerosol: blue-heavy).
_PATH = np.array((0.10, 0.07, 0.045, 0.02, 0.016, 0.012, 0.010, 0.008, 0.007, 0.002, 0.002, 0.002, 0.001), F32)
# Thick water cloud: bright and flat in the visible/NIR, elevated cirrus band, darker in the SWIR.
_CLOUD = np.array((0.50, 0.48, 0.47, 0.47, 0.48, 0.49, 0.50, 0.50, 0.50, 0.30, 0.06, 0.36, 0.22), F32)
# Sensor noise: absolute part per band (the absorption bands are quieter) plus 1 % of the signal.
_NOISE_ABS = np.array((0.003, 0.003, 0.003, 0.003, 0.003, 0.003, 0.003, 0.003, 0.003, 0.002, 0.0005, 0.003, 0.003), F32)
# fmt: on
_NOISE_REL = F32(0.017)  # uniform noise in [-1, 1] has std 0.58, so this is ~1 % std

# Plausible transitions for planted changes: source class -> four equally likely targets (repeats
# weight them). Roughly balanced, so that the landscape does not drift far over a few years.
_TRANSITIONS = {
    CULTIVATED: (GRASSLAND, GRASSLAND, ARTIFICIAL, FOREST),  # abandonment, urban sprawl, afforestation
    FOREST: (CULTIVATED, CULTIVATED, GRASSLAND, SHRUBLAND),  # clearcut and conversion, regrowth
    GRASSLAND: (CULTIVATED, CULTIVATED, SHRUBLAND, ARTIFICIAL),  # ploughing, encroachment, construction
    SHRUBLAND: (FOREST, FOREST, CULTIVATED, GRASSLAND),  # succession, reclamation, clearing
}


# Reference label noise: the class a mislabelled polygon gets (the one a surveyor confuses it with).
_CONFUSED_WITH = {
    CULTIVATED: GRASSLAND,  # a fodder field taken for a meadow
    GRASSLAND: SHRUBLAND,
    SHRUBLAND: GRASSLAND,
    FOREST: SHRUBLAND,  # young or open forest
    ARTIFICIAL: GRASSLAND,  # a green urban area
}
#: Only polygons up to this area (m²) are mislabelled: a survey error is a field, not a region.
_NOISE_MAX_AREA_M2 = 100_000.0
#: Share of cultivated parcels that are fodder grass (a meadow's phenology on farmland).
_FODDER_SHARE = 0.1


def _table(values: dict[int, tuple], width: int) -> np.ndarray:
    """A (256, width) float32 lookup table indexed by class code."""
    t = np.zeros((256, width), F32)
    for code, row in values.items():
        t[code] = row
    return t


_PHENO_T = _table(_PHENOLOGY, 6)
_BACKGROUND_T = _table(_BACKGROUND, N_BANDS)
_VEG_DIFF_T = _table(_VEGETATION, N_BANDS) - _BACKGROUND_T
_TRANSITION_T = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 4, axis=1)  # identity for the rest
for _src, _targets in _TRANSITIONS.items():
    _TRANSITION_T[_src] = _targets

_SWATH_PERIOD_M = 20_000.0  # spacing of the no-data stripes in edge dates
_DAY_S = 86_400


def _world_mm(grid: PixelGrid) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in integer millimetres: x as a row (1, W), y as a column (H, 1).

    Rounding to whole millimetres makes the coordinates exact integers, so a window and the
    whole grid compute bit-identical values even when float arithmetic of the transform differs
    in the last bit.
    """
    xm = np.round(grid.x_coords() * 1000.0).astype(np.int64)[None, :]
    ym = np.round(grid.y_coords() * 1000.0).astype(np.int64)[:, None]
    return xm, ym


def _date_seconds(dates: np.ndarray) -> np.ndarray:
    return np.asarray(dates, dtype="datetime64[s]").astype(np.int64)


def _day_of_year(date: np.datetime64) -> float:
    start = date.astype("datetime64[Y]").astype("datetime64[s]")
    return float((date - start).astype(np.int64)) / _DAY_S


# ---------------------------------------------------------------------------------------------
# Public interface.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SyntheticTile:
    """One rendered time series of a grid, with its ground truth."""

    dates: np.ndarray  # datetime64[s] (t,)
    bands: np.ndarray  # uint16 (t, y, x, 13) L1C DN = reflectance * 10000, order L1C_BANDS; 0 where no data
    data_mask: np.ndarray  # bool (t, y, x): True inside the swath
    cloud_mask: np.ndarray  # bool (t, y, x): true cloud mask (cloud opacity >= 0.5), False outside the swath
    land_cover: np.ndarray  # uint8 (y, x) LULC codes
    shadow_mask: np.ndarray | None = None  # bool (t, y, x): true cloud shadow (shadow opacity >= 0.5, not cloud)
    scl: np.ndarray | None = None  # uint8 (t, y, x): Sen2Cor-like scene classification (see module docstring)


@dataclass(frozen=True)
class SyntheticScene:
    """A synthetic world, fully determined by its parameters. See the module docstring."""

    seed: int = 0
    first_year: int = 2023  # land cover of this year is the base map; each later year adds planted changes
    dates_per_year: int = 48  # approximate number of acquisitions in a year (irregular spacing)
    cloud_cover: float = 0.3  # mean fraction of cloudy pixels per frame, 0..1
    swath_edge_fraction: float = 0.15  # fraction of frames cut by a swath edge (no-data beyond it)
    change_fraction: float = 0.03  # approx fraction of area whose class changes from one year to the next
    patch_size_m: float = 500.0  # typical size of a land-cover patch
    collection: str = "L1C"  # "L2A": no B10, and a scene classification layer (see module docstring)

    @property
    def band_names(self) -> tuple[str, ...]:
        return L2A_BANDS if self.collection == "L2A" else L1C_BANDS

    # --- dates -----------------------------------------------------------------------------

    def acquisition_dates(self, year: int) -> np.ndarray:
        """Sorted, unique acquisition times within `year` (datetime64[s]), the same for every tile.

        A 5-day revisit grid with a random phase, of which `dates_per_year` slots are kept
        (the rest "lost", as to failed downloads or orbit gaps), each jittered by -1..+1 day,
        acquired between 10:00 and 11:00.
        """
        n_days = int((np.datetime64(f"{year + 1}-01-01") - np.datetime64(f"{year}-01-01")).astype(int))
        n = max(0, min(int(self.dates_per_year), n_days))
        step = 5.0 if n <= 0.8 * n_days / 5.0 else n_days / (n / 0.8)
        key = _key(self.seed, _CH_DATES, year)
        slots = np.arange(_unit64(_hash(key, -1)) * step, n_days, step)
        idx = np.arange(slots.size)
        kept = np.sort(np.argsort(_hash(key, 0, idx), kind="stable")[:n])
        jitter = (_hash(key, 1, idx) % np.uint64(3)).astype(np.int64) - 1 if step >= 3 else np.zeros_like(idx)
        day = np.clip(np.floor(slots).astype(np.int64) + jitter, 0, n_days - 1)
        seconds = day * _DAY_S + 36_000 + (_hash(key, 2, idx) % np.uint64(3600)).astype(np.int64)
        dates = np.datetime64(f"{year}-01-01T00:00:00", "s") + seconds[kept].astype("timedelta64[s]")
        return np.unique(dates)

    # --- land cover ------------------------------------------------------------------------

    def land_cover(self, grid: PixelGrid, year: int) -> np.ndarray:
        """uint8 (y, x) LULC codes of `year` (years before `first_year` get the base map)."""
        xm, ym = _world_mm(grid)
        return self._land_cover(xm, ym, year)

    def change_mask(self, grid: PixelGrid, year_from: int, year_to: int) -> np.ndarray:
        """bool (y, x): True exactly where the land cover of the two years differs."""
        xm, ym = _world_mm(grid)
        return self._land_cover(xm, ym, year_from) != self._land_cover(xm, ym, year_to)

    @property
    def _patch_mm(self) -> int:
        return int(round(self.patch_size_m * 1000))

    def _parcels(self, xm: np.ndarray, ym: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Farm parcels: rows of fixed height, each row cut into fields of its own width and offset.

        Returns the parcel hash (its identity) and its centre in mm, per pixel/point.
        """
        p = self._patch_mm
        height = max(p * 3 // 10, 1)
        min_w, max_w = max(p * 3 // 10, 1), max(p * 8 // 10, 2)
        key = _key(self.seed, _CH_PARCEL)
        row = ym // height
        row_hash = _hash(key, row)
        width = min_w + ((row_hash >> np.uint64(40)).astype(np.int64) * (max_w - min_w) >> 24)
        offset = (_hash(key, row, -1) % width.astype(np.uint64)).astype(np.int64)
        col = (xm - offset) // width
        parcel = _hash(key, row, col)
        return parcel, offset + col * width + width // 2, row * height + height // 2

    def _base_land_cover(self, xm: np.ndarray, ym: np.ndarray) -> np.ndarray:
        p = self._patch_mm
        seed = self.seed
        parcel, pcx, pcy = self._parcels(xm, ym)
        # Farmland vs natural land, decided per parcel so that farmland edges follow field edges.
        farmland = _fbm(_key(seed, _CH_REGION), pcx, pcy, 2 * p, 2) > _threshold(2, 0.5)
        u = _unit(_mix(parcel.copy()))
        farm = np.where(u < 0.86, CULTIVATED, np.where(u < 0.97, GRASSLAND, SHRUBLAND)).astype(np.uint8)
        # Natural land: forest where one field is high, else grassland or shrubland by a second field.
        forest = _fbm(_key(seed, _CH_FOREST), xm, ym, p, 3) > _threshold(3, 0.55)
        grass = _fbm(_key(seed, _CH_GRASS), xm, ym, p, 3) > _threshold(3, 0.55)
        natural = np.where(forest, FOREST, np.where(grass, GRASSLAND, SHRUBLAND)).astype(np.uint8)
        lc = np.where(farmland, farm, natural)
        # Settlements: noise sampled at 60 m block centres gives blocky, street-like outlines.
        block = 60_000
        xb, yb = (xm // block) * block + block // 2, (ym // block) * block + block // 2
        settlement = _fbm(_key(seed, _CH_SETTLE), xb, yb, 6 * p // 5, 2) > _threshold(2, 0.08)
        lc = np.where(settlement, ARTIFICIAL, lc)
        # Lakes: few, large, smooth bodies.
        lakes = _fbm(_key(seed, _CH_LAKE), xm, ym, 2 * p, 2) > _threshold(2, 0.045)
        # Rivers: ~40 m wide bands around the zero line of a coarse field. |n| / |grad n| is the
        # distance to that line in metres, which keeps the width constant.
        rkey, step = _key(seed, _CH_RIVER), 5_000
        n = _fbm(rkey, xm, ym, 4 * p, 2)
        gx = _fbm(rkey, xm + step, ym, 4 * p, 2) - _fbm(rkey, xm - step, ym, 4 * p, 2)
        gy = _fbm(rkey, xm, ym + step, 4 * p, 2) - _fbm(rkey, xm, ym - step, 4 * p, 2)
        rivers = n * n * F32((2 * step / 1000) ** 2) < F32(20.0**2) * (gx * gx + gy * gy)
        return np.where(lakes | rivers, WATER, lc).astype(np.uint8)

    def _change_geometry(self) -> tuple[int, float, float, float]:
        """Change lattice cell (mm), blob radius range (m) and probability that a cell holds a blob."""
        r_min = max(0.11 * self.patch_size_m, 55.0)
        r_max = 2.5 * r_min
        mean_area = np.pi * (r_max**3 - r_min**3) / (3 * (r_max - r_min))  # E[pi r^2], r uniform
        # Only part of a blob changes (pixels of its centre's class, changeable classes only):
        # aim higher by a factor measured on the default landscape.
        target = max(self.change_fraction, 0.0) * 1.6
        # Blobs (radius up to 1.25 r_max with the wobble) must stay inside their cell, whose
        # margins are 1.3 r_max: cell > 2.6 r_max.
        cell = max(2.8 * r_max, np.sqrt(mean_area * 0.4 / target) if target > 0 else 1e9)
        prob = min(1.0, target * cell * cell / mean_area)
        return int(round(cell * 1000)), r_min, r_max, prob

    def _change_cells(self, year: int, xm: np.ndarray, ym: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Change-cell index of each point. The lattice is shifted every year: blob centres lie in
        the middle of their cells, so a fixed lattice would keep hitting last year's blobs."""
        cell = self._change_geometry()[0]
        key = _key(self.seed, _CH_CHANGE, year)
        ox, oy = (int(_hash(key, i) % np.uint64(cell)) for i in (-1, -2))
        return (xm - ox) // cell, (ym - oy) // cell

    def _blob_params(self, year: int, cx: np.ndarray, cy: np.ndarray):
        """Change blob of each change cell: present?, centre (mm), radius (m), source and target class."""
        cell, r_min, r_max, prob = self._change_geometry()
        key = _key(self.seed, _CH_CHANGE, year)
        ox, oy = (int(_hash(key, i) % np.uint64(cell)) for i in (-1, -2))
        h = _hash(key, cx, cy)
        present = _unit(h) < F32(prob)
        radius = F32(r_min) + _unit(_hash(h, 1)) * F32(r_max - r_min)
        margin = int(1.3 * r_max * 1000)
        span = np.uint64(max(cell - 2 * margin, 1))
        centre_x = ox + cx * cell + margin + (_hash(h, 2) % span).astype(np.int64)
        centre_y = oy + cy * cell + margin + (_hash(h, 3) % span).astype(np.int64)
        choice = (_hash(h, 4) & np.uint64(3)).astype(np.intp)
        # The blob converts pixels of the class found at its centre in the previous year, so one
        # blob is one coherent change (e.g. a clearcut), not a mix of transitions.
        centre_x, centre_y = np.broadcast_arrays(centre_x, centre_y)
        source = np.zeros(centre_x.shape, np.uint8)
        if present.any():
            source[present] = self._land_cover(centre_x[present], centre_y[present], year - 1)
        return present, centre_x, centre_y, radius, source, _TRANSITION_T[source, choice]

    def _apply_changes(self, lc: np.ndarray, xm: np.ndarray, ym: np.ndarray, year: int) -> np.ndarray:
        r_min = self._change_geometry()[1]
        cx, cy = self._change_cells(year, xm, ym)
        if _is_grid(xm, ym):
            # Blob parameters on the few change cells of the grid, then gathered per pixel.
            ux = np.arange(int(cx.min()), int(cx.max()) + 1)
            uy = np.arange(int(cy.min()), int(cy.max()) + 1)
            params = self._blob_params(year, ux[None, :], uy[:, None])
            jx, jy = (cx - ux[0])[0][None, :], (cy - uy[0])[:, 0][:, None]
            present, centre_x, centre_y, radius, source, target = (
                np.broadcast_to(a, (uy.size, ux.size))[jy, jx] for a in params
            )
        else:
            present, centre_x, centre_y, radius, source, target = self._blob_params(year, cx, cy)
        dx = (xm - centre_x).astype(F32) * F32(0.001)
        dy = (ym - centre_y).astype(F32) * F32(0.001)
        # Irregular outlines: the radius wobbles by +-25 % with a noise field of the blob's scale.
        wobble = _fbm(_key(self.seed, _CH_WOBBLE, year), xm, ym, int(r_min * 1000), 2) * F32(0.25 / 1.5)
        reach = radius * (F32(1.0) + wobble)
        inside = present & (dx * dx + dy * dy < reach * reach) & (lc == source)
        return np.where(inside, target, lc)

    def _land_cover(self, xm: np.ndarray, ym: np.ndarray, year: int) -> np.ndarray:
        lc = self._base_land_cover(xm, ym)
        for y in range(self.first_year + 1, year + 1):
            lc = self._apply_changes(lc, xm, ym, y)
        return lc

    # --- rendering -------------------------------------------------------------------------

    def _cloud_params(self, date_s: int) -> tuple[int, float]:
        """Key of the date's cloud field and the fraction of the area it covers."""
        key = _key(self.seed, _CH_CLOUD, date_s)
        cc = float(np.clip(self.cloud_cover, 0.0, 1.0))
        if cc <= 0.0 or cc >= 1.0:
            return key, cc
        # Beta(cc, 1 - cc): mean cc, U-shaped, so that many dates are clear and some overcast.
        return key, float(special.betaincinv(cc, 1.0 - cc, _unit64(_hash(key, 0))))

    def _shadow_geometry(self, date_s: int) -> tuple[int, float]:
        """Horizontal cloud-to-shadow distance (mm) and sun azimuth (degrees) of a date."""
        date_key = _key(self.seed, _CH_DATE, date_s)
        dist = 600_000 + int(_hash(date_key, 1) % np.uint64(1_400_000))  # 0.6-2 km, in mm
        return dist, 150.0 + 20.0 * float(_unit64(_hash(date_key, 2)))

    def sun_angles(self, dates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Sun azimuth and zenith (degrees, float64 (t,)) of each date: the geometry of its shadows.

        The azimuth is the direction the shadows point away from; the zenith follows the season
        (30° at the June solstice, 65° at the December one), so that a date's clouds sit at
        shadow distance / tan(zenith), 0.3-3.5 km.
        """
        seconds = _date_seconds(np.asarray(dates).reshape(-1))
        azimuth = np.array([self._shadow_geometry(int(s))[1] for s in seconds], np.float64)
        doy = np.array([_day_of_year(np.datetime64(int(s), "s")) for s in seconds], np.float64)
        zenith = 47.5 - 17.5 * np.cos(2 * np.pi * (doy - 172.0) / 365.0)
        return azimuth, zenith

    def _cloud_opacity(self, key: int, cover: float, xm: np.ndarray, ym: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Opacity in [0, 1] (>= 0.5 on `cover` of the area) and thickness in [0, 1]."""
        if cover <= 0.0:
            zero = np.zeros(np.broadcast_shapes(xm.shape, ym.shape), F32)
            return zero, zero
        n = _fbm(key, xm, ym, 4_000_000, 5)
        thr = _threshold(5, cover) if cover < 1.0 else F32(-10.0)
        # Semi-transparent edges: a ramp of 0.12 noise units, typically 50-150 m wide, wider (thin
        # haze) where the field is flat.
        opacity = _smoothstep(np.clip((n - thr) * F32(1 / 0.12) + F32(0.5), F32(0.0), F32(1.0)))
        thickness = np.clip((n - thr) * F32(1 / 0.3), F32(0.0), F32(1.0))
        return opacity, thickness

    def cloud_opacity(self, grid: PixelGrid, dates: np.ndarray) -> np.ndarray:
        """float32 (t, y, x) cloud opacity, 0 = clear, 1 = opaque (ground truth beyond `cloud_mask`)."""
        xm, ym = _world_mm(grid)
        out = np.zeros((len(dates), *grid.shape), F32)
        for i, s in enumerate(_date_seconds(dates)):
            out[i] = self._cloud_opacity(*self._cloud_params(int(s)), xm, ym)[0]
        return out

    def _swath_valid(self, date_s: int, xm: np.ndarray, ym: np.ndarray) -> np.ndarray | None:
        """bool (H, W) inside-swath mask of a date, or None if the whole world is covered."""
        key = _key(self.seed, _CH_DATE, date_s, 1)
        if _unit64(_hash(key, 0)) >= self.swath_edge_fraction:
            return None
        # Cross-track coordinate u for edges tilted ~12 degrees from north like the S2 ground
        # track; no data where u (mod period) falls in a stripe of 30-50 % of the period.
        theta = np.deg2rad(12.0 + 6.0 * (_unit64(_hash(key, 1)) - 0.5))
        period = _SWATH_PERIOD_M
        gap = period * (0.3 + 0.2 * _unit64(_hash(key, 2)))
        phase = period * _unit64(_hash(key, 3))
        # Reduce each axis modulo the period in float64 (1-D, cheap), combine in float32.
        ux = np.mod(xm * (np.cos(theta) / 1000) - phase, period).astype(F32)
        uy = np.mod(ym * (np.sin(theta) / 1000), period).astype(F32)
        return np.mod(ux - uy, F32(period)) >= F32(gap)

    def render(self, grid: PixelGrid, year: int, dates: np.ndarray | None = None) -> SyntheticTile:
        """Render the L1C time series of `grid` for `year` (all of its acquisition dates by default).

        Memory is dominated by the uint16 output; the work is done one date at a time on
        float32 (y, x, 13) arrays.
        """
        dates = self.acquisition_dates(year) if dates is None else np.asarray(dates, dtype="datetime64[s]")
        xm, ym = _world_mm(grid)
        lc = self._land_cover(xm, ym, year)

        const = self._pixel_constants(lc, xm, ym, year)
        # Mixed pixels: where the class at the pixel's lower right corner differs from its centre's,
        # the pixel sees both, half and half (its label stays the centre's).
        corner = self._land_cover(xm + 5_000, ym - 5_000, year)
        mixed = corner != lc
        if mixed.any():
            other = self._pixel_constants(corner, xm, ym, year)
            for name, value in const.items():
                if name != "pixel_hash":
                    w = mixed[..., None] if value.ndim == 3 else mixed
                    const[name] = np.where(w, (value + other[name]) * F32(0.5), value)
        n_t = len(dates)
        bands = np.zeros((n_t, *grid.shape, N_BANDS), np.uint16)
        data_mask = np.ones((n_t, *grid.shape), bool)
        cloud_mask = np.zeros((n_t, *grid.shape), bool)
        shadow_mask = np.zeros((n_t, *grid.shape), bool)
        for t, date_s in enumerate(_date_seconds(dates)):
            self._render_date(int(date_s), xm, ym, const, bands[t], data_mask[t], cloud_mask[t], shadow_mask[t])
        scl = None
        if self.collection == "L2A":
            bands = bands[..., L2A_INDEX]
            scl = _scene_classification(bands, data_mask, cloud_mask, shadow_mask, lc)
        return SyntheticTile(
            dates=dates,
            bands=bands,
            data_mask=data_mask,
            cloud_mask=cloud_mask,
            land_cover=lc,
            shadow_mask=shadow_mask,
            scl=scl,
        )

    def _pixel_constants(self, lc: np.ndarray, xm: np.ndarray, ym: np.ndarray, year: int) -> dict[str, np.ndarray]:
        """Per-pixel, date-independent inputs of the rendering of `year`: spectra (in DN) and phenology."""
        seed = self.seed
        # Fodder parcels: farmland with a meadow's phenology (spectrally a grassland).
        parcel = self._parcels(xm, ym)[0]
        crop = lc == CULTIVATED
        u1, u2, u3, u4 = (_unit(_hash(parcel, i)) for i in range(4))
        fodder = crop & (u4 < F32(_FODDER_SHARE))
        pheno_class = np.where(fodder, GRASSLAND, lc)  # also its spectra: a fodder field is a meadow
        base, amp, sos, k_up, eos, k_down = (np.ascontiguousarray(_PHENO_T[pheno_class, i]) for i in range(6))
        shift = _fbm(_key(seed, _CH_PHENO), xm, ym, self._patch_mm, 2) * F32(8.0)  # +-8 days, regional
        # Natural patches differ in vigour and dryness: about +-25 % amplitude, +-0.04 NDVI base.
        vigour = _fbm(_key(seed, _CH_PHENO, 1), xm, ym, self._patch_mm, 2)
        dryness = _fbm(_key(seed, _CH_PHENO, 2), xm, ym, self._patch_mm, 2)
        natural = ~crop | fodder
        amp = np.where(natural, amp * (F32(1.0) + F32(0.25) * vigour), amp)
        base = np.where(natural, base + F32(0.03) * dryness, base)
        # Each year has its own spring and vigour per class: -4..+4 days, -5..+5 % amplitude.
        year_u = _unit(_hash(seed, _CH_PHENO, year, np.arange(256)))
        year_v = _unit(_hash(seed, _CH_PHENO, year, np.arange(256), 1))
        shift = shift + (year_u[pheno_class] - F32(0.5)) * F32(8.0)
        amp = amp * (F32(0.95) + F32(0.1) * year_v[pheno_class])
        texture = F32(1.0) + F32(0.05) * _fbm(_key(seed, _CH_TEXTURE), xm, ym, 40_000, 2)
        # Natural patches differ in brightness too (soil, litter, stand density): +-10 %.
        texture = np.where(natural, texture * (F32(1.0) + F32(0.08) * dryness), texture)
        # Cultivated parcels: each field has its own crop calendar (40 % summer crops) and soil brightness.
        summer_crop = crop & ~fodder & (u1 < 0.4)
        sos = np.where(summer_crop, sos + F32(35.0), sos)
        eos = np.where(summer_crop, eos + F32(50.0), eos)
        shift = np.where(crop, shift + (u2 - F32(0.5)) * F32(30.0), shift)
        texture = np.where(crop, texture * (F32(0.85) + F32(0.3) * u3), texture)
        # Brightness texture scales background and vegetation alike, so it is folded in once here.
        scale = (texture * F32(REFLECTANCE_SCALE))[..., None]
        background = _BACKGROUND_T[pheno_class] * scale  # (H, W, 13)
        veg_diff = _VEG_DIFF_T[pheno_class] * scale
        return {
            "background": background,
            "veg_diff": veg_diff,
            "bg4": np.ascontiguousarray(background[..., B04]),
            "bg8": np.ascontiguousarray(background[..., B08]),
            "vd4": np.ascontiguousarray(veg_diff[..., B04]),
            "vd8": np.ascontiguousarray(veg_diff[..., B08]),
            "base": base,
            "amp": amp,
            "sos": sos + shift,
            "k_up": k_up,
            "eos": eos + shift,
            "k_down": k_down,
            "pixel_hash": _hash(seed, _CH_SENSOR, xm, ym),  # re-mixed with each date for sensor noise
        }

    def _render_date(self, date_s: int, xm, ym, c: dict, bands, data_mask, cloud_mask, shadow_mask) -> None:
        """Render one date into the (y, x, 13) DN slice `bands` and its three (y, x) masks.

        All spectra are in DN (reflectance * 10000) so that no final scaling pass is needed.
        """
        date_key = _key(self.seed, _CH_DATE, date_s)
        haze = 0.8 + 0.5 * _unit64(_hash(date_key, 0))
        path = _PATH * F32(haze * REFLECTANCE_SCALE)

        # Vegetation fraction that makes TOA NDVI follow the phenology curve, solved exactly
        # (NDVI is a ratio of two linear functions of the fraction), then clipped to [0, 1].
        doy = F32(_day_of_year(np.datetime64(date_s, "s")))
        ndvi = c["base"] + c["amp"] * (
            special.expit((doy - c["sos"]) / c["k_up"]) - special.expit((doy - c["eos"]) / c["k_down"])
        )
        plus, minus = F32(1.0) + ndvi, F32(1.0) - ndvi
        num = plus * (c["bg4"] + path[B04]) - minus * (c["bg8"] + path[B08])
        den = minus * c["vd8"] - plus * c["vd4"]
        frac = np.clip(num / den, F32(0.0), F32(1.0))

        refl = c["veg_diff"] * frac[..., None]
        refl += c["background"]

        # Clouds, and their shadows: the cloud field seen from a point offset towards the sun.
        cloud_key, cover = self._cloud_params(date_s)
        opacity, thickness = self._cloud_opacity(cloud_key, cover, xm, ym)
        shadow = None
        if cover > 0.0:
            dist, azimuth_deg = self._shadow_geometry(date_s)
            azimuth = np.deg2rad(azimuth_deg)
            sx, sy = int(dist * np.sin(azimuth)), int(dist * np.cos(azimuth))
            shadow = self._cloud_opacity(cloud_key, cover, xm + sx, ym + sy)[0]
            if shadow.any():
                refl *= (F32(1.0) - F32(0.6) * shadow)[..., None]
        refl += path
        if opacity.any():
            refl *= (F32(1.0) - opacity)[..., None]
            refl += (opacity * (F32(0.85) + F32(0.3) * thickness))[..., None] * (_CLOUD * F32(REFLECTANCE_SCALE))

        # Sensor noise: 4 hashes per pixel and date, viewed as 16 signed 16-bit uniform numbers.
        z = c["pixel_hash"][..., None] + (np.uint64(_hash(date_key, 3)) + np.arange(4, dtype=np.uint64) * _GOLDEN)
        noise = _mix(z).view(np.int16)[..., :N_BANDS].astype(F32)
        noise *= refl * (_NOISE_REL / F32(32768.0)) + _NOISE_ABS * F32(REFLECTANCE_SCALE / 32768.0)
        refl += noise
        refl += F32(0.5)  # the unsafe casts below truncate; this makes them round
        np.clip(refl, F32(1.0), F32(65535.0), out=refl)  # DN 0 is reserved for no data

        cloudy = opacity >= F32(0.5)
        shaded = ~cloudy & (shadow >= F32(0.5)) if shadow is not None else np.zeros_like(cloudy)
        valid = self._swath_valid(date_s, xm, ym)
        if valid is None:
            np.copyto(bands, refl, casting="unsafe")
            cloud_mask[...] = cloudy
            shadow_mask[...] = shaded
        else:
            np.copyto(bands, refl, casting="unsafe", where=valid[..., None])
            data_mask[...] = valid
            cloud_mask[...] = cloudy & valid
            shadow_mask[...] = shaded & valid

    # --- reference data --------------------------------------------------------------------

    def reference_polygons(
        self, grid: PixelGrid, year: int, fraction: float = 1.0, label_noise: float = 0.0
    ) -> gpd.GeoDataFrame:
        """Land cover of `year` as polygons (`LULC_ID`, `LULC_NAME`, geometry) in `grid.crs`.

        With `fraction` < 1 a seeded random subset is kept, chosen per polygon from its world
        position, as real reference data only covers part of the area. With `label_noise` > 0
        about that share of the polygons up to 10 ha is mislabelled, as a surveyor would: with
        the class it is most easily confused with (`_CONFUSED_WITH`; water never).
        """
        lc = self.land_cover(grid, year)
        geoms, codes = [], []
        for geom, value in features.shapes(lc, transform=grid.affine):
            geoms.append(shape(geom))
            codes.append(int(value))
        gdf = gpd.GeoDataFrame(
            {"LULC_ID": np.array(codes, dtype=np.int64), "LULC_NAME": [LULC_NAMES[c] for c in codes]},
            geometry=geoms,
            crs=grid.crs,
        )
        corner = np.round(gdf.geometry.bounds[["minx", "maxy"]].to_numpy() * 1000).astype(np.int64)
        if label_noise > 0.0 and len(gdf):
            u = _unit64(_hash(self.seed, _CH_REFERENCE, year, corner[:, 0], corner[:, 1], 1))
            codes = gdf["LULC_ID"].to_numpy()
            wrong = (u < label_noise) & (gdf.geometry.area.to_numpy() <= _NOISE_MAX_AREA_M2)
            wrong &= np.isin(codes, list(_CONFUSED_WITH))
            codes = np.where(wrong, [_CONFUSED_WITH.get(int(c), int(c)) for c in codes], codes)
            gdf["LULC_ID"] = codes.astype(np.int64)
            gdf["LULC_NAME"] = [LULC_NAMES[int(c)] for c in codes]
        if fraction < 1.0 and len(gdf):
            u = _unit64(_hash(self.seed, _CH_REFERENCE, year, corner[:, 0], corner[:, 1]))
            gdf = gdf[u < fraction].reset_index(drop=True)
        return gdf


def _scene_classification(bands, data_mask, cloud_mask, shadow_mask, lc) -> np.ndarray:
    """uint8 (t, y, x) Sen2Cor-like SCL of L2A bands (L2A_BANDS order) from the true masks."""
    red = bands[..., L2A_BANDS.index("B04")].astype(F32)
    nir = bands[..., L2A_BANDS.index("B08")].astype(F32)
    ndvi = (nir - red) / np.maximum(nir + red, F32(1))
    scl = np.where(ndvi > F32(0.4), SCL_VEGETATION, SCL_NOT_VEGETATED).astype(np.uint8)
    scl[:, lc == WATER] = SCL_WATER
    thick = cloud_mask & (bands[..., L2A_BANDS.index("B02")] > 3000)  # bright, opaque cores
    scl[shadow_mask] = SCL_SHADOW
    scl[cloud_mask] = SCL_CLOUD_MEDIUM
    scl[thick] = SCL_CLOUD_HIGH
    scl[~data_mask] = SCL_NO_DATA
    return scl


class SyntheticSource:
    """The generator behind the download stage's source interface (`tasks.download.sources.BandSource`).

    Besides bands it delivers the layers the cloud masks may need (`read_layers`): the sun's
    angles of each date ("sun") and, for L2A, the scene classification ("SCL").
    """

    def __init__(self, scene: SyntheticScene):
        self.scene = scene
        self.band_names: tuple[str, ...] = scene.band_names
        self.layers: tuple[str, ...] = ("sun", "SCL") if scene.collection == "L2A" else ("sun",)

    def acquisition_dates(self, grid: PixelGrid, year: int) -> np.ndarray:
        return self.scene.acquisition_dates(year)

    def read(self, grid: PixelGrid, dates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        bands, data_mask, _ = self.read_layers(grid, dates, ())
        return bands, data_mask

    def read_layers(self, grid: PixelGrid, dates: np.ndarray, layers=()) -> tuple[np.ndarray, np.ndarray, dict]:
        """Bands, data mask and the requested `layers` ("sun": float64 (t, 2) azimuth and zenith in
        degrees; "SCL": uint8 (t, y, x), L2A only) of `grid` at `dates`."""
        unknown = set(layers) - set(self.layers)
        if unknown:
            raise ValueError(f"the synthetic {self.scene.collection} source has no layers {sorted(unknown)}")
        extra = {}
        if "sun" in layers:
            extra["sun"] = np.stack(self.scene.sun_angles(dates), axis=-1).reshape(-1, 2)
        if not len(dates):
            if "SCL" in layers:
                extra["SCL"] = np.zeros((0, *grid.shape), np.uint8)
            return np.zeros((0, *grid.shape, len(self.band_names)), np.uint16), np.zeros((0, *grid.shape), bool), extra
        year = int(np.datetime_as_string(dates[0], unit="Y"))
        tile = self.scene.render(grid, year, dates)
        if "SCL" in layers:
            extra["SCL"] = tile.scl
        return tile.bands, tile.data_mask, extra


def area_reference_polygons(
    scene: SyntheticScene, tile_grids: list[PixelGrid], year: int, fraction: float = 1.0, label_noise: float = 0.0
):
    """The scene's reference polygons over several tiles, in WGS84 (tiles may lie in several UTM zones).

    One raster per CRS covers the union of that CRS's tiles, so polygons are not cut at tile edges.
    """
    frames = []
    for crs in sorted({g.crs for g in tile_grids}):
        bounds = np.array([g.bounds for g in tile_grids if g.crs == crs])
        area = (bounds[:, 0].min(), bounds[:, 1].min(), bounds[:, 2].max(), bounds[:, 3].max())
        resolution = min(g.resolution for g in tile_grids if g.crs == crs)
        grid = PixelGrid.from_bounds(crs, area, resolution)
        frames.append(scene.reference_polygons(grid, year, fraction, label_noise))
    merged = gpd.GeoDataFrame(
        {col: np.concatenate([f[col].to_numpy() for f in frames]) for col in ("LULC_ID", "LULC_NAME")},
        geometry=gpd.GeoSeries(np.concatenate([f.geometry.to_crs("EPSG:4326").to_numpy() for f in frames])),
        crs="EPSG:4326",
    )
    return merged
