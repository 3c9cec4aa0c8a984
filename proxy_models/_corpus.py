"""Corpus ingestion: one entry per domain in a directory, tokenised into cached memmap shards.

Layout of a corpus directory (the domain is the entry's name without its suffix)::

    corpus/
      code.txt            one text stream
      news.jsonl          one document per line, in its "text" field
      web.parquet         one document per row, in its "text" column
      papers/             a directory of text files (one document each, read recursively) or a
                          Hugging Face dataset saved with ``save_to_disk`` (a "text" column)

Hidden entries (``.name``) are ignored. Prepared shards live under ``cache_dir`` in a directory
keyed by the corpus content, the tokenizer and the split settings; preparing is done once under a
file lock, so concurrent workers on one machine share it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ._tokenizer import encode_documents, eos_id, load_tokenizer, tokenizer_fingerprint, train_bpe

_FILE_KINDS = {".txt": "txt", ".jsonl": "jsonl", ".parquet": "parquet"}
_FORMAT_VERSION = 1


def default_cache_dir() -> Path:
    """``$MIXOPT_CACHE_DIR``, else ``~/.cache/mixopt``."""
    return Path(os.environ.get("MIXOPT_CACHE_DIR", "~/.cache/mixopt")).expanduser()


@dataclass(frozen=True)
class DomainSource:
    """One domain of a corpus directory: its name, path and format
    (``txt``, ``jsonl``, ``parquet``, ``textdir`` or ``hf_dataset``)."""

    name: str
    path: Path
    kind: str

    def files(self) -> list[Path]:
        """The files that make up this domain, in a fixed order."""
        if self.path.is_file():
            return [self.path]
        return sorted(p for p in self.path.rglob("*") if p.is_file() and not _hidden(p.relative_to(self.path)))

    def documents(self) -> Iterator[str]:
        """The domain's documents as strings."""
        if self.kind == "txt":
            yield self.path.read_text(encoding="utf-8", errors="replace")
        elif self.kind == "textdir":
            for p in self.files():
                yield p.read_text(encoding="utf-8", errors="replace")
        elif self.kind == "jsonl":
            with self.path.open(encoding="utf-8") as f:
                for lineno, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        text = json.loads(line)["text"]
                    except (json.JSONDecodeError, KeyError, TypeError) as exc:
                        raise ValueError(f"{self.path}:{lineno}: each line must be a JSON object with a 'text' field ({exc})") from None
                    if not isinstance(text, str):
                        raise ValueError(f"{self.path}:{lineno}: 'text' must be a string")
                    yield text
        elif self.kind == "parquet":
            import pyarrow.parquet as pq

            pf = pq.ParquetFile(self.path)
            if "text" not in pf.schema_arrow.names:
                raise ValueError(f"{self.path}: no 'text' column (columns: {pf.schema_arrow.names})")
            for batch in pf.iter_batches(columns=["text"], batch_size=4096):
                yield from (t for t in batch.column(0).to_pylist() if t)
        elif self.kind == "hf_dataset":
            from datasets import DatasetDict, load_from_disk

            ds = load_from_disk(str(self.path))
            if isinstance(ds, DatasetDict):
                ds = ds["train"] if "train" in ds else ds[next(iter(ds))]
            if "text" not in ds.column_names:
                raise ValueError(f"{self.path}: the dataset has no 'text' column (columns: {ds.column_names})")
            for batch in ds.select_columns(["text"]).iter(batch_size=4096):
                yield from (t for t in batch["text"] if t)
        else:  # pragma: no cover - kinds are fixed by discover_domains
            raise ValueError(f"unknown domain kind {self.kind!r}")


def _hidden(rel: Path) -> bool:
    return any(part.startswith(".") for part in rel.parts)


