"""``mixopt bench``: search efficiency, proposal latency and Aioli benchmarks."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(help="Run the benchmarks: search efficiency, proposal latency, Aioli against stratified sampling.", no_args_is_help=True)


def _specs(names: Optional[str], defaults=None):
    """Strategy specs from ``label`` (a benchmark default) or ``label:name:{json params}`` items."""
    from ..benchmarking import DEFAULT_STRATEGIES, StrategySpec
    from ..benchmarking.latency import LATENCY_STRATEGIES

    defaults = list(DEFAULT_STRATEGIES if defaults is None else defaults)
    if not names:
        return defaults
    known = {s.label: s for s in (*LATENCY_STRATEGIES, *DEFAULT_STRATEGIES)}
    specs = []
    for item in names.split(","):
        label, _, params = item.strip().partition(":")
        if params:  # label:name:{json params}
            name, _, raw = params.partition(":")
            try:
                specs.append(StrategySpec(label, name, json.loads(raw or "{}")))
            except json.JSONDecodeError as exc:
                raise typer.BadParameter(f"--strategies: bad JSON params for {label!r}: {exc}") from None
        elif label in known:
            specs.append(known[label])
        else:
            raise typer.BadParameter(f"--strategies: unknown {label!r}; known: {sorted(known)} or label:name:{{json}}")
    return specs


@app.command("search")
def search(
    pool: Optional[Path] = typer.Option(None, help="Pool CSV (mixture_id,fidelity,cost,objective,w_<domain>...); "
                                        "default: the RegMix runs in benchmarks/data/regmix (objective Pile-CC loss)."),
    target: Optional[str] = typer.Option(None, help="Target fidelity of the pool (default: cost 1, else the costliest)."),
    suite: bool = typer.Option(False, "--suite", help="Run the pool suite (every RegMix target, the synthetic pools, "
                               "the demo-corpus pool when it exists) instead of one pool."),
    pools: Optional[str] = typer.Option(None, help="With --suite: comma-separated pool names (default: all; "
                                        "'reduced': the three pools CI runs)."),
    strategies: Optional[str] = typer.Option(None, help="Comma-separated labels, or label:name:{json params} "
                                             "(default: all; with --suite: admire, admire-kg, regmix, random, uniform)."),
    seeds: int = typer.Option(10, min=1, help="Seeds per strategy."),
    max_cost: float = typer.Option(40.0, help="Cost budget of each simulated study (target-fidelity runs)."),
    parallelism: int = typer.Option(1, min=1, help="Simulated parallel workers."),
    jobs: int = typer.Option(1, min=1, help="Simulations run in this many processes."),
    threads: int = typer.Option(1, min=1, help="torch threads per process."),
    out: Path = typer.Option(Path("artifacts/bench/search"), help="Output folder (search.* or suite.*; with --suite "
                             "also traces/, from which an interrupted run resumes)."),
) -> None:
    """Search efficiency of the strategies on one pool or on the pool suite.

    Cost to reach normalised regret 0, 0.05 and 0.2, and the regret of each strategy's
    recommendation after fixed budgets, as a table, JSON and PNG."""
    import torch
    from tqdm import tqdm

    from ..benchmarking import SUITE_STRATEGIES, format_table, load_pool, plot, regmix_pool, run_benchmark
    from ..benchmarking.search import save

    torch.set_num_threads(threads)
    if suite:
        from ..benchmarking.suite import REDUCED, run_suite, save_suite, suite_pools

        names = list(REDUCED) if pools == "reduced" else (pools.split(",") if pools else None)
        try:
            chosen = suite_pools(names, log=typer.echo)
        except ValueError as exc:
            raise typer.BadParameter(f"--pools: {exc}") from None
        specs = _specs(strategies, SUITE_STRATEGIES)
        typer.echo(f"suite: {len(chosen)} pools x {len(specs)} strategies x {seeds} seeds")
        t0 = time.perf_counter()
        with tqdm(total=len(chosen) * len(specs) * seeds, desc="simulations") as bar:
            results = run_suite(chosen, specs, range(seeds), out=out, max_cost=max_cost, parallelism=parallelism,
                                jobs=jobs, progress=bar.update)
        paths = save_suite(results, out, time.perf_counter() - t0)
        typer.echo(paths["md"].read_text())
        typer.echo(f"wrote {', '.join(map(str, paths.values()))} ({time.perf_counter() - t0:.0f}s)")
        return
    try:
        data = load_pool(pool, target=target) if pool else regmix_pool()
    except (OSError, ValueError) as exc:
        raise typer.BadParameter(f"--pool: {exc}") from None
    specs = _specs(strategies)
    typer.echo(f"pool: {json.dumps(data.summary())}")
    t0 = time.perf_counter()
    with tqdm(total=len(specs) * seeds, desc="simulations") as bar:
        result = run_benchmark(data, specs, range(seeds), max_cost=max_cost, parallelism=parallelism, jobs=jobs,
                               progress=bar.update)
    result["wall_s"] = time.perf_counter() - t0
    table = format_table(result)
    typer.echo(table)
    out.mkdir(parents=True, exist_ok=True)
    save(result, out / "search.json")
    (out / "search.md").write_text(table + "\n")
    plot(result, out / "search.png", str(pool or "regmix/pile_cc"))
    typer.echo(f"wrote {out / 'search.json'}, {out / 'search.md'}, {out / 'search.png'} ({result['wall_s']:.0f}s)")


@app.command("merge-suites")
def merge_suites_cmd(
    sources: list[Path] = typer.Argument(..., help="Saved suites: folders holding suite.json(.gz), or the files."),
    out: Path = typer.Option(..., help="Output folder (suite.json, suite.md, suite-short.md, suite.png)."),
) -> None:
    """Merge suites run separately (per strategy or per group of pools) into one table and plot."""
    from ..benchmarking.suite import load_suite, merge_suites, save_suite

    try:
        results = merge_suites([load_suite(path) for path in sources])
    except (OSError, ValueError) as exc:
        raise typer.BadParameter(str(exc)) from None
    paths = save_suite(results, out)
    typer.echo(paths["short"].read_text())
    typer.echo(f"wrote {', '.join(map(str, paths.values()))}")


@app.command("latency")
def latency(
    strategies: Optional[str] = typer.Option(None, help="Comma-separated labels (default: admire-mes, admire-kg, regmix, random, uniform)."),
    domains: str = typer.Option("5,20", help="Numbers of domains."),
    results: str = typer.Option("50,300,1000", help="Numbers of past results."),
    repeats: int = typer.Option(3, min=1, help="Timed calls per cell (median reported)."),
    threads: int = typer.Option(2, min=1, help="torch threads."),
    out: Path = typer.Option(Path("artifacts/bench/latency"), help="Output folder (latency.json, latency.md)."),
) -> None:
    """Time of one proposal per strategy as domains and past results grow (2 fidelities)."""
    import torch
    from tqdm import tqdm

    from ..benchmarking.latency import LATENCY_STRATEGIES, format_latency, run_latency
    from ..benchmarking.search import save

    torch.set_num_threads(threads)
    specs = _specs(strategies, LATENCY_STRATEGIES)
    try:
        ks = [int(x) for x in domains.split(",")]
        ns = [int(x) for x in results.split(",")]
    except ValueError:
        raise typer.BadParameter("--domains/--results: comma-separated integers") from None
    cells = sum(len(ks) * len(ns) * (2 if s.name in ("admire", "regmix") else 1) for s in specs)
    with tqdm(total=cells, desc="cells") as bar:
        result = run_latency(specs, ks, ns, repeats=repeats, progress=bar.update)
    result["threads"] = threads
    table = format_latency(result)
    typer.echo(table)
    out.mkdir(parents=True, exist_ok=True)
    save(result, out / "latency.json")
    (out / "latency.md").write_text(table + "\n")
    typer.echo(f"wrote {out / 'latency.json'}, {out / 'latency.md'}")


@app.command("regmix-pool")
def regmix_pool_csv(
    out: Path = typer.Argument(..., help="Where to write the pool CSV."),
    data_dir: Optional[Path] = typer.Option(None, help="RegMix data folder (default: benchmarks/data/regmix)."),
    objective: str = typer.Option("pile_cc", help="Pile domain whose validation loss is the objective."),
) -> None:
    """Convert the released RegMix runs into the generic pool CSV (1m: cost 1/60, 60m: cost 1, target)."""
    from ..benchmarking import regmix_pool, write_pool
    from ..benchmarking.pool import REGMIX_DIR

    try:
        data = regmix_pool(data_dir or REGMIX_DIR, objective=objective)
    except (OSError, ValueError) as exc:
        raise typer.BadParameter(str(exc)) from None
    write_pool(data, out)
    typer.echo(f"wrote {out}: {json.dumps(data.summary())}")


@app.command("aioli", add_help_option=False,
             context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def aioli(ctx: typer.Context) -> None:
    """Aioli against stratified sampling on the demo corpus.

    Equal token budgets and the same seeds, compared on held-out test perplexity
    (benchmarks/aioli_vs_stratified.py; its options: --help)."""
    import sys
    from pathlib import Path as _Path

    script = _Path(__file__).resolve().parents[2] / "benchmarks" / "aioli_vs_stratified.py"
    if not script.exists():
        raise typer.BadParameter(f"{script} not found: this command needs a source checkout of mixopt")
    sys.path.insert(0, str(script.parent))  # by name, so that its worker processes can import it too
    import aioli_vs_stratified

    aioli_vs_stratified.main(ctx.args)
