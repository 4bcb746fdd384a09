"""Cloud masks on real Sentinel-2 L1C data: agreement with full resolution, and time, per analysis resolution.

    .venv/bin/python benchmarks/cloud_mask_real.py [--repeats 3] [--out benchmarks/results/cloud_mask_real.json]

Data: ../shared/data/slovenia-testpatch, one 101 × 100 px (1 km²) patch in Slovenia at 10 m.

* **real**: its five real L1C scenes (13 bands, top-of-atmosphere reflectance). Two are
  wholly cloudy and three clear, so they have no cloud edges: every method agrees on them,
  which says little about edges.
* **composite**: real spectra with real cloud shapes. The patch's eo-learn s2cloudless
  probabilities (`data/CLP.npy`) of its 18 partly cloudy frames (cloud cover 3-97 % in
  `mask/CLM.npy`) are used as a cloud fraction `a` per pixel: composite = a × cloudy scene +
  (1 - a) × clear scene, for each of the 2 cloudy and 3 clear real scenes: 108 scenes,
  1.09 Mpx. The clouds (thick, thin and hazy edges) are real shapes at 10 m; the mixing is
  linear, so it is not a real acquisition. Every composite is partly cloudy: the worst case.
* **year**: the patch's 68 acquisitions (2015-2017) with their own cloud cover, as a year
  of real acquisitions would mix them: a real clear scene where eo-learn's CLM says clear
  (30), a real overcast scene where it says overcast (20), the frame's composite otherwise
  (18).

Each method is `tasks.download.cloud_mask.cloud_masks` on all pixels of all scenes of a set
(cells on the lattice of EPSG:32633, as in the download stage) with one thread (OMP, LightGBM);
seconds are CPU seconds of the process (the machine may be shared), best of `--repeats` runs
(one for runs over 5 s), model loaded before timing. Columns: agreement
and IoU with the 10 m mask of the same set (s2cloudless at eo-learn's defaults); agreement with
eo-learn's CLM (real: the same frames' `mask/CLM.npy`; composite: the CLM of the frame whose
probabilities gave the cloud shape); seconds; speed-up over 10 m.

Shadows: the default mask's clouds projected with the sun of each acquisition (computed from
its time, `shadow.sun_position`); neither set has cloud shadows (the real cloudy scenes are
overcast, the composites are mixed without shadows), so every shadow pixel found is a false
one: the table gives their share. A PNG (`--png`) shows the cloud (red) and shadow (blue)
masks over true colour for the five real scenes and four composites, with the 10 m mask's outline.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

# One thread for the model (per-core figures), set before LightGBM is loaded.
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from lcms.config import CloudMaskConfig  # noqa: E402
from lcms.geometry import PixelGrid  # noqa: E402
from lcms.sentinel2 import L1C_BANDS, REFLECTANCE_SCALE  # noqa: E402
from tasks.download import cloud_mask, shadow  # noqa: E402

DATA = REPO.parent / "shared" / "data" / "slovenia-testpatch"
# The patch's grid (eopatch/bbox.geojson): its corner is not on the 10 m lattice; the nearest node is used.
GRID = PixelGrid("EPSG:32633", (10.0, 0.0, 465181.0522318204, 0.0, -10.0, 5080254.63349641), (101, 100))
CLOUDY, CLEAR = (0, 1), (2, 3, 4)  # indices of l1c_scenes.npy (l1c_scenes_timestamps.json)

METHODS: list[tuple[str, dict]] = [
    ("10 m (full resolution)", {"analysis_resolution_m": 10}),
    ("20 m", {"analysis_resolution_m": 20, "refine_resolution_m": None}),
    ("40 m", {"analysis_resolution_m": 40, "refine_resolution_m": None}),
    ("60 m", {"analysis_resolution_m": 60, "refine_resolution_m": None}),
    ("80 m", {"analysis_resolution_m": 80, "refine_resolution_m": None}),
    ("160 m", {"analysis_resolution_m": 160, "refine_resolution_m": None}),
    ("160 m, refined at 10 m", {"analysis_resolution_m": 160, "refine_resolution_m": 10}),
    ("160 m, refined at 20 m", {"analysis_resolution_m": 160, "refine_resolution_m": 20}),
    ("160 m, refined at 40 m", {"analysis_resolution_m": 160, "refine_resolution_m": 40}),
    ("80 m, refined at 20 m", {"analysis_resolution_m": 80, "refine_resolution_m": 20}),
]


def load_sets() -> dict:
    """The two scene sets: uint16 DN (n, y, x, 13), eo-learn's CLM for each scene, acquisition times."""
    meta = json.loads((DATA / "l1c_scenes_timestamps.json").read_text())
    assert tuple(meta["band_order"]) == L1C_BANDS
    refl = np.load(DATA / "l1c_scenes.npy")
    frames_of = [meta["index_to_eopatch_time_index"][str(i)] for i in range(len(refl))]
    times = np.array([meta["index_to_timestamp"][str(i)] for i in range(len(refl))], dtype="datetime64[s]")
    clm = np.load(DATA / "eopatch" / "mask" / "CLM.npy")[..., 0].astype(bool)
    clp = np.load(DATA / "eopatch" / "data" / "CLP.npy")[..., 0]
    cover = clm.reshape(len(clm), -1).mean(axis=1)
    partly = [int(f) for f in np.flatnonzero((cover > 0.03) & (cover < 0.97))]

    def dn(r):
        return np.rint(r * REFLECTANCE_SCALE).astype(np.uint16)

    comp, comp_clm, comp_times, names = [], [], [], []
    for c in CLOUDY:
        for k in CLEAR:
            for f in partly:
                a = clp[f][..., None]
                comp.append(dn(a * refl[c] + (1 - a) * refl[k]))
                comp_clm.append(clm[f])
                comp_times.append(times[k])
                names.append(f"cloudy {c} over clear {k}, shape of frame {f}")
    # The patch's 68 acquisitions (2015-2017) with their own cloud cover: a real clear scene where
    # eo-learn's CLM is clear, a real overcast scene where it is overcast, a composite with the
    # frame's own cloud shape otherwise.
    year, year_clm, year_times = [], [], []
    for f in range(len(clm)):
        k = CLEAR[f % len(CLEAR)]
        if cover[f] <= 0.03:
            year.append(dn(refl[k]))
        elif cover[f] >= 0.97:
            year.append(dn(refl[CLOUDY[f % len(CLOUDY)]]))
        else:
            a = clp[f][..., None]
            year.append(dn(a * refl[CLOUDY[f % len(CLOUDY)]] + (1 - a) * refl[k]))
        year_clm.append(clm[f])
        year_times.append(times[k])
    n_clear, n_overcast = int((cover <= 0.03).sum()), int((cover >= 0.97).sum())
    return {
        "year": {
            "bands": np.stack(year),
            "clm": np.stack(year_clm),
            "times": np.array(year_times),
            "what": f"the patch's {len(clm)} acquisitions with their own cloud cover: {n_clear} clear -> a real "
            f"clear scene, {n_overcast} overcast -> a real overcast scene, {len(clm) - n_clear - n_overcast} partly "
            "cloudy -> a composite with the frame's cloud shape",
            "clear_bands": dn(refl[list(CLEAR)]),
            "clear_times": times[list(CLEAR)],
        },
        "real": {
            "bands": dn(refl),
            "clm": clm[frames_of],
            "times": times,
            "what": "5 real L1C scenes (2 overcast, 3 clear), 101 x 100 px each",
        },
        "composite": {
            "bands": np.stack(comp),
            "clm": np.stack(comp_clm),
            "times": np.array(comp_times),
            "what": f"{len(comp)} composites: 2 cloudy x 3 clear real scenes x {len(partly)} real cloud shapes "
            f"(CLP of frames {partly})",
            "clear_bands": dn(refl[list(CLEAR)]),
            "clear_times": times[list(CLEAR)],
        },
        "frames": partly,
    }


