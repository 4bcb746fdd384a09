"""S3 that stalls, drops and crawls: stage commands on an s3:// store reached through a TCP proxy
(tests/faults/tcp_proxy.py) in front of moto, with small S3 budgets set through the environment
(LCMS_S3_CONNECT_TIMEOUT / LCMS_S3_READ_TIMEOUT / LCMS_S3_MAX_ATTEMPTS, see lcms/store.py).

One bucket, one chain of stages, one fault each, injected once the stage's first writer has taken
its lease (seen by looking at moto directly, not through the proxy):

- slow: every connection forwards 8 KiB per 30 ms → the download completes;
- drop: every open connection reset, and the next three reset as their requests start → features
  completes (botocore's retries);
- a pause shorter than the budget (3 s; read timeout 2 s × 3 attempts) → reference completes;
- a pause longer than the budget (for good; read timeout 1 s × 2 attempts) → sampling fails within
  STALL_LIMIT_S, with a message naming the endpoint and the tile, and marks nothing done.
"""

from __future__ import annotations

import time
import uuid
from urllib.parse import urlsplit

import boto3
import pytest
from faultkit import TILE, command_env, record, small_config, start
from tcp_proxy import FaultProxy

BUDGET = {"LCMS_S3_CONNECT_TIMEOUT": "2", "LCMS_S3_READ_TIMEOUT": "2", "LCMS_S3_MAX_ATTEMPTS": "3"}
# The stalled command's budget: about 2 (s3fs) × 2 attempts × 1 s a call; a tile makes a few calls, twice (one retry).
STALL_BUDGET = {"LCMS_S3_CONNECT_TIMEOUT": "1", "LCMS_S3_READ_TIMEOUT": "1", "LCMS_S3_MAX_ATTEMPTS": "2"}
STALL_LIMIT_S = 120  # it must have failed by then


@pytest.fixture
def s3_chain(s3_endpoint, tmp_path, prefect_api, reference_gpkg):
    moto = urlsplit(s3_endpoint)
    bucket = f"lcms-faults-{uuid.uuid4().hex[:8]}"
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    client.create_bucket(Bucket=bucket)
    with FaultProxy(moto.hostname, moto.port) as proxy:
        cfg = small_config(tmp_path / "cfg", f"s3://{bucket}/store", reference_gpkg, years=[2023])
        env = command_env(tmp_path, prefect_api.url, AWS_ENDPOINT_URL=proxy.url, **BUDGET)
        yield proxy, client, bucket, cfg, env, tmp_path


