"""The report is one self-contained HTML file: copied alone, it shows every map and chart.

The report is built from the planted world of tests/test_change.py (two tiles, two years, a
change stage), by the plain functions the flow wraps, so no Prefect server is needed. Then only
report.html is copied to another folder, and checked three ways: it names no file (images,
styles and scripts are inside it), every embedded image decodes to a real picture, and
Debian's Chromium, driven by Playwright, loads every <img> of the copy.
"""

from __future__ import annotations

import base64
import io
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from browsers import chromium_or_skip
from matplotlib.colors import to_hex
from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar
from PIL import Image
from test_change import YEARS, noisy_maps, run_config, write_year

from lcms.legend import LULC_LEGEND, hex_to_rgb
from lcms.selection import load_grid
from lcms.store import TileStore
from tasks import plots
from tasks.change.polygons import write_change_layer
from tasks.change.tile import change_tile
from tasks.report.build import build_report

MAP_IDS = ["map-2023-33N", "map-2024-33N", "change-2023-2024-33N"]  # two years and their change, one UTM zone
CHART_IDS = ["areas-chart", "transitions-chart"]


@pytest.fixture(scope="module")
def report_folder(tmp_path_factory) -> Path:
    """A report over two tiles and two years with changes, as the report stage writes it."""
    tmp = tmp_path_factory.mktemp("report")
    cfg = run_config(tmp)
    store = TileStore.from_config(cfg.store)
    grid = load_grid(cfg, store)
    tiles = list(grid)
    for tile in tiles:
        for year in YEARS:
            write_year(store, tile, year, *noisy_maps(tile, year, seed=year))
    records = [change_tile(store, tile, YEARS, cfg.change) for tile in tiles]
    write_change_layer(store, tiles, YEARS, cfg.change, records)
    folder = tmp / "built"
    build_report(store, tiles, list(YEARS), cfg.report, "land-cover", "postprocess", YEARS, folder)
    return folder


@pytest.fixture
def report_alone(report_folder, tmp_path) -> Path:
    """Only report.html, copied to a folder of its own (as when it is e-mailed)."""
    alone = tmp_path / "elsewhere"
    alone.mkdir()
    return Path(shutil.copy(report_folder / "report.html", alone))


class References(HTMLParser):
    """Every URL the page would fetch to show itself (src, srcset, poster, data; stylesheet and icon links),
    the images by id, and the links of <a> elements apart."""

    FETCHED = ("src", "srcset", "poster", "data", "background")

    def __init__(self):
        super().__init__()
        self.fetched: list[tuple[str, str]] = []  # (tag, url)
        self.images: dict[str, str] = {}  # img id → src
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.fetched += [(tag, attrs[a]) for a in self.FETCHED if attrs.get(a)]
        if tag == "link" and attrs.get("href"):
            self.fetched.append((tag, attrs["href"]))
        if tag == "a" and attrs.get("href"):
            self.links.append(attrs["href"])
        if tag == "img":
            self.images[attrs.get("id", "")] = attrs.get("src", "")
        if attrs.get("style"):
            self.fetched += [(tag, url) for url in re.findall(r"url\(\s*['\"]?([^'\")]+)", attrs["style"])]


def parse(html: str) -> References:
    refs = References()
    refs.feed(html)
    refs.fetched += [("style", url) for url in re.findall(r"url\(\s*['\"]?([^'\")]+)", html)]
    return refs


def colours(image: Image.Image) -> set[tuple[int, int, int]]:
    return {rgb for _, rgb in image.getcolors(maxcolors=image.width * image.height)}


def decode_png(uri: str) -> Image.Image:
    header, payload = uri.split(",", 1)
    assert header == "data:image/png;base64"
    image = Image.open(io.BytesIO(base64.b64decode(payload)))
    image.load()
    assert image.format == "PNG"
    return image.convert("RGB")


def test_the_report_file_alone_names_no_other_file_and_holds_every_image(report_folder, report_alone):
    html = report_alone.read_text()
    refs = parse(html)

    # Nothing to fetch but data: URIs; no external stylesheet or script.
    assert refs.fetched, "the page embeds its images as src attributes"
    assert [(tag, url[:40]) for tag, url in refs.fetched if not url.startswith("data:")] == []
    assert "<link" not in html and not re.search(r"<script[^>]*\ssrc=", html)
    # The only links are to the CSV and JSON files written beside the page (downloads, not needed to show it).
    beside = {p.name for p in report_folder.iterdir()} - {"report.html"}
    assert refs.links and set(refs.links) <= beside
    assert all(link.endswith((".csv", ".json")) for link in refs.links)
    assert not [p for p in report_folder.iterdir() if p.suffix == ".png"]  # no image files beside it either

    # Every image decodes to a picture: not blank, of a real size.
    assert list(refs.images) == MAP_IDS + CHART_IDS
    for name, uri in refs.images.items():
        image = decode_png(uri)
        assert min(image.size) >= 200, name
        assert np.asarray(image).reshape(-1, 3).std(axis=0).max() > 20, f"{name} is blank"
        assert len(colours(image)) > 20, name

    # The maps are drawn in the legend's colours: forest and water on the land cover maps, red changes.
    for name in MAP_IDS[:2]:
        drawn = colours(decode_png(refs.images[name]))
        assert {hex_to_rgb("#054907"), hex_to_rgb("#069af3"), hex_to_rgb("#ffff00")} <= drawn, name
    assert {hex_to_rgb("#d7191c"), hex_to_rgb("#e6e6e6")} <= colours(decode_png(refs.images[MAP_IDS[2]]))


