"""`cluster.kind: ec2` against dask-cloudprovider's real EC2Cluster and the stack infra/ creates.

- The keyword arguments lcms/cluster.py builds are bound to the real signatures: EC2Cluster's `__init__`,
  and, for what lands in its `**kwargs`, each `__init__` up the MRO that it passes them on to (VMCluster,
  SpecCluster, which takes no more): a misspelt keyword fails.
- infra/lcms-stack.yaml deployed to moto, a run config filled from its outputs as infra/README.md says, and
  the real EC2Cluster's scheduler and worker launched into moto's EC2 by dask-cloudprovider's own
  `create_vm` (no AWS is reachable here, and nothing answers on the instances, so the cluster is not awaited):
  each instance is in the stack's subnet with both Dask security groups, the Dask instance profile and no
  public address; its user data runs the configured image with the forwarded environment and no secret; the
  groups open the scheduler's port and dashboard to the workers, and every port between workers.
- The worker image (docker/Dockerfile) runs the command dask-cloudprovider gives it (no ENTRYPOINT) on the
  Python that pickles the flow's tasks.
"""

from __future__ import annotations

import ast
import asyncio
import base64
import copy
import inspect
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from test_infra import TEMPLATE_PATH, deploy

from lcms.cluster import FORWARDED_ENV, ec2_cluster_kwargs, worker_nanny_env
from lcms.config import EC2ClusterConfig, parse_config

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.filterwarnings("ignore:Tried to parse AWS..S3..BucketPolicy:UserWarning")


