"""Charts (tasks/plots.py) and the colour helper (lcms/legend.py): what is drawn is what was given."""

from __future__ import annotations

import base64
import io
import re
from types import SimpleNamespace

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_hex
from PIL import Image

from lcms.legend import LULC_LEGEND, LegendClass, hex_to_rgb, hex_to_rgba, legend_colormap, lighten, rgb_to_hex
from tasks import plots
from tasks.report.html import class_areas_figure, render_html, transitions_figure
from tasks.training.metrics import feature_importance_figure

NAMES = ["cultivated land", "forest", "water"]


def cell_texts(fig) -> dict[tuple[int, int], str]:
    """(row, column) → text of the annotations of a heat map's axes."""
    return {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in fig.axes[0].texts}


def bar_widths(fig) -> list[list[float]]:
    return [[p.get_width() for p in container] for container in fig.axes[0].containers]


def decoded(png: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(png))
    image.load()
    return image


def assert_not_blank(png: bytes) -> None:
    image = decoded(png)
    assert image.format == "PNG" and min(image.size) >= 200
    colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is None or len(colours) > 20
    assert np.asarray(image.convert("L")).std() > 5


# --------------------------------------------------------------------------- colours


def test_hex_codes_round_trip():
    for c in LULC_LEGEND:
        rgb = hex_to_rgb(c.color)
        assert rgb == tuple(int(c.color[i : i + 2], 16) for i in (1, 3, 5))
        assert rgb_to_hex(rgb) == c.color.lower()
        assert hex_to_rgba(c.color) == (*rgb, 255)
    assert hex_to_rgb("054907") == hex_to_rgb(" #054907 ") == (5, 73, 7)
    assert rgb_to_hex((5, 73, 7, 128)) == "#054907"
    for bad in ("#fff", "#05490", "#05490g", "rgb(1,2,3)", ""):
        with pytest.raises(ValueError, match="#rrggbb"):
            hex_to_rgb(bad)


def test_lighten_mixes_with_white():
    assert lighten("#054907", 0.0) == "#054907"
    assert lighten("#054907", 1.0) == "#ffffff"
    assert lighten("#000000", 0.5) == "#808080"
    # the bars' default: 55 % of the way to white, channel by channel
    assert lighten("#054907") == rgb_to_hex(round(v + (255 - v) * 0.55) for v in (5, 73, 7)) == "#8ead8f"
    with pytest.raises(ValueError):
        lighten("#054907", 1.5)


def test_legend_colormap_is_the_geotiff_colour_table():
    cmap = legend_colormap(LULC_LEGEND, nodata=0)
    assert cmap[0] == (255, 255, 255, 0)  # nodata: transparent
    assert cmap[2] == (5, 73, 7, 255) and cmap[5] == (6, 154, 243, 255) and cmap[10] == (0, 0, 0, 255)
    assert cmap == {
        c.code: (int(c.color[1:3], 16), int(c.color[3:5], 16), int(c.color[5:7], 16), 0 if c.code == 0 else 255)
        for c in LULC_LEGEND
    }
    # a nodata code outside the legend still gets a transparent entry
    partial = legend_colormap([LegendClass(1, "a", "#ff0000"), LegendClass(2, "b", "#00ff00")], nodata=255)
    assert partial == {1: (255, 0, 0, 255), 2: (0, 255, 0, 255), 255: (255, 255, 255, 0)}
    with pytest.raises(ValueError, match="#rrggbb"):
        legend_colormap([LegendClass(1, "a", "red")])


# --------------------------------------------------------------------------- heat maps


