"""What a run costs before it runs: tiles, pixel-dates, core-hours, wall time, EC2, S3 and Sentinel Hub units.

`lcms estimate CONFIG` (lcms/estimate_cli.py) prints `estimate(...)`; the figures come from a
calibration (`calibrate`, or `calibration_from_suite` from benchmarks/suite.py): per stage, the
seconds, stored bytes and memory peak per unit of work, measured on one tile here. The units:

- download, features: megapixel·dates (the tile's buffered pixels × acquisitions of the year);
- reference, sampling, prediction, postprocess, export: megapixels per tile and year;
- change: megapixels per tile and pair of years;
- merge, training: samples (sampling.count per tile and year, the merge years only);
- report: one per run (not measured by `calibrate` yet: named as not calibrated).

A tile stage's core-seconds are warm seconds × units plus, per worker process, the extra of its
first tile (imports, caches): `cold_extra_seconds`. Its wall time is core-seconds / (workers ×
threads × PARALLEL_EFFICIENCY), at most as parallel as it has tile-keys. AOI-level stages (merge,
export, report) run once in the flow's process: their wall time is their seconds; training uses every core
of one machine. `basis="cpu"` scales the calibration's CPU seconds instead of its wall seconds.

Plain functions: no Prefect, no printing. Prices come from lcms/data/*.yaml (or the user's file).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from lcms.stages import STAGES

if TYPE_CHECKING:
    from lcms.config import RunConfig
    from lcms.grid import AreaGrid

DATA = Path(__file__).resolve().parent / "data"
DEFAULT_PRICES = DATA / "prices.yaml"
DEFAULT_CALIBRATION = DATA / "calibration.json"  # measured on the development machine, see its "measured_on"
CALIBRATION_FILE = "calibration.json"  # under $LCMS_HOME

#: Share of the workers' cores that tile work keeps busy (scheduling, store I/O waits, stragglers).
#: Measured: benchmarks/suite.py's scaling from 1 to 2 worker processes gave 0.8-0.9 here.
PARALLEL_EFFICIENCY = 0.85

#: Sentinel-2 revisit with two satellites: every 5 days at the equator, more often where orbits overlap.
REVISIT_DAYS = 5.0

MEGA = 1e6

TILE_STAGES = ("download", "features", "reference", "sampling", "prediction", "postprocess", "change")
AOI_STAGES = ("merge", "training", "export", "report")
ORDER = tuple(name for name, stage in STAGES.items() if stage.has_flow)  # the chain's stages, in order
UNITS = {
    "download": "Mpx·date",
    "features": "Mpx·date",
    "reference": "Mpx",
    "sampling": "Mpx",
    "merge": "sample",
    "training": "sample",
    "prediction": "Mpx",
    "postprocess": "Mpx",
    "export": "Mpx",
    "change": "Mpx",
    "report": "run",
}


class EstimateError(ValueError):
    """A calibration or price file that cannot be used; the message says what to do."""


# --------------------------------------------------------------------------- the work of a config


def area_grid(cfg: RunConfig) -> AreaGrid:
    """The config's tiles, as `lcms grid` makes them (without touching the store)."""
    from lcms.grid import build_grid, load_aoi

    return build_grid(load_aoi(cfg.aoi), cfg.grid, progress=False)


def acquisitions_per_year(cfg: RunConfig) -> tuple[float, str]:
    """Dates a tile's download holds per year, and the rule that gave them.

    Synthetic: its `dates_per_year`. Sentinel Hub and files: one acquisition every REVISIT_DAYS (the
    catalog's same-orbit acquisitions are merged into one date by `time_difference_minutes`), of which
    the share passing the scene cloud filter `max_cloud_cover` is taken as max_cloud_cover itself (scene
    cloud cover taken as uniform on 0..1; a wet country's real share is lower, an arid one's higher).
    Tiles where two orbits overlap get up to twice as many dates: not counted.
    """
    source = cfg.download.source
    if source.kind == "synthetic":
        return float(source.dates_per_year), "synthetic source: dates_per_year"
    per_year = 365.0 / REVISIT_DAYS
    share = getattr(source, "max_cloud_cover", 1.0)
    return per_year * share, f"365 / {REVISIT_DAYS:g}-day revisit × {share:g} (scenes under max_cloud_cover)"


def samples_per_tile_year(cfg: RunConfig, tile_px: float) -> float:
    if cfg.sampling.count is not None:
        return float(min(cfg.sampling.count, tile_px))
    return float(cfg.sampling.fraction * tile_px)


