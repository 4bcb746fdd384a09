"""FileSource: real Sentinel-2 L1C scenes written out as SAFE-like per-band files and multi-band GeoTIFFs.

The scenes are the five dates of ../shared/data/slovenia-testpatch/l1c_scenes.npy, cropped to
96 × 96 px (divisible by 2 and 6, so the 20 m and 60 m bands are exact block means) and placed
on a 10 m grid in EPSG:32633 snapped to 60 m, within ~1 m of the patch's true bounds.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import rasterio
from pyproj import Transformer
from rasterio.transform import Affine
from rasterio.warp import Resampling, calculate_default_transform, reproject

from lcms.config import FileSourceConfig
from lcms.geometry import PixelGrid
from lcms.sentinel2 import L1C_BANDS, L2A_BANDS, NATIVE_RESOLUTION_M, REFLECTANCE_SCALE
from tasks.download.file_source import FileSource
from tasks.download.sources import SourceError

SIZE = 96
GRID = PixelGrid("EPSG:32633", (10.0, 0.0, 465_180.0, 0.0, -10.0, 5_080_260.0), (SIZE, SIZE))
FAR_GRID = PixelGrid.from_bounds("EPSG:32633", (600_000, 5_000_000, 601_000, 5_001_000), 10.0)


@pytest.fixture(scope="module")
def patch(shared_data):
    """Reflectance (t, y, x, b) float64 of the 13 L1C bands, and the five acquisition times, sorted."""
    folder = shared_data / "slovenia-testpatch"
    meta = json.loads((folder / "l1c_scenes_timestamps.json").read_text())
    assert tuple(meta["band_order"]) == L1C_BANDS
    refl = np.load(folder / "l1c_scenes.npy")[:, :SIZE, :SIZE, :].astype(np.float64)
    times = np.array([meta["index_to_timestamp"][str(i)] for i in range(len(refl))], dtype="datetime64[s]")
    order = np.argsort(times)
    return refl[order], times[order]


def dn(refl: np.ndarray) -> np.ndarray:
    return np.round(refl * REFLECTANCE_SCALE).astype(np.uint16)


def block_mean(image: np.ndarray, factor: int) -> np.ndarray:
    *lead, h, w = image.shape
    return image.reshape(*lead, h // factor, factor, w // factor, factor).mean(axis=(-3, -1))


def stamp(time: np.datetime64) -> str:
    return str(time).replace("-", "").replace(":", "")  # 2015-07-11T10:00:08 -> 20150711T100008


def write_raster(path: Path, data: np.ndarray, transform, crs="EPSG:32633", descriptions=None, tags=None, **kw):
    data = data if data.ndim == 3 else data[None]
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = dict(width=data.shape[2], height=data.shape[1], count=data.shape[0], dtype=data.dtype)
    if path.suffix == ".jp2":
        profile.update(driver="JP2OpenJPEG", QUALITY=100, REVERSIBLE="YES")  # lossless
    else:
        profile.update(driver="GTiff", tiled=True, blockxsize=32, blockysize=32)
    with rasterio.open(path, "w", crs=crs, transform=transform, **profile, **kw) as dst:
        dst.write(data)
        for i, text in enumerate(descriptions or [], start=1):
            dst.set_band_description(i, text)
        if tags:
            dst.update_tags(**tags)


def write_safe(root: Path, refl_t: np.ndarray, time, tile="T33TVM", col0=0, ncols=SIZE, baseline="N0204", ext=".jp2"):
    """One L1C granule, bands at native resolution, covering columns col0:col0+ncols of the patch."""
    name = f"S2A_MSIL1C_{stamp(time)}_{baseline}_R122_{tile}_{stamp(time)}.SAFE"
    img = root / name / "GRANULE" / f"L1C_{tile}_A000001_{stamp(time)}" / "IMG_DATA"
    a, _, c, _, e, f = GRID.transform
    for b, band in enumerate(L1C_BANDS):
        factor = NATIVE_RESOLUTION_M[band] // 10
        image = block_mean(refl_t[:, col0 : col0 + ncols, b], factor)
        transform = Affine(a * factor, 0, c + a * col0, 0, e * factor, f)
        write_raster(img / f"{tile}_{stamp(time)}_{band}{ext}", dn(image), transform)
    return root / name


def expected_native(refl_t: np.ndarray) -> np.ndarray:
    """What nearest resampling must give: each band's native-resolution block mean, repeated."""
    out = np.empty(refl_t.shape, dtype=np.uint16)
    for b, band in enumerate(L1C_BANDS):
        f = NATIVE_RESOLUTION_M[band] // 10
        out[..., b] = np.repeat(np.repeat(dn(block_mean(refl_t[..., b], f)), f, -2), f, -1)
    return out


