"""A throw-away PostgreSQL + PostGIS server for the tests (fixture `postgis_dsn`).

The session fixture runs ``initdb`` into a fresh folder under /tmp, starts ``postgres`` on
127.0.0.1 at a free port (its unix socket in the same folder), creates the database
``lcms_test`` with ``CREATE EXTENSION postgis`` and yields a DSN with a password
(``postgresql://lcms:<password>@127.0.0.1:<port>/lcms_test``). At teardown the server gets a
fast shutdown (SIGINT) and the folder is removed.

Finding the binaries: ``LCMS_PG_BINDIR`` if set, else the folder of the real ``pg_ctl`` /
``postgres`` on PATH (symlinks resolved: Debian's /usr/local/bin/pg_ctl points into
/usr/lib/postgresql/<v>/bin), else /usr/lib/postgresql/<v>/bin, newest first. A folder is used
only if that installation has PostGIS: ``postgis.control`` in the ``extension`` folder of its
``pg_config --sharedir``. On Debian: ``apt-get install postgresql-15 postgresql-15-postgis-3``.

Root: postgres refuses to run as root, so when the tests run as root, ``initdb`` and
``postgres`` run as the ``postgres`` system user (created by Debian's package; else ``nobody``)
through `subprocess`'s ``user=``/``group=`` (no sudo/runuser needed); the folder is chowned to
that user. As any other user they run as that user.

No binaries → the fixture skips with the reason, unless ``LCMS_REQUIRE_SERVICES=1`` (CI), where
it fails. A server that is there but does not start always fails, with the tail of its log.
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

DATABASE = "lcms_test"
SUPERUSER = "lcms"
START_TIMEOUT_S = 30.0
APT_PACKAGES = ("postgresql-15", "postgresql-15-postgis-3")


def _version_key(path: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", path)) or (0,)


def _sharedir(bindir: Path) -> Path | None:
    pg_config = bindir / "pg_config"
    if pg_config.is_file():
        try:
            out = subprocess.run([str(pg_config), "--sharedir"], capture_output=True, text=True, timeout=10, check=True)
            return Path(out.stdout.strip())
        except (OSError, subprocess.SubprocessError):
            pass
    for guess in (bindir.parent / "share" / "postgresql", bindir.parent / "share"):
        if (guess / "extension").is_dir():
            return guess
    return None


def find_postgis_bindir() -> tuple[Path | None, str]:
    """The bin folder of a PostgreSQL installation that has PostGIS, or None and why not."""
    candidates: list[Path] = []
    if os.environ.get("LCMS_PG_BINDIR"):
        candidates.append(Path(os.environ["LCMS_PG_BINDIR"]))
    for name in ("pg_ctl", "postgres"):
        found = shutil.which(name)
        if found:
            candidates.append(Path(os.path.realpath(found)).parent)
    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True)]
    seen: list[str] = []
    for bindir in dict.fromkeys(candidates):
        if not ((bindir / "postgres").is_file() and (bindir / "initdb").is_file()):
            continue
        share = _sharedir(bindir)
        if share is not None and (share / "extension" / "postgis.control").is_file():
            return bindir, ""
        seen.append(f"{bindir} (no postgis.control in {share}/extension)" if share else f"{bindir} (no share dir)")
    if seen:
        return None, "PostgreSQL found without PostGIS: " + "; ".join(
            seen
        ) + " — apt-get install postgresql-15-postgis-3"
    return (
        None,
        "no PostgreSQL server binaries (initdb, postgres) — apt-get install postgresql-15 postgresql-15-postgis-3",
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run_as() -> dict:
    """subprocess keyword arguments that drop root to an unprivileged user (nothing when not root)."""
    if os.geteuid() != 0:
        return {}
    for name in ("postgres", "nobody"):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
    raise RuntimeError("running as root and neither a 'postgres' nor a 'nobody' user exists to run PostgreSQL")


@dataclass
class PostgisServer:
    """One running test server; `dsn(database)` builds DSNs for it."""

    bindir: Path
    root: Path
    port: int
    password: str
    process: subprocess.Popen | None = None
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.root / "postgres.log"

    def dsn(self, database: str = DATABASE) -> str:
        return f"postgresql://{SUPERUSER}:{self.password}@127.0.0.1:{self.port}/{database}"

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def start(self) -> None:
        as_user = _run_as()
        data = self.root / "data"
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.password + "\n")
        if as_user:
            for path in (self.root, pwfile):
                os.chown(path, as_user["user"], as_user["group"])
        initdb = subprocess.run(
            [
                str(self.bindir / "initdb"),
                "-D",
                str(data),
                "-U",
                SUPERUSER,
                f"--pwfile={pwfile}",
                "--auth=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ],
            capture_output=True,
            text=True,
            cwd=self.root,
            timeout=120,
            **as_user,
        )
        pwfile.unlink()
        if initdb.returncode != 0:
            raise RuntimeError(f"initdb failed ({initdb.returncode}):\n{initdb.stdout}\n{initdb.stderr}")
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": str(self.root),
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "shared_buffers": "32MB",
            "max_connections": "30",
            "dynamic_shared_memory_type": "mmap",
        }
        args = [str(self.bindir / "postgres"), "-D", str(data)]
        for key, value in settings.items():
            args += ["-c", f"{key}={value}"]
        with open(self.log, "ab") as log:
            if as_user:
                os.chown(self.log, as_user["user"], as_user["group"])
            self.process = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, cwd=self.root, start_new_session=True, **as_user
            )
        self._wait_ready()

    def _wait_ready(self) -> None:
        import psycopg

        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"postgres exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                with psycopg.connect(self.dsn("postgres"), connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"postgres not ready after {START_TIMEOUT_S:.0f} s:\n{self.log_tail()}"
                    ) from None
                time.sleep(0.1)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGINT)  # fast shutdown: roll back open transactions, then exit
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


def create_database(server_dsn: str, name: str, postgis: bool = True) -> str:
    """Create database `name` on the server of `server_dsn` (with PostGIS or not); returns its DSN."""
    import psycopg
    from psycopg import sql
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    params = conninfo_to_dict(server_dsn)
    params["dbname"] = name
    dsn = make_conninfo(**params)
    if postgis:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION postgis")
    return dsn


def start_server() -> PostgisServer:
    """Start a server (up to 3 ports are tried, in case another process takes the free port first)."""
    bindir, why = find_postgis_bindir()
    if bindir is None:
        message = f"PostGIS test server unavailable: {why}"
        if os.environ.get("LCMS_REQUIRE_SERVICES") == "1":
            pytest.fail(message + " (LCMS_REQUIRE_SERVICES=1)", pytrace=False)
        pytest.skip(message)
    last_error: Exception | None = None
    for _ in range(3):
        # /tmp, not pytest's tmp_path: its parents are root-only (0700) and the postgres user must reach the folder.
        root = Path(tempfile.mkdtemp(prefix="lcms-pg-", dir="/tmp" if os.geteuid() == 0 else None))
        server = PostgisServer(bindir=bindir, root=root, port=_free_port(), password=secrets.token_hex(12))
        try:
            server.start()
            return server
        except Exception as exc:  # noqa: BLE001 - retried, then reported
            last_error = exc
            server.stop()
            shutil.rmtree(root, ignore_errors=True)
            if "could not bind" not in str(exc) and "Address already in use" not in str(exc):
                break
    pytest.fail(f"PostGIS test server at {bindir} did not start: {last_error}", pytrace=False)


@pytest.fixture(scope="session")
def postgis_dsn():
    """DSN (with password) of database ``lcms_test`` with PostGIS on a throw-away local server."""
    server = start_server()
    try:
        create_database(server.dsn("postgres"), DATABASE, postgis=True)
        yield server.dsn(DATABASE)
    finally:
        server.stop()
        shutil.rmtree(server.root, ignore_errors=True)
