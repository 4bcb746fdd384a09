"""The project's charts, drawn with matplotlib: validation plots of the training stage, the report's charts and maps.

Each `*_figure` function returns a matplotlib `Figure`, so that tests can read what was drawn
(bar lengths, cell texts); `save_png`, `png_bytes` and `png_data_uri` turn a figure into a PNG
file, PNG bytes or a ``data:image/png;base64,...`` URI for the HTML report.

Figures are `matplotlib.figure.Figure` objects on the Agg canvas, never pyplot: no display, no
global figure registry, so tasks running in threads can draw at the same time and nothing has
to be closed. Colours are "#rrggbb" legend colours (see lcms/legend.py).

- `heatmap_figure`: a labelled matrix with values in the cells and a colour bar; used by
  `confusion_matrix_figure`, `importance_figure` (date × feature gain) and `transition_figure`
  (from → to areas, log colour scale, the unchanged diagonal in grey).
- `barh_figure`: grouped horizontal bars (class frequencies, class areas per year, importance
  of features without dates).
- `roc_figure`: one-vs-rest ROC curves, one per class.
- `class_map_figure`: a categorical map (land cover, change status) with easting/northing or
  lon/lat on its axes and the CRS named, a scale bar (matplotlib's `AnchoredSizeBar`) and a
  legend of the classes on it; the report's map thumbnails.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import FuncNorm, Normalize
from matplotlib.figure import Figure

DPI = 100
MASKED_COLOR = "#d9d9d9"  # cells outside the colour scale: missing values, the unchanged diagonal
EDGE_COLOR = "#5a5a5a"
CHAR_IN = 0.075  # rough width of one 10 pt character, in inches, to size figures to their labels

# A bar series: (name, one value per label, one colour per label).
BarSeries = tuple[str, Sequence[float], Sequence[str]]


def _figure(width_in: float, height_in: float) -> Figure:
    fig = Figure(figsize=(width_in, height_in), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _longest(labels: Sequence[str]) -> int:
    return max((len(str(s)) for s in labels), default=0)


# --------------------------------------------------------------------------- output


def png_bytes(fig: Figure) -> bytes:
    """The figure as PNG bytes."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, facecolor="white")
    return buffer.getvalue()


def save_png(fig: Figure, path: Path | str) -> Path:
    """Write the figure as a PNG file; return the path."""
    path = Path(path)
    path.write_bytes(png_bytes(fig))
    return path


def png_data_uri(fig: Figure) -> str:
    """The figure as a ``data:image/png;base64,...`` URI, to embed in an HTML page."""
    return "data:image/png;base64," + base64.b64encode(png_bytes(fig)).decode("ascii")


# --------------------------------------------------------------------------- heat maps


def heatmap_figure(
    matrix: Sequence[Sequence[float]] | np.ndarray,
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    title: str,
    *,
    xlabel: str,
    ylabel: str,
    vmin: float | None = None,
    vmax: float | None = None,
    cmap: str = "Blues",
    norm: Normalize | None = None,
    masked: np.ndarray | None = None,
    annotate: bool = True,
    fmt: str = "{:.2f}",
    cell: tuple[float, float] = (0.75, 0.45),
    colorbar_label: str | None = None,
) -> Figure:
    """A matrix as coloured cells, rows top to bottom, with the value written in each cell.

    NaN cells are grey and carry no text; `masked` cells (boolean, the matrix's shape) are grey
    too but keep their value written. `norm` (a matplotlib norm) replaces vmin/vmax, which
    default to the range of the coloured cells. `cell` is a cell's (width, height) in inches.
    """
    m = np.asarray(matrix, dtype=np.float64)
    if m.ndim != 2 or m.shape != (len(row_labels), len(col_labels)):
        raise ValueError(f"a {m.shape} matrix for {len(row_labels)} row and {len(col_labels)} column labels")
    grey = np.zeros(m.shape, dtype=bool) if masked is None else np.asarray(masked, dtype=bool)
    colored = np.ma.masked_array(m, mask=grey | ~np.isfinite(m))
    if norm is None:
        values = colored.compressed()
        lo = vmin if vmin is not None else (float(values.min()) if values.size else 0.0)
        hi = vmax if vmax is not None else (float(values.max()) if values.size else 1.0)
        norm = Normalize(lo, hi if hi > lo else lo + 1.0)
    colors = colormaps[cmap].with_extremes(bad=MASKED_COLOR)

    nr, nc = m.shape
    width = CHAR_IN * _longest(row_labels) + nc * cell[0] + 2.4
    height = 0.7 * CHAR_IN * _longest(col_labels) + nr * cell[1] + 1.6
    fig = _figure(max(width, CHAR_IN * len(title) + 1.0, 4.0), max(height, 3.0))
    ax = fig.add_subplot()
    image = ax.imshow(colored, cmap=colors, norm=norm, aspect="auto", interpolation="nearest")
    ax.set_xticks(range(nc), labels=[str(s) for s in col_labels], rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(nr), labels=[str(s) for s in row_labels])
    ax.tick_params(length=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, loc="left")
    if annotate:
        for i in range(nr):
            for j in range(nc):
                v = m[i, j]
                if not np.isfinite(v):
                    continue
                ink = "black"
                if not colored.mask[i, j]:
                    r, g, b, _ = colors(norm(v))
                    ink = "white" if 0.299 * r + 0.587 * g + 0.114 * b < 0.55 else "black"
                ax.text(j, i, fmt.format(v), ha="center", va="center", color=ink, fontsize=8)
    colorbar = fig.colorbar(image, ax=ax, fraction=0.05, pad=0.02)
    if colorbar_label:
        colorbar.set_label(colorbar_label)
    return fig


