"""Tests of tasks.reference.polygons: loading, rasterising and eroding reference polygons."""

from __future__ import annotations

import json
import logging

import geopandas as gpd
import numpy as np
import pytest
from shapely.geometry import Polygon, box

from lcms.geometry import PixelGrid
from lcms.legend import LULC_LEGEND, LegendClass
from tasks.download.synthetic import SyntheticScene
from tasks.reference.polygons import (
    ReferenceError,
    erode_labels,
    intersects,
    load_reference,
    rasterize_reference,
)

UTM33 = "EPSG:32633"
CROP_LEGEND = (
    LegendClass(0, "no data", "#ffffff"),
    LegendClass(1, "wheat", "#f5deb3"),
    LegendClass(2, "cotton", "#ffffff"),
    LegendClass(3, "grape", "#6f2da8"),
    LegendClass(4, "barley", "#d2b48c"),
    LegendClass(5, "sugar beet", "#8b0000"),
)


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def patch(shared_data):
    """The Slovenia test patch: (gpkg path, LULC raster (y, x), bounds)."""
    root = shared_data / "slovenia-testpatch" / "eopatch"
    ring = json.loads((root / "bbox.geojson").read_text())["coordinates"][0]
    xs, ys = [p[0] for p in ring], [p[1] for p in ring]
    bounds = (min(xs), min(ys), max(xs), max(ys))
    lulc = np.load(root / "mask_timeless" / "LULC.npy")
    assert lulc.shape == (101, 100, 1) and lulc.dtype == np.uint16
    return root / "vector_timeless" / "LULC.gpkg", lulc[..., 0], bounds


def eolearn_grid(bounds, resolution=10.0) -> PixelGrid:
    """eo-learn's grid of a bbox: size = round(extent / 10 m), pixels stretched to fill the bbox exactly."""
    minx, miny, maxx, maxy = bounds
    width, height = round((maxx - minx) / resolution), round((maxy - miny) / resolution)
    a, e = (maxx - minx) / width, -(maxy - miny) / height
    return PixelGrid(UTM33, (a, 0.0, minx, 0.0, e, maxy), (height, width))


def square_grid(bounds, resolution=10.0) -> PixelGrid:
    """Exact 10 m pixels anchored at the bbox's upper-left corner."""
    minx, miny, maxx, maxy = bounds
    width, height = round((maxx - minx) / resolution), round((maxy - miny) / resolution)
    return PixelGrid(UTM33, (resolution, 0.0, minx, 0.0, -resolution, maxy), (height, width))


@pytest.fixture(scope="module")
def native(patch):
    path, lulc, bounds = patch
    ref = load_reference(str(path), "LULC_ID", LULC_LEGEND)
    return ref, rasterize_reference(ref, eolearn_grid(bounds))


# --- real data -----------------------------------------------------------------------------


def test_load_real_reference(patch, native):
    ref, _ = native
    assert list(ref.columns) == ["class_code", "geometry"]
    # 88 polygons, of which 4 have LULC_ID 0 (no data, empty name): those carry no class and are dropped.
    assert len(ref) == 84
    assert ref["class_code"].dtype == np.uint8
    assert ref.crs.to_epsg() == 32633
    assert set(ref["class_code"]) <= {1, 2, 3, 4, 8}


def test_real_patch_reproduces_eolearn_raster(patch, native):
    _, lulc, bounds = patch
    _, raster = native
    assert raster.shape == (101, 100) and raster.dtype == np.uint8
    agreement = float((raster == lulc).mean())
    print(f"agreement with eo-learn LULC.npy on eo-learn's grid: {agreement:.4%}")
    # eo-learn's grid (pixels of 9.9948 x 9.9974 m filling the bbox exactly) with pixel centres
    # (all_touched=False) reproduces the stored raster pixel for pixel.
    assert agreement >= 0.99
    np.testing.assert_array_equal(raster, lulc)


def test_real_patch_on_exact_10m_grid(patch, native):
    _, lulc, bounds = patch
    ref, _ = native
    raster = rasterize_reference(ref, square_grid(bounds))
    agreement = float((raster == lulc).mean())
    print(f"agreement with eo-learn LULC.npy on a 10.000 m grid: {agreement:.4%}")
    assert agreement >= 0.99  # measured 99.67 %: the bbox is not a whole number of 10 m pixels


