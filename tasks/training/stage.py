"""Training stage, AOI level: a model from the merged dataset, validated on its test split.

Plain functions, no Prefect: the flow in flows/training.py wraps them. The model-level work
(LightGBM, model files) is in tasks/training/model.py, the validation (metrics, plots) in
tasks/training/metrics.py; this module reads the merged dataset, checks that it can train a
classifier, and stores the result as one file product:
``training/<name>/`` with model.txt, model.json, metrics.json, metrics.md and the PNG plots.

The model is scored twice, side by side: on the merged dataset's test samples (drawn from the
eroded reference) and on every labelled pixel of the held-out area (the un-eroded reference,
tasks/training/holdout.py), which is what a map user meets, class borders included.

Memory is bounded by `TrainingConfig.max_memory_gib`, not by the AOI: the merged dataset's int16
features are read block by block (`StoredRows`) into LightGBM's binned dataset and predicted block
by block; when the training + validation rows would need more than the setting, a class-stratified
random subset of them that fits is used (`training_row_cap`, `stratified_rows`), and metrics.json
says how many.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lcms.config import TrainingConfig, params_hash
from lcms.layout import SPLIT_CODES
from lcms.legend import LegendClass
from lcms.store import DoneRecord, TileStore
from tasks.training.model import (
    METADATA_FILE,
    StoredRows,
    load_model,
    save_model,
    stratified_rows,
    train_with_config,
    training_row_cap,
)

log = logging.getLogger(__name__)

STAGE = "training"
INPUT_STAGE = "merge"
SUMMARY_FILE = "metrics.md"


class TrainingError(ValueError):
    """A merged dataset that cannot train or validate a classifier; the message says what to change."""


def training_params_hash(cfg: TrainingConfig, merge_record: DoneRecord) -> str:
    return params_hash(cfg, merge_record.params_hash, merge_record.attempt)


def training_product_hash(config, store: TileStore, tiles) -> str:
    """What the product's model depends on: the training settings and the merged dataset's version
    (the training stage's staleness rule, lcms/stages.py)."""
    dataset = store.product_record(INPUT_STAGE, config.product)
    return training_params_hash(config.training, dataset) if dataset is not None else "no merged dataset"


def _class_counts(y: np.ndarray) -> dict[int, int]:
    classes, counts = np.unique(y, return_counts=True)
    return {int(c): int(n) for c, n in zip(classes, counts, strict=True)}


def capped_rows(
    y: np.ndarray, train: np.ndarray, val: np.ndarray, cfg: TrainingConfig, n_columns: int, n_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """The training and validation rows to use: all of them, or a class-stratified subset of each
    (in proportion to their sizes) when LightGBM's data would exceed `cfg.max_memory_gib`."""
    train_rows, val_rows = np.flatnonzero(train), np.flatnonzero(val)
    n = len(train_rows) + len(val_rows)
    bins = int(cfg.lightgbm_params.get("max_bin", 255))
    cap = training_row_cap(cfg.max_memory_gib, n_columns, n_classes, bins)
    if n <= cap:
        return train_rows, val_rows
    train_cap = max(1, cap * len(train_rows) // n)
    train_rows = stratified_rows(train_rows, y[train_rows], train_cap, cfg.seed)
    val_rows = stratified_rows(val_rows, y[val_rows], max(1, cap - train_cap), cfg.seed + 1)
    log.info(
        "training.max_memory_gib %.2f fits %d of %d training + validation rows: a class-stratified subset is used",
        cfg.max_memory_gib,
        len(train_rows) + len(val_rows),
        n,
    )
    return train_rows, val_rows


@dataclass(frozen=True)
class FittedModel:
    """A model trained on a merged dataset, with the rows it used (indices into the dataset)."""

    booster: Any
    train_rows: np.ndarray
    val_rows: np.ndarray
    test_rows: np.ndarray  # test samples of classes the model learnt
    dropped: dict  # validation / test samples of classes absent from training, by class
    seconds: float


def fit_merged(merged, cfg: TrainingConfig, name: str = "") -> FittedModel:
    """Check the merged dataset (the merge stage's reader) and train on it, block by block."""
    features = merged.group["features"]  # int16 on disk, read block by block, never whole
    y = merged.read("label")
    split = merged.read("split")
    columns = [str(c) for c in merged.coord("column")]
    train, val, test = (split == SPLIT_CODES[k] for k in ("train", "validation", "test"))

    train_classes = np.unique(y[train])
    if train_classes.size < 2:
        raise TrainingError(
            f"the training split of {name!r} has {train_classes.size} class(es) {train_classes.tolist()}: "
            "a classifier needs at least two. Check the reference's classes, sample more pixels "
            "(sampling.count or fraction) or cover more of the AOI with reference polygons"
        )
    if not val.any():
        raise TrainingError(
            f"the merged dataset {name!r} has no validation split for early stopping: "
            "set merge.validation_fraction above 0 and rerun the merge stage"
        )
    if not test.any():
        raise TrainingError(f"the merged dataset {name!r} has no test split: rerun the merge stage")
    # A class the model never saw cannot be scored or used to stop; they are dropped and reported.
    seen = np.isin(y, train_classes)
    dropped = {
        "validation": _class_counts(y[val & ~seen]),
        "test": _class_counts(y[test & ~seen]),
    }
    val &= seen
    test_seen = test & seen
    if not val.any() or not test_seen.any():
        raise TrainingError(
            f"after dropping classes absent from training ({dropped}), the validation or test split of "
            f"{name!r} is empty; use more tiles or another merge.split"
        )

    train_rows, val_rows = capped_rows(y, train, val, cfg, len(columns), train_classes.size)
    start = time.perf_counter()
    booster = train_with_config(
        StoredRows(features, train_rows), y[train_rows], StoredRows(features, val_rows), y[val_rows], columns, cfg
    )
    seconds = time.perf_counter() - start
    return FittedModel(booster, train_rows, val_rows, np.flatnonzero(test_seen), dropped, seconds)


def training_stage(store: TileStore, name: str, cfg: TrainingConfig) -> tuple[DoneRecord, dict]:
    """Train, validate and store the model `name` from the merged dataset of the same name."""
    merged = store.open_product(INPUT_STAGE, name)
    features = merged.group["features"]
    y = merged.read("label")
    split = merged.read("split")
    legend = [LegendClass(c["code"], c["name"], c["color"]) for c in merged.attrs["legend"]]
    fitted = fit_merged(merged, cfg, name)
    booster, train_rows, val_rows = fitted.booster, fitted.train_rows, fitted.val_rows
    dropped, seconds = fitted.dropped, fitted.seconds

    lineage = {
        "store": store.url,
        "dataset": name,
        "dataset_attempt": merged.record.attempt,
        "dataset_params_hash": merged.record.params_hash,
        "years": merged.attrs["years"],
        "split_method": merged.attrs["split_method"],
        "features": merged.attrs["features"],
        "date_offsets_days": merged.attrs["date_offsets_days"],
        "tiles": merged.attrs["tile_ids"],
        "samples": {k: int((split == code).sum()) for k, code in SPLIT_CODES.items()},
        "samples_used": {"train": len(train_rows), "validation": len(val_rows)},
        "dropped_unseen_classes": dropped,
        "training_config": cfg.model_dump(mode="json"),
    }
    # Imported here: scoring needs matplotlib, rasterio and scikit-learn, which the prediction workers that
    # import this module for `fetch_model` need not hold in memory.
    from tasks.training.holdout import held_out_pixels
    from tasks.training.metrics import evaluate, metrics_markdown

    with tempfile.TemporaryDirectory(prefix="lcms-model-") as tmp:
        folder = Path(tmp)
        save_model(booster, folder, legend, booster.lcms_classes, lineage)
        _, metadata = load_model(folder)  # evaluate the model exactly as it was saved
        held_out = held_out_pixels(store, merged, metadata["classes"], cfg.all_labelled_max_pixels, cfg.seed)
        all_labelled = (StoredRows(held_out.X), held_out.y) if held_out.n_scored else None
        metrics = evaluate(
            booster,
            metadata,
            StoredRows(features, fitted.test_rows),
            y[fitted.test_rows],
            folder,
            y_train=y[train_rows],
            all_labelled=all_labelled,
            interior=held_out.interior if all_labelled else None,
        )
        capped = held_out.n_scored < held_out.n_labelled
        metrics.update(
            test_samples_description=(
                f"the {metrics['n_samples']} test samples of the merged dataset (split by "
                f"{merged.attrs['split_method']}; sampled from the reference stage's labels_eroded, "
                "i.e. after its erosion_px)"
            ),
            all_labelled_description=(
                f"every labelled pixel of the held-out area ({held_out.n_labelled} pixels of the un-eroded "
                "reference with a valid observation, class borders included"
                + (f"; a random {held_out.n_scored} of them scored" if capped else "")
                + ")"
            ),
            all_labelled_unseen_classes=held_out.unseen,
        )
        if all_labelled is None:
            log.warning("model %s: the held-out area has no labelled pixel to score", name)
        metrics.update(
            training_seconds=round(seconds, 3),
            split_method=merged.attrs["split_method"],
            samples=lineage["samples"],
            samples_used=lineage["samples_used"],
            dropped_unseen_classes=dropped,
        )
        summary = metrics_markdown(metrics) + (
            f"\nSplit by {merged.attrs['split_method']}: {lineage['samples']} samples; "
            f"{booster.best_iteration} trees per class; trained in {seconds:.1f} s.\n"
        )
        (folder / SUMMARY_FILE).write_text(summary)
        (folder / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        record = store.put_files(
            STAGE,
            name,
            folder,
            training_params_hash(cfg, merged.record),
            extra={
                "overall_accuracy": metrics["overall_accuracy"],
                "kappa": metrics["kappa"],
                "macro_f1": metrics["macro_f1"],
                **(
                    {
                        "all_labelled_overall_accuracy": metrics["all_labelled"]["overall_accuracy"],
                        "all_labelled_kappa": metrics["all_labelled"]["kappa"],
                        "all_labelled_macro_f1": metrics["all_labelled"]["macro_f1"],
                        "all_labelled_pixels": metrics["all_labelled"]["n_samples"],
                        "interior_overall_accuracy": (metrics.get("interior") or {}).get("overall_accuracy"),
                    }
                    if "all_labelled" in metrics
                    else {}
                ),
                "classes": metadata["classes"],
                "training_seconds": round(seconds, 3),
            },
        )
    log.info("model %s: OA %.3f on %d test samples", name, metrics["overall_accuracy"], metrics["n_samples"])
    if "all_labelled" in metrics:
        everything = metrics["all_labelled"]
        log.info(
            "model %s: OA %.3f, macro F1 %.3f on every labelled pixel of the held-out area (%d)",
            name,
            everything["overall_accuracy"],
            everything["macro_f1"],
            everything["n_samples"],
        )
    return record, metrics


def fetch_model(store: TileStore, name: str, folder: Path, version: str | None = None):
    """The stored model `name` (its current version, or `version`) as (booster, metadata), via a local folder."""
    store.get_files(STAGE, name, folder, version)
    if not (Path(folder) / METADATA_FILE).exists():
        raise TrainingError(f"the stored model {name!r} lacks {METADATA_FILE}; rerun the training stage")
    return load_model(folder)
