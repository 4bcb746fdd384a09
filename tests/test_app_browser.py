"""The operator app (frontend/, built into lcms/serve/static/) in a real browser against a real `lcms serve`.

The store: two tiles with planted land-cover changes (tests/serve_support.py: the change stage's own
functions write the maps and the change layer), download bands made here from the same maps (each
class its own reflectance, a cloud on two dates), and the export's own code writing the COGs, the
imagery composites and the STAC catalogue. `lcms serve CONFIG` runs on 127.0.0.1; Playwright drives
Debian's Chromium (never a downloaded browser).

Every page runs with no network: a route aborts any request that does not go to 127.0.0.1, and each
test checks that none was even attempted (every script, style and tile comes from the app).
What the pages show is compared with the store, read here without the service: the COGs with
rasterio, the arrays with TileStore, the decisions with sqlite3.

Screenshots of each page go to $LCMS_TEST_ARTIFACTS (default /tmp/lcms-test-artifacts); those of the
viewer and the Validation Tool also to docs/screenshots/ for the README.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import os
import shutil
import sqlite3
import time
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
import rasterio
import shapely
from browsers import chromium_or_skip
from PIL import Image
from pyproj import Transformer
from serve_support import COLLECTION, PASSWORD, Client, Server, config_data, layer_frame, run_change_stage, write_config
from test_change import YEARS, noisy_maps

from lcms.config import parse_config
from lcms.legend import LULC_LEGEND, hex_to_rgb
from lcms.serve.app import STATIC
from lcms.store import TileStore
from tasks.export.imagery import export_imagery_year
from tasks.export.maps import export_year, map_groups
from tasks.export.stac import write_catalogue

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("LCMS_TEST_ARTIFACTS", "/tmp/lcms-test-artifacts"))
SCREENSHOTS = REPO / "docs" / "screenshots"
USERS = {"olga": "operator", "oscar": "operator", "vera": "viewer", "ada": "admin"}
BANDS = ["B02", "B03", "B04", "B08", "B11", "B12"]
# Digital numbers (reflectance × 10 000) of each class in each band: what the composites show.
REFLECTANCE = {
    1: [600, 900, 1000, 2800, 2200, 1500],  # cultivated land
    2: [250, 450, 250, 3200, 1400, 700],  # forest
    3: [400, 750, 500, 3000, 1900, 1100],  # grassland
    5: [700, 650, 450, 150, 80, 50],  # water
}
MONTHS = (1, 3, 4, 5, 6, 7, 9, 11)
CLOUDY_DATES = (2, 6)
# The place the viewer opens at and clicks: a pixel centre (x, y in UTM 33N) in the first tile's core, under
# the cloud of the cloudy dates (which the time series must leave out).
PLACE_UTM = (461_265.0, 5_091_255.0)
VIEW_ZOOM = 15.5
LEGEND_RGB = [hex_to_rgb(c.color) for c in LULC_LEGEND]
TIMEOUT = 30_000  # ms
BACKGROUND = (0xE4, 0xE7, 0xEB)  # the maps' background (frontend/src/js/layers.js)


# ----------------------------------------------------------------------------------------------- the world


def write_downloads(store: TileStore, grid) -> None:
    """Bands of 8 dates a year from each year's map (class reflectance, a seasonal NIR, noise), clouds on 2 dates."""
    for tile in grid:
        rows, cols = np.indices(tile.grid.shape)
        cloud_disc = (rows - tile.grid.shape[0] / 2) ** 2 + (cols - tile.grid.shape[1] / 2) ** 2 <= 60**2
        for year in YEARS:
            labels, _ = noisy_maps(tile, year, seed=year)
            rng = np.random.default_rng(year * 1000 + int(tile.tile_id[-4:]))
            table = np.array([REFLECTANCE.get(int(c), [500] * len(BANDS)) for c in range(256)], np.float32)
            base = table[labels]  # (y, x, band)
            times = np.array([f"{year}-{m:02d}-10T10:00:00" for m in MONTHS], dtype="datetime64[s]")
            season = 0.75 + 0.25 * np.sin(np.pi * (np.array(MONTHS) - 1) / 11)
            bands = np.repeat(base[None], len(MONTHS), axis=0)
            bands[..., BANDS.index("B08")] *= season[:, None, None]
            bands += rng.normal(0, 40, bands.shape)
            cloud = np.zeros((len(MONTHS), *tile.grid.shape), bool)
            for t in CLOUDY_DATES:
                cloud[t] = cloud_disc
            bands[cloud] = 4500
            data = np.ones_like(cloud)
            valid = data & ~cloud
            coords = {"time": times, "band": np.array(BANDS)}
            with store.writer("download", year, tile.tile_id, tile.grid, f"d{year}", coords) as writer:
                writer.write("bands", np.clip(bands, 1, 10_000).astype(np.uint16))
                writer.write("data_mask", data)
                writer.write("cloud_prob", np.where(cloud, 95, 3).astype(np.uint8))
                writer.write("cloud_mask", cloud)
                writer.write("shadow_mask", np.zeros_like(cloud))
                writer.write("valid_mask", valid)
                writer.write("valid_coverage", valid.mean(axis=(1, 2)).astype(np.float32))


