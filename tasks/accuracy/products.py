"""The accuracy assessment's store products: the sample design with its points, and the estimates.

Two AOI-level file products per product and year (or pair of years), declared here (`register`), written
by `lcms sample-design` and `lcms accuracy` (lcms/accuracy_cli.py), not by a flow:

- ``accuracy-sample/<product>/<key>/``: ``design.json`` (the strata with their mapped pixels, areas and
  weights, the sample size and how it was chosen, n per stratum, the seed, the maps it was drawn from) and
  ``points.csv`` (one row per sample pixel, with its stratum and map class: for the analysis, never shown to
  the operators who label it);
- ``accuracy/<product>/<key>/``: ``accuracy.json``, ``error_matrix.csv`` (area proportions),
  ``classes.csv`` (user's and producer's accuracy, area with its 95 % interval, per class) and
  ``records.csv`` (the labelled sample units the estimates used).

Both stages are declared in lcms/stages.py. ``<key>`` is ``map-<year>`` or ``change-<from>-<to>``. Only the
probability sample's own records enter the estimates: `probability_records` drops (and counts) any other
labelled unit, e.g. one an operator or active learning picked.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
from pathlib import Path

import numpy as np

from lcms.store import StoreError, TileStore
from tasks.accuracy import design as sampling
from tasks.accuracy.estimation import Z95, EstimationError, allocate, count_matrix, sample_size, stratified_estimates

SAMPLE_STAGE = "accuracy-sample"
ESTIMATE_STAGE = "accuracy"
PROBABILITY = "probability"  # the source of the design's own points; anything else never enters the estimates
DEFAULT_UA_CLASS, DEFAULT_UA_CHANGE = 0.9, 0.7  # anticipated user's accuracies (Olofsson et al. 2014, §5.1)
M2_PER_HA = 10_000


def sample_key(years: tuple[int, ...]) -> str:
    """The store key of a year's sample (``map-2024``) or a pair's (``change-2023-2024``)."""
    return f"map-{years[0]}" if len(years) == 1 else f"change-{years[0]}-{years[1]}"


def map_zones(store: TileStore, years: tuple[int, ...]) -> tuple[list[sampling.ZoneMaps], dict]:
    """The exported labels maps of the year(s), per zone (from the export's maps.json), and the legend."""
    try:
        maps = json.loads(store.read_file("export", store.product, "maps.json"))
    except StoreError:
        raise StoreError(
            f"no exported maps of {store.product!r} in {store.url}: run `lcms export CONFIG` first"
        ) from None
    by_zone: dict[str, dict[int, str]] = {}
    for m in maps:
        if m.get("map") == "labels" and m["year"] in years:
            by_zone.setdefault(m["zone"], {})[m["year"]] = m["url"]
    zones = [z for z, urls in sorted(by_zone.items()) if set(urls) == set(years)]
    if not zones:
        exported = sorted({m["year"] for m in maps if m.get("map") == "labels"})
        raise StoreError(f"no labels map of {'/'.join(map(str, years))} was exported (maps of {exported}); export it")
    import rasterio

    with rasterio.open(by_zone[zones[0]][years[0]]) as ds:
        legend = {c["code"]: c["name"] for c in json.loads(ds.tags().get("LEGEND", "[]")) if c["code"] != 0}
    return [sampling.ZoneMaps(z, tuple(by_zone[z][y] for y in years)) for z in zones], legend


def make_design(
    store: TileStore,
    years: tuple[int, ...],
    target_se: float = 0.01,
    min_per_stratum: int = 50,
    seed: int = 0,
    anticipated_ua: float | None = None,
) -> tuple[dict, list[dict]]:
    """Count the strata, size and allocate the sample, draw it: the design (a dict) and its points."""
    zones, legend = map_zones(store, years)
    counts, pixel_m2 = sampling.count_strata(zones)
    names = legend if len(years) == 1 else sampling.CHANGE_STRATA
    codes = list(counts)
    total = sum(counts.values())
    weights = np.array([counts[h] / total for h in codes])
    if anticipated_ua is not None:
        ua = [anticipated_ua] * len(codes)
    elif len(years) == 1:
        ua = [DEFAULT_UA_CLASS] * len(codes)
    else:
        ua = [DEFAULT_UA_CHANGE if h == sampling.CHANGE else DEFAULT_UA_CLASS for h in codes]
    n_cochran = sample_size(weights, ua, target_se, population=total)
    sizes = allocate(n_cochran, weights, [counts[h] for h in codes], min_per_stratum)
    n_of = dict(zip(codes, sizes.tolist(), strict=True))
    points = sampling.draw_pixels(zones, n_of, counts, seed)
    design = {
        "product": store.product,
        "years": list(years),
        "kind": "map" if len(years) == 1 else "change",
        "key": sample_key(years),
        "unit": "pixel (its centre is the point)",
        "seed": seed,
        "target_se_overall": target_se,
        "min_per_stratum": min_per_stratum,
        "sample_size_formula": (
            "n = (sum W_i S_i / S(O))^2 / (1 + sum W_i S_i^2 / (N S(O)^2)), S_i = sqrt(U_i (1 - U_i))"
            " (Olofsson et al. 2014, eq. 13); then a floor of min_per_stratum per stratum, the rest proportional"
        ),
        "n_from_target_se": n_cochran,
        "n_total": int(sizes.sum()),
        "pixel_area_m2": pixel_m2,
        "total_pixels": total,
        "strata": [
            {
                "code": h,
                "name": names.get(h, str(h)),
                "pixels": counts[h],
                "area_ha": counts[h] * pixel_m2 / M2_PER_HA,
                "weight": counts[h] / total,
                "anticipated_users_accuracy": u,
                "n": n_of[h],
            }
            for h, u in zip(codes, ua, strict=True)
        ],
        "reference_classes": legend,
        "maps": [{"zone": z.zone, "urls": list(z.urls)} for z in zones],
        "export_attempt": getattr(store.product_record("export", store.product), "attempt", None),
    }
    # The same maps, settings and seed give the same sample, and so the same id (a rerun reuses its queue).
    digest = hashlib.sha256(json.dumps([design, points], sort_keys=True, default=str).encode()).hexdigest()[:12]
    design["design_id"] = f"{store.product}_{design['key']}_{digest}"
    design["drawn_at"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    return design, points


def _csv_text(rows: list[dict]) -> str:
    out = io.StringIO()
    if rows:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return out.getvalue()


def store_design(store: TileStore, design: dict, points: list[dict], folder: Path) -> bool:
    """Store the design and its points as the current sample of its key; False if that very design is there."""
    record = store.product_record(SAMPLE_STAGE, design["key"])
    if record is not None and record.extra.get("design_id") == design["design_id"]:
        return False
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "design.json").write_text(json.dumps(design, indent=1) + "\n")
    (folder / "points.csv").write_text(_csv_text(points))
    store.put_files(SAMPLE_STAGE, design["key"], folder, design["design_id"], extra={"design_id": design["design_id"]})
    return True


def read_design(store: TileStore, years: tuple[int, ...]) -> tuple[dict, list[dict]]:
    """The stored design of the year(s) and its points; StoreError when there is none."""
    key = sample_key(years)
    try:
        design = json.loads(store.read_file(SAMPLE_STAGE, key, "design.json"))
        text = store.read_file(SAMPLE_STAGE, key, "points.csv").decode()
    except StoreError:
        raise StoreError(
            f"no accuracy sample {key} of {store.product!r}: run `lcms sample-design CONFIG` first"
        ) from None
    points = [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(io.StringIO(text))]
    return design, points


def _number(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


# --------------------------------------------------------------------------------------- estimates


def reference_stratum(design: dict, record: dict) -> int:
    """The reference class of a labelled unit in the design's terms: the class (one year), or change /
    no change from the two classes an operator gave (a pair of years)."""
    if design["kind"] == "map":
        return int(record["reference_class"])
    same = int(record["reference_from"]) == int(record["reference_to"])
    return sampling.NO_CHANGE if same else sampling.CHANGE


def probability_records(design: dict, records: list[dict]) -> tuple[list[dict], int]:
    """The labelled units that may enter the estimates: the design's own points (its id, source
    'probability'); and how many others were left out (operators' or active learning's picks)."""
    kept = [r for r in records if r.get("design_id") == design["design_id"] and r.get("source") == PROBABILITY]
    return kept, len(records) - len(kept)


def estimate(design: dict, records: list[dict]) -> dict:
    """The Olofsson et al. (2014) estimates from the design and its labelled units, as plain numbers."""
    used, left_out = probability_records(design, records)
    assert all(r["source"] == PROBABILITY and r["design_id"] == design["design_id"] for r in used)
    strata = {s["code"]: s for s in design["strata"]}
    # Class names: the legend's (one year), the strata's "no change" / "change" (a pair of years).
    names = {int(k): v for k, v in design["reference_classes"].items()} if design["kind"] == "map" else {}
    names.update({c: s["name"] for c, s in strata.items()})
    refs = [reference_stratum(design, r) for r in used]
    classes = sorted({*strata, *refs})
    mapped = np.array([strata[c]["pixels"] if c in strata else 0 for c in classes], dtype=float)
    counts = count_matrix([int(r["stratum"]) for r in used], refs, classes)
    labelled = counts.sum(axis=1)
    short = [
        f"{names.get(c, c)} ({int(labelled[i])} of {strata[c]['n']})"
        for i, c in enumerate(classes)
        if c in strata and labelled[i] < 2
    ]
    if short:
        raise EstimationError(
            "every stratum needs at least 2 labelled points; still short: " + ", ".join(short) + " — label more"
        )
    e = stratified_estimates(counts, mapped)
    ha = design["pixel_area_m2"] / M2_PER_HA
    low, high = e.area_ci
    rows = []
    for i, c in enumerate(classes):
        rows.append(
            {
                "class_code": c,
                "class_name": names.get(c, str(c)),
                "mapped_area_ha": mapped[i] * ha,
                "sample_n": int(labelled[i]),
                "users_accuracy": _num(e.users[i]),
                "users_accuracy_ci95": _num(Z95 * e.users_se[i]),
                "producers_accuracy": _num(e.producers[i]),
                "producers_accuracy_ci95": _num(Z95 * e.producers_se[i]),
                "area_ha": e.area[i] * ha,
                "area_se_ha": e.area_se[i] * ha,
                "area_ci95_low_ha": low[i] * ha,
                "area_ci95_high_ha": high[i] * ha,
            }
        )
    return {
        "design_id": design["design_id"],
        "drawn_from_export": design.get("export_attempt"),
        "product": design["product"],
        "years": design["years"],
        "kind": design["kind"],
        "method": "stratified estimators of Olofsson et al. (2014), RSE 148: 42-57, eq. 1-11; 95 % CI = ± 1.96 SE",
        "n_labelled": len(used),
        "n_design": design["n_total"],
        "left_out_not_probability_sample": left_out,
        "overall_accuracy": e.overall,
        "overall_accuracy_ci95": Z95 * e.overall_se,
        "total_area_ha": e.total_area * ha,
        "classes": rows,
        "class_codes": classes,
        "error_matrix_proportions": e.proportions.round(8).tolist(),
        "error_matrix_counts": e.counts.astype(int).tolist(),
    }


def _num(value) -> float | None:
    return None if value is None or not np.isfinite(value) else float(value)


def store_estimates(store: TileStore, result: dict, records: list[dict], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "accuracy.json").write_text(json.dumps(result, indent=1) + "\n")
    (folder / "classes.csv").write_text(_csv_text(result["classes"]))
    names = {r["class_code"]: r["class_name"] for r in result["classes"]}
    header = ["map \\ reference", *(names[c] for c in result["class_codes"])]
    matrix = [
        dict(zip(header, [names[c], *row], strict=True))
        for c, row in zip(result["class_codes"], result["error_matrix_proportions"], strict=True)
    ]
    (folder / "error_matrix.csv").write_text(_csv_text(matrix))
    used, _ = probability_records({"design_id": result["design_id"]}, records)
    (folder / "records.csv").write_text(_csv_text(used))
    key = sample_key(tuple(result["years"]))
    digest = hashlib.sha256(json.dumps(result, sort_keys=True).encode()).hexdigest()[:16]
    store.put_files(ESTIMATE_STAGE, key, folder, digest, extra={"design_id": result["design_id"]})


def read_estimates(store: TileStore, years: tuple[int, ...]) -> dict | None:
    """The stored estimates of the year(s), or None."""
    try:
        return json.loads(store.read_file(ESTIMATE_STAGE, sample_key(years), "accuracy.json"))
    except StoreError:
        return None


def report_estimates(store: TileStore, years: list[int], change_years: tuple[int, int] | None) -> list[dict]:
    """The stored estimates of each year's map and of the change between the change years, for the report."""
    keys = [(y,) for y in years] + ([tuple(change_years)] if change_years else [])
    return [found for key in keys if (found := read_estimates(store, key)) is not None]
