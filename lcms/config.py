"""Typed configuration: one pydantic model per stage, and the run-level model that holds them.

The same models serve the CLI (YAML files), the Prefect deployments (their parameter
forms) and the tests. Every model forbids unknown fields, so a typo fails before any
work starts, with a message that names the field.

Relative paths in a config file are resolved against the folder of that file, so a
config means the same thing whatever directory it is run from.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pyproj import CRS
from pyproj.exceptions import CRSError


class ConfigError(ValueError):
    """A config that cannot be used; the message names the file and the offending fields."""


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_crs(value: str) -> str:
    try:
        CRS.from_user_input(value)
    except CRSError as exc:
        raise ValueError(f"{value!r} is not a CRS pyproj knows (use e.g. 'EPSG:4326')") from exc
    return value


def _resolve_path(value: str | None, info: ValidationInfo) -> str | None:
    """Make a relative local path absolute against the config file's folder."""
    if value is None or "://" in value:
        return value
    base_dir = (info.context or {}).get("base_dir")
    path = Path(value).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = Path(base_dir) / path
    return str(path.resolve()) if base_dir is not None or path.is_absolute() else value


# --------------------------------------------------------------------------- run level


class AoiConfig(StrictModel):
    """The area of interest: a vector file (GeoJSON, GeoPackage, Shapefile) or a bounding box."""

    path: str | None = Field(None, description="Vector file with the AOI polygon(s), in any CRS.")
    layer: str | None = Field(None, description="Layer of a multi-layer file such as a GeoPackage.")
    assume_crs: str | None = Field(None, description="CRS to assume when the file has none.")
    bbox: tuple[float, float, float, float] | None = Field(
        None,
        description="minx, miny, maxx, maxy in bbox_crs, instead of a file. In degrees, minx > maxx is a box "
        "across 180° (e.g. [179, -17, -179, -16]), as in GeoJSON and STAC.",
    )
    bbox_crs: str = Field("EPSG:4326", description="CRS of bbox.")

    _resolve = field_validator("path")(_resolve_path)

    @field_validator("assume_crs", "bbox_crs")
    @classmethod
    def _valid_crs(cls, value: str | None) -> str | None:
        return None if value is None else _check_crs(value)

    @field_validator("bbox")
    @classmethod
    def _ordered_bbox(cls, value: tuple[float, float, float, float] | None):
        from lcms.geometry import bbox_problem

        # Checks that hold in any CRS; the ones that depend on bbox_crs follow in _bbox_in_its_crs.
        problem = None if value is None else bbox_problem(value, geographic=None)
        if problem is not None:
            raise ValueError(f"bbox {problem}")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> AoiConfig:
        if (self.path is None) == (self.bbox is None):
            raise ValueError("give exactly one of aoi.path (a vector file) or aoi.bbox")
        return self

    @model_validator(mode="after")
    def _bbox_in_its_crs(self) -> AoiConfig:
        """In degrees, minx > maxx is a box across 180° (as in GeoJSON and STAC); elsewhere minx < maxx."""
        from lcms.geometry import bbox_problem

        if self.bbox is not None:
            problem = bbox_problem(self.bbox, geographic=CRS.from_user_input(self.bbox_crs).is_geographic)
            if problem is not None:
                raise ValueError(f"bbox {problem}")
        return self


class GridConfig(StrictModel):
    """How the AOI is split into tiles: square tiles in the UTM zone of each tile."""

    tile_size_m: float = Field(10_000.0, gt=0, description="Side of a tile's core, in metres.")
    resolution_m: float = Field(10.0, gt=0, description="Pixel size in metres.")
    buffer_m: float = Field(
        100.0, ge=0, description="Overlap added around each tile's core, so that tiles can be processed alone."
    )
    origin_m: tuple[float, float] = Field(
        (0.0, 0.0), description="Easting and northing that tile corners are aligned to, in every zone."
    )

    @model_validator(mode="after")
    def _whole_pixels(self) -> GridConfig:
        for name in ("tile_size_m", "buffer_m"):
            pixels = getattr(self, name) / self.resolution_m
            if abs(pixels - round(pixels)) > 1e-9:
                raise ValueError(
                    f"{name} ({getattr(self, name)}) must be a whole number of {self.resolution_m} m pixels"
                )
        return self

    @property
    def tile_size_px(self) -> int:
        return round(self.tile_size_m / self.resolution_m)

    @property
    def buffer_px(self) -> int:
        return round(self.buffer_m / self.resolution_m)


class StoreConfig(StrictModel):
    """Where tile arrays live: a local folder (the default) or s3://bucket/prefix."""

    url: str = Field("lcms-store", description="Local folder or s3://bucket/prefix.")
    storage_options: dict[str, Any] = Field(
        default_factory=dict,
        description="Passed to fsspec/s3fs, e.g. {endpoint_url: ...}. Credentials come from the environment.",
    )

    on_busy: Literal["wait", "skip"] = Field(
        "wait",
        description="When another run is writing the same output: wait for it (then skip the tile if it made "
        "it with the same parameters), or skip the tile at once.",
    )
    busy_wait_seconds: float = Field(3600.0, ge=0, description="How long to wait for another run's writer.")
    lease_seconds: float = Field(
        300.0, gt=0, description="How long a writer's lease lasts unless renewed (writers renew theirs as they go)."
    )

    _resolve = field_validator("url")(_resolve_path)

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        if "://" in value and not value.startswith(("s3://", "file://")):
            raise ValueError(f"store URL {value!r} must be a local folder or s3://bucket/prefix")
        return value

    @field_validator("storage_options")
    @classmethod
    def _no_secrets(cls, value: dict[str, Any]) -> dict[str, Any]:
        secret_keys = {"key", "secret", "token", "aws_access_key_id", "aws_secret_access_key", "aws_session_token"}
        found = secret_keys & {k.lower() for k in value}
        if found:
            raise ValueError(
                f"credentials {sorted(found)} must not be written in configs; set AWS_ACCESS_KEY_ID / "
                "AWS_SECRET_ACCESS_KEY in the environment or use a Prefect AWS credentials block"
            )
        return value


class LocalClusterConfig(StrictModel):
    """A Dask LocalCluster on this machine (the default)."""

    kind: Literal["local"] = "local"
    n_workers: int = Field(2, ge=1)
    threads_per_worker: int = Field(1, ge=1)
    processes: bool = Field(
        False, description="Worker processes instead of threads; threads start in seconds and numpy releases the GIL."
    )
    memory_limit: str = Field("auto", description="Per worker, e.g. '4GiB'.")


