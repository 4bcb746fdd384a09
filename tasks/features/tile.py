"""Features stage, tile level: from the download stage's bands and masks to ML-ready features.

Plain functions, no Prefect: the flow in flows/features.py wraps them. Per tile and year:

1. frame filter: frames whose valid coverage is below `min_valid_coverage` are dropped
   (they are never read: the store reads only the kept frames and the needed bands);
2. per spatial block: reflectances and indices (tasks/features/indices.py), then linear
   interpolation onto the year's date grid, or a composite per period (tasks/features/temporal.py);
3. optional spatial context (`context_features`): neighbourhood means and standard deviations
   of those features at `context_sizes`, date by date (tasks/features/context.py), appended as
   features ``{feature}_{stat}{size}``; blocks are read with a halo so windows are whole across
   block edges;
4. optional terrain (`dem_path`): elevation and slope of a DEM resampled onto the tile
   (tasks/features/terrain.py), then optional auxiliary rasters (`auxiliary_rasters`): their bands,
   scaled, resampled onto the tile (tasks/features/auxiliary.py); both the same at every date;
5. the block is packed (int16 = value × 10000, or float32) and written; pixels without
   any valid observation are marked in `no_valid`.

The date grid depends only on the year and the config, so features line up country-wide.
"""

from __future__ import annotations

import logging

import numpy as np

from lcms.config import FeaturesConfig, params_hash
from lcms.geometry import PixelGrid
from lcms.grid import Tile
from lcms.store import DoneRecord, TileStore
from tasks.features.auxiliary import auxiliary_features
from tasks.features.context import halo_px, spatial_context
from tasks.features.indices import INDEX_BANDS, check_features, feature_stack
from tasks.features.phenology import with_phenology
from tasks.features.temporal import composite, date_grid, interpolate
from tasks.features.terrain import read_dem, terrain_features

log = logging.getLogger(__name__)

STAGE = "features"
INPUT_STAGE = "download"
INT16_SCALE = 10_000
INT16_FILL = -32768


def features_params_hash(cfg: FeaturesConfig, tile: Tile, year: int, download_hash: str) -> str:
    """The features depend on their settings, the tile, the year and the download they were made from."""
    return params_hash(cfg, tile.grid.to_attrs(), year, download_hash)


def features_tile_hash(store: TileStore, tile: Tile, year: int, cfg: FeaturesConfig) -> str:
    """Includes the download it reads, so a redone download makes the features stale."""
    download = store.require_done(INPUT_STAGE, year, tile.tile_id)
    return features_params_hash(cfg, tile, year, download.params_hash)


def pack(values: np.ndarray, dtype: str) -> np.ndarray:
    """float32 features → the stored dtype: int16 (× 10000, rounded, clipped; NaN → fill) or float32."""
    if dtype == "float32":
        return values.astype(np.float32, copy=False)
    # Slab by slab along the first axis, so that the float temporaries are ~4 MiB, not the block's size.
    packed = np.empty(values.shape, np.int16)
    for part in _slabs(values.shape):
        scaled = np.multiply(values[part], np.float32(INT16_SCALE), dtype=np.float32)
        np.rint(scaled, out=scaled)
        np.clip(scaled, -32767, 32767, out=scaled)
        scaled[np.isnan(scaled)] = INT16_FILL
        packed[part] = scaled
    return packed


