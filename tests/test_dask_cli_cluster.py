"""Tile stages on a Dask cluster in the shape of production's: a `dask scheduler` process and two `dask worker`
processes started with Dask's own command line (benchmarks/cli_cluster.py), on 127.0.0.1 over TCP, sharing
nothing with the `lcms` command but the S3 store (moto's server) and the Prefect API, both named in their
environment as an EC2 worker's would be (lcms/cluster.py: FORWARDED_ENV).

- `lcms download --scheduler-address`, then `lcms features` with `cluster.kind: scheduler` in the config: the
  tiles run on the worker processes and land in S3, and a tile read back through TileStore equals the same
  tile made in this process.
- A worker SIGKILLed (with its nanny: its machine gone) once the first tile is done: the scheduler gives its
  tiles to the other worker, the stage completes, each tile has one done mark and one attempt, and every
  done tile reads back whole and equal to the tile made in this process.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import boto3
import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
LCMS = str(Path(sys.executable).parent / "lcms")
YEAR = 2023


def _load_cli_cluster():
    """benchmarks/ is scripts, not a package: load the module from its file (one helper for suite and tests)."""
    spec = importlib.util.spec_from_file_location("cli_cluster", REPO / "benchmarks" / "cli_cluster.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["cli_cluster"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


cli_cluster = _load_cli_cluster()


@pytest.fixture(scope="module")
def cluster_env(s3_endpoint, prefect_server, tmp_path_factory) -> dict[str, str]:
    """The environment of the Dask processes and the commands: the S3 endpoint and its (dummy) credentials and
    the Prefect API, as an EC2 instance gets them; nothing else of this process's LCMS or Prefect settings."""
    from prefect.settings import PREFECT_API_URL

    home = tmp_path_factory.mktemp("cli-cluster-home")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "LCMS_", "AWS_", "DASK_"))}
    env.update(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_EC2_METADATA_DISABLED="true",
        AWS_ENDPOINT_URL=s3_endpoint,
        PREFECT_API_URL=PREFECT_API_URL.value(),
        LCMS_HOME=str(home / "lcms"),
        PREFECT_HOME=str(home / "prefect"),
        PYTHONUNBUFFERED="1",
        COLUMNS="250",
    )
    return env


def _bucket(endpoint: str) -> str:
    name = f"lcms-cli-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=name)
    return name


def _config(folder: Path, store_url: str, width_km: int, cluster: dict | None = None) -> Path:
    """examples/demo.yaml scaled down: `width_km` × 2 tiles of 1 km, one year, 8 dates."""
    cfg = yaml.safe_load((REPO / "examples" / "demo.yaml").read_text())
    cfg["name"] = "cli-cluster"
    cfg["years"] = [YEAR]
    cfg["aoi"] = {"bbox": [460_000, 5_090_000, 460_000 + 1000 * width_km, 5_092_000], "bbox_crs": "EPSG:32633"}
    cfg["grid"]["tile_size_m"] = 1000
    cfg["store"] = {"url": store_url}
    cfg["cluster"] = cluster or {"kind": "local", "n_workers": 1}  # replaced by --scheduler-address
    cfg["download"]["source"]["dates_per_year"] = 8
    cfg["features"] = {"date_grid": {"step_days": 61}}
    cfg["reference"]["path"] = str(folder / "reference.gpkg")  # not read by download or features
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _lcms(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    handle = open(log, "wb")  # noqa: SIM115 - the child writes it; closed with the process
    proc = subprocess.Popen(
        [LCMS, *args], stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=log.parent, start_new_session=True
    )
    handle.close()
    return proc


def _finish(proc: subprocess.Popen, log: Path, timeout: float = 240) -> str:
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 9)
        proc.wait(10)
    output = log.read_text(errors="replace")
    assert proc.returncode == 0, output[-4000:]
    return output


def _s3_keys(endpoint: str, bucket: str, prefix: str) -> list[str]:
    pages = boto3.client("s3", endpoint_url=endpoint).get_paginator("list_objects_v2")
    return [o["Key"] for page in pages.paginate(Bucket=bucket, Prefix=prefix) for o in page.get("Contents", [])]


