"""The training loop on the real demo corpus: losses fall where there is weight, dynamic segments,
stopping, determinism, batched proxies and resumption from a checkpoint."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from proxy_models import SegmentSpec, TrainConfig, build_demo_corpus, prepare_corpus, train_proxies, train_proxy


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("proxy_train")
    build_demo_corpus(root / "demo", max_bytes_per_domain=300_000, extra=False)
    return prepare_corpus(root / "demo", root / "cache", vocab_size=1024)


def _cfg(**overrides) -> TrainConfig:
    base = dict(model="llama-tiny", tokens=60 * 8 * 128, batch_size=8, seq_len=128, eval_tokens=1024, threads=1,
                lr=3e-3, vocab_size=1024)
    return TrainConfig(**{**base, **overrides})


MIXTURE = {"code": 0.4, "news": 0.3, "prose": 0.3}


def _initial_losses(cfg, corpus):
    """Validation losses of the untrained model (a pure-evaluation segment)."""
    seen = []

    def source(losses):
        seen.append(losses)
        return SegmentSpec(MIXTURE, steps=0, evaluate_after=True) if len(seen) == 1 else None

    return train_proxy(cfg, corpus, segments=source).losses


def test_training_lowers_loss_of_every_weighted_domain(corpus):
    cfg = _cfg(eval_every=20)
    start = _initial_losses(cfg, corpus)
    result = train_proxy(cfg, corpus, mixture=MIXTURE)
    assert set(result.losses) == set(corpus.domains) == {"code", "dialogue", "legal", "news", "prose"}
    # Loss drops (start - end) measured over seeds 0-11 on demo corpus 7d552f4978bca7ae (300 KB/domain):
    # weighted code 1.07-1.25, news 0.91-1.03, prose 1.14-1.29; unweighted legal 0.51-0.61, dialogue
    # 0.79-0.95 (shared token statistics help every domain). Seed 0: code 1.23, news 1.02, prose 1.28,
    # legal 0.59. The bounds leave ~0.3 of margin below the smallest weighted drop and its gap to legal.
    drop = {d: start[d] - result.losses[d] for d in start}
    for domain in MIXTURE:
        assert drop[domain] > 0.6, (domain, start[domain], result.losses[domain])
        assert drop[domain] > drop["legal"] + 0.1, (domain, drop)  # weight helps beyond the shared statistics
    assert result.steps == 60 and result.tokens == 60 * 8 * 128 and not result.stopped
    assert [c["step"] for c in result.curve] == [20, 40, 60]
    assert result.curve[-1]["losses"] == result.losses
    assert result.params_non_embedding == 131_392
    shares = result.metrics["token_shares"]
    for domain, weight in MIXTURE.items():
        assert abs(shares[domain] - weight) < 0.01
    assert shares["legal"] == shares["dialogue"] == 0.0
    assert result.metrics["tokens_per_s"] > 0 and result.metrics["threads"] == 1


def test_same_seed_same_result_other_seed_differs(corpus):
    cfg = _cfg(tokens=10 * 8 * 128)
    a = train_proxy(cfg, corpus, mixture=MIXTURE)
    b = train_proxy(cfg, corpus, mixture=MIXTURE)
    c = train_proxy(dataclasses.replace(cfg, seed=1), corpus, mixture=MIXTURE)
    assert a.losses == b.losses
    assert a.losses != c.losses


def test_dynamic_segments(corpus):
    calls, progress = [], []
    plan = [
        SegmentSpec({"code": 1.0}, steps=6, evaluate_after=True),
        SegmentSpec({"news": 0.5, "prose": 0.5}, steps=0, evaluate_after=True),  # pure evaluation
        SegmentSpec({"news": 0.5, "prose": 0.5}, steps=4, evaluate_after=False),
        SegmentSpec({"legal": 1.0}, steps=2, evaluate_after=True),
    ]

    def source(losses):
        calls.append(losses)
        return plan[len(calls) - 1] if len(calls) <= len(plan) else None

    cfg = _cfg(tokens=20 * 8 * 128, progress_every=2)
    result = train_proxy(cfg, corpus, segments=source, on_progress=progress.append)
    assert calls[0] is None and calls[3] is None  # after the start and after a segment without evaluation
    assert set(calls[1]) == set(corpus.domains) and calls[2] == calls[1]  # 0 steps: same model, same losses
    assert set(calls[4]) == set(corpus.domains)
    assert result.steps == 12 and result.tokens == 12 * 8 * 128
    assert [c.get("segment") for c in result.curve] == [0, 1, 3]
    assert result.losses == calls[4]
    shares = result.metrics["token_shares"]
    np.testing.assert_allclose([shares["code"], shares["news"], shares["legal"]], [6 / 12, 2 / 12, 2 / 12], atol=0.01)
    assert [s["steps"] for s in result.metrics["segments"]] == [6, 0, 4, 2]
    assert progress and progress[-1].total_steps == 20 and progress[-1].step == 12
    assert {p.segment for p in progress} >= {0, 2, 3}


def test_bad_segment_is_named(corpus):
    with pytest.raises(ValueError, match=r"segments\[0\]\.weights: unknown domain 'web'"):
        train_proxy(_cfg(), corpus, segments=lambda losses: SegmentSpec({"web": 1.0}, 3))
    with pytest.raises(ValueError, match="exactly one"):
        train_proxy(_cfg(), corpus)


def test_should_stop_finishes_the_step_and_reports(corpus):
    steps = []
    result = train_proxy(_cfg(progress_every=1), corpus, mixture=MIXTURE, on_progress=lambda p: steps.append(p.step),
                         should_stop=lambda: len(steps) >= 3)
    assert result.stopped and result.steps == 3
    assert set(result.losses) == set(corpus.domains) and all(np.isfinite(list(result.losses.values())))


def test_batched_proxies_match_single_runs(corpus):
    cfg = _cfg(tokens=8 * 8 * 128)
    mixtures = [MIXTURE, {"legal": 0.7, "dialogue": 0.3}]
    batched = train_proxies(cfg, corpus, mixtures, seeds=[3, 4])
    for mixture, seed, got in zip(mixtures, [3, 4], batched):
        alone = train_proxy(dataclasses.replace(cfg, seed=seed), corpus, mixture=mixture)
        for domain in corpus.domains:
            assert got.losses[domain] == pytest.approx(alone.losses[domain], abs=2e-3)
    assert batched[0].metrics["n_models"] == 2
    assert batched[1].metrics["token_shares"]["legal"] == pytest.approx(0.7, abs=0.01)


def test_resume_from_checkpoint_matches_uninterrupted_run(corpus, tmp_path):
    cfg = _cfg(tokens=12 * 8 * 128, eval_every=4, progress_every=1)
    full = train_proxy(cfg, corpus, mixture=MIXTURE)
    seen = []
    first = train_proxy(cfg, corpus, mixture=MIXTURE, checkpoint_dir=tmp_path, on_progress=lambda p: seen.append(p),
                        should_stop=lambda: len(seen) >= 6)
    assert first.stopped and first.steps == 6
    resumed = train_proxy(cfg, corpus, mixture=MIXTURE, checkpoint_dir=tmp_path)
    assert resumed.metrics["resumed_from_step"] == 4 and resumed.steps == 12
    for domain in corpus.domains:
        assert resumed.losses[domain] == pytest.approx(full.losses[domain], abs=1e-5)
    with pytest.raises(ValueError, match="checkpoint_dir"):
        train_proxy(cfg, corpus, mixture={"code": 1.0}, checkpoint_dir=tmp_path)


def test_config_from_fidelity():
    cfg = TrainConfig.from_fidelity("llama-1m", 2e7, {"batch_size": 32, "lr": 1e-3, "schedule": "wsd"})
    assert (cfg.model, cfg.tokens, cfg.batch_size, cfg.seq_len, cfg.schedule) == ("llama-1m", 20_000_000, 32, 256, "wsd")
    assert TrainConfig.from_fidelity(None, None, {}).model == "llama-1m"
    # Aioli's fidelities may give the run length in steps: the trainer runs exactly that many
    stepped = TrainConfig.from_fidelity("llama-1m", 2e7, {"steps": 300, "seq_len": 128})
    assert (stepped.total_steps, stepped.tokens) == (300, 300 * 16 * 128)
    with pytest.raises(ValueError, match="fidelity.params.steps"):
        TrainConfig.from_fidelity("llama-1m", None, {"steps": 0})
    with pytest.raises(ValueError, match="fidelity.params.learning_rate"):
        TrainConfig.from_fidelity("llama-1m", 1e6, {"learning_rate": 1e-3})
    with pytest.raises(ValueError, match="unknown preset"):
        TrainConfig.from_fidelity("gpt-9", 1e6, {})
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=0)
    with pytest.raises(ValueError, match="schedule"):
        TrainConfig(schedule="linear")


@pytest.mark.parametrize("schedule", ["cosine", "wsd", "constant"])
def test_lr_schedules(schedule):
    cfg = TrainConfig(tokens=100 * 16 * 256, warmup=10, lr=1e-3, schedule=schedule, min_lr_ratio=0.1)
    lrs = np.array([cfg.lr_at(s) for s in range(100)])
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert np.all(np.diff(lrs[:10]) > 0)
    if schedule == "constant":
        assert np.allclose(lrs[10:], 1e-3)
    else:
        assert np.all(np.diff(lrs[10:]) <= 1e-12) and lrs[-1] == pytest.approx(1e-4, rel=0.05)
    if schedule == "wsd":
        assert np.allclose(lrs[10:80], 1e-3) and lrs[81] < 1e-3
