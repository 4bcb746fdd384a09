"""Map layers found in the export's STAC items, and their XYZ tiles, rendered with rio-tiler.

The export (tasks/export/maps.py, tasks/export/imagery.py) writes a STAC item beside every COG in
the maps folder (``export.url``, default ``<store>/maps``). `LayerIndex` reads those items (again
after `REFRESH_SECONDS`, so a new export shows without a restart) and groups them into layers:

- a **map layer** per product, year and map (``labels``, ``confidence``): every UTM zone's COG of
  that year in one layer;
- an **imagery layer** per period (``2023``, ``2023-Q1``) and composite (``true-colour``,
  ``false-colour``).

`render_tile` reads one Web Mercator tile (morecantile's WebMercatorQuad, 256 or 512 px) of a
layer as a mosaic over its zone COGs (rio-tiler's `mosaic_reader`, in the calling thread; the first COG with data wins,
only the COGs whose bbox meets the tile are opened) and renders it as PNG or WebP with a colour
map: the legend's colours for labels, a viridis ramp over 0-100 % for confidence; imagery is
already RGB. Nodata is transparent.

The COGs are read where the export put them, a local folder or S3 (GDAL's /vsis3/ with the
store's endpoint, tasks/export/publish.py).
"""

from __future__ import annotations

import os
import posixpath
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import morecantile
import rasterio
from fastapi import HTTPException, Response
from rio_tiler.colormap import cmap as colormaps
from rio_tiler.errors import EmptyMosaicError, TileOutsideBounds
from rio_tiler.io import Reader
from rio_tiler.mosaic import mosaic_reader

from lcms.legend import hex_to_rgba
from tasks.export.publish import gdal_config, is_remote
from tasks.export.stac import IMAGERY_COLLECTION, catalogue_documents, read_items

TMS = morecantile.tms.get("WebMercatorQuad")
TILE_SIZES = (256, 512)
FORMATS = {"png": ("PNG", "image/png"), "webp": ("WEBP", "image/webp")}
REFRESH_SECONDS = 10.0
MAP_LAYERS = ("labels", "confidence")
IMAGERY_LAYERS = ("true-colour", "false-colour")


def full_lut(colours: Mapping[int, tuple[int, int, int, int]]) -> dict[int, tuple[int, int, int, int]]:
    """A colour map of all 256 uint8 values (others transparent): rio-tiler then applies it as a lookup table."""
    return {v: tuple(colours.get(v, (0, 0, 0, 0))) for v in range(256)}


def confidence_colormap() -> dict[int, tuple[int, int, int, int]]:
    """Confidence in percent → viridis (1 % dark violet … 100 % yellow); 0 (no data) transparent."""
    viridis = colormaps.get("viridis")
    return full_lut({v: tuple(int(c) for c in viridis[min(255, round(v * 255 / 100))]) for v in range(1, 101)})


CONFIDENCE_COLORMAP = confidence_colormap()


@dataclass(frozen=True)
class Layer:
    """One tiled layer: every zone's COG of a product's map of a year, or of an imagery composite."""

    group: str  # "maps" or "imagery"
    product: str | None  # maps: the product; imagery: None (shared by every product)
    key: str  # maps: the year; imagery: the period
    name: str  # labels, confidence, true-colour, false-colour
    urls: tuple[str, ...]  # the zone COGs
    bboxes: tuple[tuple[float, float, float, float], ...]  # each COG's WGS84 bbox
    legend: tuple[dict, ...] = ()  # labels: code, name, color
    items: tuple[str, ...] = ()  # the STAC item ids

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        return (
            min(b[0] for b in self.bboxes),
            min(b[1] for b in self.bboxes),
            max(b[2] for b in self.bboxes),
            max(b[3] for b in self.bboxes),
        )

    @property
    def colormap(self) -> dict[int, tuple[int, int, int, int]] | None:
        if self.name == "labels":
            return full_lut({int(c["code"]): hex_to_rgba(c["color"]) for c in self.legend if c["code"]})
        if self.name == "confidence":
            return CONFIDENCE_COLORMAP
        return None  # imagery: RGB


