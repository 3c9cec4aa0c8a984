#!/usr/bin/env bash
# Aioli against stratified sampling, the paper's 2-domain row (code, dialogue), at a larger proxy
# and with more paired seeds than the CPU run, on one GPU. One prepared run for a lent GPU node;
# CI never runs it.
#
#   bash benchmarks/aioli_gpu_k2.sh [OUT] [SEEDS] [JOBS]
#
# What a GPU buys here is seeds, not tokens: the demo corpus's dialogue domain is small (about
# 60k training tokens), so the CPU run's 0.8M tokens already show it 6.5 times under stratified
# sampling, and a longer run would measure memorisation. Every run therefore keeps the CPU run's
# token budget (1,600 steps of 8 x 64) with llama-5m (5.1M non-embedding parameters against
# llama-tiny's 0.13M), and the seeds go up to 40 (a 95% interval about 2.2x narrower than at 10 seeds).
# Expected cost, extrapolated and not measured: at this batch size a step is launch-bound (a few
# ms), so a run is well under a minute and 3 methods x 40 seeds with 8 processes sharing the GPU
# about 10-15 minutes. --resume makes an interrupted run, or a second call with more seeds, reuse
# what is done.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-artifacts/bench/aioli-gpu-k2}
SEEDS=${2:-40}
JOBS=${3:-8}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
.venv/bin/python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'"
exec .venv/bin/mixopt bench aioli --settings k2 --model llama-5m --steps 1600 --batch-size 8 --seq-len 64 \
    --eval-tokens 2048 --seeds "$SEEDS" --methods stratified,aioli,aioli-eta0 --device cuda --jobs "$JOBS" \
    --out "$OUT" --resume
