"""Active learning (issue 20 §3): uncertainty, units, stratified and thinned picks, `lcms label-next` on the small
synthetic demo, and labelled units burnt into the reference (`reference.active_labels`)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import yaml
from rasterio import features as rio_features
from scipy import stats
from serve_support import LCMS
from small_demo import small_demo

from tasks.active.picks import equal_allocation, pick_units
from tasks.active.uncertainty import entropy_uncertainty, margin_uncertainty, uncertainty
from tasks.active.units import UnitTable, block_units, unit_polygons, unit_table

YEAR = 2023


def _percent(rng, shape, k):
    """Random uint8 percent probabilities, rounded as the prediction stage rounds them."""
    p = rng.dirichlet(np.full(k, 0.7), size=shape)
    return np.rint(p * 100).astype(np.uint8)


def test_margin_and_entropy_match_an_independent_computation():
    rng = np.random.default_rng(3)
    percent = _percent(rng, (7, 9), 5)
    percent[0, 0] = 0  # no prediction
    percent[1, 1] = [50, 50, 0, 0, 0]  # a tie: margin 1
    p = percent.astype(np.float64)
    with np.errstate(invalid="ignore"):
        p /= p.sum(axis=-1, keepdims=True)
    top = np.sort(p, axis=-1)
    expected_margin = 1 - (top[..., -1] - top[..., -2])
    expected_entropy = stats.entropy(p, axis=-1) / np.log(5)
    margin, entropy = margin_uncertainty(percent), entropy_uncertainty(percent)
    assert np.isnan(margin[0, 0]) and np.isnan(entropy[0, 0])
    ok = np.ones((7, 9), bool)
    ok[0, 0] = False
    np.testing.assert_allclose(margin[ok], expected_margin[ok], atol=1e-6)
    np.testing.assert_allclose(entropy[ok], expected_entropy[ok], atol=1e-6)
    assert margin[1, 1] == pytest.approx(1.0)
    np.testing.assert_array_equal(uncertainty(percent, "entropy"), entropy)
    with pytest.raises(ValueError, match="margin"):
        uncertainty(percent, "variance")


def test_unit_scores_are_block_means_and_the_class_is_the_majority():
    rng = np.random.default_rng(1)
    u = rng.random((7, 8)).astype(np.float32)
    u[0, 0] = np.nan  # no prediction there: not in the mean
    labels = rng.integers(1, 4, (7, 8)).astype(np.uint8)
    units = block_units((7, 8), 3)
    table = unit_table(units, u, labels)
    assert len(table.unit) == 3 * 3  # ceil(7/3) × ceil(8/3)
    for bi in range(3):
        for bj in range(3):
            block = (slice(3 * bi, 3 * bi + 3), slice(3 * bj, 3 * bj + 3))
            uid = bi * 3 + bj
            values = u[block].ravel()
            assert table.score[uid] == pytest.approx(float(np.nanmean(values)), rel=1e-6)
            lab = labels[block].ravel()[~np.isnan(values)]
            counts = np.bincount(lab, minlength=4)
            assert table.label[uid] == int(np.argmax(counts))  # ties: the lowest code, like argmax
            rows, cols = (a[block] for a in np.mgrid[0:7, 0:8])  # edge blocks are cut
            assert table.row[uid] == pytest.approx(rows.mean()) and table.col[uid] == pytest.approx(cols.mean())
            assert table.n_pixels[uid] == rows.size
    # polygons are the blocks' outlines in the grid's coordinates
    from affine import Affine

    polygons = unit_polygons(units, Affine(10, 0, 1000, 0, -10, 5000), np.array([4]))
    assert polygons[4].bounds == (1030.0, 4940.0, 1060.0, 4970.0)


def _table(n_per_class=(60, 60, 60), seed=0) -> UnitTable:
    rng = np.random.default_rng(seed)
    n = sum(n_per_class)
    label = np.repeat(np.arange(1, len(n_per_class) + 1), n_per_class).astype(np.uint8)
    return UnitTable(
        np.arange(n, dtype=np.int32),
        rng.random(n).astype(np.float32),
        label,
        rng.random(n) * 100,
        rng.random(n) * 100,
        np.full(n, 25),
    )


def test_picks_are_stratified_equally_thinned_and_skip_excluded_units():
    table = _table()
    exclude = np.argsort(-table.score)[:5]  # the five best units are labelled already
    free = ~np.isin(table.unit, exclude)
    best = {c: table.score[(table.label == c) & free].max() for c in (1, 2, 3)}
    quota = equal_allocation(10, np.array([1, 2, 3]), np.array([best[1], best[2], best[3]]))
    assert sum(quota.values()) == 10 and sorted(quota.values()) == [3, 3, 4]
    assert quota[max(best, key=best.get)] == 4  # the remainder goes to the most uncertain admissible class
    picks = pick_units(table, 10, min_distance_px=12.0, exclude=exclude)
    assert len(picks.unit) == 10 and not np.isin(picks.unit, exclude).any()
    assert {int(c): int((picks.label == c).sum()) for c in (1, 2, 3)} == quota
    rc = np.stack([table.row[picks.unit], table.col[picks.unit]], axis=1)
    d = np.hypot(*(rc[:, None, :] - rc[None, :, :]).transpose(2, 0, 1))
    assert d[np.triu_indices(10, 1)].min() >= 12.0
    # without thinning, each class's picks are its highest-scoring admissible units
    plain = pick_units(table, 10)
    for c, n in plain.quota.items():
        mine = table.unit[table.label == c]
        expected = mine[np.argsort(-table.score[mine], kind="stable")][:n]
        assert set(plain.unit[plain.label == c]) == set(expected)


def test_a_class_short_of_candidates_gives_its_share_to_the_others():
    table = _table((2, 60, 60))
    picks = pick_units(table, 12)
    assert picks.quota == {1: 4, 2: 4, 3: 4}
    counts = {int(c): int((picks.label == c).sum()) for c in (1, 2, 3)}
    assert counts[1] == 2 and sum(counts.values()) == 12
    # more than there are: every candidate, once
    assert len(set(pick_units(table, 500).unit)) == 122


# --------------------------------------------------------------------------- end to end on the demo


def lcms(folder: Path, *args: str, check: bool = True, timeout: int = 300) -> subprocess.CompletedProcess:
    done = subprocess.run([LCMS, "-q", *args], cwd=folder, capture_output=True, text=True, timeout=timeout)
    if check:
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The small demo, one tile and one year, run up to the prediction; its config path, config and store."""
    from lcms.config import load_config
    from lcms.store import TileStore

    folder = tmp_path_factory.mktemp("active-learning")
    path = small_demo("demo.yaml", folder)
    data = yaml.safe_load(path.read_text())
    data["years"] = [YEAR]
    data["aoi"]["bbox"] = [460_000, 5_090_000, 462_500, 5_092_500]  # one tile of the small demo: half the work
    data["merge"]["years"] = [YEAR]
    data["serve"] = {"refresh_seconds": 0, "database_path": str(folder / "serve.sqlite")}
    path.write_text(yaml.safe_dump(data))
    lcms(folder, "synthetic-reference", str(path), "--fraction", "0.6")
    lcms(folder, "run", str(path), "--stages", "download,features,reference,sampling,merge,training,prediction")
    config = load_config(path)
    return folder, path, config, TileStore.from_config(config.store, config.product)


