"""Export stage, AOI level: a year's tile maps as Cloud-Optimised GeoTIFFs with STAC items.

Plain functions, no Prefect: the flow in flows/export.py wraps them. The COG writing itself
(windowed, tile by tile, so a country never sits in memory) is in tasks/export/cog.py, the STAC
items in tasks/export/stac.py. Per year:

- one labels map per UTM zone, from the post-processed (or the raw predicted) labels, with the
  legend's colour table and class names; with `export.crs`, one map of the whole AOI in that CRS;
- beside it, the confidence map (the winning class's probability in percent), if configured;
- a STAC item per map (``.json`` beside the ``.tif``), with the legend as classification classes,
  its COG's href relative, in the collection of the product (the catalogue: tasks/export/stac.py).

Names: ``<model>_<year>_<zone>_labels.tif`` (zone e.g. ``33N``, or ``all`` with export.crs).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict

from lcms.config import ExportConfig
from lcms.grid import AreaGrid, Tile
from lcms.legend import LegendClass
from lcms.lineage import current as current_lineage
from lcms.lineage import lineage_id as make_lineage_id
from lcms.store import TileStore
from tasks.export.cog import TilePiece, export_cog
from tasks.export.stac import stac_item, write_stac_item
from tasks.prediction.versions import MixedModelVersionsError, one_model_version

STAGE = "export"


def _reader(store: TileStore, stage: str, year: int, tile_id: str, array: str):
    def read(window):
        return store.open_tile(stage, year, tile_id).read(array, window)

    return read


def pieces_of(store: TileStore, tiles: list[Tile], stage: str, year: int, array: str) -> list[TilePiece]:
    return [TilePiece(t.tile_id, t.grid, t.core_window, _reader(store, stage, year, t.tile_id, array)) for t in tiles]


def map_groups(tiles: AreaGrid, cfg: ExportConfig) -> dict[str, list[Tile]]:
    """Tiles per output map: one group per UTM zone, or all of them when reprojecting to one CRS."""
    if cfg.crs is not None:
        return {"all": list(tiles)}
    groups: dict[str, list[Tile]] = {}
    for tile in tiles:
        groups.setdefault(tile.zone, []).append(tile)
    return groups


def export_year(
    store: TileStore, tiles: AreaGrid, year: int, cfg: ExportConfig, model_name: str, current_version: str | None = None
) -> list[dict]:
    """Export every map of one year; returns one summary per written map.

    The tiles must share one model version (MixedModelVersionsError names them otherwise); with
    `cfg.consistent_only`, the tiles of `current_version` are exported and the others left out.
    """
    folder = (cfg.url or store.maps_url()).rstrip("/")
    keep = current_version if cfg.consistent_only else None
    stages = (cfg.source, "prediction") if cfg.confidence else (cfg.source,)
    version, kept = one_model_version(store, tiles.tile_ids, year, "export", keep_version=keep, stages=stages)
    left_out = sorted(set(tiles.tile_ids) - set(kept))
    if not kept:
        raise MixedModelVersionsError(f"export {year}: no tile was predicted with model version {version}")
    tiles = tiles.select(tile_ids=kept)
    # What the maps were made from (the export flow records it): its id goes on every map and STAC item.
    lineage_id = make_lineage_id(current_lineage()) if current_lineage() else ""
    first = store.open_tile("prediction", year, tiles.tile_ids[0])
    legend = [LegendClass(c["code"], c["name"], c["color"]) for c in first.attrs["legend"]]
    start = dt.datetime(year, 1, 1, tzinfo=dt.UTC)
    end = dt.datetime(year, 12, 31, 23, 59, 59, tzinfo=dt.UTC)
    reprojection = {"crs": cfg.crs, "resolution": cfg.resolution_m} if cfg.crs else {}
    outputs = []
    for zone, group in sorted(map_groups(tiles, cfg).items()):
        maps = [("labels", cfg.source, "labels", legend, "mode")]
        if cfg.confidence:
            maps.append(("confidence", "prediction", "confidence", None, "average"))
        for kind, stage, array, map_legend, overview in maps:
            base = f"{model_name}_{year}_{zone}_{kind}"
            url = f"{folder}/{base}.tif"
            result = export_cog(
                pieces_of(store, group, stage, year, array),
                url,
                nodata=0,
                legend=map_legend,
                compress=cfg.compress,
                blocksize=cfg.blocksize,
                overview_resampling=overview,
                storage_options=store.storage_options,
                tags={
                    "lcms_model": model_name,
                    "lcms_model_version": version,
                    "lcms_lineage_id": lineage_id,
                    "lcms_year": str(year),
                    "lcms_source": stage,
                    "lcms_map": kind,
                },
                **reprojection,
            )
            item = stac_item(
                result,
                item_id=base,
                start=start,
                end=end,
                asset_href=f"./{base}.tif",  # relative: the folder can move, or be synced to S3
                title=f"{model_name} {kind} {year} ({zone})",
                legend=map_legend,
                collection=model_name,
                catalogue_root=".",
                properties={
                    "lcms:product": model_name,
                    "lcms:year": year,
                    "lcms:zone": zone,
                    "lcms:model": model_name,
                    "lcms:model_version": version,
                    "lcms:lineage_id": lineage_id,
                    "lcms:map": kind,
                    "lcms:source_stage": stage,
                },
            )
            write_stac_item(item, f"{folder}/{base}.json", store.storage_options)
            outputs.append(
                {
                    "map": kind,
                    "zone": zone,
                    "year": year,
                    "url": url,
                    "tiles": len(group),
                    "model_version": version,
                    "left_out": left_out,
                    **_shape(result),
                }
            )
    return outputs


def _shape(result) -> dict:
    data = asdict(result)
    return {"crs": data["crs"], "height": data["shape"][0], "width": data["shape"][1]}