class World:
    def __init__(self, folder: Path):
        data = config_data(str(folder / "store"), str(folder / "serve.sqlite"))
        data["export"] = {"imagery": {"periods": ["year"]}}
        self.config_path = write_config(folder / "config.yaml", data)
        self.config = config = parse_config(data)
        self.store = store = TileStore.from_config(config.store)
        run_change_stage(config, store)  # maps, features and the change layer
        self.grid = store.read_grid()
        write_downloads(store, self.grid)
        for year in YEARS:
            export_year(store, self.grid, year, config.export, config.product)
            export_imagery_year(store, self.grid, year, config.export, map_groups(self.grid, config.export))
        write_catalogue(store.maps_url(), store.storage_options)
        self.frame = layer_frame(store)
        self.database = Path(config.serve.database_path)

        from lcms.serve.db import open_database
        from lcms.serve.users import add_user

        db = open_database(config, store)
        with db.transaction() as conn:
            for username, role in USERS.items():
                add_user(conn, username, PASSWORD, role, "test")
        db.close()
        self.server = Server(self.config_path, folder / "serve.log")
        self.url = self.server.url

    def decisions(self) -> list[dict]:
        with sqlite3.connect(self.database) as conn:
            conn.row_factory = sqlite3.Row
            rows = conn.execute(
                "SELECT change_id, kind, reviewer, decision, class_from, class_to, geometry, created_at "
                "FROM lcms_decisions ORDER BY id"
            )
            return [dict(r) for r in rows]

    def pixel(self, lon: float, lat: float):
        """The tile whose core holds lon/lat and the pixel's row and column in it (from the grid, not the service)."""
        for tile in self.grid:
            x, y = Transformer.from_crs(4326, tile.grid.crs, always_xy=True).transform(lon, lat)
            minx, miny, maxx, maxy = tile.core_bounds
            if minx <= x < maxx and miny < y <= maxy:
                col, row = ~tile.grid.affine * (x, y)
                return tile, int(np.floor(row)), int(np.floor(col))
        raise AssertionError(f"{lon}, {lat} is on no tile")

    def map_value(self, year: int, lon: float, lat: float) -> int:
        """The class the exported COG of `year` holds at lon/lat."""
        (cog,) = Path(self.store.maps_url()).glob(f"*_{year}_*_labels.tif")
        with rasterio.open(cog) as src:
            x, y = Transformer.from_crs(4326, src.crs, always_xy=True).transform(lon, lat)
            return int(next(src.sample([(x, y)]))[0])


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    if not (STATIC / "index.html").is_file():
        pytest.fail(f"the app is not built into {STATIC}: run `make app` (make's set-up does it)")
    made = World(tmp_path_factory.mktemp("app"))
    yield made
    made.server.stop()


@pytest.fixture(scope="module")
def browser():
    chromium = chromium_or_skip()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        yield launched
        launched.close()


class NoNetwork:
    """A Playwright route: requests to 127.0.0.1 go through; any other is aborted and remembered."""

    def __init__(self):
        self.outside: list[str] = []

    def __call__(self, route):
        url = route.request.url
        if urlsplit(url).hostname == "127.0.0.1" or url.startswith(("data:", "blob:")):
            route.continue_()
        else:
            self.outside.append(url)
            route.abort()