def _finished_tiles(worker_log: Path) -> list[str]:
    """The tile tasks a worker process finished, from Prefect's lines in its output."""
    text = worker_log.read_text(errors="replace") if worker_log.exists() else ""
    return re.findall(r"Task run '(\w+)/\d{4}' - Finished in state Completed", text)


def _made_here(cfg_path: Path, stages: list[str], folder: Path, tile_ids: list[str]):
    """The same tiles made by this process alone (no Dask), in a local store of its own: the independent run."""
    from lcms.config import load_config
    from lcms.stages import get_stage
    from lcms.store import TileStore

    cfg = load_config(cfg_path)
    grid = TileStore.from_config(cfg.store).read_grid()  # the grid the commands wrote to S3
    local = TileStore(str(folder / "local-store"))
    for stage_name in stages:
        stage = get_stage(stage_name)
        for tile_id in tile_ids:
            for key in stage.keys(cfg):
                assert stage.run_tile(local, grid[tile_id], key, stage.settings(cfg), False)["status"] == "done"
    return local


def _assert_same_tile(s3_store, local_store, stage: str, tile_id: str) -> None:
    remote, here = s3_store.open_tile(stage, YEAR, tile_id), local_store.open_tile(stage, YEAR, tile_id)
    assert set(remote.record.arrays) == set(here.record.arrays)
    for name in remote.record.arrays:
        a, b = remote.read(name), here.read(name)  # every chunk decoded: a truncated chunk fails here
        assert a.dtype == b.dtype and a.shape == b.shape, (stage, tile_id, name)
        np.testing.assert_array_equal(a, b, err_msg=f"{stage} {tile_id} {name}")


def test_stages_run_on_dask_cli_processes_and_tiles_land_in_s3(cluster_env, s3_endpoint, tmp_path):
    from distributed import Client

    from lcms.store import TileStore

    bucket = _bucket(s3_endpoint)
    with cli_cluster.cli_cluster(2, tmp_path / "dask", cluster_env) as cluster:
        # The config itself names the running scheduler (the other test gives it with --scheduler-address).
        by_config = {"kind": "scheduler", "scheduler_address": cluster.address, "n_workers": 2}
        cfg = _config(tmp_path / "cfg", f"s3://{bucket}/run", width_km=2, cluster=by_config)
        log = tmp_path / "cfg" / "run.log"
        output = _finish(_lcms(["run", str(cfg), "--stages", "download,features"], cluster_env, log), log)
        assert f"Dask scheduler at {cluster.address} with 2 worker(s)" in output
        for stage in ("download", "features"):
            assert f"{stage}: 4 done, 0 skipped, 0 failed of 4 tile-years" in output, output[-3000:]
        worker_tiles = [_finished_tiles(cluster.folder / f"worker-{i}.log") for i in range(2)]
        # The worker processes started with LCMS's malloc settings (lcms/cluster.py WORKER_ENVIRON), not Dask's.
        with Client(cluster.address, set_as_default=False) as client:
            malloc = client.run(lambda: [os.environ.get(k) for k in ("MALLOC_ARENA_MAX", "MALLOC_TRIM_THRESHOLD_")])
        assert list(malloc.values()) == [["1", None]] * 2, malloc

    store = TileStore(f"s3://{bucket}/run")
    tile_ids = sorted(store.read_grid().tile_ids)
    assert len(tile_ids) == 4
    # Both stages' tiles ran on the worker processes (4 + 4 tile tasks), and both workers had work.
    assert sorted(worker_tiles[0] + worker_tiles[1]) == sorted(tile_ids * 2)
    assert all(worker_tiles), worker_tiles
    done = {k for k in _s3_keys(s3_endpoint, bucket, "run/") if k.endswith("/done.json")}
    assert done == {f"run/{stage}/{YEAR}/{t}/done.json" for stage in ("download", "features") for t in tile_ids}
    for stage in ("download", "features"):
        for tile_id in tile_ids:
            record = store.done_record(stage, YEAR, tile_id)
            attempt_keys = _s3_keys(s3_endpoint, bucket, f"run/{stage}/{YEAR}/{tile_id}/{record.attempt}.zarr/")
            assert any(k.endswith("/zarr.json") for k in attempt_keys), (stage, tile_id)

    local = _made_here(cfg, ["download", "features"], tmp_path / "here", tile_ids[:1])
    for stage in ("download", "features"):
        _assert_same_tile(store, local, stage, tile_ids[0])


