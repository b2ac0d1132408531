#!/usr/bin/env bash
# GPU throughput of the molpcba-sized model (GIN-VN 300x5, K=8 r=16, 128 tasks) over 437,929 real
# molecules (HIV + MUV from the shared data, repeated to molpcba's count): training graphs/s over
# 200,000 molecules and inference graphs/s over 100,000 for each of: adapters in every layer at
# batch 256 (the earlier measurement) and 2048; adapters in layers 3-4 with the frozen prefix
# (layers 0-2) computed once and cached on the GPU, batch 2048; full fine-tuning at 256 and 2048.
# Prints the prefix cache's size, the GPU's name and peak memory; writes $OUT/gpu.json (or /tmp).
# Finishes in under 8 minutes.
#
#   benchmarks/gpu.sh                     # on a machine with one GPU and cft's dependencies
#   benchmarks/gpu.sh --compile           # also measure torch.compile
#   benchmarks/gpu.sh --batch-size 4096   # another large batch
#
# On a machine without internet that lacks rdkit/ogb/pydantic, put their wheels in .device/wheels
# (see docs/distributed.md) and the two CSVs in .device/data; the script installs from there.
set -euo pipefail
cd "$(dirname "$0")/.."
source benchmarks/gpu_env.sh
export CFT_QUIET=1
timeout 470 $PY benchmarks/gpu_throughput.py --data "$DATA" --json "${OUT:-/tmp}/gpu.json" "$@"
