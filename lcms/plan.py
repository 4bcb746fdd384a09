"""What a run would do, worked out from the store before anything starts: `lcms plan`.

For every stage of a chain and every output it would make (a tile and year, a tile and pair
of years, or an AOI-level product), the plan says whether the output is up to date (skipped) or
would be made, and why:

- `new`: never made;
- `failed before`: its last attempt failed (its log is in the store: `lcms tiles --failed`);
- `parameters changed (features.indices, ...)`: its recorded settings differ from the config's;
- `input redone (features)`: an input it read was made again since, or will be in this run;
- `code changed`: same settings and inputs, but its staleness rule differs otherwise;
- `overwrite`: `--overwrite` was given;
- `blocked`: an input it needs is missing and this run does not make it.

The same staleness rules decide at run time (each stage's `tile_hash` / `product_hash`, see
lcms/stages.py), so a plan that says "nothing to do" lets `lcms run` end in seconds without
starting Prefect or Dask. No Prefect here.
"""

from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from lcms import lineage
from lcms.grid import AreaGrid
from lcms.layout import StoreError
from lcms.stages import Keying, Stage, get_stage
from lcms.store import DoneRecord, TileStore

SKIP = "skip"
RUN = "run"
BLOCKED = "blocked"


@dataclass(frozen=True)
class PlannedOutput:
    """One output of one stage: what the run would do with it, and why."""

    stage: str
    key: str  # the year, '<from>-<to>', or '-' for an AOI-level product
    name: str  # the tile id, or the product's name
    action: str  # SKIP, RUN or BLOCKED
    reason: str


@dataclass
class StagePlan:
    stage: str
    outputs: list[PlannedOutput] = field(default_factory=list)

    @property
    def to_run(self) -> list[PlannedOutput]:
        return [o for o in self.outputs if o.action == RUN]

    @property
    def blocked(self) -> list[PlannedOutput]:
        return [o for o in self.outputs if o.action == BLOCKED]

    def reasons(self) -> Counter:
        """How many outputs would be made for each reason (the reason's kind, without details)."""
        return Counter(o.reason.split(" (")[0] for o in self.outputs if o.action != SKIP)

    def describe(self) -> str:
        skipped = len(self.outputs) - len(self.to_run) - len(self.blocked)
        why = ", ".join(f"{n} {reason}" for reason, n in self.reasons().most_common())
        return f"{len(self.to_run)} to make, {skipped} up to date" + (f" ({why})" if why else "")


@dataclass
class Plan:
    stages: list[StagePlan]

    @property
    def nothing_to_do(self) -> bool:
        return all(not s.to_run and not s.blocked for s in self.stages)

    @property
    def stages_to_run(self) -> list[str]:
        return [s.stage for s in self.stages if s.to_run]

    def rows(self) -> list[PlannedOutput]:
        return [o for s in self.stages for o in s.outputs]


