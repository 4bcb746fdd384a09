"""The deployments on real parts: a Prefect server, `prefect deploy --all` and a process worker, all started here.

The module starts `prefect server start` on a free port with its own home and SQLite file,
creates the work pools with the CLI, deploys prefect.yaml from the repository root and starts
a worker on lcms-local, as docker/README.md tells users to. Runs are then triggered through
the API, as the UI or `prefect deployment run` would, and checked in the store they write.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from lcms.prefect_env import DEFAULTS as PREFECT_DEFAULTS

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
PREFECT = shutil.which("prefect", path=str(VENV_BIN)) or shutil.which("prefect")
SPEC = yaml.safe_load((REPO / "prefect.yaml").read_text())

pytestmark = pytest.mark.skipif(PREFECT is None, reason="the prefect CLI is not installed")

# The synthetic AOI: 5 km × 5 km in UTM 33N, 2 × 2 tiles of 2.5 km. Tile ids are the zone and the
# lower-left corner in tile sizes: 460000 / 2500 = 184, 5090000 / 2500 = 2036 (README's tile ids).
TILES = ["33N_0184_2036", "33N_0184_2037", "33N_0185_2036", "33N_0185_2037"]
SUBSET = ["33N_0184_2036", "33N_0185_2037"]
ECS_IMAGE = "123456789012.dkr.ecr.eu-central-1.amazonaws.com/lcms:test"
RUN_TIMEOUT = 300


def synthetic_config(store: Path, dates_per_year: int = 6, n_workers: int = 2, **changes) -> dict:
    """A small run config as JSON parameters: four 260-px tiles, one year, threads on this machine."""
    config = {
        "name": "server-test",
        "aoi": {"bbox": [460_000, 5_090_000, 465_000, 5_095_000], "bbox_crs": "EPSG:32633"},
        "years": [2023],
        "grid": {"tile_size_m": 2500, "resolution_m": 10, "buffer_m": 50},
        "store": {"url": str(store)},
        "cluster": {"kind": "local", "n_workers": n_workers, "threads_per_worker": 1},
        "download": {"source": {"kind": "synthetic", "seed": 7, "dates_per_year": dates_per_year}},
    }
    config.update(changes)
    return config


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_tree(pid: int) -> list:
    """The process and all its descendants (flow runs may start in sessions of their own)."""
    import psutil

    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def kill_tree(processes: list) -> None:
    import psutil

    for proc in processes:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(processes, timeout=10)


def stop(proc: subprocess.Popen, grace: float = 10) -> None:
    """SIGTERM the process group, once more if it lingers (a worker may need two), then SIGKILL."""
    if proc.poll() is not None:
        return
    for sig in (signal.SIGTERM, signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


@dataclass
class Stack:
    """The running server and worker, and how to reach them."""

    api_url: str
    env: dict
    tmp: Path
    server: subprocess.Popen
    worker: subprocess.Popen | None = None
    workers_started: int = 0

    def cli(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        return subprocess.run(
            [PREFECT, *args], cwd=REPO, env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )

    @property
    def worker_log(self) -> Path:
        return self.tmp / f"worker-{self.workers_started}.log"

    def start_worker(self) -> None:
        self.workers_started += 1
        env = {**self.env, "LCMS_REPO_DIR": str(REPO)}  # what the local deployments' pull step reads
        with self.worker_log.open("w") as log:
            self.worker = subprocess.Popen(
                [PREFECT, "worker", "start", "--pool", "lcms-local"],
                cwd=self.tmp,  # not the repository: the pull step must take the flow run there
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def kill_worker(self) -> None:
        """The worker's host dies: SIGKILL the worker and every process under it, flow runs included."""
        tree = process_tree(self.worker.pid)
        try:
            os.killpg(self.worker.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        kill_tree(tree)
        self.worker.wait(timeout=10)

    def stop_worker(self) -> None:
        if self.worker is None:
            return
        tree = process_tree(self.worker.pid)
        stop(self.worker)
        kill_tree(tree[1:])  # flow runs left behind by a failed test

    def describe(self, flow_run) -> str:
        return f"flow run {flow_run.name}: {flow_run.state!r}\nworker log:\n{tail(self.worker_log)}"


def start_server(tmp: Path, settings: dict[str, str]) -> tuple[str, dict[str, str], subprocess.Popen]:
    """`prefect server start` on a free port of 127.0.0.1, with its own home and SQLite database under
    `tmp` and nothing of this machine's Prefect profile; returns the API URL, the environment for
    commands against it (`settings` on top of lcms's defaults; "{api_url}" in a value is the API URL),
    and the server process."""
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        {
            **PREFECT_DEFAULTS,
            "PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
            "PREFECT_HOME": str(tmp / "home"),
            "PREFECT_API_URL": api_url,
            "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{tmp / 'prefect.db'}",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_WORKER_QUERY_SECONDS": "1",  # default 10: runs start sooner
            **{name: value.format(api_url=api_url) for name, value in settings.items()},
        }
    )
    with (tmp / "server.log").open("w") as log:
        server = subprocess.Popen(
            [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            cwd=tmp,
            env={k: v for k, v in env.items() if k != "PREFECT_API_URL"},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return api_url, env, server


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    tmp = tmp_path_factory.mktemp("prefect-server")
    # Nothing of this machine's Prefect profile; the defaults every lcms command applies.
    api_url, env, server = start_server(
        tmp,
        {
            "PREFECT_SERVER_UI_ENABLED": "false",
            "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "5",  # default 60: scheduled runs appear sooner
            "LCMS_IMAGE": ECS_IMAGE,
        },
    )
    stack = Stack(api_url, env, tmp, server)
    try:
        wait_healthy(stack)
        # Both pools, as users create them; the ECS pool only holds deployments here (no worker).
        pools = [
            subprocess.Popen(
                [PREFECT, "work-pool", "create", name, "--type", kind],
                cwd=REPO,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for name, kind in (("lcms-local", "process"), ("lcms-ecs", "ecs"))
        ]
        for proc in pools:
            out, _ = proc.communicate(timeout=120)
            assert proc.returncode == 0, out
        stack.start_worker()
        deploy = stack.cli("--no-prompt", "deploy", "--all")
        assert deploy.returncode == 0, deploy.stdout[-3000:] + deploy.stderr[-3000:]
        with temporary_settings(updates={PREFECT_API_URL: api_url}):
            yield stack
    finally:
        stack.stop_worker()
        stop(server)


def wait_healthy(stack: Stack, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if stack.server.poll() is not None:
            pytest.fail(f"prefect server exited:\n{tail(stack.tmp / 'server.log')}")
        try:
            with urllib.request.urlopen(f"{stack.api_url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail(f"prefect server not healthy after {timeout} s:\n{tail(stack.tmp / 'server.log')}")


def api(coro_fn, *args, **kwargs):
    """Run one async client call against the stack's server."""
    from prefect.client.orchestration import get_client

    async def call():
        async with get_client() as client:
            return await coro_fn(client, *args, **kwargs)

    return asyncio.run(call())


def run(deployment: str, parameters: dict, timeout: float = RUN_TIMEOUT):
    """Trigger a deployment through the API and wait for the run's final state (timeout=0: don't wait)."""
    from prefect.deployments import run_deployment

    return run_deployment(deployment, parameters=parameters, timeout=timeout, poll_interval=1)


def wait(flow_run_id, timeout: float = RUN_TIMEOUT):
    """The flow run once it reached a final state."""
    deadline = time.monotonic() + timeout
    while not (flow_run := api(lambda client: client.read_flow_run(flow_run_id))).state.is_final():
        assert time.monotonic() < deadline, f"{flow_run.name} still {flow_run.state!r} after {timeout} s"
        time.sleep(1)
    return flow_run


def tile_table(flow_run_id, key: str) -> list[dict]:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    async def read(client):
        return await client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]), key=ArtifactFilterKey(any_=[key])
            )
        )

    artifacts = api(read)
    assert len(artifacts) == 1, artifacts
    assert artifacts[0].type == "table"
    return json.loads(artifacts[0].data) if isinstance(artifacts[0].data, str) else artifacts[0].data


def done_marks(store: Path, stage: str, year: int = 2023) -> dict[str, dict]:
    """Tile id → its done.json, read from the folder itself (the store's layout in README.md)."""
    return {p.parent.name: json.loads(p.read_text()) for p in sorted((store / stage / str(year)).glob("*/done.json"))}


# --------------------------------------------------------------------------- deploy


def test_every_deployment_is_on_the_server_with_its_typed_form_pool_and_pull_steps(stack):
    async def read_all(client):
        return await client.read_deployments(), {p.name: p for p in await client.read_work_pools()}

    deployments, pools = api(read_all)
    by_name = {d.name: d for d in deployments}
    assert set(by_name) == {d["name"] for d in SPEC["deployments"]}
    assert pools["lcms-local"].type == "process" and pools["lcms-ecs"].type == "ecs"
    for spec in SPEC["deployments"]:
        deployment = by_name[spec["name"]]
        assert deployment.entrypoint == spec["entrypoint"]
        assert deployment.work_pool_name == spec["work_pool"]["name"]
        assert deployment.enforce_parameter_schema  # the server rejects parameters that break the form
        schema = deployment.parameter_openapi_schema
        assert schema["required"] == ["config"]
        run_config = schema["definitions"]["RunConfig"]
        assert {"aoi", "years", "grid", "store", "cluster", "download"} <= set(run_config["properties"])
        assert {"GridConfig", "StoreConfig", "TileSubset"} <= set(schema["definitions"])
        assert deployment.parameters["overwrite"] is False
        directory = deployment.pull_steps[0]["prefect.deployments.steps.set_working_directory"]["directory"]
        if deployment.work_pool_name == "lcms-ecs":
            # The image named at deploy time, the code at the image's WORKDIR.
            assert deployment.job_variables["image"] == ECS_IMAGE
            assert deployment.job_variables["cpu"] > 0 and deployment.job_variables["memory"] > 0
            assert directory == "/opt/lcms"
        else:
            assert directory == "{{ $LCMS_REPO_DIR }}"  # resolved by the worker when a run starts
    assert by_name["demo"].parameters["config"] == "examples/demo.yaml"  # relative to the worker's checkout
    assert {d.flow_id for d in deployments if d.name.startswith("country-run")} == {
        next(d.flow_id for d in deployments if d.name == "demo")
    }, "country-run, country-run-ecs and demo all run the lcms-run flow"


# --------------------------------------------------------------------------- runs


@pytest.fixture(scope="module")
def failing_runs(stack, tmp_path_factory) -> dict:
    """Runs expected to fail, triggered together so that they overlap with the other runs' work."""
    tmp = tmp_path_factory.mktemp("failing-runs")
    bad_years = {"config": synthetic_config(tmp / "bad-years", years=[1999])}
    no_download = {"config": synthetic_config(tmp / "no-download"), "subset": {"tile_ids": SUBSET}}
    return {
        "bad-years": (run("download/download", bad_years, timeout=0).id, tmp / "bad-years"),
        "no-download": (run("features/features", no_download, timeout=0).id, tmp / "no-download"),
    }


def test_download_then_features_on_a_subset_of_tiles(stack, failing_runs, tmp_path):
    store = tmp_path / "store"
    parameters = {"config": synthetic_config(store), "subset": {"tile_ids": SUBSET}}

    download = run("download/download", parameters)
    assert download.state.is_completed(), stack.describe(download)
    assert set(done_marks(store, "download")) == set(SUBSET)

    features = run("features/features", parameters)
    assert features.state.is_completed(), stack.describe(features)
    assert set(done_marks(store, "features")) == set(SUBSET)

    from lcms.store import TileStore

    tile_store = TileStore(str(store))
    assert set(tile_store.done_tiles("features", 2023)) == set(SUBSET)
    assert not set(tile_store.done_tiles("download", 2023)) & (set(TILES) - set(SUBSET))
    ds = tile_store.open_dataset("features", 2023, SUBSET[0])
    assert ds.features.sizes["time"] == 23  # the default date grid: every 16 days

    for flow_run, stage in ((download, "download"), (features, "features")):
        table = tile_table(flow_run.id, f"{stage}-tiles")
        assert sorted(row["tile_id"] for row in table) == sorted(SUBSET)
        assert {row["status"] for row in table} == {"done"}


def test_the_yearly_schedule_creates_the_next_run_on_1_january_at_03_utc(stack):
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId, DeploymentFilterName

    async def country_run(client):
        by_name = DeploymentFilter(name=DeploymentFilterName(any_=["country-run"]))
        (deployment,) = await client.read_deployments(deployment_filter=by_name)
        of_it = DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id]))
        return deployment, await client.read_flow_runs(deployment_filter=of_it)

    # Active as deployed: the country's named config and the last full year need no pasted config.
    deployment, runs = api(country_run)
    (schedule,) = deployment.schedules
    assert (schedule.schedule.cron, schedule.schedule.timezone, schedule.active) == ("0 3 1 1 *", "UTC", True)
    deadline = time.monotonic() + 60
    while not runs and time.monotonic() < deadline:
        time.sleep(1)
        _, runs = api(country_run)
    assert runs, "the scheduler created no run within 60 s of the deployment"
    assert len(runs) == 1  # one a year: the scheduler looks 100 days ahead, and always makes the next run

    now = dt.datetime.now(dt.UTC)
    expected = dt.datetime(now.year, 1, 1, 3, tzinfo=dt.UTC)
    if expected <= now:
        expected = expected.replace(year=now.year + 1)
    first = min(runs, key=lambda r: r.expected_start_time)
    assert first.state.is_scheduled()
    assert first.expected_start_time == expected
    assert first.parameters == {"overwrite": False, "show_progress": False, "config": "slovenia", "years": ["previous"]}

    # Pausing the schedule takes its scheduled runs away: nothing is left for a worker next January.
    api(lambda client: client.update_deployment_schedule(deployment.id, schedule.id, active=False))
    assert api(country_run)[1] == []


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"years": ["abc"]}, "config.years"),
        ({"grid": {"tile_size_m": -2500}}, "config.grid.tile_size_m"),
    ],
)
def test_parameters_that_break_the_form_are_rejected_by_the_server(stack, tmp_path, change, field):
    from prefect.exceptions import PrefectHTTPStatusError

    with pytest.raises(PrefectHTTPStatusError) as rejected:
        run("download/download", {"config": synthetic_config(tmp_path / "store", **change)}, timeout=0)
    assert rejected.value.response.status_code == 409
    assert field in rejected.value.response.json()["detail"]
    assert not (tmp_path / "store").exists()


