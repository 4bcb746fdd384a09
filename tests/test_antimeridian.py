"""AOIs across the antimeridian (180°): Fiji and Chukotka get their tiles on both sides, in zones 60 and 1.

Expected tiles are computed independently of lcms.grid: points inside the AOI are taken to
their UTM zone with pyproj, and the tile holding each is named from its easting and northing.
"""

from __future__ import annotations

import json
import math
import warnings

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import shapely
from pyproj import Transformer
from shapely.geometry import MultiPolygon, Polygon, box
from typer.testing import CliRunner

from lcms.cli import app
from lcms.config import AoiConfig, GridConfig
from lcms.geometry import bbox_geometry, split_at_antimeridian
from lcms.grid import AreaGrid, aoi_to_wgs84, build_grid, load_aoi

SIZE = 10_000

# A 4 × 2 km field in Fiji (Taveuni lies on 180°): 179.98°E to 179.9825°W, 16.500°S to 16.482°S.
WEST, EAST, SOUTH, NORTH = 179.98, -179.9825, -16.5, -16.482


def tile_ids_of_points(lons, lats, size=SIZE) -> set[str]:
    """The ids of the tiles holding these points, from each point's own UTM zone (not lcms.grid)."""
    lons, lats = np.asarray(lons, float), np.asarray(lats, float)
    zones = np.minimum(60, np.floor((lons + 180) / 6).astype(int) + 1)
    ids = set()
    for zone in np.unique(zones):
        for north in (True, False):
            pick = (zones == zone) & ((lats >= 0) == north)
            if not pick.any():
                continue
            to_utm = Transformer.from_crs("EPSG:4326", f"EPSG:{(32600 if north else 32700) + zone}", always_xy=True)
            x, y = to_utm.transform(lons[pick], lats[pick])
            label = f"{zone:02d}{'N' if north else 'S'}"
            ids.update(
                f"{label}_{math.floor(a / size):04d}_{math.floor(b / size):04d}" for a, b in zip(x, y, strict=True)
            )
    return ids


def fiji_expected() -> set[str]:
    """Tiles of a 20 m lattice of points over the field, its east edge at -179.9825° + 360°."""
    lons = np.linspace(WEST, EAST + 360, 200)
    lats = np.linspace(SOUTH, NORTH, 100)
    lon, lat = (a.ravel() for a in np.meshgrid(lons, lats))
    return tile_ids_of_points(np.where(lon > 180, lon - 360, lon), lat)


def write_geojson(path, geometry: dict) -> str:
    """A GeoJSON file written by hand, as other tools write it (geopandas would refuse nothing here)."""
    feature = {"type": "Feature", "properties": {}, "geometry": geometry}
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [feature]}))
    return str(path)


RING_ACROSS_180 = [[WEST, SOUTH], [EAST, SOUTH], [EAST, NORTH], [WEST, NORTH], [WEST, SOUTH]]
SPLIT_AT_180 = [
    [[[WEST, SOUTH], [180.0, SOUTH], [180.0, NORTH], [WEST, NORTH], [WEST, SOUTH]]],
    [[[-180.0, SOUTH], [EAST, SOUTH], [EAST, NORTH], [-180.0, NORTH], [-180.0, SOUTH]]],
]


@pytest.fixture(scope="module")
def fiji_grid():
    aoi = aoi_to_wgs84(gpd.GeoDataFrame(geometry=[Polygon(RING_ACROSS_180)], crs="EPSG:4326"))
    return build_grid(aoi, GridConfig())


def test_fiji_field_gives_its_handful_of_tiles_on_both_sides(fiji_grid):
    expected = fiji_expected()
    assert {i.split("_")[0] for i in expected} == {"60S", "01S"}
    # The field is 4 km wide: a few tiles, not the 28 196-tile strip round the world of issue 17.
    assert set(fiji_grid.tile_ids) == expected
    assert 2 <= len(fiji_grid) <= 6
    assert fiji_grid.counts_per_zone().keys() == {"01S", "60S"}
    assert {t.grid.crs for t in fiji_grid} == {"EPSG:32701", "EPSG:32760"}


def test_every_way_of_giving_the_fiji_field_gives_the_same_tiles(tmp_path, fiji_grid):
    expected = fiji_grid.tile_ids
    ways = {
        "ring across 180° (GeoJSON)": AoiConfig(
            path=write_geojson(tmp_path / "ring.geojson", {"type": "Polygon", "coordinates": [RING_ACROSS_180]})
        ),
        "split at 180° (GeoJSON's rule)": AoiConfig(
            path=write_geojson(tmp_path / "split.geojson", {"type": "MultiPolygon", "coordinates": SPLIT_AT_180})
        ),
        "bbox with minx > maxx": AoiConfig(bbox=(WEST, SOUTH, EAST, NORTH)),
    }
    for way, cfg in ways.items():
        assert build_grid(load_aoi(cfg), GridConfig()).tile_ids == expected, way

    # In a projected CRS that spans 180° (UTM 60S) the field is one ordinary polygon.
    field = gpd.GeoSeries([bbox_geometry((WEST, SOUTH, EAST, NORTH))], crs="EPSG:4326")
    utm = gpd.GeoDataFrame(geometry=[field.to_crs("EPSG:32760").union_all().buffer(0.01)], crs="EPSG:32760")
    utm.to_file(tmp_path / "utm60s.gpkg")
    ids = build_grid(load_aoi(AoiConfig(path=str(tmp_path / "utm60s.gpkg"))), GridConfig()).tile_ids
    assert ids == expected


