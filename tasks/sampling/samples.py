"""Training-sample selection and spatially honest train / validation / test splits: plain numpy, no I/O.

Pixels are addressed by flat indices ``row * width + col`` into a (y, x) label array. Label code 0
(`lcms.legend.NO_DATA`) is never sampled, nor is any pixel flagged in the optional ``exclude`` mask.
Everything random goes through ``np.random.default_rng(seed)``, so a result depends only on the
arguments.

Rules
-----
Rounding: an expected number of pixels ``e`` becomes ``floor(e + 0.5)`` (half up).

`sample_pixels`
    *Uniform*: ``fraction`` -> ``round(fraction * n_eligible)`` pixels, ``count`` -> exactly ``count``
    pixels, drawn without replacement from all eligible pixels.
    *Stratified, fraction*: each class c gets ``min(round(fraction * n_c), max_per_class)``.
    *Stratified, count* ("water filling"): each class is offered an equal share ``count // k`` of
    the ``k`` classes present; a class whose capacity ``min(n_c, max_per_class)`` is below its share
    takes all it can, and what it leaves is shared out again among the other classes, until every
    remaining class can take its share. The last ``remaining % k_left`` pixels go one each to the
    unfilled classes of lowest code. The total is exactly ``count`` unless the caps make that
    impossible, in which case every class is filled to its capacity (fewer than ``count``).
    ``count`` larger than the number of eligible pixels is an error; ``max_per_class`` is only
    meaningful (and only accepted) with ``stratified=True``.

`split_by_tile` / `split_by_blocks` (groups = tiles or spatial blocks)
    ``n_test = round(test_fraction * n_groups)`` clipped to ``[1, n_groups - 1]``, groups picked at
    random. ``validation_fraction`` is a share of *all* samples / groups, so it is taken as the
    share ``validation_fraction / (1 - test_fraction)`` of the remaining (non-test) pool: whole
    groups (``round(share * n_pool)`` clipped to ``[1, n_pool - 1]``) when the pool holds at least
    3 groups, otherwise a random subset of the pool's samples (``round(share * n_pool_samples)``,
    clipped to ``[1, n_pool_samples - 1]``). ``validation_fraction = 0`` gives no validation set.
    Blocks keep train and test out of the same ``block_px`` × ``block_px`` block, but pixels on
    either side of a block edge can still be adjacent.

`split_halves`
    ``col < width // 2`` -> train, the rest -> test, no validation.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence
from numbers import Integral, Real

import numpy as np

from lcms.legend import NO_DATA

SPLITS = ("train", "validation", "test")
# Groups (tiles / blocks) needed in the non-test pool to take validation as whole groups.
MIN_POOL_GROUPS_FOR_WHOLE_VALIDATION = 3


def _round_half_up(x: np.ndarray | float) -> np.ndarray:
    return np.floor(np.asarray(x, dtype=np.float64) + 0.5).astype(np.int64)


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _check_fraction(name: str, value, *, allow_zero: bool, allow_one: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not np.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    lo_ok = value >= 0 if allow_zero else value > 0
    hi_ok = value <= 1 if allow_one else value < 1
    if not (lo_ok and hi_ok):
        lo = "[0" if allow_zero else "(0"
        hi = "1]" if allow_one else "1)"
        raise ValueError(f"{name} must be in {lo}, {hi}, got {value}")
    return float(value)


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, Integral):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    return int(seed)


# --------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------


def _water_fill(capacity: np.ndarray, count: int) -> np.ndarray:
    """Per-class allocation of ``count`` (classes in ascending code order); see module docstring.

    Loops over classes (at most 255), never over pixels.
    """
    alloc = np.zeros(capacity.size, dtype=np.int64)
    active = np.ones(capacity.size, dtype=bool)
    remaining = count
    while active.any():
        share = remaining // int(active.sum())
        small = active & (capacity <= share)
        if not small.any():
            alloc[active] = share
            remaining -= share * int(active.sum())
            # remaining < number of active classes, each of which has capacity > share.
            alloc[np.flatnonzero(active)[:remaining]] += 1
            return alloc
        alloc[small] = capacity[small]
        remaining -= int(capacity[small].sum())
        active &= ~small
    return alloc  # every class filled to capacity (caps bind)


def sample_pixels(
    labels: np.ndarray,
    *,
    fraction: float | None = None,
    count: int | None = None,
    stratified: bool = False,
    max_per_class: int | None = None,
    exclude: np.ndarray | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Sorted flat indices (int64, ``row * width + col``) of sampled pixels of ``labels`` (y, x).

    Exactly one of ``fraction`` (in (0, 1]) and ``count`` (>= 1) must be given. Pixels labelled 0
    (no data) or True in ``exclude`` (bool, same shape) are never sampled. See the module docstring
    for the uniform and stratified rules.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be 2-D (y, x), got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must hold integer class codes, got dtype {labels.dtype}")
    if (fraction is None) == (count is None):
        raise ValueError("give exactly one of fraction or count")
    if fraction is not None:
        fraction = _check_fraction("fraction", fraction, allow_zero=False, allow_one=True)
    if count is not None:
        count = _check_int("count", count, 1)
    if max_per_class is not None:
        if not stratified:
            raise ValueError("max_per_class applies to stratified sampling only (stratified=True)")
        max_per_class = _check_int("max_per_class", max_per_class, 1)
    seed = _check_seed(seed)

    eligible = labels != NO_DATA
    if exclude is not None:
        exclude = np.asarray(exclude)
        if exclude.dtype != np.bool_:
            raise ValueError(f"exclude must be a boolean mask, got dtype {exclude.dtype}")
        if exclude.shape != labels.shape:
            raise ValueError(f"exclude has shape {exclude.shape}, labels {labels.shape}")
        eligible &= ~exclude

    flat = np.flatnonzero(eligible).astype(np.int64)
    n_eligible = flat.size
    if count is not None and count > n_eligible:
        raise ValueError(f"count={count} exceeds the {n_eligible} eligible pixels (labelled, not excluded)")
    rng = np.random.default_rng(seed)

    if not stratified:
        n = int(_round_half_up(fraction * n_eligible)) if fraction is not None else count
        picked = rng.choice(n_eligible, size=n, replace=False) if n else np.empty(0, np.int64)
        return np.sort(flat[picked])

    classes, class_of, n_per_class = np.unique(labels.reshape(-1)[flat], return_inverse=True, return_counts=True)
    capacity = n_per_class.astype(np.int64)
    if max_per_class is not None:
        capacity = np.minimum(capacity, max_per_class)
    if fraction is not None:
        alloc = np.minimum(_round_half_up(fraction * n_per_class), capacity)
    else:
        alloc = _water_fill(capacity, count)

    # Random order within each class: shuffle, then stable-sort by class; keep the first alloc[c].
    order = rng.permutation(n_eligible)
    order = order[np.argsort(class_of[order], kind="stable")]
    cls_sorted = class_of[order]
    starts = np.concatenate(([0], np.cumsum(n_per_class)[:-1]))
    rank = np.arange(n_eligible) - starts[cls_sorted]
    keep = order[rank < alloc[cls_sorted]]
    return np.sort(flat[keep])


def gather_samples(features: np.ndarray, labels: np.ndarray, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Feature matrix ``X`` (n, t*f), same dtype as ``features`` (t, y, x, f), and labels ``y`` (uint8).

    Columns are date-major: column j holds date ``j // f``, feature ``j % f`` (see `feature_columns`).
    """
    features = np.asarray(features)
    labels = np.asarray(labels)
    pixels = np.asarray(pixels)
    if features.ndim != 4:
        raise ValueError(f"features must be 4-D (t, y, x, f), got shape {features.shape}")
    t, h, w, f = features.shape
    if labels.shape != (h, w):
        raise ValueError(f"labels have shape {labels.shape}, features' (y, x) is {(h, w)}")
    if not np.issubdtype(labels.dtype, np.integer) or (labels.size and (labels.min() < 0 or labels.max() > 255)):
        raise ValueError("labels must be integer class codes in 0..255")
    if pixels.ndim != 1 or not (np.issubdtype(pixels.dtype, np.integer) or pixels.size == 0):
        raise ValueError("pixels must be a 1-D array of integer flat indices")
    pixels = pixels.astype(np.int64, copy=False)
    if pixels.size and (pixels.min() < 0 or pixels.max() >= h * w):
        raise ValueError(f"pixel indices must be in [0, {h * w})")
    x = features.reshape(t, h * w, f)[:, pixels, :]  # (t, n, f)
    x = np.ascontiguousarray(x.transpose(1, 0, 2)).reshape(pixels.size, t * f)
    y = labels.reshape(-1)[pixels].astype(np.uint8)
    return x, y


