"""The country run: every stage in pipeline order, on one Dask cluster.

The chain is the stages declared in lcms/stages.py, in their order, each when it applies to
the config (`runs_when`): grid → download → features, then, when a reference is configured,
reference → sampling → merge → training → prediction → postprocess → export, then, with two
or more years, change → report (with one year, the report alone).
"""

from __future__ import annotations

import tempfile

from prefect import flow

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
from lcms.stages import stages_with_flows


@flow(name="lcms-run", flow_run_name=run_namer("run"), validate_parameters=False)
def run_flow(
    config: ConfigParam,
    subset: TileSubset = TileSubset(),
    overwrite: bool = False,
    show_progress: bool = False,
    years: YearsParam = None,
    overrides: OverridesParam = None,
) -> list[dict]:
    """Build the grid, then run each stage over the selected tiles and every year of the config."""
    run = resolve_run("run", config, subset, years, overrides, overwrite)  # names the bad field, if any
    config, subset = run.config, run.subset
    prepare_stage(config, subset)  # fails fast on a bad AOI, subset or store, before the cluster starts
    chain = [stage for stage in stages_with_flows() if stage.runs_when(config)]
    with (
        tempfile.TemporaryDirectory(prefix="lcms-dask-") as work_dir,
        dask_cluster(config.cluster, work_dir) as cluster,
    ):
        results = [
            stage.flow()(
                config,
                # The model learns from everything merged: the subset chose the merged tiles already.
                TileSubset() if stage.whole_aoi else subset,
                overwrite,
                scheduler_address=cluster.scheduler_address,
                show_progress=show_progress,
            )
            for stage in chain
        ]
    return finish_run(run, results, results, not_run_reasons(stages_with_flows(), config))


run_flow.fn.__doc__ += "\n" + PARAMETERS_DOC
