#!/usr/bin/env bash
# Pretrain the benchmark backbone on one GPU within a time budget: where a GPU is lent, pretraining
# is what to spend it on (the peers issue). benchmarks/pretrain_backbone.py on the HIV + MUV
# molecules less every valid and test molecule of the peers split files (Tox21, ToxCast, ESOL;
# written from the CSVs when missing), recipes/tox21.yaml's GIN-VN 300x5, as many whole epochs as
# fit in $MINUTES minutes of pretraining (default 5; timed by one epoch over 10,000 molecules
# first). Featurising the ~134,000 molecules and writing the split files come on top (a few
# minutes of the machine's CPUs). Writes $OUT/backbone.safetensors and $OUT/backbone.json (the
# command, molecule counts, settings, epochs chosen, seconds, fingerprint), or /tmp without $OUT.
#
#   benchmarks/gpu_pretrain.sh                                   # attribute masking
#   MINUTES=6 benchmarks/gpu_pretrain.sh --method masking+contrastive --batch-size 512
#
# Then, on a CPU machine: `python benchmarks/peers.py --methods adapters,full --backbone
# FILE ...` (BENCHMARKS.md, "The frozen backbone itself"). On a machine without internet that lacks
# rdkit/ogb/pydantic, put their wheels in .device/wheels and HIV.csv.gz, muv.csv.gz, tox21.csv,
# toxcast.csv.gz and delaney-processed.csv in .device/data (docs/distributed.md).
set -euo pipefail
cd "$(dirname "$0")/.."
source benchmarks/gpu_env.sh
DEVICE=cuda
if ! $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_pretrain.sh: no CUDA device here; pretraining on the CPU instead (a check of the script, not a benchmark backbone)" >&2
    DEVICE=cpu
fi
timeout 560 $PY benchmarks/pretrain_backbone.py --data "$DATA" --device "$DEVICE" --minutes "${MINUTES:-5}" \
    --out "${OUT:-/tmp}/backbone.safetensors" "$@"
