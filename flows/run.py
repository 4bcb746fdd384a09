"""The country run: every stage in pipeline order, on one Dask cluster.

It grows as stages land: grid → download → features, then, when a reference is configured,
reference → sampling → merge → training → prediction → postprocess → export, then, with two
or more years, change → report (with one year, the report alone).
"""

from __future__ import annotations

import tempfile

from prefect import flow

from flows.change import change_flow
from flows.common import prepare_stage
from flows.download import download_flow
from flows.export import export_flow
from flows.features import features_flow
from flows.merge import merge_flow
from flows.postprocess import postprocess_flow
from flows.prediction import prediction_flow
from flows.reference import reference_flow
from flows.report import report_flow
from flows.sampling import sampling_flow
from flows.training import training_flow
from lcms.cluster import dask_cluster
from lcms.config import RunConfig, TileSubset


@flow(name="lcms-run")
def run_flow(
    config: RunConfig, subset: TileSubset = TileSubset(), overwrite: bool = False, show_progress: bool = False
) -> list[dict]:
    """Build the grid, then run each stage over the selected tiles and every year of the config."""
    prepare_stage(config, subset)  # fails fast on a bad AOI, subset or store, before the cluster starts
    with (
        tempfile.TemporaryDirectory(prefix="lcms-dask-") as work_dir,
        dask_cluster(config.cluster, work_dir) as cluster,
    ):
        address = cluster.scheduler_address
        stages = [download_flow, features_flow]
        if config.reference.path is not None:  # the model stages need ground truth
            stages += [reference_flow, sampling_flow, merge_flow, training_flow]
            stages += [prediction_flow, postprocess_flow, export_flow]
            stages += [change_flow, report_flow] if config.change_years else [report_flow]
        return [
            # The model learns from everything merged: the subset chose the merged tiles already.
            stage_flow(
                config,
                TileSubset() if stage_flow is training_flow else subset,
                overwrite,
                scheduler_address=address,
                show_progress=show_progress,
            )
            for stage_flow in stages
        ]
