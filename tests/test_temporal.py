"""tasks/features/temporal.py: date grid, linear interpolation and composites, checked against independent answers.

Real data: the Slovenia test EOPatch (NDVI, cloud masks), against per-pixel ``np.interp`` and
against eo-learn 1.5.7's LinearInterpolationTask run in its own venv (benchmarks/.venv-eolearn).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from lcms.config import DateGridConfig
from tasks.features.temporal import composite, date_grid, interpolate

REPO = Path(__file__).resolve().parents[1]
DAY = np.timedelta64(86400, "s")


def _seconds(times, origin) -> np.ndarray:
    return (np.asarray(times) - origin) / np.timedelta64(1, "s")


def _reference_interp(values, times, valid, targets) -> np.ndarray:
    """Per-pixel, per-feature np.interp over the pixel's valid times (natural edge clamping)."""
    t, h, w, f = values.shape
    origin = times[0]
    xs, xt = _seconds(times, origin), _seconds(targets, origin)
    out = np.full((len(targets), h, w, f), np.nan)
    for i in range(h):
        for j in range(w):
            ok = valid[:, i, j]
            if ok.any():
                for b in range(f):
                    out[:, i, j, b] = np.interp(xt, xs[ok], values[ok, i, j, b].astype(np.float64))
    return out


def _random_block(seed, t=20, h=7, w=6, f=3, valid_fraction=0.5, start="2023-01-01"):
    rng = np.random.default_rng(seed)
    days = np.sort(rng.choice(365, t, replace=False))
    times = np.datetime64(start, "s") + days * DAY
    values = rng.normal(size=(t, h, w, f)).astype(np.float32)
    valid = rng.random((t, h, w)) < valid_fraction
    values[~valid] = np.nan  # invalid values must never be used
    return values, times, valid


# --------------------------------------------------------------------------- date grid


def test_date_grid_default_is_23_dates_jan1_to_dec19():
    grid = date_grid(2023, DateGridConfig())
    assert grid.dtype == np.dtype("datetime64[s]")
    assert len(grid) == 23
    assert grid[0] == np.datetime64("2023-01-01T00:00:00")
    assert grid[-1] == np.datetime64("2023-12-19T00:00:00")
    assert (np.diff(grid) == 16 * DAY).all()
    assert date_grid(2024, DateGridConfig())[-1] == np.datetime64("2024-12-18")  # leap year


def test_date_grid_custom_and_inclusive_end():
    grid = date_grid(2021, DateGridConfig(start="03-01", end="03-11", step_days=5))
    assert grid.tolist() == [np.datetime64(f"2021-03-{d:02d}", "s").item() for d in (1, 6, 11)]
    assert len(date_grid(2021, DateGridConfig(start="06-15", end="06-15", step_days=10))) == 1


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"start": "06-01", "end": "05-31"}, "end"),
        ({"start": "02-30"}, "start"),
        ({"start": "13-01"}, "start"),
        ({"end": "02-29"}, "end"),  # 2023 is not a leap year
        ({"end": "00-10"}, "end"),
    ],
)
def test_date_grid_bad_config_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        date_grid(2023, DateGridConfig(**kwargs))


# --------------------------------------------------------------------------- interpolation: real data


@pytest.fixture(scope="module")
def testpatch(shared_data):
    folder = shared_data / "slovenia-testpatch" / "eopatch"
    ndvi = np.load(folder / "data" / "NDVI.npy")
    clouds = np.load(folder / "mask" / "CLM.npy")[..., 0].astype(bool)
    is_data = np.load(folder / "mask" / "IS_DATA.npy")[..., 0].astype(bool)
    times = np.array(json.loads((folder / "timestamps.json").read_text()), dtype="datetime64[s]")
    return ndvi, times, is_data & ~clouds


def test_real_data_matches_per_pixel_np_interp(testpatch):
    ndvi, times, valid = testpatch
    assert ndvi.shape == (68, 101, 100, 1) and times.shape == (68,)
    grid = date_grid(2017, DateGridConfig(step_days=16))
    result, no_valid = interpolate(ndvi, times, valid, grid)
    expected = _reference_interp(ndvi, times, valid, grid)
    assert result.dtype == np.float32 and result.shape == (len(grid), 101, 100, 1)
    np.testing.assert_array_equal(no_valid, ~valid.any(axis=0))
    np.testing.assert_array_equal(np.isnan(result), np.isnan(expected))
    assert np.nanmax(np.abs(result - expected)) < 1e-4


