"""The `lcms` command: one sub-command per stage, plus grid, run, status and validate.

Every command takes a YAML run config (see examples/ and README.md) and validates it,
the AOI and the store before any work starts.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from lcms.prefect_env import configure_prefect_defaults

app = typer.Typer(
    name="lcms",
    help="LCMS: land cover maps, crop maps and change polygons from Sentinel-2 time series.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
errors = Console(stderr=True)

ConfigArg = Annotated[Path, typer.Argument(help="YAML run config (see examples/).", show_default=False)]
TilesOpt = Annotated[str | None, typer.Option("--tiles", help="Comma-separated tile ids to run on.")]
BboxOpt = Annotated[
    str | None, typer.Option("--bbox", help="minx,miny,maxx,maxy in WGS84: run on the tiles overlapping it.")
]
SubsetOpt = Annotated[
    Path | None, typer.Option("--subset", help="Polygon file (any CRS): run on the tiles overlapping it.")
]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Redo tiles that are already done.")]


def _fail(message: str, code: int = 1) -> typer.Exit:
    errors.print(f"[bold red]error:[/] {message}", highlight=False, markup=True, soft_wrap=True)
    return typer.Exit(code)


def _user_errors() -> tuple[type[Exception], ...]:
    from flows.change import ChangeYearsError
    from flows.common import StageInputError, TileFailures
    from lcms.config import ConfigError
    from lcms.grid import AoiError, TileSelectionError
    from lcms.store import StoreError
    from tasks.change.tile import ChangeError
    from tasks.merge.dataset import MergeError
    from tasks.prediction.tile import PredictionError
    from tasks.reference.polygons import ReferenceError
    from tasks.report.build import ReportError
    from tasks.training.stage import TrainingError

    return (
        ConfigError,
        AoiError,
        TileSelectionError,
        StoreError,
        StageInputError,
        TileFailures,
        ReferenceError,
        MergeError,
        TrainingError,
        PredictionError,
        ChangeError,
        ChangeYearsError,
        ReportError,
    )


def _load(config_path: Path):
    from lcms.config import ConfigError, load_config

    try:
        return load_config(config_path)
    except ConfigError as exc:
        raise _fail(str(exc), code=2) from None


def _subset(tiles: str | None, bbox: str | None, subset: Path | None):
    from lcms.config import TileSubset

    box = None
    if bbox is not None:
        try:
            box = tuple(float(v) for v in bbox.split(","))
        except ValueError:
            box = ()
        if len(box) != 4:
            raise _fail(f"--bbox must be four comma-separated numbers minx,miny,maxx,maxy, got {bbox!r}", code=2)
    tile_ids = [t.strip() for t in tiles.split(",") if t.strip()] if tiles else None
    return TileSubset(tile_ids=tile_ids, bbox=box, aoi_path=str(subset.resolve()) if subset else None)


@app.callback()
def _setup(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False) -> None:
    configure_prefect_defaults()
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not verbose:
        # Every API call and every Dask worker start is logged at INFO; keep the output readable.
        # distributed sets its loggers' levels from dask's config when imported, hence the variable.
        os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
        for noisy in ("httpx", "distributed", "prefect.server", "uvicorn", "pyogrio"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


@app.command()
def validate(config: ConfigArg) -> None:
    """Check a config and its AOI without running anything."""
    from lcms.grid import load_aoi

    cfg = _load(config)
    try:
        aoi = load_aoi(cfg.aoi)
    except _user_errors() as exc:
        raise _fail(str(exc)) from None
    console.print(f"config {config} is valid: run {cfg.name!r}, years {cfg.years}, AOI bounds {aoi.bounds}")


@app.command()
def grid(
    config: ConfigArg,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Rebuild the store's grid from the config.")] = False,
    output: Annotated[Path | None, typer.Option("--output", help="Also write the grid to this GeoPackage.")] = None,
) -> None:
    """Split the AOI into tiles, store the grid, and print the tile count per UTM zone."""
    from flows.common import load_grid
    from lcms.store import TileStore

    cfg = _load(config)
    try:
        store = TileStore.from_config(cfg.store)
        area_grid = load_grid(cfg, store, rebuild=overwrite)
    except _user_errors() as exc:
        raise _fail(str(exc)) from None
    if output is not None:
        area_grid.write_gpkg(output)
    console.print(f"{len(area_grid)} tiles of {cfg.grid.tile_size_m:g} m, grid stored at {store.grid_url}")
    table = Table()
    table.add_column("UTM zone")
    table.add_column("tiles", justify="right")
    for zone, count in area_grid.counts_per_zone().items():
        table.add_row(zone, str(count))
    console.print(table)


@app.command("synthetic-reference")
def synthetic_reference(
    config: ConfigArg,
    year: Annotated[
        int | None, typer.Option("--year", help="Land cover of this year; default: the first year.")
    ] = None,
    fraction: Annotated[float, typer.Option("--fraction", help="Share of the polygons to keep (0-1].")] = 1.0,
    output: Annotated[
        Path | None, typer.Option("--output", help="GeoPackage to write; default: reference.path.")
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing file.")] = False,
) -> None:
    """Write the synthetic source's own land cover as reference polygons (for demos and tests)."""
    from flows.common import load_grid
    from lcms.config import SyntheticSourceConfig
    from lcms.store import TileStore
    from tasks.download.synthetic import SyntheticScene, area_reference_polygons

    cfg = _load(config)
    source = cfg.download.source
    if not isinstance(source, SyntheticSourceConfig):
        raise _fail(f"download.source is {source.kind!r}: synthetic reference polygons need the synthetic source")
    target = output or (Path(cfg.reference.path) if cfg.reference.path else None)
    if target is None:
        raise _fail("give --output, or set reference.path in the config")
    if not 0 < fraction <= 1:
        raise _fail(f"--fraction must be in (0, 1], got {fraction}", code=2)
    if target.exists() and not overwrite:
        # Rewriting would change the file's mtime and make every later stage stale.
        console.print(f"{target} exists, kept (use --overwrite to replace it)")
        return
    try:
        area_grid = load_grid(cfg, TileStore.from_config(cfg.store))
    except _user_errors() as exc:
        raise _fail(str(exc)) from None
    scene = SyntheticScene(**source.model_dump(exclude={"kind"}))
    polygons = area_reference_polygons(scene, [t.grid for t in area_grid], year or cfg.years[0], fraction)
    target.parent.mkdir(parents=True, exist_ok=True)
    polygons.to_file(target, driver="GPKG")
    console.print(f"{len(polygons)} reference polygons of {year or cfg.years[0]} written to {target}")


