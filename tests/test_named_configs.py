"""Named configs, config references, relative years and overrides: what a run's form resolves to.

Without a server for the resolution rules; with the Prefect test server for the named-config
registry, `lcms configs` and a stage flow run by name (its run name and summary artifact).
tests/test_named_config_deployments.py does the same through deployments, a worker and the UI.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from lcms.cli import app
from lcms.config import ConfigError, RunConfig, TileSubset, last_full_year, parse_config
from lcms.named_configs import (
    apply_overrides,
    check_override_path,
    reference_kind,
    resolve_config,
    resolve_subset,
    run_years,
)

NEW_YEAR = dt.date(2027, 1, 1)
MINIMAL = {"name": "t", "aoi": {"bbox": [460000, 5090000, 465000, 5095000], "bbox_crs": "EPSG:32633"}, "years": [2023]}


def small_config(folder: Path, **changes) -> Path:
    data = {
        "name": "small",
        "aoi": {"bbox": [460000, 5090000, 465000, 5095000], "bbox_crs": "EPSG:32633"},
        "years": [2023],
        "grid": {"tile_size_m": 2500, "resolution_m": 10, "buffer_m": 50},
        "store": {"url": "store"},  # relative: to the file's folder
        "cluster": {"kind": "local", "n_workers": 1, "threads_per_worker": 1},
        "download": {"source": {"kind": "synthetic", "seed": 7, "dates_per_year": 4}},
        **changes,
    }
    path = folder / "small.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


# --------------------------------------------------------------------------- relative years


@pytest.mark.parametrize(
    ("written", "years"),
    [
        ("previous", [2026]),
        (["previous"], [2026]),
        (["previous-1", "previous"], [2025, 2026]),
        ({"last": 3}, [2024, 2025, 2026]),
        ([2020, "previous"], [2020, 2026]),
        ([2024, 2023], [2023, 2024]),
    ],
)
def test_relative_years_resolve_to_plain_years_when_the_config_is_loaded(written, years):
    cfg = RunConfig.model_validate({**MINIMAL, "years": written}, context={"today": NEW_YEAR})
    assert cfg.years == years and all(type(y) is int for y in cfg.years)


def test_previous_is_the_last_full_year_in_utc():
    assert last_full_year(dt.date(2027, 1, 1)) == 2026
    assert last_full_year(dt.date(2026, 12, 31)) == 2025
    assert last_full_year() == dt.datetime.now(dt.UTC).year - 1


@pytest.mark.parametrize(
    ("written", "words"),
    [("soon", "'soon' is not a year"), ({"last": 0}, "{last: N}"), ({"next": 2}, "{last: N}"), ([2010], "2015")],
)
def test_bad_relative_years_are_named(written, words):
    with pytest.raises(ConfigError) as err:
        parse_config({**MINIMAL, "years": written})
    assert "years" in str(err.value) and words in str(err.value)


def test_a_runs_own_years_are_checked_like_the_configs():
    assert run_years(["previous"], NEW_YEAR) == [2026]
    assert run_years([2024, 2023]) == [2023, 2024]
    for bad, words in (([2010], "2015"), ([2023, 2023], "repeat"), ([], "give a list"), (["x"], "not a year")):
        with pytest.raises(ConfigError, match="years") as err:
            run_years(bad)
        assert words in str(err.value)


# --------------------------------------------------------------------------- references and overrides


@pytest.mark.parametrize(
    ("ref", "kind"),
    [
        ("slovenia", "named"),
        ("demo-2024", "named"),
        ("examples/demo.yaml", "file"),
        ("demo.yaml", "file"),
        ("/abs/x.yml", "file"),
        ("s3://bucket/configs/slovenia.yaml", "url"),
        ("https://example.org/c.yaml", "url"),
    ],
)
def test_a_reference_is_a_name_a_path_or_a_url(ref, kind):
    assert reference_kind(ref) == kind


def test_a_file_reference_resolves_paths_against_its_folder(tmp_path, monkeypatch):
    path = small_config(tmp_path)
    monkeypatch.chdir(tmp_path.parent)
    resolved = resolve_config(f"{tmp_path.name}/small.yaml")
    assert resolved.config.store.url == str(tmp_path / "store")
    assert resolved.source.kind == "file" and resolved.source.label == "small"
    assert resolved.source.link == path.resolve().as_uri()
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_config("nowhere/small.yaml")


def test_a_config_at_an_s3_url(s3_bucket, tmp_path):
    import fsspec

    url = f"{s3_bucket}/configs/small.yaml"
    data = yaml.safe_load(small_config(tmp_path, store={"url": f"{s3_bucket}/store"}).read_text())
    with fsspec.open(url, "w") as handle:
        handle.write(yaml.safe_dump(data))
    resolved = resolve_config(url)
    assert resolved.config.store.url == f"{s3_bucket}/store"
    assert (resolved.source.kind, resolved.source.label, resolved.source.link) == ("url", "small", url)
    with pytest.raises(ConfigError, match="configs/missing.yaml"):
        resolve_config(f"{s3_bucket}/configs/missing.yaml")


def test_overrides_set_single_fields_checked_against_the_model(tmp_path):
    path = str(small_config(tmp_path))
    resolved = resolve_config(
        path,
        overrides={
            "features.min_valid_coverage": 0.6,
            "cluster.n_workers": 3,
            "store.storage_options.anon": True,  # a free-form mapping: any key
            "download.source.dates_per_year": 8,  # inside a union (the synthetic source)
        },
    )
    cfg = resolved.config
    assert cfg.features.min_valid_coverage == 0.6 and cfg.cluster.n_workers == 3
    assert cfg.store.storage_options == {"anon": True} and cfg.download.source.dates_per_year == 8
    assert resolved.overrides["cluster.n_workers"] == 3
    # The postprocess steps are a list: items by index.
    steps = {"postprocess": {"steps": [{"kind": "majority", "size": 3}]}}
    assert apply_overrides(steps, {"postprocess.steps.0.size": 5})["postprocess"]["steps"][0]["size"] == 5


@pytest.mark.parametrize(
    ("path", "words"),
    [
        ("features.min_valid_coverag", "features has no 'min_valid_coverag'"),
        ("colour", "the config has no 'colour'"),
        ("download.source.sed", "download.source has no 'sed'"),
        ("years.first", "years has no 'first'"),
    ],
)
def test_an_override_of_a_field_that_does_not_exist_is_named(path, words):
    with pytest.raises(ConfigError) as err:
        check_override_path(path)
    assert f"overrides: {path!r} is not a field of the config" in str(err.value) and words in str(err.value)


def test_an_override_with_a_bad_value_names_the_field(tmp_path):
    with pytest.raises(ConfigError) as err:
        resolve_config(str(small_config(tmp_path)), overrides={"grid.tile_size_m": -5})
    assert "  - grid.tile_size_m:" in str(err.value) and "with grid.tile_size_m = -5" in str(err.value)


def test_a_typed_config_passes_through_and_a_mapping_is_validated_naming_config_fields(tmp_path):
    cfg = parse_config(MINIMAL)
    assert resolve_config(cfg).config is cfg  # the country run hands its stages the resolved config
    assert resolve_config(cfg, years=[2024]).config.years == [2024]
    assert resolve_config(dict(MINIMAL)).source.label == "t"
    with pytest.raises(ConfigError) as err:
        resolve_config({**MINIMAL, "years": [1999]})
    assert "config.years" in str(err.value) and "2015" in str(err.value)
    with pytest.raises(ConfigError, match="config must be a named config"):
        resolve_config(42)


def test_a_runs_years_replace_the_configs_and_are_checked_with_it(tmp_path):
    path = str(small_config(tmp_path, years=[2023, 2024], merge={"years": [2023]}))
    with pytest.raises(ConfigError) as err:
        resolve_config(path, years=["previous"], today=NEW_YEAR)
    assert "merge.years [2023] are not among the run's years [2026]" in str(err.value)
    assert "with years = [2026]" in str(err.value)
    resolved = resolve_config(path, years=["previous"], overrides={"merge.years": None}, today=NEW_YEAR)
    assert resolved.config.years == [2026] and resolved.years == [2026] and resolved.config.merge.years is None


def test_subsets_from_the_form():
    assert resolve_subset(None).is_all and resolve_subset({}).is_all
    assert resolve_subset({"tile_ids": ["a"]}) == TileSubset(tile_ids=["a"])
    with pytest.raises(ConfigError, match="subset.tile_id"):
        resolve_subset({"tile_id": ["a"]})


def test_run_names_say_stage_config_years_and_subset(tmp_path):
    from flows.parameters import Run, subset_label, years_label

    assert years_label([2024]) == "2024" and years_label([2023, 2024]) == "2023, 2024"
    assert years_label([2020, 2021, 2022]) == "2020–2022" and years_label([2019, 2024, 2025]) == "2019, 2024, 2025"
    assert subset_label(TileSubset()) == "all tiles"
    assert subset_label(TileSubset(tile_ids=["a", "b", "c"])) == "3 tiles"
    assert subset_label(TileSubset(tile_ids=["a"], aoi_path="/x/lakes.gpkg")) == "1 tile ∩ lakes.gpkg"
    resolved = resolve_config(str(small_config(tmp_path)), years=[2024])
    assert Run("features", resolved, TileSubset(tile_ids=["a", "b", "c"])).title == "features · small · 2024 · 3 tiles"


# --------------------------------------------------------------------------- the registry (Prefect test server)


def test_lcms_configs_add_list_show_and_the_cli_by_name(prefect_server, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    small_config(tmp_path)
    runner = CliRunner()
    added = runner.invoke(app, ["configs", "add", "small-test", "small.yaml"])
    assert added.exit_code == 0, added.output
    assert "copied from small.yaml" in added.output

    listed = runner.invoke(app, ["configs", "list"])
    assert listed.exit_code == 0 and "small-test" in listed.output
    shown = runner.invoke(app, ["configs", "show", "small-test"])
    assert shown.exit_code == 0 and "name: small" in shown.output and "relative to ." in shown.output

    # Every command takes a name where it takes a file.
    valid = runner.invoke(app, ["validate", "small-test"])
    assert valid.exit_code == 0, valid.output

    # Stored with its folder relative to where it was added: a run from there finds the same files.
    resolved = resolve_config("small-test")
    assert resolved.config.store.url == str(tmp_path / "store")
    assert resolved.source.kind == "named" and "/blocks/block/" in (resolved.source.link or "/blocks/block/")

    for args, words in (
        (["configs", "add", "Bad_Name", "small.yaml"], "not a valid config name"),
        (["configs", "add", "broken", "missing.yaml"], "does not exist"),
        (["configs", "show", "nosuch"], "no named config 'nosuch'"),
        (["validate", "nosuch"], "small-test"),  # the message lists the names there are
    ):
        failed = runner.invoke(app, args)
        assert failed.exit_code == 2 and words in failed.output, (args, failed.output)

    # A config that does not validate is not stored.
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({**MINIMAL, "grid": {"tile_size_m": -1}}))
    failed = runner.invoke(app, ["configs", "add", "bad", "bad.yaml"])
    assert failed.exit_code == 2 and "grid.tile_size_m" in failed.output
    assert "bad" not in runner.invoke(app, ["configs", "list"]).output.split()

    # --link keeps only the location: an edit of the file shows in the next run.
    assert runner.invoke(app, ["configs", "add", "small-linked", "small.yaml", "--link"]).exit_code == 0
    small_config(tmp_path, years=[2024])
    assert resolve_config("small-linked").config.years == [2024]
    assert resolve_config("small-test").config.years == [2023]  # the copy is as it was added


def test_a_stage_flow_by_config_name_names_its_run_and_summarises_it(prefect_server, tmp_path, monkeypatch):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    from flows.download import download_flow
    from lcms.named_configs import add_named_config

    monkeypatch.chdir(tmp_path)
    small_config(tmp_path)
    add_named_config("small-flow", "small.yaml")
    tile = "33N_0184_2036"
    state = download_flow(config="small-flow", subset={"tile_ids": [tile]}, years=[2024], return_state=True)
    assert state.is_completed() and state.result()["done"] == 1
    assert state.message.startswith("download · small-flow · 2024 · 1 tile: download: 1 done, 0 skipped")
    assert (tmp_path / "store" / "download" / "2024" / tile / "done.json").is_file()

    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(state.state_details.flow_run_id)
        of_run = ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run.id]))
        (summary,) = [a for a in client.read_artifacts(artifact_filter=of_run) if a.key == "download-summary"]
    assert flow_run.name == "download · small-flow · 2024 · 1 tile"
    assert "| years | 2024 (this run's `years`) |" in summary.data
    assert "`33N_0184_2036`" in summary.data and "Tiles outside the subset were not touched" in summary.data

    again = download_flow(config="small-flow", subset={"tile_ids": [tile]}, years=[2024], return_state=True)
    assert "0 done, 1 skipped" in again.message and "overwrite redoes them" in again.message
    with pytest.raises(ConfigError, match="'features.nope'"):
        download_flow(config="small-flow", overrides={"features.nope": 1})


def test_a_runs_summary_links_the_maps_stac_items_and_the_report_and_says_what_was_left_out(tmp_path):
    from flows.parameters import Run, not_run_reasons, output_links, summary_markdown
    from lcms.stages import stages_with_flows

    summaries = [
        {"stage": "features", "done": 2, "skipped": 2, "failed": 0, "tiles": 4},
        {
            "stage": "export",
            "status": "done",
            "message": "export: 1 maps",
            "maps": [{"map": "labels", "year": 2024, "zone": "33N", "url": "/s/maps/labels_2024_33N.tif"}],
        },
        {"stage": "report", "status": "done", "url": "s3://bucket/report/land-cover/3/report.html"},
    ]
    assert output_links(summaries) == [
        ("STAC item: labels 2024 33N", "file:///s/maps/labels_2024_33N.json"),
        ("COG: labels 2024 33N", "file:///s/maps/labels_2024_33N.tif"),
        ("report", "s3://bucket/report/land-cover/3/report.html"),
    ]
    resolved = resolve_config(str(small_config(tmp_path)))  # no reference: the model stages are left out
    not_run = not_run_reasons(stages_with_flows(), resolved.config)
    assert [name for name, _ in not_run][:2] == ["reference", "sampling"]
    text = summary_markdown(Run("run", resolved, TileSubset()), summaries, not_run)
    assert "**features**: 2 done, 2 skipped, 0 failed of 4 tile-years." in text
    assert "skipped 2: already done with the same inputs and parameters" in text
    assert "**reference**: the config has no reference.path" in text
    assert "[STAC item: labels 2024 33N](file:///s/maps/labels_2024_33N.json)" in text
