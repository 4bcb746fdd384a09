"""Everyday use from the command line, as a user meets it (issue 16): the real `lcms` command in
subprocesses, on a smaller copy of examples/demo.yaml (two tiles, 8 dates a year).

- the first run prints the stable paths of the report, the model, the change polygons and the maps,
  and the files are there;
- a second run finds nothing to do: it starts no Prefect server and no cluster, and changes no file;
- `lcms plan` after changing one features parameter lists exactly the features tile-years (and what
  reads them), and running the features stage then redoes exactly those;
- `lcms tiles` lists the tile ids; a failed tile leaves its log in the store, `lcms tiles --failed`
  shows it and `lcms plan` says it failed before;
- `lcms status` is one table; the logs have one line per tile and none of Prefect's routine lines;
- nothing is left in the temporary folders, and a `kill -9` leaves no process behind.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from small_demo import small_demo

from lcms.store import TileStore

REPO = Path(__file__).resolve().parents[1]
LCMS = [sys.executable, "-m", "lcms.cli"]


def environment(folder: Path) -> dict[str, str]:
    """A private LCMS_HOME and system temp folder, and no Prefect server: the command starts its own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API") and k != "PREFECT_HOME"}
    (folder / "systmp").mkdir(exist_ok=True)
    return {**env, "LCMS_HOME": str(folder / "home"), "TMPDIR": str(folder / "systmp"), "COLUMNS": "200"}


def lcms(folder: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*LCMS, *args], capture_output=True, text=True, env=environment(folder), timeout=timeout, cwd=folder
    )


