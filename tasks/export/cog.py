"""Export stage, COGs: per-tile 2-D maps → one Cloud-Optimised GeoTIFF, and its validation.

Plain functions, no Prefect. The input is a list of `TilePiece` values: a tile's buffered
`PixelGrid`, the window of its core inside that grid, and a `read(window)` callable that returns
that window of the tile's map. Nothing is read until the piece is written, so a zone or a
whole country is never held in memory.

How `export_cog` builds the file:

1. **Output grid.** By default the pieces' common CRS and pixel size, and the union of the
   pieces' *core* bounds on the pieces' own pixel lattice (tiles of one UTM zone share it). Only
   the cores are written, buffers are ignored (they overlap the neighbours' cores). Pieces in
   several CRSs need `crs` (and `resolution`): the output grid is then the union of the cores'
   bounds transformed to `crs` (densified), snapped to multiples of `resolution`, and every
   core is reprojected (`resampling`, nearest by default so that labels stay valid codes) into
   the output window it covers. Pixels no core covers are `nodata`.
2. **Mosaic.** Piece by piece, windowed writes into a temporary tiled, compressed GTiff. Where
   pieces overlap (zone borders after reprojection) the first valid value wins: a later piece
   only fills pixels that are still nodata. GDAL's block cache is capped at a few rows of
   blocks, so peak memory is one piece plus that cache, not the mosaic.
3. **COG.** `rio_cogeo.cogeo.cog_translate` copies the mosaic block by block into a COG
   (`in_memory=False`) with internal overviews (`mode` by default: a coarse pixel gets the most
   frequent class, not an average of codes). The colour table is passed explicitly, band and
   dataset tags are forwarded.
4. **Publish.** Local targets are built in a hidden folder next to the target and moved in
   with `os.replace`; remote targets (``s3://...``, any fsspec URL) are built in a local temp
   folder and uploaded as the very last step. A failure therefore never leaves a file, or a
   half file, at the URL (uploads and S3 read options: tasks/export/publish.py).

Legend: with `legend`, band 1 gets a colour table (`lcms.legend.legend_colormap`: code → RGBA
from the legend colour, the nodata code fully transparent), band tags ``CLASS_<code>=<name>``
and a dataset tag ``LEGEND`` (JSON list of code/name/color). GDAL stores all of these inside
the TIFF (colour map tag and GDAL_METADATA tag); GDAL category names would only go to a
``.aux.xml`` sidecar for GTiff, and rasterio has no API for them, so they are not written.
GDAL's PAM (.aux.xml) is switched off while exporting, so no sidecar can be produced.

Several bands (imagery composites, tasks/export/imagery.py): with `bands=N` (N > 1), `read(window)`
returns (N, rows, cols); a pixel is nodata where every band is `nodata`, and with 3 bands the
TIFF's colour interpretation is red, green, blue.

`validate_cog` runs rio-cogeo's validator, also on ``s3://`` URLs. The STAC items describing
the result are made by tasks/export/stac.py.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import typing
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from pyproj import CRS
from pyproj.exceptions import CRSError
from rasterio.dtypes import in_dtype_range
from rasterio.enums import ColorInterp, Resampling
from rasterio.warp import reproject, transform_bounds
from rasterio.windows import Window
from rio_cogeo.cogeo import RIOResampling, cog_translate, cog_validate
from rio_cogeo.profiles import cog_profiles

from lcms.geometry import PixelGrid
from lcms.legend import LegendClass, legend_colormap
from lcms.runtime import remove_dead_temps_beside, temp_prefix_beside
from tasks.export.publish import gdal_config, is_remote, local_path, upload_file

log = logging.getLogger(__name__)

WGS84 = "EPSG:4326"
# Points per edge when bounds are transformed between CRSs: edges are curved in the other CRS.
DENSIFY_PTS = 21
# Lossless only: a lossy codec would turn class codes into other codes.
COMPRESSIONS = {"DEFLATE": "deflate", "ZSTD": "zstd", "LZW": "lzw", "PACKBITS": "packbits"}
OVERVIEW_RESAMPLINGS: tuple[str, ...] = typing.get_args(RIOResampling)
WARP_RESAMPLINGS = (
    "nearest",
    "bilinear",
    "cubic",
    "cubic_spline",
    "lanczos",
    "average",
    "mode",
    "max",
    "min",
    "med",
    "q1",
    "q3",
    "sum",
    "rms",
)
# A lattice offset of less than this fraction of a pixel is float round-off, not a shift.
LATTICE_TOL_PX = 1e-6
# GDAL block cache while exporting: this many rows of blocks across the mosaic plus a floor, capped.
# Partly written blocks along a row of tiles stay cached until the next row completes them; a
# bounded cache keeps memory independent of the mosaic's size (GDAL's default is 5 % of RAM).
CACHE_BLOCK_ROWS = 2
CACHE_MIN_MB, CACHE_MAX_MB = 16, 1024


class ExportError(ValueError):
    """Input that cannot be exported; the message says what is wrong and what to do."""


@dataclass(frozen=True)
class TilePiece:
    """One tile's map, read lazily: its buffered grid, its core window, and a window reader."""

    tile_id: str
    grid: PixelGrid  # the tile's full (buffered) grid
    core: tuple[slice, slice]  # the core window inside `grid`
    read: Callable[[tuple[slice, slice]], np.ndarray]  # that window of the tile's 2-D map

    @property
    def core_grid(self) -> PixelGrid:
        return self.grid.window(*self.core)


