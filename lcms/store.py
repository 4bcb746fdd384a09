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
an unfinished attempt is never read. The attempt a commit supersedes is removed by that
commit; abandoned ones as "Concurrent runs" below says.

Each attempt group is what `xarray.open_zarr` expects: arrays carry `dimension_names`,
coordinates `time` (CF-encoded), `y`/`x` (pixel centres) and a `spatial_ref` variable
with the CRS, so `ds.rio.crs` and `ds.rio.transform()` work.

What each stage writes, with dtypes, dimensions and chunks, is declared with the stage in
lcms/stages.py; `layout(stage)` looks it up there, and this module writes and reads it.

Concurrent runs (a scheduled run and an ad-hoc rerun, or two machines, on one store): each
output folder (a tile's stage output for a year, or an AOI product) has at most one writer
at a time, the holder of its lease, `lease.json` beside the done mark. The lease names its
owner (host, pid, a random writer id), the attempt it writes and when it expires. A writer
takes it before it creates its attempt: with an exclusive create (O_CREAT|O_EXCL locally; a
PUT with If-None-Match: * on S3), so only one of two writers gets it. A lease may be taken
over when it has expired, when its owner is a process of this machine that has exited (so a
killed run's tiles are free at once), or when it yields (a writer whose commit was refused);
the take-over is a compare-and-swap (a PUT with If-Match: the ETag seen, on S3; locally a
replace of the content seen, under a short-lived `lease.json.lock` folder). A daemon thread of
the writer renews the lease every quarter of its time (`LeaseSettings.seconds`, 300 s by
default), so long writes keep it however long they pause between blocks, and a crashed
writer's lease expires soon; the commit renews it once more right before it puts the done
mark (a writer that lost its lease raises LeaseError and puts none), removes stale attempts,
and releases it (deletes it, conditionally), as does an abort.

A second writer of an output held by a live writer waits by default (on_busy "wait": looks
again every 2 s, for at most an hour, then LeaseError naming the other writer); with on_busy
"skip" it raises WriteSkipped at once, naming the tile, the stage and the other writer. After
waiting, if the output is now done with the same params hash, the writer does not write it
again: a tile writer raises WriteSkipped (which `Stage.run_tile` counts as skipped), and
`put_files` returns the other run's record. Settings: `TileStore.lease_settings` (a
`LeaseSettings`), else the environment (LCMS_LEASE_SECONDS, LCMS_ON_BUSY,
LCMS_BUSY_WAIT_SECONDS), else the defaults.

Stale attempts: a commit (holding the lease, so no other writer is live there) removes the
attempt it supersedes, the attempt of a writer that provably exited, and any other attempt
older than the lease time (its writer lost its lease, so it cannot commit). A live writer's
attempt is never removed. Readers are not locked out: a reader opening the current attempt
sees a complete output, but one still reading an attempt when a newer commit supersedes it
can find it gone (compare the done mark before and after a long read).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import errno
import json
import logging
import math
import os
import secrets
import shutil
import socket
import tempfile
import threading
import time
import warnings
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import fsspec
import fsspec.asyn
import numpy as np
import zarr
from pyproj import CRS
from zarr.codecs import BloscCodec
from zarr.core.buffer.cpu import NDBuffer

from lcms.geometry import PixelGrid
from lcms.layout import SPATIAL_DIMS, ArraySpec, LeaseError, StageLayout, StoreError, WriteSkipped
from lcms.lineage import current as current_lineage
from lcms.stages import STAGES, Keying, get_stage

if TYPE_CHECKING:
    import xarray as xr

log = logging.getLogger(__name__)

STORE_FORMAT = 1
#: The product of a store handle that names none (a config's `product` default).
DEFAULT_PRODUCT = "land-cover"
TIME_UNITS = "seconds since 1970-01-01"

# Consolidated metadata saves S3 round trips; zarr warns that it is not in the v3 spec yet.
warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part", category=UserWarning)


# --------------------------------------------------------------------------- layout (from the stage declarations)


def layout(stage: str) -> StageLayout:
    """The Zarr arrays of one output of `stage`, as its declaration in lcms/stages.py gives them."""
    declared = get_stage(stage).layout
    if declared is None:
        raise StoreError(f"stage {stage!r} stores no Zarr arrays (it writes files, or nothing in the store)")
    return declared


class _Layouts(Mapping):
    """Every declared stage's arrays by stage name, read live from the registry."""

    def __getitem__(self, stage: str) -> StageLayout:
        if stage not in STAGES or STAGES[stage].layout is None:
            raise KeyError(stage)
        return STAGES[stage].layout

    def __iter__(self):
        return (name for name, s in STAGES.items() if s.layout is not None)

    def __len__(self) -> int:
        return sum(1 for _ in self)


LAYOUTS: Mapping[str, StageLayout] = _Layouts()


def _file_stages() -> tuple[str, ...]:
    return tuple(name for name, s in STAGES.items() if s.files)


def _compressor(dtype: str) -> BloscCodec:
    # zstd inside Blosc. Multi-byte values (uint16 DNs, int16 features): bit shuffle at level 1, which
    # encodes 1.7-2.5× and decodes ~1.2× faster than byte shuffle at level 3 (CPU seconds, 256² × 48-date
    # chunks of the synthetic tile), and whose files are ~4 % larger there, ~10 % on real S2 DNs (the
    # Slovenia L1C scenes). One-byte masks and probabilities compress best unshuffled at level 3.
    # Each array's metadata names its codec, so stores written with byte shuffle stay readable.
    if np.dtype(dtype).itemsize == 1:
        return BloscCodec(cname="zstd", clevel=3, shuffle="noshuffle")
    return BloscCodec(cname="zstd", clevel=1, shuffle="bitshuffle")


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
    lineage: Mapping[str, Any] = field(default_factory=dict)  # see lcms/lineage.py

    def to_json(self) -> str:
        data = {**self.__dict__, "arrays": list(self.arrays), "extra": dict(self.extra), "lineage": dict(self.lineage)}
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

    def __init__(self, url: str, storage_options: Mapping[str, Any] | None = None, product: str = DEFAULT_PRODUCT):
        self.url = url.rstrip("/")
        self.storage_options = s3_storage_options(self.url, storage_options)  # with timeouts and retries
        self.product = product  # the product whose outputs this handle reads and writes
        self.fs, self.root = fsspec.core.url_to_fs(self.url, **self.storage_options)
        self.is_local = "file" in _protocols(self.fs)

    @classmethod
    def from_config(cls, cfg, product: str = DEFAULT_PRODUCT) -> TileStore:
        """From a `lcms.config.StoreConfig`, for `product` (a run's `config.product`)."""
        store = cls(cfg.url, cfg.storage_options, product)
        store.lease_settings = LeaseSettings(
            seconds=cfg.lease_seconds, on_busy=cfg.on_busy, wait_seconds=cfg.busy_wait_seconds
        )
        return store

    def for_product(self, product: str) -> TileStore:
        """The same store, reading and writing `product`'s outputs."""
        other = TileStore(self.url, self.storage_options, product)
        other.lease_settings = self.lease_settings
        return other

    def __repr__(self) -> str:
        return f"TileStore({self.url!r}, product={self.product!r})"

    # ---------------------------------------------------------------- paths (only built here)

    def _path(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts])

    def _url(self, path: str) -> str:
        if self.is_local:
            return path
        return f"{_protocols(self.fs)[0]}://{path}"

    def _key_dir(self, stage: str, year: int | str) -> str:
        """Folder of one year's (or pair's) tile outputs of a stage: per product after features."""
        if get_stage(stage).per_product:
            return self._path(stage, self.product, str(year))
        return self._path(stage, str(year))

    def tile_dir(self, stage: str, year: int | str, tile_id: str) -> str:
        return f"{self._key_dir(stage, year)}/{tile_id}"

    def _done_path(self, stage: str, year: int | str, tile_id: str) -> str:
        return f"{self.tile_dir(stage, year, tile_id)}/done.json"

    def attempt_url(self, stage: str, year: int | str, tile_id: str, attempt: str) -> str:
        """URL of one attempt's Zarr group, as xarray.open_zarr takes it."""
        return self._url(f"{self.tile_dir(stage, year, tile_id)}/{attempt}.zarr")

    def product_dir(self, stage: str, name: str) -> str:
        """Folder of an AOI-level output: `<stage>/<product>` (merged dataset, model, report), or
        `<stage>/<product>/<name>` for one keyed within the product (change polygons of a pair of years)."""
        if not name or "/" in name or name.isdigit():
            raise StoreError(f"product name {name!r} must be non-empty, without '/', and not a year")
        if get_stage(stage).keyed_by is Keying.AOI_YEAR_PAIR:
            return self._path(stage, self.product, name)
        return self._path(stage, name)

    def maps_url(self) -> str:
        """Default folder of the exported maps (COGs and STAC items): ``<store>/maps``."""
        return self._url(self._path("maps"))

    @property
    def grid_url(self) -> str:
        return self._url(self._path("grid.gpkg"))

    def serve_database_path(self) -> str:
        """Default file of `lcms serve`'s embedded database (users, reviews): ``<store>/serve/lcms-serve.sqlite``.

        Only for a local store: SQLite needs a local file (set serve.database_path for an s3:// store).
        """
        if not self.is_local:
            raise StoreError(f"{self.url} is not a local folder: set serve.database_path to a local file")
        return self._path("serve", "lcms-serve.sqlite")

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
            remote = s3_error_message(self.url, exc)
            if remote is not None:
                raise StoreError(remote) from None
            raise StoreError(
                f"Store URL {self.url!r} cannot be written ({type(exc).__name__}: {exc}). "
                "Check that the folder can be created, or that the bucket exists and your credentials allow writing."
            ) from exc

    # Leases (see "Concurrent runs" above): how long they last and what a second writer does.
    # None: LeaseSettings.from_env(). Set it on a store object to change it for that object only.
    lease_settings: LeaseSettings | None = None

    def _leases(self) -> LeaseSettings:
        return self.lease_settings if self.lease_settings is not None else LeaseSettings.from_env()

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
        except Exception as exc:  # the first read of every command: say clearly why S3 cannot be reached
            remote = s3_error_message(self.url, exc)
            if remote is None:
                raise
            raise StoreError(remote) from None

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

    def require_done(self, stage: str, year: int | str, tile_id: str) -> DoneRecord:
        """The done mark of an input a stage is about to read; StoreError naming it if there is none."""
        record = self.done_record(stage, year, tile_id)
        if record is None:
            raise StoreError(
                f"tile {tile_id} has no finished {stage!r} output for {year} in {self.url}; run the {stage} stage first"
            )
        return record

    def done_tiles(self, stage: str, year: int | str) -> dict[str, DoneRecord]:
        """Every done tile of a stage and year, by tile id."""
        key_dir = self._key_dir(stage, year)
        self.fs.invalidate_cache(key_dir)  # s3fs caches listings; other workers write here
        paths = self.fs.glob(f"{key_dir}/*/done.json")
        records = (DoneRecord.from_json(blob) for blob in self.fs.cat(paths).values()) if paths else ()
        return {r.tile_id: r for r in records}

    def years(self, stage: str) -> list[int]:
        """The years that hold outputs of a per-year tile stage (for this product, after features)."""
        stage_dir = self._key_dir(stage, "").rstrip("/")
        self.fs.invalidate_cache(stage_dir)
        try:
            names = [p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(stage_dir, detail=False)]
        except FileNotFoundError:
            return []
        return sorted(int(n) for n in names if n.isdigit())

    # ---------------------------------------------------------------- failed tiles

    def _failure_log_path(self, stage: str, year: int | str, tile_id: str) -> str:
        return f"{self.tile_dir(stage, year, tile_id)}/failed.log"

    def write_failure_log(self, stage: str, year: int | str, tile_id: str, text: str) -> str:
        """Keep the log of a tile's failed attempt beside its (absent or older) done mark; returns its URL."""
        path = self._failure_log_path(stage, year, tile_id)
        self._put_atomic(path, text.encode())
        return self._url(path)

    def clear_failure_log(self, stage: str, year: int | str, tile_id: str) -> None:
        """Forget a tile's earlier failure once it is done."""
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self._failure_log_path(stage, year, tile_id))

    def failed_tiles(self, stage: str, year: int | str) -> dict[str, str]:
        """The tiles of a stage and year whose last attempt failed: tile id -> URL of its log."""
        key_dir = self._key_dir(stage, year)
        self.fs.invalidate_cache(key_dir)
        return {p.rstrip("/").split("/")[-2]: self._url(p) for p in self.fs.glob(f"{key_dir}/*/failed.log")}

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
        Like a tile writer it holds the product's lease, so it may wait for, or skip (WriteSkipped),
        another run writing the same product.
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
        place, so a reader never sees half of a model. Older attempts are removed afterwards,
        except for versioned products (models), which keep every version with its own record.
        """
        if stage not in _file_stages():
            raise StoreError(f"stage {stage!r} does not store files; file stages: {_file_stages()}")
        files = sorted(p for p in Path(folder).iterdir() if p.is_file())
        if not files:
            raise StoreError(f"{folder} holds no files to store")
        product = self.product_dir(stage, name)
        attempt = _new_attempt_id()
        versioned = get_stage(stage).versioned
        # One writer per product at a time (see "Concurrent runs"); a run that waited for another one
        # which made this very output (same params hash) keeps that one.
        lease = _Lease(self, product, attempt, f"{stage} output {name!r}")
        if lease.acquire() and (done := _done_meanwhile(self.fs, product, params_hash, lease)) is not None:
            return done
        try:
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
                lineage=current_lineage(),  # parameters, code and inputs of the stage runner
            )
            if versioned:  # each version keeps its own record, numbered under the lease, for `versions()`
                number = len(self.versions(stage, name)) + 1  # attempt ids only order by whole seconds
                numbered = dataclasses.replace(record, extra={**record.extra, "version_number": number})
                self._put_atomic(f"{product}/{attempt}/version.json", numbered.to_json().encode())
            superseded = _current_attempt(self.fs, product)
            previous = self.product_record(stage, name)
            lease.confirm()  # no done mark once the lease is lost
            self._put_atomic(f"{product}/done.json", record.to_json().encode())
        except BaseException:
            with contextlib.suppress(Exception):
                self.fs.rm(f"{product}/{attempt}", recursive=True)
            lease.release()
            raise
        try:
            self._publish(stage, name, record, previous)
        except Exception as exc:  # the commit stands; the next commit publishes again
            log.warning("could not publish %s %r at its stable path (%s)", stage, name, exc)
        try:  # models keep every version; other products only the current one
            _remove_stale(self.fs, product, "", attempt, None if versioned else superseded, lease, versions=versioned)
        finally:
            lease.release()
        return record

    def published_dir(self, stage: str, name: str) -> str:
        """The stable folder holding a file product's current files, the same from run to run:
        `<stage>/<product>/current/` for versioned products (models), the product's own folder otherwise
        (`report/<product>/report.html`, `change-polygons/<product>/<from>-<to>/changes.gpkg`)."""
        product = self.product_dir(stage, name)
        return f"{product}/current" if get_stage(stage).versioned else product

    def published_url(self, stage: str, name: str, file_name: str) -> str:
        """Stable URL of one file of a file product's current version (for READMEs, bookmarks, links)."""
        return self._url(f"{self.published_dir(stage, name)}/{file_name}")

    def _publish(self, stage: str, name: str, record: DoneRecord, previous: DoneRecord | None) -> None:
        """Copy a just-committed file product's files to its stable folder, each replaced in one step
        (a rename locally, one PUT or server-side copy on S3), and drop the files the new version no longer has.
        Runs under the product's lease, so two commits never publish at once."""
        source, target = self.product_dir(stage, name), self.published_dir(stage, name)
        for file_name in record.arrays:
            src, dst = f"{source}/{record.attempt}/{file_name}", f"{target}/{file_name}"
            if self.is_local:
                Path(target).mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(dir=target, prefix=".tmp-")
                os.close(fd)
                shutil.copyfile(src, tmp)
                os.chmod(tmp, 0o644)
                os.replace(tmp, dst)
            else:
                self.fs.copy(src, dst)
        for file_name in set(previous.arrays if previous else ()) - set(record.arrays):
            if file_name not in ("done.json", "lease.json"):
                with contextlib.suppress(FileNotFoundError):
                    self.fs.rm_file(f"{target}/{file_name}")

    def versions(self, stage: str, name: str) -> list[DoneRecord]:
        """Every kept version of a versioned file product (e.g. the models of a product), oldest first.

        Each version's own record is the `version.json` written beside its files.
        """
        product = self.product_dir(stage, name)
        self.fs.invalidate_cache(product)
        paths = self.fs.glob(f"{product}/attempt-*/version.json")
        records = [DoneRecord.from_json(blob) for blob in self.fs.cat(paths).values()] if paths else []
        return sorted(records, key=lambda r: (r.extra.get("version_number", 0), r.attempt))

    def version_record(self, stage: str, name: str, version: str) -> DoneRecord:
        """The record of one kept version; StoreError naming the versions there are if it is not one."""
        for record in self.versions(stage, name):
            if record.attempt == version:
                return record
        known = [r.attempt for r in self.versions(stage, name)]
        raise StoreError(f"{self.url} has no version {version!r} of {stage} {name!r}; it has {known}")

    def get_files(self, stage: str, name: str, folder: Path, version: str | None = None) -> DoneRecord:
        """Download the current attempt of a file product (or a kept `version`) into a local folder."""
        record = self.product_record(stage, name) if version is None else self.version_record(stage, name, version)
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
        # Imported here: xarray and rioxarray cost ~150 MiB and ~1 s in every worker that only reads arrays.
        import rioxarray  # noqa: F401  (registers the .rio accessor on opened datasets)
        import xarray as xr

        reader = self.open_tile(stage, year, tile_id)
        return xr.open_zarr(reader.url, storage_options=None if self.is_local else self.storage_options, zarr_format=3)


