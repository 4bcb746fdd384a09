"""Cloud masking (tasks/download/cloud_mask.py): real Sentinel-2 data, synthetic tiles, blocks and halos."""

from __future__ import annotations

import json

import numpy as np
import pytest
from s2cloudless import S2PixelCloudDetector

from lcms.config import CloudMaskConfig
from lcms.geometry import PixelGrid
from lcms.sentinel2 import L1C_BANDS, L2A_BANDS, REFLECTANCE_SCALE
from tasks.download import cloud_mask as cm
from tasks.download.cloud_mask import cloud_masks, halo_px, valid_coverage, valid_mask
from tasks.download.synthetic import SyntheticScene, _date_seconds

FULL = CloudMaskConfig(analysis_resolution_m=10)
COARSE = CloudMaskConfig()


def _grid(h: int, w: int, x0: float = 460_000, y1: float = 5_100_000) -> PixelGrid:
    return PixelGrid("EPSG:32633", (10, 0, x0, 0, -10, y1), (h, w))


def _cloudy_dates(scene: SyntheticScene, n: int, lo: float = 0.15, hi: float = 0.85) -> np.ndarray:
    """The first n dates of 2023 whose cloud cover is partial (so masks have edges)."""
    dates = scene.acquisition_dates(2023)
    cover = np.array([scene._cloud_params(int(s))[1] for s in _date_seconds(dates)])
    return dates[(cover > lo) & (cover < hi)][:n]


# --------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def slovenia(shared_data):
    folder = shared_data / "slovenia-testpatch"
    scenes = np.load(folder / "l1c_scenes.npy")
    meta = json.loads((folder / "l1c_scenes_timestamps.json").read_text())
    assert meta["band_order"] == list(L1C_BANDS)
    timestamps = json.loads((folder / "eopatch" / "timestamps.json").read_text())
    frames = [timestamps.index(meta["index_to_timestamp"][str(i)]) for i in range(len(scenes))]
    clm = np.load(folder / "eopatch" / "mask" / "CLM.npy")[frames, ..., 0].astype(bool)
    is_data = np.load(folder / "eopatch" / "mask" / "IS_DATA.npy")[frames, ..., 0].astype(bool)
    dn = np.rint(scenes * REFLECTANCE_SCALE).astype(np.uint16)
    full = cloud_masks(dn, L1C_BANDS, is_data, 10, FULL)
    return {"scenes": scenes, "dn": dn, "is_data": is_data, "clm": clm, "full": full}


def test_full_resolution_reproduces_eopatch_clm(slovenia):
    prob, mask = slovenia["full"]
    agreement = (mask == slovenia["clm"]).mean()
    assert agreement >= 0.99, agreement  # measured 99.97 %
    assert prob.dtype == np.uint8 and prob.max() <= 100


def test_full_resolution_is_s2cloudless_exactly(slovenia):
    """Same model, filter, threshold and dilation as eo-learn's CloudMaskTask defaults."""
    detector = S2PixelCloudDetector(threshold=0.4, average_over=4, dilation_size=2, all_bands=True)
    refl = slovenia["dn"].astype(np.float32) / np.float32(REFLECTANCE_SCALE)
    expected = detector.get_cloud_masks(refl).astype(bool)
    np.testing.assert_array_equal(slovenia["full"][1], expected)
    expected_prob = np.rint(detector.get_cloud_probability_maps(refl) * 100)
    np.testing.assert_array_equal(slovenia["full"][0], expected_prob)


def test_coarse_default_agrees_with_full_resolution_on_real_patch(slovenia):
    # The patch (1 km) is 7 × 7 cells at 160 m; its scenes are fully cloudy or clear.
    _, coarse = cloud_masks(slovenia["dn"], L1C_BANDS, slovenia["is_data"], 10, COARSE)
    agreement = (coarse == slovenia["full"][1]).mean()
    assert agreement >= 0.95, agreement  # measured 99.97 %


def test_disks_scale_with_data_resolution(slovenia):
    """At 20 m data resolution (full res) the 10 m disks 4 and 2 become 2 and 1 px."""
    dn, is_data = slovenia["dn"][:, ::2, ::2], slovenia["is_data"][:, ::2, ::2]
    _, mask = cloud_masks(dn, L1C_BANDS, is_data, 20, CloudMaskConfig(analysis_resolution_m=20))
    detector = S2PixelCloudDetector(average_over=2, dilation_size=1, all_bands=True)
    expected = detector.get_cloud_masks(dn.astype(np.float32) / np.float32(REFLECTANCE_SCALE)).astype(bool)
    np.testing.assert_array_equal(mask, expected)


