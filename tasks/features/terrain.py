"""Features stage, terrain: elevation and slope from a DEM raster, on a tile's pixel grid.

An optional input (`FeaturesConfig.dem_path`): a GeoTIFF (or any raster GDAL reads: a local path,
``s3://`` or ``https://``; credentials as for GDAL), in any CRS and resolution. It is resampled
bilinearly onto the tile's grid; its nodata becomes NaN.

Two features, the same at every date of the features array (a static layer in a date × feature
stack), scaled so that the stage's int16 storage (value × 10000) keeps them:

- ``ELEVATION_10KM``: elevation in units of 10 km (metres / 10000): int16 keeps 1 m up to 32,767 m;
- ``SLOPE``: the terrain's gradient as rise over run (tan of the slope angle; 1.0 = 45°), from
  central differences over the grid's pixels (one-sided at the edges).
"""

from __future__ import annotations

import numpy as np

from lcms.geometry import PixelGrid
from tasks.features.auxiliary import read_raster

TERRAIN_FEATURES = ("ELEVATION_10KM", "SLOPE")


def read_dem(path: str, grid: PixelGrid) -> np.ndarray:
    """float32 (y, x) elevation in metres on `grid`, NaN where the DEM has no data or does not reach."""
    return read_raster(path, grid, bands=[1], resampling="bilinear")[..., 0]


def terrain_features(dem: np.ndarray, resolution_m: float) -> np.ndarray:
    """(y, x, 2) float32: ``ELEVATION_10KM`` and ``SLOPE`` of a (y, x) elevation in metres."""
    dem = np.asarray(dem, dtype=np.float64)
    if dem.ndim != 2:
        raise ValueError(f"a DEM is (y, x), got shape {dem.shape}")
    if min(dem.shape) < 2:
        raise ValueError(f"a DEM needs at least 2 × 2 pixels for a slope, got {dem.shape}")
    dy, dx = np.gradient(dem, float(resolution_m))
    return np.stack([dem / 10_000.0, np.hypot(dx, dy)], axis=-1).astype(np.float32)
