"""Which model version made each tile's prediction, and whether a set of tiles agrees on one.

A map, a change layer or a report stitched from tiles predicted by different model versions
would silently mix two models (after a retrain and a partial prediction rerun, say). The AOI-level
stages ask `one_model_version` first: it names the tiles and the versions when they differ.
"""

from __future__ import annotations

from collections.abc import Iterable

from lcms.store import TileStore

STAGE = "prediction"


class MixedModelVersionsError(ValueError):
    """The selected tiles' predictions come from more than one model version."""


def model_versions(store: TileStore, tile_ids: Iterable[str], year: int, stage: str = STAGE) -> dict[str, str]:
    """tile id → the model version behind its finished `stage` output (prediction, or labels made from it)
    for `year`; tiles without one are left out."""
    done = store.done_tiles(stage, year)
    versions = {}
    for tile_id in tile_ids:
        record = done.get(tile_id)
        if record is not None:
            versions[tile_id] = record.extra.get("model_version") or record.extra.get("model_attempt", "?")
    return versions


def one_model_version(
    store: TileStore,
    tile_ids: list[str],
    year: int,
    what: str,
    keep_version: str | None = None,
    stages: Iterable[str] = (STAGE,),
) -> tuple[str, list[str]]:
    """The model version every tile's outputs of `year` share (in each of `stages`), and the tiles to use.

    A tile whose stages disagree (labels post-processed from an older prediction) counts as a
    version of its own. With `keep_version` (e.g. the current model version), tiles of other
    versions are left out instead of failing; the caller says which. Otherwise mixed versions
    raise, naming them.
    """
    per_stage = {stage: model_versions(store, tile_ids, year, stage) for stage in stages}
    versions = {}
    for tile_id in tile_ids:
        seen = {stage: found[tile_id] for stage, found in per_stage.items() if tile_id in found}
        if seen:
            distinct = set(seen.values())
            versions[tile_id] = (
                distinct.pop() if len(distinct) == 1 else " / ".join(f"{s} {v}" for s, v in sorted(seen.items()))
            )
    by_version: dict[str, list[str]] = {}
    for tile_id, version in versions.items():
        by_version.setdefault(version, []).append(tile_id)
    if len(by_version) <= 1:
        return next(iter(by_version), ""), [t for t in tile_ids if t in versions]
    if keep_version is not None:
        return keep_version, sorted(by_version.get(keep_version, []))
    listing = "; ".join(
        f"{version}: {len(tiles)} tile(s) ({', '.join(sorted(tiles)[:5])}{' ...' if len(tiles) > 5 else ''})"
        for version, tiles in sorted(by_version.items())
    )
    raise MixedModelVersionsError(
        f"{what} {year}: the tiles' maps come from {len(by_version)} model versions ({listing}). "
        "Rerun `lcms run CONFIG` (prediction and post-processing) so every tile uses the current model, pin one "
        "with prediction.model_version, or set export.consistent_only: true to export the current version's tiles "
        "only"
    )
