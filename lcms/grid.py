"""The area grid: an AOI split into square tiles, each in the UTM zone it lies in.

How the split works (as eo-grow's UTM-zone area manager does it):
1. The AOI is read in any CRS and taken to WGS84.
2. It is cut along UTM zone borders (6° meridians, and the equator between N and S zones).
3. Each zone's part is densified, projected to that zone, and covered by tiles whose
   corners sit on a fixed lattice (multiples of the tile size from `origin_m`). Tiles
   whose core does not overlap the part are dropped. A tile keeps its lattice index in
   its id, so ids are stable when the AOI grows.
4. Each tile's pixel grid is its core plus a buffer on every side.

Inside one zone the cores tile the plane without gaps or overlaps; across a zone border,
the two zones' tiles both reach over the border, so the AOI stays covered with no gaps.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from pyproj import CRS, Transformer
from shapely.geometry import box
from shapely.geometry.base import BaseGeometry

from lcms.config import AoiConfig, GridConfig
from lcms.geometry import PixelGrid

log = logging.getLogger(__name__)

WGS84 = "EPSG:4326"
# UTM is defined from 80°S to 84°N; beyond that a polar projection would be needed.
UTM_LAT_RANGE = (-80.0, 84.0)
# Zone parts are densified to this step (degrees) before projecting, because meridians
# and parallels are curved in UTM coordinates.
DENSIFY_DEG = 0.001
DENSIFY_M = 100.0
# A tile whose overlap with the AOI is a strip thinner than this fraction of a pixel is
# reprojection round-off (an AOI edge lying on a tile edge), not AOI: it is left out.
SLIVER_PX = 0.01


class AoiError(ValueError):
    """An AOI that cannot be used; the message says what is wrong and what to do."""


class TileSelectionError(ValueError):
    """A tile subset that names unknown tiles or selects nothing."""


@dataclass(frozen=True)
class Tile:
    """One tile of the area grid: its id, its buffered pixel grid and its unbuffered core."""

    tile_id: str
    grid: PixelGrid
    core_bounds: tuple[float, float, float, float]

    @property
    def zone(self) -> str:
        """UTM zone label such as '33N'."""
        return self.tile_id.split("_")[0]

    @property
    def buffer_px(self) -> int:
        return round((self.core_bounds[0] - self.grid.bounds[0]) / self.grid.resolution)

    @property
    def core_window(self) -> tuple[slice, slice]:
        """Rows and columns of the core inside the buffered grid."""
        b = self.buffer_px
        return slice(b, self.grid.height - b), slice(b, self.grid.width - b)

    @property
    def core_grid(self) -> PixelGrid:
        return self.grid.window(*self.core_window)


def utm_crs(zone: int, north: bool) -> str:
    return f"EPSG:{(32600 if north else 32700) + zone}"


def zone_label(zone: int, north: bool) -> str:
    return f"{zone:02d}{'N' if north else 'S'}"


# --------------------------------------------------------------------------- AOI


def load_aoi(cfg: AoiConfig) -> BaseGeometry:
    """Read the AOI as one valid (multi)polygon in WGS84, or raise AoiError saying why not."""
    if cfg.bbox is not None:
        frame = gpd.GeoDataFrame(geometry=[box(*cfg.bbox)], crs=cfg.bbox_crs)
        source = f"aoi.bbox {cfg.bbox}"
    else:
        source = f"AOI file {cfg.path}"
        frame = _read_vector(cfg.path, cfg.layer, source)
        if frame.crs is None:
            if cfg.assume_crs is None:
                raise AoiError(
                    f"{source} has no CRS. Give the file a CRS (e.g. ogr2ogr -a_srs EPSG:4326) "
                    "or set aoi.assume_crs in the config."
                )
            frame = frame.set_crs(cfg.assume_crs)
    return aoi_to_wgs84(frame, source)


def _read_vector(path: str | None, layer: str | None, source: str) -> gpd.GeoDataFrame:
    if path is None or not ("://" in path or Path(path).exists()):
        raise AoiError(f"{source} does not exist. Set aoi.path to a GeoJSON, GeoPackage or Shapefile.")
    try:
        return gpd.read_file(path, layer=layer)
    except Exception as exc:  # pyogrio raises several types for unreadable files
        raise AoiError(
            f"{source} cannot be read as a vector file ({exc}). Use GeoJSON, GeoPackage or Shapefile."
        ) from exc


def aoi_to_wgs84(frame: gpd.GeoDataFrame, source: str = "AOI") -> BaseGeometry:
    """Union the frame's polygons, repair invalid ones, and return them in WGS84."""
    geoms = frame.geometry[frame.geometry.notna() & ~frame.geometry.is_empty]
    if geoms.empty:
        raise AoiError(f"{source} holds no geometry. Give a file with at least one polygon.")
    invalid = ~geoms.is_valid
    if invalid.any():
        reasons = sorted({shapely.is_valid_reason(g) for g in geoms[invalid]})
        log.warning("%s: repaired %d invalid geometries (%s)", source, int(invalid.sum()), "; ".join(reasons[:3]))
        geoms = geoms.make_valid()
    polygons = [p for g in geoms for p in _polygon_parts(g)]
    if not polygons:
        kinds = sorted(set(geoms.geom_type))
        raise AoiError(f"{source} has no polygon area (found {kinds}). The AOI must be polygons.")
    crs = CRS.from_user_input(frame.crs)
    area = shapely.union_all(polygons)
    if not crs.equals(CRS.from_user_input(WGS84)):
        # Densify before reprojecting so long straight edges follow the true shape.
        step = DENSIFY_DEG if crs.is_geographic else DENSIFY_M
        area = shapely.segmentize(area, step)
        area = shapely.transform(area, Transformer.from_crs(crs, WGS84, always_xy=True).transform, interleaved=False)
        area = shapely.make_valid(area)
    if area.is_empty or area.area == 0:
        raise AoiError(f"{source} has zero area.")
    minx, miny, maxx, maxy = area.bounds
    if miny < UTM_LAT_RANGE[0] or maxy > UTM_LAT_RANGE[1]:
        raise AoiError(f"{source} reaches beyond UTM's latitude range {UTM_LAT_RANGE}; polar areas are not supported.")
    return area