def _load_benchmark_module():
    spec = importlib.util.spec_from_file_location("lcms_bench_interpolation", REPO / "benchmarks" / "interpolation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_real_data_agrees_with_eolearn_where_both_define_a_value(testpatch, tmp_path):
    bench = _load_benchmark_module()
    try:
        python = bench.ensure_eolearn_venv()
    except (subprocess.CalledProcessError, OSError) as exc:  # e.g. offline, no wheel cache
        pytest.skip(f"cannot create the eo-learn venv: {exc}")
    ndvi, times, valid = testpatch
    grid = date_grid(2017, DateGridConfig(step_days=16))
    bench.save_inputs(tmp_path, ndvi, valid, times, grid)
    bench.run_worker(python, "eolearn", tmp_path, tmp_path / "eolearn.npy")
    eolearn = np.load(tmp_path / "eolearn.npy")

    # eo-learn's clock: observation times rounded to whole hours since the first timestamp
    # (acquisitions within one hour are then duplicates, which it averages), and target
    # dates counted from the first timestamp's *date*, i.e. shifted by its time of day
    first = times[0]
    hours = np.round(_seconds(times, first) / 3600).astype(np.int64)
    eo_times = first + hours * np.timedelta64(3600, "s")
    eo_grid = grid + (first - first.astype("datetime64[D]").astype("datetime64[s]"))
    result, _ = interpolate(ndvi, eo_times, valid, eo_grid)

    both = ~np.isnan(eolearn)
    assert both.sum() > 0.5 * both.size
    assert np.abs(result[both] - eolearn[both]).max() < 1e-5
    # eo-learn leaves NaN exactly outside each pixel's [first, last] valid observation
    xs, xt = _seconds(eo_times, first), _seconds(eo_grid, first)
    first_valid = np.where(valid.any(0), xs[np.argmax(valid, axis=0)], np.inf)
    last_valid = np.where(valid.any(0), xs[len(xs) - 1 - np.argmax(valid[::-1], axis=0)], -np.inf)
    inside = (xt[:, None, None] >= first_valid) & (xt[:, None, None] <= last_valid)
    np.testing.assert_array_equal(both[..., 0], inside)


# --------------------------------------------------------------------------- interpolation: edge cases


def test_random_block_with_several_features_matches_np_interp():
    values, times, valid = _random_block(0, t=25, h=9, w=8, f=4, valid_fraction=0.4)
    grid = np.datetime64("2022-12-01", "s") + np.arange(0, 420, 10) * DAY  # beyond both ends too
    result, no_valid = interpolate(values, times, valid, grid)
    expected = _reference_interp(values, times, valid, grid)
    np.testing.assert_array_equal(np.isnan(result), np.isnan(expected))
    np.testing.assert_allclose(result, expected, atol=1e-5, equal_nan=True)
    np.testing.assert_array_equal(no_valid, ~valid.any(axis=0))


def test_zero_valid_frames_gives_nan_and_no_valid():
    values, times, _ = _random_block(1)
    grid = date_grid(2023, DateGridConfig())
    result, no_valid = interpolate(values, times, np.zeros(values.shape[:3], bool), grid)
    assert result.shape == (23, *values.shape[1:])
    assert np.isnan(result).all() and no_valid.all()


def test_one_valid_frame_gives_that_value_everywhere():
    values, times, _ = _random_block(2, t=15, h=5, w=4, f=2)
    valid = np.zeros(values.shape[:3], bool)
    rng = np.random.default_rng(3)
    frame = rng.integers(0, 15, size=(5, 4))  # a different single valid frame per pixel
    for i in range(5):
        for j in range(4):
            valid[frame[i, j], i, j] = True
    values = np.where(valid[..., None], rng.random(values.shape) + 1, np.nan).astype(np.float32)
    result, no_valid = interpolate(values, times, valid, date_grid(2023, DateGridConfig()))
    assert not no_valid.any()
    for i in range(5):
        for j in range(4):
            assert (result[:, i, j] == values[frame[i, j], i, j]).all()  # exactly that value


def test_grid_outside_data_range_is_clamped_to_nearest_valid_value():
    values, times, valid = _random_block(4, t=12, h=6, w=5, f=2, valid_fraction=0.6)
    has = valid.any(axis=0)
    first = np.argmax(valid, axis=0)
    last = valid.shape[0] - 1 - np.argmax(valid[::-1], axis=0)
    rows, cols = np.indices(has.shape)
    for year, frame in ((2021, first), (2025, last)):
        result, no_valid = interpolate(values, times, valid, date_grid(year, DateGridConfig()))
        np.testing.assert_array_equal(no_valid, ~has)
        expected = values[frame, rows, cols]  # (y, x, f)
        for k in range(result.shape[0]):
            np.testing.assert_array_equal(result[k][has], expected[has])
        assert np.isnan(result[:, ~has]).all()


def test_duplicate_times_average_the_valid_values():
    rng = np.random.default_rng(5)
    days = np.array([10, 30, 30, 30, 60, 90, 90, 120])
    times = np.datetime64("2023-01-01", "s") + days * DAY
    t, h, w, f = len(times), 6, 6, 2
    values = rng.normal(size=(t, h, w, f)).astype(np.float32)
    valid = rng.random((t, h, w)) < 0.6
    values[~valid] = np.nan
    grid = np.datetime64("2023-01-01", "s") + np.arange(0, 140, 7) * DAY
    result, no_valid = interpolate(values, times, valid, grid)

    # independent: per pixel, average the valid values of each distinct time, then np.interp
    xt = _seconds(grid, times[0])
    for i in range(h):
        for j in range(w):
            groups: dict[float, list[np.ndarray]] = {}
            for k in range(t):
                if valid[k, i, j]:
                    groups.setdefault(float(_seconds(times[k], times[0])), []).append(values[k, i, j])
            if not groups:
                assert no_valid[i, j] and np.isnan(result[:, i, j]).all()
                continue
            xs = np.array(sorted(groups))
            ys = np.array([np.mean(groups[x], axis=0) for x in xs])
            for b in range(f):
                np.testing.assert_allclose(result[:, i, j, b], np.interp(xt, xs, ys[:, b]), atol=1e-5)


def test_inputs_are_not_modified_and_validation():
    values, times, valid = _random_block(6)
    before = values.copy(), valid.copy()
    interpolate(values, times, valid, date_grid(2023, DateGridConfig()))
    np.testing.assert_array_equal(values, before[0])
    np.testing.assert_array_equal(valid, before[1])
    with pytest.raises(ValueError, match="sorted"):
        interpolate(values, times[::-1], valid, times)
    with pytest.raises(ValueError, match="valid"):
        interpolate(values, times, valid[:, :-1], times)


def test_memory_stays_within_a_small_multiple_of_the_block():
    rng = np.random.default_rng(7)
    t, size, f = 60, 256, 12
    values = rng.random((t, size, size, f), dtype=np.float32)
    valid = rng.random((t, size, size)) < 0.7
    times = np.datetime64("2023-01-01", "s") + np.sort(rng.choice(365, t, replace=False)) * DAY
    grid = date_grid(2023, DateGridConfig())
    tracemalloc.start()
    result, _ = interpolate(values, times, valid, grid)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # the output itself is 23/60 of the input; everything else is a few (y, x) vectors
    assert peak < result.nbytes + 0.25 * values.nbytes, (peak / 2**20, values.nbytes / 2**20)


# --------------------------------------------------------------------------- composites


def _reference_composite(values, times, valid, grid, end, method, ndvi=None):
    """Loops: per pixel and period, median / max-NDVI of valid observations; nearest-period fill."""
    t, h, w, f = values.shape
    p = len(grid)
    bounds = list(grid) + [end]
    out = np.full((p, h, w, f), np.nan, np.float32)
    for i in range(h):
        for j in range(w):
            have = []
            for q in range(p):
                members = [k for k in range(t) if valid[k, i, j] and bounds[q] <= times[k] < bounds[q + 1]]
                if method == "max_ndvi":
                    members = [k for k in members if not np.isnan(ndvi[k, i, j])]
                if not members:
                    continue
                have.append(q)
                if method == "median":
                    out[q, i, j] = np.median(values[members, i, j], axis=0)
                else:
                    best = members[int(np.argmax([ndvi[k, i, j] for k in members]))]
                    out[q, i, j] = values[best, i, j]
            for q in range(p):
                if have and q not in have:
                    source = min(have, key=lambda s, q=q: (abs(s - q), s))  # nearest, earlier on a tie
                    out[q, i, j] = out[source, i, j]
    return out


@pytest.mark.parametrize("method", ["median", "max_ndvi"])
def test_composite_matches_loops(method):
    values, times, valid = _random_block(8, t=40, h=6, w=7, f=3, valid_fraction=0.35)
    valid[:, 0, 0] = False  # one pixel without any observation
    rng = np.random.default_rng(9)
    ndvi = rng.random(valid.shape).astype(np.float32)
    ndvi[rng.random(valid.shape) < 0.05] = np.nan
    grid = np.datetime64("2023-01-01", "s") + np.arange(0, 365, 30) * DAY  # 13 periods, some empty
    result, no_valid = composite(values, times, valid, grid, method, ndvi=ndvi)
    end = grid[-1] + (grid[-1] - grid[-2])
    expected = _reference_composite(values, times, valid, grid, end, method, ndvi)
    assert result.shape == expected.shape and result.dtype == np.float32
    np.testing.assert_allclose(result, expected, rtol=1e-6, atol=1e-6, equal_nan=True)
    assert no_valid[0, 0] and np.isnan(result[:, 0, 0]).all()
    assert not np.isnan(result[:, ~no_valid]).any()


@pytest.mark.parametrize("step_days", [60, 200])  # ~5 frames per period (sorting network), ~20 (np.sort)
def test_composite_with_explicit_period_end_and_errors(step_days):
    values, times, valid = _random_block(10, t=40, h=4, w=4, f=2, valid_fraction=0.6)
    grid = date_grid(2023, DateGridConfig(step_days=step_days))
    end = np.datetime64("2024-01-01", "s")
    result, _ = composite(values, times, valid, grid, "median", period_end=end)
    expected = _reference_composite(values, times, valid, grid, end, "median")
    np.testing.assert_allclose(result, expected, rtol=1e-6, atol=1e-6, equal_nan=True)
    with pytest.raises(ValueError, match="ndvi"):
        composite(values, times, valid, grid, "max_ndvi")
    with pytest.raises(ValueError, match="method"):
        composite(values, times, valid, grid, "mean")
