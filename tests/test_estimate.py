"""`lcms estimate` (issue 23 §3): the cost and time of a config's run before it runs.

- the arithmetic against hand computations: tiles per zone against `lcms grid`, pixel-dates, Sentinel Hub
  processing units on the worked examples of Sentinel Hub's own documentation, core-hours, wall time,
  EC2 and S3 cost from a calibration and a price file written here;
- bad input (a missing calibration, an unknown instance type) gets one line saying what to do;
- the ±30 % check: `lcms estimate --calibrate` on the small demo (tests/small_demo.py: 2 tiles, 8 dates, two
  years, here on one Dask worker), then `lcms run` on it (without export and report). Compared: the sum over
  the run's tile-stage log lines ("<stage> <tile>/<year> done in X s", the seconds of `Stage.run_tile` on the
  Dask worker) against the estimate's core-seconds of the same stages (download, features, reference,
  sampling, prediction, postprocess, change), totals within ±30 %. The AOI-level stages (merge, training,
  export, report) log no seconds of their own and are left out; the per-stage ratios are printed (`pytest -s`).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import geopandas as gpd
import pytest
import yaml
from small_demo import small_demo
from typer.testing import CliRunner

from lcms import estimate as E
from lcms.cli import app
from lcms.config import parse_config

LCMS = [sys.executable, "-m", "lcms.cli"]


def config(tmp_path: Path, **changes) -> object:
    data = {
        "name": "tiny",
        "aoi": {"bbox": [460_000, 5_090_000, 467_500, 5_095_000], "bbox_crs": "EPSG:32633"},
        "years": [2023, 2024],
        "grid": {"tile_size_m": 2500, "resolution_m": 10, "buffer_m": 50},
        "store": {"url": str(tmp_path / "store")},
        "download": {"source": {"kind": "synthetic", "dates_per_year": 12}},
        "reference": {"path": str(tmp_path / "reference.gpkg")},
        "sampling": {"count": 4000},
    }
    for key, value in changes.items():
        data[key] = value
    return parse_config(data)


def environment(folder: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API") and k != "PREFECT_HOME"}
    (folder / "systmp").mkdir(exist_ok=True)
    return {**env, "LCMS_HOME": str(folder / "home"), "TMPDIR": str(folder / "systmp"), "COLUMNS": "200"}


def lcms(folder: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*LCMS, *args], capture_output=True, text=True, env=environment(folder), timeout=timeout, cwd=folder
    )


# --------------------------------------------------------------------------- the arithmetic


def test_tiles_and_pixel_dates_by_hand(tmp_path):
    cfg = config(tmp_path)
    work = E.workload(cfg, E.area_grid(cfg))
    # 7.5 km × 5 km in 2.5 km tiles: 3 × 2 tiles, each (2500 + 2 × 50) / 10 = 260 px a side.
    assert work["tiles"] == 6 and work["tiles_per_zone"] == {"33N": 6}
    assert work["tile_px"] == [260, 260]
    assert work["pixel_dates"] == 6 * 260 * 260 * 12 * 2
    stages = work["stages"]
    assert stages["download"]["units"] == pytest.approx(6 * 260 * 260 / 1e6 * 12 * 2)
    assert stages["prediction"]["units"] == pytest.approx(6 * 260 * 260 / 1e6 * 2)
    assert stages["change"]["units"] == pytest.approx(6 * 260 * 260 / 1e6)  # one pair of years
    assert stages["training"]["units"] == 6 * 4000 * 2  # sampling.count per tile and merge year
    assert stages["download"]["tile_keys"] == 12 and stages["change"]["tile_keys"] == 6


def test_tiles_per_zone_match_lcms_grid_across_two_zones(tmp_path):
    # 11.8-12.2 °E straddles the border of UTM zones 32 and 33 at 12 °E.
    cfg_data = {
        "name": "two-zones",
        "aoi": {"bbox": [11.8, 46.0, 12.2, 46.1]},
        "years": [2024],
        "grid": {"tile_size_m": 10_000, "resolution_m": 10, "buffer_m": 100},
        "store": {"url": str(tmp_path / "store")},
    }
    path = tmp_path / "two-zones.yaml"
    path.write_text(yaml.safe_dump(cfg_data))
    made = CliRunner().invoke(app, ["grid", str(path), "--output", str(tmp_path / "grid.gpkg")])
    assert made.exit_code == 0, made.output
    by_lcms_grid = gpd.read_file(tmp_path / "grid.gpkg", layer="tiles")
    zones = by_lcms_grid["tile_id"].str.split("_").str[0].value_counts().to_dict()
    work = E.workload(parse_config(cfg_data), E.area_grid(parse_config(cfg_data)))
    assert set(zones) == {"32N", "33N"}
    assert work["tiles_per_zone"] == zones
    # Every tile is 1020 px a side (10 km + 2 × 100 m at 10 m); the default synthetic source has 48 dates a year.
    assert work["pixel_dates"] == len(by_lcms_grid) * 1020 * 1020 * 48


def test_acquisitions_rule():
    cfg = parse_config(
        {
            "name": "sh",
            "aoi": {"bbox": [460_000, 5_090_000, 470_000, 5_100_000], "bbox_crs": "EPSG:32633"},
            "years": [2024],
            "download": {"source": {"kind": "sentinelhub", "max_cloud_cover": 0.8}},
        }
    )
    dates, rule = E.acquisitions_per_year(cfg)
    assert dates == pytest.approx(365 / 5 * 0.8)
    assert "revisit" in rule


def test_processing_units_on_sentinel_hubs_worked_examples():
    # https://www.sentinel-hub.com/faq/how-can-i-know-how-many-processing-units-i-need (example 1): 2000 × 2000 px,
    # 2 bands, 16 bit, orthorectified: (4 000 000 / 262 144) × (2 / 3) × 1 × 1 × 2 = 20.34 PU; 500 × 500 px: 1.27 PU.
    assert E.processing_units(2000, 2000, 2, orthorectify=True) == pytest.approx(20.34, abs=0.01)
    assert E.processing_units(500, 500, 2, orthorectify=True) == pytest.approx(1.27, abs=0.01)
    # The Sentinel Hub forum's 20 × 20 px NDVI (2 bands): the area factor's minimum 0.01 × 2/3 = 0.0067 PU.
    assert E.processing_units(20, 20, 2) == pytest.approx(0.01 * 2 / 3)
    # FLOAT32 output doubles; a request costs at least 0.005 PU.
    assert E.processing_units(512, 512, 3, sample_type="FLOAT32") == pytest.approx(2.0)
    assert E.processing_units(10, 10, 1) == 0.005


def test_sentinel_hub_units_of_a_config_by_hand(tmp_path):
    cfg = parse_config(
        {
            "name": "sh",
            "aoi": {"bbox": [460_000, 5_090_000, 480_000, 5_100_000], "bbox_crs": "EPSG:32633"},
            "years": [2023, 2024],
            "grid": {"tile_size_m": 10_000, "resolution_m": 10, "buffer_m": 100},
            "download": {
                "source": {"kind": "sentinelhub", "collection": "L1C", "max_cloud_cover": 0.5},
                "cloud_mask": {"method": "s2cloudless", "shadows": True},
                "block_size": 512,
            },
        }
    )
    grid = E.area_grid(cfg)
    assert len(grid) == 2
    pu = E.sentinelhub_download_pu(cfg, grid, 365 / 5 * 0.5)
    # Per tile and date: 1020 px in blocks of 512 + 508 → 4 requests whose areas add up to 1020²; 13 L1C bands
    # + the two sun angles (shadows) = 15 input bands, dataMask free.
    per_tile_date = 1020 * 1020 / 512**2 * 15 / 3
    assert pu["input_bands"] == 15
    assert pu["requests"] == pytest.approx(2 * 4 * 36.5 * 2)
    assert pu["processing_units"] == pytest.approx(2 * 36.5 * 2 * per_tile_date)


def test_core_hours_wall_time_and_costs_by_hand(tmp_path):
    cfg = config(tmp_path, cluster={"kind": "ec2", "instance_type": "m6i.xlarge", "n_workers": 3})
    calibration = {
        "measured_on": {"cpus": 2, "machine": "test"},
        "stages": {
            "download": {
                "seconds_per_unit": 2.0,
                "cold_extra_seconds": 5.0,
                "bytes_per_unit": 1e6,
                "peak_bytes_per_unit": 1e7,
            },
            "features": {"seconds_per_unit": 0.5, "cold_extra_seconds": 0.0, "bytes_per_unit": 5e5},
            "training": {"seconds_per_unit": 0.001},
        },
    }
    prices_file = tmp_path / "prices.yaml"
    prices_file.write_text(
        yaml.safe_dump(
            {
                "ec2": {"instances": {"test.large": {"vcpus": 4, "memory_gib": 8, "usd_per_hour": 1.0}}},
                "s3": {"usd_per_gb_month": 0.02},
            }
        )
    )
    prices = E.load_prices(prices_file)
    assert prices["ec2"]["instances"]["m6i.large"]["usd_per_hour"] > 0  # the packaged entries stay
    result = E.estimate(cfg, calibration, prices, instance_type="test.large", workers=2)
    rows = {r["stage"]: r for r in result["stages"]}
    mpx_dates = 6 * 0.0676 * 12 * 2  # 6 tiles of 260² px, 12 dates, 2 years
    tile_years = 12
    slots = 2 * 4  # 2 workers × 4 vCPUs
    download = 2.0 * mpx_dates + 5.0 * 2  # + the cold extra of each of the 2 worker processes
    features = 0.5 * mpx_dates
    training = 0.001 * 6 * 4000 * 2 * 2  # × the calibration's 2 cpus
    assert rows["download"]["core_seconds"] == pytest.approx(download)
    assert rows["download"]["wall_seconds"] == pytest.approx(download / (slots * E.PARALLEL_EFFICIENCY))
    assert rows["features"]["wall_seconds"] == pytest.approx(features / (slots * E.PARALLEL_EFFICIENCY))
    assert rows["training"]["core_seconds"] == pytest.approx(training)
    assert rows["training"]["wall_seconds"] == pytest.approx(training / (4 * E.PARALLEL_EFFICIENCY))
    assert rows["download"]["peak_bytes"] == pytest.approx(1e7 * mpx_dates / tile_years)
    assert rows["prediction"]["core_seconds"] is None and "prediction" in result["not_calibrated"]
    assert result["core_hours"] == pytest.approx((download + features + training) / 3600)
    wall_hours = (download + features) / (slots * E.PARALLEL_EFFICIENCY) / 3600 + training / (4 * 0.85) / 3600
    assert result["wall_hours"] == pytest.approx(wall_hours)
    # 2 workers at $1/h, and the config's scheduler (m6i.large, the packaged price) for as long.
    assert result["ec2_usd"] == pytest.approx(
        wall_hours * (2 * 1.0 + prices["ec2"]["instances"]["m6i.large"]["usd_per_hour"])
    )
    stored = 1e6 * mpx_dates + 5e5 * mpx_dates
    assert result["stored_bytes"] == pytest.approx(stored)
    assert result["s3_usd_per_month"] == pytest.approx(stored / 1e9 * 0.02)


def test_the_cpu_basis_scales_cpu_seconds(tmp_path):
    cfg = config(tmp_path)  # local cluster: 2 workers × 1 thread
    calibration = {
        "measured_on": {"cpus": 2},
        "stages": {
            "download": {"seconds_per_unit": 9.0, "cpu_seconds_per_unit": 1.5, "cold_extra_cpu_seconds": 2.0},
            "training": {"seconds_per_unit": 9.0, "cpu_seconds_per_unit": 0.002},
        },
    }
    result = E.estimate(cfg, calibration, E.load_prices(), basis="cpu")
    rows = {r["stage"]: r for r in result["stages"]}
    mpx_dates = 6 * 0.0676 * 12 * 2
    assert rows["download"]["core_seconds"] == pytest.approx(1.5 * mpx_dates + 2.0 * 2)
    assert rows["training"]["core_seconds"] == pytest.approx(0.002 * 6 * 4000 * 2)  # CPU seconds: not × cpus
    assert "ec2_usd" not in result  # a local cluster without --instance-type
    with pytest.raises(E.EstimateError, match="basis"):
        E.estimate(cfg, calibration, E.load_prices(), basis="both")


def test_calibration_from_the_suites_json():
    suite = json.loads((Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "suite.json").read_text())
    cal = E.calibration_from_suite(suite)
    rows = {r["stage"]: r for r in suite["stages"]}
    mpx_dates = suite["tile"]["size"] ** 2 / 1e6 * suite["tile"]["dates_total"]
    expected = (rows["cloud_mask"]["lcms"]["seconds"] + rows["store_write"]["lcms"]["seconds"] / 2) / mpx_dates
    assert cal["stages"]["download"]["seconds_per_unit"] == pytest.approx(expected)
    per_sample = rows["training"]["lcms"]["seconds"] / rows["training"]["lcms"]["samples"]
    assert cal["stages"]["training"]["seconds_per_unit"] == pytest.approx(per_sample)


# --------------------------------------------------------------------------- bad input


def test_bad_input_gets_one_line(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "tiny",
                "aoi": {"bbox": [460_000, 5_090_000, 462_500, 5_092_500], "bbox_crs": "EPSG:32633"},
                "years": [2024],
            }
        )
    )
    missing = lcms(tmp_path, "estimate", str(path), "--calibration", str(tmp_path / "nope.json"))
    assert missing.returncode == 2
    assert "nope.json cannot be read" in missing.stderr and "--calibrate" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
    (tmp_path / "cal.json").write_text(json.dumps({"stages": {}, "measured_on": {}}))
    unknown = lcms(
        tmp_path, "estimate", str(path), "--calibration", str(tmp_path / "cal.json"), "--instance-type", "x9.huge"
    )
    assert unknown.returncode == 2 and "'x9.huge' is not in the price table" in unknown.stderr
    assert "--prices" in unknown.stderr


# --------------------------------------------------------------------------- against a real run

TILE_LINE = re.compile(r"^\S+ (\w+) (\S+)/(\S+) done in ([0-9.]+) s$", re.M)
RUN_STAGES = (
    "download",
    "features",
    "reference",
    "sampling",
    "merge",
    "training",
    "prediction",
    "postprocess",
    "change",
)
COMPARED = ("download", "features", "reference", "sampling", "prediction", "postprocess", "change")


def test_estimate_of_the_small_demo_is_within_30_percent_of_its_run(tmp_path):
    folder = tmp_path
    demo = small_demo("demo.yaml", folder)
    # One worker: its tiles run one after another in one process, as the calibration's do, so that under
    # load both are slowed alike (two workers on two busy cores would stretch each tile's seconds).
    data = yaml.safe_load(demo.read_text())
    data["cluster"] = {"kind": "local", "n_workers": 1, "threads_per_worker": 1}
    demo.write_text(yaml.safe_dump(data))
    began = time.perf_counter()
    calibrated = lcms(folder, "estimate", str(demo), "--calibrate", "--json")
    calibration_seconds = time.perf_counter() - began
    assert calibrated.returncode == 0, calibrated.stderr[-3000:]
    estimate = json.loads(calibrated.stdout)
    assert (folder / "home" / "calibration.json").is_file()
    assert not list((folder / "home").glob("calibration-*")), "the scratch store is removed"
    made = lcms(folder, "synthetic-reference", str(demo), "--fraction", "0.6")
    assert made.returncode == 0, made.stderr[-3000:]
    # Export and report are AOI-level stages without per-tile seconds: not run, to keep the test short.
    run = lcms(folder, "run", str(demo), "--stages", ",".join(RUN_STAGES), timeout=400)
    assert run.returncode == 0, run.stderr[-3000:]
    print(
        f"\ncalibration took {calibration_seconds:.0f} s, reference and run {time.perf_counter() - began:.0f} s in all"
    )

    measured: dict[str, float] = {}
    for stage, _tile, _key, seconds in TILE_LINE.findall(run.stderr):
        measured[stage] = measured.get(stage, 0.0) + float(seconds)
    rows = {r["stage"]: r for r in estimate["stages"]}
    assert set(COMPARED) <= set(measured), (sorted(measured), run.stderr[-2000:])
    print(f"\nload average {os.getloadavg()}; calibration {estimate['calibration']}")
    for stage in COMPARED:
        print(
            f"{stage:12} run {measured[stage]:6.1f} s, estimate {rows[stage]['core_seconds']:6.1f} s, "
            f"ratio {rows[stage]['core_seconds'] / measured[stage]:.2f}"
        )
    run_total = sum(measured[s] for s in COMPARED)
    estimated_total = sum(rows[s]["core_seconds"] for s in COMPARED)
    print(
        f"{'total':12} run {run_total:6.1f} s, estimate {estimated_total:6.1f} s, "
        f"ratio {estimated_total / run_total:.2f}"
    )
    assert 0.7 <= estimated_total / run_total <= 1.3
