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
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture, as_completed
from prefect_dask import DaskTaskRunner

from flows.parameters import run_namer, stage_flow_function
from lcms import lineage, logs
from lcms.cluster import dask_cluster
from lcms.config import RunConfig, StoreConfig, TileSubset
from lcms.grid import AreaGrid, Tile, TileSelectionError
from lcms.selection import (  # noqa: F401  (re-exported: the flows' checks live in lcms/selection.py)
    GridMismatchError,
    StageInputError,
    load_grid,
    prepare_stage,
    require_inputs,
    require_stage_inputs,
    select_tiles,
)
from lcms.stages import Stage
from lcms.store import TileStore
from tasks.download.errors import retry_condition

log = logging.getLogger(__name__)


class TileFailures(RuntimeError):
    """Some tiles failed; the message lists them."""


@dataclass(frozen=True)
class TileOutcome:
    """What happened to one tile-year in a stage run: done, skipped (already done) or failed."""

    stage: str
    tile_id: str
    year: int | str
    status: str
    seconds: float
    error: str = ""


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
    """Wait for every tile task, logging one line per tile as it ends; a failed tile is recorded,
    not raised, so the others finish."""
    logger = get_run_logger()
    outcomes = []
    with logs.StageProgress(stage, len(futures), enabled=show_progress) as progress:
        for future in as_completed(list(futures)):
            tile_id, year = futures[future]
            result = future.result(raise_on_failure=False)
            if isinstance(result, BaseException):
                outcome = TileOutcome(stage, tile_id, year, "failed", 0.0, f"{type(result).__name__}: {result}")
                logger.error("%s %s/%s failed: %s", stage, tile_id, year, outcome.error)
            else:
                outcome = TileOutcome(stage, tile_id, year, result["status"], result["seconds"])
                logger.info("%s %s/%s %s in %.1f s", stage, tile_id, year, outcome.status, outcome.seconds)
            outcomes.append(outcome)
            progress.advance()
    return sorted(outcomes, key=lambda o: (str(o.year), o.tile_id))


def finish_stage(config: RunConfig, stage: str, outcomes: list[TileOutcome], seconds: float = 0.0) -> dict:
    """Publish the tile table as a Prefect artifact; fail the stage if tiles failed (by config)."""
    logger = get_run_logger()
    counts = {s: sum(o.status == s for o in outcomes) for s in ("done", "skipped", "failed")}
    create_table_artifact(
        key=f"{stage}-tiles",
        table=[asdict(o) for o in outcomes],
        description=f"{stage}: {counts['done']} done, {counts['skipped']} skipped, {counts['failed']} failed",
    )
    logs.summary(
        logger,
        "%s: %d tile-years: %d done, %d skipped, %d failed in %.1f s",
        stage,
        len(outcomes),
        counts["done"],
        counts["skipped"],
        counts["failed"],
        seconds,
    )
    failed = [o for o in outcomes if o.status == "failed"]
    if failed:
        listing = "; ".join(f"{o.tile_id}/{o.year}: {o.error}" for o in failed[:10])
        message = (
            f"{stage}: {len(failed)} of {len(outcomes)} tile-years failed ({listing}); "
            f"their logs: `lcms tiles CONFIG --stage {stage} --failed`"
        )
        if config.fail_on_tile_errors:
            raise TileFailures(message + ". Rerun the stage to retry them; finished tiles are skipped.")
        logger.warning(message)
    return {"stage": stage, **counts, "tiles": len(outcomes), "seconds": round(seconds, 1)}


# --------------------------------------------------------------------------- the flow factories

# A check before the cluster starts: (config, subset) -> None, raising a user error.
Check = Callable[[RunConfig, TileSubset], None]
# Secrets a tile function needs, resolved on the worker from the stage's settings: settings -> kwargs.
Secrets = Callable[[Any], dict[str, Any]]
# What an AOI-level stage does once checks pass: (config, store, tiles, overwrite) -> summary dict.
AoiBody = Callable[[RunConfig, TileStore, AreaGrid, bool], dict]


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

    tiles_flow = flow(name=f"{stage.name}-tiles", flow_run_name=f"{stage.name} tiles")(tiles_body)

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
        start = time.perf_counter()
        with task_runner(config, scheduler_address) as runner:
            outcomes = tiles_flow.with_options(task_runner=runner)(config, tiles.tile_ids, overwrite, show_progress)
        result = finish_stage(config, stage.name, outcomes, time.perf_counter() - start)
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
        tiles = stage.product_tiles(config, store, tiles)
        product = stage.product_name(config)
        record = store.product_record(stage.name, product) if product else None
        if not overwrite and record is not None and record.params_hash == stage.product_hash_of(config, store, tiles):
            return up_to_date(stage, store, product, record)
        inputs = stage.product_inputs(config, store, tiles)
        with lineage.recording(lineage.make_lineage(stage.settings(config), inputs)):
            return body(config, store, tiles, overwrite)

    return _named_flow(stage, stage_body)


def up_to_date(stage: Stage, store: TileStore, product: str, record) -> dict:
    """The summary of an AOI-level stage whose output is already made from the same inputs and settings."""
    published = store.published_dir(stage.name, product)
    message = f"{stage.name}: {product!r} is up to date (made {record.written_at}), nothing redone: {published}"
    get_run_logger().info(message)
    return {"stage": stage.name, "status": "skipped", "message": message, **dict(record.extra)}


def _named_flow(stage: Stage, body: Callable):
    """The stage's flow: the run form of flows/parameters.py (a config name, the subset, years,
    overrides) resolved into `body`'s typed config, a run name and a summary artifact."""
    return flow(
        name=stage.name,
        description=stage.title,
        flow_run_name=run_namer(stage.name),
        validate_parameters=False,  # resolve_run checks them, naming the field
    )(stage_flow_function(stage, body))
