"""Export stage (tasks/export/cog.py): COG mosaics of tile cores, legends, reprojection, S3, STAC items."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from datetime import UTC, datetime

import numpy as np
import pystac
import pytest
import rasterio
import s3fs
from affine import Affine
from pyproj import Transformer
from rasterio.features import rasterize
from rasterio.warp import transform_geom
from scipy import ndimage
from shapely.geometry import box, mapping

from lcms.geometry import PixelGrid
from lcms.legend import LULC_LEGEND
from tasks.export.cog import ExportResult, TilePiece, export_cog, read_legend_tags, validate_cog
from tasks.export.publish import gdal_config
from tasks.export.stac import stac_item, write_stac_item

RES = 10.0
CORE = 250
BUF = 5
BUFFER_CODE = 10  # never in a core: a 10 in the output is a buffer pixel that leaked in
X0, Y1 = 500_000.0, 5_100_000.0
# 3 × 2 tiles with the south-east one missing, so the mosaic has an uncovered corner.
LAYOUT = [(c, r) for r in range(2) for c in range(3) if (c, r) != (2, 1)]


def blocky(seed: int, n: int = CORE, block: int = 10, codes=tuple(range(9))) -> np.ndarray:
    """A class map of block × block px patches (code 0 = holes of no data inside the core)."""
    rng = np.random.default_rng(seed)
    small = rng.choice(np.asarray(codes, dtype=np.uint8), size=(math.ceil(n / block),) * 2)
    return np.kron(small, np.ones((block, block), dtype=np.uint8))[:n, :n]


def make_piece(tile_id: str, crs: str, core_x0: float, core_y1: float, core_map: np.ndarray, buffer_value=BUFFER_CODE):
    """A tile whose buffer holds `buffer_value`, so a wrong window shows in the output."""
    h, w = core_map.shape
    grid = PixelGrid(crs, (RES, 0, core_x0 - BUF * RES, 0, -RES, core_y1 + BUF * RES), (h + 2 * BUF, w + 2 * BUF))
    full = np.full(grid.shape, buffer_value, dtype=core_map.dtype)
    full[BUF:-BUF, BUF:-BUF] = core_map
    core = (slice(BUF, BUF + h), slice(BUF, BUF + w))
    return TilePiece(tile_id, grid, core, lambda window: full[window].copy())


def zone_pieces(
    crs: str = "EPSG:32633",
    x0: float = X0,
    y1: float = Y1,
    layout=LAYOUT,
    seed: int = 0,
    prefix="t",
    codes=tuple(range(9)),
):
    return [
        make_piece(
            f"{prefix}{c}{r}", crs, x0 + c * CORE * RES, y1 - r * CORE * RES, blocky(seed + 10 * r + c, codes=codes)
        )
        for c, r in layout
    ]


def assert_mosaic(path, pieces, nodata) -> np.ndarray:
    """Every core at its place (window from the transforms, computed here independently), the rest nodata."""
    with rasterio.open(path) as src:
        data = src.read(1)
        inverse = ~src.transform
    covered = np.zeros(data.shape, dtype=bool)
    for p in pieces:
        a, _, c, _, e, f = p.grid.transform
        core_x0 = c + a * p.core[1].start
        core_y1 = f + e * p.core[0].start
        col, row = inverse * (core_x0 + a / 2, core_y1 + e / 2)  # centre of the core's first pixel
        r, k = math.floor(row), math.floor(col)
        expected = p.read(p.core)
        h, w = expected.shape
        np.testing.assert_array_equal(data[r : r + h, k : k + w], expected, err_msg=p.tile_id)
        covered[r : r + h, k : k + w] = True
    assert (~covered).any(), "the layout should leave an uncovered area"
    assert (data[~covered] == nodata).all()
    return data


@pytest.fixture(scope="module")
def lulc_export(tmp_path_factory):
    """One DEFLATE export with the LULC legend, shared by the read-only tests below."""
    pieces = zone_pieces()
    path = tmp_path_factory.mktemp("export") / "maps" / "lulc.tif"
    result = export_cog(pieces, str(path), legend=LULC_LEGEND, blocksize=256, tags={"YEAR": 2023, "MODEL": "m1"})
    return pieces, path, result


# --------------------------------------------------------------------------- COG structure


@pytest.mark.parametrize("compress", ["DEFLATE", "ZSTD"])
def test_cog_is_valid_tiled_compressed_with_overviews(tmp_path, compress):
    path = tmp_path / f"{compress}.tif"
    export_cog(zone_pieces(), str(path), compress=compress, blocksize=256)
    is_valid, errors, _ = validate_cog(path)
    assert is_valid and errors == []
    with rasterio.open(path) as src:
        assert src.overviews(1) == [2]  # 750 × 500 px: halved once, the overview fits a 256 px block
        assert src.block_shapes == [(256, 256)]
        assert src.profile["tiled"]
        assert src.compression.name.upper() == compress
        assert src.nodata == 0
        assert src.dtypes == ("uint8",)
        assert src.tags()["OVERVIEW_RESAMPLING"] == "MODE"


def test_mosaic_holds_each_core_and_nodata_elsewhere(lulc_export):
    pieces, path, result = lulc_export
    data = assert_mosaic(path, pieces, nodata=0)
    assert BUFFER_CODE not in data
    with rasterio.open(path) as src:
        assert result.shape == (src.height, src.width) == (2 * CORE, 3 * CORE)
        assert result.transform == tuple(src.transform)[:6] == (RES, 0.0, X0, 0.0, -RES, Y1)
        assert result.bounds == tuple(src.bounds)
        assert src.crs.to_epsg() == 32633 and result.crs == "EPSG:32633"
    assert result.n_tiles == len(pieces) and result.url == str(path)
    west, south, east, north = result.bounds_wgs84
    assert 14.9 < west < east < 15.2 and 46.0 < south < north < 46.1


def test_legend_colour_table_and_names_are_inside_the_tiff(lulc_export):
    _, path, _ = lulc_export
    assert sorted(p.name for p in path.parent.iterdir()) == ["lulc.tif"]  # no .aux.xml, no temp files
    # PAM off: whatever reads back now comes from the TIFF itself, not from a sidecar.
    with rasterio.Env(GDAL_PAM_ENABLED="NO"), rasterio.open(path) as src:
        cmap = src.colormap(1)
        for c in LULC_LEGEND:
            rgb = tuple(int(c.color[i : i + 2], 16) for i in (1, 3, 5))
            assert cmap[c.code] == (*rgb, 0 if c.code == 0 else 255), c.name
        assert src.colorinterp[0] == rasterio.enums.ColorInterp.palette
        assert read_legend_tags(src.tags(1)) == {c.code: c.name for c in LULC_LEGEND}
        tags = src.tags()
        assert json.loads(tags["LEGEND"])[2] == {"code": 2, "name": "forest", "color": "#054907"}
        assert tags["YEAR"] == "2023" and tags["MODEL"] == "m1"
    assert not list(path.parent.glob("*.aux.xml"))


def test_gdalinfo_reads_the_legend(lulc_export):
    gdalinfo = shutil.which("gdalinfo")
    if gdalinfo is None:
        pytest.skip("gdalinfo is not on PATH")
    _, path, _ = lulc_export
    info = json.loads(subprocess.run([gdalinfo, "-json", str(path)], check=True, capture_output=True).stdout)
    band = info["bands"][0]
    assert band["colorInterpretation"] == "Palette" and band["noDataValue"] == 0
    assert band["metadata"][""]["CLASS_2"] == "forest"
    assert not list(path.parent.glob("*.aux.xml"))


def test_overviews_take_the_most_frequent_class(tmp_path):
    # In every 2 × 2 block three pixels are class 3 and one is class 9: mode gives 3, average 4 or 5.
    core = np.full((512, 512), 3, dtype=np.uint8)
    core[::2, ::2] = 9
    path = tmp_path / "mode.tif"
    export_cog([make_piece("t", "EPSG:32633", X0, Y1, core)], str(path), blocksize=128)
    with rasterio.open(path, overview_level=0) as ovr:
        assert ovr.shape == (256, 256)
        assert (ovr.read(1) == 3).all()


def test_continuous_map_with_average_overviews_and_other_nodata(tmp_path):
    # Confidence in percent: 0/100 checker → 50 at the first overview; 255 marks no data.
    checker = np.zeros((256, 256), dtype=np.uint8)
    checker[::2, 1::2] = checker[1::2, ::2] = 100
    pieces = [
        make_piece(f"t{c}{r}", "EPSG:32633", X0 + c * 2560, Y1 - r * 2560, checker, buffer_value=7)
        for c, r in [(0, 0), (1, 1)]
    ]
    path = tmp_path / "confidence.tif"
    export_cog(pieces, str(path), nodata=255, overview_resampling="average", blocksize=128)
    assert_mosaic(path, pieces, nodata=255)
    assert validate_cog(path)[0]
    with rasterio.open(path, overview_level=0) as ovr:
        half = ovr.read(1)
    assert (half[:128, :128] == 50).all() and (half[128:, 128:] == 50).all()
    assert (half[:128, 128:] == 255).all()


def test_float_map(tmp_path):
    values = np.linspace(0, 1, CORE * CORE, dtype=np.float32).reshape(CORE, CORE)
    pieces = [make_piece("a", "EPSG:32633", X0, Y1, values), make_piece("b", "EPSG:32633", X0, Y1 - 5000, values)]
    path = tmp_path / "float.tif"
    result = export_cog(pieces, str(path), nodata=-1.0, overview_resampling="average", blocksize=128)
    assert result.dtype == "float32" and result.shape == (3 * CORE, CORE)
    assert_mosaic(path, pieces, nodata=-1.0)
    assert validate_cog(path)[0]


# --------------------------------------------------------------------------- reprojection

# Two tiles each side of the 18°E border of UTM zones 33 and 34, about 3 km apart.
ZONE33 = [(c, 0) for c in range(2)]


def test_reprojection_of_two_zones_keeps_codes_and_areas(tmp_path):
    # No nodata inside the cores, so that a seam between reprojected tiles would show as nodata.
    classes = tuple(range(1, 9))
    pieces = zone_pieces("EPSG:32633", x0=725_000, layout=ZONE33, seed=1, codes=classes)
    pieces += zone_pieces("EPSG:32634", x0=276_000, layout=ZONE33, seed=5, prefix="z34_", codes=classes)
    with pytest.raises(ValueError, match="several CRSs"):
        export_cog(pieces, str(tmp_path / "x.tif"))
    with pytest.raises(ValueError, match="resolution is required"):
        export_cog(pieces, str(tmp_path / "x.tif"), crs="EPSG:3035")
    assert list(tmp_path.iterdir()) == []

    path = tmp_path / "laea.tif"
    result = export_cog(pieces, str(path), crs="EPSG:3035", resolution=RES, legend=LULC_LEGEND, blocksize=256)
    assert validate_cog(path)[0]
    with rasterio.open(path) as src:
        assert src.crs.to_epsg() == 3035 and src.res == (RES, RES)
        out = src.read(1)
        assert src.colormap(1)[5][:3] == (6, 154, 243)
    assert result.transform[2] % RES == 0 and result.transform[5] % RES == 0  # snapped to the resolution
    assert set(np.unique(out)) <= set(range(9))  # only codes of the input; no buffer code, no blends
    # Inside each zone's cores (2 px in from their outline) every pixel is valid: no seams between tiles.
    for crs, x0 in (("EPSG:32633", 725_000), ("EPSG:32634", 276_000)):
        outline = transform_geom(crs, "EPSG:3035", mapping(box(x0, Y1 - CORE * RES, x0 + 2 * CORE * RES, Y1)))
        inside = rasterize([outline], out_shape=out.shape, transform=Affine(*result.transform)).astype(bool)
        inner = ndimage.binary_erosion(inside, iterations=2)
        assert inner.sum() > 0.9 * 2 * CORE * CORE and (out[inner] != 0).all(), crs
    inputs = np.concatenate([p.read(p.core).ravel() for p in pieces])
    for code in range(1, 9):
        area_in, area_out = (inputs == code).sum() * RES**2, (out == code).sum() * RES**2
        assert area_out == pytest.approx(area_in, rel=0.02), code


def test_reprojected_overlap_keeps_the_first_valid_value(tmp_path):
    """Zone-border tiles overlap after reprojection: earlier pieces win, nodata never overwrites."""
    a_map = np.ones((CORE, CORE), dtype=np.uint8)
    a_map[:, 170:] = 0  # A has no data in its eastern part
    a = make_piece("33N", "EPSG:32633", 730_000, 5_100_000, a_map)
    b = make_piece("34N", "EPSG:32634", 266_500, 5_100_000, np.full((CORE, CORE), 2, dtype=np.uint8))
    path = tmp_path / "overlap.tif"
    export_cog([a, b], str(path), crs="EPSG:3035", resolution=RES)

    to_b = Transformer.from_crs("EPSG:32633", "EPSG:32634", always_xy=True)
    to_out = Transformer.from_crs("EPSG:32633", "EPSG:3035", always_xy=True)

    def a_pixel_centre(row, col):
        return 730_000 + (col + 0.5) * RES, 5_100_000 - (row + 0.5) * RES

    with rasterio.open(path) as src:
        data = src.read(1)
        for (row, col), expected in [((125, 160), 1), ((125, 200), 2), ((125, 20), 1)]:
            x, y = a_pixel_centre(row, col)
            bx, by = to_b.transform(x, y)
            in_b = 266_500 < bx < 266_500 + CORE * RES and 5_100_000 - CORE * RES < by < 5_100_000
            assert in_b == (col > 100), "test layout: B must cover the eastern part of A only"
            r, c = src.index(*to_out.transform(x, y))
            assert data[r, c] == expected, (row, col)
    assert set(np.unique(data)) == {0, 1, 2}


# --------------------------------------------------------------------------- S3 and failures


def test_export_to_s3(s3_bucket, s3_endpoint, tmp_path):
    pieces = zone_pieces()
    url = f"{s3_bucket}/maps/x.tif"
    options = {"endpoint_url": s3_endpoint}
    result = export_cog(pieces, url, legend=LULC_LEGEND, blocksize=256, storage_options=options)
    assert result.url == url
    is_valid, errors, _ = validate_cog(url, storage_options=options)
    assert is_valid and errors == []
    with rasterio.Env(**gdal_config(url, options)), rasterio.open(url) as src:
        assert src.overviews(1) and src.colormap(1)[2] == (5, 73, 7, 255)
    local = tmp_path / "x.tif"
    s3fs.S3FileSystem(endpoint_url=s3_endpoint).get_file(url, str(local))
    assert_mosaic(local, pieces, nodata=0)


class Boom(RuntimeError):
    pass


def failing_pieces():
    pieces = zone_pieces()

    def read(window):
        raise Boom("disk gone")

    pieces[3] = TilePiece(pieces[3].tile_id, pieces[3].grid, pieces[3].core, read)
    return pieces


def test_failure_leaves_nothing_locally(tmp_path):
    target = tmp_path / "out" / "x.tif"
    with pytest.raises(Boom):
        export_cog(failing_pieces(), str(target))
    assert list(target.parent.iterdir()) == []


def test_failure_leaves_nothing_on_s3(s3_bucket, s3_endpoint):
    fs = s3fs.S3FileSystem(endpoint_url=s3_endpoint)
    with pytest.raises(Boom):
        export_cog(failing_pieces(), f"{s3_bucket}/maps/x.tif", storage_options={"endpoint_url": s3_endpoint})
    fs.invalidate_cache()
    assert fs.find(s3_bucket) == []


def _bad_shape(pieces):
    p = pieces[1]
    return [pieces[0], TilePiece(p.tile_id, p.grid, p.core, lambda w: np.zeros((10, 10), np.uint8)), *pieces[2:]]


def _three_d(pieces):
    p = pieces[2]
    return [*pieces[:2], TilePiece(p.tile_id, p.grid, p.core, lambda w: np.zeros((1, CORE, CORE), np.uint8))]


def _shifted(pieces):
    p = pieces[1]
    a, b, c, d, e, f = p.grid.transform
    grid = PixelGrid(p.grid.crs, (a, b, c + 3, d, e, f), p.grid.shape)
    return [pieces[0], TilePiece(p.tile_id, grid, p.core, p.read), *pieces[2:]]


@pytest.mark.parametrize(
    ("make", "kwargs", "message"),
    [
        (lambda ps: [], {}, "no pieces"),
        (lambda ps: ps, {"compress": "JPEG"}, "unknown compress"),
        (lambda ps: ps, {"overview_resampling": "bogus"}, "unknown overview_resampling"),
        (lambda ps: ps, {"resampling": "bogus"}, "unknown resampling"),
        (lambda ps: ps, {"blocksize": 100}, "multiple of 16"),
        (lambda ps: ps, {"nodata": 300}, "does not fit"),
        (_bad_shape, {}, "tile t10: .*returned shape \\(10, 10\\)"),
        (_three_d, {}, "tile t20: .*3-D"),
        (_shifted, {}, "tile t10 is shifted by a fraction of a pixel"),
        (lambda ps: ps, {"crs": "EPSG:3035", "resolution": -5}, "resolution must be positive"),
        (lambda ps: ps, {"crs": "not a crs"}, "not a CRS"),
        (lambda ps: ps, {"legend": [*LULC_LEGEND[:2], LULC_LEGEND[1].__class__(300, "x", "#000000")]}, "code 300"),
    ],
)
def test_bad_input_is_a_clear_value_error(tmp_path, make, kwargs, message):
    target = tmp_path / "x.tif"
    with pytest.raises(ValueError, match=message):
        export_cog(make(zone_pieces()), str(target), **kwargs)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- STAC


def test_stac_item(lulc_export, tmp_path):
    _, path, result = lulc_export
    start, end = datetime(2023, 1, 1, tzinfo=UTC), datetime(2023, 12, 31, 23, 59, 59, tzinfo=UTC)
    href = "s3://bucket/maps/lulc.tif"
    item = stac_item(
        result, item_id="lulc-2023", start=start, end=end, asset_href=href, title="LULC 2023", legend=LULC_LEGEND
    )
    d = item.to_dict(include_self_link=False)

    assert d["properties"]["datetime"] is None
    assert d["properties"]["start_datetime"].startswith("2023-01-01T00:00:00")
    assert d["properties"]["end_datetime"].startswith("2023-12-31T23:59:59")
    asset = d["assets"]["data"]
    assert asset["href"] == href and asset["type"] == pystac.MediaType.COG and asset["roles"] == ["data"]
    props = d["properties"]
    assert props["proj:code"] == "EPSG:32633"
    assert props["proj:shape"] == list(result.shape) == [500, 750]
    assert props["proj:transform"] == list(result.transform)
    assert props["proj:bbox"] == list(result.bounds)
    assert any("projection" in e for e in d["stac_extensions"])
    assert any("classification" in e for e in d["stac_extensions"])

    # bbox in WGS84 around the tiles' corners
    west, south, east, north = d["bbox"]
    to_wgs84 = Transformer.from_crs("EPSG:32633", "EPSG:4326", always_xy=True)
    minx, miny, maxx, maxy = result.bounds
    for x, y in [(minx, miny), (minx, maxy), (maxx, miny), (maxx, maxy)]:
        lon, lat = to_wgs84.transform(x, y)
        assert west <= lon <= east and south <= lat <= north
    assert east - west < 0.2 and north - south < 0.1
    assert d["geometry"]["type"] == "Polygon"

    classes = {c["value"]: c for c in asset["classification:classes"]}
    assert classes[2] == {"value": 2, "name": "forest", "title": "forest", "color_hint": "054907"}
    assert classes[8]["name"] == "artificial_surface" and classes[8]["title"] == "artificial surface"
    assert classes[0]["nodata"] is True
    assert asset["raster:bands"] == [{"nodata": 0, "data_type": "uint8", "spatial_resolution": RES}]

    out = tmp_path / "stac" / "lulc-2023.json"
    write_stac_item(item, str(out))
    back = pystac.Item.from_file(str(out))
    assert back.id == "lulc-2023" and back.assets["data"].href == href
    assert back.properties["proj:shape"] == [500, 750]
    assert [p.name for p in out.parent.iterdir()] == ["lulc-2023.json"]


def test_stac_item_without_legend_has_no_classes(lulc_export):
    result: ExportResult = lulc_export[2]
    item = stac_item(
        result,
        item_id="conf",
        start=datetime(2023, 1, 1, tzinfo=UTC),
        end=datetime(2024, 1, 1, tzinfo=UTC),
        asset_href="conf.tif",
        title="confidence",
        properties={"lcms:year": 2023},
    )
    d = item.to_dict(include_self_link=False)
    assert "classification:classes" not in d["assets"]["data"]
    assert d["properties"]["lcms:year"] == 2023
