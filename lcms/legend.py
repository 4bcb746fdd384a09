"""Class legends: the integer codes stored in label arrays, their names and colours.

Also the one colour helper of the project: "#rrggbb" codes to RGB(A) tuples (`hex_to_rgb`,
`hex_to_rgba`), a lighter shade for secondary bars (`lighten`), and a legend's GeoTIFF colour
table (`legend_colormap`). Plots (tasks/plots.py), the report's thumbnails and the COG export
all use these.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class LegendClass:
    code: int
    name: str
    color: str  # "#rrggbb", used for colour tables and plots


# eo-learn's land-use/land-cover legend; code 0 is "no data" in every legend.
LULC_LEGEND: tuple[LegendClass, ...] = (
    LegendClass(0, "no data", "#ffffff"),
    LegendClass(1, "cultivated land", "#ffff00"),
    LegendClass(2, "forest", "#054907"),
    LegendClass(3, "grassland", "#ffa500"),
    LegendClass(4, "shrubland", "#806000"),
    LegendClass(5, "water", "#069af3"),
    LegendClass(6, "wetlands", "#95d0fc"),
    LegendClass(7, "tundra", "#967bb6"),
    LegendClass(8, "artificial surface", "#dc143c"),
    LegendClass(9, "bareland", "#a6a6a6"),
    LegendClass(10, "snow and ice", "#000000"),
)

NO_DATA = 0
LULC_NAMES: dict[int, str] = {c.code: c.name for c in LULC_LEGEND}


# --------------------------------------------------------------------------- colours

_HEX_COLOR = re.compile(r"^#?([0-9A-Fa-f]{6})$")


def hex_to_rgb(color: str) -> tuple[int, int, int]:
    """'#054907' → (5, 73, 7); the '#' is optional. ValueError for anything but six hex digits."""
    m = _HEX_COLOR.match(str(color).strip())
    if not m:
        raise ValueError(f"colour {color!r} is not of the form #rrggbb")
    h = m.group(1)
    return int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16)


def hex_to_rgba(color: str, alpha: int = 255) -> tuple[int, int, int, int]:
    """'#054907' → (5, 73, 7, alpha)."""
    if not 0 <= alpha <= 255:
        raise ValueError(f"alpha must be 0..255, got {alpha}")
    return (*hex_to_rgb(color), int(alpha))


def rgb_to_hex(rgb: Iterable[int]) -> str:
    """(5, 73, 7) → '#054907' (only the first three values are used)."""
    r, g, b = (int(v) for v in list(rgb)[:3])
    return f"#{r:02x}{g:02x}{b:02x}"


def lighten(color: str, amount: float = 0.55) -> str:
    """The colour mixed with white: `amount` 0 keeps it, 1 gives white."""
    if not 0.0 <= amount <= 1.0:
        raise ValueError(f"amount must be within 0..1, got {amount}")
    return rgb_to_hex(round(v + (255 - v) * amount) for v in hex_to_rgb(color))


def legend_colormap(legend: Iterable[LegendClass], nodata: float = 0) -> dict[int, tuple[int, int, int, int]]:
    """A GDAL colour table for band 1 of a class map: code → RGBA, the nodata code fully transparent."""
    cmap: dict[int, tuple[int, int, int, int]] = {}
    for c in legend:
        cmap[int(c.code)] = hex_to_rgba(c.color, 0 if c.code == nodata else 255)
    if nodata not in cmap and float(nodata).is_integer() and 0 <= nodata < 65536:
        cmap[int(nodata)] = (255, 255, 255, 0)
    return cmap
