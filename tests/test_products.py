"""Products in one store: two products side by side, model versions, maps that never mix versions.

Two configs share one store, one grid, one download and one features stage: `land-cover` (the LULC
legend) and `crop-types` (a three-class legend mapped from the same synthetic reference). Each
keeps its own reference, samples, model, predictions, maps and report.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import rasterio
import yaml
from typer.testing import CliRunner

from lcms.cli import app
from lcms.config import RunConfig, parse_config
from lcms.stages import STAGES
from lcms.store import TileStore
from tasks.prediction.versions import MixedModelVersionsError

CROP_LEGEND = [
    {"code": 1, "name": "arable", "color": "#e5c100"},
    {"code": 2, "name": "permanent vegetation", "color": "#2a7f2a"},
    {"code": 3, "name": "other", "color": "#8c8c8c"},
]
# LULC codes of the synthetic scene's reference → the crop legend.
CROP_MAPPING = {"1": 1, "2": 2, "3": 2, "4": 2, "5": 3, "6": 3, "7": 3, "8": 3, "9": 3, "10": 3}


def config(tmp_path: Path, product: str, **changes) -> RunConfig:
    data = {
        "name": "products-test",
        "product": product,
        # 2 × 2 tiles of 1 km (100 px + 5 px of buffer on each side).
        "aoi": {"bbox": [460_000, 5_090_000, 462_000, 5_092_000], "bbox_crs": "EPSG:32633"},
        "years": [2023],
        "grid": {"tile_size_m": 1000, "buffer_m": 50},
        "store": {"url": str(tmp_path / "store")},
        "download": {"source": {"seed": 11, "dates_per_year": 8, "cloud_cover": 0.2}},
        "features": {"bands": ["B04", "B08", "B11"], "indices": ["NDVI", "NDWI"]},
        "reference": {"path": str(tmp_path / "reference.gpkg")},
        "sampling": {"count": 1000},
        "merge": {"split": "blocks", "block_size_m": 250},
        "training": {"num_boost_round": 30},
    }
    if product == "crop-types":
        data["reference"] |= {"legend": CROP_LEGEND, "mapping": CROP_MAPPING}
    data.update(changes)
    return parse_config(data)


def product_files(store_root: Path, product: str) -> dict[str, str]:
    """Every file of one product's outputs (per-product stages and its maps), by path: sha256."""
    roots = [store_root / name / product for name, s in STAGES.items() if s.per_product]
    files = [p for root in roots if root.exists() for p in root.rglob("*") if p.is_file()]
    files += list((store_root / "maps").glob(f"{product}_*"))
    return {str(p.relative_to(store_root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


@pytest.fixture
def reference(tmp_path):
    from flows.common import load_grid
    from tasks.download.synthetic import SyntheticScene, area_reference_polygons

    cfg = config(tmp_path, "land-cover")
    grid = load_grid(cfg, TileStore.from_config(cfg.store))
    scene = SyntheticScene(**cfg.download.source.model_dump(exclude={"kind"}))
    area_reference_polygons(scene, [t.grid for t in grid], 2023, 0.7).to_file(cfg.reference.path, driver="GPKG")
    return tmp_path


@pytest.mark.usefixtures("prefect_server")
def test_two_products_in_one_store_never_touch_each_other(reference):
    from flows.run import run_flow

    tmp_path = reference
    land, crops = config(tmp_path, "land-cover"), config(tmp_path, "crop-types")
    run_flow(land)
    crop_summaries = {s["stage"]: s for s in run_flow(crops)}
    # Download and features are shared: the second product reuses them.
    assert crop_summaries["download"]["skipped"] == 4 and crop_summaries["features"]["skipped"] == 4

    root = Path(land.store.url)
    for product, legend_size in (("land-cover", None), ("crop-types", 3)):
        with rasterio.open(root / "maps" / f"{product}_2023_33N_labels.tif") as src:
            labels = src.read(1)
            assert src.tags()["lcms_model"] == product
        present = set(np.unique(labels)) - {0}
        assert present, product
        if legend_size:
            assert present <= {1, 2, 3}
    # The two models learnt different legends from the same pixels.
    lc_store, crop_store = (
        TileStore.from_config(land.store, "land-cover"),
        TileStore.from_config(crops.store, "crop-types"),
    )
    tile = lc_store.read_grid().tile_ids[0]
    lc_labels = lc_store.open_tile("reference", 2023, tile).read("labels")
    crop_labels = crop_store.open_tile("reference", 2023, tile).read("labels")
    lookup = np.zeros(11, np.uint8)
    for source, code in CROP_MAPPING.items():
        lookup[int(source)] = code
    np.testing.assert_array_equal(crop_labels, lookup[lc_labels])

    # Rerunning one product from scratch leaves every byte of the other's outputs as it was.
    land_before = product_files(root, "land-cover")
    assert len(land_before) > 20
    run_flow(crops, overwrite=True)
    assert product_files(root, "land-cover") == land_before
    crops_before = product_files(root, "crop-types")
    run_flow(land, overwrite=True)
    assert product_files(root, "crop-types") == crops_before


@pytest.mark.usefixtures("prefect_server")
def test_a_retrain_keeps_every_model_version_and_export_refuses_mixed_versions(reference):
    from flows.export import export_flow
    from flows.postprocess import postprocess_flow
    from flows.prediction import prediction_flow
    from flows.run import run_flow
    from flows.training import training_flow
    from lcms.config import TileSubset

    tmp_path = reference
    cfg = config(tmp_path, "land-cover")
    run_flow(cfg)
    store = TileStore.from_config(cfg.store, "land-cover")
    first = store.product_record("training", "land-cover").attempt
    check_lineage_and_rerun(cfg, store, tmp_path)

    retrained = config(tmp_path, "land-cover", training={"num_boost_round": 12})
    training_flow(retrained)
    second = store.product_record("training", "land-cover").attempt
    assert second != first
    # Training never deletes a model: both versions are kept, each with its own record.
    assert [v.attempt for v in store.versions("training", "land-cover")] == [first, second]
    listed = CliRunner().invoke(app, ["models", str(tmp_path / "land-cover.yaml")], env={"COLUMNS": "250"})
    assert listed.exit_code == 0, listed.output
    rows = [line for line in listed.output.splitlines() if "attempt-" in line]
    assert len(rows) == 2 and first in rows[0] and second in rows[1] and "*" in rows[1] and "*" not in rows[0]
    oa = store.product_record("training", "land-cover").extra["overall_accuracy"]
    assert f"{oa:.3f}" in rows[1]

    # Predictions made with the old model are stale: rerun on half the tiles only.
    tiles = store.read_grid().tile_ids
    half, rest = tiles[:2], tiles[2:]
    assert prediction_flow(retrained, TileSubset(tile_ids=half))["done"] == 2
    with pytest.raises(MixedModelVersionsError, match="postprocess .* / prediction"):
        export_flow(retrained)  # labels post-processed from the old predictions: stale
    assert postprocess_flow(retrained, TileSubset(tile_ids=half))["done"] == 2
    with pytest.raises(MixedModelVersionsError) as info:
        export_flow(retrained)
    message = str(info.value)
    assert first in message and second in message and all(t in message for t in tiles)

    # Asked to, export keeps the current version's tiles only and says which it left out.
    partial = export_flow(
        retrained.model_copy(update={"export": retrained.export.model_copy(update={"consistent_only": True})})
    )
    labels_map = next(m for m in partial["maps"] if m["map"] == "labels")
    assert labels_map["tiles"] == 2 and labels_map["left_out"] == sorted(rest)
    assert all(t in partial["message"] for t in rest)

    # After the full rerun, one consistent map with the new version on it.
    assert prediction_flow(retrained)["done"] == 2  # the other two are current already
    assert postprocess_flow(retrained)["done"] == 2
    result = export_flow(retrained)
    assert all(m["model_version"] == second and m["left_out"] == [] for m in result["maps"])
    with rasterio.open(Path(cfg.store.url) / "maps" / "land-cover_2023_33N_labels.tif") as src:
        assert src.tags()["lcms_model_version"] == second

    # An old version can be pinned to remake an old map, and the pin is recorded per tile.
    pinned = retrained.model_copy(
        update={"prediction": retrained.prediction.model_copy(update={"model_version": first})}
    )
    assert prediction_flow(pinned)["done"] == 4
    assert postprocess_flow(pinned)["done"] == 4
    assert {r.extra["model_version"] for r in store.done_tiles("prediction", 2023).values()} == {first}


def check_lineage_and_rerun(cfg: RunConfig, store: TileStore, tmp_path: Path) -> None:
    """Every output records its parameters, code and inputs; `lcms lineage` follows them back to the
    download, and `lcms rerun` makes an output again from them, identical."""
    path = tmp_path / "land-cover.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    tile = store.read_grid().tile_ids[0]

    prediction = store.done_record("prediction", 2023, tile)
    assert prediction.lineage["params"] == cfg.prediction.model_dump(mode="json")
    assert prediction.lineage["code"]["revision"] and prediction.lineage["code"]["lcms_version"]
    read = {(e["stage"], e["attempt"]) for e in prediction.lineage["inputs"]}
    assert read == {
        ("features", store.done_record("features", 2023, tile).attempt),
        ("training", store.product_record("training", "land-cover").attempt),
    }
    training = store.product_record("training", "land-cover")
    assert training.lineage["params"] == cfg.training.model_dump(mode="json")
    assert [e["stage"] for e in training.lineage["inputs"]] == ["merge"]
    merge = store.product_record("merge", "land-cover")
    assert sorted(e["name"] for e in merge.lineage["inputs"]) == sorted(store.read_grid().tile_ids)
    with rasterio.open(Path(cfg.store.url) / "maps" / "land-cover_2023_33N_labels.tif") as src:
        assert len(src.tags()["lcms_lineage_id"]) == 16

    runner = CliRunner()
    shown = runner.invoke(app, ["lineage", str(path), "postprocess", "--tile", tile, "--year", "2023"])
    assert shown.exit_code == 0, shown.output
    chain = shown.output
    for stage in ("postprocess", "prediction", "features", "download", "training", "merge", "sampling", "reference"):
        assert f"{stage} " in chain, (stage, chain)
    assert chain.index("postprocess") < chain.index("prediction") < chain.index("download")

    before = store.done_record("features", 2023, tile)
    values = store.open_tile("features", 2023, tile).read("features")
    again = runner.invoke(app, ["rerun", str(path), "features", "--tile", tile, "--year", "2023"])
    assert again.exit_code == 0, again.output
    assert "every array equals the previous output" in again.output
    after = store.done_record("features", 2023, tile)
    assert after.attempt != before.attempt and after.lineage == before.lineage
    np.testing.assert_array_equal(store.open_tile("features", 2023, tile).read("features"), values)


def test_the_code_revision_is_baked_into_a_built_package(tmp_path):
    """What the docker image does: a non-editable build writes the revision it is given into the package."""
    import subprocess
    import sys
    import zipfile

    repo = Path(__file__).resolve().parents[1]
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            str(repo),
            "-w",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "LCMS_REVISION": "0123456789abcdef-test"},
        timeout=300,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = tmp_path.glob("lcms-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        assert archive.read("lcms/REVISION").decode().strip() == "0123456789abcdef-test"
