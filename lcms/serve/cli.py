"""The service's commands: `lcms serve`, `lcms users add|list|set-role|passwd|disable|enable`, `lcms reviews export`.

`register(app)` adds them to the `lcms` command. FastAPI, uvicorn and argon2 are imported inside
the commands, so ``lcms --help`` stays fast.
"""

from __future__ import annotations

import logging
import secrets
import sys
from pathlib import Path
from typing import Annotated

import typer

ConfigArg = Annotated[Path, typer.Argument(help="YAML run config (see examples/).", show_default=False)]
UsernameArg = Annotated[str, typer.Argument(help="Login name: letters, digits, . _ @ -", show_default=False)]
DEMO_ADMIN = "demo-admin"
CLI_ACTOR = "cli"  # who the audit log names for changes made on the command line

users_app = typer.Typer(help="Users of `lcms serve` and their roles (viewer, operator, admin).", no_args_is_help=True)
reviews_app = typer.Typer(help="Operators' reviews of change polygons.", no_args_is_help=True)


def _cli():
    from lcms import cli

    return cli


def _database(config: Path):
    """The config's service database (creating its tables if missing), without the rest of the service."""
    from lcms.serve.db import DatabaseError, open_database
    from lcms.store import StoreError, TileStore

    cli = _cli()
    cfg = cli._load(config)
    try:
        return open_database(cfg, TileStore.from_config(cfg.store, cfg.product))
    except (DatabaseError, StoreError) as exc:
        raise cli._fail(str(exc)) from None


def _user_op(config: Path, action):
    from lcms.serve.users import UserError

    db = _database(config)
    try:
        with db.transaction() as conn:
            return action(conn)
    except UserError as exc:
        raise _cli()._fail(str(exc)) from None
    finally:
        db.close()


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\n")
    return typer.prompt("Password", hide_input=True, confirmation_prompt=True)


# --------------------------------------------------------------------------------------------- serve


def serve(
    config: ConfigArg,
    host: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0 for every interface).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", min=1, max=65535)] = 8000,
    demo: Annotated[
        bool, typer.Option("--demo", help="Demo: listen on 127.0.0.1 only and print a one-time admin password.")
    ] = False,
    forwarded_allow_ips: Annotated[
        str, typer.Option(help="Proxies trusted for X-Forwarded-Proto/For (comma-separated, or '*').")
    ] = "127.0.0.1",
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
    database: Annotated[
        str | None,
        typer.Option(help="embedded or postgis: overrides serve.database (the DSN comes from the environment)."),
    ] = None,
) -> None:
    """Serve the run's maps, imagery, change polygons and reviews over HTTP (docs at /docs)."""
    cli = _cli()
    cfg = cli._load(config)
    if database is not None:
        if database not in ("embedded", "postgis"):
            raise cli._fail(f"--database must be embedded or postgis, not {database!r}")
        cfg = cfg.model_copy(update={"serve": cfg.serve.model_copy(update={"database": database})})
    if demo and host != "127.0.0.1":
        raise cli._fail(f"--demo listens on 127.0.0.1 only (got --host {host}); drop --demo to serve on {host}")
    import uvicorn

    from lcms.serve.app import create_app, open_state
    from lcms.serve.db import DatabaseError
    from lcms.store import StoreError

    logging.basicConfig(level=log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    access = logging.getLogger("lcms.serve.access")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))  # each record is already one JSON object
    access.addHandler(handler)
    access.propagate = False
    try:
        state = open_state(cfg, demo=demo)
    except (DatabaseError, StoreError) as exc:
        raise cli._fail(str(exc)) from None
    if demo:
        password = demo_admin(state.db)
        # Plain print, flushed: one line that a script can read from the pipe before the server blocks.
        print(
            f"Demo admin: user {DEMO_ADMIN}, one-time password {password} (valid until the next "
            f"`lcms serve --demo`). Open http://{host}:{port}/docs",
            flush=True,
        )
    app = create_app(state)
    uvicorn.run(
        app,
        host=host,
        port=port,
        access_log=False,  # the app logs each request itself, without cookies or secrets
        proxy_headers=True,
        forwarded_allow_ips=forwarded_allow_ips,
        log_level=log_level,
    )


def demo_admin(db) -> str:
    """Make (or reset) the demo's admin with a fresh random password, and return it."""
    from lcms.serve.users import UserNotFound, add_user, get_user, set_disabled, set_password

    password = secrets.token_urlsafe(12)
    with db.transaction() as conn:
        try:
            get_user(conn, DEMO_ADMIN)
        except UserNotFound:
            add_user(conn, DEMO_ADMIN, password, "admin", "serve --demo")
        else:
            set_password(conn, DEMO_ADMIN, password, "serve --demo")
            set_disabled(conn, DEMO_ADMIN, False, "serve --demo")
    return password


