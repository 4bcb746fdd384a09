"""Tests of the spectral features: against independent float64 computations, synthetic scenes and real data."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from lcms.config import FEATURE_INDICES
from lcms.geometry import PixelGrid
from lcms.sentinel2 import L1C_BANDS, L2A_BANDS, REFLECTANCE_SCALE
from tasks.download.synthetic import SyntheticScene
from tasks.features import indices
from tasks.features.indices import INDEX_BANDS, check_features, feature_stack

# (a, b) of each normalised difference (a - b) / (a + b), written out independently of the module.
PAIRS = {"NDVI": ("B08", "B04"), "NDWI": ("B03", "B08"), "NDBI": ("B11", "B08")}
# Shi & Xu (2019), six-band Sentinel-2 TOA set, typed in again from the paper's table for the check.
SHI_XU = {
    "TC_BRIGHTNESS": {"B02": 0.3510, "B03": 0.3813, "B04": 0.3437, "B08": 0.7196, "B11": 0.2396, "B12": 0.1949},
    "TC_GREENNESS": {"B02": -0.3599, "B03": -0.3533, "B04": -0.4734, "B08": 0.6633, "B11": 0.0087, "B12": -0.2856},
    "TC_WETNESS": {"B02": 0.2578, "B03": 0.2305, "B04": 0.0883, "B08": 0.1071, "B11": -0.7611, "B12": -0.5308},
}
LAND_COVER = {"forest": 2, "water": 5, "artificial": 8}


def random_dn(shape=(3, 17, 23), seed=0) -> np.ndarray:
    """Random uint16 DN over the whole range of TOA reflectance, with no-data pixels and exact zeros."""
    rng = np.random.default_rng(seed)
    dn = rng.integers(0, 12_000, size=(*shape, len(L1C_BANDS)), dtype=np.uint16)
    dn[0, :3] = 0  # no data: every band 0
    dn[1, 0, :5, :] = rng.integers(0, 2, size=(5, len(L1C_BANDS)), dtype=np.uint16)  # 0 and 1 DN mixed
    dn[1, 1, :, [L1C_BANDS.index(b) for b in ("B03", "B04", "B08", "B11")]] = 0  # only the index bands 0
    dn[2, 5, 5, :] = 65_535  # saturated
    return dn


def strict_stack(*args) -> np.ndarray:
    """feature_stack with every numpy floating-point problem and every warning turned into an error."""
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        return feature_stack(*args)


def reflectance64(dn: np.ndarray, bands, name: str) -> np.ndarray:
    return dn[..., list(bands).index(name)].astype(np.float64) / REFLECTANCE_SCALE


# --------------------------------------------------------------------------- exact values


@pytest.mark.parametrize("index", list(PAIRS))
def test_normalised_difference_matches_float64(index):
    dn = random_dn()
    a, b = (reflectance64(dn, L1C_BANDS, name) for name in PAIRS[index])
    total = a + b
    expected = np.divide(a - b, total, out=np.zeros_like(total), where=total > 0)

    got = strict_stack(dn, L1C_BANDS, [index])

    assert got.shape == (*dn.shape[:3], 1) and got.dtype == np.float32
    np.testing.assert_allclose(got[..., 0], expected, rtol=1e-6, atol=0)
    assert np.all(got[0, :3] == 0)  # no-data pixels are 0, not NaN
    assert np.all(np.isfinite(got)) and np.all(np.abs(got) <= 1)
    assert (total == 0).sum() >= 4 * 23  # the zero denominators were really exercised


def test_band_features_are_reflectance():
    dn = random_dn()
    got = strict_stack(dn, L1C_BANDS, ["B12", "B02", "B8A"])
    for k, name in enumerate(["B12", "B02", "B8A"]):
        np.testing.assert_allclose(got[..., k], reflectance64(dn, L1C_BANDS, name), rtol=1e-7, atol=0)


def test_tasselled_cap_hand_computed_pixels():
    # Two clear pixels, DN of B02 B03 B04 B08 B11 B12: a dense canopy and a bright dry field.
    canopy = {"B02": 820, "B03": 1010, "B04": 690, "B08": 3650, "B11": 1720, "B12": 810}
    field = {"B02": 1500, "B03": 1720, "B04": 2110, "B08": 2740, "B11": 3480, "B12": 2870}
    bands = list(canopy)
    dn = np.array([[[[canopy[b] for b in bands], [field[b] for b in bands]]]], np.uint16)  # (1, 1, 2, 6)

    got = strict_stack(dn, bands, ["TC_BRIGHTNESS", "TC_GREENNESS", "TC_WETNESS"])[0, 0]

    # Written out term by term from the coefficients, on reflectance.
    bright_canopy = 0.3510 * 0.082 + 0.3813 * 0.101 + 0.3437 * 0.069 + 0.7196 * 0.365 + 0.2396 * 0.172 + 0.1949 * 0.081
    green_canopy = -0.3599 * 0.082 - 0.3533 * 0.101 - 0.4734 * 0.069 + 0.6633 * 0.365 + 0.0087 * 0.172 - 0.2856 * 0.081
    wet_canopy = 0.2578 * 0.082 + 0.2305 * 0.101 + 0.0883 * 0.069 + 0.1071 * 0.365 - 0.7611 * 0.172 - 0.5308 * 0.081
    bright_field = 0.3510 * 0.150 + 0.3813 * 0.172 + 0.3437 * 0.211 + 0.7196 * 0.274 + 0.2396 * 0.348 + 0.1949 * 0.287
    green_field = -0.3599 * 0.150 - 0.3533 * 0.172 - 0.4734 * 0.211 + 0.6633 * 0.274 + 0.0087 * 0.348 - 0.2856 * 0.287
    wet_field = 0.2578 * 0.150 + 0.2305 * 0.172 + 0.0883 * 0.211 + 0.1071 * 0.274 - 0.7611 * 0.348 - 0.5308 * 0.287
    expected = np.array([[bright_canopy, green_canopy, wet_canopy], [bright_field, green_field, wet_field]])
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
    # The canopy is greener and wetter, the field brighter.
    assert got[0, 1] > got[1, 1] and got[0, 2] > got[1, 2] and got[1, 0] > got[0, 0]


def test_tasselled_cap_matches_float64_dot_product_on_random_dn():
    dn = random_dn(seed=1)
    got = strict_stack(dn, L1C_BANDS, list(SHI_XU))
    for k, (name, coefficients) in enumerate(SHI_XU.items()):
        expected = sum(c * reflectance64(dn, L1C_BANDS, band) for band, c in coefficients.items())
        np.testing.assert_allclose(got[..., k], expected, rtol=1e-6, atol=2e-7, err_msg=name)
    assert np.all(got[0, :3] == 0)  # no data: every component 0


def test_tasselled_cap_coefficients_are_orthonormal_rotation():
    # A transcription check: the published rows are (to 4 decimals) orthonormal.
    rows = np.array([[SHI_XU[n][b] for b in indices.TC_BANDS] for n in SHI_XU])
    np.testing.assert_allclose(rows @ rows.T, np.eye(3), atol=1e-3)
    module_rows = np.array([indices.TC_COEFFICIENTS[n] for n in SHI_XU])
    np.testing.assert_array_equal(module_rows, rows)


def test_stack_layout_order_and_chunking(monkeypatch):
    dn = random_dn(shape=(7, 9, 11))
    features = ["NDBI", "B04", "TC_WETNESS", "NDVI", "B08"]
    full = strict_stack(dn, L1C_BANDS, features)
    for k, feature in enumerate(features):  # each layer equals the feature computed alone
        np.testing.assert_array_equal(full[..., k], strict_stack(dn, L1C_BANDS, [feature])[..., 0])
    monkeypatch.setattr(indices, "_CHUNK_PIXELS", 2 * 9 * 11)  # chunks of 2 dates, the last one short
    np.testing.assert_array_equal(strict_stack(dn, L1C_BANDS, features), full)


def test_every_index_works_on_l2a_and_on_just_its_bands():
    l1c = random_dn(seed=2)
    l2a = l1c[..., [L1C_BANDS.index(b) for b in L2A_BANDS]]  # no B10
    features = list(FEATURE_INDICES)
    check_features(L2A_BANDS, features)
    expected = strict_stack(l1c, L1C_BANDS, features)
    np.testing.assert_array_equal(strict_stack(l2a, L2A_BANDS, features), expected)
    for k, index in enumerate(features):
        only = list(INDEX_BANDS[index])[::-1]  # just the bands it needs, in another order
        subset = l1c[..., [L1C_BANDS.index(b) for b in only]]
        np.testing.assert_array_equal(strict_stack(subset, only, [index])[..., 0], expected[..., k])


# --------------------------------------------------------------------------- realistic behaviour


@pytest.fixture(scope="module")
def summer_tile():
    """June-August of a synthetic 5 km x 5 km tile at 40 m, with all its features."""
    scene = SyntheticScene(seed=3)
    grid = PixelGrid.from_bounds("EPSG:32633", (620_000, 5_100_000, 625_120, 5_105_120), 40.0)
    dates = scene.acquisition_dates(2023)
    month = dates.astype("datetime64[M]").astype(int) % 12 + 1
    tile = scene.render(grid, 2023, dates[np.isin(month, (6, 7, 8))])
    features = list(FEATURE_INDICES)
    stack = strict_stack(tile.bands, L1C_BANDS, features)
    clear = tile.data_mask & ~tile.cloud_mask
    # Pure pixels only: at class borders the synthetic scene mixes a pixel with its lower right corner's class.
    corner = scene.land_cover(PixelGrid.from_bounds("EPSG:32633", (620_005, 5_099_995, 625_125, 5_105_115), 40.0), 2023)
    land_cover = np.broadcast_to(np.where(corner == tile.land_cover, tile.land_cover, 0), clear.shape)

    def values(feature: str, cover: str) -> np.ndarray:
        pixels = clear & (land_cover == LAND_COVER[cover])
        assert pixels.sum() > 500, f"too few clear {cover} pixels in the test tile"
        return stack[..., features.index(feature)][pixels]

    return values


def test_synthetic_forest_is_green_in_summer(summer_tile):
    ndvi = summer_tile("NDVI", "forest")
    assert np.median(ndvi) > 0.65 and np.percentile(ndvi, 5) > 0.5
    assert np.median(summer_tile("TC_GREENNESS", "forest")) > np.median(summer_tile("TC_GREENNESS", "artificial"))


def test_synthetic_water_has_positive_ndwi(summer_tile):
    ndwi = summer_tile("NDWI", "water")
    assert np.percentile(ndwi, 5) > 0
    assert np.median(ndwi) > np.median(summer_tile("NDWI", "forest")) + 0.5
    # Water is the wettest cover in tasselled-cap space.
    assert np.median(summer_tile("TC_WETNESS", "water")) > np.median(summer_tile("TC_WETNESS", "artificial"))


def test_synthetic_built_up_has_higher_ndbi_than_forest(summer_tile):
    assert np.median(summer_tile("NDBI", "artificial")) > np.median(summer_tile("NDBI", "forest")) + 0.2


# --------------------------------------------------------------------------- real data


def test_ndvi_matches_eopatch_on_real_l1c(shared_data):
    patch = shared_data / "slovenia-testpatch"
    meta = json.loads((patch / "l1c_scenes_timestamps.json").read_text())
    reflectance = np.load(patch / "l1c_scenes.npy")
    dn = np.round(reflectance * REFLECTANCE_SCALE).astype(np.uint16)
    eopatch_ndvi = np.load(patch / "eopatch" / "data" / "NDVI.npy")[..., 0]

    got = strict_stack(dn, meta["band_order"], ["NDVI", "TC_BRIGHTNESS"])

    for scene, time_index in meta["index_to_eopatch_time_index"].items():
        np.testing.assert_allclose(got[int(scene), ..., 0], eopatch_ndvi[time_index], rtol=0, atol=1e-3)
    # Scenes 0 and 1 are fully cloudy, 2-4 clear: clouds are bright.
    brightness = got[..., 1].mean(axis=(1, 2))
    assert brightness[:2].min() > brightness[2:].max()


# --------------------------------------------------------------------------- errors


def test_unknown_feature_names_it_and_lists_the_choices():
    with pytest.raises(ValueError, match="NDMI") as info:
        check_features(L2A_BANDS, ["NDVI", "NDMI"])
    assert "B02" in str(info.value) and "TC_WETNESS" in str(info.value)
    with pytest.raises(ValueError, match="'B10'"):  # a band, but not one of L2A
        feature_stack(np.zeros((1, 2, 2, len(L2A_BANDS)), np.uint16), L2A_BANDS, ["B10"])


@pytest.mark.parametrize(("index", "missing"), [("NDBI", "B11"), ("TC_WETNESS", "B12"), ("NDWI", "B03")])
def test_missing_band_names_the_index_and_the_band(index, missing):
    band_names = [b for b in L2A_BANDS if b != missing]
    with pytest.raises(ValueError, match=f"{index} needs.*{missing}"):
        check_features(band_names, [index])
    with pytest.raises(ValueError, match=f"{index} needs.*{missing}"):
        feature_stack(np.zeros((1, 2, 2, len(band_names)), np.uint16), band_names, ["B02", index])


def test_empty_and_repeated_features_are_rejected():
    with pytest.raises(ValueError, match="no features"):
        check_features(L1C_BANDS, [])
    with pytest.raises(ValueError, match="no features"):
        feature_stack(np.zeros((1, 2, 2, 13), np.uint16), L1C_BANDS, [])
    with pytest.raises(ValueError, match="repeat.*NDVI"):
        check_features(L1C_BANDS, ["NDVI", "B04", "NDVI"])


def test_bad_arrays_are_rejected():
    with pytest.raises(ValueError, match="got \\(1, 2, 2, 12\\)"):
        feature_stack(np.zeros((1, 2, 2, 12), np.uint16), L1C_BANDS, ["NDVI"])
    with pytest.raises(TypeError, match="integer DN"):
        feature_stack(np.zeros((1, 2, 2, 13), np.float32), L1C_BANDS, ["NDVI"])


def test_signed_and_strided_inputs_give_the_same_features():
    # uint16 DN take the unmasked division (by max(a + b, 1)); other integer dtypes the masked one.
    dn = random_dn(shape=(4, 13, 17), seed=3)
    features = ["NDVI", "NDWI", "NDBI", "B02", "TC_GREENNESS"]
    expected = strict_stack(dn, L1C_BANDS, features)
    np.testing.assert_array_equal(strict_stack(dn.astype(np.int32), L1C_BANDS, features), expected)
    wide = np.zeros((4, 13, 34, len(L1C_BANDS)), np.uint16)
    wide[:, :, ::2] = dn  # a strided view in
    np.testing.assert_array_equal(strict_stack(wide[:, :, ::2], L1C_BANDS, features), expected)
    ndvi = expected[..., 0]
    assert np.all(ndvi[0, :3] == 0) and np.all(np.abs(ndvi) <= 1)  # no data: 0; ratios within [-1, 1]