@dataclass
class LayerIndex:
    """The layers of a maps folder, from its STAC items; re-read every `REFRESH_SECONDS`."""

    folder: str
    storage_options: Mapping[str, Any] = field(default_factory=dict)
    _items: dict[str, dict] = field(default_factory=dict, repr=False)
    _layers: dict[tuple[str, str | None, str, str], Layer] = field(default_factory=dict, repr=False)
    _read_at: float = field(default=-1e9, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def refresh(self, force: bool = False) -> None:
        with self._lock:
            if not force and time.monotonic() - self._read_at < REFRESH_SECONDS:
                return
            try:
                items = read_items(self.folder, self.storage_options)
            except FileNotFoundError:
                items = {}
            self._items, self._layers = items, self._group(items)
            self._read_at = time.monotonic()

    def _group(self, items: Mapping[str, dict]) -> dict:
        parts: dict[tuple, list[tuple[str, dict]]] = {}
        for path, item in items.items():
            key = layer_key(item)
            if key is not None:
                parts.setdefault(key, []).append((path, item))
        layers = {}
        for key, members in parts.items():
            group, product, period, name = key
            members.sort(key=lambda m: m[1]["id"])
            urls, bboxes, legend = [], [], ()
            for path, item in members:
                asset = item["assets"].get("data") or next(iter(item["assets"].values()))
                urls.append(self.resolve(path, asset["href"]))
                bboxes.append(tuple(item["bbox"][:4]))
                classes = asset.get("classification:classes") or []
                if classes and not legend:
                    legend = tuple(
                        {"code": c["value"], "name": c.get("title") or c["name"], "color": "#" + c["color_hint"]}
                        for c in classes
                        if not c.get("nodata")
                    )
            layers[key] = Layer(
                group,
                product,
                period,
                name,
                tuple(urls),
                tuple(bboxes),
                legend,
                tuple(m[1]["id"] for m in members),
            )
        return layers

    def resolve(self, item_path: str, href: str) -> str:
        """An asset's URL: a relative href is relative to its item's folder (old items: absolute)."""
        if "://" in href or href.startswith("/"):
            return href
        relative = posixpath.normpath(posixpath.join(posixpath.dirname(item_path), href))
        return f"{self.folder.rstrip('/')}/{relative}"

    # ---------------------------------------------------------------- look-ups

    def layers(self, group: str) -> list[Layer]:
        self.refresh()
        return sorted(
            (v for k, v in self._layers.items() if k[0] == group), key=lambda v: (v.product or "", v.key, v.name)
        )

    def get(self, group: str, product: str | None, key: str, name: str) -> Layer:
        """The layer, or 404 naming what is unknown and what there is."""
        self.refresh()
        found = self._layers.get((group, product, key, name))
        if found is not None:
            return found
        mine = [k for k in self._layers if k[0] == group]
        if group == "maps":
            products = sorted({k[1] for k in mine})
            if product not in products:
                raise HTTPException(404, f"unknown product {product!r}: the maps have {products or 'none yet'}")
            years = sorted({k[2] for k in mine if k[1] == product})
            if key not in years:
                raise HTTPException(404, f"unknown year {key!r} for {product}: its maps have the years {years}")
            names = sorted({k[3] for k in mine if k[1] == product and k[2] == key})
            raise HTTPException(404, f"unknown layer {name!r} for {product} {key}: there are {names}")
        periods = sorted({k[2] for k in mine})
        if key not in periods:
            raise HTTPException(404, f"unknown imagery period {key!r}: the composites have {periods or 'none yet'}")
        names = sorted({k[3] for k in mine if k[2] == key})
        raise HTTPException(404, f"unknown imagery composite {name!r} for {key}: there are {names}")

    def products(self) -> list[str]:
        self.refresh()
        return sorted({k[1] for k in self._layers if k[0] == "maps"})

    def years(self, product: str) -> list[str]:
        self.refresh()
        return sorted({k[2] for k in self._layers if k[0] == "maps" and k[1] == product})

    def catalogue(self) -> dict[str, dict]:
        """The STAC catalogue and collections of the items, by their path in the maps folder."""
        self.refresh()
        return catalogue_documents(self._items)

    def item(self, path: str) -> dict | None:
        self.refresh()
        return self._items.get(path)


def layer_key(item: Mapping[str, Any]) -> tuple[str, str | None, str, str] | None:
    """(group, product, year or period, layer) of an exported item; None for items of no layer."""
    props = item.get("properties", {})
    if item.get("collection") == IMAGERY_COLLECTION or "lcms:imagery" in props:
        if props.get("lcms:imagery") in IMAGERY_LAYERS and props.get("lcms:period"):
            return "imagery", None, str(props["lcms:period"]), props["lcms:imagery"]
        return None
    kind, product = props.get("lcms:map"), props.get("lcms:product") or props.get("lcms:model")
    year = props.get("lcms:year") or (props.get("start_datetime") or "")[:4]
    if kind in MAP_LAYERS and product and str(year).isdigit():
        return "maps", product, str(year), kind
    return None


# --------------------------------------------------------------------------- tiles


def check_tile(z: int, x: int, y: int) -> None:
    """404 for a tile address outside WebMercatorQuad."""
    if not 0 <= z <= TMS.maxzoom:
        raise HTTPException(404, f"zoom {z} is out of range: WebMercatorQuad has zoom levels 0 to {TMS.maxzoom}")
    n = 2**z
    if not (0 <= x < n and 0 <= y < n):
        raise HTTPException(404, f"tile {z}/{x}/{y} does not exist: at zoom {z}, x and y run from 0 to {n - 1}")


def tile_format(fmt: str, tile_size: int) -> tuple[str, str]:
    if fmt not in FORMATS:
        raise HTTPException(404, f"unknown tile format {fmt!r}: use {' or '.join(FORMATS)}")
    if tile_size not in TILE_SIZES:
        raise HTTPException(400, f"tile_size {tile_size} is not offered: use {' or '.join(map(str, TILE_SIZES))}")
    return FORMATS[fmt]


def _intersects(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


# Open readers, per thread (a rasterio dataset is not thread-safe) and file version: opening a COG,
# reading its header and working out its bounds in Web Mercator cost more than reading a tile from
# it. A re-exported COG (a new file moved in over the old one, or a new S3 object) is seen within
# `REOPEN_SECONDS`.
_OPEN = threading.local()
REOPEN_SECONDS = 10.0
MAX_OPEN = 64


def _reader(url: str) -> Reader:
    cache: dict = _OPEN.__dict__.setdefault("readers", {})
    now = time.monotonic()
    entry = cache.get(url)
    if entry is not None and now - entry[1] < REOPEN_SECONDS:
        return entry[0]
    version = os.stat(url).st_mtime_ns if not is_remote(url) else None
    if entry is not None and version is not None and entry[2] == version:
        cache[url] = (entry[0], now, version)
        return entry[0]
    if entry is not None:
        entry[0].close()
    if len(cache) >= MAX_OPEN:
        for old in list(cache)[: MAX_OPEN // 2]:
            cache.pop(old)[0].close()
    reader = Reader(url, tms=TMS)
    cache[url] = (reader, now, version)
    return reader


def _read_tile(url: str, x: int, y: int, z: int, **kwargs):
    return _reader(url).tile(x, y, z, **kwargs)


def render_tile(
    layer: Layer, z: int, x: int, y: int, tile_size: int, fmt: str, storage_options: Mapping[str, Any]
) -> bytes | None:
    """The tile as an image, or None when no COG of the layer has data there."""
    check_tile(z, x, y)
    driver, _ = tile_format(fmt, tile_size)
    bounds = tuple(TMS.bounds(morecantile.Tile(x, y, z)))
    urls = [u for u, b in zip(layer.urls, layer.bboxes, strict=True) if _intersects(bounds, b)]
    if not urls:
        return None
    options = gdal_config(urls[0], storage_options) if is_remote(urls[0]) else {}
    try:
        with rasterio.Env(**options):
            image, _ = mosaic_reader(urls, _read_tile, x, y, z, tilesize=tile_size, threads=0)
    except (EmptyMosaicError, TileOutsideBounds):
        return None
    if not image.mask.any():
        return None
    # Fast deflate: a tile is encoded on every request; size matters less than time on a LAN.
    options = {"ZLEVEL": 1} if driver == "PNG" else {"QUALITY": 85}
    return image.render(img_format=driver, colormap=layer.colormap, **options)


def tilejson(layer: Layer, tiles_url: str, storage_options: Mapping[str, Any], **extra: Any) -> dict:
    """TileJSON 3.0.0 of a layer; `tiles_url` is the tile URL template ({z}/{x}/{y} left in)."""
    minzoom, maxzoom = zoom_range(layer, storage_options)
    west, south, east, north = layer.bounds
    return {
        "tilejson": "3.0.0",
        "name": f"{layer.product + ' ' if layer.product else ''}{layer.name} {layer.key}",
        "scheme": "xyz",
        "tiles": [tiles_url],
        "minzoom": minzoom,
        "maxzoom": maxzoom,
        "bounds": [west, south, east, north],
        "center": [(west + east) / 2, (south + north) / 2, max(minzoom, min(maxzoom, minzoom + 2))],
        **extra,
    }


_ZOOMS: dict[str, tuple[int, int]] = {}


def zoom_range(layer: Layer, storage_options: Mapping[str, Any]) -> tuple[int, int]:
    """The zooms of a layer's COGs (rio-tiler from their resolution and overviews), cached by URL."""
    zooms = []
    for url in layer.urls:
        if url not in _ZOOMS:
            options = gdal_config(url, storage_options) if is_remote(url) else {}
            with rasterio.Env(**options), Reader(url, tms=TMS) as src:
                _ZOOMS[url] = (src.minzoom, src.maxzoom)
        zooms.append(_ZOOMS[url])
    return min(z[0] for z in zooms), max(z[1] for z in zooms)


def tile_response(found, z: int, x: int, y: int, tile_size: int, fmt: str, storage_options) -> Response:
    """The HTTP answer for one tile of a layer: the image, or 204 where the layer has no data."""
    _, media_type = tile_format(fmt, tile_size)
    image = render_tile(found, z, x, y, tile_size, fmt, storage_options)
    if image is None:
        return Response(status_code=204)
    return Response(image, media_type=media_type, headers={"Cache-Control": "private, max-age=60"})
