"""Change stage, AOI level: every tile's change polygons in one GeoPackage (and PostGIS, if configured).

Plain functions, no Prefect. Each tile's `polygon` array is turned into geometries with
`rasterio.features.shapes` (on the tile's core: the buffer belongs to the neighbours), joined
with the tile's polygon table, reprojected from the tile's UTM zone to the layer's CRS, and
written as the layer `changes` of `changes.gpkg` in the store's `change-polygons/<from>-<to>/`
product, beside a `summary.json`. The GeoPackage always holds every finished tile of the pair
of years, so rerunning the stage over a few tiles updates those and keeps the others.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
from rasterio.features import shapes
from shapely.geometry import MultiPolygon, shape

from lcms.config import ChangeConfig, params_hash
from lcms.grid import Tile
from lcms.stages import change_key
from lcms.store import DoneRecord, TileStore
from tasks.change.columns import COLUMNS, FLOAT_COLUMNS, INT_COLUMNS
from tasks.change.postgis import write_changes_postgis
from tasks.change.tile import ChangeError

log = logging.getLogger(__name__)

PRODUCT = "change-polygons"
LAYER = "changes"


def tile_polygons(store: TileStore, tile: Tile, years: tuple[int, int], connectivity: int = 8) -> gpd.GeoDataFrame:
    """One tile's change polygons in its own UTM CRS, one row per polygon (MultiPolygon geometries)."""
    reader = store.open_tile("change", change_key(*years), tile.tile_id)
    ids = list(reader.coord("change_id"))
    names = {c["code"]: c["name"] for c in reader.attrs.get("legend", [])}
    if not ids:
        return empty_changes(tile.grid.crs)
    core = tile.core_grid
    polygon = reader.read("polygon", tile.core_window)
    parts: dict[int, list] = {}
    for geometry, value in shapes(polygon, mask=polygon > 0, transform=core.transform, connectivity=connectivity):
        parts.setdefault(int(value), []).append(shape(geometry))
    class_from = reader.read("class_from")
    class_to = reader.read("class_to")
    table = pd.DataFrame(
        {
            "change_id": ids,
            "tile_id": tile.tile_id,
            "year_from": years[0],
            "year_to": years[1],
            "class_from": class_from.astype(int),
            "class_to": class_to.astype(int),
            "class_from_name": [names.get(int(c), str(c)) for c in class_from],
            "class_to_name": [names.get(int(c), str(c)) for c in class_to],
            "area_m2": reader.read("area_m2"),
            "confidence_from": reader.read("confidence_from").astype(float),
            "confidence_to": reader.read("confidence_to").astype(float),
            "score": reader.read("score").astype(float),
            "status": "unreviewed",
        }
    )
    geometries = [MultiPolygon(parts.get(i + 1, [])) for i in range(len(ids))]
    return gpd.GeoDataFrame(table, geometry=geometries, crs=tile.grid.crs)


def empty_changes(crs: str) -> gpd.GeoDataFrame:
    """A change layer without rows, with every column typed (an empty layer is a valid result)."""
    dtypes = {c: "int64" if c in INT_COLUMNS else "float64" if c in FLOAT_COLUMNS else "object" for c in COLUMNS}
    frame = pd.DataFrame({c: pd.Series(dtype=t) for c, t in dtypes.items()})
    return gpd.GeoDataFrame(frame, geometry=gpd.GeoSeries([], crs=crs), crs=crs)


def collect_polygons(
    store: TileStore, tiles: list[Tile], years: tuple[int, int], crs: str, connectivity: int = 8
) -> gpd.GeoDataFrame:
    """Every given tile's polygons in one frame in `crs`, largest score first (then largest area)."""
    frames = [tile_polygons(store, t, years, connectivity).to_crs(crs) for t in tiles]
    frames = [f for f in frames if len(f)]
    if not frames:
        return empty_changes(crs)
    changes = gpd.GeoDataFrame(pd.concat(frames, ignore_index=True), geometry="geometry", crs=crs)
    order = changes.assign(_score=changes["score"].fillna(-np.inf)).sort_values(
        ["_score", "area_m2"], ascending=False, kind="stable"
    )
    return order.drop(columns="_score").reset_index(drop=True)


