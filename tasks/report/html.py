"""The report as one self-contained HTML page: map thumbnails and charts embedded in it.

The maps (each year's land cover and the change status, per UTM zone, with coordinates, a
scale bar and a legend) and the charts (class areas per year, the transition heat map) are
drawn by tasks/plots.py, like the training stage's plots, and embedded as PNG data URIs. No
JavaScript libraries, no network, no file beside it needed: the page shows every image when
opened from a folder, a bucket, a Prefect artifact link or an e-mail attachment alike.
`screenshot` renders it in headless Chromium (tests and `lcms report --screenshot` use it to
check that the page really renders).
"""

from __future__ import annotations

import math
import shutil
import subprocess
import tempfile
from pathlib import Path

import jinja2
import numpy as np
from matplotlib.figure import Figure

from lcms.grid import Tile
from lcms.legend import LegendClass, lighten
from lcms.stages import change_key
from lcms.store import TileStore
from tasks import plots

# --------------------------------------------------------------------------- thumbnails


def zone_mosaic(tiles: list[Tile], read, longest_px: int) -> np.ndarray:
    """A decimated mosaic of the tiles' cores (one UTM zone), with nearest sampling, at most `longest_px` wide.

    `read(tile)` returns the tile's core array; cores of one zone sit on one pixel lattice.
    """
    res = tiles[0].grid.resolution
    left = min(t.core_bounds[0] for t in tiles)
    top = max(t.core_bounds[3] for t in tiles)
    width = round((max(t.core_bounds[2] for t in tiles) - left) / res)
    height = round((top - min(t.core_bounds[1] for t in tiles)) / res)
    step = max(1, math.ceil(max(width, height) / longest_px))
    out = np.zeros((math.ceil(height / step), math.ceil(width / step)), dtype=np.uint8)
    for tile in tiles:
        row0 = round((top - tile.core_bounds[3]) / res)
        col0 = round((tile.core_bounds[0] - left) / res)
        # The first sampled pixel of this tile on the mosaic's lattice (every `step`-th pixel).
        r_first, c_first = (-row0) % step, (-col0) % step
        values = read(tile)[r_first::step, c_first::step]
        r, c = (row0 + r_first) // step, (col0 + c_first) // step
        h, w = min(values.shape[0], out.shape[0] - r), min(values.shape[1], out.shape[1] - c)
        out[r : r + h, c : c + w] = values[:h, :w]
    return out


CHANGE_CLASSES = [  # status codes of tasks.change.detect, their names and colours on the change map
    (1, "unchanged", "#e6e6e6"),
    (2, "change", "#d7191c"),
    (3, "low confidence", "#fdae61"),
    (4, "removed", "#a6a6a6"),
]


def mosaic_bounds(tiles: list[Tile]) -> tuple[float, float, float, float]:
    """(left, bottom, right, top) of the tiles' cores: the extent `zone_mosaic` covers."""
    return (
        min(t.core_bounds[0] for t in tiles),
        min(t.core_bounds[1] for t in tiles),
        max(t.core_bounds[2] for t in tiles),
        max(t.core_bounds[3] for t in tiles),
    )


def map_figures(
    store: TileStore,
    tiles: list[Tile],
    years: list[int],
    source: str,
    legend: list[LegendClass],
    change_years: tuple[int, int] | None,
    longest_px: int,
) -> list[dict]:
    """One map per year and UTM zone (and one of the change status): {"id", "title", "figure"} each.

    Drawn by tasks/plots.py with the zone's coordinates, a scale bar and a legend of the classes shown.
    """
    classes = [(c.code, c.name, c.color) for c in legend]
    zones: dict[str, list[Tile]] = {}
    for tile in tiles:
        zones.setdefault(tile.zone, []).append(tile)
    maps = []
    for zone, group in sorted(zones.items()):
        bounds, crs = mosaic_bounds(group), group[0].grid.crs
        for year in years:

            def read(tile, year=year):
                return store.open_tile(source, year, tile.tile_id).read("labels", tile.core_window)

            title = f"Land cover {year} (UTM {zone})"
            figure = plots.class_map_figure(
                zone_mosaic(group, read, longest_px), bounds, crs, classes, title, longest_px=longest_px
            )
            maps.append({"id": f"map-{year}-{zone}", "title": title, "figure": figure})
        if change_years is not None:
            key = change_key(*change_years)

            def read_status(tile, key=key):
                return store.open_tile("change", key, tile.tile_id).read("status", tile.core_window)

            title = f"Change {change_years[0]} → {change_years[1]} (UTM {zone})"
            figure = plots.class_map_figure(
                zone_mosaic(group, read_status, longest_px), bounds, crs, CHANGE_CLASSES, title, longest_px=longest_px
            )
            maps.append({"id": f"change-{key}-{zone}", "title": title, "figure": figure})
    return maps


