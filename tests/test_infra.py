"""infra/: the CloudFormation stack (cfn-lint, a deployment to moto) and the lcms-ecs work pool template.

moto deploys the template but ignores some of it (see infra/README.md, "Testing"): AWS::S3::BucketPolicy,
the bucket's PublicAccessBlockConfiguration, OwnershipControls, VersioningConfiguration and
LifecycleConfiguration, the roles' ManagedPolicyArns and the ECS cluster's capacity providers. Those are
asserted on the template itself; everything else on what moto created.
"""

from __future__ import annotations

import ast
import asyncio
import importlib.util
import json
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parents[1]
TEMPLATE_PATH = REPO / "infra" / "lcms-stack.yaml"
DASHBOARD_CIDR = "203.0.113.0/24"  # TEST-NET-3: an operator's network

# Expected and documented: moto skips the bucket policy (asserted on the template instead).
# `.` stands for `:` in the message, which the filter syntax would split on.
pytestmark = pytest.mark.filterwarnings("ignore:Tried to parse AWS..S3..BucketPolicy:UserWarning")

EXPECTED_OUTPUTS = {
    "BucketName",
    "EcsClusterName",
    "EcsClusterArn",
    "FlowTaskRoleArn",
    "TaskExecutionRoleArn",
    "DaskInstanceProfileName",
    "DaskSchedulerSecurityGroupId",
    "DaskWorkerSecurityGroupId",
    "FlowTaskSecurityGroupId",
    "LogGroupName",
}

# --------------------------------------------------------------------------- the policy-widening check

# AWS grants these only on Resource "*" (no resource-level permissions); any other action on "*" is a widening.
ACTIONS_ONLY_GRANTED_ON_STAR = frozenset(
    {
        "ec2:DescribeInstances",
        "ec2:DescribeImages",
        "ec2:DescribeVpcs",
        "ec2:DescribeSubnets",
        "ec2:DescribeSecurityGroups",
        "ecs:RegisterTaskDefinition",
        "ecs:DeregisterTaskDefinition",
        "ecs:DescribeTaskDefinition",
    }
)
BUCKET_ACTIONS = frozenset({"s3:ListBucket"})
OBJECT_ACTIONS = frozenset({"s3:GetObject", "s3:PutObject", "s3:DeleteObject"})


def _as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def policy_problems(document: dict, bucket_arn: str, passable_role_arns: set[str] = frozenset()) -> list[str]:
    """What in an IAM policy grants more than LCMS's least privilege; empty when nothing does.

    S3 actions only ListBucket on the bucket and Get/Put/DeleteObject on its objects; no wildcard actions;
    Resource "*" only for actions that AWS grants on nothing else; iam:PassRole only on the named roles.
    """
    problems = []
    for index, statement in enumerate(_as_list(document["Statement"])):
        sid = statement.get("Sid", f"statement {index}")
        if statement["Effect"] != "Allow":
            continue  # a Deny narrows, whatever it names
        if "NotAction" in statement or "NotResource" in statement:
            problems.append(f"{sid}: NotAction/NotResource in an Allow grants everything else")
            continue
        actions, resources = _as_list(statement["Action"]), _as_list(statement["Resource"])
        for action in actions:
            if "*" in action:
                problems.append(f"{sid}: wildcard action {action!r}")
            elif action.startswith("s3:"):
                allowed = (
                    {bucket_arn}
                    if action in BUCKET_ACTIONS
                    else {f"{bucket_arn}/*"}
                    if action in OBJECT_ACTIONS
                    else set()
                )
                if not allowed:
                    problems.append(f"{sid}: S3 action {action!r} is beyond list/get/put/delete")
                for resource in resources:
                    if resource not in allowed:
                        problems.append(f"{sid}: {action} on {resource!r}, not only on {sorted(allowed)}")
            elif "*" in resources and action not in ACTIONS_ONLY_GRANTED_ON_STAR:
                problems.append(f"{sid}: {action} on Resource '*'")
            if action == "iam:PassRole":
                for resource in resources:
                    if resource not in passable_role_arns:
                        problems.append(f"{sid}: iam:PassRole on {resource!r}")
    return problems


