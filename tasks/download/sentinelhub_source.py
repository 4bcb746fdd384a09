"""Sentinel-2 bands from Sentinel Hub's Catalog and Process APIs, through sentinelhub-py.

Works with services.sentinel-hub.com and with the Copernicus Data Space Ecosystem (CDSE),
which runs the same APIs under other URLs (`cfg.service`, or `cfg.base_url` / `cfg.token_url`).

Flow of requests
----------------
1. **Token.** One OAuth2 client-credentials POST to the token URL, the first time the source
   needs the service; the token is reused by every later request and refreshed by
   sentinelhub-py's `SentinelHubSession` shortly before it expires. Credentials are passed in
   by the download flow (which also reads Prefect Secret blocks), or else read from the
   environment (`credentials_from_environment`). Rejected credentials raise `SourceError` at
   once and are remembered, so a wrong secret costs one token request, not one per block or
   per thread.
2. **Catalog** (`acquisition_dates`): `POST {base}/api/v1/catalog/1.0.0/search` over the
   grid's bbox (sent in WGS 84, as sentinelhub-py does), the year and
   `eo:cloud_cover <= max_cloud_cover`, following `context.next` page by page. Acquisitions
   closer than `time_difference_minutes` (same-day tiles of one orbit, or two overlapping
   orbits) are merged with `sentinelhub.filter_times`, which keeps the first time of a group.
3. **Process** (`read`): one `POST {base}/api/v1/process` per date and per sub-grid of at
   most `MAX_REQUEST_PX` pixels a side, on exactly the sub-grid (its bbox in its own UTM
   CRS, its width and height). A merged date d is requested with the time range
   [d, d + time_difference]: `filter_times` puts every acquisition within time_difference of
   a group's first one into that group, so the range holds exactly the group, and the
   `leastRecent` mosaicking order takes each pixel from the group's first acquisition
   (the one whose time the date carries), falling back to the later ones where it has no
   data. Requests run on at most `max_concurrent_requests` threads; each answer is written
   into the output as soon as it arrives.

Per-date requests, not one multi-temporal request per block: a multi-temporal evalscript
returning all dates of a year as bands would make one answer of ~70-140 dates x 14 bands
(up to ~1 GB for a 512 x 512 block, above the service's output limits), would be retried
whole when it fails, and would group scenes by the service's orbit rules instead of
`time_difference_minutes`. Processing units are billed per scene either way, so per-date
requests cost about the same while keeping retries small, parallelism possible and memory
bounded: the (t, y, x, b) output of the block plus at most 2 x max_concurrent_requests
answers in flight.

Values: the evalscript asks for `units: "DN"` with `harmonizeValues: true` (the service
default, sent explicitly), and returns UINT16. Sentinel Hub then delivers DN = reflectance
x 10000 on the pre-04.00 scale: it removes the -1000 offset of processing baseline 04.00+
products (and clamps the rare negative values to 0). The 20 m and 60 m bands are upsampled
to 10 m with the service default (nearest), so DNs are the product's own. dataMask is
returned as a 14th (L2A: 13th) band and becomes the bool data mask; bands are 0 where it is
0.

Layers for the cloud masks (`read_layers`), as extra output bands of the same request (so
they cost no extra request): "SCL" (L2A scene classification, DN), "CLM" (Sentinel Hub's
s2cloudless mask at 160 m: 0 clear, 1 cloud, 255 no data), "CLP" (its probability, 0..255 for
0..1) and "sun" (`sunAzimuthAngles`, `sunZenithAngles` in DEGREES, rounded to whole degrees by
the UINT16 output; `read_layers` returns each date's mean over the block's pixels with data).

Errors: 429 (waiting at least the Retry-After the service sends, in milliseconds, shared
with the other threads), 5xx, timeouts and dropped connections are retried with exponential
backoff up to `max_retries` times; then `TransientSourceError` says what failed (the tile may
be tried again later). Other 4xx answers and rejected credentials raise `PermanentSourceError`
at once (tasks/download/errors.py).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

import numpy as np
import requests
from sentinelhub import (
    CRS,
    BBox,
    DataCollection,
    MimeType,
    MosaickingOrder,
    SentinelHubCatalog,
    SentinelHubDownloadClient,
    SentinelHubRequest,
    SentinelHubSession,
    SHConfig,
    filter_times,
)
from sentinelhub.constants import SHConstants
from sentinelhub.decoding import decode_sentinelhub_err_msg
from sentinelhub.download.models import DownloadRequest, DownloadResponse
from sentinelhub.download.rate_limit import SentinelHubRateLimit

from lcms.config import SentinelHubSourceConfig
from lcms.geometry import PixelGrid
from lcms.sentinel2 import L1C_BANDS, L2A_BANDS
from tasks.download.errors import PermanentSourceError, TransientSourceError
from tasks.download.sources import SourceCredentials, SourceError

log = logging.getLogger(__name__)

#: (API base URL, OAuth token URL) of each service.
SERVICE_URLS: dict[str, tuple[str, str]] = {
    "sentinel-hub": (
        "https://services.sentinel-hub.com",
        "https://services.sentinel-hub.com/auth/realms/main/protocol/openid-connect/token",
    ),
    "cdse": (
        "https://sh.dataspace.copernicus.eu",
        "https://identity.dataspace.copernicus.eu/auth/realms/CDSE/protocol/openid-connect/token",
    ),
}

CLIENT_ID_ENV = "SH_CLIENT_ID"
CLIENT_SECRET_ENV = "SH_CLIENT_SECRET"

_TEMPORARY_ERRORS = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)


# ---------------------------------------------------------------------------------------------
# Configuration: URLs, credentials, data collection, evalscript.
# ---------------------------------------------------------------------------------------------


def service_urls(cfg: SentinelHubSourceConfig) -> tuple[str, str]:
    """(base URL, token URL) of the configured service, with the config's overrides applied."""
    base_url, token_url = SERVICE_URLS[cfg.service]
    return (cfg.base_url or base_url).rstrip("/"), cfg.token_url or token_url


