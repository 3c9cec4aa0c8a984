"""Tokenizers: a local Hugging Face tokenizer, or a byte-level BPE trained on the corpus."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

EOS_TOKEN = "<|endoftext|>"
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                    "tokenizer.model", "vocab.txt")


def tokenizer_fingerprint(path: str | Path) -> str:
    """Content hash of the tokenizer files in ``path`` (what decides the token ids)."""
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"tokenizer: {str(path)!r} is not a directory holding a Hugging Face tokenizer")
    digest = hashlib.blake2b(digest_size=8)
    for name in _TOKENIZER_FILES:
        if (path / name).is_file():
            digest.update(name.encode())
            digest.update((path / name).read_bytes())
    return digest.hexdigest()


def load_tokenizer(path: str | Path):
    """``AutoTokenizer.from_pretrained(path)`` strictly offline (no hub lookups)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ValueError(f"tokenizer: cannot load a tokenizer from {str(path)!r}: {exc}") from exc


def train_bpe(texts: Iterable[str], vocab_size: int, out_dir: str | Path) -> Path:
    """Train a byte-level BPE on ``texts`` and save it where ``AutoTokenizer`` can load it.

    The vocabulary holds the 256 byte symbols, ``<|endoftext|>`` (the document separator,
    id 0) and ``vocab_size - 257`` merges.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 512:
        raise ValueError(f"vocab_size: must be at least 512 for a byte-level BPE, got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS_TOKEN, bos_token=EOS_TOKEN, pad_token=EOS_TOKEN)
    out_dir = Path(out_dir)
    fast.save_pretrained(str(out_dir))
    return out_dir


def eos_id(tokenizer) -> int:
    """The document separator id: the tokenizer's EOS (or BOS, or pad) token."""
    for attr in ("eos_token_id", "bos_token_id", "pad_token_id"):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            return int(value)
    raise ValueError("tokenizer: it has no EOS, BOS or pad token to separate documents")


def encode_documents(tokenizer, texts: Iterable[str], batch_chars: int = 16_000_000) -> Iterator[list[list[int]]]:
    """Token ids of each document of ``texts`` (no special tokens), a batch of documents at a time.

    Long documents are cut into pieces at line ends first so the Rust tokenizer parallelises over
    them; the pieces of one document are joined again.
    """
    pieces: list[str] = []
    owners: list[int] = []  # piece -> its document within the batch
    n_docs = size = 0
    for text in texts:
        for piece in _split_long(text, 1 << 18):
            pieces.append(piece)
            owners.append(n_docs)
            size += len(piece)
        n_docs += 1
        if size >= batch_chars:
            yield _join(_encode(tokenizer, pieces), owners, n_docs)
            pieces, owners, n_docs, size = [], [], 0, 0
    if pieces:
        yield _join(_encode(tokenizer, pieces), owners, n_docs)


def _join(ids: list[list[int]], owners: list[int], n_docs: int) -> list[list[int]]:
    docs: list[list[int]] = [[] for _ in range(n_docs)]
    for piece_ids, owner in zip(ids, owners):
        docs[owner].extend(piece_ids)
    return docs


def _encode(tokenizer, texts: list[str]) -> list[list[int]]:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        # encode_batch_fast (tokenizers >= 0.20) skips the character offsets we do not need.
        encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
        return [e.ids for e in encode(texts, add_special_tokens=False)]
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def _split_long(text: str, limit: int) -> Iterator[str]:
    """Pieces of at most about ``limit`` characters, cut after a newline where there is one."""
    start = 0
    while len(text) - start > limit:
        cut = text.rfind("\n", start + limit // 2, start + limit)
        cut = start + limit if cut < 0 else cut + 1
        yield text[start:cut]
        start = cut
    yield text[start:]
