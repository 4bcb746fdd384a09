"""The area grid: an AOI split into square tiles, each in the UTM zone it lies in.

How the split works (as eo-grow's UTM-zone area manager does it):
1. The AOI is read in any CRS and taken to WGS84.
2. It is cut along UTM zone borders (6° meridians, and the equator between N and S zones).
3. Each zone's part is densified, projected to that zone, and covered by tiles whose
   corners sit on a fixed lattice (multiples of the tile size from `origin_m`). Tiles
   whose core does not overlap the part are dropped. A tile keeps its lattice index in
   its id, so ids are stable when the AOI grows. Blocks of cells are tested before any
   single tile is (`_cells_overlapping`), so a country of 180 000 tiles takes seconds.
4. Each tile's pixel grid is its core plus a buffer on every side.

Inside one zone the cores tile the plane without gaps or overlaps; across a zone border,
the two zones' tiles both reach over the border, so the AOI stays covered with no gaps.

The antimeridian (180°) is a zone border like the others, between zones 60 and 1. An AOI
that crosses it is cut there when it is read (lcms.geometry.split_at_antimeridian), as
GeoJSON asks, and a tile core that reaches over it has a two-part footprint in WGS84.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import shapely
from pyproj import CRS, Transformer
from shapely.geometry import box
from shapely.geometry.base import BaseGeometry

if TYPE_CHECKING:
    import geopandas as gpd

from lcms.config import AoiConfig, GridConfig
from lcms.geometry import PixelGrid, bbox_geometry, split_at_antimeridian

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
        geographic = CRS.from_user_input(cfg.bbox_crs).is_geographic  # AoiConfig has checked the box
        # In degrees, minx > maxx is a box across 180°: its two halves, one on each side.
        import geopandas as gpd  # imported where used: tile workers need no geopandas

        frame = gpd.GeoDataFrame(geometry=[bbox_geometry(cfg.bbox) if geographic else box(*cfg.bbox)], crs=cfg.bbox_crs)
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
    import geopandas as gpd

    try:
        return gpd.read_file(path, layer=layer)
    except Exception as exc:  # pyogrio raises several types for unreadable files
        raise AoiError(
            f"{source} cannot be read as a vector file ({exc}). Use GeoJSON, GeoPackage or Shapefile."
        ) from exc


def aoi_to_wgs84(frame: gpd.GeoDataFrame, source: str = "AOI") -> BaseGeometry:
    """Union the frame's polygons, repair invalid ones, and return them in WGS84.

    Polygons that cross the antimeridian (180°) come back cut into their parts on each side,
    as GeoJSON asks: whether they were given cut already, or in degrees with edges that jump
    from 179.9° to -179.9°, or in a projected CRS that spans 180° (e.g. UTM zone 60).
    """
    geoms = frame.geometry[frame.geometry.notna() & ~frame.geometry.is_empty]
    if geoms.empty:
        raise AoiError(f"{source} holds no geometry. Give a file with at least one polygon.")
    crs = CRS.from_user_input(frame.crs)
    if crs.is_geographic:
        _check_degrees(geoms, crs, source)
        geoms = geoms.apply(split_at_antimeridian)
    invalid = ~geoms.is_valid
    if invalid.any():
        reasons = sorted({shapely.is_valid_reason(g) for g in geoms[invalid]})
        log.warning("%s: repaired %d invalid geometries (%s)", source, int(invalid.sum()), "; ".join(reasons[:3]))
        geoms = geoms.make_valid()
    polygons = [p for g in geoms for p in _polygon_parts(g)]
    if not polygons:
        kinds = sorted(set(geoms.geom_type))
        raise AoiError(f"{source} has no polygon area (found {kinds}). The AOI must be polygons.")
    area = shapely.union_all(polygons)
    if not crs.equals(CRS.from_user_input(WGS84)):
        # Densify before reprojecting so long straight edges follow the true shape.
        step = DENSIFY_DEG if crs.is_geographic else DENSIFY_M
        area = shapely.segmentize(area, step)
        area = shapely.transform(area, Transformer.from_crs(crs, WGS84, always_xy=True).transform, interleaved=False)
        area = shapely.make_valid(split_at_antimeridian(area))
    if area.is_empty or area.area == 0:
        raise AoiError(f"{source} has zero area.")
    minx, miny, maxx, maxy = area.bounds
    if miny < UTM_LAT_RANGE[0] or maxy > UTM_LAT_RANGE[1]:
        raise AoiError(f"{source} reaches beyond UTM's latitude range {UTM_LAT_RANGE}; polar areas are not supported.")
    return area


def _check_degrees(geoms: gpd.GeoSeries, crs: CRS, source: str) -> None:
    """Refuse coordinates that cannot be degrees although the CRS says so (a file with a wrong CRS label)."""
    minx, miny, maxx, maxy = geoms.total_bounds
    x_max, y_max = max(abs(minx), abs(maxx)), max(abs(miny), abs(maxy))
    if x_max > 360 or y_max > 90:
        name = f"EPSG:{crs.to_epsg()}" if crs.to_epsg() else crs.name
        raise AoiError(
            f"{source} coordinates look projected (x up to {x_max:.2g}, y up to {y_max:.2g}) but the file says "
            f"{name}, which is in degrees. Give the file its real CRS (e.g. ogr2ogr -a_srs EPSG:32633 new.gpkg a.gpkg)."
        )


def _polygon_parts(geom: BaseGeometry) -> list[BaseGeometry]:
    if geom.geom_type in ("Polygon", "MultiPolygon"):
        return [geom]
    if geom.geom_type == "GeometryCollection":
        return [p for g in geom.geoms for p in _polygon_parts(g)]
    return []


# --------------------------------------------------------------------------- splitting


def zone_parts(aoi_wgs84: BaseGeometry) -> list[tuple[int, bool, BaseGeometry]]:
    """The AOI cut into (zone number, is_north, part in WGS84) pieces.

    Only the zones that one of the AOI's polygons reaches are tried, so an AOI split at 180°
    (Fiji, Chukotka) is cut into zones 60 and 1, not into the sixty zones between its bounds.
    """
    zones: set[int] = set()
    for polygon in _polygon_list(aoi_wgs84):
        minx, _, maxx, _ = polygon.bounds
        zones.update(range(_zone_of(minx), _zone_of(maxx) + 1))
    parts = []
    for zone in sorted(zones):
        west = -180 + 6 * (zone - 1)
        for north, (south, top) in ((True, (0.0, 90.0)), (False, (-90.0, 0.0))):
            part = aoi_wgs84.intersection(box(west, south, west + 6, top))
            part = shapely.union_all(_polygon_parts(part)) if not part.is_empty else part
            if not part.is_empty and part.area > 0:
                parts.append((zone, north, part))
    return parts


def _zone_of(lon: float) -> int:
    """The UTM zone (1..60) of a longitude; 180° itself belongs to zone 60."""
    return min(60, max(1, int(math.floor((lon + 180) / 6)) + 1))


def _polygon_list(geom: BaseGeometry) -> list[BaseGeometry]:
    return [p for g in _polygon_parts(geom) for p in (g.geoms if g.geom_type == "MultiPolygon" else [g])]


def build_grid(aoi_wgs84: BaseGeometry, cfg: GridConfig, progress: bool | None = None) -> AreaGrid:
    """Cover the AOI with tiles, zone by zone.

    `progress`: a progress bar per zone (True), one log line per zone (False), or the bar
    when stderr is a terminal and the lines otherwise (None, the default).
    """
    tiles: list[Tile] = []
    size = cfg.tile_size_m
    b = cfg.buffer_m
    parts = zone_parts(aoi_wgs84)
    with _ZoneProgress(len(parts), progress) as report:
        for zone, north, part in parts:
            label = zone_label(zone, north)
            crs = utm_crs(zone, north)
            to_utm = Transformer.from_crs(WGS84, crs, always_xy=True).transform
            part_utm = shapely.transform(shapely.segmentize(part, DENSIFY_DEG), to_utm, interleaved=False)
            lattice = _Lattice.covering(size, cfg.origin_m, part_utm.bounds)
            advance = report.start_zone(label, lattice.n_cells)
            sliver_area = SLIVER_PX * cfg.resolution_m * size
            cols, rows = _cells_overlapping(part_utm, lattice, sliver_area, advance)
            for col, row in zip(cols.tolist(), rows.tolist(), strict=True):
                core_bounds = lattice.cell_bounds(col, row)
                buffered = (core_bounds[0] - b, core_bounds[1] - b, core_bounds[2] + b, core_bounds[3] + b)
                tiles.append(
                    Tile(
                        tile_id=f"{label}_{col:04d}_{row:04d}",
                        grid=PixelGrid.from_bounds(crs, buffered, cfg.resolution_m),
                        core_bounds=core_bounds,
                    )
                )
            report.end_zone(label, len(cols))
    if not tiles:
        raise AoiError("The AOI produced no tiles.")
    return AreaGrid(tiles)


@dataclass(frozen=True)
class _Lattice:
    """The tile lattice over one zone part: cells [col0, col1) × [row0, row1) of `size` m from `origin`."""

    size: float
    origin: tuple[float, float]
    col0: int
    row0: int
    col1: int
    row1: int

    @classmethod
    def covering(cls, size: float, origin: Sequence[float], bounds: tuple[float, float, float, float]) -> _Lattice:
        """The smallest block of lattice cells that covers `bounds` (minx, miny, maxx, maxy)."""
        ox, oy = origin
        minx, miny, maxx, maxy = bounds
        return cls(
            size,
            (ox, oy),
            math.floor((minx - ox) / size),
            math.floor((miny - oy) / size),
            math.ceil((maxx - ox) / size),
            math.ceil((maxy - oy) / size),
        )

    @property
    def n_cells(self) -> int:
        return (self.col1 - self.col0) * (self.row1 - self.row0)

    def cell_bounds(self, col: int, row: int) -> tuple[float, float, float, float]:
        ox, oy = self.origin
        s = self.size
        return (ox + col * s, oy + row * s, ox + (col + 1) * s, oy + (row + 1) * s)


def _cells_overlapping(
    part_utm: BaseGeometry, lattice: _Lattice, sliver_area: float, advance: Callable[[int], None]
) -> tuple[np.ndarray, np.ndarray]:
    """(cols, rows) of the lattice cells whose overlap with `part_utm` is more than `sliver_area`.

    Cutting the whole part with every cell costs (cells × vertices of the part), which for
    Russia is hours. Instead blocks of cells are tested before anything is cut (a quadtree):
    a block is cut out of its parent block's piece of the AOI, so each cut handles only the
    vertices near it. A block whose piece has no more than a sliver of area holds no tile; a
    block whose piece misses less than one cell's worth of area (minus a sliver) is all tiles,
    since no cell can then overlap less than a sliver; only the other blocks are halved again,
    down to single cells on the AOI's boundary, where the overlap is measured. `advance(n)`
    is called as the blocks' n cells are settled.
    """
    cell_area = lattice.size**2
    cols: list[np.ndarray] = []
    rows: list[np.ndarray] = []
    blocks = [(part_utm, lattice.col0, lattice.row0, lattice.col1, lattice.row1)]
    while blocks:
        geom, c0, r0, c1, r1 = blocks.pop()
        n = (c1 - c0) * (r1 - r0)
        rect = shapely.box(*lattice.cell_bounds(c0, r0)[:2], *lattice.cell_bounds(c1 - 1, r1 - 1)[2:])
        piece = shapely.intersection(geom, rect)
        area = piece.area
        if area <= sliver_area:
            advance(n)
            continue
        if n == 1 or n * cell_area - area < cell_area - sliver_area:
            block_cols, block_rows = np.meshgrid(np.arange(c0, c1), np.arange(r0, r1))
            cols.append(block_cols.ravel())
            rows.append(block_rows.ravel())
            advance(n)
            continue
        # Halve the block across its longer side and settle each half on its own.
        if c1 - c0 >= r1 - r0:
            mid = (c0 + c1) // 2
            blocks += [(piece, c0, r0, mid, r1), (piece, mid, r0, c1, r1)]
        else:
            mid = (r0 + r1) // 2
            blocks += [(piece, c0, r0, c1, mid), (piece, c0, mid, c1, r1)]
    if not cols:
        return np.zeros(0, int), np.zeros(0, int)
    return np.concatenate(cols), np.concatenate(rows)


class _ZoneProgress:
    """How far a grid job is, zone by zone: a rich progress bar per zone, or one log line per zone.

    `action` names the job ("grid zone" while tiles are cut, "writing zone" for the GeoPackage)
    and `unit` what the bar counts.
    """

    def __init__(self, n_zones: int, bars: bool | None, action: str = "grid zone", unit: str = "cells"):
        self.n_zones = n_zones
        self.bars = sys.stderr.isatty() if bars is None else bars
        self.action = action
        self.unit = unit
        self.done_zones = 0
        self._progress = None
        self._task = None
        self._started = 0.0

    def __enter__(self) -> _ZoneProgress:
        if self.bars:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(
                TextColumn(f"{self.action} {{task.description}}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn(self.unit),
                TimeElapsedColumn(),
                TextColumn("{task.fields[tiles]}"),
                console=Console(stderr=True),
            )
            self._progress.__enter__()
        return self

    def __exit__(self, *exc_info) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc_info)

    def start_zone(self, label: str, total: int) -> Callable[[int], None]:
        """Start a zone of `total` units; returns the function that advances its bar by n units."""
        self._started = time.perf_counter()
        if self._progress is None:
            return lambda n: None
        task = self._progress.add_task(label, total=total, tiles="")
        self._task = task
        return lambda n: self._progress.advance(task, n)

    def end_zone(self, label: str, n_tiles: int) -> None:
        self.done_zones += 1
        seconds = time.perf_counter() - self._started
        if self._progress is not None:
            self._progress.update(self._task, tiles=f"{n_tiles} tiles")
        else:
            log.info(
                "%s %s: %d tiles in %.1f s (zone %d of %d)",
                self.action,
                label,
                n_tiles,
                seconds,
                self.done_zones,
                self.n_zones,
            )


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

        A `bbox` with minx > maxx spans the antimeridian (e.g. (179, -17, -179, -16)).

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
        shapes = [g for g in (geometry, bbox_geometry(bbox) if bbox is not None else None) if g is not None]
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
        import geopandas as gpd

        out = {}
        for crs, group in _group_by_crs(self.tiles).items():
            cores = gpd.GeoSeries(
                shapely.segmentize(_core_boxes(group), 500.0), index=[t.tile_id for t in group], crs=crs
            ).to_crs(WGS84)
            # A core reaching over 180° comes back with longitudes jumping from 180 to -180: cut it there.
            wide = (cores.bounds["maxx"] - cores.bounds["minx"]) > 180
            if wide.any():
                cores[wide] = [split_at_antimeridian(g) for g in cores[wide]]
            out.update(cores.items())
        return gpd.GeoSeries(out, crs=WGS84).loc[self.tile_ids]

    # ---------------------------------------------------------------- GeoPackage

    def to_geodataframe(self) -> gpd.GeoDataFrame:
        import geopandas as gpd
        import pandas as pd

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

    def write_gpkg(self, path: str | Path, progress: bool | None = None) -> None:
        """Write the grid: layer 'tiles' in WGS84, plus one layer per zone in its own UTM CRS.

        Zone by zone, so that a country's grid never holds all its WGS84 footprints in memory at
        once. Tile ids start with their zone, so the zones' rows follow each other in id order.
        `progress` as in `build_grid`.
        """
        groups = _group_by_crs(self.tiles)
        # Cores that reach over 180° (zones 1 and 60 only) have two-part footprints: then all are
        # written as multipolygons, as a GeoPackage layer holds one geometry type.
        edge_zones = [crs for crs in groups if CRS.from_user_input(crs).to_epsg() % 100 in (1, 60)]
        multi = any((AreaGrid(groups[crs]).footprints_wgs84().geom_type == "MultiPolygon").any() for crs in edge_zones)
        with _ZoneProgress(len(groups), progress, action="writing zone", unit="tiles") as report:
            for i, (crs, group) in enumerate(groups.items()):
                label = group[0].zone
                advance = report.start_zone(label, len(group))
                frame = AreaGrid(group).to_geodataframe()
                frame.to_file(path, layer=self.LAYER, driver="GPKG", mode="a" if i else "w", promote_to_multi=multi)
                native = frame.set_geometry(_core_boxes(group), crs=crs)
                native.to_file(path, layer=f"tiles_{crs.replace(':', '')}", driver="GPKG")
                advance(len(group))
                report.end_zone(label, len(group))

    @classmethod
    def read_gpkg(cls, path: str | Path) -> AreaGrid:
        import geopandas as gpd

        return cls.from_geodataframe(gpd.read_file(path, layer=cls.LAYER))


def _core_boxes(tiles: Sequence[Tile]) -> np.ndarray:
    """Each tile's core as a box in its own CRS (made in one vectorised call)."""
    minx, miny, maxx, maxy = np.array([t.core_bounds for t in tiles], dtype=float).reshape(-1, 4).T
    return shapely.box(minx, miny, maxx, maxy)


def _group_by_crs(tiles: Iterable[Tile]) -> dict[str, list[Tile]]:
    groups: dict[str, list[Tile]] = {}
    for t in tiles:
        groups.setdefault(t.grid.crs, []).append(t)
    return groups
