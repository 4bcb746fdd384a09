"""Config models: examples validate, bad configs fail before work starts and name the field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from lcms.cli import app
from lcms.config import ConfigError, RunConfig, load_config, params_hash, parse_config

REPO = Path(__file__).resolve().parents[1]
MINIMAL = {"name": "t", "aoi": {"bbox": [14.0, 46.0, 14.1, 46.1]}, "years": [2023]}


def write_config(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("name", ["demo.yaml", "slovenia.yaml"])
def test_example_configs_validate(name):
    cfg = load_config(REPO / "examples" / name)
    assert isinstance(cfg, RunConfig)
    assert Path(cfg.store.url).is_absolute()
    if cfg.aoi.path:
        assert Path(cfg.aoi.path).is_file()


def test_defaults_are_the_production_tiling():
    cfg = parse_config(MINIMAL)
    assert cfg.grid.tile_size_px == 1000 and cfg.grid.resolution_m == 10
    assert cfg.cluster.kind == "local" and cfg.download.source.kind == "synthetic"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"grid": {"tile_size": 5000}}, "grid.tile_size"),
        ({"colour": "red"}, "colour"),
        ({"download": {"source": {"kind": "synthetic", "sed": 1}}}, "download.source.sed"),
    ],
)
def test_unknown_fields_are_rejected_by_name(change, field):
    with pytest.raises(ConfigError) as err:
        parse_config({**MINIMAL, **change})
    assert f"{field}: unknown field" in str(err.value)


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"grid": {"tile_size_m": -5}}, "grid.tile_size_m", "greater than 0"),
        ({"grid": {"tile_size_m": 10005}}, "grid", "whole number"),
        ({"years": [2010]}, "years", "Sentinel-2"),
        ({"years": []}, "years", "at least 1"),
        ({"aoi": {"bbox": [14, 46, 13, 47]}}, "aoi.bbox", "minx < maxx"),
        ({"aoi": {"bbox": [14, 46, 15, 47], "path": "x.gpkg"}}, "aoi", "exactly one"),
        ({"aoi": {"bbox": [14, 46, 15, 47], "bbox_crs": "EPSG:999999"}}, "aoi.bbox_crs", "not a CRS"),
        ({"cluster": {"kind": "kubernetes"}}, "cluster", "kind"),
        ({"cluster": {"kind": "ec2", "adaptive_min": 3}}, "cluster", "adaptive_max"),
        ({"download": {"source": {"kind": "ftp"}}}, "download.source", "must be one of"),
        (
            {
                "download": {
                    "source": {"kind": "sentinelhub", "collection": "L2A"},
                    "cloud_mask": {"method": "s2cloudless"},
                }
            },
            "(top level)",
            "L2A has no B10",
        ),
        ({"download": {"source": {"kind": "files"}}}, "download.source.path", "required field"),
        (
            {"download": {"cloud_mask": {"analysis_resolution_m": 25}}},
            "(top level)",
            "whole multiple of grid.resolution_m",
        ),
        ({"download": {"cloud_mask": {"analysis_resolution_m": 60}}}, "(top level)", "divide analysis_resolution_m"),
        ({"store": {"url": "gs://bucket/x"}}, "store.url", "s3://"),
        ({"store": {"url": "s3://b/x", "storage_options": {"secret": "abc"}}}, "store.storage_options", "environment"),
        ({"download": {"source": {"cloud_cover": 1.5}}}, "download.source.cloud_cover", "less than or equal"),
    ],
)
def test_bad_values_name_the_field(change, field, words):
    with pytest.raises(ConfigError) as err:
        parse_config({**MINIMAL, **change})
    message = str(err.value)
    assert f"  - {field}" in message and words in message


def test_relative_paths_resolve_against_the_config_folder(tmp_path):
    (tmp_path / "sub").mkdir()
    path = write_config(tmp_path / "sub", {**MINIMAL, "store": {"url": "../out/store"}})
    cfg = load_config(path)
    assert cfg.store.url == str((tmp_path / "out" / "store").resolve())
    s3 = parse_config({**MINIMAL, "store": {"url": "s3://bucket/prefix"}}, base_dir=tmp_path)
    assert s3.store.url == "s3://bucket/prefix"


def test_unreadable_files_give_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)


def test_params_hash_is_stable_and_sensitive():
    a, b = parse_config(MINIMAL), parse_config(MINIMAL)
    assert params_hash(a.download) == params_hash(b.download)
    changed = parse_config({**MINIMAL, "download": {"source": {"seed": 7}}})
    assert params_hash(a.download) != params_hash(changed.download)


def test_cli_rejects_bad_config_before_touching_the_store(tmp_path):
    store = tmp_path / "store"
    path = write_config(tmp_path, {**MINIMAL, "store": {"url": str(store)}, "grid": {"tilesize": 1}})
    for command in ("grid", "download", "run", "validate"):
        result = CliRunner().invoke(app, [command, str(path)])
        assert result.exit_code == 2, result.output
        assert "grid.tilesize: unknown field" in result.output
    assert not store.exists()


def test_cli_help_lists_the_commands():
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("grid", "run", "download", "status", "validate"):
        assert command in result.output


@pytest.mark.parametrize("command", ["grid", "download", "run"])
def test_cli_bad_aoi_or_store_fails_clearly_and_writes_nothing(tmp_path, command):
    store = tmp_path / "store"
    empty = tmp_path / "empty.geojson"
    empty.write_text('{"type": "FeatureCollection", "features": []}')
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    cases = [
        ({"aoi": {"path": str(tmp_path / "missing.gpkg")}}, "does not exist"),
        ({"aoi": {"path": str(empty)}}, "holds no geometry"),
        ({"store": {"url": str(blocker / "store")}}, "cannot be written"),
    ]
    for change, words in cases:
        path = write_config(tmp_path, {**MINIMAL, "store": {"url": str(store)}, **change})
        result = CliRunner().invoke(app, [command, str(path)])
        assert result.exit_code == 1, result.output
        assert words in result.output
        assert not store.exists()
    assert blocker.read_text() == "x"


def test_cli_grid_repairs_a_self_intersecting_aoi_and_reports_zones(tmp_path):
    bowtie = {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "properties": {},
                "geometry": {
                    "type": "Polygon",
                    "coordinates": [[[14, 46], [14.2, 46.2], [14.2, 46], [14, 46.2], [14, 46]]],
                },
            }
        ],
    }
    aoi = tmp_path / "bowtie.geojson"
    aoi.write_text(json.dumps(bowtie))
    path = write_config(tmp_path, {**MINIMAL, "aoi": {"path": str(aoi)}, "store": {"url": str(tmp_path / "s")}})
    result = CliRunner().invoke(app, ["grid", str(path), "--output", str(tmp_path / "grid.gpkg")])
    assert result.exit_code == 0, result.output
    assert "33N" in result.output and (tmp_path / "grid.gpkg").is_file()