def build_sh_config(cfg: SentinelHubSourceConfig, client_id: str = "", client_secret: str = "") -> SHConfig:
    """The sentinelhub-py config of a source. Built from defaults only: never reads or writes
    ~/.config/sentinelhub/config.toml, whose profile could silently point elsewhere."""
    base_url, token_url = service_urls(cfg)
    return SHConfig(
        use_defaults=True,
        sh_client_id=client_id,
        sh_client_secret=client_secret,
        sh_base_url=base_url,
        sh_token_url=token_url,
        download_timeout_seconds=cfg.request_timeout_s,
        # Only informative: retries are done by _Retrier below, with the same budget.
        max_download_attempts=cfg.max_retries + 1,
        max_retries=cfg.max_retries + 1,
    )


CREDENTIALS_HINT = (
    f"Set {CLIENT_ID_ENV} and {CLIENT_SECRET_ENV} in the environment, or store them in Prefect Secret "
    "blocks and name those in the source config (client_id_block, client_secret_block)."
)


def credentials_from_environment() -> SourceCredentials:
    """OAuth client id and secret from SH_CLIENT_ID / SH_CLIENT_SECRET.

    Prefect Secret blocks are read by the download flow (flows/download.py), which passes the
    credentials in: tasks/ never talks to Prefect.
    """
    env_id, env_secret = os.environ.get(CLIENT_ID_ENV, ""), os.environ.get(CLIENT_SECRET_ENV, "")
    if env_id and env_secret:
        return SourceCredentials(env_id, env_secret)
    missing = [n for n, v in ((CLIENT_ID_ENV, env_id), (CLIENT_SECRET_ENV, env_secret)) if not v]
    raise SourceError(
        f"No Sentinel Hub credentials: {' and '.join(missing)} not set and no Prefect Secret blocks named. "
        + CREDENTIALS_HINT
    )