def test_confusion_matrix_cells_carry_the_values_and_class_names():
    m = np.array([[0.9, 0.1, 0.0], [0.05, 0.8, 0.15], [0.0, 0.25, 0.75]])
    fig = plots.confusion_matrix_figure(m, NAMES, "recall")
    assert isinstance(fig.canvas, FigureCanvasAgg)
    ax = fig.axes[0]
    assert cell_texts(fig) == {(i, j): f"{m[i, j]:.2f}" for i in range(3) for j in range(3)}
    assert [t.get_text() for t in ax.get_xticklabels()] == NAMES
    assert [t.get_text() for t in ax.get_yticklabels()] == NAMES
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("predicted", "reference")
    image = ax.images[0]
    np.testing.assert_array_equal(image.get_array(), m)
    assert (image.norm.vmin, image.norm.vmax) == (0.0, 1.0)
    # dark cells get white text, light ones black
    inks = {(round(t.get_position()[1]), round(t.get_position()[0])): to_hex(t.get_color()) for t in ax.texts}
    assert inks[(0, 0)] == "#ffffff" and inks[(0, 2)] == "#000000"
    assert_not_blank(plots.png_bytes(fig))


def test_heatmap_leaves_missing_cells_blank_and_checks_shapes():
    m = np.array([[1.5, np.nan], [np.nan, 4.0], [2.25, 0.0]])
    fig = plots.importance_figure(m, ["2023-01-05", "2023-02-05", "2023-03-05"], ["NDVI", "B04"])
    assert cell_texts(fig) == {(0, 0): "1.5", (1, 1): "4.0", (2, 0): "2.2", (2, 1): "0.0"}
    assert fig.axes[0].images[0].get_array().mask.tolist() == np.isnan(m).tolist()
    with pytest.raises(ValueError, match="column labels"):
        plots.heatmap_figure(m, ["a", "b", "c"], ["x"], "t", xlabel="x", ylabel="y")


def test_transition_heat_map_writes_the_diagonal_but_colours_only_changes():
    m = [[100.0, 2.0, 0.0], [1.0, 50.0, 7.5], [0.0, 0.0, 1234.5]]
    fig = transitions_figure([LegendClass(i + 1, n, "#000000") for i, n in enumerate(NAMES)], m, (2023, 2024))
    ax = fig.axes[0]
    assert cell_texts(fig) == {(i, j): f"{m[i][j]:,.1f}" for i in range(3) for j in range(3)}
    assert (ax.get_ylabel(), ax.get_xlabel()) == ("class in 2023", "class in 2024")
    image = ax.images[0]
    assert image.get_array().mask.tolist() == np.eye(3, dtype=bool).tolist()
    assert image.norm.vmax == 7.5  # the largest change, not the unchanged 1234.5
    assert image.norm(7.5) == pytest.approx(1.0) and image.norm(np.expm1(np.log1p(7.5) / 2)) == pytest.approx(0.5)


# --------------------------------------------------------------------------- bars and curves


def test_bar_lengths_colours_and_texts_are_the_inputs():
    train, test = [120, 45, 300], [30, 11, 80]
    colours = [c.color for c in LULC_LEGEND[1:4]]
    light = [lighten(c) for c in colours]
    fig = plots.barh_figure(NAMES, [("train", train, colours), ("test", test, light)], "Class frequency", "samples")
    assert bar_widths(fig) == [train, test]
    assert [[to_hex(p.get_facecolor()) for p in c] for c in fig.axes[0].containers] == [colours, light]
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == NAMES
    assert [t.get_text() for t in fig.axes[0].texts] == [f"train: {v}" for v in train] + [f"test: {v}" for v in test]
    # the first label is drawn on top
    tops = [p.get_y() for p in fig.axes[0].containers[0]]
    assert fig.axes[0].yaxis_inverted() and tops == sorted(tops)
    assert_not_blank(plots.png_bytes(fig))
    with pytest.raises(ValueError, match="2 values"):
        plots.barh_figure(NAMES, [("x", [1, 2], colours)], "t", "x")


def test_empty_bar_chart_says_no_data():
    fig = plots.barh_figure([], [], "Class areas per year", "ha")
    assert [t.get_text() for t in fig.axes[0].texts] == ["no data"]
    decoded(plots.png_bytes(fig))