@dataclass(frozen=True)
class ExportResult:
    """Where the COG went and its grid; `bounds_wgs84` is (west, south, east, north) in degrees."""

    url: str
    crs: str
    transform: tuple[float, float, float, float, float, float]
    shape: tuple[int, int]
    bounds: tuple[float, float, float, float]
    bounds_wgs84: tuple[float, float, float, float]
    n_tiles: int
    dtype: str = "uint8"
    nodata: float | None = 0
    bands: int = 1


@dataclass(frozen=True)
class _Placement:
    """Where one piece goes in the output: its window there and whether it must be reprojected."""

    piece: TilePiece
    rows: slice
    cols: slice
    warp: bool


# --------------------------------------------------------------------------- export


def export_cog(
    pieces: Iterable[TilePiece],
    url: str,
    *,
    crs: str | None = None,
    resolution: float | None = None,
    nodata: float = 0,
    legend: Sequence[LegendClass] | None = None,
    compress: str = "DEFLATE",
    blocksize: int = 512,
    overview_resampling: str = "mode",
    resampling: str = "nearest",
    storage_options: Mapping[str, Any] | None = None,
    tags: Mapping[str, Any] | None = None,
    tmp_dir: str | None = None,
    bands: int = 1,
) -> ExportResult:
    """Mosaic the pieces' cores into one COG at `url` (local path or fsspec URL); see the module docstring.

    `tmp_dir` is where remote exports are built (default: the system temp folder); it needs room
    for about twice the compressed COG. Pass pieces in row order (as the grid lists them) for the
    best use of GDAL's block cache; where pieces overlap, earlier pieces win.
    """
    pieces = list(pieces)
    if not isinstance(bands, int) or bands < 1:
        raise ExportError(f"bands must be a whole number ≥ 1, got {bands!r}")
    if bands > 1 and legend:
        raise ExportError("a legend (colour table) needs a one-band class map, not a map of several bands")
    compress_key = _check_options(pieces, nodata, compress, blocksize, overview_resampling, resampling)
    out_grid, placements = plan_output(pieces, crs=crs, resolution=resolution)
    remote = is_remote(url)
    storage_options = dict(storage_options or {})

    if remote:
        workdir = tempfile.mkdtemp(prefix="lcms-export-", dir=tmp_dir)
    else:
        target = Path(local_path(url))
        target.parent.mkdir(parents=True, exist_ok=True)
        # Next to the target so that os.replace is an atomic rename on the same file system; a killed
        # export's folder there is removed by the next one.
        remove_dead_temps_beside(target)
        workdir = tempfile.mkdtemp(prefix=temp_prefix_beside(target), suffix=".tmp", dir=target.parent)
    try:
        first = _read_core(placements[0].piece, bands)
        dtype = first.dtype
        _check_dtype(dtype, nodata, legend, placements[0].piece.tile_id)
        try:
            colormap = legend_colormap(legend, nodata) if legend else None
        except ValueError as exc:  # a colour that is not #rrggbb
            raise ExportError(str(exc)) from exc
        row_bytes = blocksize * out_grid.width * dtype.itemsize
        cache_mb = int(min(CACHE_BLOCK_ROWS * row_bytes / 2**20 + CACHE_MIN_MB, CACHE_MAX_MB))
        mosaic = os.path.join(workdir, "mosaic.tif")
        cog = os.path.join(workdir, "cog.tif")
        with rasterio.Env(GDAL_PAM_ENABLED="NO", GDAL_CACHEMAX=cache_mb):
            _write_mosaic(
                mosaic,
                out_grid,
                placements,
                first,
                nodata,
                compress_key,
                blocksize,
                resampling,
                colormap,
                legend,
                tags,
                bands,
            )
            _translate(mosaic, cog, compress_key, blocksize, nodata, overview_resampling, colormap)
        os.remove(mosaic)  # free the disk before the upload / move
        if remote:
            upload_file(cog, url, storage_options)
        else:
            os.replace(cog, target)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    bounds_wgs84 = transform_bounds(out_grid.crs, WGS84, *out_grid.bounds, densify_pts=DENSIFY_PTS)
    log.info("exported %d tiles, %d × %d px, to %s", len(pieces), out_grid.height, out_grid.width, url)
    return ExportResult(
        url=url,
        crs=out_grid.crs,
        transform=out_grid.transform,
        shape=out_grid.shape,
        bounds=out_grid.bounds,
        bounds_wgs84=tuple(float(v) for v in bounds_wgs84),
        n_tiles=len(pieces),
        dtype=str(dtype),
        nodata=nodata,
        bands=bands,
    )