def _changed_fields(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted names of the settings that differ between two JSON values."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            out += _changed_fields(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    return [prefix.rstrip(".") or "settings"] if old != new else []


def _why_stale(stage: Stage, record: DoneRecord, settings: Any, current_inputs: dict[str, str]) -> str:
    """Why an output whose hash differs from the config's would be made again."""
    recorded = record.lineage or {}
    if "params" in recorded:
        changed = _changed_fields(recorded["params"], lineage.as_params(settings))
        if changed:
            section = f"{stage.config}." if stage.config else ""
            shown = ", ".join(section + c for c in changed[:4]) + (" ..." if len(changed) > 4 else "")
            return f"parameters changed ({shown})"
    before = {_input_id(e): e["attempt"] for e in recorded.get("inputs", [])}
    redone = sorted({k.split("/")[0] for k, attempt in current_inputs.items() if before.get(k) not in (None, attempt)})
    if redone:
        return f"input redone ({', '.join(redone)})"
    return "code changed" if recorded else "parameters changed (made before lineage was recorded)"


def plan_chain(config, chain: list[Stage], store: TileStore, tiles: AreaGrid, overwrite: bool = False) -> Plan:
    """The plan of running `chain` (stages in pipeline order) over `tiles` of the config."""
    redo: set[tuple[str, str, str]] = set()  # (stage, key, name) made again by this plan
    in_chain = {stage.name for stage in chain}
    plans = []
    for stage in chain:
        plan = StagePlan(stage.name)
        if stage.is_tile_stage:
            _plan_tiles(stage, config, store, tiles, overwrite, redo, in_chain, plan)
        elif stage.product_name(config) is not None:
            _plan_product(stage, config, store, tiles, overwrite, redo, plan)
        plans.append(plan)
        redo |= {(o.stage, o.key, o.name) for o in plan.outputs if o.action != SKIP}
        if stage.name == "change" and get_stage("change-polygons").runs_when(config):
            # The change flow also writes the AOI-wide polygon layer once its tiles are done.
            layer = StagePlan("change-polygons")
            _plan_product(get_stage("change-polygons"), config, store, tiles, overwrite, redo, layer)
            plans.append(layer)
            redo |= {(o.stage, o.key, o.name) for o in layer.outputs if o.action != SKIP}
    return Plan(plans)


def _upstream_redone(stage: Stage, config, key, tile_id: str, redo: set) -> list[str]:
    names = []
    for name in stage.reads:
        source = get_stage(name)
        if source.keyed_by is Keying.TILE_YEAR:
            if any((name, str(y), tile_id) in redo for y in stage.input_keys(key)):
                names.append(name)
        elif source.keyed_by is Keying.TILE_YEAR_PAIR:
            if any((name, str(source.store_key(k)), tile_id) in redo for k in source.keys(config)):
                names.append(name)
        elif any(r[0] == name for r in redo):
            names.append(name)
    return names


def _plan_tiles(stage, config, store, tiles, overwrite, redo, in_chain, plan) -> None:
    settings = stage.settings(config)
    for key in stage.keys(config):
        store_key = str(stage.store_key(key))
        done = store.done_tiles(stage.name, store_key)  # one listing per stage and key
        failed = store.failed_tiles(stage.name, store_key)
        for tile in tiles:
            action, reason = _tile_decision(
                stage,
                config,
                store,
                tile,
                key,
                settings,
                done.get(tile.tile_id),
                tile.tile_id in failed,
                overwrite,
                redo,
                in_chain,
            )
            plan.outputs.append(PlannedOutput(stage.name, store_key, tile.tile_id, action, reason))


def _tile_decision(stage, config, store, tile, key, settings, record, failed, overwrite, redo, in_chain):
    """(action, reason) for one tile output."""
    if overwrite:
        return RUN, "overwrite"
    upstream = _upstream_redone(stage, config, key, tile.tile_id, redo)
    if upstream:
        return RUN, f"input redone ({', '.join(upstream)})"
    try:
        wanted = stage.tile_hash_of(store, tile, key, settings)
    except (StoreError, FileNotFoundError, ValueError) as exc:
        if any(name in in_chain for name in stage.inputs(config)):  # made earlier in this run
            return RUN, "new" if record is None else "input redone"
        return BLOCKED, str(exc).split("; ")[0]
    if record is None:
        return RUN, "failed before" if failed else "new"
    if record.params_hash == wanted:
        return SKIP, "up to date"
    inputs = {_input_id(e): e["attempt"] for e in stage.tile_inputs(store, tile, key, settings)}
    return RUN, _why_stale(stage, record, settings, inputs)


def _input_id(entry: dict) -> str:
    return f"{entry['stage']}/{entry['key']}/{entry['name']}"


def _plan_product(stage, config, store, tiles, overwrite, redo, plan) -> None:
    name = stage.product_name(config)

    def add(action: str, reason: str) -> None:
        plan.outputs.append(PlannedOutput(stage.name, "-", name, action, reason))

    record = store.product_record(stage.name, name)
    upstream = sorted({r[0] for r in redo if r[0] in stage.reads})
    if overwrite:
        return add(RUN, "overwrite")
    if upstream:
        return add(RUN, f"input redone ({', '.join(upstream)})")
    if record is None:
        return add(RUN, "new")
    try:
        covered = stage.product_tiles(config, store, tiles)
        wanted = stage.product_hash_of(config, store, covered)
    except (StoreError, FileNotFoundError, ValueError) as exc:
        return add(BLOCKED, str(exc).split("; ")[0])
    if record.params_hash == wanted:
        return add(SKIP, "up to date")
    current = {
        f"{e['stage']}/{e['key']}/{e['name']}": e["attempt"] for e in stage.product_inputs(config, store, covered)
    }
    add(RUN, _why_stale(stage, record, stage.settings(config), current))


def select_chain(config, stages: list[str] | None = None, start: str | None = None) -> list[Stage]:
    """The stages of the country run for this config (in pipeline order), optionally only `stages`
    or those from `start` on. A stage that is not a runnable stage is named in the error."""
    from lcms.stages import stages_with_flows

    runnable = [s for s in stages_with_flows() if s.runs_when(config)]
    names = [s.name for s in stages_with_flows()]
    for name in [*(stages or []), *([start] if start else [])]:
        if name not in names:
            raise StoreError(f"unknown stage {name!r}; the stages are: {', '.join(names)}")
    if stages:
        return [s for s in runnable if s.name in stages]
    if start:
        return runnable[[s.name for s in runnable].index(start) :] if start in [s.name for s in runnable] else []
    return runnable


@functools.cache
def _reasons() -> dict[str, str]:
    """Why a stage does not run for a config, by the name of its `runs_when` condition."""
    return {
        "_has_reference": "the config has no reference.path (ground truth), so no model is trained or applied",
        "_has_change_years": "change detection needs reference.path and two years (or change.years)",
    }


def not_run_reasons(stages, config) -> list[tuple[str, str]]:
    """The stages the country run leaves out for this config, each with the reason."""
    out = []
    for stage in stages:
        if stage.runs_when(config):
            continue
        condition = getattr(stage.runs_when, "__name__", "its condition")
        out.append((stage.name, _reasons().get(condition, f"`{condition}` is false for this config")))
    return out