class Session:
    """A browser context logged in as one user, with no network but 127.0.0.1, recording every response."""

    def __init__(self, browser, world: World, username: str):
        self.world = world
        self.context = browser.new_context(viewport={"width": 1400, "height": 900}, accept_downloads=True)
        self.guard = NoNetwork()
        self.context.route("**/*", self.guard)
        self.responses: list[tuple[str, int]] = []
        self.context.on("response", lambda r: self.responses.append((r.url, r.status)))
        self.errors: list[str] = []
        self.page = self.context.new_page()
        self.page.set_default_timeout(TIMEOUT)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.goto(f"{world.url}/login.html")
        self.page.fill("input[name=username]", username)
        self.page.fill("input[name=password]", PASSWORD)
        self.page.click("button[type=submit]")
        self.page.wait_for_selector("#who")

    def goto(self, path: str) -> None:
        self.page.goto(f"{self.world.url}{path}")

    def csrf(self) -> str:
        return next(c["value"] for c in self.context.cookies() if c["name"] == "lcms_csrf")

    def close(self) -> None:
        assert not self.guard.outside, f"requests outside 127.0.0.1 were attempted: {self.guard.outside}"
        assert not self.errors, f"script errors on the page: {self.errors}"
        self.context.close()


@pytest.fixture
def open_session(browser, world):
    sessions = []

    def start(username: str) -> Session:
        sessions.append(Session(browser, world, username))
        return sessions[-1]

    yield start
    for session in sessions:
        session.close()


def screenshot(page, name: str, docs: bool = False) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name))
    if docs:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(ARTIFACTS / name, SCREENSHOTS / name)


def legend_fraction(png: bytes, box: tuple[float, float] = (0.0, 1.0)) -> float:
    """The share of pixels of an image (between two fractions of its width) drawn in a legend colour."""
    image = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    width = image.shape[1]
    part = image[:, int(box[0] * width) : int(box[1] * width)].reshape(-1, 3)
    near = np.zeros(len(part), bool)
    for rgb in LEGEND_RGB:
        near |= np.abs(part - np.array(rgb)).max(axis=1) <= 4
    return float(near.mean())


def background_fraction(png: bytes, box: tuple[float, float] = (0.0, 1.0)) -> float:
    """The share of pixels (between two fractions of the width) showing the map's empty background."""
    image = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    width = image.shape[1]
    part = image[:, int(box[0] * width) : int(box[1] * width)].reshape(-1, 3)
    return float((np.abs(part - np.array(BACKGROUND)).max(axis=1) <= 3).mean())


def wait_for_tiles(session: Session, marker: str, timeout: float = 30) -> None:
    """Wait until a tile whose URL holds `marker` has been answered."""
    deadline = time.monotonic() + timeout
    while not any(marker in url for url, _ in session.responses):
        assert time.monotonic() < deadline, f"no tile {marker} was requested"
        session.page.wait_for_timeout(200)


def place_lonlat() -> tuple[float, float]:
    return Transformer.from_crs(32633, 4326, always_xy=True).transform(*PLACE_UTM)


def settled(take, accept, timeout: float = 20.0) -> bytes:
    """Screenshots taken until one is accepted, or the last one after `timeout` s: on a busy machine the
    map may still be drawing tiles when it says it is idle."""
    deadline = time.monotonic() + timeout
    while True:
        shot = take()
        if accept(shot) or time.monotonic() > deadline:
            return shot
        time.sleep(0.25)


def wait_idle(page, flag: str = "mapIdle") -> None:
    page.wait_for_function(f"document.body.dataset.{flag} === 'true'")


# ----------------------------------------------------------------------------------------------- the viewer


