"""SentinelHubSource against a local fake of Sentinel Hub (tests/sentinelhub_service.py).

The real sentinelhub-py client code runs; only the service is local. Expected values are
rendered independently with SyntheticScene from the fake's public acquisition calendar.
"""

from __future__ import annotations

import logging
import math
import pickle
import time
import uuid

import numpy as np
import pytest
import requests
from sentinelhub import DataCollection, SentinelHubCatalog
from sentinelhub_service import FakeSentinelHub  # tests/ is on sys.path (rootdir-relative imports)

from flows.download import resolve_credentials
from lcms.config import SentinelHubSourceConfig
from lcms.geometry import PixelGrid
from lcms.sentinel2 import L1C_BANDS, L2A_BANDS
from tasks.download.sentinelhub_source import SentinelHubSource
from tasks.download.sources import SourceError

YEAR = 2024
# 1.6 km x 1.2 km in UTM 33N, inside the fake's tile footprint.
GRID = PixelGrid.from_bounds("EPSG:32633", (500_000, 5_000_000, 501_600, 5_001_200), 10)


@pytest.fixture
def service():
    with FakeSentinelHub() as svc:
        yield svc


@pytest.fixture(autouse=True)
def fast_and_isolated(monkeypatch):
    """Short backoff for the retry tests; no credentials leaking in from the real environment."""
    monkeypatch.setattr(SentinelHubSource, "RETRY_BACKOFF_S", 0.01)
    monkeypatch.setattr(SentinelHubSource, "MIN_REQUEST_INTERVAL_S", 0.0)
    monkeypatch.delenv("SH_CLIENT_ID", raising=False)
    monkeypatch.delenv("SH_CLIENT_SECRET", raising=False)


@pytest.fixture
def creds(service, monkeypatch):
    monkeypatch.setenv("SH_CLIENT_ID", service.client_id)
    monkeypatch.setenv("SH_CLIENT_SECRET", service.client_secret)


def make_source(service: FakeSentinelHub, **overrides) -> SentinelHubSource:
    params = {"max_retries": 3, "request_timeout_s": 10.0, **overrides}
    cfg = SentinelHubSourceConfig(kind="sentinelhub", base_url=service.url, token_url=service.token_url, **params)
    return SentinelHubSource(cfg)


def groups(service: FakeSentinelHub, year: int, minutes: float, max_cc: float = 100.0) -> list[list]:
    """The calendar's acquisitions grouped as the source must: each group holds the acquisitions
    within `minutes` of its first one."""
    out: list[list] = []
    for a in service.calendar(year):
        if a.cloud_cover > max_cc:
            continue
        if out and a.time - out[-1][0].time <= np.timedelta64(int(minutes * 60_000), "ms"):
            out[-1].append(a)
        else:
            out.append([a])
    return out


def group_date(group: list) -> np.datetime64:
    return group[0].time.astype("datetime64[s]")


def expected_read(service: FakeSentinelHub, grid: PixelGrid, chosen: list[list], bands=L1C_BANDS):
    """Independent rendering: each group's acquisitions in time order, each pixel from the first with data."""
    idx = [L1C_BANDS.index(b) for b in bands]
    out = np.zeros((len(chosen), *grid.shape, len(bands)), np.uint16)
    mask = np.zeros((len(chosen), *grid.shape), bool)
    for t, group in enumerate(chosen):
        for a in group:
            tile = service.scene.render(grid, a.year, np.array([a.render_time]))
            take = tile.data_mask[0] & ~mask[t]
            out[t][take] = tile.bands[0][..., idx][take]
            mask[t] |= take
    return out, mask


# --- acquisition_dates --------------------------------------------------------------------------