class EC2ClusterConfig(StrictModel):
    """A Dask cluster on EC2 instances (dask-cloudprovider), for countries that outgrow one machine."""

    kind: Literal["ec2"]
    region: str = "eu-central-1"
    instance_type: str = "m6i.xlarge"
    scheduler_instance_type: str = "m6i.large"
    n_workers: int = Field(4, ge=0)
    adaptive_min: int | None = Field(None, ge=0, description="With adaptive_max: scale between these worker counts.")
    adaptive_max: int | None = Field(None, ge=1)
    docker_image: str = Field("lcms:latest", description="Image run by the scheduler and workers (docker/Dockerfile).")
    ami: str | None = Field(None, description="AMI with Docker; dask-cloudprovider picks a recent one when unset.")
    security_groups: list[str] = Field(
        default_factory=list, description="Both the scheduler's and the workers' groups (infra/ stack outputs)."
    )
    subnet_id: str | None = None
    vpc: str | None = Field(None, description="VPC id; without it dask-cloudprovider looks for the default VPC.")
    use_private_ip: bool = Field(
        True, description="Reach the scheduler on its private address (the security groups admit by group)."
    )
    iam_instance_profile: str | None = Field(None, description="Instance profile name that grants bucket access.")

    @model_validator(mode="after")
    def _adaptive_pair(self) -> EC2ClusterConfig:
        if (self.adaptive_min is None) != (self.adaptive_max is None):
            raise ValueError("set both adaptive_min and adaptive_max, or neither")
        if self.adaptive_min is not None and self.adaptive_min > self.adaptive_max:
            raise ValueError("adaptive_min must not exceed adaptive_max")
        return self


class SchedulerClusterConfig(StrictModel):
    """A Dask scheduler that is already running, with its workers (`dask scheduler` and `dask worker`
    processes on other machines): the flow only connects to it, and starts and stops nothing."""

    kind: Literal["scheduler"]
    scheduler_address: str = Field(
        ..., description="The scheduler's address, e.g. tcp://10.0.1.5:8786 (`lcms ... --scheduler-address` too)."
    )
    n_workers: int = Field(1, ge=1, description="How many workers it has: only `lcms estimate` uses it.")
    threads_per_worker: int = Field(1, ge=1, description="Threads of each worker: only `lcms estimate` uses it.")

    @field_validator("scheduler_address")
    @classmethod
    def _address_with_port(cls, value: str) -> str:
        scheme, _, rest = value.partition("://")
        host, _, port = rest.rpartition(":")
        if scheme not in ("tcp", "tls", "ucx", "ws", "wss") or not host or not port.isdigit():
            raise ValueError("must be PROTOCOL://HOST:PORT, e.g. tcp://10.0.1.5:8786 (what `dask scheduler` prints)")
        return value


ClusterConfig = Annotated[LocalClusterConfig | EC2ClusterConfig | SchedulerClusterConfig, Field(discriminator="kind")]


# --------------------------------------------------------------------------- stages


class SyntheticSourceConfig(StrictModel):
    """Realistic synthetic Sentinel-2 tiles (tasks/download/synthetic.py); needs no credentials.

    L2A is the same rendering without B10, with a Sen2Cor-like scene classification layer.
    """

    kind: Literal["synthetic"] = "synthetic"
    collection: Literal["L1C", "L2A"] = "L1C"
    seed: int = 0
    first_year: int = Field(2023, description="Year of the base land-cover map; later years get planted changes.")
    dates_per_year: int = Field(48, ge=1, le=365)
    cloud_cover: float = Field(0.3, ge=0, le=1)
    swath_edge_fraction: float = Field(0.15, ge=0, le=1)
    change_fraction: float = Field(0.03, ge=0, le=0.5)
    patch_size_m: float = Field(500.0, gt=0)


class SentinelHubSourceConfig(StrictModel):
    """Sentinel-2 from Sentinel Hub's Catalog and Process APIs (sentinelhub-py).

    Credentials are read from the environment (SH_CLIENT_ID, SH_CLIENT_SECRET) or from
    Prefect Secret blocks named here; never from the config file.
    """

    kind: Literal["sentinelhub"]
    collection: Literal["L1C", "L2A"] = "L1C"
    service: Literal["sentinel-hub", "cdse"] = Field(
        "sentinel-hub", description="services.sentinel-hub.com, or the Copernicus Data Space Ecosystem."
    )
    base_url: str | None = Field(None, description="Override the service's API URL (e.g. a proxy).")
    token_url: str | None = Field(None, description="Override the service's OAuth token URL.")
    max_cloud_cover: float = Field(1.0, ge=0, le=1, description="Catalog filter on scene cloud cover, 0..1.")
    time_difference_minutes: float = Field(
        120.0, ge=0, description="Acquisitions closer than this are merged into one date (same-day tiles)."
    )
    max_concurrent_requests: int = Field(4, ge=1, le=32)
    max_retries: int = Field(5, ge=0, le=20, description="Retries on 429, 5xx and timeouts, with backoff.")
    request_timeout_s: float = Field(120.0, gt=0)
    client_id_block: str | None = Field(None, description="Prefect Secret block holding the OAuth client id.")
    client_secret_block: str | None = Field(None, description="Prefect Secret block holding the client secret.")


class FileSourceConfig(StrictModel):
    """Sentinel-2 scenes already on disk or S3: per-band files (SAFE IMG_DATA) or multi-band GeoTIFFs."""

    kind: Literal["files"]
    path: str = Field(..., description="Folder (local or s3://) searched recursively for scenes.")
    collection: Literal["L1C", "L2A"] = "L1C"
    band_order: list[str] | None = Field(
        None, description="Band names of multi-band files, in file order, when the files do not name them."
    )
    resampling: Literal["nearest", "bilinear", "cubic", "average"] = Field(
        "bilinear", description="Resampling onto the tile grid (20 m and 60 m bands, other CRSs)."
    )

    _resolve = field_validator("path")(_resolve_path)


def _source_kind(value: Any) -> str | None:
    # A source section without `kind` means the synthetic default.
    if isinstance(value, dict):
        return value.get("kind", "synthetic")
    return getattr(value, "kind", None)


SourceConfig = Annotated[
    Annotated[SyntheticSourceConfig, Tag("synthetic")]
    | Annotated[SentinelHubSourceConfig, Tag("sentinelhub")]
    | Annotated[FileSourceConfig, Tag("files")],
    Discriminator(
        _source_kind,
        custom_error_type="unknown_source",
        custom_error_message="source.kind must be one of 'synthetic', 'sentinelhub', 'files'",
    ),
]


