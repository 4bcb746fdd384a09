"""Export stage, catalogue: STAC items describing the exported COGs.

- `stac_item`: a `pystac.Item` for one exported map (an `ExportResult` of tasks/export/cog.py):
  WGS84 footprint (the output grid's outline, densified) and bbox, start/end datetimes, and the
  projection, raster and, with a legend, classification extensions on the COG asset.
- `write_stac_item`: the item's JSON at a local path (atomic: temp file + os.replace) or an
  fsspec URL.
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
) -> pystac.Item:
    """A STAC item for an exported COG: WGS84 footprint, time range, projection/raster/classification info."""
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
    )
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
    RasterExtension.ext(asset, add_if_missing=True).apply(bands=[band])
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
    text = json.dumps(item.to_dict(include_self_link=False, transform_hrefs=False), indent=2)
    if is_remote(url):
        fs, path = fsspec.core.url_to_fs(url, **dict(storage_options or {}))
        fs.pipe_file(path, text.encode())
        return
    target = Path(local_path(url))
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes files private; a catalogue must be readable by others
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