def _check_options(
    pieces: list[TilePiece], nodata: float, compress: str, blocksize: int, overview_resampling: str, resampling: str
) -> str:
    if not pieces:
        raise ExportError("no pieces to export: pass at least one TilePiece")
    for piece in pieces:
        if not isinstance(piece, TilePiece):
            raise ExportError(f"pieces must be TilePiece values, got {type(piece).__name__}")
        rows, cols = piece.core
        r0, r1, rs = rows.indices(piece.grid.height)
        c0, c1, cs = cols.indices(piece.grid.width)
        if rs != 1 or cs != 1 or r1 <= r0 or c1 <= c0:
            raise ExportError(f"tile {piece.tile_id}: core window {piece.core} is empty or strided in {piece.grid}")
    ids = [p.tile_id for p in pieces]
    if len(set(ids)) != len(ids):
        dupes = sorted(i for i, n in Counter(ids).items() if n > 1)
        raise ExportError(f"tile ids appear more than once: {dupes[:5]}")
    if nodata is None:
        raise ExportError("nodata must be a value (0 for label maps): uncovered pixels need one")
    key = COMPRESSIONS.get(str(compress).upper())
    if key is None:
        raise ExportError(f"unknown compress {compress!r}: use one of {sorted(COMPRESSIONS)} (lossless only)")
    if not isinstance(blocksize, int) or blocksize < 16 or blocksize % 16:
        raise ExportError(f"blocksize must be a positive multiple of 16 (TIFF tiles), got {blocksize!r}")
    if overview_resampling not in OVERVIEW_RESAMPLINGS:
        raise ExportError(
            f"unknown overview_resampling {overview_resampling!r}: use one of {OVERVIEW_RESAMPLINGS} "
            "('mode' for class maps, 'average' for continuous maps)"
        )
    if resampling not in WARP_RESAMPLINGS:
        raise ExportError(
            f"unknown resampling {resampling!r}: use one of {WARP_RESAMPLINGS} ('nearest' or 'mode' for class maps)"
        )
    return key


def _check_dtype(dtype: np.dtype, nodata: float, legend: Sequence[LegendClass] | None, tile_id: str) -> None:
    if not rasterio.dtypes.check_dtype(dtype) or dtype.kind not in "uif":
        raise ExportError(f"tile {tile_id}: read() returned {dtype}, which a GeoTIFF cannot hold; return uint8")
    if not in_dtype_range(nodata, dtype):
        raise ExportError(f"nodata {nodata} does not fit the maps' dtype {dtype} (NaN needs a float map)")
    if legend:
        if dtype not in (np.uint8, np.uint16):
            raise ExportError(f"a legend (colour table) needs a uint8 or uint16 map, the maps are {dtype}")
        for c in legend:
            if not in_dtype_range(c.code, dtype):
                raise ExportError(f"legend code {c.code} ({c.name}) does not fit the maps' dtype {dtype}")


