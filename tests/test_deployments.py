"""prefect.yaml: every deployment points at a flow whose form takes a config by name (or typed in full).

Without a server: the file itself, its flows, the demo's config path and the ECS image step.
tests/test_deployment_server.py deploys it on a real server and runs it.
"""

from __future__ import annotations

import asyncio
import inspect
from pathlib import Path

import pytest
import yaml
from prefect import Flow
from prefect.deployments.steps import run_shell_script
from prefect.flows import load_flow_from_entrypoint
from prefect.utilities.callables import parameter_schema

from lcms.config import EC2ClusterConfig, load_config

REPO = Path(__file__).resolve().parents[1]
SPEC = yaml.safe_load((REPO / "prefect.yaml").read_text())
DEPLOYMENTS = {d["name"]: d for d in SPEC["deployments"]}
STAGES = [
    "download",
    "features",
    "reference",
    "sampling",
    "merge",
    "training",
    "prediction",
    "postprocess",
    "export",
    "change",
    "report",
]
POOLS = {"lcms-local", "lcms-ecs"}


def test_the_deployments_the_orchestration_issue_asks_for():
    assert {"country-run", "country-run-ecs", "demo", *STAGES} <= set(DEPLOYMENTS)
    assert len(DEPLOYMENTS) == len(SPEC["deployments"]), "deployment names repeat"
    assert {d["work_pool"]["name"] for d in DEPLOYMENTS.values()} == POOLS
    for name, deployment in DEPLOYMENTS.items():
        ecs = deployment["work_pool"]["name"] == "lcms-ecs"
        assert name.endswith("-ecs") == ecs, name
        assert ("pull" in deployment) == ecs, f"{name}: local deployments use the top-level pull step"


def test_every_deployment_entrypoint_is_a_flow_with_a_typed_config_form(monkeypatch):
    monkeypatch.chdir(REPO)
    for deployment in SPEC["deployments"]:
        flow = load_flow_from_entrypoint(deployment["entrypoint"])
        assert isinstance(flow, Flow)
        schema = parameter_schema(flow.fn).model_dump_for_openapi()
        assert schema["required"] == ["config"]
        # A config's name, path or URL, or the whole typed config (the form's two tabs).
        assert schema["properties"]["config"]["anyOf"] == [{"type": "string"}, {"$ref": "#/definitions/RunConfig"}]
        run_config = schema["definitions"]["RunConfig"]
        assert {"aoi", "years", "grid", "store", "cluster", "download"} <= set(run_config["properties"])
        assert run_config.get("additionalProperties") is False
        # Default parameters are parameters of the flow, so the server accepts them.
        accepted = set(inspect.signature(flow.fn).parameters)
        assert set(deployment.get("parameters", {})) <= accepted, deployment["name"]
        assert deployment["parameters"]["overwrite"] is False


def test_the_country_runs_are_yearly_on_1_january_at_03_utc_for_the_last_full_year():
    for name, active in (("country-run", True), ("country-run-ecs", False)):
        deployment = DEPLOYMENTS[name]
        assert deployment["entrypoint"] == "flows/run.py:run_flow"
        assert deployment["schedules"] == [{"cron": "0 3 1 1 *", "timezone": "UTC", "active": active}]
        # A named config (`lcms deploy` stores examples/slovenia.yaml as slovenia), the last full year.
        assert deployment["parameters"]["config"] == "slovenia" and deployment["parameters"]["years"] == ["previous"]


def test_the_local_pull_step_goes_to_the_checkout_named_by_the_worker():
    assert SPEC["pull"] == [{"prefect.deployments.steps.set_working_directory": {"directory": "{{ $LCMS_REPO_DIR }}"}}]


def test_the_demo_deployment_runs_examples_demo_yaml(monkeypatch):
    demo = DEPLOYMENTS["demo"]
    assert demo["entrypoint"] == "flows/run.py:run_flow" and demo["work_pool"]["name"] == "lcms-local"
    # A path relative to the run's working directory, the repository; its paths relative to its folder.
    assert demo["parameters"]["config"] == "examples/demo.yaml"
    monkeypatch.chdir(REPO)
    from lcms.named_configs import resolve_config

    assert resolve_config(demo["parameters"]["config"]).config == load_config(REPO / "examples" / "demo.yaml")


@pytest.mark.parametrize("lcms_image", [None, "123456789012.dkr.ecr.eu-central-1.amazonaws.com/lcms:0.1.0"])
def test_the_ecs_image_comes_from_lcms_image_or_the_default_tag(monkeypatch, lcms_image):
    if lcms_image is None:
        monkeypatch.delenv("LCMS_IMAGE", raising=False)
    else:
        monkeypatch.setenv("LCMS_IMAGE", lcms_image)
    ecs = DEPLOYMENTS["country-run-ecs"]
    (step,) = ecs["build"]
    ((function, kwargs),) = step.items()
    assert function == "prefect.deployments.steps.run_shell_script"
    output = asyncio.run(run_shell_script(**{k: v for k, v in kwargs.items() if k != "id"}))
    default = EC2ClusterConfig.model_fields["docker_image"].default  # one default image name in the project
    assert output["stdout"] == (lcms_image or default)
    assert ecs["work_pool"]["job_variables"]["image"] == "{{ " + kwargs["id"] + ".stdout }}"
    assert ecs["work_pool"]["job_variables"]["cpu"] >= 1024 and ecs["work_pool"]["job_variables"]["memory"] >= 2048
    assert ecs["pull"] == [{"prefect.deployments.steps.set_working_directory": {"directory": "/opt/lcms"}}]
