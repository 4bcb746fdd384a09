"""The benchmark suite (benchmarks/suite.py) at a tiny size: every stage runs on both sides and the outputs agree.

Skipped unless eo-learn's venv (benchmarks/.venv-eolearn) exists: creating it downloads eo-learn
and takes minutes; the first `python -m benchmarks.suite` makes it. Scaling and the large tile are
left out here (they start Dask clusters); --batch runs each side's stages in one process.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EOLEARN_PYTHON = REPO / "benchmarks" / ".venv-eolearn" / "bin" / "python"
STAGES = [
    "cloud_mask",
    "filter",
    "indices",
    "interpolation",
    "sampling",
    "training",
    "prediction",
    "store_write",
    "store_read",
]


@pytest.mark.skipif(not EOLEARN_PYTHON.exists(), reason="no eo-learn venv: run `python -m benchmarks.suite` once")
def test_suite_at_tiny_size(tmp_path):
    out = tmp_path / "suite.json"
    cmd = [sys.executable, "-m", "benchmarks.suite", "--size", "64", "--dates", "16", "--batch"]
    cmd += ["--skip-scaling", "--skip-big", "--no-cloud-160m", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "END TO END" in proc.stdout
    report = json.loads(out.read_text())

    rows = {row["stage"]: row for row in report["stages"]}
    assert list(rows) == STAGES
    for row in rows.values():
        for side in ("lcms", "eolearn"):
            assert row[side]["seconds"] >= 0 and row[side]["peak_rss_mib"] > 50, (row["stage"], side)
        assert row["eolearn_over_lcms_seconds"] > 0

    accuracy = report["accuracy"]
    assert accuracy["test_pixels"] > 0
    for side in ("lcms", "eolearn"):
        assert 0 <= accuracy[side]["oa"] <= 1

    # Same inputs, same answers: frames kept, indices and interpolation to float32 rounding,
    # both stores give back what was written, the two maps nearly agree.
    agree = {stage: row.get("agreement", {}) for stage, row in rows.items()}
    assert agree["filter"]["same_frames"]
    assert agree["indices"]["max_abs_diff"] < 1e-5
    assert agree["interpolation"]["max_abs_diff"] < 1e-5
    assert agree["sampling"]["eroded_labels_equal"] > 0.9
    assert agree["prediction"]["labels_equal"] > 0.9
    assert agree["store_read"] == {"lcms_round_trip_equal": True, "eolearn_round_trip_equal": True}

    e2e = report["end_to_end"]
    assert e2e["lcms_seconds"] == pytest.approx(sum(rows[s]["lcms"]["seconds"] for s in STAGES))
    assert e2e["speedup"] == pytest.approx(e2e["eolearn_seconds"] / e2e["lcms_seconds"])
    assert isinstance(e2e["speed_goal_met"], bool) and isinstance(e2e["memory_goal_met"], bool)
