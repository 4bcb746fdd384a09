"""Reference (training/validation) polygons: load them, rasterise them onto a tile grid, erode them.

* `load_reference` reads a GeoPackage, GeoJSON, Shapefile or GeoParquet file, local or on any
  fsspec file system (``s3://...``), and returns a GeoDataFrame with exactly two columns,
  ``class_code`` (uint8 legend code) and ``geometry``, in the file's own CRS.
* `intersects` tells whether any polygon covers part of a grid, so that callers can skip tiles.
* `rasterize_reference` burns the polygons into a uint8 (y, x) array of the grid (0 = no data).
* `erode_labels` is a negative buffer in pixels that removes class borders and thin features.

Overlap rule: where polygons overlap, the **smaller polygon wins** (it is usually the more
specific one, e.g. a pond inside a forest stand). Polygons are drawn in order of decreasing
area, measured in the grid's CRS before clipping; polygons of equal area keep file order, so
the later one wins. The result therefore does not depend on the order of the file.

Pixels are labelled by their centres (``all_touched=False``), as eo-learn's VectorToRasterTask
does; this reproduces eo-learn's Slovenia test patch raster exactly.
"""

from __future__ import annotations

import logging
import math
import numbers
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath

import fsspec
import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from fsspec.implementations.local import LocalFileSystem
from pyproj import CRS
from pyproj.exceptions import ProjError
from rasterio import features
from rasterio.warp import transform_bounds
from scipy import ndimage
from shapely.geometry import box

from lcms.geometry import PixelGrid
from lcms.legend import NO_DATA, LegendClass
from lcms.store import s3_storage_options

log = logging.getLogger(__name__)

CLASS_COLUMN = "class_code"

_VECTOR_EXTENSIONS = {".gpkg": "GeoPackage", ".geojson": "GeoJSON", ".json": "GeoJSON", ".shp": "Shapefile"}
_PARQUET_EXTENSIONS = {".parquet", ".geoparquet"}
_SHAPEFILE_SIDECARS = (".shx", ".dbf", ".prj", ".cpg", ".qix", ".sbn", ".sbx")
_POLYGONAL = {"Polygon", "MultiPolygon"}


class ReferenceError(ValueError):  # noqa: A001 - shadows the builtin (weakref) ReferenceError, unused here
    """Reference data that cannot be used, with a message saying what is wrong and what to do."""


# --- loading -------------------------------------------------------------------------------


def load_reference(
    path: str | Path,
    class_column: str,
    legend: Sequence[LegendClass],
    mapping: Mapping[str | int, int] | None = None,
    storage_options: dict | None = None,
) -> gpd.GeoDataFrame:
    """Read reference polygons and return their legend codes (`class_code`, uint8) and geometry.

    The format is chosen by the extension: ``.gpkg``, ``.geojson``/``.json``, ``.shp`` (with its
    ``.shx``/``.dbf``/``.prj`` beside it) or ``.parquet``/``.geoparquet``. `path` may be local or
    any fsspec URL (``s3://bucket/key``); `storage_options` are passed to fsspec.

    Class values of `class_column` are turned into legend codes:

    * with `mapping`, every value must be a key of it (names match ignoring case and surrounding
      blanks; ``3``, ``3.0`` and ``"3"`` are the same key). A value mapped to 0 (no data) drops
      its polygons;
    * without it, values must be legend codes, or legend class names (ignoring case).

    Invalid geometries are repaired with `shapely.make_valid`, keeping the polygon parts; rows
    without a geometry or a class value, and non-polygon geometries, are dropped. Each of these
    is logged as a warning with its count. The CRS of the file is kept.
    """
    legend = tuple(legend)
    if not legend:
        raise ReferenceError("the legend is empty: pass the LegendClass tuple the labels should use")
    gdf = _read_vector(str(path), storage_options)
    name = str(path)

    if gdf.crs is None:
        raise ReferenceError(
            f"reference file {name} has no CRS, so its coordinates cannot be placed on a grid: "
            "save it again with a CRS (e.g. GeoDataFrame.set_crs(...).to_file(...)) or add a .prj"
        )
    if class_column not in gdf.columns:
        columns = [c for c in gdf.columns if c != gdf.geometry.name]
        raise ReferenceError(
            f"reference file {name} has no class column {class_column!r}; its columns are {columns}. "
            "Pass one of them as class_column."
        )

    # Rows without geometry or class.
    missing = gdf.geometry.isna() | gdf.geometry.is_empty | gdf[class_column].isna()
    if missing.any():
        log.warning("%s: dropped %d rows without a geometry or a %s value", name, int(missing.sum()), class_column)
        gdf = gdf[~missing]

    codes = _class_codes(gdf[class_column], legend, mapping, name, class_column)
    out = gpd.GeoDataFrame({CLASS_COLUMN: codes}, geometry=gdf.geometry.values, crs=gdf.crs)
    dropped = out[CLASS_COLUMN] == NO_DATA
    if dropped.any():
        log.info("%s: dropped %d polygons mapped to no data (0)", name, int(dropped.sum()))
        out = out[~dropped]

    out = _polygons_only(out, name)
    if out.empty:
        raise ReferenceError(
            f"reference file {name} holds no usable polygons (after dropping empty, non-polygon and "
            "no-data rows): check that it is the right file and layer"
        )
    return out.reset_index(drop=True)


