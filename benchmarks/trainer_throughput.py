"""Proxy trainer throughput: training tokens/s of ``proxy_models.train_proxy``
against a plain Hugging Face ``Trainer`` on the same model (``LlamaForCausalLM`` of the preset),
the same token windows and the same batch, measured in one run.

Variants (all fp32 on CPU, AdamW, grad clipping 1.0, warm-up + cosine):

* ``hf_trainer``   ``transformers.Trainer`` + ``LlamaForCausalLM`` (sdpa attention)
* ``hf_model_loop``  the same ``LlamaForCausalLM`` in a bare PyTorch loop (no Trainer)
* ``proxy_models``   ``train_proxy`` (its own Llama-equivalent module)
* ``proxy_models_compiled`` (``--compile``) the same with ``torch.compile``; compile time reported

The machine is shared, so variants alternate in rounds and each figure is the median of per-step
times after ``--warmup`` steps (the mean-based figure is reported too). Besides wall-clock
tokens/s, tokens per CPU-second of the process (``time.process_time``) are reported: with one
thread that is the wall-clock rate of an idle machine, and it is far less disturbed by other
processes competing for the cores.

    .venv/bin/python benchmarks/trainer_throughput.py --threads 2 --steps 30 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from proxy_models import (  # noqa: E402
    MixtureSampler,
    PreparedCorpus,
    TrainConfig,
    ensure_demo_corpus,
    get_preset,
    prepare_corpus,
    read_demo_manifest,
    train_proxy,
)


def _windows(corpus: PreparedCorpus, n: int, seq_len: int, seed: int) -> np.ndarray:
    """``n x (seq_len + 1)`` training windows drawn uniformly over the domains (the HF variants' data)."""
    sampler = MixtureSampler([corpus.train[d] for d in corpus.domains], seq_len, seed=seed)
    weights = np.full(len(corpus.domains), 1 / len(corpus.domains))
    return sampler.gather(sampler.sample(weights, n, 1)).reshape(n, seq_len + 1)


def _stamp() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _rates(stamps: list[tuple[float, float]], warmup: int, tokens_per_step: int) -> dict:
    """Tokens/s from step-end ``(wall, cpu)`` stamps, skipping ``warmup`` steps."""
    wall, cpu = (np.diff(np.asarray(stamps[warmup:])[:, i]) for i in range(2))
    return dict(
        tokens_per_s=tokens_per_step / statistics.median(wall),
        tokens_per_s_mean=tokens_per_step / float(np.mean(wall)),
        tokens_per_cpu_s=tokens_per_step / statistics.median(cpu),
        step_s_median=statistics.median(wall),
        measured_steps=len(wall),
    )


def run_hf_trainer(cfg: TrainConfig, corpus: PreparedCorpus, windows: np.ndarray, warmup: int) -> dict:
    from transformers import LlamaForCausalLM, Trainer, TrainerCallback, TrainingArguments

    class Windows(torch.utils.data.Dataset):
        def __len__(self):
            return len(windows)

        def __getitem__(self, i):
            ids = torch.from_numpy(windows[i, : cfg.seq_len].astype(np.int64))
            return {"input_ids": ids, "labels": ids}  # the model shifts labels: T tokens in, as ours

    class Stamps(TrainerCallback):
        def __init__(self):
            self.stamps = []

        def on_step_end(self, args, state, control, **kwargs):
            self.stamps.append(_stamp())

    torch.manual_seed(cfg.seed)
    model = LlamaForCausalLM(get_preset(cfg.model).hf_config(corpus.vocab_size, attn_implementation="sdpa"))
    stamps = Stamps()
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out, per_device_train_batch_size=cfg.batch_size, max_steps=cfg.total_steps,
            learning_rate=cfg.peak_lr, lr_scheduler_type="cosine", warmup_steps=cfg.warmup_steps,
            weight_decay=cfg.weight_decay, adam_beta1=cfg.beta1, adam_beta2=cfg.beta2, max_grad_norm=cfg.grad_clip,
            logging_steps=10**9, save_strategy="no", report_to=[], use_cpu=True, dataloader_num_workers=0,
            disable_tqdm=True, seed=cfg.seed,
        )
        trainer = Trainer(model=model, args=args, train_dataset=Windows(), callbacks=[stamps])
        trainer.train()
    return dict(_rates(stamps.stamps, warmup, cfg.batch_size * cfg.seq_len), optimizer=args.optim.value)


