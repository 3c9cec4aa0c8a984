"""What the CLI commands that talk to a server over HTTP share (``export``, ``runs``): the
``--url``/``--token`` options and the translation of API errors into a one-line message."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer


def url_option() -> typer.models.OptionInfo:
    return typer.Option(None, "--url", envvar="MIXOPT_URL", show_envvar=True,
                        help="server URL (default http://127.0.0.1:8000)")


def token_option(scope: str) -> typer.models.OptionInfo:
    return typer.Option(None, "--token", envvar="MIXOPT_TOKEN", show_envvar=True,
                        help=f"API token with {scope} scope (needed when the server has auth enabled)")


@contextmanager
def connect(url: str | None, token: str | None) -> Iterator:
    """A :class:`workers.client.MixoptClient`; an API error or an unreachable server ends the
    command with the server's message and exit status 1."""
    from workers.client import ApiError, MixoptClient, ServerUnavailable

    try:
        with MixoptClient(url, token) as client:
            yield client
    except ApiError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    except ServerUnavailable as e:
        typer.echo(f"error: server unreachable: {e}", err=True)
        raise typer.Exit(1) from None


def fail(message: str, param_hint: str | None = None) -> None:
    """End the command on bad input, naming the option or field."""
    raise typer.BadParameter(message, param_hint=param_hint)
