"""Map routes: XYZ tiles and TileJSON of every exported map, the STAC catalogue, and the point query.

Every route needs the viewer role (lcms/serve/auth.py).

- ``GET /maps``: the map layers (product, year, layer, zones, legend, TileJSON link).
- ``GET /maps/{product}/{year}/{layer}/tilejson.json?tile_size=256|512&format=png|webp``
- ``GET /maps/{product}/{year}/{layer}/tiles/{z}/{x}/{y}.{png|webp}?tile_size=256|512``: Web
  Mercator tiles of every UTM zone's COG of that year as one layer (lcms/serve/tiling.py). `layer`
  is ``labels`` (legend colours) or ``confidence`` (viridis over 0-100 %). A tile where the layer
  has no data is ``204 No Content``.
- ``GET /grid``: the tile grid, each tile's core as a GeoJSON polygon (the app's grid layer).
- ``GET /maps/{product}/{year}/point?lon=&lat=``: at a place, the class the map shows (its name),
  and from the prediction stage's store the predicted class, its confidence and the probability of
  every class. The tile is found through the store's grid (the tile whose core holds the point).
- ``GET /stac``: the root STAC catalogue of the maps folder (a collection per product, one for the
  imagery composites); ``GET /stac/{path}``: its collections (``collections/<id>.json``), items
  (``<item>.json``) and their COGs, at the same relative paths as in the folder, so the relative
  hrefs the export writes resolve in the browser too.

Layers come from the STAC items the export writes, re-read every few seconds (a new export shows
without a restart).
"""

from __future__ import annotations

import functools
import threading
from typing import Annotated, Literal

import fsspec
import numpy as np
import rasterio
from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi.responses import StreamingResponse
from pyproj import Transformer
from rio_tiler.errors import PointOutsideBounds
from rio_tiler.io import Reader

from lcms.grid import AreaGrid
from lcms.layout import StoreError
from lcms.serve.auth import require
from lcms.serve.state import ServeState, get_state
from lcms.serve.tiling import (
    MAP_LAYERS,
    Layer,
    LayerIndex,
    tile_format,
    tile_response,
    tilejson,
)
from lcms.store import TileStore
from tasks.export.publish import gdal_config, is_remote
from tasks.export.stac import CATALOGUE

VIEWER = require("viewer")
StateDep = Annotated[ServeState, Depends(get_state)]
router = APIRouter(tags=["maps"], dependencies=[Depends(VIEWER)])

_INDEXES: dict[str, LayerIndex] = {}
_INDEX_LOCK = threading.Lock()


def maps_folder(state: ServeState) -> str:
    return (state.config.export.url or state.store.maps_url()).rstrip("/")


def layer_index(state: ServeState) -> LayerIndex:
    """The layers of the run's maps folder (one index per folder and process)."""
    folder = maps_folder(state)
    with _INDEX_LOCK:
        if folder not in _INDEXES:
            _INDEXES[folder] = LayerIndex(folder, dict(state.store.storage_options))
        return _INDEXES[folder]


def _layer_summary(request: Request, layer: Layer) -> dict:
    return {
        "product": layer.product,
        "year": int(layer.key),
        "layer": layer.name,
        "zones": len(layer.urls),
        "items": list(layer.items),
        "bounds": list(layer.bounds),
        "legend": list(layer.legend) if layer.name == "labels" else None,
        "tilejson": str(request.url_for("map_tilejson", product=layer.product, year=layer.key, layer=layer.name)),
    }


@router.get("/maps", summary="The exported map layers")
def list_maps(request: Request, state: StateDep) -> dict:
    layers = layer_index(state).layers("maps")
    return {"layers": [_layer_summary(request, layer) for layer in layers]}