def _block_share(cfg: RunConfig, stage: str, tile_px: list) -> float:
    """The share of a tile that a block-wise stage holds at once: its memory grows with the tile only up to one
    block (download, features and prediction work block by block), so a peak measured on a small tile is scaled
    to min(tile, block), not to the tile."""
    block = {
        "download": cfg.download.block_size,
        "features": cfg.features.block_size,
        "prediction": cfg.prediction.block_size,
    }.get(stage)
    if block is None or not tile_px or not all(tile_px):
        return 1.0
    return min(1.0, block * block / (tile_px[0] * tile_px[1]))


def workload(cfg: RunConfig, grid: AreaGrid, with_model_stages: bool = False) -> dict[str, Any]:
    """Per stage, the units of work of the config's run (see the module docstring), and the counts behind them."""
    from lcms.stages import get_stage

    pixels = [t.grid.width * t.grid.height for t in grid]
    mpx = sum(pixels) / MEGA
    dates, rule = acquisitions_per_year(cfg)
    years = len(cfg.years)
    merge_years = len(cfg.merge_years)
    pairs = 1 if cfg.change_years else 0
    samples = sum(samples_per_tile_year(cfg, p) for p in pixels)
    stages = {
        "download": (mpx * dates * years, len(grid) * years),
        "features": (mpx * dates * years, len(grid) * years),
        "reference": (mpx * years, len(grid) * years),
        "sampling": (mpx * years, len(grid) * years),
        "merge": (samples * merge_years, 1),
        "training": (samples * merge_years, 1),
        "prediction": (mpx * years, len(grid) * years),
        "postprocess": (mpx * years, len(grid) * years),
        "export": (mpx * years, 1),
        "change": (mpx * pairs, len(grid) * pairs),
        "report": (1.0, 1),
    }
    runs = {}
    for name in ORDER:
        runs_when = get_stage(name).runs_when
        model_stage = name not in ("download", "features")
        runs[name] = bool(runs_when(cfg)) or (with_model_stages and model_stage and (name != "change" or pairs))
    return {
        "tiles": len(grid),
        "tiles_per_zone": grid.counts_per_zone(),
        "tile_px": [grid.tile_ids and next(iter(grid)).grid.width, grid.tile_ids and next(iter(grid)).grid.height],
        "megapixels": mpx,
        "dates_per_year": dates,
        "dates_rule": rule,
        "years": years,
        "pixel_dates": mpx * MEGA * dates * years,
        "samples": samples * merge_years,
        "stages": {n: {"units": u, "tile_keys": k, "runs": runs[n]} for n, (u, k) in stages.items()},
    }


# --------------------------------------------------------------------------- Sentinel Hub processing units


def processing_units(
    width: int,
    height: int,
    input_bands: int,
    sample_type: str = "UINT16",
    samples: int = 1,
    orthorectify: bool = False,
    minimum: float = 0.005,
) -> float:
    """Processing units of one Process API request, by Sentinel Hub's published rule.

    Source: https://docs.sentinel-hub.com/api/latest/api/overview/processing-unit/ (read 2026-11-30):
    1 PU = 512 × 512 px output, 3 input bands (dataMask not counted), one data sample per pixel, an
    output of at most 16 bits. Factors: (width × height) / 512², at least 0.01; input bands / 3;
    ×2 for FLOAT32 output; × the number of data samples; ×2 with orthorectification. A request costs
    at least 0.005 PU (Process API).
    """
    area = max(width * height / (512 * 512), 0.01)
    fmt = 2.0 if sample_type.upper() == "FLOAT32" else 1.0
    pu = area * (input_bands / 3) * fmt * samples * (2.0 if orthorectify else 1.0)
    return max(pu, minimum)


