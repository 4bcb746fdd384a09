"""Export stage, catalogue: STAC items describing the exported COGs.

- `stac_item`: a `pystac.Item` for one exported map (an `ExportResult` of tasks/export/cog.py):
  WGS84 footprint (the output grid's outline, densified) and bbox, start/end datetimes, and the
  projection, raster and, with a legend, classification extensions on the COG asset.
- `write_stac_item`: the item's JSON at a local path (atomic: temp file + os.replace) or an
  fsspec URL.
- `write_catalogue`: the catalogue of a maps folder, rebuilt from the items found there: a root
  `catalog.json` and one collection per product (and one for the imagery composites) under
  `collections/`.

Every href the export writes is relative (``./land-cover_2023_33N_labels.tif``,
``../catalog.json``), so a maps folder stays valid when it is moved, copied or synced to S3:

    <maps>/catalog.json                       root catalogue: a child link per collection
    <maps>/collections/<id>.json              a collection (product, or "imagery"): an item link per item
    <maps>/<product>_<year>_<zone>_<map>.json an item: root, parent and collection links; its COG beside it
    <maps>/imagery/imagery_<period>_<zone>_<kind>.json   imagery composites (tasks/export/imagery.py)
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pystac
from pyproj import CRS
from pystac.extensions.classification import Classification, ClassificationExtension
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.raster import DataType, RasterBand, RasterExtension
from rasterio.warp import transform

from lcms.legend import LegendClass, hex_to_rgb
from lcms.runtime import remove_dead_temps_beside, temp_prefix_beside
from tasks.export.cog import DENSIFY_PTS, WGS84, ExportError, ExportResult
from tasks.export.publish import is_remote, local_path


def _footprint_wgs84(result: ExportResult) -> dict[str, Any]:
    """The output grid's outline in WGS84, densified along the edges (they curve after reprojecting)."""
    minx, miny, maxx, maxy = result.bounds
    t = np.linspace(0.0, 1.0, DENSIFY_PTS)[:-1]
    xs = np.concatenate(
        [minx + (maxx - minx) * t, np.full_like(t, maxx), maxx - (maxx - minx) * t, np.full_like(t, minx)]
    )
    ys = np.concatenate(
        [np.full_like(t, maxy), maxy - (maxy - miny) * t, np.full_like(t, miny), miny + (maxy - miny) * t]
    )
    lon, lat = transform(result.crs, WGS84, xs.tolist(), ys.tolist())
    ring = [[round(x, 8), round(y, 8)] for x, y in zip(lon, lat, strict=True)]
    ring.append(ring[0])
    return {"type": "Polygon", "coordinates": [ring]}


def _class_name(name: str) -> str:
    # The classification extension's `name` allows letters, digits, '-' and '_' only; `title` keeps the original.
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_") or "class"


def stac_item(
    result: ExportResult,
    *,
    item_id: str,
    start: datetime,
    end: datetime,
    asset_href: str,
    title: str,
    legend: Sequence[LegendClass] | None = None,
    roles: Sequence[str] = ("data",),
    extra_assets: Mapping[str, pystac.Asset] | None = None,
    properties: Mapping[str, Any] | None = None,
    asset_key: str = "data",
    collection: str | None = None,
    catalogue_root: str | None = None,
) -> pystac.Item:
    """A STAC item for an exported COG: WGS84 footprint, time range, projection/raster/classification info.

    With `collection` and `catalogue_root` (the maps folder relative to the item's folder: "." or
    ".."), the item names its collection and links to it and to the root catalogue, relatively.
    """
    if end < start:
        raise ExportError(f"end {end} is before start {start}")
    props = {"title": title, **dict(properties or {})}
    item = pystac.Item(
        id=item_id,
        geometry=_footprint_wgs84(result),
        bbox=list(result.bounds_wgs84),
        datetime=None,
        properties=props,
        start_datetime=start,
        end_datetime=end,
        collection=collection,
    )
    if collection is not None and catalogue_root is not None:
        item.add_link(pystac.Link("root", f"{catalogue_root}/{CATALOGUE}", media_type=pystac.MediaType.JSON))
        collection_href = f"{catalogue_root}/{COLLECTIONS}/{collection}.json"
        for rel in ("parent", "collection"):
            item.add_link(pystac.Link(rel, collection_href, media_type=pystac.MediaType.JSON))
    crs = CRS.from_user_input(result.crs)
    authority = crs.to_authority()
    proj = ProjectionExtension.ext(item, add_if_missing=True)
    proj.apply(
        code=f"{authority[0]}:{authority[1]}" if authority else None,
        wkt2=None if authority else crs.to_wkt(),
        shape=list(result.shape),
        transform=list(result.transform),
        bbox=list(result.bounds),
    )

    asset = pystac.Asset(href=asset_href, media_type=pystac.MediaType.COG, roles=list(roles), title=title)
    item.add_asset(asset_key, asset)
    nodata = result.nodata
    band = RasterBand.create(
        nodata=("nan" if isinstance(nodata, float) and math.isnan(nodata) else nodata),
        data_type=_stac_data_type(result.dtype),
        spatial_resolution=float(result.transform[0]),
    )
    RasterExtension.ext(asset, add_if_missing=True).apply(bands=[band] * result.bands)
    if legend:
        classes = [
            Classification.create(
                value=int(c.code),
                name=_class_name(c.name),
                title=c.name,
                color_hint=_color_hint(c.color),
                nodata=True if c.code == nodata else None,
            )
            for c in legend
        ]
        ClassificationExtension.ext(asset, add_if_missing=True).apply(classes=classes)
    for key, extra in (extra_assets or {}).items():
        item.add_asset(key, extra)
    return item


