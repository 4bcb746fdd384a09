"""The pixel grid of a tile: CRS, affine transform and shape as one immutable value.

Every array in LCMS that has a spatial extent is described by a `PixelGrid`. It is
passed around instead of loose bbox / size / resolution tuples, stored in the tile
store as attributes, and turned back into a value when the tile is read.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from affine import Affine
from pyproj import CRS
from shapely.geometry import Polygon, box


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
        object.__setattr__(self, "crs", CRS.from_user_input(self.crs).to_string())

    @classmethod
    def from_bounds(cls, crs: str, bounds: tuple[float, float, float, float], resolution: float) -> PixelGrid:
        """The grid of square `resolution`-sized pixels that exactly fills `bounds` (minx, miny, maxx, maxy)."""
        minx, miny, maxx, maxy = bounds
        width = round((maxx - minx) / resolution)
        height = round((maxy - miny) / resolution)
        if not np.isclose(width * resolution, maxx - minx) or not np.isclose(height * resolution, maxy - miny):
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
