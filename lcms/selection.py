"""The tiles a run works on, and the checks made before any work starts.

Everything here runs before Prefect or Dask start, so that a bad AOI, subset, store or a missing
input fails in seconds with one line: the store's grid (built on first use), the tile selection
of a subset, a writable store, and the stage inputs the selected tiles need. The flows
(flows/common.py), the plan (lcms/plan.py) and the CLI all use it.
"""

from __future__ import annotations

from lcms.config import AoiConfig, RunConfig, TileSubset, params_hash
from lcms.grid import AreaGrid, build_grid, load_aoi
from lcms.stages import Stage
from lcms.store import StoreError, TileStore


class GridMismatchError(StoreError):
    """The store holds a grid made with other AOI or grid settings than the config's."""


class StageInputError(StoreError):
    """A stage was started before the stage it reads from had finished the tiles it needs."""


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


def require_stage_inputs(stage: Stage, config: RunConfig, store: TileStore, tiles: AreaGrid) -> None:
    """Fail before any work when a tile-level input of `stage` is missing for a selected tile.

    AOI-level inputs (a merged dataset, a model, a polygon layer) are checked by the stage itself.
    """
    for name in stage.inputs(config):
        keys = stage.input_store_keys(name, config)
        if keys is not None:
            require_inputs(store, name, stage.name, tiles.tile_ids, keys)
