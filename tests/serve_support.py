"""What the `lcms serve` tests share: a small store with real change polygons, and real server processes.

`make_change_store` writes two tiles' maps of two years with planted changes (the world of
tests/test_change.py) and runs the change stage's own functions on them (no Prefect): the store
then holds the change layer exactly as `lcms run` leaves it, in seconds. `Server` starts
``lcms serve CONFIG --port N`` as a subprocess on 127.0.0.1 and waits for /health; `Client` is an
httpx client that logs in and sends the CSRF token on state-changing requests.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import yaml
from test_change import YEARS, noisy_maps, write_year

from flows.common import load_grid
from lcms.config import parse_config
from lcms.store import TileStore
from tasks.change.polygons import read_change_layer, write_change_layer
from tasks.change.tile import change_tile

LCMS = str(Path(sys.executable).with_name("lcms"))
PASSWORD = "correct horse battery"
COLLECTION = f"land-cover_{YEARS[0]}-{YEARS[1]}"


def config_data(store_url: str, database_path: str | None, **serve) -> dict:
    """A run config (two 2.5 km tiles in UTM 33N, the years of the planted changes) with a serve section."""
    data = {
        "name": "serve-test",
        "aoi": {"bbox": [460_000, 5_090_000, 465_000, 5_092_500], "bbox_crs": "EPSG:32633"},
        "years": list(YEARS),
        "grid": {"tile_size_m": 2500, "buffer_m": 50},
        "store": {"url": store_url},
        "change": {"min_confidence": 60, "min_area_m2": 2000, "opening_radius_px": 1},
        "serve": {"refresh_seconds": 0, **serve},
    }
    if database_path is not None:
        data["serve"]["database_path"] = database_path
    return data


def write_config(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def run_change_stage(config, store: TileStore, maps=noisy_maps) -> None:
    """Write both years' maps of every tile (from `maps`), then the change stage's tiles and layer."""
    grid = load_grid(config, store)
    for tile in grid:
        for year in YEARS:
            write_year(store, tile, year, *maps(tile, year, seed=year))
    records = [change_tile(store, tile, YEARS, config.change) for tile in grid]
    write_change_layer(store, list(grid), YEARS, config.change, records)


def make_change_store(folder: Path, **serve):
    """A local store with a change layer, and its config file; returns (config path, config, store)."""
    data = config_data(str(folder / "store"), str(folder / "serve.sqlite"), **serve)
    config = parse_config(data)
    store = TileStore.from_config(config.store)
    run_change_stage(config, store)
    return write_config(folder / "config.yaml", data), config, store


def layer_frame(store: TileStore):
    """The stored change layer, read independently of the service (geopandas)."""
    return read_change_layer(store, YEARS)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``lcms serve CONFIG`` in a subprocess on 127.0.0.1; its stderr (the access log) goes to a file."""

    def __init__(self, config: Path, log: Path, *args: str, env: dict | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self._log_file = open(log, "w")  # noqa: SIM115 - closed in stop()
        command = [LCMS, "serve", str(config), "--port", str(self.port), *args]
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=self._log_file, text=True, env={**os.environ, **(env or {})}
        )
        deadline = time.monotonic() + 60
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"lcms serve exited with {self.process.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"lcms serve did not answer within 60 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log_file.close()


class Client(httpx.Client):
    """An HTTP client for one user: logs in, then sends the CSRF token with every state-changing request."""

    def __init__(self, base_url: str, username: str | None = None, password: str = PASSWORD):
        super().__init__(base_url=base_url, timeout=30)
        self.csrf = None
        if username is not None:
            answer = self.post("/auth/login", json={"username": username, "password": password})
            assert answer.status_code == 200, answer.text
            self.csrf = answer.json()["csrf_token"]

    def request(self, method, url, **kwargs):
        if self.csrf and method.upper() not in ("GET", "HEAD", "OPTIONS"):
            kwargs["headers"] = {"X-CSRF-Token": self.csrf, **(kwargs.get("headers") or {})}
        return super().request(method, url, **kwargs)


def add_users(config: Path, users: dict[str, str]) -> None:
    """Add users with `lcms users add` (the command line, as an admin would)."""
    for username, role in users.items():
        done = subprocess.run(
            [LCMS, "users", "add", str(config), username, "--role", role, "--password-stdin"],
            input=PASSWORD + "\n",
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stderr


def items(client: Client, **params) -> dict:
    answer = client.get(f"/changes/collections/{COLLECTION}/items", params=params)
    assert answer.status_code == 200, answer.text
    return answer.json()


class World:
    """A store with change polygons, `lcms serve --demo` over it, and users of every role (see `open_world`)."""

    USERS = {"vera": "viewer", "olga": "operator", "oscar": "operator", "ada": "admin"}

    def __init__(self, folder: Path):
        self.folder = folder
        self.config_path, self.config, self.store = make_change_store(folder)
        self.frame = layer_frame(self.store)
        from lcms.serve.db import open_database
        from lcms.serve.users import add_user

        db = open_database(self.config, self.store)
        with db.transaction() as conn:
            for username, role in self.USERS.items():
                add_user(conn, username, PASSWORD, role, "test")
        self.database_path = Path(self.config.serve.database_path)
        self.server = Server(self.config_path, folder / "serve.log", "--demo")
        line = self.server.process.stdout.readline()  # the demo's one-time admin password
        assert "one-time password" in line, line
        self.admin_password = line.split("one-time password")[1].split()[0]

    def client(self, username: str | None = None) -> Client:
        if username == "demo-admin":
            return Client(self.server.url, username, self.admin_password)
        return Client(self.server.url, username)

    def close(self) -> None:
        self.server.stop()