def test_policy_check_rejects_widened_documents():
    """The check itself can fail: each widening is caught and named."""
    bucket = "arn:aws:s3:::lcms-1-eu"
    least = {
        "Statement": [
            {"Sid": "List", "Effect": "Allow", "Action": "s3:ListBucket", "Resource": bucket},
            {"Sid": "Objects", "Effect": "Allow", "Action": ["s3:GetObject"], "Resource": f"{bucket}/*"},
            {"Sid": "DenyHttp", "Effect": "Deny", "Action": "s3:*", "Resource": "*"},
        ]
    }
    assert policy_problems(least, bucket) == []
    widened = {
        "s3 on star": {"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"},
        "s3 wildcard action": {"Effect": "Allow", "Action": "s3:*", "Resource": bucket},
        "all buckets": {"Effect": "Allow", "Action": "s3:PutObject", "Resource": "arn:aws:s3:::*"},
        "other bucket": {"Effect": "Allow", "Action": "s3:ListBucket", "Resource": "arn:aws:s3:::other"},
        "bucket admin": {"Effect": "Allow", "Action": "s3:PutBucketPolicy", "Resource": bucket},
        "everything": {"Effect": "Allow", "Action": "*", "Resource": "*"},
        "terminate anything": {"Effect": "Allow", "Action": "ec2:TerminateInstances", "Resource": "*"},
        "pass any role": {"Effect": "Allow", "Action": "iam:PassRole", "Resource": "*"},
        "not action": {"Effect": "Allow", "NotAction": "iam:*", "Resource": "*"},
    }
    for name, statement in widened.items():
        document = {"Statement": [*least["Statement"], {"Sid": name, **statement}]}
        problems = policy_problems(document, bucket)
        assert problems and all(p.startswith(name) for p in problems), (name, problems)


# --------------------------------------------------------------------------- template helpers


def load_template(text: str | None = None) -> dict:
    """The template as data, with CloudFormation's short forms (!Sub, !Ref) decoded as cfn-lint reads them."""
    from cfnlint.decode import decode_str

    template, errors = decode_str(TEMPLATE_PATH.read_text() if text is None else text)
    assert not errors, errors
    return template


def lint(text: str) -> list:
    import cfnlint.api

    return cfnlint.api.lint(text, regions=["eu-central-1", "us-east-1"])


