"""The `lcms` command: one sub-command per stage, plus grid, run, status and validate.

Every command takes a YAML run config (see examples/ and README.md) and validates it,
the AOI and the store before any work starts.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
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
# Tables are not cut to 80 columns when the output goes to a file or a pipe (a wider COLUMNS still counts).
_COLUMNS = os.environ.get("COLUMNS", "")
_WIDE = max(int(_COLUMNS) if _COLUMNS.isdigit() else 0, 200)
console = Console(width=None if sys.stdout.isatty() else _WIDE)
errors = Console(stderr=True, width=None if sys.stderr.isatty() else _WIDE)

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
    from rich.markup import escape

    # The message is plain text: "[earlier, later]" in it must not be read as rich markup.
    errors.print(f"[bold red]error:[/] {escape(message)}", highlight=False, markup=True, soft_wrap=True)
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
    from tasks.prediction.versions import MixedModelVersionsError
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
        MixedModelVersionsError,
        ReportError,
    )


def _load(config_path: Path):
    """A YAML file; or, when no such file, a named config (`lcms configs list`) or a URL (s3://, https://)."""
    import re

    from lcms.config import ConfigError, load_config

    ref = re.sub(r"^([a-z][a-z0-9+.-]*):/(?!/)", r"\1://", str(config_path))  # Path() folds s3:// to s3:/
    if config_path.is_dir():
        inside = sorted(p.name for p in config_path.glob("*.y*ml"))[:5]
        hint = f" (it holds {', '.join(inside)})" if inside else ""
        raise _fail(f"{config_path} is a folder, not a config file; give the YAML run config itself{hint}", code=2)
    try:
        is_name = "/" not in ref and not ref.endswith((".yaml", ".yml", ".json"))
        if not config_path.is_file() and ("://" in ref or is_name):
            from lcms.named_configs import load_reference

            return load_reference(ref)
        return load_config(config_path)
    except ConfigError as exc:
        raise _fail(str(exc), code=2) from None
    except UnicodeDecodeError as exc:
        raise _fail(
            f"config {ref} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start}); "
            "save it as UTF-8",
            code=2,
        ) from None


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
        from lcms.geometry import bbox_problem

        # The same rules as aoi.bbox in degrees: minx > maxx is a box across 180°, miny > maxy an error.
        problem = bbox_problem(box, geographic=True)
        if problem is not None:
            raise _fail(f"--bbox {bbox} {problem}", code=2)
    tile_ids = [t.strip() for t in tiles.split(",") if t.strip()] if tiles else None
    return TileSubset(tile_ids=tile_ids, bbox=box, aoi_path=str(subset.resolve()) if subset else None)


@app.callback()
def _setup(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Everything Prefect and Dask log too.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings, errors and summaries.")] = False,
) -> None:
    from lcms import logs, runtime

    configure_prefect_defaults()
    runtime.use_project_prefect_home()  # before Prefect is imported
    _VERBOSITY[0] = logs.VERBOSE if verbose else logs.QUIET if quiet else logs.NORMAL
    if not verbose:
        # distributed sets its loggers' levels from dask's config when imported, hence the variable.
        os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    logs.configure(_VERBOSITY[0])


_VERBOSITY = [1]  # set by the --verbose / --quiet options


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
    console.print(f"tile ids, bounds and status: `lcms tiles {config}`", highlight=False)
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
    label_noise: Annotated[
        float,
        typer.Option(
            "--label-noise",
            help="Share of the polygons up to 10 ha given the class they are most easily confused with, "
            "as in real reference data (0: exact).",
        ),
    ] = 0.1,
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
    target = output or (Path(cfg.reference.path_for(year or cfg.years[0])) if cfg.reference.is_set else None)
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
    polygons = area_reference_polygons(scene, [t.grid for t in area_grid], year or cfg.years[0], fraction, label_noise)
    target.parent.mkdir(parents=True, exist_ok=True)
    polygons.to_file(target, driver="GPKG")
    console.print(f"{len(polygons)} reference polygons of {year or cfg.years[0]} written to {target}")


RUN_HELP = "Run the whole chain (grid, download, ...) over the AOI or a subset of it, or part of it (--stages, --from)."
StagesOpt = Annotated[
    str | None, typer.Option("--stages", help="Only these stages, comma-separated (e.g. features,sampling).")
]
FromOpt = Annotated[str | None, typer.Option("--from", help="The chain from this stage on (e.g. prediction).")]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="Print the plan (`lcms plan`), run nothing.")]
SchedulerOpt = Annotated[
    str | None,
    typer.Option(
        "--scheduler-address",
        envvar="LCMS_SCHEDULER_ADDRESS",
        help="A running Dask scheduler (tcp://HOST:8786) to send the tiles to, instead of the config's cluster.",
    ),
]


