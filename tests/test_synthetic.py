"""Tests of the synthetic Sentinel-2 generator: each checks behaviour against an independent computation."""

from __future__ import annotations

import numpy as np
import pytest
from rasterio import features
from scipy import ndimage

from lcms.geometry import PixelGrid
from lcms.legend import LULC_NAMES
from lcms.sentinel2 import L1C_BANDS, REFLECTANCE_SCALE
from tasks.download.synthetic import SyntheticScene, SyntheticTile

UTM33 = "EPSG:32633"
B02, B04, B08, B10 = (L1C_BANDS.index(b) for b in ("B02", "B04", "B08", "B10"))
CLASSES = (1, 2, 3, 4, 5, 8)
# (from, to) transitions a planted change may make: e.g. clearcut forest -> cultivated, cultivated -> artificial.
PLAUSIBLE = {(1, 3), (1, 8), (1, 2), (2, 1), (2, 3), (2, 4), (3, 1), (3, 4), (3, 8), (4, 2), (4, 1), (4, 3)}


def grid_at(x0: float, y0: float, size: int, res: float = 10.0, crs: str = UTM33) -> PixelGrid:
    return PixelGrid.from_bounds(crs, (x0, y0, x0 + size * res, y0 + size * res), res)


def ndvi(bands: np.ndarray) -> np.ndarray:
    b = bands.astype(np.float32) / REFLECTANCE_SCALE
    return (b[..., B08] - b[..., B04]) / (b[..., B08] + b[..., B04] + 1e-6)


@pytest.fixture(scope="module")
def year_tile() -> tuple[SyntheticScene, PixelGrid, SyntheticTile]:
    """A full year over 5 km x 5 km, point-sampled at 40 m so that every class is present."""
    scene = SyntheticScene(seed=3)
    grid = grid_at(620_000, 5_100_000, 128, res=40.0)
    return scene, grid, scene.render(grid, 2023)


def assert_tiles_equal(a: SyntheticTile, b: SyntheticTile) -> None:
    np.testing.assert_array_equal(a.dates, b.dates)
    np.testing.assert_array_equal(a.bands, b.bands)
    np.testing.assert_array_equal(a.data_mask, b.data_mask)
    np.testing.assert_array_equal(a.cloud_mask, b.cloud_mask)
    np.testing.assert_array_equal(a.land_cover, b.land_cover)


def test_acquisition_dates_irregular_sorted_within_year():
    scene = SyntheticScene(seed=5, dates_per_year=48)
    dates = scene.acquisition_dates(2024)
    assert dates.dtype == np.dtype("datetime64[s]")
    assert 40 <= len(dates) <= 56
    assert np.all(np.diff(dates) > np.timedelta64(0, "s"))  # sorted and unique
    assert dates[0] >= np.datetime64("2024-01-01") and dates[-1] < np.datetime64("2025-01-01")
    gaps = np.diff(dates).astype("timedelta64[D]").astype(int)
    assert len(set(gaps.tolist())) > 3  # irregular spacing
    np.testing.assert_array_equal(dates, SyntheticScene(seed=5).acquisition_dates(2024))
    assert not np.array_equal(dates, SyntheticScene(seed=6).acquisition_dates(2024))
    assert abs(len(SyntheticScene(dates_per_year=20).acquisition_dates(2023)) - 20) <= 3


def test_determinism_by_seed():
    grid = grid_at(500_000, 5_000_000, 48)
    dates = SyntheticScene(seed=1).acquisition_dates(2023)[::8]
    a = SyntheticScene(seed=1).render(grid, 2023, dates)
    b = SyntheticScene(seed=1).render(grid, 2023, dates)
    assert_tiles_equal(a, b)
    c = SyntheticScene(seed=2).render(grid, 2023, dates)
    assert not np.array_equal(a.bands, c.bands)
    big = grid_at(500_000, 5_000_000, 100, res=50.0)
    assert not np.array_equal(
        SyntheticScene(seed=1).land_cover(big, 2023), SyntheticScene(seed=2).land_cover(big, 2023)
    )