# --------------------------------------------------------------------------- charts


def class_areas_figure(legend: list[LegendClass], areas: dict[int, dict[int, float]]) -> Figure:
    """Grouped horizontal bars: one group per class that has an area, one bar per year (later years lighter)."""
    years = list(areas)
    rows = [c for c in legend if any(areas[y].get(c.code, 0) > 0 for y in years)]
    series = [
        (
            str(year),
            [float(areas[year].get(c.code, 0.0)) for c in rows],
            [lighten(c.color, 0.45 * j / max(1, len(years) - 1)) for c in rows],
        )
        for j, year in enumerate(years)
    ]
    return plots.barh_figure([c.name for c in rows], series, "Class areas per year", "ha", value_fmt="{:,.1f} ha")


def transitions_figure(legend: list[LegendClass], matrix: list[list[float]], years: tuple[int, int]) -> Figure:
    """The from → to matrix in hectares: rows the earlier year, columns the later one; log colour scale."""
    return plots.transition_figure(
        matrix,
        [c.name for c in legend],
        from_label=f"class in {years[0]}",
        to_label=f"class in {years[1]}",
        title=f"Transitions {years[0]} → {years[1]} (ha)",
    )


# --------------------------------------------------------------------------- page

PAGE = jinja2.Template(
    """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>LCMS report: {{ data.model }}</title>
<style>
 body { font-family: sans-serif; margin: 24px auto; max-width: 1100px; color: #222; }
 h1 { font-size: 24px; } h2 { font-size: 19px; margin-top: 32px; border-bottom: 1px solid #ccc; }
 table { border-collapse: collapse; margin: 8px 0; font-size: 13px; }
 th, td { border: 1px solid #ccc; padding: 3px 8px; } td.n { text-align: right; }
 .thumbs { display: flex; flex-wrap: wrap; gap: 16px; } figure { margin: 0; }
 img { max-width: 100%; } .note { color: #666; font-size: 13px; }
</style>
</head>
<body>
<h1>Land cover report: {{ data.model }}</h1>
<p class="note">Years {{ data.years | join(", ") }}{% if data.change_years %}; change {{ data.change_years[0] }} →
{{ data.change_years[1] }}{% endif %}. Areas over the AOI's tiles (cores only), in hectares.</p>

<h2 id="headline">Headline</h2>
<table id="headline-table">
<tr><th>class</th>{% for y in data.years %}<th>{{ y }} (ha)</th>{% endfor %}
{% if data.years | length > 1 %}<th>change (ha)</th>{% endif %}</tr>
{% for c in legend_rows %}<tr><td><span style="color:{{ c.color }}">■</span> {{ c.name }}</td>
{% for y in data.years %}<td class="n">{{ "{:,.2f}".format(data.class_areas_ha[y].get(c.code, 0)) }}</td>{% endfor %}
{% if data.years | length > 1 %}<td class="n">{{ "{:+,.2f}".format(data.class_areas_ha[data.years[-1]].get(c.code, 0)
 - data.class_areas_ha[data.years[0]].get(c.code, 0)) }}</td>{% endif %}</tr>
{% endfor %}
</table>

<h2 id="maps">Maps</h2>
<div class="thumbs">
{% for m in maps %}<figure><img id="{{ m.id }}" src="{{ m.uri }}" alt="{{ m.title }}"></figure>{% endfor %}
</div>

<h2 id="areas">Class areas per year</h2>
<img class="chart" id="areas-chart" src="{{ bar_chart }}" alt="Class areas per year (ha)">
{% if data.region_areas_ha %}
<h2 id="regions">Class areas per region</h2>
{% for y, regions in data.region_areas_ha.items() %}<h3>{{ y }}</h3>
<table class="regions"><tr><th>region</th>{% for c in legend_rows %}<th>{{ c.name }}</th>{% endfor %}</tr>
{% for r, areas in regions.items() %}<tr><td>{{ r }}</td>{% for c in legend_rows %}
<td class="n">{{ "{:,.2f}".format(areas.get(c.code, 0)) }}</td>{% endfor %}</tr>{% endfor %}</table>{% endfor %}
{% endif %}

{% if data.change_years %}
<h2 id="transitions">Transitions {{ data.change_years[0] }} → {{ data.change_years[1] }} (ha, all map pixels)</h2>
<p class="note">Rows: class in {{ data.change_years[0] }}; columns: class in {{ data.change_years[1] }}. The diagonal
is unchanged land. Map transitions include classification noise; the change polygons below are filtered by confidence
and size.</p>
{% if heatmap %}<img class="chart" id="transitions-chart" src="{{ heatmap }}" alt="Transitions (ha)">{% endif %}
<h2 id="changes">Detected changes</h2>
<p>{{ data.change_summary.polygons }} change polygons, {{ "{:,.2f}".format(data.change_summary.area_ha) }} ha.</p>
{% if data.change_summary.transitions %}<table id="change-transitions"><tr><th>from</th><th>to</th><th>polygons</th>
<th>ha</th></tr>
{% for t in data.change_summary.transitions %}<tr><td>{{ t["from"] }}</td><td>{{ t["to"] }}</td>
<td class="n">{{ t.polygons }}</td><td class="n">{{ "{:,.2f}".format(t.area_ha) }}</td></tr>{% endfor %}</table>
{% else %}<p id="no-changes">No changes passed the filters.</p>{% endif %}
{% if data.largest_changes %}<h3>Largest changes</h3>
<table id="largest-changes"><tr><th>#</th><th>from</th><th>to</th><th>ha</th><th>confidence before / after (%)</th>
<th>score</th><th>lon, lat</th><th>change id</th></tr>
{% for c in data.largest_changes %}<tr><td>{{ loop.index }}</td><td>{{ c["from"] }}</td><td>{{ c.to }}</td>
<td class="n">{{ "{:,.2f}".format(c.area_ha) }}</td><td class="n">{{ c.confidence_from }} / {{ c.confidence_to }}</td>
<td class="n">{{ c.score if c.score is not none else "–" }}</td><td>{{ c.lon }}, {{ c.lat }}</td>
<td><code>{{ c.change_id }}</code></td></tr>{% endfor %}</table>{% endif %}
{% endif %}

<h2 id="accuracy">Model accuracy</h2>
{% if data.accuracy %}{% set everything = data.accuracy.all_labelled %}{% if everything %}<p>On every labelled
pixel of the held-out area ({{ everything.n_samples }} pixels, class borders included): overall accuracy
<b>{{ "%.3f" | format(everything.overall_accuracy) }}</b>, kappa {{ "%.3f" | format(everything.kappa or 0) }},
macro F1 {{ "%.3f" | format(everything.macro_f1) }}.</p>
<table><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th><th>pixels</th></tr>
{% for name, m in everything.per_class.items() %}<tr><td>{{ name }}</td>
<td class="n">{{ "%.3f" | format(m.precision) }}</td><td class="n">{{ "%.3f" | format(m.recall) }}</td>
<td class="n">{{ "%.3f" | format(m.f1) }}</td><td class="n">{{ m.support }}</td></tr>{% endfor %}</table>
<p>On the test samples (drawn from the reference after its <code>erosion_px</code>):</p>{% endif %}
<p>Overall accuracy <b>{{ "%.3f" | format(data.accuracy.overall_accuracy) }}</b>, kappa
{{ "%.3f" | format(data.accuracy.kappa or 0) }}, macro F1 {{ "%.3f" | format(data.accuracy.macro_f1) }}, on
{{ data.accuracy.n_samples }} test samples.</p>
<table><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th><th>support</th></tr>
{% for name, m in data.accuracy.per_class.items() %}<tr><td>{{ name }}</td>
<td class="n">{{ "%.3f" | format(m.precision) }}</td><td class="n">{{ "%.3f" | format(m.recall) }}</td>
<td class="n">{{ "%.3f" | format(m.f1) }}</td>
<td class="n">{{ m.support }}</td></tr>{% endfor %}</table>
{% else %}<p class="note">No trained model named {{ data.model }} in the store.</p>{% endif %}
{% if data.area_estimates %}<h2 id="area-estimates">Accuracy and area from the probability sample</h2>
<p class="note">Stratified estimators of Olofsson et al. (2014), from the operators' labels of a stratified random
sample of map pixels (`lcms sample-design`, `lcms accuracy`); intervals are 95 %.</p>
{% for a in data.area_estimates %}<h3>{{ a.kind }} {{ a.years | join("–") }}: overall accuracy
{{ "%.3f" | format(a.overall_accuracy) }} ± {{ "%.3f" | format(a.overall_accuracy_ci95) }}
({{ a.n_labelled }} labelled points)</h3>
<table class="area-estimates"><tr><th>class</th><th>mapped (ha)</th><th>estimated (ha)</th><th>95 % interval (ha)</th>
<th>user's accuracy</th><th>producer's accuracy</th></tr>
{% for c in a.classes %}<tr><td>{{ c.class_name }}</td><td class="n">{{ "{:,.2f}".format(c.mapped_area_ha) }}</td>
<td class="n">{{ "{:,.2f}".format(c.area_ha) }}</td>
<td class="n">{{ "{:,.2f}".format(c.area_ci95_low_ha) }} – {{ "{:,.2f}".format(c.area_ci95_high_ha) }}</td>
<td class="n">{% if c.users_accuracy is not none %}{{ "%.3f" | format(c.users_accuracy) }} ±
{{ "%.3f" | format(c.users_accuracy_ci95) }}{% else %}–{% endif %}</td>
<td class="n">{% if c.producers_accuracy is not none %}{{ "%.3f" | format(c.producers_accuracy) }} ±
{{ "%.3f" | format(c.producers_accuracy_ci95) }}{% else %}–{% endif %}</td></tr>
{% endfor %}</table>{% endfor %}{% endif %}
{% if data.reviewed_reference %}{% set r = data.reviewed_reference %}<h3 id="reviewed-reference">Reviewed changes
in the reference</h3>
<p>Operators' decisions on {{ r.changes }} change polygons labelled {{ "{:,}".format(r.pixels) }} reference pixels;
where they disagreed with the base reference the newer decision won, changing
<b>{{ "{:,}".format(r.changed_base_pixels) }}</b> pixels of it
({% for y, c in r.by_year.items() %}{{ y }}: {{ "{:,}".format(c.changed_base_pixels) }}
{%- if not loop.last %}, {% endif %}{% endfor %}).
The change detector and the operators chose these places, not a probability sample: they train the model, and
test figures that include them are not an estimate of the map's accuracy.</p>{% endif %}

<p class="note">This page holds all its images. Its numbers are also in files beside it in the store:
{% for f in files %}<a href="{{ f }}">{{ f }}</a> {% endfor %}</p>
<script>
 // Marks the page once every map (and, apart, every chart) has loaded, for a headless browser check.
 window.addEventListener("load", () => {
   const loaded = images => images.filter(i => i.complete && i.naturalWidth > 0).length;
   const thumbnails = [...document.querySelectorAll(".thumbs img")];
   const charts = [...document.querySelectorAll("img.chart")];
   document.body.dataset.imagesLoaded = loaded(thumbnails);
   document.body.dataset.images = thumbnails.length;
   document.body.dataset.chartsLoaded = loaded(charts);
   document.body.dataset.charts = charts.length;
 });
</script>
</body>
</html>
""",
    autoescape=True,
)