def test_parameter_scaling_and_halo():
    assert [cm._scaled_px(4, r) for r in (10, 20, 40, 80, 160)] == [4, 2, 1, 1, 0]
    assert [cm._scaled_px(2, r) for r in (10, 20, 40, 80, 160)] == [2, 1, 1, 0, 0]
    assert not cm._disks_resolved(COARSE)  # 160 m: the field is thresholded as is
    assert cm._disks_resolved(CloudMaskConfig(analysis_resolution_m=40))
    assert halo_px(FULL, 10) == 6  # averaging 4 + dilation 2
    assert halo_px(COARSE, 10) == 32  # 2 cells of 16 px
    assert halo_px(CloudMaskConfig(analysis_resolution_m=40), 10) == (2 + 2) * 4
    assert halo_px(CloudMaskConfig(analysis_resolution_m=20), 20) == 3
    for cfg in (COARSE, CloudMaskConfig(analysis_resolution_m=40), CloudMaskConfig(analysis_resolution_m=320)):
        assert halo_px(cfg, 10) % cm._factor(cfg, 10) == 0
    with pytest.raises(ValueError, match="whole multiple"):
        halo_px(CloudMaskConfig(analysis_resolution_m=25), 10)
    with pytest.raises(ValueError, match="whole multiple"):
        halo_px(CloudMaskConfig(analysis_resolution_m=5), 10)


# --------------------------------------------------------------------------- synthetic tiles


@pytest.fixture(scope="module")
def realistic():
    """A 500 × 500 px tile (not a multiple of 16) with kilometre-sized clouds, 3 partly cloudy dates."""
    scene = SyntheticScene(seed=3)
    tile = scene.render(_grid(500, 500), 2023, _cloudy_dates(scene, 3))
    full = cloud_masks(tile.bands, L1C_BANDS, tile.data_mask, 10, FULL)
    coarse = cloud_masks(tile.bands, L1C_BANDS, tile.data_mask, 10, COARSE)
    return tile, full, coarse


def test_coarse_default_agrees_with_full_resolution_on_synthetic_tile(realistic):
    tile, (_, full), (_, coarse) = realistic
    assert 0.1 < full.mean() < 0.9
    agreement = (coarse == full).mean()
    assert agreement >= 0.95, agreement


def test_upsampled_probabilities_are_smooth(realistic):
    tile, _, (prob, _) = realistic
    p = prob.astype(np.int16)
    # Bilinear upsampling of 16 px cells: no 16-px steps, neighbouring pixels differ by little.
    assert np.abs(np.diff(p, axis=2)).max() <= 12
    assert np.abs(np.diff(p, axis=1)).max() <= 12
    # ... while nearest upsampling would jump at every cell edge by the full cell difference.
    assert np.abs(np.diff(p, axis=2)).mean() < 1.0


@pytest.mark.parametrize("cfg", [FULL, COARSE], ids=["10m", "160m"])
def test_opaque_clouds_detected_and_clear_pixels_not(realistic, cfg):
    tile, full, coarse = realistic
    prob, mask = full if cfg is FULL else coarse
    opacity = SyntheticScene(seed=3).cloud_opacity(_grid(500, 500), tile.dates)
    opaque = (opacity > 0.9) & tile.data_mask
    clear = (opacity == 0) & tile.data_mask
    assert opaque.sum() > 10_000 and clear.sum() > 10_000
    assert mask[opaque].mean() > 0.98
    assert mask[clear].mean() < 0.05  # measured 0.07 % (10 m), 1.9 % (160 m)
    assert np.median(prob[opaque]) > 60 and np.median(prob[clear]) < 20
    assert (mask == tile.cloud_mask).mean() > 0.93


@pytest.fixture(scope="module")
def swath_tile():
    """Partly cloudy dates, one of them cut by a swath edge, on a tile of 200 × 190 px."""
    scene = SyntheticScene(seed=5, swath_edge_fraction=1.0, cloud_cover=0.5)
    grid = _grid(200, 190)
    dates = _cloudy_dates(scene, 3)
    tile = scene.render(grid, 2023, dates)
    assert (~tile.data_mask).any() and tile.data_mask.any()
    return tile


