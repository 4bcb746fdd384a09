"""What every stage flow shares, and the factories that make the flows from the stage declarations.

The stages are declared in lcms/stages.py. A tile stage's flows are made by `tile_stage_flow`:

- the outer flow (e.g. `download`) is what users run: it checks the config, the store, the
  tile selection and the stage's inputs, starts (or joins) the Dask cluster, and then calls
- the inner flow (e.g. `download-tiles`) with a DaskTaskRunner on that cluster, which submits
- one task (e.g. `download-tile`) per tile and key (year, or pair of years).

Two levels are needed because a Prefect flow's task runner is fixed before its body runs,
while the cluster comes from the run's config. An AOI-level stage (merge, training, export,
report) runs in the flow's own process: `aoi_stage_flow` gives it the same signature and checks,
and the stage's module in flows/ supplies the body. What is particular to a stage (a check
before the cluster starts, credentials, a Prefect artifact) stays in its own module in flows/.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture, as_completed
from prefect_dask import DaskTaskRunner
from rich.progress import Progress

from flows.parameters import run_namer, stage_flow_function
from lcms import lineage
from lcms.cluster import dask_cluster
from lcms.config import AoiConfig, RunConfig, StoreConfig, TileSubset, params_hash
from lcms.grid import AreaGrid, Tile, TileSelectionError, build_grid, load_aoi
from lcms.stages import Stage, get_stage
from lcms.store import StoreError, TileStore
from tasks.download.errors import retry_condition

log = logging.getLogger(__name__)


class GridMismatchError(StoreError):
    """The store holds a grid made with other AOI or grid settings than the config's."""


class TileFailures(RuntimeError):
    """Some tiles failed; the message lists them."""


class StageInputError(StoreError):
    """A stage was started before the stage it reads from had finished the tiles it needs."""


@dataclass(frozen=True)
class TileOutcome:
    """What happened to one tile-year in a stage run: done, skipped (already done) or failed."""

    stage: str
    tile_id: str
    year: int | str
    status: str
    seconds: float
    error: str = ""


# --------------------------------------------------------------------------- store and grid


def prepare_stage(config: RunConfig, subset: TileSubset) -> tuple[TileStore, AreaGrid]:
    """Everything a stage checks before work starts: the AOI and grid, the subset, a writable store.

    The order matters: inputs are read and checked first, so that a bad AOI or subset
    fails before anything is written to the store.
    """
    store = TileStore.from_config(config.store, config.product)
    tiles = select_tiles(load_grid(config, store), subset)
    store.ensure_writable()
    return store, tiles


def grid_params_hash(config: RunConfig) -> str:
    return params_hash(config.aoi, config.grid)


def load_grid(config: RunConfig, store: TileStore, rebuild: bool = False) -> AreaGrid:
    """The store's grid; built and written first if the store has none (or `rebuild`)."""
    wanted = grid_params_hash(config)
    stored = store.grid_params_hash()
    if stored is None or rebuild:
        grid = build_grid(load_aoi(config.aoi), config.grid)  # a bad AOI fails here, before any write
        store.ensure_writable()
        store.write_grid(grid, wanted)
        return grid
    if stored != wanted:
        raise GridMismatchError(
            f"store {store.url} holds a grid built from other aoi/grid settings than this config's. "
            "Use a new store.url, or rebuild it with `lcms grid CONFIG --overwrite` "
            "(tiles already in the store would then no longer match the grid)."
        )
    return store.read_grid()


def select_tiles(grid: AreaGrid, subset: TileSubset) -> AreaGrid:
    """The tiles of `grid` that `subset` asks for (all of them by default)."""
    if subset.is_all:
        return grid
    geometry = load_aoi(AoiConfig(path=subset.aoi_path)) if subset.aoi_path else None
    return grid.select(tile_ids=subset.tile_ids, geometry=geometry, bbox=subset.bbox)


def require_inputs(store: TileStore, input_stage: str, stage: str, tile_ids: list[str], years: list[int]) -> None:
    """Fail before any work when `input_stage` is not done for every selected tile-year."""
    done = {year: store.done_tiles(input_stage, year) for year in years}  # one listing per year
    missing = [f"{t}/{y}" for y in years for t in tile_ids if t not in done[y]]
    if missing:
        shown = ", ".join(missing[:8]) + (" ..." if len(missing) > 8 else "")
        raise StageInputError(
            f"the {stage} stage reads the {input_stage} stage's output, which is missing for "
            f"{len(missing)} tile-year(s): {shown}. Run `lcms {input_stage} CONFIG` for them first."
        )


# --------------------------------------------------------------------------- cluster


