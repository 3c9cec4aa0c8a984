"""Defences in front of the app: a lockout for clients that keep failing secrets, a token check
before large bodies are read, and the browser's defensive headers on every answer.

- **Lockout.** Every 401 (wrong join secret, API or worker token, dashboard login) counts against
  the client's address; after ``auth_failures_max`` within ``auth_failure_window_s`` the address
  gets 429 (with ``Retry-After``) for ``auth_lockout_s``. Counted per server process.
- **Auth before the body.** A request without a valid token may carry at most
  ``unauthenticated_body_bytes`` (worker registration always; every request when auth is
  enabled): the ``Authorization`` header is checked before a byte of a larger body is read, so that
  unauthenticated clients cannot make the server buffer megabytes.
- **Slow bodies.** A body must arrive within ``body_timeout_s`` (408 otherwise): a client
  trickling bytes cannot hold a connection and a worker thread for long.
- **Headers.** ``X-Frame-Options: DENY`` and CSP ``frame-ancestors 'none'`` (no framing, so no
  clickjacking of the dashboard), ``X-Content-Type-Options: nosniff``, ``Referrer-Policy``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import OrderedDict, deque

from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..auth import token_known
from ..settings import Settings, resolve_join_secret

SECURITY_HEADERS = [
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", b"frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
]
TRACKED_ADDRESSES = 100_000
"""Most client addresses whose failures are remembered (the oldest are forgotten first)."""
WORKER_PATHS = ("/api/v1/workers", "/api/v1/leases")
"""Paths that need a worker token or the join secret even when user auth is disabled."""


if sys.version_info >= (3, 11):
    async def _within(awaitable, seconds: float):
        """``await awaitable``, or TimeoutError after ``seconds``; unlike ``asyncio.wait_for`` (before
        Python 3.12) it creates no task, which every request's body read paid for."""
        async with asyncio.timeout(seconds):
            return await awaitable
else:  # pragma: no cover (Python 3.10)
    async def _within(awaitable, seconds: float):
        return await asyncio.wait_for(awaitable, seconds)


class Guard:
    """ASGI middleware; sits outside :class:`~service.api._limits.BodySizeLimit`, which it tells the
    body limit of each request through ``scope["state"]["max_body_bytes"]``."""

    def __init__(self, app: ASGIApp, settings: Settings):
        self.app = app
        self.settings = settings
        self.failures: OrderedDict[str, deque[float]] = OrderedDict()
        self.locked: dict[str, float] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        address = (scope.get("client") or ("unknown", 0))[0]
        now = time.monotonic()
        until = self.locked.get(address)
        if until is not None and now < until and scope["path"] != "/healthz":
            await _answer(send, 429, "too many failed secrets from this address; try again later",
                          [(b"retry-after", str(int(until - now) + 1).encode())])
            return
        if until is not None and now >= until:
            del self.locked[address]
        scope.setdefault("state", {})["max_body_bytes"] = await self._body_limit(scope)

        started = body_done = False
        deadline = now + self.settings.body_timeout_s

        async def send_guarded(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if message["status"] == 401:
                    self._failed(address)
                message = {**message, "headers": [*message.get("headers", []), *SECURITY_HEADERS]}
            await send(message)

        async def receive_timed() -> Message:
            nonlocal body_done
            if body_done:  # later calls wait for a disconnect (streaming answers): no deadline
                return await receive()
            message = await _within(receive(), max(deadline - time.monotonic(), 0.001))
            body_done = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        try:
            await self.app(scope, receive_timed, send_guarded)
        except TimeoutError:
            if started:
                raise
            await _answer(send, 408, f"body: not received within {self.settings.body_timeout_s:g} s "
                                     "(setting MIXOPT_BODY_TIMEOUT_S)", [(b"connection", b"close")])

    def _failed(self, address: str) -> None:
        now = time.monotonic()
        seen = self.failures.pop(address, None) or deque()
        seen.append(now)
        while seen and seen[0] < now - self.settings.auth_failure_window_s:
            seen.popleft()
        if len(seen) >= self.settings.auth_failures_max:
            self.locked[address] = now + self.settings.auth_lockout_s
            seen.clear()
        self.failures[address] = seen
        while len(self.failures) > TRACKED_ADDRESSES:
            self.failures.popitem(last=False)
        if len(self.locked) > TRACKED_ADDRESSES:
            self.locked = {a: t for a, t in self.locked.items() if t > now}

    async def _body_limit(self, scope: Scope) -> int:
        """The most body bytes this request may send: the full limit for a valid token (or where
        no token is needed), the small unauthenticated one otherwise."""
        full, small = self.settings.max_body_bytes, self.settings.unauthenticated_body_bytes
        needs_token = self.settings.auth_enabled or scope["path"].startswith(WORKER_PATHS)
        if not needs_token or _content_length(scope) in range(small + 1):
            return full  # no body (no length, not chunked), or a small one: nothing to guard
        token = _bearer(scope)
        if token and await run_in_threadpool(_token_known, scope["app"].state.db, self.settings, token):
            return full
        return small


def _token_known(db, settings: Settings, token: str) -> bool:
    admin = settings.admin_token.get_secret_value() if settings.admin_token else None
    return token_known(db, token, admin, resolve_join_secret(settings), settings.worker_token_ttl_s)


def _bearer(scope: Scope) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if scheme.lower() == "bearer" and token.strip() else None
    return None


def _content_length(scope: Scope) -> int:
    """The announced length; 0 without one and without chunked encoding (no body); -1 when chunked
    or malformed: treated as possibly large."""
    length = 0
    for key, value in scope.get("headers", ()):
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return -1
        if key == b"transfer-encoding":
            length = -1
    return length


async def _answer(send: Send, status: int, detail: str, headers: list[tuple[bytes, bytes]]) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers, *SECURITY_HEADERS]})
    await send({"type": "http.response.body", "body": body})