class CloudMaskConfig(StrictModel):
    """Cloud and cloud-shadow masks (tasks/download/cloud_mask.py, shadow.py).

    `method`: `s2cloudless` (L1C: the s2cloudless model on the bands), `scl` (L2A: the scene
    classification layer), `sentinelhub` (Sentinel Hub's CLM/CLP bands, its own s2cloudless at
    160 m), `none` (valid = data). Unset: `scl` for L2A, `s2cloudless` for L1C.

    s2cloudless: `average_over` and `dilation_size` are in pixels at 10 m, as in eo-learn's
    CloudMaskTask. The model runs on cells of `analysis_resolution_m` aligned to the CRS's
    lattice, then again at `refine_resolution_m` on the cells it is unsure of (cloud edges,
    uncertain probabilities, small bright clouds); see the README's measured table.

    Shadows (`shadows`): for s2cloudless and sentinelhub the cloud mask is projected away from
    the sun over `shadow_cloud_heights_m` and matched to pixels darker than `shadow_darkness`
    times their clear-sky NIR and SWIR (with `tile_edge_context`, clouds in a margin beyond the tile
    too); for scl they are the layer's cloud-shadow class.
    `valid_mask` = data and not cloud and (with `shadows`) not shadow.
    """

    method: Literal["s2cloudless", "scl", "sentinelhub", "none"] | None = Field(
        None,
        description="s2cloudless (L1C), scl (L2A scene classification), sentinelhub (its CLM/CLP bands) or none; "
        "unset: scl for L2A, s2cloudless for L1C.",
    )
    threshold: float = Field(0.4, gt=0, lt=1)
    average_over: int = Field(4, ge=0)
    dilation_size: int = Field(2, ge=0)
    analysis_resolution_m: float = Field(160.0, gt=0, description="10 = full resolution.")
    refine_resolution_m: float | None = Field(
        40.0,
        gt=0,
        description="Where the coarse pass is uncertain (cloud edges), run the model again at this finer "
        "resolution (10 = full); null: no refinement.",
    )
    refine_probability: tuple[float, float] = Field(
        (0.2, 0.6), description="Coarse probabilities between these are uncertain: refined."
    )
    refine_bright: float = Field(
        0.2, gt=0, description="A coarse clear cell with a pixel brighter than this in B02 (reflectance) is refined."
    )
    shadows: bool = Field(True, description="Mask cloud shadows: valid = data and not cloud and not shadow.")
    shadow_cloud_heights_m: tuple[float, float] = Field(
        (200.0, 5000.0), description="Cloud heights searched when projecting clouds onto their shadows."
    )
    shadow_darkness: float = Field(
        0.7,
        gt=0,
        lt=1,
        description="Shadow: NIR and SWIR below this fraction of the pixel's clear-sky reference (the brighter "
        "of its nearest clear dates before and after).",
    )
    shadow_cell_m: float = Field(40.0, gt=0, description="Cell size of the cloud-to-shadow projection.")
    scl_snow: bool = Field(False, description="scl: count snow (class 11) as invalid too.")
    tile_edge_context: bool = Field(
        True,
        description="Read the detector's context beyond each tile's edges from the source, so that overlapping "
        "tiles get identical cloud masks (on Sentinel Hub: up to two more requests per edge block and date); and, "
        "with shadows, a coarse (160 m) cloud mask of a margin beyond the edges towards the sun, so that clouds "
        "outside the tile cast their shadows into it (one more request per tile).",
    )

    @model_validator(mode="after")
    def _ordered_ranges(self) -> CloudMaskConfig:
        lo, hi = self.refine_probability
        if not 0 <= lo <= hi <= 1:
            raise ValueError(f"refine_probability ({lo}, {hi}) must be two probabilities, low then high")
        h_min, h_max = self.shadow_cloud_heights_m
        if not 0 <= h_min <= h_max:
            raise ValueError(f"shadow_cloud_heights_m ({h_min}, {h_max}) must be two heights, low then high")
        return self


class DownloadConfig(StrictModel):
    """Stage 1: fill the store with bands and masks for every tile and year.

    `block_size` is a multiple of the store's 256-pixel chunks, so each block writes whole chunks.
    """

    source: SourceConfig = Field(default_factory=SyntheticSourceConfig)
    cloud_mask: CloudMaskConfig = Field(default_factory=CloudMaskConfig)
    block_size: int = Field(
        512, ge=256, multiple_of=256, description="Tiles are produced and written in square blocks of this many pixels."
    )

    @model_validator(mode="before")
    @classmethod
    def _cloud_method_by_collection(cls, data: Any) -> Any:
        # An unset cloud_mask.method becomes scl for L2A sources, s2cloudless for L1C ones.
        if not isinstance(data, dict):
            return data
        source = data.get("source")
        if isinstance(source, dict):
            collection = source.get("collection", "L1C")
        else:
            collection = getattr(source, "collection", "L1C")
        method = "scl" if collection == "L2A" else "s2cloudless"
        clouds = data.get("cloud_mask")
        if clouds is None or isinstance(clouds, dict) and clouds.get("method") is None:
            return {**data, "cloud_mask": {**(clouds or {}), "method": method}}
        if isinstance(clouds, CloudMaskConfig) and clouds.method is None:
            return {**data, "cloud_mask": clouds.model_copy(update={"method": method})}
        return data


FEATURE_INDICES = ("NDVI", "NDWI", "NDBI", "TC_BRIGHTNESS", "TC_GREENNESS", "TC_WETNESS")
# tasks/features/phenology.py's statistics, in its order.
PHENOLOGY_STATS = (
    *("min", "max", "mean", "std", "p10", "p25", "p50", "p75", "p90", "amplitude"),
    *("peak_date", "start_date", "end_date", "season_length", "season_integral", "max_rise", "max_fall"),
)


class DateGridConfig(StrictModel):
    """The uniform dates that features are interpolated onto, the same for every tile of a year."""

    start: str = Field("01-01", pattern=r"^\d{2}-\d{2}$", description="First date, MM-DD, in each year.")
    end: str = Field("12-31", pattern=r"^\d{2}-\d{2}$", description="Last date (inclusive), MM-DD.")
    step_days: int = Field(16, ge=1, le=366)


class AuxiliaryRasterConfig(StrictModel):
    """A raster added as features, the same at every date (tasks/features/auxiliary.py): e.g. a composite
    of another year's bands, a soil or climate layer. Its bands become features ``{name}_{band}``, where
    band is the 1-based band index in the file (always the index, never the band's description, so the
    feature names are known without opening the file when `bands` is given)."""

    path: str = Field(..., min_length=1, description="Any raster GDAL reads: a local path, s3:// or https://; any CRS.")
    name: str = Field(
        ..., pattern=r"^[A-Za-z][A-Za-z0-9_]*$", description="Feature-name prefix: letters, digits, underscores."
    )
    bands: list[int] | None = Field(
        None, description="1-based band indexes to use; default: every band of the raster (read from the file)."
    )
    scale: float = Field(
        1.0,
        description="Values are multiplied by this before storage. Features are stored as int16 = value × 10000, "
        "so scaled values must lie within about ±3.27 (larger ones are clipped): e.g. 0.0001 for elevations "
        "in metres, 1.0 for reflectances in 0..1.",
    )
    resampling: Literal["bilinear", "nearest"] = Field(
        "bilinear", description="How the raster is resampled onto each tile's grid (nearest for classes)."
    )

    _resolve = field_validator("path")(_resolve_path)

    @model_validator(mode="after")
    def _valid_bands_and_scale(self) -> AuxiliaryRasterConfig:
        bands = self.bands
        if bands is not None and (not bands or min(bands) < 1 or len(set(bands)) != len(bands)):
            raise ValueError(f"auxiliary raster {self.name!r}: bands must be distinct indexes >= 1, got {self.bands}")
        if not math.isfinite(self.scale) or self.scale == 0:
            raise ValueError(f"auxiliary raster {self.name!r}: scale must be a finite non-zero number")
        return self

    @property
    def band_indexes(self) -> list[int]:
        """The 1-based bands used: `bands`, or every band of the raster (its header is read once)."""
        return list(self.bands) if self.bands is not None else list(range(1, _raster_band_count(self.path) + 1))

    @property
    def feature_names(self) -> list[str]:
        return [f"{self.name}_{band}" for band in self.band_indexes]