def load_ecs_work_pool_module():
    """infra/ is scripts, not a package: load the file itself."""
    spec = importlib.util.spec_from_file_location("ecs_work_pool", REPO / "infra" / "ecs_work_pool.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def deploy(cloudformation, template_body: str, network: SimpleNamespace, name_prefix: str) -> dict[str, str]:
    """Create the stack, wait for CREATE_COMPLETE and return its outputs."""
    stack_name = f"{name_prefix}-stack"
    cloudformation.create_stack(
        StackName=stack_name,
        TemplateBody=template_body,
        Parameters=[
            {"ParameterKey": "NamePrefix", "ParameterValue": name_prefix},
            {"ParameterKey": "VpcId", "ParameterValue": network.vpc_id},
            {"ParameterKey": "SubnetIds", "ParameterValue": ",".join(network.subnet_ids)},
            {"ParameterKey": "DashboardCidr", "ParameterValue": DASHBOARD_CIDR},
        ],
        Capabilities=["CAPABILITY_NAMED_IAM"],
    )
    deadline = time.monotonic() + 30
    while True:
        [stack] = cloudformation.describe_stacks(StackName=stack_name)["Stacks"]
        if not stack["StackStatus"].endswith("IN_PROGRESS") or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert stack["StackStatus"] == "CREATE_COMPLETE", stack.get("StackStatusReason")
    return {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}


def _policy_document(document) -> dict:
    # boto3 decodes policy JSON; moto returns a role's *inline* CloudFormation policy as a Python repr.
    if isinstance(document, dict):
        return document
    try:
        return json.loads(document)
    except json.JSONDecodeError:
        return ast.literal_eval(document)


def inline_policies(iam, role_name: str) -> dict[str, dict]:
    names = iam.list_role_policies(RoleName=role_name)["PolicyNames"]
    return {
        name: _policy_document(iam.get_role_policy(RoleName=role_name, PolicyName=name)["PolicyDocument"])
        for name in names
    }


def managed_policy_document(iam, policy_arn: str) -> dict:
    version = iam.get_policy(PolicyArn=policy_arn)["Policy"]["DefaultVersionId"]
    document = iam.get_policy_version(PolicyArn=policy_arn, VersionId=version)["PolicyVersion"]["Document"]
    return _policy_document(document)


def role_name(role_arn: str) -> str:
    return role_arn.rsplit("/", 1)[1]


def stack_problems(iam, outputs: dict[str, str]) -> list[str]:
    """Every least-privilege problem in the policies that a deployed stack made."""
    bucket_arn = f"arn:aws:s3:::{outputs['BucketName']}"
    problems = []
    for role_arn, passable in (
        (outputs["FlowTaskRoleArn"], {outputs["DaskInstanceRoleArn"]}),
        (outputs["DaskInstanceRoleArn"], set()),
        (outputs["TaskExecutionRoleArn"], set()),
    ):
        documents = list(inline_policies(iam, role_name(role_arn)).values())
        for attached in iam.list_attached_role_policies(RoleName=role_name(role_arn))["AttachedPolicies"]:
            if not attached["PolicyArn"].startswith("arn:aws:iam::aws:policy/"):  # AWS-managed: asserted statically
                documents.append(managed_policy_document(iam, attached["PolicyArn"]))
        for document in documents:
            problems += policy_problems(document, bucket_arn, passable)
    worker = managed_policy_document(iam, outputs["PrefectWorkerPolicyArn"])
    problems += policy_problems(worker, bucket_arn, {outputs["FlowTaskRoleArn"], outputs["TaskExecutionRoleArn"]})
    return problems


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def aws(s3_endpoint) -> SimpleNamespace:
    """boto3 clients on the moto server."""
    import boto3

    return SimpleNamespace(
        **{name: boto3.client(name) for name in ("cloudformation", "ec2", "iam", "s3", "ecs", "logs")},
    )


@pytest.fixture(scope="module")
def network(aws) -> SimpleNamespace:
    """A VPC with two subnets, as an account would have before deploying the stack."""
    vpc_id = aws.ec2.create_vpc(CidrBlock="10.42.0.0/16")["Vpc"]["VpcId"]
    subnet_ids = [
        aws.ec2.create_subnet(VpcId=vpc_id, CidrBlock=f"10.42.{i}.0/24", AvailabilityZone=f"us-east-1{zone}")["Subnet"][
            "SubnetId"
        ]
        for i, zone in ((1, "a"), (2, "b"))
    ]
    return SimpleNamespace(vpc_id=vpc_id, subnet_ids=subnet_ids)


@pytest.fixture(scope="module")
def stack(aws, network) -> SimpleNamespace:
    """The template deployed to moto under a fresh name prefix (moto's state is shared by the session)."""
    prefix = f"lcms-{uuid.uuid4().hex[:8]}"
    outputs = deploy(aws.cloudformation, TEMPLATE_PATH.read_text(), network, prefix)
    return SimpleNamespace(prefix=prefix, name=f"{prefix}-stack", outputs=outputs)


# --------------------------------------------------------------------------- the template


def test_template_passes_cfn_lint():
    """No errors and no warnings from cfn-lint's default rules, in two regions."""
    matches = lint(TEMPLATE_PATH.read_text())
    assert matches == [], "\n".join(str(m) for m in matches)


def test_cfn_lint_catches_a_broken_template():
    """The lint test can fail: a wrong value is an error."""
    broken = TEMPLATE_PATH.read_text().replace("SSEAlgorithm: AES256", "SSEAlgorithm: AES128")
    assert any(m.rule.id.startswith("E") for m in lint(broken))


def test_template_declares_what_moto_ignores():
    """Bucket hardening, the TLS-only policy, the execution role's managed policy, Fargate providers."""
    resources = load_template()["Resources"]

    bucket = resources["DataBucket"]
    assert bucket["DeletionPolicy"] == bucket["UpdateReplacePolicy"] == "Retain"
    public_access = bucket["Properties"]["PublicAccessBlockConfiguration"]
    assert set(public_access) == {"BlockPublicAcls", "BlockPublicPolicy", "IgnorePublicAcls", "RestrictPublicBuckets"}
    assert all(value is True for value in public_access.values())
    assert bucket["Properties"]["OwnershipControls"]["Rules"] == [{"ObjectOwnership": "BucketOwnerEnforced"}]
    assert bucket["Properties"]["VersioningConfiguration"]["Fn::If"][0] == "KeepsVersions"
    lifecycle = {rule["Id"]: rule for rule in bucket["Properties"]["LifecycleConfiguration"]["Rules"]}
    assert lifecycle["abort-incomplete-multipart-uploads"]["Status"] == "Enabled"

    policy = resources["DataBucketPolicy"]["Properties"]
    assert policy["Bucket"] == {"Ref": "DataBucket"}
    [deny] = policy["PolicyDocument"]["Statement"]
    assert deny["Effect"] == "Deny" and deny["Principal"] == "*" and deny["Action"] == "s3:*"
    assert deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert deny["Resource"] == [{"Fn::GetAtt": ["DataBucket", "Arn"]}, {"Fn::Sub": "${DataBucket.Arn}/*"}]

    managed = resources["TaskExecutionRole"]["Properties"]["ManagedPolicyArns"]
    assert managed == [
        {"Fn::Sub": "arn:${AWS::Partition}:iam::aws:policy/service-role/AmazonECSTaskExecutionRolePolicy"}
    ]
    for name in ("FlowTaskRole", "DaskInstanceRole"):
        assert "ManagedPolicyArns" not in resources[name]["Properties"], f"{name}: inline policies only"

    cluster = resources["EcsCluster"]["Properties"]
    assert cluster["CapacityProviders"] == ["FARGATE", "FARGATE_SPOT"]


def test_stack_deploys_with_the_expected_outputs(stack):
    assert EXPECTED_OUTPUTS <= set(stack.outputs)
    assert stack.outputs["BucketName"].startswith(f"{stack.prefix}-")
    assert stack.outputs["EcsClusterName"] == stack.prefix


def test_bucket_is_encrypted(aws, stack):
    bucket = stack.outputs["BucketName"]
    aws.s3.head_bucket(Bucket=bucket)
    [rule] = aws.s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
    assert rule["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"


def test_roles_grant_only_this_bucket(aws, stack):
    """Parsed from moto's IAM: a role or policy widened to "*" (or another bucket) fails here."""
    outputs = stack.outputs
    bucket_arn = f"arn:aws:s3:::{outputs['BucketName']}"
    assert stack_problems(aws.iam, outputs) == []

    for role_arn in (outputs["FlowTaskRoleArn"], outputs["DaskInstanceRoleArn"]):
        documents = inline_policies(aws.iam, role_name(role_arn))
        statements = [s for d in documents.values() for s in _as_list(d["Statement"])]
        s3_resources = {
            r
            for s in statements
            if any(a.startswith("s3:") for a in _as_list(s["Action"]))
            for r in _as_list(s["Resource"])
        }
        assert s3_resources == {bucket_arn, f"{bucket_arn}/*"}, role_arn

    flow_task = inline_policies(aws.iam, role_name(outputs["FlowTaskRoleArn"]))["launch-dask-instances"]
    by_sid = {s["Sid"]: s for s in flow_task["Statement"]}
    assert by_sid["PassTheDaskInstanceRoleToEC2Only"]["Resource"] == outputs["DaskInstanceRoleArn"]
    profile_arn = aws.iam.get_instance_profile(InstanceProfileName=outputs["DaskInstanceProfileName"])[
        "InstanceProfile"
    ]["Arn"]
    for sid in ("RunInstancesWithTheDaskProfileOnly", "TagAndTerminateDaskInstancesOnly"):
        assert by_sid[sid]["Condition"] == {"ArnEquals": {"ec2:InstanceProfile": profile_arn}}

    worker = managed_policy_document(aws.iam, outputs["PrefectWorkerPolicyArn"])
    run_task = next(s for s in worker["Statement"] if s["Sid"] == "RunTasksInTheLcmsClusterOnly")
    assert run_task["Condition"] == {"ArnEquals": {"ecs:cluster": outputs["EcsClusterArn"]}}


def test_dask_instance_profile_holds_the_dask_role(aws, stack):
    profile = aws.iam.get_instance_profile(InstanceProfileName=stack.outputs["DaskInstanceProfileName"])
    assert [r["Arn"] for r in profile["InstanceProfile"]["Roles"]] == [stack.outputs["DaskInstanceRoleArn"]]
    trust = _policy_document(profile["InstanceProfile"]["Roles"][0]["AssumeRolePolicyDocument"])
    assert trust["Statement"][0]["Principal"] == {"Service": "ec2.amazonaws.com"}


def _ingress(aws, group_id: str) -> dict[tuple[int, int], set[str]]:
    """{(from, to): sources}, sources being security group ids and CIDRs."""
    [group] = aws.ec2.describe_security_groups(GroupIds=[group_id])["SecurityGroups"]
    rules: dict[tuple[int, int], set[str]] = {}
    for permission in group["IpPermissions"]:
        assert permission["IpProtocol"] == "tcp"
        sources = {p["GroupId"] for p in permission["UserIdGroupPairs"]} | {r["CidrIp"] for r in permission["IpRanges"]}
        rules.setdefault((permission["FromPort"], permission["ToPort"]), set()).update(sources)
    return rules


def test_security_groups_open_only_the_dask_ports(aws, stack, network):
    scheduler = stack.outputs["DaskSchedulerSecurityGroupId"]
    workers = stack.outputs["DaskWorkerSecurityGroupId"]
    flow_tasks = stack.outputs["FlowTaskSecurityGroupId"]

    assert _ingress(aws, scheduler) == {
        (8786, 8786): {workers, flow_tasks},  # never from the dashboard CIDR
        (8787, 8787): {workers, flow_tasks, DASHBOARD_CIDR},
    }
    assert _ingress(aws, workers) == {(0, 65535): {scheduler, workers}}
    assert _ingress(aws, flow_tasks) == {}
    groups = aws.ec2.describe_security_groups(GroupIds=[scheduler, workers, flow_tasks])["SecurityGroups"]
    assert {g["VpcId"] for g in groups} == {network.vpc_id}


def test_ecs_cluster_and_log_group_exist(aws, stack):
    [cluster] = aws.ecs.describe_clusters(clusters=[stack.outputs["EcsClusterArn"]])["clusters"]
    assert cluster["status"] == "ACTIVE" and cluster["clusterName"] == stack.outputs["EcsClusterName"]
    name = stack.outputs["LogGroupName"]
    [group] = [
        g for g in aws.logs.describe_log_groups(logGroupNamePrefix=name)["logGroups"] if g["logGroupName"] == name
    ]
    assert group["retentionInDays"] == 30


# Each broken copy widens one grant (original text, widened text, the statement that must be named);
# cfn-lint accepts them all, so only the policy check stands in the way.
WIDENINGS = {
    "list-any-bucket": (
        "            Action: s3:ListBucket\n            Resource: !GetAtt DataBucket.Arn\n",
        '            Action: s3:ListBucket\n            Resource: "*"\n',
        "ListTheBucket",
    ),
    "objects-of-every-bucket": (
        "            Resource: !Sub ${DataBucket.Arn}/*\n",
        "            Resource: !Sub arn:${AWS::Partition}:s3:::*\n",
        "ReadWriteDeleteItsObjects",
    ),
    "pass-any-role": (
        "                Action: iam:PassRole\n                Resource: !GetAtt DaskInstanceRole.Arn\n",
        '                Action: iam:PassRole\n                Resource: "*"\n',
        "PassTheDaskInstanceRoleToEC2Only",
    ),
}


@pytest.mark.parametrize("widening", sorted(WIDENINGS))
def test_widened_template_fails_the_policy_check(aws, network, widening):
    """A deliberately broken copy of the template deploys, and the same check as above rejects it."""
    original, widened, statement = WIDENINGS[widening]
    text = TEMPLATE_PATH.read_text()
    assert text.count(original) == 1, "the template changed: update this test's widening"
    outputs = deploy(aws.cloudformation, text.replace(original, widened), network, f"lcms-{uuid.uuid4().hex[:8]}")
    problems = stack_problems(aws.iam, outputs)
    assert problems and all(p.startswith(f"{statement}:") for p in problems), problems


# --------------------------------------------------------------------------- the lcms-ecs work pool


class NoPrefectApi:
    """Stands in for a Prefect client that must not be used."""

    def __getattr__(self, name):
        raise AssertionError(f"the work pool template needed the Prefect API ({name})")


def test_ecs_work_pool_template_from_stack_outputs(aws, stack, network, tmp_path):
    from prefect.server.schemas.actions import validate_base_job_template
    from prefect.utilities.schema_tools.validation import is_valid_schema, validate
    from prefect_aws.workers import ECSWorker

    ecs_work_pool = load_ecs_work_pool_module()
    assert ecs_work_pool.WORK_POOL_NAME == "lcms-ecs"
    output = tmp_path / "lcms-ecs.json"
    assert ecs_work_pool.main(["--stack", stack.name, "--output", str(output)]) == 0
    template = json.loads(output.read_text())
    outputs = stack.outputs

    # What the Prefect server checks when the pool is created, and the defaults against the variables' schema.
    assert validate_base_job_template(template) is template
    is_valid_schema(template["variables"])
    defaults = {k: v["default"] for k, v in template["variables"]["properties"].items() if "default" in v}
    validate(defaults, template["variables"], raise_on_error=True, ignore_required=True)

    # The job configuration an ECS worker would build for a deployment that overrides nothing. The template
    # names no blocks or Prefect variables, so no API is needed (and none is started: that takes ~20 s).
    configuration = asyncio.run(
        ECSWorker.job_configuration.from_template_and_values(template, {}, client=NoPrefectApi())
    )
    assert configuration.cluster == outputs["EcsClusterArn"]
    assert configuration.execution_role_arn == outputs["TaskExecutionRoleArn"]
    assert configuration.task_run_request["overrides"]["taskRoleArn"] == outputs["FlowTaskRoleArn"]
    assert configuration.task_definition["containerDefinitions"][0]["image"] == "lcms:latest"
    assert configuration.vpc_id == network.vpc_id
    assert configuration.network_configuration == {
        "subnets": network.subnet_ids,
        "securityGroups": [outputs["FlowTaskSecurityGroupId"]],
        "assignPublicIp": "DISABLED",
    }
    assert configuration.configure_cloudwatch_logs is True
    assert configuration.cloudwatch_logs_options["awslogs-group"] == outputs["LogGroupName"]
    # The worker's own check at run time: the subnets belong to the VPC (against moto's EC2).
    network_configuration = ECSWorker(work_pool_name="lcms-ecs")._custom_network_configuration(
        configuration.vpc_id, configuration.network_configuration, configuration
    )
    assert network_configuration["awsvpcConfiguration"]["subnets"] == network.subnet_ids


def test_ecs_work_pool_options_and_missing_outputs():
    ecs_work_pool = load_ecs_work_pool_module()
    outputs = {key: f"value-of-{key}" for key in ecs_work_pool.REQUIRED_OUTPUTS} | {"SubnetIds": "subnet-a,subnet-b"}
    template = ecs_work_pool.ecs_base_job_template(
        outputs, image="123.dkr.ecr.eu-central-1.amazonaws.com/lcms:1.0", cpu=2048, memory=8192, assign_public_ip=True
    )
    variables = template["variables"]["properties"]
    assert variables["image"]["default"] == "123.dkr.ecr.eu-central-1.amazonaws.com/lcms:1.0"
    assert (variables["cpu"]["default"], variables["memory"]["default"]) == (2048, 8192)
    assert variables["network_configuration"]["default"]["assignPublicIp"] == "ENABLED"
    assert variables["network_configuration"]["default"]["subnets"] == ["subnet-a", "subnet-b"]

    class StackWithoutOutputs:
        def describe_stacks(self, StackName):  # noqa: N803 (boto3's spelling)
            return {"Stacks": [{"StackName": StackName, "Outputs": []}]}

    with pytest.raises(ValueError, match="lacks the outputs"):
        ecs_work_pool.stack_outputs("not-lcms", StackWithoutOutputs())
