"""Limits on what a client may send: body sizes, and sign-in attempts.

Request bodies. FastAPI reads and parses a body before any dependency runs, so a
token check in a dependency comes too late to spare the server a 200 MB upload.
`BodyLimit` is a plain ASGI middleware in front of everything:

    no valid token or session     at most ANONYMOUS_MAX_BYTES (the sign-in form)
    signed in                     at most `max_bytes` (serve --max-body-mb)

It refuses a declared Content-Length beyond the limit with 413 before reading a
byte, and counts the bytes of a body sent without one (chunked), refusing it with
413 as soon as it passes the limit. Whether the caller is signed in is looked up
(one indexed query) only for a body larger than the anonymous limit, so ordinary
requests pay nothing.

Sign-in. Tokens have 256 bits and cannot be guessed; still, `SignInLimiter`
(the `SignInLimit` middleware on POST /login) answers 429 to an address after
`max_failures` failed sign-ins (401s) within `window`: an in-memory count, per
server process. Behind a reverse proxy, run `serve --proxy-headers` so that the
address is the client's and not the proxy's.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections import defaultdict, deque
from collections.abc import Callable

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "ANONYMOUS_MAX_BYTES",
    "DEFAULT_MAX_BYTES",
    "BodyLimit",
    "BodyTooLarge",
    "SignInLimit",
    "SignInLimiter",
]

DEFAULT_MAX_BYTES = 64 * 1024 * 1024  # a project of some 10,000 prompts through the API
ANONYMOUS_MAX_BYTES = 64 * 1024


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int, signed_in: bool):
        who = "" if signed_in else " without a valid token or session"
        super().__init__(413, f"the request body is over the limit of {limit} bytes{who}")


class BodyLimit:
    """See the module doc. `signed_in(request)` says (synchronously, it may query the
    database) whether the request carries a valid token or session cookie."""

    def __init__(self, app: ASGIApp, *, max_bytes: int, signed_in: Callable[[Request], bool]):
        self.app = app
        self.max_bytes = max_bytes
        self.signed_in = signed_in

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        known: list[bool] = []  # whether signed in, once looked up

        async def limit() -> tuple[int, bool]:
            if not known:
                known.append(await run_in_threadpool(self.signed_in, request))
            return (self.max_bytes if known[0] else ANONYMOUS_MAX_BYTES), known[0]

        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                await _refuse(scope, send, HTTPException(400, "Content-Length is not a number"))
                return
            if int(declared) > ANONYMOUS_MAX_BYTES:
                most, signed_in = await limit()
                if int(declared) > most:
                    await _refuse(scope, send, BodyTooLarge(most, signed_in))
                    return

        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > ANONYMOUS_MAX_BYTES:
                    most, signed_in = await limit()
                    if received > most:
                        raise BodyTooLarge(most, signed_in)
            return message

        started = False

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except BodyTooLarge as e:  # raised where no handler turned it into a response
            if started:
                raise
            await _refuse(scope, send, e)


async def _refuse(scope: Scope, send: Send, error: HTTPException) -> None:
    """A JSON error answered by the middleware itself, the body left unread."""
    from starlette.responses import JSONResponse

    response = JSONResponse({"detail": error.detail}, status_code=error.status_code)
    response.headers["connection"] = "close"  # the unread body must not be taken as a request

    async def no_body() -> Message:
        return {"type": "http.disconnect"}

    await response(scope, no_body, send)


class SignInLimiter:
    """Failed sign-ins per client address within a sliding window."""

    def __init__(
        self,
        clock: Callable[[], dt.datetime],
        max_failures: int = 10,
        window: dt.timedelta = dt.timedelta(minutes=5),
    ):
        self.clock, self.max_failures, self.window = clock, max_failures, window
        self._failures: dict[str, deque[dt.datetime]] = defaultdict(deque)
        self._lock = threading.Lock()

    def _recent(self, address: str) -> deque[dt.datetime]:
        times = self._failures[address]
        cutoff = self.clock() - self.window
        while times and times[0] <= cutoff:
            times.popleft()
        return times

    def retry_after(self, address: str) -> int | None:
        """Seconds until the address may try again, or None when it may now."""
        with self._lock:
            times = self._recent(address)
            if len(times) < self.max_failures:
                return None
            wait = times[0] + self.window - self.clock()
            return max(1, int(wait.total_seconds()) + 1)

    def failed(self, address: str) -> None:
        with self._lock:
            self._recent(address).append(self.clock())
            if len(self._failures) > 100_000:  # bounded memory, whoever knocks
                self._failures = defaultdict(deque, {a: t for a, t in self._failures.items() if t})


class SignInLimit:
    """429 for POST /login from an address with too many recent failures (see the
    module doc); a 401 answer to the sign-in form counts as a failure."""

    def __init__(self, app: ASGIApp, *, limiter: SignInLimiter, path: str = "/login"):
        self.app, self.limiter, self.path = app, limiter, path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != self.path:
            await self.app(scope, receive, send)
            return
        address = scope["client"][0] if scope.get("client") else "unknown"
        wait = self.limiter.retry_after(address)
        if wait is not None:
            from starlette.responses import PlainTextResponse

            response = PlainTextResponse(
                f"Too many failed sign-ins from this address; try again in {wait} seconds.",
                status_code=429,
                headers={"Retry-After": str(wait)},
            )
            await response(scope, receive, send)
            return

        async def watched(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 401:
                self.limiter.failed(address)
            await send(message)

        await self.app(scope, receive, watched)
