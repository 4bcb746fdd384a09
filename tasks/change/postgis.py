"""Change polygons in PostGIS: one row per polygon, rewritten per tile and year pair.

Plain functions, no Prefect; psycopg 3 directly (COPY into a temporary table, then SQL).

Table (``schema.table``, created with the schema if missing, one transaction)::

    change_id        text PRIMARY KEY            -- hash of tile, years and pixel geometry
    tile_id          text NOT NULL
    year_from        integer NOT NULL
    year_to          integer NOT NULL
    class_from       integer NOT NULL
    class_to         integer NOT NULL
    class_from_name  text NOT NULL
    class_to_name    text NOT NULL
    area_m2          double precision NOT NULL CHECK (area_m2 >= 0)
    confidence_from  double precision CHECK (0..100)   -- mean %, NULL when the frame had NaN
    confidence_to    double precision CHECK (0..100)
    score            double precision                  -- NULL when the frame had NaN
    status           text NOT NULL DEFAULT 'unreviewed'  -- operators set 'confirmed' / 'rejected'
    geometry         geometry(MultiPolygon, <srid>) NOT NULL
    + GIST index on geometry, btree index on (tile_id, year_from, year_to)

NaN floats are stored as SQL NULL (so ``ORDER BY score DESC NULLS LAST`` works) and read back as
NaN. Geometries are reprojected from the frame's CRS (each call may bring another UTM zone) to
``srid`` and Polygons promoted to MultiPolygons; Z is dropped.

`write_changes_postgis` semantics, all in ONE transaction (any failure rolls everything back, the
table is as it was):

1. The *keys* are the distinct (tile_id, year_from, year_to) of the incoming rows plus
   ``replace_keys``. Rows of those keys whose status is ``'unreviewed'`` are deleted.
2. Every incoming row is inserted. When its change_id is already there (only reviewed rows
   can still be, after step 1), the row's attributes and geometry are updated but the stored
   status is kept: an operator's decision survives a rerun.
3. Reviewed rows of those keys whose change_id is not in the new run are left untouched. Why not
   delete or flag them: the status is a human's judgement of what happened on the ground, made
   on imagery, and stays true whatever a later model run finds; a 'rejected' row is the record
   of a false alarm (useful as feedback for training and to audit the detector), a 'confirmed'
   one may already be reported. Deleting them would lose work nobody can redo automatically,
   and a flag would need a column the operator app does not know. Consumers that want "the
   current run" select ``status = 'unreviewed' OR change_id IN (...)``; the change_id (hash of
   the pixel geometry) tells whether the run still finds exactly that polygon.

Concurrent writers to one table are serialised by a transaction-level advisory lock (which also
makes create-if-missing race-free); a tile's write is small, so this costs little.

The DSN is a libpq URL or key=value string; an empty one falls back to ``LCMS_POSTGIS_DSN``. It is
never logged or put in an error with its password (`redact_dsn`).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Mapping

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from pyproj import CRS

# The table has the same columns as the GeoPackage layer.
from tasks.change.columns import COLUMNS, FLOAT_COLUMNS, INT_COLUMNS, TEXT_COLUMNS

log = logging.getLogger(__name__)

DSN_ENV = "LCMS_POSTGIS_DSN"
# Where the DSN comes from in LCMS (lcms.config.PostgisConfig): an environment variable or a Prefect Secret block.
DSN_HINT = f"set the DSN in {DSN_ENV} (or the variable named by change.postgis.dsn_env, or change.postgis.secret_block)"
DEFAULT_TABLE = "land_cover_changes"
DEFAULT_SCHEMA = "public"
UNREVIEWED = "unreviewed"
DEFAULT_CONNECT = {"connect_timeout": 10, "application_name": "lcms-change"}  # unless the DSN sets them

REQUIRED_COLUMNS = COLUMNS  # all of them, plus an active geometry column
GEOMETRY = "geometry"


class ChangeStoreError(RuntimeError):
    """Writing or reading the change table failed; the message names the table and what to do."""


class PostgisMissingError(ChangeStoreError):
    """The database has no PostGIS extension."""


# ---------------------------------------------------------------------------------------------- DSN


def resolve_dsn(dsn: str | None) -> str:
    """`dsn`, or ``LCMS_POSTGIS_DSN`` when it is empty; a clear error when both are."""
    dsn = dsn or os.environ.get(DSN_ENV, "")
    if not dsn.strip():
        raise ChangeStoreError(f"no PostGIS DSN: {DSN_HINT}")
    return dsn


def _dsn_params(dsn: str) -> dict:
    from psycopg.conninfo import conninfo_to_dict

    try:
        return conninfo_to_dict(dsn)
    except Exception:  # noqa: BLE001 - psycopg's message may quote the DSN, password included
        raise ChangeStoreError(
            f"malformed PostGIS DSN (expected postgresql://user:password@host:port/dbname or key=value pairs): "
            f"{DSN_HINT}"
        ) from None


def _host_port(params: Mapping) -> str:
    host = params.get("host") or params.get("hostaddr") or os.environ.get("PGHOST") or "localhost"
    port = params.get("port") or os.environ.get("PGPORT") or "5432"
    return f"{host}:{port}"


def redact_dsn(dsn: str) -> str:
    """``postgresql://user@host:port/dbname``: the DSN as it may appear in logs and errors (no password)."""
    try:
        params = _dsn_params(dsn)
    except ChangeStoreError:
        return "<malformed DSN>"
    user = params.get("user") or os.environ.get("PGUSER") or "<default user>"
    dbname = params.get("dbname") or os.environ.get("PGDATABASE") or user
    return f"postgresql://{user}@{_host_port(params)}/{dbname}"