@functools.lru_cache(maxsize=64)
def _raster_band_count(path: str) -> int:
    import rasterio

    with rasterio.open(path) as src:
        return src.count


class FeaturesConfig(StrictModel):
    """Stage 2: cloudy-frame filter, spectral indices, temporal interpolation (or mosaics)."""

    min_valid_coverage: float = Field(
        0.8, ge=0, le=1, description="Frames with a smaller valid fraction are dropped (eo-learn example: 0.8)."
    )
    bands: list[str] = Field(
        default_factory=lambda: ["B02", "B03", "B04", "B08", "B11", "B12"],
        description="Bands kept as features, as reflectance.",
    )
    indices: list[Literal[FEATURE_INDICES]] = Field(default_factory=lambda: list(FEATURE_INDICES))
    method: Literal["interpolation", "median_mosaic", "max_ndvi_mosaic"] = Field(
        "interpolation", description="Linear interpolation onto the date grid, or a composite per period."
    )
    date_grid: DateGridConfig = Field(default_factory=DateGridConfig)
    dtype: Literal["int16", "float32"] = Field("int16", description="int16 stores value × 10000.")
    block_size: int = Field(256, ge=256, multiple_of=256)
    context_features: list[str] = Field(
        default_factory=list,
        description="Bands or indices whose neighbourhood mean and standard deviation are added as features, "
        "date by date (e.g. ['NDVI']); empty: none.",
    )
    context_sizes: list[int] = Field(
        default_factory=lambda: [3, 5], description="Neighbourhood window sides in pixels (odd, >= 3)."
    )
    context_stats: list[Literal["mean", "std"]] = Field(default_factory=lambda: ["mean", "std"])
    phenology_features: list[str] = Field(
        default_factory=list,
        description="Bands or indices whose yearly statistics (percentiles, amplitude, peak date, season start, "
        "end and integral, steepest rise and fall; tasks/features/phenology.py) are added as features "
        "{feature}_{stat}, the same at every date (e.g. ['NDVI']); empty: none.",
    )
    phenology_stats: list[Literal[PHENOLOGY_STATS]] = Field(
        default_factory=lambda: list(PHENOLOGY_STATS),
        description="The statistics of phenology_features (all of tasks/features/phenology.py's by default).",
    )
    dem_path: str | None = Field(
        None,
        description="Optional DEM raster (GeoTIFF; local, s3:// or https://; any CRS): adds ELEVATION_10KM "
        "(elevation / 10 km) and SLOPE (rise over run) as features, the same at every date.",
    )
    auxiliary_rasters: list[AuxiliaryRasterConfig] = Field(
        default_factory=list,
        description="Optional rasters whose bands are added as features {name}_{band} (1-based band index), "
        "resampled onto each tile and the same at every date (tasks/features/auxiliary.py); empty: none.",
    )

    @model_validator(mode="after")
    def _some_features(self) -> FeaturesConfig:
        if not self.bands and not self.indices:
            raise ValueError("features: give at least one band or index")
        if len(set(self.bands)) != len(self.bands) or len(set(self.indices)) != len(self.indices):
            raise ValueError("features: bands and indices must not repeat")
        unknown = [f for f in self.context_features if f not in self.feature_names]
        if unknown or len(set(self.context_features)) != len(self.context_features):
            raise ValueError(
                f"features.context_features must be distinct bands or indices of the run ({self.feature_names})"
            )
        if any(s < 3 or s % 2 == 0 for s in self.context_sizes) or len(set(self.context_sizes)) != len(
            self.context_sizes
        ):
            raise ValueError(f"features.context_sizes must be distinct odd sides >= 3, got {self.context_sizes}")
        if self.context_features and (not self.context_sizes or not self.context_stats):
            raise ValueError("features.context_features needs context_sizes and context_stats")
        unknown = [f for f in self.phenology_features if f not in self.feature_names]
        if unknown or len(set(self.phenology_features)) != len(self.phenology_features):
            raise ValueError(
                f"features.phenology_features must be distinct bands or indices of the run ({self.feature_names})"
            )
        if self.phenology_features and (
            not self.phenology_stats or len(set(self.phenology_stats)) != len(self.phenology_stats)
        ):
            raise ValueError("features.phenology_features needs distinct phenology_stats")
        names = [raster.name for raster in self.auxiliary_rasters]
        if len(set(names)) != len(names):
            raise ValueError(f"features.auxiliary_rasters: names must be distinct, got {names}")
        # Names whose bands are given are checked here; {name}_{index} cannot clash between rasters.
        known = {n for raster in self.auxiliary_rasters if raster.bands is not None for n in raster.feature_names}
        clash = sorted(known & set(self._stored_names_before_auxiliary()))
        if clash:
            raise ValueError(f"features.auxiliary_rasters: feature names {clash} clash with other features")
        return self

    @property
    def feature_names(self) -> list[str]:
        return [*self.bands, *self.indices]

    @property
    def stored_feature_names(self) -> list[str]:
        """The features stage's output features: bands, indices, spatial context, phenology, terrain, then the
        auxiliary rasters' bands (tasks/features/auxiliary.py)."""
        auxiliary = [n for raster in self.auxiliary_rasters for n in raster.feature_names]
        return [*self._stored_names_before_auxiliary(), *auxiliary]

    def _stored_names_before_auxiliary(self) -> list[str]:
        context = [
            f"{n}_{stat}{size}"
            for n in self.context_features
            for size in self.context_sizes
            for stat in self.context_stats
        ]
        phenology = [f"{n}_{stat}" for n in self.phenology_features for stat in self.phenology_stats]
        terrain = ["ELEVATION_10KM", "SLOPE"] if self.dem_path else []  # tasks/features/terrain.py
        return [*self.feature_names, *context, *phenology, *terrain]


class LegendEntryConfig(StrictModel):
    code: int = Field(..., ge=1, le=255)
    name: str = Field(..., min_length=1)
    color: str = Field("#808080", pattern=r"^#[0-9a-fA-F]{6}$")


class ReviewsDatabaseConfig(StrictModel):
    """The part of `serve` that says where `lcms serve` keeps the reviews (so a session setting never makes the
    reference stale)."""

    database: Literal["embedded", "postgis"] = "embedded"
    database_path: str | None = None
    postgis: PostgisConfig | None = None