def test_a_killed_worker_s_tiles_finish_on_the_other(cluster_env, s3_endpoint, tmp_path):
    from distributed import Client

    from lcms.store import TileStore

    bucket = _bucket(s3_endpoint)
    cfg = _config(tmp_path / "kill", f"s3://{bucket}/run", width_km=3)  # 6 tiles
    with cli_cluster.cli_cluster(2, tmp_path / "dask", cluster_env) as cluster:
        log = tmp_path / "kill" / "download.log"
        command = _lcms(["download", str(cfg), "--scheduler-address", cluster.address], cluster_env, log)
        try:
            deadline = time.monotonic() + 180
            while not any(k.endswith("/done.json") for k in _s3_keys(s3_endpoint, bucket, "run/download/")):
                assert command.poll() is None, log.read_text(errors="replace")[-3000:]
                assert time.monotonic() < deadline, "no tile was done within 180 s"
                time.sleep(0.1)
            with Client(cluster.address, set_as_default=False) as client:
                processing = client.processing()
                names = {addr: w["name"] for addr, w in client.scheduler_info(n_workers=-1)["workers"].items()}
            # The worker with the most tiles in hand: those must be taken up by the other.
            busiest = max(processing, key=lambda addr: len(processing[addr]))
            in_hand = len(processing[busiest])
            killed = int(str(names[busiest]).rsplit("-", 1)[1])
            finished_before = _finished_tiles(cluster.folder / f"worker-{killed}.log")
            cluster.kill_worker(killed)
            done_at_kill = {
                k.split("/")[-2]: TileStore(f"s3://{bucket}/run").done_record("download", YEAR, k.split("/")[-2])
                for k in _s3_keys(s3_endpoint, bucket, "run/download/")
                if k.endswith("/done.json")
            }
            output = _finish(command, log)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(command.pid, 9)
        survivor_tiles = _finished_tiles(cluster.folder / f"worker-{1 - killed}.log")
        killed_tiles = _finished_tiles(cluster.folder / f"worker-{killed}.log")

    print(
        f"killed worker-{killed} with {in_hand} task(s) in hand, after it finished {finished_before}; "
        f"it finished {killed_tiles}, the survivor {survivor_tiles}"
    )
    assert in_hand >= 1, "the killed worker had no tile in hand: the kill proved nothing"
    store = TileStore(f"s3://{bucket}/run")
    tile_ids = sorted(store.read_grid().tile_ids)
    assert len(tile_ids) == 6
    summary = re.search(r"download: (\d+) done, (\d+) skipped, (\d+) failed of 6 tile-years", output)
    assert summary, output[-3000:]
    done, skipped, failed = map(int, summary.groups())
    assert failed == 0 and done + skipped == 6, output[-3000:]
    # Every tile finished on one worker or the other; what the killed one had in hand, on the survivor.
    assert set(finished_before) <= set(killed_tiles)
    assert set(killed_tiles) | set(survivor_tiles) == set(tile_ids)

    # Each tile made once: what was done at the kill is not made again (a recomputed task finds it done),
    # one done mark and one attempt in S3 per tile, no lease left; nothing marked done unwritten.
    assert done_at_kill and all(store.done_record("download", YEAR, t) == r for t, r in done_at_kill.items())
    keys = _s3_keys(s3_endpoint, bucket, "run/download/")
    for tile_id in tile_ids:
        record = store.done_record("download", YEAR, tile_id)
        assert record is not None, tile_id
        tile_keys = [k.split(f"/{tile_id}/", 1)[1] for k in keys if f"/{tile_id}/" in k]
        attempts = {k.split("/", 1)[0] for k in tile_keys if k.startswith("attempt-")}
        assert attempts == {f"{record.attempt}.zarr"}, (tile_id, attempts)
        assert "lease.json" not in tile_keys, tile_id
    local = _made_here(cfg, ["download"], tmp_path / "here", tile_ids)
    for tile_id in tile_ids:
        _assert_same_tile(store, local, "download", tile_id)
