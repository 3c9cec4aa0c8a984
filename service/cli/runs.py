"""``mixopt runs import``: warm-start a study from runs done elsewhere (earlier studies, released
proxy runs), given in the generic long pool CSV of ``service.benchmarking.pool``::

    mixture_id,fidelity,cost,objective,w_<domain 1>,...,w_<domain k>[,loss_<domain>...]

Each row becomes a completed trial of the study (``POST /api/v1/studies/{id}/trials`` with a
``result``); imported trials feed the strategy's model and recommendation but do not count
against the study's budget. The CSV's ``objective`` is kept as the metric ``objective``.

The result's per-domain ``losses`` must let the server compute the study's objective:

- with ``loss_<domain>`` columns, the losses are those columns (empty cells are missing losses);
  every row must carry the losses the objective needs;
- with ``objective`` only, the study's objective must be one domain's loss: ``domain_loss``
  (or ``mean_loss`` over one domain, or ``weighted_loss`` with one domain), and the CSV's
  objective is recorded as that domain's loss (divided by its weight). Choose the domain the
  CSV's objective measures: for the RegMix pool, whose objective is the Pile-CC validation loss,
  ``{"kind": "domain_loss", "domain": "pile_cc"}``.

Re-running an import skips the rows already imported into the study (same fidelity, mixture
and objective), so an interrupted import can simply be repeated.
"""

from __future__ import annotations

import csv
import math
import tempfile
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import typer

from ._remote import connect, fail, token_option, url_option

app = typer.Typer(help="Runs done elsewhere: import them into a study (warm start).", no_args_is_help=True)

LOSS_PREFIX = "loss_"
OBJECTIVE_METRIC = "objective"
"""The metric under which an imported run keeps the CSV's ``objective`` column."""


def read_runs(path: str | Path):
    """Read a pool CSV with optional ``loss_<domain>`` columns.

    Returns:
        ``(pool, losses)``: the :class:`~service.benchmarking.PoolData` read by
        :func:`~service.benchmarking.load_pool` (which validates weights, costs and duplicates),
        and ``{(mixture_id, fidelity): {domain: loss}}`` from the loss columns (empty without them).

    Raises:
        ValueError: naming the file, line and column of the first problem.
    """
    from ..benchmarking import load_pool

    path = Path(path)
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        columns = list(reader.fieldnames or [])
        loss_columns = [c for c in columns if c.startswith(LOSS_PREFIX)]
        rows = list(reader) if loss_columns else []
    if not loss_columns:
        return load_pool(path), {}
    losses: dict[tuple[str, str], dict[str, float]] = {}
    for line, row in enumerate(rows, start=2):
        values = {}
        for c in loss_columns:
            cell = (row.get(c) or "").strip()
            if not cell:
                continue
            try:
                values[c[len(LOSS_PREFIX):]] = float(cell)
            except ValueError:
                raise ValueError(f"{path}:{line}: column {c!r} is not a number: {cell!r}") from None
            if not math.isfinite(values[c[len(LOSS_PREFIX):]]):
                raise ValueError(f"{path}:{line}: column {c!r} is not finite: {cell!r}")
        losses[(row["mixture_id"].strip(), row["fidelity"].strip())] = values
    # load_pool reads the base columns only: hand it the file without the loss columns (same lines).
    with tempfile.TemporaryDirectory(prefix="mixopt-import-") as tmp:
        base = Path(tmp) / path.name
        with base.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, [c for c in columns if c not in loss_columns], extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        try:
            pool = load_pool(base)
        except ValueError as e:
            raise ValueError(str(e).replace(str(base), str(path))) from None
    return pool, losses


def single_loss_domain(objective: Mapping[str, Any], domains: Sequence[str]) -> tuple[str, float] | None:
    """``(domain, coefficient)`` when the objective is ``coefficient x`` one domain's loss, else ``None``."""
    kind = objective.get("kind", "mean_loss")
    if kind == "domain_loss":
        return objective["domain"], 1.0
    if kind == "mean_loss":
        names = objective.get("domains") or list(domains)
        return (names[0], 1.0) if len(names) == 1 else None
    if kind == "weighted_loss":
        weights = objective.get("weights") or {}
        if len(weights) == 1:
            (name, coefficient), = weights.items()
            return (name, float(coefficient)) if coefficient != 0 else None
    return None


