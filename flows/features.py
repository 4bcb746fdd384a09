"""Features stage flow: indices and temporal interpolation (or mosaics) for every tile and year.

Made from the stage's declaration (lcms/stages.py) by flows/common.py; nothing particular to it.
"""

from __future__ import annotations

from flows.common import tile_stage_flow
from lcms.stages import get_stage

features_flow = tile_stage_flow(get_stage("features"))
