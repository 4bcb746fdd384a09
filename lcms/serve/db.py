"""The service's database: users, sessions, reviews and their audit log, in SQLite or PostGIS.

Two backends behind one small interface, so the rest of the service writes each query once:

- **embedded** (the default): one SQLite file, under a local store (`TileStore.serve_database_path`)
  or at ``serve.database_path``. Nothing to start. The change polygons stay in the store's
  GeoPackage, which a query ATTACHes read-only (see lcms/serve/changes.py).
- **postgis**: the database the change stage writes its table to (tasks/change/postgis.py); the
  DSN comes from an environment variable or a Prefect Secret block (flows/change.py
  `postgis_dsn`), never from the config. The tables live in ``serve.postgis.schema_name``.

Queries are written once with ``?`` placeholders (`Conn.rows`, `Conn.run`); the PostGIS backend
turns them into psycopg's ``%s``. Values are always parameters. Table names come from `Conn.t`:
the schema name is checked against ``^[a-z_][a-z0-9_]*$`` by the config, so it is safe to quote
into SQL as an identifier.

Tables (prefix ``lcms_``): ``users``, ``sessions``, ``login_failures``, ``decisions`` (append-only:
every review decision and admin resolution), ``change_reviews`` (derived state per change:
status, version, orphaned flag; rewritten from the decisions), ``audit`` (append-only: user
administration and logins), ``layers`` (which change-layer attempt the reviews were last checked
against). Append-only means triggers that abort any UPDATE or DELETE, in both backends.
Timestamps are ISO 8601 UTC text (``2026-11-30T15:04:05.123456Z``), which sorts as time.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import queue
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from lcms.config import PostgisConfig, RunConfig
from lcms.store import TileStore

log = logging.getLogger(__name__)

APPEND_ONLY = ("decisions", "audit")
SCHEMA_VERSION = 1


class DatabaseError(RuntimeError):
    """The database cannot be opened or used; the message says where and what to do."""


def utcnow() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str) -> dt.datetime:
    return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.UTC)


# --------------------------------------------------------------------------------------------- DDL

_SQLITE_DDL = """
CREATE TABLE IF NOT EXISTS lcms_users (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    username TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
    disabled INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS lcms_sessions (
    token_hash TEXT PRIMARY KEY,
    user_id INTEGER NOT NULL REFERENCES lcms_users (id),
    csrf_token TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    revoked_at TEXT
);
CREATE INDEX IF NOT EXISTS lcms_sessions_user ON lcms_sessions (user_id);
CREATE TABLE IF NOT EXISTS lcms_login_failures (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    username TEXT NOT NULL,
    client TEXT NOT NULL,
    at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS lcms_login_failures_at ON lcms_login_failures (at);
CREATE TABLE IF NOT EXISTS lcms_decisions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    product TEXT NOT NULL,
    year_from INTEGER NOT NULL,
    year_to INTEGER NOT NULL,
    change_id TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('review', 'resolution')),
    reviewer TEXT NOT NULL,
    decision TEXT NOT NULL CHECK (decision IN ('confirmed', 'rejected', 'corrected', 'unsure')),
    class_from INTEGER,
    class_to INTEGER,
    geometry TEXT,
    comment TEXT NOT NULL DEFAULT '',
    version INTEGER NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS lcms_decisions_change ON lcms_decisions (product, change_id);
CREATE INDEX IF NOT EXISTS lcms_decisions_reviewer ON lcms_decisions (product, reviewer);
CREATE TABLE IF NOT EXISTS lcms_change_reviews (
    product TEXT NOT NULL,
    change_id TEXT NOT NULL,
    year_from INTEGER NOT NULL,
    year_to INTEGER NOT NULL,
    version INTEGER NOT NULL,
    status TEXT NOT NULL,
    agreement TEXT NOT NULL,
    class_from INTEGER,
    class_to INTEGER,
    geometry TEXT,
    reviewers TEXT NOT NULL,
    resolved_by TEXT,
    updated_at TEXT NOT NULL,
    orphaned INTEGER NOT NULL DEFAULT 0,
    orphaned_at TEXT,
    PRIMARY KEY (product, change_id)
);
CREATE INDEX IF NOT EXISTS lcms_change_reviews_status ON lcms_change_reviews (product, year_from, year_to, status);
CREATE TABLE IF NOT EXISTS lcms_audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS lcms_layers (
    product TEXT NOT NULL,
    year_from INTEGER NOT NULL,
    year_to INTEGER NOT NULL,
    attempt TEXT NOT NULL,
    synced_at TEXT NOT NULL,
    PRIMARY KEY (product, year_from, year_to)
);
"""

_SQLITE_APPEND_ONLY = """
CREATE TRIGGER IF NOT EXISTS lcms_{table}_no_update BEFORE UPDATE ON lcms_{table}
BEGIN SELECT RAISE(ABORT, 'lcms_{table} is append-only: rows are never updated'); END;
CREATE TRIGGER IF NOT EXISTS lcms_{table}_no_delete BEFORE DELETE ON lcms_{table}
BEGIN SELECT RAISE(ABORT, 'lcms_{table} is append-only: rows are never deleted'); END;
"""

_PG_DDL = """
CREATE SCHEMA IF NOT EXISTS {s};
CREATE TABLE IF NOT EXISTS {s}.lcms_users (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    username text NOT NULL UNIQUE,
    password_hash text NOT NULL,
    role text NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
    disabled integer NOT NULL DEFAULT 0,
    created_at text NOT NULL,
    updated_at text NOT NULL
);
CREATE TABLE IF NOT EXISTS {s}.lcms_sessions (
    token_hash text PRIMARY KEY,
    user_id bigint NOT NULL REFERENCES {s}.lcms_users (id),
    csrf_token text NOT NULL,
    created_at text NOT NULL,
    expires_at text NOT NULL,
    revoked_at text
);
CREATE INDEX IF NOT EXISTS lcms_sessions_user ON {s}.lcms_sessions (user_id);
CREATE TABLE IF NOT EXISTS {s}.lcms_login_failures (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    username text NOT NULL,
    client text NOT NULL,
    at text NOT NULL
);
CREATE INDEX IF NOT EXISTS lcms_login_failures_at ON {s}.lcms_login_failures (at);
CREATE TABLE IF NOT EXISTS {s}.lcms_decisions (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    product text NOT NULL,
    year_from integer NOT NULL,
    year_to integer NOT NULL,
    change_id text NOT NULL,
    kind text NOT NULL CHECK (kind IN ('review', 'resolution')),
    reviewer text NOT NULL,
    decision text NOT NULL CHECK (decision IN ('confirmed', 'rejected', 'corrected', 'unsure')),
    class_from integer,
    class_to integer,
    geometry text,
    comment text NOT NULL DEFAULT '',
    version integer NOT NULL,
    created_at text NOT NULL
);
CREATE INDEX IF NOT EXISTS lcms_decisions_change ON {s}.lcms_decisions (product, change_id);
CREATE INDEX IF NOT EXISTS lcms_decisions_reviewer ON {s}.lcms_decisions (product, reviewer);
CREATE TABLE IF NOT EXISTS {s}.lcms_change_reviews (
    product text NOT NULL,
    change_id text NOT NULL,
    year_from integer NOT NULL,
    year_to integer NOT NULL,
    version integer NOT NULL,
    status text NOT NULL,
    agreement text NOT NULL,
    class_from integer,
    class_to integer,
    geometry text,
    reviewers text NOT NULL,
    resolved_by text,
    updated_at text NOT NULL,
    orphaned integer NOT NULL DEFAULT 0,
    orphaned_at text,
    PRIMARY KEY (product, change_id)
);
CREATE INDEX IF NOT EXISTS lcms_change_reviews_status ON {s}.lcms_change_reviews (product, year_from, year_to, status);
CREATE TABLE IF NOT EXISTS {s}.lcms_audit (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at text NOT NULL,
    actor text NOT NULL,
    action text NOT NULL,
    target text NOT NULL,
    detail text NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS {s}.lcms_layers (
    product text NOT NULL,
    year_from integer NOT NULL,
    year_to integer NOT NULL,
    attempt text NOT NULL,
    synced_at text NOT NULL,
    PRIMARY KEY (product, year_from, year_to)
);
CREATE OR REPLACE FUNCTION {s}.lcms_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: rows are never updated or deleted', TG_TABLE_NAME;
END $$;
"""

_PG_APPEND_ONLY = """
DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'lcms_{table}_append_only'
                   AND tgrelid = '{s}.lcms_{table}'::regclass) THEN
        CREATE TRIGGER lcms_{table}_append_only BEFORE UPDATE OR DELETE ON {s}.lcms_{table}
            FOR EACH ROW EXECUTE FUNCTION {s}.lcms_append_only();
        CREATE TRIGGER lcms_{table}_no_truncate BEFORE TRUNCATE ON {s}.lcms_{table}
            FOR EACH STATEMENT EXECUTE FUNCTION {s}.lcms_append_only();
    END IF;
END $$;
"""


# ------------------------------------------------------------------------------------- connections


class Conn:
    """One connection inside a transaction: ``rows``/``one``/``run`` with ``?`` placeholders."""

    def __init__(self, raw, kind: str, schema: str | None):
        self.raw = raw
        self.kind = kind
        self.schema = schema

    def t(self, name: str) -> str:
        """A table of the service (``lcms_<name>``), qualified by the schema on PostGIS."""
        return f"lcms_{name}" if self.schema is None else f'"{self.schema}".lcms_{name}'

    def _sql(self, sql: str) -> str:
        return sql if self.kind == "sqlite" else sql.replace("?", "%s")

    def _cursor(self, sql: str, params: Sequence[Any]):
        return self.raw.execute(self._sql(sql), tuple(params))

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        cur = self._cursor(sql, params)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def one(self, sql: str, params: Sequence[Any] = ()) -> dict[str, Any] | None:
        found = self.rows(sql, params)
        return found[0] if found else None

    def run(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self._cursor(sql, params).rowcount


class Database:
    """The interface both backends share."""

    kind: str
    where: str  # where the database is, for messages (never with a password)

    def transaction(
        self, write: bool = True, attach: dict[str, str] | None = None
    ) -> contextlib.AbstractContextManager[Conn]:  # pragma: no cover - interface
        raise NotImplementedError

    def close(self) -> None:
        pass


class SqliteDatabase(Database):
    """The embedded database: one SQLite file (WAL mode, so readers never wait for a writer)."""

    kind = "sqlite"

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.where = str(self.path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.closing(self._connect()) as raw:
                raw.execute("PRAGMA journal_mode=WAL")
                raw.executescript(_SQLITE_DDL + "".join(_SQLITE_APPEND_ONLY.format(table=t) for t in APPEND_ONLY))
        except (OSError, sqlite3.Error) as exc:
            raise DatabaseError(f"cannot open the service database {self.path}: {exc}") from None

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: no implicit transactions; `transaction` says BEGIN IMMEDIATE itself,
        # so a writer takes the lock up front and two reviews of one change serialise cleanly.
        raw = sqlite3.connect(str(self.path), timeout=30, isolation_level=None, check_same_thread=False, uri=True)
        raw.execute("PRAGMA foreign_keys=ON")
        raw.execute("PRAGMA busy_timeout=30000")
        return raw

    @contextlib.contextmanager
    def transaction(self, write: bool = True, attach: dict[str, str] | None = None) -> Iterator[Conn]:
        """A connection in one transaction, committed on success and rolled back on any error.

        ``write``: take the write lock at the start (BEGIN IMMEDIATE), so that a read-check-write
        (a review's version check) cannot interleave with another writer.
        ``attach``: alias → local SQLite file attached read-only (a change layer; its files never change).
        """
        raw = self._connect()
        try:
            for alias, file in (attach or {}).items():
                uri = Path(file).resolve().as_uri() + "?mode=ro&immutable=1"
                raw.execute("ATTACH DATABASE ? AS " + _alias(alias), (uri,))
            raw.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            conn = Conn(raw, "sqlite", None)
            try:
                yield conn
            except BaseException:
                raw.execute("ROLLBACK")
                raise
            raw.execute("COMMIT")
        finally:
            raw.close()


def _alias(name: str) -> str:
    if not name.isidentifier():
        raise ValueError(f"bad alias {name!r}")
    return name


class PostgisDatabase(Database):
    """The production database: PostgreSQL with PostGIS, a small pool of psycopg connections."""

    kind = "postgis"

    def __init__(self, dsn: str, postgis: PostgisConfig, pool_size: int = 8):
        from tasks.change.postgis import redact_dsn

        self.dsn = dsn
        self.postgis = postgis
        self.schema = postgis.schema_name
        self.where = redact_dsn(dsn) + f" (schema {self.schema})"
        self._pool: queue.LifoQueue = queue.LifoQueue(maxsize=pool_size)
        self._lock = threading.Lock()
        with self.transaction() as conn:
            # One creator at a time, when several server processes start at once.
            conn.run("SELECT pg_advisory_xact_lock(hashtextextended(?, 0))", (f"lcms.serve:{self.schema}",))
            conn.raw.execute(_PG_DDL.replace("{s}", f'"{self.schema}"'))
            for table in APPEND_ONLY:
                conn.raw.execute(_PG_APPEND_ONLY.format(table=table, s=f'"{self.schema}"'))

    def _connect(self):
        from tasks.change.postgis import ChangeStoreError, _connect

        try:
            return _connect(self.dsn, "open the service database")
        except ChangeStoreError as exc:
            raise DatabaseError(str(exc)) from None

    @contextlib.contextmanager
    def transaction(self, write: bool = True, attach: dict[str, str] | None = None) -> Iterator[Conn]:
        """A pooled connection in one transaction (``write`` and ``attach`` matter only to SQLite)."""
        try:
            raw = self._pool.get_nowait()
        except queue.Empty:
            raw = self._connect()
        broken = False
        try:
            with raw.transaction():
                yield Conn(raw, "postgis", self.schema)
        except BaseException:
            broken = raw.closed or raw.broken
            raise
        finally:
            if broken or raw.closed:
                raw.close()
            else:
                try:
                    self._pool.put_nowait(raw)
                except queue.Full:
                    raw.close()

    def close(self) -> None:
        while True:
            try:
                self._pool.get_nowait().close()
            except queue.Empty:
                return


# ------------------------------------------------------------------------------------------ opening


def serve_postgis(config: RunConfig) -> PostgisConfig:
    """The PostGIS settings of the service: serve.postgis, else change.postgis, else the defaults."""
    return config.serve.postgis or config.change.postgis or PostgisConfig()


def resolve_serve_dsn(config: RunConfig) -> str:
    """The DSN from the environment or a Prefect Secret block, as the change stage finds it."""
    from flows.change import postgis_dsn
    from tasks.change.tile import ChangeError

    postgis = serve_postgis(config)
    try:
        return postgis_dsn(config.change.model_copy(update={"postgis": postgis}))
    except ChangeError:
        raise DatabaseError(
            f"serve.database is postgis, but the environment variable {postgis.dsn_env} holds no DSN: export it "
            "(postgresql://user:password@host:5432/db) or set serve.postgis.secret_block"
        ) from None


def open_database(config: RunConfig, store: TileStore) -> Database:
    """The service database the config asks for, with its tables created if missing."""
    serve = config.serve
    if serve.database == "postgis":
        return PostgisDatabase(resolve_serve_dsn(config), serve_postgis(config))
    path = serve.database_path
    if path is None:
        if not store.is_local:
            raise DatabaseError(
                f"the store {store.url} is not a local folder, so the embedded database needs a local file: "
                "set serve.database_path (or serve.database: postgis)"
            )
        path = store.serve_database_path()
    if "://" in str(path):
        raise DatabaseError(f"serve.database_path must be a local file, not {path}")
    return SqliteDatabase(path)


def history(conn: Conn, product: str, change_id: str) -> list[dict]:
    """Every decision on one change, oldest first (the reviews' audit log)."""
    rows = conn.rows(
        f"SELECT id, kind, reviewer, decision, class_from, class_to, geometry, comment, version, created_at "
        f"FROM {conn.t('decisions')} WHERE product = ? AND change_id = ? ORDER BY id",
        (product, change_id),
    )
    for row in rows:
        row["geometry"] = json.loads(row["geometry"]) if row["geometry"] else None
    return rows


def reviewed_changes(conn: Conn, product: str, year_to: int) -> list[dict]:
    """The changes of `product` ending in `year_to` whose review status is confirmed, corrected or rejected, each
    with the latest decision that made that status (its id, reviewer, time), oldest first: what the reference
    stage turns into labels (tasks/reference/reviews.py). ``geometry`` is the edited outline (CRS84), if any."""
    d = conn.t("decisions")
    return conn.rows(
        f"SELECT r.change_id, r.year_from, r.year_to, r.status, r.class_from, r.class_to, r.geometry, r.reviewers, "
        f"r.agreement, r.orphaned, d.id AS decision_id, d.reviewer, d.created_at AS decided_at "
        f"FROM {conn.t('change_reviews')} r JOIN {d} d ON d.id = (SELECT max(x.id) FROM {d} x "
        "WHERE x.product = r.product AND x.change_id = r.change_id AND x.decision = r.status) "
        "WHERE r.product = ? AND r.year_to = ? AND r.status IN ('confirmed', 'corrected', 'rejected') ORDER BY d.id",
        (product, year_to),
    )


def reviews_version(conn: Conn, product: str, year_to: int) -> dict:
    """How many decisions there are on `product`'s changes ending in `year_to`, and the latest one's id and time:
    a new decision changes it (the reference stage's tiles record it, so a decision makes them stale)."""
    row = conn.one(
        f"SELECT count(*) AS decisions, max(id) AS last_id, max(created_at) AS last_at FROM {conn.t('decisions')} "
        "WHERE product = ? AND year_to = ?",
        (product, year_to),
    )
    return {"decisions": int(row["decisions"] or 0), "last_id": row["last_id"], "last_at": row["last_at"]}
