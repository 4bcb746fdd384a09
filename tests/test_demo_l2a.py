"""examples/demo-l2a.yaml end to end: L2A bands, masks from the scene classification, every stage.

The example itself, made smaller (two tiles, 8 dates a year, fewer samples and trees) and
pointed at a temporary store, runs through `lcms synthetic-reference` and `lcms run` in
subprocesses, on an ephemeral Prefect server, as `make demo` runs demo.yaml.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml
from small_demo import small_demo

from lcms.config import load_config
from lcms.sentinel2 import L1C_BANDS, L2A_BANDS
from lcms.store import TileStore
from tasks.download.synthetic import SyntheticScene

REPO = Path(__file__).resolve().parents[1]


def test_demo_l2a_runs_every_stage(tmp_path):
    data = yaml.safe_load((REPO / "examples" / "demo-l2a.yaml").read_text())
    assert data["download"]["source"]["collection"] == "L2A" and data["download"]["cloud_mask"]["method"] == "scl"
    assert data["store"]["url"] == "../lcms-runs/demo-l2a/store"
    path = small_demo("demo-l2a.yaml", tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    lcms = [sys.executable, "-m", "lcms.cli"]

    made = subprocess.run([*lcms, "synthetic-reference", str(path), "--fraction", "0.6"], capture_output=True,
                          text=True, env=env, timeout=120)  # fmt: skip
    assert made.returncode == 0, made.stderr[-3000:]
    run = subprocess.run([*lcms, "run", str(path)], capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    for stage in ("download", "features", "reference", "sampling", "prediction", "postprocess"):
        assert f"{stage}: 4 done" in run.stdout, (stage, run.stdout[-3000:])
    assert "merge: dataset" in run.stdout and "training: model" in run.stdout
    assert "export: 4 maps" in run.stdout and "change 2023→2024:" in run.stdout and "report: " in run.stdout

    # The download stage stored L2A bands, and the clouds and shadows of the scene classification:
    # independently, the scene's own true masks (rendered as L1C: the same world).
    cfg = load_config(path)
    store = TileStore.from_config(cfg.store)
    scene = SyntheticScene(**{**cfg.download.source.model_dump(exclude={"kind"}), "collection": "L1C"})
    for tile in store.read_grid():
        reader = store.open_tile("download", 2023, tile.tile_id)
        assert list(reader.coord("band")) == list(L2A_BANDS)
        truth = scene.render(tile.grid, 2023, reader.coord("time"))
        np.testing.assert_array_equal(reader.read("bands"), truth.bands[..., [L1C_BANDS.index(b) for b in L2A_BANDS]])
        np.testing.assert_array_equal(reader.read("cloud_mask"), truth.cloud_mask)
        np.testing.assert_array_equal(reader.read("shadow_mask"), truth.shadow_mask)
        np.testing.assert_array_equal(
            reader.read("valid_mask"), truth.data_mask & ~truth.cloud_mask & ~truth.shadow_mask
        )
    assert any((tmp_path / "store" / "maps").glob("*_2024_33N_labels.tif"))
    assert (tmp_path / "store" / "report").is_dir()