def _plan(cfg, selection, chain_names: list[str] | None, start: str | None, overwrite: bool, stage_name: str):
    """The store, the tiles and the plan of a command, before Prefect or Dask start; exits on a user error."""
    from lcms.plan import not_run_reasons, plan_chain, select_chain
    from lcms.selection import prepare_stage
    from lcms.stages import get_stage

    try:
        store, tiles = prepare_stage(cfg, selection)  # a bad AOI, subset or store fails here
        if stage_name == "run":
            chain = select_chain(cfg, chain_names, start)
        else:
            chain = [get_stage(stage_name)]
            for _, reason in not_run_reasons(chain, cfg):
                raise _fail(f"the {stage_name} stage does not apply to this config: {reason}")
        return store, tiles, plan_chain(cfg, chain, store, tiles, overwrite)
    except _user_errors() as exc:
        raise _fail(str(exc)) from None


def _print_plan(plan, details: bool = False) -> None:
    table = Table(title="plan")
    for column in ("stage", "outputs", "to make", "up to date", "why"):
        table.add_column(column, justify="right" if column in ("outputs", "to make", "up to date") else "left")
    for stage in plan.stages:
        if not stage.outputs:
            continue
        why = ", ".join(f"{n} {reason}" for reason, n in stage.reasons().most_common())
        skipped = len(stage.outputs) - len(stage.to_run) - len(stage.blocked)
        table.add_row(stage.stage, str(len(stage.outputs)), str(len(stage.to_run)), str(skipped), why or "–")
    console.print(table)
    if details:
        rows = [o for o in plan.rows() if o.action != "skip"]
        detail = Table(title="outputs to make")
        for column in ("stage", "year", "tile / product", "action", "why"):
            detail.add_column(column)
        for o in rows:
            detail.add_row(o.stage, o.key, o.name, o.action, o.reason)
        if rows:
            console.print(detail)


def _outputs_to_open(cfg) -> list[tuple[str, str]]:
    """The stable paths of what a run made: the report, the maps, the change polygons, the model."""
    from lcms.stages import get_stage
    from lcms.store import TileStore

    store = TileStore.from_config(cfg.store, cfg.product)
    found = []
    for stage, label, file_name in (
        ("report", "report", "report.html"),
        ("change-polygons", "change polygons", "changes.gpkg"),
        ("training", "model", "model.txt"),
    ):
        name = get_stage(stage).product_name(cfg)
        if name and store.product_record(stage, name) is not None:
            found.append((label, store.published_url(stage, name, file_name)))
    if store.product_record("export", cfg.product) is not None:
        found.append(("maps (COG + STAC item per year and zone)", cfg.export.url or store.maps_url()))
    return found