def test_tiles_on_180_have_footprints_cut_there_and_round_trip(fiji_grid, tmp_path):
    footprints = fiji_grid.footprints_wgs84()
    widths = footprints.bounds["maxx"] - footprints.bounds["minx"]
    # A 10 km core spans ~0.1° here; one reaching over 180° is cut into two parts, never 360° wide.
    split = footprints[widths > 1]
    assert not split.empty
    for geom in split:
        assert geom.geom_type == "MultiPolygon"
        assert {round(abs(x)) for g in geom.geoms for x in g.bounds[::2] if abs(x) > 179.5} == {180}
        assert geom.area < 0.02
    path = tmp_path / "grid.gpkg"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # GDAL warns of a multipolygon put in a polygon layer
        fiji_grid.write_gpkg(path)
    assert pyogrio.read_info(path, layer="tiles")["geometry_type"] == "MultiPolygon"
    again = AreaGrid.read_gpkg(path)
    assert [(t.tile_id, t.grid) for t in again] == [(t.tile_id, t.grid) for t in fiji_grid]


def test_selection_by_a_bbox_across_180(fiji_grid):
    both = fiji_grid.select(bbox=(179.99, -16.49, -179.99, -16.485))
    assert {t.zone for t in both} == {"60S", "01S"}
    west_only = fiji_grid.select(bbox=(179.99, -16.49, 179.995, -16.485))
    assert {t.zone for t in west_only} <= {"60S", "01S"} and len(west_only) < len(fiji_grid)


def test_lcms_grid_on_a_fiji_bbox_across_180(tmp_path):
    config = tmp_path / "fiji.yaml"
    config.write_text(
        f"name: fiji\naoi: {{bbox: [{WEST}, {SOUTH}, {EAST}, {NORTH}]}}\nyears: [2024]\n"
        f"store: {{url: {tmp_path / 'store'}}}\n"
    )
    result = CliRunner().invoke(app, ["grid", str(config)])
    assert result.exit_code == 0, result.output
    assert f"{len(fiji_expected())} tiles of 10000 m" in result.stdout


def test_split_at_antimeridian_leaves_ordinary_polygons_alone():
    ljubljana = box(14.4, 46.0, 14.6, 46.1)
    assert split_at_antimeridian(ljubljana) is ljubljana
    already_split = MultiPolygon([box(179, 0, 180, 1), box(-180, 0, -179, 1)])
    assert split_at_antimeridian(already_split) is already_split
    # The same 2°-wide square given across 180°, in 0..360 longitudes, and across -180°.
    for given in (Polygon([(179, 0), (-179, 0), (-179, 1), (179, 1)]), box(179, 0, 181, 1), box(-181, 0, -179, 1)):
        cut = split_at_antimeridian(given)
        assert cut.geom_type == "MultiPolygon"
        assert cut.area == pytest.approx(2.0)
        assert shapely.equals(cut, already_split)


# --------------------------------------------------------------------------- Chukotka


@pytest.fixture(scope="module")
def chukotka(shared_data):
    countries = gpd.read_file(shared_data / "borders" / "ne_50m_admin_0_countries")
    russia = countries[countries.ADMIN == "Russia"].geometry.iloc[0]
    # Russia's far north-east: 165°E to 180° and on to 168°W, north of 62°N (Natural Earth splits it at 180°).
    region = MultiPolygon([box(165, 62, 180, 72), box(-180, 62, -168, 72)])
    return aoi_to_wgs84(gpd.GeoDataFrame(geometry=[russia.intersection(region)], crs="EPSG:4326"))


def random_points(area, n, seed=0):
    rng = np.random.default_rng(seed)
    parts = [p for p in area.geoms]
    weights = np.array([p.area for p in parts]) / area.area
    lons, lats = [], []
    for part, k in zip(parts, rng.multinomial(n, weights), strict=True):
        minx, miny, maxx, maxy = part.bounds
        while k > 0:
            candidates = shapely.points(rng.uniform(minx, maxx, 4 * k + 10), rng.uniform(miny, maxy, 4 * k + 10))
            inside = candidates[shapely.contains(part, candidates)][:k]
            lons.extend(shapely.get_x(inside))
            lats.extend(shapely.get_y(inside))
            k -= len(inside)
    return np.array(lons), np.array(lats)


def test_chukotka_is_covered_on_both_sides_of_180(chukotka):
    assert chukotka.bounds[0] == -180 and chukotka.bounds[2] == 180
    grid = build_grid(chukotka, GridConfig())
    zones = grid.counts_per_zone()
    assert set(zones) == {"58N", "59N", "60N", "01N", "02N"}
    # Every sampled point of the AOI falls in a tile of the grid, on both sides of 180°.
    lons, lats = random_points(chukotka, 3000)
    assert (lons < 0).sum() > 100 and (lons > 0).sum() > 100
    missing = tile_ids_of_points(lons, lats) - set(grid.tile_ids)
    assert not missing, f"{len(missing)} tiles missing, e.g. {sorted(missing)[:3]}"
    # No tile far away: every core lies within ~15 km (a tile's diagonal) of the AOI.
    footprints = grid.footprints_wgs84()
    assert (footprints.geom_type == "MultiPolygon").sum() > 10  # the cores reaching over 180°, cut there
    parts = footprints.explode().bounds
    assert (parts["maxx"] - parts["minx"]).max() < 1.5 and (parts["miny"] > 61.5).all()
    assert ((parts["minx"] > 164) | (parts["maxx"] < -167)).all()
    # Within each zone the cores do not overlap, so they cover at least the part's area (UTM m²).
    for label, count in zones.items():
        zone = int(label[:2])
        part = chukotka.intersection(box(-180 + 6 * (zone - 1), 0, -174 + 6 * (zone - 1), 90))
        area = gpd.GeoSeries([shapely.segmentize(part, 0.01)], crs=4326).to_crs(32600 + zone).area.iloc[0]
        assert area <= count * SIZE**2 <= area + 2 * math.sqrt(area) * SIZE * 6, label
