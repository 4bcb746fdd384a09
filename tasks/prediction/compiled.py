"""A LightGBM model compiled to machine code for prediction, with LightGBM itself as the fallback.

LightGBM walks its trees through a generic interpreter; a compiler turns each tree into branches
of native code, several times faster per core on the same trees. Two compilers fit a LightGBM
model.txt:

* **lleaves** (LLVM, through llvmlite's bundled LLVM: no system compiler): compiles in seconds,
  reads float64 rows and compares them with LightGBM's float64 thresholds, so its decisions are
  LightGBM's; returns softmax probabilities like `Booster.predict`. The default (`auto`).
* **treelite** + tl2cgen (C code built by the system's gcc): measured beside it in
  benchmarks/prediction.py; it needs gcc and compiles a 600-tree model far more slowly. It is the
  compiler of the s2cloudless cloud model (tasks/download/cloud_model.py), whose 170 trees of 770
  leaves lleaves did not compile in 15 minutes.

Compiled objects are cached per model in a local folder (`$LCMS_MODEL_CACHE`, else
`$LCMS_HOME/cache/compiled-models`), keyed by the model text, the
compiler's version and the host CPU (lleaves targets its instruction set; gcc's code is generic
for the machine's architecture, so an image can carry it). A file lock makes Dask worker
processes on one machine compile a model once; the object is written under a temporary name and
renamed, so a half-written one is never loaded. When compilation is off or fails,
`load_predictor` returns LightGBM's own predictor and logs one warning line naming why.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import subprocess
import sys
from importlib import metadata as package_metadata
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:
    import lightgbm as lgb  # imported where it is used: the compiled s2cloudless model needs no LightGBM

log = logging.getLogger(__name__)

CompileMode = Literal["auto", "lleaves", "treelite", "off"]
AUTO_COMPILER = "lleaves"  # see the module docstring and benchmarks/prediction.py
MODEL_CACHE_ENV = "LCMS_MODEL_CACHE"  # the Docker image's compiled models (docker/Dockerfile)
C_COMPILER_ENV = "LCMS_CC"  # treelite's C compiler: gcc, or a variant such as gcc-12
# gcc at -O1: the s2cloudless model compiled in 52 s on 2 cores (76 s at tl2cgen's default level) and
# predicted as fast (0.72 s against 0.77 s for 245 566 rows on one core).
TREELITE_GCC_OPTIONS = ["-O1"]


class CompileError(RuntimeError):
    """A compiler is missing or failed on a model."""


def cache_folder() -> Path:
    """Where compiled models are kept: $LCMS_MODEL_CACHE, else $LCMS_HOME/cache/compiled-models
    ($LCMS_HOME defaults to ./lcms-runs, as for the command line: not the temp dir, which each `lcms`
    command makes its own and removes)."""
    if os.environ.get(MODEL_CACHE_ENV):
        return Path(os.environ[MODEL_CACHE_ENV]).resolve()
    from lcms.runtime import home

    return home() / "cache" / "compiled-models"


def model_text(booster: lgb.Booster, metadata: dict) -> str:
    """The trees LightGBM predicts with: the same iterations as `tasks.training.model.predict_proba`."""
    return booster.model_to_string(num_iteration=metadata.get("num_iteration") or None)


class LightGBMPredictor:
    """LightGBM's own `Booster.predict`: the fallback, and the reference the compiled ones must match."""

    name = "lightgbm"
    dtype = np.float32  # LightGBM widens float32 rows to double itself

    def __init__(self, booster: lgb.Booster, metadata: dict, reason: str = "") -> None:
        self.booster = booster
        self.num_iteration = metadata.get("num_iteration") or None
        self.n_classes = len(metadata["classes"])
        self.reason = reason  # why nothing compiled ("" when compilation was off)

    def predict_proba(self, X: np.ndarray, num_threads: int = 1) -> np.ndarray:
        proba = self.booster.predict(X, num_iteration=self.num_iteration, num_threads=num_threads)
        return np.asarray(proba, dtype=np.float64).reshape(X.shape[0], self.n_classes)


class LleavesPredictor:
    """The trees compiled by lleaves (float64 thresholds and inputs, as LightGBM compares them)."""

    name = "lleaves"
    dtype = np.float64

    def __init__(self, model_file: Path, object_file: Path, n_classes: int) -> None:
        import lleaves

        self.model = lleaves.Model(model_file=str(model_file))
        self.model.compile(cache=str(object_file))  # loads the cached object: no compilation
        self.n_classes = n_classes

    def predict_proba(self, X: np.ndarray, num_threads: int = 1) -> np.ndarray:
        proba = self.model.predict(X, n_jobs=num_threads or os.cpu_count())
        return proba.reshape(X.shape[0], self.n_classes)


