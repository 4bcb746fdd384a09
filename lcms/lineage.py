"""Lineage: what each output was made from, recorded in its done mark.

Every done mark (a tile's `done.json`, an AOI product's) carries a `lineage`:

- `params`: the stage's full settings as they were (not only their hash), so an output can be
  made again exactly (`lcms rerun`);
- `code`: the lcms version and the code revision that made it (`code_version`);
- `inputs`: the done marks it read: stage, key (year or pair), tile or product, attempt and
  parameter hash, so the chain can be followed back to the download (`lcms lineage`).

The stage runner (lcms/stages.py) knows the settings and the inputs, and the store writes the
done mark; `recording` hands the one to the other for the duration of one output's making, so
that no tile function has to thread it through.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import os
import subprocess
from collections.abc import Iterator, Mapping
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

from pydantic import BaseModel

#: Set at build time (docker/Dockerfile, setup.py): the code revision baked into the package.
REVISION_FILE = Path(__file__).with_name("REVISION")
REVISION_ENV = "LCMS_REVISION"

_current: contextvars.ContextVar[dict | None] = contextvars.ContextVar("lcms_lineage", default=None)


@cache
def code_version() -> dict[str, str | None]:
    """The lcms version and the code revision: $LCMS_REVISION, else the one baked in at build time,
    else the git checkout's HEAD (an editable install)."""
    try:
        version = metadata.version("lcms")
    except metadata.PackageNotFoundError:
        version = None
    revision = os.environ.get(REVISION_ENV) or (REVISION_FILE.read_text().strip() if REVISION_FILE.exists() else "")
    if not revision:
        try:
            revision = subprocess.run(
                ["git", "rev-parse", "HEAD"],
                cwd=Path(__file__).resolve().parent,
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            revision = ""
    return {"lcms_version": version, "revision": revision or None}


def as_params(settings: Any) -> Any:
    """Stage settings as plain JSON (a pydantic model's dump, or the value as it is)."""
    return settings.model_dump(mode="json") if isinstance(settings, BaseModel) else settings


def input_entry(stage: str, key: Any, name: str, record) -> dict:
    """One input of an output: which stage, key (year or pair), tile or product, and its done mark's attempt."""
    return {"stage": stage, "key": str(key), "name": name, "attempt": record.attempt, "params_hash": record.params_hash}


def make_lineage(settings: Any, inputs: list[dict]) -> dict:
    return {"params": as_params(settings), "code": code_version(), "inputs": inputs}


def lineage_id(lineage: Mapping) -> str:
    """A short, stable id of a lineage (parameters, code and inputs), e.g. for map tags and STAC items."""
    text = json.dumps(lineage, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@contextlib.contextmanager
def recording(lineage: dict) -> Iterator[dict]:
    """Within this block, every done mark the store writes records `lineage`."""
    token = _current.set(lineage)
    try:
        yield lineage
    finally:
        _current.reset(token)


def current() -> dict:
    """The lineage being recorded, or {} outside `recording` (e.g. a tile function called by hand)."""
    return dict(_current.get() or {})
