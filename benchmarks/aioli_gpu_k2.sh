#!/usr/bin/env bash
# Aioli against stratified sampling, the paper's 2-domain row (code, dialogue), at a larger proxy
# and with more paired seeds than the CPU run, on one GPU. One prepared run for a lent GPU node;
# CI never runs it.
#
#   bash benchmarks/aioli_gpu_k2.sh [OUT] [SEEDS] [JOBS]
#
# PYTHON (default .venv/bin/python) is the interpreter, CACHE (default artifacts/cache) the folder
# of the demo corpus and its tokenizer: on a node without the project's venv, point PYTHON at a
# Python with CUDA torch and the project on PYTHONPATH, and CACHE at a copy made where it was built.
#
# What a GPU buys here is seeds, not tokens: the demo corpus's dialogue domain is small (about
# 60k training tokens), so the CPU run's 0.8M tokens already show it 6.5 times under stratified
# sampling, and a longer run would measure memorisation. Every run therefore keeps the CPU run's
# token budget (1,600 steps of 8 x 64) with llama-5m (5.1M non-embedding parameters against
# llama-tiny's 0.13M), and the seeds go up to 40 (a 95% interval about 2.2x narrower than at 10 seeds).
# Measured on an H200 node (16 cores): a step is bound by kernel launches, so a run takes 58-68 s
# on one CPU core whatever the GPU, and 3 methods x 40 seeds with 14-16 processes took 11 minutes
# (docs/benchmarks.md). Give JOBS about the node's core count. --resume makes an interrupted run,
# or a second call with more seeds, reuse what is done.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-artifacts/bench/aioli-gpu-k2}
SEEDS=${2:-40}
JOBS=${3:-8}
PYTHON=${PYTHON:-.venv/bin/python}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
"$PYTHON" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print('torch', torch.__version__)"
exec "$PYTHON" benchmarks/aioli_vs_stratified.py --settings k2 --model llama-5m --steps 1600 --batch-size 8 --seq-len 64 \
    --eval-tokens 2048 --seeds "$SEEDS" --methods stratified,aioli,aioli-eta0 --device cuda --jobs "$JOBS" \
    --cache-dir "${CACHE:-artifacts/cache}" --out "$OUT" --resume