def summarise(changes: gpd.GeoDataFrame, years: tuple[int, int], tiles: list[str]) -> dict:
    """Counts and areas per transition, for the summary file and the report."""
    transitions = []
    if len(changes):
        grouped = changes.groupby(["class_from_name", "class_to_name"], sort=False)["area_m2"].agg(["count", "sum"])
        for (name_from, name_to), row in grouped.sort_values("sum", ascending=False).iterrows():
            transitions.append(
                {"from": name_from, "to": name_to, "polygons": int(row["count"]), "area_ha": row["sum"] / 10_000}
            )
    return {
        "year_from": years[0],
        "year_to": years[1],
        "tiles": tiles,
        "polygons": len(changes),
        "area_ha": float(changes["area_m2"].sum() / 10_000) if len(changes) else 0.0,
        "transitions": transitions,
    }


def change_layer_hash(config, store: TileStore, tiles=None) -> str:
    """What the polygon layer of the config's pair of years depends on: its CRS and every finished tile
    of the pair (the change-polygons stage's staleness rule, lcms/stages.py; `tiles` is not used: the
    layer always covers every finished tile)."""
    records = store.done_tiles("change", change_key(*config.change_years)).values()
    return layer_hash_of(config.change, list(records))


def layer_hash_of(cfg: ChangeConfig, tile_records: list[DoneRecord]) -> str:
    return params_hash(cfg.crs, sorted(r.params_hash + r.attempt for r in tile_records))


def write_change_layer(
    store: TileStore,
    tiles: list[Tile],
    years: tuple[int, int],
    cfg: ChangeConfig,
    tile_records: list[DoneRecord],
    postgis_dsn: str | None = None,
) -> dict:
    """Build the AOI's GeoPackage from every finished tile of the pair and store it.

    With `change.postgis` set, the rows also go to PostGIS at `postgis_dsn`, which the caller
    resolves (the flow reads it from the environment or a Prefect Secret block).
    """
    changes = collect_polygons(store, tiles, years, cfg.crs, cfg.connectivity)
    summary = summarise(changes, years, [t.tile_id for t in tiles])
    name = change_key(*years)
    with tempfile.TemporaryDirectory(prefix="lcms-change-") as tmp:
        folder = Path(tmp)
        write_gpkg(changes, folder / "changes.gpkg")
        (folder / "summary.json").write_text(json.dumps(summary, indent=2))
        layer_hash = layer_hash_of(cfg, tile_records)
        record = store.put_files(PRODUCT, name, folder, layer_hash, extra={"polygons": len(changes)})
    summary["url"] = store.published_url(PRODUCT, name, "changes.gpkg")
    summary["attempt"] = record.attempt
    if cfg.postgis is not None:
        if not postgis_dsn:
            raise ChangeError("change.postgis is set, but no PostGIS DSN was given to write the layer to")
        keys = [(t.tile_id, years[0], years[1]) for t in tiles]
        summary["postgis_rows"] = write_changes_postgis(
            changes,
            postgis_dsn,
            table=cfg.postgis.table,
            schema=cfg.postgis.schema_name,
            srid=cfg.postgis.srid,
            replace_keys=keys,
        )
    return summary


def write_gpkg(changes: gpd.GeoDataFrame, path: Path) -> None:
    # Typed as MultiPolygon even when empty, so GIS tools and the report see the same schema.
    changes.to_file(path, layer=LAYER, driver="GPKG", engine="pyogrio", geometry_type="MultiPolygon")


def read_change_layer(store: TileStore, years: tuple[int, int]) -> gpd.GeoDataFrame:
    """The stored GeoPackage layer of a pair of years."""
    data = store.read_file(PRODUCT, change_key(*years), "changes.gpkg")
    with tempfile.TemporaryDirectory(prefix="lcms-change-") as tmp:
        path = Path(tmp) / "changes.gpkg"
        path.write_bytes(data)
        return gpd.read_file(path, layer=LAYER, engine="pyogrio")