def confusion_matrix_figure(matrix: np.ndarray, class_names: Sequence[str], title: str) -> Figure:
    """A normalised confusion matrix (rows: reference, columns: prediction), values 0..1 in the cells."""
    return heatmap_figure(
        matrix, class_names, class_names, title, xlabel="predicted", ylabel="reference", vmin=0.0, vmax=1.0
    )


def importance_figure(
    matrix: np.ndarray,
    dates: Sequence[str],
    features: Sequence[str],
    title: str = "Feature importance (gain, % of total)",
) -> Figure:
    """Gain importance as a date × feature heat map (NaN: no such feature at that date)."""
    m = np.asarray(matrix, dtype=np.float64)
    return heatmap_figure(
        m,
        dates,
        features,
        title,
        xlabel="feature",
        ylabel="date",
        vmin=0.0,
        cmap="viridis",
        annotate=m.size <= 400,
        fmt="{:.1f}",
        cell=(0.7, 0.3),
        colorbar_label="% of total gain",
    )


def transition_figure(
    matrix: Sequence[Sequence[float]] | np.ndarray,
    class_names: Sequence[str],
    *,
    from_label: str = "from",
    to_label: str = "to",
    title: str = "Transitions (ha)",
    fmt: str = "{:,.1f}",
) -> Figure:
    """A from → to matrix (rows: earlier class, columns: later class) on a log colour scale.

    The diagonal (unchanged land) is grey, so that the changes set the colour scale.
    """
    m = np.asarray(matrix, dtype=np.float64)
    n = m.shape[0]
    diagonal = np.eye(n, dtype=bool) if n > 1 else np.zeros((n, n), dtype=bool)
    off = m[~diagonal]
    vmax = float(off.max()) if off.size and off.max() > 0 else 1.0
    norm = FuncNorm((np.log1p, np.expm1), vmin=0.0, vmax=vmax)
    return heatmap_figure(
        m,
        class_names,
        class_names,
        title,
        xlabel=to_label,
        ylabel=from_label,
        cmap="OrRd",
        norm=norm,
        masked=diagonal,
        fmt=fmt,
        cell=(0.8, 0.5),
        colorbar_label="ha (log scale)",
    )


# --------------------------------------------------------------------------- bars and curves


def barh_figure(
    labels: Sequence[str],
    series: Sequence[BarSeries],
    title: str,
    xlabel: str,
    *,
    value_fmt: str = "{:.4g}",
) -> Figure:
    """Horizontal bars: one group per label (top to bottom), one bar per series in each group.

    Each bar is written with its value (`value_fmt`), prefixed by the series name when there
    are several series; every bar has its own colour (e.g. the class's legend colour).
    """
    for name, values, colors in series:
        if len(values) != len(labels) or len(colors) != len(labels):
            raise ValueError(
                f"series {name!r}: {len(values)} values and {len(colors)} colours for {len(labels)} labels"
            )
    k = max(len(series), 1)
    bar_h = 0.8 / k
    height = max(len(labels) * k * 0.26 + 1.4, 2.5)
    fig = _figure(max(8.0, CHAR_IN * _longest(labels) + 6.5), height)
    ax = fig.add_subplot()
    ax.set_title(title, loc="left")
    ax.set_xlabel(xlabel)
    if not labels or not series:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        ax.set_yticks([])
        return fig
    groups = np.arange(len(labels), dtype=np.float64)
    vmax = max((float(v) for _, values, _ in series for v in values), default=0.0) or 1.0
    for s, (name, values, colors) in enumerate(series):
        y = groups - 0.4 + bar_h * (s + 0.5)
        widths = [float(v) for v in values]
        ax.barh(y, widths, height=bar_h * 0.9, color=list(colors), edgecolor=EDGE_COLOR, linewidth=0.5, label=name)
        for yi, v in zip(y, widths, strict=True):
            text = value_fmt.format(v)
            ax.text(v + vmax * 0.01, yi, f"{name}: {text}" if len(series) > 1 else text, va="center", fontsize=8)
    ax.set_yticks(groups, labels=[str(s) for s in labels])
    ax.set_ylim(len(labels) - 0.5, -0.5)  # first label on top
    ax.set_xlim(0, vmax * 1.3)  # room for the value texts
    ax.tick_params(axis="y", length=0)
    ax.spines[["top", "right"]].set_visible(False)
    return fig


