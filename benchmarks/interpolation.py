"""Temporal interpolation: LCMS (tasks/features/temporal.py) beside eo-learn 1.5.7's LinearInterpolationTask.

    python benchmarks/interpolation.py [--size 500] [--dates 48] [--features 1 12] [--step 16]

Builds one synthetic block (`size` × `size` px, `dates` acquisitions in 2023, NDVI-like
seasonal curves plus noise, ~30 % of pixel·dates invalid in cloud blobs), saves values /
valid mask / times / target dates as .npy in a temporary folder, then runs each method in
its own subprocess, so that each reports its own peak RSS (VmHWM of that process).
Both run single-threaded (OMP/MKL/OPENBLAS/NUMBA threads = 1), so the ratio is per core.

* LCMS: `tasks.features.temporal.interpolate` on the whole block at once;
* eo-learn 1.5.7: `eolearn.features.extra.interpolation.LinearInterpolationTask` with the
  valid mask as `mask_feature` and the same target dates as `resample_range`. Its numba
  kernel is compiled on a tiny patch first, outside the timing ("warm"); the compile time
  is printed separately.

Seconds exclude reading the .npy files and importing. Acquisitions are at midnight UTC so
that eo-learn's time convention (hours since the first timestamp, targets counted from that
timestamp's date) coincides with the true times, and the table ends with the agreement of
the two outputs wherever eo-learn defines a value (it leaves NaN outside each pixel's first
/ last valid observation, where LCMS clamps to the nearest valid value).

eo-learn pins other versions than LCMS, so it runs in its own venv (default
benchmarks/.venv-eolearn, created as benchmarks/cloud_mask.py does if missing). The test
suite (tests/test_temporal.py) uses the same worker to check agreement on real data.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the shared eo-learn venv helper, also when loaded by path in tests
from eolearn_env import ensure_eolearn_venv, peak_rss_mib  # noqa: E402

REPO = HERE.parent
SINGLE_THREAD = {
    name: "1" for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS")
}


# --------------------------------------------------------------------------- workers (one per subprocess)
# Inputs in `folder`: values.npy float32 (t, y, x, f), valid.npy bool (t, y, x),
# times.npy / targets.npy int64 seconds since 1970 (UTC). Output: float32 (t', y, x, f).


def _worker_lcms(folder: Path, out: Path, repeats: int) -> dict:
    import numpy as np

    sys.path.insert(0, str(REPO))
    from tasks.features.temporal import interpolate

    values = np.load(folder / "values.npy")
    valid = np.load(folder / "valid.npy")
    times = np.load(folder / "times.npy").astype("datetime64[s]")
    targets = np.load(folder / "targets.npy").astype("datetime64[s]")
    runs, cpu, result = [], [], None
    for _ in range(repeats):
        result = None  # let the previous result go before the next run
        t0, c0 = time.perf_counter(), time.process_time()
        result, _ = interpolate(values, times, valid, targets)
        runs.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    best = runs.index(min(runs))
    figures = {
        "seconds": runs[best],
        "first_seconds": runs[0],
        "cpu_seconds": cpu[best],
        "peak_rss_mib": peak_rss_mib(),
    }
    np.save(out, result)
    return figures


def _eolearn_patch(values, valid, times):
    import datetime as dt

    from eolearn.core import EOPatch, FeatureType
    from sentinelhub import CRS, BBox

    epoch = dt.datetime(1970, 1, 1)
    _, h, w, _ = values.shape
    patch = EOPatch(
        bbox=BBox((0, 0, 10 * w, 10 * h), crs=CRS.UTM_33N),
        timestamps=[epoch + dt.timedelta(seconds=int(s)) for s in times],
    )
    patch[FeatureType.DATA, "FEATURES"] = values
    patch[FeatureType.MASK, "VALID"] = valid[..., None]
    return patch


def _worker_eolearn(folder: Path, out: Path, repeats: int) -> dict:
    import datetime as dt
    import warnings

    import numpy as np
    from eolearn.core import FeatureType
    from eolearn.features.extra.interpolation import LinearInterpolationTask

    warnings.filterwarnings("ignore")
    values = np.load(folder / "values.npy")
    valid = np.load(folder / "valid.npy")
    times = np.load(folder / "times.npy")
    epoch = dt.datetime(1970, 1, 1)
    targets = [epoch + dt.timedelta(seconds=int(s)) for s in np.load(folder / "targets.npy")]

    def task() -> LinearInterpolationTask:
        return LinearInterpolationTask(
            (FeatureType.DATA, "FEATURES"), mask_feature=(FeatureType.MASK, "VALID"), resample_range=targets
        )

    # compile the numba kernel on a 2 × 2 px patch of the same dtypes, outside the timing
    t0 = time.perf_counter()
    task().execute(_eolearn_patch(values[:, :2, :2].copy(), valid[:, :2, :2].copy(), times))
    compile_seconds = time.perf_counter() - t0

    patch = _eolearn_patch(values, valid, times)
    del values, valid
    runs, cpu, result = [], [], None
    for _ in range(repeats):
        result = None  # let the previous result go before the next run, as on the LCMS side
        t0, c0 = time.perf_counter(), time.process_time()
        result = task().execute(patch)[FeatureType.DATA, "FEATURES"]
        runs.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    best = runs.index(min(runs))
    figures = {
        "seconds": runs[best],
        "first_seconds": runs[0],
        "cpu_seconds": cpu[best],
        "peak_rss_mib": peak_rss_mib(),
        "compile_seconds": compile_seconds,
    }
    np.save(out, result.astype(np.float32))
    return figures


# --------------------------------------------------------------------------- driver (also used by the tests)


def run_worker(python: Path, worker: str, folder: Path, out: Path, repeats: int = 1) -> dict:
    """Run one worker in its own single-threaded subprocess; returns its figures."""
    cmd = [str(python), str(Path(__file__).resolve()), "--worker", worker, "--folder", str(folder), "--out", str(out)]
    cmd += ["--repeats", str(repeats)]
    env = {**os.environ, **SINGLE_THREAD}
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{worker} worker failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def save_inputs(folder: Path, values, valid, times, targets) -> None:
    """Write a worker's inputs; times / targets as datetime64 (any unit)."""
    import numpy as np

    np.save(folder / "values.npy", np.asarray(values, np.float32))
    np.save(folder / "valid.npy", np.asarray(valid, bool))
    np.save(folder / "times.npy", np.asarray(times).astype("datetime64[s]").astype(np.int64))
    np.save(folder / "targets.npy", np.asarray(targets).astype("datetime64[s]").astype(np.int64))


