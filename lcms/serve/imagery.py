"""Imagery routes: tiles of the composites, chips of single acquisitions, and time series.

Every route needs the viewer role (lcms/serve/auth.py).

- ``GET /imagery``: the composite layers (period, composite, TileJSON link).
- ``GET /imagery/{period}/{composite}/tilejson.json`` and
  ``GET /imagery/{period}/{composite}/tiles/{z}/{x}/{y}.{png|webp}?tile_size=256|512``: the export's
  median composites (tasks/export/imagery.py), period ``2023`` or ``2023-Q1``, composite
  ``true-colour`` or ``false-colour``, tiled like the maps.
- ``GET /imagery/chips?bbox=west,south,east,north[&years=2023,2024][&max_cloud=0.5]`` and
  ``POST /imagery/chips`` with ``{"geometry": <GeoJSON polygon>, ...}``: every acquisition of the
  download stage's store over the place (the tile whose core holds its centre), with its date, the
  fraction of the place under cloud or shadow and the fraction valid, and the URL of its chip.
- ``GET /imagery/chips/{year}/{tile}/{date}.png?bbox=...``: that acquisition's true colour
  (B04 B03 B02, scaled as the composites) over the bbox at the tile's resolution; no data is
  transparent.
- ``GET /imagery/timeseries?lon=&lat=&band=NDVI`` and ``POST /imagery/timeseries`` with a polygon:
  for every year in the store, the per-date values of a band or index over the valid observations
  (the mean over the polygon's valid pixels, with their count) and the features stage's
  interpolated values of it, when it is one of the features.

Places are given in WGS84 degrees; the chips and time series read one tile (the one whose core
holds the place's centre), clipped to its buffered grid.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Body, Depends, HTTPException, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from pyproj import Transformer
from rasterio.features import geometry_mask
from rasterio.windows import from_bounds
from rio_tiler.utils import render
from shapely.geometry import box, mapping, shape
from shapely.ops import transform as shapely_transform

from lcms.layout import StoreError
from lcms.serve.maps import VIEWER, StateDep, grid_of, layer_index, locate
from lcms.serve.state import ServeState
from lcms.serve.tiling import Layer, tile_format, tile_response, tilejson
from lcms.store import TileStore
from tasks.export.imagery import COMPOSITES, display_rgb
from tasks.features.indices import INDEX_BANDS, feature_stack

router = APIRouter(tags=["imagery"], dependencies=[Depends(VIEWER)])

#: The largest chip, in pixels a side; the largest polygon of a time series, in pixels.
MAX_CHIP_PX = 1024
MAX_SERIES_PIXELS = 250_000
TRUE_COLOUR = COMPOSITES["true-colour"]


# --------------------------------------------------------------------------- composites


def _summary(request: Request, layer: Layer) -> dict:
    return {
        "period": layer.key,
        "composite": layer.name,
        "zones": len(layer.urls),
        "bounds": list(layer.bounds),
        "tilejson": str(request.url_for("imagery_tilejson", period=layer.key, composite=layer.name)),
    }


@router.get("/imagery", summary="The imagery composite layers")
def list_imagery(request: Request, state: StateDep) -> dict:
    return {"layers": [_summary(request, layer) for layer in layer_index(state).layers("imagery")]}


@router.get("/imagery/{period}/{composite}/tilejson.json", name="imagery_tilejson", summary="TileJSON of a composite")
def imagery_tilejson(
    state: StateDep,
    request: Request,
    period: str,
    composite: str,
    tile_size: int = Query(256, description="256 or 512 px"),
    format: Literal["png", "webp"] = Query("png"),
) -> dict:
    found = layer_index(state).get("imagery", None, period, composite)
    tile_format(format, tile_size)
    template = str(
        request.url_for("imagery_tile", period=period, composite=composite, z="{z}", x="{x}", y="{y}", fmt=format)
    )
    template = template.replace("%7B", "{").replace("%7D", "}")
    if tile_size != 256:
        template += f"?tile_size={tile_size}"
    return tilejson(found, template, state.store.storage_options, tileSize=tile_size, bands=list(COMPOSITES[composite]))


@router.get(
    "/imagery/{period}/{composite}/tiles/{z}/{x}/{y}.{fmt}",
    name="imagery_tile",
    summary="A Web Mercator tile of a composite",
    responses={200: {"content": {"image/png": {}, "image/webp": {}}}, 204: {"description": "no data there"}},
    response_class=Response,
)
def imagery_tile(
    state: StateDep,
    period: str,
    composite: str,
    z: int,
    x: int,
    y: int,
    fmt: str,
    tile_size: int = Query(256, description="256 or 512 px"),
) -> Response:
    found = layer_index(state).get("imagery", None, period, composite)
    return tile_response(found, z, x, y, tile_size, fmt, state.store.storage_options)


# --------------------------------------------------------------------------- places


def parse_bbox(text: str) -> tuple[float, float, float, float]:
    """'west,south,east,north' in degrees, or 400 saying what is wrong."""
    parts = text.split(",")
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 4 or not all(np.isfinite(values)):
        raise HTTPException(400, f"bbox must be four numbers west,south,east,north in degrees, got {text!r}")
    west, south, east, north = values
    if not (-180 <= west < east <= 180 and -90 <= south < north <= 90):
        raise HTTPException(
            400,
            f"bbox {text!r} must have -180 ≤ west < east ≤ 180 and -90 ≤ south < north ≤ 90 (degrees, WGS84)",
        )
    return west, south, east, north


class Place(BaseModel):
    """A polygon (GeoJSON geometry, WGS84), or a bbox."""

    model_config = ConfigDict(extra="forbid")
    geometry: dict[str, Any] | None = Field(None, description="GeoJSON Polygon or MultiPolygon in WGS84")
    bbox: str | None = Field(None, description="west,south,east,north in degrees")
    years: list[int] | None = Field(None, description="default: every year in the store")
    max_cloud: float = Field(1.0, ge=0, le=1, description="leave out acquisitions cloudier than this over the place")


def _geometry(place: Place):
    if (place.geometry is None) == (place.bbox is None):
        raise HTTPException(400, "give exactly one of geometry (a GeoJSON polygon) or bbox")
    if place.bbox is not None:
        return box(*parse_bbox(place.bbox))
    try:
        geom = shape(place.geometry)
    except Exception as exc:  # shapely's errors for malformed GeoJSON are of several kinds
        raise HTTPException(400, f"geometry is not valid GeoJSON: {exc}") from exc
    if geom.geom_type not in ("Polygon", "MultiPolygon") or geom.is_empty or not geom.is_valid:
        raise HTTPException(400, f"geometry must be a valid, non-empty Polygon or MultiPolygon, got {geom.geom_type}")
    west, south, east, north = geom.bounds
    if not (-180 <= west <= east <= 180 and -90 <= south <= north <= 90):
        raise HTTPException(400, "geometry coordinates must be longitude, latitude in degrees (WGS84)")
    return geom


class Footprint:
    """A place on one tile: the window of the tile's grid that holds it and the pixels inside it."""

    def __init__(self, store: TileStore, geom, year: int | None = None, max_px: int | None = None):
        centre = geom.centroid if geom.geom_type != "Point" else geom
        self.tile_id, row, col = locate(store, centre.x, centre.y)
        tile = grid_of(store)[self.tile_id]
        to_tile = Transformer.from_crs("EPSG:4326", tile.grid.crs, always_xy=True)
        local = shapely_transform(to_tile.transform, geom)
        if geom.geom_type == "Point":
            self.window = (slice(row, row + 1), slice(col, col + 1))
            self.inside = np.ones((1, 1), dtype=bool)
            return
        win = from_bounds(*local.bounds, transform=tile.grid.affine).round_offsets().round_lengths()
        if max_px is not None and max(win.height, win.width) > max_px:
            raise HTTPException(
                400, f"the place is {win.height} × {win.width} px at the tiles' resolution: at most {max_px} px a side"
            )
        r0, c0 = max(0, int(win.row_off)), max(0, int(win.col_off))
        r1 = min(tile.grid.height, int(win.row_off + max(1, win.height)))
        c1 = min(tile.grid.width, int(win.col_off + max(1, win.width)))
        self.window = (slice(r0, r1), slice(c0, c1))
        sub = tile.grid.window(*self.window)
        self.inside = geometry_mask([mapping(local)], out_shape=sub.shape, transform=sub.affine, invert=True)
        if not self.inside.any():  # smaller than a pixel: its centre pixel
            self.inside[min(row - r0, sub.shape[0] - 1), min(col - c0, sub.shape[1] - 1)] = True