def _polygon_parts(geom: BaseGeometry) -> list[BaseGeometry]:
    if geom.geom_type in ("Polygon", "MultiPolygon"):
        return [geom]
    if geom.geom_type == "GeometryCollection":
        return [p for g in geom.geoms for p in _polygon_parts(g)]
    return []


# --------------------------------------------------------------------------- splitting


def zone_parts(aoi_wgs84: BaseGeometry) -> list[tuple[int, bool, BaseGeometry]]:
    """The AOI cut into (zone number, is_north, part in WGS84) pieces."""
    minx, miny, maxx, maxy = aoi_wgs84.bounds
    first = max(1, int(math.floor((minx + 180) / 6)) + 1)
    last = min(60, int(math.floor((maxx + 180) / 6)) + 1)
    parts = []
    for zone in range(first, last + 1):
        west = -180 + 6 * (zone - 1)
        for north, (south, top) in ((True, (0.0, 90.0)), (False, (-90.0, 0.0))):
            part = aoi_wgs84.intersection(box(west, south, west + 6, top))
            part = shapely.union_all(_polygon_parts(part)) if not part.is_empty else part
            if not part.is_empty and part.area > 0:
                parts.append((zone, north, part))
    return parts


def build_grid(aoi_wgs84: BaseGeometry, cfg: GridConfig) -> AreaGrid:
    """Cover the AOI with tiles, zone by zone."""
    tiles: list[Tile] = []
    size = cfg.tile_size_m
    ox, oy = cfg.origin_m
    for zone, north, part in zone_parts(aoi_wgs84):
        crs = utm_crs(zone, north)
        to_utm = Transformer.from_crs(WGS84, crs, always_xy=True).transform
        part_utm = shapely.transform(shapely.segmentize(part, DENSIFY_DEG), to_utm, interleaved=False)
        minx, miny, maxx, maxy = part_utm.bounds
        ix = np.arange(math.floor((minx - ox) / size), math.ceil((maxx - ox) / size))
        iy = np.arange(math.floor((miny - oy) / size), math.ceil((maxy - oy) / size))
        cols, rows = (a.ravel() for a in np.meshgrid(ix, iy))
        cores = shapely.box(ox + cols * size, oy + rows * size, ox + (cols + 1) * size, oy + (rows + 1) * size)
        shapely.prepare(part_utm)
        # Keep tiles that share area with the part, beyond reprojection round-off.
        keep = shapely.intersects(part_utm, cores) & ~shapely.touches(part_utm, cores)
        sliver_area = SLIVER_PX * cfg.resolution_m * size
        keep[keep] = shapely.area(shapely.intersection(cores[keep], part_utm)) > sliver_area
        label = zone_label(zone, north)
        for col, row, core in zip(cols[keep], rows[keep], cores[keep], strict=True):
            core_bounds = core.bounds
            b = cfg.buffer_m
            buffered = (core_bounds[0] - b, core_bounds[1] - b, core_bounds[2] + b, core_bounds[3] + b)
            tiles.append(
                Tile(
                    tile_id=f"{label}_{col:04d}_{row:04d}",
                    grid=PixelGrid.from_bounds(crs, buffered, cfg.resolution_m),
                    core_bounds=core_bounds,
                )
            )
    if not tiles:
        raise AoiError("The AOI produced no tiles.")
    return AreaGrid(tiles)


