"""prefect.yaml: every deployment points at a flow whose parameter form carries the typed config."""

from __future__ import annotations

from pathlib import Path

import yaml
from prefect import Flow
from prefect.flows import load_flow_from_entrypoint
from prefect.utilities.callables import parameter_schema

REPO = Path(__file__).resolve().parents[1]


def test_every_deployment_entrypoint_is_a_flow_with_a_typed_config_form(monkeypatch):
    monkeypatch.chdir(REPO)
    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    names = {d["name"] for d in spec["deployments"]}
    assert {
        "country-run",
        "download",
        "features",
        "reference",
        "sampling",
        "merge",
        "training",
        "prediction",
        "postprocess",
        "export",
    } <= names
    for deployment in spec["deployments"]:
        flow = load_flow_from_entrypoint(deployment["entrypoint"])
        assert isinstance(flow, Flow)
        schema = parameter_schema(flow.fn).model_dump_for_openapi()
        assert schema["required"] == ["config"]
        run_config = schema["definitions"]["RunConfig"]
        assert {"aoi", "years", "grid", "store", "cluster", "download"} <= set(run_config["properties"])
        assert run_config.get("additionalProperties") is False
