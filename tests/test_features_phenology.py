"""Features stage, phenology: yearly statistics against numpy and hand-made series, and the stage's output names."""

from __future__ import annotations

import numpy as np
import pytest

from lcms.config import PHENOLOGY_STATS as CONFIG_STATS
from lcms.config import FeaturesConfig
from lcms.store import TileStore
from tasks.features.phenology import PHENOLOGY_STATS, phenology, phenology_names, with_phenology, year_fraction
from tasks.features.tile import features_tile, unpack

DATES = np.arange(np.datetime64("2023-01-01"), np.datetime64("2024-01-01"), np.timedelta64(16, "D"))  # 23 dates


def stat(out: np.ndarray, names: list[str], name: str) -> np.ndarray:
    return out[..., names.index(name)]


def test_order_statistics_equal_numpy_with_missing_values():
    rng = np.random.default_rng(7)
    values = rng.uniform(-0.2, 0.9, (len(DATES), 4, 5, 2)).astype(np.float32)
    values[rng.random(values.shape) < 0.25] = np.nan
    values[:, 0, 0, 0] = np.nan  # no valid value at all
    out = phenology(values, DATES)
    names = phenology_names(["A", "B"])
    assert out.shape == (4, 5, 2 * len(PHENOLOGY_STATS)) and out.dtype == np.float32
    assert names[:3] == ["A_min", "A_max", "A_mean"] and names[len(PHENOLOGY_STATS)] == "B_min"
    for j, feature in enumerate("AB"):
        v = values[..., j].astype(np.float64)
        for y in range(4):
            for x in range(5):
                series = v[:, y, x][np.isfinite(v[:, y, x])]
                got = {s: stat(out, names, f"{feature}_{s}")[y, x] for s in PHENOLOGY_STATS}
                if not series.size:
                    assert all(np.isnan(g) for g in got.values())
                    continue
                for p in (10, 25, 50, 75, 90):
                    assert got[f"p{p}"] == pytest.approx(np.percentile(series, p), abs=1e-6)
                assert got["min"] == pytest.approx(series.min(), abs=1e-6)
                assert got["max"] == pytest.approx(series.max(), abs=1e-6)
                assert got["amplitude"] == pytest.approx(series.max() - series.min(), abs=1e-6)
                assert got["mean"] == pytest.approx(series.mean(), abs=1e-6)
                assert got["std"] == pytest.approx(series.std(), abs=1e-6)


def test_a_hand_made_season_has_its_known_peak_start_end_integral_and_slopes():
    """A base of 0.1, then 0.2 rising linearly to 0.8 on date 10 and back down to 0.2 on date 16 (16-day steps)."""
    base, peak = 0.1, 0.8
    series = np.full(len(DATES), base)
    series[4:11] = np.linspace(0.2, peak, 7)  # dates 4..10 rise by 0.1 per 16 days
    series[10:17] = np.linspace(peak, 0.2, 7)  # dates 10..16 fall by 0.1 per 16 days
    values = series[:, None, None, None].astype(np.float32)
    out = phenology(values, DATES)[0, 0]
    got = dict(zip(PHENOLOGY_STATS, out, strict=True))
    day = lambda i: (DATES[i] - np.datetime64("2023-01-01")).astype(int) / 365  # noqa: E731
    assert got["amplitude"] == pytest.approx(0.7, abs=1e-6)
    assert got["peak_date"] == pytest.approx(day(10), abs=1e-6)  # 2023-05-30: day 149
    # Half amplitude: 0.45, first reached on date 7 (0.5), last on date 13 (0.5).
    assert got["start_date"] == pytest.approx(day(7), abs=1e-6)
    assert got["end_date"] == pytest.approx(day(13), abs=1e-6)
    assert got["season_length"] == pytest.approx(day(13) - day(7), abs=1e-6)
    # Above the minimum from date 7 to 13: trapezoids of 0.4, 0.5, 0.6, 0.7, 0.6, 0.5, 0.4 over 16-day steps.
    heights = series[7:14] - base
    expected = sum(0.5 * (a + b) * 16 / 365 for a, b in zip(heights[:-1], heights[1:], strict=True))
    assert got["season_integral"] == pytest.approx(expected, abs=1e-6)
    assert got["max_rise"] == pytest.approx(0.1 / 16 * 30, abs=1e-6)
    assert got["max_fall"] == pytest.approx(0.1 / 16 * 30, abs=1e-6)
    # A gap is bridged: the slope runs between the valid dates on either side.
    gapped = values.copy()
    gapped[5:9] = np.nan
    rise = dict(zip(PHENOLOGY_STATS, phenology(gapped, DATES)[0, 0], strict=True))["max_rise"]
    assert rise == pytest.approx(0.1 / 16 * 30, abs=1e-6)  # 0.5 over 5 steps, then 0.1 per step
    assert year_fraction(np.array(["2023-01-01", "2023-12-31"], dtype="datetime64[D]")).tolist() == [0, 364 / 365]