def test_acquisition_dates_merge_same_day_acquisitions(service, creds):
    dates = make_source(service).acquisition_dates(GRID, YEAR)  # default: 120 minutes
    expected = np.array([group_date(g) for g in groups(service, YEAR, 120)], dtype="datetime64[s]")
    assert dates.dtype == np.dtype("datetime64[s]")
    np.testing.assert_array_equal(dates, expected)
    # The fake's pairs (4 min apart) and overlapping orbits (101 min) all merge: the scene's own dates remain.
    np.testing.assert_array_equal(dates, service.scene.acquisition_dates(YEAR))
    assert len(service.calendar(YEAR)) > len(dates)

    # 60 minutes keeps the overlapping orbits apart; 0 keeps every acquisition.
    hour = make_source(service, time_difference_minutes=60).acquisition_dates(GRID, YEAR)
    np.testing.assert_array_equal(hour, [group_date(g) for g in groups(service, YEAR, 60)])
    assert len(dates) < len(hour) < len(service.calendar(YEAR))
    every = make_source(service, time_difference_minutes=0).acquisition_dates(GRID, YEAR)
    assert len(every) == len(service.calendar(YEAR))


def test_acquisition_dates_max_cloud_cover(service, creds):
    dates = make_source(service, max_cloud_cover=0.3).acquisition_dates(GRID, YEAR)
    expected = [group_date(g) for g in groups(service, YEAR, 120, max_cc=30.0)]
    np.testing.assert_array_equal(dates, np.array(expected, dtype="datetime64[s]"))
    assert 0 < len(dates) < len(service.scene.acquisition_dates(YEAR))
    assert service.bodies["catalog"][-1]["filter"] == "eo:cloud_cover <= 30"


def test_acquisition_dates_pagination(service, creds, monkeypatch):
    monkeypatch.setattr(SentinelHubSource, "CATALOG_PAGE_SIZE", 10)
    dates = make_source(service, time_difference_minutes=0).acquisition_dates(GRID, YEAR)
    n = len(service.calendar(YEAR))
    assert len(dates) == n
    assert service.counts["catalog"] == math.ceil(n / 10)
    assert [body.get("next") for body in service.bodies["catalog"]] == [None, *range(10, n, 10)]


def test_acquisition_dates_empty(service, creds):
    source = make_source(service)
    empty = source.acquisition_dates(GRID, 2021)  # a year the fake has no data for
    assert empty.dtype == np.dtype("datetime64[s]") and empty.shape == (0,)
    far = PixelGrid.from_bounds("EPSG:32633", (300_000, 6_000_000, 300_640, 6_000_640), 10)  # off the footprint
    assert source.acquisition_dates(far, YEAR).shape == (0,)
    bands, mask = source.read(GRID, empty)
    assert bands.shape == (0, *GRID.shape, 13) and bands.dtype == np.uint16
    assert mask.shape == (0, *GRID.shape) and mask.dtype == bool


# --- read ---------------------------------------------------------------------------------------


def _chosen_groups(service: FakeSentinelHub) -> list[list]:
    """A few plain dates plus every merged date whose first acquisition lacks data somewhere on GRID."""
    all_groups = groups(service, YEAR, 120)
    partial = [
        g
        for g in all_groups
        if len(g) > 1 and not service.scene.render(GRID, YEAR, np.array([g[0].render_time])).data_mask.all()
    ]
    assert partial, "the fake's calendar should have a merged date whose first tile misses part of the grid"
    return all_groups[:3] + partial


def test_read_matches_synthetic_scene(service, creds):
    source = make_source(service)
    chosen = _chosen_groups(service)
    dates = np.array([group_date(g) for g in chosen], dtype="datetime64[s]")
    bands, mask = source.read(GRID, dates)

    expected_bands, expected_mask = expected_read(service, GRID, chosen)
    assert bands.dtype == np.uint16 and bands.shape == (len(dates), *GRID.shape, 13)
    assert mask.dtype == bool and mask.shape == (len(dates), *GRID.shape)
    np.testing.assert_array_equal(mask, expected_mask)
    np.testing.assert_array_equal(bands, expected_bands)  # DN end to end: no rounding at all
    assert (bands[~mask] == 0).all()
    assert not mask.all() and mask.any()
    # The merged dates really are mosaics: the first acquisition alone would leave gaps.
    first_only = expected_read(service, GRID, [g[:1] for g in chosen])[1]
    assert mask.sum() > first_only.sum()

    body = service.bodies["process"][-1]
    data = body["input"]["data"][0]
    assert body["input"]["bounds"] == {
        "properties": {"crs": "http://www.opengis.net/def/crs/EPSG/0/32633"},
        "bbox": list(GRID.bounds),
    }
    assert (body["output"]["width"], body["output"]["height"]) == (GRID.width, GRID.height)
    assert data["type"] == "sentinel-2-l1c"
    assert data["processing"] == {"harmonizeValues": True}
    assert data["dataFilter"]["mosaickingOrder"] == "leastRecent"
    assert service.counts["process"] == len(dates)


