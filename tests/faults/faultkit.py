"""What the fault tests share: a small run config, `lcms` commands as real subprocesses, the
store checks (done marks point at complete outputs; finished outputs hash the same before and
after), the processes a command left behind, the planted secrets, and the fault table.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
LCMS = str(BIN / "lcms")
MARKER_ENV = "LCMS_FAULT_MARKER"  # set in every command's environment: finds its processes in /proc
TILE = "33N_0230_2545"  # the one tile of the small config
YEARS = (2023, 2024)

# Values planted in every command's environment; none may show up in logs, stores or Prefect's database.
_TOKEN = secrets.token_hex(6)
PLANTED = {
    "AWS_SECRET_ACCESS_KEY": f"plantedAwsSecret{_TOKEN}",
    "SH_CLIENT_SECRET": f"plantedShSecret{_TOKEN}",
    "LCMS_POSTGIS_DSN": f"postgresql://lcms:plantedPgPass{_TOKEN}@127.0.0.1:9/none",
}
PLANTED_VALUES = {
    "AWS_SECRET_ACCESS_KEY": PLANTED["AWS_SECRET_ACCESS_KEY"],
    "SH_CLIENT_SECRET": PLANTED["SH_CLIENT_SECRET"],
    "LCMS_POSTGIS_DSN password": f"plantedPgPass{_TOKEN}",
}


# --------------------------------------------------------------------------- the fault table


@dataclass
class FaultRow:
    case: str
    command: str
    exit_code: str
    first_error: str
    seconds: float
    checked: str


ROWS: list[FaultRow] = []


def record(case: str, command: str, exit_code, output: str | None, seconds: float, checked: str) -> FaultRow:
    first = first_error_line(output) if output is not None else "—"
    row = FaultRow(case, command, str(exit_code), first, round(seconds, 1), checked)
    ROWS.append(row)
    return row


def first_error_line(output: str) -> str:
    """The line a user reads first: the CLI's `error:` line, else the first line naming an error."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for line in lines:
        if line.startswith("error:"):
            return _short(line)
    for line in lines:
        if re.search(r"Traceback|Error\b|Error:|No space left", line):
            return _short(line)
    return "—"


def _short(line: str, limit: int = 220) -> str:
    line = re.sub(r"\s+", " ", line)
    return line if len(line) <= limit else line[: limit - 1] + "…"


