"""A stratified random sample of map pixels, drawn from the exported maps (plain functions, no Prefect).

The strata are the map's classes (one year), or change / no change (a pair of years: a pixel is
"change" where both years have a class and the classes differ). The sample size comes from a target
standard error of overall accuracy (`estimation.sample_size`), shared among the strata with a floor per
stratum (`estimation.allocate`). The units are pixels; a point is its pixel's centre.

The maps are read block by block twice with rasterio (memory: one block per map): the first pass counts
each stratum's pixels (its mapped area), the second picks the pixels whose rank within their stratum was
drawn, uniformly without replacement, from a seeded numpy generator. The same maps, sizes and seed give
the same sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import rasterio
from pyproj import Transformer
from rasterio.windows import Window

NO_CHANGE, CHANGE = 1, 2
CHANGE_STRATA = {NO_CHANGE: "no change", CHANGE: "change"}


class DesignError(ValueError):
    """A sample that cannot be drawn: no maps of the year, maps on other grids, a stratum too small."""


@dataclass(frozen=True)
class ZoneMaps:
    """The labels map(s) of one zone: one year's, or both years' of a pair (same grid)."""

    zone: str
    urls: tuple[str, ...]


def _windows(ds) -> list[Window]:
    return [window for _, window in ds.block_windows(1)]


def _strata_of(blocks: list[np.ndarray]) -> np.ndarray:
    """Per pixel: the map class (one year), or NO_CHANGE / CHANGE (two years); 0 = no data."""
    if len(blocks) == 1:
        return blocks[0]
    a, b = blocks
    out = np.where(a == b, NO_CHANGE, CHANGE).astype(np.uint8)
    out[(a == 0) | (b == 0)] = 0
    return out


def _open_all(zone: ZoneMaps):
    datasets = [rasterio.open(url) for url in zone.urls]
    first = datasets[0]
    for other in datasets[1:]:
        if (other.crs, other.transform, other.shape) != (first.crs, first.transform, first.shape):
            for ds in datasets:
                ds.close()
            raise DesignError(
                f"zone {zone.zone}: the maps {zone.urls[0]} and {other.name} are on different grids; "
                "export both years with the same settings"
            )
    return datasets


def _blocks(zone: ZoneMaps):
    """(window, strata block, map blocks) over one zone's maps, in a fixed order."""
    datasets = _open_all(zone)
    try:
        for window in _windows(datasets[0]):
            maps = [ds.read(1, window=window) for ds in datasets]
            yield window, _strata_of(maps), maps
    finally:
        for ds in datasets:
            ds.close()


def count_strata(zones: list[ZoneMaps]) -> tuple[dict[int, int], float]:
    """Pixels of each stratum over every zone, and the area of one pixel in m² (the same in every zone)."""
    counts: dict[int, int] = {}
    pixel_areas = set()
    for zone in zones:
        with rasterio.open(zone.urls[0]) as ds:
            pixel_areas.add(round(abs(ds.res[0] * ds.res[1]), 6))
        for _, strata, _ in _blocks(zone):
            values, n = np.unique(strata[strata > 0], return_counts=True)
            for v, c in zip(values.tolist(), n.tolist(), strict=True):
                counts[v] = counts.get(v, 0) + c
    if len(pixel_areas) > 1:
        raise DesignError(f"the maps have different pixel sizes ({sorted(pixel_areas)} m²); export them alike")
    if not counts:
        raise DesignError("the maps hold no mapped pixel (all no data)")
    return dict(sorted(counts.items())), pixel_areas.pop()


def draw_pixels(zones: list[ZoneMaps], sizes: dict[int, int], counts: dict[int, int], seed: int) -> list[dict]:
    """A simple random sample without replacement of ``sizes[h]`` pixels in every stratum h, seeded.

    Returns one record per pixel: zone, row, col, x, y (its centre, in the map's CRS), lon, lat, crs,
    stratum and the map class(es) there; in a random order (the labelling queue's), numbered from 1.
    """
    rng = np.random.default_rng(seed)
    chosen = {h: np.sort(rng.choice(counts[h], size=n, replace=False)) for h, n in sizes.items() if n > 0}
    seen = dict.fromkeys(chosen, 0)  # pixels of each stratum passed so far, over the zones and blocks
    records = []
    for zone in zones:
        with rasterio.open(zone.urls[0]) as ds:
            transform, crs = ds.transform, ds.crs
        to_lonlat = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
        for window, strata, maps in _blocks(zone):
            for h, ranks in chosen.items():
                rows, cols = np.nonzero(strata == h)  # row-major order within the block
                start, stop = seen[h], seen[h] + len(rows)
                pick = ranks[(ranks >= start) & (ranks < stop)] - start
                seen[h] = stop
                for i in pick.tolist():
                    r, c = int(rows[i]), int(cols[i])
                    row, col = int(window.row_off) + r, int(window.col_off) + c
                    x, y = transform * (col + 0.5, row + 0.5)
                    lon, lat = to_lonlat.transform(x, y)
                    record = {
                        "zone": zone.zone,
                        "row": row,
                        "col": col,
                        "x": round(x, 3),
                        "y": round(y, 3),
                        "lon": round(lon, 7),
                        "lat": round(lat, 7),
                        "crs": crs.to_string(),
                        "stratum": h,
                    }
                    if len(maps) == 1:
                        record["map_class"] = int(maps[0][r, c])
                    else:
                        record["map_class_from"], record["map_class_to"] = int(maps[0][r, c]), int(maps[1][r, c])
                    records.append(record)
    order = rng.permutation(len(records))
    return [{"sample_id": i + 1, **records[j]} for i, j in enumerate(order.tolist())]
