"""A Dask cluster in the shape of the EC2 one, on this machine: a `dask scheduler` process and `dask worker`
processes (Dask's own command line, as on the instances), talking TCP on 127.0.0.1 and sharing nothing
but what their environment names (the S3 endpoint, the Prefect API).

Used by the benchmark suite's scaling run (suite_workers.lcms_scaling) and by
tests/test_dask_cli_cluster.py. Each process runs in a session of its own, so a worker is ended with its
nanny and the process it started, as when its instance goes away; every process is ended on close, and
at interpreter exit should close not be reached.

    with cli_cluster(2, Path("/tmp/x"), env) as cluster:
        lcms download CONFIG --scheduler-address cluster.address
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from lcms.cluster import worker_nanny_env

DASK = str(Path(sys.executable).parent / "dask")
_LIVE: set[int] = set()  # process groups started here and not yet ended: ended at exit


@dataclass
class CliCluster:
    """The scheduler's address and the processes behind it (their logs in `folder`)."""

    address: str
    folder: Path
    scheduler: subprocess.Popen
    workers: list[subprocess.Popen] = field(default_factory=list)

    def add_worker(self, env: Mapping[str, str], nthreads: int = 1) -> subprocess.Popen:
        index = len(self.workers)
        args = [DASK, "worker", self.address, "--nworkers", "1", "--nthreads", str(nthreads), "--no-dashboard"]
        args += ["--host", "127.0.0.1", "--name", f"worker-{index}", "--death-timeout", "60"]
        args += ["--local-directory", str(self.folder / f"worker-{index}")]
        # what EC2Cluster passes its workers too (lcms/cluster.py: the worker processes' malloc settings)
        env = {**env, **worker_nanny_env()}
        self.workers.append(_start(args, env, self.folder / f"worker-{index}.log"))
        return self.workers[-1]

    def kill_worker(self, index: int) -> None:
        """SIGKILL worker `index` with its nanny (the whole process group): what losing its machine does."""
        _end_group(self.workers[index], signal.SIGKILL)

    def wait_for_workers(self, n: int, timeout: float = 60) -> None:
        from distributed import Client

        with Client(self.address, timeout=timeout, set_as_default=False) as client:
            try:
                client.wait_for_workers(n, timeout=timeout)
            except TimeoutError:
                raise TimeoutError(f"{n} Dask worker(s) did not join {self.address}: {self.logs()}") from None

    def logs(self) -> str:
        parts = [f"--- {p.name}\n{p.read_text(errors='replace')[-2000:]}" for p in sorted(self.folder.glob("*.log"))]
        return "\n".join(parts)

    def close(self) -> None:
        for proc in [*self.workers, self.scheduler]:
            _end_group(proc, signal.SIGTERM)
        for proc in [*self.workers, self.scheduler]:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                _end_group(proc, signal.SIGKILL)
            _LIVE.discard(proc.pid)


@contextlib.contextmanager
def cli_cluster(
    n_workers: int, folder: Path, env: Mapping[str, str] | None = None, nthreads: int = 1, timeout: float = 60
) -> Iterator[CliCluster]:
    """`dask scheduler` on a free port of 127.0.0.1 and `n_workers` `dask worker` processes, once they joined."""
    env = dict(os.environ if env is None else env)
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    scheduler = _start(
        [DASK, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
        env,
        folder / "scheduler.log",
    )
    cluster = CliCluster(f"tcp://127.0.0.1:{port}", folder, scheduler)
    try:
        for _ in range(n_workers):
            cluster.add_worker(env, nthreads)
        cluster.wait_for_workers(n_workers, timeout)
        yield cluster
    finally:
        cluster.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(args: list[str], env: Mapping[str, str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as handle:
        proc = subprocess.Popen(args, stdout=handle, stderr=subprocess.STDOUT, env=dict(env), start_new_session=True)
    _LIVE.add(proc.pid)
    return proc


def _end_group(proc: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)
    if sig == signal.SIGKILL:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
    if proc.poll() is not None:
        _LIVE.discard(proc.pid)


@atexit.register
def _end_leftovers() -> None:
    for pgid in list(_LIVE):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
