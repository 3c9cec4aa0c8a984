"""Read access to the dashboard: the API's rule (open when auth is disabled or reads are public,
else a token with the ``read`` scope), with the token taken from the ``Authorization`` header or,
for browsers, from an HttpOnly cookie set by the login form. Tokens travel in a POST body, never
in a URL, so that no access log records them."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from ..api.auth import Credentials
from ..api.deps import DbDep, SettingsDep
from ..auth import authorize

COOKIE = "mixopt_dashboard_token"


def request_token(request: Request, credentials) -> str | None:
    if credentials is not None:
        return credentials.credentials
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.cookies.get(COOKIE) or None


def auth_required(settings) -> bool:
    return settings.auth_enabled and not settings.public_read


def check_read(db: DbDep, settings: SettingsDep, credentials: Credentials, request: Request) -> None:
    """Admit the caller when reads are open, or its token (header or cookie) grants ``read``;
    401 / 403 otherwise."""
    if not auth_required(settings):
        return
    admin = settings.admin_token.get_secret_value() if settings.admin_token else None
    request.state.caller = authorize(db, request_token(request, credentials), "read", admin)


dashboard_read = Depends(check_read)
ReadDep = Annotated[None, Depends(check_read)]