def test_window_render_is_bit_identical_to_full_render():
    # Many clouds and swath edges so that every code path is exercised in the compared dates.
    scene = SyntheticScene(seed=11, cloud_cover=0.5, swath_edge_fraction=0.6, first_year=2022)
    full_grid = grid_at(300_000, 4_000_000, 64, res=60.0)
    full = scene.render(full_grid, 2024)
    assert (~full.data_mask).any() and full.data_mask.any()
    assert full.cloud_mask.any() and (~full.cloud_mask).any()
    rows, cols = slice(13, 50), slice(7, 61)
    part = scene.render(full_grid.window(rows, cols), 2024)
    np.testing.assert_array_equal(part.bands, full.bands[:, rows, cols])
    np.testing.assert_array_equal(part.data_mask, full.data_mask[:, rows, cols])
    np.testing.assert_array_equal(part.cloud_mask, full.cloud_mask[:, rows, cols])
    np.testing.assert_array_equal(part.land_cover, full.land_cover[rows, cols])


def test_overlapping_grids_agree_on_overlap():
    scene = SyntheticScene(seed=4, cloud_cover=0.6, swath_edge_fraction=0.5)
    a_grid = grid_at(400_000, 6_000_000, 60, res=20.0)
    b_grid = grid_at(400_000 + 23 * 20, 6_000_000 - 17 * 20, 60, res=20.0)  # 23 px east, 17 px south
    dates = scene.acquisition_dates(2023)[10:30]
    a, b = scene.render(a_grid, 2023, dates), scene.render(b_grid, 2023, dates)
    # b's row 0 is a's row 17 (b's top edge is 17 px lower); b's column 0 is a's column 23.
    np.testing.assert_array_equal(a.bands[:, 17:, 23:], b.bands[:, :43, :37])
    np.testing.assert_array_equal(a.cloud_mask[:, 17:, 23:], b.cloud_mask[:, :43, :37])
    np.testing.assert_array_equal(a.data_mask[:, 17:, 23:], b.data_mask[:, :43, :37])
    np.testing.assert_array_equal(a.land_cover[17:, 23:], b.land_cover[:43, :37])


def test_other_utm_zone_and_20m_resolution_sample_the_same_world():
    scene = SyntheticScene(seed=8)
    dates = scene.acquisition_dates(2023)[20:24]
    # Southern-hemisphere UTM zone: large northings. A 20 m grid's pixel centres are every other
    # centre of a 10 m grid whose origin is 5 m further east and 5 m further south.
    g20 = grid_at(300_000, 7_500_000, 40, res=20.0, crs="EPSG:32735")
    g10 = PixelGrid("EPSG:32735", (10.0, 0.0, 300_005.0, 0.0, -10.0, 7_500_000 + 800 - 5.0), (80, 80))
    t20, t10 = scene.render(g20, 2023, dates), scene.render(g10, 2023, dates)
    assert t20.bands.shape == (4, 40, 40, 13) and t20.bands.dtype == np.uint16
    np.testing.assert_array_equal(t20.bands, t10.bands[:, ::2, ::2])
    np.testing.assert_array_equal(t20.land_cover, t10.land_cover[::2, ::2])
    lc = scene.land_cover(grid_at(300_000, 7_500_000, 125, res=40.0, crs="EPSG:32735"), 2023)
    assert set(np.unique(lc).tolist()) == set(CLASSES)


def test_dtypes_shapes_and_no_data(year_tile):
    scene, grid, tile = year_tile
    t = len(scene.acquisition_dates(2023))
    h, w = grid.shape
    assert tile.dates.dtype == np.dtype("datetime64[s]") and tile.dates.shape == (t,)
    assert tile.bands.dtype == np.uint16 and tile.bands.shape == (t, h, w, 13)
    assert tile.data_mask.dtype == bool and tile.data_mask.shape == (t, h, w)
    assert tile.cloud_mask.dtype == bool and tile.cloud_mask.shape == (t, h, w)
    assert tile.land_cover.dtype == np.uint8 and tile.land_cover.shape == (h, w)
    assert not tile.bands[~tile.data_mask].any()  # all bands 0 outside the swath
    assert tile.bands[tile.data_mask].min() >= 1  # and never 0 inside
    assert not (tile.cloud_mask & ~tile.data_mask).any()


