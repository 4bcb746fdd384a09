"""Write the base job template of the `lcms-ecs` Prefect work pool from the CloudFormation stack's outputs.

The ECS work pool is Prefect state, not an AWS resource, so the stack cannot make it. This script
starts from prefect-aws's own default template for ECS workers (what
`prefect work-pool get-default-base-job-template --type ecs` prints) and fills in the stack's
cluster, roles, subnets, security group and log group as the variables' defaults, so deployments
of the pool need no AWS details of their own.

    python infra/ecs_work_pool.py --stack lcms --output lcms-ecs.json
    prefect work-pool create lcms-ecs --type ecs --base-job-template lcms-ecs.json --overwrite
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import Any

WORK_POOL_NAME = "lcms-ecs"  # prefect.yaml's ECS deployments name this pool
DEFAULT_IMAGE = "lcms:latest"  # built from docker/; push it to a registry ECS can pull from
DEFAULT_CPU = 1024  # Fargate units: 1 vCPU; the flow run mostly drives Dask and Prefect
DEFAULT_MEMORY = 4096  # MiB, a valid Fargate pair with 1 vCPU

# Outputs the template needs; a stack without them is not an LCMS stack (or an older version).
REQUIRED_OUTPUTS = (
    "EcsClusterArn",
    "TaskExecutionRoleArn",
    "FlowTaskRoleArn",
    "VpcId",
    "SubnetIds",
    "FlowTaskSecurityGroupId",
    "LogGroupName",
    "Region",
)


def stack_outputs(stack_name: str, cloudformation_client: Any = None) -> dict[str, str]:
    """The stack's outputs as {OutputKey: OutputValue}."""
    if cloudformation_client is None:
        import boto3

        cloudformation_client = boto3.client("cloudformation")
    [stack] = cloudformation_client.describe_stacks(StackName=stack_name)["Stacks"]
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
    missing = [key for key in REQUIRED_OUTPUTS if key not in outputs]
    if missing:
        raise ValueError(f"stack {stack_name!r} lacks the outputs {missing}; deploy infra/lcms-stack.yaml")
    return outputs


def default_ecs_job_template() -> dict[str, Any]:
    """prefect-aws's default base job template for ECS workers (a fresh copy)."""
    from prefect_aws.workers import ECSWorker

    return copy.deepcopy(ECSWorker.get_default_base_job_template())


def ecs_base_job_template(
    outputs: dict[str, str],
    image: str = DEFAULT_IMAGE,
    cpu: int = DEFAULT_CPU,
    memory: int = DEFAULT_MEMORY,
    assign_public_ip: bool = False,
) -> dict[str, Any]:
    """The default ECS template with the stack's values as the variables' defaults.

    Only defaults change: a deployment's job_variables can still override any of them.
    """
    template = default_ecs_job_template()
    variables = template["variables"]["properties"]
    region = outputs["Region"]
    defaults: dict[str, Any] = {
        "image": image,
        "cpu": cpu,
        "memory": memory,
        "launch_type": "FARGATE",
        "cluster": outputs["EcsClusterArn"],
        "execution_role_arn": outputs["TaskExecutionRoleArn"],
        "task_role_arn": outputs["FlowTaskRoleArn"],
        "vpc_id": outputs["VpcId"],
        # The worker passes this as the task's awsvpcConfiguration (and checks the subnets are the VPC's).
        "network_configuration": {
            "subnets": outputs["SubnetIds"].split(","),
            "securityGroups": [outputs["FlowTaskSecurityGroupId"]],
            # Private subnets (with NAT) need no public IP; public subnets need one to pull the image.
            "assignPublicIp": "ENABLED" if assign_public_ip else "DISABLED",
        },
        "configure_cloudwatch_logs": True,
        "cloudwatch_logs_options": {
            "awslogs-group": outputs["LogGroupName"],
            "awslogs-region": region,
            # The stack made the group; creating it would need logs:CreateLogGroup, which the
            # AWS-managed execution policy lacks.
            "awslogs-create-group": "false",
        },
        # Reuse the task definition while nothing changed, rather than a new revision per run.
        "match_latest_revision_in_family": True,
        # Forwarded to Dask EC2 instances by lcms.cluster (FORWARDED_ENV).
        "env": {"AWS_DEFAULT_REGION": region},
    }
    unknown = sorted(set(defaults) - set(variables))
    if unknown:  # prefect-aws renamed a variable: fail here, not at the first flow run
        raise KeyError(f"the ECS job template of this prefect-aws has no variables {unknown}")
    for name, value in defaults.items():
        variables[name]["default"] = value
    return template


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stack", required=True, help="CloudFormation stack name (of infra/lcms-stack.yaml)")
    parser.add_argument("--region", help="AWS region of the stack; default: the AWS configuration's")
    parser.add_argument("--image", default=DEFAULT_IMAGE, help=f"flow-run image (default {DEFAULT_IMAGE})")
    parser.add_argument("--cpu", type=int, default=DEFAULT_CPU, help="Fargate CPU units of a flow run")
    parser.add_argument("--memory", type=int, default=DEFAULT_MEMORY, help="Fargate memory (MiB) of a flow run")
    parser.add_argument(
        "--assign-public-ip", action="store_true", help="give tasks a public IP (public subnets without NAT)"
    )
    parser.add_argument("--output", "-o", type=Path, help="JSON file to write; default: standard output")
    args = parser.parse_args(argv)

    import boto3

    outputs = stack_outputs(args.stack, boto3.client("cloudformation", region_name=args.region))
    template = ecs_base_job_template(
        outputs, image=args.image, cpu=args.cpu, memory=args.memory, assign_public_ip=args.assign_public_ip
    )
    text = json.dumps(template, indent=2) + "\n"
    if args.output:
        args.output.write_text(text)
        print(
            f"Wrote {args.output}. Now: prefect work-pool create {WORK_POOL_NAME} --type ecs "
            f"--base-job-template {args.output} --overwrite",
            file=sys.stderr,
        )
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