@router.get("/maps/{product}/{year}/{layer}/tilejson.json", name="map_tilejson", summary="TileJSON of a map layer")
def map_tilejson(
    state: StateDep,
    request: Request,
    product: str,
    year: int,
    layer: str,
    tile_size: int = Query(256, description="256 or 512 px"),
    format: Literal["png", "webp"] = Query("png"),
) -> dict:
    found = layer_index(state).get("maps", product, str(year), layer)
    tile_format(format, tile_size)
    template = str(
        request.url_for("map_tile", product=product, year=str(year), layer=layer, z="{z}", x="{x}", y="{y}", fmt=format)
    )
    template = template.replace("%7B", "{").replace("%7D", "}")
    if tile_size != 256:
        template += f"?tile_size={tile_size}"
    extra = {"legend": list(found.legend)} if layer == "labels" else {}
    if layer == "confidence":
        extra = {"colormap": "viridis", "rescale": [0, 100], "units": "%"}
    return tilejson(found, template, state.store.storage_options, tileSize=tile_size, **extra)


@router.get(
    "/maps/{product}/{year}/{layer}/tiles/{z}/{x}/{y}.{fmt}",
    name="map_tile",
    summary="A Web Mercator tile of a map layer",
    responses={200: {"content": {"image/png": {}, "image/webp": {}}}, 204: {"description": "no data there"}},
    response_class=Response,
)
def map_tile(
    state: StateDep,
    product: str,
    year: int,
    layer: str,
    z: int,
    x: int,
    y: int,
    fmt: str,
    tile_size: int = Query(256, description="256 or 512 px"),
) -> Response:
    found = layer_index(state).get("maps", product, str(year), layer)
    return tile_response(found, z, x, y, tile_size, fmt, state.store.storage_options)


# --------------------------------------------------------------------------- point query


@router.get("/maps/{product}/{year}/point", summary="Class, confidence and probabilities at a place")
def map_point(
    state: StateDep,
    product: str,
    year: int,
    lon: float = Query(..., ge=-180, le=180, description="longitude, degrees (WGS84)"),
    lat: float = Query(..., ge=-90, le=90, description="latitude, degrees (WGS84)"),
) -> dict:
    found = layer_index(state).get("maps", product, str(year), "labels")
    store = state.store_for(product)
    tile_id, row, col = locate(store, lon, lat)
    try:
        prediction = store.open_tile("prediction", year, tile_id)
    except StoreError as exc:
        raise HTTPException(404, f"no prediction of {product} {year} for tile {tile_id}: {exc}") from exc
    window = (slice(row, row + 1), slice(col, col + 1))
    codes = [int(c) for c in prediction.coord("class")]
    names = {int(c["code"]): c["name"] for c in prediction.attrs.get("legend", [])}
    names.update({int(c["code"]): c["name"] for c in found.legend})
    predicted = int(prediction.read("labels", window)[0, 0])
    confidence = int(prediction.read("confidence", window)[0, 0])
    probabilities = prediction.read("probabilities", window)[0, 0]
    shown = _map_value(found, lon, lat, state)
    return {
        "product": product,
        "year": year,
        "lon": lon,
        "lat": lat,
        "tile": tile_id,
        "row": row,
        "col": col,
        "class": shown,
        "class_name": names.get(shown) if shown else None,
        "predicted_class": predicted or None,
        "predicted_class_name": names.get(predicted) if predicted else None,
        "confidence": confidence if predicted else None,
        "probabilities": [
            {"code": code, "name": names.get(code, str(code)), "probability": int(p)}
            for code, p in zip(codes, probabilities.tolist(), strict=True)
        ]
        if predicted
        else [],
    }


def _map_value(layer: Layer, lon: float, lat: float, state: ServeState) -> int | None:
    """The class the exported map shows at lon/lat (the first zone COG that covers it), or None."""
    for url, (w, s, e, n) in zip(layer.urls, layer.bboxes, strict=True):
        if not (w <= lon <= e and s <= lat <= n):
            continue
        options = gdal_config(url, state.store.storage_options) if is_remote(url) else {}
        try:
            with rasterio.Env(**options), Reader(url) as src:
                point = src.point(lon, lat)
        except PointOutsideBounds:
            continue
        if not np.ma.getmaskarray(point.array)[0]:
            return int(point.array[0])
    return None


