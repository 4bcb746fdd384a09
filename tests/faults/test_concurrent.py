"""Two `lcms download` commands started together on the same tiles, on a local store and on S3 (moto),
all four at once: the writers' leases (lcms/store.py) let one command make each tile-year and the
other wait for it and skip it. Both exit 0, every tile-year is made once (the commands' "done" counts
add up to the tile-years), each done mark points at the one attempt left, and it reads back whole.
"""

from __future__ import annotations

import re
import uuid

import boto3
import numpy as np
from faultkit import STORES, TILE, YEARS, command_env, incomplete_outputs, record, small_config, start

from lcms.config import load_config
from lcms.selection import load_grid
from lcms.store import TileStore

SUMMARY = re.compile(r"download: (\d+) done, (\d+) skipped, (\d+) failed of (\d+) tile-years")


def _counts(output: str) -> tuple[int, int, int]:
    """(done, skipped, failed) from a command's summary line; a command with nothing to do made nothing."""
    found = SUMMARY.findall(output)
    if not found:
        return 0, 0, 0
    done, skipped, failed, _ = (int(v) for v in found[-1])
    return done, skipped, failed


def _check_store(store: TileStore) -> list[str]:
    """Each tile-year done once, its attempt the only one left, every array readable."""
    problems = []
    for year in YEARS:
        record_ = store.done_record("download", year, TILE)
        if record_ is None:
            problems.append(f"{store.url}: download {year} not done")
            continue
        folder = store.tile_dir("download", year, TILE)
        attempts = sorted(p.rsplit("/", 1)[-1] for p in store.fs.ls(folder, detail=False) if ".zarr" in p)
        if attempts != [f"{record_.attempt}.zarr"]:
            problems.append(f"{store.url}: download {year}: attempts left {attempts}, done mark {record_.attempt}")
        reader = store.open_tile("download", year, TILE)
        for name in record_.arrays:
            values = reader.read(name)
            if values.size == 0 or (values.dtype.kind == "u" and not np.any(values)):
                problems.append(f"{store.url}: download {year} {name} is empty")
    return problems


def test_two_commands_on_the_same_tiles_local_and_s3(tmp_path, s3_endpoint, prefect_api, reference_gpkg):
    bucket = f"lcms-faults-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket)
    STORES.append(tmp_path)
    where = {
        "local": (tmp_path / "store", {}),
        "S3": (f"s3://{bucket}/store", {"AWS_ENDPOINT_URL": s3_endpoint}),
    }
    configs = {}
    for name, (url, extra) in where.items():
        cfg = small_config(tmp_path / f"cfg-{name}", str(url), reference_gpkg)
        env = command_env(tmp_path / name, prefect_api.url, **extra)
        configs[name] = (cfg, env)
        # the tiles exist before the two commands race for them (what `lcms grid` does, without its start-up;
        # the s3_endpoint fixture points this process at moto)
        config = load_config(cfg)
        load_grid(config, TileStore.from_config(config.store))
    commands = {
        (name, i): start(["download", str(cfg)], env, tmp_path / "logs" / f"download-{name}-{i}.log")
        for name, (cfg, env) in configs.items()
        for i in (1, 2)
    }
    codes = {key: command.wait(400) for key, command in commands.items()}
    problems = []
    for name in configs:
        pair = [commands[(name, i)] for i in (1, 2)]
        counts = [_counts(c.output()) for c in pair]
        made = sum(c[0] for c in counts)
        store = TileStore(str(where[name][0]))
        if name == "S3":
            store = TileStore(str(where[name][0]), {"endpoint_url": s3_endpoint})
        found = _check_store(store)
        if name == "local":
            found += incomplete_outputs(where[name][0])
        problems += found
        if made != len(YEARS):
            problems.append(f"{name}: the two commands made {made} tile-years between them, not {len(YEARS)}")
        for i, command in enumerate(pair, 1):
            if codes[(name, i)] != 0:
                problems.append(f"{name} command {i} exited {codes[(name, i)]}: {command.output()[-1500:]}")
        record(
            f"two `lcms download` at once, {name} store",
            "lcms download cfg.yaml (×2)",
            " / ".join(str(codes[(name, i)]) for i in (1, 2)),
            "\n".join(c.output() for c in pair if c.proc.returncode),
            max(c.seconds for c in pair),
            "done/skipped/failed: "
            + " and ".join(f"{d}/{s}/{f}" for d, s, f in counts)
            + f"; each tile-year made once, one attempt left, whole: {made == len(YEARS) and not found}",
        )
    assert not problems, "\n".join(problems)
