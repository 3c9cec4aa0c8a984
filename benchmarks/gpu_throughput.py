"""Tokens/s per GPU for small proxies: one proxy alone, K proxies batched in one module
(``train_proxies``: stacked weights, batched matmuls) and K processes sharing the device.

A 1M-parameter proxy leaves a large GPU mostly idle; this script measures how much training
several at once recovers. Every figure is total training tokens/s on the device, from the median
time of ``--progress-every``-step intervals after ``--warmup`` steps.

    python benchmarks/gpu_throughput.py --ks 1,4,16,64 --process-ks 4 --steps 300 [--compile]
    python benchmarks/gpu_throughput.py --smoke      # CPU, tiny model, seconds: checks the script

Without the demo corpus's sources (``--corpus`` not given and the demo packages missing), a
synthetic corpus of random tokens is used: throughput does not depend on the text.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing as mp
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from proxy_models import (  # noqa: E402
    PreparedCorpus,
    TrainConfig,
    ensure_demo_corpus,
    get_preset,
    prepare_corpus,
    read_demo_manifest,
    train_proxies,
    train_proxy,
)


def synthetic_corpus(vocab_size: int, domains: int = 5, tokens: int = 2_000_000, seed: int = 0) -> PreparedCorpus:
    """Random-token shards (in memory): ``domains`` domains of ``tokens`` training tokens each."""
    rng = np.random.default_rng(seed)
    names = tuple(f"d{i}" for i in range(domains))
    return PreparedCorpus(
        path=Path("synthetic"), domains=names,
        train={n: rng.integers(1, vocab_size, tokens, dtype=np.uint16) for n in names},
        val={n: rng.integers(1, vocab_size, 65_536, dtype=np.uint16) for n in names},
        vocab_size=vocab_size, eos_id=0, tokenizer_path=Path("synthetic"), fingerprint=f"synthetic-{seed}",
    )


def load_corpus(args) -> PreparedCorpus:
    if args.corpus is None and not args.demo:
        return synthetic_corpus(args.vocab_size)
    corpus_dir = args.corpus or args.cache_dir / "demo_corpus"
    if args.corpus is None:
        ensure_demo_corpus(corpus_dir)
    return prepare_corpus(corpus_dir, args.cache_dir, vocab_size=args.vocab_size)


def _mixtures(corpus: PreparedCorpus, k: int, seed: int) -> list[dict[str, float]]:
    rng = np.random.default_rng(seed)
    return [dict(zip(corpus.domains, rng.dirichlet(np.ones(len(corpus.domains))).tolist())) for _ in range(k)]


def _rate(stamps: list[tuple[int, float]], warmup: int, tokens_per_step: int) -> float:
    """Tokens/s from ``(step, time)`` progress stamps, ignoring stamps up to ``warmup``."""
    kept = [(s, t) for s, t in stamps if s > warmup]
    per_step = [(t1 - t0) / (s1 - s0) for (s0, t0), (s1, t1) in zip(kept, kept[1:])]
    if not per_step:
        raise RuntimeError("too few steps after warm-up: raise --steps or lower --warmup/--progress-every")
    return tokens_per_step / statistics.median(per_step)


def measure_batched(cfg: TrainConfig, corpus: PreparedCorpus, k: int, warmup: int) -> dict:
    stamps: list[tuple[int, float]] = []
    if cfg.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    mixtures = _mixtures(corpus, k, seed=k)
    record = lambda p: stamps.append((p.step, time.perf_counter()))  # noqa: E731
    if k == 1:
        results = [train_proxy(cfg, corpus, mixture=mixtures[0], on_progress=record)]
    else:
        results = train_proxies(cfg, corpus, mixtures, on_progress=record)
    row = dict(
        k=k, mode="single" if k == 1 else "batched",
        tokens_per_s=_rate(stamps, warmup, k * cfg.batch_size * cfg.seq_len),
        wall_s=round(time.perf_counter() - t0, 2),
        final_loss_mean=float(np.mean([np.mean(list(r.losses.values())) for r in results])),
    )
    if cfg.device.startswith("cuda"):
        row["max_memory_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
    row["tokens_per_s_per_proxy"] = row["tokens_per_s"] / k
    return row


def _process_worker(cfg_dict, corpus_args, seed, warmup, barrier, queue):
    cfg = TrainConfig(**cfg_dict)
    corpus = load_corpus(corpus_args)
    mixture = _mixtures(corpus, 1, seed)[0]
    stamps: list[tuple[int, float]] = []
    barrier.wait()
    train_proxy(dataclasses.replace(cfg, seed=seed), corpus, mixture=mixture,
                on_progress=lambda p: stamps.append((p.step, time.perf_counter())))
    queue.put(_rate(stamps, warmup, cfg.batch_size * cfg.seq_len))


def measure_processes(cfg: TrainConfig, args, k: int) -> dict:
    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(k), ctx.Queue()
    procs = [ctx.Process(target=_process_worker, args=(cfg.to_dict(), args, i, args.warmup, barrier, queue))
             for i in range(k)]
    t0 = time.perf_counter()
    for p in procs:
        p.start()
    rates = [queue.get(timeout=args.timeout) for _ in procs]
    for p in procs:
        p.join()
    return dict(k=k, mode="processes", tokens_per_s=float(sum(rates)), tokens_per_s_per_proxy=float(np.mean(rates)),
                wall_s=round(time.perf_counter() - t0, 2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="llama-1m")
    parser.add_argument("--ks", default="1,4,16,64", help="proxies trained at once in one module")
    parser.add_argument("--process-ks", default="4", help="processes sharing the device ('' to skip)")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--progress-every", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--demo", action="store_true", help="use the demo corpus instead of synthetic tokens")
    parser.add_argument("--corpus", type=Path, default=None)
    parser.add_argument("--cache-dir", type=Path, default=Path("artifacts/cache"))
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--smoke", action="store_true", help="CPU, llama-tiny, a few steps")
    parser.add_argument("--out", type=Path, default=Path("artifacts/gpu_throughput.json"))
    args = parser.parse_args()
    if args.smoke:
        args.model, args.device, args.steps, args.warmup, args.progress_every = "llama-tiny", "cpu", 12, 2, 2
        args.ks, args.process_ks, args.batch_size, args.seq_len, args.vocab_size = "1,3", "2", 4, 64, 1024
        args.threads = args.threads or 1

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    corpus = load_corpus(args)
    cfg = TrainConfig(model=args.model, tokens=args.steps * args.batch_size * args.seq_len, batch_size=args.batch_size,
                      seq_len=args.seq_len, device=device, threads=args.threads, compile=args.compile,
                      progress_every=args.progress_every, eval_tokens=args.seq_len * 4, vocab_size=args.vocab_size)
    ks = [int(k) for k in args.ks.split(",") if k]
    process_ks = [int(k) for k in args.process_ks.split(",") if k]
    rows = []
    with tqdm(total=len(ks) + len(process_ks), desc="gpu throughput", unit="config") as bar:
        for k in ks:
            rows.append(measure_batched(cfg, corpus, k, args.warmup))
            bar.set_postfix_str(f"K={k} {rows[-1]['mode']}: {rows[-1]['tokens_per_s']:,.0f} tok/s")
            bar.update()
        for k in process_ks:
            rows.append(measure_processes(cfg, args, k))
            bar.set_postfix_str(f"K={k} processes: {rows[-1]['tokens_per_s']:,.0f} tok/s")
            bar.update()

    name = torch.cuda.get_device_name() if device.startswith("cuda") else (platform.processor() or "cpu")
    single = next((r["tokens_per_s"] for r in rows if r["k"] == 1), None)
    print(f"\n{args.model} ({get_preset(args.model).params_non_embedding:,} non-emb params) on {name}, "
          f"batch {args.batch_size} x {args.seq_len}, compile={args.compile}")
    print(f"{'mode':10s} {'K':>4s} {'tok/s (device)':>15s} {'tok/s per proxy':>16s} {'vs one proxy':>13s}")
    for r in rows:
        ratio = f"{r['tokens_per_s'] / single:12.2f}x" if single else ""
        print(f"{r['mode']:10s} {r['k']:4d} {r['tokens_per_s']:15,.0f} {r['tokens_per_s_per_proxy']:16,.0f} {ratio}")
    report = dict(benchmark="gpu_throughput", model=args.model, device=name, batch_size=args.batch_size,
                  seq_len=args.seq_len, vocab_size=corpus.vocab_size, steps=args.steps, warmup=args.warmup,
                  compile=args.compile, torch=torch.__version__, smoke=args.smoke,
                  corpus=read_demo_manifest(args.corpus or args.cache_dir / "demo_corpus") if args.demo or args.corpus
                  else "synthetic", results=rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
