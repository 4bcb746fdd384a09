"""The `lcms` command's process: where its history and temporary files live, and how it stops.

- **LCMS_HOME** (default `./lcms-runs`) holds what the command line keeps between runs: without
  a Prefect server (`PREFECT_API_URL`), the run history of the temporary Prefect servers in
  `$LCMS_HOME/prefect` (not in the user's `~/.prefect`), and each command's temporary files in
  `$LCMS_HOME/tmp/<pid>-<start>/` (Dask's scratch space, model copies, export pieces), removed
  when the command ends and, if it was killed, by the next command.
- **Stopping.** SIGTERM is handled like Ctrl-C (the context managers close the cluster and the
  temporary server); a command that has not ended 8 s later exits anyway. A `kill -9` runs no code
  in the process, so a small watchdog process started beside it (it receives SIGTERM when its
  parent dies: Linux's parent-death signal) ends every process that inherited this command's run
  token (the temporary Prefect server, Dask workers) and removes the command's temporary folder.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HOME_ENV = "LCMS_HOME"
TOKEN_ENV = "LCMS_RUN_TOKEN"
GRACE_SECONDS = 8.0  # after SIGTERM, the longest a command takes to close its cluster and server


def home() -> Path:
    return Path(os.environ.get(HOME_ENV) or "lcms-runs").resolve()


def use_project_prefect_home() -> None:
    """Keep the temporary servers' run history under LCMS_HOME, unless the user chose a Prefect home
    or a server. Must run before Prefect is imported."""
    if not os.environ.get("PREFECT_API_URL") and not os.environ.get("PREFECT_HOME"):
        os.environ["PREFECT_HOME"] = str(home() / "prefect")


# --------------------------------------------------------------------------- temporary files


def _process_start(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(folder_name: str) -> bool:
    pid, _, start = folder_name.partition("-")
    if not pid.isdigit():
        return False
    if not Path("/proc").is_dir():  # no /proc (macOS): only our own pid is known to be alive
        return int(pid) == os.getpid()
    return _process_start(int(pid)) == start


def process_tag(pid: int | None = None) -> str:
    """`<pid>-<start time>`: names this process unambiguously on this machine (a pid alone is reused)."""
    pid = os.getpid() if pid is None else pid
    return f"{pid}-{_process_start(pid) or 0}"


def temp_prefix_beside(target: Path) -> str:
    """The prefix of a temporary file or folder made next to `target` (to be renamed onto it in one
    step): hidden, and tagged with this process so that another process can tell a dead writer's."""
    return f".{target.name}.{process_tag()}."


def remove_dead_temps_beside(target: Path) -> list[Path]:
    """Remove the temporary files and folders left next to `target` by processes that are gone (killed)."""
    removed = []
    for path in target.parent.glob(f".{target.name}.*.tmp"):
        tag = path.name[len(target.name) + 2 :].split(".", 1)[0]
        if "-" in tag and not _alive(tag):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def remove_stale_temp(root: Path) -> list[Path]:
    """Remove the temporary folders of commands that are no longer running (killed ones)."""
    removed = []
    for folder in root.glob("*") if root.is_dir() else []:
        if folder.is_dir() and not _alive(folder.name):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def use_run_temp_dir() -> Path:
    """Point this process (and every process it starts) at a temporary folder of its own under
    LCMS_HOME, after removing those that killed commands left behind. Removed when the command ends."""
    root = home() / "tmp"
    remove_stale_temp(root)
    folder = root / f"{os.getpid()}-{_process_start(os.getpid()) or int(time.time())}"
    folder.mkdir(parents=True, exist_ok=True)
    os.environ["TMPDIR"] = str(folder)
    tempfile.tempdir = str(folder)

    import atexit

    atexit.register(shutil.rmtree, folder, True)
    return folder


# --------------------------------------------------------------------------- stopping


def handle_sigterm() -> None:
    """SIGTERM ends the command like Ctrl-C does, and at the latest GRACE_SECONDS later."""

    def on_sigterm(signum, frame):
        timer = threading.Timer(GRACE_SECONDS, lambda: os._exit(128 + signal.SIGTERM))
        timer.daemon = True
        timer.start()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends it at once
        raise KeyboardInterrupt("SIGTERM")

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_sigterm)


def _set_parent_death_signal() -> None:
    # In the child, before exec: SIGTERM when the parent dies (Linux prctl PR_SET_PDEATHSIG = 1).
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)


def start_watchdog(temp_dir: Path | None = None) -> subprocess.Popen | None:
    """Start the watchdog that cleans up after this process if it is killed (Linux only)."""
    if not sys.platform.startswith("linux"):
        return None
    token = secrets.token_hex(8)
    os.environ[TOKEN_ENV] = token  # inherited by every process started from now on
    env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
    args = [sys.executable, "-m", "lcms.runtime", str(os.getpid()), token, str(temp_dir or "")]
    return subprocess.Popen(
        args,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # Ctrl-C in the terminal is for the command, not for its watchdog
        preexec_fn=_set_parent_death_signal,
    )


def processes_with_token(token: str) -> list[int]:
    """The processes (of this user) whose environment holds the run token."""
    marker = f"{TOKEN_ENV}={token}".encode()
    pids = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if marker in environ.split(b"\0") and int(entry.name) != os.getpid():
            pids.append(int(entry.name))
    return pids


def end_processes(pids: list[int], grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL what is still there after `grace` seconds."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while pids and time.monotonic() < deadline:
        time.sleep(0.1)
        pids = [p for p in pids if Path(f"/proc/{p}").exists() and _process_state(p) != "Z"]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def _process_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "X"


def _watch(parent: int, token: str, temp_dir: str) -> None:
    """The watchdog's body: wait for the parent to end, then end what it started and remove its temp folder."""
    ended = []  # a plain flag: a signal handler must not take locks the main thread may hold
    signal.signal(signal.SIGTERM, lambda *_: ended.append(True))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while not ended and os.getppid() == parent:
        time.sleep(0.5)  # the parent-death signal ends the wait; polling covers a parent that died before prctl
    end_processes(processes_with_token(token))
    if temp_dir:
        shutil.rmtree(temp_dir, ignore_errors=True)


if __name__ == "__main__":
    _watch(int(sys.argv[1]), sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else "")
