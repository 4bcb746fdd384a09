"""The download stage's masks over one tile, block by block: clouds, cloud shadows, valid data.

`fill_tile` writes every array of a tile-year into an open store attempt (`TileWriter`), in
up to three passes over the tile's blocks:

1. **Bands** and data mask from the source, with the layers the cloud method needs in the
   same read (`read_layers`: the scene classification "SCL", Sentinel Hub's "CLM"/"CLP", the
   sun's angles "sun"). Methods `scl`, `sentinelhub` and `none` write their cloud masks here.
2. **s2cloudless** (method `s2cloudless`): each block with `cloud_mask.halo_px` of context
   on every side. Inside the tile the context is read back from the attempt; beyond the
   tile's edges (with `tile_edge_context`) it is read from the source, so that every analysis
   cell is whole and overlapping tiles compute the same masks in their overlap.
3. **Shadows and valid**: for `s2cloudless` and `sentinelhub`, the clouds of the whole tile
   are matched to dark pixels (tasks/download/shadow.py); with `tile_edge_context` so are the
   clouds of a margin beyond the tile's edges, towards the sun, as far as the highest cloud's
   shadow reaches (at most `shadow.MAX_MARGIN_M`), detected on a coarse grid read from the
   source (`margin_clouds`). For `scl` the shadows are the layer's class 3. valid = data and
   not cloud and (with `shadows`) not shadow.

The sun's angles come from the source where it has them, else from the acquisition time
(`shadow.sun_position`).
"""

from __future__ import annotations

import logging

import numpy as np

from lcms.config import CloudMaskConfig, DownloadConfig
from lcms.geometry import PixelGrid
from lcms.layout import SPATIAL_CHUNK
from tasks.download import cloud_mask, shadow
from tasks.download.errors import PermanentSourceError

log = logging.getLogger(__name__)

#: Scene classification (Sen2Cor SCL) classes masked as cloud, as cloud shadow, as snow.
SCL_CLOUD = (8, 9, 10)  # cloud medium probability, cloud high probability, thin cirrus
SCL_SHADOW = (3,)
SCL_SNOW = 11


def method_of(cfg: CloudMaskConfig) -> str:
    """The cloud method (an unset one is s2cloudless, as for the L1C default)."""
    return cfg.method or "s2cloudless"


def layers_for(cfg: CloudMaskConfig, source) -> tuple[str, ...]:
    """The layers to read with the bands for `cfg`'s method; PermanentSourceError if the source lacks one."""
    method = method_of(cfg)
    wanted = {"scl": ["SCL"], "sentinelhub": ["CLM", "CLP"]}.get(method, [])
    available = tuple(getattr(source, "layers", ()))
    missing = [name for name in wanted if name not in available]
    if missing:
        raise PermanentSourceError(
            f"download.cloud_mask.method {method} needs the layers {missing}, which this source does not deliver "
            f"(it has {list(available)}): choose s2cloudless for L1C, scl for L2A"
        )
    if cfg.shadows and method in ("s2cloudless", "sentinelhub") and "sun" in available:
        wanted.append("sun")  # else computed from the acquisition time
    return tuple(wanted)


def read_block(source, grid: PixelGrid, dates: np.ndarray, layers: tuple[str, ...]):
    """Bands, data mask and the requested layers (a dict) of `grid` at `dates`."""
    if layers:
        return source.read_layers(grid, dates, layers)
    bands, data_mask = source.read(grid, dates)
    return bands, data_mask, {}


def scl_masks(scl: np.ndarray, data_mask: np.ndarray, cfg: CloudMaskConfig):
    """Cloud probability (uint8: 100 cloud, 0 not, 255 no data), cloud and shadow masks from SCL."""
    classes = SCL_CLOUD + ((SCL_SNOW,) if cfg.scl_snow else ())
    cloud = np.isin(scl, classes) & data_mask
    shadow_mask = np.isin(scl, SCL_SHADOW) & data_mask & ~cloud
    prob = np.where(data_mask, np.where(cloud, 100, 0), cloud_mask.NO_DATA_PROB).astype(np.uint8)
    return prob, cloud, shadow_mask


def clm_masks(clm: np.ndarray, clp: np.ndarray, data_mask: np.ndarray):
    """Cloud probability (percent) and mask from Sentinel Hub's CLP (0..255) and CLM (1 cloud, 255 none)."""
    known = data_mask & (clm != 255)
    prob = np.where(known, np.rint(clp.astype(np.float32) * np.float32(100 / 255)), cloud_mask.NO_DATA_PROB)
    return prob.astype(np.uint8), (clm == 1) & known


def _grid_window(grid: PixelGrid, rows: slice, cols: slice) -> PixelGrid:
    """The grid of `rows` × `cols` of `grid`, which may reach beyond its edges (negative starts too)."""
    a, _, c, _, e, f = grid.transform
    transform = (a, 0.0, c + a * cols.start, 0.0, e, f + e * rows.start)
    return PixelGrid(grid.crs, transform, (rows.stop - rows.start, cols.stop - cols.start))