def discover_domains(corpus_dir: str | Path) -> list[DomainSource]:
    """The domains of ``corpus_dir``, sorted by name (see the module docstring for the layout)."""
    root = Path(corpus_dir)
    if not root.is_dir():
        raise ValueError(f"corpus_dir: {str(root)!r} is not a directory")
    found: dict[str, DomainSource] = {}
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            is_dataset = (entry / "dataset_info.json").exists() or (entry / "dataset_dict.json").exists()
            source = DomainSource(entry.name, entry, "hf_dataset" if is_dataset else "textdir")
        elif entry.suffix in _FILE_KINDS:
            source = DomainSource(entry.stem, entry, _FILE_KINDS[entry.suffix])
        else:
            continue
        if source.name in found:
            raise ValueError(f"corpus_dir: domain {source.name!r} has two entries: {found[source.name].path.name} and {entry.name}")
        found[source.name] = source
    if not found:
        raise ValueError(f"corpus_dir: {str(root)!r} holds no domain (*.txt, *.jsonl, *.parquet or a sub-directory)")
    return list(found.values())


def corpus_fingerprint(corpus_dir: str | Path, cache_dir: str | Path | None = None) -> str:
    """A hash of every domain's name, format and file contents.

    File hashes are memoised in ``cache_dir`` by (path, size, mtime), so an unchanged corpus is not
    re-read.
    """
    memo_path = Path(cache_dir or default_cache_dir()) / "file-hashes.json"
    try:
        memo = json.loads(memo_path.read_text())
    except (OSError, json.JSONDecodeError):
        memo = {}
    digest = hashlib.blake2b(digest_size=10)
    changed = False
    for source in discover_domains(corpus_dir):
        digest.update(f"{source.name}\0{source.kind}\0".encode())
        for path in source.files():
            st = path.stat()
            key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
            if key not in memo:
                file_digest = hashlib.blake2b(digest_size=16)
                with path.open("rb") as f:
                    for block in iter(lambda: f.read(1 << 20), b""):
                        file_digest.update(block)
                memo[key] = file_digest.hexdigest()
                changed = True
            digest.update(f"{path.relative_to(source.path) if source.path.is_dir() else ''}\0{memo[key]}\0".encode())
    if changed:
        memo_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo_path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(memo))
        os.replace(tmp, memo_path)
    return digest.hexdigest()


@dataclass
class PreparedCorpus:
    """Tokenised domains as memmaps.

    Attributes:
        path: the shard directory.
        domains: domain names, sorted; the order of every per-domain array.
        train: per domain, the training token stream (documents separated by ``eos_id``).
        val: per domain, the held-out validation tokens (blocks spread over the domain).
        vocab_size: tokenizer vocabulary size.
        eos_id: document separator id.
        tokenizer_path: directory of the tokenizer used.
        fingerprint: key of this preparation (corpus content + tokenizer + split settings).
        info: per-domain counts (documents, train/val tokens, bytes).
    """

    path: Path
    domains: tuple[str, ...]
    train: dict[str, np.ndarray]
    val: dict[str, np.ndarray]
    vocab_size: int
    eos_id: int
    tokenizer_path: Path
    fingerprint: str
    info: dict[str, dict] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path) -> PreparedCorpus:
        """Open a prepared shard directory (written by :func:`prepare_corpus`)."""
        path = Path(path)
        manifest = json.loads((path / "manifest.json").read_text())
        dtype = np.dtype(manifest["dtype"])
        domains = tuple(manifest["domains"])

        def open_split(domain: str, split: str) -> np.ndarray:
            n = manifest["info"][domain][f"{split}_tokens"]
            if n == 0:
                return np.zeros(0, dtype=dtype)
            return np.memmap(path / domain / f"{split}.bin", dtype=dtype, mode="r", shape=(n,))

        return cls(
            path=path,
            domains=domains,
            train={d: open_split(d, "train") for d in domains},
            val={d: open_split(d, "val") for d in domains},
            vocab_size=manifest["vocab_size"],
            eos_id=manifest["eos_id"],
            tokenizer_path=Path(manifest["tokenizer_path"]),
            fingerprint=manifest["fingerprint"],
            info=manifest["info"],
        )

    def token_counts(self) -> dict[str, int]:
        """Training tokens per domain (what a study's ``domains[].tokens`` should say)."""
        return {d: int(self.train[d].shape[0]) for d in self.domains}


