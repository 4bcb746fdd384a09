"""Concurrent writers on one store: leases, waiting and skipping, stale attempts, readers during a race.

Two real processes write the same tiles at once (local folder and moto's S3), while a reader
thread keeps opening the current outputs and a third writer, set to skip, tries its luck.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from lcms.geometry import PixelGrid
from lcms.sentinel2 import L1C_BANDS
from lcms.store import LEASE_FILE, LeaseError, LeaseSettings, TileStore, WriteSkipped, layout

GRID = PixelGrid.from_bounds("EPSG:32633", (460_000, 5_090_000, 460_640, 5_090_320), 10.0)  # 32 × 64 px
DATES = np.array(["2023-03-01", "2023-08-15"], dtype="datetime64[s]")
COORDS = {"time": DATES, "band": np.array(L1C_BANDS[:2])}  # two bands: fewer objects, a quicker test
SIZES = {"time": len(DATES), "band": 2, "y": GRID.height, "x": GRID.width}
YEAR = 2023
TILES = ("T1", "T2")
BLOCK = 32  # two blocks per tile


def arrays_for(seed: int, tile: str) -> dict[str, np.ndarray]:
    """Every array of the download stage, random but determined by (seed, tile)."""
    rng = np.random.default_rng([seed, int(tile[1:])])
    arrays = {}
    for spec in layout("download").arrays:
        shape, dtype = spec.shape_for(SIZES), np.dtype(spec.dtype)
        if dtype.kind == "b":
            arrays[spec.name] = rng.random(shape) < 0.5
        elif dtype.kind in "ui":
            arrays[spec.name] = rng.integers(0, min(np.iinfo(dtype).max, 10_000), shape, dtype=dtype)
        else:
            arrays[spec.name] = rng.random(shape).astype(dtype)
    return arrays


def write_tile(store: TileStore, tile: str, seed: int, params: str, delay: float = 0.0):
    """Write a tile block by block; returns (record, when writing started, when it was about to commit).

    Both times fall within the writer's lease. Before committing, the writer reads its own attempt
    back: had anybody removed part of a live writer's attempt, this fails.
    """
    arrays = arrays_for(seed, tile)
    specs = layout("download").arrays
    with store.writer("download", YEAR, tile, GRID, params, COORDS, {"seed": seed}) as writer:
        started = time.time()
        for (rows, cols), _ in GRID.blocks(BLOCK):
            for spec in specs:
                if {"y", "x"} <= set(spec.dims):
                    index = tuple(rows if d == "y" else cols if d == "x" else slice(None) for d in spec.dims)
                    writer.write(spec.name, arrays[spec.name][index], (rows, cols))
            time.sleep(delay)
        for spec in specs:
            if not {"y", "x"} <= set(spec.dims):
                writer.write(spec.name, arrays[spec.name])
        for spec in specs:
            np.testing.assert_array_equal(writer.read(spec.name), arrays[spec.name])
        finishing = time.time()
        record = writer.commit()
    return record, started, finishing


def check_output(reader, tile: str) -> None:
    """The output is complete and consistent: every array is the one its writer's seed gives."""
    for name, values in arrays_for(reader.attrs["seed"], tile).items():
        np.testing.assert_array_equal(reader.read(name), values, err_msg=f"{tile} {name}")


def lease_path(store: TileStore, tile: str) -> str:
    return f"{store.tile_dir('download', YEAR, tile)}/{LEASE_FILE}"


def listing(store: TileStore, tile: str) -> list[str]:
    store.fs.invalidate_cache()
    return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in store.fs.ls(store.tile_dir("download", YEAR, tile)))


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path) -> TileStore:
    if request.param == "local":
        return TileStore(str(tmp_path / "store"))
    bucket = request.getfixturevalue("s3_bucket")
    return TileStore(f"{bucket}/stores/race", {"endpoint_url": request.getfixturevalue("s3_endpoint")})


# --------------------------------------------------------------------------- two processes, one store

