"""The sample queues page (frontend/src/samples.html) in Debian's Chromium against a real `lcms serve`.

The store is the operator app's test world (tests/test_app_browser.py: maps, imagery composites and
change polygons of two years, users of every role). Two queues are loaded here with `load_design`, as
`lcms sample-design` and `lcms label-next` load theirs: a probability sample of a pair of years (three
points near the viewer's test place) and an active-learning "label next" queue of one year (two units,
each a square polygon). An operator labels with the keyboard and the mouse; the labels are read back
from the database with sqlite3. No request may leave 127.0.0.1 (the page is checked as the app's are).
"""

from __future__ import annotations

import sqlite3

import pytest
from browsers import chromium_or_skip
from test_app_browser import Session, World, place_lonlat, screenshot, wait_for_tiles
from test_change import YEARS

from lcms.serve.app import STATIC
from lcms.serve.db import open_database
from lcms.serve.samples import load_design

PAIR = "land-cover_change-test"
ACTIVE = "land-cover_active-test"
CLASSES = {"1": "cultivated land", "2": "forest", "3": "grassland", "5": "water"}


def unit_square(lon: float, lat: float, half: float = 3e-4) -> dict:
    ring = [[lon - half, lat - half], [lon + half, lat - half], [lon + half, lat + half], [lon - half, lat + half]]
    return {"type": "Polygon", "coordinates": [[*ring, ring[0]]]}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    if not (STATIC / "samples.html").is_file():
        pytest.fail(f"the app is not built into {STATIC}: run `make app`")
    made = World(tmp_path_factory.mktemp("samples-app"))
    lon, lat = place_lonlat()
    made.units = [unit_square(lon + 0.004 * i, lat) for i in (1, 2)]
    db = open_database(made.config, made.store)
    try:
        load_design(
            db,
            {"design_id": PAIR, "product": "land-cover", "key": "change-x", "kind": "change", "years": list(YEARS)}
            | {"reference_classes": CLASSES},
            [
                {
                    "sample_id": i,
                    "stratum": 1,
                    "map_class_from": 2,
                    "map_class_to": 1,
                    "lon": lon + 0.002 * i,
                    "lat": lat,
                }
                for i in (1, 2, 3)
            ],
        )
        load_design(
            db,
            {"design_id": ACTIVE, "product": "land-cover", "key": "active-x", "kind": "active", "years": [YEARS[1]]}
            | {"reference_classes": CLASSES},
            [
                {"sample_id": i, "stratum": 2, "map_class": 2, "lon": lon + 0.004 * i, "lat": lat, "unit": u}
                for i, u in zip((1, 2), made.units, strict=True)
            ],
            source="active",
        )
    finally:
        db.close()
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


@pytest.fixture
def open_session(browser, world):
    sessions = []

    def start(username: str) -> Session:
        sessions.append(Session(browser, world, username))
        return sessions[-1]

    yield start
    for session in sessions:
        session.close()


def labels(world, design_id: str) -> list[tuple]:
    with sqlite3.connect(world.database) as conn:
        return conn.execute(
            "SELECT sample_id, reviewer, reference_class, reference_from, reference_to, comment "
            "FROM lcms_sample_labels WHERE design_id = ? ORDER BY id",
            (design_id,),
        ).fetchall()


def open_point(page, sample_id: int) -> None:
    page.wait_for_selector(f"#labelling[data-sample-id='{sample_id}']")


def layer_ids(page, i: int = 0) -> list[str]:
    return page.evaluate(f"window.lcmsSampleMaps[{i}].getStyle().layers.map((l) => l.id)")


