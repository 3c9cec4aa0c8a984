"""The worker protocol's three hot calls (lease, heartbeat, complete) without FastAPI's per-request
machinery.

A fleet sends these calls by the hundred per second, and on one server process FastAPI's routing,
dependency solving, body handling and response validation cost about as much CPU as the database
work behind them. A fast route sits in front of each of the three documented routes and serves
the common case itself: the worker found by its token as the route finds it (:func:`~service.api.
auth.worker_of`: a refused token is the same 401), a lease id of the documented shape, no body or a
JSON body that validates. It then calls the same function as the route (``grant``, ``renew``,
``finish`` in :mod:`service.api.routes.leases`) and writes the same answer. Anything else (a
malformed id, a body that does not validate, another content type) goes, body and all, to the
FastAPI route, so every validation answer (422) and the OpenAPI schema come from one place. The
engine's errors (403, 404, 409, a database outage) propagate to the app's exception handlers as
they do from the route. The middlewares (guard, body limit, metrics) run for both.

``MIXOPT_WORKER_FAST_PATH=false`` sends every call through the FastAPI routes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, ValidationError
from starlette.routing import Match, Route
from starlette.types import Message, Receive, Scope, Send

from ..schemas._common import LEASE_ID_PATTERN
from ..schemas.leases import Heartbeat, LeaseRequest
from ..schemas.trials import ResultCreate
from ._guard import _bearer
from .auth import worker_of
from .routes.leases import finish, grant, renew

_LEASE_ID = re.compile(LEASE_ID_PATTERN)
_LEASE_ID_MAX = 36  # the route's LeaseId bound
_JSON_HEADERS = [(b"content-type", b"application/json")]


_DECLINED = "mixopt.fast_route_declined"
"""Scope key: the request went through a fast route that handed it on; routing again, the fast
routes do not match it, so the documented route gets it."""


class _FastRoute(Route):
    """A route matched before the documented one of the same path, except for a request it
    declined."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope.get(_DECLINED):
            return Match.NONE, {}
        match, child = super().matches(scope)
        if match != Match.NONE:
            child["route"] = self  # FastAPI's router sets it for its own routes only (metrics read it)
        return match, child


class _FastEndpoint:
    """The ASGI endpoint of one fast route."""

    def __init__(self, model: type[BaseModel], body_required: bool,
                 call: Callable[..., Awaitable[BaseModel | None]], with_lease_id: bool):
        self.model, self.body_required, self.call, self.with_lease_id = model, body_required, call, with_lease_id

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = await _read_body(receive)
        state = scope["app"].state
        worker = await worker_of(state.db, state.settings, _bearer(scope))  # 401 first, as the route
        lease_id = scope["path_params"].get("lease_id") if self.with_lease_id else None
        parsed = self._parse(scope, body) if _lease_id_ok(lease_id, self.with_lease_id) else None
        if parsed is None:
            await self._to_route(scope, receive, send, body)
            return
        args = (state, lease_id, worker, parsed) if self.with_lease_id else (state, worker, parsed)
        answer = await self.call(*args)
        if answer is None:  # the lease's long-poll found no work
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        data = answer.model_dump_json().encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [*_JSON_HEADERS, (b"content-length", str(len(data)).encode())]})
        await send({"type": "http.response.body", "body": data})

    def _parse(self, scope: Scope, body: bytes) -> BaseModel | None:
        """The validated body, or ``None`` when the route must answer (FastAPI's rules: a JSON body
        needs a JSON content type; an empty body is the default for an optional one)."""
        if not body:
            return None if self.body_required else self.model()
        if not _is_json(scope):
            return None
        try:
            return self.model.model_validate(json.loads(body))
        except (ValueError, ValidationError):  # JSONDecodeError is a ValueError
            return None

    async def _to_route(self, scope: Scope, receive: Receive, send: Send, body: bytes) -> None:
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        scope[_DECLINED] = True
        await scope["router"](scope, replay, send)


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":  # a disconnect: the route's own read sees it too
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _lease_id_ok(lease_id: Any, needed: bool) -> bool:
    return not needed or (isinstance(lease_id, str) and 0 < len(lease_id) <= _LEASE_ID_MAX
                          and _LEASE_ID.match(lease_id) is not None)


def _is_json(scope: Scope) -> bool:
    for key, value in scope.get("headers", ()):
        if key == b"content-type":
            kind = value.decode("latin-1").split(";", 1)[0].strip().lower()
            return kind == "application/json" or (kind.startswith("application/") and kind.endswith("+json"))
    return False


FAST_ROUTES: dict[str, tuple[type[BaseModel], bool, Callable[..., Awaitable[BaseModel | None]], bool]] = {
    # path: (body model, body required, the route's function, takes the lease id)
    "/api/v1/leases": (LeaseRequest, False, grant, False),
    "/api/v1/leases/{lease_id}/heartbeat": (Heartbeat, False, renew, True),
    "/api/v1/leases/{lease_id}/complete": (ResultCreate, True, finish, True),
}


def install_fast_routes(app: FastAPI) -> None:
    """Put a fast route in front of each documented route of :data:`FAST_ROUTES`."""
    fast = [_FastRoute(path, _FastEndpoint(*spec), methods=["POST"], include_in_schema=False)
            for path, spec in FAST_ROUTES.items()]
    app.router.routes[:0] = fast