class ReferenceConfig(StrictModel):
    """Stage 3: ground-truth polygons rasterised onto each tile's grid, with a negative buffer."""

    path: str | None = Field(
        None,
        description="GeoPackage, GeoJSON, Shapefile or GeoParquet, local or s3://, any CRS. May hold '{year}' "
        "for a reference per year (e.g. yearly crop declarations).",
    )
    paths: dict[int, str] | None = Field(None, description="Or one file per year, {year: path}, instead of path.")
    class_column: str = Field("LULC_ID", min_length=1)
    legend: list[LegendEntryConfig] | None = Field(
        None, description="Classes (code 1..255); default: eo-learn's LULC legend. 0 is always no data."
    )
    mapping: dict[str, int] | None = Field(
        None, description="Source values (names or numbers) → legend codes, e.g. crop names → crop codes."
    )
    erosion_px: int = Field(1, ge=0, description="Negative buffer: class borders eroded by this many pixels.")
    reviews: bool = Field(
        False,
        description="Also take operators' reviewed changes from `lcms serve`'s database (tasks/reference/reviews.py): "
        "a confirmed change labels its year_to with its class after, a corrected one with the corrected class "
        "(and outline), a rejected one with its class before. Reviews win over the base reference.",
    )
    active_labels: bool = Field(
        False,
        description='Also take the labelled units of active learning\'s "label next" queues of the product and '
        "year (`lcms label-next`; tasks/reference/labels.py): each unit is burnt with its operator's class over "
        "the base reference and the reviews, the latest label of a place winning.",
    )
    reviews_database: ReviewsDatabaseConfig | None = Field(
        None,
        description="Where the reviews are: filled from the run's `serve` section by the reference stage "
        "(lcms/stages.py); not written in configs.",
    )

    _resolve = field_validator("path")(_resolve_path)

    @field_validator("paths")
    @classmethod
    def _resolve_paths(cls, paths: dict[int, str] | None, info: ValidationInfo) -> dict[int, str] | None:
        return None if paths is None else {year: _resolve_path(path, info) for year, path in paths.items()}

    @model_validator(mode="after")
    def _one_path_source(self) -> ReferenceConfig:
        if self.path is not None and self.paths is not None:
            raise ValueError("give reference.path (optionally with '{year}') or reference.paths, not both")
        return self

    @property
    def is_set(self) -> bool:
        return self.path is not None or self.paths is not None

    def path_for(self, year: int) -> str:
        """The reference file of `year`."""
        if self.paths is not None:
            if year not in self.paths:
                raise ValueError(f"reference.paths has no file for {year}; it has {sorted(self.paths)}")
            return self.paths[year]
        if self.path is None:
            raise ValueError("reference.path is not set")
        return self.path.replace("{year}", str(year))

    def for_year(self, year: int) -> ReferenceConfig:
        """This config with the one file of `year` as its path (what a tile-year of the stage reads)."""
        return self.model_copy(update={"path": self.path_for(year), "paths": None})

    @field_validator("legend")
    @classmethod
    def _unique_codes(cls, legend):
        if legend is not None and len({e.code for e in legend}) != len(legend):
            raise ValueError("legend codes must not repeat")
        return legend


class SamplingConfig(StrictModel):
    """Stage 4: which labelled pixels of each tile become training samples.

    Give a `fraction` of the eligible pixels or a `count` per tile (a tile with fewer eligible
    pixels gives all it has). Eligible: labelled after the negative buffer, with at least one
    valid observation in the year, and inside the tile's core, so that neighbouring tiles'
    overlaps are never sampled twice. `stratified` samples each class on its own, up to
    `max_per_class`; the rules are in tasks/sampling/samples.py.
    """

    fraction: float | None = Field(None, gt=0, le=1, description="Share of the eligible pixels per tile.")
    count: int | None = Field(20_000, ge=1, description="Pixels per tile (default 20000); null to use fraction.")
    stratified: bool = Field(False, description="Sample each class separately (balanced by count).")
    max_per_class: int | None = Field(None, ge=1, description="Cap per class and tile (stratified only).")
    seed: int = Field(0, description="Each tile and year draws from its own stream derived from this seed.")

    @model_validator(mode="before")
    @classmethod
    def _fraction_replaces_count(cls, data: Any) -> Any:
        # `fraction: 0.1` alone means "instead of the default count".
        if isinstance(data, dict) and data.get("fraction") is not None and "count" not in data:
            return {**data, "count": None}
        return data

    @model_validator(mode="after")
    def _one_size(self) -> SamplingConfig:
        if (self.fraction is None) == (self.count is None):
            raise ValueError("sampling: give either fraction or count, not both")
        if self.max_per_class is not None and not self.stratified:
            raise ValueError("sampling.max_per_class applies to stratified sampling: set stratified: true")
        return self


class MergeConfig(StrictModel):
    """Stage 5: every tile's samples in one ML-ready dataset, split into train, validation and test.

    Splits keep space apart: whole tiles go to test (`tile`); with fewer than
    `min_tiles_for_tile_split` tiles, whole square blocks within tiles do (`blocks`); `halves`
    tests on the east half of every tile. Validation (for early stopping) is a share of all samples
    taken from what is not test. Samples of a tile or block go to the same split in every year.
    """

    years: list[int] | None = Field(None, description="Years whose samples are merged; default: all the run's years.")
    scope: Literal["all", "subset"] = Field(
        "all",
        description="'all': every sampled tile of the grid, whatever tiles a run selects (a subset rerun redoes "
        "those tiles' rows and keeps the rest); 'subset': only the selected tiles.",
    )
    split: Literal["auto", "tile", "blocks", "halves"] = "auto"
    test_fraction: float = Field(0.2, gt=0, lt=1, description="Share of tiles (or blocks) held out for testing.")
    validation_fraction: float = Field(0.1, ge=0, lt=1, description="Share of samples for early stopping.")
    min_tiles_for_tile_split: int = Field(5, ge=2, description="`auto` splits by tile from this many tiles on.")
    block_size_m: float = Field(1000.0, gt=0, description="Side of the blocks of the `blocks` split.")
    seed: int = 0

    @model_validator(mode="after")
    def _fractions_fit(self) -> MergeConfig:
        if self.test_fraction + self.validation_fraction >= 1:
            raise ValueError("merge: test_fraction + validation_fraction must be below 1")
        return self


class TrainingConfig(StrictModel):
    """Stage 6: a LightGBM multiclass model on the merged dataset, validated on its test split.

    The defaults are about 7× faster than the eo-learn example's classifier at equal or better OA on
    the real Slovenia patch, each half held out in turn (benchmarks/README.md, training row).
    """

    num_boost_round: int = Field(
        50, ge=1, description="Trees per class (with early_stopping_rounds: at most; early stopping ends sooner)."
    )
    early_stopping_rounds: int | None = Field(
        None,
        ge=1,
        description="None: exactly num_boost_round rounds on the training and validation rows together. A number: "
        "the validation rows are kept out of the model, and training stops after that many rounds without a better "
        "validation log-loss (with a lower learning_rate and a higher num_boost_round).",
    )
    learning_rate: float = Field(0.3, gt=0, le=1)
    num_leaves: int = Field(15, ge=2)
    min_data_in_leaf: int = Field(20, ge=1)
    feature_fraction: float = Field(
        0.3, gt=0, le=1, description="Share of the feature columns each tree sees (dates × features are correlated)."
    )
    max_bin: int = Field(63, ge=2, description="Histogram bins per feature column; fewer train faster.")
    max_delta_step: float = Field(
        1.0,
        ge=0,
        description="Cap on a leaf's output (0: none); keeps rare classes from diverging at a high learning rate.",
    )
    bin_sample_rows: int = Field(
        20_000, ge=100, description="Rows drawn to find each column's bin edges (LightGBM's bin_construct_sample_cnt)."
    )
    class_weight: Literal["none", "balanced"] = Field("none", description="'balanced': weights n / (k × count).")
    num_threads: int = Field(0, ge=0, description="LightGBM threads; 0 = all cores.")
    extra_params: dict[str, int | float | str | bool] = Field(
        default_factory=dict, description="More LightGBM parameters, e.g. lambda_l2."
    )
    all_labelled_max_pixels: int | None = Field(
        2_000_000,
        ge=1,
        description="Validation also scores every labelled pixel (un-eroded reference) of the held-out area; "
        "above this many, a seeded random subset of them. None: all.",
    )
    max_memory_gib: float = Field(
        2.0,
        gt=0,
        description="Bound on LightGBM's training data (binned features, scores, gradients) in GiB: features are "
        "read block by block from the merged dataset; with more training + validation rows than fit, a "
        "class-stratified random subset that fits is used (metrics.json: samples_used).",
    )
    seed: int = 0

    @field_validator("extra_params")
    @classmethod
    def _no_fixed_params(cls, params: dict) -> dict:
        fixed = {"objective", "num_class", "seed", "metric", "num_iterations", "early_stopping_round"}
        clash = sorted(fixed & set(params))
        if clash:
            raise ValueError(f"training.extra_params must not set {clash}: LCMS sets them")
        return params

    @property
    def lightgbm_params(self) -> dict[str, Any]:
        return {
            "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves,
            "min_data_in_leaf": self.min_data_in_leaf,
            "feature_fraction": self.feature_fraction,
            "max_bin": self.max_bin,
            "max_delta_step": self.max_delta_step,
            "bin_construct_sample_cnt": self.bin_sample_rows,
            "num_threads": self.num_threads,
            **self.extra_params,
        }