def data_collection(cfg: SentinelHubSourceConfig) -> DataCollection:
    """The Sentinel-2 collection on the configured service.

    Catalog and Process ids are the same on both services ("sentinel-2-l1c", "sentinel-2-l2a"),
    but sentinelhub-py pins its predefined collections to services.sentinel-hub.com and
    SentinelHubRequest sends a request to its collection's service_url whatever the config's
    base URL. On CDSE (or any other base URL) the collection is therefore redefined with
    `define_from(..., service_url=base_url)`, as sentinelhub-py's CDSE guide does.
    """
    base = DataCollection.SENTINEL2_L1C if cfg.collection == "L1C" else DataCollection.SENTINEL2_L2A
    base_url, _ = service_urls(cfg)
    if base.service_url and base.service_url.rstrip("/") == base_url:
        return base
    suffix = "CDSE" if base_url == SERVICE_URLS["cdse"][0] else hashlib.sha1(base_url.encode()).hexdigest()[:10].upper()
    return base.define_from(f"LCMS_{base.name}_{suffix}", service_url=base_url)


#: The service's band names of each layer `read_layers` can add, and their units.
LAYER_BANDS: dict[str, tuple[tuple[str, str], ...]] = {
    "SCL": (("SCL", "DN"),),
    "CLM": (("CLM", "DN"),),
    "CLP": (("CLP", "DN"),),
    "sun": (("sunAzimuthAngles", "DEGREES"), ("sunZenithAngles", "DEGREES")),
}


def evalscript(band_names: Iterable[str], layers: Iterable[str] = ()) -> str:
    """Evalscript returning the bands as UINT16 DN, then the layers' bands, then dataMask (see
    module docstring)."""
    bands = [(b, "DN") for b in band_names]
    for layer in layers:
        bands += LAYER_BANDS[layer]
    bands.append(("dataMask", "DN"))
    inputs = ", ".join(f'"{b}"' for b, _ in bands)
    if all(u == "DN" for _, u in bands):
        units = '"DN"'
    else:
        units = "[" + ", ".join(f'"{u}"' for _, u in bands) + "]"
    outputs = ", ".join(f"s.{b}" for b, _ in bands)
    return f"""//VERSION=3
// DN = reflectance x 10000; harmonizeValues (on) removes the offset of baseline 04.00+ products.
function setup() {{
  return {{
    input: [{{ bands: [{inputs}], units: {units} }}],
    output: {{ id: "default", bands: {len(bands)}, sampleType: "UINT16" }},
  }};
}}
function evaluatePixel(s) {{
  return [{outputs}];
}}
"""


# ---------------------------------------------------------------------------------------------
# HTTP: one retry policy for the token, Catalog and Process requests.
# ---------------------------------------------------------------------------------------------


class _Retrier:
    """Retries 429, 5xx, timeouts and dropped connections with exponential backoff and jitter."""

    def __init__(self, max_retries: int, backoff_s: float, backoff_max_s: float):
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s

    def call(
        self,
        send: Callable[[], requests.Response],
        what: str,
        permanent: Callable[[requests.Response], Exception],
        on_throttled: Callable[[requests.Response], None] | None = None,
    ) -> requests.Response:
        """The first successful response of `send()`; `permanent(response)` is raised for 4xx
        answers a retry will not fix, SourceError when the retries are used up."""
        attempts = self.max_retries + 1
        for attempt in range(attempts):
            retry_after_s = 0.0
            try:
                response = send()
            except _TEMPORARY_ERRORS as exc:
                problem = f"{type(exc).__name__}: {exc}"
            else:
                status = response.status_code
                if status < 400:
                    return response
                if status != 429 and status < 500:
                    raise permanent(response)
                problem = f"HTTP {status}: {decode_sentinelhub_err_msg(response)}"
                if status == 429:
                    retry_after_s = _retry_after_s(response)
                    if on_throttled is not None:
                        on_throttled(response)
            if attempt + 1 == attempts:
                break
            # Full-range jitter keeps parallel threads from retrying in lockstep.
            delay = min(self.backoff_max_s, self.backoff_s * 2**attempt) * (0.5 + 0.5 * random.random())
            delay = max(delay, retry_after_s)
            log.warning("%s failed (%s); retry %d of %d in %.2f s", what, problem, attempt + 1, self.max_retries, delay)
            time.sleep(delay)
        raise TransientSourceError(
            f"{what} failed {attempts} times (max_retries={self.max_retries}); last error: {problem}. "
            "The service may be overloaded or unreachable: try again later, or raise max_retries / request_timeout_s."
        )


