"""Temporal step of the features stage: one spatial block of a tile onto the year's date grid.

Plain numpy, no I/O. Arrays are ``(t, y, x, f)`` float32 values, ``(t,)`` datetime64 times
(sorted) and a ``(t, y, x)`` bool mask of valid (cloud-free, with data) observations.

Date grid
    :func:`date_grid` gives uniform dates ``start, start + step, ...`` up to ``end``
    (inclusive) in one year, the same for every tile, so features of all tiles line up.

Linear interpolation (:func:`interpolate`)
    Per pixel, over that pixel's valid observations only, linearly in time. Every target
    date is placed between the pixel's previous valid observation (time <= target) and its
    next one (time > target); the value is the linear blend of the two. Edge rules:

    * target before the pixel's first / after its last valid observation: the value of that
      first / last observation (constant extrapolation, as ``np.interp`` does; eo-learn's
      LinearInterpolationTask leaves NaN there instead);
    * a pixel with exactly one valid observation: that value on every target date;
    * a pixel with no valid observation: NaN on every date, and ``no_valid`` True;
    * duplicate times (several acquisitions with the same timestamp): the valid values of a
      pixel at that time are averaged first (eo-learn does the same), invalid ones ignored.

    How (vectorised, no per-pixel loop): two sweeps over the frames keep, per pixel, the
    latest valid frame so far (forward) and the earliest valid frame to come (backward) as
    small ints, updated with ``np.maximum`` row by row; they are snapshotted at the frames
    that bracket each target date. Before a pixel's first valid frame the "earlier" index is
    that first frame, after its last the "later" one is that last frame, so clamping needs no
    special case. Per target, the two neighbours' values are gathered with a flat
    ``np.take`` and blended, ``a + w (b - a)``, with a weight looked up in a small per-target
    table indexed by the (earlier, later) pair and shared by all features. Loops run over
    frames and target dates (tens) and chunks of pixels (to stay in cache), never over
    pixels; apart from the output, memory is two (t', y, x) int16 arrays and chunk buffers.

Composites (:func:`composite`)
    Period ``i`` is ``[target_times[i], target_times[i + 1])``; the last one ends at
    ``period_end`` (default ``target_times[-1] + (target_times[-1] - target_times[-2])``,
    i.e. one more step, which for the default grid runs past Dec 31). Observations outside
    all periods are not used. Per pixel and period, over the valid observations in it:

    * ``"median"``: the median of each feature separately (mean of the two middle values
      for an even count, as ``np.median``);
    * ``"max_ndvi"``: all features of the observation with the largest NDVI (the first one
      on ties); observations whose NDVI is NaN are not eligible.

    A period without a valid observation for a pixel takes the composite of the nearest
    period (by period index) that has one, the earlier one on a tie: the same
    nearest-value rule as interpolation's edges, applied to gaps inside the year too.
    Pixels with no valid observation in any period: NaN and ``no_valid`` True.

Valid values are assumed finite: a NaN at a valid observation propagates to the dates it
touches. Mask such values out in ``valid`` first.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from lcms.config import DateGridConfig

__all__ = ["composite", "date_grid", "interpolate"]


# --------------------------------------------------------------------------- date grid


def _month_day(year: int, value: str, field: str) -> np.datetime64:
    try:
        month, day = (int(part) for part in value.split("-"))
        return np.datetime64(f"{year:04d}-{month:02d}-{day:02d}", "s")
    except ValueError as exc:
        raise ValueError(f"date_grid.{field}: {value!r} is not a valid MM-DD date in {year}") from exc


def date_grid(year: int, cfg: DateGridConfig) -> np.ndarray:
    """Uniform dates (datetime64[s], midnight UTC), ``cfg.start`` to ``cfg.end`` inclusive, every ``step_days``."""
    start = _month_day(year, cfg.start, "start")
    end = _month_day(year, cfg.end, "end")
    if end < start:
        raise ValueError(f"date_grid.end ({cfg.end}) is before date_grid.start ({cfg.start})")
    if cfg.step_days < 1:
        raise ValueError(f"date_grid.step_days must be >= 1, got {cfg.step_days}")
    step = np.timedelta64(cfg.step_days, "D").astype("timedelta64[s]")
    return np.arange(start, end + np.timedelta64(1, "s"), step, dtype="datetime64[s]")


# --------------------------------------------------------------------------- helpers


def _seconds(times: np.ndarray, origin: np.datetime64 | float) -> np.ndarray:
    """1-D float64 seconds since ``origin``; relative, so that float64 keeps sub-second precision."""
    times = np.asarray(times)
    if times.dtype.kind == "M":
        return (times - origin) / np.timedelta64(1, "s")
    return times.astype(np.float64) - float(origin)


def _check_inputs(values: np.ndarray, times: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    values = np.asarray(values)
    if values.ndim != 4:
        raise ValueError(f"values must be (t, y, x, f), got shape {values.shape}")
    if values.dtype != np.float32:
        values = values.astype(np.float32)
    valid = np.asarray(valid, dtype=bool)
    if valid.ndim == 4 and valid.shape[-1] == 1:
        valid = valid[..., 0]
    if valid.shape != values.shape[:3]:
        raise ValueError(f"valid must be (t, y, x) = {values.shape[:3]}, got {valid.shape}")
    if np.asarray(times).shape != (values.shape[0],):
        raise ValueError(f"times must be ({values.shape[0]},), got {np.asarray(times).shape}")
    if values.shape[0] > np.iinfo(np.int16).max - 1:
        raise ValueError("more than 32766 observations in one block")
    return values, valid


def _merge_duplicates(
    values: np.ndarray, seconds: np.ndarray, valid: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Average the valid values of frames sharing one time (so that time has one value per pixel)."""
    uniq, first, counts = np.unique(seconds, return_index=True, return_counts=True)
    if len(uniq) == len(seconds):
        return values, seconds, valid
    merged, merged_valid = values[first], valid[first]  # copies only of the unique frames
    for group in np.flatnonzero(counts > 1):  # loop over duplicated dates (few), not pixels
        frames = slice(first[group], first[group] + counts[group])
        ok = valid[frames]
        n = ok.sum(axis=0)
        total = np.where(ok[..., None], values[frames], np.float32(0)).sum(axis=0, dtype=np.float32)
        merged[group] = total / np.maximum(n, 1).astype(np.float32)[..., None]
        merged_valid[group] = n > 0
    return merged, uniq, merged_valid


