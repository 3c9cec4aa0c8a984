"""``mixopt server`` and ``mixopt db``."""

from __future__ import annotations

import os

import typer

from ..settings import get_settings

db_app = typer.Typer(help="Database schema (Alembic migrations).", no_args_is_help=True)


def server(
    host: str = typer.Option(None, help="bind address [MIXOPT_HOST, 127.0.0.1]"),
    port: int = typer.Option(None, help="port [MIXOPT_PORT, 8000]"),
    workers: int = typer.Option(1, help="uvicorn worker processes (all share the database)"),
) -> None:
    """Run the API server (migrates the database first unless MIXOPT_AUTO_MIGRATE=false)."""
    import uvicorn

    from ..logs import configure_logging, register_secret

    from ..settings import check_exposure, resolve_join_secret

    settings = get_settings()
    configure_logging(settings.log_level, settings.log_json)
    register_secret(settings.admin_token.get_secret_value() if settings.admin_token else None)
    register_secret(resolve_join_secret(settings))
    try:
        check_exposure(settings, host or settings.host)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--host") from None
    if settings.auto_migrate:
        # Once, here: `--workers N` processes migrating at the same time race on creating the tables.
        from ..db import upgrade

        upgrade(settings.database_url)
        os.environ["MIXOPT_AUTO_MIGRATE"] = "false"  # the worker processes inherit it
    uvicorn.run(
        "service.api:create_app", factory=True, host=host or settings.host, port=port or settings.port,
        workers=workers, log_config=None, timeout_graceful_shutdown=settings.shutdown_grace_s,
        timeout_keep_alive=settings.keep_alive_s,
    )


@db_app.command("upgrade")
def db_upgrade(revision: str = typer.Argument("head", help="target revision")) -> None:
    """Migrate the database at MIXOPT_DATABASE_URL up to REVISION."""
    from ..db import current_revision, upgrade

    url = get_settings().database_url
    upgrade(url, revision)
    typer.echo(f"database at revision {current_revision(url)}")


@db_app.command("current")
def db_current() -> None:
    """Print the database's current revision."""
    from ..db import current_revision

    typer.echo(current_revision(get_settings().database_url) or "empty")