# --------------------------------------------------------------------------- output grid


def plan_output(
    pieces: Sequence[TilePiece], *, crs: str | None = None, resolution: float | None = None
) -> tuple[PixelGrid, list[_Placement]]:
    """The output grid and each piece's window in it (see the module docstring for the rules)."""
    if not pieces:
        raise ExportError("no pieces to export: pass at least one TilePiece")
    piece_crss = {_crs_key(p.grid.crs) for p in pieces}
    if crs is None:
        if len(piece_crss) > 1:
            names = sorted({p.grid.crs for p in pieces})
            raise ExportError(
                f"pieces are in several CRSs ({', '.join(names)}): export each zone separately, "
                "or pass crs (and resolution) to reproject them all into one CRS"
            )
        crs = pieces[0].grid.crs
    try:
        crs = CRS.from_user_input(crs).to_string()
    except CRSError as exc:
        raise ExportError(f"crs {crs!r} is not a CRS pyproj knows ({exc})") from exc
    if piece_crss == {_crs_key(crs)}:
        if resolution is None:
            # Strict: differing pixel sizes or lattices need a resolution to resample to.
            _native_resolution(pieces, require=True)
            _native_lattice(pieces, require=True)
            return _native_plan(pieces, crs)
        native = _native_resolution(pieces, require=False)
        if (
            native is not None
            and np.isclose(resolution, native[0])
            and np.isclose(native[0], native[1])
            and _native_lattice(pieces, require=False)
        ):
            return _native_plan(pieces, crs)
    if resolution is None:
        raise ExportError(
            f"resolution is required when reprojecting to {crs}: pass the output pixel size in {crs} units"
        )
    if not resolution > 0:
        raise ExportError(f"resolution must be positive, got {resolution}")
    return _warp_plan(pieces, crs, float(resolution))


def _crs_key(crs: str) -> str:
    return CRS.from_user_input(crs).to_string()


def _native_resolution(pieces: Sequence[TilePiece], require: bool) -> tuple[float, float] | None:
    """The pieces' common (x, y) pixel size, or None (ExportError when `require`) if they differ."""
    a0, e0 = pieces[0].grid.transform[0], pieces[0].grid.transform[4]
    for p in pieces[1:]:
        a, e = p.grid.transform[0], p.grid.transform[4]
        if not (np.isclose(a, a0) and np.isclose(e, e0)):
            if require:
                raise ExportError(
                    f"tile {p.tile_id} has {a} × {-e} pixels, tile {pieces[0].tile_id} has {a0} × {-e0}: "
                    "pass resolution to resample them onto one grid"
                )
            return None
    return a0, -e0


def _native_lattice(pieces: Sequence[TilePiece], require: bool) -> bool:
    """Whether every piece's pixel corners sit on the first piece's lattice."""
    a, _, c0, _, e, f0 = pieces[0].grid.transform
    for p in pieces[1:]:
        _, _, c, _, _, f = p.grid.transform
        dx, dy = (c - c0) / a, (f - f0) / e
        if abs(dx - round(dx)) > LATTICE_TOL_PX or abs(dy - round(dy)) > LATTICE_TOL_PX:
            if require:
                raise ExportError(
                    f"tile {p.tile_id} is shifted by a fraction of a pixel against tile {pieces[0].tile_id}: "
                    "pass resolution to resample them onto one grid"
                )
            return False
    return True


def _native_plan(pieces: Sequence[TilePiece], crs: str) -> tuple[PixelGrid, list[_Placement]]:
    a, _, _, _, e, _ = pieces[0].grid.transform
    cores = [p.core_grid.bounds for p in pieces]
    minx = min(b[0] for b in cores)
    maxy = max(b[3] for b in cores)
    maxx = max(b[2] for b in cores)
    miny = min(b[1] for b in cores)
    width, height = round((maxx - minx) / a), round((maxy - miny) / -e)
    out = PixelGrid(crs, (a, 0.0, minx, 0.0, e, maxy), (height, width))
    placements = []
    for p, (bx0, _, _, by1) in zip(pieces, cores, strict=True):
        h, w = p.core_grid.shape
        r0, c0 = round((by1 - maxy) / e), round((bx0 - minx) / a)
        placements.append(_Placement(p, slice(r0, r0 + h), slice(c0, c0 + w), warp=False))
    return out, placements