def test_swath_edges_are_straight_and_about_the_requested_fraction():
    scene = SyntheticScene(seed=2, swath_edge_fraction=0.15)
    grid = grid_at(500_000, 5_000_000, 100, res=100.0)  # 10 km
    dates = np.concatenate([scene.acquisition_dates(y) for y in (2023, 2024)])
    mask = scene.render(grid, 2023, dates).data_mask
    covered = mask.mean(axis=(1, 2))
    cut = (covered > 0) & (covered < 1)
    assert 0.05 <= cut.mean() <= 0.3, cut.mean()
    assert covered.min() > 0  # a 10 km tile is never entirely outside the swath
    for frame in mask[cut]:
        # Each row of a cut frame changes between data and no data at most twice, and the
        # change positions lie on straight lines: fit one line per edge and check residuals.
        steps = np.diff(frame.astype(np.int8), axis=1)
        assert (np.abs(steps).sum(axis=1) <= 2).all()
        for sign in (1, -1):
            rows, cols = np.nonzero(steps == sign)
            if len(rows) > 10:
                fit = np.polyval(np.polyfit(rows, cols, 1), rows)
                assert np.abs(fit - cols).max() <= 1.0


def test_land_cover_has_six_classes_in_coherent_patches():
    scene = SyntheticScene(seed=0)
    for x0, y0 in ((500_000, 5_000_000), (430_000, 4_200_000), (610_000, 5_900_000)):
        lc = scene.land_cover(grid_at(x0, y0, 250, res=20.0), 2023)  # 5 km x 5 km
        counts = np.bincount(lc.ravel(), minlength=9) / lc.size
        assert set(np.unique(lc).tolist()) == set(CLASSES)
        assert min(counts[c] for c in CLASSES) >= 0.02, counts
    lc = scene.land_cover(grid_at(500_000, 5_000_000, 256), 2023)
    same = (lc[1:] == lc[:-1]).sum() + (lc[:, 1:] == lc[:, :-1]).sum()
    assert same / (lc[1:].size + lc[:, 1:].size) >= 0.9
    # Patches, not salt-and-pepper: most pixels belong to connected regions of >= 1 ha.
    sizes = []
    for c in CLASSES:
        labels, n = ndimage.label(lc == c)
        sizes.append(np.bincount(labels.ravel())[1:])
    sizes = np.concatenate(sizes)
    assert sizes[sizes >= 100].sum() >= 0.9 * lc.size


def test_ndvi_follows_class_phenology(year_tile):
    scene, grid, tile = year_tile
    v = ndvi(tile.bands)
    clear = tile.data_mask & ~tile.cloud_mask
    month = tile.dates.astype("datetime64[M]").astype(int) % 12 + 1
    summer, winter = np.isin(month, (6, 7)), np.isin(month, (12, 1, 2))
    lc = tile.land_cover

    def mean_ndvi(code: int, dates: np.ndarray) -> float:
        sel = clear[dates] & (lc == code)
        assert sel.sum() > 100
        return float(v[dates][sel].mean())

    assert mean_ndvi(1, summer) - mean_ndvi(1, winter) > 0.3
    assert mean_ndvi(2, summer) > 0.6
    assert mean_ndvi(2, winter) > 0.4
    assert mean_ndvi(3, summer) > mean_ndvi(3, winter) + 0.15
    assert mean_ndvi(8, summer) < 0.25 and mean_ndvi(8, winter) < 0.25
    # Water stays negative all year; thin cloud (opacity < 0.5, not in cloud_mask) pulls it towards 0,
    # and so do mixed pixels at the shore (whose lower right corner, 5 m off, is land): left out.
    cloud_free = scene.cloud_opacity(grid, tile.dates) == 0
    corner = scene.land_cover(grid_at(620_005, 5_099_995, 128, res=40.0), 2023)
    for t in range(len(tile.dates)):
        water = clear[t] & (lc == 5) & (corner == 5)
        if water.sum() > 20:
            assert np.median(v[t][water]) < 0
        water &= cloud_free[t]
        if water.sum() > 20:
            assert np.percentile(v[t][water], 99) < 0


