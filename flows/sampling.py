"""Sampling stage flow: training pixels and their features for every tile and year.

Made from the stage's declaration (lcms/stages.py) by flows/common.py; nothing particular to it.
"""

from __future__ import annotations

from flows.common import tile_stage_flow
from lcms.stages import get_stage

sampling_flow = tile_stage_flow(get_stage("sampling"))