def test_bad_input_and_config():
    with pytest.raises(ValueError, match="time, y, x, feature"):
        phenology(np.zeros((3, 4, 5)), DATES[:3])
    with pytest.raises(ValueError, match="3 dates for 4"):
        phenology(np.zeros((4, 1, 1, 1)), DATES[:3])
    with pytest.raises(ValueError, match="unknown phenology statistics"):
        phenology(np.zeros((3, 1, 1, 1)), DATES[:3], ["p95"])
    assert tuple(CONFIG_STATS) == PHENOLOGY_STATS
    cfg = FeaturesConfig(bands=["B04"], indices=["NDVI"], phenology_features=["NDVI"], phenology_stats=["p90", "max"])
    assert cfg.stored_feature_names == ["B04", "NDVI", "NDVI_p90", "NDVI_max"]
    assert FeaturesConfig().stored_feature_names == FeaturesConfig().feature_names
    for bad in ({"phenology_features": ["EVI"]}, {"phenology_features": ["NDVI"], "phenology_stats": []}):
        with pytest.raises(ValueError, match="phenology"):
            FeaturesConfig(bands=["B04"], indices=["NDVI"], **bad)
    values = np.random.default_rng(1).random((3, 2, 2, 2)).astype(np.float32)
    appended = with_phenology(values, DATES[:3], cfg)
    assert appended.shape == (3, 2, 2, 4)
    np.testing.assert_array_equal(appended[..., :2], values)
    np.testing.assert_allclose(appended[..., 2], np.broadcast_to(np.percentile(values[..., 1], 90, axis=0), (3, 2, 2)))
    np.testing.assert_array_equal(appended[..., 3], np.broadcast_to(values[..., 1].max(axis=0), (3, 2, 2)))


def test_features_stage_writes_phenology_with_its_names(tmp_path):
    """A tiny synthetic tile: the stored phenology is the phenology of the stored series, the same at every date."""
    from flows.common import load_grid
    from lcms.config import parse_config
    from tasks.download.tile import download_tile

    cfg = parse_config(
        {
            "name": "phenology-test",
            "aoi": {"bbox": [460_000, 5_090_000, 460_300, 5_090_300], "bbox_crs": "EPSG:32633"},
            "years": [2023],
            "grid": {"tile_size_m": 300, "buffer_m": 0},
            "store": {"url": str(tmp_path / "store")},
            "download": {"source": {"seed": 5, "dates_per_year": 8, "cloud_cover": 0.2}, "block_size": 256},
            "features": {
                "block_size": 256,
                "bands": ["B04"],
                "indices": ["NDVI"],
                "min_valid_coverage": 0.0,
                "context_features": ["NDVI"],
                "context_sizes": [3],
                "phenology_features": ["NDVI"],
            },
        }
    )
    store = TileStore.from_config(cfg.store)
    tile = load_grid(cfg, store).tiles[0]
    download_tile(store, tile, 2023, cfg.download)
    features_tile(store, tile, 2023, cfg.features)
    out = store.open_tile("features", 2023, tile.tile_id)
    names = [str(n) for n in out.coord("feature")]
    expected_names = ["B04", "NDVI", "NDVI_mean3", "NDVI_std3", *[f"NDVI_{s}" for s in PHENOLOGY_STATS]]
    assert names == expected_names == cfg.features.stored_feature_names
    stored = unpack(out.read("features"))
    dates = out.coord("time")
    pheno = stored[..., 4:]
    np.testing.assert_array_equal(pheno, np.broadcast_to(pheno[:1], pheno.shape))  # the same at every date
    expected = phenology(stored[..., [1]], dates)  # from the stored (rounded) NDVI series
    finite = np.isfinite(stored[..., 1]).any(axis=0)
    assert finite.mean() > 0.9
    # int16 packing rounds each value by up to 0.5e-4 (the series here, the statistics there). The season's
    # dates and integral jump when a value sits on the half-amplitude threshold (the peak on a near tie), so
    # rounding may move a few.
    for k, name in enumerate(PHENOLOGY_STATS):
        close = np.isclose(pheno[0][..., k][finite], expected[..., k][finite], atol=1e-3)
        if name in ("peak_date", "start_date", "end_date", "season_length", "season_integral"):
            assert close.mean() > 0.98, name
        else:
            assert close.all(), name
