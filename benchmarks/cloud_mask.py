"""Cloud masking: LCMS (tasks/download/cloud_mask.py) beside eo-learn 1.5.7's CloudMaskTask on one synthetic tile.

    python benchmarks/cloud_mask.py [--size 500] [--dates 48] [--skip-eolearn-10m]

Renders one tile (SyntheticScene, `size` × `size` px at 10 m, `dates` acquisitions), saves
bands / data mask as .npy in a temporary folder, then runs every method in its own
subprocess, so that each reports its own peak RSS (VmHWM of that process):

* LCMS at its default (160 m analysis, cells it is unsure of refined at 40 m), and at full
  resolution (10 m);
* eo-learn 1.5.7 `eolearn.mask.extra.cloud_mask.CloudMaskTask` at its defaults. It has no
  processing-resolution parameter in 1.5.x (the old one was removed): it runs at the data
  resolution, 10 m. For a like-for-like coarse run, "eo-learn 160 m" resizes the EOPatch
  with eo-learn's own SpatialResizeTask (linear) to 160 m, runs CloudMaskTask there with
  the disks scaled to 160 m (4 and 2 px at 10 m -> none), and upsamples the mask (nearest).

eo-learn pins other versions than LCMS, so it runs in its own venv (default
benchmarks/.venv-eolearn, created with `python3 -m venv` + `pip install 'eo-learn[extra]==1.5.7'`
if missing). Seconds exclude reading the .npy files and loading the model (both sides warm
the s2cloudless booster first). The table ends with the agreement of the masks.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the shared eo-learn venv helper, also when loaded by path in tests
from eolearn_env import ensure_eolearn_venv, peak_rss_mib  # noqa: E402

REPO = HERE.parent
ORIGIN = (460_000.0, 5_100_000.0)  # upper-left corner in UTM 33N (EPSG:32633)


# --------------------------------------------------------------------------- workers (one per subprocess)


def _worker_lcms(folder: Path, analysis_m: float, out: Path) -> dict:
    import numpy as np

    from lcms.config import CloudMaskConfig
    from lcms.sentinel2 import L1C_BANDS
    from tasks.download import cloud_mask

    bands = np.load(folder / "bands.npy")  # uint16 DN, the whole tile in memory as on eo-learn's side
    data_mask = np.load(folder / "data_mask.npy")
    # Load the model outside the timing, as eo-learn's side does: compiled if this machine has it.
    model = cloud_mask.cloud_model()
    model.predict(np.zeros((1, len(cloud_mask.MODEL_BANDS)), np.float32))
    t0, c0 = time.perf_counter(), time.process_time()
    _, mask = cloud_mask.cloud_masks(
        bands, L1C_BANDS, data_mask, 10.0, CloudMaskConfig(analysis_resolution_m=analysis_m)
    )
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    figures = {"seconds": seconds, "cpu_seconds": cpu_seconds, "peak_rss_mib": peak_rss_mib(), "model": model.name}
    np.save(out, mask)
    return figures


def _worker_eolearn(folder: Path, processing_m: float, out: Path) -> dict:
    import datetime as dt

    import cv2
    import numpy as np
    from eolearn.core import EOPatch, FeatureType
    from eolearn.features.feature_manipulation import SpatialResizeTask
    from eolearn.mask.extra.cloud_mask import CloudMaskTask
    from sentinelhub import CRS, BBox

    bands = np.load(folder / "bands.npy")
    t, h, w, _ = bands.shape
    data = bands.astype(np.float32) / np.float32(10_000)  # BANDS-S2-L1C as reflectance
    del bands
    seconds = np.load(folder / "dates.npy")
    x0, y1 = ORIGIN
    patch = EOPatch(
        bbox=BBox((x0, y1 - 10 * h, x0 + 10 * w, y1), crs=CRS.UTM_33N),
        timestamps=[dt.datetime(1970, 1, 1) + dt.timedelta(seconds=int(s)) for s in seconds],
    )
    patch.data["BANDS-S2-L1C"] = data
    patch.mask["IS_DATA"] = np.load(folder / "data_mask.npy")[..., None].astype(np.uint8)
    del data

    features = dict(
        data_feature=(FeatureType.DATA, "BANDS-S2-L1C"),
        valid_data_feature=(FeatureType.MASK, "IS_DATA"),
        output_mask_feature=(FeatureType.MASK, "CLM"),
        output_proba_feature=(FeatureType.DATA, "CLP"),
    )
    if processing_m == 10:
        task = CloudMaskTask(**features)  # defaults: threshold 0.4, average_over 4, dilation_size 2
    else:
        task = CloudMaskTask(**features, average_over=None, dilation_size=None)  # 4 and 2 px at 10 m -> 0 px
    task.classifier.classifier  # noqa: B018 - load the model outside the timing
    t0, c0 = time.perf_counter(), time.process_time()
    if processing_m == 10:
        mask = task.execute(patch).mask["CLM"][..., 0]
    else:
        resize = SpatialResizeTask(
            resize_type="resolution",
            height_param=processing_m,
            width_param=processing_m,
            features=[(FeatureType.DATA, "BANDS-S2-L1C"), (FeatureType.MASK, "IS_DATA")],
        )
        coarse = task.execute(resize.execute(patch)).mask["CLM"][..., 0].astype(np.uint8)
        mask = np.stack([cv2.resize(c, (w, h), interpolation=cv2.INTER_NEAREST) for c in coarse]).astype(bool)
    seconds_taken, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    figures = {"seconds": seconds_taken, "cpu_seconds": cpu_seconds, "peak_rss_mib": peak_rss_mib()}
    np.save(out, mask)
    return figures


# --------------------------------------------------------------------------- driver


def _run(python: Path, worker: str, folder: Path, res: float, out: Path) -> dict:
    cmd = [str(python), str(Path(__file__).resolve()), "--worker", worker, "--folder", str(folder)]
    cmd += ["--res", str(res), "--out", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{worker} {res} m failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=500, help="tile side in pixels (10 m)")
    parser.add_argument("--dates", type=int, default=48, help="acquisitions in the year")
    parser.add_argument("--eolearn-venv", type=Path, default=HERE / ".venv-eolearn")
    parser.add_argument("--skip-eolearn", action="store_true", help="LCMS only")
    parser.add_argument("--skip-eolearn-10m", action="store_true", help="skip eo-learn at 10 m (the slow one)")
    parser.add_argument("--worker", choices=["lcms", "eolearn"], help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--res", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        run = _worker_lcms if args.worker == "lcms" else _worker_eolearn
        print(json.dumps(run(args.folder, args.res, args.out)))
        return

    import numpy as np

    from lcms.geometry import PixelGrid
    from tasks.download.synthetic import SyntheticScene

    with tempfile.TemporaryDirectory(prefix="lcms-cloud-bench-") as tmp:
        folder = Path(tmp)
        x0, y1 = ORIGIN
        grid = PixelGrid("EPSG:32633", (10, 0, x0, 0, -10, y1), (args.size, args.size))
        scene = SyntheticScene(seed=1, dates_per_year=args.dates)
        dates = scene.acquisition_dates(2023)
        t0 = time.perf_counter()
        tile = scene.render(grid, 2023, dates)
        np.save(folder / "bands.npy", tile.bands)
        np.save(folder / "data_mask.npy", tile.data_mask)
        np.save(folder / "dates.npy", dates.astype("datetime64[s]").astype(np.int64))
        pixel_dates = args.size**2 * len(dates)
        print(
            f"tile {args.size} × {args.size} px, {len(dates)} dates ({pixel_dates / 1e6:.1f} Mpx·dates), "
            f"rendered in {time.perf_counter() - t0:.1f} s; true cloud fraction {tile.cloud_mask.mean():.3f}",
            flush=True,
        )
        del tile

        methods = [("LCMS default (160/40 m)", "lcms", 160.0), ("LCMS 10 m", "lcms", 10.0)]
        if not args.skip_eolearn:
            eo_python = ensure_eolearn_venv(args.eolearn_venv)
            methods.append(("eo-learn 160 m (resized)", "eolearn", 160.0))
            if not args.skip_eolearn_10m:
                methods.append(("eo-learn 10 m (defaults)", "eolearn", 10.0))
        results, masks = {}, {}
        for name, worker, res in methods:
            out = folder / f"{worker}_{int(res)}.npy"
            python = Path(sys.executable) if worker == "lcms" else eo_python
            print(f"running {name} ...", flush=True)
            results[name] = _run(python, worker, folder, res, out)
            masks[name] = np.load(out)

        lcms_at = {160.0: "LCMS default (160/40 m)", 10.0: "LCMS 10 m"}
        print()
        print(f"{'method':<26}{'seconds':>9}{'Mpx·dates/s':>13}{'peak RSS MiB':>14}{'eo-learn/LCMS':>15}")
        for name, worker, res in methods:
            r = results[name]
            ratio = ""
            if worker == "eolearn":
                ratio = f"{r['seconds'] / results[lcms_at[res]]['seconds']:.1f}× time"
            speed = pixel_dates / r["seconds"] / 1e6
            print(f"{name:<26}{r['seconds']:9.2f}{speed:13.2f}{r['peak_rss_mib']:14.0f}{ratio:>15}")
        print()
        print("mask agreement (fraction of pixel·dates equal):")
        names = [n for n, _, _ in methods]
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                print(f"  {a:<26} vs {b:<26} {(masks[a] == masks[b]).mean() * 100:6.2f} %")


if __name__ == "__main__":
    main()
