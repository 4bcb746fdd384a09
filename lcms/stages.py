"""Every stage of LCMS, declared once: the pipeline in one table.

A declaration says what a stage is: its name, the section of the run config that holds its
settings, the stages it reads, what it writes (its Zarr arrays, or files), how its outputs are
keyed (per tile and year, per tile and pair of years, or once per AOI; and, for every stage
after features, per product: land cover, crop types, ...), and, for tile stages, the function
that makes one tile's output and the function that says when that output is stale.

Everything else derives from these declarations: the store finds each stage's arrays here
(lcms/store.py), the flows are made from them by one factory (flows/common.py), `lcms` has a
command per stage and `lcms status` a row per stage (lcms/cli.py), the country run chains them
in this order (flows/run.py), and tests/test_stages.py checks that prefect.yaml has a
deployment per stage with the entrypoint derived here.

Adding a stage is one `Stage(...)` here (or `register(Stage(...))` elsewhere) plus its tile
function; tests/test_stages.py adds a toy stage that way.

Tile functions are plain functions (no Prefect) named by "module:function", imported when first
used, so that the CLI starts without importing LightGBM or GDAL:

    tile_function(store, tile, key, settings) -> DoneRecord   # make and commit one output
    tile_hash(store, tile, key, settings) -> str              # what the output depends on

`key` is the year (int) for per-year stages and the pair of years for per-pair stages.
`tile_hash` reads the done marks of the inputs, so an input that was redone makes the output
stale, and fails with a message naming the missing input.
"""

from __future__ import annotations

import contextlib
import enum
import importlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lcms import lineage, logs
from lcms.layout import SAMPLE_CHUNK, SPATIAL_CHUNK, SPLIT_CODES, ArraySpec, StageLayout, StoreError, WriteSkipped

if TYPE_CHECKING:
    from lcms.config import RunConfig


class Keying(enum.StrEnum):
    """How a stage's outputs are keyed in the store."""

    TILE_YEAR = "tile-year"  # one output per tile and year: <stage>/<year>/<tile>
    TILE_YEAR_PAIR = "tile-year-pair"  # one per tile and pair of years: <stage>/<from>-<to>/<tile>
    AOI = "aoi"  # one per AOI and product: <stage>/<product>
    AOI_YEAR_PAIR = "aoi-year-pair"  # one per AOI, product and pair of years: <stage>/<product>/<from>-<to>


def change_key(year_from: int, year_to: int) -> str:
    """The store's key of a pair of years (in place of a year): e.g. '2023-2024'."""
    return f"{year_from}-{year_to}"


def _always(config: RunConfig) -> bool:
    return True


def _never(config: RunConfig) -> bool:
    return False


def _has_reference(config: RunConfig) -> bool:
    return config.reference.is_set


def _has_change_years(config: RunConfig) -> bool:
    return config.reference.is_set and config.change_years is not None