def test_spectra_are_plausible(year_tile):
    scene, grid, tile = year_tile
    refl = tile.bands.astype(np.float32) / REFLECTANCE_SCALE
    clear = scene.cloud_opacity(grid, tile.dates) == 0
    clear &= tile.data_mask
    lc = tile.land_cover
    july = tile.dates.astype("datetime64[M]").astype(int) % 12 + 1 == 7
    veg = clear[july] & (lc == 2)
    forest = np.median(refl[july][veg], axis=0)
    assert forest[B04] < 0.08 and 0.25 < forest[B08] < 0.5
    water = np.median(refl[clear & (lc == 5)], axis=0)
    assert water[B08] < 0.05 and water[L1C_BANDS.index("B11")] < 0.03
    assert np.median(refl[..., B10][clear]) < 0.01


def test_clouds_are_bright_and_cover_the_requested_fraction():
    for cover in (0.3, 0.6):
        scene = SyntheticScene(seed=21, cloud_cover=cover, swath_edge_fraction=0.0)
        grid = grid_at(550_000, 5_300_000, 100, res=100.0)  # 10 km
        tile = scene.render(grid, 2023)
        per_date = tile.cloud_mask.mean(axis=(1, 2))
        assert abs(per_date.mean() - cover) <= 0.15, (cover, per_date.mean())
        assert per_date.min() < 0.05 and per_date.max() > 0.9  # some clear, some overcast dates
        b02 = tile.bands[..., B02].astype(np.float32) / REFLECTANCE_SCALE
        assert b02[tile.cloud_mask].mean() > 0.3
        assert b02[tile.cloud_mask].mean() > 2 * b02[~tile.cloud_mask].mean()
    # Coherent blobs, not speckle: cloud masks are spatially smooth.
    cm = tile.cloud_mask
    same = (cm[:, 1:] == cm[:, :-1]).mean()
    assert same > 0.95


def test_s2cloudless_detects_the_clouds():
    from s2cloudless import S2PixelCloudDetector

    scene = SyntheticScene(seed=7, cloud_cover=0.5)
    grid = grid_at(510_000, 5_010_000, 128)
    dates = scene.acquisition_dates(2023)
    opacity = scene.cloud_opacity(grid, dates)
    partly = np.nonzero(((opacity >= 0.5).mean(axis=(1, 2)) > 0.1) & ((opacity >= 0.5).mean(axis=(1, 2)) < 0.9))[0]
    assert len(partly) >= 4
    tile = scene.render(grid, 2023, dates[partly[:4]])
    refl = tile.bands.astype(np.float32) / REFLECTANCE_SCALE
    detector = S2PixelCloudDetector(threshold=0.4, average_over=4, dilation_size=2, all_bands=True)
    detected = detector.get_cloud_masks(refl).astype(bool)
    op = opacity[partly[:4]]
    opaque = tile.data_mask & (op >= 0.9)
    clear = tile.data_mask & (op == 0)
    assert opaque.sum() > 1000 and clear.sum() > 1000
    assert detected[opaque].mean() >= 0.9
    assert detected[tile.cloud_mask].mean() >= 0.9
    assert detected[clear].mean() <= 0.1
    # Cirrus band elevated over thick cloud, low on clear land.
    assert refl[..., B10][opaque].mean() >= 0.03
    np.testing.assert_array_equal(tile.cloud_mask, (op >= 0.5) & tile.data_mask)


def test_planted_changes():
    scene = SyntheticScene(seed=9, first_year=2023, change_fraction=0.03)
    grid = grid_at(480_000, 5_050_000, 250, res=20.0)
    lc23, lc24, lc25 = (scene.land_cover(grid, y) for y in (2023, 2024, 2025))
    np.testing.assert_array_equal(scene.land_cover(grid, 2020), lc23)  # before first_year: the base map
    cm = scene.change_mask(grid, 2023, 2024)
    assert cm.dtype == bool and cm.shape == grid.shape
    np.testing.assert_array_equal(cm, lc23 != lc24)
    np.testing.assert_array_equal(scene.change_mask(grid, 2023, 2025), lc23 != lc25)
    assert 0.015 <= cm.mean() <= 0.06, cm.mean()
    assert 0.015 <= (lc24 != lc25).mean() <= 0.06
    transitions = set(zip(lc23[cm].tolist(), lc24[cm].tolist(), strict=True))
    assert transitions <= PLAUSIBLE, transitions - PLAUSIBLE
    assert len(transitions) >= 4
    # Cumulative: a change of 2024 persists in 2025 unless 2025 changes that pixel again.
    kept = cm & (lc24 == lc25)
    assert (lc25[kept] != lc23[kept]).all()
    # Coherent blobs: nearly all changed area is in connected pieces of >= 0.5 ha (>= 12.5 px at 20 m).
    labels, _ = ndimage.label(cm)
    sizes = np.bincount(labels.ravel())[1:]
    assert sizes[sizes >= 13].sum() >= 0.9 * cm.sum()
    assert np.median(sizes * 0.04) >= 1.0  # hectares


