"""Post-processing stage flow: the post-processing chain over every tile and year's predicted labels.

Made from the stage's declaration (lcms/stages.py) by flows/common.py; nothing particular to it.
"""

from __future__ import annotations

from flows.common import tile_stage_flow
from lcms.stages import get_stage

postprocess_flow = tile_stage_flow(get_stage("postprocess"))
