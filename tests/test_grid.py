"""Area grid: real countries, zone splits, coverage with no gaps, GeoPackage I/O, selection, bad AOIs."""

from __future__ import annotations

import json
import math

import geopandas as gpd
import numpy as np
import pytest
import shapely
from pyproj import Transformer
from shapely.geometry import Point, Polygon, box

from lcms.config import AoiConfig, GridConfig
from lcms.grid import AoiError, AreaGrid, TileSelectionError, aoi_to_wgs84, build_grid, load_aoi


@pytest.fixture(scope="module")
def slovenia(shared_data):
    return load_aoi(AoiConfig(path=str(shared_data / "borders" / "slovenia.geojson")))


@pytest.fixture(scope="module")
def azerbaijan(shared_data):
    countries = gpd.read_file(shared_data / "borders" / "ne_50m_admin_0_countries")
    return aoi_to_wgs84(countries[countries.ADMIN == "Azerbaijan"])


def random_points(area, n, seed=0):
    """Uniform random points inside `area` (WGS84), by rejection."""
    rng = np.random.default_rng(seed)
    minx, miny, maxx, maxy = area.bounds
    points = []
    while len(points) < n:
        candidates = shapely.points(rng.uniform(minx, maxx, 4 * n), rng.uniform(miny, maxy, 4 * n))
        points.extend(candidates[shapely.contains(area, candidates)])
    return points[:n]