def _scrub(text: str, dsn: str) -> str:
    """`text` with the DSN's password (if any) blanked out."""
    try:
        password = _dsn_params(dsn).get("password")
    except ChangeStoreError:
        password = None
    return text.replace(password, "***") if password else text


def _connect(dsn: str, what: str):
    """A psycopg connection, or a ChangeStoreError that says where it tried and what to do."""
    import psycopg

    params = _dsn_params(dsn)
    extra = {key: value for key, value in DEFAULT_CONNECT.items() if key not in params}
    try:
        return psycopg.connect(dsn, **extra)
    except psycopg.Error as exc:
        where = _host_port(params)
        reason = _scrub(" ".join(str(exc).split()), dsn)
        reason += "" if reason.endswith((".", "?", "!")) else "."
        raise ChangeStoreError(
            f"cannot connect to PostgreSQL at {redact_dsn(dsn)} to {what}: {reason} "
            f"Is PostGIS running at {where}? If it runs elsewhere, {DSN_HINT}."
        ) from None


def _db_error(exc: Exception, dsn: str, action: str) -> ChangeStoreError:
    import psycopg.errors as pe

    diag = getattr(exc, "diag", None)
    detail = (diag.message_primary if diag is not None and diag.message_primary else str(exc)).strip()
    if diag is not None and diag.message_detail:
        more = diag.message_detail.strip()
        detail += f" ({more[:300]}{'…' if len(more) > 300 else ''})"
    detail = _scrub(detail, dsn)
    hint = ""
    if isinstance(exc, pe.IntegrityError):
        constraint = getattr(diag, "constraint_name", None) if diag is not None else None
        hint = (
            f" A change polygon breaks {'constraint ' + constraint if constraint else 'a constraint'}: fix its values."
        )
    elif isinstance(exc, pe.InsufficientPrivilege):
        hint = " Grant the DSN's user the rights it needs (CREATE on the schema, or ownership of the table)."
    elif isinstance(exc, pe.OperationalError):
        hint = f" Is PostGIS still running at {_host_port(_dsn_params(dsn))}?"
    return ChangeStoreError(f"{action} at {redact_dsn(dsn)} failed: {detail}.{hint}")