def _unit_mask(units: gpd.GeoDataFrame, grid) -> np.ndarray:
    """Per unit (in order), the pixels of `grid` whose centre it covers (rasterio, independent of the stage)."""
    on_grid = units.geometry.to_crs(grid.crs)
    return np.stack(
        [rio_features.geometry_mask([g], out_shape=grid.shape, transform=grid.affine, invert=True) for g in on_grid]
    )


def test_label_next_queues_units_and_their_labels_become_reference(demo):
    from lcms.config import load_config
    from lcms.serve.db import open_database, utcnow
    from lcms.serve.samples import labelled_records

    folder, path, config, store = demo
    bad = lcms(folder, "label-next", str(path), "--unit", "hexagon", check=False)
    assert bad.returncode == 2 and "--unit must be one of" in bad.stderr and "Traceback" not in bad.stderr

    lcms(folder, "label-next", str(path), "--count", "8", "--unit-size", "5", "--min-distance", "12")
    db = open_database(config, store)
    try:
        with db.transaction(write=False) as conn:
            designs = conn.rows("SELECT design_id, kind, design FROM lcms_sample_designs")
            assert [d["kind"] for d in designs] == ["active"]
            design_id = designs[0]["design_id"]
            points = conn.rows(
                "SELECT sample_id, source, map_class, unit FROM lcms_sample_points WHERE design_id = ?", (design_id,)
            )
    finally:
        db.close()
    design = json.loads(store.read_file("label-next", design_id, "design.json"))
    assert design["kind"] == "active" and design["unit"] == "block" and design["unit_size_px"] == 5
    assert design["min_distance_px"] == 12 and design["model_versions"] and design["n_total"] == 8
    assert {p["source"] for p in points} == {"active"} and len(points) == 8
    units = gpd.read_file(store.read_file("label-next", design_id, "units.geojson").decode())
    assert sorted(units["sample_id"]) == [p["sample_id"] for p in points]
    # each unit is a 5 × 5 px block (10 m pixels) and the picks are at least 12 px apart
    metric = units.to_crs(next(iter(store.read_grid())).grid.crs)
    assert np.allclose(metric.area, 2500, rtol=0.01)
    c = np.stack([metric.centroid.x, metric.centroid.y], axis=1)
    d = np.hypot(*(c[:, None, :] - c[None, :, :]).transpose(2, 0, 1))
    assert d[np.triu_indices(len(c), 1)].min() >= 120 - 1e-6
    assert sum(design["picks_per_class"].values()) == 8

    # A second queue leaves out the first one's units.
    lcms(folder, "label-next", str(path), "--count", "8")
    db = open_database(config, store)
    try:
        with db.transaction(write=False) as conn:
            second = [d for d in conn.rows("SELECT design_id FROM lcms_sample_designs") if d["design_id"] != design_id]
    finally:
        db.close()
    assert len(second) == 1
    units2 = gpd.read_file(store.read_file("label-next", second[0]["design_id"], "units.geojson").decode())
    assert not metric.union_all().intersection(units2.to_crs(metric.crs).union_all()).area > 1.0

    # Operators label five units of the first queue (one twice: the latest label counts); water (5) everywhere but
    # the first unit, which is labelled cultivated (1) then water.
    labelled = [int(s) for s in units["sample_id"][:5]]
    db = open_database(config, store)
    try:
        with db.transaction() as conn:
            for sample_id, cls in [(labelled[0], 1), *((s, 5) for s in labelled)]:
                conn.run(
                    "INSERT INTO lcms_sample_labels (design_id, sample_id, reviewer, reference_class, comment, "
                    "created_at) VALUES (?, ?, ?, ?, '', ?)",
                    (design_id, sample_id, "rosa", cls, utcnow()),
                )
        assert len(labelled_records(db, design_id)) == 5
    finally:
        db.close()

    before = {t.tile_id: store.open_tile("reference", YEAR, t.tile_id).read("labels") for t in store.read_grid()}
    data = yaml.safe_load(path.read_text())
    data["reference"]["active_labels"] = True
    path.write_text(yaml.safe_dump(data))
    config = load_config(path)
    lcms(folder, "run", str(path), "--stages", "reference")
    chosen = units[units["sample_id"].isin(labelled)].set_crs("EPSG:4326", allow_override=True)
    changed_total = 0
    for tile in store.read_grid():
        reader = store.open_tile("reference", YEAR, tile.tile_id)
        after = reader.read("labels")
        inside = _unit_mask(chosen, tile.grid).any(axis=0)
        assert (after[inside] == 5).all()
        np.testing.assert_array_equal(after[~inside], before[tile.tile_id][~inside])
        extra = reader.record.extra["active_labels"]
        assert extra["changed_pixels"] == int((inside & (before[tile.tile_id] != 5) & (before[tile.tile_id] > 0)).sum())
        changed_total += int((after != before[tile.tile_id]).sum())
        for record in extra["provenance"]:
            assert record["design_id"] == design_id and record["reviewer"] == "rosa" and record["source"] == "active"
            assert record["sample_id"] in labelled and record["class_code"] == 5
        assert sum(r["pixels"] for r in extra["provenance"]) == int(inside.sum())
    assert changed_total > 0
    # A new label makes the reference stale; the plan runs it again.
    plan = lcms(folder, "plan", str(path), "--stages", "reference").stdout
    db = open_database(config, store)
    try:
        with db.transaction() as conn:
            conn.run(
                "INSERT INTO lcms_sample_labels (design_id, sample_id, reviewer, reference_class, comment, created_at) "
                "VALUES (?, ?, ?, ?, '', ?)",
                (design_id, int(units["sample_id"].iloc[5]), "rosa", 2, utcnow()),
            )
    finally:
        db.close()
    replan = lcms(folder, "plan", str(path), "--stages", "reference").stdout
    to_make = [int(re.search(r"│ reference │\s+(\d+) │\s+(\d+) │", text).group(2)) for text in (plan, replan)]
    assert to_make == [0, 1], (plan, replan)  # up to date; then stale: the labels' version is in the tile hash