def test_viewer_draws_tiles_toggles_layers_and_swipes(world, open_session):
    session = open_session("olga")
    page = session.page
    lon, lat = place_lonlat()
    session.goto(f"/#{VIEW_ZOOM}/{lat:.6f}/{lon:.6f}")
    page.wait_for_selector("body[data-map-ready=true]")
    wait_idle(page)
    tiles = [(u, s) for u, s in session.responses if "/maps/land-cover/" in u and "/tiles/" in u]
    assert tiles and all(s == 200 for _, s in tiles), tiles
    assert {u.split("/")[5] for u, _ in tiles} == {"2024"}  # only the layer shown is fetched, and only tiles
    assert not [u for u, _ in session.responses if u.endswith(".tif")]
    mvt = [(u, s) for u, s in session.responses if u.endswith(".mvt")]
    assert mvt and all(s == 200 for _, s in mvt), mvt

    map_a = page.locator("#map-a")
    drawn = settled(map_a.screenshot, lambda shot: legend_fraction(shot) > 0.6)
    assert legend_fraction(drawn) > 0.6, "the 2024 map's classes should fill the canvas"
    screenshot(page, "viewer-map.png")

    # Toggling the map off leaves (nearly) no class colour; on again, it is back.
    toggle = page.locator("[data-layer='map-land-cover-2024-labels'] input[type=checkbox]")
    toggle.uncheck()
    page.wait_for_timeout(300)
    wait_idle(page)
    assert legend_fraction(settled(map_a.screenshot, lambda shot: legend_fraction(shot) < 0.15)) < 0.15
    toggle.check()
    wait_idle(page)
    assert legend_fraction(settled(map_a.screenshot, lambda shot: legend_fraction(shot) > 0.6)) > 0.6

    # Swipe: the 2024 map on the left of the line, the 2024 true-colour composite on the right.
    page.select_option("#compare-layer", "imagery-2024-true-colour")
    page.select_option("#compare-mode", "swipe")
    wait_for_tiles(session, "/imagery/2024/true-colour/tiles/")
    wait_idle(page, "mapBIdle")
    area = page.locator("#map-area")

    def swiped(map_part: tuple[float, float], imagery_part: tuple[float, float]):
        """Whether a screenshot shows the map in one part of its width and the composite in the other."""
        return lambda shot: (
            legend_fraction(shot, map_part) > 0.6
            and legend_fraction(shot, imagery_part) < 0.1
            and background_fraction(shot, imagery_part) < 0.1
        )

    shot = settled(area.screenshot, swiped((0.05, 0.45), (0.55, 0.95)))
    assert legend_fraction(shot, (0.05, 0.45)) > 0.6
    assert legend_fraction(shot, (0.55, 0.95)) < 0.1 and background_fraction(shot, (0.55, 0.95)) < 0.1
    imagery = [(u, s) for u, s in session.responses if "/imagery/2024/true-colour/tiles/" in u]
    assert all(s == 200 for _, s in imagery)
    box = page.locator("#swipe").bounding_box()
    bounds = area.bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.down()
    page.mouse.move(bounds["x"] + 0.25 * bounds["width"], box["y"] + box["height"] / 2, steps=5)
    page.mouse.up()
    page.wait_for_timeout(300)

    shot = settled(area.screenshot, swiped((0.02, 0.22), (0.3, 0.45)))
    assert legend_fraction(shot, (0.02, 0.22)) > 0.6
    assert legend_fraction(shot, (0.3, 0.45)) < 0.1, "the composite should now show where the map was"
    assert background_fraction(shot, (0.3, 0.45)) < 0.1
    screenshot(page, "viewer-swipe.png", docs=True)

    # Side by side: two maps, the right one follows the left.
    page.select_option("#compare-mode", "side")
    page.wait_for_timeout(500)
    wait_idle(page, "mapBIdle")
    a, b = page.locator("#map-a").bounding_box(), page.locator("#map-b").bounding_box()
    assert b["x"] >= a["x"] + a["width"] - 5 and abs(a["width"] - b["width"]) < 5
    assert legend_fraction(settled(map_a.screenshot, lambda shot: legend_fraction(shot) > 0.6)) > 0.6
    map_b = page.locator("#map-b")
    before = settled(map_b.screenshot, lambda shot: legend_fraction(shot) < 0.1 and background_fraction(shot) < 0.2)
    assert legend_fraction(before) < 0.1 and background_fraction(before) < 0.2
    page.mouse.move(a["x"] + a["width"] / 2, a["y"] + a["height"] / 2)
    page.mouse.down()
    page.mouse.move(a["x"] + a["width"] / 2 - 150, a["y"] + a["height"] / 2, steps=5)
    page.mouse.up()
    page.wait_for_timeout(500)
    wait_idle(page, "mapBIdle")
    assert page.locator("#map-b").screenshot() != before, "the right-hand map should move with the left"
    screenshot(page, "viewer-side-by-side.png")