# --------------------------------------------------------------------------------------------- users


@users_app.command("add")
def users_add(
    config: ConfigArg,
    username: UsernameArg,
    role: Annotated[str, typer.Option(help="viewer, operator or admin.")] = "viewer",
    password_stdin: Annotated[bool, typer.Option("--password-stdin", help="Read the password from stdin.")] = False,
) -> None:
    """Add a user (asks for the password)."""
    from lcms.serve.users import add_user, check_role, check_username

    try:
        check_username(username)
        check_role(role)
    except ValueError as exc:
        raise _cli()._fail(str(exc)) from None
    password = _read_password(password_stdin)
    user = _user_op(config, lambda conn: add_user(conn, username, password, role, CLI_ACTOR))
    _cli().console.print(f"added {user.username} ({user.role})")


@users_app.command("list")
def users_list(config: ConfigArg) -> None:
    """List the users, their roles and whether they are disabled."""
    from rich.table import Table

    from lcms.serve.users import list_users

    rows = _user_op(config, list_users)
    table = Table("username", "role", "disabled", "created", "updated")
    for row in rows:
        disabled = "yes" if row["disabled"] else ""
        table.add_row(row["username"], row["role"], disabled, row["created_at"], row["updated_at"])
    _cli().console.print(table)


@users_app.command("set-role")
def users_set_role(
    config: ConfigArg,
    username: UsernameArg,
    role: Annotated[str, typer.Argument(help="viewer, operator or admin.", show_default=False)],
) -> None:
    """Change a user's role (their sessions end)."""
    from lcms.serve.users import set_role

    user = _user_op(config, lambda conn: set_role(conn, username, role, CLI_ACTOR))
    _cli().console.print(f"{user.username} is now {user.role}")


@users_app.command("passwd")
def users_passwd(
    config: ConfigArg,
    username: UsernameArg,
    password_stdin: Annotated[bool, typer.Option("--password-stdin", help="Read the password from stdin.")] = False,
) -> None:
    """Set a user's password (their sessions end)."""
    from lcms.serve.users import set_password

    password = _read_password(password_stdin)
    _user_op(config, lambda conn: set_password(conn, username, password, CLI_ACTOR))
    _cli().console.print(f"password of {username} changed")


@users_app.command("disable")
def users_disable(config: ConfigArg, username: UsernameArg) -> None:
    """Disable a user: no login, their sessions end (the account and its reviews stay)."""
    from lcms.serve.users import set_disabled

    _user_op(config, lambda conn: set_disabled(conn, username, True, CLI_ACTOR))
    _cli().console.print(f"{username} disabled")


@users_app.command("enable")
def users_enable(config: ConfigArg, username: UsernameArg) -> None:
    """Enable a disabled user again."""
    from lcms.serve.users import set_disabled

    _user_op(config, lambda conn: set_disabled(conn, username, False, CLI_ACTOR))
    _cli().console.print(f"{username} enabled")


# ------------------------------------------------------------------------------------------- reviews


@reviews_app.command("export")
def reviews_export(
    config: ConfigArg,
    out: Annotated[Path, typer.Option(help="Folder to write <collection>-reviewed.gpkg / .csv into.")] = Path("."),
    fmt: Annotated[str, typer.Option("--format", help="gpkg, csv or both.")] = "both",
) -> None:
    """Export confirmed and corrected changes of every change collection as GeoPackage and/or CSV."""
    cli = _cli()
    if fmt not in ("gpkg", "csv", "both"):
        raise cli._fail(f"--format must be gpkg, csv or both, not {fmt!r}")
    from lcms.serve.app import open_state
    from lcms.serve.db import DatabaseError
    from lcms.serve.reviews import export_bytes, export_frame
    from lcms.store import StoreError

    cfg = cli._load(config)
    try:
        state = open_state(cfg)
        layers = state.layers.all()
    except (DatabaseError, StoreError) as exc:
        raise cli._fail(str(exc)) from None
    if not layers:
        raise cli._fail(
            f"the store {cfg.store.url} has no change polygons of {cfg.product}: run the change stage first"
        )
    out.mkdir(parents=True, exist_ok=True)
    for layer in layers:
        frame = export_frame(state, layer)
        for kind in ("gpkg", "csv") if fmt == "both" else (fmt,):
            path = out / f"{layer.collection_id}-reviewed.{kind}"
            path.write_bytes(export_bytes(frame, kind))
            cli.console.print(f"{layer.collection_id}: {len(frame)} confirmed or corrected changes → {path}")
    state.close()


def register(app: typer.Typer) -> None:
    """Add `serve`, `users` and `reviews` to the `lcms` command."""
    app.command("serve")(serve)
    app.add_typer(users_app, name="users")
    app.add_typer(reviews_app, name="reviews")
