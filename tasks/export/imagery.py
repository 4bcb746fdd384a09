"""Export stage, imagery: cloud-free composites of the download stage's bands as COGs with STAC items.

Plain functions, no Prefect (the export flow calls `export_imagery_year`). For each year and each
period of `export.imagery.periods` (the whole year, its quarters, its months), per UTM zone (or in
`export.crs`), two 3-band uint8 COGs that an operator compares the maps with:

- ``true-colour``: B04 B03 B02 (red, green, blue);
- ``false-colour``: B08 B04 B03 (near infrared as red: vegetation shows red).

Each band is the per-pixel **median of the valid observations** of the period (`valid_mask` of the
download stage: data, no cloud, no shadow), so clouds and their shadows drop out wherever the
period has one clear look at the pixel. Pixels with none are nodata (0).

Display scaling (`to_display`): reflectance 0 … `max_reflectance` (0.3 by default) is mapped
linearly onto 1 … 255 and brighter values are clipped; 0 is kept for nodata. Overviews average.

Files: ``<maps>/imagery/imagery_<period>_<zone>_<kind>.tif`` + ``.json`` (STAC item in the
``imagery`` collection), period ``2023``, ``2023-Q1`` or ``2023-03``.

Memory: a tile is composited in blocks of rows (`BLOCK_BYTES` of uint16 per block), reading only the
three bands and the period's dates of its window, never as float.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from lcms.config import ExportConfig
from lcms.grid import AreaGrid, Tile
from lcms.sentinel2 import REFLECTANCE_SCALE
from lcms.store import TileStore
from tasks.export.cog import TilePiece, export_cog
from tasks.export.stac import IMAGERY_COLLECTION, stac_item, write_stac_item

#: The composites: their name and the bands shown as red, green and blue.
COMPOSITES: dict[str, tuple[str, str, str]] = {
    "true-colour": ("B04", "B03", "B02"),
    "false-colour": ("B08", "B04", "B03"),
}
#: Bytes of one block of (dates, rows, cols, bands) uint16 while compositing.
BLOCK_BYTES = 64 * 2**20


@dataclass(frozen=True)
class Period:
    """A period of a year that gets its own composite: its name and its time range [start, end)."""

    name: str  # "2023", "2023-Q1", "2023-03"
    start: dt.datetime
    end: dt.datetime

    def contains(self, times: np.ndarray) -> np.ndarray:
        """Which of `times` (numpy datetime64, UTC) fall in the period."""
        start = np.datetime64(self.start.replace(tzinfo=None), "s")
        end = np.datetime64(self.end.replace(tzinfo=None), "s")
        return (times >= start) & (times < end)


def periods_of(year: int, kinds: Sequence[str]) -> list[Period]:
    """The periods of `year` for the kinds `year`, `quarter`, `month` (in that order, without repeats)."""

    def at(y: int, m: int) -> dt.datetime:
        return dt.datetime(y + (m - 1) // 12, (m - 1) % 12 + 1, 1, tzinfo=dt.UTC)

    periods: list[Period] = []
    if "year" in kinds:
        periods.append(Period(str(year), at(year, 1), at(year, 13)))
    if "quarter" in kinds:
        periods += [Period(f"{year}-Q{q}", at(year, 3 * q - 2), at(year, 3 * q + 1)) for q in range(1, 5)]
    if "month" in kinds:
        periods += [Period(f"{year}-{m:02d}", at(year, m), at(year, m + 1)) for m in range(1, 13)]
    return periods


# --------------------------------------------------------------------------- array maths


def median_composite(bands: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """(b, y, x) uint16 per-pixel median of the valid dates of uint16 DN `bands` (t, y, x, b); 0 where none.

    `valid` (t, y, x) bool says which observations count (DN 0, no data, never does). An even number
    of valid dates gives the mean of the two middle values, rounded half to even to a whole DN.
    Done by sorting along time with the left-out observations pushed to the end (an integer sort,
    much faster than `np.nanmedian` over float copies), then picking the middle of the first n.
    """
    if bands.ndim != 4 or valid.shape != bands.shape[:3]:
        raise ValueError(f"bands must be (t, y, x, b) and valid (t, y, x); got {bands.shape} and {valid.shape}")
    n_t, n_y, n_x, n_b = bands.shape
    out = np.zeros((n_b, n_y, n_x), dtype=np.uint16)
    if n_t == 0:
        return out
    last = np.iinfo(np.uint16).max
    rows = max(1, BLOCK_BYTES // max(1, n_t * n_x * n_b * 2))
    for r0 in range(0, n_y, rows):
        block = bands[:, r0 : r0 + rows]
        ok = valid[:, r0 : r0 + rows, :, None] & (block > 0)
        ordered = np.where(ok, block, np.uint16(last))
        ordered.sort(axis=0)  # valid values first, in order; the left-out ones (as the largest DN) after them
        n = ok.sum(axis=0)  # (rows, x, b) valid dates per pixel and band
        lo = np.take_along_axis(ordered, np.maximum(n - 1, 0)[None] // 2, axis=0)[0]
        hi = np.take_along_axis(ordered, np.minimum(n // 2, n_t - 1)[None], axis=0)[0]
        med = np.rint((lo.astype(np.float32) + hi.astype(np.float32)) / 2).astype(np.uint16)
        med[n == 0] = 0
        out[:, r0 : r0 + rows] = med.transpose(2, 0, 1)
    return out


def to_display(dn: np.ndarray, max_reflectance: float = 0.3) -> np.ndarray:
    """uint8 for display of uint16 DN (any shape): reflectance 0 … max_reflectance → 1 … 255, DN 0 → 0."""
    if not 0 < max_reflectance <= 1:
        raise ValueError(f"max_reflectance must be within (0, 1], got {max_reflectance}")
    scaled = np.clip(dn.astype(np.float32) / np.float32(max_reflectance * REFLECTANCE_SCALE), 0, 1)
    out = (np.rint(scaled * 254) + 1).astype(np.uint8)
    out[dn == 0] = 0
    return out


def display_rgb(composite: np.ndarray, max_reflectance: float = 0.3) -> np.ndarray:
    """(3, y, x) uint8 of a (3, y, x) DN composite; a pixel with no data in any band is 0 in all three."""
    out = to_display(composite, max_reflectance)
    out[:, (composite == 0).any(axis=0)] = 0
    return out


# --------------------------------------------------------------------------- reading a tile


def composite_reader(
    store: TileStore, tile_id: str, year: int, period: Period, rgb: Sequence[str], max_reflectance: float
) -> Callable[[tuple[slice, slice]], np.ndarray]:
    """A `TilePiece.read` for one tile: the (3, rows, cols) display composite of a window."""

    def read(window: tuple[slice, slice]) -> np.ndarray:
        tile = store.open_tile("download", year, tile_id)
        names = list(tile.coord("band"))
        missing = [b for b in rgb if b not in names]
        if missing:
            raise ValueError(f"tile {tile_id} {year}: the download has no band(s) {missing} for {list(rgb)}")
        dates = np.flatnonzero(period.contains(tile.coord("time"))).tolist()
        rows, cols = window
        shape = (3, rows.stop - rows.start, cols.stop - cols.start)
        if not dates:
            return np.zeros(shape, dtype=np.uint8)
        select = {"time": dates, "band": [names.index(b) for b in rgb]}
        bands = tile.read("bands", window, select=select)
        valid = tile.read("valid_mask", window, select={"time": dates})
        return display_rgb(median_composite(bands, valid), max_reflectance)

    return read


# --------------------------------------------------------------------------- export


def export_imagery_year(
    store: TileStore, tiles: AreaGrid, year: int, cfg: ExportConfig, groups: dict[str, list[Tile]]
) -> list[dict]:
    """Write the composites of one year (every period and kind, per group of tiles); one summary per COG.

    `groups` are the tiles of each output map (tasks/export/maps.py `map_groups`: per UTM zone, or
    `all` with export.crs); tiles whose download is not in the store are left out (none: no composites).
    """
    folder = f"{(cfg.url or store.maps_url()).rstrip('/')}/{IMAGERY_COLLECTION}"
    settings = cfg.imagery
    downloaded = set(store.done_tiles("download", year))  # a store may hold maps without the imagery
    groups = {zone: [t for t in group if t.tile_id in downloaded] for zone, group in groups.items()}
    groups = {zone: group for zone, group in groups.items() if group}
    reprojection = {"crs": cfg.crs, "resolution": cfg.resolution_m, "resampling": "bilinear"} if cfg.crs else {}
    outputs = []
    for period in periods_of(year, settings.periods):
        for zone, group in sorted(groups.items()):
            for kind, rgb in COMPOSITES.items():
                base = f"imagery_{period.name}_{zone}_{kind}"
                pieces = [
                    TilePiece(
                        t.tile_id,
                        t.grid,
                        t.core_window,
                        composite_reader(store, t.tile_id, year, period, rgb, settings.max_reflectance),
                    )
                    for t in group
                ]
                result = export_cog(
                    pieces,
                    f"{folder}/{base}.tif",
                    nodata=0,
                    bands=3,
                    compress=cfg.compress,
                    blocksize=cfg.blocksize,
                    overview_resampling="average",
                    storage_options=store.storage_options,
                    tags={"lcms_imagery": kind, "lcms_period": period.name, "lcms_bands": ",".join(rgb)},
                    **reprojection,
                )
                item = stac_item(
                    result,
                    item_id=base,
                    start=period.start,
                    end=period.end - dt.timedelta(seconds=1),
                    asset_href=f"./{base}.tif",
                    title=f"{kind} median composite {period.name} ({zone})",
                    roles=("visual",),
                    collection=IMAGERY_COLLECTION,
                    catalogue_root="..",
                    properties={
                        "lcms:imagery": kind,
                        "lcms:period": period.name,
                        "lcms:year": year,
                        "lcms:zone": zone,
                        "lcms:bands": list(rgb),
                        "lcms:max_reflectance": settings.max_reflectance,
                    },
                )
                write_stac_item(item, f"{folder}/{base}.json", store.storage_options)
                outputs.append(
                    {
                        "map": kind,
                        "period": period.name,
                        "zone": zone,
                        "year": year,
                        "url": result.url,
                        "tiles": len(group),
                        "height": result.shape[0],
                        "width": result.shape[1],
                    }
                )
    return outputs