class PredictionConfig(StrictModel):
    """Stage 7: the model applied to every pixel of every selected tile and year."""

    model_version: str | None = Field(
        None, description="Pin a model version (see `lcms models CONFIG`); default: the product's current version."
    )
    block_size: int = Field(256, ge=256, multiple_of=256, description="Pixels per block side; bounds memory.")
    num_threads: int = Field(1, ge=0, description="LightGBM threads per tile task (tiles already run in parallel).")
    compile: Literal["auto", "lleaves", "treelite", "off"] = Field(
        "auto",
        description="Compile the model's trees to machine code, cached per model and machine (same labels, "
        "several times faster): auto = lleaves for tiles of at least 500 × 500 px (compiling takes ~25 s per "
        "model and machine, which small tiles do not win back), else LightGBM; off = LightGBM itself, also the "
        "fallback when compiling fails.",
    )


class MajorityStepConfig(StrictModel):
    kind: Literal["majority"]
    size: int = Field(3, ge=3, description="Window side in pixels (odd).")

    @field_validator("size")
    @classmethod
    def _odd(cls, size: int) -> int:
        if size % 2 == 0:
            raise ValueError("the majority window size must be odd (3, 5, 7, ...)")
        return size


class SieveStepConfig(StrictModel):
    kind: Literal["sieve"]
    min_pixels: int = Field(10, ge=2, description="Minimum mapping unit: patches smaller than this are merged away.")
    connectivity: Literal[4, 8] = 8


class SuperpixelStepConfig(StrictModel):
    kind: Literal["superpixels"]
    method: Literal["slic", "felzenszwalb"] = "slic"
    features: list[str] = Field(
        default_factory=lambda: ["NDVI", "NDWI", "NDBI"], description="Features whose yearly mean is segmented."
    )
    segment_size_px: int = Field(100, ge=4, description="SLIC: mean segment area in pixels.")
    compactness: float = Field(0.1, gt=0, description="SLIC, on standardised bands: higher gives squarer segments.")
    scale: float = Field(100.0, gt=0, description="Felzenszwalb: higher gives larger segments.")
    sigma: float = Field(0.5, ge=0)
    min_size: int = Field(20, ge=1, description="Felzenszwalb: smallest segment in pixels.")


class ErosionStepConfig(StrictModel):
    kind: Literal["erosion"]
    radius_px: int = Field(1, ge=1, description="Class borders become no data over this many pixels.")


PostprocessStep = Annotated[
    MajorityStepConfig | SieveStepConfig | SuperpixelStepConfig | ErosionStepConfig, Field(discriminator="kind")
]


class PostprocessConfig(StrictModel):
    """Stage 8: a chain of steps over each tile's predicted labels (the prediction is kept as it is).

    Tiles are processed with their buffer, so the cores of neighbouring tiles agree at their edges
    when the steps reach no further than the buffer.
    """

    steps: list[PostprocessStep] = Field(
        default_factory=lambda: [MajorityStepConfig(kind="majority", size=3), SieveStepConfig(kind="sieve")],
        description="Applied in order; an empty list copies the prediction.",
    )


class ImageryExportConfig(StrictModel):
    """Imagery composites beside the maps (tasks/export/imagery.py): cloud-free median true colour
    (B04 B03 B02) and false colour (B08 B04 B03) of the valid observations, per year and period."""

    enabled: bool = Field(True, description="Write the imagery composites (COGs with STAC items under maps/imagery/).")
    periods: list[Literal["year", "quarter", "month"]] = Field(
        ["year", "quarter"], min_length=1, description="Composites per whole year, per quarter and/or per month."
    )
    max_reflectance: float = Field(
        0.3, gt=0, le=1, description="Reflectance shown as full brightness (display scaling; brighter is clipped)."
    )


class ExportConfig(StrictModel):
    """Stage 8b: maps as Cloud-Optimised GeoTIFFs with STAC items, per UTM zone or in one CRS."""

    url: str | None = Field(None, description="Folder (local or s3://) for the maps; default: <store>/maps.")
    crs: str | None = Field(None, description="Reproject the whole AOI into this CRS; default: one map per UTM zone.")
    resolution_m: float | None = Field(None, gt=0, description="Pixel size in `crs` units (required with crs).")
    compress: Literal["DEFLATE", "ZSTD"] = "DEFLATE"
    blocksize: int = Field(512, ge=64, multiple_of=16)
    confidence: bool = Field(True, description="Also export the confidence (max probability) map.")
    source: Literal["postprocess", "prediction"] = Field("postprocess", description="Which labels to export.")
    consistent_only: bool = Field(
        False,
        description="When the tiles' predictions come from different model versions, export only the tiles of the "
        "current version (and say which were left out) instead of failing.",
    )
    imagery: ImageryExportConfig = Field(
        default_factory=ImageryExportConfig, description="Imagery composites to compare the maps with."
    )

    _resolve = field_validator("url")(_resolve_path)
    _crs = field_validator("crs")(lambda v: v if v is None else _check_crs(v))

    @model_validator(mode="after")
    def _resolution_with_crs(self) -> ExportConfig:
        if self.crs is not None and self.resolution_m is None:
            raise ValueError("export.resolution_m is required with export.crs (the pixel size in that CRS)")
        return self


class PostgisConfig(StrictModel):
    """Where change polygons also go, besides the GeoPackage. The DSN is never written in a config."""

    dsn_env: str = Field(
        "LCMS_POSTGIS_DSN", description="Environment variable holding the DSN (postgresql://user:pass@host/db)."
    )
    secret_block: str | None = Field(None, description="Or a Prefect Secret block holding the DSN (takes precedence).")
    table: str = Field("land_cover_changes", pattern=r"^[a-z_][a-z0-9_]*$")
    schema_name: str = Field("public", pattern=r"^[a-z_][a-z0-9_]*$")
    srid: int = Field(4326, description="SRID of the geometry column.")


