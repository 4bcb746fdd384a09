"""The country run: every stage in pipeline order, on one Dask cluster.

The chain is the stages declared in lcms/stages.py, in their order, each when it applies to
the config (`runs_when`): grid → download → features, then, when a reference is configured,
reference → sampling → merge → training → prediction → postprocess → export, then, with two
or more years, change → report (with one year, the report alone). `stages` or `from_stage` run part
of the chain.

The run first works out its plan from the store (lcms/plan.py): a stage with nothing to make is
not started at all, and a run with nothing to make starts no cluster.
"""

from __future__ import annotations

import tempfile

from prefect import flow, get_run_logger

from flows.common import prepare_stage
from flows.parameters import (
    PARAMETERS_DOC,
    ConfigParam,
    OverridesParam,
    YearsParam,
    finish_run,
    not_run_reasons,
    resolve_run,
    run_namer,
)
from lcms.cluster import dask_cluster
from lcms.config import TileSubset
from lcms.plan import Plan, plan_chain, select_chain
from lcms.stages import stages_with_flows


@flow(name="lcms-run", flow_run_name=run_namer("run"), validate_parameters=False)
def run_flow(
    config: ConfigParam,
    subset: TileSubset = TileSubset(),
    overwrite: bool = False,
    show_progress: bool = False,
    years: YearsParam = None,
    overrides: OverridesParam = None,
    stages: list[str] | None = None,
    from_stage: str | None = None,
) -> list[dict]:
    """Build the grid, then run each stage that has work over the selected tiles and every year of the config."""
    run = resolve_run("run", config, subset, years, overrides, overwrite)  # names the bad field, if any
    config, subset = run.config, run.subset
    store, tiles = prepare_stage(config, subset)  # fails fast on a bad AOI, subset or store, before the cluster starts
    chain = select_chain(config, stages, from_stage)
    plan = plan_chain(config, chain, store, tiles, overwrite)
    log_plan(plan)
    with_work = set(plan.stages_to_run)
    # The change flow writes the polygon layer too: it runs when either has work.
    planned = {stage_plan.stage: stage_plan for stage_plan in plan.stages}
    results = [skipped_summary(planned[stage.name]) for stage in chain if not _has_work(stage.name, with_work)]
    todo = [stage for stage in chain if _has_work(stage.name, with_work)]
    if todo:
        with (
            tempfile.TemporaryDirectory(prefix="lcms-dask-") as work_dir,
            dask_cluster(config.cluster, work_dir) as cluster,
        ):
            for stage in todo:
                results.append(
                    stage.flow()(
                        config,
                        # The model learns from everything merged: the subset chose the merged tiles already.
                        TileSubset() if stage.whole_aoi else subset,
                        overwrite,
                        scheduler_address=cluster.scheduler_address,
                        show_progress=show_progress,
                    )
                )
    return finish_run(run, results, results, not_run_reasons(stages_with_flows(), config))


def _has_work(stage: str, with_work: set[str]) -> bool:
    return stage in with_work or (stage == "change" and "change-polygons" in with_work)


def skipped_summary(stage_plan) -> dict:
    """The summary of a stage the plan found nothing to do for (it is not started)."""
    n, name = len(stage_plan.outputs), stage_plan.stage
    if n and stage_plan.outputs[0].key != "-":  # a tile stage: the counts of a stage run that skipped every tile
        return {"stage": name, "status": "skipped", "done": 0, "skipped": n, "failed": 0, "tiles": n}
    return {"stage": name, "status": "skipped", "message": f"{name}: up to date, nothing to do"}


def log_plan(plan: Plan) -> None:
    """One line per stage: what the run will make and why, before anything starts."""
    logger = get_run_logger()
    for stage in plan.stages:
        logger.info("plan: %s: %s", stage.stage, stage.describe())


run_flow.fn.__doc__ += "\n" + PARAMETERS_DOC