class TreelitePredictor:
    """The trees as C code (treelite + tl2cgen, built by gcc) in a shared library."""

    name = "treelite"
    dtype = np.float64

    def __init__(self, object_file: Path, n_classes: int, num_threads: int) -> None:
        import tl2cgen

        self._tl2cgen = tl2cgen
        self.predictor = tl2cgen.Predictor(str(object_file), nthread=num_threads or os.cpu_count())
        self.n_classes = n_classes

    def predict_proba(self, X: np.ndarray, num_threads: int = 1) -> np.ndarray:
        # The thread count is fixed when the library is loaded (see load_predictor).
        proba = self.predictor.predict(self._tl2cgen.DMatrix(X, dtype="float64"))
        return np.asarray(proba, dtype=np.float64).reshape(X.shape[0], self.n_classes)


def _compiler_version(compiler: str) -> str:
    packages = {"lleaves": ("lleaves", "llvmlite"), "treelite": ("treelite", "tl2cgen")}[compiler]
    try:
        return "+".join(f"{p}=={package_metadata.version(p)}" for p in packages)
    except package_metadata.PackageNotFoundError as error:
        raise CompileError(f"{error.name} is not installed") from None


def _host_cpu(compiler: str) -> str:
    import platform

    if compiler == "treelite":
        return platform.machine()  # gcc without -march: generic code for the architecture
    try:
        import llvmlite.binding as llvm

        llvm.initialize_native_target()
        with contextlib.suppress(RuntimeError):
            return f"{llvm.get_host_cpu_name()}:{llvm.get_host_cpu_features().flatten()}"
        return llvm.get_host_cpu_name()
    except ImportError:
        return platform.machine()


def cache_key(text: str, compiler: str) -> str:
    """The cached object's name: model text, compiler versions and host CPU (the code targets it)."""
    digest = hashlib.sha256()
    for part in (text, compiler, _compiler_version(compiler), _host_cpu(compiler)):
        digest.update(part.encode())
        digest.update(b"\0")
    return f"{compiler}-{digest.hexdigest()[:24]}"