def test_an_operator_labels_a_pair_sample_with_the_keyboard_and_a_click(world, open_session):
    session = open_session("olga")
    page = session.page
    # The login lands on the map viewer, whose label tiles may still answer late: leave it first, then count only
    # the requests made from here on (the sample page's).
    page.goto("about:blank")
    requested: list[str] = []
    page.on("request", lambda r: requested.append(r.url))
    session.goto(f"/samples.html#{PAIR}")
    open_point(page, 1)
    assert page.locator("#nav a.active").inner_text() == "Sample queues"
    # Both years side by side, each its true-colour composite, and never a map layer (a probability sample).
    assert page.locator(".sample-map").count() == 2
    for year in YEARS:
        wait_for_tiles(session, f"/imagery/{year}/true-colour/tiles/")
    page.wait_for_function("window.lcmsSampleMaps.every((m) => m.getLayer('imagery'))")
    for i in (0, 1):
        assert "imagery" in layer_ids(page, i) and "model-map" not in layer_ids(page, i)
    assert any("/imagery/" in u and "/tiles/" in u for u in requested)  # the listener sees the maps' tiles
    assert not [u for u in requested if "/maps/" in u and "/tiles/" in u]
    assert page.locator("#predicted-toggle").is_hidden()
    marker = page.evaluate("window.lcmsSampleMaps[0].getSource('point').getData()")
    lon, lat = place_lonlat()
    assert marker["geometry"]["coordinates"] == pytest.approx([lon + 0.002, lat])
    centre = page.evaluate("window.lcmsSampleMaps[1].getCenter().toArray()")
    assert centre == pytest.approx([lon + 0.002, lat], abs=1e-6)  # the second map shows the same place

    page.keyboard.press("s")  # skip point 1: it comes back after the last one
    open_point(page, 2)
    page.keyboard.press("2")  # 2023: forest (the second class)
    page.keyboard.press("1")  # 2024: cultivated land
    assert page.locator(".class-picker[data-slot='0']").get_attribute("data-picked") == "2"
    page.locator("#sample-maps").click()  # a click on the map must not take the keys away
    page.wait_for_selector("#labelling .sample-map[data-idle='true']")
    screenshot(page, "sample-queue.png", docs=True)
    page.keyboard.press("Enter")
    open_point(page, 3)
    page.keyboard.press("4")  # water, both years
    page.keyboard.press("4")
    page.fill("#comment", "flooded both years")
    page.keyboard.press("Enter")  # Enter in the comment box saves too
    open_point(page, 1)  # the skipped one, after the last
    page.locator(".class-picker[data-slot='0'] .class-button[data-code='3']").click()
    page.locator(".class-picker[data-slot='1'] .class-button[data-code='3']").click()
    page.locator("#confirm").click()
    page.wait_for_selector("#done:not([hidden])")
    assert page.locator("#progress-text").get_attribute("data-labelled") == "3"
    assert labels(world, PAIR) == [
        (2, "olga", None, 2, 1, ""),
        (3, "olga", None, 5, 5, "flooded both years"),
        (1, "olga", None, 3, 3, ""),
    ]
    listed = page.locator(f"#designs li[data-design-id='{PAIR}'] .progress-count")
    page.wait_for_function(
        f"document.querySelector(\"#designs li[data-design-id='{PAIR}'] .progress-count\").dataset.labelled === '3'"
    )
    assert listed.get_attribute("data-total") == "3"


def test_an_active_queue_outlines_the_unit_and_may_show_the_model(world, open_session):
    session = open_session("oscar")
    page = session.page
    session.goto(f"/samples.html#{ACTIVE}")
    open_point(page, 1)
    assert page.locator(".sample-map").count() == 1
    page.wait_for_function("window.lcmsSampleMaps[0].getSource('unit')")
    unit = page.evaluate("window.lcmsSampleMaps[0].getSource('unit').getData()")
    assert unit["geometry"] == world.units[0] and unit["properties"]["sample_id"] == 1
    bounds = page.evaluate("window.lcmsSampleMaps[0].getBounds().toArray()")
    (w, s), (e, n) = bounds
    ring = world.units[0]["coordinates"][0]
    assert w < min(x for x, _ in ring) and e > max(x for x, _ in ring)  # the map shows the whole unit
    assert s < min(y for _, y in ring) and n > max(y for _, y in ring)
    assert "model-map" not in layer_ids(page)
    page.check("#show-predicted")  # a "label next" queue may show the model's class, on request
    assert page.locator("#predicted").inner_text() == "model: forest"
    assert "model-map" in layer_ids(page)
    page.locator("body").press("3")  # grassland
    page.keyboard.press("Enter")
    open_point(page, 2)
    unit = page.evaluate("window.lcmsSampleMaps[0].getSource('unit').getData()")
    assert unit["geometry"] == world.units[1]
    assert labels(world, ACTIVE) == [(1, "oscar", 3, None, None, "")]
    screenshot(page, "sample-queue-active.png")


def test_a_viewer_sees_the_queue_read_only(world, open_session):
    session = open_session("vera")
    page = session.page
    before = labels(world, ACTIVE)
    session.goto(f"/samples.html#{ACTIVE}")
    page.wait_for_selector("#labelling[data-sample-id]")
    buttons = page.locator(".class-button")
    assert buttons.count() == len(CLASSES)
    assert all(buttons.nth(i).is_disabled() for i in range(buttons.count()))
    assert page.locator("#confirm").is_disabled() and page.locator("#comment").is_disabled()
    assert page.locator("#read-only").is_visible()
    page.keyboard.press("1")
    page.keyboard.press("Enter")
    page.wait_for_timeout(300)
    # The service refuses anyway, with the page's own session and CSRF token.
    status = page.evaluate(
        """async ([design, csrf]) => (await fetch(`/samples/${design}/points/2/labels`, {method: "POST",
            headers: {"Content-Type": "application/json", "X-CSRF-Token": csrf},
            body: JSON.stringify({reference_class: 1})})).status""",
        [ACTIVE, session.csrf()],
    )
    assert status == 403
    assert labels(world, ACTIVE) == before
