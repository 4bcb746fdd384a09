"""A local fake of Sentinel Hub (OAuth token, Catalog API, Process API) for the tests.

It runs a `ThreadingHTTPServer` on 127.0.0.1 (port 0) in a background thread and answers the
paths, methods, JSON shapes, content types and status codes the real service uses, so that
the real sentinelhub-py client code can be tested against it:

* ``POST /auth/realms/{main,CDSE}/protocol/openid-connect/token``: OAuth2 client credentials
  (form-encoded, or HTTP Basic); 401 ``{"error": "invalid_client"}`` for wrong credentials.
* ``POST /api/v1/catalog/1.0.0/search``: STAC ItemCollection; honours ``collections``,
  ``bbox`` (+ ``bbox-crs``) / ``intersects``, ``datetime``, ``filter`` (CQL2 text comparisons
  such as ``eo:cloud_cover <= 30``), ``fields``, ``limit`` (1..100) and paging through
  ``next`` (an offset, returned in ``context.next`` while more features remain).
* ``POST /api/v1/process``: one ``image/tiff`` response (a GeoTIFF) rendered with
  `SyntheticScene` at the pixel centres of the requested grid; at most 2500 px a side (400
  otherwise). The fake does not run JavaScript: it reads the evalscript's ``setup()`` (input
  bands and units, output bands and sampleType) and returns the input bands in that order,
  which is what an evalscript like ``return [s.B01, ..., s.dataMask]`` does. Units ``DN`` give
  the L1C DN of the synthetic scene (plus the +1000 offset of baseline 04.00 products when
  ``harmonizeValues`` is false), ``REFLECTANCE`` gives DN / 10000; ``units`` may be one string
  or one per band, as on the real service. L2A is served as the synthetic L1C without B10.
  Besides the spectral bands and ``dataMask`` it answers, from the scene's own truth, for the
  bands the real service offers for cloud masking: ``CLM`` (0 clear, 1 cloud, 255 no data:
  the true cloud mask), ``CLP`` (0..255: the cloud opacity × 255), ``SCL`` (L2A only: the
  synthetic scene classification, Sen2Cor codes) in ``DN``, and ``sunAzimuthAngles`` /
  ``sunZenithAngles`` (the scene's sun, only in ``DEGREES``).

The world: one Sentinel-2 tile footprint (`coverage`, lon/lat) with a fixed acquisition
calendar per year of `years`: the `SyntheticScene`'s dates (with millisecond parts, as real
sensing times have), plus, for some of them, the next granule of the same datatake 4 minutes
later and, for others, an overlapping orbit 101 minutes later. Each acquisition's
``eo:cloud_cover`` is the scene's cloud fraction of that date. An acquisition renders as the
scene at its time floored to the second.

Fault injection: `inject("process", status=429, count=2, retry_after_ms=100)` makes the next
two Process requests answer 429; `status=500`/`503` likewise; `stall_s=...` delays the answer.
`counts[endpoint]` counts requests (faulty ones included), `max_in_flight[endpoint]` the
largest number handled at once, `bodies[endpoint]` keeps the JSON bodies (never the token
form).
"""

from __future__ import annotations

import base64
import collections
import json
import re
import threading
import time
import urllib.parse
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import rasterio
from affine import Affine
from pyproj import CRS, Transformer
from shapely.geometry import box, mapping, shape

from lcms.geometry import PixelGrid
from lcms.sentinel2 import L1C_BANDS, L2A_BANDS
from tasks.download.synthetic import L2A_INDEX, SyntheticScene, _scene_classification

TOKEN_PATHS = ("/auth/realms/main/protocol/openid-connect/token", "/auth/realms/CDSE/protocol/openid-connect/token")
CATALOG_SEARCH_PATH = "/api/v1/catalog/1.0.0/search"
PROCESS_PATH = "/api/v1/process"
COLLECTIONS = {"sentinel-2-l1c": L1C_BANDS, "sentinel-2-l2a": L2A_BANDS}
# Auxiliary bands of each collection (the real service has more: viewZenithMean, CLD, SNW, ...).
AUX_BANDS = {
    "sentinel-2-l1c": ("CLM", "CLP", "sunAzimuthAngles", "sunZenithAngles"),
    "sentinel-2-l2a": ("SCL", "CLM", "CLP", "sunAzimuthAngles", "sunZenithAngles"),
}
ANGLE_BANDS = ("sunAzimuthAngles", "sunZenithAngles")
BASELINE_04_START = np.datetime64("2022-01-25T00:00:00", "ms")