# A writer process: takes jobs (a store, its lease settings, tiles to write) on stdin, starts each
# when its "go" file appears, and prints one JSON line per tile, then "end". Two of them serve
# every race of this module, so the (slow) imports are paid once.
WRITER = textwrap.dedent(
    """
    import json, os, sys, time
    sys.path.insert(0, {tests!r})
    from lcms.store import LeaseSettings, TileStore, WriteSkipped
    from test_concurrency import write_tile

    print("ready", flush=True)
    for line in sys.stdin:
        job = json.loads(line)
        store = TileStore(job["url"], job["options"])
        store.lease_settings = LeaseSettings(**job["settings"])
        while not os.path.exists(job["go"]):
            time.sleep(0.005)
        for tile, params in job["plan"]:
            try:
                record, started, finishing = write_tile(store, tile, job["seed"], params, delay=0.2)
                out = dict(status="done", attempt=record.attempt, started=started, finishing=finishing)
            except WriteSkipped as exc:
                out = dict(status="skipped", reason=exc.reason, message=str(exc))
            print(json.dumps(dict(tile=tile, params=params, **out)), flush=True)
        print("end", flush=True)
    """
)


@pytest.fixture(scope="module")
def writer_processes(s3_endpoint):
    """Two writer processes (started after the S3 endpoint, whose credentials they inherit)."""
    script = WRITER.format(tests=str(Path(__file__).parent))
    procs = {
        label: subprocess.Popen(
            [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        for label in ("A", "B")
    }
    for proc in procs.values():
        assert proc.stdout.readline().strip() == "ready"
    yield procs
    for proc in procs.values():
        proc.stdin.close()
        proc.wait(timeout=60)


def results_of(proc) -> dict[str, dict]:
    """One writer process's report of a job, by tile."""
    results = {}
    while (line := proc.stdout.readline().strip()) != "end":
        assert line, f"writer process {proc.pid} died (exit code {proc.poll()}); see its stderr above"
        result = json.loads(line)
        results[result["tile"]] = result
    return results


def read_loop(store: TileStore, stop: threading.Event, seen: dict, problems: list) -> None:
    """Open every current output again and again while the writers run; each must be complete."""
    while not stop.is_set():
        for tile in TILES:
            before = store.done_record("download", YEAR, tile)
            if before is None:
                continue
            try:
                check_output(store.open_tile("download", YEAR, tile), tile)
                seen["complete"] += 1
                continue
            except Exception as exc:  # noqa: BLE001 - classified below
                error = f"{type(exc).__name__}: {exc}"
            after = store.done_record("download", YEAR, tile)
            if after is not None and after.attempt != before.attempt:
                seen["superseded"] += 1  # a newer commit replaced (and removed) it while it was being read
            else:
                problems.append((tile, before.attempt, error))
        time.sleep(0.1)


def skip_while_busy(store: TileStore) -> tuple[str, WriteSkipped]:
    """A third writer, set to skip: try the tiles until one is busy (give a free one back at once)."""
    skipper = TileStore(store.url, store.storage_options)
    skipper.lease_settings = LeaseSettings(seconds=5, on_busy="skip")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for tile in TILES:
            try:
                writer = skipper.writer("download", YEAR, tile, GRID, "third", COORDS)
            except WriteSkipped as exc:
                return tile, exc
            writer.abort()
        time.sleep(0.02)
    raise AssertionError("the skipping writer never found a busy tile")


def test_two_runs_writing_the_same_tiles_at_once(store, writer_processes, tmp_path):
    store.ensure_writable()
    settings = {"seconds": 5.0, "poll_seconds": 0.05, "wait_seconds": 60.0}  # both runs wait (the default)
    store.lease_settings = LeaseSettings(**settings)
    procs = writer_processes
    plans = {"A": (1, [("T1", "same"), ("T2", "pA")]), "B": (2, [("T1", "same"), ("T2", "pB")])}
    go = tmp_path / "go"
    for label, (seed, plan) in plans.items():
        job = {"url": store.url, "options": store.storage_options, "settings": settings, "go": str(go)}
        procs[label].stdin.write(json.dumps({**job, "plan": plan, "seed": seed}) + "\n")
        procs[label].stdin.flush()

    stop, seen, problems = threading.Event(), {"complete": 0, "superseded": 0}, []
    reader = threading.Thread(target=read_loop, args=(store, stop, seen, problems), daemon=True)
    reader.start()
    go.touch()  # both runs start on T1 at the same moment
    time.sleep(0.3)
    busy_tile, skipped = skip_while_busy(store)
    results = {label: results_of(proc) for label, proc in procs.items()}
    stop.set()
    reader.join(timeout=60)

    # The skipping writer named the tile, the stage and the run that held it.
    pids = {str(proc.pid) for proc in procs.values()}
    assert skipped.reason == "busy" and str(skipped.owner["pid"]) in pids
    assert f"download tile {busy_tile} ({YEAR}) is being written by another run" in str(skipped)
    assert f"pid {skipped.owner['pid']}" in str(skipped)

    for tile in TILES:
        runs = [results[label][tile] for label in plans]
        done = sorted((r for r in runs if r["status"] == "done"), key=lambda r: r["started"])
        assert done, runs
        # One writer at a time: the spans in which each held the lease do not overlap.
        for first, second in zip(done, done[1:], strict=False):
            assert first["finishing"] < second["started"], runs
        # A run that waited for the other, which made the same output meanwhile, counts it as skipped.
        for r in runs:
            if r["status"] == "skipped":
                assert r["reason"] == "done" and r["params"] == "same", r
                assert f"download tile {tile} ({YEAR})" in r["message"] and "same parameters" in r["message"]
        # Every done mark points at a complete attempt: the one last committed, alone in its folder.
        record = store.done_record("download", YEAR, tile)
        assert record.attempt == done[-1]["attempt"] and record.params_hash == done[-1]["params"]
        check_output(store.open_tile("download", YEAR, tile), tile)
        assert listing(store, tile) == sorted([f"{record.attempt}.zarr", "done.json"])
        assert not store.fs.exists(lease_path(store, tile))
    # Both started T1 together: one wrote it, the other waited and then skipped it; T2 differs, so both wrote it.
    assert sorted(results[label]["T1"]["status"] for label in plans) == ["done", "skipped"]
    assert [results[label]["T2"]["status"] for label in plans] == ["done", "done"]

    assert problems == [], problems
    assert seen["complete"] > 0


# --------------------------------------------------------------------------- one process: wait, skip, give up


def test_a_second_writer_gives_up_skips_or_waits(tmp_path):
    url = str(tmp_path / "store")
    store = TileStore(url)
    store.lease_settings = LeaseSettings(seconds=5, poll_seconds=0.05, wait_seconds=0.3)
    holder = store.writer("download", YEAR, "T1", GRID, "p1", COORDS, {"seed": 1})
    busy = rf"download tile T1 \({YEAR}\) is being written by another run: host .*, pid {os.getpid()} "
    with pytest.raises(LeaseError, match="gave up after waiting 0.3 s: " + busy):
        store.writer("download", YEAR, "T1", GRID, "p1", COORDS)
    skipper = TileStore(url)
    skipper.lease_settings = LeaseSettings(on_busy="skip")
    with pytest.raises(WriteSkipped, match="skipped " + busy) as info:
        skipper.writer("download", YEAR, "T1", GRID, "p1", COORDS)
    assert info.value.reason == "busy" and info.value.owner["id"] == holder._lease.owner["id"]
    holder.abort()

    # A waiting writer outlasts the one before it: same params → skipped as done; other params → it writes.
    waiter = TileStore(url)
    waiter.lease_settings = LeaseSettings(seconds=5, poll_seconds=0.05, wait_seconds=30)
    for params, expected in (("p1", "skipped"), ("p2", "done")):
        outcome = {}

        def wait_and_write(params=params, outcome=outcome):
            try:
                outcome["record"] = write_tile(waiter, "T1", 2, params)[0]
            except WriteSkipped as exc:
                outcome["skipped"] = exc

        def write_first(outcome=outcome):
            outcome["first"] = write_tile(store, "T1", 1, "p1", 0.2)

        first = threading.Thread(target=write_first)
        first.start()
        while not store.fs.exists(lease_path(store, "T1")):
            time.sleep(0.01)
        second = threading.Thread(target=wait_and_write)
        second.start()
        first.join()
        second.join()
        made = outcome["first"][0]
        if expected == "skipped":
            assert outcome["skipped"].reason == "done" and outcome["skipped"].record.attempt == made.attempt
            assert store.done_record("download", YEAR, "T1").attempt == made.attempt
        else:
            assert outcome["record"].params_hash == "p2"
            assert store.done_record("download", YEAR, "T1") == outcome["record"]
        check_output(store.open_tile("download", YEAR, "T1"), "T1")
        assert not store.fs.exists(lease_path(store, "T1"))


# --------------------------------------------------------------------------- expired leases, crashed writers


@pytest.mark.parametrize("where", ["local", "s3"])
def test_an_expired_lease_is_taken_over_and_a_crashed_attempt_removed_after_the_lease_time(tmp_path, where, request):
    if where == "local":
        store = TileStore(str(tmp_path / "store"))
    else:
        store = TileStore(request.getfixturevalue("s3_bucket") + "/store")
    # 12 s: the first commit below must come while the crashed attempt is younger than this, even
    # when S3 writes on a loaded CI machine take seconds (at 5 s it once came after it).
    lease = 12  # seconds
    store.lease_settings = LeaseSettings(seconds=lease, poll_seconds=0.05, wait_seconds=10)

    # A writer on another machine crashes midway: its attempt stays, and its lease until it expires.
    crashed = store.writer("download", YEAR, "T1", GRID, "p0", COORDS, {"seed": 0})
    crashed.write("bands", arrays_for(0, "T1")["bands"][:, :BLOCK], (slice(0, BLOCK), slice(None)))
    crashed._lease._stop.set()  # its process is gone: no more renewals, and no release
    crashed._lease.lost = "simulated crash"
    created = time.time()
    state = json.loads(store.fs.cat_file(lease_path(store, "T1")))
    state["owner"] = {"host": "elsewhere", "pid": 4242, "id": "c0ffee", "start": None, "space": "another machine"}
    # 3 s: the skipper below must still find it busy after the S3 writes above on a loaded CI machine.
    state["expires"], state["expires_at"] = created + 3.0, "in three seconds"
    store.fs.pipe_file(lease_path(store, "T1"), json.dumps(state).encode())

    # Before it expires the tile is busy; afterwards the next writer takes the lease over.
    skipper = TileStore(store.url, store.storage_options)
    skipper.lease_settings = LeaseSettings(seconds=lease, on_busy="skip")
    with pytest.raises(WriteSkipped, match=r"host elsewhere, pid 4242 \(writer c0ffee\), attempt " + crashed.attempt):
        skipper.writer("download", YEAR, "T1", GRID, "p1", COORDS)
    first, _, _ = write_tile(store, "T1", 1, "p1")
    assert time.time() >= created + 3.0
    # The crashed attempt is younger than the lease time: its writer might still be running, so it stays.
    assert listing(store, "T1") == sorted([f"{crashed.attempt}.zarr", f"{first.attempt}.zarr", "done.json"])

    # Once it is older than the lease time, the next commit removes it (and the attempt it supersedes).
    time.sleep(max(0.0, int(created) + lease + 1.5 - time.time()))  # attempt ids carry whole seconds
    second, _, _ = write_tile(store, "T1", 2, "p2")
    assert listing(store, "T1") == sorted([f"{second.attempt}.zarr", "done.json"])
    check_output(store.open_tile("download", YEAR, "T1"), "T1")