def prepare_corpus(
    corpus_dir: str | Path,
    cache_dir: str | Path | None = None,
    tokenizer: str | Path | None = None,
    vocab_size: int = 8192,
    val_fraction: float = 0.05,
    max_val_tokens: int = 262_144,
    max_tokens_per_domain: int | None = None,
    bpe_sample_bytes: int = 8_000_000,
) -> PreparedCorpus:
    """Tokenise every domain of ``corpus_dir`` once and return the cached shards.

    Args:
        corpus_dir: the corpus directory (layout in the module docstring).
        cache_dir: where tokenizers and shards are cached (default :func:`default_cache_dir`).
        tokenizer: a local Hugging Face tokenizer directory; ``None`` trains a byte-level BPE on
            the corpus (cached by corpus fingerprint and ``vocab_size``).
        vocab_size: vocabulary of the trained BPE (ignored with ``tokenizer``).
        val_fraction: share of each domain's tokens held out for validation.
        max_val_tokens: cap on a domain's validation tokens.
        max_tokens_per_domain: stop reading a domain after this many tokens.
        bpe_sample_bytes: text the BPE is trained on, split evenly over the domains.

    Returns:
        The :class:`PreparedCorpus`.
    """
    if not 0.0 < val_fraction < 0.5:
        raise ValueError(f"val_fraction: must be in (0, 0.5), got {val_fraction}")
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    sources = discover_domains(corpus_dir)
    corpus_fp = corpus_fingerprint(corpus_dir, cache)

    if tokenizer is None:
        tok_dir = cache / "tokenizers" / f"bpe-{vocab_size}-{corpus_fp}"
        with _locked(tok_dir.with_suffix(".lock")):
            if not (tok_dir / "tokenizer.json").exists():
                tmp = tok_dir.with_name(f"{tok_dir.name}.tmp{os.getpid()}")
                train_bpe(_bpe_sample(sources, bpe_sample_bytes), vocab_size, tmp)
                os.replace(tmp, tok_dir)
    else:
        tok_dir = Path(tokenizer).resolve()
    tok_fp = tokenizer_fingerprint(tok_dir)

    settings = f"v{_FORMAT_VERSION}|{val_fraction}|{max_val_tokens}|{max_tokens_per_domain}"
    key = hashlib.blake2b(f"{corpus_fp}|{tok_fp}|{settings}".encode(), digest_size=10).hexdigest()
    shard_dir = cache / "shards" / key
    with _locked(shard_dir.with_suffix(".lock")):
        if not (shard_dir / "manifest.json").exists():
            tmp = shard_dir.with_name(f"{key}.tmp{os.getpid()}")
            shutil.rmtree(tmp, ignore_errors=True)
            _tokenise(sources, load_tokenizer(tok_dir), tok_dir, tmp, key, corpus_fp, val_fraction, max_val_tokens,
                      max_tokens_per_domain)
            os.replace(tmp, shard_dir)
    return PreparedCorpus.load(shard_dir)


