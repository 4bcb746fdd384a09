"""Dask clusters chosen by config: a LocalCluster by default, EC2 when a country outgrows one machine, or a
scheduler that is already running (`dask scheduler` and `dask worker` processes elsewhere).

Whatever the kind, the tiles reach the workers through the scheduler's address only, and the workers share
nothing with the flow but the store (s3://...): each tile task opens the store itself from its config.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lcms.config import ClusterConfig, ConfigError, EC2ClusterConfig, LocalClusterConfig, SchedulerClusterConfig

log = logging.getLogger(__name__)

# Passed to EC2 workers so they reach the same store and Prefect API as the flow.
FORWARDED_ENV = ("AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL", "PREFECT_API_URL")
SCHEDULER_CONNECT_SECONDS = 20


class SchedulerUnreachable(ConfigError):
    """No Dask scheduler answered at the configured address."""


@dataclass(frozen=True)
class RunningScheduler:
    """A scheduler this process did not start, and so does not stop."""

    scheduler_address: str
    workers: int

    def close(self) -> None:
        pass


@contextlib.contextmanager
def dask_cluster(cfg: ClusterConfig, work_dir: str | Path) -> Iterator[object]:
    """Start the configured cluster (or join a running scheduler), yield it, and close it on exit."""
    if isinstance(cfg, LocalClusterConfig):
        cluster = _local_cluster(cfg, Path(work_dir))
    elif isinstance(cfg, SchedulerClusterConfig):
        cluster = running_scheduler(cfg.scheduler_address)
    else:
        cluster = _ec2_cluster(cfg)
    try:
        yield cluster
    finally:
        cluster.close()


def running_scheduler(address: str, timeout: float | None = None) -> RunningScheduler:
    """The scheduler at `address`, once it answers; SchedulerUnreachable naming it when it does not."""
    from distributed import Client

    timeout = SCHEDULER_CONNECT_SECONDS if timeout is None else timeout
    try:
        with Client(address, timeout=timeout, set_as_default=False) as client:
            workers = len(client.scheduler_info(n_workers=-1)["workers"])
    except (OSError, TimeoutError) as exc:
        raise SchedulerUnreachable(
            f"no Dask scheduler answered at {address} within {timeout:.0f} s ({type(exc).__name__}); start one "
            "(`dask scheduler`, then `dask worker ADDRESS`) or fix cluster.scheduler_address / --scheduler-address"
        ) from None
    if not workers:
        log.warning("the Dask scheduler at %s has no workers yet: tiles wait until one joins", address)
    log.info("Dask scheduler at %s with %d worker(s)", address, workers)
    return RunningScheduler(address, workers)


def _local_cluster(cfg: LocalClusterConfig, work_dir: Path):
    from distributed import LocalCluster

    work_dir.mkdir(parents=True, exist_ok=True)
    return LocalCluster(
        n_workers=cfg.n_workers,
        threads_per_worker=cfg.threads_per_worker,
        processes=cfg.processes,
        memory_limit=cfg.memory_limit,
        local_directory=str(work_dir),
        dashboard_address=":0",  # a free port: runs side by side never clash over 8787
    )


def ec2_cluster_kwargs(cfg: EC2ClusterConfig) -> dict[str, Any]:
    """The keyword arguments of dask_cloudprovider.aws.EC2Cluster for `cfg` (tests bind them to its signature)."""
    return {
        "region": cfg.region,
        "scheduler_instance_type": cfg.scheduler_instance_type,
        "worker_instance_type": cfg.instance_type,
        "n_workers": cfg.n_workers,
        "docker_image": cfg.docker_image,
        "ami": cfg.ami,
        "security_groups": cfg.security_groups or None,
        "subnet_id": cfg.subnet_id,
        "vpc": cfg.vpc,
        "use_private_ip": cfg.use_private_ip,
        "iam_instance_profile": {"Name": cfg.iam_instance_profile} if cfg.iam_instance_profile else None,
        "env_vars": {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ},
    }


def _ec2_cluster(cfg: EC2ClusterConfig):
    from dask_cloudprovider.aws import EC2Cluster

    cluster = EC2Cluster(**ec2_cluster_kwargs(cfg))
    if cfg.adaptive_min is not None:
        cluster.adapt(minimum=cfg.adaptive_min, maximum=cfg.adaptive_max)
    log.info("EC2 Dask cluster at %s", cluster.scheduler_address)
    return cluster
