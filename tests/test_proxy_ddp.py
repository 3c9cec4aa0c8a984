"""The trainer under ``torchrun`` (2 CPU processes, gloo): DDP gives the single-process result."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from proxy_models import TrainConfig, build_demo_corpus, prepare_corpus, train_proxy

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).with_name("torchrun")


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed next to this Python")
def test_torchrun_two_processes_match_single_process(tmp_path):
    build_demo_corpus(tmp_path / "demo", max_bytes_per_domain=150_000, extra=False)
    prepared = prepare_corpus(tmp_path / "demo", tmp_path / "cache", vocab_size=768)
    config = dict(model="llama-tiny", tokens=12 * 8 * 64, batch_size=8, seq_len=64, eval_tokens=512, eval_every=6,
                  threads=1, lr=3e-3)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [str(TORCHRUN), "--standalone", "--nproc_per_node", "2", str(ROOT / "tests" / "_proxy_ddp_run.py"),
           str(prepared.path), str(tmp_path), json.dumps(config)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]

    before = torch.get_num_threads()
    try:
        single = train_proxy(TrainConfig(**config), prepared, mixture={"code": 0.5, "news": 0.3, "prose": 0.2})
    finally:
        torch.set_num_threads(before)
    for result in ranks:
        assert result["metrics"]["world_size"] == 2
        assert set(result["losses"]) == set(single.losses) == set(prepared.domains)
        assert (result["steps"], result["tokens"]) == (single.steps, single.tokens)
        assert [c["step"] for c in result["curve"]] == [c["step"] for c in single.curve] == [6, 12]
        for domain, loss in single.losses.items():
            assert result["losses"][domain] == pytest.approx(loss, abs=2e-3)
        assert result["metrics"]["token_shares"] == single.metrics["token_shares"]
    assert ranks[0]["losses"] == ranks[1]["losses"]