_GRIDS: dict[str, AreaGrid] = {}


def grid_of(store: TileStore) -> AreaGrid:
    """The store's area grid, read once per process (a store's grid does not change under a run)."""
    if store.url not in _GRIDS:
        _GRIDS[store.url] = store.read_grid()
    return _GRIDS[store.url]


@functools.lru_cache(maxsize=64)
def _from_wgs84(crs: str) -> Transformer:
    return Transformer.from_crs("EPSG:4326", crs, always_xy=True)


def locate(store: TileStore, lon: float, lat: float) -> tuple[str, int, int]:
    """The tile whose core holds lon/lat (the first in the grid's order, where zones overlap), and the
    point's row and column in the tile's (buffered) grid."""
    for tile in grid_of(store):
        x, y = _from_wgs84(tile.grid.crs).transform(lon, lat)
        minx, miny, maxx, maxy = tile.core_bounds
        if minx <= x < maxx and miny < y <= maxy:
            col, row = ~tile.grid.affine * (x, y)
            return tile.tile_id, int(np.floor(row)), int(np.floor(col))
    raise HTTPException(404, f"lon {lon}, lat {lat} is outside every tile of the grid: no map there")


@router.get("/grid", summary="The tile grid: each tile's core as a GeoJSON polygon in WGS84 (for the map)")
def tile_grid(state: StateDep) -> dict:
    """One feature per tile (a few thousand at country scale), its core's outline densified before reprojection."""
    import shapely
    from shapely.geometry import box, mapping

    store = state.store
    if store.url not in _GRIDS:
        try:
            _GRIDS[store.url] = store.read_grid()
        except StoreError as exc:
            raise HTTPException(404, str(exc)) from exc
    features = []
    for tile in _GRIDS[store.url]:
        to_wgs84 = Transformer.from_crs(tile.grid.crs, "EPSG:4326", always_xy=True)
        outline = shapely.segmentize(box(*tile.core_bounds), (tile.core_bounds[2] - tile.core_bounds[0]) / 8)
        outline = shapely.transform(outline, lambda xy, t=to_wgs84: np.column_stack(t.transform(*xy.T)))
        properties = {"tile_id": tile.tile_id}
        features.append({"type": "Feature", "id": tile.tile_id, "properties": properties, "geometry": mapping(outline)})
    return {"type": "FeatureCollection", "features": features}


# --------------------------------------------------------------------------- STAC


@router.get("/stac", summary="The STAC catalogue of the maps (root catalog.json)")
def stac_root(state: StateDep) -> dict:
    return layer_index(state).catalogue()[CATALOGUE]


@router.get("/stac/{path:path}", summary="A collection, an item or a COG of the STAC catalogue")
def stac_file(path: str, state: StateDep):
    index = layer_index(state)
    documents = index.catalogue()
    if path in documents:
        return documents[path]
    item = index.item(path)
    if item is not None:
        return item
    if path.endswith(".tif") and ".." not in path.split("/"):
        cogs = {url for layer in [*index.layers("maps"), *index.layers("imagery")] for url in layer.urls}
        url = f"{maps_folder(state)}/{path}"
        if url in cogs:
            return _stream(url, state)
    raise HTTPException(404, f"{path!r} is not in the STAC catalogue: start from /stac")


def _stream(url: str, state: ServeState) -> StreamingResponse:
    fs, fs_path = fsspec.core.url_to_fs(url, **state.store.storage_options)

    def chunks():
        with fs.open(fs_path, "rb") as f:
            while block := f.read(1 << 20):
                yield block

    name = url.rsplit("/", 1)[-1]
    headers = {"Content-Disposition": f'attachment; filename="{name}"'}
    return StreamingResponse(
        chunks(), media_type="image/tiff; application=geotiff; profile=cloud-optimized", headers=headers
    )


__all__ = ["MAP_LAYERS", "layer_index", "locate", "router"]
