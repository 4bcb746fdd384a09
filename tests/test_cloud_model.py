"""The s2cloudless model compiled to C (tasks/download/cloud_model.py): LightGBM's probabilities bit for bit
on real rows and on the model's own thresholds, the same cloud masks, the cache, and `lcms compile-models`."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pytest
from test_prediction_compiled import small_multiclass_model

from lcms.config import CloudMaskConfig
from lcms.sentinel2 import L1C_BANDS, REFLECTANCE_SCALE
from tasks.download import cloud_mask, cloud_model
from tasks.prediction import compiled

REPO = Path(__file__).resolve().parents[1]
MODEL_BANDS = [L1C_BANDS.index(b) for b in cloud_mask.MODEL_BANDS]


@pytest.fixture(scope="module")
def model_cache(tmp_path_factory):
    """A cache holding the compiled s2cloudless model: the one compilation of these tests (about a minute)."""
    folder = tmp_path_factory.mktemp("model-cache")
    object_file, seconds = cloud_model.compile_cloud_model(folder)
    assert object_file.exists() and seconds > 0 and object_file.parent == folder
    return folder


@pytest.fixture(scope="module")
def real_rows(shared_data):
    """Every pixel of the Slovenia patch's 13-band L1C scenes, as the model's ten reflectances (float32)."""
    scenes = np.load(shared_data / "slovenia-testpatch" / "l1c_scenes.npy")  # (t, y, x, 13) reflectance
    dn = np.rint(scenes * REFLECTANCE_SCALE).astype(np.uint16)  # as the download stage stores them
    return (dn[..., MODEL_BANDS].reshape(-1, len(MODEL_BANDS)).astype(np.float32)) / np.float32(REFLECTANCE_SCALE)


def _thresholds(booster: lgb.Booster) -> dict[int, np.ndarray]:
    """Every split threshold of the model, per feature (read from LightGBM's own dump)."""
    found: dict[int, set[float]] = {}
    for tree in booster.dump_model()["tree_info"]:
        stack = [tree["tree_structure"]]
        while stack:
            node = stack.pop()
            if "split_index" in node:
                found.setdefault(node["split_feature"], set()).add(node["threshold"])
                stack += [node["left_child"], node["right_child"]]
    return {f: np.array(sorted(v)) for f, v in found.items()}


def test_the_compiled_model_gives_lightgbms_probabilities_bit_for_bit(model_cache, real_rows):
    model = cloud_model.cloud_model(model_cache)
    assert model.name == "treelite" and model.object_file.parent == model_cache
    booster = cloud_model.booster()

    # Real rows: all 13-band pixels of the patch's scenes.
    np.testing.assert_array_equal(model.predict(real_rows), booster.predict(real_rows))

    # Rows on the model's thresholds and one float32 step either side, where a float32 threshold or a
    # float32 comparison would send a row the other way.
    rng = np.random.default_rng(3)
    rows = []
    for feature, values in _thresholds(booster).items():
        as32 = values.astype(np.float32)
        for v in (as32, np.nextafter(as32, np.float32(np.inf)), np.nextafter(as32, np.float32(-np.inf))):
            base = real_rows[rng.integers(0, len(real_rows), len(v))].copy()
            base[:, feature] = v
            rows.append(base)
    edges = np.concatenate(rows)
    assert len(edges) > 3000
    np.testing.assert_array_equal(model.predict(edges), booster.predict(edges))

    # NaN (never produced by the cloud mask): LightGBM reads it as 0.0 in this model, and so does the C code.
    nan_rows = real_rows[:500].copy()
    nan_rows[np.arange(500), np.arange(500) % nan_rows.shape[1]] = np.nan
    np.testing.assert_array_equal(model.predict(nan_rows), booster.predict(nan_rows))


def test_the_model_file_is_s2cloudless_own_and_the_compiled_model_needs_no_lightgbm(model_cache):
    from s2cloudless import cloud_detector

    assert cloud_model.MODEL_FILENAME == cloud_detector.MODEL_FILENAME
    assert (
        cloud_model.model_file().read_text()
        == Path(cloud_detector.__file__).with_name("models").joinpath(cloud_detector.MODEL_FILENAME).read_text()
    )
    # A download worker with the compiled model never imports LightGBM (~150 MiB of its memory).
    code = (
        "import sys, numpy as np; from lcms.config import CloudMaskConfig; from lcms.sentinel2 import L1C_BANDS; "
        "from tasks.download.cloud_mask import cloud_masks, cloud_model; "
        "bands = np.random.default_rng(0).integers(0, 6000, (2, 64, 64, 13), dtype=np.uint16); "
        "cloud_masks(bands, L1C_BANDS, np.ones((2, 64, 64), bool), 10.0, CloudMaskConfig()); "
        "print(cloud_model().name, 'lightgbm' in sys.modules)"
    )
    env = {**os.environ, compiled.MODEL_CACHE_ENV: str(model_cache)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["treelite", "False"]


def test_threads_of_a_dask_worker_predict_at_once_with_their_own_predictor(model_cache, real_rows):
    expected = cloud_model.booster().predict(real_rows[:20000])
    results, used = {}, {}

    def run(i: int) -> None:
        model = cloud_model.cloud_model(model_cache)
        used[i] = id(model)
        results[i] = [model.predict(real_rows[:20000]) for _ in range(3)]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(used.values())) == 4
    for outputs in results.values():
        for out in outputs:
            np.testing.assert_array_equal(out, expected)


def test_cloud_masks_are_the_same_with_either_model_and_the_log_says_which(
    model_cache, shared_data, tmp_path, monkeypatch, caplog
):
    folder = shared_data / "slovenia-testpatch"
    scenes = np.load(folder / "l1c_scenes.npy")[:6]
    dn = np.rint(scenes * REFLECTANCE_SCALE).astype(np.uint16)
    data = np.ones(dn.shape[:3], bool)
    results = {}
    for name, cache in (("lightgbm", tmp_path / "empty"), ("treelite", model_cache)):
        monkeypatch.setenv(compiled.MODEL_CACHE_ENV, str(cache))
        cloud_model._said.clear()
        with caplog.at_level(logging.INFO, logger=cloud_model.__name__):
            caplog.clear()
            results[name] = [
                cloud_mask.cloud_masks(dn, L1C_BANDS, data, 10.0, cfg)
                for cfg in (CloudMaskConfig(), CloudMaskConfig(analysis_resolution_m=10))
            ]
        said = [r.getMessage() for r in caplog.records if r.name == cloud_model.__name__]
        if name == "lightgbm":
            assert said == [
                "s2cloudless: the model is not compiled on this machine, so LightGBM predicts it (about 4× slower; "
                "`lcms compile-models` compiles it once, in about a minute)"
            ]
        else:
            assert said == [f"s2cloudless: using the compiled model {cloud_model.compiled_file(model_cache)}"]
    for (prob_a, mask_a), (prob_b, mask_b) in zip(results["lightgbm"], results["treelite"], strict=True):
        np.testing.assert_array_equal(prob_a, prob_b)
        np.testing.assert_array_equal(mask_a, mask_b)
    assert any(mask.any() and not mask.all() for _, mask in results["treelite"])  # the patch has partial clouds


def test_a_model_treelite_cannot_parse_is_built_from_lightgbms_dump(tmp_path):
    import tl2cgen

    # Multiclass with NaNs (missing type NaN): the dump path gives LightGBM's softmax probabilities.
    booster, X_test = small_multiclass_model(3, 6, 8, seed=5, nan_share=0.1)
    model = compiled._treelite_from_dump(booster.dump_model())
    tl2cgen.export_lib(model, toolchain="gcc", libpath=tmp_path / "model.so", options=compiled.TREELITE_GCC_OPTIONS)
    predictor = tl2cgen.Predictor(str(tmp_path / "model.so"), nthread=1)
    got = predictor.predict(tl2cgen.DMatrix(X_test.astype(np.float64), dtype="float64")).reshape(len(X_test), 3)
    np.testing.assert_array_equal(got, booster.predict(X_test))

    # LightGBM's zero-as-missing splits have no treelite equivalent here: refused, so the caller falls back.
    zero, _ = small_multiclass_model(3, 6, 2, seed=5, nan_share=0.0, zero_as_missing=True)
    with pytest.raises(compiled.CompileError, match="cannot build a treelite split"):
        compiled._treelite_from_dump(zero.dump_model())


def _lcms(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lcms.cli", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )


def test_lcms_compile_models_finds_the_cache_and_fails_in_one_line_without_gcc(model_cache, tmp_path):
    env = {**os.environ, compiled.MODEL_CACHE_ENV: str(model_cache), "COLUMNS": "200"}
    done = _lcms("compile-models", env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == f"already compiled: {cloud_model.compiled_file(model_cache)}"

    # No compiler on the PATH: one line naming the problem and the fix; nothing left in the cache.
    bare = tmp_path / "bin"  # an empty PATH: the command runs by its full path, gcc is not found
    bare.mkdir()
    empty = tmp_path / "cache"
    failed = _lcms("compile-models", env={**env, compiled.MODEL_CACHE_ENV: str(empty), "PATH": str(bare)})
    assert failed.returncode == 1
    errors = [line for line in failed.stderr.splitlines() if line.strip()]
    assert len(errors) == 1, failed.stderr
    assert errors[0].startswith("error: could not compile the s2cloudless model (") and "is gcc installed" in errors[0]
    assert not list(empty.glob("*.so")) and not list(empty.glob(".*"))

    # The compiler the Docker image names (LCMS_CC=gcc-12) is the one asked for.
    other = _lcms("compile-models", env={**env, compiled.MODEL_CACHE_ENV: str(empty), compiled.C_COMPILER_ENV: "gcc-0"})
    assert other.returncode == 1 and "Toolchain gcc-0 not found" in other.stderr, other.stderr[-2000:]


def test_the_suite_records_which_model_its_cloud_mask_used(model_cache, tmp_path):
    # The suite's cloud-mask worker (benchmarks/cloud_mask.py) on a tiny input, with the compiled model cached.
    rng = np.random.default_rng(0)
    np.save(tmp_path / "bands.npy", rng.integers(0, 6000, (3, 64, 64, 13), dtype=np.uint16))
    np.save(tmp_path / "data_mask.npy", np.ones((3, 64, 64), bool))
    env = {**os.environ, compiled.MODEL_CACHE_ENV: str(model_cache)}
    code = (
        "import json, sys; from pathlib import Path; sys.path.insert(0, 'benchmarks'); import cloud_mask as b; "
        f"print(json.dumps(b._worker_lcms(Path({str(tmp_path)!r}), 160.0, Path({str(tmp_path / 'out.npy')!r}))))"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    assert figures["model"] == "treelite" and figures["seconds"] > 0
    assert np.load(tmp_path / "out.npy").shape == (3, 64, 64)
