"""Cloud shadows: the cloud mask projected away from the sun, matched to dark pixels.

Method (after Fmask's shadow matching, Zhu & Woodcock 2012, and the shadow step of
s2cloudless's Earth Engine tutorial; our own code):

1. **Dark pixels** (`dark_pixels`), at the data resolution. A shadow dims NIR (B08) and SWIR
   (B11) by the same factor, so a pixel is dark when both are below `shadow_darkness` times
   the pixel's own clear-sky reference: the brighter of its nearest cloud-free dates before
   and after (nearest in time, so that the season's NIR is the reference, not the year's
   median; the brighter one, so that one shadow missed there does not spoil it). Water, dark
   forest and dark soil are dark every date and so are not shadow; a pixel with fewer than
   three clear dates falls back to absolute thresholds (NIR < 0.15 and SWIR < 0.12, and not
   water: B03 < B08).
2. **Projection**, on cells of `cell_m` (40 m). A cloud at height h casts its shadow
   h · tan(sun zenith) away from the sun's azimuth. Each cloud object (8-connected cloud
   cells) is shifted over the heights in `shadow_cloud_heights_m`, in steps of one cell;
   the shift whose footprint (where it leaves the cloud, inside the tile) holds the largest
   fraction of dark pixels is the object's height, kept if that fraction is at least `MIN_MATCH`. The shadow
   zone is the object shifted there, and over the run of neighbouring shifts that score
   within `PLATEAU` of it (dark ground stretching on makes them equally likely), one step
   more either side, grown by one cell.
3. **Shadow** = shadow zone ∩ dark ∩ in swath ∩ not cloud, at the data resolution.

Sun angles come from the source (scene metadata), else `sun_position` computes them from the
acquisition time and the tile's centre.

Tiles: the projection works on the whole tile's cloud mask and, with a **margin**, on clouds
beyond the tile's edges too, whose shadows fall into the tile. The margin (`TileShadows.margin`)
reaches as far as the highest cloud height's shadow of any date, towards the sun only, plus
one cell, at most `MAX_MARGIN_M`; the download stage detects the clouds there on a coarse grid
(`MARGIN_RESOLUTION_M`, read from the source: tasks/download/masks.py's `margin_clouds`) and
`TileShadows.set_margin` adds them to the projection. Dark pixels are only known inside the
tile, so a cloud beyond the edge is matched on the part of its shadow that falls inside.
Without the margin (`tile_edge_context: false`) clouds outside the tile cast no shadow into it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

from lcms.config import CloudMaskConfig
from lcms.geometry import PixelGrid
from lcms.sentinel2 import REFLECTANCE_SCALE

F32 = np.float32

#: Least fraction of dark pixels in a cloud's shifted footprint for a match.
MIN_MATCH = 0.3
#: Shifts scoring within this of the best one are kept too (see `shadow_zone`).
PLATEAU = 0.1
#: Clear dates a pixel needs for its own darkness reference; fewer: absolute thresholds.
MIN_CLEAR_DATES = 3
ABSOLUTE_NIR, ABSOLUTE_SWIR = 0.15, 0.12
#: The shadow margin reaches at most this far beyond a tile's edges (metres).
MAX_MARGIN_M = 6000.0
#: Pixel size of the coarse grid the margin's clouds are detected on (metres).
MARGIN_RESOLUTION_M = 160.0


# --------------------------------------------------------------------------- sun


def sun_position(times: np.ndarray, lon: float, lat: float) -> tuple[np.ndarray, np.ndarray]:
    """Sun azimuth (degrees clockwise from north) and zenith (degrees) at UTC `times`
    (datetime64) seen from `lon`, `lat` (degrees): the Astronomical Almanac's low-precision
    formulas (about 0.01°), without refraction."""
    t = np.asarray(times, dtype="datetime64[s]").astype(np.int64).astype(np.float64)
    n = t / 86_400.0 - 10_957.5  # days since J2000.0 (2000-01-01 12:00 UTC)
    mean_lon = np.deg2rad((280.460 + 0.9856474 * n) % 360.0)
    anomaly = np.deg2rad((357.528 + 0.9856003 * n) % 360.0)
    ecl_lon = mean_lon + np.deg2rad(1.915) * np.sin(anomaly) + np.deg2rad(0.020) * np.sin(2 * anomaly)
    obliquity = np.deg2rad(23.439 - 0.0000004 * n)
    ra = np.arctan2(np.cos(obliquity) * np.sin(ecl_lon), np.cos(ecl_lon))
    dec = np.arcsin(np.sin(obliquity) * np.sin(ecl_lon))
    gmst_h = (18.697374558 + 24.06570982441908 * n) % 24.0
    hour_angle = np.deg2rad(gmst_h * 15.0 + lon) - ra
    phi = np.deg2rad(lat)
    cos_zenith = np.sin(phi) * np.sin(dec) + np.cos(phi) * np.cos(dec) * np.cos(hour_angle)
    zenith = np.rad2deg(np.arccos(np.clip(cos_zenith, -1.0, 1.0)))
    azimuth = np.rad2deg(np.arctan2(-np.sin(hour_angle), np.tan(dec) * np.cos(phi) - np.sin(phi) * np.cos(hour_angle)))
    return azimuth % 360.0, zenith


def grid_lonlat(grid: PixelGrid) -> tuple[float, float]:
    """Longitude and latitude of a grid's centre."""
    from pyproj import Transformer

    minx, miny, maxx, maxy = grid.bounds
    to_lonlat = Transformer.from_crs(grid.crs, "EPSG:4326", always_xy=True)
    lon, lat = to_lonlat.transform((minx + maxx) / 2, (miny + maxy) / 2)
    return float(lon), float(lat)