def read_vector_file(path: str, storage_options: dict | None = None) -> gpd.GeoDataFrame:
    """A vector file (GeoPackage, GeoJSON, Shapefile, GeoParquet), local or remote; clear errors otherwise."""
    return _read_vector(path, storage_options)


def _read_vector(path: str, storage_options: dict | None) -> gpd.GeoDataFrame:
    suffix = PurePosixPath(path.split("?")[0]).suffix.lower()
    if suffix not in _VECTOR_EXTENSIONS and suffix not in _PARQUET_EXTENSIONS:
        known = sorted({*_VECTOR_EXTENSIONS, *_PARQUET_EXTENSIONS})
        raise ReferenceError(
            f"cannot tell the format of reference file {path} from its extension {suffix or '(none)'}: "
            f"use one of {known} (GeoPackage, GeoJSON, Shapefile, GeoParquet)"
        )
    try:
        fs, fs_path = fsspec.core.url_to_fs(path, **s3_storage_options(path, storage_options))  # S3 timeouts
        exists = fs.exists(fs_path)
    except Exception as exc:  # bad URL, unknown protocol, credentials, unreachable endpoint
        raise ReferenceError(f"cannot access reference file {path}: {exc}") from exc
    if not exists:
        raise ReferenceError(f"reference file {path} does not exist: check the path (and bucket / credentials)")

    local = isinstance(fs, LocalFileSystem)
    try:
        if local:
            return _read_local(fs_path, suffix)
        with tempfile.TemporaryDirectory(prefix="lcms-reference-") as tmp:
            target = Path(tmp) / PurePosixPath(fs_path).name
            fs.get(fs_path, str(target))
            if suffix == ".shp":  # a shapefile is several files; fetch the ones that exist
                stem = fs_path[: -len(suffix)]
                for side in _SHAPEFILE_SIDECARS:
                    for candidate in (stem + side, stem + side.upper()):
                        if fs.exists(candidate):
                            fs.get(candidate, str(target.with_suffix(side)))
                            break
            return _read_local(str(target), suffix)
    except ReferenceError:
        raise
    except Exception as exc:
        raise ReferenceError(
            f"cannot read reference file {path} as {_format_name(suffix)}: {exc}. "
            "Check that the file is complete and in that format."
        ) from exc


def _format_name(suffix: str) -> str:
    return "GeoParquet" if suffix in _PARQUET_EXTENSIONS else _VECTOR_EXTENSIONS[suffix]


def _read_local(path: str, suffix: str) -> gpd.GeoDataFrame:
    if suffix in _PARQUET_EXTENSIONS:
        return gpd.read_parquet(path)
    return gpd.read_file(path)


def _key(value) -> object:
    """Normalise a class value or mapping key: names ignore case and blanks, whole numbers are ints."""
    if isinstance(value, str):
        text = value.strip().casefold()
        try:
            number = float(text)
        except ValueError:
            return text
        return int(number) if number.is_integer() else number
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        number = float(value)
        return int(number) if math.isfinite(number) and number.is_integer() else number
    return value