def run(bands: np.ndarray, cfg: CloudMaskConfig, repeats: int) -> tuple[np.ndarray, np.ndarray, float]:
    data_mask = np.ones(bands.shape[:3], bool)
    origin = cloud_mask.lattice_origin(GRID)
    best = np.inf
    for _ in range(repeats):
        # CPU time of this process: the machine is shared, and with one thread it is the work done.
        t0 = time.process_time()
        prob, mask = cloud_mask.cloud_masks(bands, L1C_BANDS, data_mask, 10.0, cfg, origin=origin)
        best = min(best, time.process_time() - t0)
        if best > 5:
            break
    return prob, mask, best


def shadows_of(bands, cloud, times, cfg, clear_bands=None, clear_times=None) -> np.ndarray:
    """Shadow masks of each scene: the scene with the set's clear scenes as its year (dark reference)."""
    sun_all = np.stack(shadow.sun_position(times, *shadow.grid_lonlat(GRID)), axis=-1)
    h, w = GRID.shape
    region = (slice(0, h), slice(0, w))
    if clear_bands is None:  # the real set is its own time series
        ts = shadow.TileShadows(GRID, len(bands), sun_all, L1C_BANDS, cfg)
        ts.add(region, bands, np.ones(cloud.shape, bool), cloud)
        ts.finish()
        return ts.masks(region)
    out = np.zeros(cloud.shape, bool)
    clear_sun = np.stack(shadow.sun_position(clear_times, *shadow.grid_lonlat(GRID)), axis=-1)
    for i in range(len(bands)):
        stack = np.concatenate([bands[i : i + 1], clear_bands])
        clouds = np.concatenate([cloud[i : i + 1], np.zeros((len(clear_bands), h, w), bool)])
        ts = shadow.TileShadows(GRID, len(stack), np.concatenate([sun_all[i : i + 1], clear_sun]), L1C_BANDS, cfg)
        ts.add(region, stack, np.ones(clouds.shape, bool), clouds)
        ts.finish()
        out[i] = ts.masks(region)[0]
    return out