class AreaGrid:
    """The tiles of an AOI, in a stable order, with selection and GeoPackage I/O."""

    LAYER = "tiles"

    def __init__(self, tiles: Iterable[Tile]):
        self.tiles: list[Tile] = sorted(tiles, key=lambda t: t.tile_id)
        self._by_id = {t.tile_id: t for t in self.tiles}
        if len(self._by_id) != len(self.tiles):
            raise ValueError("tile ids must be unique")

    def __len__(self) -> int:
        return len(self.tiles)

    def __iter__(self):
        return iter(self.tiles)

    def __getitem__(self, tile_id: str) -> Tile:
        return self._by_id[tile_id]

    @property
    def tile_ids(self) -> list[str]:
        return [t.tile_id for t in self.tiles]

    def counts_per_zone(self) -> dict[str, int]:
        return dict(sorted(Counter(t.zone for t in self.tiles).items()))

    # ---------------------------------------------------------------- selection

    def select(
        self,
        tile_ids: Sequence[str] | None = None,
        geometry: BaseGeometry | None = None,
        bbox: tuple[float, float, float, float] | None = None,
    ) -> AreaGrid:
        """The tiles named in `tile_ids` and/or whose core overlaps `geometry` / `bbox` (WGS84).

        With no argument, all tiles. With several, the tiles that meet every condition.
        """
        tiles = self.tiles
        if tile_ids is not None:
            unknown = sorted(set(tile_ids) - set(self._by_id))
            if unknown:
                shown = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
                raise TileSelectionError(
                    f"{len(unknown)} tile id(s) are not in the grid: {shown}. "
                    f"Ids look like {self.tile_ids[0]!r}; list them with `lcms grid CONFIG`."
                )
            wanted = set(tile_ids)
            tiles = [t for t in tiles if t.tile_id in wanted]
        shapes = [g for g in (geometry, box(*bbox) if bbox is not None else None) if g is not None]
        if shapes:
            footprints = self.footprints_wgs84()
            for shape in shapes:
                hit = set(footprints.index[footprints.intersects(shape) & ~footprints.touches(shape)])
                tiles = [t for t in tiles if t.tile_id in hit]
        if not tiles:
            raise TileSelectionError("The tile selection is empty: no tile of the grid matches it.")
        return AreaGrid(tiles)

    # ---------------------------------------------------------------- geometry

    def footprints_wgs84(self) -> gpd.GeoSeries:
        """Each tile's core as a WGS84 polygon (densified), indexed by tile id."""
        out = {}
        for crs, group in _group_by_crs(self.tiles).items():
            cores = gpd.GeoSeries(
                [shapely.segmentize(box(*t.core_bounds), 500.0) for t in group],
                index=[t.tile_id for t in group],
                crs=crs,
            ).to_crs(WGS84)
            out.update(cores.items())
        return gpd.GeoSeries(out, crs=WGS84).loc[self.tile_ids]

    # ---------------------------------------------------------------- GeoPackage

    def to_geodataframe(self) -> gpd.GeoDataFrame:
        rows = [
            {
                "tile_id": t.tile_id,
                "zone": t.zone,
                "utm_crs": t.grid.crs,
                "transform": json.dumps(list(t.grid.transform)),
                "height": t.grid.height,
                "width": t.grid.width,
                "buffer_px": t.buffer_px,
                "core_minx": t.core_bounds[0],
                "core_miny": t.core_bounds[1],
                "core_maxx": t.core_bounds[2],
                "core_maxy": t.core_bounds[3],
            }
            for t in self.tiles
        ]
        return gpd.GeoDataFrame(pd.DataFrame(rows), geometry=self.footprints_wgs84().values, crs=WGS84)

    @classmethod
    def from_geodataframe(cls, frame: gpd.GeoDataFrame) -> AreaGrid:
        tiles = [
            Tile(
                tile_id=row.tile_id,
                grid=PixelGrid(row.utm_crs, tuple(json.loads(row.transform)), (int(row.height), int(row.width))),
                core_bounds=(row.core_minx, row.core_miny, row.core_maxx, row.core_maxy),
            )
            for row in frame.itertuples()
        ]
        return cls(tiles)

    def write_gpkg(self, path: str | Path) -> None:
        """Write the grid: layer 'tiles' in WGS84, plus one layer per zone in its own UTM CRS."""
        frame = self.to_geodataframe()
        frame.to_file(path, layer=self.LAYER, driver="GPKG")
        for crs, group in _group_by_crs(self.tiles).items():
            native = frame[frame["utm_crs"] == crs].copy()
            native = native.set_geometry([box(*t.core_bounds) for t in group], crs=crs)
            native.to_file(path, layer=f"tiles_{crs.replace(':', '')}", driver="GPKG")

    @classmethod
    def read_gpkg(cls, path: str | Path) -> AreaGrid:
        return cls.from_geodataframe(gpd.read_file(path, layer=cls.LAYER))


def _group_by_crs(tiles: Iterable[Tile]) -> dict[str, list[Tile]]:
    groups: dict[str, list[Tile]] = {}
    for t in tiles:
        groups.setdefault(t.grid.crs, []).append(t)
    return groups