def _retry_after_s(response: requests.Response) -> float:
    """Sentinel Hub's Retry-After is in milliseconds (as sentinelhub-py's rate limiter reads it)."""
    try:
        return max(float(response.headers.get("Retry-After", 0)) / 1000.0, 0.0)
    except ValueError:
        return 0.0


class _Session(SentinelHubSession):
    """sentinelhub-py's session (token caching and refresh) with our own token request.

    The token is fetched with a plain form POST instead of requests_oauthlib, which logs the
    request body, client secret included, at DEBUG level; and so that rejected credentials
    become a SourceError while 5xx answers are retried like any other request.
    """

    def __init__(self, config: SHConfig, retrier: _Retrier):
        self._retrier = retrier
        super().__init__(config=config)

    def _fetch_token(self, request: DownloadRequest) -> dict[str, Any]:
        url = request.url
        form = {
            "grant_type": "client_credentials",
            "client_id": self.config.sh_client_id,
            "client_secret": self.config.sh_client_secret,
        }
        headers = {**self.DEFAULT_HEADERS, **SHConstants.HEADERS}

        def send() -> requests.Response:
            return requests.post(url, data=form, headers=headers, timeout=self.config.download_timeout_seconds)

        def rejected(response: requests.Response) -> PermanentSourceError:
            try:
                body = response.json()
                reason = f"{body.get('error', '')}: {body.get('error_description', '')}".strip(": ")
            except ValueError:
                reason = response.reason
            return PermanentSourceError(
                f"Sentinel Hub rejected the OAuth client credentials at {url} (HTTP {response.status_code}"
                f"{', ' + reason if reason else ''}). Check the client id and secret given by {CLIENT_ID_ENV} / "
                f"{CLIENT_SECRET_ENV} or the Prefect Secret blocks, and that they belong to this service "
                "(services.sentinel-hub.com and CDSE accounts are separate)."
            )

        token = self._retrier.call(send, f"Sentinel Hub token request to {url}", rejected).json()
        if "access_token" not in token:
            raise PermanentSourceError(f"The token endpoint {url} answered without an access_token")
        token["expires_at"] = time.time() + float(token.get("expires_in", 3600))
        return token


class _Client(SentinelHubDownloadClient):
    """sentinelhub-py's download client with our retry policy and a streaming download.

    `_execute_download` replaces the parent's two retry loops (one for 5xx with
    max_download_attempts, an unbounded one for 429 unless max_retries is set) with one
    bounded loop. The parent's rate limiter is kept: it spaces request starts and, after a
    429, holds every thread until Retry-After has passed.
    """

    def __init__(self, *, config: SHConfig, session: SentinelHubSession, retrier: _Retrier, min_interval_s: float):
        super().__init__(config=config, session=session)
        self.retrier = retrier
        self.rate_limit = SentinelHubRateLimit(num_processes=1, minimum_wait_time=min_interval_s)
        # Permanent lock (the parent creates one per download() call): read() may be called
        # from several threads with the same client.
        self.lock = threading.Lock()

    def _execute_download(self, request: DownloadRequest) -> DownloadResponse:
        if request.url is None:
            raise ValueError(f"Faulty request {request}, no URL specified.")

        def send() -> requests.Response:
            while (sleep_s := self._execute_thread_safe(self.rate_limit.register_next)) > 0:
                time.sleep(sleep_s)
            log.debug("%s %s", request.request_type.value, request.url)
            return self._do_download(request)

        def permanent(response: requests.Response) -> PermanentSourceError:
            return PermanentSourceError(
                f"Sentinel Hub refused {request.request_type.value} {request.url} with HTTP {response.status_code}: "
                f"{decode_sentinelhub_err_msg(response)}"
            )

        def throttled(response: requests.Response) -> None:
            # Hold every thread, not only this one, until Retry-After has passed.
            retry_after_ms = {"Retry-After": int(1000 * _retry_after_s(response))}
            self._execute_thread_safe(self.rate_limit.update, retry_after_ms, default=0)

        response = self.retrier.call(send, _describe(request), permanent, throttled)
        return DownloadResponse.from_response(response, request)

    def download_each(self, jobs: Iterable[tuple[Any, DownloadRequest]], max_threads: int) -> Iterator[tuple[Any, Any]]:
        """Decoded answers of `jobs` ((key, request) pairs) as they complete, in any order.

        At most 2 x max_threads requests are submitted at a time, so that neither the queue nor
        the finished-but-unconsumed answers grow with the number of jobs. On an error the
        queued requests are cancelled and the error raised.
        """
        jobs = iter(jobs)
        with ThreadPoolExecutor(max_workers=max_threads, thread_name_prefix="sentinelhub") as executor:
            pending: dict[Future, Any] = {}
            try:
                while True:
                    for key, request in jobs:
                        pending[executor.submit(self._single_download_decoded, request)] = key
                        if len(pending) >= 2 * max_threads:
                            break
                    if not pending:
                        return
                    done, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        yield pending.pop(future), future.result()
            finally:
                for future in pending:
                    future.cancel()