def store_files(store: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime for p in store.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    folder = tmp_path_factory.mktemp("everyday")
    config = small_demo("demo.yaml", folder)
    made = lcms(folder, "synthetic-reference", str(config), "--fraction", "0.6", timeout=120)
    assert made.returncode == 0, made.stderr[-3000:]
    run = lcms(folder, "run", str(config))
    assert run.returncode == 0, run.stderr[-3000:]
    return folder, config, run


def test_a_run_prints_the_stable_paths_of_its_outputs(demo):
    folder, config, run = demo
    store = folder / "store"
    expected = {
        "report": store / "report" / "land-cover" / "report.html",
        "change polygons": store / "change-polygons" / "land-cover" / "2023-2024" / "changes.gpkg",
        "model": store / "training" / "land-cover" / "current" / "model.txt",
    }
    for label, path in expected.items():
        assert f"{label}: {path}" in run.stdout, (label, run.stdout[-2000:])
        assert path.is_file() and path.stat().st_size > 0
    assert f"maps (COG + STAC item per year and zone): {store / 'maps'}" in run.stdout
    # The published report is the current attempt's, byte for byte.
    record = TileStore(str(store)).product_record("report", "land-cover")
    attempt = store / "report" / "land-cover" / record.attempt / "report.html"
    assert attempt.read_bytes() == expected["report"].read_bytes()


def test_the_logs_say_one_line_per_tile_and_nothing_routine(demo):
    _, _, run = demo
    log = run.stderr
    assert "Finished in state Completed()" not in log
    assert "dashboard" not in log.lower()
    assert "docs.prefect.io" not in log
    for tile in TileStore(str(demo[0] / "store")).read_grid().tile_ids:
        for year in (2023, 2024):
            assert f"features {tile}/{year} done in " in log, log[-3000:]
    assert "features: 4 tile-years: 4 done, 0 skipped, 0 failed in " in log


def test_a_second_run_redoes_nothing_and_starts_nothing(demo):
    folder, config, _ = demo
    before = store_files(folder / "store")
    start, cpu_start = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    again = lcms(folder, "run", str(config))
    seconds, cpu_end = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (cpu_end.ru_utime + cpu_end.ru_stime) - (cpu_start.ru_utime + cpu_start.ru_stime)
    print(f"no-op rerun: {seconds:.1f} s wall, {cpu:.1f} s CPU")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "nothing to do" in again.stdout
    assert "Starting temporary server" not in again.stderr  # no Prefect server, and so no cluster either
    assert store_files(folder / "store") == before  # not one file written or touched
    # The CPU time is what the command costs; the wall time also counts waiting for a busy machine's cores.
    assert cpu < 10, f"a run with nothing to do took {cpu:.1f} s of CPU"
    assert seconds < 30, f"a run with nothing to do took {seconds:.1f} s"


def test_plan_after_one_features_parameter_changes_lists_exactly_what_reads_it(demo, tmp_path):
    folder, config, _ = demo
    data = yaml.safe_load(config.read_text())
    data.setdefault("features", {})["min_valid_coverage"] = 0.55
    changed = folder / "changed.yaml"
    changed.write_text(yaml.safe_dump(data))
    store = TileStore(str(folder / "store"))
    tiles = store.read_grid().tile_ids

    plan = lcms(folder, "plan", str(changed))
    assert plan.returncode == 0, plan.stderr[-3000:]
    made = {(stage, year, tile) for stage, year, tile, action, _ in table_rows(plan.stdout) if action == "run"}
    features = {(s, y, t) for s, y, t in made if s == "features"}
    assert features == {("features", str(y), t) for y in (2023, 2024) for t in tiles}
    why = {row[4] for row in table_rows(plan.stdout) if row[0] == "features" and row[3] == "run"}
    assert why == {"parameters changed (features.min_valid_coverage)"}
    assert not any(s in ("download", "reference") for s, _, _ in made)  # they do not read the features
    for stage in ("sampling", "prediction", "postprocess"):
        assert {t for s, _, t in made if s == stage} == set(tiles), stage
    assert {s for s, _, _ in made} >= {"merge", "training", "export", "change", "report"}

    # The features stage then redoes exactly the tile-years the plan listed.
    before = {(y, t): store.done_record("features", y, t).attempt for y in (2023, 2024) for t in tiles}
    run = lcms(folder, "features", str(changed))
    assert run.returncode == 0, run.stderr[-3000:]
    after = {(y, t): store.done_record("features", y, t).attempt for y in (2023, 2024) for t in tiles}
    assert {("features", str(y), t) for (y, t) in before if before[y, t] != after[y, t]} == features
    again = lcms(folder, "plan", str(changed), "--stages", "features")
    summary = {row[0]: row for row in table_rows(again.stdout)}
    assert summary["features"][1:4] == ["4", "0", "4"], again.stdout  # 4 outputs, 0 to make, 4 up to date


def table_rows(text: str) -> list[list[str]]:
    """The body rows of the rich tables in a command's output, as lists of cell texts."""
    rows = []
    for line in text.splitlines():
        if line.startswith("│"):
            rows.append([cell.strip() for cell in line.strip().strip("│").split("│")])
    return rows


def test_tiles_lists_ids_and_a_failed_tile_keeps_its_log(demo):
    folder, config, _ = demo
    store = TileStore(str(folder / "store"))
    grid = store.read_grid()
    listing = lcms(folder, "tiles", str(config))
    assert listing.returncode == 0, listing.stderr
    for tile in grid:
        assert tile.tile_id in listing.stdout and tile.zone in listing.stdout
    assert f"lcms tiles {config}" in lcms(folder, "grid", str(config)).stdout

    # Break one tile's downloaded bands and remove its features of 2024: making them again fails, and
    # the failure's log stays in the store.
    broken = grid.tile_ids[0]
    shutil.rmtree(folder / "store" / "features" / "2024" / broken)
    record = store.done_record("download", 2024, broken)
    bands = folder / "store" / "download" / "2024" / broken / f"{record.attempt}.zarr" / "bands"
    chunks = [p for p in bands.rglob("*") if p.is_file() and p.name != "zarr.json"]
    for chunk in chunks:
        chunk.write_bytes(b"not a zarr chunk")
    try:
        run = lcms(folder, "features", str(config), "--tiles", broken)
        assert run.returncode != 0 and "blosc" in run.stderr, run.stderr[-3000:]
        failed = lcms(folder, "tiles", str(config), "--stage", "features", "--failed")
        assert broken in failed.stdout and "failed.log" in failed.stdout, failed.stdout
        log = (folder / "store" / "features" / "2024" / broken / "failed.log").read_text()
        assert "Traceback" in log and f"features {broken}/2024 failed" in log
        plan = lcms(folder, "plan", str(config), "--stages", "features")
        assert "failed before" in plan.stdout, plan.stdout
    finally:  # put the tile back for the other tests: download it again
        repaired = lcms(folder, "run", str(config), "--stages", "download,features", "--tiles", broken, "--overwrite")
        assert repaired.returncode == 0, repaired.stderr[-2000:]
    assert not (folder / "store" / "features" / "2024" / broken / "failed.log").exists()


def test_status_is_one_table(demo):
    folder, config, _ = demo
    status = lcms(folder, "status", str(config))
    assert status.returncode == 0, status.stderr
    assert "{" not in status.stdout  # no raw dicts
    for row in ("│ features ", "│ training ", "│ report ", "│ change-polygons "):
        assert row in status.stdout, row
    assert "report/land-cover" in status.stdout and "training/land-cover/current" in status.stdout
    assert "maps" in status.stdout and "labels" in status.stdout and "confidence" in status.stdout


def test_nothing_is_left_in_temporary_folders(demo):
    folder, *_ = demo
    assert list((folder / "systmp").iterdir()) == []
    assert not (folder / "home" / "tmp").exists() or list((folder / "home" / "tmp").iterdir()) == []
    assert (folder / "home" / "prefect").is_dir()  # the run history is kept under LCMS_HOME


def _processes_with(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if marker.encode() in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and the parent-death signal are Linux's")
@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
def test_a_killed_command_leaves_no_process_and_no_temporary_folder(demo, how):
    folder, config, _ = demo
    env = environment(folder)
    process = subprocess.Popen(
        [*LCMS, "features", str(config), "--overwrite"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=folder,
    )
    marker = f"LCMS_HOME={env['LCMS_HOME']}"
    deadline = time.monotonic() + 120
    for line in process.stdout:  # wait until the temporary Prefect server is up
        if "Starting temporary server" in line or time.monotonic() > deadline:
            break
    time.sleep(2)
    assert len(_processes_with(marker)) >= 2  # the command, its server (and its watchdog)
    killed_at = time.monotonic()
    process.send_signal(how)
    process.wait(timeout=30)
    while _processes_with(marker) and time.monotonic() - killed_at < 15:
        time.sleep(0.2)
    assert _processes_with(marker) == [], "processes outlived the killed command"
    seconds = time.monotonic() - killed_at
    print(f"{how.name}: everything ended {seconds:.1f} s after the signal")
    assert seconds < 15
    assert not any((folder / "home" / "tmp").glob("*/*")), "the killed command's temporary folder is left"
    # Nothing half-written is marked done: the stage runs again to completion.
    rerun = lcms(folder, "features", str(config))
    assert rerun.returncode == 0, rerun.stderr[-2000:]