def test_clicking_a_pixel_shows_its_classes_and_time_series_as_in_the_store(world, open_session):
    session = open_session("olga")
    page = session.page
    lon, lat = place_lonlat()
    session.goto(f"/#{VIEW_ZOOM}/{lat:.6f}/{lon:.6f}")
    page.wait_for_selector("body[data-map-ready=true]")
    wait_idle(page)
    page.locator("#map-a").click()  # the middle of the map: its centre, which the address follows
    # On a busy machine the map may have settled a little off the address it was opened at: the address
    # (#zoom/lat/lon, rewritten by the map as it moves) says where its centre, the clicked place, is now.
    _, centre_lat, centre_lon = (float(v) for v in page.evaluate("location.hash")[1:].split("/")[:3])
    page.wait_for_selector("tr.pixel-year >> nth=1")
    page.wait_for_selector("#pixel-chart circle.observation")

    place = page.locator("#pixel-info .place")
    shown_lon, shown_lat = float(place.get_attribute("data-lon")), float(place.get_attribute("data-lat"))
    # Within a pixel (10 m): the address rounds the centre to a few decimals.
    assert abs(shown_lon - centre_lon) < 1.5e-4 and abs(shown_lat - centre_lat) < 1.5e-4
    assert abs(shown_lon - lon) < 0.05 and abs(shown_lat - lat) < 0.05  # and near the place it was opened at
    tile, row, col = world.pixel(shown_lon, shown_lat)
    window = (slice(row, row + 1), slice(col, col + 1))
    rows = page.locator("tr.pixel-year")
    assert rows.count() == len(YEARS)
    for i, year in enumerate(YEARS):
        cells = rows.nth(i)
        expected_class = world.map_value(year, shown_lon, shown_lat)
        prediction = world.store.open_tile("prediction", year, tile.tile_id)
        assert int(cells.get_attribute("data-year")) == year
        assert int(cells.get_attribute("data-class")) == expected_class
        assert int(world.store.open_tile("postprocess", year, tile.tile_id).read("labels", window)[0, 0]) == (
            expected_class
        )
        assert int(cells.get_attribute("data-confidence")) == int(prediction.read("confidence", window)[0, 0])
        name = next(c.name for c in LULC_LEGEND if c.code == expected_class)
        assert name in cells.inner_text()

    # The chart's points are the valid observations' NDVI at the pixel, computed here from the bands.
    expected = {}
    for year in YEARS:
        download = world.store.open_tile("download", year, tile.tile_id)
        bands = download.read("bands", window)[:, 0, 0].astype(float)
        valid = download.read("valid_mask", window)[:, 0, 0]
        red, nir = bands[:, BANDS.index("B04")], bands[:, BANDS.index("B08")]
        for when, ok, r, n in zip(download.coord("time"), valid, red, nir, strict=True):
            if ok:
                expected[str(np.datetime_as_string(when, unit="s")) + "Z"] = (n - r) / (n + r)
    points = page.locator("#pixel-chart circle.observation")
    drawn = {
        points.nth(i).get_attribute("data-date"): float(points.nth(i).get_attribute("data-value"))
        for i in range(points.count())
    }
    assert len(expected) == len(YEARS) * (len(MONTHS) - len(CLOUDY_DATES)), "the place is under the clouds"
    assert drawn.keys() == expected.keys()
    for date, value in expected.items():
        assert drawn[date] == pytest.approx(value, abs=2e-4), date
    # The interpolated series (the features stage's NDVI) is the line: one vertex per stored date.
    n_feature_dates = sum(len(world.store.open_tile("features", y, tile.tile_id).coord("time")) for y in YEARS)
    path = page.locator("#pixel-chart path.interpolated").get_attribute("d")
    assert path.count("L") + 1 == n_feature_dates
    screenshot(page, "viewer.png", docs=True)