def test_read_l2a_band_selection(service, creds):
    source = make_source(service, collection="L2A")
    assert source.band_names == L2A_BANDS
    chosen = groups(service, YEAR, 120)[:2]
    bands, mask = source.read(GRID, np.array([group_date(g) for g in chosen], dtype="datetime64[s]"))
    expected_bands, expected_mask = expected_read(service, GRID, chosen, L2A_BANDS)
    np.testing.assert_array_equal(bands, expected_bands)
    np.testing.assert_array_equal(mask, expected_mask)
    assert service.bodies["process"][-1]["input"]["data"][0]["type"] == "sentinel-2-l2a"


def test_read_splits_grids_over_the_size_limit(service, creds, monkeypatch):
    grid = GRID.window(slice(0, 70), slice(0, 100))
    chosen = _chosen_groups(service)[-2:]
    dates = np.array([group_date(g) for g in chosen], dtype="datetime64[s]")
    whole = make_source(service).read(grid, dates)

    service.max_px = 32  # the fake now refuses anything larger, as the real one does above 2500
    with pytest.raises(SourceError, match="HTTP 400"):
        make_source(service).read(grid, dates)
    refused = service.counts["process"]

    monkeypatch.setattr(SentinelHubSource, "MAX_REQUEST_PX", 32)
    split = make_source(service).read(grid, dates)
    assert service.counts["process"] - refused == len(dates) * 3 * 4  # 70 rows -> 3 parts, 100 columns -> 4
    np.testing.assert_array_equal(split[0], whole[0])
    np.testing.assert_array_equal(split[1], whole[1])
    np.testing.assert_array_equal(split[0], expected_read(service, grid, chosen)[0])


# --- retries, errors, concurrency ---------------------------------------------------------------


def _one_date(service):
    chosen = groups(service, YEAR, 120)[:1]
    return np.array([group_date(chosen[0])], dtype="datetime64[s]"), expected_read(service, GRID, chosen)


def test_429_is_retried_after_retry_after(service, creds):
    dates, (expected_bands, _) = _one_date(service)
    source = make_source(service)
    source.acquisition_dates(GRID, YEAR)  # token and catalog first, so only the Process requests are timed
    service.inject("process", status=429, count=2, retry_after_ms=300)
    start = time.monotonic()
    bands, _ = source.read(GRID, dates)
    assert time.monotonic() - start >= 0.6  # two waits of at least Retry-After (milliseconds)
    assert service.counts["process"] == 3
    np.testing.assert_array_equal(bands, expected_bands)


def test_5xx_is_retried(service, creds):
    dates, (expected_bands, _) = _one_date(service)
    source = make_source(service)
    service.inject("catalog", status=503)
    assert len(source.acquisition_dates(GRID, YEAR)) > 0
    assert service.counts["catalog"] == 2
    service.inject("process", status=500)
    service.inject("process", status=503)
    bands, _ = source.read(GRID, dates)
    assert service.counts["process"] == 3
    np.testing.assert_array_equal(bands, expected_bands)


def test_timeout_is_retried(service, creds):
    dates, (expected_bands, _) = _one_date(service)
    source = make_source(service, request_timeout_s=0.5)
    source.acquisition_dates(GRID, YEAR)
    service.inject("process", stall_s=1.5)
    bands, _ = source.read(GRID, dates)
    assert service.counts["process"] == 2
    np.testing.assert_array_equal(bands, expected_bands)


