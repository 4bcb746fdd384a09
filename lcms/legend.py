"""Class legends: the integer codes stored in label arrays and their names and colours."""

from __future__ import annotations

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
