"""A bound on request bodies, enforced before the app reads them.

A body that announces a ``Content-Length`` over the limit is refused at once; one sent without it
(``Transfer-Encoding: chunked``) is counted while it arrives and refused as soon as it passes the
limit, so that no endpoint ever holds more than ``max_bytes`` of one request in memory.
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodySizeLimit:
    """ASGI middleware: 413 for request bodies over ``max_bytes``."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # A request without a valid token may have a smaller limit (set by the Guard in front).
        limit = scope.get("state", {}).get("max_body_bytes", self.max_bytes)
        length = _content_length(scope)
        if length is not None:
            if length < 0:
                await _answer(send, 400, "content-length: not a non-negative integer")
            elif length > limit:
                await self._refuse(send, f"{length} bytes", limit)
            else:
                await self.app(scope, receive, send)
            return
        # No Content-Length: read the body up to the limit, then hand it to the app in one piece.
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            body = message.get("body", b"")
            size += len(body)
            if size > limit:
                await self._refuse(send, f"more than {limit} bytes", limit)
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, send: Send, size: str, limit: int) -> None:
        setting = "MIXOPT_MAX_BODY_BYTES" if limit == self.max_bytes else \
            "MIXOPT_UNAUTHENTICATED_BODY_BYTES, for requests without a valid token"
        await _answer(send, 413, f"body: the request body ({size}) exceeds the server's limit of {limit} "
                                 f"bytes (setting {setting})")


def _content_length(scope: Scope) -> int | None:
    for key, value in scope.get("headers", ()):
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return -1
    return None


async def _answer(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