def test_retries_exhausted(service, creds):
    dates, _ = _one_date(service)
    source = make_source(service, max_retries=2)
    source.acquisition_dates(GRID, YEAR)
    service.inject("process", status=503, count=10)
    with pytest.raises(SourceError, match=r"failed 3 times \(max_retries=2\).*HTTP 503"):
        source.read(GRID, dates)
    assert service.counts["process"] == 3


def test_token_5xx_is_retried(service, creds):
    service.inject("token", status=502)
    assert len(make_source(service).acquisition_dates(GRID, YEAR)) > 0
    assert service.counts["token"] == 2


def test_token_is_refreshed_before_expiry(monkeypatch):
    # sentinelhub-py's session renews a token within 120 s of its expiry: with 60 s tokens, every request.
    with FakeSentinelHub(token_expires_in=60) as service:
        monkeypatch.setenv("SH_CLIENT_ID", service.client_id)
        monkeypatch.setenv("SH_CLIENT_SECRET", service.client_secret)
        dates, (expected_bands, _) = _one_date(service)
        bands, _ = make_source(service).read(GRID, dates)
        np.testing.assert_array_equal(bands, expected_bands)
        assert service.counts["token"] == 2


def test_wrong_credentials_fail_at_once(service, monkeypatch):
    monkeypatch.setenv("SH_CLIENT_ID", service.client_id)
    monkeypatch.setenv("SH_CLIENT_SECRET", "not-the-secret")
    source = make_source(service, max_retries=5, max_concurrent_requests=8)
    with pytest.raises(SourceError, match="rejected the OAuth client credentials.*401.*invalid_client"):
        source.acquisition_dates(GRID, YEAR)
    dates = np.array(["2024-05-01T10:00:00"] * 16, dtype="datetime64[s]")
    with pytest.raises(SourceError, match="rejected the OAuth client credentials"):
        source.read(GRID, dates)
    assert service.counts["token"] <= 2
    assert service.counts["catalog"] == service.counts["process"] == 0


def test_concurrency_is_bounded(service, creds):
    chosen = groups(service, YEAR, 120)[:10]
    dates = np.array([group_date(g) for g in chosen], dtype="datetime64[s]")
    source = make_source(service, max_concurrent_requests=2)
    bands, _ = source.read(GRID, dates)
    assert service.counts["process"] == 10
    assert 1 <= service.max_in_flight["process"] <= 2
    np.testing.assert_array_equal(bands, expected_read(service, GRID, chosen)[0])


# --- credentials --------------------------------------------------------------------------------


def test_credentials_from_environment(monkeypatch):
    cfg = SentinelHubSourceConfig(kind="sentinelhub", client_id_block="lcms-id", client_secret_block="lcms-secret")
    monkeypatch.setenv("SH_CLIENT_ID", "env-id")
    monkeypatch.setenv("SH_CLIENT_SECRET", "env-secret")
    assert resolve_credentials(cfg) == ("env-id", "env-secret")  # the environment wins over blocks


def test_missing_credentials_name_both_options():
    cfg = SentinelHubSourceConfig(kind="sentinelhub")
    with pytest.raises(SourceError) as info:
        resolve_credentials(cfg)
    message = str(info.value)
    assert "SH_CLIENT_ID" in message and "SH_CLIENT_SECRET" in message
    assert "Prefect Secret" in message and "client_id_block" in message


def test_credentials_from_prefect_secret_blocks(service, prefect_server, caplog):
    from prefect.blocks.system import Secret

    suffix = uuid.uuid4().hex[:8]
    Secret(value=service.client_id).save(f"sh-id-{suffix}", overwrite=True)
    Secret(value=service.client_secret).save(f"sh-secret-{suffix}", overwrite=True)
    cfg = SentinelHubSourceConfig(
        kind="sentinelhub",
        base_url=service.url,
        token_url=service.token_url,
        client_id_block=f"sh-id-{suffix}",
        client_secret_block=f"sh-secret-{suffix}",
    )
    caplog.set_level(logging.DEBUG)
    assert resolve_credentials(cfg) == (service.client_id, service.client_secret)
    assert len(SentinelHubSource(cfg, resolve_credentials(cfg)).acquisition_dates(GRID, YEAR)) > 0
    assert service.client_secret not in caplog.text

    missing = cfg.model_copy(update={"client_secret_block": f"no-such-block-{suffix}"})
    with pytest.raises(SourceError, match=f"no-such-block-{suffix}.*SH_CLIENT_ID"):
        resolve_credentials(missing)


