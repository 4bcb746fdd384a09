"""Reporting stage, AOI level: class areas, transitions, accuracy and the largest changes, for operators.

Plain functions, no Prefect: flows/report.py wraps them. Everything is counted over tile cores
only (the buffers overlap the neighbours), tile by tile, so a country never sits in memory:

- per year, the area of each class over the AOI and, with a regions file, per region;
- between the change stage's two years, the from → to matrix of the maps, in hectares;
- the change polygons' summary and the largest ones (from the change stage's GeoPackage);
- the model's accuracy (from the training stage's `metrics.json`);
- with `reference.reviews`, how many reference pixels operators' reviewed changes labelled and how many base
  reference pixels they changed (from the reference stage's done marks, tasks/reference/reviews.py).

`build_report` writes the HTML page (tasks/report/html.py, every image embedded), CSV and JSON into a
folder, which the flow stores as the `report/<model>` product.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
from rasterio.features import rasterize

from lcms.config import ReportConfig
from lcms.grid import Tile
from lcms.legend import LegendClass
from lcms.store import StoreError, TileStore
from tasks.accuracy.products import report_estimates
from tasks.change.polygons import read_change_layer, summarise
from tasks.report.html import map_figures, render_html

M2_PER_HA = 10_000


class ReportError(ValueError):
    """Inputs that cannot be reported on: a regions file without usable regions, maps of other legends."""


@dataclass
class Regions:
    """Region polygons and their names; `index` i+1 in a rasterised region map is `names[i]`."""

    names: list[str]
    frame: gpd.GeoDataFrame


@dataclass
class ReportData:
    """Everything the report shows, in plain numbers; also written as report.json."""

    model: str
    years: list[int]
    legend: list[LegendClass]
    class_areas_ha: dict[int, dict[int, float]]  # year → class code → ha
    region_areas_ha: dict[int, dict[str, dict[int, float]]] = field(default_factory=dict)  # year → region → code
    change_years: tuple[int, int] | None = None
    transitions_ha: list[list[float]] | None = None  # rows: class in the earlier year, columns: the later one
    change_summary: dict | None = None
    largest_changes: list[dict] = field(default_factory=list)
    accuracy: dict | None = None
    area_estimates: list[dict] = field(default_factory=list)  # from a probability sample (`lcms accuracy`), if any
    reviewed_reference: dict | None = None  # `read_reviewed_reference`
    thumbnails: list[dict] = field(default_factory=list, repr=False)  # maps: {"id", "title", "figure"}

    def to_json(self) -> dict:
        names = {c.code: c.name for c in self.legend}
        return {
            "model": self.model,
            "years": self.years,
            "legend": [c.__dict__ for c in self.legend],
            "class_areas_ha": {
                str(y): {names.get(c, str(c)): round(a, 4) for c, a in areas.items()}
                for y, areas in self.class_areas_ha.items()
            },
            "region_areas_ha": {
                str(y): {r: {names.get(c, str(c)): round(a, 4) for c, a in areas.items()} for r, areas in regs.items()}
                for y, regs in self.region_areas_ha.items()
            },
            "change_years": list(self.change_years) if self.change_years else None,
            "transitions_ha": self.transitions_ha,
            "change_summary": self.change_summary,
            "largest_changes": self.largest_changes,
            "accuracy": self.accuracy,
            "area_estimates": self.area_estimates,
            "reviewed_reference": self.reviewed_reference,
        }


def load_regions(cfg: ReportConfig, storage_options: dict | None = None) -> Regions | None:
    """The regions file's polygons and names; ReportError naming the problem if it cannot serve."""
    if cfg.regions_path is None:
        return None
    from tasks.reference.polygons import read_vector_file

    frame = read_vector_file(cfg.regions_path, storage_options)
    frame = frame[frame.geometry.notna() & frame.geom_type.isin(["Polygon", "MultiPolygon"])]
    if frame.empty:
        raise ReportError(f"regions file {cfg.regions_path} holds no polygons; give admin units or similar areas")
    if frame.crs is None:
        raise ReportError(f"regions file {cfg.regions_path} has no CRS; set one (e.g. with ogr2ogr -a_srs)")
    field_name = cfg.region_field
    if field_name is None:
        text = [c for c in frame.columns if c != frame.geometry.name and pd.api.types.is_string_dtype(frame[c].dtype)]
        if not text:
            raise ReportError(f"regions file {cfg.regions_path} has no text column; set report.region_field")
        field_name = text[0]
    elif field_name not in frame.columns:
        raise ReportError(
            f"report.region_field {field_name!r} is not a column of {cfg.regions_path}; "
            f"it has {[c for c in frame.columns if c != frame.geometry.name]}"
        )
    names = [str(v) for v in frame[field_name]]
    return Regions(names, frame.reset_index(drop=True))


