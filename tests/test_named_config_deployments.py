"""README's Prefect sequence, literally, on a real server, worker, scheduler and UI: runs by config name.

The module follows README.md's "Orchestration" steps with the commands a person types:

    prefect server start
    lcms deploy                                  # the lcms-local pool, the named configs, the deployments
    LCMS_REPO_DIR=$PWD prefect worker start --pool lcms-local
    lcms configs add demo examples/demo.yaml     # here a copy of it whose store is a temporary folder

then triggers runs through the API with only `config: demo` and a subset, as the UI's form does,
fills that form in the UI itself with Playwright (Debian's Chromium), and lets the scheduler start
a yearly country run for the last full year. Server, worker and helpers come from
tests/test_deployment_server.py; this module's server also serves the UI.

Screenshots of the UI test go to $LCMS_TEST_ARTIFACTS/ui-screenshots (default: the system's temporary
folder's lcms-test-artifacts/ui-screenshots); the test prints the folder.
"""

from __future__ import annotations

import concurrent.futures
import contextvars
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from browsers import chromium_or_skip
from test_deployment_server import (
    PREFECT,
    REPO,
    RUN_TIMEOUT,
    SPEC,
    SUBSET,
    TILES,
    VENV_BIN,
    Stack,
    api,
    done_marks,
    run,
    start_server,
    stop,
    wait,
    wait_healthy,
)

LCMS = shutil.which("lcms", path=str(VENV_BIN)) or shutil.which("lcms")
UI_TILE = TILES[1]  # a tile the API runs leave alone
pytestmark = pytest.mark.skipif(PREFECT is None or LCMS is None, reason="the prefect and lcms commands are needed")


def lcms(stack: Stack, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [LCMS, *args], cwd=REPO, env=stack.env, capture_output=True, text=True, timeout=timeout, check=False
    )


