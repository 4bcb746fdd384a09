"""Change detection and reporting: planted changes found as polygons, the report's numbers and its rendering."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
from browsers import chromium_or_skip
from rasterio.features import shapes
from scipy import ndimage
from shapely.geometry import shape
from shapely.ops import unary_union

from flows.common import StageInputError, TileFailures, load_grid
from lcms.config import DateGridConfig, parse_config
from lcms.legend import LULC_LEGEND
from lcms.stages import change_key
from lcms.store import TileStore
from tasks.change.detect import STATUS, ChangeParameters, change_scores, detect_changes, polygon_ids, series_difference
from tasks.change.polygons import read_change_layer
from tasks.features.temporal import date_grid
from tasks.features.tile import pack

LEGEND_ATTR = [c.__dict__ for c in LULC_LEGEND]
YEARS = (2023, 2024)
CLASSES = (1, 2, 3, 5)


def run_config(tmp_path, **changes):
    data = {
        "name": "change-test",
        # Two tiles of 2.5 km (250 px cores + 5 px of buffer each side) in UTM 33N.
        "aoi": {"bbox": [460_000, 5_090_000, 465_000, 5_092_500], "bbox_crs": "EPSG:32633"},
        "years": list(YEARS),
        "grid": {"tile_size_m": 2500, "buffer_m": 50},
        "store": {"url": str(tmp_path / "store")},
        "cluster": {"kind": "local", "n_workers": 1, "threads_per_worker": 2},
        "change": {"min_confidence": 60, "min_area_m2": 2000, "opening_radius_px": 1},
    }
    data.update(changes)
    return parse_config(data)


# --------------------------------------------------------------------------- a world with planted changes


def world_labels(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Base land cover at world coordinates (m): 300 m blocks of four classes."""
    bx, by = (x // 300).astype(np.int64), (y // 300).astype(np.int64)
    return np.asarray(CLASSES, dtype=np.uint8)[(bx * 7 + by * 3) % len(CLASSES)]


# Planted changes: discs and rectangles (centre x, centre y in m, size in m, new class); some cross the tile border.
PLANTED = [
    ("disc", 460_700, 5_091_200, 120, 3),
    ("disc", 461_900, 5_090_600, 80, 1),
    ("rect", 462_380, 5_091_700, (260, 140), 2),  # across the border between the tiles (x = 462 500)
    ("rect", 463_600, 5_090_400, (200, 200), 2),
    ("disc", 464_300, 5_092_000, 60, 5),
    ("rect", 460_250, 5_092_200, (90, 300), 1),
]


def planted_mask(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where a planted change is, and the class it changes to."""
    mask = np.zeros(x.shape, bool)
    target = np.zeros(x.shape, np.uint8)
    for kind, cx, cy, size, to in PLANTED:
        if kind == "disc":
            inside = (x - cx) ** 2 + (y - cy) ** 2 <= size**2
        else:
            inside = (np.abs(x - cx) <= size[0] / 2) & (np.abs(y - cy) <= size[1] / 2)
        mask |= inside
        target[inside] = to
    return mask, target


def tile_world(tile):
    rows, cols = np.indices(tile.grid.shape)
    a, _, c, _, e, f = tile.grid.transform
    return c + (cols + 0.5) * a, f + (rows + 0.5) * e


def noisy_maps(tile, year: int, seed: int):
    """One year's labels and confidence on a tile, with the kinds of noise a real classifier makes.

    - isolated flipped pixels with high confidence (salt and pepper): removed by cleaning / minimum area;
    - a broad patch of flips with low confidence: rejected by the confidence threshold;
    - 1-px slivers along class borders: removed by the opening.
    The noise depends on world coordinates and the year only, so overlapping tiles agree.
    """
    x, y = tile_world(tile)
    labels = world_labels(x, y)
    if year == YEARS[1]:
        mask, target = planted_mask(x, y)
        labels = np.where(mask & (target != labels), target, labels)
    key = (np.floor(x).astype(np.int64) * 92821 + np.floor(y).astype(np.int64) * 68917 + year * 7919) % 1_000_003
    random = (key * 2654435761 % 2**32) / 2**32
    confidence = (75 + 20 * random).astype(np.uint8)
    salt = random < 0.01
    labels = np.where(salt, np.asarray(CLASSES, np.uint8)[(key % 4)], labels)
    unsure = ((x - 463_000) ** 2 + (y - 5_092_000) ** 2 <= 150**2) & (random < 0.5)
    if year == YEARS[1]:
        labels = np.where(unsure, 3, labels)
    confidence = np.where(unsure, 40, confidence).astype(np.uint8)
    sliver = (np.abs(x % 300 - 5) < 5) & (year == YEARS[1])  # a 1-px column on the left edge of each block
    labels = np.where(sliver, np.roll(labels, -1, axis=1), labels)
    return labels.astype(np.uint8), confidence


def ndvi_series(labels: np.ndarray, n_dates: int = 6) -> np.ndarray:
    """An NDVI series per class (the features the ranking reads), (t, y, x, 1)."""
    level = {1: 0.5, 2: 0.8, 3: 0.6, 5: -0.2}
    base = np.vectorize(level.get, otypes=[np.float32])(labels)
    season = np.sin(np.linspace(0, np.pi, n_dates, dtype=np.float32))[:, None, None]
    return (base[None] * (0.6 + 0.4 * season))[..., None].astype(np.float32)


def write_year(store, tile, year, labels, confidence, legend=LEGEND_ATTR):
    classes = np.array(sorted(CLASSES), dtype=np.uint8)
    probabilities = np.zeros((*labels.shape, len(classes)), np.uint8)
    attrs = {"legend": legend}
    with store.writer("prediction", year, tile.tile_id, tile.grid, f"p{year}", {"class": classes}, attrs) as writer:
        writer.write("labels", labels)
        writer.write("probabilities", probabilities)
        writer.write("confidence", confidence)
    with store.writer("postprocess", year, tile.tile_id, tile.grid, f"pp{year}", {}, attrs) as writer:
        writer.write("labels", labels)
    coords = {"time": date_grid(year, DateGridConfig(step_days=60))[:6], "feature": np.array(["NDVI"])}
    with store.writer("features", year, tile.tile_id, tile.grid, f"f{year}", coords) as writer:
        writer.write("features", pack(ndvi_series(labels), "int16"))
        writer.write("no_valid", np.zeros(labels.shape, bool))
        writer.write("valid_count", np.full(labels.shape, 6, np.uint16))


@pytest.fixture
def planted(tmp_path):
    cfg = run_config(tmp_path)
    store = TileStore.from_config(cfg.store)
    grid = load_grid(cfg, store)
    for tile in grid:
        for year in YEARS:
            write_year(store, tile, year, *noisy_maps(tile, year, seed=year))
    return cfg, store, grid


def planted_polygons(grid) -> gpd.GeoDataFrame:
    """The planted changes, as polygons traced from the rendered maps (only pixels whose class really changed)."""
    parts = []
    for tile in grid:
        core = tile.core_grid
        x, y = tile_world(tile)
        mask, target = planted_mask(x, y)
        real = mask & (target != world_labels(x, y))
        window = real[tile.core_window].astype(np.uint8)
        parts += [shape(g) for g, v in shapes(window, mask=window > 0, transform=core.transform) if v == 1]
    return gpd.GeoDataFrame(geometry=[unary_union(parts)], crs=grid[grid.tile_ids[0]].grid.crs)


def overlap_scores(detected: gpd.GeoDataFrame, truth: gpd.GeoDataFrame) -> tuple[float, float]:
    detected_area = unary_union(list(detected.geometry))
    truth_area = unary_union(list(truth.geometry))
    both = detected_area.intersection(truth_area).area
    return both / detected_area.area, both / truth_area.area


# --------------------------------------------------------------------------- arrays


def brute_force_changes(before, after, conf_before, conf_after, params, core):
    """The same rules, written out per transition with scipy instead of skimage, as an independent check."""
    candidate = (before > 0) & (after > 0) & (before != after)
    candidate &= (conf_before >= params.min_confidence) & (conf_after >= params.min_confidence)
    r = params.opening_radius_px
    if r:
        yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
        candidate = ndimage.binary_opening(candidate, structure=(yy**2 + xx**2) <= r * r)
    structure = np.ones((3, 3)) if params.connectivity == 8 else None
    kept = np.zeros(before.shape, bool)
    for a in np.unique(before):
        for b in np.unique(after):
            labelled, n = ndimage.label(candidate & (before == a) & (after == b), structure=structure)
            for i in range(1, n + 1):
                if (labelled == i).sum() >= params.min_pixels:
                    kept |= labelled == i
    inside = np.zeros(before.shape, bool)
    inside[core] = True
    return kept, kept & inside


@pytest.mark.parametrize("connectivity", [4, 8])
@pytest.mark.parametrize("radius", [0, 1])
def test_detect_changes_matches_a_brute_force_computation(connectivity, radius):
    rng = np.random.default_rng(connectivity * 10 + radius)
    before = rng.choice(np.array([1, 2, 3], np.uint8), size=(60, 70), p=[0.5, 0.3, 0.2])
    before = ndimage.median_filter(before, size=5)  # patches, not noise
    after = before.copy()
    after[10:25, 5:30] = 3
    after[40:44, 40:60] = 1
    after[rng.random(before.shape) < 0.05] = 2
    before[0:3, :] = 0  # no data
    conf_before = rng.integers(30, 100, before.shape).astype(np.uint8)
    conf_after = rng.integers(50, 100, before.shape).astype(np.uint8)
    params = ChangeParameters(min_confidence=55, min_pixels=6, opening_radius_px=radius, connectivity=connectivity)
    core = (slice(5, 55), slice(5, 65))
    changes = detect_changes(before, after, conf_before, conf_after, params, core)

    kept, in_core = brute_force_changes(before, after, conf_before, conf_after, params, core)
    assert np.array_equal(changes.status == STATUS["change"], kept)
    assert np.array_equal(changes.polygon > 0, in_core)
    valid = (before > 0) & (after > 0)
    assert np.array_equal(changes.status == STATUS["no_data"], ~valid)
    assert np.array_equal(changes.status == STATUS["unchanged"], valid & (before == after))
    low = valid & (before != after) & ((conf_before < 55) | (conf_after < 55))
    assert np.array_equal(changes.status == STATUS["low_confidence"], low)
    # Each polygon is one transition; its table row holds its pixel count and mean confidences.
    for i in range(changes.count):
        pixels = changes.polygon == i + 1
        assert set(before[pixels]) == {changes.class_from[i]} and set(after[pixels]) == {changes.class_to[i]}
        assert changes.pixels[i] == pixels.sum() and changes.patch_pixels[i] >= params.min_pixels
        assert changes.confidence_from[i] == pytest.approx(conf_before[pixels].mean(), rel=1e-5)
        assert changes.confidence_to[i] == pytest.approx(conf_after[pixels].mean(), rel=1e-5)


def test_minimum_area_counts_the_whole_patch_not_only_the_core():
    before = np.ones((20, 20), np.uint8)
    after = before.copy()
    after[8:12, 0:8] = 2  # 32 px, of which 8 in the core (columns 6-7 if the core starts at column 6)
    conf = np.full(before.shape, 90, np.uint8)
    params = ChangeParameters(min_confidence=50, min_pixels=20, opening_radius_px=0)
    changes = detect_changes(before, after, conf, conf, params, core=(slice(0, 20), slice(6, 20)))
    assert changes.count == 1 and changes.pixels[0] == 8 and changes.patch_pixels[0] == 32


def test_scores_rank_real_changes_above_noise_and_ids_are_stable():
    rng = np.random.default_rng(3)
    before = np.ones((50, 50), np.uint8)
    after = before.copy()
    after[5:15, 5:15] = 2  # a real change: the series differs a lot
    after[30:40, 30:40] = 3  # a label flip whose series barely differs (a likely false change)
    conf = np.full(before.shape, 90, np.uint8)
    changes = detect_changes(before, after, conf, conf, ChangeParameters(min_pixels=10))
    series_from = rng.normal(0.5, 0.02, (8, 50, 50)).astype(np.float32)
    series_to = series_from + rng.normal(0, 0.02, series_from.shape).astype(np.float32)
    series_to[:, 5:15, 5:15] -= 0.4
    series_to[:, 30:40, 30:40] += 0.03
    difference = series_difference(series_from, series_to)
    expected = np.sqrt(np.mean((series_to - series_from) ** 2, axis=0))
    np.testing.assert_allclose(difference, expected, rtol=1e-5)
    scores = change_scores(difference, changes)
    real = changes.polygon[10, 10] - 1
    flip = changes.polygon[35, 35] - 1
    assert scores[real] > 10 and scores[real] > 5 * scores[flip]
    ids = polygon_ids("33N_1_2", 2023, 2024, changes.polygon)
    assert len(set(ids)) == changes.count == 2
    assert ids == polygon_ids("33N_1_2", 2023, 2024, changes.polygon.copy())
    assert ids != polygon_ids("33N_1_3", 2023, 2024, changes.polygon)


# --------------------------------------------------------------------------- the stage, on planted changes


def test_planted_changes_are_found_with_precision_and_recall_above_0_9(planted, prefect_server):
    from flows.change import change_flow

    cfg, store, grid = planted
    result = change_flow(cfg)
    assert result["done"] == 2 and result["failed"] == 0
    detected = read_change_layer(store, YEARS)
    assert detected.crs.to_epsg() == 4326 and len(detected) >= 6
    truth = planted_polygons(grid)
    precision, recall = overlap_scores(detected.to_crs(truth.crs), truth)
    assert precision >= 0.9 and recall >= 0.9, (precision, recall)

    # The noise was there and was removed for the right reasons.
    status = np.concatenate(
        [store.open_tile("change", change_key(*YEARS), t.tile_id).read("status").ravel() for t in grid]
    )
    assert (status == STATUS["low_confidence"]).sum() > 200 and (status == STATUS["removed"]).sum() > 1000

    # Columns as documented; areas equal the geometry's area in UTM; ids are unique; transitions as planted.
    assert {"change_id", "class_from_name", "class_to_name", "area_m2", "confidence_from", "score"} <= set(detected)
    utm = detected.to_crs(truth.crs)
    np.testing.assert_allclose(utm.area, detected["area_m2"], rtol=1e-6)
    assert detected["change_id"].is_unique and (detected["status"] == "unreviewed").all()
    assert {"water", "grassland"} <= set(detected["class_to_name"])
    assert (detected["confidence_from"] >= 60).all() and (detected["confidence_to"] >= 60).all()
    # The polygon that crosses the tile border is found in both tiles, and nothing in the buffers is doubled.
    crossing = utm[utm.intersects(shape({"type": "Point", "coordinates": (462_380, 5_091_700)}).buffer(150))]
    assert set(crossing["tile_id"]) == set(grid.tile_ids)
    assert unary_union(list(utm.geometry)).area == pytest.approx(utm.area.sum(), rel=1e-9)
    # Planted changes rank above everything else (they differ in NDVI; the rest is noise that survived).
    planted_ids = set(utm[utm.intersects(unary_union(list(truth.geometry)))]["change_id"])
    top = list(detected.sort_values("score", ascending=False)["change_id"][: len(planted_ids)])
    assert set(top) == planted_ids

    # A GeoPackage any GIS reads: the layer and its geometry type are in the gpkg tables.
    gpkg = Path(store.file_url("change-polygons", change_key(*YEARS), "changes.gpkg"))
    with sqlite3.connect(gpkg) as db:
        assert db.execute("select geometry_type_name from gpkg_geometry_columns").fetchone()[0] == "MULTIPOLYGON"

    # Rerun: skipped tiles, the same layer; a subset rerun with other settings keeps the other tile's polygons.
    again = change_flow(cfg)
    assert again["skipped"] == 2
    pd.testing.assert_frame_equal(
        read_change_layer(store, YEARS).drop(columns="geometry"), detected.drop(columns="geometry")
    )
    strict = cfg.model_copy(update={"change": cfg.change.model_copy(update={"min_confidence": 90})})
    from lcms.config import TileSubset

    first, second = grid.tile_ids
    change_flow(strict, TileSubset(tile_ids=[first]))
    layer = read_change_layer(store, YEARS)
    assert set(layer["tile_id"]) <= {first, second}
    kept_second = detected[detected["tile_id"] == second]
    pd.testing.assert_frame_equal(
        layer[layer["tile_id"] == second].drop(columns="geometry").reset_index(drop=True),
        kept_second.drop(columns="geometry").reset_index(drop=True),
    )
    assert (layer[layer["tile_id"] == first]["confidence_from"] >= 90).all()


def test_report_numbers_match_an_independent_count_and_the_page_renders(planted, prefect_server, tmp_path):
    from flows.change import change_flow
    from flows.report import report_flow
    from tasks.report.html import screenshot

    cfg, store, grid = planted
    regions_path = tmp_path / "regions.gpkg"
    # Two regions, west and east halves of the AOI, in WGS84 (the report reprojects).
    west = shape({"type": "Polygon", "coordinates": [[(460_000, 5_090_000), (462_000, 5_090_000),
                  (462_000, 5_092_500), (460_000, 5_092_500), (460_000, 5_090_000)]]})  # fmt: skip
    east = shape({"type": "Polygon", "coordinates": [[(462_000, 5_090_000), (465_000, 5_090_000),
                  (465_000, 5_092_500), (462_000, 5_092_500), (462_000, 5_090_000)]]})  # fmt: skip
    gpd.GeoDataFrame({"name": ["west", "east"]}, geometry=[west, east], crs="EPSG:32633").to_crs(4326).to_file(
        regions_path
    )
    cfg = cfg.model_copy(update={"report": cfg.report.model_copy(update={"regions_path": str(regions_path)})})
    with pytest.raises(StageInputError, match="change"):
        report_flow(cfg)
    change_flow(cfg)
    result = report_flow(cfg)
    folder = Path(result["url"]).parent
    report = json.loads((folder / "report.json").read_text())

    # Class areas: an independent count over the tile cores with pandas.
    frames = []
    for tile in grid:
        for year in YEARS:
            labels = store.open_tile("postprocess", year, tile.tile_id).read("labels", tile.core_window)
            frames.append(pd.DataFrame({"year": year, "code": labels.ravel()}))
    counts = pd.concat(frames).value_counts().rename("px").reset_index()
    names = {c.code: c.name for c in LULC_LEGEND}
    for row in counts.itertuples():
        assert report["class_areas_ha"][str(row.year)][names[row.code]] == pytest.approx(row.px * 0.01, abs=1e-3)
    csv_areas = pd.read_csv(folder / "class_areas.csv")
    assert csv_areas.groupby("year")["area_ha"].sum().round(3).tolist() == [1250.0, 1250.0]  # 5 km × 2.5 km
    # Regions: west + east = the whole; the west part is 2 km of the 5 km.
    regions = pd.read_csv(folder / "class_areas_by_region.csv")
    per_region = regions[regions.year == 2023].groupby("region")["area_ha"].sum()
    assert per_region["west"] == pytest.approx(500.0, abs=0.01) and per_region["east"] == pytest.approx(750.0, abs=0.01)

    # Transitions: crosstab of the two years' labels.
    before = np.concatenate(
        [store.open_tile("postprocess", 2023, t.tile_id).read("labels", t.core_window).ravel() for t in grid]
    )
    after = np.concatenate(
        [store.open_tile("postprocess", 2024, t.tile_id).read("labels", t.core_window).ravel() for t in grid]
    )
    crosstab = pd.crosstab(before, after) * 0.01
    transitions = pd.read_csv(folder / "transitions.csv")
    for row in transitions.itertuples():
        code_from = next(c for c, n in names.items() if n == row.class_from)
        code_to = next(c for c, n in names.items() if n == row.class_to)
        assert row.area_ha == pytest.approx(crosstab.loc[code_from, code_to], abs=1e-3)
    assert transitions["area_ha"].sum() == pytest.approx(1250.0, abs=0.01)

    largest = pd.read_csv(folder / "largest_changes.csv")
    layer = read_change_layer(store, YEARS)
    assert list(largest["area_ha"]) == sorted(largest["area_ha"], reverse=True)
    assert largest["area_ha"].iloc[0] == pytest.approx(layer["area_m2"].max() / 10_000, abs=1e-4)
    assert report["change_summary"]["polygons"] == len(layer)

    # The page renders in a real browser, with every map loaded, from a copy of report.html alone.
    chromium_or_skip()
    alone = tmp_path / "report-alone"
    alone.mkdir()
    (alone / "report.html").write_bytes((folder / "report.html").read_bytes())
    png = tmp_path / "report.png"
    dom = screenshot(alone / "report.html", png)
    assert 'data-images-loaded="' in dom
    loaded = int(dom.split('data-images-loaded="')[1].split('"')[0])
    total = int(dom.split('data-images="')[1].split('"')[0])
    assert total == 3 and loaded == total  # 2 years + the change map, one UTM zone
    assert "Land cover report: land-cover" in dom and 'id="largest-changes"' in dom
    from PIL import Image

    image = np.asarray(Image.open(png).convert("RGB"))
    colours = {tuple(c) for c in image.reshape(-1, 3)[::97]}
    assert (5, 73, 7) in colours  # forest green from the thumbnails and bars: the images were drawn
    assert len(colours) > 20


def test_bad_inputs_are_named(planted, prefect_server, tmp_path):
    from flows.change import ChangeYearsError, change_flow

    cfg, store, grid = planted
    # A single year: nothing to compare.
    with pytest.raises(ChangeYearsError, match="two years"):
        change_flow(cfg.model_copy(update={"years": [2023], "change": cfg.change.model_copy(update={"years": None})}))
    # Years that are not the run's.
    with pytest.raises(ValueError, match=r"change.years \[2019\]"):
        run_config(tmp_path, change={"years": [2019, 2023]})
    with pytest.raises(ValueError, match="earlier, later"):
        run_config(tmp_path, change={"years": [2024, 2023]})
    # A missing year in the store: the error names the stage and tiles.
    tile = grid[grid.tile_ids[0]]
    store.fs.rm(store.tile_dir("postprocess", 2024, tile.tile_id), recursive=True)
    with pytest.raises(StageInputError, match=f"postprocess stage's output.*{tile.tile_id}/2024"):
        change_flow(cfg)
    # Maps of another legend: the tile fails with a message naming both legends; nothing is written for it.
    other = [dict(c, name=c["name"].upper()) for c in LEGEND_ATTR]
    write_year(store, tile, 2024, *noisy_maps(tile, 2024, 0), legend=other)
    with pytest.raises(TileFailures, match="different legends"):
        change_flow(cfg)
    assert not store.is_done("change", change_key(*YEARS), tile.tile_id)


def test_no_changes_give_an_empty_layer_and_a_valid_report(tmp_path, prefect_server):
    from flows.change import change_flow
    from flows.report import report_flow

    cfg = run_config(tmp_path)
    store = TileStore.from_config(cfg.store)
    grid = load_grid(cfg, store)
    for tile in grid:
        labels, confidence = noisy_maps(tile, 2023, 0)
        for year in YEARS:
            write_year(store, tile, year, labels, confidence)
    assert change_flow(cfg)["polygons"] == 0
    layer = read_change_layer(store, YEARS)
    assert len(layer) == 0 and "class_to_name" in layer.columns
    url = report_flow(cfg)["url"]
    html = Path(url).read_text()
    assert 'id="no-changes"' in html
    report = json.loads((Path(url).parent / "report.json").read_text())
    assert report["change_summary"]["polygons"] == 0 and report["largest_changes"] == []


def test_polygons_go_to_postgis_and_operator_decisions_survive_a_rerun(
    planted, prefect_server, postgis_dsn, monkeypatch
):
    import psycopg

    from flows.change import change_flow
    from lcms.config import PostgisConfig
    from tasks.change.postgis import read_changes_postgis

    cfg, store, grid = planted
    monkeypatch.setenv("LCMS_TEST_POSTGIS", postgis_dsn)
    postgis = PostgisConfig(dsn_env="LCMS_TEST_POSTGIS", table="changes_flow_test")
    cfg = cfg.model_copy(update={"change": cfg.change.model_copy(update={"postgis": postgis})})
    change_flow(cfg)
    layer = read_change_layer(store, YEARS)
    rows = read_changes_postgis(postgis_dsn, table="changes_flow_test")
    assert sorted(rows["change_id"]) == sorted(layer["change_id"])
    merged = rows.set_index("change_id").loc[layer["change_id"]]
    np.testing.assert_allclose(merged["area_m2"], layer["area_m2"])
    assert merged.geometry.reset_index(drop=True).geom_equals_exact(layer.geometry, tolerance=1e-9).all()

    # An operator confirms the largest change; a rerun with other thresholds keeps that decision.
    largest = layer.sort_values("area_m2").iloc[-1]["change_id"]
    with psycopg.connect(postgis_dsn) as conn:
        conn.execute("update changes_flow_test set status = 'confirmed' where change_id = %s", (largest,))
    stricter = cfg.model_copy(update={"change": cfg.change.model_copy(update={"min_area_m2": 20_000})})
    change_flow(stricter)
    after = read_changes_postgis(postgis_dsn, table="changes_flow_test").set_index("change_id")
    assert after.loc[largest, "status"] == "confirmed"
    assert len(after) < len(rows)  # the small unreviewed ones went
    # Without a DSN the stage says where it looked, before any tile is redone.
    monkeypatch.delenv("LCMS_TEST_POSTGIS")
    before = store.done_record("change", change_key(*YEARS), grid.tile_ids[0])
    with pytest.raises(ValueError, match="LCMS_TEST_POSTGIS holds no DSN"):
        change_flow(stricter, overwrite=True)
    assert store.done_record("change", change_key(*YEARS), grid.tile_ids[0]) == before