def test_the_copied_report_shows_every_image_in_chromium(report_alone):
    chromium = chromium_or_skip()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            requested, failed = [], []
            page.on("request", lambda r: requested.append(r.url))
            page.on("requestfailed", lambda r: failed.append(r.url))
            page.goto(report_alone.as_uri(), wait_until="load")
            images = page.evaluate(
                "() => [...document.images].map(i => ({id: i.id, complete: i.complete, width: i.naturalWidth}))"
            )
            loaded = page.evaluate("() => document.body.dataset")
        finally:
            browser.close()
    assert [i["id"] for i in images] == MAP_IDS + CHART_IDS
    assert [i["id"] for i in images if not (i["complete"] and i["width"] > 0)] == []
    assert loaded["imagesLoaded"] == loaded["images"] == str(len(MAP_IDS))
    assert loaded["chartsLoaded"] == loaded["charts"] == str(len(CHART_IDS))
    assert failed == []
    assert [url for url in requested if not url.startswith("data:")] == [report_alone.as_uri()]


# --------------------------------------------------------------------------- the map figure


CLASSES = [(c.code, c.name, c.color) for c in LULC_LEGEND if c.code]


def test_a_map_has_its_coordinates_a_scale_bar_and_a_legend_of_its_classes():
    codes = np.zeros((50, 100), np.uint8)  # 5 km × 2.5 km at 50 m, no data on the left fifth
    codes[:, 20:60], codes[:, 60:90], codes[:, 90:] = 2, 5, 1  # forest, water, cultivated land
    bounds = (460_000.0, 5_090_000.0, 465_000.0, 5_092_500.0)
    fig = plots.class_map_figure(codes, bounds, "EPSG:32633", CLASSES, "Land cover 2023 (UTM 33N)", longest_px=400)
    ax = fig.axes[0]

    # Placed by its coordinates, in the legend's colours, no data white.
    image = ax.images[0]
    assert image.get_extent() == [460_000.0, 465_000.0, 5_090_000.0, 5_092_500.0]
    rgb = np.asarray(image.get_array())
    assert tuple(rgb[0, 0]) == (255, 255, 255)
    assert tuple(rgb[10, 30]) == hex_to_rgb("#054907") and tuple(rgb[10, 95]) == hex_to_rgb("#ffff00")
    # Axes in metres with the CRS named; ticks inside the map.
    assert ax.get_xlabel() == "easting (m), WGS 84 / UTM zone 33N (EPSG:32633)"
    assert ax.get_ylabel() == "northing (m)"
    ticks = [t for t in ax.get_xticks() if bounds[0] <= t <= bounds[2]]
    assert len(ticks) >= 2 and ax.xaxis.get_major_formatter()(ticks[0]) == f"{ticks[0]:,.0f}"
    # A 1 km scale bar (a quarter of 5 km, rounded down to 1, 2 or 5 × 10^k).
    bars = [a for a in ax.artists if isinstance(a, AnchoredSizeBar)]
    assert len(bars) == 1
    assert bars[0].size_bar.get_children()[0].get_width() == 1000.0
    assert bars[0].txt_label.get_text() == "1 km"
    # The legend: the classes on this map, in the legend's order and colours, and the white of no data.
    legend = ax.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["cultivated land", "forest", "water", "no data"]
    assert [to_hex(p.get_facecolor()) for p in legend.get_patches()] == ["#ffff00", "#054907", "#069af3", "#ffffff"]

    png = Image.open(io.BytesIO(plots.png_bytes(fig)))
    assert png.size[0] >= 400 and png.size[1] >= 200  # the map alone is 400 px wide, plus axes and legend


def test_a_map_in_degrees_has_lon_lat_axes_and_an_empty_map_says_so():
    fig = plots.class_map_figure(np.zeros((20, 20), np.uint8), (14.0, 46.0, 14.1, 46.1), "EPSG:4326", CLASSES, "t")
    ax = fig.axes[0]
    assert ax.get_xlabel().startswith("longitude (°), WGS 84") and ax.get_ylabel() == "latitude (°)"
    assert ax.get_legend() is None and [t.get_text() for t in ax.texts] == ["no data"]
    assert not [a for a in ax.artists if isinstance(a, AnchoredSizeBar)]  # degrees are no fixed length
    with pytest.raises(ValueError, match="integer codes"):
        plots.class_map_figure(np.zeros((2, 2)), (0, 0, 1, 1), "EPSG:32633", CLASSES, "t")


@pytest.mark.parametrize(
    ("span", "length"), [(5_000, 1_000), (2_500, 500), (100_000, 20_000), (3_999, 500), (400, 100), (7, 1)]
)
def test_scale_bars_have_round_lengths_of_at_most_a_quarter_of_the_map(span, length):
    assert plots.scale_bar_length(span) == length
