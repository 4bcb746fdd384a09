"""`lcms sample-design` and `lcms accuracy`: a probability sample of the maps, and the estimates from its labels.

`register(app)` adds both to the `lcms` command. The work is in tasks/accuracy/ (plain functions); the
sample's labelling queue is in the service database (lcms/serve/samples.py), where operators label it in
`lcms serve`.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

import typer

ConfigArg = Annotated[Path, typer.Argument(help="YAML run config (see examples/).", show_default=False)]
YearOpt = Annotated[int | None, typer.Option("--year", help="The map of this year (default: the last year).")]
YearsOpt = Annotated[
    str | None, typer.Option("--years", help="A pair of years A,B: change / no change between their maps.")
]


def _years(cfg, year: int | None, years: str | None) -> tuple[int, ...]:
    from lcms import cli

    if year is not None and years is not None:
        raise cli._fail("give --year or --years, not both", code=2)
    if years is not None:
        try:
            pair = tuple(int(y) for y in years.split(","))
        except ValueError:
            pair = ()
        if len(pair) != 2 or pair[0] >= pair[1]:
            raise cli._fail(f"--years takes two years, earlier first, like 2023,2024; not {years!r}", code=2)
        return pair
    chosen = year if year is not None else max(cfg.years)
    if chosen not in cfg.years:
        raise cli._fail(f"--year {chosen} is not one of the config's years {list(cfg.years)}", code=2)
    return (chosen,)


def _database(cli, cfg, store):
    from lcms.serve.db import DatabaseError, open_database

    try:
        return open_database(cfg, store)
    except DatabaseError as exc:
        raise cli._fail(str(exc)) from None


def sample_design(
    config: ConfigArg,
    year: YearOpt = None,
    years: YearsOpt = None,
    target_se: Annotated[
        float, typer.Option("--target-se", help="Target standard error of overall accuracy (sets the sample size).")
    ] = 0.01,
    min_per_stratum: Annotated[
        int, typer.Option("--min-per-stratum", help="At least this many points per stratum.")
    ] = 50,
    anticipated_ua: Annotated[
        float | None,
        typer.Option(
            "--anticipated-ua", help="Anticipated user's accuracy of every stratum (default 0.9; change 0.7)."
        ),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the random draw.")] = 0,
) -> None:
    """Draw a stratified random sample of map pixels (strata: the map's classes, or change / no change) and load it
    as a labelling queue in the Validation Tool."""
    from rich.table import Table

    from lcms import cli
    from lcms.serve.samples import load_design
    from lcms.store import StoreError, TileStore
    from tasks.accuracy.design import DesignError
    from tasks.accuracy.estimation import EstimationError
    from tasks.accuracy.products import make_design, store_design

    cfg = cli._load(config)
    chosen = _years(cfg, year, years)
    if min_per_stratum < 2:
        raise cli._fail("--min-per-stratum must be at least 2 (a stratum's variance needs two points)", code=2)
    store = TileStore.from_config(cfg.store, cfg.product)
    try:
        design, points = make_design(store, chosen, target_se, min_per_stratum, seed, anticipated_ua)
        with tempfile.TemporaryDirectory(prefix="lcms-sample-") as tmp:
            stored = store_design(store, design, points, Path(tmp))
    except (StoreError, DesignError, EstimationError) as exc:
        raise cli._fail(str(exc)) from None
    db = _database(cli, cfg, store)
    try:
        added = load_design(db, design, points)
    finally:
        db.close()
    table = Table(title=f"sample {design['design_id']}")
    for column in ("stratum", "pixels", "area (ha)", "weight", "anticipated UA", "n"):
        table.add_column(column)
    for s in design["strata"]:
        table.add_row(
            s["name"],
            f"{s['pixels']:,}",
            f"{s['area_ha']:,.2f}",
            f"{s['weight']:.4f}",
            f"{s['anticipated_users_accuracy']:.2f}",
            str(s["n"]),
        )
    cli.console.print(table)
    cli.console.print(
        f"{design['n_total']} points ({design['n_from_target_se']} for a standard error of overall accuracy of "
        f"{target_se}, at least {min_per_stratum} per stratum), seed {seed}; "
        + ("stored; " if stored else "the same sample as the stored one; ")
        + (f"loaded as a queue of {added} points" if added else "already loaded as a queue")
        + " in the Validation Tool (GET /samples)",
        highlight=False,
    )


def accuracy(config: ConfigArg, year: YearOpt = None, years: YearsOpt = None) -> None:
    """Overall, user's and producer's accuracy and each class's area with 95 % intervals, from the labelled sample
    (Olofsson et al. 2014); printed, and stored as JSON and CSV."""
    from rich.table import Table

    from lcms import cli
    from lcms.serve.samples import labelled_records
    from lcms.store import StoreError, TileStore
    from tasks.accuracy.estimation import EstimationError
    from tasks.accuracy.products import estimate, read_design, store_estimates

    cfg = cli._load(config)
    chosen = _years(cfg, year, years)
    store = TileStore.from_config(cfg.store, cfg.product)
    try:
        design, _ = read_design(store, chosen)
    except StoreError as exc:
        raise cli._fail(str(exc)) from None
    db = _database(cli, cfg, store)
    try:
        records = labelled_records(db, design["design_id"])
    finally:
        db.close()
    try:
        result = estimate(design, records)
    except EstimationError as exc:
        raise cli._fail(f"{design['design_id']}: {exc}") from None
    export = store.product_record("export", cfg.product)
    if design.get("export_attempt") and export is not None and export.attempt != design["export_attempt"]:
        cli.errors.print(
            f"warning: the maps were exported again ({export.attempt}) since this sample was drawn from "
            f"{design['export_attempt']}: the estimates are those of the maps the sample was drawn from; "
            "draw a new sample (`lcms sample-design`) to assess the new maps",
            highlight=False,
        )
    with tempfile.TemporaryDirectory(prefix="lcms-accuracy-") as tmp:
        store_estimates(store, result, records, Path(tmp))
    table = Table(title=f"accuracy and area, {design['key']} ({result['n_labelled']} of {design['n_total']} labelled)")
    for column in ("class", "mapped (ha)", "n", "user's acc.", "producer's acc.", "area (ha)", "95 % CI (ha)"):
        table.add_column(column)

    def pm(value, half):
        return "–" if value is None else f"{value:.3f} ± {half:.3f}"

    for r in result["classes"]:
        table.add_row(
            r["class_name"],
            f"{r['mapped_area_ha']:,.2f}",
            str(r["sample_n"]),
            pm(r["users_accuracy"], r["users_accuracy_ci95"]),
            pm(r["producers_accuracy"], r["producers_accuracy_ci95"]),
            f"{r['area_ha']:,.2f}",
            f"{r['area_ci95_low_ha']:,.2f} – {r['area_ci95_high_ha']:,.2f}",
        )
    cli.console.print(table)
    cli.console.print(
        f"overall accuracy {result['overall_accuracy']:.3f} ± {result['overall_accuracy_ci95']:.3f} (95 %); "
        f"{result['left_out_not_probability_sample']} labelled points outside the probability sample left out; "
        f"stored: {store.published_url('accuracy', design['key'], 'accuracy.json')} (and CSV beside it); "
        "`lcms report CONFIG --overwrite` adds them to the report",
        highlight=False,
    )


def register(app: typer.Typer) -> None:
    app.command("sample-design")(sample_design)
    app.command("accuracy")(accuracy)
