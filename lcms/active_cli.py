"""`lcms label-next`: active learning's "label next" queue for the Validation Tool.

`register(app)` adds it to the `lcms` command. The work is in tasks/active/ (plain functions): the year's
stored probabilities give each pixel an uncertainty, labelling units get its mean, and the picks are
stratified by predicted class and thinned in space. The picks are stored (``label-next`` in the store) and
loaded as a queue (design kind ``active``) in `lcms serve`'s database; `reference.active_labels: true` makes
the reference stage take their labels (tasks/reference/labels.py).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

import typer

from lcms.accuracy_cli import ConfigArg


def label_next(
    config: ConfigArg,
    product: Annotated[str | None, typer.Option("--product", help="The product (default: the config's).")] = None,
    year: Annotated[int | None, typer.Option("--year", help="The prediction of this year (default: the last).")] = None,
    count: Annotated[int, typer.Option("--count", help="How many units to pick (K).")] = 20,
    unit: Annotated[str, typer.Option("--unit", help="Labelling units: block (square) or slic (superpixels).")] = (
        "block"
    ),
    unit_size: Annotated[int, typer.Option("--unit-size", help="Unit side in pixels (SLIC: typical side).")] = 5,
    min_distance: Annotated[
        float | None,
        typer.Option("--min-distance", help="Least distance between picks, in pixels (default: 2 × unit size)."),
    ] = None,
    uncertainty: Annotated[
        str, typer.Option("--uncertainty", help="margin (1 - (p1 - p2)) or entropy (normalised).")
    ] = "margin",
    seed: Annotated[int, typer.Option("--seed", help="Recorded in the design (the picks are deterministic).")] = 0,
) -> None:
    """Pick the units the model is least sure of (stratified by predicted class, spatially thinned) and load them
    as a "label next" queue in the Validation Tool."""
    from rich.table import Table

    from lcms import cli
    from lcms.accuracy_cli import _database
    from lcms.serve.samples import load_design
    from lcms.store import StoreError, TileStore
    from tasks.active.queue import QueueError, QueueSettings, active_designs, make_queue, store_queue
    from tasks.active.uncertainty import METHODS
    from tasks.active.units import UNIT_KINDS

    cfg = cli._load(config)
    if unit not in UNIT_KINDS:
        raise cli._fail(f"--unit must be one of {list(UNIT_KINDS)}, not {unit!r}", code=2)
    if uncertainty not in METHODS:
        raise cli._fail(f"--uncertainty must be one of {list(METHODS)}, not {uncertainty!r}", code=2)
    if count < 1 or unit_size < 1:
        raise cli._fail("--count and --unit-size must be at least 1", code=2)
    chosen = year if year is not None else max(cfg.years)
    if chosen not in cfg.years:
        raise cli._fail(f"--year {chosen} is not one of the config's years {list(cfg.years)}", code=2)
    store = TileStore.from_config(cfg.store, product or cfg.product)
    settings = QueueSettings(
        count=count,
        unit=unit,
        unit_size=unit_size,
        min_distance_px=float(2 * unit_size if min_distance is None else min_distance),
        uncertainty=uncertainty,
        seed=seed,
    )
    db = _database(cli, cfg, store)
    try:
        earlier = [d["design_id"] for d in active_designs(db, store.product, chosen)]
        try:
            design, points, units = make_queue(store, chosen, settings, earlier)
            with tempfile.TemporaryDirectory(prefix="lcms-label-next-") as tmp:
                store_queue(store, design, units, Path(tmp))
        except (StoreError, QueueError, RuntimeError) as exc:
            raise cli._fail(str(exc)) from None
        added = load_design(db, design, points, source="active")
    finally:
        db.close()
    stored = store.published_url("label-next", design["design_id"], "units.geojson")
    table = Table(title=f"label next {design['design_id']}")
    for column in ("predicted class", "units", "equal share"):
        table.add_column(column)
    for code, n in design["picks_per_class"].items():
        table.add_row(code, str(n), str(design["quota_per_class"].get(code, 0)))
    cli.console.print(table)
    cli.console.print(
        f"{design['n_total']} of {count} units of {unit_size} px ({unit}, {uncertainty} uncertainty, at least "
        f"{settings.min_distance_px:g} px apart; {len(earlier)} earlier queue(s) excluded) from model "
        f"{', '.join(design['model_versions'])}; stored: {stored}; "
        + (f"loaded as a queue of {added} units" if added else "already loaded as a queue")
        + " in the Validation Tool (GET /samples); `reference.active_labels: true` takes their labels",
        highlight=False,
    )


def register(app: typer.Typer) -> None:
    app.command("label-next")(label_next)
