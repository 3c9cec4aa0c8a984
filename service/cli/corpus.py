"""``mixopt corpus``: build and inspect training corpora."""

import typer

app = typer.Typer(help="Build and inspect training corpora.", no_args_is_help=True)