def _class_codes(
    values: pd.Series, legend: tuple[LegendClass, ...], mapping, name: str, class_column: str
) -> np.ndarray:
    codes = {c.code for c in legend}
    bad_codes = sorted(c for c in codes if not 0 <= c <= 255)
    if bad_codes:
        raise ReferenceError(f"legend codes {bad_codes} do not fit the uint8 labels (0..255)")
    if mapping is not None:
        lookup = {_key(k): int(v) for k, v in mapping.items()}
        outside = sorted({v for v in lookup.values() if v not in codes})
        if outside:
            raise ReferenceError(
                f"the mapping for {name} maps to codes {outside} that are not in the legend "
                f"(codes {sorted(codes)}): fix the mapping or the legend"
            )
        what = "in the mapping"
    else:
        lookup = {c.code: c.code for c in legend} | {_key(c.name): c.code for c in legend}
        what = "in the legend"

    unique = pd.unique(values)
    table: dict[object, int] = {}
    unknown = []
    for value in unique:
        code = lookup.get(_key(value))
        if code is None:
            unknown.append(value)
        else:
            table[value] = code
    if unknown:
        shown = sorted((str(v) for v in unknown), key=str)
        legend_text = ", ".join(f"{c.code} {c.name}" for c in legend)
        hint = (
            "add them to the mapping (source value -> legend code)"
            if mapping is not None
            else "pass mapping={source value: legend code} to translate them"
        )
        raise ReferenceError(
            f"{len(unknown)} class values of column {class_column!r} in {name} are not {what}: {shown}. "
            f"The legend is: {legend_text}. To use them, {hint}."
        )
    return values.map(table).to_numpy(dtype=np.uint8)


def _polygons_only(gdf: gpd.GeoDataFrame, name: str) -> gpd.GeoDataFrame:
    geoms = gdf.geometry.values
    invalid = ~shapely.is_valid(geoms)
    if invalid.any():
        repaired = geoms.copy()
        repaired[invalid] = shapely.make_valid(geoms[invalid])
        geoms = repaired
        log.warning("%s: repaired %d invalid geometries with make_valid (polygon parts kept)", name, int(invalid.sum()))
    kinds = shapely.get_type_id(geoms)
    collection = kinds == shapely.GeometryType.GEOMETRYCOLLECTION
    if collection.any():
        geoms = geoms.copy()
        geoms[collection] = [_polygon_parts(g) for g in geoms[collection]]
    polygonal = np.isin(shapely.get_type_id(geoms), [shapely.GeometryType.POLYGON, shapely.GeometryType.MULTIPOLYGON])
    polygonal &= ~shapely.is_empty(geoms)
    if (~polygonal).any():
        log.warning("%s: dropped %d geometries that are not polygons", name, int((~polygonal).sum()))
    out = gpd.GeoDataFrame({CLASS_COLUMN: gdf[CLASS_COLUMN].to_numpy()}, geometry=geoms, crs=gdf.crs)
    return out[polygonal]


def _polygon_parts(geom):
    """The polygon parts of a geometry collection (after make_valid) as one (multi)polygon."""
    parts = [g for g in shapely.get_parts(geom) if g.geom_type in _POLYGONAL]
    flat = [p for g in parts for p in shapely.get_parts(g)]
    if not flat:
        return shapely.Polygon()
    return flat[0] if len(flat) == 1 else shapely.MultiPolygon(flat)


# --- rasterising ---------------------------------------------------------------------------


def _check_reference(reference: gpd.GeoDataFrame) -> None:
    if CLASS_COLUMN not in reference.columns:
        raise ReferenceError(
            f"reference has no {CLASS_COLUMN!r} column (columns: {list(reference.columns)}): "
            "load it with load_reference"
        )
    if reference.crs is None:
        raise ReferenceError("reference has no CRS: set one with GeoDataFrame.set_crs before rasterising")


def _on_grid(reference: gpd.GeoDataFrame, grid: PixelGrid) -> gpd.GeoDataFrame:
    """The polygons that may touch `grid`, reprojected to its CRS (un-clipped)."""
    _check_reference(reference)
    ref = reference[~(reference.geometry.isna() | reference.geometry.is_empty)]
    grid_crs = CRS.from_user_input(grid.crs)
    if not CRS.from_user_input(ref.crs).equals(grid_crs):
        # Pre-select by the grid's bounds in the reference CRS, so a large file is not reprojected
        # for every tile; fall back to reprojecting everything when the bounds cannot be computed.
        try:
            bounds = transform_bounds(grid_crs, ref.crs, *grid.bounds, densify_pts=21)
            if all(map(math.isfinite, bounds)):
                ref = ref.iloc[ref.sindex.query(box(*bounds), predicate="intersects")]
        except (ProjError, ValueError, RuntimeError) as exc:  # pragma: no cover - exotic CRSs
            log.debug("could not pre-select reference polygons by bounds: %s", exc)
        ref = ref.to_crs(grid_crs)
    if ref.empty:
        return ref
    return ref.iloc[ref.sindex.query(grid.footprint(), predicate="intersects")]


