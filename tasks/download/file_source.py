"""Sentinel-2 scenes already on disk or S3, read onto a tile's grid (`FileSource`).

`FileSource` implements `tasks.download.sources.BandSource` for a folder of scenes (local, or
``s3://bucket/prefix``). The folder is searched recursively, once, when first needed; only
file headers are read to build the index. Pixels are read later, block by block, and only the
window of each file that covers the requested grid.

Supported layouts
-----------------
(a) **Per-band files**, as in a SAFE granule's ``IMG_DATA`` (``.jp2``, ``.tif`` or ``.tiff``)::

        T33TVM_20230415T100031_B04.jp2          L1C
        T33TVM_20230415T100031_B04_10m.jp2      L2A (R10m/, R20m/, R60m/ folders)

    The band token (``B01`` .. ``B12``, ``B8A``, also ``B4``) must end the name, optionally
    followed by ``_10m``/``_20m``/``_60m``. Files are grouped into scenes by tile id
    (``T33TVM``) and acquisition time; without a tile id, by granule folder and time. When a
    band is present at several resolutions (L2A), the finest is used. Auxiliary files (TCI,
    SCL, AOT, WVP, PVI, ``MSK_*``, anything under ``QI_DATA``) are ignored, and so are products
    of the other collection when a path component says so (``MSIL1C`` / ``MSIL2A``).

(b) **Multi-band GeoTIFFs**, one scene per file (``.tif``/``.tiff`` without a band token).
    Band names come from the band descriptions if they all name bands (``B04``, ``B4``,
    ``B8A``), else from ``band_order`` in the config, else the collection's band list when
    the band count matches it; otherwise `SourceError`.

Bands may be at any mix of 10, 20 and 60 m and in any CRS: each is resampled onto the requested
grid with the configured resampling. Where a file is in the grid's CRS at the grid's pixel size
and aligned to it (the 10 m bands of a UTM tile), pixels are copied, so values come through
exactly.

Dates: the first ``YYYYMMDD`` or ``YYYYMMDDThhmmss`` in the file name (sensing time comes first
in Sentinel-2 names), else a metadata tag (``*ACQUISITION*``, ``*SENSING*``, ``*DATETIME*``
such as ``TIFFTAG_DATETIME``, ``*DATE*``). Scenes of the same UTC day (neighbouring granules of
one datatake) are one date, whose value is the earliest of their times; they are mosaicked in
order of time then name, the first valid pixel wins.

Layers for the cloud masks (`read_layers`):

* ``"SCL"`` (L2A): the scene classification file of a SAFE granule
  (``T33TVM_20230415T100031_SCL_20m.jp2``, the finest of R20m/R60m), or a multi-band GeoTIFF
  band described ``SCL``; read with nearest resampling, 0 where there is none;
* ``"sun"``: the mean sun azimuth and zenith of each date, from the granule's ``MTD_TL.xml``
  (``Mean_Sun_Angle``) or from GeoTIFF tags (``*SUN*AZIMUTH*``, ``*SUN*ZENITH*`` or
  ``*SUN*ELEVATION*``, e.g. ``MEAN_SUN_AZIMUTH_ANGLE``, ``SUN_ELEVATION``); NaN
  when the scene does not say (the caller then computes them from the time).

No data: 0 and the file's nodata value. A pixel has data (``data_mask``) only where every band
has data; bands are 0 elsewhere.

Processing baseline 04.00 offset: products since January 2022 store DN = reflectance × 10000
+ 1000. The offset is removed (DN + offset, clipped to 1..65535 so that a valid pixel never
reads as "no data") when the scene says so:

* per-band files inside a ``*.SAFE`` folder: ``RADIO_ADD_OFFSET`` / ``BOA_ADD_OFFSET`` per band
  from the product's ``MTD_MSIL1C.xml`` / ``MTD_MSIL2A.xml``; without that file, ``-1000`` for
  every band when ``PROCESSING_BASELINE`` in it, or the ``_Nxxyy_`` baseline in the SAFE folder
  name, is 04.00 or later;
* multi-band GeoTIFFs: dataset or band tags ``RADIO_ADD_OFFSET`` / ``BOA_ADD_OFFSET``, or
  ``PROCESSING_BASELINE`` >= 04.00 (meaning -1000). Exports that already removed the offset
  carry no such tag and are read as they are.

S3: files are listed with fsspec/s3fs (``storage_options``) and read by GDAL's ``/vsis3/``
with range requests. The endpoint comes from ``storage_options`` (``endpoint_url`` or
``client_kwargs.endpoint_url``) or ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``;
``anon`` and ``requester_pays`` are honoured. Credentials come from the usual AWS chain (boto3).
"""

