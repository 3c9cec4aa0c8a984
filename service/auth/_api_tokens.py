"""API tokens: created and revoked from the CLI, stored as SHA-256 hashes, with one scope each.
Scopes nest: ``admin`` includes ``write``, which includes ``read``."""

from __future__ import annotations

import hmac
import secrets

from sqlalchemy import select

from ..db import ApiToken, Database, Worker, utcnow
from ..engine import hash_token, join_fingerprint, token_state
from ..errors import Forbidden, NotFound, Unauthorized

SCOPES = ("read", "write", "admin")


def create_token(db: Database, name: str, scope: str) -> tuple[ApiToken, str]:
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}")
    token = "mxt_" + secrets.token_urlsafe(32)
    with db.session() as s:
        row = ApiToken(name=name, token_hash=hash_token(token), scope=scope)
        s.add(row)
    return row, token


def list_tokens(db: Database) -> list[ApiToken]:
    with db.session() as s:
        return list(s.scalars(select(ApiToken).order_by(ApiToken.id)))


def revoke_token(db: Database, token_id: int) -> ApiToken:
    with db.session() as s:
        row = s.get(ApiToken, token_id)
        if row is None:
            raise NotFound("token", token_id)
        row.revoked_at = row.revoked_at or utcnow()
        return row


def authorize(db: Database, token: str | None, scope: str, admin_token: str | None = None) -> str:
    """The name of the caller if ``token`` grants ``scope``; 401 without a valid token, 403 with
    one that lacks the scope (a worker token grants none of these)."""
    if not token:
        raise Unauthorized("an API token is required (Authorization: Bearer ...)")
    if admin_token and hmac.compare_digest(token.encode(), admin_token.encode()):
        return "admin-token"
    digest = hash_token(token)
    with db.session() as s:
        row = s.scalars(select(ApiToken).where(ApiToken.token_hash == digest)).one_or_none()
        if row is None or row.revoked_at is not None:
            if s.scalars(select(Worker.id).where(Worker.token_hash == digest)).first() is not None:
                raise Forbidden("a worker token only leases, heartbeats and reports its own leases")
            raise Unauthorized("invalid or revoked API token")
        if SCOPES.index(row.scope) < SCOPES.index(scope):
            raise Forbidden(f"token {row.name!r} has scope {row.scope!r}; this needs {scope!r}")
        now = utcnow()
        if row.last_used_at is None or (now - row.last_used_at).total_seconds() > 60:
            row.last_used_at = now  # at most once a minute: reads should not all write
        return row.name


def token_known(db: Database, token: str, admin_token: str | None, join_secret: str,
                ttl_s: float | None) -> bool:
    """Whether ``token`` is the admin token, a live API token (any scope) or an active worker
    token: a cheap check, without the scope, for callers that only need to know whether to trust
    the bearer a little more (the request-size guard)."""
    if admin_token and hmac.compare_digest(token.encode(), admin_token.encode()):
        return True
    digest = hash_token(token)
    with db.session() as s:
        if s.scalars(select(ApiToken.id).where(ApiToken.token_hash == digest, ApiToken.revoked_at.is_(None))).first():
            return True
        worker = s.scalars(select(Worker).where(Worker.token_hash == digest)).first()
        # a worker token the endpoint would refuse (revoked, expired, from an old join secret) sends no large body
        return worker is not None and token_state(worker, join_fingerprint(join_secret), ttl_s, utcnow()) == "active"