PAIR_OFFSET_MS = 4 * 60_000 + 7_500  # next granule of the same datatake
ORBIT_OFFSET_MS = 101 * 60_000  # overlapping orbit, same day


@dataclass(frozen=True)
class Acquisition:
    """One Sentinel-2 tile acquisition of the fake's calendar."""

    id: str
    time: np.datetime64  # datetime64[ms], the sensing time the Catalog reports
    cloud_cover: float  # percent, as eo:cloud_cover

    @property
    def render_time(self) -> np.datetime64:
        """The second at which `SyntheticScene` renders this acquisition."""
        return self.time.astype("datetime64[s]")

    @property
    def year(self) -> int:
        return int(str(self.time)[:4])

    @property
    def datetime(self) -> str:
        return f"{self.time}Z"


@dataclass
class _Fault:
    status: int | None
    retry_after_ms: int | None
    stall_s: float | None
    remaining: int


class ApiError(Exception):
    """An error answer of the API, in Sentinel Hub's JSON error shape."""

    REASONS = {
        400: "Bad Request",
        401: "Unauthorized",
        404: "Not Found",
        406: "Not Acceptable",
        415: "Unsupported Media Type",
    }

    def __init__(self, status: int, message: str, code: str = "COMMON_BAD_PAYLOAD"):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code

    def body(self) -> dict:
        reason = self.REASONS.get(self.status, "Error")
        return {"error": {"status": self.status, "reason": reason, "message": self.message, "code": self.code}}


