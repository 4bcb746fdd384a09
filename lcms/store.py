"""The tile store: the one module that knows where and how tile arrays are stored.

Layout of a store (a local folder or s3://bucket/prefix; the same code serves both)::

    <root>/store.json                           format version of the store
    <root>/grid.gpkg                            the area grid (lcms.grid.AreaGrid)
    <root>/grid.json                            the hash of the settings the grid was built with
    <root>/<stage>/<year>/<tile_id>/done.json   the done mark: which attempt is current, and its params hash
    <root>/<stage>/<year>/<tile_id>/<attempt>.zarr
                                                one Zarr v3 group per write attempt of a tile's stage output
    <root>/merge/<name>/done.json, <attempt>.zarr
                                                AOI level: the merged samples of a model (no pixel grid)
    <root>/training/<name>/done.json, <attempt>/
                                                AOI level: a model's files (model, metrics, plots)
    <root>/change/<from>-<to>/<tile_id>/...     change stage, keyed by the pair of years it compares
    <root>/change-polygons/<from>-<to>/done.json, <attempt>/
                                                AOI level: every tile's change polygons (GeoPackage, summary)
    <root>/report/<model>/done.json, <attempt>/ AOI level: the HTML report, its plots, CSV and JSON
    <root>/maps/                                exported COGs and STAC items (unless export.url says otherwise)

Why attempts: a Zarr array is many objects, and neither S3 nor a folder can replace
many objects at once. Each write goes to a fresh attempt group; only when every array
of the stage is completely written is `done.json` replaced, in one atomic put, to point
at it. A crash mid-write therefore leaves the previous state (or "not done") intact, and
an unfinished attempt is never read. Stale attempts are removed on the next commit.

Each attempt group is what `xarray.open_zarr` expects: arrays carry `dimension_names`,
coordinates `time` (CF-encoded), `y`/`x` (pixel centres) and a `spatial_ref` variable
with the CRS, so `ds.rio.crs` and `ds.rio.transform()` work.

What each stage writes, with dtypes, dimensions and chunks, is declared in `LAYOUTS`.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import tempfile
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import rioxarray  # noqa: F401  (registers the .rio accessor on opened datasets)
import xarray as xr
import zarr
from pyproj import CRS
from zarr.codecs import BloscCodec

from lcms.geometry import PixelGrid

STORE_FORMAT = 1
SPATIAL_DIMS = ("y", "x")
SPATIAL_CHUNK = 256
TIME_UNITS = "seconds since 1970-01-01"

# Consolidated metadata saves S3 round trips; zarr warns that it is not in the v3 spec yet.
warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part", category=UserWarning)


class StoreError(RuntimeError):
    """A store that cannot be used, or a write that breaks the layout."""


# --------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class ArraySpec:
    """One array of a stage's output: its dimensions, dtype, fill value and chunking."""

    name: str
    dims: tuple[str, ...]
    dtype: str
    fill_value: Any
    description: str
    chunks: Mapping[str, int] = field(default_factory=dict)  # dims not named: one chunk over the whole dim
    attrs: Mapping[str, Any] = field(default_factory=dict)
    # Other dtypes a stage may choose by config, each with its fill value and extra attributes.
    alternatives: Mapping[str, tuple[Any, Mapping[str, Any]]] = field(default_factory=dict)

    def choose(self, dtype: str | None) -> ArraySpec:
        """This spec with `dtype` (one of its alternatives) instead of the default."""
        if dtype is None or dtype == self.dtype:
            return self
        if dtype not in self.alternatives:
            raise StoreError(f"{self.name} can be {[self.dtype, *self.alternatives]}, not {dtype}")
        fill_value, attrs = self.alternatives[dtype]
        return ArraySpec(self.name, self.dims, dtype, fill_value, self.description, self.chunks, attrs)

    def shape_for(self, sizes: Mapping[str, int]) -> tuple[int, ...]:
        return tuple(sizes[d] for d in self.dims)

    def chunks_for(self, sizes: Mapping[str, int]) -> tuple[int, ...]:
        # Zarr needs chunks of at least 1 even where a dim is empty (a year without acquisitions).
        return tuple(max(1, min(self.chunks.get(d, sizes[d]), sizes[d])) for d in self.dims)


