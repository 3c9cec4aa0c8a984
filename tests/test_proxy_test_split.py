"""The trainer's test split (``TrainConfig.test_fraction``): the tail of each domain's validation
tokens is never evaluated during the run (curve, segment losses, final ``losses``) and is measured
once at the end into ``TrainResult.test_losses``."""

from __future__ import annotations

import dataclasses
import math

import pytest

from proxy_models import SegmentSpec, TrainConfig, build_demo_corpus, prepare_corpus, train_proxy


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("proxy_test_split")
    build_demo_corpus(root / "demo", max_bytes_per_domain=300_000, extra=False)
    return prepare_corpus(root / "demo", root / "cache", vocab_size=1024, val_fraction=0.1)


def _cfg(**overrides) -> TrainConfig:
    base = dict(model="llama-tiny", tokens=12 * 8 * 64, batch_size=8, seq_len=64, eval_tokens=512, threads=1,
                lr=3e-3, vocab_size=1024, val_fraction=0.1)
    return TrainConfig(**{**base, **overrides})


MIXTURE = {"code": 0.4, "dialogue": 0.2, "news": 0.4}


def _cut(corpus, fraction: float) -> dict[str, int]:
    return {d: len(v) - int(len(v) * fraction) for d, v in corpus.val.items()}


def test_steering_split_is_the_head_and_the_test_split_the_tail(corpus):
    cfg = _cfg(test_fraction=0.5, eval_every=6)
    result = train_proxy(cfg, corpus, mixture=MIXTURE)
    assert set(result.test_losses) == set(corpus.domains)
    assert all(math.isfinite(v) for v in result.test_losses.values())
    assert result.test_losses != result.losses
    cut = _cut(corpus, 0.5)

    # The same run on a corpus whose validation tokens are only the head: identical curve and losses.
    head = dataclasses.replace(corpus, val={d: v[: cut[d]] for d, v in corpus.val.items()})
    plain = train_proxy(dataclasses.replace(cfg, test_fraction=0.0), head, mixture=MIXTURE)
    assert plain.test_losses is None
    assert plain.losses == result.losses
    assert [c["losses"] for c in plain.curve] == [c["losses"] for c in result.curve]

    # ... and on a corpus whose validation tokens are only the tail, evaluated on all its windows
    # (same eval_every: evaluation points cut the sampler's chunks, so they shape the data order).
    tail = dataclasses.replace(corpus, val={d: v[cut[d]:] for d, v in corpus.val.items()})
    everything = dataclasses.replace(cfg, test_fraction=0.0, eval_tokens=max(map(len, corpus.val.values())))
    assert train_proxy(everything, tail, mixture=MIXTURE).losses == pytest.approx(result.test_losses, rel=1e-9)


def test_segment_source_sees_only_the_steering_split(corpus):
    seen = []

    def source(losses):
        seen.append(losses)
        return SegmentSpec(MIXTURE, steps=4, evaluate_after=True) if len(seen) <= 2 else None

    result = train_proxy(_cfg(test_fraction=0.5), corpus, segments=source)
    assert seen[-1] == result.losses != result.test_losses
    assert result.steps == 8


def test_too_small_test_split_is_named(corpus):
    fraction = 32 / max(map(len, corpus.val.values()))  # fewer test tokens than one window of seq_len + 1
    with pytest.raises(ValueError, match=r"test_fraction: domain 'code' has \d+ test tokens"):
        train_proxy(_cfg(test_fraction=fraction), corpus, mixture=MIXTURE)
    with pytest.raises(ValueError, match="test_fraction: must be in"):
        _cfg(test_fraction=0.95)