def _is_spatial(spec: ArraySpec) -> bool:
    return set(SPATIAL_DIMS) <= set(spec.dims)


def _chunk_groups(dims: tuple[str, ...], chunks: tuple[int, ...], shape: tuple[int, ...]):
    """Slices of a region's data that split one write (or whole read) into calls of about zarr's concurrency
    in chunks each, cut along the non-spatial dims that are chunked (e.g. one band or feature per chunk).

    zarr encodes every chunk of one call before it has written them all, so one call over a tile's 13
    bands holds a copy of all 13 (a third of a GB at 500² × 48 dates); calls of ~concurrency chunks
    keep as many writes (or reads) in flight and bound that copy.
    """
    per_slab = math.prod(-(-n // c) for d, c, n in zip(dims, chunks, shape, strict=True) if d in SPATIAL_DIMS)
    split = [i for i, (d, c, n) in enumerate(zip(dims, chunks, shape, strict=True)) if d not in SPATIAL_DIMS and c < n]
    if not split:
        yield tuple(slice(None) for _ in dims)
        return
    axis = split[0]  # the outermost chunked non-spatial dim (arrays here have at most one)
    step = chunks[axis] * max(1, int(zarr.config.get("async.concurrency")) // per_slab)
    for start in range(0, shape[axis], step):
        yield tuple(slice(start, start + step) if i == axis else slice(None) for i in range(len(dims)))


def _read_region(array: zarr.Array, region: tuple[slice, slice] | None, select: Mapping[str, Any] | None = None):
    """A spatial region, and optionally chosen indices along other dims (e.g. some bands or dates)."""
    rows, cols = region if region is not None else (slice(None), slice(None))
    select = select or {}
    index = tuple(
        rows if d == "y" else cols if d == "x" else np.asarray(select[d]) if d in select else slice(None)
        for d in array.metadata.dimension_names
    )
    if select:
        return array.get_orthogonal_selection(index)
    shape = tuple(len(range(*i.indices(n))) for i, n in zip(index, array.shape, strict=True))
    parts = list(_chunk_groups(array.metadata.dimension_names, array.chunks, shape))
    if len(parts) == 1:
        return array[index]
    # Filled a group of chunks at a time (as `TileWriter.write` writes), each decoded straight into its place.
    out = np.empty(shape, dtype=array.dtype)
    dims = array.metadata.dimension_names
    for part in parts:
        where = tuple(i if d in SPATIAL_DIMS else p for d, p, i in zip(dims, part, index, strict=True))
        array.get_basic_selection(where, out=NDBuffer.from_numpy_array(out[part]))
    return out


def _protocols(fs) -> tuple[str, ...]:
    proto = fs.protocol
    return (proto,) if isinstance(proto, str) else tuple(proto)


# S3 timeouts and retries. Without them a stalled endpoint hangs a stage for ever: botocore waits
# up to its read timeout per attempt, and s3fs retries botocore's whole retry sequence 5 times more.
# These are defaults of every s3:// filesystem LCMS makes (the store's, Zarr's and xarray's from the
# same storage_options, and the scene files' and export's): connect and read timeouts, and botocore's
# adaptive retries with backoff for throttling, 5xx, resets and timeouts. A stall longer than
# about S3_FS_RETRIES × max_attempts × read_timeout (2 × 3 × 20 s) fails the call with botocore's
# message, which names the endpoint ("Read timeout on endpoint URL: ..."). A config's
# storage_options.config_kwargs override them key by key; the environment variables below change
# the defaults.
S3_CONNECT_TIMEOUT_ENV, S3_READ_TIMEOUT_ENV, S3_MAX_ATTEMPTS_ENV = (
    "LCMS_S3_CONNECT_TIMEOUT",
    "LCMS_S3_READ_TIMEOUT",
    "LCMS_S3_MAX_ATTEMPTS",
)
S3_DEFAULTS = {"connect_timeout": 10.0, "read_timeout": 20.0, "max_attempts": 3}
S3_FS_RETRIES = 2  # s3fs's own retry loop around botocore's (its default, 5, multiplies the budget by 5)


def s3_error_message(url: str, exc: BaseException) -> str | None:
    """One line saying why an S3 store cannot be reached and what to do, or None for other errors.

    botocore's own messages name neither the store nor a remedy, and without this they reach
    the user as a long traceback.
    """
    try:
        from botocore import exceptions as boto
    except ImportError:
        return None
    where = f"S3 store {url}"
    if isinstance(exc, boto.NoCredentialsError | boto.PartialCredentialsError):
        return (
            f"{where}: no AWS credentials found (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, "
            "or use an instance profile)"
        )
    if isinstance(exc, boto.EndpointConnectionError | boto.ConnectTimeoutError | boto.ReadTimeoutError):
        # botocore's message names the URL it could not reach ("Could not connect to the endpoint URL: ...").
        return (
            f"{where}: {exc}; check the network and the endpoint (AWS_ENDPOINT_URL or "
            "store.storage_options.endpoint_url)"
        )
    if isinstance(exc, boto.ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken"):
            return f"{where}: the AWS credentials were refused ({code}); check AWS_ACCESS_KEY_ID/… or AWS_PROFILE"
    if isinstance(exc, PermissionError):  # s3fs turns AccessDenied into PermissionError
        return f"{where}: access denied ({exc}); the credentials need s3:GetObject, s3:PutObject and s3:ListBucket"
    return None


def s3_storage_options(url: str, storage_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """`storage_options` for `url`, with LCMS's S3 timeouts and retries added as defaults when it is s3://."""
    options = dict(storage_options or {})
    if not str(url).startswith(("s3://", "s3a://")):
        return options

    def number(env: str, key: str, kind=float):
        try:
            return kind(os.environ.get(env) or S3_DEFAULTS[key])
        except ValueError:
            raise StoreError(f"{env} must be a number, got {os.environ[env]!r}") from None

    config = dict(options.get("config_kwargs") or {})
    config.setdefault("connect_timeout", number(S3_CONNECT_TIMEOUT_ENV, "connect_timeout"))
    config.setdefault("read_timeout", number(S3_READ_TIMEOUT_ENV, "read_timeout"))
    config.setdefault("retries", {"mode": "adaptive", "max_attempts": number(S3_MAX_ATTEMPTS_ENV, "max_attempts", int)})
    options["config_kwargs"] = config
    _bound_s3_waits()
    return options


def _bound_s3_waits() -> None:
    """Two process-wide settings the storage options cannot carry (idempotent):

    - s3fs's own retry loop (a class attribute) down to S3_FS_RETRIES;
    - no "Expect: 100-continue" on S3 PUTs: aiohttp waits for the interim "100 Continue" with no
      timeout at all (the read timeout starts only once the body is sent), so a PUT to a stalled
      endpoint hung for ever whatever read_timeout said. A PUT is retried whole anyway.
    """
    with contextlib.suppress(ImportError):
        import s3fs

        s3fs.S3FileSystem.retries = min(s3fs.S3FileSystem.retries, S3_FS_RETRIES)
    with contextlib.suppress(ImportError, AttributeError):
        from botocore import handlers

        handlers.BUILTIN_HANDLERS[:] = [h for h in handlers.BUILTIN_HANDLERS if h[1] is not handlers.add_expect_header]


ABORT_REMOVALS, ABORT_SETTLE_SECONDS = 6, 0.5  # how an aborted attempt's folder is removed (see abort)


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

        # One writer per output at a time: take its lease before the attempt exists (see "Concurrent runs").
        stage = self.layout.stage
        what = f"{stage} tile {tile_id} ({year})" if grid is not None else f"{stage} output {tile_id!r}"
        self._lease = _Lease(store, tile_dir, self.attempt, what)
        if self._lease.acquire():
            done = _done_meanwhile(store.fs, tile_dir, params_hash, self._lease)
            if done is not None:
                raise WriteSkipped(
                    f"skipped {what}: {_describe(self._lease.waited_for)} finished it with the same parameters "
                    f"while this run waited (attempt {done.attempt})",
                    reason="done",
                    owner=self._lease.waited_for,
                    record=done,
                )
        weakref.finalize(self, self._lease.release)  # an abandoned writer gives its lease up when collected
        try:
            self._create_attempt(coords, attrs)
        except BaseException:
            self.abort()
            raise

    def _create_attempt(self, coords: Mapping[str, Any], attrs: Mapping[str, Any]) -> None:
        grid = self.grid
        self.group = zarr.open_group(self.store._zarr_store(self.url), mode="w-", zarr_format=3)
        self.group.attrs.update(
            {
                "lcms_stage": self.layout.stage,
                "year": self.year,
                "tile_id": self.tile_id,
                "pixel_grid": grid.to_attrs() if grid is not None else None,
                "params_hash": self.params_hash,
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
            target = self.group[name]
            for part in _chunk_groups(spec.dims, target.chunks, data.shape):
                # the part's slice on non-spatial dims (written whole), the region on y and x
                where = tuple(i if d in SPATIAL_DIMS else p for d, p, i in zip(spec.dims, part, index, strict=True))
                target[where] = data[part]
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
            self._lease.yield_()  # another writer may take the output over; if none does, a later commit reclaims it
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
            lineage=current_lineage(),  # parameters, code and inputs of the stage runner
        )
        superseded = _current_attempt(self.store.fs, self.tile_dir)
        self._lease.confirm()  # still this writer's, for a good while yet; LeaseError (no done mark) if not
        self.store._put_atomic(f"{self.tile_dir}/done.json", record.to_json().encode())
        self._closed = True
        try:
            self._remove_stale_attempts(superseded)
        finally:
            self._lease.release()
        return record

    def abort(self) -> None:
        """Remove this attempt and give the lease up; the tile's previous state stays as it was."""
        self._closed = True
        try:
            # A failed array write (e.g. a full disk) can leave sibling chunk writes of the same call still
            # running in zarr's event loop; they would recreate the folder just removed. Remove it until it stays gone.
            for _ in range(ABORT_REMOVALS):
                if not self.store.fs.exists(self.path):
                    break
                with contextlib.suppress(FileNotFoundError, OSError):
                    self.store.fs.rm(self.path, recursive=True)
                time.sleep(ABORT_SETTLE_SECONDS)
                self.store.fs.invalidate_cache(self.path)
        finally:
            self._lease.release()

    def _remove_stale_attempts(self, superseded: str | None = None) -> None:
        """Remove the attempt just superseded and abandoned ones (see `_remove_stale`), holding the lease."""
        _remove_stale(self.store.fs, self.tile_dir, ".zarr", self.attempt, superseded, self._lease)

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


# --------------------------------------------------------------------------- leases: one writer per output at a time

LEASE_FILE = "lease.json"
_ON_BUSY = ("wait", "skip")


@dataclass(frozen=True)
class LeaseSettings:
    """How writers of one store share it (see "Concurrent runs" in the module docstring).

    `seconds`: how long a lease lasts unless renewed; a writer renews its lease every quarter
    of that while it is open, and a commit removes an abandoned attempt only once it is older
    than that. `on_busy`: what a writer does when another live writer holds the lease:
    "wait" (look again every `poll_seconds`, for at most `wait_seconds`, then LeaseError)
    or "skip" (WriteSkipped at once, naming the other writer).
    """

    seconds: float = 300.0
    on_busy: str = "wait"
    wait_seconds: float = 3600.0
    poll_seconds: float = 2.0

    def __post_init__(self) -> None:
        if self.on_busy not in _ON_BUSY:
            raise StoreError(f"on_busy must be one of {_ON_BUSY}, not {self.on_busy!r}")
        if self.seconds <= 0 or self.poll_seconds <= 0 or self.wait_seconds < 0:
            raise StoreError("lease seconds and poll seconds must be positive, and wait seconds not negative")

    @classmethod
    def from_env(cls) -> LeaseSettings:
        """The defaults, or LCMS_LEASE_SECONDS, LCMS_ON_BUSY and LCMS_BUSY_WAIT_SECONDS where they are set."""
        default, env = cls(), os.environ
        return cls(
            seconds=float(env.get("LCMS_LEASE_SECONDS", default.seconds)),
            on_busy=env.get("LCMS_ON_BUSY", default.on_busy),
            wait_seconds=float(env.get("LCMS_BUSY_WAIT_SECONDS", default.wait_seconds)),
        )


def _iso(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat(timespec="seconds")


def _process_start(pid: int) -> str | None:
    """When process `pid` started (clock ticks since boot), or None if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22, counted after the command name


def _process_space() -> str | None:
    """Which processes this one can see: this boot of this machine, this PID namespace (None without /proc)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        return f"{boot} {os.readlink('/proc/self/ns/pid')}"
    except OSError:
        return None


def _this_process() -> dict[str, Any]:
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "start": _process_start(pid), "space": _process_space()}


def _owner_gone(owner: Mapping | None) -> bool:
    """True only when a lease's owner provably no longer runs: a process we can see that has exited."""
    if not owner or owner.get("space") is None or owner.get("space") != _process_space():
        return False
    pid = owner.get("pid")
    if not isinstance(pid, int):
        return False
    start = _process_start(pid)
    return start is None or (owner.get("start") is not None and start != owner["start"])


def _describe(owner: Mapping | None) -> str:
    if not owner:
        return "an unknown writer"
    return f"host {owner.get('host')}, pid {owner.get('pid')} (writer {owner.get('id')})"


def _attempt_age(attempt: str) -> float:
    """Seconds since an attempt was created, from its id (0 if the id carries no time)."""
    try:
        created = dt.datetime.strptime(attempt.split("-")[1], "%Y%m%dT%H%M%S").replace(tzinfo=dt.UTC)
    except (IndexError, ValueError):
        return 0.0
    return time.time() - created.timestamp()


def _condition_failed(exc: BaseException) -> bool:
    """A conditional S3 request whose condition did not hold (412), that lost a race (409), or found nothing."""
    if isinstance(exc, FileNotFoundError | FileExistsError):
        return True
    seen: BaseException | None = exc
    while seen is not None:
        response = getattr(seen, "response", None)
        if isinstance(response, dict):
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            code = response.get("Error", {}).get("Code")
            return status in (404, 409, 412) or code in ("PreconditionFailed", "ConditionalRequestConflict")
        seen = seen.__cause__ or seen.__context__
    # s3fs turns 412 into OSError(EINVAL, "...pre-conditions...") and 409 into OSError(EBUSY)
    return isinstance(exc, OSError) and (
        exc.errno == errno.EBUSY or (exc.errno == errno.EINVAL and "condition" in str(exc).lower())
    )


class _LocalLeaseIO:
    """Lease objects in a folder: exclusive create (O_EXCL), and compare-and-swap under a guard.

    The token of a local lease is its content (unique: it holds the owner's random id and times).
    Replacing or deleting a lease happens under a guard folder next to it (mkdir is atomic, also on
    NFS), so two writers can never both replace the lease they saw; the guard is held for a few
    milliseconds, and one left by a process that died in between is removed after 30 s.
    """

    def read(self, path: str) -> tuple[bytes, bytes, float] | None:
        try:
            with open(path, "rb") as handle:
                return (data := handle.read()), data, os.fstat(handle.fileno()).st_mtime
        except (FileNotFoundError, NotADirectoryError):
            return None

    def create(self, path: str, data: bytes) -> bytes | None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return None
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        return data

    def replace(self, path: str, data: bytes, token: bytes) -> bytes | None:
        def swap():
            current = self.read(path)
            if current is None or current[1] != token:
                return None
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".lease-")
            os.fchmod(fd, 0o644)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
            return data

        return self._guarded(path, swap)

    def delete(self, path: str, token: bytes) -> bool:
        def remove():
            current = self.read(path)
            if current is None or current[1] != token:
                return False
            os.unlink(path)
            return True

        return bool(self._guarded(path, remove))

    def _guarded(self, path: str, action):
        guard = f"{path}.lock"
        deadline = time.monotonic() + 5
        while True:
            try:
                os.mkdir(guard)
                break
            except FileNotFoundError:  # the folder is gone, and the lease with it
                return None
            except FileExistsError:
                with contextlib.suppress(OSError):
                    if time.time() - os.stat(guard).st_mtime > 30:
                        os.rmdir(guard)  # left by a process that died while it held it
                        continue
                if time.monotonic() > deadline:
                    raise TimeoutError(f"lease guard {guard} held for more than 5 s") from None
                time.sleep(0.005)
        try:
            return action()
        finally:
            with contextlib.suppress(OSError):
                os.rmdir(guard)


class _S3LeaseIO:
    """Lease objects on S3: conditional PUT and DELETE (If-None-Match: *, If-Match: ETag); the token is the ETag."""

    def __init__(self, fs):
        self.fs = fs

    def _where(self, path: str) -> dict[str, str]:
        bucket, key, _ = self.fs.split_path(path)
        return {"Bucket": bucket, "Key": key}

    def read(self, path: str) -> tuple[bytes, str, float] | None:
        async def get():
            response = await self.fs._call_s3("get_object", **self._where(path))
            try:
                data = await response["Body"].read()
            finally:
                response["Body"].close()
            return data, response["ETag"], response["LastModified"].timestamp()

        try:
            return fsspec.asyn.sync(self.fs.loop, get)
        except FileNotFoundError:
            return None

    def _put(self, path: str, data: bytes, **condition) -> str | None:
        try:
            return self.fs.call_s3("put_object", Body=data, **self._where(path), **condition)["ETag"]
        except Exception as exc:
            if _condition_failed(exc):
                return None
            raise

    def create(self, path: str, data: bytes) -> str | None:
        return self._put(path, data, IfNoneMatch="*")

    def replace(self, path: str, data: bytes, token: str) -> str | None:
        return self._put(path, data, IfMatch=token)

    def delete(self, path: str, token: str) -> bool:
        try:
            self.fs.call_s3("delete_object", **self._where(path), IfMatch=token)
            return True
        except Exception as exc:
            if _condition_failed(exc):
                return False
            raise


class _Lease:
    """The lease of one output folder (a tile's stage output for a year, or an AOI product).

    `acquire()` takes it (waiting or skipping as the store's LeaseSettings say), a daemon thread
    renews it, `confirm()` renews it right before a commit (fencing: no done mark after losing it),
    `release()` gives it up.
    """

    def __init__(self, store: TileStore, folder: str, attempt: str, what: str):
        self.settings = store._leases()
        if store.is_local:
            self.io: _LocalLeaseIO | _S3LeaseIO = _LocalLeaseIO()
        elif {"s3", "s3a"} & set(_protocols(store.fs)):
            self.io = _S3LeaseIO(store.fs)
        else:
            raise StoreError(f"store {store.url}: leases need a local folder or S3, not {_protocols(store.fs)}")
        self.path = f"{folder}/{LEASE_FILE}"
        self.what, self.attempt = what, attempt
        self.owner = {**_this_process(), "id": secrets.token_hex(6)}
        self.token: Any = None
        self.expires = 0.0
        self.yielding = False
        self.lost: str | None = None
        self.previous: dict | None = None  # the lease this one took over, and why it was free
        self.waited_for: dict | None = None  # the owner this writer waited for, if it waited
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---------------------------------------------------------------- state

    def _payload(self, yielding: bool) -> tuple[bytes, float]:
        now = time.time()
        expires = now + self.settings.seconds
        state = {
            "owner": self.owner,
            "output": self.what,
            "attempt": self.attempt,
            "expires": expires,
            "expires_at": _iso(expires),
            "renewed_at": _iso(now),
            "yielding": yielding,
        }
        return json.dumps(state, indent=1, sort_keys=True).encode(), expires

    def _read(self) -> tuple[dict, Any] | None:
        found = self.io.read(self.path)
        if found is None:
            return None
        data, token, mtime = found
        try:
            state = json.loads(data)
            float(state["expires"])
        except (ValueError, KeyError, TypeError):  # being created right now, or left half-written by a crash
            state = {"owner": None, "attempt": None, "expires": mtime + self.settings.seconds}
        return state, token

    @staticmethod
    def _free(state: Mapping) -> str | None:
        """Why another writer's lease may be taken over, or None while it is live."""
        if state.get("yielding"):
            return "yielded"
        if time.time() > float(state["expires"]):
            return "expired"
        if _owner_gone(state.get("owner")):
            return "owner-gone"
        return None

    def busy_message(self, state: Mapping) -> str:
        return (
            f"{self.what} is being written by another run: {_describe(state.get('owner'))}, "
            f"attempt {state.get('attempt')}, lease until {state.get('expires_at')}"
        )

    # ---------------------------------------------------------------- taking, keeping, giving up

    def acquire(self) -> bool:
        """Take the lease; True if this writer had to wait for another one first."""
        settings = self.settings
        deadline = time.monotonic() + settings.wait_seconds
        while True:
            current = self._read()
            if current is None:
                payload, expires = self._payload(False)
                token = self.io.create(self.path, payload)
                if token is not None:
                    self._hold(token, expires)
                    return self.waited_for is not None
                time.sleep(min(0.05, settings.poll_seconds))
                continue
            state, token = current
            if (state.get("owner") or {}).get("id") == self.owner["id"]:  # our own PUT, answered late
                self._hold(token, float(state["expires"]))
                return self.waited_for is not None
            why = self._free(state)
            if why is not None:
                payload, expires = self._payload(False)
                try:
                    taken = self.io.replace(self.path, payload, token)
                except TimeoutError:
                    taken = None
                if taken is not None:
                    self.previous = {**state, "free_because": why}
                    level = logging.INFO if why == "yielded" else logging.WARNING
                    log.log(level, "took over the lease of %s from %s (%s)", self.what, _describe(state["owner"]), why)
                    self._hold(taken, expires)
                    return self.waited_for is not None
                time.sleep(min(0.05, settings.poll_seconds))
                continue
            message = self.busy_message(state)
            if settings.on_busy == "skip":
                log.warning("skipped %s", message)
                raise WriteSkipped(f"skipped {message}", reason="busy", owner=state.get("owner"))
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LeaseError(
                    f"gave up after waiting {settings.wait_seconds:g} s: {message}. Rerun when it has finished, "
                    "or raise the wait (LCMS_BUSY_WAIT_SECONDS)"
                )
            if self.waited_for is None:
                log.info("waiting up to %g s: %s", settings.wait_seconds, message)
            self.waited_for = dict(state.get("owner") or {})
            time.sleep(min(settings.poll_seconds, remaining))

    def _hold(self, token: Any, expires: float) -> None:
        self.token, self.expires = token, expires
        self._thread = threading.Thread(target=self._keep, name=f"lcms-lease {self.what}", daemon=True)
        self._thread.start()

    def _keep(self) -> None:
        while not self._stop.wait(self.settings.seconds / 4):
            try:
                self.renew()
            except LeaseError:
                return
            except Exception as exc:  # a network hiccup: try again at the next tick, while the lease lasts
                log.warning("could not renew the lease of %s (%s: %s); retrying", self.what, type(exc).__name__, exc)

    def renew(self, yielding: bool | None = None) -> None:
        """Extend the lease (and set whether it yields); LeaseError if it is no longer this writer's."""
        with self._lock:
            if self.lost is not None:
                raise LeaseError(self.lost)
            if self.token is None:
                raise LeaseError(f"the lease of {self.what} is not held")
            if time.time() > self.expires - self.settings.seconds / 10:
                # Too close to (or past) its expiry: another writer may be taking it over right now.
                self._lose(f"the lease of {self.what} expired before it could be renewed")
            yielding = self.yielding if yielding is None else yielding
            payload, expires = self._payload(yielding)
            token = self.io.replace(self.path, payload, self.token)
            if token is None:
                current = self._read()
                owner = current[0].get("owner") if current else None
                self._lose(f"another writer took over the lease of {self.what}: {_describe(owner)}")
            self.token, self.expires, self.yielding = token, expires, yielding

    def _lose(self, reason: str) -> None:
        self.lost, self.token = reason, None
        self._stop.set()
        log.warning("%s; this writer will not commit", reason)
        raise LeaseError(reason)

    def confirm(self) -> None:
        """Renew the lease right before a commit: no done mark is put once it is lost."""
        self.renew(yielding=False)

    def yield_(self) -> None:
        """Keep writing, but let another writer take the output over (after a refused commit)."""
        with contextlib.suppress(LeaseError, OSError, TimeoutError):
            self.renew(yielding=True)

    def release(self) -> None:
        """Give the lease up (after a commit or an abort); a no-op once released or lost."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=30)
        with self._lock:
            token, self.token = self.token, None
            if token is None or self.lost is not None:
                return
            try:
                if not self.io.delete(self.path, token):
                    log.warning("the lease of %s was no longer this writer's at release", self.what)
            except Exception as exc:
                log.warning("could not release the lease of %s (%s); it expires by itself", self.what, exc)

    def gone_attempt(self) -> str | None:
        """The attempt of a lease taken over from a writer that provably exited (removable at once)."""
        if self.previous and self.previous.get("free_because") == "owner-gone":
            return self.previous.get("attempt")
        return None


def _current_attempt(fs, folder: str) -> str | None:
    """The attempt the done mark in `folder` points at, if any."""
    try:
        return DoneRecord.from_json(fs.cat_file(f"{folder}/done.json")).attempt
    except (FileNotFoundError, NotADirectoryError):
        return None


def _done_meanwhile(fs, folder: str, params_hash: str, lease: _Lease) -> DoneRecord | None:
    """After waiting for another writer: its done mark if it made the same output (same params hash).

    The lease is then released: this writer has nothing to do.
    """
    try:
        record = DoneRecord.from_json(fs.cat_file(f"{folder}/done.json"))
    except (FileNotFoundError, NotADirectoryError):
        return None
    if record.params_hash != params_hash:
        return None
    lease.release()
    log.info("%s was finished by %s while this run waited: skipped", lease.what, _describe(lease.waited_for))
    return record


def _remove_stale(fs, folder: str, suffix: str, keep: str, superseded: str | None, lease: _Lease, versions=False):
    """Remove the attempts in `folder` that no writer can still use. Called by a commit holding the lease.

    Since this writer holds the output's lease, no other writer holds it: an attempt other than
    `keep` is either the one just `superseded` (committed, so finished), the attempt of a writer
    that provably exited, or one whose writer's lease was gone or expired; the last kind is removed
    only once it is older than the lease time (its writer may still be running and find out at its
    commit that it lost its lease). Versioned products keep every attempt with a version.json.
    """
    fs.invalidate_cache(folder)
    gone = lease.gone_attempt()
    for path in fs.glob(f"{folder}/attempt-*{suffix}"):
        name = path.rstrip("/").rsplit("/", 1)[-1]
        attempt = name[: -len(suffix)] if suffix else name
        if attempt == keep or (versions and fs.exists(f"{path}/version.json")):
            continue
        # +1 s: attempt ids carry whole seconds
        if attempt in (superseded, gone) or _attempt_age(attempt) > lease.settings.seconds + 1:
            try:
                fs.rm(path, recursive=True)
            except FileNotFoundError:
                pass
            except Exception as exc:  # the commit stands; a later one removes it
                log.warning("could not remove the stale attempt %s (%s)", path, exc)