def plan_import(pool, losses: Mapping[tuple[str, str], Mapping[str, float]], study: Mapping[str, Any],
                fidelity_map: Mapping[str, str] | None = None) -> tuple[list[dict[str, Any]], list[str]]:
    """The ``TrialCreate`` bodies for every run of ``pool`` into ``study`` (as the API returns
    it), in pool order (fidelities cheapest first, then mixtures), and notes for the user.

    Raises:
        ValueError: when the pool cannot be imported into the study (domains, fidelities, or an
            objective the rows cannot satisfy), naming what to change.
    """
    from ..engine import objective_value, required_losses

    domains = [d["name"] for d in study["domains"]]
    objective = dict(study["objective"])
    objective = {k: v for k, v in objective.items() if v is not None}
    if set(pool.domains) != set(domains):
        missing, extra = sorted(set(domains) - set(pool.domains)), sorted(set(pool.domains) - set(domains))
        raise ValueError(f"the CSV's domains differ from study {study['id']}'s: missing w_ columns for {missing}, "
                         f"columns for domains the study lacks: {extra}")
    fidelity_map = dict(fidelity_map or {})
    study_fidelities = {f["name"]: f for f in study["fidelities"]}
    names = {f.name: fidelity_map.get(f.name, f.name) for f in pool.fidelities}
    unknown = sorted(p for p, s in names.items() if s not in study_fidelities)
    if unknown:
        raise ValueError(f"fidelity(ies) {unknown} of the CSV are not in study {study['id']} "
                         f"(it has {sorted(study_fidelities)}); map them with --fidelity CSV_NAME=STUDY_NAME")
    notes = []
    for f in pool.fidelities:
        cost = study_fidelities[names[f.name]].get("cost")
        if cost is not None and not math.isclose(cost, f.cost, rel_tol=1e-6):
            notes.append(f"fidelity {f.name!r} costs {f.cost:g} in the CSV but {names[f.name]!r} costs {cost:g} in "
                         "the study: trials take the study's cost (imported runs do not count against the budget)")
    if objective.get("kind") == "metric" and objective.get("name") != OBJECTIVE_METRIC:
        raise ValueError(f"study {study['id']}'s objective is the metric {objective.get('name')!r}, which the CSV does "
                         f"not have (its objective column is recorded as the metric {OBJECTIVE_METRIC!r})")
    single = None if losses else single_loss_domain(objective, domains)
    if not losses and objective.get("kind") == "metric":
        raise ValueError("a study with a metric objective needs loss_<domain> columns: every result must carry at "
                         "least one per-domain loss (the CSV's objective is recorded as the metric 'objective')")
    if not losses and single is None:
        raise ValueError(
            "the CSV has no loss_<domain> columns, so its objective can only be imported into a study whose "
            "objective is one domain's loss, e.g. {\"kind\": \"domain_loss\", \"domain\": \"<the domain the "
            f"objective measures>\"}}; study {study['id']}'s objective is {objective}. Add loss_<domain> columns "
            "or create the study with such an objective")
    needed = required_losses(objective, domains)
    bodies, mismatched = [], 0
    for j, f in enumerate(pool.fidelities):
        for i, mixture_id in enumerate(pool.mixture_ids):
            value = float(pool.objectives[i, j])
            if math.isnan(value):
                continue
            metrics = {OBJECTIVE_METRIC: value}
            if losses:
                row = dict(losses.get((mixture_id, f.name), {}))
                stray = sorted(set(row) - set(domains))
                if stray:
                    raise ValueError(f"loss columns for domain(s) {stray} that study {study['id']} lacks")
                missing = [d for d in needed if d not in row]
                if missing:
                    raise ValueError(f"mixture {mixture_id!r} at fidelity {f.name!r}: no loss for {missing}, "
                                     "which the study's objective needs")
                computed = objective_value(objective, row, metrics)
                mismatched += not math.isclose(computed, value, rel_tol=1e-6, abs_tol=1e-9)
            else:
                domain, coefficient = single
                row = {domain: value / coefficient}
                computed = objective_value(objective, row, metrics)
                if not math.isclose(computed, value, rel_tol=1e-9, abs_tol=1e-12):  # a bug, not bad input
                    raise AssertionError(f"objective {computed} != {value} for {mixture_id!r}")
            bodies.append({
                "mixture": {d: float(w) for d, w in zip(pool.domains, pool.weights[i])},
                "fidelity": names[f.name],
                "result": {"losses": row, "metrics": metrics},
            })
    if mismatched:
        notes.append(f"{mismatched} run(s): the study's objective computed from the loss columns differs from the "
                     "CSV's objective column; the study uses its own (the CSV's is kept as metric 'objective')")
    return bodies, notes