def render_html(data, files: list[str]) -> str:
    """The page: tables from `data`, its maps (`data.thumbnails`) and charts embedded as PNG data URIs,
    links to `files` (the CSV and JSON beside it)."""
    legend_rows = [c for c in data.legend if any(data.class_areas_ha[y].get(c.code, 0) > 0 for y in data.years)]
    maps = [{"id": m["id"], "title": m["title"], "uri": plots.png_data_uri(m["figure"])} for m in data.thumbnails]
    heatmap = ""
    if data.transitions_ha is not None and data.change_years:
        heatmap = plots.png_data_uri(transitions_figure(data.legend, data.transitions_ha, data.change_years))
    return PAGE.render(
        data=data,
        legend_rows=legend_rows,
        maps=maps,
        bar_chart=plots.png_data_uri(class_areas_figure(legend_rows, data.class_areas_ha)),
        heatmap=heatmap,
        files=files,
    )


# --------------------------------------------------------------------------- headless browser

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
# Without the background-networking flags Chromium tries to reach Google at start, which these offline hosts refuse.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)


def find_browser() -> str | None:
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


def screenshot(html: Path, png: Path, width: int = 1200, height: int = 2400, timeout: int = 120) -> str:
    """Render `html` in headless Chromium: writes `png` and returns the DOM after the page's scripts ran."""
    browser = find_browser()
    if browser is None:
        raise FileNotFoundError(
            "no Chromium found for the report screenshot: install it (Debian: apt install chromium)"
        )
    with tempfile.TemporaryDirectory(prefix="lcms-chromium-") as profile:
        base = [browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"]
        url = Path(html).resolve().as_uri()
        shot = subprocess.run(
            [*base, f"--screenshot={Path(png).resolve()}", url], capture_output=True, text=True, timeout=timeout
        )
        if shot.returncode != 0 or not Path(png).exists():
            raise RuntimeError(f"Chromium could not render {html}: {shot.stderr[-1500:]}")
        dom = subprocess.run(
            [*base, "--virtual-time-budget=5000", "--dump-dom", url], capture_output=True, text=True, timeout=timeout
        )
    return dom.stdout