def _run_flow(
    stage_name: str,
    config: Path,
    tiles,
    bbox,
    subset,
    overwrite: bool,
    stages: str | None = None,
    start: str | None = None,
    dry_run: bool = False,
    scheduler_address: str | None = None,
) -> None:
    import time

    from lcms import logs
    from lcms.stages import get_stage

    began = time.perf_counter()
    cfg = _load(config)
    if scheduler_address:
        cfg = _with_scheduler(cfg, scheduler_address)
    selection = _subset(tiles, bbox, subset)
    chain_names = [n.strip() for n in stages.split(",") if n.strip()] if stages else None
    store, selected, plan = _plan(cfg, selection, chain_names, start, overwrite, stage_name)
    if dry_run:
        _print_plan(plan, details=True)
        return
    blocked = [o for s in plan.stages for o in s.blocked]
    if blocked:
        first = blocked[0]
        raise _fail(
            f"{first.stage} {first.name}/{first.key}: {first.reason} "
            f"({len(blocked)} output(s) blocked; `lcms plan CONFIG` lists them)"
        )
    if plan.nothing_to_do:
        console.print(
            f"nothing to do: every output of {', '.join(s.stage for s in plan.stages)} is up to date "
            f"({len(plan.rows())} checked in {time.perf_counter() - began:.1f} s; --overwrite redoes them)"
        )
        _print_outputs(cfg, config)
        return
    for stage in plan.stages:
        if stage.outputs:
            console.print(f"plan: {stage.stage}: {stage.describe()}", highlight=False)
    import prefect  # noqa: F401  (it sets up its logging when imported: ours is put back on top)

    logs.configure(_VERBOSITY[0])
    if stage_name == "run":
        from flows.run import run_flow as flow_fn

        kwargs = {"stages": [s.stage for s in plan.stages if s.stage != "change-polygons"]}
    else:
        flow_fn, kwargs = get_stage(stage_name).flow(), {}
    try:
        result = flow_fn(cfg, selection, overwrite, show_progress=True, **kwargs)
    except _user_errors() as exc:
        raise _fail(str(exc)) from None
    for summary in result if isinstance(result, list) else [result]:
        if "message" in summary:  # AOI-level stages (merge, training) say what they made
            console.print(summary["message"], highlight=False)
            continue
        console.print(
            f"{summary['stage']}: {summary['done']} done, {summary['skipped']} skipped, "
            f"{summary['failed']} failed of {summary['tiles']} tile-years"
        )
    console.print(f"finished in {time.perf_counter() - began:.0f} s")
    _print_outputs(cfg, config)


def _with_scheduler(cfg, address: str):
    """The config with its cluster replaced by the running scheduler at `address`."""
    from pydantic import ValidationError

    from lcms.config import SchedulerClusterConfig

    try:
        cluster = SchedulerClusterConfig(kind="scheduler", scheduler_address=address)
    except ValidationError as exc:
        problem = exc.errors()[0]["msg"].removeprefix("Value error, ")
        raise _fail(f"--scheduler-address {address!r} {problem}", code=2) from None
    return cfg.model_copy(update={"cluster": cluster})


def _print_outputs(cfg, config: Path | str) -> None:
    outputs = _outputs_to_open(cfg)
    if outputs:
        console.print("outputs (these paths stay the same from run to run):")
        for label, url in outputs:
            console.print(f"  {label}: {url}", highlight=False, soft_wrap=True)
    if "serve" in {c.name for c in app.registered_commands}:
        # --demo: a one-time admin password on 127.0.0.1, for the synthetic demo; real runs add users first.
        demo = " --demo" if cfg.download.source.kind == "synthetic" else ""
        console.print(f"open the app: lcms serve {config}{demo}", highlight=False)


def _register_stage_command(name: str, help_text: str) -> None:
    def command(
        config: ConfigArg,
        tiles: TilesOpt = None,
        bbox: BboxOpt = None,
        subset: SubsetOpt = None,
        overwrite: OverwriteOpt = False,
        dry_run: DryRunOpt = False,
        scheduler_address: SchedulerOpt = None,
    ) -> None:
        _run_flow(name, config, tiles, bbox, subset, overwrite, dry_run=dry_run, scheduler_address=scheduler_address)

    app.command(name=name, help=help_text)(command)


def _register_chain_command(name: str, help_text: str, plan_only: bool) -> None:
    """`lcms run` and `lcms plan`: the chain (or --stages / --from part of it), made or only planned."""

    def command(
        config: ConfigArg,
        tiles: TilesOpt = None,
        bbox: BboxOpt = None,
        subset: SubsetOpt = None,
        overwrite: OverwriteOpt = False,
        stages: StagesOpt = None,
        start: FromOpt = None,
        dry_run: DryRunOpt = False,
        scheduler_address: SchedulerOpt = None,
    ) -> None:
        if stages and start:
            raise _fail("give --stages or --from, not both", code=2)
        _run_flow("run", config, tiles, bbox, subset, overwrite, stages, start, dry_run or plan_only, scheduler_address)

    app.command(name=name, help=help_text)(command)