def bilinear_weights(n_out: int, factor: int) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear interpolation matrix from n_out / factor coarse pixels to n_out fine pixel centres."""
    n_in = n_out // factor
    w = np.zeros((n_out, n_in))
    inside = np.zeros(n_out, dtype=bool)
    for i in range(n_out):
        p = (i + 0.5) / factor - 0.5  # fine centre in coarse pixel coordinates
        k = int(np.floor(p))
        if 0 <= k < n_in - 1:
            w[i, k], w[i, k + 1] = 1 - (p - k), p - k
            inside[i] = True
    return w, inside


def source(path, **kw) -> FileSource:
    storage_options = kw.pop("storage_options", None)
    return FileSource(FileSourceConfig(kind="files", path=str(path), **kw), storage_options)


@pytest.fixture(scope="module")
def safe_folder(patch, tmp_path_factory):
    refl, times = patch
    root = tmp_path_factory.mktemp("safe")
    for t, time in enumerate(times):
        write_safe(root, refl[t], time)
    return root


@pytest.fixture(scope="module")
def multiband_folder(patch, tmp_path_factory):
    """One 13-band 10 m GeoTIFF per date, band descriptions naming the bands."""
    refl, times = patch
    root = tmp_path_factory.mktemp("multiband")
    for t, time in enumerate(times):
        write_raster(
            root / f"S2_{stamp(time)[:8]}.tif", np.moveaxis(dn(refl[t]), -1, 0), GRID.affine, descriptions=L1C_BANDS
        )
    return root


# --------------------------------------------------------------------------- dates


def test_acquisition_dates(safe_folder, patch):
    _, times = patch
    src = source(safe_folder)
    assert src.band_names == L1C_BANDS
    dates = src.acquisition_dates(GRID, 2015)
    assert dates.dtype == np.dtype("datetime64[s]")
    np.testing.assert_array_equal(dates, times)  # the five scenes, from the names, sorted
    assert len(src.acquisition_dates(GRID, 2016)) == 0
    assert len(src.acquisition_dates(FAR_GRID, 2015)) == 0
    assert len(src.acquisition_dates(GRID.window(slice(0, 10), slice(0, 10)), 2015)) == 5


# --------------------------------------------------------------------------- SAFE per-band files


def test_safe_native_bands_nearest(safe_folder, patch):
    refl, times = patch
    bands, mask = source(safe_folder, resampling="nearest").read(GRID, times)
    assert bands.dtype == np.uint16 and bands.shape == (5, SIZE, SIZE, 13)
    assert mask.dtype == bool and mask.all()
    # 10 m bands exactly; 20/60 m bands exactly their block means (nearest repeats each coarse pixel).
    np.testing.assert_array_equal(bands, expected_native(refl))
    b04 = L1C_BANDS.index("B04")
    np.testing.assert_array_equal(bands[..., b04], dn(refl[..., b04]))


def test_safe_bilinear_matches_independent_interpolation(safe_folder, patch):
    """10 m bands exact; 20/60 m bands within 1 DN of a numpy bilinear interpolation of the block means.

    1 DN because GDAL interpolates in float32 and we round; the border ring where a pixel centre
    lies outside the outermost coarse centres (GDAL extrapolates there) is left out.
    """
    refl, times = patch
    bands, mask = source(safe_folder, resampling="bilinear").read(GRID, times[2:3])
    assert mask.all()
    for b, band in enumerate(L1C_BANDS):
        factor = NATIVE_RESOLUTION_M[band] // 10
        coarse = np.round(block_mean(refl[2, ..., b], factor) * REFLECTANCE_SCALE)
        if factor == 1:
            np.testing.assert_array_equal(bands[0, ..., b], dn(refl[2, ..., b]))
            continue
        w, inside = bilinear_weights(SIZE, factor)
        expected = w @ coarse @ w.T
        got = bands[0, ..., b].astype(float)
        diff = np.abs(got - expected)[np.ix_(inside, inside)]
        assert diff.max() <= 1.0, band


def test_blocks_assemble_to_whole(safe_folder, patch):
    _, times = patch
    src = source(safe_folder, resampling="cubic")
    whole, whole_mask = src.read(GRID, times[2:4])
    pieces = np.zeros_like(whole)
    for (rows, cols), block in GRID.blocks(40):  # not a multiple of the 60 m pixels
        pieces[:, rows, cols], mask = src.read(block, times[2:4])
        assert mask.all()
    np.testing.assert_array_equal(pieces, whole)
    assert whole_mask.all()


def test_partly_and_wholly_outside(safe_folder, patch):
    refl, times = patch
    shifted = PixelGrid("EPSG:32633", (10.0, 0, 465_180.0 + 480.0, 0, -10.0, 5_080_260.0 - 200.0), (SIZE, SIZE))
    bands, mask = source(safe_folder, resampling="nearest").read(shifted, times)
    expected = expected_native(refl)
    assert mask[:, : SIZE - 20, : SIZE - 48].all() and not mask[:, SIZE - 20 :, :].any()
    assert not mask[:, :, SIZE - 48 :].any() and (bands[~mask] == 0).all()
    np.testing.assert_array_equal(bands[:, : SIZE - 20, : SIZE - 48], expected[:, 20:, 48:])

    bands, mask = source(safe_folder).read(FAR_GRID, times)
    assert not mask.any() and not bands.any() and bands.shape == (5, 100, 100, 13)


def test_same_date_granules_mosaic(patch, tmp_path):
    """Two overlapping half-granules of one datatake: one date, the whole patch, first tile wins."""
    refl, times = patch
    t = 3
    write_safe(tmp_path, refl[t], times[t], tile="T33TVM", col0=0, ncols=60)
    spoiled = refl[t].copy()
    spoiled[:, :60] += 0.01  # where the granules overlap, the second one must not show
    write_safe(tmp_path, spoiled, times[t], tile="T33TWM", col0=36, ncols=60)
    src = source(tmp_path, resampling="nearest")
    dates = src.acquisition_dates(GRID, 2015)
    np.testing.assert_array_equal(dates, times[t : t + 1])
    bands, mask = src.read(GRID, dates)
    assert mask.all()
    np.testing.assert_array_equal(bands[0], expected_native(refl[t]))


def test_l2a_layout(patch, tmp_path):
    """R10m/R20m/R60m folders with _10m suffixes, a band at several resolutions, SCL/TCI/QI files ignored."""
    refl, times = patch
    time = times[4]
    granule = tmp_path / f"S2A_MSIL2A_{stamp(time)}_N0213_R122_T33TVM_{stamp(time)}.SAFE" / "GRANULE" / "L2A_T33TVM"
    a, _, c, _, e, f = GRID.transform
    for res in (10, 20, 60):
        factor = res // 10
        transform = Affine(a * factor, 0, c, 0, e * factor, f)
        for b, band in enumerate(L1C_BANDS):
            if band == "B10" or NATIVE_RESOLUTION_M[band] > res or (res == 20 and band == "B08"):
                continue
            image = dn(block_mean(refl[4, ..., b], factor))
            write_raster(
                granule / "IMG_DATA" / f"R{res}m" / f"T33TVM_{stamp(time)}_{band}_{res}m.jp2", image, transform
            )
        aux = np.full((SIZE // factor, SIZE // factor), 4, np.uint16)
        write_raster(granule / "IMG_DATA" / f"R{res}m" / f"T33TVM_{stamp(time)}_SCL_{res}m.jp2", aux, transform)
        write_raster(granule / "IMG_DATA" / f"R{res}m" / f"T33TVM_{stamp(time)}_TCI_{res}m.jp2", aux, transform)
    write_raster(granule / "QI_DATA" / "MSK_CLDPRB_20m.jp2", aux, transform)
    write_raster(granule / "QI_DATA" / "MSK_DETFOO_B01.jp2", aux, transform)
    src = source(tmp_path, collection="L2A", resampling="nearest")
    assert src.band_names == L2A_BANDS
    bands, mask = src.read(GRID, src.acquisition_dates(GRID, 2015))
    assert bands.shape == (1, SIZE, SIZE, 12) and mask.all()
    keep = [L1C_BANDS.index(b) for b in L2A_BANDS]
    np.testing.assert_array_equal(bands[0], expected_native(refl[4])[..., keep])  # B02 from R10m, not R20m


def test_baseline_offset_removed_from_safe(patch, tmp_path):
    """Baseline 04.00: files hold DN + 1000 and MTD_MSIL1C.xml lists RADIO_ADD_OFFSET -1000 per band."""
    refl, times = patch
    safe = write_safe(tmp_path, refl[2] + 0.1, times[2], baseline="N0400")
    offsets = "".join(f'<RADIO_ADD_OFFSET band_id="{i}">-1000</RADIO_ADD_OFFSET>' for i in range(13))
    (safe / "MTD_MSIL1C.xml").write_text(
        '<?xml version="1.0"?><n1:Level-1C_User_Product xmlns:n1="https://psd-14.sentinel2.eo.esa.int">'
        "<General_Info><Product_Info><PROCESSING_BASELINE>04.00</PROCESSING_BASELINE></Product_Info>"
        f"<Product_Image_Characteristics><Radiometric_Offset_List>{offsets}</Radiometric_Offset_List>"
        "</Product_Image_Characteristics></General_Info></n1:Level-1C_User_Product>"
    )
    bands, mask = source(tmp_path, resampling="nearest").read(GRID, times[2:3])
    assert mask.all()
    np.testing.assert_array_equal(bands[0], expected_native(refl[2]))
    # Without the XML, the N0400 in the product name alone implies the same offset.
    (safe / "MTD_MSIL1C.xml").unlink()
    bands, _ = source(tmp_path, resampling="nearest").read(GRID, times[2:3])
    np.testing.assert_array_equal(bands[0], expected_native(refl[2]))


# --------------------------------------------------------------------------- multi-band GeoTIFFs


def test_multiband_named_bands(multiband_folder, patch):
    refl, times = patch
    src = source(multiband_folder)
    dates = src.acquisition_dates(GRID, 2015)
    np.testing.assert_array_equal(dates, times.astype("datetime64[D]").astype("datetime64[s]"))  # name: date only
    bands, mask = src.read(GRID, dates)
    assert mask.all()
    np.testing.assert_array_equal(bands, dn(refl))


def test_multiband_band_order_and_count(patch, tmp_path):
    refl, times = patch
    order = list(reversed(L1C_BANDS))
    write_raster(tmp_path / "a" / "x_20150711.tif", np.moveaxis(dn(refl[0][..., ::-1]), -1, 0), GRID.affine)
    bands, _ = source(tmp_path / "a", band_order=order).read(GRID, times[:1])
    np.testing.assert_array_equal(bands[0], dn(refl[0]))
    # No names, no band_order: the collection's order when the count matches ...
    bands, _ = source(tmp_path / "a").read(GRID, times[:1])
    np.testing.assert_array_equal(bands[0], dn(refl[0][..., ::-1]))
    # ... else a clear error.
    write_raster(tmp_path / "b" / "x_20150711.tif", np.moveaxis(dn(refl[0][..., :10]), -1, 0), GRID.affine)
    with pytest.raises(SourceError, match=r"x_20150711\.tif has 10 bands.*band_order"):
        source(tmp_path / "b").acquisition_dates(GRID, 2015)


def test_multiband_date_from_metadata(patch, tmp_path):
    refl, times = patch
    data = np.moveaxis(dn(refl[1]), -1, 0)
    write_raster(
        tmp_path / "patch_scene.tif",
        data,
        GRID.affine,
        descriptions=L1C_BANDS,
        tags={"TIFFTAG_DATETIME": "2015:07:31 10:00:09"},
    )
    write_raster(
        tmp_path / "other.tif",
        data,
        GRID.affine,
        descriptions=L1C_BANDS,
        tags={"ACQUISITION_DATE": "2016-05-02T10:20:30Z"},
    )
    src = source(tmp_path)
    np.testing.assert_array_equal(src.acquisition_dates(GRID, 2015), times[1:2])
    np.testing.assert_array_equal(src.acquisition_dates(GRID, 2016), np.array(["2016-05-02T10:20:30"], "M8[s]"))


def test_multiband_baseline_tag(patch, tmp_path):
    refl, times = patch
    data = np.moveaxis(dn(refl[2] + 0.1), -1, 0)
    write_raster(
        tmp_path / f"s_{stamp(times[2])[:8]}.tif",
        data,
        GRID.affine,
        descriptions=L1C_BANDS,
        tags={"BOA_ADD_OFFSET": "-1000"},
    )
    bands, _ = source(tmp_path).read(GRID, times[2:3])
    np.testing.assert_array_equal(bands[0], dn(refl[2]))


def test_scene_in_another_crs(patch, tmp_path):
    """A scene reprojected to EPSG:3857 at ~5 m ground pixels comes back onto the UTM grid.

    Nearest both ways: each UTM pixel centre falls in a 3857 pixel whose centre lies within
    ~3.5 m of it, i.e. inside the same 10 m pixel, so the original values return exactly
    (the outermost ring is left out). Bilinear smooths twice: checked loosely, a median
    relative error below 3 %.
    """
    refl, times = patch
    data = np.moveaxis(dn(refl[3]), -1, 0)
    transform, width, height = calculate_default_transform(
        "EPSG:32633", "EPSG:3857", SIZE, SIZE, *GRID.bounds, resolution=7.0
    )
    warped = np.zeros((13, height, width), np.uint16)
    reproject(
        data,
        warped,
        src_transform=GRID.affine,
        src_crs="EPSG:32633",
        dst_transform=transform,
        dst_crs="EPSG:3857",
        resampling=Resampling.nearest,
        src_nodata=0,
        dst_nodata=0,
    )
    write_raster(tmp_path / f"merc_{stamp(times[3])}.tif", warped, transform, "EPSG:3857", descriptions=L1C_BANDS)

    src = source(tmp_path, resampling="nearest")
    np.testing.assert_array_equal(src.acquisition_dates(GRID, 2015), times[3:4])
    bands, mask = src.read(GRID, times[3:4])
    inner = (slice(1, -1), slice(1, -1))
    assert mask[0][inner].all()
    np.testing.assert_array_equal(bands[0][inner], dn(refl[3])[inner])

    # Independent check of the geometry: pyproj maps pixel centres into the 3857 raster.
    xs, ys = np.meshgrid(GRID.x_coords(), GRID.y_coords())
    mx, my = Transformer.from_crs("EPSG:32633", "EPSG:3857", always_xy=True).transform(xs, ys)
    cols, rows = ~transform * (mx, my)
    sampled = warped[:, np.floor(rows).astype(int)[inner], np.floor(cols).astype(int)[inner]]
    np.testing.assert_array_equal(np.moveaxis(sampled, 0, -1), bands[0][inner])

    bands, mask = source(tmp_path, resampling="bilinear").read(GRID, times[3:4])
    rel = np.abs(bands[0][inner].astype(float) - dn(refl[3])[inner]) / dn(refl[3])[inner]
    assert np.median(rel) < 0.03


# --------------------------------------------------------------------------- bad input


def test_missing_band_is_named(patch, tmp_path):
    refl, times = patch
    safe = write_safe(tmp_path, refl[0], times[0])
    for band in ("B05", "B8A"):
        next(safe.rglob(f"*_{band}.jp2")).unlink()
    with pytest.raises(SourceError, match=r"T33TVM 2015-07-11T10:00:08.*lacks bands B05, B8A"):
        source(tmp_path).acquisition_dates(GRID, 2015)
    with pytest.raises(SourceError, match="lacks bands B05, B8A"):
        source(tmp_path).read(GRID, times[:1])


def test_corrupt_tiff(multiband_folder, tmp_path):
    for f in multiband_folder.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    bad = tmp_path / "S2_20150820.tif"
    bad.write_bytes(b"II*\x00" + b"\x13" * 500)  # a TIFF signature, then garbage
    with pytest.raises(SourceError, match=r"S2_20150820\.tif is not a readable raster.*re-download"):
        source(tmp_path).acquisition_dates(GRID, 2015)


def test_truncated_tiff_fails_on_read(multiband_folder, patch, tmp_path):
    _, times = patch
    good = (multiband_folder / "S2_20150711.tif").read_bytes()
    (tmp_path / "S2_20150711.tif").write_bytes(good[: len(good) // 2])  # header intact, tiles cut off
    src = source(tmp_path)
    with pytest.raises(SourceError, match=r"S2_20150711\.tif"):
        src.read(GRID, src.acquisition_dates(GRID, 2015))


def test_empty_or_missing_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("no scenes here")
    with pytest.raises(SourceError, match="no Sentinel-2 scenes under"):
        source(tmp_path).acquisition_dates(GRID, 2015)
    with pytest.raises(SourceError, match="no Sentinel-2 scenes under"):
        source(tmp_path / "nowhere").acquisition_dates(GRID, 2015)


def test_undated_file(patch, tmp_path):
    refl, _ = patch
    write_raster(tmp_path / "scene.tif", np.moveaxis(dn(refl[0]), -1, 0), GRID.affine, descriptions=L1C_BANDS)
    with pytest.raises(SourceError, match=r"scene\.tif has no acquisition date"):
        source(tmp_path).acquisition_dates(GRID, 2015)


def test_pickles_for_dask_workers(safe_folder, patch):
    src = source(safe_folder)
    src.acquisition_dates(GRID, 2015)
    clone = pickle.loads(pickle.dumps(src))
    np.testing.assert_array_equal(clone.acquisition_dates(GRID, 2015), patch[1])


# --------------------------------------------------------------------------- S3


def test_s3_reads_like_local(s3_bucket, s3_endpoint, safe_folder, multiband_folder, patch):
    import s3fs

    _, times = patch
    fs = s3fs.S3FileSystem(endpoint_url=s3_endpoint)
    fs.put(str(safe_folder), f"{s3_bucket}/scenes/safe", recursive=True)
    fs.put(str(multiband_folder), f"{s3_bucket}/scenes/multi", recursive=True)

    for sub, local in (("safe", safe_folder), ("multi", multiband_folder)):
        remote = source(f"{s3_bucket}/scenes/{sub}", storage_options={"endpoint_url": s3_endpoint})
        dates = remote.acquisition_dates(GRID, 2015)
        np.testing.assert_array_equal(dates, source(local).acquisition_dates(GRID, 2015))
        block = GRID.window(slice(10, 70), slice(20, 96))
        got, got_mask = remote.read(block, dates)
        want, want_mask = source(local).read(block, dates)
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(got_mask, want_mask)

    # The endpoint may also come from AWS_ENDPOINT_URL alone (set by the fixture).
    remote = source(f"{s3_bucket}/scenes/safe")
    np.testing.assert_array_equal(remote.acquisition_dates(GRID, 2015), times)


def test_nodata_value_and_partial_bands(patch, tmp_path):
    """The file's nodata value and 0 are no data; a pixel lacking any band is no data, all bands 0."""
    refl, times = patch
    data = np.moveaxis(dn(refl[0]), -1, 0)
    data[:, :10, :] = 65535  # the declared nodata value
    data[L1C_BANDS.index("B09"), 50:60, 50:60] = 0  # one band without data
    write_raster(tmp_path / "s_20150711.tif", data, GRID.affine, descriptions=L1C_BANDS, nodata=65535)
    bands, mask = source(tmp_path).read(GRID, times[:1])
    expected_mask = np.ones((SIZE, SIZE), bool)
    expected_mask[:10] = False
    expected_mask[50:60, 50:60] = False
    np.testing.assert_array_equal(mask[0], expected_mask)
    assert not bands[0][~expected_mask].any()
    np.testing.assert_array_equal(bands[0][expected_mask], dn(refl[0])[expected_mask])
