"""A disk that fills mid-write: the store on a 2 MiB tmpfs (mounted as root or with sudo; skipped when
neither works, except in CI, LCMS_REQUIRE_SERVICES=1, where it fails),
the grid fits, a tile's download (about 4 MiB) does not. The command fails with a line that says
ENOSPC (No space left on device), nothing is marked done, and no partial attempt is left behind
(a partial attempt is never read, but on a full disk it keeps the space the rerun needs).
"""

from __future__ import annotations

import os
import subprocess

import pytest
from faultkit import STORES, command_env, done_marks, record, small_config, start

SIZE = "2m"


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]  # CI runners: passwordless sudo
    result = subprocess.run(
        [*sudo, "mount", "-t", "tmpfs", "-o", f"size={SIZE},mode=1777", "tmpfs", str(mount)], capture_output=True
    )
    if result.returncode != 0:
        reason = f"the disk-full case mounts a small tmpfs (root or sudo): {result.stderr.decode().strip()}"
        if os.environ.get("LCMS_REQUIRE_SERVICES") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        yield mount
    finally:
        subprocess.run([*sudo, "umount", "-l", str(mount)], check=False)


def test_disk_full_mid_write_fails_clearly_and_marks_nothing_done(tmp_path, small_disk, prefect_api, reference_gpkg):
    store = small_disk / "store"
    STORES.append(tmp_path)
    cfg = small_config(tmp_path / "cfg", str(store), reference_gpkg, years=[2023])
    env = command_env(tmp_path, prefect_api.url)
    command = start(["download", str(cfg)], env, tmp_path / "logs" / "download.log")
    code = command.wait(300)
    output = command.output()
    marks = [m for m in done_marks(store) if m.startswith("download/")]
    attempts = sorted(str(p.relative_to(store)) for p in store.glob("download/*/*/attempt-*"))
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    record(
        f"disk full mid-write (store on a {SIZE} tmpfs)",
        command.text,
        code,
        output,
        command.seconds,
        f"download marked done: {bool(marks)}; partial attempts left: {len(attempts)}",
    )
    assert code not in (0, None), output[-3000:]
    assert errors and ("No space left on device" in errors[0] or "ENOSPC" in errors[0]), output[-3000:]
    assert not marks, marks
    assert not attempts, f"the failed writer's partial attempts are still on the full disk: {attempts}"
