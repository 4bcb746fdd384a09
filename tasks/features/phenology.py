"""Features stage, phenology: per-pixel statistics of a feature's yearly series (season, peak, spread).

Plain numpy, no I/O. The interpolated series says what a pixel looked like at each date; a
classifier trained on one area meets another area where the same class greens up a week later or
a little less. Statistics over the whole year (percentiles, amplitude, the peak's date, the
season's start and end) describe the same curve in terms that shift less from place to place.

`phenology` works on a (t, y, x, f) stack and its t dates and returns (y, x, f × len(stats)),
named ``{feature}_{stat}`` (e.g. ``NDVI_p90``, ``NDVI_peak_date``), feature then stat. The
features stage stores them like the terrain: the same value at every date. Missing values (NaN)
are left out; a pixel without any valid value gives NaN. Statistics (`PHENOLOGY_STATS`):

- ``min``, ``max``, ``mean``, ``std`` (population), ``p10``, ``p25``, ``p50``, ``p75``, ``p90``
  (linear percentiles, as `np.nanpercentile`), ``amplitude`` = max - min;
- ``peak_date``: the date of the maximum (the first one on a tie), as a fraction of the year
  (day of year - 1) / 365;
- ``start_date`` / ``end_date``: the first / last date on which the value reaches
  min + 0.5 × amplitude (the usual half-amplitude season threshold), same units;
  ``season_length`` = end_date - start_date;
- ``season_integral``: the time integral (trapezoids, in years) of the value above the year's
  minimum between start_date and end_date, i.e. how much green the season added;
- ``max_rise`` / ``max_fall``: the steepest increase / decrease between consecutive valid dates,
  per 30 days (``max_fall`` is positive for a fall).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

PHENOLOGY_STATS = (
    "min",
    "max",
    "mean",
    "std",
    "p10",
    "p25",
    "p50",
    "p75",
    "p90",
    "amplitude",
    "peak_date",
    "start_date",
    "end_date",
    "season_length",
    "season_integral",
    "max_rise",
    "max_fall",
)
SEASON_THRESHOLD = 0.5  # of the amplitude above the minimum
SLOPE_DAYS = 30


def phenology_names(names: Sequence[str], stats: Sequence[str] = PHENOLOGY_STATS) -> list[str]:
    """Names of `phenology`'s output features, in its order (feature, then stat)."""
    return [f"{n}_{stat}" for n in names for stat in stats]


def year_fraction(dates: np.ndarray) -> np.ndarray:
    """(day of year - 1) / 365 of datetime64 dates, float64."""
    days = np.asarray(dates, dtype="datetime64[D]")
    return (days - days.astype("datetime64[Y]")).astype(np.float64) / 365.0


def _series_stats(v: np.ndarray, when: np.ndarray, stats: Sequence[str]) -> dict[str, np.ndarray]:
    """The statistics of a (t, n) float64 series with NaN gaps at the (t,) times `when` (years)."""
    valid = np.isfinite(v)
    anyv = valid.any(axis=0)
    out: dict[str, np.ndarray] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN pixels give NaN, on purpose
        lo, hi = np.nanmin(v, axis=0), np.nanmax(v, axis=0)
        out["min"], out["max"], out["amplitude"] = lo, hi, hi - lo
        out["mean"], out["std"] = np.nanmean(v, axis=0), np.nanstd(v, axis=0)
        wanted = [s for s in stats if s.startswith("p") and s[1:].isdigit()]
        if wanted:
            pct = np.nanpercentile(v, [int(s[1:]) for s in wanted], axis=0)
            out.update(zip(wanted, pct, strict=True))
    t = v.shape[0]
    filled = np.where(valid, v, -np.inf)
    out["peak_date"] = when[np.argmax(filled, axis=0)]
    above = valid & (v >= lo + SEASON_THRESHOLD * (hi - lo))
    first = np.argmax(above, axis=0)
    last = t - 1 - np.argmax(above[::-1], axis=0)
    out["start_date"], out["end_date"] = when[first], when[last]
    out["season_length"] = out["end_date"] - out["start_date"]
    # Trapezoids of (value - min) between consecutive valid dates inside the season.
    rows = np.arange(t)[:, None]
    inside = valid & (rows >= first) & (rows <= last)
    integral = np.zeros(v.shape[1])
    rise = np.full(v.shape[1], -np.inf)
    fall = np.full(v.shape[1], -np.inf)
    prev_v = np.full(v.shape[1], np.nan)
    prev_t = np.full(v.shape[1], np.nan)
    prev_inside = np.zeros(v.shape[1], dtype=bool)
    for i in range(t):  # over dates (a few dozen), vectorised over pixels
        ok = valid[i]
        step = ok & np.isfinite(prev_v)
        dt = when[i] - prev_t
        slope = np.where(step & (dt > 0), (v[i] - prev_v) / np.where(dt > 0, dt, 1) * (SLOPE_DAYS / 365.0), np.nan)
        has = np.isfinite(slope)
        rise[has] = np.maximum(rise[has], slope[has])
        fall[has] = np.maximum(fall[has], -slope[has])
        both = step & inside[i] & prev_inside
        integral[both] += (0.5 * (v[i] + prev_v - 2 * lo) * dt)[both]
        prev_v = np.where(ok, v[i], prev_v)
        prev_t = np.where(ok, when[i], prev_t)
        prev_inside = np.where(ok, inside[i], prev_inside)
    out["season_integral"] = integral
    out["max_rise"] = np.where(np.isfinite(rise), rise, np.nan)
    out["max_fall"] = np.where(np.isfinite(fall), fall, np.nan)
    for k in ("peak_date", "start_date", "end_date", "season_length", "season_integral"):
        out[k] = np.where(anyv, out[k], np.nan)
    return out


def check_stats(stats: Sequence[str]) -> list[str]:
    unknown = sorted(set(stats) - set(PHENOLOGY_STATS))
    if unknown:
        raise ValueError(f"unknown phenology statistics {unknown}; choose from {list(PHENOLOGY_STATS)}")
    return list(stats)


def phenology(values: np.ndarray, dates: np.ndarray, stats: Sequence[str] = PHENOLOGY_STATS) -> np.ndarray:
    """Per-pixel statistics of a (t, y, x, f) float stack over its t `dates`: (y, x, f × len(stats)), float32."""
    if values.ndim != 4:
        raise ValueError(f"phenology expects a (time, y, x, feature) stack, got shape {values.shape}")
    if len(dates) != values.shape[0]:
        raise ValueError(f"phenology got {len(dates)} dates for {values.shape[0]} time steps")
    stats = check_stats(stats)
    t, h, w, f = values.shape
    when = year_fraction(dates)
    out = np.empty((h, w, f * len(stats)), dtype=np.float32)
    for j in range(f):
        computed = _series_stats(values[..., j].reshape(t, h * w).astype(np.float64), when, stats)
        for k, stat in enumerate(stats):
            out[..., j * len(stats) + k] = computed[stat].reshape(h, w)
    return out


def with_phenology(values: np.ndarray, dates: np.ndarray, cfg) -> np.ndarray:
    """(t, y, x, f) features whose first columns are `cfg.feature_names` → with the phenology of
    `cfg.phenology_features` appended, the same at every date (a `FeaturesConfig`)."""
    if not cfg.phenology_features:
        return values
    picked = [cfg.feature_names.index(n) for n in cfg.phenology_features]
    stats = phenology(values[..., picked], dates, cfg.phenology_stats)
    return np.concatenate([values, np.broadcast_to(stats, (values.shape[0], *stats.shape))], axis=-1)