def write_png(path: Path, sets: dict, masks: dict, shadows: dict, full: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("real", i, f"real scene {i} ({str(sets['real']['times'][i])[:10]})") for i in range(5)]
    picks = [0, 20, 60, 95]
    panels += [("composite", i, f"composite {i}") for i in picks]
    fig, axes = plt.subplots(2, 5, figsize=(15, 7.4))
    rgb_index = [L1C_BANDS.index(b) for b in ("B04", "B03", "B02")]
    for ax, (name, i, title) in zip(axes.ravel(), panels, strict=False):
        rgb = np.clip(sets[name]["bands"][i][..., rgb_index] / 10_000 * 3.0, 0, 1)
        over = rgb.copy()
        cloud, shade = masks[name][i], shadows[name][i]
        over[cloud] = 0.55 * over[cloud] + 0.45 * np.array([1.0, 0.1, 0.1])
        over[shade] = 0.45 * over[shade] + 0.55 * np.array([0.1, 0.3, 1.0])
        ax.imshow(over, interpolation="nearest")
        ax.contour(full[name][i], levels=[0.5], colors="yellow", linewidths=0.8)
        ax.set_title(f"{title}\ncloud {cloud.mean():.0%}, shadow {shade.mean():.1%}", fontsize=9)
        ax.axis("off")
    for ax in axes.ravel()[len(panels) :]:
        ax.axis("off")
    fig.suptitle(
        "Default cloud mask (red), cloud-shadow mask (blue), s2cloudless at 10 m (yellow outline) over true colour:"
        " Slovenia test patch, 1 km, 10 m",
        fontsize=11,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="timing runs per method (best is kept)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "cloud_mask_real.json")
    parser.add_argument("--png", type=Path, default=HERE / "results" / "cloud_shadow_masks_slovenia.png")
    args = parser.parse_args()

    sets = load_sets()
    model = cloud_mask.cloud_model()  # load the model outside the timing: compiled if this machine has it
    default = CloudMaskConfig()
    methods = [*METHODS, (f"default ({default.analysis_resolution_m:g} m, refined at "
                          f"{default.refine_resolution_m or 'none'} m)", {})]  # fmt: skip
    report = {"grid": GRID.to_attrs(), "threads": os.environ["OMP_NUM_THREADS"], "model": model.name, "sets": {}}
    masks, shadows, full = {}, {}, {}
    for name in ("real", "composite", "year"):
        s = sets[name]
        n, h, w, _ = s["bands"].shape
        print(f"\n{name}: {s['what']}; {n * h * w / 1e6:.2f} Mpx", flush=True)
        print(f"{'method':<34}{'agree 10 m':>11}{'IoU 10 m':>10}{'agree CLM':>11}{'seconds':>9}{'speed-up':>10}")
        rows = []
        ref = None
        for label, kw in methods:
            _, mask, seconds = run(
                s["bands"],
                CloudMaskConfig(**kw),
                1 if kw.get("analysis_resolution_m") == 10 else args.repeats,
            )
            if ref is None:
                ref, ref_seconds = mask, seconds
                full[name] = mask
            union = (mask | ref).sum()
            row = {
                "method": label,
                "config": kw,
                "agreement_10m": float((mask == ref).mean()),
                "iou_10m": float((mask & ref).sum() / union) if union else 1.0,
                "agreement_clm": float((mask == s["clm"]).mean()),
                "seconds": seconds,
                "speedup_vs_10m": ref_seconds / seconds,
                "cloud_fraction": float(mask.mean()),
            }
            rows.append(row)
            if not kw:
                masks[name] = mask
            print(
                f"{label:<34}{row['agreement_10m']:>10.2%}{row['iou_10m']:>10.3f}{row['agreement_clm']:>10.2%}"
                f"{seconds:>9.2f}{row['speedup_vs_10m']:>9.1f}×",
                flush=True,
            )
        shadows[name] = shadows_of(
            s["bands"], masks[name], s["times"], default, s.get("clear_bands"), s.get("clear_times")
        )
        false_shadow = float(shadows[name].mean())
        print(f"shadow pixels found with the default mask (none are true: see --help): {false_shadow:.2%}")
        report["sets"][name] = {"what": s["what"], "pixels": n * h * w, "rows": rows, "false_shadow": false_shadow}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    write_png(args.png, sets, masks, shadows, full)
    print(f"\nwrote {args.out} and {args.png}")


if __name__ == "__main__":
    main()
