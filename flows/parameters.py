"""The parameters every LCMS flow takes, and what its runs show in the Prefect UI.

Every stage flow (made by the factories in flows/common.py) and the country run (flows/run.py)
take the same form:

- `config`: a named config (`slovenia`), a file path or URL, or (the UI's RunConfig tab) the whole
  typed config; resolved by lcms/named_configs.py;
- `subset`: tile ids, a WGS84 bbox or a polygon file (all tiles when empty);
- `overwrite`, `years` (plain or relative: `previous`, `previous-1`) and `overrides` (single config
  fields by dotted path, checked against the config model).

Prefect does not validate these itself (`validate_parameters=False`): the server checks them against
the form's schema when a run is created, and `resolve_run` checks them against the config model
when it starts, with messages that name the field (`config.years`, `overrides: 'features.x'`).

A run explains itself: its name says the stage, config, years and subset
(`features · slovenia · 2024 · 3 tiles`); a markdown artifact (`<stage>-summary`) links to the
config and says what was done, skipped and why; link artifacts point at its outputs (each map's
STAC item, the report); its Completed state's message is the summary's first line.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import StringConstraints

from lcms.config import RunConfig, TileSubset
from lcms.named_configs import ResolvedConfig, resolve_config, resolve_subset
from lcms.plan import not_run_reasons  # noqa: F401  (re-exported for flows/run.py)

# A year relative to the run's start: the last full year, or N years before it.
RelativeYear = Annotated[str, StringConstraints(pattern=r"^previous(-[0-9]+)?$")]
ConfigParam = str | RunConfig
YearsParam = list[int | RelativeYear] | None
OverridesParam = dict[str, Any] | None

# Google-style, so that Prefect shows each line under its field of the run form.
PARAMETERS_DOC = """
Args:
    config: The run config: a named config (`lcms configs list`: e.g. slovenia, demo), or a YAML
        file's path or URL (relative to the worker's checkout; s3://, https://). Power users: the
        RunConfig tab types the whole config.
    subset: Which tiles: ids as `lcms grid` prints them, a WGS84 bbox, or a polygon file (any CRS).
        Empty: every tile of the AOI. Given together, a tile must match all of them.
    overwrite: Redo tiles that are already done (otherwise tiles done with the same parameters are skipped).
    years: The years to run, e.g. [2024]; `previous` is the last full year when the run starts,
        `previous-1` the one before. Empty: the config's years.
    overrides: Single config fields changed for this run, by dotted path, e.g.
        {"features.min_valid_coverage": 0.7, "cluster.n_workers": 4}. Checked against the config.
    scheduler_address: A running Dask scheduler to use instead of starting the config's cluster.
    show_progress: A progress bar in the log (clutters a worker's log).
"""


@dataclass(frozen=True)
class Run:
    """One run's resolved parameters."""

    stage: str  # the stage's name, or "run" for the country run
    resolved: ResolvedConfig
    subset: TileSubset
    overwrite: bool = False

    @property
    def config(self) -> RunConfig:
        return self.resolved.config

    @property
    def title(self) -> str:
        return " · ".join((self.stage, self.resolved.source.label, years_label(self.config.years), self.subset_label))

    @property
    def subset_label(self) -> str:
        return subset_label(self.subset)


def years_label(years: list[int]) -> str:
    if len(years) > 2 and list(years) == list(range(years[0], years[-1] + 1)):
        return f"{years[0]}–{years[-1]}"
    return ", ".join(map(str, years))


def subset_label(subset: TileSubset) -> str:
    if subset.is_all:
        return "all tiles"
    parts = []
    if subset.tile_ids is not None:
        parts.append(f"{len(subset.tile_ids)} tile{'s' if len(subset.tile_ids) != 1 else ''}")
    if subset.bbox is not None:
        parts.append("bbox " + ",".join(f"{v:g}" for v in subset.bbox))
    if subset.aoi_path is not None:
        parts.append(Path(subset.aoi_path).name)
    return " ∩ ".join(parts)


# Resolved once per flow run: the run's name (set before the body starts) and its body share it.
_RUNS: dict[str, Run] = {}


def _flow_run_id() -> str | None:
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    return str(context.flow_run.id) if context is not None and context.flow_run is not None else None


def resolve_run(
    stage: str,
    config: Any,
    subset: Any = None,
    years: Any = None,
    overrides: Any = None,
    overwrite: bool = False,
) -> Run:
    """The run's config, subset and years, checked; a ConfigError names what is wrong."""
    run_id = _flow_run_id()
    if run_id is not None and run_id in _RUNS:
        return _RUNS[run_id]
    run = Run(stage, resolve_config(config, years=years, overrides=overrides), resolve_subset(subset), overwrite)
    if run_id is not None:
        if len(_RUNS) > 256:  # a long-lived process (a test session) runs many flows
            _RUNS.clear()
        _RUNS[run_id] = run
    return run


def run_namer(stage: str) -> Callable[[], str]:
    """Prefect's `flow_run_name`: `features · slovenia · 2024 · 3 tiles`, from the run's parameters."""

    def name() -> str:
        from prefect.runtime import flow_run

        parameters = dict(flow_run.parameters)
        try:
            return resolve_run(stage, **_run_parameters(parameters)).title
        except Exception:  # the body resolves again and fails the run with the message
            config = parameters.get("config")
            label = config if isinstance(config, str) else getattr(config, "name", None)
            if isinstance(config, dict):
                label = config.get("name")
            return f"{stage} · {label or 'config'} · invalid parameters"

    return name


def _run_parameters(parameters: dict) -> dict:
    keys = ("config", "subset", "years", "overrides", "overwrite")
    return {k: parameters[k] for k in keys if k in parameters}


# --------------------------------------------------------------------------- the stage flows' function


def stage_flow_function(stage, body: Callable) -> Callable:
    """The function a stage's flow runs: the form's parameters resolved, then `body`, then the summary.

    `body(config, subset, overwrite, scheduler_address, show_progress)` is the factory's stage body.
    """

    def stage_flow(
        config: ConfigParam,
        subset: TileSubset = TileSubset(),
        overwrite: bool = False,
        years: YearsParam = None,
        overrides: OverridesParam = None,
        scheduler_address: str | None = None,
        show_progress: bool = False,
    ):
        run = resolve_run(stage.name, config, subset, years, overrides, overwrite)
        result = body(
            run.config, run.subset, overwrite, scheduler_address=scheduler_address, show_progress=show_progress
        )
        return finish_run(run, [result], result)

    stage_flow.__name__ = stage_flow.__qualname__ = stage.flow_name
    stage_flow.__doc__ = stage.title + "\n" + PARAMETERS_DOC
    return stage_flow


# --------------------------------------------------------------------------- what a run shows


def _tile_line(summary: dict) -> str | None:
    if "done" not in summary:
        return None
    return (
        f"{summary['done']} done, {summary['skipped']} skipped, {summary['failed']} failed "
        f"of {summary['tiles']} tile-years"
    )


def _stage_lines(summary: dict) -> list[str]:
    """What one stage's summary says, for people."""
    stage = summary.get("stage", "?")
    tiles = _tile_line(summary)
    if tiles is not None:
        lines = [f"**{stage}**: {tiles}."]
        if summary["skipped"]:
            lines.append(
                f"  - skipped {summary['skipped']}: already done with the same inputs and parameters "
                "(their done marks match); `overwrite: true` redoes them."
            )
        if summary["failed"]:
            lines.append("  - failed tiles are listed in the stage's tile table; a rerun retries only them.")
        return lines
    rest = str(summary.get("message") or "").splitlines()[1:]
    lines = [f"**{stage}**: {_short(summary)}"]
    lines += [f"  - {line.strip()}" for line in rest if line.strip()]
    if summary.get("status") == "skipped":
        lines.append(
            "  - skipped: its output is up to date with its inputs and parameters; `overwrite: true` redoes it."
        )
    return lines


def _file_link(url: str) -> str:
    return Path(url).as_uri() if "://" not in url and url.startswith("/") else url


def output_links(summaries: list[dict]) -> list[tuple[str, str]]:
    """(text, link) for each output a run made that a person opens: maps' STAC items and COGs, reports."""
    links = []
    for summary in summaries:
        for item in summary.get("maps") or []:
            url = item.get("url")
            if not url:
                continue
            label = f"{item.get('map', 'map')} {item.get('year', '')} {item.get('zone', '')}".strip()
            stac = re.sub(r"\.tiff?$", ".json", url)
            if stac != url:
                links.append((f"STAC item: {label}", _file_link(stac)))
            links.append((f"COG: {label}", _file_link(url)))
        if summary.get("stage") == "report" and summary.get("url"):
            links.append(("report", _file_link(summary["url"])))
    return links


def summary_markdown(run: Run, summaries: list[dict], not_run: list[tuple[str, str]] = ()) -> str:
    resolved, config = run.resolved, run.config
    rows = [
        ("config", resolved.source.markdown()),
        ("run name in the config", f"`{config.name}`"),
        ("years", years_label(config.years) + (" (this run's `years`)" if resolved.years else " (the config's)")),
        ("tiles", _subset_markdown(run.subset)),
        ("overwrite", "yes: done tiles are redone" if run.overwrite else "no: done tiles are skipped"),
        ("overrides", ", ".join(f"`{k}` = `{v!r}`" for k, v in resolved.overrides.items()) or "none"),
        ("store", f"`{config.store.url}`"),
    ]
    lines = [f"## {run.title}", "", "| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows), ""]
    for summary in summaries:
        lines += _stage_lines(summary)
    if not run.subset.is_all:
        lines.append("\nTiles outside the subset were not touched.")
    if not_run:
        lines.append("\nStages not run for this config:")
        lines += [f"  - **{name}**: {why}" for name, why in not_run]
    links = output_links(summaries)
    if links:
        lines.append("\nOutputs:")
        lines += [f"  - [{text}]({link})" for text, link in links]
    return "\n".join(lines) + "\n"


def _subset_markdown(subset: TileSubset) -> str:
    if subset.is_all:
        return "all tiles of the AOI"
    parts = []
    if subset.tile_ids is not None:
        shown = ", ".join(f"`{t}`" for t in subset.tile_ids[:12]) + (" ..." if len(subset.tile_ids) > 12 else "")
        parts.append(f"{len(subset.tile_ids)} tile ids: {shown}")
    if subset.bbox is not None:
        parts.append(f"bbox {list(subset.bbox)} (WGS84)")
    if subset.aoi_path is not None:
        parts.append(f"polygons of `{subset.aoi_path}`")
    return "; ".join(parts) + " (a tile must match all)" * (len(parts) > 1)


def _short(summary: dict) -> str:
    """One line of a stage's summary, without the stage's name."""
    tiles = _tile_line(summary)
    if tiles is not None:
        return tiles
    lines = str(summary.get("message") or summary.get("status") or "").splitlines()
    return lines[0].removeprefix(f"{summary.get('stage')}: ") if lines else ""


def state_message(run: Run, summaries: list[dict], not_run: list[tuple[str, str]] = ()) -> str:
    message = f"{run.title}: " + "; ".join(f"{s.get('stage', '?')}: {_short(s)}" for s in summaries)
    if any(s.get("skipped") for s in summaries):
        message += " (skipped: already done with the same parameters; overwrite redoes them)"
    if not_run:
        message += f"; not run: {', '.join(name for name, _ in not_run)} (see the summary artifact)"
    return message


def _artifact_key(stage: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", f"{stage}-summary".lower())


def finish_run(run: Run, summaries: list[dict], result: Any, not_run: list[tuple[str, str]] = ()):
    """Publish the run's summary and output links; the Completed state carries `result` to callers."""
    from prefect.artifacts import create_link_artifact, create_markdown_artifact
    from prefect.states import Completed

    summaries = [s for s in summaries if isinstance(s, dict)]
    message = state_message(run, summaries, not_run)
    create_markdown_artifact(
        key=_artifact_key(run.stage), markdown=summary_markdown(run, summaries, not_run), description=message
    )
    for text, link in output_links(summaries):
        create_link_artifact(link=link, link_text=text, description=f"{run.title}: {text}")
    return Completed(message=message, data=result)