class FakeSentinelHub:
    """The fake service; use as a context manager or call `start()` / `stop()`."""

    def __init__(
        self,
        scene: SyntheticScene | None = None,
        years: tuple[int, ...] = (2023, 2024),
        coverage: tuple[float, float, float, float] = (14.3, 44.6, 15.7, 45.6),
        client_id: str = "lcms-test-client",
        client_secret: str = "s3cr3t-Vn8qP2xL",
        max_px: int = 2500,
        token_expires_in: int = 3600,
    ):
        self.scene = scene or SyntheticScene(seed=11, dates_per_year=40, cloud_cover=0.35, swath_edge_fraction=0.3)
        self.years = years
        self.coverage = box(*coverage)  # lon/lat
        self.client_id, self.client_secret = client_id, client_secret
        self.max_px = max_px
        self.token_expires_in = token_expires_in
        self.counts: collections.Counter[str] = collections.Counter()
        self.max_in_flight: collections.Counter[str] = collections.Counter()
        self.bodies: dict[str, list[dict]] = collections.defaultdict(list)
        self._in_flight: collections.Counter[str] = collections.Counter()
        self._faults: dict[str, collections.deque[_Fault]] = collections.defaultdict(collections.deque)
        self._tokens: dict[str, float] = {}
        self._lock = threading.Lock()
        self._calendar = {year: self._build_calendar(year) for year in years}
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> FakeSentinelHub:
        handler = type("Handler", (_Handler,), {"service": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-sentinelhub", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = None

    def __enter__(self) -> FakeSentinelHub:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def token_url(self) -> str:
        return self.url + TOKEN_PATHS[0]

    # --- test controls -----------------------------------------------------------------------

    def inject(
        self,
        endpoint: str,
        *,
        status: int | None = None,
        count: int = 1,
        retry_after_ms: int | None = None,
        stall_s: float | None = None,
    ) -> None:
        """Make the next `count` requests of `endpoint` ("token", "catalog", "process") fail."""
        assert endpoint in ("token", "catalog", "process")
        with self._lock:
            self._faults[endpoint].append(_Fault(status, retry_after_ms, stall_s, count))

    def calendar(self, year: int) -> list[Acquisition]:
        """All acquisitions of `year`, sorted by time."""
        return list(self._calendar.get(year, []))

    # --- the world ---------------------------------------------------------------------------

    def _build_calendar(self, year: int) -> list[Acquisition]:
        acquisitions = []
        for i, date in enumerate(self.scene.acquisition_dates(year)):
            t = date.astype("datetime64[ms]") + np.timedelta64((i * 137) % 1000, "ms")
            acquisitions.append(self._acquisition(t, i))
            if i % 4 == 1:
                acquisitions.append(self._acquisition(t + np.timedelta64(PAIR_OFFSET_MS, "ms"), i))
            if i % 9 == 5:
                acquisitions.append(self._acquisition(t + np.timedelta64(ORBIT_OFFSET_MS, "ms"), i + 1))
        return sorted(acquisitions, key=lambda a: a.time)

    def _acquisition(self, t: np.datetime64, orbit: int) -> Acquisition:
        seconds = int(t.astype("datetime64[s]").astype(np.int64))
        cover = self.scene._cloud_params(seconds)[1]  # the scene's own cloud fraction of that date
        stamp = str(t.astype("datetime64[s]")).replace("-", "").replace(":", "")
        sat = "A" if orbit % 2 == 0 else "B"
        ident = f"S2{sat}_MSIL1C_{stamp}_N0510_R{orbit % 143 + 1:03d}_T33TWL_{stamp}"
        return Acquisition(ident, t, round(100.0 * cover, 2))

    def _find(self, start: np.datetime64, end: np.datetime64, area) -> list[Acquisition]:
        if not area.intersects(self.coverage):
            return []
        found = []
        for year in self.years:
            found += [a for a in self._calendar[year] if start <= a.time <= end]
        return found

    # --- endpoints ---------------------------------------------------------------------------

    def token(self, headers, body: bytes) -> tuple[int, dict]:
        if "application/x-www-form-urlencoded" not in headers.get("Content-Type", ""):
            return 400, {"error": "invalid_request", "error_description": "Expected a form-encoded body"}
        form = {k: v[0] for k, v in urllib.parse.parse_qs(body.decode()).items()}
        client_id, client_secret = form.get("client_id"), form.get("client_secret")
        auth = headers.get("Authorization", "")
        if auth.startswith("Basic "):
            client_id, _, client_secret = base64.b64decode(auth[6:]).decode().partition(":")
        if form.get("grant_type") != "client_credentials":
            return 400, {"error": "unsupported_grant_type", "error_description": "Unsupported grant_type"}
        if client_id != self.client_id or client_secret != self.client_secret:
            return 401, {"error": "invalid_client", "error_description": "Invalid client or Invalid client credentials"}
        token = _fake_jwt({"azp": client_id, "exp": int(time.time()) + self.token_expires_in, "jti": str(uuid.uuid4())})
        with self._lock:
            self._tokens[token] = time.time() + self.token_expires_in
        answer = {"access_token": token, "expires_in": self.token_expires_in, "token_type": "Bearer"}
        return 200, {**answer, "refresh_expires_in": 0, "not-before-policy": 0, "scope": "email profile"}

    def authorize(self, headers) -> None:
        auth = headers.get("Authorization", "")
        expiry = self._tokens.get(auth[7:]) if auth.startswith("Bearer ") else None
        if expiry is None or expiry < time.time():
            raise ApiError(
                401,
                "You are not authorized! Please provide a valid access token to send it in header "
                "Authorization: Bearer <accessToken>",
                "COMMON_UNAUTHORIZED",
            )

    def catalog_search(self, request: dict) -> dict:
        collections_ = request.get("collections") or []
        if len(collections_) != 1 or collections_[0] not in COLLECTIONS:
            raise ApiError(400, f"Exactly one known collection expected, got {collections_}")
        limit = int(request.get("limit", 10))
        if not 1 <= limit <= 100:
            raise ApiError(400, "limit must be between 1 and 100")
        offset = int(request.get("next", 0))
        start, end = _interval(request.get("datetime"))
        area = self._search_area(request)
        found = [a for a in self._find(start, end, area) if _cql2_match(request.get("filter"), _properties(a))]
        page = found[offset : offset + limit]
        features = [self._feature(a, collections_[0], request.get("fields")) for a in page]
        context = {"limit": limit, "returned": len(page)}
        links = [{"href": f"{CATALOG_SEARCH_PATH}", "rel": "self", "type": "application/json"}]
        if offset + limit < len(found):
            context["next"] = offset + limit
            links.append(
                {"href": CATALOG_SEARCH_PATH, "rel": "next", "method": "POST", "body": {"next": offset + limit}}
            )
        return {"type": "FeatureCollection", "features": features, "links": links, "context": context}

    def _search_area(self, request: dict):
        if "intersects" in request:
            return shape(request["intersects"])
        if "bbox" not in request:
            return self.coverage
        minx, miny, maxx, maxy = request["bbox"]
        crs = request.get("bbox-crs", "http://www.opengis.net/def/crs/OGC/1.3/CRS84")
        if "CRS84" not in crs:
            to_lonlat = Transformer.from_crs(_parse_crs(crs), "OGC:CRS84", always_xy=True)
            xs, ys = to_lonlat.transform([minx, maxx, minx, maxx], [miny, miny, maxy, maxy])
            minx, miny, maxx, maxy = min(xs), min(ys), max(xs), max(ys)
        return box(minx, miny, maxx, maxy)

    def _feature(self, a: Acquisition, collection: str, fields: dict | None) -> dict:
        feature = {
            "stac_version": "1.0.0",
            "stac_extensions": ["https://stac-extensions.github.io/eo/v1.0.0/schema.json"],
            "type": "Feature",
            "id": a.id if collection.endswith("l1c") else a.id.replace("MSIL1C", "MSIL2A"),
            "collection": collection,
            "geometry": mapping(self.coverage),
            "bbox": list(self.coverage.bounds),
            "properties": _properties(a),
            "assets": {},
            "links": [],
        }
        include = (fields or {}).get("include")
        if include:
            props = {k.split(".", 1)[1] for k in include if k.startswith("properties.")}
            keep = {k for k in include if "." not in k} | {"type", "id"}
            feature = {k: v for k, v in feature.items() if k in keep or k == "properties"}
            feature["properties"] = {k: v for k, v in feature["properties"].items() if k in props}
        return feature

    def process(self, request: dict, accept: str) -> tuple[bytes, str]:
        if accept not in ("", "*/*", "image/tiff"):
            raise ApiError(406, f"Cannot produce {accept}; the request asks for image/tiff")
        bounds = request["input"]["bounds"]
        crs = _parse_crs(bounds.get("properties", {}).get("crs", "http://www.opengis.net/def/crs/OGC/1.3/CRS84"))
        if not crs.is_projected:
            raise ApiError(400, "This fake only renders projected CRSs")
        minx, miny, maxx, maxy = bounds["bbox"]
        output = request.get("output", {})
        if "width" in output:
            width, height = int(output["width"]), int(output["height"])
        else:
            width, height = round((maxx - minx) / output["resx"]), round((maxy - miny) / output["resy"])
        if width > self.max_px or height > self.max_px:
            raise ApiError(400, f"Output size {width}x{height} exceeds the limit of {self.max_px}x{self.max_px} pixels")
        responses = output.get("responses", [{"identifier": "default", "format": {"type": "image/png"}}])
        if len(responses) != 1 or responses[0]["format"]["type"] != "image/tiff":
            raise ApiError(400, "This fake answers one image/tiff response")

        (data,) = request["input"]["data"]
        if data.get("type") not in COLLECTIONS:
            raise ApiError(400, f"Unknown data collection type {data.get('type')!r}")
        script = _parse_evalscript(request.get("evalscript", ""), COLLECTIONS[data["type"]] + AUX_BANDS[data["type"]])
        if script["output_id"] != responses[0]["identifier"]:
            raise ApiError(400, f"Output {responses[0]['identifier']!r} is not declared by the evalscript")

        data_filter = data.get("dataFilter", {})
        time_range = data_filter.get("timeRange", {})
        start, end = _interval(f"{time_range.get('from', '..')}/{time_range.get('to', '..')}")
        max_cc = float(data_filter.get("maxCloudCoverage", 100))
        order = data_filter.get("mosaickingOrder", "mostRecent")
        harmonize = data.get("processing", {}).get("harmonizeValues", True)
        to_lonlat = Transformer.from_crs(crs, "OGC:CRS84", always_xy=True)
        area = box(*to_lonlat.transform_bounds(minx, miny, maxx, maxy))
        tiles = [a for a in self._find(start, end, area) if a.cloud_cover <= max_cc]
        if order == "mostRecent":
            tiles.sort(key=lambda a: a.time, reverse=True)
        elif order == "leastCC":
            tiles.sort(key=lambda a: a.cloud_cover)

        resx, resy = (maxx - minx) / width, (maxy - miny) / height
        grid = PixelGrid(crs.to_string(), (resx, 0.0, minx, 0.0, -resy, maxy), (height, width))
        spectral = [b for b in script["bands"] if b in L1C_BANDS]
        band_index = [L1C_BANDS.index(b) for b in spectral]
        aux = [b for b in script["bands"] if b not in L1C_BANDS and b != "dataMask"]
        for band, unit in zip(script["bands"], script["units"], strict=True):
            wanted = "DEGREES" if band in ANGLE_BANDS else ("DN", "REFLECTANCE") if band in L1C_BANDS else "DN"
            if unit not in wanted and band != "dataMask":
                raise ApiError(400, f"Units {unit} are not supported for band {band}")
        dn = np.zeros((height, width, len(band_index)), np.float32)
        aux_values = {b: np.full((height, width), 255.0 if b == "CLM" else 0.0, np.float32) for b in aux}
        filled = np.zeros((height, width), bool)
        for tile in tiles:  # SIMPLE mosaicking: each pixel from the first tile (in order) with data
            rendered = self.scene.render(grid, tile.year, np.array([tile.render_time]))
            take = rendered.data_mask[0] & ~filled
            values = rendered.bands[0][..., band_index].astype(np.float32)
            if not harmonize and tile.time >= BASELINE_04_START:
                values += 1000.0  # BOA/TOA_ADD_OFFSET of processing baseline 04.00+
            dn[take] = values[take]
            if aux:
                self._aux_values(grid, tile, rendered, aux, take, aux_values)
            filled |= take
            if filled.all():
                break

        planes, i = [], 0
        for band, unit in zip(script["bands"], script["units"], strict=True):
            if band == "dataMask":
                planes.append(filled.astype(np.float32))
            elif band in aux_values:
                planes.append(aux_values[band])
            else:
                planes.append(dn[..., i] if unit == "DN" else dn[..., i] / 10_000.0)
                i += 1
        image = _to_sample_type(np.stack(planes), script["sample_type"])
        return _geotiff(image, crs, Affine(resx, 0.0, minx, 0.0, -resy, maxy)), "image/tiff"

    def _aux_values(self, grid, tile: Acquisition, rendered, bands, take, out) -> None:
        """The auxiliary bands of one acquisition where it supplies the pixels (`take`)."""
        for band in bands:
            if band == "CLM":
                value = rendered.cloud_mask[0].astype(np.float32)
            elif band == "CLP":
                value = np.clip(self.scene.cloud_opacity(grid, np.array([tile.render_time]))[0], 0, 1) * 255.0
            elif band == "SCL":
                l2a = rendered.bands[..., L2A_INDEX]
                scl = _scene_classification(
                    l2a, rendered.data_mask, rendered.cloud_mask, rendered.shadow_mask, rendered.land_cover
                )
                value = scl[0].astype(np.float32)
            else:
                azimuth, zenith = self.scene.sun_angles(np.array([tile.render_time]))
                value = np.full(take.shape, (azimuth if band == "sunAzimuthAngles" else zenith)[0], np.float32)
            out[band][take] = value[take]

    # --- bookkeeping -------------------------------------------------------------------------

    def enter(self, endpoint: str) -> _Fault | None:
        with self._lock:
            self.counts[endpoint] += 1
            self._in_flight[endpoint] += 1
            self.max_in_flight[endpoint] = max(self.max_in_flight[endpoint], self._in_flight[endpoint])
            faults = self._faults[endpoint]
            if not faults:
                return None
            fault = faults[0]
            fault.remaining -= 1
            if fault.remaining <= 0:
                faults.popleft()
            return fault

    def leave(self, endpoint: str) -> None:
        with self._lock:
            self._in_flight[endpoint] -= 1


class _Handler(BaseHTTPRequestHandler):
    service: FakeSentinelHub
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        self._send(405, {"error": {"status": 405, "reason": "Method Not Allowed", "message": "Use POST"}})

    def do_POST(self) -> None:
        path = urllib.parse.urlparse(self.path).path
        endpoint = (
            "token" if path in TOKEN_PATHS else {CATALOG_SEARCH_PATH: "catalog", PROCESS_PATH: "process"}.get(path)
        )
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if endpoint is None:
            self._send(404, ApiError(404, f"No such endpoint {path}", "COMMON_NOT_FOUND").body())
            return
        service = self.service
        fault = service.enter(endpoint)
        try:
            if fault is not None and fault.stall_s:
                time.sleep(fault.stall_s)  # the client has given up by now; answer anyway
            if fault is not None and fault.status:
                headers = {"Retry-After": str(fault.retry_after_ms)} if fault.retry_after_ms is not None else {}
                message = "You have exceeded the rate limit" if fault.status == 429 else "Internal server error"
                self._send(fault.status, ApiError(fault.status, message, "COMMON_EXCEPTION").body(), headers)
                return
            if endpoint == "token":
                status, answer = service.token(self.headers, body)
                self._send(status, answer)
                return
            try:
                service.authorize(self.headers)
                if self.headers.get("Content-Type", "").split(";")[0].strip().lower() != "application/json":
                    raise ApiError(415, "Content-Type must be application/json")
                request = json.loads(body)
                with service._lock:
                    service.bodies[endpoint].append(request)
                if endpoint == "catalog":
                    self._send(200, service.catalog_search(request), content_type="application/geo+json")
                else:
                    content, content_type = service.process(request, self.headers.get("Accept", ""))
                    self._send_bytes(200, content, content_type)
            except ApiError as exc:
                self._send(exc.status, exc.body())
            except (KeyError, ValueError, TypeError) as exc:
                self._send(400, ApiError(400, f"Invalid request: {type(exc).__name__}: {exc}").body())
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client timed out and closed the connection
        finally:
            service.leave(endpoint)

    def _send(self, status: int, answer: dict, headers: dict | None = None, content_type="application/json") -> None:
        self._send_bytes(status, json.dumps(answer).encode(), content_type, headers)

    def _send_bytes(self, status: int, content: bytes, content_type: str, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(content)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(content)


# ---------------------------------------------------------------------------------------------
# Helpers.
# ---------------------------------------------------------------------------------------------


def _fake_jwt(claims: dict) -> str:
    def part(obj: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'RS256', 'typ': 'JWT'})}.{part(claims)}.{uuid.uuid4().hex}"


def _properties(a: Acquisition) -> dict:
    return {
        "datetime": a.datetime,
        "platform": f"sentinel-2{a.id[2].lower()}",
        "instruments": ["msi"],
        "constellation": "sentinel-2",
        "gsd": 10,
        "eo:cloud_cover": a.cloud_cover,
        "proj:epsg": 32633,
    }


def _parse_time(text: str, end: bool) -> np.datetime64:
    if text in ("", ".."):
        return np.datetime64("9999-12-31T23:59:59", "ms") if end else np.datetime64("0001-01-01", "ms")
    text = text.strip().removesuffix("Z").removesuffix("+00:00")
    return np.datetime64(text, "ms")


def _interval(value: str | None) -> tuple[np.datetime64, np.datetime64]:
    """A STAC datetime ("a/b", open ends as ".."; or one instant), both ends inclusive."""
    if not value:
        return _parse_time("..", False), _parse_time("..", True)
    start, _, end = value.partition("/")
    return _parse_time(start, False), _parse_time(end if end else start, True)


def _parse_crs(text: str) -> CRS:
    match = re.search(r"EPSG/0/(\d+)$", text)
    if match:
        return CRS.from_epsg(int(match.group(1)))
    if "CRS84" in text:
        return CRS.from_user_input("OGC:CRS84")
    raise ApiError(400, f"Unsupported CRS {text!r}")


_CQL2_TERM = re.compile(r"^\s*([\w:]+)\s*(<=|>=|<>|<|>|=)\s*('?)([^']*)\3\s*$")


def _cql2_match(text: str | None, props: dict) -> bool:
    """CQL2 text: comparisons of feature properties joined by AND."""
    if not text:
        return True
    for term in re.split(r"\s+and\s+", text, flags=re.IGNORECASE):
        match = _CQL2_TERM.match(term)
        if not match or match.group(1) not in props:
            raise ApiError(400, f"Unsupported or unknown filter term {term!r}")
        name, op, quoted, literal = match.groups()
        value = props[name]
        other = literal if quoted else float(literal)
        ok = {
            "<=": value <= other,
            ">=": value >= other,
            "<": value < other,
            ">": value > other,
            "=": value == other,
            "<>": value != other,
        }[op]
        if not ok:
            return False
    return True


def _parse_evalscript(script: str, collection_bands: tuple[str, ...]) -> dict:
    """Input bands and units, output id, band count and sample type of a V3 evalscript's setup()."""
    if not script.lstrip().startswith("//VERSION=3"):
        raise ApiError(400, "Only evalscript V3 is supported by this fake")
    inputs = re.search(r"input\s*:\s*\[\s*\{\s*bands\s*:\s*\[([^\]]*)\]", script)
    if not inputs:
        raise ApiError(400, "Cannot find the input bands in the evalscript's setup()")
    bands = re.findall(r'"(\w+)"', inputs.group(1))
    unknown = [b for b in bands if b not in (*collection_bands, "dataMask")]
    if unknown:
        raise ApiError(400, f"Unknown bands {unknown} for this collection")
    units = re.search(r'units\s*:\s*(?:"(\w+)"|\[([^\]]*)\])', script)
    out = re.search(r"output\s*:\s*\{([^}]*)\}", script)
    if not out:
        raise ApiError(400, "Cannot find the output in the evalscript's setup()")
    out_id = re.search(r'id\s*:\s*"(\w+)"', out.group(1))
    out_bands = re.search(r"bands\s*:\s*(\d+)", out.group(1))
    sample_type = re.search(r'sampleType\s*:\s*"?(\w+)"?', out.group(1))
    if not out_bands or int(out_bands.group(1)) != len(bands):
        raise ApiError(400, "The fake returns the input bands: output bands must equal the number of inputs")
    if units is None:
        per_band = ["REFLECTANCE"] * len(bands)
    elif units.group(1):
        per_band = [units.group(1)] * len(bands)
    else:
        per_band = re.findall(r'"(\w+)"', units.group(2))
        if len(per_band) != len(bands):
            raise ApiError(400, "units must list one unit per input band")
    return {
        "bands": bands,
        "units": per_band,
        "output_id": out_id.group(1) if out_id else "default",
        "sample_type": (sample_type.group(1) if sample_type else "AUTO").upper(),
    }


def _to_sample_type(values: np.ndarray, sample_type: str) -> np.ndarray:
    """Rounded and clamped as the service does for integer outputs; AUTO stretches 0..1 to 0..255."""
    if sample_type == "FLOAT32":
        return values.astype(np.float32)
    if sample_type == "AUTO":
        values, sample_type = values * 255.0, "UINT8"
    dtype = {"UINT8": np.uint8, "UINT16": np.uint16, "INT8": np.int8, "INT16": np.int16}.get(sample_type)
    if dtype is None:
        raise ApiError(400, f"Unsupported sampleType {sample_type}")
    info = np.iinfo(dtype)
    return np.clip(np.rint(values), info.min, info.max).astype(dtype)


def _geotiff(image: np.ndarray, crs: CRS, transform: Affine) -> bytes:
    """(bands, height, width) as a pixel-interleaved GeoTIFF, as the service returns it."""
    count, height, width = image.shape
    profile = {
        "driver": "GTiff",
        "count": count,
        "height": height,
        "width": width,
        "dtype": image.dtype.name,
        "crs": crs.to_wkt(),
        "transform": transform,
        "interleave": "pixel",
    }
    with rasterio.MemoryFile() as memfile:
        with memfile.open(**profile) as dst:
            dst.write(image)
        return bytes(memfile.read())