def fill_sun_angles(sun: np.ndarray, dates: np.ndarray, grid: PixelGrid) -> np.ndarray:
    """(t, 2) azimuth and zenith: `sun`'s, with NaN rows computed by `sun_position`."""
    sun = np.array(sun, np.float64).reshape(-1, 2)
    missing = ~np.isfinite(sun).all(axis=1)
    if missing.any():
        azimuth, zenith = sun_position(np.asarray(dates)[missing], *grid_lonlat(grid))
        sun[missing] = np.stack([azimuth, zenith], axis=-1)
    return sun


# --------------------------------------------------------------------------- dark pixels


def dark_pixels(
    bands: np.ndarray, band_names: Sequence[str], data_mask: np.ndarray, clear: np.ndarray, cfg: CloudMaskConfig
) -> np.ndarray:
    """bool (t, y, x): pixels dark enough in NIR and SWIR to be in shadow (see the module docstring).

    bands: uint16 DN (t, y, x, b); clear: bool (t, y, x), in swath and not cloud.
    """
    names = list(band_names)
    nir, swir = bands[..., names.index("B08")], bands[..., names.index("B11")]
    clear = clear & data_mask
    n_clear = clear.sum(axis=0)
    dark = np.zeros(data_mask.shape, bool)
    relative = n_clear >= MIN_CLEAR_DATES
    if relative.any():
        k = F32(cfg.shadow_darkness)
        for band in (nir, swir):
            ref = _neighbour_reference(band, clear)  # 0 where no clear date before or after
            below = band.astype(F32) < k * ref.astype(F32)
            dark = below if band is nir else dark & below
        dark &= relative
    if not relative.all():
        green = bands[..., names.index("B03")]
        scale = F32(REFLECTANCE_SCALE)
        absolute = (nir < F32(ABSOLUTE_NIR) * scale) & (swir < F32(ABSOLUTE_SWIR) * scale) & (green < nir)
        dark |= absolute & ~relative
    return dark & data_mask


