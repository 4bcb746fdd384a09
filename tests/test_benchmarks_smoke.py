"""The benchmark suite (benchmarks/suite.py) at a tiny size, and its totals against the issue's goals.

The suite runs here on a 64² px, 16-date synthetic tile with each side's stages in one process
(--batch), without the scaling and large-tile parts (they start Dask clusters and render 1000² px).
The LCMS side always runs (CI has no eo-learn venv: --lcms-only); where benchmarks/.venv-eolearn
exists (the first full `python -m benchmarks.suite` makes it), both sides run and their outputs
must agree.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
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
PER_TILE = [s for s in STAGES if s != "training"]


def test_suite_at_tiny_size(tmp_path):
    both = EOLEARN_PYTHON.exists()
    out = tmp_path / "suite.json"
    cmd = [sys.executable, "-m", "benchmarks.suite", "--size", "64", "--dates", "16", "--batch"]
    # LightGBM predicts s2cloudless here: compiling it (tests/test_cloud_model.py) would take a minute.
    cmd += ["--skip-scaling", "--skip-big", "--no-cloud-160m", "--lightgbm-cloud-model", "--out", str(out)]
    if not both:
        cmd.append("--lcms-only")
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "PER TILE" in proc.stdout and "TRAINING" in proc.stdout
    report = json.loads(out.read_text())
    assert {"command", "machine", "config", "tile", "stages", "accuracy", "end_to_end", "raw"} <= set(report)
    assert report["config"]["size"] == 64 and report["tile"]["dates_total"] == 16

    rows = {row["stage"]: row for row in report["stages"]}
    assert list(rows) == STAGES
    sides = ("lcms", "eolearn") if both else ("lcms",)
    for row in rows.values():
        for side in sides:
            figures = row[side]
            assert figures["seconds"] > 0 and figures["cpu_seconds"] > 0, (row["stage"], side)
            assert figures["peak_rss_mib"] > 50 and figures["throughput"] > 0, (row["stage"], side)
        assert ("eolearn" in row) == both
    assert rows["training"]["lcms"]["samples"] > 0 and rows["sampling"]["lcms"]["samples"] > 0
    cloud = report["config"]["cloud_model"]
    assert rows["cloud_mask"]["lcms"]["model"] == cloud["predictor"] and cloud["compile_seconds"] == 0

    # LCMS's store gives back what was written; its model maps the held-out checkerboard well.
    assert rows["store_read"]["agreement"]["lcms_round_trip_equal"] is True
    accuracy = report["accuracy"]
    assert accuracy["test_pixels"] > 0
    assert 0.8 <= accuracy["lcms"]["oa"] <= 1

    # The two totals: the per-tile chain without training, and training.
    e2e = report["end_to_end"]
    per_tile, training = e2e["per_tile"], e2e["training"]
    assert per_tile["stages"] == PER_TILE and training["stages"] == ["training"]
    assert per_tile["lcms_seconds"] == pytest.approx(sum(rows[s]["lcms"]["seconds"] for s in PER_TILE))
    assert per_tile["lcms_peak_rss_mib"] == max(rows[s]["lcms"]["peak_rss_mib"] for s in PER_TILE)
    assert training["lcms_seconds"] == pytest.approx(rows["training"]["lcms"]["seconds"])
    without_cloud = [s for s in PER_TILE if s != "cloud_mask"]
    assert e2e["per_tile_without_cloud_mask"]["lcms_seconds"] == pytest.approx(
        sum(rows[s]["lcms"]["seconds"] for s in without_cloud)
    )
    if not both:
        assert "speedup" not in per_tile and per_tile["speed_goal_met"] is None
        return

    for side in sides:
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
    eo_seconds = sum(rows[s]["eolearn"]["seconds"] for s in PER_TILE)
    assert per_tile["speedup"] == pytest.approx(eo_seconds / per_tile["lcms_seconds"])
    assert isinstance(per_tile["speed_goal_met"], bool) and isinstance(per_tile["memory_goal_met"], bool)
    assert isinstance(training["speed_goal_met"], bool)


def _row(stage: str, lcms: tuple[float, float], eolearn: tuple[float, float]) -> dict:
    def side(seconds, peak):
        return {"seconds": seconds, "cpu_seconds": seconds, "peak_rss_mib": peak}

    return {"stage": stage, "lcms": side(*lcms), "eolearn": side(*eolearn)}


def test_totals_and_verdicts():
    """The suite's totals and goals on made-up figures, checked by hand."""
    import suite

    rows = [
        _row("cloud_mask", (1.0, 300.0), (150.0, 2400.0)),
        _row("indices", (0.5, 200.0), (0.4, 900.0)),  # slower than eo-learn
        _row("training", (2.0, 400.0), (12.0, 500.0)),
        _row("store_write", (1.5, 700.0), (14.0, 1200.0)),
    ]
    at_160m = {"eolearn_cloud_mask_160m": {"seconds": 2.0, "cpu_seconds": 2.0, "peak_rss_mib": 800.0}}
    big = {"size": 1000, "dates": 48, "download": {"peak_rss_mib": 1100.0}, "features": {"peak_rss_mib": 600.0}}
    e2e = suite.end_to_end(rows, at_160m, big)

    per_tile = e2e["per_tile"]
    assert per_tile["stages"] == ["cloud_mask", "indices", "store_write"]
    assert per_tile["lcms_seconds"] == pytest.approx(3.0) and per_tile["eolearn_seconds"] == pytest.approx(164.4)
    assert per_tile["speedup"] == pytest.approx(164.4 / 3.0) and per_tile["speed_goal_met"] is True
    assert per_tile["memory_ratio"] == pytest.approx(700 / 2400) and per_tile["memory_goal_met"] is True
    assert per_tile["lcms_peak_stage"] == "store_write" and per_tile["eolearn_peak_stage"] == "cloud_mask"

    like = e2e["per_tile_like_for_like"]  # eo-learn's cloud mask at 160 m instead of 10 m
    assert like["eolearn_seconds"] == pytest.approx(16.4) and like["speedup"] == pytest.approx(16.4 / 3.0)
    assert like["goal"]["speedup_at_least"] == 4 and like["speed_goal_met"] is True
    assert like["memory_ratio"] == pytest.approx(700 / 1200) and like["memory_goal_met"] is False

    training = e2e["training"]
    assert training["speedup"] == pytest.approx(6.0) and training["speed_goal_met"] is True
    assert training["memory_goal_met"] is None  # no memory goal for training
    assert e2e["slower_than_eolearn"] == ["indices"]
    assert e2e["big_tile"]["goal_met"] is False  # the download's 1100 MiB is over 1 GiB

    text = suite.training_verdict(training, {"lcms": {"oa": 0.9}, "eolearn": {"oa": 0.95}})
    assert "6.0×" in text and "OA 0.9000 vs eo-learn 0.9500" in text and text.endswith("NOT met")
    assert "NOT met" in suite.verdict(like) and "0.58 of eo-learn's" in suite.verdict(like)
