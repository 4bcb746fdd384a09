"""The service's ASGI app: the routers, the error format, the access log and the health check.

`create_app(state)` includes the routers of this package: auth and users (users.py), change
polygons (changes.py), reviews (reviews.py), and, when they are there, the map and imagery tiles
(``lcms.serve.maps.router``, ``lcms.serve.imagery.router``). A static folder
``lcms/serve/static/`` (the browser app) is mounted at ``/`` when it exists.

Errors are JSON ``{"detail": "<one line naming the problem>"}``: the HTTP errors the routes raise,
and malformed parameters (400 for the query and path, 422 for a JSON body) with the parameter
named. Each request is logged as one JSON line on the ``lcms.serve.access`` logger: method,
path, status, duration, client and user, never the query's secrets, headers or cookies.
"""

from __future__ import annotations

import importlib
import json
import logging
import time
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from lcms.serve.db import utcnow
from lcms.serve.state import ServeState

access_log = logging.getLogger("lcms.serve.access")
log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
OPTIONAL_ROUTERS = ("lcms.serve.maps", "lcms.serve.imagery")  # written beside this package; optional here
# Query parameters that are never written to the log, whatever their value.
SECRET_PARAMS = frozenset({"password", "token", "csrf", "csrf_token", "session", "key", "secret"})


def _describe_validation_error(exc: RequestValidationError) -> tuple[int, str]:
    """One line naming each bad parameter; 400 for query/path/header, 422 for a body."""
    parts, in_body = [], False
    for error in exc.errors():
        loc = [str(p) for p in error.get("loc", ())]
        where = loc[0] if loc else "request"
        in_body |= where == "body"
        name = ".".join(loc[1:]) or where
        given = error.get("input")
        shown = f" (got {given!r})" if isinstance(given, str | int | float) and len(str(given)) <= 80 else ""
        label = "body field" if where == "body" else f"{where} parameter"
        parts.append(f"{label} {name!r}: {error.get('msg', 'invalid')}{shown}")
    return (422 if in_body else 400), "; ".join(parts) or "invalid request"


def _client(request: Request) -> str:
    return request.client.host if request.client else "-"


def _loggable_query(request: Request) -> str:
    items = [(k, "***" if k.lower() in SECRET_PARAMS else v) for k, v in request.query_params.multi_items()]
    return "&".join(f"{k}={v}" for k, v in items)[:500]


def open_state(config, demo: bool = False) -> ServeState:
    """Open the store and the database (creating its tables if missing) for `config`, and find the
    change layers now (on PostGIS: import them), not at the first request."""
    from lcms.serve.changes import ChangeLayers
    from lcms.serve.db import open_database
    from lcms.store import TileStore

    store = TileStore.from_config(config.store, config.product)
    state = ServeState(config=config, store=store, db=open_database(config, store), demo=demo)
    state.layers = ChangeLayers(state)
    state.layers.all()
    return state


def create_app(state: ServeState) -> FastAPI:
    """The app over one ServeState (kept on ``app.state.lcms``)."""
    from lcms.serve import changes, reviews, users

    app = FastAPI(
        title="LCMS results service",
        version="1",
        description=(
            "Maps, imagery, change polygons and their reviews from an LCMS run. Log in with POST /auth/login; "
            "send the returned csrf_token in the X-CSRF-Token header of every POST, PUT, PATCH and DELETE."
        ),
    )
    app.state.lcms = state

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        status, message = _describe_validation_error(exc)
        return JSONResponse({"detail": message}, status_code=status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        body = exc.detail if isinstance(exc.detail, dict) else {"detail": exc.detail}
        return JSONResponse(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.middleware("http")
    async def access_and_headers(request: Request, call_next):
        started = time.perf_counter()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            response.headers.setdefault("X-Content-Type-Options", "nosniff")
            response.headers.setdefault("X-Frame-Options", "DENY")
            response.headers.setdefault("Referrer-Policy", "same-origin")
            return response
        finally:
            access_log.info(
                json.dumps(
                    {
                        "time": utcnow(),
                        "method": request.method,
                        "path": request.url.path,
                        "query": _loggable_query(request),
                        "status": status,
                        "ms": round((time.perf_counter() - started) * 1000, 1),
                        "client": _client(request),
                        "user": getattr(request.state, "user", None),
                    }
                )
            )

    @app.get("/health", tags=["service"], summary="Liveness and database check (no login needed)")
    def health():
        try:
            with state.db.transaction(write=False) as conn:
                conn.one("SELECT 1 AS ok")
            database = "ok"
        except Exception as exc:  # noqa: BLE001 - reported, not raised: the check's job is to say it
            database = f"error: {type(exc).__name__}"
        body = {"status": "ok" if database == "ok" else "degraded", "database": state.db.kind, "db": database}
        return JSONResponse(body, status_code=200 if database == "ok" else 503)

    app.include_router(users.router)
    app.include_router(changes.router)
    app.include_router(reviews.router)
    app.include_router(importlib.import_module("lcms.serve.samples").router)  # accuracy sample queues
    for module_name in OPTIONAL_ROUTERS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue  # not written (yet): the service runs without those routes
            log.exception("cannot import %s: its routes are left out", module_name)
            continue
        except Exception:  # noqa: BLE001 - one broken part must not take down the reviews and changes API
            log.exception("cannot import %s: its routes are left out", module_name)
            continue
        app.include_router(module.router)

    if STATIC.is_dir():
        from fastapi.staticfiles import StaticFiles

        app.mount("/", StaticFiles(directory=STATIC, html=True), name="static")
    return app