# ------------------------------------------------------------------------------------------ validation


def _validate(changes: gpd.GeoDataFrame, srid: int) -> None:
    if not isinstance(changes, gpd.GeoDataFrame):
        raise TypeError(f"changes must be a GeoDataFrame, not {type(changes).__name__}")
    if not isinstance(srid, int | np.integer) or srid <= 0:
        raise ValueError(f"srid must be a positive EPSG code, not {srid!r}")
    try:
        CRS.from_epsg(int(srid))
    except Exception as exc:  # noqa: BLE001
        raise ValueError(f"srid {srid} is not an EPSG code pyproj knows: {exc}") from None
    if changes.empty:
        return  # nothing to reproject or insert: a tile without changes may come as a bare frame
    missing = [c for c in REQUIRED_COLUMNS if c not in changes.columns]
    if missing:
        raise ValueError(f"change polygons lack required column(s) {missing}; expected {list(REQUIRED_COLUMNS)}")
    if changes._geometry_column_name not in changes.columns:
        raise ValueError("change polygons have no active geometry column")
    if changes.crs is None:
        raise ValueError("change polygons have no CRS: set it (the tile's UTM CRS, e.g. changes.set_crs(32633))")
    geoms = changes.geometry.values
    bad = shapely.is_missing(geoms) | shapely.is_empty(geoms)
    if bad.any():
        raise ValueError(f"change polygons without geometry at rows {list(changes.index[bad][:10])}")
    type_ids = shapely.get_type_id(geoms)
    not_poly = ~np.isin(type_ids, (3, 6))
    if not_poly.any():
        kinds = sorted(set(shapely.get_type_id(geoms[not_poly]).tolist()))
        raise ValueError(
            f"change geometries must be Polygon or MultiPolygon; rows {list(changes.index[not_poly][:10])} "
            f"have geometry type id(s) {kinds}"
        )
    for column in ("change_id", "tile_id"):
        if changes[column].isna().any():
            raise ValueError(f"column {column} has missing values")
    duplicated = changes["change_id"].duplicated()
    if duplicated.any():
        raise ValueError(f"duplicate change_id values: {sorted(set(changes['change_id'][duplicated]))[:5]}")
    for column in INT_COLUMNS:
        values = pd.to_numeric(changes[column], errors="coerce")
        if values.isna().any() or not np.all(np.asarray(values, dtype=float) % 1 == 0):
            raise ValueError(f"column {column} must hold whole numbers without gaps")