def read_context(writer, source, grid: PixelGrid, region, halo: int, dates, outside: bool):
    """Bands and data mask of `region` grown by `halo` pixels: from the attempt inside the tile,
    from the source beyond its edges (`outside`; else the context is clipped at the edges).

    Returns bands, data_mask, the lattice origin of the context and where `region` sits in it.
    """
    (rows, cols), (h, w) = region, grid.shape
    r0, r1, c0, c1 = rows.start - halo, rows.stop + halo, cols.start - halo, cols.stop + halo
    if not outside:
        r0, r1, c0, c1 = max(r0, 0), min(r1, h), max(c0, 0), min(c1, w)
    inside = (slice(max(r0, 0), min(r1, h)), slice(max(c0, 0), min(c1, w)))
    into = (slice(inside[0].start - r0, inside[0].stop - r0), slice(inside[1].start - c0, inside[1].stop - c0))
    stored_bands, stored_mask = writer.read("bands", inside), writer.read("data_mask", inside)
    if (r0, r1, c0, c1) == (inside[0].start, inside[0].stop, inside[1].start, inside[1].stop):
        bands, data_mask = stored_bands, stored_mask
    else:
        bands = np.zeros((len(dates), r1 - r0, c1 - c0, stored_bands.shape[-1]), stored_bands.dtype)
        data_mask = np.zeros(bands.shape[:3], bool)
        bands[:, into[0], into[1]] = stored_bands
        data_mask[:, into[0], into[1]] = stored_mask
        del stored_bands, stored_mask  # copied: not held beside the context while the strips are read
        # The strips beyond the tile: above and below (full width), left and right (between them).
        strips = [
            (slice(r0, inside[0].start), slice(c0, c1)),
            (slice(inside[0].stop, r1), slice(c0, c1)),
            (inside[0], slice(c0, inside[1].start)),
            (inside[0], slice(inside[1].stop, c1)),
        ]
        for srows, scols in strips:
            if srows.stop <= srows.start or scols.stop <= scols.start:
                continue
            strip_bands, strip_mask = source.read(_grid_window(grid, srows, scols), dates)
            at = (slice(srows.start - r0, srows.stop - r0), slice(scols.start - c0, scols.stop - c0))
            bands[:, at[0], at[1]] = strip_bands
            data_mask[:, at[0], at[1]] = strip_mask
    context_grid = _grid_window(grid, slice(r0, r1), slice(c0, c1))
    inner = (slice(rows.start - r0, rows.stop - r0), slice(cols.start - c0, cols.stop - c0))
    return bands, data_mask, cloud_mask.lattice_origin(context_grid), inner


def margin_clouds(
    source, grid: PixelGrid, dates: np.ndarray, method: str, cfg: CloudMaskConfig, needed: np.ndarray | None = None
) -> np.ndarray:
    """bool (t, y, x) cloud mask of a coarse `grid` around a tile (the shadow margin, see
    tasks/download/shadow.py): Sentinel Hub's CLM, or s2cloudless at the grid's resolution,
    only where `needed` (bool (t, y, x), default everywhere)."""
    if method == "sentinelhub":
        _, data_mask, extra = source.read_layers(grid, dates, ("CLM", "CLP"))
        cloud = clm_masks(extra["CLM"], extra["CLP"], data_mask)[1]
        return cloud if needed is None else cloud & needed
    bands, data_mask = source.read(grid, dates)
    if needed is not None:
        data_mask &= needed
    coarse = cfg.model_copy(update={"analysis_resolution_m": grid.resolution, "refine_resolution_m": None})
    origin = cloud_mask.lattice_origin(grid)
    return cloud_mask.cloud_masks(bands, source.band_names, data_mask, grid.resolution, coarse, origin=origin)[1]


class _SunMean:
    """Each date's sun angles averaged over the blocks that report them (weighted by data pixels)."""

    def __init__(self, n_dates: int):
        self.sums = np.zeros((n_dates, 3))  # sin and cos of the azimuth, zenith
        self.weights = np.zeros(n_dates)

    def add(self, sun: np.ndarray | None, data_mask: np.ndarray) -> None:
        if sun is None:
            return
        sun = np.asarray(sun, np.float64).reshape(-1, 2)
        weight = np.count_nonzero(data_mask, axis=(1, 2)).astype(np.float64)
        known = np.isfinite(sun).all(axis=1) & (weight > 0)
        az = np.deg2rad(sun[known, 0])
        self.sums[known] += np.stack([np.sin(az), np.cos(az), sun[known, 1]], axis=-1) * weight[known, None]
        self.weights[known] += weight[known]

    def mean(self) -> np.ndarray:
        out = np.full((len(self.weights), 2), np.nan)
        seen = self.weights > 0
        out[seen, 0] = np.rad2deg(np.arctan2(self.sums[seen, 0], self.sums[seen, 1])) % 360.0
        out[seen, 1] = self.sums[seen, 2] / self.weights[seen]
        return out


