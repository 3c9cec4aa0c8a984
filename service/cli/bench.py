"""``mixopt bench``: the benchmarks of DESIGN.md section 4."""

import typer

app = typer.Typer(help="Run the benchmarks of DESIGN.md section 4.", no_args_is_help=True)
