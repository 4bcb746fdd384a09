"""The review loop on the synthetic demo: operators' decisions become reference data and the next model is better
where the land changed.

Round 1 runs the real `lcms run` on a small copy of the demo (two tiles, two years, trained on both years).
Its base reference is the synthetic land cover of the first year (60 % of the polygons, 10 % of the small ones
mislabelled, as `make demo` writes it), used for both years: where the land changed in the second year, the base
reference is wrong, as an out-of-date reference would be. The change stage finds some of those changes.

A scripted reviewer then decides on every change polygon through the real `lcms serve` API, as an operator in
the Validation Tool, from the synthetic scene's own land cover of both years (tasks/download/synthetic.py),
which the pipeline never sees: confirmed where the land changed as detected, corrected (the true classes) where
it changed otherwise, rejected where nothing changed and the class before is right, and "not sure" where nothing
changed but the map was wrong in both years (no decision says that; it gives no label).

Round 2 is `lcms run` again: the new decisions make the second year's reference stale (their version is in
its tile hash), so reference → sampling → merge → training → prediction run again. The accuracy of the second
year's prediction on the changed areas (pixels whose true class differs between the years, tile cores) goes up.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import yaml
from rasterio import features
from serve_support import LCMS, Client, Server, add_users
from shapely.geometry import box, mapping
from small_demo import small_demo

from lcms.config import load_config
from lcms.legend import LULC_LEGEND
from lcms.store import TileStore
from tasks.change.polygons import read_change_layer
from tasks.download.synthetic import SyntheticScene
from tasks.reference.polygons import load_reference, rasterize_reference
from tasks.reference.reviews import overlay_reviews

YEARS = (2023, 2024)
COLLECTION = f"land-cover_{YEARS[0]}-{YEARS[1]}"


def lcms(folder: Path, *args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    done = subprocess.run([LCMS, "-q", *args], cwd=folder, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done


_TRUTH: dict = {}


def truth(config, tile, year: int) -> np.ndarray:
    """The synthetic scene's land cover of a tile (its buffered grid), independent of the pipeline."""
    key = (config.download.source.model_dump_json(), tile.tile_id, year)
    if key not in _TRUTH:
        scene = SyntheticScene(**config.download.source.model_dump(exclude={"kind"}))
        _TRUTH[key] = scene.land_cover(tile.grid, year)
    return _TRUTH[key]


def accuracy_on_changed_areas(config, store: TileStore) -> tuple[float, int, float]:
    """Accuracy of the second year's prediction on the pixels whose true class changed (tile cores), its pixel
    count, and the accuracy on every core pixel."""
    right = changed = right_all = total = 0
    for tile in store.read_grid():
        core = tile.core_window
        before, after = truth(config, tile, YEARS[0])[core], truth(config, tile, YEARS[1])[core]
        predicted = store.open_tile("prediction", YEARS[1], tile.tile_id).read("labels")[core]
        moved = before != after
        right += int((predicted[moved] == after[moved]).sum())
        changed += int(moved.sum())
        right_all += int((predicted == after).sum())
        total += after.size
    return right / changed, changed, right_all / total


def scripted_decision(class_from: int, class_to: int, polygon, config, store: TileStore) -> dict:
    """What an operator who knows the truth decides on one change polygon (a GeoSeries of one polygon with its
    CRS; see the module docstring)."""
    before, after = [], []
    for tile in store.read_grid():
        grid = tile.core_grid
        shape = polygon.to_crs(grid.crs).iloc[0]
        inside = features.geometry_mask([shape], out_shape=grid.shape, transform=grid.affine, invert=True)
        if inside.any():
            before.append(truth(config, tile, YEARS[0])[tile.core_window][inside])
            after.append(truth(config, tile, YEARS[1])[tile.core_window][inside])
    before, after = np.concatenate(before), np.concatenate(after)
    moved = before != after
    if moved.mean() >= 0.5:
        pairs, counts = np.unique(np.stack([before[moved], after[moved]]), axis=1, return_counts=True)
        true_from, true_to = (int(v) for v in pairs[:, np.argmax(counts)])
        if (true_from, true_to) == (class_from, class_to):
            return {"decision": "confirmed"}
        return {"decision": "corrected", "class_from": true_from, "class_to": true_to}
    kept = int(np.bincount(after[~moved]).argmax())
    if kept == class_from:
        return {"decision": "rejected"}
    return {"decision": "unsure", "comment": f"no change, but it is class {kept} in both years"}