def unpack(stored: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Stored features (int16 × 10000 with fill, or float32) → float32 values, NaN where missing.

    `out`: a float32 array (or view) of the same shape to fill, e.g. a block of a whole tile's array.
    """
    if stored.dtype == np.float32:
        if out is None:
            return stored
        out[...] = stored
        return out
    if stored.dtype != np.int16:
        raise ValueError(f"features are stored as int16 or float32, got {stored.dtype}")
    values = np.empty(stored.shape, np.float32) if out is None else out
    values[...] = stored
    np.divide(values, np.float32(INT16_SCALE), out=values)  # in place: one float32 copy of a whole tile, not two
    for part in _slabs(stored.shape):  # the fill mask slab by slab, not a tile-sized bool
        values[part][stored[part] == INT16_FILL] = np.nan
    return values


def static_features(cfg: FeaturesConfig, grid: PixelGrid) -> np.ndarray | None:
    """(y, x, f) float32 features that are the same at every date, on `grid`: terrain (`dem_path`), then the
    auxiliary rasters' bands; None without either."""
    layers = []
    if cfg.dem_path:
        layers.append(terrain_features(read_dem(cfg.dem_path, grid), grid.resolution))
    auxiliary = auxiliary_features(cfg.auxiliary_rasters, grid)
    if auxiliary is not None:
        layers.append(auxiliary)
    return np.concatenate(layers, axis=-1) if layers else None


def with_static(values: np.ndarray, static: np.ndarray | None) -> np.ndarray:
    """(t, y, x, f) values with the (y, x, g) static features appended at every date."""
    if static is None:
        return values
    return np.concatenate([values, np.broadcast_to(static, (values.shape[0], *static.shape))], axis=-1)


def _slabs(shape: tuple[int, ...], items: int = 2**20) -> list:
    """Index expressions cutting an array of `shape` along its first axis into slabs of about `items` values."""
    if not shape:
        return [()]
    step = max(1, items // max(1, int(np.prod(shape[1:]))))
    return [slice(i, i + step) for i in range(0, shape[0], step)] or [slice(None)]


def with_context(values: np.ndarray, cfg: FeaturesConfig) -> np.ndarray:
    """(t, y, x, f) features of `cfg.feature_names` → with the spatial context features of `cfg` appended."""
    if not cfg.context_features:
        return values
    picked = [cfg.feature_names.index(n) for n in cfg.context_features]
    context = spatial_context(values[..., picked], cfg.context_sizes, cfg.context_stats)
    return np.concatenate([values, context], axis=-1)


def _with_halo(region: tuple[slice, slice], halo: int, shape: tuple[int, int]):
    """The region grown by `halo` pixels (cut at the tile's edges), and where the region lies inside it."""
    (r0, r1), (c0, c1) = (region[0].start, region[0].stop), (region[1].start, region[1].stop)
    R0, R1, C0, C1 = max(r0 - halo, 0), min(r1 + halo, shape[0]), max(c0 - halo, 0), min(c1 + halo, shape[1])
    return (slice(R0, R1), slice(C0, C1)), (slice(r0 - R0, r1 - R0), slice(c0 - C0, c1 - C0))


def features_tile(store: TileStore, tile: Tile, year: int, cfg: FeaturesConfig) -> DoneRecord:
    """Make and store one tile-year of features; done only when every block is written."""
    download = store.open_tile(INPUT_STAGE, year, tile.tile_id)
    band_names = list(download.coord("band"))
    names = cfg.feature_names
    check_features(band_names, names)

    coverage = download.read("valid_coverage")
    kept = np.flatnonzero(coverage >= cfg.min_valid_coverage)
    times = download.coord("time")[kept]
    if not len(kept):
        log.warning(
            "tile %s %s: no frame has valid coverage >= %s: every pixel is marked no_valid",
            tile.tile_id,
            year,
            cfg.min_valid_coverage,
        )
    # Read only the bands the features need (bands are chunked one per band).
    needed = [b for b in band_names if b in set(cfg.bands) | {x for i in cfg.indices for x in INDEX_BANDS[i]}]
    if cfg.method == "max_ndvi_mosaic":
        needed = sorted(set(needed) | set(INDEX_BANDS["NDVI"]), key=band_names.index)
    band_index = [band_names.index(b) for b in needed]

    targets = date_grid(year, cfg.date_grid)
    coords = {"time": targets, "feature": np.array(cfg.stored_feature_names)}
    halo = halo_px(cfg.context_sizes) if cfg.context_features else 0
    static = static_features(cfg, tile.grid)  # terrain and auxiliary rasters: read once per tile
    tile_hash = features_params_hash(cfg, tile, year, download.record.params_hash)
    attrs = {"method": cfg.method, "frames_kept": int(len(kept)), "frames_total": int(len(coverage))}
    with store.writer(STAGE, year, tile.tile_id, tile.grid, tile_hash, coords, attrs, {"features": cfg.dtype}) as w:
        for region, _ in tile.grid.blocks(cfg.block_size):
            read, inner = _with_halo(region, halo, tile.grid.shape)
            bands = download.read("bands", read, {"time": kept, "band": band_index})
            valid = download.read("valid_mask", read, {"time": kept})
            values = feature_stack(bands, needed, names)
            if cfg.method == "interpolation":
                out, no_valid = interpolate(values, times, valid, targets)
            else:
                method = "median" if cfg.method == "median_mosaic" else "max_ndvi"
                ndvi = feature_stack(bands, needed, ["NDVI"])[..., 0] if method == "max_ndvi" else None
                out, no_valid = composite(values, times, valid, targets, method, ndvi)
            out = with_context(out, cfg)[:, inner[0], inner[1]]
            out = with_phenology(out, targets, cfg)
            out = with_static(out, None if static is None else static[region])
            w.write("features", pack(out, cfg.dtype), region)
            w.write("no_valid", no_valid[inner], region)
            w.write("valid_count", valid[:, inner[0], inner[1]].sum(axis=0, dtype=np.uint16), region)
        return w.commit(extra=attrs)