def demo_copy(folder: Path) -> Path:
    """examples/demo.yaml with its store and reference in `folder` (the tests never write to the repository)."""
    data = yaml.safe_load((REPO / "examples" / "demo.yaml").read_text())
    data["store"]["url"] = str(folder / "store")
    data["reference"]["path"] = str(folder / "reference.gpkg")
    path = folder / "demo.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def readme(tmp_path_factory):
    """README's sequence: server (with its UI), `lcms deploy`, a worker, the demo config under its name."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    tmp = tmp_path_factory.mktemp("readme-stack")
    api_url, env, server = start_server(
        tmp,
        {
            "PREFECT_UI_API_URL": "{api_url}",  # the UI's API on this port (the default is port 4200)
            "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2",  # default 60: scheduled runs appear sooner
        },
    )
    stack = Stack(api_url, env, tmp, server)
    try:
        wait_healthy(stack)
        deployed = lcms(stack, "deploy", timeout=600)
        assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]
        stack.start_worker()
        added = lcms(stack, "configs", "add", "demo", str(demo_copy(tmp)))
        assert added.returncode == 0, added.stdout + added.stderr
        stack.deploy_output = deployed.stdout
        stack.store = tmp / "store"
        with temporary_settings(updates={PREFECT_API_URL: api_url}):
            yield stack
    finally:
        stack.stop_worker()
        stop(server)


def deployments_by_name() -> dict:
    async def read(client):
        return {d.name: d for d in await client.read_deployments()}

    return api(read)


def artifacts(flow_run_id) -> list:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    async def read(client):
        return await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )

    return api(read)


def off_loop(fn, *args):
    """Call `fn` in a thread of its own: Playwright's sync API keeps an event loop running in this one.

    With this thread's context, which holds the Prefect settings (the stack's API URL).
    """
    context = contextvars.copy_context()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(context.run, fn, *args).result()


def runs_of(deployment_id) -> list:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    of_it = DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
    return api(lambda client: client.read_flow_runs(deployment_filter=of_it))


def summary_of(flow_run_id, stage: str) -> str:
    (summary,) = [a for a in artifacts(flow_run_id) if a.key == f"{stage}-summary"]
    return summary.data


# --------------------------------------------------------------------------- deploy


def test_lcms_deploy_makes_the_pool_stores_the_configs_and_skips_ecs_with_a_note(readme):
    output = readme.deploy_output
    assert "work pool lcms-local: created (process)" in output
    assert "skipped country-run-ecs: no lcms-ecs work pool" in output and "infra/ecs_work_pool.py" in output
    by_name = deployments_by_name()
    expected = {d["name"] for d in SPEC["deployments"] if d["work_pool"]["name"] == "lcms-local"}
    assert set(by_name) == expected and len(expected) == len(SPEC["deployments"]) - 1
    pools = api(lambda client: client.read_work_pools())
    assert [p.name for p in pools] == ["lcms-local"]

    # Every flow takes the config as a name (or the whole typed config: a union in the form).
    for deployment in by_name.values():
        config = deployment.parameter_openapi_schema["properties"]["config"]
        assert config["anyOf"] == [{"type": "string"}, {"$ref": "#/definitions/RunConfig"}]
    country = by_name["country-run"]
    assert country.parameters["config"] == "slovenia" and country.parameters["years"] == ["previous"]
    (schedule,) = country.schedules
    assert schedule.active and schedule.schedule.cron == "0 3 1 1 *"

    listed = lcms(readme, "configs", "list")
    assert listed.returncode == 0 and "demo" in listed.stdout and "slovenia" in listed.stdout
    shown = lcms(readme, "configs", "show", "demo")
    assert shown.returncode == 0, shown.stderr
    assert f"url: {readme.store}" in shown.stdout and "/blocks/block/" in shown.stdout


# --------------------------------------------------------------------------- runs by name


def test_features_over_two_tiles_with_only_the_config_name_and_the_subset(readme):
    parameters = {"config": "demo", "subset": {"tile_ids": SUBSET}}
    # README's command line for the download, the API (as the UI's form) for the features.
    subset = json.dumps(parameters["subset"])
    download = readme.cli(
        *("deployment", "run", "download/download", "--param", "config=demo", "--param", f"subset={subset}"),
        "--watch",
        timeout=RUN_TIMEOUT,
    )
    assert download.returncode == 0, download.stdout[-3000:] + download.stderr[-3000:]
    assert "Completed * download · demo · 2023, 2024 · 2 tiles" in " ".join(download.stdout.split())
    features = run("features/features", parameters)
    assert features.state.is_completed(), readme.describe(features)

    # Only those tiles changed in the store: the other tiles have no output of either stage.
    for stage in ("download", "features"):
        for year in (2023, 2024):
            assert set(done_marks(readme.store, stage, year)) == set(SUBSET)
            assert {p.name for p in (readme.store / stage / str(year)).iterdir()} == set(SUBSET)
    assert features.name == "features · demo · 2023, 2024 · 2 tiles"

    summary = summary_of(features.id, "features")
    assert "[demo](http" in summary and "/blocks/block/" in summary  # the named config, linked
    assert "**features**: 4 done, 0 skipped, 0 failed of 4 tile-years." in summary

    # A rerun of the same tiles skips them, and says why.
    again = run("features/features", parameters)
    assert again.state.is_completed(), readme.describe(again)
    assert "0 done, 4 skipped" in again.state.message and "same parameters" in again.state.message
    assert "already done with the same inputs and parameters" in summary_of(again.id, "features")


BAD_PARAMETERS = [
    ({"config": "slovenija"}, "no named config 'slovenija'"),
    ({"config": "demo", "overrides": {"features.min_valid_coverag": 0.5}}, "'features.min_valid_coverag'"),
    ({"config": "demo", "years": [2010]}, "years: [2010]"),
]


def test_a_bad_name_override_or_year_fails_at_once_naming_it(readme):
    start = time.monotonic()
    subset = {"tile_ids": [UI_TILE]}
    triggered = [(run("features/features", {**p, "subset": subset}, timeout=0), named) for p, named in BAD_PARAMETERS]
    for flow_run, named in triggered:
        flow_run = wait(flow_run.id, timeout=120)
        assert flow_run.state.is_failed(), readme.describe(flow_run)
        assert named in flow_run.state.message
    assert time.monotonic() - start < 60
    assert not (readme.store / "features" / "2023" / UI_TILE).exists()


# --------------------------------------------------------------------------- the UI


@pytest.fixture
def screenshots(capsys) -> Path:
    # Not in pytest's temporary folders: pytest deletes all but the last three sessions' (other runs too).
    folder = Path(os.environ.get("LCMS_TEST_ARTIFACTS") or Path(tempfile.gettempdir()) / "lcms-test-artifacts")
    folder = folder / "ui-screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    with capsys.disabled():
        print(f"\nUI screenshots: {folder}")
    return folder


def test_the_run_form_needs_only_the_config_name_and_a_tile(readme, screenshots):
    chromium = chromium_or_skip()
    from playwright.sync_api import TimeoutError as PlaywrightTimeoutError
    from playwright.sync_api import expect, sync_playwright

    deployment = deployments_by_name()["download"]
    ui = readme.api_url.removesuffix("/api")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        try:
            page.goto(f"{ui}/v2/deployments/deployment/{deployment.id}/run")
            page.get_by_text("Tile Ids (Optional)").wait_for(timeout=60_000)
            page.screenshot(path=screenshots / "1-run-form.png", full_page=True)

            # config: the `str` tab is the form's default; the name is all it needs.
            page.locator("textarea").first.fill("demo")
            # subset.tile_ids: switch the field from None to a list, add one item.
            page.get_by_role("tab", name="list").first.click()
            page.get_by_role("button", name="Add item").first.click()
            tile = page.get_by_role("textbox").last
            tile.fill(UI_TILE)
            tile.press("Tab")  # the form takes the value when the field loses focus
            expect(tile).to_have_value(UI_TILE)
            page.screenshot(path=screenshots / "2-run-form-filled.png", full_page=True)
            # The UI goes back to the deployment once the run is created. On a loaded machine a click can
            # land before the form is ready and do nothing; then it is clicked once more (a second run
            # of the same tile would only skip it). What counts is the run itself, found below.
            for attempt in (1, 2):
                page.get_by_role("button", name="Submit").click()
                try:
                    page.wait_for_url(re.compile(r"/deployments/deployment/[^/]+(\?.*)?$"), timeout=60_000)
                    break
                except PlaywrightTimeoutError:
                    page.screenshot(path=screenshots / f"3a-not-submitted-{attempt}.png", full_page=True)
            flow_run_id = None
            deadline = time.monotonic() + 120
            while flow_run_id is None:
                if time.monotonic() > deadline:
                    page.screenshot(path=screenshots / "3-submitted.png", full_page=True)
                    runs = [r.parameters for r in off_loop(runs_of, deployment.id)]
                    pytest.fail(f"the form created no run within 120 s; the deployment's runs: {runs}")
                time.sleep(1)
                flow_run_id = next(
                    (
                        r.id
                        for r in off_loop(runs_of, deployment.id)
                        if (r.parameters.get("subset") or {}).get("tile_ids") == [UI_TILE]
                    ),
                    None,
                )
            page.screenshot(path=screenshots / "3-submitted.png", full_page=True)
            flow_run = off_loop(wait, flow_run_id)
            assert flow_run.state.is_completed(), readme.describe(flow_run)
            page.goto(f"{ui}/v2/runs/flow-run/{flow_run_id}")
            expect(page.get_by_text("Completed").first).to_be_visible(timeout=30_000)
            expect(page.get_by_text("download · demo · 2023, 2024 · 1 tile").first).to_be_visible()
            page.screenshot(path=screenshots / "4-run-completed.png", full_page=True)
            page.get_by_role("tab", name="Artifacts").click()
            expect(page.get_by_text("download-summary").first).to_be_visible(timeout=30_000)
            page.screenshot(path=screenshots / "5-run-artifacts.png", full_page=True)
            (summary,) = [a for a in off_loop(artifacts, flow_run_id) if a.key == "download-summary"]
            page.goto(f"{ui}/v2/artifacts/artifact/{summary.id}")
            expect(page.get_by_text("named config").first).to_be_visible(timeout=30_000)
            expect(page.get_by_role("link", name="demo").first).to_be_visible()
            page.screenshot(path=screenshots / "6-run-summary.png", full_page=True)
        finally:
            browser.close()

    assert flow_run.parameters["config"] == "demo", flow_run.parameters
    assert flow_run.parameters["subset"]["tile_ids"] == [UI_TILE], flow_run.parameters
    assert set(done_marks(readme.store, "download", 2023)) == {*SUBSET, UI_TILE}


# --------------------------------------------------------------------------- the yearly run


def test_the_scheduler_starts_the_yearly_country_run_for_the_last_full_year(readme):
    from prefect.client.schemas.actions import DeploymentScheduleCreate
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.client.schemas.schedules import IntervalSchedule

    from lcms.config import last_full_year

    country = deployments_by_name()["country-run"]
    # A copy of country-run on the demo config, its yearly schedule anchored a few seconds from now
    # rather than at 1 January; the years stay `previous`. The demo without its reference (and its
    # training year, 2023): the chain for that config is grid → download → features. Fewer dates
    # keep the test short.
    parameters = {
        **country.parameters,
        "config": "demo",
        "overrides": {"reference.path": None, "merge.years": None, "download.source.dates_per_year": 12},
    }
    start = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=8)

    async def create(client):
        return await client.create_deployment(
            flow_id=country.flow_id,
            name="country-run-soon",
            entrypoint=country.entrypoint,
            work_pool_name=country.work_pool_name,
            pull_steps=country.pull_steps,
            parameter_openapi_schema=country.parameter_openapi_schema,
            enforce_parameter_schema=True,
            parameters=parameters,
            schedules=[
                DeploymentScheduleCreate(
                    schedule=IntervalSchedule(interval=dt.timedelta(days=365), anchor_date=start), active=True
                )
            ],
        )

    deployment_id = api(create)
    of_it = DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
    deadline = time.monotonic() + 60
    while not (runs := api(lambda client: client.read_flow_runs(deployment_filter=of_it))):
        assert time.monotonic() < deadline, "the scheduler created no run within 60 s"
        time.sleep(1)
    (scheduled,) = runs  # the next one is a year later
    assert scheduled.auto_scheduled and scheduled.parameters["years"] == ["previous"]

    flow_run = wait(scheduled.id, timeout=RUN_TIMEOUT)
    assert flow_run.state.is_completed(), readme.describe(flow_run)
    year = last_full_year()
    assert flow_run.name == f"run · demo · {year} · all tiles"
    for stage in ("download", "features"):
        assert set(done_marks(readme.store, stage, year)) == set(TILES)
    summary = summary_of(flow_run.id, "run")
    assert f"| years | {year} (this run's `years`) |" in summary
    assert "**reference**: the config has no reference.path" in summary
    assert "not run: reference" in flow_run.state.message
