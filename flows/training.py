"""Training stage flow: the LightGBM model of the merged dataset, its validation and a Prefect report.

AOI level: one task in the flow's own process (LightGBM uses the machine's cores itself). The
flow's signature and checks come from the stage's declaration (flows/common.py); the model
learns from the whole merged dataset, so a tile subset is refused.
"""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows.common import StageInputError, aoi_stage_flow
from lcms.config import RunConfig, StoreConfig, TrainingConfig
from lcms.grid import AreaGrid
from lcms.stages import get_stage
from lcms.store import TileStore
from tasks.training.metrics import PLOT_FILES
from tasks.training.stage import INPUT_STAGE, SUMMARY_FILE, training_product_hash, training_stage

STAGE = get_stage("training")


@task(name="train-model", cache_policy=NO_CACHE)
def train_task(store_cfg: StoreConfig, name: str, cfg: TrainingConfig) -> dict:
    record, _ = training_stage(TileStore.from_config(store_cfg, name), name, cfg)
    return dict(record.extra)


def train(config: RunConfig, store: TileStore, tiles: AreaGrid, overwrite: bool) -> dict:
    """Train the product's model on its merged dataset and publish its validation."""
    name = config.product
    dataset = store.product_record(INPUT_STAGE, name)
    if dataset is None:
        raise StageInputError(
            f"the training stage reads the merged dataset {name!r}, which {store.url} does not hold yet: "
            "run `lcms merge CONFIG` (after sampling) first"
        )
    wanted = training_product_hash(config, store, tiles)
    record = store.product_record(STAGE.name, name)
    if not overwrite and record is not None and record.params_hash == wanted:
        extra, status = dict(record.extra), "skipped"
    else:
        extra, status = train_task(config.store, name, config.training), "done"
    summary = store.read_file(STAGE.name, name, SUMMARY_FILE).decode()
    plots = "".join(f"- {store.published_url(STAGE.name, name, p)}\n" for p in PLOT_FILES)
    create_markdown_artifact(
        key=f"training-{name}".lower().replace("_", "-").replace(".", "-"),
        markdown=f"# Model `{name}`\n\n{summary}\nPlots:\n\n{plots}",
        description=f"training {name}: OA {extra['overall_accuracy']:.3f}",
    )
    kappa = "–" if extra["kappa"] is None else f"{extra['kappa']:.3f}"
    message = (
        f"training: model {name!r} {status}, on the test samples OA {extra['overall_accuracy']:.3f}, "
        f"kappa {kappa}, macro F1 {extra['macro_f1']:.3f}"
    )
    if extra.get("all_labelled_overall_accuracy") is not None:  # what a map user meets: borders included
        message += (
            f"; on every labelled pixel of the held-out area OA {extra['all_labelled_overall_accuracy']:.3f}, "
            f"macro F1 {extra['all_labelled_macro_f1']:.3f}"
        )
    return {"stage": STAGE.name, "status": status, "message": message, **extra}


training_flow = aoi_stage_flow(STAGE, train)