@pytest.fixture(scope="module")
def review_loop(tmp_path_factory):
    folder = tmp_path_factory.mktemp("review-loop")
    config_path = small_demo("demo.yaml", folder)
    data = yaml.safe_load(config_path.read_text())
    data["merge"]["years"] = list(YEARS)  # the reviews label the second year: train on both
    data["reference"]["reviews"] = True
    data["serve"] = {"refresh_seconds": 0}
    data["export"] = {"imagery": {"enabled": False}}  # not needed here; saves time
    config_path.write_text(yaml.safe_dump(data))
    config = load_config(config_path)
    store = TileStore.from_config(config.store, config.product)
    timings = {}

    start = time.perf_counter()
    lcms(folder, "synthetic-reference", str(config_path), "--fraction", "0.6", timeout=120)
    lcms(folder, "run", str(config_path))
    timings["round 1"] = time.perf_counter() - start
    before = accuracy_on_changed_areas(config, store)
    reference_before = {year: store.done_tiles("reference", year) for year in YEARS}

    # The scripted reviewer, through the service's API as an operator.
    start = time.perf_counter()
    layer = read_change_layer(store, YEARS)
    add_users(config_path, {"rosa": "operator"})
    server = Server(config_path, folder / "serve.log")
    decisions = {}
    try:
        client = Client(server.url, "rosa")
        for i, change in enumerate(layer.itertuples()):
            body = scripted_decision(
                int(change.class_from), int(change.class_to), layer.geometry.iloc[[i]], config, store
            )
            answer = client.post(
                f"/changes/collections/{COLLECTION}/items/{change.change_id}/reviews", json={**body, "version": 0}
            )
            assert answer.status_code == 201, answer.text
            decisions[change.change_id] = body
    finally:
        server.stop()
    timings["reviews"] = time.perf_counter() - start

    start = time.perf_counter()
    lcms(folder, "run", str(config_path))
    timings["round 2"] = time.perf_counter() - start
    after = accuracy_on_changed_areas(config, store)
    return folder, config, store, before, after, reference_before, layer, decisions, timings