@contextlib.contextmanager
def task_runner(config: RunConfig, scheduler_address: str | None = None) -> Iterator[DaskTaskRunner]:
    """A DaskTaskRunner on the given scheduler, or on a cluster started from the config."""
    if scheduler_address:
        yield DaskTaskRunner(address=scheduler_address)
        return
    with tempfile.TemporaryDirectory(prefix="lcms-dask-") as work_dir:
        with dask_cluster(config.cluster, work_dir) as cluster:
            yield DaskTaskRunner(address=cluster.scheduler_address)


# --------------------------------------------------------------------------- tile work


def collect(
    stage: str, futures: dict[PrefectFuture, tuple[str, int | str]], show_progress: bool = False
) -> list[TileOutcome]:
    """Wait for every tile task; a failed tile is recorded, not raised, so the others finish."""
    outcomes = []
    with Progress(disable=not show_progress, transient=True) as progress:
        bar = progress.add_task(f"{stage}: tiles", total=len(futures))
        for future in as_completed(list(futures)):
            tile_id, year = futures[future]
            result = future.result(raise_on_failure=False)
            if isinstance(result, BaseException):
                outcome = TileOutcome(stage, tile_id, year, "failed", 0.0, f"{type(result).__name__}: {result}")
            else:
                outcome = TileOutcome(stage, tile_id, year, result["status"], result["seconds"])
            outcomes.append(outcome)
            progress.advance(bar)
    return sorted(outcomes, key=lambda o: (str(o.year), o.tile_id))


def finish_stage(config: RunConfig, stage: str, outcomes: list[TileOutcome]) -> dict:
    """Publish the tile table as a Prefect artifact; fail the stage if tiles failed (by config)."""
    logger = get_run_logger()
    counts = {s: sum(o.status == s for o in outcomes) for s in ("done", "skipped", "failed")}
    create_table_artifact(
        key=f"{stage}-tiles",
        table=[asdict(o) for o in outcomes],
        description=f"{stage}: {counts['done']} done, {counts['skipped']} skipped, {counts['failed']} failed",
    )
    logger.info("%s: %s", stage, counts)
    failed = [o for o in outcomes if o.status == "failed"]
    if failed:
        listing = "; ".join(f"{o.tile_id}/{o.year}: {o.error}" for o in failed[:10])
        message = f"{stage}: {len(failed)} of {len(outcomes)} tile-years failed ({listing})"
        if config.fail_on_tile_errors:
            raise TileFailures(message + ". Rerun the stage to retry them; finished tiles are skipped.")
        logger.warning(message)
    return {"stage": stage, **counts, "tiles": len(outcomes)}


# --------------------------------------------------------------------------- the flow factories

# A check before the cluster starts: (config, subset) -> None, raising a user error.
Check = Callable[[RunConfig, TileSubset], None]
# Secrets a tile function needs, resolved on the worker from the stage's settings: settings -> kwargs.
Secrets = Callable[[Any], dict[str, Any]]
# What an AOI-level stage does once checks pass: (config, store, tiles, overwrite) -> summary dict.
AoiBody = Callable[[RunConfig, TileStore, AreaGrid, bool], dict]


def require_stage_inputs(stage: Stage, config: RunConfig, store: TileStore, tiles: AreaGrid) -> None:
    """Fail before any work when a tile-level input of `stage` is missing for a selected tile.

    AOI-level inputs (a merged dataset, a model, a polygon layer) are checked by the stage itself.
    """
    for name in stage.inputs(config):
        keys = stage.input_store_keys(name, config)
        if keys is not None:
            require_inputs(store, name, stage.name, tiles.tile_ids, keys)


def tiles_with_inputs(stage: Stage, config: RunConfig, store: TileStore, grid: AreaGrid) -> AreaGrid:
    """The tiles of `grid` whose tile-level inputs of `stage` are all done (one listing per stage and key)."""
    ready = set(grid.tile_ids)
    for name in stage.inputs(config):
        for key in stage.input_store_keys(name, config) or []:
            ready &= set(store.done_tiles(name, key))
    return grid.select(tile_ids=[t for t in grid.tile_ids if t in ready])


def aoi_inputs(stage: Stage, config: RunConfig, store: TileStore, tiles: AreaGrid) -> list[dict]:
    """The done marks an AOI-level output reads: every tile input of its tiles, and the AOI products."""
    entries = []
    for name in stage.reads:
        keys = stage.input_store_keys(name, config)
        if keys is None:
            source = get_stage(name)
            product = source.product_of(config) if source.product_of is not None else None
            record = store.product_record(name, product) if product else None
            if record is not None:
                entries.append(lineage.input_entry(name, "-", product, record))
            continue
        for key in keys:
            done = store.done_tiles(name, key)
            entries += [lineage.input_entry(name, key, t, done[t]) for t in tiles.tile_ids if t in done]
    return entries


