"""Prediction stage flow: the trained model over every selected tile and year, on Dask.

Made from the stage's declaration (lcms/stages.py) by flows/common.py. Particular to it: before
the cluster starts, the model must exist and take the features the store holds.
"""

from __future__ import annotations

from flows.common import prepare_stage, tile_stage_flow
from lcms.config import RunConfig, TileSubset
from lcms.stages import get_stage
from tasks.prediction.tile import INPUT_STAGE, check_features_match, load_stored_model


def check_model_applies(config: RunConfig, subset: TileSubset) -> None:
    """Fail before the cluster starts when there is no model, or the features are not the model's.

    The first selected tile of each year stands for the others (one features config per run);
    each tile task checks its own tile again.
    """
    store, tiles = prepare_stage(config, subset)
    _, metadata, _ = load_stored_model(store, config.product, config.prediction.model_version)
    tile_id = tiles.tile_ids[0]
    for year in config.years:
        if store.is_done(INPUT_STAGE, year, tile_id):
            features = store.open_tile(INPUT_STAGE, year, tile_id)
            where = f"tile {tile_id}/{year}"
            check_features_match(metadata, list(features.coord("feature")), features.coord("time"), where)


prediction_flow = tile_stage_flow(get_stage("prediction"), check=check_model_applies)
