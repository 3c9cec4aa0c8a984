"""Corpus ingestion of every format, tokenizer training and caching, and the token shards."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import proxy_models._corpus as corpus_mod
from proxy_models import discover_domains, load_tokenizer, prepare_corpus, train_bpe


def _docs(topic: str, n: int) -> list[str]:
    return [f"Document {i} about {topic}: the {topic} of item {i * 7} is not the {topic} of item {i * 3}.\n" * 3
            for i in range(n)]


def _write_corpus(root: Path) -> dict[str, list[str]]:
    """One domain per supported format."""
    from datasets import Dataset

    docs = {name: _docs(name, 60) for name in ("plain", "lines", "table", "folder", "hfdata")}
    root.mkdir(parents=True, exist_ok=True)
    (root / "plain.txt").write_text("".join(docs["plain"]))
    (root / "lines.jsonl").write_text("".join(json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(docs["lines"])))
    pq.write_table(pa.table({"text": docs["table"], "n": list(range(60))}), root / "table.parquet")
    for i, d in enumerate(docs["folder"]):
        sub = root / "folder" / f"part{i % 3}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"{i:03d}.txt").write_text(d)
    Dataset.from_dict({"text": docs["hfdata"]}).save_to_disk(str(root / "hfdata"))
    (root / ".hidden.txt").write_text("ignored")
    (root / "notes.md").write_text("not a domain")
    return docs


def test_discover_every_format(tmp_path):
    _write_corpus(tmp_path / "c")
    kinds = {s.name: s.kind for s in discover_domains(tmp_path / "c")}
    assert kinds == {"folder": "textdir", "hfdata": "hf_dataset", "lines": "jsonl", "plain": "txt", "table": "parquet"}
    sources = {s.name: s for s in discover_domains(tmp_path / "c")}
    assert len(list(sources["folder"].documents())) == 60
    assert len(list(sources["hfdata"].documents())) == 60
    assert len(list(sources["table"].documents())) == 60
    assert len(list(sources["plain"].documents())) == 1


def test_prepare_every_format_round_trips(tmp_path):
    docs = _write_corpus(tmp_path / "c")
    prepared = prepare_corpus(tmp_path / "c", tmp_path / "cache", vocab_size=600)
    assert prepared.domains == ("folder", "hfdata", "lines", "plain", "table")
    assert 300 < prepared.vocab_size <= 600  # a tiny corpus may run out of merges
    tok = load_tokenizer(prepared.tokenizer_path)
    for name in prepared.domains:
        train, val = prepared.train[name], prepared.val[name]
        assert train.dtype == np.uint16 and len(train) > 0 and len(val) > 0
        assert 0.02 < len(val) / (len(train) + len(val)) < 0.15
        text = tok.decode(np.asarray(train).tolist())
        assert f"about {name}" in text
        # nothing lost: every document's own words reappear across train and val
        all_ids = np.concatenate([train, val])
        assert len(all_ids) > 0.5 * sum(len(tok(d)["input_ids"]) for d in docs[name])
    info = prepared.info["lines"]
    assert info["documents"] == 60 and info["kind"] == "jsonl"
    assert prepared.token_counts()["lines"] == info["train_tokens"]


def test_documents_separated_by_eos(tmp_path):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "d.jsonl").write_text("".join(json.dumps({"text": f"doc {i} " * 40}) + "\n" for i in range(50)))
    prepared = prepare_corpus(tmp_path / "c", tmp_path / "cache", vocab_size=512)
    stream = np.concatenate([prepared.train["d"], prepared.val["d"]])
    assert (stream == prepared.eos_id).sum() == 50


def test_tokenizer_and_shards_are_cached(tmp_path, monkeypatch):
    _write_corpus(tmp_path / "c")
    first = prepare_corpus(tmp_path / "c", tmp_path / "cache", vocab_size=600)

    def fail(*args, **kwargs):
        raise AssertionError("cache miss")

    monkeypatch.setattr(corpus_mod, "train_bpe", fail)
    monkeypatch.setattr(corpus_mod, "_tokenise", fail)
    again = prepare_corpus(tmp_path / "c", tmp_path / "cache", vocab_size=600)
    assert again.path == first.path and again.fingerprint == first.fingerprint
    monkeypatch.undo()

    # new content -> new fingerprint, new tokenizer and shards
    (tmp_path / "c" / "plain.txt").write_text("".join(_docs("changed", 60)))
    changed = prepare_corpus(tmp_path / "c", tmp_path / "cache", vocab_size=600)
    assert changed.fingerprint != first.fingerprint
    assert changed.tokenizer_path != first.tokenizer_path


def test_tokenizer_from_local_path(tmp_path):
    _write_corpus(tmp_path / "c")
    tok_dir = train_bpe(_docs("anything", 200), 700, tmp_path / "mytok")
    prepared = prepare_corpus(tmp_path / "c", tmp_path / "cache", tokenizer=tok_dir)
    assert prepared.vocab_size == len(load_tokenizer(tok_dir))
    assert Path(prepared.tokenizer_path) == tok_dir.resolve()
    assert not (tmp_path / "cache" / "tokenizers").exists()
    with pytest.raises(ValueError, match="tokenizer"):
        prepare_corpus(tmp_path / "c", tmp_path / "cache", tokenizer=tmp_path / "missing")


def test_max_tokens_per_domain(tmp_path):
    _write_corpus(tmp_path / "c")
    prepared = prepare_corpus(tmp_path / "c", tmp_path / "cache", vocab_size=600, max_tokens_per_domain=2_000)
    for name in prepared.domains:
        assert len(prepared.train[name]) + len(prepared.val[name]) == 2_000


def test_bad_corpora_are_named(tmp_path):
    with pytest.raises(ValueError, match="corpus_dir"):
        discover_domains(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no domain"):
        discover_domains(tmp_path / "empty")
    (tmp_path / "dup").mkdir()
    (tmp_path / "dup" / "web.txt").write_text("a")
    (tmp_path / "dup" / "web.jsonl").write_text("{}")
    with pytest.raises(ValueError, match="'web' has two entries"):
        discover_domains(tmp_path / "dup")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "web.jsonl").write_text('{"text": "ok"}\n{"body": "no text"}\n')
    with pytest.raises(ValueError, match=r"web.jsonl:2: .*'text'"):
        list(discover_domains(tmp_path / "bad")[0].documents())
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "bad" / "web.jsonl")
    (tmp_path / "bad" / "web.jsonl").unlink()
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "bad" / "tab.parquet")
    with pytest.raises(ValueError, match="no 'text' column"):
        list(discover_domains(tmp_path / "bad")[0].documents())