def _keys(client, bucket: str, prefix: str) -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def _when_writing(command, client, bucket: str, stage: str, timeout: float = 240) -> bool:
    """Wait until a writer of `stage` holds a lease in the bucket (the stage is writing)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end and command.proc.poll() is None:
        if any(k.endswith("lease.json") for k in _keys(client, bucket, f"store/{stage}/")):
            return True
        time.sleep(0.05)
    return False


def _done(client, bucket: str, stage: str) -> list[str]:
    return [k for k in _keys(client, bucket, f"store/{stage}/") if k.endswith("done.json")]


def test_s3_slow_drop_short_and_long_pause(s3_chain):
    proxy, client, bucket, cfg, env, tmp = s3_chain
    problems = []

    # the download (which builds the grid first) through a crawling proxy
    proxy.slow(delay_s=0.03, chunk=8192)
    before = proxy.stats.bytes_up
    command = start(["download", str(cfg)], env, tmp / "logs" / "slow.log")
    code = command.wait(300)
    proxy.normal()
    sent = proxy.stats.bytes_up - before
    record(
        "S3 slow (8 KiB per 30 ms each way)",
        command.text,
        code,
        command.output() if code else None,
        command.seconds,
        f"completes; {sent // 1024} KiB sent slowly; download done: {bool(_done(client, bucket, 'download'))}",
    )
    assert code == 0, command.output()[-3000:]
    assert _done(client, bucket, "download") and sent > 1_000_000

    # features while connections are reset
    command = start(["features", str(cfg)], env, tmp / "logs" / "drop.log")
    writing = _when_writing(command, client, bucket, "features")
    dropped = proxy.drop()
    proxy.drop_next(3)
    code = command.wait(300)
    proxy.normal()
    record(
        "S3 drop (open connections reset, then the next 3 as they start)",
        command.text,
        code,
        command.output() if code else None,
        command.seconds,
        f"retried and completed; {proxy.stats.dropped} connections reset ({dropped} open at the fault); "
        f"features done: {bool(_done(client, bucket, 'features'))}",
    )
    assert writing, command.output()[-3000:]
    assert code == 0, command.output()[-3000:]
    assert proxy.stats.dropped >= 3 and _done(client, bucket, "features")

    # reference through a pause shorter than the budget
    command = start(["reference", str(cfg)], env, tmp / "logs" / "short-pause.log")
    writing = _when_writing(command, client, bucket, "reference")
    stalled = proxy.stats.stalled
    proxy.pause_on_next_request(3.0)
    code = command.wait(300)
    record(
        "S3 pause 3 s (budget: read timeout 2 s × 3 attempts)",
        command.text,
        code,
        command.output() if code else None,
        command.seconds,
        f"recovers; requests held: {proxy.stats.stalled - stalled}; "
        f"reference done: {bool(_done(client, bucket, 'reference'))}",
    )
    assert writing and code == 0, command.output()[-3000:]
    assert _done(client, bucket, "reference")
    if proxy.stats.stalled == stalled:
        problems.append("the short pause held back no request")

    # sampling through a stall that outlasts the budget
    command = start(["sampling", str(cfg)], {**env, **STALL_BUDGET}, tmp / "logs" / "long-pause.log")
    writing = _when_writing(command, client, bucket, "sampling")
    proxy.pause_on_next_request(None)
    paused_at = time.monotonic()
    try:
        code = command.wait(STALL_LIMIT_S + 60)
    finally:
        proxy.normal()
    took = time.monotonic() - paused_at
    output = command.output()
    record(
        "S3 pause for good (budget: read timeout 1 s × 2 attempts)",
        command.text,
        code,
        output,
        command.seconds,
        f"failed {took:.0f} s after the stall began; names the endpoint: {proxy.url in output}; "
        f"sampling marked done: {bool(_done(client, bucket, 'sampling'))}",
    )
    assert writing, output[-3000:]
    assert code not in (0, None), output[-3000:]
    assert took < STALL_LIMIT_S, f"the stalled stage took {took:.0f} s to fail"
    error_lines = [line for line in output.splitlines() if line.startswith("error:")]
    assert error_lines and proxy.url.split("//")[1] in error_lines[0], output[-3000:]
    assert TILE in error_lines[0], error_lines[0]
    assert not _done(client, bucket, "sampling")
    assert not problems, problems


def test_s3_timeouts_and_retries_are_defaults_that_configs_override(monkeypatch):
    import s3fs
    from botocore import handlers

    from lcms.store import S3_DEFAULTS, TileStore, s3_storage_options
    from tasks.export.publish import gdal_config

    for name in ("LCMS_S3_CONNECT_TIMEOUT", "LCMS_S3_READ_TIMEOUT", "LCMS_S3_MAX_ATTEMPTS", "GDAL_HTTP_LOW_SPEED_TIME"):
        monkeypatch.delenv(name, raising=False)
    assert s3_storage_options("/data/store", {"auto_mkdir": True}) == {"auto_mkdir": True}  # local: untouched
    config = s3_storage_options("s3://bucket/store")["config_kwargs"]
    assert config == {
        "connect_timeout": S3_DEFAULTS["connect_timeout"],
        "read_timeout": S3_DEFAULTS["read_timeout"],
        "retries": {"mode": "adaptive", "max_attempts": S3_DEFAULTS["max_attempts"]},
    }
    mine = {"endpoint_url": "http://x", "config_kwargs": {"read_timeout": 99, "retries": {"mode": "standard"}}}
    config = s3_storage_options("s3://bucket/store", mine)["config_kwargs"]
    assert config["read_timeout"] == 99 and config["retries"] == {"mode": "standard"}
    assert config["connect_timeout"] == S3_DEFAULTS["connect_timeout"]
    assert mine["config_kwargs"] == {"read_timeout": 99, "retries": {"mode": "standard"}}  # the config is not changed
    monkeypatch.setenv("LCMS_S3_READ_TIMEOUT", "5")
    store = TileStore("s3://bucket/store", {"endpoint_url": "http://127.0.0.1:9"})
    assert store.fs.config_kwargs["read_timeout"] == 5.0  # the store's own filesystem has them
    assert TileStore.for_product(store, "crop-types").storage_options == store.storage_options
    assert s3fs.S3FileSystem.retries <= 2
    assert all(h[1] is not handlers.add_expect_header for h in handlers.BUILTIN_HANDLERS)
    gdal = gdal_config("s3://bucket/map.tif")
    assert gdal["GDAL_HTTP_LOW_SPEED_TIME"] == "5" and gdal["GDAL_HTTP_CONNECTTIMEOUT"] == "10"