_register_chain_command("run", RUN_HELP, plan_only=False)
_register_chain_command(
    "plan", "What `lcms run` would do: per stage, the outputs it would make and why, and those up to date.", True
)


def _register_stage_commands() -> None:
    """One command per declared stage (lcms/stages.py), in pipeline order, after `lcms run`."""
    from lcms.stages import stages_with_flows

    for stage in stages_with_flows():
        _register_stage_command(stage.name, stage.title)


_register_stage_commands()


def _wgs84_bounds(tile) -> str:
    from pyproj import Transformer

    to_wgs84 = Transformer.from_crs(tile.grid.crs, "EPSG:4326", always_xy=True)
    west, south, east, north = to_wgs84.transform_bounds(*tile.core_bounds)
    return f"{west:.4f},{south:.4f},{east:.4f},{north:.4f}"


def _tile_states(store, stage, keys) -> dict[str, dict[str, str]]:
    """stage key -> tile id -> 'done', or 'failed' when its last attempt failed (an earlier output may
    still stand); absent: never made."""
    states = {}
    for key in keys:
        key = str(stage.store_key(key))
        per_tile = dict.fromkeys(store.done_tiles(stage.name, key), "done")
        per_tile.update(dict.fromkeys(store.failed_tiles(stage.name, key), "failed"))
        states[key] = per_tile
    return states


@app.command()
def tiles(
    config: ConfigArg,
    stage: Annotated[str | None, typer.Option("--stage", help="Show this stage's status per year.")] = None,
    failed: Annotated[bool, typer.Option("--failed", help="Only tiles that failed, and their logs.")] = False,
) -> None:
    """List the tile ids (for --tiles) with their UTM zone, bounds (WGS84) and status per stage."""
    from lcms.stages import STAGES, get_stage
    from lcms.store import TileStore

    cfg = _load(config)
    try:
        store = TileStore.from_config(cfg.store, cfg.product)
        area_grid = store.read_grid()
        shown_stages = [get_stage(stage)] if stage else [s for s in STAGES.values() if s.is_tile_stage]
    except _user_errors() as exc:
        raise _fail(str(exc)) from None
    states = {s.name: _tile_states(store, s, s.keys(cfg)) for s in shown_stages}
    table = Table()
    for column in ("tile", "zone", "bounds (lon/lat)"):
        table.add_column(column)
    if stage:
        for key in states[stage]:
            table.add_column(key)
    else:
        for name in states:
            table.add_column(name)
    logs_shown = []
    for tile in area_grid:
        cells = []
        any_failed = False
        for per_key in states.values():
            marks = [per_key[key].get(tile.tile_id, "–") for key in per_key]
            any_failed |= "failed" in marks
            if stage:
                cells += marks
            else:
                done = marks.count("done")
                cells.append("failed" if "failed" in marks else f"{done}/{len(marks)}" if marks else "")
        if failed and not any_failed:
            continue
        table.add_row(tile.tile_id, tile.zone, _wgs84_bounds(tile), *cells)
        if any_failed:
            logs_shown += [
                f"{tile.tile_id} {name} {key}: {url}"
                for name, per_key in states.items()
                for key in per_key
                if per_key[key].get(tile.tile_id) == "failed"
                for url in [store.failed_tiles(name, key).get(tile.tile_id)]
            ]
    console.print(table)
    if failed:
        console.print(f"{len(logs_shown)} failed tile output(s); their logs:" if logs_shown else "no failed tiles")
        for line in logs_shown:
            console.print("  " + line, highlight=False, soft_wrap=True)


