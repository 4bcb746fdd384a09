"""Training in bounded memory: peak RSS and time of training on a merged dataset of Slovenia's size.

    python benchmarks/training_memory.py [--samples 10000000] [--columns 276] [--classes 10]
        [--store /tmp/lcms-training-memory] [--max-memory-gib 2.0] [--rounds 20] [--threads 2]

Slovenia's defaults (about 260 tiles × 2 years × 20 000 samples × 276 columns) make a merged
dataset of about 10 M samples; loaded whole as float32 (the old way) it is 11 GB, and the
training rows were copied once more. This benchmark:

1. writes a merged dataset of --samples synthetic rows × --columns int16 columns into a real Zarr
   store (the merge stage's product layout, zstd, 16 384-row chunks), unless the store already
   holds one of that size. The rows have class structure: each of --classes classes (drawn with
   unequal shares) has its own mean profile per column, plus Gaussian noise; the split is a
   seeded random 70 % train / 10 % validation / 20 % test (no spatial split: synthetic);
2. in a fresh subprocess, trains through `tasks.training.stage.fit_merged` (what the training
   stage runs: the int16 features read block by block into LightGBM, capped by
   training.max_memory_gib with a class-stratified subset) for at most --rounds boosting rounds,
   then predicts the test rows block by block; it prints the rows used, the seconds of each part,
   the test OA (synthetic), and the process's peak RSS (VmHWM of /proc/self/status) beside the
   RSS before training (interpreter, libraries, the small per-sample arrays).

The peak is reached while LightGBM builds its binned dataset and in the first rounds; more rounds
add time, not memory, so --rounds bounds the run time. The held-out scoring of the training stage
(every labelled pixel of the held-out area, capped by training.all_labelled_max_pixels) needs the
features and reference tiles, which this synthetic dataset lacks: it is not measured here.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lcms.layout import SAMPLE_CHUNK, SPLIT_CODES  # noqa: E402
from lcms.legend import LULC_LEGEND, NO_DATA  # noqa: E402
from lcms.store import TileStore  # noqa: E402

NAME = "land-cover"


def synthetic_columns(n_columns: int) -> list[str]:
    """Date-major names FEATURE@MM-DD, 23 dates of the 16-day grid as the features stage's."""
    dates = [np.datetime64("2023-01-01") + 16 * i for i in range(23)]
    per_date = -(-n_columns // len(dates))
    names = [f"F{j:02d}@{str(d)[5:]}" for d in dates for j in range(per_date)]
    return names[:n_columns]


def synthetic_block(rng: np.random.Generator, labels: np.ndarray, means: np.ndarray, noise: float) -> np.ndarray:
    """int16 rows (value × 10000) of the given class indices: the class's mean profile plus noise."""
    values = means[labels] + rng.normal(0.0, noise, size=(len(labels), means.shape[1])).astype(np.float32)
    return np.clip(np.rint(values * 10_000), -32_767, 32_767).astype(np.int16)


def write_synthetic_merged(
    store: TileStore, n_samples: int, n_columns: int, n_classes: int, seed: int = 0, noise: float = 0.35
) -> dict:
    """A merged dataset of synthetic rows in `store` (the merge stage's layout); returns its sizes."""
    rng = np.random.default_rng(seed)
    codes = np.array([c.code for c in LULC_LEGEND if c.code != NO_DATA][:n_classes])
    shares = rng.dirichlet(np.full(len(codes), 2.0))  # unequal class sizes, as in land cover
    labels = rng.choice(len(codes), size=n_samples, p=shares)
    means = rng.uniform(-0.5, 0.5, size=(len(codes), n_columns)).astype(np.float32)
    split = rng.choice(
        [SPLIT_CODES["train"], SPLIT_CODES["validation"], SPLIT_CODES["test"]], n_samples, p=[0.7, 0.1, 0.2]
    )
    columns = synthetic_columns(n_columns)
    legend = [{"code": c.code, "name": c.name, "color": c.color} for c in LULC_LEGEND if c.code in set(codes)]
    attrs = {
        "tile_ids": ["synthetic"],
        "years": [2023],
        "split_method": "blocks",
        "split_counts": {k: int((split == v).sum()) for k, v in SPLIT_CODES.items()},
        "block_px": 100,
        "legend": legend,
        "inputs": {},
        "features": list(dict.fromkeys(c.split("@")[0] for c in columns)),
        "date_offsets_days": [16 * i for i in range(23)],
        "synthetic": f"{n_samples} rows, {n_classes} classes, noise {noise}, seed {seed}",
    }
    coords = {"sample": np.arange(n_samples, dtype=np.int64), "column": np.array(columns)}
    with store.product_writer("merge", NAME, f"synthetic-{n_samples}-{n_columns}-{seed}", coords, attrs) as writer:
        writer.write("label", codes[labels].astype(np.uint8))
        writer.write("split", split.astype(np.uint8))
        writer.write("tile", np.zeros(n_samples, dtype=np.uint32))
        writer.write("year", np.full(n_samples, 2023, dtype=np.int16))
        writer.write("row", (np.arange(n_samples) // 10_000).astype(np.int32))
        writer.write("col", (np.arange(n_samples) % 10_000).astype(np.int32))
        step = 8 * SAMPLE_CHUNK  # whole chunks at a time
        for start in range(0, n_samples, step):
            block = synthetic_block(rng, labels[start : start + step], means, noise)
            writer.write_rows("features", block, start)
        writer.commit(extra={"n_samples": n_samples})
    return {"samples": n_samples, "columns": n_columns, "classes": int(len(codes))}


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure(store_url: str, training: dict) -> dict:
    """Train on the store's merged dataset in this process; the figures, peak RSS included."""
    from lcms.config import TrainingConfig
    from tasks.training.model import StoredRows, predict_proba
    from tasks.training.stage import fit_merged

    cfg = TrainingConfig(**training)
    merged = TileStore(store_url).open_product("merge", NAME)
    n_samples = len(merged.read("label"))
    before_kib = _status_kib("VmRSS")
    t0 = time.perf_counter()
    fitted = fit_merged(merged, cfg, NAME)
    fit_s = time.perf_counter() - t0
    after_fit_kib = _status_kib("VmHWM")
    booster = fitted.booster
    metadata = {
        "feature_names": booster.feature_name(),
        "classes": booster.lcms_classes,
        "num_iteration": booster.best_iteration or None,
    }
    t0 = time.perf_counter()
    proba = predict_proba(booster, metadata, StoredRows(merged.group["features"], fitted.test_rows))
    predict_s = time.perf_counter() - t0
    y_test = merged.read("label")[fitted.test_rows]
    oa = float((np.asarray(booster.lcms_classes)[np.argmax(proba, axis=1)] == y_test).mean())
    return {
        "samples": n_samples,
        "columns": len(metadata["feature_names"]),
        "train_rows_used": len(fitted.train_rows),
        "validation_rows_used": len(fitted.val_rows),
        "test_rows": len(fitted.test_rows),
        "rounds": booster.current_iteration(),
        "fit_seconds": round(fit_s, 1),
        "predict_test_seconds": round(predict_s, 1),
        "test_oa_synthetic": round(oa, 4),
        "rss_before_training_gib": round(before_kib / 2**20, 3),
        "peak_rss_after_fit_gib": round(after_fit_kib / 2**20, 3),
        "peak_rss_gib": round(_status_kib("VmHWM") / 2**20, 3),
    }


def measure_in_subprocess(store_url: str, training: dict) -> dict:
    """`measure` in a fresh interpreter, so that its VmHWM is training's alone."""
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); sys.path.insert(0, sys.argv[2]);"
        "from training_memory import measure; print(json.dumps(measure(sys.argv[3], json.loads(sys.argv[4]))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(REPO), str(REPO / "benchmarks"), store_url, json.dumps(training)],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"training subprocess failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=10_000_000)
    parser.add_argument("--columns", type=int, default=276)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--store", default="/tmp/lcms-training-memory")
    parser.add_argument("--max-memory-gib", type=float, default=None, help="training.max_memory_gib (default: its)")
    parser.add_argument("--rounds", type=int, default=20, help="training.num_boost_round (time, not memory)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    store = TileStore(args.store)
    record = store.product_record("merge", NAME)
    wanted = f"synthetic-{args.samples}-{args.columns}-0"
    if record is None or record.params_hash != wanted:
        t0 = time.perf_counter()
        write_synthetic_merged(store, args.samples, args.columns, args.classes)
        print(
            f"wrote {args.samples} × {args.columns} int16 synthetic rows in {time.perf_counter() - t0:.0f} s",
            flush=True,
        )
    training = {"num_boost_round": args.rounds, "num_threads": args.threads}
    if args.max_memory_gib is not None:
        training["max_memory_gib"] = args.max_memory_gib
    result = measure_in_subprocess(args.store, training)
    print(json.dumps({"training": training, **result}, indent=2))
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
