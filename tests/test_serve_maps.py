"""`lcms serve` maps and imagery (lcms/serve/maps.py, imagery.py, tiling.py) and the export's imagery
composites and STAC catalogue (tasks/export/imagery.py, stac.py).

The store: eight 1 km tiles across the 18°E border of UTM zones 33 and 34, two years, with
hand-written download bands (so composites, chips and series have answers computed here), predictions
with probabilities, post-processed labels and NDVI features. The real export code writes the COGs, the
STAC items and the catalogue; a real `lcms serve` process on 127.0.0.1 serves them; every image and
number it answers is checked against an independent computation from the stored arrays or the COGs.
"""

from __future__ import annotations

import io
import json
import shutil
import zlib
from urllib.parse import urljoin

import morecantile
import numpy as np
import pystac
import pytest
import rasterio
import yaml
from PIL import Image
from pyproj import Transformer
from pystac.extensions.classification import ClassificationExtension
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.raster import RasterExtension
from pystac.validation.stac_validator import JsonSchemaSTACValidator
from serve_support import Client, Server, add_users
from shapely.geometry import box, mapping

from flows.common import load_grid
from lcms.config import ExportConfig, parse_config
from lcms.legend import LULC_LEGEND, hex_to_rgb
from lcms.sentinel2 import REFLECTANCE_SCALE
from lcms.store import TileStore
from tasks.export.cog import validate_cog
from tasks.export.imagery import export_imagery_year, periods_of
from tasks.export.maps import export_year, map_groups
from tasks.export.stac import write_catalogue

YEARS = (2023, 2024)
CLASSES = np.array([1, 2, 3, 5], np.uint8)
LEGEND = [c.__dict__ for c in LULC_LEGEND]
NAMES = {c.code: c.name for c in LULC_LEGEND}
BANDS = ["B02", "B03", "B04", "B08", "B11", "B12"]
N_DATES = 8
AOI = [17.985, 46.0, 18.015, 46.01]  # across the 18°E border of zones 33 and 34
TMS = morecantile.tms.get("WebMercatorQuad")
MAX_DN = 0.3 * REFLECTANCE_SCALE


# --------------------------------------------------------------------------- the store


def world_xy(tile):
    xs, ys = np.meshgrid(tile.grid.x_coords(), tile.grid.y_coords())
    return xs, ys


