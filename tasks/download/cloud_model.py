"""The s2cloudless model: LightGBM's own predictor, or the same trees compiled to C once per machine.

The model step is most of the cloud mask's time (tasks/download/cloud_mask.py): s2cloudless's 170
trees of 770 leaves cost LightGBM ~12 µs per row on one core. treelite + tl2cgen turn the trees
into C, built by gcc (tasks/prediction/compiled.py). The compiled model gives LightGBM's
probabilities bit for bit (float64 thresholds, inputs and sums; a test checks real rows and rows
on the thresholds) about 4× faster: 0.70 s against 2.91 s for the suite tile's 245 566 rows.

Compiling takes about a minute on two cores, once per machine and model version:
`lcms compile-models` does it, and the Docker image does it when it is built. A process uses the
compiled model when it finds it in the model cache (`compiled.cache_folder`), else LightGBM, and
says which in one log line. The masks are the same either way, so this is neither a setting nor
part of any output's parameters.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import threading
import time
from pathlib import Path

import numpy as np

from tasks.prediction import compiled  # LightGBM is imported there only where it is used

log = logging.getLogger(__name__)

COMPILER = "treelite"  # lleaves did not compile these trees in 15 minutes
ROWS_PER_CALL = 1 << 16  # bounds the float64 copy of a call's rows to 5 MiB


@functools.cache
def booster():
    """The s2cloudless LightGBM booster, loaded once per process (the model ships with the package)."""
    from s2cloudless import S2PixelCloudDetector

    return S2PixelCloudDetector(all_bands=False).classifier.classifier


# The model file s2cloudless loads (s2cloudless.cloud_detector.MODEL_FILENAME; a test checks they agree).
MODEL_FILENAME = "pixel_s2_cloud_detector_lightGBM_v0.1.txt"


def model_file() -> Path:
    """The s2cloudless package's model file, found without importing s2cloudless (which imports LightGBM)."""
    spec = importlib.util.find_spec("s2cloudless")
    return Path(spec.submodule_search_locations[0]) / "models" / MODEL_FILENAME


@functools.cache
def _model_text() -> str:
    # The file's own text keys the cache, so a process with the compiled model never loads LightGBM.
    return model_file().read_text()


@functools.cache
def _cache_name() -> str:
    return compiled.cache_key(_model_text(), COMPILER)


def compiled_file(folder: Path | None = None) -> Path:
    """Where the compiled model is (or would be) in the model cache."""
    folder = Path(folder) if folder is not None else compiled.cache_folder()
    return folder / f"{_cache_name()}.so"


def compile_cloud_model(folder: Path | None = None, num_threads: int | None = None) -> tuple[Path, float]:
    """Compile the model into the cache unless it is there: (compiled file, seconds spent compiling)."""
    t0 = time.perf_counter()
    before = compiled.CompileStats.compiled
    _, object_file = compiled.compiled_files(_model_text(), COMPILER, folder, num_threads or os.cpu_count() or 1)
    seconds = time.perf_counter() - t0 if compiled.CompileStats.compiled > before else 0.0
    return object_file, seconds


def _threads() -> int:
    """The threads LightGBM would use here: OMP_NUM_THREADS, else every core."""
    try:
        return max(int(os.environ.get("OMP_NUM_THREADS", "")), 1)
    except ValueError:
        return os.cpu_count() or 1


class LightGBMCloudModel:
    name = "lightgbm"

    def predict(self, x: np.ndarray) -> np.ndarray:
        return booster().predict(x)


class CompiledCloudModel:
    name = "treelite"

    def __init__(self, object_file: Path) -> None:
        import tl2cgen

        self._tl2cgen = tl2cgen
        self.predictor = tl2cgen.Predictor(str(object_file), nthread=_threads())
        self.object_file = object_file

    def predict(self, x: np.ndarray) -> np.ndarray:
        out = np.empty(len(x), np.float64)
        for i in range(0, len(x), ROWS_PER_CALL):
            # float64 is exact for float32 rows, and what tl2cgen takes without another copy.
            rows = np.ascontiguousarray(x[i : i + ROWS_PER_CALL], dtype=np.float64)
            out[i : i + len(rows)] = self.predictor.predict(self._tl2cgen.DMatrix(rows, dtype="float64")).reshape(-1)
        return out


_loaded = threading.local()


def _load_compiled(object_file: str) -> CompiledCloudModel:
    """One predictor per thread (a Dask worker runs several tasks at once; tl2cgen's predictor keeps
    its own thread pool and is not documented as safe to share), loaded on the thread's first call."""
    models = _loaded.__dict__.setdefault("models", {})
    if object_file not in models:
        models[object_file] = CompiledCloudModel(Path(object_file))
    return models[object_file]


_said: set[str] = set()


def cloud_model(folder: Path | None = None) -> LightGBMCloudModel | CompiledCloudModel:
    """The compiled model if the cache holds it (loaded once per thread), else LightGBM's."""
    object_file = compiled_file(folder)
    if object_file.exists():
        try:
            model = _load_compiled(str(object_file))
        except Exception as error:  # noqa: BLE001 - a broken library must not stop the cloud mask
            _say_once(f"cannot load the compiled s2cloudless model {object_file} ({error}); using LightGBM", True)
            return LightGBMCloudModel()
        _say_once(f"s2cloudless: using the compiled model {object_file}")
        return model
    _say_once(
        "s2cloudless: the model is not compiled on this machine, so LightGBM predicts it (about 4× slower; "
        "`lcms compile-models` compiles it once, in about a minute)"
    )
    return LightGBMCloudModel()


def _say_once(line: str, warning: bool = False) -> None:
    if line not in _said:
        _said.add(line)
        (log.warning if warning else log.info)(line)
