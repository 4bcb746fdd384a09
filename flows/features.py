"""Features stage flow: indices and temporal interpolation (or mosaics) for every tile and year.

Made from the stage's declaration (lcms/stages.py) by flows/common.py. Particular to it: before the
cluster starts, the optional rasters it reads (the DEM and the auxiliary rasters) must open.
"""

from __future__ import annotations

from flows.common import tile_stage_flow
from lcms.config import ConfigError, RunConfig, TileSubset
from lcms.stages import get_stage


def check_feature_rasters(config: RunConfig, subset: TileSubset) -> None:
    """One line naming the field and the file when a configured raster cannot be opened, before any work."""
    import rasterio

    features = config.features
    rasters = [("features.dem_path", features.dem_path)] if features.dem_path else []
    rasters += [(f"features.auxiliary_rasters[{i}].path", r.path) for i, r in enumerate(features.auxiliary_rasters)]
    for field, path in rasters:
        try:
            with rasterio.open(path):
                pass
        except Exception as exc:  # noqa: BLE001 - rasterio raises several types for missing or unreadable files
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ConfigError(f"{field} {path} cannot be opened ({reason}): give a raster GDAL can read") from None


features_flow = tile_stage_flow(get_stage("features"), check=check_feature_rasters)