@pytest.mark.parametrize(
    "cfg",
    [FULL, COARSE, CloudMaskConfig(analysis_resolution_m=40)],
    ids=["10m", "160m", "40m"],
)
def test_no_data_pixels(swath_tile, cfg):
    prob, mask = cloud_masks(swath_tile.bands, L1C_BANDS, swath_tile.data_mask, 10, cfg)
    nodata = ~swath_tile.data_mask
    assert (prob[nodata] == 255).all() and not mask[nodata].any()
    assert (prob[~nodata] <= 100).all()
    assert mask.any()


@pytest.mark.parametrize(
    ("cfg", "block"),
    [(FULL, 64), (COARSE, 64), (COARSE, 96), (CloudMaskConfig(analysis_resolution_m=40), 48)],
    ids=["10m", "160m", "160m-96", "40m"],
)
def test_blocks_with_halo_equal_whole_tile(swath_tile, cfg, block):
    bands, data_mask = swath_tile.bands, swath_tile.data_mask
    whole_prob, whole_mask = cloud_masks(bands, L1C_BANDS, data_mask, 10, cfg)
    assert whole_mask.any() and not whole_mask.all()
    halo = halo_px(cfg, 10)
    h, w = data_mask.shape[1:]
    for y0 in range(0, h, block):
        for x0 in range(0, w, block):
            y1, x1 = min(y0 + block, h), min(x0 + block, w)
            ya, xa = max(y0 - halo, 0), max(x0 - halo, 0)
            yb, xb = min(y1 + halo, h), min(x1 + halo, w)
            prob, mask = cloud_masks(bands[:, ya:yb, xa:xb], L1C_BANDS, data_mask[:, ya:yb, xa:xb], 10, cfg)
            inner = np.s_[:, y0 - ya : y1 - ya, x0 - xa : x1 - xa]
            np.testing.assert_array_equal(prob[inner], whole_prob[:, y0:y1, x0:x1])
            np.testing.assert_array_equal(mask[inner], whole_mask[:, y0:y1, x0:x1])


# --------------------------------------------------------------------------- small helpers and errors


def test_valid_mask_and_coverage():
    rng = np.random.default_rng(0)
    data = rng.random((4, 7, 9)) < 0.7
    cloud = (rng.random((4, 7, 9)) < 0.3) & data
    data[3] = False
    valid = valid_mask(data, cloud)
    expected = np.array([[[d and not c for d, c in zip(dr, cr, strict=True)] for dr, cr in zip(df, cf, strict=True)]
                         for df, cf in zip(data, cloud, strict=True)])  # fmt: skip
    np.testing.assert_array_equal(valid, expected)
    coverage = valid_coverage(valid)
    assert coverage.dtype == np.float32 and coverage.shape == (4,)
    np.testing.assert_allclose(coverage, [valid[t].sum() / 63 for t in range(4)], rtol=1e-6)
    assert coverage[3] == 0


def test_missing_bands_error():
    bands = np.zeros((1, 8, 8, len(L2A_BANDS)), np.uint16)
    with pytest.raises(ValueError, match=r"B10.*L1C") as err:
        cloud_masks(bands, L2A_BANDS, np.ones((1, 8, 8), bool), 10, COARSE)
    assert "L2A" in str(err.value)


@pytest.mark.parametrize("cfg", [FULL, COARSE], ids=["10m", "160m"])
def test_zero_dates_and_no_data_dates(cfg):
    prob, mask = cloud_masks(np.zeros((0, 30, 20, 13), np.uint16), L1C_BANDS, np.zeros((0, 30, 20), bool), 10, cfg)
    assert prob.shape == mask.shape == (0, 30, 20) and prob.dtype == np.uint8 and mask.dtype == bool
    prob, mask = cloud_masks(np.zeros((2, 30, 20, 13), np.uint16), L1C_BANDS, np.zeros((2, 30, 20), bool), 10, cfg)
    assert (prob == 255).all() and not mask.any()


def test_model_bands_match_s2cloudless():
    from s2cloudless.utils import MODEL_BANDS

    assert tuple(MODEL_BANDS) == cm.MODEL_BANDS
