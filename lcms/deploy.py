"""`lcms deploy`: the work pools, the named configs and every deployment of prefect.yaml, in one command.

1. Work pools: each pool prefect.yaml names is created when missing (`prefect work-pool create`),
   except `lcms-ecs`, which only `--ecs` creates: an ECS pool needs its job template from the
   infra stack (infra/ecs_work_pool.py). Without it, the ECS deployments are skipped, with a note.
2. Named configs: each NAME=FILE is validated and stored on the server (lcms/named_configs.py),
   so that deployments run with `config: NAME` (by default examples/demo.yaml as `demo` and
   examples/slovenia.yaml as `slovenia`, the country run's scheduled config).
3. Deployments: `prefect --no-prompt deploy` of every deployment whose pool exists.

It runs from the repository (the folder with prefect.yaml) against PREFECT_API_URL.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from lcms.config import ConfigError

POOL_TYPES = {"lcms-local": "process", "lcms-ecs": "ecs"}
OPT_IN_POOLS = {"lcms-ecs"}  # created only when asked for (`--ecs`)
DEFAULT_CONFIGS = {"demo": "examples/demo.yaml", "slovenia": "examples/slovenia.yaml"}


class DeployError(RuntimeError):
    """A step of `lcms deploy` failed; the message says which and why."""


@dataclass
class DeployReport:
    pools_created: list[str] = field(default_factory=list)
    pools_present: list[str] = field(default_factory=list)
    configs: list[str] = field(default_factory=list)
    deployed: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # deployment → why


def prefect_command() -> list[str]:
    """The prefect CLI of this environment."""
    beside = Path(sys.executable).parent / "prefect"
    return [str(beside)] if beside.exists() else [shutil.which("prefect") or "prefect"]


def _run(args: list[str], cwd: Path, what: str) -> str:
    proc = subprocess.run(
        [*prefect_command(), *args], cwd=cwd, capture_output=True, text=True, check=False, env=os.environ.copy()
    )
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-30:])
        raise DeployError(f"{what} failed (prefect {' '.join(args)}, exit {proc.returncode}):\n{tail}")
    return proc.stdout


def existing_pools() -> set[str]:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return {pool.name for pool in client.read_work_pools()}


def deploy(
    project: Path,
    configs: dict[str, str] | None = None,
    *,
    ecs: bool = False,
    echo: Callable[[str], None] = print,
) -> DeployReport:
    """Pools, named configs, deployments; see the module docstring. Raises DeployError or ConfigError."""
    from lcms.named_configs import add_named_config

    project = project.resolve()
    spec_path = project / "prefect.yaml"
    if not spec_path.is_file():
        raise DeployError(f"no prefect.yaml in {project}: run `lcms deploy` from the repository (or give --project)")
    spec = yaml.safe_load(spec_path.read_text())
    report = DeployReport()

    pools = existing_pools()
    for pool in dict.fromkeys(d["work_pool"]["name"] for d in spec["deployments"]):
        if pool in pools:
            report.pools_present.append(pool)
            echo(f"work pool {pool}: exists")
            continue
        if pool in OPT_IN_POOLS and not ecs:
            continue
        kind = POOL_TYPES.get(pool)
        if kind is None:
            raise DeployError(f"prefect.yaml names the work pool {pool!r}, whose type lcms deploy does not know")
        _run(["work-pool", "create", pool, "--type", kind], project, f"creating the work pool {pool}")
        pools.add(pool)
        report.pools_created.append(pool)
        echo(f"work pool {pool}: created ({kind})")

    # Named configs are stored with paths relative to the repository, where the local worker runs.
    cwd = Path.cwd()
    os.chdir(project)
    try:
        for name, location in (DEFAULT_CONFIGS if configs is None else configs).items():
            if configs is None and not Path(location).is_file():
                echo(f"named config {name}: {location} is not here, not registered")
                continue
            record, config = add_named_config(name, location)
            report.configs.append(name)
            echo(
                f"named config {name}: {record.source} (run {config.name!r}, years {config.years})"
                + (f" {record.link}" if record.link else "")
            )
    finally:
        os.chdir(cwd)

    names = []
    for deployment in spec["deployments"]:
        pool = deployment["work_pool"]["name"]
        if pool in pools:
            names.append(deployment["name"])
        else:
            report.skipped[deployment["name"]] = f"the {pool} work pool does not exist"
    if report.skipped:
        echo(
            f"skipped {', '.join(report.skipped)}: no lcms-ecs work pool. For ECS, create it with its job template "
            "(infra/ecs_work_pool.py, see infra/README.md) and deploy again, or `lcms deploy --ecs` for a bare one."
        )
    if not names:
        raise DeployError("no deployment of prefect.yaml has an existing work pool")
    selection = ["--all"] if not report.skipped else [arg for name in names for arg in ("--name", name)]
    _run(["--no-prompt", "deploy", *selection], project, "prefect deploy")
    report.deployed = names
    echo(f"deployed {len(names)} deployments: {', '.join(names)}")
    return report


def parse_config_options(options: list[str]) -> dict[str, str]:
    """`--config NAME=FILE` options as a mapping."""
    out = {}
    for option in options:
        name, sep, location = option.partition("=")
        if not sep or not name or not location:
            raise ConfigError(f"--config takes NAME=FILE (e.g. demo=examples/demo.yaml), got {option!r}")
        out[name.strip()] = location.strip()
    return out