def _neighbour_reference(band: np.ndarray, clear: np.ndarray) -> np.ndarray:
    """uint16 (t, y, x): for each date, the larger of the pixel's values at its nearest clear
    dates before and after it (the date itself excluded; 0 where there is none)."""
    out = np.zeros(band.shape, band.dtype)
    last = np.zeros(band.shape[1:], band.dtype)
    for t in range(len(band)):
        out[t] = last
        np.copyto(last, band[t], where=clear[t])
    last[:] = 0
    for t in range(len(band) - 1, -1, -1):
        np.maximum(out[t], last, out=out[t])
        np.copyto(last, band[t], where=clear[t])
    return out


# --------------------------------------------------------------------------- projection


def _shifts(azimuth: float, zenith: float, cfg: CloudMaskConfig, cell_m: float) -> list[tuple[int, int]]:
    """(drow, dcol) cell shifts from a cloud to its shadow, over the cloud heights, one cell apart."""
    tan_z = math.tan(math.radians(min(zenith, 85.0)))
    h_min, h_max = cfg.shadow_cloud_heights_m
    d_min, d_max = h_min * tan_z, h_max * tan_z
    n = max(int(math.ceil((d_max - d_min) / cell_m)), 0) + 1
    az = math.radians(azimuth)
    shifts = []
    for i in range(n):
        d = (d_min + (d_max - d_min) * i / max(n - 1, 1)) / cell_m
        # Away from the sun: rows grow southwards, columns eastwards.
        shift = (int(round(d * math.cos(az))), int(round(-d * math.sin(az))))
        if not shifts or shift != shifts[-1]:
            shifts.append(shift)
    return shifts


def shadow_zone(
    cloud: np.ndarray, dark_fraction: np.ndarray, valid: np.ndarray, azimuth: float, zenith: float,
    cfg: CloudMaskConfig, cell_m: float,
) -> np.ndarray:  # fmt: skip
    """bool (hc, wc): cells where matched clouds cast their shadow (see the module docstring).

    cloud: bool cells holding cloud; dark_fraction: float32 fraction of dark pixels per cell;
    valid: bool cells with data.
    """
    zone = np.zeros(cloud.shape, bool)
    if not cloud.any() or not (np.isfinite(azimuth) and np.isfinite(zenith)) or zenith >= 89.0:
        return zone
    n_labels, labels = cv2.connectedComponents(cloud.view(np.uint8), connectivity=8)
    ys, xs = np.nonzero(cloud)
    lab = labels[ys, xs]
    hc, wc = cloud.shape
    shifts = _shifts(azimuth, zenith, cfg, cell_m)
    scores = np.zeros((len(shifts), n_labels))
    seen_cells = np.zeros((len(shifts), n_labels))
    for i, (dy, dx) in enumerate(shifts):
        ty, tx = ys + dy, xs + dx
        inside = (ty >= 0) & (ty < hc) & (tx >= 0) & (tx < wc)
        ty, tx, lt = ty[inside], tx[inside], lab[inside]
        known = valid[ty, tx]
        seen = known & ~cloud[ty, tx]
        num = np.bincount(lt[seen], weights=dark_fraction[ty[seen], tx[seen]], minlength=n_labels)
        den = np.bincount(lt[seen], minlength=n_labels)
        # A footprint mostly hidden under clouds is no evidence. Only the part with data counts
        # (a cloud of the margin beyond the tile casts only part of its shadow into the tile).
        enough = den >= np.maximum(0.05 * np.bincount(lt[known], minlength=n_labels), 3.0)
        scores[i] = np.where(enough, num / np.maximum(den, 1), 0.0)
        seen_cells[i] = den
    # Nor is a footprint of which much less is seen than at other heights: a big cloud's footprint
    # at a low height lies mostly under the cloud itself, and its few visible cells are its edge.
    scores[seen_cells < 0.5 * seen_cells.max(axis=0)] = 0.0
    best = scores.argmax(axis=0)
    matched = scores[best, np.arange(n_labels)] >= MIN_MATCH
    matched[0] = False  # label 0 is the background
    for label in np.nonzero(matched)[0]:
        sel = lab == label
        # Where dark ground stretches on (other clouds' shadows), neighbouring heights score as
        # well: keep the whole run of shifts within PLATEAU of the best, and one more each side.
        good = scores[:, label] >= scores[best[label], label] - PLATEAU
        lo = hi = best[label]
        while lo > 0 and good[lo - 1]:
            lo -= 1
        while hi < len(shifts) - 1 and good[hi + 1]:
            hi += 1
        for i in range(max(lo - 1, 0), min(hi + 2, len(shifts))):
            dy, dx = shifts[i]
            ty, tx = ys[sel] + dy, xs[sel] + dx
            inside = (ty >= 0) & (ty < hc) & (tx >= 0) & (tx < wc)
            zone[ty[inside], tx[inside]] = True
    if zone.any():
        zone = cv2.dilate(zone.view(np.uint8), np.ones((3, 3), np.uint8)).view(bool)
    return zone


