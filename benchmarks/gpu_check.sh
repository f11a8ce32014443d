#!/usr/bin/env bash
# The GPU check (benchmarks/_gpu_check.py): on a CUDA machine with the project installed
# (pip install -e ".[dev]" -c constraints.txt), from anywhere:
#   bash benchmarks/gpu_check.sh [OUT_DIR] [--tolerance 0.05]
# the default fit in bf16-mixed and its probe against the CPU figures, the UPGrad and affinity
# configs on the GPU against the CPU, interleaved step-time ratios and peak GPU memory; one
# table, exit status 1 if a check failed. About 5-8 minutes on one GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python -m benchmarks._gpu_check "$@"
