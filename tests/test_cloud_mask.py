"""Cloud masking (tasks/download/cloud_mask.py): real Sentinel-2 data, synthetic tiles, the lattice, blocks, halos."""

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
COARSE = CloudMaskConfig()  # the default: 160 m, refined at 40 m
COARSE_ONLY = CloudMaskConfig(refine_resolution_m=None)  # 160 m alone
# Every analysis resolution the stage supports on a 10 m grid, with and without refinement.
RESOLUTIONS = {
    "10m": FULL,
    "20m": CloudMaskConfig(analysis_resolution_m=20, refine_resolution_m=None),
    "40m": CloudMaskConfig(analysis_resolution_m=40, refine_resolution_m=None),
    "60m": CloudMaskConfig(analysis_resolution_m=60, refine_resolution_m=None),
    "80m": CloudMaskConfig(analysis_resolution_m=80, refine_resolution_m=None),
    "160m": COARSE_ONLY,
    "160m-refined-10m": CloudMaskConfig(refine_resolution_m=10),
    "160m-refined-20m": CloudMaskConfig(refine_resolution_m=20),
    "default": COARSE,
}


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
    assert agreement >= 0.99, agreement  # measured 99.98 %


@pytest.fixture(scope="module")
def composites(shared_data, slovenia):
    """Real cloud edges: the patch's real cloudy scene 0 mixed into its real clear scene 2 with the
    cloud shapes of its 18 partly cloudy frames (eo-learn's CLP as the cloud fraction), as
    benchmarks/cloud_mask_real.py builds them."""
    folder = shared_data / "slovenia-testpatch" / "eopatch"
    clp = np.load(folder / "data" / "CLP.npy")[..., 0]
    cover = np.load(folder / "mask" / "CLM.npy")[..., 0].reshape(len(clp), -1).mean(axis=1)
    frames = np.flatnonzero((cover > 0.03) & (cover < 0.97))
    assert len(frames) == 18
    refl = slovenia["scenes"]
    a = clp[frames][..., None]
    dn = np.rint((a * refl[0] + (1 - a) * refl[2]) * REFLECTANCE_SCALE).astype(np.uint16)
    data = np.ones(dn.shape[:3], bool)
    return dn, data, cloud_masks(dn, L1C_BANDS, data, 10, FULL)[1]


def test_refinement_recovers_real_cloud_edges(composites):
    """On partly cloudy real scenes 160 m alone misses edges; refining at 40 m brings the mask
    close to 10 m at a fraction of the model's work."""
    dn, data, full = composites
    origin = cm.lattice_origin(PixelGrid("EPSG:32633", (10, 0, 465181.05, 0, -10, 5080254.63), (101, 100)))
    assert 0.2 < full.mean() < 0.8
    _, coarse = cloud_masks(dn, L1C_BANDS, data, 10, COARSE_ONLY, origin=origin)
    _, refined = cloud_masks(dn, L1C_BANDS, data, 10, COARSE, origin=origin)
    coarse_agreement, refined_agreement = (coarse == full).mean(), (refined == full).mean()
    assert coarse_agreement < 0.95, coarse_agreement  # measured 92 %
    assert refined_agreement >= 0.97, refined_agreement  # measured 98 %


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
    assert cm._disks_resolved(COARSE, 40) and not cm._disks_resolved(COARSE, 160)
    assert halo_px(FULL, 10) == 6  # averaging 4 + dilation 2
    assert halo_px(COARSE_ONLY, 10) == 32  # bilinear neighbour + a partial cell: 2 cells of 16 px
    # refined at 40 m: reach 6 px + 2 refinement cells of 4 px within 1 cell, + 1, + a partial cell
    assert halo_px(COARSE, 10) == 3 * 16
    assert halo_px(CloudMaskConfig(analysis_resolution_m=40, refine_resolution_m=None), 10) == (2 + 2) * 4
    assert halo_px(CloudMaskConfig(analysis_resolution_m=20), 20) == 3
    for cfg in (COARSE, CloudMaskConfig(analysis_resolution_m=40), CloudMaskConfig(analysis_resolution_m=320)):
        assert halo_px(cfg, 10) % cm._factor(cfg, 10) == 0
    with pytest.raises(ValueError, match="whole multiple of refine_resolution_m"):
        halo_px(CloudMaskConfig(analysis_resolution_m=160, refine_resolution_m=60), 10)
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
    tile, _, _ = realistic
    prob, _ = cloud_masks(tile.bands, L1C_BANDS, tile.data_mask, 10, COARSE_ONLY)
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
    [
        (FULL, 64),
        (COARSE_ONLY, 64),
        (COARSE, 64),
        (COARSE, 50),
        (CloudMaskConfig(analysis_resolution_m=40, refine_resolution_m=None), 48),
        (CloudMaskConfig(analysis_resolution_m=60, refine_resolution_m=None), 70),
        (CloudMaskConfig(refine_resolution_m=10), 45),
    ],
    ids=["10m", "160m", "default", "default-50", "40m", "60m-70", "160m-refined-10m-45"],
)
def test_blocks_with_halo_equal_whole_tile(swath_tile, cfg, block):
    """Blocks of any size and origin (here 7 and 3 px off the lattice) with halo_px of context
    give the whole array's result, whether cropped or asked for with `region`."""
    bands, data_mask = swath_tile.bands, swath_tile.data_mask
    origin = (-510_003, 46_007)
    whole_prob, whole_mask = cloud_masks(bands, L1C_BANDS, data_mask, 10, cfg, origin=origin)
    assert whole_mask.any() and not whole_mask.all()
    halo = halo_px(cfg, 10)
    h, w = data_mask.shape[1:]
    for y0 in range(0, h, block):
        for x0 in range(0, w, block):
            y1, x1 = min(y0 + block, h), min(x0 + block, w)
            ya, xa = max(y0 - halo, 0), max(x0 - halo, 0)
            yb, xb = min(y1 + halo, h), min(x1 + halo, w)
            context = np.s_[:, ya:yb, xa:xb]
            at = (origin[0] + ya, origin[1] + xa)
            inner = (slice(y0 - ya, y1 - ya), slice(x0 - xa, x1 - xa))
            prob, mask = cloud_masks(bands[context], L1C_BANDS, data_mask[context], 10, cfg, origin=at)
            np.testing.assert_array_equal(prob[:, inner[0], inner[1]], whole_prob[:, y0:y1, x0:x1])
            np.testing.assert_array_equal(mask[:, inner[0], inner[1]], whole_mask[:, y0:y1, x0:x1])
            prob, mask = cloud_masks(bands[context], L1C_BANDS, data_mask[context], 10, cfg, origin=at, region=inner)
            np.testing.assert_array_equal(prob, whole_prob[:, y0:y1, x0:x1])
            np.testing.assert_array_equal(mask, whole_mask[:, y0:y1, x0:x1])