def expected_tile_id(lon, lat, size):
    """The id of the tile whose core holds (lon, lat), computed independently of lcms.grid."""
    zone = int((lon + 180) // 6) + 1
    north = lat >= 0
    epsg = (32600 if north else 32700) + zone
    x, y = Transformer.from_crs("EPSG:4326", f"EPSG:{epsg}", always_xy=True).transform(lon, lat)
    return f"{zone:02d}{'N' if north else 'S'}_{math.floor(x / size):04d}_{math.floor(y / size):04d}"


def assert_no_gaps(grid, area, size, n=1500):
    ids = set(grid.tile_ids)
    missing = [p for p in random_points(area, n) if expected_tile_id(p.x, p.y, size) not in ids]
    assert not missing, f"{len(missing)} AOI points fall in no tile, e.g. {missing[:3]}"
    uncovered = area.difference(shapely.union_all(grid.footprints_wgs84().values))
    assert uncovered.area < 1e-9 * area.area


def test_slovenia_grid(slovenia):
    grid = build_grid(slovenia, GridConfig())
    assert 255 <= len(grid) <= 260
    assert grid.counts_per_zone() == {"33N": len(grid)}
    assert_no_gaps(grid, slovenia, 10_000)
    # No superfluous tiles: every core overlaps Slovenia.
    footprints = grid.footprints_wgs84()
    assert (footprints.intersects(slovenia) & ~footprints.touches(slovenia)).all()
    tile = grid.tiles[0]
    assert tile.grid.crs == "EPSG:32633"
    assert tile.grid.shape == (1020, 1020) and tile.buffer_px == 10
    assert tile.core_grid.shape == (1000, 1000)
    assert tile.core_bounds[0] % 10_000 == 0 and tile.core_bounds[1] % 10_000 == 0


def test_grid_alignment_changes_count_within_the_expected_range(slovenia):
    shifted = build_grid(slovenia, GridConfig(origin_m=(5000, 5000)))
    assert 255 <= len(shifted) <= 260
    assert shifted.tiles[0].core_bounds[0] % 10_000 == 5000


def test_azerbaijan_spans_two_zones_without_gaps(azerbaijan):
    grid = build_grid(azerbaijan, GridConfig())
    counts = grid.counts_per_zone()
    assert set(counts) == {"38N", "39N"}
    assert {t.grid.crs for t in grid} == {"EPSG:32638", "EPSG:32639"}
    assert_no_gaps(grid, azerbaijan, 10_000, n=3000)
    # Azerbaijan is ~86,600 km²: at least that many 100 km² cores, plus the border tiles.
    assert 866 <= len(grid) <= 1200
    # Both zones reach over the 48°E meridian, so the border itself is covered from both sides.
    footprints = grid.footprints_wgs84()
    by_zone = {z: shapely.union_all(footprints[[t.tile_id for t in grid if t.zone == z]].values) for z in counts}
    border = shapely.LineString([(48.0, 38.5), (48.0, 41.0)]).intersection(azerbaijan)
    assert by_zone["38N"].contains(border) or by_zone["38N"].buffer(1e-9).covers(border)
    assert by_zone["39N"].buffer(1e-9).covers(border)


def test_any_input_crs_and_format_gives_the_same_grid(shared_data, tmp_path, slovenia):
    reference = build_grid(slovenia, GridConfig()).tile_ids
    frame = gpd.read_file(shared_data / "borders" / "slovenia.geojson").to_crs("EPSG:3857")
    frame.to_file(tmp_path / "si.gpkg", driver="GPKG")
    frame.to_crs("EPSG:4326").to_file(tmp_path / "si.shp")
    for path in (tmp_path / "si.gpkg", tmp_path / "si.shp"):
        ids = build_grid(load_aoi(AoiConfig(path=str(path))), GridConfig()).tile_ids
        # Reprojection densifies edges slightly differently: allow a border tile or two.
        assert len(set(ids) ^ set(reference)) <= 2


def test_southern_hemisphere_and_equator():
    grid = build_grid(aoi_to_wgs84(gpd.GeoDataFrame(geometry=[box(31.9, -0.1, 32.1, 0.1)], crs=4326)), GridConfig())
    assert set(grid.counts_per_zone()) == {"36N", "36S"}
    south = [t for t in grid if t.zone == "36S"]
    assert south[0].grid.crs == "EPSG:32736"
    assert_no_gaps(grid, box(31.9, -0.1, 32.1, 0.1), 10_000, n=300)


def test_geopackage_round_trip(slovenia, tmp_path):
    grid = build_grid(slovenia, GridConfig())
    path = tmp_path / "grid.gpkg"
    grid.write_gpkg(path)
    again = AreaGrid.read_gpkg(path)
    assert [(t.tile_id, t.grid, t.core_bounds) for t in again] == [(t.tile_id, t.grid, t.core_bounds) for t in grid]
    frame = gpd.read_file(path, layer="tiles")
    assert frame.crs.to_epsg() == 4326
    assert {"tile_id", "zone", "utm_crs", "transform", "height", "width", "geometry"} <= set(frame.columns)
    assert json.loads(frame["transform"].iloc[0])[0] == 10.0
    native = gpd.read_file(path, layer="tiles_EPSG32633")
    assert native.crs.to_epsg() == 32633
    assert native.geometry.area.round().eq(1e8).all()


def test_selection_by_ids_bbox_and_polygon(slovenia):
    grid = build_grid(slovenia, GridConfig())
    ids = grid.tile_ids[:3]
    assert grid.select(tile_ids=ids).tile_ids == ids
    ljubljana = Point(14.5058, 46.0569)
    around = grid.select(geometry=ljubljana.buffer(0.001))
    assert len(around) == 1
    assert around.tile_ids[0] == expected_tile_id(ljubljana.x, ljubljana.y, 10_000)
    by_box = grid.select(bbox=(14.4, 46.0, 14.6, 46.1))
    assert around.tile_ids[0] in by_box.tile_ids and 4 <= len(by_box) <= 9
    mixed = grid.tile_ids[:1] + by_box.tile_ids[:2]
    assert grid.select(tile_ids=mixed, bbox=(14.4, 46.0, 14.6, 46.1)).tile_ids == by_box.tile_ids[:2]
    with pytest.raises(TileSelectionError, match="not in the grid: 99X_0000_0000"):
        grid.select(tile_ids=["99X_0000_0000"])
    with pytest.raises(TileSelectionError, match="empty"):
        grid.select(bbox=(0.0, 0.0, 0.1, 0.1))


def test_bad_aoi_inputs(tmp_path):
    with pytest.raises(AoiError, match="does not exist"):
        load_aoi(AoiConfig(path=str(tmp_path / "nowhere.geojson")))

    empty = tmp_path / "empty.geojson"
    empty.write_text(json.dumps({"type": "FeatureCollection", "features": []}))
    with pytest.raises(AoiError, match="no geometry"):
        load_aoi(AoiConfig(path=str(empty)))

    # A shapefile without its .prj has no CRS.
    with pytest.warns(UserWarning, match="'crs' was not provided"):
        gpd.GeoDataFrame(geometry=[box(14, 46, 14.1, 46.1)]).to_file(tmp_path / "nocrs.shp")
    with pytest.raises(AoiError, match="has no CRS"):
        load_aoi(AoiConfig(path=str(tmp_path / "nocrs.shp")))
    assert load_aoi(AoiConfig(path=str(tmp_path / "nocrs.shp"), assume_crs="EPSG:4326")).area > 0

    points = tmp_path / "points.geojson"
    gpd.GeoDataFrame(geometry=[Point(14, 46)], crs=4326).to_file(points)
    with pytest.raises(AoiError, match="no polygon area"):
        load_aoi(AoiConfig(path=str(points)))

    garbage = tmp_path / "garbage.geojson"
    garbage.write_text("this is not json")
    with pytest.raises(AoiError, match="cannot be read"):
        load_aoi(AoiConfig(path=str(garbage)))

    with pytest.raises(AoiError, match="polar"):
        load_aoi(AoiConfig(bbox=(10, 80, 20, 86)))


def test_self_intersecting_aoi_is_repaired(tmp_path, caplog):
    bowtie = Polygon([(14.0, 46.0), (14.2, 46.2), (14.2, 46.0), (14.0, 46.2), (14.0, 46.0)])
    assert not bowtie.is_valid
    path = tmp_path / "bowtie.geojson"
    gpd.GeoDataFrame(geometry=[bowtie], crs=4326).to_file(path)
    aoi = load_aoi(AoiConfig(path=str(path)))
    assert aoi.is_valid and "repaired 1 invalid" in caplog.text
    # Both triangles of the bow-tie are kept.
    assert aoi.area == pytest.approx(0.02, rel=1e-6)
    assert_no_gaps(build_grid(aoi, GridConfig()), aoi, 10_000, n=200)


def test_aoi_edges_on_tile_edges_add_no_sliver_tiles():
    # A 5 km square in UTM 33N whose edges lie on the 2.5 km lattice: exactly 2 × 2 tiles,
    # although the square goes through WGS84 and back.
    aoi = load_aoi(AoiConfig(bbox=(460_000, 5_090_000, 465_000, 5_095_000), bbox_crs="EPSG:32633"))
    grid = build_grid(aoi, GridConfig(tile_size_m=2500, buffer_m=50))
    assert grid.tile_ids == ["33N_0184_2036", "33N_0184_2037", "33N_0185_2036", "33N_0185_2037"]
    assert grid.tiles[0].grid.shape == (260, 260)
    assert grid.tiles[0].grid.bounds == (459_950, 5_089_950, 462_550, 5_092_550)
