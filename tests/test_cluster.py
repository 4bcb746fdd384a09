"""lcms/cluster.py: a running scheduler named by the config (`cluster.kind: scheduler`) or by
`--scheduler-address` is joined, not started or stopped; a wrong or silent address is one clear error.

The EC2 cluster is checked against dask-cloudprovider's real EC2Cluster and the infra/ stack in
tests/test_ec2_cluster.py; Dask CLI processes run stages in tests/test_dask_cli_cluster.py.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lcms import cluster as cluster_module
from lcms.cli import app
from lcms.cluster import RunningScheduler, SchedulerUnreachable, dask_cluster
from lcms.config import ConfigError, SchedulerClusterConfig, parse_config

REPO = Path(__file__).resolve().parents[1]


def _config(cluster: dict):
    return parse_config({"name": "x", "aoi": {"bbox": [14, 46, 14.1, 46.1]}, "years": [2023], "cluster": cluster})


def test_a_running_scheduler_is_joined_and_left_running(tmp_path):
    from distributed import Client, LocalCluster

    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=False, protocol="tcp", host="127.0.0.1", dashboard_address=":0"
    ) as running:
        cfg = _config({"kind": "scheduler", "scheduler_address": running.scheduler_address})
        with dask_cluster(cfg.cluster, tmp_path) as joined:
            assert isinstance(joined, RunningScheduler)
            assert joined.scheduler_address == running.scheduler_address and joined.workers == 2
        # Leaving the block closed nothing: the scheduler still computes.
        with Client(running.scheduler_address, set_as_default=False) as client:
            assert client.submit(sum, [1, 2, 3]).result() == 6


def test_a_silent_address_is_one_clear_error(monkeypatch, tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens once the socket is closed
    monkeypatch.setattr(cluster_module, "SCHEDULER_CONNECT_SECONDS", 1)
    cfg = SchedulerClusterConfig(kind="scheduler", scheduler_address=f"tcp://127.0.0.1:{port}")
    with pytest.raises(SchedulerUnreachable) as caught, dask_cluster(cfg, tmp_path):
        pass
    message = str(caught.value)
    assert f"tcp://127.0.0.1:{port}" in message and "dask scheduler" in message and "\n" not in message
    assert isinstance(caught.value, ConfigError)  # the CLI prints it as one line, no traceback


@pytest.mark.parametrize("address", ["127.0.0.1:8786", "tcp://10.0.1.5", "http://10.0.1.5:8786", "tcp://:8786"])
def test_a_malformed_address_names_the_field(address):
    with pytest.raises(ConfigError, match=r"cluster\.scheduler_address: .*PROTOCOL://HOST:PORT"):
        _config({"kind": "scheduler", "scheduler_address": address})


def test_the_cli_option_rejects_a_malformed_address_before_any_work(tmp_path):
    config = REPO / "examples" / "demo.yaml"
    result = CliRunner().invoke(app, ["download", str(config), "--scheduler-address", "10.0.1.5:8786"])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "--scheduler-address '10.0.1.5:8786'" in lines[0] and "PROTOCOL://HOST:PORT" in lines[0]
    # The same through the environment (LCMS_SCHEDULER_ADDRESS), as a worker-side script would set it.
    result = CliRunner().invoke(app, ["download", str(config)], env={"LCMS_SCHEDULER_ADDRESS": "nonsense"})
    assert result.exit_code == 2 and "--scheduler-address 'nonsense'" in result.output


def test_worker_processes_start_with_lcms_malloc_settings(tmp_path, monkeypatch):
    """A LocalCluster of processes gives its workers WORKER_ENVIRON (one malloc arena, no trim threshold) in
    place of Dask's default, and leaves Dask's config as it was."""
    import os

    import dask.config
    from distributed import Client

    from lcms.config import LocalClusterConfig

    # A nanny sets them in this process too (before it spawns): unset now, and as they were after the test.
    for name in ("MALLOC_TRIM_THRESHOLD_", "MALLOC_ARENA_MAX"):
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    before = dask.config.get("distributed.nanny.pre-spawn-environ")
    cfg = LocalClusterConfig(n_workers=1, processes=True)
    with dask_cluster(cfg, tmp_path) as cluster, Client(cluster, set_as_default=False) as client:
        seen = client.run(lambda: [os.environ.get(k) for k in ("MALLOC_ARENA_MAX", "MALLOC_TRIM_THRESHOLD_")])
    assert list(seen.values()) == [["1", None]]
    assert dask.config.get("distributed.nanny.pre-spawn-environ") == before
    assert before.get("MALLOC_TRIM_THRESHOLD_") is not None  # what the worker would have had without LCMS's