def table_markdown(rows: Iterable[FaultRow]) -> str:
    out = [
        "| case | command | exit code | first error line | s | checked |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = [r.case, f"`{r.command}`", r.exit_code, r.first_error.replace("|", "\\|"), f"{r.seconds:g}", r.checked]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


# --------------------------------------------------------------------------- config and environment


def small_config(
    folder: Path,
    store_url: str,
    reference: Path,
    cluster: dict | None = None,
    years: list[int] | None = None,
    source: dict | None = None,
    **store_extra,
) -> Path:
    """The demo config (examples/demo.yaml) scaled down: one 2 km tile, 8 dates a year, a quick model."""
    cfg = yaml.safe_load((REPO / "examples" / "demo.yaml").read_text())
    cfg["name"] = "faults"
    if years:
        cfg["years"] = years
    cfg["aoi"] = {"bbox": [460_000, 5_090_000, 462_000, 5_092_000], "bbox_crs": "EPSG:32633"}
    cfg["grid"]["tile_size_m"] = 2000
    cfg["store"] = {"url": store_url, **store_extra}
    cfg["cluster"] = cluster or {"kind": "local", "n_workers": 1, "threads_per_worker": 1}
    cfg["download"]["source"]["dates_per_year"] = 8
    if source is not None:
        cfg["download"]["source"] = source
    cfg["features"] = {"date_grid": {"step_days": 61}}
    cfg["reference"]["path"] = str(reference)
    cfg["sampling"]["count"] = 2000
    cfg["merge"]["split"] = "halves"
    cfg["training"].update(num_boost_round=20, num_threads=1)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def command_env(folder: Path, api_url: str | None, marker: str | None = None, **extra) -> dict[str, str]:
    """A command's environment: its own LCMS_HOME, TMPDIR and Prefect home under `folder`, the shared
    Prefect server (`api_url`) or, with None, a temporary one, a marker, and the planted secrets."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "LCMS_", "AWS_", "SH_"))}
    for name in ("home", "tmp", "prefect-home"):
        (folder / name).mkdir(parents=True, exist_ok=True)
    env.update(
        LCMS_HOME=str(folder / "home"),
        TMPDIR=str(folder / "tmp"),
        PREFECT_HOME=str(folder / "prefect-home"),
        PYTHONUNBUFFERED="1",
        COLUMNS="250",  # rich wraps at the terminal width; keep an error on one line
        AWS_ACCESS_KEY_ID="plantedKeyId",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_EC2_METADATA_DISABLED="true",
        SH_CLIENT_ID="lcms-fault-client",
        **PLANTED,
    )
    if api_url:
        env["PREFECT_API_URL"] = api_url
    env[MARKER_ENV] = marker or secrets.token_hex(8)
    MARKERS.append(env[MARKER_ENV])
    env.update(extra)
    return env


MARKERS: list[str] = []  # every command environment's marker: no process may carry one after its test


# --------------------------------------------------------------------------- commands


@dataclass
class Command:
    args: list[str]
    log: Path
    proc: subprocess.Popen
    started: float = field(default_factory=time.monotonic)

    @property
    def text(self) -> str:
        return "lcms " + " ".join(a if "/" not in a else Path(a).name for a in self.args)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill_group()
            raise AssertionError(
                f"{self.text} did not end within {timeout:.0f} s; last output:\n{self.output()[-3000:]}"
            ) from None

    def kill_group(self, sig: int = signal.SIGKILL) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, sig)

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started

    def wait_for_line(self, pattern: str, timeout: float) -> bool:
        """Wait until the output has a line matching `pattern` (True) or the command ends or time runs out."""
        regex = re.compile(pattern)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if regex.search(self.output()):
                return True
            if self.proc.poll() is not None:
                return bool(regex.search(self.output()))
            time.sleep(0.05)
        return False


def start(args: list[str], env: dict[str, str], log: Path, cwd: Path | None = None) -> Command:
    """Start `lcms ARGS` in a process group of its own, output (both streams) to `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as handle:
        proc = subprocess.Popen(
            [LCMS, *args],
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd or log.parent,
            start_new_session=True,
        )
    LOGS.append(log)
    return Command(list(args), log, proc)


def run(args: list[str], env: dict[str, str], log: Path, timeout: float = 300) -> tuple[int, str, float]:
    command = start(args, env, log)
    code = command.wait(timeout)
    return code, command.output(), command.seconds


LOGS: list[Path] = []  # every command's output: searched for planted secrets
STORES: list[Path] = []  # local stores and homes written by the fault tests: searched too


# --------------------------------------------------------------------------- processes


def marked_processes(marker: str) -> list[tuple[int, str]]:
    """Live processes whose environment holds MARKER_ENV=marker: what a command started (and left)."""
    needle = f"{MARKER_ENV}={marker}".encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            environ = (proc / "environ").read_bytes()
            if needle in environ.split(b"\0"):
                state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state != "Z":
                    cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                    found.append((int(proc.name), cmdline.strip()[:160]))
        except (OSError, IndexError):
            continue
    return found


def survivors(marker: str, grace: float) -> list[tuple[int, str]]:
    """The marked processes still alive after `grace` seconds (polled: they may be on their way out)."""
    end = time.monotonic() + grace
    left = marked_processes(marker)
    while left and time.monotonic() < end:
        time.sleep(0.2)
        left = marked_processes(marker)
    return left


def end_processes(found: list[tuple[int, str]]) -> None:
    """Kill processes a test's own command left behind (by pid; they carry that command's marker)."""
    for pid, _ in found:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


# --------------------------------------------------------------------------- the store


def done_marks(root: Path) -> dict[str, dict]:
    """Every done mark of a local store: its path relative to `root` → its record."""
    marks = {}
    for path in sorted(root.rglob("done.json")):
        marks[str(path.relative_to(root))] = json.loads(path.read_text())
    return marks


def output_folder(done: Path, record: dict) -> Path:
    zarr_attempt = done.parent / f"{record['attempt']}.zarr"
    return zarr_attempt if zarr_attempt.is_dir() else done.parent / record["attempt"]


def hash_outputs(root: Path) -> dict[str, str]:
    """Done mark → sha256 of the mark and every byte of the output it points at."""
    hashes = {}
    for rel, record in done_marks(root).items():
        done = root / rel
        digest = hashlib.sha256(done.read_bytes())
        folder = output_folder(done, record)
        for path in sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else ():
            digest.update(str(path.relative_to(folder)).encode())
            digest.update(path.read_bytes())
        hashes[rel] = digest.hexdigest()
    return hashes


def incomplete_outputs(root: Path) -> list[str]:
    """Done marks whose output is missing or does not read back whole (every array, every file)."""
    import zarr

    problems = []
    for rel, record in done_marks(root).items():
        done = root / rel
        folder = output_folder(done, record)
        if not folder.is_dir():
            problems.append(f"{rel}: its attempt {record['attempt']} is missing")
            continue
        try:
            if folder.suffix == ".zarr":
                group = zarr.open_group(str(folder), mode="r")
                for name in record["arrays"]:
                    group[name][...]  # every chunk decoded: a truncated chunk fails here
            else:
                for name in record["arrays"]:
                    if not (folder / name).is_file():
                        problems.append(f"{rel}: file {name} of {record['attempt']} is missing")
        except Exception as exc:  # noqa: BLE001 - any failure to read back is the finding
            problems.append(f"{rel}: {type(exc).__name__}: {exc}")
    return problems


def hidden_temporaries(root: Path) -> list[str]:
    """Temporary files and folders left in a store: export pieces (.name.tif.*.tmp), .tmp-* files."""
    found = []
    for path in root.rglob(".*"):
        if re.search(r"\.tmp$|^\.tmp-|^\.lease-", path.name):
            found.append(str(path.relative_to(root)))
    return sorted(found)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --------------------------------------------------------------------------- secrets


def find_planted(paths: Iterable[Path]) -> list[str]:
    """Where any planted secret value occurs (as text, in any file under `paths`, binary files included)."""
    needles = {name: value.encode() for name, value in PLANTED_VALUES.items()}
    hits = []
    for base in paths:
        files = [base] if base.is_file() else (p for p in base.rglob("*") if p.is_file()) if base.is_dir() else ()
        for path in files:
            try:
                data = path.read_bytes()
            except OSError:
                continue
            for name, needle in needles.items():
                if needle in data:
                    hits.append(f"{name} in {path}")
    return hits
