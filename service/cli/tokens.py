"""``mixopt token``: API tokens for users (stored hashed; shown once), and workers' tokens."""

from __future__ import annotations

import typer

from ..settings import get_settings

app = typer.Typer(help="Create, list and revoke API tokens; list and revoke worker tokens.", no_args_is_help=True)


def _db():
    from ..db import Database

    return Database(get_settings().database_url)


@app.command("create")
def create(
    scope: str = typer.Option(..., help="read (dashboard, GETs), write (studies, ask/tell) or admin"),
    name: str = typer.Option("token", help="a name to recognise it by"),
) -> None:
    """Create a token and print it (only this once: the server keeps its hash)."""
    from ..auth import SCOPES, create_token

    if scope not in SCOPES:
        raise typer.BadParameter(f"must be one of {', '.join(SCOPES)}", param_hint="--scope")
    row, token = create_token(_db(), name, scope)
    typer.echo(token)
    typer.echo(f"# token {row.id} ({name!r}, scope {scope}); it is not shown again", err=True)


@app.command("list")
def list_() -> None:
    """List tokens (never their values)."""
    from ..auth import list_tokens

    for t in list_tokens(_db()):
        state = f"revoked {t.revoked_at:%Y-%m-%d %H:%M}" if t.revoked_at else "active"
        used = f"{t.last_used_at:%Y-%m-%d %H:%M}" if t.last_used_at else "never"
        typer.echo(f"{t.id}\t{t.name}\t{t.scope}\t{state}\tlast used {used}")


@app.command("revoke")
def revoke(token_id: int = typer.Argument(..., help="the token's id (see `mixopt token list`)")) -> None:
    """Revoke a token: it stops working at once."""
    from ..auth import revoke_token

    revoke_token(_db(), token_id)
    typer.echo(f"token {token_id} revoked")


def _stamp(t) -> str:
    return f"{t:%Y-%m-%d %H:%M}" if t else "never"


@app.command("workers")
def workers() -> None:
    """List worker tokens (never their values) with their state, expiry and leases held.

    Columns: id, name, state, issued, last seen, expiry, leases held. State: active, revoked,
    expired (MIXOPT_WORKER_TOKEN_TTL_S) or old-secret (issued under a previous join secret)."""
    from ..auth import list_worker_tokens
    from ..settings import known_join_secret

    settings = get_settings()
    for t in list_worker_tokens(_db(), known_join_secret(settings), settings.worker_token_ttl_s):
        typer.echo(f"{t.id}\t{t.name}\t{t.state}\tissued {_stamp(t.token_issued_at)}\t"
                   f"last seen {_stamp(t.last_seen_at)}\texpires {_stamp(t.expires_at)}\t{t.held_leases} leases")


@app.command("revoke-worker")
def revoke_worker(worker_id: int = typer.Argument(..., help="the worker's id (see `mixopt token workers`)")) -> None:
    """Revoke a worker's token: it stops working at once and its leases end.

    The token cannot be renewed either; the leased trials are requeued. The worker may register
    anew only from a fresh state (no saved identity)."""
    from ..auth import revoke_worker as revoke
    from ..settings import known_join_secret

    from ..errors import NotFound

    settings = get_settings()
    try:
        t = revoke(_db(), worker_id, known_join_secret(settings), settings.worker_token_ttl_s)
    except NotFound as e:
        raise typer.BadParameter(str(e), param_hint="WORKER_ID") from None
    typer.echo(f"worker {worker_id} ({t.name!r}) revoked")