class _locked:
    """An exclusive ``flock`` on ``path`` for the duration of a ``with`` block."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *exc):
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def _bpe_sample(sources: list[DomainSource], budget: int) -> Iterator[str]:
    """About ``budget / k`` characters per domain, taken systematically across each domain."""
    per_domain = max(budget // len(sources), 1)
    for source in sources:
        total = sum(p.stat().st_size for p in source.files()) or 1
        keep = min(1.0, per_domain / total)
        seen = kept = 0
        for doc in source.documents():
            for start in range(0, len(doc), 1 << 16):
                piece = doc[start : start + (1 << 16)]
                seen += len(piece)
                if kept <= keep * seen:
                    kept += len(piece)
                    yield piece
            if kept >= per_domain:
                break


def _tokenise(
    sources: list[DomainSource],
    tok,
    tok_dir: Path,
    out: Path,
    key: str,
    corpus_fp: str,
    val_fraction: float,
    max_val_tokens: int,
    max_tokens: int | None,
) -> None:
    t0 = time.perf_counter()
    vocab_size = len(tok)
    dtype = np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.uint32
    sep = eos_id(tok)
    info: dict[str, dict] = {}
    for source in sources:
        (out / source.name).mkdir(parents=True)
        stream_path = out / source.name / "all.bin"
        n_tokens = n_docs = n_chars = 0
        with stream_path.open("wb") as f:
            for docs in encode_documents(tok, _counting(source.documents(), info.setdefault(source.name, {}))):
                lengths = np.fromiter((len(d) + 1 for d in docs), dtype=np.int64, count=len(docs))
                flat = np.full(int(lengths.sum()), sep, dtype=dtype)
                ends = np.cumsum(lengths)
                for doc, end in zip(docs, ends):
                    flat[end - 1 - len(doc) : end - 1] = doc
                if max_tokens is not None:
                    flat = flat[: max_tokens - n_tokens]
                f.write(flat.tobytes())
                n_tokens += flat.size
                n_docs += len(docs)
                if max_tokens is not None and n_tokens >= max_tokens:
                    break
        if n_tokens < 16:
            raise ValueError(f"corpus: domain {source.name!r} has only {n_tokens} tokens")
        stream = np.memmap(stream_path, dtype=dtype, mode="r", shape=(n_tokens,))
        val_mask = _val_blocks(n_tokens, val_fraction, max_val_tokens)
        stream[~val_mask].tofile(out / source.name / "train.bin")
        stream[val_mask].tofile(out / source.name / "val.bin")
        del stream
        stream_path.unlink()
        n_chars = info[source.name].pop("chars", 0)
        info[source.name] = dict(
            kind=source.kind,
            documents=n_docs,
            chars=n_chars,
            train_tokens=int((~val_mask).sum()),
            val_tokens=int(val_mask.sum()),
        )
    manifest = dict(
        fingerprint=key,
        corpus=corpus_fp,
        domains=[s.name for s in sources],
        vocab_size=vocab_size,
        eos_id=sep,
        dtype=np.dtype(dtype).name,
        tokenizer_path=str(tok_dir),
        info=info,
        seconds=round(time.perf_counter() - t0, 2),
    )
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))


def _counting(docs: Iterator[str], stats: dict) -> Iterator[str]:
    for doc in docs:
        stats["chars"] = stats.get("chars", 0) + len(doc)
        yield doc


def _val_blocks(n: int, val_fraction: float, max_val_tokens: int, block: int = 4096) -> np.ndarray:
    """A boolean mask (``n``) of validation tokens: whole blocks evenly spaced over the domain,
    so validation covers all of it and windows rarely straddle the train/val border."""
    block = min(block, max(n // 40, 1))
    n_blocks = n // block
    target = min(val_fraction * n, max_val_tokens)
    n_val = int(np.clip(round(target / block), 1, max(n_blocks - 1, 1)))
    chosen = ((np.arange(n_val) + 0.5) * n_blocks / n_val).astype(np.int64)
    mask = np.zeros(n, dtype=bool)
    starts = chosen * block
    mask[(starts[:, None] + np.arange(block)).ravel()] = True
    return mask


def domain_summary(corpus_dir: str | Path) -> Mapping[str, dict]:
    """Per domain of ``corpus_dir``: format, number of files and bytes on disk (no tokenising)."""
    out = {}
    for source in discover_domains(corpus_dir):
        files = source.files()
        out[source.name] = dict(kind=source.kind, files=len(files), bytes=sum(p.stat().st_size for p in files))
    return out