@pytest.mark.parametrize("fmt", ["geojson-4326", "parquet", "shapefile"])
def test_other_formats_and_crs_give_the_same_raster(patch, native, tmp_path, fmt):
    path, _, bounds = patch
    _, expected = native
    source = gpd.read_file(path)
    if fmt == "geojson-4326":
        target = tmp_path / "lulc.geojson"
        source.to_crs(4326).to_file(target, driver="GeoJSON")
    elif fmt == "parquet":
        target = tmp_path / "lulc.parquet"
        source.to_parquet(target)
    else:
        target = tmp_path / "lulc.shp"
        source[["LULC_ID", "LULC_NAME", "geometry"]].to_file(target)
    ref = load_reference(str(target), "LULC_ID", LULC_LEGEND)
    if fmt == "geojson-4326":
        assert ref.crs.to_epsg() == 4326
    raster = rasterize_reference(ref, eolearn_grid(bounds))
    assert float((raster == expected).mean()) >= 0.999


def test_class_names_with_partial_mapping(patch, native):
    path, _, bounds = patch
    _, expected = native
    # Legend names are accepted without a mapping, but the file spells "schrubland" and leaves
    # the name of its no-data polygons empty.
    with pytest.raises(ReferenceError, match="schrubland") as err:
        load_reference(str(path), "LULC_NAME", LULC_LEGEND)
    assert "mapping" in str(err.value) and "forest" not in str(err.value).split("The legend")[0]
    mapping = {c.name: c.code for c in LULC_LEGEND} | {"Schrubland ": 4, "": 0}
    ref = load_reference(str(path), "LULC_NAME", LULC_LEGEND, mapping=mapping)
    assert len(ref) == 84
    np.testing.assert_array_equal(rasterize_reference(ref, eolearn_grid(bounds)), expected)


def test_s3_read(patch, native, s3_bucket, s3_endpoint):
    import boto3

    path, _, bounds = patch
    _, expected = native
    bucket = s3_bucket.removeprefix("s3://")
    boto3.client("s3", endpoint_url=s3_endpoint).upload_file(str(path), bucket, "ref/LULC.gpkg")
    options = {"client_kwargs": {"endpoint_url": s3_endpoint}}
    ref = load_reference(f"{s3_bucket}/ref/LULC.gpkg", "LULC_ID", LULC_LEGEND, storage_options=options)
    assert len(ref) == 84 and ref.crs.to_epsg() == 32633
    np.testing.assert_array_equal(rasterize_reference(ref, eolearn_grid(bounds)), expected)
    with pytest.raises(ReferenceError, match="does not exist"):
        load_reference(f"{s3_bucket}/ref/missing.gpkg", "LULC_ID", LULC_LEGEND, storage_options=options)


def test_s3_shapefile_with_sidecars(patch, native, s3_bucket, s3_endpoint, tmp_path):
    import boto3

    path, _, bounds = patch
    _, expected = native
    gpd.read_file(path)[["LULC_ID", "geometry"]].to_file(tmp_path / "lulc.shp")
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    bucket = s3_bucket.removeprefix("s3://")
    for part in tmp_path.iterdir():
        client.upload_file(str(part), bucket, f"shp/{part.name}")
    options = {"client_kwargs": {"endpoint_url": s3_endpoint}}
    ref = load_reference(f"{s3_bucket}/shp/lulc.shp", "LULC_ID", LULC_LEGEND, storage_options=options)
    assert ref.crs.to_epsg() == 32633
    np.testing.assert_array_equal(rasterize_reference(ref, eolearn_grid(bounds)), expected)


