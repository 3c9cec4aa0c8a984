"""``mixopt corpus`` commands: demo, prepare, info, presets."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from proxy_models import DEMO_CORPUS_FINGERPRINT
from service.cli import app

runner = CliRunner()


def test_corpus_demo_prepare_info(tmp_path):
    demo, cache = tmp_path / "demo", tmp_path / "cache"
    result = runner.invoke(app, ["corpus", "demo", str(demo), "--max-mb", "0.05", "--no-extra"])
    assert result.exit_code == 0, result.output
    assert f"demo corpus fingerprint {DEMO_CORPUS_FINGERPRINT} (max 0.05 MB per domain, seed 0)" in result.output
    assert "(docutils==0.23)" in result.output
    assert sorted(p.name for p in demo.glob("[!.]*")) == [f"{d}.jsonl" for d in ("code", "dialogue", "legal", "news", "prose")]
    assert json.loads((demo / ".demo-corpus.json").read_text())["fingerprint"] == DEMO_CORPUS_FINGERPRINT
    for path in demo.glob("*.jsonl"):
        lines = path.read_text().splitlines()
        assert lines and all(json.loads(line)["text"] for line in lines)
        assert path.stat().st_size < 120_000  # the cap holds (JSON escaping adds a little)

    result = runner.invoke(app, ["corpus", "info", str(demo), "--cache-dir", str(cache), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert set(info) == {"code", "dialogue", "legal", "news", "prose"} and "train_tokens" not in info["code"]

    result = runner.invoke(app, ["corpus", "prepare", str(demo), "--cache-dir", str(cache), "--vocab-size", "1024"])
    assert result.exit_code == 0, result.output
    assert "shards:" in result.output

    info = json.loads(runner.invoke(app, ["corpus", "info", str(demo), "--cache-dir", str(cache), "--json"]).output)
    assert all(row["train_tokens"] > 1000 for row in info.values())


def test_corpus_errors_and_presets(tmp_path):
    result = runner.invoke(app, ["corpus", "prepare", str(tmp_path / "missing"), "--cache-dir", str(tmp_path)])
    assert result.exit_code != 0 and "corpus_dir" in result.output
    result = runner.invoke(app, ["corpus", "presets"])
    assert result.exit_code == 0
    assert "llama-1m" in result.output and "1,049,728" in result.output and "154,166,272" in result.output
