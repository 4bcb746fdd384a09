"""The pixel grid of a tile: CRS, affine transform and shape as one immutable value.

Every array in LCMS that has a spatial extent is described by a `PixelGrid`. It is
passed around instead of loose bbox / size / resolution tuples, stored in the tile
store as attributes, and turned back into a value when the tile is read.

The module also holds the longitude/latitude helpers for the antimeridian (180°): boxes
with minx > maxx, as GeoJSON and STAC allow, and polygons whose edges jump across 180°.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import shapely
from affine import Affine
from pyproj import CRS
from shapely.affinity import translate
from shapely.geometry import MultiPolygon, Polygon, box
from shapely.geometry.base import BaseGeometry


def _close(a: float, b: float) -> bool:
    """numpy.isclose for two floats (its default tolerances), without numpy's per-call overhead."""
    return abs(a - b) <= 1e-8 + 1e-5 * abs(b)


@lru_cache(maxsize=256)
def _crs_string(crs: str) -> str:
    """The canonical spelling of a CRS (a country grid makes this call for each of its many tiles)."""
    return CRS.from_user_input(crs).to_string()


@dataclass(frozen=True)
class PixelGrid:
    """A north-up raster grid: `crs`, `transform` (rasterio's a, b, c, d, e, f) and `shape`.

    `shape` is (height, width), i.e. (rows, columns), as numpy orders them.
    """

    crs: str
    transform: tuple[float, float, float, float, float, float]
    shape: tuple[int, int]

    def __post_init__(self) -> None:
        a, b, _, d, e, _ = self.transform
        if b != 0 or d != 0 or a <= 0 or e >= 0:
            raise ValueError(f"PixelGrid must be north-up with positive pixel size, got transform {self.transform}")
        if len(self.shape) != 2 or min(self.shape) <= 0:
            raise ValueError(f"PixelGrid shape must be two positive integers (height, width), got {self.shape}")
        # Normalise so that equal grids compare and hash equal whatever types were passed.
        object.__setattr__(self, "transform", tuple(float(v) for v in self.transform))
        object.__setattr__(self, "shape", (int(self.shape[0]), int(self.shape[1])))
        object.__setattr__(self, "crs", _crs_string(self.crs))

    @classmethod
    def from_bounds(cls, crs: str, bounds: tuple[float, float, float, float], resolution: float) -> PixelGrid:
        """The grid of square `resolution`-sized pixels that exactly fills `bounds` (minx, miny, maxx, maxy)."""
        minx, miny, maxx, maxy = bounds
        width = round((maxx - minx) / resolution)
        height = round((maxy - miny) / resolution)
        if not _close(width * resolution, maxx - minx) or not _close(height * resolution, maxy - miny):
            raise ValueError(f"bounds {bounds} are not a whole number of {resolution} m pixels")
        return cls(crs, (resolution, 0.0, minx, 0.0, -resolution, maxy), (height, width))

    @property
    def affine(self) -> Affine:
        return Affine(*self.transform)

    @property
    def height(self) -> int:
        return self.shape[0]

    @property
    def width(self) -> int:
        return self.shape[1]

    @property
    def resolution(self) -> float:
        """Pixel size along x, in CRS units (metres for UTM)."""
        return self.transform[0]

    @property
    def epsg(self) -> int | None:
        return CRS.from_user_input(self.crs).to_epsg()

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        a, _, c, _, e, f = self.transform
        return (c, f + e * self.height, c + a * self.width, f)

    def footprint(self) -> Polygon:
        """The grid's outline as a polygon in its own CRS."""
        return box(*self.bounds)

    def x_coords(self) -> np.ndarray:
        """x of each column's pixel centre (float64, as xarray/rioxarray expect)."""
        a, _, c, *_ = self.transform
        return c + a * (np.arange(self.width, dtype=np.float64) + 0.5)

    def y_coords(self) -> np.ndarray:
        """y of each row's pixel centre, decreasing from north to south."""
        *_, e, f = self.transform
        return f + e * (np.arange(self.height, dtype=np.float64) + 0.5)

    def window(self, rows: slice, cols: slice) -> PixelGrid:
        """The sub-grid covering `rows` × `cols` of this grid."""
        r0, r1, _ = rows.indices(self.height)
        c0, c1, _ = cols.indices(self.width)
        a, _, c, _, e, f = self.transform
        return PixelGrid(self.crs, (a, 0.0, c + a * c0, 0.0, e, f + e * r0), (r1 - r0, c1 - c0))

    def blocks(self, block_size: int) -> Iterator[tuple[tuple[slice, slice], PixelGrid]]:
        """Split the grid into blocks of at most `block_size` × `block_size` pixels, row by row.

        Yields the (rows, cols) slices of each block together with its sub-grid, so that a
        stage can process a large tile block by block and write each block to its region.
        """
        for r0 in range(0, self.height, block_size):
            for c0 in range(0, self.width, block_size):
                rows = slice(r0, min(r0 + block_size, self.height))
                cols = slice(c0, min(c0 + block_size, self.width))
                yield (rows, cols), self.window(rows, cols)

    def to_attrs(self) -> dict:
        """JSON-safe attributes, the inverse of `from_attrs`."""
        return {"crs": self.crs, "transform": list(self.transform), "shape": list(self.shape)}

    @classmethod
    def from_attrs(cls, attrs: dict) -> PixelGrid:
        return cls(attrs["crs"], tuple(attrs["transform"]), tuple(attrs["shape"]))


# --------------------------------------------------------------------------- longitude/latitude and the antimeridian