def sentinelhub_download_pu(cfg: RunConfig, grid: AreaGrid, dates_per_year: float) -> dict[str, Any] | None:
    """PU of the download, None when the source is not Sentinel Hub.

    As tasks/download/masks.py and sentinelhub_source.py request them: each tile in blocks of
    download.block_size px, each block one request per date (split further past MAX_REQUEST_PX = 2500 px
    a side), UINT16 output, the collection's bands plus the layers of the cloud method (SCL; or CLM and
    CLP) and, with shadows under s2cloudless or sentinelhub, the two sun angles; dataMask is free.
    """
    source = cfg.download.source
    if source.kind != "sentinelhub":
        return None
    from lcms.sentinel2 import L1C_BANDS, L2A_BANDS

    side = min(cfg.download.block_size, 2500)  # 2500: SentinelHubSource.MAX_REQUEST_PX (not imported: sentinelhub-py)
    bands = len(L1C_BANDS if source.collection == "L1C" else L2A_BANDS)
    clouds = cfg.download.cloud_mask
    method = clouds.method or "s2cloudless"
    layers = {"scl": 1, "sentinelhub": 2}.get(method, 0)
    if clouds.shadows and method in ("s2cloudless", "sentinelhub"):
        layers += 2  # sunAzimuthAngles, sunZenithAngles
    per_date = 0.0
    requests = 0
    for tile in grid:
        w, h = tile.grid.width, tile.grid.height
        for x in range(0, w, side):
            for y in range(0, h, side):
                per_date += processing_units(min(side, w - x), min(side, h - y), bands + layers)
                requests += 1
    years = len(cfg.years)
    return {
        "input_bands": bands + layers,
        "requests": requests * dates_per_year * years,
        "processing_units": per_date * dates_per_year * years,
    }


# --------------------------------------------------------------------------- prices and calibration


def load_prices(path: str | Path | None = None) -> dict[str, Any]:
    """The price table: lcms/data/prices.yaml, or the user's file with the same fields (it replaces
    the entries it names)."""
    prices = yaml.safe_load(DEFAULT_PRICES.read_text())
    if path is None:
        return prices
    path = Path(path)
    if not path.is_file():
        raise EstimateError(f"price file {path} does not exist; give a YAML file shaped like {DEFAULT_PRICES}")
    try:
        user = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise EstimateError(f"price file {path} is not valid YAML: {exc}") from None
    if not isinstance(user, dict):
        raise EstimateError(f"price file {path} must hold a mapping like {DEFAULT_PRICES}")
    for section in ("ec2", "s3"):
        given = dict(user.get(section) or {})
        if section == "ec2" and "instances" in given:  # named instances replace, the others stay
            given["instances"] = {**prices["ec2"]["instances"], **(given["instances"] or {})}
        prices[section] = {**prices.get(section, {}), **given}
    for key, value in user.items():
        if key not in ("ec2", "s3"):
            prices[key] = value
    return prices