# ---------------------------------------------------------------------------------------------
# The source.
# ---------------------------------------------------------------------------------------------


class SentinelHubSource:
    """Sentinel-2 L1C or L2A bands from Sentinel Hub (implements `tasks.download.sources.BandSource`)."""

    #: Largest width or height of one Process API request (the service's limit is 2500 px).
    MAX_REQUEST_PX = 2500
    #: Catalog features per page (the service allows at most 100).
    CATALOG_PAGE_SIZE = 100
    #: Mosaicking of the acquisitions merged into one date (see module docstring).
    MOSAICKING_ORDER = MosaickingOrder.LEAST_RECENT
    #: First retry delay; doubled on each retry, capped, jittered.
    RETRY_BACKOFF_S = 1.0
    RETRY_BACKOFF_MAX_S = 60.0
    #: Minimum spacing of request starts (sentinelhub-py's default).
    MIN_REQUEST_INTERVAL_S = 0.05

    def __init__(self, cfg: SentinelHubSourceConfig, credentials: SourceCredentials | None = None):
        self.cfg = cfg
        self._credentials = credentials  # None: from the environment, when first needed
        self.band_names: tuple[str, ...] = L1C_BANDS if cfg.collection == "L1C" else L2A_BANDS
        #: What `read_layers` can add to the bands (L1C has no scene classification).
        self.layers: tuple[str, ...] = ("sun", "CLM", "CLP") + (("SCL",) if cfg.collection == "L2A" else ())
        self.collection = data_collection(cfg)
        self._sh_config = build_sh_config(cfg)
        self._lock = threading.Lock()
        self._client_obj: _Client | None = None
        self._auth_error: SourceError | None = None

    # Sent to a worker, the source is rebuilt from its config: the client holds a session and
    # locks, and a collection made by define_from exists only in the process that defined it.
    def __getstate__(self) -> dict:
        return {"cfg": self.cfg, "credentials": self._credentials}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["cfg"], state["credentials"])

    @property
    def sh_config(self) -> SHConfig:
        """The sentinelhub-py config this source talks to, without credentials."""
        return self._sh_config

    def _client(self) -> _Client:
        """The authenticated client, created on first use (one token request)."""
        with self._lock:
            if self._auth_error is not None:
                raise self._auth_error
            if self._client_obj is None:
                retrier = _Retrier(self.cfg.max_retries, self.RETRY_BACKOFF_S, self.RETRY_BACKOFF_MAX_S)
                config = build_sh_config(self.cfg, *(self._credentials or credentials_from_environment()))
                try:
                    session = _Session(config, retrier)
                except SourceError as exc:
                    self._auth_error = exc  # a rejected secret stays rejected: no retry storm
                    raise
                self._client_obj = _Client(
                    config=config, session=session, retrier=retrier, min_interval_s=self.MIN_REQUEST_INTERVAL_S
                )
            return self._client_obj

    @staticmethod
    def _bbox(grid: PixelGrid) -> BBox:
        epsg = grid.epsg
        if epsg is None:
            raise PermanentSourceError(f"Sentinel Hub needs a grid with an EPSG code, got CRS {grid.crs!r}")
        return BBox(grid.bounds, crs=CRS(epsg))

    def _max_cloud_percent(self) -> float | None:
        """Cloud-cover limit in percent, the same for the Catalog and Process; None for no limit."""
        return None if self.cfg.max_cloud_cover >= 1.0 else round(self.cfg.max_cloud_cover * 100.0, 6)

    # --- Catalog ---------------------------------------------------------------------------

    def acquisition_dates(self, grid: PixelGrid, year: int) -> np.ndarray:
        """Sorted unique datetime64[s] of the year's acquisitions over `grid`, same-day groups merged."""
        client = self._client()
        catalog = SentinelHubCatalog(config=client.config)
        catalog.client = client  # share the session, the retries and the rate limiter
        max_cc = self._max_cloud_percent()
        search = catalog.search(
            self.collection,
            bbox=self._bbox(grid),
            time=(dt.datetime(year, 1, 1), dt.datetime(year, 12, 31, 23, 59, 59, 999999)),
            filter=None if max_cc is None else f"eo:cloud_cover <= {max_cc:g}",
            fields={"include": ["id", "properties.datetime", "properties.eo:cloud_cover"], "exclude": []},
            limit=self.CATALOG_PAGE_SIZE,
        )
        # Seconds precision as in the store; floor, so that [date, date + td] still holds the group.
        times = [_utc_naive(t).replace(microsecond=0) for t in search.get_timestamps()]
        merged = filter_times(times, dt.timedelta(minutes=self.cfg.time_difference_minutes))
        dates = np.unique(np.array(merged, dtype="datetime64[s]"))
        log.info(
            "Sentinel Hub catalog: %d %s acquisitions over %s in %d, %d dates after merging",
            len(times),
            self.cfg.collection,
            grid.bounds,
            year,
            len(dates),
        )
        return dates

    # --- Process ---------------------------------------------------------------------------

    def _process_request(self, grid: PixelGrid, date: np.datetime64, layers: tuple[str, ...] = ()) -> DownloadRequest:
        """The Process API request of one date on exactly `grid` (at most MAX_REQUEST_PX a side)."""
        start = np.datetime64(date, "s").astype(dt.datetime)
        # The whole merged group (see module docstring); +1 s for the sub-second part of the
        # acquisition times that `acquisition_dates` floored.
        end = start + dt.timedelta(minutes=self.cfg.time_difference_minutes, seconds=1)
        max_cc = self._max_cloud_percent()
        data_filter: dict[str, Any] = {} if max_cc is None else {"maxCloudCoverage": max_cc}
        input_data = SentinelHubRequest.input_data(
            self.collection,
            time_interval=(start, end),
            mosaicking_order=self.MOSAICKING_ORDER,
            other_args={"dataFilter": data_filter, "processing": {"harmonizeValues": True}},
        )
        request = SentinelHubRequest(
            evalscript=evalscript(self.band_names, layers),
            input_data=[input_data],
            responses=[SentinelHubRequest.output_response("default", MimeType.TIFF)],
            bbox=self._bbox(grid),
            size=(grid.width, grid.height),
            config=self._sh_config,  # URLs only: the client adds the session's Authorization header
        )
        return request.download_list[0]

    def read(self, grid: PixelGrid, dates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint16 (t, y, x, b) DN and bool (t, y, x) data mask of `grid` at `dates`."""
        bands, data_mask, _ = self.read_layers(grid, dates, ())
        return bands, data_mask

    def read_layers(self, grid: PixelGrid, dates: np.ndarray, layers=()) -> tuple[np.ndarray, np.ndarray, dict]:
        """`read`, plus the requested `layers` (see the module docstring) in the same requests:
        "SCL", "CLM", "CLP" as uint8 (t, y, x); "sun" as float64 (t, 2) azimuth and zenith."""
        layers = tuple(dict.fromkeys(layers))
        unknown = set(layers) - set(self.layers)
        if unknown:
            raise PermanentSourceError(f"Sentinel Hub {self.cfg.collection} has no layers {sorted(unknown)}")
        dates = np.asarray(dates, dtype="datetime64[s]")
        n_bands = len(self.band_names)
        extra_bands = [b for layer in layers for b, _ in LAYER_BANDS[layer]]
        n_out = n_bands + len(extra_bands) + 1
        bands = np.zeros((len(dates), *grid.shape, n_bands), np.uint16)
        data_mask = np.zeros((len(dates), *grid.shape), bool)
        planes = {
            b: np.full((len(dates), *grid.shape), 255 if b == "CLM" else 0, np.uint8)
            for b in extra_bands
            if not b.startswith("sun")
        }
        sun_sums = np.zeros((len(dates), 3))  # sin(azimuth), cos(azimuth), zenith, summed over pixels
        sun_count = np.zeros(len(dates))
        if len(dates):
            client = self._client()
            parts = list(grid.blocks(self.MAX_REQUEST_PX))  # the service's size limit; usually one part

            def jobs() -> Iterator[tuple[Any, DownloadRequest]]:
                # Generated lazily: only the requests in flight exist at any time.
                for t, date in enumerate(dates):
                    for region, part in parts:
                        yield (t, region, part.shape), self._process_request(part, date, layers)

            for (t, (rows, cols), shape), image in client.download_each(jobs(), self.cfg.max_concurrent_requests):
                image = _as_hwb(image, shape, n_out)
                valid = image[..., -1] > 0
                block = bands[t, rows, cols]
                block[...] = image[..., :n_bands]
                block[~valid] = 0  # no data is 0 in every band, whatever the service put there
                data_mask[t, rows, cols] = valid
                for i, name in enumerate(extra_bands, start=n_bands):
                    if name in planes:
                        planes[name][t, rows, cols] = np.where(
                            valid, np.minimum(image[..., i], 255), planes[name][t, rows, cols]
                        )
                if "sun" in layers and valid.any():
                    i = n_bands + extra_bands.index("sunAzimuthAngles")
                    az = np.deg2rad(image[..., i][valid].astype(np.float64))
                    sun_sums[t] += (
                        np.sin(az).sum(),
                        np.cos(az).sum(),
                        image[..., i + 1][valid].astype(np.float64).sum(),
                    )
                    sun_count[t] += valid.sum()
            log.debug(
                "Sentinel Hub: read %d dates of a %d x %d grid in %d part(s)", len(dates), *grid.shape, len(parts)
            )
        extra: dict[str, np.ndarray] = {name: planes[name] for name in layers if name in planes}
        if "sun" in layers:
            sun = np.full((len(dates), 2), np.nan)
            seen = sun_count > 0
            sun[seen, 0] = np.rad2deg(np.arctan2(sun_sums[seen, 0], sun_sums[seen, 1])) % 360.0
            sun[seen, 1] = sun_sums[seen, 2] / sun_count[seen]
            extra["sun"] = sun
        return bands, data_mask, extra


def _describe(request: DownloadRequest) -> str:
    """What a request is, for messages: its URL and, for the Process API, the date it asks for."""
    try:
        when = request.post_values["input"]["data"][0]["dataFilter"]["timeRange"]["from"]
    except (KeyError, IndexError, TypeError):
        return f"Sentinel Hub request {request.url}"
    return f"Sentinel Hub request {request.url} for {when}"


def _utc_naive(t: dt.datetime) -> dt.datetime:
    return t.astimezone(dt.UTC).replace(tzinfo=None) if t.tzinfo else t


def _as_hwb(image: Any, shape: tuple[int, int], n: int) -> np.ndarray:
    """A decoded Process API TIFF as uint16 (height, width, n), or SourceError if it is not one."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape == (n, *shape):  # band-interleaved TIFF
        image = np.moveaxis(image, 0, -1)
    if image.shape != (*shape, n) or image.dtype != np.uint16:
        raise TransientSourceError(
            f"Sentinel Hub returned an image of shape {image.shape} and type {image.dtype}, "
            f"expected {(*shape, n)} uint16"
        )
    return image