def _color_hint(color: str) -> str:
    """'#054907' → '054907' (upper case), the classification extension's color_hint."""
    try:
        hex_to_rgb(color)  # validates
    except ValueError as exc:
        raise ExportError(str(exc)) from exc
    return color.strip().lstrip("#").upper()


def _stac_data_type(dtype: str) -> DataType:
    try:
        return DataType(dtype)
    except ValueError:
        return DataType.OTHER


def write_stac_item(item: pystac.Item, url: str, storage_options: Mapping[str, Any] | None = None) -> None:
    """Write the item's JSON to a local path or an fsspec URL (local: temp file + os.replace)."""
    write_json(item.to_dict(include_self_link=False, transform_hrefs=False), url, storage_options)


def write_json(document: Mapping[str, Any], url: str, storage_options: Mapping[str, Any] | None = None) -> None:
    """A JSON document at a local path (atomic: temp file + os.replace) or an fsspec URL (one put)."""
    text = json.dumps(document, indent=2)
    if is_remote(url):
        fs, path = fsspec.core.url_to_fs(url, **dict(storage_options or {}))
        fs.pipe_file(path, text.encode())
        return
    target = Path(local_path(url))
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_temps_beside(target)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix_beside(target), suffix=".tmp", dir=target.parent)
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes files private; a catalogue must be readable by others
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------- catalogue

CATALOGUE = "catalog.json"
COLLECTIONS = "collections"
CATALOGUE_ID = "lcms-maps"
IMAGERY_COLLECTION = "imagery"


def read_items(folder: str, storage_options: Mapping[str, Any] | None = None) -> dict[str, dict]:
    """The STAC items of a maps folder (and of its imagery/ subfolder), by their path relative to it."""
    fs, root = fsspec.core.url_to_fs(folder, **dict(storage_options or {}))
    root = root.rstrip("/")
    if hasattr(fs, "invalidate_cache"):
        fs.invalidate_cache(root)
    paths = sorted(fs.glob(f"{root}/*.json") + fs.glob(f"{root}/{IMAGERY_COLLECTION}/*.json"))
    items = {}
    for path, blob in (fs.cat(paths) if paths else {}).items():
        try:
            doc = json.loads(blob)
        except ValueError:
            continue  # not ours; the catalogue only lists items
        if isinstance(doc, dict) and doc.get("type") == "Feature":
            items[path[len(root) + 1 :]] = doc
    return items


def catalogue_documents(items: Mapping[str, Mapping[str, Any]]) -> dict[str, dict]:
    """The root catalogue and the collections of `items` (path relative to the maps folder → item),
    as JSON documents by their path relative to the maps folder; every link relative."""
    by_collection: dict[str, list[tuple[str, Mapping[str, Any]]]] = {}
    for path, item in sorted(items.items()):
        by_collection.setdefault(item.get("collection") or _collection_of(item), []).append((path, item))
    documents: dict[str, dict] = {}
    catalogue = pystac.Catalog(
        id=CATALOGUE_ID, description="LCMS maps and imagery composites", title="LCMS maps", href=None
    )
    root_links = [
        pystac.Link("root", f"./{CATALOGUE}", media_type=pystac.MediaType.JSON),
        *[
            pystac.Link("child", f"./{COLLECTIONS}/{cid}.json", media_type=pystac.MediaType.JSON, title=cid)
            for cid in sorted(by_collection)
        ],
    ]
    documents[CATALOGUE] = {**catalogue.to_dict(include_self_link=False), "links": [x.to_dict() for x in root_links]}
    for cid, members in sorted(by_collection.items()):
        bboxes = [m["bbox"] for _, m in members]
        starts = [
            _parse_time(m["properties"].get("start_datetime") or m["properties"].get("datetime")) for _, m in members
        ]
        ends = [_parse_time(m["properties"].get("end_datetime") or m["properties"].get("datetime")) for _, m in members]
        extent = pystac.Extent(
            pystac.SpatialExtent(
                [
                    [
                        min(b[0] for b in bboxes),
                        min(b[1] for b in bboxes),
                        max(b[2] for b in bboxes),
                        max(b[3] for b in bboxes),
                    ]
                ]
            ),
            pystac.TemporalExtent([[min(starts), max(ends)]]),
        )
        title = "Imagery composites" if cid == IMAGERY_COLLECTION else f"{cid} maps"
        collection = pystac.Collection(id=cid, description=title, extent=extent, title=title, license="other")
        links = [
            pystac.Link("root", f"../{CATALOGUE}", media_type=pystac.MediaType.JSON),
            pystac.Link("parent", f"../{CATALOGUE}", media_type=pystac.MediaType.JSON),
            *[pystac.Link("item", f"../{path}", media_type=pystac.MediaType.GEOJSON) for path, _ in members],
        ]
        documents[f"{COLLECTIONS}/{cid}.json"] = {
            **collection.to_dict(include_self_link=False),
            "links": [x.to_dict() for x in links],
        }
    return documents


def write_catalogue(folder: str, storage_options: Mapping[str, Any] | None = None) -> dict[str, dict]:
    """Rebuild the catalogue of a maps folder from the items in it; returns what was written."""
    documents = catalogue_documents(read_items(folder, storage_options))
    base = folder.rstrip("/")
    for path, document in documents.items():
        write_json(document, f"{base}/{path}", storage_options)
    return documents


def _collection_of(item: Mapping[str, Any]) -> str:
    # Items written before items named their collection: the product of the map.
    return str(item.get("properties", {}).get("lcms:model") or "maps")


def _parse_time(value: str | None) -> datetime:
    if not value:
        raise ExportError("a STAC item has neither start_datetime nor datetime")
    return datetime.fromisoformat(value.replace("Z", "+00:00"))