def fill_tile(writer, source, grid: PixelGrid, dates: np.ndarray, cfg: DownloadConfig) -> np.ndarray:
    """Write bands, data_mask, cloud_prob, cloud_mask, shadow_mask and valid_mask of a tile-year
    into `writer` (see the module docstring). Returns the valid pixels of each date (int64 (t,))."""
    clouds = cfg.cloud_mask
    method = method_of(clouds)
    n_t = len(dates)
    names = tuple(source.band_names)
    blocks = list(grid.blocks(cfg.block_size))
    layers = layers_for(clouds, source) if n_t and method != "none" else ()
    projected = clouds.shadows and method in ("s2cloudless", "sentinelhub") and n_t > 0
    shadows = shadow.TileShadows(grid, n_t, np.full((n_t, 2), np.nan), names, clouds) if projected else None
    sun = _SunMean(n_t)

    # 1. bands (+ layers); the masks of the methods that come with the bands
    for region, block_grid in blocks:
        bands = data_mask = extra = None  # the previous block goes before the next is read: one alive at a time
        if n_t:
            bands, data_mask, extra = read_block(source, block_grid, dates, layers)
        else:  # nothing to ask the source for: an empty, valid tile
            bands = np.zeros((0, *block_grid.shape, len(names)), np.uint16)
            data_mask, extra = np.zeros((0, *block_grid.shape), bool), {}
        writer.write("bands", bands, region)
        writer.write("data_mask", data_mask, region)
        sun.add(extra.get("sun"), data_mask)
        if method == "s2cloudless":
            continue
        if method == "scl":
            prob, cloudy, shade = scl_masks(extra["SCL"], data_mask, clouds)
            writer.write("shadow_mask", shade & clouds.shadows, region)
        elif method == "sentinelhub":
            prob, cloudy = clm_masks(extra["CLM"], extra["CLP"], data_mask)
            if shadows is not None:
                shadows.add(region, bands, data_mask, cloudy)
        else:
            prob = np.full(data_mask.shape, cloud_mask.NO_DATA_PROB, np.uint8)
            cloudy = np.zeros_like(data_mask)
        writer.write("cloud_prob", prob, region)
        writer.write("cloud_mask", cloudy, region)

    # 2. s2cloudless, each block with its context, by blocks of one store chunk: the context of a
    #    512-px block (its 48-px halo included, 13 bands × 48 dates) is ~460 MiB, of a 256-px block
    #    ~150 MiB (1000² px × 48 dates: peak 1440 → see benchmarks/README.md), for ~1.3× the pixels read.
    if method == "s2cloudless":
        halo = cloud_mask.halo_px(clouds, grid.resolution)
        for region, _ in grid.blocks(min(cfg.block_size, SPATIAL_CHUNK)):
            bands = data_mask = prob = cloudy = None  # as above: one block with its context alive at a time
            bands, data_mask, origin, inner = read_context(
                writer, source, grid, region, halo, dates, clouds.tile_edge_context and n_t > 0
            )
            prob, cloudy = cloud_mask.cloud_masks(
                bands, names, data_mask, grid.resolution, clouds, origin=origin, region=inner
            )
            writer.write("cloud_prob", prob, region)
            writer.write("cloud_mask", cloudy, region)
            if shadows is not None:
                shadows.add(region, bands[:, inner[0], inner[1]], data_mask[:, inner[0], inner[1]], cloudy)

    # 3. shadows and valid data
    if shadows is not None:
        shadows.sun = shadow.fill_sun_angles(sun.mean(), dates, grid)
        pad = shadows.margin() if clouds.tile_edge_context else (0, 0, 0, 0)
        if any(pad):
            margin_grid = shadows.margin_grid(pad)
            needed = shadows.margin_needed(margin_grid)
            shadows.set_margin(pad, margin_grid, margin_clouds(source, margin_grid, dates, method, clouds, needed))
        shadows.finish()
    bands = data_mask = prob = cloudy = None
    valid_pixels = np.zeros(n_t, dtype=np.int64)
    for region, _ in blocks:
        data_mask, cloudy = writer.read("data_mask", region), writer.read("cloud_mask", region)
        if shadows is not None:
            shade = shadows.masks(region)
            writer.write("shadow_mask", shade, region)
        elif method == "scl":
            shade = writer.read("shadow_mask", region)
        else:
            shade = np.zeros_like(data_mask)
            writer.write("shadow_mask", shade, region)
        valid = cloud_mask.valid_mask(data_mask, cloudy, shade)
        writer.write("valid_mask", valid, region)
        valid_pixels += valid.sum(axis=(1, 2))
    return valid_pixels
