"""`kill -9` at a random point of every stage, then a rerun: nothing finished changes, nothing half-written
is marked done, nothing of the killed command lives on, and the rerun completes.

One chain of commands on the small config: `lcms grid` killed once the store appears, then `lcms run`
killed during download, the next `lcms run` (which redoes what the kill interrupted) killed during
features, and so on through report; a last `lcms run` must finish. Each kill lands at a random time
(seeded: LCMS_FAULT_SEED, printed) within the first seconds of its stage's flow. The whole process
group is killed, except during download, where only the command's own pid is (what `kill -9 PID` does
to a command): that command runs its own temporary Prefect server and a Dask cluster of worker
processes, which must not outlive it.

After each kill: every done mark points at an output that reads back whole, outputs finished before
keep every byte, and no process carrying the command's marker (an environment variable) is alive.
After the last run: every stage is done, and no temporary files (`lcms-*` in TMPDIR, LCMS_HOME/tmp,
hidden export pieces in the store) remain.
"""

from __future__ import annotations

import os
import random
import re
import secrets
import time

from faultkit import (
    STORES,
    YEARS,
    command_env,
    end_processes,
    hash_outputs,
    hidden_temporaries,
    incomplete_outputs,
    record,
    run,
    small_config,
    start,
    survivors,
)

from lcms.stages import stages_with_flows

# Upper bound of the random kill time after a stage's flow starts: below the stage's shortest flow on the small
# config (a flow takes a second or more: Prefect's own work), so that the kill lands inside it on a fast machine too.
WINDOW_S = {
    "grid": 0.3,
    "download": 1.5,
    "features": 1.5,
    "reference": 1.0,
    "sampling": 1.5,
    "merge": 0.6,
    "training": 1.5,
    "prediction": 1.0,
    "postprocess": 0.6,
    "export": 1.5,
    "change": 0.6,
    "report": 1.0,
}
KILL_PID_ONLY = "download"  # the command with its own Prefect server and Dask worker processes
GRACE_S = 15.0  # how long a killed command's helpers may take to go


def _running_stage(output: str) -> str | None:
    """The stage whose flow the output shows running last (None: no stage flow started)."""
    started = re.findall(r"Beginning (?:sub)?flow run '([a-z-]+) ·", output)
    return started[-1] if started else None


def test_kill9_at_a_random_point_of_every_stage_then_rerun(tmp_path, prefect_api, reference_gpkg):
    seed = int(os.environ.get("LCMS_FAULT_SEED") or secrets.randbelow(1_000_000))
    print(f"kill -9 matrix: seed {seed} (LCMS_FAULT_SEED={seed} replays it)")
    rng = random.Random(seed)
    store = tmp_path / "store"
    STORES.append(tmp_path)
    cfg = small_config(tmp_path / "cfg", str(store), reference_gpkg)
    # The same run with Dask worker processes, for the command that is killed by pid alone.
    cfg_procs = small_config(
        tmp_path / "cfg-procs",
        str(store),
        reference_gpkg,
        cluster={"kind": "local", "n_workers": 1, "threads_per_worker": 1, "processes": True},
    )
    stages = [s.name for s in stages_with_flows()]
    problems: list[str] = []
    finished: dict[str, str] = {}  # done mark → hash of its output, for every output finished after a kill

    for stage in ["grid", *stages]:
        marker = secrets.token_hex(8)
        pid_only = stage == KILL_PID_ONLY
        env = command_env(tmp_path, None if pid_only else prefect_api.url, marker)
        args = ["grid", str(cfg)] if stage == "grid" else ["run", str(cfg_procs if pid_only else cfg)]
        command = start(args, env, tmp_path / "logs" / f"kill-{stage}.log")
        if stage == "grid":
            deadline = time.monotonic() + 120
            while not (store / "store.json").exists() and command.proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)
            began = (store / "store.json").exists()
        else:
            began = command.wait_for_line(rf"Beginning subflow run '{stage} ·", timeout=240)
        delay = rng.uniform(0.0, WINDOW_S[stage])
        time.sleep(delay)
        ended_first = command.proc.poll() is not None
        in_stage = _running_stage(command.output()) if stage != "grid" else "grid"
        (command.kill if pid_only else command.kill_group)()
        code = command.wait(30)
        left = survivors(marker, GRACE_S)
        if left:
            problems.append(f"after kill -9 in {stage}: processes of the killed command still alive: {left}")
            end_processes(left)
        if not began or ended_first:
            problems.append(f"{stage}: not killed inside its flow (began={began}, ended first={ended_first})")
        elif in_stage != stage:
            problems.append(f"{stage}: the kill at +{delay:.2f} s landed in {in_stage} instead")
        broken = incomplete_outputs(store)
        problems += [f"after kill -9 in {stage}: done but incomplete: {b}" for b in broken]
        now = hash_outputs(store)
        changed = sorted(k for k, h in finished.items() if now.get(k) != h)
        problems += [f"after kill -9 in {stage}: finished output changed or gone: {k}" for k in changed]
        finished.update(now)
        record(
            f"kill -9 {'(pid only) ' if pid_only else ''}during {stage}, +{delay:.2f} s into its flow (seed {seed})",
            command.text,
            code,
            None,
            command.seconds,
            f"{len(now)} done marks all whole and unchanged: {not broken and not changed}; processes left: {len(left)}",
        )

    marker = secrets.token_hex(8)
    env = command_env(tmp_path, prefect_api.url, marker)
    code, output, seconds = run(["run", str(cfg)], env, tmp_path / "logs" / "rerun.log", timeout=400)
    final = hash_outputs(store)
    changed = sorted(k for k, h in finished.items() if final.get(k) != h)
    problems += [f"after the rerun: finished output changed or gone: {k}" for k in changed]
    problems += [f"after the rerun: done but incomplete: {b}" for b in incomplete_outputs(store)]
    for stage in ("download", "features", "reference", "sampling", "prediction", "postprocess"):
        for year in YEARS:
            if not any(m.startswith(f"{stage}/") and f"/{year}/" in m for m in final):
                problems.append(f"after the rerun: {stage} {year} is not done")
    for stage in ("merge", "training", "export", "change", "change-polygons", "report"):
        if not any(m.startswith(f"{stage}/") for m in final):
            problems.append(f"after the rerun: {stage} is not done")
    leftovers = hidden_temporaries(store)
    leftovers += [f"TMPDIR/{p.name}" for p in (tmp_path / "tmp").glob("lcms-*")]
    leftovers += [f"LCMS_HOME/tmp/{p.name}" for p in (tmp_path / "home" / "tmp").glob("*")]
    leftovers += [f"store/{p.relative_to(store)}" for p in store.rglob("lease.json")]
    if leftovers:
        problems.append(f"after the rerun: temporary files and leases left: {leftovers}")
    left = survivors(marker, GRACE_S)
    if left:
        problems.append(f"after the rerun: its processes still alive: {left}")
        end_processes(left)
    record(
        "rerun after the 12 kills",
        "lcms run cfg.yaml",
        code,
        output if code else None,
        seconds,
        f"{len(final)} done marks; earlier outputs byte-identical: {not changed}; temporaries left: {len(leftovers)}",
    )
    assert code == 0, output[-3000:]
    assert not problems, "\n".join(problems)


def test_running_stage_reads_the_flow_lines():
    out = "x\n12:00 | INFO | Beginning subflow run 'features · faults · 2023' for flow 'features'\n"
    assert _running_stage(out) == "features"
    assert _running_stage("nothing") is None