# ------------------------------------------------------------------------------------------ the Validation Tool


def current_change(page) -> str:
    return page.locator("#change").get_attribute("data-change-id")


def wait_for_next(page, previous: str) -> str:
    page.wait_for_function("id => document.querySelector('#change').dataset.changeId !== id", arg=previous)
    page.wait_for_function("() => document.querySelector('#save-state').textContent.startsWith('Saved')")
    return current_change(page)


def open_validation(session: Session) -> str:
    session.goto("/validate.html")
    session.page.wait_for_selector("#change[data-change-id][data-version]")
    return current_change(session.page)


def test_operator_confirms_rejects_and_corrects_with_the_keyboard(world, open_session):
    started = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    session = open_session("olga")
    page = session.page
    first = open_validation(session)
    by_score = world.frame.sort_values(["score", "change_id"], ascending=[False, True], na_position="last")
    assert first == by_score["change_id"].iloc[0], "the queue is sorted by score, highest first"
    assert page.locator("#progress-text").inner_text() == f"0 of {len(world.frame)} reviewed"
    page.wait_for_selector("#panels img")
    page.wait_for_selector("#strip figure")
    page.wait_for_selector("#series circle.observation")

    # Arrow keys step through the acquisitions.
    date = page.locator("#chip-date").get_attribute("data-date")
    page.keyboard.press("ArrowRight")
    assert page.locator("#chip-date").get_attribute("data-date") > date
    page.keyboard.press("ArrowLeft")
    assert page.locator("#chip-date").get_attribute("data-date") == date

    # The shortcuts are listed on the page, and in full with `?`.
    assert "C confirm" in page.locator(".shortcut-line").inner_text()
    page.keyboard.press("?")
    assert page.locator("#shortcuts").is_visible() and "Undo" in page.locator("#shortcuts").inner_text()
    page.keyboard.press("Escape")
    assert not page.locator("#shortcuts").is_visible()

    page.keyboard.press("c")
    second = wait_for_next(page, first)
    page.keyboard.press("r")
    third = wait_for_next(page, second)
    row = world.frame.set_index("change_id").loc[third]
    new_to = next(c.code for c in LULC_LEGEND if c.code not in (0, row["class_from"], row["class_to"]))
    page.keyboard.press("x")
    page.wait_for_selector("#correction:not([hidden])")
    page.select_option("#c-to", str(new_to))
    # Redraw the outline: four corners clicked on the map (zoomed to the change) around its middle.
    page.click("#c-draw")
    box = page.locator("#context-map").bounding_box()
    middle = (box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    for dx, dy in ((-40, -30), (40, -30), (40, 30), (-40, 30)):
        page.mouse.click(middle[0] + dx, middle[1] + dy)
    assert page.locator("#c-draw-state").inner_text() == "4 corners"
    page.focus("#c-to")
    page.keyboard.press("Enter")
    fourth = wait_for_next(page, third)
    assert len({first, second, third, fourth}) == 4
    page.wait_for_function("() => document.querySelector('#progress-text').dataset.reviewed === '3'")
    assert page.locator("#progress-text").inner_text() == f"3 of {len(world.frame)} reviewed"

    decisions = world.decisions()
    assert [(d["change_id"], d["kind"], d["reviewer"], d["decision"]) for d in decisions] == [
        (first, "review", "olga", "confirmed"),
        (second, "review", "olga", "rejected"),
        (third, "review", "olga", "corrected"),
    ]
    assert (decisions[2]["class_from"], decisions[2]["class_to"]) == (row["class_from"], new_to)
    outline = shapely.from_geojson(decisions[2]["geometry"])
    assert outline.geom_type == "Polygon" and len(outline.exterior.coords) == 5
    assert outline.intersects(world.frame.set_index("change_id").loc[third].geometry.envelope.buffer(0.001))
    assert [d["geometry"] for d in decisions[:2]] == [None, None]
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    assert all(started <= d["created_at"][:19] <= now for d in decisions)

    # The export from the page holds the confirmed and the corrected change, with the corrected class.
    with page.expect_download() as download:
        page.click("#export-csv")
    table = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text())))
    assert {r["change_id"]: r["status"] for r in table} == {first: "confirmed", third: "corrected"}
    assert int(next(r for r in table if r["change_id"] == third)["class_to"]) == new_to
    screenshot(page, "validation-tool.png", docs=True)

    # A decision the service never got is listed as unsaved, and saved by Retry.
    page.route("**/reviews", lambda route: route.abort() if route.request.method == "POST" else route.continue_())
    page.keyboard.press("u")
    page.wait_for_selector(f"#unsaved li[data-change-id='{fourth}']")
    assert len(world.decisions()) == 3 and current_change(page) == fourth
    screenshot(page, "validation-unsaved.png")
    page.unroute("**/reviews")
    page.click(f"#unsaved li[data-change-id='{fourth}'] button.retry")
    page.wait_for_selector("#unsaved", state="hidden")
    assert [(d["change_id"], d["decision"]) for d in world.decisions()[3:]] == [(fourth, "unsure")]

    # Undo puts back what the change had from this reviewer: here nothing, so "not sure" (the vote no longer counts).
    page.keyboard.press("p")
    page.wait_for_function("id => document.querySelector('#change').dataset.changeId === id", arg=third)
    page.keyboard.press("z")
    page.wait_for_function("() => document.querySelector('#banner').textContent.includes('Undone')")
    assert [(d["change_id"], d["decision"]) for d in world.decisions()[4:]] == [(third, "unsure")]


