"""The ``mixopt`` command line. Each sub-command family lives in a module of its own."""

from __future__ import annotations

import typer

from . import bench, corpus, demo, server, tokens, worker
from . import export, runs

app = typer.Typer(help="mixopt: data-mixture search for LLM pretraining.", no_args_is_help=True)
app.command("server")(server.server)
app.command("worker")(worker.worker)
app.command("demo")(demo.demo)
app.add_typer(server.db_app, name="db")
app.add_typer(tokens.app, name="token")
app.add_typer(corpus.app, name="corpus")
app.add_typer(bench.app, name="bench")
app.command("export")(export.export)
app.add_typer(runs.app, name="runs")
