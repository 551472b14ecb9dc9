"""Secrets: login tokens, browser sessions and CSRF tokens.

A login token is 32 random bytes (256 bits, URL-safe base64) shown once when the
labeler is added; the database keeps only its SHA-256. A slow password hash (bcrypt,
argon2) protects guessable passwords; a 256-bit random token cannot be guessed, so
one SHA-256 is enough and keeps every authenticated request cheap.

A browser session is the same idea: the cookie holds a random id, the `sessions`
table its SHA-256, so a copy of the database lets no one sign in. The cookie is
HttpOnly (no script can read it) and SameSite=Lax (no other site's form posts carry
it); every form and every state-changing API call made with the cookie also carries
the session's CSRF token, compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

__all__ = [
    "CSRF_FIELD",
    "CSRF_HEADER",
    "LOGIN_CSRF_COOKIE",
    "SESSION_COOKIE",
    "hash_secret",
    "new_csrf_token",
    "new_session_id",
    "new_token",
    "same_secret",
]

TOKEN_PREFIX = "alt_"  # makes a leaked token easy to recognize (and to scan for)
SESSION_COOKIE = "alignloop_session"
LOGIN_CSRF_COOKIE = "alignloop_login_csrf"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"


def new_token() -> str:
    """A labeler's login token: shown once, stored only as `hash_secret(token)`."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def new_session_id() -> str:
    return secrets.token_urlsafe(32)


def new_csrf_token() -> str:
    return secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    """SHA-256 hex digest of a token or session id: what the database stores."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def same_secret(given: str | None, expected: str | None) -> bool:
    """Constant-time comparison; False when either is missing or empty."""
    if not given or not expected:
        return False
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))