def test_roc_curves_are_the_given_points():
    fpr, tpr = np.array([0.0, 0.1, 0.4, 1.0]), np.array([0.0, 0.7, 0.9, 1.0])
    fig = plots.roc_figure([("forest (AUC 0.900)", "#054907", fpr, tpr)], "ROC")
    lines = {line.get_label(): line for line in fig.axes[0].lines}
    np.testing.assert_array_equal(lines["forest (AUC 0.900)"].get_xdata(), fpr)
    np.testing.assert_array_equal(lines["forest (AUC 0.900)"].get_ydata(), tpr)
    assert to_hex(lines["forest (AUC 0.900)"].get_color()) == "#054907"
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["chance", "forest (AUC 0.900)"]
    assert_not_blank(plots.png_bytes(fig))
    empty = plots.roc_figure([], "ROC")
    assert "no class" in empty.axes[0].texts[0].get_text()


def test_importance_of_features_without_dates_is_sorted_bars_in_percent():
    gain = np.array([1.0, 6.0, 3.0])
    fig = feature_importance_figure(["a", "b", "c"], gain)
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["b", "c", "a"]
    assert bar_widths(fig) == [pytest.approx([60.0, 30.0, 10.0])]
    heat = feature_importance_figure(["NDVI@d1", "B04@d1", "NDVI@d2"], gain)
    assert cell_texts(heat) == {(0, 0): "10.0", (0, 1): "60.0", (1, 0): "30.0"}
    with pytest.raises(ValueError, match="one entry per feature"):
        feature_importance_figure(["a", "b", "c"], gain, ["d1"], ["a"])


# --------------------------------------------------------------------------- output


def test_png_file_bytes_and_data_uri_hold_the_same_image(tmp_path):
    fig = plots.confusion_matrix_figure(np.eye(2), ["a", "b"], "t")
    png = plots.png_bytes(fig)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    path = plots.save_png(fig, tmp_path / "cm.png")
    assert np.array_equal(np.asarray(decoded(path.read_bytes())), np.asarray(decoded(png)))
    uri = plots.png_data_uri(fig)
    assert uri.startswith("data:image/png;base64,")
    assert np.array_equal(np.asarray(decoded(base64.b64decode(uri.split(",", 1)[1]))), np.asarray(decoded(png)))


def test_report_embeds_its_charts():
    legend = list(LULC_LEGEND[:4])
    areas = {2023: {1: 500.0, 2: 300.5}, 2024: {1: 480.0, 2: 310.0, 3: 2.0}}
    fig = class_areas_figure(legend[1:], areas)
    assert bar_widths(fig) == [[500.0, 300.5, 0.0], [480.0, 310.0, 2.0]]
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["cultivated land", "forest", "grassland"]
    # later years lighter, in the class's colour
    faces = [[to_hex(p.get_facecolor()) for p in c] for c in fig.axes[0].containers]
    assert faces == [[c.color for c in legend[1:]], [lighten(c.color, 0.45) for c in legend[1:]]]
    assert fig.axes[0].texts[0].get_text() == "2023: 500.0 ha"

    transitions = np.diag([500.0, 300.0, 0.0, 0.0]).tolist()
    classes = [(c.code, c.name, c.color) for c in legend]
    land_cover = plots.class_map_figure(np.ones((4, 8), np.uint8), (0, 0, 80, 40), "EPSG:32633", classes, "2023")
    data = SimpleNamespace(
        model="m",
        years=[2023, 2024],
        legend=legend,
        class_areas_ha=areas,
        region_areas_ha={},
        change_years=(2023, 2024),
        transitions_ha=transitions,
        change_summary={"polygons": 0, "area_ha": 0.0, "transitions": []},
        largest_changes=[],
        accuracy=None,
        thumbnails=[{"id": "map-2023-33N", "title": "Land cover 2023", "figure": land_cover}],
    )
    html = render_html(data, ["report.json"])
    assert "<svg" not in html
    charts = re.findall(r'<img class="chart" id="([a-z-]+)" src="data:image/png;base64,([^"]+)"', html)
    assert [name for name, _ in charts] == ["areas-chart", "transitions-chart"]
    for _, payload in charts:
        assert_not_blank(base64.b64decode(payload))
    # the maps are embedded too: the page needs no file beside it
    maps = re.findall(r'<img id="map-2023-33N" src="data:image/png;base64,([^"]+)"', html)
    assert len(maps) == 1 and base64.b64decode(maps[0]) == plots.png_bytes(land_cover)
