"""The vocabulary of store layouts: what one array of a stage's output is, and a stage's set of them.

The arrays of each stage are declared with the stage itself, in lcms/stages.py; lcms/store.py
writes and reads them. This module only holds the types, so that both can use them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

SPATIAL_DIMS = ("y", "x")
SPATIAL_CHUNK = 256
#: Per-sample arrays are chunked along "sample" only: a chunk is this many rows of every column.
SAMPLE_CHUNK = 16_384
#: Codes of the merged dataset's `split` array.
SPLIT_CODES = {"train": 0, "validation": 1, "test": 2}


class StoreError(RuntimeError):
    """A store that cannot be used, or a write that breaks the layout."""


class WriteSkipped(StoreError):
    """This writer did not start: another run is writing the output (with on_busy "skip"), or
    finished it with the same params hash while this one waited. Stages count the tile as skipped."""

    def __init__(self, message: str, *, reason: str, owner: Mapping | None = None, record: Any = None):
        super().__init__(message)
        self.reason, self.owner, self.record = reason, dict(owner or {}), record


class LeaseError(StoreError):
    """A writer gave up waiting for another writer, or lost its lease (and so does not commit)."""


@dataclass(frozen=True)
class ArraySpec:
    """One array of a stage's output: its dimensions, dtype, fill value and chunking."""

    name: str
    dims: tuple[str, ...]
    dtype: str
    fill_value: Any
    description: str
    chunks: Mapping[str, int] = field(default_factory=dict)  # dims not named: one chunk over the whole dim
    attrs: Mapping[str, Any] = field(default_factory=dict)
    # Other dtypes a stage may choose by config, each with its fill value and extra attributes.
    alternatives: Mapping[str, tuple[Any, Mapping[str, Any]]] = field(default_factory=dict)

    def choose(self, dtype: str | None) -> ArraySpec:
        """This spec with `dtype` (one of its alternatives) instead of the default."""
        if dtype is None or dtype == self.dtype:
            return self
        if dtype not in self.alternatives:
            raise StoreError(f"{self.name} can be {[self.dtype, *self.alternatives]}, not {dtype}")
        fill_value, attrs = self.alternatives[dtype]
        return ArraySpec(self.name, self.dims, dtype, fill_value, self.description, self.chunks, attrs)

    def shape_for(self, sizes: Mapping[str, int]) -> tuple[int, ...]:
        return tuple(sizes[d] for d in self.dims)

    def chunks_for(self, sizes: Mapping[str, int]) -> tuple[int, ...]:
        # Zarr needs chunks of at least 1 even where a dim is empty (a year without acquisitions).
        return tuple(max(1, min(self.chunks.get(d, sizes[d]), sizes[d])) for d in self.dims)


@dataclass(frozen=True)
class StageLayout:
    stage: str
    arrays: tuple[ArraySpec, ...]

    def with_dtypes(self, dtypes: Mapping[str, str] | None) -> StageLayout:
        """This layout with allowed alternative dtypes chosen for some arrays (e.g. float32 features)."""
        if not dtypes:
            return self
        return StageLayout(self.stage, tuple(a.choose(dtypes.get(a.name)) for a in self.arrays))

    def spec(self, name: str) -> ArraySpec:
        for spec in self.arrays:
            if spec.name == name:
                return spec
        raise StoreError(f"stage {self.stage!r} has no array {name!r}; it has {[a.name for a in self.arrays]}")

    @property
    def coordinate_dims(self) -> set[str]:
        """Non-spatial dims, whose coordinate values the writer must be given."""
        return {d for a in self.arrays for d in a.dims} - set(SPATIAL_DIMS)