def _years(store: TileStore, wanted: list[int] | None) -> list[int]:
    years = store.years("download")
    if wanted is None:
        return years
    unknown = sorted(set(wanted) - set(years))
    if unknown:
        raise HTTPException(404, f"years {unknown} have no imagery in the store; it has {years}")
    return sorted(set(wanted))


# --------------------------------------------------------------------------- chips


def _acquisitions(request: Request, state: ServeState, place: Place, bbox_text: str) -> dict:
    geom = _geometry(place)
    store = state.store
    footprint = Footprint(store, geom, max_px=MAX_CHIP_PX)
    rows, cols = footprint.window
    inside = footprint.inside
    area = int(inside.sum())
    out = []
    for year in _years(store, place.years):
        try:
            tile = store.open_tile("download", year, footprint.tile_id)
        except StoreError:
            continue
        data = tile.read("data_mask", footprint.window)[:, inside]
        cloudy = (tile.read("cloud_mask", footprint.window) | tile.read("shadow_mask", footprint.window))[:, inside]
        valid = tile.read("valid_mask", footprint.window)[:, inside]
        for t, when in enumerate(tile.coord("time")):
            n_data = int(data[t].sum())
            cloud = float((cloudy[t] & data[t]).sum() / n_data) if n_data else None
            if n_data == 0 or cloud > place.max_cloud:
                continue
            stamp = _stamp(when)
            url = request.url_for("imagery_chip", year=str(year), tile_id=footprint.tile_id, date=stamp)
            out.append(
                {
                    "date": str(np.datetime_as_string(when, unit="s")) + "Z",
                    "year": year,
                    "tile": footprint.tile_id,
                    "cloud_fraction": round(cloud, 4),
                    "valid_fraction": round(int(valid[t].sum()) / area, 4),
                    "data_fraction": round(n_data / area, 4),
                    "chip": f"{url}?bbox={bbox_text}",
                }
            )
    return {
        "tile": footprint.tile_id,
        "bbox": [float(v) for v in geom.bounds],
        "size": [rows.stop - rows.start, cols.stop - cols.start],
        "acquisitions": out,
    }


