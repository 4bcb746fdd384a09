"""Export stage, publishing: where exported files go, and how GDAL reads them back from S3.

- `is_remote` / `local_path`: a target is remote when it is an fsspec URL (``s3://...``, any
  protocol but ``file://``); local targets are plain paths or ``file://`` URLs.
- `upload_file`: one put of a complete local file to a remote URL, so that S3 only shows the
  key once the file is whole (tasks/export/cog.py builds remote COGs locally and uploads them last).
- `gdal_config`: GDAL config options to read an ``s3://`` URL through /vsis3/ (endpoint,
  credentials and path-style addressing from the storage options or the environment).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import fsspec

from lcms.store import s3_storage_options


def is_remote(url: str) -> bool:
    """True for fsspec URLs (``s3://...``); False for local paths and ``file://`` URLs."""
    return "://" in url and not url.startswith("file://")


def local_path(url: str) -> str:
    """The local path of a path or ``file://`` URL."""
    return url[len("file://") :] if url.startswith("file://") else url


def upload_file(local: str, url: str, storage_options: Mapping[str, Any] | None = None) -> None:
    """Copy the complete local file to `url` in one put (fsspec; `storage_options` for the file system)."""
    fs, path = fsspec.core.url_to_fs(url, **s3_storage_options(url, storage_options))  # S3 timeouts, retries
    # One put of a complete file: S3 only shows the key once the (multipart) upload completes.
    fs.put_file(local, path)
    if hasattr(fs, "invalidate_cache"):
        fs.invalidate_cache(path)


def gdal_config(url: str, storage_options: Mapping[str, Any] | None = None) -> dict[str, str]:
    """GDAL config options for reading `url` (S3 endpoint from storage_options or AWS_ENDPOINT_URL)."""
    options = {"GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR"}
    if not url.startswith("s3://"):
        return options
    so = s3_storage_options(url, storage_options)
    client_kwargs = so.get("client_kwargs") or {}
    endpoint = (
        so.get("endpoint_url")
        or client_kwargs.get("endpoint_url")
        or os.environ.get("AWS_ENDPOINT_URL_S3")
        or os.environ.get("AWS_ENDPOINT_URL")
    )
    if endpoint:
        parts = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
        options["AWS_S3_ENDPOINT"] = parts.netloc + parts.path.rstrip("/")
        options["AWS_HTTPS"] = "NO" if parts.scheme == "http" else "YES"
        options["AWS_VIRTUAL_HOSTING"] = "FALSE"  # path-style: MinIO, moto, and any non-AWS endpoint
    for key, option in (
        ("key", "AWS_ACCESS_KEY_ID"),
        ("secret", "AWS_SECRET_ACCESS_KEY"),
        ("token", "AWS_SESSION_TOKEN"),
    ):
        if so.get(key):
            options[option] = str(so[key])
    if so.get("anon"):
        options["AWS_NO_SIGN_REQUEST"] = "YES"
    # The same budget as s3fs's (lcms.store.s3_storage_options): a stalled endpoint fails the read, not hangs it.
    config = so.get("config_kwargs") or {}
    # (A read that moves under 1 byte/s for read_timeout seconds is a stall; a slow one goes on.)
    for key, option in (("connect_timeout", "GDAL_HTTP_CONNECTTIMEOUT"), ("read_timeout", "GDAL_HTTP_LOW_SPEED_TIME")):
        if config.get(key) and option not in os.environ:
            options[option] = str(math.ceil(float(config[key])))
    if "GDAL_HTTP_LOW_SPEED_TIME" in options and "GDAL_HTTP_LOW_SPEED_LIMIT" not in os.environ:
        options["GDAL_HTTP_LOW_SPEED_LIMIT"] = "1"
    for option, value in (("GDAL_HTTP_MAX_RETRY", "3"), ("GDAL_HTTP_RETRY_DELAY", "1")):  # 429, 5xx
        if option not in os.environ:
            options[option] = value
    return options