def bind_through_init_chain(cls: type, kwargs: dict) -> dict[str, type]:
    """Which class's `__init__` takes each keyword: bound with inspect.signature to `cls.__init__`, then what
    falls into its `**kwargs` to the next `__init__` in the MRO that it hands them to (its source must call
    `super().__init__(..., **kwargs)`), until one without `**kwargs` binds the rest. TypeError names a
    keyword no class takes."""
    taken: dict[str, type] = {}
    remaining = dict(kwargs)
    for klass in cls.__mro__:
        init = vars(klass).get("__init__")
        if init is None:
            continue
        signature = inspect.signature(init)
        signature.bind(None, **remaining)  # None for self; TypeError for a keyword this one cannot take
        named = {p.name for p in signature.parameters.values() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        for name in named & set(remaining):
            taken[name] = klass
            del remaining[name]
        passes_on = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
        if not passes_on or not remaining:
            break
        source = inspect.getsource(init)
        assert re.search(r"super\(\)\.__init__\([^)]*\*\*kwargs", source), f"{klass.__name__} drops its **kwargs"
    return taken


def _config(**cluster) -> EC2ClusterConfig:
    raw = {"name": "x", "aoi": {"bbox": [14, 46, 14.1, 46.1]}, "years": [2023], "cluster": {"kind": "ec2", **cluster}}
    return parse_config(raw).cluster


def test_ec2_kwargs_bind_to_the_real_ec2cluster_signatures(monkeypatch):
    from dask_cloudprovider.aws import EC2Cluster
    from dask_cloudprovider.generic.vmcluster import VMCluster

    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-central-1")
    cfg = _config(
        security_groups=["sg-scheduler", "sg-workers"],
        subnet_id="subnet-1",
        vpc="vpc-1",
        iam_instance_profile="lcms-dask-instance",
        docker_image="registry.example/lcms:0.1.0",
        ami="ami-0123456789abcdef0",
    )
    kwargs = ec2_cluster_kwargs(cfg)
    taken = bind_through_init_chain(EC2Cluster, kwargs)
    assert set(taken) == set(kwargs)
    assert taken["env_vars"] is VMCluster and taken["n_workers"] is VMCluster  # passed on through **kwargs
    assert taken["security_groups"] is EC2Cluster and taken["iam_instance_profile"] is EC2Cluster
    assert kwargs["iam_instance_profile"] == {"Name": "lcms-dask-instance"}  # the RunInstances shape
    assert kwargs["env_vars"]["AWS_DEFAULT_REGION"] == "eu-central-1"  # forwarded to the instances
    # and nothing else of this environment, but the worker processes' settings for the instances' nannies
    assert set(kwargs["env_vars"]) <= set(FORWARDED_ENV) | set(worker_nanny_env())
    nanny = ast.literal_eval(kwargs["env_vars"]["DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON"])
    assert nanny["MALLOC_ARENA_MAX"] == "1" and nanny["MALLOC_TRIM_THRESHOLD_"] is None

    # cluster.adaptive_min/max reach EC2Cluster.adapt (SpecCluster's) as named parameters, not its **kwargs.
    adapt = inspect.signature(EC2Cluster.adapt).bind(None, minimum=1, maximum=8).arguments
    assert adapt["minimum"] == 1 and adapt["maximum"] == 8 and "kwargs" not in adapt

    # The check can fail: a misspelt keyword, in EC2Cluster's own part or in what it passes on.
    for wrong in ("subnetid", "worker_env_vars"):
        with pytest.raises(TypeError, match=wrong):
            bind_through_init_chain(EC2Cluster, {**kwargs, wrong: 1})


@pytest.fixture(scope="module")
def stack(s3_endpoint) -> SimpleNamespace:
    """infra/lcms-stack.yaml deployed to moto in a VPC of two subnets (as tests/test_infra.py does)."""
    import uuid

    import boto3

    ec2 = boto3.client("ec2")
    vpc_id = ec2.create_vpc(CidrBlock="10.43.0.0/16")["Vpc"]["VpcId"]
    subnet_ids = [
        ec2.create_subnet(VpcId=vpc_id, CidrBlock=f"10.43.{i}.0/24", AvailabilityZone=f"us-east-1{zone}")["Subnet"][
            "SubnetId"
        ]
        for i, zone in ((1, "a"), (2, "b"))
    ]
    network = SimpleNamespace(vpc_id=vpc_id, subnet_ids=subnet_ids)
    outputs = deploy(boto3.client("cloudformation"), TEMPLATE_PATH.read_text(), network, f"lcms-{uuid.uuid4().hex[:8]}")
    return SimpleNamespace(outputs=outputs, ec2=ec2, iam=boto3.client("iam"))


def _ingress(ec2, group_id: str) -> list[tuple[int, int, set[str]]]:
    [group] = ec2.describe_security_groups(GroupIds=[group_id])["SecurityGroups"]
    return [
        (p["FromPort"], p["ToPort"], {g["GroupId"] for g in p["UserIdGroupPairs"]})
        for p in group["IpPermissions"]
        if p["IpProtocol"] == "tcp"
    ]


def _admits(rules, port: int, source: str) -> bool:
    return any(low <= port <= high and source in sources for low, high, sources in rules)


def test_ec2_cluster_launches_into_the_stack_s_network(stack):
    import dask.config
    from dask_cloudprovider.aws import EC2Cluster

    out = stack.outputs
    # The run config of infra/README.md ("A run config for AWS"), from the stack's outputs. An AMI of moto's:
    # without one dask-cloudprovider looks up Canonical's Ubuntu 20.04 images, which moto does not have.
    cfg = _config(
        region=out["Region"],
        subnet_id=out["SubnetIds"].split(",")[0],
        vpc=out["VpcId"],
        security_groups=[out["DaskSchedulerSecurityGroupId"], out["DaskWorkerSecurityGroupId"]],
        iam_instance_profile=out["DaskInstanceProfileName"],
        docker_image="registry.example/lcms:0.1.0",
        ami=stack.ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"],
        n_workers=1,
    )
    profile_arn = stack.iam.get_instance_profile(InstanceProfileName=out["DaskInstanceProfileName"])["InstanceProfile"][
        "Arn"
    ]

    def check_instances(instance_ids: list[str]) -> None:
        for instance_id, role in zip(instance_ids, ("scheduler", "worker"), strict=True):
            [reservation] = stack.ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
            [instance] = reservation["Instances"]
            [interface] = instance["NetworkInterfaces"]
            assert instance["SubnetId"] == cfg.subnet_id and instance["VpcId"] == out["VpcId"], role
            assert {g["GroupId"] for g in interface["Groups"]} == set(cfg.security_groups), role
            assert instance["IamInstanceProfile"]["Arn"] == profile_arn, role
            assert instance.get("PublicIpAddress") is None, role  # use_private_ip: the groups admit by group
            encoded = stack.ec2.describe_instance_attribute(InstanceId=instance_id, Attribute="userData")["UserData"]
            user_data = base64.b64decode(encoded["Value"]).decode()
            run = next(line for line in user_data.splitlines() if "docker run" in line)
            assert f" {cfg.docker_image} " in run, role
            assert '-e AWS_DEFAULT_REGION="us-east-1"' in run, role  # forwarded: the workers reach the same region
            assert "AWS_SECRET_ACCESS_KEY" not in user_data and "testing" not in user_data, role  # no secret
            module = "distributed.cli.dask_scheduler" if role == "scheduler" else "distributed.cli.dask_spec"
            assert f"python -m {module}" in run, role

    async def launch_and_check() -> int:
        cluster = EC2Cluster(asynchronous=True, **ec2_cluster_kwargs(cfg))  # not awaited: nothing would answer
        scheduler = cluster.scheduler_class(**cluster.scheduler_options)
        await scheduler.create_vm()
        try:
            address = f"{cluster.protocol}://{scheduler.instance['PrivateIpAddress']}:{scheduler.port}"
            worker = cluster.worker_class(address, **cluster.worker_options)
            await worker.create_vm()
            try:
                check_instances([scheduler.instance["InstanceId"], worker.instance["InstanceId"]])
            finally:
                await worker.destroy_vm()
        finally:
            await scheduler.destroy_vm()
        return scheduler.port

    saved = copy.deepcopy(dask.config.config)
    try:
        scheduler_port = asyncio.run(launch_and_check())
    finally:  # VMCluster sets TLS in dask's global config: leave none of it to later tests
        dask.config.config.clear()
        dask.config.config.update(saved)

    # The groups open what the instances use: the scheduler's port and the dashboard to the workers (and the
    # flow-run tasks, where the client runs); the workers' random ports to the scheduler and each other.
    scheduler_group, worker_group = out["DaskSchedulerSecurityGroupId"], out["DaskWorkerSecurityGroupId"]
    dashboard_port = int(str(dask.config.get("distributed.scheduler.dashboard.address", ":8787")).rsplit(":", 1)[1])
    on_scheduler = _ingress(stack.ec2, scheduler_group)
    for port in (scheduler_port, dashboard_port):
        assert _admits(on_scheduler, port, worker_group) and _admits(on_scheduler, port, out["FlowTaskSecurityGroupId"])
    on_workers = _ingress(stack.ec2, worker_group)
    for port in (1024, 40000, 65535):  # nanny, worker and transfer ports are chosen at random
        assert _admits(on_workers, port, scheduler_group) and _admits(on_workers, port, worker_group)


def test_worker_image_runs_dask_cloudprovider_s_command():
    """docker/Dockerfile: no ENTRYPOINT (the instance runs `IMAGE python -m distributed.cli...`), the same
    Python minor version as the flow (tasks travel pickled), dask and distributed from pyproject's pins, and
    the image name that the cluster config and the ECS work pool default to."""
    import importlib.util
    import tomllib

    dockerfile = (REPO / "docker" / "Dockerfile").read_text()
    instructions = [line.split()[0] for line in dockerfile.splitlines() if line and not line.startswith("#")]
    assert "ENTRYPOINT" not in instructions
    [base] = re.findall(r"^FROM python:(\d+)\.(\d+)", dockerfile, flags=re.M)
    assert tuple(map(int, base)) == sys.version_info[:2]
    assert "pip install --no-cache-dir --requirement /tmp/requirements.txt" in dockerfile  # pyproject's pins
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert any(d.startswith("distributed==") for d in dependencies)
    assert importlib.util.find_spec("distributed.cli.dask_spec") is not None  # the workers' module

    spec = importlib.util.spec_from_file_location("ecs_work_pool", REPO / "infra" / "ecs_work_pool.py")
    ecs_work_pool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ecs_work_pool)
    default_image = inspect.signature(ecs_work_pool.ecs_base_job_template).parameters["image"].default
    assert EC2ClusterConfig.model_fields["docker_image"].default == default_image