def tile_counts(labels: np.ndarray, region_map: np.ndarray | None, n_regions: int) -> np.ndarray:
    """Pixels per (region, class code): (n_regions + 1, 256); row 0 is outside every region."""
    regions = np.zeros(labels.shape, dtype=np.int64) if region_map is None else region_map.astype(np.int64)
    flat = regions.ravel() * 256 + labels.ravel().astype(np.int64)
    return np.bincount(flat, minlength=(n_regions + 1) * 256).reshape(n_regions + 1, 256)


def region_map(regions: Regions, tile: Tile) -> np.ndarray:
    """Region index (1-based, 0 = none) of each core pixel; where regions overlap, the later one wins."""
    grid = tile.core_grid
    frame = regions.frame.to_crs(grid.crs)
    shapes = [(geom, i + 1) for i, geom in enumerate(frame.geometry) if geom is not None and not geom.is_empty]
    return rasterize(shapes, out_shape=grid.shape, transform=grid.transform, fill=0, dtype="int32")


def class_areas(
    store: TileStore, tiles: list[Tile], year: int, source: str, regions: Regions | None = None
) -> tuple[dict[int, float], dict[str, dict[int, float]]]:
    """Hectares of each class over the tiles' cores, and per region (empty without regions)."""
    n_regions = len(regions.names) if regions else 0
    hectares = np.zeros((n_regions + 1, 256), dtype=np.float64)
    for tile in tiles:
        labels = store.open_tile(source, year, tile.tile_id).read("labels", tile.core_window)
        regions_here = region_map(regions, tile) if regions else None
        hectares += tile_counts(labels, regions_here, n_regions) * (tile.grid.resolution**2 / M2_PER_HA)
    total = hectares.sum(axis=0)
    areas = {code: float(total[code]) for code in range(1, 256) if total[code] > 0}
    by_region = {}
    if regions:
        for i, name in enumerate(regions.names):
            row = hectares[i + 1]
            areas_here = by_region.setdefault(name, {})  # two features of one name add up
            for code in np.flatnonzero(row[1:] > 0) + 1:
                areas_here[int(code)] = areas_here.get(int(code), 0.0) + float(row[code])
    return areas, by_region


def transition_matrix(
    store: TileStore, tiles: list[Tile], years: tuple[int, int], source: str, codes: list[int]
) -> list[list[float]]:
    """Hectares of each (class in the earlier year, class in the later year) pair over the tiles' cores."""
    counts = np.zeros((256, 256), dtype=np.float64)
    for tile in tiles:
        before = store.open_tile(source, years[0], tile.tile_id).read("labels", tile.core_window)
        after = store.open_tile(source, years[1], tile.tile_id).read("labels", tile.core_window)
        both = (before > 0) & (after > 0)
        pairs = before[both].astype(np.int64) * 256 + after[both].astype(np.int64)
        counts += np.bincount(pairs, minlength=256 * 256).reshape(256, 256) * (tile.grid.resolution**2 / M2_PER_HA)
    index = np.array(codes, dtype=np.int64)
    return counts[np.ix_(index, index)].tolist()


def map_legend(store: TileStore, tiles: list[Tile], years: list[int], source: str) -> list[LegendClass]:
    """The legend all maps share; ReportError if two years' maps have different legends."""
    legends = {}
    for year in years:
        attrs = store.open_tile(source, year, tiles[0].tile_id).attrs
        legends[year] = [LegendClass(c["code"], c["name"], c["color"]) for c in attrs.get("legend", [])]
    first = legends[years[0]]
    for year, legend in legends.items():
        if legend != first:
            raise ReportError(
                f"the maps of {years[0]} and {year} have different legends; report on maps of models with the "
                "same classes"
            )
    return [c for c in first if c.code != 0]