def _stamp(when: np.datetime64) -> str:
    return np.datetime_as_string(when, unit="s").replace("-", "").replace(":", "")


@router.get("/imagery/chips", summary="The acquisitions over a bbox, with dates, cloud fraction and chip URLs")
def list_chips(
    state: StateDep,
    request: Request,
    bbox: str = Query(..., description="west,south,east,north in degrees (WGS84)"),
    years: str | None = Query(None, description="comma-separated years; default: all"),
    max_cloud: float = Query(1.0, ge=0, le=1),
) -> dict:
    wanted = _parse_years(years)
    return _acquisitions(request, state, Place(bbox=bbox, years=wanted, max_cloud=max_cloud), bbox)


@router.post("/imagery/chips", summary="The acquisitions over a polygon or bbox")
def post_chips(request: Request, place: Annotated[Place, Body()], state: StateDep) -> dict:
    geom = _geometry(place)
    bbox_text = ",".join(f"{v:.7f}" for v in geom.bounds)
    return _acquisitions(request, state, place, bbox_text)


def _parse_years(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise HTTPException(400, f"years must be comma-separated whole years, got {text!r}") from None


@router.get(
    "/imagery/chips/{year}/{tile_id}/{date}.png",
    name="imagery_chip",
    summary="True colour of one acquisition over a bbox",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}},
)
def chip(
    state: StateDep,
    year: int,
    tile_id: str,
    date: str,
    bbox: str = Query(..., description="west,south,east,north in degrees (WGS84)"),
) -> Response:
    store = state.store
    geom = box(*parse_bbox(bbox))
    footprint = Footprint(store, geom, max_px=MAX_CHIP_PX)
    if footprint.tile_id != tile_id:
        raise HTTPException(404, f"the bbox's centre lies on tile {footprint.tile_id}, not {tile_id}")
    try:
        tile = store.open_tile("download", year, tile_id)
    except StoreError as exc:
        raise HTTPException(404, f"no imagery of {year} for tile {tile_id}") from exc
    stamps = [_stamp(t) for t in tile.coord("time")]
    if date not in stamps:
        raise HTTPException(
            404, f"tile {tile_id} has no acquisition at {date} in {year}: list them with /imagery/chips"
        )
    t = stamps.index(date)
    names = list(tile.coord("band"))
    rgb = tile.read("bands", footprint.window, select={"time": [t], "band": [names.index(b) for b in TRUE_COLOUR]})
    data = tile.read("data_mask", footprint.window, select={"time": [t]})[0]
    settings = state.config.export.imagery
    image = display_rgb(rgb[0].transpose(2, 0, 1), settings.max_reflectance)
    png = render(image, mask=np.where(data, 255, 0).astype(np.uint8), img_format="PNG")
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})


