"""The fault matrix's fixtures: one Prefect server for the suite's commands, the reference polygons of
the small config, and the table of what each fault did (printed at the end of the run; written to
docs/fault-matrix.md when LCMS_WRITE_FAULT_TABLE=1)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from faultkit import (
    MARKERS,
    REPO,
    ROWS,
    STORES,
    command_env,
    end_processes,
    free_port,
    run,
    small_config,
    survivors,
    table_markdown,
)

SUITE_SECONDS: dict[str, float] = {}


@dataclass
class PrefectServer:
    url: str
    home: Path


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory) -> PrefectServer:
    """A Prefect server the suite's commands share (PREFECT_API_URL): one start instead of one per command.
    Its database is searched for planted secrets like the commands' own temporary servers'."""
    home = tmp_path_factory.mktemp("prefect-shared")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_UI_ENABLED="false")
    log = open(home / "server.log", "wb")  # noqa: SIM115 - open for the server's lifetime
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "prefect"), "server", "start", "--host", "127.0.0.1"]
        + ["--port", str(port), "--no-ui", "--no-services"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + 180
    while True:
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    break
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the Prefect server did not start: {(home / 'server.log').read_text()[-2000:]}")
        time.sleep(0.5)
    STORES.append(home)
    yield PrefectServer(url, home)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)
    log.close()


@pytest.fixture(scope="session")
def reference_gpkg(tmp_path_factory) -> Path:
    """The synthetic scene's own land cover as reference polygons for the small config (`lcms synthetic-reference`)."""
    folder = tmp_path_factory.mktemp("reference")
    target = folder / "reference.gpkg"
    cfg = small_config(folder, str(folder / "unused-store"), target)
    code, output, _ = run(
        ["synthetic-reference", str(cfg), "--fraction", "0.8"], command_env(folder, None), folder / "ref.log"
    )
    assert code == 0 and target.is_file(), output
    return target


@pytest.fixture(autouse=True)
def no_process_outlives_its_test():
    """After each test, no process started by its commands (they carry its markers) may still run; those
    found are ended (by pid) and the test errors, naming them."""
    first = len(MARKERS)
    yield
    left = [p for marker in MARKERS[first:] for p in survivors(marker, grace=15)]
    if left:
        end_processes(left)
        pytest.fail(f"processes of this test's commands outlived them (ended now): {left}")


@pytest.fixture(scope="session")
def fault_table():
    """The rows of the fault table (faultkit.record appends to it)."""
    return ROWS


def pytest_runtest_logreport(report):
    if "tests/faults/" in report.nodeid.replace(os.sep, "/"):
        SUITE_SECONDS[report.nodeid] = SUITE_SECONDS.get(report.nodeid, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter):
    if not ROWS:
        return
    total = sum(SUITE_SECONDS.values())
    terminalreporter.section("fault matrix")
    terminalreporter.write_line(table_markdown(ROWS))
    terminalreporter.write_line(f"\nfault tests: {total:.0f} s in all")
    for nodeid, seconds in sorted(SUITE_SECONDS.items()):
        terminalreporter.write_line(f"  {seconds:6.1f} s  {nodeid}")
    if os.environ.get("LCMS_WRITE_FAULT_TABLE") == "1":
        write_doc(total)
        terminalreporter.write_line(f"written to {REPO / 'docs' / 'fault-matrix.md'}")


DOC_HEAD = """# The fault matrix

`tests/faults/` runs the faults below against real parts: `lcms` commands as subprocesses (each in
its own process group), a moto S3 server behind a TCP proxy of our own (`tests/faults/tcp_proxy.py`,
which pauses, drops or slows connections on command), a size-limited tmpfs, and a Prefect server.
The config is `examples/demo.yaml` scaled down to one 2 km tile, 8 dates a year and a quick model
(`tests/faults/faultkit.py: small_config`). Each row is one fault: the command's exit code and the
first error line it printed, how long it took, and what the test checked afterwards.

Run it with `pytest tests/faults` (part of `make test` and CI); `LCMS_WRITE_FAULT_TABLE=1` rewrites
this page from the run. Random kill points are seeded: the seed is printed and recorded below, and
`LCMS_FAULT_SEED=N` replays a run.
"""


START, END = "<!-- fault-table:start -->", "<!-- fault-table:end -->"


def write_doc(total: float) -> None:
    """Rewrite the measured part of docs/fault-matrix.md (between its markers); the rest of the page stays."""
    lines = [START, "", table_markdown(ROWS), ""]
    lines.append(f"Whole suite: {total:.0f} s on this machine. Per test:")
    lines.append("")
    for nodeid, seconds in sorted(SUITE_SECONDS.items()):
        lines.append(f"- `{nodeid.split('tests/faults/')[-1]}`: {seconds:.0f} s")
    lines += ["", END]
    measured = "\n".join(lines)
    path = REPO / "docs" / "fault-matrix.md"
    path.parent.mkdir(exist_ok=True)
    text = path.read_text() if path.exists() else ""
    if START in text and END in text:
        text = text[: text.index(START)] + measured + text[text.index(END) + len(END) :]
    else:
        text = DOC_HEAD + "\n## Measured\n\n" + measured + "\n"
    path.write_text(text)