def _warp_plan(pieces: Sequence[TilePiece], crs: str, res: float) -> tuple[PixelGrid, list[_Placement]]:
    boxes = [transform_bounds(p.grid.crs, crs, *p.core_grid.bounds, densify_pts=DENSIFY_PTS) for p in pieces]
    # Snapped to multiples of the resolution, so that exports of neighbouring areas line up.
    minx = math.floor(min(b[0] for b in boxes) / res) * res
    miny = math.floor(min(b[1] for b in boxes) / res) * res
    maxx = math.ceil(max(b[2] for b in boxes) / res) * res
    maxy = math.ceil(max(b[3] for b in boxes) / res) * res
    width, height = round((maxx - minx) / res), round((maxy - miny) / res)
    out = PixelGrid(crs, (res, 0.0, minx, 0.0, -res, maxy), (height, width))
    placements = []
    for p, (bx0, by0, bx1, by1) in zip(pieces, boxes, strict=True):
        # One pixel of margin: pixels just outside the core come out nodata and never win.
        c0 = max(math.floor((bx0 - minx) / res) - 1, 0)
        c1 = min(math.ceil((bx1 - minx) / res) + 1, width)
        r0 = max(math.floor((maxy - by1) / res) - 1, 0)
        r1 = min(math.ceil((maxy - by0) / res) + 1, height)
        placements.append(_Placement(p, slice(r0, r1), slice(c0, c1), warp=True))
    return out, placements


# --------------------------------------------------------------------------- mosaic and COG


def _read_core(piece: TilePiece, bands: int = 1) -> np.ndarray:
    data = np.asarray(piece.read(piece.core))
    expected = piece.core_grid.shape if bands == 1 else (bands, *piece.core_grid.shape)
    if data.ndim != len(expected):
        raise ExportError(
            f"tile {piece.tile_id}: read() returned a {data.ndim}-D array {data.shape}, expected {len(expected)}-D"
        )
    if data.shape != expected:
        raise ExportError(
            f"tile {piece.tile_id}: read({piece.core}) returned shape {data.shape}, expected the core's {expected}"
        )
    return data


def _is_nodata(a: np.ndarray, nodata: float) -> np.ndarray:
    if isinstance(nodata, float) and math.isnan(nodata):
        return np.isnan(a)
    return a == nodata


def _write_mosaic(
    path: str,
    out: PixelGrid,
    placements: list[_Placement],
    first: np.ndarray,
    nodata: float,
    compress_key: str,
    blocksize: int,
    resampling: str,
    colormap: dict[int, tuple[int, int, int, int]] | None,
    legend: Sequence[LegendClass] | None,
    tags: Mapping[str, Any] | None,
    bands: int = 1,
) -> None:
    dtype = first.dtype
    indexes = 1 if bands == 1 else list(range(1, bands + 1))  # 2-D writes for one band, 3-D for several
    profile = {
        "driver": "GTiff",
        "width": out.width,
        "height": out.height,
        "count": bands,
        "dtype": dtype.name,
        "crs": out.crs,
        "transform": out.affine,
        "nodata": nodata,
        "tiled": True,
        "blockxsize": blocksize,
        "blockysize": blocksize,
        "compress": compress_key.upper(),
        "BIGTIFF": "IF_SAFER",
    }
    # Windows already written (r0, r1, c0, c1), to find overlaps (reprojected zone borders) cheaply.
    written = np.zeros((len(placements), 4), dtype=np.int64)
    # w+ so that overlapping windows can be read back and merged.
    with ExitStack() as stack:
        dst = stack.enter_context(rasterio.open(path, "w+", **profile))
        for i, pl in enumerate(placements):
            data = first if i == 0 else _read_core(pl.piece, bands)
            if data.dtype != dtype:
                if not np.can_cast(data.dtype, dtype, casting="safe"):
                    raise ExportError(
                        f"tile {pl.piece.tile_id}: read() returned {data.dtype}, the first tile {dtype}; "
                        "return one dtype for all tiles"
                    )
                data = data.astype(dtype)
            if pl.warp:
                data = _reproject_piece(pl, data, out, nodata, resampling)
            r0, r1, c0, c1 = pl.rows.start, pl.rows.stop, pl.cols.start, pl.cols.stop
            window = Window(c0, r0, c1 - c0, r1 - r0)
            done = written[:i]
            if ((done[:, 0] < r1) & (done[:, 1] > r0) & (done[:, 2] < c1) & (done[:, 3] > c0)).any():
                # Earlier pieces win: only fill what is still nodata.
                existing = dst.read(indexes, window=window)
                empty = _is_nodata(existing, nodata)
                data = np.where(empty if bands == 1 else empty.all(axis=0), data, existing)
            dst.write(data, indexes, window=window)
            written[i] = (r0, r1, c0, c1)
            del data
        if bands == 3:
            dst.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue]
        if colormap:
            dst.write_colormap(1, colormap)
        if legend:
            dst.update_tags(1, **{f"CLASS_{c.code}": c.name for c in legend})
            dst.update_tags(LEGEND=legend_json(legend))
        if tags:
            dst.update_tags(**{str(k): str(v) for k, v in tags.items()})


