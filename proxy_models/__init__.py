"""Proxy-model training for data-mixture search: Llama presets by size, tokenised domain shards,
an exact mixture sampler and a small, fast training loop with per-domain validation losses.

This package knows nothing of the mixopt service: it trains one proxy (or ``K`` at once) on one
mixture or a schedule of mixtures, and returns losses.

Example::

    from proxy_models import TrainConfig, build_demo_corpus, train_proxy

    build_demo_corpus("demo_corpus")
    cfg = TrainConfig(model="llama-tiny", tokens=200_000, threads=1)
    result = train_proxy(cfg, "demo_corpus", mixture={"code": 0.5, "news": 0.5})
    result.losses  # {"code": ..., "dialogue": ..., "legal": ..., "news": ..., "prose": ...}
"""

from ._config import SCHEDULES, Progress, SegmentSpec, TrainConfig, TrainResult
from ._corpus import (
    DomainSource,
    PreparedCorpus,
    corpus_fingerprint,
    default_cache_dir,
    discover_domains,
    domain_summary,
    prepare_corpus,
)
from ._demo import (
    DEMO_CORPUS_FINGERPRINT,
    DEMO_DOMAINS,
    EXTRA_DOMAINS,
    DemoCorpusError,
    build_demo_corpus,
    ensure_demo_corpus,
    read_demo_manifest,
)
from ._llama import LlamaProxy
from ._presets import PRESETS, ModelPreset, get_preset, preset_table
from ._sampler import (
    BaseDomainScheduler,
    IIDScheduler,
    LowDiscrepancyScheduler,
    MixtureSampler,
    validate_mixture,
)
from ._tokenizer import load_tokenizer, train_bpe
from ._trainer import SegmentSource, train_proxies, train_proxy

__all__ = [
    "BaseDomainScheduler",
    "DEMO_CORPUS_FINGERPRINT",
    "DEMO_DOMAINS",
    "DemoCorpusError",
    "DomainSource",
    "EXTRA_DOMAINS",
    "IIDScheduler",
    "LlamaProxy",
    "LowDiscrepancyScheduler",
    "MixtureSampler",
    "ModelPreset",
    "PRESETS",
    "PreparedCorpus",
    "Progress",
    "SCHEDULES",
    "SegmentSource",
    "SegmentSpec",
    "TrainConfig",
    "TrainResult",
    "build_demo_corpus",
    "corpus_fingerprint",
    "default_cache_dir",
    "discover_domains",
    "domain_summary",
    "ensure_demo_corpus",
    "get_preset",
    "load_tokenizer",
    "prepare_corpus",
    "preset_table",
    "read_demo_manifest",
    "train_bpe",
    "train_proxies",
    "train_proxy",
    "validate_mixture",
]
