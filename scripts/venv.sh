#!/usr/bin/env bash
# Create (or refresh) a virtual environment with cft installed, CPU-only.
# torch==2.13.0 goes in first: it is the CPU build these machines hold on disk, and with it
# installed pip keeps it rather than pulling a multi-GB CUDA build for the open `torch>=2.2`.
set -euo pipefail
venv="${1:-.venv}"
extras="${2:-}"
python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet "torch==2.13.0"
"$venv/bin/python" -m pip install --quiet -e ".${extras:+[$extras]}"