def test_reviewed_changes_improve_the_next_model_on_changed_areas(review_loop):
    folder, config, store, before, after, _, _, decisions, timings = review_loop
    kinds = {
        k: sum(d["decision"] == k for d in decisions.values()) for k in ("confirmed", "corrected", "rejected", "unsure")
    }
    print(
        f"\nsynthetic demo (2 tiles of 200 x 200 px, {YEARS[0]}-{YEARS[1]}), {len(decisions)} change polygons "
        f"reviewed from the synthetic truth: {kinds}"
    )
    print(
        f"accuracy of the {YEARS[1]} prediction on the {before[1]} truly changed pixels: "
        f"before {before[0]:.3f}, after {after[0]:.3f} (all core pixels: {before[2]:.3f} -> {after[2]:.3f})"
    )
    print("timings: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
    assert kinds["confirmed"] + kinds["corrected"] > 0
    assert after[0] > before[0]


def test_the_reference_holds_the_decisions_with_their_provenance(review_loop):
    folder, config, store, _, _, reference_before, layer, decisions, _ = review_loop
    # Only the year the decisions are about was made again: the decisions' version is in its tiles' hash.
    first, second = (store.done_tiles("reference", year) for year in YEARS)
    assert {t: r.attempt for t, r in first.items()} == {t: r.attempt for t, r in reference_before[YEARS[0]].items()}
    assert all(r.attempt != reference_before[YEARS[1]][t].attempt for t, r in second.items())

    # Independently: the base reference rasterised, the decided classes burnt over it from the change layer.
    base_polygons = load_reference(config.reference.path, "LULC_ID", LULC_LEGEND)
    expected_class = {}
    for change in layer.itertuples():
        body = decisions[change.change_id]
        expected_class[change.change_id] = {
            "confirmed": change.class_to,
            "rejected": change.class_from,
            "corrected": body.get("class_to"),
        }.get(body["decision"])
    used = layer[[expected_class[c] is not None for c in layer.change_id]]
    changed_total = 0
    for tile in store.read_grid():
        base = rasterize_reference(base_polygons, tile.grid)
        shapes = [
            (g, int(expected_class[c]))
            for g, c in zip(used.geometry.to_crs(tile.grid.crs), used.change_id, strict=True)
        ]
        reviewed = features.rasterize(shapes, out_shape=tile.grid.shape, transform=tile.grid.affine, dtype="uint8")
        labels = store.open_tile("reference", YEARS[1], tile.tile_id).read("labels")
        np.testing.assert_array_equal(labels, np.where(reviewed > 0, reviewed, base))
        changed = int(((reviewed > 0) & (base > 0) & (reviewed != base)).sum())
        extra = second[tile.tile_id].extra["reviews"]
        assert extra["changed_base_pixels"] == changed
        assert sum(p["pixels"] for p in extra["provenance"]) == int((reviewed > 0).sum())
        assert second[tile.tile_id].extra["sources"]["review"] == int((reviewed > 0).sum())
        changed_total += changed
        for record in extra["provenance"]:  # each polygon's provenance: change, decision, reviewer, time
            assert record["decision"] == decisions[record["change_id"]]["decision"]
            assert record["class_code"] == expected_class[record["change_id"]]
            assert record["reviewer"] == "rosa" and record["source"] == "review"
            assert record["decided_at"].endswith("Z") and record["decision_id"] >= 1
        # The tile's lineage names the reviews' version it read: every decision, the last one's id.
        seen = second[tile.tile_id].lineage["reviews"]
        assert seen["decisions"] == len(decisions) and seen["last_id"] == len(decisions)
        assert seen == {"product": config.product, "year_to": YEARS[1], **extra["version"]}
        assert first[tile.tile_id].extra["reviews"]["provenance"] == []  # no decision is about the first year
    assert changed_total > 0

    # The report counts the base pixels the reviews changed.
    report = json.loads(store.read_file("report", config.product, "report.json"))
    assert report["reviewed_reference"]["by_year"][str(YEARS[1])]["changed_base_pixels"] == changed_total
    assert report["reviewed_reference"]["changes"] == sum(1 for c in used.change_id)
    assert "Reviewed changes" in store.read_file("report", config.product, "report.html").decode()


# ------------------------------------------------------------------ the rules, on a hand-made store (seconds)


def test_overlay_reviews_puts_the_reviewed_class_over_the_base_and_counts_what_it_changed():
    base = np.array([[1, 1, 0], [2, 2, 0]], dtype=np.uint8)
    index = np.array([[0, 1, 1], [2, 2, 0]], dtype=np.int32)  # review 1 (class 1), review 2 (class 3)
    labels, changed = overlay_reviews(base, index, np.array([1, 3]))
    np.testing.assert_array_equal(labels, [[1, 1, 1], [3, 3, 0]])
    # (0, 1) had class 1 already; (0, 2) had no base label: neither is a change of the base reference.
    np.testing.assert_array_equal(changed, [[False, False, False], [True, True, False]])


def test_each_decision_gives_its_label_and_the_newer_one_wins(tmp_path):
    from serve_support import make_change_store

    from lcms.config import ReviewsDatabaseConfig
    from lcms.serve.app import open_state
    from lcms.serve.auth import User
    from lcms.serve.reviews import DecisionBody, record_decision
    from tasks.reference.tile import reference_tile, reference_tile_hash

    config_path, config, store = make_change_store(tmp_path)
    layer_frame = read_change_layer(store, YEARS).sort_values("area_m2", ascending=False).reset_index(drop=True)
    assert len(layer_frame) >= 4
    a, b, c, d = (layer_frame.iloc[i] for i in range(4))
    grid = store.read_grid()
    # A base reference of one class (5, wetland) over the whole area.
    base_class = 5
    bounds = np.array([t.grid.bounds for t in grid])
    area = box(*bounds[:, :2].min(axis=0), *bounds[:, 2:].max(axis=0))
    crs = next(iter(grid)).grid.crs
    gpd.GeoDataFrame({"LULC_ID": [base_class]}, geometry=[area], crs=crs).to_file(tmp_path / "base.gpkg")
    cfg = config.reference.model_copy(
        update={
            "path": str(tmp_path / "base.gpkg"),
            "reviews": True,
            "erosion_px": 0,
            "reviews_database": ReviewsDatabaseConfig(database_path=config.serve.database_path),
        }
    )
    tile = grid[a.tile_id]
    hash_before = reference_tile_hash(store, tile, YEARS[1], cfg)

    state = open_state(config)
    layer = state.layers.get(config.product, YEARS)
    olga, oscar = User(1, "olga", "operator"), User(2, "oscar", "operator")
    outline = a.geometry.centroid.buffer(0.0003)  # about 25 m around A's centre, inside A
    other = [k for k in (1, 2, 3, 4) if k not in (int(a.class_from), int(a.class_to))]
    record_decision(state, layer, b.change_id, DecisionBody(decision="confirmed", version=0), olga)
    record_decision(state, layer, c.change_id, DecisionBody(decision="rejected", version=0), olga)
    record_decision(state, layer, d.change_id, DecisionBody(decision="unsure", version=0), olga)
    record_decision(state, layer, a.change_id, DecisionBody(decision="confirmed", version=0), olga)
    # A later correction of A by another reviewer makes a conflict: A gives nothing until an admin resolves it.
    body = {"class_from": int(a.class_from), "class_to": other[0], "geometry": mapping(outline)}
    record_decision(state, layer, a.change_id, DecisionBody(decision="corrected", version=1, **body), oscar)
    record_decision(
        state,
        layer,
        a.change_id,
        DecisionBody(decision="corrected", version=2, **body),
        User(3, "ada", "admin"),
        kind="resolution",
    )
    state.close()

    assert reference_tile_hash(store, tile, YEARS[1], cfg) != hash_before  # decisions make the reference stale
    for tile_id in {a.tile_id, b.tile_id, c.tile_id, d.tile_id}:
        record = reference_tile(store, grid[tile_id], YEARS[1], cfg)
        labels = store.open_tile("reference", YEARS[1], tile_id).read("labels")
        t = grid[tile_id].grid

        def inside(geometry, t=t):
            shape = gpd.GeoSeries([geometry], crs="EPSG:4326").to_crs(t.crs).iloc[0]
            return features.geometry_mask([shape], out_shape=t.shape, transform=t.affine, invert=True)

        by_change = {p["change_id"]: p for p in record.extra["reviews"]["provenance"]}
        if tile_id == b.tile_id:
            assert (labels[inside(b.geometry)] == b.class_to).all()  # confirmed: the class after
        if tile_id == c.tile_id:
            assert (labels[inside(c.geometry)] == c.class_from).all()  # rejected: the class before
        if tile_id == d.tile_id:
            assert d.change_id not in by_change  # not sure: nothing
        if tile_id == a.tile_id:  # resolved correction: the corrected class, on the redrawn outline only
            assert (labels[inside(outline)] == other[0]).all()
            rest = inside(a.geometry) & ~inside(outline.buffer(0.0002))
            assert rest.any() and (labels[rest] == base_class).all()
            assert by_change[a.change_id]["reviewer"] == "ada" and by_change[a.change_id]["geometry_edited"]
        assert record.extra["reviews"]["changed_base_pixels"] == sum(
            p["changed_base_pixels"] for p in by_change.values()
        )
