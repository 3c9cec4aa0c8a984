"""Aioli against stratified (uniform) sampling on the demo corpus, paired over seeds.

Every method trains the same proxy for the same number of optimizer steps (equal token budgets;
Aioli's LearnParams steps count toward its budget) with the same seeds: the seed fixes the model's
initialisation and each domain's window order, so two methods with one seed differ only in which
domain each example is drawn from. Methods:

* ``stratified``        the uniform mixture for the whole run.
* ``aioli``             :class:`service.strategies.AioliStrategy` with its defaults, driven
                        in-process segment by segment (the strategy is pure; the server does the
                        same over HTTP).
* ``aioli-restricted``  the "restricted" variant: the first ``--prior-fraction`` of the steps on
                        a prior mixture, then Aioli. The prior is ``--prior-mixture``, or the
                        recommendation of a RegMix or ADMIRE study read from a server
                        (``--prior-from-study ID --url URL``), restricted to the setting's domains.
* ``aioli-eta0``        a control: Aioli's schedule with ``eta = 1e-9``, so its training segments
                        stay uniform; it differs from ``stratified`` only by the LearnParams
                        segments, and from ``aioli`` only by the mixture Aioli chose.
* ``prior``             a control for ``aioli-restricted``: its prior mixture for the whole run
                        (no Aioli), which tells the prior's share of the restricted variant's gain
                        from Aioli's.

**Settings** (``--settings``): ``k5`` all five demo domains; ``k3`` code, dialogue and prose;
``k2`` code and dialogue (the paper's 3- and 2-domain rows: arXiv, Books, StackExchange).

**Held-out evaluation.** Aioli steers on the per-domain validation losses its segments report, so
they are not a fair score for it. Each domain's validation tokens are split
(``TrainConfig.test_fraction``): the head is the *steering* split, the tail the *test* split,
evaluated once at the end of every run on all its windows. The score is the average per-domain
test perplexity ``mean_i exp(L_i)``; nothing was chosen by looking at it. Per method and setting
the summary gives the paired difference to ``stratified`` per seed with a 95% t-interval, in
perplexity and in % of stratified's perplexity.

**Run length.** Aioli runs with the strategy's defaults (:func:`service.strategies.aioli.
default_settings`), its warm-up being the trainer's (5% of the steps, at most 200). When the run is
too short for ``ROUNDS`` default rounds after the warm-up, :func:`scaled_aioli_params` shortens
the rounds and LearnParams segments, keeping the defaults' LearnParams share and sweeps. Aioli
trains on its initial mixture up to the strategy's ``learn_start`` (a quarter of the run by
default) and fits its rounds into the rest.

    .venv/bin/mixopt bench aioli --settings k5,k3,k2 --seeds 10 --steps 3000 --jobs 2
    .venv/bin/python benchmarks/aioli_vs_stratified.py ...          # the same

Writes ``--out``/aioli_vs_stratified.json (settings, every run with its segments and losses, the
summaries), .md (the tables), aioli_paired_ci.png (paired differences with their intervals) and
aioli_mixture.png (the mixture over the steps of one Aioli run).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from proxy_models import SegmentSpec, TrainConfig, ensure_demo_corpus, prepare_corpus, read_demo_manifest, train_proxy  # noqa: E402,E501
from service.strategies import Domain, Fidelity, MixtureSpace, SearchSpace, SegmentRecord, TrialRecord  # noqa: E402
from service.strategies.aioli import (  # noqa: E402
    MAX_LEARN_FRACTION,
    AioliStrategy,
    estimate_interactions,
    normalize_interactions,
    summarize_run,
)

METHODS = ("stratified", "aioli", "aioli-restricted", "aioli-eta0", "prior")
ETA_OFF = 1e-9
"""``eta`` of the ``aioli-eta0`` control: ``exp(eta * c)`` is 1 up to 1e-9, the mixture stays uniform."""
ROUNDS = 8
"""Fewest rounds after the warm-up: shorter runs get proportionally shorter rounds."""
SETTINGS: dict[str, tuple[str, ...] | None] = {
    "k5": None,  # every domain of the corpus
    "k3": ("code", "dialogue", "prose"),
    "k2": ("code", "dialogue"),
}
"""Domain subsets by setting name (``None``: all)."""


@dataclasses.dataclass
class BenchConfig:
    """One benchmark's settings (every method and seed shares them).

    Args:
        model: proxy preset.
        steps: optimizer steps of every run (tokens = ``steps * batch_size * seq_len``).
        batch_size, seq_len: sequences per step and tokens per sequence.
        eval_tokens: steering-split tokens per domain in each evaluation during a run.
        val_fraction: share of each domain held out (steering + test).
        test_fraction: share of the held-out tokens that form the test split.
        vocab_size: the demo corpus' BPE.
        threads: torch threads per run.
        device: the trainer's device (``cpu``, ``cuda``, ``auto``).
        lr: peak learning rate (``None``: the preset's).
        aioli: AioliParams overrides over :func:`scaled_aioli_params`.
        prior_fraction: restricted variant: the share of the steps on ``prior_mixture``.
        prior_mixture: restricted variant: the mixture of those steps (``None``: uniform).
    """

    model: str = "llama-tiny"
    steps: int = 1000
    batch_size: int = 16
    seq_len: int = 128
    eval_tokens: int = 4096
    val_fraction: float = 0.1
    test_fraction: float = 0.5
    vocab_size: int = 8192
    threads: int = 1
    device: str = "cpu"
    lr: float | None = None
    aioli: dict[str, Any] = dataclasses.field(default_factory=dict)
    prior_fraction: float = 0.5
    prior_mixture: dict[str, float] | None = None

    @property
    def tokens(self) -> int:
        return self.steps * self.batch_size * self.seq_len

    def train_config(self, seed: int, eval_every: int = 0) -> TrainConfig:
        return TrainConfig(
            model=self.model, tokens=self.tokens, batch_size=self.batch_size, seq_len=self.seq_len, lr=self.lr,
            eval_tokens=self.eval_tokens, val_fraction=self.val_fraction, test_fraction=self.test_fraction,
            vocab_size=self.vocab_size, threads=self.threads, device=self.device, seed=seed, eval_every=eval_every,
            progress_every=max(self.steps, 1),
        )


def scaled_aioli_params(k: int, steps: int) -> dict[str, Any]:
    """AioliParams overrides for a run too short for ``ROUNDS`` default rounds after the warm-up
    (``{}`` when they fit). LearnParams segments keep the default ``lp_steps`` (shorter ones drop
    the loss by less than its noise); sweeps go down to 2, rounds to ``(steps - warm-up) / ROUNDS``
    but no shorter than LearnParams' ``MAX_LEARN_FRACTION`` share allows. Only a run too short
    even for that (the smoke test's) gets two rounds of one sweep of shorter segments."""
    space = SearchSpace(MixtureSpace(tuple(Domain(f"d{i}") for i in range(k))),
                        (Fidelity("bench", 1.0, True, params={"steps": steps}),))
    strategy = AioliStrategy(space, {})
    d = strategy.settings
    after = steps - strategy.warmup("bench")
    if after >= ROUNDS * d.update_steps:
        return {}
    update_steps = after // ROUNDS
    lp_rounds = min(d.lp_rounds, max(2, int(MAX_LEARN_FRACTION * update_steps // (k * d.lp_steps))))
    update_steps = max(update_steps, -(-lp_rounds * k * d.lp_steps * 10 // int(MAX_LEARN_FRACTION * 10)))
    if update_steps > after:  # tiny runs: two rounds of one sweep, room left to train
        update_steps = max(after // 2, 2 * k + 1)
        return {"update_steps": update_steps, "lp_rounds": 1, "lp_steps": max((update_steps - 1) // (2 * k), 1)}
    return {"update_steps": update_steps, "lp_rounds": lp_rounds, "lp_steps": d.lp_steps}


def aioli_params(bench: BenchConfig, method: str, domains: Sequence[str]) -> dict[str, Any]:
    """The AioliParams of ``method`` (``aioli``, ``aioli-restricted`` or ``aioli-eta0``)."""
    params = {**scaled_aioli_params(len(domains), bench.steps), **bench.aioli}
    if method == "aioli-eta0":
        params["eta"] = ETA_OFF
    if method == "aioli-restricted":
        params["prior_steps"] = int(round(bench.prior_fraction * bench.steps))
        params["prior_mixture"] = restrict(bench.prior_mixture, domains)
    return params


def restrict(mixture: Mapping[str, float] | None, domains: Sequence[str]) -> dict[str, float]:
    """``mixture`` on ``domains`` only, renormalised (uniform when ``None``).

    Raises:
        ValueError: when it gives none of ``domains`` any weight.
    """
    if mixture is None:
        return {d: 1.0 / len(domains) for d in domains}
    total = sum(mixture.get(d, 0.0) for d in domains)
    if total <= 0:
        raise ValueError(f"prior_mixture: no weight on the setting's domains {list(domains)}")
    return {d: mixture.get(d, 0.0) / total for d in domains}


def parse_studies(text: str, settings: Sequence[str]) -> dict[str, int]:
    """``--prior-from-study``: ``"ID"`` (one study for every setting) or ``"k5=ID,k3=ID"`` (one per
    setting, every one of ``settings`` named) as ``{setting: study id}``.

    Raises:
        ValueError: for an id that is not an integer, an unknown setting or a setting left out.
    """
    try:
        if "=" not in text:
            return {name: int(text) for name in settings}
        pairs = dict(item.split("=", 1) for item in text.split(",") if item.strip())
        studies = {name.strip(): int(study) for name, study in pairs.items()}
    except ValueError:
        raise ValueError(f"expected ID or SETTING=ID,...; got {text!r}") from None
    unknown, missing = sorted(set(studies) - set(settings)), [n for n in settings if n not in studies]
    if unknown or missing:
        raise ValueError(f"settings {', '.join(settings)} each need a study; unknown {unknown}, missing {missing}")
    return studies


def bench_corpus(corpus_dir: Path | None, cache_dir: Path) -> Path:
    """``corpus_dir``, or the demo corpus under ``cache_dir`` (built if missing) for ``None``."""
    if corpus_dir is not None:
        return corpus_dir
    ensure_demo_corpus(cache_dir / "demo_corpus")
    return cache_dir / "demo_corpus"


def subset_corpus(corpus_dir: str | Path, root: str | Path, domains: Sequence[str] | None) -> Path:
    """A corpus directory holding only ``domains`` of ``corpus_dir`` (symbolic links under
    ``root``), or ``corpus_dir`` itself for ``None``."""
    corpus_dir = Path(corpus_dir)
    if domains is None:
        return corpus_dir
    files = {f.stem: f for f in corpus_dir.iterdir() if not f.name.startswith(".")}
    missing = [d for d in domains if d not in files]
    if missing:
        raise ValueError(f"settings: the corpus {corpus_dir} has no domain {missing}")
    out = Path(root) / f"corpus-{'-'.join(domains)}"
    out.mkdir(parents=True, exist_ok=True)
    for d in domains:
        link = out / files[d].name
        if not link.exists():
            link.symlink_to(files[d].resolve())
    return out


def search_space(bench: BenchConfig, domains: Sequence[str]) -> SearchSpace:
    """The one-fidelity space of a benchmark run (its steps fix Aioli's budget)."""
    fidelity = Fidelity("bench", cost=1.0, target=True, tokens=bench.tokens, model=bench.model,
                        params={"batch_size": bench.batch_size, "seq_len": bench.seq_len})
    return SearchSpace(MixtureSpace(tuple(Domain(d) for d in domains)), (fidelity,))


class AioliSource:
    """A ``proxy_models`` segment source that asks :meth:`AioliStrategy.next_segment` at every
    boundary and keeps the record the server would (``records``: every segment with its losses)."""

    def __init__(self, strategy: AioliStrategy, trial: TrialRecord):
        self.strategy, self.trial = strategy, trial
        self.names = strategy.space.mixture.names
        self.records: list[SegmentRecord] = []

    def __call__(self, losses: dict[str, float] | None) -> SegmentSpec | None:
        if self.records:
            last = self.records[-1]
            self.records[-1] = SegmentRecord(last.index, last.segment, losses)
        segment = self.strategy.next_segment(self.trial, self.records)
        if segment is None:
            return None
        self.records.append(SegmentRecord(len(self.records), segment, None))
        return SegmentSpec(dict(zip(self.names, segment.weights.tolist())), segment.steps, segment.evaluate_after)


def _avg_ppl(losses: Mapping[str, float]) -> float:
    """The score: ``mean_i exp(L_i)`` over the domains."""
    return float(np.mean([math.exp(v) for v in losses.values()]))


def run_one(bench: BenchConfig, corpus_dir: str, cache_dir: str, method: str, seed: int) -> dict[str, Any]:
    """One proxy run of ``method`` with ``seed``; its losses, token shares, timings and (Aioli) segments."""
    corpus = prepare_corpus(corpus_dir, cache_dir, vocab_size=bench.vocab_size, val_fraction=bench.val_fraction)
    domains = list(corpus.domains)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    record: dict[str, Any] = {"method": method, "seed": seed}
    if method in ("stratified", "prior"):
        aioli = AioliStrategy(search_space(bench, domains), aioli_params(bench, "aioli", domains))
        cfg = bench.train_config(seed, eval_every=aioli.settings.update_steps)  # the curve at Aioli's round length
        mixture = restrict(bench.prior_mixture if method == "prior" else None, domains)
        if method == "prior":
            record["params"] = {"prior_mixture": mixture}
        result = train_proxy(cfg, corpus, mixture=mixture)
    elif method in ("aioli", "aioli-restricted", "aioli-eta0"):
        params = aioli_params(bench, method, domains)
        strategy = AioliStrategy(search_space(bench, domains), params, seed=seed)
        strategy.check()
        trial = TrialRecord(trial_id=1, weights=strategy.prior, fidelity="bench", state="pending", meta={"run": 0})
        source = AioliSource(strategy, trial)
        result = train_proxy(bench.train_config(seed), corpus, segments=source)
        starts = np.concatenate([[0], np.cumsum([r.segment.steps for r in source.records])])
        summary = summarize_run(source.records, len(domains))
        record.update(
            params=params,
            resolved=strategy.params.model_dump(mode="json"),
            settings={**dataclasses.asdict(strategy.settings), "warmup": strategy.warmup("bench"),
                      "learning_start": strategy.learning_start("bench")},
            average_mixture=dict(zip(domains, summary["average"].round(6).tolist())),
            final_mixture=dict(zip(domains, summary["final"].round(6).tolist())),
            segments=[
                {"index": r.index, "kind": r.segment.kind, "start": int(starts[i]), "steps": r.segment.steps,
                 "weights": r.segment.weights.round(6).tolist(), "losses": r.losses,
                 **({"round": r.segment.meta.get("round")}),
                 **({"column_sums": r.segment.meta["column_sums"]} if "column_sums" in r.segment.meta else {}),
                 **({"snr": r.segment.meta["snr"]} if "snr" in r.segment.meta else {})}
                for i, r in enumerate(source.records)
            ],
        )
    else:
        raise ValueError(f"methods: unknown method {method!r}; known: {', '.join(METHODS)}")
    record.update(
        domains=domains,
        test_losses=result.test_losses,
        val_losses=result.losses,
        test_avg_ppl=_avg_ppl(result.test_losses),
        val_avg_ppl=_avg_ppl(result.losses),
        tokens=result.tokens,
        steps=result.steps,
        token_shares=result.metrics["token_shares"],
        epochs=result.metrics["epochs"],
        cpu_s=time.process_time() - cpu0,
        wall_s=time.perf_counter() - wall0,
        train_s=result.metrics["train_s"],
        eval_s=result.metrics["eval_s"],
        curve=[{"step": c["step"], "losses": c["losses"]} for c in result.curve],
    )
    return record


def _resume_key(bench: BenchConfig, setting: Sequence[str] | None) -> str:
    """The settings a kept run must share to be reused (``setting``: the setting's domains,
    ``None`` for all). The prior is left out: only the ``aioli-restricted`` and ``prior`` runs
    depend on it, and they carry it in their ``params``."""
    shared = dataclasses.replace(bench, prior_mixture=None, prior_fraction=BenchConfig.prior_fraction)
    return json.dumps({**dataclasses.asdict(shared), "domains": setting}, sort_keys=True)


def resumable_runs(lines: Sequence[str], bench: BenchConfig, setting: Sequence[str] | None) -> list[dict[str, Any]]:
    """The kept runs of a partial file (its first line the settings' key, then one run per line)
    that ``bench`` can reuse: none when the settings differ, no ``aioli-restricted`` or ``prior``
    run made with another prior, and no Aioli run whose parameters, defaults included, differ from
    what this code resolves (a run from before a default changed). A method added to a finished
    benchmark thus runs alone."""
    if not lines or lines[0] != _resume_key(bench, setting):
        return []

    def same_method(run: dict[str, Any]) -> bool:
        if run["method"] == "prior":
            return run.get("params") == json.loads(json.dumps({"prior_mixture": restrict(bench.prior_mixture, run["domains"])}))
        if run["method"] in ("aioli", "aioli-restricted", "aioli-eta0"):
            # every parameter as resolved, defaults included: a run made before a default changed is not reused
            params = aioli_params(bench, run["method"], run["domains"])
            resolved = AioliStrategy(search_space(bench, run["domains"]), params).params.model_dump(mode="json")
            return run.get("params") == json.loads(json.dumps(params)) and run.get("resolved") == resolved
        return True

    return [r for r in (json.loads(line) for line in lines[1:] if line.strip()) if same_method(r)]


def learnparams_diagnostics(run: dict[str, Any]) -> dict[str, Any] | None:
    """What an Aioli run measured in its LearnParams phases (steering-split losses only).

    Per round with LearnParams (``Q``): the mean loss drop a LearnParams segment causes on the
    domain it favours (``own_drop``) and on each other domain (``other_drop``), the normalised
    column sums ``1^T A`` the update uses (``Q x k``), and the Pearson correlation of consecutive
    rounds' column sums around ``1/k`` (``consecutive_corr``, ``Q - 1``): near 0 when the
    estimates are noise rather than a property of the data. ``None`` for a run without segments.
    """
    segs, domains = run.get("segments"), run["domains"]
    rounds = sorted({g["round"] for g in segs or () if g["kind"] == "learn"})
    if not rounds:
        return None
    k = len(domains)
    losses, weights, steps, favoured = [], [], [], []
    for r in rounds:
        idx = [i for i, g in enumerate(segs) if g["kind"] == "learn" and g["round"] == r]
        block = [segs[idx[0] - 1]] + [segs[i] for i in idx]  # L^0 is the previous segment's evaluation
        losses.append([[g["losses"][d] for d in domains] for g in block])
        weights.append([segs[i]["weights"] for i in idx])
        steps.append([segs[i]["steps"] for i in idx])
        favoured.append([int(np.argmax(segs[i]["weights"])) for i in idx])
    loss = np.array(losses)  # Q x (M+1) x k
    drops = loss[:, :-1] - loss[:, 1:]  # Q x M x k
    onehot = np.eye(k)[np.array(favoured)]  # Q x M x k
    a = normalize_interactions(estimate_interactions(loss, np.array(weights), np.array(steps), np.array(favoured),
                                                     run["settings"]["lp_steps"]))
    dev = a.sum(1) - 1.0 / k  # Q x k
    corr = [float(np.corrcoef(dev[q], dev[q + 1])[0, 1]) for q in range(len(dev) - 1)]
    snr = [g["snr"] for g in segs if g["kind"] == "train" and g.get("snr") and g["snr"]["columns"] is not None]
    return {
        "rounds": rounds,
        "snr_drop": [x["drop"] for x in snr],
        "snr_columns": [x["columns"] for x in snr],
        "own_drop": (drops * onehot).sum(2).mean(1).tolist(),
        "other_drop": ((drops * (1 - onehot)).sum(2).mean(1) / (k - 1)).tolist(),
        "column_sums": a.sum(1).round(4).tolist(),
        "consecutive_corr": corr,
    }


def _ragged_mean(rows: Sequence[Sequence[float]]) -> list[float]:
    """Column means of rows of different lengths (each column over the rows that reach it)."""
    table = np.full((len(rows), max(map(len, rows))), np.nan)
    for i, row in enumerate(rows):
        table[i, : len(row)] = row
    return np.nanmean(table, 0).tolist()


def _median(values: Sequence[float]) -> float | None:
    return float(np.median(values)) if len(values) else None


def paired_ci(diff: Sequence[float], level: float = 0.95) -> dict[str, Any]:
    """Mean, std, t statistic and the ``level`` t-interval ``ci`` of paired differences (``n - 1``
    degrees of freedom; ``ci`` is ``None`` for fewer than 2)."""
    from scipy import stats

    d = np.asarray(diff, dtype=float)
    out: dict[str, Any] = _mean_std(d)
    if len(d) < 2:
        return {**out, "t": None, "ci": None}
    se = out["std"] / math.sqrt(len(d))
    half = float(stats.t.ppf(0.5 + level / 2, len(d) - 1)) * se
    return {**out, "t": out["mean"] / se if se > 0 else None, "ci": [out["mean"] - half, out["mean"] + half]}


def _mean_std(values: Sequence[float]) -> dict[str, float]:
    v = np.asarray(values, dtype=float)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0}


def summarize(runs: Sequence[dict[str, Any]], methods: Sequence[str], seeds: Sequence[int]) -> dict[str, Any]:
    """Per method: the score per seed, mean and std; per-domain test perplexities; and the paired
    difference to ``stratified`` per seed (negative: the method is better)."""
    by = {(r["method"], r["seed"]): r for r in runs}
    domains = runs[0]["domains"]
    out: dict[str, Any] = {"methods": {}, "paired": {}}
    for m in methods:
        mine = [by[(m, s)] for s in seeds]
        scores = [r["test_avg_ppl"] for r in mine]
        entry = {
            "test_avg_ppl": scores,
            **_mean_std(scores),
            "val_avg_ppl": _mean_std([r["val_avg_ppl"] for r in mine]),
            "test_ppl": {d: _mean_std([math.exp(r["test_losses"][d]) for r in mine]) for d in domains},
            "token_shares": {d: float(np.mean([r["token_shares"][d] for r in mine])) for d in domains},
            "tokens": sorted({r["tokens"] for r in mine}),
            "cpu_s": _mean_std([r["cpu_s"] for r in mine]),
        }
        if "average_mixture" in mine[0]:
            entry["average_mixture"] = {d: float(np.mean([r["average_mixture"][d] for r in mine])) for d in domains}
            diag = [learnparams_diagnostics(r) for r in mine]
            if all(x is not None for x in diag):
                entry["learnparams"] = {  # per round, over the runs that measured in it (stop_level)
                    "rounds": _mean_std([len(x["rounds"]) for x in diag]),
                    "own_drop": _ragged_mean([x["own_drop"] for x in diag]),
                    "other_drop": _ragged_mean([x["other_drop"] for x in diag]),
                    "consecutive_corr": [float(np.mean(x["consecutive_corr"])) if x["consecutive_corr"] else None
                                         for x in diag],
                    "snr_drop": _median([v for x in diag for v in x["snr_drop"]]),
                    "snr_columns": _median([v for x in diag for v in x["snr_columns"]]),
                }
        out["methods"][m] = entry
    def paired(m: str, base: str) -> dict[str, Any]:
        ref = np.array(out["methods"][base]["test_avg_ppl"])
        diff = np.array(out["methods"][m]["test_avg_ppl"]) - ref
        stats = paired_ci(diff)
        return {"diff": diff.tolist(), **stats, "pct": paired_ci(100 * diff / ref),
                "wins": int((diff < 0).sum()), "n": len(diff)}

    if "stratified" in methods:
        out["paired"] = {m: paired(m, "stratified") for m in methods if m != "stratified"}
    if "aioli" in methods and "aioli-eta0" in methods:  # the re-weighting alone, LearnParams held equal
        out["reweighting"] = paired("aioli", "aioli-eta0")
    if "aioli-restricted" in methods and "prior" in methods:  # Aioli's part of the restricted variant's result
        out["over_prior"] = paired("aioli-restricted", "prior")
    return out


def run_benchmark(
    bench: BenchConfig,
    corpus_dir: str | Path,
    cache_dir: str | Path,
    methods: Sequence[str] = METHODS,
    seeds: Sequence[int] = (0, 1, 2),
    jobs: int = 1,
    progress: Callable[[dict[str, Any]], None] | None = None,
    done: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    """Every method with every seed (``jobs`` runs at once, in spawned processes when > 1);
    ``done``: runs of the same configuration already made (reused, e.g. after an interruption).

    Returns:
        ``{"config", "methods", "seeds", "runs", "summary", "wall_s"}``.

    Raises:
        ValueError: for an unknown method, or when the methods did not spend the same tokens.
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"methods: unknown {unknown}; known: {', '.join(METHODS)}")
    corpus_dir, cache_dir = str(corpus_dir), str(cache_dir)
    prepare_corpus(corpus_dir, cache_dir, vocab_size=bench.vocab_size, val_fraction=bench.val_fraction)  # once
    tasks = [(m, s) for s in seeds for m in methods]  # seed-major: a partial result stays paired
    t0 = time.perf_counter()
    runs = [r for r in done if (r["method"], r["seed"]) in tasks]
    todo = [t for t in tasks if t not in {(r["method"], r["seed"]) for r in runs}]
    if jobs <= 1:
        for m, s in todo:
            runs.append(run_one(bench, corpus_dir, cache_dir, m, s))
            if progress:
                progress(runs[-1])
    else:
        import multiprocessing

        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(run_one, bench, corpus_dir, cache_dir, m, s) for m, s in todo]
            for f in as_completed(futures):
                runs.append(f.result())
                if progress:
                    progress(runs[-1])
    runs.sort(key=lambda r: (tasks.index((r["method"], r["seed"]))))
    spent = {(r["method"], r["seed"]): r["tokens"] for r in runs}
    if len(set(spent.values())) != 1:
        raise ValueError(f"token budgets differ between runs: {spent}")
    return {
        "config": {**dataclasses.asdict(bench), "tokens": bench.tokens,
                   "aioli_params": aioli_params(bench, "aioli", runs[0]["domains"])},
        "methods": list(methods),
        "seeds": list(seeds),
        "runs": runs,
        "summary": summarize(runs, methods, seeds),
        "wall_s": time.perf_counter() - t0,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
    }


NO_HARM_PCT = 0.5
"""The no-harm bar: the upper end of the 95% interval of a method's paired difference to
stratified, in % of stratified's perplexity, is at most this."""


def format_overview(results: dict[str, dict[str, Any]]) -> str:
    """Markdown, one row per setting and method: the paired difference to stratified in % with its
    95% interval, whether it clears the no-harm bar, whether it wins (upper end below 0), and the
    paired differences that isolate Aioli's own part (``aioli − aioli-eta0``: the re-weighting;
    ``aioli-restricted − prior``: Aioli after the prior against the prior alone)."""
    def pct(x: dict[str, Any]) -> str:
        lo, hi = x["ci"] or (float("nan"), float("nan"))
        return f"{x['mean']:+.2f}% [{lo:+.2f}, {hi:+.2f}]"

    lines = ["| setting | comparison | Δ, % of the baseline's ppl [95% CI] | no harm (upper ≤ +" f"{NO_HARM_PCT:g}%) "
             "| wins (upper < 0) | better in |", "|---|---|---|---|---|---|"]
    for name, result in results.items():
        s = result["summary"]
        rows = [(f"{m} − stratified", p) for m, p in s["paired"].items()]
        rows += [("aioli − aioli-eta0", s["reweighting"])] if "reweighting" in s else []
        rows += [("aioli-restricted − prior", s["over_prior"])] if "over_prior" in s else []
        for label, p in rows:
            hi = (p["pct"]["ci"] or [None, None])[1]
            harm = "–" if hi is None else ("yes" if hi <= NO_HARM_PCT else "**no**")
            wins = "–" if hi is None else ("**yes**" if hi < 0 else "no")
            lines.append(f"| {name} | {label} | {pct(p['pct'])} | {harm} | {wins} | {p['wins']}/{p['n']} |")
    return "\n".join(lines)


def format_table(result: dict[str, Any]) -> str:
    """Markdown: the score per seed, mean ± std and the paired difference; then per-domain test
    perplexities and the mixtures."""
    s, seeds = result["summary"], result["seeds"]
    domains = result["runs"][0]["domains"]
    def ci(x: dict[str, Any], unit: str = "") -> str:
        if x["ci"] is None:
            return f"{x['mean']:+.3f}{unit}"
        return f"{x['mean']:+.3f}{unit} [{x['ci'][0]:+.3f}, {x['ci'][1]:+.3f}]"

    lines = [
        "| method | test avg ppl, mean ± std | Δ vs stratified, ppl [95% CI] | Δ, % of stratified [95% CI] "
        "| wins | seeds | tokens/run | CPU s/run |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for m, e in s["methods"].items():
        p = s["paired"].get(m)
        delta, pct = (ci(p), ci(p["pct"], "%")) if p else ("–", "–")
        wins = f"{p['wins']}/{p['n']}" if p else "–"
        lines.append(f"| {m} | {e['mean']:.3f} ± {e['std']:.3f} | {delta} | {pct} | {wins} | {len(seeds)} "
                     f"| {e['tokens'][0]:,} | {e['cpu_s']['mean']:.0f} |")
    lines += ["", "| method | " + " | ".join(f"seed {x}" for x in seeds) + " |", "|---|" + "---|" * len(seeds)]
    for m, e in s["methods"].items():
        lines.append(f"| {m} | " + " | ".join(f"{v:.3f}" for v in e["test_avg_ppl"]) + " |")
    if "reweighting" in s:
        r = s["reweighting"]
        lines += ["", f"aioli − aioli-eta0 (the re-weighting alone, same LearnParams schedule; paired): "
                      f"{ci(r)} ppl, aioli better in {r['wins']}/{r['n']} seeds"]
    if "over_prior" in s:
        r = s["over_prior"]
        lines += ["", f"aioli-restricted − prior (Aioli after the prior against the prior alone; paired): "
                      f"{ci(r)} ppl ({ci(r['pct'], '%')}), aioli-restricted better in {r['wins']}/{r['n']} seeds"]
    lines += ["", "| method | " + " | ".join(domains) + " | steering-split avg ppl |",
              "|---|" + "---|" * len(domains) + "---|"]
    for m, e in s["methods"].items():
        lines.append(f"| {m} (test ppl) | " + " | ".join(f"{e['test_ppl'][d]['mean']:.2f}" for d in domains)
                     + f" | {e['val_avg_ppl']['mean']:.3f} |")
    for m, e in s["methods"].items():
        lines.append(f"| {m} (token shares) | " + " | ".join(f"{e['token_shares'][d]:.3f}" for d in domains) + " | |")
    for m, e in s["methods"].items():
        if "average_mixture" in e:
            lines.append(f"| {m} (Aioli's mixture, train-segment average) | "
                         + " | ".join(f"{e['average_mixture'][d]:.3f}" for d in domains) + " | |")
    diag = {m: e["learnparams"] for m, e in s["methods"].items() if "learnparams" in e}
    if diag:
        lines += ["", "LearnParams diagnostics (steering split; loss drop per LearnParams segment, mean over seeds):", "",
                  "| method | rounds measured per run, mean ± std | own-domain drop: first round / later rounds | "
                  "other-domain drop: first / later | signal/noise: drop · 1ᵀA spread (median) | "
                  "corr. of 1ᵀA between consecutive rounds (per seed) |",
                  "|---|---|---|---|---|---|"]

        def first_later(v: list[float]) -> str:
            return f"{v[0]:+.4f} / {np.mean(v[1:]):+.4f}" if len(v) > 1 else f"{v[0]:+.4f} / –"

        for m, x in diag.items():
            corr = ", ".join("–" if c is None else f"{c:+.2f}" for c in x["consecutive_corr"])
            snr = " · ".join("–" if v is None else f"{v:.2f}" for v in (x.get("snr_drop"), x.get("snr_columns")))
            rounds = x.get("rounds")
            measured = "–" if rounds is None else f"{rounds['mean']:.1f} ± {rounds['std']:.1f}"
            lines.append(f"| {m} | {measured} | {first_later(x['own_drop'])} | {first_later(x['other_drop'])} | {snr} | {corr} |")
    return "\n".join(lines)


def plot_mixture(run: dict[str, Any], path: str | Path) -> None:
    """Two panels for one Aioli run: the mixture trained at every step (LearnParams segments
    included) and the mixture Aioli chose for each round's training segment."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    domains = run["domains"]
    segs = [g for g in run["segments"] if g["steps"] > 0]
    edges = np.array([g["start"] for g in segs] + [segs[-1]["start"] + segs[-1]["steps"]])
    weights = np.array([g["weights"] for g in segs])  # n x k
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 6.5), sharex=True)
    x = np.repeat(edges, 2)[1:-1]
    y = np.repeat(weights, 2, axis=0)
    top.stackplot(x, y.T, labels=domains, step=None, alpha=0.85)
    top.set_ylabel("mixture trained")
    top.set_ylim(0, 1)
    top.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    top.set_title(f"{run['method']}, seed {run['seed']}: proportions over steps "
                  f"(LearnParams: smoothed one-hot segments)")
    trains = [g for g in segs if g["kind"] in ("train", "prior")]
    for d, name in enumerate(domains):  # one flat piece per train segment, NaN-separated
        xs = np.concatenate([[g["start"], g["start"] + g["steps"], np.nan] for g in trains])
        ys = np.concatenate([[g["weights"][d]] * 2 + [np.nan] for g in trains])
        bottom.plot(xs, ys, label=name, lw=2)
    for g in segs:
        if g["kind"] == "learn":
            bottom.axvspan(g["start"], g["start"] + g["steps"], color="0.9", lw=0)
    bottom.axhline(1 / len(domains), color="0.5", ls=":", lw=1)
    bottom.set_ylabel("Aioli's mixture (train segments)")
    bottom.set_xlabel("optimizer step (grey: LearnParams)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_paired(results: Mapping[str, dict[str, Any]], path: str | Path) -> None:
    """Per setting and method: the paired difference to stratified in % of its perplexity, every
    seed as a dot and the mean with its 95% t-interval; the dashed lines mark 0 and +0.5%."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(name, m, p) for name, r in results.items() for m, p in r["summary"].get("paired", {}).items()]
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(rows) + 1.5))
    for y, (name, m, p) in enumerate(rows):
        pct = p["pct"]
        ref = np.array(results[name]["summary"]["methods"]["stratified"]["test_avg_ppl"])
        ax.scatter(100 * np.array(p["diff"]) / ref, np.full(len(ref), y), s=12, color="0.6", zorder=2)
        lo, hi = pct["ci"] if pct["ci"] else (pct["mean"], pct["mean"])
        ax.errorbar(pct["mean"], y, xerr=[[pct["mean"] - lo], [hi - pct["mean"]]], fmt="o", color="C0", capsize=4, zorder=3)
    ax.axvline(0, color="0.3", lw=1)
    ax.axvline(0.5, color="C3", lw=1, ls="--")
    ax.set_yticks(range(len(rows)), [f"{name} {m} (n={p['n']})" for name, m, p in rows])
    ax.invert_yaxis()
    ax.set_xlabel("test avg perplexity vs stratified, % (paired; mean and 95% CI)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="aioli_vs_stratified", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    d = BenchConfig()
    parser.add_argument("--model", default=d.model)
    parser.add_argument("--steps", type=int, default=d.steps, help="optimizer steps per run (all methods)")
    parser.add_argument("--batch-size", type=int, default=d.batch_size)
    parser.add_argument("--seq-len", type=int, default=d.seq_len)
    parser.add_argument("--eval-tokens", type=int, default=d.eval_tokens, help="steering tokens per domain per evaluation")
    parser.add_argument("--val-fraction", type=float, default=d.val_fraction)
    parser.add_argument("--test-fraction", type=float, default=d.test_fraction, help="share of the held-out tokens in the test split")
    parser.add_argument("--vocab-size", type=int, default=d.vocab_size)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--seeds", type=int, default=10, help="seeds 0..N-1, the same for every method")
    parser.add_argument("--methods", default="stratified,aioli,aioli-eta0", help=f"comma-separated, of {', '.join(METHODS)}")
    parser.add_argument("--aioli", default="{}", help="JSON AioliParams over the scaled defaults")
    parser.add_argument("--prior-fraction", type=float, default=d.prior_fraction, help="aioli-restricted: share of steps on the prior")
    parser.add_argument("--prior-mixture", default=None, help="aioli-restricted: JSON mixture (default uniform)")
    parser.add_argument("--prior-from-study", default=None, help="aioli-restricted: the prior is this study's "
                        "recommendation (e.g. a RegMix or ADMIRE study), read from the server at --url: an id for "
                        "every setting, or one per setting (k5=ID,k3=ID,...)")
    parser.add_argument("--url", default=None, help="server of --prior-from-study (default $MIXOPT_URL or http://127.0.0.1:8000)")
    parser.add_argument("--settings", default="k5", help=f"comma-separated domain settings, of {', '.join(SETTINGS)}")
    parser.add_argument("--jobs", type=int, default=2, help="runs at once (separate processes)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--device", default=d.device, help="trainer device: cpu, cuda or auto")
    parser.add_argument("--corpus", type=Path, default=None, help="corpus dir (default: the demo corpus, built if missing)")
    parser.add_argument("--cache-dir", type=Path, default=Path("artifacts/cache"))
    parser.add_argument("--out", type=Path, default=Path("artifacts/bench/aioli"))
    parser.add_argument("--resume", action="store_true", help="reuse the finished runs of an interrupted benchmark "
                        "with the same settings (from --out)")
    args = parser.parse_args(argv)

    try:
        aioli = json.loads(args.aioli)
        prior = json.loads(args.prior_mixture) if args.prior_mixture else None
    except json.JSONDecodeError as exc:
        parser.error(f"--aioli/--prior-mixture: bad JSON: {exc}")
    names = [x.strip() for x in args.settings.split(",") if x.strip()]
    if not names or any(x not in SETTINGS for x in names):
        parser.error(f"--settings: unknown {[x for x in names if x not in SETTINGS]}; known: {', '.join(SETTINGS)}")
    priors = {name: prior for name in names}
    if args.prior_from_study is not None:
        if prior is not None:
            parser.error("--prior-from-study: give it or --prior-mixture, not both")
        try:
            studies = parse_studies(args.prior_from_study, names)
        except ValueError as exc:
            parser.error(f"--prior-from-study: {exc}")
        from workers.client import MixoptClient

        with MixoptClient(args.url) as client:
            priors = {name: client.recommendation(study)["mixture"] for name, study in studies.items()}
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if any(m not in METHODS for m in methods):
        parser.error(f"--methods: unknown {[m for m in methods if m not in METHODS]}; known: {', '.join(METHODS)}")
    bench = BenchConfig(model=args.model, steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len,
                        eval_tokens=args.eval_tokens, val_fraction=args.val_fraction, test_fraction=args.test_fraction,
                        vocab_size=args.vocab_size, threads=args.threads, device=args.device, lr=args.lr, aioli=aioli,
                        prior_fraction=args.prior_fraction, prior_mixture=prior)
    corpus_dir = bench_corpus(args.corpus, args.cache_dir)

    from tqdm import tqdm

    args.out.mkdir(parents=True, exist_ok=True)
    seeds = list(range(args.seeds))
    t0 = time.perf_counter()
    results: dict[str, Any] = {}
    for name in names:
        domains = SETTINGS[name]
        setting_bench = dataclasses.replace(bench, prior_mixture=priors[name])
        corpus = subset_corpus(corpus_dir, args.cache_dir, domains)
        # Every finished run is appended to a partial file; --resume reuses those of the same settings.
        partial = args.out / f"aioli_vs_stratified.{name}.partial.jsonl"
        done = []
        if args.resume and partial.exists():
            done = resumable_runs(partial.read_text().splitlines(), setting_bench, domains)
        # the file restarts with the reusable runs only (none, or no run of another prior)
        partial.write_text("\n".join([_resume_key(setting_bench, domains), *map(json.dumps, done)]) + "\n")
        with tqdm(total=len(seeds) * len(methods), desc=f"{name}: proxy runs") as bar:
            def progress(run: dict[str, Any]) -> None:
                bar.update()
                with partial.open("a") as f:
                    f.write(json.dumps(run) + "\n")
                bar.write(f"{name} {run['method']:>16} seed {run['seed']}: test avg ppl {run['test_avg_ppl']:.3f} "
                          f"(steering {run['val_avg_ppl']:.3f}), {run['cpu_s']:.0f} CPU s, {run['wall_s']:.0f} s")

            bar.update(sum((r["method"], r["seed"]) in {(m, s) for m in methods for s in seeds} for r in done))
            results[name] = run_benchmark(setting_bench, corpus, args.cache_dir, methods, seeds, jobs=args.jobs,
                                          progress=progress, done=done)
    result = {"settings": results, "wall_s": time.perf_counter() - t0,
              "corpus": read_demo_manifest(corpus_dir),  # the demo corpus's fingerprint; None for another corpus
              "command": "mixopt bench aioli " + " ".join(argv if argv is not None else sys.argv[1:])}
    table = "\n\n".join([format_overview(results), *(f"### {name}: {', '.join(r['runs'][0]['domains'])}\n\n{format_table(r)}"
                                                     for name, r in results.items())])
    print(table)
    (args.out / "aioli_vs_stratified.json").write_text(json.dumps(result, indent=1))
    (args.out / "aioli_vs_stratified.md").write_text(table + "\n")
    plot_paired(results, args.out / "aioli_paired_ci.png")
    aioli_runs = [r for res in results.values() for r in res["runs"] if r["method"] == "aioli"]
    aioli_runs = aioli_runs or [r for res in results.values() for r in res["runs"] if "segments" in r]
    if aioli_runs:
        plot_mixture(aioli_runs[0], args.out / "aioli_mixture.png")
    print(f"wrote {args.out}/aioli_vs_stratified.{{json,md}}, aioli_paired_ci.png"
          + (", aioli_mixture.png" if aioli_runs else "") + f" ({result['wall_s']:.0f} s)")
    return result


if __name__ == "__main__":
    main()
