"""`lcms estimate CONFIG`: the cost and time of a config's run before it runs (issue 23 §3).

`register(app)` adds the command to `lcms`. The model is in lcms/estimate.py (plain functions); this
module finds the calibration and the prices, calls it and prints the table. `--calibrate` measures the
calibration on one tile in a scratch store under $LCMS_HOME and writes it (default
$LCMS_HOME/calibration.json).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Annotated

import typer

ConfigArg = Annotated[Path, typer.Argument(help="YAML run config (see examples/).", show_default=False)]


def _calibration_path(given: Path | None):
    """The calibration to use and how it was chosen: --calibration, else $LCMS_HOME's, else the packaged one."""
    from lcms import estimate, runtime

    if given is not None:
        return given, "given"
    home = runtime.home() / estimate.CALIBRATION_FILE
    if home.is_file():
        return home, "this machine's (lcms estimate --calibrate)"
    if estimate.DEFAULT_CALIBRATION.is_file():
        return (
            estimate.DEFAULT_CALIBRATION,
            "the packaged default, measured on the development machine; `--calibrate` measures this one",
        )
    return None, None


def estimate_command(
    config: ConfigArg,
    calibration: Annotated[
        Path | None,
        typer.Option(
            "--calibration", help="Calibration JSON (default: $LCMS_HOME/calibration.json, else the packaged one)."
        ),
    ] = None,
    prices: Annotated[
        Path | None, typer.Option("--prices", help="YAML price table replacing entries of lcms/data/prices.yaml.")
    ] = None,
    workers: Annotated[
        int | None, typer.Option("--workers", min=1, help="Workers (default: the config's cluster).")
    ] = None,
    instance_type: Annotated[
        str | None, typer.Option("--instance-type", help="EC2 instance type of each worker (default: the config's).")
    ] = None,
    with_model_stages: Annotated[
        bool,
        typer.Option(
            "--with-model-stages",
            help="Count reference to report too when the config has no reference data yet (the full chain).",
        ),
    ] = False,
    cpu_time: Annotated[
        bool,
        typer.Option(
            "--cpu-time",
            help="Scale the calibration's CPU seconds, not its wall seconds (when it ran on a busy machine).",
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the estimate as JSON.")] = False,
    calibrate: Annotated[
        bool, typer.Option("--calibrate", help="Measure the calibration on one tile here and write it; then estimate.")
    ] = False,
    output: Annotated[
        Path | None,
        typer.Option("--output", help="With --calibrate: where to write it (default $LCMS_HOME/calibration.json)."),
    ] = None,
) -> None:
    """Tiles, pixel-dates, core-hours, wall time, EC2 and S3 cost and Sentinel Hub units of a config's run."""
    from lcms import cli, estimate, runtime

    cfg = cli._load(config)
    try:
        if calibrate:
            target = output or runtime.home() / estimate.CALIBRATION_FILE
            scratch = Path(tempfile.mkdtemp(prefix="calibration-", dir=_scratch_root(runtime.home())))
            try:
                say = (
                    (lambda m: None) if as_json else (lambda m: cli.console.print(f"calibrating: {m}", highlight=False))
                )
                result = estimate.calibrate(cfg, scratch, progress=say)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
            estimate.write_calibration(result, target)
            if not as_json:
                load = result["measured_on"]["load_average"]
                cli.console.print(f"calibration written to {target} (load average {load[0]:.2f})", highlight=False)
            calibration = target
        path, how = _calibration_path(calibration)
        if path is None:
            raise cli._fail(
                "no calibration: run `lcms estimate CONFIG --calibrate` first (it times each stage on one tile here)"
            )
        table = estimate.load_prices(prices)
        cal = estimate.load_calibration(path)
        result = estimate.estimate(
            cfg,
            cal,
            table,
            workers=workers,
            instance_type=instance_type,
            with_model_stages=with_model_stages,
            basis="cpu" if cpu_time else "wall",
        )
    except estimate.EstimateError as exc:
        raise cli._fail(str(exc), code=2) from None
    except cli._user_errors() as exc:
        raise cli._fail(str(exc)) from None
    result["calibration_file"] = str(path)
    result["calibration_is"] = how
    if as_json:
        print(json.dumps(result, indent=1, default=float))
        return
    _print(cli.console, result)


def _scratch_root(home: Path) -> Path:
    home.mkdir(parents=True, exist_ok=True)
    return home


def _print(console, result: dict) -> None:
    from rich.table import Table

    from lcms.estimate import fmt_bytes, fmt_duration

    work = result["workload"]
    measured = result["calibration"]
    load = measured.get("load_average") or ["?"]
    console.print(
        f"calibration: {result['calibration_file']} ({result['calibration_is']}; {measured.get('machine')}, "
        f"{measured.get('cpus')} CPUs, load average {load[0]}, {measured.get('date')}, {measured.get('source')})",
        highlight=False,
    )
    zones = ", ".join(f"{z}: {n}" for z, n in work["tiles_per_zone"].items())
    console.print(
        f"{result['config']}: {work['tiles']} tiles ({zones}) of {work['tile_px'][0]} × {work['tile_px'][1]} px, "
        f"years {result['years']}, {work['dates_per_year']:.0f} dates a year ({work['dates_rule']}): "
        f"{work['pixel_dates']:.3g} pixel-dates",
        highlight=False,
    )
    shape = result["cluster"]
    where = shape["instance_type"] or "local"
    console.print(
        f"cluster: {shape['workers']} workers × {shape['threads_per_worker']} threads ({where}), "
        f"parallel efficiency {result['parallel_efficiency']:.0%}; from the calibration's {result['basis']} seconds",
        highlight=False,
    )
    table = Table(title=f"estimate for {result['config']}")
    for column in ("stage", "work", "core-hours", "wall time", "stored", "S3 $/month", "peak memory per tile"):
        table.add_column(column, justify="left" if column == "stage" else "right")
    for row in result["stages"]:
        if not row["runs"]:
            table.add_row(row["stage"], "not in this run", "", "", "", "", "")
            continue
        if row["core_seconds"] is None:
            table.add_row(row["stage"], f"{row['units']:,.1f} {row['unit']}", "not calibrated", "", "", "", "")
            continue
        table.add_row(
            row["stage"],
            f"{row['units']:,.1f} {row['unit']}",
            f"{row['core_seconds'] / 3600:,.2f}",
            fmt_duration(row["wall_seconds"]),
            fmt_bytes(row["stored_bytes"]),
            "–" if row.get("s3_usd_per_month") is None else f"{row['s3_usd_per_month']:,.2f}",
            fmt_bytes(row["peak_bytes"]),
        )
    table.add_row(
        "total",
        "",
        f"{result['core_hours']:,.2f}",
        fmt_duration(result["wall_hours"] * 3600),
        fmt_bytes(result["stored_bytes"]),
        f"{result['s3_usd_per_month']:,.2f}",
        "",
    )
    console.print(table)
    if "ec2_usd" in result:
        console.print(
            f"EC2: {shape['workers']} × {shape['instance_type']}"
            + (f" + scheduler {result['scheduler_instance_type']}" if result.get("scheduler_instance_type") else "")
            + f" at ${result['ec2_usd_per_hour']:.2f}/h for {fmt_duration(result['wall_hours'] * 3600)}: "
            f"${result['ec2_usd']:,.2f} ({result['prices']['ec2']})",
            highlight=False,
        )
    else:
        console.print("EC2: none (a local cluster); give --instance-type for the cost on EC2", highlight=False)
    if "sentinelhub" in result:
        sh = result["sentinelhub"]
        console.print(
            f"Sentinel Hub: {sh['requests']:,.0f} Process API requests of {sh['input_bands']} input bands, "
            f"{sh['processing_units']:,.0f} processing units (docs.sentinel-hub.com, Processing Unit definition)",
            highlight=False,
        )
    if result["memory_short"]:
        gib = shape["worker_memory_bytes"] / 2**30
        console.print(
            f"memory: {', '.join(result['memory_short'])} need more than a worker's {gib:.0f} GiB with "
            f"{shape['threads_per_worker']} tiles at once (peak per tile × threads); use fewer threads per worker, "
            "a memory-richer instance type or smaller tiles",
            highlight=False,
        )
    if measured.get("failed"):
        console.print(f"the calibration stopped early: {measured['failed']}", highlight=False)
    if result["not_calibrated"]:
        console.print(f"not calibrated, left out of the totals: {', '.join(result['not_calibrated'])}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("estimate")(estimate_command)