@app.command()
def status(config: ConfigArg) -> None:
    """One table of what the store holds: tile stages per year, AOI products, maps per year and zone."""
    from lcms.stages import STAGES
    from lcms.store import TileStore

    cfg = _load(config)
    store = TileStore.from_config(cfg.store, cfg.product)
    try:
        n_tiles = len(store.read_grid())
    except _user_errors() as exc:
        raise _fail(str(exc)) from None
    console.print(f"{store.url}: {n_tiles} tiles in the grid, product {cfg.product!r}", highlight=False)
    table = Table()
    for column in ("stage", "year / product", "state", "version or made", "where"):
        table.add_column(column)
    for stage in STAGES.values():
        if stage.is_tile_stage:
            for key in map(stage.store_key, stage.keys(cfg)):
                done, failed = len(store.done_tiles(stage.name, key)), len(store.failed_tiles(stage.name, key))
                state = f"{done} / {n_tiles} tiles" + (f", {failed} failed last time" if failed else "")
                table.add_row(stage.name, str(key), state, "", "")
            continue
        name = stage.product_name(cfg)
        if name is None:
            continue
        record = store.product_record(stage.name, name)
        if record is None:
            table.add_row(stage.name, name, "not made", "", "")
            continue
        version = record.extra.get("version_number")
        made = (f"v{version}, " if version else "") + record.written_at.replace("+00:00", "Z").replace("T", " ")
        where = store.published_dir(stage.name, name).removeprefix(store.root.rstrip("/") + "/")
        table.add_row(stage.name, name, "done", made, where)
    console.print(table)
    _print_maps(store, cfg)


def _print_maps(store, cfg) -> None:
    """The exported maps per year and zone, from the export stage's list of maps."""
    try:
        maps = json.loads(store.read_file("export", cfg.product, "maps.json"))
    except _user_errors():
        console.print("maps: none exported yet (`lcms export CONFIG`)")
        return
    table = Table(title="maps")
    for column in ("year", "zone", "map", "size (px)", "tiles", "model version", "file"):
        table.add_column(column)
    for m in maps:
        table.add_row(
            str(m.get("year", "")),
            str(m.get("zone", "")),
            str(m.get("kind", m.get("map", ""))),
            f"{m.get('width')} × {m.get('height')}",
            str(m.get("tiles", "")),
            str(m.get("model_version", "")),
            str(m.get("url", "")),
        )
    console.print(table)


configs_app = typer.Typer(
    name="configs",
    help="Named run configs on the Prefect server: what deployments run with `config: NAME`.",
    no_args_is_help=True,
)
app.add_typer(configs_app)


@configs_app.command("add")
def configs_add(
    name: Annotated[str, typer.Argument(help="The name runs use (lowercase letters, digits, dashes).")],
    location: Annotated[str, typer.Argument(help="The YAML run config: a file or a URL (s3://, https://).")],
    link: Annotated[
        bool, typer.Option("--link", help="Store only the location: every run reads it again (no copy).")
    ] = False,
) -> None:
    """Validate a run config, then store it under NAME (replacing one of that name)."""
    from lcms.config import ConfigError
    from lcms.named_configs import add_named_config

    try:
        record, cfg = add_named_config(name, location, link=link)
    except ConfigError as exc:
        raise _fail(str(exc), code=2) from None
    how = "linked to" if record.linked else "copied from"
    console.print(
        f"named config {name!r} {how} {record.source}: run {cfg.name!r}, years {cfg.years}, store {cfg.store.url}",
        highlight=False,
        soft_wrap=True,
    )
    if record.link:
        console.print(f"in the UI: {record.link}", highlight=False, soft_wrap=True)


@configs_app.command("list")
def configs_list() -> None:
    """The named configs, with where each came from and its page in the Prefect UI."""
    from lcms.named_configs import list_named_configs

    table = Table()
    for column in ("name", "run", "years", "store", "from", "UI"):
        table.add_column(column, overflow="fold")
    for record in list_named_configs():
        data = record.config or {}
        years = data.get("years", "(linked)") if record.config is not None else "(linked)"
        store = (data.get("store") or {}).get("url", "(default)") if record.config is not None else "(linked)"
        table.add_row(record.name, str(data.get("name", "")), str(years), str(store), record.source, record.link or "")
    console.print(table)