def _neighbour_indices(have: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each (k, pixel): the latest index <= k where ``have`` (-1 if none) and the earliest >= k (len if none)."""
    n_steps = have.shape[0]
    steps = np.arange(n_steps, dtype=np.int16).reshape((-1,) + (1,) * (have.ndim - 1))
    # int16 keeps these (t, pixels) index arrays at a quarter of the float32 block's size
    prev = np.where(have, steps, np.int16(-1))
    np.maximum.accumulate(prev, axis=0, out=prev)
    nxt = np.where(have, steps, np.int16(n_steps))
    nxt = np.minimum.accumulate(nxt[::-1], axis=0)[::-1]
    return prev, nxt


# --------------------------------------------------------------------------- interpolation

# Pixel values (pixels × features) per inner chunk, at least 4096 pixels: the per-target
# temporaries of a chunk then stay in the CPU cache, which makes the many short numpy passes
# over them markedly faster than on a whole block (measured best for 1 and 12 features).
_CHUNK = 16_384


def _weight_tables(seconds: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """(t', (t + 1) * (t + 2)) float32 weights of the later neighbour, at [j, (lo + 1) * (t + 2) + t - hi].

    lo / hi are the earlier / later neighbouring valid frames of a pixel. Where they are the
    same frame (a target outside the pixel's valid range, clamped), the weight is 0; so it is
    for the index values that only pixels without any valid frame reach.
    """
    t = len(seconds)
    lo = np.arange(-1, t)[:, None]  # lo + 1 = 0..t
    hi = t - np.arange(t + 2)[None, :]  # t - hi = 0..t + 1
    lo_time = seconds[lo.clip(0, t - 1)]
    hi_time = seconds[hi.clip(0, t - 1)]
    usable = (lo >= 0) & (hi < t) & (hi > lo)
    span = np.where(usable, hi_time - lo_time, 1.0)
    weight = np.where(usable[None], (targets[:, None, None] - lo_time[None]) / span[None], 0.0)
    # pairs that never occur for a target (it lies outside [lo, hi]) may be junk: keep them finite
    return weight.clip(0.0, 1.0).astype(np.float32).reshape(len(targets), -1)


def interpolate(
    values: np.ndarray, times: np.ndarray, valid: np.ndarray, target_times: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Linear interpolation in time over each pixel's valid observations, clamped at the ends.

    values float32 (t, y, x, f), times datetime64 (t,) sorted, valid bool (t, y, x) ->
    (float32 (t', y, x, f) on ``target_times``, no_valid bool (y, x)). See the module docstring.
    """
    values, valid = _check_inputs(values, times, valid)
    t, h, w, f = values.shape
    n_targets = len(target_times)
    if t == 0:
        return np.full((n_targets, h, w, f), np.nan, np.float32), np.ones((h, w), bool)
    times = np.asarray(times)
    origin = times[0]
    seconds = _seconds(times, origin)
    if np.any(np.diff(seconds) < 0):
        raise ValueError("times must be sorted")
    targets = _seconds(np.asarray(target_times), origin)

    values, seconds, valid = _merge_duplicates(values, seconds, valid)
    t, n = len(seconds), h * w
    flat = values.reshape(t * n, f) if f > 1 else values.reshape(t * n)  # frame k of pixel p: row k * n + p
    valid = valid.reshape(t, n)
    weights = _weight_tables(seconds, targets)
    # frame k is the last one at or before the target: its neighbours are the latest valid
    # frame <= k and the earliest valid frame >= k + 1 (k = -1: before the first frame)
    last_at_or_before = np.searchsorted(seconds, targets, side="right") - 1
    need_before = set(last_at_or_before.tolist())
    need_after = {k + 1 for k in need_before}
    # small ints: the sweeps and index sums below are cheap SIMD passes on 2-byte values
    idx = np.int16 if (t + 1) * (t + 2) < np.iinfo(np.int16).max else np.int32
    stride = idx(t + 2)

    # backward sweep: t - (earliest valid frame >= k), 0 where none. Running-maximum updates
    # row by row: much faster than np.where on a random mask or ufunc.accumulate along t
    after, state = {}, np.zeros(n, idx)
    for k in range(t - 1, -1, -1):
        np.maximum(state, valid[k] * idx(t - k), out=state)
        if k in need_after:
            after[k] = state.copy()
    # forward sweep: (latest valid frame <= k) + 1, starting from the first valid frame + 1,
    # so that before a pixel's first valid frame it points at that frame (clamping)
    state = (state > 0) * (idx(t + 1) - state)
    before = {-1: state.copy()}
    for k in range(t):
        np.maximum(state, valid[k] * idx(k + 1), out=state)
        if k in need_before:
            before[k] = state.copy()
    no_valid = state == 0
    # after the last valid frame, the "later neighbour" is the last valid frame (clamping);
    # max() does it, as t - (a real later frame) is never below t - (last valid frame)
    last = idx(t + 1) - state  # t - last valid frame (t + 1 without any)
    after[t] = last
    for k in after:
        np.maximum(after[k], last, out=after[k])
    del state

    out = np.empty((n_targets, n, f), np.float32)
    # buffers reused for every chunk and target: fresh large temporaries in the loop would
    # make the allocator map and fault in memory again and again (2-4x slower on a cold process)
    chunk = max(_CHUNK // f, 4096)
    size = min(chunk, n)
    feature_shape = (f,) if f > 1 else ()
    buf_lo = np.empty((size, *feature_shape), np.float32)
    buf_hi = np.empty((size, *feature_shape), np.float32)
    buf_weight = np.empty(size, np.float32)
    buf_key = np.empty(size, idx)
    buf_row = np.empty(size, np.intp)
    for c0 in range(0, n, chunk):
        c1 = min(c0 + chunk, n)
        m = c1 - c0
        pixel = np.arange(c0, c1, dtype=np.intp)
        lo_base, hi_base = pixel - n, pixel + t * n  # row of lo: lo1 * n + lo_base; of hi: hi_base - a * n
        v_lo, v_hi, weight, key, row = buf_lo[:m], buf_hi[:m], buf_weight[:m], buf_key[:m], buf_row[:m]
        w_col = weight[:, None] if f > 1 else weight
        for j, k in enumerate(last_at_or_before):
            lo1, a = before[k][c0:c1], after[k + 1][c0:c1]
            np.multiply(lo1, stride, out=key)
            key += a
            np.take(weights[j], key, out=weight, mode="clip")
            np.multiply(lo1, n, out=row, dtype=np.intp)
            row += lo_base
            np.take(flat, row, axis=0, out=v_lo, mode="clip")  # clip: pixels without data, NaN'd below
            np.multiply(a, -n, out=row, dtype=np.intp)
            row += hi_base
            np.take(flat, row, axis=0, out=v_hi, mode="clip")
            # a + w (b - a): clamped pixels have b = a (the same frame), so copy a exactly
            v_hi -= v_lo
            v_hi *= w_col
            np.add(v_lo, v_hi, out=out[j, c0:c1] if f > 1 else out[j, c0:c1, 0])
    if no_valid.any():
        out[:, no_valid] = np.nan
    return out.reshape(n_targets, h, w, f), no_valid.reshape(h, w)


# --------------------------------------------------------------------------- composites


def composite(
    values: np.ndarray,
    times: np.ndarray,
    valid: np.ndarray,
    target_times: np.ndarray,
    method: Literal["median", "max_ndvi"],
    ndvi: np.ndarray | None = None,
    *,
    period_end: np.datetime64 | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One mosaic per period ``[target_times[i], target_times[i + 1])``; see the module docstring.

    values float32 (t, y, x, f), times datetime64 (t,) sorted, valid bool (t, y, x), ndvi
    float32 (t, y, x) for ``"max_ndvi"`` -> (float32 (t', y, x, f), no_valid bool (y, x)).
    ``period_end`` closes the last period (default: one grid step after the last target).
    """
    if method not in ("median", "max_ndvi"):
        raise ValueError(f"method must be 'median' or 'max_ndvi', got {method!r}")
    values, valid = _check_inputs(values, times, valid)
    t, h, w, f = values.shape
    n, p = h * w, len(target_times)
    if p == 0:
        return np.empty((0, h, w, f), np.float32), np.ones((h, w), bool)
    target_times = np.asarray(target_times)
    origin = target_times[0]
    starts = _seconds(target_times, origin)
    if np.any(np.diff(starts) <= 0):
        raise ValueError("target_times must be strictly increasing")
    if period_end is None:
        if p < 2:
            raise ValueError("give period_end when there is a single target time")
        end = starts[-1] + (starts[-1] - starts[-2])
    else:
        end = float(_seconds(np.asarray([period_end]), origin)[0])
    seconds = _seconds(np.asarray(times), origin)
    if np.any(np.diff(seconds) < 0):
        raise ValueError("times must be sorted")
    if method == "max_ndvi":
        if ndvi is None:
            raise ValueError("method 'max_ndvi' needs ndvi (t, y, x)")
        ndvi = np.asarray(ndvi)
        if ndvi.ndim == 4 and ndvi.shape[-1] == 1:
            ndvi = ndvi[..., 0]
        if ndvi.shape != (t, h, w):
            raise ValueError(f"ndvi must be (t, y, x) = {(t, h, w)}, got {ndvi.shape}")
        ndvi = ndvi.reshape(t, n)

    flat_values = values.reshape(t, n, f)
    valid = valid.reshape(t, n)
    bounds = np.searchsorted(seconds, np.append(starts, end), side="left")  # times sorted: periods are slices
    out = np.full((p, n, f), np.nan, np.float32)
    have = np.zeros((p, n), bool)
    pixel = np.arange(n, dtype=np.intp)
    for i in range(p):  # loop over periods (tens), vectorised over pixels and features
        a, b = bounds[i], bounds[i + 1]
        if b <= a:
            continue
        ok = valid[a:b]
        if method == "median":
            count = ok.sum(axis=0)
            # invalid -> +inf, which sorts last: the valid values come first, in order
            stack = np.where(ok[..., None], flat_values[a:b], np.float32(np.inf))
            if b - a <= 16:
                # few frames per period: an odd-even transposition network of min / max
                # passes over whole (pixel, feature) planes beats np.sort's per-row overhead
                for rnd in range(b - a):
                    for r in range(rnd % 2, b - a - 1, 2):
                        smaller = np.minimum(stack[r], stack[r + 1])
                        np.maximum(stack[r], stack[r + 1], out=stack[r + 1])
                        stack[r] = smaller
            else:
                stack.sort(axis=0)
            lower = np.maximum((count - 1) // 2, 0)
            upper = count // 2
            lower_v = np.take_along_axis(stack, lower[None, :, None], axis=0)[0]
            upper_v = np.take_along_axis(stack, upper.clip(max=b - a - 1)[None, :, None], axis=0)[0]
            out[i] = (lower_v + upper_v) * np.float32(0.5)
            have[i] = count > 0
        else:
            eligible = ok & ~np.isnan(ndvi[a:b])
            best = np.argmax(np.where(eligible, ndvi[a:b], -np.inf), axis=0)
            out[i] = flat_values.reshape(t * n, f)[(a + best) * n + pixel]
            have[i] = eligible.any(axis=0)

    # fill empty periods from the nearest period with data (earlier one on a tie)
    prev, nxt = _neighbour_indices(have)
    no_valid = prev[-1] < 0
    period = np.arange(p, dtype=np.int16)[:, None]
    use_prev = (prev >= 0) & ((nxt >= p) | (period - prev <= nxt - period))
    source = np.where(use_prev, prev, nxt).astype(np.intp)
    source.clip(0, p - 1, out=source)
    if not have.all():
        out = np.take(out.reshape(p * n, f), (source * n + pixel).ravel(), axis=0).reshape(p, n, f)
    out[:, no_valid] = np.nan
    return out.reshape(p, h, w, f), no_valid.reshape(h, w)