def load_calibration(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise EstimateError(
            f"calibration {path} cannot be read ({exc}); run `lcms estimate CONFIG --calibrate`"
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("stages"), dict):
        raise EstimateError(f"calibration {path} has no 'stages'; run `lcms estimate CONFIG --calibrate` to remake it")
    return data


def _rate(calibration: Mapping, stage: str, field: str) -> float | None:
    entry = calibration["stages"].get(stage) or {}
    value = entry.get(field)
    return None if value is None else float(value)


# --------------------------------------------------------------------------- the estimate


def cluster_shape(cfg: RunConfig, prices: Mapping, workers: int | None, instance_type: str | None) -> dict[str, Any]:
    """Workers, threads per worker, and the instance type (None for a local cluster without --instance-type)."""
    cluster = cfg.cluster
    kind = cluster.kind
    n = (
        workers
        if workers is not None
        else (cluster.adaptive_max or cluster.n_workers if kind == "ec2" else cluster.n_workers)
    )
    itype = instance_type or (cluster.instance_type if kind == "ec2" else None)
    if itype is not None and itype not in prices["ec2"]["instances"]:
        known = ", ".join(sorted(prices["ec2"]["instances"]))
        raise EstimateError(f"instance type {itype!r} is not in the price table ({known}); add it with --prices FILE")
    if itype is not None:
        threads = int(prices["ec2"]["instances"][itype]["vcpus"])  # one Dask worker per instance, a thread per vCPU
        machine_cpus = threads
        memory = float(prices["ec2"]["instances"][itype]["memory_gib"]) * 2**30
    else:
        threads = cluster.threads_per_worker
        machine_cpus = os.cpu_count() or 1
        memory = None
    return {
        "kind": "ec2" if itype else kind,
        "workers": max(int(n), 1),
        "threads_per_worker": threads,
        "instance_type": itype,
        "machine_cpus": machine_cpus,  # where training runs, LightGBM on every core
        "worker_memory_bytes": memory,
    }


def estimate(
    cfg: RunConfig,
    calibration: Mapping,
    prices: Mapping,
    grid: AreaGrid | None = None,
    workers: int | None = None,
    instance_type: str | None = None,
    with_model_stages: bool = False,
    basis: str = "wall",
) -> dict[str, Any]:
    """Everything `lcms estimate` prints, as one dict (the --json output).

    `basis` "wall": the calibration's wall seconds (right when the machine was otherwise idle, or when the
    run will share a machine the way the calibration did); "cpu": its CPU seconds (all threads of the
    process), which a busy calibration machine does not stretch: the better guide to dedicated instances.
    """
    if basis not in ("wall", "cpu"):
        raise EstimateError(f"basis must be 'wall' or 'cpu', not {basis!r}")
    rate_field, cold_field = (
        ("seconds_per_unit", "cold_extra_seconds")
        if basis == "wall"
        else ("cpu_seconds_per_unit", "cold_extra_cpu_seconds")
    )
    grid = grid if grid is not None else area_grid(cfg)
    work = workload(cfg, grid, with_model_stages)
    shape = cluster_shape(cfg, prices, workers, instance_type)
    slots = shape["workers"] * shape["threads_per_worker"]
    calibration_cpus = int(calibration.get("measured_on", {}).get("cpus") or 1)
    s3_price = float(prices["s3"]["usd_per_gb_month"])
    rows = []
    for name in ORDER:
        w = work["stages"][name]
        rate = _rate(calibration, name, rate_field)
        cold = _rate(calibration, name, cold_field) or 0.0
        bytes_rate = _rate(calibration, name, "bytes_per_unit")
        peak_rate = _rate(calibration, name, "peak_bytes_per_unit")
        row = {
            "stage": name,
            "unit": UNITS[name],
            "units": w["units"],
            "runs": w["runs"],
            "calibrated": rate is not None,
        }
        if rate is None or not w["runs"]:
            row.update(core_seconds=None, wall_seconds=None, stored_bytes=None, peak_bytes=None)
            rows.append(row)
            continue
        if name == "report":
            seconds = rate  # once per run
        else:
            seconds = rate * w["units"]
        if name in TILE_STAGES and w["tile_keys"]:
            processes = min(shape["workers"], w["tile_keys"])
            seconds += cold * processes
            parallel = min(slots, w["tile_keys"]) * PARALLEL_EFFICIENCY
            wall = seconds / max(parallel, 1e-9) if w["tile_keys"] > 1 else seconds
        elif name == "training":
            # LightGBM used every core of the calibration machine: core-seconds are its wall × those cores (its
            # CPU seconds already are), and the run's training uses every core of one machine.
            seconds = (seconds + cold) * (calibration_cpus if basis == "wall" else 1)
            wall = seconds / (min(shape["machine_cpus"], 64) * PARALLEL_EFFICIENCY)
        else:
            seconds += cold
            wall = seconds
        per_key = w["units"] / w["tile_keys"] if w["tile_keys"] else 0.0
        memory_units = per_key * _block_share(cfg, name, work["tile_px"])
        row.update(
            core_seconds=seconds,
            wall_seconds=wall,
            stored_bytes=None if bytes_rate is None else bytes_rate * w["units"],
            peak_bytes=None if peak_rate is None else peak_rate * memory_units,
        )
        if row["stored_bytes"] is not None:
            row["s3_usd_per_month"] = row["stored_bytes"] / 1e9 * s3_price
        rows.append(row)
    counted = [r for r in rows if r["core_seconds"] is not None]
    memory = shape["worker_memory_bytes"]
    too_big = [
        r["stage"]
        for r in counted
        if memory
        and r["stage"] in TILE_STAGES
        and r["peak_bytes"]
        and r["peak_bytes"] * shape["threads_per_worker"] > memory
    ]
    core_hours = sum(r["core_seconds"] for r in counted) / 3600
    wall_hours = sum(r["wall_seconds"] for r in counted) / 3600
    stored = sum(r["stored_bytes"] or 0 for r in counted)
    result = {
        "config": cfg.name,
        "years": list(cfg.years),
        "workload": work,
        "cluster": shape,
        "parallel_efficiency": PARALLEL_EFFICIENCY,
        "basis": basis,
        "stages": rows,
        "not_calibrated": [r["stage"] for r in rows if r["runs"] and not r["calibrated"]],
        # Stages whose tiles, one per thread, need more memory than a worker has: use fewer threads per worker.
        "memory_short": too_big,
        "core_hours": core_hours,
        "wall_hours": wall_hours,
        "stored_bytes": stored,
        "s3_usd_per_month": stored / 1e9 * s3_price,
        "calibration": calibration.get("measured_on", {}),
        "prices": {"ec2": prices["ec2"].get("source"), "s3": prices["s3"].get("source")},
    }
    if shape["instance_type"]:
        price = float(prices["ec2"]["instances"][shape["instance_type"]]["usd_per_hour"])
        # Workers are paid while the run lasts; the scheduler's instance too (a small one, priced alike).
        scheduler = getattr(cfg.cluster, "scheduler_instance_type", None)
        scheduler_price = float(prices["ec2"]["instances"].get(scheduler, {}).get("usd_per_hour", 0.0))
        result["ec2_usd"] = wall_hours * (shape["workers"] * price + scheduler_price)
        result["ec2_usd_per_hour"] = shape["workers"] * price + scheduler_price
        result["scheduler_instance_type"] = scheduler if scheduler_price else None
    pu = sentinelhub_download_pu(cfg, grid, work["dates_per_year"])
    if pu is not None:
        result["sentinelhub"] = pu
    return result


# --------------------------------------------------------------------------- calibration


def machine() -> dict[str, Any]:
    return {
        "machine": platform.node(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def calibration_config(cfg: RunConfig, store_url: str, reference_path: str, tile_size_m: float) -> RunConfig:
    """The config's own settings on one tile of `tile_size_m` at the AOI's first tile, with the synthetic
    source (as many dates as the config's source gives a year), two years, a local store and the given
    reference polygons."""
    from lcms.config import parse_config

    first = next(iter(area_grid(cfg)))
    x0, y0 = first.core_bounds[0], first.core_bounds[1]
    dates, _ = acquisitions_per_year(cfg)
    data = cfg.model_dump(mode="json", exclude_none=True)
    year = cfg.years[0]
    data["years"] = [year, year + 1]
    data["aoi"] = {"bbox": [x0 + 1, y0 + 1, x0 + tile_size_m - 1, y0 + tile_size_m - 1], "bbox_crs": first.grid.crs}
    data["grid"] = {**data["grid"], "tile_size_m": tile_size_m}
    data["store"] = {"url": store_url}
    data["cluster"] = {"kind": "local", "n_workers": 1}
    source = cfg.download.source
    synthetic = {
        "kind": "synthetic",
        "collection": source.collection,
        "first_year": year,
        "dates_per_year": max(1, min(365, round(dates))),
    }
    if source.kind == "synthetic":
        synthetic = {**source.model_dump(mode="json"), "first_year": year}
    data["download"] = {**data["download"], "source": synthetic}
    data["reference"] = {**data["reference"], "path": reference_path, "paths": None, "reviews": False}
    data["reference"].pop("paths")
    data["merge"] = {**data["merge"], "years": [year]}
    data["change"] = {**data["change"], "years": [year, year + 1]}
    data["change"].pop("postgis", None)
    data["export"] = {**data["export"], "url": None}
    data["export"].pop("url")
    return parse_config(data, source="calibration config")


def _du(store, path: str) -> int:
    return int(store.fs.du(path)) if store.fs.exists(path) else 0


def calibrate(cfg: RunConfig, folder: Path, tile_size_m: float = 2500.0, progress=None) -> dict[str, Any]:
    """Run every stage on one tile in `folder` (a scratch store), timing each; return the calibration.

    Tile stages run for two years: the first year's seconds less the second's are the cold extra (imports,
    caches) a worker pays on its first tile; the second's are the warm seconds per unit. Memory peaks are
    tracemalloc's (numpy's buffers included) in a third, untimed pass of the second year.
    """
    import tracemalloc

    from lcms.config import SyntheticSourceConfig
    from lcms.selection import load_grid
    from lcms.stages import get_stage
    from lcms.store import TileStore
    from tasks.download.synthetic import SyntheticScene, area_reference_polygons

    say = progress or (lambda message: None)
    start_load = [round(v, 2) for v in os.getloadavg()]
    folder.mkdir(parents=True, exist_ok=True)
    tile_size_m = min(tile_size_m, cfg.grid.tile_size_m)
    cal = calibration_config(cfg, str(folder / "store"), str(folder / "reference.gpkg"), tile_size_m)
    store = TileStore.from_config(cal.store, cal.product)
    grid = load_grid(cal, store)
    if len(grid) != 1:
        raise EstimateError(f"the calibration tile made {len(grid)} tiles, not one")
    tile = next(iter(grid))
    scene = SyntheticScene(**cal.download.source.model_dump(exclude={"kind"}))
    assert isinstance(cal.download.source, SyntheticSourceConfig)
    area_reference_polygons(scene, [tile.grid], cal.years[0], 0.6, 0.1).to_file(
        folder / "reference.gpkg", driver="GPKG"
    )

    mpx = tile.grid.width * tile.grid.height / MEGA
    dates = cal.download.source.dates_per_year
    units_of = {"download": mpx * dates, "features": mpx * dates}
    timings: dict[str, list[tuple[float, float]]] = {}  # per stage: (wall, CPU) seconds, first then second run
    y1, y2 = cal.years

    def run_tile(name: str, key) -> tuple[float, float]:
        stage = get_stage(name)
        return _timed(lambda: stage.run_tile(store, tile, key, stage.settings(cal), overwrite=True))

    def report(name: str) -> None:
        (w1, _), (w2, c2) = timings[name]
        say(f"{name}: {w1:.2f} s, then {w2:.2f} s ({c2:.2f} s CPU)")

    for name in ("download", "features", "reference", "sampling"):
        timings[name] = [run_tile(name, y1), run_tile(name, y2)]
        report(name)
    failed = None
    try:
        timings["merge"], timings["training"] = _time_model(store, cal, tile)
        report("merge")
        report("training")
        for name in ("prediction", "postprocess"):
            timings[name] = [run_tile(name, y1), run_tile(name, y2)]
            report(name)
        timings["export"] = _time_export(store, cal, grid)
        report("export")
        timings["change"] = [run_tile("change", (y1, y2)), run_tile("change", (y1, y2))]
        report("change")
    except Exception as exc:  # the stages before are measured; the estimate names the others as not calibrated
        failed = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        say(f"stopped after {list(timings)[-1]}: {failed}")

    peaks: dict[str, int] = {}
    for name in ("download", "features", "reference", "sampling", "prediction", "postprocess", "change"):
        if name not in timings:
            continue
        key = (y1, y2) if name == "change" else y2
        tracemalloc.start()
        get_stage(name).run_tile(store, tile, key, get_stage(name).settings(cal), overwrite=True)
        peaks[name] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()

    samples = _merged_samples(store, cal)
    stages: dict[str, dict[str, Any]] = {}
    for name, ((cold, cold_cpu), (warm, warm_cpu)) in timings.items():
        unit = UNITS[name]
        units = units_of.get(name, samples if unit == "sample" else mpx)
        if name in TILE_STAGES:
            key = f"{y1}-{y2}" if name == "change" else y2
            stored = _du(store, store.tile_dir(name, key, tile.tile_id))
        else:
            stored = None
        stages[name] = {
            "unit": unit,
            "units": units,
            "seconds": warm,
            "seconds_per_unit": warm / units,
            "cold_extra_seconds": max(cold - warm, 0.0),
            # CPU seconds of the process, all its threads: what a busy machine does not stretch.
            "cpu_seconds_per_unit": warm_cpu / units,
            "cold_extra_cpu_seconds": max(cold_cpu - warm_cpu, 0.0),
            "bytes_per_unit": None if stored is None else stored / units,
            "peak_bytes_per_unit": peaks[name] / units if name in peaks else None,
        }
    return {
        "measured_on": {
            **machine(),
            "load_average_before": start_load,
            "config": cfg.name,
            "tile_px": [tile.grid.width, tile.grid.height],
            "dates_per_year": dates,
            "source": "synthetic (SyntheticScene), the config's other settings",
            "how": "lcms estimate --calibrate: each stage's own functions on one tile, in one process",
            "failed": failed,
        },
        "stages": stages,
    }


def _timed(work) -> tuple[float, float]:
    """Wall and CPU seconds (of this process, every thread) of `work()`."""
    wall, cpu = time.perf_counter(), time.process_time()
    work()
    return time.perf_counter() - wall, time.process_time() - cpu


def _time_model(store, cal: RunConfig, tile):
    """Merge and training on the tile's samples (once per run: no second, warm run)."""
    from tasks.merge.dataset import merge_block_px, merge_samples
    from tasks.training.stage import training_stage

    widths = {tile.tile_id: tile.grid.width}
    merged = _timed(
        lambda: merge_samples(store, [tile.tile_id], cal.merge_years, widths, cal.merge, merge_block_px(cal))
    )
    trained = _timed(lambda: training_stage(store, cal.product, cal.training))
    return [merged, merged], [trained, trained]


def _merged_samples(store, cal: RunConfig) -> int:
    record = store.product_record("merge", cal.product)
    return int(record.extra.get("n_samples", 1)) if record is not None else 1


def _time_export(store, cal: RunConfig, grid) -> list[tuple[float, float]]:
    """The maps and imagery composites of each year, into the scratch store's maps folder."""
    from tasks.export.imagery import export_imagery_year
    from tasks.export.maps import export_year, map_groups

    def export(year: int) -> None:
        current = store.product_record("training", cal.product)
        export_year(store, grid, year, cal.export, cal.product, current.attempt if current else None)
        if cal.export.imagery.enabled:
            export_imagery_year(store, grid, year, cal.export, map_groups(grid, cal.export))

    return [_timed(lambda y=year: export(y)) for year in cal.years]


def write_calibration(calibration: Mapping, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(calibration, indent=1, default=float) + "\n")
    return path


def calibration_from_suite(suite: Mapping) -> dict[str, Any]:
    """A calibration from benchmarks/suite.py's JSON (its `--out`), for `lcms estimate --calibration`.

    The suite times parts of stages on one `size`² tile with `dates_total` dates, one thread per part.
    download = cloud mask + half the store writes; features = filter + indices + interpolation + the
    other half of the writes + the store reads; sampling = the suite's sampling (reference included);
    training per sample, prediction per Mpx. The suite measures no cold extra, no stored bytes per stage
    (only the total) and not merge, postprocess, export, change, report: those are left out (`lcms
    estimate` names them as not calibrated).
    """
    tile = suite["tile"]
    mpx = tile["size"] ** 2 / MEGA
    mpx_dates = mpx * tile["dates_total"]
    by = {row["stage"]: row["lcms"] for row in suite["stages"]}

    def seconds(*names: str, half: tuple[str, ...] = ()) -> float:
        return sum(by[n]["seconds"] for n in names) + sum(by[n]["seconds"] / 2 for n in half)

    def peak(*names: str) -> float:
        return max(by[n]["peak_rss_mib"] for n in names) * 2**20

    def cpu(*names: str, half: tuple[str, ...] = ()) -> float:
        def of(n: str) -> float:
            return by[n].get("cpu_seconds", by[n]["seconds"])

        return sum(of(n) for n in names) + sum(of(n) / 2 for n in half)

    cpu_seconds = {
        "download": cpu("cloud_mask", half=("store_write",)),
        "features": cpu("filter", "indices", "interpolation", "store_read", half=("store_write",)),
        "sampling": cpu("sampling"),
        "training": cpu("training"),
        "prediction": cpu("prediction"),
    }
    stages = {
        "download": (seconds("cloud_mask", half=("store_write",)), mpx_dates, peak("cloud_mask", "store_write")),
        "features": (
            seconds("filter", "indices", "interpolation", "store_read", half=("store_write",)),
            mpx_dates,
            peak("filter", "indices", "interpolation"),
        ),
        "sampling": (seconds("sampling"), mpx, peak("sampling")),
        "training": (seconds("training"), by["training"]["samples"], peak("training")),
        "prediction": (seconds("prediction"), mpx, peak("prediction")),
    }
    return {
        "measured_on": {
            "machine": suite.get("machine", {}).get("platform"),
            "cpus": suite.get("machine", {}).get("cpus"),
            "load_average": suite.get("machine", {}).get("load_average_start"),
            "date": suite.get("date"),
            "tile_px": [tile["size"], tile["size"]],
            "dates_per_year": tile["dates_total"],
            "source": "synthetic (benchmarks/suite.py)",
            "how": "lcms.estimate.calibration_from_suite",
        },
        "stages": {
            name: {
                "unit": UNITS[name],
                "units": units,
                "seconds": secs,
                "seconds_per_unit": secs / units,
                "cold_extra_seconds": 0.0,
                "cpu_seconds_per_unit": cpu_seconds[name] / units,
                "cold_extra_cpu_seconds": 0.0,
                "bytes_per_unit": None,
                "peak_bytes_per_unit": memory / units,
            }
            for name, (secs, units, memory) in stages.items()
        },
    }


def fmt_duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "–"
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"
