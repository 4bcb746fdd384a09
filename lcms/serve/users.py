"""Users: argon2 password hashes, login with rate limiting, logout, and the admin's user routes.

There is no default account: users are made with ``lcms users add`` (or by an admin through
``POST /users``); ``lcms serve --demo`` makes a one-time admin password for the demo only.
Passwords are hashed with argon2id (argon2-cffi's defaults, rehashed when they change).
Failed logins are counted per username and per client address over ``serve.login_window_minutes``;
past ``serve.login_max_failures`` (4x that per client) the login answers 429 with Retry-After,
whether or not the password is right. User administration and logins go to the append-only audit table.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from fastapi import APIRouter, HTTPException, Request, Response
from pydantic import BaseModel, Field

from lcms.serve.auth import (
    ROLES,
    SESSION_COOKIE,
    Admin,
    User,
    Viewer,
    clear_session_cookies,
    create_session,
    current_session,
    revoke_session,
    revoke_sessions,
    set_session_cookies,
)
from lcms.serve.db import Conn, utcnow
from lcms.serve.state import StateDep

USERNAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
MIN_PASSWORD = 10
MAX_PASSWORD = 1024
hasher = PasswordHasher()
# Verified against when the username is unknown, so a login takes as long either way.
_DUMMY_HASH = hasher.hash(secrets.token_urlsafe(16))


class UserError(ValueError):
    """A user operation that cannot be done; the message names the problem."""


class UserNotFound(UserError):
    pass


# ---------------------------------------------------------------------------------------- the store


def check_username(username: str) -> str:
    if not isinstance(username, str) or not USERNAME.match(username):
        raise UserError(f"username {username!r} must be 1-64 letters, digits or . _ @ -")
    return username


def check_password(password: str) -> str:
    if not isinstance(password, str) or not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise UserError(f"a password must be {MIN_PASSWORD} to {MAX_PASSWORD} characters long")
    return password


def check_role(role: str) -> str:
    if role not in ROLES:
        raise UserError(f"role {role!r} is not one of {list(ROLES)}")
    return role


def audit(conn: Conn, actor: str, action: str, target: str, **detail) -> None:
    conn.run(
        f"INSERT INTO {conn.t('audit')} (at, actor, action, target, detail) VALUES (?, ?, ?, ?, ?)",
        (utcnow(), actor, action, target, json.dumps(detail, sort_keys=True)),
    )


def _user(row) -> User:
    return User(int(row["id"]), row["username"], row["role"], bool(row["disabled"]))


def get_user(conn: Conn, username: str) -> User:
    row = conn.one(f"SELECT id, username, role, disabled FROM {conn.t('users')} WHERE username = ?", (username,))
    if row is None:
        raise UserNotFound(f"no user {username!r}")
    return _user(row)


def list_users(conn: Conn) -> list[dict]:
    return conn.rows(
        f"SELECT username, role, disabled, created_at, updated_at FROM {conn.t('users')} ORDER BY username"
    )


def add_user(conn: Conn, username: str, password: str, role: str, actor: str) -> User:
    check_username(username)
    check_password(password)
    check_role(role)
    if conn.one(f"SELECT 1 AS x FROM {conn.t('users')} WHERE username = ?", (username,)):
        raise UserError(f"user {username!r} already exists")
    now = utcnow()
    conn.run(
        f"INSERT INTO {conn.t('users')} (username, password_hash, role, disabled, created_at, updated_at) "
        "VALUES (?, ?, ?, 0, ?, ?)",
        (username, hasher.hash(password), role, now, now),
    )
    audit(conn, actor, "user.add", username, role=role)
    return get_user(conn, username)


def set_role(conn: Conn, username: str, role: str, actor: str) -> User:
    check_role(role)
    user = get_user(conn, username)
    conn.run(f"UPDATE {conn.t('users')} SET role = ?, updated_at = ? WHERE id = ?", (role, utcnow(), user.id))
    revoke_sessions(conn, user.id)  # the new role takes effect at the next login
    audit(conn, actor, "user.set_role", username, role=role, was=user.role)
    return get_user(conn, username)


def set_password(conn: Conn, username: str, password: str, actor: str) -> User:
    check_password(password)
    user = get_user(conn, username)
    conn.run(
        f"UPDATE {conn.t('users')} SET password_hash = ?, updated_at = ? WHERE id = ?",
        (hasher.hash(password), utcnow(), user.id),
    )
    revoke_sessions(conn, user.id)
    audit(conn, actor, "user.passwd", username)
    return user


def set_disabled(conn: Conn, username: str, disabled: bool, actor: str) -> User:
    user = get_user(conn, username)
    conn.run(
        f"UPDATE {conn.t('users')} SET disabled = ?, updated_at = ? WHERE id = ?",
        (int(disabled), utcnow(), user.id),
    )
    if disabled:
        revoke_sessions(conn, user.id)
    audit(conn, actor, "user.disable" if disabled else "user.enable", username)
    return get_user(conn, username)


def verify_password(conn: Conn, username: str, password: str) -> User | None:
    """The user if the password is theirs and the account is enabled; None otherwise (same time either way)."""
    row = conn.one(
        f"SELECT id, username, role, disabled, password_hash FROM {conn.t('users')} WHERE username = ?", (username,)
    )
    try:
        hasher.verify(row["password_hash"] if row else _DUMMY_HASH, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return None
    if row is None or row["disabled"]:
        return None
    if hasher.check_needs_rehash(row["password_hash"]):
        conn.run(f"UPDATE {conn.t('users')} SET password_hash = ? WHERE id = ?", (hasher.hash(password), row["id"]))
    return _user(row)


# ------------------------------------------------------------------------------------ rate limiting


def _since(minutes: float) -> str:
    return (dt.datetime.now(dt.UTC) - dt.timedelta(minutes=minutes)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def login_blocked(conn: Conn, username: str, client: str, max_failures: int, window_minutes: float) -> bool:
    since = _since(window_minutes)
    by_user = conn.one(
        f"SELECT count(*) AS n FROM {conn.t('login_failures')} WHERE username = ? AND at > ?", (username, since)
    )["n"]
    by_client = conn.one(
        f"SELECT count(*) AS n FROM {conn.t('login_failures')} WHERE client = ? AND at > ?", (client, since)
    )["n"]
    return by_user >= max_failures or by_client >= 4 * max_failures


def record_failure(conn: Conn, username: str, client: str, window_minutes: float) -> None:
    conn.run(
        f"INSERT INTO {conn.t('login_failures')} (username, client, at) VALUES (?, ?, ?)",
        (username[:64], client, utcnow()),
    )
    # Old failures are of no use to the limit; the audit table keeps the record.
    conn.run(f"DELETE FROM {conn.t('login_failures')} WHERE at < ?", (_since(4 * window_minutes),))


# ------------------------------------------------------------------------------------------- routes

router = APIRouter(tags=["users"])


class LoginBody(BaseModel):
    username: str = Field(..., min_length=1, max_length=64)
    password: str = Field(..., min_length=1, max_length=MAX_PASSWORD)


class NewUserBody(BaseModel):
    username: str = Field(..., min_length=1, max_length=64)
    password: str = Field(..., min_length=MIN_PASSWORD, max_length=MAX_PASSWORD)
    role: str = Field("viewer", description=f"one of {list(ROLES)}")


class UserPatchBody(BaseModel):
    role: str | None = Field(None, description=f"one of {list(ROLES)}")
    disabled: bool | None = None
    password: str | None = Field(None, min_length=MIN_PASSWORD, max_length=MAX_PASSWORD)


def _me(user: User, csrf_token: str, expires_at: str) -> dict:
    return {"username": user.username, "role": user.role, "csrf_token": csrf_token, "expires_at": expires_at}


@router.post("/auth/login", summary="Log in: sets the session cookie and returns the CSRF token")
def login(body: LoginBody, request: Request, response: Response, state: StateDep):
    serve = state.config.serve
    client = request.client.host if request.client else "-"
    with state.db.transaction() as conn:
        if login_blocked(conn, body.username, client, serve.login_max_failures, serve.login_window_minutes):
            audit(conn, body.username[:64], "login.blocked", body.username[:64], client=client)
            blocked = True
        else:
            blocked = False
            user = verify_password(conn, body.username, body.password)
            if user is None:
                record_failure(conn, body.username, client, serve.login_window_minutes)
                audit(conn, body.username[:64], "login.failed", body.username[:64], client=client)
            else:
                token, session = create_session(conn, user, serve.session_hours)
                audit(conn, user.username, "login", user.username, client=client)
    if blocked:
        retry = int(serve.login_window_minutes * 60)
        raise HTTPException(
            429,
            f"too many failed logins for {body.username!r} or from this address: try again in "
            f"{serve.login_window_minutes:g} minutes",
            headers={"Retry-After": str(retry)},
        )
    if user is None:
        raise HTTPException(401, "wrong username or password (or the account is disabled)")
    set_session_cookies(request, response, token, session)
    response.headers["Cache-Control"] = "no-store"
    return _me(user, session.csrf_token, session.expires_at)


@router.post("/auth/logout", summary="End the session")
def logout(request: Request, response: Response, user: Viewer, state: StateDep):
    with state.db.transaction() as conn:
        revoke_session(conn, request.cookies[SESSION_COOKIE])
        audit(conn, user.username, "logout", user.username)
    clear_session_cookies(request, response)
    return {"detail": f"{user.username} logged out"}


@router.get("/auth/me", summary="The logged-in user, role, CSRF token and session expiry")
def me(request: Request, response: Response, user: Viewer, state: StateDep):
    session = current_session(request, state)
    response.headers["Cache-Control"] = "no-store"
    return _me(user, session.csrf_token, session.expires_at)


def _user_error(exc: UserError) -> HTTPException:
    if isinstance(exc, UserNotFound):
        return HTTPException(404, str(exc))
    return HTTPException(409 if "already exists" in str(exc) else 422, str(exc))


@router.get("/users", summary="Every user (admin)")
def users_list(admin: Admin, state: StateDep):
    with state.db.transaction(write=False) as conn:
        rows = list_users(conn)
    return {"users": [{**r, "disabled": bool(r["disabled"])} for r in rows]}


@router.post("/users", status_code=201, summary="Add a user (admin)")
def users_add(body: NewUserBody, admin: Admin, state: StateDep):
    try:
        with state.db.transaction() as conn:
            user = add_user(conn, body.username, body.password, body.role, admin.username)
    except UserError as exc:
        raise _user_error(exc) from None
    return {"username": user.username, "role": user.role, "disabled": user.disabled}


@router.patch("/users/{username}", summary="Change a user's role, password or disabled flag (admin)")
def users_patch(username: str, body: UserPatchBody, admin: Admin, state: StateDep):
    if body.role is None and body.disabled is None and body.password is None:
        raise HTTPException(422, "nothing to change: give role, disabled or password")
    if username == admin.username and (body.disabled or (body.role is not None and body.role != "admin")):
        raise HTTPException(409, "an admin cannot disable or demote themselves (ask another admin)")
    try:
        with state.db.transaction() as conn:
            user = get_user(conn, username)
            if body.role is not None:
                user = set_role(conn, username, body.role, admin.username)
            if body.password is not None:
                set_password(conn, username, body.password, admin.username)
            if body.disabled is not None:
                user = set_disabled(conn, username, body.disabled, admin.username)
    except UserError as exc:
        raise _user_error(exc) from None
    return {"username": user.username, "role": user.role, "disabled": user.disabled}
