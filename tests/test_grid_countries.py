"""Grids of whole countries: Russia, Canada (islands) and Indonesia (thousands of islands).

The tile counts of lcms.grid (a quadtree that cuts only boundary blocks) are checked against
an independent count on coarser grids: every lattice cell of every zone, tested one by one
with plain, unprepared shapely calls, by the rule the grid documents (a tile is kept when its
core overlaps the AOI by more than a sliver). Russia is also built at the 10 km default, once,
with a time limit: issue 17 found it unfinished after 15 minutes.

The full `lcms grid` command at 10 km (grid, footprints, GeoPackage, store) is timed outside
the tests, with `time lcms grid CONFIG` on a config per country.
"""

from __future__ import annotations

import math
import time

import geopandas as gpd
import numpy as np
import pytest
import shapely
from pyproj import Transformer
from shapely.geometry import box
from typer.testing import CliRunner

from lcms.cli import app
from lcms.config import GridConfig
from lcms.grid import DENSIFY_DEG, SLIVER_PX, aoi_to_wgs84, build_grid


@pytest.fixture(scope="module")
def countries(shared_data):
    return gpd.read_file(shared_data / "borders" / "ne_50m_admin_0_countries")


def country(countries, name):
    return aoi_to_wgs84(countries[countries.ADMIN == name])


def independent_counts(aoi, size: float, resolution: float = 10.0) -> dict[str, int]:
    """Tiles per UTM zone, counted cell by cell over each zone part's bounds (no index, no quadtree)."""
    counts = {}
    sliver = SLIVER_PX * resolution * size
    for zone in range(1, 61):
        west = -180 + 6 * (zone - 1)
        for north, (south, top) in ((True, (0, 90)), (False, (-90, 0))):
            part = aoi.intersection(box(west, south, west + 6, top))
            if part.is_empty or part.area == 0:
                continue
            epsg = (32600 if north else 32700) + zone
            utm = gpd.GeoSeries([shapely.segmentize(part, DENSIFY_DEG)], crs=4326).to_crs(epsg).iloc[0]
            minx, miny, maxx, maxy = utm.bounds
            kept = 0
            for col in range(math.floor(minx / size), math.ceil(maxx / size)):
                for row in range(math.floor(miny / size), math.ceil(maxy / size)):
                    cell = box(col * size, row * size, (col + 1) * size, (row + 1) * size)
                    if cell.intersects(utm) and not cell.touches(utm):
                        kept += cell.within(utm) or cell.intersection(utm).area > sliver
            if kept:
                counts[f"{zone:02d}{'N' if north else 'S'}"] = kept
    return counts


@pytest.mark.parametrize(("name", "size_km"), [("Russia", 200), ("Canada", 200), ("Indonesia", 50)])
def test_country_tile_counts_match_an_independent_count(countries, name, size_km):
    aoi = country(countries, name)
    grid = build_grid(aoi, GridConfig(tile_size_m=size_km * 1000, buffer_m=0))
    assert grid.counts_per_zone() == independent_counts(aoi, size_km * 1000)


def tile_ids_of_points(lons, lats, size):
    """The tiles holding these points, from each point's own UTM zone (independently of lcms.grid)."""
    zones = np.minimum(60, np.floor((lons + 180) / 6).astype(int) + 1)
    ids = set()
    for zone in np.unique(zones):
        for north in (True, False):
            pick = (zones == zone) & ((lats >= 0) == north)
            if pick.any():
                epsg = (32600 if north else 32700) + zone
                x, y = Transformer.from_crs(4326, epsg, always_xy=True).transform(lons[pick], lats[pick])
                label = f"{zone:02d}{'N' if north else 'S'}"
                ids.update(
                    f"{label}_{math.floor(a / size):04d}_{math.floor(b / size):04d}" for a, b in zip(x, y, strict=True)
                )
    return ids


def test_russia_at_10_km_in_seconds_without_gaps(countries, caplog):
    aoi = country(countries, "Russia")
    caplog.set_level("INFO", logger="lcms.grid")
    started = time.perf_counter()
    grid = build_grid(aoi, GridConfig())
    seconds = time.perf_counter() - started
    assert seconds < 60, f"Russia's 10 km grid took {seconds:.0f} s"
    # One progress line per zone (no terminal here; on one, a progress bar per zone).
    zones = grid.counts_per_zone()
    assert len(zones) == 29 and {"60N", "01N"} <= zones.keys()  # Chukotka reaches over 180°
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("grid zone")]
    assert [line.split(":")[0] for line in lines] == [f"grid zone {z}" for z in sorted(zones, key=_zone_order)]
    assert all(f"grid zone {z}: {n} tiles" in "\n".join(lines) for z, n in zones.items())
    # Within a zone the cores do not overlap: together they hold at least Russia's area
    # (17.1 million km², equal-area), and zone borders and coasts add only a few per cent.
    area = gpd.GeoSeries([aoi], crs=4326).to_crs("EPSG:6933").area.iloc[0]
    assert area / 1e8 <= len(grid) <= 1.1 * area / 1e8
    # Random points of Russia all fall in tiles of the grid.
    rng = np.random.default_rng(1)
    minx, miny, maxx, maxy = aoi.bounds
    candidates = shapely.points(rng.uniform(minx, maxx, 20_000), rng.uniform(miny, maxy, 20_000))
    inside = candidates[shapely.contains(aoi, candidates)]
    missing = tile_ids_of_points(shapely.get_x(inside), shapely.get_y(inside), 10_000) - set(grid.tile_ids)
    assert len(inside) > 3000 and not missing


def _zone_order(label: str) -> tuple[int, int]:
    return int(label[:2]), label[2] == "S"


def test_lcms_grid_on_indonesia_prints_the_tiles_per_zone(countries, tmp_path):
    countries[countries.ADMIN == "Indonesia"].to_file(tmp_path / "indonesia.gpkg")
    config = tmp_path / "indonesia.yaml"
    config.write_text(
        "name: indonesia\naoi: {path: indonesia.gpkg}\nyears: [2024]\n"
        "grid: {tile_size_m: 50000, buffer_m: 0}\nstore: {url: store}\n"
    )
    result = CliRunner().invoke(app, ["grid", str(config)])
    assert result.exit_code == 0, result.output
    expected = independent_counts(country(countries, "Indonesia"), 50_000)
    assert f"{sum(expected.values())} tiles of 50000 m" in result.stdout
    for zone, count in expected.items():
        assert f"│ {zone}" in result.stdout and f"│ {count:>5} │" in result.stdout
    assert (tmp_path / "store" / "grid.gpkg").is_file()