def test_a_config_the_form_cannot_check_fails_the_run_naming_the_field(stack, failing_runs):
    # The schema says "integers"; only the config model knows that Sentinel-2 starts in 2015.
    flow_run_id, store = failing_runs["bad-years"]
    flow_run = wait(flow_run_id)
    assert flow_run.state.is_failed(), stack.describe(flow_run)
    assert "config.years" in flow_run.state.message and "2015" in flow_run.state.message
    assert not store.exists()


def test_a_stage_before_its_inputs_fails_naming_the_missing_stage_and_tiles(stack, failing_runs):
    flow_run_id, store = failing_runs["no-download"]
    flow_run = wait(flow_run_id)
    assert flow_run.state.is_failed(), stack.describe(flow_run)
    message = flow_run.state.message
    assert "StageInputError" in message and "download" in message
    assert all(f"{tile}/2023" in message for tile in SUBSET)
    assert not any(tile in message for tile in set(TILES) - set(SUBSET))
    assert done_marks(store, "features") == {}


def test_a_rerun_after_the_worker_died_mid_run_skips_the_finished_tiles(stack, tmp_path):
    store = tmp_path / "store"
    # One thread and more dates: tiles finish one by one, seconds apart.
    parameters = {"config": synthetic_config(store, dates_per_year=24, n_workers=1)}
    killed = run("download/download", parameters, timeout=0)

    deadline = time.monotonic() + RUN_TIMEOUT
    polls = 0
    while not done_marks(store, "download"):
        polls += 1
        if polls % 40 == 0:  # every 2 s: a run that ended or never started would keep us here
            flow_run = api(lambda client: client.read_flow_run(killed.id))
            assert not flow_run.state.is_final() and time.monotonic() < deadline, stack.describe(flow_run)
        time.sleep(0.05)
    stack.kill_worker()
    before = done_marks(store, "download")  # a tile may have finished during the kill
    mtimes = {t: (store / "download" / "2023" / t / "done.json").stat().st_mtime_ns for t in before}
    assert 1 <= len(before) < len(TILES), "every tile finished before the worker was killed: make tiles slower"

    # Nothing tells the server that the run's process is gone (no heartbeat automation here): the
    # run stays Running. Mark it Crashed, as an operator (or a zombie-detection automation) would.
    from prefect.states import Crashed

    state = api(lambda client: client.read_flow_run(killed.id)).state
    assert state.is_running(), state
    api(lambda client: client.set_flow_run_state(killed.id, Crashed(message="worker killed by the test"), force=True))

    stack.start_worker()
    rerun = run("download/download", parameters)
    assert rerun.state.is_completed(), stack.describe(rerun)
    table = {row["tile_id"]: row["status"] for row in tile_table(rerun.id, "download-tiles")}
    assert table == {t: "skipped" if t in before else "done" for t in TILES}
    after = done_marks(store, "download")
    assert set(after) == set(TILES)
    assert all(after[t] == before[t] for t in before)  # same attempt: not redone
    assert all((store / "download" / "2023" / t / "done.json").stat().st_mtime_ns == mtimes[t] for t in before)
