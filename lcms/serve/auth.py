"""Who is asking: sessions in HttpOnly cookies, CSRF tokens, and the role check every route makes.

Roles are ordered: viewer (maps, changes, imagery) < operator (also reviews) < admin (also users
and conflict resolution). Each route declares the least role it needs with ``Depends(require(...))``;
the dependency answers

- 401 when there is no session cookie, or the session is unknown, expired, revoked, or its user
  is disabled;
- 403 when a state-changing request (anything but GET/HEAD/OPTIONS) lacks the session's CSRF
  token in the ``X-CSRF-Token`` header;
- 403 when the user's role is below the route's;

and otherwise returns the `User`. A session is a random token (only its SHA-256 is stored, so a
copy of the database cannot be replayed as a cookie) with a CSRF token and an absolute expiry
(``serve.session_hours``). The CSRF token is also set as a readable cookie, so the browser app
can echo it in the header (the double-submit pattern); the session cookie itself is HttpOnly,
SameSite=Strict, and Secure when the request came over HTTPS.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request, Response

from lcms.serve.db import Conn, utcnow
from lcms.serve.state import ServeState, StateDep

ROLES = ("viewer", "operator", "admin")
ROLE_RANK = {role: rank for rank, role in enumerate(ROLES)}
SESSION_COOKIE = "lcms_session"
CSRF_COOKIE = "lcms_csrf"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True)
class User:
    id: int
    username: str
    role: str
    disabled: bool = False

    def has_role(self, role: str) -> bool:
        return ROLE_RANK[self.role] >= ROLE_RANK[role]


@dataclass(frozen=True)
class Session:
    user: User
    csrf_token: str
    expires_at: str


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


# ------------------------------------------------------------------------------------------ sessions


def create_session(conn: Conn, user: User, hours: float) -> tuple[str, Session]:
    """A new session for `user`: the cookie's token (shown once) and the session."""
    token = secrets.token_urlsafe(32)
    csrf = secrets.token_urlsafe(32)
    now = dt.datetime.now(dt.UTC)
    expires = (now + dt.timedelta(hours=hours)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    conn.run(
        f"INSERT INTO {conn.t('sessions')} (token_hash, user_id, csrf_token, created_at, expires_at) "
        "VALUES (?, ?, ?, ?, ?)",
        (token_hash(token), user.id, csrf, utcnow(), expires),
    )
    return token, Session(user, csrf, expires)


def find_session(conn: Conn, token: str) -> tuple[Session | None, str]:
    """The live session of a cookie's token, or None and why not."""
    row = conn.one(
        f"SELECT s.csrf_token, s.expires_at, s.revoked_at, u.id, u.username, u.role, u.disabled "
        f"FROM {conn.t('sessions')} s JOIN {conn.t('users')} u ON u.id = s.user_id WHERE s.token_hash = ?",
        (token_hash(token),),
    )
    if row is None:
        return None, "the session is unknown (logged out, or the server's database was replaced): log in again"
    if row["revoked_at"] is not None:
        return None, "the session was ended (logout, password change or account disabled): log in again"
    if row["expires_at"] <= utcnow():
        return None, f"the session expired at {row['expires_at']}: log in again"
    if row["disabled"]:
        return None, f"the account {row['username']!r} is disabled"
    user = User(int(row["id"]), row["username"], row["role"], bool(row["disabled"]))
    return Session(user, row["csrf_token"], row["expires_at"]), ""


def revoke_sessions(conn: Conn, user_id: int) -> int:
    """End every live session of a user (password change, disabling, role change)."""
    return conn.run(
        f"UPDATE {conn.t('sessions')} SET revoked_at = ? WHERE user_id = ? AND revoked_at IS NULL",
        (utcnow(), user_id),
    )


def revoke_session(conn: Conn, token: str) -> None:
    conn.run(
        f"UPDATE {conn.t('sessions')} SET revoked_at = ? WHERE token_hash = ? AND revoked_at IS NULL",
        (utcnow(), token_hash(token)),
    )


def set_session_cookies(request: Request, response: Response, token: str, session: Session) -> None:
    secure = request.url.scheme == "https"
    max_age = max(1, int((dt.datetime.fromisoformat(session.expires_at) - dt.datetime.now(dt.UTC)).total_seconds()))
    response.set_cookie(
        SESSION_COOKIE, token, max_age=max_age, httponly=True, secure=secure, samesite="strict", path="/"
    )
    # Readable by the page's script, which sends it back in the X-CSRF-Token header.
    response.set_cookie(
        CSRF_COOKIE, session.csrf_token, max_age=max_age, httponly=False, secure=secure, samesite="strict", path="/"
    )


def clear_session_cookies(request: Request, response: Response) -> None:
    secure = request.url.scheme == "https"
    for name, httponly in ((SESSION_COOKIE, True), (CSRF_COOKIE, False)):
        response.delete_cookie(name, path="/", secure=secure, httponly=httponly, samesite="strict")


# ------------------------------------------------------------------------------------------- checks


def current_session(request: Request, state: ServeState) -> Session:
    """The request's live session; 401 naming why there is none."""
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        raise HTTPException(401, "not logged in: POST /auth/login with a username and password first")
    with state.db.transaction(write=False) as conn:
        session, why = find_session(conn, token)
    if session is None:
        raise HTTPException(401, why)
    return session


def check_csrf(request: Request, session: Session) -> None:
    sent = request.headers.get(CSRF_HEADER)
    if not sent:
        raise HTTPException(
            403, f"missing CSRF token: send the {CSRF_HEADER} header with the csrf_token from POST /auth/login"
        )
    if not hmac.compare_digest(sent.encode(), session.csrf_token.encode()):
        raise HTTPException(403, f"wrong CSRF token in the {CSRF_HEADER} header: use this session's csrf_token")


def require(role: str):
    """A FastAPI dependency that returns the current `User` if their role is at least `role`."""
    if role not in ROLE_RANK:
        raise ValueError(f"unknown role {role!r}; roles are {ROLES}")

    def dependency(request: Request, state: StateDep) -> User:
        session = current_session(request, state)
        request.state.user = session.user.username  # for the access log
        if request.method not in SAFE_METHODS:
            check_csrf(request, session)
        if not session.user.has_role(role):
            raise HTTPException(403, f"this needs the {role} role; {session.user.username} is a {session.user.role}")
        return session.user

    dependency.__name__ = f"require_{role}"
    return dependency


# The usual declarations of a route's least role: ``def route(user: Viewer, state: StateDep)``.
Viewer = Annotated[User, Depends(require("viewer"))]
Operator = Annotated[User, Depends(require("operator"))]
Admin = Annotated[User, Depends(require("admin"))]
