"""``mixopt token``: API tokens for users (stored hashed; shown once)."""

from __future__ import annotations

import typer

from ..settings import get_settings

app = typer.Typer(help="Create, list and revoke API tokens.", no_args_is_help=True)


def _db():
    from ..db import Database

    return Database(get_settings().database_url)


@app.command("create")
def create(
    scope: str = typer.Option(..., help="read (dashboard, GETs), write (studies, ask/tell) or admin"),
    name: str = typer.Option("token", help="a name to recognise it by"),
) -> None:
    """Create a token and print it (only this once: the server keeps its hash)."""
    from ..engine import SCOPES, create_token

    if scope not in SCOPES:
        raise typer.BadParameter(f"must be one of {', '.join(SCOPES)}", param_hint="--scope")
    row, token = create_token(_db(), name, scope)
    typer.echo(token)
    typer.echo(f"# token {row.id} ({name!r}, scope {scope}); it is not shown again", err=True)


@app.command("list")
def list_() -> None:
    """List tokens (never their values)."""
    from ..engine import list_tokens

    for t in list_tokens(_db()):
        state = f"revoked {t.revoked_at:%Y-%m-%d %H:%M}" if t.revoked_at else "active"
        used = f"{t.last_used_at:%Y-%m-%d %H:%M}" if t.last_used_at else "never"
        typer.echo(f"{t.id}\t{t.name}\t{t.scope}\t{state}\tlast used {used}")


@app.command("revoke")
def revoke(token_id: int = typer.Argument(..., help="the token's id (see `mixopt token list`)")) -> None:
    """Revoke a token: it stops working at once."""
    from ..engine import revoke_token

    revoke_token(_db(), token_id)
    typer.echo(f"token {token_id} revoked")