class ChangeConfig(StrictModel):
    """Stage 9: land cover change between two years' maps, as polygons."""

    years: tuple[int, int] | None = Field(
        None, description="[from, to]; default: the run's last two years. Both must be among the run's years."
    )
    source: Literal["postprocess", "prediction"] = Field("postprocess", description="Which labels to compare.")
    min_confidence: int = Field(
        60, ge=0, le=100, description="A changed pixel counts only where both years' confidence (%) reaches this."
    )
    min_area_m2: float = Field(
        2000.0, ge=0, description="Minimum change area; smaller patches (after cleaning) are dropped."
    )
    opening_radius_px: int = Field(
        1, ge=0, le=10, description="Morphological opening of the change mask: removes slivers thinner than 2r+1."
    )
    connectivity: Literal[4, 8] = Field(8, description="Pixel neighbourhood that joins a change patch.")
    ranking_feature: str | None = Field(
        "NDVI", description="Feature whose time-series difference ranks the changes (score); null: no ranking."
    )
    crs: str = Field("EPSG:4326", description="CRS of the GeoPackage layer (tiles are in their own UTM zones).")
    postgis: PostgisConfig | None = Field(None, description="Also write the polygons to PostGIS.")

    _crs = field_validator("crs")(_check_crs)

    @field_validator("years")
    @classmethod
    def _from_before_to(cls, years):
        if years is not None and years[0] >= years[1]:
            raise ValueError(f"change.years must be [earlier, later], got {list(years)}")
        return years


class ReportConfig(StrictModel):
    """Stage 10: areas, transitions, accuracy and the largest changes, as HTML, CSV and JSON."""

    regions_path: str | None = Field(
        None, description="Regions vector file (e.g. admin units, any CRS): class areas per region."
    )
    region_field: str | None = Field(None, description="Column naming each region; default: the first text column.")
    largest_changes: int = Field(20, ge=0, le=1000, description="How many of the largest changes to list.")
    thumbnail_px: int = Field(480, ge=64, le=4096, description="Longest side of the map thumbnails.")

    _resolve = field_validator("regions_path")(_resolve_path)


class ServeConfig(StrictModel):
    """`lcms serve`: the results service (map tiles, change polygons API, reviews, users).

    The PostGIS DSN (database: postgis) never appears here: it comes from the environment variable or
    the Prefect Secret block named in `postgis` (as for change.postgis).
    """

    database: Literal["embedded", "postgis"] = Field(
        "embedded", description="embedded: SQLite file beside the store; postgis: the change table's database."
    )
    database_path: str | None = Field(
        None, description="Embedded database file; default: under a local store. Required for an s3:// store."
    )
    postgis: PostgisConfig | None = Field(
        None, description="With database: postgis: DSN source, schema and change table; default: change.postgis."
    )
    session_hours: float = Field(12.0, gt=0, le=720, description="A login session ends this long after it began.")
    login_max_failures: int = Field(5, ge=1, description="Failed logins per user (and 4x per client) per window.")
    login_window_minutes: float = Field(15.0, gt=0, description="Window of the login rate limit.")
    refresh_seconds: float = Field(10.0, ge=0, description="How often to look for a newer change layer in the store.")
    max_limit: int = Field(10_000, ge=1, le=100_000, description="Most change polygons one page may hold.")
    cache_path: str | None = Field(None, description="Local folder for layers read from S3; default: a temp folder.")

    _resolve = field_validator("database_path", "cache_path")(_resolve_path)


# --------------------------------------------------------------------------- the run


class TileSubset(StrictModel):
    """Which tiles a stage runs on: all of them by default, or those matching every condition given."""

    tile_ids: list[str] | None = Field(None, description="Tile ids, as in the grid.")
    bbox: tuple[float, float, float, float] | None = Field(None, description="minx, miny, maxx, maxy in WGS84.")
    aoi_path: str | None = Field(None, description="A polygon file (any CRS); tiles overlapping it.")

    @property
    def is_all(self) -> bool:
        return self.tile_ids is None and self.bbox is None and self.aoi_path is None


