"""Shared fixtures: real data from ../shared/data, a moto S3 server on 127.0.0.1, a Prefect test server."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import uuid
from pathlib import Path

import pytest
from postgis_server import postgis_dsn  # noqa: F401 - PostGIS test server fixture (tests/postgis_server.py)

from lcms.prefect_env import configure_prefect_defaults

# The commands the tests run keep their history and temporary files in a folder of the session's own
# (lcms/runtime.py), and Prefect's ephemeral servers theirs: never in the user's ~/.prefect or ./lcms-runs.
_SESSION_HOME = tempfile.mkdtemp(prefix="lcms-test-home-")
atexit.register(shutil.rmtree, _SESSION_HOME, True)
os.environ.setdefault("LCMS_HOME", _SESSION_HOME)
os.environ.setdefault("PREFECT_HOME", os.path.join(os.environ["LCMS_HOME"], "prefect"))
configure_prefect_defaults()

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real Sentinel-2 material beside the repository (never copied into it)."""
    assert SHARED_DATA.is_dir(), f"expected the shared data folder at {SHARED_DATA}"
    return SHARED_DATA


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3 endpoint: moto's server on 127.0.0.1, with dummy credentials in the environment."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_ENDPOINT_URL": endpoint,
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield endpoint
    server.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def s3_bucket(s3_endpoint) -> str:
    """A fresh, empty bucket; returns its s3:// URL."""
    import boto3

    name = f"lcms-test-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return f"s3://{name}"


@pytest.fixture(scope="session")
def prefect_server():
    """A temporary Prefect API server (SQLite) for tests that run flows."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def sentinel_hub(monkeypatch):
    """The local Sentinel Hub (tests/sentinelhub_service.py), with fast retries and its credentials set."""
    from sentinelhub_service import FakeSentinelHub

    from tasks.download.sentinelhub_source import SentinelHubSource

    monkeypatch.setattr(SentinelHubSource, "RETRY_BACKOFF_S", 0.01)
    monkeypatch.setattr(SentinelHubSource, "MIN_REQUEST_INTERVAL_S", 0.0)
    with FakeSentinelHub() as service:
        monkeypatch.setenv("SH_CLIENT_ID", service.client_id)
        monkeypatch.setenv("SH_CLIENT_SECRET", service.client_secret)
        yield service


@pytest.fixture(scope="session")
def serve_world(tmp_path_factory):
    """`lcms serve --demo` over a small store with change polygons and users of every role (serve_support.py)."""
    from serve_support import World

    world = World(tmp_path_factory.mktemp("serve"))
    yield world
    world.close()
