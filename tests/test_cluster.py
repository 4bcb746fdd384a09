"""The cluster config reaches dask-cloudprovider's EC2Cluster as its own arguments (no AWS is reachable here)."""

from __future__ import annotations

import dask_cloudprovider.aws as aws

from lcms.cluster import dask_cluster
from lcms.config import parse_config


def test_ec2_settings_are_passed_to_ec2cluster(monkeypatch, tmp_path):
    seen = {}

    class RecordingEC2Cluster:
        """Records what EC2Cluster would be started with; it cannot launch instances from this machine."""

        scheduler_address = "tls://10.0.0.5:8786"

        def __init__(self, **kwargs):
            seen.update(kwargs)

        def adapt(self, minimum, maximum):
            seen["adapt"] = (minimum, maximum)

        def close(self):
            seen["closed"] = True

    monkeypatch.setattr(aws, "EC2Cluster", RecordingEC2Cluster)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-central-1")
    cfg = parse_config(
        {
            "name": "x",
            "aoi": {"bbox": [14, 46, 14.1, 46.1]},
            "years": [2023],
            "cluster": {
                "kind": "ec2",
                "security_groups": ["sg-scheduler", "sg-workers"],
                "subnet_id": "subnet-1",
                "vpc": "vpc-1",
                "iam_instance_profile": "lcms-dask",
                "adaptive_min": 1,
                "adaptive_max": 8,
                "docker_image": "registry.example/lcms:0.1.0",
            },
        }
    )
    with dask_cluster(cfg.cluster, tmp_path) as cluster:
        assert cluster.scheduler_address.endswith(":8786")
    assert seen["security_groups"] == ["sg-scheduler", "sg-workers"]
    assert seen["vpc"] == "vpc-1" and seen["subnet_id"] == "subnet-1" and seen["use_private_ip"] is True
    assert seen["iam_instance_profile"] == {"Name": "lcms-dask"}
    assert seen["docker_image"] == "registry.example/lcms:0.1.0"
    assert seen["env_vars"]["AWS_DEFAULT_REGION"] == "eu-central-1"  # workers reach the same region
    assert seen["adapt"] == (1, 8) and seen["closed"]
