"""Dask clusters chosen by config: a LocalCluster by default, EC2 when a country outgrows one machine."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from lcms.config import ClusterConfig, EC2ClusterConfig, LocalClusterConfig

log = logging.getLogger(__name__)

# Passed to EC2 workers so they reach the same store and Prefect API as the flow.
FORWARDED_ENV = ("AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL", "PREFECT_API_URL")


@contextlib.contextmanager
def dask_cluster(cfg: ClusterConfig, work_dir: str | Path) -> Iterator[object]:
    """Start the configured cluster, yield it, and close it on exit."""
    if isinstance(cfg, LocalClusterConfig):
        cluster = _local_cluster(cfg, Path(work_dir))
    else:
        cluster = _ec2_cluster(cfg)
    try:
        yield cluster
    finally:
        cluster.close()


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


def _ec2_cluster(cfg: EC2ClusterConfig):
    from dask_cloudprovider.aws import EC2Cluster

    cluster = EC2Cluster(
        region=cfg.region,
        scheduler_instance_type=cfg.scheduler_instance_type,
        worker_instance_type=cfg.instance_type,
        n_workers=cfg.n_workers,
        docker_image=cfg.docker_image,
        ami=cfg.ami,
        security_groups=cfg.security_groups or None,
        subnet_id=cfg.subnet_id,
        vpc=cfg.vpc,
        use_private_ip=cfg.use_private_ip,
        iam_instance_profile={"Name": cfg.iam_instance_profile} if cfg.iam_instance_profile else None,
        env_vars={k: os.environ[k] for k in FORWARDED_ENV if k in os.environ},
    )
    if cfg.adaptive_min is not None:
        cluster.adapt(minimum=cfg.adaptive_min, maximum=cfg.adaptive_max)
    log.info("EC2 Dask cluster at %s", cluster.scheduler_address)
    return cluster