def test_reference_polygons_rasterise_back_to_land_cover():
    scene = SyntheticScene(seed=12)
    grid = grid_at(505_000, 5_020_000, 120, res=20.0)
    gdf = scene.reference_polygons(grid, 2024)
    assert list(gdf.columns) == ["LULC_ID", "LULC_NAME", "geometry"]
    assert gdf.crs.to_epsg() == 32633
    assert (gdf["LULC_NAME"] == gdf["LULC_ID"].map(LULC_NAMES)).all()
    burnt = features.rasterize(
        zip(gdf.geometry, gdf["LULC_ID"], strict=True),
        out_shape=grid.shape,
        transform=grid.affine,
        fill=0,
        dtype="uint8",
    )
    np.testing.assert_array_equal(burnt, scene.land_cover(grid, 2024))

    big = grid_at(505_000, 5_020_000, 250, res=20.0)
    full, half = scene.reference_polygons(big, 2023), scene.reference_polygons(big, 2023, fraction=0.5)
    assert len(full) > 100
    assert 0.35 * len(full) <= len(half) <= 0.65 * len(full)
    assert set(half.geometry.to_wkb()) <= set(full.geometry.to_wkb())
    again = scene.reference_polygons(big, 2023, fraction=0.5)
    assert half.geometry.geom_equals(again.geometry).all()


def test_reference_label_noise_confuses_small_polygons_only():
    """With label_noise, about that share of the polygons up to 10 ha gets the class it is most easily
    confused with; large polygons, water and the geometry stay as they are."""
    scene = SyntheticScene(seed=12)
    big = grid_at(505_000, 5_020_000, 250, res=20.0)
    exact, noisy = scene.reference_polygons(big, 2023), scene.reference_polygons(big, 2023, label_noise=0.3)
    assert exact.geometry.geom_equals(noisy.geometry).all()
    changed = (exact["LULC_ID"] != noisy["LULC_ID"]).to_numpy()
    small = (exact.geometry.area <= 100_000).to_numpy() & (exact["LULC_ID"] != 5).to_numpy()
    assert not changed[~small].any()
    assert 0.15 <= changed[small].mean() <= 0.45, changed[small].mean()
    confused = {1: 3, 3: 4, 4: 3, 2: 4, 8: 3}  # cultivated -> grassland, grassland <-> shrubland, ...
    for before, after in zip(exact["LULC_ID"][changed], noisy["LULC_ID"][changed], strict=True):
        assert confused[before] == after
    assert (noisy["LULC_NAME"] == noisy["LULC_ID"].map(LULC_NAMES)).all()


def test_mixed_pixels_at_class_borders(year_tile):
    """A pixel whose lower right corner lies in another class sees both: at the shore, water pixels
    are greener than open water, while their label stays the centre's class."""
    scene, grid, tile = year_tile
    corner = scene.land_cover(grid_at(620_005, 5_099_995, 128, res=40.0), 2023)
    lc = tile.land_cover
    clear = scene.cloud_opacity(grid, tile.dates) == 0
    clear &= tile.data_mask
    v = ndvi(tile.bands)
    shore = clear & ((lc == 5) & np.isin(corner, (1, 2, 3, 4)))[None]
    open_water = clear & ((lc == 5) & (corner == 5))[None]
    assert shore.sum() > 50 and open_water.sum() > 50
    assert np.median(v[shore]) > np.median(v[open_water]) + 0.2