from __future__ import annotations

import logging
import math
import os
import re
import threading
import xml.etree.ElementTree as ET
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from urllib.parse import urlsplit

import fsspec
import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.warp import reproject, transform_bounds
from rasterio.windows import Window, from_bounds

from lcms.config import FileSourceConfig
from lcms.geometry import PixelGrid
from lcms.sentinel2 import L1C_BANDS, L2A_BANDS
from lcms.store import s3_storage_options
from tasks.download.errors import PermanentSourceError, TransientSourceError
from tasks.download.sources import SourceError

log = logging.getLogger(__name__)

RASTER_EXTENSIONS = (".jp2", ".tif", ".tiff")
BASELINE_OFFSET_DN = -1000.0  # what baseline >= 04.00 adds, when the metadata does not list it per band

_RESAMPLING = {
    "nearest": Resampling.nearest,
    "bilinear": Resampling.bilinear,
    "cubic": Resampling.cubic,
    "average": Resampling.average,
}
_BAND_TOKEN = re.compile(r"(?:^|[_.-])B(0?[1-9]|1[0-2]|8A)(?:_(\d{2})M)?$")
_BAND_DESCRIPTION = re.compile(r"B(0?[1-9]|1[0-2]|8A)(?:_\d{2}M)?")
_SCL_TOKEN = re.compile(r"(?:^|[_.-])SCL(?:_(\d{2})M)?$")
# GDAL/rasterio messages of network reads that may succeed when tried again.
_TRANSIENT_WORDS = ("CURL", "HTTP", "TIMED OUT", "TIMEOUT", "CONNECTION", "TEMPORARILY", "RESET BY PEER")
_DATE_IN_NAME = re.compile(r"(?<![0-9])((?:19|20)\d{2})(\d{2})(\d{2})(?:T(\d{2})(\d{2})(\d{2}))?(?![0-9])")
_DATE_IN_TEXT = re.compile(r"((?:19|20)\d{2})[-:/]?(\d{2})[-:/]?(\d{2})(?:[T ](\d{2}):?(\d{2}):?(\d{2}))?")
_TILE_ID = re.compile(r"(?:^|_)T(\d{2}[A-Z]{3})(?=_|$)")
_BASELINE_IN_NAME = re.compile(r"_N(\d{2})\.?(\d{2})(?=_|\.|$)")
_AUX_TOKENS = ("TCI", "SCL", "AOT", "WVP", "PVI", "CLDPRB", "SNWPRB", "PREVIEW")
_DATE_TAG_PRIORITY = ("ACQUISITION", "SENSING", "DATETIME", "DATE")
_OFFSET_TAGS = ("BOA_ADD_OFFSET", "RADIO_ADD_OFFSET")


# --------------------------------------------------------------------------- index records


@dataclass(frozen=True)
class _Raster:
    """Header facts of one file: enough to find and read its window for any grid."""

    path: str  # as rasterio opens it (local path or s3://bucket/key)
    crs: str
    transform: tuple[float, ...]
    width: int
    height: int
    nodata: float | None

    @property
    def pixel_size(self) -> float:
        return abs(self.transform[0])

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        a, _, c, _, e, f = self.transform[:6]
        xs, ys = (c, c + a * self.width), (f, f + e * self.height)
        return min(xs), min(ys), max(xs), max(ys)


@dataclass
class _Scene:
    name: str  # for messages: the tile and time, and where the files are
    time: np.datetime64
    bands: dict[str, tuple[_Raster, int]] = field(default_factory=dict)  # band -> (file, 1-based index)
    offsets: dict[str, float] = field(default_factory=dict)  # band -> DN offset to add
    missing: tuple[str, ...] = ()
    extents: dict[str, tuple[float, float, float, float]] = field(default_factory=dict)  # CRS -> bounds
    scl: tuple[_Raster, int] | None = None  # L2A scene classification (file, 1-based index)
    sun: tuple[float, float] | None = None  # mean sun azimuth and zenith (degrees) from the metadata

    def index_extents(self) -> None:
        """Union of the files' bounds per CRS, so that overlap tests need one transform per CRS."""
        for raster, _ in self.bands.values():
            old = self.extents.get(raster.crs, raster.bounds)
            new = raster.bounds
            self.extents[raster.crs] = (
                min(old[0], new[0]),
                min(old[1], new[1]),
                max(old[2], new[2]),
                max(old[3], new[3]),
            )


# --------------------------------------------------------------------------- parsing helpers


def _band_name(token: str) -> str:
    return "B8A" if token.upper() == "8A" else f"B{int(token):02d}"