def intersects(reference: gpd.GeoDataFrame, grid: PixelGrid) -> bool:
    """True if any reference polygon overlaps the grid's footprint (touching its edge is not enough)."""
    ref = _on_grid(reference, grid)
    if ref.empty:
        return False
    footprint = grid.footprint()
    geoms = ref.geometry.values
    return bool(np.any(shapely.intersects(geoms, footprint) & ~shapely.touches(geoms, footprint)))


def rasterize_reference(reference: gpd.GeoDataFrame, grid: PixelGrid) -> np.ndarray:
    """Burn `reference` (from `load_reference`) into a uint8 (y, x) array of `grid`; 0 = no data.

    Polygons are reprojected to the grid's CRS and clipped to the grid (with a one-pixel margin);
    a pixel takes the class of the polygon containing its centre. Where polygons overlap the
    smaller one wins (drawn last, in order of decreasing area). A grid that no polygon covers
    gives all zeros; use `intersects` first to skip such tiles.
    """
    ref = _on_grid(reference, grid)
    out_shape = grid.shape
    if ref.empty:
        return np.zeros(out_shape, dtype=np.uint8)
    areas = ref.geometry.area.to_numpy()
    order = np.argsort(-areas, kind="stable")  # largest first; ties keep file order
    minx, miny, maxx, maxy = grid.bounds
    mx, my = abs(grid.transform[0]), abs(grid.transform[4])
    clipped = shapely.clip_by_rect(ref.geometry.values[order], minx - mx, miny - my, maxx + mx, maxy + my)
    codes = ref[CLASS_COLUMN].to_numpy()[order]
    keep = ~shapely.is_empty(clipped)
    shapes = [(g, int(c)) for g, c in zip(clipped[keep], codes[keep], strict=True)]
    if not shapes:
        return np.zeros(out_shape, dtype=np.uint8)
    return features.rasterize(
        shapes, out_shape=out_shape, transform=grid.affine, fill=NO_DATA, all_touched=False, dtype="uint8"
    )


# --- erosion -------------------------------------------------------------------------------


def erosion_footprint(radius_px: int) -> np.ndarray:
    """bool neighbourhood of `erode_labels`: 3×3 square for radius 1, disk x²+y² <= r² above."""
    if radius_px <= 1:
        return np.ones((2 * radius_px + 1,) * 2, dtype=bool)
    y, x = np.mgrid[-radius_px : radius_px + 1, -radius_px : radius_px + 1]
    return x * x + y * y <= radius_px * radius_px


def erode_labels(labels: np.ndarray, radius_px: int = 1) -> np.ndarray:
    """Negative buffer of a label map: keep a pixel's class only where its whole neighbourhood agrees.

    A pixel keeps its class if every pixel within `radius_px` (3×3 square for radius 1, a disk
    for larger radii, see `erosion_footprint`) has the same class, including no data (0) as a
    class; otherwise it becomes 0. Borders between two classes therefore erode on both sides and
    features narrower than 2·radius+1 pixels vanish.

    Edge rule: pixels outside the array are unknown and are ignored, so an edge pixel keeps its
    class when all its in-array neighbours agree (a uniform map stays unchanged).
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"erode_labels expects a 2-D (y, x) label array, got shape {labels.shape}")
    if labels.dtype != np.uint8:
        if not np.issubdtype(labels.dtype, np.integer) or (labels.size and (labels.min() < 0 or labels.max() > 255)):
            raise ValueError(f"erode_labels expects uint8 labels (0..255), got {labels.dtype}")
        labels = labels.astype(np.uint8)
    if radius_px < 0:
        raise ValueError(f"radius_px must be >= 0, got {radius_px}")
    if radius_px == 0 or labels.size == 0:
        return labels.copy()
    footprint = erosion_footprint(int(radius_px))
    # Neutral padding (255 for the minimum, 0 for the maximum) makes outside pixels not count.
    low = ndimage.minimum_filter(labels, footprint=footprint, mode="constant", cval=255)
    high = ndimage.maximum_filter(labels, footprint=footprint, mode="constant", cval=0)
    return np.where(low == high, labels, np.uint8(NO_DATA)).astype(np.uint8)