def run_hf_model_loop(cfg: TrainConfig, corpus: PreparedCorpus, windows: np.ndarray, warmup: int) -> dict:
    from transformers import LlamaForCausalLM

    torch.manual_seed(cfg.seed)
    model = LlamaForCausalLM(get_preset(cfg.model).hf_config(corpus.vocab_size, attn_implementation="sdpa"))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.peak_lr, betas=(cfg.beta1, cfg.beta2),
                            weight_decay=cfg.weight_decay)
    data = torch.from_numpy(windows.astype(np.int64))
    stamps = []
    for step in range(cfg.total_steps):
        batch = data[step * cfg.batch_size : (step + 1) * cfg.batch_size]
        for group in opt.param_groups:
            group["lr"] = cfg.lr_at(step)
        logits = model(input_ids=batch[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        stamps.append(_stamp())
    return _rates(stamps, warmup, cfg.batch_size * cfg.seq_len)


def run_proxy_models(cfg: TrainConfig, corpus: PreparedCorpus, windows: np.ndarray, warmup: int) -> dict:
    stamps = []
    t0 = time.perf_counter()
    result = train_proxy(cfg, corpus, mixture={d: 1 / len(corpus.domains) for d in corpus.domains},
                         on_progress=lambda p: stamps.append(_stamp()))
    out = _rates(stamps, warmup, cfg.batch_size * cfg.seq_len)
    out["first_steps_s"] = round(stamps[warmup][0] - t0, 2)  # includes compilation when compiled
    out["final_loss_mean"] = float(np.mean(list(result.losses.values())))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="llama-1m")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps per variant per round")
    parser.add_argument("--warmup", type=int, default=5, help="steps not timed")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--compile", action="store_true", help="add the torch.compile variant")
    parser.add_argument("--no-hf-loop", action="store_true", help="skip the bare HF-model loop")
    parser.add_argument("--corpus", type=Path, default=None, help="corpus dir (default: the demo corpus)")
    parser.add_argument("--cache-dir", type=Path, default=Path("artifacts/cache"))
    parser.add_argument("--out", type=Path, default=Path("artifacts/trainer_throughput.json"))
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    corpus_dir = args.corpus
    if corpus_dir is None:
        corpus_dir = args.cache_dir / "demo_corpus"
        ensure_demo_corpus(corpus_dir)
    corpus = prepare_corpus(corpus_dir, args.cache_dir, vocab_size=args.vocab_size)
    cfg = TrainConfig(model=args.model, tokens=args.steps * args.batch_size * args.seq_len, batch_size=args.batch_size,
                      seq_len=args.seq_len, threads=args.threads, progress_every=1, warmup=2, eval_tokens=args.seq_len)
    windows = _windows(corpus, args.steps * args.batch_size, args.seq_len, seed=0)

    variants = {"hf_trainer": run_hf_trainer, "proxy_models": run_proxy_models}
    if not args.no_hf_loop:
        variants["hf_model_loop"] = run_hf_model_loop
    runs: dict[str, list[dict]] = {name: [] for name in variants}
    if args.compile:
        runs["proxy_models_compiled"] = []
    bar = tqdm(total=args.rounds * len(runs), desc="throughput", unit="run")
    for r in range(args.rounds):
        order = list(runs) if r % 2 == 0 else list(reversed(runs))
        for name in order:
            if name == "proxy_models_compiled":
                import dataclasses

                runs[name].append(run_proxy_models(dataclasses.replace(cfg, compile=True), corpus, windows, args.warmup))
            else:
                runs[name].append(variants[name](cfg, corpus, windows, args.warmup))
            bar.set_postfix_str(f"{name}: {runs[name][-1]['tokens_per_s']:,.0f} tok/s")
            bar.update()
    bar.close()

    summary = {}
    for name, rows in runs.items():
        summary[name] = dict(
            tokens_per_s=float(np.median([r["tokens_per_s"] for r in rows])),
            tokens_per_s_mean=float(np.median([r["tokens_per_s_mean"] for r in rows])),
            tokens_per_cpu_s=float(np.median([r["tokens_per_cpu_s"] for r in rows])),
            rounds=rows,
        )
    base = summary["hf_trainer"]["tokens_per_s"]
    base_cpu = summary["hf_trainer"]["tokens_per_cpu_s"]
    print(f"\n{args.model} ({get_preset(args.model).params_non_embedding:,} non-emb params), vocab {corpus.vocab_size}, "
          f"batch {args.batch_size} x {args.seq_len}, {args.threads} thread(s), {args.rounds} rounds x {args.steps} steps")
    print(f"{'variant':24s} {'tok/s (median step)':>20s} {'tok/s (mean)':>13s} {'vs HF Trainer':>14s} "
          f"{'tok/CPU-s':>10s} {'vs HF Trainer':>14s}")
    for name, row in summary.items():
        print(f"{name:24s} {row['tokens_per_s']:20,.0f} {row['tokens_per_s_mean']:13,.0f} "
              f"{row['tokens_per_s'] / base:13.2f}x {row['tokens_per_cpu_s']:10,.0f} "
              f"{row['tokens_per_cpu_s'] / base_cpu:13.2f}x")
    report = dict(
        benchmark="trainer_throughput", model=args.model, vocab_size=corpus.vocab_size, batch_size=args.batch_size,
        seq_len=args.seq_len, threads=args.threads, steps=args.steps, warmup=args.warmup, rounds=args.rounds,
        torch=torch.__version__, machine=platform.processor() or platform.machine(), cpus=os.cpu_count(),
        load_avg=os.getloadavg(), corpus=read_demo_manifest(corpus_dir), results=summary,
        speedup_vs_hf_trainer={name: row["tokens_per_s"] / base for name, row in summary.items()},
        speedup_vs_hf_trainer_cpu_time={name: row["tokens_per_cpu_s"] / base_cpu for name, row in summary.items()},
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