def test_a_viewer_sees_the_queue_read_only_and_the_api_refuses(world, open_session):
    session = open_session("vera")
    page = session.page
    change = open_validation(session)
    assert page.locator("button[data-decision]").count() == 0 and page.locator("#undo").count() == 0
    before = world.decisions()
    page.keyboard.press("c")
    page.wait_for_function("() => document.querySelector('#banner').textContent.includes('Viewers cannot decide')")
    answer = page.request.post(
        f"{world.url}/changes/collections/{COLLECTION}/items/{change}/reviews",
        data={"decision": "confirmed", "version": 0},
        headers={"X-CSRF-Token": session.csrf()},
    )
    assert answer.status == 403 and "operator" in answer.json()["detail"]
    assert world.decisions() == before
    screenshot(page, "validation-viewer.png")


def test_a_second_operator_disagrees_and_an_admin_resolves_the_conflict(world, open_session):
    target = world.frame.sort_values("change_id")["change_id"].iloc[0]
    first = open_session("olga")
    page = first.page
    open_validation(first)
    page.click(f"#queue li[data-change-id='{target}']")
    page.wait_for_function("id => document.querySelector('#change').dataset.changeId === id", arg=target)
    page.wait_for_selector("#change[data-version]")
    version = int(page.locator("#change").get_attribute("data-version"))

    # Meanwhile another operator decides (through the API): the page's decision is stale, nothing is written.
    oscar = Client(world.url, "oscar")  # logs in on creation (so no `with`: httpx would open it twice)
    answer = oscar.post(
        f"/changes/collections/{COLLECTION}/items/{target}/reviews",
        json={"decision": "rejected", "version": version, "comment": "no change on the ground"},
    )
    oscar.close()
    assert answer.status_code == 201, answer.text
    count = len(world.decisions())
    page.keyboard.press("c")
    page.wait_for_function("() => document.querySelector('#banner').textContent.includes('stale version')")
    assert len(world.decisions()) == count
    assert int(page.locator("#change").get_attribute("data-version")) == version + 1
    # Deciding again on the current version is stored, and disagrees with oscar: a conflict.
    page.keyboard.press("c")
    page.wait_for_function("id => document.querySelector('#change').dataset.changeId !== id", arg=target)
    page.keyboard.press("p")
    page.wait_for_selector("#agreement [data-agreement='conflict']")
    history = page.locator("#history tbody tr")
    assert {history.nth(i).get_attribute("data-reviewer") for i in range(history.count())} >= {"olga", "oscar"}
    screenshot(page, "validation-conflict.png")

    admin = open_session("ada")
    admin_page = admin.page
    open_validation(admin)
    admin_page.wait_for_selector(f"#conflict-list li[data-change-id='{target}']")
    admin_page.click(f"#conflict-list li[data-change-id='{target}'] a")
    admin_page.wait_for_selector("#resolve:not([hidden])")
    screenshot(admin_page, "validation-admin-conflicts.png")
    admin_page.select_option("#r-decision", "confirmed")
    admin_page.click("#resolve button[type=submit]")
    admin_page.wait_for_function("() => document.querySelector('#save-state').textContent.startsWith('Saved')")
    last = world.decisions()[-1]
    assert (last["change_id"], last["kind"], last["reviewer"], last["decision"]) == (
        target,
        "resolution",
        "ada",
        "confirmed",
    )
    with sqlite3.connect(world.database) as conn:
        status = conn.execute(
            "SELECT status, agreement FROM lcms_change_reviews WHERE change_id = ?", (target,)
        ).fetchone()
    assert status == ("confirmed", "resolved")