def _resolve(dotted: str) -> Callable:
    # Looked up on every call (a dict lookup once imported), so a patched function is seen.
    module, name = dotted.split(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class Stage:
    """One stage of the pipeline."""

    name: str
    title: str  # one line: the command's help and the flow's description
    keyed_by: Keying
    config: str | None = None  # the RunConfig section holding its settings (None: none of its own)
    # Its outputs belong to one product (config.product): kept apart from other products' in the store.
    # Download and features are shared by every product of a store.
    per_product: bool = True
    reads: tuple[str, ...] = ()  # every stage whose output it may read
    arrays: tuple[ArraySpec, ...] = ()  # the Zarr arrays of one output; empty for file products
    files: bool = False  # an AOI-level product made of files (a model, a GeoPackage, a report)
    tile_function: str | None = None  # "module:function", see the module docstring
    tile_hash: str | None = None  # "module:function", see the module docstring
    # The settings handed to the tile function, when more than the config section (e.g. resolved names).
    settings_of: Callable[[RunConfig], Any] | None = None
    # The inputs a given config reads, when they depend on it (e.g. which labels the change compares).
    inputs_of: Callable[[RunConfig], tuple[str, ...]] | None = None
    # The name of an AOI-level stage's product for a config (None: the config makes none).
    product_of: Callable[[RunConfig], str | None] | None = None
    # The years an AOI-level stage reads (default: the run's years).
    years_of: Callable[[RunConfig], list[int]] | None = None
    runs_when: Callable[[RunConfig], bool] = _always  # in the country run
    retries: int = 1  # Prefect retries of a failed tile
    has_flow: bool = True  # False: written by another stage's flow (the change polygons)
    versioned: bool = False  # an AOI product whose every version is kept (models): none is ever deleted
    whole_aoi: bool = False  # works on all of its input, whatever tile subset a run selects (training)
    # An AOI-level stage that covers every tile of the grid whose inputs are done, whatever tiles a run
    # selects (maps, report): a subset rerun redoes those tiles upstream and this product keeps the rest.
    covers_grid: Callable[[RunConfig], bool] = _never
    # An AOI-level stage's staleness rule, "module:function": (config, store, tiles) -> str, the hash its
    # done mark records; an output with the same hash is up to date. Default: `default_product_hash`.
    product_hash: str | None = None

    # ------------------------------------------------------------------ derived

    @property
    def is_tile_stage(self) -> bool:
        return self.keyed_by in (Keying.TILE_YEAR, Keying.TILE_YEAR_PAIR)

    @property
    def layout(self) -> StageLayout | None:
        return StageLayout(self.name, self.arrays) if self.arrays else None

    @property
    def flow_module(self) -> str:
        """The module in flows/ that holds the stage's flow."""
        return "flows." + self.name.replace("-", "_")

    @property
    def flow_name(self) -> str:
        """The name of the stage's flow in its module."""
        return self.name.replace("-", "_") + "_flow"

    @property
    def flow_entrypoint(self) -> str:
        """The Prefect entrypoint of the stage's flow, as prefect.yaml writes it."""
        return f"{self.flow_module.replace('.', '/')}.py:{self.flow_name}"

    def flow(self):
        """The stage's Prefect flow (imports its module)."""
        return getattr(importlib.import_module(self.flow_module), self.flow_name)

    def settings(self, config: RunConfig) -> Any:
        """What the tile function gets: the stage's config section, completed from the run if needed."""
        if self.settings_of is not None:
            return self.settings_of(config)
        return getattr(config, self.config) if self.config else None

    def inputs(self, config: RunConfig) -> tuple[str, ...]:
        return self.inputs_of(config) if self.inputs_of is not None else self.reads

    def keys(self, config: RunConfig) -> list:
        """The years (or pairs of years) a tile stage runs on for this config."""
        if self.keyed_by is Keying.TILE_YEAR:
            return list(config.years)
        if self.keyed_by is Keying.TILE_YEAR_PAIR:
            return [tuple(config.change_years)] if config.change_years else []
        return []

    def input_years(self, config: RunConfig) -> list[int]:
        """The years whose tile outputs the stage reads."""
        if self.is_tile_stage:
            return sorted({y for key in self.keys(config) for y in self.input_keys(key)})
        return list(self.years_of(config)) if self.years_of is not None else list(config.years)

    def input_store_keys(self, name: str, config: RunConfig) -> list | None:
        """The store keys (years, or '<from>-<to>') of input stage `name` that this stage reads for
        `config`; None when the input is an AOI-level product."""
        source = get_stage(name)
        if source.keyed_by is Keying.TILE_YEAR:
            return self.input_years(config)
        if source.keyed_by is Keying.TILE_YEAR_PAIR:
            return [source.store_key(key) for key in source.keys(config)]
        return None

    def store_key(self, key: int | tuple[int, int]) -> int | str:
        """Where a key's output sits in the store: the year, or '<from>-<to>'."""
        return change_key(*key) if isinstance(key, tuple) else key

    def input_keys(self, key: int | tuple[int, int]) -> list[int]:
        """The years of the input outputs one key reads (both years of a pair)."""
        return list(key) if isinstance(key, tuple) else [key]

    # ------------------------------------------------------------------ tile work

    def tile_hash_of(self, store, tile, key, settings) -> str:
        return _resolve(self.tile_hash)(store, tile, key, settings)

    def make_tile(self, store, tile, key, settings, **secrets):
        return _resolve(self.tile_function)(store, tile, key, settings, **secrets)

    def run_tile(self, store, tile, key, settings, overwrite: bool, **secrets) -> dict:
        """Skip a tile done with the same inputs and parameters; otherwise make it. Says how it went."""
        start = time.perf_counter()
        tile_hash = self.tile_hash_of(store, tile, key, settings)
        if not overwrite and store.is_done(self.name, self.store_key(key), tile.tile_id, tile_hash):
            return {"status": "skipped", "seconds": 0.0}
        store_key = self.store_key(key)
        try:
            with (
                logs.capture_tile_log() as lines,
                lineage.recording(lineage.make_lineage(settings, self.tile_inputs(store, tile, key, settings))),
            ):
                self.make_tile(store, tile, key, settings, **secrets)
        except WriteSkipped:  # another run is writing the tile (on_busy "skip"), or just made it the same way
            return {"status": "skipped", "seconds": round(time.perf_counter() - start, 3)}
        except Exception as exc:  # kept in the store beside the tile's done mark; `lcms tiles --failed` lists them
            what = f"{self.name} {tile.tile_id}/{store_key}"
            with contextlib.suppress(Exception):
                store.write_failure_log(self.name, store_key, tile.tile_id, logs.failure_text(what, lines, exc))
            raise
        store.clear_failure_log(self.name, store_key, tile.tile_id)
        return {"status": "done", "seconds": round(time.perf_counter() - start, 3)}

    # ------------------------------------------------------------------ AOI-level work

    def product_name(self, config: RunConfig) -> str | None:
        """The name of the AOI-level output this config makes (None: it makes none)."""
        return self.product_of(config) if self.product_of is not None else None

    def ready_tiles(self, config: RunConfig, store, grid):
        """The tiles of `grid` whose tile-level inputs of this stage are all done (one listing per input and key)."""
        ready = set(grid.tile_ids)
        for name in self.inputs(config):
            for key in self.input_store_keys(name, config) or []:
                ready &= set(store.done_tiles(name, key))
        return grid.select(tile_ids=[t for t in grid.tile_ids if t in ready])

    def product_tiles(self, config: RunConfig, store, selected):
        """The tiles an AOI-level output covers: every tile of the grid whose inputs are done when the
        stage `covers_grid`, else the selected ones."""
        return self.ready_tiles(config, store, store.read_grid()) if self.covers_grid(config) else selected

    def product_inputs(self, config: RunConfig, store, tiles) -> list[dict]:
        """The done marks an AOI-level output reads: every tile input of its tiles, and the AOI products."""
        entries = []
        for name in self.reads:
            keys = self.input_store_keys(name, config)
            if keys is None:
                source = get_stage(name)
                product = source.product_name(config)
                record = store.product_record(name, product) if product else None
                if record is not None:
                    entries.append(lineage.input_entry(name, "-", product, record))
                continue
            for key in keys:
                done = store.done_tiles(name, key)
                entries += [lineage.input_entry(name, key, t, done[t]) for t in tiles.tile_ids if t in done]
        return entries

    def product_hash_of(self, config: RunConfig, store, tiles) -> str:
        """What an AOI-level output depends on: its done mark records this; the same hash means up to date."""
        if self.product_hash is not None:
            return _resolve(self.product_hash)(config, store, tiles)
        return default_product_hash(self, config, store, tiles)

    def tile_inputs(self, store, tile, key, settings) -> list[dict]:
        """The done marks one tile output reads: its tile inputs of the same year(s), and AOI products
        (the model version it uses: the pinned one, if the settings pin one)."""
        inputs = []
        for name in self.reads:
            source = get_stage(name)
            if source.keyed_by is Keying.TILE_YEAR:
                for year in self.input_keys(key):
                    record = store.done_record(name, year, tile.tile_id)
                    if record is not None:
                        inputs.append(lineage.input_entry(name, year, tile.tile_id, record))
            elif source.keyed_by is Keying.AOI:
                pinned = getattr(settings, "model_version", None) if source.versioned else None
                if pinned:
                    record = store.version_record(name, store.product, pinned)
                else:
                    record = store.product_record(name, store.product)
                if record is not None:
                    inputs.append(lineage.input_entry(name, "-", store.product, record))
        return inputs


def default_product_hash(stage: Stage, config: RunConfig, store, tiles) -> str:
    """The stage's settings, the years it covers, and the attempt of every input it reads."""
    from lcms.config import params_hash

    entries = stage.product_inputs(config, store, tiles)
    inputs = sorted(f"{e['stage']}/{e['key']}/{e['name']}/{e['attempt']}" for e in entries)
    return params_hash(lineage.as_params(stage.settings(config)), stage.input_years(config), inputs)


# --------------------------------------------------------------------------- the registry

STAGES: dict[str, Stage] = {}


def register(stage: Stage) -> Stage:
    """Add a stage to the pipeline (after the ones declared so far); its name must be new."""
    if stage.name in STAGES:
        raise ValueError(f"a stage named {stage.name!r} is already declared")
    if stage.is_tile_stage and not (stage.tile_function and stage.tile_hash and stage.arrays):
        raise ValueError(f"tile stage {stage.name!r} needs arrays, a tile_function and a tile_hash")
    unknown = [r for r in stage.reads if r not in STAGES]
    if unknown:
        raise ValueError(f"stage {stage.name!r} reads {unknown}, which are not declared before it")
    STAGES[stage.name] = stage
    return stage


def unregister(name: str) -> None:
    """Remove a stage added with `register` (tests add toy stages and take them away again)."""
    STAGES.pop(name, None)


def get_stage(name: str) -> Stage:
    if name not in STAGES:
        raise StoreError(f"unknown stage {name!r}; known stages: {list(STAGES)}")
    return STAGES[name]


def stages_with_flows() -> Iterator[Stage]:
    """The stages users run, in pipeline order."""
    return (s for s in STAGES.values() if s.has_flow)


# --------------------------------------------------------------------------- the pipeline

_SPATIAL = {"y": SPATIAL_CHUNK, "x": SPATIAL_CHUNK}
_SAMPLES = {"sample": SAMPLE_CHUNK}
_POLYGONS = {"change_id": 65_536}


def _feature_matrix(description: str) -> ArraySpec:
    return ArraySpec(
        "features",
        ("sample", "column"),
        "int16",
        -32768,
        description,
        chunks=_SAMPLES,
        attrs={"scale_factor": 1e-4, "missing_value": -32768},  # packed like the features stage's output
        alternatives={"float32": (float("nan"), {})},
    )


def _reference_settings(config: RunConfig):
    # With reference.reviews, the stage also needs where `lcms serve` keeps the reviews (tasks/reference/reviews.py).
    if not (config.reference.reviews or config.reference.active_labels):  # active labels: the same database
        return config.reference
    from lcms.config import ReviewsDatabaseConfig

    serve = config.serve
    postgis = (serve.postgis or config.change.postgis) if serve.database == "postgis" else None
    where = ReviewsDatabaseConfig(database=serve.database, database_path=serve.database_path, postgis=postgis)
    return config.reference.model_copy(update={"reviews_database": where})


def _prediction_settings(config: RunConfig):
    return config.prediction


def _change_settings(config: RunConfig):
    return config.change.model_copy(update={"years": config.change_years})


def _change_inputs(config: RunConfig) -> tuple[str, ...]:
    # The labels' stage, and the prediction for the confidence.
    return tuple(dict.fromkeys((config.change.source, "prediction")))


def _report_inputs(config: RunConfig) -> tuple[str, ...]:
    return (config.change.source, *(("change", "change-polygons") if config.change_years else ()))


def _export_inputs(config: RunConfig) -> tuple[str, ...]:
    extra = ("prediction",) if config.export.confidence else ()
    # Not "download": the imagery composites cover the tiles whose download is in the store, if any.
    return tuple(dict.fromkeys((config.export.source, *extra)))


register(
    Stage(
        "download",
        "Stage 1: bands, cloud and valid masks for every tile and year.",
        Keying.TILE_YEAR,
        config="download",
        per_product=False,
        arrays=(
            ArraySpec(
                "bands",
                ("time", "y", "x", "band"),
                "uint16",
                0,
                "Sentinel-2 reflectance as digital numbers: reflectance = DN / 10000; 0 = no data",
                chunks={**_SPATIAL, "band": 1},
                attrs={"reflectance_scale": 10_000},
            ),
            ArraySpec(
                "data_mask",
                ("time", "y", "x"),
                "bool",
                False,
                "True where the satellite swath has data",
                chunks=_SPATIAL,
            ),
            ArraySpec(
                "cloud_prob",
                ("time", "y", "x"),
                "uint8",
                255,
                "s2cloudless cloud probability in percent (0-100); 255 = no data",
                chunks=_SPATIAL,
                attrs={"units": "%"},
            ),
            ArraySpec(
                "cloud_mask",
                ("time", "y", "x"),
                "bool",
                False,
                "True where s2cloudless finds cloud (False where there is no data)",
                chunks=_SPATIAL,
            ),
            ArraySpec(
                "shadow_mask",
                ("time", "y", "x"),
                "bool",
                False,
                "True where a cloud shadow is found (projected clouds on dark pixels, or SCL class 3)",
                chunks=_SPATIAL,
            ),
            ArraySpec(
                "valid_mask",
                ("time", "y", "x"),
                "bool",
                False,
                "True where there is data and no cloud: the pixels later stages may use",
                chunks=_SPATIAL,
            ),
            ArraySpec(
                "valid_coverage",
                ("time",),
                "float32",
                0.0,
                "Fraction of the tile's pixels that are valid in each frame",
            ),
        ),
        tile_function="tasks.download.tile:download_tile",
        tile_hash="tasks.download.tile:download_tile_hash",
        retries=2,
    )
)

register(
    Stage(
        "features",
        "Stage 2: frame filter, indices, temporal interpolation.",
        Keying.TILE_YEAR,
        config="features",
        per_product=False,
        reads=("download",),
        arrays=(
            ArraySpec(
                "features",
                ("time", "y", "x", "feature"),
                "int16",
                -32768,
                "Features on the stage's date grid: reflectances, indices, tasselled cap",
                chunks={**_SPATIAL, "feature": 1},
                # CF packing: xarray decodes value = stored × scale_factor.
                attrs={"scale_factor": 1e-4, "missing_value": -32768},
                alternatives={"float32": (float("nan"), {})},
            ),
            ArraySpec(
                "no_valid",
                ("y", "x"),
                "bool",
                False,
                "True where the pixel had no valid observation in the year: its features are fill values",
                chunks=_SPATIAL,
            ),
            ArraySpec(
                "valid_count",
                ("y", "x"),
                "uint16",
                0,
                "Number of valid observations the features were made from",
                chunks=_SPATIAL,
            ),
        ),
        tile_function="tasks.features.tile:features_tile",
        tile_hash="tasks.features.tile:features_tile_hash",
    )
)

register(
    Stage(
        "reference",
        "Stage 3: reference polygons rasterised per tile, eroded.",
        Keying.TILE_YEAR,
        config="reference",
        arrays=(
            ArraySpec("labels", ("y", "x"), "uint8", 0, "Reference class codes; 0 = no data", chunks=_SPATIAL),
            ArraySpec(
                "labels_eroded",
                ("y", "x"),
                "uint8",
                0,
                "Reference class codes after the negative buffer: the pixels to sample",
                chunks=_SPATIAL,
            ),
        ),
        tile_function="tasks.reference.tile:reference_tile",
        tile_hash="tasks.reference.tile:reference_tile_hash",
        settings_of=_reference_settings,
        runs_when=_has_reference,
    )
)

register(
    Stage(
        "sampling",
        "Stage 4: training pixels and their features, per tile and year.",
        Keying.TILE_YEAR,
        config="sampling",
        reads=("features", "reference"),
        arrays=(
            _feature_matrix("Features of the sampled pixels: column j is date j // F, feature j % F (F features)"),
            ArraySpec("label", ("sample",), "uint8", 0, "Reference class code of each sample", chunks=_SAMPLES),
            ArraySpec("row", ("sample",), "int32", -1, "Pixel row of each sample in the tile grid", chunks=_SAMPLES),
            ArraySpec("col", ("sample",), "int32", -1, "Pixel column of each sample in the tile grid", chunks=_SAMPLES),
        ),
        tile_function="tasks.sampling.tile:sampling_tile",
        tile_hash="tasks.sampling.tile:sampling_tile_hash",
        runs_when=_has_reference,
    )
)

register(
    Stage(
        "merge",
        "Stage 5: the tiles' samples in one dataset, split train/validation/test.",
        Keying.AOI,
        config="merge",
        reads=("sampling",),
        covers_grid=lambda config: config.merge.scope == "all",
        product_of=lambda config: config.product,
        product_hash="tasks.merge.dataset:merge_product_hash",
        years_of=lambda config: config.merge_years,
        arrays=(
            _feature_matrix("Features of every sample of the AOI; columns as in the `column` coordinate"),
            ArraySpec("label", ("sample",), "uint8", 0, "Reference class code of each sample", chunks=_SAMPLES),
            ArraySpec(
                "split",
                ("sample",),
                "uint8",
                255,
                "Split of each sample: 0 train, 1 validation (early stopping), 2 test",
                chunks=_SAMPLES,
                attrs={"codes": SPLIT_CODES},
            ),
            ArraySpec(
                "tile",
                ("sample",),
                "uint32",
                0,
                "Index of the sample's tile in the `tile_ids` attribute",
                chunks=_SAMPLES,
            ),
            ArraySpec("year", ("sample",), "int16", 0, "Year of the sample", chunks=_SAMPLES),
            ArraySpec("row", ("sample",), "int32", -1, "Pixel row of the sample in its tile's grid", chunks=_SAMPLES),
            ArraySpec(
                "col", ("sample",), "int32", -1, "Pixel column of the sample in its tile's grid", chunks=_SAMPLES
            ),
        ),
        runs_when=_has_reference,
    )
)

register(
    Stage(
        "training",
        "Stage 6: LightGBM model, metrics and plots from the merged dataset.",
        Keying.AOI,
        config="training",
        reads=("merge",),
        product_of=lambda config: config.product,
        product_hash="tasks.training.stage:training_product_hash",
        files=True,
        versioned=True,
        whole_aoi=True,
        runs_when=_has_reference,
    )
)

register(
    Stage(
        "prediction",
        "Stage 7: labels, probabilities and confidence per tile.",
        Keying.TILE_YEAR,
        config="prediction",
        reads=("features", "training"),
        arrays=(
            ArraySpec("labels", ("y", "x"), "uint8", 0, "Predicted class codes; 0 = no data", chunks=_SPATIAL),
            ArraySpec(
                "probabilities",
                ("y", "x", "class"),
                "uint8",
                0,
                "Probability of each class of the `class` coordinate, in percent (0 where no data)",
                chunks=_SPATIAL,
                attrs={"units": "%"},
            ),
            ArraySpec(
                "confidence",
                ("y", "x"),
                "uint8",
                0,
                "Probability of the predicted class in percent; 0 = no data",
                chunks=_SPATIAL,
                attrs={"units": "%"},
            ),
        ),
        tile_function="tasks.prediction.tile:prediction_tile",
        tile_hash="tasks.prediction.tile:prediction_tile_hash",
        settings_of=_prediction_settings,
        inputs_of=lambda config: ("features",),  # the model is checked before the cluster starts
        runs_when=_has_reference,
    )
)

register(
    Stage(
        "postprocess",
        "Stage 8: majority, sieve, superpixels, erosion per tile.",
        Keying.TILE_YEAR,
        config="postprocess",
        reads=("prediction",),
        arrays=(
            ArraySpec(
                "labels",
                ("y", "x"),
                "uint8",
                0,
                "Class codes after the post-processing chain; the prediction stage keeps the original",
                chunks=_SPATIAL,
            ),
        ),
        tile_function="tasks.postprocess.tile:postprocess_tile",
        tile_hash="tasks.postprocess.tile:postprocess_tile_hash",
        runs_when=_has_reference,
    )
)

register(
    Stage(
        "export",
        "Maps and imagery composites as Cloud-Optimised GeoTIFFs with a STAC catalogue, per UTM zone.",
        Keying.AOI,
        config="export",
        reads=("download", "postprocess", "prediction"),
        inputs_of=_export_inputs,
        covers_grid=_always,
        product_of=lambda config: config.product,
        files=True,  # the maps go to export.url (default <store>/maps); the product is their list, maps.json
        runs_when=_has_reference,
    )
)

register(
    Stage(
        "change",
        "Stage 9: change polygons between two years' maps (GeoPackage, PostGIS).",
        Keying.TILE_YEAR_PAIR,
        config="change",
        reads=("postprocess", "prediction"),
        arrays=(
            ArraySpec(
                "status",
                ("y", "x"),
                "uint8",
                0,
                "Per pixel: 0 no data, 1 unchanged, 2 in a change polygon, 3 changed with low confidence, "
                "4 changed but removed by cleaning or the minimum area",
                chunks=_SPATIAL,
            ),
            ArraySpec(
                "polygon",
                ("y", "x"),
                "int32",
                0,
                "Index (1-based) of the pixel's change polygon along the `change_id` dimension; 0 = none",
                chunks=_SPATIAL,
            ),
            ArraySpec("class_from", ("change_id",), "uint8", 0, "Class code in the earlier year", chunks=_POLYGONS),
            ArraySpec("class_to", ("change_id",), "uint8", 0, "Class code in the later year", chunks=_POLYGONS),
            ArraySpec("pixels", ("change_id",), "int64", 0, "Pixels of the polygon (tile core only)", chunks=_POLYGONS),
            ArraySpec("area_m2", ("change_id",), "float64", 0.0, "Area of the polygon in m²", chunks=_POLYGONS),
            ArraySpec(
                "confidence_from",
                ("change_id",),
                "float32",
                0.0,
                "Mean confidence (%) in the earlier year",
                chunks=_POLYGONS,
            ),
            ArraySpec(
                "confidence_to", ("change_id",), "float32", 0.0, "Mean confidence (%), later year", chunks=_POLYGONS
            ),
            ArraySpec(
                "score",
                ("change_id",),
                "float32",
                float("nan"),
                "How far the feature series differ, in robust z-units over unchanged pixels; NaN = not ranked",
                chunks=_POLYGONS,
            ),
        ),
        tile_function="tasks.change.tile:change_tile",
        tile_hash="tasks.change.tile:change_tile_hash",
        settings_of=_change_settings,
        inputs_of=_change_inputs,
        runs_when=_has_change_years,
    )
)

register(
    Stage(
        "change-polygons",
        "Every tile's change polygons of a pair of years in one layer; written by the change flow.",
        Keying.AOI_YEAR_PAIR,
        config="change",
        reads=("change",),
        product_of=lambda config: change_key(*config.change_years) if config.change_years else None,
        product_hash="tasks.change.polygons:change_layer_hash",
        files=True,
        has_flow=False,
        runs_when=_has_change_years,
    )
)

register(
    Stage(
        "report",
        "Stage 10: HTML report with areas, transitions, accuracy, changes.",
        Keying.AOI,
        config="report",
        reads=("postprocess", "prediction", "change", "change-polygons"),
        inputs_of=_report_inputs,
        covers_grid=_always,
        product_of=lambda config: config.product,
        files=True,
        runs_when=_has_reference,
    )
)

# The accuracy assessment (issue 20 §2; tasks/accuracy/products.py): a probability sample of a year's map (or a pair
# of years' change) and the estimates from its labels, per product and key (`map-2024`, `change-2023-2024`).
# Made on demand by `lcms sample-design` and `lcms accuracy`, not by `lcms run`: no flow, no product of a config.
for _name, _title in (
    ("accuracy-sample", "A stratified random sample of map pixels for accuracy and area (lcms sample-design)."),
    ("accuracy", "Accuracy and area estimates with 95 % intervals from the labelled sample (lcms accuracy)."),
):
    register(
        Stage(
            _name,
            _title,
            Keying.AOI_YEAR_PAIR,
            reads=("export",),
            files=True,
            has_flow=False,
            product_of=lambda config: None,
        )
    )

# Active learning's "label next" queues (issue 20 §3; tasks/active/queue.py): one per queue, named by its design id,
# made on demand by `lcms label-next`; the reference stage reads their labelled units (reference.active_labels).
register(
    Stage(
        "label-next",
        "Units to label next, picked by active learning from a year's probabilities (lcms label-next).",
        Keying.AOI_YEAR_PAIR,
        reads=("prediction",),
        files=True,
        has_flow=False,
        product_of=lambda config: None,
    )
)