def test_crop_mapping_from_names(shared_data):
    path = shared_data / "azerbaijan" / "test_area_crops.geojson"
    with pytest.raises(ReferenceError) as err:
        load_reference(str(path), "CROP_TYPE", LULC_LEGEND)
    for name in ("wheat", "cotton", "grape", "barley", "sugar beet", "mapping"):
        assert name in str(err.value)

    mapping = {"wheat": 1, "cotton": 2, "grape": 3, "barley": 4, "sugar beet": 5}
    ref = load_reference(str(path), "CROP_TYPE", CROP_LEGEND, mapping=mapping)
    source = gpd.read_file(path)
    assert len(ref) == len(source) == 103
    np.testing.assert_array_equal(ref["class_code"].to_numpy(), source["CROP_TYPE"].map(mapping).to_numpy())
    assert ref.crs.to_epsg() == 32638

    # Onto a 10 m grid around the parcels: every class appears, parcels keep their codes.
    minx, miny, maxx, maxy = (np.floor(np.array(ref.total_bounds) / 10) * 10).tolist()
    grid = PixelGrid.from_bounds("EPSG:32638", (minx, miny, maxx + 10, maxy + 10), 10.0)
    raster = rasterize_reference(ref, grid)
    assert set(np.unique(raster)) == {0, 1, 2, 3, 4, 5}

    # A mapping that misses a value names it.
    with pytest.raises(ReferenceError, match="sugar beet"):
        load_reference(str(path), "CROP_TYPE", CROP_LEGEND, mapping={k: v for k, v in mapping.items() if v != 5})


# --- synthetic data ------------------------------------------------------------------------


def test_synthetic_reference_rasterises_to_land_cover(tmp_path):
    scene = SyntheticScene(seed=3)
    grid = PixelGrid.from_bounds(UTM33, (505_000, 5_020_000, 505_000 + 150 * 20, 5_020_000 + 150 * 20), 20.0)
    polygons = scene.reference_polygons(grid, 2024)
    target = tmp_path / "synthetic.gpkg"
    polygons.to_file(target)
    ref = load_reference(str(target), "LULC_ID", LULC_LEGEND)
    np.testing.assert_array_equal(rasterize_reference(ref, grid), scene.land_cover(grid, 2024))
    # A sub-grid (clipping) gives the matching window.
    sub = grid.window(slice(30, 90), slice(10, 70))
    np.testing.assert_array_equal(rasterize_reference(ref, sub), scene.land_cover(grid, 2024)[30:90, 10:70])


# --- overlap rule --------------------------------------------------------------------------


@pytest.mark.parametrize("small_first", [True, False])
def test_smaller_polygon_wins(tmp_path, small_first):
    big = (box(0, 0, 100, 100), 2)
    small = (box(30, 30, 60, 60), 5)
    rows = [small, big] if small_first else [big, small]
    gdf = gpd.GeoDataFrame({"cls": [c for _, c in rows]}, geometry=[g for g, _ in rows], crs=UTM33)
    target = tmp_path / "overlap.geojson"
    gdf.to_file(target, driver="GeoJSON")
    ref = load_reference(str(target), "cls", LULC_LEGEND)
    grid = PixelGrid.from_bounds(UTM33, (0, 0, 100, 100), 10.0)
    raster = rasterize_reference(ref, grid)
    expected = np.full((10, 10), 2, np.uint8)
    expected[4:7, 3:6] = 5  # rows from the north: y 60..30 -> rows 4..6; x 30..60 -> cols 3..5
    np.testing.assert_array_equal(raster, expected)


def test_partial_overlap_smaller_wins_even_if_mostly_outside_grid():
    # The area that decides is the whole polygon's, not its clipped part.
    big = box(0, 0, 100, 100)
    small = box(50, 0, 200, 50)  # area 7500 < 10000 although only 2500 of it lies on the grid
    gdf = gpd.GeoDataFrame({"class_code": np.array([3, 1], np.uint8)}, geometry=[small, big], crs=UTM33)
    raster = rasterize_reference(gdf, PixelGrid.from_bounds(UTM33, (0, 0, 100, 100), 10.0))
    assert (raster[5:, 5:] == 3).all() and (raster[:5] == 1).all() and (raster[:, :5] == 1).all()


# --- erosion -------------------------------------------------------------------------------


def test_erosion_removes_one_pixel_line():
    labels = np.zeros((7, 7), np.uint8)
    labels[3, :] = 5
    out = erode_labels(labels)
    assert out.dtype == np.uint8
    assert not out.any()


def test_erosion_block_5x5_becomes_3x3():
    labels = np.zeros((9, 9), np.uint8)
    labels[2:7, 2:7] = 2
    expected = np.zeros((9, 9), np.uint8)
    expected[3:6, 3:6] = 2
    np.testing.assert_array_equal(erode_labels(labels, 1), expected)