def _datetime(groups: tuple[str | None, ...]) -> np.datetime64 | None:
    try:
        y, mo, d, *hms = groups
        value = datetime(int(y), int(mo), int(d), *(int(v) for v in hms if v is not None))
    except (TypeError, ValueError):  # e.g. 20231399: digits, but not a date
        return None
    return np.datetime64(value, "s")


def _date_from_name(stem: str) -> np.datetime64 | None:
    for match in _DATE_IN_NAME.finditer(stem):
        value = _datetime(match.groups())
        if value is not None:
            return value
    return None


def _date_from_tags(tags: dict[str, str]) -> np.datetime64 | None:
    for word in _DATE_TAG_PRIORITY:
        for key, text in tags.items():
            if word in key.upper():
                match = _DATE_IN_TEXT.search(str(text))
                value = _datetime(match.groups()) if match else None
                if value is not None:
                    return value
    return None


def _float_tag(tags: dict[str, str], names: tuple[str, ...]) -> float | None:
    for key, text in tags.items():
        if key.upper() in names:
            try:
                return float(text)
            except ValueError:
                continue
    return None


def _baseline_at_least_4(text: str | None) -> bool:
    try:
        return text is not None and float(text) >= 4.0
    except ValueError:
        return False


def _transient(exc: Exception) -> bool:
    """Whether a rasterio/GDAL error looks like a network read that may work when tried again."""
    text = str(exc).upper()
    return any(word in text for word in _TRANSIENT_WORDS)


def _read_error(message: str, exc: Exception) -> SourceError:
    """PermanentSourceError for a bad file, TransientSourceError for a broken network read."""
    return (TransientSourceError if _transient(exc) else PermanentSourceError)(message)


def _sun_from_tags(tags: dict[str, str]) -> tuple[float, float] | None:
    """Mean sun azimuth and zenith (degrees) from raster tags, if they name them."""
    azimuth = zenith = elevation = None
    for key, text in tags.items():
        upper = key.upper()
        if "SUN" not in upper and "SOLAR" not in upper:
            continue
        try:
            value = float(text)
        except ValueError:
            continue
        if "AZIMUTH" in upper:
            azimuth = value
        elif "ZENITH" in upper:
            zenith = value
        elif "ELEVATION" in upper:
            elevation = value
    if zenith is None and elevation is not None:
        zenith = 90.0 - elevation
    return (azimuth, zenith) if azimuth is not None and zenith is not None else None


def _sun_from_mtd_tl(tree: ET.ElementTree) -> tuple[float, float] | None:
    """Mean sun azimuth and zenith of a granule's MTD_TL.xml (Tile_Angles/Mean_Sun_Angle)."""
    for elem in tree.iter():
        if elem.tag.rsplit("}", 1)[-1] != "Mean_Sun_Angle":
            continue
        values = {child.tag.rsplit("}", 1)[-1]: child.text for child in elem}
        try:
            return float(values["AZIMUTH_ANGLE"]), float(values["ZENITH_ANGLE"])
        except (KeyError, TypeError, ValueError):
            return None
    return None


def _is_auxiliary(path: str, stem: str) -> bool:
    upper = stem.upper()
    parts = path.replace("\\", "/").upper().split("/")
    return "QI_DATA" in parts or upper.startswith("MSK_") or any(t in upper.split("_") for t in _AUX_TOKENS)


def _other_collection(path: str, collection: str) -> bool:
    """True for files of a SAFE product of the other level (both may sit under one folder)."""
    other = "MSIL2A" if collection == "L1C" else "MSIL1C"
    return other in path.upper()


def _safe_root(path: str) -> str | None:
    parts = path.replace("\\", "/").split("/")
    for i in range(len(parts) - 1, -1, -1):
        if parts[i].upper().endswith(".SAFE"):
            return "/".join(parts[: i + 1])
    return None