def _date_str(d) -> str:
    if isinstance(d, _dt.datetime) and d.tzinfo is not None:
        d = d.astimezone(_dt.UTC).replace(tzinfo=None)
    try:
        return str(np.datetime64(d, "D"))
    except (ValueError, TypeError) as exc:
        raise ValueError(f"cannot read {d!r} as a date") from exc


def feature_columns(dates: Sequence, feature_names: Sequence[str]) -> list[str]:
    """Column names ``"NAME@YYYY-MM-DD"`` in `gather_samples`' (date-major) column order."""
    names = list(feature_names)
    if not names:
        raise ValueError("feature_names is empty")
    cols = [f"{name}@{_date_str(d)}" for d in dates for name in names]
    if len(set(cols)) != len(cols):
        raise ValueError("duplicate column names: dates and feature names must be unique")
    return cols


# --------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------


def _check_split_fractions(test_fraction, validation_fraction) -> tuple[float, float]:
    tf = _check_fraction("test_fraction", test_fraction, allow_zero=False, allow_one=False)
    vf = _check_fraction("validation_fraction", validation_fraction, allow_zero=True, allow_one=False)
    if tf + vf >= 1:
        raise ValueError(f"test_fraction + validation_fraction must be < 1, got {tf} + {vf}")
    return tf, vf