def test_erosion_touching_classes_both_lose_their_border():
    labels = np.zeros((6, 8), np.uint8)
    labels[:, :4] = 1
    labels[:, 4:] = 3
    expected = labels.copy()
    expected[:, 3:5] = 0  # both sides of the border go
    # Edge rule: outside the array is ignored, so edge pixels of a uniform region stay.
    np.testing.assert_array_equal(erode_labels(labels), expected)


def test_erosion_uniform_map_is_unchanged_and_edges_kept():
    labels = np.full((5, 6), 4, np.uint8)
    np.testing.assert_array_equal(erode_labels(labels), labels)
    np.testing.assert_array_equal(erode_labels(labels, 2), labels)


def test_erosion_radius_2_disk():
    labels = np.zeros((13, 13), np.uint8)
    labels[1:12, 1:12] = 7  # 11x11 block in a no-data frame
    out = erode_labels(labels, 2)
    # Disk of radius 2: offsets with dx^2 + dy^2 <= 4, i.e. the 5x5 square without its corners.
    # A pixel survives if it is >= 2 pixels from the frame along rows/columns and its diagonal
    # neighbours at (±1, ±1) are inside: the 7x7 centre for the 11x11 block.
    expected = np.zeros((13, 13), np.uint8)
    expected[3:10, 3:10] = 7
    np.testing.assert_array_equal(out, expected)
    # The disk (as skimage.morphology.disk(2)) excludes offsets (±2, ±2) and (±2, ±1): foreign
    # pixels there do not erode the centre; one at (-2, 0) does.
    labels2 = np.full((5, 5), 1, np.uint8)
    labels2[0, 0] = labels2[0, 1] = labels2[1, 0] = 9
    assert erode_labels(labels2, 2)[2, 2] == 1
    assert erode_labels(labels2, 1)[2, 2] == 1  # the 3x3 square does not reach them either
    labels2[0, 2] = 9
    assert erode_labels(labels2, 2)[2, 2] == 0
    # A square footprint of radius 2 would also remove the 5x5 block; the disk removes a 3-px bar too.
    bar = np.zeros((9, 9), np.uint8)
    bar[3:6, :] = 6
    assert not erode_labels(bar, 2).any()


def test_erosion_all_zero_stays_zero_and_radius_0():
    zeros = np.zeros((4, 4), np.uint8)
    assert not erode_labels(zeros).any()
    labels = np.arange(16, dtype=np.uint8).reshape(4, 4)
    np.testing.assert_array_equal(erode_labels(labels, 0), labels)


def test_erosion_rejects_bad_input():
    with pytest.raises(ValueError):
        erode_labels(np.zeros((2, 3, 3), np.uint8))
    with pytest.raises(ValueError):
        erode_labels(np.zeros((3, 3), np.uint8), -1)
    with pytest.raises(ValueError):
        erode_labels(np.full((3, 3), 300, np.int32))


def test_erosion_on_real_raster_really_erodes(native):
    _, raster = native
    out = erode_labels(raster, 1)
    assert out.dtype == np.uint8
    changed = out != raster
    assert changed.any() and (out[changed] == 0).all()  # only ever sets pixels to no data
    assert ((out == 0) | (out == raster)).all()


# --- bad input -----------------------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(ReferenceError, match="does not exist"):
        load_reference(str(tmp_path / "nope.gpkg"), "LULC_ID", LULC_LEGEND)


def test_unknown_extension_and_unreadable(tmp_path):
    weird = tmp_path / "ref.csv"
    weird.write_text("a,b\n")
    with pytest.raises(ReferenceError, match="extension"):
        load_reference(str(weird), "a", LULC_LEGEND)
    broken = tmp_path / "broken.gpkg"
    broken.write_bytes(b"this is not a geopackage")
    with pytest.raises(ReferenceError, match="cannot read"):
        load_reference(str(broken), "LULC_ID", LULC_LEGEND)


def test_missing_class_column_lists_columns(patch):
    path, _, _ = patch
    with pytest.raises(ReferenceError) as err:
        load_reference(str(path), "CLASS", LULC_LEGEND)
    message = str(err.value)
    assert "'CLASS'" in message
    for column in ("LULC_ID", "LULC_NAME", "RABA_ID"):
        assert column in message