@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive lock across the processes of one machine (released when the holder dies too)."""
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# Compiling runs in a child process: LLVM needs several hundred MiB for a 600-tree model (kept out of
# the worker's peak memory), and a crash inside LLVM ends the child, not the Dask worker.
_LLEAVES_COMPILE = "import sys, lleaves; lleaves.Model(model_file=sys.argv[1]).compile(cache=sys.argv[2])"


def _compile_lleaves(model_file: Path, object_file: Path) -> None:
    tmp = object_file.with_name(f".{object_file.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        # float64 (lleaves' default): LightGBM's thresholds are doubles; float32 ones would flip the
        # rows whose value lies between a threshold and its float32 rounding.
        cmd = [sys.executable, "-c", _LLEAVES_COMPILE, str(model_file), str(tmp)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
            raise CompileError(f"lleaves failed: {last}")
        if not tmp.exists():
            raise CompileError("lleaves wrote no object file")
        os.replace(tmp, object_file)
    finally:
        tmp.unlink(missing_ok=True)


def treelite_model(model_file: Path):
    """A LightGBM model.txt as a treelite model: treelite's own parser, else built node by node from
    LightGBM's dump (treelite 4.1's parser rejects the s2cloudless model: "Node key cannot be negative")."""
    import treelite

    try:
        return treelite.frontend.load_lightgbm_model(str(model_file))
    except treelite.TreeliteError:
        import lightgbm

        return _treelite_from_dump(lightgbm.Booster(model_file=str(model_file)).dump_model())


def _treelite_from_dump(dump: dict):
    """Numerical splits only (`<=`, NaN to the default side or, for missing type None, LightGBM's
    0.0), thresholds and leaves as float64 as LightGBM compares and sums them."""
    from treelite.model_builder import Metadata, ModelBuilder, PostProcessorFunc, TreeAnnotation

    n_class = dump["num_class"]
    objective = dump["objective"].split()[0]
    if objective == "binary" and n_class == 1:
        task, postprocessor = "kBinaryClf", PostProcessorFunc("sigmoid", sigmoid_alpha=_sigmoid_alpha(dump))
    elif objective == "multiclass":
        task, postprocessor = "kMultiClf", PostProcessorFunc("softmax")
    else:
        raise CompileError(f"cannot build a treelite model for LightGBM objective {dump['objective']!r}")
    trees = dump["tree_info"]
    builder = ModelBuilder(
        threshold_type="float64",
        leaf_output_type="float64",
        metadata=Metadata(
            num_feature=dump["max_feature_idx"] + 1,
            task_type=task,
            average_tree_output=False,
            num_target=1,
            num_class=[max(n_class, 1)] if task == "kMultiClf" else [1],
            leaf_vector_shape=(1, 1),
        ),
        tree_annotation=TreeAnnotation(
            num_tree=len(trees), target_id=[0] * len(trees), class_id=[i % n_class for i in range(len(trees))]
        ),
        postprocessor=postprocessor,
        base_scores=[0.0] * max(n_class, 1),
    )
    for tree in trees:
        _add_tree(builder, tree["tree_structure"])
    return builder.commit()


def _sigmoid_alpha(dump: dict) -> float:
    for part in dump["objective"].split()[1:]:
        if part.startswith("sigmoid:"):
            return float(part.split(":", 1)[1])
    return 1.0


def _add_tree(builder, root: dict) -> None:
    """One tree, node by node (a stack, not recursion: a 770-leaf tree may be hundreds of levels deep)."""
    builder.start_tree()
    stack, next_key = [(root, 0)], 1
    while stack:
        node, key = stack.pop()
        builder.start_node(key)
        if "split_index" not in node:
            builder.leaf(float(node["leaf_value"]))
            builder.end_node()
            continue
        if node["decision_type"] != "<=" or node["missing_type"] == "Zero":
            raise CompileError(f"cannot build a treelite split {node['decision_type']!r} ({node['missing_type']})")
        left, right = next_key, next_key + 1
        next_key += 2
        # Missing type None: LightGBM reads NaN as 0.0, so NaN goes where 0.0 would.
        default_left = node["default_left"] if node["missing_type"] == "NaN" else 0.0 <= node["threshold"]
        builder.numerical_test(node["split_feature"], float(node["threshold"]), default_left, "<=", left, right)
        builder.end_node()
        stack += [(node["right_child"], right), (node["left_child"], left)]
    builder.end_tree()


def _compile_treelite(model_file: Path, object_file: Path, num_threads: int) -> None:
    import tl2cgen

    tmp = object_file.with_name(f".{object_file.name}.{os.getpid()}.tmp.so")
    try:
        model = treelite_model(model_file)
        tl2cgen.export_lib(
            model,
            toolchain=os.environ.get(C_COMPILER_ENV) or "gcc",
            libpath=str(tmp),
            params={"parallel_comp": max(num_threads, 1)},
            nthread=max(num_threads, 1),
            options=TREELITE_GCC_OPTIONS,
        )
        os.replace(tmp, object_file)
    finally:
        tmp.unlink(missing_ok=True)


class CompileStats:
    """Compilations this process ran (a test checks that a cached model compiles nothing)."""

    compiled = 0
    last_seconds = 0.0


def compiled_files(text: str, compiler: str, folder: Path | None = None, num_threads: int = 1) -> tuple[Path, Path]:
    """(model.txt, compiled object) of a model in the cache, compiling it once per machine if needed."""
    import time

    folder = Path(folder) if folder is not None else cache_folder()
    key = cache_key(text, compiler)
    model_file = folder / f"{key}.txt"
    object_file = folder / f"{key}.so"
    if object_file.exists() and model_file.exists():
        return model_file, object_file
    folder.mkdir(parents=True, exist_ok=True)
    with _locked(folder / f"{key}.lock"):
        if not model_file.exists():
            _write_atomic(model_file, text.encode())
        if not object_file.exists():  # another process may have compiled it while this one waited
            t0 = time.perf_counter()
            if compiler == "lleaves":
                _compile_lleaves(model_file, object_file)
            else:
                _compile_treelite(model_file, object_file, num_threads)
            CompileStats.compiled += 1
            CompileStats.last_seconds = time.perf_counter() - t0
            log.info("compiled the model with %s in %.1f s: %s", compiler, CompileStats.last_seconds, object_file)
    return model_file, object_file


def load_predictor(
    booster: lgb.Booster,
    metadata: dict,
    mode: CompileMode = "auto",
    folder: Path | None = None,
    num_threads: int = 1,
):
    """A predictor of `booster` (its `predict_proba(X, num_threads)` gives (n, k) float64 softmax
    probabilities, columns in metadata["classes"] order): compiled by `mode`'s compiler (`auto`:
    lleaves), else LightGBM's own with one warning line saying why."""
    n_classes = len(metadata["classes"])
    if mode == "off":
        return LightGBMPredictor(booster, metadata)
    compiler = AUTO_COMPILER if mode == "auto" else mode
    try:
        text = model_text(booster, metadata)
        model_file, object_file = compiled_files(text, compiler, folder, num_threads)
        if compiler == "lleaves":
            return LleavesPredictor(model_file, object_file, n_classes)
        if compiler == "treelite":
            return TreelitePredictor(object_file, n_classes, num_threads)
        raise CompileError(f"unknown compiler {compiler!r} (auto, lleaves, treelite or off)")
    except Exception as error:  # noqa: BLE001 - any compiler failure falls back to LightGBM
        reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}".rstrip(": ")
        log.warning(
            "prediction.compile=%s: %s could not compile the model (%s); predicting with LightGBM instead",
            mode,
            compiler,
            reason,
        )
        return LightGBMPredictor(booster, metadata, reason)
