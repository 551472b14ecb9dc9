"""The FastAPI application: the JSON API, the pages, the static files, and the
headers every response carries.

    app = create_app("sqlite:///labels.db")      # migrates the database first
    uvicorn.run(app, host="127.0.0.1", port=8000)

Handlers are plain (synchronous) functions: FastAPI runs them in its thread pool,
each with its own database session, while the event loop keeps accepting requests.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from importlib.resources import files

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from alignloop import __version__
from alignloop.server import api, pages
from alignloop.server.auth import LoginRequired, has_credentials
from alignloop.server.db import Database, display_url, open_database
from alignloop.server.errors import GuidelinesRequired, Invalid, ServerError
from alignloop.server.limits import DEFAULT_MAX_BYTES, BodyLimit, SignInLimit, SignInLimiter
from alignloop.server.models import utcnow

__all__ = ["create_app"]

log = logging.getLogger("alignloop.server")

# Scripts, styles, images and fetches from this server only; no inline script, no
# framing by other sites, no plug-ins.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"x-frame-options", b"DENY"),
]


HSTS = (b"strict-transport-security", b"max-age=31536000")  # behind a TLS proxy


class SecurityHeaders:
    """Adds `headers` (SECURITY_HEADERS) to every HTTP response (a plain ASGI
    middleware: no per-request overhead beyond the headers)."""

    def __init__(self, app: ASGIApp, headers: list[tuple[bytes, bytes]] = SECURITY_HEADERS):
        self.app = app
        self.headers = headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + self.headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


MAX_ERRORS = 20  # validation errors shown in one answer
MAX_MESSAGE = 2000  # characters of one error message


def _is_api(request: Request) -> bool:
    return request.url.path.startswith("/api/")


def _error_page(request: Request, status: int, message: str) -> Response:
    return pages.render(request, "error.html", status=status, status_code=status, message=message)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServerError)
    async def server_error(request: Request, exc: ServerError) -> Response:
        if not _is_api(request):
            return _error_page(request, exc.status, str(exc))
        if isinstance(exc, Invalid):
            message = str(exc)[:MAX_MESSAGE]
            detail = [{"type": "value_error", "loc": ["body", exc.field], "msg": message}]
            return JSONResponse({"detail": detail}, status_code=422)
        body: dict = {"detail": str(exc)}
        if isinstance(exc, GuidelinesRequired):
            body |= {"project": exc.project, "guidelines_version": exc.version}
        return JSONResponse(body, status_code=exc.status)

    @app.exception_handler(LoginRequired)
    async def login_required(request: Request, exc: LoginRequired) -> Response:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?next={_quote(target)}", status_code=303)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if _is_api(request):
            return JSONResponse(
                {"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers
            )
        return _error_page(request, exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> Response:
        # No "input": it may echo what a client sent back into logs and pages; and
        # at most MAX_ERRORS errors, each of bounded length (a body may hold a
        # million bad items).
        found = exc.errors()
        errors = [
            {
                "type": e["type"],
                "loc": [p if isinstance(p, int) else str(p)[:100] for p in e["loc"]][:10],
                "msg": e["msg"].removeprefix("Value error, ")[:MAX_MESSAGE],
            }
            for e in found[:MAX_ERRORS]
        ]
        if len(found) > MAX_ERRORS:
            errors.append(
                {"type": "too_many_errors", "loc": [], "msg": f"and {len(found) - MAX_ERRORS} more"}
            )
        if _is_api(request):
            return JSONResponse({"detail": errors}, status_code=422)
        message = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors)
        return _error_page(request, 422, message)


def _quote(path: str) -> str:
    from urllib.parse import quote

    return quote(path, safe="")


def create_app(
    db: Database | str,
    *,
    migrate: bool = True,
    clock: Callable[[], dt.datetime] = utcnow,
    secure_cookies: bool = False,
    hsts: bool = False,
    max_body_bytes: int = DEFAULT_MAX_BYTES,
) -> FastAPI:
    """The application over `db` (a Database or a URL). `clock` gives "now" as a
    naive UTC datetime (tests move it forward to expire assignments);
    `secure_cookies` marks cookies Secure even when the request looks like plain
    HTTP (behind a TLS-terminating proxy); `hsts` sends Strict-Transport-Security
    (`serve --proxy-headers`: the proxy serves https); `max_body_bytes` caps a
    signed-in request's body (see `limits.py`; 413 beyond it)."""
    if isinstance(db, str):
        db = open_database(db, migrate=migrate)
    app = FastAPI(
        title="alignloop labeling server",
        version=__version__,
        description="Labelers rank completions; rankings leave as alignloop's records.",
        docs_url=None,  # the interactive docs page would load its script from a CDN
        redoc_url=None,
    )
    app.state.db = db
    app.state.clock = clock
    app.state.secure_cookies = secure_cookies
    app.include_router(api.router)
    app.include_router(pages.router)
    app.mount(
        "/static", StaticFiles(directory=str(files("alignloop.server") / "static")), name="static"
    )
    _install_error_handlers(app)
    # Outermost last: security headers on every answer, the limits' 413 and 429 too.
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes, signed_in=has_credentials)
    app.add_middleware(SignInLimit, limiter=SignInLimiter(clock))
    app.add_middleware(SecurityHeaders, headers=SECURITY_HEADERS + ([HSTS] if hsts else []))
    log.info("labeling server over %s", display_url(db.url))
    return app