class TileShadows:
    """Cloud shadows of one tile, built block by block (the download stage's blocks).

    `add` takes each block's cloud mask, data mask and bands once; `finish` matches the clouds
    to dark pixels over the whole tile; `masks` then gives each block's shadow mask. Per pixel
    it keeps three bits (dark, cloud, data) per date, packed: 3/8 byte per pixel and date.
    """

    def __init__(self, grid: PixelGrid, n_dates: int, sun: np.ndarray, band_names: Sequence[str], cfg: CloudMaskConfig):
        self.grid, self.cfg, self.band_names = grid, cfg, tuple(band_names)
        self.sun = np.asarray(sun, np.float64).reshape(n_dates, 2)
        self.cell = max(1, int(round(cfg.shadow_cell_m / grid.resolution)))
        self.cell_m = self.cell * grid.resolution
        h, w = grid.shape
        cells = (n_dates, -(-h // self.cell), -(-w // self.cell))
        self.cloud_cells = np.zeros(cells, bool)
        self.dark_count = np.zeros(cells, np.uint32)
        self.data_count = np.zeros(cells, np.uint32)
        self.bits = {name: np.zeros((n_dates, h, -(-w // 8)), np.uint8) for name in ("dark", "cloud", "data")}
        self.zones: np.ndarray | None = None
        self.pad = (0, 0, 0, 0)  # margin cells beyond the top, bottom, left and right edges
        self.margin_cloud: np.ndarray | None = None  # bool (t, top + hc + bottom, left + wc + right)

    def margin(self) -> tuple[int, int, int, int]:
        """Cells beyond the tile's (top, bottom, left, right) edges whose clouds can cast a shadow
        into the tile: the largest shift of any date towards the sun, plus one cell (the zone's
        dilation), at most `MAX_MARGIN_M`. Needs `sun`."""
        pad = np.zeros(4, np.int64)
        for azimuth, zenith in self.sun:
            if not (np.isfinite(azimuth) and np.isfinite(zenith)) or zenith >= 89.0:
                continue
            for dy, dx in _shifts(azimuth, zenith, self.cfg, self.cell_m):
                # A cloud at cell p shades p + (dy, dx): it lies -dy, -dx from the shade.
                pad = np.maximum(pad, (dy, -dy, dx, -dx))
        cap = int(math.ceil(MAX_MARGIN_M / self.cell_m))
        pad = np.where(pad > 0, np.minimum(pad + 1, cap), 0)
        return tuple(int(p) for p in pad)

    def margin_grid(self, pad: tuple[int, int, int, int], resolution_m: float = MARGIN_RESOLUTION_M) -> PixelGrid:
        """A grid of `resolution_m` pixels on its CRS's lattice covering the tile grown by `pad` cells."""
        top, bottom, left, right = pad
        a, _, c, _, e, f = self.grid.transform
        hc, wc = self.cloud_cells.shape[1:]
        x0, x1 = c - left * self.cell_m, c + (wc + right) * self.cell_m
        y1, y0 = f + top * self.cell_m, f - (hc + bottom) * self.cell_m
        r = float(resolution_m)
        gx0, gx1 = math.floor(x0 / r) * r, math.ceil(x1 / r) * r
        gy0, gy1 = math.floor(y0 / r) * r, math.ceil(y1 / r) * r
        return PixelGrid(self.grid.crs, (r, 0.0, gx0, 0.0, -r, gy1), (round((gy1 - gy0) / r), round((gx1 - gx0) / r)))

    def margin_needed(self, grid: PixelGrid) -> np.ndarray:
        """bool (t, y, x): the pixels of `grid` (a `margin_grid`) outside the tile whose clouds can
        shade the tile on each date (over that date's cloud heights, plus the zone's extra step
        and dilation): the margin's detector need not look elsewhere."""
        need = np.zeros((len(self.sun), *grid.shape), bool)
        a, _, c, _, e, f = self.grid.transform
        minx, maxx, maxy, miny = c, c + a * self.grid.width, f, f + e * self.grid.height
        ga, _, gc, _, ge, gf = grid.transform
        grow = 2 * self.cell_m
        for t, (azimuth, zenith) in enumerate(self.sun):
            if not (np.isfinite(azimuth) and np.isfinite(zenith)) or zenith >= 89.0:
                continue
            for dy, dx in _shifts(azimuth, zenith, self.cfg, self.cell_m):
                # The tile's box moved back from the shade to the cloud: x - dx, y + dy cells.
                x0, x1 = minx - dx * self.cell_m - grow, maxx - dx * self.cell_m + grow
                y0, y1 = miny + dy * self.cell_m - grow, maxy + dy * self.cell_m + grow
                c0, c1 = max(math.floor((x0 - gc) / ga), 0), min(math.ceil((x1 - gc) / ga), grid.width)
                r0, r1 = max(math.floor((y1 - gf) / ge), 0), min(math.ceil((y0 - gf) / ge), grid.height)
                need[t, r0:r1, c0:c1] = True
        # Pixels wholly inside the tile: the tile's own cloud mask is used there.
        c0, c1 = math.ceil((minx - gc) / ga), math.floor((maxx - gc) / ga)
        r0, r1 = math.ceil((maxy - gf) / ge), math.floor((miny - gf) / ge)
        need[:, max(r0, 0) : max(r1, 0), max(c0, 0) : max(c1, 0)] = False
        return need

    def set_margin(self, pad: tuple[int, int, int, int], grid: PixelGrid, cloud: np.ndarray) -> None:
        """Clouds beyond the tile's edges: bool (t, y, x) `cloud` on `grid` (e.g. `margin_grid(pad)`),
        sampled at the centres of the margin's cells (`pad` cells beyond each edge)."""
        top, bottom, left, right = pad
        hc, wc = self.cloud_cells.shape[1:]
        a, _, c, _, e, f = self.grid.transform
        ga, _, gc, _, ge, gf = grid.transform
        x = c + a * self.cell * (np.arange(-left, wc + right) + 0.5)
        y = f + e * self.cell * (np.arange(-top, hc + bottom) + 0.5)
        col = np.floor((x - gc) / ga).astype(np.int64)
        row = np.floor((y - gf) / ge).astype(np.int64)
        inside = (row[:, None] >= 0) & (row[:, None] < grid.height) & (col[None, :] >= 0) & (col[None, :] < grid.width)
        rows, cols = np.clip(row, 0, grid.height - 1), np.clip(col, 0, grid.width - 1)
        self.pad = tuple(int(p) for p in pad)
        self.margin_cloud = np.asarray(cloud, bool)[:, rows[:, None], cols[None, :]] & inside

    def add(self, region: tuple[slice, slice], bands: np.ndarray, data_mask: np.ndarray, cloud: np.ndarray) -> None:
        """One block: uint16 bands (t, y, x, b), bool data_mask and cloud (t, y, x) of `region`.

        Blocks must start on multiples of 8 pixels and of the cell (the stage's blocks are
        multiples of 256)."""
        rows, cols = region
        if rows.start % self.cell or cols.start % self.cell or cols.start % 8:
            raise ValueError(f"block {region} must start on a multiple of 8 and of {self.cell} pixels")
        dark = dark_pixels(bands, self.band_names, data_mask, data_mask & ~cloud, self.cfg)
        for name, value in (("dark", dark), ("cloud", cloud), ("data", data_mask)):
            packed = np.packbits(value, axis=-1)
            self.bits[name][:, rows, cols.start // 8 : cols.start // 8 + packed.shape[-1]] = packed
        crows = slice(rows.start // self.cell, -(-rows.stop // self.cell))
        ccols = slice(cols.start // self.cell, -(-cols.stop // self.cell))
        for t in range(data_mask.shape[0]):
            self.cloud_cells[t, crows, ccols] = _cell_sum(cloud[t], self.cell) > 0
            self.dark_count[t, crows, ccols] = _cell_sum(dark[t], self.cell)
            self.data_count[t, crows, ccols] = _cell_sum(data_mask[t], self.cell)

    def finish(self) -> None:
        """Match every date's clouds to their shadows (needs every block added)."""
        self.zones = np.zeros(self.cloud_cells.shape, bool)
        top, bottom, left, right = self.pad
        hc, wc = self.cloud_cells.shape[1:]
        tile = (slice(top, top + hc), slice(left, left + wc))
        for t in range(len(self.zones)):
            margin = self.margin_cloud is not None and self.margin_cloud[t].any()
            if not (self.cloud_cells[t].any() or margin):
                continue
            valid = self.data_count[t] > 0
            fraction = (self.dark_count[t] / np.maximum(self.data_count[t], 1).astype(F32)).astype(F32)
            cloud = self.cloud_cells[t]
            if self.margin_cloud is not None:
                # The tile inside its margin: dark pixels are known only inside the tile.
                cloud = self.margin_cloud[t].copy()
                cloud[tile] = self.cloud_cells[t]
                valid, fraction = _padded(valid, self.pad), _padded(fraction, self.pad)
            azimuth, zenith = self.sun[t]
            self.zones[t] = shadow_zone(cloud, fraction, valid, azimuth, zenith, self.cfg, self.cell_m)[tile]

    def masks(self, region: tuple[slice, slice]) -> np.ndarray:
        """bool (t, y, x) shadow mask of `region`: shadow zone ∩ dark ∩ data ∩ not cloud."""
        if self.zones is None:
            raise RuntimeError("TileShadows.finish() must run before masks()")
        rows, cols = region
        width = cols.stop - cols.start
        c0 = cols.start // 8

        def unpack(name):
            packed = self.bits[name][:, rows, c0 : c0 + -(-width // 8)]
            return np.unpackbits(packed, axis=-1, count=width).view(bool)

        r_cells = np.arange(rows.start, rows.stop) // self.cell
        c_cells = np.arange(cols.start, cols.stop) // self.cell
        zone = self.zones[:, r_cells[:, None], c_cells[None, :]]
        return zone & unpack("dark") & unpack("data") & ~unpack("cloud")


def _cell_sum(a: np.ndarray, cell: int) -> np.ndarray:
    """uint32 sums of a (h, w) array over cell × cell squares from (0, 0); partial far edges too."""
    h, w = a.shape
    hp, wp = -(-h // cell) * cell, -(-w // cell) * cell
    if (hp, wp) != (h, w):
        a = np.pad(a, ((0, hp - h), (0, wp - w)))
    return a.reshape(hp // cell, cell, wp // cell, cell).sum(axis=(1, 3), dtype=np.uint32)


def _padded(a: np.ndarray, pad: tuple[int, int, int, int]) -> np.ndarray:
    """`a` (hc, wc) with `pad` (top, bottom, left, right) cells of zeros around it."""
    top, bottom, left, right = pad
    return np.pad(a, ((top, bottom), (left, right)))