def synthetic_block(size: int, n_dates: int, n_features: int, seed: int = 1):
    """NDVI-like seasonal curves with noise, and ~30 % invalid pixel·dates in smooth cloud blobs."""
    import numpy as np
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    year_start = np.datetime64("2023-01-01T00:00:00", "s")
    days = np.sort(rng.choice(365, n_dates, replace=False))
    times = year_start + (days * 86400).astype("timedelta64[s]")
    doy = days.astype(np.float32)[:, None, None]

    # a few land-cover-like regions, each with its own green-up date and amplitude
    coarse = max(size // 50, 2)
    region = ndimage.zoom(rng.random((coarse, coarse)), size / coarse, order=0)[:size, :size]
    peak = (140 + 80 * region).astype(np.float32)
    amplitude = (0.2 + 0.6 * region[::-1]).astype(np.float32)
    ndvi = 0.1 + amplitude * np.exp(-(((doy - peak) / 45) ** 2))  # (t, y, x)
    values = np.empty((n_dates, size, size, n_features), np.float32)
    for i in range(n_features):  # feature i: a scaled / shifted variant of the curve, with noise
        values[..., i] = ndvi * (1 + 0.1 * i) - 0.02 * i + rng.normal(0, 0.02, ndvi.shape).astype(np.float32)

    # clouds: smooth random fields thresholded per date, cover varying from clear to overcast
    cover = np.clip(rng.beta(0.8, 1.6, n_dates), 0, 1)
    blob = max(size // 25, 2)
    valid = np.empty((n_dates, size, size), bool)
    for k in range(n_dates):
        field = ndimage.zoom(rng.random((blob, blob)), size / blob, order=1)[:size, :size]
        valid[k] = field >= np.quantile(field, cover[k])
    return values, valid, times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=500, help="block side in pixels")
    parser.add_argument("--dates", type=int, default=48, help="acquisitions in the year")
    parser.add_argument("--features", type=int, nargs="+", default=[1, 12], help="feature counts to run")
    parser.add_argument("--step", type=int, default=16, help="date grid step, days")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per method (best one reported)")
    parser.add_argument("--eolearn-venv", type=Path, default=HERE / ".venv-eolearn")
    parser.add_argument("--skip-eolearn", action="store_true", help="LCMS only")
    parser.add_argument("--worker", choices=["lcms", "eolearn"], help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        run = _worker_lcms if args.worker == "lcms" else _worker_eolearn
        print(json.dumps(run(args.folder, args.out, args.repeats)))
        return

    import numpy as np

    sys.path.insert(0, str(REPO))
    from lcms.config import DateGridConfig
    from tasks.features.temporal import date_grid

    targets = date_grid(2023, DateGridConfig(step_days=args.step))
    eo_python = None if args.skip_eolearn else ensure_eolearn_venv(args.eolearn_venv)
    rows = []
    for n_features in args.features:
        with tempfile.TemporaryDirectory(prefix="lcms-interp-bench-") as tmp:
            folder = Path(tmp)
            values, valid, times = synthetic_block(args.size, args.dates, n_features)
            save_inputs(folder, values, valid, times, targets)
            pixel_dates = args.size**2 * args.dates
            print(
                f"block {args.size} × {args.size} px, {args.dates} dates, {n_features} feature(s) "
                f"({pixel_dates / 1e6:.1f} Mpx·dates, {values.nbytes / 2**20:.0f} MiB), "
                f"{len(targets)} target dates; invalid fraction {1 - valid.mean():.3f}",
                flush=True,
            )
            del values, valid
            print("  running LCMS ...", flush=True)
            lcms = run_worker(Path(sys.executable), "lcms", folder, folder / "lcms.npy", args.repeats)
            rows.append((f"LCMS, f={n_features}", lcms, "", pixel_dates))
            if eo_python is not None:
                print("  running eo-learn ...", flush=True)
                eo = run_worker(eo_python, "eolearn", folder, folder / "eolearn.npy", args.repeats)
                ratio = f"{eo['seconds'] / lcms['seconds']:.1f}× ({eo['first_seconds'] / lcms['first_seconds']:.1f}×)"
                rows.append((f"eo-learn, f={n_features}", eo, ratio, pixel_dates))
                a, b = np.load(folder / "lcms.npy"), np.load(folder / "eolearn.npy")
                both = ~np.isnan(b)
                print(
                    f"  agreement where eo-learn defines a value ({both.mean() * 100:.1f} % of outputs): "
                    f"max |LCMS − eo-learn| = {np.abs(a[both] - b[both]).max():.2e}; "
                    f"eo-learn NaN where LCMS has a value: {(np.isnan(b) & ~np.isnan(a)).mean() * 100:.1f} %; "
                    f"numba compile {eo['compile_seconds']:.1f} s (not timed)",
                    flush=True,
                )

    print()
    print(f"best of {args.repeats} runs; (first run) in brackets: a fresh process pays for touching new memory")
    print(
        f"{'method':<18}{'seconds':>9}{'(first)':>9}{'Mpx·dates/s':>13}{'peak RSS MiB':>14}"
        f"{'eo-learn/LCMS (first)':>23}"
    )
    for name, r, ratio, pixel_dates in rows:
        speed = pixel_dates / r["seconds"] / 1e6
        first = f"({r['first_seconds']:.3f})"
        print(f"{name:<18}{r['seconds']:9.3f}{first:>9}{speed:13.1f}{r['peak_rss_mib']:14.0f}{ratio:>23}")


if __name__ == "__main__":
    main()