def _s3_gdal_options(storage_options: dict) -> tuple[dict, dict]:
    """GDAL config options and rasterio AWSSession arguments equivalent to s3fs storage_options."""
    client_kwargs = storage_options.get("client_kwargs") or {}
    endpoint = (
        storage_options.get("endpoint_url")
        or client_kwargs.get("endpoint_url")
        or os.environ.get("AWS_ENDPOINT_URL_S3")
        or os.environ.get("AWS_ENDPOINT_URL")
    )
    # Without READDIR disabled GDAL lists the folder of every file it opens: one more request each.
    options = {"GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR", "GDAL_HTTP_MAX_RETRY": "3", "GDAL_HTTP_RETRY_DELAY": "1"}
    # The same budget as s3fs's (lcms.store.s3_storage_options): a stalled endpoint fails the read, not hangs it.
    config = storage_options.get("config_kwargs") or {}
    # (A read that moves under 1 byte/s for read_timeout seconds is a stall; a slow one goes on.)
    for key, option in (("connect_timeout", "GDAL_HTTP_CONNECTTIMEOUT"), ("read_timeout", "GDAL_HTTP_LOW_SPEED_TIME")):
        if config.get(key) and option not in os.environ:
            options[option] = str(math.ceil(float(config[key])))
    if "GDAL_HTTP_LOW_SPEED_TIME" in options and "GDAL_HTTP_LOW_SPEED_LIMIT" not in os.environ:
        options["GDAL_HTTP_LOW_SPEED_LIMIT"] = "1"
    if endpoint:
        url = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
        # GDAL wants host:port, and path-style URLs for anything but AWS itself (moto, MinIO).
        options["AWS_S3_ENDPOINT"] = url.netloc + url.path.rstrip("/")
        options["AWS_HTTPS"] = "NO" if url.scheme == "http" else "YES"
        options["AWS_VIRTUAL_HOSTING"] = "FALSE"
    session = {
        "aws_unsigned": bool(storage_options.get("anon", False)),
        "requester_pays": bool(storage_options.get("requester_pays", False)),
        "region_name": client_kwargs.get("region_name") or storage_options.get("region_name"),
        "profile_name": storage_options.get("profile"),
    }
    return options, session


# --------------------------------------------------------------------------- the source


