"""The stage declarations (lcms/stages.py): what derives from them, and adding a stage with one declaration.

The toy stage below is the whole of what a new stage needs: one `Stage(...)` and its tile
function (plus its staleness rule). The store, the flow factory, the country run's order and
`lcms status` pick it up from the declaration.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from lcms.config import RunConfig, params_hash, parse_config
from lcms.layout import ArraySpec
from lcms.stages import STAGES, Keying, Stage, get_stage, register, unregister
from lcms.store import LAYOUTS, StoreError, TileStore

REPO = Path(__file__).resolve().parents[1]
TOY = "ndvi-max"


# --------------------------------------------------------------------------- the toy stage's tile function


def ndvi_max_tile_hash(store: TileStore, tile, year: int, settings) -> str:
    features = store.require_done("features", year, tile.tile_id)
    return params_hash(tile.grid.to_attrs(), year, features.params_hash)


def ndvi_max_tile(store: TileStore, tile, year: int, settings):
    """The yearly maximum of NDVI per pixel, from the features stage's interpolated series."""
    from tasks.features.tile import unpack

    features = store.open_tile("features", year, tile.tile_id)
    index = list(features.coord("feature")).index("NDVI")
    ndvi = unpack(features.read("features", select={"feature": [index]}))[..., 0]  # (t, y, x)
    with np.errstate(all="ignore"):
        peak = np.nanmax(ndvi, axis=0).astype(np.float32)
    tile_hash = ndvi_max_tile_hash(store, tile, year, settings)
    with store.writer(TOY, year, tile.tile_id, tile.grid, tile_hash, {}) as writer:
        writer.write("ndvi_max", peak)
        return writer.commit()


TOY_STAGE = Stage(
    TOY,
    "Toy: the yearly NDVI maximum per pixel.",
    Keying.TILE_YEAR,
    reads=("features",),
    arrays=(ArraySpec("ndvi_max", ("y", "x"), "float32", float("nan"), "Yearly NDVI maximum", chunks={"y": 256}),),
    tile_function=f"{__name__}:ndvi_max_tile",
    tile_hash=f"{__name__}:ndvi_max_tile_hash",
    has_flow=False,  # not a module in flows/: the test makes its flow with the factory
)


@pytest.fixture
def toy_stage():
    stage = register(TOY_STAGE)
    yield stage
    unregister(TOY)


def small_run(tmp_path, step_days: int = 16) -> RunConfig:
    return parse_config(
        {
            "name": "stages-test",
            "aoi": {"bbox": [460_000, 5_090_000, 465_000, 5_092_500], "bbox_crs": "EPSG:32633"},
            "years": [2023],
            "grid": {"tile_size_m": 2500, "buffer_m": 50},
            "store": {"url": str(tmp_path / "store")},
            "download": {"source": {"seed": 3, "dates_per_year": 12}, "block_size": 256},
            "features": {"bands": [], "indices": ["NDVI"], "date_grid": {"step_days": step_days}},
        }
    )


@pytest.mark.usefixtures("prefect_server")
def test_a_new_stage_is_one_declaration_plus_its_tile_function(tmp_path, toy_stage):
    from flows.common import StageInputError, tile_stage_flow
    from flows.download import download_flow
    from flows.features import features_flow

    cfg = small_run(tmp_path)
    ndvi_max_flow = tile_stage_flow(toy_stage)
    # Its input is checked from the declaration's `reads`, before any work.
    with pytest.raises(StageInputError, match=r"reads the features stage's output, which is missing for 2"):
        ndvi_max_flow(cfg)
    download_flow(cfg)
    features_flow(cfg)

    result = ndvi_max_flow(cfg)
    assert (result["stage"], result["done"], result["tiles"]) == (TOY, 2, 2)
    store = TileStore.from_config(cfg.store)
    assert sorted(store.done_tiles(TOY, 2023)) == sorted(store.read_grid().tile_ids)
    for tile_id in store.read_grid().tile_ids:
        # Independently: xarray's decoding of the stored features, and its own max over time.
        ds = store.open_dataset("features", 2023, tile_id)
        expected = ds.features.sel(feature="NDVI").max("time").values.astype(np.float32)
        got = store.open_tile(TOY, 2023, tile_id).read("ndvi_max")
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
        assert store.open_dataset(TOY, 2023, tile_id).rio.crs is not None  # georeferenced like every stage

    # Reruns skip; features made with other settings make the toy stage stale, from its tile_hash.
    again = ndvi_max_flow(cfg)
    assert (again["done"], again["skipped"]) == (0, 2)
    changed = small_run(tmp_path, step_days=10)
    assert features_flow(changed)["done"] == 2
    assert ndvi_max_flow(changed)["done"] == 2