def _reproject_piece(pl: _Placement, data: np.ndarray, out: PixelGrid, nodata: float, resampling: str) -> np.ndarray:
    src_grid = pl.piece.core_grid
    dst_grid = out.window(pl.rows, pl.cols)
    dest = np.full((*data.shape[:-2], *dst_grid.shape), nodata, dtype=data.dtype)
    reproject(
        source=data,
        destination=dest,
        src_transform=src_grid.affine,
        src_crs=src_grid.crs,
        src_nodata=nodata,
        dst_transform=dst_grid.affine,
        dst_crs=dst_grid.crs,
        dst_nodata=nodata,
        resampling=Resampling[resampling],
    )
    return dest


def _translate(
    src: str,
    dst: str,
    compress_key: str,
    blocksize: int,
    nodata: float,
    overview_resampling: str,
    colormap: dict[int, tuple[int, int, int, int]] | None,
) -> None:
    with warnings.catch_warnings():
        # rio-cogeo warns that ZSTD is "non-standard"; GDAL ≥ 2.3 reads it, and the caller chose it.
        warnings.filterwarnings("ignore", message="Non-standard compression schema")
        profile = cog_profiles.get(compress_key)
    profile.update(blockxsize=blocksize, blockysize=blocksize, BIGTIFF="IF_SAFER")
    cog_translate(
        src,
        dst,
        profile,
        nodata=nodata,
        overview_resampling=overview_resampling,
        in_memory=False,  # block by block through a temp file next to dst, never the whole raster
        quiet=True,
        forward_band_tags=True,  # CLASS_<code> tags live on band 1
        colormap=colormap,  # explicit, rather than relying on the VRT carrying the palette through
    )


# --------------------------------------------------------------------------- legend


def legend_json(legend: Sequence[LegendClass]) -> str:
    return json.dumps([{"code": int(c.code), "name": c.name, "color": c.color} for c in legend])


def read_legend_tags(tags: Mapping[str, str]) -> dict[int, str]:
    """Class names from a band's tags (``CLASS_<code>=<name>``), as written by `export_cog`."""
    return {int(k[6:]): v for k, v in tags.items() if k.startswith("CLASS_") and k[6:].isdigit()}


# --------------------------------------------------------------------------- validation


def validate_cog(
    path_or_url: str | os.PathLike, storage_options: Mapping[str, Any] | None = None
) -> tuple[bool, list[str], list[str]]:
    """rio-cogeo's validator: (is_valid, errors, warnings); ``s3://`` URLs are read through /vsis3/."""
    path = str(path_or_url)
    if path.startswith("s3://"):
        path = "/vsis3/" + path[len("s3://") :]
    return cog_validate(path, quiet=True, config=gdal_config(str(path_or_url), storage_options))


__all__ = [
    "ExportError",
    "ExportResult",
    "TilePiece",
    "export_cog",
    "legend_json",
    "plan_output",
    "read_legend_tags",
    "validate_cog",
]