def _split_groups(group: np.ndarray, n_groups: int, tf: float, vf: float, seed: int) -> dict[str, np.ndarray]:
    """Assign whole groups (codes 0..n_groups-1 in ``group``) to test, then validation; see module docstring."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n_groups)
    n_test = int(np.clip(_round_half_up(tf * n_groups), 1, n_groups - 1))
    is_test_group = np.zeros(n_groups, dtype=bool)
    is_test_group[perm[:n_test]] = True
    test = is_test_group[group]
    validation = np.zeros(group.size, dtype=bool)

    pool = perm[n_test:]
    share = vf / (1 - tf)
    if vf > 0:
        if pool.size >= MIN_POOL_GROUPS_FOR_WHOLE_VALIDATION:
            n_val = int(np.clip(_round_half_up(share * pool.size), 1, pool.size - 1))
            is_val_group = np.zeros(n_groups, dtype=bool)
            is_val_group[pool[:n_val]] = True
            validation = is_val_group[group]
        else:
            pool_samples = np.flatnonzero(~test)
            if pool_samples.size >= 2:
                n_val = int(np.clip(_round_half_up(share * pool_samples.size), 1, pool_samples.size - 1))
                validation[rng.choice(pool_samples, size=n_val, replace=False)] = True
    train = ~test & ~validation
    return {"train": train, "validation": validation, "test": test}


def split_by_tile(
    tile_ids: np.ndarray, test_fraction: float = 0.2, validation_fraction: float = 0.1, seed: int = 0
) -> dict[str, np.ndarray]:
    """Boolean masks "train" / "validation" / "test" over samples, whole tiles going to test.

    Needs at least 2 distinct tiles; for a one-tile AOI use `split_by_blocks`.
    """
    tile_ids = np.asarray(tile_ids)
    if tile_ids.ndim != 1 or tile_ids.size == 0:
        raise ValueError("tile_ids must be a non-empty 1-D array (one tile id per sample)")
    tf, vf = _check_split_fractions(test_fraction, validation_fraction)
    seed = _check_seed(seed)
    tiles, group = np.unique(tile_ids, return_inverse=True)
    if tiles.size < 2:
        raise ValueError(
            f"all samples come from one tile ({tiles[0]!r}): a split by tile is impossible; "
            "use split_by_blocks (spatial blocks within the tile) instead"
        )
    return _split_groups(group.reshape(-1), tiles.size, tf, vf, seed)


def split_by_blocks(
    rows: np.ndarray,
    cols: np.ndarray,
    block_px: int,
    test_fraction: float = 0.5,
    validation_fraction: float = 0.1,
    seed: int = 0,
    *,
    tile_ids: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Masks "train" / "validation" / "test" with whole ``block_px`` × ``block_px`` blocks per split.

    ``rows`` / ``cols`` are the samples' pixel coordinates within their tile; give ``tile_ids`` when
    the samples come from several tiles, so that equal block coordinates of different tiles are
    different blocks. Proportions are of blocks, so of samples only when blocks hold similar numbers.
    """
    rows = np.asarray(rows)
    cols = np.asarray(cols)
    if rows.ndim != 1 or rows.shape != cols.shape or rows.size == 0:
        raise ValueError("rows and cols must be non-empty 1-D arrays of the same length")
    for name, a in (("rows", rows), ("cols", cols)):
        if not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"{name} must be integer pixel coordinates, got dtype {a.dtype}")
        if a.min() < 0:
            raise ValueError(f"{name} must be >= 0")
    block_px = _check_int("block_px", block_px, 1)
    tf, vf = _check_split_fractions(test_fraction, validation_fraction)
    seed = _check_seed(seed)
    if tile_ids is None:
        tile_code = np.zeros(rows.size, dtype=np.int64)
    else:
        tile_ids = np.asarray(tile_ids)
        if tile_ids.shape != rows.shape:
            raise ValueError(f"tile_ids has shape {tile_ids.shape}, rows {rows.shape}")
        tile_code = np.unique(tile_ids, return_inverse=True)[1].reshape(-1)
    keys = np.stack([tile_code, rows.astype(np.int64) // block_px, cols.astype(np.int64) // block_px], axis=1)
    blocks, group = np.unique(keys, axis=0, return_inverse=True)
    if len(blocks) < 2:
        raise ValueError(f"all samples fall into one {block_px}-px block: use a smaller block_px")
    return _split_groups(group.reshape(-1), len(blocks), tf, vf, seed)


def split_halves(cols: np.ndarray, width: int) -> dict[str, np.ndarray]:
    """Deterministic split: left half (``col < width // 2``) train, right half test, no validation."""
    cols = np.asarray(cols)
    if cols.ndim != 1 or not np.issubdtype(cols.dtype, np.integer):
        raise ValueError("cols must be a 1-D array of integer column indices")
    width = _check_int("width", width, 2)
    if cols.size and (cols.min() < 0 or cols.max() >= width):
        raise ValueError(f"cols must be in [0, {width})")
    train = cols < width // 2
    return {"train": train, "validation": np.zeros(cols.size, dtype=bool), "test": ~train}
