"""``mixopt bench``: the benchmarks of DESIGN.md section 4."""

import typer

app = typer.Typer(help="Run the benchmarks of DESIGN.md section 4.", no_args_is_help=True)


@app.command("aioli", add_help_option=False,
             context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def aioli(ctx: typer.Context) -> None:
    """Aioli against stratified sampling on the demo corpus: equal token budgets, the same seeds,
    held-out test perplexity (benchmarks/aioli_vs_stratified.py; its options: --help)."""
    import sys
    from pathlib import Path as _Path

    script = _Path(__file__).resolve().parents[2] / "benchmarks" / "aioli_vs_stratified.py"
    if not script.exists():
        raise typer.BadParameter(f"{script} not found: this command needs a source checkout of mixopt")
    sys.path.insert(0, str(script.parent))  # by name, so that its worker processes can import it too
    import aioli_vs_stratified

    aioli_vs_stratified.main(ctx.args)