# --------------------------------------------------------------------------- the lattice shared by all tiles


@pytest.fixture(scope="module")
def world():
    """Two overlapping tiles of one UTM zone, rendered with the same scene: A is 300 × 300 px,
    B is shifted by (-93, 137) px, so their origins differ by no multiple of any cell size."""
    scene = SyntheticScene(seed=3)
    dates = _cloudy_dates(scene, 3)
    grid_a = _grid(300, 300, x0=468_030, y1=5_108_070)  # partly cloudy in the overlap
    grid_b = _grid(300, 300, x0=468_030 + 1370, y1=5_108_070 + 930)
    return scene, dates, grid_a, grid_b


@pytest.mark.parametrize("name", list(RESOLUTIONS))
def test_overlapping_tiles_compute_identical_masks(world, name):
    """Cells on the CRS's lattice: where both tiles have their halo of context, probabilities
    and masks are identical, at every analysis resolution, refined or not."""
    cfg = RESOLUTIONS[name]
    scene, dates, grid_a, grid_b = world
    results = []
    for grid in (grid_a, grid_b):
        tile = scene.render(grid, 2023, dates)
        results.append(cloud_masks(tile.bands, L1C_BANDS, tile.data_mask, 10, cfg, origin=cm.lattice_origin(grid)))
    # The overlap: rows 0..206 of A are rows 93..299 of B; columns 137..299 of A are columns 0..162 of B.
    halo = halo_px(cfg, 10)
    rows_a, cols_a = slice(halo, 207 - halo), slice(137 + halo, 300 - halo)
    rows_b, cols_b = slice(93 + halo, 300 - halo), slice(halo, 163 - halo)
    assert rows_a.stop > rows_a.start and cols_a.stop > cols_a.start
    (prob_a, mask_a), (prob_b, mask_b) = results
    np.testing.assert_array_equal(prob_a[:, rows_a, cols_a], prob_b[:, rows_b, cols_b])
    np.testing.assert_array_equal(mask_a[:, rows_a, cols_a], mask_b[:, rows_b, cols_b])
    assert mask_a[:, rows_a, cols_a].any() and not mask_a[:, rows_a, cols_a].all()


def test_cells_follow_world_coordinates(world):
    """Independently: 160 m cells are floor(easting / 160) × floor(northing / 160) of the pixel
    centres; the coarse model runs on their in-swath mean reflectance."""
    scene, dates, grid, _ = world
    tile = scene.render(grid, 2023, dates[:1])
    idx = [L1C_BANDS.index(b) for b in cm.MODEL_BANDS]
    cx = np.floor(grid.x_coords() / 160).astype(int)
    cy = np.floor(grid.y_coords() / 160).astype(int)
    keys = (cy[:, None] * 100_000 + cx[None, :]).ravel()
    ukeys, inverse = np.unique(keys, return_inverse=True)
    refl = tile.bands[0].reshape(-1, 13)[:, idx].astype(np.float64) / REFLECTANCE_SCALE
    means = np.stack([np.bincount(inverse, refl[:, b]) for b in range(10)], -1) / np.bincount(inverse)[:, None]
    expected = S2PixelCloudDetector(all_bands=False).classifier.classifier.predict(means.astype(np.float32))
    prob, valid, _ = cm._coarse(tile.bands, idx, tile.data_mask, 16, tuple(o % 16 for o in cm.lattice_origin(grid)))
    assert valid.all() and prob.shape[1:] == (len(np.unique(cy)), len(np.unique(cx)))
    # Cells in array order: northing decreasing down the rows, easting increasing along the columns.
    order = np.argsort(-(ukeys // 100_000) * 100_000 + ukeys % 100_000, kind="stable")
    np.testing.assert_allclose(prob[0].ravel(), expected[order], atol=1e-5)


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