def test_class_not_in_legend_lists_values(tmp_path):
    gdf = gpd.GeoDataFrame({"cls": [1, 42, 17, 2]}, geometry=[box(i, 0, i + 1, 1) for i in range(4)], crs=UTM33)
    target = tmp_path / "bad.gpkg"
    gdf.to_file(target)
    with pytest.raises(ReferenceError) as err:
        load_reference(str(target), "cls", LULC_LEGEND)
    message = str(err.value)
    assert "17" in message and "42" in message and "mapping" in message
    # A numeric mapping fixes it (mapping to 0 drops the polygons).
    ref = load_reference(str(target), "cls", LULC_LEGEND, mapping={1: 1, 2: 2, 42: 9, "17": 0})
    assert ref["class_code"].tolist() == [1, 9, 2]


def test_no_crs(tmp_path):
    gdf = gpd.GeoDataFrame({"cls": [1]}, geometry=[box(0, 0, 1, 1)])
    # GeoJSON files always have a CRS (WGS84); a shapefile without .prj does not.
    shp = tmp_path / "nocrs.shp"
    with pytest.warns(UserWarning, match="crs"):
        gdf.to_file(shp)
    assert not shp.with_suffix(".prj").exists()
    with pytest.raises(ReferenceError, match="no CRS"):
        load_reference(str(shp), "cls", LULC_LEGEND)
    with pytest.raises(ReferenceError, match="no CRS"):
        rasterize_reference(gdf.rename(columns={"cls": "class_code"}), PixelGrid.from_bounds(UTM33, (0, 0, 10, 10), 1))


def test_invalid_polygon_is_repaired(tmp_path, caplog):
    bowtie = Polygon([(0, 0), (100, 100), (100, 0), (0, 100), (0, 0)])  # self-intersecting
    assert not bowtie.is_valid
    gdf = gpd.GeoDataFrame({"cls": [3, 1]}, geometry=[bowtie, box(200, 0, 300, 100)], crs=UTM33)
    target = tmp_path / "invalid.gpkg"
    gdf.to_file(target)
    with caplog.at_level(logging.WARNING, logger="tasks.reference.polygons"):
        ref = load_reference(str(target), "cls", LULC_LEGEND)
    assert "repaired 1 invalid" in caplog.text
    assert ref.is_valid.all() and len(ref) == 2
    assert set(ref.geom_type) <= {"Polygon", "MultiPolygon"}
    assert ref.geometry.iloc[0].area == pytest.approx(5000.0)  # two triangles
    raster = rasterize_reference(ref, PixelGrid.from_bounds(UTM33, (0, 0, 300, 100), 10.0))
    assert raster[5, 1] == 3 and raster[1, 5] == 0 and (raster[:, 20:] == 1).all()


def test_no_polygons(tmp_path):
    from shapely.geometry import LineString, Point

    gdf = gpd.GeoDataFrame({"cls": [1, 2]}, geometry=[Point(0, 0), LineString([(0, 0), (1, 1)])], crs=UTM33)
    target = tmp_path / "points.gpkg"
    gdf.to_file(target)
    with pytest.raises(ReferenceError, match="no usable polygons"):
        load_reference(str(target), "cls", LULC_LEGEND)


def test_grid_without_polygons(native, patch):
    ref, _ = native
    _, _, bounds = patch
    far = PixelGrid.from_bounds(UTM33, (400_000, 5_000_000, 401_000, 5_001_000), 10.0)
    assert not intersects(ref, far)
    raster = rasterize_reference(ref, far)
    assert raster.shape == (100, 100) and not raster.any()
    assert intersects(ref, eolearn_grid(bounds))
    # Same answer for a grid in another CRS (the reference is reprojected).
    wgs = ref.to_crs(4326)
    assert intersects(wgs, eolearn_grid(bounds)) and not intersects(wgs, far)
    # Touching the footprint's edge only is not an intersection.
    edge = gpd.GeoDataFrame({"class_code": np.array([1], np.uint8)}, geometry=[box(-10, 0, 0, 10)], crs=UTM33)
    assert not intersects(edge, PixelGrid.from_bounds(UTM33, (0, 0, 10, 10), 1.0))
