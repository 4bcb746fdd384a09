"""What every stage flow shares: the store and grid, tile selection, the cluster, fan-out and the report.

A stage is two flows. The outer one (e.g. `download`) is what users run: it checks the
config, the store and the tile selection, starts (or joins) the Dask cluster, and then
calls the inner one (e.g. `download-tiles`) with a DaskTaskRunner on that cluster. The
inner flow submits one task per tile and year. Two levels are needed because a Prefect
flow's task runner is fixed before its body runs, while the cluster comes from the
run's config.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

from prefect import get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.futures import PrefectFuture, as_completed
from prefect_dask import DaskTaskRunner
from rich.progress import Progress

from lcms.cluster import dask_cluster
from lcms.config import AoiConfig, RunConfig, TileSubset, params_hash
from lcms.grid import AreaGrid, Tile, build_grid, load_aoi
from lcms.store import StoreError, TileStore

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
    store = TileStore.from_config(config.store)
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


def run_tile(
    stage: str,
    store: TileStore,
    tile: Tile,
    year: int | str,
    tile_params_hash: str,
    overwrite: bool,
    produce: Callable[[], object],
) -> dict:
    """Skip a tile already done with the same parameters, otherwise produce it; report how it went."""
    start = time.perf_counter()
    if not overwrite and store.is_done(stage, year, tile.tile_id, tile_params_hash):
        return {"status": "skipped", "seconds": 0.0}
    produce()
    return {"status": "done", "seconds": round(time.perf_counter() - start, 3)}


def run_stage(
    config: RunConfig,
    subset: TileSubset,
    overwrite: bool,
    scheduler_address: str | None,
    show_progress: bool,
    stage: str,
    tiles_flow,
    input_stages: tuple[str, ...] = (),
) -> dict:
    """The body of every outer stage flow: checks, cluster, the inner per-tile flow, the report."""
    store, tiles = prepare_stage(config, subset)
    for input_stage in input_stages:
        require_inputs(store, input_stage, stage, tiles.tile_ids, config.years)
    with task_runner(config, scheduler_address) as runner:
        outcomes = tiles_flow.with_options(task_runner=runner)(config, tiles.tile_ids, overwrite, show_progress)
    return finish_stage(config, stage, outcomes)


def submit_tiles(tile_task, stage: str, config: RunConfig, stage_cfg, tile_ids: list[str], overwrite, show_progress):
    """The body of every inner stage flow: one task per tile and year, on the flow's Dask runner."""
    grid = TileStore.from_config(config.store).read_grid()
    futures = {
        tile_task.submit(config.store, grid[tile_id], year, stage_cfg, overwrite): (tile_id, year)
        for tile_id in tile_ids
        for year in config.years
    }
    return collect(stage, futures, show_progress)


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