def largest_changes(changes: gpd.GeoDataFrame, n: int) -> list[dict]:
    """The `n` largest change polygons, with their centroid in WGS84 for finding them on a map."""
    if changes.empty or n == 0:
        return []
    top = changes.sort_values("area_m2", ascending=False, kind="stable").head(n)
    centroids = top.geometry.to_crs("EPSG:3857").centroid.to_crs("EPSG:4326")
    return [
        {
            "change_id": row.change_id,
            "tile_id": row.tile_id,
            "from": row.class_from_name,
            "to": row.class_to_name,
            "area_ha": round(float(row.area_m2) / M2_PER_HA, 4),
            "confidence_from": round(float(row.confidence_from), 1),
            "confidence_to": round(float(row.confidence_to), 1),
            "score": None if np.isnan(row.score) else round(float(row.score), 2),
            "lon": round(float(c.x), 6),
            "lat": round(float(c.y), 6),
        }
        for row, c in zip(top.itertuples(), centroids, strict=True)
    ]


def read_accuracy(store: TileStore, model: str) -> dict | None:
    """The model's headline metrics, or None when the store has no trained model of that name."""
    try:
        metrics = json.loads(store.read_file("training", model, "metrics.json"))
    except StoreError:
        return None
    return {
        "overall_accuracy": metrics["overall_accuracy"],
        "kappa": metrics["kappa"],
        "macro_f1": metrics["macro_f1"],
        "n_samples": metrics["n_samples"],
        "per_class": {
            name: {k: m[k] for k in ("precision", "recall", "f1", "support")}
            for name, m in metrics["per_class"].items()
        },
        # The same figures on every labelled pixel of the held-out area (class borders included),
        # beside those of the (eroded) test samples above; None for models trained before issue 22.
        "all_labelled": (
            {
                **{k: metrics["all_labelled"][k] for k in ("overall_accuracy", "kappa", "macro_f1", "n_samples")},
                "per_class": {
                    name: {k: m[k] for k in ("precision", "recall", "f1", "support")}
                    for name, m in metrics["all_labelled"]["per_class"].items()
                },
            }
            if metrics.get("all_labelled")
            else None
        ),
    }


def read_reviewed_reference(store: TileStore, tiles: list[Tile], years: list[int]) -> dict | None:
    """Per year and in total: reference pixels labelled by operators' reviewed changes, base reference pixels
    they changed (the newer decision won), and the reviewed changes used; None when no reference tile used reviews.

    Summed from the reference stage's done marks (tasks/reference/tile.py); a pixel in two tiles' buffers
    counts in both."""
    per_year, changes = {}, set()
    for year in years:
        done = store.done_tiles("reference", year)
        counts = {"pixels": 0, "changed_base_pixels": 0, "changes": 0}
        used = False
        for tile in tiles:
            reviews = done[tile.tile_id].extra.get("reviews") if tile.tile_id in done else None
            if reviews is None:
                continue
            used = True
            counts["pixels"] += sum(p["pixels"] for p in reviews["provenance"])
            counts["changed_base_pixels"] += reviews["changed_base_pixels"]
            changes |= {(year, p["change_id"]) for p in reviews["provenance"]}
        if used:
            counts["changes"] = sum(1 for y, _ in changes if y == year)
            per_year[year] = counts
    if not per_year:
        return None
    total = {k: sum(c[k] for c in per_year.values()) for k in ("pixels", "changed_base_pixels", "changes")}
    return {**total, "by_year": {str(y): c for y, c in per_year.items()}}