@configs_app.command("show")
def configs_show(name: Annotated[str, typer.Argument(help="A named config.")]) -> None:
    """Print a named config as YAML, with where it came from and its page in the Prefect UI."""
    import yaml

    from lcms.config import ConfigError
    from lcms.named_configs import get_named_config

    try:
        record = get_named_config(name)
        data, base_dir = record.data()
    except ConfigError as exc:
        raise _fail(str(exc), code=2) from None
    how = "linked to" if record.linked else "copied from"
    console.print(f"# named config {name!r}, {how} {record.source}", highlight=False, markup=False, soft_wrap=True)
    if base_dir is not None:
        console.print(f"# relative paths are relative to {base_dir}", highlight=False, markup=False, soft_wrap=True)
    if record.link:
        console.print(f"# in the UI: {record.link}", highlight=False, markup=False, soft_wrap=True)
    console.print(
        yaml.safe_dump(data, sort_keys=False, allow_unicode=True), highlight=False, markup=False, soft_wrap=True
    )


@configs_app.command("remove")
def configs_remove(name: Annotated[str, typer.Argument(help="A named config.")]) -> None:
    """Delete a named config (runs that name it then fail, naming it)."""
    from lcms.config import ConfigError
    from lcms.named_configs import remove_named_config

    try:
        remove_named_config(name)
    except ConfigError as exc:
        raise _fail(str(exc), code=2) from None
    console.print(f"named config {name!r} removed")


@app.command()
def deploy(
    ecs: Annotated[
        bool,
        typer.Option(
            "--ecs", help="Also create the lcms-ecs pool when missing (bare: no job template) and deploy to it."
        ),
    ] = False,
    config: Annotated[
        list[str] | None,
        typer.Option(
            "--config",
            help="NAME=FILE: a named config to store (repeatable). "
            "Default: demo=examples/demo.yaml and slovenia=examples/slovenia.yaml.",
        ),
    ] = None,
    project: Annotated[Path, typer.Option("--project", help="The repository (the folder with prefect.yaml).")] = Path(),
) -> None:
    """Create the missing work pools, store the named configs and deploy every deployment of prefect.yaml."""
    from lcms.config import ConfigError
    from lcms.deploy import DeployError, parse_config_options
    from lcms.deploy import deploy as run_deploy

    if not os.environ.get("PREFECT_API_URL"):
        console.print("PREFECT_API_URL is not set: deploying to the local Prefect database (`prefect server start`)")
    try:
        configs = parse_config_options(config) if config else None
        run_deploy(
            project,
            configs,
            ecs=ecs,
            echo=lambda line: console.print(line, highlight=False, markup=False, soft_wrap=True),
        )
    except (ConfigError, DeployError) as exc:
        raise _fail(str(exc)) from None


@app.command()
def models(config: ConfigArg) -> None:
    """List the product's model versions (every training keeps one), with OA and kappa; * marks the current."""
    from lcms.store import TileStore

    cfg = _load(config)
    store = TileStore.from_config(cfg.store, cfg.product)
    versions = store.versions("training", cfg.product)
    if not versions:
        raise _fail(f"{store.url} has no model of product {cfg.product!r} yet; run `lcms training CONFIG`")
    current = store.product_record("training", cfg.product)
    table = Table(title=f"models of {cfg.product!r} in {store.url}")
    columns = ("", "version", "trained", "OA all labelled", "macro F1 all labelled", "OA test samples", "kappa")
    for column in (*columns, "macro F1 test samples", "dataset"):
        table.add_column(column)

    def figure(value) -> str:
        return "–" if value is None else f"{value:.3f}"

    for record in versions:
        extra = record.extra
        table.add_row(
            "*" if current is not None and record.attempt == current.attempt else "",
            record.attempt,
            record.written_at,
            figure(extra.get("all_labelled_overall_accuracy")),
            figure(extra.get("all_labelled_macro_f1")),
            figure(extra.get("overall_accuracy")),
            figure(extra.get("kappa")),
            figure(extra.get("macro_f1")),
            next((e["attempt"] for e in record.lineage.get("inputs", []) if e["stage"] == "merge"), "?"),
        )
    console.print(table)
    console.print(
        "All labelled: every labelled pixel of the held-out area, class borders included (what a map user meets); "
        "test samples: the merged test split's eroded samples. Pin a version with prediction.model_version."
    )