# Stage commands, in pipeline order: name → (flow entrypoint, help). Each takes the same options.
STAGE_COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("flows.run:run_flow", "Run the whole chain (grid, download, ...) over the AOI or a subset of it."),
    "download": ("flows.download:download_flow", "Stage 1: bands, cloud and valid masks for every tile and year."),
    "features": ("flows.features:features_flow", "Stage 2: frame filter, indices, temporal interpolation."),
    "reference": ("flows.reference:reference_flow", "Stage 3: reference polygons rasterised per tile, eroded."),
    "sampling": ("flows.sampling:sampling_flow", "Stage 4: training pixels and their features, per tile and year."),
    "merge": ("flows.merge:merge_flow", "Stage 5: the tiles' samples in one dataset, split train/validation/test."),
    "training": ("flows.training:training_flow", "Stage 6: LightGBM model, metrics and plots from the merged dataset."),
    "prediction": ("flows.prediction:prediction_flow", "Stage 7: labels, probabilities and confidence per tile."),
    "postprocess": ("flows.postprocess:postprocess_flow", "Stage 8: majority, sieve, superpixels, erosion per tile."),
    "export": ("flows.export:export_flow", "Maps as Cloud-Optimised GeoTIFFs with STAC items, per UTM zone."),
    "change": ("flows.change:change_flow", "Stage 9: change polygons between two years' maps (GeoPackage, PostGIS)."),
    "report": ("flows.report:report_flow", "Stage 10: HTML report with areas, transitions, accuracy, changes."),
}


def _run_flow(entrypoint: str, config: Path, tiles, bbox, subset, overwrite: bool) -> None:
    import importlib

    from flows.common import prepare_stage

    cfg = _load(config)
    selection = _subset(tiles, bbox, subset)
    try:
        # Cheap checks first, so that a bad AOI, subset or store fails before Prefect and Dask start.
        prepare_stage(cfg, selection)
    except _user_errors() as exc:
        raise _fail(str(exc)) from None
    module, name = entrypoint.split(":")
    flow_fn = getattr(importlib.import_module(module), name)
    try:
        result = flow_fn(cfg, selection, overwrite, show_progress=True)
    except _user_errors() as exc:
        raise _fail(str(exc)) from None
    for summary in result if isinstance(result, list) else [result]:
        if "message" in summary:  # AOI-level stages (merge, training) say what they made
            console.print(summary["message"])
            continue
        console.print(
            f"{summary['stage']}: {summary['done']} done, {summary['skipped']} skipped, "
            f"{summary['failed']} failed of {summary['tiles']} tile-years"
        )


def _register_stage_command(name: str, entrypoint: str, help_text: str) -> None:
    def command(
        config: ConfigArg,
        tiles: TilesOpt = None,
        bbox: BboxOpt = None,
        subset: SubsetOpt = None,
        overwrite: OverwriteOpt = False,
    ) -> None:
        _run_flow(entrypoint, config, tiles, bbox, subset, overwrite)

    app.command(name=name, help=help_text)(command)


for _name, (_entrypoint, _help) in STAGE_COMMANDS.items():
    _register_stage_command(_name, _entrypoint, _help)


@app.command()
def status(config: ConfigArg) -> None:
    """Show how many tiles of each stage and year are done in the store."""
    from lcms.store import AOI_STAGES, LAYOUTS, TileStore, change_key

    cfg = _load(config)
    store = TileStore.from_config(cfg.store)
    try:
        n_tiles = len(store.read_grid())
    except _user_errors() as exc:
        raise _fail(str(exc)) from None
    console.print(f"{store.url}: {n_tiles} tiles in the grid")
    table = Table()
    for column in ("stage", "year", "done"):
        table.add_column(column)
    for stage in LAYOUTS:
        if stage in AOI_STAGES:
            continue
        keys = [change_key(*cfg.change_years)] if cfg.change_years else []
        for year in keys if stage == "change" else cfg.years:
            table.add_row(stage, str(year), f"{len(store.done_tiles(stage, year))} / {n_tiles}")
    console.print(table)
    for stage in AOI_STAGES:
        record = store.product_record(stage, cfg.merge.name)
        state = f"done {record.written_at}: {record.extra}" if record else "not done"
        console.print(f"{stage} {cfg.merge.name!r}: {state}", highlight=False)
    if cfg.change_years:
        key = change_key(*cfg.change_years)
        record = store.product_record("change-polygons", key)
        state = f"done {record.written_at}: {record.extra}" if record else "not done"
        console.print(f"change polygons {key}: {state}", highlight=False)
    record = store.product_record("report", cfg.model_name)
    console.print(f"report {cfg.model_name!r}: {'done ' + record.written_at if record else 'not done'}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
