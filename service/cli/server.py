"""``mixopt server`` and ``mixopt db``."""

from __future__ import annotations

import logging
import os

import typer

from ..settings import get_settings

log = logging.getLogger("mixopt.server")

db_app = typer.Typer(help="Database schema (Alembic migrations).", no_args_is_help=True)


def server(
    host: str = typer.Option(None, help="bind address [MIXOPT_HOST, 127.0.0.1]"),
    port: int = typer.Option(None, help="port [MIXOPT_PORT, 8000]"),
    workers: int = typer.Option(1, help="uvicorn worker processes (all share the database)"),
) -> None:
    """Run the API server (migrates the database first unless MIXOPT_AUTO_MIGRATE=false)."""
    import uvicorn

    from ..api._http import HeaderDeadlineProtocol
    from ..logs import configure_logging, register_secret

    from ..settings import check_exposure, check_secrets, resolve_join_secret

    settings = get_settings()
    configure_logging(settings.log_level, settings.log_json)
    register_secret(settings.admin_token.get_secret_value() if settings.admin_token else None)
    register_secret(resolve_join_secret(settings))
    try:
        check_exposure(settings, host or settings.host)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--host") from None
    try:
        check_secrets(settings)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    # Alembic's plugin and context lines at every start are noise; the migration is logged below.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    from ..db import current_revision, upgrade

    if settings.auto_migrate:
        # Once, here: `--workers N` processes migrating at the same time race on creating the tables.
        before = current_revision(settings.database_url)
        upgrade(settings.database_url)
        os.environ["MIXOPT_AUTO_MIGRATE"] = "false"  # the worker processes inherit it
        get_settings.cache_clear()  # and so does this process's app (uvicorn builds it here with --workers 1)
        after = current_revision(settings.database_url)
        if after != before:
            log.info("database migrated from revision %s to %s", before or "(empty)", after)
    # Which database this server serves, without its password: a URL that did not reach the
    # process (e.g. set for another command only) shows here as the default SQLite file.
    log.info("serving database %s at revision %s", _public_url(settings.database_url),
             current_revision(settings.database_url) or "(empty)")
    if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # one /metrics for all processes: each writes its counters there, any one sums them
        import shutil

        multiproc = settings.data_dir / f"prometheus-{os.getpid()}"
        shutil.rmtree(multiproc, ignore_errors=True)
        multiproc.mkdir(parents=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(multiproc)
    uvicorn.run(
        "service.app:create_app", factory=True, host=host or settings.host, port=port or settings.port,
        workers=workers, log_config=None, timeout_graceful_shutdown=settings.shutdown_grace_s,
        timeout_keep_alive=settings.keep_alive_s, limit_concurrency=settings.limit_concurrency,
        h11_max_incomplete_event_size=settings.h11_max_incomplete_event_size,
        proxy_headers=True, forwarded_allow_ips=settings.forwarded_allow_ips, http=HeaderDeadlineProtocol,
    )


def _public_url(url: str) -> str:
    """``url`` without its password or query parameters (they may carry credentials)."""
    from sqlalchemy.engine import make_url

    return make_url(url).set(query={}).render_as_string(hide_password=True)


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