@app.command("compile-models")
def compile_models(
    threads: Annotated[int | None, typer.Option("--threads", min=1, help="gcc processes (default: all cores).")] = None,
) -> None:
    """Compile the s2cloudless cloud model to C for this machine, once: cloud masks come out the same, ~4× faster
    to predict (tasks/download/cloud_model.py). Needs gcc; the Docker image has it compiled already."""
    from tasks.download import cloud_model

    target = cloud_model.compiled_file()
    if target.exists():
        console.print(f"already compiled: {target}", highlight=False)
        return
    console.print(f"compiling the s2cloudless model (about a minute on two cores) into {target.parent} ...")
    try:
        object_file, seconds = cloud_model.compile_cloud_model(num_threads=threads)
    except Exception as exc:  # noqa: BLE001 - treelite, tl2cgen and gcc fail in many ways: one line for all
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise _fail(f"could not compile the s2cloudless model ({first}); is gcc installed (apt install gcc)?") from None
    console.print(f"compiled in {seconds:.0f} s: {object_file}", highlight=False)


TileOpt = Annotated[str | None, typer.Option("--tile", help="Tile id (tile stages).")]
YearOpt = Annotated[str | None, typer.Option("--year", help="Year, or the pair of years as 2023-2024 (tile stages).")]
ProductOpt = Annotated[
    str | None, typer.Option("--product", help="Product name (AOI-level stages); default: the config's.")
]


def _output_of(cfg, stage_name: str, tile: str | None, year: str | None, product: str | None):
    """(store, stage, key, name, record) of one output named on the command line; fails clearly if it has none."""
    from lcms.stages import get_stage
    from lcms.store import StoreError, TileStore

    try:
        stage = get_stage(stage_name)
    except StoreError as exc:
        raise _fail(str(exc), code=2) from None
    store = TileStore.from_config(cfg.store, product or cfg.product)
    if stage.is_tile_stage:
        if tile is None or year is None:
            raise _fail(f"{stage_name} is a tile stage: give --tile ID and --year YEAR", code=2)
        record = store.done_record(stage_name, year, tile)
        key, name = year, tile
    else:
        name = product or (stage.product_of(cfg) if stage.product_of else None) or cfg.product
        record, key = store.product_record(stage_name, name), "-"
    if record is None:
        raise _fail(f"{store.url} has no finished {stage_name} output for {name} {key}; run the stage first")
    return store, stage, key, name, record


def _record_of(store, entry: dict):
    """The done mark an input entry of a lineage names, as it is now (None when it is gone)."""
    from lcms.stages import get_stage

    source = get_stage(entry["stage"])
    if source.is_tile_stage:
        return store.done_record(entry["stage"], entry["key"], entry["name"])
    if source.versioned:
        try:
            return store.version_record(entry["stage"], entry["name"], entry["attempt"])
        except _user_errors():
            return None
    return store.product_record(entry["stage"], entry["name"])


def _print_lineage(store, stage: str, key: str, name: str, record, depth: int, seen: set) -> None:
    pad = "    " * depth
    code = record.lineage.get("code", {})
    made_by = f"lcms {code.get('lcms_version')} @ {(code.get('revision') or '?')[:12]}" if code else "no lineage"
    console.print(f"{pad}{stage} {key} {name}: {record.attempt} ({record.written_at}, {made_by})", highlight=False)
    params = record.lineage.get("params")
    if params is not None:
        console.print(f"{pad}  params: {json.dumps(params, sort_keys=True)}", highlight=False, soft_wrap=True)
    inputs = record.lineage.get("inputs", [])
    # AOI products read many tiles: show each input stage once, with its tile count, and follow one tile.
    by_stage: dict[str, list[dict]] = {}
    for entry in inputs:
        by_stage.setdefault(entry["stage"], []).append(entry)
    for input_stage, entries in by_stage.items():
        if len(entries) > 2:
            console.print(f"{pad}  ← {input_stage}: {len(entries)} outputs, e.g.", highlight=False)
        for entry in entries[:2] if len(entries) <= 2 else entries[:1]:
            current = _record_of(store, entry)
            where = (input_stage, entry["key"], entry["name"])
            if current is None:
                console.print(f"{pad}  ← {' '.join(where)}: {entry['attempt']} (no longer in the store)")
                continue
            if current.attempt != entry["attempt"]:
                console.print(
                    f"{pad}  ← {' '.join(where)}: read {entry['attempt']}, since redone as {current.attempt}",
                    highlight=False,
                )
            if where not in seen:
                seen.add(where)
                _print_lineage(store, *where, current, depth + 1, seen)


