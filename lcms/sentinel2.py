"""Sentinel-2 facts shared by the stages: band names, native resolutions, DN scaling."""

from __future__ import annotations

# The 13 L1C bands in the order used everywhere in LCMS (and by Sentinel Hub and s2cloudless).
L1C_BANDS: tuple[str, ...] = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")

# L2A has no cirrus band B10.
L2A_BANDS: tuple[str, ...] = tuple(b for b in L1C_BANDS if b != "B10")

NATIVE_RESOLUTION_M: dict[str, int] = {
    "B01": 60,
    "B02": 10,
    "B03": 10,
    "B04": 10,
    "B05": 20,
    "B06": 20,
    "B07": 20,
    "B08": 10,
    "B8A": 20,
    "B09": 60,
    "B10": 60,
    "B11": 20,
    "B12": 20,
}

# Reflectances are stored as digital numbers: reflectance = DN / 10000 (processing baselines
# before 04.00; newer products carry a -1000 offset that the download stage removes).
REFLECTANCE_SCALE = 10_000