# ----------------------------------------------------------------------------------- users, login and failures


def test_admin_manages_users_on_the_users_page(world, open_session):
    session = open_session("ada")
    page = session.page
    session.goto("/users.html")
    page.wait_for_selector("tr[data-username='vera']")
    page.fill("#add-user input[name=username]", "newbie")
    page.fill("#add-user input[name=password]", "a long enough password")
    page.select_option("#add-user select[name=role]", "operator")
    page.click("#add-user button[type=submit]")
    page.wait_for_selector("tr[data-username='newbie'][data-role='operator']")
    page.select_option("tr[data-username='newbie'] select", "viewer")
    page.wait_for_selector("tr[data-username='newbie'][data-role='viewer']")
    with sqlite3.connect(world.database) as conn:
        assert conn.execute("SELECT role FROM lcms_users WHERE username = 'newbie'").fetchone() == ("viewer",)
    screenshot(page, "users.png")

    operator = open_session("olga")
    operator.goto("/users.html")
    operator.page.wait_for_selector("text=Only admins manage users")
    assert operator.page.locator("a[href='/users.html']").count() == 0


def test_login_errors_and_an_ended_session_are_said_clearly(world, open_session, browser):
    context = browser.new_context(viewport={"width": 1000, "height": 700})
    guard = NoNetwork()
    context.route("**/*", guard)
    page = context.new_page()
    page.goto(f"{world.url}/validate.html")  # not logged in: sent to the login page
    page.wait_for_url("**/login.html?next=*")
    page.fill("input[name=username]", "olga")
    page.fill("input[name=password]", "not the password")
    page.click("button[type=submit]")
    page.wait_for_selector("#banner:has-text('Wrong username or password')")
    screenshot(page, "login.png")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url("**/validate.html")  # back where the user wanted to go
    context.close()
    assert not guard.outside

    session = open_session("olga")
    page = session.page
    open_validation(session)
    # The session ends behind the page's back (here: a logout from another tab).
    answer = page.request.post(f"{world.url}/auth/logout", headers={"X-CSRF-Token": session.csrf()})
    assert answer.status == 200
    page.keyboard.press("n")
    page.wait_for_selector("#banner:has-text('Your session has ended')")
    assert page.locator("#banner a[href^='/login.html']").count() == 1
    screenshot(page, "validation-session-ended.png")


def test_no_maps_and_no_changes_are_explained(world, open_session):
    session = open_session("olga")
    page = session.page

    def only_2023(route):
        layers = route.fetch().json()["layers"]
        route.fulfill(json={"layers": [m for m in layers if m["year"] == YEARS[0]]})

    # A year with change polygons but no exported map yet.
    page.route("**/maps", only_2023)
    session.goto("/")
    page.wait_for_selector(f"#banner:has-text('No map yet for {YEARS[1]}')")
    page.unroute("**/maps")
    page.route("**/maps", lambda route: route.fulfill(json={"layers": []}))
    page.route("**/changes/collections", lambda route: route.fulfill(json={"collections": [], "links": []}))
    session.goto("/")
    page.wait_for_selector("#banner:has-text('No maps have been exported yet')")
    session.goto("/validate.html")
    page.wait_for_selector("#empty:has-text('no change polygons yet')")
    assert page.locator("#progress-text").inner_text() == "No changes."
    screenshot(page, "validation-no-changes.png")