def _python(value):
    """A numpy scalar as a plain Python value; NaN / NA as None (SQL NULL)."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, float | np.floating) and math.isnan(value):
        return None
    if isinstance(value, np.generic):
        return value.item()
    return value


def _rows(changes: gpd.GeoDataFrame, srid: int) -> list[tuple]:
    """Reprojected, MultiPolygon-promoted rows in `COLUMNS` order plus the geometry as WKB."""
    frame = changes.to_crs(epsg=int(srid))
    geoms = shapely.force_2d(np.asarray(frame.geometry.values, dtype=object))
    polygons = shapely.get_type_id(geoms) == 3
    geoms[polygons] = [shapely.MultiPolygon([g]) for g in geoms[polygons]]
    wkb = shapely.to_wkb(geoms, hex=False)
    data = {}
    for column in TEXT_COLUMNS:
        values = frame[column].astype(object).where(frame[column].notna(), None).tolist()
        data[column] = [None if v is None else str(v) for v in values]
    data["status"] = [UNREVIEWED if v is None or v == "" else v for v in data["status"]]
    for column in INT_COLUMNS:
        data[column] = [int(v) for v in pd.to_numeric(frame[column]).tolist()]
    for column in FLOAT_COLUMNS:
        data[column] = [_python(float(v)) for v in pd.to_numeric(frame[column]).astype(float).tolist()]
    return [tuple(data[c][i] for c in COLUMNS) + (bytes(wkb[i]),) for i in range(len(frame))]


# ----------------------------------------------------------------------------------------------- SQL


def _names(schema: str, table: str):
    from psycopg import sql

    for name, what in ((schema, "schema"), (table, "table")):
        if not isinstance(name, str) or not name or len(name) > 63:
            raise ValueError(f"invalid {what} name {name!r} (1 to 63 characters)")
    return sql.Identifier(schema, table)


def _index_name(table: str, suffix: str) -> str:
    return f"{table[: 63 - len(suffix) - 1]}_{suffix}"


def _check_postgis(cur, dsn: str, qualified: str) -> None:
    row = cur.execute("SELECT extversion FROM pg_extension WHERE extname = 'postgis'").fetchone()
    if row is None:
        raise PostgisMissingError(
            f"database {redact_dsn(dsn)} has no PostGIS extension, needed for table {qualified}: "
            f"run CREATE EXTENSION postgis; in that database (as its owner or a superuser)"
        )


def _table_srid(cur, schema: str, table: str) -> int | None:
    """The geometry SRID of an existing table, or None when the table does not exist."""
    exists = cur.execute(
        "SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p', 'v', 'm', 'f')",
        (schema, table),
    ).fetchone()
    if exists is None:
        return None
    row = cur.execute(
        "SELECT srid FROM geometry_columns WHERE f_table_schema = %s AND f_table_name = %s AND f_geometry_column = %s",
        (schema, table, GEOMETRY),
    ).fetchone()
    return int(row[0]) if row else 0


def _create_table(cur, schema: str, table: str, srid: int) -> None:
    from psycopg import sql

    ident = sql.Identifier(schema, table)
    cur.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
    cur.execute(
        sql.SQL(
            """
            CREATE TABLE {t} (
                change_id text PRIMARY KEY,
                tile_id text NOT NULL,
                year_from integer NOT NULL,
                year_to integer NOT NULL,
                class_from integer NOT NULL,
                class_to integer NOT NULL,
                class_from_name text NOT NULL,
                class_to_name text NOT NULL,
                area_m2 double precision NOT NULL CHECK (area_m2 >= 0),
                confidence_from double precision CHECK (confidence_from BETWEEN 0 AND 100),
                confidence_to double precision CHECK (confidence_to BETWEEN 0 AND 100),
                score double precision,
                status text NOT NULL DEFAULT 'unreviewed',
                geometry geometry(MultiPolygon, {srid}) NOT NULL
            )
            """
        ).format(t=ident, srid=sql.Literal(int(srid)))
    )
    cur.execute(
        sql.SQL("CREATE INDEX {} ON {} USING GIST (geometry)").format(
            sql.Identifier(_index_name(table, "geometry_gist")), ident
        )
    )
    cur.execute(
        sql.SQL("CREATE INDEX {} ON {} (tile_id, year_from, year_to)").format(
            sql.Identifier(_index_name(table, "tile_years_idx")), ident
        )
    )
    cur.execute(
        sql.SQL("COMMENT ON TABLE {} IS {}").format(
            ident, sql.Literal("LCMS change polygons; status: unreviewed / confirmed / rejected (set by operators)")
        )
    )


# --------------------------------------------------------------------------------------------- write


# Rows of the given (tile, year_from, year_to) keys, with the keys passed as three arrays (_key_arrays).
_IN_KEYS = "(tile_id, year_from, year_to) IN (SELECT * FROM unnest(%s::text[], %s::int[], %s::int[]))"


def _key_arrays(keys) -> tuple[list, list, list]:
    return [k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys]


def write_changes_postgis(
    changes: gpd.GeoDataFrame,
    dsn: str,
    table: str = DEFAULT_TABLE,
    schema: str = DEFAULT_SCHEMA,
    srid: int = 4326,
    replace_keys: Iterable[tuple[str, int, int]] | None = None,
) -> int:
    """Write change polygons to ``schema.table`` (see the module doc); returns the number of rows written.

    ``replace_keys``: extra (tile_id, year_from, year_to) whose unreviewed rows are replaced, for
    tiles with no change polygons now (an empty frame plus its key clears the old rows).
    Validation (columns, CRS, geometry types, duplicate ids) happens before any connection.
    """
    _validate(changes, srid)
    ident = _names(schema, table)
    qualified = f"{schema}.{table}"
    keys = sorted({(str(t), int(a), int(b)) for t, a, b in (replace_keys or ())})
    rows = _rows(changes, srid) if not changes.empty else []
    keys = sorted(set(keys) | {(r[1], r[2], r[3]) for r in rows})
    dsn = resolve_dsn(dsn)

    import psycopg
    from psycopg import sql

    conn = _connect(dsn, f"write table {qualified}")
    try:
        with conn, conn.transaction(), conn.cursor() as cur:
            _check_postgis(cur, dsn, qualified)
            cur.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"lcms.changes:{qualified}",))
            table_srid = _table_srid(cur, schema, table)
            if table_srid is None:
                _create_table(cur, schema, table, srid)
                log.info("created table %s (MultiPolygon, SRID %d) at %s", qualified, srid, redact_dsn(dsn))
            elif table_srid != srid:
                raise ChangeStoreError(
                    f"table {qualified} at {redact_dsn(dsn)} stores geometries in SRID {table_srid}, not {srid}: "
                    f"pass srid={table_srid} (change.postgis.srid) or write to another table"
                )
            deleted = 0
            if keys:
                deleted = cur.execute(
                    sql.SQL("DELETE FROM {t} WHERE status = %s AND " + _IN_KEYS).format(t=ident),
                    (UNREVIEWED, *_key_arrays(keys)),
                ).rowcount
            written = 0
            if rows:
                cur.execute(
                    "CREATE TEMP TABLE lcms_change_stage (change_id text, tile_id text, year_from integer, "
                    "year_to integer, class_from integer, class_to integer, class_from_name text, "
                    "class_to_name text, area_m2 double precision, confidence_from double precision, "
                    "confidence_to double precision, score double precision, status text, wkb bytea) "
                    "ON COMMIT DROP"
                )
                with cur.copy(f"COPY lcms_change_stage ({', '.join(COLUMNS)}, wkb) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
                columns = sql.SQL(", ").join(sql.Identifier(c) for c in (*COLUMNS, GEOMETRY))
                updates = sql.SQL(", ").join(
                    sql.SQL("{c} = EXCLUDED.{c}").format(c=sql.Identifier(c))
                    for c in (*COLUMNS, GEOMETRY)
                    if c not in ("change_id", "status")
                )
                written = cur.execute(
                    sql.SQL(
                        "INSERT INTO {t} AS old ({columns}) "
                        "SELECT {plain}, ST_Multi(ST_GeomFromWKB(wkb, {srid})) FROM lcms_change_stage "
                        "ON CONFLICT (change_id) DO UPDATE SET {updates}, "
                        "status = CASE WHEN old.status = %s THEN EXCLUDED.status ELSE old.status END"
                    ).format(
                        t=ident,
                        columns=columns,
                        plain=sql.SQL(", ").join(sql.Identifier(c) for c in COLUMNS),
                        srid=sql.Literal(int(srid)),
                        updates=updates,
                    ),
                    (UNREVIEWED,),
                ).rowcount
            kept = 0
            if keys:
                kept = cur.execute(
                    sql.SQL("SELECT count(*) FROM {t} WHERE status <> %s AND " + _IN_KEYS).format(t=ident),
                    (UNREVIEWED, *_key_arrays(keys)),
                ).fetchone()[0]
    except ChangeStoreError:
        raise
    except psycopg.Error as exc:
        raise _db_error(
            exc, dsn, f"writing {len(rows)} change polygons to table {qualified} (nothing was written)"
        ) from None
    finally:
        conn.close()
    log.info(
        "wrote %d change polygons to %s at %s for %d tile/year key(s): %d unreviewed rows replaced, "
        "%d reviewed rows of those keys in the table",
        written,
        qualified,
        redact_dsn(dsn),
        len(keys),
        deleted,
        kept,
    )
    return int(written)


# ---------------------------------------------------------------------------------------------- read


def read_changes_postgis(
    dsn: str,
    table: str = DEFAULT_TABLE,
    schema: str = DEFAULT_SCHEMA,
    where: Mapping[str, object] | None = None,
) -> gpd.GeoDataFrame:
    """Rows of ``schema.table`` as a GeoDataFrame in the table's SRID, ordered by change_id.

    ``where`` maps column → value (``=``), list/tuple/set of values (``IN``) or None (``IS NULL``),
    ANDed, e.g. ``{"tile_id": "33UXP", "status": ["confirmed", "rejected"]}``. Columns the
    operator app added to the table are returned too.
    """
    import psycopg
    from psycopg import sql

    ident = _names(schema, table)
    qualified = f"{schema}.{table}"
    dsn = resolve_dsn(dsn)
    conn = _connect(dsn, f"read table {qualified}")
    try:
        with conn, conn.cursor() as cur:
            _check_postgis(cur, dsn, qualified)
            srid = _table_srid(cur, schema, table)
            if srid is None:
                raise ChangeStoreError(
                    f"table {qualified} does not exist at {redact_dsn(dsn)}: nothing was written there yet "
                    f"(check change.postgis.table / schema_name)"
                )
            table_columns = [
                r[0]
                for r in cur.execute(
                    "SELECT column_name FROM information_schema.columns WHERE table_schema = %s AND table_name = %s "
                    "ORDER BY ordinal_position",
                    (schema, table),
                ).fetchall()
            ]
            attributes = [c for c in table_columns if c != GEOMETRY]
            clauses, params = [], []
            for column, value in (where or {}).items():
                if column not in table_columns:
                    raise ValueError(f"where: {column!r} is not a column of {qualified} ({table_columns})")
                if value is None:
                    clauses.append(sql.SQL("{} IS NULL").format(sql.Identifier(column)))
                elif isinstance(value, list | tuple | set | frozenset | np.ndarray | pd.Index | pd.Series):
                    clauses.append(sql.SQL("{} = ANY(%s)").format(sql.Identifier(column)))
                    params.append([_python(v) for v in value])
                else:
                    clauses.append(sql.SQL("{} = %s").format(sql.Identifier(column)))
                    params.append(_python(value))
            query = sql.SQL("SELECT {cols}, ST_AsBinary({g}) FROM {t}{where} ORDER BY change_id").format(
                cols=sql.SQL(", ").join(sql.Identifier(c) for c in attributes),
                g=sql.Identifier(GEOMETRY),
                t=ident,
                where=sql.SQL(" WHERE ") + sql.SQL(" AND ").join(clauses) if clauses else sql.SQL(""),
            )
            records = cur.execute(query, params).fetchall()
    except (ChangeStoreError, ValueError):
        raise
    except psycopg.Error as exc:
        raise _db_error(exc, dsn, f"reading table {qualified}") from None
    finally:
        conn.close()

    frame = pd.DataFrame.from_records([r[:-1] for r in records], columns=attributes)
    for column in INT_COLUMNS:
        if column in frame:
            frame[column] = frame[column].astype("int64")
    for column in FLOAT_COLUMNS:
        if column in frame:
            frame[column] = frame[column].astype("float64")
    geometry = shapely.from_wkb([bytes(r[-1]) for r in records]) if records else np.array([], dtype=object)
    return gpd.GeoDataFrame(frame, geometry=gpd.GeoSeries(geometry, index=frame.index), crs=srid or None)