def test_secrets_never_logged(service, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)  # every logger, urllib3 and sentinelhub included
    monkeypatch.setenv("SH_CLIENT_ID", service.client_id)
    monkeypatch.setenv("SH_CLIENT_SECRET", service.client_secret)
    source = make_source(service)
    dates = source.acquisition_dates(GRID, YEAR)
    source.read(GRID, dates[:2])
    wrong = "wrong-Zq7pW1mK"
    monkeypatch.setenv("SH_CLIENT_SECRET", wrong)
    with pytest.raises(SourceError) as info:
        make_source(service).acquisition_dates(GRID, YEAR)
    assert caplog.records
    for secret in (service.client_secret, wrong):
        assert secret not in caplog.text
        assert secret not in str(info.value)
    assert service.client_secret not in repr(source.sh_config)


# --- real service URLs (no network) -------------------------------------------------------------


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("no network access expected")

    monkeypatch.setattr(requests.Session, "send", refuse)


def test_default_service_is_sentinel_hub(no_network):
    source = SentinelHubSource(SentinelHubSourceConfig(kind="sentinelhub"))
    config = source.sh_config
    assert config.sh_base_url == "https://services.sentinel-hub.com"
    assert config.sh_token_url == "https://services.sentinel-hub.com/auth/realms/main/protocol/openid-connect/token"
    assert source.collection is DataCollection.SENTINEL2_L1C
    request = source._process_request(GRID, np.datetime64("2024-05-01T10:00:00"))
    assert request.url == "https://services.sentinel-hub.com/api/v1/process"
    assert SentinelHubCatalog(config=config).service_url == "https://services.sentinel-hub.com/api/v1/catalog/1.0.0"


@pytest.mark.parametrize("collection", ["L1C", "L2A"])
def test_cdse_service_urls(no_network, collection):
    source = SentinelHubSource(SentinelHubSourceConfig(kind="sentinelhub", service="cdse", collection=collection))
    config = source.sh_config
    assert config.sh_base_url == "https://sh.dataspace.copernicus.eu"
    assert (
        config.sh_token_url == "https://identity.dataspace.copernicus.eu/auth/realms/CDSE/protocol/openid-connect/token"
    )
    # Same collection ids as services.sentinel-hub.com, but bound to the CDSE URL: sentinelhub-py
    # would otherwise send Process requests of the predefined collection to services.sentinel-hub.com.
    assert source.collection.api_id == source.collection.catalog_id == f"sentinel-2-{collection.lower()}"
    assert source.collection.service_url == "https://sh.dataspace.copernicus.eu"
    request = source._process_request(GRID, np.datetime64("2024-05-01T10:00:00"))
    assert request.url == "https://sh.dataspace.copernicus.eu/api/v1/process"
    assert request.post_values["input"]["data"][0]["type"] == f"sentinel-2-{collection.lower()}"
    assert SentinelHubCatalog(config=config).service_url == "https://sh.dataspace.copernicus.eu/api/v1/catalog/1.0.0"


def test_source_pickles_after_use(service, creds):
    source = make_source(service)
    dates = source.acquisition_dates(GRID, YEAR)[:1]
    data = pickle.dumps(source)
    # Rebuilt from the config: no session, and no collection defined only in this process.
    assert b"LCMS_SENTINEL2" not in data and service.client_secret.encode() not in data
    clone = pickle.loads(data)
    np.testing.assert_array_equal(clone.read(GRID, dates)[0], source.read(GRID, dates)[0])