def bbox_problem(bbox: Sequence[float], geographic: bool | None = True) -> str | None:
    """What is wrong with a (minx, miny, maxx, maxy) box, or None when it can be used.

    In degrees (`geographic` True), minx > maxx is a box across the antimeridian, as GeoJSON
    and STAC allow: (179, -17, -179, -16) is 2° wide. Such a box must start east of 0° and end
    west of it; (14, 46, 13, 47) would be 359° wide and is taken for the inverted box it
    surely is. In a projected CRS minx must be < maxx. With `geographic` None (CRS not known
    yet) only the checks that hold in any CRS are made.
    """
    if len(bbox) != 4 or not all(math.isfinite(v) for v in bbox):
        return "must be four finite numbers minx, miny, maxx, maxy"
    minx, miny, maxx, maxy = bbox
    if not miny < maxy:
        return f"must have miny < maxy, got miny {miny:g} and maxy {maxy:g} (the order is minx, miny, maxx, maxy)"
    if minx == maxx:
        return f"has zero width (minx = maxx = {minx:g})"
    if minx > maxx and not (0 < minx <= 180 and -180 <= maxx < 0):
        return (
            f"must have minx < maxx, got minx {minx:g} and maxx {maxx:g} (only a box in degrees may have "
            "minx > maxx: one across 180°, from east of 0° to west of it, e.g. 179,-17,-179,-16)"
        )
    if geographic is None:
        return None
    if geographic:
        if not (-180 <= minx <= 180 and -180 <= maxx <= 180):
            return (
                f"longitudes must lie in [-180, 180], got minx {minx:g} and maxx {maxx:g}; "
                "for a box across 180° give minx > maxx, e.g. 179,-17,-179,-16"
            )
        if not (-90 <= miny and maxy <= 90):
            return f"latitudes must lie in [-90, 90], got miny {miny:g} and maxy {maxy:g}"
    elif minx > maxx:
        return (
            f"must have minx < maxx, got minx {minx:g} and maxx {maxx:g} "
            "(only a box in degrees may cross the antimeridian with minx > maxx)"
        )
    return None


def crosses_antimeridian(bbox: Sequence[float]) -> bool:
    """True for a longitude/latitude box with minx > maxx: it spans 180°."""
    return bbox[0] > bbox[2]


def bbox_geometry(bbox: Sequence[float]) -> BaseGeometry:
    """The box as a polygon in degrees; a box with minx > maxx becomes its two halves on both sides of 180°."""
    minx, miny, maxx, maxy = bbox
    if not crosses_antimeridian(bbox):
        return box(minx, miny, maxx, maxy)
    return MultiPolygon([box(minx, miny, 180.0, maxy), box(-180.0, miny, maxx, maxy)])


def _ring_jumps_180(ring: BaseGeometry) -> bool:
    """True when a ring has an edge that jumps more than 180° in longitude (not from or to ±180 itself).

    Such an edge, read literally, runs the long way round the globe; what was meant is the short
    way, across the antimeridian (a polygon from 179.9° to -179.9° is 0.2° wide, not 359.8°).
    """
    x = shapely.get_coordinates(ring)[:, 0]
    jumps = np.abs(np.diff(x)) > 180
    on_180 = (np.abs(x[:-1]) == 180) | (np.abs(x[1:]) == 180)
    return bool(np.any(jumps & ~on_180))


def _needs_cut(polygon: Polygon) -> bool:
    """True for a polygon that crosses 180° (an edge jumps across it) or lies partly beyond ±180°."""
    minx, _, maxx, _ = polygon.bounds
    return minx < -180 or maxx > 180 or any(_ring_jumps_180(r) for r in (polygon.exterior, *polygon.interiors))


def _to_0_360(xy: np.ndarray) -> np.ndarray:
    """Longitudes moved from -180..180 to 0..360 (latitudes kept)."""
    return np.column_stack([np.where(xy[:, 0] < 0, xy[:, 0] + 360.0, xy[:, 0]), xy[:, 1]])


def split_at_antimeridian(geom: BaseGeometry) -> BaseGeometry:
    """Polygons in degrees that cross 180° cut into their parts on each side, as GeoJSON asks.

    A polygon whose edges jump across 180° is first moved to longitudes 0..360 (negative
    longitudes + 360). Then every polygon reaching beyond ±180° (so also one given in 0..360)
    is cut at ±180°, and each piece is moved back by a multiple of 360° into -180..180.
    Polygons already split at 180° (GeoJSON's rule), and all others that do not cross, are
    kept unchanged: the result is `geom` itself when nothing crosses.
    """
    polygons = list(geom.geoms) if geom.geom_type == "MultiPolygon" else [geom]
    if geom.geom_type not in ("Polygon", "MultiPolygon") or not any(_needs_cut(p) for p in polygons):
        return geom
    pieces = []
    for polygon in polygons:
        if not _needs_cut(polygon):
            pieces.append(polygon)
            continue
        jumps = any(_ring_jumps_180(r) for r in (polygon.exterior, *polygon.interiors))
        unwrapped = shapely.transform(polygon, _to_0_360) if jumps else polygon
        for turns in (-1, 0, 1):
            window = box(-180.0 + 360 * turns, -90.0, 180.0 + 360 * turns, 90.0)
            piece = translate(unwrapped.intersection(window), xoff=-360.0 * turns)
            pieces.extend(_polygons_of(piece))
    return pieces[0] if len(pieces) == 1 else MultiPolygon(pieces)


def _polygons_of(geom: BaseGeometry) -> list[Polygon]:
    if geom.geom_type == "Polygon":
        return [] if geom.is_empty else [geom]
    if geom.geom_type in ("MultiPolygon", "GeometryCollection"):
        return [p for g in geom.geoms for p in _polygons_of(g)]
    return []