@app.command()
def lineage(config: ConfigArg, stage: str, tile: TileOpt = None, year: YearOpt = None, product: ProductOpt = None):
    """Print an output's chain back to the download: each output's attempt, code revision and parameters."""
    cfg = _load(config)
    store, _, key, name, record = _output_of(cfg, stage, tile, year, product)
    _print_lineage(store, stage, key, name, record, 0, set())


@app.command()
def rerun(config: ConfigArg, stage: str, tile: TileOpt = None, year: YearOpt = None) -> None:
    """Make one tile output again from its recorded lineage (parameters and inputs) and compare it with the old."""
    import numpy as np

    from lcms import lineage as lineage_mod

    cfg = _load(config)
    store, declared, key, name, record = _output_of(cfg, stage, tile, year, None)
    if not declared.is_tile_stage:
        raise _fail(f"lcms rerun makes tile outputs again; {stage} is an AOI-level stage: run `lcms {stage} CONFIG`")
    if "params" not in record.lineage:
        raise _fail(f"{stage} {key} {name} records no lineage (an older LCMS made it): rerun the stage instead")
    now = {e["attempt"]: getattr(_record_of(store, e), "attempt", None) for e in record.lineage.get("inputs", [])}
    moved = [
        f"{e['stage']} {e['key']} {e['name']} (read {e['attempt']}, now {now[e['attempt']]})"
        for e in record.lineage.get("inputs", [])
        if now[e["attempt"]] != e["attempt"]
    ]
    if moved:
        raise _fail("inputs were redone since this output was made, so it cannot be reproduced: " + "; ".join(moved))
    settings_model = type(declared.settings(cfg))
    settings = settings_model.model_validate(record.lineage["params"]) if record.lineage["params"] is not None else None
    tile_obj = store.read_grid()[name]
    stage_key = tuple(int(y) for y in key.split("-")) if "-" in str(key) else int(key)
    before = store.open_tile(stage, key, name)
    old = {a.name: before.read(a.name) for a in declared.arrays}
    with lineage_mod.recording(dict(record.lineage)):
        declared.make_tile(store, tile_obj, stage_key, settings)
    after = store.open_tile(stage, key, name)
    differing = [
        n for n, values in old.items() if not np.array_equal(values, after.read(n), equal_nan=values.dtype.kind == "f")
    ]
    console.print(f"{stage} {key} {name}: made again as {after.record.attempt} from its recorded lineage")
    if differing:
        raise _fail(f"the arrays {differing} differ from the previous output {record.attempt}")
    console.print(f"every array equals the previous output's ({record.attempt})")


from lcms.serve.cli import register as _register_serve  # noqa: E402 - serve, users, reviews

_register_serve(app)
__import__("lcms.accuracy_cli").accuracy_cli.register(app)  # sample-design, accuracy (issue 20 §2)
__import__("lcms.active_cli").active_cli.register(app)  # label-next (issue 20 §3)
__import__("lcms.estimate_cli").estimate_cli.register(app)  # estimate (issue 23 §3)


def main() -> None:
    """The `lcms` executable: the command in a process that cleans up after itself (lcms/runtime.py)."""
    from lcms import runtime

    runtime.handle_sigterm()
    runtime.use_run_temp_dir()
    runtime.start_watchdog(tempfile.gettempdir())
    app()


if __name__ == "__main__":
    main()