def _key_label(key: int | tuple[int, int]) -> str:
    return "-".join(map(str, key)) if isinstance(key, tuple) else str(key)


def tile_stage_flow(stage: Stage, *, check: Check | None = None, secrets: Secrets | None = None, after=None):
    """The outer flow of a tile stage, with its inner per-tile flow and its tile task.

    `check` runs first (before the store is touched or the cluster starts); `secrets` gives the
    tile function its credentials, resolved inside each task so that they never travel as task
    parameters; `after(config, store, tiles, result)` runs once the tiles are done (e.g. the
    change stage's polygon layer) and returns the stage's summary.
    """

    @task(
        name=f"{stage.name}-tile",
        cache_policy=NO_CACHE,
        retries=stage.retries,
        retry_delay_seconds=5,
        # A missing band, a corrupt file or rejected credentials fail the tile at once; I/O hiccups are retried.
        retry_condition_fn=retry_condition,
        task_run_name="{tile.tile_id}/{key_label}",
    )
    def tile_task(
        store_cfg: StoreConfig, product: str, tile: Tile, key: Any, key_label: str, settings: Any, overwrite: bool
    ):
        store = TileStore.from_config(store_cfg, product)
        extra = secrets(settings) if secrets is not None else {}
        return stage.run_tile(store, tile, key, settings, overwrite, **extra)

    def tiles_body(config: RunConfig, tile_ids: list[str], overwrite: bool = False, show_progress: bool = False):
        grid = TileStore.from_config(config.store).read_grid()
        settings = stage.settings(config)
        futures = {
            tile_task.submit(config.store, config.product, grid[tile_id], key, _key_label(key), settings, overwrite): (
                tile_id,
                stage.store_key(key),
            )
            for tile_id in tile_ids
            for key in stage.keys(config)
        }
        return collect(stage.name, futures, show_progress)

    tiles_flow = flow(name=f"{stage.name}-tiles")(tiles_body)

    def stage_body(
        config: RunConfig,
        subset: TileSubset = TileSubset(),
        overwrite: bool = False,
        scheduler_address: str | None = None,
        show_progress: bool = False,
    ) -> dict:
        if check is not None:
            check(config, subset)
        store, tiles = prepare_stage(config, subset)
        require_stage_inputs(stage, config, store, tiles)
        with task_runner(config, scheduler_address) as runner:
            outcomes = tiles_flow.with_options(task_runner=runner)(config, tiles.tile_ids, overwrite, show_progress)
        result = finish_stage(config, stage.name, outcomes)
        return after(config, store, tiles, result) if after is not None else result

    return _named_flow(stage, stage_body)


def aoi_stage_flow(stage: Stage, body: AoiBody, *, check: Check | None = None):
    """The flow of an AOI-level stage: the same signature and checks as a tile stage, then `body`.

    A `whole_aoi` stage works on everything its input holds (training), so a subset is refused.
    """

    def stage_body(
        config: RunConfig,
        subset: TileSubset = TileSubset(),
        overwrite: bool = False,
        scheduler_address: str | None = None,  # unused: AOI-level stages need no cluster
        show_progress: bool = False,
    ) -> dict:
        if stage.whole_aoi and not subset.is_all:
            raise TileSelectionError(
                f"the {stage.name} stage works on the whole of its input ({', '.join(stage.reads)}): "
                f"choose tiles in the stages before it, then run `lcms {stage.name} CONFIG` without a subset"
            )
        if check is not None:
            check(config, subset)
        store, tiles = prepare_stage(config, subset)
        require_stage_inputs(stage, config, store, tiles)
        if stage.covers_grid(config):
            tiles = tiles_with_inputs(stage, config, store, store.read_grid())
        with lineage.recording(lineage.make_lineage(stage.settings(config), aoi_inputs(stage, config, store, tiles))):
            return body(config, store, tiles, overwrite)

    return _named_flow(stage, stage_body)


def _named_flow(stage: Stage, body: Callable):
    """The stage's flow: the run form of flows/parameters.py (a config name, the subset, years,
    overrides) resolved into `body`'s typed config, a run name and a summary artifact."""
    return flow(
        name=stage.name,
        description=stage.title,
        flow_run_name=run_namer(stage.name),
        validate_parameters=False,  # resolve_run checks them, naming the field
    )(stage_flow_function(stage, body))
