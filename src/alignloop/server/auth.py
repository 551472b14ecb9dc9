"""Who is asking: a bearer token (scripts, tests) or a browser session cookie (pages).

    no credentials / an unknown token       401 (the API), a redirect to /login (pages)
    a labeler on an admin route              403
    a cookie-authenticated state change
      without the session's CSRF token       403

The API accepts the session cookie too, because the labeling page's JavaScript calls
it; a request authenticated by cookie must then carry the CSRF token in the
`X-CSRF-Token` header for anything but GET/HEAD/OPTIONS (a bearer token cannot be
sent by another site's page, so bearer requests need none).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import delete

from alignloop.server.db import Database
from alignloop.server.models import Labeler, WebSession, utcnow
from alignloop.server.security import (
    CSRF_HEADER,
    SESSION_COOKIE,
    hash_secret,
    new_csrf_token,
    new_session_id,
    same_secret,
)
from alignloop.server.service import labeler_by_token

__all__ = [
    "Identity",
    "LoginRequired",
    "api_admin",
    "api_identity",
    "end_session",
    "has_credentials",
    "page_identity",
    "start_session",
]

SESSION_LIFETIME = dt.timedelta(hours=12)
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
bearer = HTTPBearer(
    auto_error=False,
    description="The login token `alignloop labeler add` printed (or the session cookie "
    "of a signed-in browser, with the X-CSRF-Token header for changes)",
)


@dataclass(frozen=True)
class Identity:
    labeler_id: int
    name: str
    is_admin: bool
    csrf_token: str | None = None  # set when signed in by a session cookie


class LoginRequired(Exception):
    """A page needs a signed-in labeler; the app redirects to /login."""


def db_of(request: Request) -> Database:
    return request.app.state.db


def _identity(labeler: Labeler, csrf: str | None = None) -> Identity:
    return Identity(labeler.id, labeler.name, labeler.is_admin, csrf)


def session_identity(request: Request) -> Identity | None:
    """The labeler of the request's session cookie, if it is a live session."""
    session_id = request.cookies.get(SESSION_COOKIE)
    if not session_id:
        return None
    with db_of(request).read() as session:
        row = session.get(WebSession, hash_secret(session_id))
        if row is None or row.expires_at <= utcnow() or not row.labeler.active:
            return None
        return _identity(row.labeler, row.csrf_token)


def api_identity(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Identity:
    """The labeler calling the API, by bearer token or session cookie (see module doc)."""
    if credentials is not None:
        with db_of(request).read() as session:
            labeler = labeler_by_token(session, credentials.credentials)
            if labeler is None:
                raise HTTPException(
                    401, "unknown or revoked token", headers={"WWW-Authenticate": "Bearer"}
                )
            return _identity(labeler)
    identity = session_identity(request)
    if identity is None:
        raise HTTPException(
            401,
            "sign in: send 'Authorization: Bearer TOKEN' (the token from `alignloop labeler add`)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if request.method not in SAFE_METHODS and not same_secret(
        request.headers.get(CSRF_HEADER), identity.csrf_token
    ):
        raise HTTPException(403, f"missing or wrong {CSRF_HEADER} header for a cookie session")
    return identity


def has_credentials(request: Request) -> bool:
    """Whether the request carries a valid bearer token or a live session cookie
    (no CSRF check): what `limits.BodyLimit` asks before it accepts a large body."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        with db_of(request).read() as session:
            return labeler_by_token(session, token.strip()) is not None
    return session_identity(request) is not None


def api_admin(identity: Annotated[Identity, Depends(api_identity)]) -> Identity:
    if not identity.is_admin:
        raise HTTPException(403, "this needs an admin (alignloop labeler add --admin)")
    return identity


def page_identity(request: Request) -> Identity:
    """The signed-in labeler of a page; LoginRequired (a redirect) otherwise."""
    identity = session_identity(request)
    if identity is None:
        raise LoginRequired()
    return identity


def start_session(db: Database, token: str) -> tuple[str, Identity] | None:
    """Sign in with a login token: (session id for the cookie, identity), or None
    for an unknown token. Expired sessions of every labeler are cleared on the way."""
    session_id = new_session_id()
    now = utcnow()
    with db.write() as session:
        session.execute(delete(WebSession).where(WebSession.expires_at <= now))
        labeler = labeler_by_token(session, token)
        if labeler is None:
            return None
        csrf = new_csrf_token()
        session.add(
            WebSession(
                id_hash=hash_secret(session_id),
                labeler_id=labeler.id,
                csrf_token=csrf,
                created_at=now,
                expires_at=now + SESSION_LIFETIME,
            )
        )
        return session_id, _identity(labeler, csrf)


def end_session(db: Database, session_id: str | None) -> None:
    if not session_id:
        return
    with db.write() as session:
        session.execute(delete(WebSession).where(WebSession.id_hash == hash_secret(session_id)))