def test_the_benchmark_prints_both_curves_quickly(tmp_path):
    out = tmp_path / "al.json"
    done = subprocess.run(
        [sys.executable, "benchmarks/active_learning.py", "--quick", "--scenes", "synthetic", "--seeds", "1",
         "--synthetic-size", "40", "--start", "6", "--per-round", "4", "--out", str(out)],
        cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())["scenes"]["synthetic"]
    assert [r["units"] for r in result["active"]] == [6, 10, 14] == [r["units"] for r in result["random"]]
    assert result["active"][0]["oa"] == result["random"][0]["oa"]  # the same start
    assert "OA active" in done.stdout and "AL − random" in done.stdout


def test_slic_units_follow_an_edge_and_number_about_the_asked_size():
    from tasks.active.units import make_units

    rng = np.random.default_rng(0)
    image = rng.normal(0, 0.05, (40, 40, 3)).astype(np.float32)
    image[:, 17:] += 1.0  # two fields, the edge not on a block boundary
    units = make_units("slic", (40, 40), 8, image)
    ids = np.unique(units)
    np.testing.assert_array_equal(ids, np.arange(ids.size))  # consecutive ids
    assert 10 <= ids.size <= 50  # about 40² / 8² = 25
    left = units[:, :17]
    assert not np.isin(np.unique(left), units[:, 17:]).any()  # no unit straddles the edge
    with pytest.raises(ValueError, match="feature image"):
        make_units("slic", (40, 40), 8)