def download_arrays(tile, year):
    """Bands from a seeded generator, a cloudy pattern per date and a date with no data on half the tile."""
    rng = np.random.default_rng(zlib.crc32(f"{tile.tile_id}/{year}".encode()))
    h, w = tile.grid.shape
    times = np.array([f"{year}-{m:02d}-15T10:00:00" for m in (1, 2, 4, 5, 7, 8, 10, 11)], dtype="datetime64[s]")
    bands = rng.integers(200, 4000, size=(N_DATES, h, w, len(BANDS)), dtype=np.uint16)
    data = np.ones((N_DATES, h, w), bool)
    data[3, :, : w // 2] = False
    bands[~data] = 0
    cloud = rng.random((N_DATES, h, w)) < 0.3
    cloud[0] = False
    cloud &= data
    shadow = (rng.random((N_DATES, h, w)) < 0.05) & data & ~cloud
    valid = data & ~cloud & ~shadow
    return times, bands, data, cloud, shadow, valid


def class_map(tile):
    xs, ys = world_xy(tile)
    return CLASSES[((xs // 200).astype(int) + (ys // 300).astype(int)) % len(CLASSES)]


def write_tile_year(store, tile, year):
    times, bands, data, cloud, shadow, valid = download_arrays(tile, year)
    h, w = tile.grid.shape
    coords = {"time": times, "band": np.array(BANDS)}
    with store.writer("download", year, tile.tile_id, tile.grid, f"d{year}", coords) as wr:
        wr.write("bands", bands)
        wr.write("data_mask", data)
        wr.write("cloud_prob", np.where(cloud, 90, 5).astype(np.uint8))
        wr.write("cloud_mask", cloud)
        wr.write("shadow_mask", shadow)
        wr.write("valid_mask", valid)
        wr.write("valid_coverage", valid.mean(axis=(1, 2)).astype(np.float32))
    labels = class_map(tile)
    rng = np.random.default_rng(year)
    top = rng.integers(40, 96, size=(h, w)).astype(np.uint8)
    probabilities = np.zeros((h, w, len(CLASSES)), np.uint8)
    rest = (100 - top) // (len(CLASSES) - 1)
    probabilities[:] = rest[..., None]
    winner = np.searchsorted(CLASSES, labels)
    np.put_along_axis(probabilities, winner[..., None], top[..., None], axis=-1)
    attrs = {"legend": LEGEND}
    with store.writer("prediction", year, tile.tile_id, tile.grid, f"p{year}", {"class": CLASSES}, attrs) as wr:
        wr.write("labels", labels)
        wr.write("probabilities", probabilities)
        wr.write("confidence", top)
    cleaned = labels.copy()
    cleaned[::7, ::7] = 2  # what post-processing changed: the map shows these, the prediction not
    with store.writer("postprocess", year, tile.tile_id, tile.grid, f"pp{year}", {}, attrs) as wr:
        wr.write("labels", cleaned)
    grid_dates = np.array([f"{year}-{m:02d}-01" for m in (1, 3, 5, 7, 9, 11)], dtype="datetime64[s]")
    ndvi = rng.integers(-2000, 9000, size=(len(grid_dates), h, w, 1)).astype(np.int16)
    coords = {"time": grid_dates, "feature": np.array(["NDVI"])}
    with store.writer("features", year, tile.tile_id, tile.grid, f"f{year}", coords) as wr:
        wr.write("features", ndvi)
        wr.write("no_valid", np.zeros((h, w), bool))
        wr.write("valid_count", valid.sum(axis=0).astype(np.uint16))


def run_config(folder, store_url, maps_url=None):
    data = {
        "name": "serve-maps-test",
        "aoi": {"bbox": AOI},
        "years": list(YEARS),
        "grid": {"tile_size_m": 1000, "buffer_m": 50},
        "store": {"url": store_url},
        "export": {"imagery": {"periods": ["year", "quarter"]}, **({"url": maps_url} if maps_url else {})},
        "serve": {"database_path": str(folder / "serve.sqlite")},
    }
    return data, parse_config(data)


def export_all(store, config):
    tiles = store.read_grid()
    for year in YEARS:
        export_year(store, tiles, year, config.export, config.product)
        export_imagery_year(store, tiles, year, config.export, map_groups(tiles, config.export))
    return write_catalogue(config.export.url or store.maps_url(), store.storage_options)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    folder = tmp_path_factory.mktemp("serve-maps")
    data, config = run_config(folder, str(folder / "store"))
    store = TileStore.from_config(config.store)
    grid = load_grid(config, store)
    for tile in grid:
        for year in YEARS:
            write_tile_year(store, tile, year)
    documents = export_all(store, config)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return folder, path, config, store, grid, documents


@pytest.fixture(scope="module")
def server(world):
    folder, path, *_ = world
    add_users(path, {"vera": "viewer"})
    srv = Server(path, folder / "serve.log")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def viewer(server):
    client = Client(server.url, "vera")
    yield client
    client.close()


# --------------------------------------------------------------------------- independent computations


def png_rgba(content: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(content)).convert("RGBA"))


def pixel_lonlat(z, x, y, size):
    """Lon/lat of the centres of a tile's pixels (Web Mercator maths, pyproj)."""
    b = TMS.xy_bounds(morecantile.Tile(x, y, z))
    step = (b.right - b.left) / size
    mx = b.left + (np.arange(size) + 0.5) * step
    my = b.top - (np.arange(size) + 0.5) * step
    mx, my = np.meshgrid(mx, my)
    return Transformer.from_crs("EPSG:3857", "EPSG:4326", always_xy=True).transform(mx, my)


def expected_values(cog_paths, lon, lat):
    """Each pixel's value in the first COG with data there (nearest pixel), and where any had data."""
    values = np.zeros(lon.shape + (0,), np.uint8)
    found = np.zeros(lon.shape, bool)
    for path in cog_paths:
        with rasterio.open(path) as src:
            data = src.read()
            x, y = Transformer.from_crs("EPSG:4326", src.crs, always_xy=True).transform(lon, lat)
            col, row = ~src.transform * (x, y)
            row, col = np.floor(row).astype(int), np.floor(col).astype(int)
            inside = (row >= 0) & (row < src.height) & (col >= 0) & (col < src.width)
            picked = np.zeros(lon.shape + (src.count,), data.dtype)
            picked[inside] = data[:, row[inside], col[inside]].T
            has = inside & (picked != src.nodata).any(axis=-1)
        if values.shape[-1] == 0:
            values = np.zeros(lon.shape + (picked.shape[-1],), picked.dtype)
        take = has & ~found
        values[take] = picked[take]
        found |= has
    return values, found


def maps_cogs(world, year, layer):
    folder = world[0] / "store" / "maps"
    return sorted(str(p) for p in folder.glob(f"land-cover_{year}_*_{layer}.tif"))


def imagery_cogs(world, period, kind):
    folder = world[0] / "store" / "maps" / "imagery"
    return sorted(str(p) for p in folder.glob(f"imagery_{period}_*_{kind}.tif"))


def border_tile(z):
    """The tile at zoom z over the zone border in the middle of the AOI."""
    return TMS.tile(18.0, 46.005, z)


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float((a == b).all(axis=-1).mean())


# --------------------------------------------------------------------------- export: composites and catalogue


def test_composites_are_the_median_of_valid_observations(world):
    folder, _, config, store, grid, _ = world
    tile = grid.tile_ids[0]
    t = grid[tile]
    times, bands, data, cloud, shadow, valid = download_arrays(t, 2023)
    q2 = periods_of(2023, ["quarter"])[1]
    chosen = q2.contains(times)
    assert chosen.sum() == 2  # April and May
    rows, cols = t.core_window
    expected = np.zeros((3, *t.core_grid.shape), np.uint8)
    for k, band in enumerate(("B08", "B04", "B03")):  # false colour
        for i in range(t.core_grid.shape[0]):
            for j in range(t.core_grid.shape[1]):
                r, c = rows.start + i, cols.start + j
                obs = [int(bands[d, r, c, BANDS.index(band)]) for d in np.flatnonzero(chosen) if valid[d, r, c]]
                if obs:
                    dn = round(float(np.median(obs)))  # numpy's median: the mean of the two middle values
                    expected[k, i, j] = 1 + round(min(dn / MAX_DN, 1.0) * 254)
    expected[:, (expected == 0).any(axis=0)] = 0
    path = imagery_cogs(world, "2023-Q2", "false-colour")[0]
    assert validate_cog(path)[0]
    with rasterio.open(path) as src:
        assert src.count == 3 and src.dtypes == ("uint8",) * 3 and src.nodata == 0
        assert [ci.name for ci in src.colorinterp] == ["red", "green", "blue"]
        x0, y1 = t.core_grid.bounds[0], t.core_grid.bounds[3]
        r0, c0 = src.index(x0 + 5, y1 - 5)
        got = src.read(window=((r0, r0 + expected.shape[1]), (c0, c0 + expected.shape[2])))
    assert (expected > 0).mean() > 0.5 and (expected == 0).any()  # some pixels never clear in the quarter
    diff = np.abs(got.astype(int) - expected.astype(int))
    assert diff.max() <= 1  # float32 rounding of the scaling, at most one grey level
    assert (diff == 0).mean() > 0.99


def test_every_year_period_zone_and_kind_is_exported(world):
    folder = world[0] / "store" / "maps"
    names = sorted(p.name for p in (folder / "imagery").glob("*.tif"))
    periods = [p.name for y in YEARS for p in periods_of(y, ["year", "quarter"])]
    assert len(names) == len(periods) * 2 * 2  # × zones × kinds
    assert "imagery_2024-Q4_34N_true-colour.tif" in names


def test_catalogue_hrefs_are_relative_and_validate(world, tmp_path):
    folder, _, _, _, _, documents = world
    maps = folder / "store" / "maps"
    assert sorted(documents) == ["catalog.json", "collections/imagery.json", "collections/land-cover.json"]
    # Moved elsewhere, the catalogue still resolves: every href is relative.
    moved = tmp_path / "elsewhere"
    shutil.copytree(maps, moved)
    catalogue = pystac.Catalog.from_file(str(moved / "catalog.json"))
    validator = JsonSchemaSTACValidator()  # pystac's bundled core schemas: no network needed
    collections = {c.id: c for c in catalogue.get_children()}
    assert set(collections) == {"land-cover", "imagery"}
    items = list(catalogue.get_items(recursive=True))
    assert len(items) == len(YEARS) * 2 * 2 + len(YEARS) * 5 * 2 * 2
    for stac_object in [catalogue, *collections.values(), *items]:
        raw = stac_object.to_dict(include_self_link=False, transform_hrefs=False)
        validator.validate_core(raw, stac_object.STAC_OBJECT_TYPE, pystac.get_stac_version())
    for item in items:
        text = (moved / (("imagery/" if item.collection_id == "imagery" else "") + f"{item.id}.json")).read_text()
        assert str(folder) not in text  # no absolute path anywhere
        for link in json.loads(text)["links"]:
            assert link["href"].startswith(("./", "../"))
        asset = item.assets["data"]
        assert json.loads(text)["assets"]["data"]["href"] == f"./{item.id}.tif"
        assert asset.get_absolute_href() == str(moved / asset.href.lstrip("./")) or (moved / "imagery").exists()
        with rasterio.open(asset.get_absolute_href()) as src:  # the asset resolves to the moved COG
            count, shape, epsg = src.count, src.shape, src.crs.to_epsg()
        # The extensions' schemas are not bundled with pystac (no network here): their fields, through pystac.
        assert ProjectionExtension.ext(item).code == f"EPSG:{epsg}" and ProjectionExtension.ext(item).shape == [*shape]
        assert len(RasterExtension.ext(asset).bands) == count
        classes = ClassificationExtension.ext(asset).classes if "labels" in item.id else None
        assert classes is None or {c.value for c in classes} == {c.code for c in LULC_LEGEND}
        assert item.get_collection().id == item.collection_id
    land = collections["land-cover"]
    assert land.extent.temporal.intervals[0][0].year == 2023 and land.extent.temporal.intervals[0][1].year == 2024


def test_catalogue_on_s3(world, s3_bucket, s3_endpoint):
    """The same export to S3: relative hrefs resolve to keys there, and the service's tiles read them."""
    from lcms.serve.tiling import LayerIndex, render_tile
    from tasks.export.stac import read_items

    _, _, config, store, _, _ = world
    url = f"{s3_bucket}/maps"
    options = {"endpoint_url": s3_endpoint}
    s3_export = ExportConfig(url=url, confidence=False, imagery={"periods": ["year"]})
    tiles = store.read_grid()
    export_year(store, tiles, 2023, s3_export, "land-cover")
    export_imagery_year(store, tiles, 2023, s3_export, map_groups(tiles, s3_export))
    documents = write_catalogue(url, options)
    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=s3_endpoint)
    for path, item in read_items(url, options).items():
        href = item["assets"]["data"]["href"]
        assert href.startswith("./")
        assert fs.exists(f"{url}/{path.rsplit('/', 1)[0] + '/' if '/' in path else ''}{href[2:]}")
    assert "s3://" not in json.dumps(documents)
    index = LayerIndex(url, options)
    layer = index.get("maps", "land-cover", "2023", "labels")
    assert all(u.startswith("s3://") for u in layer.urls) and len(layer.urls) == 2
    x, y, z = border_tile(14)
    from_s3 = png_rgba(render_tile(layer, z, x, y, 256, "png", options))
    local = LayerIndex(str(world[0] / "store" / "maps")).get("maps", "land-cover", "2023", "labels")
    assert np.array_equal(from_s3, png_rgba(render_tile(local, z, x, y, 256, "png", {})))


# --------------------------------------------------------------------------- the service: map tiles


def test_layers_are_found_from_the_stac_items(viewer):
    layers = viewer.get("/maps").json()["layers"]
    keys = {(m["product"], m["year"], m["layer"]) for m in layers}
    assert keys == {("land-cover", y, k) for y in YEARS for k in ("labels", "confidence")}
    assert all(m["zones"] == 2 for m in layers)
    labels = next(m for m in layers if m["layer"] == "labels")
    assert [c["code"] for c in labels["legend"]] == [c.code for c in LULC_LEGEND if c.code]


@pytest.mark.parametrize(("z", "size", "fmt"), [(14, 256, "png"), (15, 512, "png"), (14, 256, "webp")])
def test_label_tile_shows_the_legend_colours_of_both_zones(world, viewer, z, size, fmt):
    x, y = border_tile(z)[:2]
    answer = viewer.get(f"/maps/land-cover/2023/labels/tiles/{z}/{x}/{y}.{fmt}", params={"tile_size": size})
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == f"image/{fmt}"
    got = png_rgba(answer.content)
    assert got.shape == (size, size, 4)
    lon, lat = pixel_lonlat(z, x, y, size)
    values, found = expected_values(maps_cogs(world, 2023, "labels"), lon, lat)
    colours = np.zeros((256, 4), np.uint8)
    for c in LULC_LEGEND:
        if c.code:
            colours[c.code] = (*hex_to_rgb(c.color), 255)
    expected = colours[values[..., 0]]
    west = lon < 18.0
    assert west.any() and (~west).any()  # the tile spans the zone border
    assert (found & west).any() and (found & ~west).any()  # both zones' COGs have data in it
    if fmt == "png":  # lossless: pixel for pixel (nearest-neighbour edges may differ by a pixel)
        assert agreement(got, expected) > 0.98
    else:  # lossy WebP: the same picture, colours close
        assert np.abs(got[found].astype(int) - expected[found].astype(int)).mean() < 12
    assert (got[~found, 3] == 0).all()  # outside the maps: transparent


def test_confidence_tile_uses_the_ramp(world, viewer):
    from rio_tiler.colormap import cmap

    x, y, z = border_tile(14)
    got = png_rgba(viewer.get(f"/maps/land-cover/2024/confidence/tiles/{z}/{x}/{y}.png").content)
    lon, lat = pixel_lonlat(z, x, y, 256)
    values, found = expected_values(maps_cogs(world, 2024, "confidence"), lon, lat)
    viridis = cmap.get("viridis")
    ramp = np.array([viridis[min(255, round(v * 255 / 100))] for v in range(256)], np.uint8)
    expected = ramp[values[..., 0]]
    expected[~found] = 0
    assert agreement(got[found], expected[found]) > 0.98
    assert (got[~found, 3] == 0).all()


def test_tilejson(viewer, world):
    answer = viewer.get("/maps/land-cover/2024/labels/tilejson.json", params={"tile_size": 512})
    assert answer.status_code == 200
    doc = answer.json()
    assert doc["tilejson"] == "3.0.0" and doc["tileSize"] == 512
    assert doc["tiles"][0].endswith("/maps/land-cover/2024/labels/tiles/{z}/{x}/{y}.png?tile_size=512")
    west, south, east, north = doc["bounds"]
    assert west < AOI[0] + 0.01 and east > AOI[2] - 0.01 and south < AOI[1] + 0.005 and north > AOI[3] - 0.005
    assert doc["minzoom"] <= doc["maxzoom"] and 13 <= doc["maxzoom"] <= 14  # 10 m pixels
    assert {c["name"] for c in doc["legend"]} >= {"forest", "water"}
    # The template works as given.
    x, y, z = border_tile(14)
    url = doc["tiles"][0].format(z=z, x=x, y=y)
    assert viewer.get(url).status_code == 200


def test_tile_without_data_is_no_content(viewer):
    x, y, z = TMS.tile(10.0, 40.0, 14)
    assert viewer.get(f"/maps/land-cover/2023/labels/tiles/{z}/{x}/{y}.png").status_code == 204


def test_point_query(world, viewer):
    _, _, _, store, grid, _ = world
    tile = grid[grid.tile_ids[-1]]  # the north-east tile, in zone 34
    row, col = 21, 98  # inside the core; post-processing changed this pixel (every 7th row and column)
    x, y = tile.grid.affine * (col + 0.5, row + 0.5)
    lon, lat = Transformer.from_crs(tile.grid.crs, "EPSG:4326", always_xy=True).transform(x, y)
    for other in grid:  # far enough east that no zone 33 tile's core holds it
        ox, oy = Transformer.from_crs("EPSG:4326", other.grid.crs, always_xy=True).transform(lon, lat)
        w, s, e, n = other.core_bounds
        assert (w <= ox < e and s < oy <= n) == (other.tile_id == tile.tile_id)
    answer = viewer.get("/maps/land-cover/2024/point", params={"lon": lon, "lat": lat})
    assert answer.status_code == 200, answer.text
    doc = answer.json()
    prediction = store.open_tile("prediction", 2024, tile.tile_id)
    predicted = int(prediction.read("labels")[row, col])
    shown = int(store.open_tile("postprocess", 2024, tile.tile_id).read("labels")[row, col])
    assert shown == 2 and predicted != 2
    assert (doc["tile"], doc["row"], doc["col"]) == (tile.tile_id, row, col)
    assert doc["class"] == shown and doc["class_name"] == NAMES[shown]
    assert doc["predicted_class"] == predicted and doc["predicted_class_name"] == NAMES[predicted]
    assert doc["confidence"] == int(prediction.read("confidence")[row, col])
    probabilities = prediction.read("probabilities")[row, col]
    assert [p["code"] for p in doc["probabilities"]] == CLASSES.tolist()
    assert [p["probability"] for p in doc["probabilities"]] == probabilities.tolist()
    assert max(doc["probabilities"], key=lambda p: p["probability"])["code"] == predicted


# --------------------------------------------------------------------------- the service: imagery


def test_imagery_tile_is_the_composite(world, viewer):
    layers = {(m["period"], m["composite"]) for m in viewer.get("/imagery").json()["layers"]}
    assert ("2023-Q3", "true-colour") in layers and len(layers) == len(YEARS) * 5 * 2
    x, y, z = border_tile(15)
    answer = viewer.get(f"/imagery/2023-Q3/true-colour/tiles/{z}/{x}/{y}.png")
    assert answer.status_code == 200
    got = png_rgba(answer.content)
    lon, lat = pixel_lonlat(z, x, y, 256)
    values, found = expected_values(imagery_cogs(world, "2023-Q3", "true-colour"), lon, lat)
    assert found.mean() > 0.3
    assert agreement(got[found][:, :3], values[found]) > 0.98
    assert (got[found, 3] == 255).mean() > 0.98 and (got[~found, 3] == 0).mean() > 0.98
    doc = viewer.get("/imagery/2023-Q3/false-colour/tilejson.json").json()
    assert doc["bands"] == ["B08", "B04", "B03"] and "/imagery/2023-Q3/false-colour/tiles/" in doc["tiles"][0]


def _place(tile, r0, c0, n):
    """A bbox (degrees) strictly inside pixels r0..r0+n, c0..c0+n of a tile's grid."""
    a = tile.grid.affine
    x0, y1 = a * (c0 + 0.2, r0 + 0.2)
    x1, y0 = a * (c0 + n - 0.2, r0 + n - 0.2)
    to = Transformer.from_crs(tile.grid.crs, "EPSG:4326", always_xy=True)
    lons, lats = to.transform([x0, x1, x0, x1], [y0, y0, y1, y1])
    return min(lons), min(lats), max(lons), max(lats)


def test_chips_list_dates_and_cloud_fractions(world, viewer):
    _, _, _, store, grid, _ = world
    tile = grid[grid.tile_ids[0]]
    r0, c0, n = 30, 30, 20
    bbox = ",".join(f"{v:.8f}" for v in _place(tile, r0, c0, n))
    answer = viewer.get("/imagery/chips", params={"bbox": bbox})
    assert answer.status_code == 200, answer.text
    doc = answer.json()
    assert doc["tile"] == tile.tile_id
    chips = doc["acquisitions"]
    assert len(chips) == 2 * (N_DATES - 1)  # the April acquisitions have no data on the west half
    # Independently: the window the bbox covers is at least the n × n pixels it was made from.
    (rows, cols) = doc["size"]
    assert rows >= n - 1 and cols >= n - 1
    times, bands, data, cloud, shadow, valid = download_arrays(tile, 2023)
    first = chips[0]
    assert first["date"] == "2023-01-15T10:00:00Z"
    window = (slice(r0, r0 + n), slice(c0, c0 + n))
    listed = {c["date"]: c for c in chips}
    for t in range(N_DATES):
        if not data[t][window].any():
            assert str(times[t]) + "Z" not in listed
            continue
        expected = ((cloud[t] | shadow[t]) & data[t])[window].sum() / data[t][window].sum()
        assert listed[str(times[t]) + "Z"]["cloud_fraction"] == pytest.approx(expected, abs=0.06)
    clear = viewer.get("/imagery/chips", params={"bbox": bbox, "max_cloud": 0.2, "years": "2024"}).json()
    assert 1 <= len(clear["acquisitions"]) < N_DATES
    assert all(c["cloud_fraction"] <= 0.2 and c["year"] == 2024 for c in clear["acquisitions"])
    # A polygon: the same place, as GeoJSON.
    polygon = mapping(box(*map(float, bbox.split(","))))
    posted = viewer.post("/imagery/chips", json={"geometry": polygon, "years": [2023]})
    assert posted.status_code == 200 and len(posted.json()["acquisitions"]) == N_DATES - 1

    # The chip of January: the true colour of the raw bands, scaled as the composites.
    png = viewer.get(first["chip"])
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    got = png_rgba(png.content)
    rows_got, cols_got = got.shape[:2]
    assert (rows_got, cols_got) == (rows, cols)
    # Find the window from the chip's size and the bbox (as the server did), then compare pixel values.
    west, south, east, north = map(float, bbox.split(","))
    to_tile = Transformer.from_crs("EPSG:4326", tile.grid.crs, always_xy=True)
    xs, ys = to_tile.transform([west, east, west, east], [south, south, north, north])
    col0, row0 = ~tile.grid.affine * (min(xs), max(ys))
    r, c = round(row0), round(col0)
    rgb = bands[0, r : r + rows, c : c + cols][..., [BANDS.index(b) for b in ("B04", "B03", "B02")]]
    expected = (1 + np.rint(np.clip(rgb / MAX_DN, 0, 1) * 254)).astype(np.uint8)
    assert np.abs(got[..., :3].astype(int) - expected.astype(int)).max() <= 1
    assert (got[..., 3] == 255).all()


def test_timeseries_at_a_point_over_every_year(world, viewer):
    _, _, _, store, grid, _ = world
    tile = grid[grid.tile_ids[2]]
    row, col = 40, 61
    x, y = tile.grid.affine * (col + 0.5, row + 0.5)
    lon, lat = Transformer.from_crs(tile.grid.crs, "EPSG:4326", always_xy=True).transform(x, y)
    answer = viewer.get("/imagery/timeseries", params={"lon": lon, "lat": lat, "band": "NDVI"})
    assert answer.status_code == 200, answer.text
    doc = answer.json()
    expected = []
    for year in YEARS:
        times, bands, data, cloud, shadow, valid = download_arrays(tile, year)
        for t in range(N_DATES):
            if valid[t, row, col]:
                nir, red = (float(bands[t, row, col, BANDS.index(b)]) for b in ("B08", "B04"))
                expected.append((str(times[t]) + "Z", (nir - red) / (nir + red)))
    assert [o["date"] for o in doc["observations"]] == [d for d, _ in expected]
    assert [o["value"] for o in doc["observations"]] == pytest.approx([v for _, v in expected], abs=1e-4)
    assert {o["date"][:4] for o in doc["observations"]} == {"2023", "2024"}
    features = [store.open_tile("features", y, tile.tile_id) for y in YEARS]
    stored = np.concatenate([f.read("features")[:, row, col, 0] for f in features]) * 1e-4
    assert [v["value"] for v in doc["interpolated"]] == pytest.approx(stored.tolist(), abs=1e-5)
    assert len(doc["interpolated"]) == 12
    # A reflectance band works too.
    b03 = viewer.get("/imagery/timeseries", params={"lon": lon, "lat": lat, "band": "B03", "years": "2023"}).json()
    first = next(t for t in range(N_DATES) if download_arrays(tile, 2023)[5][t, row, col])
    assert b03["observations"][0]["value"] == pytest.approx(
        download_arrays(tile, 2023)[1][first, row, col, 1] / 1e4, abs=1e-5
    )
    assert b03["interpolated"] == []  # B03 is not among the stored features


def test_timeseries_over_a_polygon_is_the_mean_of_valid_pixels(world, viewer):
    _, _, _, store, grid, _ = world
    tile = grid[grid.tile_ids[1]]
    r0, c0, n = 50, 50, 6
    polygon = mapping(box(*_place(tile, r0, c0, n)))
    doc = viewer.post("/imagery/timeseries", json={"geometry": polygon, "band": "NDWI", "years": [2024]}).json()
    assert doc["pixels"] >= (n - 1) ** 2
    times, bands, data, cloud, shadow, valid = download_arrays(tile, 2024)
    win = (slice(r0, r0 + n), slice(c0, c0 + n))
    green = bands[:, win[0], win[1], BANDS.index("B03")].astype(float)
    nir = bands[:, win[0], win[1], BANDS.index("B08")].astype(float)
    with np.errstate(invalid="ignore"):  # no data: 0 / 0
        ndwi = (green - nir) / (green + nir)
    got = {o["date"]: o for o in doc["observations"]}
    for t in range(N_DATES):
        ok = valid[t][win]
        if ok.any():
            assert got[str(times[t]) + "Z"]["value"] == pytest.approx(ndwi[t][ok].mean(), abs=0.02)


# --------------------------------------------------------------------------- the service: STAC


def test_stac_catalogue_browses_with_relative_hrefs(viewer, world):
    root = viewer.get("/stac")
    assert root.status_code == 200
    base = str(root.url).rstrip("/") + "/"
    children = [link for link in root.json()["links"] if link["rel"] == "child"]
    assert {link["title"] for link in children} == {"land-cover", "imagery"}
    child = next(link for link in children if link["title"] == "land-cover")
    collection_url = urljoin(base, child["href"])
    collection = viewer.get(collection_url).json()
    assert collection["type"] == "Collection" and collection["id"] == "land-cover"
    item_links = [link for link in collection["links"] if link["rel"] == "item"]
    assert len(item_links) == len(YEARS) * 2 * 2  # years × maps × zones
    item_url = urljoin(collection_url, item_links[0]["href"])
    item = viewer.get(item_url).json()
    assert item["type"] == "Feature" and item["collection"] == "land-cover"
    cog = viewer.get(urljoin(item_url, item["assets"]["data"]["href"]))
    assert cog.status_code == 200
    local = world[0] / "store" / "maps" / f"{item['id']}.tif"
    assert cog.content == local.read_bytes()
    assert viewer.get("/stac/../store.json").status_code == 404


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("url", "params", "status", "message"),
    [
        ("/maps/crop-types/2023/labels/tiles/14/8960/5803.png", {}, 404, "unknown product 'crop-types'"),
        ("/maps/land-cover/2019/labels/tiles/14/8960/5803.png", {}, 404, "unknown year '2019'"),
        ("/maps/land-cover/2023/ndvi/tiles/14/8960/5803.png", {}, 404, "unknown layer 'ndvi'"),
        ("/maps/land-cover/2023/labels/tiles/30/0/0.png", {}, 404, "zoom 30 is out of range"),
        ("/maps/land-cover/2023/labels/tiles/3/8/1.png", {}, 404, "tile 3/8/1 does not exist"),
        ("/maps/land-cover/2023/labels/tiles/14/8960/5803.jpg", {}, 404, "unknown tile format 'jpg'"),
        ("/maps/land-cover/2023/labels/tiles/14/8960/5803.png", {"tile_size": 300}, 400, "tile_size 300"),
        ("/maps/land-cover/2023/labels/tilejson.json", {"tile_size": "big"}, 400, "tile_size"),
        ("/maps/land-cover/2023/point", {"lon": 200, "lat": 46}, 400, "lon"),
        ("/maps/land-cover/2023/point", {"lon": 10.0, "lat": 40.0}, 404, "outside every tile"),
        ("/imagery/2031/true-colour/tiles/14/8960/5803.png", {}, 404, "unknown imagery period '2031'"),
        ("/imagery/2023/infrared/tiles/14/8960/5803.png", {}, 404, "unknown imagery composite 'infrared'"),
        ("/imagery/chips", {"bbox": "1,2,3"}, 400, "bbox must be four numbers"),
        ("/imagery/chips", {"bbox": "18.01,46.0,18.0,46.01"}, 400, "west < east"),
        ("/imagery/chips", {"bbox": "a,b,c,d"}, 400, "bbox must be four numbers"),
        ("/imagery/chips", {"bbox": "17.0,45.0,19.0,47.0"}, 400, "at most 1024 px a side"),
        ("/imagery/chips", {"bbox": "17.99,46.004,17.991,46.005", "years": "1999"}, 404, "years [1999]"),
        ("/imagery/timeseries", {"lon": 17.99, "lat": 46.004, "band": "B99"}, 400, "unknown band or index 'B99'"),
    ],
)
def test_bad_input_gets_a_clear_answer(viewer, url, params, status, message):
    answer = viewer.get(url, params=params)
    assert answer.status_code == status, answer.text
    assert message in answer.json()["detail"]


def test_every_route_needs_a_login(server, viewer):
    x, y, z = border_tile(14)
    anonymous = Client(server.url)
    for url in ("/maps", f"/maps/land-cover/2023/labels/tiles/{z}/{x}/{y}.png", "/stac", "/imagery/chips?bbox=1,2,3,4"):
        answer = anonymous.get(url)
        assert answer.status_code == 401, url
        assert "not logged in" in answer.json()["detail"]
    anonymous.close()