class RunConfig(StrictModel):
    """A whole LCMS run: the AOI, years, grid, store, cluster and one section per stage."""

    name: str = Field(..., min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    product: str = Field(
        "land-cover",
        pattern=r"^[a-z][a-z0-9_-]*$",
        description="The product this config makes (e.g. land-cover, crop-types): its reference, samples, model, "
        "maps, changes and report are kept apart from every other product's in the store; download and "
        "features are shared.",
    )
    aoi: AoiConfig
    years: list[int] = Field(..., min_length=1)
    grid: GridConfig = Field(default_factory=GridConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    cluster: ClusterConfig = Field(default_factory=LocalClusterConfig)
    download: DownloadConfig = Field(default_factory=DownloadConfig)
    features: FeaturesConfig = Field(default_factory=FeaturesConfig)
    reference: ReferenceConfig = Field(default_factory=ReferenceConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    merge: MergeConfig = Field(default_factory=MergeConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    prediction: PredictionConfig = Field(default_factory=PredictionConfig)
    postprocess: PostprocessConfig = Field(default_factory=PostprocessConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    change: ChangeConfig = Field(default_factory=ChangeConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    fail_on_tile_errors: bool = Field(
        True, description="End a stage Failed when any tile failed; the other tiles run to the end either way."
    )

    @model_validator(mode="after")
    def _cloud_detector_has_its_bands(self) -> RunConfig:
        source, clouds = self.download.source, self.download.cloud_mask
        collection = getattr(source, "collection", "L1C")
        if collection == "L2A" and clouds.method == "s2cloudless":
            raise ValueError(
                "download.cloud_mask: s2cloudless needs the L1C bands (L2A has no B10); "
                "download L1C, or set download.cloud_mask.method: scl (the default for L2A) or none"
            )
        if collection == "L1C" and clouds.method == "scl":
            raise ValueError(
                "download.cloud_mask: scl needs L2A's scene classification layer, which L1C has not; "
                "set download.source.collection: L2A, or download.cloud_mask.method: s2cloudless"
            )
        if clouds.method == "sentinelhub" and source.kind != "sentinelhub":
            raise ValueError(
                f"download.cloud_mask: sentinelhub (its CLM/CLP bands) needs source.kind: sentinelhub, "
                f"not {source.kind}; use s2cloudless (L1C) or scl (L2A)"
            )
        return self

    @model_validator(mode="after")
    def _feature_bands_are_downloaded(self) -> RunConfig:
        from lcms.sentinel2 import L1C_BANDS, L2A_BANDS

        available = L2A_BANDS if getattr(self.download.source, "collection", "L1C") == "L2A" else L1C_BANDS
        unknown = [b for b in self.features.bands if b not in available]
        if unknown:
            raise ValueError(
                f"features.bands {unknown} are not bands of the download source; choose from {list(available)}"
            )
        return self

    @model_validator(mode="after")
    def _cloud_cells_fit_the_grid(self) -> RunConfig:
        # The cloud detector averages whole cells of pixels (on the CRS's lattice, so blocks may start anywhere).
        factor = self.download.cloud_mask.analysis_resolution_m / self.grid.resolution_m
        if abs(factor - round(factor)) > 1e-9:
            raise ValueError(
                f"download.cloud_mask.analysis_resolution_m ({self.download.cloud_mask.analysis_resolution_m}) "
                f"must be a whole multiple of grid.resolution_m ({self.grid.resolution_m})"
            )
        refine = self.download.cloud_mask.refine_resolution_m
        if refine is not None and self.grid.resolution_m < refine < self.download.cloud_mask.analysis_resolution_m:
            ratio, per_cell = refine / self.grid.resolution_m, self.download.cloud_mask.analysis_resolution_m / refine
            if abs(ratio - round(ratio)) > 1e-9 or abs(per_cell - round(per_cell)) > 1e-9:
                raise ValueError(
                    f"download.cloud_mask.refine_resolution_m ({refine}) must be a whole multiple of "
                    f"grid.resolution_m ({self.grid.resolution_m}) and divide analysis_resolution_m "
                    f"({self.download.cloud_mask.analysis_resolution_m})"
                )
        return self

    @model_validator(mode="after")
    def _merge_years_are_run_years(self) -> RunConfig:
        unknown = sorted(set(self.merge.years or []) - set(self.years))
        if unknown:
            raise ValueError(f"merge.years {unknown} are not among the run's years {self.years}")
        return self

    @property
    def model_name(self) -> str:
        """The product's model: one model (with its versions) per product."""
        return self.product

    @model_validator(mode="after")
    def _superpixel_features_exist(self) -> RunConfig:
        for step in self.postprocess.steps:
            unknown = [f for f in getattr(step, "features", []) if f not in self.features.feature_names]
            if unknown:
                raise ValueError(
                    f"postprocess superpixels features {unknown} are not features of the run "
                    f"({self.features.feature_names})"
                )
        return self

    @model_validator(mode="after")
    def _change_years_are_run_years(self) -> RunConfig:
        if self.change.years is not None:
            unknown = sorted(set(self.change.years) - set(self.years))
            if unknown:
                raise ValueError(f"change.years {unknown} are not among the run's years {self.years}")
        feature = self.change.ranking_feature
        if feature is not None and feature not in self.features.feature_names:
            raise ValueError(
                f"change.ranking_feature {feature!r} is not a feature of the run ({self.features.feature_names}); "
                "choose one of them or set it to null"
            )
        return self

    @property
    def change_years(self) -> tuple[int, int] | None:
        """The two years the change stage compares; None when the run has a single year."""
        if self.change.years is not None:
            return tuple(self.change.years)
        return (self.years[-2], self.years[-1]) if len(self.years) >= 2 else None

    @property
    def merge_years(self) -> list[int]:
        return sorted(self.merge.years) if self.merge.years else list(self.years)

    @field_validator("years", mode="before")
    @classmethod
    def _relative_years(cls, years: Any, info: ValidationInfo) -> Any:
        return resolve_years(years, (info.context or {}).get("today"))

    @field_validator("years")
    @classmethod
    def _plausible_years(cls, years: list[int]) -> list[int]:
        bad = [y for y in years if not 2015 <= y <= 2100]
        if bad:
            raise ValueError(f"years {bad} are outside Sentinel-2's era (2015 onwards)")
        if len(set(years)) != len(years):
            raise ValueError("years must not repeat")
        return sorted(years)


# --------------------------------------------------------------------------- relative years

_RELATIVE_YEAR = re.compile(r"^previous(?:-(\d+))?$")


def last_full_year(today: dt.date | None = None) -> int:
    """The last calendar year that has ended (UTC): on 1 January 2027, 2026."""
    return (today or dt.datetime.now(dt.UTC).date()).year - 1


def resolve_years(value: Any, today: dt.date | None = None) -> Any:
    """Relative years as plain years, resolved now (or on `today`); anything else is returned as it is.

    `previous` is the last full year and `previous-N` the N-th year before it, alone or in a list
    among plain years (`[2020, previous]`); `{last: N}` is the last N full years. The model then
    checks the years as it checks plain ones, so everything after loading sees integers only.
    """
    if isinstance(value, str):
        value = [value]
    if isinstance(value, dict):
        count = value.get("last")
        if set(value) != {"last"} or isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"relative years are written {{last: N}} with N a whole number ≥ 1, got {value!r}")
        latest = last_full_year(today)
        return list(range(latest - count + 1, latest + 1))
    if not isinstance(value, list | tuple):
        return value
    years = []
    for item in value:
        if isinstance(item, str) and not item.strip().isdigit():
            match = _RELATIVE_YEAR.match(item.strip())
            if match is None:
                raise ValueError(
                    f"{item!r} is not a year; relative years are `previous` (the last full year), "
                    "`previous-N` (N years before it) or {last: N}"
                )
            item = last_full_year(today) - int(match.group(1) or 0)
        years.append(item)
    return years


def params_hash(*parts: BaseModel | dict | list | str | int | float | None) -> str:
    """A short, stable hash of stage parameters, recorded in each tile's done mark."""
    payload = [p.model_dump(mode="json") if isinstance(p, BaseModel) else p for p in parts]
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# Union members appear in pydantic's error paths by their tag; users never write those.
_STEP_KINDS = {"majority", "sieve", "superpixels", "erosion"}
_UNION_TAGS = {"source": {"synthetic", "sentinelhub", "files"}, "cluster": {"local", "ec2", "scheduler"}}


def _user_path(loc: tuple) -> list[str]:
    """An error location as the user wrote it: no union tags, no validator names."""
    parts: list[str] = []
    for part in map(str, loc):
        if part.startswith("function-after") or (parts and part in _UNION_TAGS.get(parts[-1], ())):
            continue
        if len(parts) >= 2 and parts[-2] == "steps" and part in _STEP_KINDS:  # postprocess.steps.N.<kind>
            continue
        parts.append(part)
    return parts


def format_validation_error(exc: ValidationError, source: str) -> str:
    """One line per problem, each naming the field by its dotted path."""
    lines = [f"Invalid config {source}:"]
    for err in exc.errors():
        field = ".".join(_user_path(err["loc"])) or "(top level)"
        if err["type"] == "extra_forbidden":
            lines.append(f"  - {field}: unknown field; check its spelling against the config reference in README.md")
        elif err["type"] == "missing":
            lines.append(f"  - {field}: required field is missing")
        else:
            given = err.get("input")
            shown = "" if isinstance(given, dict) else f" (got {given!r})"
            lines.append(f"  - {field}: {err['msg']}{shown}")
    return "\n".join(lines)


def load_config(path: str | Path) -> RunConfig:
    """Read and validate a YAML run config; raises ConfigError naming every bad field."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"Config file {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"Config file {path} must hold a mapping of fields (name, aoi, years, ...)")
    return parse_config(data, source=str(path), base_dir=path.resolve().parent)


def parse_config(data: dict, source: str = "<dict>", base_dir: Path | None = None) -> RunConfig:
    try:
        return RunConfig.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None