def write_tables(data: ReportData, folder: Path) -> list[str]:
    """The report's numbers as CSV files (plus report.json); returns the file names."""
    names = {c.code: c.name for c in data.legend}
    written = []

    def write(name: str, header: list[str], rows) -> None:
        with open(folder / name, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(header)
            writer.writerows(rows)
        written.append(name)

    write(
        "class_areas.csv",
        ["year", "class_code", "class_name", "area_ha", "share"],
        [
            (y, c, names.get(c, str(c)), round(a, 4), round(a / max(sum(areas.values()), 1e-12), 6))
            for y, areas in data.class_areas_ha.items()
            for c, a in sorted(areas.items())
        ],
    )
    if data.region_areas_ha:
        write(
            "class_areas_by_region.csv",
            ["year", "region", "class_code", "class_name", "area_ha"],
            [
                (y, r, c, names.get(c, str(c)), round(a, 4))
                for y, regions in data.region_areas_ha.items()
                for r, areas in regions.items()
                for c, a in sorted(areas.items())
            ],
        )
    if data.transitions_ha is not None:
        codes = [c.code for c in data.legend]
        write(
            "transitions.csv",
            ["class_from", "class_to", "area_ha"],
            [
                (names[a], names[b], round(data.transitions_ha[i][j], 4))
                for i, a in enumerate(codes)
                for j, b in enumerate(codes)
                if data.transitions_ha[i][j] > 0
            ],
        )
    if data.change_years is not None:
        header = ["change_id", "tile_id", "from", "to", "area_ha", "confidence_from", "confidence_to", "score"]
        header += ["lon", "lat"]
        write("largest_changes.csv", header, [[row[k] for k in header] for row in data.largest_changes])
    (folder / "report.json").write_text(json.dumps(data.to_json(), indent=2) + "\n")
    written.append("report.json")
    return written


def build_report(
    store: TileStore,
    tiles: list[Tile],
    years: list[int],
    cfg: ReportConfig,
    model: str,
    source: str,
    change_years: tuple[int, int] | None,
    folder: Path,
) -> ReportData:
    """Count, draw and write the whole report into `folder` (report.html with its images inside, CSV, JSON)."""
    legend = map_legend(store, tiles, years, source)
    regions = load_regions(cfg, store.storage_options)
    data = ReportData(model=model, years=years, legend=legend, class_areas_ha={})
    for year in years:
        areas, by_region = class_areas(store, tiles, year, source, regions)
        data.class_areas_ha[year] = areas
        if regions:
            data.region_areas_ha[year] = by_region
    if change_years is not None:
        data.change_years = change_years
        data.transitions_ha = transition_matrix(store, tiles, change_years, source, [c.code for c in legend])
        changes = read_change_layer(store, change_years)
        data.change_summary = summarise(changes, change_years, sorted(set(changes["tile_id"])))
        data.largest_changes = largest_changes(changes, cfg.largest_changes)
    data.accuracy = read_accuracy(store, model)
    data.area_estimates = report_estimates(store, years, change_years)  # issue 20 §2: Olofsson et al. (2014)
    data.reviewed_reference = read_reviewed_reference(store, tiles, years)
    folder.mkdir(parents=True, exist_ok=True)
    data.thumbnails = map_figures(store, tiles, years, source, legend, change_years, cfg.thumbnail_px)
    files = write_tables(data, folder)
    (folder / "report.html").write_text(render_html(data, files))
    return data


def headline_markdown(data: ReportData) -> str:
    """The headline table for the Prefect artifact: each class's area per year and its change."""
    names = {c.code: c.name for c in data.legend}
    codes = [c.code for c in data.legend if any(data.class_areas_ha[y].get(c.code, 0) for y in data.years)]
    lines = [f"## Land cover report `{data.model}`", ""]
    header = "| class | " + " | ".join(f"{y} (ha)" for y in data.years)
    header += " | change (ha) |" if len(data.years) > 1 else " |"
    lines += [header, "|---|" + "---:|" * (len(data.years) + (len(data.years) > 1))]
    for code in codes:
        row = [data.class_areas_ha[y].get(code, 0.0) for y in data.years]
        cells = " | ".join(f"{v:,.2f}" for v in row)
        delta = f" | {row[-1] - row[0]:+,.2f} |" if len(row) > 1 else " |"
        lines.append(f"| {names[code]} | {cells}{delta}")
    if data.change_summary is not None:
        s = data.change_summary
        lines += ["", f"Change {s['year_from']} → {s['year_to']}: {s['polygons']} polygons, {s['area_ha']:,.2f} ha."]
    if data.accuracy:
        a, everything = data.accuracy, data.accuracy.get("all_labelled")
        on_all = (
            f"OA {everything['overall_accuracy']:.3f}, kappa {everything['kappa'] or 0:.3f}, macro F1 "
            f"{everything['macro_f1']:.3f} on every labelled pixel of the held-out area ({everything['n_samples']}); "
            if everything
            else ""
        )
        lines += ["", f"Model {on_all}OA {a['overall_accuracy']:.3f}, kappa {a['kappa'] or 0:.3f} on its test samples."]
    return "\n".join(lines) + "\n"
