"""Features stage, auxiliary rasters: bands of other rasters as features, on a tile's pixel grid.

An optional input (`FeaturesConfig.auxiliary_rasters`): any raster GDAL reads (a local path,
``s3://`` or ``https://``; credentials as for GDAL), in any CRS and resolution, e.g. a composite
of another year's bands or a soil layer. Each is resampled onto the tile's grid (bilinear or
nearest, as configured); its nodata, and whatever the raster does not reach, becomes NaN.

Its bands become features ``{name}_{band}`` (band = 1-based index in the file), multiplied by the
raster's `scale` so that the stage's int16 storage (value × 10000) keeps them, and the same at
every date of the features array (a static layer in a date × feature stack), like terrain.
"""

from __future__ import annotations

import numpy as np

from lcms.config import AuxiliaryRasterConfig
from lcms.geometry import PixelGrid


def read_raster(path: str, grid: PixelGrid, bands: list[int] | None = None, resampling: str = "bilinear") -> np.ndarray:
    """float32 (y, x, band) values of `bands` (1-based; default all) on `grid`, NaN where the raster has no
    data or does not reach."""
    import rasterio
    from rasterio.warp import Resampling, reproject

    with rasterio.open(path) as src:
        indexes = list(bands) if bands is not None else list(range(1, src.count + 1))
        missing = [b for b in indexes if not 1 <= b <= src.count]
        if missing:
            raise ValueError(f"{path}: has bands 1..{src.count}, not {missing}")
        out = np.full((len(indexes), *grid.shape), np.nan, dtype=np.float32)
        for i, band in enumerate(indexes):
            reproject(
                source=rasterio.band(src, band),
                destination=out[i],
                src_nodata=src.nodata,
                dst_transform=grid.affine,
                dst_crs=grid.crs,
                dst_nodata=np.nan,
                resampling=Resampling[resampling],
            )
    return np.moveaxis(out, 0, -1)


def auxiliary_features(rasters: list[AuxiliaryRasterConfig], grid: PixelGrid) -> np.ndarray | None:
    """(y, x, f) float32: every raster's bands on `grid`, scaled, in the order of their feature names; None
    when there are no rasters."""
    if not rasters:
        return None
    layers = [
        read_raster(raster.path, grid, raster.band_indexes, raster.resampling) * np.float32(raster.scale)
        for raster in rasters
    ]
    return np.concatenate(layers, axis=-1)