class FileSource:
    """Sentinel-2 scenes from a folder of files (local or S3); see the module docstring."""

    def __init__(self, cfg: FileSourceConfig, storage_options: dict | None = None):
        self.cfg = cfg
        self.storage_options = s3_storage_options(cfg.path, storage_options)  # S3 timeouts and retries
        self.band_names: tuple[str, ...] = L1C_BANDS if cfg.collection == "L1C" else L2A_BANDS
        #: What `read_layers` can add to the bands.
        self.layers: tuple[str, ...] = ("sun", "SCL") if cfg.collection == "L2A" else ("sun",)
        self.is_s3 = cfg.path.startswith("s3://")
        self._resampling = _RESAMPLING[cfg.resampling]
        self._lock = threading.Lock()
        self._scenes: list[_Scene] | None = None
        self._aws_session = None

    # Dask ships sources to workers: drop the lock and the index, which are rebuilt there.
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.update(_lock=None, _scenes=None, _aws_session=None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    # ----------------------------------------------------------------- public API

    def acquisition_dates(self, grid: PixelGrid, year: int) -> np.ndarray:
        in_grid = self._overlap_test(grid)
        scenes = [s for s in self._index() if s.time.astype(object).year == year and in_grid(s)]
        self._check_complete(scenes)
        first_of_day: dict[np.datetime64, np.datetime64] = {}
        for scene in scenes:
            day = scene.time.astype("datetime64[D]")
            first_of_day[day] = min(first_of_day.get(day, scene.time), scene.time)
        return np.array(sorted(first_of_day.values()), dtype="datetime64[s]")

    def read(self, grid: PixelGrid, dates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        bands, data_mask, _ = self.read_layers(grid, dates, ())
        return bands, data_mask

    def read_layers(self, grid: PixelGrid, dates: np.ndarray, layers=()) -> tuple[np.ndarray, np.ndarray, dict]:
        """`read`, plus the requested `layers` (see the module docstring): "SCL" uint8 (t, y, x),
        "sun" float64 (t, 2) azimuth and zenith in degrees, NaN where the scenes do not say."""
        unknown = set(layers) - set(self.layers)
        if unknown:
            raise PermanentSourceError(f"{self.cfg.collection} scene files have no layers {sorted(unknown)}")
        dates = np.asarray(dates, dtype="datetime64[s]").reshape(-1)
        bands = np.zeros((len(dates), *grid.shape, len(self.band_names)), dtype=np.uint16)
        data_mask = np.zeros((len(dates), *grid.shape), dtype=bool)
        scl = np.zeros((len(dates), *grid.shape), np.uint8) if "SCL" in layers else None
        sun = np.full((len(dates), 2), np.nan)
        by_day: dict[np.datetime64, list[_Scene]] = defaultdict(list)
        for scene in self._index():
            by_day[scene.time.astype("datetime64[D]")].append(scene)
        in_grid = self._overlap_test(grid)
        with self._env():
            for t, date in enumerate(dates):
                scenes = [s for s in by_day.get(date.astype("datetime64[D]"), []) if in_grid(s)]
                self._check_complete(scenes, scl=scl is not None)
                angles, weights = [], []
                for scene in sorted(scenes, key=lambda s: (s.time, s.name)):
                    values, valid = self._read_scene(scene, grid)
                    take = valid & ~data_mask[t]  # first valid pixel wins
                    bands[t][take] = values[take]
                    data_mask[t] |= take
                    if scl is not None and take.any():
                        scl[t][take] = self._read_scl(scene, grid)[take]
                    if scene.sun is not None and take.any():
                        angles.append(scene.sun)
                        weights.append(np.count_nonzero(take))
                    if data_mask[t].all():
                        break
                if angles:
                    sun[t] = _mean_angles(np.array(angles), np.array(weights, np.float64))
        extra: dict[str, np.ndarray] = {}
        if scl is not None:
            extra["SCL"] = scl
        if "sun" in layers:
            extra["sun"] = sun
        return bands, data_mask, extra

    # ----------------------------------------------------------------- GDAL environment

    def _env(self) -> rasterio.Env:
        if not self.is_s3:
            return rasterio.Env()
        options, session_args = _s3_gdal_options(self.storage_options)
        if self._aws_session is None:
            from rasterio.session import AWSSession

            self._aws_session = AWSSession(**session_args)
        return rasterio.Env(session=self._aws_session, **options)

    def _open(self, path: str):
        try:
            return rasterio.open(path)
        except RasterioError as exc:
            raise _read_error(
                f"{path} is not a readable raster ({exc}); re-download or remove it from {self.cfg.path}", exc
            ) from exc

    # ----------------------------------------------------------------- index

    def _index(self) -> list[_Scene]:
        with self._lock:
            if self._scenes is None:
                self._scenes = self._scan()
            return self._scenes

    def _list_files(self) -> tuple[fsspec.AbstractFileSystem, str, list[str]]:
        try:
            fs, root = fsspec.core.url_to_fs(self.cfg.path, **self.storage_options)
            found = fs.find(root) if fs.isdir(root) else []
        except (OSError, ValueError) as exc:
            # A wrong path or bad options stay wrong; other I/O errors (network) may pass.
            permanent = isinstance(exc, FileNotFoundError | PermissionError | ValueError)
            raise (PermanentSourceError if permanent else TransientSourceError)(
                f"cannot list scene folder {self.cfg.path}: {exc}; check source.path, the storage options "
                "and the credentials in the environment"
            ) from exc
        return fs, root, sorted(found)

    def _scan(self) -> list[_Scene]:
        fs, root, files = self._list_files()
        # Only the part below the configured folder may say MSIL1C/MSIL2A: the folder's own name is the user's.
        rasters = [
            p
            for p in files
            if p.lower().endswith(RASTER_EXTENSIONS) and not _other_collection(p[len(root) :], self.cfg.collection)
        ]
        per_band, multi_band, scl_files = [], [], []
        for path in rasters:
            stem = path.rsplit("/", 1)[-1].rsplit(".", 1)[0]
            if self.cfg.collection == "L2A" and _SCL_TOKEN.search(stem.upper()) and "QI_DATA" not in path.upper():
                scl_files.append((path, stem))
                continue
            if _is_auxiliary(path, stem):
                continue
            match = _BAND_TOKEN.search(stem.upper())
            if match:
                per_band.append((path, stem, _band_name(match.group(1))))
            elif not path.lower().endswith(".jp2"):  # stray .jp2 without a band token: SAFE extras
                multi_band.append((path, stem))
        if not per_band and not multi_band:
            raise PermanentSourceError(
                f"no Sentinel-2 scenes under {self.cfg.path}: expected per-band files such as "
                "T33TVM_20230415T100031_B04.jp2 or multi-band GeoTIFFs (.tif); check source.path"
            )

        def header(path):
            full = f"s3://{path}" if self.is_s3 else path
            with self._env(), self._open(full) as src:
                raster = _Raster(
                    full, src.crs.to_wkt() if src.crs else "", tuple(src.transform), *src.shape[::-1], src.nodata
                )
                band_tags = [src.tags(i) for i in range(1, src.count + 1)]
                return raster, src.count, src.descriptions, src.tags(), band_tags

        # Headers are latency-bound on S3: read them concurrently.
        paths = [p for p, *_ in per_band] + [p for p, _ in multi_band] + [p for p, _ in scl_files]
        with ThreadPoolExecutor(max_workers=8 if self.is_s3 else 2) as pool:
            headers = dict(zip(paths, pool.map(header, paths), strict=True))
        for path, (raster, *_) in headers.items():
            if not raster.crs:
                raise PermanentSourceError(
                    f"{path} has no CRS; write the scene with its georeferencing (e.g. EPSG:326xx)"
                )

        scenes = self._per_band_scenes(fs, per_band, headers, scl_files) + [
            self._multi_band_scene(path, stem, headers[path]) for path, stem in multi_band
        ]
        for scene in scenes:
            scene.missing = tuple(b for b in self.band_names if b not in scene.bands)
            scene.index_extents()
        log.info("indexed %d scenes under %s", len(scenes), self.cfg.path)
        return sorted(scenes, key=lambda s: (s.time, s.name))

    def _scene_date(self, path: str, stem: str, tags: dict) -> np.datetime64:
        date = _date_from_name(stem)
        if date is None:
            date = _date_from_tags(tags)
        if date is None:
            raise PermanentSourceError(
                f"{path} has no acquisition date: put it in the file name (e.g. _20230415T100031_) "
                "or in a TIFFTAG_DATETIME / ACQUISITION_DATE tag"
            )
        return date

    def _per_band_scenes(self, fs, per_band: list, headers: dict, scl_files: list = ()) -> list[_Scene]:
        groups: dict[tuple, list] = defaultdict(list)

        def key_of(path, stem):
            raster, _, _, tags, _ = headers[path]
            time = self._scene_date(raster.path, stem, tags)
            tile = _TILE_ID.search(stem.upper())
            folder = path.rsplit("/", 1)[0]
            if re.fullmatch(r"R\d{2}M", folder.rsplit("/", 1)[-1].upper()):  # L2A resolution folders
                folder = folder.rsplit("/", 1)[0]
            # The SAFE product is part of the key: two products of one granule (reprocessed with another
            # baseline) are two scenes, never a mix of their bands and offsets.
            return (f"T{tile.group(1)}" if tile else folder, time, _safe_root(path) or ""), raster, folder

        for path, stem, band in per_band:
            key, raster, folder = key_of(path, stem)
            groups[key].append((path, band, raster, folder))
        scl_of: dict[tuple, list] = defaultdict(list)
        for path, stem in scl_files:
            key, raster, _ = key_of(path, stem)
            scl_of[key].append(raster)
        scenes = []
        for key, members in groups.items():
            tile, time, _ = key
            folder = members[0][3]
            scene = _Scene(f"scene {tile} {time} in {'s3://' if self.is_s3 else ''}{folder}", time)
            # The finest file of each band wins (L2A has B02 at 10, 20 and 60 m).
            for _path, band, raster, _ in sorted(members, key=lambda m: (m[2].pixel_size, m[0])):
                scene.bands.setdefault(band, (raster, 1))
            if scl_of.get(key):
                scene.scl = (min(scl_of[key], key=lambda r: (r.pixel_size, r.path)), 1)
            scene.offsets = self._safe_offsets(fs, members[0][0])
            scene.sun = self._granule_sun(fs, folder)
            scenes.append(scene)
        return scenes

    def _granule_sun(self, fs, img_folder: str) -> tuple[float, float] | None:
        """Mean sun angles from MTD_TL.xml beside a granule's IMG_DATA folder (None if absent)."""
        granule = img_folder.rsplit("/", 1)[0] if img_folder.upper().endswith("IMG_DATA") else img_folder
        try:
            with fs.open(f"{granule}/MTD_TL.xml", "rb") as f:
                return _sun_from_mtd_tl(ET.parse(f))
        except (FileNotFoundError, OSError, ET.ParseError):
            return None

    def _safe_offsets(self, fs, path: str) -> dict[str, float]:
        """Per-band DN offsets of the SAFE product holding `path` ({} before baseline 04.00)."""
        root = _safe_root(path)
        if root is None:
            return {}
        baseline = None
        for name in ("MTD_MSIL1C.xml", "MTD_MSIL2A.xml"):
            try:
                with fs.open(f"{root}/{name}", "rb") as f:
                    tree = ET.parse(f)
            except (FileNotFoundError, OSError, ET.ParseError):
                continue
            offsets = {}
            for elem in tree.iter():
                tag = elem.tag.rsplit("}", 1)[-1]
                if tag in _OFFSET_TAGS and elem.get("band_id") is not None:
                    offsets[L1C_BANDS[int(elem.get("band_id"))]] = float(elem.text)
                elif tag == "PROCESSING_BASELINE":
                    baseline = elem.text
            if offsets:
                return offsets
            break
        if baseline is None:
            match = _BASELINE_IN_NAME.search(root.rsplit("/", 1)[-1])
            baseline = f"{match.group(1)}.{match.group(2)}" if match else None
        return dict.fromkeys(L1C_BANDS, BASELINE_OFFSET_DN) if _baseline_at_least_4(baseline) else {}

    def _multi_band_scene(self, path: str, stem: str, header) -> _Scene:
        raster, count, descriptions, tags, band_tags = header
        names = self._multi_band_names(raster.path, count, descriptions)
        scene = _Scene(f"scene {raster.path}", self._scene_date(raster.path, stem, tags))
        scene.sun = _sun_from_tags(tags)
        dataset_offset = _float_tag(tags, _OFFSET_TAGS)
        if dataset_offset is None and _baseline_at_least_4(tags.get("PROCESSING_BASELINE")):
            dataset_offset = BASELINE_OFFSET_DN
        for index, name in enumerate(names, start=1):
            if name == "SCL" and self.cfg.collection == "L2A":
                scene.scl = (raster, index)
            if name in self.band_names:
                scene.bands.setdefault(name, (raster, index))
                offset = _float_tag(band_tags[index - 1], _OFFSET_TAGS)
                offset = dataset_offset if offset is None else offset
                if offset:
                    scene.offsets[name] = offset
        return scene

    def _multi_band_names(self, path: str, count: int, descriptions) -> list[str]:
        texts = [(d or "").strip().upper() for d in descriptions]
        parsed = [_BAND_DESCRIPTION.fullmatch(d) for d in texts]
        if all(m or d == "SCL" for m, d in zip(parsed, texts, strict=True)) and any(parsed):
            return [_band_name(m.group(1)) if m else "SCL" for m in parsed]
        if self.cfg.band_order is not None:
            if len(self.cfg.band_order) != count:
                raise PermanentSourceError(
                    f"{path} has {count} bands but source.band_order lists {len(self.cfg.band_order)}; "
                    "make band_order match the files"
                )
            return list(self.cfg.band_order)
        if count == len(self.band_names):
            return list(self.band_names)
        raise PermanentSourceError(
            f"{path} has {count} bands without band names (descriptions {list(descriptions)}), and "
            f"{self.cfg.collection} has {len(self.band_names)}: set source.band_order to the file's band order "
            "or write band descriptions such as 'B04'"
        )

    # ----------------------------------------------------------------- geometry

    def _overlap_test(self, grid: PixelGrid):
        """A function telling whether a scene's files overlap `grid` (touching edges do not count)."""
        grid_bounds: dict[str, tuple | None] = {}  # grid bounds in each CRS met, transformed once

        def bounds_in(crs: str):
            if crs not in grid_bounds:
                try:
                    grid_bounds[crs] = transform_bounds(grid.crs, crs, *grid.bounds, densify_pts=21)
                except Exception:  # grid not representable in that CRS: no overlap
                    grid_bounds[crs] = None
            return grid_bounds[crs]

        def overlaps(scene: _Scene) -> bool:
            for crs, (rminx, rminy, rmaxx, rmaxy) in scene.extents.items():
                b = bounds_in(crs)
                if b is not None and b[0] < rmaxx and rminx < b[2] and b[1] < rmaxy and rminy < b[3]:
                    return True
            return False

        return overlaps

    def _check_complete(self, scenes: list[_Scene], scl: bool = False) -> None:
        for scene in scenes:
            if scene.missing:
                raise PermanentSourceError(
                    f"{scene.name} lacks bands {', '.join(scene.missing)} of {self.cfg.collection}: "
                    "add the missing band files, or remove the scene's files from the folder"
                )
            if scl and scene.scl is None:
                raise PermanentSourceError(
                    f"{scene.name} has no scene classification (SCL) file, which download.cloud_mask.method: scl "
                    "needs: add the granule's *_SCL_20m.jp2, or choose another cloud_mask.method"
                )

    # ----------------------------------------------------------------- pixels

    def _read_scene(self, scene: _Scene, grid: PixelGrid) -> tuple[np.ndarray, np.ndarray]:
        """DN (y, x, b) as uint16 and the mask of pixels where every band has data."""
        values = np.full((*grid.shape, len(self.band_names)), np.nan, dtype=np.float32)
        by_file: dict[int, list[tuple[int, _Raster, int]]] = defaultdict(list)
        for b, name in enumerate(self.band_names):
            raster, index = scene.bands[name]
            by_file[id(raster)].append((b, raster, index))
        for members in by_file.values():
            raster = members[0][1]
            values[..., [b for b, *_ in members]] = np.moveaxis(
                self._read_file(raster, [i for *_, i in members], grid), 0, -1
            )
        valid = np.isfinite(values).all(axis=-1)
        for b, name in enumerate(self.band_names):
            if scene.offsets.get(name):
                values[..., b] += scene.offsets[name]
        # Clip to 1: with the baseline offset removed a dark pixel could become 0, i.e. "no data".
        dn = np.where(valid[..., None], np.clip(np.rint(values), 1, 65535), 0).astype(np.uint16)
        return dn, valid

    def _read_scl(self, scene: _Scene, grid: PixelGrid) -> np.ndarray:
        """The scene's classification on `grid` (nearest: classes are not averaged), uint8, 0 = none."""
        raster, index = scene.scl
        values = self._read_file(raster, [index], grid, Resampling.nearest)[0]
        return np.where(np.isfinite(values), values, 0).astype(np.uint8)

    def _read_file(self, raster: _Raster, indexes: list[int], grid: PixelGrid, resampling=None) -> np.ndarray:
        """Bands `indexes` of one file on `grid`, float32 (b, y, x), NaN where there is no data."""
        out = np.full((len(indexes), *grid.shape), np.nan, dtype=np.float32)
        try:
            with self._open(raster.path) as src:
                aligned = self._aligned_offset(src, grid)
                if aligned is not None:
                    self._copy_aligned(src, indexes, aligned, out)
                else:
                    self._warp(src, indexes, grid, out, self._resampling if resampling is None else resampling)
        except RasterioError as exc:
            raise _read_error(
                f"{raster.path} could not be read ({exc}); it may be truncated or corrupt: re-download it", exc
            ) from exc
        return out

    @staticmethod
    def _nan_nodata(data: np.ndarray, nodata: float | None) -> np.ndarray:
        invalid = data == 0
        if nodata is not None:
            invalid |= np.isnan(data) if math.isnan(nodata) else data == nodata
        data[invalid] = np.nan
        return data

    def _aligned_offset(self, src, grid: PixelGrid) -> tuple[int, int] | None:
        """(row, col) of the grid's corner in the file when both share CRS, pixel size and alignment."""
        t, g = src.transform, grid.affine
        if src.crs != CRS.from_user_input(grid.crs) or t.b or t.d:
            return None
        if not (math.isclose(t.a, g.a, rel_tol=1e-9) and math.isclose(t.e, g.e, rel_tol=1e-9)):
            return None
        col, row = (g.c - t.c) / t.a, (g.f - t.f) / t.e
        if abs(col - round(col)) > 1e-6 or abs(row - round(row)) > 1e-6:
            return None
        return round(row), round(col)

    def _copy_aligned(self, src, indexes: list[int], offset: tuple[int, int], out: np.ndarray) -> None:
        # A plain window copy: exact values, and only the overlapping pixels are read.
        row, col = offset
        r0, c0 = max(row, 0), max(col, 0)
        r1, c1 = min(row + out.shape[1], src.height), min(col + out.shape[2], src.width)
        if r0 >= r1 or c0 >= c1:
            return
        data = src.read(indexes, window=Window(c0, r0, c1 - c0, r1 - r0), out_dtype=np.float32)
        out[:, r0 - row : r1 - row, c0 - col : c1 - col] = self._nan_nodata(data, src.nodata)

    def _warp(self, src, indexes: list[int], grid: PixelGrid, out: np.ndarray, resampling) -> None:
        try:
            bounds = transform_bounds(grid.crs, src.crs, *grid.bounds, densify_pts=21)
        except Exception:
            return
        window = from_bounds(*bounds, transform=src.transform)
        # Pad by the resampling kernel (a few source pixels, more when downsampling) so that
        # block edges come out as if the whole file had been warped.
        ratio = max(window.width / grid.width, window.height / grid.height, 1.0)
        pad = 3 + math.ceil(ratio)
        c0, r0 = max(math.floor(window.col_off) - pad, 0), max(math.floor(window.row_off) - pad, 0)
        c1 = min(math.ceil(window.col_off + window.width) + pad, src.width)
        r1 = min(math.ceil(window.row_off + window.height) + pad, src.height)
        if c0 >= c1 or r0 >= r1:
            return
        read_window = Window(c0, r0, c1 - c0, r1 - r0)
        data = self._nan_nodata(src.read(indexes, window=read_window, out_dtype=np.float32), src.nodata)
        reproject(
            data,
            out,
            src_transform=src.window_transform(read_window),
            src_crs=src.crs,
            src_nodata=np.nan,
            dst_transform=grid.affine,
            dst_crs=grid.crs,
            dst_nodata=np.nan,
            resampling=resampling,
        )


def _mean_angles(angles: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted mean (azimuth, zenith) of (n, 2) degrees; the azimuth as a mean direction."""
    az = np.deg2rad(angles[:, 0])
    azimuth = np.rad2deg(np.arctan2((weights * np.sin(az)).sum(), (weights * np.cos(az)).sum())) % 360.0
    return np.array([azimuth, float((weights * angles[:, 1]).sum() / weights.sum())])
