"""Imagery composites' array maths (tasks/export/imagery.py): periods, medians of valid dates, display scaling.

The composites' COGs, STAC items and tiles are tested end to end in tests/test_serve_maps.py.
"""

from __future__ import annotations

import datetime as dt
import warnings

import numpy as np
import pytest

from tasks.export.imagery import display_rgb, median_composite, periods_of, to_display


def test_periods_cover_the_year_without_gaps():
    periods = periods_of(2024, ["month", "year", "quarter"])
    names = [p.name for p in periods]
    assert names[:5] == ["2024", "2024-Q1", "2024-Q2", "2024-Q3", "2024-Q4"] and names[-1] == "2024-12"
    quarters = periods[1:5]
    assert quarters[0].start == dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    assert [q.end for q in quarters[:-1]] == [q.start for q in quarters[1:]]
    assert quarters[-1].end == dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    times = np.array(["2024-03-31T23:59:59", "2024-04-01T00:00:00", "2023-12-31T12:00:00"], dtype="datetime64[s]")
    assert quarters[0].contains(times).tolist() == [True, False, False]
    assert quarters[1].contains(times).tolist() == [False, True, False]


def test_median_of_valid_dates_only():
    # One pixel, five dates, two bands: the cloudy dates (bright) are left out.
    bands = np.array([[100, 10], [9000, 9000], [300, 30], [200, 20], [8000, 8000]], np.uint16).reshape(5, 1, 1, 2)
    valid = np.array([True, False, True, True, False]).reshape(5, 1, 1)
    out = median_composite(bands, valid)
    assert out.shape == (2, 1, 1) and out[:, 0, 0].tolist() == [200, 20]
    # An even number of valid dates: the mean of the middle two, rounded; DN 0 never counts.
    bands[3, 0, 0] = 0
    assert median_composite(bands, valid)[:, 0, 0].tolist() == [200, 20]  # 100, 300 → 200; band 2: 10, 30 → 20
    # No valid date: no data.
    assert median_composite(bands, np.zeros_like(valid))[:, 0, 0].tolist() == [0, 0]
    assert median_composite(bands[:0], valid[:0]).shape == (2, 1, 1)


def test_median_in_blocks_equals_numpy_on_the_whole(monkeypatch):
    import tasks.export.imagery as imagery

    rng = np.random.default_rng(3)
    bands = rng.integers(1, 5000, size=(7, 40, 30, 3), dtype=np.uint16)
    valid = rng.random((7, 40, 30)) < 0.6
    monkeypatch.setattr(imagery, "BLOCK_BYTES", 7 * 30 * 3 * 2 * 3)  # three rows a block
    got = median_composite(bands, valid)
    masked = np.where(valid[..., None], bands.astype(float), np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN pixels
        expected = np.nanmedian(masked, axis=0)
    expected = np.where(np.isnan(expected), 0, np.rint(expected)).transpose(2, 0, 1)
    np.testing.assert_array_equal(got, expected)


def test_display_scaling():
    dn = np.array([0, 1, 1500, 3000, 9000], np.uint16)
    assert to_display(dn, 0.3).tolist() == [0, 1, 128, 255, 255]
    rgb = np.array([[[100]], [[0]], [[100]]], np.uint16)  # no data in one band: none in all three
    assert display_rgb(rgb).ravel().tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match="max_reflectance"):
        to_display(dn, 0)
