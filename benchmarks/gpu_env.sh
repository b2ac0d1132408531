# Sourced by the GPU scripts (gpu.sh, gpu_pretrain.sh), from the repository root: the Python to
# run ($PY: $PYTHON or python3), cft's imports installed from .device/wheels where the lent machine
# lacks them (it cannot reach PyPI; docs/distributed.md), the data folder ($DATA: .device/data when
# present, else $CFT_BENCH_DATA or ../shared/data), a cache folder of its own, unbuffered output,
# and the GPU's name and memory printed.
PY=${PYTHON:-python3}
if ! $PY -c "import rdkit, ogb, pydantic, typer" 2>/dev/null; then
    if compgen -G ".device/wheels/*.whl" > /dev/null; then
        $PY -m pip install --quiet --no-index --no-deps .device/wheels/*.whl
    else
        echo "$(basename "$0"): rdkit, ogb and pydantic are needed (pip install -e . or wheels in .device/wheels)" >&2
        exit 2
    fi
fi
DATA=${CFT_BENCH_DATA:-../shared/data}
if [ -d .device/data ]; then DATA=.device/data; fi
export CFT_CACHE_DIR=${CFT_CACHE_DIR:-/tmp/cft-gpu-cache}
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || true
