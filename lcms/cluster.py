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

# Set in every worker process LCMS's clusters start, over Dask's `distributed.nanny.pre-spawn-environ` (None
# unsets one of Dask's). Measured with benchmarks/suite.py's store workers on a 500² px × 48-date tile
# (2026-12-01): Dask's MALLOC_TRIM_THRESHOLD_=65536 pins glibc's mmap threshold at 128 KiB, so every freed
# chunk buffer is unmapped and faulted in again, and the store's writes took twice as long (1.3 → 3.4 s);
# one malloc arena instead lets zarr's I/O threads reuse each other's freed buffers, at the same speed
# (peak RSS of a whole-tile read 781 → 713 MiB, of the writes 705 → 640 MiB).
WORKER_ENVIRON: dict[str, str | None] = {"MALLOC_TRIM_THRESHOLD_": None, "MALLOC_ARENA_MAX": "1"}


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


def worker_pre_spawn_environ() -> dict[str, str | None]:
    """Dask's `distributed.nanny.pre-spawn-environ` with WORKER_ENVIRON over it: what a nanny sets before it
    starts a worker process (these variables act at process start, so they cannot be set later)."""
    import dask.config
    import distributed  # noqa: F401 (registers distributed's config defaults)

    return {**dask.config.get("distributed.nanny.pre-spawn-environ"), **WORKER_ENVIRON}


def worker_environment() -> dict[str, str]:
    """The variables a worker process of LCMS's clusters starts with (for a process started without a nanny)."""
    return {k: str(v) for k, v in worker_pre_spawn_environ().items() if v is not None}


def worker_nanny_env() -> dict[str, str]:
    """The environment that makes `dask worker` (the command line, as on EC2) start its worker processes the
    same way: Dask reads `DASK_*` variables into its config (a Python literal here)."""
    return {"DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON": repr(worker_pre_spawn_environ())}


def _local_cluster(cfg: LocalClusterConfig, work_dir: Path):
    import dask.config
    from distributed import LocalCluster

    work_dir.mkdir(parents=True, exist_ok=True)
    # The nannies (worker processes only) read it as they are made, inside LocalCluster(...).
    with dask.config.set({"distributed.nanny.pre-spawn-environ": worker_pre_spawn_environ()}):
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
        "env_vars": {**{k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}, **worker_nanny_env()},
    }


def _ec2_cluster(cfg: EC2ClusterConfig):
    from dask_cloudprovider.aws import EC2Cluster

    cluster = EC2Cluster(**ec2_cluster_kwargs(cfg))
    if cfg.adaptive_min is not None:
        cluster.adapt(minimum=cfg.adaptive_min, maximum=cfg.adaptive_max)
    log.info("EC2 Dask cluster at %s", cluster.scheduler_address)
    return cluster