@dataclass(frozen=True)
class StageLayout:
    stage: str
    arrays: tuple[ArraySpec, ...]

    def with_dtypes(self, dtypes: Mapping[str, str] | None) -> StageLayout:
        """This layout with allowed alternative dtypes chosen for some arrays (e.g. float32 features)."""
        if not dtypes:
            return self
        return StageLayout(self.stage, tuple(a.choose(dtypes.get(a.name)) for a in self.arrays))

    def spec(self, name: str) -> ArraySpec:
        for spec in self.arrays:
            if spec.name == name:
                return spec
        raise StoreError(f"stage {self.stage!r} has no array {name!r}; it has {[a.name for a in self.arrays]}")

    @property
    def coordinate_dims(self) -> set[str]:
        """Non-spatial dims, whose coordinate values the writer must be given."""
        return {d for a in self.arrays for d in a.dims} - set(SPATIAL_DIMS)


_SPATIAL = {"y": SPATIAL_CHUNK, "x": SPATIAL_CHUNK}

LAYOUTS: dict[str, StageLayout] = {
    "download": StageLayout(
        "download",
        (
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
    ),
}


LAYOUTS["features"] = StageLayout(
    "features",
    (
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
)


LAYOUTS["reference"] = StageLayout(
    "reference",
    (
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
)


# Per-sample arrays are chunked along "sample" only: a chunk is 16384 rows of every column.
SAMPLE_CHUNK = 16_384
_SAMPLES = {"sample": SAMPLE_CHUNK}


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


LAYOUTS["sampling"] = StageLayout(
    "sampling",
    (
        _feature_matrix("Features of the sampled pixels: column j is date j // F, feature j % F (F features)"),
        ArraySpec("label", ("sample",), "uint8", 0, "Reference class code of each sample", chunks=_SAMPLES),
        ArraySpec("row", ("sample",), "int32", -1, "Pixel row of each sample in the tile grid", chunks=_SAMPLES),
        ArraySpec("col", ("sample",), "int32", -1, "Pixel column of each sample in the tile grid", chunks=_SAMPLES),
    ),
)

LAYOUTS["prediction"] = StageLayout(
    "prediction",
    (
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
)

LAYOUTS["postprocess"] = StageLayout(
    "postprocess",
    (
        ArraySpec(
            "labels",
            ("y", "x"),
            "uint8",
            0,
            "Class codes after the post-processing chain; the prediction stage keeps the original",
            chunks=_SPATIAL,
        ),
    ),
)

# AOI-level: one merged dataset per model name (see TileStore.product_writer), not per tile.
SPLIT_CODES = {"train": 0, "validation": 1, "test": 2}

LAYOUTS["merge"] = StageLayout(
    "merge",
    (
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
            "tile", ("sample",), "uint32", 0, "Index of the sample's tile in the `tile_ids` attribute", chunks=_SAMPLES
        ),
        ArraySpec("year", ("sample",), "int16", 0, "Year of the sample", chunks=_SAMPLES),
        ArraySpec("row", ("sample",), "int32", -1, "Pixel row of the sample in its tile's grid", chunks=_SAMPLES),
        ArraySpec("col", ("sample",), "int32", -1, "Pixel column of the sample in its tile's grid", chunks=_SAMPLES),
    ),
)

# Change detection is keyed by the pair of years it compares, not by one year.
_POLYGONS = {"change_id": 65_536}

LAYOUTS["change"] = StageLayout(
    "change",
    (
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
        ArraySpec("confidence_to", ("change_id",), "float32", 0.0, "Mean confidence (%), later year", chunks=_POLYGONS),
        ArraySpec(
            "score",
            ("change_id",),
            "float32",
            float("nan"),
            "How far the feature series differ, in robust z-units over unchanged pixels; NaN = not ranked",
            chunks=_POLYGONS,
        ),
    ),
)


def change_key(year_from: int, year_to: int) -> str:
    """The store's key of a change stage output (in place of a year): e.g. '2023-2024'."""
    return f"{year_from}-{year_to}"


# AOI-level stages whose output is a set of files (e.g. a model and its plots), not a Zarr group.
FILE_STAGES = ("training", "change-polygons", "report")
# Stages with one output per AOI and name (TileStore.product_dir), not one per tile and year.
AOI_STAGES = ("merge", "training")


def layout(stage: str) -> StageLayout:
    if stage not in LAYOUTS:
        raise StoreError(f"unknown stage {stage!r}; known stages: {sorted(LAYOUTS)}")
    return LAYOUTS[stage]


def _compressor(dtype: str) -> BloscCodec:
    # zstd inside Blosc; byte shuffle groups the high and low bytes of uint16 DNs.
    shuffle = "noshuffle" if np.dtype(dtype).itemsize == 1 else "shuffle"
    return BloscCodec(cname="zstd", clevel=3, shuffle=shuffle)


# --------------------------------------------------------------------------- done marks


@dataclass(frozen=True)
class DoneRecord:
    """The content of a tile's done.json."""

    stage: str
    year: str
    tile_id: str
    params_hash: str
    attempt: str
    arrays: tuple[str, ...]
    written_at: str
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        data = {**self.__dict__, "arrays": list(self.arrays), "extra": dict(self.extra)}
        return json.dumps(data, indent=1, sort_keys=True, default=str)

    @classmethod
    def from_json(cls, text: str | bytes) -> DoneRecord:
        data = json.loads(text)
        data["arrays"] = tuple(data["arrays"])
        return cls(**data)


def _new_attempt_id() -> str:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
    return f"attempt-{stamp}-{secrets.token_hex(3)}"


# --------------------------------------------------------------------------- the store


class TileStore:
    """A tile store at a local folder or an s3:// URL."""

    def __init__(self, url: str, storage_options: Mapping[str, Any] | None = None):
        self.url = url.rstrip("/")
        self.storage_options = dict(storage_options or {})
        self.fs, self.root = fsspec.core.url_to_fs(self.url, **self.storage_options)
        self.is_local = "file" in _protocols(self.fs)

    @classmethod
    def from_config(cls, cfg) -> TileStore:
        """From a `lcms.config.StoreConfig`."""
        return cls(cfg.url, cfg.storage_options)

    def __repr__(self) -> str:
        return f"TileStore({self.url!r})"

    # ---------------------------------------------------------------- paths (only built here)

    def _path(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts])

    def _url(self, path: str) -> str:
        if self.is_local:
            return path
        return f"{_protocols(self.fs)[0]}://{path}"

    def tile_dir(self, stage: str, year: int | str, tile_id: str) -> str:
        return self._path(stage, str(year), tile_id)

    def _done_path(self, stage: str, year: int | str, tile_id: str) -> str:
        return f"{self.tile_dir(stage, year, tile_id)}/done.json"

    def attempt_url(self, stage: str, year: int | str, tile_id: str, attempt: str) -> str:
        """URL of one attempt's Zarr group, as xarray.open_zarr takes it."""
        return self._url(f"{self.tile_dir(stage, year, tile_id)}/{attempt}.zarr")

    def product_dir(self, stage: str, name: str) -> str:
        """Folder of an AOI-level product (a merged dataset, a model): one per stage and name."""
        if not name or "/" in name or name.isdigit():
            raise StoreError(f"product name {name!r} must be non-empty, without '/', and not a year")
        return self._path(stage, name)

    def maps_url(self) -> str:
        """Default folder of the exported maps (COGs and STAC items): ``<store>/maps``."""
        return self._url(self._path("maps"))

    @property
    def grid_url(self) -> str:
        return self._url(self._path("grid.gpkg"))

    # ---------------------------------------------------------------- store-level

    def ensure_writable(self) -> None:
        """Create the store if needed and prove it takes writes; raise StoreError naming the URL if not.

        Called before any stage work starts, so a bad URL fails before anything is written.
        """
        probe = self._path(f".write-probe-{secrets.token_hex(4)}")
        try:
            if self.is_local:
                Path(self.root).mkdir(parents=True, exist_ok=True)
            self.fs.pipe_file(probe, b"probe")
            self.fs.rm_file(probe)
            meta_path = self._path("store.json")
            if self.fs.exists(meta_path):
                meta = json.loads(self.fs.cat_file(meta_path))
                if meta.get("format") != STORE_FORMAT:
                    raise StoreError(
                        f"store {self.url} has format {meta.get('format')}, this LCMS writes format {STORE_FORMAT}; "
                        "use a new store URL"
                    )
            else:
                self._put_atomic(meta_path, json.dumps({"format": STORE_FORMAT, "kind": "lcms-tile-store"}).encode())
        except StoreError:
            raise
        except Exception as exc:
            raise StoreError(
                f"Store URL {self.url!r} cannot be written ({type(exc).__name__}: {exc}). "
                "Check that the folder can be created, or that the bucket exists and your credentials allow writing."
            ) from exc

    def _put_atomic(self, path: str, data: bytes) -> None:
        """Replace one small object in a single step: a rename locally, one PUT on S3."""
        if self.is_local:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=Path(path).parent, prefix=".tmp-")
            os.fchmod(fd, 0o644)  # mkstemp makes files private; other users of the store must read them
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        else:
            self.fs.pipe_file(path, data)

    # ---------------------------------------------------------------- grid

    def write_grid(self, grid, params_hash: str) -> None:
        """Store the area grid (an `lcms.grid.AreaGrid`) as grid.gpkg, with the hash of its settings."""
        mark = self._path("grid.json")
        if self.fs.exists(mark):
            self.fs.rm_file(mark)  # until the new mark is written, the grid counts as absent
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / "grid.gpkg"
            grid.write_gpkg(local)
            self._put_atomic(self._path("grid.gpkg"), local.read_bytes())
        # Written after the grid itself: a grid without this mark counts as absent.
        self._put_atomic(mark, json.dumps({"params_hash": params_hash, "tiles": len(grid)}).encode())

    def grid_params_hash(self) -> str | None:
        """The settings hash of the stored grid, or None when the store has no complete grid."""
        try:
            return json.loads(self.fs.cat_file(self._path("grid.json")))["params_hash"]
        except (FileNotFoundError, NotADirectoryError):
            return None

    def read_grid(self):
        from lcms.grid import AreaGrid

        path = self._path("grid.gpkg")
        if self.grid_params_hash() is None:
            raise StoreError(f"store {self.url} has no grid yet; run `lcms grid CONFIG` first")
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / "grid.gpkg"
            local.write_bytes(self.fs.cat_file(path))
            return AreaGrid.read_gpkg(local)

    # ---------------------------------------------------------------- done marks

    def done_record(self, stage: str, year: int | str, tile_id: str) -> DoneRecord | None:
        try:
            return DoneRecord.from_json(self.fs.cat_file(self._done_path(stage, year, tile_id)))
        except (FileNotFoundError, NotADirectoryError):
            return None

    def is_done(self, stage: str, year: int | str, tile_id: str, params_hash: str | None = None) -> bool:
        """True when the tile's stage output is complete (and made with `params_hash`, if given)."""
        record = self.done_record(stage, year, tile_id)
        return record is not None and (params_hash is None or record.params_hash == params_hash)

    def done_tiles(self, stage: str, year: int | str) -> dict[str, DoneRecord]:
        """Every done tile of a stage and year, by tile id."""
        self.fs.invalidate_cache(self._path(stage, str(year)))  # s3fs caches listings; other workers write here
        paths = self.fs.glob(self._path(stage, str(year), "*", "done.json"))
        records = (DoneRecord.from_json(blob) for blob in self.fs.cat(paths).values()) if paths else ()
        return {r.tile_id: r for r in records}

    # ---------------------------------------------------------------- writing

    def writer(
        self,
        stage: str,
        year: int | str,
        tile_id: str,
        grid: PixelGrid,
        params_hash: str,
        coords: Mapping[str, Any],
        attrs: Mapping[str, Any] | None = None,
        dtypes: Mapping[str, str] | None = None,
    ) -> TileWriter:
        """Start a new write attempt of one tile's stage output. Use it as a context manager.

        `dtypes` picks an allowed alternative dtype for some arrays (e.g. float32 features).
        """
        stage_layout = layout(stage).with_dtypes(dtypes)
        return TileWriter(
            self,
            stage_layout,
            str(year),
            tile_id,
            grid,
            params_hash,
            coords,
            dict(attrs or {}),
            self.tile_dir(stage, year, tile_id),
        )

    # ---------------------------------------------------------------- AOI-level products

    def product_record(self, stage: str, name: str) -> DoneRecord | None:
        try:
            return DoneRecord.from_json(self.fs.cat_file(f"{self.product_dir(stage, name)}/done.json"))
        except (FileNotFoundError, NotADirectoryError):
            return None

    def product_writer(
        self,
        stage: str,
        name: str,
        params_hash: str,
        coords: Mapping[str, Any],
        attrs: Mapping[str, Any] | None = None,
        dtypes: Mapping[str, str] | None = None,
    ) -> TileWriter:
        """Start a write attempt of an AOI-level Zarr product (no pixel grid), e.g. the merged samples.

        Committed and read like a tile's output: `open_product` sees it only once it is complete.
        """
        stage_layout = layout(stage).with_dtypes(dtypes)
        if any(_is_spatial(a) for a in stage_layout.arrays):
            raise StoreError(f"stage {stage!r} has per-pixel arrays: write it per tile with `writer`")
        folder = self.product_dir(stage, name)
        return TileWriter(self, stage_layout, "-", name, None, params_hash, coords, dict(attrs or {}), folder)

    def open_product(self, stage: str, name: str) -> TileReader:
        """The current, complete AOI-level Zarr product; StoreError if there is none."""
        record = self.product_record(stage, name)
        if record is None:
            raise StoreError(f"{self.url} has no finished {stage!r} output named {name!r}; run the {stage} stage first")
        url = self._url(f"{self.product_dir(stage, name)}/{record.attempt}.zarr")
        group = zarr.open_group(self._zarr_store(url, read_only=True), mode="r", use_consolidated=True)
        return TileReader(record, group, url)

    def put_files(
        self, stage: str, name: str, folder: Path, params_hash: str, extra: Mapping | None = None
    ) -> DoneRecord:
        """Upload every file of a local folder as a new attempt of a file product, then mark it current.

        As with tiles, the product's done.json is replaced in one step after all files are in
        place, so a reader never sees half of a model; older attempts are removed afterwards.
        """
        if stage not in FILE_STAGES:
            raise StoreError(f"stage {stage!r} does not store files; file stages: {FILE_STAGES}")
        files = sorted(p for p in Path(folder).iterdir() if p.is_file())
        if not files:
            raise StoreError(f"{folder} holds no files to store")
        product = self.product_dir(stage, name)
        attempt = _new_attempt_id()
        self.fs.makedirs(f"{product}/{attempt}", exist_ok=True)  # a folder locally; nothing to do on S3
        for path in files:
            self.fs.put_file(str(path), f"{product}/{attempt}/{path.name}")
        record = DoneRecord(
            stage=stage,
            year="-",
            tile_id=name,
            params_hash=params_hash,
            attempt=attempt,
            arrays=tuple(p.name for p in files),
            written_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            extra=dict(extra or {}),
        )
        self._put_atomic(f"{product}/done.json", record.to_json().encode())
        self.fs.invalidate_cache(product)
        for path in self.fs.glob(f"{product}/attempt-*"):
            if not path.rstrip("/").endswith(attempt):
                self.fs.rm(path, recursive=True)
        return record

    def get_files(self, stage: str, name: str, folder: Path) -> DoneRecord:
        """Download the current attempt of a file product into a local folder."""
        record = self.product_record(stage, name)
        if record is None:
            raise StoreError(f"{self.url} has no finished {stage!r} output named {name!r}; run the {stage} stage first")
        Path(folder).mkdir(parents=True, exist_ok=True)
        product = self.product_dir(stage, name)
        for file_name in record.arrays:
            self.fs.get_file(f"{product}/{record.attempt}/{file_name}", str(Path(folder) / file_name))
        return record

    def read_file(self, stage: str, name: str, file_name: str) -> bytes:
        """The bytes of one file of the current attempt of a file product."""
        record = self.product_record(stage, name)
        if record is None or file_name not in record.arrays:
            raise StoreError(f"{self.url} has no file {file_name!r} in the {stage!r} output named {name!r}")
        return self.fs.cat_file(f"{self.product_dir(stage, name)}/{record.attempt}/{file_name}")

    def file_url(self, stage: str, name: str, file_name: str) -> str:
        """URL of one file of the current attempt of a file product (for reports and links)."""
        record = self.product_record(stage, name)
        if record is None:
            raise StoreError(f"{self.url} has no finished {stage!r} output named {name!r}")
        return self._url(f"{self.product_dir(stage, name)}/{record.attempt}/{file_name}")

    def _zarr_store(self, url: str, read_only: bool = False):
        if self.is_local:
            return zarr.storage.LocalStore(url, read_only=read_only)
        return zarr.storage.FsspecStore.from_url(url, storage_options=self.storage_options, read_only=read_only)

    # ---------------------------------------------------------------- reading

    def open_tile(self, stage: str, year: int | str, tile_id: str) -> TileReader:
        """The current, complete output of a tile's stage; StoreError if it is not done."""
        record = self.done_record(stage, year, tile_id)
        if record is None:
            raise StoreError(
                f"tile {tile_id} has no finished {stage!r} output for {year} in {self.url}; run the {stage} stage first"
            )
        url = self.attempt_url(stage, year, tile_id, record.attempt)
        group = zarr.open_group(self._zarr_store(url, read_only=True), mode="r", use_consolidated=True)
        return TileReader(record, group, url)

    def open_dataset(self, stage: str, year: int | str, tile_id: str) -> xr.Dataset:
        """The tile's stage output as a lazy, georeferenced xarray Dataset."""
        reader = self.open_tile(stage, year, tile_id)
        return xr.open_zarr(reader.url, storage_options=None if self.is_local else self.storage_options, zarr_format=3)


def _is_spatial(spec: ArraySpec) -> bool:
    return set(SPATIAL_DIMS) <= set(spec.dims)


def _read_region(array: zarr.Array, region: tuple[slice, slice] | None, select: Mapping[str, Any] | None = None):
    """A spatial region, and optionally chosen indices along other dims (e.g. some bands or dates)."""
    rows, cols = region if region is not None else (slice(None), slice(None))
    select = select or {}
    index = tuple(
        rows if d == "y" else cols if d == "x" else np.asarray(select[d]) if d in select else slice(None)
        for d in array.metadata.dimension_names
    )
    return array.get_orthogonal_selection(index) if select else array[index]


def _protocols(fs) -> tuple[str, ...]:
    proto = fs.protocol
    return (proto,) if isinstance(proto, str) else tuple(proto)


class TileWriter:
    """Writes one attempt of a tile's stage output; `commit()` makes it the current one.

    Arrays may be written whole or region by region (spatial blocks); commit refuses
    unless every pixel of every array of the stage has been written. Used as a context
    manager, it commits on success and removes the attempt on error.
    """

    def __init__(self, store, stage_layout, year, tile_id, grid, params_hash, coords, attrs, tile_dir):
        self.store: TileStore = store
        self.layout: StageLayout = stage_layout
        self.year, self.tile_id, self.grid, self.params_hash = year, tile_id, grid, params_hash
        self.attempt = _new_attempt_id()
        self.tile_dir = tile_dir
        self.path = f"{self.tile_dir}/{self.attempt}.zarr"
        self.url = store._url(self.path)
        self._coverage: dict[str, np.ndarray] = {}
        self._closed = False

        missing = self.layout.coordinate_dims - set(coords)
        if missing:
            raise StoreError(f"{self.layout.stage} output needs coordinates for {sorted(missing)}")
        self.sizes = {d: len(coords[d]) for d in self.layout.coordinate_dims}
        if grid is not None:
            self.sizes.update(y=grid.height, x=grid.width)

        self.group = zarr.open_group(store._zarr_store(self.url), mode="w-", zarr_format=3)
        self.group.attrs.update(
            {
                "lcms_stage": self.layout.stage,
                "year": year,
                "tile_id": tile_id,
                "pixel_grid": grid.to_attrs() if grid is not None else None,
                "params_hash": params_hash,
                **attrs,
            }
        )
        self._write_coords(coords)
        for spec in self.layout.arrays:
            self.group.create_array(
                spec.name,
                shape=spec.shape_for(self.sizes),
                chunks=spec.chunks_for(self.sizes),
                dtype=spec.dtype,
                fill_value=spec.fill_value,
                compressors=_compressor(spec.dtype),
                dimension_names=spec.dims,
                attributes={
                    "description": spec.description,
                    **({"grid_mapping": "spatial_ref", "coordinates": "spatial_ref"} if grid is not None else {}),
                    **spec.attrs,
                },
            )
            # What has been written, to refuse a commit with gaps: per pixel, or per index of the first dim.
            shape = spec.shape_for(self.sizes)
            self._coverage[spec.name] = np.zeros(grid.shape if _is_spatial(spec) else shape[:1], dtype=bool)

    def _write_coords(self, coords: Mapping[str, Any]) -> None:
        def put(name, values, dtype, attrs=None):
            values = np.asarray(values)
            arr = self.group.create_array(
                name,
                shape=values.shape,
                chunks=(max(1, len(values)),),
                dtype=dtype,
                dimension_names=(name,),
                attributes=attrs or {},
            )
            if len(values):
                arr[:] = values

        for dim in sorted(self.layout.coordinate_dims):
            values = np.asarray(coords[dim])
            if dim == "time":
                seconds = values.astype("datetime64[s]").astype("int64")
                put("time", seconds, "int64", {"units": TIME_UNITS, "calendar": "proleptic_gregorian"})
            elif values.dtype.kind in "US":
                put(dim, values.astype(object), str)
            else:
                put(dim, values, values.dtype)
        if self.grid is None:
            return
        put("y", self.grid.y_coords(), "float64", {"units": "m", "standard_name": "projection_y_coordinate"})
        put("x", self.grid.x_coords(), "float64", {"units": "m", "standard_name": "projection_x_coordinate"})
        crs = CRS.from_user_input(self.grid.crs)
        a, _, c, _, e, f = self.grid.transform
        ref = self.group.create_array(
            "spatial_ref",
            shape=(),
            dtype="int64",
            attributes={
                "crs_wkt": crs.to_wkt(),
                "spatial_ref": crs.to_wkt(),
                "GeoTransform": f"{c} {a} 0 {f} 0 {e}",
            },
        )
        ref[()] = 0

    def write(self, name: str, data: np.ndarray, region: tuple[slice, slice] | None = None) -> None:
        """Write `data` to array `name`, whole or into a spatial `region` (rows, cols) of the tile."""
        spec = self.layout.spec(name)
        if data.dtype != np.dtype(spec.dtype):
            raise StoreError(
                f"{self.layout.stage}.{name} must be {spec.dtype}, got {data.dtype}; convert before writing"
            )
        if not _is_spatial(spec):
            expected = spec.shape_for(self.sizes)
            if region is not None or data.shape != expected:
                raise StoreError(
                    f"{self.layout.stage}.{name} is written whole, with shape {expected}; got {data.shape}"
                )
            if data.size:
                self.group[name][...] = data
            self._coverage[name][...] = True
            return
        rows, cols = region if region is not None else (slice(0, self.grid.height), slice(0, self.grid.width))
        rows = slice(*rows.indices(self.grid.height)[:2])
        cols = slice(*cols.indices(self.grid.width)[:2])
        index = tuple(rows if d == "y" else cols if d == "x" else slice(None) for d in spec.dims)
        expected = tuple(
            rows.stop - rows.start if d == "y" else cols.stop - cols.start if d == "x" else self.sizes[d]
            for d in spec.dims
        )
        if data.shape != expected:
            raise StoreError(
                f"{self.layout.stage}.{name} region expects shape {expected} for dims {spec.dims}, got {data.shape}"
            )
        if data.size:
            self.group[name][index] = data
        self._coverage[name][rows, cols] = True

    def write_rows(self, name: str, data: np.ndarray, start: int) -> None:
        """Write rows ``start:start + len(data)`` of a non-spatial array (e.g. one tile's samples)."""
        spec = self.layout.spec(name)
        if _is_spatial(spec):
            raise StoreError(f"{self.layout.stage}.{name} is per pixel: write it by spatial region")
        if data.dtype != np.dtype(spec.dtype):
            raise StoreError(
                f"{self.layout.stage}.{name} must be {spec.dtype}, got {data.dtype}; convert before writing"
            )
        shape = spec.shape_for(self.sizes)
        stop = start + len(data)
        if not shape or data.shape[1:] != shape[1:] or start < 0 or stop > shape[0]:
            raise StoreError(
                f"{self.layout.stage}.{name} has shape {shape}; rows {start}:{stop} of shape {data.shape} do not fit"
            )
        if data.size:
            self.group[name][start:stop] = data
        self._coverage[name][start:stop] = True

    def read(self, name: str, region: tuple[slice, slice] | None = None) -> np.ndarray:
        """Read back what this attempt has written so far (e.g. bands with a halo for a second pass)."""
        return _read_region(self.group[name], region)

    def commit(self, extra: Mapping[str, Any] | None = None) -> DoneRecord:
        """Make this attempt the tile's current output, atomically, then remove stale attempts."""
        unwritten = [name for name, seen in self._coverage.items() if not seen.all()]
        if unwritten:
            raise StoreError(f"cannot mark tile {self.tile_id} done: arrays {unwritten} are not completely written")
        zarr.consolidate_metadata(self.group.store)
        record = DoneRecord(
            stage=self.layout.stage,
            year=self.year,
            tile_id=self.tile_id,
            params_hash=self.params_hash,
            attempt=self.attempt,
            arrays=tuple(a.name for a in self.layout.arrays),
            written_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            extra=dict(extra or {}),
        )
        self.store._put_atomic(f"{self.tile_dir}/done.json", record.to_json().encode())
        self._closed = True
        self._remove_stale_attempts()
        return record

    def abort(self) -> None:
        """Remove this attempt; the tile's previous state stays as it was."""
        self._closed = True
        if self.store.fs.exists(self.path):
            self.store.fs.rm(self.path, recursive=True)

    def _remove_stale_attempts(self) -> None:
        self.store.fs.invalidate_cache(self.tile_dir)
        for path in self.store.fs.glob(f"{self.tile_dir}/attempt-*.zarr"):
            if not path.rstrip("/").endswith(f"{self.attempt}.zarr"):
                self.store.fs.rm(path, recursive=True)

    def __enter__(self) -> TileWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._closed:
            return
        if exc_type is None:
            self.commit()
        else:
            self.abort()


class TileReader:
    """Read access to one done tile's stage output."""

    def __init__(self, record: DoneRecord, group: zarr.Group, url: str):
        self.record, self.group, self.url = record, group, url
        grid_attrs = group.attrs.get("pixel_grid")
        self.grid = PixelGrid.from_attrs(grid_attrs) if grid_attrs else None  # None for AOI-level products

    def coord(self, dim: str) -> np.ndarray:
        values = self.group[dim][:]
        if dim == "time":
            return values.astype("datetime64[s]")
        return np.array([str(v) for v in values]) if values.dtype.kind in "OT" else values

    def read(
        self, name: str, region: tuple[slice, slice] | None = None, select: Mapping[str, Any] | None = None
    ) -> np.ndarray:
        """Array `name`, whole or a spatial (rows, cols) region, in its stored dtype.

        `select` picks integer indices along other dims, e.g. {"band": [3, 7], "time": kept},
        so that only those chunks are read.
        """
        return _read_region(self.group[name], region, select)

    @property
    def attrs(self) -> dict:
        return dict(self.group.attrs)
