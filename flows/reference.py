"""Reference stage flow: ground-truth polygons rasterised onto every tile, with a negative buffer.

Made from the stage's declaration (lcms/stages.py) by flows/common.py. Particular to it: before
the cluster starts, the reference must be configured, readable and overlap the selected tiles.
"""

from __future__ import annotations

from flows.common import prepare_stage, tile_stage_flow
from lcms.config import RunConfig, TileSubset
from lcms.stages import get_stage
from tasks.reference.polygons import ReferenceError, intersects
from tasks.reference.tile import reference_polygons


def check_reference(config: RunConfig, subset: TileSubset) -> None:
    """Fail before any work when no reference is configured, it cannot be read, or it misses every tile."""
    if not config.reference.is_set:
        raise ReferenceError("reference.path is not set: give the ground-truth polygons file in the config")
    store, tiles = prepare_stage(config, subset)
    for year in config.years:
        try:
            year_cfg = config.reference.for_year(year)
        except ValueError as exc:
            raise ReferenceError(str(exc)) from None
        polygons = reference_polygons(year_cfg, store.storage_options)
        if not any(intersects(polygons, tile.grid) for tile in tiles):
            raise ReferenceError(
                f"the reference {year_cfg.path} intersects none of the {len(tiles)} selected tiles; "
                "check that it covers the AOI and that its CRS is set correctly"
            )


reference_flow = tile_stage_flow(get_stage("reference"), check=check_reference)