def run_key(fidelity: str, mixture: Mapping[str, float], objective: float | None) -> tuple:
    """What makes an imported run the same run (for skipping re-imports)."""
    return (fidelity, tuple(sorted((d, round(float(w), 9)) for d, w in mixture.items())),
            None if objective is None else round(float(objective), 9))


def _parse_map(pairs: Sequence[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        source, sep, target = pair.partition("=")
        if not sep or not source or not target:
            fail(f"expected CSV_NAME=STUDY_NAME, got {pair!r}", "--fidelity")
        out[source] = target
    return out


@app.command("import")
def import_runs(
    file: Path = typer.Argument(..., exists=True, dir_okay=False, readable=True,
                                help="pool CSV: mixture_id,fidelity,cost,objective,w_<domain>...[,loss_<domain>...]"),
    study: int = typer.Option(..., "--study", help="the study to warm-start (draft, running or paused)"),
    fidelity: list[str] = typer.Option([], "--fidelity", help="rename a CSV fidelity: CSV_NAME=STUDY_NAME (repeatable)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="check everything against the study, import nothing"),
    url: str = url_option(),
    token: str = token_option("write"),
) -> None:
    """Import earlier runs into a study as completed trials (warm start).

    Create the study as a draft, import, then start it: its strategy sees the runs from its
    first proposal on. Imported runs do not count as spent budget."""
    from tqdm import tqdm

    try:
        pool, losses = read_runs(file)
    except ValueError as e:
        fail(str(e), "FILE")
    with connect(url, token) as api:
        study_doc = api.get_study(study)
        try:
            bodies, notes = plan_import(pool, losses, study_doc, _parse_map(fidelity))
        except ValueError as e:
            fail(str(e), "FILE")
        for note in notes:
            typer.echo(f"note: {note}", err=True)
        done = Counter(
            run_key(t["fidelity"], t["mixture"], ((t.get("result") or {}).get("metrics") or {}).get(OBJECTIVE_METRIC))
            for t in api.iter_trials(study, state="completed") if (t.get("strategy_meta") or {}).get("imported")
        )
        todo = []
        for body in bodies:
            key = run_key(body["fidelity"], body["mixture"], body["result"]["metrics"][OBJECTIVE_METRIC])
            if done[key] > 0:
                done[key] -= 1
            else:
                todo.append(body)
        skipped = len(bodies) - len(todo)
        per_fidelity = Counter(b["fidelity"] for b in todo)
        summary = ", ".join(f"{n} at {f}" for f, n in per_fidelity.items()) or "nothing new"
        if dry_run:
            typer.echo(f"would import {len(todo)} run(s) into study {study} ({summary}); {skipped} already there")
            return
        for body in tqdm(todo, desc=f"import into study {study}", unit="run", disable=None):
            api.create_trial(study, body["mixture"], body["fidelity"], body["result"])
        state = api.get_study(study)["state"]
    typer.echo(f"imported {len(todo)} run(s) into study {study} ({summary}); {skipped} already there")
    if state == "draft":
        typer.echo(f"study {study} is a draft: start it (POST /api/v1/studies/{study}/start) to search on", err=True)