# --------------------------------------------------------------------------- time series


class SeriesRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    geometry: dict[str, Any] = Field(..., description="GeoJSON Point, Polygon or MultiPolygon in WGS84")
    band: str = Field("NDVI", description="a band (B02 …) or an index (NDVI, NDWI, NDBI, TC_*)")
    years: list[int] | None = None


@router.get("/imagery/timeseries", summary="Per-date values of a band or index at a point, over every year")
def timeseries_point(
    state: StateDep,
    lon: float = Query(..., ge=-180, le=180),
    lat: float = Query(..., ge=-90, le=90),
    band: str = Query("NDVI", description="a band (B02 …) or an index (NDVI, NDWI, NDBI, TC_*)"),
    years: str | None = Query(None, description="comma-separated years; default: all"),
) -> dict:
    from shapely.geometry import Point

    return series(state, Point(lon, lat), band, _parse_years(years))


@router.post("/imagery/timeseries", summary="Per-date values of a band or index over a polygon or at a point")
def timeseries_place(body: SeriesRequest, state: StateDep) -> dict:
    try:
        geom = shape(body.geometry)
    except Exception as exc:
        raise HTTPException(400, f"geometry is not valid GeoJSON: {exc}") from exc
    if geom.geom_type not in ("Point", "Polygon", "MultiPolygon") or geom.is_empty or not geom.is_valid:
        raise HTTPException(400, f"geometry must be a valid Point, Polygon or MultiPolygon, got {geom.geom_type}")
    return series(state, geom, body.band, body.years)


def series(state: ServeState, geom, band: str, years: list[int] | None) -> dict:
    """Observations (valid only) and interpolated features of `band` over `geom`, per year."""
    store = state.store
    footprint = Footprint(store, geom)
    inside = footprint.inside
    if inside.sum() > MAX_SERIES_PIXELS:
        raise HTTPException(400, f"the polygon covers {int(inside.sum())} px: at most {MAX_SERIES_PIXELS}")
    observations, interpolated, found = [], [], False
    for year in _years(store, years):
        try:
            tile = store.open_tile("download", year, footprint.tile_id)
        except StoreError:
            continue
        names = list(tile.coord("band"))
        needed = [band] if band in names else list(INDEX_BANDS.get(band, ()))
        if not needed or any(b not in names for b in needed):
            raise HTTPException(
                400, f"unknown band or index {band!r}: use one of the bands {names} or the indices {list(INDEX_BANDS)}"
            )
        found = True
        raw = tile.read("bands", footprint.window, select={"band": [names.index(b) for b in needed]})
        valid = tile.read("valid_mask", footprint.window) & inside
        values = feature_stack(raw, needed, [band])[..., 0]
        for t, when in enumerate(tile.coord("time")):
            count = int(valid[t].sum())
            if count:
                observations.append(
                    {
                        "date": _iso(when),
                        "value": round(float(values[t][valid[t]].mean()), 5),
                        "pixels": count,
                    }
                )
        interpolated += _interpolated(store, year, footprint, band)
    if not found:
        raise HTTPException(404, "the store has no imagery of those years for this place")
    return {
        "band": band,
        "tile": footprint.tile_id,
        "pixels": int(inside.sum()),
        "observations": observations,
        "interpolated": interpolated,
    }


def _interpolated(store: TileStore, year: int, footprint: Footprint, band: str) -> list[dict]:
    try:
        features = store.open_tile("features", year, footprint.tile_id)
    except StoreError:
        return []
    names = list(features.coord("feature"))
    if band not in names:
        return []
    stored = features.read("features", footprint.window, select={"feature": [names.index(band)]})[..., 0]
    attrs = dict(features.group["features"].attrs)
    missing, scale = attrs.get("missing_value"), attrs.get("scale_factor", 1.0)
    ok = np.isfinite(stored) if stored.dtype.kind == "f" else stored != missing
    ok &= footprint.inside
    out = []
    for t, when in enumerate(features.coord("time")):
        if ok[t].any():
            out.append({"date": _iso(when), "value": round(float(stored[t][ok[t]].mean() * scale), 5)})
    return out


def _iso(when: np.datetime64) -> str:
    return str(np.datetime_as_string(when, unit="s")) + "Z"


__all__ = ["parse_bbox", "router", "series"]