def test_the_store_takes_its_layouts_from_the_declarations(tmp_path, toy_stage):
    assert LAYOUTS[TOY] is not None and LAYOUTS[TOY].spec("ndvi_max").dtype == "float32"
    assert list(LAYOUTS) == [s.name for s in STAGES.values() if s.arrays]
    unregister(TOY)
    assert TOY not in LAYOUTS
    with pytest.raises(StoreError, match="unknown stage 'ndvi-max'"):
        TileStore(str(tmp_path)).writer(TOY, 2023, "T", None, "h", {})
    register(TOY_STAGE)


def test_declarations_are_checked_when_registered():
    with pytest.raises(ValueError, match="already declared"):
        register(get_stage("features"))
    with pytest.raises(ValueError, match="reads \\['nothing'\\]"):
        register(Stage("x", "x", Keying.AOI, reads=("nothing",)))
    with pytest.raises(ValueError, match="needs arrays, a tile_function and a tile_hash"):
        register(Stage("y", "y", Keying.TILE_YEAR, reads=("features",)))
    assert "x" not in STAGES and "y" not in STAGES


def test_every_declared_tile_function_and_hash_resolves_with_the_uniform_signature():
    import inspect

    from lcms.stages import _resolve

    for stage in STAGES.values():
        if not stage.is_tile_stage:
            continue
        for dotted in (stage.tile_function, stage.tile_hash):
            params = list(inspect.signature(_resolve(dotted)).parameters)
            assert len(params) >= 4, (dotted, params)  # (store, tile, key, settings, ...)


def test_prefect_yaml_has_a_deployment_per_stage_with_the_derived_entrypoint():
    deployments = {d["name"]: d for d in yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]}
    for stage in STAGES.values():
        if stage.has_flow:
            assert deployments[stage.name]["entrypoint"] == stage.flow_entrypoint
    stage_deployments = {n for n, d in deployments.items() if not d["entrypoint"].startswith("flows/run.py")}
    assert stage_deployments == {s.name for s in STAGES.values() if s.has_flow}


def test_the_cli_has_a_command_per_stage_in_pipeline_order():
    from lcms.cli import app

    result = CliRunner().invoke(app, ["--help"], terminal_width=200)
    listed = re.findall(r"│ ([a-z-]+)\s{2,}", result.output)
    stage_names = [s.name for s in STAGES.values() if s.has_flow]
    assert [n for n in listed if n in stage_names] == stage_names
    for stage in STAGES.values():
        if stage.has_flow:
            assert stage.title[:30] in result.output.replace("\n", " ") or stage.name in listed


def test_the_country_run_chains_the_declared_stages_in_order(tmp_path):
    from lcms.stages import stages_with_flows

    base = small_run(tmp_path)
    one_year = [s.name for s in stages_with_flows() if s.runs_when(base)]
    assert one_year == ["download", "features"]
    with_reference = base.model_copy(
        update={"reference": base.reference.model_copy(update={"path": str(tmp_path / "r.gpkg")})}
    )
    chain = "download features reference sampling merge training prediction postprocess export report".split()
    assert [s.name for s in stages_with_flows() if s.runs_when(with_reference)] == chain
    two_years = with_reference.model_copy(update={"years": [2023, 2024]})
    assert [s.name for s in stages_with_flows() if s.runs_when(two_years)][-2:] == ["change", "report"]


def test_tasks_import_no_prefect_and_modules_form_no_import_cycle():
    """tasks/ is plain functions: importing all of it loads no Prefect, and no two modules import each other."""
    modules = sorted(
        ".".join(p.relative_to(REPO).with_suffix("").parts)
        for p in (REPO / "tasks").rglob("*.py")
        if p.name != "__init__.py"
    )
    code = f"import sys; [__import__(m) for m in {modules!r}]; print('prefect' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"

    # Module-level and function-level imports between our own packages, as a graph.
    graph: dict[str, set[str]] = {}
    for package in ("lcms", "flows", "tasks"):
        for path in (REPO / package).rglob("*.py"):
            name = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
            imported = set()
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    imported.add(node.module)
                elif isinstance(node, ast.Import):
                    imported.update(a.name for a in node.names)
            graph[name] = {m for m in imported if m.split(".")[0] in ("lcms", "flows", "tasks") and m != name}
    cycles = [(a, b) for a, deps in graph.items() for b in deps if a in graph.get(b, set())]
    assert cycles == []