def roc_figure(curves: Sequence[tuple[str, str, np.ndarray, np.ndarray]], title: str) -> Figure:
    """ROC curves: (label, colour, false positive rates, true positive rates) each, and the chance line."""
    fig = _figure(6.5, 6.5)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], linestyle="--", color="#969696", linewidth=1, label="chance")
    for label, color, fpr, tpr in curves:
        ax.plot(np.asarray(fpr), np.asarray(tpr), color=color, linewidth=2, label=label)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_aspect("equal")
    ax.grid(color="#ebebeb")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title, loc="left")
    if curves:
        ax.legend(loc="lower right", fontsize=9)  # the curves hug the upper left corner
    else:
        ax.text(0.5, 0.6, "no class with both positives and negatives", ha="center", transform=ax.transAxes)
    return fig


# --------------------------------------------------------------------------- maps

# A map class: (code in the array, name, "#rrggbb" colour).
MapClass = tuple[int, str, str]


def scale_bar_length(span: float) -> float:
    """A round length (1, 2 or 5 × 10^k) of at most a quarter of `span`, for a scale bar."""
    target = span / 4
    if target <= 0:
        raise ValueError(f"a map must have a positive width, got {span}")
    power = 10 ** np.floor(np.log10(target))
    return float(max(m * power for m in (1, 2, 5) if m * power <= target))


def _distance_label(metres: float) -> str:
    return f"{metres / 1000:g} km" if metres >= 1000 else f"{metres:g} m"


def class_map_figure(
    codes: np.ndarray,
    bounds: tuple[float, float, float, float],
    crs: str,
    classes: Sequence[MapClass],
    title: str,
    *,
    longest_px: int = 480,
    nodata_color: str = "#ffffff",
) -> Figure:
    """A categorical map: `codes` (y, x) drawn in its classes' colours over `bounds` (left, bottom, right, top).

    The axes carry the map's coordinates (easting/northing in metres for a projected `crs`,
    longitude/latitude for a geographic one) with the CRS named; a scale bar for projected
    maps; a legend of the classes that occur on the map. Codes not in `classes` (0, no data)
    are `nodata_color`, "no data" in the legend. The map itself is about `longest_px` pixels on its longest side.
    """
    from matplotlib.patches import Patch
    from matplotlib.ticker import MaxNLocator, StrMethodFormatter
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar
    from pyproj import CRS

    from lcms.legend import hex_to_rgb

    codes = np.asarray(codes)
    if codes.ndim != 2 or not np.issubdtype(codes.dtype, np.integer):
        raise ValueError(f"a map is a 2-D array of integer codes, got {codes.dtype} {codes.shape}")
    left, bottom, right, top = bounds
    palette = np.tile(np.array(hex_to_rgb(nodata_color), dtype=np.uint8), (256, 1))
    for code, _, color in classes:
        palette[code] = hex_to_rgb(color)
    present = set(np.unique(codes).tolist())
    shown = [c for c in classes if c[0] in present]
    keyed = shown + ([(-1, "no data", nodata_color)] if present - {c[0] for c in classes} else [])

    # A fixed layout, in inches (constrained layout keeps moving an equal-aspect map between renders):
    # the map `longest_px` on its longest side, tick labels and axis titles left and below, the legend right.
    scale = longest_px / DPI / max(right - left, top - bottom)
    map_w, map_h = (right - left) * scale, (top - bottom) * scale
    margin_left, margin_bottom, margin_top = 1.05, 0.65, 0.35
    legend_in = CHAR_IN * _longest([name for _, name, _ in keyed]) + 0.7
    width = max(margin_left + map_w + legend_in, CHAR_IN * len(title) + margin_left)
    height = margin_bottom + map_h + margin_top
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((margin_left / width, margin_bottom / height, map_w / width, map_h / height))
    ax.imshow(palette[codes], extent=(left, right, bottom, top), interpolation="nearest", origin="upper")
    ax.set_title(title, loc="left")

    parsed = CRS.from_user_input(crs)
    crs_name = f"{parsed.name} ({crs})" if parsed.name != crs else crs
    if parsed.is_geographic:
        ax.set_xlabel(f"longitude (°), {crs_name}")
        ax.set_ylabel("latitude (°)")
    else:
        ax.set_xlabel(f"easting (m), {crs_name}", fontsize=9)
        ax.set_ylabel("northing (m)", fontsize=9)
        ax.xaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
        ax.yaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
        length = scale_bar_length(right - left)
        ax.add_artist(
            AnchoredSizeBar(
                ax.transData,
                length,
                _distance_label(length),
                loc="lower left",
                pad=0.4,
                borderpad=0.6,
                sep=3,
                size_vertical=(top - bottom) / 80,
                frameon=True,
            )
        )
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(MaxNLocator(4, steps=[1, 2, 5, 10]))
    ax.tick_params(labelsize=8)
    handles = [Patch(facecolor=color, edgecolor=EDGE_COLOR, linewidth=0.5, label=name) for _, name, color in keyed]
    if shown:
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False)
    else:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    return fig
